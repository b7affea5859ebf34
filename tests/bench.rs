//! Smoke tests of `memvisor bench` through the library entry points, at small sizes: every
//! configuration runs and lands in the table and the JSON. The figures are not checked (these
//! are benchmarks, not timed tests).

mod common;

use common::root_or_skip;
use memvisor::bench::prealloc::{self, PreallocBackend, PreallocOptions, QemuChoice};
use memvisor::bench::uffd_faults::{self, FaultSource, UffdOptions};

#[test]
fn bench_prealloc_small() {
    if !root_or_skip("bench_prealloc_small") {
        return;
    }
    let opts = PreallocOptions {
        size: 64 << 20,
        reps: 1,
        ..PreallocOptions::default()
    };
    let report = prealloc::run(&opts, &|line| println!("{line}")).unwrap();
    println!("{}", report.to_text());
    let configs: Vec<(PreallocBackend, usize)> =
        report.rows.iter().map(|r| (r.backend, r.threads)).collect();
    assert_eq!(
        configs,
        vec![
            (PreallocBackend::Hugetlbfs2M, 1),
            (PreallocBackend::Hugetlbfs2M, 2),
            (PreallocBackend::Anon4K, 1),
            (PreallocBackend::Anon4K, 2)
        ],
        "notes: {:?}",
        report.notes
    );
    for r in &report.rows {
        assert!(r.memvisor.is_some() && r.bare.is_some() && r.ratio_vs_bare.is_some());
        assert_eq!(r.memvisor_method, "populate_write");
    }
    assert_eq!(report.targets.len(), 2);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 4);
    // The scratch mount is gone again.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&format!(
            "memvisor-bench-hugetlbfs-2M-{}",
            std::process::id()
        )),
        "{mounts}"
    );
}

#[test]
fn bench_prealloc_without_qemu_notes_it() {
    let opts = PreallocOptions {
        size: 16 << 20,
        reps: 1,
        threads: vec![1],
        backends: vec![PreallocBackend::Anon4K],
        qemu: QemuChoice::Skip,
    };
    let report = prealloc::run(&opts, &|_| {}).unwrap();
    assert_eq!(report.rows.len(), 1);
    assert!(report.rows[0].qemu.is_none());
    assert!(report.notes.iter().any(|n| n.contains("--no-qemu")));
    assert!(report
        .to_text()
        .contains("memvisor / QEMU prealloc (median GiB/s) >= 1.00x: not measured"));
}

#[test]
fn bench_uffd_small() {
    if !root_or_skip("bench_uffd_small") {
        return;
    }
    let opts = UffdOptions {
        size: 16 << 20,
        reps: 1,
        ..UffdOptions::default()
    };
    let report = uffd_faults::run(&opts, &|line| println!("{line}")).unwrap();
    println!("{}", report.to_text());
    let sources: Vec<FaultSource> = report.rows.iter().map(|r| r.source).collect();
    assert_eq!(sources, FaultSource::ALL.to_vec());
    for r in &report.rows {
        assert_eq!(r.pages, 4096);
        assert_eq!(r.memvisor_faults, 4096, "one fault per page");
        assert_eq!(r.minimal_faults, 4096, "one fault per page");
        assert!(r.ratio.is_some());
    }
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        json["rows"].as_array().unwrap().len(),
        FaultSource::ALL.len()
    );
}

#[test]
fn bench_net_small() {
    if !root_or_skip("bench_net_small") {
        return;
    }
    if !std::path::Path::new(net::tap::TUN_DEVICE).exists() {
        common::skip("bench_net_small", "no /dev/net/tun (modprobe tun)");
        return;
    }
    let opts = memvisor::bench::net::NetBenchOptions {
        frames: 300,
        reps: 2,
    };
    // The run itself fails unless the tap's kernel counters and the device's moved by exactly
    // the frames sent on every path.
    let report = memvisor::bench::net::run(&opts, &|line| println!("{line}")).unwrap();
    println!("{}", report.to_text());
    let rows: Vec<(&str, usize)> = report
        .rows
        .iter()
        .map(|r| (r.direction, r.frame_bytes))
        .collect();
    assert_eq!(
        rows,
        vec![("tx", 1514), ("tx", 64), ("rx", 1514), ("rx", 64)]
    );
    for r in &report.rows {
        assert_eq!(r.frames, 512, "rounded up to whole queues");
        for s in [&r.device, &r.raw, &r.veth] {
            assert_eq!(s.as_ref().map(|s| s.samples.len()), Some(2), "{r:?}");
        }
        assert!(r.device_vs_raw.is_some() && r.device_vs_veth.is_some());
    }
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 4);
    // The namespace is gone again.
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&format!("memvisor-bench-net-{}", std::process::id())),
        "{list}"
    );
}
