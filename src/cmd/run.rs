//! `memvisor run`: boot a guest and print its report.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use memvisor::config::workload::Workload;
use memvisor::config::{parse_pin, ConfigError, RegionConfig, VmConfig};
use memvisor::runner::{self, RunOptions};
use memvisor::seccomp::{SeccompMode, ThreadFilter, ThreadKind};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of vCPUs, each a host thread named vcpu<N> (QEMU: -smp).
    #[arg(long, visible_alias = "smp", default_value_t = 1)]
    vcpus: u32,
    /// A guest RAM region, repeatable; regions are laid out in order from GPA 0, skipping the
    /// 3-4 GiB MMIO hole. Syntax: size=512M[,backend=anon][,thp=on|off][,shared=on]
    /// [,prealloc=on][,mergeable=on]. Default: one 512M anonymous region.
    #[arg(long = "memory", short = 'm', value_name = "SPEC")]
    memory: Vec<String>,
    /// Read the VM configuration from a JSON file (the --json report's "config" object).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["memory", "workload"])]
    config: Option<PathBuf>,
    /// Pin vCPU threads to host CPUs, e.g. 0=2,1=3 (what `taskset` does by hand), and the
    /// device thread with devices=CPU. Without devices=, the device thread runs on the pinned
    /// vCPUs' CPUs (anywhere when no vCPU is pinned).
    #[arg(long, value_name = "VCPU=CPU,...[,devices=CPU]")]
    pin: Option<String>,
    /// Built-in guest workload, repeatable or `;`-separated, run in order by every vCPU on its
    /// own share of RAM: touch[:stride=4K,passes=1,work-only=0,ws=SIZE], fill[:seed=1],
    /// verify[:seed=1], same[:value=N], checksum, read[:stride=4K,passes=1,ws=SIZE],
    /// random[:ws=SIZE,accesses=1M,seed=N], fault (ws: only the first SIZE bytes of the share).
    /// Default: touch;fill;verify.
    #[arg(long, short = 'w', value_name = "STEP")]
    workload: Vec<String>,
    /// A virtio-balloon device (virtio-mmio for the built-in guest):
    /// amount_mib=N,deflate_on_oom=on|off,stats_polling_interval_s=N[,free_page_reporting=on].
    #[arg(long, value_name = "OPTIONS")]
    balloon: Option<String>,
    /// A virtio-blk disk for a Linux guest (virtio-pci), repeatable: path=IMAGE (a raw image
    /// file)[,readonly=on][,id=NAME (default vda, vdb, ...; the serial the guest reads)]
    /// [,direct=on (O_DIRECT: no host page cache; the guest sees 4 KiB blocks)].
    #[arg(long = "disk", value_name = "OPTIONS")]
    disk: Vec<String>,
    /// A virtio-net interface for a Linux guest (virtio-pci, after the disks), repeatable:
    /// tap=NAME (attach to that tap, created if missing) or tap (a new tap; memvisor prints its
    /// name)[,mac=aa:bb:cc:dd:ee:ff (default 52:54:00:12:34:56, +1 per interface)]
    /// [,id=NAME (default net0, net1, ...)]. Needs CAP_NET_ADMIN or a tap made for this user.
    #[arg(long = "net", value_name = "OPTIONS")]
    net: Vec<String>,
    /// Serve the control API (HTTP/1.1, JSON) on this Unix socket, mode 0600.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Runtime directory where a VM with --api-sock registers itself for host-wide reports
    /// (`memvisor report overcommit --all`). Default: $MEMVISOR_RUNTIME_DIR, else /run/memvisor
    /// as root, else $XDG_RUNTIME_DIR/memvisor.
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report_file: Option<PathBuf>,
    /// Stop the guest after this many seconds (the run then counts as failed).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Boot this Linux kernel (bzImage, e.g. a Debian vmlinuz, or ELF vmlinux) instead of the
    /// built-in guest; `scripts/guest-assets.sh` builds one with an initramfs. The guest runs
    /// until it reboots or powers off, Ctrl-C, --timeout or `memvisor vm stop`.
    #[arg(long, value_name = "PATH", conflicts_with = "workload")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel (QEMU: -initrd).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel (QEMU: -append). Default: "console=ttyS0
    /// earlyprintk=serial reboot=k panic=1"; `noxsave clearcpuid=popcnt,smap` is added on hosts without VMX/SVM.
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    cmdline: Option<String>,
    /// Write the guest's serial console (ttyS0) to this file instead of stdout.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    console: Option<PathBuf>,
    /// Seccomp filters on memvisor's threads: `on` (a forbidden system call is reported and
    /// memvisor aborts), `log` (allowed and logged by the kernel, see dmesg) or `off` (no
    /// filters; for debugging).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::On)]
    seccomp: SeccompMode,
    /// Make the built-in guest triple-fault at entry (tests the failure path).
    #[arg(long, hide = true)]
    triple_fault: bool,
}

