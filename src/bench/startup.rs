//! VMM start and footprint, beside QEMU where it can do the same:
//!
//! - **start to first guest hypercall**, in process: from before [`Vmm::start`] to the built-in
//!   guest's first exit made on purpose (its first hypercall, the begin of its one `sync`
//!   step), no prealloc; from the run report: setup (config check, mmap, KVM VM and vCPU,
//!   boot structures) plus the first step's start;
//! - **exec to exit**: a `memvisor run` child whose guest stops after its first step, beside a
//!   QEMU child (`-machine microvm`, KVM, the same RAM size) whose firmware is a 64 KiB image
//!   whose first instruction writes to QEMU's `isa-debug-exit` port, so QEMU exits on the
//!   guest's first instruction; both times include process start-up and tear-down;
//! - **RSS overhead at idle**: resident memory of a running `memvisor run` child (guest idle in
//!   its balloon driver, waiting) minus the resident part of its guest RAM mapping, beside a
//!   QEMU child with the same RAM whose firmware halts at once.
//!
//! Both sides are read the same way from `/proc/PID/smaps`: the guest RAM is the anonymous
//! mapping exactly the guest RAM size long.

use super::qemu::Qemu;
use super::stats::{median_ratio, Summary};
use super::table::{min_med_max, ratio_cell, Align, Table};
use super::{BenchError, BenchReport, BenchRow, Machine, Target};
use crate::config::workload::Workload;
use crate::config::{RegionConfig, Size, VmConfig};
use crate::runner::{RunOptions, Vmm};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Target for start to first guest instruction, ms (issue 7; Firecracker's anchor is ~12 ms).
pub const TARGET_START_MS: f64 = 15.0;
/// Target for the VMM's memory beyond guest RAM, MiB (issue 7 set 5, Firecracker's anchor; issue 17
/// lowered it to 4).
pub const TARGET_OVERHEAD_MIB: f64 = 4.0;

/// The port QEMU's `isa-debug-exit` device listens on in the QEMU runs.
const DEBUG_EXIT_PORT: u8 = 0xf4;
/// What the tiny guest writes there: QEMU then exits with status `(value << 1) | 1`.
const DEBUG_EXIT_VALUE: u8 = 0x31;

/// Options.
#[derive(Clone, Debug)]
pub struct StartupOptions {
    /// Guest RAM (one anonymous region, no prealloc).
    pub size: u64,
    /// Repetitions of each start measurement.
    pub reps: usize,
    /// The `memvisor` binary for the child-process runs (`None`: those runs are skipped).
    pub binary: Option<PathBuf>,
    /// QEMU to compare with (`Err`: the line saying why not).
    pub qemu: Result<Qemu, String>,
}

/// What a row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartupMeasure {
    /// In-process start to the guest's first hypercall, ms.
    StartToFirstHypercall,
    /// The same in a fresh `memvisor run` process, from its report, ms.
    StartToFirstHypercallFresh,
    /// Child process exec to exit, guest exits at its first step, ms (QEMU: first instruction).
    ExecToExit,
    /// Resident memory beyond guest RAM at idle, MiB.
    RssOverhead,
}

impl StartupMeasure {
    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            StartupMeasure::StartToFirstHypercall => {
                "start to first guest hypercall, in process (ms)"
            }
            StartupMeasure::StartToFirstHypercallFresh => {
                "start to first guest hypercall, fresh `memvisor run` (ms)"
            }
            StartupMeasure::ExecToExit => "exec to exit, guest stops at once (ms)",
            StartupMeasure::RssOverhead => "RSS beyond guest RAM at idle (MiB)",
        }
    }
}

/// One measurement, memvisor beside QEMU.
#[derive(Clone, Debug, Serialize)]
pub struct StartupRow {
    /// What.
    pub measure: StartupMeasure,
    /// memvisor.
    pub memvisor: Option<Summary>,
    /// QEMU doing the same (None: not measured, see the notes).
    pub qemu: Option<Summary>,
    /// memvisor / QEMU, medians (lower is better for memvisor).
    pub ratio_to_qemu: Option<f64>,
}

