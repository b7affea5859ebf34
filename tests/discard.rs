//! `GuestRam::discard` on every backend, without KVM: pages written through the vm-memory view,
//! half discarded, and the host memory behind them measured independently of memvisor
//! (`/proc/self/pagemap`, the memfd's allocated blocks, the hugepage pool's free count). Then
//! huge-page partial accounting and the ranges discard must refuse.

mod common;

use common::{
    mapped_file_allocated_bytes, pagemap_present_bytes, pool, root_or_skip, skip, uffd_or_skip,
    HugePool, HugetlbfsMount,
};
use hugepages::HugePageSize;
use memvisor::abi::pattern_word;
use memvisor::config::RegionConfig;
use memvisor::memory::{GuestRam, MemoryError, Pager};
use vm_memory::{Bytes, GuestAddress};

const M: u64 = 1 << 20;
const G: u64 = 1 << 30;
const SIZE: u64 = 32 * M;
/// The discarded range: the middle 16 MiB.
const HOLE: (u64, u64) = (8 * M, 16 * M);

fn ram(spec: &str) -> GuestRam {
    GuestRam::new(&[RegionConfig::parse(0, spec).unwrap()])
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// Writes the pattern over every byte of `[0, len)`.
fn write_pattern(ram: &GuestRam, len: u64, seed: u64) {
    let mut buf = vec![0u8; 4 * M as usize];
    for chunk in (0..len).step_by(buf.len()) {
        for (i, w) in buf.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&pattern_word(chunk + 8 * i as u64, seed).to_le_bytes());
        }
        let n = (len - chunk).min(buf.len() as u64) as usize;
        ram.memory()
            .write_slice(&buf[..n], GuestAddress(chunk))
            .unwrap();
    }
}

/// Words of `[start, start+len)` that are not `expected(gpa)`.
fn mismatches(ram: &GuestRam, start: u64, len: u64, expected: impl Fn(u64) -> u64) -> u64 {
    let mut buf = vec![0u8; len as usize];
    ram.memory()
        .read_slice(&mut buf, GuestAddress(start))
        .unwrap();
    buf.chunks_exact(8)
        .enumerate()
        .filter(|(i, w)| {
            u64::from_le_bytes((*w).try_into().unwrap()) != expected(start + 8 * *i as u64)
        })
        .count() as u64
}

/// How a backend's host memory is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// Private memory: present pages of the mapping (pagemap) and mincore.
    Private,
    /// Shared memory: present pages, mincore (page cache) and the memfd's allocated blocks.
    Shared,
    /// Huge pages: all of the above and the pool's free count.
    Huge(HugePageSize),
}

/// Host bytes backing region 0, by every measure that applies: (pagemap, mincore, file blocks,
/// pool pages in use counted from `free0`).
fn host_bytes(ram: &GuestRam, m: Measure, free0: u64) -> Vec<u64> {
    let r = &ram.regions()[0];
    let mut v = vec![
        pagemap_present_bytes(r.host_addr(), r.len()),
        ram.resident_bytes()[0],
    ];
    if m != Measure::Private {
        v.push(mapped_file_allocated_bytes(r.host_addr()).expect("the region's file"));
    }
    if let Measure::Huge(size) = m {
        v.push((free0 - pool(size).free) * size.bytes());
    }
    v
}

