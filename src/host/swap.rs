//! Host swap: what `memvisor swap` shows and changes.
//!
//! This module owns the host's swap set-up as memvisor sees it: the active swap devices
//! (`/proc/swaps`), zram devices (`/sys/block/zramN`: `disksize`, `comp_algorithm`, `mm_stat`
//! for the compression ratio), swap files, `vm.swappiness`, and the record of what memvisor set
//! up (`swap.json` in the runtime directory), so that `memvisor swap off` undoes only that unless
//! the caller names a device. Swap areas are written with util-linux's `mkswap` and switched
//! with the `swapon(2)`/`swapoff(2)` system calls.

use crate::config::Size;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROC_SWAPS: &str = "/proc/swaps";
const SWAPPINESS: &str = "/proc/sys/vm/swappiness";
const SYS_BLOCK: &str = "/sys/block";
const ZRAM_HOT_ADD: &str = "/sys/class/zram-control/hot_add";
/// The record of what memvisor set up, in the runtime directory.
pub const STATE_FILE: &str = "swap.json";
/// Priority memvisor gives zram swap unless told otherwise: above disk swap (as
/// zram-generator does), so compressed RAM fills first.
pub const ZRAM_PRIORITY: i32 = 100;

// <sys/swap.h>; not in the libc crate.
const SWAP_FLAG_PREFER: i32 = 0x8000;
const SWAP_FLAG_PRIO_MASK: i32 = 0x7fff;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const BTRFS_MAGIC: i64 = 0x9123_683e;
const NFS_MAGIC: i64 = 0x6969;
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
const SQUASHFS_MAGIC: i64 = 0x7371_7368;
const FUSE_MAGIC: i64 = 0x6573_5546;

/// What can go wrong, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// Changing swap needs root.
    #[error("changing host swap needs root (CAP_SYS_ADMIN): run `sudo memvisor swap ...`")]
    NotRoot,
    /// A device is in use already.
    #[error("{device} is busy: {reason}; nothing was changed")]
    Busy {
        /// The device.
        device: String,
        /// Why (e.g. already swap, already configured).
        reason: String,
    },
    /// No zram device could be used or created.
    #[error(
        "no unused zram device: {reason}; free one with `memvisor swap off /dev/zramN`, or load \
         the module with `modprobe zram num_devices=2`"
    )]
    NoZram {
        /// What was found.
        reason: String,
    },
    /// The compression algorithm is not offered by the kernel.
    #[error("zram algorithm `{asked}` is not offered by this kernel; use one of: {offered}")]
    Algorithm {
        /// What was asked.
        asked: String,
        /// What `comp_algorithm` lists.
        offered: String,
    },
    /// The filesystem cannot hold a swap file.
    #[error("{path}: a {fs} filesystem cannot hold a swap file: {advice}", path = path.display())]
    Filesystem {
        /// The swap file asked for.
        path: PathBuf,
        /// The filesystem type.
        fs: &'static str,
        /// What to do instead.
        advice: &'static str,
    },
    /// A size that makes no swap area.
    #[error("swap size {0} is too small: give at least 1M (mkswap needs 10 pages)")]
    TooSmall(Size),
    /// Reading or writing a file or sysfs attribute failed.
    #[error("{what} {path}: {source}{hint}", path = path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
        /// What to try.
        hint: String,
    },
    /// `mkswap` (or `modprobe`) could not run or failed.
    #[error("`{command}` failed: {detail}{hint}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it could not start.
        detail: String,
        /// What to do.
        hint: &'static str,
    },
    /// `swapon(2)` or `swapoff(2)` failed.
    #[error("{call}({path}): {source}: {advice}", path = path.display())]
    Syscall {
        /// `swapon` or `swapoff`.
        call: &'static str,
        /// The device or file.
        path: PathBuf,
        /// The error.
        source: io::Error,
        /// What it means here.
        advice: String,
    },
    /// `off` named something that is not active swap.
    #[error("{0} is not an active swap device (see `memvisor swap status`)")]
    NotSwap(String),
}

