//! Populate: owns faulting memory in ahead of time (`madvise(MADV_POPULATE_WRITE)`, or touching
//! every page on kernels older than 5.14), split over threads, with progress reports and a typed
//! error when a hugetlb pool runs dry. The threads are named `prealloc<N>`; a caller's start hook
//! ([`PopulateOptions::thread_start`]) runs first on each of them, e.g. to restrict what they
//! may do (memvisor installs a seccomp filter there; this crate knows nothing of it).

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};
use serde::Serialize;

use crate::error::HugePageError;
use crate::pool::{pool_status, reserve_command};
use crate::size::HugePageSize;

/// Bytes populated per `madvise` call; progress is reported after each step.
pub const STEP_BYTES: usize = 64 << 20;

/// Most threads one populate uses (more are clamped to this).
pub const MAX_THREADS: usize = 256;

/// How memory was faulted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PopulateMethod {
    /// `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+).
    PopulateWrite,
    /// A volatile read and write back of one byte per page.
    Touch,
}

/// What a populate did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PopulateStats {
    /// Bytes populated.
    pub bytes: u64,
    /// Wall time taken.
    pub elapsed: Duration,
    /// Threads used.
    pub threads: usize,
    /// Method used ([`PopulateMethod::Touch`] if any part had to fall back to touching).
    pub method: PopulateMethod,
}

impl PopulateStats {
    /// Throughput in GiB per second.
    pub fn gib_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.bytes as f64 / f64::from(1u32 << 30) / secs
    }
}

fn system_page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(4096)
}

/// Whether this kernel supports `MADV_POPULATE_WRITE` (probed once on a private scratch page).
pub fn populate_write_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let len = NonZeroUsize::new(system_page_size()).expect("page size is not zero");
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh private anonymous mapping that nothing else knows about.
        let Ok(page) = (unsafe { mmap_anonymous(None, len, prot, MapFlags::MAP_PRIVATE) }) else {
            return false;
        };
        // SAFETY: `page` is the mapping created above, `len` long.
        let result = unsafe { madvise(page, len.get(), MmapAdvise::MADV_POPULATE_WRITE) };
        // SAFETY: unmaps exactly the mapping created above, which is no longer used.
        if let Err(e) = unsafe { munmap(page, len.get()) } {
            log::warn!("munmap of the MADV_POPULATE_WRITE probe page failed: {e}");
        }
        // Kernels that do not know the advice say EINVAL; anything else means they do.
        result != Err(Errno::EINVAL)
    })
}

/// Shared state of one populate call.
struct Run<'a> {
    base: usize,
    page_size: usize,
    step: usize,
    done: Mutex<u64>,
    stop: AtomicBool,
    fell_back: AtomicBool,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// How a chunk failed: offset from `base` of the first page not populated, and the errno.
struct Failure {
    offset: usize,
    errno: Errno,
}

/// Why a populate thread stopped early.
enum ThreadFailure {
    /// `madvise` failed.
    Populate(Failure),
    /// The thread did not start, or its start hook failed: (thread index, what happened).
    Start(usize, String),
}

/// A hook run first on every populate thread; an `Err` stops the populate (the message should
/// say what to do).
pub type ThreadStart<'a> = &'a (dyn Fn() -> Result<(), String> + Sync);

/// How [`populate_with`] works.
#[derive(Clone, Copy, Default)]
pub struct PopulateOptions<'a> {
    /// Threads to use (at most [`MAX_THREADS`] and one per page; 0 counts as 1).
    pub threads: usize,
    /// The method; `None`: `MADV_POPULATE_WRITE` where the kernel has it, else touching.
    pub method: Option<PopulateMethod>,
    /// Called with the total bytes done after each step.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Run first on each populate thread. When given, the work always runs on threads of its
    /// own, also with one thread, never on the caller's, so that whatever the hook changes
    /// about its thread (a seccomp filter, say) never touches the caller.
    pub thread_start: Option<ThreadStart<'a>>,
}

