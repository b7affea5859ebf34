//! Several faulting threads at once, and discards racing with faults.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use uffd::{HandlerConfig, PageSource, RegionSpec};

const PAGE: usize = 4096;
const SEED: u64 = 0xfeed_f00d_0bad_cafe;

fn file_handler(map: &Mapping, dir: &TempDir, image_len: usize, unit: usize) -> uffd::UffdHandler {
    let path = dir.path().join("mem.img");
    write_image(&path, image_len, SEED);
    let region = RegionSpec {
        host_addr: map.addr,
        len: map.len,
        page_size: PAGE,
        source_offset: 0,
    };
    let config = HandlerConfig {
        source: PageSource::File { path },
        fetch_unit: unit,
    };
    uffd::start(vec![region], config).unwrap()
}

#[test]
fn concurrent_faults_on_shared_blocks() {
    skip_unless_uffd!();
    let dir = TempDir::new("conc");
    let len = 8 * MIB;
    let map = Mapping::anon(len);
    let handler = file_handler(&map, &dir, len, 64 * KIB);
    let addr = map.addr;
    let results = with_timeout(20, move || {
        let threads: Vec<_> = (0..4)
            .map(|k| {
                thread::spawn(move || {
                    // Thread k starts at a different place and walks pages in its own order,
                    // so threads fault on the same blocks at the same time.
                    let mut pages: Vec<usize> = (0..len / PAGE).collect();
                    pages.rotate_left(k * len / PAGE / 8);
                    if k % 2 == 1 {
                        pages.reverse();
                    }
                    pages.into_iter().all(|p| {
                        read_at(addr + p * PAGE, PAGE)
                            == expected((p * PAGE) as u64, PAGE, len, SEED)
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        results.iter().all(|&ok| ok),
        "a thread read wrong bytes: {results:?}"
    );
    let stats = handler.stop().unwrap();
    // Each page is installed exactly once however many threads raced for it.
    assert_eq!(stats.pages_served as usize, len / PAGE, "{stats:?}");
    assert_eq!(stats.copied_pages as usize, len / PAGE);
    assert!(stats.faults as usize >= len / (64 * KIB), "{stats:?}");
}

#[test]
fn discards_racing_with_faults_never_expose_stale_bytes() {
    skip_unless_uffd!();
    let dir = TempDir::new("race");
    let len = 2 * MIB;
    let map = Mapping::anon(len);
    let handler = file_handler(&map, &dir, len, 16 * KIB);
    let (addr, window) = (map.addr, 512 * KIB);
    // Serve the window from the image first, so the discards hit pages with source bytes.
    let first = with_timeout(10, move || read_at(addr, window));
    assert_eq!(first, expected(0, window, len, SEED));
    let discarded = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let (d, dn, r) = (discarded.clone(), done.clone(), rounds.clone());
    let reader = thread::spawn(move || {
        let source = expected(0, window, len, SEED);
        while !dn.load(Ordering::Acquire) {
            for p in 0..window / PAGE {
                let after_discard = d.load(Ordering::Acquire);
                let got = read_at(addr + p * PAGE, PAGE);
                let zero = got.iter().all(|&b| b == 0);
                let from_source = got == source[p * PAGE..(p + 1) * PAGE];
                assert!(
                    zero || (!after_discard && from_source),
                    "page {p}: stale or torn bytes"
                );
            }
            r.fetch_add(1, Ordering::Release);
        }
    });
    // Discard (at most 20,000 times) until the reader has gone over the window 50 times, or
    // for 10 s on a slow or loaded host once it has gone over it twice: every discard waits
    // for the handler to read its UFFD_EVENT_REMOVE, and with both cores busy elsewhere this
    // once outlasted the 20 s it had. The timeout only catches a reader stuck on a fault
    // nobody serves.
    let started = std::time::Instant::now();
    let discards = with_timeout(120, move || {
        let mut discards = 0;
        while discards < 20_000
            && (rounds.load(Ordering::Acquire) < 2
                || discards < 100
                || (rounds.load(Ordering::Acquire) < 50
                    && started.elapsed() < std::time::Duration::from_secs(10)))
        {
            map.madvise(0, window, libc::MADV_DONTNEED);
            discarded.store(true, Ordering::Release);
            discards += 1;
        }
        done.store(true, Ordering::Release);
        reader.join().expect("reader saw stale bytes");
        drop(map);
        (discards, rounds.load(Ordering::Acquire))
    });
    let stats = handler.stop().unwrap();
    assert_eq!(stats.remove_events, discards.0 as u64, "{stats:?}");
    assert_eq!(stats.removed_bytes as usize, discards.0 * window);
    assert_eq!(stats.copied_pages as usize, window / PAGE, "{stats:?}");
    println!(
        "{} discards, {} reader rounds, {} faults, {} zero pages, {} copied pages",
        discards.0, discards.1, stats.faults, stats.zero_pages, stats.copied_pages
    );
}
