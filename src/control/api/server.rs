//! The API server: owns the Unix socket, the accept thread and one thread per connection.
//!
//! The socket is created with mode 0600 (the mode is set on the socket before `bind`, so it
//! never exists with a wider one). A leftover socket file is removed only if nothing accepts
//! connections on it. Each connection carries one request: it is read under a per-read timeout
//! and an overall deadline, decoded by [`parse_request`], handed to the [`ApiHandler`] on the
//! connection's thread and answered with `Connection: close`. A silent or slow client therefore
//! holds only its own thread, never the VMM or other clients; a read-only request whose
//! client hung up before the answer is not handled at all (its answer would be thrown away,
//! and the memory reports scan the whole page map). Stopping (or dropping) the server
//! stops accepting, cuts open connections, waits briefly for running handlers and removes the
//! socket file if it is still the one this server created.

use super::http::{self, ReadError, ReadLimits};
use super::{allowed_methods, parse_request, ApiError, ApiHandler, ApiResponse};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{fchmod, Mode};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long `stop` waits for running handlers before giving up on them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Limits and timeouts of an [`ApiServer`].
#[derive(Clone, Debug)]
pub struct ApiServerOptions {
    /// Longest silence allowed between two reads of a request (default 5 s).
    pub read_timeout: Duration,
    /// Time allowed to receive a whole request (default 10 s).
    pub request_timeout: Duration,
    /// Largest request body accepted; larger ones get 413 (default 64 KiB).
    pub max_body_bytes: usize,
    /// Most connections served at once; more get 503 (default 128).
    pub max_connections: usize,
    /// Seccomp filter the accept thread installs (connection threads inherit it); default none.
    pub seccomp: Option<crate::seccomp::ThreadFilter>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            max_connections: 128,
            seccomp: None,
        }
    }
}

/// A running API server; stopping or dropping it stops it and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    running: Option<Running>,
}

struct Running {
    shared: Arc<Shared>,
    waker: UnixStream,
    accept_thread: JoinHandle<()>,
    /// (device, inode) of the socket file this server created.
    socket_id: (u64, u64),
}

