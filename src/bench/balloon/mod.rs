//! `memvisor bench balloon`: how fast a running guest gives memory back through the balloon —
//! from `PATCH /balloon` on the control API to the host pages being gone — beside a raw
//! `madvise(MADV_DONTNEED)` of the same amount of touched memory, in the same run; and, as the
//! platform's floor, one discard through the memory module of the same amount of guest RAM a
//! guest has just touched (mapped by KVM), without the balloon. Beside the figures it reports
//! what the kernel decides for each side: how long before the free the pages were touched, and
//! the room on the freeing CPU's per-CPU free page lists ([`crate::host::pcp`]), which the raw
//! side's own touch has just widened.

mod account;
mod baselines;

use super::stats::{gib_per_s, median_ratio, Summary, Target};
use super::table::{min_med_max, ratio_cell, Align, Table};
use super::{BenchError, BenchReport, BenchRow, Machine};
use crate::config::workload::Workload;
use crate::config::{RegionConfig, VmConfig};
use crate::control::api::client;
use crate::runner::{StartOptions, Vmm};
use account::{rooms, PageAge, RoundParts};
use baselines::{guest_discard_floor, raw_madvise_on, Freed, Toucher};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Options.
#[derive(Clone, Debug)]
pub struct BalloonBenchOptions {
    /// Bytes to balloon (whole MiB).
    pub size: u64,
    /// Repetitions (each inflates and deflates once).
    pub reps: usize,
    /// Host CPU for the guests' vCPU, and so their device thread (`--pin 0=CPU`); `None`:
    /// unpinned.
    pub cpu: Option<usize>,
    /// When not zero, each balloon round also gets a raw round whose memory sat this long
    /// between its touch and the madvise.
    pub raw_age: Duration,
}

impl BalloonBenchOptions {
    /// The default CPU: the host's last, away from CPU 0 where the host's own work tends to
    /// go; unpinned on a one-CPU host.
    pub fn default_cpu() -> Option<usize> {
        let n = crate::config::host_cpus();
        (n >= 2).then(|| n - 1)
    }

    fn pins(&self) -> std::collections::BTreeMap<u32, usize> {
        self.cpu.map(|c| (0, c)).into_iter().collect()
    }
}

/// One row.
#[derive(Clone, Debug, Serialize)]
pub struct BalloonRow {
    /// What was measured.
    pub path: String,
    /// GiB/s returned to the host.
    pub gib_per_s: Option<Summary>,
    /// Seconds per run.
    pub seconds: Option<Summary>,
    /// Ratio of medians to the raw madvise row.
    pub ratio_to_raw: Option<f64>,
}

impl BenchRow for BalloonRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("path", Align::Left),
            ("GiB/s min/med/max", Align::Right),
            ("seconds min/med/max", Align::Right),
            ("x raw", Align::Right),
        ]);
        for r in rows {
            t.row(vec![
                r.path.clone(),
                min_med_max(r.gib_per_s.as_ref(), 2),
                min_med_max(r.seconds.as_ref(), 4),
                ratio_cell(r.ratio_to_raw),
            ]);
        }
        t
    }
}

fn wait(what: &str, timeout: Duration, f: impl FnMut() -> bool) -> Result<(), BenchError> {
    wait_every(what, timeout, Duration::from_micros(200), f)
}

/// [`wait`], looking every `every`.
fn wait_every(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<(), BenchError> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            return Err(BenchError::Check {
                what: what.into(),
                detail: format!("not reached within {timeout:?}"),
            });
        }
        std::thread::sleep(every);
    }
    Ok(())
}

/// The memory of the benchmark's guests: 16 MiB for the guest itself, then `work` bytes of
/// 4 KiB anonymous RAM (THP off, like the raw side) in region 1, the one a round frees.
fn guest_memory(work: u64) -> Result<Vec<RegionConfig>, BenchError> {
    Ok(vec![
        RegionConfig::anon(16 << 20),
        RegionConfig::parse(1, &format!("size={work},thp=off")).map_err(|e| {
            BenchError::Option {
                option: "--size",
                reason: e.to_string(),
            }
        })?,
    ])
}

