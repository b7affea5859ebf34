//! The modern virtio-pci transport (virtio 1.1 §4.1) over any [`VirtioDevice`]: a PCI function
//! with vendor 0x1AF4, device id 0x1040 + device type, revision 1, whose vendor-specific
//! capabilities point into one 64-bit memory BAR holding the common configuration, the ISR,
//! the device configuration, the notification area and the MSI-X table and pending bits.
//!
//! Layout of the BAR ([`BAR_SIZE`] bytes, BAR 0 + 1):
//!
//! | offset | structure | capability |
//! |---|---|---|
//! | `0x0000` | common configuration (`struct virtio_pci_common_cfg`, 0x38 bytes) | `cfg_type` 1 |
//! | `0x1000` | ISR status (1 byte, read to clear) | `cfg_type` 3 |
//! | `0x2000` | device configuration ([`VirtioDevice::config_len`] bytes) | `cfg_type` 4 |
//! | `0x3000` | notifications: queue *n* at `0x3000 + 4n` (`notify_off_multiplier` 4) | `cfg_type` 2 |
//! | `0x4000` | MSI-X table (one vector per queue + one for configuration changes) | MSI-X |
//! | `0x5000` | MSI-X pending bit array | MSI-X |
//!
//! A `VIRTIO_PCI_CAP_PCI_CFG` capability (`cfg_type` 5) gives access to the BAR through
//! configuration space. Queue notifications are processed on the device event thread once a
//! [`DeviceLink`] is attached: each queue's notification address is an ioeventfd
//! (`KVM_IOEVENTFD`, any width and value) on that queue's eventfd, registered at the BAR's
//! current address while memory decoding is enabled and moved when the guest reprograms the BAR
//! or the command register; what still arrives as an exit is forwarded to the same eventfd.
//! Without a link (the transport tested alone) queues are processed inline. Interrupts go out
//! as MSI-X messages when the driver enabled MSI-X (and mapped a vector), each vector through
//! its own route (with KVM an irqfd: one eventfd write, see [`super::msix`]), otherwise
//! through the ISR and the INTx line. The status/feature/queue
//! rules are those shared with virtio-mmio ([`crate::devices::virtio_transport`]); accesses of
//! the wrong width, to read-only fields or to nothing are ignored and counted
//! ([`VirtioPciDevice::bad_accesses`]).

use super::config::{
    BarKind, PciConfig, PciHeader, CAP_ID_MSIX, CAP_ID_VENDOR, COMMAND_INTX_DISABLE, STATUS,
    STATUS_INTERRUPT,
};
use super::msix::{IntxLine, Msix, MsixCounters, CONTROL_ENABLE, CONTROL_FUNCTION_MASK};
use super::{MsiSink, PciError, PciFunction};
use crate::devices::events::{DeviceLink, IoeventRegistrar};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio_transport::{
    process_notify, Half, InterruptStatus, Notified, RingPart, StatusChange, TransportCore,
    INT_CONFIG, INT_USED_BUFFER,
};
use crate::memory::GuestRam;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use virtio_queue::QueueT;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1AF4;
/// Modern virtio-pci device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem device IDs are this plus the device type (non-transitional devices use >= 0x40).
pub const VIRTIO_PCI_SUBSYSTEM_ID_BASE: u16 = 0x0040;
/// Revision of a non-transitional (modern-only) device.
pub const VIRTIO_PCI_REVISION: u8 = 1;

/// `cfg_type` of the common configuration capability.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification capability.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR capability.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device configuration capability.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access capability.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// The "no MSI-X vector" value of `msix_config` and `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// The BAR register holding the structures (a 64-bit BAR: registers 0 and 1).
pub const BAR_INDEX: usize = 0;
/// Size of the BAR.
pub const BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration in the BAR.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration (virtio 1.1 `struct virtio_pci_common_cfg`).
pub const COMMON_CFG_LEN: u64 = 0x38;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between the notification addresses of consecutive queues.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X pending bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;

