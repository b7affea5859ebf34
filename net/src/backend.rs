//! Where frames go and come from.
//!
//! This module owns the [`NetBackend`] trait the device model sends and receives frames
//! through (each frame with its 12-byte `virtio_net_hdr_v1` in front), and [`MemBackend`], an
//! in-memory backend for tests and fuzzing. The tap ([`crate::Tap`]) is the real one.

use std::collections::VecDeque;
use std::io;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// A host-side end of the network link.
pub trait NetBackend: Send {
    /// Sends one frame (header included) made of `parts`, in order, as one write; returns the
    /// bytes taken.
    fn send<B: BitmapSlice>(&mut self, parts: &[VolatileSlice<'_, B>]) -> io::Result<usize>;
    /// Reads one frame (header included) into `buf`; `ErrorKind::WouldBlock` when none is
    /// waiting. A frame longer than `buf` may be truncated (the device's buffer is as large
    /// as the largest frame it accepts).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// Frames in memory: what the device sent, and what it is to receive.
#[derive(Debug, Default)]
pub struct MemBackend {
    /// Frames the device sent, in order.
    pub sent: Vec<Vec<u8>>,
    /// Frames waiting to be received, in order.
    pub incoming: VecDeque<Vec<u8>>,
    /// When set, `send` and `recv` fail with this (a host error; `recv` still fails with
    /// `WouldBlock` once `incoming` is empty).
    pub fail: Option<io::ErrorKind>,
}

impl NetBackend for MemBackend {
    fn send<B: BitmapSlice>(&mut self, parts: &[VolatileSlice<'_, B>]) -> io::Result<usize> {
        if let Some(k) = self.fail {
            return Err(k.into());
        }
        let mut frame = Vec::new();
        for p in parts {
            let start = frame.len();
            frame.resize(start + p.len(), 0);
            p.copy_to(&mut frame[start..]);
        }
        let n = frame.len();
        self.sent.push(frame);
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(frame) = self.incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if let Some(k) = self.fail {
            return Err(k.into());
        }
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
}
