//! Least privilege for the threads that run code memvisor does not write or cannot foresee:
//! the prealloc threads are filtered from their first line (their own allow-list), and the vCPU
//! threads of a VM started with a sync hook run under the hook deny-list: the hook's usual work
//! goes through, a socket or a new process traps.
//!
//! Each case runs in a child process (this test binary again, see `common::child`), so a trap
//! never takes the test harness down. About 3 s in all (four small in-process VMs).

mod common;

use common::{case, child, kvm_or_skip, text};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::memory::GuestRam;
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, StartOptions, Vmm};
use memvisor::vmm::vcpu::SyncHook;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The calling thread's kernel thread id.
fn tid() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Starts a VM of `regions` running `steps` (with `seccomp: on`, the default) and waits up to
/// 30 s for it to complete.
fn run_vm(regions: &[&str], steps: &str, opts: StartOptions<'_>) {
    let config = VmConfig {
        vcpus: 1,
        memory: regions
            .iter()
            .enumerate()
            .map(|(i, r)| RegionConfig::parse(i, r).unwrap())
            .collect(),
        workload: Workload::parse(&[steps]).unwrap(),
        ..Default::default()
    };
    let mut vmm = Vmm::start_with(&config, opts).expect("start");
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
}

/// A thread that is stopped in a progress callback, waiting for its `/proc` status to be read.
#[derive(Default)]
struct Rendezvous {
    /// The tid waiting to be looked at; `None` once it was.
    waiting: Mutex<Option<u32>>,
    cv: Condvar,
}

#[test]
fn prealloc_threads_are_filtered_from_their_start() {
    let t = "prealloc_threads_are_filtered_from_their_start";
    if case().as_deref() == Some("prealloc") {
        // Each populate step ends in the progress callback, on the prealloc thread that did it:
        // it waits there while this process's own (unfiltered) observer reads its status.
        let meeting = Arc::new(Rendezvous::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(Mutex::new(false));
        let observer = {
            let (meeting, seen, done) = (meeting.clone(), seen.clone(), done.clone());
            std::thread::spawn(move || loop {
                let mut w = meeting.waiting.lock().unwrap();
                while w.is_none() && !*done.lock().unwrap() {
                    w = meeting
                        .cv
                        .wait_timeout(w, Duration::from_millis(50))
                        .unwrap()
                        .0;
                }
                let Some(tid) = w.take() else { return };
                let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"));
                seen.lock().unwrap().push((tid, status.unwrap()));
                meeting.cv.notify_all();
            })
        };
        let progress = |_region: usize, _done: u64, _total: u64| {
            let mut w = meeting.waiting.lock().unwrap();
            *w = Some(tid());
            meeting.cv.notify_all();
            while w.is_some() {
                w = meeting.cv.wait(w).unwrap();
            }
        };
        run_vm(
            &[
                "size=16M,prealloc=on,prealloc-threads=1",
                "size=64M,prealloc=on,prealloc-threads=2",
            ],
            "touch",
            StartOptions {
                progress: Some(&progress),
                ..Default::default()
            },
        );
        *done.lock().unwrap() = true;
        observer.join().unwrap();
        let me = std::process::id();
        for (tid, status) in seen.lock().unwrap().iter() {
            let field = |f: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(f))
                    .unwrap_or("?")
                    .trim()
                    .to_string()
            };
            println!(
                "observed {} main={} seccomp={} filters={}",
                field("Name:"),
                *tid == me,
                field("Seccomp:"),
                field("Seccomp_filters:")
            );
        }
        std::process::exit(0);
    }
    if case().is_some() || !kvm_or_skip(t) {
        return;
    }
    let out = child(t, "prealloc");
    assert!(out.status.success(), "{:?}\n{}", out.status, text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // (The first line follows libtest's "test ... " on the same line.)
    let mut seen: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.find("observed ").map(|at| &l[at..]))
        .collect();
    seen.sort();
    // One thread for region 0, two for region 1: each a thread of its own (also the single
    // one), each filtered (filter mode 2, the prealloc allow-list).
    assert_eq!(
        seen,
        [
            "observed prealloc0 main=false seccomp=2 filters=1",
            "observed prealloc0 main=false seccomp=2 filters=1",
            "observed prealloc1 main=false seccomp=2 filters=1",
        ],
        "{}",
        text(&out)
    );
}

/// What test hooks and `memvisor bench hugepages` do on the vCPU thread: read `/proc`, create,
/// write and remove a file, start a thread, discard guest memory, sleep.
fn hook_work(ram: &GuestRam) {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let field = |f: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(f))
            .map(str::trim)
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "hook: Seccomp {} filters {}",
        field("Seccomp:"),
        field("Seccomp_filters:")
    );
    let file = std::env::temp_dir().join(format!("memvisor-hook-{}", std::process::id()));
    std::fs::write(&file, b"written by the hook").unwrap();
    std::fs::remove_file(&file).unwrap();
    let n = std::thread::spawn(|| std::fs::read_to_string("/proc/self/maps").unwrap().len())
        .join()
        .unwrap();
    assert!(n > 0);
    let out = ram.discard(16 << 20, 1 << 20).unwrap();
    assert_eq!(out.requested, 1 << 20);
    std::thread::sleep(Duration::from_millis(10));
    println!("hook work done");
}

#[test]
fn a_sync_hook_vcpu_thread_runs_under_the_hook_deny_list() {
    let t = "a_sync_hook_vcpu_thread_runs_under_the_hook_deny_list";
    if let Some(c) = case() {
        let hook: SyncHook = Arc::new(move |_vcpu, _tag, ram: &GuestRam| {
            hook_work(ram);
            match c.as_str() {
                "socket" => {
                    // SAFETY: plain socket(2); never returns here under the filter.
                    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                    println!("socket returned {fd}");
                }
                "fork" => {
                    // (Not std::process::Command: posix_spawn blocks every signal around its
                    // clone, so the trap kills the process with SIGSYS before the report.)
                    // SAFETY: fork(2); a child that got through exits at once.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // SAFETY: _exit in the forked child, which must not run anything else.
                        unsafe { libc::_exit(0) };
                    }
                    println!("fork returned {pid}");
                }
                _ => {}
            }
        });
        run_vm(
            &["size=16M", "size=16M"],
            "sync:tag=1;touch",
            StartOptions {
                sync: Some(hook),
                ..Default::default()
            },
        );
        std::process::exit(0);
    }
    if !kvm_or_skip(t) {
        return;
    }
    // The hook's usual work passes; the vCPU thread is filtered (the clone3 filter and the
    // deny-list).
    let out = child(t, "work");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{}", out.status, text(&out));
    assert!(
        stdout.contains("hook: Seccomp 2 filters 2"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("hook work done"), "{}", text(&out));
    // A socket and a new process trap, and the report names the thread, its filter and the call.
    for (case, call) in [("socket", "socket (41)"), ("fork", "clone (56)")] {
        let out = child(t, case);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{case}: the child must abort: {:?}\n{}",
            out.status,
            text(&out)
        );
        assert!(stdout.contains("hook work done"), "{case}: {}", text(&out));
        assert!(
            !stdout.contains("returned"),
            "{case}: the call went through"
        );
        for want in [
            "thread `vcpu0` (vCPU with sync hook filter, tid ",
            &format!("made a forbidden system call: {call}"),
            "deny-list",
            "--seccomp log",
        ] {
            assert!(stderr.contains(want), "{case}: no `{want}` in:\n{stderr}");
        }
    }
}
