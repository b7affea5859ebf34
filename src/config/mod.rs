//! VM configuration: what the user asked for, parsed once from the CLI (or a JSON file) and
//! checked for consistency before anything is mapped or created.
//!
//! This module owns the option syntax (`size=1G,backend=hugetlbfs,...`), size parsing and the
//! rules that need no host state. Checks against the host (is the hugepage pool large enough,
//! is the path on hugetlbfs) belong to the memory module, which runs them before mapping.

pub mod disk;
pub mod linux;
pub mod net;
pub mod workload;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The environment variable naming the runtime directory (where running VMs register and
/// `memvisor swap` records what it set up).
pub const RUNTIME_DIR_ENV: &str = "MEMVISOR_RUNTIME_DIR";

/// `$MEMVISOR_RUNTIME_DIR`, else `/run/memvisor` for root, else `$XDG_RUNTIME_DIR/memvisor`,
/// else `/tmp/memvisor-<uid>`.
pub fn default_runtime_dir() -> PathBuf {
    if let Some(p) = std::env::var_os(RUNTIME_DIR_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/memvisor");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => PathBuf::from(d).join("memvisor"),
        None => PathBuf::from(format!("/tmp/memvisor-{uid}")),
    }
}
use workload::Workload;

/// Configuration errors. Each names the region or flag, the option and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A size that does not parse.
    #[error("{what}: `{value}` is not a size; write e.g. 512M, 4G, 2048K or a byte count")]
    BadSize {
        /// Where the size was given.
        what: String,
        /// The text given.
        value: String,
    },
    /// An option of a `--memory` region that is wrong.
    #[error("memory region {region}: option `{option}`: {reason}")]
    Region {
        /// Region index (order of `--memory` flags).
        region: usize,
        /// The option.
        option: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// An option of a `--disk` that is wrong.
    #[error("disk {disk}: option `{option}`: {reason}")]
    Disk {
        /// Disk index (order of `--disk` flags).
        disk: usize,
        /// The option.
        option: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// An option of a `--net` that is wrong.
    #[error("net {net}: option `{option}`: {reason}")]
    Net {
        /// Interface index (order of `--net` flags).
        net: usize,
        /// The option.
        option: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A bad `--pin` entry.
    #[error("--pin `{0}`: expected VCPU=HOSTCPU pairs such as 0=2,1=3 (vCPU below --vcpus, host CPU online)")]
    BadPin(String),
    /// A bad vCPU count.
    #[error("--vcpus {0}: must be between 1 and {max}", max = crate::abi::MAX_VCPUS)]
    BadVcpus(u32),
    /// A bad workload.
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    /// The JSON config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Something else that does not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// How a region's host memory is provided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Backend {
    /// Anonymous memory; `shared` uses a memfd mapped `MAP_SHARED`.
    Anon {
        /// `MAP_SHARED` through a memfd instead of private anonymous memory.
        #[serde(default)]
        shared: bool,
        /// `Some(true)`: `MADV_HUGEPAGE`; `Some(false)`: `MADV_NOHUGEPAGE`; `None`: host default.
        #[serde(default)]
        thp: Option<bool>,
    },
    /// A file on a hugetlbfs mount (QEMU's `-mem-path`).
    Hugetlbfs {
        /// A directory on a hugetlbfs mount.
        mem_path: PathBuf,
    },
    /// A memfd, optionally on huge pages.
    Memfd {
        /// Huge page size when `hugetlb=on`.
        #[serde(default)]
        hugepage_size: Option<u64>,
    },
    /// Pages served on demand through userfaultfd.
    Uffd {
        /// An image of guest memory to serve bytes from; zero pages when `None`.
        #[serde(default)]
        source: Option<PathBuf>,
        /// Bytes served per fault (4K..=2M, power of two).
        #[serde(default = "default_fetch")]
        fetch: u64,
        /// Hand the region to an external handler at this Unix socket instead; regions naming
        /// the same socket share one connection, one userfaultfd and one message, with offsets
        /// cumulative in region order (see `memory::pager`).
        #[serde(default)]
        external_socket: Option<PathBuf>,
    },
}

fn default_fetch() -> u64 {
    4096
}

impl Backend {
    /// Short name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Anon { shared: false, .. } => "anon",
            Backend::Anon { shared: true, .. } => "anon-shared",
            Backend::Hugetlbfs { .. } => "hugetlbfs",
            Backend::Memfd {
                hugepage_size: None,
            } => "memfd",
            Backend::Memfd { .. } => "memfd-hugetlb",
            Backend::Uffd { .. } => "uffd",
        }
    }
}

/// One guest RAM region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionConfig {
    /// Size in bytes.
    pub size: u64,
    /// Backing.
    #[serde(flatten)]
    pub backend: Backend,
    /// Populate every page before the guest starts.
    #[serde(default)]
    pub prealloc: bool,
    /// Threads used to prealloc (0: one per host CPU, at most 8).
    #[serde(default)]
    pub prealloc_threads: usize,
    /// Mark the region `MADV_MERGEABLE` for KSM.
    #[serde(default)]
    pub mergeable: bool,
    /// `resident-limit=SIZE`: the VM's standing limit on resident guest RAM (all regions
    /// together; give it on one region only): past it, memvisor pages the coldest guest memory
    /// out to host swap (see `crate::control::reclaim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_limit: Option<u64>,
}

