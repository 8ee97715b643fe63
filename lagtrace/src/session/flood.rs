//! Flood control: how much work one turn of the session loop may do, and
//! how many spans per second are fully processed (symbolized, printed,
//! written). A target that produces spans faster than that (a threshold
//! near its normal iteration time, a hundred busy loop threads) must not
//! starve the control path: signals, `--duration` and the target's exit are
//! handled within a turn, and the excess spans are counted, not lost
//! silently.
//!
//! It decides nothing about what a span is; it only says yes or no.
use std::time::{Duration, Instant};

/// Spans per second that are fully processed, sustained.
pub const SPANS_PER_SEC: u64 = 500;
/// Spans processed back to back before the rate applies (a burst of stalls
/// after a pause is normal and should be seen whole).
pub const SPAN_BURST: u64 = 2000;
/// Longest one drain of the ring buffer runs before the loop looks at
/// signals and timers again.
pub const DRAIN_SLICE: Duration = Duration::from_millis(20);
/// At the end: how long the last records are processed, then how long the
/// rest is counted and dropped, so lagtrace exits within a second of the
/// signal or the deadline however fast the kernel produces.
pub const FINAL_DRAIN: Duration = Duration::from_millis(300);
pub const FINAL_DISCARD: Duration = Duration::from_millis(150);

/// A token bucket of spans.
#[derive(Debug)]
pub struct SpanBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Spans refused: counted in the summary, not printed or written.
    pub refused: u64,
}

impl Default for SpanBudget {
    fn default() -> Self {
        Self::new(SPANS_PER_SEC, SPAN_BURST, Instant::now())
    }
}

impl SpanBudget {
    pub fn new(per_sec: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: per_sec as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
            refused: 0,
        }
    }

    /// May one more span be processed at `now`?
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = SpanBudget::new(100, 10, t0);
        let first: usize = (0..50).filter(|_| b.take(t0)).count();
        assert_eq!(first, 10, "the burst");
        assert_eq!(b.refused, 40);
        // One second later, 100 more (capped by the burst of 10).
        let later = t0 + Duration::from_secs(1);
        assert_eq!((0..50).filter(|_| b.take(later)).count(), 10);
        // At the rate: 10 ms buys one span.
        let mut ok = 0;
        for i in 1..=100 {
            if b.take(later + Duration::from_millis(10 * i)) {
                ok += 1;
            }
        }
        assert!((99..=100).contains(&ok), "{ok}");
    }
}
