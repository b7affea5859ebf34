//! HTTP/1.1 framing for the API socket on top of `httparse`: reading one request or response
//! head and its `Content-Length` body under a deadline and size limits, and writing responses.
//!
//! Every exchange is one request per connection (`Connection: close`), which keeps framing to
//! the head plus exactly `Content-Length` body bytes.

use super::ApiResponse;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Largest request or response head (request line and headers) accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers accepted in one head.
const MAX_HEADERS: usize = 32;

/// Why a message could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection before sending anything.
    Closed,
    /// The peer closed the connection in the middle of the message.
    Truncated,
    /// The peer was silent longer than the read timeout, or the deadline passed.
    TimedOut,
    /// The head is larger than [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] headers.
    HeadTooLarge,
    /// The bytes are not HTTP.
    Malformed(String),
    /// The body is announced with chunked transfer encoding instead of `Content-Length`.
    LengthRequired,
    /// `Content-Length` is above the limit.
    BodyTooLarge { len: usize, max: usize },
    /// Another socket error.
    Io(io::Error),
}

/// Time limits for reading one message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadLimits {
    /// Longest silence between two reads.
    pub read_timeout: Duration,
    /// When the whole message must have arrived.
    pub deadline: Instant,
}

/// A request as read from the socket.
#[derive(Debug)]
pub(crate) struct RawRequest {
    pub method: String,
    pub target: String,
    pub body: Vec<u8>,
}

/// A response as read from the socket.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Reads from `stream` into `buf` until `done` recognizes a complete prefix.
fn fill_until<T>(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    limits: ReadLimits,
    mut done: impl FnMut(&[u8]) -> Result<Option<T>, ReadError>,
) -> Result<T, ReadError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(found) = done(buf)? {
            return Ok(found);
        }
        let left = limits.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left.min(limits.read_timeout)))
            .map_err(ReadError::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Truncated),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(ReadError::TimedOut)
                }
                io::ErrorKind::Interrupted => {}
                _ => return Err(ReadError::Io(e)),
            },
        }
    }
}

/// The body length a head announces: `Content-Length` (0 if absent).
fn content_length(headers: &[httparse::Header]) -> Result<Option<usize>, ReadError> {
    let mut len = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::LengthRequired);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| ReadError::Malformed("Content-Length is not a number".into()))?;
            if len.is_some_and(|l| l != v) {
                return Err(ReadError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            len = Some(v);
        }
    }
    Ok(len)
}

fn head_error(e: httparse::Error) -> ReadError {
    match e {
        httparse::Error::TooManyHeaders => ReadError::HeadTooLarge,
        e => ReadError::Malformed(e.to_string()),
    }
}

/// Reads the body that follows a head of `head_len` bytes already in `buf`.
fn read_body(
    stream: &mut UnixStream,
    mut buf: Vec<u8>,
    head_len: usize,
    len: usize,
    limits: ReadLimits,
) -> Result<Vec<u8>, ReadError> {
    let end = head_len + len;
    fill_until(stream, &mut buf, limits, |b| {
        Ok((b.len() >= end).then_some(()))
    })?;
    buf.truncate(end);
    Ok(buf.split_off(head_len))
}

/// Reads one request; bodies above `max_body` are refused before they are read.
pub(crate) fn read_request(
    stream: &mut UnixStream,
    limits: ReadLimits,
    max_body: usize,
) -> Result<RawRequest, ReadError> {
    let mut buf = Vec::new();
    let (head_len, method, target, len, expect_continue) =
        fill_until(stream, &mut buf, limits, |b| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(b).map_err(head_error)? {
                httparse::Status::Partial if b.len() > MAX_HEAD_BYTES => {
                    Err(ReadError::HeadTooLarge)
                }
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(n) => {
                    let len = content_length(req.headers)?.unwrap_or(0);
                    let expect_continue = req.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("expect")
                            && h.value.eq_ignore_ascii_case(b"100-continue")
                    });
                    let method = req.method.unwrap_or_default().to_string();
                    let target = req.path.unwrap_or_default().to_string();
                    Ok(Some((n, method, target, len, expect_continue)))
                }
            }
        })?;
    if len > max_body {
        return Err(ReadError::BodyTooLarge { len, max: max_body });
    }
    if expect_continue && len > 0 {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(ReadError::Io)?;
    }
    let body = read_body(stream, buf, head_len, len, limits)?;
    Ok(RawRequest {
        method,
        target,
        body,
    })
}

