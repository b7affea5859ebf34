//! The [`Balloon`] device: lifecycle, features, configuration space and host-side controls.
//!
//! This module owns the device state a transport sees (features, config space, activation,
//! reset) and the controls the VMM uses (target, stats polling interval, counters). Queue
//! processing lives in [`crate::queues`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use log::{info, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_model::DeviceModel;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use crate::backend::MemoryBackend;

use crate::config::{ConfigAccessError, ConfigSpace};
use crate::counters::BalloonCounters;
use crate::error::BalloonError;
use crate::features::{avail_features, QueueLayout, QUEUE_MAX_SIZE};
use crate::options::BalloonOptions;
use crate::ratelimit::{LogLimiter, DEFAULT_WARNINGS_PER_SEC};
use crate::stats::BalloonStats;

/// Balloon pages (4 KiB) per MiB.
pub const PAGES_PER_MIB: u32 = 256;

/// Logs a warning about guest input, subject to the device's rate limiter.
macro_rules! guest_warn {
    ($dev:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $dev.log_check() {
            if suppressed > 0 {
                log::warn!("balloon: {} similar warnings were suppressed", suppressed);
            }
            log::warn!($($arg)+);
        }
    };
}
pub(crate) use guest_warn;

/// A virtio-balloon device model (virtio 1.2 §5.5), independent of transport and hypervisor.
///
/// The transport drives it: feature negotiation ([`Balloon::avail_features`],
/// [`Balloon::ack_features`]), config space accesses, [`Balloon::activate`] with the queues the
/// driver set up, [`Balloon::process_queue`] on every queue notification, and
/// [`Balloon::reset`]. The VMM sets the target with [`Balloon::set_target_mib`] and requests
/// statistics with [`Balloon::trigger_stats_update`] every polling interval.
#[derive(Debug)]
pub struct Balloon {
    pub(crate) opts: BalloonOptions,
    pub(crate) avail_features: u64,
    pub(crate) acked_features: u64,
    pub(crate) config: ConfigSpace,
    pub(crate) config_generation: u32,
    pub(crate) queues: Vec<Queue>,
    pub(crate) activated: bool,
    pub(crate) needs_reset: bool,
    /// Head index of the stats buffer the device holds until it wants fresh statistics.
    pub(crate) stats_desc: Option<u16>,
    pub(crate) latest_stats: Option<BalloonStats>,
    /// When the device received [`Balloon::latest_stats`].
    pub(crate) stats_received_at: Option<SystemTime>,
    /// `actual` (pages) when the device received [`Balloon::latest_stats`].
    pub(crate) actual_at_stats: Option<u32>,
    pub(crate) counters: BalloonCounters,
    /// Config reads are `&self`, so their rejections are counted atomically.
    pub(crate) config_bad_reads: AtomicU64,
    pub(crate) log_limiter: Mutex<LogLimiter>,
}

impl Balloon {
    /// Creates a device with the target `opts.amount_mib`.
    pub fn new(opts: BalloonOptions) -> Self {
        let mut b = Balloon {
            avail_features: 0,
            acked_features: 0,
            config: ConfigSpace::default(),
            config_generation: 0,
            queues: Vec::new(),
            activated: false,
            needs_reset: false,
            stats_desc: None,
            latest_stats: None,
            stats_received_at: None,
            actual_at_stats: None,
            counters: BalloonCounters::default(),
            config_bad_reads: AtomicU64::new(0),
            log_limiter: Mutex::new(LogLimiter::new(DEFAULT_WARNINGS_PER_SEC)),
            opts,
        };
        b.update_avail_features();
        b.config.num_pages = mib_to_pages(b.opts.amount_mib);
        b
    }

    fn update_avail_features(&mut self) {
        self.avail_features = avail_features(
            self.opts.stats_polling_interval_s != 0,
            self.opts.deflate_on_oom,
            self.opts.free_page_reporting,
        );
    }

    /// The options the device was created with (with the current polling interval).
    pub fn options(&self) -> &BalloonOptions {
        &self.opts
    }

    /// Features negotiated so far.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Queue indices for the negotiated features.
    pub fn queue_layout(&self) -> QueueLayout {
        QueueLayout::for_features(self.acked_features)
    }

