//! Populate tests: anonymous 4K memory and hugetlbfs-backed files (the latter need root). Every
//! test holds the pool lock, so they run one at a time and pool counts are not disturbed.

mod common;

use std::sync::Mutex;

use common::{not_root, pattern, rss_kib, Mapping, TempMount};
use hugepages::{
    lock_pools, pool_status, populate, populate_with, populate_with_method,
    populate_write_supported, HugePageError, HugePageSize, PoolReservation, PopulateMethod,
    PopulateOptions,
};
use nix::sys::mman::MapFlags;

const MIB2: usize = 2 << 20;

/// Populates all of `m`, checking that progress ends at its length and strictly increases.
fn populate_all(m: &Mapping, page: usize, threads: usize, method: Option<PopulateMethod>) {
    let seen = Mutex::new(Vec::new());
    let progress = |done: u64| seen.lock().unwrap().push(done);
    // SAFETY: `m` is a live writable mapping owned by this test.
    let stats = unsafe {
        match method {
            None => populate(m.ptr.as_ptr(), m.len, page, threads, Some(&progress)),
            Some(method) => populate_with_method(
                m.ptr.as_ptr(),
                m.len,
                page,
                threads,
                method,
                Some(&progress),
            ),
        }
    }
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(stats.bytes, m.len as u64);
    assert_eq!(
        seen.last().copied(),
        Some(m.len as u64),
        "progress ends at the length"
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "progress increases: {seen:?}"
    );
    if let Some(method) = method {
        assert_eq!(stats.method, method);
    }
    println!(
        "populated {} MiB with {page}-byte pages on {} threads by {:?} in {:?} ({:.2} GiB/s)",
        m.len >> 20,
        stats.threads,
        stats.method,
        stats.elapsed,
        stats.gib_per_s()
    );
}

#[test]
fn populate_write_is_probed() {
    println!(
        "MADV_POPULATE_WRITE supported: {}",
        populate_write_supported()
    );
}

#[test]
fn populate_anonymous_4k_memory_makes_it_resident() {
    let _lock = lock_pools().unwrap();
    let m = Mapping::anon_4k(64 << 20);
    assert_eq!(m.resident_4k_pages(), 0);
    let rss = rss_kib();
    populate_all(&m, 4096, 1, None);
    assert_eq!(m.resident_4k_pages(), m.len / 4096);
    let grown = rss_kib().saturating_sub(rss);
    assert!(
        grown >= (m.len as u64 >> 10) * 9 / 10,
        "RSS grew by only {grown} KiB"
    );
}

#[test]
fn populate_on_two_threads_covers_every_page() {
    let _lock = lock_pools().unwrap();
    // An odd number of pages, so the two chunks differ in size.
    let m = Mapping::anon_4k((16 << 20) + 3 * 4096);
    populate_all(&m, 4096, 2, None);
    assert_eq!(m.resident_4k_pages(), m.len / 4096);
    // More threads than pages is clamped.
    let small = Mapping::anon_4k(3 * 4096);
    populate_all(&small, 4096, 8, None);
    assert_eq!(small.resident_4k_pages(), 3);
}

/// The calling thread's kernel thread id.
fn tid() -> i64 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

