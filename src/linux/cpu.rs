//! The machine state a Linux kernel's 64-bit entry point expects (Documentation/arch/x86/boot.rst,
//! "64-bit boot protocol"): long mode with paging on, an identity map of the low 4 GiB, a GDT
//! with flat `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) descriptors, interrupts off, RSI = the
//! zero page. Plus what every vCPU of a Linux guest needs: LINT0/LINT1 of the in-kernel local
//! APIC wired as ExtINT/NMI, and CPUID with the KVM paravirtual leaves (kvmclock).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// GDT.
pub const GDT_GPA: u64 = 0x500;
/// Zero page (`boot_params`).
pub const ZERO_PAGE_GPA: u64 = 0x7000;
/// Initial stack pointer (the kernel sets up its own at once).
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4; the PDPT follows at +0x1000 and four page directories after it.
pub const PML4_GPA: u64 = 0x9000;
/// Command line.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Room for the command line (up to the kernel's own limit, at most this).
pub const CMDLINE_MAX: u64 = 0x1_0000;

/// `__BOOT_CS`.
const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`.
const BOOT_DS: u16 = 0x18;
/// A TSS selector (KVM wants a usable TR).
const BOOT_TSS: u16 = 0x20;

/// CPUID leaf with the KVM signature.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf with the KVM paravirtual features.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// kvmclock (old and new MSRs), no I/O delay, stable clock: what the guest needs to keep time.
pub const KVM_FEATURES_MIN: u32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 24);

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {vcpu}: {what}: {source}")]
    Kvm {
        /// vCPU.
        vcpu: u32,
        /// The operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Writing the boot tables failed.
    #[error("writing the Linux boot page tables and GDT: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// GDT entries: null, null, `__BOOT_CS` (64-bit code), `__BOOT_DS`, a TSS.
pub const GDT: [u64; 5] = [
    0,
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0080_8b00_0000_0067,
];

/// Writes the GDT and page tables identity-mapping the low 4 GiB with 2 MiB pages.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    let w = |v: u64, gpa: u64| mem.write_obj(v, GuestAddress(gpa)).map_err(CpuError::Write);
    for (i, d) in GDT.iter().enumerate() {
        w(*d, GDT_GPA + 8 * i as u64)?;
    }
    let pdpt = PML4_GPA + 0x1000;
    w(pdpt | 0x3, PML4_GPA)?;
    for g in 0..4u64 {
        let pd = pdpt + 0x1000 * (g + 1);
        w(pd | 0x3, pdpt + 8 * g)?;
        for i in 0..512u64 {
            // Present, writable, 2 MiB page.
            w(((g << 30) + (i << 21)) | 0x83, pd + 8 * i)?;
        }
    }
    Ok(())
}

fn segment(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        ..Default::default()
    }
}

/// The special registers of the 64-bit entry.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment(BOOT_CS, 0xb, 1, 0);
    let data = segment(BOOT_DS, 0x3, 0, 1);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: BOOT_TSS,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = (8 * GDT.len() - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = 0x20; // PAE
    sregs.cr0 = 0x8000_0000 | 0x10 | 0x1; // PG, ET, PE
    sregs.efer = 0x500; // LME, LMA
    sregs
}

/// Sets vCPU `id` up for the kernel's 64-bit entry at `entry`. Every vCPU gets the same state;
/// the kernel starts the others itself (INIT/SIPI through the in-kernel local APIC), which
/// replaces it.
pub fn setup_vcpu(vcpu: &VcpuFd, id: u32, entry: u64) -> Result<(), CpuError> {
    let err = |what| {
        move |source| CpuError::Kvm {
            vcpu: id,
            what,
            source,
        }
    };
    set_lint(vcpu).map_err(err("local APIC LINT0/LINT1"))?;
    if id != 0 {
        // Application processors wait for INIT/SIPI from the boot processor.
        return Ok(());
    }
    let sregs = vcpu.get_sregs().map_err(err("get sregs"))?;
    vcpu.set_sregs(&boot_sregs(sregs))
        .map_err(err("set sregs"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(err("set fpu"))?;
    let regs = kvm_regs {
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE_GPA,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("set regs"))?;
    Ok(())
}

/// LVT LINT0 = ExtINT (the 8259 PIC's output), LINT1 = NMI, as firmware leaves them.
fn set_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic()?;
    for (off, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let reg = &mut lapic.regs[off..off + 4];
        let mut v = u32::from_le_bytes([reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8]);
        v = (v & !0x700) | (mode << 8);
        for (d, s) in reg.iter_mut().zip(v.to_le_bytes()) {
            *d = s as _;
        }
    }
    vcpu.set_lapic(&lapic)
}

/// Adds the KVM paravirtual leaves if the table lacks them (signature "KVMKVMKVM", features
/// with kvmclock), and makes sure the feature leaf offers at least [`KVM_FEATURES_MIN`].
pub fn add_kvm_leaves(cpuid: &mut CpuId) {
    let sig = u32::from_le_bytes(*b"KVMK");
    let sig2 = u32::from_le_bytes(*b"VMKV");
    let sig3 = u32::from_le_bytes(*b"M\0\0\0");
    let mut have_sig = false;
    let mut have_features = false;
    for e in cpuid.as_mut_slice() {
        if e.function == KVM_CPUID_SIGNATURE {
            have_sig = true;
            e.eax = e.eax.max(KVM_CPUID_FEATURES);
            (e.ebx, e.ecx, e.edx) = (sig, sig2, sig3);
        } else if e.function == KVM_CPUID_FEATURES {
            have_features = true;
            e.eax |= KVM_FEATURES_MIN;
        }
    }
    if !have_sig {
        let _ = cpuid.push(kvm_bindings::kvm_cpuid_entry2 {
            function: KVM_CPUID_SIGNATURE,
            eax: KVM_CPUID_FEATURES,
            ebx: sig,
            ecx: sig2,
            edx: sig3,
            ..Default::default()
        });
    }
    if !have_features {
        let _ = cpuid.push(kvm_bindings::kvm_cpuid_entry2 {
            function: KVM_CPUID_FEATURES,
            eax: KVM_FEATURES_MIN,
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_leaves_are_added_with_kvmclock() {
        let mut c = CpuId::from_entries(&[kvm_bindings::kvm_cpuid_entry2 {
            function: 0,
            eax: 0xd,
            ..Default::default()
        }])
        .unwrap();
        add_kvm_leaves(&mut c);
        let s = c.as_slice();
        let sig = s
            .iter()
            .find(|e| e.function == KVM_CPUID_SIGNATURE)
            .unwrap();
        let mut name = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name, b"KVMKVMKVM\0\0\0");
        assert_eq!(sig.eax, KVM_CPUID_FEATURES);
        let f = s.iter().find(|e| e.function == KVM_CPUID_FEATURES).unwrap();
        assert_eq!(f.eax & 0x9, 0x9, "kvmclock MSRs, old and new");
        // Idempotent: no second copy.
        add_kvm_leaves(&mut c);
        assert_eq!(
            c.as_slice()
                .iter()
                .filter(|e| e.function == KVM_CPUID_SIGNATURE)
                .count(),
            1
        );
    }

    #[test]
    fn entry_state_is_64_bit_with_boot_selectors() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x10, 1, 0));
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.ss.selector, 0x18);
        assert_eq!(s.efer & 0x500, 0x500);
        assert_ne!(s.cr0 & 0x8000_0001, 0);
        assert_ne!(s.cr4 & 0x20, 0);
        // The code descriptor in the GDT at __BOOT_CS is 64-bit (L) execute/read, present.
        let cs = GDT[(0x10 / 8) as usize];
        assert_eq!((cs >> 53) & 1, 1, "L bit");
        assert_eq!((cs >> 40) & 0xff, 0x9b);
        assert_eq!((GDT[3] >> 40) & 0xff, 0x93);
    }
}
