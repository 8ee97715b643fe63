//! Which blame values get their own label in `--metrics`: a live top
//! [`MAX_BLAME`] by blocked time, so the label set stays bounded for a
//! day-long attach and a blame that becomes dominant late still gets its
//! own series.
//!
//! Counters must stay monotonic, so counts never move between series:
//! - A blame counts under [`OTHER`] until it is promoted; its own series
//!   starts at promotion, and what it had under "other" stays there.
//! - A demoted blame's series freeze at their last value: they stay
//!   exported for [`DEMOTED_SHOWN`] (so scrapes see the final value), then
//!   are hidden but remembered, and continue from that value if the blame
//!   comes back. Only the oldest of more than [`MAX_DEMOTED`] demoted
//!   blames are forgotten; one of those that came back would start from 0
//!   again, which Prometheus reads as a counter reset.
//!
//! The ranking is the Space-Saving sketch (Metwally et al. 2005) over at
//! most [`TRACKED`] blames: memory is bounded however many distinct
//! functions block. A newcomer inherits the evicted minimum as its error,
//! and is promoted only on its guaranteed time (count − error), by a
//! margin of [`HYSTERESIS`] over the smallest labelled blame, so two
//! blames of equal weight do not swap labels on every span.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// Blame values with their own label at any moment.
pub const MAX_BLAME: usize = 20;
pub const OTHER: &str = "other";
/// Blames whose blocked time is tracked for the ranking.
pub const TRACKED: usize = 10 * MAX_BLAME;
/// Demoted blames whose frozen series are remembered.
pub const MAX_DEMOTED: usize = 4 * MAX_BLAME;
/// How long a demoted blame's frozen series stay exported.
pub const DEMOTED_SHOWN: Duration = Duration::from_secs(120);
/// A newcomer must beat the smallest labelled blame by this factor.
pub const HYSTERESIS: f64 = 1.25;

/// Blocked seconds of one tracked blame: (count, error); the true total
/// lies in `[count − error, count]`.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    count: f64,
    error: f64,
}

/// What a span's blame changed.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    /// The label to count the span under: the blame, or [`OTHER`].
    pub label: String,
    /// Demoted blames forgotten for good: their series can be dropped.
    pub forgotten: Vec<String>,
}

#[derive(Debug, Default)]
pub struct BlameLabels {
    tracked: HashMap<String, Tally>,
    labelled: HashSet<String>,
    /// Demoted blames and when they lost their label.
    demoted: HashMap<String, Instant>,
}

