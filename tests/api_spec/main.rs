//! `docs/api/openapi.yaml` against what the server really answers, so the two cannot drift.
//!
//! - The routes in the document are exactly the server's route table
//!   (`memvisor::control::api::ENDPOINTS`), and every schema in it compiles (JSON Schema 2020-12, the
//!   dialect of OpenAPI 3.1).
//! - The typed answers (`BalloonConfig`, `BalloonStatistics`, `BalloonDeviceInfo`) validate
//!   against their schemas, and answers the spec must refuse (a `null` statistic, a
//!   pre-Firecracker field name, an error without `fault_message`) do not: this runs without KVM.
//! - Against three running VMs (balloon with statistics, balloon without, no balloon), every
//!   answer of every endpoint, successes and errors alike, is validated against the schema the
//!   document gives for its path, method and status (the Content-Type too), every request body
//!   sent with success against its request schema, and every status the document lists for an
//!   operation must have been seen.

#[path = "../common/mod.rs"]
mod common;
mod spec;

use common::{kvm_or_skip, root_or_skip, wait_until, ChildVm, NetNs, TempDir};
use memvisor::control::api::{
    BalloonConfig, BalloonDeviceInfo, BalloonStatistics, Transport, ENDPOINTS,
};
use serde_json::{json, Value};
use spec::{esc, exchange, Checker, Spec};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `memvisor run ARGS` serving its API on `<dir>/<name>.sock` (registered under `<dir>/rt`).
fn start(dir: &Path, name: &str, args: &[&str]) -> (ChildVm, PathBuf) {
    start_with(
        Command::new(env!("CARGO_BIN_EXE_memvisor")),
        dir,
        name,
        args,
    )
}

/// [`start`] through `cmd` (the memvisor binary, possibly behind `ip netns exec`).
fn start_with(mut cmd: Command, dir: &Path, name: &str, args: &[&str]) -> (ChildVm, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let child = cmd
        .arg("run")
        .args(args)
        .arg("--api-sock")
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(dir.join("rt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let vm = ChildVm {
        child: Some(child),
        sock: sock.clone(),
    };
    (vm, sock)
}

/// Waits for the VM's process to end; its exit status.
fn wait_exit(vm: &mut ChildVm) -> std::process::ExitStatus {
    let child = vm.child.as_mut().unwrap();
    wait_until("the VM to stop", Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    vm.child.take().unwrap().wait().unwrap()
}

#[test]
fn spec_routes_are_the_servers_route_table() {
    let spec = Spec::load();
    let served: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string())))
        .collect();
    assert_eq!(
        spec.operations(),
        served,
        "docs/api/openapi.yaml vs api::ENDPOINTS"
    );
    // Every response and request body resolves and its schema compiles.
    for (path, method) in spec.operations() {
        for status in [200, 204, 400, 599] {
            if let Some((pointer, resp)) = spec.response(&path, &method, status) {
                for ctype in resp
                    .get("content")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let schema = format!("{pointer}/content/{}/schema", esc(ctype.0));
                    let _ = spec.validate(&schema, &Value::Null);
                }
            }
        }
    }
    for name in spec.doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
    {
        let _ = spec.validate_component(name, &Value::Null);
    }
}

