//! [`Ksm`]: a handle on a KSM sysfs directory (normally `/sys/kernel/mm/ksm`).
//!
//! Reads turn missing files into [`KsmError::Unavailable`] (the whole
//! directory is missing) or [`KsmError::MissingFile`] (one knob is missing on
//! this kernel); optional knobs read as `None` instead. Writes never create
//! files, so a fake directory in tests behaves like the real one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::parse::{self, Choices};
use crate::{Change, KsmCounters, KsmError, KsmRun, KsmSettings};

/// Where the kernel exposes KSM.
pub const SYSTEM_ROOT: &str = "/sys/kernel/mm/ksm";

/// How often [`Ksm::wait_full_scans`] polls `full_scans`.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A handle on a KSM sysfs directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ksm {
    root: PathBuf,
}

impl Ksm {
    /// The system's KSM directory, `/sys/kernel/mm/ksm`.
    pub fn system() -> Self {
        Self::with_root(SYSTEM_ROOT)
    }

    /// A KSM directory at `root` (e.g. a fake directory in tests).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Ksm { root: root.into() }
    }

    /// The directory this handle reads and writes.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when the directory has a `run` file, i.e. KSM is compiled in.
    pub fn available(&self) -> bool {
        self.root.join("run").is_file()
    }

    fn path(&self, knob: &str) -> PathBuf {
        self.root.join(knob)
    }

    fn io_error(&self, op: &'static str, knob: &str, err: io::Error) -> KsmError {
        if err.kind() == io::ErrorKind::NotFound && !self.root.is_dir() {
            return KsmError::Unavailable {
                path: self.root.clone(),
            };
        }
        KsmError::from_io(op, self.path(knob), err)
    }

    /// Reads a file, trimmed.
    fn read_raw(&self, knob: &str) -> Result<String, KsmError> {
        fs::read_to_string(self.path(knob))
            .map(|s| s.trim().to_string())
            .map_err(|e| self.io_error("read", knob, e))
    }

    /// Reads a file that older kernels may lack: `Ok(None)` when it is missing.
    fn read_optional(&self, knob: &str) -> Result<Option<String>, KsmError> {
        match self.read_raw(knob) {
            Ok(s) => Ok(Some(s)),
            Err(KsmError::MissingFile { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs a pure parser, reporting the full path on failure.
    fn parsed<T>(
        &self,
        knob: &str,
        text: &str,
        f: fn(&str, &str) -> Result<T, KsmError>,
    ) -> Result<T, KsmError> {
        f(&self.path(knob).display().to_string(), text)
    }

    fn read_u64(&self, knob: &str) -> Result<u64, KsmError> {
        self.parsed(knob, &self.read_raw(knob)?, parse::parse_u64)
    }

    fn read_opt<T>(
        &self,
        knob: &str,
        f: fn(&str, &str) -> Result<T, KsmError>,
    ) -> Result<Option<T>, KsmError> {
        self.read_optional(knob)?
            .map(|text| self.parsed(knob, &text, f))
            .transpose()
    }

    /// The advisor modes offered and the one selected (`None` before 6.7).
    pub fn advisor_modes(&self) -> Result<Option<Choices>, KsmError> {
        self.read_opt("advisor_mode", parse::parse_choices)
    }

    /// The current `run` state.
    pub fn run(&self) -> Result<KsmRun, KsmError> {
        let text = self.read_raw("run")?;
        text.parse().map_err(|_| KsmError::Parse {
            what: self.path("run").display().to_string(),
            content: text,
            reason: "expected 0, 1 or 2".into(),
        })
    }

    /// Reads every knob. Knobs the kernel lacks are `None`.
    pub fn settings(&self) -> Result<KsmSettings, KsmError> {
        Ok(KsmSettings {
            run: self.run()?,
            pages_to_scan: self.read_u64("pages_to_scan")?,
            sleep_millisecs: self.read_u64("sleep_millisecs")?,
            merge_across_nodes: self.read_opt("merge_across_nodes", parse::parse_bool01)?,
            use_zero_pages: self.read_opt("use_zero_pages", parse::parse_bool01)?,
            max_page_sharing: self.read_opt("max_page_sharing", parse::parse_u64)?,
            advisor_mode: self.advisor_modes()?.map(|c| c.selected),
        })
    }

    /// Reads the global counters. Counters the kernel lacks are `None`.
    pub fn counters(&self) -> Result<KsmCounters, KsmError> {
        Ok(KsmCounters {
            pages_shared: self.read_u64("pages_shared")?,
            pages_sharing: self.read_u64("pages_sharing")?,
            pages_unshared: self.read_u64("pages_unshared")?,
            pages_volatile: self.read_u64("pages_volatile")?,
            full_scans: self.read_u64("full_scans")?,
            general_profit: self.read_opt("general_profit", parse::parse_i64)?,
            ksm_zero_pages: self.read_opt("ksm_zero_pages", parse::parse_u64)?,
            stable_node_chains: self.read_opt("stable_node_chains", parse::parse_u64)?,
        })
    }

    /// The value shown in a [`Change`]: the raw file, or the selected choice.
    fn shown(&self, knob: &str) -> Result<String, KsmError> {
        let text = self.read_raw(knob)?;
        if knob == "advisor_mode" {
            return Ok(self.parsed(knob, &text, parse::parse_choices)?.selected);
        }
        Ok(text)
    }

    /// Writes `value` to `knob` (never creating it) and reports before/after.
    fn set_knob(&self, knob: &str, value: &str) -> Result<Change, KsmError> {
        let before = self.shown(knob)?;
        log::debug!("ksm: writing {value} to {}", self.path(knob).display());
        // Truncate like `echo > knob` does (sysfs ignores it; fake files need it).
        let written = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(knob))
            .and_then(|mut f| f.write_all(value.as_bytes()));
        if let Err(e) = written {
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Err(self.rejected(knob, value));
            }
            return Err(self.io_error("write", knob, e));
        }
        let after = self.shown(knob)?;
        Ok(Change {
            knob: knob.to_string(),
            before,
            after,
        })
    }

    fn rejected(&self, knob: &str, value: &str) -> KsmError {
        let advisor = self.advisor_modes().ok().flatten().map(|c| c.selected);
        let reason = match (knob, advisor.as_deref()) {
            ("pages_to_scan", Some(mode)) if mode != "none" => format!(
                "the kernel rejects pages_to_scan while advisor_mode is {mode}; \
                 set advisor_mode to none first"
            ),
            _ => "the kernel rejected it (EINVAL); check the value's range".to_string(),
        };
        KsmError::InvalidValue {
            knob: knob.to_string(),
            value: value.to_string(),
            reason,
        }
    }

    /// Writes `run` (stop, merge, unmerge). Unmerge can take a while.
    pub fn set_run(&self, run: KsmRun) -> Result<Change, KsmError> {
        self.set_knob("run", &run.sysfs_value().to_string())
    }

    /// Writes `pages_to_scan` (rejected by the kernel while an advisor is active).
    pub fn set_pages_to_scan(&self, n: u64) -> Result<Change, KsmError> {
        self.set_knob("pages_to_scan", &n.to_string())
    }

    /// Writes `sleep_millisecs`.
    pub fn set_sleep_millisecs(&self, ms: u64) -> Result<Change, KsmError> {
        self.set_knob("sleep_millisecs", &ms.to_string())
    }

    /// Writes `merge_across_nodes` (EBUSY while pages are merged).
    pub fn set_merge_across_nodes(&self, on: bool) -> Result<Change, KsmError> {
        self.set_knob("merge_across_nodes", if on { "1" } else { "0" })
    }

    /// Writes `use_zero_pages`.
    pub fn set_use_zero_pages(&self, on: bool) -> Result<Change, KsmError> {
        self.set_knob("use_zero_pages", if on { "1" } else { "0" })
    }

    /// Writes `max_page_sharing` (at least 2; EBUSY while pages are merged).
    pub fn set_max_page_sharing(&self, n: u64) -> Result<Change, KsmError> {
        self.set_knob("max_page_sharing", &n.to_string())
    }

    /// Selects an `advisor_mode` such as `none` or `scan-time`.
    ///
    /// Switching mode makes the kernel reset `pages_to_scan`.
    pub fn set_advisor_mode(&self, mode: &str) -> Result<Change, KsmError> {
        let choices = self.advisor_modes()?.ok_or_else(|| KsmError::MissingFile {
            path: self.path("advisor_mode"),
        })?;
        if !choices.available.iter().any(|c| c == mode) {
            return Err(KsmError::InvalidValue {
                knob: "advisor_mode".into(),
                value: mode.to_string(),
                reason: format!("this kernel offers: {}", choices.available.join(", ")),
            });
        }
        self.set_knob("advisor_mode", mode)
    }

    /// Writes only the knobs that differ from `s` and returns what changed.
    ///
    /// `None` fields are left alone. Order matters to the kernel: `run=2`
    /// (unmerge) is written first so that knobs refused while pages are merged
    /// can change; `advisor_mode` precedes `pages_to_scan` (switching mode
    /// resets it); `pages_to_scan` is skipped while an advisor other than
    /// `none` manages it; any other `run` value is written last, so ksmd starts
    /// with the new settings.
    pub fn apply(&self, s: &KsmSettings) -> Result<Vec<Change>, KsmError> {
        let current = self.settings()?;
        let mut changes = Vec::new();
        // Every knob is tried even when an earlier one fails (e.g. `max_page_sharing` is busy
        // while KSM pages exist), so one refusal does not leave the others changed; the first
        // error is returned after the rest have been applied.
        let mut first_err: Option<KsmError> = None;
        let mut step = |r: Result<Change, KsmError>| match r {
            Ok(c) => changes.push(c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        };
        if s.run == KsmRun::Unmerge && current.run != KsmRun::Unmerge {
            step(self.set_run(KsmRun::Unmerge));
        }
        if let Some(mode) = &s.advisor_mode {
            if current.advisor_mode.as_ref() != Some(mode) {
                step(self.set_advisor_mode(mode));
            }
        }
        if let Some(on) = s.merge_across_nodes {
            if current.merge_across_nodes != Some(on) {
                step(self.set_merge_across_nodes(on));
            }
        }
        if let Some(on) = s.use_zero_pages {
            if current.use_zero_pages != Some(on) {
                step(self.set_use_zero_pages(on));
            }
        }
        if let Some(n) = s.max_page_sharing {
            if current.max_page_sharing != Some(n) {
                step(self.set_max_page_sharing(n));
            }
        }
        if current.sleep_millisecs != s.sleep_millisecs {
            step(self.set_sleep_millisecs(s.sleep_millisecs));
        }
        // Re-read: an advisor switch above may have reset pages_to_scan.
        match self.advisor_modes() {
            Ok(advisor) => {
                let advisor = advisor.map(|c| c.selected);
                if advisor.as_deref().is_some_and(|m| m != "none") {
                    log::debug!("ksm: pages_to_scan left to advisor_mode {advisor:?}");
                } else {
                    match self.read_u64("pages_to_scan") {
                        Ok(n) if n != s.pages_to_scan => {
                            step(self.set_pages_to_scan(s.pages_to_scan))
                        }
                        Ok(_) => {}
                        Err(e) => step(Err(e)),
                    }
                }
            }
            Err(e) => step(Err(e)),
        }
        if s.run != KsmRun::Unmerge && current.run != s.run {
            step(self.set_run(s.run));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(changes),
        }
    }

    /// Waits until `full_scans` has advanced by `n` and returns the counters.
    ///
    /// Fails fast with [`KsmError::NotRunning`] unless `run` is merge (1), and
    /// with [`KsmError::Timeout`] after `timeout`. Note that the first scan
    /// counted may have started before the caller's memory was registered;
    /// wait for at least two scans to see new pages merged.
    pub fn wait_full_scans(&self, n: u64, timeout: Duration) -> Result<KsmCounters, KsmError> {
        let start = Instant::now();
        let first = self.counters()?;
        if n == 0 {
            return Ok(first);
        }
        let run = self.run()?;
        if run != KsmRun::Merge {
            return Err(KsmError::NotRunning {
                run: format!("{} ({run})", run.sysfs_value()),
            });
        }
        let target = first.full_scans.saturating_add(n);
        loop {
            let now = self.counters()?;
            if now.full_scans >= target {
                return Ok(now);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(KsmError::Timeout {
                    wanted: n,
                    seen: now.full_scans.saturating_sub(first.full_scans),
                    waited_ms: elapsed.as_millis(),
                });
            }
            thread::sleep(POLL_INTERVAL.min(timeout - elapsed));
        }
    }
}
