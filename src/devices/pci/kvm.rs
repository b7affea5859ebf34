//! INTx delivery for PCI functions through KVM's in-kernel irqchip (`KVM_IRQ_LINE` on a GSI,
//! an I/O APIC input), and the registration of queue notification addresses as ioeventfds
//! (`KVM_IOEVENTFD`) for every virtio transport. MSI-X messages do not come here: they leave
//! through GSI routes and irqfds (`crate::vmm::irq_routing`).
//!
//! # Why INTx is not an irqfd
//! A level-triggered line through an irqfd needs `KVM_IRQFD_FLAG_RESAMPLE`: KVM lowers the
//! line at the guest's EOI and signals a resample eventfd, and the device must then raise it
//! again if its ISR is still non-zero (an interrupt that arrived between the guest's ISR read
//! and its EOI would otherwise be lost). Someone has to wait on that resample eventfd — the
//! device event thread's epoll set, which is being reworked separately — and the shared INTA#
//! line ([`super::shared_intx`]) would need the wired OR re-evaluated there too. INTx is only
//! used by guests without MSI-X (`pci=nomsi`; Linux's virtio-pci takes MSI-X), so it keeps
//! `KVM_IRQ_LINE`: the level is set and cleared exactly when the ISR changes, from the thread
//! that changed it.
//!
//! Without the in-kernel irqchip (`KVM_CREATE_IRQCHIP`) `KVM_IRQ_LINE` fails; the failure is
//! logged by the transport.

use super::msix::IntxLine;
use crate::devices::events::IoeventRegistrar;
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// INTx delivery and ioeventfd registration for one KVM VM. Holds its own duplicate of the VM
/// descriptor, so it can live in the device bus independently of the `Vm` that created it.
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
