//! `Ksm::with_root` over a fake sysfs directory: reading, writing, missing
//! and malformed files, `apply`, `wait_full_scans`, the guard and the status.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ksm::{Ksm, KsmError, KsmRun, KsmSettings, SettingsGuard};
use tempfile::TempDir;

/// The files of a 6.18 kernel with default settings.
const FILES: &[(&str, &str)] = &[
    ("run", "0"),
    ("pages_to_scan", "100"),
    ("sleep_millisecs", "20"),
    ("merge_across_nodes", "1"),
    ("use_zero_pages", "0"),
    ("max_page_sharing", "256"),
    ("advisor_mode", "[none] scan-time"),
    ("pages_shared", "3"),
    ("pages_sharing", "40"),
    ("pages_unshared", "5"),
    ("pages_volatile", "6"),
    ("full_scans", "7"),
    ("general_profit", "-8"),
    ("ksm_zero_pages", "9"),
    ("stable_node_chains", "10"),
];

fn fake() -> (TempDir, Ksm) {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in FILES {
        fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
    }
    let ksm = Ksm::with_root(dir.path());
    (dir, ksm)
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn reads_settings_and_counters() {
    let (_dir, ksm) = fake();
    assert!(ksm.available());
    let s = ksm.settings().unwrap();
    assert_eq!(
        s,
        KsmSettings {
            run: KsmRun::Stop,
            pages_to_scan: 100,
            sleep_millisecs: 20,
            merge_across_nodes: Some(true),
            use_zero_pages: Some(false),
            max_page_sharing: Some(256),
            advisor_mode: Some("none".into()),
        }
    );
    let c = ksm.counters().unwrap();
    assert_eq!(
        (
            c.pages_shared,
            c.pages_sharing,
            c.pages_unshared,
            c.pages_volatile,
            c.full_scans
        ),
        (3, 40, 5, 6, 7)
    );
    assert_eq!(c.general_profit, Some(-8));
    assert_eq!(c.ksm_zero_pages, Some(9));
    assert_eq!(c.stable_node_chains, Some(10));
    assert_eq!(c.bytes_saved(4096), 40 * 4096);
}

#[test]
fn missing_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let ksm = Ksm::with_root(dir.path().join("nope"));
    assert!(!ksm.available());
    for err in [
        ksm.settings().unwrap_err(),
        ksm.counters().unwrap_err(),
        ksm.set_run(KsmRun::Merge).unwrap_err(),
        ksm::status_text(&ksm).unwrap_err(),
    ] {
        assert!(matches!(err, KsmError::Unavailable { .. }), "{err}");
        assert!(err.is_missing());
    }
}

