//! The control API: HTTP/1.1 with JSON bodies over a Unix socket.
//!
//! This module owns everything between the API socket and the VMM:
//! - [`request`]: the typed requests ([`ApiRequest`]) and the pure mapping of a method, path and
//!   body onto one ([`parse_request`]), with the error response for anything that does not fit;
//! - [`balloon`]: the typed answers of the balloon endpoints (Firecracker's shapes, and
//!   memvisor's extras in `GET /balloon/device`);
//! - [`server`]: the socket (mode 0600, stale-socket cleanup), one thread per connection, read
//!   timeouts, size limits and clean shutdown ([`ApiServer`]);
//! - [`client`]: the blocking client the CLI uses (`memvisor balloon set 256M --api-sock S`);
//! - `http`: HTTP framing on top of `httparse`, shared by server and client.
//!
//! The VMM implements [`ApiHandler`]. The server calls it on its own connection threads, never on
//! a vCPU thread, and possibly from several connections at once. Errors travel as
//! `{"fault_message": "..."}` like Firecracker's. The wire format is in `docs/api/openapi.yaml`.

pub mod balloon;
pub mod client;
mod http;
pub mod request;
pub mod server;

pub use balloon::{BalloonDeviceInfo, BalloonStatistics, Transport};
pub use request::{
    allowed_methods, parse_request, ActionType, ApiRequest, BalloonConfig, SwapOutBody, VmState,
    ENDPOINTS,
};
pub use server::{ApiServer, ApiServerOptions};

use std::io;
use std::path::PathBuf;

/// Content type of `GET /metrics` (the Prometheus text exposition format).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the VMM answers to one [`ApiRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum ApiResponse {
    /// A JSON body with the given status (usually 200).
    Json {
        /// HTTP status code.
        status: u16,
        /// The body, sent as `application/json`.
        body: serde_json::Value,
    },
    /// A text body with its own content type (e.g. [`PROMETHEUS_CONTENT_TYPE`]).
    Text {
        /// HTTP status code.
        status: u16,
        /// The `Content-Type` header value.
        content_type: String,
        /// The body.
        body: String,
    },
    /// 204 No Content: the request was carried out and there is nothing to say.
    NoContent,
    /// An error, sent as `{"fault_message": "..."}`.
    Error {
        /// HTTP status code (4xx for the caller's mistakes, 5xx for the VMM's).
        status: u16,
        /// What went wrong and what to do about it.
        fault_message: String,
    },
}

impl ApiResponse {
    /// 200 with a JSON body.
    pub fn ok_json(body: serde_json::Value) -> Self {
        ApiResponse::Json { status: 200, body }
    }

    /// An error response with `status` and `fault_message`.
    pub fn error(status: u16, fault_message: impl Into<String>) -> Self {
        ApiResponse::Error {
            status,
            fault_message: fault_message.into(),
        }
    }

    /// 400 Bad Request with `fault_message`.
    pub fn bad_request(fault_message: impl Into<String>) -> Self {
        Self::error(400, fault_message)
    }

    /// The HTTP status code this response is sent with.
    pub fn status(&self) -> u16 {
        match self {
            ApiResponse::Json { status, .. }
            | ApiResponse::Text { status, .. }
            | ApiResponse::Error { status, .. } => *status,
            ApiResponse::NoContent => 204,
        }
    }
}

/// Carries out API requests; implemented by the VMM.
///
/// `handle` runs on an API server thread (one per connection), never on a vCPU thread, and may
/// be called from several threads at once. A panic in it is caught and answered with 500.
pub trait ApiHandler: Send + Sync {
    /// Carries out `req` and says what to answer.
    fn handle(&self, req: ApiRequest) -> ApiResponse;
}

/// Why the API server could not start, or why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process accepts connections on the socket path.
    #[error(
        "another process is already listening on API socket {path}; stop it or pick another \
         --api-sock path",
        path = path.display()
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket, so it is not ours to remove.
    #[error(
        "{path} exists and is not a socket; remove it or pick another --api-sock path",
        path = path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or listening on the socket failed.
    #[error(
        "cannot create API socket {path}: {source}; check that its directory exists and is \
         writable and that the path is shorter than 108 bytes",
        path = path.display()
    )]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A server thread could not be started.
    #[error(
        "cannot start the API server thread: {0}; the process may be out of threads or memory"
    )]
    Spawn(#[source] io::Error),
    /// The client could not connect.
    #[error(
        "cannot connect to API socket {path}: {source}; is memvisor running with --api-sock {path}?",
        path = path.display()
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error(
        "API request over {path} failed: {source}; is memvisor running with --api-sock {path}?",
        path = path.display()
    )]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No complete answer arrived in time.
    #[error(
        "no answer on API socket {path} within {secs} s; is memvisor running with --api-sock \
         {path} and not stuck?",
        path = path.display(),
        secs = timeout.as_secs_f64()
    )]
    TimedOut {
        /// The socket path.
        path: PathBuf,
        /// The time allowed.
        timeout: std::time::Duration,
    },
    /// The answer was not valid HTTP.
    #[error(
        "the answer on API socket {path} is not valid HTTP ({detail}); is it a memvisor API \
         socket?",
        path = path.display()
    )]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The caller asked for something that cannot be sent as an HTTP request.
    #[error("cannot send this API request: {0}")]
    InvalidRequest(String),
}

impl ApiError {
    fn bind(path: &std::path::Path, source: io::Error) -> Self {
        ApiError::Bind {
            path: path.to_path_buf(),
            source,
        }
    }
}
