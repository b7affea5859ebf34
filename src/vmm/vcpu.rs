//! vCPUs: one named host thread each (`vcpu0`, ...), optional pinning, the `KVM_RUN` loop that
//! counts every exit by reason, the built-in guest's hypercalls, and a small state machine
//! (running, paused, stopped) driven through [`VcpuHandle`] with a signal kick.

use crate::abi::{self, Hypercall};
use crate::devices::Bus;
use crate::memory::GuestRam;
use crate::vmm::assist::{self, AssistKind};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Why `KVM_RUN` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Port write.
    IoOut,
    /// Port read.
    IoIn,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// `hlt`.
    Hlt,
    /// Triple fault or similar.
    Shutdown,
    /// KVM could not emulate something.
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// Guest-requested shutdown or reset.
    SystemEvent,
    /// A signal interrupted `KVM_RUN` (a kick).
    Interrupted,
    /// Anything else.
    Other,
}

impl ExitReason {
    /// Every reason, in report order.
    pub const ALL: [ExitReason; 11] = [
        ExitReason::IoOut,
        ExitReason::IoIn,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::InternalError,
        ExitReason::FailEntry,
        ExitReason::SystemEvent,
        ExitReason::Interrupted,
        ExitReason::Other,
    ];

    /// Name in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::IoOut => "io_out",
            ExitReason::IoIn => "io_in",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::InternalError => "internal_error",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::SystemEvent => "system_event",
            ExitReason::Interrupted => "interrupted",
            ExitReason::Other => "other",
        }
    }
}

/// Live per-vCPU counters, readable from any thread.
#[derive(Debug, Default)]
pub struct VcpuStats {
    exits: [AtomicU64; 11],
    /// Port writes that were hypercalls.
    pub hypercalls: AtomicU64,
    /// Port or MMIO accesses no device claimed.
    pub unclaimed_io: AtomicU64,
    /// The latest `HC_PROGRESS` arguments (balloon driver progress).
    progress: [AtomicU64; 5],
    /// `HC_PROGRESS` calls seen.
    progress_updates: AtomicU64,
    /// Set by the VMM to end the guest's current balloon step; consumed by its next
    /// `HC_PROGRESS`.
    pub finish_requested: AtomicBool,
    /// Emulation assists performed, by [`AssistKind`].
    assists: [AtomicU64; 2],
    /// 1 + the index of the built-in guest's workload step this vCPU is in; 0 between steps.
    step: AtomicU64,
}

/// The latest progress the guest's balloon driver reported (`HC_PROGRESS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestProgress {
    /// Bytes the guest's data set owns.
    pub data_bytes: u64,
    /// 4 KiB pages the guest holds in the balloon.
    pub balloon_pages: u64,
    /// Mismatched data words found so far.
    pub mismatches: u64,
    /// Bytes of data verified so far.
    pub verified_bytes: u64,
    /// Virtio features the driver negotiated.
    pub features: u64,
    /// Progress reports so far (0: none yet; the other fields are then 0).
    pub updates: u64,
}

impl VcpuStats {
    /// The index of the built-in guest's workload step this vCPU is in (between its begin and
    /// end hypercalls), if any.
    pub fn step(&self) -> Option<u64> {
        self.step.load(Ordering::Acquire).checked_sub(1)
    }

    /// The latest guest progress.
    pub fn progress(&self) -> GuestProgress {
        let p = |i: usize| self.progress[i].load(Ordering::Acquire);
        GuestProgress {
            data_bytes: p(0),
            balloon_pages: p(1),
            mismatches: p(2),
            verified_bytes: p(3),
            features: p(4),
            updates: self.progress_updates.load(Ordering::Acquire),
        }
    }
}

