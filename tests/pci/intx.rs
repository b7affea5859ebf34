//! INTx through KVM: two balloons on one PCI bus share INTA# (one [`SharedIntx`] over an irqfd
//! with a resample eventfd on GSI 10), both served by one `devices` thread under its seccomp
//! filter that also waits on the line's resample eventfd. What KVM's in-kernel irqchip sees is
//! read back (`KVM_GET_IRQCHIP`: the I/O APIC's interrupt request bit of pin 10), and the
//! guest's EOI is a real one: vCPU 0 runs two real-mode instructions, a specific EOI for IRQ 10
//! to the slave PIC (`out 0xa0, 0x62`), which makes KVM run the line's ack notifiers exactly as
//! an I/O APIC EOI does: lower the line, signal the resample eventfd.

use super::*;
use common::wait_until;
use kvm_ioctls::{VcpuExit, VcpuFd};
use memvisor::devices::balloon::BalloonEvents;
use memvisor::devices::event_thread::{DeviceThread, Subscriber};
use memvisor::devices::pci::shared_intx::SharedIntx;
use memvisor::seccomp::{SeccompMode, ThreadFilter, ThreadKind};
use std::time::Duration;

/// Where the EOI code sits in guest RAM (below the queues at 1 MiB).
const EOI_CODE: u64 = 0x8000;
/// The port the EOI code writes when it is done (nothing claims it: a `KVM_EXIT_IO`).
const DONE_PORT: u16 = 0x500;

/// The guest's EOI for IRQ 10: vCPU 0 in real mode runs `mov al, 0x62; out 0xa0, al` (OCW2,
/// specific EOI of the slave PIC's input 2 = IRQ 10), then `mov dx, DONE_PORT; out dx, al`.
fn guest_eoi(vcpu: &mut VcpuFd, ram: &GuestRam) {
    let [lo, hi] = DONE_PORT.to_le_bytes();
    let code = [0xb0, 0x62, 0xe6, 0xa0, 0xba, lo, hi, 0xee];
    ram.memory()
        .write_slice(&code, GuestAddress(EOI_CODE))
        .unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&kvm_bindings::kvm_regs {
        rip: EOI_CODE,
        rflags: 2, // interrupts off: the vCPU takes none of them
        ..Default::default()
    })
    .unwrap();
    match vcpu.run() {
        Ok(VcpuExit::IoOut(DONE_PORT, _)) => {}
        other => panic!("the EOI code did not reach its last `out`: {other:?}"),
    }
}

/// Whether the I/O APIC sees IRQ 10 asserted now.
fn line_up(vm: &kvm_ioctls::VmFd) -> bool {
    irq10_requested(vm).0
}

/// What the resample path has done so far: (resamples, re-asserts).
fn resampled(intx: &SharedIntx) -> (u64, u64) {
    let c = intx.counters();
    (c.resamples, c.reasserted)
}

/// A guest EOI, then waits for the device thread to have handled the resample it causes.
fn eoi_and_wait(vcpu: &mut VcpuFd, ram: &GuestRam, intx: &SharedIntx) -> (u64, u64) {
    let before = intx.counters().resamples;
    guest_eoi(vcpu, ram);
    wait_until(
        "the device thread handled the resample of the guest's EOI",
        Duration::from_secs(10),
        || intx.counters().resamples > before,
    );
    resampled(intx)
}

