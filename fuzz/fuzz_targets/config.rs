//! Fuzz target: the VM configuration parsers of `src/config.rs`.
//!
//! The first input byte picks what the rest (UTF-8 text, as clap and `read_to_string` deliver
//! it) is fed to:
//! - 0: `--memory` region specs, one per line (`RegionConfig::parse`);
//! - 1: a `--balloon` spec (`parse_balloon`);
//! - 2: the JSON `--config` file (`VmConfig` through serde, then `VmConfig::check`);
//! - 3: a command line, one flag per line (`memory SPEC`, `balloon SPEC`, `workload SPEC`,
//!   `pin SPEC`, `vcpus N`), combined the way `memvisor run` does and checked.
//!
//! Invariants: no panic (also not in the error messages' `Display`); a region the spec parser
//! accepts passes `RegionConfig::check` again; whatever parses round-trips through serde JSON
//! (regions and balloon options compare equal, a whole `VmConfig` serializes to the same JSON
//! again) and a checked configuration still checks after the round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use memvisor::config::{parse_balloon, parse_pin, ConfigError, RegionConfig, VmConfig};
use memvisor::workload::Workload;

fn roundtrip<T>(v: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let json = serde_json::to_string(v).expect("serializes");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("does not read back ({e}): {json}"))
}

/// `VmConfig::check`, with the same verdict after a JSON round trip.
fn check(c: &VmConfig) {
    let verdict = c.check().map_err(|e| e.to_string());
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

fn command_line(text: &str) -> Result<(), ConfigError> {
    let mut c = VmConfig::default();
    let (mut memory, mut workload) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let (flag, value) = line.split_once(' ').unwrap_or((line, ""));
        match flag {
            "memory" => memory.push(region(memory.len(), value)?),
            "balloon" => c.balloon = Some(parse_balloon(value)?),
            "workload" => workload.push(value),
            "pin" => c.pin = parse_pin(value)?,
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
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 4 {
        0 => memory(text),
        1 => balloon(text),
        2 => json(text),
        _ => {
            if let Err(e) = command_line(text) {
                drop(e.to_string());
            }
        }
    }
});
