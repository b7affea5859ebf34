//! Emulation assists for hosts whose KVM has no VMX/SVM (guest ring 0 is emulated there, see
//! `../shared/design/kvm-on-this-machine.md`). That emulator stops `KVM_RUN` with
//! `KVM_EXIT_INTERNAL_ERROR` on a few instructions a Linux kernel executes; the vCPU loop reads
//! the instruction at RIP through the guest's own page tables ([`translate`], [`read_virt`]) and
//! [`decide`]s whether it can complete it:
//! - `int3` (0xCC): RIP past it and vector 3 (`#BP`) injected, so the guest's handler runs
//!   (the kernel's int3 self-test, kprobes, jump-label patching);
//! - `fwait` (0x9B) with no pending x87 exception: it does nothing else, so RIP past it.
//!
//! Anything else still ends the run, with the instruction bytes in the message. On hosts with
//! hardware virtualisation none of this runs.

use crate::memory::GuestRam;
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress};

/// CR0.PG.
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57.
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry: present.
const PTE_P: u64 = 1;
/// Page-table entry: page size (a 1 GiB leaf at level 3, a 2 MiB leaf at level 2).
const PTE_PS: u64 = 1 << 7;
/// Physical-address bits 51:12 of an entry (and of CR3).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// x87 status word: exception summary (an unmasked exception is pending).
pub const FSW_ES: u16 = 1 << 7;
/// Longest x86 instruction.
pub const MAX_INSN: usize = 15;

/// An assist the vCPU loop performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssistKind {
    /// `int3` in guest ring 0: `#BP` injected.
    Int3,
    /// `fwait` with no x87 exception pending: stepped over.
    Fwait,
}

impl AssistKind {
    /// Every kind, in report order.
    pub const ALL: [AssistKind; 2] = [AssistKind::Int3, AssistKind::Fwait];

    /// Name in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            AssistKind::Int3 => "int3",
            AssistKind::Fwait => "fwait",
        }
    }
}

/// Why a guest virtual address could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// A paging-structure entry on the way is not present.
    #[error("guest virtual address {gva:#x} does not translate: its level-{level} page-table entry {entry:#x} (at guest-physical {at:#x}) is not present; the guest's page tables do not map the instruction it stopped on, so memvisor cannot read it (a guest bug, or run on a host with VMX/SVM)")]
    NotPresent {
        /// The address.
        gva: u64,
        /// 4: PML4, 3: PDPT, 2: page directory, 1: page table.
        level: u8,
        /// The entry.
        entry: u64,
        /// Where it is.
        at: u64,
    },
    /// A paging structure or the page itself is not guest RAM.
    #[error("guest virtual address {gva:#x}: guest-physical {gpa:#x} on its translation is outside guest RAM; check the guest's page tables (CR3 {cr3:#x})")]
    OutsideRam {
        /// The address.
        gva: u64,
        /// What could not be read.
        gpa: u64,
        /// The guest's CR3.
        cr3: u64,
    },
    /// A paging mode the walk does not implement.
    #[error("the guest uses {0}, which memvisor's emulation assists do not walk (they handle no paging and 4-level long-mode paging); boot the kernel with `no5lvl` or run on a host with VMX/SVM")]
    Unsupported(&'static str),
}

