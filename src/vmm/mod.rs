//! The virtual machine itself, on KVM: this layer owns the VM file descriptor and its memslots
//! ([`vm`]), what the guest CPU looks like ([`cpuid`]), the vCPU threads with their `KVM_RUN`
//! loop and exit accounting ([`vcpu`]), the emulation assists for hosts without VMX/SVM
//! ([`assist`]), KVM's own binary statistics ([`kvm_stats`]), the VM's GSI routing table with
//! the MSI routes and irqfds of PCI functions ([`irq_routing`]) and the built-in guest's boot
//! state ([`boot`]). It uses guest memory and the devices below it; booting Linux and running a
//! whole VM are above it ([`crate::linux`], [`crate::runner`]).

pub mod assist;
pub mod boot;
pub mod cpuid;
pub mod irq_routing;
pub mod kvm_stats;
pub mod vcpu;
pub mod vm;
pub mod working_set;
