//! Devices and the bus that routes port-I/O and MMIO exits to them; the device event thread
//! ([`event_thread`]) that processes their queues, timers and commands off the vCPU threads,
//! the eventfd link between it and the transports ([`events`]) and what a device needs to be
//! served by it ([`queue_events`]).

pub mod balloon;
pub mod block;
pub mod event_thread;
pub mod events;
pub mod net;
pub mod pci;
pub mod queue_events;
pub mod virtio;
pub mod virtio_mmio;
pub mod virtio_transport;

/// Where vCPU threads send the port and MMIO accesses the guest makes. Each method returns
/// whether a device claimed the access; unclaimed reads see all-ones, unclaimed writes are
/// dropped (and counted by the vCPU).
pub trait Bus: Send + Sync {
    /// Port read.
    fn pio_read(&self, _port: u16, _data: &mut [u8]) -> bool {
        false
    }
    /// Port write.
    fn pio_write(&self, _port: u16, _data: &[u8]) -> bool {
        false
    }
    /// MMIO read.
    fn mmio_read(&self, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }
    /// MMIO write.
    fn mmio_write(&self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
    /// Blocks until a device raises an interrupt or `timeout` passes; returns the pending bits.
    fn wait_event(&self, timeout: std::time::Duration) -> u32 {
        std::thread::sleep(timeout.min(std::time::Duration::from_millis(10)));
        0
    }
}

/// The devices of a VM running the built-in guest: an optional virtio-mmio balloon.
pub struct VmBus {
    /// The balloon, if configured.
    pub balloon: Option<std::sync::Arc<virtio_mmio::MmioTransport<balloon::BalloonDevice>>>,
    ram: std::sync::Arc<crate::memory::GuestRam>,
}

impl VmBus {
    /// A bus over `ram` with the given balloon.
    pub fn new(
        ram: std::sync::Arc<crate::memory::GuestRam>,
        balloon: Option<std::sync::Arc<virtio_mmio::MmioTransport<balloon::BalloonDevice>>>,
    ) -> Self {
        VmBus { balloon, ram }
    }
}

impl Bus for VmBus {
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match &self.balloon {
            Some(b) if b.contains(addr) => {
                b.read(addr, data);
                true
            }
            _ => false,
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match &self.balloon {
            Some(b) if b.contains(addr) => {
                b.write(addr, data, self.ram.memory());
                true
            }
            _ => false,
        }
    }

    fn wait_event(&self, timeout: std::time::Duration) -> u32 {
        match &self.balloon {
            Some(b) => b.wait_event(timeout),
            None => {
                std::thread::sleep(timeout.min(std::time::Duration::from_millis(10)));
                0
            }
        }
    }
}

/// A bus with no devices.
#[derive(Debug, Default)]
pub struct NoDevices;

impl Bus for NoDevices {}
