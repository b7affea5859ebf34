//! Running a VM to the end: validate, map memory, create the VM, boot the built-in guest, run
//! the vCPUs, collect their events, stop cleanly on failure, Ctrl-C or timeout, and build the
//! report. The event loop lives on the caller's thread.

use crate::config::{ConfigError, VmConfig};
use crate::control::api::ApiServer;
use crate::control::vmm_api::{CommandMsg, VmCommand, VmmApi};
use crate::devices::balloon::{BalloonDevice, BalloonHandle};
use crate::devices::block::{BlockDevice, BlockHandle};
use crate::devices::event_thread::DeviceThread;
use crate::devices::net::{NetDevice, NetHandle};
use crate::devices::virtio_mmio::MmioTransport;
use crate::devices::{Bus, VmBus};
use crate::vmm::boot;
use crate::vmm::kvm_stats::KvmStats;
use std::os::fd::AsRawFd;

/// Guest-physical address of the balloon's virtio-mmio window (start of the MMIO hole).
pub const BALLOON_MMIO_GPA: u64 = crate::memory::MMIO_HOLE_START;
use crate::memory::{GuestRam, MemoryError};
use crate::report::run::{OpRecord, Outcome, RunReport, VcpuReport};
use crate::seccomp::{ThreadFilter, ThreadKind};
use crate::vmm::vcpu::{self, VcpuEvent, VcpuHandle};
use crate::vmm::vm::{Vm, VmError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Everything that can stop a VM from starting.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Boot.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Booting a Linux kernel.
    #[error(transparent)]
    Linux(#[from] crate::linux::LinuxError),
    /// Seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The API socket.
    #[error("control API: {0}")]
    Api(crate::control::api::ApiError),
    /// The device event thread.
    #[error(transparent)]
    Devices(#[from] crate::devices::event_thread::DeviceThreadError),
    /// A `--disk` that cannot be attached.
    #[error(transparent)]
    Disk(#[from] crate::devices::block::DiskError),
    /// A network interface (its tap) could not be opened.
    #[error(transparent)]
    Net(#[from] crate::devices::net::NetDeviceError),
    /// Thread creation.
    #[error("starting vCPU {vcpu} thread: {source}")]
    Thread {
        /// vCPU index.
        vcpu: u32,
        /// The error.
        source: std::io::Error,
    },
}

/// How a run is controlled from outside.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Set (e.g. by a Ctrl-C handler) to stop the guest early; the report is still produced.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
}

/// Hooks given when a VM starts.
#[derive(Default)]
pub struct StartOptions<'a> {
    /// Preallocation progress.
    pub progress: Option<crate::memory::Progress<'a>>,
    /// Called at guest sync points (`sync` workload step).
    pub sync: Option<vcpu::SyncHook>,
    /// Serve the control API on this Unix socket.
    pub api_sock: Option<std::path::PathBuf>,
    /// Register the VM (its API socket) in this runtime directory while it runs, so
    /// `memvisor report overcommit --all` finds it. Needs `api_sock`.
    pub runtime_dir: Option<crate::report::registry::RuntimeDir>,
    /// Seccomp filters of the VM's threads (default: on). Filters are per thread: the caller's
    /// thread (where the setup runs) is never filtered here. A `sync` hook is the caller's code
    /// run on the vCPU threads, which no allow-list can foresee: with one, the vCPU threads get
    /// the sync-hook deny-list instead of the vCPU allow-list (`crate::seccomp::deny`).
    pub seccomp: crate::seccomp::SeccompMode,
}

/// Runs `config` to the end and returns the report. Errors before the guest starts are
/// returned as `Err`; everything after (guest failures included) is in the report's outcome.
pub fn run(config: &VmConfig, opts: &RunOptions) -> Result<RunReport, VmmError> {
    Ok(Vmm::start(config)?.wait(opts))
}

/// A started VM: guest memory, KVM VM and running vCPU threads.
///
/// Fields drop in order: vCPU threads, then the VM (memslots), then guest memory.
pub struct Vmm {
    handles: Vec<VcpuHandle>,
    vm: Vm,
    ram: Arc<GuestRam>,
    balloon: Option<BalloonHandle>,
    reclaimer: Arc<crate::control::reclaim::Reclaimer>,
    limit_thread: Option<crate::control::reclaim::LimitThread>,
    devices: Option<DeviceThread>,
    disks: Vec<BlockHandle>,
    nets: Vec<NetHandle>,
    linux: Option<crate::linux::LinuxMachine>,
    config: VmConfig,
    events: mpsc::Receiver<VcpuEvent>,
    commands: mpsc::Receiver<CommandMsg>,
    api: Option<ApiServer>,
    registration: Option<crate::report::registry::Registration>,
    kvm_stats: Option<Arc<KvmStats>>,
    setup: Duration,
    started: Instant,
}

impl Vmm {
    /// Validates `config`, maps guest memory, creates the VM, boots the built-in guest and
    /// starts every vCPU.
    pub fn start(config: &VmConfig) -> Result<Vmm, VmmError> {
        Self::start_with(config, StartOptions::default())
    }

    /// As [`Vmm::start`], with hooks.
    pub fn start_with(config: &VmConfig, opts: StartOptions<'_>) -> Result<Vmm, VmmError> {
        let progress = opts.progress;
        let t0 = Instant::now();
        config.check()?;
        // Disk images are opened and locked before guest memory is mapped: a missing or
        // locked image stops the start at once.
        let disks = config
            .disks
            .iter()
            .map(BlockDevice::open)
            .collect::<Result<Vec<_>, _>>()?;
        // So are the taps: a missing tun driver, a busy tap or no permission stops it too.
        let nets = config
            .nets
            .iter()
            .map(NetDevice::open)
            .collect::<Result<Vec<_>, _>>()?;
        let filters = crate::seccomp::VmFilters::new(opts.seccomp)?;
        let ram = Arc::new(GuestRam::new_with(
            &config.memory,
            crate::memory::RamOptions {
                progress,
                pager_thread_start: Some(filters.get(ThreadKind::Uffd).hook()),
                prealloc_thread_start: Some(filters.get(ThreadKind::Prealloc).hook()),
            },
        )?);
        let vm = Vm::new(&ram)?;
        let flags = if config.triple_fault {
            crate::abi::BOOT_FLAG_TRIPLE_FAULT
        } else {
            0
        };
        let (tx, rx) = mpsc::channel();
        let mut fds = Vec::new();
        let mut intx_resampler = None;
        let (bus, linux, balloon, disks, nets): (Arc<dyn Bus>, _, _, _, _) = match &config.linux {
            None => {
                let balloon_mmio = config.balloon.clone().map(|opts| {
                    Arc::new(MmioTransport::new(
                        BALLOON_MMIO_GPA,
                        BalloonDevice::new(opts, ram.clone()),
                    ))
                });
                let balloon_gpa = if balloon_mmio.is_some() {
                    BALLOON_MMIO_GPA
                } else {
                    0
                };
                let layout = boot::setup(&ram, config.vcpus, &config.workload, flags, balloon_gpa)?;
                for id in 0..config.vcpus {
                    let fd = vm.create_vcpu(id)?;
                    boot::setup_vcpu(&fd, id, &layout)?;
                    fds.push(fd);
                }
                (
                    Arc::new(VmBus::new(ram.clone(), balloon_mmio.clone())),
                    None,
                    balloon_mmio.map(BalloonHandle::Mmio),
                    Vec::new(),
                    Vec::new(),
                )
            }
            Some(lc) => {
                let (machine, balloon, disks, nets, resampler) = linux_machine(
                    &vm,
                    &ram,
                    lc,
                    config.vcpus,
                    config.balloon.clone(),
                    disks,
                    nets,
                )?;
                for id in 0..config.vcpus {
                    fds.push(machine.create_vcpu(&vm, id)?);
                }
                intx_resampler = resampler;
                let bus = machine.bus.clone() as Arc<dyn Bus>;
                (bus, Some(machine), balloon, disks, nets)
            }
        };
        let kind = if linux.is_some() {
            vcpu::GuestKind::Linux
        } else {
            vcpu::GuestKind::BuiltIn
        };
        let vcpu_fds: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let kvm_stats = KvmStats::open(vm.fd().as_raw_fd(), &vcpu_fds)
            .map_err(|e| log::debug!("no KVM statistics: {e}"))
            .ok()
            .map(Arc::new);
        // Queue notifications become ioeventfds before any vCPU runs.
        let devices = start_devices(
            &vm,
            balloon.as_ref(),
            &disks,
            &nets,
            intx_resampler,
            &ram,
            DeviceThreadSpec {
                filter: filters.get(ThreadKind::Devices),
                cpus: config.device_cpus(),
            },
        )?;
        let setup = t0.elapsed();
        let started = Instant::now();
        let mut handles: Vec<VcpuHandle> = Vec::new();
        for (id, fd) in fds.into_iter().enumerate() {
            let id = id as u32;
            let h = vcpu::spawn(
                id,
                fd,
                ram.clone(),
                bus.clone(),
                tx.clone(),
                vcpu::SpawnOptions {
                    pin: config.pin.get(&id).copied(),
                    sync: opts.sync.clone(),
                    kind,
                    seccomp: Some(filters.get(if opts.sync.is_some() {
                        ThreadKind::VcpuHook
                    } else {
                        ThreadKind::Vcpu
                    })),
                    assists: !vm.host().hardware,
                },
            )
            .map_err(|source| VmmError::Thread { vcpu: id, source })?;
            handles.push(h);
        }
        let tracker = Arc::new(crate::vmm::working_set::Tracker::new(
            ram.clone(),
            Some(vm.shared_fd()),
        ));
        let reclaimer = Arc::new(crate::control::reclaim::Reclaimer::new(
            ram.clone(),
            config.resident_limit(),
            Some(tracker),
        ));
        let limit_thread =
            (opts.api_sock.is_some() || config.resident_limit().is_some()).then(|| {
                crate::control::reclaim::LimitThread::start(
                    reclaimer.clone(),
                    filters.get(ThreadKind::Api),
                )
            });
        let (cmd_tx, commands) = mpsc::channel();
        let api = match &opts.api_sock {
            Some(path) => {
                let swap = crate::control::vmm_swap::SwapWorker::start(
                    Arc::downgrade(&ram),
                    filters.get(ThreadKind::VmmSwap),
                )
                .map_err(|e| log::warn!("no in-VMM swap (no vmm-swap thread): {e}"))
                .ok();
                let handler = Arc::new(VmmApi {
                    config: config.clone(),
                    ram: ram.clone(),
                    balloon: balloon.clone(),
                    disks: disks.clone(),
                    nets: nets.clone(),
                    vcpus: handles.iter().map(|h| h.status()).collect(),
                    commands: std::sync::Mutex::new(cmd_tx),
                    started,
                    walks: Default::default(),
                    reclaimer: reclaimer.clone(),
                    swap,
                });
                let options = crate::control::api::ApiServerOptions {
                    seccomp: Some(filters.get(ThreadKind::Api)),
                    ..Default::default()
                };
                Some(ApiServer::start_with_options(path, handler, options).map_err(VmmError::Api)?)
            }
            None => None,
        };
        let registration = match (&opts.api_sock, &opts.runtime_dir) {
            (Some(sock), Some(dir)) => match dir.register(sock, ram.size()) {
                Ok(r) => Some(r),
                Err(e) => {
                    log::warn!("this VM will be missing from host-wide reports: {e}");
                    None
                }
            },
            _ => None,
        };
        Ok(Vmm {
            commands,
            api,
            registration,
            kvm_stats,
            balloon,
            reclaimer,
            limit_thread,
            devices,
            disks,
            nets,
            linux,
            config: config.clone(),
            ram,
            vm,
            handles,
            events: rx,
            setup,
            started,
        })
    }

    /// The balloon device, if configured.
    pub fn balloon(&self) -> Option<&BalloonHandle> {
        self.balloon.as_ref()
    }

    /// The disks (`--disk`), in order.
    pub fn disks(&self) -> &[BlockHandle] {
        &self.disks
    }

    /// The network interfaces (`--net`), in order.
    pub fn nets(&self) -> &[NetHandle] {
        &self.nets
    }

    /// A Linux guest's serial console.
    pub fn linux_console(&self) -> Option<&Arc<crate::linux::serial::SerialPort>> {
        self.linux.as_ref().map(|m| m.bus.serial())
    }

    /// KVM's own counters for this VM and its vCPUs (exits handled in the kernel, MMU faults,
    /// 4K/2M/1G mappings); `None` when the kernel lacks `KVM_GET_STATS_FD`.
    pub fn kvm_stats(&self) -> Option<&Arc<KvmStats>> {
        self.kvm_stats.as_ref()
    }

    /// Guest memory (stays mapped after [`Vmm::wait`] until the `Vmm` is dropped).
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Reclaim to host swap and the standing resident limit of this VM.
    pub fn reclaimer(&self) -> &Arc<crate::control::reclaim::Reclaimer> {
        &self.reclaimer
    }

    /// Asks the built-in guest to end its current balloon step (the step polls for this
    /// through `HC_PROGRESS`; the request is consumed there).
    pub fn request_finish(&self) {
        for h in &self.handles {
            h.stats.finish_requested.store(true, Ordering::Release);
        }
    }

    /// The latest balloon-driver progress vCPU `vcpu` reported, if there is such a vCPU.
    pub fn guest_progress(&self, vcpu: u32) -> Option<vcpu::GuestProgress> {
        self.handles.get(vcpu as usize).map(|h| h.stats.progress())
    }

    /// Collects vCPU events until every vCPU has finished, failed or been stopped, stopping
    /// all of them at the first failure, on interrupt or timeout. Returns the report. Call it
    /// once; guest memory stays readable through [`Vmm::ram`] afterwards.
    pub fn wait(&mut self, opts: &RunOptions) -> RunReport {
        let config = &self.config;
        let started = self.started;
        let mut report = RunReport::new(config, self.vm.host().clone());
        report.linux = self.linux.as_ref().map(|m| m.layout.clone());
        report.vcpus = self
            .handles
            .iter()
            .map(|h| VcpuReport::new(h.id, h.pinned))
            .collect();
        let mut begins: Vec<Vec<Option<Instant>>> =
            vec![vec![None; config.workload.steps.len()]; config.vcpus as usize];
        let mut outcome: Option<Outcome> = None;
        let mut running = config.vcpus as usize;
        while running > 0 {
            if outcome.is_none() {
                if opts
                    .interrupt
                    .as_ref()
                    .is_some_and(|f| f.load(Ordering::Relaxed))
                {
                    outcome = Some(Outcome::Interrupted);
                    stop_all(&mut self.handles);
                } else if self.linux.as_ref().is_some_and(|m| m.bus.take_reset()) {
                    outcome = Some(Outcome::GuestStopped {
                        vcpu: 0,
                        reason: "the guest reset the machine through the i8042 (reboot=k)".into(),
                    });
                    stop_all(&mut self.handles);
                } else if opts.timeout.is_some_and(|t| started.elapsed() > t) {
                    outcome = Some(Outcome::TimedOut {
                        after_s: started.elapsed().as_secs_f64(),
                    });
                    stop_all(&mut self.handles);
                } else {
                    let dead = self.ram.dead_pagers();
                    if !dead.is_empty() {
                        log::error!(
                            "the page server of uffd region(s) {dead:?} died; stopping the guest"
                        );
                        // Ask every vCPU to stop first, then wake the ones blocked on faults
                        // nobody will serve (they see zero pages for the instant before they
                        // stop; the guest never runs again).
                        for h in &self.handles {
                            let _ = h.request(vcpu::RunState::Stopped, Duration::ZERO);
                        }
                        for &i in &dead {
                            self.ram.release_faulters(i);
                        }
                        outcome = Some(Outcome::PagerDied { regions: dead });
                        stop_all(&mut self.handles);
                    }
                }
            }
            while let Ok((cmd, reply)) = self.commands.try_recv() {
                let result = match cmd {
                    VmCommand::Pause | VmCommand::Resume => {
                        let target = if cmd == VmCommand::Pause {
                            vcpu::RunState::Paused
                        } else {
                            vcpu::RunState::Running
                        };
                        let ok = self
                            .handles
                            .iter()
                            .filter(|h| h.state() != vcpu::RunState::Stopped)
                            .all(|h| h.request(target, Duration::from_secs(5)));
                        if ok {
                            Ok(())
                        } else {
                            Err("a vCPU did not change state within 5 s".to_string())
                        }
                    }
                    VmCommand::Stop => {
                        if outcome.is_none() {
                            outcome = Some(Outcome::Interrupted);
                        }
                        stop_all(&mut self.handles);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            let ev = match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(ev) => ev,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match ev {
                VcpuEvent::OpBegin { vcpu, index, at } => {
                    if let Some(slot) = begins.get_mut(vcpu as usize).and_then(|v| v.get_mut(index))
                    {
                        *slot = Some(at);
                    }
                }
                VcpuEvent::OpEnd {
                    vcpu,
                    index,
                    kind,
                    results,
                    at,
                } => {
                    let begin = begins
                        .get(vcpu as usize)
                        .and_then(|v| v.get(index))
                        .copied()
                        .flatten()
                        .unwrap_or(at);
                    if let Some(v) = report.vcpus.get_mut(vcpu as usize) {
                        v.ops.push(OpRecord {
                            index,
                            name: crate::config::workload::kind_name(kind).into(),
                            results,
                            start_s: begin.duration_since(started).as_secs_f64(),
                            seconds: at.duration_since(begin).as_secs_f64(),
                        });
                    }
                }
                VcpuEvent::Log { vcpu, text } => {
                    log::info!("guest vcpu{vcpu}: {text}");
                    report.guest_log.push(format!("vcpu{vcpu}: {text}"));
                }
                VcpuEvent::Done {
                    vcpu,
                    status,
                    calls,
                } => {
                    running -= 1;
                    if let Some(v) = report.vcpus.get_mut(vcpu as usize) {
                        v.guest_status = Some(status);
                        v.guest_hypercalls = Some(calls);
                    }
                    if status != 0 && outcome.is_none() {
                        outcome = Some(Outcome::GuestError { vcpu, status });
                    }
                }
                VcpuEvent::Failed(f) => {
                    running -= 1;
                    log::info!("{f}");
                    if outcome.is_none() {
                        outcome = Some(Outcome::Failed(f));
                        stop_all(&mut self.handles);
                    }
                }
                VcpuEvent::GuestStopped { vcpu, reason } => {
                    running -= 1;
                    if outcome.is_none() {
                        outcome = Some(Outcome::GuestStopped { vcpu, reason });
                        stop_all(&mut self.handles);
                    }
                }
                VcpuEvent::Stopped { .. } => running -= 1,
            }
        }
        self.registration.take();
        if let Some(api) = self.api.take() {
            api.stop();
        }
        report.run_seconds = started.elapsed().as_secs_f64();
        report.setup_seconds = self.setup.as_secs_f64();
        for h in &self.handles {
            let v = &mut report.vcpus[h.id as usize];
            v.exits = h
                .stats
                .exits()
                .into_iter()
                .map(|(r, n)| (r.name().to_string(), n))
                .collect();
            v.total_exits = h.stats.total();
            v.hypercall_exits = h.stats.hypercalls.load(Ordering::Relaxed);
            v.unclaimed_io = h.stats.unclaimed_io.load(Ordering::Relaxed);
            v.assists = h
                .stats
                .assists()
                .into_iter()
                .map(|(k, n)| (k.name().to_string(), n))
                .collect();
            let p = h.stats.progress();
            v.balloon_driver = (p.updates > 0).then_some(p);
        }
        for h in self.handles.iter_mut() {
            h.stop();
        }
        if let Some(m) = &self.linux {
            m.bus.serial().flush();
        }
        report.finish(outcome.unwrap_or(Outcome::Completed), &self.ram);
        let balloon = self.balloon.as_ref().map(BalloonHandle::figures);
        report.memory = Some(crate::report::overcommit::VmMemory::read(
            &self.ram, balloon,
        ));
        report
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        // vCPU threads use guest memory; stop them before the mappings go away.
        for h in self.handles.iter_mut() {
            h.stop();
        }
        self.limit_thread.take();
        self.devices.take();
    }
}

/// How the device thread runs: its seccomp filter and the host CPUs it may use (empty: any).
struct DeviceThreadSpec {
    filter: ThreadFilter,
    cpus: Vec<usize>,
}

/// Starts the device event thread serving the balloon, the disks and the network interfaces (each with its own
/// subscriber; their queue notifications become ioeventfds here, before any vCPU runs) and
/// the PCI INTx line's resample eventfd, or nothing when the VM has no device.
fn start_devices(
    vm: &Vm,
    balloon: Option<&BalloonHandle>,
    disks: &[BlockHandle],
    nets: &[NetHandle],
    intx: Option<crate::devices::pci::shared_intx::IntxResampler>,
    ram: &Arc<GuestRam>,
    thread: DeviceThreadSpec,
) -> Result<Option<DeviceThread>, VmmError> {
    use crate::devices::balloon::BalloonEvents;
    use crate::devices::event_thread::{DeviceThreadError::Descriptors, Subscriber};
    use crate::devices::queue_events::QueueEvents;
    if balloon.is_none() && disks.is_empty() && nets.is_empty() {
        return Ok(None);
    }
    let kvm = crate::devices::pci::KvmIrq::new(vm.kvm(), vm.fd()).map_err(Descriptors)?;
    let mut subscribers: Vec<Subscriber> = Vec::new();
    if let Some(b) = balloon {
        match b {
            BalloonHandle::Mmio(t) => t.attach_link(&*kvm),
            BalloonHandle::Pci(t) => t.attach_link(kvm.clone()),
        }
        .map_err(Descriptors)?;
        subscribers.push(Box::new(BalloonEvents::new(b.clone(), ram.clone())?));
    }
    for d in disks {
        let link = d.attach_link(kvm.clone()).map_err(Descriptors)?;
        subscribers.push(Box::new(QueueEvents::new(d.clone(), link, ram.clone())?));
    }
    for n in nets {
        let link = n.attach_link(kvm.clone()).map_err(Descriptors)?;
        subscribers.push(Box::new(crate::devices::net::NetEvents::new(
            n.clone(),
            link,
            ram.clone(),
        )?));
    }
    if let Some(r) = intx {
        subscribers.push(Box::new(r));
    }
    Ok(Some(DeviceThread::start_on(
        subscribers,
        thread.filter,
        &thread.cpus,
    )?))
}

/// GSI that INTA# of PCI devices is routed to (the DSDT's `_PRT`); Linux uses MSI-X first.
const PCI_INTX_GSI: u32 = 10;

/// The irqchip, devices and loaded kernel of a Linux guest. The balloon and the disks are
/// modern virtio-pci functions on a PCI bus (conf1 ports, BARs in the PCI window; the balloon
/// first, then the disks in `--disk` order, so Linux names them vda, vdb, ..., then the network
/// interfaces in `--net` order) described to the guest as an ACPI host bridge, their interrupts
/// MSI-X through GSI routes and irqfds (INTA# of all of them is one shared line, an irqfd
/// with a resample eventfd whose resampler the device thread must serve).
fn linux_machine(
    vm: &Vm,
    ram: &Arc<GuestRam>,
    lc: &crate::linux::LinuxConfig,
    vcpus: u32,
    balloon: Option<balloon::BalloonOptions>,
    disks: Vec<BlockDevice>,
    nets: Vec<NetDevice>,
) -> Result<LinuxDevices, VmmError> {
    use crate::devices::pci::shared_intx::SharedIntx;
    use crate::devices::pci::{
        KvmIrq, PciBus, PciIrq, PCI_MMIO_WINDOW_SIZE, PCI_MMIO_WINDOW_START,
    };
    use crate::linux::LinuxError;
    let irq = crate::linux::irq::IrqChip::create(vm.shared_fd()).map_err(LinuxError::from)?;
    let mut devices = crate::linux::Devices::default();
    let mut handle = None;
    let mut disk_handles = Vec::new();
    let mut net_handles = Vec::new();
    let mut resampler = None;
    if balloon.is_some() || !disks.is_empty() || !nets.is_empty() {
        let pci_err = |what: &str, e: String| {
            LinuxError::Device(format!("{what}'s virtio-pci function: {e}"))
        };
        let kvm_irq =
            KvmIrq::new(vm.kvm(), vm.fd()).map_err(|e| pci_err("the PCI bus", e.to_string()))?;
        let line = kvm_irq
            .intx(PCI_INTX_GSI)
            .map_err(|e| pci_err("the PCI bus", e.to_string()))?;
        let intx = SharedIntx::new(line.clone());
        resampler = Some(
            intx.resampler(
                line.resample_event()
                    .map_err(|e| pci_err("the PCI bus", format!("INTx resample eventfd: {e}")))?,
            ),
        );
        // MSI-X vectors: GSI routes with irqfds in the VM's one routing table.
        let msi = Arc::new(vm.irq_routing());
        let irq_for = |function: usize| PciIrq {
            msi: msi.clone(),
            intx: Some(intx.pin(function as u32)),
            intx_line: PCI_INTX_GSI as u8,
        };
        let mut pci = PciBus::new();
        let mut slots = Vec::new();
        if let Some(opts) = balloon {
            let (dev, slot) = pci
                .add_virtio(
                    BalloonDevice::new(opts, ram.clone()),
                    ram.clone(),
                    irq_for(slots.len()),
                )
                .map_err(|e| pci_err("the balloon", e.to_string()))?;
            slots.push(slot);
            handle = Some(BalloonHandle::Pci(dev));
        }
        for disk in disks {
            let what = format!("disk {}", disk.config.id);
            let (dev, slot) = pci
                .add_virtio(disk, ram.clone(), irq_for(slots.len()))
                .map_err(|e| pci_err(&what, e.to_string()))?;
            slots.push(slot);
            disk_handles.push(dev);
        }
        for net in nets {
            let what = format!("network interface {}", net.config.id);
            let (dev, slot) = pci
                .add_virtio(net, ram.clone(), irq_for(slots.len()))
                .map_err(|e| pci_err(&what, e.to_string()))?;
            slots.push(slot);
            net_handles.push(dev);
        }
        devices.buses.push(Arc::new(pci));
        devices.dsdt_aml = crate::linux::acpi::pci_host_bridge_aml(
            PCI_MMIO_WINDOW_START as u32,
            PCI_MMIO_WINDOW_SIZE as u32,
            &slots,
            PCI_INTX_GSI,
        );
    }
    let machine =
        crate::linux::LinuxMachine::setup(ram, lc, vcpus, vm.host().hardware, irq, devices)?;
    Ok((machine, handle, disk_handles, net_handles, resampler))
}

/// A Linux guest's machine, its balloon, its disks and its network interfaces.
type LinuxDevices = (
    crate::linux::LinuxMachine,
    Option<BalloonHandle>,
    Vec<BlockHandle>,
    Vec<NetHandle>,
    Option<crate::devices::pci::shared_intx::IntxResampler>,
);

fn stop_all(handles: &mut [VcpuHandle]) {
    for h in handles.iter() {
        // Ask all first, so they stop in parallel; `stop` below joins.
        let _ = h.request(vcpu::RunState::Stopped, Duration::from_millis(0));
    }
    for h in handles.iter_mut() {
        h.stop();
    }
}
