//! Benchmarks behind `memvisor bench`: memvisor's guest-memory paths measured beside minimal
//! baselines written here (and beside QEMU where that makes sense), in the same run, on the same
//! machine. These are benchmarks, not timed tests: they report figures and say whether a target
//! was met; they never fail because a target was missed.
//!
//! Layout:
//! - [`stats`]: samples, min/median/max, ratios and target verdicts;
//! - [`table`]: plain-text tables and the number formats used in them;
//! - [`machine`]: the machine description printed with every result;
//! - [`host`]: temporary host setup (a hugetlbfs mount with a grown pool, restored on drop) and
//!   timing helpers;
//! - [`qemu`]: starting QEMU and timing its startup, for comparisons;
//! - [`prealloc`]: `memvisor bench prealloc`;
//! - [`uffd_faults`]: `memvisor bench uffd`, with [`minimal_uffd`], the bare userfaultfd loop it
//!   compares against;
//! - [`balloon`]: `memvisor bench balloon`, PATCH /balloon to host memory returned vs raw madvise;
//! - [`disk`]: `memvisor bench disk`, the virtio-blk device's requests vs raw file I/O;
//! - [`net`]: `memvisor bench net`, the virtio-net device's frames vs raw tap I/O and a veth
//!   pair, in a network namespace of its own ([`netns`]);
//! - [`split_queue`]: the driver side of a split virtqueue, shared by `disk` and `net`;
//! - [`mappings`]: `memvisor bench mappings`, the GPA→HPA map in ms/GiB vs raw pagemap reads;
//! - [`startup`]: VMM start to first guest instruction and RSS beyond guest RAM, beside QEMU;
//! - [`memory_paths`]: `memvisor bench memory-paths`, all of the above at modest sizes in one
//!   summary table;
//! - [`hugepages`]: `memvisor bench hugepages`, one guest workload on 4K, THP, hugetlbfs 2M and
//!   1G, with and without prealloc; [`chart`] draws its SVG.
//!
//! A further benchmark is one more module with an options struct and a
//! `run(&Options, progress) -> Result<BenchReport<Row>, BenchError>` function whose `Row`
//! implements [`BenchRow`]; the CLI (`src/cmd/bench.rs`) prints [`BenchReport::to_text`] or
//! [`BenchReport::to_json`].

pub mod balloon;
pub mod chart;
pub mod disk;
pub mod host;
pub mod hugepages;
pub mod machine;
pub mod mappings;
pub mod memory_paths;
pub mod minimal_uffd;
pub mod net;
pub(crate) mod netns;
pub mod prealloc;
pub mod qemu;
pub(crate) mod split_queue;
pub mod startup;
pub mod stats;
pub mod swap;
pub mod table;
pub mod uffd_faults;

pub use machine::Machine;
pub use stats::{ratio, Summary, Target};
pub use table::{Align, Table};

use serde::Serialize;

/// Benchmark errors; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A command-line option that cannot be used.
    #[error("{option}: {reason}")]
    Option {
        /// The option.
        option: &'static str,
        /// What is wrong and what to give instead.
        reason: String,
    },
    /// memvisor's own memory path failed (this is the code under test).
    #[error("memvisor guest memory: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    /// Setting up host huge pages failed.
    #[error("host huge pages: {0}")]
    HugePages(#[from] ::hugepages::HugePageError),
    /// A system call of the benchmark itself (the baselines, the scratch files) failed.
    #[error("{what} failed: {source}; {hint}")]
    Sys {
        /// The call.
        what: &'static str,
        /// The error.
        source: std::io::Error,
        /// What to try.
        hint: &'static str,
    },
    /// A baseline or memvisor run produced wrong memory contents or counts.
    #[error("{what}: {detail}; this is a bug, please report it with the command line")]
    Check {
        /// Which run.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

impl BenchError {
    /// `--reps` must be at least 1.
    pub(crate) fn check_reps(reps: usize) -> Result<(), BenchError> {
        if reps == 0 {
            return Err(BenchError::Option {
                option: "--reps",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// `--size` must be a positive multiple of `unit` (`unit_text` names it in the message,
    /// `example` is a size to suggest).
    pub(crate) fn check_size(
        size: u64,
        unit: u64,
        unit_text: &str,
        example: &str,
    ) -> Result<(), BenchError> {
        if size == 0 || size % unit != 0 {
            return Err(BenchError::Option {
                option: "--size",
                reason: format!(
                    "{} is not a positive multiple of {unit_text}; e.g. {example}",
                    crate::config::Size(size)
                ),
            });
        }
        Ok(())
    }

    /// A `Sys` error from the last OS error.
    pub(crate) fn last_os(what: &'static str, hint: &'static str) -> Self {
        BenchError::Sys {
            what,
            source: std::io::Error::last_os_error(),
            hint,
        }
    }

    /// A `Sys` error from an `io::Error`.
    pub(crate) fn io(
        what: &'static str,
        hint: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        move |source| BenchError::Sys { what, source, hint }
    }
}

/// A result row of a benchmark: how a list of them becomes a table.
pub trait BenchRow: Serialize {
    /// The table of `rows`.
    fn table(rows: &[Self]) -> Table
    where
        Self: Sized;
}

/// What a benchmark run produced: the machine, the command, one row per configuration, the
/// verdict on each target and notes (what was skipped and why, what limits a figure).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport<R> {
    /// Benchmark name (`prealloc`, `uffd`).
    pub benchmark: String,
    /// The command that produced it.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// How the figures were measured, one sentence each.
    pub method: Vec<String>,
    /// One row per configuration.
    pub rows: Vec<R>,
    /// Verdict on each target.
    pub targets: Vec<Target>,
    /// What was skipped, what limits a figure.
    pub notes: Vec<String>,
}

impl<R: BenchRow> BenchReport<R> {
    /// Readable text: machine, command, method, table, targets, notes.
    pub fn to_text(&self) -> String {
        let mut out = format!("memvisor bench {}\n", self.benchmark);
        for line in self.machine.lines() {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!("  command: {}\n", self.command));
        if !self.method.is_empty() {
            out.push_str("method\n");
            for m in &self.method {
                out.push_str(&format!("  - {m}\n"));
            }
        }
        out.push('\n');
        out.push_str(&R::table(&self.rows).render());
        out.push('\n');
        if !self.targets.is_empty() {
            out.push_str("targets\n");
            for t in &self.targets {
                out.push_str(&format!("  {t}\n"));
            }
        }
        if !self.notes.is_empty() {
            out.push_str("notes\n");
            for n in &self.notes {
                out.push_str(&format!("  - {n}\n"));
            }
        }
        out
    }

    /// Pretty JSON of the whole report.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("bench reports serialize")
    }
}