/// Reads one response, skipping interim 1xx responses; without `Content-Length` the body runs
/// to the end of the connection.
pub(crate) fn read_response(
    stream: &mut UnixStream,
    limits: ReadLimits,
    max_body: usize,
) -> Result<RawResponse, ReadError> {
    let mut buf = Vec::new();
    loop {
        let (head_len, status, len) = fill_until(stream, &mut buf, limits, |b| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(b).map_err(head_error)? {
                httparse::Status::Partial if b.len() > MAX_HEAD_BYTES => {
                    Err(ReadError::HeadTooLarge)
                }
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(n) => {
                    let len = content_length(resp.headers)?;
                    Ok(Some((n, resp.code.unwrap_or_default(), len)))
                }
            }
        })?;
        if (100..200).contains(&status) {
            buf.drain(..head_len);
            continue;
        }
        let body = match len {
            _ if status == 204 || status == 304 => Vec::new(),
            Some(len) if len > max_body => {
                return Err(ReadError::BodyTooLarge { len, max: max_body })
            }
            Some(len) => read_body(stream, buf, head_len, len, limits)?,
            None => read_to_end(stream, buf, head_len, limits, max_body)?,
        };
        return Ok(RawResponse { status, body });
    }
}

fn read_to_end(
    stream: &mut UnixStream,
    mut buf: Vec<u8>,
    head_len: usize,
    limits: ReadLimits,
    max_body: usize,
) -> Result<Vec<u8>, ReadError> {
    let result = fill_until(stream, &mut buf, limits, |b| {
        if b.len() - head_len > max_body {
            Err(ReadError::BodyTooLarge {
                len: b.len() - head_len,
                max: max_body,
            })
        } else {
            Ok(None::<()>)
        }
    });
    match result {
        Err(ReadError::Truncated | ReadError::Closed) => Ok(buf.split_off(head_len)),
        Err(e) => Err(e),
        Ok(()) => unreachable!("the completion check never reports completion"),
    }
}

/// The reason phrase for the status codes the API uses.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The status, content type and body bytes `resp` is sent as.
pub(crate) fn render(resp: &ApiResponse) -> (u16, Option<&str>, Vec<u8>) {
    const JSON: &str = "application/json";
    let fault = |status, msg: &str| {
        let body = serde_json::json!({ "fault_message": msg }).to_string();
        (status, Some(JSON), body.into_bytes())
    };
    let (status, ctype, body) = match resp {
        ApiResponse::Json { status, body } => (*status, Some(JSON), body.to_string().into_bytes()),
        ApiResponse::Text {
            status,
            content_type,
            body,
        } => (
            *status,
            Some(content_type.as_str()),
            body.clone().into_bytes(),
        ),
        ApiResponse::NoContent => (204, None, Vec::new()),
        ApiResponse::Error {
            status,
            fault_message,
        } => fault(*status, fault_message),
    };
    if !(200..=599).contains(&status) {
        let msg = format!("the VMM answered with invalid HTTP status {status}; this is a bug");
        let (s, c, b) = fault(500, &msg);
        return (s, c, b);
    }
    if status == 204 || status == 304 {
        return (status, None, Vec::new());
    }
    (status, ctype, body)
}

/// Writes `resp` with `Connection: close` and any `extra` headers.
pub(crate) fn write_response(
    stream: &mut UnixStream,
    resp: &ApiResponse,
    extra: &[(&str, String)],
) -> io::Result<()> {
    let (status, ctype, body) = render(resp);
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: memvisor\r\n",
        reason(status)
    );
    if let Some(ctype) = ctype {
        out.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Writes one request with `Connection: close`.
pub(crate) fn write_request(
    stream: &mut UnixStream,
    method: &str,
    target: &str,
    body: Option<&str>,
) -> io::Result<()> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: memvisor\r\nAccept: */*\r\n\
         Connection: close\r\n"
    );
    if let Some(body) = body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        out.push_str("\r\n");
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
