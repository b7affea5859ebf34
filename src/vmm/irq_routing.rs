//! The VM's GSI routing table and the MSI routes of its PCI functions: each MSI-X vector is a
//! GSI whose routing entry carries the vector's message, with an irqfd bound to it, so a device
//! raises the interrupt by writing an eventfd (no ioctl, no exit).
//!
//! KVM takes the routing table whole: every `KVM_SET_GSI_ROUTING` replaces all of it. So it
//! has one owner per VM, [`GsiRouting`] (from [`super::vm::Vm::irq_routing`]), which keeps
//! - the in-kernel irqchip's default routes, exactly as `KVM_CREATE_IRQCHIP` set them up
//!   (GSIs 0-15 to the PIC and to the I/O APIC pin of the same number, 16-23 to the I/O APIC
//!   only): the serial port's irqfd (GSI 4), PCI INTx (an irqfd with a resample eventfd on GSI
//!   10: `crate::devices::pci`'s `kvm.rs`) and the PIT (GSI 0) go through them, and a table set
//!   without them would cut those off;
//! - one MSI entry per routed vector, on GSIs from [`FIRST_MSI_GSI`] up.
//!
//! Who calls what: the GSI, its eventfd and the irqfd (`KVM_IRQFD`) are made when the PCI
//! function is built (setup thread, [`crate::devices::pci::msix::MsiSink::new_route`]);
//! pointing a route at a message (`KVM_SET_GSI_ROUTING`) happens when the guest makes a vector
//! deliverable with a new message — an MSI-X table or configuration-space write, on the vCPU
//! thread that made it; sending is an eventfd `write` from whichever thread raises the
//! interrupt (device thread, API, vCPU). A dropped route's eventfd is closed, which removes the
//! irqfd in KVM; its GSI is reused.
//!
//! A rewrite is not cheap: KVM waits for its SRCU readers before it frees the old table (2.1-2.9
//! ms per `KVM_SET_GSI_ROUTING` on the nested, software-virtualised development host, in a loop
//! of 200 rewrites; an irqfd write there took ~0.3 µs, `KVM_SIGNAL_MSI` ~0.25 µs). Hence routes
//! are rewritten only when a vector's message changes, never per interrupt or per mask.
//!
//! KVM drops an irqfd message that no local APIC accepts without telling anyone (where
//! `KVM_SIGNAL_MSI` answered `EPERM`). So [`GsiRoute::set`] checks the message first and
//! refuses one KVM could not deliver: an address outside the local APICs' window
//! (`0xFEEx_xxxx`), or a physical destination (not the broadcast id 0xFF) that is not the APIC
//! id of a vCPU of this VM (memvisor's vCPU *n* has APIC id *n*). The MSI-X table counts the
//! messages of such a vector as failed ([`crate::devices::pci::MsixCounters::failed`]).
//! Logical-destination messages are let through: whether one matches depends on the
//! destination registers the guest programmed into its APICs.

use crate::devices::pci::msix::{MsiRoute, MsiSink};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::VmFd;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// GSIs below this are the irqchip's pins (I/O APIC 0-23; PIC 0-15).
pub const FIRST_MSI_GSI: u32 = 24;
/// The x86 MSI address window of the local APICs (`0xFEEx_xxxx`).
const MSI_WINDOW: u64 = 0xfee0_0000;
/// Address bit 2: logical destination mode.
const MSI_DEST_LOGICAL: u64 = 1 << 2;
/// The physical destination that means every APIC.
const BROADCAST: u32 = 0xff;

/// The APIC ids of the VM's vCPUs, shared with [`super::vm::Vm`], which adds each vCPU's as it
/// creates it.
pub type ApicIds = Arc<Mutex<BTreeSet<u32>>>;

/// The VM's GSI routing table (see the module doc). Clones share it.
#[derive(Clone)]
pub struct GsiRouting {
    inner: Arc<Inner>,
}

struct Inner {
    vm: Arc<VmFd>,
    apic_ids: ApicIds,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// The message each routed GSI carries.
    msi: BTreeMap<u32, (u64, u32)>,
    /// GSIs handed out to routes (with or without a message yet).
    taken: BTreeSet<u32>,
}