struct Shared {
    handler: Arc<dyn ApiHandler>,
    options: ApiServerOptions,
    stopping: AtomicBool,
    conns: Mutex<Connections>,
    all_closed: Condvar,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    open: HashMap<u64, UnixStream>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Connections> {
        // A panic while holding the lock leaves the table consistent, so poisoning is ignored.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ApiServer {
    /// Creates the socket at `path` and serves requests with `handler` and default options.
    pub fn start(path: &Path, handler: Arc<dyn ApiHandler>) -> Result<ApiServer, ApiError> {
        Self::start_with_options(path, handler, ApiServerOptions::default())
    }

    /// Like [`ApiServer::start`] with explicit limits and timeouts.
    pub fn start_with_options(
        path: &Path,
        handler: Arc<dyn ApiHandler>,
        options: ApiServerOptions,
    ) -> Result<ApiServer, ApiError> {
        remove_stale_socket(path)?;
        let listener = bind_listener(path)?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| ApiError::bind(path, e))?;
        let socket_id = (meta.dev(), meta.ino());
        let (waker, wake_rx) = UnixStream::pair().map_err(|e| ApiError::bind(path, e))?;
        let shared = Arc::new(Shared {
            handler,
            options,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Connections::default()),
            all_closed: Condvar::new(),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || {
                let filter = accept_shared.options.seccomp.as_ref();
                if filter.is_none_or(|f| f.apply_or_log()) {
                    accept_loop(&accept_shared, &listener, &wake_rx)
                }
            });
        let accept_thread = match accept_thread {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(ApiError::Spawn(e));
            }
        };
        log::info!("API server listening on {}", path.display());
        Ok(ApiServer {
            path: path.to_path_buf(),
            running: Some(Running {
                shared,
                waker,
                accept_thread,
                socket_id,
            }),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes open connections, waits up to 5 s for running handlers and
    /// removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        let shared = &running.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        let _ = running.waker.write_all(&[1]);
        if running.accept_thread.join().is_err() {
            log::error!("the API accept thread panicked");
        }
        let mut conns = shared.conns();
        // Only the read side: idle connections see end-of-file and close, while a handler
        // still answering (e.g. the Shutdown request that stopped the VM) can write its answer.
        for stream in conns.open.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !conns.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for stream in conns.open.values() {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                log::warn!(
                    "{} API handler(s) still running after {STOP_GRACE:?}; not waiting for them",
                    conns.open.len()
                );
                break;
            }
            conns = match shared.all_closed.wait_timeout(conns, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        drop(conns);
        // Remove the file only if it is still the socket this server created.
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == running.socket_id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove API socket {}: {e}", self.path.display());
            }
        }
        log::info!("API server on {} stopped", self.path.display());
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes a socket file nothing listens on; refuses a live socket or a non-socket.
fn remove_stale_socket(path: &Path) -> Result<(), ApiError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ApiError::bind(path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale API socket {}", path.display());
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ApiError::bind(path, e)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(ApiError::bind(path, e)),
    }
}

/// socket + fchmod(0600) + bind + listen: Linux creates the socket file with the socket
/// inode's mode (less the umask), so the file is never more open than 0600.
fn bind_listener(path: &Path) -> Result<UnixListener, ApiError> {
    let err = |e: nix::Error| ApiError::bind(path, io::Error::from(e));
    let addr = UnixAddr::new(path).map_err(err)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    fchmod(fd.as_fd(), Mode::S_IRUSR | Mode::S_IWUSR).map_err(err)?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| match e {
        nix::Error::EADDRINUSE => ApiError::InUse {
            path: path.to_path_buf(),
        },
        e => err(e),
    })?;
    let listening = socket::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN));
    let listener = UnixListener::from(fd);
    let checked = listening.map_err(err).and_then(|()| {
        // Belt and braces: make sure of the mode before accepting anything.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ApiError::bind(path, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ApiError::bind(path, e))
    });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener, wake_rx: &UnixStream) {
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                log::error!("API server: poll failed: {e}; the API is no longer served");
                return;
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => dispatch(shared, stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                log::warn!("API server: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Hands `stream` to a new connection thread, or answers 503 when too many are open.
fn dispatch(shared: &Arc<Shared>, mut stream: UnixStream) {
    let _ = stream.set_nonblocking(false);
    let registered = {
        let mut conns = shared.conns();
        if conns.open.len() >= shared.options.max_connections {
            None
        } else {
            let id = conns.next_id;
            conns.next_id += 1;
            stream.try_clone().ok().map(|clone| {
                conns.open.insert(id, clone);
                id
            })
        }
    };
    let Some(id) = registered else {
        let msg = format!(
            "too many open API connections (at most {}); retry later",
            shared.options.max_connections
        );
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = http::write_response(&mut stream, &ApiResponse::error(503, msg), &[]);
        return;
    };
    let conn_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("api-conn".into())
        .spawn(move || {
            serve_stream(stream, &*conn_shared.handler, &conn_shared.options);
            let mut conns = conn_shared.conns();
            conns.open.remove(&id);
            if conns.open.is_empty() {
                conn_shared.all_closed.notify_all();
            }
        });
    if let Err(e) = spawned {
        log::warn!("API server: cannot start a connection thread: {e}");
        shared.conns().open.remove(&id);
    }
}

/// Reads one request from `stream`, answers it with `handler` and returns; dropping `stream`
/// closes the connection. This is what each connection thread of [`ApiServer`] runs; it is
/// public so that a connected stream can be served without a listening socket, as the fuzz
/// target `fuzz/fuzz_targets/api_request.rs` does with one end of a socket pair.
pub fn serve_stream(mut stream: UnixStream, handler: &dyn ApiHandler, opts: &ApiServerOptions) {
    let _ = stream.set_write_timeout(Some(opts.read_timeout));
    let limits = ReadLimits {
        read_timeout: opts.read_timeout,
        deadline: Instant::now() + opts.request_timeout,
    };
    let raw = match http::read_request(&mut stream, limits, opts.max_body_bytes) {
        Ok(raw) => raw,
        Err(ReadError::Closed | ReadError::Io(_)) => return,
        Err(e) => {
            let _ = http::write_response(&mut stream, &read_error_response(e, opts), &[]);
            return;
        }
    };
    let response = match parse_request(&raw.method, &raw.target, &raw.body) {
        Ok(req) if req.is_read_only() && peer_gone(&stream) => {
            // Nobody would read the answer; `GET /metrics` or `/memory/*` cost a scan of
            // the whole page map, which abandoned requests would keep a thread and a slot on.
            log::debug!(
                "API request {} {}: the client hung up; not answered",
                raw.method,
                raw.target
            );
            return;
        }
        Ok(req) => {
            log::debug!("API request {} {}: {req:?}", raw.method, raw.target);
            catch_unwind(AssertUnwindSafe(|| handler.handle(req))).unwrap_or_else(|_| {
                log::error!("API handler panicked on {} {}", raw.method, raw.target);
                ApiResponse::error(500, "the VMM failed on this request; see the memvisor log")
            })
        }
        Err(resp) => resp,
    };
    let mut extra = Vec::new();
    if response.status() == 405 {
        if let Some(methods) = allowed_methods(&raw.target) {
            extra.push(("Allow", methods.join(", ")));
        }
    }
    if let Err(e) = http::write_response(&mut stream, &response, &extra) {
        log::debug!(
            "API server: cannot send the answer to {} {}: {e}",
            raw.method,
            raw.target
        );
    }
}

/// Whether the peer has closed its end entirely (`POLLHUP`; a peer that only shut down
/// writing, the end of its request, still reads the answer).
fn peer_gone(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

fn read_error_response(e: ReadError, opts: &ApiServerOptions) -> ApiResponse {
    match e {
        ReadError::TimedOut => ApiResponse::error(
            408,
            format!(
                "timed out waiting for the request; send it whole within {} s, with no pause \
                 longer than {} s",
                opts.request_timeout.as_secs_f64(),
                opts.read_timeout.as_secs_f64()
            ),
        ),
        ReadError::Truncated => {
            ApiResponse::bad_request("the connection ended before the request was complete")
        }
        ReadError::HeadTooLarge => ApiResponse::error(
            431,
            format!(
                "request head larger than {} bytes or with more than 32 headers; send less",
                http::MAX_HEAD_BYTES
            ),
        ),
        ReadError::Malformed(what) => {
            ApiResponse::bad_request(format!("malformed HTTP request: {what}"))
        }
        ReadError::LengthRequired => ApiResponse::error(
            411,
            "chunked transfer encoding is not supported; send the body with Content-Length",
        ),
        ReadError::BodyTooLarge { len, max } => ApiResponse::error(
            413,
            format!(
                "request body of {len} bytes is over the {max}-byte limit; send a smaller body"
            ),
        ),
        // Handled by the caller: nothing to answer.
        ReadError::Closed | ReadError::Io(_) => {
            ApiResponse::bad_request("the connection failed before the request was complete")
        }
    }
}
