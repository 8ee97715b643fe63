//! Section 5: what lagtrace sees of known stalls, next to what the usual
//! in-process lag monitor (sleep 1 s, log the oversleep) sees of the same
//! stalls in the same process, and whether either can name the function
//! that blocked (`checksum_blob`).
use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    Ctx, Section,
    lagtrace::Lagtrace,
    proc::{self, signal},
    report::Table,
    stats::ms,
    targets,
};

const CULPRIT: &str = "checksum_blob";
/// A monitor wake-up this late counts as having seen something.
const MONITOR_FLOOR_MS: f64 = 1.0;

/// One injected stall, as the target reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    pub ms: u64,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// One blocking span from lagtrace's --spans file.
#[derive(Debug, Clone)]
pub struct SpanRec {
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Each stack's frames, root first, with its sample count.
    pub stacks: Vec<(Vec<String>, u64)>,
}

/// One line of the lag monitor's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Wake {
    pub woke_ns: u64,
    pub oversleep_ms: f64,
}

pub fn parse_stalls(stdout: &[String]) -> Vec<Stall> {
    stdout
        .iter()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["kind"] == "stall").then_some(())?;
            Some(Stall {
                ms: v["ms"].as_u64()?,
                start_ns: v["start_unix_ns"].as_u64()?,
                end_ns: v["end_unix_ns"].as_u64()?,
            })
        })
        .collect()
}

pub fn parse_spans(text: &str) -> Vec<SpanRec> {
    text.lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            let stacks = v["stacks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            let frames = s["frames"]
                                .as_array()
                                .map(|f| {
                                    f.iter()
                                        .filter_map(|x| x.as_str().map(str::to_owned))
                                        .collect()
                                })
                                .unwrap_or_default();
                            (frames, s["samples"].as_u64().unwrap_or(0))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(SpanRec {
                start_ns: v["start_unix_ns"].as_u64()?,
                duration_ns: v["duration_ns"].as_u64()?,
                stacks,
            })
        })
        .collect()
}

pub fn parse_wakes(text: &str) -> Vec<Wake> {
    text.lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            Some(Wake {
                woke_ns: v["woke_unix_ns"].as_u64()?,
                oversleep_ms: v["oversleep_ms"].as_f64()?,
            })
        })
        .collect()
}

fn overlap_ns(a: (u64, u64), b: (u64, u64)) -> u64 {
    a.1.min(b.1).saturating_sub(a.0.max(b.0))
}

/// The span covering most of `stall`, if it covers at least half of it.
pub fn span_for<'a>(stall: &Stall, spans: &'a [SpanRec]) -> Option<&'a SpanRec> {
    let want = (stall.end_ns - stall.start_ns) / 2;
    spans
        .iter()
        .map(|s| {
            let o = overlap_ns(
                (s.start_ns, s.start_ns + s.duration_ns),
                (stall.start_ns, stall.end_ns),
            );
            (o, s)
        })
        .filter(|(o, _)| *o > 0 && *o >= want)
        .max_by_key(|(o, _)| *o)
        .map(|(_, s)| s)
}

/// The monitor line of a wake-up that happened during `stall` (late because
/// of it), if any.
pub fn wake_for<'a>(stall: &Stall, wakes: &'a [Wake]) -> Option<&'a Wake> {
    wakes.iter().find(|w| {
        w.oversleep_ms >= MONITOR_FLOOR_MS
            && w.woke_ns >= stall.start_ns
            && w.woke_ns <= stall.end_ns + 50_000_000
    })
}

/// A Python frame as lagtrace prints it: `func (file.py:line)`, or a
/// perf-map trampoline `py::func:file.py`.
fn is_python(frame: &str) -> bool {
    frame.starts_with("py::") || frame.contains(".py:")
}

fn is_kernel(frame: &str) -> bool {
    frame.ends_with("_[k]")
}

/// Whether any frame names the culprit, and if not, why not.
pub fn culprit(span: &SpanRec) -> String {
    let frames = || span.stacks.iter().flat_map(|(f, _)| f.iter());
    if frames().any(|f| f.contains(CULPRIT)) {
        return "**yes**".into();
    }
    let python = frames().filter(|f| is_python(f)).count();
    let deepest = span.stacks.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
    if python > 0 {
        format!("no ({python} Python frames, none `{CULPRIT}`)")
    } else {
        format!(
            "no (no Python frames in its {} stacks, ≤ {deepest} frames deep)",
            span.stacks.len()
        )
    }
}

