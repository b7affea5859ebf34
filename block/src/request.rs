//! Parsing a descriptor chain into a request.
//!
//! This module owns the virtio-blk request format (virtio 1.2 §5.2.6): a 16-byte header
//! (`type`, `reserved`, `sector`) at the start of the device-readable buffers, the data, and a
//! one-byte status at the end of the device-writable buffers. The split between buffers is not
//! assumed (`VIRTIO_F_VERSION_1` implies any layout): the header may span descriptors and share
//! one with the data. [`parse`] checks everything the request's execution relies on, so that
//! executing it can only touch the image inside its size and guest memory inside guest RAM:
//! - the chain itself (the `virtio-chain` crate): loops, indirect tables, entries outside the table or
//!   guest memory, readable-after-writable, over 4 GiB;
//! - a status byte that exists and lies in guest memory (otherwise no status can be written
//!   and the chain goes back with nothing written);
//! - the header, the data's direction for the type, every data buffer inside guest memory,
//!   lengths (whole sectors, or whole blocks with `O_DIRECT`), sector ranges inside the image,
//!   discard/write-zeroes segments within the advertised limits, in whole blocks and with
//!   allowed flags, and
//!   no writes of any kind to a read-only disk.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::SECTOR_SIZE;
use virtio_chain::{in_memory, split_front, total_len, walk, ChainError, OutsideMemory, Seg};

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_SIZE: u64 = 16;
/// Size of one discard/write-zeroes segment (`struct virtio_blk_discard_write_zeroes`).
pub const DISCARD_SEGMENT_SIZE: u64 = 16;
/// Bytes of the device id a `GET_ID` request returns (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// `VIRTIO_BLK_T_IN`: read sectors into the guest's buffers.
    In,
    /// `VIRTIO_BLK_T_OUT`: write the guest's buffers to sectors.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`: make completed writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: the device id string.
    GetId,
    /// `VIRTIO_BLK_T_DISCARD`: the guest no longer needs these sectors.
    Discard,
    /// `VIRTIO_BLK_T_WRITE_ZEROES`: these sectors read as zeros from now on.
    WriteZeroes,
}

impl RequestType {
    fn from_raw(t: u32) -> Option<Self> {
        Some(match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            _ => return None,
        })
    }
}

/// Why a request was refused. Each cause has its own counter ([`crate::BlockCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A descriptor flagged indirect (`VIRTIO_F_INDIRECT_DESC` is never offered).
    IndirectNotNegotiated,
    /// The chain loops.
    LoopingChain,
    /// A `next` outside the descriptor table.
    NextOutOfRange,
    /// A descriptor table entry outside guest memory.
    DescriptorUnreadable,
    /// Buffers adding up to more than 4 GiB.
    OverFourGib,
    /// A device-readable buffer after a device-writable one.
    ReadableAfterWritable,
    /// No device-writable byte for the status.
    MissingStatus,
    /// The status byte is outside guest memory.
    StatusOutsideMemory,
    /// Fewer than 16 device-readable bytes for the header.
    ShortHeader,
    /// A header or data buffer (partly) outside guest memory.
    BufferOutsideMemory,
    /// Data buffers going the wrong way for the request type.
    WrongDirection,
    /// A data length the request type does not allow.
    BadLength,
    /// Sectors past the end of the image.
    OutOfRange,
    /// More discard segments or sectors than the configuration space allows.
    OverLimits,
    /// A write, discard or write-zeroes to a read-only disk.
    WriteToReadOnly,
    /// A request type the device does not implement.
    UnsupportedType(u32),
    /// Discard/write-zeroes flags the command does not allow.
    UnsupportedFlags,
    /// The image I/O failed on the host.
    HostIo,
}

