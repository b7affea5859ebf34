//! What a virtio device model offers the transport that drives it: the [`DeviceModel`] trait.
//!
//! The device crates of this workspace (`balloon`, `block`, `net`) implement it, so the VMM
//! wraps any of them for its transports (virtio-mmio, virtio-pci) with one adaptor instead of one
//! hand-written delegation per device. It knows nothing of KVM, transports or threads: the
//! model gets its queues at activation and processes one queue when asked, through the guest
//! memory object it is given.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use virtio_queue::Queue;
use vm_memory::GuestMemory;

/// A virtio device model, as a transport drives it (virtio 1.2 §2 and §3: features, the
/// device configuration space, the driver's queues, reset).
pub trait DeviceModel: Send {
    /// Why an activation or a queue failed (logged by the transport).
    type Error: std::fmt::Display;
    /// What processing a queue needs besides guest memory (the balloon: where inflated
    /// memory goes; a disk: nothing, its image is its own).
    type Backend: ?Sized;

    /// virtio device id.
    fn device_type(&self) -> u32;
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepts: the whole current set (both 32-bit words as
    /// last written, bits not offered included, for the device to drop and count). Replaces
    /// what an earlier call passed.
    fn ack_features(&mut self, acked: u64);
    /// Maximum size of each queue the device may use.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Size of the device-specific configuration space in bytes.
    fn config_len(&self) -> u64;
    /// Reads the configuration space; bad offsets or lengths zero-fill `data` (and are counted).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; what is not writable is ignored (and counted).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start with the queues it set up, in index order.
    fn activate(&mut self, queues: Vec<Queue>) -> Result<(), Self::Error>;
    /// The driver reset the device.
    fn reset(&mut self);
    /// The device stopped after a driver protocol violation; only a reset clears it.
    fn needs_reset(&self) -> bool;
    /// Processes the available buffers of queue `index`; returns whether the used ring
    /// changed (the transport then interrupts the driver).
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        mem: &M,
        backend: &Self::Backend,
    ) -> Result<bool, Self::Error>;
}
