//! Guest RAM backends booted through KVM: the built-in guest writes and verifies a pattern on
//! each backend, the host reads it back and checks residency independently (pagemap, smaps,
//! hugepage pool counters); host checks that fail before boot; userfaultfd page serving with the
//! internal handler (fault counts, source image, discard) and an external handler.
//!
//! Layout of every VM here: region 0 = 16 MiB anonymous memory for the guest's own pages,
//! region 1 = the backend under test, so the work area (RAM from 16 MiB up) is region 1.

mod common;

use common::{
    kvm_or_skip, memvisor, pagemap_present_bytes, pagemap_present_pages, parse_uffd_msg, pool,
    root_or_skip, skip, smaps_field, text, uffd_copy, uffd_or_skip, HugePool, HugetlbfsMount,
    TempDir, UFFD_EVENT_PAGEFAULT,
};
use hugepages::HugePageSize;
use memvisor::abi::{pattern_word, WORK_AREA_GPA};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::memory::{Extent, GuestRam, PagerReport};
use memvisor::report::run::{Outcome, RunReport};
use memvisor::runner::{RunOptions, StartOptions, Vmm};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

const M: u64 = 1 << 20;
const R1: u64 = WORK_AREA_GPA; // region 1 starts right after the 16 MiB region 0

fn vm_config(region1: &str, steps: &str) -> VmConfig {
    VmConfig {
        vcpus: 1,
        memory: vec![
            RegionConfig::parse(0, "size=16M,backend=anon").unwrap(),
            RegionConfig::parse(1, region1).unwrap(),
        ],
        workload: Workload::parse(&[steps]).unwrap(),
        ..Default::default()
    }
}

/// Starts the VM (with an optional sync hook), runs it to the end with a 30 s timeout and
/// checks it completed. The `Vmm` is returned so guest memory can still be read.
fn run(
    region1: &str,
    steps: &str,
    sync: Option<memvisor::vmm::vcpu::SyncHook>,
) -> (Vmm, RunReport) {
    let config = vm_config(region1, steps);
    let mut vmm = Vmm::start_with(
        &config,
        StartOptions {
            sync,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{region1}: start: {e}"));
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{region1}: {}",
        report.to_text()
    );
    (vmm, report)
}

fn op<'a>(report: &'a RunReport, name: &str) -> &'a memvisor::report::run::OpSummary {
    report
        .ops
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no {name} step in {}", report.to_text()))
}

fn uffd_stats(report: &RunReport, region: usize) -> uffd::UffdStats {
    match &report.regions[region].uffd {
        Some(PagerReport::Internal(s)) => s.clone(),
        other => panic!("region {region}: no internal uffd handler: {other:?}"),
    }
}

/// Host-side check of the pattern: every word of region 1 (or one word per 4 KiB page when
/// `sparse`) holds `pattern_word(gpa, seed)`.
fn host_mismatches(ram: &GuestRam, start: u64, len: u64, seed: u64, sparse: bool) -> u64 {
    let mem = ram.memory();
    if sparse {
        return (0..len / 4096)
            .map(|p| start + p * 4096 + (p * 8) % 4096)
            .filter(|&gpa| {
                mem.read_obj::<u64>(GuestAddress(gpa)).unwrap() != pattern_word(gpa, seed)
            })
            .count() as u64;
    }
    let mut buf = vec![0u8; 4 * M as usize];
    let mut bad = 0;
    let mut at = start;
    while at < start + len {
        let n = (start + len - at).min(buf.len() as u64) as usize;
        mem.read_slice(&mut buf[..n], GuestAddress(at)).unwrap();
        bad += buf[..n]
            .chunks_exact(8)
            .enumerate()
            .filter(|(i, w)| {
                u64::from_le_bytes((*w).try_into().unwrap())
                    != pattern_word(at + 8 * *i as u64, seed)
            })
            .count() as u64;
        at += n as u64;
    }
    bad
}

/// What a sync hook saw at the guest's sync point.
#[derive(Clone, Debug, Default)]
struct AtSync {
    /// Resident bytes of region 1 by pagemap.
    present: u64,
    /// Hugepage pool (2M or 1G, if asked) at that moment.
    pool: Option<hugepages::PoolStatus>,
}

