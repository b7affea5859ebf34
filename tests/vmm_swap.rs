//! The in-VMM swap (`memvisor memory swap-out/swap-in`, `GuestRam::swap_out/swap_in`): guest
//! memory written to a file, dropped from host RAM and served back through userfaultfd, with
//! no host swap involved.
//!
//! - guest RAM alone (no VM): anonymous and memfd regions read back byte for byte through
//!   faults, a discard frees file space and reads zeros, swap-in brings the rest back; a
//!   request for some guest-physical ranges (what `cold_only` sends) writes only their whole
//!   pages and leaves the rest resident; bad requests are refused and change nothing;
//! - the built-in guest (library, sync points): ~1 GiB swapped out, host RSS drops, the guest
//!   verifies every byte through uffd faults, swap-in;
//! - the same on hugetlbfs (2 MiB pages, a scratch pool): huge pages go back to the pool;
//! - `memvisor run` through the CLI and API: 768 MiB of a 1 GiB guest's data swapped out, the
//!   VMM's RSS drops, a balloon inflate frees the ballooned pages' blocks in the file, swap-in,
//!   and the guest verifies all its data (0 mismatches), every thread under its seccomp filter;
//! - `cold_only`: a guest writing 128 MiB of its 496 MiB round after round keeps those
//!   resident while the rest goes to the file, and verifies all of it (0 mismatches).

mod common;

use common::{
    finish, present_bytes, start_vm, verified, wait_every, wait_for_step, wait_until, ChildVm,
    TempDir,
};
use common::{kvm_or_skip, memvisor, proc_status_kib, root_or_skip, text, uffd_or_skip};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::memory::{GuestRam, SwapError, SwapOutRequest};
use memvisor::report::run::{Outcome, RunReport};
use memvisor::runner::{RunOptions, StartOptions, Vmm};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;

/// Disk space a file takes.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

fn resident(ram: &GuestRam) -> u64 {
    ram.resident_bytes().iter().sum()
}

fn request(file: &Path) -> SwapOutRequest {
    SwapOutRequest {
        file: file.to_path_buf(),
        only: None,
    }
}

/// The byte at offset `i` of a test pattern.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8 ^ seed)
        .collect()
}

