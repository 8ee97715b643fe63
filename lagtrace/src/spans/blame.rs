//! The blame frame: of a stack, the innermost frame that is the user's own
//! code, so a line names `load_catalog (frontend.py:18)` rather than
//! `JSONDecoder.raw_decode` or `__libc_recv`. All the rules of what is
//! "not the user's code" live here, and nowhere else:
//!
//! - Python: the standard library (under the interpreter's `lib/pythonX.Y`,
//!   or a known stdlib package when only `dir/file.py` is known), `<frozen …>`
//!   modules, `site-packages` and `dist-packages`;
//! - JS: `node:internal`, V8 builtins, `node_modules`;
//! - native: libc, libpthread, libstdc++, libm, the dynamic loader,
//!   libpython, libuv, OpenSSL, the node binary (V8), and the Rust crates
//!   std, core, alloc, tokio, hyper, mio, futures;
//! - the kernel and markers (`[off-cpu]`, `[unknown] …`).
//!
//! `--app-prefix PATH` (repeatable) replaces the default: then only frames
//! whose file or module starts with one of the prefixes are user code.
//! Classification reads the typed fields of a [`Frame`] (kind, module,
//! file, function), never a label's suffix. Pure: no I/O.
use crate::symbolize::frame::{Frame, FrameKind, PERF_MAP_MODULE};

/// Python packages of the standard library (a `dir/file.py` path whose
/// `dir` is one of these is stdlib, when the full path is not known).
const STDLIB_PACKAGES: &[&str] = &[
    "asyncio",
    "collections",
    "concurrent",
    "ctypes",
    "email",
    "encodings",
    "html",
    "http",
    "importlib",
    "json",
    "logging",
    "multiprocessing",
    "re",
    "sqlite3",
    "unittest",
    "urllib",
    "wsgiref",
    "xml",
    "xmlrpc",
    "zoneinfo",
    "lib-dynload",
];

/// Native objects that are runtime, not the program (by file name prefix).
const RUNTIME_OBJECTS: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "libstdc++",
    "libm.so",
    "libgcc_s",
    "ld-linux",
    "ld-musl",
    "libpython",
    "libuv",
    "libssl",
    "libcrypto",
    "libz.so",
    "node",
    "[vdso]",
];

/// Rust and C++ namespaces that are runtime, not the program.
const RUNTIME_NAMESPACES: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "tokio::",
    "hyper::",
    "mio::",
    "futures_",
    "__gnu_cxx::",
    "v8::",
    "node::",
    "uv_",
    "Builtins_",
    "Builtin:",
];

/// glibc's source folders, as blazesym gives its files (`dir/file.c`).
const LIBC_SOURCE_DIRS: &[&str] = &[
    "sysdeps", "nptl", "linux", "posix", "libio", "stdlib", "string", "socket", "io", "misc",
    "malloc", "x86_64", "unix",
];

/// The rules: the default ones, or the user's `--app-prefix` list.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub app_prefixes: Vec<String>,
}

/// What a stack's time is blamed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blame {
    /// The innermost user frame.
    pub frame: Frame,
    /// The innermost frame of the stack, where it is not the blame frame.
    pub leaf: Option<Frame>,
    /// The library the blame frame called into, e.g. `requests`.
    pub via: Option<String>,
}

/// A frame that names code (not the kernel, a marker or an unknown address).
fn is_code(f: &Frame) -> bool {
    !matches!(f.kind, FrameKind::Kernel | FrameKind::Marker) && f.function != "[unknown]"
}

/// CPython's own C frames (the eval loop, object calls), which stand
/// under Python frames and say nothing the Python frames do not.
fn is_interpreter(f: &Frame) -> bool {
    f.kind == FrameKind::Native
        && (f.function.starts_with("_Py")
            || f.function.starts_with("Py")
            || f.function.starts_with("method_vectorcall")
            || f.module.as_deref().is_some_and(|m| {
                let base = base_name(m);
                base.starts_with("libpython") || is_python_exe(base)
            }))
}

