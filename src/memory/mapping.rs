//! One region's host mapping: creating it for each backend, advising it, asking what is
//! resident, and releasing pages. All the raw `mmap`/`madvise`/`fallocate` calls of guest
//! memory live here.

use super::MemoryError;
use crate::config::{Backend, RegionConfig, Size};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

const PAGE: u64 = 4096;

/// The host page size a region is backed with (needed before mapping, for the layout).
pub(crate) fn page_size_of(c: &RegionConfig) -> u64 {
    match &c.backend {
        Backend::Memfd {
            hugepage_size: Some(hp),
        } => *hp,
        Backend::Hugetlbfs { mem_path } => hugepages::mount_info(mem_path)
            .map(|m| m.page_size.bytes())
            .unwrap_or(2 << 20),
        _ => PAGE,
    }
}

/// A host mapping backing one region; unmapped on drop.
#[derive(Debug)]
pub struct HostMapping {
    addr: *mut u8,
    len: usize,
    flags: i32,
    fd: Option<OwnedFd>,
    page_size: u64,
    /// Huge pages partly discarded: huge-page index -> bitmap of discarded 4 KiB pages.
    partial: Mutex<HashMap<u64, Vec<u64>>>,
}

// SAFETY: the mapping is plain memory owned by this struct; the raw pointer is only an address.
// Access to the guest's bytes goes through vm-memory's volatile accessors or the guest itself.
unsafe impl Send for HostMapping {}
// SAFETY: as above; the only interior state (`partial`) is behind a mutex.
unsafe impl Sync for HostMapping {}

fn sys<'a>(
    region: usize,
    op: &'static str,
    hint: &'a str,
) -> impl FnOnce(io::Error) -> MemoryError + 'a {
    move |source| MemoryError::Sys {
        region,
        op,
        source,
        hint: hint.to_string(),
    }
}

