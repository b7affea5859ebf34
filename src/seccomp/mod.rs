//! Least privilege: one seccomp-BPF filter per kind of VMM thread, built with `seccompiler`.
//!
//! Every thread of a running VM installs the filter of its kind on itself once its setup is done
//! ([`ThreadFilter::apply`]): vCPU threads, the API accept and connection threads, the
//! userfaultfd handler, the device event thread, the prealloc threads (at their start) and
//! (in `memvisor run`) the main thread once the VM runs. Filters are per thread: a test harness
//! that starts VMs in-process keeps its own threads unfiltered. The allow-lists live in
//! [`rules`]. Two kinds do work no allow-list can foresee and get a deny-list instead
//! ([`deny`]): `memvisor run`'s main thread during setup (from its first line; the threads it
//! starts inherit it and add their own), and the vCPU threads of a VM started with a `sync`
//! hook (the caller's code runs on them). What each kind may do is described there and in the
//! README ("Least privilege").
//!
//! [`SeccompMode`] is the switch: `on` (the default) traps a forbidden call with `SIGSYS`, whose
//! handler ([`sigsys`]) prints the thread, the call and its arguments and how to run without
//! filters, then aborts; `log` lets every call through and has the kernel log the ones outside
//! the list (`dmesg`: `audit: type=1326 ... syscall=N`); `off` installs nothing.
//!
//! Not filtered: the threads of a program that starts VMs through the library (the setup runs
//! on the caller's thread, which the library never filters).

pub mod deny;
pub mod names;
pub mod rules;
pub mod sigsys;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Errors of building or installing filters; each says how to go on without them.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allow-list could not be compiled to BPF (a memvisor bug).
    #[error("building the seccomp filter of the {kind} thread(s): {reason}; run with --seccomp off to start without filters (less safe)")]
    Compile {
        /// The thread kind.
        kind: ThreadKind,
        /// What seccompiler said.
        reason: String,
    },
    /// The kernel refused the filter.
    #[error("installing the seccomp filter of the {kind} thread: {reason}; the kernel needs seccomp-BPF (CONFIG_SECCOMP_FILTER); run with --seccomp off to start without filters (less safe)")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// What failed.
        reason: String,
    },
}

/// Whether and how filters are installed (`memvisor run --seccomp on|log|off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Install the filters; a forbidden call is reported and the VMM aborts.
    #[default]
    On,
    /// Install the filters with `SECCOMP_RET_LOG`: forbidden calls are allowed and logged by
    /// the kernel (audit records in `dmesg`). For finding what a filter lacks.
    Log,
    /// Install nothing (debugging; less safe).
    Off,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::On => "on",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// The kinds of VMM threads, each with its own allow-list (see [`rules`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// `vcpu<N>`: `KVM_RUN`, the device registers behind port-I/O and MMIO exits.
    Vcpu,
    /// `api-accept` and the `api-conn` threads it starts: the control API.
    Api,
    /// `uffd-handler`: serves userfaultfd page faults.
    Uffd,
    /// `vmm-swap`: the in-VMM swap (writes guest memory to a swap file, starts the
    /// userfaultfd handler that serves it back).
    VmmSwap,
    /// `devices`: the device event thread (queue notifications, balloon discards, interrupts,
    /// the statistics timer, API commands).
    Devices,
    /// The main thread of `memvisor run` once the VM runs: the event loop and the report.
    Main,
    /// `prealloc<N>`: populate guest memory before the guest runs.
    Prealloc,
    /// The main thread of `memvisor run` from its start until the VM runs, and every thread
    /// started meanwhile (which inherit it): a deny-list ([`deny`]).
    Setup,
    /// `vcpu<N>` of a VM started with a sync hook, whose code nobody can foresee: a deny-list
    /// ([`deny`]).
    VcpuHook,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 9] = [
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Uffd,
        ThreadKind::VmmSwap,
        ThreadKind::Devices,
        ThreadKind::Main,
        ThreadKind::Prealloc,
        ThreadKind::Setup,
        ThreadKind::VcpuHook,
    ];

    /// Name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Api => "API",
            ThreadKind::Uffd => "userfaultfd handler",
            ThreadKind::VmmSwap => "in-VMM swap",
            ThreadKind::Devices => "device event thread",
            ThreadKind::Main => "main",
            ThreadKind::Prealloc => "prealloc",
            ThreadKind::Setup => "setup",
            ThreadKind::VcpuHook => "vCPU with sync hook",
        }
    }

    /// Whether the filter lists what is denied (everything else is allowed) rather than what
    /// is allowed.
    pub fn has_deny_list(self) -> bool {
        matches!(self, ThreadKind::Setup | ThreadKind::VcpuHook)
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compiled filter for one thread kind, ready to be installed by threads of that kind.
/// Cheap to clone. With [`SeccompMode::Off`] it installs nothing.
#[derive(Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    mode: SeccompMode,
    /// Installed in order (empty when off).
    programs: Arc<Vec<BpfProgram>>,
}

