//! PCI for Linux guests: a root bus reached through configuration mechanism #1, a host bridge,
//! and virtio devices as modern virtio-pci functions, so that a stock distribution kernel's
//! `virtio_pci` + `virtio_balloon` drivers find and drive memvisor's balloon.
//!
//! This module owns the PCI side only: configuration space ([`config`]), MSI-X ([`msix`]),
//! INTx delivery and ioeventfds through KVM ([`KvmIrq`]), the virtio-pci transport ([`VirtioPciDevice`])
//! and the bus ([`PciBus`], a [`Bus`] for port I/O 0xCF8-0xCFF and the BARs' MMIO). The device
//! models are the same as virtio-mmio's ([`crate::devices::balloon::BalloonDevice`]).
//!
//! # Address map
//! - Ports `0xCF8` (`CONFIG_ADDRESS`, dword accesses only) and `0xCFC-0xCFF` (`CONFIG_DATA`,
//!   byte/word/dword accesses that stay inside the dword). No ECAM/MMCONFIG window.
//! - BARs are assigned at bus creation from the window [`PCI_MMIO_WINDOW_START`] ..
//!   `+ PCI_MMIO_WINDOW_SIZE` (`0xE000_0000-0xEFFF_FFFF`) in the 32-bit MMIO hole, away from
//!   the built-in guest's virtio-mmio window at `0xC000_0000` and from the IOAPIC/LAPIC pages
//!   at `0xFEC0_0000`/`0xFEE0_0000`. The guest may move them; decoding follows the BAR
//!   registers and the command register's memory-space bit.
//! - Bus 0 only: `00:00.0` is the host bridge (Intel 8086:0d57, class 06/00/00), devices take
//!   the next free slots, function 0, single-function.
//!
//! # How a Linux guest finds the device without ACPI
//! x86 Linux probes configuration mechanism #1 by itself (`pci_direct_probe` →
//! `pci_check_type1`): it writes `0x8000_0000` to `0xCF8` with a dword access and must read it
//! back (byte accesses to `0xCF8-0xCFB`, e.g. its `outb(0x01, 0xCFB)`, are not the address
//! register), then its sanity check looks for a function of class "host bridge" on bus 0. With
//! no ACPI MCFG table it keeps conf1 (no MMCONFIG), and `pci_legacy_init` scans bus 0, reading
//! the vendor dword of every slot (absent functions read `0xFFFF_FFFF`). The BARs as
//! programmed here are claimed by `pcibios_resource_survey`; they only need to stay clear of
//! RAM in the e820 map (leave the window out of e820, or mark it reserved: Linux inserts
//! reserved e820 ranges above 1 MiB after PCI claimed its BARs). `virtio_pci` then binds to
//! vendor 0x1AF4 device 0x1040+type, walks the vendor capabilities, and `virtio_balloon`
//! binds to the virtio device. The kernel needs `CONFIG_PCI` and `virtio_pci` (Debian builds it
//! as a module: the initramfs must load `virtio_pci` — which pulls in
//! `virtio_pci_modern_dev`/`virtio_pci_legacy_dev` — before `virtio_balloon`).
//!
//! # What the Linux VM wiring must provide
//! - **MSI**: `virtio_pci` uses MSI-X first (a vector per queue, else one shared vector). The
//!   VM needs the in-kernel irqchip (`KVM_CREATE_IRQCHIP`, before the vCPUs are created); hand
//!   the VM's routing table (`Vm::irq_routing`, [`crate::vmm`]'s `irq_routing`) as the
//!   [`MsiSink`]: every vector becomes a GSI route with an irqfd. The guest must see its local
//!   APICs (MP table or MADT) — x86 MSI messages are a write of `vector | delivery mode` to
//!   `0xFEE0_0000 | APIC id << 12`.
//! - **INTx** (only if the guest has no MSI, e.g. `pci=nomsi`): the MP table must name a PCI
//!   bus (bus entry type "PCI   ") and carry an I/O interrupt entry for source bus 0, source
//!   IRQ `slot << 2 | 0` (INTA#) to an IOAPIC pin *G* (level, active low) (or, with ACPI, a
//!   `_PRT` saying the same); pass a pin of a [`shared_intx::SharedIntx`] over `KvmIrq::intx(G)`
//!   and `intx_line: G` in [`PciIrq`]. Without that routing Linux logs "can't find IRQ for PCI
//!   INT A" and only MSI-X works. The line is an irqfd with a resample eventfd: asserting it is
//!   an eventfd write, KVM lowers it at the guest's EOI, and the device event thread must serve
//!   the line's [`shared_intx::IntxResampler`] (from [`shared_intx::SharedIntx::resampler`])
//!   to raise it again while a function's ISR is still set (why and how: the module doc of
//!   `kvm.rs`, [`KvmIrq`]).
//! - **The bus**: the VM's device bus forwards port I/O and MMIO exits to [`PciBus`] (its
//!   [`Bus`] methods return whether the access was claimed), together with serial etc.
//!
//! ```no_run
//! # use memvisor::devices::{balloon::{BalloonDevice, BalloonHandle}, pci::*};
//! # fn wire(ram: std::sync::Arc<memvisor::memory::GuestRam>, vm: &memvisor::vmm::vm::Vm,
//! #         opts: balloon::BalloonOptions) -> Result<(), Box<dyn std::error::Error>> {
//! // after vm.fd().create_irq_chip() and create_pit2():
//! let irq = KvmIrq::new(vm.kvm(), vm.fd())?;
//! let msi = std::sync::Arc::new(vm.irq_routing());
//! let line = irq.intx(10)?;
//! let intx = shared_intx::SharedIntx::new(line.clone());
//! let resampler = intx.resampler(line.resample_event()?); // for the device event thread
//! let mut pci = PciBus::new();
//! let (dev, slot) = pci.add_virtio(
//!     BalloonDevice::new(opts, ram.clone()),
//!     ram.clone(),
//!     PciIrq { msi, intx: Some(intx.pin(0)), intx_line: 10 },
//! )?;
//! let balloon = BalloonHandle::Pci(dev); // for the API and the device event thread
//! let bus: std::sync::Arc<dyn memvisor::devices::Bus> = std::sync::Arc::new(pci);
//! # Ok(()) }
//! ```

