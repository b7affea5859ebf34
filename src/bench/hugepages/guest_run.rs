//! One benchmark guest, run and measured: the sync hook that stops all vCPUs at each phase
//! boundary and snapshots the host's page-fault counters and KVM's counters there, and each vCPU
//! thread's CPU time ([`PhaseRecorder`]), and what one run measured ([`RunSample`]).
//!
//! Phase times come two ways: wall-clock time between the guest's begin and end hypercalls of a
//! step (what a user waits), and the CPU time of the vCPU threads between two sync points (read
//! on the vCPU thread itself, in the hook; guest execution, KVM's fault handling and the host's
//! page faults all run on that thread). On a machine shared with other work the wall figure
//! includes the time other processes had the CPU; the CPU-time figure does not.

use super::{HugepagesConfig, HugepagesOptions, PHASES, STEP_RANDOM, STEP_READ, STEP_TOUCH};
use crate::config::{RegionConfig, VmConfig};
use crate::memory::GuestRam;
use crate::report::run::{Outcome, RunReport};
use crate::runner::{RunOptions, StartOptions, Vmm};
use crate::vmm::kvm_stats::{KvmSnapshot, KvmStats};
use crate::vmm::vcpu::SyncHook;
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Counters at a phase boundary.
#[derive(Clone, Debug)]
struct Snapshot {
    minflt: u64,
    majflt: u64,
    kvm: Option<KvmSnapshot>,
}

/// Page faults (`ru_minflt`, `ru_majflt`) of the whole process (`RUSAGE_SELF`: every thread,
/// exited ones included) or of the calling thread (`RUSAGE_THREAD`).
fn rusage_faults_of(who: libc::c_int) -> (u64, u64) {
    // SAFETY: getrusage writes one `struct rusage` into the zeroed value we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `who` is RUSAGE_SELF or RUSAGE_THREAD.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return (0, 0);
    }
    (ru.ru_minflt as u64, ru.ru_majflt as u64)
}

fn rusage_faults() -> (u64, u64) {
    rusage_faults_of(libc::RUSAGE_SELF)
}

/// Page faults of the calling thread. KVM's `get_user_pages` faults are counted to the vCPU
/// thread that ran into them.
fn thread_faults() -> (u64, u64) {
    rusage_faults_of(libc::RUSAGE_THREAD)
}

fn snapshot(stats: Option<&KvmStats>) -> Snapshot {
    let (minflt, majflt) = rusage_faults();
    Snapshot {
        minflt,
        majflt,
        kvm: stats.and_then(|s| {
            s.snapshot()
                .map_err(|e| log::warn!("bench: KVM statistics: {e}"))
                .ok()
        }),
    }
}

#[derive(Debug, Default)]
struct RecorderState {
    /// Set once the bench has the VM's statistics: opens the start gate (sync tag 0).
    go: bool,
    stats: Option<Arc<KvmStats>>,
    arrived: [usize; PHASES],
    snapshots: [Option<Snapshot>; PHASES],
    /// Per vCPU: its thread's CPU time when it reached each sync point.
    cpu: Vec<[Option<Duration>; PHASES]>,
    /// Per vCPU: its thread's page faults when it reached each sync point (first thing in the
    /// hook) and when it left it (last thing): faults between leaving one and reaching the
    /// next are the guest's (and KVM's on its behalf), not the hook's own work.
    faults: Vec<[ThreadFaults; PHASES]>,
}

/// A vCPU thread's (minor, major) page faults when it reached a sync point and when it left.
type ThreadFaults = (Option<(u64, u64)>, Option<(u64, u64)>);

/// The sync hook of a benchmark guest: holds the vCPUs at the start gate until the bench has
/// attached the VM's KVM statistics, and at every sync point waits for all vCPUs, then takes
/// one [`Snapshot`] (by the last vCPU to arrive, while all are stopped) and lets them go on.
#[derive(Debug)]
pub struct PhaseRecorder {
    vcpus: usize,
    state: Mutex<RecorderState>,
    cv: Condvar,
    /// Longest wait at a sync point (a vCPU that failed never arrives).
    patience: Duration,
}

impl PhaseRecorder {
    fn new(vcpus: usize, patience: Duration) -> Arc<PhaseRecorder> {
        Arc::new(PhaseRecorder {
            vcpus,
            state: Mutex::new(RecorderState::default()),
            cv: Condvar::new(),
            patience,
        })
    }

    fn hook(self: &Arc<Self>) -> SyncHook {
        let me = self.clone();
        Arc::new(move |vcpu: u32, tag: u64, _ram: &GuestRam| {
            let (vcpu, tag) = (vcpu as usize, tag as usize);
            let reached = thread_faults();
            me.arrive(vcpu, tag);
            let left = thread_faults();
            me.record_faults(vcpu, tag, reached, left);
        })
    }

