//! The virtio-net device (the `net` crate's model over a tap) as a [`VirtioDevice`], its
//! subscriber on the device event thread, and what the API shows of it.
//!
//! This module owns opening a `--net` ([`NetDevice::open`]: the tap opened before the guest
//! starts, so a missing tun driver, a busy tap or a missing permission stops memvisor with the
//! reason), the per-interface figures of `GET /vm` and `/metrics` ([`NetInfo`]), and
//! [`NetEvents`], the device thread's subscriber for one interface: the receive and transmit
//! queues' eventfds (KVM ioeventfds) and the tap's descriptor, readable when frames wait. Guest
//! buffers are reached only through the guest memory the transport or the subscriber passes to
//! the model; the model checks every chain before any I/O (see the `net` crate).

use super::pci::VirtioPciDevice;
use super::queue_events::{watch, LinkEvent, LinkEvents, FIRST_OWN_DATA};
use super::virtio::ModelDevice;
use crate::config::net::NetConfig;
use crate::memory::GuestRam;
use ::net::{DeviceModel, Net, NetCounters, NetOptions, Tap, TapError};
use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::Serialize;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// An interface that cannot be attached.
#[derive(Debug, thiserror::Error)]
#[error("--net {id}: {source}")]
pub struct NetDeviceError {
    /// The interface's id.
    pub id: String,
    /// Why.
    #[source]
    pub source: TapError,
}

/// A virtio-net device over a tap.
pub struct NetDevice {
    /// The device model.
    pub model: Net<Tap>,
    /// What the user asked for.
    pub config: NetConfig,
}

impl NetDevice {
    /// Opens the tap of `config` (created by the kernel when `tap` has no name, or when no
    /// interface has that name); says on stderr which tap a created one is.
    pub fn open(config: &NetConfig) -> Result<Self, NetDeviceError> {
        let tap = Tap::open(config.tap.as_deref()).map_err(|source| NetDeviceError {
            id: config.id.clone(),
            source,
        })?;
        if config.tap.is_none() {
            eprintln!(
                "memvisor: --net {}: created tap {} (bring it up and address it on the host: ip link set {} up)",
                config.id,
                tap.name(),
                tap.name()
            );
        }
        Ok(NetDevice {
            model: Net::new(
                tap,
                NetOptions {
                    mac: config.mac_bytes(),
                },
            ),
            config: config.clone(),
        })
    }

    /// The tap's name.
    pub fn tap_name(&self) -> &str {
        self.model.backend().name()
    }

    /// What the API shows of this interface.
    pub fn info(&self) -> NetInfo {
        let m = &self.model;
        NetInfo {
            id: self.config.id.clone(),
            tap: self.tap_name().to_string(),
            mac: ::net::features::mac_text(m.options().mac),
            activated: m.is_activated(),
            features_offered: ::net::features::feature_names(m.avail_features()),
            features_acked: ::net::features::feature_names(m.acked_features()),
            counters: m.counters(),
        }
    }
}

impl ModelDevice for NetDevice {
    type Model = Net<Tap>;
    fn model(&self) -> &Net<Tap> {
        &self.model
    }
    fn model_and_backend(&mut self) -> (&mut Net<Tap>, &()) {
        (&mut self.model, &())
    }
}

/// An interface on the Linux guest's PCI bus.
pub type NetHandle = Arc<VirtioPciDevice<NetDevice>>;

/// What `GET /vm` shows of an interface (and `/metrics` counts).
#[derive(Clone, Debug, Serialize)]
pub struct NetInfo {
    /// The interface's id.
    pub id: String,
    /// The host tap it is attached to.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: String,
    /// The guest's driver set DRIVER_OK (until a reset).
    pub activated: bool,
    /// Feature bits offered, by name.
    pub features_offered: Vec<String>,
    /// Feature bits the driver accepted, by name.
    pub features_acked: Vec<String>,
    /// Frames, bytes, drops and refusals by cause.
    pub counters: NetCounters,
}

/// The figures of an interface behind its transport.
pub fn net_info(net: &NetHandle) -> NetInfo {
    net.with_device(|d| (d.info(), false))
}

/// Event data of the tap's descriptor.
const DATA_TAP: u32 = FIRST_OWN_DATA;

/// The tap's descriptor, for epoll (the device, which owns the tap, outlives the thread).
struct TapFd(RawFd);

impl AsRawFd for TapFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One interface's events on the device thread: queue notifications (receive buffers posted,
/// frames to transmit) and the tap readable (frames to deliver).
pub struct NetEvents {
    events: LinkEvents,
    net: NetHandle,
    ram: Arc<GuestRam>,
    tap: TapFd,
}

impl NetEvents {
    /// Serves `net` through `link` (already attached to its transport), with guest memory
    /// `ram`.
    pub fn new(
        net: NetHandle,
        link: Arc<super::events::DeviceLink>,
        ram: Arc<GuestRam>,
    ) -> Result<Self, super::event_thread::DeviceThreadError> {
        let tap = TapFd(net.with_device(|d| (d.model.backend().as_raw_fd(), false)));
        Ok(NetEvents {
            events: LinkEvents::new(link)?,
            net,
            ram,
            tap,
        })
    }

    /// Frames wait in the tap: deliver them (or drop them, counted, before the driver is
    /// ready) and interrupt the driver if the receive queue's used ring changed.
    fn receive(&self) {
        let mem = self.ram.memory();
        self.net.with_device_used(|d| match d.model.receive(mem) {
            Ok(used) => ((), used.then_some(::net::RX_QUEUE)),
            Err(e) => {
                log::warn!("net {}: receive: {e}", d.config.id);
                ((), None)
            }
        });
    }
}

impl MutEventSubscriber for NetEvents {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.init(ops);
        watch(ops, &self.tap, DATA_TAP);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match self.events.handle(&events) {
            LinkEvent::Queue(q) => self.net.process_event(q),
            LinkEvent::Own(DATA_TAP) => self.receive(),
            LinkEvent::Own(_) | LinkEvent::Done => {}
        }
    }
}
