//! `memvisor bench hugepages`: the same built-in-guest workload on each host backing of guest
//! RAM — anonymous memory with THP off (true 4 KiB pages), anonymous memory with THP, hugetlbfs
//! with 2 MiB pages and hugetlbfs with 1 GiB pages — each with and without prealloc.
//!
//! One guest per configuration and repetition runs, on every vCPU's share of the working set:
//! `sync` (start gate) `; touch` (first touch of every 4 KiB page: the fault phase) `; sync ;
//! read` (sequential passes) `; sync ; random` (random read-writes) `; sync`. At each sync
//! point all vCPUs stop together and [`PhaseRecorder`] snapshots the process's page-fault
//! counters (`getrusage`) and KVM's own counters ([`crate::vmm::kvm_stats`]), so faults and exits are
//! known per phase. Phase times are the guest's begin/end hypercalls of each step (host clock).
//! Configurations are interleaved: repetition 1 of every configuration, then repetition 2, ...
//!
//! The huge pages the hugetlbfs configurations need are reserved on a temporary mount
//! ([`HugetlbfsScratch`]) and the pools are put back at the end; a configuration that cannot run
//! (no root, a 1G pool that cannot be reserved, a size that does not fit) is kept as a row that
//! says why.
//!
//! Parts: this module has the options, the configurations and the run over all of them;
//! [`guest_run`] runs one guest and measures it ([`PhaseRecorder`], [`RunSample`]); [`row`] sums
//! the repetitions of a configuration up ([`HugepagesRow`]) and makes the table.

mod guest_run;
mod row;

pub use guest_run::{PhaseRecorder, RunSample};
pub use row::HugepagesRow;

use super::chart::{BarChart, Panel};
use super::host::{self, HugetlbfsScratch};
use super::{BenchError, BenchReport, Machine};
use crate::config::workload::{Step, Workload};
use crate::config::Size;
use crate::vmm::vm::HostVirt;
use guest_run::run_once;
use hugepages::{HugePageSize, PoolLock, PoolStatus};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How guest RAM is backed on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Backing {
    /// Private anonymous memory with `MADV_NOHUGEPAGE` (`thp=off`): 4 KiB pages.
    #[serde(rename = "4k")]
    Anon4K,
    /// Private anonymous memory with `MADV_HUGEPAGE` (`thp=on`): 2 MiB transparent huge pages
    /// where the kernel finds them.
    #[serde(rename = "thp")]
    Thp,
    /// A file on hugetlbfs with 2 MiB pages.
    #[serde(rename = "2m")]
    Hugetlbfs2M,
    /// A file on hugetlbfs with 1 GiB pages.
    #[serde(rename = "1g")]
    Hugetlbfs1G,
}

impl Backing {
    /// Every backing, in table order.
    pub const ALL: [Backing; 4] = [
        Backing::Anon4K,
        Backing::Thp,
        Backing::Hugetlbfs2M,
        Backing::Hugetlbfs1G,
    ];

    /// Name in tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Backing::Anon4K => "4K (THP off)",
            Backing::Thp => "THP",
            Backing::Hugetlbfs2M => "hugetlbfs 2M",
            Backing::Hugetlbfs1G => "hugetlbfs 1G",
        }
    }

    /// Name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            Backing::Anon4K => "4k",
            Backing::Thp => "thp",
            Backing::Hugetlbfs2M => "2m",
            Backing::Hugetlbfs1G => "1g",
        }
    }

    /// The hugetlb page size, for hugetlbfs backings.
    pub fn huge_size(self) -> Option<HugePageSize> {
        match self {
            Backing::Hugetlbfs2M => Some(HugePageSize::Size2M),
            Backing::Hugetlbfs1G => Some(HugePageSize::Size1G),
            _ => None,
        }
    }

    /// The host page size this backing aims for.
    pub fn page_bytes(self) -> u64 {
        match self {
            Backing::Anon4K => 4096,
            Backing::Thp | Backing::Hugetlbfs2M => 2 << 20,
            Backing::Hugetlbfs1G => 1 << 30,
        }
    }

    /// The `--memory` spec of a guest RAM region of `size` bytes on this backing (`mount`: the
    /// hugetlbfs directory for hugetlbfs backings).
    pub fn region_spec(self, size: u64, prealloc: bool, mount: Option<&Path>) -> String {
        let backend = match (self, mount) {
            (Backing::Anon4K, _) => "thp=off".to_string(),
            (Backing::Thp, _) => "thp=on".to_string(),
            (_, Some(dir)) => format!("backend=hugetlbfs,mem-path={}", dir.display()),
            (_, None) => "backend=hugetlbfs,mem-path=DIR".to_string(),
        };
        let pre = if prealloc { ",prealloc=on" } else { "" };
        format!("size={size},{backend}{pre}")
    }
}

