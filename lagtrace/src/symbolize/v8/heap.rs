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

#[cfg(test)]
mod tests {
    use super::*;

    /// node 20's layout (V8 11.3), as its `v8dbg_*` symbols give it.
    fn layout() -> V8Layout {
        V8Layout {
            fp_context: -8,
            fp_function: -16,
            fp_bytecode_offset: -40,
            map_instance_type: 12,
            jsfunction_shared: 24,
            sfi_name_or_scope_info: 16,
            sfi_script_or_debug_info: 32,
            script_name: 16,
            script_source: 8,
            string_length: 12,
            seq_one_byte_chars: 16,
            seq_two_byte_chars: 16,
            cons_first: 16,
            cons_second: 24,
            thin_actual: 16,
            sliced_parent: 16,
            sliced_offset: 24,
            first_nonstring_type: 128,
            string_representation_mask: 7,
            string_encoding_mask: 8,
            seq_string_tag: 0,
            cons_string_tag: 1,
            sliced_string_tag: 3,
            thin_string_tag: 5,
            one_byte_string_tag: 8,
            type_jsfunction_first: 2066,
            type_jsfunction_last: 2080,
            type_sfi: 262,
            type_script: 167,
            type_scope_info: 261,
            scope_info_first_vars: 3,
            scope_info_ncontextlocals: 2,
        }
    }

    const SEQ_ONE: u16 = 8;
    const SEQ_TWO: u16 = 0;
    const CONS_ONE: u16 = 9;

    /// A fake V8 heap in this process's memory, read back through
    /// `process_vm_readv` on itself.
    struct Arena {
        words: Vec<u64>,
        used: usize,
    }

    impl Arena {
        fn new() -> Self {
            Self {
                words: vec![0; 1024],
                used: 0,
            }
        }
        fn base(&self) -> u64 {
            self.words.as_ptr() as u64
        }
        /// A new object of `bytes` (untagged address).
        fn alloc(&mut self, bytes: usize) -> u64 {
            let at = self.base() + 8 * self.used as u64;
            self.used += bytes.div_ceil(8);
            assert!(self.used <= self.words.len());
            at
        }
        fn bytes(&mut self, addr: u64, b: &[u8]) {
            let off = (addr - self.base()) as usize;
            // SAFETY: the range is inside `words` (checked by `alloc`).
            let all = unsafe {
                std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), 8 * 1024)
            };
            all[off..off + b.len()].copy_from_slice(b);
        }
        fn u64(&mut self, addr: u64, v: u64) {
            self.bytes(addr, &v.to_le_bytes());
        }
        /// A map for instance type `ty`: returns the object's tagged map.
        fn map(&mut self, ty: u16) -> u64 {
            let m = self.alloc(16);
            self.bytes(m + 12, &ty.to_le_bytes());
            m + 1
        }
        fn object(&mut self, ty: u16, bytes: usize) -> u64 {
            let map = self.map(ty);
            let o = self.alloc(bytes);
            self.u64(o, map);
            o
        }
        fn one_byte(&mut self, s: &str) -> u64 {
            let o = self.object(SEQ_ONE, 16 + s.len());
            self.bytes(o + 12, &(s.len() as u32).to_le_bytes());
            self.bytes(o + 16, s.as_bytes());
            o + 1
        }
        fn two_byte(&mut self, s: &str) -> u64 {
            let units: Vec<u16> = s.encode_utf16().collect();
            let o = self.object(SEQ_TWO, 16 + 2 * units.len());
            self.bytes(o + 12, &(units.len() as u32).to_le_bytes());
            let raw: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
            self.bytes(o + 16, &raw);
            o + 1
        }
        fn cons(&mut self, a: u64, b: u64, len: u32) -> u64 {
            let o = self.object(CONS_ONE, 32);
            self.bytes(o + 12, &len.to_le_bytes());
            self.u64(o + 16, a);
            self.u64(o + 24, b);
            o + 1
        }
    }

    fn heap(l: &V8Layout) -> Heap<'_> {
        Heap {
            mem: Mem {
                pid: std::process::id(),
            },
            l,
        }
    }

    #[test]
    fn a_function_is_named_from_its_scope_info_and_script() {
        let l = layout();
        let mut a = Arena::new();
        let (first, second) = (a.one_byte("build"), a.two_byte("Répört"));
        let name = a.cons(first, second, 11);
        let local = a.one_byte("local");
        // ScopeInfo: flags, parameter count, 1 context local (a name and
        // its info), then the function name and its positions.
        let si = a.object(l.type_scope_info, 8 * 9);
        a.u64(si + 8 + 16, 1 << 32);
        a.u64(si + 8 + 24, local);
        a.u64(si + 8 + 32, 7 << 32);
        a.u64(si + 8 + 40, name);
        a.u64(si + 8 + 48, 15 << 32);
        a.u64(si + 8 + 56, 40 << 32);
        let source = a.one_byte("'use strict';\n\nfunction buildReport() {}\n");
        let script = a.object(l.type_script, 24);
        a.u64(script + 8, source);
        let script_name = a.one_byte("/app/server.js");
        a.u64(script + 16, script_name);
        let sfi = a.object(l.type_sfi, 40);
        a.u64(sfi + 16, si + 1);
        a.u64(sfi + 32, script + 1);
        let f = heap(&l).function(sfi + 1).unwrap();
        assert_eq!(f.name, "buildRépört");
        assert_eq!(f.script.as_deref(), Some("/app/server.js"));
        assert_eq!((f.start_pos, f.line), (Some(15), Some(3)));
        assert_eq!(f.name_word, si + 1);
    }

    #[test]
    fn another_object_is_not_read_as_a_function() {
        let l = layout();
        let mut a = Arena::new();
        // What a moved function's old address may hold: another object, or
        // a number (a Smi).
        let other = a.object(l.type_script, 24);
        assert!(heap(&l).function(other + 1).is_err());
        assert!(heap(&l).function(other).is_err(), "an untagged pointer");
        // A SharedFunctionInfo whose name slot holds neither a string nor
        // a ScopeInfo.
        let sfi = a.object(l.type_sfi, 40);
        a.u64(sfi + 16, other + 1);
        assert!(heap(&l).function(sfi + 1).is_err());
        // An anonymous function: its name is the Smi 0.
        a.u64(sfi + 16, 0);
        let f = heap(&l).function(sfi + 1).unwrap();
        assert_eq!((f.name.as_str(), f.script), ("", None));
    }

    #[test]
    fn long_and_deep_strings_are_capped() {
        let l = layout();
        let mut a = Arena::new();
        let long = "x".repeat(MAX_NAME + 10);
        let s = a.one_byte(&long);
        let got = heap(&l).string(s, 0).unwrap();
        assert_eq!(got.chars().count(), MAX_NAME + 1);
        assert!(got.ends_with('…'));
        // A cons string that contains itself.
        let o = a.object(CONS_ONE, 32);
        a.bytes(o + 12, &4u32.to_le_bytes());
        a.u64(o + 16, o + 1);
        a.u64(o + 24, o + 1);
        assert!(heap(&l).string(o + 1, 0).is_err());
    }
}
