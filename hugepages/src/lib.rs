//! Host huge pages: hugetlbfs mounts, pools per page size, transparent huge pages and populate.
//!
//! This crate owns everything memvisor does with the host's huge pages and knows nothing about
//! KVM. It is split into:
//!
//! - [`size`]: the huge page sizes ([`HugePageSize`]) and which ones the kernel supports;
//! - [`pool`]: the per-size pools in `/sys/kernel/mm/hugepages` (status, pre-flight checks,
//!   resizing);
//! - [`reserve`]: RAII pool reservations and a cross-process lock for code that changes pools;
//! - [`scratch`]: a temporary hugetlbfs with its pool grown, for tests and benchmarks;
//! - [`mod@mounts`]: hugetlbfs mounts (listing, checking a path, mounting, unmounting);
//! - [`thp`]: the transparent huge page settings;
//! - [`mod@populate`]: faulting in guest memory ahead of time, on several threads;
//! - [`status`]: a host-wide summary for `memvisor hugepages status`;
//! - [`error`]: the error type, whose messages say what went wrong and how to fix it.
//!
//! Most functions read or write sysfs/procfs and need root to change anything.
#![deny(missing_docs)]

pub mod error;
pub mod mounts;
pub mod pool;
pub mod populate;
pub mod reserve;
pub mod scratch;
pub mod size;
pub mod status;
pub mod thp;

pub use error::HugePageError;
pub use mounts::{
    mount, mount_info, mounts, parse_mounts, unmount, unmount_or_detach, HugetlbfsMount,
};
pub use pool::{check_pool, pool_status, reserve_command, set_pool_size, PoolChange, PoolStatus};
pub use populate::{
    populate, populate_with, populate_with_method, populate_write_supported, PopulateMethod,
    PopulateOptions, PopulateStats, ThreadStart,
};
pub use reserve::{lock_pools, PoolLock, PoolReservation};
pub use scratch::HugetlbfsScratch;
pub use size::{default_size, supported_sizes, HugePageSize};
pub use status::{host_status, status_text, HostHugePages};
pub use thp::{thp_defrag, thp_mode, ThpDefrag, ThpMode};
