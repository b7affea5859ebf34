//! `memvisor bench swap`: swap as an overcommit method, each path beside a minimal baseline in
//! the same run (interleaved repetitions, medians):
//! - reclaim GiB/s: [`GuestRam::page_out_to`] over a region filled with incompressible data,
//!   beside one raw `madvise(MADV_PAGEOUT)` of a plain mapping filled the same way;
//! - swap-in faults/s: a built-in guest reading every page of its paged-out work area (each read
//!   a host major fault through KVM), beside a host loop reading every page of a paged-out
//!   mapping;
//! - the working-set estimate's cost: one dirty-log scan (fetch and clear, as every 2 s window
//!   does) per GiB of guest RAM.
//!
//! Needs root and host swap: without swap it sets up a zram device of twice `--size` for the
//! run and resets it afterwards (also on failure).

use super::host::{resident_bytes, BareMapping};
use super::stats::{median_ratio, Summary, Target};
use super::table::{min_med_max, ratio_cell, Align, Table};
use super::{BenchError, BenchReport, BenchRow, Machine};
use crate::config::workload::Workload;
use crate::config::{RegionConfig, VmConfig};
use crate::host::swap;
use crate::memory::GuestRam;
use crate::runner::{RunOptions, StartOptions, Vmm};
use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

const PAGE: u64 = 4096;

/// Options.
#[derive(Clone, Debug)]
pub struct SwapBenchOptions {
    /// Bytes paged out and back per repetition.
    pub size: u64,
    /// Repetitions.
    pub reps: usize,
}

/// One row.
#[derive(Clone, Debug, Serialize)]
pub struct SwapRow {
    /// Which measurement.
    pub section: String,
    /// What was measured.
    pub path: String,
    /// Unit of the figures.
    pub unit: String,
    /// The figures.
    pub value: Option<Summary>,
    /// Ratio of medians to the baseline row of the section.
    pub ratio_to_baseline: Option<f64>,
}

impl BenchRow for SwapRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("section", Align::Left),
            ("path", Align::Left),
            ("unit", Align::Left),
            ("min/med/max", Align::Right),
            ("x baseline", Align::Right),
        ]);
        for r in rows {
            t.row(vec![
                r.section.clone(),
                r.path.clone(),
                r.unit.clone(),
                min_med_max(r.value.as_ref(), 2),
                ratio_cell(r.ratio_to_baseline),
            ]);
        }
        t
    }
}

/// Incompressible words (xorshift), as guest data that zram cannot shrink.
fn fill(p: *mut u8, len: u64, seed: u64) {
    let mut x = seed | 1;
    for i in 0..(len / 8) as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // SAFETY: callers pass a live writable mapping of `len` bytes.
        unsafe { (p as *mut u64).add(i).write_volatile(x) };
    }
}

fn major_faults_thread() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    u.ru_majflt as u64
}

/// A private anonymous 4 KiB mapping (THP off), unmapped on drop.
struct Raw(BareMapping);

impl Raw {
    fn new(len: u64) -> Result<Raw, BenchError> {
        let map = BareMapping::anon(len as usize)?;
        // SAFETY: the mapping just created.
        unsafe { libc::madvise(map.addr().cast(), map.len(), libc::MADV_NOHUGEPAGE) };
        Ok(Raw(map))
    }

    fn p(&self) -> *mut u8 {
        self.0.addr()
    }

    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    /// One `madvise(MADV_PAGEOUT)` of all of it: (seconds, bytes that left RAM).
    fn page_out(&self) -> Result<(f64, u64), BenchError> {
        // SAFETY (both calls): the whole live mapping.
        let resident = || unsafe { resident_bytes(self.p(), self.0.len()) };
        let before = resident()?;
        let t = Instant::now();
        // SAFETY: the whole mapping.
        if unsafe { libc::madvise(self.p().cast(), self.0.len(), libc::MADV_PAGEOUT) } != 0 {
            return Err(BenchError::last_os(
                "madvise(MADV_PAGEOUT)",
                "Linux 5.4+ has it",
            ));
        }
        let secs = t.elapsed().as_secs_f64();
        Ok((secs, before.saturating_sub(resident()?)))
    }
}

/// Switches off and resets the zram device the benchmark set up.
struct ZramGuard(Option<std::path::PathBuf>);

impl Drop for ZramGuard {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            if let Err(e) = swap::off(None, &state) {
                log::warn!("bench swap: undoing the zram device: {e}");
            }
            let _ = std::fs::remove_file(state);
        }
    }
}

fn check(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |detail| BenchError::Check {
        what: what.into(),
        detail,
    }
}