/// Offsets of the common configuration fields (virtio 1.1 §4.1.4.3).
pub mod common {
    /// `device_feature_select` (le32, RW).
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// `device_feature` (le32, RO).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// `driver_feature_select` (le32, RW).
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// `driver_feature` (le32, RW).
    pub const DRIVER_FEATURE: u64 = 0x0C;
    /// `msix_config` (le16, RW).
    pub const MSIX_CONFIG: u64 = 0x10;
    /// `num_queues` (le16, RO).
    pub const NUM_QUEUES: u64 = 0x12;
    /// `device_status` (u8, RW).
    pub const DEVICE_STATUS: u64 = 0x14;
    /// `config_generation` (u8, RO).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// `queue_select` (le16, RW).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// `queue_size` (le16, RW).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// `queue_msix_vector` (le16, RW).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1A;
    /// `queue_enable` (le16, RW).
    pub const QUEUE_ENABLE: u64 = 0x1C;
    /// `queue_notify_off` (le16, RO).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
    /// `queue_desc` (le64, RW).
    pub const QUEUE_DESC: u64 = 0x20;
    /// `queue_driver` (le64, RW): the available ring.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// `queue_device` (le64, RW): the used ring.
    pub const QUEUE_DEVICE: u64 = 0x30;

    /// The field containing `off`: its start and width.
    pub(super) fn field(off: u64) -> Option<(u64, usize)> {
        Some(match off {
            0x00..=0x0F => (off & !3, 4),
            0x10..=0x13 | 0x16..=0x1F => (off & !1, 2),
            0x14 | 0x15 => (off, 1),
            0x20..=0x37 => (off & !7, 8),
            _ => return None,
        })
    }
}

/// Interrupt wiring of a PCI function: MSI-X messages go through a route per vector from `msi`
/// (with KVM: a GSI route and an irqfd each); without MSI-X the function raises `intx` (if any)
/// and reports `intx_line` in its interrupt line register.
#[derive(Clone)]
pub struct PciIrq {
    /// Where MSI-X messages go (one route per vector, made with the function).
    pub msi: Arc<dyn MsiSink>,
    /// The INTA# line, if wired.
    pub intx: Option<Arc<dyn IntxLine>>,
    /// The IRQ number INTA# is routed to, for the interrupt line register (what firmware
    /// would write; Linux uses the MP table's routing instead).
    pub intx_line: u8,
}

/// Configuration-space offsets of this function's capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapOffsets {
    /// The MSI-X capability.
    pub msix: usize,
    /// The common configuration capability.
    pub common: usize,
    /// The notification capability.
    pub notify: usize,
    /// The ISR capability.
    pub isr: usize,
    /// The device configuration capability.
    pub device: usize,
    /// The PCI configuration access capability.
    pub pci_cfg: usize,
}

/// Offsets inside `struct virtio_pci_cap`.
const CAP_BAR: usize = 4;
const CAP_OFFSET: usize = 8;
const CAP_LENGTH: usize = 12;
/// `pci_cfg_data` in `struct virtio_pci_cfg_cap`.
const CAP_PCI_CFG_DATA: usize = 16;

struct PciState {
    core: TransportCore,
    msix_config: u16,
    queue_vectors: Vec<u16>,
}

/// A [`VirtioDevice`] as a modern virtio-pci function.
pub struct VirtioPciDevice<D: VirtioDevice> {
    cfg: Mutex<PciConfig>,
    caps: CapOffsets,
    state: Mutex<PciState>,
    device: Mutex<D>,
    isr: InterruptStatus,
    msix: Msix,
    intx: Option<Arc<dyn IntxLine>>,
    intx_disabled: AtomicBool,
    intx_level: Mutex<bool>,
    device_cfg_len: u64,
    num_queues: u16,
    ram: Arc<GuestRam>,
    notifies: AtomicU64,
    bad: AtomicU64,
    link: OnceLock<Arc<DeviceLink>>,
    ioevents: Mutex<Ioevents>,
}

/// Where the queues' ioeventfds are registered now.
#[derive(Default)]
struct Ioevents {
    registrar: Option<Arc<dyn IoeventRegistrar>>,
    /// The BAR address the notification addresses were registered at.
    at: Option<u64>,
    /// Registrations that failed (those notifications arrive as exits and are forwarded).
    failed: u64,
}

