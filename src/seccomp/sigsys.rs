//! The `SIGSYS` reporter: with `--seccomp on` a forbidden system call traps
//! (`SECCOMP_RET_TRAP`) into this handler on the thread that made it. It writes one message to
//! stderr — thread name and kind, the call's name and number, its arguments, how to run without
//! filters — and aborts the process (`SIGABRT`), so a VMM never dies silently.
//!
//! The handler runs under the thread's filter and in signal context: it only formats into a
//! stack buffer and uses calls every allow-list has (`write`, `getpid`, `gettid`,
//! `rt_sigprocmask`, `tgkill(own pid, SIGABRT)`, `exit_group`). The thread's name and kind
//! were recorded in thread-local storage when its filter was installed.

use super::{names, ThreadKind};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::OnceLock;

thread_local! {
    /// The name of this thread (up to 15 bytes, as the kernel keeps it) and its length.
    static NAME: Cell<([u8; 16], usize)> = const { Cell::new(([0; 16], 0)) };
    /// The filter kind this thread installed, if any.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Records the calling thread's name and filter kind for the report.
pub(super) fn remember_thread(kind: ThreadKind) {
    let mut buf = [0u8; 16];
    let name = std::thread::current()
        .name()
        .map(str::to_owned)
        .unwrap_or_else(|| "?".into());
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    NAME.with(|c| c.set((buf, n)));
    KIND.with(|c| c.set(Some(kind)));
}

/// Installs the process-wide `SIGSYS` handler (once).
pub(super) fn install_reporter() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let action = SigAction::new(
                SigHandler::SigAction(on_sigsys),
                SaFlags::SA_SIGINFO,
                SigSet::empty(),
            );
            // SAFETY: the handler only formats into a stack buffer and makes the few system
            // calls every filter allows; it never allocates, locks or unwinds.
            unsafe { sigaction(Signal::SIGSYS, &action) }
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// A fixed buffer that `write!` can format into without allocating.
struct StackBuf {
    buf: [u8; 1024],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// What the kernel tells a `SIGSYS` handler for `SECCOMP_RET_TRAP` (`siginfo_t._sigsys`):
/// the union starts at byte 16 on 64-bit Linux.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Formats the report of a forbidden call `nr` with `args` made by thread `name`.
fn report(
    buf: &mut StackBuf,
    name: &str,
    kind: Option<ThreadKind>,
    tid: i64,
    nr: i64,
    args: [u64; 6],
    panicking: bool,
) {
    let call = names::name(nr).unwrap_or("unknown");
    let why = match kind {
        Some(k) if k.has_deny_list() => {
            "This call is on memvisor's deny-list for this thread (src/seccomp/deny.rs): no part \
             of memvisor needs it; with a sync hook, the hook's code made it. If it is needed, \
             please report this message. To run meanwhile,"
        }
        _ => {
            "This call is missing from memvisor's allow-list for this thread \
             (src/seccomp/rules.rs): please report this message. To run meanwhile,"
        }
    };
    let kind = kind.map_or("unknown", ThreadKind::name);
    let _ = write!(
        buf,
        "\nmemvisor: seccomp: thread `{name}` ({kind} filter, tid {tid}) made a forbidden system \
         call: {call} ({nr}), arguments {:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}\n\
         memvisor: aborting. {why} start memvisor with `--seccomp log` (allowed, logged by the \
         kernel) or `--seccomp off` (no filters).\n",
        args[0], args[1], args[2], args[3], args[4], args[5]
    );
    if panicking {
        let _ = buf.write_str(
            "memvisor: the thread was panicking: the panic message above is the real error (a \
             backtrace needs files this thread may not open; RUST_BACKTRACE=0 skips it).\n",
        );
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler; for SIGSYS from
    // seccomp its union holds `_sigsys`, laid out as `SigsysInfo`, which fits in siginfo_t.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall } as i64;
    let mut args = [0u64; 6];
    if !ctx.is_null() {
        // SAFETY: for a SA_SIGINFO handler the third argument is the interrupted thread's
        // ucontext_t, whose general registers hold the system call's arguments.
        let gregs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        for (a, r) in args.iter_mut().zip([
            libc::REG_RDI,
            libc::REG_RSI,
            libc::REG_RDX,
            libc::REG_R10,
            libc::REG_R8,
            libc::REG_R9,
        ]) {
            *a = gregs[r as usize] as u64;
        }
    }
    let (name_buf, len) = NAME.with(Cell::get);
    let name = std::str::from_utf8(&name_buf[..len]).unwrap_or("?");
    let kind = KIND.with(Cell::get);
    // SAFETY: gettid and getpid have no arguments and cannot fail.
    let (tid, pid) = unsafe { (libc::syscall(libc::SYS_gettid), libc::getpid()) };
    let mut buf = StackBuf {
        buf: [0; 1024],
        len: 0,
    };
    // Reads a global counter and a const-initialised thread local: no allocation, no lock.
    let panicking = std::thread::panicking();
    report(&mut buf, name, kind, tid, nr, args, panicking);
    // SAFETY: writes the initialised prefix of a stack buffer to stderr; the set and the
    // signal calls take pointers to locals or no pointers; exit_group does not return.
    unsafe {
        libc::write(2, buf.buf.as_ptr().cast(), buf.len);
        let mut abrt: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut abrt);
        libc::sigaddset(&mut abrt, libc::SIGABRT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &abrt, std::ptr::null_mut());
        libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGABRT);
        libc::syscall(libc::SYS_exit_group, 128 + libc::SIGABRT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_thread_call_and_the_way_out() {
        let mut buf = StackBuf {
            buf: [0; 1024],
            len: 0,
        };
        report(
            &mut buf,
            "vcpu0",
            Some(ThreadKind::Vcpu),
            42,
            libc::SYS_socket,
            [2, 1, 0, 0, 0, 0],
            false,
        );
        let text = std::str::from_utf8(&buf.buf[..buf.len]).unwrap();
        assert!(
            text.contains("thread `vcpu0` (vCPU filter, tid 42)"),
            "{text}"
        );
        assert!(text.contains("socket (41), arguments 0x2, 0x1"), "{text}");
        assert!(text.contains("--seccomp off"), "{text}");
        assert!(text.contains("allow-list for this thread"), "{text}");
        assert!(buf.len < buf.buf.len(), "the message fits");
        assert!(!text.contains("panicking"), "{text}");
        let mut buf = StackBuf {
            buf: [0; 1024],
            len: 0,
        };
        report(
            &mut buf,
            "vcpu0",
            Some(ThreadKind::VcpuHook),
            42,
            libc::SYS_execve,
            [0; 6],
            true,
        );
        let text = std::str::from_utf8(&buf.buf[..buf.len]).unwrap();
        assert!(
            text.contains("(vCPU with sync hook filter, tid 42)"),
            "{text}"
        );
        assert!(text.contains("deny-list for this thread"), "{text}");
        assert!(text.contains("--seccomp log"), "{text}");
        assert!(text.contains("the panic message above"), "{text}");
        assert!(buf.len < buf.buf.len(), "the message fits: {}", buf.len);
        let mut buf = StackBuf {
            buf: [0; 1024],
            len: 0,
        };
        report(&mut buf, "api-conn", None, 7, 100_000, [0; 6], true);
        let text = std::str::from_utf8(&buf.buf[..buf.len]).unwrap();
        assert!(text.contains("unknown (100000)"), "{text}");
        assert!(text.contains("the panic message above"), "{text}");
        assert!(buf.len < buf.buf.len(), "the message fits");
    }

    #[test]
    fn siginfo_layout() {
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert!(size_of::<SigsysInfo>() <= size_of::<libc::siginfo_t>());
    }
}