fn build_config(a: &RunArgs) -> Result<VmConfig, ConfigError> {
    let mut c = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            serde_json::from_str(&text).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?
        }
        None => VmConfig::default(),
    };
    if a.config.is_none() || a.vcpus != 1 {
        c.vcpus = a.vcpus;
    }
    if !a.memory.is_empty() {
        c.memory = a
            .memory
            .iter()
            .enumerate()
            .map(|(i, m)| RegionConfig::parse(i, m))
            .collect::<Result<_, _>>()?;
    }
    if !a.workload.is_empty() {
        c.workload = Workload::parse(&a.workload)?;
    }
    if let Some(p) = &a.pin {
        (c.pin, c.pin_devices) = parse_pin(p)?;
    }
    c.triple_fault |= a.triple_fault;
    if let Some(kernel) = &a.kernel {
        c.linux = Some(memvisor::linux::LinuxConfig {
            kernel: kernel.clone(),
            initrd: a.initrd.clone(),
            cmdline: a.cmdline.clone(),
            console: a.console.clone(),
        });
    }
    if let Some(b) = &a.balloon {
        c.balloon = Some(memvisor::config::parse_balloon(b)?);
    }
    if !a.disk.is_empty() {
        c.disks = a
            .disk
            .iter()
            .enumerate()
            .map(|(i, d)| memvisor::config::disk::DiskConfig::parse(i, d))
            .collect::<Result<_, _>>()?;
    }
    if !a.net.is_empty() {
        c.nets = a
            .net
            .iter()
            .enumerate()
            .map(|(i, n)| memvisor::config::net::NetConfig::parse(i, n))
            .collect::<Result<_, _>>()?;
    }
    c.check()?;
    Ok(c)
}

pub fn cmd_run(a: RunArgs) -> Result<ExitCode, String> {
    // Setup (reading the configuration, mapping memory, creating the VM, binding the API
    // socket, ...) runs under the setup deny-list; every thread started from here on inherits
    // it under its own filter.
    ThreadFilter::new(a.seccomp, ThreadKind::Setup)
        .and_then(|f| f.apply())
        .map_err(|e| e.to_string())?;
    let config = build_config(&a).map_err(|e| e.to_string())?;
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupt.clone())
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }
    let opts = RunOptions {
        interrupt: Some(interrupt),
        timeout: a.timeout.map(Duration::from_secs_f64),
    };
    let bar = progress_bar();
    let start = runner::StartOptions {
        progress: bar.as_ref().map(|f| f as _),
        api_sock: a.api_sock.clone(),
        runtime_dir: Some(memvisor::report::registry::RuntimeDir::or_default(
            a.runtime_dir.clone(),
        )),
        seccomp: a.seccomp,
        ..Default::default()
    };
    let mut vmm = runner::Vmm::start_with(&config, start).map_err(|e| e.to_string())?;
    // Set-up is done: what it allocated and freed goes back to the kernel (idle RSS).
    memvisor::memory::release_free_heap();
    // From here on the main thread runs the event loop and the report (and starts the console
    // input thread, which inherits its filter).
    ThreadFilter::new(a.seccomp, ThreadKind::Main)
        .and_then(|f| f.apply())
        .map_err(|e| e.to_string())?;
    // A Linux guest's console input is stdin (typing, or a pipe: tests drive a guest shell
    // that way); the terminal goes raw only when the console is on it.
    let raw_terminal = match vmm.linux_console() {
        Some(port) => {
            let raw = (a.console.is_none() && std::io::stdin().is_terminal())
                .then(memvisor::linux::serial::RawTerminal::enter)
                .flatten();
            if let Err(e) = memvisor::linux::serial::forward_stdin(port.clone()) {
                log::warn!("console input: {e}");
            }
            raw
        }
        None => None,
    };
    let report = vmm.wait(&opts);
    drop(raw_terminal);
    let json = serde_json::to_string_pretty(&report).expect("report serialises");
    if let Some(path) = &a.report_file {
        std::fs::write(path, &json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::from(report.outcome.exit_code() as u8))
}

/// A progress bar for preallocation when stderr is a terminal.
fn progress_bar() -> Option<impl Fn(usize, u64, u64) + Sync> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "prealloc region {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Some(move |region: usize, done: u64, total: u64| {
        bar.set_length(total);
        bar.set_message(region.to_string());
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
        }
    })
}
