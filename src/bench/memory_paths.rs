//! `memvisor bench memory-paths`: the speed of memvisor's own memory machinery in one run,
//! each path beside a bare baseline, summarised in one table (path, memvisor figure, baseline
//! figure, ratio, target, met or not).
//!
//! It calls the other benchmarks at modest sizes rather than measuring anything itself:
//! [`super::prealloc`] (and QEMU's `-mem-prealloc`), [`super::startup`] (start to first guest
//! instruction, exec to exit beside QEMU, RSS overhead beside QEMU), [`super::balloon`],
//! [`super::uffd_faults`] and [`super::mappings`]. Each section's own report is kept whole in
//! the JSON; a section that fails is reported as such and the others still run.

use super::mappings::{self, Backing, MappingsOptions, MappingsRow, Reader};
use super::prealloc::{self, PreallocOptions, PreallocRow, QemuChoice};
use super::qemu::Qemu;
use super::startup::{self, StartupMeasure, StartupOptions, StartupRow};
use super::stats::{ratio, Target};
use super::table::{Align, Table};
use super::uffd_faults::{self, UffdOptions, UffdRow};
use super::{balloon, BenchError, BenchReport, BenchRow, Machine};
use serde::Serialize;
use std::path::PathBuf;

/// Options: the sizes of each section.
#[derive(Clone, Debug)]
pub struct MemoryPathsOptions {
    /// Repetitions in every section.
    pub reps: usize,
    /// Prealloc region size (multiple of 2 MiB).
    pub prealloc_size: u64,
    /// Guest RAM of the start and RSS measurements.
    pub startup_size: u64,
    /// Memory ballooned per round (whole MiB).
    pub balloon_size: u64,
    /// userfaultfd region size.
    pub uffd_size: u64,
    /// Guest RAM mapped by the GPA->HPA benchmark, per backing.
    pub mappings_size: u64,
    /// The memvisor binary for child-process runs (`None`: those are skipped).
    pub binary: Option<PathBuf>,
    /// QEMU comparison.
    pub qemu: QemuChoice,
    /// Sections to run.
    pub sections: Vec<Section>,
}

impl Default for MemoryPathsOptions {
    fn default() -> Self {
        MemoryPathsOptions {
            reps: 5,
            prealloc_size: 1 << 30,
            startup_size: 512 << 20,
            balloon_size: 1 << 30,
            uffd_size: 64 << 20,
            mappings_size: 1 << 30,
            binary: None,
            qemu: QemuChoice::Auto,
            sections: Section::ALL.to_vec(),
        }
    }
}

/// A part of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// Preallocation vs bare populate and QEMU.
    Prealloc,
    /// Start to first instruction, exec to exit, RSS overhead.
    Startup,
    /// Balloon return vs raw madvise.
    Balloon,
    /// userfaultfd faults vs the minimal loop.
    Uffd,
    /// GPA->HPA map vs raw pagemap.
    Mappings,
}

impl Section {
    /// Every section, in run order.
    pub const ALL: [Section; 5] = [
        Section::Prealloc,
        Section::Startup,
        Section::Balloon,
        Section::Uffd,
        Section::Mappings,
    ];

    /// Name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Section::Prealloc => "prealloc",
            Section::Startup => "startup",
            Section::Balloon => "balloon",
            Section::Uffd => "uffd",
            Section::Mappings => "mappings",
        }
    }
}

impl std::str::FromStr for Section {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Section::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("`{s}`: write prealloc, startup, balloon, uffd or mappings"))
    }
}

impl MemoryPathsOptions {
    /// The command line these options correspond to (sizes always written out).
    pub fn command(&self) -> String {
        use super::prealloc::size_arg;
        let mut c = format!(
            "memvisor bench memory-paths --reps {} --prealloc-size {} --startup-size {} \
             --balloon-size {} --uffd-size {} --mappings-size {}",
            self.reps,
            size_arg(self.prealloc_size),
            size_arg(self.startup_size),
            size_arg(self.balloon_size),
            size_arg(self.uffd_size),
            size_arg(self.mappings_size),
        );
        if self.sections != Section::ALL {
            let s: Vec<&str> = self.sections.iter().map(|s| s.name()).collect();
            c.push_str(&format!(" --sections {}", s.join(",")));
        }
        match &self.qemu {
            QemuChoice::Auto => {}
            QemuChoice::Binary(p) => c.push_str(&format!(" --qemu {}", p.display())),
            QemuChoice::Skip => c.push_str(" --no-qemu"),
        }
        c
    }
}