#[test]
fn typed_answers_match_the_spec_and_the_spec_bites() {
    let spec = Spec::load();
    let ok = |name: &str, v: Value| {
        spec.validate_component(name, &v)
            .unwrap_or_else(|e| panic!("{name} {v}: {e}"))
    };
    let bad = |name: &str, v: Value| {
        assert!(
            spec.validate_component(name, &v).is_err(),
            "{name} accepted {v}"
        );
    };
    ok(
        "Balloon",
        serde_json::to_value(BalloonConfig::default()).unwrap(),
    );
    let mut stats = BalloonStatistics::default();
    ok("BalloonStats", serde_json::to_value(&stats).unwrap());
    stats.guest.oom_kill = Some(1);
    stats.guest.direct_reclaim = Some(2);
    stats.guest.total_memory = Some(3);
    ok("BalloonStats", serde_json::to_value(&stats).unwrap());
    let device = BalloonDeviceInfo {
        transport: Transport::VirtioMmio,
        activated: true,
        features_offered: balloon::features::feature_names(0x1_0000_0026),
        features_acked: vec![],
        target_pages: 1,
        actual_pages: 1,
        target_mib: 0,
        actual_mib: 0,
        released_bytes: 4096,
        stats_received_at_unix_s: Some(1.5),
        actual_pages_at_stats: Some(256),
        actual_mib_at_stats: Some(1),
        counters: balloon::BalloonCounters::default(),
    };
    ok("BalloonDevice", serde_json::to_value(&device).unwrap());
    let outcome = memvisor::memory::ReclaimOutcome {
        method: "pageout".into(),
        order: "top-down".into(),
        notes: vec!["region 1 ...".into()],
        ..Default::default()
    };
    ok("ReclaimOutcome", serde_json::to_value(&outcome).unwrap());
    let status = memvisor::control::reclaim::ReclaimStatus {
        last: Some(outcome),
        resident_limit_bytes: Some(1 << 30),
        ..Default::default()
    };
    ok("ReclaimStatus", serde_json::to_value(&status).unwrap());
    bad("ReclaimOutcome", json!({"method": "pageout"}));

    // What Firecracker clients must never see.
    let sizes = json!({"target_pages": 0, "actual_pages": 0, "target_mib": 0, "actual_mib": 0});
    let with = |k: &str, v: Value| {
        let mut s = sizes.clone();
        s[k] = v;
        s
    };
    bad("BalloonStats", with("free_memory", Value::Null));
    bad("BalloonStats", with("oom_kills", json!(1)));
    bad(
        "BalloonStats",
        with("received_at", json!({"secs_since_epoch": 1})),
    );
    bad("BalloonStats", json!({"target_pages": 0}));
    bad(
        "Balloon",
        json!({"amount_mib": 1, "deflate_on_oom": true, "activated": true}),
    );
    bad("Balloon", json!({"amount_mib": -1, "deflate_on_oom": true}));
    bad("Error", json!({"message": "x"}));
    bad("Error", json!({"fault_message": ""}));
    let mut d = serde_json::to_value(&device).unwrap();
    d["counters"]["new_counter"] = json!(0);
    bad("BalloonDevice", d);

    // A disk: every counter the block crate has is in the document, and no other.
    let disk = memvisor::devices::block::DiskInfo {
        id: "vda".into(),
        path: "/images/a.raw".into(),
        read_only: false,
        direct: false,
        capacity_bytes: 1 << 20,
        block_size: 512,
        activated: true,
        features_offered: block::features::feature_names(block::features::avail_features(false)),
        features_acked: vec![],
        counters: block::BlockCounters::default(),
    };
    ok("DiskInfo", serde_json::to_value(&disk).unwrap());
    let mut d = serde_json::to_value(&disk).unwrap();
    d["counters"]["new_counter"] = json!(0);
    bad("DiskInfo", d);

    // A network interface: every counter the net crate has is in the document, and no other.
    let net = memvisor::devices::net::NetInfo {
        id: "net0".into(),
        tap: "tap0".into(),
        mac: "52:54:00:12:34:56".into(),
        activated: false,
        features_offered: net::features::feature_names(net::features::avail_features()),
        features_acked: vec![],
        counters: net::NetCounters::default(),
    };
    ok("NetInfo", serde_json::to_value(&net).unwrap());
    let mut n = serde_json::to_value(&net).unwrap();
    n["counters"]["new_counter"] = json!(0);
    bad("NetInfo", n);
    let mut n = serde_json::to_value(&net).unwrap();
    n["mac"] = json!("52:54:00:12:34");
    bad("NetInfo", n);
}

/// `(type, id)` of each device in `GET /vm`'s list.
fn device_kinds(devices: &[Value]) -> Vec<(&str, &str)> {
    devices
        .iter()
        .map(|d| (d["type"].as_str().unwrap(), d["id"].as_str().unwrap()))
        .collect()
}

