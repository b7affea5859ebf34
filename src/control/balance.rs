//! The balloon controller behind `memvisor balance`: keeps the host's free-memory floor by
//! moving the balloon targets of the VMs registered in the runtime directory.
//!
//! This module owns the policy ([`Controller::decide`], a pure function of what it is given,
//! so it is tested on recorded inputs) and the loop that samples the host and the guests and
//! applies decisions ([`run`]).
//!
//! The policy, in order:
//! 1. A guest whose balloon has not moved towards its target for
//!    [`Policy::unresponsive_after`] is **unresponsive**: the controller no longer takes
//!    memory from it nor counts on what it still owes, and says so once. A guest whose
//!    statistics are older than [`Policy::stale_after`] is not taken from either (its free
//!    memory is unknown). Both recover when the guest moves / reports again.
//! 2. **Pressure** is `MemAvailable` below `min_host_free`, or memory PSI `some avg10` above
//!    [`Policy::psi_limit`]. Under pressure the controller aims for `min_host_free +
//!    release_margin / 2`: it subtracts what responsive guests still owe (target above actual),
//!    then inflates guests **with the most free memory first**, each by at most `max_step`,
//!    never below the guest's `guest_floor` of RAM and never into its last `headroom` of free
//!    memory. A guest's free memory is its statistics' figure corrected for what its balloon
//!    moved since they arrived and still owes ([`GuestSample::free_after_balloon`]): the
//!    statistics lag the balloon.
//! 3. When `MemAvailable` is above `min_host_free + release_margin` (and no PSI pressure) the
//!    controller **gives back to the guests that need it**: those whose free memory (from fresh
//!    statistics) has fallen below their `headroom`, the least free first, each by at most
//!    `max_step`, until the surplus above `min_host_free + release_margin / 2` is spent. A guest
//!    with free memory to spare keeps its balloon even when the host has plenty: a deflated page
//!    costs the host nothing at once, but lets the guest grow back past the budget later, and
//!    deflating everyone whenever the host looks free undoes the controller's work in seconds
//!    (it did, in the full-size fleet run, before this rule).
//! 4. Between the two, it holds (hysteresis), so targets do not oscillate.
//! 5. **The swap lever**: when, under pressure, the balloons leave memory missing (a guest has
//!    no balloon, is unresponsive, has no fresh statistics, or is at its floor or headroom),
//!    and host swap is active ([`HostSample::swap_active`]) and the lever is on
//!    ([`Policy::swap`]), the controller reclaims the coldest memory of those guests to host
//!    swap (`PUT /memory/reclaim`, [`Decision::Reclaim`]): the largest resident first, each by
//!    at most `max_step`, never below `guest_floor` resident. The balloon comes first because
//!    a guest gives what it does not need, while reclaimed memory the guest touches again
//!    costs a host major fault; KSM is passive and not a lever. Without host swap the
//!    shortfall note says how to set it up.
//!
//! Every change and every refusal is a [`Decision`] with its reason, which names the lever.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

const MIB: u64 = 1 << 20;

/// The controller's knobs (bytes and seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The host's free-memory floor (`MemAvailable`).
    pub min_host_free: u64,
    /// Width of the band above the floor where nothing moves; memory is given back above it.
    pub release_margin: u64,
    /// RAM no guest is ballooned below (configured minus balloon target).
    pub guest_floor: u64,
    /// Free memory left to each guest when taking from it; a guest with less free memory than
    /// this is short and gets memory back when the host can spare it.
    pub headroom: u64,
    /// Largest change of one guest's target per decision.
    pub max_step: u64,
    /// Memory PSI `some avg10` (percent) counted as pressure; `None` ignores PSI.
    pub psi_limit: Option<f64>,
    /// Statistics older than this (seconds) make a guest's free memory unknown.
    pub stale_after: f64,
    /// A guest whose balloon has not moved towards its target for this long (seconds) is
    /// unresponsive.
    pub unresponsive_after: f64,
    /// Whether the swap lever may reclaim guest memory to host swap (`--no-swap`: off).
    pub swap: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_host_free: 2 << 30,
            release_margin: 1 << 30,
            guest_floor: 256 * MIB,
            headroom: 64 * MIB,
            max_step: 256 * MIB,
            psi_limit: Some(10.0),
            stale_after: 10.0,
            unresponsive_after: 15.0,
            swap: true,
        }
    }
}