#[test]
fn missing_files() {
    let (dir, ksm) = fake();
    // Optional files read as None (older kernels).
    for name in [
        "advisor_mode",
        "use_zero_pages",
        "general_profit",
        "ksm_zero_pages",
    ] {
        fs::remove_file(dir.path().join(name)).unwrap();
    }
    let s = ksm.settings().unwrap();
    assert_eq!((s.advisor_mode, s.use_zero_pages), (None, None));
    let c = ksm.counters().unwrap();
    assert_eq!((c.general_profit, c.ksm_zero_pages), (None, None));
    // Writing a missing optional knob is a typed error, and nothing is created.
    let err = ksm.set_use_zero_pages(true).unwrap_err();
    assert!(matches!(err, KsmError::MissingFile { .. }), "{err}");
    assert!(!dir.path().join("use_zero_pages").exists());
    let err = ksm.set_advisor_mode("none").unwrap_err();
    assert!(matches!(err, KsmError::MissingFile { .. }), "{err}");
    // Mandatory files are errors.
    fs::remove_file(dir.path().join("pages_to_scan")).unwrap();
    let err = ksm.settings().unwrap_err();
    match &err {
        KsmError::MissingFile { path } => assert!(path.ends_with("pages_to_scan")),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(
        err.to_string().contains("pages_to_scan does not exist"),
        "{err}"
    );
    fs::remove_file(dir.path().join("full_scans")).unwrap();
    assert!(matches!(ksm.counters(), Err(KsmError::MissingFile { .. })));
}

#[test]
fn bad_content() {
    for (name, bad) in [
        ("run", "7"),
        ("pages_to_scan", "lots"),
        ("merge_across_nodes", "maybe"),
        ("advisor_mode", "none scan-time"),
        ("max_page_sharing", "-1"),
    ] {
        let (dir, ksm) = fake();
        fs::write(dir.path().join(name), bad).unwrap();
        match ksm.settings() {
            Err(KsmError::Parse { what, content, .. }) => {
                assert!(what.ends_with(name), "{what}");
                assert!(content.contains(bad));
            }
            other => panic!("{name}={bad:?}: expected a parse error, got {other:?}"),
        }
    }
    for (name, bad) in [("pages_sharing", "x"), ("general_profit", "1.5")] {
        let (dir, ksm) = fake();
        fs::write(dir.path().join(name), bad).unwrap();
        assert!(matches!(ksm.counters(), Err(KsmError::Parse { .. })));
    }
}

#[test]
fn setters_write_and_report() {
    let (dir, ksm) = fake();
    let c = ksm.set_run(KsmRun::Merge).unwrap();
    assert_eq!(c.to_string(), "run: 0 -> 1");
    assert_eq!(read(dir.path(), "run"), "1");
    // A shorter value replaces a longer one completely.
    assert_eq!(
        ksm.set_pages_to_scan(5).unwrap().to_string(),
        "pages_to_scan: 100 -> 5"
    );
    assert_eq!(read(dir.path(), "pages_to_scan"), "5");
    ksm.set_sleep_millisecs(0).unwrap();
    ksm.set_use_zero_pages(true).unwrap();
    ksm.set_merge_across_nodes(false).unwrap();
    ksm.set_max_page_sharing(512).unwrap();
    let s = ksm.settings().unwrap();
    assert_eq!(
        (
            s.sleep_millisecs,
            s.use_zero_pages,
            s.merge_across_nodes,
            s.max_page_sharing
        ),
        (0, Some(true), Some(false), Some(512))
    );
    let err = ksm.set_advisor_mode("fastest").unwrap_err();
    assert!(err.to_string().contains("none, scan-time"), "{err}");
}

#[test]
fn apply_writes_only_differences() {
    let (dir, ksm) = fake();
    let mut want = ksm.settings().unwrap();
    assert!(ksm.apply(&want).unwrap().is_empty());
    want.run = KsmRun::Merge;
    want.pages_to_scan = 10000;
    want.use_zero_pages = Some(true);
    want.max_page_sharing = None; // leave alone
    fs::write(dir.path().join("max_page_sharing"), "99").unwrap();
    let changes: Vec<String> = ksm
        .apply(&want)
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        changes,
        [
            "use_zero_pages: 0 -> 1",
            "pages_to_scan: 100 -> 10000",
            "run: 0 -> 1"
        ]
    );
    assert_eq!(read(dir.path(), "max_page_sharing"), "99");
    assert!(ksm.apply(&want).unwrap().is_empty());
    // Unmerge goes first so that knobs refused while merged can change.
    want.run = KsmRun::Unmerge;
    want.sleep_millisecs = 1;
    let changes = ksm.apply(&want).unwrap();
    assert_eq!(changes[0].to_string(), "run: 1 -> 2");
    assert_eq!(changes[1].to_string(), "sleep_millisecs: 20 -> 1");
}

#[test]
fn apply_leaves_pages_to_scan_to_the_advisor() {
    let (dir, ksm) = fake();
    fs::write(dir.path().join("advisor_mode"), "none [scan-time]\n").unwrap();
    let mut want = ksm.settings().unwrap();
    assert_eq!(want.advisor_mode.as_deref(), Some("scan-time"));
    want.pages_to_scan = 777;
    assert!(ksm.apply(&want).unwrap().is_empty());
    assert_eq!(read(dir.path(), "pages_to_scan"), "100");
}

