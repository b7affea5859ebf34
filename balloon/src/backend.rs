//! The interface between the device and the VMM's memory module.
//!
//! This module owns the [`MemoryBackend`] trait: the only way the device affects host memory.
//! The device never touches host mappings itself; it validates what the guest sent and then asks
//! the backend to discard or reclaim guest-physical ranges.

/// What the device asks of the VMM's memory module. All ranges are guest-physical, 4K aligned.
///
/// The device only calls [`MemoryBackend::discard`] and [`MemoryBackend::reclaim`] for ranges
/// for which [`MemoryBackend::is_ram`] returned `true`.
pub trait MemoryBackend {
    /// true if [gpa, gpa+len) lies entirely inside guest RAM (not in a hole, not outside)
    fn is_ram(&self, gpa: u64, len: u64) -> bool;
    /// give the host memory behind the range back; returns bytes the host really freed (may be
    /// less, e.g. partly covered huge pages)
    fn discard(&self, gpa: u64, len: u64) -> Result<u64, String>;
    /// the range is usable by the guest again (deflate); the backend may populate it
    fn reclaim(&self, gpa: u64, len: u64) -> Result<(), String>;
}
