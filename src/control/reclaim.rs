//! Per-VM reclaim to host swap: what `PUT /memory/reclaim`, `PATCH /memory` and
//! `GET /memory/reclaim` do, and the standing resident limit.
//!
//! This module owns one VM's [`Reclaimer`]: one reclaim at a time (an API request or the limit),
//! the standing limit on resident guest RAM (`--memory ...,resident-limit=SIZE`, `PATCH /memory
//! {"resident_limit_mib": N}`) and the `api-reclaim` thread that enforces it, and the counters
//! the reports show (reclaims, bytes paged out, the VMM's major faults — swap-ins of guest pages
//! are major faults of its vCPU threads). Reclaim takes the coldest memory first by the
//! working-set estimate ([`crate::vmm::working_set`]) once it has one. The `madvise` calls are the memory module's
//! ([`GuestRam::page_out_to`]); whether the host has swap is [`crate::host::swap`]'s.

use crate::memory::{GuestRam, MemoryError, ReclaimOutcome};
use crate::seccomp::ThreadFilter;
use crate::vmm::working_set::Tracker;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the limit thread compares resident guest RAM with the limit.
pub const LIMIT_POLL: Duration = Duration::from_millis(200);

/// Why a reclaim was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    /// A target the VM cannot have.
    #[error(
        "target {target_mib} MiB is above the guest's configured RAM ({ram_mib} MiB); give a \
         target between 0 and {ram_mib}"
    )]
    AboveRam {
        /// The target asked for.
        target_mib: u64,
        /// Configured guest RAM.
        ram_mib: u64,
    },
    /// The memory module refused or failed (no swap, only hugetlb regions, madvise failed).
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Figures of `GET /memory/reclaim`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReclaimStatus {
    /// The standing limit on resident guest RAM, if any.
    pub resident_limit_bytes: Option<u64>,
    /// Resident guest RAM now (`mincore`).
    pub resident_bytes: u64,
    /// Reclaims done (API requests and the limit).
    pub reclaims: u64,
    /// Of those, the ones the limit started.
    pub limit_reclaims: u64,
    /// Guest RAM paged out so far.
    pub paged_out_bytes_total: u64,
    /// Major page faults of the VMM process (`/proc/self/stat`): swap-ins of guest pages
    /// (and of anything else of the VMM's that was swapped out).
    pub major_faults: u64,
    /// What the last reclaim did.
    pub last: Option<ReclaimOutcome>,
    /// The last error of the limit thread (cleared by its next success).
    pub limit_error: Option<String>,
}

/// One VM's reclaim state.
pub struct Reclaimer {
    ram: Arc<GuestRam>,
    /// 0: no limit.
    limit: AtomicU64,
    one_at_a_time: Mutex<()>,
    last: Mutex<Option<ReclaimOutcome>>,
    limit_error: Mutex<Option<String>>,
    reclaims: AtomicU64,
    limit_reclaims: AtomicU64,
    paged_out: AtomicU64,
    /// The working-set estimate that orders reclaim coldest first.
    tracker: Option<Arc<Tracker>>,
}

pub use crate::report::overcommit::major_faults;

impl Reclaimer {
    /// A reclaimer for `ram` with the standing `limit` (bytes), if any, taking the coldest
    /// memory first by `tracker`'s estimate when there is one.
    pub fn new(ram: Arc<GuestRam>, limit: Option<u64>, tracker: Option<Arc<Tracker>>) -> Self {
        if let (Some(t), Some(_)) = (&tracker, limit) {
            t.start();
        }
        Reclaimer {
            ram,
            limit: AtomicU64::new(limit.unwrap_or(0)),
            one_at_a_time: Mutex::new(()),
            last: Mutex::new(None),
            limit_error: Mutex::new(None),
            reclaims: AtomicU64::new(0),
            limit_reclaims: AtomicU64::new(0),
            paged_out: AtomicU64::new(0),
            tracker,
        }
    }

    /// The working-set tracker, if any.
    pub fn tracker(&self) -> Option<&Arc<Tracker>> {
        self.tracker.as_ref()
    }

    /// Pages guest memory out until at most `target` bytes are resident.
    pub fn reclaim_to(&self, target: u64) -> Result<ReclaimOutcome, ReclaimError> {
        self.reclaim(target, false)
    }

