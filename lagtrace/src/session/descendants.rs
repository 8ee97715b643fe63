//! The processes already descended from the named targets when lagtrace
//! attaches (`--children`): a pre-fork master (gunicorn, uvicorn
//! `--workers`) has its workers running before anyone traces it, and fork
//! events only show the ones forked later.
//!
//! Read from `/proc/*/stat` (the parent pid is the 2nd field after the
//! comm). A process forking or exiting during the scan is seen or not; the
//! fork probe covers what is forked after attach.
use std::collections::{BTreeSet, HashMap};

/// The parent of every process on the host, from `/proc`.
fn parents() -> HashMap<u32, u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect()
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `roots` (children, grandchildren…), roots
/// excluded, in pid order.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    of(roots, &parents())
}

/// [`descendants`] over a given parent table (pure, for tests).
fn of(roots: &[u32], parent: &HashMap<u32, u32>) -> Vec<u32> {
    let mut found: BTreeSet<u32> = BTreeSet::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        for (&child, &pp) in parent {
            if pp == p && !roots.contains(&child) && found.insert(child) {
                frontier.push(child);
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_and_grandchildren_not_the_root() {
        let parent: HashMap<u32, u32> = [(10, 1), (11, 10), (12, 10), (13, 12), (20, 1)]
            .into_iter()
            .collect();
        assert_eq!(of(&[10], &parent), vec![11, 12, 13]);
        assert!(of(&[20], &parent).is_empty());
    }

    #[test]
    fn a_forked_child_of_this_process_is_found() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(&[std::process::id()]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }
}
