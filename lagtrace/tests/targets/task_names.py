#!/usr/bin/env python3
# Target for tests/task_names.rs: blocking calls inside asyncio Tasks whose
# names the test knows, and one outside any Task, on asyncio's loop or on
# uvloop (--loop uvloop). CPython 3.8+ (Task names came in 3.8).
#
# Protocol (as asyncio_stalls.py): prints "READY <pid>" once the loop runs;
# on SIGUSR1 it runs three stalls, 300 ms each, writing one line per stall
# to --truth: {"kind":"stall","label":…,"task_name":… or null,"tid":…,
# "start_ns":…,"end_ns":…}, then {"kind":"done"}, prints "DONE" and idles
# until SIGTERM/SIGINT.
# - "named": time.sleep in charge_card, awaited by checkout_handler, a Task
#   created with name="checkout-42" (an off-CPU stall);
# - "unnamed": CPU spin in render_report, a Task created without a name
#   (asyncio names it "Task-N"; its name is asked only after the stall);
# - "callback": time.sleep in a plain loop.call_soon callback: no Task runs.
import argparse
import asyncio
import json
import os
import signal
import sys
import time

STALL_S = 0.3


def now_ns():
    return time.time_ns()


def charge_card():
    time.sleep(STALL_S)


def render_report():
    deadline = time.perf_counter() + STALL_S
    x = 0
    while time.perf_counter() < deadline:
        for i in range(100):
            x = (x * 31 + i) % 1000003
    return x


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--gap-ms", type=int, default=250)
    return p.parse_args()


def main():
    args = parse_args()
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("NO_UVLOOP", flush=True)
            return 3
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    truth = open(args.truth, "w")
    tid = os.getpid()  # the loop runs on the main thread

    def write(obj):
        truth.write(json.dumps(obj, separators=(",", ":")) + "\n")
        truth.flush()

    def stall(label, task_name, start_ns, end_ns):
        write({"kind": "stall", "label": label, "task_name": task_name,
               "tid": tid, "start_ns": start_ns, "end_ns": end_ns})

    async def checkout_handler(window):
        await asyncio.sleep(0)
        window.append(now_ns())
        charge_card()
        window.append(now_ns())

    async def report_handler(window):
        await asyncio.sleep(0)
        window.append(now_ns())
        render_report()
        window.append(now_ns())

    async def inject():
        gap = args.gap_ms / 1000.0
        w = []
        await loop.create_task(checkout_handler(w), name="checkout-42")
        stall("named", "checkout-42", w[0], w[1])
        await asyncio.sleep(gap)
        w = []
        t = loop.create_task(report_handler(w))
        await t
        stall("unnamed", t.get_name(), w[0], w[1])
        await asyncio.sleep(gap)
        w = []
        done = loop.create_future()

        def callback():
            w.append(now_ns())
            charge_card()
            w.append(now_ns())
            done.set_result(None)

        loop.call_soon(callback)
        await done
        stall("callback", None, w[0], w[1])
        await asyncio.sleep(gap)
        write({"kind": "done"})
        print("DONE", flush=True)

    started = []

    def on_usr1():
        if not started:
            started.append(loop.create_task(inject(), name="inject"))

    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    loop.call_soon(lambda: print("READY %d" % os.getpid(), flush=True))
    loop.run_forever()
    for t in started:
        t.cancel()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
