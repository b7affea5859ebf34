//! The `uffd-handler` thread: polls the userfaultfd and a stop eventfd, serves missing-page
//! faults block by block, and records discarded ranges.
//!
//! Per region a bitmap marks pages whose source bytes must not be used again: pages already
//! served (or found present) and pages covered by a `UFFD_EVENT_REMOVE`. A page can only go
//! missing again after being zapped (balloon `MADV_DONTNEED`, `MADV_REMOVE`, hole punch), and
//! then the guest must see zeros, not the image, so marked pages are always served as zeros.

use crate::ioctl::{self, Install};
use crate::stats::SharedStats;
use crate::{HandlerConfig, PageSource, RegionSpec, UffdError};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use userfaultfd::{Event, EventBuffer, IoctlFlags, Uffd};

/// Events read per `read(2)` of the userfaultfd.
const EVENT_BATCH: usize = 64;
/// Immediate retries of faults refused because the address space is changing.
const QUICK_RETRIES: u32 = 64;
/// Poll timeout (ms) after those, while faults wait for the address space to stop changing.
const RETRY_MS: u8 = 1;
/// Blocks a fill ([`crate::UffdHandler::fill_all`]) serves between two looks at new faults.
const FILL_BATCH: usize = 4;
/// The block a fill serves at once (at least the region's fetch unit): a power of two.
const FILL_UNIT: usize = 1 << 20;

struct Source {
    file: File,
    path: PathBuf,
    len: u64,
}

struct ServedRegion {
    spec: RegionSpec,
    /// Effective fetch unit: the configured one, at least one page.
    unit: usize,
    /// Whether UFFDIO_ZEROPAGE works here (not on hugetlbfs).
    zeropage: bool,
    /// One bit per page: the source bytes must not be used (already served, or removed).
    stale: Vec<u64>,
}

impl ServedRegion {
    fn is_stale(&self, page: usize) -> bool {
        self.stale[page / 64] & (1 << (page % 64)) != 0
    }

    /// Marks the pages overlapping region offsets `start..end`; returns the bytes of those
    /// that had source bytes not used yet (unmarked, and inside a source of `src_len` bytes).
    fn mark(&mut self, start: usize, end: usize, src_len: u64) -> u64 {
        let page_size = self.spec.page_size;
        let mut fresh = 0;
        for page in start / page_size..end.div_ceil(page_size) {
            let bit = 1 << (page % 64);
            if self.stale[page / 64] & bit == 0
                && self.spec.source_offset + ((page * page_size) as u64) < src_len
            {
                fresh += 1;
            }
            self.stale[page / 64] |= bit;
        }
        fresh * page_size as u64
    }

    fn contains(&self, addr: usize) -> bool {
        addr >= self.spec.host_addr && addr - self.spec.host_addr < self.spec.len
    }
}

/// A fault waiting to be served, with the time its event was read.
#[derive(Clone, Copy)]
struct Pending {
    addr: usize,
    since: Instant,
}

/// What happened to one fault.
enum Served {
    /// Served, or nothing left to serve (range gone).
    Done,
    /// The address space is changing (an event is pending); retry after reading events.
    Again,
}

/// State of the handler thread.
pub(crate) struct Server {
    uffd: Arc<Uffd>,
    stop: Arc<EventFd>,
    /// Asks for a fill: every page with unused source bytes is served.
    fill: Arc<EventFd>,
    /// Told when a fill is complete.
    filled: std::sync::mpsc::Sender<()>,
    stats: Arc<SharedStats>,
    regions: Vec<ServedRegion>,
    source: Option<Source>,
    /// Source bytes of the block being served.
    src_buf: Vec<u8>,
    /// Zeros for UFFDIO_COPY where UFFDIO_ZEROPAGE is unavailable.
    zero_buf: Vec<u8>,
}

