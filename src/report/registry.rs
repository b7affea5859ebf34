//! The runtime directory where running memvisor VMs register themselves, so that host-wide
//! tools (`memvisor report overcommit --all`, the balloon controller) can find every VM.
//!
//! This module owns the directory's format: one file `vm-<pid>.json` per VM holding its process
//! id, the process start time (to tell a live VM from a recycled pid), its API socket and its
//! configured guest RAM. A VM writes its file when its API server starts and removes it when it
//! stops; a VM that was killed leaves its file behind, and [`RuntimeDir::entries`] reports such
//! entries as [`EntryState::Stale`] with the reason instead of failing.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use crate::config::RUNTIME_DIR_ENV;

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The directory cannot be created or read.
    #[error("runtime directory {path}: {source}; give another one with --runtime-dir or ${RUNTIME_DIR_ENV}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The VM's entry cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// What a VM writes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Process id of the VMM.
    pub pid: u32,
    /// Start time of that process (field 22 of `/proc/PID/stat`, clock ticks since boot).
    pub start_time: u64,
    /// The VM's API socket.
    pub api_sock: PathBuf,
    /// Configured guest RAM in bytes.
    pub configured_bytes: u64,
    /// Seconds since the Unix epoch when the VM registered.
    pub registered_unix: u64,
}

/// Whether an entry belongs to a running VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EntryState {
    /// The process runs and its API socket exists.
    Live,
    /// Left behind: the reason says why it is not a running VM.
    Stale {
        /// Why.
        reason: String,
    },
}

/// One file of the runtime directory.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// The file.
    pub file: PathBuf,
    /// What it says, if it could be parsed.
    pub record: Option<VmRecord>,
    /// Live or stale.
    #[serde(flatten)]
    pub state: EntryState,
}

/// A runtime directory.
#[derive(Clone, Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

/// A VM's registration; removes its file when dropped.
#[derive(Debug)]
pub struct Registration {
    file: PathBuf,
}

impl Registration {
    /// The entry's file.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
    }
}