/// Shuts the VM down through the API and waits for it to end as stopped (130).
fn shut_down(c: &Checker, sock: &Path, vm: &mut ChildVm) {
    c.expect(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Shutdown"}"#),
        204,
    );
    assert_eq!(wait_exit(vm).code(), Some(130));
}

/// A Linux VM (the halting "kernel") with two network interfaces in a network namespace of the
/// test's own: a tap made beforehand and one memvisor has the kernel create. `GET /vm` lists
/// them with their taps, `/metrics` has their series, both as the document says.
#[test]
fn a_linux_vm_with_network_interfaces_matches_the_spec() {
    let test = "a_linux_vm_with_network_interfaces_matches_the_spec";
    if !kvm_or_skip(test) || !root_or_skip(test) {
        return;
    }
    let ns = match NetNs::new("spec") {
        Ok(ns) => ns,
        Err(e) => return common::skip(test, e),
    };
    ns.ip(&["tuntap", "add", "mvspec0", "mode", "tap"]);
    let c = Checker::new();
    let tmp = TempDir::new("api-spec-nets");
    let kernel = tmp.path().join("halt.elf");
    std::fs::write(&kernel, common::tiny_kernel(&[0xf4, 0xeb, 0xfd])).unwrap(); // hlt; jmp hlt
    let (mut vm, sock) = start_with(
        ns.command(env!("CARGO_BIN_EXE_memvisor")),
        tmp.path(),
        "nets",
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "-m",
            "64M",
            "--net",
            "tap=mvspec0",
            "--net",
            "tap,id=created,mac=02:00:00:00:00:02",
        ],
    );
    wait_until("the API socket", Duration::from_secs(20), || sock.exists());
    let v = c.expect(&sock, "GET", "/vm", None, 200).json();
    let devices = v["devices"].as_array().unwrap();
    let kinds = device_kinds(devices);
    assert_eq!(kinds, [("virtio-net", "net0"), ("virtio-net", "created")]);
    assert_eq!(devices[0]["net"]["tap"], "mvspec0");
    assert_eq!(devices[0]["net"]["mac"], "52:54:00:12:34:56");
    let created = devices[1]["net"]["tap"].as_str().unwrap();
    assert!(created.starts_with("tap"), "{created}");
    assert_eq!(devices[1]["net"]["mac"], "02:00:00:00:00:02");
    assert_eq!(v["config"]["nets"][1]["tap"], Value::Null);
    // The created tap is inside the namespace, not on the host.
    let links = ns.command("ip").args(["-o", "link"]).output().unwrap();
    assert!(String::from_utf8_lossy(&links.stdout).contains(created));
    let m = c.expect(&sock, "GET", "/metrics", None, 200);
    for line in [
        "memvisor_net_frames_total{net=\"net0\",direction=\"rx\"} 0",
        "memvisor_net_bytes_total{net=\"created\",direction=\"tx\"} 0",
        "memvisor_net_dropped_frames_total{net=\"net0\",direction=\"tx\",reason=\"bad_frame\"} 0",
        "memvisor_net_device_events_total{net=\"created\",counter=\"tx_oversized\"} 0",
    ] {
        assert!(m.body.lines().any(|l| l == line), "{line} in\n{}", m.body);
    }
    shut_down(&c, &sock, &mut vm);
}

