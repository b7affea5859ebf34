//! The blocking API client used by the CLI: one request per connection, with a timeout.
//!
//! Errors name the socket and ask whether memvisor runs with `--api-sock PATH`, since a missing
//! or dead server is by far the most common cause.

use super::http::{self, ReadError, ReadLimits};
use super::ApiError;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Time [`request`] allows for the whole exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body accepted (metrics and memory reports can be large).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Sends `method path` with an optional JSON `body` to the API socket `sock` and returns the
/// status code and body of the answer. Gives up after [`DEFAULT_TIMEOUT`].
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ApiError> {
    request_with_timeout(sock, method, path, body, DEFAULT_TIMEOUT)
}

/// Like [`request`], giving up after `timeout`.
pub fn request_with_timeout(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ApiError> {
    check_token("method", method)?;
    check_token("path", path)?;
    if !path.starts_with('/') {
        return Err(ApiError::InvalidRequest(format!(
            "path `{path}` must start with `/`, e.g. /balloon"
        )));
    }
    let deadline = Instant::now() + timeout;
    let io_err = |source: io::Error| ApiError::Io {
        path: sock.to_path_buf(),
        source,
    };
    let timed_out = || ApiError::TimedOut {
        path: sock.to_path_buf(),
        timeout,
    };
    let mut stream = UnixStream::connect(sock).map_err(|source| ApiError::Connect {
        path: sock.to_path_buf(),
        source,
    })?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    if let Err(e) = http::write_request(&mut stream, method, path, body) {
        match e.kind() {
            // The server may answer (e.g. 413) and close before reading the whole body:
            // its answer is still waiting to be read.
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {}
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Err(timed_out()),
            _ => return Err(io_err(e)),
        }
    }
    let limits = ReadLimits {
        read_timeout: timeout,
        deadline,
    };
    let detail = match http::read_response(&mut stream, limits, MAX_RESPONSE_BYTES) {
        Ok(resp) => {
            let text = String::from_utf8_lossy(&resp.body).into_owned();
            return Ok((resp.status, text));
        }
        Err(ReadError::TimedOut) => return Err(timed_out()),
        Err(ReadError::Io(e)) => return Err(io_err(e)),
        Err(ReadError::Closed) => {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection without answering",
            )))
        }
        Err(ReadError::Truncated) => "the answer ended early".to_string(),
        Err(ReadError::HeadTooLarge) => "the response head is too large".to_string(),
        Err(ReadError::Malformed(what)) => what,
        Err(ReadError::LengthRequired) => "chunked transfer encoding".to_string(),
        Err(ReadError::BodyTooLarge { len, max }) => {
            format!("a body of {len} bytes is over the {max}-byte limit")
        }
    };
    Err(ApiError::BadResponse {
        path: sock.to_path_buf(),
        detail,
    })
}

/// A method or path must be one token: no spaces or control characters.
fn check_token(what: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ApiError::InvalidRequest(format!(
            "{what} `{}` must be non-empty without spaces or control characters",
            value.escape_debug()
        )));
    }
    Ok(())
}
