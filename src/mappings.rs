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
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
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
    fn names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.present {
            v.push(if self.swapped {
                "swapped"
            } else {
                "not-present"
            });
        }
        for (on, name) in [
            (self.hugetlb, "huge"),
            (self.thp, "thp"),
            (self.ksm, "ksm"),
            (self.zero, "zero"),
            (self.anon, "anon"),
        ] {
            if on {
                v.push(name);
            }
        }
        v.into_iter().map(String::from).collect()
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
    pub flags: Vec<String>,
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
pub fn map(ram: &GuestRam, range: Option<(u64, u64)>) -> Result<MappingReport, MappingError> {
    if let Some((gpa, len)) = range {
        if !ram.is_ram(gpa, len) {
            return Err(MappingError::NotRam { gpa, len });
        }
    }
    let pagemap = File::open("/proc/self/pagemap").map_err(MappingError::Pagemap)?;
    let kpageflags = File::open("/proc/kpageflags").ok();
    let mut pfns_seen = false;
    let mut present_seen = false;
    let mut regions = Vec::new();
    for r in ram.regions() {
        let mut runs: Vec<Run> = Vec::new();
        let mut totals = Totals::default();
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
            let entries =
                read_entries(&pagemap, host / PAGE, pages).map_err(MappingError::Pagemap)?;
            for (i, pm) in entries.iter().enumerate() {
                let gpa = lo + i as u64 * PAGE;
                let present = pm & PM_PRESENT != 0;
                let pfn = pm & PM_PFN_MASK;
                present_seen |= present;
                pfns_seen |= present && pfn != 0;
                let kf = match (&kpageflags, present && pfn != 0) {
                    (Some(f), true) => read_entries(f, pfn, 1).ok().map(|v| v[0]).unwrap_or(0),
                    _ => 0,
                };
                let flags = PageFlags {
                    present,
                    swapped: pm & PM_SWAPPED != 0,
                    hugetlb: kf & KPF_HUGE != 0 || (present && r.page_size > PAGE),
                    thp: kf & KPF_THP != 0,
                    ksm: kf & KPF_KSM != 0,
                    zero: kf & KPF_ZERO_PAGE != 0,
                    anon: kf & KPF_ANON != 0,
                };
                let page_size = if flags.hugetlb {
                    r.page_size
                } else if flags.thp {
                    2 << 20
                } else {
                    PAGE
                };
                totals.bytes += PAGE;
                totals.present += PAGE * present as u64;
                totals.not_present += PAGE * (!present && !flags.swapped) as u64;
                totals.swapped += PAGE * flags.swapped as u64;
                totals.hugetlb += PAGE * flags.hugetlb as u64;
                totals.thp += PAGE * flags.thp as u64;
                totals.ksm += PAGE * flags.ksm as u64;
                totals.zero += PAGE * flags.zero as u64;
                let hpa = (present && pfn != 0).then_some(pfn * PAGE);
                let names = flags.names();
                if let Some(last) = runs.last_mut() {
                    let contiguous_gpa = last.gpa + last.len == gpa;
                    let contiguous_hpa = match (last.hpa, hpa) {
                        (Some(a), Some(b)) => a + last.len == b,
                        (None, None) => true,
                        _ => false,
                    };
                    if contiguous_gpa
                        && contiguous_hpa
                        && last.page_size == page_size
                        && last.flags == names
                    {
                        last.len += PAGE;
                        continue;
                    }
                }
                runs.push(Run {
                    gpa,
                    hpa,
                    len: PAGE,
                    page_size,
                    flags: names,
                });
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
    } else if kpageflags.is_none() {
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

/// Reads `count` u64 entries starting at entry `index` of a pagemap-style file.
fn read_entries(f: &File, index: u64, count: u64) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(count as usize);
    let mut buf = vec![0u8; (count.min(65536) * 8) as usize];
    let mut done = 0;
    while done < count {
        let n = (count - done).min(65536);
        let b = &mut buf[..(n * 8) as usize];
        f.read_exact_at(b, (index + done) * 8)?;
        out.extend(
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
        );
        done += n;
    }
    Ok(out)
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
                    run.flags.join(",")
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
        assert_eq!(runs.last().unwrap().flags, vec!["not-present".to_string()]);
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 8 << 20);
        if nix::unistd::geteuid().is_root() {
            assert!(m.pfns_visible);
            assert!(runs[0].hpa.is_some());
            assert!(runs[0].flags.iter().any(|f| f == "anon"));
        }
        // Discarded pages are no longer present.
        ram.discard(0, 8 * PAGE).unwrap();
        let m = map(&ram, Some((0, 16 * PAGE))).unwrap();
        assert_eq!(m.regions[0].totals.present, 8 * PAGE);
        assert!(map(&ram, Some((8 << 20, PAGE))).is_err());
    }
}
