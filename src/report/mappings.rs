//! GPA→HPA maps: where each guest-physical page really lives on the host.
//!
//! For each region, `/proc/self/pagemap` over its host virtual range gives presence, swap and
//! the page frame number; `/proc/kpageflags` gives what kind of frame it is (hugetlb, THP, KSM,
//! zero page, anonymous). Pages are grouped into runs: contiguous guest-physical pages that map to
//! contiguous host frames with the same page size and flags. This module only reads.
//!
//! Privilege: without CAP_SYS_ADMIN the kernel reports every PFN as 0 and `/proc/kpageflags` is
//! unreadable. The map then says so (`pfns_visible: false`) and gives no addresses, instead of
//! printing zeros as if they were addresses.

use crate::memory::GuestRam;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

// kpageflags bits.
const KPF_ANON: u64 = 1 << 12;
const KPF_HUGE: u64 = 1 << 17;
const KPF_KSM: u64 = 1 << 21;
const KPF_THP: u64 = 1 << 22;
const KPF_ZERO_PAGE: u64 = 1 << 24;

/// Mapping errors.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// pagemap could not be read.
    #[error("reading /proc/self/pagemap: {0}")]
    Pagemap(std::io::Error),
    /// The range asked for is not guest RAM.
    #[error("{gpa:#x}+{len:#x} is not inside guest RAM")]
    NotRam {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
}

/// What one guest page is on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PageFlags {
    /// Backed by a host frame.
    pub present: bool,
    /// Swapped out.
    pub swapped: bool,
    /// A hugetlb page.
    pub hugetlb: bool,
    /// Part of a transparent huge page.
    pub thp: bool,
    /// Merged by KSM.
    pub ksm: bool,
    /// The shared zero page.
    pub zero: bool,
    /// Anonymous memory.
    pub anon: bool,
}

impl PageFlags {
    /// Decodes a page's pagemap entry `pm` and kpageflags `kf` (0 when unknown), for a region
    /// whose pages are `region_page` bytes.
    fn decode(pm: u64, kf: u64, region_page: u64) -> PageFlags {
        let present = pm & PM_PRESENT != 0;
        PageFlags {
            present,
            swapped: pm & PM_SWAPPED != 0,
            hugetlb: kf & KPF_HUGE != 0 || (present && region_page > PAGE),
            thp: kf & KPF_THP != 0,
            ksm: kf & KPF_KSM != 0,
            zero: kf & KPF_ZERO_PAGE != 0,
            anon: kf & KPF_ANON != 0,
        }
    }

    /// The host page size behind such a page of a region of `region_page` pages.
    fn page_size(&self, region_page: u64) -> u64 {
        if self.hugetlb {
            region_page
        } else if self.thp {
            2 << 20
        } else {
            PAGE
        }
    }

    /// The flags a run of such pages shows.
    fn run_flags(&self) -> RunFlags {
        let mut bits = 0u8;
        for (on, bit) in [
            (!self.present && self.swapped, RunFlags::SWAPPED),
            (!self.present && !self.swapped, RunFlags::NOT_PRESENT),
            (self.hugetlb, RunFlags::HUGE),
            (self.thp, RunFlags::THP),
            (self.ksm, RunFlags::KSM),
            (self.zero, RunFlags::ZERO),
            (self.anon, RunFlags::ANON),
        ] {
            if on {
                bits |= bit;
            }
        }
        RunFlags(bits)
    }
}

/// The kinds of host page behind a run: a small set, serialised as the list of its names
/// (`["not-present"]`, `["thp", "anon"]`, ...) in the order of [`RunFlags::NAMES`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RunFlags(u8);

impl RunFlags {
    const SWAPPED: u8 = 1;
    const NOT_PRESENT: u8 = 1 << 1;
    const HUGE: u8 = 1 << 2;
    const THP: u8 = 1 << 3;
    const KSM: u8 = 1 << 4;
    const ZERO: u8 = 1 << 5;
    const ANON: u8 = 1 << 6;

    /// Every flag and its name, in output order.
    pub const NAMES: [(u8, &'static str); 7] = [
        (Self::SWAPPED, "swapped"),
        (Self::NOT_PRESENT, "not-present"),
        (Self::HUGE, "huge"),
        (Self::THP, "thp"),
        (Self::KSM, "ksm"),
        (Self::ZERO, "zero"),
        (Self::ANON, "anon"),
    ];

    /// The names of the flags that are set.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter().collect()
    }

