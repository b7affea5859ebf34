//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Whether /dev/kvm can be opened; prints one skip line with the reason when not.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(test, format!("/dev/kvm is not usable here ({e})"));
            false
        }
    }
}

/// Whether we run as root; prints one skip line when not.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        skip(test, "needs root");
        false
    }
}

/// Runs the memvisor binary with `args`.
pub fn memvisor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(args)
        .output()
        .expect("memvisor binary runs")
}

/// Text of stdout + stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Host-side memory observation and temporary host state (guest RAM backend and discard tests).

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use test_support::skip;

/// Whether userfaultfd can be used here; prints one skip line when not.
pub fn uffd_or_skip(test: &str) -> bool {
    match uffd::available() {
        Ok(()) => true,
        Err(e) => {
            skip(test, format_args!("userfaultfd is not usable here ({e})"));
            false
        }
    }
}

/// Bytes of `[addr, addr+len)` (4 KiB pages) whose page-table entry in this process is present,
/// read independently of memvisor from `/proc/self/pagemap` (bit 63 of each 8-byte entry).
pub fn pagemap_present_bytes(addr: *const u8, len: u64) -> u64 {
    pagemap_present_pages(addr, len)
        .iter()
        .filter(|p| **p)
        .count() as u64
        * 4096
}

/// One flag per 4 KiB page of `[addr, addr+len)`: present in `/proc/self/pagemap`.
pub fn pagemap_present_pages(addr: *const u8, len: u64) -> Vec<bool> {
    let addr = addr as u64;
    assert!(addr % 4096 == 0 && len % 4096 == 0, "page-aligned range");
    let pages = (len / 4096) as usize;
    let f = std::fs::File::open("/proc/self/pagemap").expect("open /proc/self/pagemap");
    let mut buf = vec![0u8; pages * 8];
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], (addr / 4096) * 8 + done as u64)
            .expect("read /proc/self/pagemap");
        assert!(n > 0, "short read of /proc/self/pagemap");
        done += n;
    }
    buf.chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()) >> 63 == 1)
        .collect()
}

/// A field (`AnonHugePages`, `Rss`, ...) in kB of the `/proc/self/smaps` entry of the mapping
/// that contains `addr`, in bytes.
pub fn smaps_field(addr: *const u8, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let addr = addr as u64;
    let mut inside = false;
    for line in text.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = head.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = a <= addr && addr < b;
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
                let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                return Some(kb * 1024);
            }
        }
    }
    None
}

/// Bytes allocated to the file mapped at `addr` (its `st_blocks` * 512): for a memfd or
/// hugetlbfs file, the memory it holds. Found through the inode in `/proc/self/maps` and the
/// open descriptor in `/proc/self/fd` with that inode.
pub fn mapped_file_allocated_bytes(addr: *const u8) -> Option<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let addr = addr as u64;
    let inode: u64 = maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (a, b) = f.next()?.split_once('-')?;
        let (a, b) = (
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        );
        if !(a <= addr && addr < b) {
            return None;
        }
        f.nth(3)?.parse().ok()
    })?;
    for e in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        if let Ok(m) = std::fs::metadata(e.path()) {
            if m.ino() == inode && m.file_type().is_file() {
                return Some(m.blocks() * 512);
            }
        }
    }
    None
}

/// A fresh directory under the temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/memvisor-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "memvisor-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hugetlbfs mount on a fresh temp dir; unmounted and removed on drop (also on panic).
/// Declare it before anything mapping files on it, so those are dropped first.
pub struct HugetlbfsMount {
    dir: PathBuf,
}

