//! Names for native stack addresses (user space and kernel) with blazesym:
//! `function (dir/file.c:12)` with inlined functions as their own frames,
//! JIT code from perf maps, `name_[k]` for the kernel. It must never print a
//! wrong name: what it cannot name surely becomes `[unknown] ...`, and it
//! must not panic when the target has exited.
//!
//! blazesym never opens a file of the target here: each mapped file is
//! opened by [`untrusted`](super::untrusted) (the exact file mapped, checked
//! to be a regular file owned by the target or root) and handed to blazesym
//! as `/proc/self/fd/N`; the perf map is parsed by
//! [`perf_map`](super::perf_map). Only the vDSO is read by blazesym's
//! process source, from the target's memory.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::AsRawFd,
};

use blazesym::{
    MaybeDefault, Pid,
    symbolize::{
        CodeInfo, Input, Sym, Symbolized, Symbolizer,
        source::{Elf, Kernel, Process, Source},
    },
};

use super::{
    cache::{
        FrameKey, MAX_CACHED, Mapping, PidCache, STABLE_FRESH_NS, lookup_addrs, uncached,
        unknown_addr,
    },
    frame::Frame,
    untrusted,
};

/// A file by (major, minor, inode).
type FileId = (u32, u32, u64);

/// The outermost frame of a native stack cut where it left executable code.
pub const NOT_CODE: &str = "[unwind stopped: not code]";

/// How many of `addrs` (innermost first) to keep: up to the first one after
/// the leaf that no executable mapping holds, and that the kernel did not
/// find code on (`verified`: indices of frames it read a JS function on).
/// Without a read of the maps (the process is gone) nothing is cut.
fn code_prefix(cache: &PidCache, addrs: &[u64], verified: &[usize]) -> usize {
    if !cache.maps_read || cache.maps.is_empty() {
        return addrs.len();
    }
    addrs
        .iter()
        .enumerate()
        .skip(1)
        .position(|(i, &a)| !verified.contains(&i) && !cache.find(a).is_some_and(|m| m.exec))
        .map_or(addrs.len(), |i| i + 1)
}

/// Most target files held open for blazesym at once.
const MAX_OPEN_FILES: usize = 512;

pub struct NativeSymbolizer {
    symbolizer: Symbolizer,
    pids: HashMap<u32, PidCache>,
    kernel: HashMap<u64, Frame>,
    /// Mapped files opened and checked, by (major, minor, inode), shared by
    /// all targets: blazesym reads them as `/proc/self/fd/N`.
    files: HashMap<FileId, File>,
    /// Files refused (a FIFO, a foreign owner, gone): not tried again.
    refused: HashSet<FileId>,
}

impl Default for NativeSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl NativeSymbolizer {
    pub fn new() -> Self {
        Self {
            // Its defaults: file:line, inlined functions, demangling, and
            // reloading files changed on disk, all on.
            symbolizer: Symbolizer::new(),
            pids: HashMap::new(),
            kernel: HashMap::new(),
            files: HashMap::new(),
            refused: HashSet::new(),
        }
    }

    /// Frames of one sample taken at monotonic time `ts_ns`, OUTERMOST
    /// FIRST: the user frames, then the kernel frames. `user_ips` and
    /// `kernel_ips` are innermost first, as the kernel gives them (a 0 ends
    /// the stack).
    pub fn frames(
        &mut self,
        pid: u32,
        ts_ns: u64,
        user_ips: &[u64],
        kernel_ips: &[u64],
    ) -> Vec<Frame> {
        let user = lookup_addrs(user_ips);
        let kernel = lookup_addrs(kernel_ips);
        let mut out = Vec::new();
        if !user.is_empty() {
            let named = self.resolve_user(pid, ts_ns, &user, &[]);
            for frames in named.into_iter().rev() {
                out.extend(frames);
            }
        }
        self.resolve_kernel(&kernel);
        for &a in kernel.iter().rev() {
            match self.kernel.get(&a) {
                Some(f) => out.push(f.clone()),
                None => out.push(Frame::unknown_kernel(a)),
            }
        }
        out
    }