impl BenchRow for StartupRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("measure", Align::Left),
            ("memvisor min/med/max", Align::Right),
            ("QEMU min/med/max", Align::Right),
            ("mv/QEMU", Align::Right),
        ]);
        for r in rows {
            t.row(vec![
                r.measure.label().into(),
                min_med_max(r.memvisor.as_ref(), 2),
                min_med_max(r.qemu.as_ref(), 2),
                ratio_cell(r.ratio_to_qemu),
            ]);
        }
        t
    }
}

/// The 64 KiB firmware image of the QEMU runs: `hlt` everywhere; at the reset vector
/// (`F000:FFF0`, the last 16 bytes) either `mov al, 0x31; out 0xf4, al` then `cli; hlt`
/// (`exit`), or just `cli; hlt` in a loop (idle).
pub fn tiny_firmware(exit: bool) -> Vec<u8> {
    let mut img = vec![0xf4u8; 64 << 10];
    let mut code = Vec::new();
    if exit {
        code.extend([0xb0, DEBUG_EXIT_VALUE, 0xe6, DEBUG_EXIT_PORT]);
    }
    code.extend([0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp back to hlt
    img[0xfff0..0xfff0 + code.len()].copy_from_slice(&code);
    img
}

/// QEMU's arguments for a guest of `size` bytes running `firmware`.
pub fn qemu_args(size: u64, firmware: &Path, exit_device: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "-machine",
        "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=off",
        "-accel",
        "kvm",
        "-nodefaults",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("{}M", size >> 20));
    a.push("-bios".into());
    a.push(firmware.display().to_string());
    if exit_device {
        a.push("-device".into());
        a.push(format!(
            "isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"
        ));
    }
    a
}

/// Resident memory of a process, split by where it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssSplit {
    /// All resident bytes (`Rss` summed over every mapping).
    pub total: u64,
    /// Resident bytes of the anonymous mappings exactly the guest RAM size long.
    pub guest: u64,
    /// Resident anonymous bytes outside those (heap, stacks, the VMM's own data).
    pub anon_outside_guest: u64,
    /// Resident bytes outside the guest RAM that no other process maps (`Private_Clean` +
    /// `Private_Dirty`): what one more VM costs the host beyond its guest RAM when the program
    /// and libraries are already in memory for another.
    pub private_outside_guest: u64,
}

/// The [`RssSplit`] of process `pid` with `guest` bytes of guest RAM, from `/proc/PID/smaps`.
pub fn rss_split(pid: u32, guest: u64) -> std::io::Result<RssSplit> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse_smaps(&text, guest))
}

/// The [`RssSplit`] of smaps text.
pub fn parse_smaps(text: &str, guest: u64) -> RssSplit {
    let mut out = RssSplit::default();
    let mut candidate = false;
    let mut is_guest = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: range perms offset dev inode [path].
            let path = f.nth(4);
            candidate = path.is_none();
            is_guest = false;
            continue;
        }
        let kib = || {
            f.clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => is_guest = candidate && kib() * 1024 == guest,
            "Rss:" => {
                let rss = kib() * 1024;
                out.total += rss;
                if is_guest {
                    out.guest += rss;
                }
            }
            "Anonymous:" if !is_guest => out.anon_outside_guest += kib() * 1024,
            "Private_Clean:" | "Private_Dirty:" if !is_guest => {
                out.private_outside_guest += kib() * 1024
            }
            _ => {}
        }
    }
    out
}

/// Waits until `f` gives the same value three times in a row, 100 ms apart (at most `limit`).
fn settled(limit: Duration, mut f: impl FnMut() -> Option<u64>) -> Option<u64> {
    let until = Instant::now() + limit;
    let mut last = None;
    let mut same = 0;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        let v = f()?;
        if Some(v) == last {
            same += 1;
            if same >= 2 {
                return Some(v);
            }
        } else {
            same = 0;
        }
        last = Some(v);
    }
    last
}

/// Kills and reaps `child` (this child only).
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for `child` to exit within `limit`; kills it otherwise.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_micros(200)),
            _ => {
                reap(child);
                return None;
            }
        }
    }
}