impl RegionConfig {
    /// Private anonymous memory of `size` bytes, host defaults.
    pub fn anon(size: u64) -> Self {
        RegionConfig {
            size,
            backend: Backend::Anon {
                shared: false,
                thp: None,
            },
            prealloc: false,
            prealloc_threads: 0,
            mergeable: false,
            resident_limit: None,
        }
    }

    /// Parses one `--memory` value (`size=1G,backend=...,...`) for region `index`.
    pub fn parse(index: usize, text: &str) -> Result<Self, ConfigError> {
        let err = |option: &str, reason: String| ConfigError::Region {
            region: index,
            option: option.to_string(),
            reason,
        };
        let mut opts: BTreeMap<String, String> = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                // A bare size (`--memory 512M`) is accepted as `size=512M`.
                None if opts.is_empty() && parse_size(part).is_some() => ("size", part),
                None => return Err(err(part, "expected key=value".into())),
            };
            if opts.insert(k.replace('_', "-"), v.to_string()).is_some() {
                return Err(err(k, "given twice".into()));
            }
        }
        let mut take = |k: &str| opts.remove(k);
        let size_text =
            take("size").ok_or_else(|| err("size", "missing; add e.g. size=512M".into()))?;
        let size = parse_size(&size_text).ok_or_else(|| {
            err(
                "size",
                format!("`{size_text}` is not a size (e.g. 512M, 4G)"),
            )
        })?;
        let on_off = |k: &str, v: Option<String>| -> Result<Option<bool>, ConfigError> {
            match v.as_deref() {
                None => Ok(None),
                Some("on" | "true" | "yes" | "1") => Ok(Some(true)),
                Some("off" | "false" | "no" | "0") => Ok(Some(false)),
                Some(o) => Err(err(k, format!("`{o}`: write on or off"))),
            }
        };
        let prealloc = on_off("prealloc", take("prealloc"))?.unwrap_or(false);
        let mergeable = on_off("mergeable", take("mergeable"))?.unwrap_or(false);
        let prealloc_threads = match take("prealloc-threads") {
            None => 0,
            Some(t) => t
                .parse()
                .map_err(|_| err("prealloc-threads", format!("`{t}` is not a thread count")))?,
        };
        let resident_limit = match take("resident-limit") {
            None => None,
            Some(t) => Some(parse_size(&t).ok_or_else(|| {
                err("resident-limit", format!("`{t}` is not a size (e.g. 256M)"))
            })?),
        };
        let backend_name = take("backend").unwrap_or_else(|| "anon".into());
        let backend = match backend_name.as_str() {
            "anon" => Backend::Anon {
                shared: on_off("shared", take("shared"))?.unwrap_or(false),
                thp: on_off("thp", take("thp"))?,
            },
            "hugetlbfs" => Backend::Hugetlbfs {
                mem_path: take("mem-path")
                    .map(PathBuf::from)
                    .ok_or_else(|| err("mem-path", "backend=hugetlbfs needs mem-path=DIR, a hugetlbfs mount such as /dev/hugepages (see `memvisor hugepages mount`)".into()))?,
            },
            "memfd" => {
                let hugetlb = on_off("hugetlb", take("hugetlb"))?.unwrap_or(false);
                let hps = take("hugepage-size");
                let hugepage_size = match (hugetlb, hps) {
                    (false, None) => None,
                    (false, Some(_)) => return Err(err("hugepage-size", "only with hugetlb=on".into())),
                    (true, None) => Some(2 << 20),
                    (true, Some(s)) => match parse_size(&s) {
                        Some(b) if b == 2 << 20 || b == 1 << 30 => Some(b),
                        _ => return Err(err("hugepage-size", format!("`{s}`: write 2M or 1G"))),
                    },
                };
                Backend::Memfd { hugepage_size }
            }
            "uffd" => {
                let fetch = match take("fetch") {
                    None => default_fetch(),
                    Some(f) => parse_size(&f).ok_or_else(|| err("fetch", format!("`{f}` is not a size")))?,
                };
                let handler = take("handler").unwrap_or_else(|| "internal".into());
                let socket = take("socket").map(PathBuf::from);
                let external_socket = match (handler.as_str(), socket) {
                    ("internal", None) => None,
                    ("internal", Some(_)) => {
                        return Err(err("socket", "only with handler=external".into()))
                    }
                    ("external", Some(s)) => Some(s),
                    ("external", None) => {
                        return Err(err("socket", "handler=external needs socket=PATH of the page-fault handler".into()))
                    }
                    (h, _) => return Err(err("handler", format!("`{h}`: write internal or external"))),
                };
                Backend::Uffd {
                    source: take("source").map(PathBuf::from),
                    fetch,
                    external_socket,
                }
            }
            other => {
                return Err(err(
                    "backend",
                    format!("`{other}`: write anon, hugetlbfs, memfd or uffd"),
                ))
            }
        };
        if let Some(k) = opts.keys().next() {
            return Err(err(k, format!("unknown for backend={backend_name}")));
        }
        let region = RegionConfig {
            size,
            backend,
            prealloc,
            prealloc_threads,
            mergeable,
            resident_limit,
        };
        region.check(index)?;
        Ok(region)
    }

    /// Rules that need no host state.
    pub fn check(&self, index: usize) -> Result<(), ConfigError> {
        let err = |option: &str, reason: String| ConfigError::Region {
            region: index,
            option: option.to_string(),
            reason,
        };
        if self.size == 0 || self.size % 4096 != 0 {
            return Err(err(
                "size",
                format!("{} is not a positive multiple of 4 KiB", self.size),
            ));
        }
        if let Backend::Memfd {
            hugepage_size: Some(hp),
        } = self.backend
        {
            // The spec parser only yields these; a JSON config file can hold any number
            // (0 used to panic on the division below).
            if hp != 2 << 20 && hp != 1 << 30 {
                return Err(err(
                    "hugepage-size",
                    format!("{hp} bytes is not a huge page size; write 2M or 1G"),
                ));
            }
            if self.size % hp != 0 {
                return Err(err(
                    "size",
                    format!(
                        "{} is not a multiple of the {} huge page size",
                        Size(self.size),
                        Size(hp)
                    ),
                ));
            }
        }
        if let Backend::Uffd {
            source,
            fetch,
            external_socket,
        } = &self.backend
        {
            if !fetch.is_power_of_two() || !(4096..=2 << 20).contains(fetch) {
                return Err(err(
                    "fetch",
                    format!("{} must be a power of two from 4K to 2M", Size(*fetch)),
                ));
            }
            if self.prealloc && external_socket.is_some() {
                return Err(err("prealloc", "an external handler serves the pages; prealloc=on cannot be combined with handler=external".into()));
            }
            if external_socket.is_some() && source.is_some() {
                return Err(err("source", "an external handler serves the pages from its own memory file; remove source= or use handler=internal".into()));
            }
            if external_socket.is_some() && *fetch != default_fetch() {
                return Err(err("fetch", "an external handler decides how much it serves per fault; remove fetch= or use handler=internal".into()));
            }
        }
        if self.mergeable {
            let why = match &self.backend {
                Backend::Anon { shared: true, .. } => {
                    Some("KSM does not merge MAP_SHARED memory; use shared=off")
                }
                Backend::Hugetlbfs { .. } => {
                    Some("KSM does not merge hugetlb pages; use backend=anon")
                }
                Backend::Memfd { .. } => {
                    Some("KSM does not merge shared memfd memory; use backend=anon")
                }
                _ => None,
            };
            if let Some(why) = why {
                return Err(err("mergeable", why.into()));
            }
        }
        Ok(())
    }
}