    /// The names of the flags that are set, in output order.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, n)| *n)
    }

    /// Whether the flag called `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        Self::NAMES
            .iter()
            .any(|(bit, n)| *n == name && self.0 & bit != 0)
    }

    /// The set with the flags called `names`; `Err` names one that does not exist.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<RunFlags, String> {
        let mut bits = 0;
        for name in names {
            let name = name.as_ref();
            bits |= Self::NAMES
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(bit, _)| *bit)
                .ok_or_else(|| format!("unknown page flag `{name}`"))?;
        }
        Ok(RunFlags(bits))
    }
}

impl std::fmt::Debug for RunFlags {
    /// The names, as a list.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl std::fmt::Display for RunFlags {
    /// The names joined by commas.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for RunFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for RunFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        RunFlags::from_names(&names).map_err(serde::de::Error::custom)
    }
}

/// A run of guest pages mapping to contiguous host frames with the same kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Guest-physical start.
    pub gpa: u64,
    /// Host-physical start (None when not present or PFNs are hidden).
    pub hpa: Option<u64>,
    /// Bytes.
    pub len: u64,
    /// Host page size behind the run (4 KiB, 2 MiB THP/hugetlb, 1 GiB hugetlb).
    pub page_size: u64,
    /// Flags.
    pub flags: RunFlags,
}

/// Totals of one region, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Bytes scanned.
    pub bytes: u64,
    /// Present.
    pub present: u64,
    /// Not present (never touched or discarded).
    pub not_present: u64,
    /// Swapped out.
    pub swapped: u64,
    /// On hugetlb pages.
    pub hugetlb: u64,
    /// On transparent huge pages.
    pub thp: u64,
    /// KSM-merged.
    pub ksm: u64,
    /// Mapped to the zero page.
    pub zero: u64,
}

impl Totals {
    /// Counts one 4 KiB page with `flags`.
    fn count(&mut self, flags: &PageFlags) {
        self.bytes += PAGE;
        self.present += PAGE * flags.present as u64;
        self.not_present += PAGE * (!flags.present && !flags.swapped) as u64;
        self.swapped += PAGE * flags.swapped as u64;
        self.hugetlb += PAGE * flags.hugetlb as u64;
        self.thp += PAGE * flags.thp as u64;
        self.ksm += PAGE * flags.ksm as u64;
        self.zero += PAGE * flags.zero as u64;
    }
}

/// Appends the 4 KiB page at `gpa` to `runs`: it extends the last run when it continues it in
/// guest-physical and host-physical order with the same page size and flags.
fn push_page(runs: &mut Vec<Run>, gpa: u64, hpa: Option<u64>, page_size: u64, flags: RunFlags) {
    if let Some(last) = runs.last_mut() {
        let contiguous_hpa = match (last.hpa, hpa) {
            (Some(a), Some(b)) => a + last.len == b,
            (None, None) => true,
            _ => false,
        };
        if last.gpa + last.len == gpa
            && contiguous_hpa
            && last.page_size == page_size
            && last.flags == flags
        {
            last.len += PAGE;
            return;
        }
    }
    runs.push(Run {
        gpa,
        hpa,
        len: PAGE,
        page_size,
        flags,
    });
}

/// The map of one region.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionMap {
    /// Region index.
    pub region: usize,
    /// Backend name.
    pub backend: String,
    /// Runs, in guest-physical order.
    pub runs: Vec<Run>,
    /// Totals.
    pub totals: Totals,
}

/// A GPA→HPA map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MappingReport {
    /// Whether host frame numbers were visible (CAP_SYS_ADMIN).
    pub pfns_visible: bool,
    /// Why not, when they were not.
    pub note: Option<String>,
    /// Per region.
    pub regions: Vec<RegionMap>,
}

