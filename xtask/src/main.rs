//! `cargo xtask`: the project's chores (setup, test, demo, bench) as a Rust
//! program, so CI and developers run exactly the same steps.
mod bench;
mod demo;
mod pyoffsets;
mod setup;
mod test;
mod util;
mod vmtest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "lagtrace's project chores"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install what building and testing needs: nightly + rust-src,
    /// bpf-linker, Debian packages. Idempotent.
    Setup(setup::SetupArgs),
    /// Setup, release build of the workspace, then all tests, serially.
    Test {
        /// Passed to the test binaries, e.g. `cargo xtask test -- asyncio`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
    /// Trace the bundled demo target for 10 s; outputs go to target/demo/.
    Demo,
    /// Measure lagtrace's overhead and resolution; writes bench/RESULTS.md.
    Bench(bench::BenchArgs),
    /// Run the integration tests on Debian's 5.10, 6.1 and 6.12 kernels in qemu.
    Vmtest(vmtest::VmtestArgs),
    /// Regenerate lagtrace's CPython offset table from the pyenv installs'
    /// headers (3.8-3.13).
    GenPyoffsets,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup(args) => setup::run_setup(&args),
        Cmd::Test { test_args } => test::run_tests(&test_args),
        Cmd::Demo => demo::run_demo(),
        Cmd::Bench(args) => bench::run_bench(&args),
        Cmd::Vmtest(args) => vmtest::run_vmtest(&args),
        Cmd::GenPyoffsets => pyoffsets::run_gen(),
    };
    // Print the error chain ourselves: no backtrace noise when RUST_BACKTRACE is set.
    if let Err(e) = result {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Cmd};

    fn test_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).unwrap().command {
            Cmd::Test { test_args } => test_args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn cli() {
        Cli::command().debug_assert();
        assert!(test_args(&["xtask", "test"]).is_empty());
        assert_eq!(test_args(&["xtask", "test", "--", "asyncio"]), ["asyncio"]);
        assert_eq!(
            test_args(&["xtask", "test", "--", "asyncio", "--nocapture"]),
            ["asyncio", "--nocapture"]
        );
        assert_eq!(test_args(&["xtask", "test", "asyncio"]), ["asyncio"]);
    }
}
