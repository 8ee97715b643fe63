//! Builds the kernel programs (`lagtrace-ebpf`) for the BPF target with the
//! nightly toolchain, so that a plain `cargo build` builds everything. The
//! object lands in OUT_DIR and is embedded with `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs (rust-src, bpf-linker).
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "lagtrace-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lagtrace-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