/// Reads the map of `[gpa, gpa+len)` (all RAM when `None`).
///
/// Cost (see `memvisor bench mappings`): pagemap is read in [`BATCH`]-entry `pread`s. kpageflags
/// is read only where it can say something pagemap does not:
/// - once per folio where the folios are known: per huge page on hugetlb regions, per 2 MiB
///   where `PAGEMAP_SCAN` reports a PMD-mapped transparent huge page (every 4 KiB piece of a
///   folio has the same kind);
/// - not at all for exclusively mapped pages of regions that can hold nothing but ordinary
///   anonymous 4 KiB pages (see [`only_small_anon`]);
/// - otherwise per page, with the frames of a batch sorted so close ones share a `pread`
///   ([`MAX_GAP`]).
///
/// Nothing is allocated per page or per run besides the runs vector.
pub fn map(ram: &GuestRam, range: Option<(u64, u64)>) -> Result<MappingReport, MappingError> {
    if let Some((gpa, len)) = range {
        if !ram.is_ram(gpa, len) {
            return Err(MappingError::NotRam { gpa, len });
        }
    }
    let mut scan = Scanner::open()?;
    // Process-wide KSM (PR_SET_MEMORY_MERGE) makes every anonymous page a KSM candidate.
    let merge_any = ksm::process_merge().unwrap_or(false);
    let mut pfns_seen = false;
    let mut present_seen = false;
    let mut regions = Vec::new();
    for r in ram.regions() {
        let mut runs: Vec<Run> = Vec::new();
        let mut totals = Totals::default();
        let anon_only = only_small_anon(r, merge_any);
        for e in &r.extents {
            let (lo, hi) = match range {
                Some((gpa, len)) => (gpa.max(e.gpa), (gpa + len).min(e.end())),
                None => (e.gpa, e.end()),
            };
            if lo >= hi {
                continue;
            }
            let lo = lo / PAGE * PAGE;
            let host = r.host_addr() as u64 + e.offset + (lo - e.gpa);
            let pages = (hi - lo).div_ceil(PAGE);
            let folios = if r.page_size > PAGE {
                // hugetlb: every huge page of the region is one folio.
                Folios::Huge {
                    block: r.page_size / PAGE,
                    ranges: vec![(host / PAGE, host / PAGE + pages)],
                }
            } else if anon_only {
                Folios::Small
            } else {
                // Transparent huge pages mapped by a PMD: 2 MiB folios.
                Folios::Huge {
                    block: PMD_PAGES,
                    ranges: pmd_mapped(&scan.pagemap, host, pages * PAGE),
                }
            };
            let mut done = 0;
            while done < pages {
                let n = (pages - done).min(BATCH) as usize;
                let vpn = host / PAGE + done;
                scan.read(vpn, n, &folios, anon_only)
                    .map_err(MappingError::Pagemap)?;
                for i in 0..n {
                    let pm = scan.pm[i];
                    let kf = scan.kf[i];
                    let gpa = lo + (done + i as u64) * PAGE;
                    let flags = PageFlags::decode(pm, kf, r.page_size);
                    let pfn = pm & PM_PFN_MASK;
                    present_seen |= flags.present;
                    pfns_seen |= flags.present && pfn != 0;
                    totals.count(&flags);
                    let hpa = (flags.present && pfn != 0).then_some(pfn * PAGE);
                    push_page(
                        &mut runs,
                        gpa,
                        hpa,
                        flags.page_size(r.page_size),
                        flags.run_flags(),
                    );
                }
                done += n as u64;
            }
        }
        regions.push(RegionMap {
            region: r.index,
            backend: r.config.backend.name().into(),
            runs,
            totals,
        });
    }
    let pfns_visible = pfns_seen || !present_seen;
    let note = if !pfns_visible {
        Some("host frame numbers are hidden: reading them needs CAP_SYS_ADMIN (run memvisor as root); presence and swap are still exact".into())
    } else if scan.kpageflags.is_none() {
        Some("/proc/kpageflags is not readable: page kinds (THP, KSM, zero) are unknown".into())
    } else {
        None
    };
    Ok(MappingReport {
        pfns_visible,
        note,
        regions,
    })
}