/// The least RAM `memvisor run --kernel` accepts.
pub const LINUX_MIN_RAM_BYTES: u64 = 64 << 20;

/// Most guest RAM a VM may have in total (256 TiB): far below where laying regions out in
/// guest-physical space (after the MMIO hole and per-region alignment) could overflow.
pub const MAX_GUEST_RAM_BYTES: u64 = 1 << 48;

/// The whole VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM regions, laid out in this order from GPA 0 (skipping the MMIO hole).
    pub memory: Vec<RegionConfig>,
    /// vCPU index -> host CPU.
    #[serde(default)]
    pub pin: BTreeMap<u32, usize>,
    /// Host CPU of the device thread (`--pin devices=CPU`); without it, the device thread runs
    /// on the pinned vCPUs' CPUs ([`VmConfig::device_cpus`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_devices: Option<usize>,
    /// What the built-in guest does.
    pub workload: Workload,
    /// Triple-fault deliberately at entry (tests the failure path).
    #[serde(default)]
    pub triple_fault: bool,
    /// A virtio-balloon device.
    #[serde(default)]
    pub balloon: Option<balloon::BalloonOptions>,
    /// Boot this Linux kernel instead of the built-in guest (the workload is then unused).
    #[serde(default)]
    pub linux: Option<linux::LinuxConfig>,
    /// virtio-blk disks (Linux guests), in `--disk` order.
    #[serde(default)]
    pub disks: Vec<disk::DiskConfig>,
    /// virtio-net interfaces over taps (Linux guests), in `--net` order.
    #[serde(default)]
    pub nets: Vec<net::NetConfig>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vcpus: 1,
            memory: vec![RegionConfig::anon(512 << 20)],
            pin: BTreeMap::new(),
            pin_devices: None,
            workload: Workload::default_run(),
            triple_fault: false,
            balloon: None,
            linux: None,
            disks: Vec::new(),
            nets: Vec::new(),
        }
    }
}