impl HugetlbfsMount {
    /// Mounts hugetlbfs with `size` pages on a new temp dir.
    pub fn new(size: hugepages::HugePageSize) -> Result<Self, hugepages::HugePageError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memvisor-hugetlbfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match hugepages::mount(&dir, size) {
            Ok((_, true)) => Ok(HugetlbfsMount { dir }),
            Ok((_, false)) => panic!("{} was already a hugetlbfs mount", dir.display()),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for HugetlbfsMount {
    fn drop(&mut self) {
        let res = hugepages::unmount(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
        if let Err(e) = res {
            // A mapping left behind keeps the mount busy: the test leaked host state.
            if std::thread::panicking() {
                eprintln!("could not unmount {}: {e}", self.dir.display());
            } else {
                panic!("could not unmount {}: {e}", self.dir.display());
            }
        }
    }
}

/// The pool of `size` now.
pub fn pool(size: hugepages::HugePageSize) -> hugepages::PoolStatus {
    hugepages::pool_status(size).expect("read hugepage pool")
}

/// Makes contiguous memory for huge pages on a long-used host: drops the clean page cache
/// (`vm.drop_caches=3`: it is only cache, re-read on use) and compacts memory
/// (`vm.compact_memory`). A 1 GiB page can be reserved on a fresh host but rarely on one whose
/// memory is fragmented; this gives tests that need one their best chance. Needs root; does
/// nothing otherwise.
pub fn make_room_for_huge_pages() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
}

/// Holds the pool lock and a reservation of `pages` more pages of `size` (restored on drop:
/// the reservation is dropped before the lock).
pub struct HugePool {
    reservation: Option<hugepages::PoolReservation>,
    _lock: hugepages::PoolLock,
    /// The page size.
    pub size: hugepages::HugePageSize,
}

impl HugePool {
    /// Takes the pool lock, then grows the pool of `size` by `pages`; when the kernel cannot
    /// find that much contiguous memory, makes room ([`make_room_for_huge_pages`]) and tries
    /// once more, so the "huge pages obtainable" path runs on long-used hosts too.
    pub fn reserve(
        size: hugepages::HugePageSize,
        pages: u64,
    ) -> Result<HugePool, hugepages::HugePageError> {
        let lock = hugepages::lock_pools()?;
        let reservation = match hugepages::PoolReservation::reserve_additional(size, pages) {
            Ok(r) => r,
            Err(_) => {
                make_room_for_huge_pages();
                hugepages::PoolReservation::reserve_additional(size, pages)?
            }
        };
        Ok(HugePool {
            reservation: Some(reservation),
            _lock: lock,
            size,
        })
    }

    /// Free pages of the pool now.
    pub fn free(&self) -> u64 {
        pool(self.size).free
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        drop(self.reservation.take());
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal external userfaultfd page-fault handler (raw ioctls), for the Firecracker hand-over.

/// `struct uffdio_copy` of `<linux/userfaultfd.h>`.
#[repr(C)]
pub struct UffdioCopy {
    /// Destination (page aligned).
    pub dst: u64,
    /// Source buffer.
    pub src: u64,
    /// Bytes.
    pub len: u64,
    /// Mode bits.
    pub mode: u64,
    /// Bytes copied, or a negative errno.
    pub copy: i64,
}

nix::ioctl_readwrite!(uffdio_copy_ioctl, 0xAA, 0x03, UffdioCopy);

/// `UFFD_EVENT_PAGEFAULT`.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMOVE`.
pub const UFFD_EVENT_REMOVE: u8 = 0x15;

/// One `struct uffd_msg` (32 bytes): `(event, address)` (address of a page fault, start of a
/// removed range).
pub fn parse_uffd_msg(msg: &[u8; 32]) -> (u8, u64) {
    (msg[0], u64::from_le_bytes(msg[16..24].try_into().unwrap()))
}

/// `UFFDIO_COPY` of `src` to `dst` (waking the faulting thread).
pub fn uffd_copy(uffd: std::os::fd::RawFd, dst: u64, src: &[u8]) -> nix::Result<i64> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `c` is a valid uffdio_copy; `src` is readable for `len` bytes for the call.
    unsafe { uffdio_copy_ioctl(uffd, &mut c) }?;
    Ok(c.copy)
}

// ---------------------------------------------------------------------------------------------
// Independent page-map reads (the tests' own, not memvisor::report::mappings).

/// Raw `/proc/self/pagemap` entries of the `pages` 4 KiB pages from `addr`.
pub fn pagemap_entries(addr: u64, pages: u64) -> Vec<u64> {
    assert!(addr % 4096 == 0, "page-aligned address");
    let f = std::fs::File::open("/proc/self/pagemap").expect("open /proc/self/pagemap");
    let mut buf = vec![0u8; pages as usize * 8];
    f.read_exact_at(&mut buf, addr / 4096 * 8)
        .expect("read /proc/self/pagemap");
    buf.chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
        .collect()
}

/// The frame number of a present pagemap entry (0 when hidden or not present).
pub fn pagemap_pfn(entry: u64) -> u64 {
    if entry >> 63 == 1 {
        entry & ((1 << 55) - 1)
    } else {
        0
    }
}

/// `/proc/kpageflags` of frame `pfn`.
pub fn kpageflags(pfn: u64) -> u64 {
    let f = std::fs::File::open("/proc/kpageflags").expect("open /proc/kpageflags");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, pfn * 8)
        .expect("read /proc/kpageflags");
    u64::from_le_bytes(b)
}

/// kpageflags bits (include/uapi/linux/kernel-page-flags.h).
pub const KPF_KSM: u64 = 1 << 21;
/// Head of a compound page (hugetlb or THP).
pub const KPF_COMPOUND_HEAD: u64 = 1 << 15;
/// A hugetlb page.
pub const KPF_HUGE: u64 = 1 << 17;

// ---------------------------------------------------------------------------------------------
// `memvisor run` child processes.

/// Polls `f` every 50 ms until it holds; fails the test naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, f: impl FnMut() -> bool) {
    wait_every(what, timeout, std::time::Duration::from_millis(50), f)
}

/// [`wait_until`] trying every `every` (for conditions that are costly to check).
pub fn wait_every(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut f: impl FnMut() -> bool,
) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {} s waiting for {what}",
            timeout.as_secs()
        );
        std::thread::sleep(every);
    }
}

