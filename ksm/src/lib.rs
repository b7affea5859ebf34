//! Kernel samepage merging (KSM): sysfs knobs, global and per-process
//! counters, `madvise`/`prctl`.
//!
//! This crate knows nothing about KVM. It controls the global KSM daemon
//! through sysfs ([`Ksm`], normally `/sys/kernel/mm/ksm`), reads global
//! ([`KsmCounters`]) and per-process ([`ProcessKsmStats`]) accounting, marks
//! memory mergeable ([`madvise_mergeable`], [`set_process_merge`]) and puts
//! global knobs back after tests or benchmarks ([`SettingsGuard`]).
//!
//! Files that older kernels lack are `None` in the read structures; anything
//! else that goes wrong is a typed [`KsmError`], never a panic. The text
//! formats are parsed by the pure functions in [`parse`].
//!
//! ```no_run
//! use std::time::Duration;
//! let ksm = ksm::Ksm::system();
//! if ksm.available() {
//!     let _guard = ksm::SettingsGuard::save(&ksm)?;
//!     ksm.set_run(ksm::KsmRun::Merge)?;
//!     let counters = ksm.wait_full_scans(2, Duration::from_secs(30))?;
//!     println!("saved {} bytes", counters.bytes_saved(ksm::page_size()));
//! }
//! # Ok::<(), ksm::KsmError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod guard;
pub mod parse;
mod process;
mod status;
mod sysfs;
mod types;

pub use error::KsmError;
pub use guard::SettingsGuard;
pub use parse::Choices;
pub use process::{
    madvise_mergeable, madvise_unmergeable, page_size, process_merge, process_stats,
    process_stats_in, self_stats, set_process_merge,
};
pub use status::{format_status, human_bytes, status_text};
pub use sysfs::{Ksm, SYSTEM_ROOT};
pub use types::{Change, KsmCounters, KsmRun, KsmSettings, ProcessKsmStats};
