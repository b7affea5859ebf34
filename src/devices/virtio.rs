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

/// Implements [`VirtioDevice`] for a type whose `model` field is a device model with the usual
/// methods (`device_type`, `avail_features`, `ack_features`, `queue_max_sizes`, `config_len`,
/// `read_config`, `write_config`, `activate`, `reset`, `process_queue(index, mem)`,
/// `needs_reset`; errors displayed): the disks and the network interfaces.
macro_rules! virtio_device_for_model {
    ($ty:ty) => {
        impl $crate::devices::virtio::VirtioDevice for $ty {
            fn device_type(&self) -> u32 {
                self.model.device_type()
            }
            fn avail_features(&self) -> u64 {
                self.model.avail_features()
            }
            fn ack_features(&mut self, features: u64) {
                self.model.ack_features(features)
            }
            fn queue_max_sizes(&self) -> Vec<u16> {
                self.model.queue_max_sizes()
            }
            fn config_len(&self) -> u64 {
                self.model.config_len()
            }
            fn read_config(&self, offset: u64, data: &mut [u8]) {
                self.model.read_config(offset, data)
            }
            fn write_config(&mut self, offset: u64, data: &[u8]) {
                self.model.write_config(offset, data)
            }
            fn activate(&mut self, queues: Vec<virtio_queue::Queue>) -> Result<(), String> {
                self.model.activate(queues).map_err(|e| e.to_string())
            }
            fn reset(&mut self) {
                self.model.reset()
            }
            fn process_queue(
                &mut self,
                index: u16,
                mem: &vm_memory::GuestMemoryMmap,
            ) -> Result<bool, String> {
                self.model
                    .process_queue(index, mem)
                    .map_err(|e| e.to_string())
            }
            fn needs_reset(&self) -> bool {
                self.model.needs_reset()
            }
        }
    };
}
pub(crate) use virtio_device_for_model;
