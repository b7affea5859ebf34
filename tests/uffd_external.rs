//! External userfaultfd page-fault handlers with several regions: the handler here behaves as
//! Firecracker's example handlers (`valid_handler` on `uffd_utils`) do — one `accept`, one
//! `recvmsg` of the JSON region list plus the descriptor, the sum of region sizes asserted
//! against its memory file, faults served by `UFFDIO_COPY` from file offset
//! `offset + (addr - base_host_virt_addr)`, removed pages remembered and served as zeros.
//!
//! Regions naming the same socket must reach it as one connection and one message, their
//! offsets cumulative in region order, so such a handler serving one file of all of them works
//! unchanged.

mod common;

use common::{kvm_or_skip, parse_uffd_msg, uffd_copy, uffd_or_skip, TempDir, UFFD_EVENT_PAGEFAULT};
use memvisor::abi::{pattern_word, WORK_AREA_GPA};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::memory::GuestRam;
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, StartOptions, Vmm};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use std::collections::{HashSet, VecDeque};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;
const UFFD_EVENT_REMOVE: u8 = 0x15;

/// Firecracker's `GuestRegionUffdMapping` as its example handlers declare it (every field
/// required, `page_size_kib` being the deprecated twin of `page_size`).
#[derive(Clone, Debug, serde::Deserialize)]
struct GuestRegionUffdMapping {
    base_host_virt_addr: u64,
    size: usize,
    offset: u64,
    page_size: usize,
    page_size_kib: usize,
}

impl GuestRegionUffdMapping {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.base_host_virt_addr && addr < self.base_host_virt_addr + self.size as u64
    }
}

/// What the handler saw.
#[derive(Debug)]
struct Seen {
    /// The one message's regions.
    mappings: Vec<GuestRegionUffdMapping>,
    /// When `recvmsg` returned the message and the descriptor.
    took_descriptor: Instant,
    /// Pages installed from the memory file.
    copied: u64,
    /// Pages installed as zeros (removed before).
    zeroed: u64,
    /// `UFFD_EVENT_REMOVE` events.
    removes: u64,
    /// Connections still waiting in the listener's backlog at the end (a second connection
    /// would be one the handler never accepts).
    later_connections: usize,
}

