//! The run report: configuration, memory regions and their residency, per-vCPU exit counts,
//! what the guest reported per operation, timings and the outcome; as text or JSON.

use crate::config::{Size, VmConfig};
use crate::memory::{GuestRam, PagerReport, PreallocReport};
use crate::vmm::vcpu::VcpuFailure;
use crate::vmm::vm::HostVirt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How the run ended.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Every vCPU finished its workload.
    Completed,
    /// A vCPU stopped on an error.
    Failed(VcpuFailure),
    /// The guest reported a non-zero status.
    GuestError {
        /// vCPU.
        vcpu: u32,
        /// Status.
        status: u64,
    },
    /// Stopped by Ctrl-C or a stop request.
    Interrupted,
    /// The page server of a userfaultfd region died (an external handler that hung up, or
    /// the internal handler thread stopped on an error); the guest was stopped since nobody
    /// could serve its missing pages any more.
    PagerDied {
        /// The uffd regions without a page server.
        regions: Vec<usize>,
    },
    /// A Linux guest rebooted or powered off.
    GuestStopped {
        /// vCPU that saw it.
        vcpu: u32,
        /// How.
        reason: String,
    },
    /// Stopped by `--timeout`.
    TimedOut {
        /// Seconds run.
        after_s: f64,
    },
}

impl Outcome {
    /// The process exit status this outcome maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Completed | Outcome::GuestStopped { .. } => 0,
            Outcome::Interrupted => 130,
            _ => 1,
        }
    }
}

/// One region in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RegionReport {
    /// Index.
    pub index: usize,
    /// Backend name.
    pub backend: String,
    /// Configured size.
    pub size: u64,
    /// Host page size.
    pub page_size: u64,
    /// Guest-physical ranges `(start, end)`.
    pub gpa: Vec<(u64, u64)>,
    /// Host bytes resident at the end of the run.
    pub resident: u64,
    /// Bytes on huge pages (hugetlbfs or hugetlb memfd).
    pub hugetlb_backed: u64,
    /// Marked `MADV_MERGEABLE` for KSM.
    pub mergeable: bool,
    /// What preallocation did.
    pub prealloc: Option<PreallocReport>,
    /// Page serving of a uffd region.
    pub uffd: Option<PagerReport>,
}

impl RegionReport {
    /// The current state of every region of `ram`.
    pub fn read(ram: &GuestRam) -> Vec<RegionReport> {
        ram.regions()
            .iter()
            .zip(ram.resident_bytes())
            .map(|(r, res)| RegionReport {
                index: r.index,
                backend: r.config.backend.name().into(),
                size: r.config.size,
                page_size: r.page_size,
                gpa: r.extents.iter().map(|e| (e.gpa, e.end())).collect(),
                resident: res,
                hugetlb_backed: if r.page_size > 4096 { r.config.size } else { 0 },
                mergeable: r.config.mergeable,
                prealloc: r.prealloc.clone(),
                uffd: r.pager.as_ref().map(|p| p.report()),
            })
            .collect()
    }
}

/// One operation as one vCPU ran it.
#[derive(Clone, Debug, Serialize)]
pub struct OpRecord {
    /// Index in the workload.
    pub index: usize,
    /// Operation name.
    pub name: String,
    /// What the guest reported (meaning per operation, see `abi.rs`).
    pub results: [u64; 3],
    /// Seconds from guest start to the operation's begin.
    pub start_s: f64,
    /// Seconds it took (host clock, between the begin and end hypercalls).
    pub seconds: f64,
}

/// One vCPU in the report.
#[derive(Clone, Debug, Serialize)]
pub struct VcpuReport {
    /// Index.
    pub id: u32,
    /// Host CPU it was pinned to.
    pub pinned: Option<usize>,
    /// Exits by reason.
    pub exits: BTreeMap<String, u64>,
    /// All exits.
    pub total_exits: u64,
    /// Exits that were hypercalls.
    pub hypercall_exits: u64,
    /// Port/MMIO accesses no device claimed.
    pub unclaimed_io: u64,
    /// Emulation assists (hosts without VMX/SVM) by kind: `int3`, `fwait`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub assists: BTreeMap<String, u64>,
    /// Hypercalls the guest says it made (when it finished).
    pub guest_hypercalls: Option<u64>,
    /// Guest's final status.
    pub guest_status: Option<u64>,
    /// Operations.
    pub ops: Vec<OpRecord>,
    /// The built-in guest's balloon driver's last progress report (data owned, pages in the
    /// balloon, mismatches, bytes verified), when it made any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon_driver: Option<crate::vmm::vcpu::GuestProgress>,
}

