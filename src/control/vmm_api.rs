//! The VMM side of the control API: answers typed [`ApiRequest`]s from what a running VM
//! shares (configuration, guest memory, balloon, vCPU counters) and sends state changes
//! (pause, resume, stop) to the VMM's event loop as commands.
//!
//! Answers that walk the page map (`GET /memory/report`, `/metrics`, `/memory/mappings`; ~0.1 s
//! per GiB of resident RAM) go through a [`WalkGate`]: one walk at a time, so a burst of such
//! requests costs the host one CPU, not one per connection (the vCPUs keep the rest), and the
//! report requests that queued behind a walk share the next one.

use crate::config::VmConfig;
use crate::control::api::{
    ActionType, ApiHandler, ApiRequest, ApiResponse, BalloonConfig, BalloonDeviceInfo,
    BalloonStatistics, Transport, VmState, PROMETHEUS_CONTENT_TYPE,
};
use crate::devices::balloon::BalloonHandle;
use crate::devices::virtio::DeviceModel;
use crate::memory::{GuestRam, PagerReport};
use crate::vmm::vcpu::{RunState, VcpuStatus};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A state change the event loop carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmCommand {
    /// Park every vCPU.
    Pause,
    /// Let them run again.
    Resume,
    /// Stop the VM cleanly (the report is still produced).
    Stop,
}

/// A command and where to send its result.
pub type CommandMsg = (VmCommand, Sender<Result<(), String>>);

/// What the API handler sees of a running VM.
pub struct VmmApi {
    /// The configuration.
    pub config: VmConfig,
    /// Guest memory.
    pub ram: Arc<GuestRam>,
    /// The balloon, if configured.
    pub balloon: Option<BalloonHandle>,
    /// The disks, in `--disk` order.
    pub disks: Vec<crate::devices::block::BlockHandle>,
    /// The network interfaces, in `--net` order.
    pub nets: Vec<crate::devices::net::NetHandle>,
    /// vCPU states and counters.
    pub vcpus: Vec<VcpuStatus>,
    /// Channel to the event loop.
    pub commands: Mutex<Sender<CommandMsg>>,
    /// When the guest started.
    pub started: Instant,
    /// Page-map walks for the API, one at a time.
    pub walks: WalkGate,
    /// Reclaim to host swap and the standing resident limit.
    pub reclaimer: Arc<crate::control::reclaim::Reclaimer>,
    /// The thread that carries out the in-VMM swap (`None`: `PUT /memory/swap-*` refused).
    pub swap: Option<crate::control::vmm_swap::SwapWorker>,
}

/// One page-map walk at a time. A request for the memory figures that had to wait shares the
/// result of a walk that started after it arrived (so the answer is never older than the
/// request); otherwise it walks itself.
#[derive(Debug, Default)]
pub struct WalkGate {
    last: Mutex<Option<(Instant, Arc<crate::report::overcommit::VmMemory>)>>,
    /// Held during every walk (memory figures and GPA→HPA maps alike).
    one_walk: Mutex<()>,
    walks: std::sync::atomic::AtomicU64,
}

impl WalkGate {
    /// The per-VM memory figures for a request that arrived at `arrived`.
    pub fn memory(
        &self,
        arrived: Instant,
        read: impl FnOnce() -> crate::report::overcommit::VmMemory,
    ) -> Arc<crate::report::overcommit::VmMemory> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((started, m)) = last.as_ref() {
            if *started >= arrived {
                return m.clone();
            }
        }
        let started = Instant::now();
        let _one = self.one_walk.lock().unwrap_or_else(|e| e.into_inner());
        let m = Arc::new(read());
        self.walks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *last = Some((started, m.clone()));
        m
    }

    /// Runs a GPA→HPA map walk, one at a time with the others.
    pub fn mappings<R>(&self, walk: impl FnOnce() -> R) -> R {
        let _one = self.one_walk.lock().unwrap_or_else(|e| e.into_inner());
        self.walks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        walk()
    }

    /// Page-map walks done so far.
    pub fn count(&self) -> u64 {
        self.walks.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Running => "Running",
        RunState::Paused => "Paused",
        RunState::Stopped => "Stopped",
    }
}

