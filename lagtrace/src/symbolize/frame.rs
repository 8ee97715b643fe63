//! The typed frame: what symbolization makes of one address or one Python
//! frame, and what every later stage reads (cause, hot code, folding,
//! outputs). Its kind is a field, never a naming convention to re-parse.
//!
//! [`Frame::label`] is the one string form (JSON `frames`, folded files, the
//! SVG), unchanged from when frames were strings: `function (dir/file:line)`,
//! `name_[k]` for the kernel, `[unknown] (libfoo.so+0x1a2b)`. [`Frame::parse`]
//! reads a label back for recorded files; recorded files also carry each
//! frame's kind (the `kinds` array), which [`Frame::parse_as`] takes.
//! It must not shorten names for display: `function` is the full name.
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// The function of a frame whose code could not be named.
pub const UNKNOWN: &str = "[unknown]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Machine code of a mapped file (or the vDSO).
    Native,
    Kernel,
    Python,
    /// JIT code named by the target's perf map (node, python `-X perf`).
    Js,
    /// Not code: a note in the stack such as `[off-cpu]` or a truncation.
    Marker,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    pub kind: FrameKind,
    /// Demangled function name (full; shortening for display is separate), or "[unknown]".
    pub function: String,
    /// Source file: a Python file, a native source file, a JS script.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The mapped object the code lives in (path of the binary/.so, "[kernel]", "[perf-map]"),
    /// for native, kernel and JIT frames; None for Python.
    pub module: Option<String>,
    /// Offset of the address in `module` when the function is unknown
    /// (the address itself when no module holds it).
    pub offset: Option<u64>,
    /// An inlined call inside its caller's native frame.
    pub inlined: bool,
}

/// The module of kernel frames.
pub const KERNEL_MODULE: &str = "[kernel]";
/// The module of JIT frames named by a perf map.
pub const PERF_MAP_MODULE: &str = "[perf-map]";

impl Frame {
    fn new(kind: FrameKind, function: impl Into<String>) -> Self {
        Self {
            kind,
            function: function.into(),
            file: None,
            line: None,
            module: None,
            offset: None,
            inlined: false,
        }
    }

    /// A note in the stack, shown as `text`.
    pub fn marker(text: impl Into<String>) -> Self {
        Self::new(FrameKind::Marker, text)
    }

    /// A Python frame; `file` is the full path the code object gives.
    pub fn python(function: impl Into<String>, file: impl Into<String>, line: Option<u32>) -> Self {
        Self {
            file: Some(file.into()),
            line,
            ..Self::new(FrameKind::Python, function)
        }
    }

    /// A Python frame whose code object could not be read.
    pub fn unknown_python() -> Self {
        Self::new(FrameKind::Python, UNKNOWN)
    }

    /// A named kernel function.
    pub fn kernel(function: impl Into<String>) -> Self {
        Self {
            module: Some(KERNEL_MODULE.into()),
            ..Self::new(FrameKind::Kernel, function)
        }
    }

    /// A kernel address kallsyms does not name.
    pub fn unknown_kernel(addr: u64) -> Self {
        Self {
            offset: Some(addr),
            ..Self::kernel(UNKNOWN)
        }
    }

    /// A named native function in `module`, with its source position where known.
    pub fn native(
        function: impl Into<String>,
        file: Option<String>,
        line: Option<u32>,
        module: Option<String>,
    ) -> Self {
        Self {
            file,
            line,
            module,
            ..Self::new(FrameKind::Native, function)
        }
    }

    /// Native code that could not be named: at `offset` in `module`, or at
    /// the address `offset` when no file holds it.
    pub fn unknown_native(module: Option<String>, offset: u64) -> Self {
        Self {
            module,
            offset: Some(offset),
            ..Self::new(FrameKind::Native, UNKNOWN)
        }
    }

    /// JIT code named by the target's perf map.
    pub fn jit(name: impl Into<String>) -> Self {
        Self {
            module: Some(PERF_MAP_MODULE.into()),
            ..Self::new(FrameKind::Js, name)
        }
    }

    pub fn is_unknown(&self) -> bool {
        self.function == UNKNOWN
    }

    /// Named code of the program itself: not the kernel, not a marker, not
    /// an unknown address.
    pub fn is_user_code(&self) -> bool {
        !matches!(self.kind, FrameKind::Kernel | FrameKind::Marker)
            && !self.is_unknown()
            && !self.function.starts_with('[')
    }

    /// A named Python frame.
    pub fn is_python(&self) -> bool {
        self.kind == FrameKind::Python && !self.is_unknown()
    }