impl VcpuReport {
    /// An empty record.
    pub fn new(id: u32, pinned: Option<usize>) -> Self {
        VcpuReport {
            id,
            pinned,
            exits: BTreeMap::new(),
            total_exits: 0,
            hypercall_exits: 0,
            unclaimed_io: 0,
            assists: BTreeMap::new(),
            guest_hypercalls: None,
            guest_status: None,
            ops: Vec::new(),
            balloon_driver: None,
        }
    }
}

/// An operation summed over all vCPUs.
#[derive(Clone, Debug, Serialize)]
pub struct OpSummary {
    /// Index.
    pub index: usize,
    /// Name.
    pub name: String,
    /// vCPUs that completed it.
    pub vcpus: usize,
    /// Sum of result 0 (touches, bytes, reads, accesses).
    pub amount: u64,
    /// Sum of result 1 where it is a count (verify: mismatched words).
    pub mismatches: u64,
    /// Checksum: words that were zero.
    pub zero_words: u64,
    /// Wall time from the first begin to the last end.
    pub seconds: f64,
}

/// Everything `memvisor run` reports.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The configuration run.
    pub config: VmConfig,
    /// Host virtualisation facts.
    pub host: HostVirt,
    /// Regions.
    pub regions: Vec<RegionReport>,
    /// vCPUs.
    pub vcpus: Vec<VcpuReport>,
    /// Operations summed over vCPUs.
    pub ops: Vec<OpSummary>,
    /// Seconds from start to the first guest instruction being possible.
    pub setup_seconds: f64,
    /// Seconds the guest ran.
    pub run_seconds: f64,
    /// Lines the guest logged.
    pub guest_log: Vec<String>,
    /// Where a Linux guest's kernel, initrd and command line went.
    pub linux: Option<crate::linux::LinuxLayout>,
    /// How it ended.
    pub outcome: Outcome,
    /// Overcommit figures at the end of the run.
    pub memory: Option<crate::report::overcommit::VmMemory>,
}

impl RunReport {
    /// A report before the run. Regions are read by [`RunReport::finish`], not here: reading
    /// residency (a `mincore` vector per region) while the vCPUs fault in memory would add the
    /// VMM's own page faults to what the run measures.
    pub fn new(config: &VmConfig, host: HostVirt) -> Self {
        RunReport {
            config: config.clone(),
            host,
            regions: Vec::new(),
            vcpus: Vec::new(),
            ops: Vec::new(),
            setup_seconds: 0.0,
            run_seconds: 0.0,
            guest_log: Vec::new(),
            linux: None,
            outcome: Outcome::Completed,
            memory: None,
        }
    }

    /// Completes the report at the end of the run.
    pub fn finish(&mut self, outcome: Outcome, ram: &GuestRam) {
        self.outcome = outcome;
        self.regions = RegionReport::read(ram);
        let mut ops: BTreeMap<usize, (OpSummary, f64, f64)> = BTreeMap::new();
        for v in &self.vcpus {
            for o in &v.ops {
                let e = ops.entry(o.index).or_insert_with(|| {
                    (
                        OpSummary {
                            index: o.index,
                            name: o.name.clone(),
                            vcpus: 0,
                            amount: 0,
                            mismatches: 0,
                            zero_words: 0,
                            seconds: 0.0,
                        },
                        f64::MAX,
                        0.0,
                    )
                });
                e.0.vcpus += 1;
                e.0.amount += o.results[0];
                if matches!(o.name.as_str(), "verify" | "balloon" | "grow") {
                    e.0.mismatches += o.results[1];
                }
                if o.name == "checksum" {
                    e.0.zero_words += o.results[2];
                }
                e.1 = e.1.min(o.start_s);
                e.2 = e.2.max(o.start_s + o.seconds);
            }
        }
        self.ops = ops
            .into_values()
            .map(|(mut s, a, b)| {
                s.seconds = b - a;
                s
            })
            .collect();
    }

