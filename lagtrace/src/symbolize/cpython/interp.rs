//! Finding a CPython target's interpreter at attach: the ELF file that
//! defines `_PyRuntime` (the executable, or a mapped libpython), its load
//! address, the version, and the layout for it.
//!
//! Reads the target's files through `/proc/PID/root` so a container's
//! interpreter is found too. Runs once per target, never per sample.
use std::{
    fs,
    path::{Path, PathBuf},
};

use blazesym::inspect::{Inspector, source::Elf};

use super::{
    debug_offsets,
    layout::{Layout, table_entry},
    mem::Mem,
};

#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    #[error("pid {pid}: no executable or libpython defines _PyRuntime (not CPython 3.8+?)")]
    NoRuntime { pid: u32 },
    #[error("pid {pid}: cannot tell the CPython version of {path}")]
    NoVersion { pid: u32, path: String },
    #[error("pid {pid}: CPython 3.{minor} is not supported (3.8-3.13 are)")]
    Unsupported { pid: u32, minor: u32 },
    #[error("pid {pid}: {source}")]
    DebugOffsets {
        pid: u32,
        source: debug_offsets::DebugOffsetsError,
    },
    #[error("pid {pid}: reading {what}: {source}")]
    Io {
        pid: u32,
        what: &'static str,
        source: std::io::Error,
    },
}

/// A CPython process, ready for the kernel walk and code-object reads.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub pid: u32,
    /// `3.minor` as `PY_VERSION_HEX` when the target says it (3.11+), else
    /// `3.minor` from the file name.
    pub version: (u32, u32),
    /// Address of `_PyRuntime` in the target.
    pub runtime: u64,
    pub layout: Layout,
    /// The file that defines `_PyRuntime`, as the target sees it.
    pub file: String,
}

impl Interpreter {
    /// Address of `_PyRuntime.interpreters.head`.
    pub fn interp_head_addr(&self) -> u64 {
        self.runtime + u64::from(self.layout.runtime_interp_head)
    }

    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }
}

/// A file mapped by the process: its path (as the target sees it) and the
/// start of its mapping at file offset 0.
fn mapped_files(pid: u32) -> Vec<(String, u64)> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), _, Some(off), _, _, Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some(start) = range
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            continue;
        };
        if off.chars().all(|c| c == '0') && !out.iter().any(|(p, _)| p == path) {
            out.push((path.to_string(), start));
        }
    }
    out
}

/// The virtual address the first loadable segment (file offset 0) asks for,
/// page-aligned: the load bias is the mapping's start minus this.
fn first_load_vaddr(path: &Path) -> Option<u64> {
    let data = fs::read(path).ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    if data.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = u64_at(0x20)? as usize;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    (0..phnum.min(256))
        .filter_map(|i| {
            let ph = phoff + i * phentsize;
            (u32_at(ph)? == 1 && u64_at(ph + 8)? == 0).then(|| u64_at(ph + 16))?
        })
        .next()
        .map(|v| v & !0xfff)
}

/// `3.X` from a file name such as `python3.12` or `libpython3.9.so.1.0`.
fn minor_from_name(path: &str) -> Option<u32> {
    let name = path.rsplit('/').next()?;
    let rest = &name[name.find("python3.")? + "python3.".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn candidates(pid: u32) -> Vec<(String, u64)> {
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut files = mapped_files(pid);
    // The executable first, then libpython, then the rest is not searched.
    files.retain(|(p, _)| Some(p) == exe.as_ref() || p.contains("/libpython3"));
    files.sort_by_key(|(p, _)| Some(p) != exe.as_ref());
    files
}

/// Find the interpreter of `pid` and the layout for its version.
pub fn find(pid: u32) -> Result<Interpreter, InterpError> {
    let inspector = Inspector::new();
    let mem = Mem { pid };
    for (file, start) in candidates(pid) {
        let host: PathBuf =
            Path::new(&format!("/proc/{pid}/root")).join(file.trim_start_matches('/'));
        let src = Elf::new(&host).into();
        let Ok(found) = inspector.lookup(&src, &["_PyRuntime", "Py_Version"]) else {
            continue;
        };
        let Some(rt) = found.first().and_then(|s| s.first()) else {
            continue;
        };
        let Some(vaddr) = first_load_vaddr(&host) else {
            continue;
        };
        let bias = start.wrapping_sub(vaddr);
        let runtime = rt.addr.wrapping_add(bias);
        // 3.11+ exports its PY_VERSION_HEX as `Py_Version`.
        let hex = match found.get(1).and_then(|s| s.first()) {
            Some(v) => {
                Some(
                    mem.u32(v.addr.wrapping_add(bias))
                        .map_err(|source| InterpError::Io {
                            pid,
                            what: "Py_Version",
                            source,
                        })?,
                )
            }
            None => None,
        };
        let minor = match hex {
            Some(h) if h >> 24 == 3 => (h >> 16) & 0xff,
            _ => minor_from_name(&file).ok_or(InterpError::NoVersion {
                pid,
                path: file.clone(),
            })?,
        };
        let raw = if minor >= 13 {
            debug_offsets::read(&mem, runtime)
                .map_err(|source| InterpError::DebugOffsets { pid, source })?
                .1
        } else {
            *table_entry(minor).ok_or(InterpError::Unsupported { pid, minor })?
        };
        let layout = raw
            .layout()
            .ok_or(InterpError::Unsupported { pid, minor })?;
        return Ok(Interpreter {
            pid,
            version: (3, minor),
            runtime,
            layout,
            file,
        });
    }
    Err(InterpError::NoRuntime { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(minor_from_name("/usr/bin/python3.12"), Some(12));
        assert_eq!(minor_from_name("/usr/lib/libpython3.9.so.1.0"), Some(9));
        assert_eq!(minor_from_name("/usr/bin/python3"), None);
    }
}
