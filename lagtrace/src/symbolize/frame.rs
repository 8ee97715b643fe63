//! The typed frame (design shared by issues #13 and #14). This is issue
//! #13's stand-in until #14's `Frame:` commit lands: same public shape, so
//! the blame module is written against fields, never label suffixes. On
//! merge, #14's version of this file wins.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Native,
    Kernel,
    Python,
    Js,
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
    /// The mapped object the code lives in, for native, kernel and JIT frames.
    pub module: Option<String>,
    /// Offset of the address in `module` when the function is unknown.
    pub offset: Option<u64>,
    /// An inlined call inside its caller's native frame.
    pub inlined: bool,
}

/// Prefixes V8 gives JS functions in perf maps (`--perf-basic-prof`).
const JS_PREFIXES: [&str; 6] = [
    "JS:",
    "LazyCompile:",
    "Function:",
    "InterpretedFunction:",
    "Script:",
    "Eval:",
];

impl Frame {
    fn new(kind: FrameKind, function: &str) -> Frame {
        Frame {
            kind,
            function: function.to_string(),
            file: None,
            line: None,
            module: None,
            offset: None,
            inlined: false,
        }
    }

    /// Today's string form.
    pub fn label(&self) -> String {
        match self.kind {
            FrameKind::Kernel => format!("{}_[k]", self.function),
            FrameKind::Marker => self.function.clone(),
            _ if self.function == "[unknown]" => match (&self.module, self.offset) {
                (Some(m), Some(o)) => format!("[unknown] ({m}+{o:#x})"),
                _ => format!("[unknown] {:#x}", self.offset.unwrap_or(0)),
            },
            _ => match (&self.file, self.line) {
                (Some(f), Some(l)) => format!("{} ({f}:{l})", self.function),
                (Some(f), None) => format!("{} ({f})", self.function),
                _ => self.function.clone(),
            },
        }
    }

    /// Inverse of [`Frame::label`].
    pub fn parse(label: &str) -> Frame {
        if let Some(k) = label.strip_suffix("_[k]") {
            return Frame::new(FrameKind::Kernel, k);
        }
        if let Some(rest) = label.strip_prefix("[unknown] ") {
            let mut f = Frame::new(FrameKind::Native, "[unknown]");
            if let Some((m, o)) = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.rsplit_once("+0x"))
            {
                f.module = Some(m.to_string());
                f.offset = u64::from_str_radix(o, 16).ok();
            } else {
                f.offset = rest
                    .strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
            }
            return f;
        }
        if label.starts_with('[') {
            return Frame::new(FrameKind::Marker, label);
        }
        let js = JS_PREFIXES.iter().any(|p| label.starts_with(p));
        let (function, file, line) = match label.strip_suffix(')').and_then(|l| l.rsplit_once(" ("))
        {
            Some((func, loc)) => match loc.rsplit_once(':') {
                Some((file, line)) if line.parse::<u32>().is_ok() => {
                    (func, Some(file), line.parse().ok())
                }
                _ => (func, Some(loc), None),
            },
            None => (label, None, None),
        };
        let kind = if js {
            FrameKind::Js
        } else if file.is_some_and(|f| f.ends_with(".py") || f.starts_with("<frozen ")) {
            FrameKind::Python
        } else {
            FrameKind::Native
        };
        let mut f = Frame::new(kind, function);
        f.file = file.map(str::to_string);
        f.line = line;
        if js {
            f.module = Some("[perf-map]".into());
        }
        f
    }
}
