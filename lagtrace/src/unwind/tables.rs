//! The unwind tables of all traced processes: one set of rows per file,
//! shared by every process that maps it, and one sorted mapping table per
//! process, written into the kernel's maps.
//!
//! Bounds: `UNWIND_MAX_ROWS` rows for all files, `UNWIND_MAX_MAPPINGS`
//! mappings per process, `UNWIND_MAX_PROCS - 1` processes. What does not fit
//! is counted and reported; its frames fall back to the frame pointer in
//! the kernel. Rows are never freed: a file seen once stays loaded.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use lagtrace_common::{
    ProcUnwind, UNWIND_MAX_MAPPINGS, UNWIND_MAX_PROCS, UNWIND_MAX_ROWS, UnwindMapping,
};

use super::elf::{FileKey, file_table, inode_key};
use crate::{error::Result, probes::Probes, symbolize::cache::parse_maps};

/// A process's mappings are read again at most this often when samples
/// show PCs outside them (a library dlopen'ed since).
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// A file's rows in `UNWIND_ROWS`, and how to bias its mappings.
#[derive(Debug, Clone)]
struct Loaded {
    row_start: u32,
    row_count: u32,
    segments: Vec<(u64, u64)>,
}

/// What building and loading the tables cost and found.
#[derive(Debug, Default, Clone)]
pub struct TableStats {
    pub files_loaded: u64,
    pub rows: u64,
    pub files_without_cfi: u64,
    /// Files that did not fit in `UNWIND_ROWS`.
    pub files_over_budget: u64,
    /// Mappings beyond a process's `UNWIND_MAX_MAPPINGS`.
    pub mappings_dropped: u64,
    /// Processes beyond `UNWIND_MAX_PROCS`.
    pub procs_dropped: u64,
    pub build_time: Duration,
    pub load_time: Duration,
    /// Each file loaded, at most [`MAX_FILE_STATS`] (the first ones).
    pub files: Vec<FileStat>,
}

/// Most files whose figures are kept one by one; the totals count all.
pub const MAX_FILE_STATS: usize = 256;

/// One file's table: what it holds and cost.
#[derive(Debug, Clone)]
pub struct FileStat {
    pub path: PathBuf,
    pub rows: u64,
    pub fdes: u64,
    /// Rows whose rule the kernel walker does not support.
    pub unsupported_rows: u64,
    pub build_time: Duration,
    pub load_time: Duration,
}

#[derive(Default)]
pub struct UnwindTables {
    /// By file identity (build-id, or inode).
    files: HashMap<FileKey, Loaded>,
    /// By inode, so a file is parsed once even where its key is a build-id.
    by_inode: HashMap<FileKey, Option<FileKey>>,
    next_row: u32,
    /// Process tables: pid → (slot, last refresh).
    procs: HashMap<u32, (u32, Instant)>,
    next_slot: u32,
    /// Slots of processes that exited, to reuse before `next_slot`: over a
    /// day of restarts (`--name`, `--children`) the 64 slots would run out.
    free_slots: Vec<u32>,
    pub stats: TableStats,
}

impl UnwindTables {
    pub fn new() -> Self {
        Self {
            next_slot: 1,
            ..Default::default()
        }
    }

    /// Build (or reuse) the tables of every executable mapping of `pid` and
    /// point the kernel at them. Errors only for the kernel's maps; a file
    /// that can't be read is skipped (frame-pointer fallback).
    pub fn add_process(&mut self, pid: u32, probes: &mut Probes) -> Result<()> {
        let slot = match self.procs.get(&pid) {
            Some(&(0, _)) => return Ok(()),
            Some(&(slot, _)) => slot,
            None if !self.free_slots.is_empty() => self.free_slots.pop().unwrap_or(0),
            None if self.next_slot < UNWIND_MAX_PROCS => {
                self.next_slot += 1;
                self.next_slot - 1
            }
            None => {
                // Remembered with slot 0, so it is counted once.
                self.stats.procs_dropped += 1;
                self.procs.insert(pid, (0, Instant::now()));
                return Ok(());
            }
        };

        self.procs.insert(pid, (slot, Instant::now()));
        let table = self.process_table(pid, probes)?;
        probes.write_proc(slot, &table)?;
        probes.set_unwind_slot(pid, slot)
    }

    /// A process that exited and left the kernel's target table: its slot
    /// is free for the next process (it is rewritten whole before use).
    pub fn release(&mut self, pid: u32) {
        if let Some((slot, _)) = self.procs.remove(&pid)
            && slot != 0
        {
            self.free_slots.push(slot);
        }
    }

    /// Whether `pid` has a table (or was refused one).
    pub fn knows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Samples of `pid` had PCs outside its tables: read its mappings again
    /// (a library loaded since), at most once per `REFRESH_EVERY`. Returns
    /// false when it is too early: ask again later.
    pub fn maybe_refresh(&mut self, pid: u32, probes: &mut Probes) -> Result<bool> {
        match self.procs.get(&pid) {
            Some(&(_, at)) if at.elapsed() < REFRESH_EVERY => Ok(false),
            Some(_) => self.add_process(pid, probes).map(|()| true),
            None => Ok(true),
        }
    }

