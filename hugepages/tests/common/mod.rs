//! Helpers shared by the integration tests: skipping, temporary hugetlbfs mounts, mappings and
//! residency checks.
#![allow(dead_code)]

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use hugepages::{mount, HugePageSize};
use nix::mount::{umount2, MntFlags};
use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

/// Prints `skip: <test>: <reason>`, appends the line to the file named by `MEMVISOR_SKIP_LOG`
/// when set (`.ci/run` shows those lines, which the test harness would otherwise capture, as for
/// the VMM's own tests), and returns from the test.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        $crate::common::skip_line(&format!($($arg)*));
        return;
    }};
}

/// The line [`skip!`] prints and logs; the test is named by its thread (the harness names each
/// test's thread after it).
pub fn skip_line(reason: &str) {
    let thread = std::thread::current();
    test_support::skip(thread.name().unwrap_or("hugepages test"), reason);
}

/// Why this process cannot change huge page pools or mounts, if it cannot.
pub fn not_root() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    (euid != 0).then(|| "needs root".to_string())
}

/// Reads `nr_hugepages` of `size` straight from sysfs.
pub fn nr_hugepages(size: HugePageSize) -> u64 {
    std::fs::read_to_string(size.nr_hugepages_path())
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A fresh directory name under /tmp.
pub fn temp_dir_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "memvisor-hugepages-{tag}-{}-{n}",
        std::process::id()
    ))
}

/// A hugetlbfs mounted on a temporary directory; unmounted and removed by `cleanup` or on drop.
pub struct TempMount {
    pub dir: PathBuf,
    done: bool,
}

impl TempMount {
    pub fn new(size: HugePageSize) -> Self {
        let dir = temp_dir_path(&size.to_string());
        let (_, changed) = mount(&dir, size).unwrap();
        assert!(changed);
        TempMount { dir, done: false }
    }

    pub fn cleanup(mut self) {
        self.done = true;
        umount2(&self.dir, MntFlags::empty()).unwrap();
        std::fs::remove_dir(&self.dir).unwrap();
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if !self.done {
            let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// A mapping unmapped on drop.
pub struct Mapping {
    pub ptr: NonNull<u8>,
    pub len: usize,
}

impl Mapping {
    /// `len` bytes of a new file `name` under `dir`, mapped MAP_SHARED (+ `extra` flags).
    pub fn file(dir: &Path, name: &str, len: usize, extra: MapFlags) -> nix::Result<Self> {
        let file = File::create_new(dir.join(name)).unwrap();
        file.set_len(len as u64).unwrap();
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let flags = MapFlags::MAP_SHARED | extra;
        let nz = NonZeroUsize::new(len).unwrap();
        // SAFETY: a new mapping of a file only this test uses.
        let ptr = unsafe { mmap(None, nz, prot, flags, &file, 0) }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// `len` bytes of private anonymous memory, kept on 4K pages (MADV_NOHUGEPAGE).
    pub fn anon_4k(len: usize) -> Self {
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let nz = NonZeroUsize::new(len).unwrap();
        // SAFETY: a new private anonymous mapping.
        let ptr = unsafe { mmap_anonymous(None, nz, prot, MapFlags::MAP_PRIVATE) }.unwrap();
        // SAFETY: advice on the mapping just created.
        unsafe { nix::sys::mman::madvise(ptr, len, nix::sys::mman::MmapAdvise::MADV_NOHUGEPAGE) }
            .unwrap();
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live, readable and `len` long while `self` exists.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// How many 4K pages of the mapping are resident (mincore).
    pub fn resident_4k_pages(&self) -> usize {
        let mut vec = vec![0u8; self.len.div_ceil(4096)];
        // SAFETY: `vec` has one byte per 4K page of the live mapping.
        let rc = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this mapping, which nothing uses any more.
        unsafe { munmap(self.ptr.cast(), self.len) }.unwrap();
    }
}

/// The process's RSS in KiB, from /proc/self/smaps_rollup.
pub fn rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let line = text.lines().find(|l| l.starts_with("Rss:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A recognizable byte for offset `i` of test buffers.
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) % 251) as u8 + 1
}
