//! virtio-net device model (virtio 1.2, section 5.1) over a tap device. No KVM inside: the VMM
//! wires it to a transport and calls it from the device event thread, on queue notifications
//! ([`Net::process_queue`]) and when the tap has frames to read ([`Net::receive`]); the device
//! holds no thread of its own.
//!
//! The device owns its two queues (receiveq1, transmitq1) once activated, reads and writes
//! guest buffers only through `vm-memory`, and reaches the host network only through a
//! [`NetBackend`] (a [`Tap`], or [`MemBackend`] in tests and fuzzing). Frames pass through with
//! the 12-byte `virtio_net_hdr_v1` in front, as the tap (opened with `IFF_VNET_HDR`,
//! `TUNSETVNETHDRSZ` 12) expects; no offload is negotiated (see [`features`]). Every chain is
//! checked before any I/O: a malformed chain, a buffer outside guest memory, a frame too large
//! for the chain the driver gave or a transmit frame over [`MAX_FRAME_BYTES`] is refused and
//! counted by cause in [`NetCounters`]; nothing is ever written outside the chain's
//! device-writable buffers.
//!
//! Modules:
//! - [`features`]: feature bits offered and the configuration space layout.
//! - `device`: the [`Net`] lifecycle, transmit and receive.
//! - [`backend`]: the [`NetBackend`] trait and the in-memory backend.
//! - [`tap`]: opening `/dev/net/tun` as a tap ([`Tap`]).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
mod counters;
mod device;
mod error;
pub mod features;
pub mod tap;

pub use backend::{MemBackend, NetBackend};
pub use counters::NetCounters;
pub use device::{Net, NetOptions, QUEUE_MAX_SIZE, RX_QUEUE, TX_QUEUE};
pub use error::NetError;
pub use tap::{Tap, TapError};
pub use virtio_model::DeviceModel;

/// Size of `struct virtio_net_hdr_v1` (the header in front of every frame, both ways).
pub const HDR_BYTES: usize = 12;
/// Largest frame the device moves, header included: a 65535-byte packet with its Ethernet
/// header (14 bytes) and one spare byte, after the 12-byte header (what Linux's tap accepts).
pub const MAX_FRAME_BYTES: usize = HDR_BYTES + 65550;
/// Smallest transmit frame: the header and an Ethernet header.
pub const MIN_TX_FRAME_BYTES: usize = HDR_BYTES + 14;

#[cfg(test)]
mod tests {
    #[test]
    fn net_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<super::Net<super::Tap>>();
        assert_send::<super::Net<super::MemBackend>>();
    }
}
