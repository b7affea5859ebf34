//! userfaultfd page serving for guest RAM regions.
//!
//! Guest RAM regions are host mappings (anonymous, memfd/shmem or hugetlbfs) that KVM accesses
//! on behalf of vCPUs. This crate registers them with a userfaultfd for missing-page faults and
//! either
//!
//! * serves the faults itself ([`start`]): one thread named `uffd-handler` fills each faulting
//!   [`HandlerConfig::fetch_unit`] block with zeros or with bytes from a guest memory image, or
//! * hands the userfaultfd to an external page-fault handler ([`hand_over`], or
//!   [`HandlerConnection`] to connect first) with Firecracker's handshake: one connection, one
//!   message of every region's mapping (JSON) with the one descriptor of them all attached;
//!   the hand-over returns once the handler has read it.
//!
//! The userfaultfd is always created **without** `UFFD_USER_MODE_ONLY`: with that flag, faults
//! raised inside the kernel (KVM accessing guest memory, `copy_to_user` of a `read(2)`) are not
//! delivered and fail instead. `UFFD_EVENT_REMOVE` is enabled, so ranges the balloon discards
//! (`MADV_DONTNEED` / `MADV_REMOVE`) are recorded and served as zero pages afterwards, never as
//! stale image bytes.
//!
//! The crate knows nothing about KVM; the caller keeps the mappings alive while they are
//! registered and stops the vCPUs before stopping the handler.

#![deny(missing_docs)]

mod error;
mod external;
mod handler;
mod handshake;
mod ioctl;
mod server;
mod stats;

pub use error::UffdError;
pub use external::{ExternalHandler, GuestRegionUffdMapping};
pub use handler::{ThreadStart, UffdHandler};
pub use handshake::{hand_over, HandlerConnection};
pub use stats::{LatencyHistogram, UffdStats};

use std::path::PathBuf;
use userfaultfd::{FeatureFlags, IoctlFlags, Uffd, UffdBuilder};

/// Base page size of anonymous and memfd/shmem regions.
pub const BASE_PAGE_SIZE: usize = 4096;
/// Huge page size of 2 MiB hugetlbfs regions; also the largest fetch unit.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// One guest RAM region: a host mapping and where its bytes start in the source image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// Host virtual address of the mapping (aligned to `page_size`).
    pub host_addr: usize,
    /// Length in bytes (a multiple of `page_size`).
    pub len: usize,
    /// 4096 for anonymous and memfd/shmem mappings; 2 MiB for hugetlbfs.
    pub page_size: usize,
    /// Offset in the source image where this region's bytes start (for an external handler:
    /// the `offset` sent, the region's place in the handler's memory file).
    pub source_offset: u64,
}

/// Where the bytes of never-touched pages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageSource {
    /// Every page starts as zeros.
    Zero,
    /// A guest memory image; bytes beyond the end of the file are zero.
    File {
        /// Path of the image.
        path: PathBuf,
    },
    /// A swap file the VMM wrote guest pages to before dropping them (in-VMM swap): only the
    /// pages marked in `in_file` are read from it, every other page is a zero page from the
    /// start. [`UffdHandler::fill_all`] brings every page still in the file back.
    Swap {
        /// Path of the swap file.
        path: PathBuf,
        /// Per region (in the order given to [`start`]), one bit per page (bit `p % 64` of
        /// word `p / 64`): the page's bytes are in the file at `source_offset + p * page_size`.
        in_file: Vec<Vec<u64>>,
    },
}

/// Configuration of the in-process handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerConfig {
    /// Source of page contents.
    pub source: PageSource,
    /// On a fault, the aligned block of this many bytes containing it (clipped to the region)
    /// is served, skipping pages already present. A power of two in 4 KiB..=2 MiB; for a
    /// region whose page size is larger, the page size is used instead.
    pub fetch_unit: usize,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig {
            source: PageSource::Zero,
            fetch_unit: BASE_PAGE_SIZE,
        }
    }
}

/// Creates the userfaultfd (kernel faults allowed), registers every region for missing faults,
/// and starts one handler thread named `uffd-handler`.
pub fn start(regions: Vec<RegionSpec>, config: HandlerConfig) -> Result<UffdHandler, UffdError> {
    start_with(regions, config, None)
}

