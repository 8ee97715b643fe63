//! An output file written beside its final path and renamed into place when
//! complete, so a reader never sees half a file: a full disk or a killed
//! lagtrace leaves the old file (or none) and a temporary file, never a
//! truncated SVG under the name the user asked for.
//!
//! It must not decide what to do about a failure: it reports the error and
//! removes its temporary file; the caller warns and carries on.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

/// `dir/.name.lagtrace-PID.tmp` for `dir/name`.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lagtrace-{}.tmp", std::process::id()))
}

impl AtomicFile {
    /// Create the temporary file now: this is the check that the output can
    /// be written, made before anything is traced.
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| Error::Output {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: io::Error) -> Error {
        Error::Output {
            path: self.path.clone(),
            source,
        }
    }

    /// Write to the temporary file (buffered).
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let res = match self.out.as_mut() {
            Some(out) => out.write_all(bytes),
            None => Err(io::Error::other("the file was already closed")),
        };
        res.map_err(|e| self.err(e))
    }

    /// Push buffered bytes to the kernel (a full disk shows here).
    pub fn flush(&mut self) -> Result<()> {
        let res = match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        };
        res.map_err(|e| self.err(e))
    }

    /// Flush, sync and rename into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let Some(out) = self.out.take() else {
            return Err(self.err(io::Error::other("the file was already closed")));
        };
        let file = out.into_inner().map_err(|e| e.into_error());
        let res = file
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(&self.tmp, &self.path));
        match res {
            Ok(()) => Ok(self.path.clone()),
            Err(e) => Err(self.err(e)),
        }
    }
}

impl Drop for AtomicFile {
    /// An uncommitted file is abandoned: its temporary file goes.
    fn drop(&mut self) {
        if self.out.is_some() || self.tmp.exists() {
            self.out = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lagtrace-unit-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn appears_only_when_committed() {
        let d = scratch("atomic");
        let p = d.join("out.txt");
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"hello\n").unwrap();
        f.flush().unwrap();
        assert!(!p.exists());
        assert_eq!(f.commit().unwrap(), p);
        assert_eq!(fs::read_to_string(&p).unwrap(), "hello\n");
        assert_eq!(
            fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary file left"
        );

        let q = d.join("abandoned.txt");
        let mut g = AtomicFile::create(&q).unwrap();
        g.write_all(b"half").unwrap();
        drop(g);
        assert!(!q.exists());
        assert_eq!(
            fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
