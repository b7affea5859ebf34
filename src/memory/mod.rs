//! Guest memory: the one module that maps, advises, populates and discards guest RAM.
//!
//! Each configured region gets one host mapping, placed at one or more guest-physical extents
//! (see [`layout`]). Everyone else sees guest RAM through what this module hands out: the
//! `vm-memory` [`GuestMemoryMmap`] view (devices, loaders, hypercalls), [`GuestRam::slots`]
//! (KVM memslots), [`GuestRam::discard`] (balloon), [`GuestRam::page_out_to`] (reclaim to host
//! swap, [`reclaim`]) and [`GuestRam::regions`] (reports). The in-VMM swap ([`vmm_swap`]:
//! [`GuestRam::swap_out`], [`GuestRam::swap_in`]) writes guest RAM to a file and serves it back
//! through userfaultfd. [`release_free_heap`] gives the VMM's own freed start-up heap back.

mod checks;
mod heap;
pub mod layout;
mod mapping;
mod pager;
pub mod reclaim;
mod swap_file;
pub mod vmm_swap;

pub use heap::release_free_heap;
pub use layout::{Extent, MMIO_HOLE_END, MMIO_HOLE_START};
pub use mapping::HostMapping;
pub use pager::{ExternalPager, Pager, PagerReport, HANDSHAKE_TIMEOUT};
pub use reclaim::ReclaimOutcome;
pub use swap_file::SwapFile;
pub use vmm_swap::{SwapError, SwapInReport, SwapOutReport, SwapOutRequest, VmmSwapStatus};

use crate::config::RegionConfig;
use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Memory errors. Each names the region and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap and friends failed.
    #[error("memory region {region}: {op} failed: {source}{hint}")]
    Sys {
        /// Region index.
        region: usize,
        /// The call.
        op: &'static str,
        /// The error.
        source: std::io::Error,
        /// What to try.
        hint: String,
    },
    /// A region does not fit the host (checked before anything is mapped).
    #[error("memory region {region}: option `{option}`: {reason}")]
    Check {
        /// Region index.
        region: usize,
        /// The option at fault.
        option: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Page serving of uffd regions could not start (internal handler, or the connection to
    /// or hand-over to an external one).
    #[error("memory region(s) {regions:?}: userfaultfd: {source}")]
    Uffd {
        /// The regions concerned (all regions on one handler socket).
        regions: Vec<usize>,
        /// What went wrong, and what to do.
        #[source]
        source: uffd::UffdError,
    },
    /// The hugepage pool is too small (checked before anything is mapped).
    #[error("{0}")]
    Pool(String),
    /// Preallocation failed.
    #[error("memory region {region}: prealloc failed: {reason}")]
    Prealloc {
        /// Region index.
        region: usize,
        /// Why.
        reason: String,
    },
    /// The region collection could not be built (overlap, bad alignment).
    #[error("guest memory layout: {0}")]
    Layout(String),
    /// A range that is not guest RAM.
    #[error("range {gpa:#x}+{len:#x} is not inside guest RAM")]
    NotRam {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A range that is not aligned as needed.
    #[error("range {gpa:#x}+{len:#x} is not aligned to 4 KiB")]
    Unaligned {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Guest RAM cannot be paged out to host swap (no swap, only hugetlb regions).
    #[error("cannot reclaim guest memory to host swap: {0}")]
    Reclaim(String),
    /// Not supported yet for this backend.
    #[error("memory region {region}: backend {backend} is not available in this build: {reason}")]
    Unsupported {
        /// Region index.
        region: usize,
        /// Backend name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
}

/// One guest RAM region and its host mapping.
#[derive(Debug)]
pub struct RamRegion {
    /// Index in the configuration.
    pub index: usize,
    /// What was configured.
    pub config: RegionConfig,
    /// Host page size backing the region (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
    /// Where the region lies in guest-physical space.
    pub extents: Vec<Extent>,
    /// What preallocation did, if it ran.
    pub prealloc: Option<PreallocReport>,
    /// Who serves pages of a uffd region.
    pub pager: Option<Pager>,
    map: HostMapping,
}

/// What preallocating a region did.
#[derive(Clone, Debug, Serialize)]
pub struct PreallocReport {
    /// Bytes populated.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Threads used.
    pub threads: usize,
    /// `populate_write` (MADV_POPULATE_WRITE) or `touch`.
    pub method: String,
}

impl PreallocReport {
    /// Throughput in GiB/s.
    pub fn gib_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / (1u64 << 30) as f64
        } else {
            0.0
        }
    }
}

/// Progress of preallocation: `(region, bytes done, bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(usize, u64, u64) + Sync);

/// How guest memory is set up.
#[derive(Default)]
pub struct RamOptions<'a> {
    /// Preallocation progress.
    pub progress: Option<Progress<'a>>,
    /// Run first on every page-server thread of uffd regions (the runner installs their
    /// seccomp filter with it).
    pub pager_thread_start: Option<uffd::ThreadStart>,
    /// Run first on every prealloc thread (the runner installs their seccomp filter with it);
    /// with it, preallocation never runs on the caller's thread.
    pub prealloc_thread_start: Option<uffd::ThreadStart>,
}

impl RamRegion {
    /// Host virtual address of the region's first byte.
    pub fn host_addr(&self) -> *mut u8 {
        self.map.addr()
    }

    /// Length of the host mapping.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the region is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Offset in the mapping of guest-physical `gpa`, if inside this region.
    pub fn offset_of(&self, gpa: u64) -> Option<u64> {
        self.extents
            .iter()
            .find(|e| gpa >= e.gpa && gpa < e.end())
            .map(|e| e.offset + (gpa - e.gpa))
    }

    /// The offsets in this region's mapping of the guest-physical `(start, len)` ranges that
    /// fall inside it: sorted, merged `(offset, len)` ranges.
    pub fn offsets_of(&self, ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for e in &self.extents {
            for &(g, l) in ranges {
                let lo = g.max(e.gpa);
                let hi = (g + l).min(e.end());
                if lo < hi {
                    out.push((e.offset + (lo - e.gpa), hi - lo));
                }
            }
        }
        out.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
        for (o, l) in out {
            match merged.last_mut() {
                Some((mo, ml)) if *mo + *ml >= o => *ml = (*ml).max(o + l - *mo),
                _ => merged.push((o, l)),
            }
        }
        merged
    }
}

/// A KVM memslot's worth of guest RAM.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length.
    pub len: u64,
    /// Host virtual address.
    pub host_addr: u64,
}

