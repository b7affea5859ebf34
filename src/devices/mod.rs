//! Devices and the bus that routes port-I/O and MMIO exits to them.

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
}

/// A bus with no devices.
#[derive(Debug, Default)]
pub struct NoDevices;

impl Bus for NoDevices {}