impl FromStr for Backing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "4k" | "anon" | "anon-4k" => Ok(Backing::Anon4K),
            "thp" => Ok(Backing::Thp),
            "2m" | "hugetlbfs-2m" => Ok(Backing::Hugetlbfs2M),
            "1g" | "hugetlbfs-1g" => Ok(Backing::Hugetlbfs1G),
            _ => Err(format!("`{s}`: write 4k, thp, 2m or 1g")),
        }
    }
}

/// Options of `memvisor bench hugepages`.
#[derive(Clone, Debug)]
pub struct HugepagesOptions {
    /// Guest RAM (one region; a multiple of 2 MiB, of 1 GiB for the 1G backing).
    pub memory: u64,
    /// Working set over all vCPUs (each vCPU works on its own equal part).
    pub working_set: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Repetitions of every configuration.
    pub reps: usize,
    /// Untimed rounds over every configuration first (memory the host has not used yet is
    /// slower to fault the first time, most of all on a nested host).
    pub warmup: usize,
    /// Backings to compare.
    pub backings: Vec<Backing>,
    /// Prealloc settings to run each backing with (`false`, `true` or both).
    pub prealloc: Vec<bool>,
    /// Sequential passes over the working set.
    pub seq_passes: u64,
    /// Bytes between two sequential reads.
    pub seq_stride: u64,
    /// Random accesses over all vCPUs.
    pub random_accesses: u64,
    /// Write the chart (SVG) here.
    pub chart: Option<PathBuf>,
    /// Set (e.g. by a Ctrl-C handler) to stop early: the running guest stops, the pools are
    /// restored and the report has the runs completed so far.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl Default for HugepagesOptions {
    fn default() -> Self {
        HugepagesOptions {
            memory: 1 << 30,
            working_set: 512 << 20,
            vcpus: 1,
            reps: 3,
            warmup: 1,
            backings: Backing::ALL.to_vec(),
            prealloc: vec![false, true],
            seq_passes: 16,
            seq_stride: 4096,
            random_accesses: 8_000_000,
            chart: None,
            interrupt: None,
        }
    }
}

/// `1G`, `512M` or a byte count, as on the command line.
fn size_arg(bytes: u64) -> String {
    super::prealloc::size_arg(bytes)
}

impl HugepagesOptions {
    /// The command line these options correspond to.
    pub fn command(&self) -> String {
        let d = HugepagesOptions::default();
        let mut c = format!(
            "memvisor bench hugepages --memory {} --working-set {} --vcpus {} --reps {}",
            size_arg(self.memory),
            size_arg(self.working_set),
            self.vcpus,
            self.reps
        );
        if self.warmup != d.warmup {
            c.push_str(&format!(" --warmup {}", self.warmup));
        }
        if self.backings != d.backings {
            let b: Vec<&str> = self.backings.iter().map(|b| b.arg()).collect();
            c.push_str(&format!(" --backings {}", b.join(",")));
        }
        if self.prealloc != d.prealloc {
            let p: Vec<&str> = self
                .prealloc
                .iter()
                .map(|p| if *p { "on" } else { "off" })
                .collect();
            c.push_str(&format!(" --prealloc {}", p.join(",")));
        }
        if self.seq_passes != d.seq_passes {
            c.push_str(&format!(" --seq-passes {}", self.seq_passes));
        }
        if self.seq_stride != d.seq_stride {
            c.push_str(&format!(" --seq-stride {}", size_arg(self.seq_stride)));
        }
        if self.random_accesses != d.random_accesses {
            c.push_str(&format!(" --random-accesses {}", self.random_accesses));
        }
        if let Some(p) = &self.chart {
            c.push_str(&format!(" --chart {}", p.display()));
        }
        c
    }