    /// Sum of an exit reason over all vCPUs.
    pub fn exits(&self, reason: &str) -> u64 {
        self.vcpus
            .iter()
            .map(|v| v.exits.get(reason).copied().unwrap_or(0))
            .sum()
    }

    /// The readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(s, "memvisor run report");
        let guest = match &c.linux {
            Some(l) => format!("Linux {}", l.kernel.display()),
            None => "built-in".to_string(),
        };
        let _ = writeln!(
            s,
            "  guest: {guest}, {} vCPU(s), {} RAM; host MMU: {}{}",
            c.vcpus,
            Size(c.ram_bytes()),
            self.host.mmu,
            if self.host.hardware {
                ""
            } else {
                " (no VMX/SVM: guest ring-0 code is emulated)"
            }
        );
        if let Some(l) = &self.linux {
            let _ = writeln!(s, "  cmdline: {}", l.cmdline);
            let _ = writeln!(
                s,
                "  kernel at {:#x}-{:#x}, entry {:#x}{}",
                l.kernel.0,
                l.kernel.1,
                l.entry,
                l.initrd
                    .map(|(g, n)| format!(", initrd at {g:#x} ({})", Size(n)))
                    .unwrap_or_default()
            );
        } else {
            let steps: Vec<&str> = c.workload.steps.iter().map(|s| s.name()).collect();
            let _ = writeln!(s, "  workload: {}", steps.join(", "));
        }
        let _ = writeln!(s, "memory");
        for r in &self.regions {
            let gpa: Vec<String> = r
                .gpa
                .iter()
                .map(|(a, b)| format!("{a:#x}-{b:#x}"))
                .collect();
            let _ = writeln!(
                s,
                "  region {}: {} {} (page {}), GPA {}, resident {}",
                r.index,
                Size(r.size),
                r.backend,
                Size(r.page_size),
                gpa.join(" "),
                Size(r.resident)
            );
            if let Some(p) = &r.prealloc {
                let _ = writeln!(
                    s,
                    "    prealloc: {} in {:.3} s, {:.2} GiB/s on {} thread(s) ({})",
                    Size(p.bytes),
                    p.seconds,
                    p.gib_per_s(),
                    p.threads,
                    p.method
                );
            }
            match &r.uffd {
                Some(PagerReport::Internal(u)) => {
                    let _ = writeln!(
                        s,
                        "    uffd: {} faults, {} served ({} zero pages, {} copied), {} removes ({}), latency mean {:.1} µs p99 {} µs max {:.1} µs",
                        u.faults,
                        Size(u.bytes_served),
                        u.zero_pages,
                        u.copied_pages,
                        u.remove_events,
                        Size(u.removed_bytes),
                        u.latency.mean_us(),
                        u.latency.percentile_us(99.0),
                        u.latency.max_ns as f64 / 1e3
                    );
                }
                Some(PagerReport::External {
                    alive,
                    socket,
                    offset,
                    regions,
                }) => {
                    let _ = writeln!(
                        s,
                        "    uffd: external handler at {} (offset {} in its memory file; one connection for region(s) {regions:?}), {}",
                        socket.display(),
                        Size(*offset),
                        if *alive { "connected" } else { "GONE" }
                    );
                }
                None => {}
            }
            if r.mergeable {
                let _ = writeln!(s, "    mergeable: marked MADV_MERGEABLE for KSM");
            }
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(s, "overcommit");
            s.push_str(&m.to_text());
        }
        let _ = writeln!(s, "vCPUs");
        for v in &self.vcpus {
            let exits: Vec<String> = v.exits.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let pin = v
                .pinned
                .map(|p| format!(", pinned to CPU {p}"))
                .unwrap_or_default();
            let exits = if exits.is_empty() {
                "none".into()
            } else {
                exits.join(" ")
            };
            if self.linux.is_some() {
                let assists: Vec<String> =
                    v.assists.iter().map(|(k, n)| format!("{k}={n}")).collect();
                let assists = if assists.is_empty() {
                    String::new()
                } else {
                    format!("; emulation assists {}", assists.join(" "))
                };
                let _ = writeln!(
                    s,
                    "  vcpu{}{}: {} exits ({}); {} unclaimed port/MMIO accesses{}",
                    v.id, pin, v.total_exits, exits, v.unclaimed_io, assists
                );
                continue;
            }
            let _ = writeln!(
                s,
                "  vcpu{}{}: {} exits ({}); hypercalls {} seen, {} made by guest",
                v.id,
                pin,
                v.total_exits,
                exits,
                v.hypercall_exits,
                v.guest_hypercalls
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into())
            );
        }
        if self.linux.is_none() {
            let _ = writeln!(s, "workload results");
        }
        for o in &self.ops {
            let (stride, passes) = match c.workload.steps.get(o.index) {
                Some(crate::config::workload::Step::Touch { stride, passes, .. }) => {
                    (*stride, (*passes).max(1))
                }
                _ => (4096, 1),
            };
            let _ = writeln!(s, "  {}", describe_op(o, stride, passes));
        }
        let _ = writeln!(
            s,
            "timings: setup {:.1} ms, guest run {:.3} s",
            self.setup_seconds * 1e3,
            self.run_seconds
        );
        for l in &self.guest_log {
            let _ = writeln!(s, "guest: {l}");
        }
        let _ = match &self.outcome {
            Outcome::Completed => writeln!(s, "outcome: completed"),
            Outcome::Failed(f) => writeln!(s, "outcome: FAILED: {f}"),
            Outcome::GuestError { vcpu, status } => writeln!(
                s,
                "outcome: FAILED: guest vCPU {vcpu} reported status {status}"
            ),
            Outcome::Interrupted => writeln!(s, "outcome: interrupted (stopped on request)"),
            Outcome::GuestStopped { vcpu, reason } => {
                writeln!(s, "outcome: guest stopped: {reason} (vCPU {vcpu})")
            }
            Outcome::TimedOut { after_s } => {
                writeln!(s, "outcome: FAILED: timed out after {after_s:.1} s")
            }
            Outcome::PagerDied { regions } => writeln!(
                s,
                "outcome: FAILED: the userfaultfd page server of region(s) {regions:?} died (external handler gone or handler error); the guest was stopped"
            ),
        };
        s
    }
}

