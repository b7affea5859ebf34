//! INTx delivery for PCI functions through KVM's in-kernel irqchip (an irqfd with a resample
//! eventfd on a GSI, an I/O APIC and PIC input), and the registration of queue notification
//! addresses as ioeventfds (`KVM_IOEVENTFD`) for every virtio transport. MSI-X messages do not
//! come here: they leave through GSI routes and irqfds (`crate::vmm::irq_routing`).
//!
//! # INTx as an irqfd with a resample eventfd
//! INTA# is level-triggered: it stays asserted while the function's ISR is non-zero. An irqfd
//! registered with `KVM_IRQFD_FLAG_RESAMPLE` ([`IntxIrqfd`], made by [`KvmIrq::intx`]) gives
//! KVM that level without an ioctl per change:
//! - **assert** = write the irqfd (from whichever thread raised the ISR: the device thread,
//!   the API, a vCPU's configuration write). KVM raises the GSI and keeps it up; it does so
//!   from a work item, so the I/O APIC sees the line a moment after the write returns.
//! - **deassert** happens in KVM, not here: at the guest's EOI for that line (the I/O APIC's or
//!   the PIC's ack) KVM lowers the GSI and signals the resample eventfd. The device event
//!   thread waits on that eventfd ([`super::shared_intx::IntxResampler`]) and writes the irqfd
//!   again if a function on the line still has ISR bits set: an interrupt raised between the
//!   guest's ISR read and its EOI is not lost.
//! - The guest's ISR read (read-to-clear, on the vCPU thread) makes no call at all: the line
//!   simply is not raised again at the next resample. Until that EOI the line stays up in KVM
//!   with the ISR already clear; that is harmless, because the I/O APIC holds a level-triggered
//!   pin's Remote IRR until the EOI anyway and does not deliver it twice. The cases where the
//!   guest has no interrupt in service (the pin masked, INTx disabled in the command register,
//!   MSI-X enabled, a device reset) leave the line up until the guest next EOIs that line; at
//!   worst the guest sees one interrupt for which every ISR reads 0 (Linux counts it as
//!   unhandled and moves on). This is how QEMU's VFIO INTx, crosvm and Cloud Hypervisor's
//!   legacy interrupts use resample irqfds.
//!
//! KVM lowers every resampling irqfd of a GSI together (one shared resampler per GSI), so the
//! wired OR of several functions on one INTA# line must be re-evaluated as a whole at each
//! resample: that is [`super::shared_intx::SharedIntx`], which owns the line's one irqfd.
//!
//! Without the in-kernel irqchip (`KVM_CREATE_IRQCHIP`) there is no resampling irqfd (KVM
//! answers `EINVAL`): [`KvmIrq::intx`] fails with [`IntxError::Irqfd`] instead of handing
//! out a line whose interrupts vanish. No thread sets INTx levels with `KVM_IRQ_LINE` any more.

use super::msix::IntxLine;
use crate::devices::events::IoeventRegistrar;
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// INTx delivery and ioeventfd registration for one KVM VM. Holds its own duplicate of the VM
/// descriptor, so it can live in the device bus independently of the `Vm` that created it.
pub struct KvmIrq {
    vm: VmFd,
}

/// Errors making an INTx line; each says what is missing.
#[derive(Debug, thiserror::Error)]
pub enum IntxError {
    /// The line's eventfds could not be created.
    #[error("INTx on GSI {gsi}: creating its irqfd and resample eventfd: {source} (raise the open-file limit?)")]
    Eventfd {
        /// The GSI.
        gsi: u32,
        /// What `eventfd` answered.
        source: io::Error,
    },
    /// KVM refused the resampling irqfd.
    #[error("INTx on GSI {gsi}: KVM_IRQFD with a resample eventfd: {source} (INTx needs KVM's in-kernel irqchip, KVM_CREATE_IRQCHIP before the devices are built, and a GSI below 24)")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// What KVM answered.
        source: io::Error,
    },
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

    /// The INTx line wired to `gsi` (an I/O APIC pin number with KVM's default routing): an
    /// irqfd with a resample eventfd (see the module doc). Made at setup (`KVM_IRQFD`).
    pub fn intx(&self, gsi: u32) -> Result<Arc<IntxIrqfd>, IntxError> {
        let eventfd =
            || EventFd::new(EFD_NONBLOCK).map_err(|source| IntxError::Eventfd { gsi, source });
        let (trigger, resample) = (eventfd()?, eventfd()?);
        self.vm
            .register_irqfd_with_resample(&trigger, &resample, gsi)
            .map_err(|e| IntxError::Irqfd {
                gsi,
                source: kvm_err(e),
            })?;
        Ok(Arc::new(IntxIrqfd {
            gsi,
            trigger,
            resample,
        }))
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

/// One INTx line as KVM sees it: an irqfd on a GSI with a resample eventfd. Asserting writes
/// the irqfd; deasserting does nothing (KVM lowers the line at the guest's EOI and signals
/// [`IntxIrqfd::resample_event`]: the owner must then assert it again if it is still wanted).
/// Dropping it closes the irqfd, which detaches it in KVM and lowers the line.
pub struct IntxIrqfd {
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
}

impl IntxIrqfd {
    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// A descriptor of the resample eventfd KVM signals after lowering the line at an EOI (for
    /// the device thread's epoll set).
    pub fn resample_event(&self) -> io::Result<EventFd> {
        self.resample.try_clone()
    }
}

impl IntxLine for IntxIrqfd {
    fn set_level(&self, asserted: bool) -> io::Result<()> {
        if asserted {
            self.trigger.write(1)?;
        }
        Ok(())
    }
}