    /// Working-set bytes per vCPU.
    pub fn ws_per_vcpu(&self) -> u64 {
        (self.working_set / u64::from(self.vcpus.max(1))) & !0xfff
    }

    fn check(&self) -> Result<(), BenchError> {
        let bad = |option, reason: String| Err(BenchError::Option { option, reason });
        if self.memory < crate::abi::MIN_RAM_BYTES || self.memory % (2 << 20) != 0 {
            return bad(
                "--memory",
                format!(
                    "{} is not a multiple of 2 MiB of at least {}; e.g. 1G",
                    Size(self.memory),
                    Size(crate::abi::MIN_RAM_BYTES)
                ),
            );
        }
        if self.vcpus == 0 || self.vcpus as usize > crate::abi::MAX_VCPUS {
            return bad(
                "--vcpus",
                format!("between 1 and {}", crate::abi::MAX_VCPUS),
            );
        }
        let work_area = self.memory - crate::abi::WORK_AREA_GPA;
        if self.ws_per_vcpu() == 0 || self.working_set > work_area {
            return bad(
                "--working-set",
                format!(
                    "{} must be at least 4 KiB per vCPU and at most the guest's work area \
                     ({}: --memory minus the guest's own {})",
                    Size(self.working_set),
                    Size(work_area),
                    Size(crate::abi::WORK_AREA_GPA)
                ),
            );
        }
        if self.reps == 0 {
            return bad("--reps", "must be at least 1".into());
        }
        if self.backings.is_empty() {
            return bad("--backings", "give at least one of 4k, thp, 2m, 1g".into());
        }
        if self.prealloc.is_empty() {
            return bad("--prealloc", "give off, on or off,on".into());
        }
        if self.seq_stride < 8 || self.seq_stride % 8 != 0 {
            return bad("--seq-stride", "a multiple of 8 bytes, e.g. 4K".into());
        }
        if self.seq_passes == 0 || self.random_accesses < u64::from(self.vcpus) {
            return bad(
                "--seq-passes/--random-accesses",
                "at least one pass and one random access per vCPU".into(),
            );
        }
        Ok(())
    }

    /// The guest's workload: gate, fault phase, sequential, random, with sync points between.
    pub fn workload(&self) -> Workload {
        let ws = self.ws_per_vcpu();
        Workload {
            steps: vec![
                Step::Sync { tag: 0 },
                Step::Touch {
                    stride: 4096,
                    passes: 1,
                    work_only: true,
                    working_set: ws,
                },
                Step::Sync { tag: 1 },
                Step::Read {
                    stride: self.seq_stride,
                    passes: self.seq_passes,
                    working_set: ws,
                },
                Step::Sync { tag: 2 },
                Step::Random {
                    working_set: ws,
                    accesses: self.random_accesses / u64::from(self.vcpus),
                    seed: 12345,
                },
                Step::Sync { tag: 3 },
            ],
        }
    }
}

/// Workload step indices (see [`HugepagesOptions::workload`]).
const STEP_TOUCH: usize = 1;
const STEP_READ: usize = 3;
const STEP_RANDOM: usize = 5;
/// Sync tags: start gate, after touch, after read, after random.
const PHASES: usize = 4;

