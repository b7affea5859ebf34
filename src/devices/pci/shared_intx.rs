//! One INTx line shared by several PCI functions, as on a real board where INTA# of every slot
//! may be wired to the same interrupt controller input: the line is a wired OR, asserted while
//! any function asserts it. Without this, one function deasserting would drop another's
//! pending interrupt.

use super::msix::IntxLine;
use std::io;
use std::sync::{Arc, Mutex};

/// The line and which functions assert it now.
pub struct SharedIntx {
    line: Arc<dyn IntxLine>,
    asserted: Mutex<u64>,
}

impl SharedIntx {
    /// Shares `line`.
    pub fn new(line: Arc<dyn IntxLine>) -> Arc<Self> {
        Arc::new(SharedIntx {
            line,
            asserted: Mutex::new(0),
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
}
