//! Features, queue layout, config space, activation, reset and options.

mod common;

use balloon::features::{
    feature_mask, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_FREE_PAGE_REPORTING, VIRTIO_BALLOON_F_MUST_TELL_HOST,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use balloon::stats::encode_stats;
use balloon::{Balloon, BalloonError, BalloonOptions, DeviceModel, QueueLayout};
use common::*;

const STATS: u64 = 1 << VIRTIO_BALLOON_F_STATS_VQ;
const DOOM: u64 = 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
const FPR: u64 = 1 << VIRTIO_BALLOON_F_FREE_PAGE_REPORTING;

fn all_opts() -> BalloonOptions {
    BalloonOptions {
        amount_mib: 64,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        free_page_reporting: true,
    }
}

fn read_u32(dev: &Balloon, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn offered_features_follow_options() {
    let dev = Balloon::new(BalloonOptions::default());
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.avail_features(), version_1());
    assert_eq!(dev.queue_max_sizes(), vec![1024, 1024]);

    let dev = Balloon::new(all_opts());
    assert_eq!(dev.avail_features(), version_1() | STATS | DOOM | FPR);
    assert_eq!(dev.avail_features(), (1 << 32) | 0b10_0110);
    assert_eq!(dev.queue_max_sizes(), vec![1024; 4]);

    let dev = Balloon::new(BalloonOptions {
        stats_polling_interval_s: 3,
        ..Default::default()
    });
    assert_eq!(dev.avail_features(), version_1() | STATS);
    assert_eq!(dev.queue_max_sizes(), vec![1024; 3]);
}

#[test]
fn negotiation_masks_unoffered_bits_and_keeps_the_latest_set() {
    let mut dev = Balloon::new(all_opts());
    // Low word first, then both words, as a transport writing DriverFeatures passes them.
    let unoffered = feature_mask(VIRTIO_BALLOON_F_MUST_TELL_HOST)
        | feature_mask(VIRTIO_BALLOON_F_FREE_PAGE_HINT)
        | (1 << 40);
    let low = (STATS | FPR | unoffered) & 0xffff_ffff;
    dev.ack_features(low);
    assert_eq!(dev.acked_features(), STATS | FPR);
    dev.ack_features(version_1() | STATS | FPR | (1 << 40));
    assert_eq!(dev.acked_features(), version_1() | STATS | FPR);
    assert_eq!(dev.counters().unsupported_features_acked, 3);
    // The driver takes STATS_VQ back before FEATURES_OK: the layout follows.
    dev.ack_features(version_1() | DOOM | FPR);
    assert_eq!(dev.acked_features(), version_1() | DOOM | FPR);
    let l = dev.queue_layout();
    assert_eq!((l.stats, l.reporting, l.count()), (None, Some(2), 3));
    dev.ack_features(version_1() | STATS | FPR);
    assert_eq!(
        dev.queue_layout(),
        QueueLayout {
            inflate: 0,
            deflate: 1,
            stats: Some(2),
            reporting: Some(3)
        }
    );
}

#[test]
fn queue_layout_with_and_without_stats() {
    let mut dev = Balloon::new(all_opts());
    assert_eq!(dev.queue_layout().count(), 2); // nothing negotiated yet
    dev.ack_features(version_1() | FPR | DOOM);
    let l = dev.queue_layout();
    assert_eq!((l.stats, l.reporting, l.count()), (None, Some(2), 3));
    let mut dev = Balloon::new(all_opts());
    dev.ack_features(version_1() | FPR | STATS);
    let l = dev.queue_layout();
    assert_eq!((l.stats, l.reporting, l.count()), (Some(2), Some(3), 4));
}

#[test]
fn config_space_target_actual_and_generation() {
    let mut dev = Balloon::new(all_opts());
    assert_eq!(dev.target_pages(), 64 * 256);
    assert_eq!(read_u32(&dev, 0), 64 * 256);
    assert_eq!(dev.config_generation(), 0);

    assert!(dev.set_target_mib(128));
    assert_eq!(dev.config_generation(), 1);
    assert_eq!(read_u32(&dev, 0), 128 * 256);
    assert_eq!((dev.target_pages(), dev.target_mib()), (32768, 128));
    assert!(!dev.set_target_mib(128));
    assert_eq!(dev.config_generation(), 1);
    assert!(dev.set_target_mib(u32::MAX));
    assert_eq!(dev.target_pages(), u32::MAX);
    assert_eq!(dev.config_generation(), 2);
    assert!(dev.set_target_mib(1));

    // The driver reports its balloon size.
    dev.write_config(4, &1000u32.to_le_bytes());
    assert_eq!(dev.actual_pages(), 1000);
    assert_eq!(read_u32(&dev, 4), 1000);
    assert_eq!(
        dev.config_generation(),
        3,
        "driver writes do not bump the generation"
    );

    // Rejected accesses: ignored, counted, never a panic.
    dev.write_config(0, &7u32.to_le_bytes()); // num_pages is read-only
    dev.write_config(12, &7u32.to_le_bytes()); // poison_val: PAGE_POISON not offered
    dev.write_config(6, &[0; 4]); // runs past `actual`
    dev.write_config(u64::MAX, &[1]);
    let mut b = [0xaau8; 8];
    dev.read_config(12, &mut b); // runs past the end
    assert_eq!(b, [0; 8]);
    dev.read_config(u64::MAX - 1, &mut b[..4]);
    dev.read_config(0, &mut []);
    assert_eq!(dev.counters().config_bad_accesses, 7);
    assert_eq!((dev.target_pages(), dev.actual_pages()), (256, 1000));
    assert_eq!((read_u32(&dev, 8), read_u32(&dev, 12)), (0, 0));
    let mut two = [0u8; 2];
    dev.read_config(4, &mut two);
    assert_eq!(two, 1000u16.to_le_bytes());
}

#[test]
fn activation_checks_the_queues() {
    let mem = guest_mem();
    let drv: Vec<Driver> = (0..4).map(|i| driver(&mem, i, 256)).collect();
    let mut dev = Balloon::new(all_opts());
    dev.ack_features(version_1() | STATS);
    let err = dev
        .activate(drv[..2].iter().map(|d| d.queue()).collect())
        .unwrap_err();
    assert!(
        matches!(
            err,
            BalloonError::QueueCount {
                expected: 3,
                got: 2
            }
        ),
        "{err}"
    );
    let mut qs: Vec<_> = drv[..3].iter().map(|d| d.queue()).collect();
    virtio_queue::QueueT::set_ready(&mut qs[1], false);
    assert!(matches!(
        dev.activate(qs),
        Err(BalloonError::QueueNotReady(1))
    ));
    assert!(!dev.is_activated());
    // Extra queues beyond the layout are ignored.
    dev.activate(drv.iter().map(|d| d.queue()).collect())
        .unwrap();
    assert!(dev.is_activated());
    assert_eq!(dev.queues().len(), 3);
    assert!(matches!(
        dev.activate(drv.iter().map(|d| d.queue()).collect()),
        Err(BalloonError::AlreadyActivated)
    ));
    // Features cannot change once active.
    dev.ack_features(FPR);
    assert_eq!(dev.acked_features(), version_1() | STATS);
}

#[test]
fn reset_clears_driver_state_but_keeps_target_and_counters() {
    let mem = guest_mem();
    let be = FakeBackend::new();
    let (mut dev, mut drv) = activated(&mem, all_opts(), version_1() | STATS | FPR, 256);
    let buf = encode_stats(&[(4, 5)]);
    let a = drv[2].buf(&buf);
    drv[2].add_chain(&[(a, 10, 0)]);
    dev.process_queue(2, &mem, &be).unwrap();
    let (p, plen) = drv[0].pfn_buf(&[0x100]);
    drv[0].add_chain(&[(p, plen, 0)]);
    dev.process_queue(0, &mem, &be).unwrap();
    dev.write_config(4, &256u32.to_le_bytes());
    assert!(dev.set_target_mib(2));
    let counters = dev.counters();
    assert_eq!(counters.inflated_pages, 1);

    dev.reset();
    assert!(!dev.is_activated());
    assert_eq!(dev.acked_features(), 0);
    assert_eq!(dev.actual_pages(), 0);
    assert_eq!(dev.latest_stats(), None);
    assert_eq!(dev.stats_received_at(), None);
    assert_eq!(dev.actual_pages_at_stats(), None);
    assert!(!dev.holds_stats_buffer());
    assert!(dev.queues().is_empty());
    assert_eq!(dev.queue_layout().count(), 2);
    assert_eq!(dev.target_pages(), 512);
    assert_eq!(dev.config_generation(), 1);
    assert_eq!(dev.counters(), counters);
    assert!(matches!(
        dev.process_queue(0, &mem, &be),
        Err(BalloonError::NotActivated)
    ));
    assert!(!dev.trigger_stats_update(&mem).unwrap());

    // The driver can negotiate and activate again.
    dev.ack_features(version_1());
    let drv2: Vec<Driver> = (4..6).map(|i| driver(&mem, i, 64)).collect();
    dev.activate(drv2.iter().map(|d| d.queue()).collect())
        .unwrap();
    assert!(dev.is_activated());
}

#[test]
fn stats_cannot_be_switched_on_or_off_after_negotiation() {
    let mut dev = Balloon::new(BalloonOptions::default());
    dev.set_stats_polling_interval(5).unwrap();
    assert_eq!(dev.avail_features(), version_1() | STATS);
    dev.set_stats_polling_interval(0).unwrap();
    assert_eq!(dev.avail_features(), version_1());
    dev.set_stats_polling_interval(5).unwrap();

    dev.ack_features(version_1() | STATS);
    let err = dev.set_stats_polling_interval(0).unwrap_err();
    assert!(matches!(
        err,
        BalloonError::StatsStateChange { from: 5, to: 0 }
    ));
    assert!(
        err.to_string().contains("cannot be enabled or disabled"),
        "{err}"
    );
    dev.set_stats_polling_interval(10).unwrap();
    assert_eq!(dev.stats_polling_interval(), 10);
    assert_eq!(dev.avail_features(), version_1() | STATS);

    let mem = guest_mem();
    let (mut dev, _drv) = activated(&mem, all_opts(), version_1(), 256);
    assert!(dev.set_stats_polling_interval(0).is_err());
    assert_eq!(dev.stats_polling_interval(), 1);
    dev.reset();
    dev.set_stats_polling_interval(0).unwrap();
    assert_eq!(dev.avail_features() & STATS, 0);
}

#[test]
fn options_serde() {
    let o: BalloonOptions = serde_json::from_str(r#"{"amount_mib": 512}"#).unwrap();
    assert_eq!(
        o,
        BalloonOptions {
            amount_mib: 512,
            ..Default::default()
        }
    );
    let json = serde_json::to_string(&all_opts()).unwrap();
    assert_eq!(
        json,
        r#"{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":1,"free_page_reporting":true}"#
    );
    assert_eq!(
        serde_json::from_str::<BalloonOptions>(&json).unwrap(),
        all_opts()
    );
    assert!(serde_json::from_str::<BalloonOptions>(r#"{"amount":1}"#).is_err());
}