/// One line of the summary: a path, memvisor's figure, the baseline's, their ratio and the
/// target.
#[derive(Clone, Debug, Serialize)]
pub struct PathRow {
    /// Section the figure comes from.
    pub section: Section,
    /// The path measured.
    pub path: String,
    /// What the baseline is.
    pub baseline: String,
    /// Unit of both figures.
    pub unit: String,
    /// Whether a higher figure is better (throughput) or a lower one (time, memory).
    pub higher_is_better: bool,
    /// memvisor's median.
    pub memvisor: Option<f64>,
    /// The baseline's median (None: no baseline measured, or only an anchor).
    pub baseline_figure: Option<f64>,
    /// memvisor / baseline.
    pub ratio: Option<f64>,
    /// The target, as text (`>= 0.90x baseline`, `<= 15 ms`), if there is one.
    pub target: Option<String>,
    /// Whether it was met (None: no target or not measured).
    pub met: Option<bool>,
}

fn fig(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) if v >= 10.0 => format!("{v:.1} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
    }
}

impl BenchRow for PathRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("path", Align::Left),
            ("memvisor", Align::Right),
            ("baseline", Align::Left),
            ("baseline fig.", Align::Right),
            ("mv/base", Align::Right),
            ("target", Align::Left),
            ("met", Align::Left),
        ]);
        for r in rows {
            t.row(vec![
                r.path.clone(),
                fig(r.memvisor, &r.unit),
                r.baseline.clone(),
                fig(r.baseline_figure, &r.unit),
                super::table::ratio_cell(r.ratio),
                r.target.clone().unwrap_or_else(|| "-".into()),
                match r.met {
                    Some(true) => "met".into(),
                    Some(false) => "NOT met".into(),
                    None if r.target.is_some() => "not measured".into(),
                    None => "-".into(),
                },
            ]);
        }
        t
    }
}

/// Every section's own report (None: not run, or failed; see the notes).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sections {
    /// `bench prealloc`.
    pub prealloc: Option<BenchReport<PreallocRow>>,
    /// Start and footprint.
    pub startup: Option<BenchReport<StartupRow>>,
    /// `bench balloon`.
    pub balloon: Option<BenchReport<balloon::BalloonRow>>,
    /// `bench uffd`.
    pub uffd: Option<BenchReport<UffdRow>>,
    /// `bench mappings`.
    pub mappings: Option<BenchReport<MappingsRow>>,
}

/// The suite's result: the summary and every section.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryPathsReport {
    /// One row per path, the targets and the notes.
    pub summary: BenchReport<PathRow>,
    /// The sections' own reports.
    pub sections: Sections,
}

impl MemoryPathsReport {
    /// The summary, then each section's table and targets.
    pub fn to_text(&self) -> String {
        let mut out = self.summary.to_text();
        let s = &self.sections;
        fn section<R: BenchRow>(out: &mut String, r: &Option<BenchReport<R>>) {
            if let Some(r) = r {
                out.push_str(&format!("\nsection {}\n", r.benchmark));
                for m in &r.method {
                    out.push_str(&format!("  - {m}\n"));
                }
                out.push_str(&R::table(&r.rows).render());
                for n in r
                    .notes
                    .iter()
                    .filter(|n| !n.contains("1-minute load average"))
                {
                    out.push_str(&format!("  note: {n}\n"));
                }
            }
        }
        section(&mut out, &s.prealloc);
        section(&mut out, &s.startup);
        section(&mut out, &s.balloon);
        section(&mut out, &s.uffd);
        section(&mut out, &s.mappings);
        out
    }

    /// Pretty JSON of everything.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("bench reports serialize")
    }
}

fn ratio_text(goal: f64, what: &str) -> String {
    format!(">= {goal:.2}x {what}")
}