impl GsiRouting {
    /// The routing of the VM `vm`, whose in-kernel irqchip must exist
    /// (`KVM_CREATE_IRQCHIP`) before the first route is made; `apic_ids` are its vCPUs'.
    pub fn new(vm: Arc<VmFd>, apic_ids: ApicIds) -> Self {
        GsiRouting {
            inner: Arc::new(Inner {
                vm,
                apic_ids,
                table: Mutex::new(Table::default()),
            }),
        }
    }

    /// A new route: the lowest free GSI from [`FIRST_MSI_GSI`] up, an eventfd, and the irqfd
    /// binding them. Fails without the in-kernel irqchip (`KVM_IRQFD` answers `EAGAIN`) or
    /// when KVM's GSIs run out.
    pub fn route(&self) -> io::Result<GsiRoute> {
        let gsi = {
            let mut t = self.inner.table.lock().unwrap();
            let gsi = (FIRST_MSI_GSI..KVM_MAX_IRQ_ROUTES as u32)
                .find(|g| !t.taken.contains(g))
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "all {KVM_MAX_IRQ_ROUTES} GSIs of the VM are taken: fewer MSI-X vectors (devices) are needed"
                    ))
                })?;
            t.taken.insert(gsi);
            gsi
        };
        let release = |e: io::Error| {
            self.inner.table.lock().unwrap().taken.remove(&gsi);
            e
        };
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(release)?;
        self.inner.vm.register_irqfd(&evt, gsi).map_err(|e| {
            release(io::Error::other(format!(
                "KVM_IRQFD on GSI {gsi}: {e} (MSI-X through irqfds needs KVM's in-kernel irqchip, created before the devices)"
            )))
        })?;
        Ok(GsiRoute {
            routing: self.inner.clone(),
            gsi,
            evt,
        })
    }

    /// The routed GSIs and the message each carries now.
    pub fn msi_routes(&self) -> BTreeMap<u32, (u64, u32)> {
        self.inner.table.lock().unwrap().msi.clone()
    }
}

impl MsiSink for GsiRouting {
    fn new_route(&self) -> io::Result<Box<dyn MsiRoute>> {
        Ok(Box::new(self.route()?))
    }
}

impl Inner {
    /// Sets KVM's table to the default irqchip routes and `msi`.
    fn commit(&self, msi: &BTreeMap<u32, (u64, u32)>) -> io::Result<()> {
        let entries = table_entries(msi);
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("routing table of {}: {e:?}", entries.len())))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// KVM's default routes of the in-kernel irqchip (`default_routing` in the kernel's
/// `arch/x86/kvm/irq_comm.c`) followed by an MSI entry per routed GSI.
fn table_entries(msi: &BTreeMap<u32, (u64, u32)>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    };
    let mut out = Vec::with_capacity(40 + msi.len());
    for gsi in 0..FIRST_MSI_GSI {
        out.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            out.push(irqchip(gsi, pic, gsi % 8));
        }
    }
    for (&gsi, &(addr, data)) in msi {
        out.push(kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: addr as u32,
                    address_hi: (addr >> 32) as u32,
                    data,
                    ..Default::default()
                },
            },
            ..Default::default()
        });
    }
    out
}

/// Whether KVM can deliver an MSI to `addr` in a VM whose vCPUs have `apic_ids`; the reason
/// when it cannot (see the module doc).
pub fn check_destination(addr: u64, apic_ids: &BTreeSet<u32>) -> Result<(), String> {
    if addr & !0x000f_ffff != MSI_WINDOW {
        return Err(format!(
            "address {addr:#x} is outside the local APICs' window 0xfee00000-0xfeefffff"
        ));
    }
    if addr & MSI_DEST_LOGICAL != 0 {
        return Ok(());
    }
    // Destination id bits 19:12, and 11:5 as its extended bits 14:8 (KVM's
    // `KVM_FEATURE_MSI_EXT_DEST_ID`; zero below 256 vCPUs).
    let id = ((addr >> 12) & 0xff) as u32 | (((addr >> 5) & 0x7f) as u32) << 8;
    if id == BROADCAST || apic_ids.contains(&id) {
        return Ok(());
    }
    Err(format!(
        "no vCPU has APIC id {id} (the VM has {} vCPUs)",
        apic_ids.len()
    ))
}