#[test]
fn guest_ram_swaps_out_reads_back_through_faults_and_swaps_in() {
    let t = "guest_ram_swaps_out_reads_back_through_faults_and_swaps_in";
    if !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("vmm-swap");
    let file = dir.path().join("ram.swap");
    let ram = GuestRam::new(&[
        RegionConfig::parse(0, "size=64M").unwrap(),
        RegionConfig::parse(1, "size=64M,shared=on").unwrap(),
    ])
    .unwrap();
    let mem = ram.memory();
    // 48 MiB of data in each region; the last 16 MiB of each stays untouched.
    let data = pattern(48 << 20, 7);
    for gpa in [0, 64 * MIB] {
        mem.write_slice(&data, GuestAddress(gpa)).unwrap();
    }
    let before = resident(&ram);
    assert!(before >= 96 * MIB, "{before}");

    let out = ram.swap_out(&request(&file)).unwrap();
    assert_eq!(out.bytes_written, 96 * MIB, "{out:?}");
    assert_eq!(out.regions, vec![0, 1]);
    let after = resident(&ram);
    assert!(after <= MIB, "host memory dropped: {after} bytes left");
    assert!(
        allocated(&file) >= 96 * MIB && allocated(&file) <= 97 * MIB,
        "the file holds the written pages only (sparse): {}",
        allocated(&file)
    );
    let st = ram.swap_status();
    assert_eq!(st.state, "swapped_out");
    assert_eq!(st.bytes_in_file, 96 * MIB);

    // Refused, nothing changed: a second swap-out.
    assert!(matches!(
        ram.swap_out(&request(&dir.path().join("other"))),
        Err(SwapError::AlreadySwappedOut { .. })
    ));
    assert!(!dir.path().join("other").exists());

    // A discard (the balloon's path) of 8 MiB of swapped-out data frees its file space and
    // reads zeros.
    let held = allocated(&file);
    let out_d = ram.discard(8 * MIB, 8 * MIB).unwrap();
    assert_eq!(out_d.released, 8 * MIB);
    let freed = held - allocated(&file);
    assert_eq!(freed, 8 * MIB, "file space of the discarded pages");
    let mut back = vec![0u8; 48 << 20];
    mem.read_slice(&mut back, GuestAddress(0)).unwrap();
    assert!(
        back[8 << 20..16 << 20].iter().all(|&b| b == 0),
        "discarded: zeros"
    );
    assert!(back[..8 << 20] == data[..8 << 20] && back[16 << 20..] == data[16 << 20..]);
    // Half of region 1 through faults.
    let mut half = vec![0u8; 24 << 20];
    mem.read_slice(&mut half, GuestAddress(64 * MIB)).unwrap();
    assert!(half[..] == data[..24 << 20], "region 1 reads back");
    let st = ram.swap_status();
    assert!(st.faults >= (40 * MIB + 24 * MIB) / 4096, "{st:?}");
    assert_eq!(st.bytes_in_file, 24 * MIB, "{st:?}");
    assert!(st.discarded_bytes >= 8 * MIB, "{st:?}");

    // Swap-in: the 24 MiB still in the file come back, the file goes.
    let r = ram.swap_in().unwrap();
    assert_eq!(r.bytes_read, 24 * MIB, "{r:?}");
    assert!(!file.exists(), "the swap file is removed");
    assert_eq!(ram.swap_status().state, "off");
    assert!(resident(&ram) >= 88 * MIB);
    mem.read_slice(&mut half, GuestAddress(64 * MIB + (24 << 20)))
        .unwrap();
    assert!(half[..] == data[24 << 20..], "the rest of region 1 is back");
    // Unregistered: a never-touched page is an ordinary zero page now.
    assert_eq!(mem.read_obj::<u64>(GuestAddress(60 * MIB)).unwrap(), 0);
    assert!(matches!(ram.swap_in(), Err(SwapError::NotSwappedOut)));

    // Swapping out again works (a fresh file), and dropping guest RAM removes the file.
    ram.swap_out(&request(&file)).unwrap();
    assert!(file.exists());
    drop(ram);
    assert!(!file.exists(), "the swap file goes with the VM");
}

#[test]
fn only_the_requested_ranges_are_swapped_out_and_the_rest_stays_resident() {
    let t = "only_the_requested_ranges_are_swapped_out_and_the_rest_stays_resident";
    if !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("vmm-swap-only");
    let file = dir.path().join("ram.swap");
    // Two regions (GPA 0-16 MiB and 16-32 MiB), all written.
    let ram = GuestRam::new(&[
        RegionConfig::parse(0, "size=16M").unwrap(),
        RegionConfig::parse(1, "size=16M,shared=on").unwrap(),
    ])
    .unwrap();
    let mem = ram.memory();
    let data = pattern(32 << 20, 3);
    mem.write_slice(&data, GuestAddress(0)).unwrap();
    // 4-10 MiB of region 0, and 14-18 MiB across the boundary: 10 MiB in all. A range end
    // inside a page leaves that page out.
    let req = SwapOutRequest {
        file: file.clone(),
        only: Some(vec![(4 * MIB, 6 * MIB), (14 * MIB, 4 * MIB + 100)]),
    };
    let out = ram.swap_out(&req).unwrap();
    assert_eq!(out.bytes_written, 10 * MIB, "{out:?}");
    let left = out.resident_after_bytes;
    assert!(
        left >= 22 * MIB && left <= out.resident_before_bytes - 10 * MIB,
        "the other 22 MiB stay resident: {out:?}"
    );
    // Every byte reads back, the swapped-out ones through faults.
    let mut back = vec![0u8; 32 << 20];
    mem.read_slice(&mut back, GuestAddress(0)).unwrap();
    assert!(back == data, "data differs after the swap-out");
    assert_eq!(ram.swap_status().faulted_in_bytes, 10 * MIB);
    ram.swap_in().unwrap();
    assert!(!file.exists());
}

