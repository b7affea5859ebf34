//! Starting QEMU for comparisons: finds `qemu-system-x86_64`, starts it stopped (`-S`) with
//! its human monitor on stdio, times how long it takes until the monitor prompt appears (all
//! memory backends, and their preallocation, are set up before that), reads what the process
//! has resident, and sends `quit`.
//!
//! The benchmark never installs QEMU; when it is missing the comparison is skipped with a line
//! saying how to install it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How to install QEMU on Debian/Ubuntu (printed when it is missing).
pub const INSTALL_HINT: &str = "install it with `apt-get install qemu-system-x86`";

/// The binary looked for on `PATH`.
pub const BINARY: &str = "qemu-system-x86_64";

/// Arguments every start gets: no machine, no devices, stopped, monitor on stdio.
pub const BASE_ARGS: [&str; 9] = [
    "-machine",
    "none",
    "-accel",
    "tcg",
    "-nodefaults",
    "-nographic",
    "-S",
    "-monitor",
    "stdio",
];

/// A QEMU binary that answered `--version`.
#[derive(Clone, Debug)]
pub struct Qemu {
    /// Path of the binary.
    pub binary: PathBuf,
    /// First line of `--version`.
    pub version: String,
}

/// What one QEMU start measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuStart {
    /// From spawning the process to the monitor prompt on its stdout.
    pub to_prompt: Duration,
    /// Resident bytes of the process at the prompt (`Rss` of `/proc/PID/smaps_rollup`).
    pub rss_bytes: u64,
    /// Of which transparent huge pages (`AnonHugePages`).
    pub anon_huge_bytes: u64,
    /// hugetlb pages mapped by the process (`Shared_Hugetlb` + `Private_Hugetlb`).
    pub hugetlb_bytes: u64,
}

impl Qemu {
    /// `explicit`, or `qemu-system-x86_64` on `PATH`; `Err` is the line to print instead of the
    /// comparison.
    pub fn find(explicit: Option<&Path>) -> Result<Qemu, String> {
        let binary = match explicit {
            Some(p) => p.to_path_buf(),
            None => which(BINARY).ok_or_else(|| {
                format!("QEMU comparison skipped: {BINARY} is not on PATH; {INSTALL_HINT}")
            })?,
        };
        let out = Command::new(&binary)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "QEMU comparison skipped: cannot run {}: {e}; {INSTALL_HINT}",
                    binary.display()
                )
            })?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("unknown version")
            .to_string();
        Ok(Qemu { binary, version })
    }

    /// The full command line for `args` (for reports).
    pub fn command_line(&self, args: &[String]) -> String {
        let mut parts = vec![self.binary.display().to_string()];
        parts.extend(BASE_ARGS.iter().map(|s| s.to_string()));
        parts.extend(args.iter().cloned());
        parts.join(" ")
    }

    /// Starts QEMU with [`BASE_ARGS`] plus `args`, waits for the monitor prompt (at most
    /// `timeout`), reads its resident memory, sends `quit` and waits for it to exit.
    ///
    /// `disable_thp` starts it with `prctl(PR_SET_THP_DISABLE)` (inherited across exec): QEMU
    /// asks for transparent huge pages on all guest RAM (`MADV_HUGEPAGE`) and has no option to
    /// turn that off. `Err` says what went wrong, with QEMU's stderr.
    pub fn time_to_prompt(
        &self,
        args: &[String],
        disable_thp: bool,
        timeout: Duration,
    ) -> Result<QemuStart, String> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(BASE_ARGS)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if disable_thp {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only calls prctl,
            // which is async-signal-safe; it touches no locks or allocations of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let (tx, rx) = mpsc::channel();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let out_thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let mut sent = false;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if !sent {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(6).any(|w| w == b"(qemu)") {
                        let _ = tx.send(Instant::now());
                        sent = true;
                    }
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let result = match rx.recv_timeout(timeout) {
            Ok(at) => {
                let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", child.id()))
                    .unwrap_or_default();
                Ok(QemuStart {
                    to_prompt: at - start,
                    rss_bytes: smaps_kib(&smaps, "Rss") * 1024,
                    anon_huge_bytes: smaps_kib(&smaps, "AnonHugePages") * 1024,
                    hugetlb_bytes: (smaps_kib(&smaps, "Shared_Hugetlb")
                        + smaps_kib(&smaps, "Private_Hugetlb"))
                        * 1024,
                })
            }
            Err(_) => Err(String::new()),
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
        }
        let status = wait_or_kill(&mut child, Duration::from_secs(30));
        let _ = out_thread.join();
        let stderr = err_thread.join().unwrap_or_default();
        let stderr = stderr.trim();
        result.map_err(|_| match status {
            Some(s) => format!(
                "QEMU exited ({s}) before its monitor prompt: {}",
                if stderr.is_empty() {
                    "no message"
                } else {
                    stderr
                }
            ),
            None => format!(
                "no QEMU monitor prompt within {} s (QEMU was killed){}",
                timeout.as_secs(),
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                }
            ),
        })
    }
}

/// Waits up to `limit` for `child` to exit, then kills it (this child only). Returns the exit
/// status if it exited on its own.
fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A `NAME:  N kB` field of `/proc/PID/smaps_rollup` text (0 when absent).
pub fn smaps_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or(0)
}

/// `name` found in a directory of `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_rollup() {
        let text = "00-ff ---p 0 00:00 0 [rollup]\nRss:   32464 kB\nAnonHugePages:  2048 kB\n\
                    Shared_Hugetlb:        0 kB\nPrivate_Hugetlb:   65536 kB\n";
        assert_eq!(smaps_kib(text, "Rss"), 32464);
        assert_eq!(smaps_kib(text, "AnonHugePages"), 2048);
        assert_eq!(smaps_kib(text, "Private_Hugetlb"), 65536);
        assert_eq!(smaps_kib(text, "Swap"), 0);
    }

    #[test]
    fn missing_binary_says_how_to_install() {
        let e = Qemu::find(Some(Path::new("/nonexistent/qemu-system-x86_64"))).unwrap_err();
        assert!(e.contains("QEMU comparison skipped"), "{e}");
        assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
    }
}