impl VmConfig {
    /// The standing limit on resident guest RAM (`resident-limit=` of a `--memory` region).
    pub fn resident_limit(&self) -> Option<u64> {
        self.memory.iter().find_map(|r| r.resident_limit)
    }

    /// Total configured guest RAM (saturating: [`VmConfig::check`] refuses totals above
    /// [`MAX_GUEST_RAM_BYTES`]).
    pub fn ram_bytes(&self) -> u64 {
        self.memory.iter().fold(0, |t, r| t.saturating_add(r.size))
    }

    /// Checks everything that needs no host state.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus as usize > crate::abi::MAX_VCPUS {
            return Err(ConfigError::BadVcpus(self.vcpus));
        }
        if self.memory.is_empty() {
            return Err(ConfigError::Invalid(
                "no guest memory: give at least one --memory size=...".into(),
            ));
        }
        for (i, r) in self.memory.iter().enumerate() {
            r.check(i)?;
        }
        let limits: Vec<u64> = self
            .memory
            .iter()
            .filter_map(|r| r.resident_limit)
            .collect();
        match limits.as_slice() {
            [] => {}
            [l] if *l < 4 << 20 || *l > self.ram_bytes() => {
                return Err(ConfigError::Invalid(format!(
                    "resident-limit={} must lie between 4 MiB and the guest's RAM ({})",
                    Size(*l),
                    Size(self.ram_bytes())
                )))
            }
            [_] => {}
            _ => {
                return Err(ConfigError::Invalid(
                    "resident-limit is one limit for the whole VM: give it on one --memory \
                     region only"
                        .into(),
                ))
            }
        }
        if self.ram_bytes() > MAX_GUEST_RAM_BYTES {
            return Err(ConfigError::Invalid(format!(
                "guest RAM adds up to more than {}, the most memvisor lays out; give smaller \
                 --memory sizes",
                Size(MAX_GUEST_RAM_BYTES)
            )));
        }
        if self.linux.is_some() && self.ram_bytes() < LINUX_MIN_RAM_BYTES {
            return Err(ConfigError::Invalid(format!(
                "guest RAM {} is too small to boot Linux; give at least {}",
                Size(self.ram_bytes()),
                Size(LINUX_MIN_RAM_BYTES)
            )));
        }
        if self.linux.is_none() && self.ram_bytes() < crate::abi::MIN_RAM_BYTES {
            return Err(ConfigError::Invalid(format!(
                "guest RAM {} is below the built-in guest's minimum of {}",
                Size(self.ram_bytes()),
                Size(crate::abi::MIN_RAM_BYTES)
            )));
        }
        if let Some(b) = &self.balloon {
            if (b.amount_mib as u64) << 20 > self.ram_bytes() {
                return Err(ConfigError::Invalid(format!(
                    "--balloon amount_mib={} is larger than guest RAM ({})",
                    b.amount_mib,
                    Size(self.ram_bytes())
                )));
            }
        }
        for (&v, &c) in &self.pin {
            if v >= self.vcpus {
                return Err(ConfigError::BadPin(format!(
                    "{v}={c} (there are only {} vCPUs)",
                    self.vcpus
                )));
            }
        }
        disk::check_disks(&self.disks, self.linux.is_some())?;
        net::check_nets(&self.nets, self.linux.is_some())?;
        self.workload.check()?;
        Ok(())
    }
}

