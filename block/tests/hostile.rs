//! Hostile and broken drivers: every bad request gets an error status (or, without a usable
//! status byte, goes back with nothing written), a counter under its cause, and never reaches
//! the disk (the `MemDisk` panics if the device asks it for bytes outside the disk, and its
//! contents are compared before and after).

mod common;

use block::{BlockCounters, BlockError, DeviceModel, MemDisk};
use common::*;
use virtio_bindings::virtio_blk::*;

const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// Runs the queue and checks the disk did not change.
fn run_unchanged(dev: &mut block::Block<MemDisk>, mem: &vm_memory::GuestMemoryMmap) {
    let before = dev.backend().data.clone();
    dev.process_queue(0, mem, &()).unwrap();
    assert!(dev.backend().data == before, "the disk changed");
    assert!(dev.backend().discards.is_empty() && dev.backend().zeroed.is_empty());
}

#[test]
fn sectors_past_the_end_are_refused() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    let last = DISK / 512 - 1;
    let reqs = [
        drv.request(VIRTIO_BLK_T_IN, last, &[], 1024), // one sector too many
        drv.request(VIRTIO_BLK_T_OUT, last + 1, &[0; 512], 0),
        drv.request(VIRTIO_BLK_T_OUT, u64::MAX / 512, &[0; 512], 0), // offset overflows
        drv.request(VIRTIO_BLK_T_IN, u64::MAX, &[], 512),
        drv.request(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(last, 2, 0), 0),
        drv.request(
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &discard_seg(u64::MAX, 1, 0),
            0,
        ),
    ];
    let ok = drv.request(VIRTIO_BLK_T_OUT, last, &[9; 512], 0);
    let before = dev.backend().data.clone();
    dev.process_queue(0, &mem, &()).unwrap();
    for r in &reqs {
        assert_eq!(drv.status(r), IOERR);
    }
    assert_eq!(drv.status(&ok), OK, "the last sector itself is fine");
    assert_eq!(
        &dev.backend().data[..(DISK - 512) as usize],
        &before[..(DISK - 512) as usize]
    );
    let c = dev.counters();
    assert_eq!((c.out_of_range, c.ioerr_status, c.writes), (6, 6, 1));
}

#[test]
fn buffers_outside_guest_memory() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    let h = drv.buf(&header(VIRTIO_BLK_T_OUT, 0));
    let s1 = drv.alloc(1);
    // Write data from the gap between the two memory regions.
    drv.add_chain(&[(h, 16, 0), (OUTSIDE_MEM, 512, 0), (s1, 1, WRITE)]);
    // Read into a buffer straddling the end of the first region.
    let h2 = drv.buf(&header(VIRTIO_BLK_T_IN, 0));
    let s2 = drv.alloc(1);
    vm_memory::Bytes::write_slice(&mem, &[0xee; 512], vm_memory::GuestAddress(16 * MIB - 512))
        .unwrap();
    drv.add_chain(&[(h2, 16, 0), (16 * MIB - 512, 1024, WRITE), (s2, 1, WRITE)]);
    // A header outside memory.
    let s3 = drv.alloc(1);
    drv.add_chain(&[(OUTSIDE_MEM, 16, 0), (s3, 1, WRITE)]);
    // Data at the top of the address space (the address + length overflows).
    let h4 = drv.buf(&header(VIRTIO_BLK_T_IN, 0));
    let s4 = drv.alloc(1);
    drv.add_chain(&[(h4, 16, 0), (u64::MAX - 100, 512, WRITE), (s4, 1, WRITE)]);
    run_unchanged(&mut dev, &mem);
    for s in [s1, s2, s3, s4] {
        assert_eq!(drv.read_back(s, 1)[0], IOERR);
    }
    assert_eq!(
        drv.read_back(16 * MIB - 512, 512),
        vec![0xee; 512],
        "nothing read into guest memory"
    );
    assert_eq!(dev.counters().buffers_outside_memory, 4);
}