impl VcpuStats {
    fn count(&self, r: ExitReason) {
        self.exits[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Snapshot of the exit counts, nonzero reasons only.
    pub fn exits(&self) -> Vec<(ExitReason, u64)> {
        ExitReason::ALL
            .iter()
            .map(|r| (*r, self.exits[*r as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.exits.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Snapshot of the emulation assists performed, nonzero kinds only.
    pub fn assists(&self) -> Vec<(AssistKind, u64)> {
        AssistKind::ALL
            .iter()
            .map(|k| (*k, self.assists[*k as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Why a vCPU stopped with an error.
#[derive(Clone, Debug, Serialize)]
pub struct VcpuFailure {
    /// vCPU index.
    pub vcpu: u32,
    /// The exit reason or event.
    pub reason: String,
    /// Guest RIP when it happened.
    pub rip: u64,
    /// More detail (exception vector, error code, ...).
    pub detail: String,
}

impl std::fmt::Display for VcpuFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vCPU {}: {} at RIP {:#x}",
            self.vcpu, self.reason, self.rip
        )?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// What vCPU threads tell the runner.
#[derive(Clone, Debug)]
pub enum VcpuEvent {
    /// A workload operation began.
    OpBegin {
        /// vCPU.
        vcpu: u32,
        /// Operation index.
        index: usize,
        /// When.
        at: Instant,
    },
    /// A workload operation ended.
    OpEnd {
        /// vCPU.
        vcpu: u32,
        /// Operation index.
        index: usize,
        /// `OP_*` kind.
        kind: u64,
        /// What the guest reported.
        results: [u64; 3],
        /// When.
        at: Instant,
    },
    /// The guest printed something.
    Log {
        /// vCPU.
        vcpu: u32,
        /// The text.
        text: String,
    },
    /// The guest finished its workload.
    Done {
        /// vCPU.
        vcpu: u32,
        /// Guest status (0 = ok).
        status: u64,
        /// Hypercalls the guest says it made.
        calls: u64,
    },
    /// The vCPU stopped on an error.
    Failed(VcpuFailure),
    /// The guest rebooted or powered off (Linux guests): the run ends cleanly.
    GuestStopped {
        /// vCPU.
        vcpu: u32,
        /// How.
        reason: String,
    },
    /// The vCPU stopped because it was asked to.
    Stopped {
        /// vCPU.
        vcpu: u32,
    },
}

/// What a vCPU runs; decides what some exits mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum GuestKind {
    /// The built-in guest: port 0x510 carries hypercalls, a triple fault is a failure.
    #[default]
    BuiltIn,
    /// A Linux kernel: no hypercalls, a triple fault or a shutdown/reset event is the guest
    /// rebooting or powering off, which ends the run cleanly.
    Linux,
}

/// How a vCPU thread is started.
#[derive(Clone, Default)]
pub struct SpawnOptions {
    /// Host CPU to pin the thread to.
    pub pin: Option<usize>,
    /// Called at the built-in guest's sync points.
    pub sync: Option<SyncHook>,
    /// The guest.
    pub kind: GuestKind,
    /// The seccomp filter the thread installs before it runs the guest (none: unfiltered).
    pub seccomp: Option<crate::seccomp::ThreadFilter>,
    /// Complete the instructions KVM's ring-0 emulation stops on (`int3`, `fwait`; see
    /// [`crate::vmm::assist`]): on hosts without VMX/SVM only.
    pub assists: bool,
}

/// Called on the vCPU thread at a guest sync point (`sync` workload step); the vCPU waits
/// until it returns. Arguments: vCPU index, tag, guest memory.
pub type SyncHook = Arc<dyn Fn(u32, u64, &GuestRam) + Send + Sync>;

/// Requested and current state of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum RunState {
    /// Running guest code.
    Running = 0,
    /// Parked until resumed.
    Paused = 1,
    /// Finished; the thread has ended or is ending.
    Stopped = 2,
}

#[derive(Debug)]
struct Control {
    requested: Mutex<RunState>,
    cv: Condvar,
    current: AtomicU8,
}

/// The runner's handle on a vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    /// vCPU index.
    pub id: u32,
    /// Host CPU it is pinned to.
    pub pinned: Option<usize>,
    /// Live counters.
    pub stats: Arc<VcpuStats>,
    ctl: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// A cloneable view of one vCPU's state and counters (for the API).
#[derive(Clone, Debug)]
pub struct VcpuStatus {
    /// vCPU index.
    pub id: u32,
    /// Live counters.
    pub stats: Arc<VcpuStats>,
    ctl: Arc<Control>,
}

impl VcpuStatus {
    /// Current state.
    pub fn state(&self) -> RunState {
        state_of(&self.ctl)
    }
}

fn state_of(ctl: &Control) -> RunState {
    match ctl.current.load(Ordering::Acquire) {
        0 => RunState::Running,
        1 => RunState::Paused,
        _ => RunState::Stopped,
    }
}

impl VcpuHandle {
    /// A cloneable view of this vCPU's state and counters.
    pub fn status(&self) -> VcpuStatus {
        VcpuStatus {
            id: self.id,
            stats: self.stats.clone(),
            ctl: self.ctl.clone(),
        }
    }

    /// Current state.
    pub fn state(&self) -> RunState {
        state_of(&self.ctl)
    }

    /// Asks the vCPU to enter `state` and waits (up to `timeout`) until it has; kicks it out
    /// of `KVM_RUN` with a signal, repeatedly, since a kick that lands just before the thread
    /// enters the guest would otherwise be lost.
    pub fn request(&self, state: RunState, timeout: Duration) -> bool {
        {
            let mut r = self.ctl.requested.lock().unwrap();
            if *r == RunState::Stopped && state != RunState::Stopped {
                // Stopping is final.
                return false;
            }
            // A stop requested earlier (e.g. without waiting, to stop several vCPUs in
            // parallel) is still waited for and kicked here.
            *r = state;
            self.ctl.cv.notify_all();
        }
        let deadline = Instant::now() + timeout;
        while self.state() != state {
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return state == RunState::Stopped;
            }
            if let Some(t) = &self.thread {
                let _ = t.kill(kick_signal());
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Stops the vCPU and joins its thread.
    pub fn stop(&mut self) {
        self.request(RunState::Stopped, Duration::from_secs(5));
        if let Some(t) = self.thread.take() {
            if t.is_finished() || self.state() == RunState::Stopped {
                let _ = t.join();
            } else {
                log::warn!("vcpu{} did not stop in time; leaving its thread", self.id);
            }
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts vCPU `id` on a thread named `vcpu<id>`.
pub fn spawn(
    id: u32,
    fd: VcpuFd,
    ram: Arc<GuestRam>,
    bus: Arc<dyn Bus>,
    events: Sender<VcpuEvent>,
    opts: SpawnOptions,
) -> std::io::Result<VcpuHandle> {
    let SpawnOptions {
        pin,
        sync,
        kind,
        seccomp,
        assists,
    } = opts;
    static SIGNAL: Once = Once::new();
    SIGNAL.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            log::error!("cannot install the vCPU kick signal handler: {e}");
        }
    });
    let ctl = Arc::new(Control {
        requested: Mutex::new(RunState::Running),
        cv: Condvar::new(),
        current: AtomicU8::new(RunState::Running as u8),
    });
    let stats = Arc::new(VcpuStats::default());
    let mut runner = Runner {
        id,
        fd,
        ram,
        bus,
        events,
        ctl: ctl.clone(),
        stats: stats.clone(),
        sync,
        kind,
        assists,
    };
    // The thread pins itself and installs its seccomp filter before the guest runs; spawn
    // returns once that is done, with the filter's error if it failed.
    let (thread_ready, ready) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            if let Some(cpu) = pin {
                if crate::host::cpus::pin_current_thread_to(&[cpu]).is_err() {
                    log::warn!("vcpu{id}: could not pin to host CPU {cpu}");
                }
            }
            let filtered = seccomp.as_ref().map_or(Ok(()), |f| f.apply());
            let go = filtered.is_ok();
            let _ = thread_ready.send(filtered);
            if go {
                runner.run();
            }
        })?;
    match ready.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
        Err(_) => return Err(std::io::Error::other("the vCPU thread ended at its start")),
    }
    Ok(VcpuHandle {
        id,
        pinned: pin,
        stats,
        ctl,
        thread: Some(thread),
    })
}

struct Runner {
    id: u32,
    fd: VcpuFd,
    ram: Arc<GuestRam>,
    bus: Arc<dyn Bus>,
    events: Sender<VcpuEvent>,
    ctl: Arc<Control>,
    stats: Arc<VcpuStats>,
    sync: Option<SyncHook>,
    kind: GuestKind,
    assists: bool,
}

/// What the loop does after one exit.
enum Next {
    Continue,
    Finish(VcpuEvent),
}

impl Runner {
    fn set_current(&self, s: RunState) {
        self.ctl.current.store(s as u8, Ordering::Release);
    }

    fn run(&mut self) {
        let end = loop {
            {
                let mut req = self.ctl.requested.lock().unwrap();
                while *req == RunState::Paused {
                    self.set_current(RunState::Paused);
                    req = self.ctl.cv.wait(req).unwrap();
                }
                if *req == RunState::Stopped {
                    break VcpuEvent::Stopped { vcpu: self.id };
                }
                self.set_current(RunState::Running);
            }
            match self.step() {
                Next::Continue => {}
                Next::Finish(ev) => break ev,
            }
        };
        *self.ctl.requested.lock().unwrap() = RunState::Stopped;
        self.set_current(RunState::Stopped);
        let _ = self.events.send(end);
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    fn fail(&self, reason: &str, detail: String) -> Next {
        Next::Finish(VcpuEvent::Failed(VcpuFailure {
            vcpu: self.id,
            reason: reason.into(),
            rip: self.rip(),
            detail,
        }))
    }

    fn guest_stopped(&self, reason: &str) -> Next {
        Next::Finish(VcpuEvent::GuestStopped {
            vcpu: self.id,
            reason: reason.into(),
        })
    }

    fn step(&mut self) -> Next {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.stats.count(ExitReason::Interrupted);
                return Next::Continue;
            }
            Err(e) => return self.fail("KVM_RUN failed", e.to_string()),
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                self.stats.count(ExitReason::IoOut);
                if self.kind == GuestKind::BuiltIn && port == abi::HYPERCALL_PORT && data.len() == 4
                {
                    let gpa = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64;
                    self.stats.hypercalls.fetch_add(1, Ordering::Relaxed);
                    return self.hypercall(gpa);
                }
                if !self.bus.pio_write(port, data) {
                    self.stats.unclaimed_io.fetch_add(1, Ordering::Relaxed);
                }
                Next::Continue
            }
            VcpuExit::IoIn(port, data) => {
                self.stats.count(ExitReason::IoIn);
                if !self.bus.pio_read(port, data) {
                    data.fill(0xff);
                    self.stats.unclaimed_io.fetch_add(1, Ordering::Relaxed);
                }
                Next::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                self.stats.count(ExitReason::MmioRead);
                if !self.bus.mmio_read(addr, data) {
                    data.fill(0xff);
                    self.stats.unclaimed_io.fetch_add(1, Ordering::Relaxed);
                }
                Next::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                self.stats.count(ExitReason::MmioWrite);
                if !self.bus.mmio_write(addr, data) {
                    self.stats.unclaimed_io.fetch_add(1, Ordering::Relaxed);
                }
                Next::Continue
            }
            VcpuExit::Hlt => {
                self.stats.count(ExitReason::Hlt);
                self.fail(
                    "guest halted (hlt) without finishing its workload",
                    String::new(),
                )
            }
            VcpuExit::Shutdown => {
                self.stats.count(ExitReason::Shutdown);
                if self.kind == GuestKind::Linux {
                    return self.guest_stopped(
                        "the guest reset the machine (KVM_EXIT_SHUTDOWN: a triple fault, how Linux reboots when nothing else works)",
                    );
                }
                self.fail(
                    "guest shut down (KVM_EXIT_SHUTDOWN: triple fault)",
                    String::new(),
                )
            }
            VcpuExit::InternalError => {
                self.stats.count(ExitReason::InternalError);
                if self.assists {
                    return self.assist();
                }
                self.fail(
                    "KVM internal error (KVM_EXIT_INTERNAL_ERROR)",
                    "KVM could not emulate a guest instruction".into(),
                )
            }
            VcpuExit::FailEntry(reason, cpu) => {
                self.stats.count(ExitReason::FailEntry);
                self.fail(
                    "VM entry failed (KVM_EXIT_FAIL_ENTRY)",
                    format!("hardware reason {reason:#x} on host CPU {cpu}"),
                )
            }
            VcpuExit::SystemEvent(kind, _) => {
                self.stats.count(ExitReason::SystemEvent);
                if self.kind == GuestKind::Linux {
                    match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                            return self.guest_stopped("the guest powered off")
                        }
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                            return self.guest_stopped("the guest rebooted")
                        }
                        _ => {}
                    }
                }
                self.fail("guest requested a system event", format!("type {kind}"))
            }
            other => {
                self.stats.count(ExitReason::Other);
                let d = format!("{other:?}");
                self.fail("unhandled VM exit", d)
            }
        }
    }

    /// `KVM_EXIT_INTERNAL_ERROR` on a host without VMX/SVM: completes `int3` and a harmless
    /// `fwait` (see [`crate::vmm::assist`]); anything else ends the run with the instruction bytes.
    fn assist(&mut self) -> Next {
        match assist::complete(&self.fd, &self.ram) {
            Ok(kind) => {
                self.stats.assists[kind as usize].fetch_add(1, Ordering::Relaxed);
                Next::Continue
            }
            Err(e) => self.fail(
                "KVM internal error (KVM_EXIT_INTERNAL_ERROR)",
                e.to_string(),
            ),
        }
    }

    fn hypercall(&mut self, gpa: u64) -> Next {
        let mem = self.ram.memory();
        let hc: Hypercall = match mem.read_obj(GuestAddress(gpa)) {
            Ok(hc) => hc,
            Err(e) => {
                return self.fail(
                    "hypercall block outside guest RAM",
                    format!("block at {gpa:#x}: {e}"),
                )
            }
        };
        let a = hc.args;
        let at = Instant::now();
        match hc.nr {
            abi::HC_LOG => {
                let len = a[1].min(4096) as usize;
                let mut buf = vec![0u8; len];
                let text = match mem.read_slice(&mut buf, GuestAddress(a[0])) {
                    Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
                    Err(e) => format!("<unreadable log at {:#x}: {e}>", a[0]),
                };
                let _ = self.events.send(VcpuEvent::Log {
                    vcpu: self.id,
                    text,
                });
                Next::Continue
            }
            abi::HC_OP_BEGIN => {
                self.stats.step.store(a[0] + 1, Ordering::Release);
                let _ = self.events.send(VcpuEvent::OpBegin {
                    vcpu: self.id,
                    index: a[0] as usize,
                    at,
                });
                Next::Continue
            }
            abi::HC_OP_END => {
                self.stats.step.store(0, Ordering::Release);
                let _ = self.events.send(VcpuEvent::OpEnd {
                    vcpu: self.id,
                    index: a[0] as usize,
                    kind: a[1],
                    results: [a[2], a[3], a[4]],
                    at,
                });
                Next::Continue
            }
            abi::HC_WAIT => {
                let timeout = Duration::from_micros(a[0].min(1_000_000));
                let pending = self.bus.wait_event(timeout) as u64;
                if let Err(e) = mem.write_obj(pending, GuestAddress(gpa + 24)) {
                    return self.fail("hypercall block outside guest RAM", e.to_string());
                }
                Next::Continue
            }
            abi::HC_PROGRESS | abi::HC_POLL => {
                if hc.nr == abi::HC_PROGRESS {
                    for (slot, v) in self.stats.progress.iter().zip(a) {
                        slot.store(v, Ordering::Release);
                    }
                    self.stats.progress_updates.fetch_add(1, Ordering::AcqRel);
                }
                let finish = self.stats.finish_requested.swap(false, Ordering::AcqRel);
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                    .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
                    .unwrap_or(0);
                for (i, v) in [(4u64, now), (5, finish as u64)] {
                    if let Err(e) = mem.write_obj(v, GuestAddress(gpa + 16 + 8 * i)) {
                        return self.fail("hypercall block outside guest RAM", e.to_string());
                    }
                }
                Next::Continue
            }
            abi::HC_SYNC => {
                if let Some(hook) = &self.sync {
                    hook(self.id, a[0], &self.ram);
                }
                Next::Continue
            }
            abi::HC_DONE => Next::Finish(VcpuEvent::Done {
                vcpu: self.id,
                status: a[0],
                calls: a[1],
            }),
            abi::HC_EXCEPTION => Next::Finish(VcpuEvent::Failed(VcpuFailure {
                vcpu: self.id,
                reason: format!("guest exception {} (vector {})", exception_name(a[0]), a[0]),
                rip: a[2],
                detail: format!(
                    "error code {:#x}, cr2 {:#x}, cs {:#x}, rflags {:#x}",
                    a[1], a[3], a[4], a[5]
                ),
            })),
            nr => self.fail("unknown hypercall", format!("number {nr}")),
        }
    }
}

/// Mnemonic of an x86 exception vector.
pub fn exception_name(v: u64) -> &'static str {
    const NAMES: [&str; 21] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "?", "#MF", "#AC", "#MC", "#XM", "#VE",
    ];
    NAMES.get(v as usize).copied().unwrap_or("?")
}
