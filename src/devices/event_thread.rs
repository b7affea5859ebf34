//! The device event thread: one per VM, named `devices`, an epoll loop (rust-vmm's
//! `event-manager`) that does all of the devices' work off the vCPU threads. It serves any
//! number of devices, each through a [`Subscriber`] of its own that registers its descriptors
//! and handles them ([`super::queue_events`] has the parts every virtio device shares and the
//! generic subscriber of devices that only have queues; the balloon's is
//! [`super::balloon::BalloonEvents`]):
//! - **queue notifications**: one eventfd per queue, signalled by KVM when the guest writes
//!   the queue's notification address (ioeventfds, registered by the transports), so a
//!   notification costs the guest no exit to the VMM and the work it asks for (a balloon's
//!   discards, a disk's reads and writes) runs here while the guest goes on;
//! - **interrupts** leave from here: the transports raise the interrupt status the built-in
//!   guest's wait hypercall sleeps on, or write the irqfds of MSI-X vectors and of the INTx
//!   line; the INTx line's resample eventfd (KVM lowered the line at the guest's EOI) is
//!   watched here too, and the line raised again while a function's ISR is still set
//!   ([`super::pci::shared_intx::IntxResampler`]);
//! - **the balloon statistics period**: a timerfd, re-armed whenever the interval changes
//!   (`PATCH /balloon/statistics` goes through the command queue, so the change is seen at once);
//! - **commands** from other threads (the API's target and interval changes), on the
//!   eventfd-backed queue of each device's [`super::events::DeviceLink`];
//! - **stop**: an eventfd written when the VM goes away.
//!
//! Devices are served one event at a time, in the order epoll reports them: a device's work
//! (one queue's worth of requests per notification at most, as the device models bound it)
//! delays the others by that long, never longer.
//!
//! The thread installs its seccomp filter ([`crate::seccomp::ThreadKind::Devices`]) after the
//! epoll set is built, before it handles the first event.

use super::queue_events::watch;
use crate::seccomp::ThreadFilter;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One device's events on the thread: an event-manager subscriber that registers its
/// descriptors in `init` and handles them in `process` (see [`super::queue_events`] for the
/// parts every virtio device shares, and the generic [`super::queue_events::QueueEvents`]).
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Errors starting the device thread; each says what is missing.
#[derive(Debug, thiserror::Error)]
pub enum DeviceThreadError {
    /// An eventfd, timerfd or epoll instance could not be created.
    #[error("the device event thread needs eventfd, timerfd and epoll descriptors: {0} (raise the open-file limit?)")]
    Descriptors(io::Error),
    /// The thread could not be started.
    #[error("starting the device event thread: {0}")]
    Spawn(io::Error),
    /// The thread's seccomp filter could not be installed.
    #[error("the device event thread's seccomp filter: {0}")]
    Seccomp(String),
    /// A subscriber was built for a transport without a link.
    #[error("the device's transport has no link to the device thread (attach one with attach_link before building its subscriber)")]
    NotAttached,
    /// The link's command queue was already taken by another thread.
    #[error("this device is already served by a device thread (a link serves one subscriber)")]
    AlreadyServed,
}

/// The running device thread; dropping it stops and joins the thread.
pub struct DeviceThread {
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts the thread serving `subscribers` (one per device; their links already attached
    /// to the transports) under `filter`, installed once every subscriber has registered its
    /// descriptors.
    pub fn start(
        subscribers: Vec<Subscriber>,
        filter: ThreadFilter,
    ) -> Result<DeviceThread, DeviceThreadError> {
        Self::start_on(subscribers, filter, &[])
    }

    /// [`DeviceThread::start`] with the thread's CPU affinity set to `cpus` (empty: any CPU)
    /// before it installs its filter.
    pub fn start_on(
        subscribers: Vec<Subscriber>,
        filter: ThreadFilter,
        cpus: &[usize],
    ) -> Result<DeviceThread, DeviceThreadError> {
        let set = (!cpus.is_empty())
            .then(|| crate::host::cpus::set_of(cpus))
            .transpose()
            .map_err(|e| DeviceThreadError::Spawn(io::Error::other(e)))?;
        let cpus = cpus.to_vec();
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(DeviceThreadError::Descriptors)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_sub = StopEvents(stop.clone());
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let flag = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                // As for vCPU threads: a pin the host refuses (a CPU outside this process's
                // cpuset) is said and the thread runs unpinned.
                if let Some(set) = &set {
                    if let Err(e) = crate::host::cpus::pin_current_thread(set) {
                        log::warn!("devices: could not pin to host CPUs {cpus:?}: {e}");
                    }
                }
                let mut em = match EventManager::<Subscriber>::new() {
                    Ok(em) => em,
                    Err(e) => {
                        let _ = ready_tx.send(Err(DeviceThreadError::Descriptors(
                            io::Error::other(format!("{e:?}")),
                        )));
                        return;
                    }
                };
                em.add_subscriber(Box::new(stop_sub));
                for s in subscribers {
                    em.add_subscriber(s);
                }
                if let Err(e) = filter.apply() {
                    let _ = ready_tx.send(Err(DeviceThreadError::Seccomp(e.to_string())));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                while !flag.load(Ordering::Acquire) {
                    if let Err(e) = em.run() {
                        log::error!("device event thread: epoll failed: {e:?}; devices stop");
                        break;
                    }
                }
            })
            .map_err(DeviceThreadError::Spawn)?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                return Err(DeviceThreadError::Spawn(io::Error::other(
                    "the thread ended at its start",
                )))
            }
        }
        Ok(DeviceThread {
            stop,
            stopping,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The stop eventfd: wakes the loop so it sees the stop flag.
struct StopEvents(Arc<EventFd>);

impl MutEventSubscriber for StopEvents {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &*self.0, 0);
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}