/// Whether every page of region `r` that pagemap shows present, exclusively mapped and not
/// file-backed is an ordinary anonymous 4 KiB page, so its kpageflags would say `anon` and
/// nothing else: private anonymous memory with `MADV_NOHUGEPAGE` (no transparent huge page of
/// any size), not `MADV_MERGEABLE` and no process-wide KSM (no KSM page). Such a page is not the
/// zero page either (the zero page is never "exclusively mapped"). Other pages of the region
/// (shared, file, zero page) still have their kpageflags read.
fn only_small_anon(r: &crate::memory::RamRegion, merge_any: bool) -> bool {
    matches!(
        r.config.backend,
        crate::config::Backend::Anon {
            shared: false,
            thp: Some(false)
        }
    ) && !r.config.mergeable
        && !merge_any
        && r.page_size == PAGE
}

/// Pages per pagemap `pread` (512 KiB of entries).
pub const BATCH: u64 = 65536;

/// Largest hole (in frames) between two frames whose kpageflags are read by one `pread`:
/// reading a few unneeded entries costs less than another system call.
pub const MAX_GAP: u64 = 8;

/// pagemap and kpageflags readers with buffers reused from batch to batch.
struct Scanner {
    pagemap: File,
    kpageflags: Option<File>,
    /// pagemap entries of the current batch.
    pm: Vec<u64>,
    /// kpageflags of each page of the current batch (0 when not present or unknown).
    kf: Vec<u64>,
    /// (frame, page index) of the pages whose flags are read, sorted by frame.
    wanted: Vec<(u64, u32)>,
    /// kpageflags read for one span of frames.
    span: Vec<u64>,
}

impl Scanner {
    fn open() -> Result<Scanner, MappingError> {
        Ok(Scanner {
            pagemap: File::open("/proc/self/pagemap").map_err(MappingError::Pagemap)?,
            kpageflags: File::open("/proc/kpageflags").ok(),
            pm: vec![0; BATCH as usize],
            kf: vec![0; BATCH as usize],
            wanted: Vec::with_capacity(BATCH as usize),
            span: vec![0; BATCH as usize],
        })
    }

    /// Reads the pagemap entries of `n` pages from virtual page `vpn` into `pm`, and the
    /// kpageflags of their frames into `kf`: once per folio where `folios` knows the folios
    /// (every 4 KiB piece of a folio has the same kind), and without reading where
    /// `anon_only` says the kind is known (see [`only_small_anon`]).
    fn read(
        &mut self,
        vpn: u64,
        n: usize,
        folios: &Folios,
        anon_only: bool,
    ) -> std::io::Result<()> {
        read_into(&self.pagemap, &mut self.pm[..n], vpn)?;
        let kf = &mut self.kf[..n];
        kf.fill(0);
        let Some(kpf) = &self.kpageflags else {
            return Ok(());
        };
        self.wanted.clear();
        // Per page: does it take the flags of the page before it (same folio)?
        let mut inside = folios.walker();
        let mut prev_pfn = None;
        for (i, &pm) in self.pm[..n].iter().enumerate() {
            let pfn = pm & PM_PFN_MASK;
            let same_folio = inside.same_folio_as_previous(vpn + i as u64, prev_pfn, pfn);
            if pm & PM_PRESENT == 0 || pfn == 0 {
                prev_pfn = None;
                continue;
            }
            prev_pfn = Some(pfn);
            if anon_only && pm & (PM_MMAP_EXCLUSIVE | PM_FILE) == PM_MMAP_EXCLUSIVE {
                kf[i] = KPF_ANON;
            } else if !same_folio {
                self.wanted.push((pfn, i as u32));
            }
        }
        self.wanted.sort_unstable_by_key(|w| w.0);
        let mut at = 0;
        while at < self.wanted.len() {
            // One span: frames close enough to read together, at most a buffer long.
            let first = self.wanted[at].0;
            let mut end = at + 1;
            while end < self.wanted.len() {
                let pfn = self.wanted[end].0;
                if pfn > self.wanted[end - 1].0 + MAX_GAP || pfn - first >= BATCH {
                    break;
                }
                end += 1;
            }
            let count = (self.wanted[end - 1].0 - first + 1) as usize;
            if read_into(kpf, &mut self.span[..count], first).is_ok() {
                for &(pfn, i) in &self.wanted[at..end] {
                    kf[i as usize] = self.span[(pfn - first) as usize];
                }
            }
            at = end;
        }
        // The other pages of a folio take the flags read for its first page in this batch.
        if !matches!(folios, Folios::Small) {
            let mut inside = folios.walker();
            let mut prev_pfn = None;
            for i in 0..n {
                let pm = self.pm[i];
                let pfn = pm & PM_PFN_MASK;
                let same_folio = inside.same_folio_as_previous(vpn + i as u64, prev_pfn, pfn);
                if pm & PM_PRESENT == 0 || pfn == 0 {
                    prev_pfn = None;
                    continue;
                }
                if same_folio {
                    kf[i] = kf[i - 1];
                }
                prev_pfn = Some(pfn);
            }
        }
        Ok(())
    }
}

