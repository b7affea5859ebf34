//! The control API over a real Unix socket: every endpoint through the client into a recording
//! handler and back, bad requests, socket permissions and lifetime, slow, silent and many
//! concurrent clients.

use memvisor::control::api::client::{self, request_with_timeout};
use memvisor::control::api::{
    ActionType, ApiError, ApiHandler, ApiRequest, ApiResponse, ApiServer, ApiServerOptions,
    BalloonConfig, VmState, PROMETHEUS_CONTENT_TYPE,
};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A private directory removed at the end of the test.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("mv-api-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("api.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records every request and the thread it ran on; answers per [`answer`].
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(ApiRequest, String)>>,
}

impl Recorder {
    fn requests(&self) -> Vec<ApiRequest> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }
}

impl ApiHandler for Recorder {
    fn handle(&self, req: ApiRequest) -> ApiResponse {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.seen.lock().unwrap().push((req.clone(), thread));
        answer(&req)
    }
}

fn answer(req: &ApiRequest) -> ApiResponse {
    match req {
        ApiRequest::GetVm => ApiResponse::ok_json(json!({"state": "Running"})),
        ApiRequest::PutBalloon(cfg) if cfg.amount_mib > 1024 => {
            ApiResponse::bad_request("balloon larger than guest memory; ask for at most 1024 MiB")
        }
        ApiRequest::GetBalloon => ApiResponse::ok_json(
            json!({"amount_mib": 128, "deflate_on_oom": true, "stats_polling_interval_s": 0}),
        ),
        ApiRequest::GetBalloonStats => ApiResponse::bad_request("statistics are not enabled"),
        ApiRequest::GetBalloonDevice => ApiResponse::ok_json(json!({"activated": true})),
        ApiRequest::GetMemoryMappings { gpa, len } => {
            ApiResponse::ok_json(json!({"gpa": gpa, "len": len}))
        }
        ApiRequest::GetMemoryReport => ApiResponse::Json {
            status: 200,
            body: json!({"resident_bytes": 4096}),
        },
        ApiRequest::GetMetrics => ApiResponse::Text {
            status: 200,
            content_type: PROMETHEUS_CONTENT_TYPE.to_string(),
            body: "memvisor_up 1\n".to_string(),
        },
        _ => ApiResponse::NoContent,
    }
}

fn start(dir: &TestDir) -> (ApiServer, Arc<Recorder>) {
    start_with(dir, ApiServerOptions::default())
}

fn start_with(dir: &TestDir, options: ApiServerOptions) -> (ApiServer, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let server = ApiServer::start_with_options(&dir.sock(), rec.clone(), options).unwrap();
    (server, rec)
}

/// Method, path, body; what it should reach the handler as; the status and body it gets back.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, ApiRequest, u16, String);

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    client::request(sock, method, path, body).unwrap()
}

fn fault(msg: &str) -> String {
    json!({ "fault_message": msg }).to_string()
}

