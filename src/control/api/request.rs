//! Typed API requests and the pure mapping from (method, path and query, body) onto them.
//!
//! [`parse_request`] does no I/O, so routing, body decoding and query parsing are unit-tested
//! here; every failure comes back as the [`ApiResponse`] to send (400, 404 or 405) with a
//! `fault_message` that says what was wrong and what shape was expected.

use super::ApiResponse;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One request the VMM is asked to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /vm`: the VM's state.
    GetVm,
    /// `PUT /vm` (or `PATCH /vm`, as Firecracker) `{"state": "Paused"|"Resumed"}`.
    PutVmState(VmState),
    /// `PUT /actions` `{"action_type": "SendCtrlAltDel"|"Shutdown"}`.
    PutAction(ActionType),
    /// `PUT /balloon` `{"amount_mib", "deflate_on_oom", "stats_polling_interval_s"}`.
    PutBalloon(BalloonConfig),
    /// `PATCH /balloon` `{"amount_mib"}`: a new balloon target.
    PatchBalloon {
        /// Target balloon size in MiB.
        amount_mib: u32,
    },
    /// `GET /balloon`: the balloon configuration.
    GetBalloon,
    /// `GET /balloon/statistics`: balloon size and the guest's latest statistics (Firecracker's
    /// `BalloonStats`).
    GetBalloonStats,
    /// `GET /balloon/device`: memvisor's extras about the balloon device (activation,
    /// negotiated features, bytes returned to the host, when statistics last arrived, counters).
    GetBalloonDevice,
    /// `PATCH /balloon/statistics` `{"stats_polling_interval_s"}`.
    PatchBalloonStats {
        /// Seconds between statistics refreshes.
        stats_polling_interval_s: u16,
    },
    /// `GET /memory/mappings?gpa=..&len=..`: host mappings of guest memory, optionally only
    /// those overlapping `[gpa, gpa + len)`.
    GetMemoryMappings {
        /// First guest physical address of interest.
        gpa: Option<u64>,
        /// Length in bytes of the range of interest.
        len: Option<u64>,
    },
    /// `GET /memory/report`: guest memory residency and overcommit report.
    GetMemoryReport,
    /// `GET /metrics`: metrics in the Prometheus text format.
    GetMetrics,
    /// `PUT /memory/reclaim` `{"target_resident_mib"}`: page guest memory out to host swap
    /// until at most that much is resident.
    PutMemoryReclaim {
        /// Resident guest RAM to reach, in MiB.
        target_resident_mib: u64,
    },
    /// `GET /memory/working-set`: the working-set estimate per region (starts tracking).
    GetWorkingSet,
    /// `GET /memory/reclaim`: the standing limit, reclaims done, bytes paged out, major faults.
    GetMemoryReclaim,
    /// `PATCH /memory` `{"resident_limit_mib"}`: the standing limit on resident guest RAM
    /// (0 removes it).
    PatchMemory {
        /// The limit in MiB; 0: none.
        resident_limit_mib: u64,
    },
    /// `PUT /memory/swap-out {"file", "cold_only"}`: the in-VMM swap writes guest memory to
    /// a new file and drops it from host RAM.
    PutSwapOut(SwapOutBody),
    /// `PUT /memory/swap-in`: the in-VMM swap brings everything back.
    PutSwapIn,
}

/// The body of `PUT /memory/swap-out`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapOutBody {
    /// The swap file to create (an absolute path; it must not exist).
    pub file: std::path::PathBuf,
    /// Only memory outside the working set (no page written in the last window of the
    /// working-set estimate); refused until the first window has ended.
    #[serde(default)]
    pub cold_only: bool,
}

impl ApiRequest {
    /// Whether the request only reads (every `GET`): its answer is all it does, so it need not
    /// be computed for a client that has already gone.
    pub fn is_read_only(&self) -> bool {
        match self {
            ApiRequest::GetVm
            | ApiRequest::GetBalloon
            | ApiRequest::GetBalloonStats
            | ApiRequest::GetBalloonDevice
            | ApiRequest::GetMemoryMappings { .. }
            | ApiRequest::GetMemoryReport
            | ApiRequest::GetMemoryReclaim
            | ApiRequest::GetMetrics => true,
            // It starts tracking, which the client asked for even if it has gone.
            ApiRequest::GetWorkingSet => false,
            ApiRequest::PutVmState(_)
            | ApiRequest::PutAction(_)
            | ApiRequest::PutBalloon(_)
            | ApiRequest::PatchBalloon { .. }
            | ApiRequest::PatchBalloonStats { .. }
            | ApiRequest::PutMemoryReclaim { .. }
            | ApiRequest::PatchMemory { .. }
            | ApiRequest::PutSwapOut(_)
            | ApiRequest::PutSwapIn => false,
        }
    }
}

/// The state a VM is asked to move to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop running the vCPUs.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// A one-off action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Ask the guest to reboot, as the Ctrl+Alt+Del key combination does.
    SendCtrlAltDel,
    /// Stop the VM.
    Shutdown,
    /// Built-in guest: end the current (or next) balloon step at its next check, as if its
    /// `seconds` had run out; the guest verifies its whole data set and goes on with the rest of
    /// its workload.
    FinishBalloonStep,
}

/// The balloon device configuration, field for field Firecracker's `Balloon`: the body of
/// `PUT /balloon` and the answer to `GET /balloon` (which always carries every field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// Whether the guest may deflate the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0 disables statistics.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Offer free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`); memvisor never does.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Offer free page reporting (`VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`).
    #[serde(default)]
    pub free_page_reporting: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonUpdate {
    amount_mib: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonStatsUpdate {
    stats_polling_interval_s: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReclaimBody {
    target_resident_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryUpdate {
    resident_limit_mib: u64,
}

const RECLAIM_SHAPE: &str = r#"{"target_resident_mib": <u64, at most the guest's RAM in MiB>}"#;
const MEMORY_UPDATE_SHAPE: &str = r#"{"resident_limit_mib": <u64, 0 removes the limit>}"#;
const VM_SHAPE: &str = r#"{"state": "Paused" | "Resumed"}"#;
const ACTION_SHAPE: &str =
    r#"{"action_type": "SendCtrlAltDel" | "Shutdown" | "FinishBalloonStep"}"#;
const BALLOON_SHAPE: &str = r#"{"amount_mib": <u32>, "deflate_on_oom": <bool>, "stats_polling_interval_s": <u16, optional, default 0>, "free_page_hinting": <bool, optional>, "free_page_reporting": <bool, optional>}"#;
const BALLOON_UPDATE_SHAPE: &str = r#"{"amount_mib": <u32>}"#;
const STATS_UPDATE_SHAPE: &str = r#"{"stats_polling_interval_s": <u16>}"#;
const SWAP_OUT_SHAPE: &str =
    r#"{"file": "<absolute path of a new file>", "cold_only": <bool, optional>}"#;

/// Every endpoint with the methods it accepts.
pub const ENDPOINTS: &[(&str, &[&str])] = &[
    ("/vm", &["GET", "PUT", "PATCH"]),
    ("/actions", &["PUT"]),
    ("/balloon", &["GET", "PUT", "PATCH"]),
    ("/balloon/statistics", &["GET", "PATCH"]),
    ("/balloon/device", &["GET"]),
    ("/memory", &["PATCH"]),
    ("/memory/mappings", &["GET"]),
    ("/memory/reclaim", &["GET", "PUT"]),
    ("/memory/working-set", &["GET"]),
    ("/memory/swap-out", &["PUT"]),
    ("/memory/swap-in", &["PUT"]),
    ("/memory/report", &["GET"]),
    ("/metrics", &["GET"]),
];

/// The methods `path` (without query) accepts, or `None` if there is no such endpoint.
pub fn allowed_methods(path: &str) -> Option<&'static [&'static str]> {
    endpoint_methods(normalize(split_query(path).0))
}

/// The methods of the endpoint at exactly `path` (already normalized: normalizing twice would
/// take `/vm//` for `/vm` here but not when routing).
fn endpoint_methods(path: &str) -> Option<&'static [&'static str]> {
    ENDPOINTS.iter().find(|(p, _)| *p == path).map(|(_, m)| *m)
}

/// Maps one HTTP request onto an [`ApiRequest`].
///
/// `path_and_query` is the request target (`/memory/mappings?gpa=0x1000&len=4096`); a query on
/// other endpoints is ignored. On failure the error is the response to send: 404 for an unknown
/// path, 405 for a method the path does not accept, 400 for a missing or malformed body or query.
pub fn parse_request(
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<ApiRequest, ApiResponse> {
    let (raw_path, query) = split_query(path_and_query);
    let path = normalize(raw_path);
    let Some(allowed) = endpoint_methods(path) else {
        let known: Vec<&str> = ENDPOINTS.iter().map(|(p, _)| *p).collect();
        return Err(ApiResponse::error(
            404,
            format!(
                "no API endpoint {raw_path}; the endpoints are {}",
                known.join(", ")
            ),
        ));
    };
    let req = match (method, path) {
        ("GET", "/vm") => ApiRequest::GetVm,
        ("PUT" | "PATCH", "/vm") => {
            ApiRequest::PutVmState(json_body::<VmStateBody>(method, path, body, VM_SHAPE)?.state)
        }
        ("PUT", "/actions") => {
            let b: ActionBody = json_body(method, path, body, ACTION_SHAPE)?;
            ApiRequest::PutAction(b.action_type)
        }
        ("GET", "/balloon") => ApiRequest::GetBalloon,
        ("PUT", "/balloon") => {
            ApiRequest::PutBalloon(json_body(method, path, body, BALLOON_SHAPE)?)
        }
        ("PATCH", "/balloon") => {
            let b: BalloonUpdate = json_body(method, path, body, BALLOON_UPDATE_SHAPE)?;
            ApiRequest::PatchBalloon {
                amount_mib: b.amount_mib,
            }
        }
        ("GET", "/balloon/statistics") => ApiRequest::GetBalloonStats,
        ("PATCH", "/balloon/statistics") => {
            let b: BalloonStatsUpdate = json_body(method, path, body, STATS_UPDATE_SHAPE)?;
            ApiRequest::PatchBalloonStats {
                stats_polling_interval_s: b.stats_polling_interval_s,
            }
        }
        ("GET", "/balloon/device") => ApiRequest::GetBalloonDevice,
        ("GET", "/memory/mappings") => mappings_query(query)?,
        ("GET", "/memory/report") => ApiRequest::GetMemoryReport,
        ("GET", "/metrics") => ApiRequest::GetMetrics,
        ("PUT", "/memory/reclaim") => {
            let b: ReclaimBody = json_body(method, path, body, RECLAIM_SHAPE)?;
            ApiRequest::PutMemoryReclaim {
                target_resident_mib: b.target_resident_mib,
            }
        }
        ("GET", "/memory/reclaim") => ApiRequest::GetMemoryReclaim,
        ("GET", "/memory/working-set") => ApiRequest::GetWorkingSet,
        ("PATCH", "/memory") => {
            let b: MemoryUpdate = json_body(method, path, body, MEMORY_UPDATE_SHAPE)?;
            ApiRequest::PatchMemory {
                resident_limit_mib: b.resident_limit_mib,
            }
        }
        ("PUT", "/memory/swap-out") => {
            let b: SwapOutBody = json_body(method, path, body, SWAP_OUT_SHAPE)?;
            if !b.file.is_absolute() {
                return Err(ApiResponse::bad_request(format!(
                    "PUT /memory/swap-out: file `{}` must be an absolute path (the VMM's working directory is not yours)",
                    b.file.display()
                )));
            }
            ApiRequest::PutSwapOut(b)
        }
        ("PUT", "/memory/swap-in") => {
            // No body, or an empty object.
            if !body.iter().all(u8::is_ascii_whitespace) {
                json_body::<EmptyBody>(method, path, body, "no body, or {}")?;
            }
            ApiRequest::PutSwapIn
        }
        _ => {
            return Err(ApiResponse::error(
                405,
                format!(
                    "method {method} is not allowed on {path}; use {}",
                    allowed.join(", ")
                ),
            ))
        }
    };
    Ok(req)
}

fn split_query(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// `/balloon/` is `/balloon`.
fn normalize(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    }
}

fn json_body<T: DeserializeOwned>(
    method: &str,
    path: &str,
    body: &[u8],
    shape: &str,
) -> Result<T, ApiResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiResponse::bad_request(format!(
            "{method} {path} needs a JSON body: {shape}"
        )));
    }
    // serde would also take a struct from an array (`[5]`); only objects are accepted.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiResponse::bad_request(format!(
            "invalid JSON body for {method} {path}: the body must be a JSON object; expected \
             {shape}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiResponse::bad_request(format!(
            "invalid JSON body for {method} {path}: {e}; expected {shape}"
        ))
    })
}

fn mappings_query(query: Option<&str>) -> Result<ApiRequest, ApiResponse> {
    let bad = |what: String| {
        ApiResponse::bad_request(format!(
            "bad query for GET /memory/mappings: {what}; expected ?gpa=<addr>&len=<bytes>, both \
             optional, in decimal or 0x hex"
        ))
    };
    let (mut gpa, mut len) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(bad(format!("`{pair}` has no value")));
        };
        let slot = match key {
            "gpa" => &mut gpa,
            "len" => &mut len,
            _ => return Err(bad(format!("unknown parameter `{key}`"))),
        };
        if slot.is_some() {
            return Err(bad(format!("`{key}` given twice")));
        }
        let number = parse_u64(value)
            .ok_or_else(|| bad(format!("`{key}={value}` is not a 64-bit unsigned number")))?;
        *slot = Some(number);
    }
    Ok(ApiRequest::GetMemoryMappings { gpa, len })
}

/// Decimal or `0x`-prefixed hex, digits only (no sign, no spaces).
fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