    /// Configuration generation; changes whenever the device changes the configuration space.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// Whether [`Balloon::activate`] succeeded and no reset happened since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The active queues, in index order (empty before activation).
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Sets the target; returns true if the config changed (the transport raises a config-change
    /// interrupt). Targets above `u32::MAX` pages are clamped.
    pub fn set_target_mib(&mut self, mib: u32) -> bool {
        let pages = mib_to_pages(mib);
        if pages == self.config.num_pages {
            return false;
        }
        self.config.num_pages = pages;
        self.opts.amount_mib = mib;
        self.config_generation = self.config_generation.wrapping_add(1);
        true
    }

    /// Target balloon size in 4 KiB pages (`num_pages`).
    pub fn target_pages(&self) -> u32 {
        self.config.num_pages
    }

    /// Balloon size the driver reports in 4 KiB pages (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.config.actual
    }

    /// Target balloon size in MiB (rounded down).
    pub fn target_mib(&self) -> u32 {
        self.config.num_pages / PAGES_PER_MIB
    }

    /// Balloon size the driver reports, in MiB (rounded down).
    pub fn actual_mib(&self) -> u32 {
        self.config.actual / PAGES_PER_MIB
    }

    /// Statistics polling interval in seconds (0: statistics disabled).
    pub fn stats_polling_interval(&self) -> u16 {
        self.opts.stats_polling_interval_s
    }

    /// Changes the statistics polling interval. Switching between 0 (disabled) and non-zero
    /// changes the offered features, so it is refused once the driver has acked features or the
    /// device is active (Firecracker refuses the same).
    pub fn set_stats_polling_interval(&mut self, s: u16) -> Result<(), BalloonError> {
        let from = self.opts.stats_polling_interval_s;
        if from == s {
            return Ok(());
        }
        if (from == 0) != (s == 0) && (self.activated || self.acked_features != 0) {
            return Err(BalloonError::StatsStateChange { from, to: s });
        }
        self.opts.stats_polling_interval_s = s;
        self.update_avail_features();
        Ok(())
    }

    /// The latest statistics the driver posted, if any since activation.
    pub fn latest_stats(&self) -> Option<BalloonStats> {
        self.latest_stats.clone()
    }

    /// When the device received [`Balloon::latest_stats`] (`None` before the first statistics
    /// since activation).
    pub fn stats_received_at(&self) -> Option<SystemTime> {
        self.stats_received_at
    }