/// The host at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// `MemAvailable` in bytes.
    pub mem_available: u64,
    /// `MemTotal` in bytes.
    pub mem_total: u64,
    /// `/proc/pressure/memory` `some avg10`, when the kernel has PSI.
    pub psi_some_avg10: Option<f64>,
    /// Whether host swap is active (`/proc/swaps` lists a device): the swap lever needs it.
    #[serde(default)]
    pub swap_active: bool,
}

/// One guest at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestSample {
    /// Stable name (the API socket).
    pub name: String,
    /// Configured guest RAM.
    pub configured: u64,
    /// Balloon target.
    pub target: u64,
    /// Balloon actual (what the guest has given).
    pub actual: u64,
    /// The guest's free memory from its latest statistics (available, else free).
    pub free: Option<u64>,
    /// Balloon actual when those statistics arrived (`None`: unknown, taken as `actual`).
    #[serde(default)]
    pub actual_at_stats: Option<u64>,
    /// Age of those statistics in seconds.
    pub stats_age: Option<f64>,
    /// Whether the guest has a balloon (without one, only the swap lever can take from it).
    #[serde(default = "yes")]
    pub balloon: bool,
    /// Resident guest RAM (`GET /memory/reclaim`), when known: what the swap lever can take.
    #[serde(default)]
    pub resident: Option<u64>,
}

fn yes() -> bool {
    true
}

impl GuestSample {
    /// A guest without a balloon (only the swap lever can take from it).
    pub fn without_balloon(name: String, configured: u64, resident: Option<u64>) -> Self {
        GuestSample {
            name,
            configured,
            target: 0,
            actual: 0,
            free: None,
            actual_at_stats: None,
            stats_age: None,
            balloon: false,
            resident,
        }
    }

    /// The guest's free memory once its balloon has reached its target, as far as the controller
    /// can tell: the statistics' figure, minus what the balloon took since they were sent (plus
    /// what it gave back), minus what it still owes (target above actual), which also comes
    /// out of free memory. Statistics lag the balloon (they arrive every polling interval, and
    /// the driver moves pages in between), so without this a controller that inflates keeps
    /// seeing memory the balloon already took and presses the guest into its data.
    pub fn free_after_balloon(&self) -> Option<u64> {
        let free = self.free?;
        let at_stats = self.actual_at_stats.unwrap_or(self.actual);
        Some((free + at_stats).saturating_sub(self.target.max(self.actual)))
    }
}

/// One tick's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the controller started.
    pub t: f64,
    /// The host.
    pub host: HostSample,
    /// The guests with a balloon.
    pub guests: Vec<GuestSample>,
}

