//! What a device needs to be served by the device event thread ([`super::event_thread`]):
//! the building blocks of its event-manager subscriber.
//!
//! - [`LinkEvents`]: the events every virtio device has, those of its [`DeviceLink`]: one
//!   eventfd per queue (fed by KVM's ioeventfds) and the command queue. A subscriber registers
//!   them with [`LinkEvents::init`] and hands each event to [`LinkEvents::handle`], which reads
//!   the eventfd, runs commands, and says which queue (if any) the device should process. Event
//!   data `0..queues` are the queues, [`DATA_COMMANDS`] the command queue; a subscriber's own
//!   descriptors (a timer, a tap) use data from [`FIRST_OWN_DATA`] up.
//! - [`QueueTransport`]: a transport (virtio-pci or virtio-mmio) that processes one queue of
//!   its device when the thread saw that queue's eventfd, and raises the interrupt that needs.
//! - [`QueueEvents`]: the subscriber of a device that needs nothing else ("queue N notified →
//!   process queue N → interrupt if needed"): the disks. Devices with more to watch (the
//!   balloon's statistics timer, a network device's tap) write their own subscriber around a
//!   [`LinkEvents`] (see `BalloonEvents` in [`super::balloon`]).
//!
//! Adding a device kind to the thread: attach a link to its transport
//! ([`super::pci::VirtioPciDevice::attach_link`], which registers the ioeventfds and moves them
//! with the BAR), build a subscriber ([`QueueEvents::new`] or your own around
//! [`LinkEvents::new`]) and put it in the list given to
//! [`super::event_thread::DeviceThread::start`].

use super::event_thread::DeviceThreadError;
use super::events::{Command, DeviceLink};
use crate::memory::GuestRam;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// Event data of a link's command eventfd (queue eventfds use their queue index).
pub const DATA_COMMANDS: u32 = 1 << 16;
/// The first event data value a subscriber may use for descriptors of its own.
pub const FIRST_OWN_DATA: u32 = DATA_COMMANDS + 1;

/// Watches `fd` for input, with `data` as its event data; a failure is logged (the thread then
/// never sees that descriptor: the device's notifications are lost, not the VM).
pub fn watch(ops: &mut EventOps, fd: &dyn AsRawFd, data: u32) {
    if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), data, EventSet::IN)) {
        log::error!("device event thread: cannot watch descriptor {data:#x}: {e:?}");
    }
}

/// What an event of a [`LinkEvents`] was.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Queue `n`'s eventfd fired (consumed and counted): process the queue.
    Queue(u16),
    /// Handled here (commands run, or a spurious wake-up): nothing left to do.
    Done,
    /// Not one of the link's events: the subscriber's own (data at or above
    /// [`FIRST_OWN_DATA`]).
    Own(u32),
}

/// The queue eventfds and command queue of one device, as its subscriber sees them.
pub struct LinkEvents {
    link: Arc<DeviceLink>,
    commands: Receiver<Command>,
}

impl LinkEvents {
    /// Takes `link`'s command queue; fails if another thread serves it already.
    pub fn new(link: Arc<DeviceLink>) -> Result<LinkEvents, DeviceThreadError> {
        let commands = link
            .take_commands()
            .ok_or(DeviceThreadError::AlreadyServed)?;
        Ok(LinkEvents { link, commands })
    }

    /// The link.
    pub fn link(&self) -> &Arc<DeviceLink> {
        &self.link
    }

    /// Watches the queue eventfds and the command eventfd.
    pub fn init(&self, ops: &mut EventOps) {
        for q in 0..self.link.queue_count() {
            watch(
                ops,
                self.link.queue_fd(q).expect("q < queue_count"),
                q as u32,
            );
        }
        watch(ops, self.link.command_fd(), DATA_COMMANDS);
    }

    /// Handles one event: a queue eventfd is read (a notification after this read wakes the
    /// thread again) and counted; commands are run in the order they were sent.
    pub fn handle(&mut self, events: &Events) -> LinkEvent {
        match events.data() {
            DATA_COMMANDS => {
                let _ = self.link.command_fd().read();
                while let Ok(cmd) = self.commands.try_recv() {
                    cmd();
                }
                LinkEvent::Done
            }
            d if d >= FIRST_OWN_DATA => LinkEvent::Own(d),
            q => match self.link.queue_fd(q as usize) {
                Some(fd) if fd.read().is_ok() => {
                    self.link.note_received();
                    LinkEvent::Queue(q as u16)
                }
                _ => LinkEvent::Done,
            },
        }
    }
}