/// `python3.12`, `python3`, `python`: an interpreter executable (which
/// holds libpython and its built-in modules when statically linked).
fn is_python_exe(base: &str) -> bool {
    base.strip_prefix("python")
        .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// True for `python3.12`, `python3.6m` and the like.
fn is_python_lib_dir(dir: &str) -> bool {
    dir.strip_prefix("python")
        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
}

impl Rules {
    fn under_prefix(&self, f: &Frame) -> bool {
        let file = f.file.as_deref();
        self.app_prefixes.iter().any(|p| {
            file.is_some_and(|x| x.starts_with(p.as_str()))
                || f.module
                    .as_deref()
                    .is_some_and(|m| m.starts_with(p.as_str()))
        })
    }

    /// True if `f` is the user's own code.
    pub fn is_user(&self, f: &Frame) -> bool {
        if !is_code(f) {
            return false;
        }
        if !self.app_prefixes.is_empty() {
            return self.under_prefix(f);
        }
        match f.kind {
            FrameKind::Python => self.python_is_user(f),
            FrameKind::Js => js_is_user(f),
            FrameKind::Native => !is_interpreter(f) && native_is_user(f),
            FrameKind::Kernel | FrameKind::Marker => false,
        }
    }

    fn python_is_user(&self, f: &Frame) -> bool {
        let Some(file) = f.file.as_deref() else {
            return true;
        };
        let full = file;
        if full.starts_with('<') {
            return false; // <frozen importlib._bootstrap>, <string>
        }
        if full.contains("/site-packages/") || full.contains("/dist-packages/") {
            return false;
        }
        let dirs: Vec<&str> = full.split('/').collect();
        // The interpreter's own lib/pythonX.Y (full path), or `pythonX.Y/x.py`.
        if dirs.iter().any(|d| is_python_lib_dir(d)) {
            return false;
        }
        // Only `dir/file.py` known: a stdlib package folder.
        !(dirs.len() == 2 && STDLIB_PACKAGES.contains(&dirs[0]))
    }

    /// The innermost user frame of `frames` (outermost first) and what it
    /// led to.
    pub fn blame(&self, frames: &[Frame]) -> Option<Blame> {
        let at = frames.iter().rposition(|f| self.is_user(f))?;
        let frame = frames[at].clone();
        // Under Python code the Python frames tell what it called (C
        // extension frames vary sample by sample); elsewhere the innermost
        // code outside the interpreter.
        let python = frame.kind == FrameKind::Python;
        let leaf = frames
            .iter()
            .rev()
            .find(|f| {
                if python {
                    f.kind == FrameKind::Python && is_code(f)
                } else {
                    is_code(f) && !is_interpreter(f)
                }
            })
            .filter(|l| *l != &frame)
            .cloned();
        let via = frames[at + 1..]
            .iter()
            .find(|f| is_code(f) && (!python || f.kind == FrameKind::Python))
            .and_then(library_of);
        Some(Blame { frame, leaf, via })
    }
}

fn js_is_user(f: &Frame) -> bool {
    // A function read from V8's frames without a script is V8's or node's
    // own (a builtin's JS part, a promise job), never a file of the app.
    if f.module.as_deref() == Some(crate::symbolize::v8::V8_MODULE) && f.file.is_none() {
        return false;
    }
    let text = [f.function.as_str(), f.file.as_deref().unwrap_or("")];
    !text
        .iter()
        .any(|t| t.contains("node:") || t.contains("node_modules/") || t.starts_with("Builtin:"))
}

fn native_is_user(f: &Frame) -> bool {
    // Extension modules of installed packages and of the stdlib.
    if f.module.as_deref().is_some_and(|m| {
        m.contains("/site-packages/")
            || m.contains("/dist-packages/")
            || m.contains("/node_modules/")
            || m.split('/').any(is_python_lib_dir)
    }) {
        return false;
    }
    if f.module
        .as_deref()
        .is_some_and(|m| RUNTIME_OBJECTS.iter().any(|r| base_name(m).starts_with(r)))
    {
        return false;
    }
    let name = f.function.as_str();
    // `<T as Trait>::method` belongs to T: generic (`F`, `T`) or runtime
    // types are runtime, the program's own types are the program.
    let owner = name
        .strip_prefix('<')
        .map(|r| r.split([' ', '>']).next().unwrap_or(r))
        .unwrap_or(name);
    if name.starts_with('<') && !owner.contains("::") {
        return false;
    }
    if RUNTIME_NAMESPACES.iter().any(|n| owner.starts_with(n)) {
        return false;
    }
    // glibc internals (`__libc_recv`, `__GI___clock_nanosleep`), loader.
    if name.starts_with("__") || name.starts_with("_dl_") || name == "_start" {
        return false;
    }
    if f.file.as_deref().is_some_and(|file| {
        file.split_once('/')
            .is_some_and(|(dir, _)| LIBC_SOURCE_DIRS.contains(&dir))
    }) {
        return false;
    }
    true
}

/// The library a frame belongs to, as a user knows it: `requests`,
/// `json`, `socket`, `libc.so.6`, `tokio`.
pub fn library_of(f: &Frame) -> Option<String> {
    match f.kind {
        FrameKind::Python => {
            let file = f.file.as_deref()?;
            let (dir, name) = file.rsplit_once('/').unwrap_or(("", file));
            let dir = base_name(dir);
            if dir.is_empty() || is_python_lib_dir(dir) || dir == "site-packages" {
                Some(name.trim_end_matches(".py").to_string())
            } else {
                Some(dir.to_string())
            }
        }
        // A Rust or C++ name says its crate or namespace (`std::…`),
        // which tells more than the binary it is linked into.
        FrameKind::Native | FrameKind::Js => {
            let head = f.function.trim_start_matches('<');
            match (head.split_once("::"), f.module.as_deref()) {
                (Some((krate, _)), _) => Some(krate.to_string()),
                (None, Some(m)) if m != PERF_MAP_MODULE => Some(base_name(m).to_string()),
                _ => None,
            }
        }
        FrameKind::Kernel | FrameKind::Marker => None,
    }
}

/// A function name fit for a one-line display: C++ and Rust signatures
/// without argument lists, template or generic parameters and Rust hashes
/// (`v8::internal::JsonStringifier::SerializeString(...)` →
/// `v8::internal::JsonStringifier::SerializeString`).
pub fn short_function(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut depth_angle = 0usize;
    let mut depth_paren = 0usize;
    for (i, c) in name.char_indices() {
        match c {
            // `<T as Trait>::f` at the start is kept; later `<` opens generics.
            '<' if i > 0 && !name[..i].ends_with("operator") => depth_angle += 1,
            '>' if depth_angle > 0 => depth_angle -= 1,
            '(' => depth_paren += 1,
            ')' if depth_paren > 0 => depth_paren -= 1,
            _ if depth_angle == 0 && depth_paren == 0 => out.push(c),
            _ => {}
        }
    }
    // Rust legacy mangling hash: `::h0123456789abcdef`.
    if let Some((head, hash)) = out.rsplit_once("::h")
        && hash.len() == 16
        && hash.chars().all(|c| c.is_ascii_hexdigit())
    {
        out.truncate(head.len());
    }
    let out = out.trim().trim_end_matches("::").to_string();
    if out.is_empty() {
        name.to_string()
    } else {
        out
    }
}

/// A frame as a line shows it: `load_catalog (frontend.py:18)` for code
/// with a place, a short function name otherwise.
pub fn display(f: &Frame) -> String {
    let function = short_function(&f.function);
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{function} ({}:{line})", base_name(file)),
        (Some(file), None) => format!("{function} ({})", base_name(file)),
        _ => function,
    }
}

/// The innermost frame as a line shows it after the blame frame: library
/// Python code as `json.loads`, other frames by their short name.
pub fn display_leaf(f: &Frame) -> String {
    match (f.kind, library_of(f)) {
        (FrameKind::Python, Some(lib)) => {
            let func = f.function.rsplit('.').next().unwrap_or(&f.function);
            format!("{lib}.{func}")
        }
        _ => short_function(&f.function),
    }
}

/// `load_catalog (frontend.py:18) → json.loads`: the blame frame, then the
/// innermost frame where it differs.
pub fn describe(b: &Blame) -> String {
    match &b.leaf {
        Some(leaf) => format!("{} → {}", display(&b.frame), display_leaf(leaf)),
        None => display(&b.frame),
    }
}

/// The key spans are grouped by in the summary: the blame function and its
/// file, without the line (`load_catalog (frontend.py)`).
pub fn group_key(f: &Frame) -> String {
    let function = short_function(&f.function);
    match &f.file {
        Some(file) => format!("{function} ({})", base_name(file)),
        None => function,
    }
}

#[cfg(test)]
#[path = "blame_tests.rs"]
mod tests;
