//! Where a `bench balloon` round's time went and what the kernel decided for it: the device's
//! discard timing per round, how old the freed pages were, the per-CPU free lists' room.

use super::baselines::Freed;
use crate::bench::stats::Summary;
use std::time::Instant;

/// Where one balloon round's time went, from the device's discard timing.
pub(super) struct RoundParts {
    /// PATCH sent until the first discard started: the API, the guest waking up and posting
    /// its first buffers, the device thread waking up and walking them.
    reaction: f64,
    /// Time inside discard calls.
    discard: f64,
    /// CPU time the device thread used inside them.
    discard_cpu: f64,
    /// Time inside the first of them (the guest posts its second half meanwhile, then sleeps
    /// in `HC_WAIT`; it wakes when the first half comes back, during the second call).
    first_call: f64,
    /// Between the first discard's start and the last one's end, outside discard calls: the
    /// device waiting for (or walking) the guest's next buffers.
    gaps: f64,
    calls: u64,
}

impl RoundParts {
    pub(super) fn of(
        sent: Instant,
        done: Instant,
        t: &crate::devices::balloon::DiscardTiming,
    ) -> RoundParts {
        let (first, last) = (t.first_start.unwrap_or(sent), t.last_end.unwrap_or(done));
        RoundParts {
            reaction: first.saturating_duration_since(sent).as_secs_f64(),
            discard: t.busy.as_secs_f64(),
            discard_cpu: t.cpu.as_secs_f64(),
            first_call: t.first_call.as_secs_f64(),
            gaps: (last.saturating_duration_since(first).saturating_sub(t.busy)).as_secs_f64(),
            calls: t.calls,
        }
    }

    pub(super) fn notes(parts: &[RoundParts]) -> Vec<String> {
        let med = |f: &dyn Fn(&RoundParts) -> f64| {
            let v: Vec<f64> = parts.iter().map(f).collect();
            Summary::of(&v).map_or(0.0, |s| s.median) * 1000.0
        };
        let calls: Vec<u64> = parts.iter().map(|p| p.calls).collect();
        let per_round: Vec<String> = parts
            .iter()
            .map(|p| {
                format!(
                    "{:.1} ({:.1} + {:.1})",
                    p.discard * 1000.0,
                    p.first_call * 1000.0,
                    (p.discard - p.first_call) * 1000.0
                )
            })
            .collect();
        vec![format!(
            "where the time goes (medians over the rounds, ms): PATCH to first discard {:.1}, inside discard calls {:.1} (on the CPU {:.1}), between discards {:.1}; discard calls per round {calls:?} (one per merged range), ms inside them per round [total (first call + the others)] [{}]",
            med(&|p| p.reaction),
            med(&|p| p.discard),
            med(&|p| p.discard_cpu),
            med(&|p| p.gaps),
            per_round.join(", "),
        )]
    }
}

/// How long before a discard the memory it freed was touched, in seconds: the guest filled
/// it between `oldest` and `youngest` seconds before.
pub(super) struct PageAge {
    pub(super) youngest: f64,
    pub(super) oldest: f64,
}

impl PageAge {
    /// Memory filled between `fill.0` and `fill.1`, freed from `at` on.
    pub(super) fn between(fill: (Instant, Instant), at: Instant) -> PageAge {
        PageAge {
            youngest: at.saturating_duration_since(fill.1).as_secs_f64(),
            oldest: at.saturating_duration_since(fill.0).as_secs_f64(),
        }
    }

    pub(super) fn list(ages: &[PageAge]) -> String {
        let v: Vec<String> = ages
            .iter()
            .map(|a| format!("{:.1}-{:.1}", a.youngest, a.oldest))
            .collect();
        format!("[{}]", v.join(", "))
    }
}

/// Each free's room on the per-CPU free lists ([`Freed::room`]) in thousands of pages; `?`
/// where unknown.
pub(super) fn rooms(v: &[Freed]) -> String {
    let v: Vec<String> = v
        .iter()
        .map(|f| {
            f.room
                .map_or_else(|| "?".into(), |r| format!("{}k", r / 1000))
        })
        .collect();
    format!("[{}]", v.join(", "))
}
