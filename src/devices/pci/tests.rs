//! Configuration mechanism #1, headers, BAR sizing, the capability chain, MSI-X and the
//! virtio-pci registers, checked against the PCI 3.0 and virtio 1.1 specifications. The
//! end-to-end driver scenario is in `tests/pci.rs`.

use super::config::*;
use super::msix::*;
use super::virtio_pci::{self, common, *};
use super::*;
use crate::config::RegionConfig;
use crate::devices::balloon::BalloonDevice;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

const MIB: u64 = 1 << 20;

#[derive(Default)]
struct Line {
    levels: Mutex<Vec<bool>>,
}

impl IntxLine for Line {
    fn set_level(&self, asserted: bool) -> io::Result<()> {
        self.levels.lock().unwrap().push(asserted);
        Ok(())
    }
}

struct Fixture {
    bus: PciBus,
    dev: Arc<VirtioPciDevice<BalloonDevice>>,
    slot: u8,
    msi: MessageLog,
    line: Arc<Line>,
}

fn fixture() -> Fixture {
    let ram = Arc::new(GuestRam::new(&[RegionConfig::anon(16 * MIB)]).unwrap());
    let msi = MessageLog::default();
    let line = Arc::new(Line::default());
    let mut bus = PciBus::new();
    let opts = balloon::BalloonOptions {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        free_page_reporting: false,
    };
    let (dev, slot) = bus
        .add_virtio(
            BalloonDevice::new(opts, ram.clone()),
            ram,
            PciIrq {
                msi: Arc::new(msi.clone()),
                intx: Some(line.clone()),
                intx_line: 11,
            },
        )
        .unwrap();
    Fixture {
        bus,
        dev,
        slot,
        msi,
        line,
    }
}

fn address(bus: u32, dev: u8, func: u32, reg: usize) -> u32 {
    CONFIG_ENABLE | bus << 16 | u32::from(dev) << 11 | func << 8 | (reg as u32 & 0xfc)
}

fn set_address(b: &PciBus, a: u32) {
    assert!(b.pio_write(CONFIG_ADDRESS_PORT, &a.to_le_bytes()));
}

/// A conf1 read of `len` bytes at `reg` of `00:dev.0`, as Linux's `pci_conf1_read` does it.
fn cfg_read(b: &PciBus, dev: u8, reg: usize, len: usize) -> u32 {
    set_address(b, address(0, dev, 0, reg));
    data_read(b, reg, len)
}

fn data_read(b: &PciBus, reg: usize, len: usize) -> u32 {
    let mut d = [0u8; 4];
    assert!(b.pio_read(CONFIG_DATA_PORT + (reg & 3) as u16, &mut d[..len]));
    u32::from_le_bytes(d)
}

fn cfg_write(b: &PciBus, dev: u8, reg: usize, len: usize, v: u32) {
    set_address(b, address(0, dev, 0, reg));
    let d = v.to_le_bytes();
    assert!(b.pio_write(CONFIG_DATA_PORT + (reg & 3) as u16, &d[..len]));
}

fn mmio_read(b: &PciBus, addr: u64, len: usize) -> Option<u64> {
    let mut d = [0u8; 8];
    b.mmio_read(addr, &mut d[..len])
        .then(|| u64::from_le_bytes(d))
}

fn mmio_write(b: &PciBus, addr: u64, len: usize, v: u64) -> bool {
    b.mmio_write(addr, &v.to_le_bytes()[..len])
}

