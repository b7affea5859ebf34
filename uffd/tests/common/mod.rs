//! Helpers shared by the integration tests: mappings, temp dirs, image files, timeouts.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * KIB;

/// Why userfaultfd tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    uffd::available().err().map(|e| e.to_string())
}

/// Returns early from a test, printing `skip: <reason>`, when userfaultfd is unavailable.
#[macro_export]
macro_rules! skip_unless_uffd {
    () => {
        if let Some(reason) = common::skip_reason() {
            println!("skip: {reason}");
            return;
        }
    };
}

/// An mmap'ed range, unmapped on drop.
pub struct Mapping {
    pub addr: usize,
    pub len: usize,
}

impl Mapping {
    /// Anonymous private memory (MAP_NORESERVE).
    pub fn anon(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            addr: addr as usize,
            len,
        }
    }

    /// Copies the mapping's bytes `off..off+len` out (faulting pages in, in order).
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        read_at(self.addr + off, len)
    }

    pub fn madvise(&self, off: usize, len: usize, advice: libc::c_int) {
        // SAFETY: the range lies inside this mapping, which nothing borrows as a Rust slice.
        let rc = unsafe { libc::madvise((self.addr + off) as *mut libc::c_void, len, advice) };
        assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by us and nothing refers to it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Copies `len` bytes at `addr` into a vector, reading sequentially.
pub fn read_at(addr: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: callers pass a range inside a live mapping; the copy reads it in address order.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

/// Runs `f` on another thread and waits at most `secs` for it; a thread stuck on an unserved
/// fault is left behind and the test fails instead of hanging.
pub fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("memory access did not complete within {secs} s"))
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("uffd-test-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The image's byte at file offset `off`: each little-endian 8-byte word is `offset ^ seed`.
pub fn pattern_byte(off: u64, seed: u64) -> u8 {
    let word = (off & !7) ^ seed;
    word.to_le_bytes()[(off & 7) as usize]
}

/// Writes an image of `len` bytes with [`pattern_byte`] contents.
pub fn write_image(path: &Path, len: usize, seed: u64) {
    let bytes: Vec<u8> = (0..len as u64).map(|o| pattern_byte(o, seed)).collect();
    fs::File::create(path).unwrap().write_all(&bytes).unwrap();
}

/// Expected bytes of a region whose offset 0 is image offset `source_offset`.
pub fn expected(source_offset: u64, len: usize, image_len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|o| {
            let f = source_offset + o;
            if f < image_len as u64 {
                pattern_byte(f, seed)
            } else {
                0
            }
        })
        .collect()
}

/// Index of the first differing byte, for readable assertion messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