    /// The user frames of one sample by address, INNERMOST address first,
    /// each address's frames outermost first (a function and its inlines);
    /// a walk that ran into data ends in a marker group.
    /// `verified`: indices of frames the kernel found JS code on.
    pub fn user_groups(
        &mut self,
        pid: u32,
        ts_ns: u64,
        user_ips: &[u64],
        verified: &[usize],
    ) -> Vec<Vec<Frame>> {
        let user = lookup_addrs(user_ips);
        if user.is_empty() {
            return Vec::new();
        }
        self.resolve_user(pid, ts_ns, &user, verified)
    }

    /// Read the maps of a process again, so that each mapping's time window
    /// stays fine-grained. Called on every drain tick: a process that has
    /// changed its file mappings is read each time, others every 100 ms.
    /// True if it has: it wants the short drain tick.
    pub fn refresh(&mut self, pid: u32) -> bool {
        let Some(cache) = self.pids.get_mut(&pid) else {
            return false;
        };
        // After an exec, JIT names from the old program's map would lie.
        cache.perf_map.check_exec(pid);
        let due = cache.churns
            || crate::clock::WallClock::now_mono_ns().saturating_sub(cache.read_after_ns)
                >= STABLE_FRESH_NS;
        if due
            && cache.may_reread()
            && let Err(e) = cache.reread_maps(pid)
        {
            log::debug!("reading /proc/{pid}/maps: {e}");
        }
        cache.churns
    }

    /// Load the symbols and debug info of every file a process maps, so the
    /// first span does not pay for it while later spans are streaming (a
    /// DWARF-rich libpython takes a few hundred ms to parse).
    pub fn warm_up(&mut self, pid: u32) {
        let cache = self.pids.entry(pid).or_default();
        if let Err(e) = cache.reread_maps(pid) {
            log::debug!("reading /proc/{pid}/maps: {e}");
            return;
        }
        let mut seen = HashSet::new();
        let files: Vec<Mapping> = cache
            .maps
            .iter()
            .filter(|m| is_file(m) && seen.insert((m.dev, m.inode)))
            .cloned()
            .collect();
        let t0 = std::time::Instant::now();
        let owners = untrusted::allowed_owners(pid);
        for m in files {
            // One offset per file; its answer is irrelevant, and not cached.
            if let Some(path) = self.open_file(pid, &m, &owners) {
                let src = Source::Elf(Elf::new(path));
                let _ = self
                    .symbolizer
                    .symbolize(&src, Input::FileOffset(&[m.offset]));
            }
        }
        log::debug!("symbols of pid {pid} loaded in {:?}", t0.elapsed());
    }