fn observing_hook(
    pool_size: Option<HugePageSize>,
) -> (memvisor::vmm::vcpu::SyncHook, Arc<Mutex<Option<AtSync>>>) {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let hook: memvisor::vmm::vcpu::SyncHook = Arc::new(move |_vcpu, _tag, ram: &GuestRam| {
        let r = &ram.regions()[1];
        *s.lock().unwrap() = Some(AtSync {
            present: pagemap_present_bytes(r.host_addr(), r.len()),
            pool: pool_size.map(pool),
        });
    });
    (hook, seen)
}

/// Boots `region1` (64 MiB unless it says otherwise) with `sync:tag=1;fill:seed=S;verify:seed=S`
/// and checks: completed, guest verify 0 mismatches over all of region 1, the host reads the
/// pattern back, region 1 is where the layout promises, and after the run region 1 is fully
/// resident by both the report (mincore) and pagemap. Returns what was seen at the sync point.
fn pattern_roundtrip(
    region1: &str,
    size: u64,
    seed: u64,
    pool_size: Option<HugePageSize>,
) -> (Vmm, RunReport, AtSync) {
    let (hook, seen) = observing_hook(pool_size);
    let (vmm, report) = run(
        region1,
        &format!("sync:tag=1;fill:seed={seed};verify:seed={seed}"),
        Some(hook),
    );
    let ram = vmm.ram().clone();
    let r1 = &ram.regions()[1];
    let gpa = r1.extents[0].gpa;
    assert_eq!(
        r1.extents,
        vec![Extent {
            gpa,
            len: size,
            offset: 0
        }],
        "{region1}: region 1 is one extent"
    );
    assert_eq!(
        ram.regions()[0].extents,
        vec![Extent {
            gpa: 0,
            len: 16 * M,
            offset: 0
        }]
    );
    let verify = op(&report, "verify");
    assert_eq!(
        verify.amount, size,
        "{region1}: the guest verified all of region 1"
    );
    assert_eq!(verify.mismatches, 0, "{region1}: {}", report.to_text());
    assert_eq!(op(&report, "fill").amount, size);
    let sparse = size > 128 * M;
    assert_eq!(
        host_mismatches(&ram, gpa, size, seed, sparse),
        0,
        "{region1}: host read-back"
    );
    // A few words by hand: first, middle, last.
    for at in [gpa, gpa + size / 2 + 8, gpa + size - 8] {
        assert_eq!(
            ram.memory().read_obj::<u64>(GuestAddress(at)).unwrap(),
            pattern_word(at, seed),
            "{region1}: at {at:#x}"
        );
    }
    let present = pagemap_present_bytes(r1.host_addr(), r1.len());
    assert_eq!(present, size, "{region1}: region 1 fully present (pagemap)");
    assert_eq!(
        report.regions[1].resident, size,
        "{region1}: report resident (mincore)"
    );
    let at_sync = seen.lock().unwrap().clone().expect("sync hook ran");
    (vmm, report, at_sync)
}

#[test]
fn anon_thp_off_and_on() {
    let t = "anon_thp_off_and_on";
    if !kvm_or_skip(t) {
        return;
    }
    let (vmm, _, at_sync) = pattern_roundtrip("size=64M,backend=anon,thp=off", 64 * M, 11, None);
    assert_eq!(
        at_sync.present, 0,
        "nothing of region 1 is resident before the guest writes"
    );
    let r1 = &vmm.ram().regions()[1];
    assert_eq!(
        smaps_field(r1.host_addr(), "AnonHugePages"),
        Some(0),
        "thp=off: no transparent huge pages"
    );
    drop(vmm);
    let (vmm, _, _) = pattern_roundtrip("size=64M,backend=anon,thp=on", 64 * M, 12, None);
    let r1 = &vmm.ram().regions()[1];
    let thp = smaps_field(r1.host_addr(), "AnonHugePages").unwrap();
    if matches!(hugepages::thp_mode(), Ok(hugepages::ThpMode::Never)) {
        skip(t, "THP is disabled host-wide; AnonHugePages not checked");
    } else {
        assert!(
            thp > 0,
            "thp=on: the region has transparent huge pages ({thp})"
        );
    }
}

