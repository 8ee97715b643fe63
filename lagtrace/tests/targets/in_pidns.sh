#!/usr/bin/env bash
# Test helper: runs a target ("$@") as pid 1 of a new PID namespace, as in a
# container, so lagtrace's tests can check it attaches to, and reports on, a
# process whose in-namespace pids/tids differ from the host's. Needs root
# (util-linux unshare: --pid --fork --mount-proc; the new /proc is private to
# the new mount namespace). Prints nothing itself: the target's own output
# (e.g. "READY 1", the IN-NAMESPACE pid) passes through unchanged.
#
#   bash in_pidns.sh python3 asyncio_stalls.py --truth /tmp/t.jsonl
#
# How a test finds the HOST pid of the target:
#   The script execs unshare, so the pid the test spawned (Child::id()) IS the
#   unshare process; unshare forks the target, its only child. Once the target
#   has printed READY, read
#       /proc/<unshare pid>/task/<unshare pid>/children
#   which holds exactly one pid: the target's host pid. Cross-check with
#   /proc/<host pid>/status, whose "NSpid:" line reads "<host pid> 1".
# Caveats for tests:
#   - The pid in "READY <pid>" is 1 (namespace view). Never signal it from the
#     host: host pid 1 is this machine's init. Send SIGUSR1/SIGTERM to the host
#     pid found above (so the harness's Target::start / run_scenario / Drop,
#     which signal the READY pid, must not be used as-is with this script).
#   - tids written to the truth file by the target are namespace tids too; map
#     them with the "NSpid:" line of /proc/<host pid>/task/<tid>/status (last
#     field = namespace tid, first = host tid) before comparing to lagtrace.
#   - unshare ignores SIGINT/SIGTERM and forwards nothing; signal the target.
#     When unshare itself dies (e.g. the test SIGKILLs it) --kill-child
#     SIGKILLs the target, and the kernel then kills everything else in the
#     namespace, so no process is left behind.
#   - The exit status is the target's (SIGTERM'd targets exit 0). A target as
#     pid 1 ignores signals it has no handler for (SIGTERM/SIGINT included);
#     all targets in this folder install handlers.
set -euo pipefail
if [ "$#" -eq 0 ]; then
    echo "usage: $0 PROGRAM [ARGS...]" >&2
    exit 2
fi
exec unshare --pid --fork --mount-proc --kill-child -- "$@"
