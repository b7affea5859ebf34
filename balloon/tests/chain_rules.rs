//! The rules the device advertises are the rules it enforces: indirect descriptors (never
//! offered) are refused on every queue without following the table, and every structural
//! rejection is counted under its own cause.

mod common;

use balloon::features::{
    feature_mask, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
    VIRTIO_F_INDIRECT_DESC,
};
use balloon::stats::encode_stats;
use balloon::{Balloon, BalloonCounters, BalloonOptions, DeviceModel};
use common::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn opts() -> BalloonOptions {
    BalloonOptions {
        amount_mib: 64,
        stats_polling_interval_s: 5,
        free_page_reporting: true,
        ..Default::default()
    }
}

fn expected(f: impl FnOnce(&mut BalloonCounters)) -> BalloonCounters {
    let mut c = BalloonCounters::default();
    f(&mut c);
    c
}

/// One split-ring descriptor as the driver lays it out in memory.
fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut b = addr.to_le_bytes().to_vec();
    b.extend(len.to_le_bytes());
    b.extend(flags.to_le_bytes());
    b.extend(next.to_le_bytes());
    b
}

#[test]
fn indirect_descriptors_are_not_offered_and_cannot_be_negotiated() {
    let mut dev = Balloon::new(opts());
    let indirect = feature_mask(VIRTIO_F_INDIRECT_DESC);
    assert_eq!(dev.avail_features() & indirect, 0);
    dev.ack_features(version_1() | indirect);
    assert_eq!(dev.acked_features(), version_1());
    assert_eq!(dev.counters().unsupported_features_acked, 1);
}

#[test]
fn indirect_pfn_chains_are_refused_without_following_the_table() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    // An indirect table of two good PFN buffers: a device that followed it would discard
    // four RAM pages.
    let (a, alen) = drv[0].pfn_buf(&[0x100, 0x101]);
    let (b, blen) = drv[0].pfn_buf(&[0x300, 0x301]);
    let table = drv[0].buf(&[desc_bytes(a, alen, NEXT, 1), desc_bytes(b, blen, 0, 0)].concat());
    let whole = drv[0].add_raw(&[(table, 32, INDIRECT, 0)]);
    // A table length that is not a multiple of 16: the same driver error, not an empty chain.
    let odd = drv[0].add_raw(&[(table, 20, INDIRECT, 0)]);
    // The flag on the second descriptor of a direct chain: the first buffer is not used either.
    let second = odd + 1;
    drv[0].add_raw(&[(a, alen, NEXT, second + 1), (table, 32, INDIRECT, 0)]);
    // The flag with NEXT, as a driver might combine them.
    let with_next = drv[0].add_raw(&[(table, 32, INDIRECT | NEXT, second)]);
    // A well-formed chain afterwards is processed as usual.
    let (c, clen) = drv[0].pfn_buf(&[0x500]);
    let good = drv[0].add_chain(&[(c, clen, 0)]);

    assert!(dev.process_queue(0, &mem, &be).unwrap());
    assert_eq!(be.calls(), vec![Call::Discard(0x50_0000, PAGE)]);
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.indirect_not_negotiated = 4;
            c.inflated_pages = 1;
            c.discarded_bytes = PAGE;
            c.freed_bytes = PAGE;
        })
    );
    // Every chain went back to the driver, with nothing written.
    let used: Vec<(u32, u32)> = (0..5).map(|i| drv[0].used(i)).collect();
    let heads = [whole, odd, second, with_next, good];
    assert_eq!(
        used,
        heads.map(|h| (u32::from(h), 0)).to_vec(),
        "used ring in order"
    );
    // Deflate refuses the same way.
    drv[1].add_raw(&[(table, 32, INDIRECT, 0)]);
    assert!(dev.process_queue(1, &mem, &be).unwrap());
    assert_eq!(be.calls().len(), 1, "no reclaim");
    assert_eq!(dev.counters().indirect_not_negotiated, 5);
    assert_eq!(drv[1].used_idx(), 1);
}

#[test]
fn indirect_stats_and_reporting_chains_are_refused() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let stats = feature_mask(VIRTIO_BALLOON_F_STATS_VQ);
    let reporting = feature_mask(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
    let (mut dev, mut drv) = activated(&mem, opts(), version_1() | stats | reporting, 256);
    let (sq, rq) = (2usize, 3usize);

    // statsq: the buffer is held as usual (the protocol goes on), its contents ignored.
    let buf = encode_stats(&[(4, 1000)]);
    let s = drv[sq].buf(&buf);
    let table = drv[sq].buf(&desc_bytes(s, buf.len() as u32, 0, 0));
    let head = drv[sq].add_raw(&[(table, 16, INDIRECT, 0)]);
    assert!(!dev.process_queue(sq as u16, &mem, &be).unwrap());
    assert!(dev.holds_stats_buffer());
    assert!(
        dev.latest_stats().is_none(),
        "the indirect table was not read"
    );
    assert!(dev.trigger_stats_update(&mem).unwrap());
    assert_eq!(drv[sq].used(0), (u32::from(head), 0));

    // reporting_vq: a table naming 2 MiB of RAM; nothing is discarded.
    let table = drv[rq].buf(&desc_bytes(32 * MIB, 2 * MIB as u32, WRITE, 0));
    let head = drv[rq].add_raw(&[(table, 16, INDIRECT | WRITE, 0)]);
    assert!(dev.process_queue(rq as u16, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(drv[rq].used(0), (u32::from(head), 0));
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.indirect_not_negotiated = 2;
            c.stats_requests = 1;
        })
    );
}

