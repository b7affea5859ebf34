//! Errors returned to the VMM.
//!
//! This module owns [`NetError`]. Malformed guest chains are *not* errors: they are refused and
//! counted ([`crate::NetCounters`]). Errors are reserved for misuse by the VMM and for queue
//! states the device cannot continue from.

use thiserror::Error;

/// Errors of the net device.
#[derive(Debug, Error)]
pub enum NetError {
    /// An operation needing an active device was called before `activate` (or after `reset`).
    #[error("the net device is not activated: the driver has not set DRIVER_OK")]
    NotActivated,
    /// `activate` was called twice without a reset.
    #[error("the net device is already activated; reset it first")]
    AlreadyActivated,
    /// `activate` did not get both queues ready.
    #[error("the net device needs its receive (0) and transmit (1) queues set up and enabled by the driver")]
    QueuesNotReady,
    /// A queue index other than 0 and 1.
    #[error(
        "queue index {0} does not exist: the net device has a receive (0) and a transmit (1) queue"
    )]
    InvalidQueueIndex(u16),
    /// The driver moved the available index more than a queue size ahead of the device.
    #[error("the driver moved the available index of queue {0} more than the queue size ahead; the device needs a reset")]
    AvailIndexJump(u16),
    /// The device stopped processing after a driver protocol violation; the driver must reset it.
    #[error("the net device needs a reset after a driver protocol violation")]
    NeedsReset,
    /// Accessing a queue failed.
    #[error("queue {0}: {1}")]
    Queue(u16, #[source] virtio_queue::Error),
}
