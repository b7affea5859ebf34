//! The controller's I/O: sampling the host and the registered VMs, and applying decisions
//! through the VMs' API sockets.

use super::{Decision, GuestSample, HostSample, Sample, MIB};

/// KSM counts base pages.
const PAGE: u64 = 4096;

/// Reads `/proc/pressure/memory` `some avg10`.
pub fn read_psi() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/memory").ok()?;
    parse_psi(&text)
}

/// Parses the `some avg10=` field of a PSI file.
pub fn parse_psi(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Samples one guest through its API socket: its balloon (if any) and resident guest RAM.
pub fn sample_guest(
    sock: &std::path::Path,
    configured: u64,
    now: std::time::SystemTime,
) -> Result<GuestSample, String> {
    use crate::control::api::client::request_with_timeout;
    let timeout = std::time::Duration::from_secs(3);
    // Resident guest RAM: what the swap lever could take.
    let resident = match request_with_timeout(sock, "GET", "/memory/reclaim", None, timeout) {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["resident_bytes"].as_u64()),
        _ => None,
    };
    // memvisor's own view of the balloon: sizes, and when the guest's statistics arrived.
    let (status, body) = request_with_timeout(sock, "GET", "/balloon/device", None, timeout)
        .map_err(|e| e.to_string())?;
    if status == 400 && body.contains("no balloon") {
        return Ok(GuestSample::without_balloon(
            sock.display().to_string(),
            configured,
            resident,
        ));
    }
    if status != 200 {
        return Err(format!("GET /balloon/device answered {status}: {body}"));
    }
    let device: crate::control::api::BalloonDeviceInfo = serde_json::from_str(&body)
        .map_err(|e| format!("GET /balloon/device: unexpected answer: {e}"))?;
    let target = u64::from(device.target_pages) * 4096;
    let actual = u64::from(device.actual_pages) * 4096;
    let actual_at_stats = device.actual_pages_at_stats.map(|p| u64::from(p) * 4096);
    let stats_age = device.stats_age_s(now);
    // Firecracker's statistics (400 when the balloon polls none).
    let mut free = None;
    if let Ok((200, body)) = request_with_timeout(sock, "GET", "/balloon/statistics", None, timeout)
    {
        if let Ok(s) = serde_json::from_str::<crate::control::api::BalloonStatistics>(&body) {
            free = s.guest.available_memory.or(s.guest.free_memory);
        }
    }
    Ok(GuestSample {
        name: sock.display().to_string(),
        configured,
        target,
        actual,
        free,
        actual_at_stats,
        stats_age,
        balloon: true,
        resident,
        ksm_merging: None,
    })
}

/// Samples the host and every live registered VM; notes for the ones skipped.
pub fn sample(dir: &crate::report::registry::RuntimeDir, t: f64) -> (Sample, Vec<String>) {
    let mut notes = Vec::new();
    let host = crate::report::overcommit::HostMemory::read().unwrap_or_default();
    let mut guests = Vec::new();
    let now = std::time::SystemTime::now();
    match dir.entries() {
        Ok(entries) => {
            for e in entries {
                let Some(r) = e.record else { continue };
                if e.state != crate::report::registry::EntryState::Live {
                    continue;
                }
                match sample_guest(&r.api_sock, r.configured_bytes, now) {
                    Ok(mut g) => {
                        // What KSM merged of it: the fleet's budget counts the savings.
                        g.ksm_merging = ksm::process_stats(r.pid)
                            .ok()
                            .map(|k| k.merging_pages * PAGE);
                        guests.push(g)
                    }
                    Err(why) => notes.push(format!("{}: skipped: {why}", r.api_sock.display())),
                }
            }
        }
        Err(e) => notes.push(e.to_string()),
    }
    (
        Sample {
            t,
            host: HostSample {
                mem_available: host.mem_available,
                mem_total: host.mem_total,
                psi_some_avg10: read_psi(),
                swap_active: crate::host::swap::active().is_ok_and(|d| !d.is_empty()),
                ksm_sharing: ksm::Ksm::system()
                    .counters()
                    .ok()
                    .map(|k| k.pages_sharing * PAGE),
            },
            guests,
        },
        notes,
    )
}

/// Applies a decision through the guest's API: `PATCH /balloon` for a target, `PUT
/// /memory/reclaim` (waited for: it returns when the memory is paged out) for a reclaim.
pub fn apply(d: &Decision) -> Result<(), String> {
    let (guest, method, path, body) = match d {
        Decision::SetTarget { guest, to, .. } => (
            guest,
            "PATCH",
            "/balloon",
            format!("{{\"amount_mib\": {}}}", to / MIB),
        ),
        Decision::Reclaim { guest, to, .. } => (
            guest,
            "PUT",
            "/memory/reclaim",
            format!("{{\"target_resident_mib\": {}}}", to / MIB),
        ),
        Decision::Note { .. } => return Ok(()),
    };
    let (status, text) = crate::control::api::client::request_with_timeout(
        std::path::Path::new(guest),
        method,
        path,
        Some(&body),
        std::time::Duration::from_secs(120),
    )
    .map_err(|e| e.to_string())?;
    if status / 100 != 2 {
        return Err(format!("{method} {path} answered {status}: {text}"));
    }
    Ok(())
}
