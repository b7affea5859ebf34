//! Working-set estimate per VM and region: which guest memory was used over the last window.
//!
//! This module owns the estimate behind `GET /memory/working-set`, `/metrics` and the
//! coldest-first order of reclaim ([`crate::control::reclaim`]). The kernel's ways to see it, and what
//! this host offers:
//! - **DAMON** (`/sys/kernel/mm/damon/admin`) sees reads and writes (it clears accessed bits
//!   through KVM's MMU notifiers), but a kdamond that someone else runs cannot be shared and
//!   none can be added while one runs (`EBUSY`); memvisor detects that and names it. memvisor
//!   does not drive DAMON itself yet;
//! - **idle page tracking** and **soft-dirty** bits are compiled out of some kernels
//!   (`CONFIG_IDLE_PAGE_TRACKING`, `CONFIG_MEM_SOFT_DIRTY`; both are here);
//! - **KVM's dirty log** (`KVM_MEM_LOG_DIRTY_PAGES`, `KVM_GET_DIRTY_LOG`), what memvisor uses:
//!   every window (2 s) the `api-reclaim` thread fetches and clears each memslot's bitmap of
//!   pages the guest wrote. It sees **guest writes only**: memory a guest only reads looks
//!   cold. While it runs KVM maps guest memory with 4 KiB pages and the first write to each
//!   page per window costs a KVM fault, so tracking starts only on the first request that needs
//!   it (`GET /memory/working-set`, a reclaim, a resident limit); the first estimate is ready one
//!   window later.

use crate::memory::GuestRam;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one window lasts.
pub const WINDOW: Duration = Duration::from_secs(2);
const PAGE: u64 = 4096;
const DAMON_ADMIN: &str = "/sys/kernel/mm/damon/admin/kdamonds";
/// Chunk size of the coldest-first order (that of reclaim's `madvise` calls).
const CHUNK: u64 = crate::memory::reclaim::CHUNK;

/// The estimate of one region.
#[derive(Clone, Debug, Serialize)]
pub struct RegionWorkingSet {
    /// Region index.
    pub index: usize,
    /// Configured size.
    pub configured_bytes: u64,
    /// Bytes used (written) during the last window; `null` before the first one ends.
    pub working_set_bytes: Option<u64>,
}

/// `GET /memory/working-set`.
#[derive(Clone, Debug, Serialize)]
pub struct WorkingSet {
    /// `kvm-dirty-log`, or `none` when no method works here.
    pub method: String,
    /// Why DAMON was not used, and what the method cannot see.
    pub notes: Vec<String>,
    /// Whether sampling is running.
    pub tracking: bool,
    /// Length of a window.
    pub window_seconds: f64,
    /// Seconds since the last window ended (`null` before the first).
    pub age_seconds: Option<f64>,
    /// Sum over the regions; `null` before the first window ends.
    pub working_set_bytes: Option<u64>,
    /// Per region.
    pub regions: Vec<RegionWorkingSet>,
}

struct Window {
    ended: Instant,
    /// Per region: written pages per [`CHUNK`].
    hot_pages: Vec<Vec<u32>>,
}

/// One VM's working-set tracker.
pub struct Tracker {
    ram: Arc<GuestRam>,
    vm: Option<Arc<VmFd>>,
    /// Why tracking could not start, once it failed.
    failed: Mutex<Option<String>>,
    damon_note: String,
    running: AtomicBool,
    started: Mutex<Option<Instant>>,
    last: Mutex<Option<Window>>,
}

/// Why DAMON cannot be used here (it always can't, as long as memvisor does not drive it).
fn damon_note() -> String {
    let nr = std::fs::read_to_string(format!("{DAMON_ADMIN}/nr_kdamonds"));
    let Ok(nr) = nr else {
        return "DAMON: no /sys/kernel/mm/damon/admin here (CONFIG_DAMON_SYSFS off)".into();
    };
    let n: usize = nr.trim().parse().unwrap_or(0);
    let running: Vec<String> = (0..n)
        .filter(|i| {
            std::fs::read_to_string(format!("{DAMON_ADMIN}/{i}/state"))
                .is_ok_and(|s| s.trim() == "on")
        })
        .map(|i| {
            let ops = std::fs::read_to_string(format!("{DAMON_ADMIN}/{i}/contexts/0/operations"))
                .unwrap_or_default();
            format!("kdamond {i} ({})", ops.trim())
        })
        .collect();
    if running.is_empty() {
        "DAMON: available but not driven by memvisor yet".into()
    } else {
        format!(
            "DAMON busy: {} run(s) for someone else, and no kdamond can be added while one runs \
             (EBUSY)",
            running.join(", ")
        )
    }
}

