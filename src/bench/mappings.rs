//! `memvisor bench mappings`: how long memvisor takes to produce the GPA→HPA map of a guest
//! ([`crate::report::mappings::map`], what `GET /memory/mappings` serves), in ms per GiB, beside raw
//! reads of the same host range in the same run:
//!
//! - `raw pagemap`: `pread` of `/proc/self/pagemap` over the region's host range in 512 KiB
//!   batches, counting present entries, nothing else;
//! - `raw pagemap + kpageflags`: the same, plus one `pread` of `/proc/kpageflags` per run of
//!   consecutive frame numbers (what any tool needs for page kinds), counting THP pages.
//!
//! The guest RAM is one anonymous region built by the memory module with `prealloc=on`, so every
//! page is present (a map of absent pages would measure nothing). The three readers alternate
//! within each repetition (rotating who goes first); each run's page counts are checked against
//! the others.

use super::prealloc::size_arg;
use super::stats::{median_ratio, Summary};
use super::table::{min_med_max, ratio_cell, Align, Table};
use super::{host, BenchError, BenchReport, BenchRow, Machine};
use crate::config::{Backend, RegionConfig, Size};
use crate::host::cpus::thread_cpu_time;
use crate::memory::GuestRam;
use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::str::FromStr;
use std::time::Duration;

const PAGE: u64 = 4096;
const GIB: f64 = (1u64 << 30) as f64;
/// Target for memvisor's map (issue 5): at most this many ms per GiB of guest RAM.
pub const TARGET_MS_PER_GIB: f64 = 50.0;
/// Entries per pagemap `pread` of the raw baselines (512 KiB).
pub const RAW_BATCH: usize = 64 * 1024;

/// The host pages behind the guest region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Backing {
    /// Anonymous memory with `MADV_NOHUGEPAGE`: 4 KiB pages, one pagemap entry and (usually)
    /// one short frame run per page: the most work for a map.
    #[serde(rename = "anon-4K")]
    Anon4K,
    /// Anonymous memory with `MADV_HUGEPAGE`: transparent huge pages where the kernel has them.
    #[serde(rename = "anon-THP")]
    Thp,
    /// Anonymous memory with no THP advice (memvisor's default region): 4 KiB pages on a host
    /// whose THP mode is `madvise`, but transparent huge pages are possible, so memvisor reads
    /// kpageflags for every page that is not PMD-mapped.
    #[serde(rename = "anon-default")]
    Default,
}

impl Backing {
    /// Every backing, in table order.
    pub const ALL: [Backing; 3] = [Backing::Anon4K, Backing::Default, Backing::Thp];

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Backing::Anon4K => "anon 4K (thp=off)",
            Backing::Thp => "anon THP (thp=on)",
            Backing::Default => "anon default",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Backing::Anon4K => "4k",
            Backing::Thp => "thp",
            Backing::Default => "default",
        }
    }

    /// The region's `thp` option.
    fn thp(self) -> Option<bool> {
        match self {
            Backing::Anon4K => Some(false),
            Backing::Thp => Some(true),
            Backing::Default => None,
        }
    }
}

impl FromStr for Backing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "4k" | "anon" | "anon-4k" => Ok(Backing::Anon4K),
            "thp" | "anon-thp" => Ok(Backing::Thp),
            "default" | "anon-default" => Ok(Backing::Default),
            _ => Err(format!("`{s}`: write 4k, default or thp")),
        }
    }
}

/// Options of `memvisor bench mappings`.
#[derive(Clone, Debug)]
pub struct MappingsOptions {
    /// Guest RAM size (a multiple of 2 MiB).
    pub size: u64,
    /// Repetitions of each reader.
    pub reps: usize,
    /// Host backings of the guest RAM, one after the other.
    pub backings: Vec<Backing>,
}

impl Default for MappingsOptions {
    fn default() -> Self {
        MappingsOptions {
            size: 4 << 30,
            reps: 5,
            backings: Backing::ALL.to_vec(),
        }
    }
}