fn cap_body(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // struct virtio_pci_cap after cap_vndr and cap_next: cap_len, cfg_type, bar, id,
    // padding[2], offset, length.
    let mut b = vec![(16 + extra.len()) as u8, cfg_type, BAR_INDEX as u8, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    b.extend_from_slice(extra);
    b
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    /// `device` as a PCI function whose BAR is at `bar_addr` (aligned to [`BAR_SIZE`]); queue
    /// notifications are processed against `ram`.
    pub fn new(
        device: D,
        ram: Arc<GuestRam>,
        bar_addr: u64,
        irq: PciIrq,
    ) -> Result<Self, PciError> {
        let max_sizes = device.queue_max_sizes();
        let num_queues = max_sizes.len() as u16;
        let vectors = num_queues + 1;
        let device_type = device.device_type() as u16;
        let mut cfg = PciConfig::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + device_type,
            revision_id: VIRTIO_PCI_REVISION,
            // "Other" class, as QEMU gives devices without a better one (the balloon).
            class_code: 0xff_00_00,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID_BASE + device_type,
            interrupt_pin: if irq.intx.is_some() { 1 } else { 0 },
            interrupt_line: if irq.intx.is_some() {
                irq.intx_line
            } else {
                0xff
            },
        });
        cfg.add_bar(
            BAR_INDEX,
            BarKind::Mem64 {
                prefetchable: false,
            },
            BAR_SIZE,
            bar_addr,
        )?;
        let msix = Msix::new(vectors, irq.msi.clone()).map_err(PciError::MsiRoutes)?;
        let mut msix_body = Vec::new();
        msix_body.extend_from_slice(&(vectors - 1).to_le_bytes());
        msix_body.extend_from_slice(&(MSIX_TABLE_OFFSET as u32 | BAR_INDEX as u32).to_le_bytes());
        msix_body.extend_from_slice(&(MSIX_PBA_OFFSET as u32 | BAR_INDEX as u32).to_le_bytes());
        let msix_at = cfg.add_capability(CAP_ID_MSIX, &msix_body)?;
        // Message control: only enable and function mask are writable.
        cfg.set_writable(msix_at + 2, &[0, 0xc0]);
        let vendor = |cfg: &mut PciConfig, body: Vec<u8>| cfg.add_capability(CAP_ID_VENDOR, &body);
        let common = vendor(
            &mut cfg,
            cap_body(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CFG_OFFSET,
                COMMON_CFG_LEN,
                &[],
            ),
        )?;
        let notify_len = u64::from(num_queues.max(1)) * u64::from(NOTIFY_OFF_MULTIPLIER);
        let notify = vendor(
            &mut cfg,
            cap_body(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
        )?;
        let isr = vendor(
            &mut cfg,
            cap_body(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
        )?;
        let device_cfg_len = device.config_len();
        let dev_cap = vendor(
            &mut cfg,
            cap_body(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                device_cfg_len,
                &[],
            ),
        )?;
        let pci_cfg = vendor(&mut cfg, cap_body(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, &[0; 4]))?;
        // The driver programs bar, offset, length and the data window of the access capability.
        cfg.set_writable(pci_cfg + CAP_BAR, &[0xff]);
        cfg.set_writable(pci_cfg + CAP_OFFSET, &[0xff; 12]);
        Ok(VirtioPciDevice {
            cfg: Mutex::new(cfg),
            caps: CapOffsets {
                msix: msix_at,
                common,
                notify,
                isr,
                device: dev_cap,
                pci_cfg,
            },
            state: Mutex::new(PciState {
                core: TransportCore::new(&max_sizes),
                msix_config: VIRTIO_MSI_NO_VECTOR,
                queue_vectors: vec![VIRTIO_MSI_NO_VECTOR; usize::from(num_queues)],
            }),
            device: Mutex::new(device),
            isr: InterruptStatus::default(),
            msix,
            intx: irq.intx,
            intx_disabled: AtomicBool::new(false),
            intx_level: Mutex::new(false),
            device_cfg_len,
            num_queues,
            ram,
            notifies: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            link: OnceLock::new(),
            ioevents: Mutex::new(Ioevents::default()),
        })
    }

    /// Hands queue processing to the device event thread behind `link` (see the module doc);
    /// the queues' notification addresses are registered with `registrar` now and follow the
    /// BAR from then on. Only the first call counts.
    pub fn attach(&self, link: Arc<DeviceLink>, registrar: Arc<dyn IoeventRegistrar>) {
        if self.link.set(link).is_ok() {
            self.ioevents.lock().unwrap().registrar = Some(registrar);
            self.sync_ioevents();
        }
    }

    /// A new link with one eventfd per queue, attached as [`VirtioPciDevice::attach`] does:
    /// what the device thread's subscriber of this device serves.
    pub fn attach_link(
        &self,
        registrar: Arc<dyn IoeventRegistrar>,
    ) -> std::io::Result<Arc<DeviceLink>> {
        let link = Arc::new(DeviceLink::new(usize::from(self.num_queues))?);
        self.attach(link.clone(), registrar);
        Ok(link)
    }

    /// The attached device link, if any.
    pub fn link(&self) -> Option<&Arc<DeviceLink>> {
        self.link.get()
    }

    /// The BAR address the notification ioeventfds are registered at now (`None`: not
    /// registered, e.g. memory decoding is off).
    pub fn ioevent_base(&self) -> Option<u64> {
        self.ioevents.lock().unwrap().at
    }

    /// Moves the notification ioeventfds to where the BAR decodes now.
    fn sync_ioevents(&self) {
        let Some(link) = self.link.get() else { return };
        let want = {
            let cfg = self.cfg.lock().unwrap();
            let base = cfg.bar_address(BAR_INDEX);
            // Decoded only with memory space on, and a BAR above the first page (a BAR being
            // sized or not yet programmed reads as its size mask or 0).
            base.filter(|&b| {
                cfg.command() & super::config::COMMAND_MEMORY != 0
                    && b >= 0x1000
                    && b.checked_add(BAR_SIZE).is_some()
            })
        };
        let mut io = self.ioevents.lock().unwrap();
        if io.at == want {
            return;
        }
        let Some(reg) = io.registrar.clone() else {
            return;
        };
        let addr = |base: u64, q: usize| {
            base + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
        };
        let queues = link.queue_count().min(usize::from(self.num_queues));
        if let Some(old) = io.at.take() {
            for q in 0..queues {
                let fd = link.queue_fd(q).expect("q < queue_count");
                if let Err(e) = reg.unregister(fd, addr(old, q), None) {
                    log::warn!(
                        "virtio-pci: queue {q}: removing the ioeventfd at {:#x}: {e}",
                        addr(old, q)
                    );
                }
            }
        }
        if let Some(new) = want {
            for q in 0..queues {
                let fd = link.queue_fd(q).expect("q < queue_count");
                if let Err(e) = reg.register(fd, addr(new, q), None) {
                    io.failed += 1;
                    log::warn!("virtio-pci: queue {q}: no ioeventfd at {:#x} ({e}); its notifications are forwarded from the vCPU", addr(new, q));
                }
            }
            io.at = Some(new);
        }
    }

    /// The event thread saw queue `queue`'s eventfd: processes it if the device is active (a
    /// notification before DRIVER_OK is counted and dropped; activation signals every enabled
    /// queue again).
    pub fn process_event(&self, queue: u16) {
        {
            let mut st = self.state.lock().unwrap();
            if !st.core.activated {
                st.core.bad_accesses += 1;
                return;
            }
        }
        self.notifies.fetch_add(1, Ordering::Relaxed);
        self.process(queue);
    }

    /// Where this function's capabilities are in configuration space.
    pub fn capabilities(&self) -> CapOffsets {
        self.caps
    }

    /// The address the BAR is programmed to now.
    pub fn bar_address(&self) -> u64 {
        self.cfg
            .lock()
            .unwrap()
            .bar_address(BAR_INDEX)
            .expect("BAR 0 exists")
    }

    /// Runs `f` on the device (e.g. the API setting a balloon target). When it returns true
    /// the device configuration changed: the generation is bumped and a configuration change
    /// interrupt sent.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> (R, bool)) -> R {
        let (r, changed) = f(&mut self.device.lock().unwrap());
        if changed {
            let vector = {
                let mut st = self.state.lock().unwrap();
                st.core.config_generation = st.core.config_generation.wrapping_add(1);
                st.msix_config
            };
            self.interrupt(vector, INT_CONFIG);
        }
        r
    }

    /// Runs `f` on the device outside a queue notification (e.g. a timer returning a held
    /// buffer); when it returns `Some(queue)`, that queue's used ring changed and its
    /// interrupt is sent.
    pub fn with_device_used<R>(&self, f: impl FnOnce(&mut D) -> (R, Option<u16>)) -> R {
        let (r, used) = f(&mut self.device.lock().unwrap());
        if let Some(q) = used {
            self.signal_used(q);
        }
        r
    }

    /// Driver mistakes: bad register accesses of the transport and of the MSI-X table.
    pub fn bad_accesses(&self) -> u64 {
        self.state.lock().unwrap().core.bad_accesses
            + self.bad.load(Ordering::Relaxed)
            + self.msix.counters().bad_accesses
    }

    /// MSI-X activity.
    pub fn msix_counters(&self) -> MsixCounters {
        self.msix.counters()
    }

    /// Queue notifications processed.
    pub fn notifies(&self) -> u64 {
        self.notifies.load(Ordering::Relaxed)
    }

    /// The device status the driver set.
    pub fn device_status(&self) -> u32 {
        self.state.lock().unwrap().core.status
    }

    /// Whether this function asserts INTA# now (ISR non-zero, MSI-X off, INTx enabled). With
    /// KVM the line itself is lowered at the guest's next EOI, not when this turns false.
    pub fn intx_asserted(&self) -> bool {
        *self.intx_level.lock().unwrap()
    }

    fn bad(&self) {
        self.bad.fetch_add(1, Ordering::Relaxed);
    }

    fn signal_used(&self, queue: u16) {
        let vector = self
            .state
            .lock()
            .unwrap()
            .queue_vectors
            .get(usize::from(queue))
            .copied()
            .unwrap_or(VIRTIO_MSI_NO_VECTOR);
        self.interrupt(vector, INT_USED_BUFFER);
    }

    /// virtio 1.1 §4.1.5.3-4: with MSI-X enabled, the mapped vector's message (the
    /// configuration bit is still set in ISR); without, the ISR bit and INTx.
    fn interrupt(&self, vector: u16, bit: u32) {
        if self.msix.enabled() {
            if bit == INT_CONFIG {
                self.isr.raise(INT_CONFIG);
            }
            if vector != VIRTIO_MSI_NO_VECTOR {
                self.msix.signal(vector);
            }
        } else {
            self.isr.raise(bit);
            self.update_intx();
        }
    }

    /// Drives INTx to "ISR non-zero, MSI-X off, INTx not disabled".
    fn update_intx(&self) {
        let Some(line) = &self.intx else {
            return;
        };
        let level = self.isr.get() != 0
            && !self.msix.enabled()
            && !self.intx_disabled.load(Ordering::Acquire);
        let mut cur = self.intx_level.lock().unwrap();
        if *cur != level {
            *cur = level;
            if let Err(e) = line.set_level(level) {
                log::warn!("virtio-pci: INTx level {level} not delivered: {e}");
            }
        }
    }

    fn common_read(&self, off: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(field) = self.common_access(off, data.len()) else {
            return;
        };
        let st = self.state.lock().unwrap();
        let core = &st.core;
        let q = core.selected_queue();
        let sel = core.queue_sel as usize;
        use common::*;
        let v: u64 = match field {
            DEVICE_FEATURE_SELECT => core.dev_features_sel.into(),
            DEVICE_FEATURE => core
                .device_features_word(&*self.device.lock().unwrap())
                .into(),
            DRIVER_FEATURE_SELECT => core.drv_features_sel.into(),
            DRIVER_FEATURE => core.driver_features_word().into(),
            MSIX_CONFIG => st.msix_config.into(),
            NUM_QUEUES => self.num_queues.into(),
            DEVICE_STATUS => core.status.into(),
            CONFIG_GENERATION => core.config_generation.into(),
            QUEUE_SELECT => core.queue_sel.into(),
            QUEUE_SIZE => q.map(|q| q.size()).unwrap_or(0).into(),
            QUEUE_MSIX_VECTOR => st
                .queue_vectors
                .get(sel)
                .copied()
                .unwrap_or(VIRTIO_MSI_NO_VECTOR)
                .into(),
            QUEUE_ENABLE => q.map(|q| u64::from(q.ready())).unwrap_or(0),
            QUEUE_NOTIFY_OFF => q.map(|_| sel as u64).unwrap_or(0),
            QUEUE_DESC => q.map(|q| q.desc_table()).unwrap_or(0),
            QUEUE_DRIVER => q.map(|q| q.avail_ring()).unwrap_or(0),
            QUEUE_DEVICE => q.map(|q| q.used_ring()).unwrap_or(0),
            _ => 0,
        };
        let shift = 8 * (off - field);
        let bytes = (v >> shift).to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// The field an access of `len` bytes at `off` covers, if the access is one the spec
    /// allows: the field's natural width, or a 32-bit half of a 64-bit field.
    fn common_access(&self, off: u64, len: usize) -> Option<u64> {
        let ok = match common::field(off) {
            Some((start, width)) if start == off && len == width => Some(start),
            Some((start, 8)) if len == 4 && (off - start) % 4 == 0 => Some(start),
            _ => None,
        };
        if ok.is_none() {
            self.state.lock().unwrap().core.bad_accesses += 1;
        }
        ok
    }

    fn common_write(&self, off: u64, data: &[u8]) {
        let Some(field) = self.common_access(off, data.len()) else {
            return;
        };
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let mut st = self.state.lock().unwrap();
        let sel = st.core.queue_sel as usize;
        use common::*;
        use {Half::*, RingPart::*};
        let halves = |v: u64| -> Vec<(Half, u32)> {
            match (data.len(), off - field) {
                (8, _) => vec![(Low, v as u32), (High, (v >> 32) as u32)],
                (_, 0) => vec![(Low, v as u32)],
                _ => vec![(High, v as u32)],
            }
        };
        match field {
            DEVICE_FEATURE_SELECT => st.core.dev_features_sel = v as u32,
            DRIVER_FEATURE_SELECT => st.core.drv_features_sel = v as u32,
            DRIVER_FEATURE => st
                .core
                .write_driver_features(&mut *self.device.lock().unwrap(), v as u32),
            MSIX_CONFIG => st.msix_config = self.map_vector(v as u16),
            DEVICE_STATUS => {
                let change = st.core.set_status(
                    v as u32,
                    &mut *self.device.lock().unwrap(),
                    self.ram.memory(),
                );
                match change {
                    StatusChange::Reset => {
                        st.msix_config = VIRTIO_MSI_NO_VECTOR;
                        st.queue_vectors.fill(VIRTIO_MSI_NO_VECTOR);
                        drop(st);
                        self.isr.take();
                        self.update_intx();
                    }
                    StatusChange::Failed(e) => {
                        let vector = st.msix_config;
                        drop(st);
                        log::warn!("virtio-pci: activation failed: {e}");
                        self.interrupt(vector, INT_CONFIG);
                    }
                    StatusChange::Activated => {
                        let ready = st.core.ready_queues();
                        drop(st);
                        for q in ready {
                            match self.link.get() {
                                Some(link) => link.signal_queue(q),
                                None => self.process(q),
                            }
                        }
                    }
                    StatusChange::Stored => {}
                }
            }
            QUEUE_SELECT => st.core.queue_sel = v as u32,
            QUEUE_SIZE => st.core.set_queue_size(v as u16),
            QUEUE_MSIX_VECTOR => {
                let mapped = self.map_vector(v as u16);
                match st.queue_vectors.get_mut(sel) {
                    Some(slot) => *slot = mapped,
                    None => st.core.bad_accesses += 1,
                }
            }
            QUEUE_ENABLE if v == 1 => st.core.set_queue_ready(true),
            QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => {
                let part = match field {
                    QUEUE_DESC => Desc,
                    QUEUE_DRIVER => Avail,
                    _ => Used,
                };
                for (h, w) in halves(v) {
                    st.core.set_queue_addr(part, h, w);
                }
            }
            // Read-only fields, and queue_enable = 0 (virtio 1.1 §4.1.4.3.2: the driver
            // MUST NOT write 0).
            _ => st.core.bad_accesses += 1,
        }
    }

    /// A vector the driver asked for, or NO_VECTOR if the table has no such entry (virtio 1.1
    /// §4.1.4.3.1: the driver reads back NO_VECTOR when the mapping failed).
    fn map_vector(&self, v: u16) -> u16 {
        if v < self.msix.vectors() {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    /// A queue notification. Before DRIVER_OK it is counted as a driver mistake (virtio 1.1
    /// §3.1.1) and otherwise dropped: activation processes every enabled queue, so buffers
    /// made available before it are not lost.
    fn notify(&self, off: u64, data: &[u8]) {
        let queue = off / u64::from(NOTIFY_OFF_MULTIPLIER);
        let ok = off % u64::from(NOTIFY_OFF_MULTIPLIER) == 0
            && matches!(data.len(), 2 | 4)
            && queue < u64::from(self.num_queues);
        if ok {
            if let Some(link) = self.link.get() {
                link.forward_notification(queue as u16);
                return;
            }
        }
        {
            let mut st = self.state.lock().unwrap();
            if !ok || !st.core.activated {
                st.core.bad_accesses += 1;
                return;
            }
        }
        self.notifies.fetch_add(1, Ordering::Relaxed);
        self.process(queue as u16);
    }

    /// Lets the device process `queue` and interrupts the driver as that requires.
    fn process(&self, queue: u16) {
        match process_notify(&self.device, queue, self.ram.memory(), "virtio-pci") {
            Notified::Used => self.signal_used(queue),
            Notified::Quiet => {}
            Notified::NeedsReset => {
                let vector = {
                    let mut st = self.state.lock().unwrap();
                    st.core.set_needs_reset();
                    st.msix_config
                };
                self.interrupt(vector, INT_CONFIG);
            }
        }
    }

    /// The BAR access an access capability describes, if valid: bar, offset and length
    /// naming an aligned 1, 2 or 4 byte access inside our BAR.
    fn pci_cfg_window(&self, cfg: &PciConfig) -> Option<(u64, usize)> {
        let at = self.caps.pci_cfg;
        let bar = cfg.u16(at + CAP_BAR) & 0xff;
        let off = u64::from(cfg.u32(at + CAP_OFFSET));
        let len = cfg.u32(at + CAP_LENGTH) as usize;
        let ok = bar == BAR_INDEX as u16
            && matches!(len, 1 | 2 | 4)
            && off % len as u64 == 0
            && off + len as u64 <= BAR_SIZE;
        ok.then_some((off, len))
    }

    fn overlaps_pci_cfg_data(&self, offset: usize, len: usize) -> bool {
        let d = self.caps.pci_cfg + CAP_PCI_CFG_DATA;
        offset < d + 4 && d < offset + len
    }
}

impl<D: VirtioDevice> PciFunction for VirtioPciDevice<D> {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        if self.overlaps_pci_cfg_data(offset, data.len()) {
            let window = self.pci_cfg_window(&self.cfg.lock().unwrap());
            match window {
                Some((off, len)) => {
                    let mut buf = [0u8; 4];
                    self.bar_read(BAR_INDEX, off, &mut buf[..len]);
                    let d = self.caps.pci_cfg + CAP_PCI_CFG_DATA;
                    self.cfg.lock().unwrap().set_bytes(d, &buf);
                }
                None => self.bad(),
            }
        }
        let cfg = self.cfg.lock().unwrap();
        cfg.read(offset, data);
        // Status bit 3 mirrors INTx: ISR non-zero while MSI-X is off (whether or not INTx is
        // disabled in the command register, PCI 3.0 §6.2.3).
        let pending = self.isr.get() != 0 && !self.msix.enabled();
        if pending && offset <= STATUS && STATUS < offset + data.len() {
            data[STATUS - offset] |= STATUS_INTERRUPT as u8;
        }
    }

    fn config_write(&self, offset: usize, data: &[u8]) {
        let (control, cfg_write) = {
            let mut cfg = self.cfg.lock().unwrap();
            cfg.write(offset, data);
            self.intx_disabled
                .store(cfg.command() & COMMAND_INTX_DISABLE != 0, Ordering::Release);
            let ctrl_at = self.caps.msix + 2;
            let control = (offset < ctrl_at + 2 && ctrl_at < offset + data.len())
                .then(|| cfg.u16(ctrl_at) & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK));
            let cfg_write = if self.overlaps_pci_cfg_data(offset, data.len()) {
                let d = self.caps.pci_cfg + CAP_PCI_CFG_DATA;
                match self.pci_cfg_window(&cfg) {
                    Some((off, len)) => {
                        let mut buf = [0u8; 4];
                        cfg.read(d, &mut buf);
                        Some((off, buf, len))
                    }
                    None => {
                        self.bad();
                        None
                    }
                }
            } else {
                None
            };
            (control, cfg_write)
        };
        if let Some(c) = control {
            self.msix.set_control(c);
        }
        self.sync_ioevents();
        self.update_intx();
        if let Some((off, buf, len)) = cfg_write {
            self.bar_write(BAR_INDEX, off, &buf[..len]);
        }
    }

    fn mmio_decode(&self, addr: u64) -> Option<(usize, u64)> {
        self.cfg.lock().unwrap().decode(addr)
    }

    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != BAR_INDEX || data.is_empty() {
            return self.bad();
        }
        let end = offset + data.len() as u64;
        let within = |start: u64, len: u64| offset >= start && end <= start + len;
        if within(COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            self.common_read(offset - COMMON_CFG_OFFSET, data);
        } else if within(ISR_OFFSET, 4) {
            // Reading clears the ISR and deasserts INTx (virtio 1.1 §4.1.4.5).
            if offset == ISR_OFFSET {
                data[0] = self.isr.take() as u8;
                self.update_intx();
            }
        } else if within(DEVICE_CFG_OFFSET, self.device_cfg_len) {
            self.device
                .lock()
                .unwrap()
                .read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(MSIX_TABLE_OFFSET, self.msix.table_len()) {
            self.msix.table_read(offset - MSIX_TABLE_OFFSET, data);
        } else if within(MSIX_PBA_OFFSET, self.msix.pba_len()) {
            self.msix.pba_read(offset - MSIX_PBA_OFFSET, data);
        } else {
            // The notification area reads 0; anything else is a driver mistake.
            if !within(NOTIFY_OFFSET, u64::from(self.num_queues) * 4) {
                self.bad();
            }
        }
    }

    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        if bar != BAR_INDEX || data.is_empty() {
            return self.bad();
        }
        let end = offset + data.len() as u64;
        let within = |start: u64, len: u64| offset >= start && end <= start + len;
        if within(COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            self.common_write(offset - COMMON_CFG_OFFSET, data);
        } else if within(NOTIFY_OFFSET, u64::from(self.num_queues) * 4) {
            self.notify(offset - NOTIFY_OFFSET, data);
        } else if within(DEVICE_CFG_OFFSET, self.device_cfg_len) {
            self.device
                .lock()
                .unwrap()
                .write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(MSIX_TABLE_OFFSET, self.msix.table_len()) {
            self.msix.table_write(offset - MSIX_TABLE_OFFSET, data);
        } else if within(MSIX_PBA_OFFSET, self.msix.pba_len()) {
            self.msix.pba_write();
        } else {
            // ISR is read-only; gaps decode to nothing.
            self.bad();
        }
    }
}