/// The innermost two frames, `leaf ← caller`, of the most-sampled stack
/// that has Python frames (Python frames only), else of the most-sampled
/// stack (kernel frames left out).
pub fn hottest(span: &SpanRec) -> String {
    let with_python = span
        .stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|x| is_python(x)))
        .max_by_key(|(_, n)| *n);
    let (frames, keep): (&Vec<String>, fn(&str) -> bool) = match with_python {
        Some((f, _)) => (f, is_python),
        None => match span.stacks.iter().max_by_key(|(_, n)| *n) {
            Some((f, _)) => (f, |x| !is_kernel(x)),
            None => return "(no stacks)".into(),
        },
    };
    let inner: Vec<&str> = frames
        .iter()
        .rev()
        .map(String::as_str)
        .filter(|x| keep(x))
        .take(2)
        .collect();
    if inner.is_empty() {
        "(kernel frames only)".into()
    } else {
        inner.join(" ← ")
    }
}

pub fn section_resolution(ctx: &Ctx) -> Result<Section> {
    let log = ctx.out.join("monitor.jsonl");
    let spans_path = ctx.out.join("injected-spans.jsonl");
    let _ = fs::remove_file(&spans_path);
    let mut target = targets::injected_stalls(&ctx.python, &log)?;
    let args: Vec<String> = vec![
        "--threshold".into(),
        "10ms".into(),
        "--spans".into(),
        spans_path.display().to_string(),
    ];
    let lt = Lagtrace::start(&ctx.lagtrace, target.pid, &args)?;
    // A moment of healthy loop before the first stall.
    proc::sleep(Duration::from_millis(500))?;
    signal(target.pid, libc::SIGUSR1)?;
    let done = target
        .proc
        .wait_line("DONE", Duration::from_secs(60), |_, l| l == "DONE");
    // Let the monitor wake once more after the last stall.
    let waited = proc::sleep(Duration::from_millis(1200));
    let run = lt.stop(None)?;
    target.proc.stop()?;
    done?;
    waited?;

    let stalls = parse_stalls(&target.proc.stdout());
    let spans = parse_spans(&read(&spans_path)?);
    let wakes = parse_wakes(&read(&log)?);
    let mut t = Table::new(&[
        "stall",
        "seen by lagtrace (duration)",
        "named culprit?",
        "lagtrace's innermost frames (busiest stack)",
        "seen by monitor (its oversleep)",
        "named culprit (monitor)",
    ]);
    let mut seen_lt = 0;
    let mut seen_mon = 0;
    let mut named = 0;
    let mut matched: Vec<u64> = Vec::new();
    for s in &stalls {
        let span = span_for(s, &spans);
        let wake = wake_for(s, &wakes);
        if let Some(sp) = span {
            seen_lt += 1;
            matched.push(sp.start_ns);
            if culprit(sp).starts_with("**yes") {
                named += 1;
            }
        }
        seen_mon += usize::from(wake.is_some());
        t.row(vec![
            ms(s.ms as f64),
            span.map_or("**missed**".into(), |sp| {
                format!("yes, {}", ms(sp.duration_ns as f64 / 1e6))
            }),
            span.map_or("–".into(), culprit),
            span.map_or("–".into(), |sp| format!("`{}`", hottest(sp))),
            wake.map_or("no (no wake-up fell inside it)".into(), |w| {
                format!("yes, {}", ms(w.oversleep_ms))
            }),
            "no (it never can)".into(),
        ]);
    }
    let other_spans = spans
        .iter()
        .filter(|s| !matched.contains(&s.start_ns))
        .count();
    let perf = if ctx.python.perf_maps {
        format!(
            "Python {}, run with `-X perf` so JIT trampolines are in a perf map too",
            ctx.python.version
        )
    } else {
        format!("Python {}", ctx.python.version)
    };
    let mut body = format!(
        "`bench/targets/injected_stalls.py` ({perf}) blocks its loop on the CPU in \
         `{CULPRIT}()` for each stall, 0.75 s apart, while its in-process monitor sleeps 1 s \
         at a time and logs its oversleep. lagtrace traces it with `--threshold 10ms --spans`. \
         A stall is *seen by lagtrace* if one span covers at least half of it; *seen by the \
         monitor* if a wake-up ≥ {MONITOR_FLOOR_MS} ms late happened during it (the monitor \
         only notices a stall that covers one of its wake-ups, and then only the part after \
         the wake-up was due). *Named culprit* means some frame of the span's stacks contains \
         `{CULPRIT}`.\n\n"
    );
    body.push_str(&t.render());
    let _ = write!(
        body,
        "\nlagtrace also reported {other_spans} span(s) over 10 ms outside the injected stalls; \
         the monitor logged {} wake-ups ({} of them ≥ {MONITOR_FLOOR_MS} ms late). lagtrace: {}.\n",
        wakes.len(),
        wakes
            .iter()
            .filter(|w| w.oversleep_ms >= MONITOR_FLOOR_MS)
            .count(),
        run.ended()
    );
    let headline = vec![format!(
        "resolution: lagtrace saw {seen_lt}/{} injected stalls (20 ms–2 s) and named `{CULPRIT}` in {named}; \
         the 1 s monitor saw {seen_mon}/{} and can name none",
        stalls.len(),
        stalls.len()
    )];
    Ok(Section {
        title: "5. Resolution vs an in-process lag monitor".into(),
        body,
        headline,
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(ms: u64, start: u64) -> Stall {
        Stall {
            ms,
            start_ns: start,
            end_ns: start + ms * 1_000_000,
        }
    }

    fn span(start: u64, dur: u64, frames: &[&str]) -> SpanRec {
        SpanRec {
            start_ns: start,
            duration_ns: dur,
            stacks: vec![(frames.iter().map(|s| (*s).to_owned()).collect(), 3)],
        }
    }

    #[test]
    fn parses_the_three_logs() {
        let out = vec![
            "READY 1".to_owned(),
            r#"{"kind": "stall", "ms": 20, "start_unix_ns": 100, "end_unix_ns": 200}"#.to_owned(),
            "DONE".to_owned(),
        ];
        assert_eq!(
            parse_stalls(&out),
            [Stall {
                ms: 20,
                start_ns: 100,
                end_ns: 200
            }]
        );
        let spans = parse_spans(
            r#"{"pid":1,"tid":1,"start_unix_ns":5,"duration_ns":7,"stacks":[{"frames":["a","b"],"samples":4,"kind":"on-cpu"}]}"#,
        );
        assert_eq!(spans[0].stacks, [(vec!["a".into(), "b".into()], 4)]);
        let wakes = parse_wakes(
            "{\"kind\": \"lag\", \"woke_unix_ns\": 9, \"oversleep_ms\": 1.5}\nnot json\n",
        );
        assert_eq!(
            wakes,
            [Wake {
                woke_ns: 9,
                oversleep_ms: 1.5
            }]
        );
    }

    #[test]
    fn matches_spans_and_wakes() {
        let s = stall(200, 1_000_000_000);
        let spans = [
            span(900_000_000, 50_000_000, &["x"]),
            span(
                990_000_000,
                215_000_000,
                &["main", "py::checksum_blob:/a.py"],
            ),
        ];
        let got = span_for(&s, &spans).unwrap();
        assert_eq!(got.duration_ns, 215_000_000);
        assert_eq!(culprit(got), "**yes**");
        assert_eq!(hottest(got), "py::checksum_blob:/a.py");
        let walked = span(
            0,
            1,
            &[
                "<module> (a.py:73)",
                "inject (a.py:48)",
                "checksum_blob (a.py:35)",
                "pymalloc_alloc (Objects/obmalloc.c:1535)",
                "schedule_[k]",
            ],
        );
        assert_eq!(culprit(&walked), "**yes**");
        assert_eq!(
            hottest(&walked),
            "checksum_blob (a.py:35) ← inject (a.py:48)"
        );
        let native = span(0, 1, &["main", "pymalloc_alloc (o.c:1)", "schedule_[k]"]);
        assert_eq!(hottest(&native), "pymalloc_alloc (o.c:1) ← main");
        assert!(span_for(&stall(200, 5_000_000_000), &spans).is_none());
        assert!(culprit(&spans[0]).starts_with("no (no Python frames"));

        let wakes = [
            Wake {
                woke_ns: 1_150_000_000,
                oversleep_ms: 0.3,
            },
            Wake {
                woke_ns: 1_200_100_000,
                oversleep_ms: 120.0,
            },
        ];
        assert_eq!(wake_for(&s, &wakes).unwrap().oversleep_ms, 120.0);
        assert!(wake_for(&stall(20, 0), &wakes).is_none());
    }
}
