//! virtio-balloon device model (virtio 1.2, section 5.5). No KVM inside: the VMM wires it to a
//! transport, eventfds and the memory module.
//!
//! The device is pure: it owns the virtio queues once activated, reads guest buffers through
//! `vm-memory`, and acts on host memory only through a [`MemoryBackend`]. Malformed or hostile
//! guest input is counted in [`BalloonCounters`] and logged at a limited rate; it never panics
//! the VMM or makes the device touch memory outside guest RAM.
//!
//! Modules:
//! - [`features`]: feature bits and the queue layout for negotiated features.
//! - [`config`]: configuration space layout and access rules.
//! - `device`: the [`Balloon`] lifecycle and host-side controls.
//! - `queues`: inflate/deflate/stats/reporting queue processing.
//! - `chain`: structural validation of descriptor chains.
//! - [`ranges`]: PFN compaction and RAM filtering.
//! - [`stats`]: the statistics wire format.
//! - [`ratelimit`]: rate limiting of guest-triggered log lines.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod chain;
pub mod config;
mod counters;
mod device;
mod error;
pub mod features;
mod options;
mod queues;
pub mod ranges;
pub mod ratelimit;
pub mod stats;

pub use backend::MemoryBackend;
pub use counters::BalloonCounters;
pub use device::{Balloon, PAGES_PER_MIB};
pub use error::BalloonError;
pub use features::{QueueKind, QueueLayout};
pub use options::BalloonOptions;
pub use queues::{
    MAX_PFNS_PER_DESCRIPTOR, MAX_PFN_CHAIN_DESCRIPTORS, MAX_REPORTING_CHAIN_DESCRIPTORS,
    MAX_STATS_CHAIN_DESCRIPTORS, MAX_STATS_DESCRIPTOR_LEN,
};
pub use stats::BalloonStats;
/// The trait of virtio device models (its methods are the device's transport-facing API).
pub use virtio_model::DeviceModel;

#[cfg(test)]
mod tests {
    #[test]
    fn balloon_can_move_between_and_be_shared_by_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Balloon>();
    }
}