fn io_err(what: &'static str, path: &Path, hint: &str) -> impl FnOnce(io::Error) -> SwapError {
    let path = path.to_path_buf();
    let hint = hint.to_string();
    move |source| SwapError::Io {
        what,
        path,
        source,
        hint,
    }
}

/// One active swap area (a line of `/proc/swaps`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwapDevice {
    /// Device or file.
    pub path: PathBuf,
    /// `partition` or `file`.
    pub kind: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Bytes swapped out to it.
    pub used_bytes: u64,
    /// Priority (higher is used first).
    pub priority: i32,
    /// Whether memvisor set it up (it is in the state file).
    pub set_up_by_memvisor: bool,
}

impl SwapDevice {
    /// `/dev/zram0 (partition): 754 MiB used of 2.00 GiB, priority 100`.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}): {} used of {}, priority {}",
            self.path.display(),
            self.kind,
            Size(self.used_bytes),
            Size(self.size_bytes),
            self.priority
        )
    }
}

/// One zram device (`/sys/block/zramN`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZramDevice {
    /// `/dev/zramN`.
    pub path: PathBuf,
    /// Uncompressed capacity (`disksize`); 0 when unconfigured.
    pub disksize_bytes: u64,
    /// The compression algorithm in use.
    pub algorithm: String,
    /// The algorithms the kernel offers.
    pub algorithms: Vec<String>,
    /// Data stored, uncompressed (`mm_stat` field 1).
    pub orig_data_bytes: u64,
    /// Data stored, compressed (`mm_stat` field 2).
    pub compr_data_bytes: u64,
    /// Memory the device uses, allocator overhead included (`mm_stat` field 3).
    pub mem_used_bytes: u64,
    /// Stored bytes per byte of memory used (`orig / mem_used`); `None` while empty.
    pub compression_ratio: Option<f64>,
}

impl ZramDevice {
    /// `/dev/zram0: disksize 2 GiB, lz4, holds 754 MiB in 380 MiB of RAM (compression ratio
    /// 1.98x)`, or that it is unconfigured.
    pub fn summary(&self) -> String {
        if self.disksize_bytes == 0 {
            return format!(
                "{}: unconfigured (algorithms: {})",
                self.path.display(),
                self.algorithms.join(" ")
            );
        }
        let ratio = self
            .compression_ratio
            .map(|r| format!("{r:.2}x"))
            .unwrap_or_else(|| "-".into());
        format!(
            "{}: disksize {}, {}, holds {} in {} of RAM (compression ratio {ratio})",
            self.path.display(),
            Size(self.disksize_bytes),
            self.algorithm,
            Size(self.orig_data_bytes),
            Size(self.mem_used_bytes),
        )
    }
}

/// What memvisor set up (the state file's entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SetUp {
    /// A zram device configured and swapped on.
    Zram {
        /// `/dev/zramN`.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
    },
    /// A swap file created and swapped on.
    File {
        /// The file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
    },
}

impl SetUp {
    /// The device or file.
    pub fn path(&self) -> &Path {
        match self {
            SetUp::Zram { path, .. } | SetUp::File { path, .. } => path,
        }
    }
}

/// The host's swap as `memvisor swap status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwapStatus {
    /// Active swap areas.
    pub devices: Vec<SwapDevice>,
    /// zram devices, configured or not.
    pub zram: Vec<ZramDevice>,
    /// `vm.swappiness`.
    pub swappiness: u32,
    /// Sum of the active areas' sizes.
    pub total_bytes: u64,
    /// Sum of what is swapped out.
    pub used_bytes: u64,
    /// What memvisor set up (from the state file).
    pub set_up: Vec<SetUp>,
    /// Where that record lives.
    pub state_file: PathBuf,
}

/// The state file in the default runtime directory.
pub fn default_state_file() -> PathBuf {
    crate::config::default_runtime_dir().join(STATE_FILE)
}

/// Parses `/proc/swaps` text (sizes in KiB; spaces in names escaped as `\040`).
pub fn parse_proc_swaps(text: &str) -> Vec<SwapDevice> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() < 5 {
                return None;
            }
            let n = t.len();
            let name = t[..n - 4].join(" ").replace("\\040", " ");
            Some(SwapDevice {
                path: PathBuf::from(name),
                kind: t[n - 4].to_string(),
                size_bytes: t[n - 3].parse::<u64>().ok()? * 1024,
                used_bytes: t[n - 2].parse::<u64>().ok()? * 1024,
                priority: t[n - 1].parse().ok()?,
                set_up_by_memvisor: false,
            })
        })
        .collect()
}

