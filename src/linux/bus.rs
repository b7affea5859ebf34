//! The port-I/O and MMIO bus of a Linux guest: COM1, the i8042's reset line, a CMOS real-time
//! clock, the POST port, and plugged-in buses (a PCI bus, the balloon's virtio-mmio window) that
//! are asked in order for anything else. KVM's in-kernel irqchip and PIT answer their own ports
//! (0x20/0xA0, 0x40-0x43, 0x61) without exits.
//!
//! A PCI bus ([`crate::devices::pci::PciBus`]) plugs in as any other [`Bus`]: it claims
//! 0xCF8-0xCFF and its BARs' MMIO ranges, and raises MSI-X through KVM's irqchip.

use super::serial::SerialPort;
use crate::devices::Bus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vm_superio::{I8042Device, Trigger};

/// i8042 data port.
pub const I8042_DATA: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND: u16 = 0x64;
/// CMOS index port.
pub const CMOS_INDEX: u16 = 0x70;
/// CMOS data port.
pub const CMOS_DATA: u16 = 0x71;
/// POST code port (also used by Linux as an I/O delay).
pub const POST_PORT: u16 = 0x80;

/// Set when the guest pulses the CPU reset line through the i8042 (`reboot=k`).
#[derive(Clone, Debug, Default)]
pub struct ResetLine(pub Arc<AtomicBool>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

/// The devices of a Linux guest.
pub struct LinuxBus {
    serial: Arc<SerialPort>,
    i8042: Mutex<I8042Device<ResetLine>>,
    reset: ResetLine,
    cmos: Mutex<Cmos>,
    plugged: Vec<Arc<dyn Bus>>,
}

impl LinuxBus {
    /// A bus with COM1 and the legacy devices, then `plugged` in order.
    pub fn new(serial: Arc<SerialPort>, plugged: Vec<Arc<dyn Bus>>) -> Self {
        let reset = ResetLine::default();
        LinuxBus {
            serial,
            i8042: Mutex::new(I8042Device::new(reset.clone())),
            reset,
            cmos: Mutex::new(Cmos::default()),
            plugged,
        }
    }

    /// Whether the guest asked for a reset through the i8042 (consumes the request).
    pub fn take_reset(&self) -> bool {
        self.reset.0.swap(false, Ordering::AcqRel)
    }

    /// The console.
    pub fn serial(&self) -> &Arc<SerialPort> {
        &self.serial
    }
}

impl Bus for LinuxBus {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        let v = match port {
            p if SerialPort::claims(p) => self.serial.read(p),
            I8042_DATA | I8042_COMMAND => {
                self.i8042.lock().unwrap().read((port - I8042_DATA) as u8)
            }
            CMOS_INDEX => 0xff,
            CMOS_DATA => self.cmos.lock().unwrap().read(),
            POST_PORT => 0,
            _ => return self.plugged.iter().any(|b| b.pio_read(port, data)),
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
        true
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        let v = data.first().copied().unwrap_or(0);
        match port {
            p if SerialPort::claims(p) => self.serial.write(p, v),
            I8042_DATA | I8042_COMMAND => {
                let _ = self
                    .i8042
                    .lock()
                    .unwrap()
                    .write((port - I8042_DATA) as u8, v);
            }
            CMOS_INDEX => self.cmos.lock().unwrap().index = v & 0x7f,
            CMOS_DATA => {}
            POST_PORT => {}
            _ => return self.plugged.iter().any(|b| b.pio_write(port, data)),
        }
        true
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.plugged.iter().any(|b| b.mmio_read(addr, data))
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.plugged.iter().any(|b| b.mmio_write(addr, data))
    }
}

/// A read-only MC146818 CMOS clock showing the host's UTC time: enough for the guest's RTC
/// driver and its "update in progress" polling (which must see that bit clear).
#[derive(Debug, Default)]
pub struct Cmos {
    /// Selected register.
    pub index: u8,
}

impl Cmos {
    /// The selected register.
    pub fn read(&self) -> u8 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        cmos_register(self.index, now)
    }
}

fn bcd(v: u64) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Register `index` of a CMOS clock at `unix` seconds (BCD, 24-hour mode).
pub fn cmos_register(index: u8, unix: u64) -> u8 {
    let days = unix / 86400;
    let secs = unix % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    match index {
        0x00 => bcd(secs % 60),
        0x02 => bcd(secs / 60 % 60),
        0x04 => bcd(secs / 3600),
        0x06 => bcd((days + 4) % 7 + 1), // 1970-01-01 was a Thursday (day 5, Sunday = 1)
        0x07 => bcd(d as u64),
        0x08 => bcd(m as u64),
        0x09 => bcd((y % 100) as u64),
        0x0a => 0x26, // divider on, 1024 Hz, update-in-progress clear
        0x0b => 0x02, // 24-hour mode, BCD
        0x0d => 0x80, // valid RAM and time
        0x32 => bcd((y / 100) as u64),
        _ => 0,
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::serial::{ConsoleOut, IrqLine};
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn cmos_clock_in_bcd() {
        // 2024-02-29 13:45:07 UTC, a Thursday.
        let t = 1_709_214_307;
        assert_eq!(cmos_register(0x00, t), 0x07);
        assert_eq!(cmos_register(0x02, t), 0x45);
        assert_eq!(cmos_register(0x04, t), 0x13);
        assert_eq!(cmos_register(0x07, t), 0x29);
        assert_eq!(cmos_register(0x08, t), 0x02);
        assert_eq!(cmos_register(0x09, t), 0x24);
        assert_eq!(cmos_register(0x32, t), 0x20);
        assert_eq!(cmos_register(0x06, t), 5);
        assert_eq!(cmos_register(0x0a, t) & 0x80, 0, "no update in progress");
    }

    struct Recorder(Mutex<Vec<u16>>);
    impl Bus for Recorder {
        fn pio_write(&self, port: u16, _: &[u8]) -> bool {
            self.0.lock().unwrap().push(port);
            port == 0xcf8
        }
    }

    #[test]
    fn legacy_ports_reset_line_and_plugged_buses() {
        let serial = Arc::new(SerialPort::new(
            IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            ConsoleOut::Memory(Default::default()),
        ));
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let bus = LinuxBus::new(serial, vec![rec.clone()]);
        let mut b = [0xffu8; 1];
        assert!(bus.pio_read(I8042_COMMAND, &mut b));
        assert_eq!(b[0], 0, "i8042 status: input buffer empty");
        assert!(!bus.take_reset());
        assert!(bus.pio_write(I8042_COMMAND, &[0xfe]));
        assert!(bus.take_reset(), "0xFE on 0x64 pulses reset");
        assert!(!bus.take_reset(), "consumed");
        assert!(bus.pio_write(CMOS_INDEX, &[0x8a]));
        assert!(bus.pio_read(CMOS_DATA, &mut b));
        assert_eq!(b[0], 0x26, "index with the NMI bit masked off");
        assert!(bus.pio_write(0xcf8, &[0, 0, 0, 0x80]), "plugged bus claims");
        assert!(!bus.pio_write(0x1234, &[0]), "nobody claims");
        assert_eq!(*rec.0.lock().unwrap(), [0xcf8, 0x1234]);
        assert!(!bus.mmio_read(0xd000_0000, &mut [0; 4]));
    }
}
