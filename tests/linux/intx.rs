//! The balloon over INTx with the kernel's own driver.
//!
//! - `test_kernel_balloon_over_intx_with_pci_nomsi` boots the test kernel with `pci=nomsi`, so
//!   `virtio_pci` cannot use MSI-X and falls back to INTA#: memvisor's shared line on GSI 10 (an
//!   irqfd with a resample eventfd, raised again by the device thread after the guest's EOI
//!   while an ISR is set). The driver binds, a 16 MiB inflate through the API completes (the
//!   guest's MemTotal drops by exactly that), and the guest counted the interrupts on the I/O
//!   APIC pin (`IO-APIC 10-fasteoi`, level-triggered), none as MSI. One boot, ~3-4 min here.

use super::{
    api, balloon_actual_mib, balloon_line, irq_count, test_kernel_or_skip, TestGuest, TEST_CMDLINE,
};
use crate::common::{self, kvm_or_skip, TempDir};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn test_kernel_balloon_over_intx_with_pci_nomsi() {
    let test = "test_kernel_balloon_over_intx_with_pci_nomsi";
    if !kvm_or_skip(test) {
        return;
    }
    let Some((vmlinux, initramfs)) = test_kernel_or_skip(test) else {
        return;
    };
    let tmp = TempDir::new("linux-intx");
    let sock = tmp.path().join("api.sock");
    let t0 = Instant::now();
    let mut g = TestGuest::start_cmdline(
        Command::new(env!("CARGO_BIN_EXE_memvisor")),
        &format!("{TEST_CMDLINE} pci=nomsi"),
        &vmlinux,
        &initramfs,
        &tmp,
        &[
            "-m",
            "size=256M,prealloc=on",
            "--balloon",
            "amount_mib=0,stats_polling_interval_s=1",
        ],
    );
    g.expect("ready", Duration::from_secs(900));
    println!(
        "{test}: booted to /init in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let lines = g.lines();
    let (virtio, _) = balloon_line(&lines);
    assert!(virtio.contains("driver virtio_balloon"), "{virtio}");
    let (total0, _) = g.meminfo();
    // Inflate by 16 MiB: the driver learns the target from a configuration interrupt and
    // gets its inflate buffers back with used-buffer interrupts, all over INTx.
    let t_inflate = Instant::now();
    let (status, v) = api(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 16}"#));
    assert_eq!(status, 204, "{v}");
    super::wait_for("actual_mib 16", Duration::from_secs(300), || {
        (balloon_actual_mib(&sock)? == 16).then_some(())
    });
    println!(
        "{test}: inflated 16 MiB in {:.0} s",
        t_inflate.elapsed().as_secs_f64()
    );
    let (total1, _) = g.meminfo();
    assert_eq!(
        total0 - total1,
        16 * 1024,
        "MemTotal {total0} -> {total1} kB"
    );
    let listed = g.interrupts();
    let irq = listed
        .iter()
        .rev()
        .find(|l| l.contains("virtio"))
        .unwrap_or_else(|| panic!("the balloon in /proc/interrupts: {listed:#?}"));
    let count = irq_count(irq);
    println!("{test}: {irq}");
    assert!(
        irq.contains("IO-APIC") && irq.contains("10-fasteoi"),
        "INTA# on I/O APIC pin 10, level-triggered: {irq}"
    );
    assert!(!irq.contains("MSI"), "{irq}");
    assert!(count > 0, "interrupts taken: {irq}");
    let out = g.vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", common::text(&out));
    println!("{test}: whole test {:.0} s", t0.elapsed().as_secs_f64());
}
