//! `memvisor bench prealloc`: preallocation throughput of one guest RAM region, memvisor's path
//! (`GuestRam::new` with `prealloc=on`) beside a bare `MADV_POPULATE_WRITE` loop on the same
//! kind of memory in the same run, and beside QEMU's `prealloc=on` memory backends.
//!
//! Per configuration (backend x threads) and repetition, memvisor and the bare loop alternate
//! (AB, BA, ...), then QEMU with prealloc on and off (alternating too). Every run gets fresh
//! memory: mappings are unmapped between runs and hugetlb pages are back in the pool.

use super::host::{self, BareMapping, HugetlbfsScratch};
use super::qemu::Qemu;
use super::stats::{gib_per_s, median_ratio, Summary, Target};
use super::table::{med, min_med_max, ratio_cell};
use super::{Align, BenchError, BenchReport, BenchRow, Machine, Table};
use crate::config::{Backend, RegionConfig, Size};
use crate::memory::GuestRam;
use hugepages::HugePageSize;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The memory a configuration preallocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PreallocBackend {
    /// A file on a (temporary) hugetlbfs mount with 2 MiB pages, `MAP_SHARED`.
    #[serde(rename = "hugetlbfs-2M")]
    Hugetlbfs2M,
    /// Private anonymous memory with 4 KiB pages (`MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE`).
    #[serde(rename = "anon-4K")]
    Anon4K,
}

impl PreallocBackend {
    /// Every backend, in table order.
    pub const ALL: [PreallocBackend; 2] = [PreallocBackend::Hugetlbfs2M, PreallocBackend::Anon4K];

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            PreallocBackend::Hugetlbfs2M => "hugetlbfs 2M",
            PreallocBackend::Anon4K => "anon 4K",
        }
    }

    /// Page size of the memory.
    pub fn page_size(self) -> u64 {
        match self {
            PreallocBackend::Hugetlbfs2M => 2 << 20,
            PreallocBackend::Anon4K => 4096,
        }
    }
}

impl FromStr for PreallocBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hugetlbfs" | "hugetlbfs-2M" | "hugetlbfs-2m" => Ok(PreallocBackend::Hugetlbfs2M),
            "anon" | "anon-4K" | "anon-4k" => Ok(PreallocBackend::Anon4K),
            _ => Err(format!("`{s}`: write hugetlbfs or anon")),
        }
    }
}

/// Whether and which QEMU to compare with.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum QemuChoice {
    /// `qemu-system-x86_64` on `PATH`, skipped with a note when missing.
    #[default]
    Auto,
    /// This binary.
    Binary(PathBuf),
    /// No QEMU comparison.
    Skip,
}

/// Options of `memvisor bench prealloc`.
#[derive(Clone, Debug)]
pub struct PreallocOptions {
    /// Region size (a multiple of 2 MiB).
    pub size: u64,
    /// Repetitions of each run.
    pub reps: usize,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Backends.
    pub backends: Vec<PreallocBackend>,
    /// QEMU comparison.
    pub qemu: QemuChoice,
}

impl Default for PreallocOptions {
    fn default() -> Self {
        PreallocOptions {
            size: 2 << 30,
            reps: 3,
            threads: vec![1, 2],
            backends: PreallocBackend::ALL.to_vec(),
            qemu: QemuChoice::Auto,
        }
    }
}

impl PreallocOptions {
    /// The command line these options correspond to.
    pub fn command(&self) -> String {
        let mut c = format!(
            "memvisor bench prealloc --size {} --reps {}",
            size_arg(self.size),
            self.reps
        );
        if self.threads != [1, 2] {
            let t: Vec<String> = self.threads.iter().map(|t| t.to_string()).collect();
            c.push_str(&format!(" --threads {}", t.join(",")));
        }
        if self.backends != PreallocBackend::ALL {
            let b: Vec<&str> = self
                .backends
                .iter()
                .map(|b| match b {
                    PreallocBackend::Hugetlbfs2M => "hugetlbfs",
                    PreallocBackend::Anon4K => "anon",
                })
                .collect();
            c.push_str(&format!(" --backends {}", b.join(",")));
        }
        match &self.qemu {
            QemuChoice::Auto => {}
            QemuChoice::Binary(p) => c.push_str(&format!(" --qemu {}", p.display())),
            QemuChoice::Skip => c.push_str(" --no-qemu"),
        }
        c
    }

