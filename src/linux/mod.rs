//! Booting an unmodified Linux kernel: loading a bzImage or ELF vmlinux (`linux-loader`), the
//! boot protocol's zero page with an e820 map of the configured RAM ([`bootparams`]), ACPI
//! tables so the guest sees every vCPU ([`acpi`]), the 64-bit entry state ([`cpu`]), KVM's
//! in-kernel irqchip and PIT ([`irq`]), COM1 as the console ([`serial`]) and the guest's device
//! bus ([`bus`]).
//!
//! Guest-physical layout below 1 MiB: GDT at 0x500, zero page at 0x7000, boot stack below
//! 0x9000, page tables at 0x9000-0xEFFF, command line at 0x20000, ACPI tables at 0xE0000. The
//! kernel goes where its header says (bzImage: 1 MiB, relocated by its decompressor; vmlinux: its
//! ELF physical addresses), the initrd at the top of RAM below 4 GiB and below the kernel's
//! `initrd_addr_max`.

pub mod acpi;
pub mod bootparams;
pub mod bus;
pub mod cpu;
pub mod irq;
pub mod serial;

pub use crate::config::linux::{LinuxConfig, DEFAULT_CMDLINE, NO_HW_VIRT_CMDLINE};
use crate::devices::Bus;
use crate::memory::GuestRam;
use linux_loader::loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::{self, KernelLoader};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