impl MappingsOptions {
    /// The command line these options correspond to.
    pub fn command(&self) -> String {
        format!(
            "memvisor bench mappings --size {} --reps {} --backings {}",
            size_arg(self.size),
            self.reps,
            self.backings
                .iter()
                .map(|b| b.arg())
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    fn check(&self) -> Result<(), BenchError> {
        BenchError::check_size(self.size, 2 << 20, "2 MiB", "4G")?;
        BenchError::check_reps(self.reps)?;
        if self.backings.is_empty() {
            return Err(BenchError::Option {
                option: "--backings",
                reason: "give at least one of 4k, default, thp".into(),
            });
        }
        Ok(())
    }
}

/// Which reader a row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reader {
    /// `mappings::map` over all guest RAM.
    Memvisor,
    /// pagemap only.
    RawPagemap,
    /// pagemap and kpageflags.
    RawPagemapKpageflags,
}

impl Reader {
    /// Every reader, in table order.
    pub const ALL: [Reader; 3] = [
        Reader::Memvisor,
        Reader::RawPagemap,
        Reader::RawPagemapKpageflags,
    ];

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Reader::Memvisor => "memvisor GPA->HPA map (mappings::map)",
            Reader::RawPagemap => "raw pagemap pread",
            Reader::RawPagemapKpageflags => "raw pagemap + kpageflags pread",
        }
    }
}

/// One reader's results on one backing.
#[derive(Clone, Debug, Serialize)]
pub struct MappingsRow {
    /// The guest RAM's backing.
    pub backing: Backing,
    /// The reader.
    pub reader: Reader,
    /// 4 KiB pages it covered per run.
    pub pages: u64,
    /// Of which present.
    pub present_pages: u64,
    /// Milliseconds per GiB of guest RAM.
    pub ms_per_gib: Option<Summary>,
    /// Milliseconds per run.
    pub ms: Option<Summary>,
    /// CPU time of the reading thread (user + system) in ms per GiB: the work itself, without
    /// the time other processes had the CPU.
    pub cpu_ms_per_gib: Option<Summary>,
    /// This row's median ms/GiB over the raw pagemap row's (1.00 = as fast as the bare read;
    /// lower is better).
    pub x_raw_pagemap: Option<f64>,
    /// Runs in memvisor's map (memvisor row only).
    pub runs: Option<u64>,
}

impl BenchRow for MappingsRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("backing", Align::Left),
            ("reader", Align::Left),
            ("pages", Align::Right),
            ("present", Align::Right),
            ("ms/GiB min/med/max", Align::Right),
            ("ms per run (med)", Align::Right),
            ("CPU ms/GiB (med)", Align::Right),
            ("x raw pagemap", Align::Right),
            ("runs", Align::Right),
        ]);
        for r in rows {
            t.row(vec![
                r.backing.label().into(),
                r.reader.label().into(),
                r.pages.to_string(),
                r.present_pages.to_string(),
                min_med_max(r.ms_per_gib.as_ref(), 1),
                super::table::med(r.ms.as_ref(), 1),
                super::table::med(r.cpu_ms_per_gib.as_ref(), 1),
                ratio_cell(r.x_raw_pagemap),
                r.runs.map_or_else(|| "-".into(), |n| n.to_string()),
            ]);
        }
        t
    }
}

/// What one raw read found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCount {
    /// Entries read.
    pub pages: u64,
    /// Present entries.
    pub present: u64,
    /// Pages whose kpageflags say THP (0 without kpageflags).
    pub thp: u64,
    /// `pread`s of kpageflags.
    pub kpageflags_reads: u64,
}

/// Host virtual ranges `(addr, len)` of all of `ram`, in guest-physical order (what the map
/// walks).
pub fn host_ranges(ram: &GuestRam) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ram
        .regions()
        .iter()
        .flat_map(|r| {
            r.extents
                .iter()
                .map(move |e| (r.host_addr() as u64 + e.offset, e.len))
        })
        .collect();
    v.sort_unstable();
    v
}

fn read_u64s(f: &File, buf: &mut [u64], index: u64) -> std::io::Result<()> {
    // SAFETY: `buf` is a live, exclusively borrowed slice of u64; viewing its bytes as u8 is
    // valid for any bit pattern and the length covers exactly its memory.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(buf))
    };
    f.read_exact_at(bytes, index * 8)
}

