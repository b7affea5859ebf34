//! The OpenAPI document as a validator, and a client that checks every answer against it.

use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

const METHODS: [&str; 5] = ["get", "put", "patch", "post", "delete"];

/// `/` and `~` escaped for a JSON pointer.
pub fn esc(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer percent-encoded for a URI fragment (media types hold spaces).
fn uri_fragment(pointer: &str) -> String {
    let mut out = String::new();
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The OpenAPI document and validators compiled from it.
pub struct Spec {
    /// The document, as JSON.
    pub doc: Value,
    validators: Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

impl Spec {
    pub fn load() -> Spec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api/openapi.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let doc: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            doc["openapi"], "3.1.0",
            "the schemas are JSON Schema 2020-12"
        );
        Spec {
            doc,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// Every (path, METHOD) the document describes.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for m in item.as_object().expect("path item").keys() {
                assert!(
                    METHODS.contains(&m.as_str()),
                    "{path}: `{m}` is not a method"
                );
                ops.insert((path.clone(), m.to_uppercase()));
            }
        }
        ops
    }

    /// Every (path, METHOD, status) the document lists explicitly (not `default`).
    pub fn documented_statuses(&self) -> BTreeSet<(String, String, u16)> {
        let mut out = BTreeSet::new();
        for (path, method) in self.operations() {
            let responses = &self.doc["paths"][&path][method.to_lowercase()]["responses"];
            for code in responses.as_object().expect("responses").keys() {
                if code != "default" {
                    out.insert((path.clone(), method.clone(), code.parse().expect("status")));
                }
            }
        }
        out
    }

    /// Follows a `$ref` to a component (responses and request bodies are refs here).
    pub fn deref(&self, pointer: String) -> (String, &Value) {
        let v = self
            .doc
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("no {pointer}"));
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let p = r.strip_prefix('#').expect("local $ref").to_string();
                self.deref(p)
            }
            None => (pointer, v),
        }
    }

    /// The response object for `status` of `method path` (or its `default`).
    pub fn response(&self, path: &str, method: &str, status: u16) -> Option<(String, &Value)> {
        let op = format!("/paths/{}/{}", esc(path), method.to_lowercase());
        self.doc.pointer(&op)?;
        let responses = self.doc.pointer(&format!("{op}/responses"))?;
        let code = if responses.get(status.to_string()).is_some() {
            status.to_string()
        } else if responses.get("default").is_some() {
            "default".into()
        } else {
            return None;
        };
        Some(self.deref(format!("{op}/responses/{code}")))
    }

    /// Validates `instance` against the schema at `pointer` (with `$ref`s into the document).
    pub fn validate(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        let validator = {
            let mut cache = self.validators.lock().unwrap();
            cache
                .entry(pointer.to_string())
                .or_insert_with(|| {
                    let mut root = self.doc.clone();
                    root["$ref"] = json!(format!("#{}", uri_fragment(pointer)));
                    let v = jsonschema::draft202012::new(&root)
                        .unwrap_or_else(|e| panic!("schema at {pointer} does not compile: {e}"));
                    std::sync::Arc::new(v)
                })
                .clone()
        };
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Validates `value` against `#/components/schemas/NAME`.
    pub fn validate_component(&self, name: &str, value: &Value) -> Result<(), String> {
        self.validate(&format!("/components/schemas/{name}"), value)
    }

    /// Checks one real answer: the document has a response for it, with this content type and
    /// a body its schema accepts (no body for responses without content).
    pub fn check_answer(&self, path: &str, method: &str, a: &Answer) -> Result<(), String> {
        let (pointer, resp) = self
            .response(path, method, a.status)
            .ok_or_else(|| format!("no response {} documented", a.status))?;
        match resp.get("content").and_then(Value::as_object) {
            None => {
                if !a.body.is_empty() {
                    return Err(format!("documented without content, got {:?}", a.body));
                }
                Ok(())
            }
            Some(content) => {
                let ctype = a.content_type.as_deref().unwrap_or("");
                if !content.contains_key(ctype) {
                    return Err(format!(
                        "Content-Type {ctype:?}, documented {:?}",
                        content.keys().collect::<Vec<_>>()
                    ));
                }
                let schema = format!("{pointer}/content/{}/schema", esc(ctype));
                let body: Value = if ctype == "application/json" {
                    serde_json::from_str(&a.body).map_err(|e| format!("not JSON ({e})"))?
                } else {
                    Value::String(a.body.clone())
                };
                self.validate(&schema, &body)
            }
        }
    }

    /// Checks a request body that the server accepted against the operation's request schema.
    pub fn check_request(&self, path: &str, method: &str, body: &str) -> Result<(), String> {
        let op = format!("/paths/{}/{}/requestBody", esc(path), method.to_lowercase());
        if self.doc.pointer(&op).is_none() {
            return Err("a body was accepted where none is documented".into());
        }
        let (pointer, _) = self.deref(op);
        let body: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
        self.validate(
            &format!("{pointer}/content/application~1json/schema"),
            &body,
        )
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends raw bytes on the socket; parses the one answer.
pub fn exchange(sock: &Path, request: &[u8]) -> Answer {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (413, 431) before reading everything.
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    // A server that answers before reading the whole request closes with unread bytes: the
    // answer arrives, then a reset.
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {}
        Err(e) => panic!(
            "{}: {e}",
            String::from_utf8_lossy(&request[..request.len().min(200)])
        ),
    }
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let content_type = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-type")
            .then(|| v.trim().to_string())
    });
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// Talks to VMs and checks every answer against the spec, recording what was exercised.
pub struct Checker {
    /// The document.
    pub spec: Spec,
    /// Every (path, METHOD, status) answered so far.
    pub seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Checker {
    /// A checker of answers against `docs/api/openapi.yaml`.
    pub fn new() -> Checker {
        Checker {
            spec: Spec::load(),
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// `method target` with `body` to the VM at `sock`: the answer, checked against the spec.
    pub fn call(&self, sock: &Path, method: &str, target: &str, body: Option<&str>) -> Answer {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = exchange(sock, req.as_bytes());
        let path = target.split('?').next().unwrap();
        let what = format!("{method} {target} -> {} {}", a.status, a.body);
        self.spec
            .check_answer(path, method, &a)
            .unwrap_or_else(|e| panic!("{what}: does not match docs/api/openapi.yaml: {e}"));
        if (200..300).contains(&a.status) && !body.is_empty() {
            self.spec
                .check_request(path, method, body)
                .unwrap_or_else(|e| {
                    panic!("{what}: the request body {body} is not documented: {e}")
                });
        }
        self.seen
            .lock()
            .unwrap()
            .insert((path.to_string(), method.to_string(), a.status));
        a
    }

    /// [`Checker::call`] expecting `status`.
    pub fn expect(
        &self,
        sock: &Path,
        method: &str,
        target: &str,
        body: Option<&str>,
        status: u16,
    ) -> Answer {
        let a = self.call(sock, method, target, body);
        assert_eq!(a.status, status, "{method} {target}: {}", a.body);
        a
    }

    /// Errors the server finds before any route (unknown path, wrong method, framing): an
    /// `Error` body with the documented Content-Type.
    pub fn check_server_error(&self, what: &str, a: &Answer, status: u16) {
        assert_eq!(a.status, status, "{what}: {}", a.body);
        assert_eq!(
            a.content_type.as_deref(),
            Some("application/json"),
            "{what}"
        );
        self.spec
            .validate(
                "/components/responses/Error/content/application~1json/schema",
                &a.json(),
            )
            .unwrap_or_else(|e| panic!("{what}: {} does not match Error: {e}", a.body));
    }
}
