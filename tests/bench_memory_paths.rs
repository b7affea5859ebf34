//! `memvisor bench memory-paths` and `memvisor bench mappings` at small sizes: every path lands
//! in the summary with non-zero, plausible figures, every section is in the JSON, and the
//! mapping baselines read exactly the pages memvisor's map covers. Figures are not judged
//! against targets here (benchmarks, not timed tests). About 20 s in a debug build.

mod common;

use common::{kvm_or_skip, memvisor, root_or_skip, text};
use memvisor::bench::mappings::{Backing, Reader};
use memvisor::bench::memory_paths::{self, MemoryPathsOptions, PathRow, Section};
use memvisor::bench::prealloc::QemuChoice;
use std::path::PathBuf;

/// The range a figure in `unit` must fall in to be plausible on any machine.
fn plausible(unit: &str) -> (f64, f64) {
    match unit {
        "GiB/s" => (0.005, 1000.0),
        "kpages/s" => (0.1, 100_000.0),
        "ms" => (0.01, 30_000.0),
        "MiB" => (0.1, 500.0),
        "ms/GiB" => (0.01, 100_000.0),
        other => panic!("unexpected unit {other}"),
    }
}

fn check_row(r: &PathRow) {
    let (lo, hi) = plausible(&r.unit);
    let m = r
        .memvisor
        .unwrap_or_else(|| panic!("no memvisor figure: {r:?}"));
    assert!(m > lo && m < hi, "implausible memvisor figure: {r:?}");
    if let Some(b) = r.baseline_figure {
        assert!(b > lo && b < hi, "implausible baseline figure: {r:?}");
        let ratio = r.ratio.expect("a ratio where both figures exist");
        assert!((ratio - m / b).abs() < 1e-6 * ratio.max(1.0), "{r:?}");
    }
    if r.target.is_some() && r.met.is_some() {
        assert!(r.memvisor.is_some());
    }
}

