//! Errors returned to the VMM.
//!
//! This module owns [`BlockError`]. Malformed guest requests are *not* errors: they get an
//! error status in the guest's status byte and a counter ([`crate::BlockCounters`]). Errors are
//! reserved for misuse by the VMM and for queue states the device cannot continue from.

use thiserror::Error;

/// Errors of the block device.
#[derive(Debug, Error)]
pub enum BlockError {
    /// An operation needing an active device was called before `activate` (or after `reset`).
    #[error("the block device is not activated: the driver has not set DRIVER_OK")]
    NotActivated,
    /// `activate` was called twice without a reset.
    #[error("the block device is already activated; reset it first")]
    AlreadyActivated,
    /// `activate` got no queue, or the request queue is not ready.
    #[error("the block device needs its request queue (queue 0) set up and enabled by the driver")]
    QueueNotReady,
    /// A queue index other than 0.
    #[error("queue index {0} does not exist: the block device has one request queue (0)")]
    InvalidQueueIndex(u16),
    /// The driver moved the available index more than a queue size ahead of the device.
    #[error(
        "the driver moved the available index more than the queue size ahead; the device \
         needs a reset"
    )]
    AvailIndexJump,
    /// The device stopped processing after a driver protocol violation; the driver must reset it.
    #[error("the block device needs a reset after a driver protocol violation")]
    NeedsReset,
    /// Accessing the queue failed.
    #[error("request queue: {0}")]
    Queue(#[source] virtio_queue::Error),
}