/// Runs the benchmark.
pub fn run(
    opts: &BalloonBenchOptions,
    command: String,
) -> Result<BenchReport<BalloonRow>, BenchError> {
    if opts.size % (1 << 20) != 0 || opts.size == 0 {
        return Err(BenchError::Option {
            option: "--size",
            reason: "a positive whole number of MiB".into(),
        });
    }
    let mib = (opts.size >> 20) as u32;
    let region = opts.size + (64 << 20);
    let sock = std::env::temp_dir().join(format!(
        "memvisor-bench-balloon-{}.sock",
        std::process::id()
    ));
    let config = VmConfig {
        memory: guest_memory(region)?,
        workload: Workload::parse(&["touch:work-only=1;balloon:data=0,seconds=0"])
            .expect("valid workload"),
        pin: opts.pins(),
        balloon: Some(balloon::BalloonOptions::default()),
        ..Default::default()
    };
    let started = Instant::now();
    let vmm = Vmm::start_with(
        &config,
        StartOptions {
            api_sock: Some(sock.clone()),
            ..Default::default()
        },
    )
    .map_err(|e| BenchError::Check {
        what: "starting the guest".into(),
        detail: e.to_string(),
    })?;
    let ram = vmm.ram().clone();
    let len = ram.regions()[1].len();
    let resident = || ram.resident_bytes()[1];
    let dev = vmm.balloon().expect("configured").clone();
    // The guest is ready for a round once its memory is filled and it is back in its idle
    // loop: it reports progress after each fill (and then every idle iteration). Resident
    // memory alone is not enough: `touch` makes every page resident before the balloon step
    // writes its pattern, and a PATCH sent during that fill would time the fill (the first
    // round used to take 0.25-0.29 s longer than the others for that reason).
    let updates = || vmm.guest_progress(0).map_or(0, |p| p.updates);
    let idle_after = |seen: u64| {
        wait(
            "the guest back in its idle loop",
            Duration::from_secs(600),
            || updates() > seen,
        )
    };
    wait(
        "the guest filling its memory",
        Duration::from_secs(120),
        || resident() >= len - (1 << 20) && dev.with_device(|d| (d.model.is_activated(), false)),
    )?;
    // When the memory a round takes was touched: between these two instants.
    let mut fill = (started, Instant::now());
    idle_after(updates())?;
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let mut aged = Vec::new();
    let mut parts: Vec<RoundParts> = Vec::new();
    let mut ages = Vec::new();
    for _ in 0..opts.reps.max(1) {
        let before = resident();
        let released = |dev: &crate::devices::balloon::BalloonHandle| {
            dev.with_device(|d| (d.released_bytes(), false))
        };
        let released_before = released(&dev);
        dev.with_device(|d| (d.take_discard_timing(), false));
        let t = Instant::now();
        ages.push(PageAge::between(fill, t));
        // The device thread runs on the vCPU's CPU (unknown when unpinned).
        let room = opts
            .cpu
            .and_then(crate::host::pcp::of_cpu)
            .map(|l| l.room());
        let (status, body) = client::request(
            &sock,
            "PATCH",
            "/balloon",
            Some(&format!("{{\"amount_mib\": {mib}}}")),
        )
        .map_err(|e| BenchError::Check {
            what: "PATCH /balloon".into(),
            detail: e.to_string(),
        })?;
        if status != 204 {
            return Err(BenchError::Check {
                what: "PATCH /balloon".into(),
                detail: format!("{status}: {body}"),
            });
        }
        // The device counts bytes as released once madvise/fallocate returned for them; poll
        // that, then confirm with mincore that the host really has them back. The round ends
        // when the device's last discard call returned (its own clock), so the polling can be
        // coarse: a poller waking every 200 µs cost the discards on the device thread up to
        // twice the platform's floor (a CPU of two taken, and a TLB-shootdown IPI to it for
        // every flush of the discarded range while it ran in this process).
        wait_every(
            "host memory returned",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || released(&dev) - released_before >= opts.size,
        )
        .and_then(|_| {
            let timing = dev.with_device(|d| (d.take_discard_timing(), false));
            let done = timing.last_end.unwrap_or_else(Instant::now);
            let secs = (done - t).as_secs_f64();
            if resident() <= len - opts.size {
                ours.push(Freed { secs, room });
                parts.push(RoundParts::of(t, done, &timing));
                Ok(())
            } else {
                Err(BenchError::Check {
                    what: "host memory returned".into(),
                    detail: "the device counted the bytes released but mincore still shows them resident".into(),
                })
            }
        })
        .map_err(|e| BenchError::Check {
            what: format!("{e}"),
            detail: format!(
                "balloon actual {} pages, resident {} -> {} bytes",
                dev.with_device(|d| (d.model.actual_pages(), false)),
                before,
                resident()
            ),
        })?;
        raw.push(raw_madvise_on(opts.size, opts.cpu, Duration::ZERO)?);
        if !opts.raw_age.is_zero() {
            aged.push(raw_madvise_on(opts.size, opts.cpu, opts.raw_age)?);
        }
        // Deflate and let the guest refill before the next round.
        dev.with_device(|d| ((), d.model.set_target_mib(0)));
        let refill = Instant::now();
        // The refill faults every page in again (5-20 s per GiB on this nested host).
        wait("deflate and refill", Duration::from_secs(600), || {
            dev.with_device(|d| (d.model.actual_pages(), false)) == 0
                && resident() >= len - (1 << 20)
        })?;
        fill = (refill, Instant::now());
        idle_after(updates())?;
    }
    vmm.request_finish();
    drop(vmm);
    // The floors, each round beside a raw round too, so that their ratios to raw are of
    // interleaved runs as well.
    let (mut floor, mut unmapped, mut floor_ages) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.reps.max(1) {
        let (freed, touched) = guest_discard_floor(opts.size, opts, Toucher::Guest)?;
        floor.push(freed);
        // The guest boots and starts touching within milliseconds of its start.
        floor_ages.push(PageAge {
            youngest: 0.0,
            oldest: touched,
        });
        unmapped.push(guest_discard_floor(opts.size, opts, Toucher::Vmm)?.0);
        raw.push(raw_madvise_on(opts.size, opts.cpu, Duration::ZERO)?);
    }
    let room_note = format!(
        "room on the freeing CPU's per-CPU free page lists just before each free, in thousands of pages (1 GiB is 262k; a free beyond the room goes to the buddy allocator, several times dearer per page; the kernel widens the room while a CPU allocates and narrows it by an eighth a second after: host::pcp): balloon {}; floor {}; raw {}{}",
        rooms(&ours),
        rooms(&floor),
        rooms(&raw),
        if aged.is_empty() {
            String::new()
        } else {
            format!("; raw, aged {}", rooms(&aged))
        }
    );
    let secs = |v: &[Freed]| v.iter().map(|f| f.secs).collect::<Vec<f64>>();
    let (ours, raw, aged) = (secs(&ours), secs(&raw), secs(&aged));
    let (floor, unmapped) = (secs(&floor), secs(&unmapped));
    let rate = |s: &[f64]| {
        Summary::of(
            &s.iter()
                .map(|x| gib_per_s(opts.size, *x))
                .collect::<Vec<_>>(),
        )
    };
    let raw_row = BalloonRow {
        path: "raw madvise(MADV_DONTNEED), touched 4K anon".into(),
        gib_per_s: rate(&raw),
        seconds: Summary::of(&raw),
        ratio_to_raw: Some(1.0),
    };
    let mut ours_row = BalloonRow {
        path: "memvisor: PATCH /balloon -> guest inflates -> host RSS down".into(),
        gib_per_s: rate(&ours),
        seconds: Summary::of(&ours),
        ratio_to_raw: None,
    };
    ours_row.ratio_to_raw = median_ratio(ours_row.gib_per_s.as_ref(), raw_row.gib_per_s.as_ref());
    let mut floor_row = BalloonRow {
        path: "platform: one discard of guest RAM a guest touched (KVM-mapped)".into(),
        gib_per_s: rate(&floor),
        seconds: Summary::of(&floor),
        ratio_to_raw: None,
    };
    floor_row.ratio_to_raw = median_ratio(floor_row.gib_per_s.as_ref(), raw_row.gib_per_s.as_ref());
    let aged_row = (!aged.is_empty()).then(|| {
        let gib_per_s = rate(&aged);
        BalloonRow {
            path: format!(
                "raw madvise, the pages left {} s after their touch",
                opts.raw_age.as_secs()
            ),
            ratio_to_raw: median_ratio(gib_per_s.as_ref(), raw_row.gib_per_s.as_ref()),
            gib_per_s,
            seconds: Summary::of(&aged),
        }
    });
    let mut unmapped_row = BalloonRow {
        path: "platform: one discard of guest RAM the VMM touched (not KVM-mapped)".into(),
        gib_per_s: rate(&unmapped),
        seconds: Summary::of(&unmapped),
        ratio_to_raw: None,
    };
    unmapped_row.ratio_to_raw =
        median_ratio(unmapped_row.gib_per_s.as_ref(), raw_row.gib_per_s.as_ref());
    let mut notes = RoundParts::notes(&parts);
    notes.push(room_note);
    notes.push(format!(
        "how long before the discards the freed memory was touched (s, youngest-oldest page, per round; the memory is filled at an even pace): balloon {}; floor {}. Freeing older pages costs more here without any VMM (docs/benchmarks.md, \"How old the memory is\"), and the raw side frees pages it touched just before",
        PageAge::list(&ages),
        PageAge::list(&floor_ages)
    ));
    if let (Some(o), Some(f)) = (ours_row.gib_per_s.as_ref(), floor_row.gib_per_s.as_ref()) {
        notes.push(format!(
            "the balloon returns memory at {:.2}x of one discard of the same amount of KVM-mapped guest RAM (the platform's floor: what the discard calls alone cost on memory a guest uses)",
            o.median / f.median
        ));
    }
    if let (Some(o), Some(a)) = (
        ours_row.gib_per_s.as_ref(),
        aged_row.as_ref().and_then(|r| r.gib_per_s.as_ref()),
    ) {
        notes.push(format!(
            "against raw rounds whose pages sat {} s after their touch (a balloon takes memory the guest touched seconds before: the ages above) the balloon returns memory at {:.2}x",
            opts.raw_age.as_secs(),
            o.median / a.median
        ));
    }
    if let (Some(f), Some(u)) = (
        floor_row.gib_per_s.as_ref(),
        unmapped_row.gib_per_s.as_ref(),
    ) {
        notes.push(format!(
            "KVM's share of the floor: discarding guest RAM a guest touched takes {:.2}x the time of discarding the same RAM touched by the VMM (KVM's MMU notifier zapping its mappings of each page)",
            u.median / f.median
        ));
    }
    // Issue 17: at least 0.8x at 1 GiB and 0.5x at 256 MiB (smaller amounts leave fixed
    // costs, the guest waking up and the API, a larger share).
    let target = Target::judge(
        "balloon return / raw madvise",
        if opts.size >= 1 << 30 { 0.8 } else { 0.5 },
        &[(format!("{} MiB anon 4K", mib), ours_row.ratio_to_raw)],
    );
    Ok(BenchReport {
        benchmark: "balloon".into(),
        command,
        machine: Machine::describe(),
        method: vec![
            format!("a built-in guest (16 MiB + {} MiB anon, THP off) touches all its RAM and runs its balloon driver; each round sends PATCH /balloon {{\"amount_mib\": {mib}}} over the control API and times until the device has released {mib} MiB (madvise/fallocate returned for them; polled, cheap), then confirms with mincore that the guest region has at most (region - {mib} MiB) resident; then deflates and waits for the guest to refill", region >> 20),
            format!("raw: a fresh {mib} MiB private anonymous mapping, every page touched, then one madvise(MADV_DONTNEED) timed; interleaved with the balloon rounds"),
            format!("raw, aged (--raw-age, 0 for none): the same, with the mapping left {} s between its touch and the madvise; after each balloon round's raw round. The target stays judged against the raw row", opts.raw_age.as_secs()),
            "the guest driver runs in ring 3 under shadow paging here (no VMX/SVM): its MMIO notifications and hypercalls are VM exits of tens of µs each".into(),
            format!("platform floor: another built-in guest touches {mib} MiB, then at a sync point (its vCPU waiting in the VMM) one GuestRam::discard of exactly that memory is timed: the balloon's discard calls in one piece, on memory KVM has mapped; after the balloon rounds, each beside a raw round"),
            "platform, not KVM-mapped: the same, but the guest does not touch the memory; the VMM faults it in at the sync point (GuestRam::reclaim with populate, MADV_POPULATE_WRITE on the vCPU thread), so KVM never maps it: the difference to the floor is KVM's".into(),
            match opts.cpu {
                Some(c) => format!("both guests' vCPU pinned to host CPU {c} (--pin 0={c}), so their device thread runs there too (memvisor's default with pinned vCPUs): the balloon frees guest pages on the CPU whose vCPU faulted them in; the raw side touches and frees its mapping on a thread pinned to the same CPU; --cpu none runs all unpinned"),
                None => "unpinned (--cpu none, or a one-CPU host): the device thread may free guest pages on another CPU than the vCPU that faulted them in, which took twice as long on the development host".into(),
            },
        ],
        rows: [ours_row, raw_row]
            .into_iter()
            .chain(aged_row)
            .chain([floor_row, unmapped_row])
            .collect(),
        targets: vec![target],
        notes,
    })
}