#[test]
fn anon_shared_and_memfd() {
    if !kvm_or_skip("anon_shared_and_memfd") {
        return;
    }
    for (spec, seed) in [
        ("size=64M,backend=anon,shared=on", 21),
        ("size=64M,backend=memfd", 22),
    ] {
        let (vmm, _, at_sync) = pattern_roundtrip(spec, 64 * M, seed, None);
        assert_eq!(at_sync.present, 0, "{spec}");
        let r1 = &vmm.ram().regions()[1];
        assert_eq!(
            common::mapped_file_allocated_bytes(r1.host_addr()),
            Some(64 * M),
            "{spec}: the memfd holds the region's pages"
        );
    }
}

#[test]
fn memfd_hugetlb_2m() {
    let t = "memfd_hugetlb_2m";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let pool2m = match HugePool::reserve(HugePageSize::Size2M, 32) {
        Ok(p) => p,
        Err(e) => return skip(t, format_args!("cannot reserve 32 2M pages: {e}")),
    };
    let free = pool2m.free();
    let (vmm, report, at_sync) = pattern_roundtrip(
        "size=64M,backend=memfd,hugetlb=on",
        64 * M,
        31,
        Some(HugePageSize::Size2M),
    );
    assert_eq!(report.regions[1].page_size, 2 * M);
    let p = at_sync.pool.unwrap();
    assert_eq!(p.free, free, "no huge page used before the guest writes");
    assert_eq!(at_sync.present, 0);
    assert_eq!(
        pool2m.free(),
        free - 32,
        "the guest's writes took 32 huge pages"
    );
    drop(vmm);
    assert_eq!(pool2m.free(), free, "all 32 back after the VM");
}

#[test]
fn hugetlbfs_2m_with_and_without_prealloc() {
    let t = "hugetlbfs_2m_with_and_without_prealloc";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let pool2m = match HugePool::reserve(HugePageSize::Size2M, 32) {
        Ok(p) => p,
        Err(e) => return skip(t, format_args!("cannot reserve 32 2M pages: {e}")),
    };
    let mount = HugetlbfsMount::new(HugePageSize::Size2M).unwrap();
    let before = pool(HugePageSize::Size2M);
    // Without prealloc: the pages are reserved at mmap, but taken only by the guest's writes.
    {
        let spec = format!(
            "size=64M,backend=hugetlbfs,mem-path={}",
            mount.path().display()
        );
        let (vmm, report, at_sync) =
            pattern_roundtrip(&spec, 64 * M, 41, Some(HugePageSize::Size2M));
        assert_eq!(report.regions[1].page_size, 2 * M);
        assert!(report.regions[1].prealloc.is_none());
        let p = at_sync.pool.unwrap();
        assert_eq!(
            p.free, before.free,
            "prealloc=off: no page taken before the guest writes"
        );
        assert_eq!(
            p.reserved,
            before.reserved + 32,
            "but all 32 reserved at mmap"
        );
        assert_eq!(
            at_sync.present, 0,
            "prealloc=off: nothing resident at the sync point"
        );
        assert_eq!(pool2m.free(), before.free - 32);
        drop(vmm);
    }
    assert_eq!(
        pool(HugePageSize::Size2M),
        before,
        "the VM gave every page back"
    );
    // With prealloc: fully resident before the guest does anything.
    {
        let spec = format!(
            "size=64M,backend=hugetlbfs,mem-path={},prealloc=on",
            mount.path().display()
        );
        let (vmm, report, at_sync) =
            pattern_roundtrip(&spec, 64 * M, 42, Some(HugePageSize::Size2M));
        let pre = report.regions[1].prealloc.clone().expect("prealloc report");
        assert_eq!(pre.bytes, 64 * M);
        assert_eq!(
            at_sync.present,
            64 * M,
            "prealloc=on: fully resident at the sync point"
        );
        assert_eq!(
            at_sync.pool.unwrap().free,
            before.free - 32,
            "prealloc took exactly 64M/2M pages from the pool before the guest ran"
        );
        drop(vmm);
    }
    assert_eq!(pool(HugePageSize::Size2M), before);
    drop(mount);
    drop(pool2m);
}