/// A transport whose device's queues the device thread processes.
pub trait QueueTransport: Send + Sync {
    /// The thread saw queue `queue`'s eventfd: process it (guest memory is `ram`) if the
    /// device is active, and interrupt the driver as that requires.
    fn process_event(&self, queue: u16, ram: &GuestRam);
}

impl<D: super::virtio::VirtioDevice> QueueTransport for super::pci::VirtioPciDevice<D> {
    fn process_event(&self, queue: u16, _ram: &GuestRam) {
        super::pci::VirtioPciDevice::process_event(self, queue)
    }
}

impl<D: super::virtio::VirtioDevice> QueueTransport for super::virtio_mmio::MmioTransport<D> {
    fn process_event(&self, queue: u16, ram: &GuestRam) {
        super::virtio_mmio::MmioTransport::process_event(self, queue, ram.memory())
    }
}

/// The subscriber of a device whose only events are its queues and commands.
pub struct QueueEvents<T: QueueTransport> {
    events: LinkEvents,
    transport: Arc<T>,
    ram: Arc<GuestRam>,
}

impl<T: QueueTransport> QueueEvents<T> {
    /// Serves `transport`'s queues through `link` (already attached to it), with guest
    /// memory `ram`.
    pub fn new(
        transport: Arc<T>,
        link: Arc<DeviceLink>,
        ram: Arc<GuestRam>,
    ) -> Result<Self, DeviceThreadError> {
        Ok(QueueEvents {
            events: LinkEvents::new(link)?,
            transport,
            ram,
        })
    }
}

impl<T: QueueTransport> MutEventSubscriber for QueueEvents<T> {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.init(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let LinkEvent::Queue(q) = self.events.handle(&events) {
            self.transport.process_event(q, &self.ram);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;
    use crate::devices::event_thread::DeviceThread;
    use crate::seccomp::{SeccompMode, ThreadFilter, ThreadKind};
    use std::sync::mpsc::{self, Sender};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A transport that reports which queue it processed, and on which thread.
    struct Reporter {
        name: &'static str,
        tx: Mutex<Sender<(&'static str, u16, String)>>,
    }

    impl QueueTransport for Reporter {
        fn process_event(&self, queue: u16, _ram: &GuestRam) {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            let _ = self.tx.lock().unwrap().send((self.name, queue, thread));
        }
    }

    /// Two devices on one thread, each with its own subscriber: each queue eventfd reaches its
    /// own device, on the `devices` thread (under its seccomp filter), and commands run there.
    #[test]
    fn one_thread_serves_each_device_its_own_queues_and_commands() {
        let ram = Arc::new(GuestRam::new(&[RegionConfig::anon(1 << 20)]).unwrap());
        let (tx, rx) = mpsc::channel();
        let reporter = |name| {
            Arc::new(Reporter {
                name,
                tx: Mutex::new(tx.clone()),
            })
        };
        let links = [
            Arc::new(DeviceLink::new(2).unwrap()),
            Arc::new(DeviceLink::new(1).unwrap()),
        ];
        let subs: Vec<crate::devices::event_thread::Subscriber> = vec![
            Box::new(QueueEvents::new(reporter("a"), links[0].clone(), ram.clone()).unwrap()),
            Box::new(QueueEvents::new(reporter("b"), links[1].clone(), ram.clone()).unwrap()),
        ];
        // A link serves one subscriber.
        assert!(matches!(
            LinkEvents::new(links[0].clone()),
            Err(DeviceThreadError::AlreadyServed)
        ));
        let filter = ThreadFilter::new(SeccompMode::On, ThreadKind::Devices).unwrap();
        let thread = DeviceThread::start(subs, filter).unwrap();
        let wait = || rx.recv_timeout(Duration::from_secs(10)).unwrap();
        links[0].signal_queue(1);
        assert_eq!(wait(), ("a", 1, "devices".into()));
        links[1].signal_queue(0);
        assert_eq!(wait(), ("b", 0, "devices".into()));
        links[0].signal_queue(0);
        assert_eq!(wait(), ("a", 0, "devices".into()));
        let on = links[1]
            .run(|| std::thread::current().name().map(str::to_string))
            .unwrap();
        assert_eq!(on.as_deref(), Some("devices"));
        assert_eq!(links[0].received_notifications(), 2);
        assert_eq!(links[1].received_notifications(), 1);
        drop(thread);
        // Stopped: nothing serves the links any more.
        links[0].signal_queue(0);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }
}
