//! Hostile drivers against devices served by the device event thread: a balloon and a disk on
//! one PCI bus, each with its link and subscriber on one `devices` thread under its seccomp
//! filter. Queue notifications arrive as KVM delivers them, by a write to the queue's eventfd
//! (no notification reaches a transport as an exit here); the mock driver puts hostile queue
//! contents in guest RAM, and the thread refuses them, counts them and keeps serving both
//! devices.

use super::*;
use common::{wait_until, TempDir};
use memvisor::devices::balloon::BalloonEvents;
use memvisor::devices::event_thread::{DeviceThread, Subscriber};
use memvisor::devices::events::{DeviceLink, IoeventRegistrar};
use memvisor::devices::queue_events::QueueEvents;
use memvisor::seccomp::{SeccompMode, ThreadFilter, ThreadKind};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// No KVM here: the test signals the queue eventfds itself, as KVM does for an ioeventfd.
struct NoKvm;

impl IoeventRegistrar for NoKvm {
    fn register(&self, _: &EventFd, _: u64, _: Option<u32>) -> io::Result<()> {
        Ok(())
    }
    fn unregister(&self, _: &EventFd, _: u64, _: Option<u32>) -> io::Result<()> {
        Ok(())
    }
}

const BLK_T_IN: u32 = 0;
const BLK_T_OUT: u32 = 1;
const BLK_S_OK: u8 = 0;
const BLK_S_IOERR: u8 = 1;
const BALLOON_MSI: u32 = 0x50;
const DISK_MSI: u32 = 0x60;
/// Request headers at REQ + 0x20 n, data at REQ + 0x1000, statuses at REQ + 0x2000 + n.
const REQ: u64 = 0x30_0000;
const SECTORS: u64 = MIB / 512;

/// What KVM does when the guest writes queue `q`'s notification address.
fn kick(link: &DeviceLink, q: usize) {
    link.queue_fd(q).unwrap().write(1).unwrap();
}

fn header(ram: &GuestRam, n: u64, kind: u32, sector: u64) -> u64 {
    let at = REQ + 0x20 * n;
    let m = ram.memory();
    m.write_obj(kind, GuestAddress(at)).unwrap();
    m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    at
}

/// A status byte for request `n`, set to 0xff (nothing written yet).
fn status_at(ram: &GuestRam, n: u64) -> u64 {
    ram.memory()
        .write_obj(0xffu8, GuestAddress(REQ + 0x2000 + n))
        .unwrap();
    REQ + 0x2000 + n
}

fn status(ram: &GuestRam, at: u64) -> u8 {
    ram.memory().read_obj(GuestAddress(at)).unwrap()
}

fn wait_used(q: &SplitQueue, ram: &GuestRam, n: u16, what: &str) {
    wait_until(what, Duration::from_secs(30), || q.used_idx(ram) == n);
}