impl Refusal {
    /// The status byte the guest gets.
    pub fn status(self) -> u8 {
        match self {
            Refusal::UnsupportedType(_) | Refusal::UnsupportedFlags => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }

    fn from_chain(e: ChainError) -> Self {
        match e {
            ChainError::IndirectNotNegotiated => Refusal::IndirectNotNegotiated,
            ChainError::Loop => Refusal::LoopingChain,
            ChainError::NextOutOfRange => Refusal::NextOutOfRange,
            ChainError::DescriptorUnreadable => Refusal::DescriptorUnreadable,
            ChainError::OverFourGib => Refusal::OverFourGib,
            ChainError::ReadableAfterWritable => Refusal::ReadableAfterWritable,
        }
    }
}

impl From<OutsideMemory> for Refusal {
    fn from(_: OutsideMemory) -> Self {
        Refusal::BufferOutsideMemory
    }
}

/// What the disk allows; the parser checks requests against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLimits {
    /// Image size in bytes (whole sectors).
    pub capacity_bytes: u64,
    /// Reads and writes must be whole multiples of this, at offsets aligned to it (512, or
    /// 4096 with `O_DIRECT`).
    pub block_size: u64,
    /// No writes, discards or write-zeroes.
    pub read_only: bool,
    /// Most segments in one discard/write-zeroes request.
    pub max_discard_seg: u32,
    /// Most sectors in one discard/write-zeroes segment.
    pub max_discard_sectors: u32,
}

/// One discard or write-zeroes range, checked against the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// Offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Write-zeroes with `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: the range may become a hole.
    pub unmap: bool,
}

/// A checked request, ready to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub kind: RequestType,
    /// Byte offset in the image (reads and writes).
    pub offset: u64,
    /// The data buffers (reads, writes, get-id), all inside guest memory.
    pub(crate) data: Vec<Seg>,
    /// Discard/write-zeroes ranges, all inside the image.
    pub ranges: Vec<ByteRange>,
}

impl Request {
    /// Bytes of data buffers (reads, writes, get-id).
    pub fn data_len(&self) -> u64 {
        total_len(&self.data)
    }
}

/// The outcome of parsing one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Guest-physical address of the status byte, when there is a usable one.
    pub status: Option<u64>,
    /// The request, or why it is refused.
    pub request: Result<Request, Refusal>,
}

/// Parses the chain at `head` of the descriptor table at `table` (`size` entries; the caller
/// checked `head < size`) against `limits`.
pub fn parse<M: GuestMemory>(
    mem: &M,
    table: u64,
    size: u16,
    head: u16,
    limits: &DiskLimits,
) -> Parsed {
    let refused = |status, why| Parsed {
        status,
        request: Err(why),
    };
    let walked = match walk(mem, table, size, head) {
        Ok(w) => w,
        Err(e) => return refused(None, Refusal::from_chain(e)),
    };
    // The status byte: the last device-writable byte.
    let writable_len = total_len(&walked.writable);
    let Some((writable, _)) = writable_len
        .checked_sub(1)
        .and_then(|n| split_front(&walked.writable, n))
    else {
        return refused(None, Refusal::MissingStatus);
    };
    let last = walked.writable.last().expect("a writable byte exists");
    let status = last.addr.wrapping_add(u64::from(last.len) - 1);
    if !mem.check_range(GuestAddress(status), 1, Permissions::Write) {
        return refused(None, Refusal::StatusOutsideMemory);
    }
    let status = Some(status);
    let request = parse_body(mem, &walked.readable, writable, limits);
    Parsed { status, request }
}