/// One configuration: a backing with or without prealloc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugepagesConfig {
    /// The backing.
    pub backing: Backing,
    /// `prealloc=on`.
    pub prealloc: bool,
}

impl HugepagesConfig {
    /// `hugetlbfs 2M +prealloc`.
    pub fn label(&self) -> String {
        format!(
            "{}{}",
            self.backing.label(),
            if self.prealloc { " +prealloc" } else { "" }
        )
    }
}

/// Whether a pool of `size` can give `pages` pages: `Ok(pages to add)` or why not. Pure, so the
/// "cannot be reserved" case can be tested with any pool state.
///
/// `mem_available` is `MemAvailable` from `/proc/meminfo`: pages beyond what the pool has free
/// must come out of it, and asking the kernel for more than that would squeeze the host.
pub fn plan_pool(
    size: HugePageSize,
    memory: u64,
    pool: Option<&PoolStatus>,
    mem_available: u64,
) -> Result<u64, String> {
    let page = size.bytes();
    if memory % page != 0 {
        return Err(format!(
            "{size} pages need a guest memory size that is a multiple of {}; --memory is {}",
            Size(page),
            Size(memory)
        ));
    }
    let Some(pool) = pool else {
        return Err(format!(
            "this kernel has no {size} huge page pool ({} is missing)",
            size.sysfs_dir().display()
        ));
    };
    let pages = memory / page;
    let add = pages.saturating_sub(pool.available());
    // Keep a quarter of the available memory (at least 512 MiB) for the host.
    let spare = mem_available.saturating_sub((mem_available / 4).max(512 << 20));
    if add * page > spare {
        return Err(format!(
            "needs {pages} {size} page(s) ({}); the pool has {} available and growing it by {add} \
             would take {} of the host's {} MemAvailable (more than it can spare)",
            Size(memory),
            pool.available(),
            Size(add * page),
            Size(mem_available)
        ));
    }
    Ok(add)
}

/// What holds the huge pages of one page size for the whole benchmark.
struct HugeSetup {
    scratch: Option<HugetlbfsScratch>,
    /// Why the configurations of this size cannot run.
    reason: Option<String>,
}

fn setup_huge(
    size: HugePageSize,
    opts: &HugepagesOptions,
    lock: &Result<Arc<PoolLock>, String>,
) -> HugeSetup {
    let fail = |reason: String| HugeSetup {
        scratch: None,
        reason: Some(reason),
    };
    let pool = hugepages::pool_status(size).ok();
    if let Err(why) = plan_pool(
        size,
        opts.memory,
        pool.as_ref(),
        crate::report::overcommit::HostMemory::read()
            .map(|m| m.mem_available)
            .unwrap_or(0),
    ) {
        return fail(why);
    }
    if !host::is_root() {
        return fail(format!(
            "growing the {size} pool and mounting hugetlbfs need root; run as root (sudo), \
             or give --backings without 2m/1g"
        ));
    }
    let lock = match lock {
        Ok(l) => l.clone(),
        Err(e) => return fail(format!("could not take the huge page pool lock: {e}")),
    };
    match HugetlbfsScratch::with_lock(size, opts.memory, lock) {
        Ok(s) => HugeSetup {
            scratch: Some(s),
            reason: None,
        },
        Err(e) => fail(e.to_string()),
    }
}