impl fmt::Debug for ThreadFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadFilter")
            .field("kind", &self.kind)
            .field("mode", &self.mode)
            .field(
                "instructions",
                &self.programs.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ThreadFilter {
    /// Compiles the allow-list of `kind` for `mode`.
    pub fn new(mode: SeccompMode, kind: ThreadKind) -> Result<ThreadFilter, SeccompError> {
        let programs = match mode {
            SeccompMode::Off => Vec::new(),
            SeccompMode::On | SeccompMode::Log => {
                let default = if mode == SeccompMode::On {
                    SeccompAction::Trap
                } else {
                    SeccompAction::Log
                };
                let mut programs = Vec::new();
                if rules::starts_threads(kind) {
                    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
                    let clone3 = rules::clone3_enosys();
                    programs.push(compile(kind, clone3, SeccompAction::Allow, enosys)?);
                }
                if let Some(opens) = rules::open_eacces(kind) {
                    let eacces = SeccompAction::Errno(libc::EACCES as u32);
                    programs.push(compile(kind, opens, SeccompAction::Allow, eacces)?);
                }
                programs.push(match (rules::allowed(kind), deny::denied(kind)) {
                    (Some(allowed), _) => compile(kind, allowed, default, SeccompAction::Allow)?,
                    (None, Some(denied)) => compile(kind, denied, SeccompAction::Allow, default)?,
                    (None, None) => {
                        return Err(SeccompError::Compile {
                            kind,
                            reason: "this kind has neither an allow-list nor a deny-list".into(),
                        })
                    }
                });
                programs
            }
        };
        Ok(ThreadFilter {
            kind,
            mode,
            programs: Arc::new(programs),
        })
    }

    /// A filter that installs nothing.
    pub fn off(kind: ThreadKind) -> ThreadFilter {
        ThreadFilter {
            kind,
            mode: SeccompMode::Off,
            programs: Arc::new(Vec::new()),
        }
    }

    /// The thread kind.
    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// The mode.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// Installs the filter on the calling thread (and so on threads it starts later). With
    /// `on`, first makes sure the `SIGSYS` reporter is installed and records the thread's name
    /// for it. Sets `no_new_privs` on the thread, as unprivileged seccomp requires.
    pub fn apply(&self) -> Result<(), SeccompError> {
        if self.programs.is_empty() {
            return Ok(());
        }
        if self.mode == SeccompMode::On {
            sigsys::install_reporter().map_err(|e| SeccompError::Install {
                kind: self.kind,
                reason: format!("installing the SIGSYS handler: {e}"),
            })?;
        }
        sigsys::remember_thread(self.kind);
        for p in self.programs.iter() {
            seccompiler::apply_filter(p).map_err(|e| SeccompError::Install {
                kind: self.kind,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// [`ThreadFilter::apply`] for threads that cannot return an error to anyone: logs it.
    /// Returns whether the thread may go on (the filter is in place, or none was asked for).
    pub fn apply_or_log(&self) -> bool {
        match self.apply() {
            Ok(()) => true,
            Err(e) => {
                log::error!("{e}");
                false
            }
        }
    }

    /// A closure that installs this filter, for code that only takes a thread-start hook
    /// (the uffd crate).
    pub fn hook(&self) -> Arc<dyn Fn() -> Result<(), String> + Send + Sync> {
        let f = self.clone();
        Arc::new(move || f.apply().map_err(|e| e.to_string()))
    }
}

fn compile(
    kind: ThreadKind,
    rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Compile {
        kind,
        reason: e.to_string(),
    };
    let filter = SeccompFilter::new(rules, mismatch, matched, seccompiler::TargetArch::x86_64)
        .map_err(err)?;
    filter.try_into().map_err(err)
}

/// The filters of one VM, compiled once when it starts.
#[derive(Clone, Debug)]
pub struct VmFilters {
    mode: SeccompMode,
    filters: Vec<ThreadFilter>,
}

impl VmFilters {
    /// Compiles the filter of every thread kind for `mode`.
    pub fn new(mode: SeccompMode) -> Result<VmFilters, SeccompError> {
        Ok(VmFilters {
            mode,
            filters: ThreadKind::ALL
                .iter()
                .map(|&k| ThreadFilter::new(mode, k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The mode.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// The filter of `kind`.
    pub fn get(&self, kind: ThreadKind) -> ThreadFilter {
        self.filters
            .iter()
            .find(|f| f.kind == kind)
            .cloned()
            .unwrap_or_else(|| ThreadFilter::off(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_every_mode() {
        for mode in [SeccompMode::On, SeccompMode::Log] {
            let f = VmFilters::new(mode).unwrap();
            for k in ThreadKind::ALL {
                let t = f.get(k);
                assert_eq!(t.kind(), k);
                assert!(!t.programs.is_empty(), "{k}: no program");
                assert!(
                    t.programs.iter().all(|p| p.len() < 4096),
                    "{k}: over the kernel's 4096-instruction limit"
                );
            }
        }
        let off = VmFilters::new(SeccompMode::Off).unwrap();
        assert!(ThreadKind::ALL
            .iter()
            .all(|&k| off.get(k).programs.is_empty()));
    }

    #[test]
    fn modes_parse_and_print() {
        use clap::ValueEnum;
        for m in [SeccompMode::On, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(SeccompMode::from_str(&m.to_string(), false).unwrap(), m);
        }
        assert_eq!(SeccompMode::default(), SeccompMode::On);
    }
}