/// Sends raw bytes and returns everything the server answers before closing.
fn raw(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn every_endpoint_round_trips_over_the_socket() {
    let dir = TestDir::new();
    let (server, rec) = start(&dir);
    let sock = server.path().to_path_buf();
    assert_eq!(sock, dir.sock());
    let balloon = BalloonConfig {
        amount_mib: 256,
        deflate_on_oom: true,
        stats_polling_interval_s: 2,
        ..Default::default()
    };
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("GET", "/vm", None, ApiRequest::GetVm, 200, r#"{"state":"Running"}"#.into()),
        ("PUT", "/vm", Some(r#"{"state":"Paused"}"#), ApiRequest::PutVmState(VmState::Paused), 204, "".into()),
        ("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), ApiRequest::PutVmState(VmState::Resumed), 204, "".into()),
        ("PUT", "/actions", Some(r#"{"action_type":"SendCtrlAltDel"}"#), ApiRequest::PutAction(ActionType::SendCtrlAltDel), 204, "".into()),
        ("PUT", "/actions", Some(r#"{"action_type":"Shutdown"}"#), ApiRequest::PutAction(ActionType::Shutdown), 204, "".into()),
        ("PUT", "/balloon", Some(r#"{"amount_mib":256,"deflate_on_oom":true,"stats_polling_interval_s":2}"#), ApiRequest::PutBalloon(balloon), 204, "".into()),
        ("PUT", "/balloon", Some(r#"{"amount_mib":4096,"deflate_on_oom":false}"#),
            ApiRequest::PutBalloon(BalloonConfig { amount_mib: 4096, deflate_on_oom: false, ..Default::default() }),
            400, fault("balloon larger than guest memory; ask for at most 1024 MiB")),
        ("PATCH", "/balloon", Some(r#"{"amount_mib":64}"#), ApiRequest::PatchBalloon { amount_mib: 64 }, 204, "".into()),
        ("GET", "/balloon", None, ApiRequest::GetBalloon, 200,
            r#"{"amount_mib":128,"deflate_on_oom":true,"stats_polling_interval_s":0}"#.into()),
        ("GET", "/balloon/statistics", None, ApiRequest::GetBalloonStats, 400, fault("statistics are not enabled")),
        ("PATCH", "/balloon/statistics", Some(r#"{"stats_polling_interval_s":5}"#), ApiRequest::PatchBalloonStats { stats_polling_interval_s: 5 }, 204, "".into()),
        ("GET", "/balloon/device", None, ApiRequest::GetBalloonDevice, 200, r#"{"activated":true}"#.into()),
        ("GET", "/memory/mappings", None, ApiRequest::GetMemoryMappings { gpa: None, len: None }, 200, r#"{"gpa":null,"len":null}"#.into()),
        ("GET", "/memory/mappings?gpa=0x100000&len=8192", None, ApiRequest::GetMemoryMappings { gpa: Some(0x100000), len: Some(8192) }, 200, r#"{"gpa":1048576,"len":8192}"#.into()),
        ("GET", "/memory/report", None, ApiRequest::GetMemoryReport, 200, r#"{"resident_bytes":4096}"#.into()),
        ("GET", "/metrics", None, ApiRequest::GetMetrics, 200, "memvisor_up 1\n".into()),
    ];
    for (i, (method, path, body, want_req, want_status, want_body)) in cases.iter().enumerate() {
        let got = call(&sock, method, path, *body);
        assert_eq!(got, (*want_status, want_body.clone()), "{method} {path}");
        let seen = rec.seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            i + 1,
            "{method} {path} reached the handler once"
        );
        assert_eq!(&seen[i].0, want_req, "{method} {path}");
        assert_eq!(
            seen[i].1, "api-conn",
            "handler runs on an API connection thread"
        );
    }
}

#[test]
fn bad_requests_get_fault_messages_and_never_reach_the_handler() {
    let dir = TestDir::new();
    let (server, rec) = start(&dir);
    let sock = server.path();
    let balloon_shape = r#"expected {"amount_mib": <u32>, "deflate_on_oom": <bool>, "stats_polling_interval_s": <u16, optional, default 0>, "free_page_hinting": <bool, optional>, "free_page_reporting": <bool, optional>}"#;
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<&str>, u16, String)> = vec![
        ("PUT", "/balloon", Some("{\"amount_mib\": 1,"), 400,
            format!("invalid JSON body for PUT /balloon: EOF while parsing a value at line 1 column 17; {balloon_shape}")),
        ("PUT", "/balloon", Some(r#"{"amount_mib": true, "deflate_on_oom": true}"#), 400,
            format!("invalid JSON body for PUT /balloon: invalid type: boolean `true`, expected u32 at line 1 column 19; {balloon_shape}")),
        ("PUT", "/balloon", Some(r#"{"amount_mib": 1, "deflate_on_oom": true, "bogus": 1}"#), 400,
            format!("invalid JSON body for PUT /balloon: unknown field `bogus`, expected one of `amount_mib`, `deflate_on_oom`, `stats_polling_interval_s`, `free_page_hinting`, `free_page_reporting` at line 1 column 49; {balloon_shape}")),
        ("PUT", "/balloon", None, 400,
            format!("PUT /balloon needs a JSON body: {}", &balloon_shape["expected ".len()..])),
        ("PATCH", "/balloon", Some("[64]"), 400,
            r#"invalid JSON body for PATCH /balloon: the body must be a JSON object; expected {"amount_mib": <u32>}"#.into()),
        ("GET", "/balloons", None, 404,
            "no API endpoint /balloons; the endpoints are /vm, /actions, /balloon, /balloon/statistics, /balloon/device, /memory, /memory/mappings, /memory/reclaim, /memory/working-set, /memory/swap-out, /memory/swap-in, /memory/report, /metrics".into()),
        ("DELETE", "/vm", None, 405, "method DELETE is not allowed on /vm; use GET, PUT, PATCH".into()),
        ("POST", "/actions", Some(r#"{"action_type":"Shutdown"}"#), 405, "method POST is not allowed on /actions; use PUT".into()),
        ("GET", "/memory/mappings?gpa=4k", None, 400,
            "bad query for GET /memory/mappings: `gpa=4k` is not a 64-bit unsigned number; expected ?gpa=<addr>&len=<bytes>, both optional, in decimal or 0x hex".into()),
    ];
    for (method, path, body, want_status, want_msg) in cases {
        assert_eq!(
            call(sock, method, path, body),
            (want_status, fault(&want_msg)),
            "{method} {path} {body:?}"
        );
    }
    assert_eq!(rec.requests(), vec![]);
}

#[test]
fn oversized_body_is_413() {
    let dir = TestDir::new();
    let (server, rec) = start(&dir);
    let body = format!(r#"{{"amount_mib": 1, "pad": "{}"}}"#, "x".repeat(70_000));
    let got = call(server.path(), "PATCH", "/balloon", Some(&body));
    assert_eq!(
        got,
        (
            413,
            fault(&format!(
                "request body of {} bytes is over the 65536-byte limit; send a smaller body",
                body.len()
            ))
        )
    );
    // Exactly at the limit is read and parsed (and refused for the unknown field).
    let body = format!(r#"{{"amount_mib": 1, "p": "{}"}}"#, " ".repeat(65_536 - 26));
    assert_eq!(body.len(), 65_536);
    let (status, text) = call(server.path(), "PATCH", "/balloon", Some(&body));
    assert_eq!(status, 400);
    assert!(text.contains("unknown field `p`"), "{text}");
    assert_eq!(rec.requests(), vec![]);
}

#[test]
fn raw_http_headers_allow_and_content_type() {
    let dir = TestDir::new();
    let (server, _rec) = start(&dir);
    let sock = server.path();
    let body = fault("method PUT is not allowed on /balloon/statistics; use GET, PATCH");
    assert_eq!(
        raw(
            sock,
            b"PUT /balloon/statistics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        ),
        format!(
            "HTTP/1.1 405 Method Not Allowed\r\nServer: memvisor\r\nContent-Type: \
             application/json\r\nAllow: GET, PATCH\r\nContent-Length: {}\r\nConnection: \
             close\r\n\r\n{body}",
            body.len()
        )
    );
    assert_eq!(
        raw(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!(
            "HTTP/1.1 200 OK\r\nServer: memvisor\r\nContent-Type: {PROMETHEUS_CONTENT_TYPE}\r\n\
             Content-Length: 14\r\nConnection: close\r\n\r\nmemvisor_up 1\n"
        )
    );
    let body =
        fault("chunked transfer encoding is not supported; send the body with Content-Length");
    let got = raw(
        sock,
        b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 411 Length Required\r\n"), "{got}");
    assert!(got.ends_with(&body), "{got}");
    let got = raw(sock, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(
        got.ends_with(&fault("malformed HTTP request: invalid HTTP version")),
        "{got}"
    );
}

#[test]
fn socket_is_mode_0600_and_stop_removes_it() {
    let dir = TestDir::new();
    let (server, _rec) = start(&dir);
    let meta = std::fs::symlink_metadata(dir.sock()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    server.stop();
    assert!(!dir.sock().exists(), "stop() leaves no socket file");
    let err = client::request(&dir.sock(), "GET", "/vm", None).unwrap_err();
    assert!(matches!(err, ApiError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    let want = format!(
        "is memvisor running with --api-sock {}?",
        dir.sock().display()
    );
    assert!(msg.ends_with(&want), "{msg}");

    let (server, _rec) = start(&dir);
    drop(server);
    assert!(!dir.sock().exists(), "drop leaves no socket file");
}

#[test]
fn stale_socket_is_replaced_but_live_sockets_and_other_files_are_kept() {
    let dir = TestDir::new();
    let sock = dir.sock();
    drop(UnixListener::bind(&sock).unwrap()); // leaves a socket file nobody listens on
    assert!(sock.exists());
    let (server, _rec) = start(&dir);
    assert_eq!(call(&sock, "GET", "/vm", None).0, 200);

    let rec = Arc::new(Recorder::default());
    let err = ApiServer::start(&sock, rec.clone()).err().unwrap();
    assert!(matches!(err, ApiError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "another process is already listening on API socket {}; stop it or pick another \
             --api-sock path",
            sock.display()
        )
    );
    assert_eq!(
        call(&sock, "GET", "/vm", None).0,
        200,
        "the live server still answers"
    );
    drop(server);

    std::fs::write(&sock, b"precious").unwrap();
    let err = ApiServer::start(&sock, rec).err().unwrap();
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
}

#[test]
fn silent_and_half_open_clients_do_not_block_others() {
    let dir = TestDir::new();
    let (server, rec) = start(&dir);
    let sock = server.path();
    let _silent = UnixStream::connect(sock).unwrap();
    let mut half = UnixStream::connect(sock).unwrap();
    half.write_all(b"PUT /balloon HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"amo")
        .unwrap();
    let mut half_closed = UnixStream::connect(sock).unwrap();
    half_closed.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
    half_closed.shutdown(std::net::Shutdown::Write).unwrap();

    let start = Instant::now();
    let got = request_with_timeout(sock, "GET", "/vm", None, Duration::from_secs(5)).unwrap();
    assert_eq!(got, (200, r#"{"state":"Running"}"#.to_string()));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );

    // The half-closed client is told its request was cut short.
    let mut answer = String::new();
    half_closed.read_to_string(&mut answer).unwrap();
    let body = fault("the connection ended before the request was complete");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with(&body), "{answer}");
    assert_eq!(rec.requests(), vec![ApiRequest::GetVm]);

    // Stopping does not wait for the silent clients' timeouts.
    let start = Instant::now();
    server.stop();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        start.elapsed()
    );
}

#[test]
fn slow_client_gets_408() {
    let dir = TestDir::new();
    let options = ApiServerOptions {
        read_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(600),
        ..ApiServerOptions::default()
    };
    let (server, rec) = start_with(&dir, options);
    let mut s = UnixStream::connect(server.path()).unwrap();
    s.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
    // Dribble a header byte every 100 ms: each read is in time, the whole request is not.
    let start = Instant::now();
    let mut answer = String::new();
    for b in b"X-Slow: 123456789" {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut answer);
    let body = fault(
        "timed out waiting for the request; send it whole within 0.6 s, with no pause longer \
         than 0.2 s",
    );
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with(&body), "{answer}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(rec.requests(), vec![]);
}

#[test]
fn fifty_concurrent_clients_all_get_answers() {
    let dir = TestDir::new();
    let (server, rec) = start(&dir);
    let sock = server.path().to_path_buf();
    let threads: Vec<_> = (0..50u32)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let body = format!(r#"{{"amount_mib": {i}}}"#);
                call(&sock, "PATCH", "/balloon", Some(&body))
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), (204, String::new()));
    }
    let mut amounts: Vec<u32> = rec
        .requests()
        .into_iter()
        .map(|r| match r {
            ApiRequest::PatchBalloon { amount_mib } => amount_mib,
            other => panic!("{other:?}"),
        })
        .collect();
    amounts.sort_unstable();
    assert_eq!(amounts, (0..50).collect::<Vec<_>>());
}

#[test]
fn too_many_connections_get_503() {
    let dir = TestDir::new();
    let options = ApiServerOptions {
        max_connections: 1,
        ..ApiServerOptions::default()
    };
    let (server, rec) = start_with(&dir, options);
    let silent = UnixStream::connect(server.path()).unwrap();
    let got = call(server.path(), "GET", "/vm", None);
    let msg = "too many open API connections (at most 1); retry later";
    assert_eq!(got, (503, fault(msg)));
    drop(silent);
    // Once the slot is free again the next request is served.
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(server.path(), "GET", "/vm", None).0 != 200 {
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rec.requests(), vec![ApiRequest::GetVm]);
}

struct Panicker;

impl ApiHandler for Panicker {
    fn handle(&self, req: ApiRequest) -> ApiResponse {
        if req == ApiRequest::GetMetrics {
            panic!("handler bug");
        }
        ApiResponse::NoContent
    }
}

#[test]
fn handler_panic_is_500_and_the_server_keeps_serving() {
    let dir = TestDir::new();
    let server = ApiServer::start(&dir.sock(), Arc::new(Panicker)).unwrap();
    assert_eq!(
        call(server.path(), "GET", "/metrics", None),
        (
            500,
            fault("the VMM failed on this request; see the memvisor log")
        )
    );
    assert_eq!(
        call(server.path(), "GET", "/vm", None),
        (204, String::new())
    );
}

#[test]
fn client_times_out_on_a_socket_that_never_answers() {
    let dir = TestDir::new();
    let _listener = UnixListener::bind(dir.sock()).unwrap(); // never accepts
    let start = Instant::now();
    let err = request_with_timeout(&dir.sock(), "GET", "/vm", None, Duration::from_millis(200))
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, ApiError::TimedOut { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "no answer on API socket {0} within 0.2 s; is memvisor running with --api-sock {0} \
             and not stuck?",
            dir.sock().display()
        )
    );
    let err = client::request(&dir.sock(), "GET", "/a b", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot send this API request: path `/a b` must be non-empty without spaces or control \
         characters"
    );
}

/// A client that sends a whole read-only request and hangs up before the answer (found by
/// flooding a running VM's socket, tests/faults.rs): the answer is not computed, since
/// `GET /metrics` or `/memory/*` cost a full page-map scan each and abandoned ones would keep
/// connection threads busy (and slots taken) long after their clients left. A request that
/// changes something is still carried out, and a client that only half-closes gets its answer.
#[test]
fn read_requests_of_clients_that_hung_up_are_not_computed() {
    use memvisor::control::api::server::serve_stream;
    use std::net::Shutdown;
    let opts = ApiServerOptions::default();
    // Serves `request`; the client hangs up at once, or half-closes and reads the answer.
    let serve = |request: &[u8], hang_up: bool| -> (Vec<ApiRequest>, String) {
        let rec = Recorder::default();
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(request).unwrap();
        let mut answer = String::new();
        if hang_up {
            drop(client);
            serve_stream(server, &rec, &opts);
        } else {
            client.shutdown(Shutdown::Write).unwrap();
            serve_stream(server, &rec, &opts);
            client.read_to_string(&mut answer).unwrap();
        }
        (rec.requests(), answer)
    };
    for target in [
        "/metrics",
        "/memory/report",
        "/memory/mappings",
        "/vm",
        "/balloon",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\n\r\n");
        assert_eq!(serve(req.as_bytes(), true).0, vec![], "GET {target}");
    }
    // Changes are carried out even when nobody waits for the answer.
    let with_body = |head: &str, body: &str| {
        format!(
            "{head} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let patch = with_body("PATCH /balloon", r#"{"amount_mib": 64}"#);
    assert_eq!(
        serve(patch.as_bytes(), true).0,
        vec![ApiRequest::PatchBalloon { amount_mib: 64 }]
    );
    let stop = with_body("PUT /actions", r#"{"action_type": "Shutdown"}"#);
    assert_eq!(
        serve(stop.as_bytes(), true).0,
        vec![ApiRequest::PutAction(ActionType::Shutdown)]
    );
    // Half-closed (end of request) and still reading: answered.
    let (seen, answer) = serve(b"GET /metrics HTTP/1.1\r\n\r\n", false);
    assert_eq!(seen, vec![ApiRequest::GetMetrics]);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("memvisor_up 1\n"), "{answer}");
}
