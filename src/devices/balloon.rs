//! The virtio-balloon device (the `balloon` crate's model) wired to guest memory: inflated and
//! reported ranges are discarded through the memory module, deflated ranges reclaimed; and its
//! events on the device thread ([`BalloonEvents`]: queues, commands, the statistics timer).

use super::event_thread::DeviceThreadError;
use super::queue_events::{watch, LinkEvent, LinkEvents, FIRST_OWN_DATA};
use super::virtio::ModelDevice;
use crate::memory::GuestRam;
use balloon::{Balloon, BalloonOptions, MemoryBackend};
use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::timerfd::TimerFd;

/// The balloon's state as the overcommit report needs it (`crate::report::overcommit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonFigures {
    /// Target size in bytes.
    pub target_bytes: u64,
    /// Bytes the guest has handed to the balloon.
    pub actual_bytes: u64,
}

/// Guest memory as the balloon sees it.
pub struct RamBackend {
    ram: Arc<GuestRam>,
    /// Bytes the host really got back (whole huge pages only on hugetlb).
    pub released: AtomicU64,
    timing: std::sync::Mutex<DiscardTiming>,
}

/// How long the device spent in discard calls (for `memvisor bench balloon`'s account of where
/// the time goes).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardTiming {
    /// Discard calls made (one per merged range).
    pub calls: u64,
    /// Time spent inside them.
    pub busy: std::time::Duration,
    /// CPU time the calling thread used inside them (less than `busy` when it waited for a
    /// CPU or a lock).
    pub cpu: std::time::Duration,
    /// Time inside the first of them.
    pub first_call: std::time::Duration,
    /// When the first of them started.
    pub first_start: Option<std::time::Instant>,
    /// When the last of them ended.
    pub last_end: Option<std::time::Instant>,
}

impl MemoryBackend for RamBackend {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.ram.is_ram(gpa, len)
    }

    fn discard(&self, gpa: u64, len: u64) -> Result<u64, String> {
        let cpu = || crate::host::cpus::thread_cpu_time().unwrap_or_default();
        let (t0, c0) = (std::time::Instant::now(), cpu());
        let out = self.ram.discard(gpa, len).map_err(|e| e.to_string());
        let (t1, c1) = (std::time::Instant::now(), cpu());
        {
            let mut t = self.timing.lock().unwrap();
            if t.calls == 0 {
                t.first_call = t1 - t0;
            }
            t.calls += 1;
            t.busy += t1 - t0;
            t.cpu += c1.saturating_sub(c0);
            t.first_start.get_or_insert(t0);
            t.last_end = Some(t1);
        }
        let out = out?;
        self.released.fetch_add(out.released, Ordering::Relaxed);
        Ok(out.released)
    }

    fn reclaim(&self, gpa: u64, len: u64) -> Result<(), String> {
        self.ram.reclaim(gpa, len, false).map_err(|e| e.to_string())
    }
}

/// The balloon device with its memory backend.
pub struct BalloonDevice {
    /// The device model.
    pub model: Balloon,
    backend: RamBackend,
}

impl BalloonDevice {
    /// A balloon over `ram`.
    pub fn new(opts: BalloonOptions, ram: Arc<GuestRam>) -> Self {
        BalloonDevice {
            model: Balloon::new(opts),
            backend: RamBackend {
                ram,
                released: AtomicU64::new(0),
                timing: Default::default(),
            },
        }
    }

    /// Bytes returned to the host so far.
    pub fn released_bytes(&self) -> u64 {
        self.backend.released.load(Ordering::Relaxed)
    }

    /// The discard timing since the last call (and starts a new account).
    pub fn take_discard_timing(&self) -> DiscardTiming {
        std::mem::take(&mut *self.backend.timing.lock().unwrap())
    }

    /// Target and actual size, for the overcommit report.
    pub fn figures(&self) -> BalloonFigures {
        BalloonFigures {
            target_bytes: self.model.target_pages() as u64 * 4096,
            actual_bytes: self.model.actual_pages() as u64 * 4096,
        }
    }
}

impl ModelDevice for BalloonDevice {
    type Model = Balloon;
    fn model(&self) -> &Balloon {
        &self.model
    }
    fn model_and_backend(&mut self) -> (&mut Balloon, &(dyn MemoryBackend + 'static)) {
        (&mut self.model, &self.backend)
    }
}

/// The balloon behind whichever transport the VM uses: virtio-mmio for the built-in guest,
/// virtio-pci for Linux guests. The API and the device event thread use it the same way.
#[derive(Clone)]
pub enum BalloonHandle {
    /// virtio-mmio.
    Mmio(Arc<super::virtio_mmio::MmioTransport<BalloonDevice>>),
    /// virtio-pci.
    Pci(Arc<super::pci::VirtioPciDevice<BalloonDevice>>),
}

impl BalloonHandle {
    /// Runs `f` on the device; when it returns true the configuration changed and the
    /// transport tells the driver (configuration generation and interrupt).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut BalloonDevice) -> (R, bool)) -> R {
        match self {
            BalloonHandle::Mmio(t) => t.with_device(f),
            BalloonHandle::Pci(t) => t.with_device(f),
        }
    }