#[test]
fn bad_swap_requests_are_refused_and_change_nothing() {
    let t = "bad_swap_requests_are_refused_and_change_nothing";
    if !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("vmm-swap-bad");
    let ram = GuestRam::new(&[RegionConfig::parse(0, "size=8M").unwrap()]).unwrap();
    ram.memory()
        .write_obj(0x1234u64, GuestAddress(0x1000))
        .unwrap();
    let exists = dir.path().join("exists");
    std::fs::write(&exists, b"mine").unwrap();
    let e = ram.swap_out(&request(&exists)).unwrap_err();
    assert!(matches!(e, SwapError::FileExists { .. }), "{e}");
    assert_eq!(std::fs::read(&exists).unwrap(), b"mine", "left alone");
    let e = ram
        .swap_out(&request(&dir.path().join("no/such/dir/f")))
        .unwrap_err();
    assert!(matches!(e, SwapError::Create { .. }), "{e}");
    match nix::sys::statfs::statfs("/dev/shm") {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => {
            let shm = PathBuf::from(format!("/dev/shm/memvisor-swap-{}", std::process::id()));
            let e = ram.swap_out(&request(&shm)).unwrap_err();
            assert!(
                matches!(e, SwapError::InMemoryFs { fs: "tmpfs", .. }),
                "{e}"
            );
            assert!(!shm.exists(), "nothing left behind");
        }
        _ => common::skip(
            t,
            "/dev/shm is not tmpfs here: the in-memory filesystem case",
        ),
    }
    // A filesystem without room for the pages: refused before anything is written.
    let full = dir.path().join("full");
    let e = memvisor::memory::SwapFile::create(&full, 1 << 20, u64::MAX / 2).unwrap_err();
    assert!(matches!(e, SwapError::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("nothing was swapped out"), "{e}");
    assert!(!full.exists(), "nothing left behind");
    assert_eq!(ram.swap_status().state, "off");
    assert_eq!(
        ram.memory().read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
        0x1234
    );
    assert!(resident(&ram) >= 4096, "nothing dropped");

    // A region served through userfaultfd already cannot be registered again.
    let uffd_ram =
        GuestRam::new(&[RegionConfig::parse(0, "size=8M,backend=uffd").unwrap()]).unwrap();
    let e = uffd_ram
        .swap_out(&request(&dir.path().join("u")))
        .unwrap_err();
    assert!(matches!(e, SwapError::UffdRegion { region: 0, .. }), "{e}");
}

/// Runs `config` with `hook` at its sync points; returns the report.
fn run_with_hook(config: &VmConfig, hook: memvisor::vmm::vcpu::SyncHook) -> RunReport {
    let mut vmm = Vmm::start_with(
        config,
        StartOptions {
            sync: Some(hook),
            ..Default::default()
        },
    )
    .expect("start");
    vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(600)),
        ..Default::default()
    })
}

/// The results of every `verify` step, in order.
fn verifies(report: &RunReport) -> Vec<[u64; 3]> {
    report.vcpus[0]
        .ops
        .iter()
        .filter(|o| o.name == "verify")
        .map(|o| o.results)
        .collect()
}

/// What the sync hook saw, for the test thread.
#[derive(Default, Debug)]
struct Seen {
    dropped: u64,
    written: u64,
    faults_at_2: u64,
    read_back: u64,
    regrown: u64,
    /// 2 MiB pages the swap-out gave back to the pool.
    pool_freed: u64,
    error: Option<String>,
}

