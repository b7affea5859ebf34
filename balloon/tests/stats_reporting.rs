//! statsq and reporting_vq: protocol, layout and hostile drivers.

mod common;

use std::time::SystemTime;

use balloon::features::{
    feature_mask, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use balloon::stats::encode_stats;
use balloon::{BalloonCounters, BalloonOptions, DeviceModel};
use common::*;

fn stats_opts() -> BalloonOptions {
    BalloonOptions {
        stats_polling_interval_s: 5,
        free_page_reporting: true,
        ..Default::default()
    }
}

fn stats() -> u64 {
    feature_mask(VIRTIO_BALLOON_F_STATS_VQ)
}

fn reporting() -> u64 {
    feature_mask(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING)
}

#[test]
fn stats_buffer_is_held_parsed_and_returned_on_trigger() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, stats_opts(), version_1() | stats(), 256);
    let sq = dev.queue_layout().stats.unwrap();
    assert_eq!(sq, 2);
    let d = &mut drv[2];
    let buf = encode_stats(&[(4, 1000), (99, 7), (5, 4096), (10, 3)]);
    let a = d.buf(&buf);
    let head = d.add_chain(&[(a, buf.len() as u32, 0)]);

    let before = SystemTime::now();
    // Held, not returned: the used ring does not change.
    assert!(!dev.process_queue(sq, &mem, &be).unwrap());
    assert_eq!(drv[2].used_idx(), 0);
    assert!(dev.holds_stats_buffer());
    let s = dev.latest_stats().unwrap();
    assert_eq!(
        (s.free_memory, s.total_memory, s.oom_kill),
        (Some(1000), Some(4096), Some(3))
    );
    assert_eq!(
        (s.swap_in, s.available_memory, s.direct_reclaim),
        (None, None, None)
    );
    let at = dev.stats_received_at().unwrap();
    assert!(at >= before && at <= SystemTime::now());
    // The balloon's size when they arrived (nothing in it yet).
    assert_eq!(dev.actual_pages_at_stats(), Some(0));
    let c = dev.counters();
    assert_eq!((c.stats_updates, c.stats_unknown_tags), (1, 1));

    // The timer fires: the buffer goes back to the driver, once.
    assert!(dev.trigger_stats_update(&mem).unwrap());
    assert_eq!(
        (drv[2].used_idx(), drv[2].used(0)),
        (1, (u32::from(head), 0))
    );
    assert!(!dev.trigger_stats_update(&mem).unwrap());
    assert_eq!(drv[2].used_idx(), 1);

    // The driver refills and re-posts; the new values replace the old ones, and the device
    // records the balloon's size at that moment (the guest's figures include what it holds).
    dev.write_config(4, &300u32.to_le_bytes());
    let buf = encode_stats(&[(4, 900)]);
    let a = drv[2].buf(&buf);
    drv[2].add_chain(&[(a, buf.len() as u32, 0)]);
    assert!(!dev.process_queue(sq, &mem, &be).unwrap());
    let s = dev.latest_stats().unwrap();
    assert_eq!((s.free_memory, s.total_memory), (Some(900), None));
    assert_eq!(dev.actual_pages_at_stats(), Some(300));
    dev.write_config(4, &500u32.to_le_bytes());
    assert_eq!(
        dev.actual_pages_at_stats(),
        Some(300),
        "until fresh statistics arrive"
    );
    let c = dev.counters();
    assert_eq!((c.stats_updates, c.stats_requests), (2, 1));
    assert!(be.calls().is_empty());
}

#[test]
fn stats_entries_across_descriptors_and_truncated_tail() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, stats_opts(), version_1() | stats(), 256);
    let mut buf = encode_stats(&[(0, 11), (1, 22), (6, 33)]);
    buf.extend_from_slice(&[7, 0, 1]); // partial 4th entry
                                       // Split in the middle of the second entry.
    let a = drv[2].buf(&buf[..14]);
    let b = drv[2].buf(&buf[14..]);
    drv[2].add_chain(&[(a, 14, 0), (b, (buf.len() - 14) as u32, 0)]);
    dev.process_queue(2, &mem, &be).unwrap();
    let s = dev.latest_stats().unwrap();
    assert_eq!(
        (s.swap_in, s.swap_out, s.available_memory, s.disk_caches),
        (Some(11), Some(22), Some(33), None)
    );
    let c = dev.counters();
    assert_eq!((c.stats_updates, c.stats_truncated), (1, 1));
}

#[test]
fn extra_and_malformed_stats_buffers() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, stats_opts(), version_1() | stats(), 256);
    let buf = encode_stats(&[(4, 1)]);
    let a = drv[2].buf(&buf);
    let first = drv[2].add_chain(&[(a, 10, 0)]);
    dev.process_queue(2, &mem, &be).unwrap();
    // A second buffer while one is held: the first one goes back.
    let second = drv[2].add_chain(&[(OUTSIDE_MEM, 10, 0)]);
    assert!(dev.process_queue(2, &mem, &be).unwrap());
    assert_eq!(
        (drv[2].used_idx(), drv[2].used(0)),
        (1, (u32::from(first), 0))
    );
    // The malformed one is held (so the protocol continues) but its contents are ignored.
    assert_eq!(dev.latest_stats().unwrap().free_memory, Some(1));
    let c = dev.counters();
    assert_eq!(
        (
            c.extra_stats_buffers,
            c.descriptors_outside_memory,
            c.stats_updates
        ),
        (1, 1, 1)
    );
    // A write-only stats buffer is rejected the same way.
    drv[2].add_chain(&[(a, 10, WRITE)]);
    assert!(dev.process_queue(2, &mem, &be).unwrap());
    assert_eq!(drv[2].used(1), (u32::from(second), 0));
    assert_eq!(dev.counters().write_only_where_read_expected, 1);
    assert!(dev.trigger_stats_update(&mem).unwrap());
    assert_eq!(drv[2].used_idx(), 3);
}

