#!/usr/bin/env python3
# Target for tests/metrics.rs: more distinct blame functions than lagtrace's
# metrics give labels (30 against 20), then one that dominates late.
#
# Protocol (as asyncio_stalls.py): prints "READY <pid>" once the loop runs;
# on SIGUSR1 it calls blocker_0 … blocker_29 (each its own function, so its
# own blame) once each, time.sleep(--small-ms), with --gap-ms between, then
# late_dominant once, time.sleep(--big-ms); writes one
# {"kind":"stall","label":<function>,"tid":…,"start_ns":…,"end_ns":…} line
# per stall to --truth, then {"kind":"done"}, prints "DONE", and idles until
# SIGTERM/SIGINT.
import argparse
import asyncio
import json
import os
import signal
import sys
import time

BLOCKERS = 30

# One function per blame, each defined in this file (so it is user code).
for _i in range(BLOCKERS):
    exec(compile("def blocker_%d(s):\n    time.sleep(s)\n" % _i, __file__, "exec"))


def late_dominant(s):
    time.sleep(s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--small-ms", type=int, default=80)
    p.add_argument("--big-ms", type=int, default=400)
    p.add_argument("--gap-ms", type=int, default=100)
    args = p.parse_args()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    truth = open(args.truth, "w")
    tid = os.getpid()

    def write(obj):
        truth.write(json.dumps(obj, separators=(",", ":")) + "\n")
        truth.flush()

    def stall(fn, ms):
        start = time.time_ns()
        fn(ms / 1000.0)
        write({"kind": "stall", "label": fn.__name__, "tid": tid,
               "start_ns": start, "end_ns": time.time_ns()})

    async def inject():
        fns = [globals()["blocker_%d" % i] for i in range(BLOCKERS)]
        for fn in fns:
            stall(fn, args.small_ms)
            await asyncio.sleep(args.gap_ms / 1000.0)
        stall(late_dominant, args.big_ms)
        await asyncio.sleep(args.gap_ms / 1000.0)
        write({"kind": "done"})
        print("DONE", flush=True)

    started = []

    def on_usr1():
        if not started:
            started.append(loop.create_task(inject()))

    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    loop.call_soon(lambda: print("READY %d" % os.getpid(), flush=True))
    loop.run_forever()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
