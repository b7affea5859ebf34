//! hugetlbfs regions are served in whole 2 MiB pages (UFFDIO_COPY, including zeros).

mod common;

use common::*;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use uffd::{HandlerConfig, PageSource, RegionSpec, HUGE_PAGE_SIZE};

const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const PAGES: usize = 4;
const SEED: u64 = 0x0123_4567_89ab_cdef;

fn read_pool(name: &str) -> Option<usize> {
    fs::read_to_string(format!("{POOL}/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Grows the 2 MiB pool so that `PAGES` pages are free; on drop takes back what it added.
struct PoolGuard {
    added: usize,
}

impl PoolGuard {
    fn reserve() -> Result<PoolGuard, String> {
        let free = read_pool("free_hugepages").ok_or("no 2 MiB hugetlb pool")?;
        let mut guard = PoolGuard { added: 0 };
        if free < PAGES {
            let total = read_pool("nr_hugepages").ok_or("cannot read nr_hugepages")?;
            guard.added = PAGES - free;
            fs::write(
                format!("{POOL}/nr_hugepages"),
                (total + guard.added).to_string(),
            )
            .map_err(|e| format!("cannot grow nr_hugepages: {e}"))?;
            let now_free = read_pool("free_hugepages").unwrap_or(0);
            if now_free < PAGES {
                // Drop restores the old size.
                return Err(format!(
                    "only {now_free} free 2 MiB pages after growing the pool"
                ));
            }
        }
        Ok(guard)
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if self.added == 0 {
            return;
        }
        // Relative restore, so a concurrent change by someone else is not undone.
        let total = read_pool("nr_hugepages").unwrap_or(self.added);
        let restored = total.saturating_sub(self.added).to_string();
        if let Err(e) = fs::write(format!("{POOL}/nr_hugepages"), &restored) {
            eprintln!("could not restore nr_hugepages to {restored}: {e}");
        }
    }
}

/// A MAP_SHARED mapping of a MFD_HUGETLB memfd.
struct HugeMapping {
    _fd: OwnedFd,
    map: Mapping,
}

fn huge_memfd(len: usize) -> Result<HugeMapping, String> {
    let name = c"uffd-hugetlb-test";
    // SAFETY: `name` is a valid C string; the flags ask for a new hugetlbfs file.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_HUGETLB) };
    if fd < 0 {
        return Err(format!(
            "memfd_create(MFD_HUGETLB): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on our own descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(format!("ftruncate: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new shared mapping of our memfd at a kernel-chosen address aliases nothing.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    Ok(HugeMapping {
        _fd: fd,
        map: Mapping {
            addr: addr as usize,
            len,
        },
    })
}

#[test]
fn hugetlb_regions_are_served_in_huge_pages() {
    skip_unless_uffd!();
    let pool = match PoolGuard::reserve() {
        Ok(pool) => pool,
        Err(reason) => {
            println!("skip: {reason}");
            return;
        }
    };
    let huge = match huge_memfd(PAGES * HUGE_PAGE_SIZE) {
        Ok(m) => m,
        Err(reason) => {
            println!("skip: {reason}");
            return;
        }
    };
    let dir = TempDir::new("huge");
    let path = dir.path().join("mem.img");
    // Region page 0 = image 2..4 MiB, page 1 = image 4..5 MiB then zeros, pages 2-3 zeros.
    let (image_len, source_offset) = (5 * MIB, 2 * MIB as u64);
    write_image(&path, image_len, SEED);
    let region = RegionSpec {
        host_addr: huge.map.addr,
        len: huge.map.len,
        page_size: HUGE_PAGE_SIZE,
        source_offset,
    };
    let config = HandlerConfig {
        source: PageSource::File { path },
        fetch_unit: 64 * KIB, // raised to the huge page size for this region
    };
    let handler = uffd::start(vec![region], config).unwrap();
    let (addr, len) = (huge.map.addr, huge.map.len);
    // Touch one byte in the middle of each huge page first, then read everything.
    let got = with_timeout(20, move || {
        for p in 0..PAGES {
            read_at(addr + p * HUGE_PAGE_SIZE + 12345, 1);
        }
        read_at(addr, len)
    });
    let want = expected(source_offset, len, image_len, SEED);
    assert_eq!(first_diff(&got, &want), None);
    let stats = handler.stats();
    assert_eq!(stats.faults as usize, PAGES, "{stats:?}");
    assert_eq!(stats.pages_served as usize, PAGES);
    assert_eq!(stats.copied_pages, 2);
    assert_eq!(stats.zero_pages, 2);
    assert_eq!(stats.bytes_served as usize, len);

    // Punch out huge page 0 (MADV_REMOVE frees shared hugetlbfs memory): it comes back as zeros.
    huge.map.madvise(0, HUGE_PAGE_SIZE, libc::MADV_REMOVE);
    let got = with_timeout(20, move || read_at(addr, HUGE_PAGE_SIZE));
    assert!(
        got.iter().all(|&b| b == 0),
        "removed huge page shows stale bytes"
    );
    let stats = handler.stop().unwrap();
    assert_eq!(stats.remove_events, 1);
    assert_eq!(stats.removed_bytes as usize, HUGE_PAGE_SIZE);
    assert_eq!(stats.faults as usize, PAGES + 1);
    assert_eq!(stats.zero_pages, 3);
    drop(huge);
    drop(pool);
}