    /// The balloon's `actual` (4 KiB pages) when [`Balloon::latest_stats`] arrived: the guest's
    /// figures describe its memory with that much in the balloon, so what the balloon took or
    /// gave since (`actual` now minus this) is not in them yet. `None` before the first
    /// statistics since activation.
    pub fn actual_pages_at_stats(&self) -> Option<u32> {
        self.actual_at_stats
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> BalloonCounters {
        let mut c = self.counters.clone();
        c.config_bad_accesses += self.config_bad_reads.load(Ordering::Relaxed);
        c.log_lines_suppressed = self.limiter().suppressed_total();
        c
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, LogLimiter> {
        // The limiter holds no invariant a panic could break.
        self.log_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a warning about guest input may be logged now (see [`LogLimiter::check`]).
    pub(crate) fn log_check(&self) -> Option<u64> {
        self.limiter().check(Instant::now())
    }

    /// Whether the device holds a stats buffer (waiting for [`Balloon::trigger_stats_update`]).
    pub fn holds_stats_buffer(&self) -> bool {
        self.stats_desc.is_some()
    }
}

impl DeviceModel for Balloon {
    type Error = BalloonError;
    type Backend = dyn MemoryBackend;

    /// virtio device type (5, balloon).
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    /// Features the device offers.
    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Records the features the driver accepts: the whole set as it stands (a transport passes
    /// both 32-bit words, not the word just written). Each call replaces the previous set, so a
    /// driver that rewrites its features before `FEATURES_OK` gets exactly its last choice and
    /// the queue layout never includes a queue it took back. Bits the device did not offer are
    /// dropped and counted. Ignored once activated.
    fn ack_features(&mut self, acked: u64) {
        if self.activated {
            guest_warn!(
                self,
                "balloon: driver acked features {acked:#x} after activation"
            );
            return;
        }
        let unsupported = acked & !self.avail_features;
        if unsupported != 0 {
            self.counters.unsupported_features_acked += u64::from(unsupported.count_ones());
            guest_warn!(
                self,
                "balloon: driver acked features {unsupported:#x} that were not offered"
            );
        }
        self.acked_features = acked & self.avail_features;
    }

    /// Maximum size of each queue the device may use with the features it offers (the transport
    /// exposes these as `QueueNumMax`). The queues actually used depend on the negotiated
    /// features: see [`Balloon::queue_layout`].
    fn queue_max_sizes(&self) -> Vec<u16> {
        let n = QueueLayout::for_features(self.avail_features).count();
        vec![QUEUE_MAX_SIZE; usize::from(n)]
    }

    /// Reads the configuration space. Bad offsets/lengths zero-fill `data` and are counted in
    /// [`BalloonCounters::config_bad_accesses`].
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if self.config.read(offset, data).is_err() {
            self.config_bad_reads.fetch_add(1, Ordering::Relaxed);
            guest_warn!(
                self,
                "balloon: config read at offset {offset} length {} out of range",
                data.len()
            );
        }
    }

    /// Writes the configuration space. Only `actual` is writable; anything else is ignored and
    /// counted.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let before = self.config.actual;
        match self.config.write(offset, data) {
            Ok(()) => {
                if self.config.actual != before {
                    info!(
                        "balloon: guest reports {} pages in the balloon (target {})",
                        self.config.actual, self.config.num_pages
                    );
                }
            }
            Err(e) => {
                self.counters.config_bad_accesses += 1;
                let why = match e {
                    ConfigAccessError::OutOfRange => "out of range",
                    ConfigAccessError::ReadOnlyField => "to a read-only field",
                };
                guest_warn!(
                    self,
                    "balloon: config write at offset {offset} length {} {why}",
                    data.len()
                );
            }
        }
    }

    /// Starts the device with the queues the driver set up, in queue index order. Queues past
    /// those the negotiated features need are ignored.
    fn activate(&mut self, mut queues: Vec<Queue>) -> Result<(), BalloonError> {
        if self.activated {
            return Err(BalloonError::AlreadyActivated);
        }
        let expected = usize::from(self.queue_layout().count());
        if queues.len() < expected {
            return Err(BalloonError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        if let Some(i) = queues[..expected].iter().position(|q| !q.ready()) {
            // `i < expected <= 4`.
            return Err(BalloonError::QueueNotReady(i as u16));
        }
        if queues[expected..].iter().any(|q| q.ready()) {
            warn!("balloon: driver set up queues beyond the negotiated features; ignoring them");
        }
        queues.truncate(expected);
        self.queues = queues;
        self.activated = true;
        Ok(())
    }

    /// Returns the device to its initial state (driver reset): forgets negotiated features,
    /// queues, the held stats buffer, the latest statistics and `actual`. The target and the
    /// counters are kept.
    fn reset(&mut self) {
        self.acked_features = 0;
        self.queues.clear();
        self.activated = false;
        self.needs_reset = false;
        self.stats_desc = None;
        self.latest_stats = None;
        self.stats_received_at = None;
        self.actual_at_stats = None;
        self.config.actual = 0;
    }

    /// Whether the device stopped after a driver protocol violation. The transport should set
    /// `DEVICE_NEEDS_RESET` in the device status and raise a configuration change interrupt.
    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Size of the configuration space.
    fn config_len(&self) -> u64 {
        crate::config::CONFIG_SPACE_SIZE
    }

    /// Processes all available descriptors of queue `index`: at most one queue size worth of
    /// chains per call (a driver that keeps adding buffers cannot keep the caller busy).
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        mem: &M,
        backend: &dyn MemoryBackend,
    ) -> Result<bool, BalloonError> {
        self.process_available(index, mem, backend)
    }
}

fn mib_to_pages(mib: u32) -> u32 {
    u32::try_from(u64::from(mib) * u64::from(PAGES_PER_MIB)).unwrap_or(u32::MAX)
}