    /// The frames of each address (innermost first, as given).
    fn resolve_user(
        &mut self,
        pid: u32,
        ts_ns: u64,
        addrs: &[u64],
        verified: &[usize],
    ) -> Vec<Vec<Frame>> {
        let cache = self.pids.entry(pid).or_default();
        // The sample must be older than the newest read of the maps, to
        // know what was mapped when it was taken.
        // A process never seen changing its file mappings is read on the
        // drain tick, not per sample (see `STABLE_FRESH_NS`).
        let mut newest_is_now = cache.newest_stands_for_now(addrs);
        if (!cache.maps_read || ts_ns > cache.read_ns())
            && !newest_is_now
            && cache.may_reread()
            && let Err(e) = cache.reread_maps(pid)
        {
            log::debug!("reading /proc/{pid}/maps: {e}");
        }
        newest_is_now |= !cache.churns && !cache.may_reread();
        // An unwind that ran into data (a heap pointer, log text read as a
        // return address) stops at its first frame outside executable code.
        let whole = addrs.len();
        let addrs = &addrs[..code_prefix(cache, addrs, verified)];
        let mut out: Vec<Option<Vec<Frame>>> = vec![None; addrs.len()];
        let mut by_file: HashMap<FileId, (Mapping, Vec<(usize, u64)>)> = HashMap::new();
        let mut vdso: Vec<(usize, u64)> = Vec::new();
        for (i, &a) in addrs.iter().enumerate() {
            // Recently read or over the re-read budget, the newest read
            // stands for "now", but only in a process never seen changing
            // its file mappings.
            let m = cache
                .find_at(a, ts_ns)
                .or_else(|| newest_is_now.then(|| cache.find(a)).flatten())
                .cloned();
            let Some(m) = m else {
                // JIT code: the perf map names an address whichever
                // anonymous mapping (grown, or replaced since) holds it.
                let anon = cache.find(a).is_some_and(|c| c.path.is_none());
                let name = if anon { jit_name(pid, cache, a) } else { None };
                out[i] = Some(vec![name.unwrap_or_else(|| unknown_addr(a))]);
                continue;
            };
            if is_file(&m) {
                let key = FrameKey::File(m.dev.0, m.dev.1, m.inode, m.file_offset(a));
                match cache.frames.get(&key) {
                    Some(f) => out[i] = Some(f.clone()),
                    None => by_file
                        .entry((m.dev.0, m.dev.1, m.inode))
                        .or_insert_with(|| (m.clone(), Vec::new()))
                        .1
                        .push((i, m.file_offset(a))),
                }
            } else if m.path.as_deref() == Some("[vdso]") {
                match cache.frames.get(&FrameKey::Vdso(a)) {
                    Some(f) => out[i] = Some(f.clone()),
                    None => vdso.push((i, a)),
                }
            } else if m.path.is_none() {
                out[i] = Some(vec![
                    jit_name(pid, cache, a).unwrap_or_else(|| m.unknown(a)),
                ]);
            } else {
                // Deleted or replaced on disk (its names would lie), heap, stack.
                out[i] = Some(vec![m.unknown(a)]);
            }
        }
        if !by_file.is_empty() {
            let owners = untrusted::allowed_owners(pid);
            for (m, want) in by_file.into_values() {
                let named = self.file_frames(pid, &m, &owners, &want);
                let cache = self.pids.entry(pid).or_default();
                for ((i, off), frames) in want.into_iter().zip(named) {
                    let frames =
                        frames.unwrap_or_else(|| vec![m.unknown(m.start + off - m.offset)]);
                    cache.insert(
                        FrameKey::File(m.dev.0, m.dev.1, m.inode, off),
                        frames.clone(),
                    );
                    out[i] = Some(frames);
                }
            }
        }
        if !vdso.is_empty() {
            let src = Source::Process(Process {
                debug_syms: false,
                perf_map: false,
                map_files: false,
                vdso: true,
                ..Process::new(Pid::from(pid))
            });
            let just: Vec<u64> = vdso.iter().map(|&(_, a)| a).collect();
            let results = symbolize(&self.symbolizer, &src, &just);
            let cache = self.pids.entry(pid).or_default();
            for (k, &(i, a)) in vdso.iter().enumerate() {
                let frames = named(&results, k)
                    .map_or_else(|| vec![unknown_addr(a)], |s| sym_frames(s, Some("[vdso]")));
                cache.insert(FrameKey::Vdso(a), frames.clone());
                out[i] = Some(frames);
            }
        }
        let mut named: Vec<Vec<Frame>> = out
            .into_iter()
            .zip(addrs)
            .map(|(f, &a)| f.unwrap_or_else(|| vec![unknown_addr(a)]))
            .collect();
        if addrs.len() < whole {
            named.push(vec![Frame::marker(NOT_CODE)]);
        }
        named
    }

    /// Frames for file offsets of one mapped file; `None` where unnamed.
    fn file_frames(
        &mut self,
        pid: u32,
        m: &Mapping,
        owners: &[u32],
        want: &[(usize, u64)],
    ) -> Vec<Option<Vec<Frame>>> {
        let Some(path) = self.open_file(pid, m, owners) else {
            return vec![None; want.len()];
        };
        let offsets: Vec<u64> = want.iter().map(|&(_, off)| off).collect();
        let src = Source::Elf(Elf::new(path));
        let results = self
            .symbolizer
            .symbolize(&src, Input::FileOffset(&offsets))
            .unwrap_or_else(|e| {
                log::debug!(
                    "symbolizing {} offsets in {}: {e}",
                    offsets.len(),
                    m.path.as_deref().unwrap_or("?")
                );
                Vec::new()
            });
        (0..want.len())
            .map(|k| named(&results, k).map(|s| sym_frames(s, m.path.as_deref())))
            .collect()
    }