    fn record_faults(&self, vcpu: usize, tag: usize, reached: (u64, u64), left: (u64, u64)) {
        if tag >= PHASES {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.faults.len() <= vcpu {
            st.faults.resize(vcpu + 1, [(None, None); PHASES]);
        }
        st.faults[vcpu][tag] = (Some(reached), Some(left));
    }

    /// Page faults (minor, major) the vCPU threads took while the guest ran from sync point
    /// `from` to sync point `to`, summed over vCPUs.
    fn vcpu_faults(&self, from: usize, to: usize) -> Option<(u64, u64)> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.faults.len() < self.vcpus {
            return None;
        }
        st.faults.iter().try_fold((0, 0), |(min, maj), f| {
            let (left, reached) = (f[from].1?, f[to].0?);
            Some((
                min + reached.0.saturating_sub(left.0),
                maj + reached.1.saturating_sub(left.1),
            ))
        })
    }

    /// Attaches the VM's statistics and opens the start gate.
    fn start(&self, stats: Option<Arc<KvmStats>>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.stats = stats;
        st.go = true;
        self.cv.notify_all();
    }

    fn arrive(&self, vcpu: usize, tag: usize) {
        if tag >= PHASES {
            return;
        }
        let cpu = crate::host::cpus::thread_cpu_time();
        let deadline = Instant::now() + self.patience;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.cpu.len() <= vcpu {
            st.cpu.resize(vcpu + 1, [None; PHASES]);
        }
        st.cpu[vcpu][tag] = cpu;
        while tag == 0 && !st.go {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("bench: the start gate was never opened");
                break;
            }
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
        st.arrived[tag] += 1;
        if st.arrived[tag] >= self.vcpus {
            let snap = snapshot(st.stats.as_deref());
            st.snapshots[tag] = Some(snap);
            self.cv.notify_all();
            return;
        }
        while st.snapshots[tag].is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("bench: not every vCPU reached sync point {tag}");
                return;
            }
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
    }

    fn snapshots(&self) -> [Option<Snapshot>; PHASES] {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshots
            .clone()
    }

    /// Seconds of vCPU-thread CPU time between sync points `from` and `to`, summed over vCPUs.
    fn cpu_seconds(&self, from: usize, to: usize) -> Option<f64> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.cpu.len() < self.vcpus {
            return None;
        }
        st.cpu
            .iter()
            .map(|c| Some(c[to]?.saturating_sub(c[from]?).as_secs_f64()))
            .sum()
    }
}

/// What one run of one configuration measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSample {
    /// Seconds from the start of `Vmm::start_with` until the vCPUs could run: checks, mapping,
    /// prealloc, VM creation, writing the guest image and page tables.
    pub start_s: f64,
    /// Of which preallocation (0 without prealloc).
    pub prealloc_s: f64,
    /// Seconds of the fault phase (first touch of every 4 KiB page of the working set), first
    /// begin to last end over vCPUs.
    pub first_touch_s: f64,
    /// 4 KiB pages touched in the fault phase.
    pub pages_touched: u64,
    /// Host page faults (`ru_minflt`, `ru_majflt`) from before the VM was created to the start
    /// gate: memory mapping, prealloc, VM and vCPU setup.
    pub start_faults: (u64, u64),
    /// Host page faults the vCPU threads took during the fault phase, from leaving one sync
    /// point to reaching the next: the guest's touches (KVM's `get_user_pages` faults count to
    /// the vCPU thread) and its exits, not the hook's own work nor other threads'. (Counted
    /// process-wide they once included the VMM's report buffer, 64 faults per GiB of guest RAM
    /// for its `mincore` vector, whenever the main thread ran that during the phase.)
    pub touch_faults: (u64, u64),
    /// Host page faults the vCPU threads took during the sequential and random phases.
    pub steady_faults: (u64, u64),
    /// vCPU-thread CPU seconds of the fault phase, summed over vCPUs.
    pub first_touch_cpu_s: Option<f64>,
    /// ns per sequential read: vCPU-thread CPU time / reads.
    pub seq_ns: f64,
    /// ns per random access: vCPU-thread CPU time / accesses.
    pub random_ns: f64,
    /// ns per sequential read: wall-clock vCPU-seconds between the step's hypercalls / reads.
    pub seq_wall_ns: f64,
    /// ns per random access: wall-clock vCPU-seconds / accesses.
    pub random_wall_ns: f64,
    /// Exits the VMM saw (KVM_RUN returns), whole run.
    pub vmm_exits: u64,
    /// KVM's exit counter (exits handled in the kernel included): fault phase, steady phases.
    pub kvm_exits: Option<(u64, u64)>,
    /// Page faults KVM's MMU fixed: fault phase, steady phases.
    pub kvm_pf_fixed: Option<(u64, u64)>,
    /// KVM MMU leaf mappings of 4K, 2M and 1G at the end of the run.
    pub kvm_pages: Option<(u64, u64, u64)>,
    /// Bytes of guest RAM resident on the host at the end (mincore).
    pub resident_bytes: u64,
    /// The process's VmRSS + HugetlbPages at the end of the run.
    pub process_rss_bytes: u64,
    /// Huge pages taken from the pool at the end of the run, and reserved (promised to the
    /// mapping, not yet faulted).
    pub pool_used: Option<(u64, u64)>,
}

/// VmRSS + HugetlbPages of this process, bytes.
fn process_rss() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    field("VmRSS:") + field("HugetlbPages:")
}

