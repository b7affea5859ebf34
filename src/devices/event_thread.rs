//! The device event thread: one per VM, named `devices`, an epoll loop (rust-vmm's
//! `event-manager`) that does all of the devices' work off the vCPU threads:
//! - **queue notifications**: one eventfd per queue, signalled by KVM when the guest writes
//!   the queue's notification address (ioeventfds, registered by the transports), so a
//!   notification costs the guest no exit to the VMM and the discard a balloon inflate asks for
//!   runs here while the guest goes on;
//! - **interrupts** leave from here: the transports raise the interrupt status the built-in
//!   guest's wait hypercall sleeps on, or send MSI-X messages / INTx levels through KVM;
//! - **the balloon statistics period**: a timerfd, re-armed whenever the interval changes
//!   (`PATCH /balloon/statistics` goes through the command queue, so the change is seen at once);
//! - **commands** from other threads (the API's target and interval changes), on the
//!   eventfd-backed queue of the [`DeviceLink`];
//! - **stop**: an eventfd written when the VM goes away.
//!
//! The thread installs its seccomp filter ([`crate::seccomp::ThreadKind::Devices`]) after the
//! epoll set is built, before it handles the first event.

use super::balloon::BalloonHandle;
use super::events::{Command, DeviceLink};
use crate::memory::GuestRam;
use crate::seccomp::ThreadFilter;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

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
    /// The link's command queue was already taken by another thread.
    #[error("the balloon is already served by a device thread")]
    AlreadyServed,
}

/// Event data: queue eventfds use their queue index; these are above any queue index.
const DATA_COMMANDS: u32 = 1 << 16;
const DATA_TIMER: u32 = DATA_COMMANDS + 1;
const DATA_STOP: u32 = DATA_COMMANDS + 2;

/// The running device thread; dropping it stops and joins the thread.
pub struct DeviceThread {
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts the thread serving `balloon` through `link` (already attached to its
    /// transport), with guest memory `ram`, under `filter`.
    pub fn start(
        balloon: BalloonHandle,
        link: Arc<DeviceLink>,
        ram: Arc<GuestRam>,
        filter: ThreadFilter,
    ) -> Result<DeviceThread, DeviceThreadError> {
        let commands = link
            .take_commands()
            .ok_or(DeviceThreadError::AlreadyServed)?;
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(DeviceThreadError::Descriptors)?);
        let timer = TimerFd::new()
            .map_err(|e| DeviceThreadError::Descriptors(io::Error::from_raw_os_error(e.errno())))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let sub = BalloonEvents {
            balloon,
            link,
            ram,
            commands,
            timer,
            interval_s: 0,
            stop: stop.clone(),
        };
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let flag = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                let mut em = match EventManager::<Box<dyn MutEventSubscriber + Send>>::new() {
                    Ok(em) => em,
                    Err(e) => {
                        let _ = ready_tx.send(Err(DeviceThreadError::Descriptors(
                            io::Error::other(format!("{e:?}")),
                        )));
                        return;
                    }
                };
                em.add_subscriber(Box::new(sub));
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

/// The balloon's events on the device thread.
struct BalloonEvents {
    balloon: BalloonHandle,
    link: Arc<DeviceLink>,
    ram: Arc<GuestRam>,
    commands: Receiver<Command>,
    timer: TimerFd,
    /// The statistics interval the timer is armed for (0: disarmed).
    interval_s: u16,
    stop: Arc<EventFd>,
}

impl BalloonEvents {
    /// Re-arms the statistics timer if the device's interval changed.
    fn follow_interval(&mut self) {
        let iv = self
            .balloon
            .with_device(|d| (d.model.stats_polling_interval(), false));
        if iv == self.interval_s {
            return;
        }
        self.interval_s = iv;
        let armed = if iv == 0 {
            self.timer.clear()
        } else {
            let period = Duration::from_secs(iv.into());
            self.timer.reset(period, Some(period))
        };
        if let Err(e) = armed {
            log::warn!("balloon: statistics timer not (re)armed: {e}");
        }
    }

    /// The statistics period elapsed: give the held buffer back so the guest sends fresh
    /// statistics.
    fn stats_tick(&mut self) {
        let _ = self.timer.wait();
        let mem = self.ram.memory();
        self.balloon
            .with_device_used(|d| match d.model.trigger_stats_update(mem) {
                Ok(returned) => ((), d.model.queue_layout().stats.filter(|_| returned)),
                Err(e) => {
                    log::warn!("balloon: statistics request failed: {e}");
                    ((), None)
                }
            });
    }
}

impl MutEventSubscriber for BalloonEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: &dyn std::os::fd::AsRawFd, data: u32| {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), data, EventSet::IN)) {
                log::error!("device event thread: cannot watch descriptor {data:#x}: {e:?}");
            }
        };
        for q in 0..self.link.queue_count() {
            add(self.link.queue_fd(q).expect("q < queue_count"), q as u32);
        }
        add(self.link.command_fd(), DATA_COMMANDS);
        add(&self.timer, DATA_TIMER);
        add(&*self.stop, DATA_STOP);
        self.follow_interval();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            DATA_STOP => {
                let _ = self.stop.read();
            }
            DATA_TIMER => {
                self.stats_tick();
                self.follow_interval();
            }
            DATA_COMMANDS => {
                let _ = self.link.command_fd().read();
                while let Ok(cmd) = self.commands.try_recv() {
                    cmd();
                }
                self.follow_interval();
            }
            q => {
                let Some(fd) = self.link.queue_fd(q as usize) else {
                    return;
                };
                // Consume the count first: a notification after this read wakes us again.
                if fd.read().is_ok() {
                    self.link.note_received();
                    self.balloon.process_event(q as u16, &self.ram);
                }
            }
        }
    }
}