impl VmmApi {
    fn command(&self, c: VmCommand) -> ApiResponse {
        let (tx, rx) = mpsc::channel();
        if self.commands.lock().unwrap().send((c, tx)).is_err() {
            return ApiResponse::error(400, "the VM has already stopped");
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => ApiResponse::NoContent,
            Ok(Err(e)) => ApiResponse::error(400, e),
            Err(_) => ApiResponse::error(500, "the VMM did not carry out the request within 10 s"),
        }
    }

    /// Asks the built-in guest to end its balloon step (it polls for this every ~0.1 s).
    fn finish_balloon_step(&self) -> ApiResponse {
        if self.config.linux.is_some() {
            return ApiResponse::bad_request(
                "FinishBalloonStep is for the built-in guest's balloon step; a Linux guest has none (use Shutdown to stop it)",
            );
        }
        let has_step = self.config.workload.steps.iter().any(|s| {
            matches!(
                s,
                crate::config::workload::Step::Balloon { .. }
                    | crate::config::workload::Step::Hold { .. }
            )
        });
        if !has_step {
            return ApiResponse::bad_request(
                "this VM's workload has no balloon step (nor hold step) to finish; start it with -w \"...;balloon:data=..,seconds=0\" or \"...;hold\"",
            );
        }
        if self.vm_state() == "Stopped" {
            return ApiResponse::bad_request("the VM has already stopped");
        }
        for v in &self.vcpus {
            v.stats
                .finish_requested
                .store(true, std::sync::atomic::Ordering::Release);
        }
        ApiResponse::NoContent
    }