#[test]
fn hugetlbfs_1g_if_a_page_can_be_reserved() {
    let t = "hugetlbfs_1g_if_a_page_can_be_reserved";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    if !hugepages::supported_sizes().contains(&HugePageSize::Size1G) {
        return skip(t, "this kernel has no 1G huge pages");
    }
    let pool1g = match HugePool::reserve(HugePageSize::Size1G, 1) {
        Ok(p) => p,
        Err(e) => return skip(t, format_args!("the kernel cannot give one 1G page: {e}")),
    };
    let mount = HugetlbfsMount::new(HugePageSize::Size1G).unwrap();
    let free = pool1g.free();
    let spec = format!(
        "size=1G,backend=hugetlbfs,mem-path={}",
        mount.path().display()
    );
    let (vmm, report, at_sync) = pattern_roundtrip(&spec, 1 << 30, 51, Some(HugePageSize::Size1G));
    assert_eq!(report.regions[1].page_size, 1 << 30);
    assert_eq!(
        report.regions[1].gpa,
        vec![(1 << 30, 2 << 30)],
        "a 1G-page region is placed 1G-aligned"
    );
    assert_eq!(at_sync.pool.unwrap().free, free);
    assert_eq!(pool1g.free(), free - 1);
    drop(vmm);
    assert_eq!(pool1g.free(), free);
}

#[test]
fn uffd_zero_and_fetch_64k() {
    let t = "uffd_zero_and_fetch_64k";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let (_vmm, report, at_sync) = pattern_roundtrip("size=64M,backend=uffd", 64 * M, 61, None);
    assert_eq!(at_sync.present, 0);
    let s = uffd_stats(&report, 1);
    assert_eq!(
        s.faults,
        64 * M / 4096,
        "one fault per 4K page the guest wrote first"
    );
    assert_eq!(s.zero_pages, 64 * M / 4096);
    assert_eq!(s.copied_pages, 0);
    let (_vmm, report, _) = pattern_roundtrip("size=64M,backend=uffd,fetch=64K", 64 * M, 62, None);
    let s = uffd_stats(&report, 1);
    assert_eq!(s.faults, 64 * M / (64 << 10), "one fault per 64K block");
    assert_eq!(s.pages_served, 64 * M / 4096);
}

#[test]
fn anon_resident_only_where_touched() {
    if !kvm_or_skip("anon_resident_only_where_touched") {
        return;
    }
    // The guest reads and writes random words of the first 8 MiB of region 1 only.
    let (vmm, report) = run(
        "size=64M,backend=anon,thp=off",
        "random:ws=8M,accesses=200K",
        None,
    );
    let r1 = &vmm.ram().regions()[1];
    let pages = pagemap_present_pages(r1.host_addr(), r1.len());
    let touched = pages[..(8 * M / 4096) as usize]
        .iter()
        .filter(|p| **p)
        .count() as u64
        * 4096;
    let beyond = pages[(8 * M / 4096) as usize..]
        .iter()
        .filter(|p| **p)
        .count() as u64
        * 4096;
    // 200K accesses over 2048 pages: every page is hit (a page is missed with p < 1e-40).
    assert_eq!(touched, 8 * M, "the touched 8 MiB is resident");
    assert_eq!(beyond, 0, "nothing beyond the working set is resident");
    assert_eq!(
        report.regions[1].resident,
        touched + beyond,
        "the report's resident (mincore) agrees with pagemap"
    );
}

