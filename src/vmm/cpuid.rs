//! CPUID the guest sees: KVM's supported table, a distinct APIC id per vCPU, the hypervisor
//! bit, and features removed that a host without hardware virtualisation cannot run.

use kvm_bindings::CpuId;

/// Leaf 1 ECX: CMPXCHG16B. Under software-emulated KVM (`kvm_pvm`) `lock cmpxchg16b` in guest
/// ring 0 is an emulator internal error.
const ECX_CMPXCHG16B: u32 = 1 << 13;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 7 EDX: IA32_ARCH_CAPABILITIES MSR.
const EDX_ARCH_CAPABILITIES: u32 = 1 << 29;

/// The CPUID table of vCPU `id`. `hardware` is whether the host has VMX/SVM; without it,
/// features the emulated path cannot run are hidden.
pub fn for_vcpu(supported: &CpuId, id: u32, hardware: bool) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24);
                e.ecx |= ECX_HYPERVISOR;
                if !hardware {
                    e.ecx &= !ECX_CMPXCHG16B;
                }
            }
            7 if e.index == 0 && !hardware => e.edx &= !EDX_ARCH_CAPABILITIES,
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_ids_and_filters() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ecx: ECX_CMPXCHG16B | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                edx: EDX_ARCH_CAPABILITIES | 2,
                ..Default::default()
            },
        ];
        let table = CpuId::from_entries(&entries).unwrap();
        let c = for_vcpu(&table, 3, false);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!(s[0].ebx & 0xffff, 0x0800);
        assert_eq!(s[0].ecx & ECX_CMPXCHG16B, 0);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!(s[2].edx, 2);
        let hw = for_vcpu(&table, 1, true);
        assert_ne!(
            hw.as_slice()[0].ecx & ECX_CMPXCHG16B,
            0,
            "kept with hardware virtualisation"
        );
    }
}
