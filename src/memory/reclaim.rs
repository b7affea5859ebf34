//! Paging guest RAM out to host swap: the memory module's side of per-VM reclaim.
//!
//! [`GuestRam::page_out_to`] pushes a running VM's guest pages out with `madvise(MADV_PAGEOUT)`
//! in 2 MiB chunks until the VM's resident guest RAM is at most a target, the coldest chunks
//! first when the caller knows which they are (a working-set estimate), otherwise from the top
//! of guest RAM down (the built-in guest's page tables, stacks and code live at the bottom).
//! Only guest RAM mappings are advised, never the VMM's own memory. What the kernel can and
//! cannot do here:
//! - hugetlb regions (hugetlbfs, hugetlb memfd) cannot be swapped by the kernel: skipped, with
//!   the reason;
//! - mlocked memory: the kernel refuses both `MADV_PAGEOUT` and `MADV_COLD` (`EINVAL`); memvisor
//!   never locks guest RAM, a region that was locked by someone else is skipped and named;
//! - uffd regions: paged out like anonymous memory; touching a paged-out page is then a host
//!   swap-in served by the kernel, not a userfaultfd fault (the handler only sees pages that were
//!   never populated);
//! - kernels without `MADV_PAGEOUT` (before 5.4, `EINVAL` on every region): `MADV_COLD` instead,
//!   with a note — that only ages the pages; the kernel swaps them out under pressure.

use super::{GuestRam, MemoryError, RamRegion};
use crate::config::Backend;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Bytes advised per `madvise` call: small enough to stop near the target.
pub const CHUNK: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// What one reclaim did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReclaimOutcome {
    /// The resident guest RAM asked for.
    pub target_resident_bytes: u64,
    /// Resident guest RAM before.
    pub resident_before_bytes: u64,
    /// Resident guest RAM after.
    pub resident_after_bytes: u64,
    /// What left RAM (resident before minus after, counted per chunk).
    pub paged_out_bytes: u64,
    /// How long it took.
    pub seconds: f64,
    /// `pageout` (`MADV_PAGEOUT`), `cold` (`MADV_COLD`, the fallback) or `none`.
    pub method: String,
    /// `coldest-first` (a working-set estimate ordered the chunks) or `top-down`.
    pub order: String,
    /// Regions that were skipped or behave differently, and why.
    pub notes: Vec<String>,
}

/// Why region `r` cannot go to host swap, if it cannot.
pub fn unswappable_reason(r: &RamRegion) -> Option<String> {
    let hugetlb = matches!(r.config.backend, Backend::Hugetlbfs { .. })
        || matches!(
            r.config.backend,
            Backend::Memfd {
                hugepage_size: Some(_)
            }
        );
    hugetlb.then(|| {
        format!(
            "region {} ({}) is on hugetlb pages, which the kernel cannot swap; shrink it with \
             the balloon instead",
            r.index,
            r.config.backend.name()
        )
    })
}