/// Starts the handler thread on `listener`, serving `mem_file`, until `stop` is set. Like
/// Firecracker's handler it maps its file before reading the message (`delay` stands for a
/// large file) and panics when the message does not fit its file.
fn firecracker_handler(
    listener: UnixListener,
    mem_file: PathBuf,
    delay: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Seen> {
    std::thread::spawn(move || {
        // Firecracker blocks in accept(); a bounded wait keeps a failed start from hanging.
        let mut lfd = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut lfd, PollTimeout::from(30_000u16)).unwrap();
        assert!(ready == 1, "memvisor never connected");
        let (stream, _) = listener.accept().unwrap();
        let file = std::fs::File::open(&mem_file).unwrap();
        // SAFETY: a private read-only mapping of a file nobody truncates while the test runs.
        let memory = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        std::thread::sleep(delay);

        // One recvmsg with Firecracker's 1 KiB buffer and room for one descriptor.
        let mut buf = vec![0u8; 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, uffd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .unwrap();
            let mut uffd = None;
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: a descriptor just received, owned by nobody else.
                    uffd = fds.first().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            (
                msg.bytes,
                uffd.expect("no userfaultfd came with the message"),
            )
        };
        let took_descriptor = Instant::now();
        let mappings: Vec<GuestRegionUffdMapping> =
            serde_json::from_slice(&buf[..len]).expect("the message is a JSON region list");
        let memsize: usize = mappings.iter().map(|m| m.size).sum();
        assert_eq!(
            memsize,
            memory.len(),
            "the regions' sizes must add up to the memory file: {mappings:?}"
        );

        let mut seen = Seen {
            mappings,
            took_descriptor,
            copied: 0,
            zeroed: 0,
            removes: 0,
            later_connections: 0,
        };
        let mut removed: HashSet<u64> = HashSet::new();
        let mut pending: VecDeque<u64> = VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(uffd.as_fd(), PollFlags::POLLIN)];
            let wait = if pending.is_empty() { 20u16 } else { 1 };
            match poll(&mut fds, PollTimeout::from(wait)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("poll: {e}"),
            }
            loop {
                let mut msg = [0u8; 32];
                match nix::unistd::read(&uffd, &mut msg) {
                    Ok(32) => {}
                    Ok(n) => panic!("short uffd read {n}"),
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => panic!("read uffd: {e}"),
                }
                let (event, addr) = parse_uffd_msg(&msg);
                if event == UFFD_EVENT_PAGEFAULT {
                    pending.push_back(addr);
                } else if event == UFFD_EVENT_REMOVE {
                    // uffd_msg.arg.remove: start at byte 8, end at byte 16.
                    let start = u64::from_le_bytes(msg[8..16].try_into().unwrap());
                    let end = u64::from_le_bytes(msg[16..24].try_into().unwrap());
                    removed.extend((start / 4096)..end.div_ceil(4096));
                    seen.removes += 1;
                }
            }
            for _ in 0..pending.len() {
                let addr = pending.pop_front().unwrap();
                let region = seen
                    .mappings
                    .iter()
                    .find(|m| m.contains(addr))
                    .unwrap_or_else(|| panic!("fault at {addr:#x} outside every region"))
                    .clone();
                let page = region.page_size as u64;
                let dst = addr & !(page - 1);
                let zeros;
                let (src, zero) = if removed.contains(&(dst / 4096)) {
                    zeros = vec![0u8; page as usize];
                    (&zeros[..], true)
                } else {
                    let at = (region.offset + (dst - region.base_host_virt_addr)) as usize;
                    (&memory[at..at + page as usize], false)
                };
                match uffd_copy(uffd.as_raw_fd(), dst, src) {
                    Ok(_) if zero => seen.zeroed += 1,
                    Ok(_) => seen.copied += 1,
                    Err(nix::errno::Errno::EEXIST) => {}
                    Err(nix::errno::Errno::EAGAIN) => pending.push_back(addr),
                    Err(e) => panic!("UFFDIO_COPY at {dst:#x}: {e}"),
                }
            }
        }
        listener.set_nonblocking(true).unwrap();
        while listener.accept().is_ok() {
            seen.later_connections += 1;
        }
        seen
    })
}

