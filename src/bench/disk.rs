//! `memvisor bench disk`: what the virtio-blk device (the `block` crate over a raw image, as
//! `--disk` uses it) costs per request on the VMM side, beside raw `pread`/`pwrite` of the same
//! offsets and sizes on the same file, in the same run.
//!
//! A driver written here posts requests the way Linux's `virtio_blk` lays them out (header,
//! one data buffer, status) on a split queue in guest memory, 32 at a time (queue depth 32),
//! and the device processes them as on a queue notification: parse and check, image I/O
//! through its bounce buffer, the copy to or from guest memory, the used ring. The baseline
//! does the I/O alone, into a host buffer. Workloads: sequential 128 KiB reads and writes over
//! the whole image (MiB/s), random 4 KiB reads and writes (IOPS); the image is in the page
//! cache (written and read once before), or bypasses it with `--direct` (`O_DIRECT` on both
//! sides). Per repetition device and baseline alternate (AB, BA, ...).
//!
//! The guest's side of a request (its driver, its interrupt) is not in these figures: where KVM
//! emulates guest ring 0 (this project's machines) a Linux guest's request costs milliseconds
//! of emulated kernel work, so the device path is measured on its own.

use super::prealloc::size_arg;
use super::split_queue::{guest_memory, SplitQueue, F_NEXT, F_WRITE};
use super::stats::{median_ratio, Summary, Target};
use super::table::{min_med_max, ratio_cell};
use super::{Align, BenchError, BenchReport, BenchRow, Machine, Table};
use block::{Block, BlockOptions, DeviceModel, RawImage};
use serde::Serialize;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Instant;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Requests in flight per batch (one notification).
const QUEUE_DEPTH: u16 = 32;
const HEADERS: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 1 << 20;
/// Random-access requests per repetition.
const RANDOM_OPS: u64 = 16_384;

/// Options of `memvisor bench disk`.
#[derive(Clone, Debug)]
pub struct DiskBenchOptions {
    /// Image size.
    pub size: u64,
    /// Repetitions.
    pub reps: usize,
    /// Where the image goes (default: the temporary directory).
    pub dir: Option<PathBuf>,
    /// `O_DIRECT` on both sides.
    pub direct: bool,
}

impl Default for DiskBenchOptions {
    fn default() -> Self {
        DiskBenchOptions {
            size: 256 << 20,
            reps: 3,
            dir: None,
            direct: false,
        }
    }
}

impl DiskBenchOptions {
    /// The command line that gives these options.
    pub fn command(&self) -> String {
        let mut c = format!(
            "memvisor bench disk --size {} --reps {}",
            size_arg(self.size),
            self.reps
        );
        if let Some(d) = &self.dir {
            c.push_str(&format!(" --dir {}", d.display()));
        }
        if self.direct {
            c.push_str(" --direct");
        }
        c
    }
}

/// One workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Sequential 128 KiB reads.
    SeqRead,
    /// Sequential 128 KiB writes.
    SeqWrite,
    /// Random 4 KiB reads.
    RandRead,
    /// Random 4 KiB writes.
    RandWrite,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::SeqRead,
        Workload::SeqWrite,
        Workload::RandRead,
        Workload::RandWrite,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::SeqRead => "sequential read 128K",
            Workload::SeqWrite => "sequential write 128K",
            Workload::RandRead => "random read 4K",
            Workload::RandWrite => "random write 4K",
        }
    }

    fn request_bytes(self) -> u64 {
        match self {
            Workload::SeqRead | Workload::SeqWrite => 128 << 10,
            Workload::RandRead | Workload::RandWrite => 4 << 10,
        }
    }

    fn write(self) -> bool {
        matches!(self, Workload::SeqWrite | Workload::RandWrite)
    }

    fn sequential(self) -> bool {
        matches!(self, Workload::SeqRead | Workload::SeqWrite)
    }

    /// The byte offsets of one repetition.
    fn offsets(self, size: u64, seed: u64) -> Vec<u64> {
        let req = self.request_bytes();
        if self.sequential() {
            (0..size / req).map(|i| i * req).collect()
        } else {
            let mut x = seed | 1;
            (0..RANDOM_OPS)
                .map(|_| {
                    // xorshift64
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % (size / req)) * req
                })
                .collect()
        }
    }
}

/// One workload's results: MiB/s for sequential workloads, IOPS for random ones.
#[derive(Clone, Debug, Serialize)]
pub struct DiskRow {
    /// The workload.
    pub workload: Workload,
    /// `MiB/s` or `IOPS`.
    pub unit: &'static str,
    /// Requests per repetition.
    pub requests: u64,
    /// Through the device.
    pub device: Option<Summary>,
    /// Raw `pread`/`pwrite`.
    pub raw: Option<Summary>,
    /// Median device / median raw.
    pub ratio: Option<f64>,
    /// Median microseconds per request through the device.
    pub device_us_per_request: Option<f64>,
    /// Median microseconds per request, raw.
    pub raw_us_per_request: Option<f64>,
}

