//! Firecracker's handshake with an external page-fault handler, in two steps: connect (before
//! guest memory is mapped, so a socket nobody listens on is reported first), then send the
//! region list with the userfaultfd and wait until the handler has taken them.
//!
//! Firecracker's protocol has no reply, so the only evidence that the handler holds the
//! descriptor is that it has read the message. On an `AF_UNIX` stream socket a sent buffer
//! stays charged to the sender until the receiver dequeues it, and the `SCM_RIGHTS`
//! descriptor is installed in the receiver by that same read; `ioctl(SIOCOUTQ)` returns the
//! charge, so zero means the handler has read everything, descriptor included. A handler that
//! closes its end instead also drops the charge (its queue is purged), so a hang-up seen while
//! waiting is an error, not success.

use crate::external::{stream_alive, ExternalHandler, GuestRegionUffdMapping};
use crate::{create_and_register, validate_regions, RegionSpec, UffdError};
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use std::io::{ErrorKind, IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest page size accepted for hand-over (1 GiB hugetlbfs pages).
const MAX_HANDOVER_PAGE: usize = 1 << 30;
/// Longest pause between two looks at the unread byte count.
const MAX_PAUSE: Duration = Duration::from_millis(10);

// `SIOCOUTQ` is `TIOCOUTQ` on Linux (include/uapi/linux/sockios.h); for a Unix socket it
// returns the bytes the peer has not dequeued yet.
nix::ioctl_read_bad!(siocoutq, libc::TIOCOUTQ, libc::c_int);

/// A connection to an external page-fault handler, made before the regions are handed over.
#[derive(Debug)]
pub struct HandlerConnection {
    stream: UnixStream,
    path: PathBuf,
}

impl HandlerConnection {
    /// Connects to the handler's Unix stream socket. A socket nobody listens on (connection
    /// refused) is [`UffdError::NotListening`]; other failures are [`UffdError::Connect`].
    pub fn connect(socket: &Path) -> Result<HandlerConnection, UffdError> {
        let stream = UnixStream::connect(socket).map_err(|source| {
            if source.kind() == ErrorKind::ConnectionRefused {
                UffdError::NotListening {
                    path: socket.to_path_buf(),
                }
            } else {
                UffdError::Connect {
                    path: socket.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(HandlerConnection {
            stream,
            path: socket.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the userfaultfd (kernel faults allowed), registers every region for missing
    /// faults and sends one message: the JSON array of [`GuestRegionUffdMapping`] (offsets as
    /// given in [`RegionSpec::source_offset`]) with the descriptor attached via `SCM_RIGHTS`.
    /// Returns once the handler has read the whole message, or fails after `timeout`
    /// ([`UffdError::HandshakeTimeout`]) or when the handler hangs up
    /// ([`UffdError::HandlerHungUp`]).
    pub fn hand_over(
        self,
        regions: Vec<RegionSpec>,
        timeout: Duration,
    ) -> Result<ExternalHandler, UffdError> {
        validate_regions(&regions, MAX_HANDOVER_PAGE)?;
        let (uffd, _) = create_and_register(&regions)?;
        let mappings: Vec<GuestRegionUffdMapping> = regions.iter().map(Into::into).collect();
        let body = serde_json::to_vec(&mappings).map_err(|e| self.send_err(e.to_string()))?;
        self.send(&body, uffd.as_raw_fd())?;
        self.wait_until_read(body.len(), timeout)?;
        log::info!(
            "uffd: the page-fault handler at {} took {} region(s) ({} bytes) and the userfaultfd",
            self.path.display(),
            regions.len(),
            body.len()
        );
        Ok(ExternalHandler::new(uffd, self.stream, self.path, regions))
    }

    fn send_err(&self, reason: String) -> UffdError {
        UffdError::Send {
            path: self.path.clone(),
            reason,
        }
    }

    /// Sends `body` with `fd` attached. A stream socket may take a long body in pieces; the
    /// descriptor goes with the first one.
    fn send(&self, body: &[u8], fd: RawFd) -> Result<(), UffdError> {
        let fds = [fd];
        let sent = loop {
            match sendmsg::<UnixAddr>(
                self.stream.as_raw_fd(),
                &[IoSlice::new(body)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    return Err(UffdError::HandlerHungUp {
                        path: self.path.clone(),
                    })
                }
                other => break other.map_err(|e| self.send_err(format!("sendmsg: {e}")))?,
            }
        };
        (&self.stream)
            .write_all(&body[sent..])
            .map_err(|e| self.send_err(format!("write: {e}")))
    }

    /// Waits until the handler has read all `len` bytes of the message.
    fn wait_until_read(&self, len: usize, timeout: Duration) -> Result<(), UffdError> {
        let started = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            let unread = unread_bytes(self.stream.as_raw_fd())
                .map_err(|e| self.send_err(format!("ioctl(SIOCOUTQ): {e}")))?;
            if !stream_alive(&self.stream) {
                return Err(UffdError::HandlerHungUp {
                    path: self.path.clone(),
                });
            }
            if unread == 0 {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(UffdError::HandshakeTimeout {
                    path: self.path.clone(),
                    waited,
                    len,
                });
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// Bytes sent on the Unix stream socket `fd` that the peer has not read yet (`SIOCOUTQ`; the
/// kernel counts buffer sizes, so this is at least the unread payload, and 0 once all is read).
fn unread_bytes(fd: RawFd) -> nix::Result<usize> {
    let mut unread: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `unread`.
    unsafe { siocoutq(fd, &mut unread) }?;
    Ok(usize::try_from(unread).unwrap_or(0))
}

/// Hands the regions to the external page-fault handler listening on `socket`:
/// [`HandlerConnection::connect`] then [`HandlerConnection::hand_over`].
pub fn hand_over(
    regions: Vec<RegionSpec>,
    socket: &Path,
    timeout: Duration,
) -> Result<ExternalHandler, UffdError> {
    HandlerConnection::connect(socket)?.hand_over(regions, timeout)
}
