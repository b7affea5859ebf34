//! MSI-X (PCI Local Bus 3.0 §6.8.2): the vector table and pending bit array a function keeps in
//! one of its BARs, the per-vector and function-wide masks, and delivery of messages through
//! an [`MsiSink`]. Also the [`IntxLine`] a function without MSI-X enabled raises instead.
//!
//! Table entries are 16 bytes: message address (low, high), message data, vector control (bit
//! 0: masked). Every entry starts masked. A message for a masked vector (or while the function
//! is masked) sets its pending bit instead; unmasking sends it and clears the bit. Software
//! must use aligned dword or qword accesses (§6.8.2.9); anything else reads zeros, is not
//! written and is counted. The pending bit array is read-only.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where MSI messages go: the interrupt controller. The KVM implementation is
/// [`super::KvmIrq`]; tests record the messages.
pub trait MsiSink: Send + Sync {
    /// Sends one message: a dword write of `data` to `addr` on the bus.
    fn signal_msi(&self, addr: u64, data: u32) -> io::Result<()>;
}

/// A level-triggered INTx line (the function's INTA# routed to one interrupt controller input).
pub trait IntxLine: Send + Sync {
    /// Asserts (`true`) or deasserts the line.
    fn set_level(&self, asserted: bool) -> io::Result<()>;
}

/// Bytes per MSI-X table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
pub const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn word(&self, i: u64) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.control,
        }
    }

    fn set_word(&mut self, i: u64, v: u32) {
        match i {
            0 => self.addr_lo = v,
            1 => self.addr_hi = v,
            2 => self.data = v,
            // Bits other than the mask are reserved (read 0).
            _ => self.control = v & VECTOR_MASKED,
        }
    }

    fn addr(&self) -> u64 {
        u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo)
    }

    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

struct State {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
}

/// Counters of MSI-X activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MsixCounters {
    /// Messages delivered to the sink.
    pub sent: u64,
    /// Messages held as pending because the vector or function was masked.
    pub held: u64,
    /// Messages the sink refused.
    pub failed: u64,
    /// Table and PBA accesses of the wrong size or alignment, and writes to the PBA.
    pub bad_accesses: u64,
}

/// A function's MSI-X table, pending bits and control state.
pub struct Msix {
    state: Mutex<State>,
    enabled: AtomicBool,
    sink: Arc<dyn MsiSink>,
    sent: AtomicU64,
    held: AtomicU64,
    failed: AtomicU64,
    bad: AtomicU64,
}

impl Msix {
    /// A table of `vectors` entries, all masked, MSI-X disabled.
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        let n = usize::from(vectors);
        Msix {
            state: Mutex::new(State {
                entries: vec![
                    Entry {
                        control: VECTOR_MASKED,
                        ..Entry::default()
                    };
                    n
                ],
                pending: vec![false; n],
                enabled: false,
                function_masked: false,
            }),
            enabled: AtomicBool::new(false),
            sink,
            sent: AtomicU64::new(0),
            held: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.state.lock().unwrap().entries.len() as u16
    }

    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors()) * ENTRY_SIZE
    }

    /// Bytes of the pending bit array (whole qwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors()).div_ceil(64) * 8
    }

    /// Whether MSI-X is enabled (then the function does not use INTx).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The driver wrote the message control register: enable and function mask. Pending
    /// messages of vectors no longer masked are sent.
    pub fn set_control(&self, control: u16) {
        let mut st = self.state.lock().unwrap();
        st.enabled = control & CONTROL_ENABLE != 0;
        st.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.enabled.store(st.enabled, Ordering::Release);
        for v in 0..st.entries.len() {
            self.flush(&mut st, v);
        }
    }

    /// Sends vector `vector`'s message, or marks it pending if masked. Returns false if MSI-X
    /// is disabled or the vector does not exist (nothing happens then).
    pub fn signal(&self, vector: u16) -> bool {
        let mut st = self.state.lock().unwrap();
        let v = usize::from(vector);
        if !st.enabled || v >= st.entries.len() {
            return false;
        }
        if st.function_masked || st.entries[v].masked() {
            st.pending[v] = true;
            self.held.fetch_add(1, Ordering::Relaxed);
        } else {
            self.send(&st.entries[v]);
        }
        true
    }

    fn flush(&self, st: &mut State, v: usize) {
        if st.pending[v] && st.enabled && !st.function_masked && !st.entries[v].masked() {
            st.pending[v] = false;
            self.send(&st.entries[v]);
        }
    }

    fn send(&self, e: &Entry) {
        match self.sink.signal_msi(e.addr(), e.data) {
            Ok(()) => self.sent.fetch_add(1, Ordering::Relaxed),
            Err(err) => {
                log::warn!(
                    "MSI-X: message to {:#x} data {:#x} not delivered: {err}",
                    e.addr(),
                    e.data
                );
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Words of an aligned dword or qword access at `offset` of a region `len` bytes long.
    fn words(&self, offset: u64, size: usize, len: u64) -> Option<std::ops::Range<u64>> {
        let ok = matches!(size, 4 | 8) && offset % size as u64 == 0 && offset + size as u64 <= len;
        if !ok {
            self.bad.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(offset / 4..(offset + size as u64) / 4)
    }

    /// A read of the table at `offset`.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(words) = self.words(offset, data.len(), self.table_len()) else {
            return;
        };
        let st = self.state.lock().unwrap();
        for (k, w) in words.enumerate() {
            let v = st.entries[(w / 4) as usize].word(w % 4);
            data[4 * k..4 * k + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// A write to the table at `offset`; unmasking a vector with a pending message sends it.
    pub fn table_write(&self, offset: u64, data: &[u8]) {
        let Some(words) = self.words(offset, data.len(), self.table_len()) else {
            return;
        };
        let mut st = self.state.lock().unwrap();
        for (k, w) in words.enumerate() {
            let v = u32::from_le_bytes(data[4 * k..4 * k + 4].try_into().expect("4 bytes"));
            let e = (w / 4) as usize;
            st.entries[e].set_word(w % 4, v);
            self.flush(&mut st, e);
        }
    }

    /// A read of the pending bit array at `offset`.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(words) = self.words(offset, data.len(), self.pba_len()) else {
            return;
        };
        let st = self.state.lock().unwrap();
        for (k, w) in words.enumerate() {
            let mut v = 0u32;
            for bit in 0..32 {
                if st.pending.get((w * 32 + bit) as usize) == Some(&true) {
                    v |= 1 << bit;
                }
            }
            data[4 * k..4 * k + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// A write to the pending bit array: read-only, counted.
    pub fn pba_write(&self) {
        self.bad.fetch_add(1, Ordering::Relaxed);
    }

    /// What happened so far.
    pub fn counters(&self) -> MsixCounters {
        MsixCounters {
            sent: self.sent.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bad_accesses: self.bad.load(Ordering::Relaxed),
        }
    }
}
