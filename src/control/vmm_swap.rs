//! The `vmm-swap` thread: carries out the in-VMM swap's requests
//! ([`crate::memory::vmm_swap`]) for the control API, under a seccomp filter of its own.
//!
//! The work needs what no API thread may do (create and write a file, `fdatasync`, punch
//! holes, create a userfaultfd and start its handler thread), and a filter can only narrow
//! what a thread inherits, so the thread is started with the VM, before any filter is in
//! place, and waits for requests on a channel. Pausing the guest around a swap-out is the
//! caller's part ([`crate::control::vmm_api`]).

use crate::memory::{GuestRam, SwapError, SwapInReport, SwapOutReport, SwapOutRequest};
use crate::seccomp::ThreadFilter;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, Weak};
use std::thread::JoinHandle;

enum Job {
    Out(SwapOutRequest, Sender<Result<SwapOutReport, SwapError>>),
    In(Sender<Result<SwapInReport, SwapError>>),
}

/// Handle of the `vmm-swap` thread; dropping it ends the thread.
pub struct SwapWorker {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SwapWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapWorker").finish_non_exhaustive()
    }
}

/// The worker thread is gone (it could not install its filter, or it panicked).
fn gone() -> SwapError {
    SwapError::Busy(
        "vmm-swap thread that ended (see the log); restart the VM to use the in-VMM swap",
    )
}

impl SwapWorker {
    /// Starts the thread; it installs `filter` first. It holds guest RAM weakly, so it never
    /// keeps the mappings alive after the VM.
    pub fn start(ram: Weak<GuestRam>, filter: ThreadFilter) -> std::io::Result<SwapWorker> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vmm-swap".into())
            .spawn(move || {
                if filter.apply_or_log() {
                    serve(&ram, rx);
                }
            })?;
        Ok(SwapWorker {
            jobs: Mutex::new(Some(tx)),
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Swaps guest memory out (see [`GuestRam::swap_out`]); the caller pauses the guest.
    pub fn swap_out(&self, req: SwapOutRequest) -> Result<SwapOutReport, SwapError> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Job::Out(req, tx)) {
            return Err(gone());
        }
        rx.recv().unwrap_or_else(|_| Err(gone()))
    }

    /// Swaps guest memory back in (see [`GuestRam::swap_in`]).
    pub fn swap_in(&self) -> Result<SwapInReport, SwapError> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Job::In(tx)) {
            return Err(gone());
        }
        rx.recv().unwrap_or_else(|_| Err(gone()))
    }
}

fn serve(ram: &Weak<GuestRam>, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let Some(ram) = ram.upgrade() else { return };
        match job {
            Job::Out(req, reply) => {
                let _ = reply.send(ram.swap_out(&req));
            }
            Job::In(reply) => {
                let _ = reply.send(ram.swap_in());
            }
        }
    }
}

impl Drop for SwapWorker {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