/// The raw baseline: reads the pagemap entries of `ranges` (page-aligned host virtual ranges of
/// this process) in [`RAW_BATCH`]-entry `pread`s; with `kpageflags`, also reads the flags of
/// every present frame, one `pread` per run of consecutive frame numbers. No memvisor code.
pub fn raw_read(
    pagemap: &File,
    kpageflags: Option<&File>,
    ranges: &[(u64, u64)],
) -> std::io::Result<RawCount> {
    const PRESENT: u64 = 1 << 63;
    const PFN: u64 = (1 << 55) - 1;
    const KPF_THP: u64 = 1 << 22;
    let mut c = RawCount::default();
    let mut buf = vec![0u64; RAW_BATCH];
    let mut kbuf = vec![0u64; RAW_BATCH];
    // The current run of consecutive frames: (first pfn, count).
    let mut run: Option<(u64, u64)> = None;
    let mut flush = |run: (u64, u64), c: &mut RawCount| -> std::io::Result<()> {
        let Some(f) = kpageflags else { return Ok(()) };
        let mut done = 0;
        while done < run.1 {
            let n = (run.1 - done).min(RAW_BATCH as u64) as usize;
            read_u64s(f, &mut kbuf[..n], run.0 + done)?;
            c.kpageflags_reads += 1;
            c.thp += kbuf[..n].iter().filter(|k| *k & KPF_THP != 0).count() as u64;
            done += n as u64;
        }
        Ok(())
    };
    for &(addr, len) in ranges {
        let first = addr / PAGE;
        let pages = len / PAGE;
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(RAW_BATCH as u64) as usize;
            read_u64s(pagemap, &mut buf[..n], first + done)?;
            for &e in &buf[..n] {
                c.pages += 1;
                if e & PRESENT == 0 {
                    continue;
                }
                c.present += 1;
                let pfn = e & PFN;
                if pfn == 0 || kpageflags.is_none() {
                    continue;
                }
                run = match run {
                    Some((s, k)) if s + k == pfn => Some((s, k + 1)),
                    Some(r) => {
                        flush(r, &mut c)?;
                        Some((pfn, 1))
                    }
                    None => Some((pfn, 1)),
                };
            }
            done += n as u64;
        }
    }
    if let Some(r) = run {
        flush(r, &mut c)?;
    }
    Ok(c)
}

/// Guest RAM for the benchmark: one region of `size`, populated by the memory module.
pub fn populated_ram(size: u64, backing: Backing) -> Result<GuestRam, BenchError> {
    let config = RegionConfig {
        size,
        backend: Backend::Anon {
            shared: false,
            thp: backing.thp(),
        },
        prealloc: true,
        prealloc_threads: 0,
        mergeable: false,
        resident_limit: None,
    };
    Ok(GuestRam::new(std::slice::from_ref(&config))?)
}

/// What one memvisor map covered: (pages, present pages, runs, THP pages).
fn map_counts(m: &crate::report::mappings::MappingReport) -> (u64, u64, u64, u64) {
    let sum = |f: fn(&crate::report::mappings::Totals) -> u64| {
        m.regions.iter().map(|r| f(&r.totals)).sum::<u64>() / PAGE
    };
    (
        sum(|t| t.bytes),
        sum(|t| t.present),
        m.regions.iter().map(|r| r.runs.len() as u64).sum(),
        sum(|t| t.thp),
    )
}

