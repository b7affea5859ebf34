//! Errors returned to the VMM.
//!
//! This module owns [`BalloonError`]. Malformed guest buffers are *not* errors: they are counted
//! in [`crate::BalloonCounters`] and the buffer is returned to the guest. Errors are reserved for
//! misuse by the VMM and for queue states the device cannot continue from.

use thiserror::Error;

/// Errors of the balloon device.
#[derive(Debug, Error)]
pub enum BalloonError {
    /// An operation needing an active device was called before `activate` (or after `reset`).
    #[error("the balloon device is not activated")]
    NotActivated,
    /// `activate` was called twice without a reset.
    #[error("the balloon device is already activated")]
    AlreadyActivated,
    /// `activate` got fewer queues than the negotiated features need.
    #[error("the negotiated features need {expected} queues, the transport provided {got}")]
    QueueCount {
        /// Queues the negotiated features need.
        expected: usize,
        /// Queues provided.
        got: usize,
    },
    /// A queue the negotiated features need was not set up by the driver.
    #[error("queue {0} is needed by the negotiated features but is not ready")]
    QueueNotReady(u16),
    /// The queue index does not exist for the negotiated features.
    #[error("queue index {index} does not exist: the negotiated features give {count} queues")]
    InvalidQueueIndex {
        /// The index asked for.
        index: u16,
        /// Number of queues in the current layout.
        count: u16,
    },
    /// The driver moved the available index more than a queue size ahead of the device.
    #[error(
        "queue {0}: the driver moved the available index more than the queue size ahead; \
         the device needs a reset"
    )]
    AvailIndexJump(u16),
    /// The device stopped processing after a driver protocol violation; the driver must reset it.
    #[error("the balloon device needs a reset after a driver protocol violation")]
    NeedsReset,
    /// Accessing a queue failed.
    #[error("queue {index}: {source}")]
    Queue {
        /// The queue index.
        index: u16,
        /// The underlying queue error.
        #[source]
        source: virtio_queue::Error,
    },
    /// Statistics cannot be switched on or off once the driver negotiated features.
    #[error(
        "cannot change the statistics polling interval from {from}s to {to}s: statistics \
         cannot be enabled or disabled after the driver negotiated features (only a non-zero \
         interval can be changed to another non-zero interval)"
    )]
    StatsStateChange {
        /// Current interval in seconds.
        from: u16,
        /// Requested interval in seconds.
        to: u16,
    },
}