    /// `/proc/self/fd/N` of the checked, open file of a mapping.
    fn open_file(&mut self, pid: u32, m: &Mapping, owners: &[u32]) -> Option<String> {
        let id = (m.dev.0, m.dev.1, m.inode);
        if self.refused.contains(&id) {
            return None;
        }
        if !self.files.contains_key(&id) {
            if self.files.len() >= MAX_OPEN_FILES {
                self.files.clear();
            }
            match untrusted::open_mapping(pid, m, owners) {
                Ok(f) => {
                    self.files.insert(id, f);
                }
                Err(e) => {
                    log::debug!("{e}");
                    self.refused.insert(id);
                    return None;
                }
            }
        }
        Some(format!("/proc/self/fd/{}", self.files[&id].as_raw_fd()))
    }

    fn resolve_kernel(&mut self, addrs: &[u64]) {
        let mut todo = uncached(addrs, |a| self.kernel.contains_key(&a));
        if todo.is_empty() {
            return;
        }
        if self.kernel.len() + todo.len() > MAX_CACHED {
            self.kernel.clear();
            todo = uncached(addrs, |_| false);
        }
        // kallsyms only: it holds the running kernel's (KASLR-adjusted)
        // addresses, where a vmlinux found on disk might not match.
        let src = Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        });
        let results = symbolize(&self.symbolizer, &src, &todo);
        for (i, &a) in todo.iter().enumerate() {
            let frame = named(&results, i).map_or_else(
                || Frame::unknown_kernel(a),
                |s| Frame::kernel(s.name.to_string()),
            );
            self.kernel.insert(a, frame);
        }
    }
}

/// A mapping of a file that can be opened and named.
fn is_file(m: &Mapping) -> bool {
    !m.deleted && m.inode != 0 && m.path.as_deref().is_some_and(|p| p.starts_with('/'))
}

/// The name a JIT wrote in its perf map for `addr`, read again (within a
/// budget) when the address is not in it yet.
fn jit_name(pid: u32, cache: &mut PidCache, addr: u64) -> Option<Frame> {
    if cache.perf_map.lookup(addr).is_none() && cache.may_read_perf_map() {
        cache.perf_map.refresh(pid);
    }
    cache.perf_map.lookup(addr).map(Frame::jit)
}

/// One blazesym call for a batch; on error (e.g. the process exited) every
/// address comes back unknown.
fn symbolize<'s>(symbolizer: &'s Symbolizer, src: &Source, addrs: &[u64]) -> Vec<Symbolized<'s>> {
    symbolizer
        .symbolize(src, Input::AbsAddr(addrs))
        .unwrap_or_else(|e| {
            log::debug!("symbolizing {} addresses in {src:?}: {e}", addrs.len());
            Vec::new()
        })
}

/// The symbol found for the `i`th address, if it has a name.
fn named<'r, 's>(results: &'r [Symbolized<'s>], i: usize) -> Option<&'r Sym<'s>> {
    results
        .get(i)
        .and_then(Symbolized::as_sym)
        .filter(|s| !s.name.is_empty())
}

/// The function and the functions inlined into it at this address, outer
/// first, in `module` (the mapped file's path).
fn sym_frames(sym: &Sym<'_>, module: Option<&str>) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    frames.push(frame(&sym.name, sym.code_info.as_deref(), module));
    for f in sym.inlined.iter() {
        frames.push(Frame {
            inlined: true,
            ..frame(&f.name, f.code_info.as_ref(), module)
        });
    }
    frames
}