impl BlameLabels {
    /// Count `secs` of blocked time for `blame` and say which label the
    /// span goes under.
    pub fn record(&mut self, blame: &str, secs: f64, now: Instant) -> Change {
        self.tally(blame, secs);
        let mut forgotten = Vec::new();
        if !self.labelled.contains(blame) && blame != OTHER && self.promote(blame, now) {
            self.demoted.remove(blame);
            while self.demoted.len() > MAX_DEMOTED {
                let Some(oldest) = self
                    .demoted
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(b, _)| b.clone())
                else {
                    break;
                };
                self.demoted.remove(&oldest);
                forgotten.push(oldest);
            }
        }
        let label = if self.labelled.contains(blame) {
            blame.to_string()
        } else {
            OTHER.to_string()
        };
        Change { label, forgotten }
    }

    /// True for the series of a blame demoted more than [`DEMOTED_SHOWN`]
    /// ago: remembered, not exported.
    pub fn hidden(&self, blame: &str, now: Instant) -> bool {
        self.demoted
            .get(blame)
            .is_some_and(|t| now.duration_since(*t) > DEMOTED_SHOWN)
    }

    /// The labelled blames now.
    pub fn labelled(&self) -> impl Iterator<Item = &String> {
        self.labelled.iter()
    }

    fn tally(&mut self, blame: &str, secs: f64) {
        if let Some(t) = self.tracked.get_mut(blame) {
            t.count += secs;
            return;
        }
        let mut error = 0.0;
        if self.tracked.len() >= TRACKED {
            // Evict the smallest unlabelled blame; labelled ones keep their
            // tally so they can be compared with newcomers.
            let victim = self
                .tracked
                .iter()
                .filter(|(b, _)| !self.labelled.contains(*b))
                .min_by(|a, b| a.1.count.total_cmp(&b.1.count))
                .map(|(b, t)| (b.clone(), t.count));
            if let Some((b, min)) = victim {
                self.tracked.remove(&b);
                error = min;
            }
        }
        self.tracked.insert(
            blame.to_string(),
            Tally {
                count: error + secs,
                error,
            },
        );
    }

    /// Give `blame` a label if there is room or it beats the smallest
    /// labelled blame (which is demoted); true if it got one.
    fn promote(&mut self, blame: &str, now: Instant) -> bool {
        let Some(t) = self.tracked.get(blame).copied() else {
            return false;
        };
        if self.labelled.len() < MAX_BLAME {
            self.labelled.insert(blame.to_string());
            return true;
        }
        let weakest = self
            .labelled
            .iter()
            .map(|b| (b, self.tracked.get(b).map_or(0.0, |t| t.count)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(b, c)| (b.clone(), c));
        match weakest {
            Some((w, c)) if t.count - t.error > c * HYSTERESIS => {
                self.labelled.remove(&w);
                self.demoted.insert(w, now);
                self.labelled.insert(blame.to_string());
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_dominant_blame_gets_its_label_and_the_weakest_is_demoted() {
        let mut b = BlameLabels::default();
        let t0 = Instant::now();
        for i in 0..MAX_BLAME {
            // f0 is the weakest: 0.1 s; the others 1 s each.
            let secs = if i == 0 { 0.1 } else { 1.0 };
            assert_eq!(b.record(&format!("f{i}"), secs, t0).label, format!("f{i}"));
        }
        // A newcomer starts under "other" ...
        assert_eq!(b.record("late", 0.1, t0).label, OTHER);
        // ... and takes f0's label once it clearly beats f0.
        let mut got = OTHER.to_string();
        for _ in 0..5 {
            got = b.record("late", 0.1, t0).label;
        }
        assert_eq!(got, "late");
        assert!(!b.labelled().any(|l| l == "f0"));
        assert_eq!(b.record("f0", 0.01, t0).label, OTHER);
        // f0's frozen series stay shown for a while, then are hidden.
        assert!(!b.hidden("f0", t0 + DEMOTED_SHOWN / 2));
        assert!(b.hidden("f0", t0 + DEMOTED_SHOWN * 2));
        assert!(!b.hidden("f1", t0 + DEMOTED_SHOWN * 2));
    }

    #[test]
    fn equal_blames_do_not_swap_labels_on_every_span() {
        let mut b = BlameLabels::default();
        let t0 = Instant::now();
        for i in 0..MAX_BLAME {
            b.record(&format!("f{i}"), 1.0, t0);
        }
        // As much time as a labelled one, but not by the margin.
        for _ in 0..10 {
            assert_eq!(b.record("peer", 0.1, t0).label, OTHER);
        }
        assert_eq!(b.labelled().count(), MAX_BLAME);
    }

    #[test]
    fn memory_is_bounded_however_many_blames_block() {
        let mut b = BlameLabels::default();
        let t0 = Instant::now();
        let mut forgotten = 0;
        for i in 0..5000u32 {
            // Ever-growing weights: each newcomer soon wins a label.
            let secs = 2f64.powi((i / 10) as i32);
            let c = b.record(&format!("g{i}"), secs, t0);
            forgotten += c.forgotten.len();
        }
        assert!(b.tracked.len() <= TRACKED);
        assert_eq!(b.labelled.len(), MAX_BLAME);
        assert!(b.demoted.len() <= MAX_DEMOTED);
        assert!(forgotten > 0);
    }
}