/// A field (`VmRSS:`, ...) of `/proc/PID/status` in KiB; `None` when the process or the field
/// is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A `memvisor run` child with an API socket: killed (and its socket removed) when dropped.
pub struct ChildVm {
    /// The process (taken by tests that wait for it themselves).
    pub child: Option<std::process::Child>,
    /// Its API socket.
    pub sock: PathBuf,
}

impl ChildVm {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("still owned").id()
    }
}

impl Drop for ChildVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// `memvisor report overcommit --all --json --runtime-dir RT`, parsed.
pub fn report_overcommit_all(rt: &Path) -> serde_json::Value {
    let out = memvisor(&[
        "report",
        "overcommit",
        "--all",
        "--json",
        "--runtime-dir",
        rt.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// A `memvisor run` child, killed on drop.
pub struct Running(pub Option<std::process::Child>);

impl Running {
    /// Stops a `memvisor balance` child with SIGTERM (it exits 0 then) and answers its standard
    /// output, the decisions it printed.
    pub fn stop_controller(&mut self) -> String {
        let c = self.0.take().expect("still running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = c.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{log}");
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Running {
    /// The process.
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit; kills it after `timeout`.
    pub fn interrupt(&mut self, timeout: std::time::Duration) -> std::process::Output {
        let mut c = self.0.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let t0 = std::time::Instant::now();
        while c.try_wait().unwrap().is_none() {
            if t0.elapsed() > timeout {
                let _ = c.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        c.wait_with_output().unwrap()
    }
}

/// Threads of `pid` whose name is `comm`.
pub fn threads_named(pid: u32, comm: &str) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm)
                })
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The environment variable naming the case a test runs when it re-runs itself in a child
/// process (seccomp tests: a trap there must not take the test harness down).
pub const CASE: &str = "MEMVISOR_SECCOMP_CASE";

/// Runs test `test` of this test binary in a child process with `case` in [`CASE`].
pub fn child(test: &str, case: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// In a child started by [`child`]: the case to run.
pub fn case() -> Option<String> {
    std::env::var(CASE).ok()
}

/// `Seccomp:` and `Seccomp_filters:` of every thread of `pid`, by thread name.
pub fn thread_seccomp(pid: u32) -> std::collections::BTreeMap<String, (u32, u32)> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap();
        let key = if tid == pid { "main".to_string() } else { name };
        out.insert(
            key,
            (
                field("Seccomp:").unwrap_or(99),
                field("Seccomp_filters:").unwrap_or(99),
            ),
        );
    }
    out
}

/// A minimal ELF "kernel": `code` loaded at and entered at 2 MiB.
pub fn tiny_kernel(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x20_0000;
    let mut f = vec![0u8; 0x1000];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&LOAD.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    f[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
    f[ph + 16..ph + 24].copy_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    f[ph + 24..ph + 32].copy_from_slice(&LOAD.to_le_bytes()); // p_paddr
    f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// An API request with a 300 s timeout, the answer parsed (`Null` if it is not JSON).
pub fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = memvisor::control::api::client::request_with_timeout(
        sock,
        method,
        path,
        body,
        std::time::Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

pub fn step(sock: &Path) -> Option<u64> {
    api(sock, "GET", "/vm", None).1["vcpus"][0]["step"].as_u64()
}

/// Waits until the built-in guest runs workload step `index`.
pub fn wait_for_step(sock: &Path, index: u64) {
    wait_every(
        &format!("the guest's step #{index}"),
        std::time::Duration::from_secs(300),
        std::time::Duration::from_millis(100),
        || step(sock) == Some(index),
    );
}

pub fn start_vm(sock: &Path, report: &Path, memory: &str, workload: &str) -> ChildVm {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "-m", memory, "--api-sock"])
        .arg(sock)
        .args(["-w", workload, "--report-file"])
        .arg(report)
        .arg("--runtime-dir")
        .arg(sock.parent().unwrap().join("runtime"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let vm = ChildVm {
        child: Some(child),
        sock: sock.to_path_buf(),
    };
    wait_until("the API socket", std::time::Duration::from_secs(30), || {
        sock.exists()
    });
    vm
}

pub fn finish(sock: &Path) {
    let (s, v) = api(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FinishBalloonStep"}"#),
    );
    assert_eq!(s, 204, "{v}");
}

/// The finished run's JSON report: verify steps' mismatched words and bytes checked.
pub fn verified(vm: &mut ChildVm, report: &Path) -> (u64, u64) {
    let status = vm.child.as_mut().unwrap().wait().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert!(status.success(), "{status}: {}", r["outcome"]);
    let ops = r["ops"]
        .as_array()
        .or_else(|| r["workload"].as_array())
        .unwrap_or_else(|| panic!("no ops in {r}"));
    let v: Vec<&serde_json::Value> = ops.iter().filter(|o| o["name"] == "verify").collect();
    assert!(!v.is_empty(), "{r}");
    (
        v.iter().map(|o| o["mismatches"].as_u64().unwrap()).sum(),
        v.iter().map(|o| o["amount"].as_u64().unwrap()).sum(),
    )
}

/// Bytes of guest-physical `[gpa, gpa + len)` present in host RAM (`GET /memory/mappings`),
/// and the answer.
pub fn present_bytes(sock: &Path, gpa: u64, len: u64) -> (u64, serde_json::Value) {
    let path = format!("/memory/mappings?gpa={gpa:#x}&len={len:#x}");
    let (_, m) = api(sock, "GET", &path, None);
    let present = m["regions"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: {m}"))
        .iter()
        .map(|r| r["totals"]["present"].as_u64().unwrap())
        .sum();
    (present, m)
}

// ---------------------------------------------------------------------------------------------
// Network namespaces: tests with network interfaces build their own and address only
// addresses inside it.

/// A network namespace of the test's own (`ip netns add`), deleted on drop (also when the test
/// fails); taps made in it go with it.
pub struct NetNs(String);

impl NetNs {
    /// `mv-<tag>-<pid>`; `Err` with the reason when it cannot be made (no iproute2, not
    /// allowed).
    pub fn new(tag: &str) -> Result<NetNs, String> {
        let name = format!("mv-{tag}-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("`ip` cannot run ({e}): install iproute2"))?;
        if !out.status.success() {
            return Err(format!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(NetNs(name))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `program` to be run inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// Runs `ip ARGS` inside the namespace; panics with its output when it fails.
    pub fn ip(&self, args: &[&str]) {
        let out = self.command("ip").args(args).output().expect("ip runs");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// After a process whose pages KSM merged has exited while ksmd was stopped (`run=0`): its
/// merged pages stay counted in `pages_sharing`, and their stable nodes stay (which makes
/// `max_page_sharing` busy), until ksmd scans again. This lets ksmd make two full scans (the
/// first may have begun before the exit), at most 30 s, then restores KSM's knobs, so the host
/// is left as it was found (a CI run once saw 5093 such pages at its start). Best effort: a
/// timeout leaves them for the next scan. Nothing to do when ksmd is already running.
pub fn prune_ksm_after_exit() {
    let sys = ksm::Ksm::system();
    if !sys.available() || sys.settings().is_ok_and(|s| s.run == ksm::KsmRun::Merge) {
        return;
    }
    let Ok(guard) = ksm::SettingsGuard::save(&sys) else {
        return;
    };
    if sys.set_run(ksm::KsmRun::Merge).is_ok() {
        let _ = sys.wait_full_scans(2, std::time::Duration::from_secs(30));
    }
    drop(guard);
}
