//! `cargo xtask test`: the one command CI and developers run to check
//! everything — setup, a release build of the workspace, then all tests,
//! then the integration tests again on Debian's 6.1 kernel in a VM (`cargo
//! xtask vmtest`; skipped loudly where qemu cannot boot it, or with
//! `LAGTRACE_VMTEST=0`).
//! Tests run serially: integration tests attach BPF programs and time real
//! processes, so running them in parallel would skew each other.
use anyhow::{Context as _, Result};

use crate::{
    setup::{self, SetupArgs},
    util::{self, cargo, run},
    vmtest::{self, VmtestArgs},
};

/// Built host-side, `lagtrace-ebpf` is only a stub whose bin is also named
/// `lagtrace`, and it would clobber `target/release/lagtrace` (cargo warns
/// "output filename collision"). `lagtrace/build.rs` builds the real one.
const EXCLUDE: &[&str] = &["--exclude", "lagtrace-ebpf"];

pub fn run_tests(test_args: &[String]) -> Result<()> {
    setup::run_setup(&SetupArgs::default()).context("setup failed")?;
    let root = util::is_root();
    if !root {
        util::warn("not running as root: the root-only integration tests will skip themselves");
    }
    run(cargo()
        .args(["build", "--release", "--workspace"])
        .args(EXCLUDE))
    .context("build failed")?;
    run(cargo()
        .args(["test", "--release", "--workspace"])
        .args(EXCLUDE)
        .args(["--", "--test-threads=1"])
        .args(test_args))
    .context("tests failed")?;
    if !root {
        util::warn("not run as root: the root-only integration tests were skipped");
        util::warn("SKIP vmtest: it needs root (apt-get, virtiofsd)");
        return Ok(());
    }
    // One kernel of the matrix: under single-threaded TCG (nested KVM hangs
    // here) it adds about 5 minutes on a 2-core host, within CI's budget;
    // its time limit is a hard kill, so it can never stall CI.
    if std::env::var_os("LAGTRACE_VMTEST").is_some_and(|v| v == "0") {
        util::warn(
            "SKIP vmtest: LAGTRACE_VMTEST=0 (the VM matrix: `cargo xtask vmtest --kernel all`)",
        );
        return Ok(());
    }
    vmtest::run_vmtest(&VmtestArgs::ci("6.1")).context("vmtest on Debian 6.1 failed")
}
