//! In-VMM swap (crosvm's "vmm-swap"): guest RAM written to a per-VM file, dropped from host
//! RAM and served back page by page through userfaultfd, for hosts without swap.
//!
//! [`GuestRam::swap_out`] (the caller makes sure nothing writes guest memory meanwhile: the
//! control layer pauses the vCPUs and holds the balloon device):
//! 1. finds the backed pages of every region (`mincore`; host pages, 4 KiB or huge);
//! 2. creates the swap file ([`SwapFile`]: fresh, sparse, on a disk filesystem that punches
//!    holes and has room for them), where region `i` starts at the sum of the sizes of the
//!    regions before it and a page sits at its offset in its region;
//! 3. writes every backed page, then `fdatasync` and evicts the file from the page cache.
//!    A write error (disk full) removes the file and drops nothing;
//! 4. only then drops the pages (`MADV_DONTNEED`; a hole punched in the memfd or hugetlbfs
//!    file first) and registers the regions with a userfaultfd whose handler thread
//!    (`uffd-handler`, the `uffd` crate's with a [`uffd::PageSource::Swap`] source) serves
//!    each missing page from the file, a page that was not in the file as zeros. If the
//!    registration fails the pages are read back from the file before the error is returned.
//!
//! [`GuestRam::swap_in`] has the handler bring every page still in the file back
//! ([`uffd::UffdHandler::fill_all`]; no pause needed: it runs between the faults it serves),
//! unregisters the regions and removes the file.
//!
//! Balloon discards ([`GuestRam::discard`]) of swapped-out memory punch the same range out
//! of the swap file (its space is freed, and a later fault reads zeros), and the handler,
//! told by `UFFD_EVENT_REMOVE`, serves those pages as zeros from then on.
//!
//! Regions served through userfaultfd already (`backend=uffd`) cannot be registered again:
//! a VM with one is refused. A request may name the guest-physical ranges to take
//! ([`SwapOutRequest::only`]): `cold_only` passes those outside the working set
//! ([`crate::vmm::working_set`], through the control layer); backed pages elsewhere stay
//! resident and are never faulted on.

