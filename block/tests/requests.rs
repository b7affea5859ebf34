//! Well-formed requests: features, configuration space, and what each request type does to
//! the disk and the guest's buffers.

mod common;

use block::features::CONFIG_SPACE_SIZE;
use block::{Block, BlockCounters, BlockOptions, DeviceModel, MemDisk};
use common::*;
use virtio_bindings::virtio_blk::*;

fn expected(f: impl FnOnce(&mut BlockCounters)) -> BlockCounters {
    let mut c = BlockCounters::default();
    f(&mut c);
    c
}

fn bit(b: u32) -> u64 {
    1 << b
}

#[test]
fn features_follow_read_only_and_config_space_describes_the_disk() {
    let dev = Block::new(MemDisk::new(DISK), rw());
    let common = version_1()
        | bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE)
        | bit(VIRTIO_BLK_F_FLUSH);
    assert_eq!(dev.device_type(), 2);
    assert_eq!(
        dev.avail_features(),
        common | bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)
    );
    assert_eq!(dev.queue_max_sizes(), vec![256]);
    let ro = Block::new(
        MemDisk::new(DISK),
        BlockOptions {
            read_only: true,
            ..rw()
        },
    );
    assert_eq!(ro.avail_features(), common | bit(VIRTIO_BLK_F_RO));

    let mut cfg = [0u8; CONFIG_SPACE_SIZE as usize];
    dev.read_config(0, &mut cfg);
    let u32_at = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        DISK / 512
    );
    assert_eq!(u32_at(12), 254, "seg_max");
    assert_eq!(u32_at(20), 512, "blk_size");
    assert_eq!(
        (u32_at(36), u32_at(40), u32_at(44)),
        (1 << 22, 32, 8),
        "discard limits"
    );
    assert_eq!(
        (u32_at(48), u32_at(52), cfg[56]),
        (1 << 22, 32, 1),
        "write-zeroes limits"
    );
    // A single field, as Linux reads them.
    let mut blk = [0u8; 4];
    dev.read_config(20, &mut blk);
    assert_eq!(u32::from_le_bytes(blk), 512);

    // Past the end: zeros, counted. Writes: nothing is writable.
    let mut dev = dev;
    let mut past = [0xffu8; 8];
    dev.read_config(CONFIG_SPACE_SIZE - 4, &mut past);
    assert_eq!(past, [0; 8]);
    dev.read_config(u64::MAX, &mut past[..1]);
    dev.write_config(0, &[1, 2, 3, 4]);
    assert_eq!(
        dev.read_config_u64_capacity(),
        DISK / 512,
        "capacity unchanged"
    );
    assert_eq!(dev.counters().config_bad_accesses, 3);
}

trait Capacity {
    fn read_config_u64_capacity(&self) -> u64;
}
impl Capacity for Block<MemDisk> {
    fn read_config_u64_capacity(&self) -> u64 {
        let mut b = [0u8; 8];
        self.read_config(0, &mut b);
        u64::from_le_bytes(b)
    }
}

#[test]
fn unoffered_features_are_dropped_and_counted() {
    let mut dev = Block::new(
        MemDisk::new(DISK),
        BlockOptions {
            read_only: true,
            ..rw()
        },
    );
    let indirect = bit(28);
    dev.ack_features(version_1() | bit(VIRTIO_BLK_F_RO) | bit(VIRTIO_BLK_F_DISCARD) | indirect);
    assert_eq!(dev.acked_features(), version_1() | bit(VIRTIO_BLK_F_RO));
    assert_eq!(dev.counters().unsupported_features_acked, 2);
}

#[test]
fn read_returns_the_disks_bytes() {
    let mem = guest_mem();
    let disk = patterned_disk();
    let want = disk.data[3 * 512..5 * 512].to_vec();
    let (mut dev, mut drv) = activated(&mem, disk, rw());
    let r = drv.request(VIRTIO_BLK_T_IN, 3, &[], 1024);
    assert!(dev.process_queue(0, &mem, &()).unwrap());
    assert_eq!(drv.status(&r), OK);
    assert_eq!(drv.read_back(r.data_in, 1024), want);
    assert_eq!(
        (drv.used_idx(), drv.used(0)),
        (1, (u32::from(r.head), 1025))
    );
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.requests = 1;
            c.reads = 1;
            c.read_bytes = 1024;
        })
    );
    // Nothing new: no used-ring change.
    assert!(!dev.process_queue(0, &mem, &()).unwrap());
}

