#!/usr/bin/env python3
# Target for the kernel Python-frame tests (issue 12), with the protocol of
# asyncio_stalls.py (READY, SIGUSR1, truth lines with each stall's tid and
# window, DONE). Runs on CPython 3.8 .. 3.13.
#   --scenario threads  4 threads: two loops ("loop-a", "loop-b") whose stalls
#                       burn in functions named after their own loop, a
#                       bystander thread spinning in Python, and the main
#                       thread. Each span must show its own thread's frames.
#   --scenario deep     one loop whose stalls recurse --depth frames deep and
#                       burn in deep_leaf: the stack is longer than the
#                       kernel's 64 Python frames.
import argparse
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from asyncio_stalls import StallLoop, Truth, burn_cpu, now_ns  # noqa: E402


def burn_in_loop_a(ms):
    return burn_cpu(ms)


def burn_in_loop_b(ms):
    return burn_cpu(ms)


def deep_leaf(ms):
    return burn_cpu(ms)


def recurse(n, ms):
    if n <= 1:
        return deep_leaf(ms)
    return recurse(n - 1, ms)


def bystander_spin(stop):
    x = 0
    while not stop.is_set():
        for i in range(2000):
            x = (x * 31 + i) % 1000003
        time.sleep(0.001)


class FrameLoop(StallLoop):
    def __init__(self, args, truth, block):
        StallLoop.__init__(self, args, truth)
        self.block = block

    async def inject_stalls(self):
        import asyncio
        for i, ms in enumerate(self.args.stalls_ms):
            if i:
                await asyncio.sleep(self.args.gap_ms / 1000.0)
            start_ns = now_ns()
            self.block(ms)
            end_ns = now_ns()
            label = "%s-%d-%dms" % (self.block_name, i, ms)
            self.truth.write({"kind": "stall", "label": label, "tid": self.tid,
                              "start_ns": start_ns, "end_ns": end_ns})
        self.truth.scenario_finished()


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--scenario", choices=["threads", "deep"], required=True)
    p.add_argument("--stalls-ms", default="150,200",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--gap-ms", type=int, default=250)
    p.add_argument("--depth", type=int, default=200)
    return p.parse_args()


def main():
    args = parse_args()
    if args.scenario == "deep":
        truth = Truth(args.truth, 1)
        sl = FrameLoop(args, truth, lambda ms: recurse(args.depth, ms))
        sl.block_name = "deep"
        sl.loop.add_signal_handler(signal.SIGUSR1, sl.start_scenario)
        for sig in (signal.SIGTERM, signal.SIGINT):
            sl.loop.add_signal_handler(sig, sl.loop.stop)
        sl.loop.call_soon(lambda: print("READY %d" % os.getpid(), flush=True))
        sl.run()
        return 0

    truth = Truth(args.truth, 2)
    loops = []
    for name, fn in (("loop-a", burn_in_loop_a), ("loop-b", burn_in_loop_b)):
        sl = FrameLoop(args, truth, fn)
        sl.block_name = name
        loops.append((sl, threading.Thread(target=sl.run, name=name)))
    stop = threading.Event()
    bystander = threading.Thread(target=bystander_spin, args=(stop,), name="bystander")

    def on_usr1(signum, frame):
        for sl, _ in loops:
            sl.loop.call_soon_threadsafe(sl.start_scenario)

    def on_stop(signum, frame):
        stop.set()
        for sl, _ in loops:
            sl.loop.call_soon_threadsafe(sl.loop.stop)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    bystander.start()
    for _, t in loops:
        t.start()
    for sl, _ in loops:
        sl.started.wait()
    print("READY %d" % os.getpid(), flush=True)
    for _, t in loops:
        t.join()
    stop.set()
    bystander.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
