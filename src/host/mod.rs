//! Host-wide memory settings memvisor manages itself (huge pages and KSM have crates of their
//! own, `hugepages/` and `ksm/`): [`swap`] owns the host's swap devices, zram and swap files,
//! and the record of what memvisor set up; [`cpus`] owns CPU affinity; [`pcp`] reads the
//! kernel's per-CPU free page lists.

pub mod cpus;
pub mod pcp;
pub mod swap;
