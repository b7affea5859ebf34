//! What the virtio transports (virtio-mmio and virtio-pci) share: the device status state
//! machine, feature negotiation, queue configuration with its checks, queue notification, and
//! the interrupt-status word a polling driver can wait on.
//!
//! A transport owns a [`TransportCore`] behind its own lock and maps its registers onto it;
//! everything here is independent of how the registers are laid out. The rules enforced are
//! those of virtio 1.1 §2.1 and §3.1 that both transports have in common:
//! - device status only gains bits, except by writing 0 (reset) and FAILED at any time;
//! - only offered feature bits are kept, and the device always sees the driver's whole current
//!   set: a feature word rewritten before FEATURES_OK replaces the earlier one, so the device
//!   never runs with a feature (or a queue) the driver took back;
//! - FEATURES_OK is refused (not kept) when the driver did not accept `VIRTIO_F_VERSION_1`:
//!   both transports are modern-only;
//! - queue configuration may change only before DRIVER_OK, sizes must be powers of two no larger
//!   than the maximum, ring addresses must be aligned;
//! - DRIVER_OK activates the device only after ACKNOWLEDGE, DRIVER and FEATURES_OK and only if
//!   every enabled queue lies inside guest memory; otherwise the device sets NEEDS_RESET.
//!
//! Mistakes by the driver are counted in [`TransportCore::bad_accesses`], never fatal.

use super::virtio::VirtioDevice;
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Interrupt status bit: a queue's used ring changed (virtio-mmio `InterruptStatus` bit 0,
/// virtio-pci ISR bit 0).
pub const INT_USED_BUFFER: u32 = 1;
/// Interrupt status bit: the device configuration changed (bit 1 in both transports).
pub const INT_CONFIG: u32 = 2;

/// Which ring address of the selected queue a register sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table (`queue_desc`).
    Desc,
    /// The available ring (`queue_driver`).
    Avail,
    /// The used ring (`queue_device`).
    Used,
}

/// Which 32-bit half of a 64-bit register a write covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// Bits 0..32.
    Low,
    /// Bits 32..64.
    High,
}

/// What a device status write did.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusChange {
    /// Status stored (or refused and counted); nothing else happened.
    Stored,
    /// The driver wrote 0: the transport and the device were reset.
    Reset,
    /// DRIVER_OK activated the device.
    Activated,
    /// Activation failed; NEEDS_RESET is set and the transport should send a configuration
    /// interrupt.
    Failed(String),
}

/// The driver-visible state both transports keep for a device.
pub struct TransportCore {
    /// Device status.
    pub status: u32,
    /// Device feature word selector.
    pub dev_features_sel: u32,
    /// Driver feature word selector.
    pub drv_features_sel: u32,
    /// Features the driver wrote (only offered bits are kept).
    pub driver_features: u64,
    /// Selected queue.
    pub queue_sel: u32,
    /// The queues as the driver configured them.
    pub queues: Vec<Queue>,
    /// Transport configuration generation (bumped when the device changes its config).
    pub config_generation: u32,
    /// Whether DRIVER_OK activated the device (until reset).
    pub activated: bool,
    /// Register and config-space accesses the driver got wrong.
    pub bad_accesses: u64,
}

impl TransportCore {
    /// State for a device with queues of the given maximum sizes.
    pub fn new(max_sizes: &[u16]) -> Self {
        TransportCore {
            status: 0,
            dev_features_sel: 0,
            drv_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: max_sizes
                .iter()
                .map(|&m| Queue::new(m).expect("device queue sizes are valid"))
                .collect(),
            config_generation: 0,
            activated: false,
            bad_accesses: 0,
        }
    }