/// The built-in guest fills its work area, the hook swaps all guest RAM out at sync 1, the
/// guest verifies it (every page through a uffd fault), the hook swaps out and at once in at
/// sync 2, and the guest verifies again.
fn guest_swap(t: &str, regions: Vec<RegionConfig>, file: PathBuf, min_data: u64) -> Seen {
    let config = VmConfig {
        vcpus: 1,
        memory: regions,
        workload: Workload::parse(&["fill;sync:tag=1;verify;sync:tag=2;verify"]).unwrap(),
        ..Default::default()
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let hook = Arc::new(move |_vcpu: u32, tag: u64, ram: &GuestRam| {
        let mut s = s.lock().unwrap();
        let r = (|| -> Result<(), SwapError> {
            if tag == 1 {
                let free = || common::pool(hugepages::HugePageSize::Size2M).free;
                let (before, pool_before) = (resident(ram), free());
                let out = ram.swap_out(&request(&file))?;
                s.dropped = before.saturating_sub(resident(ram));
                s.pool_freed = free().saturating_sub(pool_before);
                s.written = out.bytes_written;
            } else {
                s.faults_at_2 = ram.swap_status().faults;
                ram.swap_in()?;
                ram.swap_out(&request(&file))?;
                let low = resident(ram);
                s.read_back = ram.swap_in()?.bytes_read;
                s.regrown = resident(ram) - low;
            }
            Ok(())
        })();
        if let Err(e) = r {
            s.error = Some(e.to_string());
        }
    });
    let report = run_with_hook(&config, hook);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{t}: {}",
        report.to_text()
    );
    assert_eq!(seen.error, None, "{t}");
    let v = verifies(&report);
    assert_eq!(v.len(), 2, "{t}: {}", report.to_text());
    for r in &v {
        assert!(r[0] >= min_data, "{t}: verified {} bytes", r[0]);
        assert_eq!(r[1], 0, "{t}: mismatches: {}", report.to_text());
    }
    assert!(seen.written >= min_data, "{t}: {seen:?}");
    assert!(
        seen.dropped >= min_data,
        "{t}: host memory dropped: {seen:?}"
    );
    assert!(seen.read_back >= min_data, "{t}: {seen:?}");
    assert!(seen.regrown >= min_data, "{t}: {seen:?}");
    println!("{t}: {seen:?}");
    seen
}

#[test]
fn the_guest_verifies_every_byte_through_uffd_faults_after_a_swap_out() {
    let t = "the_guest_verifies_every_byte_through_uffd_faults_after_a_swap_out";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("vmm-swap-guest");
    // 1 GiB: the guest's 16 MiB and a 1008 MiB work area it fills.
    let regions = vec![
        RegionConfig::parse(0, "size=16M").unwrap(),
        RegionConfig::parse(1, "size=1008M,thp=off").unwrap(),
    ];
    let seen = guest_swap(t, regions, dir.path().join("guest.swap"), 1008 * MIB);
    // Every page of the work area faulted once, at least.
    assert!(seen.faults_at_2 >= 1008 * MIB / 4096, "{seen:?}");
}

#[test]
fn hugetlbfs_guest_memory_swaps_out_to_the_pool_and_back() {
    let t = "hugetlbfs_guest_memory_swaps_out_to_the_pool_and_back";
    if !kvm_or_skip(t) || !uffd_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let size = 512 * MIB;
    let scratch = match hugepages::HugetlbfsScratch::new(hugepages::HugePageSize::Size2M, size) {
        Ok(s) => s,
        Err(e) => {
            common::skip(
                t,
                format_args!("no scratch hugetlbfs with 512 MiB of 2M pages: {e}"),
            );
            return;
        }
    };
    let dir = TempDir::new("vmm-swap-huge");
    let regions = vec![
        RegionConfig::parse(0, "size=16M").unwrap(),
        RegionConfig::parse(
            1,
            &format!(
                "size=512M,backend=hugetlbfs,mem-path={}",
                scratch.path().display()
            ),
        )
        .unwrap(),
    ];
    let free_before = scratch.free_pages().unwrap();
    let seen = guest_swap(t, regions, dir.path().join("huge.swap"), 496 * MIB);
    assert!(seen.faults_at_2 >= 496 * MIB / (2 * MIB), "{seen:?}");
    assert!(
        seen.pool_freed >= 248,
        "the swap-out gave the filled huge pages back to the pool: {seen:?}"
    );
    // Back after the VM: every page returned.
    assert_eq!(scratch.free_pages().unwrap(), free_before);
}

fn rss(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:").expect("VmRSS") * 1024
}

fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) =
        memvisor::control::api::client::request(sock, method, path, body).expect("API answers");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[test]