fn sync_config(size: u64) -> VmConfig {
    VmConfig {
        memory: vec![RegionConfig::anon(size)],
        workload: Workload::parse(&["sync"]).expect("valid workload"),
        ..Default::default()
    }
}

/// In process: ms from before `Vmm::start` to the guest's first hypercall.
pub fn start_to_first_hypercall(size: u64) -> Result<f64, BenchError> {
    let config = sync_config(size);
    let mut vmm = Vmm::start(&config).map_err(|e| BenchError::Check {
        what: "starting the built-in guest".into(),
        detail: e.to_string(),
    })?;
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    if report.outcome.exit_code() != 0 {
        return Err(BenchError::Check {
            what: "the built-in guest's sync step".into(),
            detail: format!("{:?}", report.outcome),
        });
    }
    let first = report
        .vcpus
        .first()
        .and_then(|v| v.ops.first())
        .ok_or_else(|| BenchError::Check {
            what: "the built-in guest's sync step".into(),
            detail: "no step was reported".into(),
        })?;
    Ok((report.setup_seconds + first.start_s) * 1e3)
}

/// A `memvisor run` child with a guest that stops after one `sync`: ms from spawn to exit,
/// and ms from its `Vmm::start` to the guest's first hypercall as its JSON report gives them
/// (setup plus the first step's start: the in-process figure in a fresh process).
pub fn memvisor_exec_to_exit(binary: &Path, size: u64) -> Result<(f64, f64), String> {
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args(["run", "--memory", &format!("{}M", size >> 20)])
        .args(["--workload", "sync", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    // The report is small (a few KiB): it fits the pipe, so the child never blocks on it.
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(format!("memvisor run exited with {s}")),
        None => return Err("memvisor run did not exit within 30 s".into()),
    }
    let report: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("memvisor run --json: {e}"))?;
    let setup = report["setup_seconds"].as_f64();
    let first = report["vcpus"][0]["ops"][0]["start_s"].as_f64();
    match (setup, first) {
        (Some(a), Some(b)) => Ok((elapsed, (a + b) * 1e3)),
        _ => Err("memvisor run --json has no setup_seconds or first step".into()),
    }
}

/// A QEMU child: ms from spawn to exit, the guest's first instruction writing to
/// `isa-debug-exit`.
pub fn qemu_exec_to_exit(q: &Qemu, args: &[String]) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = Command::new(&q.binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", q.binary.display()))?;
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let want = (i32::from(DEBUG_EXIT_VALUE) << 1) | 1;
    match status.and_then(|s| s.code()) {
        Some(c) if c == want => Ok(elapsed),
        Some(c) => Err(format!(
            "QEMU exited with status {c}, not {want} (the guest's isa-debug-exit write): {}",
            err.trim()
        )),
        None => Err(format!(
            "QEMU did not exit within 30 s or was killed: {}",
            err.trim()
        )),
    }
}

/// A `memvisor run` child idling with `size` of guest RAM: (total RSS, guest RAM RSS) bytes.
pub fn memvisor_idle_rss(binary: &Path, size: u64) -> Result<RssSplit, String> {
    let sock = std::env::temp_dir().join(format!(
        "memvisor-bench-startup-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(binary)
        .args(["run", "--memory", &format!("{}M", size >> 20)])
        .args(["--balloon", "amount_mib=0"])
        .args(["--workload", "balloon:data=4K,seconds=0"])
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = child.id();
    let result = (|| {
        // Booted: the guest's balloon driver has activated the device.
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) =
                crate::control::api::client::request(&sock, "GET", "/balloon/device", None)
            {
                if body.contains("\"activated\":true") {
                    break;
                }
            }
            if Instant::now() > until {
                return Err("the guest did not start its balloon driver within 30 s".into());
            }
            if let Ok(Some(s)) = child.try_wait() {
                return Err(format!("memvisor run exited early ({s})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        settled(Duration::from_secs(10), || {
            rss_split(pid, size).ok().map(|r| r.total)
        })
        .ok_or("cannot read /proc/PID/smaps of memvisor run")?;
        rss_split(pid, size).map_err(|e| format!("smaps: {e}"))
    })();
    let _ = crate::control::api::client::request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Shutdown"}"#),
    );
    if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
        log::warn!("bench: memvisor run did not stop on Shutdown; killed");
    }
    let _ = std::fs::remove_file(&sock);
    result
}

