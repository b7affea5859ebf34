//! The control API against a real `memvisor run`: every endpoint through the socket and the CLI
//! client, the balloon moved through the API with the VMM process's RSS measured from outside,
//! and bad requests answered without harming the VM.

mod common;

use common::{kvm_or_skip, memvisor, proc_status_kib, text, wait_until, ChildVm};
use memvisor::control::api::client::request;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:").expect("VmRSS of the VMM")
}

fn get(sock: &Path, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = request(sock, "GET", path, None).unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

#[test]
fn balloon_and_vm_control_through_the_api() {
    if !kvm_or_skip("balloon_and_vm_control_through_the_api") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("memvisor-api-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "-m", "16M", "-m", "size=496M,thp=off", "--api-sock"])
        .arg(&sock)
        .args([
            "--balloon",
            "amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1",
        ])
        .args(["-w", "touch:work-only=1;balloon:data=400M,seconds=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut vm = ChildVm {
        child: Some(child),
        sock: sock.clone(),
    };
    wait_until("the API socket", Duration::from_secs(20), || sock.exists());
    // The guest driver is up when the device is activated and the data is filled.
    wait_until("the balloon driver", Duration::from_secs(60), || {
        let (s, b) = get(&sock, "/balloon/device");
        s == 200 && b["activated"] == true
    });
    wait_until(
        "the guest to fill its data",
        Duration::from_secs(60),
        || rss_kib(pid) > 480 * 1024,
    );
    let before = rss_kib(pid);

    // GET /vm: running, one vCPU with exits counted.
    let (s, v) = get(&sock, "/vm");
    assert_eq!(s, 200);
    assert_eq!(v["state"], "Running");
    assert!(v["vcpus"][0]["total_exits"].as_u64().unwrap() > 0);

    // Inflate through the CLI client: actual reaches the target, the VMM's RSS drops.
    let out = memvisor(&[
        "balloon",
        "set",
        "256M",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("actual == target", Duration::from_secs(60), || {
        let (_, b) = get(&sock, "/balloon/statistics");
        b["actual_mib"] == 256
    });
    wait_until("host RSS to drop", Duration::from_secs(10), || {
        before - rss_kib(pid) >= 240 * 1024
    });
    let inflated = rss_kib(pid);
    let (_, b) = get(&sock, "/balloon");
    assert_eq!(b["amount_mib"], 256);
    let (_, d) = get(&sock, "/balloon/device");
    assert!(d["released_bytes"].as_u64().unwrap() >= 256 << 20, "{d}");

    // Statistics arrive (polling every second).
    wait_until("balloon statistics", Duration::from_secs(10), || {
        get(&sock, "/balloon/statistics").1["total_memory"].is_u64()
    });
    let (_, st) = get(&sock, "/balloon/statistics");
    assert_eq!(st["total_memory"].as_u64(), Some(512 << 20), "{st}");
    assert!(st["free_memory"].is_u64(), "{st}");

    // Metrics show the balloon and the exits.
    let (s, m) = request(&sock, "GET", "/metrics", None).unwrap();
    assert_eq!(s, 200);
    assert!(m.contains("memvisor_balloon_actual_bytes 268435456"), "{m}");
    // The device's counters, each rejection under its cause; a well-behaved driver has none.
    assert!(
        m.contains("memvisor_balloon_device_events_total{counter=\"indirect_not_negotiated\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("memvisor_balloon_device_events_total{counter=\"looping_chains\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("memvisor_vcpu_exits_total{vcpu=\"0\",reason=\"io_out\"}"),
        "{m}"
    );

    // The map shows the ballooned top of guest RAM as not present.
    let (s, map) = get(&sock, "/memory/mappings?gpa=0x1f000000&len=0x100000");
    assert_eq!(s, 200);
    assert_eq!(
        map["regions"][1]["totals"]["not_present"], 0x100000,
        "{map}"
    );
    let (s, rep) = get(&sock, "/memory/report");
    assert_eq!(s, 200);
    assert_eq!(rep["configured_bytes"], 512u64 << 20);

    // A burst of report requests: one page-map walk at a time, and the requests that queued
    // share a walk that started after they arrived, so far fewer walks than requests.
    let walks = || {
        let (_, m) = request(&sock, "GET", "/metrics", None).unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("memvisor_page_map_walks_total "))
            .expect("walk counter")
            .parse::<u64>()
            .unwrap()
    };
    let w0 = walks();
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || get(&sock, "/memory/report"))
        })
        .collect();
    for t in burst {
        let (s, rep) = t.join().unwrap();
        assert_eq!(s, 200);
        assert_eq!(rep["ballooned_bytes"], 256u64 << 20, "{rep}");
    }
    let w1 = walks();
    // 16 requests + the second counter read: at most a handful of walks.
    assert!(w1 - w0 <= 6, "{} walks for 17 requests", w1 - w0);
    eprintln!(
        "16 concurrent reports + 1 metrics: {} page-map walks",
        w1 - w0
    );

    // Bad requests: clear errors, and the VM keeps running.
    let (s, body) = request(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 99999}"#)).unwrap();
    assert_eq!(s, 400);
    assert!(body.contains("larger than guest RAM"), "{body}");
    let (s, body) = request(&sock, "PATCH", "/balloon", Some("{not json")).unwrap();
    assert_eq!(s, 400, "{body}");
    let (s, body) = request(
        &sock,
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 1, "deflate_on_oom": false}"#),
    )
    .unwrap();
    assert_eq!(s, 400);
    assert!(body.contains("--balloon"), "{body}");
    assert_eq!(request(&sock, "GET", "/nope", None).unwrap().0, 404);

    // Pause and resume.
    let out = memvisor(&["vm", "pause", "--api-sock", sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(get(&sock, "/vm").1["state"], "Paused");
    let out = memvisor(&["vm", "resume", "--api-sock", sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(get(&sock, "/vm").1["state"], "Running");

    // Deflate: the guest can use the memory again.
    let out = memvisor(&["balloon", "set", "0", "--api-sock", sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("actual == 0", Duration::from_secs(60), || {
        get(&sock, "/balloon/statistics").1["actual_mib"] == 0
    });
    // The guest regrows its 400 MiB data set (the top 96 MiB it never owned stay untouched).
    wait_until("the guest to refill", Duration::from_secs(60), || {
        rss_kib(pid) >= inflated + 150 * 1024
    });

    // Stop cleanly: the report is printed, exit status 130 (stopped on request).
    let out = memvisor(&["vm", "stop", "--api-sock", sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = vm.child.take().unwrap().wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("outcome: interrupted"), "{t}");
    assert!(!sock.exists(), "the socket is removed when the VM stops");
}

#[test]
fn finish_step_ends_the_balloon_step_and_the_guest_goes_on() {
    if !kvm_or_skip("finish_step_ends_the_balloon_step_and_the_guest_goes_on") {
        return;
    }
    let dir = common::TempDir::new("finish-step");
    let start = |name: &str, workload: &str| {
        let sock = dir.path().join(name);
        let report = dir.path().join(format!("{name}.json"));
        let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .args(["run", "-m", "128M", "--api-sock"])
            .arg(&sock)
            .args([
                "--balloon",
                "amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1",
                "-w",
                workload,
                "--report-file",
            ])
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the API socket", Duration::from_secs(20), || sock.exists());
        (
            ChildVm {
                child: Some(child),
                sock: sock.clone(),
            },
            sock,
            report,
        )
    };

    // A workload without a balloon step: refused with the reason, and the VM runs on.
    let (mut other, sock, _) = start("plain.sock", "random:accesses=100G");
    let (s, body) = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FinishBalloonStep"}"#),
    )
    .unwrap();
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("no balloon step"), "{body}");
    assert_eq!(get(&sock, "/vm").1["state"], "Running");
    let out = memvisor(&["vm", "stop", "--api-sock", sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    other.child.take().unwrap().wait().unwrap();

    // A balloon step without an end: it ends on request, the guest verifies its data once
    // more and goes on with the next step.
    let (mut vm, sock, report) = start("balloon.sock", "balloon:data=64M,seconds=0;checksum");
    wait_until("the balloon driver", Duration::from_secs(60), || {
        let (s, b) = get(&sock, "/balloon/device");
        s == 200 && b["activated"] == true
    });
    // Still in the balloon step a while later.
    std::thread::sleep(Duration::from_millis(500));
    let child = vm.child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the step ended alone");
    let out = memvisor(&["vm", "finish-step", "--api-sock", sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let child = vm.child.as_mut().unwrap();
    wait_until("the guest to end", Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    let out = vm.child.take().unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let names: Vec<&str> = rep["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["balloon", "checksum"], "{:#}", rep["ops"]);
    assert_eq!(rep["ops"][0]["mismatches"], 0);
    let driver = &rep["vcpus"][0]["balloon_driver"];
    assert_eq!(driver["data_bytes"], 64u64 << 20, "{driver:#}");
    assert!(
        driver["verified_bytes"].as_u64().unwrap() >= 64 << 20,
        "{driver:#}"
    );
}