/// The `key[=value]` parts of a comma-separated device option list (`--disk`, `--net`), in
/// order, trimmed; `Err(key)` for a key given twice.
pub(crate) fn option_parts(text: &str) -> Result<Vec<(&str, Option<&str>)>, &str> {
    let mut out: Vec<(&str, Option<&str>)> = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (part.trim(), None),
        };
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(k);
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Whether `id` can name a device: 1 to `max` letters, digits, `-`, `_` or `.`.
pub(crate) fn valid_device_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Parses `--balloon amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1[,free_page_reporting=on]`.
pub fn parse_balloon(text: &str) -> Result<balloon::BalloonOptions, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(format!("--balloon: {m}"));
    let mut o = balloon::BalloonOptions::default();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("`{part}`: expected key=value")))?;
        let on = || match v {
            "on" | "true" | "1" => Ok(true),
            "off" | "false" | "0" => Ok(false),
            _ => Err(bad(format!("{k}=`{v}`: write on or off"))),
        };
        match k.replace('-', "_").as_str() {
            "amount_mib" => o.amount_mib = v.parse().map_err(|_| bad(format!("amount_mib=`{v}` is not a number of MiB")))?,
            "deflate_on_oom" => o.deflate_on_oom = on()?,
            "stats_polling_interval_s" => {
                o.stats_polling_interval_s = v.parse().map_err(|_| bad(format!("stats_polling_interval_s=`{v}` is not a number of seconds")))?
            }
            "free_page_reporting" => o.free_page_reporting = on()?,
            other => return Err(bad(format!("unknown option `{other}`; use amount_mib, deflate_on_oom, stats_polling_interval_s, free_page_reporting"))),
        }
    }
    Ok(o)
}

