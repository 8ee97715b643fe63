//! The guest's initramfs: a static busybox, the kernel modules needed to
//! mount the host's root over virtiofs, and `init` (`xtask/vmtest/init.sh`).
//! Written as a `newc` cpio archive by hand: it is a small format, and no
//! cpio tool is needed on the host.
use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;

/// Modules that give the guest virtiofs over virtio-pci, and overlayfs to
/// make the shared root writable in guest memory. Where a kernel has
/// one built in, it is simply not found and skipped.
const WANTED: &[&str] = &["virtio_pci", "virtiofs", "overlay"];
const BUSYBOX: &str = "/bin/busybox";
const INIT: &str = include_str!("../../vmtest/init.sh");

/// A newc archive being written.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            // Writing to a Vec cannot fail.
            let _ = write!(self.out, "{f:08x}");
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        self.entry(name, if exec { 0o100755 } else { 0o100644 }, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Module file contents, decompressed.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} (install it with apt-get)"))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` field of a module's `.modinfo`.
fn depends_of(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &module[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// Every module file under `dir`, by module name.
fn index_modules(dir: &Path) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                && let Some(stem) = n.split(".ko").next().filter(|_| n.contains(".ko"))
            {
                out.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    out
}

/// The wanted modules and their dependencies, dependencies first.
fn modules_in_order(kernel: &Kernel) -> Result<Vec<(String, Vec<u8>)>> {
    let index = index_modules(&kernel.modules);
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        // Not a file: built into this kernel.
        let Some(path) = index.get(name) else {
            return Ok(());
        };
        let data = read_module(path)?;
        for dep in depends_of(&data) {
            visit(&dep, index, seen, order)?;
        }
        order.push((name.to_string(), data));
        Ok(())
    }
    for m in WANTED {
        visit(m, &index, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Write the initramfs for `kernel` to `out`.
pub fn build(kernel: &Kernel, out: &Path) -> Result<()> {
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (apt-get install busybox-static)"))?;
    let mut c = Cpio::new();
    for d in [
        "bin", "dev", "proc", "sys", "host", "lower", "rw", "modules",
    ] {
        c.dir(d);
    }
    c.file("bin/busybox", &busybox, true);
    let mut list = String::new();
    for (name, data) in modules_in_order(kernel)? {
        c.file(&format!("modules/{name}.ko"), &data, false);
        list.push_str(&name);
        list.push('\n');
    }
    c.file("modules/order", list.as_bytes(), false);
    c.file("init", INIT.as_bytes(), true);
    fs::write(out, c.finish()).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_field_is_parsed() {
        let m = b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring,fuse-x\0name=x\0";
        assert_eq!(depends_of(m), ["virtio", "virtio_ring", "fuse_x"]);
        assert!(depends_of(b"\0depends=\0").is_empty());
        assert!(depends_of(b"nothing").is_empty());
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::new();
        c.dir("bin");
        c.file("bin/x", b"hello", true);
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert!(out.len().is_multiple_of(4));
        let trailer = out.windows(10).position(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }
}