/// The active swap areas.
pub fn active() -> Result<Vec<SwapDevice>, SwapError> {
    let text = fs::read_to_string(PROC_SWAPS).map_err(io_err(
        "reading",
        Path::new(PROC_SWAPS),
        " (is /proc mounted?)",
    ))?;
    Ok(parse_proc_swaps(&text))
}

/// `vm.swappiness`.
pub fn swappiness() -> Result<u32, SwapError> {
    let p = Path::new(SWAPPINESS);
    let t = fs::read_to_string(p).map_err(io_err("reading", p, ""))?;
    t.trim().parse().map_err(|_| SwapError::Io {
        what: "parsing",
        path: p.into(),
        source: io::Error::new(io::ErrorKind::InvalidData, t.trim().to_string()),
        hint: String::new(),
    })
}

/// Sets `vm.swappiness` and returns the value before.
pub fn set_swappiness(value: u32) -> Result<u32, SwapError> {
    let before = swappiness()?;
    let p = Path::new(SWAPPINESS);
    fs::write(p, value.to_string()).map_err(io_err("writing", p, " (needs root; 0-200)"))?;
    Ok(before)
}

/// Parses `comp_algorithm` (`lzo [lz4] zstd`): (in use, offered).
pub fn parse_algorithms(text: &str) -> (String, Vec<String>) {
    let mut current = String::new();
    let all = text
        .split_whitespace()
        .map(|w| {
            if let Some(inner) = w.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                current = inner.to_string();
                inner.to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    (current, all)
}

fn zram_sys(name: &str) -> PathBuf {
    Path::new(SYS_BLOCK).join(name)
}

fn read_attr(dir: &Path, attr: &str) -> Result<String, SwapError> {
    let p = dir.join(attr);
    fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(io_err("reading", &p, ""))
}

fn write_attr(dir: &Path, attr: &str, value: &str, hint: &str) -> Result<(), SwapError> {
    let p = dir.join(attr);
    fs::write(&p, value).map_err(io_err("writing", &p, hint))
}

/// One zram device's state (`name` like `zram0`).
pub fn zram_device(name: &str) -> Result<ZramDevice, SwapError> {
    let dir = zram_sys(name);
    let disksize = read_attr(&dir, "disksize")?.parse().unwrap_or(0);
    let (algorithm, algorithms) = parse_algorithms(&read_attr(&dir, "comp_algorithm")?);
    let mm: Vec<u64> = read_attr(&dir, "mm_stat")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let field = |i: usize| mm.get(i).copied().unwrap_or(0);
    let (orig, compr, used) = (field(0), field(1), field(2));
    Ok(ZramDevice {
        path: Path::new("/dev").join(name),
        disksize_bytes: disksize,
        algorithm,
        algorithms,
        orig_data_bytes: orig,
        compr_data_bytes: compr,
        mem_used_bytes: used,
        compression_ratio: (used > 0).then(|| orig as f64 / used as f64),
    })
}

/// Names of the zram devices (`zram0`, ...), in order.
pub fn zram_names() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(SYS_BLOCK)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix("zram")
                        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|n| n[4..].parse::<u32>().unwrap_or(u32::MAX));
    v
}

/// Reads the record of what memvisor set up (empty when there is none).
pub fn read_state(file: &Path) -> Result<Vec<SetUp>, SwapError> {
    match fs::read(file) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| SwapError::Io {
            what: "parsing",
            path: file.into(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
            hint: " (remove the file if it is damaged; `memvisor swap off DEVICE` still works)"
                .into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("reading", file, "")(e)),
    }
}

