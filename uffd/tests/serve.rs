//! In-process handler: zero source, file source, discards, kernel-originated faults.

mod common;

use common::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use uffd::{HandlerConfig, PageSource, RegionSpec};

const PAGE: usize = 4096;
const SEED: u64 = 0x5eed_1234_abcd_0000;

fn region(m: &Mapping, source_offset: u64) -> RegionSpec {
    RegionSpec {
        host_addr: m.addr,
        len: m.len,
        page_size: PAGE,
        source_offset,
    }
}

/// Touches every page of a 64 MiB zero-sourced region in order from another thread.
fn zero_source_run(fetch_unit: usize) -> uffd::UffdStats {
    let len = 64 * MIB;
    let map = Mapping::anon(len);
    let config = HandlerConfig {
        source: PageSource::Zero,
        fetch_unit,
    };
    let handler = uffd::start(vec![region(&map, 0)], config).unwrap();
    let addr = map.addr;
    let all_zero = with_timeout(20, move || {
        // SAFETY: the mapping stays alive until the end of this function; the slice is only
        // read, in address order, so pages fault in sequentially.
        let words = unsafe { std::slice::from_raw_parts(addr as *const u64, len / 8) };
        words.iter().all(|&w| w == 0)
    });
    assert!(all_zero, "a zero-sourced page read non-zero");
    let stats = handler.stop().unwrap();
    assert_eq!(stats.pages_served as usize, len / PAGE, "{stats:?}");
    assert_eq!(stats.zero_pages, stats.pages_served);
    assert_eq!(stats.copied_pages, 0);
    assert_eq!(stats.bytes_served as usize, len);
    assert_eq!(stats.latency.count, stats.faults);
    stats
}

#[test]
fn zero_source_serves_every_page_once() {
    skip_unless_uffd!();
    let stats = zero_source_run(4 * KIB);
    assert_eq!(stats.faults as usize, 64 * MIB / PAGE);
    println!(
        "4K unit: {} faults, mean {:.1} us, p99 <= {} us",
        stats.faults,
        stats.latency.mean_us(),
        stats.latency.percentile_us(99.0)
    );
    let stats = zero_source_run(64 * KIB);
    assert_eq!(stats.faults as usize, 64 * MIB / PAGE / 16);
    println!(
        "64K unit: {} faults, mean {:.1} us, p99 <= {} us",
        stats.faults,
        stats.latency.mean_us(),
        stats.latency.percentile_us(99.0)
    );
}

/// Image of 1 MiB + 1000 bytes; region A (2 MiB) starts at image offset 256 KiB, region B
/// (64 KiB) at image offset 0.
struct FileSetup {
    _dir: TempDir,
    a: Mapping,
    b: Mapping,
    handler: uffd::UffdHandler,
}

const IMAGE_LEN: usize = MIB + 1000;
const A_OFFSET: u64 = 256 * KIB as u64;

fn file_setup(fetch_unit: usize) -> FileSetup {
    let dir = TempDir::new("image");
    let path = dir.path().join("mem.img");
    write_image(&path, IMAGE_LEN, SEED);
    let a = Mapping::anon(2 * MIB);
    let b = Mapping::anon(64 * KIB);
    let config = HandlerConfig {
        source: PageSource::File { path },
        fetch_unit,
    };
    let handler = uffd::start(vec![region(&a, A_OFFSET), region(&b, 0)], config).unwrap();
    FileSetup {
        _dir: dir,
        a,
        b,
        handler,
    }
}

fn read_mapping(m: &Mapping) -> Vec<u8> {
    let (addr, len) = (m.addr, m.len);
    with_timeout(20, move || read_at(addr, len))
}

