//! Output paths, checked before anything is traced: each names a file (not
//! a folder) in a folder that exists, and no two outputs resolve to the same
//! file, symlinks followed. A bad path found at the end would throw a whole
//! trace away.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Where an output really goes: symlinks (of the file and of its folders)
/// resolved, so two names of one file compare equal.
pub fn resolve(flag: &str, path: &Path) -> Result<PathBuf> {
    let bad = |why: String| Error::OutputPath {
        what: format!("{flag} {}: {why}", path.display()),
    };
    if path.as_os_str().is_empty() {
        return Err(bad("an empty path".into()));
    }
    if let Ok(meta) = fs::metadata(path) {
        if meta.is_dir() {
            return Err(bad("is a folder; give a file name inside it".into()));
        }
        return fs::canonicalize(path).map_err(|e| bad(e.to_string()));
    }
    if fs::symlink_metadata(path).is_ok() {
        return Err(bad(
            "is a symlink to nothing; remove it or give another path".into(),
        ));
    }
    let Some(name) = path.file_name() else {
        return Err(bad("names no file; give a file name".into()));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = fs::canonicalize(parent).map_err(|e| {
        bad(format!(
            "its folder {} cannot be used ({e}); create it first",
            parent.display()
        ))
    })?;
    if !dir.is_dir() {
        return Err(bad(format!("{} is not a folder", parent.display())));
    }
    Ok(dir.join(name))
}

/// Resolve every (flag, path) and refuse two outputs that are one file.
pub fn plan(outputs: &[(&'static str, PathBuf)]) -> Result<Vec<PathBuf>> {
    let mut resolved: Vec<PathBuf> = Vec::new();
    for (i, (flag, path)) in outputs.iter().enumerate() {
        let r = resolve(flag, path)?;
        if let Some(j) = resolved.iter().position(|q| *q == r) {
            let (other, other_path) = &outputs[j];
            return Err(Error::OutputPath {
                what: format!(
                    "{other} {} and {flag} {} are the same file ({}); give each output its own file",
                    other_path.display(),
                    path.display(),
                    r.display()
                ),
            });
        }
        debug_assert_eq!(i, resolved.len());
        resolved.push(r);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_twice_is_refused_even_through_a_symlink() {
        let d = std::env::temp_dir().join(format!("lagtrace-unit-paths-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let a = d.join("a.svg");
        let link = d.join("link.svg");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        fs::write(&a, "x").unwrap();
        let e = plan(&[("--flamegraph", a.clone()), ("--folded", link)]).unwrap_err();
        assert!(e.to_string().contains("same file"), "{e}");
        let e = plan(&[("--spans", a.clone()), ("--folded", a.clone())]).unwrap_err();
        assert!(e.to_string().contains("same file"), "{e}");
        let ok = plan(&[("--spans", d.join("s.jsonl")), ("--folded", a)]).unwrap();
        assert_eq!(ok.len(), 2);
        let e = plan(&[("--spans", d.clone())]).unwrap_err();
        assert!(e.to_string().contains("folder"), "{e}");
        let e = plan(&[("--spans", d.join("missing/s.jsonl"))]).unwrap_err();
        assert!(e.to_string().contains("create it first"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