impl Run<'_> {
    fn report(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        *done += bytes as u64;
        if let Some(progress) = self.progress {
            progress(*done);
        }
    }

    /// # Safety
    /// `[start, start + len)` is inside the caller's live, writable mapping.
    unsafe fn madvise_populate(&self, start: usize, len: usize) -> Result<(), Errno> {
        let ptr = NonNull::new(start as *mut libc::c_void).ok_or(Errno::EINVAL)?;
        loop {
            // SAFETY: per this function's contract the range is a live mapping of the caller;
            // MADV_POPULATE_WRITE only faults pages in, it never changes their content.
            match unsafe { madvise(ptr, len, MmapAdvise::MADV_POPULATE_WRITE) } {
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                other => return other,
            }
        }
    }

    /// # Safety
    /// `[start, start + len)` is inside the caller's live, writable mapping.
    unsafe fn touch(&self, start: usize, len: usize) {
        for page in (start..start + len).step_by(self.page_size) {
            let ptr = page as *mut u8;
            // SAFETY: `ptr` is inside the caller's live, writable mapping (this function's
            // contract); reading a byte and writing the same value back keeps the content.
            unsafe { ptr.write_volatile(ptr.read_volatile()) };
        }
    }

    /// Populates one chunk step by step.
    ///
    /// # Safety
    /// `[start, start + len)` is inside the caller's live, writable mapping.
    unsafe fn chunk(&self, start: usize, len: usize, mut touch: bool) -> Result<(), Failure> {
        let mut off = 0;
        while off < len && !self.stop.load(Ordering::Relaxed) {
            let n = self.step.min(len - off);
            let at = start + off;
            if touch {
                // SAFETY: inside this chunk, which is inside the caller's mapping.
                unsafe { self.touch(at, n) };
            } else {
                // SAFETY: inside this chunk, which is inside the caller's mapping.
                match unsafe { self.madvise_populate(at, n) } {
                    Ok(()) => {}
                    Err(Errno::EINVAL) if !populate_write_supported() => {
                        touch = true;
                        self.fell_back.store(true, Ordering::Relaxed);
                        // SAFETY: as above.
                        unsafe { self.touch(at, n) };
                    }
                    Err(errno) => {
                        // Find the exact page that failed, so the error can say how many pages
                        // are missing.
                        let mut ok = 0;
                        // SAFETY: single pages inside the step that just failed.
                        while ok < n
                            && unsafe { self.madvise_populate(at + ok, self.page_size) }.is_ok()
                        {
                            ok += self.page_size;
                        }
                        self.report(ok);
                        self.stop.store(true, Ordering::Relaxed);
                        return Err(Failure {
                            offset: at + ok - self.base,
                            errno,
                        });
                    }
                }
            }
            off += n;
            self.report(n);
        }
        Ok(())
    }
}