impl HostMapping {
    /// Creates the mapping for region `index`.
    pub fn create(index: usize, c: &RegionConfig) -> Result<Self, MemoryError> {
        let len = c.size as usize;
        let page_size = page_size_of(c);
        let (fd, flags) = match &c.backend {
            Backend::Anon { shared: false, .. } | Backend::Uffd { .. } => (
                None,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            ),
            Backend::Anon { shared: true, .. }
            | Backend::Memfd {
                hugepage_size: None,
            } => (Some(memfd(index, 0, c.size)?), libc::MAP_SHARED),
            Backend::Memfd {
                hugepage_size: Some(hp),
            } => {
                let size_flag = if *hp == 1 << 30 {
                    libc::MFD_HUGE_1GB
                } else {
                    libc::MFD_HUGE_2MB
                };
                (
                    Some(memfd(index, libc::MFD_HUGETLB | size_flag, c.size)?),
                    libc::MAP_SHARED,
                )
            }
            // No MAP_NORESERVE on huge pages: the kernel reserves the pool pages at mmap time,
            // so a pool that is too small fails here, not with a SIGBUS while the guest runs.
            Backend::Hugetlbfs { mem_path } => (
                Some(hugetlbfs_file(index, mem_path, c.size)?),
                libc::MAP_SHARED,
            ),
        };
        let raw_fd = fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL); no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(sys(
                index,
                "mmap",
                " (is there enough address space and memory for the region?)",
            )(io::Error::last_os_error()));
        }
        let map = HostMapping {
            addr: addr.cast(),
            len,
            flags,
            fd,
            page_size,
            partial: Mutex::new(HashMap::new()),
        };
        if let Backend::Anon { thp: Some(on), .. } = c.backend {
            let advice = if on {
                libc::MADV_HUGEPAGE
            } else {
                libc::MADV_NOHUGEPAGE
            };
            map.madvise(
                index,
                0,
                c.size,
                advice,
                "madvise(MADV_HUGEPAGE/NOHUGEPAGE)",
            )?;
        }
        Ok(map)
    }

    /// Start of the mapping.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The flags it was mapped with.
    pub fn mmap_flags(&self) -> i32 {
        self.flags
    }

    /// The backing file descriptor, if any (memfd, hugetlbfs).
    pub fn fd(&self) -> Option<&OwnedFd> {
        self.fd.as_ref()
    }

    fn madvise(
        &self,
        index: usize,
        offset: u64,
        len: u64,
        advice: i32,
        what: &'static str,
    ) -> Result<(), MemoryError> {
        assert!(
            offset + len <= self.len as u64,
            "madvise range inside the mapping"
        );
        // SAFETY: the range lies inside this live mapping (checked above).
        let rc =
            unsafe { libc::madvise(self.addr.add(offset as usize).cast(), len as usize, advice) };
        if rc != 0 {
            return Err(sys(index, what, "")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Marks the whole mapping `MADV_MERGEABLE` for KSM.
    pub fn set_mergeable(&self, index: usize) -> Result<(), MemoryError> {
        // SAFETY: the range is exactly this live mapping.
        unsafe { ksm::madvise_mergeable(self.addr, self.len) }.map_err(|e| MemoryError::Sys {
            region: index,
            op: "madvise(MADV_MERGEABLE)",
            source: io::Error::other(e.to_string()),
            hint: String::new(),
        })
    }

    /// Faults in every page for writing on `threads` threads; `thread_start` runs first on each
    /// of them (and then they are threads of their own even when there is one).
    pub fn populate(
        &self,
        index: usize,
        threads: usize,
        progress: Option<&(dyn Fn(u64) + Sync)>,
        thread_start: Option<hugepages::ThreadStart<'_>>,
    ) -> Result<hugepages::PopulateStats, MemoryError> {
        let opts = hugepages::PopulateOptions {
            threads,
            method: None,
            progress,
            thread_start,
        };
        // SAFETY: the range is exactly this live mapping, writable, and nothing unmaps it while
        // this runs (the owner is borrowed).
        unsafe { hugepages::populate_with(self.addr, self.len, self.page_size as usize, opts) }
            .map_err(|e| MemoryError::Prealloc {
                region: index,
                reason: e.to_string(),
            })
    }

    /// Faults in `[offset, offset+len)` (page aligned) for writing, on the calling thread.
    pub fn populate_range(&self, index: usize, offset: u64, len: u64) -> Result<(), MemoryError> {
        assert!(
            offset + len <= self.len as u64,
            "populate range inside the mapping"
        );
        // SAFETY: the range lies inside this live mapping, which the owner keeps mapped.
        unsafe {
            hugepages::populate(
                self.addr.add(offset as usize),
                len as usize,
                self.page_size as usize,
                1,
                None,
            )
        }
        .map(|_| ())
        .map_err(|e| MemoryError::Prealloc {
            region: index,
            reason: e.to_string(),
        })
    }

    /// Host page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Host bytes currently resident in this mapping.
    pub fn resident_bytes(&self) -> u64 {
        let pages = self.len.div_ceil(PAGE as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is this live mapping; `vec` has one byte per 4 KiB page.
        let rc = unsafe { libc::mincore(self.addr.cast(), self.len, vec.as_mut_ptr()) };
        if rc != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 != 0).count() as u64 * PAGE
    }

    /// Host bytes resident in `[offset, offset+len)` (page aligned, inside the mapping).
    pub fn resident_range(&self, offset: u64, len: u64) -> u64 {
        assert!(offset % PAGE == 0 && offset + len <= self.len as u64);
        let mut vec = vec![0u8; len.div_ceil(PAGE) as usize];
        // SAFETY: the range lies inside this live mapping; `vec` has one byte per 4 KiB page.
        let rc = unsafe {
            libc::mincore(
                self.addr.add(offset as usize).cast(),
                len as usize,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 != 0).count() as u64 * PAGE
    }

    /// Which host pages (of [`HostMapping::page_size`]) are backed now (`mincore`: for
    /// shared and hugetlbfs memory, in the file's page cache), one entry per page.
    pub fn present_pages(&self) -> Vec<bool> {
        let pages = self.len.div_ceil(PAGE as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is this live mapping; `vec` has one byte per 4 KiB page.
        let rc = unsafe { libc::mincore(self.addr.cast(), self.len, vec.as_mut_ptr()) };
        let per = (self.page_size / PAGE) as usize;
        if rc != 0 {
            // Unknown: count every page as present, so nothing is left out of a copy.
            return vec![true; pages.div_ceil(per)];
        }
        vec.chunks(per)
            .map(|c| c.iter().any(|b| b & 1 != 0))
            .collect()
    }

    /// Releases `[offset, offset+len)` of the mapping (4 KiB aligned, inside the mapping).
    /// Returns the bytes of host memory really released: for huge-page backings only whole
    /// huge pages can be released; 4 KiB pieces of a huge page are zeroed and remembered until
    /// the whole huge page has been discarded.
    pub fn discard(&self, index: usize, offset: u64, len: u64) -> Result<u64, MemoryError> {
        assert!(offset % PAGE == 0 && len % PAGE == 0 && offset + len <= self.len as u64);
        if self.page_size == PAGE {
            self.release(index, offset, len)?;
            return Ok(len);
        }
        let hp = self.page_size;
        let mut released = 0;
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let hp_start = at / hp * hp;
            let hp_end = hp_start + hp;
            let piece_end = end.min(hp_end);
            if at == hp_start && piece_end == hp_end {
                self.partial.lock().unwrap().remove(&(hp_start / hp));
                self.release(index, hp_start, hp)?;
                released += hp;
            } else if !self.is_present(hp_start) {
                // Not backed (never touched, or already released): it reads as zeros already, and
                // writing zeros would take a huge page from the pool instead of giving one back.
                self.partial.lock().unwrap().remove(&(hp_start / hp));
            } else {
                // SAFETY: the piece lies inside this live mapping; zeroing keeps the promise that
                // discarded memory reads as zeros.
                unsafe {
                    std::ptr::write_bytes(self.addr.add(at as usize), 0, (piece_end - at) as usize)
                };
                let mut partial = self.partial.lock().unwrap();
                let bits = partial
                    .entry(hp_start / hp)
                    .or_insert_with(|| vec![0u64; (hp / PAGE).div_ceil(64) as usize]);
                for p in (at - hp_start) / PAGE..(piece_end - hp_start) / PAGE {
                    bits[(p / 64) as usize] |= 1 << (p % 64);
                }
                let full = bits.iter().map(|w| w.count_ones() as u64).sum::<u64>() == hp / PAGE;
                if full {
                    partial.remove(&(hp_start / hp));
                    drop(partial);
                    self.release(index, hp_start, hp)?;
                    released += hp;
                }
            }
            at = piece_end;
        }
        Ok(released)
    }

    /// Whether the host page containing `offset` is backed (for huge pages, in the page cache).
    fn is_present(&self, offset: u64) -> bool {
        let start = offset / self.page_size * self.page_size;
        let mut v = [0u8; 1];
        // SAFETY: one page-aligned 4 KiB range inside this live mapping; `v` holds its one entry.
        let rc = unsafe {
            libc::mincore(
                self.addr.add(start as usize).cast(),
                PAGE as usize,
                v.as_mut_ptr(),
            )
        };
        rc != 0 || v[0] & 1 != 0
    }

    /// Forgets partial-huge-page tracking of `[offset, offset+len)` (the guest uses it again).
    pub fn forget_partial(&self, offset: u64, len: u64) {
        if self.page_size == PAGE {
            return;
        }
        let hp = self.page_size;
        let mut partial = self.partial.lock().unwrap();
        let mut at = offset / PAGE * PAGE;
        while at < offset + len {
            if let Some(bits) = partial.get_mut(&(at / hp)) {
                let p = (at % hp) / PAGE;
                bits[(p / 64) as usize] &= !(1 << (p % 64));
                if bits.iter().all(|w| *w == 0) {
                    partial.remove(&(at / hp));
                }
            }
            at += PAGE;
        }
    }

    /// Bytes of huge pages only partly discarded so far.
    pub fn partially_discarded_bytes(&self) -> u64 {
        let partial = self.partial.lock().unwrap();
        partial
            .values()
            .map(|b| b.iter().map(|w| w.count_ones() as u64).sum::<u64>() * PAGE)
            .sum()
    }

    /// Gives the host memory of `[offset, offset+len)` back: a hole punched in the backing
    /// file (memfd, hugetlbfs), then `MADV_DONTNEED`. Whole host pages only.
    pub(super) fn release(&self, index: usize, offset: u64, len: u64) -> Result<(), MemoryError> {
        if let Some(fd) = &self.fd {
            // Shared memory stays in the file (page cache) after MADV_DONTNEED; the hole punch
            // is what gives it back.
            nix::fcntl::fallocate(
                fd,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                len as i64,
            )
            .map_err(|e| sys(index, "fallocate(PUNCH_HOLE)", "")(io::Error::from(e)))?;
        }
        self.madvise(
            index,
            offset,
            len,
            libc::MADV_DONTNEED,
            "madvise(MADV_DONTNEED)",
        )
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this struct created and owns; every view of it
        // (vm-memory regions, memslots) is gone before the owning `GuestRam` is dropped.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

fn memfd(index: usize, extra_flags: u32, size: u64) -> Result<OwnedFd, MemoryError> {
    let name = CString::new(format!("memvisor-ram{index}")).expect("no NUL in name");
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | extra_flags) };
    if fd < 0 {
        return Err(sys(index, "memfd_create", "")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.set_len(size).map_err(sys(
        index,
        "ftruncate",
        " (for hugetlb memfds the size must be a multiple of the huge page size)",
    ))?;
    Ok(file.into())
}

fn hugetlbfs_file(index: usize, dir: &std::path::Path, size: u64) -> Result<OwnedFd, MemoryError> {
    let path = dir.join(format!("memvisor-{}-ram{index}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(sys(
            index,
            "open on the mem-path",
            " (is mem-path a writable hugetlbfs mount?)",
        ))?;
    // The file only needs to live as long as our descriptor.
    let _ = std::fs::remove_file(&path);
    file.set_len(size).map_err(sys(
        index,
        "ftruncate",
        &format!(
            " (region size {} must be a multiple of the mount's page size)",
            Size(size)
        ),
    ))?;
    Ok(file.into())
}
