//! Fuzz target: the VM configuration parsers of `src/config/`.
//!
//! The first input byte picks what the rest (UTF-8 text, as clap and `read_to_string` deliver
//! it) is fed to:
//! - 0: `--memory` region specs, one per line (`RegionConfig::parse`);
//! - 1: a `--balloon` spec (`parse_balloon`);
//! - 2: the JSON `--config` file (`VmConfig` through serde, then `VmConfig::check`);
//! - 3: a command line, one flag per line (`memory SPEC`, `balloon SPEC`, `disk SPEC`,
//!   `kernel PATH`, `workload SPEC`, `pin SPEC`, `vcpus N`), combined the way `memvisor run`
//!   does and checked (a `--disk` the parser accepts checks again and round-trips);
//! - 4: one region of the JSON file (`{"size": .., "backend": .., ..}`), in the default
//!   configuration, so that mutations reach the region rules faster than through a whole file;
//! - 5: a `VmConfig` built field by field from the bytes (any value the JSON file can hold,
//!   without the text: sizes, huge page sizes, fetch sizes, vCPUs, pins, workload arguments,
//!   a Linux kernel to boot).
//!
//! Invariants: no panic (also not in the error messages' `Display`); a region the spec parser
//! accepts passes `RegionConfig::check` again; whatever parses round-trips through serde JSON
//! (regions and balloon options compare equal, a whole `VmConfig` serializes to the same JSON
//! again) and a checked configuration still checks after the round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use memvisor::config::disk::DiskConfig;
use memvisor::config::workload::{Step, Workload};
use memvisor::config::{parse_balloon, parse_pin, Backend, ConfigError, RegionConfig, VmConfig};

fn roundtrip<T>(v: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let json = serde_json::to_string(v).expect("serializes");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("does not read back ({e}): {json}"))
}

/// The `--workload` text of `step`.
fn cli_text(step: &Step) -> String {
    match *step {
        Step::Touch {
            stride,
            passes,
            work_only,
            working_set,
        } => format!(
            "touch:stride={stride},passes={passes},work-only={},ws={working_set}",
            u8::from(work_only)
        ),
        Step::Fill { seed, sparse } => format!("fill:seed={seed},sparse={sparse}"),
        Step::Verify { seed, sparse } => format!("verify:seed={seed},sparse={sparse}"),
        Step::Same { value } => format!("same:value={value}"),
        Step::Checksum => "checksum".into(),
        Step::Read {
            stride,
            passes,
            working_set,
        } => format!("read:stride={stride},passes={passes},ws={working_set}"),
        Step::Random {
            working_set,
            accesses,
            seed,
        } => format!("random:ws={working_set},accesses={accesses},seed={seed}"),
        Step::Fault => "fault".into(),
        Step::Sync { tag } => format!("sync:tag={tag}"),
        Step::Balloon {
            data,
            seconds,
            seed,
        } => format!("balloon:data={data},seconds={seconds},seed={seed}"),
        Step::Grow { to, seed } => format!("grow:to={to},seed={seed}"),
        Step::Hold {
            seconds,
            working_set,
            stride,
        } => format!("hold:seconds={seconds},ws={working_set},stride={stride}"),
    }
}

/// `VmConfig::check`, with the same verdict after a JSON round trip. A configuration that
/// checks holds only workload steps the `--workload` syntax accepts too (a config file must not
/// be a way around the command line's rules).
fn check(c: &VmConfig) {
    let verdict = c.check().map_err(|e| e.to_string());
    if verdict.is_ok() {
        for step in &c.workload.steps {
            let text = cli_text(step);
            match Step::parse(&text) {
                Ok(parsed) => assert_eq!(&parsed, step, "{text}"),
                Err(e) => {
                    panic!("the config holds step {step:?}, which --workload {text} refuses: {e}")
                }
            }
        }
    }
    let json = serde_json::to_string(c).expect("serializes");
    let back: VmConfig =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("does not read back ({e}): {json}"));
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        json,
        "JSON round trip"
    );
    assert_eq!(back.check().map_err(|e| e.to_string()), verdict);
}

fn region(i: usize, spec: &str) -> Result<RegionConfig, ConfigError> {
    let r = RegionConfig::parse(i, spec)?;
    r.check(i).expect("a parsed region passes check again");
    assert_eq!(roundtrip(&r), r, "region JSON round trip");
    Ok(r)
}

fn memory(text: &str) {
    let regions: Result<Vec<RegionConfig>, ConfigError> = text
        .split('\n')
        .enumerate()
        .map(|(i, spec)| region(i, spec))
        .collect();
    match regions {
        Ok(memory) => check(&VmConfig {
            memory,
            ..VmConfig::default()
        }),
        Err(e) => drop(e.to_string()),
    }
}

fn balloon(text: &str) {
    match parse_balloon(text) {
        Ok(b) => {
            assert_eq!(roundtrip(&b), b, "balloon JSON round trip");
            check(&VmConfig {
                balloon: Some(b),
                ..VmConfig::default()
            });
        }
        Err(e) => drop(e.to_string()),
    }
}

fn json(text: &str) {
    match serde_json::from_str::<VmConfig>(text) {
        Ok(c) => check(&c),
        Err(e) => drop(e.to_string()),
    }
}

fn json_region(text: &str) {
    match serde_json::from_str::<RegionConfig>(text) {
        Ok(r) => {
            assert_eq!(roundtrip(&r), r, "region JSON round trip");
            check(&VmConfig {
                memory: vec![r],
                ..VmConfig::default()
            });
        }
        Err(e) => drop(e.to_string()),
    }
}