/// One vector's route: its GSI and the irqfd bound to it.
pub struct GsiRoute {
    routing: Arc<Inner>,
    gsi: u32,
    evt: EventFd,
}

impl GsiRoute {
    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl MsiRoute for GsiRoute {
    fn set(&mut self, addr: u64, data: u32) -> io::Result<()> {
        let ids = self.routing.apic_ids.lock().unwrap().clone();
        let mut t = self.routing.table.lock().unwrap();
        if let Err(why) = check_destination(addr, &ids) {
            // The old message must not go out in its place.
            if t.msi.remove(&self.gsi).is_some() {
                self.routing.commit(&t.msi)?;
            }
            return Err(io::Error::other(why));
        }
        let old = t.msi.insert(self.gsi, (addr, data));
        if let Err(e) = self.routing.commit(&t.msi) {
            match old {
                Some(m) => t.msi.insert(self.gsi, m),
                None => t.msi.remove(&self.gsi),
            };
            return Err(e);
        }
        Ok(())
    }

    fn send(&self) -> io::Result<()> {
        self.evt.write(1)
    }
}

impl Drop for GsiRoute {
    fn drop(&mut self) {
        // Closing the eventfd (with `self.evt`) detaches the irqfd in KVM; the stale table
        // entry goes with the next commit.
        let mut t = self.routing.table.lock().unwrap();
        t.msi.remove(&self.gsi);
        t.taken.remove(&self.gsi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_irqchip_routes_and_adds_the_msi_ones() {
        let msi = BTreeMap::from([(24, (0xfee0_1000, 0x41)), (25, (0xfee0_0000, 0x30))]);
        let t = table_entries(&msi);
        assert_eq!(t.len(), 24 + 16 + 2);
        let chip = |gsi: u32| -> Vec<(u32, u32)> {
            t.iter()
                .filter(|e| e.gsi == gsi && e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
                // SAFETY: irqchip entries carry the `irqchip` member.
                .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
                .collect()
        };
        assert_eq!(
            chip(0),
            [(KVM_IRQCHIP_IOAPIC, 0), (KVM_IRQCHIP_PIC_MASTER, 0)]
        );
        assert_eq!(
            chip(4),
            [(KVM_IRQCHIP_IOAPIC, 4), (KVM_IRQCHIP_PIC_MASTER, 4)]
        );
        assert_eq!(
            chip(10),
            [(KVM_IRQCHIP_IOAPIC, 10), (KVM_IRQCHIP_PIC_SLAVE, 2)]
        );
        assert_eq!(chip(23), [(KVM_IRQCHIP_IOAPIC, 23)]);
        let m = t.iter().find(|e| e.gsi == 24).unwrap();
        assert_eq!(m.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: MSI entries carry the `msi` member.
        let (lo, hi, data) = unsafe { (m.u.msi.address_lo, m.u.msi.address_hi, m.u.msi.data) };
        assert_eq!((lo, hi, data), (0xfee0_1000, 0, 0x41));
    }

    #[test]
    fn destinations_without_a_vcpu_are_refused() {
        let two = BTreeSet::from([0, 1]);
        assert_eq!(check_destination(0xfee0_0000, &two), Ok(()));
        assert_eq!(check_destination(0xfee0_1000, &two), Ok(()));
        assert_eq!(check_destination(0xfeef_f000, &two), Ok(()), "broadcast");
        assert_eq!(
            check_destination(0xfee0_500c, &two),
            Ok(()),
            "logical mode: up to the guest's APICs"
        );
        let e = check_destination(0xfee0_2000, &two).unwrap_err();
        assert!(e.contains("no vCPU has APIC id 2"), "{e}");
        let e = check_destination(0xfee0_0020, &two).unwrap_err();
        assert!(e.contains("APIC id 256"), "extended id bits: {e}");
        let e = check_destination(0xfed0_0000, &two).unwrap_err();
        assert!(e.contains("outside the local APICs' window"), "{e}");
        let e = check_destination(1 << 32 | 0xfee0_0000, &two).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        assert!(check_destination(0xfee0_0000, &BTreeSet::new()).is_err());
    }
}