/// Writes all 32 MiB, discards the middle 16 MiB and checks that every measure of host memory
/// dropped by exactly 16 MiB, that the hole reads zeros and the rest keeps its data.
fn discard_half(spec: &str, m: Measure) -> GuestRam {
    let free0 = match m {
        Measure::Huge(size) => pool(size).free,
        _ => 0,
    };
    let ram = ram(spec);
    assert_eq!(ram.regions()[0].len(), SIZE);
    let n = host_bytes(&ram, m, free0).len();
    assert_eq!(
        host_bytes(&ram, m, free0),
        vec![0; n],
        "{spec}: nothing resident yet"
    );
    write_pattern(&ram, SIZE, 5);
    assert_eq!(
        host_bytes(&ram, m, free0),
        vec![SIZE; n],
        "{spec}: all written pages resident"
    );
    let out = ram.discard(HOLE.0, HOLE.1).unwrap();
    assert_eq!((out.requested, out.released), (HOLE.1, HOLE.1), "{spec}");
    assert_eq!(
        host_bytes(&ram, m, free0),
        vec![SIZE - HOLE.1; n],
        "{spec}: host memory dropped by exactly the discarded 16 MiB \
         (pagemap, mincore[, file blocks][, pool])"
    );
    assert_eq!(ram.partially_discarded_bytes(), vec![0]);
    assert_eq!(
        mismatches(&ram, HOLE.0, HOLE.1, |_| 0),
        0,
        "{spec}: the hole reads zeros"
    );
    assert_eq!(
        mismatches(&ram, 0, HOLE.0, |g| pattern_word(g, 5)),
        0,
        "{spec}: below the hole"
    );
    let above = HOLE.0 + HOLE.1;
    assert_eq!(
        mismatches(&ram, above, SIZE - above, |g| pattern_word(g, 5)),
        0,
        "{spec}: above the hole"
    );
    ram
}

#[test]
fn anon_discard_releases_exactly() {
    discard_half("size=32M,backend=anon", Measure::Private);
    discard_half("size=32M,backend=anon,thp=off", Measure::Private);
}

#[test]
fn anon_thp_discard_releases_exactly() {
    let ram = ram("size=32M,backend=anon,thp=on");
    write_pattern(&ram, SIZE, 1);
    let thp = common::smaps_field(ram.regions()[0].host_addr(), "AnonHugePages").unwrap_or(0);
    if matches!(hugepages::thp_mode(), Ok(hugepages::ThpMode::Never)) {
        skip(
            "anon_thp_discard_releases_exactly",
            "THP disabled host-wide: 4 KiB pages only",
        );
    } else {
        assert!(thp > 0, "thp=on gave the region transparent huge pages");
    }
    drop(ram);
    discard_half("size=32M,backend=anon,thp=on", Measure::Private);
}

#[test]
fn shared_and_memfd_discard_release_the_file_pages() {
    discard_half("size=32M,backend=anon,shared=on", Measure::Shared);
    discard_half("size=32M,backend=memfd", Measure::Shared);
}

