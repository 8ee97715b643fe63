//! The culprit of a whole span: the blame frame ([`blame`](super::blame))
//! its time is spent under, weighed over its stacks. A span mostly off the
//! CPU is blamed by its off-CPU stacks, otherwise by its on-CPU stacks and
//! the stacks it was preempted in (runqueue time is the same code waiting
//! for a CPU, so it counts with it, not as a cause of its own). Pure.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    blame::{self, Rules},
    model::{Span, StackKind},
};
use crate::symbolize::Frame;

/// The span's culprit, as the JSON `blame` field carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    /// The blame function, in full (`load_catalog`, `app::handler::{{closure}}`).
    pub function: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The innermost frame of the heaviest stack under it, shortened
    /// (`json.raw_decode`, `__libc_recv`), where it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf: Option<String>,
    /// The library the blame frame called into (`requests`, `aiohttp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Which stacks it was found in: `on-cpu` or `off-cpu`.
    pub kind: StackKind,
    /// The line form: `load_catalog (frontend.py:18) → json.raw_decode`.
    pub text: String,
    // Files of format 1 also hold `frame` and `group`, which are computed
    // from the fields above ([`Culprit::frame_text`], [`Culprit::group`]);
    // they are no longer written and are ignored when read.
}

impl Culprit {
    /// The blame frame as far as display and grouping need it (function,
    /// file, line; the kind does not change either).
    fn frame(&self) -> Frame {
        Frame {
            file: self.file.clone(),
            ..Frame::python(self.function.clone(), String::new(), self.line)
        }
    }

    /// The blame frame alone: `load_catalog (frontend.py:18)`.
    pub fn frame_text(&self) -> String {
        blame::display(&self.frame())
    }

    /// The summary's grouping key: function and file, no line.
    pub fn group(&self) -> String {
        blame::group_key(&self.frame())
    }
}

/// Which stack kinds speak for a span: off-CPU ones when it was mostly
/// blocked, else on-CPU and runqueue ones.
fn blamed_kinds(span: &Span) -> [StackKind; 2] {
    if span.off_cpu_ns > span.on_cpu_ns {
        [StackKind::OffCpu, StackKind::OffCpu]
    } else {
        [StackKind::OnCpu, StackKind::Runqueue]
    }
}

/// The culprit of `span`, if any of its stacks has a user frame.
pub fn of(span: &Span, rules: &Rules) -> Option<Culprit> {
    let kinds = blamed_kinds(span);
    let any = span.stacks.iter().any(|s| kinds.contains(&s.kind));
    let chosen = |s: &&super::StackCount| !any || kinds.contains(&s.kind);
    // Weight per blame function, and per leaf under it; the heaviest stack
    // of each function gives its line and kind.
    struct Group {
        weight: u64,
        top: u64,
        blame: blame::Blame,
        kind: StackKind,
        leaves: HashMap<Option<String>, u64>,
    }
    let mut groups: HashMap<String, Group> = HashMap::new();
    for stack in span.stacks.iter().filter(chosen) {
        if stack.kind == StackKind::Stopped {
            continue;
        }
        let Some(b) = rules.blame(&stack.frames) else {
            continue;
        };
        let weight = stack.weight_ns.max(stack.samples);
        let g = groups
            .entry(blame::group_key(&b.frame))
            .or_insert_with(|| Group {
                weight: 0,
                top: 0,
                blame: b.clone(),
                kind: stack.kind,
                leaves: HashMap::new(),
            });
        g.weight += weight;
        *g.leaves
            .entry(b.leaf.as_ref().map(blame::display_leaf))
            .or_default() += weight;
        if weight > g.top {
            g.top = weight;
            g.blame = b;
            g.kind = stack.kind;
        }
    }
    let (_, g) = groups
        .into_iter()
        .max_by(|a, b| a.1.weight.cmp(&b.1.weight).then_with(|| b.0.cmp(&a.0)))?;
    let leaf = g
        .leaves
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .and_then(|(l, _)| l);
    let b = blame::Blame {
        leaf: None,
        ..g.blame
    };
    let kind = if g.kind == StackKind::Runqueue {
        StackKind::OnCpu
    } else {
        g.kind
    };
    let text = match &leaf {
        Some(l) => format!("{} → {l}", blame::display(&b.frame)),
        None => blame::display(&b.frame),
    };
    Some(Culprit {
        function: b.frame.function.clone(),
        file: b.frame.file.clone(),
        line: b.frame.line,
        leaf,
        via: b.via.clone(),
        kind,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fold::tests::{span_with, stack};

    /// `frame` and `group` are derived: not written, and a format-1 file
    /// that holds them still reads, to the same values.
    #[test]
    fn derived_fields_are_not_recorded_and_old_files_still_read() {
        let old = serde_json::json!({
            "function": "json.loads", "file": "json/__init__.py", "line": 346,
            "kind": "on-cpu", "text": "json.loads (__init__.py:346)",
            "frame": "json.loads (__init__.py:346)", "group": "json.loads (__init__.py)"
        });
        let c: Culprit = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(c.frame_text(), old["frame"]);
        assert_eq!(c.group(), old["group"]);
        let new = serde_json::to_value(&c).unwrap();
        assert!(
            new.get("frame").is_none() && new.get("group").is_none(),
            "{new}"
        );
        assert_eq!(serde_json::from_value::<Culprit>(new).unwrap(), c);
    }

    #[test]
    fn a_mostly_cpu_span_with_runqueue_is_blamed_on_its_code() {
        let mut s = span_with(vec![
            stack(
                &[
                    "main (app.py:1)",
                    "handler (app.py:9)",
                    "loads (json/__init__.py:346)",
                ],
                6,
                StackKind::OnCpu,
                6_000_000,
            ),
            stack(
                &[
                    "main (app.py:1)",
                    "handler (app.py:10)",
                    "loads (json/__init__.py:346)",
                ],
                1,
                StackKind::Runqueue,
                5_000_000,
            ),
            stack(
                &["main (app.py:1)", "logit (app.py:30)", "write"],
                1,
                StackKind::OnCpu,
                1_000_000,
            ),
        ]);
        s.on_cpu_ns = 7_000_000;
        s.runqueue_ns = 5_000_000;
        let c = of(&s, &Rules::default()).unwrap();
        assert_eq!(c.function, "handler");
        assert_eq!(c.group(), "handler (app.py)");
        assert_eq!(c.frame_text(), "handler (app.py:9)");
        assert_eq!(c.kind, StackKind::OnCpu);
        assert_eq!(c.text, "handler (app.py:9) → json.loads");
        // The live cause leads with it even when waiting for a CPU dominates.
        s.runqueue_ns = 70_000_000;
        s.blame = Some(c);
        assert_eq!(
            crate::spans::cause::classify(&s),
            "runqueue in handler (app.py:9) → json.loads"
        );
        assert_eq!(
            crate::spans::cause::cause_key(&s, None),
            "cpu in handler (app.py)"
        );
    }
}
