//! The virtio-pci balloon driven by a mock virtio driver written here, as Linux's
//! `virtio_pci_modern` + `virtio_balloon` would drive it: conf1 enumeration, capability walk,
//! BAR and MSI-X programming, feature negotiation, split virtqueues placed in guest RAM,
//! inflate/deflate through the notify address. Effects are measured, not assumed: host
//! residency of the ballooned pages (`GuestRam::resident_bytes`), bytes read back, used rings,
//! MSI messages with the programmed address/data, the ISR and INTx. Then hostile driver input.
//! No guest runs; the last tests need /dev/kvm: MSI-X vectors through KVM's GSI routes and
//! irqfds into the vCPUs' local APICs (their interrupt request registers, `KVM_GET_LAPIC`),
//! and INTx through an irqfd with a resample eventfd into the I/O APIC and PIC (`pci/intx.rs`).

mod common;
#[path = "pci/intx.rs"]
mod intx;
#[path = "pci/thread.rs"]
mod thread;

use balloon::BalloonOptions;
use common::kvm_or_skip;
use memvisor::config::disk::DiskConfig;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::control::api::{ApiHandler, ApiRequest, ApiResponse};
use memvisor::control::vmm_api::VmmApi;
use memvisor::devices::balloon::{BalloonDevice, BalloonHandle};
use memvisor::devices::block::BlockDevice;
use memvisor::devices::pci::config::{
    BAR0, CAPABILITIES_POINTER, CAP_ID_MSIX, CAP_ID_VENDOR, COMMAND, COMMAND_MASTER,
    COMMAND_MEMORY, DEVICE_ID, VENDOR_ID,
};
use memvisor::devices::pci::msix::{MessageLog, CONTROL_ENABLE};
use memvisor::devices::pci::virtio_pci::common as cc;
use memvisor::devices::pci::{
    IntxLine, KvmIrq, MsiSink, PciBus, PciIrq, VirtioPciDevice, CONFIG_ADDRESS_PORT,
    CONFIG_DATA_PORT, CONFIG_ENABLE,
};
use memvisor::devices::Bus;
use memvisor::memory::GuestRam;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const RAM: u64 = 64 * MIB;
/// The data the driver balloons: [16 MiB, 24 MiB).
const DATA: u64 = 16 * MIB;
const DATA_LEN: u64 = 8 * MIB;
const QSIZE: u16 = 16;
const F_VERSION_1: u64 = 1 << 32;
const F_STATS_VQ: u64 = 1 << 1;
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const S_ACK: u64 = 1;
const S_DRIVER: u64 = 2;
const S_DRIVER_OK: u64 = 4;
const S_FEATURES_OK: u64 = 8;
const S_NEEDS_RESET: u64 = 0x40;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

#[derive(Default)]
struct Line(Mutex<Vec<bool>>);

impl IntxLine for Line {
    fn set_level(&self, asserted: bool) -> io::Result<()> {
        self.0.lock().unwrap().push(asserted);
        Ok(())
    }
}

fn pattern(gpa: u64) -> u64 {
    memvisor::abi::pattern_word(gpa, 7)
}

struct Vm {
    ram: Arc<GuestRam>,
    bus: PciBus,
    dev: Arc<VirtioPciDevice<BalloonDevice>>,
    /// A disk after the balloon, when asked for.
    disk: Option<Arc<VirtioPciDevice<BlockDevice>>>,
    /// The messages sent (empty when they go to KVM instead).
    msi: MessageLog,
    line: Arc<Line>,
}

fn vm() -> Vm {
    vm_with(BalloonOptions {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_polling_interval_s: 0,
        free_page_reporting: false,
    })
}

fn vm_with(opts: BalloonOptions) -> Vm {
    vm_with_disk(opts, None)
}

/// A VM whose PCI bus has the balloon and, with `disk`, a virtio-blk disk after it; the
/// messages recorded.
fn vm_with_disk(opts: BalloonOptions, disk: Option<DiskConfig>) -> Vm {
    let msi = MessageLog::default();
    vm_on(opts, data_ram(), Arc::new(msi.clone()), msi, disk)
}

/// 64 MiB of guest RAM with the pattern over the data.
fn data_ram() -> Arc<GuestRam> {
    let ram =
        Arc::new(GuestRam::new(&[RegionConfig::parse(0, "size=64M,thp=off").unwrap()]).unwrap());
    let mut buf = vec![0u8; DATA_LEN as usize];
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern(DATA + 8 * i as u64).to_le_bytes());
    }
    ram.memory().write_slice(&buf, GuestAddress(DATA)).unwrap();
    ram
}

/// The balloon (and, with `disk`, a disk after it) on a PCI bus over `ram`, their MSI-X
/// vectors routed by `sink`.
fn vm_on(
    opts: BalloonOptions,
    ram: Arc<GuestRam>,
    sink: Arc<dyn MsiSink>,
    msi: MessageLog,
    disk: Option<DiskConfig>,
) -> Vm {
    let line = Arc::new(Line::default());
    let mut bus = PciBus::new();
    let (dev, _) = bus
        .add_virtio(
            BalloonDevice::new(opts, ram.clone()),
            ram.clone(),
            PciIrq {
                msi: sink.clone(),
                intx: Some(line.clone()),
                intx_line: 10,
            },
        )
        .unwrap();
    let disk = disk.map(|c| {
        let irq = PciIrq {
            msi: sink,
            intx: None,
            intx_line: 0,
        };
        let block = BlockDevice::open(&c).unwrap();
        bus.add_virtio(block, ram.clone(), irq).unwrap().0
    });
    Vm {
        ram,
        bus,
        dev,
        disk,
        msi,
        line,
    }
}