/// A Linux VM (a tiny "kernel" that only halts: the API does not need a booted guest) with a
/// balloon and two disks: `GET /vm` lists the three devices and `/metrics` has the disks'
/// series, both as the document says.
#[test]
fn a_linux_vm_with_disks_matches_the_spec() {
    if !kvm_or_skip("a_linux_vm_with_disks_matches_the_spec") {
        return;
    }
    let c = Checker::new();
    let tmp = TempDir::new("api-spec-disks");
    let kernel = tmp.path().join("halt.elf");
    std::fs::write(&kernel, common::tiny_kernel(&[0xf4, 0xeb, 0xfd])).unwrap(); // hlt; jmp hlt
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&b, vec![0u8; 64 << 10]).unwrap();
    let disk_a = format!("path={}", a.display());
    let disk_b = format!("path={},readonly=on,id=ro-data", b.display());
    let (mut vm, sock) = start(
        tmp.path(),
        "disks",
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "-m",
            "64M",
            "--balloon",
            "amount_mib=0",
            "--disk",
            &disk_a,
            "--disk",
            &disk_b,
        ],
    );
    wait_until("the API socket", Duration::from_secs(20), || sock.exists());
    let v = c.expect(&sock, "GET", "/vm", None, 200).json();
    let devices = v["devices"].as_array().unwrap();
    let kinds = device_kinds(devices);
    assert_eq!(
        kinds,
        [
            ("virtio-balloon", "balloon"),
            ("virtio-blk", "vda"),
            ("virtio-blk", "ro-data")
        ]
    );
    assert_eq!(devices[1]["disk"]["capacity_bytes"], 1 << 20);
    assert_eq!(devices[2]["disk"]["read_only"], true);
    assert!(devices[2]["disk"]["features_offered"]
        .as_array()
        .unwrap()
        .contains(&json!("RO")));
    assert_eq!(v["config"]["disks"][1]["id"], "ro-data");
    let m = c.expect(&sock, "GET", "/metrics", None, 200);
    for line in [
        "memvisor_disk_requests_total{disk=\"vda\",op=\"read\"} 0",
        "memvisor_disk_bytes_total{disk=\"ro-data\",op=\"write\"} 0",
        "memvisor_disk_errors_total{disk=\"vda\",status=\"ioerr\"} 0",
        "memvisor_disk_device_events_total{disk=\"ro-data\",counter=\"write_to_read_only\"} 0",
    ] {
        assert!(m.body.lines().any(|l| l == line), "{line} in\n{}", m.body);
    }
    shut_down(&c, &sock, &mut vm);
}

