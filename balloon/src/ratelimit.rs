//! Rate limiting of log lines caused by guest input.
//!
//! This module owns [`LogLimiter`]: a hostile driver can make the device reject thousands of
//! buffers per second, and each rejection must be counted but must not flood the host log. The
//! limiter allows a fixed number of lines per one-second window and remembers how many it
//! suppressed, so the next allowed line can say so.

use std::time::{Duration, Instant};

/// Default number of warnings per second about guest input.
pub const DEFAULT_WARNINGS_PER_SEC: u32 = 10;

/// Allows at most `max_per_window` events per one-second window.
#[derive(Debug)]
pub struct LogLimiter {
    max_per_window: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed_since_last: u64,
    suppressed_total: u64,
}

impl LogLimiter {
    /// A limiter allowing `max_per_window` lines per second.
    pub fn new(max_per_window: u32) -> Self {
        LogLimiter {
            max_per_window,
            window_start: None,
            in_window: 0,
            suppressed_since_last: 0,
            suppressed_total: 0,
        }
    }

    /// Whether a line may be logged at `now`. If it may, returns how many lines were suppressed
    /// since the last allowed one (so the caller can mention it).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let new_window = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= Duration::from_secs(1),
        };
        if new_window {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.max_per_window {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed_since_last))
        } else {
            self.suppressed_since_last += 1;
            self.suppressed_total += 1;
            None
        }
    }

    /// Total lines suppressed so far.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window_and_reports_suppressed() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3);
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0 + Duration::from_millis(500)), Some(0));
        assert_eq!(l.check(t0 + Duration::from_millis(600)), None);
        assert_eq!(l.check(t0 + Duration::from_millis(999)), None);
        assert_eq!(l.suppressed_total(), 2);
        // A new window opens one second after the first line of the previous one.
        assert_eq!(l.check(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.check(t0 + Duration::from_millis(1001)), Some(0));
        assert_eq!(l.suppressed_total(), 2);
    }
}