impl Server {
    /// Opens the source and prepares per-region state and buffers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        uffd: Arc<Uffd>,
        stop: Arc<EventFd>,
        fill: Arc<EventFd>,
        filled: std::sync::mpsc::Sender<()>,
        stats: Arc<SharedStats>,
        regions: &[RegionSpec],
        ioctls: &[IoctlFlags],
        config: &HandlerConfig,
    ) -> Result<Server, UffdError> {
        let source = match &config.source {
            PageSource::Zero => None,
            PageSource::File { path } | PageSource::Swap { path, .. } => {
                let open_err = |source| UffdError::OpenSource {
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(open_err)?;
                let len = file.metadata().map_err(open_err)?.len();
                Some(Source {
                    file,
                    path: path.clone(),
                    len,
                })
            }
        };
        let mut regions: Vec<ServedRegion> = regions
            .iter()
            .zip(ioctls)
            .map(|(spec, flags)| ServedRegion {
                spec: spec.clone(),
                unit: config.fetch_unit.max(spec.page_size),
                zeropage: flags.contains(IoctlFlags::ZEROPAGE),
                stale: vec![0; (spec.len / spec.page_size).div_ceil(64)],
            })
            .collect();
        if let PageSource::Swap { in_file, .. } = &config.source {
            // A page that is not in the swap file never reads from it: stale from the start.
            for (index, r) in regions.iter_mut().enumerate() {
                let bits = in_file.get(index).ok_or_else(|| UffdError::InvalidRegion {
                    index,
                    reason: "the swap source has no in-file bitmap for it".into(),
                })?;
                for (word, stale) in r.stale.iter_mut().enumerate() {
                    *stale = !bits.get(word).copied().unwrap_or(0);
                }
            }
        }
        let source_bytes: u64 = match &source {
            None => 0,
            Some(src) => regions
                .iter()
                .map(|r| {
                    let pages = r.spec.len / r.spec.page_size;
                    (0..pages)
                        .filter(|&p| {
                            !r.is_stale(p)
                                && r.spec.source_offset + ((p * r.spec.page_size) as u64) < src.len
                        })
                        .count() as u64
                        * r.spec.page_size as u64
                })
                .sum(),
        };
        stats.set_source_bytes_left(source_bytes);
        let max_unit = regions.iter().map(|r| r.unit).max().unwrap_or(0);
        let src_buf = if source.is_some() {
            vec![0; max_unit.max(FILL_UNIT)]
        } else {
            Vec::new()
        };
        let zero_buf = if regions.iter().all(|r| r.zeropage) {
            Vec::new()
        } else {
            vec![0; max_unit]
        };
        Ok(Server {
            uffd,
            stop,
            fill,
            filled,
            stats,
            regions,
            source,
            src_buf,
            zero_buf,
        })
    }

    /// Thread body: serves until told to stop or a fatal error.
    pub(crate) fn run(mut self) -> Result<(), UffdError> {
        let result = self.serve_until_stopped();
        if let Err(e) = &result {
            log::error!("uffd: the handler thread stopped: {e}");
        }
        result
    }

    fn serve_until_stopped(&mut self) -> Result<(), UffdError> {
        let mut events = EventBuffer::new(EVENT_BATCH);
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut prefetch: VecDeque<usize> = VecDeque::new();
        let mut filling = false;
        let mut retries = 0u32;
        loop {
            // Faults refused with EAGAIN wait for the pending remove event to be read and for
            // the discarding thread to finish: retry at once a few times (yielding the CPU to
            // that thread), then back off for a millisecond. A fill in progress polls without
            // waiting between its batches.
            let timeout = if pending.is_empty() && !prefetch.is_empty() {
                retries = 0;
                PollTimeout::ZERO
            } else if pending.is_empty() {
                retries = 0;
                PollTimeout::NONE
            } else {
                retries = (retries + 1) % (QUICK_RETRIES + 1);
                if retries == 0 {
                    PollTimeout::from(RETRY_MS)
                } else {
                    std::thread::yield_now();
                    PollTimeout::ZERO
                }
            };
            let (stop_ready, uffd_ready, fill_ready) = {
                let mut fds = [
                    PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.uffd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.fill.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(errno) => {
                        return Err(UffdError::Sys {
                            what: "poll",
                            errno,
                        })
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]))
            };
            if stop_ready {
                return Ok(());
            }
            if uffd_ready {
                self.read_events(&mut events, &mut pending)?;
            }
            if fill_ready {
                // Drain the eventfd's counter; several requests are one fill.
                let _ = self.fill.read();
                filling = true;
                prefetch.extend(self.blocks_from_source());
            }
            for _ in 0..pending.len() {
                let Some(fault) = pending.pop_front() else {
                    break;
                };
                match self.serve(fault.addr, false)? {
                    Served::Done => self.stats.add_latency(fault.since.elapsed()),
                    Served::Again => pending.push_back(fault),
                }
            }
            // A fill goes on in batches between looks at new faults, which come first.
            for _ in 0..FILL_BATCH.min(prefetch.len()) {
                let Some(addr) = prefetch.pop_front() else {
                    break;
                };
                if let Served::Again = self.serve(addr, true)? {
                    prefetch.push_back(addr);
                    break;
                }
            }
            if filling && prefetch.is_empty() {
                filling = false;
                let _ = self.filled.send(());
            }
        }
    }

    /// The start address of every fetch block holding a page whose source bytes were not
    /// used yet, in address order.
    fn blocks_from_source(&self) -> Vec<usize> {
        let mut blocks = Vec::new();
        if self.source.is_none() {
            return blocks;
        }
        for (index, r) in self.regions.iter().enumerate() {
            let mut block = 0;
            while block < r.spec.len {
                let end = (block + r.unit.max(FILL_UNIT)).min(r.spec.len);
                if (block..end)
                    .step_by(r.spec.page_size)
                    .any(|off| self.comes_from_source(index, off))
                {
                    blocks.push(r.spec.host_addr + block);
                }
                block = end;
            }
        }
        blocks
    }

    /// Drains the userfaultfd: records removals at once (before serving any fault read in the
    /// same pass, so no fault is served from the source after its range was discarded) and
    /// queues faults.
    fn read_events(
        &mut self,
        events: &mut EventBuffer,
        pending: &mut VecDeque<Pending>,
    ) -> Result<(), UffdError> {
        loop {
            let now = Instant::now();
            let mut read = 0;
            let mut removes = Vec::new();
            for event in self
                .uffd
                .read_events(events)
                .map_err(|source| UffdError::ReadEvent { source })?
            {
                read += 1;
                match event {
                    Ok(Event::Pagefault { addr, .. }) => {
                        self.stats.add_fault();
                        pending.push_back(Pending {
                            addr: addr as usize,
                            since: now,
                        });
                    }
                    Ok(Event::Remove { start, end }) => {
                        removes.push((start as usize, end as usize))
                    }
                    Ok(other) => log::debug!("uffd: ignoring event {other:?}"),
                    Err(e) => log::warn!("uffd: skipping an unreadable event: {e}"),
                }
            }
            for (start, end) in removes {
                self.record_remove(start, end);
            }
            if read < EVENT_BATCH {
                return Ok(());
            }
        }
    }

    fn record_remove(&mut self, start: usize, end: usize) {
        let mut bytes = 0;
        let src_len = self.source.as_ref().map_or(0, |s| s.len);
        for r in &mut self.regions {
            let base = r.spec.host_addr;
            let lo = start.max(base);
            let hi = end.min(base + r.spec.len);
            if lo < hi {
                let fresh = r.mark(lo - base, hi - base, src_len);
                self.stats.sub_source_bytes_left(fresh);
                bytes += (hi - lo) as u64;
            }
        }
        log::trace!("uffd: removed [{start:#x}, {end:#x})");
        self.stats.add_remove(bytes);
    }

    /// Serves the fetch block containing `addr`, then wakes the threads waiting on it. With
    /// `only_source` (a fill, not a fault), pages without unused source bytes are left alone.
    fn serve(&mut self, addr: usize, only_source: bool) -> Result<Served, UffdError> {
        let fd = self.uffd.as_raw_fd();
        let Some(index) = self.regions.iter().position(|r| r.contains(addr)) else {
            log::warn!("uffd: fault at {addr:#x} outside every registered region");
            return Ok(Served::Done);
        };
        let region = &self.regions[index];
        let (base, page) = (region.spec.host_addr, region.spec.page_size);
        // A fill reads larger blocks than a fault: fewer system calls per byte.
        let unit = if only_source {
            region.unit.max(FILL_UNIT)
        } else {
            region.unit
        };
        let block = (addr - base) & !(unit - 1);
        let block_end = (block + unit).min(region.spec.len);
        let from_source: Vec<bool> = (block..block_end)
            .step_by(page)
            .map(|off| self.comes_from_source(index, off))
            .collect();
        if let Some(first) = from_source.iter().position(|&s| s) {
            let last = from_source.iter().rposition(|&s| s).unwrap_or(first);
            self.read_source(
                index,
                block,
                block + first * page,
                block + (last + 1) * page,
            )?;
        }
        let mut i = 0;
        while i < from_source.len() {
            let kind = from_source[i];
            let run = from_source[i..].iter().take_while(|&&s| s == kind).count();
            let (start, len) = (block + i * page, run * page);
            if only_source && !kind {
                i += run;
                continue;
            }
            match self.install(index, start, len, kind, i * page)? {
                Some(Served::Again) => return Ok(Served::Again),
                Some(Served::Done) => return Ok(Served::Done), // range gone: nothing to wake
                None => {}
            }
            i += run;
        }
        if let Err(errno) = ioctl::wake(fd, base + block, block_end - block) {
            log::warn!("uffd: UFFDIO_WAKE at {:#x}: {errno}", base + block);
        }
        Ok(Served::Done)
    }

    /// Whether the page at region offset `off` is served with source bytes.
    fn comes_from_source(&self, index: usize, off: usize) -> bool {
        let region = &self.regions[index];
        match &self.source {
            None => false,
            Some(src) => {
                !region.is_stale(off / region.spec.page_size)
                    && region.spec.source_offset + (off as u64) < src.len
            }
        }
    }

    /// Reads the source bytes of region offsets `start..end` into the block buffer (whose first
    /// byte is region offset `block`); bytes past the end of the image read as zero.
    fn read_source(
        &mut self,
        index: usize,
        block: usize,
        start: usize,
        end: usize,
    ) -> Result<(), UffdError> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        let offset = self.regions[index].spec.source_offset + start as u64;
        let buf = &mut self.src_buf[start - block..end - block];
        let mut filled = 0;
        while filled < buf.len() {
            match src.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(UffdError::ReadSource {
                        path: src.path.clone(),
                        offset,
                        len: buf.len(),
                        source,
                    })
                }
            }
        }
        buf[filled..].fill(0);
        Ok(())
    }

    /// Installs region offsets `start..start+len`, either zeros or the block buffer from
    /// `buf_off`. Pages already present are skipped. Returns `Some` if the fault must stop
    /// here (retry later, or the range is gone).
    fn install(
        &mut self,
        index: usize,
        start: usize,
        len: usize,
        from_source: bool,
        buf_off: usize,
    ) -> Result<Option<Served>, UffdError> {
        let fd = self.uffd.as_raw_fd();
        let src_len = self.source.as_ref().map_or(0, |s| s.len);
        let region = &mut self.regions[index];
        let (base, page) = (region.spec.host_addr, region.spec.page_size);
        let use_zeropage = !from_source && region.zeropage;
        let mut done = 0;
        while done < len {
            let dst = base + start + done;
            let rest = len - done;
            let result = if use_zeropage {
                // SAFETY: fd is our userfaultfd and dst..dst+rest lies in a registered region.
                unsafe { ioctl::zeropage(fd, dst, rest) }
            } else {
                let src = if from_source {
                    // In bounds: the block buffer holds the whole block, `buf_off + done` is
                    // the position of `dst` in it.
                    self.src_buf[buf_off + done..].as_ptr()
                } else {
                    self.zero_buf.as_ptr()
                };
                // SAFETY: src is readable for `rest` bytes (both buffers hold a whole block),
                // fd is our userfaultfd and dst..dst+rest lies in a registered region.
                unsafe { ioctl::copy(fd, dst, src, rest) }
            };
            let installed = match result {
                Install::Done => rest,
                Install::Partial(n) => n,
                Install::Failed(Errno::EEXIST) => {
                    let fresh = region.mark(start + done, start + done + page, src_len);
                    self.stats.sub_source_bytes_left(fresh);
                    done += page;
                    continue;
                }
                Install::Failed(Errno::EAGAIN) => return Ok(Some(Served::Again)),
                Install::Failed(Errno::ENOENT | Errno::ESRCH) => {
                    log::debug!("uffd: range at {dst:#x} is gone; dropping the fault");
                    return Ok(Some(Served::Done));
                }
                Install::Failed(errno) => {
                    return Err(UffdError::Serve {
                        op: if use_zeropage {
                            "UFFDIO_ZEROPAGE"
                        } else {
                            "UFFDIO_COPY"
                        },
                        addr: dst,
                        len: rest,
                        errno,
                    })
                }
            };
            let fresh = region.mark(start + done, start + done + installed, src_len);
            self.stats.sub_source_bytes_left(fresh);
            self.stats
                .add_served((installed / page) as u64, installed as u64, !from_source);
            done += installed;
        }
        Ok(None)
    }
}
