//! `--flamegraph FILE`: the stacks of all blocking spans as an interactive
//! SVG flame graph, rendered with inferno from the same folded lines as
//! `--folded`. It must not fail the trace for lack of data: with no spans it
//! still writes a valid SVG that says so.
use std::{io, path::PathBuf};

use inferno::flamegraph::{
    self,
    color::{MultiPalette, Palette},
};

use super::{Recorder, TraceInfo, file::AtomicFile, fmt_ns, sanitize};
use crate::{aggregate::fold::Folded, error::Result, spans::Span};

pub struct FlameGraphFile {
    file: Option<AtomicFile>,
    folded: Folded,
    period_ns: u64,
    with_pid: bool,
    spans: u64,
    lag_ns: u64,
}

impl FlameGraphFile {
    /// Creates the file's temporary copy now, so a path that cannot be
    /// written fails before the trace.
    pub fn new(path: PathBuf, period_ns: u64, with_pid: bool) -> Result<Self> {
        Ok(Self {
            file: Some(AtomicFile::create(&path)?),
            folded: Folded::default(),
            period_ns,
            with_pid,
            spans: 0,
            lag_ns: 0,
        })
    }

    fn title(&self, info: &TraceInfo) -> String {
        let pids: Vec<String> = info.pids.iter().map(u32::to_string).collect();
        let plural = if self.spans == 1 { "" } else { "s" };
        format!(
            "lagtrace: pid {} ({}) — threshold {}, {} blocking span{plural}, {} of lag",
            pids.join(", "),
            sanitize::xml(&info.comms.join(", ")),
            fmt_ns(info.threshold_ns),
            self.spans,
            fmt_ns(self.lag_ns),
        )
    }

    fn subtitle(&self) -> String {
        format!(
            "weighted by samples at 1/{}; [off-cpu] and [runqueue] frames mark time off the CPU",
            fmt_ns(self.period_ns)
        )
    }

    fn render(&self, title: String, subtitle: String) -> io::Result<Vec<u8>> {
        let mut opts = flamegraph::Options::default();
        opts.title = title;
        opts.subtitle = Some(subtitle.clone());
        opts.notes = subtitle;
        opts.count_name = "samples".into();
        // Perl's palette: `_[k]` frames orange, `::` (C++, Rust) yellow, the rest red.
        opts.colors = Palette::Multi(MultiPalette::Perl);
        opts.hash = true;
        let lines: Vec<String> = self.folded.lines().collect();
        let mut svg = Vec::new();
        flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut svg)?;
        Ok(svg)
    }
}

impl Recorder for FlameGraphFile {
    fn record(&mut self, span: &Span) -> Result<()> {
        self.folded.add(span, self.period_ns, self.with_pid);
        self.spans += 1;
        self.lag_ns += span.duration_ns;
        Ok(())
    }

    fn folded(&self) -> Option<&Folded> {
        Some(&self.folded)
    }

    fn finish(&mut self, info: &TraceInfo) -> Result<Option<PathBuf>> {
        let title = self.title(info);
        let svg = if self.folded.is_empty() {
            let why = if self.spans == 0 {
                "no blocking spans"
            } else {
                "no stack samples in the blocking spans"
            };
            empty_svg(&title, why)
        } else {
            match self.render(title.clone(), self.subtitle()) {
                Ok(svg) => svg,
                Err(e) => {
                    log::warn!("rendering the flame graph: {e}");
                    empty_svg(&title, &format!("could not render the flame graph: {e}"))
                }
            }
        };
        let Some(mut file) = self.file.take() else {
            return Ok(None);
        };
        file.write_all(&svg)?;
        Ok(Some(file.commit()?))
    }
}

/// A small valid SVG with the title and a line saying why there is no graph.
fn empty_svg(title: &str, why: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="90" viewBox="0 0 1200 90" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="rgb(238,238,238)"/>
<text x="600" y="30" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text x="600" y="65" text-anchor="middle" font-family="Verdana" font-size="14">{}</text>
</svg>
"#,
        xml_escape(title),
        xml_escape(why)
    )
    .into_bytes()
}

/// Markup escaped, and characters XML forbids shown as escapes.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in sanitize::xml(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::fold::tests::{span_with, stack},
        spans::StackKind,
    };

    fn info() -> TraceInfo {
        TraceInfo {
            pids: vec![7],
            comms: vec!["python3".into()],
            threshold_ns: 50_000_000,
            period_ns: 10_000_000,
            summary: Default::default(),
        }
    }

    use std::fs;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lagtrace-{}-{name}.svg", std::process::id()))
    }

    #[test]
    fn renders_spans_with_title_and_kernel_frames() {
        let path = temp_path("flame");
        let mut rec = FlameGraphFile::new(path.clone(), 10_000_000, false).unwrap();
        let a = span_with(vec![stack(
            &["main", "busy_loop (src/app.c:12)"],
            5,
            StackKind::OnCpu,
            0,
        )]);
        let b = span_with(vec![stack(
            &["main", "read_config", "do_nanosleep_[k]"],
            1,
            StackKind::OffCpu,
            30_000_000,
        )]);
        rec.record(&a).unwrap();
        rec.record(&b).unwrap();
        assert_eq!(rec.finish(&info()).unwrap(), Some(path.clone()));
        let svg = fs::read_to_string(&path).unwrap();
        let _ = fs::remove_file(&path);
        assert!(
            svg.starts_with("<?xml") || svg.starts_with("<svg"),
            "{}",
            &svg[..100.min(svg.len())]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        for name in [
            "busy_loop (src/app.c:12)",
            "read_config",
            "[off-cpu]",
            "MainThread",
        ] {
            assert!(svg.contains(name), "{name} missing");
        }
        // inferno shows `do_nanosleep_[k]` as `do_nanosleep`, in orange (no blue).
        let kernel = svg
            .split("<title>do_nanosleep (")
            .nth(1)
            .expect("kernel frame missing");
        let fill = kernel
            .split("fill=\"rgb(")
            .nth(1)
            .and_then(|f| f.split(')').next());
        assert!(
            fill.is_some_and(|f| f.ends_with(",0")),
            "kernel frame not orange: {fill:?}"
        );
        assert!(svg.contains(
            "lagtrace: pid 7 (python3) — threshold 50 ms, 2 blocking spans, 200 ms of lag"
        ));
        assert!(svg.contains("weighted by samples at 1/10 ms"));
        assert!(svg.contains("samples"));
    }

    #[test]
    fn no_spans_still_writes_a_valid_svg() {
        let path = temp_path("empty");
        let mut rec = FlameGraphFile::new(path.clone(), 10_000_000, true).unwrap();
        let mut i = info();
        i.comms = vec!["a<b>&c".into()];
        assert_eq!(rec.finish(&i).unwrap(), Some(path.clone()));
        let svg = fs::read_to_string(&path).unwrap();
        let _ = fs::remove_file(&path);
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("0 blocking spans") && svg.contains("no blocking spans"));
        assert!(svg.contains("a&lt;b&gt;&amp;c") && !svg.contains("a<b>"));
    }
}