/// Start time of process `pid` (field 22 of `/proc/PID/stat`), `None` when it does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 is the first token; field 22 is the 20th token.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl RuntimeDir {
    /// The default runtime directory ([`crate::config::default_runtime_dir`]).
    pub fn default_path() -> PathBuf {
        crate::config::default_runtime_dir()
    }

    /// The directory at `path` (created on first registration).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RuntimeDir { path: path.into() }
    }

    /// The directory given, or the default one.
    pub fn or_default(path: Option<PathBuf>) -> Self {
        Self::new(path.unwrap_or_else(Self::default_path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers this process as a VM serving its API on `api_sock`.
    pub fn register(
        &self,
        api_sock: &Path,
        configured_bytes: u64,
    ) -> Result<Registration, RegistryError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| RegistryError::Dir {
                path: self.path.clone(),
                source,
            })?;
        let pid = std::process::id();
        let api_sock = if api_sock.is_absolute() {
            api_sock.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(api_sock))
                .unwrap_or_else(|_| api_sock.to_path_buf())
        };
        let record = VmRecord {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            api_sock,
            configured_bytes,
            registered_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let file = self.path.join(format!("vm-{pid}.json"));
        // Written to a temporary name and renamed, so readers never see half a file.
        let tmp = self.path.join(format!(".vm-{pid}.json.tmp"));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&record).map_err(io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &file)
        };
        write().map_err(|source| RegistryError::Write {
            path: file.clone(),
            source,
        })?;
        Ok(Registration { file })
    }

    /// Every entry, live or stale, in pid order. A missing directory has no entries.
    pub fn entries(&self) -> Result<Vec<Entry>, RegistryError> {
        let dir = match fs::read_dir(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RegistryError::Dir {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for de in dir.flatten() {
            let name = de.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("vm-") && name.ends_with(".json")) {
                continue;
            }
            out.push(Self::entry(de.path()));
        }
        out.sort_by_key(|e| e.record.as_ref().map(|r| r.pid).unwrap_or(u32::MAX));
        Ok(out)
    }

    fn entry(file: PathBuf) -> Entry {
        let record = fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<VmRecord>(&b).ok());
        let state = match &record {
            None => EntryState::Stale {
                reason: "unreadable entry".into(),
            },
            Some(r) => match process_start_time(r.pid) {
                None => EntryState::Stale {
                    reason: format!("process {} is gone", r.pid),
                },
                Some(t) if r.start_time != 0 && t != r.start_time => EntryState::Stale {
                    reason: format!("process {} is gone (its pid was reused)", r.pid),
                },
                Some(_) if !r.api_sock.exists() => EntryState::Stale {
                    reason: format!("API socket {} is gone", r.api_sock.display()),
                },
                Some(_) => EntryState::Live,
            },
        };
        Entry {
            file,
            record,
            state,
        }
    }

    /// Removes the stale entries (and the sockets they name, when no process owns them any
    /// more); returns the files removed.
    pub fn prune(&self) -> Result<Vec<PathBuf>, RegistryError> {
        let mut removed = Vec::new();
        for e in self.entries()? {
            if e.state == EntryState::Live {
                continue;
            }
            if let Some(r) = &e.record {
                if process_start_time(r.pid).is_none() {
                    let _ = fs::remove_file(&r.api_sock);
                }
            }
            if fs::remove_file(&e.file).is_ok() {
                removed.push(e.file);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("memvisor-reg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn start_time_of_self_is_stable_and_of_missing_is_none() {
        let me = std::process::id();
        let a = process_start_time(me).expect("own stat");
        assert_eq!(Some(a), process_start_time(me));
        assert!(a > 0);
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }

    #[test]
    fn register_lists_live_and_drop_removes() {
        let dir = tempdir("live");
        let rt = RuntimeDir::new(&dir);
        assert!(
            rt.entries().unwrap().is_empty(),
            "missing dir has no entries"
        );
        let sock = dir.join("x.sock");
        let reg = rt.register(&sock, 1 << 30).unwrap();
        // The socket does not exist yet: stale for that reason.
        let e = rt.entries().unwrap();
        assert_eq!(e.len(), 1);
        assert!(matches!(&e[0].state, EntryState::Stale { reason } if reason.contains("socket")));
        fs::write(&sock, b"").unwrap();
        let e = rt.entries().unwrap();
        assert_eq!(e[0].state, EntryState::Live);
        let r = e[0].record.as_ref().unwrap();
        assert_eq!(r.pid, std::process::id());
        assert_eq!(r.configured_bytes, 1 << 30);
        assert_eq!(r.api_sock, sock);
        drop(reg);
        assert!(rt.entries().unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn dead_reused_and_garbage_entries_are_stale_and_pruned() {
        let dir = tempdir("stale");
        fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("dead.sock");
        fs::write(&sock, b"").unwrap();
        let dead = VmRecord {
            pid: u32::MAX - 1,
            start_time: 5,
            api_sock: sock.clone(),
            configured_bytes: 1,
            registered_unix: 0,
        };
        fs::write(dir.join("vm-1.json"), serde_json::to_vec(&dead).unwrap()).unwrap();
        let reused = VmRecord {
            pid: std::process::id(),
            start_time: 1,
            ..dead.clone()
        };
        fs::write(dir.join("vm-2.json"), serde_json::to_vec(&reused).unwrap()).unwrap();
        fs::write(dir.join("vm-3.json"), b"{not json").unwrap();
        fs::write(dir.join("other.txt"), b"ignored").unwrap();
        let rt = RuntimeDir::new(&dir);
        let e = rt.entries().unwrap();
        assert_eq!(e.len(), 3);
        let reasons: Vec<String> = e
            .iter()
            .map(|e| match &e.state {
                EntryState::Stale { reason } => reason.clone(),
                EntryState::Live => "live".into(),
            })
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains("pid was reused")),
            "{reasons:?}"
        );
        assert!(reasons
            .iter()
            .any(|r| r.contains("is gone") && !r.contains("reused")));
        assert!(reasons.iter().any(|r| r == "unreadable entry"));
        let removed = rt.prune().unwrap();
        assert_eq!(removed.len(), 3);
        assert!(!sock.exists(), "socket of a dead process removed");
        assert!(rt.entries().unwrap().is_empty());
        assert!(dir.join("other.txt").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