pub mod config;
mod kvm;
pub mod msix;
pub mod shared_intx;
pub mod virtio_pci;

pub use kvm::{IntxError, IntxIrqfd, KvmIrq};
pub use msix::{IntxLine, MsiRoute, MsiSink, MsixCounters};
pub use virtio_pci::{PciIrq, VirtioPciDevice};

use super::virtio::VirtioDevice;
use super::Bus;
use crate::memory::GuestRam;
use config::{PciConfig, PciHeader};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Configuration mechanism #1 address port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xCF8;
/// Configuration mechanism #1 data ports (`0xCFC-0xCFF`).
pub const CONFIG_DATA_PORT: u16 = 0xCFC;
/// `CONFIG_ADDRESS` enable bit.
pub const CONFIG_ENABLE: u32 = 1 << 31;
/// Start of the MMIO window PCI BARs are assigned from.
pub const PCI_MMIO_WINDOW_START: u64 = 0xE000_0000;
/// Size of that window.
pub const PCI_MMIO_WINDOW_SIZE: u64 = 0x1000_0000;
/// Device slots on a bus.
pub const SLOTS: usize = 32;
/// Vendor ID of the host bridge (Intel).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;

/// Errors building a PCI bus; each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// A BAR register is taken or out of range.
    #[error(
        "PCI BAR {0} is taken or does not exist (a 64-bit BAR needs two free registers of 0-5)"
    )]
    BarIndex(usize),
    /// A BAR's size or address is not valid.
    #[error("PCI BAR {index}: size {size:#x} at {addr:#x} is invalid: sizes are powers of two of at least 16 bytes and addresses are aligned to the size")]
    BarGeometry {
        /// The BAR register.
        index: usize,
        /// Its size.
        size: u64,
        /// Its address.
        addr: u64,
    },
    /// The capabilities do not fit in configuration space.
    #[error(
        "PCI capability {id:#x} with {len} bytes does not fit in the 256-byte configuration space"
    )]
    NoCapabilitySpace {
        /// The capability ID.
        id: u8,
        /// Its body length.
        len: usize,
    },
    /// Every slot of the bus is taken.
    #[error("all {SLOTS} PCI slots of bus 0 are taken")]
    NoFreeSlot,
    /// The BAR window is exhausted.
    #[error("the PCI MMIO window has no room for a BAR of {0:#x} bytes")]
    WindowFull(u64),
    /// The MSI-X vectors' routes could not be made.
    #[error("cannot route the function's MSI-X vectors: {0}")]
    MsiRoutes(std::io::Error),
}

