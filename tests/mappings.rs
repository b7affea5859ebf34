//! GPA→HPA maps (`memvisor::report::mappings`) checked page by page against the test's own reads of
//! `/proc/self/pagemap` and `/proc/kpageflags`: a hugetlbfs 2M region maps to 2M-aligned host
//! runs of 512 pages, untouched anonymous pages are not present, a discarded range is not
//! present afterwards. (KSM-merged pages sharing one HPA: tests/ksm.rs.)

mod common;

use common::{
    kpageflags, pagemap_entries, pagemap_pfn, root_or_skip, skip, HugePool, HugetlbfsMount,
    KPF_COMPOUND_HEAD, KPF_HUGE,
};
use hugepages::HugePageSize;
use memvisor::config::RegionConfig;
use memvisor::memory::GuestRam;
use memvisor::report::mappings::{self, MappingReport, RunFlags};
use vm_memory::{Bytes, GuestAddress};

const M: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn ram(spec: &str) -> GuestRam {
    GuestRam::new(&[RegionConfig::parse(0, spec).unwrap()])
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// One entry per 4 KiB page of region `region` of the report: the HPA (None: not present or
/// hidden) and the flags of the run it is in.
fn per_page(rep: &MappingReport, region: usize) -> Vec<(u64, Option<u64>, RunFlags)> {
    let mut out = Vec::new();
    for run in &rep.regions[region].runs {
        for i in 0..run.len / PAGE {
            out.push((run.gpa + i * PAGE, run.hpa.map(|h| h + i * PAGE), run.flags));
        }
    }
    out
}

/// The report agrees with the test's own page-map read, page by page.
fn check_against_pagemap(ram: &GuestRam, rep: &MappingReport) {
    let r = &ram.regions()[0];
    let pages = per_page(rep, 0);
    assert_eq!(pages.len() as u64, r.len() / PAGE, "every page once");
    let entries = pagemap_entries(r.host_addr() as u64, r.len() / PAGE);
    let root = nix::unistd::geteuid().is_root();
    for ((gpa, hpa, flags), e) in pages.iter().zip(&entries) {
        let present = e >> 63 == 1;
        assert_eq!(
            flags.iter().any(|f| f == "not-present"),
            !present,
            "GPA {gpa:#x}: presence (flags {flags:?})"
        );
        if root {
            assert_eq!(
                *hpa,
                present.then(|| pagemap_pfn(*e) * PAGE),
                "GPA {gpa:#x}: HPA"
            );
        } else {
            assert_eq!(
                *hpa, None,
                "without CAP_SYS_ADMIN there are no HPAs to report"
            );
        }
    }
}

#[test]
fn untouched_anon_pages_are_not_present() {
    let ram = ram("size=32M,thp=off");
    for gpa in [4 * M, 4 * M + PAGE, 20 * M] {
        ram.memory().write_obj(gpa | 7, GuestAddress(gpa)).unwrap();
    }
    let rep = mappings::map(&ram, None).unwrap();
    let t = &rep.regions[0].totals;
    assert_eq!(t.present, 3 * PAGE);
    assert_eq!(t.not_present, 32 * M - 3 * PAGE);
    check_against_pagemap(&ram, &rep);
    // Present pages are anonymous memory in kpageflags.
    let runs: Vec<_> = rep.regions[0]
        .runs
        .iter()
        .filter(|r| r.hpa.is_some())
        .collect();
    if nix::unistd::geteuid().is_root() {
        assert!(runs.iter().all(|r| r.flags.iter().any(|f| f == "anon")));
    }
}

#[test]
fn discarded_range_is_not_present_afterwards() {
    let ram = ram("size=32M,thp=off");
    let buf = vec![0x5au8; 32 * M as usize];
    ram.memory().write_slice(&buf, GuestAddress(0)).unwrap();
    let rep = mappings::map(&ram, None).unwrap();
    assert_eq!(rep.regions[0].totals.present, 32 * M);
    check_against_pagemap(&ram, &rep);
    ram.discard(8 * M, 8 * M).unwrap();
    let rep = mappings::map(&ram, None).unwrap();
    assert_eq!(rep.regions[0].totals.present, 24 * M);
    for (gpa, hpa, flags) in per_page(&rep, 0) {
        let discarded = (8 * M..16 * M).contains(&gpa);
        assert_eq!(
            hpa.is_none() && flags.iter().any(|f| f == "not-present"),
            discarded,
            "GPA {gpa:#x}"
        );
    }
    check_against_pagemap(&ram, &rep);
    // A range query sees the same thing.
    let part = mappings::map(&ram, Some((6 * M, 4 * M))).unwrap();
    assert_eq!(part.regions[0].totals.bytes, 4 * M);
    assert_eq!(part.regions[0].totals.present, 2 * M);
}

#[test]
fn hugetlbfs_2m_region_maps_to_aligned_runs_of_512_pages() {
    let t = "hugetlbfs_2m_region_maps_to_aligned_runs_of_512_pages";
    if !root_or_skip(t) {
        return;
    }
    const SIZE: u64 = 32 * M;
    let pool = match HugePool::reserve(HugePageSize::Size2M, SIZE / (2 * M)) {
        Ok(p) => p,
        Err(e) => {
            skip(t, format!("cannot grow the 2M pool: {e}"));
            return;
        }
    };
    let mount = HugetlbfsMount::new(HugePageSize::Size2M).expect("mount hugetlbfs");
    let ram = ram(&format!(
        "size={}M,backend=hugetlbfs,mem-path={}",
        SIZE / M,
        mount.path().display()
    ));
    // Touch every huge page but the last two.
    for gpa in (0..SIZE - 4 * M).step_by(2 * M as usize) {
        ram.memory().write_obj(gpa, GuestAddress(gpa + 8)).unwrap();
    }
    let rep = mappings::map(&ram, None).unwrap();
    assert!(rep.pfns_visible, "{:?}", rep.note);
    let region = &rep.regions[0];
    assert_eq!(region.totals.present, SIZE - 4 * M);
    assert_eq!(region.totals.hugetlb, SIZE - 4 * M);
    for run in region.runs.iter().filter(|r| r.hpa.is_some()) {
        let hpa = run.hpa.unwrap();
        assert_eq!(run.page_size, 2 * M, "{run:?}");
        assert_eq!(hpa % (2 * M), 0, "HPA run not 2M-aligned: {run:?}");
        assert_eq!(run.gpa % (2 * M), 0, "{run:?}");
        assert_eq!(
            (run.len / PAGE) % 512,
            0,
            "run not whole 512-page huge pages: {run:?}"
        );
        assert!(run.flags.iter().any(|f| f == "huge"), "{run:?}");
    }
    // Independently: each touched huge page is 512 consecutive frames starting 2M-aligned,
    // the first a compound head marked huge in kpageflags.
    let r = &ram.regions()[0];
    let entries = pagemap_entries(r.host_addr() as u64, SIZE / PAGE);
    for (i, huge) in entries.chunks(512).enumerate() {
        let touched = (i as u64) < (SIZE - 4 * M) / (2 * M);
        let first = pagemap_pfn(huge[0]);
        assert_eq!(first != 0, touched, "huge page {i}");
        if !touched {
            continue;
        }
        assert_eq!(
            first % 512,
            0,
            "huge page {i}: frame {first:#x} not 2M-aligned"
        );
        for (j, e) in huge.iter().enumerate() {
            assert_eq!(pagemap_pfn(*e), first + j as u64, "huge page {i} frame {j}");
        }
        let kf = kpageflags(first);
        assert!(
            kf & KPF_HUGE != 0 && kf & KPF_COMPOUND_HEAD != 0,
            "flags {kf:#x}"
        );
    }
    check_against_pagemap(&ram, &rep);
    drop(ram);
    drop(mount);
    drop(pool);
}
