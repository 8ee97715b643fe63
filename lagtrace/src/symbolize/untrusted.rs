//! Opening files the target controls: its perf map in its `/tmp`, and the
//! files it maps. lagtrace runs as root and the target may be hostile, so a
//! path the target chose must never make lagtrace read a root-only file
//! (a symlink), block forever (a FIFO), or read without end (a sparse file).
//!
//! Every open here is `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY`, is
//! resolved inside the target's own root with `openat2(RESOLVE_IN_ROOT)`
//! (so its symlinks cannot point into lagtrace's filesystem), and is
//! checked after the open with `fstat`: a regular file, owned by one of the
//! target's uids or by root. Readers cap the bytes they take. It must not
//! hand out a file that failed a check.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use super::cache::Mapping;

/// Why a target file was refused.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a regular file (mode {mode:o}); not read")]
    NotRegular { path: PathBuf, mode: u32 },
    #[error("{path} is owned by uid {uid}, neither the target's nor root; not read")]
    Owner { path: PathBuf, uid: u32 },
    #[error("{path} is not the file the target maps (device or inode differ); not read")]
    Replaced { path: PathBuf },
    #[error("{path} has {links} hard links (may be another file linked in); not read")]
    Linked { path: PathBuf, links: u64 },
}

/// The uids a file of the target may belong to: root, the target's real,
/// effective, saved and filesystem uids, and the uid that is root in the
/// target's user namespace (a container's image files belong to it).
pub fn allowed_owners(pid: u32) -> Vec<u32> {
    let mut uids = target_uids(pid);
    uids.push(0);
    if let Ok(map) = std::fs::read_to_string(format!("/proc/{pid}/uid_map")) {
        uids.extend(namespace_root(&map));
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// The target's real, effective, saved and filesystem uids.
pub fn target_uids(pid: u32) -> Vec<u32> {
    let mut uids = Vec::new();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(line) = status.lines().find_map(|l| l.strip_prefix("Uid:"))
    {
        uids.extend(
            line.split_whitespace()
                .filter_map(|u| u.parse::<u32>().ok()),
        );
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The uid (as lagtrace sees it) of root inside a user namespace, from its
/// `uid_map` (`inside outside count` per line).
fn namespace_root(uid_map: &str) -> Option<u32> {
    uid_map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
        match (f.next()??, f.next()??, f.next()??) {
            (0, outside, count) if count > 0 => Some(outside),
            _ => None,
        }
    })
}

const FLAGS: i32 = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;

/// Open `path` (absolute, as the target names it) inside the root of
/// `pid`, without following a symlink anywhere outside that root nor at
/// the last component.
pub fn open_in_root(pid: u32, path: &str, owners: &[u32]) -> Result<File, UntrustedError> {
    let shown = PathBuf::from(format!("/proc/{pid}/root{path}"));
    let err = |source| UntrustedError::Open {
        path: shown.clone(),
        source,
    };
    let root = File::open(format!("/proc/{pid}/root")).map_err(err)?;
    let rel = CString::new(path.trim_start_matches('/'))
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let how = OpenHow {
        flags: (FLAGS | libc::O_NOFOLLOW) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `rel` is a NUL-terminated string and `how` a valid open_how
    // that both outlive the call; the size passed is the size of `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&root),
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: openat2 returned a new file descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    check(file, &shown, owners)
}

/// Open a file the target writes itself (its perf map): owned by one of
/// its own uids (root only if it runs as root), and with a single link, so
/// that it cannot be another user's file hard-linked in where
/// `fs.protected_hardlinks` is off.
pub fn open_own_file(pid: u32, path: &str) -> Result<File, UntrustedError> {
    let f = open_in_root(pid, path, &target_uids(pid))?;
    let links = f
        .metadata()
        .map_err(|source| UntrustedError::Open {
            path: PathBuf::from(path),
            source,
        })?
        .nlink();
    if links != 1 {
        return Err(UntrustedError::Linked {
            path: PathBuf::from(format!("/proc/{pid}/root{path}")),
            links,
        });
    }
    Ok(f)
}

/// Open a mapped file through `/proc/PID/map_files/START-END`: the kernel
/// resolves it to exactly the file mapped there (even if the path was
/// replaced, or a FIFO was mounted over it since), so only the checks after
/// the open are needed.
pub fn open_map_file(
    pid: u32,
    start: u64,
    end: u64,
    owners: &[u32],
) -> Result<File, UntrustedError> {
    let path = PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"));
    let c =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| UntrustedError::Open {
            path: path.clone(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call. No
    // O_NOFOLLOW: the entry is a kernel link to the mapped file itself.
    let fd = unsafe { libc::open(c.as_ptr(), FLAGS) };
    if fd < 0 {
        return Err(UntrustedError::Open {
            path,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: open returned a new file descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    check(file, &path, owners)
}

/// The exact file of a mapping: through `map_files` (needs CAP_SYS_ADMIN),
/// else by its path inside the target's root, checked to be the same file.
///
/// A `map_files` entry names an address range, not a file: between the
/// read of the maps and the open, the target may have unloaded the file
/// and loaded another at the same addresses (a plugin swapped by dlclose
/// and dlopen). The file opened is the mapping's only if the maps, read
/// again after the open, still show the same file there; else it is taken
/// by its path. Before this check, such a swap named every sample of the
/// first library with the second's functions for the rest of the trace
/// (`tests/hostile.rs`, dlswap, about 1 run in 5 with `--tick`).
pub fn open_mapping(pid: u32, m: &Mapping, owners: &[u32]) -> Result<File, UntrustedError> {
    match open_map_file(pid, m.start, m.end, owners) {
        Ok(f) if still_mapped(pid, m) => Ok(f),
        // Swapped since, or no map_files: by path.
        Ok(_) | Err(UntrustedError::Open { .. }) => {
            let path = m.path.as_deref().unwrap_or_default();
            let f = open_in_root(pid, path, owners)?;
            same_file(&f, Path::new(path), m.dev, m.inode)?;
            Ok(f)
        }
        other => other,
    }
}

/// Whether `/proc/PID/maps` still shows `m`'s file over `m`'s range.
fn still_mapped(pid: u32, m: &Mapping) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|text| super::cache::parse_maps(&text).iter().any(|n| n.same(m)))
}

/// A regular file owned by an allowed uid, or an error naming why not.
fn check(file: File, path: &Path, owners: &[u32]) -> Result<File, UntrustedError> {
    let meta = file.metadata().map_err(|source| UntrustedError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(UntrustedError::NotRegular {
            path: path.to_path_buf(),
            mode: meta.mode(),
        });
    }
    if !owners.contains(&meta.uid()) {
        return Err(UntrustedError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    Ok(file)
}

/// Require that an opened file is the one a mapping names (`maj:min` and
/// inode as in `/proc/PID/maps`).
pub fn same_file(
    file: &File,
    path: &Path,
    dev: (u32, u32),
    inode: u64,
) -> Result<(), UntrustedError> {
    let meta = file.metadata().map_err(|source| UntrustedError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let (maj, min) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    if (maj, min) == dev && meta.ino() == inode {
        Ok(())
    } else {
        Err(UntrustedError::Replaced {
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, os::unix::fs::PermissionsExt, process};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lagtrace-untrusted-{}-{tag}", process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_symlinks_fifos_and_foreign_owners() {
        let (pid, d) = (process::id(), dir("checks"));
        let me = allowed_owners(pid);
        let file = d.join("map");
        fs::write(&file, "1000 10 f\n").unwrap();
        let p = |name: &str| d.join(name).to_str().unwrap().to_string();
        assert!(open_in_root(pid, &p("map"), &me).is_ok());
        std::os::unix::fs::symlink(&file, d.join("link")).unwrap();
        assert!(matches!(
            open_in_root(pid, &p("link"), &me),
            Err(UntrustedError::Open { source, .. }) if source.raw_os_error() == Some(libc::ELOOP)
        ));
        let fifo = CString::new(p("fifo")).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Returns at once (O_NONBLOCK), and is refused.
        assert!(matches!(
            open_in_root(pid, &p("fifo"), &me),
            Err(UntrustedError::NotRegular { .. })
        ));
        let nobody = [65534];
        let mine = me.iter().any(|&u| u != 65534);
        if mine {
            assert!(matches!(
                open_in_root(pid, &p("map"), &nobody),
                Err(UntrustedError::Owner { .. })
            ));
        }
        // A file of the target's own, but hard-linked: refused.
        assert!(open_own_file(pid, &p("map")).is_ok());
        fs::hard_link(&file, d.join("hard")).unwrap();
        assert!(matches!(
            open_own_file(pid, &p("map")),
            Err(UntrustedError::Linked { links: 2, .. })
        ));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_namespace_root_owns_its_image() {
        assert_eq!(
            namespace_root("         0          0 4294967295\n"),
            Some(0)
        );
        assert_eq!(namespace_root("0 100000 65536\n"), Some(100000));
        assert_eq!(namespace_root("1000 1000 1\n"), None);
        assert_eq!(namespace_root("garbage"), None);
    }

    /// This test process's first mapping of its own executable, and its path.
    fn own_exe_mapping() -> (Mapping, PathBuf) {
        let maps = fs::read_to_string(format!("/proc/{}/maps", process::id())).unwrap();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let line = maps
            .lines()
            .find(|l| l.ends_with(exe.to_str().unwrap()))
            .expect("own executable mapped");
        (super::super::cache::parse_maps(line).remove(0), exe)
    }

    #[test]
    fn map_files_name_the_mapped_file() {
        let pid = process::id();
        let (m, exe) = own_exe_mapping();
        match open_map_file(pid, m.start, m.end, &allowed_owners(pid)) {
            Ok(f) => same_file(&f, &exe, m.dev, m.inode).unwrap(),
            // map_files needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE).
            Err(UntrustedError::Open { source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                eprintln!("SKIP map_files_name_the_mapped_file: no CAP_SYS_ADMIN here")
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// A mapping is still there only with the same file over the same range.
    #[test]
    fn a_range_that_holds_another_file_is_not_still_mapped() {
        let pid = process::id();
        let (mut m, _) = own_exe_mapping();
        assert!(still_mapped(pid, &m));
        m.inode += 1;
        assert!(!still_mapped(pid, &m), "another inode over the same range");
    }
}