#[test]
fn wait_full_scans_cases() {
    let (dir, ksm) = fake();
    assert_eq!(
        ksm.wait_full_scans(0, Duration::ZERO).unwrap().full_scans,
        7
    );
    let err = ksm.wait_full_scans(1, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, KsmError::NotRunning { .. }), "{err}");
    ksm.set_run(KsmRun::Merge).unwrap();
    let start = Instant::now();
    let err = ksm
        .wait_full_scans(1, Duration::from_millis(100))
        .unwrap_err();
    assert!(
        matches!(
            err,
            KsmError::Timeout {
                wanted: 1,
                seen: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    let path = dir.path().join("full_scans");
    let tmp = dir.path().join(".full_scans.tmp");
    let bumper = thread::spawn(move || {
        for n in 8..=9 {
            thread::sleep(Duration::from_millis(30));
            // Replace atomically, as sysfs does: a plain write could be read half-done.
            fs::write(&tmp, format!("{n}\n")).unwrap();
            fs::rename(&tmp, &path).unwrap();
        }
    });
    let c = ksm.wait_full_scans(2, Duration::from_secs(10)).unwrap();
    assert_eq!(c.full_scans, 9);
    bumper.join().unwrap();
}

#[test]
fn guard_restores_on_drop_and_on_demand() {
    let (dir, ksm) = fake();
    let before = ksm.settings().unwrap();
    {
        let guard = SettingsGuard::save(&ksm).unwrap();
        assert_eq!(guard.saved(), &before);
        ksm.set_run(KsmRun::Merge).unwrap();
        ksm.set_pages_to_scan(12345).unwrap();
        ksm.set_sleep_millisecs(0).unwrap();
        ksm.set_use_zero_pages(true).unwrap();
    }
    assert_eq!(ksm.settings().unwrap(), before);
    assert_eq!(read(dir.path(), "pages_to_scan"), "100");
    let guard = SettingsGuard::save(&ksm).unwrap();
    ksm.set_sleep_millisecs(3).unwrap();
    let restored = guard.restore().unwrap();
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].to_string(), "sleep_millisecs: 3 -> 20");
}

#[test]
fn status_over_fake() {
    let (dir, ksm) = fake();
    let text = ksm::status_text(&ksm).unwrap();
    assert!(text.contains(&format!("KSM at {}: stopped (run=0)", dir.path().display())));
    assert!(text.contains("pages_sharing       40"), "{text}");
    assert!(text.contains("advisor_mode        none (available: none, scan-time)"));
}

#[test]
fn apply_tries_every_knob_when_one_is_refused() {
    // A knob the kernel refuses (as `max_page_sharing` is refused while KSM pages exist): a
    // read-only sysctl that reads as a number but cannot be written, even by root.
    let ro = Path::new("/proc/sys/kernel/ngroups_max");
    if fs::OpenOptions::new().write(true).open(ro).is_ok() {
        eprintln!("skip: {} is writable here", ro.display());
        return;
    }
    let (dir, ksm) = fake();
    let mut want = ksm.settings().unwrap();
    fs::remove_file(dir.path().join("max_page_sharing")).unwrap();
    std::os::unix::fs::symlink(ro, dir.path().join("max_page_sharing")).unwrap();
    want.max_page_sharing = Some(256);
    want.sleep_millisecs = 5;
    want.pages_to_scan = 1000;
    want.run = KsmRun::Merge;
    let err = ksm.apply(&want).unwrap_err();
    assert!(err.to_string().contains("max_page_sharing"), "{err}");
    // The knobs after the refused one were still applied.
    assert_eq!(read(dir.path(), "sleep_millisecs"), "5");
    assert_eq!(read(dir.path(), "pages_to_scan"), "1000");
    assert_eq!(read(dir.path(), "run"), "1");
}