impl Tracker {
    /// A tracker of `ram` through the VM's dirty log (`vm`: `None` tracks nothing).
    pub fn new(ram: Arc<GuestRam>, vm: Option<Arc<VmFd>>) -> Self {
        Tracker {
            ram,
            vm,
            failed: Mutex::new(None),
            damon_note: damon_note(),
            running: AtomicBool::new(false),
            started: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// Starts dirty logging on every memslot (idempotent).
    pub fn start(&self) {
        let Some(vm) = &self.vm else { return };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        for (slot, s) in self.ram.slots().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: KVM_MEM_LOG_DIRTY_PAGES,
                guest_phys_addr: s.gpa,
                memory_size: s.len,
                userspace_addr: s.host_addr,
            };
            // SAFETY: the same slot, range and mapping the VM was created with (owned by
            // `ram`, alive as long as the VM); only the flags change.
            if let Err(e) = unsafe { vm.set_user_memory_region(region) } {
                let msg = format!("KVM_SET_USER_MEMORY_REGION (dirty logging on slot {slot}): {e}");
                log::warn!("working set: {msg}");
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                return;
            }
        }
        // The first window starts clean.
        let _ = self.read_dirty();
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn tracking(&self) -> bool {
        self.running.load(Ordering::Acquire)
            && self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
    }

    /// Ends the window when it is due (called every ~0.2 s by the `api-reclaim` thread).
    pub fn tick(&self) {
        if !self.tracking() {
            return;
        }
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t0) = *started else { return };
        if t0.elapsed() < WINDOW {
            return;
        }
        let hot = self.read_dirty();
        *started = Some(Instant::now());
        if let Some(hot_pages) = hot {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Window {
                ended: Instant::now(),
                hot_pages,
            });
        }
    }

    /// Per region, pages written per chunk since the last call (fetching clears the log).
    fn read_dirty(&self) -> Option<Vec<Vec<u32>>> {
        let vm = self.vm.as_ref()?;
        let mut out: Vec<Vec<u32>> = self
            .ram
            .regions()
            .iter()
            .map(|r| vec![0; r.len().div_ceil(CHUNK) as usize])
            .collect();
        for (slot, s) in self.ram.slots().iter().enumerate() {
            let bitmap = match vm.get_dirty_log(slot as u32, s.len as usize) {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("working set: KVM_GET_DIRTY_LOG of slot {slot}: {e}");
                    return None;
                }
            };
            let Some((ri, r)) = self
                .ram
                .regions()
                .iter()
                .enumerate()
                .find(|(_, r)| r.offset_of(s.gpa).is_some())
            else {
                continue;
            };
            let base = r.offset_of(s.gpa).expect("inside");
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    let off = base + (w as u64 * 64 + b) * PAGE;
                    if let Some(c) = out[ri].get_mut((off / CHUNK) as usize) {
                        *c += 1;
                    }
                }
            }
        }
        Some(out)
    }

    /// Fetches and clears the dirty log once, as the end of a window does, and says how long
    /// that took: the estimate's CPU cost per window (`memvisor bench swap`). Starts tracking.
    pub fn scan_cost(&self) -> Option<Duration> {
        self.start();
        let t = Instant::now();
        self.read_dirty()?;
        Some(t.elapsed())
    }

    /// The estimate when tracking runs (without starting it: for `/metrics` and reports).
    pub fn peek(&self) -> Option<WorkingSet> {
        self.tracking().then(|| self.read_estimate())
    }

    /// The estimate (starts tracking if it was not running).
    pub fn estimate(&self) -> WorkingSet {
        self.start();
        self.read_estimate()
    }

    fn read_estimate(&self) -> WorkingSet {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let regions: Vec<RegionWorkingSet> = self
            .ram
            .regions()
            .iter()
            .enumerate()
            .map(|(i, r)| RegionWorkingSet {
                index: r.index,
                configured_bytes: r.config.size,
                working_set_bytes: last.as_ref().map(|w| {
                    w.hot_pages
                        .get(i)
                        .map(|c| c.iter().map(|n| *n as u64).sum::<u64>() * PAGE)
                        .unwrap_or(0)
                }),
            })
            .collect();
        let mut notes = vec![self.damon_note.clone()];
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let method = match (&self.vm, failed) {
            (Some(_), None) => {
                notes.push(
                    "kvm-dirty-log sees guest writes only: guest memory that is only read \
                     counts as cold"
                        .into(),
                );
                "kvm-dirty-log"
            }
            (_, Some(why)) => {
                notes.push(format!("no estimate: {why}"));
                "none"
            }
            (None, None) => {
                notes.push("no estimate: this VM has no KVM dirty log".into());
                "none"
            }
        };
        WorkingSet {
            method: method.into(),
            notes,
            tracking: self.tracking(),
            window_seconds: WINDOW.as_secs_f64(),
            age_seconds: last.as_ref().map(|w| w.ended.elapsed().as_secs_f64()),
            working_set_bytes: last
                .as_ref()
                .map(|_| regions.iter().filter_map(|r| r.working_set_bytes).sum()),
            regions,
        }
    }

    /// Guest-physical ranges of every chunk, coldest (fewest pages written in the last window)
    /// first; `None` before the first window ends.
    pub fn coldest_first(&self) -> Option<Vec<(u64, u64)>> {
        let chunks = self.ranked_chunks()?;
        Some(chunks.into_iter().map(|(_, g, l)| (g, l)).collect())
    }

    /// Guest-physical ranges of the chunks outside the working set (no page written in the
    /// last window), coldest-first order; `None` before the first window ends.
    pub fn cold_chunks(&self) -> Option<Vec<(u64, u64)>> {
        let chunks = self.ranked_chunks()?;
        Some(
            chunks
                .into_iter()
                .take_while(|(n, _, _)| *n == 0)
                .map(|(_, g, l)| (g, l))
                .collect(),
        )
    }

    /// `(pages written, gpa, len)` of every chunk, coldest first, top of guest RAM first among
    /// equals; starts tracking; `None` before the first window ends.
    fn ranked_chunks(&self) -> Option<Vec<(u32, u64, u64)>> {
        self.start();
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let w = last.as_ref()?;
        let mut chunks: Vec<(u32, u64, u64)> = Vec::new();
        for (r, hot) in self.ram.regions().iter().zip(&w.hot_pages) {
            for e in &r.extents {
                let mut off = e.offset / CHUNK * CHUNK;
                while off < e.offset + e.len {
                    let lo = off.max(e.offset);
                    let hi = (off + CHUNK).min(e.offset + e.len);
                    let n = hot.get((off / CHUNK) as usize).copied().unwrap_or(0);
                    chunks.push((n, e.gpa + (lo - e.offset), hi - lo));
                    off += CHUNK;
                }
            }
        }
        chunks.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        Some(chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;

    #[test]
    fn chunks_come_coldest_first_and_estimates_sum_written_pages() {
        let ram = Arc::new(
            GuestRam::new(&[RegionConfig::anon(6 << 20), RegionConfig::anon(4 << 20)]).unwrap(),
        );
        let t = Tracker::new(ram, None);
        assert!(t.coldest_first().is_none(), "no window yet");
        assert!(t.cold_chunks().is_none(), "no window yet");
        assert_eq!(t.estimate().method, "none");
        *t.last.lock().unwrap() = Some(Window {
            ended: Instant::now(),
            hot_pages: vec![vec![512, 0, 3], vec![0, 7]],
        });
        let order = t.coldest_first().unwrap();
        assert_eq!(
            order,
            vec![
                (6 << 20, 2 << 20),
                (2 << 20, 2 << 20),
                (4 << 20, 2 << 20),
                (8 << 20, 2 << 20),
                (0, 2 << 20),
            ],
            "cold chunks (top down among equals), then the least written"
        );
        assert_eq!(
            t.cold_chunks().unwrap(),
            vec![(6 << 20, 2 << 20), (2 << 20, 2 << 20)],
            "only the chunks nothing was written to"
        );
        let ws = t.estimate();
        assert_eq!(ws.working_set_bytes, Some((512 + 3 + 7) * PAGE));
        assert_eq!(ws.regions[1].working_set_bytes, Some(7 * PAGE));
    }
}