/// What a discard really did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiscardOutcome {
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes whose host pages were released.
    pub released: u64,
}

/// All guest RAM of one VM.
pub struct GuestRam {
    /// The in-VMM swap's state. First: dropped (its handler stopped, the regions unregistered,
    /// the file removed) before the regions are unmapped.
    swap: std::sync::Mutex<vmm_swap::SwapSlot>,
    regions: Vec<RamRegion>,
    /// Memslots in guest-physical order; fixed once the regions are mapped.
    slots: Vec<Slot>,
    mem: GuestMemoryMmap,
    /// Run first on the in-VMM swap's page-server thread (its seccomp filter).
    swap_thread_start: Option<uffd::ThreadStart>,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("regions", &self.regions)
            .finish()
    }
}

impl GuestRam {
    /// Checks every region against the host, connects to external page-fault handlers, then
    /// maps, advises, starts page serving (handing regions to external handlers, one
    /// connection per socket) and preallocates. Nothing is left mapped if any region fails.
    pub fn new(configs: &[RegionConfig]) -> Result<Self, MemoryError> {
        Self::new_with_progress(configs, None)
    }

    /// As [`GuestRam::new`], reporting preallocation progress.
    pub fn new_with_progress(
        configs: &[RegionConfig],
        progress: Option<Progress<'_>>,
    ) -> Result<Self, MemoryError> {
        Self::new_with(
            configs,
            RamOptions {
                progress,
                ..Default::default()
            },
        )
    }

