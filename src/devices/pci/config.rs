//! A PCI type-0 configuration space (PCI Local Bus 3.0 §6.1-6.7): the 256-byte header with
//! its read-only and writable fields, memory BARs with the sizing protocol, and the
//! capabilities list.
//!
//! Every byte has a write mask: bits outside it keep their value whatever the driver writes
//! (vendor and device ids, class code, header type, capability pointer and bodies, ...). The
//! BAR registers are handled apart: their low bits are hard-wired to the BAR's type and
//! everything below its size reads 0, so writing all-ones and reading back gives the size mask
//! (§6.2.5.1). Unimplemented BARs and the expansion ROM BAR read 0 whatever is written.
//! Status register error bits are never set by these devices, so they read 0.

use super::PciError;

/// Bytes of configuration space (conventional PCI; no extended space).
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Vendor ID register.
pub const VENDOR_ID: usize = 0x00;
/// Device ID register.
pub const DEVICE_ID: usize = 0x02;
/// Command register.
pub const COMMAND: usize = 0x04;
/// Status register.
pub const STATUS: usize = 0x06;
/// Revision ID register.
pub const REVISION_ID: usize = 0x08;
/// Class code (programming interface, sub-class, base class) at 0x09-0x0B.
pub const CLASS_CODE: usize = 0x09;
/// Cache line size register.
pub const CACHE_LINE_SIZE: usize = 0x0C;
/// Header type register (bit 7: multi-function).
pub const HEADER_TYPE: usize = 0x0E;
/// First Base Address Register.
pub const BAR0: usize = 0x10;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
/// Subsystem vendor ID register.
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2C;
/// Subsystem ID register.
pub const SUBSYSTEM_ID: usize = 0x2E;
/// Expansion ROM base address register.
pub const ROM_ADDRESS: usize = 0x30;
/// Capabilities pointer.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line register (written by firmware/OS; the device does not use it).
pub const INTERRUPT_LINE: usize = 0x3C;
/// Interrupt pin register (1 = INTA#, 0 = none).
pub const INTERRUPT_PIN: usize = 0x3D;
/// Where capabilities start (after the standard header).
pub const FIRST_CAPABILITY: usize = 0x40;

/// Command register: I/O space enable.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space enable (gates BAR decoding).
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Command register: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: INTx is asserted.
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status register: the capabilities list exists.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Capability ID: MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Capability ID: vendor specific (virtio uses it).
pub const CAP_ID_VENDOR: u8 = 0x09;

/// The type of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR.
    Mem32 {
        /// Prefetchable (bit 3).
        prefetchable: bool,
    },
    /// A 64-bit memory BAR; it occupies this BAR register and the next (the high half).
    Mem64 {
        /// Prefetchable (bit 3).
        prefetchable: bool,
    },
}

impl BarKind {
    fn flags(self) -> u32 {
        match self {
            BarKind::Mem32 { prefetchable } => u32::from(prefetchable) << 3,
            BarKind::Mem64 { prefetchable } => (u32::from(prefetchable) << 3) | 0b100,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum BarSlot {
    None,
    Low { kind: BarKind, size: u64 },
    High { size: u64 },
}

/// The fixed identity fields of a function's header.
#[derive(Clone, Copy, Debug)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Class code: base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin (1 = INTA#, 0 = no INTx).
    pub interrupt_pin: u8,
    /// Initial interrupt line (what firmware would have written: the IRQ the pin is routed to).
    pub interrupt_line: u8,
}

/// One function's configuration space.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    bars: [BarSlot; NUM_BARS],
    next_cap: usize,
    last_cap: Option<usize>,
}

impl PciConfig {
    /// A type-0 header with `h`'s identity, no BARs and no capabilities. Writable: the command
    /// register's memory-space, bus-master and INTx-disable bits, the cache line size and the
    /// interrupt line.
    pub fn new(h: &PciHeader) -> Self {
        let mut c = PciConfig {
            bytes: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            bars: [BarSlot::None; NUM_BARS],
            next_cap: FIRST_CAPABILITY,
            last_cap: None,
        };
        c.set_u16(VENDOR_ID, h.vendor_id);
        c.set_u16(DEVICE_ID, h.device_id);
        c.bytes[REVISION_ID] = h.revision_id;
        c.bytes[CLASS_CODE..CLASS_CODE + 3].copy_from_slice(&h.class_code.to_le_bytes()[..3]);
        c.set_u16(SUBSYSTEM_VENDOR_ID, h.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, h.subsystem_id);
        c.bytes[INTERRUPT_PIN] = h.interrupt_pin;
        c.bytes[INTERRUPT_LINE] = h.interrupt_line;
        let cmd = COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE;
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declares memory BAR `index` of `size` bytes (a power of two, at least 16) at `addr`
    /// (aligned to the size). A 64-bit BAR also takes register `index + 1`.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        addr: u64,
    ) -> Result<(), PciError> {
        let wide = matches!(kind, BarKind::Mem64 { .. });
        let last = index + usize::from(wide);
        if last >= NUM_BARS || (index..=last).any(|i| !matches!(self.bars[i], BarSlot::None)) {
            return Err(PciError::BarIndex(index));
        }
        let limit = if wide { u64::MAX } else { u64::from(u32::MAX) };
        if size < 16 || !size.is_power_of_two() || addr % size != 0 || addr > limit - (size - 1) {
            return Err(PciError::BarGeometry { index, size, addr });
        }
        self.bars[index] = BarSlot::Low { kind, size };
        self.write_bar(index, addr as u32);
        if wide {
            self.bars[index + 1] = BarSlot::High { size };
            self.write_bar(index + 1, (addr >> 32) as u32);
        }
        Ok(())
    }