/// Runs one configuration once.
pub(super) fn run_once(
    config: HugepagesConfig,
    opts: &HugepagesOptions,
    mount: Option<&Path>,
) -> Result<RunSample, String> {
    let spec = config
        .backing
        .region_spec(opts.memory, config.prealloc, mount);
    let region = RegionConfig::parse(0, &spec).map_err(|e| e.to_string())?;
    let vm_config = VmConfig {
        vcpus: opts.vcpus,
        memory: vec![region],
        workload: opts.workload(),
        ..Default::default()
    };
    // Waiting at a sync point longer than a very slow fault phase means a vCPU failed.
    let pages = opts.ws_per_vcpu() / 4096;
    let patience = Duration::from_secs(60).max(Duration::from_micros(400 * pages));
    let recorder = PhaseRecorder::new(opts.vcpus as usize, patience);
    let huge = config.backing.huge_size();
    let pool_before = huge.and_then(|s| hugepages::pool_status(s).ok());
    let (min0, maj0) = rusage_faults();
    let mut vmm = Vmm::start_with(
        &vm_config,
        StartOptions {
            sync: Some(recorder.hook()),
            ..Default::default()
        },
    )
    .map_err(|e| format!("starting the guest: {e}"))?;
    recorder.start(vmm.kvm_stats().cloned());
    let report = vmm.wait(&RunOptions {
        timeout: Some(patience * 4),
        interrupt: opts.interrupt.clone(),
    });
    let pool_after = huge.and_then(|s| hugepages::pool_status(s).ok());
    let rss = process_rss();
    drop(vmm);
    if !matches!(report.outcome, Outcome::Completed) {
        return Err(format!("the guest did not complete: {:?}", report.outcome));
    }
    let snaps = recorder.snapshots();
    let [Some(s0), Some(s1), Some(_), Some(s3)] = snaps else {
        return Err("a sync point was not reached by every vCPU".into());
    };
    let faults = |from: usize, to: usize| {
        recorder
            .vcpu_faults(from, to)
            .ok_or("a vCPU's page faults were not recorded at a sync point")
    };
    let kvm = |name: &str, a: &Snapshot, b: &Snapshot| -> Option<u64> {
        Some(b.kvm.as_ref()?.vcpu(name) - a.kvm.as_ref()?.vcpu(name))
    };
    // ns per access of a step from wall-clock vCPU-seconds and, when the sync points between
    // which it ran (`from`, `to`) have the vCPU threads' CPU times, from those.
    let per_access = |step: usize, from: usize, to: usize| -> Result<(f64, f64), String> {
        let (secs, n) = step_totals(&report, step);
        if n == 0 || secs <= 0.0 {
            return Err(format!("workload step {step} reported no accesses"));
        }
        let wall = secs * 1e9 / n as f64;
        let cpu = recorder
            .cpu_seconds(from, to)
            .filter(|c| *c > 0.0)
            .map_or(wall, |c| c * 1e9 / n as f64);
        Ok((cpu, wall))
    };
    let (seq_ns, seq_wall_ns) = per_access(STEP_READ, 1, 2)?;
    let (random_ns, random_wall_ns) = per_access(STEP_RANDOM, 2, 3)?;
    let touch = report
        .ops
        .iter()
        .find(|o| o.index == STEP_TOUCH)
        .ok_or("the guest reported no fault phase")?;
    Ok(RunSample {
        start_s: report.setup_seconds,
        prealloc_s: report.regions[0]
            .prealloc
            .as_ref()
            .map_or(0.0, |p| p.seconds),
        first_touch_s: touch.seconds,
        pages_touched: touch.amount,
        start_faults: (s0.minflt - min0, s0.majflt - maj0),
        touch_faults: faults(0, 1)?,
        steady_faults: faults(1, 3)?,
        first_touch_cpu_s: recorder.cpu_seconds(0, 1),
        seq_ns,
        random_ns,
        seq_wall_ns,
        random_wall_ns,
        vmm_exits: report.vcpus.iter().map(|v| v.total_exits).sum(),
        kvm_exits: kvm("exits", &s0, &s1).zip(kvm("exits", &s1, &s3)),
        kvm_pf_fixed: kvm("pf_fixed", &s0, &s1).zip(kvm("pf_fixed", &s1, &s3)),
        kvm_pages: s3
            .kvm
            .as_ref()
            .map(|k| (k.vm("pages_4k"), k.vm("pages_2m"), k.vm("pages_1g"))),
        resident_bytes: report.regions[0].resident,
        process_rss_bytes: rss,
        pool_used: pool_before
            .zip(pool_after)
            .map(|(b, a)| (b.free.saturating_sub(a.free), a.reserved)),
    })
}

/// vCPU-seconds and accesses (result 0) of workload step `index`, summed over vCPUs.
fn step_totals(report: &RunReport, index: usize) -> (f64, u64) {
    report
        .vcpus
        .iter()
        .flat_map(|v| v.ops.iter())
        .filter(|o| o.index == index)
        .fold((0.0, 0), |(s, n), o| (s + o.seconds, n + o.results[0]))
}