/// Runs the suite; `progress` gets the sections' progress lines.
pub fn run(
    opts: &MemoryPathsOptions,
    progress: &dyn Fn(&str),
) -> Result<MemoryPathsReport, BenchError> {
    BenchError::check_reps(opts.reps)?;
    let load_before = super::machine::load_average();
    let mut notes = Vec::new();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut sections = Sections::default();
    let wants = |s: Section| opts.sections.contains(&s);
    let failed = |s: Section, e: BenchError, notes: &mut Vec<String>| {
        notes.push(format!("section {} failed: {e}", s.name()));
    };

    if wants(Section::Prealloc) {
        progress("memory-paths: prealloc");
        let p = PreallocOptions {
            size: opts.prealloc_size,
            reps: opts.reps,
            qemu: opts.qemu.clone(),
            ..PreallocOptions::default()
        };
        match prealloc::run(&p, progress) {
            Ok(r) => {
                for row in &r.rows {
                    let c = row.config();
                    rows.push(PathRow {
                        section: Section::Prealloc,
                        path: format!("prealloc {c}"),
                        baseline: "bare MADV_POPULATE_WRITE".into(),
                        unit: "GiB/s".into(),
                        higher_is_better: true,
                        memvisor: row.memvisor.as_ref().map(|s| s.median),
                        baseline_figure: row.bare.as_ref().map(|s| s.median),
                        ratio: row.ratio_vs_bare,
                        target: Some(ratio_text(0.9, "bare")),
                        met: row.ratio_vs_bare.map(|x| x >= 0.9),
                    });
                    rows.push(PathRow {
                        section: Section::Prealloc,
                        path: format!("prealloc {c}"),
                        baseline: "QEMU prealloc=on".into(),
                        unit: "GiB/s".into(),
                        higher_is_better: true,
                        memvisor: row.memvisor.as_ref().map(|s| s.median),
                        baseline_figure: row.qemu.as_ref().map(|s| s.median),
                        ratio: row.ratio_vs_qemu,
                        target: Some(ratio_text(1.0, "QEMU")),
                        met: row.ratio_vs_qemu.map(|x| x >= 1.0),
                    });
                }
                targets.extend(r.targets.iter().cloned());
                notes.extend(r.notes.iter().map(|n| format!("prealloc: {n}")));
                sections.prealloc = Some(r);
            }
            Err(e) => failed(Section::Prealloc, e, &mut notes),
        }
    }

    if wants(Section::Startup) {
        progress("memory-paths: startup");
        let qemu = match &opts.qemu {
            QemuChoice::Skip => Err("QEMU comparison skipped (--no-qemu)".to_string()),
            QemuChoice::Auto => Qemu::find(None),
            QemuChoice::Binary(p) => Qemu::find(Some(p)),
        };
        let s = StartupOptions {
            size: opts.startup_size,
            reps: (opts.reps * 3).max(5),
            binary: opts.binary.clone(),
            qemu,
        };
        match startup::run(&s, progress) {
            Ok(mut r) => {
                r.command = format!(
                    "memvisor bench memory-paths --sections startup --startup-size {} --reps {} \
                     ({} repetitions of each start measurement)",
                    super::prealloc::size_arg(opts.startup_size),
                    opts.reps,
                    s.reps
                );
                for row in &r.rows {
                    let med = |x: &Option<super::Summary>| x.as_ref().map(|s| s.median);
                    let (path, baseline, unit, target, limit) = match row.measure {
                        StartupMeasure::StartToFirstHypercall => (
                            "VMM start to first guest instruction, in process",
                            "Firecracker ~12 ms (anchor, not measured)",
                            "ms",
                            Some(format!("<= {} ms", startup::TARGET_START_MS)),
                            Some(startup::TARGET_START_MS),
                        ),
                        StartupMeasure::StartToFirstHypercallFresh => (
                            "VMM start to first guest instruction, fresh process",
                            "Firecracker ~12 ms (anchor, not measured)",
                            "ms",
                            Some(format!("<= {} ms", startup::TARGET_START_MS)),
                            Some(startup::TARGET_START_MS),
                        ),
                        StartupMeasure::ExecToExit => (
                            "exec to exit, guest stops at once",
                            "QEMU microvm, exits on 1st instr.",
                            "ms",
                            None,
                            None,
                        ),
                        StartupMeasure::RssOverhead => (
                            "VMM RSS beyond guest RAM, idle",
                            "QEMU microvm, same guest size",
                            "MiB",
                            Some(format!("<= {} MiB", startup::TARGET_OVERHEAD_MIB)),
                            Some(startup::TARGET_OVERHEAD_MIB),
                        ),
                    };
                    let memvisor = med(&row.memvisor);
                    rows.push(PathRow {
                        section: Section::Startup,
                        path: path.into(),
                        baseline: baseline.into(),
                        unit: unit.into(),
                        higher_is_better: false,
                        memvisor,
                        baseline_figure: med(&row.qemu),
                        ratio: row.ratio_to_qemu,
                        target,
                        met: limit.and_then(|l| memvisor.map(|m| m <= l)),
                    });
                }
                targets.extend(r.targets.iter().cloned());
                notes.extend(r.notes.iter().map(|n| format!("startup: {n}")));
                sections.startup = Some(r);
            }
            Err(e) => failed(Section::Startup, e, &mut notes),
        }
    }

    if wants(Section::Balloon) {
        progress("memory-paths: balloon");
        let b = balloon::BalloonBenchOptions {
            size: opts.balloon_size,
            reps: opts.reps,
            cpu: balloon::BalloonBenchOptions::default_cpu(),
            raw_age: std::time::Duration::ZERO,
        };
        let command = format!(
            "memvisor bench balloon --size {} --reps {}",
            super::prealloc::size_arg(opts.balloon_size),
            opts.reps
        );
        match balloon::run(&b, command) {
            Ok(r) => {
                let ours = r.rows.first();
                let raw = r.rows.get(1);
                let med = |x: Option<&balloon::BalloonRow>| {
                    x.and_then(|r| r.gib_per_s.as_ref()).map(|s| s.median)
                };
                let x = ours.and_then(|o| o.ratio_to_raw);
                rows.push(PathRow {
                    section: Section::Balloon,
                    path: format!(
                        "balloon return {} (PATCH /balloon -> host RSS down)",
                        crate::config::Size(opts.balloon_size)
                    ),
                    baseline: "raw madvise(MADV_DONTNEED)".into(),
                    unit: "GiB/s".into(),
                    higher_is_better: true,
                    memvisor: med(ours),
                    baseline_figure: med(raw),
                    ratio: x,
                    target: Some(ratio_text(0.5, "raw")),
                    met: x.map(|x| x >= 0.5),
                });
                targets.extend(r.targets.iter().cloned());
                notes.extend(r.notes.iter().map(|n| format!("balloon: {n}")));
                sections.balloon = Some(r);
            }
            Err(e) => failed(Section::Balloon, e, &mut notes),
        }
    }

    if wants(Section::Uffd) {
        progress("memory-paths: uffd");
        let u = UffdOptions {
            size: opts.uffd_size,
            reps: opts.reps,
            ..UffdOptions::default()
        };
        match uffd_faults::run(&u, progress) {
            Ok(r) => {
                for row in &r.rows {
                    rows.push(PathRow {
                        section: Section::Uffd,
                        path: format!("userfaultfd faults, {}", row.source.label()),
                        baseline: "minimal userfaultfd loop".into(),
                        unit: "kpages/s".into(),
                        higher_is_better: true,
                        memvisor: row.memvisor.as_ref().map(|s| s.median / 1e3),
                        baseline_figure: row.minimal.as_ref().map(|s| s.median / 1e3),
                        ratio: row.ratio,
                        target: Some(ratio_text(0.8, "loop")),
                        met: row.ratio.map(|x| x >= 0.8),
                    });
                }
                targets.extend(r.targets.iter().cloned());
                notes.extend(r.notes.iter().map(|n| format!("uffd: {n}")));
                sections.uffd = Some(r);
            }
            Err(e) => failed(Section::Uffd, e, &mut notes),
        }
    }

    if wants(Section::Mappings) {
        progress("memory-paths: mappings");
        let m = MappingsOptions {
            size: opts.mappings_size,
            reps: opts.reps,
            backings: Backing::ALL.to_vec(),
        };
        match mappings::run(&m, progress) {
            Ok(r) => {
                for b in Backing::ALL {
                    let find = |reader: Reader| {
                        r.rows
                            .iter()
                            .find(|x| x.backing == b && x.reader == reader)
                            .and_then(|x| x.ms_per_gib.as_ref())
                            .map(|s| s.median)
                    };
                    if !r.rows.iter().any(|x| x.backing == b) {
                        continue;
                    }
                    let memvisor = find(Reader::Memvisor);
                    let baseline = find(Reader::RawPagemap);
                    rows.push(PathRow {
                        section: Section::Mappings,
                        path: format!("GPA->HPA map, {}", b.label()),
                        baseline: "raw pagemap pread".into(),
                        unit: "ms/GiB".into(),
                        higher_is_better: false,
                        memvisor,
                        baseline_figure: baseline,
                        ratio: memvisor.and_then(|m| baseline.and_then(|b| ratio(m, b))),
                        target: Some(format!("<= {} ms/GiB", mappings::TARGET_MS_PER_GIB)),
                        met: memvisor.map(|m| m <= mappings::TARGET_MS_PER_GIB),
                    });
                }
                targets.extend(r.targets.iter().cloned());
                notes.extend(r.notes.iter().map(|n| format!("mappings: {n}")));
                sections.mappings = Some(r);
            }
            Err(e) => failed(Section::Mappings, e, &mut notes),
        }
    }

    let machine = Machine::describe();
    // The sections' load notes are replaced by one for the whole run.
    notes.retain(|n| !n.contains("1-minute load average"));
    notes.extend(super::machine::load_note(
        load_before,
        super::machine::load_average(),
        machine.cpus,
    ));
    let summary = BenchReport {
        benchmark: "memory-paths".into(),
        command: opts.command(),
        machine,
        method: vec![
            "each path is measured by its own benchmark (sections below, and in the JSON) \
             beside a bare baseline in the same run; mv/base is memvisor's median over the \
             baseline's (for GiB/s and kpages/s higher is better, for ms, ms/GiB and MiB lower \
             is better)"
                .into(),
            "these figures are from a machine without hardware virtualisation (nested KVM, \
             shadow paging) where other work may run at the same time; the host-side paths \
             (prealloc, madvise, userfaultfd, pagemap) are ordinary host work, guest execution \
             is not"
                .into(),
        ],
        rows,
        targets,
        notes,
    };
    Ok(MemoryPathsReport { summary, sections })
}

