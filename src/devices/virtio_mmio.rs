//! The virtio-mmio transport (version 2, virtio 1.2 §4.2.2): the register window a driver uses
//! to negotiate features, set up queues and notify the device, over any [`VirtioDevice`].
//!
//! Status, features and queue configuration follow the rules shared with virtio-pci in
//! [`super::virtio_transport`]; register offsets are virtio-bindings' `VIRTIO_MMIO_*`.
//! Queue notifications are processed on the device event thread once a
//! [`DeviceLink`] is attached: KVM signals the queue's eventfd for a `QueueNotify` write (an
//! ioeventfd with the queue index as data match), so the write never leaves the kernel; what
//! still arrives here as an exit is forwarded to the same eventfd. Without a link (a transport
//! tested alone) queues are processed inline. Interrupt status is kept for drivers that poll it; [`MmioTransport::wait_event`] lets a
//! polling driver block (through the wait hypercall) until the status becomes non-zero.

use super::events::DeviceLink;
use super::virtio::VirtioDevice;
use super::virtio_transport::{
    process_notify, Half, InterruptStatus, Notified, RingPart, StatusChange, TransportCore,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

pub use super::virtio_transport::{INT_CONFIG, INT_USED_BUFFER};

/// Size of the register window.
pub const MMIO_WINDOW: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4d56_4d56; // "MVMV"

/// A device behind a virtio-mmio register window at `base`.
pub struct MmioTransport<D: VirtioDevice> {
    base: u64,
    device: Mutex<D>,
    state: Mutex<TransportCore>,
    interrupt: InterruptStatus,
    link: OnceLock<Arc<DeviceLink>>,
}

/// Offset of the `QueueNotify` register (what an ioeventfd watches).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device` at guest-physical `base`.
    pub fn new(base: u64, device: D) -> Self {
        MmioTransport {
            base,
            state: Mutex::new(TransportCore::new(&device.queue_max_sizes())),
            device: Mutex::new(device),
            interrupt: InterruptStatus::default(),
            link: OnceLock::new(),
        }
    }

    /// Hands queue processing to the device event thread behind `link` (see the module doc).
    /// The caller registers the link's queue eventfds as ioeventfds at
    /// `base + QUEUE_NOTIFY_OFFSET`, data match the queue index. Only the first call counts.
    pub fn attach(&self, link: Arc<DeviceLink>) {
        let _ = self.link.set(link);
    }

    /// A new link with one eventfd per queue, attached, its eventfds registered with
    /// `registrar` as ioeventfds on the `QueueNotify` register (data match: the queue index).
    /// A registration KVM refuses is logged: that queue's notifications then arrive as exits
    /// and are forwarded to the same eventfd.
    pub fn attach_link(
        &self,
        registrar: &dyn super::events::IoeventRegistrar,
    ) -> std::io::Result<Arc<DeviceLink>> {
        let queues = self.state.lock().unwrap().queues.len();
        let link = Arc::new(DeviceLink::new(queues)?);
        let at = self.base + QUEUE_NOTIFY_OFFSET;
        for q in 0..queues {
            let fd = link.queue_fd(q).expect("q < queues");
            if let Err(e) = registrar.register(fd, at, Some(q as u32)) {
                log::warn!("virtio-mmio at {:#x}: queue {q}: no ioeventfd ({e}); its notifications are forwarded from the vCPU", self.base);
            }
        }
        self.attach(link.clone());
        Ok(link)
    }

    /// The attached device link, if any.
    pub fn link(&self) -> Option<&Arc<DeviceLink>> {
        self.link.get()
    }

    /// The event thread saw queue `queue`'s eventfd: processes it if the device is active
    /// (a notification before DRIVER_OK is counted and dropped; activation signals every
    /// enabled queue again).
    pub fn process_event(&self, queue: u16, mem: &GuestMemoryMmap) {
        {
            let mut st = self.state.lock().unwrap();
            if !st.activated {
                st.bad_accesses += 1;
                return;
            }
        }
        self.process(queue, mem);
    }

    /// Guest-physical base of the window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether `addr` falls in this window.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + MMIO_WINDOW
    }

    /// Runs `f` on the device (e.g. the API setting a balloon target). When it returns true the
    /// device configuration changed: the generation is bumped and a config interrupt raised.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> (R, bool)) -> R {
        let (r, changed) = f(&mut self.device.lock().unwrap());
        if changed {
            self.state.lock().unwrap().config_generation += 1;
            self.interrupt.raise(INT_CONFIG);
        }
        r
    }

    /// Runs `f` on the device outside a queue notification (e.g. a timer returning a held
    /// buffer); when it returns `Some(queue)`, that queue's used ring changed.
    pub fn with_device_used<R>(&self, f: impl FnOnce(&mut D) -> (R, Option<u16>)) -> R {
        let (r, used) = f(&mut self.device.lock().unwrap());
        if used.is_some() {
            self.interrupt.raise(INT_USED_BUFFER);
        }
        r
    }

    /// Blocks until an interrupt is pending or `timeout` passes; returns the pending bits.
    pub fn wait_event(&self, timeout: Duration) -> u32 {
        self.interrupt.wait(timeout)
    }

    /// Register and config-space accesses the driver got wrong.
    pub fn bad_accesses(&self) -> u64 {
        self.state.lock().unwrap().bad_accesses
    }

    /// An MMIO read at `addr` (inside the window).
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        let off = addr - self.base;
        if off >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .lock()
                .unwrap()
                .read_config(off - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let mut st = self.state.lock().unwrap();
        if data.len() != 4 {
            st.bad_accesses += 1;
            data.fill(0);
            return;
        }
        let dev = self.device.lock().unwrap();
        let v: u32 = match off as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => dev.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => st.device_features_word(&*dev),
            VIRTIO_MMIO_QUEUE_NUM_MAX => st
                .selected_queue()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            VIRTIO_MMIO_QUEUE_READY => st
                .selected_queue()
                .map(|q| u32::from(q.ready()))
                .unwrap_or(0),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.get(),
            VIRTIO_MMIO_STATUS => st.status,
            VIRTIO_MMIO_CONFIG_GENERATION => st.config_generation,
            _ => {
                st.bad_accesses += 1;
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// An MMIO write at `addr` (inside the window). Queue notifications are processed here,
    /// with `mem` as guest memory.
    pub fn write(&self, addr: u64, data: &[u8], mem: &GuestMemoryMmap) {
        let off = addr - self.base;
        if off >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .lock()
                .unwrap()
                .write_config(off - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let mut st = self.state.lock().unwrap();
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            st.bad_accesses += 1;
            return;
        };
        let v = u32::from_le_bytes(bytes);
        use {Half::*, RingPart::*};
        match off as u32 {
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                drop(st);
                self.notify(v as u16, mem);
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => st.dev_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                st.write_driver_features(&mut *self.device.lock().unwrap(), v)
            }
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => st.drv_features_sel = v,
            VIRTIO_MMIO_QUEUE_SEL => st.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => st.set_queue_size(v as u16),
            VIRTIO_MMIO_QUEUE_READY => st.set_queue_ready(v == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => st.set_queue_addr(Desc, Low, v),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => st.set_queue_addr(Desc, High, v),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => st.set_queue_addr(Avail, Low, v),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => st.set_queue_addr(Avail, High, v),
            VIRTIO_MMIO_QUEUE_USED_LOW => st.set_queue_addr(Used, Low, v),
            VIRTIO_MMIO_QUEUE_USED_HIGH => st.set_queue_addr(Used, High, v),
            VIRTIO_MMIO_STATUS => {
                let change = st.set_status(v, &mut *self.device.lock().unwrap(), mem);
                drop(st);
                match change {
                    StatusChange::Reset => {
                        self.interrupt.ack(u32::MAX);
                    }
                    StatusChange::Failed(e) => {
                        log::warn!("virtio-mmio at {:#x}: activation failed: {e}", self.base);
                        self.interrupt.raise(INT_CONFIG);
                    }
                    StatusChange::Activated => {
                        // Buffers made available before DRIVER_OK (see
                        // `TransportCore::ready_queues`).
                        let ready = self.state.lock().unwrap().ready_queues();
                        for q in ready {
                            match self.link.get() {
                                Some(link) => link.signal_queue(q),
                                None => self.process(q, mem),
                            }
                        }
                    }
                    StatusChange::Stored => {}
                }
            }
            _ => st.bad_accesses += 1,
        }
    }

    /// A queue notification; before DRIVER_OK counted and dropped (activation processes every
    /// enabled queue).
    fn notify(&self, queue: u16, mem: &GuestMemoryMmap) {
        if let Some(link) = self.link.get() {
            link.forward_notification(queue);
            return;
        }
        {
            let mut st = self.state.lock().unwrap();
            if !st.activated {
                st.bad_accesses += 1;
                return;
            }
        }
        self.process(queue, mem);
    }

    /// Lets the device process `queue` and raises the interrupt status that requires.
    fn process(&self, queue: u16, mem: &GuestMemoryMmap) {
        let what = format_args!("virtio-mmio at {:#x}", self.base);
        match process_notify(&self.device, queue, mem, what) {
            Notified::Used => self.interrupt.raise(INT_USED_BUFFER),
            Notified::Quiet => {}
            Notified::NeedsReset => {
                self.state.lock().unwrap().set_needs_reset();
                self.interrupt.raise(INT_CONFIG);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;
    use crate::memory::GuestRam;
    use virtio_bindings::virtio_config::*;
    use virtio_queue::Queue;

    /// A device that records which queues it was asked to process.
    #[derive(Default)]
    struct Recorder {
        processed: Vec<u16>,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            5
        }
        fn avail_features(&self) -> u64 {
            1 << VIRTIO_F_VERSION_1
        }
        fn ack_features(&mut self, _: u64) {}
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![4, 4, 4]
        }
        fn config_len(&self) -> u64 {
            0
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: Vec<Queue>) -> Result<(), String> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn process_queue(&mut self, index: u16, _: &GuestMemoryMmap) -> Result<bool, String> {
            self.processed.push(index);
            Ok(true)
        }
    }

    /// As on virtio-pci (tests/pci.rs): a queue made available and notified before DRIVER_OK
    /// is processed when the device activates; the early notification itself is counted.
    #[test]
    fn queues_are_processed_at_activation() {
        let ram = GuestRam::new(&[RegionConfig::anon(1 << 20)]).unwrap();
        let mem = ram.memory();
        let t = MmioTransport::new(0xd000_0000, Recorder::default());
        let w = |reg: u32, v: u32| t.write(0xd000_0000 + u64::from(reg), &v.to_le_bytes(), mem);
        w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        let ok = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        w(VIRTIO_MMIO_STATUS, ok | VIRTIO_CONFIG_S_FEATURES_OK);
        // Queues 0 and 2 enabled, 1 not.
        for q in [0u32, 2] {
            w(VIRTIO_MMIO_QUEUE_SEL, q);
            w(VIRTIO_MMIO_QUEUE_NUM, 4);
            w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000 * (q + 1));
            w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x1000 * (q + 1) + 0x100);
            w(VIRTIO_MMIO_QUEUE_USED_LOW, 0x1000 * (q + 1) + 0x200);
            w(VIRTIO_MMIO_QUEUE_READY, 1);
        }
        w(VIRTIO_MMIO_QUEUE_NOTIFY, 2);
        assert!(t.with_device(|d| (d.processed.is_empty(), false)));
        assert_eq!(t.bad_accesses(), 1, "the early notification");
        w(
            VIRTIO_MMIO_STATUS,
            ok | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(t.with_device(|d| (d.processed.clone(), false)), [0, 2]);
        assert_eq!(
            t.wait_event(Duration::ZERO) & INT_USED_BUFFER,
            INT_USED_BUFFER
        );
        // Later notifications are processed as they come.
        w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(t.with_device(|d| (d.processed.clone(), false)), [0, 2, 0]);
    }
}
