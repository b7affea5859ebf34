//! KSM with the built-in guest: two `mergeable=on` regions filled by the guest with identical
//! page content (`same`), KSM run at a high scan rate for the test (global settings restored
//! afterwards). The VM's merged pages must reach 90% of the identical pages, memvisor's
//! overcommit figures must equal the kernel's counters and an independent page-map read, and
//! merged pages at two GPAs (one in each region) must show the same host physical address.
//!
//! One test in this file on purpose: `ksm_merging_pages` is per process, so no other test may
//! map mergeable memory in this process meanwhile.

mod common;

use common::{kpageflags, kvm_or_skip, pagemap_entries, pagemap_pfn, root_or_skip, skip, KPF_KSM};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::report::overcommit::VmMemory;
use memvisor::runner::{RunOptions, Vmm};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// The built-in guest's work area starts here; `same` fills from here to the end of RAM.
const WORK: u64 = 16 * M;

#[test]
fn guest_pages_merge_and_reports_match_the_kernel() {
    let t = "guest_pages_merge_and_reports_match_the_kernel";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let sys = ksm::Ksm::system();
    if !sys.available() {
        skip(t, "KSM is not available (/sys/kernel/mm/ksm missing)");
        return;
    }
    let guard = ksm::SettingsGuard::save(&sys).expect("save KSM settings");
    // KSM stays off while the guest fills its pages (the guard restores whatever it was).
    sys.set_run(ksm::KsmRun::Stop).expect("stop ksmd");
    let result = std::panic::catch_unwind(|| run(&sys));
    let restored = guard.restore();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    restored.expect("restore KSM settings");
}