/// 4 KiB pages in a PMD-mapped transparent huge page.
const PMD_PAGES: u64 = 512;

/// Where a range's folios larger than 4 KiB are known to be.
enum Folios {
    /// Nothing known: every page is read on its own.
    Small,
    /// In these virtual page ranges (sorted, `[start, end)`), every naturally aligned block
    /// of `block` pages that is mapped to consecutive frames is one folio.
    Huge {
        /// Pages per folio.
        block: u64,
        /// Virtual page ranges.
        ranges: Vec<(u64, u64)>,
    },
}

impl Folios {
    fn walker(&self) -> FolioWalker<'_> {
        match self {
            Folios::Small => FolioWalker {
                block: 1,
                ranges: &[],
            },
            Folios::Huge { block, ranges } => FolioWalker {
                block: *block,
                ranges,
            },
        }
    }
}

/// Walks [`Folios`] in increasing page order.
struct FolioWalker<'a> {
    block: u64,
    ranges: &'a [(u64, u64)],
}

impl FolioWalker<'_> {
    /// Whether virtual page `vpn` (asked in increasing order), mapped to `pfn`, is in the same
    /// folio as page `vpn - 1`, mapped to `prev` (`None`: not present).
    fn same_folio_as_previous(&mut self, vpn: u64, prev: Option<u64>, pfn: u64) -> bool {
        while self.ranges.first().is_some_and(|r| r.1 <= vpn) {
            self.ranges = &self.ranges[1..];
        }
        // The range (if any) now ends after `vpn`; page `vpn - 1` must be in it too.
        self.ranges.first().is_some_and(|r| r.0 < vpn)
            && vpn % self.block != 0
            && prev.is_some_and(|p| p + 1 == pfn)
    }
}

/// Virtual page ranges `[start, end)` of `[addr, addr+len)` that are mapped by PMD entries
/// (transparent huge pages), from the `PAGEMAP_SCAN` ioctl (Linux 6.7+). Empty when the
/// kernel does not have it: the pages are then simply read one by one.
fn pmd_mapped(pagemap: &File, addr: u64, len: u64) -> Vec<(u64, u64)> {
    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct PageRegion {
        start: u64,
        end: u64,
        categories: u64,
    }
    const PAGE_IS_HUGE: u64 = 1 << 6;
    nix::ioctl_readwrite!(pagemap_scan, b'f', 16, PmScanArg);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = vec![PageRegion::default(); 512];
    let end = addr + len;
    let mut start = addr;
    while start < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: 0,
            start,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: 0,
            category_anyof_mask: PAGE_IS_HUGE,
            return_mask: PAGE_IS_HUGE,
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `regions`, writable for
        // `vec_len` entries for the duration of the call; the kernel only reads this
        // process's page tables.
        let n = match unsafe { pagemap_scan(pagemap.as_raw_fd(), &mut arg) } {
            Ok(n) => n as usize,
            Err(_) => return Vec::new(),
        };
        for r in &regions[..n.min(regions.len())] {
            let (s, e) = (r.start / PAGE, r.end / PAGE);
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        if arg.walk_end <= start {
            break;
        }
        start = arg.walk_end;
    }
    out
}

/// Fills `buf` with the u64 entries of a pagemap-style file from entry `index` on.
fn read_into(f: &File, buf: &mut [u64], index: u64) -> std::io::Result<()> {
    // SAFETY: `buf` is a live, exclusively borrowed slice of u64; any bytes are a valid u64 and
    // the byte view covers exactly its memory. The kernel writes native-endian u64 entries.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(buf))
    };
    f.read_exact_at(bytes, index * 8)
}

