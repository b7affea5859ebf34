//! The allow-lists: which system calls (and, where it matters, which arguments) each kind of
//! VMM thread may make once its filter is in place (the two kinds whose work cannot be foreseen
//! have deny-lists instead: [`super::deny`]). Found by tracing (`strace -f`) `memvisor
//! run` through every workload, backend and API request, and the whole test suite with the
//! filters on; kept as small as that allowed.
//!
//! Every thread: memory management for the allocator and thread exit (`mmap`/`mprotect` never
//! with `PROT_EXEC`, `madvise(MADV_DONTNEED)`), futexes, clocks and sleeps, `write` (logs,
//! eventfds), `close`, signal return and masks, `getrandom` (hash maps), exiting, and
//! `tgkill(own pid, SIGABRT)` for the SIGSYS reporter's abort. Nobody may open a socket,
//! connect, bind or listen, `execve`, `ptrace`, mount, load modules or change credentials.
//!
//! - **vCPU**: `ioctl` `KVM_RUN`, `KVM_GET_REGS` (the RIP of a failure); the emulation assists
//!   of hosts without VMX/SVM (`KVM_GET_SREGS`, `KVM_SET_REGS`, `KVM_GET_FPU`,
//!   `KVM_GET_VCPU_EVENTS`, `KVM_SET_VCPU_EVENTS`); `KVM_SET_GSI_ROUTING` (an MSI-X table
//!   or configuration-space write that makes a vector deliverable with a new message points
//!   its GSI route at it: `crate::vmm::irq_routing`); `KVM_IOEVENTFD` (a guest moving a
//!   virtio-pci BAR moves its notification ioeventfds); MSI-X messages (an unmask sending a
//!   pending one) and INTx (a configuration write that re-enables it) are irqfd writes, an
//!   ISR read that deasserts INTx makes no call at all (KVM lowers the line at the guest's
//!   EOI: `crate::devices::pci`'s `kvm.rs`); handing work to the device thread is an eventfd
//!   `write`.
//!   No discards and no disk I/O: every device's queues are processed on the device thread.
//! - **devices** (the device event thread): `epoll_wait`/`epoll_pwait`, `read` of its
//!   eventfds and timerfd, `timerfd_settime`; the balloon's discards and reclaims through the
//!   memory module (`madvise` `MADV_DONTNEED`/`MADV_POPULATE_WRITE`,
//!   `fallocate(PUNCH_HOLE|KEEP_SIZE)`, `mincore`); the disks' image I/O (`pread64`,
//!   `pwrite64`, `fdatasync`, `fallocate(PUNCH_HOLE|KEEP_SIZE)` for discards and
//!   `fallocate(ZERO_RANGE|KEEP_SIZE)` for write-zeroes); the network interfaces' tap I/O
//!   (`read` of a frame, `writev` of one: both in the common set already); the devices'
//!   interrupts: irqfd `write`s (MSI-X, and INTx, raised again after the guest's EOI when
//!   the resample eventfd, `read` like the others, says KVM lowered it). Not
//!   `KVM_SET_GSI_ROUTING` nor `KVM_IRQFD`: routes and irqfds are made at setup and pointed
//!   on the vCPU thread.
//! - **API** (accept and connection threads): `poll`, `accept4`, `recvfrom`/`sendto`,
//!   `setsockopt`, `shutdown`, `ioctl(FIONBIO)`, `fcntl(F_DUPFD_CLOEXEC)`; starting connection
//!   threads (`clone` with `CLONE_THREAD` only: `clone3`, whose flags a filter cannot see,
//!   fails with `ENOSYS` so the C library falls back to `clone`); the handlers' reads of
//!   `/proc/self/pagemap`, `/proc/kpageflags`, `/proc/self/ksm_stat` and friends (`openat`
//!   read-only, `pread64`, `read`, `statx`, `PAGEMAP_SCAN`), `mincore`,
//!   `prctl(PR_GET_MEMORY_MERGE)`; the balloon's interrupts (a new target: an irqfd `write`,
//!   MSI-X or INTx); reclaim to host swap through the memory module
//!   (`madvise` `MADV_PAGEOUT`/`MADV_COLD`; also the `api-reclaim` thread of the resident
//!   limit); the working-set estimate (`KVM_SET_USER_MEMORY_REGION` to turn on dirty logging of
//!   the existing memslots, `KVM_GET_DIRTY_LOG`).
//! - **uffd handler**: `poll`, `read` (fault events, the stop and fill eventfds), `pread64`
//!   (the source image or swap file), `ioctl` `UFFDIO_COPY`/`UFFDIO_ZEROPAGE`/`UFFDIO_WAKE`;
//!   `openat` fails with `EACCES` ([`open_eacces`]).
//! - **in-VMM swap** (`vmm-swap`, [`crate::control::vmm_swap`]): creating, writing, syncing,
//!   punching, evicting and removing the swap file at the path the API request names
//!   (`openat`, `pwrite64`, `pread64`, `fdatasync`, `fadvise64`, `fallocate(PUNCH_HOLE)`,
//!   `ftruncate`, `fstatfs`, `unlink`), finding backed pages (`mincore`), dropping them
//!   (`madvise(MADV_DONTNEED)`, `fallocate(PUNCH_HOLE)` on memfd/hugetlbfs), creating a
//!   userfaultfd (`userfaultfd`, or `/dev/userfaultfd` with `USERFAULTFD_IOC_NEW`; `UFFDIO_API`,
//!   `UFFDIO_REGISTER`, `UFFDIO_UNREGISTER`) and its eventfds, and starting the handler thread,
//!   which inherits this list and narrows it to its own (so this list holds the handler's
//!   `poll` and `UFFDIO_COPY`/`UFFDIO_ZEROPAGE`/`UFFDIO_WAKE` too, and `seccomp` with
//!   `prctl(PR_SET_NO_NEW_PRIVS)` for installing its filter).
//! - **prealloc** (the threads that populate guest memory before it runs): `madvise`
//!   `MADV_POPULATE_WRITE`; `memvisor run`'s progress bar on a terminal (`ioctl` `TCGETS`,
//!   `TIOCGWINSZ`).
//! - **main** (`memvisor run` after setup): the event loop (kicks: `tgkill(own pid,
//!   SIGRTMIN)`), stopping (joining threads, waking the API accept thread with `sendto`,
//!   `UFFDIO_UNREGISTER`, unlinking the API socket and the runtime-directory entry) and the
//!   report (`openat`, reads of `/proc`, writing the report file), unmapping guest memory; a
//!   Linux guest's console on the terminal (`TCGETS`/`TCSETS*`, and the input thread it starts,
//!   as the API does, which inherits this filter).

