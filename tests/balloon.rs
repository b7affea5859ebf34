//! The built-in guest's virtio-balloon driver against the real device through KVM: inflate and
//! deflate to the host's target with host memory measured in this process, on every RAM
//! backend; deflate-on-oom; statistics.
//!
//! The tests drive the VM through the library (`Vmm`), as the control API will.

mod common;

use balloon::BalloonOptions;
use common::{kvm_or_skip, root_or_skip};
use hugepages::HugePageSize;
use memvisor::abi::{STATUS_GROW_FAILED, WORK_AREA_GPA};
use memvisor::config::workload::Workload;
use memvisor::config::{Backend, RegionConfig, VmConfig};
use memvisor::report::run::{Outcome, RunReport};
use memvisor::runner::{RunOptions, Vmm};
use memvisor::vmm::vcpu::GuestProgress;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// One guest at a time: they are large, and timings and host memory are measured.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host bytes resident in `[addr, addr+len)`, by `mincore` in this process.
fn resident(addr: *const u8, len: u64) -> u64 {
    let pages = len.div_ceil(PAGE) as usize;
    let mut v = vec![0u8; pages];
    // SAFETY: the range is a live mapping of guest RAM owned by the Vmm; one byte per page.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len as usize, v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().filter(|b| **b & 1 != 0).count() as u64 * PAGE
}

fn region_resident(vmm: &Vmm, index: usize) -> u64 {
    let r = &vmm.ram().regions()[index];
    resident(r.host_addr(), r.len())
}

fn progress(vmm: &Vmm) -> GuestProgress {
    vmm.guest_progress(0).expect("vCPU 0 exists")
}

