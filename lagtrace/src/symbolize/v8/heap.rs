//! Reads of V8 heap objects in a node target: a `SharedFunctionInfo`'s
//! name and script, V8 strings (sequential one- and two-byte, cons, thin,
//! sliced), with the layouts of `metadata.rs`.
//!
//! The heap is untrusted and moving (V8's GC compacts it while lagtrace
//! reads): every object's instance type is checked through its map before
//! a field is used, lengths and depths are capped, and a mismatch is an
//! error, never a guess. Nothing here caches; `mod.rs` does.
use std::io;

use super::metadata::V8Layout;
use crate::symbolize::cpython::mem::Mem;

/// Longest name kept, in characters; longer ones end in "…".
const MAX_NAME: usize = 256;
/// Deepest cons/thin/sliced string chain followed.
const MAX_DEPTH: usize = 8;
/// `ScopeInfo` slots looked at after its context locals for the name.
const SCOPE_SLOTS: usize = 8;
/// Longest source prefix read to find a function's line, in characters.
const MAX_SOURCE: usize = 8 << 20;
/// Most context locals a `ScopeInfo` can inline (V8's
/// `kScopeInfoMaxInlinedLocalNamesSize`); more would be a bad read.
const MAX_CONTEXT_LOCALS: u64 = 1 << 10;

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// What a `SharedFunctionInfo` says about its function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Empty for an anonymous function.
    pub name: String,
    /// The script's name (a path, a `file://` URL, `node:internal/...`).
    pub script: Option<String>,
    /// Character offset of the function's start in its script, when the
    /// scope info records it.
    pub start_pos: Option<u32>,
    /// 1-based line of that start, from the script's source.
    pub line: Option<u32>,
    /// The `name_or_scope_info` word, for the kernel's name check.
    pub name_word: u64,
}

pub fn is_object(tagged: u64) -> bool {
    tagged & 3 == 1
}

fn is_smi(word: u64) -> bool {
    word & 1 == 0
}

fn smi(word: u64) -> i64 {
    (word as i64) >> 32
}

/// The heap of one node process, read with its V8's layout.
pub struct Heap<'a> {
    pub mem: Mem,
    pub l: &'a V8Layout,
}

