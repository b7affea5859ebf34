//! Swap as an overcommit method: `memvisor swap` (zram, swap files, off), per-VM reclaim to host
//! swap (`PUT /memory/reclaim`, `memvisor memory reclaim`), the standing resident limit, the
//! controller's swap lever (`memvisor balance` reclaiming a balloon-less guest), and what bad
//! input gets; and the fleet whose balloon-less half swap carries ([`fleet`]).
//!
//! Swap is host-global and other tests run meanwhile: every test that switches swap on holds
//! [`SWAP_LOCK`] and a [`HostSwapGuard`], which switches off every area that appeared, resets
//! every zram device that was configured and puts `vm.swappiness` back, also when the test
//! fails. Sizes: a 2 GiB zram device holds at most the 1 GiB guest (its data does not compress).

mod common;
#[path = "swap/fleet.rs"]
mod fleet;

use common::*;
use memvisor::host::swap;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// One swap-changing test at a time in this binary.
static SWAP_LOCK: Mutex<()> = Mutex::new(());

/// Puts host swap back as it was when created: areas that appeared are switched off, zram
/// devices configured since are reset, swap files created under `files` are removed,
/// `vm.swappiness` is restored.
struct HostSwapGuard {
    areas: Vec<PathBuf>,
    zram: Vec<(String, u64)>,
    swappiness: u32,
    state: PathBuf,
}

impl HostSwapGuard {
    fn new(state: PathBuf) -> Self {
        HostSwapGuard {
            areas: swap::active()
                .unwrap()
                .into_iter()
                .map(|d| d.path)
                .collect(),
            zram: swap::zram_names()
                .into_iter()
                .map(|n| {
                    let size = swap::zram_device(&n).map(|z| z.disksize_bytes).unwrap_or(0);
                    (n, size)
                })
                .collect(),
            swappiness: swap::swappiness().unwrap(),
            state,
        }
    }
}

impl Drop for HostSwapGuard {
    fn drop(&mut self) {
        for d in swap::active().unwrap_or_default() {
            if !self.areas.contains(&d.path) {
                let _ = swap::swapoff(&d.path);
                if d.kind == "file" {
                    let _ = std::fs::remove_file(&d.path);
                }
            }
        }
        for (name, size) in &self.zram {
            if *size == 0 && swap::zram_device(name).is_ok_and(|z| z.disksize_bytes != 0) {
                let _ = std::fs::write(format!("/sys/block/{name}/reset"), "1");
            }
        }
        if swap::swappiness().ok() != Some(self.swappiness) {
            let _ = swap::set_swappiness(self.swappiness);
        }
        let _ = std::fs::remove_file(&self.state);
    }
}

/// Root, no swap of anyone else's and an unused zram device; else one skip line.
fn swap_host_or_skip(test: &str) -> Option<String> {
    if !root_or_skip(test) {
        return None;
    }
    let zram = swap::zram_names()
        .into_iter()
        .find(|n| swap::zram_device(n).is_ok_and(|z| z.disksize_bytes == 0));
    match zram {
        Some(z) => Some(z),
        None => {
            skip(
                test,
                "no unused zram device (modprobe zram, or free /dev/zram0)",
            );
            None
        }
    }
}

/// What every test here starts with: the lock, the checks (KVM when `kvm`), a temporary
/// directory with the state file, and the guard (dropped first, so host swap is restored before
/// the lock goes). `None` after a skip line.
struct SwapTest {
    _guard: HostSwapGuard,
    zram: String,
    tmp: TempDir,
    state: PathBuf,
    _lock: std::sync::MutexGuard<'static, ()>,
}

fn swap_test(test: &str, kvm: bool, tag: &str) -> Option<SwapTest> {
    let lock = SWAP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if kvm && !kvm_or_skip(test) {
        return None;
    }
    let zram = swap_host_or_skip(test)?;
    let tmp = TempDir::new(tag);
    let state = tmp.path().join("swap.json");
    Some(SwapTest {
        _guard: HostSwapGuard::new(state.clone()),
        zram,
        tmp,
        state,
        _lock: lock,
    })
}

/// `memvisor memory reclaim --api-sock SOCK --to ...`: its output; `ok` says whether it must
/// succeed or fail.
fn reclaim_cli(ok: bool, sock: &Path, to_and_flags: &[&str]) -> String {
    let mut args = vec![
        "memory",
        "reclaim",
        "--api-sock",
        sock.to_str().unwrap(),
        "--to",
    ];
    args.extend_from_slice(to_and_flags);
    if ok {
        run_ok(&args)
    } else {
        run_err(&args)
    }
}

