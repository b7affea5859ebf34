//! The machine a benchmark ran on: CPU model, logical CPUs, RAM, kernel, and whether the CPU
//! offers hardware virtualisation (it decides what KVM figures would mean; every benchmark here
//! measures host-side work).

use crate::config::Size;
use serde::Serialize;

/// Where a benchmark ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Online logical CPUs.
    pub cpus: usize,
    /// CPUs this process may run on (its affinity mask, e.g. under `taskset`).
    pub usable_cpus: usize,
    /// `MemTotal` in bytes.
    pub ram_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// Hardware virtualisation and what the figures describe.
    pub virtualisation: String,
}

impl Machine {
    /// Describes this machine.
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            cpus: nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
                .ok()
                .flatten()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(1),
            usable_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_bytes: crate::report::overcommit::HostMemory::parse(&meminfo).mem_total,
            kernel,
            virtualisation: virtualisation(&cpuinfo, std::path::Path::new("/dev/kvm").exists()),
        }
    }

    /// The description as lines of text.
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "machine: {}, {} logical CPUs{}, {} RAM, Linux {}",
                self.cpu_model,
                self.cpus,
                if self.usable_cpus < self.cpus {
                    format!(" (this process may use {})", self.usable_cpus)
                } else {
                    String::new()
                },
                Size(self.ram_bytes),
                self.kernel
            ),
            format!("virtualisation: {}", self.virtualisation),
        ]
    }
}

/// The 1-minute load average (`/proc/loadavg`), if readable.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A note on the load while a benchmark ran (other work adds noise), from the load averages
/// before and after.
pub fn load_note(before: Option<f64>, after: Option<f64>, cpus: usize) -> Option<String> {
    let (b, a) = (before?, after?);
    Some(format!(
        "1-minute load average {b:.2} before and {a:.2} after the run on {cpus} CPUs{}",
        if b.max(a) >= 0.5 * cpus as f64 {
            "; other work on the machine ran at the same time and adds noise to every figure"
        } else {
            ""
        }
    ))
}

/// The first `model name` in `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// What the CPU flags say about virtualisation.
pub fn virtualisation(cpuinfo: &str, kvm: bool) -> String {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect())
        .unwrap_or_default();
    let hw = flags.iter().any(|f| *f == "vmx" || *f == "svm");
    let guest = flags.contains(&"hypervisor");
    match (hw, guest, kvm) {
        (false, true, true) => {
            "nested KVM without hardware virtualisation (no vmx/svm in /proc/cpuinfo); \
             these are host-side figures"
                .into()
        }
        (false, _, _) => {
            "no hardware virtualisation (no vmx/svm in /proc/cpuinfo); these are host-side figures"
                .into()
        }
        (true, true, _) => {
            "a virtual machine with nested hardware virtualisation; these are host-side figures"
                .into()
        }
        (true, false, _) => {
            "bare metal with hardware virtualisation; these are host-side figures".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu hypervisor sse\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_model(""), None);
        assert_eq!(
            crate::report::overcommit::HostMemory::parse(
                "MemTotal:       24563512 kB\nMemFree: 1 kB\n"
            )
            .mem_total,
            24563512 * 1024
        );
        assert!(virtualisation(cpuinfo, true).starts_with("nested KVM without hardware"));
        assert!(virtualisation("flags : vmx\n", true).starts_with("bare metal"));
        assert!(load_note(Some(3.0), Some(1.0), 2)
            .unwrap()
            .contains("adds noise"));
        assert!(!load_note(Some(0.1), Some(0.2), 2)
            .unwrap()
            .contains("noise"));
        assert_eq!(load_note(None, Some(0.2), 2), None);
    }

    #[test]
    fn describes_this_machine() {
        let m = Machine::describe();
        assert!(m.cpus >= 1);
        assert_eq!(m.lines().len(), 2);
    }
}