#[test]
fn trigger_without_stats_queue_does_nothing() {
    let mem = guest_mem();
    let mut dev = balloon::Balloon::new(stats_opts());
    assert!(!dev.trigger_stats_update(&mem).unwrap());
    let (mut dev, drv) = activated(&mem, stats_opts(), version_1(), 256);
    assert_eq!(dev.queue_layout().stats, None);
    assert!(!dev.trigger_stats_update(&mem).unwrap());
    assert_eq!(drv[0].used_idx(), 0);
}

#[test]
fn reporting_queue_index_follows_stats_negotiation() {
    let mem = guest_mem();
    for (features, rq) in [
        (version_1() | reporting(), 2u16),
        (version_1() | reporting() | stats(), 3u16),
    ] {
        let be = FakeBackend::new();
        let (mut dev, mut drv) = activated(&mem, stats_opts(), features, 256);
        assert_eq!(dev.queue_layout().reporting, Some(rq));
        let head = drv[usize::from(rq)].add_chain(&[(32 * MIB, 2 * MIB as u32, WRITE)]);
        assert!(dev.process_queue(rq, &mem, &be).unwrap());
        assert_eq!(be.calls(), vec![Call::Discard(32 * MIB, 2 * MIB)]);
        assert_eq!(drv[usize::from(rq)].used(0), (u32::from(head), 0));
        // Nothing arrived on the other queues.
        assert!(drv[..usize::from(rq)].iter().all(|d| d.used_idx() == 0));
    }
}

#[test]
fn free_page_reporting_discards_reported_ranges() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, stats_opts(), version_1() | reporting(), 256);
    let head = drv[2].add_chain(&[
        (32 * MIB, 2 * MIB as u32, WRITE),
        (36 * MIB, 4 * MIB as u32, WRITE),
        (12 * MIB, 2 * MIB as u32, 0), // device-readable is accepted too
    ]);
    assert!(dev.process_queue(2, &mem, &be).unwrap());
    assert_eq!(
        be.calls(),
        vec![
            Call::Discard(32 * MIB, 2 * MIB),
            Call::Discard(36 * MIB, 4 * MIB),
            Call::Discard(12 * MIB, 2 * MIB),
        ]
    );
    assert_eq!(
        (drv[2].used_idx(), drv[2].used(0)),
        (1, (u32::from(head), 0))
    );
    let mut want = BalloonCounters {
        reported_bytes: 8 * MIB,
        discarded_bytes: 8 * MIB,
        freed_bytes: 8 * MIB,
        ..Default::default()
    };
    assert_eq!(dev.counters(), want);

    // A failing backend: counted, not reported.
    let mut failing = FakeBackend::new();
    failing.fail = true;
    drv[2].add_chain(&[(40 * MIB, 2 * MIB as u32, WRITE)]);
    assert!(dev.process_queue(2, &mem, &failing).unwrap());
    want.backend_errors = 1;
    assert_eq!(dev.counters(), want);
}

#[test]
fn hostile_reported_ranges_are_skipped() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, stats_opts(), version_1() | reporting(), 256);
    drv[2].add_chain(&[
        (32 * MIB + 0x800, 4096, WRITE),      // misaligned address
        (32 * MIB, 0x1800, WRITE),            // length not a multiple of 4K
        (32 * MIB, 0, WRITE),                 // empty
        (HOLE_START, 2 * MIB as u32, WRITE),  // inside the hole
        (7 * MIB, 2 * MIB as u32, WRITE),     // RAM running into the hole
        (OUTSIDE_MEM, 2 * MIB as u32, WRITE), // not guest memory
        (46 * MIB, 4 * MIB as u32, WRITE),    // past the end of guest memory
        (40 * MIB, 2 * MIB as u32, WRITE),    // fine
    ]);
    assert!(dev.process_queue(2, &mem, &be).unwrap());
    assert_eq!(be.calls(), vec![Call::Discard(40 * MIB, 2 * MIB)]);
    assert_eq!(
        dev.counters(),
        BalloonCounters {
            reported_bytes: 2 * MIB,
            discarded_bytes: 2 * MIB,
            freed_bytes: 2 * MIB,
            empty_ranges: 1,
            misaligned_ranges: 2,
            ranges_outside_ram: 2,
            descriptors_outside_memory: 2,
            ..Default::default()
        }
    );
    assert_eq!(drv[2].used_idx(), 1);
}

#[test]
fn too_long_reporting_chain_discards_nothing() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, stats_opts(), version_1() | reporting(), 256);
    let n = balloon::MAX_REPORTING_CHAIN_DESCRIPTORS as u64;
    let descs: Vec<(u64, u32, u16)> = (0..=n)
        .map(|i| (32 * MIB + i * PAGE, PAGE as u32, WRITE))
        .collect();
    drv[2].add_chain(&descs);
    // Exactly at the cap is fine.
    drv[2].add_chain(&descs[..n as usize]);
    assert!(dev.process_queue(2, &mem, &be).unwrap());
    assert_eq!(be.calls().len(), n as usize);
    let c = dev.counters();
    assert_eq!((c.chains_too_long, c.reported_bytes), (1, n * PAGE));
    assert_eq!(drv[2].used_idx(), 2);
}