    /// As [`GuestRam::new`], with progress reporting and a start hook for page-server threads.
    pub fn new_with(configs: &[RegionConfig], opts: RamOptions<'_>) -> Result<Self, MemoryError> {
        let progress = opts.progress;
        let swap_thread_start = opts.pager_thread_start.clone();
        checks::check(configs)?;
        let aligns: Vec<(u64, u64)> = configs
            .iter()
            .map(|c| (c.size, mapping::page_size_of(c)))
            .collect();
        let placed = layout::place(&aligns);
        let handlers = pager::connect_external(configs)?;
        let mut maps = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let map = HostMapping::create(index, config)?;
            if config.mergeable {
                map.set_mergeable(index)?;
            }
            maps.push(map);
        }
        let pagers = pager::start(configs, &maps, handlers, opts.pager_thread_start.as_ref())?;
        let mut regions = Vec::with_capacity(configs.len());
        for (index, (((config, extents), map), pager)) in
            configs.iter().zip(placed).zip(maps).zip(pagers).enumerate()
        {
            let prealloc = if config.prealloc {
                let threads = match config.prealloc_threads {
                    0 => crate::config::host_cpus().min(8),
                    n => n,
                };
                let total = config.size;
                let cb = progress.map(|p| move |done: u64| p(index, done, total));
                let stats = map.populate(
                    index,
                    threads,
                    cb.as_ref().map(|f| f as &(dyn Fn(u64) + Sync)),
                    opts.prealloc_thread_start
                        .as_deref()
                        .map(|f| f as hugepages::ThreadStart<'_>),
                )?;
                Some(PreallocReport {
                    bytes: stats.bytes,
                    seconds: stats.elapsed.as_secs_f64(),
                    threads: stats.threads,
                    method: match stats.method {
                        hugepages::PopulateMethod::PopulateWrite => "populate_write".into(),
                        hugepages::PopulateMethod::Touch => "touch".into(),
                    },
                })
            } else {
                None
            };
            regions.push(RamRegion {
                index,
                page_size: map.page_size(),
                config: config.clone(),
                extents,
                prealloc,
                pager,
                map,
            });
        }
        let mut mmap_regions = Vec::new();
        for r in &regions {
            for e in &r.extents {
                // SAFETY: the range lies inside `r.map`, a live mapping of at least
                // `e.offset + e.len` bytes that `GuestRam` keeps mapped for as long as the
                // vm-memory view (also owned by `GuestRam`) exists; prot/flags match the mmap.
                let raw = unsafe {
                    MmapRegion::<()>::build_raw(
                        r.map.addr().add(e.offset as usize),
                        e.len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        r.map.mmap_flags(),
                    )
                }
                .map_err(|err| MemoryError::Layout(err.to_string()))?;
                let region = GuestRegionMmap::new(raw, GuestAddress(e.gpa)).ok_or_else(|| {
                    MemoryError::Layout(format!("region at {:#x} overflows", e.gpa))
                })?;
                mmap_regions.push(region);
            }
        }
        let mem = GuestMemoryMmap::from_regions(mmap_regions)
            .map_err(|e| MemoryError::Layout(e.to_string()))?;
        let mut slots: Vec<Slot> = regions
            .iter()
            .flat_map(|r| {
                r.extents.iter().map(move |e| Slot {
                    gpa: e.gpa,
                    len: e.len,
                    host_addr: r.map.addr() as u64 + e.offset,
                })
            })
            .collect();
        slots.sort_by_key(|s| s.gpa);
        Ok(GuestRam {
            regions,
            slots,
            mem,
            swap: Default::default(),
            swap_thread_start,
        })
    }

