//! `cargo xtask setup`: installs what building and testing lagtrace needs
//! beyond cargo itself — the nightly toolchain and its `rust-src` (the eBPF
//! crate is built with `-Z build-std=core`), `bpf-linker`, and the Debian
//! packages the tests, demo and bench use. Idempotent: each item is checked
//! first, so a fully set-up machine takes seconds.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, capture, cargo, run};

/// Debian packages used by tests, demo and bench.
/// qemu-system-x86 (with its virtiofsd), busybox-static, xz-utils and zstd
/// are for `cargo xtask vmtest`.
pub const DEB_PACKAGES: &[&str] = &[
    "bpftool",
    "wrk",
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "zstd",
    // `go tool pprof` reads lagtrace's --pprof files in the report test.
    "golang-go",
    // A real Prometheus server scrapes `--metrics` in tests/metrics.rs.
    "prometheus",
    // The bench's floor of the tracepoint modes (`perf stat` on them).
    "linux-perf",
];
/// bpf-linker versions we accept when installing.
const BPF_LINKER_VERSION: &str = "^0.13";
const NIGHTLY: &str = "nightly";

#[derive(clap::Args, Debug, Default)]
pub struct SetupArgs {
    /// Reinstall bpf-linker even if a working one is on PATH.
    #[arg(long)]
    pub force_linker: bool,
}

pub fn run_setup(args: &SetupArgs) -> Result<()> {
    nightly().context("nightly toolchain")?;
    rust_src().context("rust-src")?;
    bpf_linker(args.force_linker).context("bpf-linker")?;
    deb_packages().context("debian packages")?;
    // uvloop for the uvloop test; aiohttp and requests for the culprit
    // tests on real frameworks.
    python_venv("venv-uvloop", &["uvloop"], "uvloop", "the uvloop test");
    python_venv(
        "venv-frameworks",
        &["aiohttp", "requests"],
        "aiohttp, requests",
        "the framework tests",
    );
    // express for the culprit test on a Node framework; the speedscope
    // package (its file-format schema) and ajv for the report test.
    npm_local(
        "node-frameworks",
        &["express"],
        &["express/package.json"],
        "the express test",
    );
    npm_local(
        "npm",
        &["speedscope@1", "ajv@8"],
        &[
            "speedscope/dist/release/file-format-schema.json",
            "ajv/package.json",
        ],
        "the speedscope check",
    );
    println!("tracefs: nothing to do (lagtrace mounts it itself)");
    Ok(())
}

fn secs(start: Instant) -> String {
    format!("{:.0}s", start.elapsed().as_secs_f64())
}

/// A `rustup run nightly <program>` command.
fn nightly_cmd(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY, program]);
    cmd
}

fn nightly() -> Result<()> {
    let list = capture(Command::new("rustup").args(["toolchain", "list"]))?;
    // Lines look like `nightly-x86_64-unknown-linux-gnu (active)`; a dated
    // `nightly-2024-01-01-...` is not the `nightly` aya-build asks for.
    let present = list.lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        name.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if present {
        println!("nightly toolchain: present");
        return Ok(());
    }
    let start = Instant::now();
    run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))?;
    println!("nightly toolchain: installed in {}", secs(start));
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if installed
        .lines()
        .any(|l| l.split_whitespace().next() == Some("rust-src"))
    {
        println!("rust-src: present");
        return Ok(());
    }
    let start = Instant::now();
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    println!("rust-src: installed in {}", secs(start));
    Ok(())
}

/// `bpf-linker --version`, run the way rustc runs it during the eBPF build:
/// aya-build uses `rustup run nightly cargo`, which puts the nightly's `lib/`
/// (holding the libLLVM a cargo-installed bpf-linker links) on the library path.
fn linker_version() -> Result<String> {
    let out = capture(nightly_cmd("bpf-linker").arg("--version"))?;
    Ok(out.trim().to_owned())
}

fn bpf_linker(force: bool) -> Result<()> {
    if force {
        println!("bpf-linker: --force-linker given, reinstalling");
    } else {
        match linker_version() {
            Ok(version) => {
                println!("{version}: present");
                return Ok(());
            }
            Err(e) => {
                let why = format!("{e:#}");
                let why = why.lines().next().unwrap_or_default();
                println!("bpf-linker: missing or broken ({why}); installing");
            }
        }
    }
    let start = Instant::now();
    install_linker()?;
    let version = linker_version()
        .context("installed, but it does not run; is cargo's bin folder (~/.cargo/bin) on PATH?")?;
    println!("{version}: installed in {}", secs(start));
    Ok(())
}

