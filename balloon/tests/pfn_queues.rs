//! inflateq / deflateq: normal paths and hostile drivers.

mod common;

use balloon::{BalloonCounters, BalloonError, BalloonOptions, DeviceModel};
use common::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INFLATE: u16 = 0;
const DEFLATE: u16 = 1;

fn opts() -> BalloonOptions {
    BalloonOptions {
        amount_mib: 64,
        ..Default::default()
    }
}

fn expected(f: impl FnOnce(&mut BalloonCounters)) -> BalloonCounters {
    let mut c = BalloonCounters::default();
    f(&mut c);
    c
}

#[test]
fn inflate_scattered_pfns_merge_into_ranges() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, alen) = drv[0].pfn_buf(&[0x403, 0x400, 0x401, 0x600]);
    let (b, blen) = drv[0].pfn_buf(&[0x402, 0x401, 0x7ff, 0xc01, 0xc00]);
    let head = drv[0].add_chain(&[(a, alen, 0), (b, blen, 0)]);

    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert_eq!(
        be.calls(),
        vec![
            Call::Discard(0x40_0000, 4 * PAGE),
            Call::Discard(0x60_0000, PAGE),
            Call::Discard(0x7f_f000, PAGE),
            Call::Discard(0xc0_0000, 2 * PAGE),
        ]
    );
    assert_eq!(
        (drv[0].used_idx(), drv[0].used(0)),
        (1, (u32::from(head), 0))
    );
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.inflated_pages = 8;
            c.duplicate_pfns = 1;
            c.discarded_bytes = 8 * PAGE;
            c.freed_bytes = 8 * PAGE;
        })
    );
    // Nothing new: no used-ring change, no calls.
    assert!(!dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert_eq!(be.calls().len(), 4);
}

#[test]
fn deflate_calls_reclaim_only() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, alen) = drv[1].pfn_buf(&[0x11, 0x2000, 0x10]);
    let head = drv[1].add_chain(&[(a, alen, 0)]);
    assert!(dev.process_queue(DEFLATE, &mem, &be).unwrap());
    assert_eq!(
        be.calls(),
        vec![
            Call::Reclaim(0x1_0000, 2 * PAGE),
            Call::Reclaim(32 * MIB, PAGE)
        ]
    );
    assert_eq!(drv[1].used(0), (u32::from(head), 0));
    assert_eq!(dev.counters(), expected(|c| c.deflated_pages = 3));
    // The inflate queue saw nothing.
    assert_eq!(drv[0].used_idx(), 0);
}

#[test]
fn partially_freed_and_failing_backend() {
    let mem = guest_mem();
    let mut be = FakeBackend::new();
    be.freed_halves = 1;
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, alen) = drv[0].pfn_buf(&[0x100, 0x101, 0x300]);
    drv[0].add_chain(&[(a, alen, 0)]);
    dev.process_queue(INFLATE, &mem, &be).unwrap();
    let c = dev.counters();
    assert_eq!(
        (c.inflated_pages, c.discarded_bytes, c.freed_bytes),
        (3, 3 * PAGE, 3 * PAGE / 2)
    );

    be.fail = true;
    let (a, alen) = drv[0].pfn_buf(&[0x200]);
    drv[0].add_chain(&[(a, alen, 0)]);
    let (d, dlen) = drv[1].pfn_buf(&[0x200]);
    drv[1].add_chain(&[(d, dlen, 0)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert!(dev.process_queue(DEFLATE, &mem, &be).unwrap());
    let c = dev.counters();
    assert_eq!(c.backend_errors, 2);
    assert_eq!((c.inflated_pages, c.deflated_pages), (4, 1));
    assert_eq!((c.discarded_bytes, c.freed_bytes), (3 * PAGE, 3 * PAGE / 2));
    assert_eq!((drv[0].used_idx(), drv[1].used_idx()), (2, 1));
}

#[test]
fn pfns_outside_ram_or_in_hole_are_dropped() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let hole = pfn(HOLE_START);
    let pfns = [
        hole - 1,          // last RAM page before the hole
        hole,              // hole
        hole + 1,          // hole
        pfn(12 * MIB) - 1, // last hole page
        pfn(12 * MIB),     // RAM again
        pfn(OUTSIDE_MEM),  // not guest memory
        pfn(48 * MIB),     // just past the end of guest memory
        u32::MAX,          // far away
    ];
    let (a, alen) = drv[0].pfn_buf(&pfns);
    drv[0].add_chain(&[(a, alen, 0)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert_eq!(
        be.calls(),
        vec![
            Call::Discard(HOLE_START - PAGE, PAGE),
            Call::Discard(12 * MIB, PAGE)
        ]
    );
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.inflated_pages = 2;
            c.discarded_bytes = 2 * PAGE;
            c.freed_bytes = 2 * PAGE;
            c.pfns_outside_ram = 3;
            c.invalid_pfns = 3;
        })
    );
    assert_eq!(drv[0].used_idx(), 1);

    // Deflate filters the same way.
    let (d, dlen) = drv[1].pfn_buf(&[hole, pfn(OUTSIDE_MEM), 0x20]);
    drv[1].add_chain(&[(d, dlen, 0)]);
    dev.process_queue(DEFLATE, &mem, &be).unwrap();
    assert_eq!(be.calls()[2..], [Call::Reclaim(0x2_0000, PAGE)]);
    let c = dev.counters();
    assert_eq!(
        (c.pfns_outside_ram, c.invalid_pfns, c.deflated_pages),
        (4, 4, 1)
    );
}

