//! Per-process KSM: statistics from `/proc`, `madvise(2)` and `prctl(2)`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::parse;
use crate::{KsmError, ProcessKsmStats};

/// `prctl` option enabling KSM for all of a process's memory (Linux 6.4+).
const PR_SET_MEMORY_MERGE: libc::c_int = 67;
/// `prctl` option reading the above.
const PR_GET_MEMORY_MERGE: libc::c_int = 68;

/// Reads an optional file: `Ok(None)` when it does not exist.
fn read_optional(path: PathBuf) -> Result<Option<String>, KsmError> {
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KsmError::from_io("read", path, e)),
    }
}

/// KSM statistics of the process whose `/proc` directory is `dir`
/// (e.g. `/proc/self`, or a fake directory in tests).
///
/// Uses `ksm_stat` (6.1+) and `ksm_merging_pages` (5.19+); fails with
/// [`KsmError::MissingFile`] when neither exists.
pub fn process_stats_in(dir: &Path) -> Result<ProcessKsmStats, KsmError> {
    let stat = read_optional(dir.join("ksm_stat"))?;
    let merging = read_optional(dir.join("ksm_merging_pages"))?;
    if stat.is_none() && merging.is_none() {
        return Err(KsmError::MissingFile {
            path: dir.join("ksm_merging_pages"),
        });
    }
    parse::parse_process_stats(stat.as_deref(), merging.as_deref()).map_err(|e| match e {
        KsmError::Parse {
            what,
            content,
            reason,
        } => KsmError::Parse {
            what: dir.join(what).display().to_string(),
            content,
            reason,
        },
        other => other,
    })
}

/// KSM statistics of process `pid`.
pub fn process_stats(pid: u32) -> Result<ProcessKsmStats, KsmError> {
    let dir = Path::new("/proc").join(pid.to_string());
    if !dir.is_dir() {
        return Err(KsmError::NoSuchProcess { pid });
    }
    process_stats_in(&dir)
}

/// KSM statistics of the calling process.
pub fn self_stats() -> Result<ProcessKsmStats, KsmError> {
    process_stats_in(Path::new("/proc/self"))
}

/// The system page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

/// Issues `madvise(addr, len, advice)`.
///
/// # Safety
/// `[addr, addr + len)` must be a mapping owned by the caller.
unsafe fn madvise(
    addr: *mut u8,
    len: usize,
    advice: libc::c_int,
    name: &'static str,
) -> Result<(), KsmError> {
    // SAFETY: the caller owns the range. MADV_(UN)MERGEABLE never changes the
    // contents the program sees: merged pages are copy-on-write.
    let rc = unsafe { libc::madvise(addr.cast(), len, advice) };
    if rc == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EINVAL) => {
            "the address must be page-aligned and the kernel built with CONFIG_KSM"
        }
        Some(libc::ENOMEM) => "part of the range is not mapped; pass a range inside one mapping",
        Some(libc::EAGAIN) | Some(libc::EINTR) => "the kernel was interrupted or busy; retry",
        _ => "see madvise(2)",
    };
    Err(KsmError::Madvise {
        advice: name,
        addr: addr as usize,
        len,
        source,
        hint,
    })
}

/// Marks `[addr, addr + len)` as mergeable (`MADV_MERGEABLE`) so that ksmd
/// scans it once `run` is merge.
///
/// # Safety
/// The range must be a mapping owned by the caller.
pub unsafe fn madvise_mergeable(addr: *mut u8, len: usize) -> Result<(), KsmError> {
    // SAFETY: forwarded from this function's contract.
    unsafe { madvise(addr, len, libc::MADV_MERGEABLE, "MADV_MERGEABLE") }
}

/// Unmerges `[addr, addr + len)` and stops ksmd scanning it
/// (`MADV_UNMERGEABLE`). This allocates a private copy of every merged page.
/// The process's `merging_pages` count drops on ksmd's next pass.
///
/// # Safety
/// The range must be a mapping owned by the caller.
pub unsafe fn madvise_unmergeable(addr: *mut u8, len: usize) -> Result<(), KsmError> {
    // SAFETY: forwarded from this function's contract.
    unsafe { madvise(addr, len, libc::MADV_UNMERGEABLE, "MADV_UNMERGEABLE") }
}

fn prctl_error(op: &'static str) -> KsmError {
    let source = io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EINVAL) => "needs Linux 6.4+ built with CONFIG_KSM",
        Some(libc::EPERM) => "needs CAP_SYS_RESOURCE; run as root",
        Some(libc::ENOMEM) | Some(libc::EAGAIN) | Some(libc::EINTR) => "retry",
        _ => "see prctl(2)",
    };
    KsmError::Prctl { op, source, hint }
}

/// Makes all of this process's anonymous memory mergeable, present and future
/// (`PR_SET_MEMORY_MERGE`), or undoes it. Disabling unmerges every mergeable
/// area of the process, including ones marked with [`madvise_mergeable`].
/// The setting is inherited across `fork`.
pub fn set_process_merge(enable: bool) -> Result<(), KsmError> {
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_SET_MEMORY_MERGE takes integer arguments only and does not
    // access our memory.
    let rc = unsafe {
        libc::prctl(
            PR_SET_MEMORY_MERGE,
            libc::c_ulong::from(enable),
            zero,
            zero,
            zero,
        )
    };
    if rc < 0 {
        return Err(prctl_error("PR_SET_MEMORY_MERGE"));
    }
    Ok(())
}

/// Whether `PR_SET_MEMORY_MERGE` is enabled for this process.
pub fn process_merge() -> Result<bool, KsmError> {
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_GET_MEMORY_MERGE takes integer arguments only and does not
    // access our memory.
    let rc = unsafe { libc::prctl(PR_GET_MEMORY_MERGE, zero, zero, zero, zero) };
    if rc < 0 {
        return Err(prctl_error("PR_GET_MEMORY_MERGE"));
    }
    Ok(rc != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_proc_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            process_stats_in(dir.path()),
            Err(KsmError::MissingFile { .. })
        ));
        fs::write(dir.path().join("ksm_merging_pages"), "12\n").unwrap();
        assert_eq!(process_stats_in(dir.path()).unwrap().merging_pages, 12);
        fs::write(
            dir.path().join("ksm_stat"),
            "ksm_rmap_items 3\nksm_merge_any: yes\n",
        )
        .unwrap();
        let s = process_stats_in(dir.path()).unwrap();
        assert_eq!(
            (s.rmap_items, s.merge_any, s.merging_pages),
            (Some(3), Some(true), 12)
        );
        fs::write(dir.path().join("ksm_stat"), "ksm_rmap_items many\n").unwrap();
        match process_stats_in(dir.path()) {
            Err(KsmError::Parse { what, .. }) => assert!(what.ends_with("ksm_stat"), "{what}"),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn missing_process() {
        assert!(matches!(
            process_stats(u32::MAX),
            Err(KsmError::NoSuchProcess { pid: u32::MAX })
        ));
    }

    #[test]
    fn madvise_rejects_unaligned() {
        let mut buf = [0u8; 16];
        let mut addr = buf.as_mut_ptr();
        if (addr as usize) % 4096 == 0 {
            addr = addr.wrapping_add(1);
        }
        // SAFETY: the range lies in our own stack buffer; the kernel rejects
        // the unaligned address before touching anything.
        let err = unsafe { madvise_mergeable(addr, 8) };
        assert!(matches!(err, Err(KsmError::Madvise { .. })), "{err:?}");
    }

    #[test]
    fn page_size_is_sane() {
        assert!(page_size().is_power_of_two() && page_size() >= 4096);
    }
}
