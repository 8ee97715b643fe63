//! The span boundaries against a second witness, independent of lagtrace:
//! the kernel's own ftrace records of the loop thread's epoll calls
//! (`common::witness`). Other tests fall back to the target's own truth
//! where there is no witness; these insist on one for epoll loops, and
//! hold each span's boundaries to its witnessed iteration's.
mod common;

use common::witness::{Boundary, parse_line};
use common::*;

/// Trace `target`'s stalls; every stall must have a witnessed iteration,
/// and `assert_stalls_witnessed` holds its span to it.
fn spans_match_the_witness(test: &str, target: &mut Target) {
    let fin = trace_scenario(target, &[]);
    let Some(w) = &fin.witness else {
        eprintln!("SKIP {test}: no ftrace witness (the NOTE above says why)");
        return;
    };
    let stalls = target.stalls();
    assert_eq!(stalls.len(), 2, "the target's stalls");
    for t in &stalls {
        let span = matching_span(&fin.spans, t);
        assert_eq!(span.len(), 1, "{t:?}: {span:?}");
        let start = span[0]["start_unix_ns"].as_u64().unwrap();
        let it = w
            .iteration(t.tid, start, witness_tolerance_ns())
            .unwrap_or_else(|| panic!("{}: no witnessed epoll iteration", t.label));
        let end = start + span[0]["duration_ns"].as_u64().unwrap();
        let us = |a: u64, b: u64| (a as i64 - b as i64) / 1000;
        eprintln!(
            "WITNESS {test} {}: span {:.3} ms, starts {:+} µs from the epoll return, ends \
             {:+} µs from the next epoll call; the loop's own work around the stall {:.3} ms",
            t.label,
            (end - start) as f64 / 1e6,
            us(start, it.began),
            us(end, it.ended),
            ((it.ended - it.began) as f64 - t.duration_ns() as f64) / 1e6,
        );
    }
    let errors = assert_stalls_witnessed(&fin, &stalls, 50);
    assert_eq!(errors.len(), 2, "both stalls checked");
}

#[test]
fn asyncio_spans_are_the_iterations_ftrace_sees() {
    let test = "asyncio_spans_are_the_iterations_ftrace_sees";
    if !root_or_skip(test) {
        return;
    }
    let Some(py) = python3_or_skip(test) else {
        return;
    };
    let script = targets_dir().join("asyncio_stalls.py");
    let args = [
        script.to_str().unwrap(),
        "--mode",
        "cpu",
        "--stalls-ms",
        "80,150",
    ];
    spans_match_the_witness(test, &mut Target::start(&py, &args));
}

#[test]
fn node_spans_are_the_iterations_ftrace_sees() {
    let test = "node_spans_are_the_iterations_ftrace_sees";
    if !root_or_skip(test) {
        return;
    }
    let Some(node) = tool_or_skip(test, &["node"]) else {
        return;
    };
    let script = targets_dir().join("node_stalls.js");
    let args = [script.to_str().unwrap(), "--stalls-ms", "80,150"];
    spans_match_the_witness(test, &mut Target::start(&node, &args));
}

#[test]
fn ftrace_lines_parse() {
    assert_eq!(
        parse_line("            node-1   [001] ..... 23806.878257: sys_epoll_pwait(epfd: 0xe)"),
        Some((1, Boundary::Enter(23_806_878_257_000, true)))
    );
    assert_eq!(
        parse_line(" tokio-rt-wkr-77 [000] d..1. 5.000001: sys_epoll_wait -> 0x1"),
        Some((77, Boundary::Exit(5_000_001_000, true)))
    );
    assert_eq!(
        parse_line(" tokio-rt-wkr-77 [000] ..... 6.000002: sys_futex(uaddr: 0x7f, op: 0x80)"),
        Some((77, Boundary::Enter(6_000_002_000, false)))
    );
    assert_eq!(parse_line("# tracer: nop"), None);
    assert_eq!(
        parse_line("  node-1 [001] ..... 1.000000: sys_read(fd: 0x3)"),
        None
    );
}