impl MappingReport {
    /// Readable text: one line per run.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        if let Some(n) = &self.note {
            let _ = writeln!(s, "note: {n}");
        }
        for r in &self.regions {
            let t = &r.totals;
            let _ = writeln!(
                s,
                "region {} ({}): {} scanned, {} present, {} not present, {} swapped, {} hugetlb, {} thp, {} ksm, {} zero page",
                r.region,
                r.backend,
                crate::config::Size(t.bytes),
                crate::config::Size(t.present),
                crate::config::Size(t.not_present),
                crate::config::Size(t.swapped),
                crate::config::Size(t.hugetlb),
                crate::config::Size(t.thp),
                crate::config::Size(t.ksm),
                crate::config::Size(t.zero)
            );
            for run in &r.runs {
                let hpa = run
                    .hpa
                    .map(|h| format!("{h:#014x}"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "  GPA {:#014x}-{:#014x} -> HPA {hpa:>16}  {:>9}  page {:>7}  {}",
                    run.gpa,
                    run.gpa + run.len,
                    crate::config::Size(run.len).to_string(),
                    crate::config::Size(run.page_size).to_string(),
                    run.flags
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn touched_pages_are_present_and_runs_merge() {
        let ram = GuestRam::new(&[RegionConfig::parse(0, "size=8M,thp=off").unwrap()]).unwrap();
        for p in 0..16u64 {
            ram.memory()
                .write_obj(p + 1, GuestAddress(p * PAGE))
                .unwrap();
        }
        let m = map(&ram, None).unwrap();
        let t = &m.regions[0].totals;
        assert_eq!(t.bytes, 8 << 20);
        assert_eq!(t.present, 16 * PAGE);
        assert_eq!(t.not_present, (8 << 20) - 16 * PAGE);
        let runs = &m.regions[0].runs;
        assert_eq!(runs.last().unwrap().flags.names(), vec!["not-present"]);
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 8 << 20);
        if nix::unistd::geteuid().is_root() {
            assert!(m.pfns_visible);
            assert!(runs[0].hpa.is_some());
            assert!(runs[0].flags.contains("anon"));
        }
        // Discarded pages are no longer present.
        ram.discard(0, 8 * PAGE).unwrap();
        let m = map(&ram, Some((0, 16 * PAGE))).unwrap();
        assert_eq!(m.regions[0].totals.present, 8 * PAGE);
        assert!(map(&ram, Some((8 << 20, PAGE))).is_err());
    }

    /// The map read the slow, obvious way: one pagemap entry and one kpageflags entry per
    /// page, runs merged by the same rules. The fast paths of [`map`] must give the same.
    fn map_page_by_page(ram: &GuestRam) -> Vec<(Vec<Run>, Totals)> {
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let kpageflags = File::open("/proc/kpageflags").ok();
        let entry = |f: &File, index: u64| {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, index * 8)
                .map(|_| u64::from_ne_bytes(b))
        };
        let mut out = Vec::new();
        for r in ram.regions() {
            let mut runs: Vec<Run> = Vec::new();
            let mut t = Totals::default();
            for e in &r.extents {
                for p in 0..e.len / PAGE {
                    let gpa = e.gpa + p * PAGE;
                    let va = r.host_addr() as u64 + e.offset + p * PAGE;
                    let pm = entry(&pagemap, va / PAGE).unwrap();
                    let present = pm & PM_PRESENT != 0;
                    let pfn = pm & PM_PFN_MASK;
                    let kf = match (&kpageflags, present && pfn != 0) {
                        (Some(f), true) => entry(f, pfn).unwrap(),
                        _ => 0,
                    };
                    let flags = PageFlags::decode(pm, kf, r.page_size);
                    t.count(&flags);
                    let hpa = (present && pfn != 0).then_some(pfn * PAGE);
                    push_page(
                        &mut runs,
                        gpa,
                        hpa,
                        flags.page_size(r.page_size),
                        flags.run_flags(),
                    );
                }
            }
            out.push((runs, t));
        }
        out
    }

    /// `map` equals the page-by-page read. The kernel may change pages between two reads (a
    /// partly unmapped THP being split, khugepaged): the comparison counts only when two
    /// page-by-page reads around `map` agree, and is retried otherwise.
    fn assert_same_as_page_by_page(ram: &GuestRam, what: &str) {
        for _ in 0..5 {
            let before = map_page_by_page(ram);
            let m = map(ram, None).unwrap();
            if map_page_by_page(ram) != before {
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            for (fast, (runs, totals)) in m.regions.iter().zip(&before) {
                for (a, b) in fast.runs.iter().zip(runs) {
                    assert_eq!(a, b, "{what}: first differing run");
                }
                assert_eq!(fast.runs.len(), runs.len(), "{what}: run count");
                assert_eq!(&fast.totals, totals, "{what}: totals");
            }
            return;
        }
        panic!("{what}: the pages kept changing between reads");
    }

    /// Writes every page of `[from, to)` and reads (host side: zero page) `[to, to + read)`.
    fn touch(ram: &GuestRam, from: u64, to: u64, read: u64) {
        let mem = ram.memory();
        for gpa in (from..to).step_by(PAGE as usize) {
            mem.write_obj(gpa | 1, GuestAddress(gpa)).unwrap();
        }
        for gpa in (to..to + read).step_by(PAGE as usize) {
            let _: u64 = mem.read_obj(GuestAddress(gpa)).unwrap();
        }
    }

    #[test]
    fn fast_paths_match_a_page_by_page_read() {
        if !nix::unistd::geteuid().is_root() {
            println!("skip: fast_paths_match_a_page_by_page_read: needs root (frame numbers, kpageflags)");
            return;
        }
        for spec in [
            "size=16M,thp=off",
            "size=16M",
            "size=16M,thp=on",
            "size=16M,thp=off,mergeable=on",
        ] {
            let ram = GuestRam::new(&[RegionConfig::parse(0, spec).unwrap()]).unwrap();
            // Written pages, zero-page reads, never-touched pages and a discarded hole.
            touch(&ram, 0, 10 << 20, 2 << 20);
            ram.discard(4 << 20, 1 << 20).unwrap();
            assert_same_as_page_by_page(&ram, spec);
            let m = map(&ram, None).unwrap();
            let t = &m.regions[0].totals;
            assert!(t.present >= 9 << 20, "{spec}: {t:?}");
            assert!(t.not_present >= 4 << 20, "{spec}: {t:?}");
            if spec.ends_with("thp=on") && t.thp > 0 {
                assert!(m.regions[0]
                    .runs
                    .iter()
                    .any(|r| r.flags.contains("thp") && r.page_size == 2 << 20));
            }
        }
        // hugetlbfs 2M, when a pool can be had.
        match hugepages::HugetlbfsScratch::new(hugepages::HugePageSize::Size2M, 8 << 20) {
            Ok(scratch) => {
                let spec = format!(
                    "size=8M,backend=hugetlbfs,mem-path={}",
                    scratch.path().display()
                );
                let ram = GuestRam::new(&[RegionConfig::parse(0, &spec).unwrap()]).unwrap();
                touch(&ram, 0, 6 << 20, 0);
                assert_same_as_page_by_page(&ram, "hugetlbfs 2M");
                let m = map(&ram, None).unwrap();
                assert_eq!(m.regions[0].totals.hugetlb, 6 << 20);
                for run in m.regions[0].runs.iter().filter(|r| r.hpa.is_some()) {
                    assert_eq!(run.hpa.unwrap() % (2 << 20), 0, "{run:?}");
                    assert_eq!(run.len % (2 << 20), 0, "{run:?}");
                }
                drop(ram);
            }
            Err(e) => println!("skip: fast_paths_match_a_page_by_page_read (hugetlbfs part): {e}"),
        }
    }

    #[test]
    fn run_flags_serialise_as_names() {
        let f = PageFlags {
            present: true,
            thp: true,
            anon: true,
            ..Default::default()
        }
        .run_flags();
        assert_eq!(f.names(), vec!["thp", "anon"]);
        assert_eq!(f.to_string(), "thp,anon");
        assert!(f.contains("anon") && !f.contains("ksm"));
        assert!(f.iter().any(|n| n == "thp"));
        assert_eq!(format!("{f:?}"), r#"["thp", "anon"]"#);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"["thp","anon"]"#);
        assert_eq!(serde_json::from_str::<RunFlags>(&json).unwrap(), f);
        assert!(serde_json::from_str::<RunFlags>(r#"["bogus"]"#).is_err());
        let absent = PageFlags::default().run_flags();
        assert_eq!(absent.names(), vec!["not-present"]);
    }
}
