//! What a transport needs of a virtio device ([`VirtioDevice`]), and the adaptor that makes
//! one of any device model crate's [`DeviceModel`] ([`ModelDevice`]).

pub use virtio_model::DeviceModel;
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

/// A device made of a model crate's [`DeviceModel`] (the `balloon`, `block` and `net` crates'
/// models) and what its queue processing needs: every such device is a [`VirtioDevice`]
/// through the one blanket implementation below, so a new device kind writes these two
/// methods instead of the whole delegation.
pub trait ModelDevice: Send {
    /// The device model.
    type Model: DeviceModel;
    /// The model.
    fn model(&self) -> &Self::Model;
    /// The model, mutably, with the backend its queue processing uses.
    fn model_and_backend(&mut self) -> (&mut Self::Model, &<Self::Model as DeviceModel>::Backend);
}

impl<T: ModelDevice> VirtioDevice for T {
    fn device_type(&self) -> u32 {
        self.model().device_type()
    }
    fn avail_features(&self) -> u64 {
        self.model().avail_features()
    }
    fn ack_features(&mut self, features: u64) {
        self.model_and_backend().0.ack_features(features)
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        self.model().queue_max_sizes()
    }
    fn config_len(&self) -> u64 {
        self.model().config_len()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.model().read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.model_and_backend().0.write_config(offset, data)
    }
    fn activate(&mut self, queues: Vec<Queue>) -> Result<(), String> {
        self.model_and_backend()
            .0
            .activate(queues)
            .map_err(|e| e.to_string())
    }
    fn reset(&mut self) {
        self.model_and_backend().0.reset()
    }
    fn process_queue(&mut self, index: u16, mem: &GuestMemoryMmap) -> Result<bool, String> {
        let (model, backend) = self.model_and_backend();
        model
            .process_queue(index, mem, backend)
            .map_err(|e| e.to_string())
    }
    fn needs_reset(&self) -> bool {
        self.model().needs_reset()
    }
}
