//! Interrupt delivery for PCI functions through KVM's in-kernel irqchip: MSI messages with
//! `KVM_SIGNAL_MSI`, INTx levels with `KVM_IRQ_LINE` on a GSI (an IOAPIC input); and the
//! registration of queue notification addresses as ioeventfds (`KVM_IOEVENTFD`) for every
//! virtio transport.
//!
//! Both need the VM to have an in-kernel irqchip (`KVM_CREATE_IRQCHIP`); without it the ioctls
//! fail and the failures are counted by the MSI-X table ([`super::MsixCounters::failed`]).

use super::msix::{IntxLine, MsiSink};
use crate::devices::events::IoeventRegistrar;
use kvm_bindings::kvm_msi;
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// MSI and INTx delivery into one KVM VM. Holds its own duplicate of the VM descriptor, so it
/// can live in the device bus independently of the `Vm` that created it.
pub struct KvmIrq {
    vm: VmFd,
}

fn kvm_err(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl KvmIrq {
    /// Delivery into the VM `vm` (opened through `kvm`).
    pub fn new(kvm: &Kvm, vm: &VmFd) -> io::Result<Arc<Self>> {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold open creates a new descriptor and
        // touches no memory.
        let fd = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh duplicate of a KVM VM descriptor that nothing else owns; the
        // returned VmFd takes ownership and closes it on drop.
        let vm = unsafe { kvm.create_vmfd_from_rawfd(fd) }.map_err(|e| {
            // SAFETY: ownership was not taken on failure; close our duplicate.
            unsafe { libc::close(fd) };
            kvm_err(e)
        })?;
        Ok(Arc::new(KvmIrq { vm }))
    }

    /// The INTx line wired to `gsi` (an IOAPIC pin number with KVM's default routing).
    pub fn intx(self: &Arc<Self>, gsi: u32) -> Arc<dyn IntxLine> {
        Arc::new(KvmIntx {
            irq: self.clone(),
            gsi,
        })
    }
}

impl MsiSink for KvmIrq {
    fn signal_msi(&self, addr: u64, data: u32) -> io::Result<()> {
        let msi = kvm_msi {
            address_lo: addr as u32,
            address_hi: (addr >> 32) as u32,
            data,
            ..Default::default()
        };
        // Returns the number of CPUs that accepted the interrupt (0 when their local APIC is
        // software-disabled): a delivered message as far as the device is concerned. No vCPU
        // with the destination APIC id gives EPERM, which the MSI-X table counts as failed.
        self.vm.signal_msi(msi).map(|_| ()).map_err(kvm_err)
    }
}

impl IoeventRegistrar for KvmIrq {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> io::Result<()> {
        let at = IoEventAddress::Mmio(addr);
        match datamatch {
            Some(v) => self.vm.register_ioevent(fd, &at, v),
            None => self.vm.register_ioevent(fd, &at, NoDatamatch),
        }
        .map_err(kvm_err)
    }

    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> io::Result<()> {
        let at = IoEventAddress::Mmio(addr);
        match datamatch {
            Some(v) => self.vm.unregister_ioevent(fd, &at, v),
            None => self.vm.unregister_ioevent(fd, &at, NoDatamatch),
        }
        .map_err(kvm_err)
    }
}

struct KvmIntx {
    irq: Arc<KvmIrq>,
    gsi: u32,
}

impl IntxLine for KvmIntx {
    fn set_level(&self, asserted: bool) -> io::Result<()> {
        self.irq
            .vm
            .set_irq_line(self.gsi, asserted)
            .map_err(kvm_err)
    }
}