/// Writes the handler's memory file: for each `(gpa, size)` in order, the words
/// `pattern_word(gpa + o, seed)` — the bytes the guest's `verify:seed=` expects there, distinct
/// in every region because the pattern derives from the address.
fn memory_file(dir: &TempDir, regions: &[(u64, u64)], seed: u64) -> PathBuf {
    let path = dir.path().join("memory");
    let mut bytes = Vec::new();
    for &(gpa, size) in regions {
        for o in (0..size).step_by(8) {
            bytes.extend_from_slice(&pattern_word(gpa + o, seed).to_le_bytes());
        }
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

fn external(size: &str, sock: &Path) -> String {
    format!(
        "size={size},backend=uffd,handler=external,socket={}",
        sock.display()
    )
}

/// Two uffd regions of different sizes on one socket: one connection, one message with both
/// mappings (offsets 0 and 32 MiB), the guest reads each region's own bytes from the one file,
/// a discard of the second region is seen and served as zeros, the report says connected.
#[test]
fn two_regions_share_one_firecracker_handler() {
    let t = "two_regions_share_one_firecracker_handler";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    const SEED: u64 = 91;
    let (r1, r2) = (WORK_AREA_GPA, WORK_AREA_GPA + 32 * M);
    let dir = TempDir::new("uffd-fc");
    let sock = dir.path().join("handler.sock");
    let file = memory_file(&dir, &[(r1, 32 * M), (r2, 16 * M)], SEED);
    let listener = UnixListener::bind(&sock).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let delay = Duration::from_millis(300);
    let handler = firecracker_handler(listener, file, delay, stop.clone());

    let config = VmConfig {
        vcpus: 1,
        memory: vec![
            RegionConfig::anon(WORK_AREA_GPA),
            RegionConfig::parse(1, &external("32M", &sock)).unwrap(),
            RegionConfig::parse(2, &external("16M", &sock)).unwrap(),
        ],
        workload: Workload::parse(&["verify:seed=91;sync:tag=1;checksum"]).unwrap(),
        ..Default::default()
    };
    let discarded = Arc::new(std::sync::Mutex::new(None));
    let d = discarded.clone();
    let hook: memvisor::vmm::vcpu::SyncHook = Arc::new(move |_, _, ram: &GuestRam| {
        *d.lock().unwrap() = Some(ram.discard(r2, 16 * M).map_err(|e| e.to_string()));
    });
    let started = Vmm::start_with(
        &config,
        StartOptions {
            sync: Some(hook),
            ..Default::default()
        },
    );
    let start_returned = Instant::now();
    let mut vmm = match started {
        Ok(v) => v,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = handler.join();
            panic!("start: {e}");
        }
    };
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    let text = report.to_text();
    stop.store(true, Ordering::Relaxed);
    let seen = handler
        .join()
        .expect("the Firecracker-style handler failed");
    assert!(matches!(report.outcome, Outcome::Completed), "{text}");

    // One connection, one message, both regions in it with cumulative offsets.
    assert_eq!(seen.later_connections, 0, "a second connection was made");
    let ram = vmm.ram();
    let m = &seen.mappings;
    assert_eq!(m.len(), 2, "{m:?}");
    for (i, (size, offset)) in [(32 * M, 0), (16 * M, 32 * M)].into_iter().enumerate() {
        let region = &ram.regions()[i + 1];
        assert_eq!(m[i].base_host_virt_addr, region.host_addr() as u64, "{m:?}");
        assert_eq!(m[i].size as u64, size, "{m:?}");
        assert_eq!(m[i].offset, offset, "{m:?}");
        assert_eq!((m[i].page_size, m[i].page_size_kib), (4096, 4096), "{m:?}");
    }
    // memvisor waited until the handler had taken the descriptor before going on.
    assert!(
        seen.took_descriptor <= start_returned,
        "Vmm::start returned before the handler read the message"
    );

    // The guest read each region's own bytes, then zeros where region 2 was discarded.
    let verify = report.ops.iter().find(|o| o.name == "verify").unwrap();
    assert_eq!((verify.amount, verify.mismatches), (48 * M, 0), "{text}");
    let out = discarded.lock().unwrap().take().expect("sync hook ran");
    assert_eq!(out.unwrap().requested, 16 * M);
    let sum = report.ops.iter().find(|o| o.name == "checksum").unwrap();
    assert_eq!(sum.zero_words, 16 * M / 8, "{text}");
    assert_eq!(seen.copied, 48 * M / 4096, "{seen:?}");
    assert_eq!(seen.zeroed, 16 * M / 4096, "{seen:?}");
    assert!(seen.removes >= 1, "{seen:?}");

    for i in [1, 2] {
        let line = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(&format!("region {i}:")))
            .find(|l| l.contains("uffd:"))
            .unwrap_or_else(|| panic!("no uffd line for region {i}: {text}"));
        assert!(
            line.contains("external handler") && line.contains("connected"),
            "{line}"
        );
    }
}

/// A sparse file of `len` bytes: the handler's memory file where only its size matters.
fn sparse_file(dir: &TempDir, name: &str, len: u64) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

