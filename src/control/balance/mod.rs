//! The balloon controller behind `memvisor balance`: keeps the host's free-memory floor (and,
//! when one is set, the VMs' budget) by moving the balloon targets of the VMs registered in the
//! runtime directory, then by reclaiming guest memory to host swap.
//!
//! This module owns the policy ([`Controller::decide`], a pure function of what it is given,
//! so it is tested on recorded inputs) and the I/O of the loop that samples the host and the
//! guests and applies decisions ([`sample`], [`apply`]; the loop is `memvisor balance`'s, in
//! `src/cmd/balance.rs`).
//!
//! The policy, in order:
//! 1. A guest whose balloon has not moved towards its target for
//!    [`Policy::unresponsive_after`] is **unresponsive**: the controller no longer takes
//!    memory from it nor counts on what it still owes, and says so once. A guest whose
//!    statistics are older than [`Policy::stale_after`] is not taken from either (its free
//!    memory is unknown). Both recover when the guest moves / reports again.
//! 2. **Pressure** is `MemAvailable` below `min_host_free`, the VMs' used memory above
//!    [`Policy::fleet_budget`] (when set; [`Sample::fleet_used`]), or memory PSI `some avg10` above
//!    [`Policy::psi_limit`]. The floor and the budget are both limits with room above them; the one
//!    with less room binds (`Limit`). Under pressure the controller aims for `release_margin / 2`
//!    of room above it: it subtracts what responsive guests still owe (target above actual), then
//!    inflates guests **with the most free memory first**, each by at most `max_step`, never below
//!    the guest's `guest_floor` of RAM and never into its last `headroom` of free memory. A guest's
//!    free memory is its statistics' figure corrected for what its balloon moved since they arrived
//!    and still owes ([`GuestSample::free_after_balloon`]): the statistics lag the balloon.
//! 3. When both limits have more than `release_margin` of room (and no PSI pressure) the controller
//!    **gives back to the guests that need it**: those whose free memory (from fresh statistics)
//!    has fallen below their `headroom`, the least free first, each by at most `max_step`, until
//!    the room above `release_margin / 2` is spent. A guest with free memory to spare keeps its
//!    balloon even when the host has plenty: a deflated page costs the host nothing at once, but
//!    lets the guest grow back past the budget later, and deflating everyone whenever the host
//!    looks free undoes the controller's work in seconds (it did, in the full-size fleet run,
//!    before this rule).
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
    /// The most memory the VMs may use together ([`Sample::fleet_used`]); `None`: no budget,
    /// only the host's floor. A budget holds whatever other processes on the host do, which
    /// the floor cannot: they move `MemAvailable`.
    #[serde(default)]
    pub fleet_budget: Option<u64>,
    /// Width of the band above the floor (and below the budget) where nothing moves; memory is
    /// given back beyond it.
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
            fleet_budget: None,
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
    /// KSM's host-wide `pages_sharing` in bytes (pages saved by merging), when KSM is there.
    #[serde(default)]
    pub ksm_sharing: Option<u64>,
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
    /// Guest memory mapped to KSM pages (`/proc/PID/ksm_merging_pages`), in bytes, when known.
    #[serde(default)]
    pub ksm_merging: Option<u64>,
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
            ksm_merging: None,
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

impl Sample {
    /// What the sampled VMs use together, as `memvisor report overcommit --all` counts it: their
    /// resident guest RAM (where unknown, configured minus ballooned: an upper bound) less what
    /// KSM saves (the host's `pages_sharing`, capped by the pages the VMs merged).
    pub fn fleet_used(&self) -> u64 {
        let resident: u64 = self
            .guests
            .iter()
            .map(|g| {
                g.resident
                    .unwrap_or_else(|| g.configured.saturating_sub(g.actual))
            })
            .sum();
        let merged: u64 = self.guests.iter().filter_map(|g| g.ksm_merging).sum();
        // The savings inside each VM are not sampled (they need each VM's page frames).
        let saved = crate::report::overcommit::fleet_ksm_saved(
            self.host.ksm_sharing.unwrap_or(0),
            merged,
            0,
        );
        resident.saturating_sub(saved)
    }
}

/// The limit that binds in one tick: the host's floor, or the fleet's budget when it has less
/// room.
struct Limit {
    /// Bytes above the limit; negative below it (pressure).
    room: i64,
    /// Why memory is taken when below it.
    under: String,
    /// Why memory is given back when far enough above it.
    over: String,
}

impl Limit {
    fn of(p: &Policy, s: &Sample) -> Limit {
        let avail = s.host.mem_available;
        let host = Limit {
            room: avail as i64 - p.min_host_free as i64,
            under: format!(
                "host MemAvailable {} MiB below the {} MiB floor",
                avail / MIB,
                p.min_host_free / MIB
            ),
            over: format!(
                "host MemAvailable {} MiB is above {} MiB",
                avail / MIB,
                (p.min_host_free + p.release_margin) / MIB
            ),
        };
        let Some(budget) = p.fleet_budget else {
            return host;
        };
        let used = s.fleet_used();
        let fleet = Limit {
            room: budget as i64 - used as i64,
            under: format!(
                "the VMs use {} MiB, over their {} MiB budget",
                used / MIB,
                budget / MIB
            ),
            over: format!(
                "the VMs use {} MiB, below {} MiB (their budget less the release margin)",
                used / MIB,
                budget.saturating_sub(p.release_margin) / MIB
            ),
        };
        if fleet.room < host.room {
            fleet
        } else {
            host
        }
    }
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
        let limit = Limit::of(&p, s);
        let psi_pressure =
            matches!((s.host.psi_some_avg10, p.psi_limit), (Some(v), Some(l)) if v > l);
        let aim = (p.release_margin / 2) as i64;
        if limit.room < 0 || psi_pressure {
            // 2. Take.
            let owed: u64 = s
                .guests
                .iter()
                .filter(|g| usable(g, &self.tracks))
                .map(|g| g.target.saturating_sub(g.actual))
                .sum();
            let mut deficit = if limit.room < aim {
                (aim - limit.room) as u64
            } else {
                p.max_step
            }
            .saturating_sub(owed);
            let why = if limit.room < 0 {
                limit.under.clone()
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
        } else if limit.room > p.release_margin as i64 {
            self.short = false;
            // 3. Give back.
            let mut surplus = (limit.room - aim) as u64;
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
                        "{}; it has {} MiB free, under its {} MiB headroom, the least of the guests short of memory",
                        limit.over,
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

mod io;
pub use io::{apply, parse_psi, read_psi, sample, sample_guest};

#[cfg(test)]
mod tests;