fn memvisor_run_swaps_out_768m_through_the_cli_and_the_balloon_frees_file_space() {
    let t = "memvisor_run_swaps_out_768m_through_the_cli_and_the_balloon_frees_file_space";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("vmm-swap-run");
    let sock = dir.path().join("api.sock");
    let file = dir.path().join("vm.swap");
    let s = sock.to_str().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args([
            "run",
            "-m",
            "16M",
            "-m",
            "size=1008M,thp=off",
            "--api-sock",
            s,
        ])
        .args(["--balloon", "amount_mib=0,deflate_on_oom=on", "--json"])
        .args(["-w", "balloon:data=768M,seconds=0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut vm = ChildVm {
        child: Some(child),
        sock: sock.clone(),
    };
    wait_until("the API socket", Duration::from_secs(30), || sock.exists());
    // Guest RAM resident: the 768 MiB of data and the guest's own pages.
    wait_until(
        "the guest to fill 768 MiB",
        Duration::from_secs(120),
        || {
            api(&sock, "GET", "/memory/report", None).1["resident_bytes"]
                .as_u64()
                .unwrap_or(0)
                >= 768 * MIB
        },
    );
    // The threads that will do the work are there, each under its filter.
    assert_eq!(common::threads_named(pid, "vmm-swap").len(), 1);

    // Refused before anything happens.
    for (body, needle) in [
        (r#"{"file": "relative.swap"}"#, "absolute path"),
        (
            r#"{"file": "/x", "cold_only": true}"#,
            "working-set estimate",
        ),
        (r#"{"fil": "/x"}"#, "unknown field"),
    ] {
        let (st, b) = api(&sock, "PUT", "/memory/swap-out", Some(body));
        assert_eq!(st, 400, "{body}: {b}");
        assert!(b["fault_message"].as_str().unwrap().contains(needle), "{b}");
    }
    let (st, b) = api(&sock, "PUT", "/memory/swap-in", None);
    assert_eq!(st, 400, "{b}");

    let before = rss(pid);
    let out = memvisor(&[
        "memory",
        "swap-out",
        "--api-sock",
        s,
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]);
    let after = rss(pid);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!(
        "{t}: swap-out {r}; VMM RSS {} -> {} MiB",
        before / MIB,
        after / MIB
    );
    assert!(r["bytes_written"].as_u64().unwrap() >= 768 * MIB, "{r}");
    assert!(
        r["resident_after_bytes"].as_u64().unwrap() < 16 * MIB,
        "{r}"
    );
    assert!(
        before - after >= 600 * MIB,
        "the VMM's RSS dropped by {} MiB",
        (before - after) / MIB
    );
    let held = allocated(&file);
    assert!(held >= 768 * MIB, "the file holds the data: {held}");
    let (st, b) = api(
        &sock,
        "PUT",
        "/memory/swap-out",
        Some(&format!(r#"{{"file": "{}2"}}"#, file.display())),
    );
    assert_eq!(st, 400, "{b}");
    assert!(b["fault_message"]
        .as_str()
        .unwrap()
        .contains("already swapped out"));

    // The guest keeps running: its rolling verification faults pages back from the file.
    wait_until(
        "faults served from the file",
        Duration::from_secs(60),
        || {
            api(&sock, "GET", "/memory/report", None).1["vmm_swap"]["faults"]
                .as_u64()
                .unwrap_or(0)
                > 1000
        },
    );

    // Inflating by 512 MiB takes the ~240 MiB the guest never touched (not in the file), then
    // ~270 MiB of its data's tail, whose blocks in the file are freed.
    let (st, b) = api(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 512}"#));
    assert_eq!(st, 204, "{b}");
    wait_until(
        "the balloon to reach 512 MiB",
        Duration::from_secs(120),
        || api(&sock, "GET", "/balloon/device", None).1["actual_mib"] == 512,
    );
    let (_, report) = api(&sock, "GET", "/memory/report", None);
    let vs = &report["vmm_swap"];
    let freed = held.saturating_sub(allocated(&file));
    println!(
        "{t}: after inflating: {vs}; file blocks freed {} MiB",
        freed / MIB
    );
    assert_eq!(vs["state"], "swapped_out", "{vs}");
    assert!(
        freed >= 256 * MIB,
        "file space freed by the balloon: {} MiB",
        freed / MIB
    );
    assert!(vs["discarded_bytes"].as_u64().unwrap() >= 500 * MIB, "{vs}");
    let (_, m) = api(&sock, "GET", "/metrics", None);
    assert!(
        m.as_str()
            .unwrap()
            .contains("memvisor_vmm_swap_swapped_out 1"),
        "{m}"
    );

    let out = memvisor(&["memory", "swap-in", "--api-sock", s]);
    assert!(out.status.success(), "{}", text(&out));
    println!("{t}: {}", text(&out).trim());
    assert!(!file.exists(), "the file is removed at swap-in");
    let (_, report) = api(&sock, "GET", "/memory/report", None);
    assert_eq!(report["vmm_swap"]["state"], "off");
    assert_eq!(report["vmm_swap"]["swap_ins"], 1);

    // The guest verifies everything it still holds (0 mismatches) and ends.
    let out = memvisor(&["vm", "finish-step", "--api-sock", s]);
    assert!(out.status.success(), "{}", text(&out));
    let child = vm.child.take().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let op = &report["vcpus"][0]["ops"][0];
    assert_eq!(op["name"], "balloon", "{report}");
    assert_eq!(op["results"][1], 0, "mismatches: {op}");
    assert!(op["results"][0].as_u64().unwrap() >= 480 * MIB, "{op}");
}

#[test]
fn cold_only_swap_out_keeps_the_working_set_resident() {
    let t = "cold_only_swap_out_keeps_the_working_set_resident";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("vmm-swap-cold");
    let sock = dir.path().join("api.sock");
    let report = dir.path().join("report.json");
    let file = dir.path().join("cold.swap");
    // Steps: #0 fill (the 496 MiB work area), #1 hold writing its first 128 MiB (GPA
    // 16-144 MiB) round after round, #2 verify.
    let mut vm = start_vm(&sock, &report, "512M", "fill;hold:ws=128M;verify");
    wait_for_step(&sock, 1);
    let body = serde_json::json!({ "file": file, "cold_only": true }).to_string();
    // No estimate yet: refused, tracking starts, the answer says when to retry.
    let (st, b) = api(&sock, "PUT", "/memory/swap-out", Some(&body));
    assert_eq!(st, 400, "{b}");
    let msg = b["fault_message"].as_str().unwrap().to_string();
    if msg.contains("this VM has none") {
        common::skip(t, format!("no working-set estimate here: {msg}"));
        return;
    }
    assert!(
        msg.contains("tracking has started") && msg.contains("retry"),
        "{msg}"
    );
    assert!(!file.exists(), "nothing was written");
    let mut out = serde_json::Value::Null;
    wait_every(
        "the first working-set window",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let (st, b) = api(&sock, "PUT", "/memory/swap-out", Some(&body));
            out = b;
            st == 200
        },
    );
    println!("{t}: {out}");
    let written = out["bytes_written"].as_u64().unwrap();
    // Most of the 368 MiB outside the working set went out; the 128 MiB in it did not
    // (at most 512 MiB are backed, at least 124 of them stay).
    assert!(written >= 300 * MIB, "{out}");
    assert!(written <= (512 - 124) * MIB, "{out}");
    let before = out["resident_before_bytes"].as_u64().unwrap();
    let after = out["resident_after_bytes"].as_u64().unwrap();
    assert!(before - after >= 300 * MIB, "{out}");
    let (present, m) = present_bytes(&sock, 16 << 20, 128 << 20);
    assert!(
        present >= 124 * MIB,
        "only {present} bytes of the working set stayed: {m}"
    );
    // The guest verifies all 496 MiB, the cold part through uffd faults.
    finish(&sock);
    let (bad, bytes) = verified(&mut vm, &report);
    assert_eq!(bad, 0, "mismatched words");
    assert!(bytes >= 480 * MIB, "{bytes}");
}