/// Host CPUs this process may run on (at least 1).
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why host CPU `cpu` cannot be named in a configuration here (`None`: it can).
pub fn host_cpu_not_online(cpu: usize) -> Option<String> {
    let n = host_cpus();
    (cpu >= n).then(|| format!("host CPU {cpu} is not online (this host has {n})"))
}

/// What `--pin` sets: vCPU index -> host CPU, and the device thread's host CPU.
pub type Pins = (BTreeMap<u32, usize>, Option<usize>);

/// Parses `--pin 0=2,1=3,devices=2`.
pub fn parse_pin(text: &str) -> Result<Pins, ConfigError> {
    let mut map = BTreeMap::new();
    let mut devices = None;
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (v, c) = pair
            .split_once('=')
            .ok_or_else(|| ConfigError::BadPin(pair.into()))?;
        let c: usize = c
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadPin(pair.into()))?;
        if let Some(why) = host_cpu_not_online(c) {
            return Err(ConfigError::BadPin(format!("{pair}: {why}")));
        }
        if v.trim() == "devices" {
            devices = Some(c);
            continue;
        }
        let v: u32 = v
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadPin(pair.into()))?;
        map.insert(v, c);
    }
    Ok((map, devices))
}

impl VmConfig {
    /// Host CPUs the device thread may run on (empty: anywhere). `--pin devices=CPU` names
    /// one; otherwise, when vCPUs are pinned, the device thread shares their CPUs. That keeps
    /// a VM's threads on its CPUs, and the balloon frees guest pages on the CPUs whose vCPUs
    /// faulted them in: freeing memory on another CPU than the one that allocated it cost
    /// twice as long on the development host (`memvisor bench balloon`, docs/benchmarks.md).
    pub fn device_cpus(&self) -> Vec<usize> {
        match self.pin_devices {
            Some(c) => vec![c],
            None => {
                let mut cpus: Vec<usize> = self.pin.values().copied().collect();
                cpus.sort_unstable();
                cpus.dedup();
                cpus
            }
        }
    }
}