#[test]
fn a_start_hook_runs_first_on_every_populate_thread_and_never_on_the_callers() {
    let _lock = lock_pools().unwrap();
    for threads in [1, 3] {
        let m = Mapping::anon_4k(8 << 20);
        let started = Mutex::new(Vec::new());
        let progressed = Mutex::new(Vec::new());
        let hook = || {
            let name = std::thread::current().name().map(str::to_owned);
            started.lock().unwrap().push((name, tid()));
            Ok(())
        };
        let progress = |_done: u64| progressed.lock().unwrap().push(tid());
        let opts = PopulateOptions {
            threads,
            progress: Some(&progress),
            thread_start: Some(&hook),
            ..Default::default()
        };
        // SAFETY: `m` is a live writable mapping owned by this test.
        let stats = unsafe { populate_with(m.ptr.as_ptr(), m.len, 4096, opts) }.unwrap();
        assert_eq!(stats.threads, threads);
        assert_eq!(m.resident_4k_pages(), m.len / 4096);
        let mut started = started.into_inner().unwrap();
        started.sort();
        let names: Vec<_> = started.iter().map(|(n, _)| n.clone()).collect();
        let want: Vec<_> = (0..threads).map(|i| Some(format!("prealloc{i}"))).collect();
        assert_eq!(
            names, want,
            "one hook call per thread, on the named threads"
        );
        let tids: Vec<i64> = started.iter().map(|&(_, t)| t).collect();
        assert!(
            !tids.contains(&tid()),
            "the hook ran on the caller's thread"
        );
        // The work (and so the progress calls) ran on the threads the hook ran on.
        let progressed = progressed.into_inner().unwrap();
        assert!(!progressed.is_empty());
        assert!(
            progressed.iter().all(|t| tids.contains(t)),
            "{progressed:?}"
        );
    }
}

