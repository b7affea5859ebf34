//! Userfaultfd-backed regions: who serves their pages (memvisor's own handler thread, or an
//! external handler that received the descriptor) and what it served.

use super::MemoryError;
use crate::config::{Backend, RegionConfig};
use serde::Serialize;
use std::time::Duration;
use uffd::{ExternalHandler, HandlerConfig, PageSource, RegionSpec, UffdHandler, UffdStats};

/// How long an external handler may take to read its message before memvisor gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The page server of one uffd region.
#[derive(Debug)]
pub enum Pager {
    /// memvisor's handler thread.
    Internal(UffdHandler),
    /// An external process holds the descriptor.
    External(ExternalHandler),
}

/// What the report shows of a pager.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "handler", rename_all = "snake_case")]
pub enum PagerReport {
    /// Internal handler counters.
    Internal(UffdStats),
    /// External handler: whether it is still connected.
    External {
        /// The peer still holds its end of the socket.
        alive: bool,
    },
}

impl Pager {
    /// Registers `[host_addr, host_addr+len)` of region `index` and starts serving it.
    pub fn start(
        index: usize,
        c: &RegionConfig,
        host_addr: usize,
        len: usize,
        page_size: u64,
        thread_start: Option<&uffd::ThreadStart>,
    ) -> Result<Pager, MemoryError> {
        let Backend::Uffd {
            source,
            fetch,
            external_socket,
        } = &c.backend
        else {
            unreachable!("pager only for uffd regions");
        };
        let spec = RegionSpec {
            host_addr,
            len,
            page_size: page_size as usize,
            source_offset: 0,
        };
        let err = |e: uffd::UffdError| MemoryError::Check {
            region: index,
            option: "backend".into(),
            reason: format!("userfaultfd: {e}"),
        };
        if let Some(sock) = external_socket {
            return uffd::hand_over(vec![spec], sock, HANDSHAKE_TIMEOUT)
                .map(Pager::External)
                .map_err(err);
        }
        let config = HandlerConfig {
            source: match source {
                Some(p) => PageSource::File { path: p.clone() },
                None => PageSource::Zero,
            },
            fetch_unit: *fetch as usize,
        };
        uffd::start_with(vec![spec], config, thread_start.cloned())
            .map(Pager::Internal)
            .map_err(err)
    }

    /// Snapshot for reports.
    pub fn report(&self) -> PagerReport {
        match self {
            Pager::Internal(h) => PagerReport::Internal(h.stats()),
            Pager::External(h) => PagerReport::External {
                alive: h.peer_alive(),
            },
        }
    }

    /// Wakes vCPU threads blocked on faults a dead pager will never serve, by unregistering the
    /// region (missing pages then become zero pages): only for a guest being stopped.
    pub fn release_faulters(&self) {
        match self {
            Pager::Internal(h) => h.release_faulters(),
            Pager::External(h) => h.release_faulters(),
        }
    }

    /// Whether pages can still be served (an external handler that died cannot).
    pub fn healthy(&self) -> bool {
        match self {
            Pager::Internal(h) => h.is_running(),
            Pager::External(h) => h.peer_alive(),
        }
    }
}
