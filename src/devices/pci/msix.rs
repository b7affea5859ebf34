//! MSI-X (PCI Local Bus 3.0 §6.8.2): the vector table and pending bit array a function keeps in
//! one of its BARs, the per-vector and function-wide masks, and delivery of messages through
//! one [`MsiRoute`] per vector (from an [`MsiSink`]). Also the [`IntxLine`] a function without
//! MSI-X enabled raises instead.
//!
//! Table entries are 16 bytes: message address (low, high), message data, vector control (bit
//! 0: masked). Every entry starts masked. A message for a masked vector (or while the function
//! is masked) sets its pending bit instead; unmasking sends it and clears the bit. Software
//! must use aligned dword or qword accesses (§6.8.2.9); anything else reads zeros, is not
//! written and is counted. The pending bit array is read-only.
//!
//! # Routes
//! Each vector has a route of its own, made when the table is: with KVM a GSI whose routing
//! entry carries the vector's message and an irqfd bound to it
//! (`crate::vmm::irq_routing`), so sending is one eventfd write from whichever thread
//! raises the interrupt. A route is (re)pointed at its vector's address/data when the vector
//! becomes deliverable with a message the route does not carry yet: the guest unmasks it,
//! clears the function mask, enables MSI-X, or writes an entry that is unmasked. Those are
//! table and configuration-space writes, so routes are only ever rewritten on the vCPU thread
//! that made the write; masking needs no rewrite, because the mask is checked here before the
//! eventfd is written (a masked vector's message goes to the pending bits, as before). A route
//! that could not be pointed at its message (e.g. the message names an APIC id no vCPU has)
//! sends nothing: each message for it is counted in [`MsixCounters::failed`].

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where MSI messages go: the interrupt controller, one [`MsiRoute`] per vector. The KVM
/// implementation is `crate::vmm::irq_routing::GsiRouting` (a GSI route and an irqfd per
/// vector); tests record the messages.
pub trait MsiSink: Send + Sync {
    /// A new route for one vector. It carries no message until [`MsiRoute::set`] is called.
    fn new_route(&self) -> io::Result<Box<dyn MsiRoute>>;
}

/// One vector's way to the interrupt controller.
pub trait MsiRoute: Send + Sync {
    /// Points the route at the message `data` written to `addr`. An error means the route
    /// cannot carry that message (nothing is sent through it until a later `set` succeeds).
    fn set(&mut self, addr: u64, data: u32) -> io::Result<()>;
    /// Sends the message the route carries (with KVM: writes the irqfd).
    fn send(&self) -> io::Result<()>;
}

/// A level-triggered INTx line (the function's INTA# routed to one interrupt controller input).
pub trait IntxLine: Send + Sync {
    /// Asserts (`true`) or deasserts the line. A line that the interrupt controller lowers
    /// itself at the guest's EOI (KVM's resampling irqfd, `super::IntxIrqfd`) ignores
    /// deasserts; its owner raises it again after each EOI while it is still wanted
    /// ([`super::shared_intx::SharedIntx::resample`]).
    fn set_level(&self, asserted: bool) -> io::Result<()>;
}

/// An [`MsiSink`] that records the messages sent through its routes instead of delivering
/// them: a function driven without a VM (tests). Clones share the record.
#[derive(Clone, Default)]
pub struct MessageLog {
    sent: Arc<Mutex<Vec<(u64, u32)>>>,
}

impl MessageLog {
    /// The messages (address, data) sent since the last call, in order.
    pub fn take(&self) -> Vec<(u64, u32)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl MsiSink for MessageLog {
    fn new_route(&self) -> io::Result<Box<dyn MsiRoute>> {
        Ok(Box::new(LoggedRoute {
            log: self.clone(),
            message: None,
        }))
    }
}

struct LoggedRoute {
    log: MessageLog,
    message: Option<(u64, u32)>,
}

impl MsiRoute for LoggedRoute {
    fn set(&mut self, addr: u64, data: u32) -> io::Result<()> {
        self.message = Some((addr, data));
        Ok(())
    }