#[test]
fn oversized_hugetlbfs_region_fails_before_boot() {
    let t = "oversized_hugetlbfs_region_fails_before_boot";
    if !root_or_skip(t) {
        return;
    }
    let pool2m = match HugePool::reserve(HugePageSize::Size2M, 4) {
        Ok(p) => p,
        Err(e) => return skip(t, format_args!("cannot reserve 4 2M pages: {e}")),
    };
    let mount = HugetlbfsMount::new(HugePageSize::Size2M).unwrap();
    let before = pool(HugePageSize::Size2M);
    let avail = before.available();
    assert!((4..32).contains(&avail), "pool state {before}");
    let spec = format!(
        "size=64M,backend=hugetlbfs,mem-path={}",
        mount.path().display()
    );
    let out = memvisor(&["run", "-m", "16M", "-m", &spec]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for part in [
        "memory region 1 needs 32 2M huge pages".to_string(),
        format!("only {avail} are available"),
        format!("memvisor hugepages reserve {} --size 2M", 32 - avail),
    ] {
        assert!(stderr.contains(&part), "{part:?} not in {stderr}");
    }
    assert!(
        !text(&out).contains("report") && !text(&out).contains("panicked"),
        "failed before boot: {}",
        text(&out)
    );
    assert_eq!(
        pool(HugePageSize::Size2M),
        before,
        "nothing taken from the pool"
    );
    assert_eq!(
        std::fs::read_dir(mount.path()).unwrap().count(),
        0,
        "no file left on the mount"
    );
    drop(mount);
    drop(pool2m);
}

#[test]
fn mem_path_not_on_hugetlbfs_is_refused() {
    let dir = TempDir::new("not-hugetlbfs");
    let spec = format!(
        "size=64M,backend=hugetlbfs,mem-path={}",
        dir.path().display()
    );
    let out = memvisor(&["run", "-m", "16M", "-m", &spec]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("memory region 1")
            && t.contains("`mem-path`")
            && t.contains("not on a hugetlbfs mount"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn uffd_faults_equal_pages_first_touched() {
    let t = "uffd_faults_equal_pages_first_touched";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let (vmm, report) = run("size=64M,backend=uffd", "touch:work-only=1", None);
    assert_eq!(op(&report, "touch").amount, 64 * M / 4096);
    let s = uffd_stats(&report, 1);
    assert_eq!(
        s.faults,
        64 * M / 4096,
        "one fault per page first touched: {s:?}"
    );
    assert_eq!(s.pages_served, 64 * M / 4096);
    let r1 = &vmm.ram().regions()[1];
    assert_eq!(pagemap_present_bytes(r1.host_addr(), r1.len()), 64 * M);
}

/// Writes a 64 MiB image whose word at file offset `o` is `pattern_word(R1 + o, seed)`.
fn pattern_image(dir: &TempDir, size: u64, seed: u64) -> std::path::PathBuf {
    let path = dir.path().join("image");
    let mut bytes = Vec::with_capacity(size as usize);
    for o in (0..size).step_by(8) {
        bytes.extend_from_slice(&pattern_word(R1 + o, seed).to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn uffd_source_file_then_discard_reads_zeros() {
    let t = "uffd_source_file_then_discard_reads_zeros";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("uffd-source");
    let image = pattern_image(&dir, 64 * M, 71);
    let discarded = Arc::new(Mutex::new(None));
    let d = discarded.clone();
    let hook: memvisor::vmm::vcpu::SyncHook = Arc::new(move |_vcpu, _tag, ram: &GuestRam| {
        let r = &ram.regions()[1];
        let before = pagemap_present_bytes(r.host_addr(), r.len());
        let out = ram.discard(R1, 64 * M);
        let after = pagemap_present_bytes(r.host_addr(), r.len());
        *d.lock().unwrap() = Some((out.map_err(|e| e.to_string()), before, after));
    });
    let (_vmm, report) = run(
        &format!("size=64M,backend=uffd,source={}", image.display()),
        "verify:seed=71;sync:tag=1;checksum",
        Some(hook),
    );
    let verify = op(&report, "verify");
    assert_eq!(verify.amount, 64 * M);
    assert_eq!(
        verify.mismatches, 0,
        "the guest read the image's bytes without any fill"
    );
    let (out, before, after) = discarded.lock().unwrap().take().expect("sync hook ran");
    let out = out.unwrap();
    assert_eq!((out.requested, out.released), (64 * M, 64 * M));
    assert_eq!(before, 64 * M, "verify faulted in the whole region");
    assert_eq!(after, 0, "discard released the whole region");
    let sum = op(&report, "checksum");
    assert_eq!(sum.amount, 64 * M);
    assert_eq!(
        sum.zero_words,
        64 * M / 8,
        "after discard the guest reads zeros, not the image again"
    );
    let s = uffd_stats(&report, 1);
    assert_eq!(
        s.copied_pages,
        64 * M / 4096,
        "first pass served from the image: {s:?}"
    );
    assert_eq!(
        s.zero_pages,
        64 * M / 4096,
        "after discard served as zeros: {s:?}"
    );
    assert_eq!(s.removed_bytes, 64 * M);
}

#[test]
fn external_uffd_handler_gets_the_handshake_and_serves_faults() {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};

    let t = "external_uffd_handler_gets_the_handshake_and_serves_faults";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    const SIZE: u64 = 32 * M;
    const SEED: u64 = 81;
    let dir = TempDir::new("uffd-ext");
    let sock = dir.path().join("handler.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // The handler: accept, receive the JSON and the descriptor, serve faults until told to stop
    // (or 60 s pass). Returns the JSON and the number of faults it served.
    let handler = std::thread::spawn(move || -> Result<(serde_json::Value, u64, u64), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop2.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                        return Err("no connection".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let mut body = Vec::new();
        let mut uffd: Option<OwnedFd> = None;
        let json = loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(|e| format!("recvmsg: {e}"))?;
            for c in msg.cmsgs().map_err(|e| e.to_string())? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: a descriptor just received, owned by nobody else.
                        uffd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            let n = msg.bytes;
            if n == 0 {
                return Err("EOF before the JSON was complete".into());
            }
            body.extend_from_slice(&buf[..n]);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                break v;
            }
        };
        let uffd = uffd.ok_or("no descriptor came with the handshake")?;
        let base = json[0]["base_host_virt_addr"].as_u64().ok_or("no base")?;
        let size = json[0]["size"].as_u64().ok_or("no size")?;
        let (mut faults, mut removes) = (0u64, 0u64);
        let mut page = vec![0u8; 4096];
        while !stop2.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&uffd),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let mut msg = [0u8; 32];
            match nix::unistd::read(&uffd, &mut msg) {
                Ok(32) => {}
                Ok(n) => return Err(format!("short uffd read {n}")),
                Err(nix::errno::Errno::EAGAIN) => continue,
                Err(e) => return Err(format!("read uffd: {e}")),
            }
            let (event, addr) = parse_uffd_msg(&msg);
            if event != UFFD_EVENT_PAGEFAULT {
                removes += 1;
                continue;
            }
            let at = addr & !4095;
            if at < base || at >= base + size {
                return Err(format!("fault at {addr:#x} outside the region"));
            }
            let gpa = R1 + (at - base);
            for (i, w) in page.chunks_exact_mut(8).enumerate() {
                w.copy_from_slice(&pattern_word(gpa + 8 * i as u64, SEED).to_le_bytes());
            }
            match uffd_copy(uffd.as_raw_fd(), at, &page) {
                Ok(_) | Err(nix::errno::Errno::EEXIST) => faults += 1,
                Err(e) => return Err(format!("UFFDIO_COPY at {at:#x}: {e}")),
            }
        }
        Ok((json, faults, removes))
    });
    let config = vm_config(
        &format!(
            "size=32M,backend=uffd,handler=external,socket={}",
            sock.display()
        ),
        "verify:seed=81",
    );
    let started = Vmm::start(&config);
    let mut vmm = match started {
        Ok(v) => v,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = handler.join();
            panic!("start: {e}");
        }
    };
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    stop.store(true, Ordering::Relaxed);
    let (json, faults, removes) = handler.join().unwrap().unwrap();
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    let r1 = &vmm.ram().regions()[1];
    let regions = json.as_array().expect("a JSON array");
    assert_eq!(regions.len(), 1, "{json}");
    assert_eq!(
        regions[0]["base_host_virt_addr"],
        r1.host_addr() as u64,
        "{json}"
    );
    assert_eq!(regions[0]["size"], SIZE, "{json}");
    assert_eq!(regions[0]["offset"], 0, "{json}");
    assert_eq!(regions[0]["page_size"], 4096, "{json}");
    let verify = op(&report, "verify");
    assert_eq!(verify.amount, SIZE);
    assert_eq!(verify.mismatches, 0, "the guest read the handler's pages");
    assert_eq!(faults, SIZE / 4096, "one fault per page the guest read");
    assert_eq!(removes, 0);
    assert!(matches!(
        report.regions[1].uffd,
        Some(PagerReport::External { .. })
    ));
    assert_eq!(host_mismatches(vmm.ram(), R1, SIZE, SEED, false), 0);
}
