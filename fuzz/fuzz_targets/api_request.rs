//! Fuzz target: the control API's request path, from raw bytes on the socket to the answer.
//!
//! The input is what a client sends on the API socket. It is written into one end of a Unix
//! socket pair (whose write side is then shut, as a client that sent everything would) and the
//! other end is served by `memvisor::control::api::server::serve_stream`, the function every connection
//! thread of the API server runs: HTTP framing (`src/control/api/http.rs`, on `httparse`), limits,
//! `parse_request` (`src/control/api/request.rs`) and a recording handler. Invariants:
//! - no panic, and memory stays bounded (libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb`);
//! - empty input gets no answer; any other input gets exactly one well-formed HTTP/1.1 answer with
//!   a correct `Content-Length` and `Connection: close`;
//! - the handler is called at most once, and only then is the answer the handler's;
//! - otherwise the answer is a typed error: one of the documented 4xx statuses with a JSON body
//!   `{"fault_message": "<non-empty>"}`, and 405 answers carry an `Allow` header.

#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use memvisor::control::api::server::serve_stream;
use memvisor::control::api::{ApiHandler, ApiRequest, ApiResponse, ApiServerOptions};

/// Larger inputs would not fit the socket buffer before the server reads; the head limit is
/// 16 KiB and the body limit below is 8 KiB, so nothing is lost.
const MAX_INPUT: usize = 100 * 1024;

struct Recorder(Mutex<Vec<ApiRequest>>);

impl ApiHandler for Recorder {
    fn handle(&self, req: ApiRequest) -> ApiResponse {
        self.0.lock().unwrap().push(req);
        ApiResponse::Json {
            status: 299,
            body: serde_json::json!({"handled": true}),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let (mut client, server) = UnixStream::pair().expect("socketpair");
    client
        .write_all(data)
        .expect("input fits the socket buffer");
    client.shutdown(Shutdown::Write).expect("shutdown");
    let handler = Recorder(Mutex::new(Vec::new()));
    let opts = ApiServerOptions {
        read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        max_body_bytes: 8 * 1024,
        max_connections: 1,
        seccomp: None,
    };
    serve_stream(server, &handler, &opts);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).expect("read answer");
    let handled = handler.0.into_inner().unwrap();
    assert!(handled.len() <= 1, "handler called {} times", handled.len());

    if data.is_empty() {
        assert!(answer.is_empty(), "an answer to an empty connection");
        return;
    }
    assert!(answer.len() < 64 * 1024, "answer of {} bytes", answer.len());
    // `Expect: 100-continue` with a body gets an interim `100 Continue` first.
    let answer = match answer.strip_prefix(b"HTTP/1.1 100 Continue\r\n\r\n".as_slice()) {
        Some(rest) => rest.to_vec(),
        None => answer,
    };
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "answer is not HTTP ({other:?}): {:?}",
            String::from_utf8_lossy(&answer)
        ),
    };
    let status = resp.code.expect("status code");
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let body = &answer[head_len..];
    let len: usize = header("content-length")
        .expect("Content-Length")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(len, body.len(), "Content-Length vs body");
    assert_eq!(header("connection").as_deref(), Some("close"));

    if !handled.is_empty() {
        assert_eq!(status, 299, "the handler's answer is sent as is");
        return;
    }
    assert!(
        [400, 404, 405, 411, 413, 431].contains(&status),
        "unexpected status {status} for {:?}",
        String::from_utf8_lossy(data)
    );
    let json: serde_json::Value = serde_json::from_slice(body).expect("error body is JSON");
    let msg = json["fault_message"].as_str().expect("fault_message");
    assert!(!msg.is_empty());
    if status == 405 {
        assert!(header("allow").is_some(), "405 without Allow");
    }
});
