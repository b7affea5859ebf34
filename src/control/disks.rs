//! What the API tells about a VM's devices: the device list of `GET /vm` and the disks'
//! series in `/metrics` (requests, bytes and errors per disk, and every counter of the
//! `block` crate by name); the network interfaces' series are in [`super::nets`], built with
//! the helpers here ([`counter_family`], [`every_counter`]).

use crate::devices::balloon::BalloonHandle;
use crate::devices::block::DiskInfo;
use crate::devices::net::NetInfo;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// `GET /vm`'s `devices`: the balloon (if any), then the disks in `--disk` order, then the
/// network interfaces in `--net` order.
pub fn device_list(
    balloon: Option<&BalloonHandle>,
    disks: &[DiskInfo],
    nets: &[NetInfo],
) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(b) = balloon {
        out.push(json!({"type": "virtio-balloon", "id": "balloon", "transport": b.transport()}));
    }
    for d in disks {
        out.push(json!({"type": "virtio-blk", "id": d.id, "transport": "virtio-pci", "disk": d}));
    }
    for n in nets {
        out.push(json!({"type": "virtio-net", "id": n.id, "transport": "virtio-pci", "net": n}));
    }
    out
}

/// Appends the `# HELP` and `# TYPE ... counter` lines of metric family `name`.
pub fn counter_family(s: &mut String, name: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} counter");
}

/// Appends one `name{label="id",counter="field"} value` line per field of `counters`.
pub fn every_counter(
    s: &mut String,
    name: &str,
    label: &str,
    id: &str,
    counters: &impl serde::Serialize,
) {
    let fields = serde_json::to_value(counters).expect("counters serialise");
    for (counter, v) in fields.as_object().into_iter().flatten() {
        let _ = writeln!(s, "{name}{{{label}=\"{id}\",counter=\"{counter}\"}} {v}");
    }
}

/// Appends the disks' metric families to `s`.
pub fn disk_metrics(s: &mut String, disks: &[DiskInfo]) {
    if disks.is_empty() {
        return;
    }
    let family = counter_family;
    family(
        s,
        "memvisor_disk_requests_total",
        "Disk requests completed successfully, by disk and operation.",
    );
    for d in disks {
        let c = &d.counters;
        for (op, n) in [
            ("read", c.reads),
            ("write", c.writes),
            ("flush", c.flushes),
            ("get_id", c.get_ids),
            ("discard", c.discards),
            ("write_zeroes", c.write_zeroes),
        ] {
            let _ = writeln!(
                s,
                "memvisor_disk_requests_total{{disk=\"{}\",op=\"{op}\"}} {n}",
                d.id
            );
        }
    }
    family(
        s,
        "memvisor_disk_bytes_total",
        "Bytes moved or released by disk requests, by disk and operation.",
    );
    for d in disks {
        let c = &d.counters;
        for (op, n) in [
            ("read", c.read_bytes),
            ("write", c.written_bytes),
            ("discard", c.discarded_bytes),
            ("write_zeroes", c.zeroed_bytes),
        ] {
            let _ = writeln!(
                s,
                "memvisor_disk_bytes_total{{disk=\"{}\",op=\"{op}\"}} {n}",
                d.id
            );
        }
    }
    family(
        s,
        "memvisor_disk_errors_total",
        "Disk requests refused, by disk and the status the guest got (ioerr, unsupp, or none when the chain had no usable status byte).",
    );
    for d in disks {
        let c = &d.counters;
        for (status, n) in [
            ("ioerr", c.ioerr_status),
            ("unsupp", c.unsupp_status),
            ("none", c.no_status),
        ] {
            let _ = writeln!(
                s,
                "memvisor_disk_errors_total{{disk=\"{}\",status=\"{status}\"}} {n}",
                d.id
            );
        }
    }
    let name = "memvisor_disk_device_events_total";
    family(
        s,
        name,
        "Disk device counters by disk: work done and every kind of request refused, by cause (see block::BlockCounters).",
    );
    for d in disks {
        every_counter(s, name, "disk", &d.id, &d.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_disk_gets_its_series() {
        let counters = block::BlockCounters {
            reads: 3,
            read_bytes: 1536,
            out_of_range: 2,
            ioerr_status: 2,
            ..Default::default()
        };
        let d = DiskInfo {
            id: "vda".into(),
            path: "/tmp/a.img".into(),
            read_only: false,
            direct: false,
            capacity_bytes: 1 << 20,
            block_size: 512,
            activated: true,
            features_offered: vec![],
            features_acked: vec![],
            counters,
        };
        let mut s = String::new();
        disk_metrics(&mut s, std::slice::from_ref(&d));
        for line in [
            "memvisor_disk_requests_total{disk=\"vda\",op=\"read\"} 3",
            "memvisor_disk_bytes_total{disk=\"vda\",op=\"read\"} 1536",
            "memvisor_disk_errors_total{disk=\"vda\",status=\"ioerr\"} 2",
            "memvisor_disk_device_events_total{disk=\"vda\",counter=\"out_of_range\"} 2",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} in\n{s}");
        }
        let list = device_list(None, &[d], &[]);
        assert_eq!(list[0]["type"], "virtio-blk");
        assert_eq!(list[0]["disk"]["counters"]["reads"], 3);
        let mut empty = String::new();
        disk_metrics(&mut empty, &[]);
        assert!(empty.is_empty());
    }
}