/// Little-endian fields; past the end everything reads as zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self, bytes: usize) -> u64 {
        let n = bytes.min(self.0.len()).min(8);
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(b)
    }
    fn u8(&mut self) -> u8 {
        self.u64(1) as u8
    }
    fn flag(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    /// A size: a multiple of 4 KiB (any, or a small number of pages or MiB), sometimes any u64.
    fn size(&mut self) -> u64 {
        match self.u8() % 5 {
            0 => self.u64(8) & !0xfff,
            1 => self.u64(2) << 12,
            2 => self.u64(2) << 20,
            3 => self.u64(1),
            _ => self.u64(8),
        }
    }
    fn path(&mut self) -> std::path::PathBuf {
        format!("/p{}", self.u8()).into()
    }
}

fn typed(data: &[u8]) {
    let mut r = Reader(data);
    let mut c = VmConfig {
        vcpus: r.u64(1) as u32,
        memory: Vec::new(),
        ..VmConfig::default()
    };
    for _ in 0..r.u8() % 5 {
        let size = r.size();
        let backend = match r.u8() % 4 {
            0 => Backend::Anon {
                shared: r.flag(),
                thp: [None, Some(false), Some(true)][usize::from(r.u8() % 3)],
            },
            1 => Backend::Hugetlbfs { mem_path: r.path() },
            2 => Backend::Memfd {
                hugepage_size: r.flag().then(|| r.size()),
            },
            _ => Backend::Uffd {
                source: r.flag().then(|| r.path()),
                fetch: r.size(),
                external_socket: r.flag().then(|| r.path()),
            },
        };
        c.memory.push(RegionConfig {
            size,
            backend,
            prealloc: r.flag(),
            prealloc_threads: r.u64(2) as usize,
            mergeable: r.flag(),
            resident_limit: r.flag().then(|| r.size()),
        });
    }
    if r.flag() {
        c.balloon = Some(balloon::BalloonOptions {
            amount_mib: r.u64(4) as u32,
            deflate_on_oom: r.flag(),
            stats_polling_interval_s: r.u64(2) as u16,
            free_page_reporting: r.flag(),
        });
    }
    for _ in 0..r.u8() % 4 {
        c.pin.insert(r.u64(1) as u32, r.u64(1) as usize);
    }
    if r.flag() {
        c.workload.steps = (0..r.u8() % 20)
            .map(|_| {
                let (a, b, s) = (r.size(), r.u64(8), r.u64(1));
                match r.u8() % 12 {
                    0 => Step::Touch {
                        stride: a,
                        passes: b,
                        work_only: s & 1 != 0,
                        working_set: if s & 2 != 0 { b } else { 0 },
                    },
                    1 => Step::Fill { seed: s, sparse: b },
                    2 => Step::Verify { seed: s, sparse: b },
                    3 => Step::Same { value: b },
                    4 => Step::Checksum,
                    5 => Step::Read {
                        stride: a,
                        passes: b,
                        working_set: if s & 2 != 0 { b } else { 0 },
                    },
                    6 => Step::Random {
                        working_set: a,
                        accesses: b,
                        seed: s,
                    },
                    7 => Step::Fault,
                    8 => Step::Sync { tag: b },
                    9 => Step::Balloon {
                        data: a,
                        seconds: b,
                        seed: s,
                    },
                    10 => Step::Hold {
                        seconds: b,
                        working_set: a,
                        stride: s,
                    },
                    _ => Step::Grow { to: a, seed: s },
                }
            })
            .collect();
    }
    c.triple_fault = r.flag();
    if r.flag() {
        c.linux = Some(memvisor::linux::LinuxConfig {
            kernel: r.path(),
            initrd: r.flag().then(|| r.path()),
            cmdline: r.flag().then(|| "console=ttyS0 quiet".into()),
            console: r.flag().then(|| r.path()),
        });
    }
    for (i, region) in c.memory.iter().enumerate() {
        if region.check(i).is_ok() {
            assert_eq!(roundtrip(region), *region, "region JSON round trip");
        }
    }
    check(&c);
}

fn command_line(text: &str) -> Result<(), ConfigError> {
    let mut c = VmConfig::default();
    let (mut memory, mut workload) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let (flag, value) = line.split_once(' ').unwrap_or((line, ""));
        match flag {
            "memory" => memory.push(region(memory.len(), value)?),
            "balloon" => c.balloon = Some(parse_balloon(value)?),
            "disk" => {
                let d = DiskConfig::parse(c.disks.len(), value)?;
                assert_eq!(roundtrip(&d), d, "disk JSON round trip");
                d.check(c.disks.len()).expect("a parsed disk checks");
                c.disks.push(d);
            }
            "kernel" => {
                c.linux = Some(memvisor::config::linux::LinuxConfig {
                    kernel: value.into(),
                    initrd: None,
                    cmdline: None,
                    console: None,
                })
            }
            "workload" => workload.push(value),
            "pin" => (c.pin, c.pin_devices) = parse_pin(value)?,
            "vcpus" => c.vcpus = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    if !memory.is_empty() {
        c.memory = memory;
    }
    if !workload.is_empty() {
        c.workload = Workload::parse(&workload)?;
    }
    check(&c);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 6 == 5 {
        return typed(rest);
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 6 {
        0 => memory(text),
        1 => balloon(text),
        2 => json(text),
        4 => json_region(text),
        _ => {
            if let Err(e) = command_line(text) {
                drop(e.to_string());
            }
        }
    }
});