/// Without booting: a region crossing the 3–4 GiB MMIO hole (two memslots) is one mapping of
/// its handler's message; the next region on that socket (the socket path spelled
/// differently) follows it in the same message at the cumulative offset, above 4 GiB; a region
/// on another socket gets a connection and a file of its own, offset 0.
#[test]
fn sockets_group_regions_and_the_mmio_hole_splits_no_mapping() {
    let t = "sockets_group_regions_and_the_mmio_hole_splits_no_mapping";
    if !uffd_or_skip(t) {
        return;
    }
    const G: u64 = 1 << 30;
    let dir = TempDir::new("uffd-groups");
    let (sock_a, sock_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let sock_a2 = dir.path().join(".").join("a.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let (file_a, file_b) = (
        sparse_file(&dir, "a.mem", 3 * G + 64 * M),
        sparse_file(&dir, "b.mem", 64 * M),
    );
    let handler_a = firecracker_handler(
        UnixListener::bind(&sock_a).unwrap(),
        file_a,
        Duration::ZERO,
        stop.clone(),
    );
    let handler_b = firecracker_handler(
        UnixListener::bind(&sock_b).unwrap(),
        file_b,
        Duration::ZERO,
        stop.clone(),
    );
    let configs = [
        RegionConfig::parse(0, &external("3104M", &sock_a)).unwrap(),
        RegionConfig::parse(1, &external("64M", &sock_b)).unwrap(),
        RegionConfig::parse(2, &external("32M", &sock_a2)).unwrap(),
    ];
    let ram = GuestRam::new(&configs);
    let reports = ram
        .as_ref()
        .map(memvisor::report::run::RegionReport::read)
        .unwrap_or_default();
    let layout: Vec<_> = ram
        .as_ref()
        .map(|r| {
            r.regions()
                .iter()
                .map(|x| (x.host_addr() as u64, x.extents.clone()))
                .collect()
        })
        .unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let (a, b) = (handler_a.join(), handler_b.join());
    let ram = ram.expect("guest memory");
    let (a, b) = (a.expect("handler a failed"), b.expect("handler b failed"));
    assert_eq!((a.later_connections, b.later_connections), (0, 0));

    let (host, extents): (Vec<u64>, Vec<_>) = layout.into_iter().unzip();
    assert_eq!(
        extents[0].len(),
        2,
        "region 0 is split at the hole: {extents:?}"
    );
    assert!(
        extents[2][0].gpa >= 4 * G,
        "region 2 lies above 4 GiB: {extents:?}"
    );
    let m = &a.mappings;
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(
        (m[0].base_host_virt_addr, m[0].size as u64, m[0].offset),
        (host[0], 3 * G + 32 * M, 0),
        "one entry for the whole of region 0: {m:?}"
    );
    assert_eq!(
        (m[1].base_host_virt_addr, m[1].size as u64, m[1].offset),
        (host[2], 32 * M, 3 * G + 32 * M),
        "{m:?}"
    );
    let m = &b.mappings;
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(
        (m[0].base_host_virt_addr, m[0].size as u64, m[0].offset),
        (host[1], 64 * M, 0),
        "{m:?}"
    );

    use memvisor::memory::PagerReport;
    let shared: Vec<_> = reports
        .iter()
        .map(|r| match &r.uffd {
            Some(PagerReport::External {
                alive,
                offset,
                regions,
                ..
            }) => (*alive, *offset, regions.clone()),
            other => panic!("region {}: {other:?}", r.index),
        })
        .collect();
    assert_eq!(
        shared,
        vec![
            (true, 0, vec![0, 2]),
            (true, 0, vec![1]),
            (true, 3 * G + 32 * M, vec![0, 2]),
        ]
    );
    drop(ram);
}

/// A socket file nobody listens on (a handler that exited) and a path that is no socket stop
/// memvisor before it maps guest memory, naming the socket and what to start.
#[test]
fn a_socket_nobody_listens_on_is_reported_before_mapping() {
    let dir = TempDir::new("uffd-stale");
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let config = RegionConfig::parse(0, &external("16M", &stale)).unwrap();
    let e = GuestRam::new(&[config]).unwrap_err().to_string();
    assert!(
        e.contains("memory region(s) [0]")
            && e.contains(&stale.display().to_string())
            && e.contains("nobody listens")
            && e.contains("start the page-fault handler"),
        "{e}"
    );
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"").unwrap();
    let config = RegionConfig::parse(0, &external("16M", &file)).unwrap();
    let e = GuestRam::new(&[config]).unwrap_err().to_string();
    assert!(e.contains("is not a Unix socket"), "{e}");
}
