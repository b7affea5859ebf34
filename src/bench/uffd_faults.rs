//! `memvisor bench uffd`: how many missing-page faults per second memvisor's in-process
//! userfaultfd handler serves (a `backend=uffd` region built by `GuestRam::new`, whose pager
//! runs `uffd::start`, fetch unit 4 KiB), beside [`super::minimal_uffd`], a bare loop doing the
//! same job, in the same run.
//!
//! A host thread reads one byte of every 4 KiB page of the region, in order; each read faults
//! once and waits for the server. Sources: zero pages, and a file image written beforehand that
//! is made cold (`fsync` + `posix_fadvise(DONTNEED)`) or warm (read once) before each run; and
//! the in-VMM swap (`vmm-swap`): an anonymous region holding the image's bytes is swapped out
//! with `GuestRam::swap_out` (which leaves its file cold) and faulted back from its swap file,
//! beside the minimal loop serving the cold image. Per repetition and source, memvisor and the
//! loop alternate (AB, BA, ...).

use super::host;
use super::minimal_uffd::MinimalUffd;
use super::prealloc::size_arg;
use super::stats::{median_ratio, Summary, Target};
use super::table::min_med_max;
use super::{Align, BenchError, BenchReport, BenchRow, Machine, Table};
use crate::config::{Backend, RegionConfig, Size};
use crate::memory::{GuestRam, Pager};
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const MAGIC: u64 = 0x6d65_6d76_6973_6f72; // "memvisor"

/// Where the bytes of faulting pages come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultSource {
    /// Zero pages (`UFFDIO_ZEROPAGE`).
    Zero,
    /// A file image evicted from the page cache before each run.
    FileCold,
    /// A file image in the page cache.
    FileWarm,
    /// The in-VMM swap: pages swapped out to a swap file (cold) and faulted back.
    VmmSwap,
}

impl FaultSource {
    /// Every source, in table order.
    pub const ALL: [FaultSource; 4] = [
        FaultSource::Zero,
        FaultSource::FileCold,
        FaultSource::FileWarm,
        FaultSource::VmmSwap,
    ];

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            FaultSource::Zero => "zero",
            FaultSource::FileCold => "file (cold)",
            FaultSource::FileWarm => "file (warm)",
            FaultSource::VmmSwap => "in-VMM swap file (cold)",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            FaultSource::Zero => "zero",
            FaultSource::FileCold => "file-cold",
            FaultSource::FileWarm => "file-warm",
            FaultSource::VmmSwap => "vmm-swap",
        }
    }
}

impl FromStr for FaultSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zero" => Ok(FaultSource::Zero),
            "file-cold" | "cold" => Ok(FaultSource::FileCold),
            "file-warm" | "warm" => Ok(FaultSource::FileWarm),
            "vmm-swap" => Ok(FaultSource::VmmSwap),
            _ => Err(format!(
                "`{s}`: write zero, file-cold, file-warm or vmm-swap"
            )),
        }
    }
}

/// Options of `memvisor bench uffd`.
#[derive(Clone, Debug)]
pub struct UffdOptions {
    /// Region size (a multiple of 4 KiB).
    pub size: u64,
    /// Repetitions of each run.
    pub reps: usize,
    /// Sources.
    pub sources: Vec<FaultSource>,
    /// Directory for the file image (default: the temp dir); must not be tmpfs for a cold run.
    pub dir: Option<PathBuf>,
}

impl Default for UffdOptions {
    fn default() -> Self {
        UffdOptions {
            size: 256 << 20,
            reps: 3,
            sources: FaultSource::ALL.to_vec(),
            dir: None,
        }
    }
}

impl UffdOptions {
    /// The command line these options correspond to.
    pub fn command(&self) -> String {
        let mut c = format!(
            "memvisor bench uffd --size {} --reps {}",
            size_arg(self.size),
            self.reps
        );
        if self.sources != FaultSource::ALL {
            let s: Vec<&str> = self.sources.iter().map(|s| s.arg()).collect();
            c.push_str(&format!(" --sources {}", s.join(",")));
        }
        if let Some(d) = &self.dir {
            c.push_str(&format!(" --dir {}", d.display()));
        }
        c
    }

    fn check(&self) -> Result<(), BenchError> {
        BenchError::check_size(self.size, PAGE as u64, "4 KiB", "256M")?;
        BenchError::check_reps(self.reps)?;
        if self.sources.is_empty() {
            return Err(BenchError::Option {
                option: "--sources",
                reason: "give at least one of zero, file-cold, file-warm, vmm-swap".into(),
            });
        }
        Ok(())
    }
}