/// `memvisor swap zram 2G` on `/dev/ZRAM`, recorded in `state` (the test's guard undoes it).
fn zram_2g(zram: &str, state: &Path) {
    run_ok(&[
        "swap",
        "zram",
        "2G",
        "--device",
        &format!("/dev/{zram}"),
        "--state-file",
        state.to_str().unwrap(),
    ]);
}

fn run_ok(args: &[&str]) -> String {
    let o = memvisor(args);
    assert!(o.status.success(), "memvisor {args:?}: {}", text(&o));
    text(&o)
}

fn run_err(args: &[&str]) -> String {
    let o = memvisor(args);
    assert!(
        !o.status.success(),
        "memvisor {args:?} succeeded: {}",
        text(&o)
    );
    text(&o)
}

#[test]
fn swap_cli_sets_up_refuses_and_undoes_zram_and_swap_files() {
    let test = "swap_cli_sets_up_refuses_and_undoes_zram_and_swap_files";
    // Held to the end of the test: the guard restores host swap, then the lock goes.
    let Some(t) = swap_test(test, false, "swap-cli") else {
        return;
    };
    let (zram, state) = (t.zram.clone(), t.state.clone());
    let st = state.to_str().unwrap();
    let dev = format!("/dev/{zram}");
    let before = swap::active().unwrap();

    let out = run_ok(&["swap", "zram", "64M", "--device", &dev, "--state-file", st]);
    assert!(out.contains("disksize 0 B -> 64 MiB"), "{out}");
    let on = swap::active().unwrap();
    let area = on
        .iter()
        .find(|d| d.path == Path::new(&dev))
        .expect("zram is swap");
    assert_eq!(area.priority, swap::ZRAM_PRIORITY);
    assert_eq!(swap::zram_device(&zram).unwrap().disksize_bytes, 64 << 20);

    // Busy: the same device again changes nothing.
    let err = run_err(&["swap", "zram", "32M", "--device", &dev, "--state-file", st]);
    assert!(
        err.contains("is busy") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(swap::active().unwrap(), on);
    assert_eq!(swap::zram_device(&zram).unwrap().disksize_bytes, 64 << 20);
    // An algorithm the kernel does not offer is named with the ones it does.
    let err = run_err(&[
        "swap",
        "zram",
        "32M",
        "--algorithm",
        "nope",
        "--state-file",
        st,
    ]);
    assert!(err.contains("use one of"), "{err}");

    // tmpfs cannot hold a swap file: refused before anything is created.
    let shm = Path::new("/dev/shm").join(format!("memvisor-swap-{}", std::process::id()));
    if Path::new("/dev/shm").exists() {
        let err = run_err(&[
            "swap",
            "file",
            shm.to_str().unwrap(),
            "16M",
            "--state-file",
            st,
        ]);
        assert!(err.contains("tmpfs"), "{err}");
        assert!(!shm.exists());
    }
    // A swap file on the disk filesystem of cargo's temporary directory for integration tests
    // (inside the target directory, wherever CARGO_TARGET_DIR puts it), if it can hold one.
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("swapfile-{}", std::process::id()));
    let o = memvisor(&[
        "swap",
        "file",
        file.to_str().unwrap(),
        "16M",
        "--state-file",
        st,
    ]);
    let with_file = o.status.success();
    if with_file {
        assert!(swap::active()
            .unwrap()
            .iter()
            .any(|d| d.path == file && d.kind == "file"));
    } else {
        skip(test, format!("no swap file here: {}", text(&o).trim()));
        assert!(!file.exists(), "a refused swap file is removed");
    }

    let s: Value =
        serde_json::from_str(&run_ok(&["swap", "status", "--json", "--state-file", st])).unwrap();
    let mine: Vec<&Value> = s["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["set_up_by_memvisor"] == true)
        .collect();
    assert_eq!(mine.len(), 1 + with_file as usize, "{s}");
    assert!(s["swappiness"].is_u64(), "{s}");

    // off undoes exactly what memvisor set up.
    let out = run_ok(&["swap", "off", "--state-file", st]);
    assert!(out.contains("reset"), "{out}");
    assert_eq!(swap::active().unwrap(), before);
    assert_eq!(swap::zram_device(&zram).unwrap().disksize_bytes, 0);
    assert!(!file.exists());
    assert!(!state.exists());
    let out = run_ok(&["swap", "off", "--state-file", st]);
    assert!(out.contains("memvisor set up no swap"), "{out}");
}

#[test]
fn reclaim_to_zram_drops_rss_and_every_byte_comes_back() {
    let test = "reclaim_to_zram_drops_rss_and_every_byte_comes_back";
    // Held to the end of the test: the guard restores host swap, then the lock goes.
    let Some(t) = swap_test(test, true, "swap-reclaim") else {
        return;
    };
    let (zram, tmp, state) = (t.zram.clone(), &t.tmp, t.state.clone());
    let sock = tmp.path().join("vm.sock");
    let report = tmp.path().join("report.json");
    // 1 GiB guest; its 1008 MiB work area is filled with the pattern, verified after reclaim.
    let mut vm = start_vm(&sock, &report, "1G", "fill;hold;verify;hold");
    let pid = vm.pid();
    // Steps: #0 fill, #1 hold, #2 verify, #3 hold.
    wait_for_step(&sock, 1);

    // Without host swap, reclaim says how to set it up (when nobody else has swap on).
    if swap::active().unwrap().is_empty() {
        let err = reclaim_cli(false, &sock, &["256M"]);
        assert!(err.contains("memvisor swap zram 2G"), "{err}");
    }
    // Bad targets: above RAM, negative, not a number.
    let err = reclaim_cli(false, &sock, &["2G"]);
    assert!(err.contains("above the guest's configured RAM"), "{err}");
    for bad in [
        r#"{"target_resident_mib": -256}"#,
        r#"{"target_resident_mib": "256M"}"#,
    ] {
        let (s, v) = api(&sock, "PUT", "/memory/reclaim", Some(bad));
        assert_eq!(s, 400, "{bad}: {v}");
    }

    zram_2g(&zram, &state);
    let rss_before = proc_status_kib(pid, "VmRSS:").unwrap() << 10;
    let (_, before) = api(&sock, "GET", "/memory/reclaim", None);
    let out = reclaim_cli(true, &sock, &["256M", "--json"]);
    let o: Value = serde_json::from_str(&out).unwrap();
    let rss_after = proc_status_kib(pid, "VmRSS:").unwrap() << 10;
    println!(
        "reclaim: {} MiB paged out in {:.2} s; VmRSS {} -> {} MiB",
        o["paged_out_bytes"].as_u64().unwrap() >> 20,
        o["seconds"].as_f64().unwrap(),
        rss_before >> 20,
        rss_after >> 20
    );
    assert_eq!(o["method"], "pageout", "{o}");
    assert!(
        o["resident_after_bytes"].as_u64().unwrap() <= 256 << 20,
        "{o}"
    );
    assert!(
        rss_before - rss_after >= 600 << 20,
        "VmRSS {rss_before} -> {rss_after}"
    );
    // The page map shows the pages swapped out.
    let (_, m) = api(&sock, "GET", "/memory/report", None);
    assert!(m["swapped_bytes"].as_u64().unwrap() >= 600 << 20, "{m}");
    let zdev = swap::zram_device(&zram).unwrap();
    assert!(zdev.orig_data_bytes >= 600 << 20, "{zdev:?}");

    // The guest verifies every byte (faulting them back in from zram), then holds again.
    finish(&sock);
    wait_for_step(&sock, 3);
    let (_, after) = api(&sock, "GET", "/memory/reclaim", None);
    let swap_ins =
        after["major_faults"].as_u64().unwrap() - before["major_faults"].as_u64().unwrap();
    println!("swap-ins (major faults) while verifying: {swap_ins}");
    // At least one per 64 KiB paged out (the kernel may swap large folios in at once).
    assert!(
        swap_ins >= o["paged_out_bytes"].as_u64().unwrap() / (64 << 10),
        "{after}"
    );
    finish(&sock);
    let (bad, bytes) = verified(&mut vm, &report);
    assert_eq!(bad, 0, "mismatched words");
    assert!(bytes >= 768 << 20, "{bytes}");
}

#[test]
fn resident_limit_keeps_a_growing_guest_under_it() {
    let test = "resident_limit_keeps_a_growing_guest_under_it";
    // Held to the end of the test: the guard restores host swap, then the lock goes.
    let Some(t) = swap_test(test, true, "swap-limit") else {
        return;
    };
    let (zram, tmp, state) = (t.zram.clone(), &t.tmp, t.state.clone());
    zram_2g(&zram, &state);
    let sock = tmp.path().join("vm.sock");
    let report = tmp.path().join("report.json");
    let limit: u64 = 384 << 20;
    // The guest touches its whole work area page by page (growing), fills it, holds.
    // Steps: #0 touch, #1 fill, #2 hold, #3 verify, #4 hold.
    let mut vm = start_vm(
        &sock,
        &report,
        "size=1G,resident-limit=384M",
        "touch:work-only=1;fill;hold;verify;hold",
    );
    let mut peak = 0;
    wait_every(
        "the guest's hold step",
        Duration::from_secs(300),
        Duration::from_millis(100),
        || {
            let (_, s) = api(&sock, "GET", "/memory/reclaim", None);
            peak = peak.max(s["resident_bytes"].as_u64().unwrap_or(0));
            step(&sock) == Some(2)
        },
    );
    // Settled: under the limit within one reclaim step (a 2 MiB chunk, plus what the guest
    // touched since the last check: it touches nothing while it holds).
    wait_until("resident under the limit", Duration::from_secs(10), || {
        api(&sock, "GET", "/memory/reclaim", None).1["resident_bytes"]
            .as_u64()
            .unwrap()
            <= limit + (2 << 20)
    });
    let (_, s) = api(&sock, "GET", "/memory/reclaim", None);
    println!(
        "limit 384 MiB: peak resident seen {} MiB, {} limit reclaims, {} MiB paged out",
        peak >> 20,
        s["limit_reclaims"],
        s["paged_out_bytes_total"].as_u64().unwrap() >> 20
    );
    assert_eq!(s["resident_limit_bytes"].as_u64(), Some(limit), "{s}");
    assert!(s["limit_reclaims"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["paged_out_bytes_total"].as_u64().unwrap() >= 512 << 20,
        "{s}"
    );
    assert!(s["limit_error"].is_null(), "{s}");

    // Verify pulls the data back in; the limit keeps pushing it out; every byte is right.
    finish(&sock);
    wait_for_step(&sock, 4);
    wait_until(
        "resident under the limit after verify",
        Duration::from_secs(10),
        || {
            api(&sock, "GET", "/memory/reclaim", None).1["resident_bytes"]
                .as_u64()
                .unwrap()
                <= limit + (2 << 20)
        },
    );
    // The limit can be lifted over the API.
    let (st, _) = api(
        &sock,
        "PATCH",
        "/memory",
        Some(r#"{"resident_limit_mib": 0}"#),
    );
    assert_eq!(st, 204);
    assert!(api(&sock, "GET", "/memory/reclaim", None).1["resident_limit_bytes"].is_null());
    finish(&sock);
    let (bad, bytes) = verified(&mut vm, &report);
    assert_eq!(bad, 0, "mismatched words");
    assert!(bytes >= 768 << 20);
}

#[test]
fn working_set_of_a_guest_touching_128m_and_reclaim_leaves_it() {
    let test = "working_set_of_a_guest_touching_128m_and_reclaim_leaves_it";
    // Held to the end of the test: the guard restores host swap, then the lock goes.
    let Some(t) = swap_test(test, true, "swap-ws") else {
        return;
    };
    let (zram, tmp, state) = (t.zram.clone(), &t.tmp, t.state.clone());
    let sock = tmp.path().join("vm.sock");
    let report = tmp.path().join("report.json");
    // Steps: #0 fill (all 1008 MiB of the work area), #1 hold writing its first 128 MiB
    // (GPA 16-144 MiB) round after round, #2 verify.
    let mut vm = start_vm(&sock, &report, "1G", "fill;hold:ws=128M;verify");
    wait_for_step(&sock, 1);
    let ws0 = api(&sock, "GET", "/memory/working-set", None).1;
    assert_eq!(ws0["tracking"], true, "{ws0}");
    // The first window after tracking started covers only the hold step's writes.
    let mut ws = Value::Null;
    wait_every(
        "the first working-set window",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            ws = api(&sock, "GET", "/memory/working-set", None).1;
            ws["working_set_bytes"].is_u64()
        },
    );
    let est = ws["working_set_bytes"].as_u64().unwrap();
    println!(
        "working set: {} MiB by {} ({})",
        est >> 20,
        ws["method"],
        ws["notes"]
    );
    let want = 128u64 << 20;
    assert!(
        est.abs_diff(want) <= want / 4,
        "estimate {est} vs {want}: {ws}"
    );

    zram_2g(&zram, &state);
    let (_, o) = api(
        &sock,
        "PUT",
        "/memory/reclaim",
        Some(r#"{"target_resident_mib": 256}"#),
    );
    println!("reclaim: {o}");
    assert_eq!(o["order"], "coldest-first", "{o}");
    assert!(
        o["resident_after_bytes"].as_u64().unwrap() <= 256 << 20,
        "{o}"
    );
    // The 128 MiB in use stayed resident.
    let (present, m) = present_bytes(&sock, 16 << 20, 128 << 20);
    assert!(
        present >= 124 << 20,
        "only {present} of the working set stayed: {m}"
    );
    // The host-wide report shows both, and the zram device.
    let all = report_overcommit_all(&tmp.path().join("runtime"));
    let v = &all["vms"][0]["memory"];
    assert!(v["swapped_bytes"].as_u64().unwrap() >= 600 << 20, "{all}");
    assert!(v["working_set_bytes"].is_u64(), "{all}");
    assert_eq!(all["swapped_bytes"], v["swapped_bytes"], "{all}");
    assert!(
        all["swap"]["zram"][0]["orig_data_bytes"].as_u64().unwrap() >= 600 << 20,
        "{all}"
    );
    // And the guest, still writing them, hardly faults anything back in.
    let faults0 = api(&sock, "GET", "/memory/reclaim", None).1["major_faults"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let faults = api(&sock, "GET", "/memory/reclaim", None).1["major_faults"]
        .as_u64()
        .unwrap()
        - faults0;
    println!("swap-ins in the 4 s after reclaim: {faults}");
    assert!(
        faults < 1024,
        "{faults} swap-ins: reclaim took part of the working set"
    );
    finish(&sock);
    let (bad, _) = verified(&mut vm, &report);
    assert_eq!(bad, 0, "mismatched words");
}

#[test]
fn balance_reclaims_a_balloonless_guest_to_host_swap_only_with_the_lever_on() {
    let test = "balance_reclaims_a_balloonless_guest_to_host_swap_only_with_the_lever_on";
    // Held to the end of the test: the guard restores host swap, then the lock goes.
    let Some(t) = swap_test(test, true, "swap-balance") else {
        return;
    };
    let (zram, tmp, state) = (t.zram.clone(), &t.tmp, t.state.clone());
    let sock = tmp.path().join("vm.sock");
    let report = tmp.path().join("report.json");
    let rt = tmp.path().join("runtime");
    let record = tmp.path().join("balance.jsonl");
    // A 1 GiB guest without a balloon: #0 fill, #1 hold, #2 verify.
    let mut vm = start_vm(&sock, &report, "1G", "fill;hold;verify");
    wait_for_step(&sock, 1);
    // A floor far above what the host has: the controller is short by gigabytes, and the
    // balloon-less guest is all it could take from.
    let avail = memvisor::report::overcommit::HostMemory::read()
        .unwrap()
        .mem_available;
    let floor = format!("{}M", (avail >> 20) + 4096);
    let balance = |extra: &[&str]| {
        let mut args = vec!["balance", "--once", "--runtime-dir"];
        args.push(rt.to_str().unwrap());
        args.extend_from_slice(&["--min-host-free", &floor, "--record"]);
        args.push(record.to_str().unwrap());
        args.extend_from_slice(extra);
        run_ok(&args)
    };
    let reclaims = || api(&sock, "GET", "/memory/reclaim", None).1["reclaims"].as_u64();
    if swap::active().unwrap().is_empty() {
        let out = balance(&[]);
        assert!(out.contains("host swap is off"), "{out}");
        assert_eq!(reclaims(), Some(0), "nothing reclaimed without host swap");
    }
    zram_2g(&zram, &state);
    let out = balance(&["--no-swap"]);
    assert!(out.contains("the swap lever is off (--no-swap)"), "{out}");
    assert_eq!(reclaims(), Some(0), "nothing reclaimed with --no-swap");

    let before = api(&sock, "GET", "/memory/reclaim", None).1["resident_bytes"]
        .as_u64()
        .unwrap();
    let out = balance(&[]);
    println!("{out}");
    let line = out
        .lines()
        .find(|l| l.contains("reclaim ") && l.contains("to host swap"))
        .unwrap_or_else(|| panic!("no reclaim decision: {out}"));
    assert!(
        line.contains("no balloon") && line.contains("swap lever"),
        "{line}"
    );
    assert!(!line.contains("FAILED"), "{line}");
    let st = api(&sock, "GET", "/memory/reclaim", None).1;
    assert_eq!(st["reclaims"], 1, "{st}");
    // One step of the default --max-step (256M) paged out.
    let after = st["resident_bytes"].as_u64().unwrap();
    assert!(before - after >= 200 << 20, "{before} -> {after}: {st}");
    let rec = std::fs::read_to_string(&record).unwrap();
    assert!(rec.contains(r#""kind":"reclaim""#), "{rec}");

    // The guest verifies every byte, some of them faulted back in from zram.
    finish(&sock);
    let (bad, bytes) = verified(&mut vm, &report);
    assert_eq!(bad, 0, "mismatched words");
    assert!(bytes >= 768 << 20, "{bytes}");
}
