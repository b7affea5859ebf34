//! A minimal virtio-mmio (version 2, virtio 1.2 §4.2.2) transport and split virtqueue for
//! drivers running in ring 3 of the built-in guest.
//!
//! Every register access is a VM exit (tens of µs here), so the driver side is built to need
//! few of them: queues are set up once, buffers are posted in batches with one `QueueNotify`
//! each, and completions are read from the used ring in guest memory (no register access).

use core::ptr::{read_volatile, write_bytes, write_volatile};
use core::sync::atomic::{fence, Ordering};

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC: u64 = 0x080;
const REG_QUEUE_DRIVER: u64 = 0x090;
const REG_QUEUE_DEVICE: u64 = 0x0a0;
const REG_CONFIG: u64 = 0x100;

const MAGIC: u32 = 0x7472_6976;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// The guest has a driver for the device.
pub const STATUS_DRIVER: u32 = 2;
/// The driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// The driver gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;

/// Interrupt status: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A device's register window.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The window at guest-physical `base` if it holds a version-2 virtio device of type
    /// `device_id`.
    pub fn probe(base: u64, device_id: u32) -> Result<Mmio, &'static str> {
        let m = Mmio { base };
        if m.read(REG_MAGIC) != MAGIC {
            return Err("no virtio-mmio device at the balloon address (bad magic)");
        }
        if m.read(REG_VERSION) != 2 {
            return Err("virtio-mmio device is not version 2");
        }
        if m.read(REG_DEVICE_ID) != device_id {
            return Err("virtio-mmio device has an unexpected device id");
        }
        Ok(m)
    }

    fn read(&self, off: u64) -> u32 {
        // SAFETY: the MMIO window is identity-mapped and user-accessible; the access is a VM exit
        // handled by the VMM's transport.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    fn write(&self, off: u64, v: u32) {
        // SAFETY: as in `read`.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }

    /// Reads a 32-bit field of the device configuration space.
    pub fn config_read(&self, off: u64) -> u32 {
        self.read(REG_CONFIG + off)
    }

    /// Writes a 32-bit field of the device configuration space.
    pub fn config_write(&self, off: u64, v: u32) {
        self.write(REG_CONFIG + off, v)
    }

    /// Device status.
    pub fn status(&self) -> u32 {
        self.read(REG_STATUS)
    }

    /// Sets the device status (0 resets the device).
    pub fn set_status(&self, s: u32) {
        self.write(REG_STATUS, s)
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let lo = self.read(REG_DEVICE_FEATURES) as u64;
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let hi = self.read(REG_DEVICE_FEATURES) as u64;
        lo | (hi << 32)
    }

    /// Acknowledges feature bits.
    pub fn set_driver_features(&self, f: u64) {
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, f as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        self.write(REG_QUEUE_NOTIFY, index as u32)
    }

    /// Acknowledges interrupt status bits.
    pub fn ack_interrupt(&self, bits: u32) {
        self.write(REG_INTERRUPT_ACK, bits)
    }
}

/// Bytes between the parts of a queue's area: descriptor table, available ring, used ring
/// (each fits in four pages for up to 1024 entries: the descriptor table takes 16 bytes an
/// entry), then the buffers.
const PART: u64 = 0x4000;
/// Largest queue this driver sets up (four pages per ring part).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// A split virtqueue whose descriptor `i` always points at buffer `i` of its area, so every
/// chain is one descriptor and the head index names the buffer.
pub struct Virtq {
    /// Queue index.
    pub index: u16,
    size: u16,
    area: u64,
    stride: u64,
    avail_idx: u16,
    last_used: u16,
}

impl Virtq {
    /// Bytes of guest memory a queue of `size` buffers of `stride` bytes needs.
    pub const fn area_bytes(size: u16, stride: u64) -> u64 {
        3 * PART + size as u64 * stride
    }

    /// Sets up queue `index` with at most `size` entries (a power of two, at most
    /// [`MAX_QUEUE_SIZE`]) in the area at `area` (page aligned, [`Virtq::area_bytes`] long),
    /// buffers `stride` bytes each. `None` if the device has no such queue.
    pub fn setup(mmio: &Mmio, index: u16, size: u16, area: u64, stride: u64) -> Option<Virtq> {
        mmio.write(REG_QUEUE_SEL, index as u32);
        let max = mmio.read(REG_QUEUE_NUM_MAX);
        if max == 0 {
            return None;
        }
        let mut size = size.min(MAX_QUEUE_SIZE) as u32;
        while size > max {
            size /= 2;
        }
        // SAFETY: the rings lie in the driver area, guest RAM owned by this driver alone.
        unsafe { write_bytes(area as *mut u8, 0, (3 * PART) as usize) };
        let q = Virtq {
            index,
            size: size as u16,
            area,
            stride,
            avail_idx: 0,
            last_used: 0,
        };
        mmio.write(REG_QUEUE_NUM, size);
        for (reg, gpa) in [
            (REG_QUEUE_DESC, q.desc()),
            (REG_QUEUE_DRIVER, q.avail()),
            (REG_QUEUE_DEVICE, q.used()),
        ] {
            mmio.write(reg, gpa as u32);
            mmio.write(reg + 4, (gpa >> 32) as u32);
        }
        mmio.write(REG_QUEUE_READY, 1);
        Some(q)
    }

    fn desc(&self) -> u64 {
        self.area
    }

    fn avail(&self) -> u64 {
        self.area + PART
    }

    fn used(&self) -> u64 {
        self.area + 2 * PART
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical address of buffer `slot`.
    pub fn buffer(&self, slot: u16) -> u64 {
        self.area + 3 * PART + slot as u64 * self.stride
    }

    /// Makes buffer `slot` (its first `len` bytes, device-readable) available to the device.
    /// The device sees it at the next [`Mmio::notify`].
    pub fn post(&mut self, slot: u16, len: u32) {
        let d = self.desc() + 16 * slot as u64;
        let ring = self.avail() + 4 + 2 * (self.avail_idx % self.size) as u64;
        // SAFETY: descriptor and ring entries lie in this queue's rings (driver area).
        unsafe {
            write_volatile(d as *mut u64, self.buffer(slot));
            write_volatile((d + 8) as *mut u32, len);
            write_volatile((d + 12) as *mut u16, 0); // flags: device-readable, no next
            write_volatile((d + 14) as *mut u16, 0);
            write_volatile(ring as *mut u16, slot);
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it.
        fence(Ordering::SeqCst);
        // SAFETY: the available ring's idx field.
        unsafe { write_volatile((self.avail() + 2) as *mut u16, self.avail_idx) };
        fence(Ordering::SeqCst);
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: the used ring's idx field, written by the device.
        let i = unsafe { read_volatile((self.used() + 2) as *const u16) };
        fence(Ordering::SeqCst);
        i
    }

    /// The slot the next [`Virtq::post`] should use so that slots are reused in the order the
    /// device returns them (it returns buffers in the order they were made available).
    pub fn next_slot(&self) -> u16 {
        self.avail_idx % self.size
    }

    /// Buffers posted and not yet returned by the device.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.used_idx())
    }

    /// The next buffer the device returned, if any (its slot).
    pub fn take_used(&mut self) -> Option<u16> {
        if self.last_used == self.used_idx() {
            return None;
        }
        let e = self.used() + 4 + 8 * (self.last_used % self.size) as u64;
        // SAFETY: a used ring element the device has published.
        let id = unsafe { read_volatile(e as *const u32) };
        self.last_used = self.last_used.wrapping_add(1);
        Some(id as u16)
    }
}