/// One source's results; rates in pages per second.
#[derive(Clone, Debug, Serialize)]
pub struct UffdRow {
    /// The source.
    pub source: FaultSource,
    /// Pages touched per run (one fault each).
    pub pages: u64,
    /// memvisor's handler.
    pub memvisor: Option<Summary>,
    /// The minimal loop.
    pub minimal: Option<Summary>,
    /// memvisor / minimal, medians.
    pub ratio: Option<f64>,
    /// Faults memvisor's handler counted in the last run.
    pub memvisor_faults: u64,
    /// Faults the minimal loop served in the last run.
    pub minimal_faults: u64,
    /// For file sources: the largest fraction of the image in the page cache just before a run.
    pub cached_before_run: Option<f64>,
}

fn kilo(s: Option<&Summary>) -> Option<Summary> {
    s.and_then(|s| Summary::of(&s.samples.iter().map(|v| v / 1000.0).collect::<Vec<_>>()))
}

fn us_per_fault(s: Option<&Summary>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{:.1}", 1e6 / s.median))
}

impl BenchRow for UffdRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("source", Align::Left),
            ("pages", Align::Right),
            ("memvisor kpages/s min/med/max", Align::Right),
            ("mv us/fault", Align::Right),
            ("minimal loop kpages/s", Align::Right),
            ("loop us/fault", Align::Right),
            ("mv/minimal", Align::Right),
            ("cached", Align::Right),
        ]);
        for r in rows {
            t.row(vec![
                r.source.label().into(),
                r.pages.to_string(),
                min_med_max(kilo(r.memvisor.as_ref()).as_ref(), 1),
                us_per_fault(r.memvisor.as_ref()),
                min_med_max(kilo(r.minimal.as_ref()).as_ref(), 1),
                us_per_fault(r.minimal.as_ref()),
                super::table::ratio_cell(r.ratio),
                r.cached_before_run
                    .map_or_else(|| "-".into(), |c| format!("{:.0}%", c * 100.0)),
            ]);
        }
        t
    }
}

/// The first 8 bytes of page `i` of the image.
fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ MAGIC
}

/// The file image, removed on drop.
struct Image {
    path: PathBuf,
    file: File,
    len: usize,
}

impl Image {
    fn create(dir: &Path, len: usize) -> Result<Image, BenchError> {
        let path = dir.join(format!("memvisor-bench-uffd-{}.img", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(BenchError::io(
                "creating the uffd benchmark's image file",
                "give a writable directory with --dir",
            ))?;
        let image = Image {
            path,
            file: file
                .try_clone()
                .map_err(BenchError::io("dup", "see dup(2)"))?,
            len,
        };
        let mut chunk = vec![0u8; 1 << 20];
        let mut page = 0;
        while page * PAGE < len {
            let n = (len - page * PAGE).min(chunk.len());
            for (j, p) in chunk[..n].chunks_mut(PAGE).enumerate() {
                p.fill((page + j) as u8 | 1);
                p[..8].copy_from_slice(&pattern(page + j).to_ne_bytes());
            }
            file.write_all(&chunk[..n]).map_err(BenchError::io(
                "writing the uffd benchmark's image file",
                "is there enough disk space in the image directory (--dir)?",
            ))?;
            page += n / PAGE;
        }
        file.sync_all()
            .map_err(BenchError::io("fsync of the image file", "see fsync(2)"))?;
        Ok(image)
    }

    /// Evicts the image from the page cache (clean pages only, hence the fsync before).
    fn make_cold(&self) -> Result<(), BenchError> {
        // SAFETY: advice on our own open file; no memory is involved.
        let rc =
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(BenchError::Sys {
                what: "posix_fadvise(DONTNEED) of the image",
                source: std::io::Error::from_raw_os_error(rc),
                hint: "see posix_fadvise(2)",
            });
        }
        Ok(())
    }

    /// Reads the whole image once, so it is in the page cache.
    fn make_warm(&self) -> Result<(), BenchError> {
        let mut f =
            File::open(&self.path).map_err(BenchError::io("opening the image", "see open(2)"))?;
        let mut buf = vec![0u8; 1 << 20];
        while f
            .read(&mut buf)
            .map_err(BenchError::io("reading the image", "see read(2)"))?
            > 0
        {}
        Ok(())
    }

    /// Fraction of the image in the page cache (`mincore` of a read-only mapping).
    fn cached_fraction(&self) -> Result<f64, BenchError> {
        // SAFETY: a fresh read-only shared mapping of our file, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(BenchError::last_os("mmap of the image", "see mmap(2)"));
        }
        // SAFETY: `addr` is the live mapping just made, `self.len` long.
        let resident = unsafe { host::resident_bytes(addr.cast(), self.len) };
        // SAFETY: unmaps exactly the mapping made above.
        unsafe { libc::munmap(addr, self.len) };
        Ok(resident? as f64 / self.len as f64)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one byte of every page of `[addr, addr+len)` on a new thread; returns the time it took.
///
/// # Safety
/// `[addr, addr+len)` must be a live readable mapping for the whole call.
unsafe fn touch_pages(addr: usize, len: usize) -> Duration {
    std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            for off in (0..len).step_by(PAGE) {
                // SAFETY: inside the caller's live mapping (this function's contract).
                unsafe { ((addr + off) as *const u8).read_volatile() };
            }
            start.elapsed()
        })
        .join()
        .expect("touch thread panicked")
    })
}

