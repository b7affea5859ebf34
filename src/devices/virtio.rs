//! What a transport needs of a virtio device model.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// A virtio device model as a transport drives it.
pub trait VirtioDevice: Send {
    /// Virtio device id.
    fn device_type(&self) -> u32;
    /// Features offered.
    fn avail_features(&self) -> u64;
    /// The features the driver accepts now: both 32-bit words as last written (bits not offered
    /// included, for the device to count). Replaces what an earlier call passed.
    fn ack_features(&mut self, features: u64);
    /// Maximum size of each queue the device may use.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Size of the device-specific configuration space in bytes (what a transport exposes).
    fn config_len(&self) -> u64;
    /// Config-space read.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Config-space write.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK with these queues.
    fn activate(&mut self, queues: Vec<Queue>) -> Result<(), String>;
    /// The driver reset the device.
    fn reset(&mut self);
    /// The driver notified queue `index`; returns whether the used ring changed.
    fn process_queue(&mut self, index: u16, mem: &GuestMemoryMmap) -> Result<bool, String>;
    /// The device is in an error state only a reset clears.
    fn needs_reset(&self) -> bool {
        false
    }
}
