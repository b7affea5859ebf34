//! Interrupts of a Linux guest: KVM's in-kernel irqchip (dual 8259 PIC, I/O APIC, local APICs)
//! and PIT, created before any vCPU, and an irqfd per legacy interrupt line (GSI) for devices
//! such as the UART. PCI functions deliver INTx through [`crate::devices::pci::KvmIrq`] (an
//! irqfd with a resample eventfd) and MSI-X through GSI routes and irqfds
//! (`crate::vmm::irq_routing`) into the same irqchip.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// Errors creating or using the irqchip.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// A KVM VM ioctl failed.
    #[error(
        "KVM {op}: {source}. A Linux guest needs KVM's in-kernel irqchip (KVM_CAP_IRQCHIP) and PIT"
    )]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// KVM's in-kernel irqchip of one VM.
#[derive(Clone)]
pub struct IrqChip {
    vm: Arc<VmFd>,
}

impl IrqChip {
    /// Creates the in-kernel irqchip and PIT (speaker port emulated as a dummy). Must run before
    /// the first vCPU is created.
    pub fn create(vm: Arc<VmFd>) -> Result<IrqChip, IrqError> {
        vm.create_irq_chip().map_err(|source| IrqError::Kvm {
            op: "KVM_CREATE_IRQCHIP",
            source,
        })?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(|source| IrqError::Kvm {
            op: "KVM_CREATE_PIT2",
            source,
        })?;
        Ok(IrqChip { vm })
    }

    /// A new eventfd that raises `gsi` (with KVM's default routing, GSIs 0-15 are the ISA IRQs
    /// on both the PIC and the I/O APIC, 16-23 the other I/O APIC pins) each time it is written.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, IrqError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(IrqError::EventFd)?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(|source| IrqError::Kvm {
                op: "KVM_IRQFD",
                source,
            })?;
        Ok(evt)
    }
}
