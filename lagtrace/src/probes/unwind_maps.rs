//! Writing unwind tables into the kernel's maps (`UNWIND_ROWS`,
//! `UNWIND_PROCS`, and a target's `unwind_slot`).
//!
//! Rows go in with `BPF_MAP_UPDATE_BATCH` (5.6+; aya 0.14 has no batch
//! call): one syscall per 64k rows instead of one per row. Where the kernel
//! refuses batches, rows are written one by one.
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Array, HashMap, Map};
use lagtrace_common::{ProcUnwind, TargetConfig, UnwindRow};

use super::loader::Probes;
use crate::error::{Error, Result};

/// `BPF_MAP_UPDATE_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Rows per batch syscall.
const BATCH: usize = 1 << 16;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

impl Probes {
    fn map_ref(&self, name: &'static str) -> Result<&Map> {
        self.ebpf_map(name).ok_or(Error::Map {
            name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })
    }

    /// Write `rows` at `UNWIND_ROWS[start..]`.
    pub fn write_rows(&mut self, start: u32, rows: &[UnwindRow]) -> Result<()> {
        let map = self.map_ref("UNWIND_ROWS")?;
        let Map::Array(data) = map else {
            return Err(Error::Map {
                name: "UNWIND_ROWS",
                source: aya::maps::MapError::InvalidName {
                    name: "UNWIND_ROWS is not an array".into(),
                },
            });
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let mut done = 0usize;
        while done < rows.len() {
            let chunk = &rows[done..(done + BATCH).min(rows.len())];
            let keys: Vec<u32> = (0..chunk.len() as u32)
                .map(|i| start + done as u32 + i)
                .collect();
            let mut attr = BatchAttr {
                keys: keys.as_ptr() as u64,
                values: chunk.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            // SAFETY: `attr` is a valid bpf_attr batch member; keys and values
            // point at `count` u32 keys and `count` 8-byte Pod rows, alive for
            // the call; the kernel writes back only `attr.count`.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            if r != 0 {
                log::debug!(
                    "BPF_MAP_UPDATE_BATCH refused ({}); writing rows one by one",
                    std::io::Error::last_os_error()
                );
                return self.write_rows_one_by_one(start + done as u32, &rows[done..]);
            }
            done += chunk.len();
        }
        Ok(())
    }

    fn write_rows_one_by_one(&mut self, start: u32, rows: &[UnwindRow]) -> Result<()> {
        let map = self.ebpf_map_mut("UNWIND_ROWS").expect("UNWIND_ROWS map");
        let mut arr: Array<_, UnwindRow> = Array::try_from(map).map_err(map_err("UNWIND_ROWS"))?;
        for (i, r) in rows.iter().enumerate() {
            arr.set(start + i as u32, *r, 0)
                .map_err(map_err("UNWIND_ROWS"))?;
        }
        Ok(())
    }

    /// Write a process's mapping table at `slot`.
    pub fn write_proc(&mut self, slot: u32, table: &ProcUnwind) -> Result<()> {
        let map = self.ebpf_map_mut("UNWIND_PROCS").expect("UNWIND_PROCS map");
        let mut arr: Array<_, ProcUnwind> =
            Array::try_from(map).map_err(map_err("UNWIND_PROCS"))?;
        arr.set(slot, *table, 0).map_err(map_err("UNWIND_PROCS"))
    }

    /// Point a target at its mapping table (0: none).
    pub fn set_unwind_slot(&mut self, tgid: u32, slot: u32) -> Result<()> {
        let map = self.ebpf_map_mut("TARGETS").expect("TARGETS map");
        let mut targets: HashMap<_, u32, TargetConfig> =
            HashMap::try_from(map).map_err(map_err("TARGETS"))?;
        let mut cfg = targets.get(&tgid, 0).map_err(map_err("TARGETS"))?;
        cfg.unwind_slot = slot;
        targets.insert(tgid, cfg, 0).map_err(map_err("TARGETS"))
    }
}
