//! Feature bits and the configuration space.
//!
//! This module owns which virtio-blk features the device offers (virtio 1.2 §5.2.3) and the
//! layout of `struct virtio_blk_config` (§5.2.4) it exposes.
//!
//! Offered: `VIRTIO_F_VERSION_1`, `VIRTIO_BLK_F_SEG_MAX`, `VIRTIO_BLK_F_BLK_SIZE`,
//! `VIRTIO_BLK_F_FLUSH`, and either `VIRTIO_BLK_F_RO` (a read-only disk) or
//! `VIRTIO_BLK_F_DISCARD` and `VIRTIO_BLK_F_WRITE_ZEROES` (a writable one). Not offered:
//! `VIRTIO_F_INDIRECT_DESC` and `VIRTIO_F_EVENT_IDX` (a chain flagged indirect is refused and
//! counted, as in the balloon), `VIRTIO_BLK_F_MQ` (one queue), `VIRTIO_BLK_F_CONFIG_WCE` (the
//! cache mode is fixed: writes reach the host page cache, `FLUSH` makes them durable with
//! `fdatasync`), `SIZE_MAX`, `GEOMETRY`, `TOPOLOGY`, `SECURE_ERASE`, `ZONED` and the legacy
//! `BARRIER`/`SCSI` bits.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// The mask of feature bit `bit`.
pub const fn feature_mask(bit: u32) -> u64 {
    1 << bit
}

/// Features the device offers for a disk that is (or is not) read-only.
pub fn avail_features(read_only: bool) -> u64 {
    let common = feature_mask(VIRTIO_F_VERSION_1)
        | feature_mask(VIRTIO_BLK_F_SEG_MAX)
        | feature_mask(VIRTIO_BLK_F_BLK_SIZE)
        | feature_mask(VIRTIO_BLK_F_FLUSH);
    if read_only {
        common | feature_mask(VIRTIO_BLK_F_RO)
    } else {
        common | feature_mask(VIRTIO_BLK_F_DISCARD) | feature_mask(VIRTIO_BLK_F_WRITE_ZEROES)
    }
}

/// Names of the feature bits this device knows (as the virtio specification spells them).
const FEATURE_NAMES: &[(u32, &str)] = &[
    (VIRTIO_BLK_F_SEG_MAX, "SEG_MAX"),
    (VIRTIO_BLK_F_RO, "RO"),
    (VIRTIO_BLK_F_BLK_SIZE, "BLK_SIZE"),
    (VIRTIO_BLK_F_FLUSH, "FLUSH"),
    (VIRTIO_BLK_F_DISCARD, "DISCARD"),
    (VIRTIO_BLK_F_WRITE_ZEROES, "WRITE_ZEROES"),
    (VIRTIO_F_VERSION_1, "VERSION_1"),
];

/// The names of the bits set in `features` (`bit N` for bits without a name here).
pub fn feature_names(features: u64) -> Vec<String> {
    virtio_chain::feature_names(features, FEATURE_NAMES)
}

/// Size of the configuration space the device exposes: `struct virtio_blk_config` up to and
/// including `write_zeroes_may_unmap` and its padding (the secure-erase fields are not offered).
pub const CONFIG_SPACE_SIZE: u64 = 60;

/// Most sectors one discard or write-zeroes segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one discard or write-zeroes request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Discard granularity in sectors (4 KiB: the host file system's block, what a hole punch
/// frees).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// The values of `struct virtio_blk_config`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Most data segments in one request.
    pub seg_max: u32,
    /// Logical block size in bytes (512, or 4096 with `O_DIRECT`).
    pub blk_size: u32,
    /// `max_discard_sectors`.
    pub max_discard_sectors: u32,
    /// `max_discard_seg`.
    pub max_discard_seg: u32,
    /// `discard_sector_alignment`.
    pub discard_sector_alignment: u32,
    /// `max_write_zeroes_sectors`.
    pub max_write_zeroes_sectors: u32,
    /// `max_write_zeroes_seg`.
    pub max_write_zeroes_seg: u32,
    /// `write_zeroes_may_unmap`: the device may punch a hole for a write-zeroes with `unmap`.
    pub write_zeroes_may_unmap: bool,
}

impl BlockConfig {
    /// The configuration space as the driver reads it (little-endian).
    pub fn bytes(&self) -> [u8; CONFIG_SPACE_SIZE as usize] {
        let mut b = [0u8; CONFIG_SPACE_SIZE as usize];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8) and geometry (16) stay 0: not offered.
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        // topology (24..32), writeback (32), num_queues (34) stay 0: not offered.
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = u8::from(self.write_zeroes_may_unmap);
        b
    }
}
