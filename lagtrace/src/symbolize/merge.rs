//! Merging a sample's Python frames with its native frames.
//!
//! The Python frames form the trunk. Under the innermost Python frame run
//! native frames: the interpreter's own C code and C extensions (json's
//! scanner, a regex engine). Those are the native frames after the innermost
//! `_PyEval_EvalFrame*` frame: with the kernel's `.eh_frame` unwinder they
//! are real callers even in CPython built without frame pointers, so a
//! C-extension leaf hangs under the Python function that called it. When
//! the native walk found no eval frame (it ended early: no table, a read
//! error), only the frames of the interrupted instruction itself are
//! trusted as leaves.

/// True for the interpreter's bytecode loop, where Python frames live.
pub fn is_eval_frame(frame: &str) -> bool {
    frame.starts_with("_PyEval_EvalFrameDefault")
        || frame.starts_with("_PyEval_EvalFrame ")
        || frame.starts_with("PyEval_EvalFrameEx")
}

/// `python` outermost first; `native` user frames outermost first; `leaf`
/// the frames of the interrupted instruction alone; `kernel` outermost first.
pub fn merge(
    python: &[String],
    native: &[String],
    leaf: &[String],
    kernel: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = python.to_vec();
    match native.iter().rposition(|f| is_eval_frame(f)) {
        Some(i) => out.extend(native[i + 1..].iter().cloned()),
        None => out.extend(
            leaf.iter()
                .filter(|f| !f.starts_with("[unknown]") && !is_eval_frame(f))
                .cloned(),
        ),
    }
    out.extend(kernel.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn native_leaves_under_the_innermost_eval_frame() {
        let py = v(&["main (app.py:3)", "loads (json/__init__.py:346)"]);
        let native = v(&[
            "main",
            "_PyEval_EvalFrameDefault",
            "PyObject_Vectorcall",
            "_PyEval_EvalFrameDefault",
            "scanner_call",
            "scan_once_unicode",
        ]);
        let out = merge(
            &py,
            &native,
            &v(&["scan_once_unicode"]),
            &v(&["do_syscall_64_[k]"]),
        );
        assert_eq!(
            out,
            v(&[
                "main (app.py:3)",
                "loads (json/__init__.py:346)",
                "scanner_call",
                "scan_once_unicode",
                "do_syscall_64_[k]"
            ])
        );
    }

    #[test]
    fn without_eval_frame_only_the_leaf_is_trusted() {
        let py = v(&["burn_cpu (t.py:9)"]);
        let native = v(&[
            "[unknown] (libpython3.11.so+0x45)",
            "garbage_fn",
            "_PyLong_Add",
        ]);
        let out = merge(&py, &native, &v(&["_PyLong_Add"]), &[]);
        assert_eq!(out, v(&["burn_cpu (t.py:9)", "_PyLong_Add"]));
        let out = merge(&py, &native, &v(&["[unknown] 0x7f00"]), &[]);
        assert_eq!(out, v(&["burn_cpu (t.py:9)"]));
    }
}