    /// The device feature word the driver selected (words past the second read 0).
    pub fn device_features_word(&self, dev: &dyn VirtioDevice) -> u32 {
        match self.dev_features_sel {
            0 => dev.avail_features() as u32,
            1 => (dev.avail_features() >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver feature word the driver selected, as it wrote it.
    pub fn driver_features_word(&self) -> u32 {
        match self.drv_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver writes the selected driver feature word. Allowed only before FEATURES_OK;
    /// bits the device does not offer are dropped (and counted by the device). The device gets
    /// the whole set after every write, so a word the driver rewrites replaces what it said
    /// before (the device never keeps a feature the driver took back).
    pub fn write_driver_features(&mut self, dev: &mut dyn VirtioDevice, v: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 || self.drv_features_sel > 1 {
            self.bad_accesses += 1;
            return;
        }
        let shift = 32 * self.drv_features_sel;
        let mask = 0xffff_ffffu64 << shift;
        let written = (self.driver_features & !mask) | (u64::from(v) << shift);
        self.driver_features = written & dev.avail_features();
        dev.ack_features(written);
    }

    /// Whether queue configuration may change (before DRIVER_OK).
    pub fn queue_setup_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    /// The selected queue, if it exists.
    pub fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue for a configuration change: `None` (and counted) when it does not
    /// exist or setup is no longer allowed.
    fn queue_for_setup(&mut self) -> Option<&mut Queue> {
        if !self.queue_setup_allowed() || self.queue_sel as usize >= self.queues.len() {
            self.bad_accesses += 1;
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Sets the size of the selected queue; sizes that are zero, not a power of two or above
    /// the maximum are ignored and counted.
    pub fn set_queue_size(&mut self, size: u16) {
        let Some(q) = self.queue_for_setup() else {
            return;
        };
        if q.try_set_size(size).is_err() {
            self.bad_accesses += 1;
        }
    }

    /// Enables (or, on virtio-mmio, disables) the selected queue.
    pub fn set_queue_ready(&mut self, ready: bool) {
        if let Some(q) = self.queue_for_setup() {
            q.set_ready(ready);
        }
    }

    /// Sets one half of a ring address of the selected queue. Misaligned addresses are
    /// ignored and counted (virtio 1.1 §2.6: 16 for descriptors, 2 for the available ring, 4
    /// for the used ring).
    pub fn set_queue_addr(&mut self, part: RingPart, half: Half, v: u32) {
        let Some(q) = self.queue_for_setup() else {
            return;
        };
        let old = match part {
            RingPart::Desc => q.desc_table(),
            RingPart::Avail => q.avail_ring(),
            RingPart::Used => q.used_ring(),
        };
        let new = match half {
            Half::Low => (old & !0xffff_ffff) | u64::from(v),
            Half::High => (old & 0xffff_ffff) | (u64::from(v) << 32),
        };
        let a = GuestAddress(new);
        let ok = match part {
            RingPart::Desc => q.try_set_desc_table_address(a),
            RingPart::Avail => q.try_set_avail_ring_address(a),
            RingPart::Used => q.try_set_used_ring_address(a),
        };
        if ok.is_err() {
            self.bad_accesses += 1;
        }
    }

    /// A device status write: reset on 0, otherwise the new status if it only adds bits (or
    /// sets FAILED). FEATURES_OK is not kept unless `VIRTIO_F_VERSION_1` was accepted.
    /// DRIVER_OK activates the device with its queues, checked against `mem`.
    pub fn set_status(
        &mut self,
        v: u32,
        dev: &mut dyn VirtioDevice,
        mem: &GuestMemoryMmap,
    ) -> StatusChange {
        if v == 0 {
            self.reset(dev);
            return StatusChange::Reset;
        }
        if v & self.status != self.status && v & VIRTIO_CONFIG_S_FAILED == 0 {
            self.bad_accesses += 1;
            return StatusChange::Stored;
        }
        let mut v = v;
        let newly = v & !self.status;
        if newly & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0
        {
            // virtio 1.1 §3.1.1: the device does not keep FEATURES_OK for a feature set it
            // cannot support; a legacy driver then sees it cleared and gives up.
            self.bad_accesses += 1;
            v &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        self.status = v;
        if newly & VIRTIO_CONFIG_S_DRIVER_OK == 0 || self.activated {
            return StatusChange::Stored;
        }
        let result = self.activate(v, dev, mem);
        match result {
            Ok(()) => {
                self.activated = true;
                StatusChange::Activated
            }
            Err(e) => {
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                StatusChange::Failed(e)
            }
        }
    }

    fn activate(
        &self,
        status: u32,
        dev: &mut dyn VirtioDevice,
        mem: &GuestMemoryMmap,
    ) -> Result<(), String> {
        let expect =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        if status & expect != expect {
            return Err("driver set DRIVER_OK before FEATURES_OK".into());
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() {
                if let Some(what) = queue_outside_memory(q, mem) {
                    return Err(format!("queue {i}: {what} is not inside guest memory"));
                }
            }
        }
        dev.activate(self.queues.iter().map(copy_queue).collect())
    }

    /// Returns the transport state to its initial values and resets the device.
    pub fn reset(&mut self, dev: &mut dyn VirtioDevice) {
        self.status = 0;
        self.activated = false;
        self.dev_features_sel = 0;
        self.drv_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in self.queues.iter_mut() {
            q.reset();
        }
        dev.reset();
    }

    /// The queues the driver enabled, to be processed once at activation: a driver may make
    /// buffers available (and notify) before DRIVER_OK — Linux's `virtio_balloon` posts its
    /// first statistics buffer that way — and the device must pick them up when it becomes
    /// ready (as QEMU and Firecracker do), since the driver will not notify again.
    pub fn ready_queues(&self) -> Vec<u16> {
        (0..self.queues.len() as u16)
            .filter(|&i| self.queues[usize::from(i)].ready())
            .collect()
    }

    /// Marks the device as needing a reset (after a queue error it cannot continue from).
    pub fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    }
}

/// Which ring of `q` (if any) is not entirely inside `mem`.
fn queue_outside_memory(q: &Queue, mem: &GuestMemoryMmap) -> Option<&'static str> {
    let n = usize::from(q.size());
    let parts = [
        ("the descriptor table", q.desc_table(), 16 * n),
        ("the available ring", q.avail_ring(), 6 + 2 * n),
        ("the used ring", q.used_ring(), 6 + 8 * n),
    ];
    parts
        .into_iter()
        .find(|&(_, gpa, len)| !GuestMemoryBackend::check_range(mem, GuestAddress(gpa), len))
        .map(|(what, _, _)| what)
}

/// A copy of a queue's driver-set configuration (virtio-queue's `Queue` is not `Clone`), as
/// the transport hands it to `activate`; also used by the balloon fuzz target.
pub fn copy_queue(q: &Queue) -> Queue {
    let mut c = Queue::new(q.max_size()).expect("same max size is valid");
    c.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    c.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    c.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    c.set_used_ring_address(lo, hi);
    c.set_ready(q.ready());
    c
}

/// What processing a queue notification did.
#[derive(Debug, PartialEq, Eq)]
pub enum Notified {
    /// The used ring changed: send the queue's interrupt.
    Used,
    /// Nothing to tell the driver.
    Quiet,
    /// The device hit an error it cannot continue from: set NEEDS_RESET and send a
    /// configuration interrupt.
    NeedsReset,
}

/// Lets the device process queue `queue` of an activated transport (`what` names the
/// transport in log lines). Errors the device can continue from are logged and dropped.
pub fn process_notify<D: VirtioDevice>(
    device: &Mutex<D>,
    queue: u16,
    mem: &GuestMemoryMmap,
    what: impl std::fmt::Display,
) -> Notified {
    let mut dev = device.lock().unwrap();
    match dev.process_queue(queue, mem) {
        Ok(true) => Notified::Used,
        Ok(false) => Notified::Quiet,
        Err(e) => {
            log::warn!("{what}: queue {queue}: {e}");
            if dev.needs_reset() {
                Notified::NeedsReset
            } else {
                Notified::Quiet
            }
        }
    }
}

/// Interrupt status bits with a wakeup for drivers that poll instead of taking interrupts
/// (the built-in guest blocks in `wait_event` through its wait hypercall).
#[derive(Default)]
pub struct InterruptStatus {
    bits: Mutex<u32>,
    wake: Condvar,
}

impl InterruptStatus {
    /// Sets `bits` and wakes waiters.
    pub fn raise(&self, bits: u32) {
        *self.bits.lock().unwrap() |= bits;
        self.wake.notify_all();
    }

    /// Clears `bits` (virtio-mmio `InterruptACK`).
    pub fn ack(&self, bits: u32) {
        *self.bits.lock().unwrap() &= !bits;
    }

    /// The pending bits.
    pub fn get(&self) -> u32 {
        *self.bits.lock().unwrap()
    }

    /// Returns the pending bits and clears them (virtio-pci ISR read).
    pub fn take(&self) -> u32 {
        std::mem::take(&mut *self.bits.lock().unwrap())
    }

    /// Blocks until a bit is pending or `timeout` passes; returns the pending bits.
    pub fn wait(&self, timeout: Duration) -> u32 {
        let guard = self.bits.lock().unwrap();
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |s| *s == 0)
            .unwrap();
        *guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;
    use crate::devices::balloon::BalloonDevice;
    use crate::memory::GuestRam;
    use balloon::BalloonOptions;
    use std::sync::Arc;
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK;

    const STATS_VQ: u32 = 1 << balloon::features::VIRTIO_BALLOON_F_STATS_VQ;
    const INDIRECT: u64 = 1 << balloon::features::VIRTIO_F_INDIRECT_DESC;
    const EVENT_IDX: u64 = 1 << balloon::features::VIRTIO_F_EVENT_IDX;

    fn balloon_with_stats() -> (BalloonDevice, Arc<GuestRam>) {
        let ram = Arc::new(GuestRam::new(&[RegionConfig::anon(1 << 20)]).unwrap());
        let opts = BalloonOptions {
            stats_polling_interval_s: 1,
            ..Default::default()
        };
        (BalloonDevice::new(opts, ram.clone()), ram)
    }

    fn write_features(t: &mut TransportCore, dev: &mut dyn VirtioDevice, sel: u32, v: u32) {
        t.drv_features_sel = sel;
        t.write_driver_features(dev, v);
    }

    /// Queues 0..n of 16 entries each at 4 KiB steps.
    fn set_up_queues(t: &mut TransportCore, n: u32) {
        for i in 0..n {
            t.queue_sel = i;
            t.set_queue_size(16);
            let base = 0x1_0000 + i * 0x1000;
            t.set_queue_addr(RingPart::Desc, Half::Low, base);
            t.set_queue_addr(RingPart::Avail, Half::Low, base + 0x400);
            t.set_queue_addr(RingPart::Used, Half::Low, base + 0x800);
            t.set_queue_ready(true);
        }
    }

    const SET_UP: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;

    #[test]
    fn a_rewritten_feature_word_replaces_the_old_one_in_the_device() {
        let (mut dev, ram) = balloon_with_stats();
        let mut t = TransportCore::new(&dev.queue_max_sizes());
        t.set_status(SET_UP, &mut dev, ram.memory());
        // The driver first accepts STATS_VQ, then takes it back.
        write_features(&mut t, &mut dev, 0, STATS_VQ);
        write_features(&mut t, &mut dev, 0, 0);
        write_features(&mut t, &mut dev, 1, 1); // VIRTIO_F_VERSION_1
        assert_eq!(t.driver_features, 1 << VIRTIO_F_VERSION_1);
        assert_eq!(dev.model.acked_features(), 1 << VIRTIO_F_VERSION_1);
        t.set_status(SET_UP | VIRTIO_CONFIG_S_FEATURES_OK, &mut dev, ram.memory());
        // Two queues, as the driver's features say: the device activates with them.
        set_up_queues(&mut t, 2);
        let s = SET_UP | VIRTIO_CONFIG_S_FEATURES_OK | DRIVER_OK;
        assert_eq!(
            t.set_status(s, &mut dev, ram.memory()),
            StatusChange::Activated
        );
        assert_eq!(dev.model.queue_layout().stats, None);
    }

    #[test]
    fn ring_features_are_never_offered_nor_kept() {
        let (mut dev, ram) = balloon_with_stats();
        let mut t = TransportCore::new(&dev.queue_max_sizes());
        t.set_status(SET_UP, &mut dev, ram.memory());
        let offered = u64::from(t.device_features_word(&dev))
            | u64::from({
                t.dev_features_sel = 1;
                t.device_features_word(&dev)
            }) << 32;
        assert_eq!(offered & (INDIRECT | EVENT_IDX), 0, "{offered:#x}");
        // A driver that accepts them anyway: dropped by the transport and the device, counted.
        write_features(
            &mut t,
            &mut dev,
            0,
            (INDIRECT | EVENT_IDX) as u32 | STATS_VQ,
        );
        write_features(&mut t, &mut dev, 1, 1);
        assert_eq!(t.driver_features, offered);
        assert_eq!(dev.model.acked_features(), offered);
        assert_eq!(t.driver_features_word(), 1);
        assert_eq!(dev.model.counters().unsupported_features_acked, 2);
    }
}
