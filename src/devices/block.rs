//! The virtio-blk device (the `block` crate's model over a raw image file) as a
//! [`VirtioDevice`], and what the API shows of it.
//!
//! This module owns opening a `--disk` ([`BlockDevice::open`]: the image opened and locked
//! before the guest starts, so a missing, locked or unusable image stops memvisor with the
//! reason) and the per-disk figures of `GET /vm` and `/metrics` ([`DiskInfo`]). Guest buffers
//! are reached only through the guest memory object the transport passes to
//! [`VirtioDevice::process_queue`]; the model checks every request before any I/O (see the
//! `block` crate). I/O runs synchronously on the VM's device event thread, which processes the
//! disk's queue notifications (ioeventfds; [`super::queue_events::QueueEvents`]): the device
//! holds no thread of its own.

use super::pci::VirtioPciDevice;
use super::virtio::ModelDevice;
use crate::config::disk::DiskConfig;
use block::{Block, BlockCounters, BlockOptions, DeviceModel, ImageError, RawImage};
use serde::Serialize;
use std::sync::Arc;

/// A disk that cannot be attached.
#[derive(Debug, thiserror::Error)]
#[error("--disk {id}: {source}")]
pub struct DiskError {
    /// The disk's id.
    pub id: String,
    /// Why.
    #[source]
    pub source: ImageError,
}

/// A virtio-blk device over a raw image.
pub struct BlockDevice {
    /// The device model.
    pub model: Block<RawImage>,
    /// What the user asked for.
    pub config: DiskConfig,
}

impl BlockDevice {
    /// Opens (and locks) the image of `config`.
    pub fn open(config: &DiskConfig) -> Result<Self, DiskError> {
        let image =
            RawImage::open(&config.path, config.read_only, config.direct).map_err(|source| {
                DiskError {
                    id: config.id.clone(),
                    source,
                }
            })?;
        let opts = BlockOptions {
            read_only: config.read_only,
            id: config.id.clone(),
        };
        Ok(BlockDevice {
            model: Block::new(image, opts),
            config: config.clone(),
        })
    }

    /// What the API shows of this disk.
    pub fn info(&self) -> DiskInfo {
        let m = &self.model;
        DiskInfo {
            id: self.config.id.clone(),
            path: self.config.path.display().to_string(),
            read_only: self.config.read_only,
            direct: self.config.direct,
            capacity_bytes: m.config().capacity * block::SECTOR_SIZE,
            block_size: u64::from(m.config().blk_size),
            activated: m.is_activated(),
            features_offered: block::features::feature_names(m.avail_features()),
            features_acked: block::features::feature_names(m.acked_features()),
            counters: m.counters(),
        }
    }
}

impl ModelDevice for BlockDevice {
    type Model = Block<RawImage>;
    fn model(&self) -> &Block<RawImage> {
        &self.model
    }
    fn model_and_backend(&mut self) -> (&mut Block<RawImage>, &()) {
        (&mut self.model, &())
    }
}

/// A disk on the Linux guest's PCI bus.
pub type BlockHandle = Arc<VirtioPciDevice<BlockDevice>>;

/// What `GET /vm` shows of a disk (and `/metrics` counts).
#[derive(Clone, Debug, Serialize)]
pub struct DiskInfo {
    /// The disk's id.
    pub id: String,
    /// The image file.
    pub path: String,
    /// Read-only for the guest.
    pub read_only: bool,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
    /// Size the guest sees.
    pub capacity_bytes: u64,
    /// Logical block size the guest sees.
    pub block_size: u64,
    /// The guest's driver set DRIVER_OK (until a reset).
    pub activated: bool,
    /// Feature bits offered, by name.
    pub features_offered: Vec<String>,
    /// Feature bits the driver accepted, by name.
    pub features_acked: Vec<String>,
    /// Requests, bytes and refusals by cause.
    pub counters: BlockCounters,
}

/// The figures of a disk behind its transport.
pub fn disk_info(disk: &BlockHandle) -> DiskInfo {
    disk.with_device(|d| (d.info(), false))
}