    /// Appends a capability with ID `id` whose bytes after the ID and next pointer are `body`;
    /// returns its offset. The list is kept in order of addition, each capability 4-byte
    /// aligned; the body is read-only until [`PciConfig::set_writable`].
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, PciError> {
        let at = self.next_cap;
        let end = at + 2 + body.len();
        if end > CONFIG_SPACE_SIZE {
            return Err(PciError::NoCapabilitySpace {
                id,
                len: body.len(),
            });
        }
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..end].copy_from_slice(body);
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = at as u8,
            None => {
                self.bytes[CAPABILITIES_POINTER] = at as u8;
                let status = self.u16(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_cap = Some(at);
        self.next_cap = end.next_multiple_of(4);
        Ok(at)
    }

    /// Makes the bits of `mask` writable in the bytes from `offset` (capability fields the
    /// driver programs).
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        self.wmask[offset..offset + mask.len()].copy_from_slice(mask);
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read 0xFF.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Writes `data` at `offset` as the driver would: only writable bits change, BARs follow
    /// the sizing rules. Bytes past the end are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let end = (offset + data.len()).min(CONFIG_SPACE_SIZE);
        let mut at = offset;
        while at < end {
            let reg = at & !3;
            let upto = end.min(reg + 4);
            if (BAR0..BAR0 + 4 * NUM_BARS).contains(&reg) {
                let mut v = self.u32(reg).to_le_bytes();
                v[at - reg..upto - reg].copy_from_slice(&data[at - offset..upto - offset]);
                self.write_bar((reg - BAR0) / 4, u32::from_le_bytes(v));
            } else {
                for o in at..upto {
                    let m = self.wmask[o];
                    self.bytes[o] = (self.bytes[o] & !m) | (data[o - offset] & m);
                }
            }
            at = upto;
        }
    }

    fn write_bar(&mut self, index: usize, v: u32) {
        let stored = match self.bars[index] {
            BarSlot::None => 0,
            BarSlot::Low { kind, size } => (v & !((size - 1) as u32) & !0xf) | kind.flags(),
            BarSlot::High { size } => v & !((size - 1) >> 32) as u32,
        };
        self.set_u32(BAR0 + 4 * index, stored);
    }

    /// Size of memory BAR `index` (0 if it is not the first register of a BAR).
    pub fn bar_size(&self, index: usize) -> u64 {
        match self.bars.get(index) {
            Some(BarSlot::Low { size, .. }) => *size,
            _ => 0,
        }
    }

    /// The address BAR `index` is programmed to, if it is a BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        match self.bars.get(index)? {
            BarSlot::Low { kind, .. } => {
                let lo = u64::from(self.u32(BAR0 + 4 * index) & !0xf);
                let hi = match kind {
                    BarKind::Mem64 { .. } => u64::from(self.u32(BAR0 + 4 * (index + 1))),
                    BarKind::Mem32 { .. } => 0,
                };
                Some(hi << 32 | lo)
            }
            _ => None,
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16(COMMAND)
    }

    /// The BAR decoding `addr` and the offset inside it; `None` unless memory space is enabled.
    pub fn decode(&self, addr: u64) -> Option<(usize, u64)> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        (0..NUM_BARS).find_map(|i| {
            let base = self.bar_address(i)?;
            let off = addr.wrapping_sub(base);
            (off < self.bar_size(i)).then_some((i, off))
        })
    }

    /// A little-endian u16 at `offset`.
    pub fn u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    /// A little-endian u32 at `offset`.
    pub fn u32(&self, offset: usize) -> u32 {
        let b = &self.bytes[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Sets bytes as the device (not subject to write masks).
    pub fn set_bytes(&mut self, offset: usize, v: &[u8]) {
        self.bytes[offset..offset + v.len()].copy_from_slice(v);
    }

    /// Sets a u16 as the device.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets a u32 as the device.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }
}