    fn check(&self) -> Result<(), BenchError> {
        BenchError::check_size(self.size, 2 << 20, "2 MiB (the hugetlbfs page size)", "2G")?;
        BenchError::check_reps(self.reps)?;
        if self.threads.is_empty() || self.threads.contains(&0) {
            return Err(BenchError::Option {
                option: "--threads",
                reason: "give thread counts of at least 1, e.g. 1,2".into(),
            });
        }
        if self.backends.is_empty() {
            return Err(BenchError::Option {
                option: "--backends",
                reason: "give at least one of hugetlbfs, anon".into(),
            });
        }
        Ok(())
    }
}

/// `2G`, `64M` or a byte count: how a size is written on the command line.
pub(crate) fn size_arg(bytes: u64) -> String {
    if bytes % (1 << 30) == 0 {
        format!("{}G", bytes >> 30)
    } else if bytes % (1 << 20) == 0 {
        format!("{}M", bytes >> 20)
    } else {
        bytes.to_string()
    }
}

/// One configuration's results; throughputs in GiB/s.
#[derive(Clone, Debug, Serialize)]
pub struct PreallocRow {
    /// The memory.
    pub backend: PreallocBackend,
    /// Populate threads.
    pub threads: usize,
    /// Bytes per run.
    pub size_bytes: u64,
    /// memvisor: from the region's prealloc report (the populate itself).
    pub memvisor: Option<Summary>,
    /// memvisor: all of `GuestRam::new` (checks, mmap, populate).
    pub memvisor_wall: Option<Summary>,
    /// How memvisor populated (`populate_write` or `touch`).
    pub memvisor_method: String,
    /// The bare `MADV_POPULATE_WRITE` loop.
    pub bare: Option<Summary>,
    /// memvisor / bare, medians.
    pub ratio_vs_bare: Option<f64>,
    /// QEMU: size / (time to the monitor prompt with prealloc=on - the same with prealloc=off).
    pub qemu: Option<Summary>,
    /// QEMU: seconds to the monitor prompt with prealloc=off (its start overhead).
    pub qemu_startup_s: Option<Summary>,
    /// memvisor / QEMU, medians.
    pub ratio_vs_qemu: Option<f64>,
}

impl PreallocRow {
    /// `hugetlbfs 2M x1`.
    pub fn config(&self) -> String {
        format!("{} x{}", self.backend.label(), self.threads)
    }
}

impl BenchRow for PreallocRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("backend", Align::Left),
            ("thr", Align::Right),
            ("memvisor GiB/s min/med/max", Align::Right),
            ("wall med", Align::Right),
            ("bare loop GiB/s", Align::Right),
            ("mv/bare", Align::Right),
            ("QEMU GiB/s", Align::Right),
            ("QEMU start s", Align::Right),
            ("mv/QEMU", Align::Right),
        ]);
        for r in rows {
            t.row(vec![
                r.backend.label().into(),
                r.threads.to_string(),
                min_med_max(r.memvisor.as_ref(), 2),
                med(r.memvisor_wall.as_ref(), 2),
                min_med_max(r.bare.as_ref(), 2),
                ratio_cell(r.ratio_vs_bare),
                min_med_max(r.qemu.as_ref(), 2),
                med(r.qemu_startup_s.as_ref(), 3),
                ratio_cell(r.ratio_vs_qemu),
            ]);
        }
        t
    }
}