#[test]
fn no_usable_status_byte_means_no_io_and_nothing_written() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    let h = drv.buf(&header(VIRTIO_BLK_T_OUT, 0));
    let d = drv.buf(&[1; 512]);
    // No device-writable descriptor at all.
    let a = drv.add_chain(&[(h, 16, 0), (d, 512, 0)]);
    // The status byte outside guest memory.
    let b = drv.add_chain(&[(h, 16, 0), (d, 512, 0), (OUTSIDE_MEM, 1, WRITE)]);
    // Only zero-length writable descriptors.
    let c = drv.add_chain(&[(h, 16, 0), (d, 512, 0), (d, 0, WRITE)]);
    run_unchanged(&mut dev, &mem);
    assert_eq!(drv.used_idx(), 3, "every chain goes back");
    for (i, head) in [a, b, c].into_iter().enumerate() {
        assert_eq!(drv.used(i as u16), (u32::from(head), 0));
    }
    let cnt = dev.counters();
    assert_eq!(
        (
            cnt.missing_status,
            cnt.status_outside_memory,
            cnt.no_status,
            cnt.writes
        ),
        (2, 1, 3, 0)
    );
}

#[test]
fn broken_chains() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    let h = drv.buf(&header(VIRTIO_BLK_T_OUT, 0));
    let d = drv.buf(&[1; 512]);
    let s = drv.alloc(1);
    // A loop: 0 -> 1 -> 0.
    let l = drv.add_raw(&[(h, 16, NEXT, 1), (d, 512, NEXT, 0)]);
    // A self-loop on a writable descriptor.
    let base = l + 2;
    drv.add_raw(&[(h, 16, NEXT, base + 1), (s, 1, WRITE | NEXT, base + 1)]);
    // next outside the table (size 256).
    drv.add_raw(&[(h, 16, NEXT, 300)]);
    // An indirect table (not negotiated).
    let table = drv.alloc(48);
    drv.add_raw(&[(table, 48, INDIRECT, 0)]);
    // Readable after writable.
    drv.add_chain(&[(h, 16, 0), (s, 1, WRITE), (d, 512, 0)]);
    // Over 4 GiB in total.
    drv.add_chain(&[(h, 16, 0), (d, u32::MAX - 8, 0), (s, 100, WRITE)]);
    run_unchanged(&mut dev, &mem);
    assert_eq!(drv.used_idx(), 6);
    for i in 0..6 {
        assert_eq!(drv.used(i).1, 0, "nothing written for chain {i}");
    }
    assert_eq!(
        drv.read_back(s, 1)[0],
        0xee,
        "no status written into a broken chain"
    );
    let c = dev.counters();
    let want = BlockCounters {
        requests: 6,
        no_status: 6,
        looping_chains: 2,
        next_out_of_range: 1,
        indirect_not_negotiated: 1,
        readable_after_writable: 1,
        chains_over_4gib: 1,
        ..Default::default()
    };
    assert_eq!(c, want);
}