    /// Runs `f` on the device; when it returns `Some(queue)` that queue's used ring changed
    /// and the transport interrupts the driver.
    pub fn with_device_used<R>(&self, f: impl FnOnce(&mut BalloonDevice) -> (R, Option<u16>)) -> R {
        match self {
            BalloonHandle::Mmio(t) => t.with_device_used(f),
            BalloonHandle::Pci(t) => t.with_device_used(f),
        }
    }

    /// Target and actual size, for the overcommit report.
    pub fn figures(&self) -> BalloonFigures {
        self.with_device(|d| (d.figures(), false))
    }

    /// The link to the device event thread, once attached.
    pub fn link(&self) -> Option<&Arc<super::events::DeviceLink>> {
        match self {
            BalloonHandle::Mmio(t) => t.link(),
            BalloonHandle::Pci(t) => t.link(),
        }
    }

    /// As [`BalloonHandle::with_device`], run on the device event thread when there is one
    /// (a command from the API), so that the change is ordered with the device's own work and
    /// the thread sees it at once (e.g. a new statistics interval re-arms its timer).
    pub fn command<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut BalloonDevice) -> (R, bool) + Send + 'static,
    ) -> Result<R, super::events::DeviceThreadGone> {
        match self.link() {
            Some(link) => {
                let this = self.clone();
                link.run(move || this.with_device(f))
            }
            None => Ok(self.with_device(f)),
        }
    }

    /// The device event thread saw queue `queue`'s eventfd.
    pub fn process_event(&self, queue: u16, ram: &GuestRam) {
        match self {
            BalloonHandle::Mmio(t) => t.process_event(queue, ram.memory()),
            BalloonHandle::Pci(t) => t.process_event(queue),
        }
    }

    /// Which transport: "virtio-mmio" or "virtio-pci".
    pub fn transport(&self) -> &'static str {
        match self {
            BalloonHandle::Mmio(_) => "virtio-mmio",
            BalloonHandle::Pci(_) => "virtio-pci",
        }
    }
}

/// The balloon's events on the device thread: its queues and commands (a
/// [`LinkEvents`]) and the statistics timer.
pub struct BalloonEvents {
    balloon: BalloonHandle,
    events: LinkEvents,
    ram: Arc<GuestRam>,
    timer: TimerFd,
    /// The statistics interval the timer is armed for (0: disarmed).
    interval_s: u16,
}

/// Event data of the statistics timer.
const DATA_TIMER: u32 = FIRST_OWN_DATA;

impl BalloonEvents {
    /// Serves `balloon` through its link (attached to its transport before), with guest
    /// memory `ram`.
    pub fn new(balloon: BalloonHandle, ram: Arc<GuestRam>) -> Result<Self, DeviceThreadError> {
        let link = balloon
            .link()
            .cloned()
            .ok_or(DeviceThreadError::NotAttached)?;
        let timer = TimerFd::new().map_err(|e| {
            DeviceThreadError::Descriptors(std::io::Error::from_raw_os_error(e.errno()))
        })?;
        Ok(BalloonEvents {
            balloon,
            events: LinkEvents::new(link)?,
            ram,
            timer,
            interval_s: 0,
        })
    }

    /// Re-arms the statistics timer if the device's interval changed.
    fn follow_interval(&mut self) {
        let iv = self
            .balloon
            .with_device(|d| (d.model.stats_polling_interval(), false));
        if iv == self.interval_s {
            return;
        }
        self.interval_s = iv;
        let armed = if iv == 0 {
            self.timer.clear()
        } else {
            let period = Duration::from_secs(iv.into());
            self.timer.reset(period, Some(period))
        };
        if let Err(e) = armed {
            log::warn!("balloon: statistics timer not (re)armed: {e}");
        }
    }

    /// The statistics period elapsed: give the held buffer back so the guest sends fresh
    /// statistics.
    fn stats_tick(&mut self) {
        let _ = self.timer.wait();
        let mem = self.ram.memory();
        self.balloon
            .with_device_used(|d| match d.model.trigger_stats_update(mem) {
                Ok(returned) => ((), d.model.queue_layout().stats.filter(|_| returned)),
                Err(e) => {
                    log::warn!("balloon: statistics request failed: {e}");
                    ((), None)
                }
            });
    }
}

impl MutEventSubscriber for BalloonEvents {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.init(ops);
        watch(ops, &self.timer, DATA_TIMER);
        self.follow_interval();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match self.events.handle(&events) {
            LinkEvent::Queue(q) => self.balloon.process_event(q, &self.ram),
            LinkEvent::Own(DATA_TIMER) => {
                self.stats_tick();
                self.follow_interval();
            }
            // Commands may have changed the interval.
            LinkEvent::Done | LinkEvent::Own(_) => self.follow_interval(),
        }
    }
}