#[test]
fn loops_ranges_and_caps_are_each_named() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 16);
    let (a, _) = drv[0].pfn_buf(&[0x100]);
    // A loop that comes back to the second descriptor, not the head.
    drv[0].add_raw(&[(a, 4, NEXT, 1), (a, 4, NEXT, 2), (a, 4, NEXT, 1)]);
    // `next` equal to the queue size: one past the last entry.
    drv[0].add_raw(&[(a, 4, NEXT, 16)]);
    assert!(dev.process_queue(0, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.looping_chains = 1;
            c.next_out_of_range = 1;
        })
    );
    assert_eq!(drv[0].used_idx(), 2);
}

#[test]
fn unreadable_descriptor_table_entries_are_named() {
    // The transport refuses a table that is not inside guest memory at DRIVER_OK; the device
    // still never trusts it. Queue 0's table starts 128 entries before the end of the first
    // memory region, so entries 128.. lie in the gap.
    let mem = guest_mem();
    let be = FakeBackend::new();
    let mut dev = Balloon::new(opts());
    dev.ack_features(version_1());
    let mut drv: Vec<Driver> = (0..2).map(|i| driver(&mem, i, 256)).collect();
    let table = 16 * MIB - 128 * 16;
    let mut q0 = drv[0].queue();
    use virtio_queue::QueueT;
    q0.set_desc_table_address(Some(table as u32), Some(0));
    dev.activate(vec![q0, drv[1].queue()]).unwrap();
    let (a, alen) = drv[0].pfn_buf(&[0x100]);
    // A head in the gap, and a readable head whose next is in the gap.
    drv[0].push_avail(200);
    mem.write_slice(&desc_bytes(a, alen, NEXT, 130), GuestAddress(table))
        .unwrap();
    drv[0].push_avail(0);
    assert!(dev.process_queue(0, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(dev.counters(), expected(|c| c.unreadable_descriptors = 2));
    assert_eq!((drv[0].used(0), drv[0].used(1)), ((200, 0), (0, 0)));
}

#[test]
fn chains_over_4_gib_are_refused_whole() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let reporting = feature_mask(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
    let (mut dev, mut drv) = activated(&mem, opts(), version_1() | reporting, 256);
    // A good 2 MiB range first does not save the chain.
    drv[2].add_chain(&[
        (32 * MIB, 2 * MIB as u32, WRITE),
        (36 * MIB, u32::MAX - PAGE as u32 + 1, WRITE),
    ]);
    assert!(dev.process_queue(2, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(dev.counters(), expected(|c| c.chains_over_4gib = 1));
    assert_eq!(drv[2].used_idx(), 1);
}

#[test]
fn empty_chains_are_well_formed_chains_without_bytes() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, _) = drv[0].pfn_buf(&[0x100]);
    drv[0].add_chain(&[(a, 0, 0), (a, 0, 0)]);
    assert!(dev.process_queue(0, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(dev.counters(), expected(|c| c.empty_chains = 1));
}

#[test]
fn rings_outside_guest_memory_are_named() {
    // The transport refuses such rings at DRIVER_OK; the device names the failure anyway.
    use virtio_queue::QueueT;
    let mem = guest_mem();
    let be = FakeBackend::new();
    let mut dev = Balloon::new(opts());
    dev.ack_features(version_1());
    let mut drv: Vec<Driver> = (0..2).map(|i| driver(&mem, i, 16)).collect();
    let (mut q0, mut q1) = (drv[0].queue(), drv[1].queue());
    q0.set_avail_ring_address(Some(OUTSIDE_MEM as u32), Some(0));
    q1.set_used_ring_address(Some(OUTSIDE_MEM as u32), Some(0));
    dev.activate(vec![q0, q1]).unwrap();
    let (a, alen) = drv[1].pfn_buf(&[0x100]);
    drv[1].add_chain(&[(a, alen, 0)]);
    assert!(dev.process_queue(0, &mem, &be).is_err());
    // The chain is handled, but cannot be returned.
    assert!(dev.process_queue(1, &mem, &be).is_err());
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.avail_ring_unreadable = 1;
            c.used_ring_unwritable = 1;
            c.deflated_pages = 1;
        })
    );
}
