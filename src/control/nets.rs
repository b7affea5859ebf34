//! The network interfaces' series in `/metrics`: frames and bytes each way, frames dropped or
//! refused by reason, and every counter of the `net` crate by name, per interface.

use super::disks::{counter_family, every_counter};
use crate::devices::net::NetInfo;
use std::fmt::Write as _;

/// Appends the network interfaces' metric families to `s`.
pub fn net_metrics(s: &mut String, nets: &[NetInfo]) {
    if nets.is_empty() {
        return;
    }
    let per_direction = |s: &mut String, name: &str, help: &str, get: fn(&NetInfo) -> [u64; 2]| {
        counter_family(s, name, help);
        for n in nets {
            for (dir, v) in ["rx", "tx"].into_iter().zip(get(n)) {
                let _ = writeln!(s, "{name}{{net=\"{}\",direction=\"{dir}\"}} {v}", n.id);
            }
        }
    };
    per_direction(
        s,
        "memvisor_net_frames_total",
        "Frames moved by a network interface, by interface and direction (rx: to the guest, tx: from it).",
        |n| [n.counters.rx_frames, n.counters.tx_frames],
    );
    per_direction(
        s,
        "memvisor_net_bytes_total",
        "Bytes of those frames (without the 12-byte virtio-net header), by interface and direction.",
        |n| [n.counters.rx_bytes, n.counters.tx_bytes],
    );
    let name = "memvisor_net_dropped_frames_total";
    counter_family(
        s,
        name,
        "Frames dropped or refused, by interface, direction and reason (no_buffers: the guest had no receive buffer; bad_frame: a transmit chain refused; host_error: the tap refused or failed).",
    );
    for n in nets {
        let c = &n.counters;
        for (dir, reason, v) in [
            ("rx", "no_buffers", c.rx_dropped_no_buffers),
            ("rx", "not_activated", c.rx_dropped_not_activated),
            ("rx", "too_big", c.rx_frames_too_big),
            ("rx", "host_error", c.rx_host_errors),
            ("tx", "bad_frame", c.tx_bad_frames),
            ("tx", "host_error", c.tx_host_errors),
        ] {
            let _ = writeln!(
                s,
                "{name}{{net=\"{}\",direction=\"{dir}\",reason=\"{reason}\"}} {v}",
                n.id
            );
        }
    }
    let name = "memvisor_net_device_events_total";
    counter_family(
        s,
        name,
        "Network device counters by interface: work done and every kind of chain refused, by cause (see net::NetCounters).",
    );
    for n in nets {
        every_counter(s, name, "net", &n.id, &n.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interface_gets_its_series() {
        let n = NetInfo {
            id: "net0".into(),
            tap: "tap0".into(),
            mac: "52:54:00:12:34:56".into(),
            activated: true,
            features_offered: vec![],
            features_acked: vec![],
            counters: net::NetCounters {
                rx_frames: 3,
                tx_bytes: 98,
                tx_oversized: 1,
                tx_bad_frames: 1,
                ..Default::default()
            },
        };
        let mut s = String::new();
        net_metrics(&mut s, std::slice::from_ref(&n));
        for line in [
            "memvisor_net_frames_total{net=\"net0\",direction=\"rx\"} 3",
            "memvisor_net_bytes_total{net=\"net0\",direction=\"tx\"} 98",
            "memvisor_net_dropped_frames_total{net=\"net0\",direction=\"tx\",reason=\"bad_frame\"} 1",
            "memvisor_net_device_events_total{net=\"net0\",counter=\"tx_oversized\"} 1",
            "# TYPE memvisor_net_frames_total counter",
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line}:\n{s}");
        }
        let mut empty = String::new();
        net_metrics(&mut empty, &[]);
        assert!(empty.is_empty());
    }
}
