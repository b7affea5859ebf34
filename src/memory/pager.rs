//! Userfaultfd-backed regions: who serves their pages (memvisor's own handler thread, or an
//! external handler that received the descriptor) and what it served.
//!
//! Regions with `handler=external` naming the same socket (the same socket file, however the
//! path is spelled) are handed over together, as Firecracker does with all of a VM's memory:
//! one connection, one userfaultfd registered for all of them, one message listing every
//! region with its offset in the handler's memory file. Offsets are cumulative in region
//! order over the regions of that socket only, so the file holds those regions back to back;
//! a region on another socket starts another file at offset 0. A region crossing the MMIO
//! hole is one host mapping and so one entry, however many memslots it has.
//!
//! Connections are made before anything is mapped ([`connect_external`]), so a socket nobody
//! listens on stops memvisor before it maps guest memory; the hand-over itself
//! ([`start`]) returns once each handler has read its message.

use super::mapping::HostMapping;
use super::MemoryError;
use crate::config::{Backend, RegionConfig};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uffd::{
    ExternalHandler, HandlerConfig, HandlerConnection, PageSource, RegionSpec, UffdHandler,
    UffdStats,
};

/// How long an external handler may take to read its message before memvisor gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The page server of one uffd region.
#[derive(Debug)]
pub enum Pager {
    /// memvisor's handler thread.
    Internal(UffdHandler),
    /// An external process holds the descriptor.
    External(ExternalPager),
}

/// One region's share of an external handler connection.
#[derive(Debug)]
pub struct ExternalPager {
    handler: Arc<ExternalHandler>,
    /// Position of this region in the handler's message.
    slot: usize,
    /// Configuration indices of every region on the connection, in message order.
    regions: Arc<[usize]>,
}

impl ExternalPager {
    /// The connection, shared by every region on the socket.
    pub fn handler(&self) -> &ExternalHandler {
        &self.handler
    }

    /// This region's offset in the handler's memory file.
    pub fn offset(&self) -> u64 {
        self.handler.regions()[self.slot].source_offset
    }

    /// Every region on the connection (configuration indices, in message order).
    pub fn regions(&self) -> &[usize] {
        &self.regions
    }
}

/// What the report shows of a pager.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "handler", rename_all = "snake_case")]
pub enum PagerReport {
    /// Internal handler counters.
    Internal(UffdStats),
    /// External handler: it took the descriptor (the hand-over waits for that); `alive` says
    /// whether it still holds its connection.
    External {
        /// The peer still holds its end of the socket.
        alive: bool,
        /// The handler's socket.
        socket: PathBuf,
        /// This region's offset in the handler's memory file.
        offset: u64,
        /// Every region handed over on the same connection (configuration indices).
        regions: Vec<usize>,
    },
}

/// Regions handed to one external handler: one connection, one message.
#[derive(Debug)]
pub(super) struct HandlerGroup {
    /// Configuration indices, in order.
    regions: Vec<usize>,
    conn: HandlerConnection,
}

/// Connects to every external handler socket named by `configs`, once per socket file.
pub(super) fn connect_external(configs: &[RegionConfig]) -> Result<Vec<HandlerGroup>, MemoryError> {
    // (socket identity, first spelling, regions)
    let mut groups: Vec<((u64, u64), PathBuf, Vec<usize>)> = Vec::new();
    for (index, c) in configs.iter().enumerate() {
        let Backend::Uffd {
            external_socket: Some(sock),
            ..
        } = &c.backend
        else {
            continue;
        };
        let id = std::fs::metadata(sock)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| MemoryError::Check {
                region: index,
                option: "socket".into(),
                reason: format!(
                    "{}: {e}; start the page-fault handler first",
                    sock.display()
                ),
            })?;
        match groups.iter_mut().find(|g| g.0 == id) {
            Some(g) => g.2.push(index),
            None => groups.push((id, sock.clone(), vec![index])),
        }
    }
    groups
        .into_iter()
        .map(
            |(_, path, regions)| match HandlerConnection::connect(&path) {
                Ok(conn) => Ok(HandlerGroup { regions, conn }),
                Err(source) => Err(MemoryError::Uffd { regions, source }),
            },
        )
        .collect()
}

/// Starts page serving of every uffd region of `maps` (mapped from `configs`): the internal
/// handler per region, one hand-over per group. Returns each region's pager.
pub(super) fn start(
    configs: &[RegionConfig],
    maps: &[HostMapping],
    groups: Vec<HandlerGroup>,
    thread_start: Option<&uffd::ThreadStart>,
) -> Result<Vec<Option<Pager>>, MemoryError> {
    let spec = |i: usize, source_offset: u64| RegionSpec {
        host_addr: maps[i].addr() as usize,
        len: maps[i].len(),
        page_size: maps[i].page_size() as usize,
        source_offset,
    };
    let mut pagers: Vec<Option<Pager>> = Vec::with_capacity(configs.len());
    for (index, c) in configs.iter().enumerate() {
        let pager = match &c.backend {
            Backend::Uffd {
                source,
                fetch,
                external_socket: None,
            } => {
                let config = HandlerConfig {
                    source: match source {
                        Some(p) => PageSource::File { path: p.clone() },
                        None => PageSource::Zero,
                    },
                    fetch_unit: *fetch as usize,
                };
                let handler = uffd::start_with(vec![spec(index, 0)], config, thread_start.cloned())
                    .map_err(|source| MemoryError::Uffd {
                        regions: vec![index],
                        source,
                    })?;
                Some(Pager::Internal(handler))
            }
            _ => None,
        };
        pagers.push(pager);
    }
    for group in groups {
        let mut offset = 0;
        let specs: Vec<RegionSpec> = group
            .regions
            .iter()
            .map(|&i| {
                let s = spec(i, offset);
                offset += s.len as u64;
                s
            })
            .collect();
        let handler = group
            .conn
            .hand_over(specs, HANDSHAKE_TIMEOUT)
            .map_err(|source| MemoryError::Uffd {
                regions: group.regions.clone(),
                source,
            })?;
        let handler = Arc::new(handler);
        let regions: Arc<[usize]> = group.regions.into();
        for (slot, &i) in regions.iter().enumerate() {
            pagers[i] = Some(Pager::External(ExternalPager {
                handler: handler.clone(),
                slot,
                regions: regions.clone(),
            }));
        }
    }
    Ok(pagers)
}

impl Pager {
    /// Snapshot for reports.
    pub fn report(&self) -> PagerReport {
        match self {
            Pager::Internal(h) => PagerReport::Internal(h.stats()),
            Pager::External(p) => PagerReport::External {
                alive: p.handler.peer_alive(),
                socket: p.handler.socket().to_path_buf(),
                offset: p.offset(),
                regions: p.regions.to_vec(),
            },
        }
    }

    /// Wakes vCPU threads blocked on faults a dead pager will never serve, by unregistering the
    /// region (missing pages then become zero pages): only for a guest being stopped. For an
    /// external handler that is every region of its connection (they died together).
    pub fn release_faulters(&self) {
        match self {
            Pager::Internal(h) => h.release_faulters(),
            Pager::External(p) => p.handler.release_faulters(),
        }
    }

    /// Whether pages can still be served (an external handler that died cannot).
    pub fn healthy(&self) -> bool {
        match self {
            Pager::Internal(h) => h.is_running(),
            Pager::External(p) => p.handler.peer_alive(),
        }
    }
}