fn madvise(addr: *mut u8, len: u64, advice: i32) -> std::io::Result<()> {
    // SAFETY: callers pass a page-aligned range inside a live guest RAM mapping owned by the
    // `GuestRam` they borrow; PAGEOUT/COLD never change the memory's contents.
    let rc = unsafe { libc::madvise(addr.cast(), len as usize, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl GuestRam {
    /// Pushes guest pages out to host swap until resident guest RAM is at most `target`.
    /// `coldest_first`: guest-physical ranges in the order to take them (the rest follows, top
    /// down). `swap_active`: whether the host has swap (the caller checks `/proc/swaps`).
    pub fn page_out_to(
        &self,
        target: u64,
        coldest_first: Option<&[(u64, u64)]>,
        swap_active: bool,
    ) -> Result<ReclaimOutcome, MemoryError> {
        let t0 = Instant::now();
        let mut notes = Vec::new();
        let mut usable = Vec::new();
        for r in &self.regions {
            match unswappable_reason(r) {
                Some(why) => notes.push(why),
                None => {
                    if matches!(r.config.backend, Backend::Uffd { .. }) {
                        notes.push(format!(
                            "region {}: uffd: paged-out pages come back as host swap-ins, not \
                             userfaultfd faults",
                            r.index
                        ));
                    }
                    usable.push(r.index);
                }
            }
        }
        if usable.is_empty() {
            return Err(MemoryError::Reclaim(notes.join("; ")));
        }
        let before: u64 = self.resident_bytes().iter().sum();
        if !swap_active && before > target {
            return Err(MemoryError::Reclaim(
                "the host has no swap, so guest memory has nowhere to go: set some up with \
                 `memvisor swap zram 2G` (compressed RAM) or `memvisor swap file PATH SIZE`"
                    .into(),
            ));
        }
        let mut out = ReclaimOutcome {
            target_resident_bytes: target,
            resident_before_bytes: before,
            method: "none".into(),
            order: if coldest_first.is_some() {
                "coldest-first".into()
            } else {
                "top-down".into()
            },
            ..Default::default()
        };
        let chunks = self.chunk_order(&usable, coldest_first);
        let mut advice = libc::MADV_PAGEOUT;
        let mut locked = std::collections::BTreeSet::new();
        for (index, offset, len) in chunks {
            if before.saturating_sub(out.paged_out_bytes) <= target {
                break;
            }
            if locked.contains(&index) {
                continue;
            }
            let r = &self.regions[index];
            let was = r.map.resident_range(offset, len);
            if was == 0 {
                continue;
            }
            // SAFETY: offset + len lies inside region `index`'s mapping (chunk_order).
            let addr = unsafe { r.host_addr().add(offset as usize) };
            match madvise(addr, len, advice) {
                Ok(()) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL) && advice == libc::MADV_PAGEOUT =>
                {
                    // Either this kernel lacks MADV_PAGEOUT or the range is locked.
                    if madvise(addr, len, libc::MADV_COLD).is_ok() {
                        advice = libc::MADV_COLD;
                        notes.push(
                            "MADV_PAGEOUT is refused by this kernel (EINVAL): used MADV_COLD, \
                             which only ages the pages; the kernel swaps them out under memory \
                             pressure, not now"
                                .into(),
                        );
                    } else {
                        locked.insert(index);
                        notes.push(format!(
                            "region {index} is mlocked: the kernel pages out no locked memory"
                        ));
                    }
                    continue;
                }
                Err(e) => {
                    return Err(MemoryError::Sys {
                        region: index,
                        op: "madvise(MADV_PAGEOUT)",
                        source: e,
                        hint: String::new(),
                    })
                }
            }
            out.method = if advice == libc::MADV_PAGEOUT {
                "pageout".into()
            } else {
                "cold".into()
            };
            out.paged_out_bytes += was.saturating_sub(r.map.resident_range(offset, len));
        }
        out.resident_after_bytes = self.resident_bytes().iter().sum();
        out.seconds = t0.elapsed().as_secs_f64();
        out.notes = notes;
        Ok(out)
    }

    /// `(region, offset, len)` chunks of the usable regions: those overlapping `first` in its
    /// order, then every other one from the top of guest RAM down.
    fn chunk_order(
        &self,
        usable: &[usize],
        first: Option<&[(u64, u64)]>,
    ) -> Vec<(usize, u64, u64)> {
        let mut all: Vec<(usize, u64, u64)> = Vec::new();
        for &i in usable.iter().rev() {
            let len = self.regions[i].len();
            let mut at = len.div_ceil(CHUNK) * CHUNK;
            while at > 0 {
                at -= CHUNK;
                all.push((i, at, CHUNK.min(len - at)));
            }
        }
        let Some(first) = first else {
            return all;
        };
        let mut taken = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(all.len());
        for &(gpa, len) in first {
            let mut g = gpa / PAGE * PAGE;
            while g < gpa + len {
                if let Some(r) = self
                    .regions
                    .iter()
                    .find(|r| usable.contains(&r.index) && r.offset_of(g).is_some())
                {
                    let at = r.offset_of(g).expect("inside");
                    let off = at / CHUNK * CHUNK;
                    if taken.insert((r.index, off)) {
                        out.push((r.index, off, CHUNK.min(r.len() - off)));
                    }
                    // On to the next chunk of this region's mapping.
                    g += CHUNK - (at - off);
                } else {
                    g += PAGE;
                }
            }
        }
        out.extend(
            all.into_iter()
                .filter(|(i, o, _)| !taken.contains(&(*i, *o))),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;
    use vm_memory::Bytes;

    #[test]
    fn chunks_cover_ram_top_down_and_cold_first() {
        let ram =
            GuestRam::new(&[RegionConfig::anon(8 << 20), RegionConfig::anon(5 << 20)]).unwrap();
        let all = ram.chunk_order(&[0, 1], None);
        assert_eq!(all.len(), 4 + 3);
        assert_eq!(
            all[0],
            (1, 4 << 20, 1 << 20),
            "the top of the last region first"
        );
        assert_eq!(*all.last().unwrap(), (0, 0, CHUNK));
        let total: u64 = all.iter().map(|c| c.2).sum();
        assert_eq!(total, 13 << 20);
        let cold = ram.chunk_order(
            &[0, 1],
            Some(&[(2 << 20, 4096), ((8 << 20) + 4096, 3 << 20)]),
        );
        assert_eq!(cold[0], (0, 2 << 20, CHUNK));
        assert_eq!(cold[1], (1, 0, CHUNK));
        assert_eq!(cold[2], (1, 2 << 20, CHUNK));
        assert_eq!(cold.len(), all.len(), "every chunk once");
    }

    #[test]
    fn no_swap_and_hugetlb_are_refused_with_the_way_out() {
        let ram = GuestRam::new(&[RegionConfig::anon(4 << 20)]).unwrap();
        ram.memory()
            .write_obj(1u64, vm_memory::GuestAddress(0))
            .unwrap();
        let e = ram.page_out_to(0, None, false).unwrap_err().to_string();
        assert!(e.contains("memvisor swap zram"), "{e}");
        let none = ram.page_out_to(4 << 20, None, false).unwrap();
        assert_eq!((none.method.as_str(), none.paged_out_bytes), ("none", 0));
    }
}
