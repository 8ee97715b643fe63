#!/usr/bin/env python3
# Target for lagtrace's integration tests: the asyncio_stalls.py scenario on
# uvloop (libuv's epoll loop in C, not asyncio's selector loop), so the tests
# check lagtrace finds blocking spans when the loop's idle wait is libuv's
# epoll_wait rather than selectors'. On SIGUSR1 it blocks the loop with known
# stalls (CPU spin in burn_cpu, or time.sleep in legacy_sync_call with
# --mode sleep) and writes each stall's exact wall-clock window to --truth.
#
# Protocol (same as asyncio_stalls.py): prints "READY <pid>" once the loop
# runs, injects nothing until SIGUSR1, then writes one {"kind":"stall",...}
# line per stall and a final {"kind":"done"}, prints "DONE", and idles until
# SIGTERM/SIGINT (exit 0).
# If uvloop cannot be imported it prints "NO_UVLOOP" and exits 3, which the
# tests treat as a skip. uvloop needs CPython >= 3.8; nothing else here does.
import argparse
import asyncio
import json
import os
import signal
import sys
import time

try:
    import uvloop
except ImportError:
    uvloop = None


def now_ns():
    if hasattr(time, "time_ns"):
        return time.time_ns()
    return int(time.time() * 1e9)


def burn_cpu(ms):
    """Spin on the CPU for `ms` milliseconds of wall time."""
    deadline = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < deadline:
        for i in range(100):
            x = (x * 31 + i) % 1000003
    return x


def legacy_sync_call(ms):
    """A blocking synchronous call, as old client libraries make."""
    time.sleep(ms / 1000.0)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--stalls-ms", default="40,60,120,300",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--gap-ms", type=int, default=250)
    p.add_argument("--mode", choices=["cpu", "sleep"], default="cpu")
    p.add_argument("--label-prefix", default="uvloop-")
    return p.parse_args()


def main():
    args = parse_args()
    if uvloop is None:
        print("NO_UVLOOP", flush=True)
        return 3
    truth = open(args.truth, "w")

    def write(obj):
        truth.write(json.dumps(obj, separators=(",", ":")) + "\n")
        truth.flush()

    uvloop.install()  # so anything asking asyncio for a new loop gets uvloop
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    tid = os.getpid()  # the loop runs on the main thread
    tasks = []

    def heartbeat():
        loop.call_later(0.005, heartbeat)  # healthy: does ~nothing

    async def inject_stalls():
        block = burn_cpu if args.mode == "cpu" else legacy_sync_call
        for i, ms in enumerate(args.stalls_ms):
            if i:
                await asyncio.sleep(args.gap_ms / 1000.0)
            start_ns = now_ns()
            block(ms)
            end_ns = now_ns()
            label = "%s%s-%d-%dms" % (args.label_prefix, args.mode, i, ms)
            write({"kind": "stall", "label": label, "tid": tid,
                   "start_ns": start_ns, "end_ns": end_ns})
        write({"kind": "done"})
        print("DONE", flush=True)

    def on_usr1():
        if not tasks:
            tasks.append(loop.create_task(inject_stalls()))

    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    loop.call_soon(heartbeat)
    loop.call_soon(lambda: print("READY %d" % os.getpid(), flush=True))
    loop.run_forever()
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
