//! Compares populate methods and thread counts on hugetlbfs and anonymous memory.
//!
//! Run as root: `cargo run --release -p hugepages --example populate_bench -- [MiB] [2M|1G]`.
//! It grows the pool for the run (and puts it back), mounts a temporary hugetlbfs and removes it.

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use hugepages::{
    lock_pools, mount, populate_with_method, unmount, HugePageSize, PoolReservation, PopulateMethod,
};
use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(Ok(512), |a| a.parse())?;
    let size: HugePageSize = args
        .next()
        .map_or(Ok(HugePageSize::Size2M), |a| a.parse())?;
    let page = size.bytes() as usize;
    let len = mib.div_ceil(page >> 20) * page;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let nz = NonZeroUsize::new(len).ok_or("size must not be zero")?;

    let _lock = lock_pools()?;
    let _pool = PoolReservation::reserve_additional(size, (len / page) as u64)?;
    let dir = std::env::temp_dir().join(format!("memvisor-populate-bench-{}", std::process::id()));
    mount(&dir, size)?;
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        for method in [PopulateMethod::PopulateWrite, PopulateMethod::Touch] {
            for threads in [1, 2] {
                let path: PathBuf = dir.join("guest");
                let file = File::create_new(&path)?;
                file.set_len(len as u64)?;
                // SAFETY: a new shared mapping of a file only this program uses.
                let ptr = unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, &file, 0)? };
                // SAFETY: the mapping above is live, writable and owned here.
                let stats = unsafe {
                    populate_with_method(ptr.as_ptr().cast(), len, page, threads, method, None)?
                };
                println!(
                    "hugetlbfs {size} {mib} MiB {method:?} x{threads}: {:?} {:.2} GiB/s",
                    stats.elapsed,
                    stats.gib_per_s()
                );
                // SAFETY: unmaps the mapping above, no longer used.
                unsafe { munmap(ptr, len)? };
                std::fs::remove_file(&path)?;
            }
        }
        for method in [PopulateMethod::PopulateWrite, PopulateMethod::Touch] {
            // SAFETY: a new private anonymous mapping.
            let ptr = unsafe { mmap_anonymous(None, nz, prot, MapFlags::MAP_PRIVATE)? };
            // SAFETY: the mapping above is live, writable and owned here.
            let stats =
                unsafe { populate_with_method(ptr.as_ptr().cast(), len, 4096, 2, method, None)? };
            println!(
                "anonymous 4K {mib} MiB {method:?} x2: {:?} {:.2} GiB/s",
                stats.elapsed,
                stats.gib_per_s()
            );
            // SAFETY: unmaps the mapping above, no longer used.
            unsafe { munmap(ptr, len)? };
        }
        Ok(())
    })();
    unmount(&dir)?;
    std::fs::remove_dir(&dir)?;
    result
}
