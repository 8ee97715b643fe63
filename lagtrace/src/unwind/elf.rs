//! One ELF file's unwind rows: its `.eh_frame`, or its `.debug_frame` where
//! that is all it has, compacted (see `compact.rs`); and the identity the
//! table is shared under (build-id, else device, inode and mtime).
use std::{fs, os::unix::fs::MetadataExt, path::Path};

use gimli::{BaseAddresses, DebugFrame, EhFrame, LittleEndian};
use lagtrace_common::UnwindRow;
use object::{Object, ObjectSection, ObjectSegment};

use super::compact::{CompactStats, R, compact_section};

/// What a table is shared under: the same file mapped by many processes
/// (libc) is parsed and loaded once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileKey {
    BuildId(Vec<u8>),
    Inode { dev: u64, ino: u64, mtime: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file lagtrace can read: {source}")]
    Elf {
        path: String,
        #[source]
        source: object::Error,
    },
    #[error("{path} has no .eh_frame or .debug_frame")]
    NoCfi { path: String },
}

/// A file's compacted rows and the facts needed to map runtime addresses.
#[derive(Debug, Clone)]
pub struct FileTable {
    pub key: FileKey,
    pub rows: Vec<UnwindRow>,
    /// (file offset, virtual address) of each loadable segment, to turn a
    /// mapping's file offset into a load bias.
    pub segments: Vec<(u64, u64)>,
    pub stats: CompactStats,
}

/// The identity of the file at `path` without parsing it.
pub fn inode_key(path: &Path) -> Result<FileKey, TableError> {
    let m = fs::metadata(path).map_err(|source| TableError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(FileKey::Inode {
        dev: m.dev(),
        ino: m.ino(),
        mtime: m.mtime(),
    })
}

/// Parse and compact the unwind tables of the ELF file at `path`.
pub fn file_table(path: &Path) -> Result<FileTable, TableError> {
    let shown = || path.display().to_string();
    let data = fs::read(path).map_err(|source| TableError::Read {
        path: shown(),
        source,
    })?;
    let obj = object::File::parse(&*data).map_err(|source| TableError::Elf {
        path: shown(),
        source,
    })?;
    let key = match obj.build_id() {
        Ok(Some(id)) if !id.is_empty() => FileKey::BuildId(id.to_vec()),
        _ => inode_key(path)?,
    };
    let segments: Vec<(u64, u64)> = obj
        .segments()
        .map(|s| (s.file_range().0, s.address()))
        .collect();
    let section = |name: &str| {
        let s = obj.section_by_name(name)?;
        let data = s.uncompressed_data().ok()?;
        (!data.is_empty()).then_some((s.address(), data))
    };
    let text = obj.section_by_name(".text").map_or(0, |s| s.address());
    let got = obj.section_by_name(".got").map_or(0, |s| s.address());
    let (rows, stats) = if let Some((addr, bytes)) = section(".eh_frame") {
        let mut eh = EhFrame::new(&bytes, LittleEndian);
        eh.set_address_size(8);
        let mut bases = BaseAddresses::default()
            .set_eh_frame(addr)
            .set_text(text)
            .set_got(got);
        if let Some(hdr) = obj.section_by_name(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(hdr.address());
        }
        compact_section::<EhFrame<R<'_>>>(&eh, &bases)
    } else if let Some((_, bytes)) = section(".debug_frame") {
        let mut df = DebugFrame::new(&bytes, LittleEndian);
        df.set_address_size(8);
        compact_section::<DebugFrame<R<'_>>>(&df, &BaseAddresses::default())
    } else {
        return Err(TableError::NoCfi { path: shown() });
    };
    Ok(FileTable {
        key,
        rows,
        segments,
        stats,
    })
}
