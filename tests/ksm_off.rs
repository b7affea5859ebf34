//! Fault injection: KSM switched off (with unmerge) while a guest runs on merged pages. The
//! guest must carry on and every byte it reads and writes must be right; the report must show
//! the merging go away. (Own file: it changes global KSM settings, restored afterwards, and
//! uses the process's KSM counters.)

mod common;

use common::{kvm_or_skip, root_or_skip, skip};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::report::overcommit::VmMemory;
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, StartOptions, Vmm};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn ksm_switched_off_mid_run() {
    let t = "ksm_switched_off_mid_run";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let sys = ksm::Ksm::system();
    if !sys.available() {
        skip(t, "KSM is not available");
        return;
    }
    let guard = ksm::SettingsGuard::save(&sys).expect("save KSM settings");
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let seen2 = seen.clone();
    // At the sync point the work area is full of identical pages: merge them, then switch KSM
    // off with unmerge while the guest is stopped at the sync point, then let it go on to
    // write its pattern over the (formerly) merged pages and verify it.
    let hook: memvisor::vmm::vcpu::SyncHook = Arc::new(move |_, _, ram| {
        let sys = ksm::Ksm::system();
        sys.set_pages_to_scan(20_000).unwrap();
        sys.set_sleep_millisecs(1).unwrap();
        sys.set_run(ksm::KsmRun::Merge).unwrap();
        let t0 = Instant::now();
        while ksm::self_stats().unwrap().merging_pages < 4096
            && t0.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let merged = VmMemory::read(ram, None).ksm.merging_pages;
        sys.set_run(ksm::KsmRun::Unmerge).unwrap();
        let t0 = Instant::now();
        while ksm::self_stats().unwrap().merging_pages > 0 && t0.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let after = VmMemory::read(ram, None).ksm.merging_pages;
        seen2.lock().unwrap().push((merged, after));
    });
    let config = VmConfig {
        vcpus: 1,
        memory: vec![RegionConfig::parse(0, "size=64M,mergeable=on").unwrap()],
        workload: Workload::parse(&["same:value=9;sync:tag=1;checksum;fill:seed=4;verify:seed=4"])
            .unwrap(),
        ..Default::default()
    };
    let mut vmm = Vmm::start_with(
        &config,
        StartOptions {
            sync: Some(hook),
            ..Default::default()
        },
    )
    .expect("start");
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    drop(vmm);
    let restored = guard.restore();
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    let (merged, after) = seen.lock().unwrap()[0];
    assert!(merged >= 4096, "pages merged before KSM went off: {merged}");
    assert_eq!(after, 0, "unmerge left {after} pages merged");
    let checksum = report.ops.iter().find(|o| o.name == "checksum").unwrap();
    assert_eq!(
        checksum.amount,
        48 << 20,
        "the guest read its whole work area"
    );
    let verify = report.ops.iter().find(|o| o.name == "verify").unwrap();
    assert_eq!(verify.mismatches, 0);
    restored.expect("restore KSM settings");
}