/// INTx leaves the device thread as an irqfd write and KVM's I/O APIC sees the line; after the
/// guest's EOI KVM lowers it and the device thread raises it again while an ISR is still set
/// (an interrupt raised between the guest's ISR read and its EOI is not lost), and not once
/// every ISR was read; with two functions on the line, one reading its ISR does not lower the
/// line while the other's is pending. Fails if nothing serves the resample eventfd (the wait
/// for the first resample times out) or if a resample does not re-assert (the line stays low).
#[test]
fn intx_is_an_irqfd_raised_again_after_the_guests_eoi_while_an_isr_is_set() {
    let t = "intx_is_an_irqfd_raised_again_after_the_guests_eoi_while_an_isr_is_set";
    if !kvm_or_skip(t) {
        return;
    }
    let ram = data_ram();
    let kvm = memvisor::vmm::vm::Vm::new(&ram).unwrap();
    kvm.fd().create_irq_chip().unwrap();
    let mut vcpu = kvm.create_vcpu(0).unwrap();
    let irq = KvmIrq::new(kvm.kvm(), kvm.fd()).unwrap();
    let line = irq.intx(10).unwrap();
    let intx = SharedIntx::new(line.clone());
    let opts = BalloonOptions {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 0,
        free_page_reporting: false,
    };
    let mut bus = PciBus::new();
    let mut balloons = Vec::new();
    for function in 0..2 {
        let (dev, slot) = bus
            .add_virtio(
                BalloonDevice::new(opts.clone(), ram.clone()),
                ram.clone(),
                PciIrq {
                    msi: Arc::new(MessageLog::default()),
                    intx: Some(intx.pin(function)),
                    intx_line: 10,
                },
            )
            .unwrap();
        balloons.push((dev, slot));
    }
    let mut subscribers: Vec<Subscriber> = Vec::new();
    for (dev, _) in &balloons {
        dev.attach_link(irq.clone()).unwrap();
        subscribers.push(Box::new(
            BalloonEvents::new(BalloonHandle::Pci(dev.clone()), ram.clone()).unwrap(),
        ));
    }
    subscribers.push(Box::new(intx.resampler(line.resample_event().unwrap())));
    let filter = ThreadFilter::new(SeccompMode::On, ThreadKind::Devices).unwrap();
    let _thread = DeviceThread::start(subscribers, filter).unwrap();
    let vm = Vm {
        ram: ram.clone(),
        bus,
        dev: balloons[0].0.clone(),
        disk: None,
        msi: MessageLog::default(),
        line: Arc::new(Line::default()),
    };
    // Both drivers up without MSI-X: every queue on "no vector", INTx.
    let drivers: Vec<Driver> = balloons
        .iter()
        .map(|(_, slot)| Driver::probe_slot(&vm, *slot, 0x1045))
        .collect();
    let mut queues = Vec::new();
    for (i, d) in drivers.iter().enumerate() {
        d.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
        d.negotiate(F_VERSION_1);
        let mut inflate = SplitQueue::new(0, 0x10_0000 + 0x2_0000 * i as u64);
        let mut deflate = SplitQueue::new(1, 0x10_1000 + 0x2_0000 * i as u64);
        d.setup_queue(&mut inflate, 0xffff);
        d.setup_queue(&mut deflate, 0xffff);
        d.driver_ok();
        queues.push(inflate);
    }
    // Function `f` inflates 4 pages of its own (the n-th time: the next 4): its used buffer
    // raises its ISR on the device thread.
    let mut inflated = [0u64; 2];
    let mut inflate = |f: usize| {
        let gpa = DATA + (f as u64 * 256 + inflated[f] * 4) * PAGE;
        inflated[f] += 1;
        let (buf, len) = pfns(&ram, PFN_BUF + 0x1000 * f as u64, gpa, 4);
        let q = &mut queues[f];
        let used = q.used_idx(&ram);
        q.post(&ram, buf, len, 0);
        drivers[f].kick(q);
        let what = format!(
            "balloon {f}'s inflate #{} used, INTA# asserted",
            inflated[f]
        );
        wait_until(&what, Duration::from_secs(10), || {
            queues[f].used_idx(&ram) != used && intx.asserting() & 1 << f != 0
        });
    };
    // KVM injects a resampling irqfd's write from a work item: the I/O APIC sees it a moment
    // later.
    let wait_up = |why: &str| {
        wait_until(
            &format!("IRQ 10 up in the I/O APIC: {why}"),
            Duration::from_secs(10),
            || line_up(kvm.fd()),
        )
    };
    let fd = kvm.fd();
    assert!(!line_up(fd), "nothing asserted yet");

    // Raised through the device thread: the I/O APIC sees it.
    inflate(0);
    wait_up("raised through the device thread");
    assert!(balloons[0].0.intx_asserted());
    assert!(!msi_sent(&balloons[0].0));

    // EOI with the ISR still set (the guest has not read it): KVM lowers the line, the
    // device thread raises it again.
    assert_eq!(eoi_and_wait(&mut vcpu, &ram, &intx), (1, 1));
    wait_up("re-asserted after the EOI: the ISR is still set");

    // The guest reads the ISR (read-to-clear: no call, the line stays up until its EOI); a
    // new interrupt arrives before the EOI; the EOI must not lose it.
    assert_eq!(drivers[0].isr(), 1);
    assert!(!balloons[0].0.intx_asserted());
    assert!(
        line_up(fd),
        "KVM lowers the line at the EOI, not at the ISR read"
    );
    inflate(0);
    assert_eq!(eoi_and_wait(&mut vcpu, &ram, &intx), (2, 2));
    wait_up("the interrupt raised between ISR read and EOI");

    // ISR read, then EOI: nothing pending, the line stays low.
    assert_eq!(drivers[0].isr(), 1);
    assert_eq!(eoi_and_wait(&mut vcpu, &ram, &intx), (3, 2));
    assert!(!line_up(fd), "every ISR read: low after the EOI");

    // Two functions pending on the shared line; the first one's ISR read and the EOI leave
    // the line up for the second.
    inflate(0);
    inflate(1);
    wait_up("two functions assert it");
    assert_eq!(drivers[0].isr(), 1);
    assert!(balloons[1].0.intx_asserted());
    assert_eq!(eoi_and_wait(&mut vcpu, &ram, &intx), (4, 3));
    wait_up("balloon 1 still asserts INTA#");
    assert_eq!(drivers[1].isr(), 1);
    assert_eq!(eoi_and_wait(&mut vcpu, &ram, &intx), (5, 3));
    assert!(!line_up(fd), "both ISRs read: low after the EOI");
    // The device thread did every inflate: the pages read back as zeros.
    for (f, (dev, _)) in balloons.iter().enumerate() {
        let c = counters(dev);
        assert_eq!(c.inflated_pages, 4 * inflated[f], "balloon {f}: {c:?}");
        let from = DATA + f as u64 * 256 * PAGE;
        assert_eq!(mismatches(&ram, from, 4 * inflated[f] * PAGE, |_| 0), 0);
    }
}

/// Whether any MSI-X message was counted as sent (INTx only here).
fn msi_sent(dev: &VirtioPciDevice<BalloonDevice>) -> bool {
    dev.msix_counters().sent != 0
}

/// Without the in-kernel irqchip KVM has no resampling irqfd: making the INTx line fails with
/// a reason (and the VMM refuses to build the PCI bus) instead of a line whose interrupts
/// vanish.
#[test]
fn intx_needs_the_in_kernel_irqchip() {
    if !kvm_or_skip("intx_needs_the_in_kernel_irqchip") {
        return;
    }
    let ram = data_ram();
    let kvm = memvisor::vmm::vm::Vm::new(&ram).unwrap();
    let irq = KvmIrq::new(kvm.kvm(), kvm.fd()).unwrap();
    let err = irq.intx(10).err().expect("no irqchip, no INTx irqfd");
    let msg = err.to_string();
    assert!(
        msg.contains("GSI 10") && msg.contains("in-kernel irqchip"),
        "{msg}"
    );
}
