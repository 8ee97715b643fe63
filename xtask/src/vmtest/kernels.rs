//! Debian cloud kernels for the VM matrix, fetched with apt through a private
//! configuration under `target/vmtest/apt/SUITE`, so the host's own sources,
//! lists and cache are never touched. The mirror is the one the host's apt
//! already uses (read from its sources), with only the suite changed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{capture, run};

/// A kernel of the matrix: its short label and the Debian suite that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    pub label: &'static str,
    pub suite: &'static str,
}

pub const MATRIX: &[KernelSpec] = &[
    KernelSpec {
        label: "5.10",
        suite: "bullseye",
    },
    KernelSpec {
        label: "6.1",
        suite: "bookworm",
    },
    KernelSpec {
        label: "6.12",
        suite: "trixie",
    },
];

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-50-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/RELEASE` inside the unpacked package.
    pub modules: PathBuf,
}

/// The host's Debian mirror, from its deb822 or one-line sources.
fn host_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list")
                && let Ok(t) = fs::read_to_string(&p)
            {
                texts.push(t);
            }
        }
    }
    for t in &texts {
        for line in t.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri
                && uri.trim_end_matches('/').ends_with("/debian")
            {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
    }
    bail!("no Debian mirror found in the host's apt sources (/etc/apt/sources.list*)")
}

/// apt options that confine it to `dir`.
fn apt_opts(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        "-q".into(),
        "-o".into(),
        "Dir::Etc::SourceList=/dev/null".into(),
        "-o".into(),
        format!("Dir::Etc::SourceParts={d}/sources"),
        "-o".into(),
        format!("Dir::State::Lists={d}/lists"),
        "-o".into(),
        format!("Dir::Cache={d}/cache"),
        "-o".into(),
        "Dir::State::status=/dev/null".into(),
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ]
}

/// Download and unpack the newest cloud kernel of `spec` (cached).
pub fn fetch(spec: KernelSpec, work: &Path) -> Result<Kernel> {
    let apt = work.join("apt").join(spec.suite);
    for sub in ["sources", "lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    let sources = apt.join("sources/debian.sources");
    if !sources.exists() {
        fs::write(
            &sources,
            format!(
                "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
                host_mirror()?,
                spec.suite
            ),
        )?;
    }
    let opts = apt_opts(&apt);
    if fs::read_dir(apt.join("lists"))?.count() <= 1 {
        run(Command::new("apt-get").args(&opts).arg("update"))
            .with_context(|| format!("apt-get update for {}", spec.suite))?;
    }
    let deps = capture(
        Command::new("apt-cache")
            .args(&opts)
            .args(["depends", "linux-image-cloud-amd64"]),
    )?;
    let Some(pkg) = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
    else {
        bail!(
            "{}: linux-image-cloud-amd64 depends on no kernel image",
            spec.suite
        );
    };
    let release = pkg.trim_start_matches("linux-image-").to_string();
    let unpacked = work.join("kernels").join(&release);
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        let dl = work.join("downloads");
        fs::create_dir_all(&dl)?;
        run(Command::new("apt-get")
            .args(&opts)
            .args(["download", &pkg])
            .current_dir(&dl))?;
        let deb = fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dl.display()))?;
        fs::create_dir_all(&unpacked)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    // Debian moved modules to /usr/lib with trixie.
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(&release))
        .find(|p| p.is_dir())
        .with_context(|| format!("no modules folder in {}", unpacked.display()))?;
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}