/// One guest run: it fills its work area, is paged out at a sync point, then reads every page.
/// Returns (swap-in faults/s, dirty-log scan seconds per GiB).
fn guest_swap_in(size: u64) -> Result<(f64, f64), BenchError> {
    let region = size + (16 << 20);
    let config = VmConfig {
        memory: vec![RegionConfig::parse(0, &format!("size={region},thp=off"))
            .map_err(|e| check("--size")(e.to_string()))?],
        workload: Workload::parse(&["fill;sync:tag=1;read:stride=4K;sync:tag=2"])
            .expect("valid workload"),
        ..Default::default()
    };
    let reclaimer: Arc<OnceLock<Arc<crate::control::reclaim::Reclaimer>>> =
        Arc::new(OnceLock::new());
    let seen: Arc<Mutex<(u64, u64, f64)>> = Arc::new(Mutex::new((0, 0, 0.0)));
    let hook = {
        let reclaimer = reclaimer.clone();
        let seen = seen.clone();
        Arc::new(move |_vcpu: u32, tag: u64, ram: &GuestRam| {
            let r = loop {
                if let Some(r) = reclaimer.get() {
                    break r.clone();
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            let mut s = seen.lock().unwrap();
            if tag == 1 {
                if let Some(cost) = r.tracker().and_then(|t| t.scan_cost()) {
                    s.2 = cost.as_secs_f64() / (ram.size() as f64 / (1u64 << 30) as f64);
                }
                if let Err(e) = ram.page_out_to(0, None, true) {
                    log::warn!("bench swap: page-out in the guest: {e}");
                }
                s.0 = crate::control::reclaim::major_faults();
            } else {
                s.1 = crate::control::reclaim::major_faults();
            }
        }) as crate::vmm::vcpu::SyncHook
    };
    let mut vmm = Vmm::start_with(
        &config,
        StartOptions {
            sync: Some(hook),
            ..Default::default()
        },
    )
    .map_err(|e| check("starting the guest")(e.to_string()))?;
    let _ = reclaimer.set(vmm.reclaimer().clone());
    let read_seconds = read_step_seconds(&vmm.wait(&RunOptions::default()))?;
    let s = seen.lock().unwrap();
    let faults = s.1.saturating_sub(s.0);
    if faults < size / PAGE / 2 {
        return Err(check("guest swap-ins")(format!(
            "only {faults} major faults for {} pages paged out",
            size / PAGE
        )));
    }
    Ok((faults as f64 / read_seconds, s.2))
}

/// How long the guest's `read` step took, from its run report.
fn read_step_seconds(report: &crate::report::run::RunReport) -> Result<f64, BenchError> {
    report
        .ops
        .iter()
        .find(|o| o.name == "read")
        .map(|o| o.seconds)
        .ok_or_else(|| check("the guest's read step")(format!("{:?}", report.outcome)))
}

/// The platform's floor for a guest fault: a built-in guest reading one word per page of a work
/// area it never wrote (each read a KVM fault that maps the host's zero page: no allocation, no
/// swap). Returns faults/s.
fn guest_fault_floor(size: u64) -> Result<f64, BenchError> {
    let config = VmConfig {
        memory: vec![
            RegionConfig::parse(0, &format!("size={},thp=off", size + (16 << 20)))
                .map_err(|e| check("--size")(e.to_string()))?,
        ],
        workload: Workload::parse(&["read:stride=4K"]).expect("valid workload"),
        ..Default::default()
    };
    let mut vmm = Vmm::start_with(&config, StartOptions::default())
        .map_err(|e| check("starting the guest")(e.to_string()))?;
    Ok((size / PAGE) as f64 / read_step_seconds(&vmm.wait(&RunOptions::default()))?)
}

/// Runs the benchmark.
pub fn run(opts: &SwapBenchOptions, command: String) -> Result<BenchReport<SwapRow>, BenchError> {
    BenchError::check_reps(opts.reps)?;
    BenchError::check_size(opts.size, 2 << 20, "2 MiB", "256M")?;
    let mut notes = Vec::new();
    let active = swap::active().map_err(|e| check("reading /proc/swaps")(e.to_string()))?;
    let _zram = if active.is_empty() {
        let state =
            std::env::temp_dir().join(format!("memvisor-bench-swap-{}.json", std::process::id()));
        swap::setup_zram(
            2 * opts.size + (64 << 20),
            None,
            None,
            swap::ZRAM_PRIORITY,
            &state,
        )
        .map_err(|e| check("setting up zram for the run")(e.to_string()))?;
        notes.push(format!(
            "host swap: a zram device of {} set up for the run (default algorithm), reset afterwards",
            crate::config::Size(2 * opts.size + (64 << 20))
        ));
        ZramGuard(Some(state))
    } else {
        notes.push(format!(
            "host swap: the host's own ({})",
            active
                .iter()
                .map(|d| d.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        ZramGuard(None)
    };
    let ram = GuestRam::new(&[
        RegionConfig::parse(0, &format!("size={},thp=off", opts.size))
            .map_err(|e| check("--size")(e.to_string()))?,
    ])?;
    let (mut ours, mut raw_rate, mut swapin_raw, mut swapin_guest, mut ws_cost) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut floor = Vec::new();
    for rep in 0..opts.reps {
        let r = &ram.regions()[0];
        fill(r.host_addr(), r.len(), rep as u64 + 1);
        let out = ram.page_out_to(0, None, true)?;
        ours.push(out.paged_out_bytes as f64 / out.seconds / (1u64 << 30) as f64);
        let raw = Raw::new(opts.size)?;
        fill(raw.p(), raw.len(), rep as u64 + 7);
        let (secs, bytes) = raw.page_out()?;
        raw_rate.push(bytes as f64 / secs / (1u64 << 30) as f64);
        // Swap-in: a host loop over the paged-out mapping.
        let f0 = major_faults_thread();
        let t = Instant::now();
        let mut sum = 0u64;
        for off in (0..raw.len()).step_by(PAGE as usize) {
            // SAFETY: a word inside the live mapping.
            sum = sum
                .wrapping_add(unsafe { (raw.p().add(off as usize) as *const u64).read_volatile() });
        }
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        swapin_raw.push((major_faults_thread() - f0) as f64 / secs);
        drop(raw);
        let (rate, cost) = guest_swap_in(opts.size)?;
        swapin_guest.push(rate);
        ws_cost.push(cost * 1000.0);
        floor.push(guest_fault_floor(opts.size)?);
    }
    let row = |section: &str, path: &str, unit: &str, v: &[f64]| SwapRow {
        section: section.into(),
        path: path.into(),
        unit: unit.into(),
        value: Summary::of(v),
        ratio_to_baseline: None,
    };
    let mut rows = vec![
        row(
            "reclaim",
            "memvisor: GuestRam::page_out_to (2 MiB madvise chunks, mincore accounting)",
            "GiB/s",
            &ours,
        ),
        row(
            "reclaim",
            "baseline: one madvise(MADV_PAGEOUT)",
            "GiB/s",
            &raw_rate,
        ),
        row(
            "swap-in",
            "memvisor: built-in guest reads every paged-out page (KVM fault -> host major fault)",
            "faults/s",
            &swapin_guest,
        ),
        row(
            "swap-in",
            "baseline: host loop reads every paged-out page",
            "faults/s",
            &swapin_raw,
        ),
        row(
            "swap-in",
            "platform: built-in guest reads every never-written page (KVM fault -> zero page, no swap)",
            "faults/s",
            &floor,
        ),
        row(
            "working set",
            "one dirty-log scan (KVM_GET_DIRTY_LOG, idle guest), per GiB",
            "ms/GiB",
            &ws_cost,
        ),
    ];
    rows[0].ratio_to_baseline = median_ratio(rows[0].value.as_ref(), rows[1].value.as_ref());
    rows[1].ratio_to_baseline = Some(1.0);
    rows[2].ratio_to_baseline = median_ratio(rows[2].value.as_ref(), rows[3].value.as_ref());
    rows[3].ratio_to_baseline = Some(1.0);
    // The floor against the same host loop: how much of the gap is the guest's own fault path.
    rows[4].ratio_to_baseline = median_ratio(rows[4].value.as_ref(), rows[3].value.as_ref());
    if let (Some(g), Some(f)) = (rows[2].value.as_ref(), rows[4].value.as_ref()) {
        notes.push(format!(
            "guest swap-ins reach {:.2}x of the platform's fault floor (a guest fault that needs no swap-in at all): the gap to the host loop is mostly the guest fault path of this KVM",
            g.median / f.median
        ));
    }
    let size = crate::config::Size(opts.size);
    let targets = vec![
        Target::judge(
            "reclaim / raw MADV_PAGEOUT",
            0.9,
            &[(format!("{size} anon 4K"), rows[0].ratio_to_baseline)],
        ),
        Target::judge(
            "guest swap-ins / host loop",
            0.8,
            &[(format!("{size} anon 4K"), rows[2].ratio_to_baseline)],
        ),
    ];
    notes.push("a window of the working-set estimate is 2 s: its CPU share is the scan time per GiB / 2000 ms".into());
    Ok(BenchReport {
        benchmark: "swap".into(),
        command,
        machine: Machine::describe(),
        method: vec![
            format!("reclaim: a {size} guest RAM region (GuestRam, THP off) and a plain {size} mapping, each filled with xorshift words (incompressible), paged out to host swap; memvisor's path is GuestRam::page_out_to(0) (what PUT /memory/reclaim runs), the baseline one madvise(MADV_PAGEOUT); bytes that left RAM (mincore) per second; interleaved per repetition"),
            format!("swap-in: a built-in guest with {size} of work area fills it, a sync hook pages all guest RAM out, then the guest reads one word per 4 KiB page (ring 3); major faults of the process during its read step per second of the step; baseline: the host thread reads one word per page of the paged-out plain mapping (its own major faults per second)"),
            format!("platform floor: a built-in guest with {size} of work area it never wrote reads one word per 4 KiB page (each a KVM fault that maps the host's zero page: no allocation, no swap-in); pages per second of the read step; its ratio is against the same host loop"),
            "working set: in the same guest, the time of one fetch-and-clear of KVM's dirty log over all memslots (what ends every 2 s window), per GiB of guest RAM".into(),
        ],
        rows,
        targets,
        notes,
    })
}
