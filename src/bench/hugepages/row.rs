//! One configuration's figures over its repetitions ([`HugepagesRow`]: min/median/max of every
//! figure) and the benchmark's table.

use super::{Backing, HugepagesConfig, RunSample};
use crate::bench::stats::Summary;
use crate::bench::table::{med, min_med_max};
use crate::bench::{Align, BenchRow, Table};
use serde::Serialize;

/// One configuration's results over the repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct HugepagesRow {
    /// `hugetlbfs 2M +prealloc`.
    pub config: String,
    /// The backing.
    pub backing: Backing,
    /// `prealloc=on`.
    pub prealloc: bool,
    /// Host page size the backing aims for.
    pub page_bytes: u64,
    /// Why the configuration did not run (or stopped running), if it did not.
    pub not_run: Option<String>,
    /// The host MMU the guest ran under (`EPT`, `NPT` or `shadow paging`).
    pub mmu: String,
    /// Seconds of VMM start (mapping, prealloc, VM setup, boot writes).
    pub start_s: Option<Summary>,
    /// Of which preallocation.
    pub prealloc_s: Option<Summary>,
    /// Seconds of the fault phase.
    pub first_touch_s: Option<Summary>,
    /// Fault phase per 4 KiB page touched, µs of vCPU-thread CPU time (wall time when the CPU
    /// time is not known).
    pub first_touch_us_per_page: Option<Summary>,
    /// Start + fault phase: seconds until the whole working set is usable.
    pub ready_s: Option<Summary>,
    /// Host minor faults before the guest started (mapping, prealloc, setup).
    pub start_minflt: Option<Summary>,
    /// Host minor faults in the fault phase.
    pub touch_minflt: Option<Summary>,
    /// Host minor faults in the sequential and random phases.
    pub steady_minflt: Option<Summary>,
    /// Host major faults, whole run.
    pub majflt: Option<Summary>,
    /// vCPU-thread CPU seconds of the fault phase.
    pub first_touch_cpu_s: Option<Summary>,
    /// ns per sequential read (vCPU-thread CPU time).
    pub seq_ns: Option<Summary>,
    /// ns per random access (vCPU-thread CPU time).
    pub random_ns: Option<Summary>,
    /// ns per sequential read (wall clock).
    pub seq_wall_ns: Option<Summary>,
    /// ns per random access (wall clock).
    pub random_wall_ns: Option<Summary>,
    /// Exits the VMM saw, whole run.
    pub vmm_exits: Option<Summary>,
    /// KVM's exits in the fault phase.
    pub kvm_exits_touch: Option<Summary>,
    /// KVM's exits in the sequential and random phases.
    pub kvm_exits_steady: Option<Summary>,
    /// Faults KVM's MMU fixed in the fault phase.
    pub kvm_pf_fixed_touch: Option<Summary>,
    /// KVM MMU 4K leaf mappings at the end.
    pub kvm_pages_4k: Option<Summary>,
    /// KVM MMU 2M leaf mappings at the end.
    pub kvm_pages_2m: Option<Summary>,
    /// KVM MMU 1G leaf mappings at the end.
    pub kvm_pages_1g: Option<Summary>,
    /// Guest RAM resident at the end, bytes.
    pub resident_bytes: Option<Summary>,
    /// Process RSS (VmRSS + HugetlbPages) at the end, bytes.
    pub process_rss_bytes: Option<Summary>,
    /// Huge pages in use from the pool at the end.
    pub pool_pages_used: Option<Summary>,
    /// Huge pages reserved for the mapping but not yet used at the end.
    pub pool_pages_reserved: Option<Summary>,
    /// Every repetition.
    pub samples: Vec<RunSample>,
}

impl HugepagesRow {
    pub(super) fn new(config: HugepagesConfig, mmu: &str, samples: Vec<RunSample>) -> HugepagesRow {
        let f = |g: &dyn Fn(&RunSample) -> Option<f64>| -> Option<Summary> {
            let v: Vec<f64> = samples.iter().filter_map(g).collect();
            Summary::of(&v)
        };
        let n = |x: u64| Some(x as f64);
        HugepagesRow {
            config: config.label(),
            backing: config.backing,
            prealloc: config.prealloc,
            page_bytes: config.backing.page_bytes(),
            not_run: None,
            mmu: mmu.to_string(),
            start_s: f(&|s| Some(s.start_s)),
            prealloc_s: if config.prealloc {
                f(&|s| Some(s.prealloc_s))
            } else {
                None
            },
            first_touch_s: f(&|s| Some(s.first_touch_s)),
            first_touch_us_per_page: f(&|s| {
                let secs = s.first_touch_cpu_s.unwrap_or(s.first_touch_s);
                (s.pages_touched > 0).then(|| secs * 1e6 / s.pages_touched as f64)
            }),
            ready_s: f(&|s| Some(s.start_s + s.first_touch_s)),
            start_minflt: f(&|s| n(s.start_faults.0)),
            touch_minflt: f(&|s| n(s.touch_faults.0)),
            steady_minflt: f(&|s| n(s.steady_faults.0)),
            majflt: f(&|s| n(s.start_faults.1 + s.touch_faults.1 + s.steady_faults.1)),
            first_touch_cpu_s: f(&|s| s.first_touch_cpu_s),
            seq_ns: f(&|s| Some(s.seq_ns)),
            random_ns: f(&|s| Some(s.random_ns)),
            seq_wall_ns: f(&|s| Some(s.seq_wall_ns)),
            random_wall_ns: f(&|s| Some(s.random_wall_ns)),
            vmm_exits: f(&|s| n(s.vmm_exits)),
            kvm_exits_touch: f(&|s| s.kvm_exits.map(|e| e.0 as f64)),
            kvm_exits_steady: f(&|s| s.kvm_exits.map(|e| e.1 as f64)),
            kvm_pf_fixed_touch: f(&|s| s.kvm_pf_fixed.map(|e| e.0 as f64)),
            kvm_pages_4k: f(&|s| s.kvm_pages.map(|p| p.0 as f64)),
            kvm_pages_2m: f(&|s| s.kvm_pages.map(|p| p.1 as f64)),
            kvm_pages_1g: f(&|s| s.kvm_pages.map(|p| p.2 as f64)),
            resident_bytes: f(&|s| n(s.resident_bytes)),
            process_rss_bytes: f(&|s| n(s.process_rss_bytes)),
            pool_pages_used: f(&|s| s.pool_used.map(|p| p.0 as f64)),
            pool_pages_reserved: f(&|s| s.pool_used.map(|p| p.1 as f64)),
            samples,
        }
    }