/// `function (dir/file.c:12)` where the line is known, else `function`:
/// the source file is kept whole, only its label shortens it.
fn frame(name: &str, code: Option<&CodeInfo<'_>>, module: Option<&str>) -> Frame {
    let (file, line) = match code.and_then(|c| Some((c, c.line?))) {
        Some((c, line)) => (Some(c.to_path().to_string_lossy().into_owned()), Some(line)),
        None => (None, None),
    };
    Frame::native(name, file, line, module.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, process};

    fn now() -> u64 {
        crate::clock::WallClock::now_mono_ns()
    }

    fn labels(frames: Vec<Frame>) -> Vec<String> {
        frames.iter().map(Frame::label).collect()
    }

    #[inline(never)]
    fn some_noinline_fn() -> u64 {
        std::hint::black_box(42)
    }

    #[inline(never)]
    fn other_noinline_fn() -> u64 {
        std::hint::black_box(some_noinline_fn() + 1)
    }

    /// A read-only page: anonymous with `fd` -1, else of the file.
    fn map_page(fd: i32) -> u64 {
        let flags = libc::MAP_PRIVATE | if fd < 0 { libc::MAP_ANONYMOUS } else { 0 };
        // SAFETY: a fresh mapping that nothing else uses; never unmapped.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, flags, fd, 0) };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    }

    #[test]
    fn names_own_functions_outermost_first() {
        let inner = some_noinline_fn as *const () as u64;
        let outer = other_noinline_fn as *const () as u64;
        let (mut s, pid) = (NativeSymbolizer::new(), process::id());
        // `outer + 1` stands for a return address into `other_noinline_fn`.
        let typed = s.frames(pid, now(), &[inner, outer + 1], &[]);
        // Every frame names the mapped file it runs in: this test binary.
        let exe = fs::read_link("/proc/self/exe").unwrap();
        for f in &typed {
            assert_eq!(f.module.as_deref(), exe.to_str(), "{f:?}");
            assert_eq!(f.kind, super::super::FrameKind::Native);
        }
        let frames = labels(typed);
        let text = frames.join(" | ");
        assert!(frames[0].contains("other_noinline_fn"), "{text}");
        // In release builds inlined helpers (black_box) may follow it.
        let inner_at = frames.iter().position(|f| f.contains("some_noinline_fn"));
        assert!(inner_at.is_some_and(|i| i > 0), "{text}");
        assert!(
            text.contains("(symbolize/native.rs:"),
            "no file:line in {text}"
        );
        assert_eq!(
            labels(s.frames(pid, now(), &[inner, outer + 1], &[])),
            frames,
            "cached"
        );
        assert!(s.frames(pid, now(), &[], &[]).is_empty());
    }

    #[test]
    fn an_unwind_into_data_is_cut_at_the_first_frame_outside_code() {
        let inner = some_noinline_fn as *const () as u64;
        let outer = other_noinline_fn as *const () as u64;
        let data = map_page(-1);
        let (mut s, pid) = (NativeSymbolizer::new(), process::id());
        // Innermost first: code, code, a data page read as a return
        // address, then more "frames" that the garbage led to.
        let frames: Vec<String> = s
            .frames(pid, now(), &[inner, outer + 1, data + 9, outer + 1], &[])
            .iter()
            .map(Frame::label)
            .collect();
        let text = frames.join(" | ");
        assert_eq!(frames[0], NOT_CODE, "{text}");
        assert!(frames[1].contains("other_noinline_fn"), "{text}");
        assert_eq!(
            frames
                .iter()
                .filter(|f| f.contains("other_noinline_fn"))
                .count(),
            1,
            "nothing past the data page is kept: {text}"
        );
        assert!(!text.contains("[unknown]"), "{text}");
    }

    #[test]
    fn file_offsets_name_what_blazesyms_process_source_names() {
        // lagtrace hands blazesym each mapped file by fd and file offset;
        // it must name what blazesym finds itself from the address.
        let pid = process::id();
        let addrs: Vec<u64> = [
            some_noinline_fn as *const () as u64,
            other_noinline_fn as *const () as u64 + 3,
            libc::getpid as *const () as u64,
            libc::clock_gettime as *const () as u64 + 5,
        ]
        .to_vec();
        let ours = NativeSymbolizer::new().resolve_user(pid, now(), &addrs, &[]);
        let symbolizer = Symbolizer::new();
        let src = Source::Process(Process {
            perf_map: false,
            map_files: false,
            ..Process::new(Pid::from(pid))
        });
        let theirs = symbolize(&symbolizer, &src, &addrs);
        for (i, frames) in ours.into_iter().enumerate() {
            let want = named(&theirs, i).map(|s| labels(sym_frames(s, None)));
            assert_eq!(Some(labels(frames)), want, "address {:#x}", addrs[i]);
        }
    }

    #[test]
    fn kernel_frames_get_the_k_suffix() {
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let addr = kallsyms.lines().find_map(|l| {
            let (addr, name) = l.split_once(' ')?;
            name.ends_with(" do_nanosleep")
                .then(|| u64::from_str_radix(addr, 16).ok())?
        });
        let Some(addr) = addr.filter(|&a| a != 0) else {
            println!("skipped: /proc/kallsyms shows no address for do_nanosleep (not root?)");
            return;
        };
        let frames =
            NativeSymbolizer::new().frames(process::id(), now(), &[], &[addr + 4, addr + 8]);
        assert_eq!(labels(frames), ["do_nanosleep_[k]", "do_nanosleep_[k]"]);
    }

    #[test]
    fn unknown_addresses_and_replaced_files() {
        let (mut s, pid) = (NativeSymbolizer::new(), process::id());
        assert_eq!(
            labels(s.frames(pid, now(), &[0x10], &[])),
            ["[unknown] 0x10"]
        );
        // A mapped file deleted since: what is on disk must not name it.
        let path = std::env::temp_dir().join(format!("lagtrace-deleted-{pid}.bin"));
        fs::write(&path, [0u8; 4096]).unwrap();
        let page = map_page(std::os::fd::AsRawFd::as_raw_fd(
            &fs::File::open(&path).unwrap(),
        ));
        fs::remove_file(&path).unwrap();
        // Mapped after the first read of the maps: known from the next one.
        s.pids.get_mut(&pid).unwrap().reread_maps(pid).unwrap();
        let want = format!("[unknown] (lagtrace-deleted-{pid}.bin+0x10)");
        assert_eq!(labels(s.frames(pid, now(), &[page + 0x10], &[])), [want]);
        // A process that is gone: no panic, and unknown user frames.
        let mut child = process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let frames = NativeSymbolizer::new().frames(child.id(), now(), &[0x7f00_0000_1000], &[]);
        assert_eq!(labels(frames), ["[unknown] 0x7f0000001000"]);
    }

    #[test]
    fn jit_frames_come_from_the_perf_map() {
        let (mut s, pid, page) = (NativeSymbolizer::new(), process::id(), map_page(-1));
        let unknown = format!("[unknown] {:#x}", page + 0x10);
        assert_eq!(labels(s.frames(pid, now(), &[page + 0x10], &[])), [unknown]);
        // Written after the first look-up: the cached unknown must expire.
        let map = format!("/tmp/perf-{pid}.map");
        fs::write(&map, format!("{page:x} 1000 py::fake_jit:/app/x.py\n")).unwrap();
        let frames = s.frames(pid, now(), &[page + 0x10], &[]);
        let _ = fs::remove_file(&map);
        assert_eq!(labels(frames), ["py::fake_jit:/app/x.py"]);
        // JIT code in memory mapped after the last read of the maps.
        let late = map_page(-1);
        fs::write(&map, format!("{late:x} 1000 py::late_jit:/app/y.py\n")).unwrap();
        s.pids.get_mut(&pid).unwrap().reread_maps(pid).unwrap();
        let frames = s.frames(pid, now() - 1_000_000_000, &[late + 0x10], &[]);
        let _ = fs::remove_file(&map);
        assert_eq!(labels(frames), ["py::late_jit:/app/y.py"]);
    }

    #[test]
    fn a_perf_map_left_by_an_earlier_process_is_ignored() {
        let (mut s, pid, page) = (NativeSymbolizer::new(), process::id(), map_page(-1));
        let map = format!("/tmp/perf-{pid}.map");
        // Planted with a time before this process started: pid reuse.
        fs::write(&map, format!("{page:x} 1000 stale_owner_fn\n")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::open(&map).unwrap().set_modified(old).unwrap();
        let frames = s.frames(pid, now(), &[page + 0x10], &[]);
        assert_eq!(labels(frames), [format!("[unknown] {:#x}", page + 0x10)]);
        // Written again now, by "this" process: named.
        fs::write(&map, format!("{page:x} 1000 fresh_owner_fn\n")).unwrap();
        let frames = s.frames(pid, now(), &[page + 0x10], &[]);
        let _ = fs::remove_file(&map);
        assert_eq!(labels(frames), ["fresh_owner_fn"]);
    }
}