    fn send(&self) -> io::Result<()> {
        let m = self
            .message
            .ok_or_else(|| io::Error::other("the route carries no message"))?;
        self.log.sent.lock().unwrap().push(m);
        Ok(())
    }
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

/// A vector's route and the message it carries now (`None`: none yet, or the last `set`
/// failed).
struct Route {
    route: Box<dyn MsiRoute>,
    carries: Option<(u64, u32)>,
}

struct State {
    entries: Vec<Entry>,
    routes: Vec<Route>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
}

impl State {
    fn deliverable(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && !self.entries[v].masked()
    }
}

/// Counters of MSI-X activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MsixCounters {
    /// Messages handed to the interrupt controller (with KVM: irqfd writes).
    pub sent: u64,
    /// Messages held as pending because the vector or function was masked.
    pub held: u64,
    /// Messages not sent because their vector's route could not carry the vector's message
    /// (with KVM: it names no vCPU's APIC id, is not in the local APICs' window, or
    /// `KVM_SET_GSI_ROUTING` failed), or because sending failed. KVM drops an irqfd message
    /// without a destination silently, so memvisor checks the destination itself when it
    /// points the route.
    pub failed: u64,
    /// Times a vector's route was re-pointed because its message changed, whether the route
    /// took the message or not (with KVM each is one `KVM_SET_GSI_ROUTING`, unless the message
    /// was refused for a route that carried none).
    pub route_updates: u64,
    /// Table and PBA accesses of the wrong size or alignment, and writes to the PBA.
    pub bad_accesses: u64,
}

/// A function's MSI-X table, pending bits and control state.
pub struct Msix {
    state: Mutex<State>,
    enabled: AtomicBool,
    sent: AtomicU64,
    held: AtomicU64,
    failed: AtomicU64,
    route_updates: AtomicU64,
    bad: AtomicU64,
}

impl Msix {
    /// A table of `vectors` entries, all masked, MSI-X disabled, with a route per vector from
    /// `sink`.
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> io::Result<Self> {
        let n = usize::from(vectors);
        let routes = (0..n)
            .map(|_| {
                Ok(Route {
                    route: sink.new_route()?,
                    carries: None,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Msix {
            state: Mutex::new(State {
                entries: vec![
                    Entry {
                        control: VECTOR_MASKED,
                        ..Entry::default()
                    };
                    n
                ],
                routes,
                pending: vec![false; n],
                enabled: false,
                function_masked: false,
            }),
            enabled: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            held: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            route_updates: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        })
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

    /// The driver wrote the message control register: enable and function mask. Routes of
    /// vectors now deliverable are pointed at their messages; pending messages of vectors no
    /// longer masked are sent.
    pub fn set_control(&self, control: u16) {
        let mut st = self.state.lock().unwrap();
        st.enabled = control & CONTROL_ENABLE != 0;
        st.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.enabled.store(st.enabled, Ordering::Release);
        for v in 0..st.entries.len() {
            self.sync_route(&mut st, v);
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
            self.send(&st, v);
        }
        true
    }

    fn flush(&self, st: &mut State, v: usize) {
        if st.pending[v] && st.deliverable(v) {
            st.pending[v] = false;
            self.send(st, v);
        }
    }

    /// Points vector `v`'s route at its message if the vector is deliverable and the route
    /// carries something else (see the module doc: only table and control writes get here).
    fn sync_route(&self, st: &mut State, v: usize) {
        if !st.deliverable(v) {
            return;
        }
        let e = st.entries[v];
        let r = &mut st.routes[v];
        if r.carries == Some((e.addr(), e.data)) {
            return;
        }
        self.route_updates.fetch_add(1, Ordering::Relaxed);
        r.carries = match r.route.set(e.addr(), e.data) {
            Ok(()) => Some((e.addr(), e.data)),
            Err(err) => {
                log::warn!(
                    "MSI-X: vector {v}: message {:#x} to {:#x} cannot be routed ({err}); its interrupts are counted as failed until the guest programs a valid one",
                    e.data,
                    e.addr()
                );
                None
            }
        };
    }

    /// Sends vector `v`'s message through its route (which carries it: see `sync_route`).
    fn send(&self, st: &State, v: usize) {
        let e = &st.entries[v];
        let r = &st.routes[v];
        let result = if r.carries == Some((e.addr(), e.data)) {
            r.route.send()
        } else {
            Err(io::Error::other("its route does not carry it"))
        };
        match result {
            Ok(()) => self.sent.fetch_add(1, Ordering::Relaxed),
            Err(err) => {
                log::debug!(
                    "MSI-X: vector {v}: message {:#x} to {:#x} not sent: {err}",
                    e.data,
                    e.addr()
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

    /// A write to the table at `offset`; a deliverable vector's route follows its message, and
    /// unmasking a vector with a pending message sends it.
    pub fn table_write(&self, offset: u64, data: &[u8]) {
        let Some(words) = self.words(offset, data.len(), self.table_len()) else {
            return;
        };
        let mut st = self.state.lock().unwrap();
        // An aligned qword covers two words of one entry: the entry is complete before its
        // route follows it.
        let e = (words.start / 4) as usize;
        for (k, w) in words.enumerate() {
            let v = u32::from_le_bytes(data[4 * k..4 * k + 4].try_into().expect("4 bytes"));
            st.entries[e].set_word(w % 4, v);
        }
        self.sync_route(&mut st, e);
        self.flush(&mut st, e);
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
            route_updates: self.route_updates.load(Ordering::Relaxed),
            bad_accesses: self.bad.load(Ordering::Relaxed),
        }
    }
}