/// Parses a size: a byte count or a number with K, M, G, T (optionally KiB/KB/...) suffix,
/// binary multiples.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// A byte count printed the way people read it (`512 MiB`, `1.50 GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u < UNITS.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 || v.fract() == 0.0 {
            write!(f, "{} {}", v as u64, UNITS[u])
        } else {
            write!(f, "{:.2} {}", v, UNITS[u])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("2048k"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(Size(512 << 20).to_string(), "512 MiB");
        assert_eq!(Size(3 << 29).to_string(), "1.50 GiB");
    }

    #[test]
    fn region_options() {
        let r = RegionConfig::parse(
            0,
            "size=1G,backend=hugetlbfs,mem-path=/dev/hugepages,prealloc=on",
        )
        .unwrap();
        assert_eq!(r.size, 1 << 30);
        assert!(r.prealloc);
        assert_eq!(
            r.backend,
            Backend::Hugetlbfs {
                mem_path: "/dev/hugepages".into()
            }
        );
        let r = RegionConfig::parse(1, "512M").unwrap();
        assert_eq!(r, RegionConfig::anon(512 << 20));
        let r = RegionConfig::parse(0, "size=64M,backend=uffd,fetch=64K").unwrap();
        assert!(matches!(r.backend, Backend::Uffd { fetch: 65536, .. }));
    }

    #[test]
    fn region_errors_name_region_and_option() {
        let e = RegionConfig::parse(2, "size=1G,backend=floppy")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory region 2") && e.contains("backend") && e.contains("hugetlbfs"),
            "{e}"
        );
        let e = RegionConfig::parse(0, "size=1G,backend=hugetlbfs")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mem-path"), "{e}");
        let e = RegionConfig::parse(0, "size=1G,colour=blue")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour") && e.contains("unknown"), "{e}");
        let e = RegionConfig::parse(0, "size=1G,shared=on,mergeable=on")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MAP_SHARED"), "{e}");
        let e = RegionConfig::parse(0, "size=3M,backend=memfd,hugetlb=on")
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple"), "{e}");
        let e = RegionConfig::parse(0, "size=1G,backend=uffd,fetch=3K")
            .unwrap_err()
            .to_string();
        assert!(e.contains("power of two"), "{e}");
        for (spec, option, why) in [
            ("source=/tmp/image", "`source`", "its own memory file"),
            ("fetch=64K", "`fetch`", "how much it serves"),
        ] {
            let e = RegionConfig::parse(
                1,
                &format!("size=1G,backend=uffd,handler=external,socket=/tmp/h.sock,{spec}"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(option) && e.contains(why), "{e}");
        }
        let e = RegionConfig::parse(0, "size=1G,prealloc=maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("on or off"), "{e}");
    }

    #[test]
    fn vm_checks() {
        let mut c = VmConfig::default();
        c.check().unwrap();
        c.vcpus = 0;
        assert!(matches!(c.check(), Err(ConfigError::BadVcpus(0))));
        c.vcpus = 2;
        c.pin.insert(5, 0);
        assert!(matches!(c.check(), Err(ConfigError::BadPin(_))));
        assert!(parse_pin("0=0").is_ok());
        assert!(parse_pin("0=9999").is_err());
        assert!(parse_pin("x").is_err());
        assert!(parse_pin("devices=9999").is_err());
        assert!(parse_pin("vcpus=0").is_err());
        let (vcpus, devices) = parse_pin("1=0,devices=0,0=0").unwrap();
        assert_eq!((vcpus.len(), devices), (2, Some(0)));
        // The device thread: its own CPU, else the pinned vCPUs' CPUs, else anywhere.
        c.pin = BTreeMap::from([(0, 3), (1, 1), (2, 3)]);
        assert_eq!(c.device_cpus(), vec![1, 3]);
        c.pin_devices = Some(2);
        assert_eq!(c.device_cpus(), vec![2]);
        c.pin.clear();
        c.pin_devices = None;
        assert!(c.device_cpus().is_empty());
    }

    /// Fuzzing finding (config target): `hugepage_size: 0` in a JSON config divided by zero.
    #[test]
    fn json_memfd_hugepage_size_must_be_2m_or_1g() {
        for hp in [0u64, 4096, 3 << 20] {
            let json =
                format!(r#"{{"size": 1073741824, "backend": "memfd", "hugepage_size": {hp}}}"#);
            let r: RegionConfig = serde_json::from_str(&json).unwrap();
            let e = r.check(0).unwrap_err().to_string();
            assert!(e.contains("hugepage-size") && e.contains("2M or 1G"), "{e}");
        }
        let ok = r#"{"size": 1073741824, "backend": "memfd", "hugepage_size": 1073741824}"#;
        serde_json::from_str::<RegionConfig>(ok)
            .unwrap()
            .check(0)
            .unwrap();
    }

    /// Fuzzing finding (config target): region sizes whose total overflows u64 panicked in
    /// `ram_bytes` (debug) or wrapped past the checks (release).
    #[test]
    fn total_ram_overflow_is_an_error() {
        let huge = RegionConfig::anon(!0xfff_u64);
        let c = VmConfig {
            memory: vec![huge.clone(), huge],
            ..VmConfig::default()
        };
        assert_eq!(c.ram_bytes(), u64::MAX);
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("256 TiB") && e.contains("smaller"), "{e}");
        let c = VmConfig {
            memory: vec![RegionConfig::anon(MAX_GUEST_RAM_BYTES)],
            ..VmConfig::default()
        };
        c.check().unwrap();
    }
}