fn describe_op(o: &OpSummary, stride: u64, passes: u64) -> String {
    let rate = |bytes: f64| {
        if o.seconds > 0.0 {
            format!(", {:.2} GiB/s", bytes / o.seconds / (1u64 << 30) as f64)
        } else {
            String::new()
        }
    };
    match o.name.as_str() {
        "touch" => format!(
            "#{} touch: {} touches, one per {} ({} covered, {} pass(es)) in {:.3} s on {} vCPU(s)",
            o.index,
            o.amount,
            Size(stride),
            Size(o.amount / passes * stride),
            passes,
            o.seconds,
            o.vcpus
        ),
        "sync" => format!("#{} sync point", o.index),
        "hold" => format!(
            "#{} hold: {} round(s) in {:.3} s on {} vCPU(s)",
            o.index, o.amount, o.seconds, o.vcpus
        ),
        "balloon" | "grow" => format!(
            "#{} {}: guest owns {} of data, {} mismatched words, in {:.3} s",
            o.index,
            o.name,
            Size(o.amount),
            o.mismatches,
            o.seconds
        ),
        "checksum" => format!(
            "#{} checksum: {} ({} zero words) in {:.3} s{}",
            o.index,
            Size(o.amount),
            o.zero_words,
            o.seconds,
            rate(o.amount as f64)
        ),
        "fill" | "same" => format!(
            "#{} {}: {} in {:.3} s{}",
            o.index,
            o.name,
            Size(o.amount),
            o.seconds,
            rate(o.amount as f64)
        ),
        "verify" => format!(
            "#{} verify: {} checked, {} mismatched words in {:.3} s{}",
            o.index,
            Size(o.amount),
            o.mismatches,
            o.seconds,
            rate(o.amount as f64)
        ),
        _ => format!(
            "#{} {}: {} accesses in {:.3} s ({:.1} ns per access per vCPU)",
            o.index,
            o.name,
            o.amount,
            o.seconds,
            if o.amount > 0 {
                o.seconds * 1e9 * o.vcpus as f64 / o.amount as f64
            } else {
                0.0
            }
        ),
    }
}