#[test]
fn file_source_bytes_and_zero_past_end() {
    skip_unless_uffd!();
    let s = file_setup(64 * KIB);
    let got = read_mapping(&s.a);
    let want = expected(A_OFFSET, s.a.len, IMAGE_LEN, SEED);
    assert_eq!(
        first_diff(&got, &want),
        None,
        "region A differs from the image"
    );
    // The image ends inside region A: the rest reads as zero.
    let end_in_a = IMAGE_LEN - A_OFFSET as usize;
    assert!(got[end_in_a..].iter().all(|&b| b == 0));
    assert!(got[..end_in_a].iter().any(|&b| b != 0));
    let got_b = read_mapping(&s.b);
    assert_eq!(
        first_diff(&got_b, &expected(0, s.b.len, IMAGE_LEN, SEED)),
        None
    );

    let stats = s.handler.stats();
    let copied_a = end_in_a.div_ceil(PAGE);
    assert_eq!(stats.faults as usize, 2 * MIB / (64 * KIB) + 1, "{stats:?}");
    assert_eq!(stats.copied_pages as usize, copied_a + 16, "{stats:?}");
    assert_eq!(
        stats.zero_pages as usize,
        2 * MIB / PAGE - copied_a,
        "{stats:?}"
    );
}

#[test]
fn discarded_pages_read_as_zero() {
    skip_unless_uffd!();
    let s = file_setup(16 * KIB);
    let want_a = expected(A_OFFSET, s.a.len, IMAGE_LEN, SEED);
    assert_eq!(first_diff(&read_mapping(&s.a), &want_a), None);
    let before = s.handler.stats();
    assert_eq!(before.remove_events, 0);

    // Balloon discard of pages that were served from the image.
    let (off, len) = (128 * KIB, 256 * KIB);
    s.a.madvise(off, len, libc::MADV_DONTNEED);
    // madvise returns once the handler has read the event, maybe before it updated the
    // counters; the re-read below faults, and faults are served only after earlier removes
    // were recorded, so the counters are checked after it.
    let got = read_mapping(&s.a);
    let reread = s.handler.stats();
    assert_eq!(reread.remove_events, 1, "{reread:?}");
    assert_eq!(reread.removed_bytes as usize, len);
    assert!(
        got[off..off + len].iter().all(|&b| b == 0),
        "discarded pages show stale bytes"
    );
    assert_eq!(first_diff(&got[..off], &want_a[..off]), None);
    assert_eq!(first_diff(&got[off + len..], &want_a[off + len..]), None);
    assert_eq!(reread.faults - before.faults, (len / (16 * KIB)) as u64);
    assert_eq!(reread.zero_pages - before.zero_pages, (len / PAGE) as u64);
    assert_eq!(reread.copied_pages, before.copied_pages);

    // Discard of pages never served: they must not come from the image either.
    s.b.madvise(0, 16 * KIB, libc::MADV_DONTNEED);
    let got_b = read_mapping(&s.b);
    let want_b = expected(0, s.b.len, IMAGE_LEN, SEED);
    assert!(got_b[..16 * KIB].iter().all(|&b| b == 0));
    assert_eq!(first_diff(&got_b[16 * KIB..], &want_b[16 * KIB..]), None);
    let stats = s.handler.stop().unwrap();
    assert_eq!(stats.remove_events, 2);
    assert_eq!(stats.removed_bytes as usize, len + 16 * KIB);
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// `read(2)` from a pipe into registered memory: the copy to user space faults in the kernel.
fn pipe_read_into(addr: usize, data: &[u8]) -> std::io::Result<usize> {
    let (r, w) = pipe();
    // SAFETY: `data` is a valid buffer; writing to our own pipe (smaller than its capacity).
    let n = unsafe { libc::write(w.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n as usize, data.len());
    // SAFETY: the destination lies inside a live mapping owned by the test.
    let n = unsafe { libc::read(r.as_raw_fd(), addr as *mut libc::c_void, data.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[test]
fn kernel_originated_faults_are_served() {
    skip_unless_uffd!();
    let map = Mapping::anon(256 * KIB);
    let handler = uffd::start(vec![region(&map, 0)], HandlerConfig::default()).unwrap();
    let data: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8 + 1).collect();
    let (addr, copy) = (map.addr + 8 * PAGE, data.clone());
    let n =
        with_timeout(10, move || pipe_read_into(addr, &copy)).expect("read(2) into uffd memory");
    assert_eq!(n, data.len());
    assert_eq!(map.read(8 * PAGE, data.len()), data);
    let stats = handler.stop().unwrap();
    assert!(
        stats.faults >= 3,
        "kernel-mode faults were not delivered: {stats:?}"
    );
}

/// Control for the test above: with `UFFD_USER_MODE_ONLY` the same kernel access is not
/// delivered and `read(2)` fails with EFAULT, which is why the crate must not set it.
#[test]
fn user_mode_only_would_break_kernel_access() {
    skip_unless_uffd!();
    let map = Mapping::anon(64 * KIB);
    let uffd = userfaultfd::UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(true)
        .create()
        .unwrap();
    uffd.register(map.addr as *mut libc::c_void, map.len)
        .unwrap();
    let addr = map.addr;
    let err = with_timeout(10, move || pipe_read_into(addr, &[7u8; 4096]))
        .expect_err("a user-mode-only userfaultfd served a kernel fault");
    assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    assert!(uffd.read_event().unwrap().is_none(), "fault was delivered");
}

#[test]
fn invalid_configuration_is_rejected() {
    let map = Mapping::anon(64 * KIB);
    let bad_unit = HandlerConfig {
        source: PageSource::Zero,
        fetch_unit: 3000,
    };
    let err = uffd::start(vec![region(&map, 0)], bad_unit).unwrap_err();
    assert!(err.to_string().contains("power of two"), "{err}");
    let mut misaligned = region(&map, 0);
    misaligned.len = 5000;
    let err = uffd::start(vec![misaligned], HandlerConfig::default()).unwrap_err();
    assert!(
        matches!(err, uffd::UffdError::InvalidRegion { index: 0, .. }),
        "{err}"
    );
    let err = uffd::start(
        vec![region(&map, 0), region(&map, 0)],
        HandlerConfig::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    let missing = HandlerConfig {
        source: PageSource::File {
            path: "/nonexistent/mem.img".into(),
        },
        fetch_unit: PAGE,
    };
    if common::skip_reason().is_none() {
        let err = uffd::start(vec![region(&map, 0)], missing).unwrap_err();
        assert!(matches!(err, uffd::UffdError::OpenSource { .. }), "{err}");
    }
}

#[test]
fn the_thread_start_hook_runs_on_the_handler_thread_and_can_refuse() {
    skip_unless_uffd!();
    let map = Mapping::anon(64 * KIB);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let hook: uffd::ThreadStart = std::sync::Arc::new(move || {
        *s.lock().unwrap() = std::thread::current().name().map(str::to_owned);
        Ok(())
    });
    let handler =
        uffd::start_with(vec![region(&map, 0)], HandlerConfig::default(), Some(hook)).unwrap();
    assert_eq!(seen.lock().unwrap().as_deref(), Some("uffd-handler"));
    // It still serves.
    let addr = map.addr;
    // SAFETY: the mapping stays alive until the end of this test; the read faults in a page.
    let word = with_timeout(20, move || unsafe { *(addr as *const u64) });
    assert_eq!(word, 0);
    assert_eq!(handler.stop().unwrap().pages_served, 1);
    let map = Mapping::anon(64 * KIB);
    let refuse: uffd::ThreadStart = std::sync::Arc::new(|| Err("no filter today".into()));
    let err = uffd::start_with(
        vec![region(&map, 0)],
        HandlerConfig::default(),
        Some(refuse),
    )
    .unwrap_err();
    assert!(
        matches!(&err, uffd::UffdError::ThreadStart(m) if m == "no filter today"),
        "{err}"
    );
}
