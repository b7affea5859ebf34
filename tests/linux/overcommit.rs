//! The test kernel on memvisor's overcommit paths, with the kernel's own `virtio_balloon`
//! driver: one test, two guests booted in parallel (beside the file's other test-kernel boots),
//! then used together.
//!
//! - Guest H has its RAM on a 2 MiB hugetlbfs mount (preallocated, so every huge page is in
//!   use): inflating its balloon by 32 MiB gives whole huge pages back to the host's pool. Linux
//!   hands the balloon 4 KiB pages; memvisor releases a huge page only once all of it is in the
//!   balloon (the pieces of the others are zeroed and remembered). The pool's `free_hugepages`
//!   rises by exactly the bytes the device says it released, and by at least half of the 16
//!   huge pages 32 MiB could fill at best; deflating brings MemTotal back and the agent's data
//!   verifies.
//! - Guest K has `mergeable=on` RAM: the agent fills 16 MiB with one identical page, KSM runs
//!   (its knobs restored afterwards, also on failure) and the VMM process's
//!   `ksm_merging_pages` rises by at least 80% of those 4096 pages; the data verifies.
//! - `memvisor balance` with both (K holds more of its memory and has less RAM): with the floor
//!   above the host's `MemAvailable` its first decisions inflate H, the guest with more free
//!   memory; H's balloon moves, K's does not (its free memory is under the headroom the test
//!   sets between the two guests'). The controller stops taking from H at its headroom although
//!   the host stays short (ballooning hugetlb memory does not raise `MemAvailable`): H's own
//!   `MemAvailable` ends within a few MiB of the headroom, not below it (statistics lag the
//!   balloon; see `GuestSample::free_after_balloon`).

use super::{api, balloon_actual_mib, test_kernel_or_skip, wait_for, TestGuest};
use crate::common::{self, kvm_or_skip, make_room_for_huge_pages, pool, root_or_skip, skip};
use crate::common::{HugetlbfsMount, Running, TempDir};
use hugepages::{HugePageSize, PoolLock, PoolReservation};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const HUGE: u64 = 2 << 20;
/// Guest H's RAM, all of it on huge pages.
const H_MIB: u64 = 256;

/// Huge pages added to the 2 MiB pool for a guest that lives for minutes. The pool lock is held
/// while the pool changes and while the test counts its free pages, not while the guest boots
/// (its pages are all in use by then, so nobody can take them). On drop the lock is taken again
/// and the pool put back to its size before, also on failure: declare it before the guest so
/// that the guest is gone first.
struct PoolLoan {
    reservation: Option<PoolReservation>,
    lock: Option<PoolLock>,
}

impl PoolLoan {
    fn reserve(pages: u64) -> Result<PoolLoan, hugepages::HugePageError> {
        let lock = hugepages::lock_pools()?;
        let size = HugePageSize::Size2M;
        let reservation = match PoolReservation::reserve_additional(size, pages) {
            Ok(r) => r,
            Err(_) => {
                make_room_for_huge_pages();
                PoolReservation::reserve_additional(size, pages)?
            }
        };
        Ok(PoolLoan {
            reservation: Some(reservation),
            lock: Some(lock),
        })
    }

    fn lock(&mut self) {
        if self.lock.is_none() {
            self.lock = Some(hugepages::lock_pools().expect("take the hugepage pool lock"));
        }
    }

    fn unlock(&mut self) {
        self.lock = None;
    }
}

impl Drop for PoolLoan {
    fn drop(&mut self) {
        if self.lock.is_none() {
            self.lock = hugepages::lock_pools().ok();
        }
        drop(self.reservation.take());
    }
}

fn device(sock: &Path) -> serde_json::Value {
    let (status, v) = api(sock, "GET", "/balloon/device", None);
    assert_eq!(status, 200, "{v}");
    v
}

