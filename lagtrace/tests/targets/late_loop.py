#!/usr/bin/env python3
# Target for lagtrace's sampling tests: a process with no event loop at all
# until SIGUSR1. Then a thread created after lagtrace attached starts
# another thread (or, with --fork, a child process) that runs an asyncio
# loop and blocks it with CPU stalls in late_burn. On-CPU samples of those
# stalls prove that sampling reaches threads and processes created after
# attach. Writes each stall's wall-clock window to --truth as JSON lines
# (the asyncio_stalls.py format), prints DONE after the last one, and exits
# on SIGTERM/SIGINT. --idle-threads N adds N sleeping threads at start.
import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time


def late_burn(ms):
    """Spin on the CPU for `ms` milliseconds of wall time."""
    deadline = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < deadline:
        for i in range(100):
            x = (x * 31 + i) % 1000003
    return x


def write(path, obj):
    with open(path, "a") as f:
        f.write(json.dumps(obj, separators=(",", ":")) + "\n")


async def stalls(args):
    await asyncio.sleep(args.first_delay_ms / 1000.0)
    for i, ms in enumerate(args.stalls_ms):
        await asyncio.sleep(0.2)
        start = time.time_ns()
        late_burn(ms)
        end = time.time_ns()
        write(args.truth, {"kind": "stall", "label": "late-%d-%dms" % (i, ms),
                           "tid": threading.get_native_id(),
                           "start_ns": start, "end_ns": end})
    write(args.truth, {"kind": "done"})
    print("DONE", flush=True)


def run_loop(args):
    loop = asyncio.new_event_loop()
    loop.run_until_complete(stalls(args))
    # Keep the loop thread alive and idle until the test ends.
    loop.run_until_complete(asyncio.sleep(3600))


def spawner(args):
    threading.Thread(target=run_loop, args=(args,), name="late-loop",
                     daemon=True).start()


def die_with_parent():
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--stalls-ms", default="120,200,300",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--fork", action="store_true")
    p.add_argument("--first-delay-ms", type=int, default=0,
                   help="how long the late loop idles before its first stall")
    p.add_argument("--idle-threads", type=int, default=0,
                   help="threads that only sleep, started before READY")
    args = p.parse_args()
    for i in range(args.idle_threads):
        threading.Thread(target=time.sleep, args=(3600,), name="idle-%d" % i,
                         daemon=True).start()
    started = threading.Event()

    def on_usr1(signum, frame):
        if started.is_set():
            return
        started.set()
        if args.fork:
            # Forked from the single-threaded main thread; the child starts
            # its loop thread from a thread of its own, as below.
            if os.fork() == 0:
                die_with_parent()
                threading.Thread(target=spawner, args=(args,), name="spawner").start()
                while True:
                    time.sleep(3600)
        else:
            threading.Thread(target=spawner, args=(args,), name="spawner").start()

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
    signal.signal(signal.SIGINT, lambda s, f: os._exit(0))
    print("READY %d" % os.getpid(), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