fn write_state(file: &Path, entries: &[SetUp]) -> Result<(), SwapError> {
    if entries.is_empty() {
        return match fs::remove_file(file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", file, "")(e)),
            _ => Ok(()),
        };
    }
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(io_err("creating", dir, ""))?;
    }
    let tmp = file.with_extension("json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(entries).expect("serialises"),
    )
    .map_err(io_err("writing", &tmp, ""))?;
    fs::rename(&tmp, file).map_err(io_err("renaming", &tmp, ""))
}

/// The whole picture, with what the state file `state` says memvisor set up.
pub fn status(state: &Path) -> Result<SwapStatus, SwapError> {
    let set_up = read_state(state)?;
    let mut devices = active()?;
    for d in &mut devices {
        d.set_up_by_memvisor = set_up.iter().any(|s| s.path() == d.path);
    }
    let zram = zram_names()
        .iter()
        .filter_map(|n| zram_device(n).ok())
        .collect();
    Ok(SwapStatus {
        total_bytes: devices.iter().map(|d| d.size_bytes).sum(),
        used_bytes: devices.iter().map(|d| d.used_bytes).sum(),
        devices,
        zram,
        swappiness: swappiness()?,
        set_up,
        state_file: state.to_path_buf(),
    })
}

/// `memvisor swap status` as text.
pub fn status_text(s: &SwapStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "swap: {} used of {}; vm.swappiness {}",
        Size(s.used_bytes),
        Size(s.total_bytes),
        s.swappiness
    );
    if s.devices.is_empty() {
        let _ = writeln!(
            o,
            "  no active swap (set some up: `memvisor swap zram 2G` or `memvisor swap file PATH 4G`)"
        );
    }
    for d in &s.devices {
        let _ = writeln!(
            o,
            "  {}{}",
            d.summary(),
            if d.set_up_by_memvisor {
                ", set up by memvisor"
            } else {
                ""
            }
        );
    }
    for z in &s.zram {
        let _ = writeln!(o, "  {}", z.summary());
    }
    o
}

fn require_root() -> Result<(), SwapError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(SwapError::NotRoot)
    }
}

fn mkswap(path: &Path) -> Result<(), SwapError> {
    let command = format!("mkswap {}", path.display());
    let hint = " (mkswap is in util-linux: `apt-get install util-linux`)";
    let out = Command::new("mkswap")
        .arg(path)
        .output()
        .map_err(|e| SwapError::Tool {
            command: command.clone(),
            detail: e.to_string(),
            hint,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SwapError::Tool {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            hint: "",
        })
    }
}

fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// `swapon(2)` with a priority (`None`: the kernel's default, below every other).
pub fn swapon(path: &Path, priority: Option<i32>) -> Result<(), SwapError> {
    let flags = priority.map_or(0, |p| SWAP_FLAG_PREFER | (p & SWAP_FLAG_PRIO_MASK));
    let c = c_path(path);
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::swapon(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let advice = match source.raw_os_error() {
        Some(libc::EBUSY) => "it is already in use (as swap, or mounted)".into(),
        Some(libc::EINVAL) => {
            "its filesystem cannot hold swap, or it has holes (swap files must be fully allocated)"
                .into()
        }
        Some(libc::EPERM) => {
            "needs root (CAP_SYS_ADMIN), or the kernel's swap limit is reached".into()
        }
        _ => "see swapon(2)".into(),
    };
    Err(SwapError::Syscall {
        call: "swapon",
        path: path.into(),
        source,
        advice,
    })
}

/// `swapoff(2)`: brings everything swapped to `path` back into RAM first.
pub fn swapoff(path: &Path) -> Result<(), SwapError> {
    let c = c_path(path);
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::swapoff(c.as_ptr()) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let advice = match source.raw_os_error() {
        Some(libc::ENOMEM) => {
            "there is not enough free RAM to bring back what is swapped out there; free memory \
             (shrink guests with their balloons) and try again"
                .into()
        }
        Some(libc::EINVAL) => "it is not active swap".into(),
        _ => "see swapoff(2)".into(),
    };
    Err(SwapError::Syscall {
        call: "swapoff",
        path: path.into(),
        source,
        advice,
    })
}

fn zram_name_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    (path.parent() == Some(Path::new("/dev")) && zram_sys(name).join("disksize").exists())
        .then(|| name.to_string())
}