/// As [`start`]; the handler thread first runs `thread_start` (e.g. installing a seccomp
/// filter) and serves nothing if it fails, which this returns as
/// [`UffdError::ThreadStart`].
pub fn start_with(
    regions: Vec<RegionSpec>,
    config: HandlerConfig,
    thread_start: Option<ThreadStart>,
) -> Result<UffdHandler, UffdError> {
    let fetch_unit = config.fetch_unit;
    if !fetch_unit.is_power_of_two() || !(BASE_PAGE_SIZE..=HUGE_PAGE_SIZE).contains(&fetch_unit) {
        return Err(UffdError::InvalidFetchUnit(fetch_unit));
    }
    validate_regions(&regions, HUGE_PAGE_SIZE)?;
    let (uffd, ioctls) = create_and_register(&regions)?;
    handler::spawn(uffd, regions, ioctls, config, thread_start)
}

/// Checks that a userfaultfd with the flags and features this crate uses can be created here.
///
/// Tests and the VMM's startup checks use it to report a clear reason instead of failing later.
pub fn available() -> Result<(), UffdError> {
    create_uffd(false).map(drop)
}

/// Validates region geometry: page sizes, alignment, no overlaps.
pub(crate) fn validate_regions(regions: &[RegionSpec], max_page: usize) -> Result<(), UffdError> {
    let invalid = |index: usize, reason: String| UffdError::InvalidRegion { index, reason };
    if regions.is_empty() {
        return Err(invalid(0, "no regions were given".into()));
    }
    for (index, r) in regions.iter().enumerate() {
        if !r.page_size.is_power_of_two() || r.page_size < BASE_PAGE_SIZE || r.page_size > max_page
        {
            return Err(invalid(
                index,
                format!(
                    "page size {} is not a power of two in {BASE_PAGE_SIZE}..={max_page}",
                    r.page_size
                ),
            ));
        }
        if r.len == 0 || r.len % r.page_size != 0 || r.host_addr % r.page_size != 0 {
            return Err(invalid(
                index,
                format!(
                    "address {:#x} and length {:#x} must be non-zero multiples of the page size {:#x}",
                    r.host_addr, r.len, r.page_size
                ),
            ));
        }
        if r.host_addr.checked_add(r.len).is_none() {
            return Err(invalid(index, "address + length overflows".into()));
        }
        for (other, o) in regions.iter().enumerate().take(index) {
            if r.host_addr < o.host_addr + o.len && o.host_addr < r.host_addr + r.len {
                return Err(invalid(index, format!("it overlaps region {other}")));
            }
        }
    }
    Ok(())
}

/// Creates the userfaultfd: close-on-exec, non-blocking, kernel faults delivered
/// (`user_mode_only(false)`), `UFFD_EVENT_REMOVE` and shmem (plus hugetlbfs if asked) missing
/// faults required.
pub(crate) fn create_uffd(hugetlb: bool) -> Result<Uffd, UffdError> {
    let mut features = FeatureFlags::EVENT_REMOVE | FeatureFlags::MISSING_SHMEM;
    if hugetlb {
        features |= FeatureFlags::MISSING_HUGETLBFS;
    }
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .require_features(features)
        .require_ioctls(IoctlFlags::REGISTER | IoctlFlags::UNREGISTER)
        .create()
        .map_err(|source| UffdError::Create { source })
}

/// Creates the userfaultfd and registers every region for missing faults; returns the ioctls
/// available on each region. On error the descriptor is closed, which undoes the registrations.
pub(crate) fn create_and_register(
    regions: &[RegionSpec],
) -> Result<(Uffd, Vec<IoctlFlags>), UffdError> {
    let uffd = create_uffd(regions.iter().any(|r| r.page_size > BASE_PAGE_SIZE))?;
    let mut ioctls = Vec::with_capacity(regions.len());
    for (index, r) in regions.iter().enumerate() {
        let flags = uffd
            .register(r.host_addr as *mut libc::c_void, r.len)
            .map_err(|source| UffdError::Register {
                index,
                addr: r.host_addr,
                len: r.len,
                source,
            })?;
        for (needed, name) in [
            (IoctlFlags::COPY, "UFFDIO_COPY"),
            (IoctlFlags::WAKE, "UFFDIO_WAKE"),
        ] {
            if !flags.contains(needed) {
                return Err(UffdError::MissingIoctl { index, ioctl: name });
            }
        }
        ioctls.push(flags);
    }
    Ok((uffd, ioctls))
}
