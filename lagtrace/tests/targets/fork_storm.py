"""Target for lagtrace's --children test under a fork storm (issue #10).

On SIGUSR1 the parent forks --children children at once. Each runs its own
asyncio loop with --stalls stalls of --stall-ms (time.sleep, so the storm
costs little CPU) and exits. The parent writes each child's pid to --truth,
reaps them all, prints DONE and idles.

Protocol: prints "READY <pid>"; SIGUSR1 starts the storm; DONE at the end.
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import time


def child(stalls, stall_ms):
    async def main():
        for _ in range(stalls):
            await asyncio.sleep(0.02)
            time.sleep(stall_ms / 1000)
        # One more turn, so the last stall ends as a finished span.
        await asyncio.sleep(0.02)

    asyncio.run(main())
    os._exit(0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--children", type=int, default=200)
    p.add_argument("--stalls", type=int, default=6)
    p.add_argument("--stall-ms", type=int, default=60)
    a = p.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("READY", os.getpid(), flush=True)
    signal.sigwait({signal.SIGUSR1})
    pids = []
    for _ in range(a.children):
        pid = os.fork()
        if pid == 0:
            child(a.stalls, a.stall_ms)
        pids.append(pid)
    with open(a.truth, "w") as f:
        for pid in pids:
            f.write(json.dumps({"kind": "child", "pid": pid}) + "\n")
    for pid in pids:
        os.waitpid(pid, 0)
    print("DONE", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