/// Why an internal error was not assisted.
#[derive(Debug, thiserror::Error)]
pub enum AssistError {
    /// A vCPU ioctl failed.
    #[error("{op} failed: {source}; the vCPU's state could not be read or changed")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The instruction's address does not translate.
    #[error("the instruction at RIP cannot be read: {0}")]
    Walk(#[from] WalkError),
    /// Not an instruction memvisor completes.
    #[error("KVM could not emulate the guest instruction at RIP (bytes {0}); on hosts without VMX/SVM guest ring-0 code is emulated and memvisor completes only int3 and fwait: run on a host with VMX/SVM, or keep the instruction out of the guest kernel (e.g. `clearcpuid=` for a CPU feature it patches in)")]
    Unsupported(String),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> AssistError {
    move |source| AssistError::Kvm { op, source }
}

/// Completes the instruction that stopped `fd` with `KVM_EXIT_INTERNAL_ERROR`, reading it
/// through the guest's page tables in `ram`: `int3` (RIP past it, `#BP` injected) or `fwait`
/// with no x87 exception pending (RIP past it). Returns which; anything else is an error
/// naming the instruction's bytes.
pub fn complete(fd: &kvm_ioctls::VcpuFd, ram: &GuestRam) -> Result<AssistKind, AssistError> {
    let mut regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    // Outside 64-bit mode the code segment's base applies; in 64-bit mode it is 0.
    let linear = if sregs.cs.l == 0 {
        sregs.cs.base.wrapping_add(regs.rip)
    } else {
        regs.rip
    };
    let mut buf = [0u8; MAX_INSN];
    let n = read_virt(ram, &Paging::from(&sregs), linear, &mut buf)?;
    let insn = &buf[..n];
    let kind = decide(insn, || {
        fd.get_fpu().map(|f| f.fsw & FSW_ES != 0).unwrap_or(true)
    })
    .ok_or_else(|| AssistError::Unsupported(hex(insn)))?;
    regs.rip = regs.rip.wrapping_add(1);
    fd.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    if kind == AssistKind::Int3 {
        let mut ev = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        ev.exception.injected = 1;
        ev.exception.nr = 3;
        ev.exception.has_error_code = 0;
        ev.exception.error_code = 0;
        fd.set_vcpu_events(&ev)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    }
    Ok(kind)
}

/// The guest's paging state, from `KVM_GET_SREGS`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl From<&kvm_bindings::kvm_sregs> for Paging {
    fn from(s: &kvm_bindings::kvm_sregs) -> Self {
        Paging {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        }
    }
}

/// The guest-physical address of `gva` under `paging`: identity without paging, a 4-level walk
/// (4 KiB, 2 MiB and 1 GiB leaves) in long mode. Access rights are not checked: the guest was
/// already executing there.
pub fn translate(ram: &GuestRam, paging: &Paging, gva: u64) -> Result<u64, WalkError> {
    if paging.cr0 & CR0_PG == 0 {
        return Ok(gva);
    }
    if paging.cr4 & CR4_LA57 != 0 {
        return Err(WalkError::Unsupported("5-level paging (CR4.LA57)"));
    }
    if paging.efer & EFER_LMA == 0 || paging.cr4 & CR4_PAE == 0 {
        return Err(WalkError::Unsupported("32-bit paging"));
    }
    let mut table = paging.cr3 & ADDR_MASK;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * (level as u64 - 1);
        let at = table + ((gva >> shift) & 0x1ff) * 8;
        let entry: u64 =
            ram.memory()
                .read_obj(GuestAddress(at))
                .map_err(|_| WalkError::OutsideRam {
                    gva,
                    gpa: at,
                    cr3: paging.cr3,
                })?;
        if entry & PTE_P == 0 {
            return Err(WalkError::NotPresent {
                gva,
                level,
                entry,
                at,
            });
        }
        let leaf = level == 1 || ((level == 2 || level == 3) && entry & PTE_PS != 0);
        if leaf {
            let page_mask = (1u64 << shift) - 1;
            return Ok((entry & ADDR_MASK & !page_mask) | (gva & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 is always a leaf")
}

/// Reads `buf.len()` bytes at guest virtual address `gva`, page by page. Returns how many bytes
/// were read: fewer when a later page does not translate; an error when the first does not.
pub fn read_virt(
    ram: &GuestRam,
    paging: &Paging,
    gva: u64,
    buf: &mut [u8],
) -> Result<usize, WalkError> {
    let mut done = 0;
    while done < buf.len() {
        let va = gva.wrapping_add(done as u64);
        let gpa = match translate(ram, paging, va) {
            Ok(gpa) => gpa,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        let in_page = (4096 - (va & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        if ram
            .memory()
            .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
            .is_err()
        {
            if done == 0 {
                return Err(WalkError::OutsideRam {
                    gva: va,
                    gpa,
                    cr3: paging.cr3,
                });
            }
            break;
        }
        done += n;
    }
    Ok(done)
}

/// What to do about the instruction `insn` (bytes at RIP) that stopped KVM. `x87_pending` is
/// whether the x87 status word has an unmasked exception pending (read only for `fwait`).
pub fn decide(insn: &[u8], x87_pending: impl FnOnce() -> bool) -> Option<AssistKind> {
    match insn.first()? {
        0xcc => Some(AssistKind::Int3),
        0x9b if !x87_pending() => Some(AssistKind::Fwait),
        _ => None,
    }
}

/// `insn` as hex bytes (`0f 01 cb`).
pub fn hex(insn: &[u8]) -> String {
    insn.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;

    const MIB: u64 = 1 << 20;

    fn long_mode(cr3: u64) -> Paging {
        Paging {
            cr0: CR0_PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        }
    }

    fn put(ram: &GuestRam, at: u64, v: u64) {
        ram.memory().write_obj(v, GuestAddress(at)).unwrap();
    }

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000; kernel-style addresses.
    fn tables(ram: &GuestRam) {
        let gva_4k: u64 = 0xffff_ffff_8100_0000;
        let idx = |va: u64, l: u64| (va >> (12 + 9 * (l - 1))) & 0x1ff;
        put(ram, 0x1000 + idx(gva_4k, 4) * 8, 0x2000 | 3);
        // PDPT: the 1 GiB containing gva_4k goes to the PD; index 0 is a 1 GiB leaf at 0.
        put(ram, 0x2000 + idx(gva_4k, 3) * 8, 0x3000 | 3);
        put(ram, 0x2000, PTE_PS | 3);
        // PD: the 2 MiB of gva_4k goes to the PT; the next 2 MiB is a 2 MiB leaf at 4 MiB.
        put(ram, 0x3000 + idx(gva_4k, 2) * 8, 0x4000 | 3);
        put(
            ram,
            0x3000 + (idx(gva_4k, 2) + 1) * 8,
            (4 * MIB) | PTE_PS | 3,
        );
        // PT: page 0 → 0x7000, page 1 → 0x9000 (not contiguous), page 2 not present.
        put(ram, 0x4000, 0x7000 | 3);
        put(ram, 0x4008, 0x9000 | 3);
        // Index 0 of the PML4 covers the low 512 GiB with the same PDPT.
        put(ram, 0x1000, 0x2000 | 3);
    }

    #[test]
    fn walks_4k_2m_and_1g_leaves() {
        let ram = GuestRam::new(&[RegionConfig::anon(16 * MIB)]).unwrap();
        tables(&ram);
        let p = long_mode(0x1000);
        let k = 0xffff_ffff_8100_0000u64;
        assert_eq!(translate(&ram, &p, k + 0x123), Ok(0x7123));
        assert_eq!(translate(&ram, &p, k + 0x1ffc), Ok(0x9ffc));
        assert_eq!(
            translate(&ram, &p, k + 2 * MIB + 0x1234),
            Ok(4 * MIB + 0x1234)
        );
        // The low 1 GiB leaf maps GVA = GPA.
        assert_eq!(translate(&ram, &p, 0x3456_789a), Ok(0x3456_789a));
        // Flags in the low bits of CR3 are ignored.
        assert_eq!(
            translate(&ram, &long_mode(0x1000 | 0x18), k + 5),
            Ok(0x7005)
        );
    }

    #[test]
    fn untranslatable_addresses_are_errors() {
        let ram = GuestRam::new(&[RegionConfig::anon(16 * MIB)]).unwrap();
        tables(&ram);
        let p = long_mode(0x1000);
        let k = 0xffff_ffff_8100_0000u64;
        match translate(&ram, &p, k + 2 * 4096) {
            Err(WalkError::NotPresent { level: 1, at, .. }) => assert_eq!(at, 0x4010),
            other => panic!("{other:?}"),
        }
        match translate(&ram, &p, 0xffff_8000_0000_0000) {
            Err(WalkError::NotPresent { level: 4, .. }) => {}
            other => panic!("{other:?}"),
        }
        // CR3 outside RAM.
        assert!(matches!(
            translate(&ram, &long_mode(64 * MIB), k),
            Err(WalkError::OutsideRam { .. })
        ));
        let la57 = Paging {
            cr4: CR4_PAE | CR4_LA57,
            ..p
        };
        assert!(matches!(
            translate(&ram, &la57, k),
            Err(WalkError::Unsupported(_))
        ));
        // Without paging, GVA = GPA.
        assert_eq!(translate(&ram, &Paging::default(), 0x1234), Ok(0x1234));
    }

    #[test]
    fn reads_across_pages_and_stops_where_translation_ends() {
        let ram = GuestRam::new(&[RegionConfig::anon(16 * MIB)]).unwrap();
        tables(&ram);
        let p = long_mode(0x1000);
        let k = 0xffff_ffff_8100_0000u64;
        ram.memory()
            .write_slice(&[0xcc, 0x9b, 0x90], GuestAddress(0x7ffe))
            .unwrap();
        ram.memory()
            .write_slice(&[0x0f, 0x0b], GuestAddress(0x9000))
            .unwrap();
        let mut b = [0u8; 4];
        assert_eq!(read_virt(&ram, &p, k + 0xffe, &mut b), Ok(4));
        assert_eq!(b, [0xcc, 0x9b, 0x0f, 0x0b]);
        // Page 2 is not mapped: a read from the end of page 1 stops there.
        let mut b = [0u8; MAX_INSN];
        assert_eq!(read_virt(&ram, &p, k + 0x1ffe, &mut b), Ok(2));
        assert!(read_virt(&ram, &p, k + 0x2000, &mut b).is_err());
    }

    #[test]
    fn decides_only_int3_and_a_harmless_fwait() {
        assert_eq!(
            decide(&[0xcc], || panic!("not read")),
            Some(AssistKind::Int3)
        );
        assert_eq!(decide(&[0x9b, 0x90], || false), Some(AssistKind::Fwait));
        assert_eq!(decide(&[0x9b], || true), None);
        assert_eq!(decide(&[0xf3, 0x0f, 0xb8], || false), None);
        assert_eq!(decide(&[], || false), None);
        assert_eq!(hex(&[0x0f, 0x01, 0xcb]), "0f 01 cb");
    }
}