/// Polls `f` every 50 ms until it is true; panics with `what` and the last progress after
/// `timeout`. Returns the time it took.
fn wait_for(vmm: &Vmm, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; guest progress {:?}, actual {} pages",
            progress(vmm),
            actual_pages(vmm)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

fn set_target(vmm: &Vmm, mib: u32) {
    vmm.balloon()
        .expect("balloon configured")
        .with_device(|d| (d.model.set_target_mib(mib), true));
}

fn actual_pages(vmm: &Vmm) -> u32 {
    vmm.balloon()
        .expect("balloon configured")
        .with_device(|d| (d.model.actual_pages(), false))
}

fn counters(vmm: &Vmm) -> balloon::BalloonCounters {
    vmm.balloon()
        .unwrap()
        .with_device(|d| (d.model.counters(), false))
}

/// Waits until the guest has verified at least `bytes` more of its data than now.
fn wait_verified(vmm: &Vmm, bytes: u64, timeout: Duration) {
    let from = progress(vmm).verified_bytes;
    wait_for(vmm, "a full verification pass", timeout, || {
        progress(vmm).verified_bytes >= from + bytes
    });
}

fn op_results(report: &RunReport, name: &str) -> [u64; 3] {
    report.vcpus[0]
        .ops
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no {name} step in {}", report.to_text()))
        .results
}

fn balloon_opts(deflate_on_oom: bool, stats_s: u16) -> BalloonOptions {
    BalloonOptions {
        amount_mib: 0,
        deflate_on_oom,
        stats_polling_interval_s: stats_s,
        free_page_reporting: false,
    }
}

/// A 16 MiB anonymous first region (the guest's own pages) and `second` for the work area.
fn config(second: RegionConfig, steps: &str, opts: BalloonOptions) -> VmConfig {
    VmConfig {
        vcpus: 1,
        memory: vec![RegionConfig::anon(WORK_AREA_GPA), second],
        workload: Workload::parse(&[steps]).unwrap(),
        balloon: Some(opts),
        ..Default::default()
    }
}

fn region(size: u64, backend: Backend) -> RegionConfig {
    RegionConfig {
        backend,
        ..RegionConfig::anon(size)
    }
}

/// What one inflate/deflate round trip measured.
struct E2e {
    inflate_s: f64,
    deflate_s: f64,
    freed_bytes: u64,
    /// `probe` right before inflating, after inflating, after deflating and regrowing.
    probes: [u64; 3],
}

/// Something measured around the inflation (e.g. the huge page pool's free count).
type Probe<'a> = Option<&'a dyn Fn() -> u64>;

/// The end-to-end scenario on a work region of `work` bytes: the guest first touches all of it
/// (so ballooned free pages were resident too, as in a guest that has used its memory), keeps
/// `data` bytes of patterned data and verifies them continuously. Inflating to `inflate_mib`
/// must bring `actual` to the target, shrink the data set to what is left, cut host memory of
/// the region by at least `min_drop`, and leave the remaining data intact; deflating to 0 must
/// let the guest regrow and re-verify all of `data`.
fn e2e(
    name: &str,
    second: RegionConfig,
    data: u64,
    inflate_mib: u32,
    min_drop: u64,
    probe: Probe<'_>,
) -> E2e {
    let probe = || probe.map(|f| f()).unwrap_or(0);
    let work = second.size;
    let steps = format!("touch:work-only=1;balloon:data={data},seconds=0");
    let t0 = Instant::now();
    let mut vmm = Vmm::start(&config(second, &steps, balloon_opts(false, 0))).unwrap();
    let long = Duration::from_secs(180);
    wait_for(&vmm, "the guest to fill its data", long, || {
        progress(&vmm).data_bytes == data
    });
    let filled = t0.elapsed();
    let before = region_resident(&vmm, 1);
    let probe0 = probe();
    assert!(
        before >= work - 2 * MIB,
        "{name}: the guest touched its whole work area: {} MiB resident of {} MiB",
        before / MIB,
        work / MIB
    );

    // Inflate.
    let target = inflate_mib as u64 * 256;
    set_target(&vmm, inflate_mib);
    let inflate = wait_for(
        &vmm,
        "actual to reach the target",
        Duration::from_secs(60),
        || actual_pages(&vmm) as u64 == target,
    );
    // The guest reports progress after writing `actual`, at the end of its iteration.
    wait_for(&vmm, "the guest to report the balloon", long, || {
        progress(&vmm).balloon_pages == target
    });
    let kept = work - inflate_mib as u64 * MIB;
    let p = progress(&vmm);
    assert_eq!(p.balloon_pages, target, "{name}: {p:?}");
    assert_eq!(
        p.data_bytes,
        data.min(kept),
        "{name}: the data set gave up its tail: {p:?}"
    );
    let after = region_resident(&vmm, 1);
    let probe1 = probe();
    let dropped = before.saturating_sub(after);
    assert!(
        dropped >= min_drop,
        "{name}: host memory of the region dropped by {} MiB ({} -> {} MiB), expected at least {} MiB",
        dropped / MIB,
        before / MIB,
        after / MIB,
        min_drop / MIB
    );
    // The guest's remaining data still verifies: a full pass after inflating.
    wait_verified(&vmm, p.data_bytes, long);
    assert_eq!(progress(&vmm).mismatches, 0, "{name}: data intact");
    let c = counters(&vmm);
    assert_eq!(c.inflated_pages, target, "{name}: {c:?}");
    assert_eq!(c.backend_errors + c.invalid_pfns + c.pfns_outside_ram, 0);
    let freed_bytes = c.freed_bytes;

    // Deflate back to 0: the guest uses its memory again.
    set_target(&vmm, 0);
    let deflate = wait_for(&vmm, "actual to reach 0", Duration::from_secs(60), || {
        actual_pages(&vmm) == 0
    });
    wait_for(&vmm, "the data set to regrow", long, || {
        progress(&vmm).data_bytes == data
    });
    wait_verified(&vmm, data, long);
    let p = progress(&vmm);
    assert_eq!((p.balloon_pages, p.mismatches), (0, 0), "{name}: {p:?}");
    let regrown = region_resident(&vmm, 1);
    let probe2 = probe();
    assert!(
        regrown >= after + data.saturating_sub(kept) - 2 * MIB,
        "{name}: regrown data is resident again ({} MiB, {} MiB after inflating)",
        regrown / MIB,
        after / MIB
    );
    assert_eq!(counters(&vmm).deflated_pages, target);

    vmm.request_finish();
    let report = vmm.wait(&RunOptions::default());
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    assert_eq!(op_results(&report, "balloon"), [data, 0, 0]);
    let v = &report.vcpus[0];
    println!(
        "{name}: {} MiB work, {} MiB data: filled in {:.1} s; inflate to {inflate_mib} MiB in \
         {:.2} s, host memory of the region {} -> {} MiB (-{} MiB); deflate to 0 in {:.2} s, \
         regrown to {} MiB resident; total {:.1} s; vCPU exits {:?}",
        work / MIB,
        data / MIB,
        filled.as_secs_f64(),
        inflate.as_secs_f64(),
        before / MIB,
        after / MIB,
        dropped / MIB,
        deflate.as_secs_f64(),
        regrown / MIB,
        t0.elapsed().as_secs_f64(),
        v.exits
    );
    E2e {
        inflate_s: inflate.as_secs_f64(),
        deflate_s: deflate.as_secs_f64(),
        freed_bytes,
        probes: [probe0, probe1, probe2],
    }
}

/// The E2E on a 1 GiB guest whose work area is a `backend` region: 900 MiB of data, balloon
/// to 512 MiB and back.
fn e2e_1g(name: &str, backend: Backend, probe: Probe<'_>) -> E2e {
    let r = e2e(
        name,
        region(1024 * MIB - WORK_AREA_GPA, backend),
        900 * MIB,
        512,
        480 * MIB,
        probe,
    );
    assert!(r.inflate_s < 60.0 && r.deflate_s < 60.0);
    r
}

#[test]
fn balloon_e2e_anon_1g() {
    if !kvm_or_skip("balloon_e2e_anon_1g") {
        return;
    }
    let _g = serial();
    let anon = Backend::Anon {
        shared: false,
        thp: None,
    };
    let r = e2e_1g("anon", anon, None);
    assert_eq!(r.freed_bytes, 512 * MIB);
}

#[test]
fn balloon_e2e_memfd_1g() {
    if !kvm_or_skip("balloon_e2e_memfd_1g") {
        return;
    }
    let _g = serial();
    let memfd = Backend::Memfd {
        hugepage_size: None,
    };
    let r = e2e_1g("memfd", memfd, None);
    assert_eq!(r.freed_bytes, 512 * MIB);
}

#[test]
fn balloon_e2e_uffd_1g() {
    if !kvm_or_skip("balloon_e2e_uffd_1g") {
        return;
    }
    if let Err(e) = uffd::available() {
        common::skip(
            "balloon_e2e_uffd_1g",
            format!("userfaultfd is not usable here ({e})"),
        );
        return;
    }
    let _g = serial();
    let uffd = Backend::Uffd {
        source: None,
        fetch: 4096,
        external_socket: None,
    };
    let r = e2e_1g("uffd", uffd, None);
    assert_eq!(r.freed_bytes, 512 * MIB);
}

/// A hugetlbfs mount in a temporary directory, unmounted and removed on drop.
struct TempMount(PathBuf);

impl Drop for TempMount {
    fn drop(&mut self) {
        let _ = hugepages::unmount_or_detach(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn balloon_e2e_hugetlbfs_2m_1g() {
    let test = "balloon_e2e_hugetlbfs_2m_1g";
    if !kvm_or_skip(test) || !root_or_skip(test) {
        return;
    }
    let _g = serial();
    let size = HugePageSize::Size2M;
    let huge = 2 * MIB;
    let work = 1024 * MIB - WORK_AREA_GPA;
    let _lock = hugepages::lock_pools().unwrap();
    let reservation = match hugepages::PoolReservation::reserve_additional(size, work / huge) {
        Ok(r) => r,
        Err(e) => {
            common::skip(test, format!("cannot grow the 2M pool: {e}"));
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("memvisor-balloon-test-{}", std::process::id()));
    let mount = match hugepages::mount(&dir, size) {
        Ok(_) => TempMount(dir.clone()),
        Err(e) => {
            common::skip(test, format!("cannot mount hugetlbfs: {e}"));
            return;
        }
    };
    let pool_free = || hugepages::pool_status(size).unwrap().free;
    let free_before = pool_free();
    let r = e2e_1g(
        "hugetlbfs-2M",
        Backend::Hugetlbfs { mem_path: dir },
        Some(&pool_free),
    );
    assert_eq!(r.freed_bytes % huge, 0, "only whole huge pages are freed");
    let whole = r.freed_bytes / huge;
    let [free_filled, free_inflated, free_regrown] = r.probes;
    // The balloon's 512 MiB lie at the 2 MiB aligned top of RAM: 256 whole huge pages.
    assert_eq!(whole, 256);
    assert_eq!(
        free_inflated - free_filled,
        whole,
        "the pool got back exactly the whole huge pages the device freed"
    );
    // Deflating lets the data set regrow from 496 to 900 MiB: 202 huge pages are used again;
    // the other 54 (free in the guest) stay with the host.
    assert_eq!(free_inflated - free_regrown, (900 - 496) / 2);
    println!(
        "hugetlbfs-2M: inflating 512 MiB freed {whole} whole 2 MiB huge pages; pool free: \
         {free_before} before the guest touched its memory, {free_filled} touched and filled, \
         {free_inflated} inflated, {free_regrown} deflated and regrown"
    );
    drop(mount);
    reservation.restore().unwrap();
}

/// Deflate-on-oom: with the balloon inflated and no free pages left, a step that needs more
/// memory deflates first (telling the device) when the feature was negotiated; without it the
/// guest reports failure and leaves ballooned pages alone.
fn grow_under_pressure(deflate_on_oom: bool) -> (RunReport, Vmm) {
    // 496 MiB of work area: 300 MiB of data, then a 256 MiB balloon takes the 196 MiB free
    // pages and 60 MiB of data; `grow` wants 400 MiB, 160 MiB more than the guest has.
    let steps = "balloon:data=300M,seconds=0;grow:to=400M,seed=1";
    let mut vmm = Vmm::start(&config(
        RegionConfig::anon(512 * MIB - WORK_AREA_GPA),
        steps,
        balloon_opts(deflate_on_oom, 0),
    ))
    .unwrap();
    let long = Duration::from_secs(120);
    wait_for(&vmm, "the guest to fill its data", long, || {
        progress(&vmm).data_bytes == 300 * MIB
    });
    set_target(&vmm, 256);
    wait_for(
        &vmm,
        "actual to reach 256 MiB",
        Duration::from_secs(60),
        || actual_pages(&vmm) == 256 * 256,
    );
    wait_for(&vmm, "the guest to report the balloon", long, || {
        progress(&vmm).balloon_pages == 256 * 256
    });
    assert_eq!(progress(&vmm).data_bytes, 240 * MIB);
    const DOO: u64 = 1 << 2;
    assert_eq!(progress(&vmm).features & DOO != 0, deflate_on_oom);
    vmm.request_finish();
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    (report, vmm)
}

#[test]
fn deflate_on_oom_gives_a_growing_workload_its_memory() {
    if !kvm_or_skip("deflate_on_oom_gives_a_growing_workload_its_memory") {
        return;
    }
    let _g = serial();
    let (report, vmm) = grow_under_pressure(true);
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    // 160 MiB deflated: 96 MiB stay in the balloon; all 400 MiB of data verify.
    assert_eq!(op_results(&report, "grow"), [400 * MIB, 0, 96 * 256]);
    assert_eq!(
        actual_pages(&vmm),
        96 * 256,
        "actual dropped below the target"
    );
    let c = counters(&vmm);
    assert_eq!((c.inflated_pages, c.deflated_pages), (256 * 256, 160 * 256));
    assert!(
        report
            .guest_log
            .iter()
            .any(|l| l.contains("deflate-on-oom")),
        "{:?}",
        report.guest_log
    );
    println!(
        "deflate-on-oom: grow to 400 MiB deflated 160 MiB (actual {} -> {} pages); log: {:?}",
        256 * 256,
        actual_pages(&vmm),
        report.guest_log
    );
}

#[test]
fn without_deflate_on_oom_the_guest_reports_failure() {
    if !kvm_or_skip("without_deflate_on_oom_the_guest_reports_failure") {
        return;
    }
    let _g = serial();
    let (report, vmm) = grow_under_pressure(false);
    assert!(
        matches!(
            report.outcome,
            Outcome::GuestError {
                vcpu: 0,
                status: STATUS_GROW_FAILED
            }
        ),
        "{}",
        report.to_text()
    );
    // The data set stays at what the balloon left; ballooned pages were not touched.
    assert_eq!(op_results(&report, "grow"), [240 * MIB, 0, 256 * 256]);
    assert_eq!(actual_pages(&vmm), 256 * 256);
    assert_eq!(counters(&vmm).deflated_pages, 0);
    // Ballooned pages are still released on the host: the guest did not write to them.
    let r = &vmm.ram().regions()[1];
    let top = r.len() - 256 * MIB;
    // SAFETY: inside the region's mapping.
    let balloon_resident = resident(unsafe { r.host_addr().add(top as usize) }, 256 * MIB);
    assert_eq!(balloon_resident, 0, "no ballooned page came back");
}

#[test]
fn stats_reach_the_device_every_polling_interval() {
    if !kvm_or_skip("stats_reach_the_device_every_polling_interval") {
        return;
    }
    let _g = serial();
    let work = 256 * MIB - WORK_AREA_GPA;
    let mut vmm = Vmm::start(&config(
        RegionConfig::anon(work),
        "balloon:data=100M,seconds=0",
        balloon_opts(false, 1),
    ))
    .unwrap();
    let long = Duration::from_secs(60);
    wait_for(&vmm, "the guest to fill its data", long, || {
        progress(&vmm).data_bytes == 100 * MIB
    });
    set_target(&vmm, 64);
    wait_for(&vmm, "actual to reach 64 MiB", long, || {
        actual_pages(&vmm) == 64 * 256
    });
    let dev = vmm.balloon().unwrap();
    let free = work - 100 * MIB - 64 * MIB;
    let t = wait_for(&vmm, "statistics of the inflated guest", long, || {
        dev.with_device(|d| (d.model.latest_stats(), false))
            .is_some_and(|s| s.free_memory == Some(free))
    });
    let s = dev
        .with_device(|d| (d.model.latest_stats(), false))
        .unwrap();
    assert_eq!(s.total_memory, Some(256 * MIB), "{s:?}");
    assert_eq!(s.available_memory, Some(free), "{s:?}");
    assert_eq!(s.swap_in, None, "only the tags the guest knows");
    // Every polling interval the device asks and the guest answers.
    let c0 = counters(&vmm);
    let t0 = std::time::Instant::now();
    let mut c1 = counters(&vmm);
    wait_for(&vmm, "two more requests answered", long, || {
        c1 = counters(&vmm);
        c1.stats_requests >= c0.stats_requests + 2 && c1.stats_updates >= c0.stats_updates + 2
    });
    let took = t0.elapsed();
    // ... and no faster: two requests are a whole interval (1 s, on a 100 ms timer) apart.
    assert!(
        took >= Duration::from_millis(800),
        "two requests within {took:?} at a 1 s interval: {c0:?} -> {c1:?}"
    );
    assert_eq!(
        c1.extra_stats_buffers + c1.stats_truncated + c1.stats_unknown_tags,
        0
    );
    vmm.request_finish();
    let report = vmm.wait(&RunOptions::default());
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    println!(
        "stats: free {free} B after inflating, seen {:.1} s later; {} requests / {} updates in {:.1} s",
        t.as_secs_f64(),
        c1.stats_requests - c0.stats_requests,
        c1.stats_updates - c0.stats_updates,
        took.as_secs_f64()
    );
}