#[test]
fn uffd_discard_releases_and_then_serves_zeros() {
    let t = "uffd_discard_releases_and_then_serves_zeros";
    if !uffd_or_skip(t) {
        return;
    }
    let ram = discard_half("size=32M,backend=uffd", Measure::Private);
    let Some(Pager::Internal(h)) = &ram.regions()[0].pager else {
        panic!("internal handler");
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while h.stats().removed_bytes < HOLE.1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let s = h.stats();
    assert_eq!(
        s.removed_bytes, HOLE.1,
        "the handler saw the discard: {s:?}"
    );
    // Reading the hole back (done in discard_half) faulted every page again, served as zeros.
    assert_eq!(s.faults, (SIZE + HOLE.1) / 4096, "{s:?}");
    assert_eq!(s.zero_pages, (SIZE + HOLE.1) / 4096, "{s:?}");
}

/// Discards the first huge page of a region of 3 huge pages 4 KiB at a time: nothing returns
/// to the pool until the last piece, then exactly one page does. Then a discard covering half
/// of one huge page and all of the next releases only the whole one.
fn partial_accounting(spec: &str, size: HugePageSize) {
    let hp = size.bytes();
    let ram = ram(spec);
    assert_eq!(ram.regions()[0].len(), 3 * hp);
    write_pattern(&ram, 3 * hp, 9);
    let free = pool(size).free;
    let pattern = |g: u64| pattern_word(g, 9);
    // The same piece twice counts once.
    for _ in 0..2 {
        let out = ram.discard(0, 4096).unwrap();
        assert_eq!((out.requested, out.released), (4096, 0), "{spec}");
        assert_eq!(ram.partially_discarded_bytes(), vec![4096], "{spec}");
        assert_eq!(pool(size).free, free, "{spec}");
    }
    for i in 1..hp / 4096 {
        let out = ram.discard(i * 4096, 4096).unwrap();
        let last = i == hp / 4096 - 1;
        if !last {
            assert_eq!(out.released, 0, "{spec}: piece {i}");
            assert_eq!(
                pool(size).free,
                free,
                "{spec}: piece {i}: nothing back in the pool"
            );
            assert_eq!(
                ram.partially_discarded_bytes(),
                vec![(i + 1) * 4096],
                "{spec}"
            );
            if i % 97 == 0 {
                assert_eq!(
                    mismatches(&ram, 0, (i + 1) * 4096, |_| 0),
                    0,
                    "{spec}: zeroed so far"
                );
                assert_eq!(
                    mismatches(&ram, (i + 1) * 4096, 4096, pattern),
                    0,
                    "{spec}: the next piece still holds its data"
                );
            }
        } else {
            assert_eq!(
                out.released, hp,
                "{spec}: the last piece frees the huge page"
            );
            assert_eq!(pool(size).free, free + 1, "{spec}: exactly one page back");
            assert_eq!(ram.partially_discarded_bytes(), vec![0], "{spec}");
        }
    }
    assert_eq!(
        mismatches(&ram, hp, 2 * hp, pattern),
        0,
        "{spec}: pages 1 and 2 untouched"
    );
    // Second half of page 1 and all of page 2: only page 2 is released.
    let out = ram.discard(hp + hp / 2, hp + hp / 2).unwrap();
    assert_eq!(out.released, hp, "{spec}");
    assert_eq!(pool(size).free, free + 2, "{spec}");
    assert_eq!(ram.partially_discarded_bytes(), vec![hp / 2], "{spec}");
    assert_eq!(
        mismatches(&ram, hp, hp / 2, pattern),
        0,
        "{spec}: first half of page 1 kept"
    );
    assert_eq!(
        mismatches(&ram, hp + hp / 2, hp / 2, |_| 0),
        0,
        "{spec}: second half zeroed"
    );
    // The first half completes page 1.
    let out = ram.discard(hp, hp / 2).unwrap();
    assert_eq!(out.released, hp, "{spec}");
    assert_eq!(
        pool(size).free,
        free + 3,
        "{spec}: the whole region is back in the pool"
    );
    assert_eq!(ram.partially_discarded_bytes(), vec![0], "{spec}");
    // Read last: hugetlb has no shared zero page, so reading a released huge page takes a
    // fresh (zeroed) one from the pool.
    assert_eq!(
        mismatches(&ram, 0, 3 * hp, |_| 0),
        0,
        "{spec}: all of it reads zeros"
    );
}

#[test]
fn hugetlb_discard_returns_pages_to_the_pool() {
    let t = "hugetlb_discard_returns_pages_to_the_pool";
    if !root_or_skip(t) {
        return;
    }
    let pool2m = match HugePool::reserve(HugePageSize::Size2M, 16) {
        Ok(p) => p,
        Err(e) => return skip(t, format_args!("cannot reserve 16 2M pages: {e}")),
    };
    let mount = HugetlbfsMount::new(HugePageSize::Size2M).unwrap();
    let free = pool2m.free();
    let m = Measure::Huge(HugePageSize::Size2M);
    drop(discard_half("size=32M,backend=memfd,hugetlb=on", m));
    assert_eq!(
        pool2m.free(),
        free,
        "memfd hugetlb: all pages back after drop"
    );
    drop(discard_half(
        &format!(
            "size=32M,backend=hugetlbfs,mem-path={}",
            mount.path().display()
        ),
        m,
    ));
    assert_eq!(pool2m.free(), free, "hugetlbfs: all pages back after drop");
    partial_accounting("size=6M,backend=memfd,hugetlb=on", HugePageSize::Size2M);
    partial_accounting(
        &format!(
            "size=6M,backend=hugetlbfs,mem-path={}",
            mount.path().display()
        ),
        HugePageSize::Size2M,
    );
    assert_eq!(pool2m.free(), free);
    drop(mount);
    drop(pool2m);
}

#[test]
fn refused_discards_change_nothing() {
    // 4 GiB of MAP_NORESERVE anonymous memory: RAM 0..3G and 4G..5G, the MMIO hole between.
    let ram = ram("size=4G,backend=anon");
    assert_eq!(ram.ram_ranges(), vec![(0, 3 * G), (4 * G, G)]);
    let marks = [0, 3 * G - 8, 4 * G, 5 * G - 8];
    for (i, &g) in marks.iter().enumerate() {
        ram.memory()
            .write_obj(0x1111 * (i as u64 + 1), GuestAddress(g))
            .unwrap();
    }
    let resident = ram.resident_bytes();
    assert_eq!(resident, vec![4 * 4096]);
    let unchanged = |what: &str| {
        for (i, &g) in marks.iter().enumerate() {
            assert_eq!(
                ram.memory().read_obj::<u64>(GuestAddress(g)).unwrap(),
                0x1111 * (i as u64 + 1),
                "{what}: marker at {g:#x}"
            );
        }
        assert_eq!(ram.resident_bytes(), resident, "{what}: residency");
        assert_eq!(ram.partially_discarded_bytes(), vec![0]);
    };
    for (what, gpa, len) in [
        ("outside RAM", 5 * G, 4096),
        ("across the end", 5 * G - 4096, 8192),
        ("in the MMIO hole", 3 * G, 4096),
        ("inside the hole", 3 * G + 512 * M, 4096),
        ("into the hole", 3 * G - 4096, 8192),
        ("over the hole", 3 * G - 4096, G + 8192),
        ("out of the hole", 4 * G - 4096, 8192),
        ("wrapping around", u64::MAX - 4095, 4096 * 2),
    ] {
        let e = ram.discard(gpa, len).unwrap_err();
        assert!(matches!(e, MemoryError::NotRam { .. }), "{what}: {e}");
        unchanged(what);
    }
    for (what, gpa, len) in [
        ("unaligned start", 4096 + 0x800, 4096),
        ("unaligned length", 0, 4096 + 8),
        ("unaligned start in the hole", 3 * G + 8, 4096),
    ] {
        let e = ram.discard(gpa, len).unwrap_err();
        assert!(matches!(e, MemoryError::Unaligned { .. }), "{what}: {e}");
        unchanged(what);
    }
    // The same edges, kept to RAM, are accepted and really discard.
    let out = ram.discard(3 * G - 4096, 4096).unwrap();
    assert_eq!(out.released, 4096);
    assert_eq!(
        ram.memory()
            .read_obj::<u64>(GuestAddress(3 * G - 8))
            .unwrap(),
        0
    );
    let out = ram.discard(4 * G, 4096).unwrap();
    assert_eq!(out.released, 4096);
    assert_eq!(
        ram.memory().read_obj::<u64>(GuestAddress(4 * G)).unwrap(),
        0
    );
    assert_eq!(
        ram.memory().read_obj::<u64>(GuestAddress(0)).unwrap(),
        0x1111
    );
}

#[test]

fn hugetlb_discard_of_absent_pages_takes_no_memory() {
    // A discard must never take host memory. Sub-huge-page pieces are zeroed with
    // `write_bytes`, which faults in (allocates from the pool) a huge page that is not present:
    // one the guest never touched, or one an earlier discard already released.
    let t = "hugetlb_discard_of_absent_pages_takes_no_memory";
    if !root_or_skip(t) {
        return;
    }
    let pool2m = match HugePool::reserve(HugePageSize::Size2M, 2) {
        Ok(p) => p,
        Err(e) => return skip(t, format_args!("cannot reserve 2 2M pages: {e}")),
    };
    let hp = 2 * M;
    let ram = ram("size=4M,backend=memfd,hugetlb=on");
    let free = pool2m.free();
    // A piece of a huge page the guest never touched: it already reads as zeros.
    let untouched = ram.discard(0, 4096).unwrap();
    let taken_untouched = free - pool2m.free();
    // A piece of a huge page already given back.
    write_pattern(&ram, 2 * hp, 3);
    ram.discard(0, hp).unwrap();
    assert_eq!(ram.discard(hp, hp).unwrap().released, hp);
    let after = pool2m.free();
    assert_eq!(after, free, "both pages released");
    let again = ram.discard(hp, 4096).unwrap();
    let taken_released = after - pool2m.free();
    assert_eq!(
        (
            taken_untouched,
            taken_released,
            ram.partially_discarded_bytes()
        ),
        (0, 0, vec![0]),
        "huge pages taken by discarding a piece of an untouched page ({untouched:?}) and of a \
         released page ({again:?}), partial bytes"
    );
}