/// A split virtqueue in guest RAM (virtio 1.1 §2.6), driver side.
struct SplitQueue {
    index: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    notify: u64,
}

impl SplitQueue {
    fn new(index: u16, at: u64) -> Self {
        SplitQueue {
            index,
            desc: at,
            avail: at + 16 * u64::from(QSIZE),
            used: at + 0x800,
            next_desc: 0,
            avail_idx: 0,
            notify: 0,
        }
    }

    /// Puts one buffer (a one-descriptor chain) in the available ring; returns its head.
    fn post(&mut self, ram: &GuestRam, addr: u64, len: u32, flags: u16) -> u16 {
        let m = ram.memory();
        let head = self.next_desc % QSIZE;
        self.next_desc += 1;
        let d = self.desc + 16 * u64::from(head);
        m.write_obj(addr, GuestAddress(d)).unwrap();
        m.write_obj(len, GuestAddress(d + 8)).unwrap();
        m.write_obj(flags, GuestAddress(d + 12)).unwrap();
        m.write_obj(0u16, GuestAddress(d + 14)).unwrap();
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        m.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Puts a chain of `descs` (address, length, flags; NEXT is added) in the available
    /// ring; returns the descriptor indices it used.
    fn post_chain(&mut self, ram: &GuestRam, descs: &[(u64, u32, u16)]) -> Vec<u16> {
        let m = ram.memory();
        let ids: Vec<u16> = (0..descs.len() as u16)
            .map(|i| (self.next_desc + i) % QSIZE)
            .collect();
        self.next_desc += descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let d = self.desc + 16 * u64::from(ids[i]);
            let next = ids.get(i + 1).copied();
            m.write_obj(addr, GuestAddress(d)).unwrap();
            m.write_obj(len, GuestAddress(d + 8)).unwrap();
            let f = flags | if next.is_some() { VRING_DESC_F_NEXT } else { 0 };
            m.write_obj(f, GuestAddress(d + 12)).unwrap();
            m.write_obj(next.unwrap_or(0), GuestAddress(d + 14))
                .unwrap();
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        m.write_obj(ids[0], GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        ids
    }

    fn used_idx(&self, ram: &GuestRam) -> u16 {
        ram.memory().read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    fn used_elem(&self, ram: &GuestRam, i: u16) -> (u32, u32) {
        let e = self.used + 4 + 8 * u64::from(i % QSIZE);
        let m = ram.memory();
        (
            m.read_obj(GuestAddress(e)).unwrap(),
            m.read_obj(GuestAddress(e + 4)).unwrap(),
        )
    }
}

/// What the capability walk found: `cfg_type` -> (offset in the BAR, length), the notify
/// multiplier, the MSI-X capability offset and table offset.
struct Caps {
    virtio: BTreeMap<u8, (u64, u64)>,
    notify_mult: u64,
    msix: usize,
    msix_table: u64,
}

struct Driver<'a> {
    vm: &'a Vm,
    slot: u8,
    bar: u64,
    caps: Caps,
    /// The queue size the device offers: 1024 for the balloon (a driver may keep 1 GiB of
    /// PFNs in flight), 256 for the others.
    max_queue: u64,
}

impl<'a> Driver<'a> {
    fn cfg_read(bus: &PciBus, slot: u8, reg: usize, len: usize) -> u32 {
        let a = CONFIG_ENABLE | u32::from(slot) << 11 | (reg as u32 & 0xfc);
        assert!(bus.pio_write(CONFIG_ADDRESS_PORT, &a.to_le_bytes()));
        let mut d = [0u8; 4];
        assert!(bus.pio_read(CONFIG_DATA_PORT + (reg & 3) as u16, &mut d[..len]));
        u32::from_le_bytes(d)
    }

    fn cfg_write(&self, reg: usize, len: usize, v: u32) {
        let a = CONFIG_ENABLE | u32::from(self.slot) << 11 | (reg as u32 & 0xfc);
        assert!(self.vm.bus.pio_write(CONFIG_ADDRESS_PORT, &a.to_le_bytes()));
        let d = v.to_le_bytes();
        assert!(self
            .vm
            .bus
            .pio_write(CONFIG_DATA_PORT + (reg & 3) as u16, &d[..len]));
    }

    fn cfg(&self, reg: usize, len: usize) -> u32 {
        Self::cfg_read(&self.vm.bus, self.slot, reg, len)
    }

    /// Enumerates bus 0 as Linux's `pci_scan_slot` does and finds the balloon by its ids;
    /// reads its BAR and walks its capabilities as `virtio_pci_modern_probe` does.
    fn probe(vm: &'a Vm) -> Driver<'a> {
        Self::probe_device(vm, 0x1045)
    }

    /// As [`Driver::probe`], for the virtio-pci function with PCI device id `device`.
    fn probe_device(vm: &'a Vm, device: u32) -> Driver<'a> {
        let slot = (0..32u8)
            .find(|&s| Self::cfg_read(&vm.bus, s, VENDOR_ID, 4) == device << 16 | 0x1af4)
            .expect("the virtio device on bus 0");
        Self::probe_slot(vm, slot, device)
    }

    /// As [`Driver::probe_device`], for the function in `slot`.
    fn probe_slot(vm: &'a Vm, slot: u8, device: u32) -> Driver<'a> {
        let bar = u64::from(Self::cfg_read(&vm.bus, slot, BAR0, 4) & !0xf)
            | u64::from(Self::cfg_read(&vm.bus, slot, BAR0 + 4, 4)) << 32;
        let mut d = Driver {
            vm,
            slot,
            bar,
            max_queue: if device == 0x1045 { 1024 } else { 256 },
            caps: Caps {
                virtio: BTreeMap::new(),
                notify_mult: 0,
                msix: 0,
                msix_table: 0,
            },
        };
        assert_eq!(d.cfg(DEVICE_ID, 2), device);
        let mut at = d.cfg(CAPABILITIES_POINTER, 1) as usize;
        while at != 0 {
            match d.cfg(at, 1) as u8 {
                CAP_ID_VENDOR => {
                    let cfg_type = d.cfg(at + 3, 1) as u8;
                    assert_eq!(d.cfg(at + 4, 1), 0, "structures in BAR 0");
                    let off = u64::from(d.cfg(at + 8, 4));
                    let len = u64::from(d.cfg(at + 12, 4));
                    d.caps.virtio.insert(cfg_type, (off, len));
                    if cfg_type == 2 {
                        d.caps.notify_mult = u64::from(d.cfg(at + 16, 4));
                    }
                }
                CAP_ID_MSIX => {
                    d.caps.msix = at;
                    d.caps.msix_table = u64::from(d.cfg(at + 4, 4) & !7);
                }
                _ => {}
            }
            at = d.cfg(at + 1, 1) as usize;
        }
        d
    }

    fn addr(&self, cfg_type: u8, off: u64) -> u64 {
        let (start, len) = self.caps.virtio[&cfg_type];
        assert!(
            off < len.max(1),
            "cfg_type {cfg_type} offset {off:#x} past {len:#x}"
        );
        self.bar + start + off
    }

    fn read_at(&self, addr: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        assert!(
            self.vm.bus.mmio_read(addr, &mut d[..len]),
            "{addr:#x} decodes"
        );
        u64::from_le_bytes(d)
    }

    fn write_at(&self, addr: u64, len: usize, v: u64) {
        assert!(
            self.vm.bus.mmio_write(addr, &v.to_le_bytes()[..len]),
            "{addr:#x} decodes"
        );
    }

    fn common(&self, off: u64, len: usize) -> u64 {
        self.read_at(self.addr(1, off), len)
    }

    fn set_common(&self, off: u64, len: usize, v: u64) {
        self.write_at(self.addr(1, off), len, v)
    }

    fn isr(&self) -> u64 {
        self.read_at(self.addr(3, 0), 1)
    }

    fn device_cfg(&self, off: u64) -> u32 {
        self.read_at(self.addr(4, off), 4) as u32
    }

    /// Programs MSI-X vector `v` and enables MSI-X.
    fn msix_vector(&self, v: u64, addr: u64, data: u32) {
        let e = self.bar + self.caps.msix_table + 16 * v;
        self.write_at(e, 4, addr & 0xffff_ffff);
        self.write_at(e + 4, 4, addr >> 32);
        self.write_at(e + 8, 4, u64::from(data));
        self.write_at(e + 12, 4, 0);
    }

    fn enable_msix(&self) {
        self.cfg_write(self.caps.msix + 2, 2, u32::from(CONTROL_ENABLE));
    }

    /// virtio 1.1 §3.1.1 up to FEATURES_OK; returns the negotiated features.
    fn negotiate(&self, wanted: u64) -> u64 {
        self.set_common(cc::DEVICE_STATUS, 1, 0);
        assert_eq!(self.common(cc::DEVICE_STATUS, 1), 0);
        self.set_common(cc::DEVICE_STATUS, 1, S_ACK);
        self.set_common(cc::DEVICE_STATUS, 1, S_ACK | S_DRIVER);
        let mut offered = 0;
        for sel in 0..2 {
            self.set_common(cc::DEVICE_FEATURE_SELECT, 4, sel);
            offered |= self.common(cc::DEVICE_FEATURE, 4) << (32 * sel);
        }
        let features = offered & wanted;
        for sel in 0..2 {
            self.set_common(cc::DRIVER_FEATURE_SELECT, 4, sel);
            self.set_common(
                cc::DRIVER_FEATURE,
                4,
                (features >> (32 * sel)) & 0xffff_ffff,
            );
        }
        self.set_common(cc::DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK);
        features
    }

    /// Sets up queue `q.index` as Linux's `vp_modern_setup_vq` does (size, vector, rings,
    /// enable) and records its notify address.
    fn setup_queue(&self, q: &mut SplitQueue, vector: u16) {
        self.set_common(cc::QUEUE_SELECT, 2, u64::from(q.index));
        assert_eq!(self.common(cc::QUEUE_SIZE, 2), self.max_queue, "maximum");
        assert_eq!(self.common(cc::QUEUE_ENABLE, 2), 0);
        self.set_common(cc::QUEUE_SIZE, 2, u64::from(QSIZE));
        self.set_common(cc::QUEUE_MSIX_VECTOR, 2, u64::from(vector));
        assert_eq!(self.common(cc::QUEUE_MSIX_VECTOR, 2), u64::from(vector));
        self.set_common(cc::QUEUE_DESC, 4, q.desc & 0xffff_ffff);
        self.set_common(cc::QUEUE_DESC + 4, 4, q.desc >> 32);
        self.set_common(cc::QUEUE_DRIVER, 8, q.avail);
        self.set_common(cc::QUEUE_DEVICE, 8, q.used);
        let off = self.common(cc::QUEUE_NOTIFY_OFF, 2);
        q.notify = self.addr(2, off * self.caps.notify_mult);
        self.set_common(cc::QUEUE_ENABLE, 2, 1);
        assert_eq!(self.common(cc::QUEUE_ENABLE, 2), 1);
    }

    fn kick(&self, q: &SplitQueue) {
        self.write_at(q.notify, 2, u64::from(q.index));
    }

    fn driver_ok(&self) {
        let s = self.common(cc::DEVICE_STATUS, 1);
        self.set_common(cc::DEVICE_STATUS, 1, s | S_DRIVER_OK);
    }
}

const MSI_ADDR: u64 = 0xfee0_0000;
const PFN_BUF: u64 = 0x20_0000;

/// Writes the PFNs of `pages` pages from `gpa` to a buffer; returns its address and length.
fn pfns(ram: &GuestRam, buf: u64, gpa: u64, pages: u64) -> (u64, u32) {
    let list: Vec<u8> = (0..pages)
        .flat_map(|i| ((gpa / PAGE + i) as u32).to_le_bytes())
        .collect();
    ram.memory().write_slice(&list, GuestAddress(buf)).unwrap();
    (buf, list.len() as u32)
}

fn mismatches(ram: &GuestRam, from: u64, len: u64, expect: impl Fn(u64) -> u64) -> u64 {
    let mut buf = vec![0u8; len as usize];
    ram.memory()
        .read_slice(&mut buf, GuestAddress(from))
        .unwrap();
    buf.chunks_exact(8)
        .enumerate()
        .filter(|(i, w)| {
            u64::from_le_bytes((*w).try_into().unwrap()) != expect(from + 8 * *i as u64)
        })
        .count() as u64
}

fn counters(dev: &VirtioPciDevice<BalloonDevice>) -> balloon::BalloonCounters {
    dev.with_device(|d| (d.model.counters(), false))
}

#[test]
fn mock_driver_inflates_and_deflates_through_virtio_pci_with_msix() {
    let vm = vm();
    let d = Driver::probe(&vm);
    assert_eq!(
        d.caps.virtio.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    d.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
    // Vector 0: configuration; 1: inflate; 2: deflate.
    for v in 0..3 {
        d.msix_vector(v, MSI_ADDR | (v << 12), 0x40 + v as u32);
    }
    d.enable_msix();
    let features = d.negotiate(F_VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM);
    // After the reset, as Linux's vp_find_vqs_msix does.
    d.set_common(cc::MSIX_CONFIG, 2, 0);
    assert_eq!(d.common(cc::MSIX_CONFIG, 2), 0);
    assert_eq!(
        features,
        F_VERSION_1 | F_DEFLATE_ON_OOM,
        "no stats queue offered"
    );
    assert_eq!(
        d.common(cc::DEVICE_STATUS, 1),
        S_ACK | S_DRIVER | S_FEATURES_OK
    );
    assert_eq!(d.common(cc::NUM_QUEUES, 2), 2);
    let mut inflate = SplitQueue::new(0, 0x10_0000);
    let mut deflate = SplitQueue::new(1, 0x10_1000);
    d.setup_queue(&mut inflate, 1);
    d.setup_queue(&mut deflate, 2);
    assert_ne!(inflate.notify, deflate.notify);
    d.driver_ok();
    assert_eq!(d.common(cc::DEVICE_STATUS, 1), 0xf, "no NEEDS_RESET");
    assert!(vm.msi.take().is_empty());

    // The host sets a target of 4 MiB: config generation, config MSI, num_pages.
    let handle = BalloonHandle::Pci(vm.dev.clone());
    let api = VmmApi {
        config: VmConfig::default(),
        ram: vm.ram.clone(),
        balloon: Some(handle.clone()),
        disks: Vec::new(),
        nets: Vec::new(),
        vcpus: Vec::new(),
        commands: Mutex::new(std::sync::mpsc::channel().0),
        started: std::time::Instant::now(),
        walks: Default::default(),
        reclaimer: std::sync::Arc::new(memvisor::control::reclaim::Reclaimer::new(
            vm.ram.clone(),
            None,
            None,
        )),
        swap: None,
    };
    let gen = d.common(cc::CONFIG_GENERATION, 1);
    assert_eq!(
        api.handle(ApiRequest::PatchBalloon { amount_mib: 4 }),
        ApiResponse::NoContent
    );
    assert_eq!(vm.msi.take(), [(MSI_ADDR, 0x40)], "configuration vector");
    assert_eq!(d.common(cc::CONFIG_GENERATION, 1), (gen + 1) & 0xff);
    assert_eq!(d.isr(), 2, "configuration bit set even with MSI-X");
    assert_eq!(d.isr(), 0);
    let target = d.device_cfg(0);
    assert_eq!(target, 4 * 256);

    // Inflate: four buffers of 256 PFNs (Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX), one kick.
    let mut heads = Vec::new();
    for i in 0..4u64 {
        let (buf, len) = pfns(&vm.ram, PFN_BUF + i * PAGE, DATA + i * MIB, 256);
        heads.push(inflate.post(&vm.ram, buf, len, 0));
    }
    let resident0 = vm.ram.resident_bytes()[0];
    d.kick(&inflate);
    assert_eq!(inflate.used_idx(&vm.ram), 4);
    for (i, h) in heads.iter().enumerate() {
        assert_eq!(inflate.used_elem(&vm.ram, i as u16), (u32::from(*h), 0));
    }
    assert_eq!(
        vm.msi.take(),
        [(MSI_ADDR | 1 << 12, 0x41)],
        "inflate vector, once"
    );
    assert_eq!(d.isr(), 0, "no ISR bit for queue interrupts with MSI-X");
    let resident1 = vm.ram.resident_bytes()[0];
    assert_eq!(
        resident0 - resident1,
        4 * MIB,
        "the host got the ballooned pages back"
    );
    assert_eq!(
        mismatches(&vm.ram, DATA, 4 * MIB, |_| 0),
        0,
        "ballooned pages read 0"
    );
    assert_eq!(
        mismatches(&vm.ram, DATA + 4 * MIB, 4 * MIB, pattern),
        0,
        "the rest is intact"
    );
    // The driver reports its balloon size; the API sees it (memvisor's extras).
    d.write_at(d.addr(4, 4), 4, u64::from(target));
    match api.handle(ApiRequest::GetBalloonDevice) {
        ApiResponse::Json { body, .. } => {
            assert_eq!(body["actual_mib"], 4, "{body}");
            assert_eq!(body["activated"], true, "{body}");
            assert_eq!(body["released_bytes"], 4 * MIB, "{body}");
            assert_eq!(body["transport"], "virtio-pci", "{body}");
        }
        r => panic!("{r:?}"),
    }

    // Deflate the first MiB: used ring, deflate vector, counters.
    let (buf, len) = pfns(&vm.ram, PFN_BUF + 8 * PAGE, DATA, 256);
    let h = deflate.post(&vm.ram, buf, len, 0);
    d.kick(&deflate);
    assert_eq!(deflate.used_idx(&vm.ram), 1);
    assert_eq!(deflate.used_elem(&vm.ram, 0), (u32::from(h), 0));
    assert_eq!(vm.msi.take(), [(MSI_ADDR | 2 << 12, 0x42)]);
    let c = counters(&vm.dev);
    assert_eq!((c.inflated_pages, c.deflated_pages), (1024, 256));
    assert_eq!(c.freed_bytes, 4 * MIB);
    assert_eq!(vm.dev.notifies(), 2);
    assert_eq!(
        vm.dev.bad_accesses(),
        0,
        "a well-behaved driver makes no mistakes"
    );
    assert!(vm.line.0.lock().unwrap().is_empty(), "INTx never used");
    assert_eq!(vm.dev.msix_counters().sent, 3);

    // Masking the inflate vector holds its message until unmasked.
    let e1 = d.bar + d.caps.msix_table + 16;
    d.write_at(e1 + 12, 4, 1);
    let (buf, len) = pfns(&vm.ram, PFN_BUF + 9 * PAGE, DATA + 4 * MIB, 1);
    inflate.post(&vm.ram, buf, len, 0);
    d.kick(&inflate);
    assert!(vm.msi.take().is_empty());
    d.write_at(e1 + 12, 4, 0);
    assert_eq!(vm.msi.take(), [(MSI_ADDR | 1 << 12, 0x41)]);
}

/// Linux's `virtio_balloon` (`init_vqs`) posts its first statistics buffer and kicks the stats
/// queue during probe, before it sets DRIVER_OK. That notification finds the device not yet
/// activated; the device must still pick the buffer up once the driver is ready (as QEMU and
/// Firecracker do), or the driver waits for it forever and no statistics ever arrive.
#[test]
fn stats_buffer_posted_before_driver_ok_is_picked_up_at_activation() {
    let vm = vm_with(BalloonOptions {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 1,
        free_page_reporting: false,
    });
    let d = Driver::probe(&vm);
    d.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
    d.msix_vector(0, MSI_ADDR, 0x40);
    d.msix_vector(1, MSI_ADDR, 0x41);
    d.enable_msix();
    let features = d.negotiate(F_VERSION_1 | F_STATS_VQ);
    assert_ne!(features & F_STATS_VQ, 0, "stats queue offered");
    let mut inflate = SplitQueue::new(0, 0x10_0000);
    let mut deflate = SplitQueue::new(1, 0x10_1000);
    let mut stats = SplitQueue::new(2, 0x10_2000);
    d.setup_queue(&mut inflate, 1);
    d.setup_queue(&mut deflate, 1);
    d.setup_queue(&mut stats, 1);
    // The buffer: tag 4 (free memory) and tag 5 (total memory), 10 bytes each.
    const STATS_BUF: u64 = 0x10_4000;
    let mut buf = Vec::new();
    for (tag, v) in [(4u16, 40 * MIB), (5, 60 * MIB)] {
        buf.extend_from_slice(&tag.to_le_bytes());
        buf.extend_from_slice(&v.to_le_bytes());
    }
    vm.ram
        .memory()
        .write_slice(&buf, GuestAddress(STATS_BUF))
        .unwrap();
    stats.post(&vm.ram, STATS_BUF, buf.len() as u32, 0);
    d.kick(&stats);
    let held = |dev: &VirtioPciDevice<BalloonDevice>| {
        dev.with_device(|b| {
            (
                (b.model.holds_stats_buffer(), b.model.latest_stats()),
                false,
            )
        })
    };
    assert_eq!(
        held(&vm.dev),
        (false, None),
        "not processed before DRIVER_OK"
    );
    d.driver_ok();
    let (holds, latest) = held(&vm.dev);
    assert!(holds, "the device holds the driver's first stats buffer");
    let latest = latest.expect("statistics from the buffer posted before DRIVER_OK");
    assert_eq!(latest.free_memory, Some(40 * MIB));
    assert_eq!(latest.total_memory, Some(60 * MIB));
    // The polling timer returns it; the driver's next buffer is then processed as usual.
    let used = vm.dev.with_device_used(|b| {
        let used = b.model.trigger_stats_update(vm.ram.memory()).unwrap();
        (used, used.then_some(2))
    });
    assert!(used);
    assert_eq!(stats.used_idx(&vm.ram), 1);
}

#[test]
fn mock_driver_with_intx_when_msix_is_off() {
    let vm = vm();
    let d = Driver::probe(&vm);
    d.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
    d.negotiate(F_VERSION_1);
    let mut inflate = SplitQueue::new(0, 0x10_0000);
    let mut deflate = SplitQueue::new(1, 0x10_1000);
    d.setup_queue(&mut inflate, 0xffff);
    d.setup_queue(&mut deflate, 0xffff);
    d.driver_ok();
    let (buf, len) = pfns(&vm.ram, PFN_BUF, DATA, 16);
    inflate.post(&vm.ram, buf, len, 0);
    d.kick(&inflate);
    assert!(vm.dev.intx_asserted());
    assert_eq!(d.isr(), 1, "queue interrupt");
    assert!(!vm.dev.intx_asserted(), "reading the ISR deasserts INTx");
    assert_eq!(*vm.line.0.lock().unwrap(), [true, false]);
    assert!(vm.msi.take().is_empty());
    assert_eq!(mismatches(&vm.ram, DATA, 16 * PAGE, |_| 0), 0);
}

#[test]
fn hostile_driver_input_is_refused_and_guest_ram_only_is_touched() {
    let vm = vm();
    let d = Driver::probe(&vm);
    d.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
    d.msix_vector(0, MSI_ADDR, 0x50);
    d.enable_msix();

    // Rings outside guest RAM: in the MMIO hole, past the end, straddling the end.
    for at in [0xD000_0000u64, 1 << 40, RAM - 0x80] {
        d.negotiate(F_VERSION_1);
        d.set_common(cc::MSIX_CONFIG, 2, 0);
        let mut inflate = SplitQueue::new(0, 0x10_0000);
        let mut deflate = SplitQueue::new(1, 0x10_1000);
        inflate.desc = at;
        d.setup_queue(&mut inflate, 0xffff);
        d.setup_queue(&mut deflate, 0xffff);
        d.driver_ok();
        assert_eq!(
            d.common(cc::DEVICE_STATUS, 1),
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_NEEDS_RESET,
            "descriptor table at {at:#x}"
        );
        assert_eq!(vm.msi.take(), [(MSI_ADDR, 0x50)], "configuration interrupt");
        assert!(!vm.dev.with_device(|dev| (dev.model.is_activated(), false)));
        d.kick(&inflate);
    }
    assert_eq!(
        vm.dev.notifies(),
        0,
        "kicks of an inactive device are dropped"
    );
    // A queue size that is not a power of two is not taken.
    d.negotiate(F_VERSION_1);
    d.set_common(cc::MSIX_CONFIG, 2, 0);
    d.set_common(cc::QUEUE_SELECT, 2, 0);
    d.set_common(cc::QUEUE_SIZE, 2, 24);
    assert_eq!(d.common(cc::QUEUE_SIZE, 2), 1024);

    // A working device, then hostile buffers.
    let mut inflate = SplitQueue::new(0, 0x10_0000);
    let mut deflate = SplitQueue::new(1, 0x10_1000);
    d.setup_queue(&mut inflate, 0xffff);
    d.setup_queue(&mut deflate, 0xffff);
    d.driver_ok();
    assert_eq!(d.common(cc::DEVICE_STATUS, 1), 0xf);
    // PFNs in the MMIO hole, past RAM, and the largest PFN.
    let bad_pfns: Vec<u8> = [0xC_0000u32, (RAM / PAGE) as u32, 0x10_0000, u32::MAX]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    vm.ram
        .memory()
        .write_slice(&bad_pfns, GuestAddress(PFN_BUF))
        .unwrap();
    inflate.post(&vm.ram, PFN_BUF, bad_pfns.len() as u32, 0);
    // A buffer outside guest memory, one straddling its end, and one of odd length.
    inflate.post(&vm.ram, 0xC000_0000, 1024, 0);
    inflate.post(&vm.ram, RAM - 8, 16, 0);
    inflate.post(&vm.ram, PFN_BUF, 7, 0);
    // The last page of RAM holds a canary (and is resident: the straddling buffer's first
    // bytes are guest RAM the device may read).
    let canary = |gpa: u64| !pattern(gpa);
    let last: Vec<u8> = (RAM - PAGE..RAM)
        .step_by(8)
        .flat_map(|g| canary(g).to_le_bytes())
        .collect();
    vm.ram
        .memory()
        .write_slice(&last, GuestAddress(RAM - PAGE))
        .unwrap();
    let resident0 = vm.ram.resident_bytes()[0];
    d.kick(&inflate);
    assert_eq!(
        inflate.used_idx(&vm.ram),
        4,
        "every buffer goes back to the driver"
    );
    let c = counters(&vm.dev);
    assert_eq!(c.invalid_pfns + c.pfns_outside_ram, 4, "{c:?}");
    assert_eq!(c.descriptors_outside_memory, 2, "{c:?}");
    assert_eq!(c.bad_descriptor_len, 1, "{c:?}");
    assert_eq!((c.inflated_pages, c.freed_bytes), (0, 0), "{c:?}");
    assert_eq!(vm.ram.resident_bytes()[0], resident0, "nothing discarded");
    // Config writes to read-only fields of the balloon, and past its config space.
    let (cfg_bad, bad) = (c.config_bad_accesses, vm.dev.bad_accesses());
    d.write_at(d.addr(4, 0), 4, 12345);
    assert_eq!(d.device_cfg(0), 0, "num_pages is the host's");
    assert!(vm.bus.mmio_write(d.bar + 0x2000 + 16, &[0; 4]));
    assert_eq!(counters(&vm.dev).config_bad_accesses, cfg_bad + 1);
    assert_eq!(vm.dev.bad_accesses(), bad + 1);
    // Moving the available index far ahead stops the device until a reset.
    vm.ram
        .memory()
        .write_obj(
            inflate.avail_idx.wrapping_add(1000),
            GuestAddress(inflate.avail + 2),
        )
        .unwrap();
    d.kick(&inflate);
    assert_ne!(d.common(cc::DEVICE_STATUS, 1) & S_NEEDS_RESET, 0);
    assert_eq!(vm.msi.take(), [(MSI_ADDR, 0x50)]);
    d.set_common(cc::DEVICE_STATUS, 1, 0);
    assert_eq!(d.common(cc::DEVICE_STATUS, 1), 0);
    // All the while, guest data (nothing was ballooned) is intact.
    assert_eq!(mismatches(&vm.ram, DATA, DATA_LEN, pattern), 0);
    assert_eq!(mismatches(&vm.ram, RAM - PAGE, PAGE, canary), 0);
}

/// The local APIC register at `off` (`KVM_GET_LAPIC`'s 1 KiB page).
fn lapic_reg(l: &kvm_bindings::kvm_lapic_state, off: usize) -> u32 {
    u32::from_le_bytes(std::array::from_fn(|i| l.regs[off + i] as u8))
}

/// Software-enables the local APIC (spurious vector register bit 8): a disabled one accepts
/// no fixed interrupts.
fn enable_lapic(vcpu: &kvm_ioctls::VcpuFd) {
    let mut l = vcpu.get_lapic().unwrap();
    let svr = lapic_reg(&l, 0xf0) | 0x100;
    for (i, b) in svr.to_le_bytes().into_iter().enumerate() {
        l.regs[0xf0 + i] = b as _;
    }
    vcpu.set_lapic(&l).unwrap();
}

/// Whether `vector` is requested in the vCPU's local APIC (its interrupt request register):
/// the interrupt reached the guest's CPU and waits for it to take it.
fn requested(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> bool {
    let l = vcpu.get_lapic().unwrap();
    let irr = lapic_reg(&l, 0x200 + 0x10 * usize::from(vector / 32));
    irr & 1 << (vector % 32) != 0
}

/// The I/O APIC's and the slave PIC's interrupt request bits of IRQ 10.
fn irq10_requested(vm: &kvm_ioctls::VmFd) -> (bool, bool) {
    let mut chip = kvm_bindings::kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).unwrap();
    // SAFETY: KVM filled the I/O APIC member for chip_id IOAPIC.
    let ioapic = unsafe { chip.chip.ioapic.irr } & 1 << 10 != 0;
    chip.chip_id = kvm_bindings::KVM_IRQCHIP_PIC_SLAVE;
    vm.get_irqchip(&mut chip).unwrap();
    // SAFETY: KVM filled the PIC member for chip_id PIC_SLAVE.
    let pic = unsafe { chip.chip.pic.irr } & 1 << 2 != 0;
    (ioapic, pic)
}

/// A driver's MSI-X vectors leave as irqfd writes on GSI routes and land in the local APIC of
/// the vCPU the message names; re-programming a vector moves its route; a message to an APIC id
/// no vCPU has is refused and counted (KVM would drop it silently behind an irqfd); the
/// irqchip's default routes (INTx, the serial port) survive the routing table memvisor sets.
#[test]
fn msix_vectors_reach_the_local_apic_they_name_through_irqfds() {
    let t = "msix_vectors_reach_the_local_apic_they_name_through_irqfds";
    if !kvm_or_skip(t) {
        return;
    }
    let ram = data_ram();
    let kvm = memvisor::vmm::vm::Vm::new(&ram).unwrap();
    kvm.fd().create_irq_chip().unwrap();
    let vcpus: Vec<_> = (0..2).map(|id| kvm.create_vcpu(id).unwrap()).collect();
    vcpus.iter().for_each(enable_lapic);
    let routing = kvm.irq_routing();
    let vm = vm_on(
        BalloonOptions {
            amount_mib: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
            free_page_reporting: false,
        },
        ram,
        Arc::new(routing.clone()),
        MessageLog::default(),
        None,
    );
    let d = Driver::probe(&vm);
    d.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
    d.msix_vector(0, MSI_ADDR, 0x40);
    d.enable_msix();
    d.negotiate(F_VERSION_1);
    d.set_common(cc::MSIX_CONFIG, 2, 0);
    // One route carries vector 0's message: configuration changes to APIC 0, vector 0x40.
    let routes = routing.msi_routes();
    assert_eq!(routes.values().collect::<Vec<_>>(), [&(MSI_ADDR, 0x40)]);
    let gsi = *routes.keys().next().unwrap();
    assert!(gsi >= 24, "above the irqchip's GSIs: {gsi}");
    let target = |mib| vm.dev.with_device(|b| ((), b.model.set_target_mib(mib)));
    let wait_for = |cpu: usize, vector: u8| {
        let what = format!("vector {vector:#x} requested in vCPU {cpu}'s local APIC");
        common::wait_until(&what, std::time::Duration::from_secs(10), || {
            requested(&vcpus[cpu], vector)
        });
    };
    assert!(!requested(&vcpus[0], 0x40));
    target(4);
    wait_for(0, 0x40);
    assert!(
        !requested(&vcpus[1], 0x40),
        "only the APIC the message names"
    );
    let c = vm.dev.msix_counters();
    assert_eq!((c.sent, c.failed, c.route_updates), (1, 0, 1));
    assert!(vm.msi.take().is_empty(), "nothing bypassed KVM");

    // Re-programmed as Linux does (mask, write, unmask): the same GSI now carries APIC 1,
    // vector 0x41.
    let e0 = d.bar + d.caps.msix_table;
    d.write_at(e0 + 12, 4, 1);
    d.write_at(e0, 4, MSI_ADDR | 1 << 12);
    d.write_at(e0 + 8, 4, 0x41);
    assert_eq!(
        routing.msi_routes()[&gsi],
        (MSI_ADDR, 0x40),
        "masked: unchanged"
    );
    d.write_at(e0 + 12, 4, 0);
    assert_eq!(routing.msi_routes()[&gsi], (MSI_ADDR | 1 << 12, 0x41));
    target(8);
    wait_for(1, 0x41);
    assert!(!requested(&vcpus[0], 0x41));
    let c = vm.dev.msix_counters();
    assert_eq!((c.sent, c.failed, c.route_updates), (2, 0, 2));

    // APIC id 5: no such vCPU. The route is withdrawn (the old message must not go out in its
    // place) and the interrupt is counted as failed.
    d.write_at(e0 + 12, 4, 1);
    d.write_at(e0, 4, MSI_ADDR | 5 << 12);
    d.write_at(e0 + 8, 4, 0x42);
    d.write_at(e0 + 12, 4, 0);
    assert!(routing.msi_routes().is_empty());
    target(12);
    let c = vm.dev.msix_counters();
    assert_eq!((c.sent, c.failed, c.route_updates), (2, 1, 3));
    assert!(!requested(&vcpus[0], 0x42) && !requested(&vcpus[1], 0x42));
    // Back to APIC 0: delivered again.
    d.write_at(e0 + 12, 4, 1);
    d.write_at(e0, 4, MSI_ADDR);
    d.write_at(e0 + 8, 4, 0x43);
    d.write_at(e0 + 12, 4, 0);
    target(16);
    wait_for(0, 0x43);
    assert_eq!(vm.dev.msix_counters().sent, 3);

    // The table memvisor set kept the irqchip's routes: IRQ 10 reaches the I/O APIC and PIC.
    assert_eq!(irq10_requested(kvm.fd()), (false, false));
    let line = KvmIrq::new(kvm.kvm(), kvm.fd()).unwrap().intx(10).unwrap();
    line.set_level(true).unwrap();
    // KVM injects a resampling irqfd's write from a work item, a moment later.
    common::wait_until(
        "IRQ 10 up in the I/O APIC and the PIC",
        std::time::Duration::from_secs(10),
        || irq10_requested(kvm.fd()) == (true, true),
    );
}

/// Without the in-kernel irqchip there is no irqfd: building the function fails with a reason
/// instead of a device whose interrupts vanish.
#[test]
fn msix_routes_need_the_in_kernel_irqchip() {
    if !kvm_or_skip("msix_routes_need_the_in_kernel_irqchip") {
        return;
    }
    let ram = data_ram();
    let kvm = memvisor::vmm::vm::Vm::new(&ram).unwrap();
    let mut bus = PciBus::new();
    let err = bus
        .add_virtio(
            BalloonDevice::new(
                BalloonOptions {
                    amount_mib: 0,
                    deflate_on_oom: false,
                    stats_polling_interval_s: 0,
                    free_page_reporting: false,
                },
                ram.clone(),
            ),
            ram,
            PciIrq {
                msi: Arc::new(kvm.irq_routing()),
                intx: None,
                intx_line: 0,
            },
        )
        .err()
        .expect("no irqchip, no irqfd");
    let msg = err.to_string();
    assert!(
        msg.contains("KVM_IRQFD") && msg.contains("in-kernel irqchip"),
        "{msg}"
    );
}