fn run(sys: &ksm::Ksm) {
    let config = VmConfig {
        vcpus: 1,
        memory: vec![
            RegionConfig::parse(0, "size=64M,mergeable=on").unwrap(),
            RegionConfig::parse(1, "size=64M,mergeable=on").unwrap(),
        ],
        workload: Workload::parse(&["same:value=7"]).unwrap(),
        ..Default::default()
    };
    let mut vmm = Vmm::start(&config).expect("start");
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    assert_eq!(report.outcome.exit_code(), 0, "{}", report.to_text());
    let ram = vmm.ram().clone();
    // Every page of the work area (in both regions) holds the same bytes.
    let identical = (ram.size() - WORK) / PAGE;
    let before = VmMemory::read(&ram, None);
    assert_eq!(
        before.ksm.merging_pages, 0,
        "KSM was off: nothing merged yet"
    );

    // One KSM page may back at most `max_page_sharing` pages (default 256); raise it so that
    // all identical pages can share one frame, which lets the test find a frame shared by the
    // two regions. The kernel refuses the change while it holds KSM pages (busy), in which case
    // a pair within one region has to do.
    let one_page = sys.set_max_page_sharing(1 << 16).is_ok();
    sys.set_pages_to_scan(20_000).unwrap();
    sys.set_sleep_millisecs(1).unwrap();
    sys.set_run(ksm::KsmRun::Merge).unwrap();
    let t0 = Instant::now();
    let merged = loop {
        let n = ksm::self_stats().expect("ksm_stat").merging_pages;
        if n * 10 >= identical * 9 || t0.elapsed() > Duration::from_secs(90) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Stop scanning so the figures below hold still while they are compared.
    sys.set_run(ksm::KsmRun::Stop).unwrap();
    eprintln!(
        "KSM merged {merged} of {identical} identical pages in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        merged * 10 >= identical * 9,
        "KSM merged {merged} of {identical} identical pages (< 90%) within 90 s"
    );

    let m = VmMemory::read(&ram, None);
    let kernel = ksm::self_stats().expect("ksm_stat");
    // The report's figures are the kernel's counters ...
    assert_eq!(m.ksm.merging_pages, kernel.merging_pages);
    assert_eq!(m.ksm.kernel_profit_bytes, kernel.process_profit);
    // ... and an independent page-map walk of guest RAM agrees with them.
    let mut ksm_pages = 0u64;
    let mut frames = HashSet::new();
    for r in ram.regions() {
        let entries = pagemap_entries(r.host_addr() as u64, r.len() / PAGE);
        for e in entries {
            let pfn = pagemap_pfn(e);
            if pfn != 0 && kpageflags(pfn) & KPF_KSM != 0 {
                ksm_pages += 1;
                frames.insert(pfn);
            }
        }
    }
    assert_eq!(ksm_pages, kernel.merging_pages, "guest pages on KSM pages");
    assert_eq!(m.ksm.guest_ksm_pages, Some(ksm_pages));
    assert_eq!(m.ksm.distinct_pages, Some(frames.len() as u64));
    assert_eq!(m.ksm.saved_bytes, (ksm_pages - frames.len() as u64) * PAGE);
    assert_eq!(m.used_bytes, m.resident_bytes - m.ksm.saved_bytes);
    let ksm_bytes: u64 = m.regions.iter().map(|r| r.ksm_bytes.unwrap()).sum();
    assert_eq!(ksm_bytes, ksm_pages * PAGE);
    assert!(
        m.regions.iter().all(|r| r.ksm_bytes.unwrap() > 0),
        "both regions have merged pages: {:?}",
        m.regions
    );
    // The kernel's host-wide counters include at least this VM's sharing.
    let c = sys.counters().unwrap();
    assert!(
        c.pages_sharing + c.pages_shared >= ksm_pages,
        "host-wide {} shared + {} sharing < {ksm_pages} in this VM",
        c.pages_shared,
        c.pages_sharing
    );

    // Merged pages at two GPAs, one in each region, show the same host physical address in
    // memvisor's map and in the page map read here. (KSM shares one page among at most
    // `max_page_sharing` pages, so not every pair shares a frame: find a pair that does.)
    let rep = memvisor::report::mappings::map(&ram, None).unwrap();
    let ksm_runs = |region: usize| {
        rep.regions[region]
            .runs
            .iter()
            .filter(|x| x.flags.iter().any(|f| f == "ksm"))
            .flat_map(|x| {
                let h = x.hpa.expect("frame numbers visible as root");
                (0..x.len / PAGE).map(move |i| (x.gpa + i * PAGE, h + i * PAGE))
            })
            .collect::<Vec<(u64, u64)>>()
    };
    let first: std::collections::HashMap<u64, u64> =
        ksm_runs(0).into_iter().map(|(g, h)| (h, g)).collect();
    let (a, b, hpa) = if one_page {
        let (b, hpa) = ksm_runs(1)
            .into_iter()
            .find(|(_, h)| first.contains_key(h))
            .expect("a KSM page shared by both regions");
        (first[&hpa], b, hpa)
    } else {
        eprintln!("max_page_sharing busy: looking for a shared frame within region 0");
        let all = ksm_runs(0);
        let mut seen = std::collections::HashMap::new();
        all.into_iter()
            .find_map(|(g, h)| seen.insert(h, g).map(|a| (a, g, h)))
            .expect("two GPAs on one KSM page")
    };
    assert_ne!(a, b);
    let host = |gpa: u64| {
        let r = ram
            .regions()
            .iter()
            .find(|r| r.offset_of(gpa).is_some())
            .unwrap();
        let addr = r.host_addr() as u64 + r.offset_of(gpa).unwrap();
        pagemap_pfn(pagemap_entries(addr, 1)[0]) * PAGE
    };
    assert_eq!(host(a), hpa, "GPA {a:#x}: memvisor's map vs pagemap");
    assert_eq!(host(b), hpa, "GPA {b:#x}: memvisor's map vs pagemap");
    eprintln!(
        "GPA {a:#x} and {b:#x} -> HPA {hpa:#x}; {} guest pages on {} KSM pages",
        ksm_pages,
        frames.len()
    );
    // The guest still reads its bytes (a merged page is read-only on the host, and KSM must
    // not have changed what the guest sees).
    let mut buf = [0u8; 8];
    use vm_memory::{Bytes, GuestAddress};
    ram.memory().read_slice(&mut buf, GuestAddress(a)).unwrap();
    let w = u64::from_le_bytes(buf);
    ram.memory().read_slice(&mut buf, GuestAddress(b)).unwrap();
    assert_eq!(w, u64::from_le_bytes(buf));
    drop(ram);
    drop(vmm);
    // The VM's memory is gone, and ksmd is stopped.
    common::prune_ksm_after_exit();
}
