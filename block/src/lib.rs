//! virtio-blk device model (virtio 1.2, section 5.2). No KVM inside: the VMM wires it to a
//! transport and calls it from whichever thread handles queue notifications (a vCPU thread or a
//! device event thread: the device holds no thread of its own and does its I/O synchronously in
//! [`Block::process_queue`]).
//!
//! The device owns its queues once activated, reads and writes guest buffers only through
//! `vm-memory`, and reaches the image only through a [`DiskBackend`] (a raw image file,
//! [`RawImage`], or memory, [`MemDisk`]). Every request is checked before any I/O: a malformed
//! descriptor chain, a sector range past the end of the image, a buffer outside guest memory
//! or a write to a read-only disk gets an error status (`VIRTIO_BLK_S_IOERR` or
//! `VIRTIO_BLK_S_UNSUPP`) and a per-cause counter in [`BlockCounters`]; the backend is only
//! ever asked for byte ranges inside the image.
//!
//! Modules:
//! - [`features`]: feature bits offered and the configuration space layout.
//! - the `virtio-chain` crate: structural validation of descriptor chains (shared with `net`).
//! - [`request`]: parsing a chain into a request (header, data, status byte).
//! - `device`: the [`Block`] lifecycle and queue processing.
//! - [`backend`]: the [`DiskBackend`] trait, the raw image file and the in-memory disk.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
mod counters;
mod device;
mod error;
pub mod features;
pub mod request;

pub use backend::{DiskBackend, ImageError, MemDisk, RawImage};
pub use counters::BlockCounters;
pub use device::{Block, BlockOptions, BOUNCE_BYTES, QUEUE_MAX_SIZE};
pub use error::BlockError;
/// The trait of virtio device models (its methods are the device's transport-facing API).
pub use virtio_model::DeviceModel;

/// Bytes per virtio-blk sector (the unit of `sector` and `capacity`, whatever the block size).
pub const SECTOR_SIZE: u64 = 512;

#[cfg(test)]
mod tests {
    #[test]
    fn block_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<super::Block<super::RawImage>>();
        assert_send::<super::Block<super::MemDisk>>();
    }
}
