//! The deny-lists: for the two kinds of thread whose work no allow-list can foresee, the system
//! calls that no part of memvisor ever needs and that would turn a compromised thread into a
//! compromise of the host. Everything else is allowed; what is listed traps (`--seccomp on`) or
//! is logged (`log`).
//!
//! - **setup** (`memvisor run`'s main thread from its first line until the VM runs, and every
//!   thread it starts meanwhile, which inherit it): opening `/dev/kvm`, files, memfds and
//!   hugetlbfs files, creating the VM, binding the API socket, connecting to an external
//!   page-fault handler, registering in the runtime directory: all of that stays possible.
//! - **vCPU with a sync hook** (`StartOptions::sync`): the caller's code runs on the vCPU thread
//!   at guest sync points (tests, `memvisor bench hugepages`: reading `/proc` and sysfs, writing
//!   KSM knobs, mapping hugetlbfs files, discarding guest memory, starting threads, sleeping). The
//!   setup list plus sockets: a hook has no business on the network.
//!
//! Denied for both: running programs (`execve`, `execveat`) and creating processes (`fork`,
//! `vfork`, `clone` without `CLONE_THREAD`; `clone3`, whose flags a filter cannot see, fails
//! with `ENOSYS` through the filter installed first, and the C library falls back to `clone`);
//! reading or writing other processes (`ptrace`, `process_vm_readv`/`writev`, `pidfd_getfd`,
//! `kcmp`); signals to other processes (`kill`, `tgkill`, `rt_sigqueueinfo`,
//! `rt_tgsigqueueinfo` to another pid; `tkill`, `pidfd_send_signal`); executable memory (`mmap`,
//! `mprotect`, `pkey_mprotect` with `PROT_EXEC`); mounting and changing root (`mount`,
//! `umount2`, the new mount API, `pivot_root`, `chroot`); kernel modules, `kexec`, `reboot`,
//! swap, `iopl`/`ioperm`; credentials (`set*uid`, `set*gid`, `setgroups`, `capset`); namespaces
//! (`unshare`, `setns`); `bpf`, `perf_event_open`, `userfaultfd` (the uffd regions' descriptors
//! are made before), keyrings, `open_by_handle_at`, setting clocks, host and domain names.
//!
//! What stays open is what an allow-list would close: any file the process may open can be
//! opened for writing, any descriptor of the process used (the KVM VM and vCPU descriptors, the
//! API socket), any memory of the process written (also through `/proc/self/mem`).

use super::rules::{cond, List};
use super::ThreadKind;
use seccompiler::{SeccompCmpOp as Op, SeccompRule};
use std::collections::BTreeMap;

/// The calls denied to both deny-list kinds.
fn never(l: &mut List) {
    use libc::*;
    l.any(&[
        // Programs and processes.
        SYS_execve,
        SYS_execveat,
        SYS_fork,
        SYS_vfork,
        // Other processes' memory and descriptors.
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_pidfd_getfd,
        SYS_kcmp,
        SYS_tkill,
        SYS_pidfd_send_signal,
        // Mounts and root.
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_move_mount,
        SYS_open_tree,
        SYS_mount_setattr,
        // The kernel and the machine.
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_iopl,
        SYS_ioperm,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_userfaultfd,
        SYS_open_by_handle_at,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_adjtimex,
        SYS_sethostname,
        SYS_setdomainname,
        SYS_acct,
        SYS_add_key,
        SYS_request_key,
        SYS_keyctl,
        // Credentials and namespaces.
        SYS_setuid,
        SYS_setgid,
        SYS_setreuid,
        SYS_setregid,
        SYS_setresuid,
        SYS_setresgid,
        SYS_setfsuid,
        SYS_setfsgid,
        SYS_setgroups,
        SYS_capset,
        SYS_unshare,
        SYS_setns,
    ]);
    // A new process: clone without CLONE_THREAD.
    l.when(
        SYS_clone,
        vec![cond(0, Op::MaskedEq(CLONE_THREAD as u64), 0)],
    );
    // Executable memory.
    for call in [SYS_mmap, SYS_mprotect, SYS_pkey_mprotect] {
        let exec = PROT_EXEC as u64;
        l.when(call, vec![cond(2, Op::MaskedEq(exec), exec)]);
    }
    // Signals to another process (this one's own threads, the SIGSYS reporter's abort and
    // Rust's `abort` name this pid).
    let me = std::process::id() as u64;
    for call in [
        SYS_kill,
        SYS_tgkill,
        SYS_rt_sigqueueinfo,
        SYS_rt_tgsigqueueinfo,
    ] {
        l.when(call, vec![cond(0, Op::Ne, me)]);
    }
}

/// The deny-list of `kind`, or `None` for the kinds that have an allow-list.
pub fn denied(kind: ThreadKind) -> Option<BTreeMap<i64, Vec<SeccompRule>>> {
    use libc::*;
    let mut l = List::default();
    match kind {
        ThreadKind::Setup => never(&mut l),
        ThreadKind::VcpuHook => {
            never(&mut l);
            l.any(&[
                SYS_socket,
                SYS_socketpair,
                SYS_connect,
                SYS_bind,
                SYS_listen,
                SYS_accept,
                SYS_accept4,
            ]);
        }
        _ => return None,
    }
    Some(l.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_no_part_of_memvisor_needs_is_denied() {
        for kind in [ThreadKind::Setup, ThreadKind::VcpuHook] {
            let d = denied(kind).unwrap();
            for call in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_init_module,
                libc::SYS_setuid,
                libc::SYS_unshare,
            ] {
                let rules = d.get(&call);
                assert!(
                    rules.is_some_and(Vec::is_empty),
                    "{kind}: {:?} not denied outright",
                    super::super::names::name(call)
                );
            }
            // Conditional: new processes, executable memory, signals to others.
            for call in [
                libc::SYS_clone,
                libc::SYS_mmap,
                libc::SYS_mprotect,
                libc::SYS_kill,
            ] {
                assert_eq!(d.get(&call).map(Vec::len), Some(1), "{kind}: {call}");
            }
            // clone3 is left to the ENOSYS filter (a trap here would outrank its ENOSYS).
            assert!(!d.contains_key(&libc::SYS_clone3), "{kind}");
        }
        let setup = denied(ThreadKind::Setup).unwrap();
        let hook = denied(ThreadKind::VcpuHook).unwrap();
        for call in [libc::SYS_socket, libc::SYS_connect, libc::SYS_bind] {
            assert!(!setup.contains_key(&call), "setup binds and connects");
            assert!(hook.contains_key(&call), "a hook does not");
        }
        assert!(denied(ThreadKind::Vcpu).is_none());
    }
}
