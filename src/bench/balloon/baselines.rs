//! The two sides `bench balloon` compares the balloon with: the raw `madvise` of freshly
//! touched (or aged) memory, and the platform's floors (one discard of guest RAM at a sync
//! point).

use super::{guest_memory, BalloonBenchOptions};
use crate::bench::host::BareMapping;
use crate::bench::BenchError;
use crate::config::workload::Workload;
use crate::config::VmConfig;
use crate::memory::GuestRam;
use crate::runner::{StartOptions, Vmm};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// [`raw_madvise`] on a thread pinned to `cpu` (the guests' CPU), so both sides touch and free
/// their memory on the same CPU; on the calling thread when `None`.
pub(super) fn raw_madvise_on(
    size: u64,
    cpu: Option<usize>,
    age: Duration,
) -> Result<Freed, BenchError> {
    let Some(cpu) = cpu else {
        return raw_madvise(size, age);
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::host::cpus::pin_current_thread_to(&[cpu]).map_err(|detail| {
                BenchError::Check {
                    what: format!("pinning the raw baseline to host CPU {cpu}"),
                    detail,
                }
            })?;
            raw_madvise(size, age)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(BenchError::Check {
                what: "the raw baseline".into(),
                detail: "its thread panicked".into(),
            })
        })
    })
}

/// One raw round: touches a fresh mapping of `size`, waits `age`, times one
/// `madvise(MADV_DONTNEED)` of it.
fn raw_madvise(size: u64, age: Duration) -> Result<Freed, BenchError> {
    let map = BareMapping::anon(size as usize)?;
    let p = map.addr();
    // SAFETY: touching every page of the mapping just created; THP off for a 4K baseline.
    unsafe {
        libc::madvise(p.cast(), map.len(), libc::MADV_NOHUGEPAGE);
        for off in (0..map.len()).step_by(4096) {
            *p.add(off) = 1;
        }
    }
    std::thread::sleep(age);
    let room = crate::host::pcp::of_this_cpu().map(|l| l.room());
    let t = Instant::now();
    // SAFETY: the whole mapping created above (unmapped when `map` drops).
    let rc = unsafe { libc::madvise(p.cast(), map.len(), libc::MADV_DONTNEED) };
    let secs = t.elapsed().as_secs_f64();
    if rc != 0 {
        return Err(BenchError::last_os("madvise(MADV_DONTNEED)", ""));
    }
    Ok(Freed { secs, room })
}

/// One timed free of memory.
#[derive(Clone, Copy, Debug)]
pub(super) struct Freed {
    /// Seconds it took.
    pub(super) secs: f64,
    /// Room on the freeing CPU's per-CPU free page lists just before ([`crate::host::pcp`]):
    /// the pages it could free there without the buddy allocator.
    pub(super) room: Option<u64>,
}

/// Who touches the memory [`guest_discard_floor`] discards.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Toucher {
    /// The guest (ring 3, through KVM's shadow or nested page tables: KVM maps every page).
    Guest,
    /// The VMM, at the sync point, on the vCPU's thread (`GuestRam::reclaim` with populate):
    /// the same guest RAM, never mapped by KVM. What the floor costs beyond this is KVM's.
    Vmm,
}

/// The floor for a balloon return here: a built-in guest's `size` of RAM is touched (by the
/// guest, or by the VMM: [`Toucher`]), then, at a sync point (the vCPU waiting in the VMM),
/// `GuestRam::discard` of exactly that memory is timed (one call per extent, so one below
/// 3 GiB): the discard calls the balloon makes, in one piece. Returns the discard, and how long
/// after the guest's start it began (the guest touched the memory in between).
pub(super) fn guest_discard_floor(
    size: u64,
    opts: &BalloonBenchOptions,
    toucher: Toucher,
) -> Result<(Freed, f64), BenchError> {
    let config = VmConfig {
        pin: opts.pins(),
        memory: guest_memory(size)?,
        workload: Workload::parse(&[match toucher {
            Toucher::Guest => "touch:work-only=1;sync:tag=1",
            Toucher::Vmm => "sync:tag=1",
        }])
        .expect("valid workload"),
        ..Default::default()
    };
    type Timed = Result<(Freed, f64), String>;
    let timed: Arc<Mutex<Timed>> = Arc::new(Mutex::new(Err("no sync".into())));
    let started = Instant::now();
    let hook = {
        let timed = timed.clone();
        Arc::new(move |_vcpu: u32, _tag: u64, ram: &GuestRam| {
            let extents = &ram.regions()[1].extents;
            if toucher == Toucher::Vmm {
                if let Err(e) = extents
                    .iter()
                    .try_for_each(|e| ram.reclaim(e.gpa, e.len, true))
                {
                    *timed.lock().unwrap() = Err(format!("populating: {e}"));
                    return;
                }
            }
            // One discard per extent: a region above ~3 GiB is split around the PCI hole.
            let room = crate::host::pcp::of_this_cpu().map(|l| l.room());
            let t = Instant::now();
            let touched = (t - started).as_secs_f64();
            let released = extents
                .iter()
                .map(|e| ram.discard(e.gpa, e.len).map(|o| o.released))
                .sum::<Result<u64, _>>();
            *timed.lock().unwrap() = match released {
                Ok(n) if n == size => Ok((
                    Freed {
                        secs: t.elapsed().as_secs_f64(),
                        room,
                    },
                    touched,
                )),
                Ok(n) => Err(format!("released {n} of {size} bytes")),
                Err(e) => Err(e.to_string()),
            };
        }) as crate::vmm::vcpu::SyncHook
    };
    let mut vmm = Vmm::start_with(
        &config,
        StartOptions {
            sync: Some(hook),
            ..Default::default()
        },
    )
    .map_err(|e| BenchError::Check {
        what: "starting the floor's guest".into(),
        detail: e.to_string(),
    })?;
    vmm.wait(&crate::runner::RunOptions::default());
    let r = timed.lock().unwrap().clone();
    r.map_err(|detail| BenchError::Check {
        what: "discarding the guest's touched RAM".into(),
        detail,
    })
}
