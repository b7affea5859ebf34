//! The in-process page-fault handler's handle: starts the `uffd-handler` thread (see
//! [`crate::server`]), hands out counter snapshots, and stops it through an eventfd.

use crate::server::Server;
use crate::stats::{SharedStats, UffdStats};
use crate::{HandlerConfig, RegionSpec, UffdError};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use userfaultfd::{IoctlFlags, Uffd};

/// Code the handler thread runs before it serves anything (e.g. installing a seccomp filter);
/// an error ends the thread at once.
pub type ThreadStart = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Handle of the running in-process handler. Dropping it stops the thread too.
pub struct UffdHandler {
    uffd: Option<Arc<Uffd>>,
    stop: Arc<EventFd>,
    fill: Arc<EventFd>,
    filled: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    thread: Option<JoinHandle<Result<(), UffdError>>>,
    stats: Arc<SharedStats>,
    regions: Vec<RegionSpec>,
}

impl std::fmt::Debug for UffdHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdHandler")
            .field("regions", &self.regions)
            .field("running", &self.is_running())
            .finish()
    }
}

impl UffdHandler {
    /// Cheap snapshot of the counters.
    pub fn stats(&self) -> UffdStats {
        self.stats.snapshot()
    }

    /// Serves every page whose source bytes were not used yet (for a swap source: every page
    /// still only in the swap file), on the handler thread between the faults it serves, and
    /// waits until that is done or `timeout` has passed. Pages the guest has discarded since
    /// are left alone. Returns [`UffdError::FillTimeout`] when it took longer, and the
    /// handler's error if it stopped.
    pub fn fill_all(&self, timeout: std::time::Duration) -> Result<(), UffdError> {
        let filled = self.filled.lock().unwrap_or_else(|e| e.into_inner());
        // Forget completions of earlier fills that timed out.
        while filled.try_recv().is_ok() {}
        self.fill.write(1).map_err(|errno| UffdError::Sys {
            what: "writing the fill eventfd",
            errno,
        })?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match filled.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(UffdError::HandlerPanicked)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !self.is_running() {
                return Err(UffdError::HandlerStopped);
            }
            if std::time::Instant::now() > deadline {
                return Err(UffdError::FillTimeout { waited: timeout });
            }
        }
    }

    /// The registered regions.
    pub fn regions(&self) -> &[RegionSpec] {
        &self.regions
    }

    /// Whether the handler thread is still serving. `false` after a fatal error (faulting
    /// threads then stay blocked: stop the guest and call [`UffdHandler::stop`] for the error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Unregisters the regions, which wakes threads blocked on a fault this handler can no
    /// longer serve (after a fatal error, [`UffdHandler::is_running`] false). Missing pages
    /// are then ordinary zero pages: call it only for a guest that is being stopped.
    pub fn release_faulters(&self) {
        if let Some(uffd) = &self.uffd {
            for r in &self.regions {
                if let Err(e) = uffd.unregister(r.host_addr as *mut libc::c_void, r.len) {
                    log::warn!(
                        "uffd: unregistering [{:#x}, +{:#x}): {e}",
                        r.host_addr,
                        r.len
                    );
                }
            }
        }
    }

    /// Stops and joins the handler thread, unregisters the regions, closes the userfaultfd and
    /// returns the final counters, or the error that stopped the thread.
    ///
    /// Stop the vCPUs first: once unregistered, a missing page is filled by the kernel as an
    /// ordinary zero page, not from the source.
    pub fn stop(mut self) -> Result<UffdStats, UffdError> {
        self.shutdown()?;
        Ok(self.stats.snapshot())
    }

    fn shutdown(&mut self) -> Result<(), UffdError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let signalled = self
            .stop
            .write(1)
            .map(drop)
            .map_err(|errno| UffdError::Sys {
                what: "writing the stop eventfd",
                errno,
            });
        let joined = match signalled {
            Ok(()) => thread.join().unwrap_or(Err(UffdError::HandlerPanicked)),
            // The thread cannot be woken; leave it detached rather than block forever.
            Err(e) => Err(e),
        };
        if let Some(uffd) = self.uffd.take() {
            for r in &self.regions {
                if let Err(e) = uffd.unregister(r.host_addr as *mut libc::c_void, r.len) {
                    // A range the caller already unmapped has nothing left to unregister.
                    log::warn!(
                        "uffd: unregistering [{:#x}, +{:#x}): {e}",
                        r.host_addr,
                        r.len
                    );
                }
            }
        }
        joined
    }
}

impl Drop for UffdHandler {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("uffd: handler stopped with an error: {e}");
        }
    }
}

/// Starts the handler thread on an already registered userfaultfd.
pub(crate) fn spawn(
    uffd: Uffd,
    regions: Vec<RegionSpec>,
    ioctls: Vec<IoctlFlags>,
    config: HandlerConfig,
    thread_start: Option<ThreadStart>,
) -> Result<UffdHandler, UffdError> {
    let eventfd = || {
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map(Arc::new)
            .map_err(|errno| UffdError::Sys {
                what: "eventfd",
                errno,
            })
    };
    let stop = eventfd()?;
    let fill = eventfd()?;
    let (filled_tx, filled) = std::sync::mpsc::channel();
    let uffd = Arc::new(uffd);
    let stats = Arc::new(SharedStats::default());
    let server = Server::new(
        uffd.clone(),
        stop.clone(),
        fill.clone(),
        filled_tx,
        stats.clone(),
        &regions,
        &ioctls,
        &config,
    )?;
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("uffd-handler".into())
        .spawn(move || {
            let start = thread_start.map_or(Ok(()), |f| f());
            let go = start.is_ok();
            let _ = started_tx.send(start);
            if go {
                server.run()
            } else {
                Ok(())
            }
        })
        .map_err(UffdError::Spawn)?;
    match started.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(UffdError::ThreadStart(e)),
        Err(_) => return Err(UffdError::HandlerPanicked),
    }
    Ok(UffdHandler {
        uffd: Some(uffd),
        stop,
        fill,
        filled: std::sync::Mutex::new(filled),
        thread: Some(thread),
        stats,
        regions,
    })
}
