//! Errors of the library, with the facts a remedy needs. `main.rs` turns each
//! into one line that tells the user what to do.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: u32 },

    #[error("pid {pid} has exited (a zombie: its parent has not reaped it yet)")]
    Exited { pid: u32 },

    #[error("pid {pid} is a kernel thread, which runs no event loop")]
    KernelThread { pid: u32 },

    #[error("missing privileges: {what}")]
    Privileges { what: String },

    #[error("tracefs is not mounted at {path} and mounting it failed: {source}")]
    Tracefs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the kernel refused to load lagtrace's BPF programs: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },

    #[error("cannot attach {probe}: {source}")]
    Attach {
        probe: String,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    /// An output file that cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An output path that is wrong before anything is written (a folder,
    /// a missing folder, the same file as another output).
    #[error("{what}")]
    OutputPath { what: String },

    /// A recorded file that `lagtrace report` cannot read.
    #[error("{}: {what}", path.display())]
    Recording { path: PathBuf, what: String },

    /// The running kernel cannot do what lagtrace or a flag needs; the
    /// text names the feature and the kernel version that has it.
    #[error("{what}")]
    Unsupported { what: String },

    #[error(transparent)]
    MissingFeature(#[from] crate::probes::features::MissingFeature),
    /// A `--cgroup` that names no cgroup v2 directory.
    #[error(transparent)]
    Select(#[from] crate::session::select::SelectError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
