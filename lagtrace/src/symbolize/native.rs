//! Names for native stack addresses (user space and kernel) with blazesym:
//! `function (dir/file.c:12)` with inlined functions as their own frames,
//! JIT code from perf maps, `name_[k]` for the kernel. It must never print a
//! wrong name: what it cannot name surely becomes `[unknown] ...`, and it
//! must not panic when the target has exited.
use std::{collections::HashMap, path::Component};

use blazesym::{
    MaybeDefault, Pid,
    symbolize::{
        CodeInfo, Input, Sym, Symbolized, Symbolizer,
        source::{Elf, Kernel, Process, Source},
    },
};

// Declared here so that `symbolize/mod.rs` need not know of it.

use super::cache::{MAX_CACHED, PidCache, lookup_addrs, uncached, unknown_addr};

pub struct NativeSymbolizer {
    symbolizer: Symbolizer,
    pids: HashMap<u32, PidCache>,
    kernel: HashMap<u64, String>,
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
        }
    }

    /// Frames of one sample, OUTERMOST FIRST: the user frames, then the
    /// kernel frames. `user_ips` and `kernel_ips` are innermost first, as
    /// `bpf_get_stackid` gives them (a 0 ends the stack).
    pub fn frames(&mut self, pid: u32, user_ips: &[u64], kernel_ips: &[u64]) -> Vec<String> {
        let user = lookup_addrs(user_ips);
        let kernel = lookup_addrs(kernel_ips);
        let mut out = Vec::new();
        if !user.is_empty() {
            self.resolve_user(pid, &user);
            let cache = self.pids.get(&pid);
            for &a in user.iter().rev() {
                match cache.and_then(|c| c.frames.get(&a)) {
                    Some(frames) => out.extend(frames.iter().cloned()),
                    None => out.push(unknown_addr(a)),
                }
            }
        }
        self.resolve_kernel(&kernel);
        for &a in kernel.iter().rev() {
            match self.kernel.get(&a) {
                Some(name) => out.push(name.clone()),
                None => out.push(format!("{}_[k]", unknown_addr(a))),
            }
        }
        out
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
        let mut seen = std::collections::HashSet::new();
        let probes: Vec<u64> = cache
            .maps
            .iter()
            .filter(|m| !m.deleted && m.path.as_deref().is_some_and(|p| p.starts_with('/')))
            .filter(|m| seen.insert(m.path.clone()))
            .map(|m| m.start)
            .collect();
        let t0 = std::time::Instant::now();
        for a in probes {
            // One address per file; its answer is irrelevant, and not cached.
            let src = Source::Process(Process {
                debug_syms: true,
                perf_map: false,
                map_files: false,
                ..Process::new(Pid::from(pid))
            });
            let _ = symbolize(&self.symbolizer, &src, &[a]);
        }
        log::debug!("symbols of pid {pid} loaded in {:?}", t0.elapsed());
    }

    fn resolve_user(&mut self, pid: u32, addrs: &[u64]) {
        let cache = self.pids.entry(pid).or_default();
        cache.expire_anon_unknown(pid, addrs);
        let mut todo = uncached(addrs, |a| cache.frames.contains_key(&a));
        if todo.is_empty() {
            return;
        }
        if cache.frames.len() + todo.len() > MAX_CACHED {
            cache.clear_frames();
            todo = uncached(addrs, |_| false);
        }
        // Libraries loaded since the last read: read the maps again, once.
        // Within a budget per second, so that garbage addresses stay cheap.
        let stale = !cache.maps_read
            || (cache.may_reread() && todo.iter().any(|&a| cache.find(a).is_none()));
        if stale && let Err(e) = cache.reread_maps(pid) {
            log::debug!("reading /proc/{pid}/maps: {e}");
        }
        let mut batch = Vec::with_capacity(todo.len());
        for a in todo {
            match cache.find(a) {
                Some(m) if !m.deleted => batch.push(a),
                // Unmapped, or the file on disk is not the one mapped (its
                // names would lie).
                _ => cache.insert_unknown(a),
            }
        }
        if batch.is_empty() {
            return;
        }
        if other_mount_ns(pid) {
            // A container: its files are at /proc/PID/root, not at the paths
            // its maps name in our own mount namespace.
            batch = self.resolve_through_root(pid, batch);
            if batch.is_empty() {
                return;
            }
        }
        let cache = self.pids.entry(pid).or_default();
        let src = Source::Process(Process {
            debug_syms: true,
            perf_map: true,
            map_files: false,
            vdso: true,
            ..Process::new(Pid::from(pid))
        });
        let results = symbolize(&self.symbolizer, &src, &batch);
        for (i, &a) in batch.iter().enumerate() {
            match named(&results, i) {
                Some(sym) => cache.insert(a, sym_frames(sym)),
                None => cache.insert_unknown(a),
            }
        }
    }

    /// Symbolize file-backed addresses of a process in another mount
    /// namespace through `/proc/PID/root`, by file offset. Returns the
    /// addresses left (anonymous memory, JIT code) for the process source,
    /// which reads perf maps through `/proc/PID/root` itself.
    fn resolve_through_root(&mut self, pid: u32, batch: Vec<u64>) -> Vec<u64> {
        let cache = self.pids.entry(pid).or_default();
        let mut by_file: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        let mut rest = Vec::new();
        for a in batch {
            match cache.find(a) {
                Some(m) if m.path.as_deref().is_some_and(|p| p.starts_with('/')) => {
                    let path = m.path.clone().unwrap_or_default();
                    by_file
                        .entry(path)
                        .or_default()
                        .push((a, a - m.start + m.offset));
                }
                _ => rest.push(a),
            }
        }
        for (path, addrs) in by_file {
            let src = Source::Elf(Elf::new(format!("/proc/{pid}/root{path}")));
            let offsets: Vec<u64> = addrs.iter().map(|&(_, off)| off).collect();
            let results = self
                .symbolizer
                .symbolize(&src, Input::FileOffset(&offsets))
                .unwrap_or_default();
            for (i, &(a, _)) in addrs.iter().enumerate() {
                match named(&results, i) {
                    Some(sym) => cache.insert(a, sym_frames(sym)),
                    None => cache.insert_unknown(a),
                }
            }
        }
        rest
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
            let name = named(&results, i).map_or_else(|| unknown_addr(a), |s| s.name.to_string());
            self.kernel.insert(a, format!("{name}_[k]"));
        }
    }
}

