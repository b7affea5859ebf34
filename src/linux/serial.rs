//! The guest's console: a 16550 UART (`vm-superio`) at COM1 (ports 0x3F8-0x3FF, ISA IRQ 4,
//! Linux's `ttyS0`). Its interrupt line is an eventfd that KVM's in-kernel irqchip turns into
//! IRQ 4 (irqfd), so no VMM thread sits between the UART and the guest. What the guest writes
//! goes to the terminal (stdout) or to a file, flushed at every newline.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Ports of a 16550.
pub const COM_PORTS: u16 = 8;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;

/// An interrupt line backed by an eventfd (registered with KVM as an irqfd).
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console output goes.
pub enum ConsoleOut {
    /// The VMM's stdout.
    Stdout(io::Stdout),
    /// A file (created or truncated).
    File(io::BufWriter<File>),
    /// Kept in memory (tests).
    Memory(std::sync::Arc<Mutex<Vec<u8>>>),
}

impl ConsoleOut {
    /// Output to `path`, or stdout when `None`.
    pub fn open(path: Option<&Path>) -> io::Result<ConsoleOut> {
        Ok(match path {
            Some(p) => ConsoleOut::File(io::BufWriter::new(File::create(p)?)),
            None => ConsoleOut::Stdout(io::stdout()),
        })
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self {
            ConsoleOut::Stdout(s) => s.write(buf)?,
            ConsoleOut::File(f) => f.write(buf)?,
            ConsoleOut::Memory(m) => {
                m.lock().unwrap().extend_from_slice(buf);
                buf.len()
            }
        };
        if buf[..n].contains(&b'\n') {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ConsoleOut::Stdout(s) => s.flush(),
            ConsoleOut::File(f) => f.flush(),
            ConsoleOut::Memory(_) => Ok(()),
        }
    }
}

/// COM1.
pub struct SerialPort {
    uart: Mutex<Serial<IrqLine, NoEvents, ConsoleOut>>,
}

impl SerialPort {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: IrqLine, out: ConsoleOut) -> Self {
        SerialPort {
            uart: Mutex::new(Serial::new(irq, out)),
        }
    }

    /// Whether `port` is one of COM1's.
    pub fn claims(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + COM_PORTS).contains(&port)
    }

    /// A guest read of `port`.
    pub fn read(&self, port: u16) -> u8 {
        self.uart.lock().unwrap().read((port - COM1_BASE) as u8)
    }

    /// A guest write of `value` to `port`.
    pub fn write(&self, port: u16, value: u8) {
        if let Err(e) = self
            .uart
            .lock()
            .unwrap()
            .write((port - COM1_BASE) as u8, value)
        {
            log::warn!("serial: {e:?}");
        }
    }

    /// Bytes typed into the guest's console; returns how many fit the receive FIFO.
    pub fn input(&self, bytes: &[u8]) -> usize {
        self.uart
            .lock()
            .unwrap()
            .enqueue_raw_bytes(bytes)
            .unwrap_or(0)
    }

    /// Flushes buffered output.
    pub fn flush(&self) {
        let _ = self.uart.lock().unwrap().writer_mut().flush();
    }
}

/// Puts the terminal on stdin into non-canonical, no-echo mode (the guest echoes) while keeping
/// signals, so Ctrl-C still stops memvisor; restores it on drop.
pub struct RawTerminal(libc::termios);

impl RawTerminal {
    /// `None` when stdin is not a terminal.
    pub fn enter() -> Option<RawTerminal> {
        // SAFETY: an all-zero termios is a valid buffer for tcgetattr to fill.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid termios pointer; tcgetattr fails cleanly on a non-terminal.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_iflag &= !libc::ICRNL;
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: as above, with the termios read from this terminal.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

/// Forwards what is typed on stdin to the guest's console, on a thread of its own (it blocks in
/// `read` and ends with the process or at end of input).
pub fn forward_stdin(port: std::sync::Arc<SerialPort>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let k = port.input(rest);
                    rest = &rest[k..];
                    if k == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn output_reaches_the_sink_and_thr_interrupt_fires() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let port = SerialPort::new(
            IrqLine(evt.try_clone().unwrap()),
            ConsoleOut::Memory(buf.clone()),
        );
        // Enable the THR-empty interrupt (IER bit 1), then send.
        port.write(COM1_BASE + 1, 0x2);
        for b in b"Linux version 6.1\n" {
            port.write(COM1_BASE, *b);
        }
        assert_eq!(&buf.lock().unwrap()[..], b"Linux version 6.1\n");
        assert!(
            evt.read().unwrap() >= 1,
            "interrupt raised through the eventfd"
        );
        assert!(SerialPort::claims(0x3f8) && SerialPort::claims(0x3ff));
        assert!(!SerialPort::claims(0x2f8) && !SerialPort::claims(0x400));
        // Input: LSR data-ready once bytes are queued.
        assert_eq!(port.input(b"ls\n"), 3);
        assert_eq!(port.read(COM1_BASE + 5) & 1, 1);
        assert_eq!(port.read(COM1_BASE), b'l');
    }
}