/// A target verdict by name, for tests and callers.
pub fn find_target<'a>(r: &'a MemoryPathsReport, name_part: &str) -> Option<&'a Target> {
    r.summary
        .targets
        .iter()
        .find(|t| t.name.contains(name_part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_command_and_sections() {
        let o = MemoryPathsOptions::default();
        assert_eq!(
            o.command(),
            "memvisor bench memory-paths --reps 5 --prealloc-size 1G --startup-size 512M \
             --balloon-size 1G --uffd-size 64M --mappings-size 1G"
        );
        assert_eq!("uffd".parse(), Ok(Section::Uffd));
        assert!("nope".parse::<Section>().is_err());
        let o2 = MemoryPathsOptions {
            sections: vec![Section::Mappings],
            qemu: QemuChoice::Skip,
            ..o
        };
        assert!(o2.command().ends_with("--sections mappings --no-qemu"));
    }

    #[test]
    fn table_marks_targets() {
        let row = |met, target: Option<&str>| PathRow {
            section: Section::Startup,
            path: "p".into(),
            baseline: "b".into(),
            unit: "ms".into(),
            higher_is_better: false,
            memvisor: Some(12.345),
            baseline_figure: Some(123.4),
            ratio: Some(0.1),
            target: target.map(String::from),
            met,
        };
        let t = PathRow::table(&[
            row(Some(true), Some("<= 15 ms")),
            row(Some(false), Some("<= 5 ms")),
            row(None, Some("<= 1 ms")),
            row(None, None),
        ])
        .render();
        assert!(t.contains("12.3 ms"), "{t}");
        assert!(t.contains("123 ms"), "{t}");
        assert!(t.contains(" met"), "{t}");
        assert!(t.contains("NOT met"), "{t}");
        assert!(t.contains("not measured"), "{t}");
    }
}