    /// The `vm-memory` view for devices, loaders and hypercalls.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The regions, in configuration order.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Total guest RAM.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.config.size).sum()
    }

    /// KVM memslots, one per extent, in guest-physical order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Guest RAM as ascending `(gpa, len)` ranges, adjacent extents merged.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for s in self.slots() {
            match out.last_mut() {
                Some((g, l)) if *g + *l == s.gpa => *l += s.len,
                _ => out.push((s.gpa, s.len)),
            }
        }
        out
    }

    /// The highest guest-physical address of RAM plus one.
    pub fn end(&self) -> u64 {
        self.slots().last().map(|s| s.gpa + s.len).unwrap_or(0)
    }

    /// Whether `[gpa, gpa+len)` is entirely guest RAM.
    pub fn is_ram(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut at = gpa;
        for s in self.slots() {
            if at >= s.gpa && at < s.gpa + s.len {
                at = end.min(s.gpa + s.len);
                if at == end {
                    return true;
                }
            }
        }
        len == 0
    }

    /// Resident host bytes of each region (pages present in the host), in configuration order.
    pub fn resident_bytes(&self) -> Vec<u64> {
        self.regions
            .iter()
            .map(|r| r.map.resident_bytes())
            .collect()
    }

    /// Releases the host memory behind guest-physical `[gpa, gpa+len)`: afterwards the guest
    /// reads zeros there and the host has the memory back. Refuses anything that is not
    /// entirely guest RAM or not 4 KiB aligned; never touches other memory.
    pub fn discard(&self, gpa: u64, len: u64) -> Result<DiscardOutcome, MemoryError> {
        if gpa % 4096 != 0 || len % 4096 != 0 {
            return Err(MemoryError::Unaligned { gpa, len });
        }
        if !self.is_ram(gpa, len) {
            return Err(MemoryError::NotRam { gpa, len });
        }
        let mut outcome = DiscardOutcome {
            requested: len,
            released: 0,
        };
        let mut pieces = Vec::new();
        for r in &self.regions {
            for e in &r.extents {
                let lo = gpa.max(e.gpa);
                let hi = (gpa + len).min(e.end());
                if lo < hi {
                    pieces.push((r.index, e.offset + (lo - e.gpa), hi - lo));
                }
            }
        }
        // Swapped-out memory: its file space is freed first, so a fault meanwhile reads zeros.
        self.swap_discard(&pieces);
        for &(index, offset, len) in &pieces {
            outcome.released += self.regions[index].map.discard(index, offset, len)?;
        }
        Ok(outcome)
    }

    /// The deflate side of a discard: `[gpa, gpa+len)` is the guest's again. Forgets partial
    /// huge-page tracking there; `populate` faults the range back in right away.
    pub fn reclaim(&self, gpa: u64, len: u64, populate: bool) -> Result<(), MemoryError> {
        if !self.is_ram(gpa, len) {
            return Err(MemoryError::NotRam { gpa, len });
        }
        for r in &self.regions {
            for e in &r.extents {
                let lo = gpa.max(e.gpa);
                let hi = (gpa + len).min(e.end());
                if lo < hi {
                    r.map.forget_partial(e.offset + (lo - e.gpa), hi - lo);
                    if populate {
                        let page = r.page_size;
                        let a = (e.offset + (lo - e.gpa)) / page * page;
                        let b = (e.offset + (hi - e.gpa)).div_ceil(page) * page;
                        r.map.populate_range(r.index, a, b - a)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes of huge pages partly discarded (not yet returned to the host), per region.
    pub fn partially_discarded_bytes(&self) -> Vec<u64> {
        self.regions
            .iter()
            .map(|r| r.map.partially_discarded_bytes())
            .collect()
    }

    /// Indices of the uffd regions whose page server died (an external handler that hung up,
    /// an internal handler thread that stopped on an error).
    pub fn dead_pagers(&self) -> Vec<usize> {
        self.regions
            .iter()
            .filter(|r| r.pager.as_ref().is_some_and(|p| !p.healthy()))
            .map(|r| r.index)
            .collect()
    }

    /// Wakes threads blocked on faults in region `index` that its dead pager will never
    /// serve (the region is unregistered from userfaultfd, so missing pages become zero
    /// pages). Only for a guest that is being stopped.
    pub fn release_faulters(&self, index: usize) {
        if let Some(p) = self.regions.get(index).and_then(|r| r.pager.as_ref()) {
            p.release_faulters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn anon_ram_reads_back_and_discards() {
        let ram = GuestRam::new(&[RegionConfig::anon(8 << 20)]).unwrap();
        let mem = ram.memory();
        mem.write_obj(0xdead_beefu64, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x10_0000)).unwrap(),
            0xdead_beef
        );
        let before = ram.resident_bytes()[0];
        assert!(before >= 4096);
        let out = ram.discard(0x10_0000, 4096).unwrap();
        assert_eq!(out.released, 4096);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10_0000)).unwrap(), 0);
        assert!(
            ram.discard(8 << 20, 4096).is_err(),
            "outside RAM is refused"
        );
        assert!(ram.discard(0x800, 4096).is_err(), "unaligned is refused");
        assert!(
            ram.discard((8 << 20) - 4096, 8192).is_err(),
            "crossing the end is refused"
        );
    }

    #[test]
    fn slots_follow_layout() {
        let ram =
            GuestRam::new(&[RegionConfig::anon(4 << 20), RegionConfig::anon(2 << 20)]).unwrap();
        let slots = ram.slots();
        assert_eq!(slots.len(), 2);
        assert_eq!((slots[1].gpa, slots[1].len), (4 << 20, 2 << 20));
        assert_eq!(ram.ram_ranges(), vec![(0, 6 << 20)]);
        assert!(ram.is_ram(0, 6 << 20));
        assert!(!ram.is_ram(0, (6 << 20) + 1));
        assert!(!ram.is_ram(u64::MAX - 10, 20));
    }
}
