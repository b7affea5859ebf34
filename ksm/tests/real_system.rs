//! Tests against the real `/sys/kernel/mm/ksm` (need root and CONFIG_KSM;
//! otherwise they print `skip: <reason>` and pass).
//!
//! They change global knobs, so they hold [`LOCK`] and a [`SettingsGuard`],
//! and they compare every knob before and after.

use std::ptr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ksm::{Ksm, KsmError, KsmRun, KsmSettings, SettingsGuard};

/// Serializes the tests that touch global KSM state.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the real-system tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let ksm = Ksm::system();
    if !ksm.available() {
        return Some(format!("KSM not available at {}", ksm.root().display()));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: cannot change KSM knobs".into());
    }
    None
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping chosen by the kernel; no existing
        // memory is affected.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap of {len} bytes failed");
        Mapping {
            addr: addr.cast(),
            len,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is ours, readable and writable, `len` bytes long
        // and borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Waits scan by scan until `done(merging_pages)` holds; returns the last value.
fn wait_merging(ksm: &Ksm, deadline: Instant, done: impl Fn(u64) -> bool) -> u64 {
    loop {
        let merging = ksm::self_stats().unwrap().merging_pages;
        let now = Instant::now();
        if done(merging) || now >= deadline {
            return merging;
        }
        match ksm.wait_full_scans(1, deadline - now) {
            Ok(_) | Err(KsmError::Timeout { .. }) => {}
            Err(e) => panic!("waiting for a full scan: {e}"),
        }
    }
}

#[test]
fn identical_pages_merge_and_unmerge() {
    const PAGES: u64 = 2048;
    let _lock = lock();
    if let Some(reason) = skip_reason() {
        println!("skip: {reason}");
        return;
    }
    let ksm = Ksm::system();
    let page = ksm::page_size();
    let before = ksm.settings().unwrap();
    let start_counters = ksm.counters().unwrap();
    let max_sharing = before.max_page_sharing.unwrap_or(256).max(2);

    let mut map = Mapping::new((PAGES * page) as usize);
    for chunk in map.bytes().chunks_mut(page as usize) {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1; // identical, non-zero pages
        }
    }
    let guard = SettingsGuard::save(&ksm).unwrap();
    // SAFETY: the range is exactly our own mapping.
    unsafe { ksm::madvise_mergeable(map.addr, map.len) }.unwrap();
    let settings = KsmSettings {
        run: KsmRun::Merge,
        pages_to_scan: 20_000,
        sleep_millisecs: 10,
        advisor_mode: before.advisor_mode.as_ref().map(|_| "none".to_string()),
        ..before.clone()
    };
    for change in ksm.apply(&settings).unwrap() {
        println!("set {change}");
    }

    let t = Instant::now();
    let merging = wait_merging(&ksm, t + Duration::from_secs(60), |m| m * 10 >= PAGES * 9);
    let merged = ksm.counters().unwrap();
    println!(
        "merged {merging}/{PAGES} pages in {:?}; pages_sharing {} -> {}, full_scans {} -> {}",
        t.elapsed(),
        start_counters.pages_sharing,
        merged.pages_sharing,
        start_counters.full_scans,
        merged.full_scans
    );
    assert!(
        merging * 10 >= PAGES * 9,
        "only {merging}/{PAGES} pages merged"
    );
    // One KSM page per max_page_sharing mappings; the rest count as sharing.
    // The host-wide counter must hold at least ours. It is not compared with
    // its value at the start: it can carry stale counts of processes that
    // exited while KSM was stopped (ksmd drops their rmap items only when it
    // scans again), seen in CI as 5093 -> 2040 across this merge.
    let expected = merging - merging.div_ceil(max_sharing);
    assert!(
        merged.pages_sharing * 10 >= expected * 9,
        "host pages_sharing is {}, below the ~{expected} of this process' merge",
        merged.pages_sharing
    );
    let stats = ksm::self_stats().unwrap();
    assert_eq!(stats.mergeable, Some(true));
    println!("self stats: {stats:?}");

    // SAFETY: the range is exactly our own mapping.
    unsafe { ksm::madvise_unmergeable(map.addr, map.len) }.unwrap();
    let t = Instant::now();
    let left = wait_merging(&ksm, t + Duration::from_secs(60), |m| m * 10 <= PAGES);
    let unmerged = ksm.counters().unwrap();
    println!(
        "unmerged down to {left} pages in {:?}; pages_sharing now {}",
        t.elapsed(),
        unmerged.pages_sharing
    );
    assert!(left * 10 <= PAGES, "{left}/{PAGES} pages still merging");
    // The data survived merging and unmerging.
    assert!(map.bytes()[..page as usize]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 251) as u8 + 1));

    drop(guard);
    assert_eq!(
        ksm.settings().unwrap(),
        before,
        "the guard did not restore every knob"
    );
}