#[test]
fn memory_paths_small() {
    if !kvm_or_skip("memory_paths_small") || !root_or_skip("memory_paths_small") {
        return;
    }
    let opts = MemoryPathsOptions {
        reps: 1,
        prealloc_size: 16 << 20,
        startup_size: 64 << 20,
        balloon_size: 16 << 20,
        uffd_size: 4 << 20,
        mappings_size: 16 << 20,
        binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_memvisor"))),
        qemu: QemuChoice::Auto,
        sections: Section::ALL.to_vec(),
    };
    let report = memory_paths::run(&opts, &|l| println!("{l}")).unwrap();
    let text = report.to_text();
    println!("{text}");
    let s = &report.summary;
    assert!(
        !s.notes.iter().any(|n| n.contains("failed")),
        "a section failed: {:?}",
        s.notes
    );
    // Every path is there, with figures.
    let paths: Vec<&str> = s.rows.iter().map(|r| r.path.as_str()).collect();
    for want in [
        "prealloc hugetlbfs 2M x1",
        "prealloc hugetlbfs 2M x2",
        "prealloc anon 4K x1",
        "prealloc anon 4K x2",
        "VMM start to first guest instruction, in process",
        "VMM start to first guest instruction, fresh process",
        "exec to exit, guest stops at once",
        "VMM RSS beyond guest RAM, idle",
        "balloon return 16 MiB (PATCH /balloon -> host RSS down)",
        "userfaultfd faults, zero",
        "userfaultfd faults, file (cold)",
        "userfaultfd faults, file (warm)",
        "userfaultfd faults, in-VMM swap file (cold)",
        "GPA->HPA map, anon 4K (thp=off)",
        "GPA->HPA map, anon default",
        "GPA->HPA map, anon THP (thp=on)",
    ] {
        assert!(paths.contains(&want), "missing {want}: {paths:?}");
        assert!(text.contains(want), "{want} not in the text");
    }
    for r in &s.rows {
        check_row(r);
    }
    // Rows with a target say whether it was met, unless their baseline could not be
    // measured (QEMU's prealloc at 16 MiB is within its start-up jitter: a note says so); the
    // exec-to-exit comparison has no target.
    for r in &s.rows {
        match r.path.as_str() {
            "exec to exit, guest stops at once" => assert!(r.target.is_none()),
            _ => {
                assert!(r.target.is_some(), "{r:?}");
                assert!(
                    r.met.is_some() || (r.baseline == "QEMU prealloc=on" && r.ratio.is_none()),
                    "{r:?}"
                );
            }
        }
    }
    let qemu = memvisor::bench::qemu::Qemu::find(None).is_ok();
    let exec = s
        .rows
        .iter()
        .find(|r| r.path.starts_with("exec to exit"))
        .unwrap();
    let rss = s
        .rows
        .iter()
        .find(|r| r.path.starts_with("VMM RSS"))
        .unwrap();
    if qemu {
        assert!(exec.baseline_figure.is_some(), "{:?}", s.notes);
        assert!(rss.baseline_figure.is_some(), "{:?}", s.notes);
    } else {
        assert!(s
            .notes
            .iter()
            .any(|n| n.contains("apt-get install qemu-system-x86")));
    }
    // The RSS beyond guest RAM is what the notes break down.
    assert!(s.notes.iter().any(|n| n.contains("memvisor at idle")));

    // The mapping baselines read the pages memvisor's map covers.
    let m = report.sections.mappings.as_ref().unwrap();
    for b in Backing::ALL {
        let rows: Vec<_> = m.rows.iter().filter(|r| r.backing == b).collect();
        assert_eq!(rows.len(), 3, "{b:?}");
        let mv = rows.iter().find(|r| r.reader == Reader::Memvisor).unwrap();
        assert_eq!(mv.pages, 16 << 20 >> 12);
        assert_eq!(
            mv.present_pages, mv.pages,
            "prealloc=on populated every page"
        );
        for r in &rows {
            assert_eq!(r.pages, mv.pages, "{b:?} {:?}", r.reader);
            assert_eq!(r.present_pages, mv.present_pages, "{b:?} {:?}", r.reader);
            assert!(r.ms_per_gib.as_ref().is_some_and(|s| s.median > 0.0));
        }
        assert!(mv.runs.unwrap() >= 1);
    }

    // The JSON has every section and the summary.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for section in ["prealloc", "startup", "balloon", "uffd", "mappings"] {
        let sec = &json["sections"][section];
        assert!(sec.is_object(), "section {section} missing: {sec}");
        assert!(!sec["rows"].as_array().unwrap().is_empty(), "{section}");
        assert!(sec["machine"]["cpu_model"].is_string());
    }
    assert_eq!(
        json["summary"]["rows"].as_array().unwrap().len(),
        s.rows.len()
    );
    let targets = json["summary"]["targets"].as_array().unwrap();
    for name in [
        "bare MADV_POPULATE_WRITE",
        "QEMU prealloc",
        "start to first guest instruction",
        "VMM RSS beyond guest RAM",
        "balloon return",
        "minimal userfaultfd loop",
        "GPA->HPA map",
    ] {
        assert!(
            targets
                .iter()
                .any(|t| t["name"].as_str().unwrap().contains(name)),
            "target {name} missing"
        );
    }
    assert!(memory_paths::find_target(&report, "GPA->HPA").is_some());
    assert_eq!(
        targets
            .iter()
            .find(|t| t["name"].as_str().unwrap().contains("RSS"))
            .unwrap()["at_most"],
        "MiB"
    );
}

#[test]
fn bench_mappings_cli_json() {
    if !root_or_skip("bench_mappings_cli_json") {
        return;
    }
    let out = memvisor(&[
        "bench",
        "mappings",
        "--size",
        "8M",
        "--reps",
        "1",
        "--backings",
        "4k,thp",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for r in rows {
        assert_eq!(r["pages"], 2048, "{r}");
        assert_eq!(r["present_pages"], 2048, "{r}");
        assert!(r["ms_per_gib"]["median"].as_f64().unwrap() > 0.0);
    }
    let readers: Vec<&str> = rows.iter().map(|r| r["reader"].as_str().unwrap()).collect();
    assert_eq!(
        readers,
        [
            "memvisor",
            "raw-pagemap",
            "raw-pagemap-kpageflags",
            "memvisor",
            "raw-pagemap",
            "raw-pagemap-kpageflags"
        ]
    );
    assert_eq!(json["targets"][0]["at_most"], "ms/GiB");
    assert_eq!(json["targets"][0]["goal"], 50.0);
}

#[test]
fn bench_memory_paths_rejects_bad_options() {
    let out = memvisor(&["bench", "memory-paths", "--sections", "nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("prealloc, startup, balloon, uffd or mappings"),
        "{}",
        text(&out)
    );
    let out = memvisor(&[
        "bench",
        "memory-paths",
        "--reps",
        "0",
        "--sections",
        "mappings",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--reps"), "{}", text(&out));
}