#[test]
fn every_answer_of_running_vms_matches_the_spec() {
    if !kvm_or_skip("every_answer_of_running_vms_matches_the_spec") {
        return;
    }
    let t0 = std::time::Instant::now();
    let c = Checker::new();
    let tmp = TempDir::new("api-spec");
    // A: balloon with statistics every second; B: balloon without statistics; C: no balloon.
    let (mut a_vm, a) = start(
        tmp.path(),
        "a",
        &[
            "-m",
            "128M",
            "--balloon",
            "amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1,free_page_reporting=on",
            "-w",
            "balloon:data=16M,seconds=0",
        ],
    );
    let (mut b_vm, b) = start(
        tmp.path(),
        "b",
        &[
            "-m",
            "64M",
            "--balloon",
            "amount_mib=0",
            "-w",
            "balloon:data=4M,seconds=0",
        ],
    );
    let (mut c_vm, cs) = start(
        tmp.path(),
        "c",
        &["-m", "64M", "-w", "random:accesses=100G"],
    );
    for s in [&a, &b, &cs] {
        wait_until("the API socket", Duration::from_secs(20), || s.exists());
    }

    // C, no balloon: paused at once (its workload only spins), then every balloon endpoint
    // answers 400.
    c.expect(&cs, "PUT", "/vm", Some(r#"{"state": "Paused"}"#), 204);
    assert_eq!(
        c.expect(&cs, "GET", "/vm", None, 200).json()["state"],
        "Paused"
    );
    for (m, p, body) in [
        ("GET", "/balloon", None),
        ("GET", "/balloon/statistics", None),
        ("GET", "/balloon/device", None),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#)),
        (
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 1}"#),
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "FinishBalloonStep"}"#),
        ),
    ] {
        c.expect(&cs, m, p, body, 400);
    }
    assert!(c.expect(&cs, "GET", "/memory/report", None, 200).json()["balloon"].is_null());
    // Reclaim to host swap: at its whole RAM as the target there is nothing to do (with or
    // without host swap); bad targets and limits are 400.
    let r = c.expect(
        &cs,
        "PUT",
        "/memory/reclaim",
        Some(r#"{"target_resident_mib": 64}"#),
        200,
    );
    assert_eq!(r.json()["method"], "none", "{}", r.body);
    for bad in [
        r#"{"target_resident_mib": 65}"#,
        r#"{"target_resident_mib": -1}"#,
        r#"{"target_resident_mib": "64M"}"#,
    ] {
        c.expect(&cs, "PUT", "/memory/reclaim", Some(bad), 400);
    }
    c.expect(
        &cs,
        "PATCH",
        "/memory",
        Some(r#"{"resident_limit_mib": 64}"#),
        204,
    );
    let st = c.expect(&cs, "GET", "/memory/reclaim", None, 200).json();
    assert_eq!(st["resident_limit_bytes"], 64 << 20, "{st}");
    c.expect(
        &cs,
        "PATCH",
        "/memory",
        Some(r#"{"resident_limit_mib": 0}"#),
        204,
    );
    c.expect(
        &cs,
        "PATCH",
        "/memory",
        Some(r#"{"resident_limit_mib": 65}"#),
        400,
    );
    assert!(
        c.expect(&cs, "GET", "/memory/reclaim", None, 200).json()["resident_limit_bytes"].is_null()
    );
    let ws = c
        .expect(&cs, "GET", "/memory/working-set", None, 200)
        .json();
    assert_eq!(ws["tracking"], true, "{ws}");
    c.expect(
        &cs,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Shutdown"}"#),
        204,
    );
    assert_eq!(wait_exit(&mut c_vm).code(), Some(130));

    // B, balloon without statistics: Firecracker answers 400 to GET /balloon/statistics.
    wait_until("B's balloon driver", Duration::from_secs(30), || {
        c.call(&b, "GET", "/balloon/device", None).json()["activated"] == true
    });
    let bb = c.expect(&b, "GET", "/balloon", None, 200).json();
    assert_eq!(bb["stats_polling_interval_s"], 0, "{bb}");
    let st = c.expect(&b, "GET", "/balloon/statistics", None, 400);
    assert!(st.body.contains("disabled"), "{}", st.body);
    let dev = c.expect(&b, "GET", "/balloon/device", None, 200).json();
    assert!(dev.get("stats_received_at_unix_s").is_none(), "{dev}");
    assert!(dev.get("actual_pages_at_stats").is_none(), "{dev}");
    c.expect(&b, "GET", "/memory/mappings", None, 200);
    // The in-VMM swap: out, its state in the report and metrics, refusals, in.
    let swap = tmp.path().join("b.swap");
    let body = json!({ "file": swap }).to_string();
    c.expect(&b, "PUT", "/memory/swap-out", Some(&body), 200);
    let r = c.expect(&b, "GET", "/memory/report", None, 200).json();
    assert_eq!(r["vmm_swap"]["state"], "swapped_out", "{r}");
    c.expect(&b, "GET", "/metrics", None, 200);
    c.expect(&b, "PUT", "/memory/swap-out", Some(&body), 400);
    c.expect(
        &b,
        "PUT",
        "/memory/swap-out",
        Some(r#"{"file": "x.swap"}"#),
        400,
    );
    c.expect(&b, "PUT", "/memory/swap-in", None, 200);
    c.expect(&b, "PUT", "/memory/swap-in", Some("{}"), 400);
    c.expect(&b, "PUT", "/memory/swap-in", Some(r#"{"now": 1}"#), 400);
    c.expect(
        &b,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        204,
    );
    assert_eq!(wait_exit(&mut b_vm).code(), Some(130));

    // A: the guest's statistics arrive; every endpoint answers.
    wait_until("A's statistics", Duration::from_secs(30), || {
        let s = c.call(&a, "GET", "/balloon/statistics", None).json();
        s["total_memory"].is_u64() && s["free_memory"].is_u64()
    });
    let bal = c.expect(&a, "GET", "/balloon", None, 200).json();
    assert_eq!(
        bal,
        json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1,
               "free_page_hinting": false, "free_page_reporting": true})
    );
    c.expect(&a, "GET", "/vm", None, 200);
    c.expect(&a, "GET", "/balloon/device", None, 200);
    c.expect(
        &a,
        "GET",
        "/memory/mappings?gpa=0x1000000&len=0x10000",
        None,
        200,
    );
    c.expect(&a, "GET", "/memory/mappings?gpa=0x1000000", None, 200);
    c.expect(&a, "GET", "/memory/report", None, 200);
    let m = c.expect(&a, "GET", "/metrics", None, 200);
    assert!(
        m.body.contains("memvisor_balloon_actual_bytes"),
        "{}",
        m.body
    );

    // Inflate by 8 MiB: the sizes and the device's figures follow, still per the spec.
    c.expect(&a, "PATCH", "/balloon", Some(r#"{"amount_mib": 8}"#), 204);
    wait_until("A's balloon at 8 MiB", Duration::from_secs(30), || {
        c.call(&a, "GET", "/balloon/statistics", None).json()["actual_mib"] == 8
    });
    let dev = c.expect(&a, "GET", "/balloon/device", None, 200).json();
    assert_eq!(
        (dev["target_mib"].as_u64(), dev["actual_mib"].as_u64()),
        (Some(8), Some(8)),
        "{dev}"
    );
    assert!(
        dev["counters"]["inflated_pages"].as_u64() >= Some(2048),
        "{dev}"
    );
    assert!(dev["stats_received_at_unix_s"].is_f64(), "{dev}");
    assert!(dev["actual_pages_at_stats"].is_u64(), "{dev}");

    // Refusals, each with an Error body.
    c.expect(
        &a,
        "PATCH",
        "/balloon",
        Some(r#"{"amount_mib": 99999}"#),
        400,
    );
    c.expect(&a, "PATCH", "/balloon", Some("[8]"), 400);
    c.expect(
        &a,
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 8, "deflate_on_oom": true, "free_page_hinting": false}"#),
        400,
    );
    c.expect(
        &a,
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 2}"#),
        204,
    );
    c.expect(
        &a,
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 0}"#),
        400,
    );
    c.expect(&a, "GET", "/memory/mappings?len=5", None, 400);
    c.expect(&a, "PUT", "/vm", Some(r#"{"state": "Asleep"}"#), 400);
    c.expect(&a, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#), 204);
    c.expect(&a, "PATCH", "/vm", Some("{}"), 400);
    c.expect(&a, "PUT", "/vm", Some(r#"{"state": "Resumed"}"#), 204);
    c.expect(
        &a,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Reboot"}"#),
        400,
    );

    // Errors found before routing.
    c.check_server_error(
        "GET /nope",
        &exchange(&a, b"GET /nope HTTP/1.1\r\n\r\n"),
        404,
    );
    c.check_server_error(
        "DELETE /vm",
        &exchange(&a, b"DELETE /vm HTTP/1.1\r\n\r\n"),
        405,
    );
    let chunked = b"PATCH /balloon HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    c.check_server_error("chunked", &exchange(&a, chunked), 411);
    let big = format!(
        "PATCH /balloon HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    c.check_server_error("1 MiB body", &exchange(&a, big.as_bytes()), 413);
    let long_head = format!(
        "GET /vm HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    c.check_server_error("20 KiB head", &exchange(&a, long_head.as_bytes()), 431);

    // The built-in guest ends its balloon step on request, verifies its data and exits.
    c.expect(
        &a,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FinishBalloonStep"}"#),
        204,
    );
    assert!(wait_exit(&mut a_vm).success(), "A's guest failed");

    // Every status the document lists was seen.
    let seen = c.seen.lock().unwrap();
    let missing: Vec<_> = c
        .spec
        .documented_statuses()
        .difference(&seen)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "documented but never exercised: {missing:?}"
    );
    eprintln!(
        "{} (path, method, status) exercised in {:.1} s",
        seen.len(),
        t0.elapsed().as_secs_f64()
    );
}