/// Faults in `[addr, addr+len)` for writing with plain `madvise(MADV_POPULATE_WRITE)`: the
/// range is cut into `threads` equal chunks on `page_size` boundaries, one call per chunk, each
/// on its own thread (on the calling thread when `threads` is 1); the threads start their calls
/// together behind a barrier. Returns the time from before the threads are created to after
/// they are joined. No memvisor code is involved.
///
/// # Safety
/// `[addr, addr+len)` must be a live, writable mapping of the caller that is not unmapped while
/// this runs; `addr`, `len` multiples of `page_size`.
pub unsafe fn bare_populate(
    addr: usize,
    len: usize,
    page_size: usize,
    threads: usize,
) -> Result<Duration, BenchError> {
    fn one(at: usize, n: usize) -> Result<(), std::io::Error> {
        loop {
            // SAFETY: [at, at+n) is a chunk of the caller's live writable mapping (contract of
            // `bare_populate`); MADV_POPULATE_WRITE only faults pages in.
            let rc =
                unsafe { libc::madvise(at as *mut libc::c_void, n, libc::MADV_POPULATE_WRITE) };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
    let pages = len / page_size;
    let threads = threads.clamp(1, pages.max(1));
    let first = |i: usize| pages * i / threads;
    let (results, elapsed) = host::timed(|| {
        if threads == 1 {
            vec![one(addr, len)]
        } else {
            // All threads start together: a thread created while another is inside its
            // madvise waits for the mmap lock that call holds (the new thread's stack is an
            // mmap), which would serialize the loop.
            let barrier = std::sync::Barrier::new(threads);
            let barrier = &barrier;
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| {
                        let at = addr + first(i) * page_size;
                        let n = (first(i + 1) - first(i)) * page_size;
                        s.spawn(move || {
                            barrier.wait();
                            one(at, n)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("populate thread panicked"))
                    .collect()
            })
        }
    });
    for r in results {
        r.map_err(BenchError::io(
            "madvise(MADV_POPULATE_WRITE) of the bare loop",
            "needs Linux 5.14+; for hugetlbfs the pool must have the pages free",
        ))?;
    }
    Ok(elapsed)
}

/// Runs the benchmark; `progress` gets one line per repetition.
pub fn run(
    opts: &PreallocOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport<PreallocRow>, BenchError> {
    opts.check()?;
    let load_before = super::machine::load_average();
    let mut notes = Vec::new();
    let mut method = vec![
        "memvisor: GuestRam::new of one region with prealloc=on, prealloc-threads=N; GiB/s from \
         the region's prealloc report (hugepages::populate: MADV_POPULATE_WRITE in 64 MiB steps \
         per thread); `wall` is the median over all of GuestRam::new (checks, mmap, populate)"
            .to_string(),
        "bare loop: mmap with the same flags, then one madvise(MADV_POPULATE_WRITE) per thread \
         over N equal chunks (on the calling thread for N=1; the threads start together behind \
         a barrier), timed from before the threads are created to after they are joined; no \
         memvisor code"
            .to_string(),
        "one untimed warm-up run of each per configuration, then memvisor and the bare loop \
         alternate (AB, BA, ...); every run gets fresh memory \
         (unmapped after each run, hugetlb pages back in the pool); mv/bare and mv/QEMU are \
         ratios of medians (higher is better for memvisor)"
            .to_string(),
    ];
    let qemu = match &opts.qemu {
        QemuChoice::Skip => {
            notes.push("QEMU comparison skipped (--no-qemu)".to_string());
            None
        }
        QemuChoice::Auto => Qemu::find(None).map_err(|n| notes.push(n)).ok(),
        QemuChoice::Binary(p) => Qemu::find(Some(p)).map_err(|n| notes.push(n)).ok(),
    };
    if let Some(q) = &qemu {
        method.push(format!(
            "QEMU ({}): seconds from exec to the monitor prompt with prealloc=on minus the same \
             command with prealloc=off, per repetition (QEMU creates and preallocates memory \
             backend objects before its monitor starts; -machine none is enough); anon runs \
             start QEMU with prctl(PR_SET_THP_DISABLE), since QEMU madvises MADV_HUGEPAGE on \
             all guest RAM and would otherwise get 2M THPs, not 4K pages; commands: `{}` and `{}`",
            q.version,
            q.command_line(&qemu_args(
                PreallocBackend::Hugetlbfs2M,
                opts.size,
                1,
                Some(Path::new("DIR")),
                true
            )),
            q.command_line(&qemu_args(
                PreallocBackend::Anon4K,
                opts.size,
                1,
                None,
                true
            )),
        ));
    }
    if matches!(hugepages::thp_mode(), Ok(hugepages::ThpMode::Always)) {
        notes.push(
            "host THP mode is `always`: memvisor's and the bare loop's anon rows may have got \
             transparent huge pages, not 4K pages"
                .into(),
        );
    }
    let mut rows = Vec::new();
    for backend in &opts.backends {
        let scratch = match backend {
            PreallocBackend::Anon4K => None,
            PreallocBackend::Hugetlbfs2M if !host::is_root() => {
                notes.push(
                    "hugetlbfs 2M skipped: growing the pool and mounting hugetlbfs need root; \
                     run as root (sudo)"
                        .into(),
                );
                continue;
            }
            PreallocBackend::Hugetlbfs2M => {
                match HugetlbfsScratch::new(HugePageSize::Size2M, opts.size) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        notes.push(format!("hugetlbfs 2M skipped: {e}"));
                        continue;
                    }
                }
            }
        };
        for &threads in &opts.threads {
            let mut qemu_failed = false;
            rows.push(measure(
                opts,
                *backend,
                threads,
                scratch.as_ref(),
                qemu.as_ref(),
                &mut qemu_failed,
                &mut notes,
                progress,
            )?);
        }
    }
    let ratios = |f: fn(&PreallocRow) -> Option<f64>| -> Vec<(String, Option<f64>)> {
        rows.iter().map(|r| (r.config(), f(r))).collect()
    };
    let mut targets = vec![Target::judge(
        "memvisor / bare MADV_POPULATE_WRITE loop (median GiB/s)",
        0.9,
        &ratios(|r| r.ratio_vs_bare),
    )];
    targets.push(Target::judge(
        "memvisor / QEMU prealloc (median GiB/s)",
        1.0,
        &ratios(|r| r.ratio_vs_qemu),
    ));
    let machine = Machine::describe();
    notes.extend(super::machine::load_note(
        load_before,
        super::machine::load_average(),
        machine.cpus,
    ));
    Ok(BenchReport {
        benchmark: "prealloc".into(),
        command: opts.command(),
        machine,
        method,
        rows,
        targets,
        notes,
    })
}

/// QEMU's arguments for one backend; `dir` is the hugetlbfs mount.
pub fn qemu_args(
    backend: PreallocBackend,
    size: u64,
    threads: usize,
    dir: Option<&Path>,
    prealloc: bool,
) -> Vec<String> {
    let on = if prealloc { "on" } else { "off" };
    let object = match backend {
        PreallocBackend::Hugetlbfs2M => format!(
            "memory-backend-file,id=m0,size={size},mem-path={},share=on,prealloc={on},prealloc-threads={threads}",
            dir.map_or_else(|| "DIR".into(), |d| d.display().to_string())
        ),
        PreallocBackend::Anon4K => format!(
            "memory-backend-ram,id=m0,size={size},prealloc={on},prealloc-threads={threads}"
        ),
    };
    vec!["-object".into(), object]
}

#[derive(Default)]
struct Samples {
    memvisor: Vec<f64>,
    wall: Vec<f64>,
    bare: Vec<f64>,
    qemu: Vec<f64>,
    qemu_off: Vec<f64>,
    qemu_not_slower: usize,
    method: String,
}

#[allow(clippy::too_many_arguments)]
fn measure(
    opts: &PreallocOptions,
    backend: PreallocBackend,
    threads: usize,
    scratch: Option<&HugetlbfsScratch>,
    qemu: Option<&Qemu>,
    qemu_failed: &mut bool,
    notes: &mut Vec<String>,
    progress: &dyn Fn(&str),
) -> Result<PreallocRow, BenchError> {
    let size = opts.size;
    let config = format!("{} x{threads}", backend.label());
    let mut s = Samples::default();
    // Warm-up: the first use of memory (fresh pool pages, pages the hypervisor below has not
    // backed yet) is slower; neither side should pay for it.
    wait_pool_free(scratch, size)?;
    run_memvisor(backend, size, threads, scratch)?;
    wait_pool_free(scratch, size)?;
    run_bare(backend, size, threads, scratch)?;
    for rep in 0..opts.reps {
        let memvisor_first = rep % 2 == 0;
        for step in 0..2 {
            wait_pool_free(scratch, size)?;
            if (step == 0) == memvisor_first {
                let (gibs, wall, method) = run_memvisor(backend, size, threads, scratch)?;
                s.memvisor.push(gibs);
                s.wall.push(wall);
                s.method = method;
            } else {
                s.bare.push(run_bare(backend, size, threads, scratch)?);
            }
        }
        let mut line = format!(
            "prealloc {config} rep {}/{}: memvisor {:.2} GiB/s, bare {:.2} GiB/s",
            rep + 1,
            opts.reps,
            s.memvisor.last().unwrap_or(&0.0),
            s.bare.last().unwrap_or(&0.0)
        );
        if let (Some(q), false) = (qemu, *qemu_failed) {
            let mut on = None;
            let mut off = None;
            for prealloc in [memvisor_first, !memvisor_first] {
                wait_pool_free(scratch, size)?;
                let args = qemu_args(backend, size, threads, scratch.map(|s| s.path()), prealloc);
                let disable_thp = backend == PreallocBackend::Anon4K;
                match q.time_to_prompt(&args, disable_thp, Duration::from_secs(300)) {
                    Ok(start) => {
                        if prealloc {
                            let mapped = match backend {
                                PreallocBackend::Hugetlbfs2M => start.hugetlb_bytes,
                                PreallocBackend::Anon4K => start.rss_bytes,
                            };
                            if mapped < size {
                                notes.push(format!(
                                    "QEMU {config}: prealloc=on left only {} of {} resident; QEMU \
                                     did not preallocate, no QEMU figure",
                                    Size(mapped),
                                    Size(size)
                                ));
                                *qemu_failed = true;
                                break;
                            }
                            if disable_thp && start.anon_huge_bytes > 8 << 20 {
                                notes.push(format!(
                                    "QEMU {config}: got {} of transparent huge pages despite \
                                     PR_SET_THP_DISABLE",
                                    Size(start.anon_huge_bytes)
                                ));
                            }
                            on = Some(start.to_prompt.as_secs_f64());
                        } else {
                            off = Some(start.to_prompt.as_secs_f64());
                        }
                    }
                    Err(e) => {
                        notes.push(format!("QEMU {config}: {e}; no QEMU figure"));
                        *qemu_failed = true;
                        break;
                    }
                }
            }
            if let (Some(on), Some(off)) = (on, off) {
                s.qemu_off.push(off);
                let secs = on - off;
                if secs > 0.0 {
                    s.qemu.push(gib_per_s(size, secs));
                    line.push_str(&format!(", QEMU {:.2} GiB/s", gib_per_s(size, secs)));
                } else {
                    s.qemu_not_slower += 1;
                }
            }
        }
        progress(&line);
    }
    if *qemu_failed {
        s.qemu.clear();
    } else if s.qemu_not_slower > 0 {
        notes.push(format!(
            "QEMU {config}: in {} of {} repetitions prealloc=on did not take longer than \
             prealloc=off; {} is too small to measure against QEMU's start-up jitter, those \
             repetitions have no QEMU figure",
            s.qemu_not_slower,
            opts.reps,
            Size(size)
        ));
    }
    let memvisor = Summary::of(&s.memvisor);
    let bare = Summary::of(&s.bare);
    let qemu_sum = Summary::of(&s.qemu);
    Ok(PreallocRow {
        backend,
        threads,
        size_bytes: size,
        ratio_vs_bare: median_ratio(memvisor.as_ref(), bare.as_ref()),
        ratio_vs_qemu: median_ratio(memvisor.as_ref(), qemu_sum.as_ref()),
        memvisor,
        memvisor_wall: Summary::of(&s.wall),
        memvisor_method: s.method,
        bare,
        qemu: qemu_sum,
        qemu_startup_s: Summary::of(&s.qemu_off),
    })
}

/// Waits (up to 10 s) until the scratch pool has `bytes` free again (pages of an exited QEMU
/// or a dropped mapping are normally back at once).
fn wait_pool_free(scratch: Option<&HugetlbfsScratch>, bytes: u64) -> Result<(), BenchError> {
    let Some(s) = scratch else { return Ok(()) };
    let pages = bytes / s.page_size().bytes();
    for _ in 0..1000 {
        if s.free_pages()? >= pages {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(BenchError::Check {
        what: "hugetlbfs pool".into(),
        detail: format!(
            "{} free pages expected between runs, {} found after 10 s",
            pages,
            s.free_pages()?
        ),
    })
}

fn check_resident(what: &str, resident: u64, size: u64) -> Result<(), BenchError> {
    if resident < size {
        return Err(BenchError::Check {
            what: what.into(),
            detail: format!(
                "only {} of {} resident after preallocation",
                Size(resident),
                Size(size)
            ),
        });
    }
    Ok(())
}

/// memvisor's path: returns (GiB/s of the prealloc report, GiB/s of GuestRam::new, method).
fn run_memvisor(
    backend: PreallocBackend,
    size: u64,
    threads: usize,
    scratch: Option<&HugetlbfsScratch>,
) -> Result<(f64, f64, String), BenchError> {
    let config = RegionConfig {
        size,
        backend: match (backend, scratch) {
            (PreallocBackend::Hugetlbfs2M, Some(s)) => Backend::Hugetlbfs {
                mem_path: s.path().to_path_buf(),
            },
            _ => Backend::Anon {
                shared: false,
                thp: None,
            },
        },
        prealloc: true,
        prealloc_threads: threads,
        mergeable: false,
        resident_limit: None,
    };
    let (ram, wall) = host::timed(|| GuestRam::new(std::slice::from_ref(&config)));
    let ram = ram?;
    let region = &ram.regions()[0];
    let report = region.prealloc.clone().ok_or_else(|| BenchError::Check {
        what: "memvisor prealloc".into(),
        detail: "the region has no prealloc report".into(),
    })?;
    check_resident("memvisor prealloc", ram.resident_bytes()[0], size)?;
    Ok((
        report.gib_per_s(),
        gib_per_s(size, wall.as_secs_f64()),
        report.method,
    ))
}

/// The bare loop: returns GiB/s.
fn run_bare(
    backend: PreallocBackend,
    size: u64,
    threads: usize,
    scratch: Option<&HugetlbfsScratch>,
) -> Result<f64, BenchError> {
    let map = match (backend, scratch) {
        (PreallocBackend::Hugetlbfs2M, Some(s)) => BareMapping::hugetlbfs(s.path(), size as usize)?,
        _ => BareMapping::anon(size as usize)?,
    };
    let page = backend.page_size() as usize;
    // SAFETY: `map` is a live writable mapping of `size` bytes owned here until after the call.
    let elapsed = unsafe { bare_populate(map.addr() as usize, map.len(), page, threads)? };
    // SAFETY: as above.
    let resident = unsafe { host::resident_bytes(map.addr(), map.len())? };
    check_resident("bare prealloc loop", resident, size)?;
    Ok(gib_per_s(size, elapsed.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: PreallocBackend, threads: usize) -> PreallocRow {
        let s = Summary::of(&[1.0, 2.0, 3.0]);
        PreallocRow {
            backend,
            threads,
            size_bytes: 2 << 30,
            memvisor: s.clone(),
            memvisor_wall: s.clone(),
            memvisor_method: "populate_write".into(),
            bare: s.clone(),
            ratio_vs_bare: Some(1.0),
            qemu: None,
            qemu_startup_s: None,
            ratio_vs_qemu: None,
        }
    }

    #[test]
    fn table_and_json_have_every_configuration() {
        let rows: Vec<PreallocRow> = PreallocBackend::ALL
            .iter()
            .flat_map(|b| [1, 2].map(|t| row(*b, t)))
            .collect();
        let report = BenchReport {
            benchmark: "prealloc".into(),
            command: PreallocOptions::default().command(),
            machine: Machine::describe(),
            method: vec!["m".into()],
            rows,
            targets: vec![Target::judge("a / b", 0.9, &[("x".into(), Some(1.0))])],
            notes: vec!["n".into()],
        };
        let text = report.to_text();
        for config in ["hugetlbfs 2M", "anon 4K"] {
            assert_eq!(text.matches(config).count(), 2, "{text}");
        }
        assert!(text.contains("1.00 / 2.00 / 3.00"));
        assert!(text.contains("command: memvisor bench prealloc --size 2G --reps 3"));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let rows = json["rows"].as_array().unwrap();
        let configs: Vec<(String, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r["backend"].as_str().unwrap().to_string(),
                    r["threads"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            configs,
            vec![
                ("hugetlbfs-2M".into(), 1),
                ("hugetlbfs-2M".into(), 2),
                ("anon-4K".into(), 1),
                ("anon-4K".into(), 2)
            ]
        );
        assert_eq!(rows[0]["memvisor"]["median"], 2.0);
        assert!(rows[0]["qemu"].is_null());
        assert!(json["machine"]["cpu_model"].is_string());
        assert_eq!(json["targets"][0]["met"], true);
    }

    #[test]
    fn options() {
        let o = PreallocOptions {
            size: 64 << 20,
            reps: 1,
            threads: vec![2],
            backends: vec![PreallocBackend::Anon4K],
            qemu: QemuChoice::Skip,
        };
        assert_eq!(
            o.command(),
            "memvisor bench prealloc --size 64M --reps 1 --threads 2 --backends anon --no-qemu"
        );
        assert!(o.check().is_ok());
        let bad = PreallocOptions {
            size: 3 << 20,
            ..PreallocOptions::default()
        };
        assert!(bad.check().unwrap_err().to_string().contains("2 MiB"));
        assert_eq!("hugetlbfs".parse(), Ok(PreallocBackend::Hugetlbfs2M));
        assert!("x".parse::<PreallocBackend>().is_err());
        assert_eq!(size_arg(2 << 30), "2G");
        assert_eq!(size_arg(4096), "4096");
    }

    #[test]
    fn qemu_arguments() {
        let a = qemu_args(
            PreallocBackend::Hugetlbfs2M,
            1 << 30,
            2,
            Some(Path::new("/m")),
            true,
        );
        assert_eq!(
            a[1],
            "memory-backend-file,id=m0,size=1073741824,mem-path=/m,share=on,prealloc=on,prealloc-threads=2"
        );
        let b = qemu_args(PreallocBackend::Anon4K, 1 << 30, 1, None, false);
        assert_eq!(
            b[1],
            "memory-backend-ram,id=m0,size=1073741824,prealloc=off,prealloc-threads=1"
        );
    }

    #[test]
    fn bare_populate_faults_in_anon_memory() {
        let map = BareMapping::anon(8 << 20).unwrap();
        // SAFETY: `map` is live and writable for the whole call.
        unsafe { bare_populate(map.addr() as usize, map.len(), 4096, 2).unwrap() };
        // SAFETY: as above.
        let resident = unsafe { host::resident_bytes(map.addr(), map.len()).unwrap() };
        assert_eq!(resident, 8 << 20);
    }
}
