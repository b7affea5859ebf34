//! The host-wide overcommit report (`memvisor report overcommit --all`): every VM registered in
//! the runtime directory is asked for its figures over its API socket, in parallel, and the
//! answers are put together with the host's own ([`HostReport::build`]).

use crate::report::overcommit::{HostMemory, HostReport, HostSwap, VmEntry, VmMemory};
use crate::report::registry::{EntryState, RegistryError, RuntimeDir};

/// Reads the runtime directory and asks every live VM for its figures over its API socket.
pub fn collect(dir: &RuntimeDir) -> Result<HostReport, RegistryError> {
    let entries = dir.entries()?;
    // Asked in parallel: each VM walks its page map to answer.
    let vms = std::thread::scope(|scope| {
        let asks: Vec<_> = entries
            .iter()
            .map(|e| {
                scope.spawn(move || {
                    let (pid, api_sock) = match &e.record {
                        Some(r) => (r.pid, r.api_sock.clone()),
                        None => (0, e.file.clone()),
                    };
                    let (memory, skipped) = match &e.state {
                        EntryState::Stale { reason } => (None, Some(format!("stale: {reason}"))),
                        EntryState::Live => match fetch(&api_sock) {
                            Ok(m) => (Some(m), None),
                            Err(why) => (None, Some(why)),
                        },
                    };
                    VmEntry {
                        pid,
                        api_sock,
                        memory,
                        skipped,
                    }
                })
            })
            .collect();
        asks.into_iter()
            .map(|h| h.join().expect("report thread"))
            .collect::<Vec<_>>()
    });
    let mut report = HostReport::build(
        dir.path().to_path_buf(),
        HostMemory::read().unwrap_or_default(),
        hugepages::host_status().ok(),
        ksm::Ksm::system().counters().ok(),
        vms,
    );
    report.swap = HostSwap::read();
    Ok(report)
}

/// Asks the VM behind `sock` for its figures.
fn fetch(sock: &std::path::Path) -> Result<VmMemory, String> {
    let (status, body) = super::api::client::request_with_timeout(
        sock,
        "GET",
        "/memory/report",
        None,
        std::time::Duration::from_secs(15),
    )
    .map_err(|e| format!("no answer: {e}"))?;
    if status != 200 {
        return Err(format!("GET /memory/report answered {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("unexpected answer: {e}"))
}
