//! What connects a virtio transport to the device event thread ([`super::event_thread`]): one
//! eventfd per queue, which KVM signals when the guest writes the queue's notification address
//! (an ioeventfd, `KVM_IOEVENTFD`), and a command queue with its own eventfd through which other
//! threads (the API) have work done on the device thread.
//!
//! A transport with a [`DeviceLink`] attached never processes a queue itself: a notification
//! that still reaches it as an exit (no ioeventfd registered for that address), and the queues
//! it must look at when the driver sets DRIVER_OK, are handed to the event thread by signalling
//! the queue's eventfd. Without a link (unit tests of a transport alone) it processes inline.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Work sent to the device thread.
pub type Command = Box<dyn FnOnce() + Send>;

/// How long a command waits for the device thread before giving up (the thread is stuck or
/// gone; the caller then gets an error instead of hanging).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where ioeventfds are registered: KVM ([`crate::devices::pci::KvmIrq`]), or a recorder in
/// tests.
pub trait IoeventRegistrar: Send + Sync {
    /// Signal `fd` when the guest writes to guest-physical `addr` (only writes of exactly the
    /// 32-bit value `datamatch`, when given; any width and value otherwise).
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> io::Result<()>;
    /// Undoes [`IoeventRegistrar::register`] with the same arguments.
    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> io::Result<()>;
}

/// The eventfds and command queue between one device's transport and the event thread.
pub struct DeviceLink {
    queues: Vec<EventFd>,
    commands: Mutex<Sender<Command>>,
    pending: Mutex<Option<Receiver<Command>>>,
    command_fd: EventFd,
    /// Queue notifications the transport saw as exits and forwarded (0 when every notification
    /// arrives through an ioeventfd).
    forwarded: AtomicU64,
    /// Queue eventfd wake-ups the event thread handled.
    received: AtomicU64,
}

/// The command queue could not reach the device thread.
#[derive(Debug, thiserror::Error)]
#[error("the device thread did not answer within {0:?} (it is stuck or has stopped); the VM's devices no longer run: stop the VM")]
pub struct DeviceThreadGone(Duration);

impl DeviceLink {
    /// A link for a device with `queues` queues.
    pub fn new(queues: usize) -> io::Result<DeviceLink> {
        let (tx, rx) = mpsc::channel();
        Ok(DeviceLink {
            queues: (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
            commands: Mutex::new(tx),
            pending: Mutex::new(Some(rx)),
            command_fd: EventFd::new(EFD_NONBLOCK)?,
            forwarded: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    /// Number of queue eventfds.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The eventfd of queue `index`.
    pub fn queue_fd(&self, index: usize) -> Option<&EventFd> {
        self.queues.get(index)
    }

    /// Hands queue `index` to the event thread (as KVM does for an ioeventfd).
    pub fn signal_queue(&self, index: u16) {
        if let Some(fd) = self.queues.get(usize::from(index)) {
            if let Err(e) = fd.write(1) {
                log::warn!("queue {index}: cannot signal the device thread: {e}");
            }
        }
    }

    /// A notification that reached the transport as an exit: forwarded and counted.
    pub fn forward_notification(&self, index: u16) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.signal_queue(index);
    }

    /// Queue notifications that arrived as exits instead of through an ioeventfd.
    pub fn forwarded_notifications(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Counts a queue eventfd wake-up handled by the event thread.
    pub fn note_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Queue eventfd wake-ups the event thread handled (ioeventfds and forwarded ones).
    pub fn received_notifications(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The eventfd the event thread watches for commands.
    pub fn command_fd(&self) -> &EventFd {
        &self.command_fd
    }

    /// The receiving end of the command queue, for the event thread (once).
    pub fn take_commands(&self) -> Option<Receiver<Command>> {
        self.pending.lock().unwrap().take()
    }

    /// Runs `f` on the device thread and returns its result.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, DeviceThreadGone> {
        let (tx, rx) = mpsc::sync_channel(1);
        let cmd: Command = Box::new(move || {
            let _ = tx.send(f());
        });
        let sent = self.commands.lock().unwrap().send(cmd).is_ok();
        if sent {
            if let Err(e) = self.command_fd.write(1) {
                log::warn!("cannot wake the device thread: {e}");
            }
        }
        rx.recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| DeviceThreadGone(COMMAND_TIMEOUT))
    }
}