/// Checks the first word of every page: 0 for zero pages, the image's pattern otherwise.
///
/// # Safety
/// `[addr, addr+len)` must be a live readable mapping whose pages are all present.
unsafe fn verify(what: &str, addr: usize, len: usize, from_file: bool) -> Result<(), BenchError> {
    for (i, off) in (0..len).step_by(PAGE).enumerate() {
        // SAFETY: inside the caller's live mapping; aligned to 8.
        let got = unsafe { ((addr + off) as *const u64).read_volatile() };
        let want = if from_file { pattern(i) } else { 0 };
        if got != want {
            return Err(BenchError::Check {
                what: what.into(),
                detail: format!("page {i} starts with {got:#x}, expected {want:#x}"),
            });
        }
    }
    Ok(())
}

/// Writes the image's bytes into `[addr, addr+len)`.
///
/// # Safety
/// `[addr, addr+len)` must be a live writable mapping nobody else uses meanwhile.
unsafe fn fill_like_image(addr: usize, len: usize) {
    for (i, off) in (0..len).step_by(PAGE).enumerate() {
        // SAFETY: one page inside the caller's mapping.
        unsafe {
            std::ptr::write_bytes((addr + off) as *mut u8, i as u8 | 1, PAGE);
            ((addr + off) as *mut u64).write(pattern(i));
        }
    }
}

/// One memvisor run through the in-VMM swap: an anonymous region filled like the image,
/// swapped out to a file in `dir` (untimed), then faulted back. Pages/s and faults counted.
fn run_vmm_swap(len: usize, dir: &Path) -> Result<(f64, u64), BenchError> {
    let mut config = RegionConfig::anon(len as u64);
    config.backend = Backend::Anon {
        shared: false,
        thp: Some(false),
    };
    let ram = GuestRam::new(std::slice::from_ref(&config))?;
    let addr = ram.regions()[0].host_addr() as usize;
    // SAFETY: the region's mapping lives as long as `ram`; nothing else uses it.
    unsafe { fill_like_image(addr, len) };
    let file = dir.join(format!(
        "memvisor-bench-vmm-swap-{}.swap",
        std::process::id()
    ));
    let request = crate::memory::SwapOutRequest { file, only: None };
    ram.swap_out(&request).map_err(|e| BenchError::Check {
        what: "in-VMM swap-out".into(),
        detail: e.to_string(),
    })?;
    // SAFETY: as above.
    let elapsed = unsafe { touch_pages(addr, len) };
    // SAFETY: as above; every page was just faulted in.
    unsafe { verify("in-VMM swap", addr, len, true)? };
    let faults = ram.swap_status().faults;
    // Dropping guest RAM stops the handler and removes the swap file.
    drop(ram);
    Ok(((len / PAGE) as f64 / elapsed.as_secs_f64(), faults))
}

/// One memvisor run: pages/s and the faults the handler counted.
fn run_memvisor(len: usize, image: Option<&Image>) -> Result<(f64, u64), BenchError> {
    let config = RegionConfig {
        size: len as u64,
        backend: Backend::Uffd {
            source: image.map(|i| i.path.clone()),
            fetch: PAGE as u64,
            external_socket: None,
        },
        prealloc: false,
        prealloc_threads: 0,
        mergeable: false,
        resident_limit: None,
    };
    let ram = GuestRam::new(std::slice::from_ref(&config))?;
    let region = &ram.regions()[0];
    let addr = region.host_addr() as usize;
    // SAFETY: the region's mapping lives as long as `ram`, which outlives the call.
    let elapsed = unsafe { touch_pages(addr, len) };
    // SAFETY: as above; every page was just faulted in.
    unsafe { verify("memvisor uffd handler", addr, len, image.is_some())? };
    let faults = match &region.pager {
        Some(Pager::Internal(h)) => h.stats().faults,
        _ => 0,
    };
    Ok(((len / PAGE) as f64 / elapsed.as_secs_f64(), faults))
}