#[test]
fn write_changes_exactly_its_sectors() {
    let mem = guest_mem();
    let disk = patterned_disk();
    let before = disk.data.clone();
    let (mut dev, mut drv) = activated(&mem, disk, rw());
    let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let r = drv.request(VIRTIO_BLK_T_OUT, 10, &data, 0);
    assert!(dev.process_queue(0, &mem, &()).unwrap());
    assert_eq!(drv.status(&r), OK);
    assert_eq!(drv.used(0), (u32::from(r.head), 1));
    let after = &dev.backend().data;
    assert_eq!(&after[10 * 512..12 * 512], &data[..]);
    assert_eq!(&after[..10 * 512], &before[..10 * 512]);
    assert_eq!(&after[12 * 512..], &before[12 * 512..]);
    let c = dev.counters();
    assert_eq!((c.writes, c.written_bytes), (1, 1024));
}

#[test]
fn any_layout_header_split_and_shared_with_data_and_large_scattered_reads() {
    let mem = guest_mem();
    let disk = patterned_disk();
    let mut want = disk.data.clone();
    let (mut dev, mut drv) = activated(&mem, disk, rw());

    // Header in two descriptors (10 + 6 bytes), then a write whose data shares the second.
    let data = vec![0x5au8; 512];
    let h = header(VIRTIO_BLK_T_OUT, 100);
    let a = drv.buf(&h[..10]);
    let mut rest = h[10..].to_vec();
    rest.extend_from_slice(&data);
    let b = drv.buf(&rest);
    let s = drv.alloc(1);
    drv.add_chain(&[(a, 10, 0), (b, rest.len() as u32, 0), (s, 1, WRITE)]);

    // A 320 KiB read (over two bounce buffers) into three unevenly sized buffers, the status
    // sharing the last one.
    let len = 320 * 1024;
    let h = drv.buf(&header(VIRTIO_BLK_T_IN, 0));
    let b1 = drv.alloc(1536);
    let b2 = drv.alloc(200 * 1024);
    let b3 = drv.alloc(len - 1536 - 200 * 1024 + 1);
    let head = drv.add_chain(&[
        (h, 16, 0),
        (b1, 1536, WRITE),
        (b2, 200 * 1024, WRITE),
        (b3, (len - 1536 - 200 * 1024 + 1) as u32, WRITE),
    ]);
    assert!(dev.process_queue(0, &mem, &()).unwrap());
    assert_eq!(mem_byte(&drv, s), OK);
    assert_eq!(&dev.backend().data[100 * 512..101 * 512], &data[..]);
    let mut got = drv.read_back(b1, 1536);
    got.extend(drv.read_back(b2, 200 * 1024));
    got.extend(drv.read_back(b3, len - 1536 - 200 * 1024));
    // The write came first (same queue, in order): the read sees it.
    want[100 * 512..101 * 512].copy_from_slice(&data);
    assert!(got == want[..len], "read back what the disk holds");
    assert_eq!(mem_byte(&drv, b3 + (len - 1536 - 200 * 1024) as u64), OK);
    assert_eq!(drv.used(1), (u32::from(head), len as u32 + 1));
}

fn mem_byte(drv: &Driver, addr: u64) -> u8 {
    drv.read_back(addr, 1)[0]
}

#[test]
fn flush_and_get_id() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, MemDisk::new(DISK), rw());
    let f = drv.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    let id = drv.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    let short = drv.request(VIRTIO_BLK_T_GET_ID, 0, &[], 8);
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!(
        [drv.status(&f), drv.status(&id), drv.status(&short)],
        [OK; 3]
    );
    assert_eq!(dev.backend().flushes, 1);
    assert_eq!(drv.read_back(id.data_in, 20), b"memvisor-test-disk\0\0");
    assert_eq!(drv.read_back(short.data_in, 8), b"memvisor");
    assert_eq!((drv.used(1).1, drv.used(2).1), (21, 9));
    let c = dev.counters();
    assert_eq!((c.flushes, c.get_ids), (1, 2));
}

#[test]
fn discard_and_write_zeroes_reach_the_backend_as_byte_ranges() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    let mut segs = discard_seg(8, 16, 0);
    segs.extend(discard_seg(64, 8, 0));
    let d = drv.request(VIRTIO_BLK_T_DISCARD, 0, &segs, 0);
    let wz = drv.request(
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &discard_seg(200, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        0,
    );
    let wz2 = drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(300, 1, 0), 0);
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!([drv.status(&d), drv.status(&wz), drv.status(&wz2)], [OK; 3]);
    let disk = dev.backend();
    assert_eq!(
        disk.discards,
        vec![(8 * 512, 16 * 512), (64 * 512, 8 * 512)]
    );
    assert_eq!(
        disk.zeroed,
        vec![(200 * 512, 4 * 512, true), (300 * 512, 512, false)]
    );
    assert!(disk.data[8 * 512..24 * 512].iter().all(|&b| b == 0));
    assert!(disk.data[200 * 512..204 * 512].iter().all(|&b| b == 0));
    assert_ne!(disk.data[24 * 512], 0, "past the range untouched");
    let c = dev.counters();
    assert_eq!((c.discards, c.discarded_bytes), (1, 24 * 512));
    assert_eq!((c.write_zeroes, c.zeroed_bytes), (2, 5 * 512));
}