    /// Exactly today's string form (what JSON `frames`, folded files and the SVG show today).
    pub fn label(&self) -> String {
        let body = if self.is_unknown() && self.kind == FrameKind::Python && self.file.is_none() {
            "[unknown python]".to_string()
        } else if let (true, Some(off)) = (self.is_unknown(), self.offset) {
            match self
                .module
                .as_deref()
                .filter(|_| self.kind != FrameKind::Kernel)
            {
                Some(m) => format!("{UNKNOWN} ({}+{off:#x})", base_name(m)),
                None => format!("{UNKNOWN} {off:#x}"),
            }
        } else {
            let file = self.file.as_deref().map(|f| match self.kind {
                FrameKind::Python => python_short_path(f).to_string(),
                _ => native_short_path(f),
            });
            match (file, self.line) {
                (Some(f), Some(l)) => format!("{} ({f}:{l})", self.function),
                (Some(f), None) => format!("{} ({f})", self.function),
                (None, _) => self.function.clone(),
            }
        };
        if self.kind == FrameKind::Kernel {
            format!("{body}_[k]")
        } else {
            body
        }
    }

    /// Inverse of `label` for reading recorded files: `Frame::parse(&f.label()).label() == f.label()`.
    /// The kind is guessed from the label's conventions; use [`Frame::parse_as`]
    /// when the file recorded it.
    pub fn parse(label: &str) -> Frame {
        let kind = if label.ends_with("_[k]") {
            FrameKind::Kernel
        } else if label == "[unknown python]" || is_python_label(label) {
            FrameKind::Python
        } else if label.starts_with('[') && !label.starts_with(UNKNOWN) {
            FrameKind::Marker
        } else {
            FrameKind::Native
        };
        Self::parse_as(label, kind)
    }

    /// Read a label whose kind is known. Whatever the label, the result's
    /// label is `label` again: parts that do not read back whole stay in
    /// `function`.
    pub fn parse_as(label: &str, kind: FrameKind) -> Frame {
        let fallback = || {
            let kind = match kind {
                FrameKind::Kernel => FrameKind::Native,
                FrameKind::Python if label == UNKNOWN => FrameKind::Native,
                k => k,
            };
            Frame::new(kind, label)
        };
        let parsed = match kind {
            FrameKind::Marker => Some(Frame::marker(label)),
            FrameKind::Js => Some(Frame::jit(label)),
            FrameKind::Kernel => label
                .strip_suffix("_[k]")
                .map(|body| match unknown_addr(body) {
                    Some(a) => Frame::unknown_kernel(a),
                    None => Frame::kernel(body),
                }),
            FrameKind::Python if label == "[unknown python]" => Some(Frame::unknown_python()),
            FrameKind::Python => {
                split_position(label).map(|(f, file, line)| Frame::python(f, file, line))
            }
            FrameKind::Native => Some(parse_native(label)),
        };
        match parsed {
            Some(f) if f.label() == label => f,
            _ => fallback(),
        }
    }
}

fn parse_native(label: &str) -> Frame {
    if let Some(a) = unknown_addr(label) {
        return Frame::unknown_native(None, a);
    }
    if let Some(rest) = label
        .strip_prefix("[unknown] (")
        .and_then(|r| r.strip_suffix(')'))
        && let Some((module, off)) = rest.rsplit_once("+0x")
        && let Ok(off) = u64::from_str_radix(off, 16)
    {
        return Frame::unknown_native(Some(module.into()), off);
    }
    match split_position(label) {
        Some((f, file, line)) => Frame::native(f, Some(file), line, None),
        None => Frame::native(label, None, None, None),
    }
}

/// `[unknown] 0x1a2b` → the address.
fn unknown_addr(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("[unknown] 0x")?;
    u64::from_str_radix(hex, 16).ok()
}

/// `function (file:line)` or `function (file)`.
fn split_position(label: &str) -> Option<(String, String, Option<u32>)> {
    let inner = label.strip_suffix(')')?;
    let (function, pos) = inner.rsplit_once(" (")?;
    if let Some((file, line)) = pos.rsplit_once(':')
        && let Ok(line) = line.parse::<u32>()
    {
        return Some((function.into(), file.into(), Some(line)));
    }
    Some((function.into(), pos.into(), None))
}

fn is_python_label(label: &str) -> bool {
    split_position(label).is_some_and(|(_, file, _)| file.ends_with(".py"))
}

/// The last path component, e.g. `libc.so.6`.
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `dir/file.py`: the file and its parent folder, which tells
/// `json/decoder.py` from `app/decoder.py` without a full path.
pub fn python_short_path(path: &str) -> &str {
    let mut cut = path.len();
    for _ in 0..2 {
        match path[..cut].rfind('/') {
            Some(i) => cut = i,
            None => return path,
        }
    }
    &path[cut + 1..]
}