use super::swap_file::SwapFile;
use super::{GuestRam, MemoryError};
use crate::config::Size;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a swap-in may take to bring every page back (16 GiB at ~30 MiB/s).
pub const SWAP_IN_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a swap-out or swap-in was refused or failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// Already swapped out.
    #[error("guest memory is already swapped out to {path}; swap it in first (memvisor memory swap-in)", path = path.display())]
    AlreadySwappedOut {
        /// The swap file.
        path: PathBuf,
    },
    /// Nothing is swapped out.
    #[error("guest memory is not swapped out; nothing to swap in")]
    NotSwappedOut,
    /// Another swap-out or swap-in is running.
    #[error("a {0} is running; wait for it to finish")]
    Busy(&'static str),
    /// `cold_only` before the first working-set window ended.
    #[error("--cold-only needs the working-set estimate, which is not ready yet: tracking has started now and the first estimate is ready after one window ({window_seconds} s); retry then, or swap out all guest memory (without --cold-only)")]
    NoEstimateYet {
        /// Length of a window, seconds.
        window_seconds: f64,
    },
    /// `cold_only` where no working-set estimate can be made.
    #[error("--cold-only needs a working-set estimate, and this VM has none ({0}); swap out all guest memory (without --cold-only)")]
    NoEstimate(String),
    /// A region is served through userfaultfd already.
    #[error("memory region {region} is a backend=uffd region {how}: a range can be registered with one userfaultfd only, so this VM cannot use the in-VMM swap; start it with anonymous, memfd or hugetlbfs memory")]
    UffdRegion {
        /// Region index.
        region: usize,
        /// Who serves it.
        how: &'static str,
    },
    /// The swap file exists already.
    #[error("{path} exists; the in-VMM swap only writes a file it creates: remove it or give another --file", path = path.display())]
    FileExists {
        /// The path.
        path: PathBuf,
    },
    /// The swap file could not be created.
    #[error("cannot create the swap file {path}: {source}; give a writable path on a local disk", path = path.display())]
    Create {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The filesystem keeps files in memory.
    #[error("{path} is on {fs}, which keeps files in memory: swapping out to it would free nothing; give a path on a disk filesystem (e.g. under /var/tmp)", path = path.display())]
    InMemoryFs {
        /// The path.
        path: PathBuf,
        /// Filesystem name.
        fs: &'static str,
    },
    /// Not enough free space.
    #[error("the filesystem of {path} has {} free but swapping out needs {}; free space there or give a path on another filesystem; nothing was swapped out", Size(*available), Size(*needed), path = path.display())]
    NoSpace {
        /// The path.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The filesystem cannot punch holes.
    #[error("the filesystem of {path} cannot punch holes ({source}), so balloon discards could not free swap space; give a path on ext4, xfs, btrfs or another filesystem that supports FALLOC_FL_PUNCH_HOLE", path = path.display())]
    NoHoles {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Writing or syncing the file failed: nothing was dropped, the file is removed.
    #[error("writing guest memory to {path} failed: {source}; the file was removed and no memory was dropped (is the disk full?)", path = path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Userfaultfd: registering or serving failed.
    #[error("userfaultfd: {0}")]
    Uffd(#[from] uffd::UffdError),
    /// Dropping or restoring memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// What a swap-out did.
#[derive(Clone, Debug, Serialize)]
pub struct SwapOutReport {
    /// The swap file.
    pub file: PathBuf,
    /// Regions swapped out (configuration indices).
    pub regions: Vec<usize>,
    /// Bytes written to the file (the backed pages), and dropped from RAM.
    pub bytes_written: u64,
    /// Resident bytes of those regions before.
    pub resident_before_bytes: u64,
    /// And after.
    pub resident_after_bytes: u64,
    /// Disk space the file takes.
    pub file_allocated_bytes: u64,
    /// Seconds it took (writing, syncing, dropping, registering).
    pub seconds: f64,
}

/// What a swap-in did.
#[derive(Clone, Debug, Serialize)]
pub struct SwapInReport {
    /// The swap file (now removed).
    pub file: PathBuf,
    /// Bytes brought back by the swap-in itself (what faults had not brought back yet).
    pub bytes_read: u64,
    /// Faults served from the file while swapped out.
    pub faults: u64,
    /// Resident bytes of the regions before.
    pub resident_before_bytes: u64,
    /// And after.
    pub resident_after_bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// The in-VMM swap's state, for reports (`vmm_swap` in `GET /memory/report`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct VmmSwapStatus {
    /// `off`, `swapping_out`, `swapped_out` or `swapping_in`.
    pub state: &'static str,
    /// The swap file while swapped out.
    pub file: Option<PathBuf>,
    /// Regions swapped out.
    pub regions: Vec<usize>,
    /// Bytes written at swap-out.
    pub bytes_written: u64,
    /// Bytes still only in the file (not faulted back, not discarded).
    pub bytes_in_file: u64,
    /// Disk space the file takes.
    pub file_allocated_bytes: u64,
    /// Missing-page faults served since the swap-out.
    pub faults: u64,
    /// Bytes those faults brought back from the file.
    pub faulted_in_bytes: u64,
    /// Bytes of swapped-out regions the guest discarded since (balloon).
    pub discarded_bytes: u64,
    /// Seconds the swap-out took.
    pub swap_out_seconds: f64,
    /// Seconds since the swap-out.
    pub swapped_out_for_s: f64,
    /// Swap-outs done so far in this VM.
    pub swap_outs: u64,
    /// Swap-ins done so far in this VM.
    pub swap_ins: u64,
}

/// One region in the swap file.
#[derive(Clone, Copy, Debug)]
struct SwapRegion {
    index: usize,
    file_offset: u64,
}

/// A swapped-out VM's state.
struct SwappedOut {
    handler: uffd::UffdHandler,
    file: Arc<SwapFile>,
    regions: Vec<SwapRegion>,
    bytes_written: u64,
    seconds: f64,
    at: Instant,
}

/// The swap state of one VM's guest RAM.
#[derive(Default)]
pub(super) struct SwapSlot {
    state: SlotState,
    swap_outs: u64,
    swap_ins: u64,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Off,
    Busy(&'static str),
    On(SwappedOut),
}

impl std::fmt::Debug for SwapSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            SlotState::Off => "off",
            SlotState::Busy(what) => what,
            SlotState::On(_) => "swapped_out",
        };
        f.debug_struct("SwapSlot").field("state", &state).finish()
    }
}

/// A swap-out request.
#[derive(Clone, Debug)]
pub struct SwapOutRequest {
    /// The swap file to create.
    pub file: PathBuf,
    /// Only these guest-physical `(start, len)` ranges (`cold_only`: those outside the
    /// working set); `None`: all guest memory.
    pub only: Option<Vec<(u64, u64)>>,
}

impl GuestRam {
    fn swap_slot(&self) -> std::sync::MutexGuard<'_, SwapSlot> {
        self.swap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the slot busy with `what` if it is off.
    fn swap_begin(
        &self,
        what: &'static str,
        want_on: bool,
    ) -> Result<Option<SwappedOut>, SwapError> {
        let mut slot = self.swap_slot();
        match (&slot.state, want_on) {
            (SlotState::Busy(w), _) => Err(SwapError::Busy(w)),
            (SlotState::On(s), false) => Err(SwapError::AlreadySwappedOut {
                path: s.file.path().to_path_buf(),
            }),
            (SlotState::Off, true) => Err(SwapError::NotSwappedOut),
            (SlotState::Off, false) => {
                slot.state = SlotState::Busy(what);
                Ok(None)
            }
            (SlotState::On(_), true) => {
                match std::mem::replace(&mut slot.state, SlotState::Busy(what)) {
                    SlotState::On(s) => Ok(Some(s)),
                    _ => unreachable!("matched On above"),
                }
            }
        }
    }

    fn resident_of(&self, regions: &[SwapRegion]) -> u64 {
        regions
            .iter()
            .map(|r| self.regions[r.index].map.resident_bytes())
            .sum()
    }

    /// Writes every backed page of guest RAM to a new swap file at `req.file`, drops it from
    /// host RAM and serves it back on access through userfaultfd (see the module docs).
    ///
    /// The caller must make sure nothing writes guest memory while this runs (vCPUs paused,
    /// devices quiet): a page written after it was copied would lose that write.
    pub fn swap_out(&self, req: &SwapOutRequest) -> Result<SwapOutReport, SwapError> {
        self.swap_precheck(req)?;
        self.swap_begin("swap-out", false)?;
        let result = self.swap_out_locked(req);
        let mut slot = self.swap_slot();
        match result {
            Ok((state, report)) => {
                slot.state = SlotState::On(state);
                slot.swap_outs += 1;
                Ok(report)
            }
            Err(e) => {
                slot.state = SlotState::Off;
                Err(e)
            }
        }
    }

    /// What refuses a swap-out before anything is done (and before the caller pauses the
    /// guest for it): a uffd region, a swap-out already in place or running.
    pub fn swap_precheck(&self, _req: &SwapOutRequest) -> Result<(), SwapError> {
        for r in &self.regions {
            if let Some(p) = &r.pager {
                return Err(SwapError::UffdRegion {
                    region: r.index,
                    how: match p {
                        super::Pager::Internal(_) => "served by memvisor's own page-fault handler",
                        super::Pager::External(_) => "handed to an external page-fault handler",
                    },
                });
            }
        }
        match &self.swap_slot().state {
            SlotState::Off => Ok(()),
            SlotState::Busy(w) => Err(SwapError::Busy(w)),
            SlotState::On(s) => Err(SwapError::AlreadySwappedOut {
                path: s.file.path().to_path_buf(),
            }),
        }
    }

    fn swap_out_locked(
        &self,
        req: &SwapOutRequest,
    ) -> Result<(SwappedOut, SwapOutReport), SwapError> {
        let t0 = Instant::now();
        let mut regions = Vec::new();
        let mut offset = 0;
        for r in &self.regions {
            regions.push(SwapRegion {
                index: r.index,
                file_offset: offset,
            });
            offset += r.len();
        }
        let resident_before = self.resident_of(&regions);
        // Runs of backed host pages per region: (offset in region, length).
        let runs: Vec<Vec<(u64, u64)>> = self
            .regions
            .iter()
            .map(|r| {
                let runs = page_runs(&r.map.present_pages(), r.page_size);
                match &req.only {
                    Some(only) => clip_runs(&runs, &r.offsets_of(only), r.page_size),
                    None => runs,
                }
            })
            .collect();
        let needed: u64 = runs.iter().flatten().map(|(_, l)| l).sum();
        let file = SwapFile::create(&req.file, offset, needed)?;
        let write_err = |source| SwapError::Write {
            path: req.file.clone(),
            source,
        };
        let written = (|| {
            for (r, sr) in self.regions.iter().zip(&regions) {
                for &(off, len) in &runs[r.index] {
                    // SAFETY: the run lies inside the region's live mapping, which GuestRam
                    // keeps mapped; the pages are backed, so reading them faults nothing in.
                    unsafe {
                        file.write_from(
                            r.map.addr().add(off as usize),
                            len as usize,
                            sr.file_offset + off,
                        )
                    }?;
                }
            }
            file.sync_and_evict()
        })();
        if let Err(e) = written {
            file.remove();
            return Err(write_err(e));
        }
        // Everything is safely in the file: drop it from RAM.
        for r in &self.regions {
            for &(off, len) in &runs[r.index] {
                r.map.release(r.index, off, len)?;
            }
        }
        let specs: Vec<uffd::RegionSpec> = self
            .regions
            .iter()
            .zip(&regions)
            .map(|(r, sr)| uffd::RegionSpec {
                host_addr: r.map.addr() as usize,
                len: r.map.len(),
                page_size: r.page_size as usize,
                source_offset: sr.file_offset,
            })
            .collect();
        let in_file: Vec<Vec<u64>> = self
            .regions
            .iter()
            .map(|r| {
                let pages = (r.len() / r.page_size) as usize;
                let mut bits = vec![0u64; pages.div_ceil(64)];
                for &(off, len) in &runs[r.index] {
                    for p in off / r.page_size..(off + len) / r.page_size {
                        bits[(p / 64) as usize] |= 1 << (p % 64);
                    }
                }
                bits
            })
            .collect();
        let config = uffd::HandlerConfig {
            source: uffd::PageSource::Swap {
                path: req.file.clone(),
                in_file,
            },
            fetch_unit: uffd::BASE_PAGE_SIZE,
        };
        let handler = match uffd::start_with(specs, config, self.swap_thread_start.clone()) {
            Ok(h) => h,
            Err(e) => {
                // Nobody serves the dropped pages: put them back before giving up.
                self.restore_from(&file, &regions, &runs);
                file.remove();
                return Err(e.into());
            }
        };
        let report = SwapOutReport {
            file: req.file.clone(),
            regions: regions.iter().map(|r| r.index).collect(),
            bytes_written: needed,
            resident_before_bytes: resident_before,
            resident_after_bytes: self.resident_of(&regions),
            file_allocated_bytes: file.allocated_bytes(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        let state = SwappedOut {
            handler,
            file: Arc::new(file),
            regions,
            bytes_written: needed,
            seconds: report.seconds,
            at: Instant::now(),
        };
        Ok((state, report))
    }

    /// Reads dropped runs back from the swap file (registration failed).
    fn restore_from(&self, file: &SwapFile, regions: &[SwapRegion], runs: &[Vec<(u64, u64)>]) {
        for (r, sr) in self.regions.iter().zip(regions) {
            for &(off, len) in &runs[r.index] {
                // SAFETY: the run lies inside the region's live mapping; nothing else uses
                // the memory meanwhile (the caller's guarantee for the whole swap-out).
                let read = unsafe {
                    file.read_into(
                        r.map.addr().add(off as usize),
                        len as usize,
                        sr.file_offset + off,
                    )
                };
                if let Err(e) = read {
                    log::error!(
                        "vmm-swap: reading back region {} at {off:#x}+{len:#x} from {}: {e}; the guest will see zeros there",
                        r.index,
                        file.path().display()
                    );
                }
            }
        }
    }

    /// Brings every page still in the swap file back, unregisters the regions from
    /// userfaultfd and removes the file. The guest may keep running meanwhile.
    pub fn swap_in(&self) -> Result<SwapInReport, SwapError> {
        let t0 = Instant::now();
        let Some(state) = self.swap_begin("swap-in", true)? else {
            return Err(SwapError::NotSwappedOut);
        };
        let resident_before = self.resident_of(&state.regions);
        let left = state.handler.stats().source_bytes_left;
        if let Err(e) = state.handler.fill_all(SWAP_IN_TIMEOUT) {
            self.swap_slot().state = SlotState::On(state);
            return Err(e.into());
        }
        let SwappedOut {
            handler,
            file,
            regions,
            ..
        } = state;
        let stats = handler.stop();
        let path = file.path().to_path_buf();
        // A discard may hold it for a moment: then it goes when that one lets go.
        if let Ok(f) = Arc::try_unwrap(file) {
            f.remove();
        }
        let mut slot = self.swap_slot();
        slot.state = SlotState::Off;
        slot.swap_ins += 1;
        drop(slot);
        let stats = stats?;
        Ok(SwapInReport {
            file: path,
            bytes_read: left.saturating_sub(stats.source_bytes_left),
            faults: stats.faults,
            resident_before_bytes: resident_before,
            resident_after_bytes: self.resident_of(&regions),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The in-VMM swap's state and counters.
    pub fn swap_status(&self) -> VmmSwapStatus {
        let slot = self.swap_slot();
        let mut st = VmmSwapStatus {
            state: "off",
            swap_outs: slot.swap_outs,
            swap_ins: slot.swap_ins,
            ..Default::default()
        };
        match &slot.state {
            SlotState::Off => {}
            SlotState::Busy(what) => {
                st.state = if *what == "swap-out" {
                    "swapping_out"
                } else {
                    "swapping_in"
                }
            }
            SlotState::On(s) => {
                let u = s.handler.stats();
                st.state = "swapped_out";
                st.file = Some(s.file.path().to_path_buf());
                st.regions = s.regions.iter().map(|r| r.index).collect();
                st.bytes_written = s.bytes_written;
                st.bytes_in_file = u.source_bytes_left;
                st.file_allocated_bytes = s.file.allocated_bytes();
                st.faults = u.faults;
                st.faulted_in_bytes = u.copied_pages * 4096;
                st.discarded_bytes = u.removed_bytes;
                st.swap_out_seconds = s.seconds;
                st.swapped_out_for_s = s.at.elapsed().as_secs_f64();
            }
        }
        st
    }

    /// Punches guest-physical `[gpa, gpa+len)` out of the swap file (a discard), if swapped
    /// out. `pieces` are `(region index, offset in region, length)`.
    pub(super) fn swap_discard(&self, pieces: &[(usize, u64, u64)]) {
        let (file, regions) = match &self.swap_slot().state {
            SlotState::On(s) => (s.file.clone(), s.regions.clone()),
            _ => return,
        };
        for &(index, off, len) in pieces {
            let Some(sr) = regions.iter().find(|r| r.index == index) else {
                continue;
            };
            if let Err(e) = file.punch(sr.file_offset + off, len) {
                log::warn!(
                    "vmm-swap: punching {:#x}+{len:#x} out of {}: {e}; that space stays used until swap-in",
                    sr.file_offset + off,
                    file.path().display()
                );
            }
        }
    }
}

/// Runs of present pages as `(offset, length)` in bytes, each at most 64 MiB.
fn page_runs(present: &[bool], page_size: u64) -> Vec<(u64, u64)> {
    const MAX_RUN: u64 = 64 << 20;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (p, &on) in present.iter().enumerate() {
        if !on {
            continue;
        }
        let off = p as u64 * page_size;
        match runs.last_mut() {
            Some((o, l)) if *o + *l == off && *l + page_size <= MAX_RUN => *l += page_size,
            _ => runs.push((off, page_size)),
        }
    }
    runs
}

/// The parts of `runs` inside the sorted, disjoint `allowed` offset ranges, in whole pages.
fn clip_runs(runs: &[(u64, u64)], allowed: &[(u64, u64)], page_size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(off, len) in runs {
        for &(a, l) in allowed {
            let lo = off.max(a.next_multiple_of(page_size));
            let hi = (off + len).min((a + l) / page_size * page_size);
            if lo < hi {
                out.push((lo, hi - lo));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_clipped_to_whole_pages_of_the_allowed_ranges() {
        let runs = [(0, 16 << 10), (32 << 10, 8 << 10)];
        assert_eq!(
            clip_runs(&runs, &[(4 << 10, 6 << 10), (30 << 10, 100 << 10)], 4096),
            vec![(4 << 10, 4 << 10), (32 << 10, 8 << 10)],
            "a partial page at an edge is left out"
        );
        assert!(clip_runs(&runs, &[], 4096).is_empty());
    }

    #[test]
    fn runs_merge_and_split() {
        let p = [true, true, false, true, false, false, true, true, true];
        assert_eq!(
            page_runs(&p, 4096),
            vec![(0, 8192), (3 * 4096, 4096), (6 * 4096, 3 * 4096)]
        );
        let all = vec![true; (130 << 20) / 4096];
        let r = page_runs(&all, 4096);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], (0, 64 << 20));
        assert_eq!(r[2], (128 << 20, 2 << 20));
        assert!(page_runs(&[false; 8], 2 << 20).is_empty());
    }
}
