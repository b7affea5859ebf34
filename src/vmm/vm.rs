//! The KVM VM: opening `/dev/kvm`, creating the VM, registering guest RAM as memslots,
//! creating vCPUs with their CPUID, and the host facts that decide what the guest may see.

use crate::memory::GuestRam;
use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::path::Path;
use std::sync::Arc;

/// VM errors say what to check on the host.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` missing or not accessible.
    #[error("cannot open /dev/kvm: {0}. memvisor needs KVM: load kvm_intel or kvm_amd (or run where /dev/kvm exists) and give this user read/write access to /dev/kvm (e.g. add it to the `kvm` group)")]
    NoKvm(kvm_ioctls::Error),
    /// An ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// KVM lacks something memvisor needs.
    #[error("this KVM lacks {0}, which memvisor needs")]
    MissingCap(&'static str),
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { op, source }
}

/// What the host offers for virtualisation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostVirt {
    /// `vmx` or `svm` is in /proc/cpuinfo.
    pub hardware: bool,
    /// How guest physical memory is translated: "EPT", "NPT" or "shadow paging".
    pub mmu: String,
}

impl HostVirt {
    /// Reads /proc/cpuinfo and the kvm module parameters.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>();
        let hardware = flags.contains(&"vmx") || flags.contains(&"svm");
        let param = |p: &str| {
            std::fs::read_to_string(Path::new(p))
                .map(|s| matches!(s.trim(), "Y" | "1"))
                .unwrap_or(false)
        };
        let mmu = if param("/sys/module/kvm_intel/parameters/ept") {
            "EPT"
        } else if param("/sys/module/kvm_amd/parameters/npt") {
            "NPT"
        } else {
            "shadow paging"
        };
        HostVirt {
            hardware,
            mmu: mmu.into(),
        }
    }
}

/// A KVM VM with its memslots registered.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    cpuid: CpuId,
    host: HostVirt,
    apic_ids: crate::vmm::irq_routing::ApicIds,
    routing: std::sync::OnceLock<crate::vmm::irq_routing::GsiRouting>,
}

impl Vm {
    /// Opens KVM, creates the VM and registers every slot of `ram`.
    pub fn new(ram: &GuestRam) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        if !kvm.check_extension(kvm_ioctls::Cap::UserMemory) {
            return Err(VmError::MissingCap("KVM_CAP_USER_MEMORY"));
        }
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        // Intel without unrestricted guest needs these three pages reserved; harmless elsewhere.
        if let Err(e) = fd.set_tss_address(0xfffb_d000) {
            log::debug!("KVM_SET_TSS_ADDR: {e} (not needed on this host)");
        }
        for (slot, s) in ram.slots().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: s.gpa,
                memory_size: s.len,
                userspace_addr: s.host_addr,
            };
            // SAFETY: the host range is a live mapping owned by `ram`, which the caller keeps
            // alive for as long as this VM exists (the runner drops the VM first).
            unsafe { fd.set_user_memory_region(region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            cpuid,
            host: HostVirt::detect(),
            apic_ids: Default::default(),
            routing: std::sync::OnceLock::new(),
        })
    }

    /// The VM's GSI routing table, its one owner (KVM replaces the table whole on every
    /// change): MSI-X vectors become GSI routes with irqfds through it. Use it once the
    /// in-kernel irqchip exists (see [`crate::vmm::irq_routing`]).
    pub fn irq_routing(&self) -> crate::vmm::irq_routing::GsiRouting {
        self.routing
            .get_or_init(|| {
                crate::vmm::irq_routing::GsiRouting::new(self.fd.clone(), self.apic_ids.clone())
            })
            .clone()
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM file descriptor, shareable with devices that raise interrupts (irqfd, MSI).
    pub fn shared_fd(&self) -> Arc<VmFd> {
        self.fd.clone()
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Host virtualisation facts.
    pub fn host(&self) -> &HostVirt {
        &self.host
    }

    /// Creates vCPU `id` with CPUID filtered for this host and a distinct APIC id.
    pub fn create_vcpu(&self, id: u32) -> Result<VcpuFd, VmError> {
        self.create_vcpu_with(id, |_| {})
    }

    /// As [`Vm::create_vcpu`], with `adjust` applied to the CPUID table last.
    pub fn create_vcpu_with(
        &self,
        id: u32,
        adjust: impl FnOnce(&mut CpuId),
    ) -> Result<VcpuFd, VmError> {
        let vcpu = self
            .fd
            .create_vcpu(id as u64)
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = crate::vmm::cpuid::for_vcpu(&self.cpuid, id, self.host.hardware);
        adjust(&mut cpuid);
        vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        // KVM's APIC id of a vCPU is its id, as the CPUID above says.
        self.apic_ids.lock().unwrap().insert(id);
        Ok(vcpu)
    }
}