/// Where bzImages are loaded (their `code32_start`).
const BZIMAGE_LOAD: u64 = 0x10_0000;
/// Offset of the 64-bit entry point (`startup_64`) in a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// `initrd_addr_max` for kernels whose header predates the field.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors booting Linux. Each names the file or the limit.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// A file could not be opened or read.
    #[error("{what} {path}: {source}")]
    File {
        /// Kernel or initrd.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel image is neither a usable bzImage nor an ELF vmlinux.
    #[error("kernel {path}: {reason}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The initrd does not fit.
    #[error("initrd {path} ({size} bytes) does not fit in RAM between the kernel (ends at {kernel_end:#x}) and {top:#x}; give the first memory region more RAM")]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// Highest address it may end at.
        top: u64,
    },
    /// The command line is too long.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The RAM layout cannot be described.
    #[error(transparent)]
    E820(#[from] bootparams::E820Error),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// The irqchip.
    #[error(transparent)]
    Irq(#[from] irq::IrqError),
    /// vCPU state.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// Creating a vCPU failed.
    #[error(transparent)]
    Vm(#[from] crate::vmm::vm::VmError),
    /// The console file.
    #[error("console {path}: {source}")]
    Console {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A device could not be set up.
    #[error("{0}")]
    Device(String),
    /// Writing into guest memory.
    #[error("writing {what} into guest memory: {source}")]
    Write {
        /// What.
        what: &'static str,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Devices the VMM plugs into a Linux guest besides the built-in legacy ones.
#[derive(Default)]
pub struct Devices {
    /// Buses asked, in order, for port and MMIO accesses the legacy devices do not claim
    /// (a PCI bus: 0xCF8-0xCFF and its BARs).
    pub buses: Vec<Arc<dyn Bus>>,
    /// AML put in the DSDT (e.g. a PCI host bridge `\_SB.PCI0`).
    pub dsdt_aml: Vec<u8>,
}

/// Where things were put.
#[derive(Clone, Debug, Serialize)]
pub struct LinuxLayout {
    /// 64-bit entry point.
    pub entry: u64,
    /// Kernel image `[start, end)`.
    pub kernel: (u64, u64),
    /// Initrd `(gpa, len)`.
    pub initrd: Option<(u64, u64)>,
    /// The command line given to the kernel.
    pub cmdline: String,
    /// The e820 map, as the kernel prints it.
    pub e820: Vec<String>,
}

/// A Linux guest's machine: irqchip, console, device bus, and the loaded kernel.
pub struct LinuxMachine {
    /// The device bus the vCPUs use.
    pub bus: Arc<bus::LinuxBus>,
    /// The in-kernel irqchip.
    pub irq: irq::IrqChip,
    /// Where things were put.
    pub layout: LinuxLayout,
}

impl LinuxMachine {
    /// Loads the kernel and initrd, writes the zero page, ACPI tables, page tables and GDT,
    /// opens the console and builds the bus. `irq` must have been created before any vCPU.
    pub fn setup(
        ram: &GuestRam,
        cfg: &LinuxConfig,
        vcpus: u32,
        hardware_virt: bool,
        irq: irq::IrqChip,
        devices: Devices,
    ) -> Result<LinuxMachine, LinuxError> {
        let mem = ram.memory();
        let (entry, header, kernel) = load_kernel(ram, &cfg.kernel)?;
        let cmdline = cfg.effective_cmdline(hardware_virt);
        let max = header
            .filter(|h| h.version >= 0x0206)
            .map(|h| h.cmdline_size as usize)
            .unwrap_or(255)
            .min(cpu::CMDLINE_MAX as usize - 1);
        if cmdline.len() > max {
            return Err(LinuxError::CmdlineTooLong {
                len: cmdline.len(),
                max,
            });
        }
        let cl = linux_loader::cmdline::Cmdline::try_from(&cmdline, max + 1).map_err(|e| {
            LinuxError::Kernel {
                path: cfg.kernel.clone(),
                reason: format!("command line: {e}"),
            }
        })?;
        loader::load_cmdline(mem, GuestAddress(cpu::CMDLINE_GPA), &cl).map_err(|e| {
            LinuxError::Kernel {
                path: cfg.kernel.clone(),
                reason: format!("writing the command line: {e}"),
            }
        })?;
        let ranges = ram.ram_ranges();
        let initrd = match &cfg.initrd {
            Some(path) => Some(load_initrd(ram, &ranges, path, header, kernel.1)?),
            None => None,
        };
        let e820 = bootparams::e820_map(&ranges)?;
        // The console UART first (always there), then what the devices bring.
        let mut dsdt_aml = acpi::com1_aml(serial::COM1_BASE, serial::COM1_IRQ);
        dsdt_aml.extend_from_slice(&devices.dsdt_aml);
        let tables = acpi::build(vcpus, &dsdt_aml)?;
        for (gpa, bytes) in &tables.blobs {
            mem.write_slice(bytes, GuestAddress(*gpa))
                .map_err(|source| LinuxError::Write {
                    what: "ACPI tables",
                    source,
                })?;
        }
        let zp = bootparams::ZeroPage {
            cmdline_gpa: cpu::CMDLINE_GPA,
            cmdline_len: cmdline.len() as u32,
            initrd,
            rsdp_gpa: tables.rsdp_gpa,
            e820: e820.clone(),
        };
        mem.write_obj(
            bootparams::boot_params(header, &zp),
            GuestAddress(cpu::ZERO_PAGE_GPA),
        )
        .map_err(|source| LinuxError::Write {
            what: "zero page",
            source,
        })?;
        cpu::write_tables(mem)?;
        let out = serial::ConsoleOut::open(cfg.console.as_deref()).map_err(|source| {
            LinuxError::Console {
                path: cfg.console.clone().unwrap_or_default(),
                source,
            }
        })?;
        let serial = Arc::new(serial::SerialPort::new(
            serial::IrqLine(irq.irqfd(serial::COM1_IRQ)?),
            out,
        ));
        let bus = Arc::new(bus::LinuxBus::new(serial, devices.buses));
        Ok(LinuxMachine {
            bus,
            irq,
            layout: LinuxLayout {
                entry,
                kernel,
                initrd,
                cmdline,
                e820: e820.iter().map(|e| e.kernel_line()).collect(),
            },
        })
    }

    /// Creates vCPU `id` with the Linux CPUID (KVM leaves added) and its entry state.
    pub fn create_vcpu(
        &self,
        vm: &crate::vmm::vm::Vm,
        id: u32,
    ) -> Result<kvm_ioctls::VcpuFd, LinuxError> {
        let fd = vm.create_vcpu_with(id, cpu::add_kvm_leaves)?;
        cpu::setup_vcpu(&fd, id, self.layout.entry)?;
        Ok(fd)
    }
}

/// A loaded kernel: 64-bit entry point, the bzImage's setup header, `[start, end)` of the image.
type LoadedKernel = (u64, Option<setup_header>, (u64, u64));

/// Loads `path` as a bzImage, or else as an ELF vmlinux.
fn load_kernel(ram: &GuestRam, path: &Path) -> Result<LoadedKernel, LinuxError> {
    let file_err = |source| LinuxError::File {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(file_err)?;
    let mem = ram.memory();
    let high = Some(GuestAddress(BZIMAGE_LOAD));
    match loader::bzimage::BzImage::load(mem, None, &mut f, high) {
        Ok(r) => {
            let h = r.setup_header.expect("bzImage loader returns the header");
            if h.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LinuxError::Kernel {
                    path: path.into(),
                    reason: "this bzImage has no 64-bit entry point (XLF_KERNEL_64); build it for x86_64".into(),
                });
            }
            let start = r.kernel_load.0;
            Ok((start + BZIMAGE_ENTRY_64, Some(h), (start, r.kernel_end)))
        }
        Err(bz) => {
            let mut f = std::fs::File::open(path).map_err(file_err)?;
            match loader::elf::Elf::load(mem, None, &mut f, high) {
                Ok(r) => Ok((r.kernel_load.0, None, (r.kernel_load.0, r.kernel_end))),
                Err(elf) => Err(LinuxError::Kernel {
                    path: path.into(),
                    reason: format!(
                        "not a bzImage ({bz}) nor an ELF vmlinux ({elf}); give the vmlinuz from a linux-image package or an uncompressed vmlinux"
                    ),
                }),
            }
        }
    }
}

/// Puts the initrd at the top of the first RAM range below 4 GiB, under the kernel's
/// `initrd_addr_max`, page aligned, above the kernel image.
fn load_initrd(
    ram: &GuestRam,
    ranges: &[(u64, u64)],
    path: &Path,
    header: Option<setup_header>,
    kernel_end: u64,
) -> Result<(u64, u64), LinuxError> {
    let data = std::fs::read(path).map_err(|source| LinuxError::File {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    })?;
    let size = data.len() as u64;
    let addr_max = header
        .map(|h| h.initrd_addr_max as u64)
        .filter(|m| *m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let low_end = ranges
        .iter()
        .take_while(|(gpa, _)| *gpa < crate::memory::MMIO_HOLE_START)
        .scan(0u64, |end, &(gpa, len)| {
            // Contiguous RAM from 0 only.
            if gpa == *end {
                *end = gpa + len;
                Some(*end)
            } else {
                None
            }
        })
        .last()
        .unwrap_or(0);
    let top = low_end.min(addr_max + 1);
    let gpa = top.saturating_sub(size) & !0xfff;
    if size == 0 || gpa < kernel_end || gpa + size > top {
        return Err(LinuxError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            kernel_end,
            top,
        });
    }
    ram.memory()
        .write_slice(&data, GuestAddress(gpa))
        .map_err(|source| LinuxError::Write {
            what: "initrd",
            source,
        })?;
    Ok((gpa, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_noxsave_only_without_hardware_virtualisation() {
        let c = LinuxConfig {
            kernel: "k".into(),
            initrd: None,
            cmdline: None,
            console: None,
        };
        assert_eq!(c.effective_cmdline(true), DEFAULT_CMDLINE);
        assert_eq!(
            c.effective_cmdline(false),
            format!("{DEFAULT_CMDLINE} noxsave clearcpuid=popcnt,smap")
        );
        let c = LinuxConfig {
            cmdline: Some("console=ttyS0 noxsave".into()),
            ..c
        };
        assert_eq!(
            c.effective_cmdline(false),
            "console=ttyS0 noxsave clearcpuid=popcnt,smap"
        );
    }
}
