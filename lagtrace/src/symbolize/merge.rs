//! Merging a sample's Python frames with its native frames.
//!
//! Both come from the one kernel record, taken at the same instant. Each
//! `_PyEval_EvalFrameDefault` call runs one or more Python frames: the
//! first of them is flagged as entered from C (`PY_FRAME_ENTRY`), so the
//! Python frames split into one group per eval call. When the native unwind
//! found exactly as many eval frames as there are groups, each eval frame is
//! replaced by its group, in place: C extensions and interpreter entry
//! points keep their positions between Python frames.
//!
//! The kernel's `.eh_frame` unwinder sees the eval frames even in CPython
//! built without frame pointers. When the counts differ (the native walk
//! ended early: no table, a read error; or a truncated Python stack),
//! the Python frames form the trunk and the native frames after the
//! innermost eval frame are the leaves; with no eval frame at all, only
//! the frames of the interrupted instruction itself are trusted as leaves.

use super::frame::{Frame, FrameKind};

/// True for the interpreter's bytecode loop, where Python frames live.
pub fn is_eval_frame(frame: &Frame) -> bool {
    let f = frame.function.as_str();
    frame.kind == FrameKind::Native
        && (f.starts_with("_PyEval_EvalFrameDefault")
            || f == "_PyEval_EvalFrame"
            || f.starts_with("PyEval_EvalFrameEx"))
}

/// Python frames split into one group per eval call, outermost first.
fn groups(python: &[(Frame, bool)]) -> Vec<&[(Frame, bool)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=python.len() {
        if i == python.len() || python[i].1 {
            out.push(&python[start..i]);
            start = i;
        }
    }
    out
}

/// Eval frames that are the real bytecode loop: `_PyEval_EvalFrame` calls
/// `_PyEval_EvalFrameDefault` (one Python call, two native frames), so only
/// the innermost of adjacent eval frames counts.
fn eval_positions(native: &[Frame]) -> Vec<usize> {
    (0..native.len())
        .filter(|&i| is_eval_frame(&native[i]) && !native.get(i + 1).is_some_and(is_eval_frame))
        .collect()
}

/// `python` outermost first, each with whether it was entered from C;
/// `native` user frames
/// outermost first; `leaf` the frames of the interrupted instruction alone;
/// `kernel` outermost first.
pub fn merge(
    python: &[(Frame, bool)],
    native: &[Frame],
    leaf: &[Frame],
    kernel: &[Frame],
) -> Vec<Frame> {
    let names = || python.iter().map(|(n, _)| n.clone());
    let evals = eval_positions(native);
    let groups = groups(python);
    let mut out: Vec<Frame> = Vec::new();
    if !python.is_empty() && python[0].1 && evals.len() == groups.len() {
        let mut next = 0;
        for (g, &at) in groups.iter().zip(&evals) {
            // Native frames before this eval call, minus the eval frames
            // (outer `_PyEval_EvalFrame` wrappers included).
            out.extend(
                native[next..at]
                    .iter()
                    .filter(|f| !is_eval_frame(f))
                    .cloned(),
            );
            out.extend(g.iter().map(|(n, _)| n.clone()));
            next = at + 1;
        }
        out.extend(native[next..].iter().cloned());
    } else {
        out.extend(names());
        match evals.last() {
            Some(&i) => out.extend(native[i + 1..].iter().cloned()),
            None => out.extend(
                leaf.iter()
                    .filter(|f| !f.is_unknown() && !is_eval_frame(f))
                    .cloned(),
            ),
        }
    }
    out.extend(kernel.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<Frame> {
        s.iter().map(|x| Frame::parse(x)).collect()
    }

    fn py(s: &[(&str, bool)]) -> Vec<(Frame, bool)> {
        s.iter().map(|(n, e)| (Frame::parse(n), *e)).collect()
    }

    #[test]
    fn each_eval_frame_takes_its_python_frames() {
        // 3.11+: <module> entered from C, main inlined; json's C scanner
        // calls back into Python (a second eval call).
        let p = py(&[
            ("<module> (app.py:9)", true),
            ("main (app.py:3)", false),
            ("hook (app.py:20)", true),
        ]);
        let native = v(&[
            "_start",
            "Py_RunMain",
            "_PyEval_EvalFrameDefault",
            "scanner_call",
            "PyObject_Vectorcall",
            "_PyEval_EvalFrameDefault",
            "PyLong_FromLong",
        ]);
        let out = merge(&p, &native, &v(&["PyLong_FromLong"]), &v(&["sys_x_[k]"]));
        assert_eq!(
            out,
            v(&[
                "_start",
                "Py_RunMain",
                "<module> (app.py:9)",
                "main (app.py:3)",
                "scanner_call",
                "PyObject_Vectorcall",
                "hook (app.py:20)",
                "PyLong_FromLong",
                "sys_x_[k]"
            ])
        );
    }

    #[test]
    fn native_leaves_under_the_innermost_eval_frame_when_counts_differ() {
        let p = py(&[
            ("main (app.py:3)", true),
            ("loads (json/__init__.py:346)", true),
        ]);
        let native = v(&[
            "main",
            "_PyEval_EvalFrameDefault",
            "PyObject_Vectorcall",
            "scanner_call",
            "scan_once_unicode",
        ]);
        let out = merge(
            &p,
            &native,
            &v(&["scan_once_unicode"]),
            &v(&["do_syscall_64_[k]"]),
        );
        assert_eq!(
            out,
            v(&[
                "main (app.py:3)",
                "loads (json/__init__.py:346)",
                "PyObject_Vectorcall",
                "scanner_call",
                "scan_once_unicode",
                "do_syscall_64_[k]"
            ])
        );
    }

    #[test]
    fn without_eval_frame_only_the_leaf_is_trusted() {
        let p = py(&[("burn_cpu (t.py:9)", true)]);
        let native = v(&[
            "[unknown] (libpython3.11.so+0x45)",
            "garbage_fn",
            "_PyLong_Add",
        ]);
        let out = merge(&p, &native, &v(&["_PyLong_Add"]), &[]);
        assert_eq!(out, v(&["burn_cpu (t.py:9)", "_PyLong_Add"]));
        let out = merge(&p, &native, &v(&["[unknown] 0x7f00"]), &[]);
        assert_eq!(out, v(&["burn_cpu (t.py:9)"]));
    }

    #[test]
    fn wrapper_eval_frames_count_once() {
        // 3.8-3.10: _PyEval_EvalFrame (an inline wrapper) calls
        // _PyEval_EvalFrameDefault for every Python call.
        let p = py(&[("f (a.py:1)", true), ("g (a.py:5)", true)]);
        let native = v(&[
            "main",
            "_PyEval_EvalFrame (ceval.h:1)",
            "_PyEval_EvalFrameDefault",
            "call_function",
            "_PyEval_EvalFrameDefault",
            "time_sleep",
        ]);
        let out = merge(&p, &native, &v(&["time_sleep"]), &[]);
        assert_eq!(
            out,
            v(&[
                "main",
                "f (a.py:1)",
                "call_function",
                "g (a.py:5)",
                "time_sleep"
            ])
        );
    }
}