#[test]
fn hostile_queues_through_the_device_thread_leave_it_serving_every_device() {
    let tmp = TempDir::new("pci-thread");
    let img = tmp.path().join("disk.img");
    std::fs::write(&img, vec![0u8; MIB as usize]).unwrap();
    let disk_config = DiskConfig {
        path: img.clone(),
        read_only: false,
        id: "vda".into(),
        direct: false,
    };
    let opts = BalloonOptions {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_polling_interval_s: 0,
        free_page_reporting: false,
    };
    let vm = vm_with_disk(opts, Some(disk_config));
    let disk = vm.disk.clone().unwrap();
    let balloon_link = vm.dev.attach_link(Arc::new(NoKvm)).unwrap();
    let disk_link = disk.attach_link(Arc::new(NoKvm)).unwrap();
    let subscribers: Vec<Subscriber> = vec![
        Box::new(BalloonEvents::new(BalloonHandle::Pci(vm.dev.clone()), vm.ram.clone()).unwrap()),
        Box::new(QueueEvents::new(disk.clone(), disk_link.clone(), vm.ram.clone()).unwrap()),
    ];
    let filter = ThreadFilter::new(SeccompMode::On, ThreadKind::Devices).unwrap();
    let _thread = DeviceThread::start(subscribers, filter).unwrap();

    // Both drivers up, MSI-X on.
    let bd = Driver::probe(&vm);
    let dd = Driver::probe_device(&vm, 0x1042);
    let mut inflate = SplitQueue::new(0, 0x10_0000);
    let mut deflate = SplitQueue::new(1, 0x10_1000);
    let mut requests = SplitQueue::new(0, 0x18_0000);
    for (d, data) in [(&bd, BALLOON_MSI), (&dd, DISK_MSI)] {
        d.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
        d.msix_vector(0, MSI_ADDR, data);
        d.enable_msix();
        d.negotiate(F_VERSION_1);
        d.set_common(cc::MSIX_CONFIG, 2, 0);
    }
    bd.setup_queue(&mut inflate, 0);
    bd.setup_queue(&mut deflate, 0);
    dd.setup_queue(&mut requests, 0);
    bd.driver_ok();
    dd.driver_ok();
    assert_eq!(bd.common(cc::DEVICE_STATUS, 1), 0xf);
    assert_eq!(dd.common(cc::DEVICE_STATUS, 1), 0xf);
    let disk_counters = || disk.with_device(|d| (d.model.counters(), false));

    // A good write: the image has the data (the thread wrote it under its seccomp filter).
    let data: Vec<u8> = (0..512u32).map(|i| (i * 7 + 1) as u8).collect();
    vm.ram
        .memory()
        .write_slice(&data, GuestAddress(REQ + 0x1000))
        .unwrap();
    let s0 = status_at(&vm.ram, 0);
    requests.post_chain(
        &vm.ram,
        &[
            (header(&vm.ram, 0, BLK_T_OUT, 8), 16, 0),
            (REQ + 0x1000, 512, 0),
            (s0, 1, VRING_DESC_F_WRITE),
        ],
    );
    kick(&disk_link, 0);
    wait_used(&requests, &vm.ram, 1, "the disk's write");
    assert_eq!(status(&vm.ram, s0), BLK_S_OK);
    assert_eq!(std::fs::read(&img).unwrap()[8 * 512..9 * 512], data[..]);
    assert!(vm.msi.take().contains(&(MSI_ADDR, DISK_MSI)));

    // Hostile disk requests, one notification for all three: a header outside guest memory,
    // a chain that loops, a read of the sector past the end.
    let canary = [0x5au8; 512];
    vm.ram
        .memory()
        .write_slice(&canary, GuestAddress(REQ + 0x1200))
        .unwrap();
    let s1 = status_at(&vm.ram, 1);
    requests.post_chain(
        &vm.ram,
        &[(0xC000_0000, 16, 0), (s1, 1, VRING_DESC_F_WRITE)],
    );
    let s2 = status_at(&vm.ram, 2);
    let ids = requests.post_chain(
        &vm.ram,
        &[
            (header(&vm.ram, 2, BLK_T_IN, 0), 16, 0),
            (s2, 1, VRING_DESC_F_WRITE),
        ],
    );
    // The last descriptor points back to the first.
    let last = requests.desc + 16 * u64::from(ids[1]);
    let m = vm.ram.memory();
    m.write_obj(
        VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
        GuestAddress(last + 12),
    )
    .unwrap();
    m.write_obj(ids[0], GuestAddress(last + 14)).unwrap();
    let s3 = status_at(&vm.ram, 3);
    requests.post_chain(
        &vm.ram,
        &[
            (header(&vm.ram, 3, BLK_T_IN, SECTORS), 16, 0),
            (REQ + 0x1200, 512, VRING_DESC_F_WRITE),
            (s3, 1, VRING_DESC_F_WRITE),
        ],
    );
    let before = disk_counters();
    kick(&disk_link, 0);
    wait_used(&requests, &vm.ram, 4, "the hostile requests back");
    let c = disk_counters();
    assert_eq!(
        c.buffers_outside_memory - before.buffers_outside_memory,
        1,
        "{c:?}"
    );
    assert_eq!(c.looping_chains - before.looping_chains, 1, "{c:?}");
    assert_eq!(c.out_of_range - before.out_of_range, 1, "{c:?}");
    assert_eq!(status(&vm.ram, s1), BLK_S_IOERR, "outside memory");
    assert_eq!(
        status(&vm.ram, s2),
        0xff,
        "a looping chain has no status to write"
    );
    assert_eq!(status(&vm.ram, s3), BLK_S_IOERR, "past the end");
    let mut after = [0u8; 512];
    m.read_slice(&mut after, GuestAddress(REQ + 0x1200))
        .unwrap();
    assert_eq!(after, canary, "nothing read into the buffer");
    assert_eq!((c.reads, c.read_bytes), (before.reads, before.read_bytes));

    // The balloon on the same thread: hostile buffers, then a real inflate.
    let bad: Vec<u8> = [0xC_0000u32, (RAM / PAGE) as u32, u32::MAX]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    m.write_slice(&bad, GuestAddress(PFN_BUF)).unwrap();
    inflate.post(&vm.ram, PFN_BUF, bad.len() as u32, 0);
    inflate.post(&vm.ram, 0xC000_0000, 1024, 0);
    kick(&balloon_link, 0);
    wait_used(&inflate, &vm.ram, 2, "the hostile balloon buffers back");
    let b = counters(&vm.dev);
    assert_eq!(b.invalid_pfns + b.pfns_outside_ram, 3, "{b:?}");
    assert_eq!(b.descriptors_outside_memory, 1, "{b:?}");
    assert_eq!(b.inflated_pages, 0, "{b:?}");
    let (buf, len) = pfns(&vm.ram, PFN_BUF + 0x1000, DATA, 256);
    let resident = vm.ram.resident_bytes()[0];
    inflate.post(&vm.ram, buf, len, 0);
    kick(&balloon_link, 0);
    wait_used(&inflate, &vm.ram, 3, "the inflate");
    assert_eq!(counters(&vm.dev).inflated_pages, 256);
    assert_eq!(
        vm.ram.resident_bytes()[0],
        resident - 256 * PAGE,
        "1 MiB went back to the host"
    );
    // An available index far ahead stops the balloon until a reset...
    m.write_obj(
        inflate.avail_idx.wrapping_add(1000),
        GuestAddress(inflate.avail + 2),
    )
    .unwrap();
    vm.msi.take();
    kick(&balloon_link, 0);
    wait_until("the balloon's NEEDS_RESET", Duration::from_secs(30), || {
        bd.common(cc::DEVICE_STATUS, 1) & S_NEEDS_RESET != 0
    });
    assert_eq!(
        vm.msi.take(),
        [(MSI_ADDR, BALLOON_MSI)],
        "configuration interrupt"
    );

    // ... and the disk is still served: it reads back what it wrote.
    let s4 = status_at(&vm.ram, 4);
    m.write_slice(&[0u8; 512], GuestAddress(REQ + 0x1400))
        .unwrap();
    requests.post_chain(
        &vm.ram,
        &[
            (header(&vm.ram, 4, BLK_T_IN, 8), 16, 0),
            (REQ + 0x1400, 512, VRING_DESC_F_WRITE),
            (s4, 1, VRING_DESC_F_WRITE),
        ],
    );
    kick(&disk_link, 0);
    wait_used(&requests, &vm.ram, 5, "the read after the hostile requests");
    assert_eq!(status(&vm.ram, s4), BLK_S_OK);
    let mut back = [0u8; 512];
    m.read_slice(&mut back, GuestAddress(REQ + 0x1400)).unwrap();
    assert_eq!(back[..], data[..]);
    // Every notification came through an eventfd; none was forwarded from a vCPU exit.
    assert_eq!(disk_link.forwarded_notifications(), 0);
    assert_eq!(balloon_link.forwarded_notifications(), 0);
    // Guest data the balloon did not take is intact.
    assert_eq!(mismatches(&vm.ram, DATA + MIB, DATA_LEN - MIB, pattern), 0);
}