impl BenchRow for DiskRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("workload", Align::Left),
            ("unit", Align::Left),
            ("device min/med/max", Align::Right),
            ("device us/req", Align::Right),
            ("raw file I/O min/med/max", Align::Right),
            ("raw us/req", Align::Right),
            ("device/raw", Align::Right),
        ]);
        let us = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
        for r in rows {
            t.row(vec![
                r.workload.label().into(),
                r.unit.into(),
                min_med_max(r.device.as_ref(), 0),
                us(r.device_us_per_request),
                min_med_max(r.raw.as_ref(), 0),
                us(r.raw_us_per_request),
                ratio_cell(r.ratio),
            ]);
        }
        t
    }
}

/// The image file, removed on drop.
struct ImageFile(PathBuf);

impl Drop for ImageFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The driver side of the request queue.
struct Driver {
    mem: GuestMemoryMmap,
    queue: SplitQueue,
}

impl Driver {
    fn new() -> Result<Self, BenchError> {
        let len = DATA + u64::from(QUEUE_DEPTH) * (128 << 10);
        Ok(Driver {
            mem: guest_memory(len, "disk")?,
            queue: SplitQueue::new(0),
        })
    }

    /// Lays out `QUEUE_DEPTH` requests of `len` bytes (header, data, status).
    fn set_up(&self, len: u32, write: bool) {
        let q = &self.queue;
        for r in 0..QUEUE_DEPTH {
            let d = 3 * r;
            let data_flags = if write { F_NEXT } else { F_NEXT | F_WRITE };
            q.desc(&self.mem, d, HEADERS + 16 * u64::from(r), 16, F_NEXT, d + 1);
            let data = DATA + u64::from(r) * (128 << 10);
            q.desc(&self.mem, d + 1, data, len, data_flags, d + 2);
            q.desc(&self.mem, d + 2, STATUS + u64::from(r), 1, F_WRITE, 0);
        }
    }

    /// Posts one request per offset (at most `QUEUE_DEPTH`).
    fn submit(&mut self, kind: u32, offsets: &[u64]) {
        for (r, &off) in offsets.iter().enumerate() {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&(off / 512).to_le_bytes());
            let at = HEADERS + 16 * r as u64;
            self.mem.write_slice(&h, GuestAddress(at)).expect("inside");
            self.mem
                .write_slice(&[0xff], GuestAddress(STATUS + r as u64))
                .expect("inside");
            self.queue.post(&self.mem, 3 * r as u16);
        }
        self.queue.publish(&self.mem);
    }

    /// Whether the device completed every request of the last batch with `VIRTIO_BLK_S_OK`.
    fn all_ok(&self, n: usize) -> bool {
        let mut status = vec![0xffu8; n];
        let _ = self.mem.read_slice(&mut status, GuestAddress(STATUS));
        self.queue.all_used(&self.mem) && status.iter().all(|&s| s == 0)
    }
}