/// A QEMU child idling (firmware halts) with `size` of guest RAM: (total RSS, guest RAM RSS).
pub fn qemu_idle_rss(q: &Qemu, args: &[String], size: u64) -> Result<RssSplit, String> {
    let mut child = Command::new(&q.binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", q.binary.display()))?;
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let result = match child.try_wait() {
        Ok(Some(s)) => Err(format!("QEMU exited early ({s})")),
        _ => settled(Duration::from_secs(10), || {
            rss_split(pid, size).ok().map(|r| r.total)
        })
        .ok_or_else(|| "cannot read /proc/PID/smaps of QEMU".to_string())
        .and_then(|_| rss_split(pid, size).map_err(|e| format!("smaps: {e}"))),
    };
    reap(&mut child);
    result
}

/// A temporary file holding the tiny firmware, removed on drop.
struct Firmware(PathBuf);

impl Firmware {
    fn write(exit: bool) -> Result<Firmware, BenchError> {
        let path = std::env::temp_dir().join(format!(
            "memvisor-bench-firmware-{}-{}.bin",
            if exit { "exit" } else { "idle" },
            std::process::id()
        ));
        let mut f = std::fs::File::create(&path).map_err(BenchError::io(
            "writing the QEMU firmware image",
            "is the temp dir writable?",
        ))?;
        f.write_all(&tiny_firmware(exit)).map_err(BenchError::io(
            "writing the QEMU firmware image",
            "is the temp dir writable?",
        ))?;
        Ok(Firmware(path))
    }
}

impl Drop for Firmware {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const MIB: f64 = (1u64 << 20) as f64;

fn rss_note(who: &str, r: &RssSplit) -> String {
    let outside = r.total.saturating_sub(r.guest);
    format!(
        "{who} at idle: {} resident, of which {} guest RAM; of the {} beyond guest RAM, {} \
         is anonymous (heap, stacks, data) and {} file pages (the program's and its \
         libraries' code and read-only data, shared with other processes running them); {} \
         of it is private to this process (what one more VM costs when another already runs)",
        Size(r.total),
        Size(r.guest),
        Size(outside),
        Size(r.anon_outside_guest),
        Size(outside.saturating_sub(r.anon_outside_guest)),
        Size(r.private_outside_guest)
    )
}

/// Runs the measurements.
pub fn run(
    opts: &StartupOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport<StartupRow>, BenchError> {
    if opts.size == 0 || opts.size % (1 << 20) != 0 || opts.reps == 0 {
        return Err(BenchError::Option {
            option: "--startup-size/--reps",
            reason: "a positive whole number of MiB and at least one repetition".into(),
        });
    }
    let mut notes = Vec::new();
    let mut method = vec![
        format!(
            "start to first guest hypercall: in this process, Vmm::start of a {} anonymous \
             region (no prealloc) with the one-step workload `sync`, then the run report's \
             setup time (config check, guest RAM mmap, KVM VM, vCPU, boot structures) plus the \
             start of that step, which the VMM timestamps on the guest's first hypercall (a \
             port-I/O exit after ~a dozen ring-0 instructions, iretq to ring 3 and a few \
             ring-3 ones); Firecracker's ~12 ms anchor is not measured here",
            Size(opts.size)
        ),
        "exec to exit: a child process from spawn to its exit; memvisor: `memvisor run \
         --memory SIZE --workload sync --json` (4 hypercalls, then the report and tear-down); \
         the same children's JSON reports give start to first hypercall in a fresh process \
         (setup_seconds + the first step's start_s: from Vmm::start, so without exec, dynamic \
         loading and argument parsing, which exec to exit includes)"
            .into(),
        "RSS beyond guest RAM: Rss of /proc/PID/smaps summed over all mappings minus the Rss \
         of the anonymous mapping exactly the guest RAM size long (the guest RAM), read once \
         the value is unchanged over 3 reads 100 ms apart; memvisor: `memvisor run --memory \
         SIZE --balloon amount_mib=0 --workload balloon:data=4K,seconds=0 --api-sock S` after \
         the guest's balloon driver is up (idle: it waits for balloon events), stopped with \
         PUT /actions afterwards"
            .into(),
    ];
    let qemu = opts.qemu.as_ref().map_err(|n| notes.push(n.clone())).ok();
    let exit_fw = Firmware::write(true)?;
    let idle_fw = Firmware::write(false)?;
    if let Some(q) = qemu {
        method.push(format!(
            "QEMU ({}): `{}` for exec to exit (exit status {} from the guest's first \
             instruction); the same without isa-debug-exit and with a firmware that halts at \
             once for RSS; QEMU's ROM copy of the 64 KiB firmware and other machine memory \
             count as its overhead",
            q.version,
            std::iter::once(q.binary.display().to_string())
                .chain(qemu_args(opts.size, Path::new("FIRMWARE"), true))
                .collect::<Vec<_>>()
                .join(" "),
            (i32::from(DEBUG_EXIT_VALUE) << 1) | 1,
        ));
    }
    // 1. In process.
    let mut start_ms = Vec::new();
    start_to_first_hypercall(opts.size)?; // warm-up (binary pages, KVM module caches)
    for _ in 0..opts.reps {
        start_ms.push(start_to_first_hypercall(opts.size)?);
    }
    progress(&format!(
        "startup: start to first hypercall {:.2} ms (median of {})",
        super::stats::median(&start_ms).unwrap_or(0.0),
        opts.reps
    ));
    // 2. Exec to exit, memvisor and QEMU alternating.
    let mut mv_exec = Vec::new();
    let mut fresh_start_ms = Vec::new();
    let mut q_exec = Vec::new();
    let exit_args = qemu_args(opts.size, &exit_fw.0, true);
    let mut qemu_ok = qemu.is_some();
    match &opts.binary {
        None => notes.push(
            "memvisor child-process runs skipped: no memvisor binary given (library use)".into(),
        ),
        Some(bin) => {
            let _ = memvisor_exec_to_exit(bin, opts.size);
            if let Some(q) = qemu {
                if let Err(e) = qemu_exec_to_exit(q, &exit_args) {
                    notes.push(format!("QEMU exec to exit not measured: {e}"));
                    qemu_ok = false;
                }
            }
            for rep in 0..opts.reps {
                for step in 0..2 {
                    if (step == 0) == (rep % 2 == 0) {
                        match memvisor_exec_to_exit(bin, opts.size) {
                            Ok((ms, first)) => {
                                mv_exec.push(ms);
                                fresh_start_ms.push(first);
                            }
                            Err(e) => {
                                return Err(BenchError::Check {
                                    what: "memvisor run child".into(),
                                    detail: e,
                                })
                            }
                        }
                    } else if let (Some(q), true) = (qemu, qemu_ok) {
                        match qemu_exec_to_exit(q, &exit_args) {
                            Ok(ms) => q_exec.push(ms),
                            Err(e) => {
                                notes.push(format!("QEMU exec to exit: {e}"));
                                qemu_ok = false;
                            }
                        }
                    }
                }
            }
            progress(&format!(
                "startup: exec to exit memvisor {:.1} ms, QEMU {:.1} ms (medians)",
                super::stats::median(&mv_exec).unwrap_or(0.0),
                super::stats::median(&q_exec).unwrap_or(0.0)
            ));
        }
    }
    // 3. RSS overhead.
    let mut mv_rss = Vec::new();
    let mut q_rss = Vec::new();
    if let Some(bin) = &opts.binary {
        match memvisor_idle_rss(bin, opts.size) {
            Ok(r) => {
                mv_rss.push(r.total.saturating_sub(r.guest) as f64 / MIB);
                notes.push(rss_note("memvisor", &r));
            }
            Err(e) => notes.push(format!("memvisor RSS not measured: {e}")),
        }
    }
    if let Some(q) = qemu {
        let args = qemu_args(opts.size, &idle_fw.0, false);
        match qemu_idle_rss(q, &args, opts.size) {
            Ok(r) => {
                q_rss.push(r.total.saturating_sub(r.guest) as f64 / MIB);
                notes.push(rss_note("QEMU", &r));
            }
            Err(e) => notes.push(format!("QEMU RSS not measured: {e}")),
        }
    }
    let row = |measure, mv: &[f64], q: &[f64]| {
        let memvisor = Summary::of(mv);
        let qemu = Summary::of(q);
        StartupRow {
            measure,
            ratio_to_qemu: median_ratio(memvisor.as_ref(), qemu.as_ref()),
            memvisor,
            qemu,
        }
    };
    let rows = vec![
        row(StartupMeasure::StartToFirstHypercall, &start_ms, &[]),
        row(
            StartupMeasure::StartToFirstHypercallFresh,
            &fresh_start_ms,
            &[],
        ),
        row(StartupMeasure::ExecToExit, &mv_exec, &q_exec),
        row(StartupMeasure::RssOverhead, &mv_rss, &q_rss),
    ];
    let config = format!("{} guest, no prealloc", Size(opts.size));
    let median = |r: &StartupRow| r.memvisor.as_ref().map(|s| s.median);
    let targets = vec![
        Target::at_most(
            "start to first guest instruction (first hypercall), median",
            TARGET_START_MS,
            "ms",
            &[
                (format!("{config}, in process"), median(&rows[0])),
                (format!("{config}, fresh memvisor run"), median(&rows[1])),
            ],
        ),
        Target::at_most(
            "VMM RSS beyond guest RAM at idle",
            TARGET_OVERHEAD_MIB,
            "MiB",
            &[(config, median(&rows[3]))],
        ),
    ];
    Ok(BenchReport {
        benchmark: "startup".into(),
        command: String::new(),
        machine: Machine::describe(),
        method,
        rows,
        targets,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_jumps_to_the_exit_port() {
        let fw = tiny_firmware(true);
        assert_eq!(fw.len(), 64 << 10);
        assert_eq!(
            &fw[0xfff0..0xfff8],
            &[0xb0, 0x31, 0xe6, 0xf4, 0xfa, 0xf4, 0xeb, 0xfd]
        );
        let idle = tiny_firmware(false);
        assert_eq!(&idle[0xfff0..0xfff4], &[0xfa, 0xf4, 0xeb, 0xfd]);
        let a = qemu_args(512 << 20, Path::new("/fw"), true);
        assert!(a.contains(&"512M".to_string()));
        assert!(a.contains(&"isa-debug-exit,iobase=0xf4,iosize=0x04".to_string()));
        assert!(!qemu_args(512 << 20, Path::new("/fw"), false)
            .iter()
            .any(|s| s.contains("isa-debug-exit")));
    }

    #[test]
    fn smaps_split() {
        let text = "\
55d0-55d1 r-xp 00000000 fe:00 123 /usr/bin/memvisor
Size:                  4 kB
Rss:                   4 kB
Private_Clean:         0 kB
7f00-7f20 rw-p 00000000 00:00 0
Size:             524288 kB
Rss:                 100 kB
Private_Dirty:       100 kB
Anonymous:           100 kB
7f30-7f31 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 512 kB
Private_Clean:         8 kB
Private_Dirty:       504 kB
Anonymous:           512 kB
7f40-7f41 rw-p 00000000 00:00 0                          [heap]
Size:             524288 kB
Rss:                  64 kB
Anonymous:            64 kB
";
        let r = parse_smaps(text, 512 << 20);
        assert_eq!(r.total, (4 + 100 + 512 + 64) * 1024);
        assert_eq!(
            r.guest,
            100 * 1024,
            "only the anonymous mapping of the guest size"
        );
        assert_eq!(r.anon_outside_guest, (512 + 64) * 1024);
        assert_eq!(r.private_outside_guest, 512 * 1024, "guest RAM excluded");
    }

    #[test]
    fn own_rss_is_readable() {
        let r = rss_split(std::process::id(), 12345 << 12).unwrap();
        assert!(r.total > 0 && r.anon_outside_guest > 0 && r.anon_outside_guest < r.total);
        assert_eq!(r.guest, 0);
    }
}