#[test]
fn guard_restores_every_knob() {
    let _lock = lock();
    if let Some(reason) = skip_reason() {
        println!("skip: {reason}");
        return;
    }
    let ksm = Ksm::system();
    let before = ksm.settings().unwrap();
    let guard = SettingsGuard::save(&ksm).unwrap();
    assert_eq!(guard.saved(), &before);
    if before.advisor_mode.as_deref().is_some_and(|m| m != "none") {
        ksm.set_advisor_mode("none").unwrap();
    }
    let run = if before.run == KsmRun::Merge {
        KsmRun::Stop
    } else {
        KsmRun::Merge
    };
    println!("{}", ksm.set_run(run).unwrap());
    println!(
        "{}",
        ksm.set_pages_to_scan(before.pages_to_scan + 1234).unwrap()
    );
    println!(
        "{}",
        ksm.set_sleep_millisecs(before.sleep_millisecs + 7).unwrap()
    );
    if let Some(on) = before.use_zero_pages {
        println!("{}", ksm.set_use_zero_pages(!on).unwrap());
    }
    // The kernel refuses these while any page is merged (EBUSY).
    if let Some(n) = before.max_page_sharing {
        match ksm.set_max_page_sharing(n + 1) {
            Ok(c) => println!("{c}"),
            Err(KsmError::Busy { .. }) => println!("max_page_sharing busy, not changed"),
            Err(e) => panic!("{e}"),
        }
    }
    if let Some(on) = before.merge_across_nodes {
        match ksm.set_merge_across_nodes(!on) {
            Ok(c) => println!("{c}"),
            Err(KsmError::Busy { .. }) => println!("merge_across_nodes busy, not changed"),
            Err(e) => panic!("{e}"),
        }
    }
    // Switching the advisor makes the kernel reset pages_to_scan; restoring
    // must switch back first and then restore pages_to_scan.
    if let Some(c) = ksm.advisor_modes().unwrap() {
        let other = c.available.iter().find(|m| **m != c.selected).cloned();
        if let Some(other) = other {
            println!("{}", ksm.set_advisor_mode(&other).unwrap());
        }
    }
    let err = ksm.set_advisor_mode("no-such-mode").unwrap_err();
    assert!(matches!(err, KsmError::InvalidValue { .. }), "{err}");
    assert_ne!(ksm.settings().unwrap(), before);
    drop(guard);
    assert_eq!(
        ksm.settings().unwrap(),
        before,
        "the guard did not restore every knob"
    );
}

#[test]
fn pages_to_scan_is_refused_while_the_advisor_runs() {
    let _lock = lock();
    if let Some(reason) = skip_reason() {
        println!("skip: {reason}");
        return;
    }
    let ksm = Ksm::system();
    let Some(c) = ksm.advisor_modes().unwrap() else {
        println!("skip: no advisor_mode on this kernel");
        return;
    };
    if !c.available.iter().any(|m| m == "scan-time") {
        println!("skip: no scan-time advisor");
        return;
    }
    let before = ksm.settings().unwrap();
    let guard = SettingsGuard::save(&ksm).unwrap();
    ksm.set_advisor_mode("scan-time").unwrap();
    let err = ksm.set_pages_to_scan(4321).unwrap_err();
    println!("{err}");
    assert!(matches!(err, KsmError::InvalidValue { .. }), "{err:?}");
    let restored = guard.restore().unwrap();
    println!("restored: {restored:?}");
    assert_eq!(ksm.settings().unwrap(), before);
}

#[test]
fn process_merge_prctl() {
    let _lock = lock();
    if let Some(reason) = skip_reason() {
        println!("skip: {reason}");
        return;
    }
    let original = match ksm::process_merge() {
        Ok(v) => v,
        Err(e) => {
            println!("skip: {e}");
            return;
        }
    };
    ksm::set_process_merge(true).unwrap();
    assert!(ksm::process_merge().unwrap());
    assert_eq!(ksm::self_stats().unwrap().merge_any, Some(true));
    ksm::set_process_merge(false).unwrap();
    assert!(!ksm::process_merge().unwrap());
    assert_eq!(ksm::self_stats().unwrap().merge_any, Some(false));
    ksm::set_process_merge(original).unwrap();
}

#[test]
fn read_only_views() {
    if let Some(reason) = skip_reason() {
        println!("skip: {reason}");
        return;
    }
    let text = ksm::status_text(&Ksm::system()).unwrap();
    println!("{text}");
    assert!(text.starts_with("KSM at /sys/kernel/mm/ksm: "));
    let me = ksm::process_stats(std::process::id()).unwrap();
    assert!(me.rmap_items.is_some(), "{me:?}");
    let json = serde_json::to_value(ksm::Ksm::system().counters().unwrap()).unwrap();
    assert!(json["full_scans"].is_u64());
}