    fn process_table(&mut self, pid: u32, probes: &mut Probes) -> Result<ProcUnwind> {
        let mut table = ProcUnwind {
            count: 0,
            _pad: 0,
            maps: [UnwindMapping::default(); UNWIND_MAX_MAPPINGS],
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Ok(table);
        };
        let mut seen = HashSet::new();
        for m in parse_maps(&text) {
            let Some(path) = m.path.as_deref().filter(|p| p.starts_with('/')) else {
                continue;
            };
            if !m.exec || m.deleted {
                continue;
            }
            // Through /proc/PID/root: the target's view of the filesystem
            // (containers), and the same file for everyone else.
            let file = PathBuf::from(format!("/proc/{pid}/root{path}"));
            let Some(loaded) = self.load_file(&file, m.inode, probes)? else {
                continue;
            };
            let n = table.count as usize;
            if n >= UNWIND_MAX_MAPPINGS {
                self.stats.mappings_dropped += 1;
                continue;
            }
            if !seen.insert(m.start) {
                continue;
            }
            let bias = bias(&loaded.segments, m.start, m.offset);
            table.maps[n] = UnwindMapping {
                start: m.start,
                end: m.end,
                bias,
                row_start: loaded.row_start,
                row_count: loaded.row_count,
            };
            table.count += 1;
        }
        // /proc/PID/maps is sorted, and so is the table.
        Ok(table)
    }

    /// The loaded rows of a file, building and loading them on first sight.
    fn load_file(
        &mut self,
        file: &std::path::Path,
        inode: u64,
        probes: &mut Probes,
    ) -> Result<Option<Loaded>> {
        let Ok(ikey) = inode_key(file) else {
            return Ok(None);
        };
        // The file on disk must be the one mapped.
        if matches!(ikey, FileKey::Inode { ino, .. } if ino != inode) {
            return Ok(None);
        }
        if let Some(known) = self.by_inode.get(&ikey) {
            return Ok(known.as_ref().and_then(|k| self.files.get(k)).cloned());
        }
        let t0 = Instant::now();
        let table = match file_table(file) {
            Ok(t) => t,
            Err(e) => {
                log::debug!("no unwind table: {e}");
                self.stats.files_without_cfi += 1;
                self.by_inode.insert(ikey, None);
                return Ok(None);
            }
        };
        let built = t0.elapsed();
        self.stats.build_time += built;
        if let Some(l) = self.files.get(&table.key) {
            let l = l.clone();
            self.by_inode.insert(ikey, Some(table.key));
            return Ok(Some(l));
        }
        let count = table.rows.len() as u32;
        if u64::from(self.next_row) + u64::from(count) > u64::from(UNWIND_MAX_ROWS) {
            log::info!(
                "unwind table of {} ({count} rows) does not fit: {} of {UNWIND_MAX_ROWS} rows used",
                file.display(),
                self.next_row
            );
            self.stats.files_over_budget += 1;
            self.by_inode.insert(ikey, None);
            return Ok(None);
        }
        let t1 = Instant::now();
        probes.write_rows(self.next_row, &table.rows)?;
        self.stats.load_time += t1.elapsed();
        let loaded = Loaded {
            row_start: self.next_row,
            row_count: count,
            segments: table.segments,
        };
        log::debug!(
            "unwind table of {}: {count} rows ({} KiB), built in {:.1} ms, loaded in {:.1} ms ({} FDEs, {} rows unsupported)",
            file.display(),
            count as usize * std::mem::size_of::<lagtrace_common::UnwindRow>() / 1024,
            built.as_secs_f64() * 1e3,
            t1.elapsed().as_secs_f64() * 1e3,
            table.stats.fdes,
            table.stats.unsupported
        );
        if self.stats.files.len() < MAX_FILE_STATS {
            self.stats.files.push(FileStat {
                path: file.to_path_buf(),
                rows: u64::from(count),
                fdes: table.stats.fdes,
                unsupported_rows: table.stats.unsupported,
                build_time: built,
                load_time: t1.elapsed(),
            });
        }
        self.next_row += count;
        self.stats.files_loaded += 1;
        self.stats.rows += u64::from(count);
        self.files.insert(table.key.clone(), loaded.clone());
        self.by_inode.insert(ikey, Some(table.key));
        Ok(Some(loaded))
    }
}

/// Runtime address - bias = file virtual address, for a mapping of file
/// offset `offset` at `start` (see `elf::FileTable::bias`).
fn bias(segments: &[(u64, u64)], start: u64, offset: u64) -> u64 {
    // Segments need not start on a page (lld packs them: text at file
    // offset 0x3c940, mapped from offset 0x3c000), but offset and address
    // agree modulo the page, so compare page-aligned offsets.
    const PAGE_MASK: u64 = !0xfff;
    let delta = segments
        .iter()
        .filter(|(off, _)| off & PAGE_MASK <= offset)
        .max_by_key(|(off, _)| *off)
        .map_or(0, |(off, vaddr)| vaddr.wrapping_sub(*off));
    start.wrapping_sub(offset).wrapping_sub(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_uses_the_segment_of_the_mapping() {
        // lld's layout: rodata at 0, text at offset 0x3c940 / vaddr 0x3d940.
        let segs = [(0, 0), (0x3c940, 0x3d940), (0xcda30, 0xcfa30)];
        let start = 0x5555_5559_1000;
        let b = bias(&segs, start, 0x3c000);
        // File offset 0x3c940 is mapped at start + 0x940 and has vaddr 0x3d940.
        assert_eq!(start + 0x940 - b, 0x3d940);
        // A PIE whose segments start on pages: vaddr == offset.
        assert_eq!(
            bias(&[(0, 0), (0x1000, 0x1000)], 0x7f00_0000_1000, 0x1000),
            0x7f00_0000_0000
        );
    }
}