/// Runs the benchmark; `progress` gets one line per run.
pub fn run(
    opts: &HugepagesOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport<HugepagesRow>, BenchError> {
    opts.check()?;
    let load_before = super::machine::load_average();
    let host_virt = HostVirt::detect();
    let mmu = host_virt.mmu.clone();
    let mut notes = Vec::new();
    let configs: Vec<HugepagesConfig> = opts
        .backings
        .iter()
        .flat_map(|&backing| {
            opts.prealloc
                .iter()
                .map(move |&prealloc| HugepagesConfig { backing, prealloc })
        })
        .collect();
    let mut sizes: Vec<HugePageSize> = Vec::new();
    for s in configs.iter().filter_map(|c| c.backing.huge_size()) {
        if !sizes.contains(&s) {
            sizes.push(s);
        }
    }
    // One pool lock for every page size, held until the pools are back (other memvisor tests
    // and benchmarks that change pools wait meanwhile).
    let lock = if sizes.is_empty() || !host::is_root() {
        Err("not needed".to_string())
    } else {
        progress("taking the huge page pool lock (waits while other memvisor runs hold it)");
        hugepages::lock_pools()
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    // Pools before anything changes, to check they are restored.
    let pools_before: Vec<(HugePageSize, Option<u64>)> = sizes
        .iter()
        .map(|s| (*s, hugepages::pool_status(*s).ok().map(|p| p.total)))
        .collect();
    // Gigantic pages first: 2M pages taken from the buddy allocator first could break up the
    // free 1 GiB ranges a 1G page needs.
    let mut by_size = sizes.clone();
    by_size.sort_by_key(|s| std::cmp::Reverse(s.bytes()));
    let mut huge: Vec<(HugePageSize, HugeSetup)> = Vec::new();
    for &size in &by_size {
        progress(&format!(
            "reserving {size} huge pages for {}",
            Size(opts.memory)
        ));
        huge.push((size, setup_huge(size, opts, &lock)));
    }
    let pools_during: Vec<Option<u64>> = sizes
        .iter()
        .map(|s| hugepages::pool_status(*s).ok().map(|p| p.total))
        .collect();
    let setup_of = |c: &HugepagesConfig| {
        c.backing
            .huge_size()
            .and_then(|s| huge.iter().find(|(z, _)| *z == s).map(|(_, h)| h))
    };
    let mut samples: Vec<Vec<RunSample>> = vec![Vec::new(); configs.len()];
    let mut stopped: Vec<Option<String>> = configs
        .iter()
        .map(|c| setup_of(c).and_then(|h| h.reason.clone()))
        .collect();
    let interrupted = || {
        opts.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    };
    let round_name = |round: usize| {
        if round < opts.warmup {
            format!("warm-up {}/{}", round + 1, opts.warmup)
        } else {
            format!("rep {}/{}", round - opts.warmup + 1, opts.reps)
        }
    };
    'rounds: for round in 0..opts.warmup + opts.reps {
        for (i, c) in configs.iter().enumerate() {
            if interrupted() {
                notes.push(format!(
                    "interrupted during {}: the figures are from the runs completed before",
                    round_name(round)
                ));
                break 'rounds;
            }
            if stopped[i].is_some() {
                continue;
            }
            let mount = setup_of(c)
                .and_then(|h| h.scratch.as_ref())
                .map(|s| s.path().to_path_buf());
            match run_once(*c, opts, mount.as_deref()) {
                Ok(s) => {
                    progress(&format!(
                        "{}: {}: start {:.3} s, first touch {:.3} s, seq {:.1} ns, \
                         random {:.1} ns",
                        round_name(round),
                        c.label(),
                        s.start_s,
                        s.first_touch_s,
                        s.seq_ns,
                        s.random_ns
                    ));
                    if round >= opts.warmup {
                        samples[i].push(s);
                    }
                }
                Err(_) if interrupted() => {}
                Err(e) => {
                    progress(&format!("{}: {}: {e}", round_name(round), c.label()));
                    stopped[i] = Some(format!("{} failed: {e}", round_name(round)));
                }
            }
        }
    }
    drop(huge);
    let pools_after: Vec<Option<u64>> = sizes
        .iter()
        .map(|s| hugepages::pool_status(*s).ok().map(|p| p.total))
        .collect();
    drop(lock);
    for (((size, before), during), after) in pools_before.iter().zip(&pools_during).zip(pools_after)
    {
        let show = |v: &Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        notes.push(format!(
            "{size} pool: {} pages before, {} during the run, {} after{}",
            show(before),
            show(during),
            show(&after),
            if after == *before {
                " (restored)"
            } else {
                " (NOT restored: another process may have changed it meanwhile)"
            }
        ));
    }
    let mut rows = Vec::new();
    for ((c, s), why) in configs.iter().zip(samples).zip(stopped) {
        let row = match why {
            Some(why) if s.is_empty() => HugepagesRow::not_run(*c, &mmu, why),
            None if s.is_empty() => {
                HugepagesRow::not_run(*c, &mmu, "interrupted before it ran".into())
            }
            why => {
                let mut r = HugepagesRow::new(*c, &mmu, s);
                r.not_run = why;
                r
            }
        };
        if let Some(why) = &row.not_run {
            notes.push(format!("{}: not run: {why}", row.config));
        }
        rows.push(row);
    }
    if matches!(hugepages::thp_mode(), Ok(hugepages::ThpMode::Never)) {
        notes.push("host THP mode is `never`: the THP rows ran on 4K pages (see MMU maps)".into());
    }
    if opts.ws_per_vcpu() < 64 << 20 {
        notes.push(format!(
            "the working set per vCPU ({}) is small: a few MiB are within the reach of the \
             4K TLB and caches hold much of it, so the random pattern is less TLB-hostile",
            Size(opts.ws_per_vcpu())
        ));
    }
    let method = method(opts, &mmu);
    let machine = Machine::describe();
    notes.extend(super::machine::load_note(
        load_before,
        super::machine::load_average(),
        machine.cpus,
    ));
    let report = BenchReport {
        benchmark: "hugepages".into(),
        command: opts.command(),
        machine,
        method,
        rows,
        targets: vec![],
        notes,
    };
    if let Some(path) = &opts.chart {
        chart(&report).write_svg(path)?;
    }
    Ok(report)
}

/// The chart of a report: per configuration, seconds until the working set is usable (prealloc
/// and first touch stacked) and ns per access (sequential and random, with min-max whiskers).
pub fn chart(report: &BenchReport<HugepagesRow>) -> BarChart {
    let mmu = report.rows.first().map_or("?", |r| r.mmu.as_str());
    let mut subtitle = report.machine.lines();
    subtitle.truncate(1);
    subtitle.push(format!(
        "host MMU: {mmu}{}",
        if mmu == "shadow paging" {
            " - these figures compare host backings under KVM's shadow MMU, not EPT/NPT"
        } else {
            ""
        }
    ));
    subtitle.push(format!("{}  (medians of the repetitions)", report.command));
    if let Some(load) = report
        .notes
        .iter()
        .find(|n| n.starts_with("1-minute load average"))
    {
        subtitle.push(load.split(';').next().unwrap_or(load).to_string());
    }
    BarChart {
        title: "memvisor bench hugepages: the same guest workload per backing of guest RAM".into(),
        subtitle,
        rows: report.rows.iter().map(|r| r.config.clone()).collect(),
        row_notes: report
            .rows
            .iter()
            .map(|r| r.not_run.as_ref().map(|w| format!("not run: {w}")))
            .collect(),
        panels: vec![
            Panel {
                title: "time until the working set is usable".into(),
                x_label: "seconds (median)".into(),
                series: vec![
                    "VMM start (mapping, prealloc, boot)".into(),
                    "first touch (fault phase)".into(),
                ],
                stacked: true,
                values: report
                    .rows
                    .iter()
                    .map(|r| vec![r.start_s.clone(), r.first_touch_s.clone()])
                    .collect(),
            },
            Panel {
                title: "steady-state access cost".into(),
                x_label: "ns per access, vCPU CPU time (median, whiskers min-max)".into(),
                series: vec!["sequential".into(), "random".into()],
                stacked: false,
                values: report
                    .rows
                    .iter()
                    .map(|r| vec![r.seq_ns.clone(), r.random_ns.clone()])
                    .collect(),
            },
        ],
    }
}

/// How the figures were measured, one sentence each (the report's `method`).
fn method(opts: &HugepagesOptions, mmu: &str) -> Vec<String> {
    let shadow = mmu == "shadow paging";
    vec![
        format!(
            "host MMU: {mmu}{}",
            if shadow {
                " (no EPT/NPT: KVM shadows the guest's page tables, here kvm_pvm). The guest's \
                 memory accesses run natively in ring 3 on KVM's shadow page tables, so this \
                 compares host backings under the shadow MMU, not under EPT/NPT: the first touch \
                 of a page not yet in KVM's tables is an exit into the shadow MMU, plus a host \
                 page fault when the host page is not there yet, and KVM maps 2M at once only \
                 where the host page is 2M"
            } else {
                " (two-dimensional paging: the TLB holds guest-virtual to host-physical \
                 translations whose size is the smaller of the guest's and the host's page)"
            }
        ),
        format!(
            "guest: the built-in guest, {} vCPU(s), {} RAM in one region, identity-mapped \
             with 2M guest pages (so a 1G host page still gives at most 2M TLB entries); the \
             working set is {} ({} per vCPU, from 16 MiB up)",
            opts.vcpus,
            Size(opts.memory),
            Size(opts.working_set),
            Size(opts.ws_per_vcpu())
        ),
        format!(
            "workload per vCPU: `{}` (sync points let all vCPUs finish a phase together, and \
             hold them at the start until the bench is ready)",
            workload_text(opts)
        ),
        "start s: Vmm::start_with until the vCPUs can run (mapping, prealloc, VM creation, \
         writing the guest image and page tables), with the region's prealloc report in \
         parentheses (MADV_POPULATE_WRITE, one thread per CPU up to 8)"
            .into(),
        "first touch: wall seconds of the touch step (one atomic add per 4 KiB page of the \
         working set; host clock between the guest's begin and end hypercalls, first begin to \
         last end over vCPUs); CPU s: CPU time of the vCPU threads over the same phase (guest \
         code, KVM's fault handling and the host's page faults all run on them); us/page = CPU \
         s / pages touched"
            .into(),
        "seq and random ns: CPU time of the vCPU threads over the read / random step (read at \
         the sync points on each vCPU thread, so it includes the four hypercalls around the step, \
         ~0.1 ms) / accesses; other processes' use of the CPU does not count; wall ns seq/rand: the same from wall-clock time between the step's \
         hypercalls (medians). seq reads one 8-byte word per stride in passes over the working \
         set; random does xorshift-indexed 8-byte read-writes over it (the index computation, \
         a 64-bit modulo, is part of every access)"
            .into(),
        "host faults: ru_minflt deltas. `start`: the whole process (getrusage RUSAGE_SELF) from \
         before the VM is created to the start gate (mapping, prealloc, VM setup); `touch`: the \
         vCPU threads (RUSAGE_THREAD) from leaving the start gate to reaching the end of the \
         fault phase (KVM's get_user_pages faults are counted to the vCPU thread; the sync \
         hook's own work and other threads are not); major faults, steady-phase faults in --json"
            .into(),
        "KVM exits: KVM's own `exits` counter (KVM_GET_STATS_FD), exits handled in the kernel \
         included (the VMM itself sees only the guest's few hypercalls, `vmm_exits` in --json); \
         touch = fault phase, steady = sequential + random; MMU maps: KVM's pages_4k / pages_2m \
         / pages_1g leaf mappings at the end of the run"
            .into(),
        "resident MiB: guest RAM resident on the host at the end (mincore); pool used/resv: huge \
         pages taken from the pool / still reserved for the mapping at the end (hugetlbfs only)"
            .into(),
        format!(
            "{} untimed warm-up round(s) over every configuration, then {} repetitions, \
             configurations interleaved (repetition 1 of every configuration, then repetition 2, \
             ...); every run is a fresh guest with freshly mapped memory (the warm-up lets the \
             host back the memory and pool pages once: on a nested host the first use of a host \
             page is far slower); min / median / max over repetitions, single figures are medians",
            opts.warmup, opts.reps
        ),
    ]
}

fn workload_text(opts: &HugepagesOptions) -> String {
    let ws = size_arg(opts.ws_per_vcpu());
    format!(
        "sync:tag=0; touch:stride=4K,work-only=1,ws={ws}; sync:tag=1; read:stride={},passes={},ws={ws}; \
         sync:tag=2; random:ws={ws},accesses={}; sync:tag=3",
        size_arg(opts.seq_stride),
        opts.seq_passes,
        opts.random_accesses / u64::from(opts.vcpus)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(total: u64, free: u64) -> PoolStatus {
        PoolStatus {
            size: HugePageSize::Size1G,
            total,
            free,
            reserved: 0,
            surplus: 0,
        }
    }

    #[test]
    fn pool_plans() {
        let g = 1u64 << 30;
        let s = HugePageSize::Size1G;
        assert_eq!(plan_pool(s, 2 * g, Some(&pool(0, 0)), 16 * g), Ok(2));
        assert_eq!(plan_pool(s, 2 * g, Some(&pool(1, 1)), 16 * g), Ok(1));
        let e = plan_pool(s, 512 << 20, Some(&pool(0, 0)), 16 * g).unwrap_err();
        assert!(e.contains("multiple of 1 GiB"), "{e}");
        let e = plan_pool(s, 32 * g, Some(&pool(0, 0)), 16 * g).unwrap_err();
        assert!(
            e.contains("needs 32 1G page(s)") && e.contains("MemAvailable"),
            "{e}"
        );
        let e = plan_pool(s, g, None, 16 * g).unwrap_err();
        assert!(e.contains("no 1G huge page pool"), "{e}");
        // Free pool pages need no host memory.
        assert_eq!(plan_pool(s, 2 * g, Some(&pool(2, 2)), 0), Ok(0));
    }

    #[test]
    fn options_and_workload() {
        let o = HugepagesOptions::default();
        o.check().unwrap();
        assert_eq!(
            o.command(),
            "memvisor bench hugepages --memory 1G --working-set 512M --vcpus 1 --reps 3"
        );
        let w = o.workload();
        assert_eq!(w.steps[STEP_TOUCH].name(), "touch");
        assert_eq!(w.steps[STEP_READ].name(), "read");
        assert_eq!(w.steps[STEP_RANDOM].name(), "random");
        assert_eq!(w.steps[STEP_TOUCH].to_op().args, [4096, 1, 1, 512 << 20]);
        let two = HugepagesOptions {
            vcpus: 2,
            backings: vec![Backing::Hugetlbfs1G],
            prealloc: vec![true],
            ..o.clone()
        };
        assert_eq!(two.ws_per_vcpu(), 256 << 20);
        assert!(two
            .command()
            .ends_with("--vcpus 2 --reps 3 --backings 1g --prealloc on"));
        for bad in [
            HugepagesOptions {
                working_set: 2 << 30,
                ..o.clone()
            },
            HugepagesOptions {
                memory: 3 << 20,
                ..o.clone()
            },
            HugepagesOptions {
                reps: 0,
                ..o.clone()
            },
            HugepagesOptions {
                backings: vec![],
                ..o.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(
            Backing::Hugetlbfs2M.region_spec(1 << 30, true, Some(Path::new("/mnt/h"))),
            "size=1073741824,backend=hugetlbfs,mem-path=/mnt/h,prealloc=on"
        );
        assert_eq!(
            Backing::Anon4K.region_spec(1 << 30, false, None),
            "size=1073741824,thp=off"
        );
        assert_eq!("THP".parse::<Backing>(), Ok(Backing::Thp));
        assert!("5m".parse::<Backing>().is_err());
    }
}