#[test]
fn a_failing_start_hook_stops_every_thread_before_it_populates() {
    let _lock = lock_pools().unwrap();
    let m = Mapping::anon_4k(16 << 20);
    let hook = || match std::thread::current().name() {
        Some("prealloc1") => Err("refused by the hook; do X".to_string()),
        _ => Ok(()),
    };
    let opts = PopulateOptions {
        threads: 4,
        thread_start: Some(&hook),
        ..Default::default()
    };
    // SAFETY: `m` is a live writable mapping owned by this test.
    let err = unsafe { populate_with(m.ptr.as_ptr(), m.len, 4096, opts) }.unwrap_err();
    assert!(
        matches!(&err, HugePageError::PopulateThread { index: 1, reason } if reason.contains("do X")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("refused by the hook; do X"),
        "{err}"
    );
    assert_eq!(m.resident_4k_pages(), 0, "no thread populated anything");
}

#[test]
fn touch_preserves_content_on_three_threads() {
    let _lock = lock_pools().unwrap();
    let mut m = Mapping::anon_4k(8 << 20);
    for (i, b) in m.as_mut_slice().iter_mut().enumerate().step_by(8192) {
        *b = pattern(i);
    }
    populate_all(&m, 4096, 3, Some(PopulateMethod::Touch));
    assert_eq!(m.resident_4k_pages(), m.len / 4096);
    for (i, &b) in m.as_slice().iter().enumerate() {
        let want = if i % 8192 == 0 { pattern(i) } else { 0 };
        assert_eq!(b, want, "byte {i}");
    }
}

#[test]
fn bad_arguments_are_rejected() {
    let m = Mapping::anon_4k(4 << 20);
    for (offset, len, page) in [
        (1, 4096, 4096),
        (0, 100, 4096),
        (0, 4096, 3000),
        (0, 4096, 1024),
    ] {
        // SAFETY: rejected before touching memory; the range is inside `m` anyway.
        let r = unsafe { populate(m.ptr.as_ptr().add(offset), len, page, 1, None) };
        assert!(
            matches!(r, Err(HugePageError::PopulateArgs { .. })),
            "{offset} {len} {page}"
        );
    }
    // SAFETY: an empty range.
    let stats = unsafe { populate(m.ptr.as_ptr(), 0, 4096, 4, None) }.unwrap();
    assert_eq!(stats.bytes, 0);
}

/// Populates hugetlbfs files with `method` and checks the pool's free count and the content.
fn hugetlbfs_case(method: Option<PopulateMethod>) {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let _lock = lock_pools().unwrap();
    let size = HugePageSize::Size2M;
    let _r = PoolReservation::reserve_additional(size, 16).unwrap();
    let mnt = TempMount::new(size);
    let free = || pool_status(size).unwrap().free;

    // A fresh file: free drops by exactly len / 2M.
    let fresh = Mapping::file(&mnt.dir, "fresh", 8 * MIB2, MapFlags::empty()).unwrap();
    let before = free();
    populate_all(&fresh, MIB2, 2, method);
    assert_eq!(before - free(), 8);
    assert!(fresh.as_slice().iter().step_by(4096).all(|&b| b == 0));

    // A file with a pattern in every other page: it stays, the others are added.
    let mut m = Mapping::file(&mnt.dir, "pattern", 8 * MIB2, MapFlags::empty()).unwrap();
    let before = free();
    for (i, b) in m.as_mut_slice().iter_mut().enumerate() {
        if (i / MIB2) % 2 == 0 {
            *b = pattern(i);
        }
    }
    assert_eq!(before - free(), 4);
    populate_all(&m, MIB2, 2, method);
    assert_eq!(before - free(), 8, "free dropped by len / 2M in all");
    for (i, &b) in m.as_slice().iter().enumerate() {
        let want = if (i / MIB2) % 2 == 0 { pattern(i) } else { 0 };
        assert_eq!(b, want, "byte {i}");
    }
    drop((fresh, m));
    mnt.cleanup();
}

#[test]
fn populate_hugetlbfs_2m_takes_pages_and_keeps_data() {
    hugetlbfs_case(None);
}

#[test]
fn touch_hugetlbfs_2m_takes_pages_and_keeps_data() {
    hugetlbfs_case(Some(PopulateMethod::Touch));
}

#[test]
fn populating_more_than_the_pool_is_an_error_not_sigbus() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    if !populate_write_supported() {
        skip!("MADV_POPULATE_WRITE unsupported: touching a missing huge page would raise SIGBUS");
    }
    let _lock = lock_pools().unwrap();
    let size = HugePageSize::Size2M;
    let _r = PoolReservation::reserve_additional(size, 4).unwrap();
    let mnt = TempMount::new(size);
    let avail = pool_status(size).unwrap().available() as usize;
    let len = (avail + 3) * MIB2;

    // Without MAP_NORESERVE the kernel refuses the mapping up front.
    let err = Mapping::file(&mnt.dir, "reserved", len, MapFlags::empty()).err();
    assert_eq!(err, Some(nix::errno::Errno::ENOMEM));

    let m = Mapping::file(&mnt.dir, "noreserve", len, MapFlags::MAP_NORESERVE).unwrap();
    // SAFETY: `m` is a live writable mapping owned by this test.
    let err = unsafe { populate(m.ptr.as_ptr(), m.len, MIB2, 2, None) }.unwrap_err();
    println!("{err}");
    match &err {
        HugePageError::PoolExhausted {
            pages,
            populated,
            missing,
            ..
        } => assert_eq!(
            (*pages, *populated, *missing),
            (avail as u64 + 3, avail as u64, 3)
        ),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("`memvisor hugepages reserve 3 --size 2M`"),
        "{err}"
    );
    assert_eq!(pool_status(size).unwrap().free, 0);
    drop(m);
    mnt.cleanup();
}

#[test]
fn populate_1g_page_if_the_kernel_can_reserve_one() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let size = HugePageSize::Size1G;
    if !hugepages::supported_sizes().contains(&size) {
        skip!("this kernel has no 1G huge page pool");
    }
    let _lock = lock_pools().unwrap();
    let _r = match PoolReservation::reserve_additional(size, 1) {
        Ok(r) => r,
        Err(e) => skip!("cannot reserve a 1G page: {e}"),
    };
    let mnt = TempMount::new(size);
    let mut m = Mapping::file(&mnt.dir, "guest", 1 << 30, MapFlags::empty()).unwrap();
    let before = pool_status(size).unwrap().free;
    populate_all(&m, 1 << 30, 2, None);
    assert_eq!(before - pool_status(size).unwrap().free, 1);
    let s = m.as_mut_slice();
    s[0] = 7;
    let last = s.len() - 1;
    s[last] = 9;
    assert_eq!((s[0], s[1], s[last]), (7, 0, 9));
    drop(m);
    mnt.cleanup();
}
