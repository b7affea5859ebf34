//! Pinning the calling thread to host CPUs (vCPU threads, the device thread, benchmark
//! baselines): the one place that calls `sched_setaffinity`; and the one reader of a thread's
//! CPU time. How many CPUs there are is the configuration's question
//! ([`crate::config::host_cpus`]), which sits below this layer.

use nix::sched::CpuSet;

/// The set of `cpus`; an error names a CPU the kernel's set cannot hold.
pub fn set_of(cpus: &[usize]) -> Result<CpuSet, String> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| format!("host CPU {c}: {e}"))?;
    }
    Ok(set)
}

/// Pins the calling thread to `set`.
pub fn pin_current_thread(set: &CpuSet) -> nix::Result<()> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set)
}

/// CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`); `None` if the
/// kernel cannot say. The one reader of that clock: the balloon's discard timing and the
/// benchmarks' per-thread CPU figures use it.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(std::time::Duration::from)
}

/// Pins the calling thread to `cpus`.
pub fn pin_current_thread_to(cpus: &[usize]) -> Result<(), String> {
    pin_current_thread(&set_of(cpus)?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_pinned_to_one_cpu_runs_only_there() {
        let last = crate::config::host_cpus() - 1;
        std::thread::spawn(move || {
            super::pin_current_thread_to(&[last]).unwrap();
            let got = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
            assert!(got.is_set(last).unwrap());
            assert!((0..last).all(|c| !got.is_set(c).unwrap()));
        })
        .join()
        .unwrap();
        assert!(crate::config::host_cpu_not_online(last).is_none());
        assert!(crate::config::host_cpu_not_online(last + 1).is_some());
        assert!(super::set_of(&[nix::sched::CpuSet::count()]).is_err());
    }
}