/// True when the process sees another filesystem than lagtrace does.
fn other_mount_ns(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    match (ns("self"), ns(&pid.to_string())) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
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

/// The function and the functions inlined into it at this address, outer first.
fn sym_frames(sym: &Sym<'_>) -> Vec<String> {
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    for f in sym.inlined.iter() {
        frames.push(frame(&f.name, f.code_info.as_ref()));
    }
    frames
}

/// `function (dir/file.c:12)` where the line is known, else `function`.
fn frame(name: &str, code: Option<&CodeInfo<'_>>) -> String {
    match code.and_then(|c| Some((c, c.line?))) {
        Some((c, line)) => format!("{name} ({}:{line})", short_path(c)),
        None => name.to_string(),
    }
}

/// The file's base name and at most one parent directory.
fn short_path(code: &CodeInfo<'_>) -> String {
    let path = code.to_path();
    let mut names = path.components().rev().map_while(|c| match c {
        Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
        _ => None,
    });
    match (names.next(), names.next()) {
        (Some(file), Some(dir)) => format!("{dir}/{file}"),
        (Some(file), None) => file,
        _ => code.file.to_string_lossy().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, process};

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
        let frames = s.frames(pid, &[inner, outer + 1], &[]);
        let text = frames.join(" | ");
        assert!(frames[0].contains("other_noinline_fn"), "{text}");
        // In release builds inlined helpers (black_box) may follow it.
        let inner_at = frames.iter().position(|f| f.contains("some_noinline_fn"));
        assert!(inner_at.is_some_and(|i| i > 0), "{text}");
        assert!(
            text.contains("(symbolize/native.rs:"),
            "no file:line in {text}"
        );
        assert_eq!(s.frames(pid, &[inner, outer + 1], &[]), frames, "cached");
        assert!(s.frames(pid, &[], &[]).is_empty());
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
        let frames = NativeSymbolizer::new().frames(process::id(), &[], &[addr + 4, addr + 8]);
        assert_eq!(frames, ["do_nanosleep_[k]", "do_nanosleep_[k]"]);
    }

    #[test]
    fn unknown_addresses_and_replaced_files() {
        let (mut s, pid) = (NativeSymbolizer::new(), process::id());
        assert_eq!(s.frames(pid, &[0x10], &[]), ["[unknown] 0x10"]);
        // A mapped file deleted since: what is on disk must not name it.
        let path = std::env::temp_dir().join(format!("lagtrace-deleted-{pid}.bin"));
        fs::write(&path, [0u8; 4096]).unwrap();
        let page = map_page(std::os::fd::AsRawFd::as_raw_fd(
            &fs::File::open(&path).unwrap(),
        ));
        fs::remove_file(&path).unwrap();
        let want = format!("[unknown] (lagtrace-deleted-{pid}.bin+0x10)");
        assert_eq!(s.frames(pid, &[page + 0x10], &[]), [want]);
        // A process that is gone: no panic, and unknown user frames.
        let mut child = process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let frames = NativeSymbolizer::new().frames(child.id(), &[0x7f00_0000_1000], &[]);
        assert_eq!(frames, ["[unknown] 0x7f0000001000"]);
    }

    #[test]
    fn jit_frames_come_from_the_perf_map() {
        let (mut s, pid, page) = (NativeSymbolizer::new(), process::id(), map_page(-1));
        let unknown = format!("[unknown] {:#x}", page + 0x10);
        assert_eq!(s.frames(pid, &[page + 0x10], &[]), [unknown]);
        // Written after the first look-up: the cached unknown must expire.
        let map = format!("/tmp/perf-{pid}.map");
        fs::write(&map, format!("{page:x} 1000 py::fake_jit:/app/x.py\n")).unwrap();
        let frames = s.frames(pid, &[page + 0x10], &[]);
        let _ = fs::remove_file(&map);
        assert_eq!(frames, ["py::fake_jit:/app/x.py"]);
    }
}