#[test]
fn chain_length_and_descriptor_size_caps() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let cap = balloon::MAX_PFN_CHAIN_DESCRIPTORS;
    // At the cap: 16 descriptors of one PFN each, accepted.
    let descs: Vec<(u64, u32, u16)> = (0..cap as u32)
        .map(|i| {
            let (a, l) = drv[0].pfn_buf(&[0x100 + 2 * i]);
            (a, l, 0)
        })
        .collect();
    drv[0].add_chain(&descs);
    // One more descriptor than the cap: rejected whole.
    let (extra, elen) = drv[0].pfn_buf(&[0x500]);
    let mut too_long = descs.clone();
    too_long.push((extra, elen, 0));
    let long_head = drv[0].add_chain(&too_long);
    // A descriptor at the per-descriptor cap (256 PFNs) is accepted, one PFN more is not.
    let full: Vec<u32> = (0x2000..0x2100).collect();
    let (f, flen) = drv[0].pfn_buf(&full);
    assert_eq!(flen, balloon::MAX_PFNS_PER_DESCRIPTOR * 4);
    drv[0].add_chain(&[(f, flen, 0)]);
    let over: Vec<u32> = (0x2400..0x2501).collect();
    let (o, olen) = drv[0].pfn_buf(&over);
    drv[0].add_chain(&[(o, olen, 0)]);

    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    let calls = be.calls();
    assert_eq!(calls.len(), cap + 1);
    assert_eq!(calls[0], Call::Discard(0x10_0000, PAGE));
    assert_eq!(
        calls[cap - 1],
        Call::Discard((0x100 + 2 * cap as u64 - 2) * PAGE, PAGE)
    );
    assert_eq!(calls[cap], Call::Discard(32 * MIB, 256 * PAGE));
    let c = dev.counters();
    assert_eq!((c.chains_too_long, c.bad_descriptor_len), (1, 1));
    assert_eq!(c.inflated_pages, cap as u64 + 256);
    assert_eq!((c.invalid_pfns, c.pfns_outside_ram), (0, 0));
    // All four chains were returned, the rejected ones too.
    assert_eq!(drv[0].used_idx(), 4);
    assert_eq!(drv[0].used(1), (u32::from(long_head), 0));
}

#[test]
fn looping_chains_are_rejected() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, _) = drv[0].pfn_buf(&[0x100]);
    // Two descriptors pointing at each other.
    let h = 0;
    drv[0].add_raw(&[(a, 4, NEXT, h + 1), (a, 4, NEXT, h)]);
    // A descriptor pointing at itself.
    drv[0].add_raw(&[(a, 4, NEXT, 2)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(dev.counters(), expected(|c| c.looping_chains = 2));
    assert_eq!(drv[0].used_idx(), 2);
    assert_eq!((drv[0].used(0), drv[0].used(1)), ((0, 0), (2, 0)));
}

#[test]
fn looping_chain_in_a_queue_smaller_than_the_cap() {
    // With 8 entries the loop comes back before the device's cap (16) would end the walk.
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 8);
    let (a, _) = drv[0].pfn_buf(&[0x100]);
    drv[0].add_raw(&[(a, 4, NEXT, 1), (a, 4, NEXT, 0)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(dev.counters(), expected(|c| c.looping_chains = 1));
}

#[test]
fn broken_next_index_is_rejected() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, _) = drv[0].pfn_buf(&[0x100]);
    drv[0].add_raw(&[(a, 4, NEXT, 300)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(dev.counters(), expected(|c| c.next_out_of_range = 1));
    assert_eq!(drv[0].used(0), (0, 0));
}

#[test]
fn descriptors_outside_guest_memory_are_rejected() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    drv[0].add_chain(&[(OUTSIDE_MEM, 8, 0)]);
    // Straddles the end of the first memory region.
    drv[0].add_chain(&[(16 * MIB - 4, 8, 0)]);
    // Wraps around the address space.
    drv[0].add_chain(&[(u64::MAX - 3, 8, 0)]);
    // A good first descriptor does not save a chain whose second one is outside memory.
    let (a, alen) = drv[0].pfn_buf(&[0x100]);
    drv[0].add_chain(&[(a, alen, 0), (OUTSIDE_MEM, 4, 0)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(
        dev.counters(),
        expected(|c| c.descriptors_outside_memory = 4)
    );
    assert_eq!(drv[0].used_idx(), 4);
}

#[test]
fn odd_lengths_and_write_only_buffers_are_rejected() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, _) = drv[0].pfn_buf(&[0x100, 0x101]);
    drv[0].add_chain(&[(a, 6, 0)]);
    drv[0].add_chain(&[(a, 1, 0)]);
    drv[0].add_chain(&[(a, 8, WRITE)]);
    drv[1].add_chain(&[(a, 7, 0)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert!(dev.process_queue(DEFLATE, &mem, &be).unwrap());
    assert!(be.calls().is_empty());
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.bad_descriptor_len = 3;
            c.write_only_where_read_expected = 1;
        })
    );
    assert_eq!((drv[0].used_idx(), drv[1].used_idx()), (3, 1));
}

