//! The VMM's own heap: `memvisor::memory::release_free_heap` gives memory that was freed below
//! a live allocation back to the kernel (what `memvisor run` does once set-up is done).
//! One test in its own binary, so no other test allocates meanwhile.

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn freed_heap_below_a_live_allocation_goes_back_to_the_kernel() {
    const MIB: u64 = 1 << 20;
    // 32 MiB in 32 KiB pieces (below malloc's mmap threshold: they come from the heap), then
    // one small allocation above them that stays live, so freeing the pieces leaves a hole
    // malloc keeps rather than a free top it would trim on its own.
    let pieces: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8 | 1; 32 << 10]).collect();
    let above = vec![7u8; 4096];
    let touched = rss_bytes();
    drop(pieces);
    let freed = rss_bytes();
    assert!(
        touched - freed.min(touched) < 8 * MIB,
        "malloc gave the hole back on its own ({} -> {} MiB): the test measures nothing",
        touched / MIB,
        freed / MIB
    );
    assert!(
        memvisor::memory::release_free_heap(),
        "malloc_trim released nothing"
    );
    let trimmed = rss_bytes();
    assert!(
        freed - trimmed.min(freed) >= 24 * MIB,
        "resident {} MiB after free, {} MiB after release_free_heap: expected >= 24 MiB less",
        freed / MIB,
        trimmed / MIB
    );
    assert_eq!(above[4095], 7, "the live allocation is intact");
}