    fn vm_state(&self) -> &'static str {
        let states: Vec<RunState> = self.vcpus.iter().map(|v| v.state()).collect();
        if states.iter().all(|s| *s == RunState::Stopped) {
            "Stopped"
        } else if states.iter().all(|s| *s != RunState::Running) {
            "Paused"
        } else {
            "Running"
        }
    }

    /// The per-VM overcommit figures ([`crate::report::overcommit::VmMemory`]) and the
    /// in-VMM swap's state (`vmm_swap`).
    pub fn memory_report(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&*self.memory(Instant::now())).expect("serialises");
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "vmm_swap".into(),
                serde_json::to_value(self.ram.swap_status()).expect("serialises"),
            );
        }
        v
    }

    /// `PUT /memory/swap-out`: pauses a running guest (the guest must not write memory while
    /// it is copied), holds the balloon device (its statistics timer writes guest memory),
    /// has the `vmm-swap` thread swap out, and resumes the guest.
    fn swap_out(&self, body: crate::control::api::SwapOutBody) -> ApiResponse {
        let Some(worker) = &self.swap else {
            return ApiResponse::bad_request(NO_SWAP_WORKER);
        };
        let state = self.vm_state();
        if state == "Stopped" {
            return ApiResponse::bad_request("the VM has already stopped");
        }
        let only = if body.cold_only {
            match self.cold_ranges() {
                Ok(r) => Some(r),
                Err(e) => return swap_error(e),
            }
        } else {
            None
        };
        let req = crate::memory::SwapOutRequest {
            file: body.file,
            only,
        };
        if let Err(e) = self.ram.swap_precheck(&req) {
            return swap_error(e);
        }
        let paused = state == "Running";
        if paused {
            if let err @ ApiResponse::Error { .. } = self.command(VmCommand::Pause) {
                return err;
            }
        }
        let result = match &self.balloon {
            Some(b) => b.with_device(|_| (worker.swap_out(req), false)),
            None => worker.swap_out(req),
        };
        if paused {
            if let ApiResponse::Error { fault_message, .. } = self.command(VmCommand::Resume) {
                log::error!("vmm-swap: resuming the guest after the swap-out: {fault_message}");
            }
        }
        match result {
            Ok(r) => json_answer(&r),
            Err(e) => swap_error(e),
        }
    }

    /// What `cold_only` swaps out: the guest-physical chunks outside the working set, by the
    /// same estimate that orders reclaim ([`crate::vmm::working_set::Tracker::cold_chunks`]).
    /// Before the first window ends, tracking is started and the answer says when to retry.
    fn cold_ranges(&self) -> Result<Vec<(u64, u64)>, crate::memory::SwapError> {
        use crate::memory::SwapError;
        let Some(t) = self.reclaimer.tracker() else {
            return Err(SwapError::NoEstimate(
                "this VMM was built without a working-set tracker".into(),
            ));
        };
        if let Some(cold) = t.cold_chunks() {
            return Ok(cold);
        }
        let ws = t.estimate();
        if ws.method == "none" {
            return Err(SwapError::NoEstimate(ws.notes.join("; ")));
        }
        Err(SwapError::NoEstimateYet {
            window_seconds: ws.window_seconds,
        })
    }

    /// The memory figures through the walk gate.
    fn memory(&self, arrived: Instant) -> Arc<crate::report::overcommit::VmMemory> {
        self.walks.memory(arrived, || {
            let balloon = self.balloon.as_ref().map(BalloonHandle::figures);
            let mut m = crate::report::overcommit::VmMemory::read(&self.ram, balloon);
            m.working_set_bytes = self
                .reclaimer
                .tracker()
                .and_then(|t| t.peek())
                .and_then(|w| w.working_set_bytes);
            m
        })
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP memvisor_vcpu_exits_total VM exits by vCPU and reason."
        );
        let _ = writeln!(s, "# TYPE memvisor_vcpu_exits_total counter");
        for v in &self.vcpus {
            for (r, n) in v.stats.exits() {
                let _ = writeln!(
                    s,
                    "memvisor_vcpu_exits_total{{vcpu=\"{}\",reason=\"{}\"}} {n}",
                    v.id,
                    r.name()
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP memvisor_vcpu_assists_total Guest instructions memvisor completed for KVM (hosts without VMX/SVM), by vCPU and kind."
        );
        let _ = writeln!(s, "# TYPE memvisor_vcpu_assists_total counter");
        for v in &self.vcpus {
            for (k, n) in v.stats.assists() {
                let _ = writeln!(
                    s,
                    "memvisor_vcpu_assists_total{{vcpu=\"{}\",kind=\"{}\"}} {n}",
                    v.id,
                    k.name()
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP memvisor_guest_ram_bytes Configured guest RAM by region."
        );
        let _ = writeln!(s, "# TYPE memvisor_guest_ram_bytes gauge");
        let resident = self.ram.resident_bytes();
        for r in self.ram.regions() {
            let _ = writeln!(
                s,
                "memvisor_guest_ram_bytes{{region=\"{}\",backend=\"{}\"}} {}",
                r.index,
                r.config.backend.name(),
                r.config.size
            );
        }
        let _ = writeln!(
            s,
            "# HELP memvisor_resident_bytes Host memory backing each region."
        );
        let _ = writeln!(s, "# TYPE memvisor_resident_bytes gauge");
        for (r, res) in self.ram.regions().iter().zip(resident) {
            let _ = writeln!(s, "memvisor_resident_bytes{{region=\"{}\"}} {res}", r.index);
        }
        let _ = writeln!(
            s,
            "# HELP memvisor_uffd_faults_total Page faults served by userfaultfd."
        );
        let _ = writeln!(s, "# TYPE memvisor_uffd_faults_total counter");
        for r in self.ram.regions() {
            if let Some(PagerReport::Internal(u)) = r.pager.as_ref().map(|p| p.report()) {
                let _ = writeln!(
                    s,
                    "memvisor_uffd_faults_total{{region=\"{}\"}} {}",
                    r.index, u.faults
                );
            }
        }
        let arrived = Instant::now();
        let m = self.memory(arrived);
        let gauges: [(&str, &str, Option<u64>); 7] = [
            (
                "memvisor_used_bytes",
                "Host memory the guest costs: resident minus KSM savings inside it.",
                Some(m.used_bytes),
            ),
            (
                "memvisor_swapped_bytes",
                "Guest RAM swapped out on the host.",
                Some(m.swapped_bytes),
            ),
            (
                "memvisor_zero_page_bytes",
                "Guest RAM mapped to the host's shared zero page.",
                m.zero_page_bytes,
            ),
            (
                "memvisor_hugetlb_bytes",
                "Resident guest RAM on hugetlb pages.",
                Some(m.hugetlb_bytes),
            ),
            (
                "memvisor_ksm_merging_pages",
                "Pages of this VMM merged by KSM (ksm_merging_pages).",
                Some(m.ksm.merging_pages),
            ),
            (
                "memvisor_ksm_saved_bytes",
                "Bytes KSM saves inside this guest's RAM.",
                Some(m.ksm.saved_bytes),
            ),
            (
                "memvisor_configured_bytes",
                "Configured guest RAM.",
                Some(m.configured_bytes),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let _ = writeln!(s, "# HELP {name} {help}");
                let _ = writeln!(s, "# TYPE {name} gauge");
                let _ = writeln!(s, "{name} {v}");
            }
        }
        if let Some(ws) = self.reclaimer.tracker().and_then(|t| t.peek()) {
            let _ = writeln!(
                s,
                "# HELP memvisor_working_set_bytes Guest RAM used in the last window, by region and method (while tracking runs)."
            );
            let _ = writeln!(s, "# TYPE memvisor_working_set_bytes gauge");
            for r in &ws.regions {
                if let Some(b) = r.working_set_bytes {
                    let _ = writeln!(
                        s,
                        "memvisor_working_set_bytes{{region=\"{}\",method=\"{}\"}} {b}",
                        r.index, ws.method
                    );
                }
            }
        }
        let st = self.reclaimer.status();
        let _ = writeln!(s, "# HELP memvisor_major_faults_total Major page faults of the VMM process (swap-ins of guest pages among them).");
        let _ = writeln!(s, "# TYPE memvisor_major_faults_total counter");
        let _ = writeln!(s, "memvisor_major_faults_total {}", st.major_faults);
        let _ = writeln!(s, "# HELP memvisor_reclaimed_bytes_total Guest RAM paged out to host swap by reclaim and the resident limit.");
        let _ = writeln!(s, "# TYPE memvisor_reclaimed_bytes_total counter");
        let _ = writeln!(
            s,
            "memvisor_reclaimed_bytes_total {}",
            st.paged_out_bytes_total
        );
        vmm_swap_metrics(&mut s, &self.ram.swap_status());
        let _ = writeln!(
            s,
            "# HELP memvisor_page_map_walks_total Page-map walks done for API answers (one at a time; queued report requests share one)."
        );
        let _ = writeln!(s, "# TYPE memvisor_page_map_walks_total counter");
        let _ = writeln!(s, "memvisor_page_map_walks_total {}", self.walks.count());
        if let Some(b) = &self.balloon {
            let (t, a, rel, counters) = b.with_device(|d| {
                (
                    (
                        d.model.target_pages() as u64 * 4096,
                        d.model.actual_pages() as u64 * 4096,
                        d.released_bytes(),
                        d.model.counters(),
                    ),
                    false,
                )
            });
            let _ = writeln!(s, "# HELP memvisor_balloon_target_bytes Balloon target.");
            let _ = writeln!(s, "# TYPE memvisor_balloon_target_bytes gauge");
            let _ = writeln!(s, "memvisor_balloon_target_bytes {t}");
            let _ = writeln!(
                s,
                "# HELP memvisor_balloon_actual_bytes Memory the guest has given to the balloon."
            );
            let _ = writeln!(s, "# TYPE memvisor_balloon_actual_bytes gauge");
            let _ = writeln!(s, "memvisor_balloon_actual_bytes {a}");
            let _ = writeln!(
                s,
                "# HELP memvisor_balloon_released_bytes_total Host memory returned by the balloon."
            );
            let _ = writeln!(s, "# TYPE memvisor_balloon_released_bytes_total counter");
            let _ = writeln!(s, "memvisor_balloon_released_bytes_total {rel}");
            balloon_counter_metrics(&mut s, &counters);
        }
        crate::control::disks::disk_metrics(&mut s, &self.disk_infos());
        crate::control::nets::net_metrics(&mut s, &self.net_infos());
        s
    }

    /// The network interfaces' figures, in `--net` order.
    fn net_infos(&self) -> Vec<crate::devices::net::NetInfo> {
        self.nets
            .iter()
            .map(crate::devices::net::net_info)
            .collect()
    }

    /// The disks' figures, in `--disk` order.
    fn disk_infos(&self) -> Vec<crate::devices::block::DiskInfo> {
        self.disks
            .iter()
            .map(crate::devices::block::disk_info)
            .collect()
    }
}

/// The in-VMM swap's figures: gauges of what is in the file now, counters of what it did.
fn vmm_swap_metrics(s: &mut String, st: &crate::memory::VmmSwapStatus) {
    let on = st.state == "swapped_out";
    let families: [(&str, &str, &str, f64); 7] = [
        (
            "memvisor_vmm_swap_swapped_out",
            "gauge",
            "1 while guest memory is swapped out to the in-VMM swap file.",
            on as u8 as f64,
        ),
        (
            "memvisor_vmm_swap_file_bytes",
            "gauge",
            "Guest memory only in the in-VMM swap file (not faulted back, not discarded).",
            st.bytes_in_file as f64,
        ),
        (
            "memvisor_vmm_swap_file_allocated_bytes",
            "gauge",
            "Disk space the in-VMM swap file takes.",
            st.file_allocated_bytes as f64,
        ),
        (
            "memvisor_vmm_swap_faults",
            "gauge",
            "Page faults served from the in-VMM swap file since the current swap-out.",
            st.faults as f64,
        ),
        (
            "memvisor_vmm_swap_out_seconds",
            "gauge",
            "Seconds the current swap-out took.",
            st.swap_out_seconds,
        ),
        (
            "memvisor_vmm_swap_outs_total",
            "counter",
            "Swap-outs to the in-VMM swap file.",
            st.swap_outs as f64,
        ),
        (
            "memvisor_vmm_swap_ins_total",
            "counter",
            "Swap-ins from the in-VMM swap file.",
            st.swap_ins as f64,
        ),
    ];
    for (name, kind, help, v) in families {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        let _ = writeln!(s, "{name} {v}");
    }
}

/// The balloon device's counters as one family, a series per counter (the field names of
/// [`balloon::BalloonCounters`]: the work done, and each kind of guest input the device refused,
/// named by its cause, e.g. `indirect_not_negotiated`, `looping_chains`).
fn balloon_counter_metrics(s: &mut String, counters: &balloon::BalloonCounters) {
    let name = "memvisor_balloon_device_events_total";
    let _ = writeln!(
        s,
        "# HELP {name} Balloon device counters: work done and guest input refused, by cause (see balloon::BalloonCounters)."
    );
    let _ = writeln!(s, "# TYPE {name} counter");
    let fields = serde_json::to_value(counters).expect("counters serialise");
    for (counter, v) in fields.as_object().into_iter().flatten() {
        let _ = writeln!(s, "{name}{{counter=\"{counter}\"}} {v}");
    }
}

const NO_SWAP_WORKER: &str =
    "this VMM runs no in-VMM swap thread (a VM started through the library without it); use GuestRam::swap_out";

/// 500 for what went wrong inside the VMM, 400 for everything the caller can fix.
fn swap_error(e: crate::memory::SwapError) -> ApiResponse {
    use crate::memory::SwapError;
    let status = match e {
        SwapError::Uffd(_) | SwapError::Memory(_) => 500,
        _ => 400,
    };
    ApiResponse::error(status, e.to_string())
}

const NO_BALLOON: &str =
    "this VM has no balloon device; start memvisor run with --balloon amount_mib=0,...";

const STATS_DISABLED: &str = "balloon statistics are disabled (stats_polling_interval_s is 0); \
     start memvisor run with --balloon ...,stats_polling_interval_s=N, or set it with PATCH \
     /balloon/statistics before the guest's driver starts";

/// 200 with `body` serialized.
fn json_answer(body: &impl serde::Serialize) -> ApiResponse {
    ApiResponse::ok_json(serde_json::to_value(body).expect("API answers serialize"))
}

/// `GET /balloon`: Firecracker's `Balloon`, every field.
fn balloon_config(b: &BalloonHandle) -> BalloonConfig {
    b.with_device(|d| {
        let m = &d.model;
        let o = m.options();
        let config = BalloonConfig {
            amount_mib: m.target_mib(),
            deflate_on_oom: o.deflate_on_oom,
            stats_polling_interval_s: m.stats_polling_interval(),
            free_page_hinting: false,
            free_page_reporting: o.free_page_reporting,
        };
        (config, false)
    })
}

/// `GET /balloon/statistics`: Firecracker's `BalloonStats`; `None` when statistics are disabled
/// (Firecracker answers 400 then). Before the guest's first statistics: the sizes only.
fn balloon_statistics(b: &BalloonHandle) -> Option<BalloonStatistics> {
    b.with_device(|d| {
        let m = &d.model;
        let s = (m.stats_polling_interval() != 0).then(|| BalloonStatistics {
            target_pages: m.target_pages(),
            actual_pages: m.actual_pages(),
            target_mib: m.target_mib(),
            actual_mib: m.actual_mib(),
            guest: m.latest_stats().unwrap_or_default(),
        });
        (s, false)
    })
}

/// `GET /balloon/device`: memvisor's extras.
fn balloon_device(b: &BalloonHandle) -> BalloonDeviceInfo {
    let transport = match b {
        BalloonHandle::Mmio(_) => Transport::VirtioMmio,
        BalloonHandle::Pci(_) => Transport::VirtioPci,
    };
    b.with_device(|d| {
        let m = &d.model;
        let unix_s = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let info = BalloonDeviceInfo {
            transport,
            activated: m.is_activated(),
            features_offered: balloon::features::feature_names(m.avail_features()),
            features_acked: balloon::features::feature_names(m.acked_features()),
            target_pages: m.target_pages(),
            actual_pages: m.actual_pages(),
            target_mib: m.target_mib(),
            actual_mib: m.actual_mib(),
            released_bytes: d.released_bytes(),
            stats_received_at_unix_s: m.stats_received_at().map(unix_s),
            actual_pages_at_stats: m.actual_pages_at_stats(),
            actual_mib_at_stats: m
                .actual_pages_at_stats()
                .map(|p| p / balloon::PAGES_PER_MIB),
            counters: m.counters(),
        };
        (info, false)
    })
}

impl ApiHandler for VmmApi {
    fn handle(&self, req: ApiRequest) -> ApiResponse {
        match req {
            ApiRequest::GetVm => {
                let vcpus: Vec<serde_json::Value> = self
                    .vcpus
                    .iter()
                    .map(|v| {
                        let exits: serde_json::Map<String, serde_json::Value> =
                            v.stats.exits().into_iter().map(|(r, n)| (r.name().to_string(), json!(n))).collect();
                        let assists: serde_json::Map<String, serde_json::Value> =
                            v.stats.assists().into_iter().map(|(k, n)| (k.name().to_string(), json!(n))).collect();
                        json!({"id": v.id, "state": state_name(v.state()), "exits": exits, "total_exits": v.stats.total(), "assists": assists, "step": v.stats.step()})
                    })
                    .collect();
                ApiResponse::ok_json(json!({
                    "state": self.vm_state(),
                    "uptime_s": self.started.elapsed().as_secs_f64(),
                    "config": self.config,
                    "vcpus": vcpus,
                    "devices": crate::control::disks::device_list(self.balloon.as_ref(), &self.disk_infos(), &self.net_infos()),
                }))
            }
            ApiRequest::PutVmState(VmState::Paused) => self.command(VmCommand::Pause),
            ApiRequest::PutVmState(VmState::Resumed) => self.command(VmCommand::Resume),
            ApiRequest::PutAction(ActionType::Shutdown | ActionType::SendCtrlAltDel) => self.command(VmCommand::Stop),
            ApiRequest::PutAction(ActionType::FinishBalloonStep) => self.finish_balloon_step(),
            ApiRequest::PutBalloon(_) => ApiResponse::bad_request(
                "the balloon is configured before boot: memvisor boots at once, so give --balloon amount_mib=..,deflate_on_oom=..,stats_polling_interval_s=.. to memvisor run; change the target with PATCH /balloon",
            ),
            ApiRequest::PatchBalloon { amount_mib } => {
                let Some(b) = &self.balloon else {
                    return ApiResponse::bad_request(NO_BALLOON);
                };
                if (amount_mib as u64) << 20 > self.ram.size() {
                    return ApiResponse::bad_request(format!(
                        "amount_mib {amount_mib} is larger than guest RAM ({} MiB)",
                        self.ram.size() >> 20
                    ));
                }
                match b.command(move |d| ((), d.model.set_target_mib(amount_mib))) {
                    Ok(()) => ApiResponse::NoContent,
                    Err(e) => ApiResponse::bad_request(e.to_string()),
                }
            }
            ApiRequest::GetBalloon => match &self.balloon {
                Some(b) => json_answer(&balloon_config(b)),
                None => ApiResponse::bad_request(NO_BALLOON),
            },
            ApiRequest::GetBalloonStats => match &self.balloon {
                Some(b) => match balloon_statistics(b) {
                    Some(s) => json_answer(&s),
                    None => ApiResponse::bad_request(STATS_DISABLED),
                },
                None => ApiResponse::bad_request(NO_BALLOON),
            },
            ApiRequest::GetBalloonDevice => match &self.balloon {
                Some(b) => json_answer(&balloon_device(b)),
                None => ApiResponse::bad_request(NO_BALLOON),
            },
            ApiRequest::PatchBalloonStats {
                stats_polling_interval_s,
            } => {
                let Some(b) = &self.balloon else {
                    return ApiResponse::bad_request(NO_BALLOON);
                };
                match b.command(move |d| (d.model.set_stats_polling_interval(stats_polling_interval_s), false)) {
                    Ok(Ok(())) => ApiResponse::NoContent,
                    Ok(Err(e)) => ApiResponse::bad_request(e.to_string()),
                    Err(e) => ApiResponse::bad_request(e.to_string()),
                }
            }
            ApiRequest::GetMemoryMappings { gpa, len } => {
                let range = match (gpa, len) {
                    (None, None) => None,
                    (Some(g), Some(l)) => Some((g, l)),
                    (Some(g), None) => Some((g, 4096)),
                    (None, Some(_)) => return ApiResponse::bad_request("len needs gpa"),
                };
                match self.walks.mappings(|| crate::report::mappings::map(&self.ram, range)) {
                    Ok(m) => ApiResponse::ok_json(serde_json::to_value(m).expect("serialises")),
                    Err(e) => ApiResponse::bad_request(e.to_string()),
                }
            }
            ApiRequest::GetMemoryReport => ApiResponse::ok_json(self.memory_report()),
            ApiRequest::PutMemoryReclaim { target_resident_mib } => {
                match self.reclaimer.reclaim_to(target_resident_mib.saturating_mul(1 << 20)) {
                    Ok(out) => json_answer(&out),
                    Err(e) => ApiResponse::bad_request(e.to_string()),
                }
            }
            ApiRequest::GetMemoryReclaim => json_answer(&self.reclaimer.status()),
            ApiRequest::GetWorkingSet => match self.reclaimer.tracker() {
                Some(t) => json_answer(&t.estimate()),
                None => ApiResponse::error(500, "this VMM was built without a working-set tracker"),
            },
            ApiRequest::PatchMemory { resident_limit_mib } => {
                let limit = (resident_limit_mib != 0).then(|| resident_limit_mib.saturating_mul(1 << 20));
                match self.reclaimer.set_limit(limit) {
                    Ok(()) => ApiResponse::NoContent,
                    Err(e) => ApiResponse::bad_request(e.to_string()),
                }
            }
            ApiRequest::PutSwapOut(body) => self.swap_out(body),
            ApiRequest::PutSwapIn => match &self.swap {
                None => ApiResponse::bad_request(NO_SWAP_WORKER),
                Some(w) => match w.swap_in() {
                    Ok(r) => json_answer(&r),
                    Err(e) => swap_error(e),
                },
            },
            ApiRequest::GetMetrics => ApiResponse::Text {
                status: 200,
                content_type: PROMETHEUS_CONTENT_TYPE.into(),
                body: self.metrics(),
            },
        }
    }
}
