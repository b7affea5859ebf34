//! One INTx line shared by several PCI functions, as on a real board where INTA# of every slot
//! may be wired to the same interrupt controller input: the line is a wired OR, asserted while
//! any function asserts it. Without this, one function deasserting would drop another's
//! pending interrupt. Also what the device event thread does when KVM lowered the line at the
//! guest's EOI ([`IntxResampler`]): raise it again while any function still asserts it.
//!
//! # One irqfd per line, not per function
//! With KVM the line is one irqfd with a resample eventfd ([`super::KvmIrq::intx`]), owned
//! here and shared by the functions' [`SharedIntx::pin`]s. KVM would also take one resampling
//! irqfd per function on the same GSI, but it lowers them all together at an EOI (one
//! resampler per GSI) and signals every resample eventfd, so each function would have to be
//! asked again anyway; the set of asserting functions kept here is exactly what that question
//! needs. One irqfd per line also costs two descriptors per line instead of per function, one
//! epoll entry on the device thread, and one wake-up per EOI.
//!
//! # Threads
//! A function asserts or deasserts its pin from whichever thread changed its ISR (device
//! thread, API, a vCPU's register access); [`IntxResampler`] runs on the device thread. The
//! set is behind one mutex, held while the line is written, so a resample never sees a
//! function half-way through asserting. A resample racing with a guest's ISR read may raise
//! the line once more after the read: the guest then finds every ISR at 0 (a spurious
//! interrupt, never a lost one).

use super::msix::IntxLine;
use crate::devices::queue_events::watch;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The line and which functions assert it now.
pub struct SharedIntx {
    line: Arc<dyn IntxLine>,
    asserted: Mutex<u64>,
    resamples: AtomicU64,
    reasserted: AtomicU64,
}

/// What the resample path did, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResampleCounters {
    /// Resample events handled (guest EOIs of the line, as KVM reported them).
    pub resamples: u64,
    /// Of those, the ones after which the line was raised again (a function still asserted).
    pub reasserted: u64,
}

impl SharedIntx {
    /// Shares `line`.
    pub fn new(line: Arc<dyn IntxLine>) -> Arc<Self> {
        Arc::new(SharedIntx {
            line,
            asserted: Mutex::new(0),
            resamples: AtomicU64::new(0),
            reasserted: AtomicU64::new(0),
        })
    }

    /// The input of function `index` (below 64; one per function on the line).
    pub fn pin(self: &Arc<Self>, index: u32) -> Arc<dyn IntxLine> {
        assert!(index < 64, "at most 64 functions share a line");
        Arc::new(SharedPin {
            shared: self.clone(),
            bit: 1 << index,
        })
    }

    /// The interrupt controller lowered the line (the guest's EOI): raise it again if any
    /// function still asserts it.
    pub fn resample(&self) {
        let set = self.asserted.lock().unwrap();
        if *set != 0 {
            if let Err(e) = self.line.set_level(true) {
                log::warn!("INTx: the line could not be raised again after the guest's EOI: {e}");
            }
            self.reasserted.fetch_add(1, Ordering::Release);
        }
        self.resamples.fetch_add(1, Ordering::Release);
    }

    /// The functions asserting the line now, bit `index` for the function of [`Self::pin`]
    /// `index` (set and cleared together with the line's writes).
    pub fn asserting(&self) -> u64 {
        *self.asserted.lock().unwrap()
    }

    /// The resample path's counters (a resample is counted once its re-assert, if any, is
    /// done).
    pub fn counters(&self) -> ResampleCounters {
        ResampleCounters {
            resamples: self.resamples.load(Ordering::Acquire),
            reasserted: self.reasserted.load(Ordering::Acquire),
        }
    }

    /// The device thread's subscriber that calls [`SharedIntx::resample`] whenever `resample`
    /// (the line's resample eventfd, [`super::IntxIrqfd::resample_event`]) is signalled.
    pub fn resampler(self: &Arc<Self>, resample: EventFd) -> IntxResampler {
        IntxResampler {
            shared: self.clone(),
            resample,
        }
    }
}

/// The device event thread's subscriber for one shared line's resample eventfd (see the
/// module doc and [`super::kvm`]'s).
pub struct IntxResampler {
    shared: Arc<SharedIntx>,
    resample: EventFd,
}

impl MutEventSubscriber for IntxResampler {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.resample, 0);
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Consumed first: an EOI after this read signals again and wakes the thread again.
        let _ = self.resample.read();
        self.shared.resample();
    }
}

struct SharedPin {
    shared: Arc<SharedIntx>,
    bit: u64,
}

impl IntxLine for SharedPin {
    fn set_level(&self, asserted: bool) -> io::Result<()> {
        let mut set = self.shared.asserted.lock().unwrap();
        let before = *set != 0;
        if asserted {
            *set |= self.bit;
        } else {
            *set &= !self.bit;
        }
        let after = *set != 0;
        // Asserting again re-raises the level (harmless for a level-triggered input); the line
        // only goes low when the last function lets go of it.
        if after != before || asserted {
            self.shared.line.set_level(after)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Mutex<Vec<bool>>);
    impl IntxLine for Recorder {
        fn set_level(&self, asserted: bool) -> io::Result<()> {
            self.0.lock().unwrap().push(asserted);
            Ok(())
        }
    }

    #[test]
    fn the_line_stays_up_while_any_function_asserts_it() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let shared = SharedIntx::new(rec.clone());
        let (a, b) = (shared.pin(0), shared.pin(1));
        a.set_level(true).unwrap();
        b.set_level(true).unwrap();
        a.set_level(false).unwrap(); // b still asserts: the line stays up
        assert_eq!(*rec.0.lock().unwrap(), vec![true, true]);
        b.set_level(false).unwrap();
        b.set_level(false).unwrap(); // already low: nothing
        assert_eq!(*rec.0.lock().unwrap(), vec![true, true, false]);
    }

    #[test]
    fn a_resample_raises_the_line_again_only_while_a_function_asserts_it() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let shared = SharedIntx::new(rec.clone());
        let (a, b) = (shared.pin(0), shared.pin(1));
        shared.resample(); // nobody asserts: nothing
        a.set_level(true).unwrap();
        b.set_level(true).unwrap();
        a.set_level(false).unwrap();
        shared.resample(); // b still does
        b.set_level(false).unwrap();
        shared.resample();
        assert_eq!(*rec.0.lock().unwrap(), vec![true, true, true, false]);
        let c = shared.counters();
        assert_eq!((c.resamples, c.reasserted), (3, 1));
    }
}