fn zram_reset(name: &str) -> Result<(), SwapError> {
    write_attr(
        &zram_sys(name),
        "reset",
        "1",
        " (is it still swap or mounted? `swapoff` it first)",
    )
}

/// An unused zram device: the one named, or the first with disksize 0 and not active swap, or
/// a new one from `hot_add` (after `modprobe zram` when the module is not loaded).
fn pick_zram(named: Option<&Path>, active: &[SwapDevice]) -> Result<String, SwapError> {
    let in_use = |name: &str| -> Option<String> {
        if active
            .iter()
            .any(|d| d.path == Path::new("/dev").join(name))
        {
            return Some("it is active swap".into());
        }
        let size: u64 = read_attr(&zram_sys(name), "disksize")
            .ok()?
            .parse()
            .unwrap_or(0);
        (size > 0).then(|| format!("it is configured already (disksize {})", Size(size)))
    };
    if let Some(p) = named {
        let name = zram_name_of(p).ok_or_else(|| SwapError::NoZram {
            reason: format!("{} is not a zram device", p.display()),
        })?;
        if let Some(reason) = in_use(&name) {
            return Err(SwapError::Busy {
                device: p.display().to_string(),
                reason,
            });
        }
        return Ok(name);
    }
    if zram_names().is_empty() && !Path::new(ZRAM_HOT_ADD).exists() {
        let out = Command::new("modprobe").arg("zram").output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            return Err(SwapError::Tool {
                command: "modprobe zram".into(),
                detail: match out {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                },
                hint: " (this kernel may lack zram: use `memvisor swap file PATH SIZE`)",
            });
        }
    }
    let mut busy = Vec::new();
    for name in zram_names() {
        match in_use(&name) {
            None => return Ok(name),
            Some(why) => busy.push(format!("{name}: {why}")),
        }
    }
    if Path::new(ZRAM_HOT_ADD).exists() {
        // Reading hot_add creates a device and answers its number.
        let id = fs::read_to_string(ZRAM_HOT_ADD)
            .map(|s| s.trim().to_string())
            .map_err(io_err("reading", Path::new(ZRAM_HOT_ADD), ""))?;
        return Ok(format!("zram{id}"));
    }
    Err(SwapError::NoZram {
        reason: if busy.is_empty() {
            "no /sys/block/zram* device".into()
        } else {
            busy.join("; ")
        },
    })
}

/// What a set-up or tear-down changed, one line each.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SwapChange {
    /// Human-readable lines (`zram0: disksize 0 B -> 2 GiB`).
    pub lines: Vec<String>,
}

