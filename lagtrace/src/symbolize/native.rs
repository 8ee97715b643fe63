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
        evict::{self, Evict},
        source::{Kernel, Process, Source},
    },
};

// Declared here so that `symbolize/mod.rs` need not know of it.
#[path = "cache.rs"]
mod cache;

use cache::{MAX_CACHED, PidCache, unknown_addr};

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
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .enable_auto_reload(true)
            .build();
        Self {
            symbolizer,
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
        if !kernel.is_empty() {
            self.resolve_kernel(&kernel);
            for &a in kernel.iter().rev() {
                match self.kernel.get(&a) {
                    Some(name) => out.push(name.clone()),
                    None => out.push(format!("{}_[k]", unknown_addr(a))),
                }
            }
        }
        out
    }

    /// Forget cached results for a pid (call when its mappings may have changed).
    pub fn invalidate(&mut self, pid: u32) {
        self.pids.remove(&pid);
        let evict = Evict::Process(evict::Process::new(Pid::from(pid)));
        if let Err(e) = self.symbolizer.evict(&evict) {
            log::debug!("blazesym evict for pid {pid}: {e}");
        }
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
        if !cache.maps_read || todo.iter().any(|&a| cache.find(a).is_none()) {
            if let Err(e) = cache.reread_maps(pid) {
                log::debug!("reading /proc/{pid}/maps: {e}");
            }
        }
        let mut batch = Vec::with_capacity(todo.len());
        for a in todo {
            match cache.find(a) {
                None => cache.insert(a, vec![unknown_addr(a)], false),
                // The file on disk is not the one mapped: its names would lie.
                Some(m) if m.deleted => {
                    let unknown = m.unknown(a);
                    cache.insert(a, vec![unknown], false);
                }
                Some(_) => batch.push(a),
            }
        }
        if batch.is_empty() {
            return;
        }
        let src = Source::Process(Process {
            debug_syms: true,
            perf_map: true,
            map_files: false,
            vdso: true,
            ..Process::new(Pid::from(pid))
        });
        let results = match self.symbolizer.symbolize(&src, Input::AbsAddr(&batch)) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("symbolizing {} addresses of pid {pid}: {e}", batch.len());
                Vec::new()
            }
        };
        for (i, &a) in batch.iter().enumerate() {
            let mapping = cache.find(a);
            let anon = mapping.is_some_and(|m| m.path.is_none());
            let unknown = || vec![mapping.map_or_else(|| unknown_addr(a), |m| m.unknown(a))];
            match results.get(i) {
                Some(Symbolized::Sym(sym)) if !sym.name.is_empty() => {
                    cache.insert(a, sym_frames(sym), false)
                }
                _ => {
                    let frames = unknown();
                    cache.insert(a, frames, anon);
                }
            }
        }
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
        let results = match self.symbolizer.symbolize(&src, Input::AbsAddr(&todo)) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("symbolizing {} kernel addresses: {e}", todo.len());
                Vec::new()
            }
        };
        for (i, &a) in todo.iter().enumerate() {
            let name = match results.get(i) {
                Some(Symbolized::Sym(sym)) if !sym.name.is_empty() => format!("{}_[k]", sym.name),
                _ => format!("{}_[k]", unknown_addr(a)),
            };
            self.kernel.insert(a, name);
        }
    }
}

/// The addresses to look up, innermost first: the stack ends at the first
/// 0; all but the interrupted instruction are return addresses, so step
/// back into the call instruction to get its function, line and inlining.
fn lookup_addrs(ips: &[u64]) -> Vec<u64> {
    ips.iter()
        .take_while(|&&ip| ip != 0)
        .enumerate()
        .map(|(i, &ip)| if i == 0 { ip } else { ip - 1 })
        .collect()
}

/// The distinct addresses for which `cached` is false, in first-seen order.
fn uncached(addrs: &[u64], cached: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut todo: Vec<u64> = Vec::new();
    for &a in addrs {
        if !cached(a) && !todo.contains(&a) {
            todo.push(a);
        }
    }
    todo
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