fn parse_body<M: GuestMemory>(
    mem: &M,
    readable: &[Seg],
    writable: Vec<Seg>,
    limits: &DiskLimits,
) -> Result<Request, Refusal> {
    let (header_segs, readable) = split_front(readable, HEADER_SIZE).ok_or(Refusal::ShortHeader)?;
    let header = read_all(mem, &header_segs)?;
    let raw_type = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let kind = RequestType::from_raw(raw_type).ok_or(Refusal::UnsupportedType(raw_type))?;
    let mut req = Request {
        kind,
        offset: 0,
        data: Vec::new(),
        ranges: Vec::new(),
    };
    match kind {
        RequestType::In | RequestType::Out => {
            let (data, other) = if kind == RequestType::In {
                (writable, readable)
            } else {
                (readable, writable)
            };
            if !other.is_empty() {
                return Err(Refusal::WrongDirection);
            }
            if kind == RequestType::Out && limits.read_only {
                return Err(Refusal::WriteToReadOnly);
            }
            let len = total_len(&data);
            let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Refusal::OutOfRange)?;
            if len % limits.block_size != 0 || offset % limits.block_size != 0 {
                return Err(Refusal::BadLength);
            }
            check_in_image(offset, len, limits)?;
            let access = if kind == RequestType::In {
                Permissions::Write
            } else {
                Permissions::Read
            };
            check_in_memory(mem, &data, access)?;
            req.offset = offset;
            req.data = data;
        }
        RequestType::Flush => {}
        RequestType::GetId => {
            if !readable.is_empty() {
                return Err(Refusal::WrongDirection);
            }
            if writable.is_empty() {
                return Err(Refusal::BadLength);
            }
            check_in_memory(mem, &writable, Permissions::Write)?;
            req.data = writable;
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            if !writable.is_empty() {
                return Err(Refusal::WrongDirection);
            }
            if limits.read_only {
                return Err(Refusal::WriteToReadOnly);
            }
            let len = total_len(&readable);
            if len == 0 || len % DISCARD_SEGMENT_SIZE != 0 {
                return Err(Refusal::BadLength);
            }
            if len / DISCARD_SEGMENT_SIZE > u64::from(limits.max_discard_seg) {
                return Err(Refusal::OverLimits);
            }
            let payload = read_all(mem, &readable)?;
            for seg in payload.chunks_exact(DISCARD_SEGMENT_SIZE as usize) {
                req.ranges.push(discard_range(kind, seg, limits)?);
            }
        }
    }
    Ok(req)
}

/// One `struct virtio_blk_discard_write_zeroes`, checked.
fn discard_range(kind: RequestType, seg: &[u8], limits: &DiskLimits) -> Result<ByteRange, Refusal> {
    let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
    let sectors = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
    let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
    // virtio 1.2 §5.2.6.2: UNSUPP for unknown flags, and for `unmap` on a discard.
    let allowed = if kind == RequestType::WriteZeroes {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Err(Refusal::UnsupportedFlags);
    }
    if sectors > limits.max_discard_sectors {
        return Err(Refusal::OverLimits);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Refusal::OutOfRange)?;
    let len = u64::from(sectors) * SECTOR_SIZE;
    // Whole blocks, as for reads and writes: with `O_DIRECT` (4 KiB blocks) a zeroing the host
    // cannot do with `fallocate` falls back to writes, which must be aligned (found by the
    // `block_requests` fuzz target).
    if len % limits.block_size != 0 || offset % limits.block_size != 0 {
        return Err(Refusal::BadLength);
    }
    check_in_image(offset, len, limits)?;
    Ok(ByteRange {
        offset,
        len,
        unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
    })
}

fn check_in_image(offset: u64, len: u64, limits: &DiskLimits) -> Result<(), Refusal> {
    match offset.checked_add(len) {
        Some(end) if end <= limits.capacity_bytes => Ok(()),
        _ => Err(Refusal::OutOfRange),
    }
}

fn check_in_memory<M: GuestMemory>(
    mem: &M,
    segs: &[Seg],
    access: Permissions,
) -> Result<(), Refusal> {
    if in_memory(mem, segs, access) {
        Ok(())
    } else {
        Err(Refusal::BufferOutsideMemory)
    }
}

/// Reads small device-readable buffers (the header, discard segments: at most a few hundred
/// bytes, bounded by the caller) in order.
fn read_all<M: GuestMemory>(mem: &M, segs: &[Seg]) -> Result<Vec<u8>, Refusal> {
    let mut out = vec![0u8; total_len(segs) as usize];
    let mut pos = 0;
    for s in segs {
        let end = pos + s.len as usize;
        mem.read_slice(&mut out[pos..end], GuestAddress(s.addr))
            .map_err(|_| Refusal::BufferOutsideMemory)?;
        pos = end;
    }
    Ok(out)
}