/// One run of the minimal loop: pages/s and the faults it served.
fn run_minimal(len: usize, image: Option<&Image>) -> Result<(f64, u64), BenchError> {
    let source = image
        .map(|i| File::open(&i.path))
        .transpose()
        .map_err(BenchError::io("opening the image", "see open(2)"))?;
    let server = MinimalUffd::start(len, source)?;
    let addr = server.addr() as usize;
    // SAFETY: the server's mapping lives until `server` is stopped below.
    let elapsed = unsafe { touch_pages(addr, len) };
    // SAFETY: as above; every page was just faulted in.
    unsafe { verify("minimal uffd loop", addr, len, image.is_some())? };
    let faults = server.stop()?;
    Ok(((len / PAGE) as f64 / elapsed.as_secs_f64(), faults))
}

/// Runs the benchmark; `progress` gets one line per repetition and source.
pub fn run(
    opts: &UffdOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport<UffdRow>, BenchError> {
    opts.check()?;
    let load_before = super::machine::load_average();
    let len = opts.size as usize;
    let mut notes = Vec::new();
    let needs_file = opts.sources.iter().any(|s| *s != FaultSource::Zero);
    let dir = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let image = if needs_file {
        progress(&format!(
            "uffd: writing a {} image in {}",
            Size(opts.size),
            dir.display()
        ));
        Some(Image::create(&dir, len)?)
    } else {
        None
    };
    let method = vec![
        "memvisor: GuestRam::new of one backend=uffd region (fetch=4K; its pager runs \
         uffd::start, the in-process handler thread), then one host thread reads one byte of \
         every 4 KiB page in order; pages/s = pages / time of that loop"
            .to_string(),
        "minimal loop: its own mmap (MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE), userfaultfd(2), \
         UFFDIO_API (no features), UFFDIO_REGISTER (missing), one thread doing poll + read + \
         UFFDIO_ZEROPAGE or pread + UFFDIO_COPY per 4 KiB fault; touched the same way"
            .to_string(),
        format!(
            "file sources: a {} image written in {}; cold = fsync + posix_fadvise(DONTNEED) \
             before each run (the `cached` column is the largest fraction left in the page \
             cache); warm = read once before each run",
            Size(opts.size),
            dir.display()
        ),
        "vmm-swap: GuestRam::new of one anonymous region (thp=off) filled with the image's \
         bytes, GuestRam::swap_out to a file in the image directory (untimed: write, fdatasync, \
         posix_fadvise(DONTNEED), MADV_DONTNEED, userfaultfd registration), then touched as \
         above, each fault served by the uffd crate's handler from the swap file; the minimal \
         loop serves the cold image"
            .to_string(),
        "one untimed warm-up run of each per source, then memvisor and the minimal loop \
         alternate (AB, BA, ...); every run maps fresh memory; \
         contents are checked after each run; mv/minimal is the ratio of medians"
            .to_string(),
    ];
    #[derive(Default)]
    struct Acc {
        mv: Vec<f64>,
        min: Vec<f64>,
        mv_faults: u64,
        min_faults: u64,
        cached: Option<f64>,
    }
    let mut acc: Vec<Acc> = opts.sources.iter().map(|_| Acc::default()).collect();
    let run_mv = |source: FaultSource, img: Option<&Image>| match source {
        FaultSource::VmmSwap => run_vmm_swap(len, &dir),
        _ => run_memvisor(len, img),
    };
    for source in &opts.sources {
        let img = (*source != FaultSource::Zero)
            .then_some(image.as_ref())
            .flatten();
        run_mv(*source, img)?;
        run_minimal(len, img)?;
    }
    for rep in 0..opts.reps {
        for (k, source) in opts.sources.iter().enumerate() {
            let img = match source {
                FaultSource::Zero => None,
                _ => image.as_ref(),
            };
            let a = &mut acc[k];
            for step in 0..2 {
                if let Some(i) = img {
                    match source {
                        FaultSource::FileCold | FaultSource::VmmSwap => i.make_cold()?,
                        _ => i.make_warm()?,
                    }
                    let c = i.cached_fraction()?;
                    a.cached = Some(a.cached.map_or(c, |old: f64| old.max(c)));
                }
                if (step == 0) == (rep % 2 == 0) {
                    let (rate, faults) = run_mv(*source, img)?;
                    a.mv.push(rate);
                    a.mv_faults = faults;
                } else {
                    let (rate, faults) = run_minimal(len, img)?;
                    a.min.push(rate);
                    a.min_faults = faults;
                }
            }
            progress(&format!(
                "uffd {} rep {}/{}: memvisor {:.0} pages/s, minimal loop {:.0} pages/s",
                source.label(),
                rep + 1,
                opts.reps,
                a.mv.last().unwrap_or(&0.0),
                a.min.last().unwrap_or(&0.0)
            ));
        }
    }
    let pages = (len / PAGE) as u64;
    let rows: Vec<UffdRow> = opts
        .sources
        .iter()
        .zip(acc)
        .map(|(source, a)| {
            let memvisor = Summary::of(&a.mv);
            let minimal = Summary::of(&a.min);
            UffdRow {
                source: *source,
                pages,
                ratio: median_ratio(memvisor.as_ref(), minimal.as_ref()),
                memvisor,
                minimal,
                memvisor_faults: a.mv_faults,
                minimal_faults: a.min_faults,
                cached_before_run: a.cached,
            }
        })
        .collect();
    for r in &rows {
        if r.memvisor_faults != pages || r.minimal_faults != pages {
            notes.push(format!(
                "{}: {} pages touched, memvisor's handler counted {} faults, the minimal loop {}",
                r.source.label(),
                pages,
                r.memvisor_faults,
                r.minimal_faults
            ));
        }
        if matches!(r.source, FaultSource::FileCold | FaultSource::VmmSwap)
            && r.cached_before_run.is_some_and(|c| c > 0.05)
        {
            notes.push(format!(
                "file (cold): up to {:.0}% of the image stayed in the page cache after \
                 posix_fadvise(DONTNEED) (is {} on tmpfs?); the run was partly warm",
                r.cached_before_run.unwrap_or(0.0) * 100.0,
                dir.display()
            ));
        }
    }
    let ratios: Vec<(String, Option<f64>)> = rows
        .iter()
        .map(|r| (r.source.label().to_string(), r.ratio))
        .collect();
    let targets = vec![Target::judge(
        "memvisor handler / minimal userfaultfd loop (median pages/s)",
        0.8,
        &ratios,
    )];
    let machine = Machine::describe();
    notes.extend(super::machine::load_note(
        load_before,
        super::machine::load_average(),
        machine.cpus,
    ));
    Ok(BenchReport {
        benchmark: "uffd".into(),
        command: opts.command(),
        machine,
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
    fn table_and_json_have_every_source() {
        let s = Summary::of(&[100_000.0, 200_000.0, 300_000.0]);
        let rows: Vec<UffdRow> = FaultSource::ALL
            .iter()
            .map(|source| UffdRow {
                source: *source,
                pages: 65536,
                memvisor: s.clone(),
                minimal: s.clone(),
                ratio: Some(1.0),
                memvisor_faults: 65536,
                minimal_faults: 65536,
                cached_before_run: (*source != FaultSource::Zero).then_some(0.0),
            })
            .collect();
        let report = BenchReport {
            benchmark: "uffd".into(),
            command: UffdOptions::default().command(),
            machine: Machine::describe(),
            method: vec![],
            rows,
            targets: vec![],
            notes: vec![],
        };
        let text = report.to_text();
        for label in [
            "zero",
            "file (cold)",
            "file (warm)",
            "in-VMM swap file (cold)",
        ] {
            assert!(text.contains(label), "{text}");
        }
        assert!(text.contains("100.0 / 200.0 / 300.0"), "{text}");
        assert!(text.contains("5.0"), "us/fault of 200k pages/s: {text}");
        assert!(text.contains("command: memvisor bench uffd --size 256M --reps 3"));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let sources: Vec<&str> = json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, vec!["zero", "file-cold", "file-warm", "vmm-swap"]);
    }

    #[test]
    fn options_and_pattern() {
        assert_eq!("file-cold".parse(), Ok(FaultSource::FileCold));
        assert_eq!("vmm-swap".parse(), Ok(FaultSource::VmmSwap));
        assert!("x".parse::<FaultSource>().is_err());
        let o = UffdOptions {
            size: 1 << 20,
            reps: 1,
            sources: vec![FaultSource::Zero],
            dir: None,
        };
        assert_eq!(
            o.command(),
            "memvisor bench uffd --size 1M --reps 1 --sources zero"
        );
        assert!(UffdOptions { size: 100, ..o }.check().is_err());
        assert_ne!(
            pattern(0),
            0,
            "page 0 of the image is told apart from a zero page"
        );
        assert_ne!(pattern(1), pattern(2));
    }
}
