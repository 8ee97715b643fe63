//! Field offsets in the running kernel's structs, from its BTF
//! (`/sys/kernel/btf/vmlinux`): just enough of the format
//! (Documentation/bpf/btf.rst) to find a struct member's byte offset.
//!
//! The kernel's Python walk needs `task_struct.thread.fsbase`, the fs base
//! that x86-64 threads use as their `pthread_self()`. aya parses BTF but does
//! not expose members, so this reads the type section itself, once at start.
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed at byte {at}")]
    Malformed { at: usize },
    #[error("kernel BTF has no {what}")]
    Missing { what: String },
}

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

/// Structs (and unions) of the kernel, by type id; names by struct name.
struct Types {
    members: HashMap<u32, Vec<Member>>,
    by_name: HashMap<String, u32>,
    /// Type id → the type it refers to, for typedefs and qualifiers.
    alias: HashMap<u32, u32>,
}

fn parse(data: &[u8]) -> Result<Types, BtfError> {
    let u32_at = |at: usize| -> Result<u32, BtfError> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or(BtfError::Malformed { at })
    };
    if data.get(..2) != Some(&[0x9f, 0xeb]) {
        return Err(BtfError::Malformed { at: 0 });
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let strings = hdr_len + str_off;
    let name = |off: u32| -> String {
        let s = &data[(strings + off as usize).min(data.len())..];
        let end = s.iter().position(|&b| b == 0).unwrap_or(0);
        String::from_utf8_lossy(&s[..end]).into_owned()
    };
    let mut t = Types {
        members: HashMap::new(),
        by_name: HashMap::new(),
        alias: HashMap::new(),
    };
    let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
    let mut id = 1u32;
    while at < end {
        let (name_off, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
        let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
        at += 12;
        match kind {
            KIND_STRUCT | KIND_UNION => {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = at + i * 12;
                    let off = u32_at(m + 8)?;
                    members.push(Member {
                        name: name(u32_at(m)?),
                        type_id: u32_at(m + 4)?,
                        bit_offset: if kflag == 1 { off & 0xff_ffff } else { off },
                    });
                }
                if name_off != 0 && kind == KIND_STRUCT {
                    t.by_name.entry(name(name_off)).or_insert(id);
                }
                t.members.insert(id, members);
                at += vlen * 12;
            }
            // typedef, volatile, const, restrict, type tag: refer to a type.
            8..=11 | 18 => {
                t.alias.insert(id, size_or_type);
            }
            1 | 14 | 17 => at += 4,
            3 => at += 12,
            6 | 13 => at += vlen * 8,
            15 | 19 => at += vlen * 12,
            2 | 7 | 12 | 16 => {}
            _ => return Err(BtfError::Malformed { at }),
        }
        id += 1;
    }
    Ok(t)
}

impl Types {
    /// Byte offset of `path` (e.g. `["thread", "fsbase"]`) in struct `root`.
    fn offset(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing {
            what: format!("{root}.{}", path.join(".")),
        };
        let mut id = *self.by_name.get(root).ok_or_else(missing)?;
        let mut bits = 0u32;
        for field in path {
            let m = self.find(id, field, 0).ok_or_else(missing)?;
            bits += m.0;
            id = m.1;
        }
        Ok(bits / 8)
    }

    /// A member by name, looking into anonymous structs and unions.
    fn find(&self, id: u32, field: &str, depth: u32) -> Option<(u32, u32)> {
        let mut id = id;
        for _ in 0..16 {
            match self.alias.get(&id) {
                Some(&next) => id = next,
                None => break,
            }
        }
        for m in self.members.get(&id)? {
            if m.name == field {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name.is_empty()
                && depth < 8
                && let Some((off, ty)) = self.find(m.type_id, field, depth + 1)
            {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }
}

/// Offset of `task_struct.thread.fsbase` in the running kernel.
pub fn task_fsbase_offset() -> Result<u32, BtfError> {
    let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
        path: VMLINUX,
        source,
    })?;
    parse(&data)?.offset("task_struct", &["thread", "fsbase"])
}

/// Offsets of `pid` and of the scheduler state (`__state`, 5.14+, or
/// `state` before) in `task_struct`, for the tp_btf sched programs.
pub fn task_sched_offsets() -> Result<(u32, u32), BtfError> {
    let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
        path: VMLINUX,
        source,
    })?;
    let t = parse(&data)?;
    let pid = t.offset("task_struct", &["pid"])?;
    let state = t
        .offset("task_struct", &["__state"])
        .or_else(|_| t.offset("task_struct", &["state"]))?;
    Ok((pid, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fsbase_in_the_running_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("SKIP finds_fsbase_in_the_running_kernel: no {VMLINUX}");
            return;
        }
        let off = task_fsbase_offset().unwrap();
        // task_struct is several KiB and `thread` comes last (it must).
        assert!((1024..16384).contains(&off), "{off}");
        let t = parse(&std::fs::read(VMLINUX).unwrap()).unwrap();
        let thread = t.offset("task_struct", &["thread"]).unwrap();
        assert!(off > thread && off < thread + 256, "{thread} {off}");
    }

    #[test]
    fn finds_task_pid_and_state_in_the_running_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("SKIP finds_task_pid_and_state_in_the_running_kernel: no {VMLINUX}");
            return;
        }
        let (pid, state) = task_sched_offsets().unwrap();
        let t = parse(&std::fs::read(VMLINUX).unwrap()).unwrap();
        // `pid` and `tgid` sit side by side in task_struct on every kernel.
        assert_eq!(t.offset("task_struct", &["tgid"]).unwrap(), pid + 4);
        // The state is one of the first fields (after thread_info).
        assert!(state < 64 && state < pid, "{state} {pid}");
    }
}