#[test]
fn empty_chains_and_out_of_range_heads() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, _) = drv[0].pfn_buf(&[0x100]);
    let empty = drv[0].add_chain(&[(a, 0, 0)]);
    // An available ring entry naming a descriptor outside the table: nothing to return.
    drv[0].push_avail(1000);
    // A normal chain afterwards is still processed.
    let good = drv[0].add_chain(&[(a, 4, 0)]);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert_eq!(be.calls(), vec![Call::Discard(0x10_0000, PAGE)]);
    assert_eq!(
        dev.counters(),
        expected(|c| {
            c.empty_chains = 1;
            c.invalid_head_index = 1;
            c.inflated_pages = 1;
            c.discarded_bytes = PAGE;
            c.freed_bytes = PAGE;
        })
    );
    assert_eq!(drv[0].used_idx(), 2);
    assert_eq!(drv[0].used(0), (u32::from(empty), 0));
    assert_eq!(drv[0].used(1), (u32::from(good), 0));
}

#[test]
fn avail_index_far_ahead_stops_the_device_until_reset() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, drv) = activated(&mem, opts(), version_1(), 256);
    drv[0].set_avail_idx(257);
    let err = dev.process_queue(INFLATE, &mem, &be).unwrap_err();
    assert!(matches!(err, BalloonError::AvailIndexJump(0)), "{err}");
    assert!(dev.needs_reset());
    assert_eq!(dev.counters(), expected(|c| c.avail_index_jumps = 1));
    // Every queue refuses to work until the driver resets the device.
    assert!(matches!(
        dev.process_queue(DEFLATE, &mem, &be),
        Err(BalloonError::NeedsReset)
    ));
    assert!(!dev.trigger_stats_update(&mem).unwrap());
    dev.reset();
    assert!(!dev.needs_reset());
    assert!(!dev.is_activated());
    assert!(be.calls().is_empty());
    assert_eq!(drv[0].used_idx(), 0);
}

#[test]
fn avail_index_ahead_within_queue_size_processes_what_the_ring_holds() {
    // The driver publishes 3 entries but wrote only one: the other slots hold 0, i.e. head 0
    // again. The device processes head 0 three times (idempotent) and never panics.
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    let (a, alen) = drv[0].pfn_buf(&[0x100]);
    drv[0].add_chain(&[(a, alen, 0)]);
    drv[0].set_avail_idx(3);
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    assert_eq!(be.calls(), vec![Call::Discard(0x10_0000, PAGE); 3]);
    assert_eq!(drv[0].used_idx(), 3);
    assert!(!dev.needs_reset());
}

#[test]
fn many_hostile_chains_are_all_counted_but_logs_are_limited() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, opts(), version_1(), 256);
    for _ in 0..30 {
        drv[0].add_chain(&[(OUTSIDE_MEM, 4, 0)]);
    }
    assert!(dev.process_queue(INFLATE, &mem, &be).unwrap());
    let c = dev.counters();
    assert_eq!(c.descriptors_outside_memory, 30);
    // 10 lines per second are allowed; the 30 rejections take far less than two seconds.
    assert!(c.log_lines_suppressed >= 10, "{}", c.log_lines_suppressed);
    assert!(c.log_lines_suppressed <= 20, "{}", c.log_lines_suppressed);
    assert_eq!(drv[0].used_idx(), 30);
}

#[test]
fn queue_index_and_activation_errors() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let mut dev = balloon::Balloon::new(opts());
    assert!(matches!(
        dev.process_queue(INFLATE, &mem, &be),
        Err(BalloonError::NotActivated)
    ));
    let (mut dev, _drv) = activated(&mem, opts(), version_1(), 256);
    let err = dev.process_queue(2, &mem, &be).unwrap_err();
    assert!(
        matches!(err, BalloonError::InvalidQueueIndex { index: 2, count: 2 }),
        "{err}"
    );
}