/// What the controller decided about one guest.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Change the balloon target.
    SetTarget {
        /// The guest.
        guest: String,
        /// Old target.
        from: u64,
        /// New target.
        to: u64,
        /// Why.
        reason: String,
    },
    /// Reclaim the guest's coldest memory to host swap (`PUT /memory/reclaim`): the swap lever.
    Reclaim {
        /// The guest.
        guest: String,
        /// Resident guest RAM before.
        from: u64,
        /// Resident guest RAM to reclaim to.
        to: u64,
        /// Why.
        reason: String,
    },
    /// A guest was noticed (unresponsive, back, stale, ...) without a change.
    Note {
        /// The guest.
        guest: String,
        /// What.
        reason: String,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::SetTarget {
                guest,
                from,
                to,
                reason,
            } => {
                let verb = if to > from { "inflate" } else { "deflate" };
                write!(
                    f,
                    "{verb} {guest}: balloon {} -> {} MiB ({reason})",
                    from / MIB,
                    to / MIB
                )
            }
            Decision::Reclaim {
                guest,
                from,
                to,
                reason,
            } => write!(
                f,
                "reclaim {guest}: resident {} -> {} MiB to host swap ({reason})",
                from / MIB,
                to / MIB
            ),
            Decision::Note { guest, reason } => write!(f, "{guest}: {reason}"),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Track {
    /// Last actual seen, and since when.
    actual: u64,
    since: f64,
    unresponsive: bool,
    stale: bool,
}

/// The controller: the policy and what it remembers between ticks.
#[derive(Debug, Default)]
pub struct Controller {
    /// The knobs.
    pub policy: Policy,
    tracks: HashMap<String, Track>,
    short: bool,
}

fn mib_down(b: u64) -> u64 {
    b / MIB * MIB
}

impl Controller {
    /// A controller with `policy`.
    pub fn new(policy: Policy) -> Self {
        Controller {
            policy,
            tracks: HashMap::new(),
            short: false,
        }
    }

    /// Whether the controller currently counts `guest` as unresponsive.
    pub fn is_unresponsive(&self, guest: &str) -> bool {
        self.tracks.get(guest).is_some_and(|t| t.unresponsive)
    }

    /// Decides the targets for one sample. Targets are whole MiB.
    pub fn decide(&mut self, s: &Sample) -> Vec<Decision> {
        let p = self.policy.clone();
        let mut out = Vec::new();
        self.tracks
            .retain(|name, _| s.guests.iter().any(|g| &g.name == name));
        // 1. Responsiveness and freshness (of balloons: a guest without one has none to watch).
        for g in s.guests.iter().filter(|g| g.balloon) {
            let tr = self.tracks.entry(g.name.clone()).or_insert(Track {
                actual: g.actual,
                since: s.t,
                ..Track::default()
            });
            if g.actual != tr.actual || g.actual == g.target {
                tr.actual = g.actual;
                tr.since = s.t;
                if tr.unresponsive {
                    tr.unresponsive = false;
                    out.push(Decision::Note {
                        guest: g.name.clone(),
                        reason: "balloon moves again; counted on again".into(),
                    });
                }
            } else if !tr.unresponsive && s.t - tr.since >= p.unresponsive_after {
                tr.unresponsive = true;
                out.push(Decision::Note {
                    guest: g.name.clone(),
                    reason: format!(
                        "unresponsive: balloon stuck at {} MiB for {:.0} s (target {} MiB); not counting on it",
                        g.actual / MIB,
                        s.t - tr.since,
                        g.target / MIB
                    ),
                });
            }
            let stale = g.stats_age.is_none_or(|a| a > p.stale_after);
            if stale != tr.stale {
                tr.stale = stale;
                out.push(Decision::Note {
                    guest: g.name.clone(),
                    reason: if stale {
                        "no fresh statistics: its free memory is unknown, not taking from it".into()
                    } else {
                        "statistics fresh again".into()
                    },
                });
            }
        }
        let usable = |g: &GuestSample, tracks: &HashMap<String, Track>| {
            g.balloon
                && tracks
                    .get(&g.name)
                    .is_some_and(|t| !t.unresponsive && !t.stale)
        };
        let avail = s.host.mem_available;
        let psi_pressure =
            matches!((s.host.psi_some_avg10, p.psi_limit), (Some(v), Some(l)) if v > l);
        let aim = p.min_host_free + p.release_margin / 2;
        if avail < p.min_host_free || psi_pressure {
            // 2. Take.
            let owed: u64 = s
                .guests
                .iter()
                .filter(|g| usable(g, &self.tracks))
                .map(|g| g.target.saturating_sub(g.actual))
                .sum();
            let mut deficit =
                if avail < aim { aim - avail } else { p.max_step }.saturating_sub(owed);
            let why = if avail < p.min_host_free {
                format!(
                    "host MemAvailable {} MiB below the {} MiB floor",
                    avail / MIB,
                    p.min_host_free / MIB
                )
            } else {
                format!(
                    "host memory pressure: PSI some avg10 {:.1}% above {:.1}%",
                    s.host.psi_some_avg10.unwrap_or(0.0),
                    p.psi_limit.unwrap_or(0.0)
                )
            };
            let mut order: Vec<&GuestSample> = s
                .guests
                .iter()
                .filter(|g| usable(g, &self.tracks))
                .collect();
            order.sort_by_key(|g| std::cmp::Reverse(g.free_after_balloon().unwrap_or(0)));
            let mut ballooned: Vec<&str> = Vec::new();
            for g in order {
                if deficit == 0 {
                    break;
                }
                let free = g.free_after_balloon().unwrap_or(0);
                let spare_free = free.saturating_sub(p.headroom);
                let above_floor = g
                    .configured
                    .saturating_sub(g.target)
                    .saturating_sub(p.guest_floor);
                let take = mib_down(
                    spare_free
                        .min(above_floor)
                        .min(p.max_step)
                        .min(deficit.next_multiple_of(MIB)),
                );
                if take == 0 {
                    continue;
                }
                deficit = deficit.saturating_sub(take);
                ballooned.push(&g.name);
                out.push(Decision::SetTarget {
                    guest: g.name.clone(),
                    from: g.target,
                    to: g.target + take,
                    reason: format!(
                        "{why}; it has {} MiB free (with its balloon at {} MiB), the most of the guests left",
                        free / MIB,
                        g.target.max(g.actual) / MIB
                    ),
                });
            }
            // 5. The swap lever, for what the balloons leave missing.
            if deficit > 0 && p.swap && s.host.swap_active {
                deficit = self.reclaim(s, deficit, &ballooned, &why, &mut out);
            }
            // Said once when it starts, not every tick.
            if deficit > 0 && !self.short {
                let swap = if !p.swap {
                    "; the swap lever is off (--no-swap)"
                } else if !s.host.swap_active {
                    "; host swap is off, so nothing is reclaimed to it (set it up with memvisor \
                     swap zram SIZE to let the controller reclaim cold guest memory)"
                } else {
                    ""
                };
                out.push(Decision::Note {
                    guest: "*".into(),
                    reason: format!(
                        "{} MiB still missing: every guest is at its floor, headroom or unresponsive{swap}",
                        deficit.div_ceil(MIB)
                    ),
                });
            }
            self.short = deficit > 0;
        } else if avail > p.min_host_free + p.release_margin {
            self.short = false;
            // 3. Give back.
            let mut surplus = avail - aim;
            let mut order: Vec<&GuestSample> = s
                .guests
                .iter()
                .filter(|g| g.target > 0 && usable(g, &self.tracks))
                .filter(|g| g.free_after_balloon().is_some_and(|f| f < p.headroom))
                .collect();
            order.sort_by_key(|g| g.free_after_balloon().unwrap_or(0));
            for g in order {
                if surplus < MIB {
                    break;
                }
                let give = mib_down(g.target.min(p.max_step).min(surplus));
                if give == 0 {
                    continue;
                }
                surplus -= give;
                out.push(Decision::SetTarget {
                    guest: g.name.clone(),
                    from: g.target,
                    to: g.target - give,
                    reason: format!(
                        "host MemAvailable {} MiB is above {} MiB; it has {} MiB free, under its {} MiB headroom, the least of the guests short of memory",
                        avail / MIB,
                        (p.min_host_free + p.release_margin) / MIB,
                        g.free_after_balloon().unwrap_or(0) / MIB,
                        p.headroom / MIB
                    ),
                });
            }
        } else {
            // 4. Hold.
            self.short = false;
        }
        out
    }
}

impl Controller {
    /// The swap lever: reclaims guests the balloon did not take from this tick, the largest
    /// resident first; answers what is still missing.
    fn reclaim(
        &self,
        s: &Sample,
        mut deficit: u64,
        ballooned: &[&str],
        why: &str,
        out: &mut Vec<Decision>,
    ) -> u64 {
        let p = &self.policy;
        let mut order: Vec<(&GuestSample, u64)> = s
            .guests
            .iter()
            .filter(|g| !ballooned.contains(&g.name.as_str()))
            .filter_map(|g| Some((g, g.resident?)))
            .collect();
        order.sort_by_key(|(_, r)| std::cmp::Reverse(*r));
        for (g, resident) in order {
            if deficit == 0 {
                break;
            }
            let take = mib_down(
                resident
                    .saturating_sub(p.guest_floor)
                    .min(p.max_step)
                    .min(deficit.next_multiple_of(MIB)),
            );
            if take == 0 {
                continue;
            }
            deficit = deficit.saturating_sub(take);
            let balloon = if !g.balloon {
                "it has no balloon".to_string()
            } else if self.is_unresponsive(&g.name) {
                "its balloon is unresponsive".to_string()
            } else if self.tracks.get(&g.name).is_some_and(|t| t.stale) {
                "its free memory is unknown (no fresh statistics)".to_string()
            } else {
                format!(
                    "its balloon can give no more ({} MiB free, at its floor or headroom)",
                    g.free_after_balloon().unwrap_or(0) / MIB
                )
            };
            out.push(Decision::Reclaim {
                guest: g.name.clone(),
                from: resident,
                to: resident - take,
                reason: format!(
                    "{why}; {balloon}: swap lever, its coldest memory to host swap, the largest \
                     resident of the guests left"
                ),
            });
        }
        deficit
    }
}

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
                    Ok(g) => guests.push(g),
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

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn guest(name: &str, target: u64, actual: u64, free: u64) -> GuestSample {
        GuestSample {
            name: name.into(),
            configured: 4 * G,
            target,
            actual,
            free: Some(free),
            // Statistics sent with the balloon where it is now.
            actual_at_stats: Some(actual),
            stats_age: Some(1.0),
            balloon: true,
            resident: None,
        }
    }

    /// A guest without a balloon, `resident` bytes of its RAM resident.
    fn no_balloon(name: &str, resident: u64) -> GuestSample {
        GuestSample::without_balloon(name.into(), 4 * G, Some(resident))
    }

    /// `(guest, to MiB, reason)` of the reclaim decisions.
    fn reclaims(d: &[Decision]) -> Vec<(String, u64, String)> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Reclaim { guest, to, .. } => {
                    Some((guest.clone(), *to / MIB, d.to_string()))
                }
                _ => None,
            })
            .collect()
    }

    fn sample(t: f64, avail: u64, guests: Vec<GuestSample>) -> Sample {
        Sample {
            t,
            host: HostSample {
                mem_available: avail,
                mem_total: 24 * G,
                psi_some_avg10: Some(0.0),
                swap_active: false,
            },
            guests,
        }
    }

    fn with_swap(mut s: Sample) -> Sample {
        s.host.swap_active = true;
        s
    }

    fn targets(d: &[Decision]) -> Vec<(String, u64)> {
        d.iter()
            .filter_map(|d| match d {
                Decision::SetTarget { guest, to, .. } => Some((guest.clone(), *to / MIB)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn takes_from_the_guest_with_most_free_first_in_steps() {
        let mut c = Controller::new(Policy::default());
        // 1.5 GiB available, floor 2 GiB, aim 2.5 GiB: 1 GiB missing.
        let d = c.decide(&sample(
            0.0,
            3 * G / 2,
            vec![
                guest("a", 0, 0, G),
                guest("b", 0, 0, 3 * G),
                guest("c", 0, 0, 2 * G),
            ],
        ));
        // 256 MiB steps: b, c, a, then ... only 3 guests: 768 MiB this tick.
        assert_eq!(
            targets(&d),
            vec![("b".into(), 256), ("c".into(), 256), ("a".into(), 256)]
        );
        assert!(d
            .iter()
            .any(|d| matches!(d, Decision::Note { guest, .. } if guest == "*")));
        assert!(
            d[0].to_string().contains("below the 2048 MiB floor"),
            "{}",
            d[0]
        );
    }

    #[test]
    fn counts_what_guests_still_owe_and_holds_in_the_band() {
        let mut c = Controller::new(Policy::default());
        // 1 GiB missing, 1 GiB already owed by b (target 1 GiB, actual 0): nothing new.
        let d = c.decide(&sample(
            0.0,
            3 * G / 2,
            vec![guest("a", 0, 0, G), guest("b", G, 0, 3 * G)],
        ));
        assert_eq!(targets(&d), vec![]);
        // In the band (floor 2 GiB .. 3 GiB): hold.
        let d = c.decide(&sample(1.0, 5 * G / 2, vec![guest("a", G, G, G)]));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn never_below_floor_or_into_headroom() {
        let p = Policy::default();
        let mut c = Controller::new(p.clone());
        let mut g = guest("a", 0, 0, 100 * MIB);
        let d = c.decide(&sample(0.0, G, vec![g.clone()]));
        // 100 MiB free - 64 MiB headroom = 36 MiB.
        assert_eq!(targets(&d), vec![("a".into(), 36)]);
        // A guest with lots free but little RAM above its floor.
        g.configured = p.guest_floor + 10 * MIB;
        g.free = Some(G);
        let d = c.decide(&sample(1.0, G, vec![g]));
        assert_eq!(targets(&d), vec![("a".into(), 10)]);
    }

    #[test]
    fn free_memory_counts_what_the_balloon_moved_since_the_statistics() {
        let mut c = Controller::new(Policy::default());
        // The guest reported 300 MiB free with an empty balloon; the balloon has taken 100 MiB
        // since. It has 200 MiB free, so 136 MiB can go (64 MiB headroom), not 236.
        let mut g = guest("a", 100 * MIB, 100 * MIB, 300 * MIB);
        g.actual_at_stats = Some(0);
        assert_eq!(g.free_after_balloon(), Some(200 * MIB));
        let d = c.decide(&sample(0.0, G, vec![g.clone()]));
        assert_eq!(targets(&d), vec![("a".into(), 236)]);
        assert!(d[0].to_string().contains("200 MiB free"), "{}", d[0]);
        // What it still owes comes out of its free memory too: target 200, 50 given so far.
        g.target = 200 * MIB;
        g.actual = 50 * MIB;
        assert_eq!(g.free_after_balloon(), Some(100 * MIB));
        let d = c.decide(&sample(1.0, G, vec![g.clone()]));
        assert_eq!(targets(&d), vec![("a".into(), 236)]);
        // Deflated since: the pages it got back are free again (target 0, actual 20 of 50).
        g.target = 0;
        g.actual = 20 * MIB;
        g.actual_at_stats = Some(50 * MIB);
        assert_eq!(g.free_after_balloon(), Some(330 * MIB));
        // Without the balloon's size at the statistics (older records), actual is assumed.
        g.actual_at_stats = None;
        assert_eq!(g.free_after_balloon(), Some(300 * MIB));
    }

    /// A guest whose balloon moves 16 MiB per tick and whose statistics are one tick old, under
    /// a host that stays short (its memory was never resident, so ballooning does not raise
    /// `MemAvailable`): the controller takes until the guest is at its headroom, not beyond.
    /// Taking `free - headroom` from the lagging statistics alone pressed it into its data.
    #[test]
    fn lagging_statistics_do_not_press_a_guest_into_its_data() {
        let p = Policy {
            max_step: 32 * MIB,
            ..Policy::default()
        };
        let mut c = Controller::new(p.clone());
        let used = 212 * MIB; // the guest's own data; 300 MiB free with an empty balloon
        let configured = 512 * MIB;
        let (mut target, mut actual) = (0u64, 0u64);
        let mut stats = (configured - used, 0u64); // (free, actual when sent)
        let mut lowest_free = u64::MAX;
        for tick in 0..60 {
            let g = GuestSample {
                name: "a".into(),
                configured,
                target,
                actual,
                free: Some(stats.0),
                actual_at_stats: Some(stats.1),
                stats_age: Some(1.0),
                balloon: true,
                resident: None,
            };
            for d in c.decide(&sample(tick as f64, G, vec![g])) {
                if let Decision::SetTarget { to, .. } = d {
                    target = to;
                }
            }
            // The statistics the guest sends now describe the balloon before this tick's move.
            stats = (configured - used - actual, actual);
            actual = if target > actual {
                (actual + 16 * MIB).min(target)
            } else {
                target
            };
            lowest_free = lowest_free.min(configured - used - actual);
        }
        assert_eq!(actual, target, "the balloon settled");
        assert_eq!(
            lowest_free,
            p.headroom,
            "the guest keeps exactly its headroom (balloon {} MiB)",
            target / MIB
        );
    }

    #[test]
    fn gives_back_only_to_guests_short_of_memory_the_neediest_first() {
        let mut c = Controller::new(Policy::default());
        let mut unknown = guest("unknown", G, G, 0);
        unknown.free = None;
        // 4 GiB available: above floor + margin (3 GiB); surplus over aim 2.5 GiB = 1.5 GiB.
        // Only guests under their 64 MiB headroom get memory back, the least free first, one
        // step each; a guest with memory to spare (even 100 MiB) or of unknown free memory
        // keeps its balloon.
        let d = c.decide(&sample(
            0.0,
            4 * G,
            vec![
                guest("rich", G, G, 2 * G),
                guest("fine", G, G, 100 * MIB),
                guest("low", G, G, 40 * MIB),
                guest("lowest", G, G, 10 * MIB),
                unknown,
            ],
        ));
        assert_eq!(
            targets(&d),
            vec![("lowest".into(), 768), ("low".into(), 768)]
        );
        assert!(
            d[0].to_string().contains("under its 64 MiB headroom"),
            "{}",
            d[0]
        );
        // Plenty of surplus but nobody short: nothing moves.
        let d = c.decide(&sample(
            1.0,
            20 * G,
            vec![guest("rich", G, G, 2 * G), guest("fine", G, G, 100 * MIB)],
        ));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn stuck_balloon_makes_a_guest_unresponsive_until_it_moves() {
        let mut c = Controller::new(Policy::default());
        let stuck = |t| {
            sample(
                t,
                3 * G / 2,
                vec![guest("a", G, 0, 3 * G), guest("b", 0, 0, G)],
            )
        };
        // At first a's 1 GiB owed covers the deficit.
        assert_eq!(targets(&c.decide(&stuck(0.0))), vec![]);
        assert_eq!(targets(&c.decide(&stuck(10.0))), vec![]);
        // After 15 s without movement a no longer counts: b is asked instead.
        let d = c.decide(&stuck(16.0));
        assert!(c.is_unresponsive("a"));
        assert!(
            d.iter().any(|d| d.to_string().contains("unresponsive")),
            "{d:?}"
        );
        assert_eq!(targets(&d), vec![("b".into(), 256)]);
        // It moves: counted on again.
        let d = c.decide(&sample(
            17.0,
            3 * G / 2,
            vec![guest("a", G, 512 * MIB, 3 * G)],
        ));
        assert!(!c.is_unresponsive("a"));
        assert!(d.iter().any(|d| d.to_string().contains("moves again")));
    }

    #[test]
    fn stale_statistics_and_psi() {
        let mut c = Controller::new(Policy::default());
        let mut g = guest("a", 0, 0, 2 * G);
        g.stats_age = Some(60.0);
        let d = c.decide(&sample(0.0, G, vec![g.clone()]));
        assert_eq!(targets(&d), vec![]);
        assert!(d[0].to_string().contains("no fresh statistics"));
        // PSI pressure with plenty available: one step.
        g.stats_age = Some(1.0);
        let mut s = sample(1.0, 5 * G / 2, vec![g]);
        s.host.psi_some_avg10 = Some(25.0);
        let d = c.decide(&s);
        assert_eq!(targets(&d), vec![("a".into(), 256)]);
        assert!(d.iter().any(|d| d.to_string().contains("PSI")));
    }

    #[test]
    fn balloon_first_then_the_swap_lever_for_a_balloonless_guest() {
        let mut c = Controller::new(Policy {
            max_step: G,
            ..Policy::default()
        });
        // 612 MiB missing (MemAvailable 1948 MiB, aim 2560): b's balloon covers it, nothing
        // is reclaimed.
        let d = c.decide(&with_swap(sample(
            0.0,
            1948 * MIB,
            vec![guest("b", 0, 0, 3 * G), no_balloon("n", 2 * G)],
        )));
        assert_eq!(targets(&d), vec![("b".into(), 612)]);
        assert!(reclaims(&d).is_empty(), "{d:?}");
        assert!(
            !d.iter().any(|d| d.to_string().contains("n:")),
            "a guest without a balloon has no statistics to note: {d:?}"
        );
        // 1 GiB missing, b can give 300 MiB (364 free, 64 headroom): the balloon first, then
        // the other 724 MiB from n's coldest memory to host swap.
        let d = c.decide(&with_swap(sample(
            1.0,
            3 * G / 2,
            vec![guest("b", 0, 0, 364 * MIB), no_balloon("n", 2 * G)],
        )));
        assert_eq!(targets(&d), vec![("b".into(), 300)]);
        let r = reclaims(&d);
        assert_eq!(r.len(), 1, "{d:?}");
        assert_eq!((r[0].0.as_str(), r[0].1), ("n", 2048 - 724));
        assert!(
            r[0].2.contains("no balloon") && r[0].2.contains("swap lever"),
            "{}",
            r[0].2
        );
        let balloon_at = d
            .iter()
            .position(|d| matches!(d, Decision::SetTarget { .. }));
        let reclaim_at = d.iter().position(|d| matches!(d, Decision::Reclaim { .. }));
        assert!(balloon_at < reclaim_at, "the balloon is asked first: {d:?}");
        assert!(
            d.iter().any(|d| d.to_string().contains("inflate b")),
            "the balloon decision names its lever: {d:?}"
        );
    }

    #[test]
    fn no_reclaim_without_host_swap_or_with_the_lever_off() {
        let guests = || vec![no_balloon("n", 2 * G)];
        let mut c = Controller::new(Policy::default());
        let d = c.decide(&sample(0.0, G, guests()));
        assert!(reclaims(&d).is_empty(), "{d:?}");
        let note = d.iter().map(|d| d.to_string()).collect::<String>();
        assert!(note.contains("host swap is off"), "{note}");
        assert!(note.contains("memvisor swap zram"), "{note}");
        let mut c = Controller::new(Policy {
            swap: false,
            ..Policy::default()
        });
        let d = c.decide(&with_swap(sample(0.0, G, guests())));
        assert!(reclaims(&d).is_empty(), "{d:?}");
        assert!(
            d.iter().any(|d| d.to_string().contains("--no-swap")),
            "{d:?}"
        );
        // Unknown resident size: nothing to reclaim to.
        let mut c = Controller::new(Policy::default());
        let mut n = no_balloon("n", 0);
        n.resident = None;
        assert!(reclaims(&c.decide(&with_swap(sample(0.0, G, vec![n])))).is_empty());
    }

    #[test]
    fn the_swap_lever_takes_guests_at_their_headroom_or_unresponsive_never_below_the_floor() {
        let p = Policy::default();
        let mut c = Controller::new(p.clone());
        // At its headroom (60 MiB free): the balloon can give nothing, reclaim takes 256 MiB of
        // its 1 GiB resident; a balloon-less guest 40 MiB above the floor gives just those.
        let mut full = guest("full", 0, 0, 60 * MIB);
        full.resident = Some(G);
        let d = c.decide(&with_swap(sample(
            0.0,
            G,
            vec![full, no_balloon("small", p.guest_floor + 40 * MIB)],
        )));
        assert!(targets(&d).is_empty(), "{d:?}");
        let r = reclaims(&d);
        assert_eq!(
            r.iter().map(|r| (r.0.as_str(), r.1)).collect::<Vec<_>>(),
            vec![("full", 768), ("small", 256)],
            "largest resident first; never below the 256 MiB floor"
        );
        assert!(r[0].2.contains("can give no more"), "{}", r[0].2);
        // A stuck balloon: unresponsive after 15 s, then reclaimed instead.
        let mut c = Controller::new(p);
        let stuck = |t| {
            let mut g = guest("stuck", G, 0, 3 * G);
            g.resident = Some(2 * G);
            with_swap(sample(t, 3 * G / 2, vec![g]))
        };
        assert!(reclaims(&c.decide(&stuck(0.0))).is_empty(), "it owes 1 GiB");
        let r = reclaims(&c.decide(&stuck(16.0)));
        assert_eq!(r.len(), 1);
        assert!(r[0].2.contains("unresponsive"), "{}", r[0].2);
    }

    #[test]
    fn reclaims_are_recorded_and_old_records_replay() {
        let d = Decision::Reclaim {
            guest: "n".into(),
            from: 2 * G,
            to: G,
            reason: "r".into(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["kind"], "reclaim", "{v}");
        assert_eq!(v["to"], G, "{v}");
        // A record from before the swap lever: a guest with a balloon, no host swap.
        let old = r#"{"t":0,"host":{"mem_available":1,"mem_total":2,"psi_some_avg10":null},
            "guests":[{"name":"a","configured":1,"target":0,"actual":0,"free":null,
            "stats_age":null}]}"#;
        let s: Sample = serde_json::from_str(old).unwrap();
        assert!(s.guests[0].balloon && s.guests[0].resident.is_none());
        assert!(!s.host.swap_active);
    }

    #[test]
    fn psi_file_parses() {
        let t = "some avg10=1.50 avg60=0.20 avg300=0.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_psi(t), Some(1.5));
        assert_eq!(parse_psi("garbage"), None);
    }
}
