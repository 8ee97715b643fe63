//! Plain Python objects read from a target's memory: an object's type
//! name, the entries of a `dict`, a small `int`. What `task.rs` needs to
//! go from a module's globals to asyncio's running Task and its name.
//!
//! Layouts are those of CPython 3.8–3.13 on 64-bit Linux, from
//! Include/cpython/dictobject.h, Objects/dict-common.h (3.8–3.10),
//! Include/internal/pycore_dict.h (3.11+) and Include/cpython/longintrepr.h
//! (3.12 moved an int's size into `lv_tag`). Everything read is bounded
//! (entries, string lengths), since the target's memory is not trusted.
use std::io;

use super::{layout::CodeLayout, mem::Mem};

/// Most dict entries looked at (module globals hold a few hundred).
const MAX_ENTRIES: u64 = 4096;

fn bad() -> io::Error {
    io::Error::from(io::ErrorKind::InvalidData)
}

/// True when `obj`'s type is named `name` (`ob_type->tp_name`, at offset
/// 24 of `PyTypeObject` on every 3.x).
pub fn is_type(mem: &Mem, obj: u64, name: &str) -> bool {
    let mut buf = [0u8; 32];
    let read = mem
        .u64(obj + 8)
        .and_then(|ty| mem.u64(ty + 24))
        .and_then(|p| mem.read(p, &mut buf[..name.len() + 1]));
    read.is_ok() && &buf[..name.len()] == name.as_bytes() && buf[name.len()] == 0
}

/// The (key, value) object pointers of a `dict`, in insertion order,
/// deleted entries skipped.
pub fn dict_entries(mem: &Mem, minor: u32, dict: u64) -> io::Result<Vec<(u64, u64)>> {
    if !is_type(mem, dict, "dict") {
        return Err(bad());
    }
    // PyDictObject: ma_used 16, ma_version_tag 24, ma_keys 32, ma_values 40.
    let keys = mem.u64(dict + 32)?;
    let values = mem.u64(dict + 40)?;
    let (entries_at, n, entry_size, key_at) = if minor <= 10 {
        // dk_refcnt 0, dk_size 8, dk_lookup 16, dk_usable 24,
        // dk_nentries 32, dk_indices 40; entries {hash, key, value}.
        let size = mem.u64(keys + 8)?;
        let index_bytes = match size {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        };
        let n = mem.u64(keys + 32)?;
        (keys + 40 + size * index_bytes, n, 24, 8)
    } else {
        // dk_refcnt 0, dk_log2_size 8, dk_log2_index_bytes 9, dk_kind 10,
        // dk_version 12, dk_usable 16, dk_nentries 24, dk_indices 32;
        // DICT_KEYS_GENERAL entries are {hash, key, value}, unicode and
        // split ones {key, value}.
        let [log2_index_bytes, kind] = mem.array::<2>(keys + 9)?;
        if log2_index_bytes > 40 {
            return Err(bad());
        }
        let n = mem.u64(keys + 24)?;
        let (size, key_at) = if kind == 0 { (24, 8) } else { (16, 0) };
        (keys + 32 + (1u64 << log2_index_bytes), n, size, key_at)
    };
    if n > MAX_ENTRIES {
        return Err(bad());
    }
    let mut raw = vec![0u8; (n * entry_size) as usize];
    mem.read(entries_at, &mut raw)?;
    let word = |b: &[u8], at: u64| {
        let at = at as usize;
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
    };
    // A split table keeps its values apart: `ma_values[i]` (3.13 puts a
    // header of 8 bytes before them).
    let split_values = match (values, minor) {
        (0, _) => None,
        (v, ..=12) => Some(v),
        (v, _) => Some(v + 8),
    };
    let mut out = Vec::new();
    for (i, e) in raw.chunks_exact(entry_size as usize).enumerate() {
        let key = word(e, key_at);
        let value = match split_values {
            Some(v) => mem.u64(v + 8 * i as u64)?,
            None => word(e, key_at + 8),
        };
        if key != 0 && value != 0 {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// True when the `str` at `obj` is `want` (compact ASCII strings only, as
/// identifiers are).
fn str_is(mem: &Mem, l: &CodeLayout, obj: u64, want: &str) -> bool {
    let Ok(state) = mem.u32(obj + u64::from(l.unicode_state)) else {
        return false;
    };
    // PyASCIIObject.state: interned:2, kind:3, compact:1, ascii:1.
    if (state >> 5) & 3 != 3 || !is_type(mem, obj, "str") {
        return false;
    }
    if mem.u64(obj + u64::from(l.unicode_length)).ok() != Some(want.len() as u64) {
        return false;
    }
    let mut buf = vec![0u8; want.len()];
    mem.read(obj + u64::from(l.unicode_ascii_size), &mut buf)
        .is_ok()
        && buf == want.as_bytes()
}

/// `dict[key]` for a `str` key, by a scan of the entries (no hashing).
pub fn dict_get(mem: &Mem, l: &CodeLayout, minor: u32, dict: u64, key: &str) -> Option<u64> {
    dict_entries(mem, minor, dict)
        .ok()?
        .into_iter()
        .find(|(k, _)| str_is(mem, l, *k, key))
        .map(|(_, v)| v)
}

/// A module's `__dict__` (`PyModuleObject.md_dict`, offset 16).
pub fn module_dict(mem: &Mem, module: u64) -> Option<u64> {
    if !is_type(mem, module, "module") {
        return None;
    }
    mem.u64(module + 16).ok()
}

/// A non-negative `int` below 2^60, or `None`.
pub fn small_int(mem: &Mem, minor: u32, obj: u64) -> Option<u64> {
    if !is_type(mem, obj, "int") {
        return None;
    }
    // ob_size (≤3.11) or lv_tag (3.12+: digits << 3 | sign, 0 = positive,
    // 1 = zero) at 16; 30-bit digits from 24.
    let tag = mem.u64(obj + 16).ok()?;
    let digits = if minor <= 11 {
        i64::try_from(tag).ok().filter(|&d| d >= 0)? as u64
    } else {
        match tag & 3 {
            1 => return Some(0),
            0 => tag >> 3,
            _ => return None,
        }
    };
    if digits > 2 {
        return None;
    }
    let mut v = 0u64;
    for i in (0..digits).rev() {
        v = (v << 30) | u64::from(mem.u32(obj + 24 + 4 * i).ok()? & 0x3fff_ffff);
    }
    Some(v)
}