/// Seconds to run `offsets` through the device.
fn through_device(
    dev: &mut Block<RawImage>,
    drv: &mut Driver,
    w: Workload,
    offsets: &[u64],
) -> Result<f64, BenchError> {
    let kind = if w.write() {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    drv.set_up(w.request_bytes() as u32, w.write());
    let t = Instant::now();
    for batch in offsets.chunks(usize::from(QUEUE_DEPTH)) {
        drv.submit(kind, batch);
        dev.process_queue(0, &drv.mem, &())
            .map_err(|e| BenchError::Check {
                what: format!("{} through the device", w.label()),
                detail: e.to_string(),
            })?;
        if !drv.all_ok(batch.len()) {
            return Err(BenchError::Check {
                what: format!("{} through the device", w.label()),
                detail: format!("a request failed: {:?}", dev.counters()),
            });
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds to run `offsets` with raw `pread`/`pwrite` into a (block-aligned) host buffer.
fn raw_io(file: &std::fs::File, w: Workload, offsets: &[u64]) -> Result<f64, BenchError> {
    let mut buf = block::backend::AlignedBuf::new(w.request_bytes() as usize);
    let t = Instant::now();
    for &off in offsets {
        let r = if w.write() {
            file.write_all_at(buf.as_slice(), off)
        } else {
            file.read_exact_at(buf.as_mut_slice(), off)
        };
        r.map_err(BenchError::io(
            "raw image I/O",
            "check the --dir file system",
        ))?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Runs `memvisor bench disk`.
pub fn run(
    opts: &DiskBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport<DiskRow>, BenchError> {
    BenchError::check_reps(opts.reps)?;
    BenchError::check_size(opts.size, 1 << 20, "1 MiB", "256M")?;
    let load_before = super::machine::load_average();
    let dir = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("memvisor-bench-disk-{}.img", std::process::id()));
    let image = ImageFile(path.clone());
    // Written (allocated) and read once: the page cache holds it unless --direct.
    let chunk = vec![0x5au8; 1 << 20];
    {
        let f = std::fs::File::create(&image.0).map_err(BenchError::io(
            "creating the image",
            "give a writable --dir",
        ))?;
        for i in 0..opts.size >> 20 {
            f.write_all_at(&chunk, i << 20)
                .map_err(BenchError::io("writing the image", "is --dir full?"))?;
        }
        f.sync_all()
            .map_err(BenchError::io("syncing the image", "check --dir"))?;
    }
    let _ = std::fs::read(&image.0);
    let disk = RawImage::open(&image.0, false, opts.direct).map_err(|e| BenchError::Check {
        what: "opening the image".into(),
        detail: e.to_string(),
    })?;
    let mut dev = Block::new(
        disk,
        BlockOptions {
            read_only: false,
            id: "bench".into(),
        },
    );
    dev.ack_features(dev.avail_features());
    let mut drv = Driver::new()?;
    dev.activate(vec![drv.queue.device_queue()])
        .map_err(|e| BenchError::Check {
            what: "activating the device".into(),
            detail: e.to_string(),
        })?;
    // The baseline reads and writes the same file through its own descriptor (the device
    // holds the image's lock; a second descriptor of this process does not need one).
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if opts.direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let raw = o.open(&image.0).map_err(BenchError::io(
        "opening the image for raw I/O",
        "check --dir",
    ))?;
    let mut rows = Vec::new();
    for w in Workload::ALL {
        progress(&format!("disk: {}", w.label()));
        let (mut dev_s, mut raw_s) = (Vec::new(), Vec::new());
        let mut requests = 0;
        for rep in 0..opts.reps {
            let offsets = w.offsets(opts.size, 0x9e37_79b9 + rep as u64);
            requests = offsets.len() as u64;
            let mut one = |device: bool| -> Result<(), BenchError> {
                let secs = if device {
                    through_device(&mut dev, &mut drv, w, &offsets)?
                } else {
                    raw_io(&raw, w, &offsets)?
                };
                let figure = if w.sequential() {
                    (requests * w.request_bytes()) as f64 / secs / f64::from(1u32 << 20)
                } else {
                    requests as f64 / secs
                };
                if device {
                    dev_s.push(figure);
                } else {
                    raw_s.push(figure);
                }
                Ok(())
            };
            let device_first = rep % 2 == 0;
            one(device_first)?;
            one(!device_first)?;
        }
        let (device, rawsum) = (Summary::of(&dev_s), Summary::of(&raw_s));
        let per_request = |s: Option<&Summary>| {
            s.map(|s| {
                if w.sequential() {
                    w.request_bytes() as f64 / (s.median * f64::from(1u32 << 20)) * 1e6
                } else {
                    1e6 / s.median
                }
            })
        };
        rows.push(DiskRow {
            workload: w,
            unit: if w.sequential() { "MiB/s" } else { "IOPS" },
            requests,
            ratio: median_ratio(device.as_ref(), rawsum.as_ref()),
            device_us_per_request: per_request(device.as_ref()),
            raw_us_per_request: per_request(rawsum.as_ref()),
            device,
            raw: rawsum,
        });
    }
    let counters = dev.counters();
    if counters.ioerr_status + counters.unsupp_status + counters.no_status > 0 {
        return Err(BenchError::Check {
            what: "the device".into(),
            detail: format!("refused requests: {counters:?}"),
        });
    }
    let ratios: Vec<(String, Option<f64>)> = rows
        .iter()
        .map(|r| (r.workload.label().to_string(), r.ratio))
        .collect();
    let targets = vec![Target::judge(
        "device / raw file I/O (median throughput)",
        0.5,
        &ratios,
    )];
    let machine = Machine::describe();
    let mut notes = vec![format!(
        "image {} in {} ({}), queue depth {QUEUE_DEPTH}, {} random requests per repetition",
        size_arg(opts.size),
        dir.display(),
        if opts.direct {
            "O_DIRECT, 4 KiB blocks"
        } else {
            "in the page cache"
        },
        RANDOM_OPS
    )];
    notes.extend(super::machine::load_note(
        load_before,
        super::machine::load_average(),
        machine.cpus,
    ));
    drop(image);
    Ok(BenchReport {
        benchmark: "disk".into(),
        command: opts.command(),
        machine,
        method: vec![
            "device: requests laid out as Linux's virtio_blk does (header, data, status), 32 per notification, processed by the block crate's device over the raw image (parse, checks, pread/pwrite through its bounce buffer, the copy to or from guest memory, the used ring)".into(),
            "raw: pread/pwrite of the same offsets and sizes on the same file into a host buffer".into(),
            "the guest's side of a request (driver, interrupt) is not included".into(),
        ],
        rows,
        targets,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_runs_and_every_request_succeeds() {
        let opts = DiskBenchOptions {
            size: 4 << 20,
            reps: 1,
            ..Default::default()
        };
        let report = run(&opts, &|_| {}).unwrap();
        assert_eq!(report.rows.len(), 4);
        for r in &report.rows {
            assert!(r.device.as_ref().is_some_and(|s| s.median > 0.0), "{r:?}");
            assert!(r.raw.as_ref().is_some_and(|s| s.median > 0.0), "{r:?}");
        }
        assert_eq!(report.rows[0].requests, 32, "4 MiB in 128 KiB requests");
        let text = report.to_text();
        assert!(
            text.contains("random write 4K") && text.contains("device/raw"),
            "{text}"
        );
    }
}
