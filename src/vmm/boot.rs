//! Booting the built-in guest: loading its embedded image and building, in guest memory, what a
//! 64-bit program needs (GDT, per-vCPU TSS, IDT pointing at the image's exception stubs,
//! identity page tables over all RAM and the MMIO hole, the boot-info page), then the register
//! state each vCPU starts with. The guest itself runs only a dozen ring-0 instructions.

use crate::abi::{self, BootInfo, GpaRange, ImageHeader};
use crate::config::workload::Workload;
use crate::memory::GuestRam;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

/// The built-in guest, built from `guest/` by `build.rs`.
pub static GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/memvisor-guest.elf"));

/// Boot errors.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image could not be loaded.
    #[error("loading the built-in guest: {0}")]
    Load(String),
    /// Guest memory write failed.
    #[error("writing {what} into guest memory: {source}")]
    Write {
        /// What was written.
        what: &'static str,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
    /// The layout cannot hold this configuration.
    #[error("{0}")]
    Layout(String),
    /// Setting vCPU registers failed.
    #[error("setting up vCPU {vcpu} registers ({what}): {source}")]
    Regs {
        /// vCPU index.
        vcpu: u32,
        /// Which registers.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

// SAFETY: plain-data `repr(C)` structs of integers without padding holes that matter; any
// byte pattern is a valid value.
unsafe impl ByteValued for BootInfo {}
// SAFETY: as above.
unsafe impl ByteValued for ImageHeader {}
// SAFETY: as above.
unsafe impl ByteValued for abi::Hypercall {}

/// Where the guest was loaded and what the vCPUs need to start.
#[derive(Clone, Copy, Debug)]
pub struct BootLayout {
    /// Entry point.
    pub entry: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Boot flags passed in rcx.
    pub flags: u64,
}

fn write<T: ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    v: T,
    gpa: u64,
) -> Result<(), BootError> {
    mem.write_obj(v, GuestAddress(gpa))
        .map_err(|source| BootError::Write { what, source })
}

/// Loads the image and writes every table and the boot info.
pub fn setup(
    ram: &GuestRam,
    vcpus: u32,
    workload: &Workload,
    flags: u64,
    balloon_mmio: u64,
) -> Result<BootLayout, BootError> {
    let mem = ram.memory();
    if !ram.is_ram(0, abi::WORK_AREA_GPA) {
        return Err(BootError::Layout(format!(
            "the built-in guest needs RAM from 0 to {:#x}; make the first region at least {} MiB",
            abi::WORK_AREA_GPA,
            abi::MIN_RAM_BYTES >> 20
        )));
    }
    let loaded = Elf::load(
        mem,
        None,
        &mut std::io::Cursor::new(GUEST_IMAGE),
        Some(GuestAddress(abi::IMAGE_GPA)),
    )
    .map_err(|e| BootError::Load(e.to_string()))?;
    if loaded.kernel_end > abi::IMAGE_GPA + abi::IMAGE_MAX_BYTES {
        return Err(BootError::Load("image larger than its slot".into()));
    }
    let header: ImageHeader = mem
        .read_obj(GuestAddress(abi::IMAGE_GPA))
        .map_err(|source| BootError::Write {
            what: "image header",
            source,
        })?;
    if header.magic != abi::IMAGE_MAGIC {
        return Err(BootError::Load("image header magic mismatch".into()));
    }

    // GDT: null, kernel code/data, user code/data, then one 16-byte TSS descriptor per vCPU.
    let mut gdt: Vec<u64> = vec![
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00af_fb00_0000_ffff,
        0x00cf_f300_0000_ffff,
    ];
    for i in 0..vcpus as u64 {
        let base = abi::TSS_GPA + i * abi::TSS_STRIDE;
        let limit = tss_limit();
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit TSS (available)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        gdt.push(low);
        gdt.push(base >> 32);
    }
    for (i, d) in gdt.iter().enumerate() {
        write(mem, "GDT", *d, abi::GDT_GPA + 8 * i as u64)?;
    }
    // TSS: rsp0 at offset 4; an I/O permission bitmap right after it that grants ring 3 the
    // hypercall port and nothing else.
    let mut bitmap = vec![0xffu8; abi::IO_BITMAP_BYTES as usize + 1];
    // A 32-bit `out` checks the bits of all four ports it covers.
    for port in abi::HYPERCALL_PORT as usize..abi::HYPERCALL_PORT as usize + 4 {
        bitmap[port / 8] &= !(1 << (port % 8));
    }
    for i in 0..vcpus as u64 {
        let tss = abi::TSS_GPA + i * abi::TSS_STRIDE;
        write(mem, "TSS", kernel_stack_top(i as u32), tss + 4)?;
        write(mem, "TSS", abi::TSS_SIZE as u16, tss + 102)?;
        mem.write_slice(&bitmap, GuestAddress(tss + abi::TSS_SIZE))
            .map_err(|source| BootError::Write {
                what: "TSS I/O bitmap",
                source,
            })?;
    }
    // IDT: 32 interrupt gates (DPL 0) to the image's exception stubs.
    for v in 0..abi::EXCEPTION_VECTORS as u64 {
        let h = header.exception_stubs + v * abi::EXCEPTION_STUB_STRIDE;
        let low = (h & 0xffff)
            | ((abi::SEL_KERNEL_CODE as u64) << 16)
            | (0x8e << 40)
            | (((h >> 16) & 0xffff) << 48);
        write(mem, "IDT", low, abi::IDT_GPA + 16 * v)?;
        write(mem, "IDT", h >> 32, abi::IDT_GPA + 16 * v + 8)?;
    }
    // Page tables: identity map with 2 MiB pages, user-accessible, up to the end of RAM or 4 GiB
    // (so the MMIO hole with its devices is reachable), whichever is higher.
    let top = ram.end().max(crate::memory::MMIO_HOLE_END);
    let gibs = top.div_ceil(1 << 30);
    let max_gibs = abi::PAGE_TABLE_BYTES / 4096 - 2;
    if gibs > max_gibs {
        return Err(BootError::Layout(format!(
            "the built-in guest maps at most {max_gibs} GiB of guest-physical space; RAM ends at {top:#x}"
        )));
    }
    let pml4 = abi::PAGE_TABLE_GPA;
    let pdpt = pml4 + 0x1000;
    write(mem, "page tables", pdpt | 0x7, pml4)?;
    for g in 0..gibs {
        let pd = pdpt + 0x1000 * (g + 1);
        write(mem, "page tables", pd | 0x7, pdpt + 8 * g)?;
        let entries: Vec<u64> = (0..512u64)
            .map(|i| ((g << 30) + (i << 21)) | 0x87)
            .collect();
        mem.write_slice(entries.as_slice().as_bytes_compat(), GuestAddress(pd))
            .map_err(|source| BootError::Write {
                what: "page tables",
                source,
            })?;
    }
    // Boot info.
    let mut info = BootInfo {
        flags,
        num_vcpus: vcpus as u64,
        balloon_mmio,
        ..Default::default()
    };
    let ranges = ram.ram_ranges();
    if ranges.len() > abi::MAX_RANGES {
        return Err(BootError::Layout(format!(
            "at most {} RAM ranges",
            abi::MAX_RANGES
        )));
    }
    for (gpa, len) in ranges {
        info.ram[info.num_ram as usize] = GpaRange {
            start: gpa,
            end: gpa + len,
        };
        info.num_ram += 1;
        let start = gpa.max(abi::WORK_AREA_GPA);
        if start < gpa + len {
            info.work[info.num_work as usize] = GpaRange {
                start,
                end: gpa + len,
            };
            info.num_work += 1;
        }
    }
    for (i, step) in workload.steps.iter().enumerate() {
        info.ops[i] = step.to_op();
    }
    info.num_ops = workload.steps.len() as u64;
    write(mem, "boot info", info, abi::BOOT_INFO_GPA)?;
    Ok(BootLayout {
        entry: loaded.kernel_load.0,
        vcpus,
        flags,
    })
}

/// Byte view of a `u64` slice (little-endian host).
trait AsBytesCompat {
    fn as_bytes_compat(&self) -> &[u8];
}

impl AsBytesCompat for [u64] {
    fn as_bytes_compat(&self) -> &[u8] {
        // SAFETY: u64 has no padding and any byte view of it is valid; the length is exact.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast(), std::mem::size_of_val(self)) }
    }
}

/// TSS limit: the TSS, its I/O bitmap and the terminator byte.
fn tss_limit() -> u64 {
    abi::TSS_SIZE + abi::IO_BITMAP_BYTES
}

fn stack_base(vcpu: u32) -> u64 {
    abi::STACKS_GPA + vcpu as u64 * abi::STACK_BYTES_PER_VCPU
}

fn kernel_stack_top(vcpu: u32) -> u64 {
    stack_base(vcpu) + abi::KERNEL_STACK_BYTES
}

/// Sets vCPU `id`'s registers: 64-bit mode, paging on, SSE enabled, at the entry point.
pub fn setup_vcpu(vcpu: &VcpuFd, id: u32, layout: &BootLayout) -> Result<(), BootError> {
    let err = |what| {
        move |source| BootError::Regs {
            vcpu: id,
            what,
            source,
        }
    };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(err("get sregs"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: abi::SEL_KERNEL_CODE,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: abi::SEL_KERNEL_DATA,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: abi::TSS_GPA + id as u64 * abi::TSS_STRIDE,
        limit: tss_limit() as u32,
        selector: abi::SEL_TSS_BASE + 16 * id as u16,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        ..Default::default()
    };
    sregs.gdt.base = abi::GDT_GPA;
    sregs.gdt.limit = (5 * 8 + 16 * layout.vcpus - 1) as u16;
    sregs.idt.base = abi::IDT_GPA;
    sregs.idt.limit = (16 * abi::EXCEPTION_VECTORS - 1) as u16;
    sregs.cr3 = abi::PAGE_TABLE_GPA;
    sregs.cr4 = 0x20 | 0x200 | 0x400; // PAE, OSFXSR, OSXMMEXCPT
    sregs.cr0 = 0x8000_0000 | 0x1_0000 | 0x20 | 0x10 | 0x2 | 0x1; // PG, WP, NE, ET, MP, PE
    sregs.efer = 0x500; // LME, LMA
    vcpu.set_sregs(&sregs).map_err(err("set sregs"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(err("set fpu"))?;
    let regs = kvm_regs {
        rip: layout.entry,
        rsp: kernel_stack_top(id),
        rdi: id as u64,
        rsi: abi::BOOT_INFO_GPA,
        rdx: stack_base(id) + abi::STACK_BYTES_PER_VCPU,
        rcx: layout.flags,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("set regs"))?;
    Ok(())
}