#[test]
fn read_only_disk_refuses_every_kind_of_write() {
    let mem = guest_mem();
    let disk = patterned_disk();
    let before = disk.data.clone();
    let (mut dev, mut drv) = activated(
        &mem,
        disk,
        BlockOptions {
            read_only: true,
            ..rw()
        },
    );
    let w = drv.request(VIRTIO_BLK_T_OUT, 0, &[1; 512], 0);
    let d = drv.request(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(0, 8, 0), 0);
    let z = drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(0, 8, 0), 0);
    let r = drv.request(VIRTIO_BLK_T_IN, 0, &[], 512);
    let f = drv.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    dev.process_queue(0, &mem, &()).unwrap();
    let st: Vec<u8> = [w, d, z, r, f].iter().map(|x| drv.status(x)).collect();
    assert_eq!(st, vec![IOERR, IOERR, IOERR, OK, OK]);
    assert_eq!(dev.backend().data, before);
    assert!(dev.backend().discards.is_empty() && dev.backend().zeroed.is_empty());
    assert_eq!(drv.read_back(r.data_in, 512), before[..512]);
    let c = dev.counters();
    assert_eq!((c.write_to_read_only, c.ioerr_status, c.reads), (3, 3, 1));
}

#[test]
fn direct_io_block_size_needs_aligned_requests() {
    let mem = guest_mem();
    let mut disk = patterned_disk();
    disk.block = 4096;
    let want = disk.data[4096..8192].to_vec();
    let (mut dev, mut drv) = activated(&mem, disk, rw());
    let mut b = [0u8; 4];
    dev.read_config(20, &mut b);
    assert_eq!(u32::from_le_bytes(b), 4096, "blk_size");
    let small = drv.request(VIRTIO_BLK_T_IN, 8, &[], 512);
    let misaligned = drv.request(VIRTIO_BLK_T_IN, 1, &[], 4096);
    let good = drv.request(VIRTIO_BLK_T_IN, 8, &[], 4096);
    // MemDisk panics on an unaligned access with 4 KiB blocks: the device must not ask.
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!(
        [
            drv.status(&small),
            drv.status(&misaligned),
            drv.status(&good)
        ],
        [IOERR, IOERR, OK]
    );
    assert_eq!(drv.read_back(good.data_in, 4096), want);
    assert_eq!(dev.counters().bad_lengths, 2);
    // Discard and write-zeroes segments too: whole blocks only (the fuzzer's finding).
    let odd_discard = drv.request(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(1, 8, 0), 0);
    let short_zero = drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(8, 1, 0), 0);
    let whole = drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(16, 8, 0), 0);
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!(
        [
            drv.status(&odd_discard),
            drv.status(&short_zero),
            drv.status(&whole)
        ],
        [IOERR, IOERR, OK]
    );
    assert_eq!(dev.counters().bad_lengths, 4);
    assert!(dev.backend().discards.is_empty());
    assert_eq!(dev.backend().zeroed.len(), 1);
}

#[test]
fn host_io_errors_and_hosts_that_cannot_punch() {
    let mem = guest_mem();
    let mut disk = patterned_disk();
    disk.fail_io = true;
    disk.no_punch = true;
    let (mut dev, mut drv) = activated(&mem, disk, rw());
    let r = drv.request(VIRTIO_BLK_T_IN, 0, &[], 512);
    let w = drv.request(VIRTIO_BLK_T_OUT, 0, &[0; 512], 0);
    let f = drv.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    let d = drv.request(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(0, 8, 0), 0);
    dev.process_queue(0, &mem, &()).unwrap();
    let st: Vec<u8> = [r, w, f, d].iter().map(|x| drv.status(x)).collect();
    assert_eq!(st, vec![IOERR, IOERR, IOERR, OK]);
    assert_eq!(
        drv.used(0).1,
        1,
        "a failed read reports only the status byte"
    );
    let c = dev.counters();
    assert_eq!(
        (
            c.host_io_errors,
            c.discards_not_supported_by_host,
            c.discards
        ),
        (3, 1, 1)
    );
}
