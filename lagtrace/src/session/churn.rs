//! Process churn over a long attach (`--children`, `--name`, `--cgroup`):
//! exited targets would pile up in the target list, the summary and the
//! Python readers. Past [`MAX_EXITED_TARGETS`] the oldest exited ones leave
//! the list, their Python reader is dropped, and their summary figures are
//! folded into one `[other exited processes]` row (pid 0) with exact
//! totals. Targets named with `--pid` always stay.
use super::pipeline::Pipeline;

/// Exited adopted targets kept with a summary of their own (a 200-child
/// fork storm keeps one per child).
pub(super) const MAX_EXITED_TARGETS: usize = 256;

/// Drop exited targets past the cap and fold their figures; also fold
/// figures that late spans of already dropped targets left.
pub(super) fn prune(p: &mut Pipeline, exited: &mut Vec<u32>) {
    for pid in p.targets.prune_exited(exited, MAX_EXITED_TARGETS) {
        p.symbolizer.python.remove(pid);
        p.summary.fold_process(pid);
    }
    let pruned = &p.targets.pruned;
    if !pruned.is_empty() {
        p.summary.fold_unlisted(|pid| !pruned.contains(&pid));
    }
}