impl std::fmt::Display for SwapChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Configures a zram device of `size` bytes (uncompressed) with `algorithm` (the kernel's
/// default when `None`), makes it swap and switches it on at `priority`; records it in `state`.
/// On any failure the device is reset and nothing stays changed.
pub fn setup_zram(
    size: u64,
    algorithm: Option<&str>,
    device: Option<&Path>,
    priority: i32,
    state: &Path,
) -> Result<SwapChange, SwapError> {
    require_root()?;
    if size < 1 << 20 {
        return Err(SwapError::TooSmall(Size(size)));
    }
    let active = active()?;
    let name = pick_zram(device, &active)?;
    let before = zram_device(&name)?;
    if let Some(a) = algorithm {
        if !before.algorithms.iter().any(|x| x == a) {
            return Err(SwapError::Algorithm {
                asked: a.into(),
                offered: before.algorithms.join(", "),
            });
        }
    }
    let dir = zram_sys(&name);
    let path = Path::new("/dev").join(&name);
    let undo = |e: SwapError| {
        let _ = zram_reset(&name);
        e
    };
    if let Some(a) = algorithm {
        write_attr(&dir, "comp_algorithm", a, "").map_err(undo)?;
    }
    write_attr(
        &dir,
        "disksize",
        &size.to_string(),
        " (is the size too large for the kernel's limits?)",
    )
    .map_err(undo)?;
    mkswap(&path).map_err(undo)?;
    swapon(&path, Some(priority)).map_err(undo)?;
    let mut entries = read_state(state)?;
    entries.push(SetUp::Zram {
        path: path.clone(),
        size_bytes: size,
    });
    write_state(state, &entries)?;
    let after = zram_device(&name)?;
    Ok(SwapChange {
        lines: vec![
            format!(
                "{}: disksize {} -> {}, algorithm {} -> {}",
                path.display(),
                Size(before.disksize_bytes),
                Size(after.disksize_bytes),
                before.algorithm,
                after.algorithm
            ),
            format!(
                "{}: swap on, priority {priority} (recorded in {})",
                path.display(),
                state.display()
            ),
        ],
    })
}

/// Why a filesystem cannot hold a swap file, by `statfs` type.
fn unfit_filesystem(f_type: i64) -> Option<(&'static str, &'static str)> {
    match f_type {
        TMPFS_MAGIC | RAMFS_MAGIC => Some((
            "tmpfs/ramfs",
            "its files live in RAM, so swapping to them frees nothing; put the file on a disk \
             filesystem (ext4, xfs) or use `memvisor swap zram SIZE`",
        )),
        BTRFS_MAGIC => Some((
            "btrfs",
            "btrfs swap files must be NOCOW and outside snapshots; create one with `btrfs \
             filesystem mkswapfile --size SIZE PATH` and `swapon PATH`, or use ext4/xfs",
        )),
        NFS_MAGIC | FUSE_MAGIC => Some((
            "network/FUSE",
            "the kernel swaps only to local block storage; use a local filesystem or zram",
        )),
        OVERLAYFS_MAGIC => Some((
            "overlayfs",
            "swapon refuses overlay files; use a path on the underlying disk filesystem",
        )),
        SQUASHFS_MAGIC => Some((
            "squashfs",
            "it is read-only; use a writable disk filesystem",
        )),
        _ => None,
    }
}

/// Creates a fully allocated swap file of `size` bytes at `path` (which must not exist),
/// makes it swap and switches it on; records it in `state`. Refuses filesystems that cannot
/// hold one; on any failure the file is removed.
pub fn setup_file(
    path: &Path,
    size: u64,
    priority: Option<i32>,
    state: &Path,
) -> Result<SwapChange, SwapError> {
    use std::os::unix::fs::OpenOptionsExt;
    require_root()?;
    if size < 1 << 20 {
        return Err(SwapError::TooSmall(Size(size)));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fs_stat = nix::sys::statfs::statfs(&dir).map_err(|e| {
        io_err(
            "checking the filesystem of",
            &dir,
            " (does the directory exist?)",
        )(e.into())
    })?;
    if let Some((fs, advice)) = unfit_filesystem(fs_stat.filesystem_type().0 as i64) {
        return Err(SwapError::Filesystem {
            path: path.into(),
            fs,
            advice,
        });
    }
    let free = fs_stat.blocks_available() * fs_stat.block_size() as u64;
    if free < size {
        return Err(SwapError::Io {
            what: "creating",
            path: path.into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
            hint: format!(
                " ({} free on that filesystem, {} asked)",
                Size(free),
                Size(size)
            ),
        });
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(
            "creating",
            path,
            " (it must not exist yet: memvisor never overwrites a file)",
        ))?;
    let cleanup = |e: SwapError| {
        let _ = fs::remove_file(path);
        e
    };
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, size as i64).map_err(
        |e| cleanup(io_err("allocating", path, " (swap files need real blocks)")(e.into())),
    )?;
    file.sync_all()
        .map_err(|e| cleanup(io_err("syncing", path, "")(e)))?;
    drop(file);
    mkswap(path).map_err(cleanup)?;
    swapon(path, priority).map_err(cleanup)?;
    let mut entries = read_state(state)?;
    entries.push(SetUp::File {
        path: path.into(),
        size_bytes: size,
    });
    write_state(state, &entries)?;
    Ok(SwapChange {
        lines: vec![format!(
            "{}: swap file of {} created and on{} (recorded in {})",
            path.display(),
            Size(size),
            priority
                .map(|p| format!(", priority {p}"))
                .unwrap_or_default(),
            state.display()
        )],
    })
}

fn undo_one(
    entry: &SetUp,
    active: &[SwapDevice],
    change: &mut SwapChange,
) -> Result<(), SwapError> {
    let path = entry.path();
    if let Some(d) = active.iter().find(|d| d.path == path) {
        swapoff(path)?;
        change.lines.push(format!(
            "{}: swap off ({} brought back into RAM)",
            path.display(),
            Size(d.used_bytes)
        ));
    }
    match entry {
        SetUp::Zram { .. } => {
            if let Some(name) = zram_name_of(path) {
                zram_reset(&name)?;
                change.lines.push(format!(
                    "{}: reset (disksize 0, memory freed)",
                    path.display()
                ));
            }
        }
        SetUp::File { .. } => match fs::remove_file(path) {
            Ok(()) => change.lines.push(format!("{}: removed", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", path, "")(e)),
        },
    }
    Ok(())
}

/// `memvisor swap off [DEVICE]`: without a device, switches off and resets (zram) or removes
/// (file) everything memvisor set up; with one, switches that off (and resets or removes it
/// too if memvisor set it up).
pub fn off(device: Option<&Path>, state: &Path) -> Result<SwapChange, SwapError> {
    require_root()?;
    let active = active()?;
    let mut entries = read_state(state)?;
    let mut change = SwapChange::default();
    match device {
        Some(dev) => {
            let dev = fs::canonicalize(dev).unwrap_or_else(|_| dev.to_path_buf());
            if let Some(i) = entries.iter().position(|e| e.path() == dev) {
                let entry = entries.remove(i);
                undo_one(&entry, &active, &mut change)?;
            } else if let Some(d) = active.iter().find(|d| d.path == dev) {
                swapoff(&dev)?;
                change.lines.push(format!(
                    "{}: swap off ({} brought back into RAM); memvisor did not set it up, so it \
                     is left configured",
                    dev.display(),
                    Size(d.used_bytes)
                ));
            } else {
                return Err(SwapError::NotSwap(dev.display().to_string()));
            }
        }
        None => {
            if entries.is_empty() {
                change.lines.push(format!(
                    "memvisor set up no swap (nothing in {}); {} active area(s) left alone: name \
                     one to switch it off",
                    state.display(),
                    active.len()
                ));
            }
            while let Some(entry) = entries.first().cloned() {
                undo_one(&entry, &active, &mut change)?;
                entries.remove(0);
                write_state(state, &entries)?;
            }
        }
    }
    write_state(state, &entries)?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_swaps_parses() {
        let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                 /dev/zram0                              partition\t2097148\t\t1024\t\t100\n\
                 /var/my\\040swap                         file\t\t1048572\t\t0\t\t-2\n";
        let d = parse_proc_swaps(t);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, Path::new("/dev/zram0"));
        assert_eq!(d[0].size_bytes, 2097148 * 1024);
        assert_eq!(d[0].used_bytes, 1024 * 1024);
        assert_eq!(d[0].priority, 100);
        assert_eq!(d[1].path, Path::new("/var/my swap"));
        assert_eq!(d[1].kind, "file");
        assert_eq!(d[1].priority, -2);
        assert!(parse_proc_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn algorithms_parse() {
        let (cur, all) = parse_algorithms("lzo [lz4] zstd\n");
        assert_eq!(cur, "lz4");
        assert_eq!(all, vec!["lzo", "lz4", "zstd"]);
    }

    #[test]
    fn unfit_filesystems_are_named() {
        assert!(unfit_filesystem(TMPFS_MAGIC).is_some());
        assert!(unfit_filesystem(BTRFS_MAGIC).is_some());
        assert!(unfit_filesystem(0xEF53).is_none(), "ext4 holds swap files");
    }

    #[test]
    fn state_round_trips() {
        let dir = std::env::temp_dir().join(format!("memvisor-swap-state-{}", std::process::id()));
        let file = dir.join(STATE_FILE);
        assert!(read_state(&file).unwrap().is_empty());
        let e = vec![SetUp::Zram {
            path: "/dev/zram0".into(),
            size_bytes: 1 << 30,
        }];
        write_state(&file, &e).unwrap();
        assert_eq!(read_state(&file).unwrap(), e);
        write_state(&file, &[]).unwrap();
        assert!(!file.exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