use super::ThreadKind;
use seccompiler::{
    SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompRule,
};
use std::collections::BTreeMap;

// Request numbers are `c_ulong`, which is u64 on x86-64 (the only target of these filters).

/// ioctl type of KVM.
const KVMIO: u32 = 0xAE;
/// ioctl type of userfaultfd.
const UFFDIO: u32 = 0xAA;

/// `KVM_RUN`.
pub const KVM_RUN: u64 = nix::request_code_none!(KVMIO, 0x80);
/// `KVM_GET_REGS`.
pub const KVM_GET_REGS: u64 =
    nix::request_code_read!(KVMIO, 0x81, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_SET_REGS` (emulation assists: RIP past `int3`/`fwait`).
pub const KVM_SET_REGS: u64 =
    nix::request_code_write!(KVMIO, 0x82, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_SREGS` (emulation assists: CR3 and paging mode for the walk to RIP).
pub const KVM_GET_SREGS: u64 =
    nix::request_code_read!(KVMIO, 0x83, size_of::<kvm_bindings::kvm_sregs>());
/// `KVM_GET_FPU` (emulation assists: is an x87 exception pending at `fwait`).
pub const KVM_GET_FPU: u64 =
    nix::request_code_read!(KVMIO, 0x8c, size_of::<kvm_bindings::kvm_fpu>());
/// `KVM_GET_VCPU_EVENTS` (emulation assists: the event state `#BP` is added to).
pub const KVM_GET_VCPU_EVENTS: u64 =
    nix::request_code_read!(KVMIO, 0x9f, size_of::<kvm_bindings::kvm_vcpu_events>());
/// `KVM_SET_VCPU_EVENTS` (emulation assists: inject `#BP` for `int3`).
pub const KVM_SET_VCPU_EVENTS: u64 =
    nix::request_code_write!(KVMIO, 0xa0, size_of::<kvm_bindings::kvm_vcpu_events>());
/// `KVM_IRQ_LINE` (allowed to no filtered thread: INTx levels are irqfd writes, lowered by
/// KVM at the guest's EOI).
pub const KVM_IRQ_LINE: u64 =
    nix::request_code_write!(KVMIO, 0x61, size_of::<kvm_bindings::kvm_irq_level>());
/// `KVM_SET_GSI_ROUTING` (`struct kvm_irq_routing` without its entries: 8 bytes).
pub const KVM_SET_GSI_ROUTING: u64 = nix::request_code_write!(KVMIO, 0x6a, 8);
/// `KVM_SIGNAL_MSI` (allowed to no filtered thread: MSI-X messages leave through irqfds).
pub const KVM_SIGNAL_MSI: u64 =
    nix::request_code_write!(KVMIO, 0xa5, size_of::<kvm_bindings::kvm_msi>());
/// `KVM_IRQFD` (allowed to no filtered thread: irqfds are made at setup).
pub const KVM_IRQFD: u64 =
    nix::request_code_write!(KVMIO, 0x76, size_of::<kvm_bindings::kvm_irqfd>());
/// `KVM_SET_USER_MEMORY_REGION` (working-set tracking: dirty logging on the existing memslots).
pub const KVM_SET_USER_MEMORY_REGION: u64 = nix::request_code_write!(
    KVMIO,
    0x46,
    size_of::<kvm_bindings::kvm_userspace_memory_region>()
);
/// `KVM_GET_DIRTY_LOG` (working-set tracking: the pages the guest wrote).
pub const KVM_GET_DIRTY_LOG: u64 =
    nix::request_code_write!(KVMIO, 0x42, size_of::<kvm_bindings::kvm_dirty_log>());
/// `KVM_IOEVENTFD`.
pub const KVM_IOEVENTFD: u64 =
    nix::request_code_write!(KVMIO, 0x79, size_of::<kvm_bindings::kvm_ioeventfd>());
/// `PAGEMAP_SCAN` on `/proc/self/pagemap` (`struct pm_scan_arg`: 96 bytes; Linux 6.7+): where
/// guest RAM is mapped by transparent huge pages, for the GPA→HPA and overcommit reports.
pub const PAGEMAP_SCAN: u64 = nix::request_code_readwrite!(b'f', 16, 96);
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`.
pub const USERFAULTFD_IOC_NEW: u64 = nix::request_code_none!(UFFDIO, 0x00);
/// `UFFDIO_REGISTER` (`struct uffdio_register`: 32 bytes).
pub const UFFDIO_REGISTER: u64 = nix::request_code_readwrite!(UFFDIO, 0x00, 32);
/// `UFFDIO_API` (`struct uffdio_api`: 24 bytes).
pub const UFFDIO_API: u64 = nix::request_code_readwrite!(UFFDIO, 0x3F, 24);
/// `UFFDIO_UNREGISTER` (`struct uffdio_range`: 16 bytes).
pub const UFFDIO_UNREGISTER: u64 = nix::request_code_read!(UFFDIO, 0x01, 16);
/// `UFFDIO_WAKE` (`struct uffdio_range`).
pub const UFFDIO_WAKE: u64 = nix::request_code_read!(UFFDIO, 0x02, 16);
/// `UFFDIO_COPY` (`struct uffdio_copy`: 40 bytes).
pub const UFFDIO_COPY: u64 = nix::request_code_readwrite!(UFFDIO, 0x03, 40);
/// `UFFDIO_ZEROPAGE` (`struct uffdio_zeropage`: 32 bytes).
pub const UFFDIO_ZEROPAGE: u64 = nix::request_code_readwrite!(UFFDIO, 0x04, 32);

/// Whether threads of `kind` start threads under their filter (they get the `clone3` →
/// `ENOSYS` filter first, so thread creation goes through `clone`, whose flags are checked).
pub fn starts_threads(kind: ThreadKind) -> bool {
    matches!(
        kind,
        ThreadKind::Api
            | ThreadKind::Main
            | ThreadKind::Setup
            | ThreadKind::VcpuHook
            | ThreadKind::VmmSwap
    )
}

/// The filter installed before the allow-list on threads that start threads: `clone3` fails
/// with `ENOSYS` (everything else is left to the allow-list).
pub fn clone3_enosys() -> BTreeMap<i64, Vec<SeccompRule>> {
    BTreeMap::from([(libc::SYS_clone3, vec![])])
}

/// The filter installed before the allow-list of threads that must never open a file but
/// run code that tries (`openat` fails with `EACCES`; the allow-list allows it only so that
/// this filter decides, as for `clone3`). The C library's allocator reads
/// `/proc/sys/vm/overcommit_memory` the first time it shrinks a thread's heap, on whatever
/// thread that happens, and goes on without it when the open fails: the `uffd-handler`
/// thread, whose fills free large queues, met that.
pub fn open_eacces(kind: ThreadKind) -> Option<BTreeMap<i64, Vec<SeccompRule>>> {
    (kind == ThreadKind::Uffd).then(|| BTreeMap::from([(libc::SYS_openat, vec![])]))
}

/// An allow-list under construction: a call allowed outright, or when one of its rules
/// (conditions on arguments, all of which must hold) matches.
#[derive(Default)]
pub(super) struct List {
    map: BTreeMap<i64, Option<Vec<SeccompRule>>>,
}

impl List {
    /// Allows `calls` whatever their arguments.
    pub(super) fn any(&mut self, calls: &[i64]) -> &mut Self {
        for &c in calls {
            self.map.insert(c, None);
        }
        self
    }

    /// Allows `call` when every condition holds (adds to earlier rules of the same call).
    pub(super) fn when(&mut self, call: i64, conds: Vec<Cond>) -> &mut Self {
        let rule = SeccompRule::new(conds).expect("rules have conditions");
        // A call already allowed outright stays so.
        if let Some(rules) = self.map.entry(call).or_insert_with(|| Some(Vec::new())) {
            rules.push(rule);
        }
        self
    }

    /// Allows `call` when argument `arg` is one of `values` (32-bit compare).
    fn arg_in(&mut self, call: i64, arg: u8, values: &[u64]) -> &mut Self {
        for &v in values {
            self.when(call, vec![eq(arg, v)]);
        }
        self
    }

    /// Allows `ioctl` with one of these requests.
    fn ioctls(&mut self, requests: &[u64]) -> &mut Self {
        self.arg_in(libc::SYS_ioctl, 1, requests)
    }

    pub(super) fn build(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.map
            .into_iter()
            .map(|(c, rules)| (c, rules.unwrap_or_default()))
            .collect()
    }
}

/// `arg == value` on the low 32 bits (ioctl requests, flags and modes are `int`s).
fn eq(arg: u8, value: u64) -> Cond {
    cond(arg, Op::Eq, value)
}

/// `arg <op> value` on the low 32 bits.
pub(super) fn cond(arg: u8, op: Op, value: u64) -> Cond {
    Cond::new(arg, Len::Dword, op, value).expect("argument index below 6")
}

/// The calls every filtered thread makes.
fn common(l: &mut List) {
    use libc::*;
    l.any(&[
        // Allocator and thread exit.
        SYS_brk,
        SYS_munmap,
        SYS_mremap,
        // Waiting and time.
        SYS_futex,
        SYS_sched_yield,
        SYS_nanosleep,
        SYS_clock_nanosleep,
        SYS_clock_gettime,
        SYS_gettimeofday,
        SYS_restart_syscall,
        // Logs, eventfds, descriptors being dropped.
        SYS_write,
        SYS_writev,
        SYS_close,
        // Signals: the vCPU kick returns through rt_sigreturn; thread exit blocks signals
        // and removes its alternate signal stack.
        SYS_rt_sigreturn,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
        SYS_getrandom,
        SYS_getpid,
        SYS_gettid,
        SYS_exit,
        SYS_exit_group,
    ]);
    // Never executable memory.
    for call in [SYS_mmap, SYS_mprotect] {
        l.when(call, vec![cond(2, Op::MaskedEq(PROT_EXEC as u64), 0)]);
    }
    l.arg_in(SYS_madvise, 2, &[MADV_DONTNEED as u64]);
    // Rust checks a descriptor is open before closing it (debug builds).
    l.arg_in(SYS_fcntl, 1, &[F_GETFD as u64]);
    // The SIGSYS reporter aborts with SIGABRT to this process.
    l.when(
        SYS_tgkill,
        vec![eq(0, std::process::id() as u64), eq(2, SIGABRT as u64)],
    );
}

/// Reading files under `/proc` and `/sys`: `openat` without write access or creation; what
/// the reports ask of the kernel besides (`mincore`, `prctl(PR_GET_MEMORY_MERGE)`,
/// `PAGEMAP_SCAN`).
fn read_files(l: &mut List) {
    use libc::*;
    l.any(&[SYS_mincore]);
    // Whether KSM covers the whole process (Linux 6.4+).
    l.arg_in(SYS_prctl, 0, &[PR_GET_MEMORY_MERGE as u64]);
    l.ioctls(&[PAGEMAP_SCAN]);
    let forbidden = (O_ACCMODE | O_CREAT | O_TRUNC | O_APPEND) as u64;
    l.when(SYS_openat, vec![cond(2, Op::MaskedEq(forbidden), 0)]);
    l.any(&[
        SYS_read,
        SYS_pread64,
        SYS_lseek,
        SYS_statx,
        SYS_fstat,
        SYS_newfstatat,
        SYS_getdents64,
    ]);
}

/// Starting threads: `clone` with `CLONE_THREAD` (a process cannot be forked), and what a new
/// thread does before it runs its code. `clone3` is allowed here only so that the filter
/// installed before this one ([`clone3_enosys`]) decides: its `ENOSYS` outranks `ALLOW`
/// (a trap here would outrank it).
fn start_threads(l: &mut List) {
    use libc::*;
    l.any(&[SYS_clone3]);
    l.when(
        SYS_clone,
        vec![cond(
            0,
            Op::MaskedEq(CLONE_THREAD as u64),
            CLONE_THREAD as u64,
        )],
    );
    l.any(&[SYS_set_robust_list, SYS_rseq, SYS_sched_getaffinity]);
    l.arg_in(SYS_prctl, 0, &[PR_SET_NAME as u64]);
}

/// The allow-list of `kind`, or `None` for the kinds that have a deny-list
/// ([`super::deny`]).
pub fn allowed(kind: ThreadKind) -> Option<BTreeMap<i64, Vec<SeccompRule>>> {
    use libc::*;
    let mut l = List::default();
    common(&mut l);
    match kind {
        ThreadKind::Setup | ThreadKind::VcpuHook => return None,
        ThreadKind::Prealloc => {
            l.arg_in(SYS_madvise, 2, &[MADV_POPULATE_WRITE as u64]);
            // `memvisor run`'s progress bar, drawn from these threads: is stderr a terminal,
            // and how wide.
            l.ioctls(&[TCGETS, TIOCGWINSZ]);
        }
        ThreadKind::Vcpu => {
            l.ioctls(&[KVM_RUN, KVM_GET_REGS]);
            // Emulation assists (hosts without VMX/SVM, `crate::vmm::assist`).
            l.ioctls(&[
                KVM_GET_SREGS,
                KVM_SET_REGS,
                KVM_GET_FPU,
                KVM_GET_VCPU_EVENTS,
                KVM_SET_VCPU_EVENTS,
            ]);
            l.ioctls(&[KVM_SET_GSI_ROUTING, KVM_IOEVENTFD]);
        }
        ThreadKind::Devices => {
            l.any(&[SYS_epoll_wait, SYS_epoll_pwait, SYS_read, SYS_mincore]);
            l.any(&[SYS_timerfd_settime]);
            l.arg_in(SYS_madvise, 2, &[MADV_POPULATE_WRITE as u64]);
            // The balloon's discards on memfd/hugetlbfs memory and the disks' discards punch
            // holes; the disks' write-zeroes zero a range (`crate::devices::block`).
            let punch = (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) as u64;
            let zero = (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE) as u64;
            l.arg_in(SYS_fallocate, 1, &[punch, zero]);
            // The disks' image I/O and flushes.
            l.any(&[SYS_pread64, SYS_pwrite64, SYS_fdatasync]);
        }
        ThreadKind::Api => {
            // Reclaim to host swap (`PUT /memory/reclaim`, the resident limit's `api-reclaim`
            // thread): guest RAM only, through the memory module.
            l.arg_in(SYS_madvise, 2, &[MADV_PAGEOUT as u64, MADV_COLD as u64]);
            // The working-set estimate: KVM's dirty log of the memslots.
            l.ioctls(&[KVM_SET_USER_MEMORY_REGION, KVM_GET_DIRTY_LOG]);
            start_threads(&mut l);
            read_files(&mut l);
            l.any(&[
                SYS_poll,
                SYS_ppoll,
                SYS_accept4,
                SYS_recvfrom,
                SYS_sendto,
                SYS_shutdown,
            ]);
            l.arg_in(SYS_setsockopt, 2, &[SO_RCVTIMEO as u64, SO_SNDTIMEO as u64]);
            l.ioctls(&[FIONBIO]);
            l.arg_in(SYS_fcntl, 1, &[F_DUPFD_CLOEXEC as u64]);
        }
        ThreadKind::Uffd => {
            l.any(&[SYS_poll, SYS_ppoll, SYS_read, SYS_pread64]);
            // Always EACCES ([`open_eacces`]).
            l.any(&[SYS_openat]);
            l.ioctls(&[UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_WAKE]);
        }
        ThreadKind::VmmSwap => {
            start_threads(&mut l);
            // The swap file (at the path the request names) and the uffd source reopened.
            l.any(&[
                SYS_openat,
                SYS_pwrite64,
                SYS_pread64,
                SYS_read,
                SYS_fdatasync,
                SYS_fadvise64,
                SYS_ftruncate,
                SYS_fstatfs,
                SYS_fstat,
                SYS_statx,
                SYS_newfstatat,
                SYS_unlink,
                SYS_mincore,
                SYS_eventfd2,
                SYS_userfaultfd,
                SYS_poll,
                SYS_ppoll,
            ]);
            let punch = (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) as u64;
            l.arg_in(SYS_fallocate, 1, &[punch]);
            // The handler thread installs its own, narrower filter (a filter can only take
            // away: `seccomp` and `no_new_privs` give nothing).
            l.any(&[SYS_seccomp]);
            l.arg_in(SYS_prctl, 0, &[PR_SET_NO_NEW_PRIVS as u64]);
            l.ioctls(&[
                USERFAULTFD_IOC_NEW,
                UFFDIO_API,
                UFFDIO_REGISTER,
                UFFDIO_UNREGISTER,
                // The handler thread's, inherited.
                UFFDIO_COPY,
                UFFDIO_ZEROPAGE,
                UFFDIO_WAKE,
            ]);
        }
        ThreadKind::Main => {
            read_files(&mut l);
            // Writing the report file, removing the API socket and the registration.
            l.any(&[SYS_openat, SYS_unlink]);
            // Kicking vCPU threads out of KVM_RUN.
            l.when(
                SYS_tgkill,
                vec![eq(0, std::process::id() as u64), eq(2, SIGRTMIN() as u64)],
            );
            l.ioctls(&[UFFDIO_UNREGISTER]);
            // A Linux guest's console on this terminal: raw mode and back, and the thread
            // that forwards what is typed (it inherits this filter).
            l.ioctls(&[TCGETS, TCSETS, TCSETSW, TCSETSF]);
            start_threads(&mut l);
            // Waking the API accept thread; watching an external page server.
            l.any(&[SYS_poll, SYS_ppoll, SYS_sendto, SYS_recvfrom, SYS_shutdown]);
        }
    }
    Some(l.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_GET_FPU, 0x81a0_ae8c);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_SET_VCPU_EVENTS, 0x4040_aea0);
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
    }

    #[test]
    fn nobody_may_open_sockets_or_exec() {
        for k in ThreadKind::ALL {
            let Some(l) = allowed(k) else {
                continue; // deny-list kinds: super::deny's tests
            };
            for call in [
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_init_module,
                libc::SYS_setuid,
            ] {
                assert!(
                    !l.contains_key(&call),
                    "{k}: {:?} allowed",
                    super::super::names::name(call)
                );
            }
            // clone3 only where the ENOSYS filter comes first.
            assert_eq!(l.contains_key(&libc::SYS_clone3), starts_threads(k), "{k}");
        }
    }
}