#[test]
fn config_address_is_a_dword_register_with_bits_1_0_zero() {
    let b = PciBus::new();
    // Linux's pci_check_type1: outb(0x01, 0xCFB); outl(0x80000000, 0xCF8); inl(0xCF8).
    assert!(b.pio_write(0xCFB, &[0x01]));
    assert_eq!(
        b.config_address(),
        0,
        "a byte at 0xCFB is not the address register"
    );
    set_address(&b, 0x8000_0000);
    let mut d = [0u8; 4];
    assert!(b.pio_read(CONFIG_ADDRESS_PORT, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    set_address(&b, 0x8000_0a0b);
    assert_eq!(b.config_address(), 0x8000_0a08, "bits 1:0 read 0");
    let mut w = [0u8; 2];
    assert!(b.pio_read(CONFIG_ADDRESS_PORT, &mut w));
    assert_eq!(w, [0xff, 0xff], "only dword accesses reach the register");
    assert!(b.pio_write(CONFIG_ADDRESS_PORT, &[0, 0]));
    assert_eq!(
        b.config_address(),
        0x8000_0a08,
        "word writes do not change it"
    );
    let mut x = [0u8; 4];
    assert!(!b.pio_read(0xCF7, &mut x) && !b.pio_read(0xD00, &mut x[..1]));
    // Then Linux's pci_sanity_check (no DMI year): a word read of PCI_CLASS_DEVICE (0x0A) at
    // 00:00.0 must be PCI_CLASS_BRIDGE_HOST for conf1 to be used.
    assert_eq!(cfg_read(&b, 0, 0x0A, 2), 0x0600);
}

#[test]
fn enable_bit_gates_the_data_port() {
    let b = PciBus::new();
    set_address(&b, address(0, 0, 0, 0) & !CONFIG_ENABLE);
    assert_eq!(data_read(&b, 0, 4), 0xffff_ffff);
    // A write with the enable bit clear changes nothing.
    set_address(&b, address(0, 0, 0, CACHE_LINE_SIZE) & !CONFIG_ENABLE);
    assert!(b.pio_write(CONFIG_DATA_PORT, &[0x10]));
    assert_eq!(cfg_read(&b, 0, CACHE_LINE_SIZE, 1), 0);
    assert_eq!(cfg_read(&b, 0, 0, 4), 0x0d57_8086);
    cfg_write(&b, 0, CACHE_LINE_SIZE, 1, 0x10);
    assert_eq!(cfg_read(&b, 0, CACHE_LINE_SIZE, 1), 0x10);
}

#[test]
fn bus_device_function_and_register_are_decoded() {
    let f = fixture();
    let b = &f.bus;
    assert_eq!(f.slot, 1, "the first device goes next to the host bridge");
    // Every byte and word of the first 16 dwords matches the dword read.
    for dev in [0, f.slot] {
        for reg in (0..0x40).step_by(4) {
            let dword = cfg_read(b, dev, reg, 4);
            for i in 0..4 {
                assert_eq!(cfg_read(b, dev, reg + i, 1), (dword >> (8 * i)) & 0xff);
            }
            for i in [0, 2] {
                assert_eq!(cfg_read(b, dev, reg + i, 2), (dword >> (8 * i)) & 0xffff);
            }
        }
    }
    assert_eq!(cfg_read(b, f.slot, 0, 4), 0x1045_1af4);
    // Other buses, functions, empty slots and extended registers: all ones.
    for a in [
        address(1, 0, 0, 0),
        address(0, 0, 1, 0),
        address(0, f.slot, 7, 0),
        address(0, 5, 0, 0),
        address(0, 31, 0, 0),
        address(0, 0, 0, 0) | 1 << 24,
    ] {
        set_address(b, a);
        assert_eq!(data_read(b, 0, 4), 0xffff_ffff, "address {a:#x}");
        assert_eq!(data_read(b, 2, 2), 0xffff, "address {a:#x}");
    }
    assert_eq!(b.bad_accesses(), 0);
    // A dword at 0xCFD would cross the data window.
    set_address(b, address(0, 0, 0, 0));
    let mut d = [0u8; 4];
    assert!(b.pio_read(0xCFD, &mut d));
    assert_eq!(d, [0xff; 4]);
    assert!(b.pio_read(0xCFF, &mut d[..2]));
    assert_eq!(b.bad_accesses(), 2);
}

#[test]
fn host_bridge_header() {
    let b = PciBus::new();
    assert_eq!(cfg_read(&b, 0, VENDOR_ID, 2), 0x8086);
    assert_eq!(cfg_read(&b, 0, DEVICE_ID, 2), 0x0d57);
    assert_eq!(
        cfg_read(&b, 0, REVISION_ID, 4),
        0x0600_0000,
        "class 06/00/00, revision 0"
    );
    assert_eq!(
        cfg_read(&b, 0, HEADER_TYPE, 1),
        0,
        "type 0, single function"
    );
    assert_eq!(cfg_read(&b, 0, STATUS, 2) & u32::from(STATUS_CAP_LIST), 0);
    assert_eq!(cfg_read(&b, 0, CAPABILITIES_POINTER, 1), 0);
    assert_eq!(cfg_read(&b, 0, INTERRUPT_PIN, 1), 0);
    for reg in (BAR0..BAR0 + 24).step_by(4).chain([ROM_ADDRESS]) {
        cfg_write(&b, 0, reg, 4, 0xffff_ffff);
        assert_eq!(
            cfg_read(&b, 0, reg, 4),
            0,
            "BAR at {reg:#x} is not implemented"
        );
    }
    // Read-only identity.
    cfg_write(&b, 0, VENDOR_ID, 4, 0x1234_5678);
    cfg_write(&b, 0, REVISION_ID, 4, 0xffff_ffff);
    assert_eq!(cfg_read(&b, 0, 0, 4), 0x0d57_8086);
    assert_eq!(cfg_read(&b, 0, REVISION_ID, 4), 0x0600_0000);
}

#[test]
fn balloon_header_and_read_only_fields() {
    let f = fixture();
    let (b, s) = (&f.bus, f.slot);
    assert_eq!(cfg_read(b, s, VENDOR_ID, 2), 0x1af4);
    assert_eq!(cfg_read(b, s, DEVICE_ID, 2), 0x1040 + 5);
    assert_eq!(
        cfg_read(b, s, REVISION_ID, 1),
        1,
        "non-transitional: revision 1"
    );
    assert_eq!(
        cfg_read(b, s, REVISION_ID, 4) >> 8,
        0xff_0000,
        "class: other"
    );
    assert_eq!(cfg_read(b, s, SUBSYSTEM_VENDOR_ID, 2), 0x1af4);
    assert!(cfg_read(b, s, SUBSYSTEM_ID, 2) >= 0x40);
    assert_eq!(cfg_read(b, s, HEADER_TYPE, 1), 0);
    assert_eq!(
        cfg_read(b, s, STATUS, 2),
        u32::from(STATUS_CAP_LIST),
        "capabilities listed, nothing else"
    );
    assert_eq!(cfg_read(b, s, CAPABILITIES_POINTER, 1), 0x40);
    assert_eq!(cfg_read(b, s, INTERRUPT_PIN, 1), 1, "INTA#");
    assert_eq!(cfg_read(b, s, INTERRUPT_LINE, 1), 11);
    // Read-only: ids, class, status, capability pointer, interrupt pin, header type.
    let before: Vec<u32> = (0..64).map(|i| cfg_read(b, s, 4 * i, 4)).collect();
    for reg in [0x00, 0x08, 0x2C, 0x34] {
        cfg_write(b, s, reg, 4, 0xa5a5_a5a5);
    }
    cfg_write(b, s, STATUS, 2, 0xffff);
    cfg_write(b, s, HEADER_TYPE, 1, 0x80);
    cfg_write(b, s, INTERRUPT_PIN, 1, 4);
    for i in [0usize, 2, 11, 13] {
        assert_eq!(cfg_read(b, s, 4 * i, 4), before[i], "dword {:#x}", 4 * i);
    }
    assert_eq!(cfg_read(b, s, HEADER_TYPE, 1), 0);
    assert_eq!(cfg_read(b, s, INTERRUPT_PIN, 1), 1);
    // Writable: interrupt line, cache line size, and the command bits the function has.
    cfg_write(b, s, INTERRUPT_LINE, 1, 5);
    assert_eq!(cfg_read(b, s, INTERRUPT_LINE, 1), 5);
    cfg_write(b, s, COMMAND, 2, 0xffff);
    assert_eq!(
        cfg_read(b, s, COMMAND, 2),
        u32::from(COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE),
        "no I/O space (no I/O BAR), reserved bits 0"
    );
    // Every capability byte is read-only except those the spec lets the driver write.
    let caps = f.dev.capabilities();
    let ro = [caps.common, caps.notify, caps.isr, caps.device];
    for at in ro {
        let before: Vec<u32> = (0..4).map(|i| cfg_read(b, s, at + 4 * i, 4)).collect();
        for i in 0..4 {
            cfg_write(b, s, at + 4 * i, 4, 0x5a5a_5a5a);
        }
        let after: Vec<u32> = (0..4).map(|i| cfg_read(b, s, at + 4 * i, 4)).collect();
        assert_eq!(before, after, "capability at {at:#x}");
    }
}

/// BAR sizing as Linux's `__pci_read_base` does it: save, write all ones, read, restore.
fn size_bar(b: &PciBus, s: u8, reg: usize) -> (u32, u32) {
    let orig = cfg_read(b, s, reg, 4);
    cfg_write(b, s, reg, 4, 0xffff_ffff);
    let mask = cfg_read(b, s, reg, 4);
    cfg_write(b, s, reg, 4, orig);
    assert_eq!(cfg_read(b, s, reg, 4), orig, "restored");
    (orig, mask)
}

#[test]
fn bar_sizing_of_every_bar() {
    let f = fixture();
    let (b, s) = (&f.bus, f.slot);
    let (lo, lo_mask) = size_bar(b, s, BAR0);
    let (hi, hi_mask) = size_bar(b, s, BAR0 + 4);
    assert_eq!(lo & 0xf, 0b0100, "memory, 64-bit, not prefetchable");
    assert_eq!(lo_mask, 0xffff_8004);
    assert_eq!(hi_mask, 0xffff_ffff);
    let mask = u64::from(hi_mask) << 32 | u64::from(lo_mask & !0xf);
    assert_eq!(!mask + 1, virtio_pci::BAR_SIZE);
    let addr = u64::from(hi) << 32 | u64::from(lo & !0xf);
    assert_eq!(addr, PCI_MMIO_WINDOW_START, "first BAR of the window");
    assert_eq!(addr, f.dev.bar_address());
    for reg in [BAR0 + 8, BAR0 + 12, BAR0 + 16, BAR0 + 20, ROM_ADDRESS] {
        assert_eq!(
            size_bar(b, s, reg),
            (0, 0),
            "register {reg:#x} is not a BAR"
        );
    }
}

#[test]
fn bar_sizing_32_bit_and_geometry_checks() {
    let h = PciHeader {
        vendor_id: 1,
        device_id: 2,
        revision_id: 0,
        class_code: 0,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_pin: 0,
        interrupt_line: 0,
    };
    let mut c = PciConfig::new(&h);
    c.add_bar(
        2,
        BarKind::Mem32 { prefetchable: true },
        0x1000,
        0xE000_1000,
    )
    .unwrap();
    let read = |c: &PciConfig, reg: usize| {
        let mut d = [0u8; 4];
        c.read(reg, &mut d);
        u32::from_le_bytes(d)
    };
    assert_eq!(read(&c, BAR0 + 8), 0xE000_1008);
    c.write(BAR0 + 8, &[0xff; 4]);
    assert_eq!(read(&c, BAR0 + 8), 0xffff_f008, "size mask, prefetchable");
    assert_eq!(
        read(&c, BAR0 + 12),
        0,
        "the next register is not a high half"
    );
    // Byte writes merge into the register.
    c.write(BAR0 + 8, &0xE020_0000u32.to_le_bytes());
    c.write(BAR0 + 8 + 1, &[0x30]);
    assert_eq!(c.bar_address(2), Some(0xE020_3000));
    c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    assert_eq!(c.decode(0xE020_3FFC), Some((2, 0xffc)));
    assert_eq!(c.decode(0xE020_4000), None);
    // Invalid BARs.
    let mut c = PciConfig::new(&h);
    let mem64 = BarKind::Mem64 {
        prefetchable: false,
    };
    assert!(
        c.add_bar(5, mem64, 0x1000, 0).is_err(),
        "no room for the high half"
    );
    assert!(
        c.add_bar(0, mem64, 0x1800, 0).is_err(),
        "not a power of two"
    );
    assert!(c.add_bar(0, mem64, 8, 0).is_err(), "smaller than 16 bytes");
    assert!(c.add_bar(0, mem64, 0x1000, 0x800).is_err(), "misaligned");
    let mem32 = BarKind::Mem32 {
        prefetchable: false,
    };
    assert!(c.add_bar(0, mem32, 0x1000, 1 << 32).is_err(), "above 4 GiB");
    c.add_bar(0, mem64, 1 << 33, 1 << 33).unwrap();
    assert!(
        c.add_bar(1, mem32, 0x1000, 0).is_err(),
        "register 1 is BAR 0's high half"
    );
    c.write(BAR0, &[0xff; 4]);
    c.write(BAR0 + 4, &[0xff; 4]);
    assert_eq!(read(&c, BAR0), 0x0000_0004);
    assert_eq!(
        read(&c, BAR0 + 4),
        0xffff_fffe,
        "8 GiB BAR: size bits in the high half"
    );
}

#[test]
fn memory_space_enable_gates_bar_decoding() {
    let f = fixture();
    let (b, s) = (&f.bus, f.slot);
    let base = f.dev.bar_address();
    let nq = base + virtio_pci::COMMON_CFG_OFFSET + common::NUM_QUEUES;
    assert_eq!(mmio_read(b, nq, 2), None, "memory space is off after reset");
    cfg_write(b, s, COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(mmio_read(b, nq, 2), Some(3), "inflate, deflate, stats");
    // The guest moves the BAR.
    let new = 0xE010_0000u64;
    cfg_write(b, s, COMMAND, 2, 0);
    cfg_write(b, s, BAR0, 4, new as u32);
    cfg_write(b, s, COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(mmio_read(b, nq, 2), None, "old address no longer decodes");
    assert_eq!(mmio_read(b, new + common::NUM_QUEUES, 2), Some(3));
    assert_eq!(
        mmio_read(b, new + virtio_pci::BAR_SIZE, 4),
        None,
        "past the BAR"
    );
    cfg_write(b, s, COMMAND, 2, 0);
    assert!(!mmio_write(b, new + common::DEVICE_STATUS, 1, 1));
    assert_eq!(f.dev.device_status(), 0, "writes while disabled go nowhere");
}

/// Records ioeventfd registrations: `(registered, address, eventfd)`.
#[derive(Default)]
struct Ioevents(Mutex<Vec<(bool, u64, i32)>>);

impl crate::devices::events::IoeventRegistrar for Ioevents {
    fn register(&self, fd: &EventFd, addr: u64, dm: Option<u32>) -> io::Result<()> {
        assert_eq!(dm, None, "virtio-pci notifications match any value");
        self.0.lock().unwrap().push((true, addr, fd.as_raw_fd()));
        Ok(())
    }
    fn unregister(&self, fd: &EventFd, addr: u64, dm: Option<u32>) -> io::Result<()> {
        assert_eq!(dm, None);
        self.0.lock().unwrap().push((false, addr, fd.as_raw_fd()));
        Ok(())
    }
}

impl Ioevents {
    fn taken(&self) -> Vec<(bool, u64, i32)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A driver that moves the BAR (with memory decoding off, as Linux does, and with it on) gets
/// its queues' notification ioeventfds moved along; a notification that still arrives as an
/// exit is handed to the queue's eventfd, not processed on the vCPU.
#[test]
fn notify_ioeventfds_follow_the_bar() {
    use crate::devices::events::DeviceLink;
    let f = fixture();
    let (b, s) = (&f.bus, f.slot);
    let link = Arc::new(DeviceLink::new(3).unwrap());
    let fds: Vec<i32> = (0..3)
        .map(|q| link.queue_fd(q).unwrap().as_raw_fd())
        .collect();
    let reg = Arc::new(Ioevents::default());
    f.dev.attach(link.clone(), reg.clone());
    let notify = |base: u64, q: usize| base + virtio_pci::NOTIFY_OFFSET + 4 * q as u64;
    let at = |registered: bool, base: u64| -> Vec<(bool, u64, i32)> {
        (0..3)
            .map(|q| (registered, notify(base, q), fds[q]))
            .collect()
    };
    assert_eq!(
        reg.taken(),
        [],
        "memory space is off after reset: nothing decodes"
    );
    assert_eq!(f.dev.ioevent_base(), None);
    let old = f.dev.bar_address();
    cfg_write(b, s, COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(reg.taken(), at(true, old));
    assert_eq!(f.dev.ioevent_base(), Some(old));
    // Linux's way: decoding off, new address, decoding on.
    let new = 0xE010_0000u64;
    cfg_write(b, s, COMMAND, 2, 0);
    assert_eq!(reg.taken(), at(false, old));
    cfg_write(b, s, BAR0, 4, new as u32);
    assert_eq!(reg.taken(), [], "BAR written while not decoding");
    cfg_write(b, s, COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(reg.taken(), at(true, new));
    // Moved while decoding: the old addresses go before the new ones come.
    let newer = 0xE020_0000u64;
    cfg_write(b, s, BAR0, 4, newer as u32);
    let mut expect = at(false, new);
    expect.extend(at(true, newer));
    assert_eq!(reg.taken(), expect);
    assert_eq!(f.dev.ioevent_base(), Some(newer));
    // An exit on the notification address (e.g. KVM refused the ioeventfd) is forwarded.
    assert!(mmio_write(b, notify(newer, 1), 2, 1));
    assert_eq!(link.queue_fd(1).unwrap().read().unwrap(), 1);
    assert_eq!(link.forwarded_notifications(), 1);
    assert_eq!(f.dev.notifies(), 0, "not processed on the vCPU");
}

struct Cap {
    at: usize,
    id: u8,
    bytes: Vec<u8>,
}

fn walk_caps(b: &PciBus, s: u8) -> Vec<Cap> {
    assert_ne!(cfg_read(b, s, STATUS, 2) & u32::from(STATUS_CAP_LIST), 0);
    let mut out = Vec::new();
    let mut at = cfg_read(b, s, CAPABILITIES_POINTER, 1) as usize & !3;
    while at != 0 {
        assert!(out.len() < 48, "capability list loops");
        assert!(
            (0x40..0x100).contains(&at) && at % 4 == 0,
            "capability at {at:#x}"
        );
        let id = cfg_read(b, s, at, 1) as u8;
        let bytes = (0..20).map(|i| cfg_read(b, s, at + i, 1) as u8).collect();
        out.push(Cap { at, id, bytes });
        at = cfg_read(b, s, at + 1, 1) as usize & !3;
    }
    out
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn capability_chain_has_every_virtio_structure_and_msix() {
    let f = fixture();
    let caps = walk_caps(&f.bus, f.slot);
    let mut found = std::collections::BTreeMap::new();
    for c in caps.iter().filter(|c| c.id == CAP_ID_VENDOR) {
        let (cap_len, cfg_type, bar) = (c.bytes[2], c.bytes[3], c.bytes[4]);
        let (offset, length) = (le32(&c.bytes, 8), le32(&c.bytes, 12));
        assert_eq!(bar, 0, "cfg_type {cfg_type} in BAR 0");
        assert_eq!(cap_len, if matches!(cfg_type, 2 | 5) { 20 } else { 16 });
        assert!(u64::from(offset) + u64::from(length) <= virtio_pci::BAR_SIZE);
        assert!(
            found.insert(cfg_type, (offset, length, c)).is_none(),
            "one of each"
        );
    }
    let types: Vec<u8> = found.keys().copied().collect();
    assert_eq!(types, [1, 2, 3, 4, 5]);
    assert_eq!(
        found[&1].0..found[&1].0 + found[&1].1,
        0..0x38,
        "common cfg"
    );
    assert_eq!(
        (found[&2].0, found[&2].1),
        (0x3000, 3 * 4),
        "notify: 3 queues"
    );
    assert_eq!(le32(&found[&2].2.bytes, 16), 4, "notify_off_multiplier");
    assert_eq!((found[&3].0, found[&3].1), (0x1000, 1), "ISR");
    assert_eq!((found[&4].0, found[&4].1), (0x2000, 16), "balloon config");
    assert_eq!((found[&5].0, found[&5].1), (0, 0), "PCI cfg access window");
    let ours = f.dev.capabilities();
    assert_eq!(found[&1].2.at, ours.common);
    assert_eq!(found[&5].2.at, ours.pci_cfg);
    let msix: Vec<&Cap> = caps.iter().filter(|c| c.id == CAP_ID_MSIX).collect();
    assert_eq!(msix.len(), 1);
    let m = &msix[0].bytes;
    let control = u16::from_le_bytes([m[2], m[3]]);
    assert_eq!(control & 0x7ff, 3, "4 vectors: 3 queues + configuration");
    assert_eq!(control & 0xc000, 0, "disabled, unmasked after reset");
    assert_eq!(le32(m, 4), 0x4000, "table at 0x4000 of BAR 0");
    assert_eq!(le32(m, 8), 0x5000, "PBA at 0x5000 of BAR 0");
    assert_eq!(caps.len(), 6);
}

fn recorder_msix(n: u16) -> (Msix, MessageLog) {
    let r = MessageLog::default();
    (Msix::new(n, Arc::new(r.clone())).unwrap(), r)
}

fn table_read(m: &Msix, off: u64, len: usize) -> u64 {
    let mut d = [0u8; 8];
    m.table_read(off, &mut d[..len]);
    u64::from_le_bytes(d)
}

#[test]
fn msix_table_reads_writes_and_masks() {
    let (m, r) = recorder_msix(3);
    for v in 0..3 {
        assert_eq!(table_read(&m, 16 * v, 8), 0);
        assert_eq!(table_read(&m, 16 * v + 8, 8), 1 << 32, "data 0, masked");
    }
    // Dword writes, qword writes, and the vector control's reserved bits.
    m.table_write(16, &0xfee0_1000u32.to_le_bytes());
    m.table_write(20, &0u32.to_le_bytes());
    m.table_write(24, &(0x0000_fffe_0000_0041u64).to_le_bytes());
    assert_eq!(table_read(&m, 16, 8), 0xfee0_1000);
    assert_eq!(table_read(&m, 24, 4), 0x41);
    assert_eq!(
        table_read(&m, 28, 4),
        0,
        "unmasked; reserved control bits read 0"
    );
    // Bad sizes and alignment change nothing.
    let bad_before = m.counters().bad_accesses;
    m.table_write(16, &[1, 2]);
    m.table_write(18, &[1, 2, 3, 4]);
    m.table_write(44, &[0; 8]);
    m.table_write(48, &[0; 4]);
    assert_eq!(table_read(&m, 16, 4), 0xfee0_1000);
    let mut w = [0u8; 2];
    m.table_read(16, &mut w);
    assert_eq!(w, [0, 0]);
    assert_eq!(m.counters().bad_accesses, bad_before + 5);
    // Disabled: nothing is sent or held.
    assert!(!m.signal(1));
    m.set_control(CONTROL_ENABLE);
    assert!(m.signal(1));
    assert_eq!(r.take(), [(0xfee0_1000, 0x41)]);
    assert!(!m.signal(3), "no such vector");
    // A masked vector holds its message in the PBA until unmasked.
    assert!(m.signal(0));
    assert!(r.take().is_empty());
    let mut pba = [0u8; 8];
    m.pba_read(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 1);
    m.pba_write();
    m.table_write(0, &0xfee0_2000u32.to_le_bytes());
    m.table_write(8, &0x42u32.to_le_bytes());
    assert!(r.take().is_empty());
    m.table_write(12, &0u32.to_le_bytes());
    assert_eq!(
        r.take(),
        [(0xfee0_2000, 0x42)],
        "unmasking sends the pending message"
    );
    m.pba_read(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
    // The function mask holds every vector.
    m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    assert!(m.signal(0) && m.signal(1));
    assert!(r.take().is_empty());
    m.pba_read(0, &mut pba[..4]);
    assert_eq!(pba[0], 0b11);
    m.set_control(CONTROL_ENABLE);
    assert_eq!(r.take(), [(0xfee0_2000, 0x42), (0xfee0_1000, 0x41)]);
    let c = m.counters();
    assert_eq!((c.sent, c.held, c.failed), (4, 3, 0));
}

/// A sink whose routes record every `set` and refuse messages with data 0xbad (as KVM's
/// routes refuse a destination without a vCPU).
#[derive(Clone, Default)]
struct Picky {
    sets: Arc<Mutex<Vec<(u64, u32)>>>,
    log: MessageLog,
}

struct PickyRoute {
    sink: Picky,
    inner: Box<dyn MsiRoute>,
}

impl MsiSink for Picky {
    fn new_route(&self) -> io::Result<Box<dyn MsiRoute>> {
        Ok(Box::new(PickyRoute {
            sink: self.clone(),
            inner: self.log.new_route()?,
        }))
    }
}

impl MsiRoute for PickyRoute {
    fn set(&mut self, addr: u64, data: u32) -> io::Result<()> {
        self.sink.sets.lock().unwrap().push((addr, data));
        if data == 0xbad {
            return Err(io::Error::other("refused"));
        }
        self.inner.set(addr, data)
    }
    fn send(&self) -> io::Result<()> {
        self.inner.send()
    }
}

#[test]
fn msix_routes_follow_the_message_only_when_deliverable() {
    let sink = Picky::default();
    let m = Msix::new(2, Arc::new(sink.clone())).unwrap();
    let sets = || std::mem::take(&mut *sink.sets.lock().unwrap());
    // Programmed while masked and disabled: no route is touched.
    m.table_write(0, &0xfee0_0000u64.to_le_bytes());
    m.table_write(8, &0x30u32.to_le_bytes());
    m.table_write(12, &0u32.to_le_bytes());
    assert!(sets().is_empty(), "MSI-X is disabled");
    // Enabling points the unmasked vector's route once; vector 1 stays masked.
    m.set_control(CONTROL_ENABLE);
    assert_eq!(sets(), [(0xfee0_0000, 0x30)]);
    assert!(m.signal(0));
    assert_eq!(sink.log.take(), [(0xfee0_0000, 0x30)]);
    // Mask, reprogram (a qword for the address: one update, not one per dword), unmask: one
    // update, at the unmask.
    m.table_write(12, &1u32.to_le_bytes());
    m.table_write(0, &0xfee0_1000u64.to_le_bytes());
    m.table_write(8, &0x31u32.to_le_bytes());
    assert!(sets().is_empty(), "masked");
    m.table_write(12, &0u32.to_le_bytes());
    assert_eq!(sets(), [(0xfee0_1000, 0x31)]);
    // Masking and unmasking with the same message rewrites nothing.
    m.table_write(12, &1u32.to_le_bytes());
    m.table_write(12, &0u32.to_le_bytes());
    m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    m.set_control(CONTROL_ENABLE);
    assert!(sets().is_empty());
    assert_eq!(m.counters().route_updates, 2);
    // A message the route refuses: nothing goes out (not the old message either), each
    // interrupt is counted as failed, until a valid message is programmed.
    m.table_write(8, &0xbadu32.to_le_bytes());
    assert_eq!(sets(), [(0xfee0_1000, 0xbad)]);
    assert!(m.signal(0) && m.signal(0));
    assert!(sink.log.take().is_empty());
    let c = m.counters();
    assert_eq!((c.sent, c.failed), (1, 2));
    m.table_write(8, &0x32u32.to_le_bytes());
    assert!(m.signal(0));
    assert_eq!(sink.log.take(), [(0xfee0_1000, 0x32)]);
    // A pending message of a vector whose route was refused is counted when it is flushed.
    m.table_write(28, &1u32.to_le_bytes());
    m.table_write(16, &0xfee0_0000u64.to_le_bytes());
    m.table_write(24, &0xbadu32.to_le_bytes());
    assert!(m.signal(1));
    m.table_write(28, &0u32.to_le_bytes());
    let c = m.counters();
    assert_eq!((c.sent, c.held, c.failed, c.route_updates), (2, 1, 3, 5));
}

#[test]
fn msix_through_config_space_and_bar() {
    let f = fixture();
    let (b, s) = (&f.bus, f.slot);
    cfg_write(b, s, COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
    let base = f.dev.bar_address();
    let table = base + virtio_pci::MSIX_TABLE_OFFSET;
    assert!(mmio_write(b, table, 8, 0xfee0_0000));
    assert!(mmio_write(b, table + 8, 8, 0x31));
    assert_eq!(mmio_read(b, table, 8), Some(0xfee0_0000));
    assert_eq!(mmio_read(b, table + 8, 4), Some(0x31));
    let ctrl = f.dev.capabilities().msix + 2;
    cfg_write(b, s, ctrl, 2, 0xffff);
    assert_eq!(
        cfg_read(b, s, ctrl, 2),
        0xc003,
        "enable, mask; table size read-only"
    );
    cfg_write(b, s, ctrl, 2, u32::from(CONTROL_ENABLE));
    let common = base + virtio_pci::COMMON_CFG_OFFSET;
    assert!(mmio_write(b, common + common::MSIX_CONFIG, 2, 0));
    f.dev.with_device(|d| ((), d.model.set_target_mib(4)));
    assert_eq!(f.msi.take(), [(0xfee0_0000, 0x31)]);
    assert!(
        f.line.levels.lock().unwrap().is_empty(),
        "no INTx with MSI-X"
    );
    // The PBA is read-only and readable with dwords.
    let pba = base + virtio_pci::MSIX_PBA_OFFSET;
    assert_eq!(mmio_read(b, pba, 4), Some(0));
    let bad = f.dev.bad_accesses();
    assert!(mmio_write(b, pba, 4, 0xf));
    assert_eq!(mmio_read(b, pba, 8), Some(0));
    assert_eq!(f.dev.bad_accesses(), bad + 1);
}

/// A memory-enabled fixture and a reader/writer of the common configuration.
fn common_rw(
    f: &Fixture,
) -> (
    impl Fn(u64, usize) -> u64 + '_,
    impl Fn(u64, usize, u64) + '_,
) {
    cfg_write(&f.bus, f.slot, COMMAND, 2, u32::from(COMMAND_MEMORY));
    let base = f.dev.bar_address();
    (
        move |off, len| mmio_read(&f.bus, base + off, len).expect("decoded"),
        move |off, len, v| assert!(mmio_write(&f.bus, base + off, len, v)),
    )
}

#[test]
fn common_configuration_fields() {
    let f = fixture();
    let (r, w) = common_rw(&f);
    use common::*;
    assert_eq!(r(NUM_QUEUES, 2), 3);
    assert_eq!(r(DEVICE_FEATURE, 4), 0b110, "STATS_VQ, DEFLATE_ON_OOM");
    w(DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(r(DEVICE_FEATURE_SELECT, 4), 1);
    assert_eq!(r(DEVICE_FEATURE, 4), 1, "VIRTIO_F_VERSION_1 (bit 32)");
    w(DEVICE_FEATURE_SELECT, 4, 2);
    assert_eq!(r(DEVICE_FEATURE, 4), 0);
    assert_eq!(r(MSIX_CONFIG, 2), 0xffff, "NO_VECTOR after reset");
    for q in 0..3u64 {
        w(QUEUE_SELECT, 2, q);
        assert_eq!(r(QUEUE_SIZE, 2), 1024, "queue {q}: maximum size");
        assert_eq!(r(QUEUE_NOTIFY_OFF, 2), q);
        assert_eq!(r(QUEUE_ENABLE, 2), 0);
        assert_eq!(r(QUEUE_MSIX_VECTOR, 2), 0xffff);
    }
    w(QUEUE_SELECT, 2, 3);
    assert_eq!(r(QUEUE_SIZE, 2), 0, "queue 3 does not exist");
    // Vectors beyond the table (4 entries) read back as NO_VECTOR.
    w(QUEUE_SELECT, 2, 1);
    w(QUEUE_MSIX_VECTOR, 2, 2);
    assert_eq!(r(QUEUE_MSIX_VECTOR, 2), 2);
    w(QUEUE_MSIX_VECTOR, 2, 4);
    assert_eq!(r(QUEUE_MSIX_VECTOR, 2), 0xffff);
    w(MSIX_CONFIG, 2, 3);
    assert_eq!(r(MSIX_CONFIG, 2), 3);
    // Queue size: smaller powers of two only.
    w(QUEUE_SIZE, 2, 64);
    assert_eq!(r(QUEUE_SIZE, 2), 64);
    let bad = f.dev.bad_accesses();
    for s in [0, 100, 2048] {
        w(QUEUE_SIZE, 2, s);
    }
    assert_eq!(r(QUEUE_SIZE, 2), 64);
    assert_eq!(f.dev.bad_accesses(), bad + 3);
    // Ring addresses: 64-bit fields as two halves or one qword; alignment checked.
    w(QUEUE_DESC, 4, 0x1000);
    w(QUEUE_DESC + 4, 4, 0x1);
    assert_eq!(r(QUEUE_DESC, 8), 0x1_0000_1000);
    assert_eq!(r(QUEUE_DESC + 4, 4), 1);
    w(QUEUE_DRIVER, 8, 0x2000);
    w(QUEUE_DEVICE, 8, 0x3000);
    assert_eq!((r(QUEUE_DRIVER, 8), r(QUEUE_DEVICE, 8)), (0x2000, 0x3000));
    let bad = f.dev.bad_accesses();
    w(QUEUE_DESC, 4, 0x1008);
    w(QUEUE_DEVICE, 8, 0x3002);
    assert_eq!(
        r(QUEUE_DESC, 8),
        0x1_0000_1000,
        "descriptor table needs 16-byte alignment"
    );
    assert_eq!(
        r(QUEUE_DEVICE, 8),
        0x3000,
        "used ring needs 4-byte alignment"
    );
    assert_eq!(f.dev.bad_accesses(), bad + 2);
}

#[test]
fn wrong_widths_and_read_only_fields_are_ignored_and_counted() {
    let f = fixture();
    let (r, w) = common_rw(&f);
    use common::*;
    let bad = f.dev.bad_accesses();
    // Read-only fields.
    w(NUM_QUEUES, 2, 9);
    w(DEVICE_FEATURE, 4, 0xffff_ffff);
    w(CONFIG_GENERATION, 1, 7);
    w(QUEUE_NOTIFY_OFF, 2, 5);
    w(QUEUE_ENABLE, 2, 0);
    assert_eq!(f.dev.bad_accesses(), bad + 5);
    assert_eq!(r(NUM_QUEUES, 2), 3);
    assert_eq!(r(DEVICE_FEATURE, 4), 0b110);
    assert_eq!(r(CONFIG_GENERATION, 1), 0);
    assert_eq!(r(QUEUE_NOTIFY_OFF, 2), 0);
    // Wrong widths and offsets inside fields: reads give 0, writes do nothing.
    let bad = f.dev.bad_accesses();
    assert_eq!(r(NUM_QUEUES, 4), 0);
    assert_eq!(r(DEVICE_FEATURE + 1, 2), 0);
    assert_eq!(r(DEVICE_STATUS, 2), 0);
    w(QUEUE_SELECT, 4, 1);
    w(DEVICE_STATUS, 4, 1);
    w(QUEUE_DESC + 2, 4, 0x4000);
    assert_eq!(r(QUEUE_SELECT, 2), 0);
    assert_eq!(r(DEVICE_STATUS, 1), 0);
    assert_eq!(r(QUEUE_DESC, 8), 0);
    assert_eq!(f.dev.bad_accesses(), bad + 6);
    // Outside every structure, in the ISR's unused bytes, the notify area with bad sizes.
    let bad = f.dev.bad_accesses();
    w(0x800, 4, 1);
    w(virtio_pci::ISR_OFFSET, 1, 3);
    w(virtio_pci::NOTIFY_OFFSET, 1, 0);
    w(virtio_pci::NOTIFY_OFFSET, 2, 0); // before DRIVER_OK
    w(virtio_pci::NOTIFY_OFFSET + 2, 2, 0);
    assert_eq!(r(0x800, 4), 0);
    assert_eq!(f.dev.bad_accesses(), bad + 6);
    assert_eq!(f.dev.notifies(), 0);
}

#[test]
fn device_status_rules() {
    let f = fixture();
    let (r, w) = common_rw(&f);
    use common::*;
    w(DEVICE_STATUS, 1, 1);
    w(DEVICE_STATUS, 1, 3);
    assert_eq!(r(DEVICE_STATUS, 1), 3);
    w(DEVICE_STATUS, 1, 1);
    assert_eq!(r(DEVICE_STATUS, 1), 3, "status bits are only added");
    // FEATURES_OK is not kept without VIRTIO_F_VERSION_1.
    w(DRIVER_FEATURE_SELECT, 4, 0);
    w(DRIVER_FEATURE, 4, 0b110);
    w(DEVICE_STATUS, 1, 0xb);
    assert_eq!(r(DEVICE_STATUS, 1), 3);
    w(DRIVER_FEATURE_SELECT, 4, 1);
    w(DRIVER_FEATURE, 4, 1);
    assert_eq!(r(DRIVER_FEATURE, 4), 1);
    w(DEVICE_STATUS, 1, 0xb);
    assert_eq!(r(DEVICE_STATUS, 1), 0xb);
    let bad = f.dev.bad_accesses();
    w(DRIVER_FEATURE, 4, 0);
    assert_eq!(
        r(DRIVER_FEATURE, 4),
        1,
        "features are fixed after FEATURES_OK"
    );
    assert_eq!(f.dev.bad_accesses(), bad + 1);
    // DRIVER_OK with no queue enabled fails (the balloon needs inflate and deflate).
    w(MSIX_CONFIG, 2, 0);
    w(DEVICE_STATUS, 1, 0xf);
    assert_eq!(r(DEVICE_STATUS, 1), 0x4f, "DEVICE_NEEDS_RESET");
    assert!(
        f.dev.intx_asserted(),
        "configuration interrupt (INTx: MSI-X is off)"
    );
    // Reset: status 0, vectors NO_VECTOR, queue state cleared, generation kept.
    w(QUEUE_SELECT, 2, 0);
    w(QUEUE_SIZE, 2, 16);
    w(DEVICE_STATUS, 1, 0);
    assert_eq!(r(DEVICE_STATUS, 1), 0);
    assert_eq!(r(MSIX_CONFIG, 2), 0xffff);
    assert_eq!(r(QUEUE_SIZE, 2), 1024);
    assert_eq!(r(DRIVER_FEATURE, 4), 0);
    assert!(!f.dev.intx_asserted(), "reset clears the ISR");
}

#[test]
fn intx_fallback_isr_and_status_bit() {
    let f = fixture();
    let (b, s) = (&f.bus, f.slot);
    cfg_write(b, s, COMMAND, 2, u32::from(COMMAND_MEMORY));
    let isr = f.dev.bar_address() + virtio_pci::ISR_OFFSET;
    f.dev.with_device(|d| ((), d.model.set_target_mib(2)));
    assert!(f.dev.intx_asserted());
    assert_eq!(*f.line.levels.lock().unwrap(), [true]);
    assert_ne!(cfg_read(b, s, STATUS, 2) & u32::from(STATUS_INTERRUPT), 0);
    assert!(f.msi.take().is_empty());
    assert_eq!(mmio_read(b, isr, 1), Some(2), "configuration change");
    assert_eq!(mmio_read(b, isr, 1), Some(0), "read to clear");
    assert!(!f.dev.intx_asserted());
    assert_eq!(cfg_read(b, s, STATUS, 2) & u32::from(STATUS_INTERRUPT), 0);
    // INTx disable keeps the line low but the status bit still shows the interrupt.
    cfg_write(
        b,
        s,
        COMMAND,
        2,
        u32::from(COMMAND_MEMORY | COMMAND_INTX_DISABLE),
    );
    f.dev.with_device(|d| ((), d.model.set_target_mib(3)));
    assert!(!f.dev.intx_asserted());
    assert_ne!(cfg_read(b, s, STATUS, 2) & u32::from(STATUS_INTERRUPT), 0);
    cfg_write(b, s, COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert!(
        f.dev.intx_asserted(),
        "re-enabling INTx asserts the pending interrupt"
    );
    // Enabling MSI-X takes INTx away.
    cfg_write(
        b,
        s,
        f.dev.capabilities().msix + 2,
        2,
        u32::from(CONTROL_ENABLE),
    );
    assert!(!f.dev.intx_asserted());
    assert_eq!(*f.line.levels.lock().unwrap(), [true, false, true, false]);
}

#[test]
fn pci_cfg_capability_reaches_the_bar() {
    let f = fixture();
    let (b, s) = (&f.bus, f.slot);
    let at = f.dev.capabilities().pci_cfg;
    // cap.bar = 0, cap.offset = num_queues, cap.length = 2; then read pci_cfg_data.
    cfg_write(b, s, at + 4, 1, 0);
    cfg_write(b, s, at + 8, 4, common::NUM_QUEUES as u32);
    cfg_write(b, s, at + 12, 4, 2);
    assert_eq!(
        cfg_read(b, s, at + 16, 2),
        3,
        "even with memory space disabled"
    );
    // A write through the window: queue_select = 2.
    cfg_write(b, s, at + 8, 4, common::QUEUE_SELECT as u32);
    cfg_write(b, s, at + 16, 2, 2);
    cfg_write(b, s, at + 8, 4, common::QUEUE_NOTIFY_OFF as u32);
    assert_eq!(cfg_read(b, s, at + 16, 2), 2);
    // Invalid windows are ignored and counted.
    let bad = f.dev.bad_accesses();
    cfg_write(b, s, at + 12, 4, 3);
    cfg_read(b, s, at + 16, 4);
    cfg_write(b, s, at + 12, 4, 4);
    cfg_write(b, s, at + 8, 4, 0x12); // misaligned for 4 bytes
    cfg_write(b, s, at + 16, 4, 1);
    cfg_write(b, s, at + 4, 1, 2); // BAR 2 does not exist
    cfg_write(b, s, at + 8, 4, 0);
    cfg_read(b, s, at + 16, 4);
    cfg_write(b, s, at + 4, 1, 0);
    cfg_write(b, s, at + 8, 4, virtio_pci::BAR_SIZE as u32);
    cfg_read(b, s, at + 16, 4);
    assert_eq!(f.dev.bad_accesses(), bad + 4);
    assert_eq!(f.dev.device_status(), 0);
}

#[test]
fn window_allocation_and_slots() {
    let mut b = PciBus::with_window(0xE000_0000, 0x10000);
    assert_eq!(b.allocate_bar(0x1000).unwrap(), 0xE000_0000);
    assert_eq!(
        b.allocate_bar(0x8000).unwrap(),
        0xE000_8000,
        "naturally aligned"
    );
    assert!(b.allocate_bar(0x1000).is_err(), "window full");
    let mut b = PciBus::new();
    for slot in 1..SLOTS as u8 {
        assert_eq!(b.add(Arc::new(HostBridge::default())).unwrap(), slot);
    }
    assert!(matches!(
        b.add(Arc::new(HostBridge::default())),
        Err(PciError::NoFreeSlot)
    ));
}
