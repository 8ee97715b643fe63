//! Which recorded spans a report keeps: by time, process, thread, duration,
//! cause and blame frame. Pure: it reads spans.
use std::time::Duration;

use crate::{
    cli::parse_duration,
    spans::{Span, blame_of},
};

/// A `--since`/`--until` bound: a wall time, or a time before the end of
/// the recording (`-10m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    UnixNs(u64),
    BeforeEnd(Duration),
}

impl TimeBound {
    /// The bound in Unix ns, for a recording that ends at `end_unix_ns`.
    pub fn resolve(self, end_unix_ns: u64) -> u64 {
        match self {
            Self::UnixNs(t) => t,
            Self::BeforeEnd(d) => end_unix_ns.saturating_sub(d.as_nanos() as u64),
        }
    }
}

/// `2026-11-26T04:00:00Z` (RFC 3339, any offset) or `-10m` (before the end
/// of the recording).
pub fn parse_time(s: &str) -> Result<TimeBound, String> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('-') {
        return parse_duration(rel).map(TimeBound::BeforeEnd);
    }
    let ts: jiff::Timestamp = s.parse().map_err(|e| {
        format!("`{s}` is neither an RFC 3339 time (2026-11-26T04:00:00Z) nor a time before the end (-10m): {e}")
    })?;
    u64::try_from(ts.as_nanosecond())
        .map(TimeBound::UnixNs)
        .map_err(|_| format!("`{s}` is before 1970"))
}

/// The filters of `lagtrace report`; an empty one keeps every span.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<TimeBound>,
    pub until: Option<TimeBound>,
    pub pids: Vec<u32>,
    /// Thread names, or tids.
    pub threads: Vec<String>,
    pub min_duration: Option<Duration>,
    /// Case-insensitive text in the span's cause.
    pub cause: Option<String>,
    /// Text in the span's blame frame (or, in spans without one, its cause).
    pub blame: Option<String>,
}

fn contains(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

impl Filter {
    /// Whether `span` is kept, in a recording that ends at `end_unix_ns`.
    /// Times select spans by their start: `since <= start < until`.
    pub fn keeps(&self, span: &Span, end_unix_ns: u64) -> bool {
        let start = span.start_unix_ns;
        if self.since.is_some_and(|b| start < b.resolve(end_unix_ns))
            || self.until.is_some_and(|b| start >= b.resolve(end_unix_ns))
        {
            return false;
        }
        if !self.pids.is_empty() && !self.pids.contains(&span.pid) {
            return false;
        }
        if !self.threads.is_empty()
            && !self
                .threads
                .iter()
                .any(|t| *t == span.thread || t.parse() == Ok(span.tid))
        {
            return false;
        }
        if self
            .min_duration
            .is_some_and(|d| span.duration_ns < d.as_nanos() as u64)
        {
            return false;
        }
        let cause = span.cause.as_deref().unwrap_or("");
        if self.cause.as_deref().is_some_and(|c| !contains(cause, c)) {
            return false;
        }
        if let Some(b) = &self.blame {
            let hay = blame_of(span).unwrap_or_else(|| cause.to_string());
            if !contains(&hay, b) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::span_with;

    #[test]
    fn times_parse_absolute_and_relative() {
        assert_eq!(
            parse_time("1970-01-01T00:00:01Z"),
            Ok(TimeBound::UnixNs(1_000_000_000))
        );
        assert_eq!(
            parse_time("-10m"),
            Ok(TimeBound::BeforeEnd(Duration::from_secs(600)))
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(
            TimeBound::BeforeEnd(Duration::from_secs(1)).resolve(5_000_000_000),
            4_000_000_000
        );
    }

    #[test]
    fn each_filter_selects() {
        let mut a = span_with(vec![]);
        a.cause = Some("blocked in recvfrom ← fetch (app.py:3)".into());
        a.start_unix_ns = 10;
        let mut b = span_with(vec![]);
        b.cause = Some("cpu".into());
        b.tid = 9;
        b.thread = "worker".into();
        b.duration_ns = 500_000_000;
        b.start_unix_ns = 20;
        b.blame = Some(crate::spans::culprit::Culprit {
            function: "json.loads".into(),
            file: Some("json/__init__.py".into()),
            line: Some(346),
            leaf: None,
            via: None,
            kind: crate::spans::StackKind::OnCpu,
            text: "json.loads (json/__init__.py:346)".into(),
        });
        let kept = |f: &Filter| -> Vec<u32> {
            [&a, &b]
                .iter()
                .filter(|s| f.keeps(s, 30))
                .map(|s| s.tid)
                .collect()
        };
        assert_eq!(kept(&Filter::default()), [8, 9]);
        let f = |g: fn(&mut Filter)| {
            let mut f = Filter::default();
            g(&mut f);
            kept(&f)
        };
        assert_eq!(f(|f| f.cause = Some("CPU".into())), [9]);
        assert_eq!(f(|f| f.threads = vec!["8".into()]), [8]);
        assert_eq!(f(|f| f.threads = vec!["worker".into()]), [9]);
        assert_eq!(
            f(|f| f.min_duration = Some(Duration::from_millis(200))),
            [9]
        );
        assert_eq!(f(|f| f.blame = Some("json.loads".into())), [9]);
        assert_eq!(f(|f| f.blame = Some("fetch".into())), [8]);
        assert_eq!(f(|f| f.since = Some(TimeBound::UnixNs(15))), [9]);
        assert_eq!(
            f(|f| f.until = Some(TimeBound::BeforeEnd(Duration::from_nanos(15)))),
            [8]
        );
        assert_eq!(f(|f| f.pids = vec![1]), Vec::<u32>::new());
    }
}