/// Runs the benchmark on guest RAM it builds itself, one backing after the other; `progress`
/// gets a line per repetition.
pub fn run(
    opts: &MappingsOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport<MappingsRow>, BenchError> {
    opts.check()?;
    let load_before = super::machine::load_average();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut ranges = 0;
    for &backing in &opts.backings {
        progress(&format!(
            "mappings: populating {} of {} guest RAM",
            Size(opts.size),
            backing.label()
        ));
        let ram = populated_ram(opts.size, backing)?;
        ranges = host_ranges(&ram).len();
        let (r, n) = measure(&ram, backing, opts.reps, progress)?;
        rows.extend(r);
        for note in n {
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    let machine = Machine::describe();
    notes.extend(super::machine::load_note(
        load_before,
        super::machine::load_average(),
        machine.cpus,
    ));
    Ok(BenchReport {
        benchmark: "mappings".into(),
        command: opts.command(),
        machine,
        method: method(opts.size, ranges),
        targets: vec![target(&rows)],
        rows,
        notes,
    })
}

/// The verdict on memvisor's median ms/GiB in `rows`.
pub fn target(rows: &[MappingsRow]) -> super::Target {
    let figures: Vec<(String, Option<f64>)> = rows
        .iter()
        .filter(|r| r.reader == Reader::Memvisor)
        .map(|r| {
            (
                r.backing.label().to_string(),
                r.ms_per_gib.as_ref().map(|s| s.median),
            )
        })
        .collect();
    super::Target::at_most(
        "memvisor GPA->HPA map, median wall time",
        TARGET_MS_PER_GIB,
        "ms/GiB",
        &figures,
    )
}

/// How the figures were measured.
pub fn method(size: u64, ranges: usize) -> Vec<String> {
    vec![
        format!(
            "guest RAM: one {} anonymous region per backing, built by GuestRam::new with \
             prealloc=on (MADV_POPULATE_WRITE), so every page is present; {ranges} host \
             range(s) (a region crossing the 3-4 GiB MMIO hole is split)",
            Size(size)
        ),
        "memvisor: crate::report::mappings::map(&ram, None), what GET /memory/mappings serves: \
         pagemap + kpageflags, run-length encoded into GPA->HPA runs with page size, flags \
         and per-region totals"
            .into(),
        format!(
            "raw pagemap: pread of /proc/self/pagemap over the same host ranges in \
             {RAW_BATCH}-entry (512 KiB) batches, counting present entries; raw pagemap + \
             kpageflags: the same plus one pread of /proc/kpageflags per run of consecutive \
             frame numbers, counting THP pages"
        ),
        "one untimed warm-up of each, then the readers alternate with a rotating order; \
         every run's page count is checked against the other readers'; ms/GiB is wall time, \
         CPU ms/GiB the reading thread's CPU time; x raw pagemap is the ratio of median \
         ms/GiB (lower is better)"
            .into(),
    ]
}

/// Measures every reader on `ram` (all of it is mapped each time): one row per reader, and
/// notes.
pub fn measure(
    ram: &GuestRam,
    backing: Backing,
    reps: usize,
    progress: &dyn Fn(&str),
) -> Result<(Vec<MappingsRow>, Vec<String>), BenchError> {
    let mut notes = Vec::new();
    let ranges = host_ranges(ram);
    let bytes: u64 = ranges.iter().map(|r| r.1).sum();
    let gib = bytes as f64 / GIB;
    let pagemap = File::open("/proc/self/pagemap").map_err(BenchError::io(
        "opening /proc/self/pagemap",
        "the kernel needs CONFIG_PROC_PAGE_MONITOR",
    ))?;
    let kpageflags = File::open("/proc/kpageflags").ok();
    if kpageflags.is_none() {
        notes.push(
            "/proc/kpageflags is not readable (needs root): the kpageflags baseline is not \
             measured and memvisor's map has no page kinds, so it does less work than as root"
                .into(),
        );
    }
    if !host::is_root() {
        notes.push(
            "not root: frame numbers are hidden, so memvisor's map has no addresses and the \
             figures describe a cheaper map than as root"
                .into(),
        );
    }
    let mut ms: [Vec<f64>; 3] = Default::default();
    let mut cpu_ms: [Vec<f64>; 3] = Default::default();
    let mut counts: [Option<(u64, u64)>; 3] = [None; 3];
    let mut runs = 0;
    let mut check = |k: usize, got: (u64, u64)| -> Result<(), BenchError> {
        if let Some(prev) = counts.iter().flatten().next() {
            if prev.0 != got.0 {
                return Err(BenchError::Check {
                    what: Reader::ALL[k].label().into(),
                    detail: format!("covered {} pages, another reader {}", got.0, prev.0),
                });
            }
        }
        counts[k] = Some(got);
        Ok(())
    };
    let readers: Vec<Reader> = Reader::ALL
        .into_iter()
        .filter(|r| *r != Reader::RawPagemapKpageflags || kpageflags.is_some())
        .collect();
    // One untimed warm-up of each (page tables and pagemap code paths in the caches).
    for rep in 0..=reps {
        for i in 0..readers.len() {
            let reader = readers[(i + rep) % readers.len()];
            let k = reader as usize;
            let cpu_before = thread_cpu_time().unwrap_or_default();
            let elapsed: Duration = match reader {
                Reader::Memvisor => {
                    let (m, t) = host::timed(|| crate::report::mappings::map(ram, None));
                    let m = m.map_err(|e| BenchError::Check {
                        what: "memvisor GPA->HPA map".into(),
                        detail: e.to_string(),
                    })?;
                    let (pages, present, n, _) = map_counts(&m);
                    runs = n;
                    check(k, (pages, present))?;
                    t
                }
                Reader::RawPagemap | Reader::RawPagemapKpageflags => {
                    let kf = (reader == Reader::RawPagemapKpageflags)
                        .then_some(kpageflags.as_ref())
                        .flatten();
                    let (c, t) = host::timed(|| raw_read(&pagemap, kf, &ranges));
                    let c = c.map_err(BenchError::io(
                        "reading pagemap/kpageflags for the raw baseline",
                        "run as root",
                    ))?;
                    check(k, (c.pages, c.present))?;
                    t
                }
            };
            if rep > 0 {
                ms[k].push(elapsed.as_secs_f64() * 1e3);
                cpu_ms[k]
                    .push((thread_cpu_time().unwrap_or_default() - cpu_before).as_secs_f64() * 1e3);
            }
        }
        if rep > 0 {
            let last = |r: Reader| ms[r as usize].last().map_or(0.0, |v| v / gib);
            progress(&format!(
                "mappings {} rep {rep}/{reps}: memvisor {:.1} ms/GiB, raw pagemap {:.1} ms/GiB, \
                 raw pagemap+kpageflags {:.1} ms/GiB",
                backing.label(),
                last(Reader::Memvisor),
                last(Reader::RawPagemap),
                last(Reader::RawPagemapKpageflags),
            ));
        }
    }
    let per_gib = |v: &[f64]| Summary::of(&v.iter().map(|m| m / gib).collect::<Vec<_>>());
    let raw = per_gib(&ms[Reader::RawPagemap as usize]);
    let rows: Vec<MappingsRow> = Reader::ALL
        .into_iter()
        .map(|reader| {
            let k = reader as usize;
            let s = per_gib(&ms[k]);
            let (pages, present) = counts[k].unwrap_or((0, 0));
            MappingsRow {
                backing,
                reader,
                pages,
                present_pages: present,
                x_raw_pagemap: median_ratio(s.as_ref(), raw.as_ref()),
                ms_per_gib: s,
                ms: Summary::of(&ms[k]),
                cpu_ms_per_gib: per_gib(&cpu_ms[k]),
                runs: (reader == Reader::Memvisor).then_some(runs),
            }
        })
        .collect();
    if rows
        .iter()
        .any(|r| r.present_pages != r.pages && r.pages != 0)
    {
        notes.push(format!(
            "{}: not every page was present while mapping (was memory reclaimed?)",
            backing.label()
        ));
    }
    Ok((rows, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_read_counts_what_the_map_counts() {
        let ram = populated_ram(8 << 20, Backing::Anon4K).unwrap();
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let ranges = host_ranges(&ram);
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), 8 << 20);
        let c = raw_read(&pagemap, None, &ranges).unwrap();
        assert_eq!(c.pages, 2048);
        assert_eq!(c.present, 2048, "prealloc=on populated every page");
        let m = crate::report::mappings::map(&ram, None).unwrap();
        let (pages, present, runs, _) = map_counts(&m);
        assert_eq!((pages, present), (c.pages, c.present));
        assert!(runs >= 1);
        if let Ok(kf) = File::open("/proc/kpageflags") {
            let c2 = raw_read(&pagemap, Some(&kf), &ranges).unwrap();
            assert_eq!((c2.pages, c2.present), (c.pages, c.present));
            assert!(c2.kpageflags_reads >= 1 && c2.kpageflags_reads <= 2048);
        }
    }

    #[test]
    fn options_and_command() {
        let o = MappingsOptions::default();
        assert_eq!(
            o.command(),
            "memvisor bench mappings --size 4G --reps 5 --backings 4k,default,thp"
        );
        assert!(o.check().is_ok());
        assert!(MappingsOptions {
            size: 4096,
            ..o.clone()
        }
        .check()
        .is_err());
        assert!(MappingsOptions {
            reps: 0,
            ..o.clone()
        }
        .check()
        .is_err());
        assert!(MappingsOptions {
            backings: vec![],
            ..o
        }
        .check()
        .is_err());
        assert_eq!("thp".parse(), Ok(Backing::Thp));
        assert!("1g".parse::<Backing>().is_err());
    }
}