impl Heap<'_> {
    /// The untagged address and instance type of the object `tagged`.
    pub fn object(&self, tagged: u64) -> io::Result<(u64, u16)> {
        if !is_object(tagged) {
            return Err(bad("not a heap object"));
        }
        let obj = tagged - 1;
        let map = self.mem.u64(obj)?;
        if !is_object(map) {
            return Err(bad("no map"));
        }
        let ty = self
            .mem
            .array::<2>(map - 1 + u64::from(self.l.map_instance_type))?;
        Ok((obj, u16::from_le_bytes(ty)))
    }

    /// The function of the `SharedFunctionInfo` `tagged`.
    pub fn function(&self, tagged: u64) -> io::Result<FunctionInfo> {
        let l = self.l;
        let (sfi, ty) = self.object(tagged)?;
        if ty != l.type_sfi {
            return Err(bad("not a SharedFunctionInfo"));
        }
        let name_word = self.mem.u64(sfi + u64::from(l.sfi_name_or_scope_info))?;
        let (name, start_pos) = if is_smi(name_word) {
            (String::new(), None)
        } else {
            let (obj, ty) = self.object(name_word)?;
            if ty < l.first_nonstring_type {
                (self.string(name_word, 0)?, None)
            } else if ty == l.type_scope_info {
                self.scope_info(obj)?
            } else {
                return Err(bad("name is neither a string nor a ScopeInfo"));
            }
        };
        let script_word = self.mem.u64(sfi + u64::from(l.sfi_script_or_debug_info))?;
        let (script, line) = match self.object(script_word) {
            Ok((obj, ty)) if ty == l.type_script => {
                let name = self.mem.u64(obj + u64::from(l.script_name))?;
                (
                    self.string(name, 0).ok().filter(|s| !s.is_empty()),
                    start_pos.and_then(|p| self.line_of(obj, p)),
                )
            }
            _ => (None, None),
        };
        Ok(FunctionInfo {
            name,
            script,
            start_pos,
            line,
            name_word,
        })
    }

    /// A `ScopeInfo`'s function name, and the function's start position.
    /// Its variable part is laid out by flags lagtrace does not decode, so,
    /// as opentelemetry-ebpf-profiler does, the name is the first string
    /// after the context locals (names, then infos), and the position the
    /// first following pair of Smis `start < end`.
    fn scope_info(&self, obj: u64) -> io::Result<(String, Option<u32>)> {
        let l = self.l;
        let slots = obj + 8;
        let locals = self
            .mem
            .u64(slots + 8 * u64::from(l.scope_info_ncontextlocals))?;
        if !is_smi(locals) || !(0..MAX_CONTEXT_LOCALS as i64).contains(&smi(locals)) {
            return Err(bad("ScopeInfo context local count"));
        }
        let first = u64::from(l.scope_info_first_vars) + 2 * smi(locals) as u64;
        let raw = self.mem.array::<{ 8 * SCOPE_SLOTS }>(slots + 8 * first)?;
        let words: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let mut name = None;
        let mut start = None;
        for (i, &w) in words.iter().enumerate() {
            if name.is_none() {
                if is_object(w)
                    && let Ok(s) = self.string(w, 0)
                {
                    name = Some(s);
                }
                continue;
            }
            if let Some(&next) = words.get(i + 1)
                && is_smi(w)
                && is_smi(next)
                && smi(w) >= 0
                && smi(w) < smi(next)
            {
                start = u32::try_from(smi(w)).ok();
                break;
            }
        }
        Ok((name.unwrap_or_default(), start))
    }

    /// The text of the V8 string `tagged`, capped at [`MAX_NAME`].
    pub fn string(&self, tagged: u64, depth: usize) -> io::Result<String> {
        let mut out = String::new();
        self.append(tagged, depth, 0, MAX_NAME, &mut out)?;
        if out.chars().count() >= MAX_NAME && self.length(tagged)? > MAX_NAME {
            out.push('…');
        }
        Ok(out)
    }

    /// The length of the V8 string `tagged`, in characters.
    fn length(&self, tagged: u64) -> io::Result<usize> {
        let (obj, ty) = self.object(tagged)?;
        if ty >= self.l.first_nonstring_type {
            return Err(bad("not a string"));
        }
        Ok(self.mem.u32(obj + u64::from(self.l.string_length))? as usize)
    }

    /// The 1-based line of character `pos` of the script `script` (an
    /// untagged `Script`), from its source in the heap: the newlines before
    /// it. `None` past [`MAX_SOURCE`] or for a source it cannot read
    /// (node's own modules keep theirs outside the heap).
    fn line_of(&self, script: u64, pos: u32) -> Option<u32> {
        if pos as usize > MAX_SOURCE {
            return None;
        }
        let source = self
            .mem
            .u64(script + u64::from(self.l.script_source))
            .ok()?;
        let mut text = String::new();
        self.append(source, 0, 0, pos as usize, &mut text).ok()?;
        Some(1 + text.bytes().filter(|&b| b == b'\n').count() as u32)
    }

    /// Append characters `skip..skip + want` of string `tagged` to `out`.
    fn append(
        &self,
        tagged: u64,
        depth: usize,
        skip: usize,
        want: usize,
        out: &mut String,
    ) -> io::Result<()> {
        let l = self.l;
        if depth > MAX_DEPTH {
            return Err(bad("string nested too deep"));
        }
        let (obj, ty) = self.object(tagged)?;
        if ty >= l.first_nonstring_type {
            return Err(bad("not a string"));
        }
        let len = self.mem.u32(obj + u64::from(l.string_length))? as usize;
        if len > 1 << 30 {
            return Err(bad("string length"));
        }
        let end = len.min(skip.saturating_add(want));
        if skip >= end {
            return Ok(());
        }
        let rep = ty & l.string_representation_mask;
        if rep == l.seq_string_tag {
            let n = end - skip;
            if ty & l.string_encoding_mask == l.one_byte_string_tag {
                let mut b = vec![0u8; n];
                self.mem
                    .read(obj + u64::from(l.seq_one_byte_chars) + skip as u64, &mut b)?;
                out.extend(b.iter().map(|&c| char::from(c)));
            } else {
                let mut b = vec![0u8; 2 * n];
                self.mem.read(
                    obj + u64::from(l.seq_two_byte_chars) + 2 * skip as u64,
                    &mut b,
                )?;
                let units = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
                out.extend(char::decode_utf16(units).map(|c| c.unwrap_or('\u{fffd}')));
            }
        } else if rep == l.cons_string_tag {
            let first = self.mem.u64(obj + u64::from(l.cons_first))?;
            let second = self.mem.u64(obj + u64::from(l.cons_second))?;
            let (flen, _) = self.object(first)?;
            let flen = self.mem.u32(flen + u64::from(l.string_length))? as usize;
            if skip < flen {
                self.append(first, depth + 1, skip, end.min(flen) - skip, out)?;
            }
            if end > flen {
                let from = skip.max(flen) - flen;
                self.append(second, depth + 1, from, end - flen - from, out)?;
            }
        } else if rep == l.thin_string_tag {
            let actual = self.mem.u64(obj + u64::from(l.thin_actual))?;
            self.append(actual, depth + 1, skip, end - skip, out)?;
        } else if rep == l.sliced_string_tag {
            let parent = self.mem.u64(obj + u64::from(l.sliced_parent))?;
            let offset = self.mem.u64(obj + u64::from(l.sliced_offset))?;
            if !is_smi(offset) || smi(offset) < 0 {
                return Err(bad("sliced string offset"));
            }
            let from = smi(offset) as usize + skip;
            self.append(parent, depth + 1, from, end - skip, out)?;
        } else {
            // External strings point outside the heap; names are not.
            return Err(bad("unsupported string representation"));
        }
        Ok(())
    }
}
