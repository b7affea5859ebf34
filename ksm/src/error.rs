//! The crate's error type.
//!
//! Every variant says what happened and, where there is one, what the caller
//! can do about it. Missing files, missing permissions and unexpected kernel
//! output are all reported as typed errors rather than panics.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while controlling or observing KSM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KsmError {
    /// The KSM sysfs directory does not exist.
    #[error(
        "KSM is not available: {} does not exist (kernel built without CONFIG_KSM, or sysfs \
         not mounted); use a kernel with CONFIG_KSM=y or run without memory merging",
        path.display()
    )]
    Unavailable {
        /// The directory that was looked for.
        path: PathBuf,
    },

    /// A KSM knob or counter file is missing although KSM itself is present.
    #[error(
        "{} does not exist: this kernel is too old to provide it; leave this setting unset \
         (None) or upgrade the kernel",
        path.display()
    )]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },

    /// The kernel refused access to a file.
    #[error(
        "permission denied while trying to {op} {}: changing KSM knobs needs root \
         (CAP_SYS_ADMIN); rerun as root or only read the settings",
        path.display()
    )]
    PermissionDenied {
        /// What was attempted ("read" or "write").
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
    },

    /// The kernel refused to change a knob while KSM has merged pages.
    #[error(
        "the kernel refused to change {} while KSM has merged pages (EBUSY); set run to \
         unmerge (2) first, then change it",
        path.display()
    )]
    Busy {
        /// The knob that could not be changed.
        path: PathBuf,
    },

    /// Any other I/O error on a file.
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        /// What was attempted ("read" or "write").
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A file's content did not have the expected format.
    #[error(
        "unexpected content in {what} ({content:?}): {reason}; the kernel's format may have \
         changed, please report this"
    )]
    Parse {
        /// The file (or file name) that was parsed.
        what: String,
        /// The offending content.
        content: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A value given by the caller is not acceptable for a knob.
    #[error("invalid value {value:?} for {knob}: {reason}")]
    InvalidValue {
        /// The knob (or type) concerned.
        knob: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected and what is accepted.
        reason: String,
    },

    /// `wait_full_scans` was called while ksmd is not running.
    #[error(
        "KSM is not merging (run is {run}), so full_scans will not advance; set run to \
         merge (1) before waiting"
    )]
    NotRunning {
        /// The current value of `run`.
        run: String,
    },

    /// `wait_full_scans` gave up.
    #[error(
        "timed out after {waited_ms} ms waiting for {wanted} full KSM scans (saw {seen}); \
         raise pages_to_scan, lower sleep_millisecs or wait longer"
    )]
    Timeout {
        /// Number of full scans waited for.
        wanted: u64,
        /// Number of full scans observed before giving up.
        seen: u64,
        /// How long was waited, in milliseconds.
        waited_ms: u128,
    },

    /// The process whose statistics were asked for does not exist.
    #[error("process {pid} does not exist (it may have exited); check the pid")]
    NoSuchProcess {
        /// The process id.
        pid: u32,
    },

    /// A madvise(2) call failed.
    #[error("madvise({advice}) on {len} bytes at {addr:#x} failed: {source}; {hint}")]
    Madvise {
        /// `MADV_MERGEABLE` or `MADV_UNMERGEABLE`.
        advice: &'static str,
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        len: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
        /// What the caller can do.
        hint: &'static str,
    },

    /// A prctl(2) call failed.
    #[error("prctl({op}) failed: {source}; {hint}")]
    Prctl {
        /// `PR_SET_MEMORY_MERGE` or `PR_GET_MEMORY_MERGE`.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
        /// What the caller can do.
        hint: &'static str,
    },
}

impl KsmError {
    /// Classifies an I/O error on `path`, turning the common cases into typed variants.
    pub(crate) fn from_io(op: &'static str, path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT) => KsmError::MissingFile { path },
            Some(libc::EACCES) | Some(libc::EPERM) => KsmError::PermissionDenied { op, path },
            Some(libc::EBUSY) => KsmError::Busy { path },
            _ => KsmError::Io { op, path, source },
        }
    }

    /// True when the error means "this file or feature does not exist here".
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            KsmError::MissingFile { .. } | KsmError::Unavailable { .. }
        )
    }
}