/// Builds bpf-linker against the nightly's own libLLVM, so its LLVM matches
/// the bitcode rustc emits. bpf-linker's build looks for `lib/libLLVM.so`
/// under `LLVM_PREFIX`, but the nightly ships only a versioned file, hence the
/// symlink folder.
fn install_linker() -> Result<()> {
    let major = llvm_major(&capture(nightly_cmd("rustc").arg("-vV"))?)?;
    let sysroot = capture(nightly_cmd("rustc").args(["--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let libllvm = find_libllvm(&libdir)?;

    let prefix = util::in_repo("target/llvm-prefix");
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("could not create {}", prefix.join("lib").display()))?;
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("could not remove {}", link.display()))?;
    }
    symlink(&libllvm, &link).with_context(|| {
        format!(
            "could not symlink {} -> {}",
            link.display(),
            libllvm.display()
        )
    })?;

    // bpf-linker's rpath points at the symlink folder, which `cargo clean`
    // deletes; also point it at the nightly's lib/ itself.
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    rustflags.push_str(&format!(" -C link-arg=-Wl,-rpath,{}", libdir.display()));
    let features = format!("llvm-{major}");
    run(cargo()
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", rustflags.trim())
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        // --force: replace a broken install (e.g. built against an older
        // nightly's libLLVM); plain `cargo install` would keep it.
        .args(["--force", "--no-default-features", "--features", &features]))
}

/// The LLVM major version from `rustc -vV` ("LLVM version: 22.1.4" -> 22).
fn llvm_major(version_info: &str) -> Result<u32> {
    let version = version_info
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .context("`rustc -vV` printed no `LLVM version:` line")?
        .trim();
    let major = version.split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("unexpected LLVM version `{version}`"))
}

/// The versioned `libLLVM.so.*` in the nightly's `lib/` folder.
fn find_libllvm(libdir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(libdir).with_context(|| format!("could not list {}", libdir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("libLLVM.so."))
        .map(|e| e.path())
        .collect();
    found.sort();
    match found.pop() {
        Some(lib) => Ok(lib),
        None => bail!("no libLLVM.so.* in {}", libdir.display()),
    }
}

/// A project-local virtualenv (`target/<dir>`) with `packages` from PyPI,
/// checked by importing `import`. Best effort: without it the tests that
/// need it skip loudly, as `skips` says.
fn python_venv(dir: &str, packages: &[&str], import: &str, skips: &str) {
    let venv = util::in_repo(&format!("target/{dir}"));
    let python = venv.join("bin/python3");
    let has = || capture(Command::new(&python).args(["-c", &format!("import {import}")])).is_ok();
    if python.exists() && has() {
        println!("{dir}: present");
        return;
    }
    let start = Instant::now();
    let made = run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).and_then(|()| {
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages))
    });
    match made {
        Ok(()) if has() => println!("{dir}: installed in {}", secs(start)),
        Ok(()) => util::warn(&format!(
            "{dir}: pip ran but `import {import}` fails; {skips} will skip"
        )),
        Err(e) => util::warn(&format!("{dir}: {e:#}; {skips} will skip")),
    }
}

/// Project-local npm packages (`target/<dir>/node_modules`), present when
/// every file of `marks` (relative to `node_modules`) exists. Best effort,
/// like [`python_venv`].
fn npm_local(dir: &str, packages: &[&str], marks: &[&str], skips: &str) {
    let root = util::in_repo(&format!("target/{dir}"));
    let present = || {
        marks
            .iter()
            .all(|m| root.join("node_modules").join(m).exists())
    };
    if present() {
        println!("{dir}: present");
        return;
    }
    let start = Instant::now();
    let made = std::fs::create_dir_all(&root)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            run(Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&root)
                .args(packages))
        });
    match made {
        Ok(()) if present() => {
            println!("{dir}: {} installed in {}", packages.join(" "), secs(start))
        }
        Ok(()) => util::warn(&format!(
            "{dir}: npm ran but {} is missing; {skips} will skip",
            marks.join(", ")
        )),
        Err(e) => util::warn(&format!("{dir}: {e:#}; {skips} will skip")),
    }
}

fn deb_installed(package: &str) -> bool {
    let status = capture(Command::new("dpkg").args(["-s", package]));
    status.is_ok_and(|s| s.lines().any(|l| l == "Status: install ok installed"))
}

fn deb_packages() -> Result<()> {
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        println!("debian packages ({}): present", DEB_PACKAGES.join(", "));
        return Ok(());
    }
    let list = missing.join(" ");
    if !util::is_root() {
        util::warn(&format!(
            "debian packages missing: {list}\n\
             not root, so not installing them; tests/demo/bench that need them will fail.\n\
             Install them with: sudo apt-get install -y {list}"
        ));
        return Ok(());
    }
    let start = Instant::now();
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(apt().arg("update"))?;
    run(apt().args(["install", "-y"]).args(&missing))?;
    println!("debian packages ({list}): installed in {}", secs(start));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn parses_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv).unwrap(), 22);
        assert!(llvm_major("rustc 1.0\n").is_err());
    }
}