#[test]
fn malformed_requests_get_error_statuses() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    // A header of 8 bytes.
    let h8 = drv.buf(&header(VIRTIO_BLK_T_IN, 0)[..8]);
    let s0 = drv.alloc(1);
    drv.add_chain(&[(h8, 8, 0), (s0, 1, WRITE)]);
    let reqs = [
        // A read with device-readable data, a write with device-writable data.
        drv.request(VIRTIO_BLK_T_IN, 0, &[0; 512], 512),
        drv.request(VIRTIO_BLK_T_OUT, 0, &[0; 512], 512),
        // Not whole sectors.
        drv.request(VIRTIO_BLK_T_OUT, 0, &[0; 100], 0),
        drv.request(VIRTIO_BLK_T_IN, 0, &[], 513),
        // Get-id without room, or with readable data.
        drv.request(VIRTIO_BLK_T_GET_ID, 0, &[], 0),
        drv.request(VIRTIO_BLK_T_GET_ID, 0, &[1; 4], 20),
        // Discard payloads: empty, not whole segments, too many segments, too many sectors,
        // with writable data.
        drv.request(VIRTIO_BLK_T_DISCARD, 0, &[], 0),
        drv.request(VIRTIO_BLK_T_DISCARD, 0, &[0; 20], 0),
        drv.request(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(0, 1, 0).repeat(33), 0),
        drv.request(
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &discard_seg(0, (1 << 22) + 1, 0),
            0,
        ),
        drv.request(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(0, 1, 0), 8),
    ];
    // UNSUPP: unknown types and flags.
    let unsupp = [
        drv.request(99, 0, &[], 512),
        drv.request(VIRTIO_BLK_T_SCSI_CMD, 0, &[], 0),
        drv.request(
            VIRTIO_BLK_T_DISCARD,
            0,
            &discard_seg(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
            0,
        ),
        drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(0, 8, 2), 0),
    ];
    run_unchanged(&mut dev, &mem);
    assert_eq!(drv.read_back(s0, 1)[0], IOERR);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(drv.status(r), IOERR, "request {i}");
        assert_eq!(
            drv.used(i as u16 + 1).1,
            1,
            "only the status byte for request {i}"
        );
    }
    for r in &unsupp {
        assert_eq!(drv.status(r), UNSUPP);
    }
    let c = dev.counters();
    let want = BlockCounters {
        requests: 16,
        ioerr_status: 12,
        unsupp_status: 4,
        short_headers: 1,
        wrong_direction: 4,
        bad_lengths: 5,
        over_limits: 2,
        unsupported_types: 2,
        unsupported_flags: 2,
        ..Default::default()
    };
    assert_eq!(c, want);
}

#[test]
fn ring_level_abuse() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    // An available entry naming descriptor 1000 (queue of 256): skipped, counted.
    drv.push_avail(1000);
    let good = drv.request(VIRTIO_BLK_T_IN, 0, &[], 512);
    assert!(dev.process_queue(0, &mem, &()).unwrap());
    assert_eq!(drv.status(&good), OK);
    let c = dev.counters();
    assert_eq!((c.invalid_head_index, c.requests, c.reads), (1, 1, 1));
    // Queue 1 does not exist.
    assert!(matches!(
        dev.process_queue(1, &mem, &()),
        Err(BlockError::InvalidQueueIndex(1))
    ));
    // The available index jumps ahead by more than the queue size: the device stops until
    // reset.
    drv.set_avail_idx(drv.avail_idx().wrapping_add(300));
    assert!(matches!(
        dev.process_queue(0, &mem, &()),
        Err(BlockError::AvailIndexJump)
    ));
    assert!(dev.needs_reset());
    assert!(matches!(
        dev.process_queue(0, &mem, &()),
        Err(BlockError::NeedsReset)
    ));
    assert_eq!(dev.counters().avail_index_jumps, 1);
    dev.reset();
    assert!(!dev.needs_reset() && !dev.is_activated());
    assert!(matches!(
        dev.process_queue(0, &mem, &()),
        Err(BlockError::NotActivated)
    ));
}

#[test]
fn a_good_request_after_hostile_ones_still_works() {
    let mem = guest_mem();
    let (mut dev, mut drv) = activated(&mem, patterned_disk(), rw());
    let h = drv.buf(&header(VIRTIO_BLK_T_OUT, 0));
    drv.add_raw(&[(h, 16, NEXT, 0)]); // self-loop
    drv.request(VIRTIO_BLK_T_OUT, 1 << 40, &[0; 512], 0);
    drv.request(77, 0, &[], 0);
    let w = drv.request(VIRTIO_BLK_T_OUT, 4, &[0xab; 512], 0);
    let r = drv.request(VIRTIO_BLK_T_IN, 4, &[], 512);
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!((drv.status(&w), drv.status(&r)), (OK, OK));
    assert_eq!(drv.read_back(r.data_in, 512), vec![0xab; 512]);
    assert_eq!(drv.used_idx(), 5);
}
