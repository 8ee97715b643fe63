//! Merging a sample's JS frames (read from V8's frames by the kernel) with
//! its native frames. Each JS frame carries the index of the native frame
//! it was found in: a frame the walk stepped by its frame pointer, which
//! is JIT code, an interpreter trampoline, or a bytecode handler running
//! on its function's frame. The JS frame takes that native frame's place;
//! every other native frame (C++ of node and V8, libuv, the kernel) keeps
//! its position. Where the perf map already names the JIT frame
//! (`--perf-basic-prof`), its name stays.
use super::super::frame::{Frame, FrameKind, PERF_MAP_MODULE};

/// `groups`: the native user frames per address, INNERMOST address first,
/// each group outermost first (with its inlines); `js`: (native index,
/// frame), innermost first; `kernel`: outermost first. Returns the stack
/// outermost first.
pub fn merge(groups: Vec<Vec<Frame>>, js: &[(usize, Frame)], kernel: Vec<Frame>) -> Vec<Frame> {
    let mut out = Vec::with_capacity(groups.len() + kernel.len());
    for (i, group) in groups.into_iter().enumerate().rev() {
        let named_by_perf_map = group.iter().any(|f| {
            f.kind == FrameKind::Js
                && f.module.as_deref() == Some(PERF_MAP_MODULE)
                && !f.is_unknown()
        });
        match js.iter().find(|(at, _)| *at == i) {
            Some((_, f)) if !named_by_perf_map => out.push(f.clone()),
            _ => out.extend(group),
        }
    }
    out.extend(kernel);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| f.label()).collect()
    }

    fn js(name: &str) -> Frame {
        Frame {
            kind: FrameKind::Js,
            function: name.into(),
            file: Some("/app/server.js".into()),
            line: Some(3),
            module: Some(super::super::V8_MODULE.into()),
            offset: None,
            inlined: false,
        }
    }

    #[test]
    fn js_frames_replace_the_frames_they_were_found_in() {
        let handler = Frame::parse("Builtins_LdaSmiHandler");
        let jit = Frame::parse("[unknown] 0x3a00");
        let entry = Frame::parse("Builtins_JSEntry");
        let main = Frame::parse("main");
        // Innermost first: a handler on buildReport's frame, a JIT caller.
        let groups = vec![vec![handler], vec![jit], vec![entry], vec![main]];
        let out = merge(
            groups,
            &[(0, js("buildReport")), (1, js("handle"))],
            vec![Frame::parse("do_syscall_64_[k]")],
        );
        assert_eq!(
            names(&out),
            [
                "main",
                "Builtins_JSEntry",
                "handle (app/server.js:3)",
                "buildReport (app/server.js:3)",
                "do_syscall_64_[k]"
            ]
        );
    }

    #[test]
    fn a_perf_map_name_stays() {
        let groups = vec![vec![Frame::jit("JS:*buildReport /app/server.js:25:21")]];
        let out = merge(groups, &[(0, js("buildReport"))], vec![]);
        assert_eq!(out[0].module.as_deref(), Some(PERF_MAP_MODULE));
    }
}