    pub(super) fn not_run(config: HugepagesConfig, mmu: &str, reason: String) -> HugepagesRow {
        let mut row = HugepagesRow::new(config, mmu, Vec::new());
        row.not_run = Some(reason);
        row
    }
}

/// A count with thousands separators (`131,072`).
fn count(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn med_count(s: Option<&Summary>) -> String {
    s.map_or_else(|| "-".into(), |s| count(s.median))
}

fn med_mib(s: Option<&Summary>) -> String {
    s.map_or_else(
        || "-".into(),
        |s| format!("{:.0}", s.median / (1u64 << 20) as f64),
    )
}

impl BenchRow for HugepagesRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("configuration", Align::Left),
            ("start s (prealloc)", Align::Right),
            ("first touch s min/med/max", Align::Right),
            ("CPU s", Align::Right),
            ("us/page", Align::Right),
            ("host faults start+touch", Align::Right),
            ("seq ns min/med/max", Align::Right),
            ("random ns min/med/max", Align::Right),
            ("wall ns seq/rand", Align::Right),
            ("KVM exits touch/steady", Align::Right),
            ("MMU maps 4K/2M/1G", Align::Right),
            ("resident MiB", Align::Right),
            ("pool used/resv", Align::Right),
        ]);
        for r in rows {
            // The reason is a note under the table (it would widen a column here).
            if r.not_run.is_some() && r.samples.is_empty() {
                t.row(vec![r.config.clone(), "not run (see notes)".into()]);
                continue;
            }
            let pair = |a: Option<&Summary>, b: Option<&Summary>| match (a, b) {
                (None, None) => "-".to_string(),
                _ => format!("{}/{}", med_count(a), med_count(b)),
            };
            t.row(vec![
                if r.not_run.is_some() {
                    format!("{} (stopped, see notes)", r.config)
                } else {
                    r.config.clone()
                },
                format!(
                    "{} ({})",
                    med(r.start_s.as_ref(), 3),
                    med(r.prealloc_s.as_ref(), 3)
                ),
                min_med_max(r.first_touch_s.as_ref(), 3),
                med(r.first_touch_cpu_s.as_ref(), 3),
                med(r.first_touch_us_per_page.as_ref(), 2),
                format!(
                    "{}+{}",
                    med_count(r.start_minflt.as_ref()),
                    med_count(r.touch_minflt.as_ref())
                ),
                min_med_max(r.seq_ns.as_ref(), 1),
                min_med_max(r.random_ns.as_ref(), 1),
                format!(
                    "{}/{}",
                    med(r.seq_wall_ns.as_ref(), 1),
                    med(r.random_wall_ns.as_ref(), 1)
                ),
                pair(r.kvm_exits_touch.as_ref(), r.kvm_exits_steady.as_ref()),
                match (&r.kvm_pages_4k, &r.kvm_pages_2m, &r.kvm_pages_1g) {
                    (None, None, None) => "-".into(),
                    (a, b, c) => format!(
                        "{}/{}/{}",
                        med_count(a.as_ref()),
                        med_count(b.as_ref()),
                        med_count(c.as_ref())
                    ),
                },
                med_mib(r.resident_bytes.as_ref()),
                pair(r.pool_pages_used.as_ref(), r.pool_pages_reserved.as_ref()),
            ]);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_table() {
        let c = HugepagesConfig {
            backing: Backing::Anon4K,
            prealloc: false,
        };
        let sample = |t: f64| RunSample {
            first_touch_s: t,
            pages_touched: 1000,
            seq_ns: 20.0,
            random_ns: 90.0,
            touch_faults: (1000, 0),
            kvm_exits: Some((1005, 3)),
            kvm_pages: Some((1000, 0, 0)),
            resident_bytes: 8 << 20,
            ..Default::default()
        };
        let row = HugepagesRow::new(c, "shadow paging", vec![sample(0.02), sample(0.01)]);
        assert_eq!(row.first_touch_us_per_page.as_ref().unwrap().median, 15.0);
        assert!(row.prealloc_s.is_none() && row.pool_pages_used.is_none());
        let skipped = HugepagesRow::not_run(
            HugepagesConfig {
                backing: Backing::Hugetlbfs1G,
                prealloc: true,
            },
            "shadow paging",
            "no 1G pages".into(),
        );
        let text = HugepagesRow::table(&[row, skipped]).render();
        assert!(text.contains("4K (THP off)"), "{text}");
        assert!(text.contains("0.010 / 0.015 / 0.020"), "{text}");
        assert!(text.contains("1,005/3"), "{text}");
        assert!(text.contains("1,000/0/0"), "{text}");
        assert!(
            text.contains("hugetlbfs 1G +prealloc  not run (see notes)"),
            "{text}"
        );
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(count(12.0), "12");
    }
}
