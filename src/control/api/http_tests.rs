//! Unit tests of the HTTP framing over socket pairs.

use super::*;
use std::io::Read;
use std::net::Shutdown;

fn limits(read_timeout_ms: u64) -> ReadLimits {
    ReadLimits {
        read_timeout: Duration::from_millis(read_timeout_ms),
        deadline: Instant::now() + Duration::from_secs(5),
    }
}

/// Sends `bytes` on one end of a pair (then closes it for writing) and reads a request from the
/// other end.
fn request_from(bytes: &[u8], max_body: usize) -> Result<RawRequest, ReadError> {
    let (mut client, mut server) = UnixStream::pair().unwrap();
    client.write_all(bytes).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    read_request(&mut server, limits(2000), max_body)
}

#[test]
fn reads_request_line_and_exact_body() {
    let raw = request_from(
        b"PATCH /balloon?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcdEXTRA",
        64,
    )
    .unwrap();
    assert_eq!(
        (raw.method.as_str(), raw.target.as_str(), &raw.body[..]),
        ("PATCH", "/balloon?x=1", &b"abcd"[..])
    );
    let raw = request_from(b"GET /vm HTTP/1.0\r\n\r\n", 64).unwrap();
    assert_eq!((raw.method.as_str(), raw.body.len()), ("GET", 0));
}

#[test]
fn body_arriving_in_pieces_after_100_continue() {
    let (mut client, mut server) = UnixStream::pair().unwrap();
    client
        .write_all(b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n")
        .unwrap();
    let reader = std::thread::spawn(move || read_request(&mut server, limits(2000), 64));
    let mut interim = [0u8; 25];
    client.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"abc").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    client.write_all(b"def").unwrap();
    let raw = reader.join().unwrap().unwrap();
    assert_eq!(raw.body, b"abcdef");
}

#[test]
fn framing_errors() {
    let err = |bytes: &[u8]| request_from(bytes, 64).unwrap_err();
    assert!(matches!(err(b""), ReadError::Closed));
    assert!(matches!(
        err(b"GET /vm HTTP/1.1\r\nHo"),
        ReadError::Truncated
    ));
    assert!(matches!(
        err(b"PUT /vm HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
        ReadError::Truncated
    ));
    assert!(matches!(
        err(b"PUT /vm HTTP/1.1\r\nContent-Length: 65\r\n\r\n"),
        ReadError::BodyTooLarge { len: 65, max: 64 }
    ));
    assert!(matches!(
        err(b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ReadError::LengthRequired
    ));
    match err(b"PUT /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") {
        ReadError::Malformed(m) => assert_eq!(m, "conflicting Content-Length headers"),
        other => panic!("{other:?}"),
    }
    match err(b"PUT /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n") {
        ReadError::Malformed(m) => assert_eq!(m, "Content-Length is not a number"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        err(b"\x01\x02 garbage\r\n\r\n"),
        ReadError::Malformed(_)
    ));
    let mut many = b"GET /vm HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(matches!(err(&many), ReadError::HeadTooLarge));
    let mut long = b"GET /vm HTTP/1.1\r\nX: ".to_vec();
    long.resize(MAX_HEAD_BYTES + 10, b'a');
    assert!(matches!(err(&long), ReadError::HeadTooLarge));
}

#[test]
fn silent_peer_times_out() {
    let (_client, mut server) = UnixStream::pair().unwrap();
    let start = Instant::now();
    assert!(matches!(
        read_request(&mut server, limits(100), 64),
        Err(ReadError::TimedOut)
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn responses_render_with_length_and_fault_message() {
    let (mut server, mut client) = UnixStream::pair().unwrap();
    let resp = ApiResponse::error(404, "no \"such\" thing");
    write_response(&mut server, &resp, &[("Allow", "GET".to_string())]).unwrap();
    drop(server);
    let mut text = String::new();
    client.read_to_string(&mut text).unwrap();
    let body = r#"{"fault_message":"no \"such\" thing"}"#;
    assert_eq!(
        text,
        format!(
            "HTTP/1.1 404 Not Found\r\nServer: memvisor\r\nContent-Type: application/json\r\n\
             Allow: GET\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    );
    let bad = ApiResponse::Json {
        status: 42,
        body: serde_json::json!({}),
    };
    let (status, _, body) = render(&bad);
    assert_eq!(status, 500);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"fault_message":"the VMM answered with invalid HTTP status 42; this is a bug"}"#
    );
    let empty = ApiResponse::Json {
        status: 204,
        body: serde_json::json!({"dropped": true}),
    };
    assert_eq!(render(&empty), (204, None, Vec::new()));
}

#[test]
fn response_reader_skips_interim_and_reads_to_eof_without_length() {
    let (mut server, mut client) = UnixStream::pair().unwrap();
    server
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nhello")
        .unwrap();
    drop(server);
    let resp = read_response(&mut client, limits(2000), 64).unwrap();
    assert_eq!((resp.status, &resp.body[..]), (200, &b"hello"[..]));
}