/// `available_memory` of fresh guest statistics (arrived after `after`, Unix seconds).
fn stats_available(sock: &Path, after: f64) -> Option<u64> {
    let d = device(sock);
    if d["stats_received_at_unix_s"].as_f64()? <= after {
        return None;
    }
    let (status, v) = api(sock, "GET", "/balloon/statistics", None);
    (status == 200)
        .then(|| v["available_memory"].as_u64())
        .flatten()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn set_balloon(sock: &Path, mib: u64) {
    let body = format!(r#"{{"amount_mib": {mib}}}"#);
    let (status, v) = api(sock, "PATCH", "/balloon", Some(&body));
    assert_eq!(status, 204, "{v}");
}

/// Guest H: inflate 32 MiB and count the huge pages the pool gets back; deflate; data intact.
fn hugepages_part(h: &mut TestGuest, sock: &Path, loan: &mut PoolLoan) {
    let t = "test_kernel_hugetlbfs_ksm_and_balance";
    h.send("fill 4");
    h.expect("filled 4", Duration::from_secs(300));
    let verify = |h: &mut TestGuest| {
        h.send("verify");
        assert_eq!(
            h.expect("verified ", Duration::from_secs(60)),
            "verified 4194304 mismatches 0"
        );
    };
    verify(h);
    let (total0, _) = h.meminfo();
    // From here to the end of the test no other test changes the pool (their pages would
    // blur the count, and pages deflated here must still be in the pool when H touches them).
    loan.lock();
    let free0 = pool(HugePageSize::Size2M).free;
    let released0 = device(sock)["released_bytes"].as_u64().unwrap();
    let (_, mem0) = api(sock, "GET", "/memory/report", None);
    let t0 = Instant::now();
    set_balloon(sock, 32);
    wait_for("H's balloon at 32 MiB", Duration::from_secs(600), || {
        (balloon_actual_mib(sock)? == 32).then_some(())
    });
    let secs = t0.elapsed().as_secs_f64();
    let free1 = pool(HugePageSize::Size2M).free;
    let released = device(sock)["released_bytes"].as_u64().unwrap() - released0;
    let (_, mem1) = api(sock, "GET", "/memory/report", None);
    let returned = free1.saturating_sub(free0);
    println!(
        "{t}: H inflated 32 MiB in {secs:.0} s: the 2 MiB pool got {returned} of the 16 huge pages back \
         ({:.0}% of the ballooned memory; free_hugepages {free0} -> {free1}), device released {} MiB",
        returned as f64 * 2.0 / 32.0 * 100.0,
        released / MIB
    );
    // What the device says it released is exactly what the kernel's pool got, and what the
    // VMM's resident huge pages lost.
    assert_eq!(
        released,
        returned * HUGE,
        "released_bytes vs free_hugepages"
    );
    let hugetlb = |m: &serde_json::Value| m["hugetlb_bytes"].as_u64().unwrap();
    assert_eq!(
        hugetlb(&mem0) - hugetlb(&mem1),
        returned * HUGE,
        "hugetlb_bytes {} -> {}",
        hugetlb(&mem0),
        hugetlb(&mem1)
    );
    // Whole huge pages only: 32 MiB of 4 KiB pages fill at most 16. Linux's balloon takes
    // order-0 pages from the buddy allocator, mostly by splitting large free blocks, so most of
    // them come in whole 2 MiB runs; the rest (pages scattered over huge pages still partly in
    // use by the guest) is zeroed and kept until the guest gives up the rest of its huge page.
    assert!(returned <= 16, "{returned} huge pages for 32 MiB");
    assert!(
        returned >= 8,
        "only {returned} whole huge pages came back for 32 MiB ballooned"
    );
    let (total1, _) = h.meminfo();
    assert_eq!(
        total0 - total1,
        32 * 1024,
        "MemTotal {total0} -> {total1} kB"
    );
    verify(h);
    set_balloon(sock, 0);
    wait_for("H's balloon back at 0", Duration::from_secs(600), || {
        (balloon_actual_mib(sock)? == 0).then_some(())
    });
    let (total2, _) = h.meminfo();
    assert_eq!(total2, total0, "MemTotal restored");
    verify(h);
}

/// Guest K: 16 MiB of identical pages merge once KSM runs; data intact.
fn ksm_part(k: &mut TestGuest, sock: &Path, pid: u32) {
    let t = "test_kernel_hugetlbfs_ksm_and_balance";
    let sys = ksm::Ksm::system();
    if !sys.available() {
        skip(
            t,
            "KSM part: KSM is not available (/sys/kernel/mm/ksm missing)",
        );
        return;
    }
    let t_fill = Instant::now();
    k.send("fill 16 same");
    k.expect("filled 16", Duration::from_secs(600));
    let fill_s = t_fill.elapsed().as_secs_f64();
    let merging = || {
        ksm::process_stats(pid)
            .expect("ksm_merging_pages")
            .merging_pages
    };
    let before = merging();
    let pages = 16 * MIB / 4096;
    // KSM runs (fast) only until the pages merged; the guard puts the knobs back, also when
    // this panics.
    let guard = ksm::SettingsGuard::save(&sys).expect("save KSM settings");
    sys.set_pages_to_scan(5000).unwrap();
    sys.set_sleep_millisecs(10).unwrap();
    sys.set_run(ksm::KsmRun::Merge).unwrap();
    let t_merge = Instant::now();
    let after = wait_for(
        "K's identical pages to merge",
        Duration::from_secs(180),
        || {
            let m = merging();
            (m >= before + pages * 8 / 10).then_some(m)
        },
    );
    let merge_s = t_merge.elapsed().as_secs_f64();
    let (_, report) = api(sock, "GET", "/memory/report", None);
    guard.restore().expect("restore KSM settings");
    println!(
        "{t}: K filled 16 MiB of one page in {fill_s:.0} s; ksm_merging_pages {before} -> {after} \
         ({pages} identical pages) {merge_s:.0} s after KSM started"
    );
    // The VM's own KSM figure is the kernel's.
    let reported = report["ksm"]["merging_pages"].as_u64().unwrap();
    assert!(reported >= before + pages * 8 / 10, "{}", report["ksm"]);
    k.send("verify");
    assert_eq!(
        k.expect("verified ", Duration::from_secs(60)),
        "verified 16777216 mismatches 0"
    );
}

/// One record line of `memvisor balance --record`: the decisions that set a target, as
/// (guest, from MiB, to MiB).
fn set_targets(line: &serde_json::Value) -> Vec<(String, u64, u64)> {
    line["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "set_target")
        .map(|d| {
            (
                d["guest"].as_str().unwrap().to_string(),
                d["from"].as_u64().unwrap() / MIB,
                d["to"].as_u64().unwrap() / MIB,
            )
        })
        .collect()
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `memvisor balance` over both guests (see the module doc).
fn balance_part(h: &mut TestGuest, hs: &Path, k: &mut TestGuest, ks: &Path, rt: &Path) {
    let t = "test_kernel_hugetlbfs_ksm_and_balance";
    // What the controller will see: both guests' available memory from fresh statistics.
    let now = unix_now();
    let ah = wait_for("H's statistics", Duration::from_secs(120), || {
        stats_available(hs, now)
    });
    let ak = wait_for("K's statistics", Duration::from_secs(120), || {
        stats_available(ks, now)
    });
    assert!(
        ah > ak + 32 * MIB,
        "H ({} MiB available) is the freer guest, K has {} MiB",
        ah / MIB,
        ak / MIB
    );
    // Between the two: H can give some, K nothing.
    let headroom = (ah + ak) / 2 / MIB;
    let host = memvisor::report::overcommit::HostMemory::read()
        .unwrap()
        .mem_available;
    // The host is short whatever other processes do meanwhile (ballooning H, on hugetlb pages,
    // and K's never-touched pages does not raise MemAvailable).
    let floor = host / MIB + 1024;
    let tmp = TempDir::new("linux-balance");
    let record = tmp.path().join("balance.jsonl");
    let mut ctl = Running(Some(
        Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .args(["balance", "--runtime-dir"])
            .arg(rt)
            .arg("--min-host-free")
            .arg(format!("{floor}M"))
            .args(["--release-margin", "64M", "--guest-floor", "64M"])
            .arg("--headroom")
            .arg(format!("{headroom}M"))
            .args(["--max-step", "16M", "--psi-limit", "0", "--interval", "1"])
            // The balloons only: host swap another test switches on must not change the run.
            .arg("--no-swap")
            .arg("--record")
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let t0 = Instant::now();
    let (hs_name, ks_name) = (hs.display().to_string(), ks.display().to_string());
    // Until the controller has taken all it may (it inflated, then five ticks without a
    // change while the host is still short) and H's balloon has followed.
    wait_for(
        "the controller to take what H can spare",
        Duration::from_secs(600),
        || {
            assert!(
                ctl.child().try_wait().unwrap().is_none(),
                "memvisor balance ended"
            );
            let recs = records(&record);
            let changes: Vec<usize> = recs.iter().map(|r| set_targets(r).len()).collect();
            let settled = changes.iter().any(|n| *n > 0)
                && changes.len() >= 5
                && changes[changes.len() - 5..].iter().all(|n| *n == 0);
            let d = device(hs);
            (settled && d["target_pages"] == d["actual_pages"]).then_some(())
        },
    );
    let secs = t0.elapsed().as_secs_f64();
    let out = ctl.interrupt(Duration::from_secs(30));
    let log = common::text(&out);
    let recs = records(&record);
    let first = recs
        .iter()
        .map(set_targets)
        .find(|d| !d.is_empty())
        .unwrap_or_else(|| panic!("no decision:\n{log}"));
    assert!(
        first.iter().all(|(g, from, _)| *g == hs_name && *from == 0),
        "the first decisions inflate H (the freer guest): {first:?}\n{log}"
    );
    assert!(
        recs.iter()
            .flat_map(set_targets)
            .all(|(g, _, _)| g != ks_name),
        "K was never inflated:\n{log}"
    );
    let (dh, dk) = (device(hs), device(ks));
    assert_eq!(
        (dk["target_pages"].as_u64(), dk["actual_pages"].as_u64()),
        (Some(0), Some(0)),
        "K's balloon did not move: {dk}"
    );
    let h_mib = dh["actual_mib"].as_u64().unwrap();
    assert!(h_mib > 0, "H's balloon moved: {dh}");
    // The controller stopped at H's headroom: the guest's own MemAvailable.
    let l = {
        h.send("meminfo");
        h.expect("meminfo ", Duration::from_secs(60))
    };
    let avail_kb: u64 = l
        .split_whitespace()
        .skip_while(|w| *w != "MemAvailable:")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MemAvailable in {l}"));
    println!(
        "{t}: balance: H {} MiB available, K {} MiB; headroom {headroom} MiB, floor {floor} MiB: \
         H's balloon 0 -> {h_mib} MiB in {secs:.0} s ({} ticks), K untouched; H's MemAvailable now {} MiB",
        ah / MIB,
        ak / MIB,
        recs.len(),
        avail_kb / 1024
    );
    assert!(
        avail_kb / 1024 + 8 >= headroom,
        "H was pressed below its {headroom} MiB headroom: MemAvailable {avail_kb} kB\n{log}"
    );
    // ... and took what H could spare.
    assert!(
        h_mib + 8 >= (ah / MIB).saturating_sub(headroom),
        "the controller stopped early: H's balloon at {h_mib} MiB, {} MiB above the headroom\n{log}",
        (ah / MIB).saturating_sub(headroom)
    );
    for g in [h, k] {
        g.send("verify");
        let v = g.expect("verified ", Duration::from_secs(60));
        assert!(v.ends_with(" mismatches 0"), "{v}");
    }
}

/// See the module doc: hugetlbfs guest ballooned, mergeable guest merged, the controller with
/// both.
#[test]
fn test_kernel_hugetlbfs_ksm_and_balance() {
    let t = "test_kernel_hugetlbfs_ksm_and_balance";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let Some((vmlinux, initramfs)) = test_kernel_or_skip(t) else {
        return;
    };
    let t0 = Instant::now();
    // Declared first, dropped last: the guests are gone before the mount and the pool go back.
    let mount = match HugetlbfsMount::new(HugePageSize::Size2M) {
        Ok(m) => m,
        Err(e) => {
            skip(t, format!("cannot mount hugetlbfs with 2 MiB pages: {e}"));
            return;
        }
    };
    let pages = H_MIB * MIB / HUGE;
    let mut loan = match PoolLoan::reserve(pages) {
        Ok(l) => l,
        Err(e) => {
            skip(
                t,
                format!("cannot add {pages} pages to the 2 MiB pool: {e}"),
            );
            return;
        }
    };
    let free_reserved = pool(HugePageSize::Size2M).free;
    let (th, tk, trt) = (
        TempDir::new("linux-huge"),
        TempDir::new("linux-ksm"),
        TempDir::new("linux-rt"),
    );
    let rt = trt.path().to_str().unwrap();
    let h_mem = format!(
        "size={H_MIB}M,backend=hugetlbfs,mem-path={},prealloc=on",
        mount.path().display()
    );
    let balloon = "amount_mib=0,stats_polling_interval_s=1";
    let mut h = TestGuest::start(
        &vmlinux,
        &initramfs,
        &th,
        &["-m", &h_mem, "--balloon", balloon, "--runtime-dir", rt],
    );
    // H's huge pages are all in use once prealloc is done: the pool lock can go while it boots.
    wait_for("H's RAM preallocated", Duration::from_secs(120), || {
        assert!(h.vm.child().try_wait().unwrap().is_none(), "H ended");
        (pool(HugePageSize::Size2M).free + pages <= free_reserved).then_some(())
    });
    loan.unlock();
    let mut k = TestGuest::start(
        &vmlinux,
        &initramfs,
        &tk,
        &[
            "-m",
            "size=160M,mergeable=on",
            "--balloon",
            balloon,
            "--runtime-dir",
            rt,
        ],
    );
    let k_pid = k.pid();
    for g in [&mut h, &mut k] {
        assert_eq!(
            g.expect("ready", Duration::from_secs(900)),
            "ready (memvisor-agent)"
        );
    }
    println!(
        "{t}: both guests at /init in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let (hs, ks) = (th.path().join("api.sock"), tk.path().join("api.sock"));
    // The two parts touch different guests and host state: run them side by side.
    std::thread::scope(|s| {
        let hp = s.spawn(|| hugepages_part(&mut h, &hs, &mut loan));
        let kp = s.spawn(|| ksm_part(&mut k, &ks, k_pid));
        for p in [hp, kp] {
            if let Err(e) = p.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    balance_part(&mut h, &hs, &mut k, &ks, trt.path());
    for mut g in [h, k] {
        let out = g.vm.interrupt(Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(130), "{}", common::text(&out));
    }
    // K exited while KSM was stopped again (`ksm_part` restores the knobs while K runs on).
    common::prune_ksm_after_exit();
    println!("{t}: whole test {:.0} s", t0.elapsed().as_secs_f64());
}