/// Faults in every page of `[addr, addr + len)` for writing, on `threads` threads (at most
/// [`MAX_THREADS`] and one per page), with `MADV_POPULATE_WRITE` where the kernel supports it
/// and by touching every page otherwise.
///
/// Each thread takes a contiguous chunk whose boundaries are multiples of `page_size` and works
/// through it in steps of [`STEP_BYTES`]; after each step `progress` gets the total bytes done so
/// far (calls are serialized and the values strictly increase). Content is preserved.
///
/// On hugetlb memory whose pool has run dry the kernel reports an error instead of raising
/// SIGBUS, which becomes [`HugePageError::PoolExhausted`] with the command that grows the pool.
///
/// # Safety
/// `[addr, addr + len)` must be a live mapping owned by the caller, writable, and not unmapped
/// concurrently. On kernels without `MADV_POPULATE_WRITE` every page is read and written back,
/// so nothing else may write to the range while this runs.
pub unsafe fn populate(
    addr: *mut u8,
    len: usize,
    page_size: usize,
    threads: usize,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<PopulateStats, HugePageError> {
    let opts = PopulateOptions {
        threads,
        progress,
        ..Default::default()
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { populate_with(addr, len, page_size, opts) }
}

/// [`populate`] with a chosen method (e.g. to benchmark [`PopulateMethod::Touch`]).
///
/// With [`PopulateMethod::PopulateWrite`], an `EINVAL` from a kernel without the advice falls
/// back to touching; on a kernel that has it, `EINVAL` means the range is not a writable
/// populatable mapping and is returned as an error (touching it could crash the process).
///
/// # Safety
/// As for [`populate`]. With [`PopulateMethod::Touch`] on hugetlb memory, the pool must hold
/// enough pages (see [`crate::check_pool`]): touching a page the pool cannot back raises SIGBUS.
pub unsafe fn populate_with_method(
    addr: *mut u8,
    len: usize,
    page_size: usize,
    threads: usize,
    method: PopulateMethod,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<PopulateStats, HugePageError> {
    let opts = PopulateOptions {
        threads,
        method: Some(method),
        progress,
        thread_start: None,
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { populate_with(addr, len, page_size, opts) }
}

/// [`populate`] with every option: the method, and a hook run first on each thread (see
/// [`PopulateOptions`]). A thread that cannot be spawned or whose hook fails stops the others
/// before their first step and gives [`HugePageError::PopulateThread`].
///
/// # Safety
/// As for [`populate_with_method`].
pub unsafe fn populate_with(
    addr: *mut u8,
    len: usize,
    page_size: usize,
    opts: PopulateOptions<'_>,
) -> Result<PopulateStats, HugePageError> {
    let method = opts.method.unwrap_or_else(|| {
        if populate_write_supported() {
            PopulateMethod::PopulateWrite
        } else {
            PopulateMethod::Touch
        }
    });
    let (threads, progress) = (opts.threads, opts.progress);
    let base = addr as usize;
    let bad = |reason| HugePageError::PopulateArgs {
        addr: base,
        len,
        page_size,
        reason,
    };
    if !page_size.is_power_of_two() || page_size < system_page_size() {
        return Err(bad(
            "the page size must be a power of two and at least the base page size",
        ));
    }
    if base % page_size != 0 || len % page_size != 0 {
        return Err(bad(
            "the address and length must be multiples of the page size",
        ));
    }
    if base == 0 || base.checked_add(len).is_none() {
        return Err(bad("the range is not a valid address range"));
    }
    let pages = len / page_size;
    let threads = threads.min(MAX_THREADS).clamp(1, pages.max(1));
    let run = Run {
        base,
        page_size,
        step: (STEP_BYTES / page_size).max(1) * page_size,
        done: Mutex::new(0),
        stop: AtomicBool::new(false),
        fell_back: AtomicBool::new(false),
        progress,
    };
    let touch = method == PopulateMethod::Touch;
    let start = Instant::now();
    let results: Vec<Result<(), ThreadFailure>> = if threads == 1 && opts.thread_start.is_none() {
        // SAFETY: the one chunk is the caller's whole range.
        vec![unsafe { run.chunk(base, len, touch) }.map_err(ThreadFailure::Populate)]
    } else {
        let run = &run;
        // Page `first` of chunk `i` is pages * i / threads (computed wide so it cannot overflow).
        let first = |i: usize| (pages as u128 * i as u128 / threads as u128) as usize;
        let chunks: Vec<(usize, usize)> = (0..threads)
            .map(|i| {
                (
                    base + first(i) * page_size,
                    (first(i + 1) - first(i)) * page_size,
                )
            })
            .collect();
        // All threads start their first madvise together: a thread that starts while another
        // is already inside MADV_POPULATE_WRITE waits for the mmap lock for a whole step. A
        // thread whose start hook failed sets `stop` before the gate, so no thread starts.
        let gate = Gate::default();
        let gate = &gate;
        let thread_start = opts.thread_start;
        std::thread::scope(|s| {
            let mut handles = Vec::with_capacity(threads);
            for (i, &(at, n)) in chunks.iter().enumerate() {
                let spawned = std::thread::Builder::new()
                    .name(format!("prealloc{i}"))
                    .spawn_scoped(s, move || {
                        let started = thread_start.map_or(Ok(()), |f| f());
                        if started.is_err() {
                            run.stop.store(true, Ordering::Relaxed);
                        }
                        gate.arrive_and_wait(threads);
                        started.map_err(|e| ThreadFailure::Start(i, e))?;
                        // SAFETY: the chunks split the caller's range; each is used by one
                        // thread.
                        unsafe { run.chunk(at, n, touch) }.map_err(ThreadFailure::Populate)
                    });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        // The threads already started wait at the gate for this one.
                        run.stop.store(true, Ordering::Relaxed);
                        gate.open();
                        let mut out: Vec<_> = handles.into_iter().map(join).collect();
                        out.push(Err(ThreadFailure::Start(i, e.to_string())));
                        return out;
                    }
                }
            }
            handles.into_iter().map(join).collect()
        })
    };
    let elapsed = start.elapsed();
    let mut populate_failure: Option<Failure> = None;
    for r in results {
        match r {
            Ok(()) => {}
            Err(ThreadFailure::Start(index, reason)) => {
                return Err(HugePageError::PopulateThread { index, reason });
            }
            Err(ThreadFailure::Populate(f)) => {
                if populate_failure
                    .as_ref()
                    .is_none_or(|p| f.offset < p.offset)
                {
                    populate_failure = Some(f);
                }
            }
        }
    }
    if let Some(failure) = populate_failure {
        let done = *run.done.lock().unwrap_or_else(|e| e.into_inner());
        return Err(failure_error(base, len, page_size, done, failure));
    }
    let method = if touch || run.fell_back.load(Ordering::Relaxed) {
        PopulateMethod::Touch
    } else {
        PopulateMethod::PopulateWrite
    };
    let stats = PopulateStats {
        bytes: len as u64,
        elapsed,
        threads,
        method,
    };
    log::debug!(
        "populated {len} bytes in {elapsed:?} ({:.2} GiB/s)",
        stats.gib_per_s()
    );
    Ok(stats)
}

/// Where populate threads wait for each other before their first step.
#[derive(Default)]
struct Gate {
    /// Threads arrived; whether the gate was opened for everyone (a thread failed to spawn).
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Gate {
    /// Waits until `n` threads have arrived (this one included) or the gate was opened.
    fn arrive_and_wait(&self, n: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        if st.0 >= n {
            self.cv.notify_all();
        }
        while st.0 < n && !st.1 {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets every waiting thread go.
    fn open(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_all();
    }
}

/// Waits for a populate thread; a panic there is passed on to the caller.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn failure_error(
    base: usize,
    len: usize,
    page_size: usize,
    done: u64,
    f: Failure,
) -> HugePageError {
    let huge = HugePageSize::from_bytes(page_size as u64);
    match (huge, f.errno) {
        (Some(size), Errno::EFAULT | Errno::ENOMEM) => {
            let pages = (len / page_size) as u64;
            let populated = done / page_size as u64;
            let missing = pages - populated;
            let mut fix = reserve_command(size, missing);
            if let Ok(st) = pool_status(size) {
                fix = format!(
                    "{fix}` or `echo {} > {}",
                    st.total + missing,
                    size.nr_hugepages_path().display()
                );
            }
            HugePageError::PoolExhausted {
                size,
                pages,
                populated,
                missing,
                errno: f.errno,
                fix,
            }
        }
        (_, errno) => HugePageError::Populate {
            addr: base,
            len,
            offset: f.offset,
            errno,
            hint: match errno {
                Errno::ENOMEM => "the host is out of memory, or part of the range is not mapped",
                Errno::EFAULT => {
                    "touching the range would raise SIGBUS (e.g. a file mapping \
                                  past the end of its file)"
                }
                Errno::EINVAL => {
                    "the range is not a writable mapping that can be populated \
                                  (read-only, VM_IO or VM_PFNMAP)"
                }
                Errno::EHWPOISON => "a page in the range is hardware-poisoned",
                _ => "see madvise(2)",
            },
        },
    }
}