/// A PCI function on the bus: its configuration space and its BARs.
pub trait PciFunction: Send + Sync {
    /// Configuration space read of `data.len()` (1, 2 or 4) bytes at `offset` (< 256, not
    /// crossing a dword).
    fn config_read(&self, offset: usize, data: &mut [u8]);
    /// Configuration space write.
    fn config_write(&self, offset: usize, data: &[u8]);
    /// The BAR that decodes `addr` now and the offset in it (memory space enabled and `addr`
    /// inside a programmed BAR).
    fn mmio_decode(&self, addr: u64) -> Option<(usize, u64)>;
    /// A read from BAR `bar` at `offset`.
    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write to BAR `bar` at `offset`.
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]);
}

/// The host bridge at `00:00.0`: identity only (no BARs, no capabilities).
pub struct HostBridge {
    cfg: Mutex<PciConfig>,
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge {
            cfg: Mutex::new(PciConfig::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class_code: 0x06_00_00,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                interrupt_pin: 0,
                interrupt_line: 0,
            })),
        }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.cfg.lock().unwrap().read(offset, data)
    }
    fn config_write(&self, offset: usize, data: &[u8]) {
        self.cfg.lock().unwrap().write(offset, data)
    }
    fn mmio_decode(&self, _addr: u64) -> Option<(usize, u64)> {
        None
    }
    fn bar_read(&self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn bar_write(&self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Bus 0 behind configuration mechanism #1, with the MMIO of its functions' BARs.
pub struct PciBus {
    address: AtomicU32,
    slots: Vec<Option<Arc<dyn PciFunction>>>,
    window_next: u64,
    window_end: u64,
    bad: AtomicU64,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with the host bridge at `00:00.0`, assigning BARs from the default window.
    pub fn new() -> Self {
        Self::with_window(PCI_MMIO_WINDOW_START, PCI_MMIO_WINDOW_SIZE)
    }

    /// As [`PciBus::new`], assigning BARs from `[start, start + size)`.
    pub fn with_window(start: u64, size: u64) -> Self {
        let mut slots: Vec<Option<Arc<dyn PciFunction>>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(HostBridge::default()));
        PciBus {
            address: AtomicU32::new(0),
            slots,
            window_next: start,
            window_end: start + size,
            bad: AtomicU64::new(0),
        }
    }

    /// Puts `f` into the first free slot; returns the slot (device number).
    pub fn add(&mut self, f: Arc<dyn PciFunction>) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoFreeSlot)?;
        self.slots[slot] = Some(f);
        Ok(slot as u8)
    }

    /// Assigns `size` bytes (a power of two) of the window, aligned to the size.
    pub fn allocate_bar(&mut self, size: u64) -> Result<u64, PciError> {
        let at = self.window_next.next_multiple_of(size.max(16));
        if !size.is_power_of_two() || at.checked_add(size).is_none_or(|e| e > self.window_end) {
            return Err(PciError::WindowFull(size));
        }
        self.window_next = at + size;
        Ok(at)
    }

    /// Adds `device` as a modern virtio-pci function with its BAR assigned from the window;
    /// returns it (for the API and timers) and its slot.
    pub fn add_virtio<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
        ram: Arc<GuestRam>,
        irq: PciIrq,
    ) -> Result<(Arc<VirtioPciDevice<D>>, u8), PciError> {
        if !self.slots.iter().any(Option::is_none) {
            return Err(PciError::NoFreeSlot);
        }
        let bar = self.allocate_bar(virtio_pci::BAR_SIZE)?;
        let dev = Arc::new(VirtioPciDevice::new(device, ram, bar, irq)?);
        let slot = self.add(dev.clone())?;
        Ok((dev, slot))
    }

    /// The function in slot `slot`, if any.
    pub fn function(&self, slot: u8) -> Option<&Arc<dyn PciFunction>> {
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// The current `CONFIG_ADDRESS` value.
    pub fn config_address(&self) -> u32 {
        self.address.load(Ordering::Acquire)
    }

    /// Configuration accesses the driver got wrong (data port accesses crossing the dword).
    pub fn bad_accesses(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }

    /// The function and register `CONFIG_ADDRESS` selects, if it is enabled and names an
    /// existing function (bus 0, function 0) and a register of the 256-byte space.
    fn selected(&self) -> Option<(&Arc<dyn PciFunction>, usize)> {
        let a = self.config_address();
        let bus = (a >> 16) & 0xff;
        let dev = (a >> 11) & 0x1f;
        let func = (a >> 8) & 0x7;
        // Bits 30:24 are reserved (some chipsets put register bits 11:8 in 27:24): a non-zero
        // value names no register of a conventional function.
        if a & CONFIG_ENABLE == 0 || a & 0x7f00_0000 != 0 || bus != 0 || func != 0 {
            return None;
        }
        let f = self.function(dev as u8)?;
        Some((f, (a & 0xfc) as usize))
    }

    fn data_access(&self, port: u16, len: usize) -> Option<usize> {
        let off = usize::from(port - CONFIG_DATA_PORT);
        if !matches!(len, 1 | 2 | 4) || off + len > 4 {
            self.bad.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(off)
    }
}

impl Bus for PciBus {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        match port {
            CONFIG_ADDRESS_PORT..=0xCFB => {
                // Only a dword at 0xCF8 is the address register.
                data.fill(0xff);
                if port == CONFIG_ADDRESS_PORT && data.len() == 4 {
                    data.copy_from_slice(&self.config_address().to_le_bytes());
                }
                true
            }
            CONFIG_DATA_PORT..=0xCFF => {
                data.fill(0xff);
                if let Some(off) = self.data_access(port, data.len()) {
                    if let Some((f, reg)) = self.selected() {
                        f.config_read(reg + off, data);
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        match port {
            CONFIG_ADDRESS_PORT..=0xCFB => {
                if let (CONFIG_ADDRESS_PORT, Ok(b)) = (port, <[u8; 4]>::try_from(data)) {
                    // Bits 1:0 are read-only 0 (PCI 3.0 §3.2.2.3.2).
                    self.address
                        .store(u32::from_le_bytes(b) & !3, Ordering::Release);
                }
                true
            }
            CONFIG_DATA_PORT..=0xCFF => {
                if let Some(off) = self.data_access(port, data.len()) {
                    if let Some((f, reg)) = self.selected() {
                        f.config_write(reg + off, data);
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        for f in self.slots.iter().flatten() {
            if let Some((bar, off)) = f.mmio_decode(addr) {
                f.bar_read(bar, off, data);
                return true;
            }
        }
        false
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        for f in self.slots.iter().flatten() {
            if let Some((bar, off)) = f.mmio_decode(addr) {
                f.bar_write(bar, off, data);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests;
