//! Errors of the `uffd` crate. Each message says what went wrong and what to check.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while setting up, running or handing over page serving.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The userfaultfd could not be created or its API handshake failed.
    #[error(
        "cannot create a userfaultfd that also receives kernel-originated faults: {source}; \
         it needs UFFD_EVENT_REMOVE and shmem/hugetlbfs missing faults (Linux >= 4.11), and \
         read/write access to /dev/userfaultfd or, for the syscall, CAP_SYS_PTRACE \
         (or vm.unprivileged_userfaultfd=1)"
    )]
    Create {
        /// What the `userfaultfd` crate reported.
        #[source]
        source: userfaultfd::Error,
    },

    /// A region description is unusable.
    #[error("region {index} is invalid: {reason}; fix the RegionSpec passed by the memory module")]
    InvalidRegion {
        /// Position of the region in the list passed in.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The fetch unit is not a power of two within 4 KiB..=2 MiB.
    #[error("fetch unit {0} bytes is invalid; use a power of two between 4096 and 2097152")]
    InvalidFetchUnit(usize),

    /// Registering a region for missing faults failed.
    #[error(
        "cannot register region {index} [{addr:#x}, +{len:#x}) for missing faults: {source}; \
         the range must be mapped anonymous, memfd/shmem or hugetlbfs memory and not already \
         registered with another userfaultfd"
    )]
    Register {
        /// Position of the region.
        index: usize,
        /// Host address of the region.
        addr: usize,
        /// Length of the region.
        len: usize,
        /// What the kernel reported.
        #[source]
        source: userfaultfd::Error,
    },

    /// The kernel does not offer an ioctl the handler needs on a registered range.
    #[error(
        "region {index} was registered but the kernel offers no {ioctl} on it; \
         map guest RAM as anonymous, memfd/shmem or hugetlbfs memory"
    )]
    MissingIoctl {
        /// Position of the region.
        index: usize,
        /// Name of the missing ioctl.
        ioctl: &'static str,
    },

    /// The source image could not be opened or inspected.
    #[error(
        "cannot open the guest memory image {path}: {source}; check that it exists and is readable"
    )]
    OpenSource {
        /// Path of the image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading the source image failed while serving a fault.
    #[error("cannot read {len} bytes at offset {offset} of the guest memory image {path}: {source}; the image must stay readable while the guest runs")]
    ReadSource {
        /// Path of the image.
        path: PathBuf,
        /// File offset of the read.
        offset: u64,
        /// Length of the read.
        len: usize,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading events from the userfaultfd failed.
    #[error("cannot read events from the userfaultfd: {source}; the handler stopped and faulting threads stay blocked, so stop the guest")]
    ReadEvent {
        /// What the `userfaultfd` crate reported.
        #[source]
        source: userfaultfd::Error,
    },

    /// A UFFDIO_COPY / UFFDIO_ZEROPAGE / UFFDIO_WAKE ioctl failed unexpectedly.
    #[error("{op} at {addr:#x} (+{len:#x}) failed: {errno}; the handler stopped and faulting threads stay blocked, so stop the guest")]
    Serve {
        /// Which ioctl.
        op: &'static str,
        /// Destination address.
        addr: usize,
        /// Length.
        len: usize,
        /// The errno.
        errno: nix::errno::Errno,
    },

    /// A system call needed for the handler thread's plumbing failed.
    #[error("{what} failed: {errno}; the process may be out of file descriptors or memory")]
    Sys {
        /// Which call.
        what: &'static str,
        /// The errno.
        errno: nix::errno::Errno,
    },

    /// The handler thread could not be spawned.
    #[error(
        "cannot spawn the uffd-handler thread: {0}; the process may be out of threads or memory"
    )]
    Spawn(#[source] io::Error),

    /// The handler thread's start hook failed (e.g. its seccomp filter could not be installed).
    #[error("the uffd-handler thread could not start: {0}")]
    ThreadStart(String),

    /// A fill did not complete in time.
    #[error(
        "the uffd-handler thread did not bring every page back within {:.0} s; the pages it \
         served stay in place: try again (a slow disk or a busy host)",
        waited.as_secs_f64()
    )]
    FillTimeout {
        /// How long the caller waited.
        waited: std::time::Duration,
    },

    /// The handler thread is not running any more (it stopped on an error, logged).
    #[error("the uffd-handler thread has stopped (see the log for its error); stop the guest")]
    HandlerStopped,

    /// The handler thread panicked.
    #[error("the uffd-handler thread panicked; faulting threads may be blocked, so stop the guest (see the log for the panic message)")]
    HandlerPanicked,

    /// Connecting to the external page-fault handler's socket failed.
    #[error("cannot connect to the page-fault handler socket {path}: {source}; start the handler first and check the path")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Nothing listens on the external page-fault handler's socket.
    #[error(
        "nobody listens on the page-fault handler socket {path} (connection refused; a socket \
         file left behind by a handler that exited?); start the page-fault handler (for example \
         Firecracker's uffd handler) listening on {path} before memvisor"
    )]
    NotListening {
        /// Socket path.
        path: PathBuf,
    },

    /// The external handler did not read the whole handshake message in time.
    #[error(
        "the page-fault handler at {path} did not take the {len}-byte region list and the \
         userfaultfd within {:.1} s; it must accept the connection and read the whole message \
         (a Firecracker handler accepts one connection only: is another VMM connected to it \
         already?)",
        waited.as_secs_f64()
    )]
    HandshakeTimeout {
        /// Socket path.
        path: PathBuf,
        /// How long memvisor waited.
        waited: std::time::Duration,
        /// Length of the message.
        len: usize,
    },

    /// The external handler closed the connection during the handshake.
    #[error(
        "the page-fault handler at {path} closed the connection during the handshake; see its \
         log (a Firecracker handler exits when the regions' sizes do not add up to its memory \
         file)"
    )]
    HandlerHungUp {
        /// Socket path.
        path: PathBuf,
    },

    /// Sending the region list and userfaultfd to the external handler failed.
    #[error("cannot send the regions and userfaultfd to the page-fault handler at {path}: {reason}; check that the handler accepts Firecracker's handshake")]
    Send {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