    fn reclaim(&self, target: u64, by_limit: bool) -> Result<ReclaimOutcome, ReclaimError> {
        let ram = self.ram.size();
        if target > ram {
            return Err(ReclaimError::AboveRam {
                target_mib: target >> 20,
                ram_mib: ram >> 20,
            });
        }
        let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        let swap_active = crate::host::swap::active()
            .map(|d| !d.is_empty())
            .unwrap_or(false);
        let order = self.tracker.as_ref().and_then(|t| t.coldest_first());
        let out = self
            .ram
            .page_out_to(target, order.as_deref(), swap_active)?;
        self.reclaims.fetch_add(1, Ordering::Relaxed);
        if by_limit {
            self.limit_reclaims.fetch_add(1, Ordering::Relaxed);
        }
        self.paged_out
            .fetch_add(out.paged_out_bytes, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(out.clone());
        Ok(out)
    }

    /// Sets (bytes) or clears (`None`) the standing limit; refuses one above guest RAM.
    pub fn set_limit(&self, limit: Option<u64>) -> Result<(), ReclaimError> {
        let ram = self.ram.size();
        if let Some(l) = limit {
            if l > ram {
                return Err(ReclaimError::AboveRam {
                    target_mib: l >> 20,
                    ram_mib: ram >> 20,
                });
            }
        }
        self.limit.store(limit.unwrap_or(0), Ordering::Release);
        if let (Some(t), Some(_)) = (&self.tracker, limit) {
            t.start();
        }
        Ok(())
    }

    /// The standing limit, if any.
    pub fn limit(&self) -> Option<u64> {
        Some(self.limit.load(Ordering::Acquire)).filter(|l| *l != 0)
    }

    /// The figures of `GET /memory/reclaim`.
    pub fn status(&self) -> ReclaimStatus {
        ReclaimStatus {
            resident_limit_bytes: self.limit(),
            resident_bytes: self.ram.resident_bytes().iter().sum(),
            reclaims: self.reclaims.load(Ordering::Relaxed),
            limit_reclaims: self.limit_reclaims.load(Ordering::Relaxed),
            paged_out_bytes_total: self.paged_out.load(Ordering::Relaxed),
            major_faults: major_faults(),
            last: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            limit_error: self
                .limit_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// One tick of the `api-reclaim` thread: the working-set window, then the limit.
    pub fn tick(&self) {
        if let Some(t) = &self.tracker {
            t.tick();
        }
        self.enforce_limit();
    }

    /// One check of the limit: reclaims to it when resident guest RAM has grown past it.
    pub fn enforce_limit(&self) {
        let Some(limit) = self.limit() else {
            return;
        };
        let resident: u64 = self.ram.resident_bytes().iter().sum();
        if resident <= limit {
            return;
        }
        let result = self.reclaim(limit, true);
        let mut err = self.limit_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => *err = None,
            Err(e) => {
                if err.is_none() {
                    log::warn!("resident limit: {e}");
                }
                *err = Some(e.to_string());
            }
        }
    }
}

/// The `api-reclaim` thread: ends working-set windows and checks the standing limit every
/// [`LIMIT_POLL`]; stops on drop.
pub struct LimitThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LimitThread {
    /// Starts the thread under `filter` (the API's allow-list: it carries out what `PATCH
    /// /memory` asked for).
    pub fn start(reclaimer: Arc<Reclaimer>, filter: ThreadFilter) -> LimitThread {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("api-reclaim".into())
            .spawn(move || {
                if !filter.apply_or_log() {
                    return;
                }
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(LIMIT_POLL);
                    if !flag.load(Ordering::Acquire) {
                        reclaimer.tick();
                    }
                }
            })
            .map_err(|e| log::warn!("no resident-limit thread: {e}"))
            .ok();
        LimitThread { stop, thread }
    }
}

impl Drop for LimitThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;

    #[test]
    fn targets_and_limits_above_ram_are_refused() {
        let ram = Arc::new(GuestRam::new(&[RegionConfig::anon(8 << 20)]).unwrap());
        let r = Reclaimer::new(ram, None, None);
        let e = r.reclaim_to(9 << 20).unwrap_err().to_string();
        assert!(
            e.contains("above the guest's configured RAM (8 MiB)"),
            "{e}"
        );
        assert!(r.set_limit(Some(9 << 20)).is_err());
        assert_eq!(r.limit(), None);
        r.set_limit(Some(4 << 20)).unwrap();
        assert_eq!(r.limit(), Some(4 << 20));
        r.set_limit(None).unwrap();
        assert_eq!(r.limit(), None);
    }
}