/// A native source file's base name and at most one parent directory.
pub fn native_short_path(path: &str) -> String {
    let mut names = Path::new(path).components().rev().map_while(|c| match c {
        Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
        _ => None,
    });
    match (names.next(), names.next()) {
        (Some(file), Some(dir)) => format!("{dir}/{file}"),
        (Some(file), None) => file,
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_are_todays_strings() {
        let f = Frame::native(
            "busy",
            Some("/src/app/main.c".into()),
            Some(12),
            Some("/bin/app".into()),
        );
        assert_eq!(f.label(), "busy (app/main.c:12)");
        assert_eq!(Frame::kernel("do_nanosleep").label(), "do_nanosleep_[k]");
        assert_eq!(
            Frame::unknown_kernel(0xffff_1000).label(),
            "[unknown] 0xffff1000_[k]"
        );
        assert_eq!(
            Frame::unknown_native(Some("/opt/my lib/libfoo.so".into()), 0x2a2b).label(),
            "[unknown] (libfoo.so+0x2a2b)"
        );
        assert_eq!(Frame::unknown_native(None, 0x10).label(), "[unknown] 0x10");
        let py = Frame::python(
            "Handle._run",
            "/usr/lib/python3.12/asyncio/events.py",
            Some(84),
        );
        assert_eq!(py.label(), "Handle._run (asyncio/events.py:84)");
        assert_eq!(Frame::python("f", "/a/b.py", None).label(), "f (a/b.py)");
        assert_eq!(Frame::unknown_python().label(), "[unknown python]");
        assert_eq!(
            Frame::jit("py::fake_jit:/app/x.py").label(),
            "py::fake_jit:/app/x.py"
        );
        assert_eq!(Frame::marker("[no stack]").label(), "[no stack]");
    }

    #[test]
    fn parse_finds_the_kinds() {
        let k = |s: &str| Frame::parse(s).kind;
        assert_eq!(k("do_nanosleep_[k]"), FrameKind::Kernel);
        assert_eq!(k("[unknown] 0x10_[k]"), FrameKind::Kernel);
        assert_eq!(k("main (app.py:3)"), FrameKind::Python);
        assert_eq!(k("[unknown python]"), FrameKind::Python);
        assert_eq!(
            k("[python frames truncated: deeper than 64]"),
            FrameKind::Marker
        );
        assert_eq!(k("[unknown] (libc.so.6+0x10)"), FrameKind::Native);
        assert_eq!(k("busy (app/main.c:12)"), FrameKind::Native);
        let f = Frame::parse("[unknown] (libc.so.6+0x10)");
        assert_eq!(
            (f.module.as_deref(), f.offset),
            (Some("libc.so.6"), Some(0x10))
        );
        let f = Frame::parse("main (app.py:3)");
        assert_eq!(
            (f.function.as_str(), f.file.as_deref(), f.line),
            ("main", Some("app.py"), Some(3))
        );
    }

    fn kind() -> impl Strategy<Value = FrameKind> {
        prop_oneof![
            Just(FrameKind::Native),
            Just(FrameKind::Kernel),
            Just(FrameKind::Python),
            Just(FrameKind::Js),
            Just(FrameKind::Marker),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let name = prop_oneof![Just(UNKNOWN.to_string()), "[a-zA-Z_:<>() .\\[\\]]{0,20}"];
        let file = proptest::option::of("(/[a-z.]{1,6}){1,4}");
        let module = proptest::option::of("(/[a-z.]{1,6}){1,3}|\\[kernel\\]");
        (
            kind(),
            name,
            file,
            proptest::option::of(0u32..100_000),
            module,
            proptest::option::of(any::<u64>()),
            any::<bool>(),
        )
            .prop_map(
                |(kind, function, file, line, module, offset, inlined)| Frame {
                    kind,
                    function,
                    file,
                    line,
                    module,
                    offset,
                    inlined,
                },
            )
    }

    proptest! {
        #[test]
        fn parse_then_label_round_trips(f in frame()) {
            let label = f.label();
            prop_assert_eq!(Frame::parse(&label).label(), label.clone());
            prop_assert_eq!(Frame::parse_as(&label, f.kind).label(), label);
        }

        #[test]
        fn any_string_reads_back_as_itself(s in "\\PC{0,40}", k in kind()) {
            prop_assert_eq!(Frame::parse(&s).label(), s.clone());
            prop_assert_eq!(Frame::parse_as(&s, k).label(), s);
        }
    }
}
