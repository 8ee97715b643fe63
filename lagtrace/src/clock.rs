//! Conversion from the kernel's CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall
//! clock ns, so span starts compare with the target's own `time.time_ns()`.
use std::time::{SystemTime, UNIX_EPOCH};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The offset between the two clocks, measured at one instant.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    /// Read both clocks a few times and keep the tightest pair, so the offset
    /// is off by well under a microsecond.
    pub fn measure() -> Self {
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..5 {
            let m0 = monotonic_ns();
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i128;
            let m1 = monotonic_ns();
            let spread = m1 - m0;
            let offset = wall - (m0 as i128 + (spread / 2) as i128);
            if best.is_none_or(|(s, _)| spread < s) {
                best = Some((spread, offset));
            }
        }
        Self {
            offset_ns: best.map(|(_, o)| o).unwrap_or(0),
        }
    }

    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }

    pub fn now_mono_ns() -> u64 {
        monotonic_ns()
    }
}

/// Broken-down local time of a Unix time in seconds.
pub fn local_tm(unix_secs: u64) -> libc::tm {
    let secs = unix_secs as libc::time_t;
    // SAFETY: localtime_r fills the tm we own from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    tm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let c = WallClock::measure();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let conv = c.to_unix_ns(WallClock::now_mono_ns()) as i128;
        assert!((conv - wall).abs() < 2_000_000, "off by {} ns", conv - wall);
    }
}
