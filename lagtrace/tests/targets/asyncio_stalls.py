#!/usr/bin/env python3
# Target for lagtrace's integration tests: an asyncio loop that, on SIGUSR1,
# blocks itself with known stalls (CPU spin in burn_cpu or time.sleep in
# legacy_sync_call) and writes the exact wall-clock window of each stall as
# JSON lines to --truth, so the tests can compare lagtrace's output to it.
# Must run unchanged on CPython 3.6 .. 3.13 (hence no asyncio.run, no
# asyncio.create_task, no time.time_ns without a fallback).
#
# Protocol: prints "READY <pid>" once the loop(s) run, injects nothing until
# SIGUSR1, then writes one {"kind":"stall",...} line per stall and a final
# {"kind":"done"}, prints "DONE", and idles until SIGTERM/SIGINT (exit 0).
# Labels are "<label-prefix><mode>-<index>-<ms>ms", e.g. "cpu-2-120ms".
#   --thread   the loop runs in a non-main thread named "loop-thread"
#   --exit-linger-ms N  after the loop stops (SIGTERM), spend N ms in
#              linger_at_exit before exiting: a slow teardown, which runs in
#              the iteration the process exits in and is not loop lag
#   --loops 2  two independent loops in threads "loop-a" and "loop-b", both
#              injecting the same stalls at the same time. With --mode cpu
#              the two burns share the GIL: truth windows stay exact, but
#              can run a few ms longer than asked, and each loop can wait
#              up to ~5 ms for the GIL after epoll_wait returns. --mode
#              sleep releases the GIL and has neither effect.
import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time


def now_ns():
    if hasattr(time, "time_ns"):
        return time.time_ns()
    return int(time.time() * 1e9)  # Python 3.6: ~µs precision


def gettid():
    if hasattr(threading, "get_native_id"):
        return threading.get_native_id()
    import ctypes
    return ctypes.CDLL(None).syscall(186)  # SYS_gettid on x86_64


def set_os_thread_name(name):
    # Python < 3.14 does not name the OS thread; do it so /proc/.../comm
    # (and so lagtrace) shows the thread name. Best effort.
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


def burn_cpu(ms):
    """Spin on the CPU for `ms` milliseconds of wall time."""
    deadline = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < deadline:
        for i in range(100):
            x = (x * 31 + i) % 1000003
    return x


def linger_at_exit(ms):
    """A slow teardown after the loop stopped (flushing, closing pools)."""
    time.sleep(ms / 1000.0)


def legacy_sync_call(ms):
    """A blocking synchronous call, as old client libraries make."""
    time.sleep(ms / 1000.0)


class Truth:
    """Thread-safe JSON-lines writer, flushed after every line."""

    def __init__(self, path, writers):
        self.f = open(path, "w")
        self.lock = threading.Lock()
        self.pending = writers  # scenarios still running; last one writes done

    def write(self, obj):
        with self.lock:
            self.f.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self.f.flush()

    def scenario_finished(self):
        with self.lock:
            self.pending -= 1
            last = self.pending == 0
        if last:
            self.write({"kind": "done"})
            print("DONE", flush=True)


class StallLoop:
    """One event loop with a 5 ms heartbeat and the stall scenario."""

    def __init__(self, args, truth):
        self.args = args
        self.truth = truth
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.tasks = []

    def heartbeat(self):
        self.loop.call_later(0.005, self.heartbeat)  # healthy: does ~nothing

    def start_scenario(self):  # runs on the loop thread; once only
        if not self.tasks:
            self.tasks.append(self.loop.create_task(self.inject_stalls()))

    async def inject_stalls(self):
        block = burn_cpu if self.args.mode == "cpu" else legacy_sync_call
        for i, ms in enumerate(self.args.stalls_ms):
            if i:
                await asyncio.sleep(self.args.gap_ms / 1000.0)
            start_ns = now_ns()
            block(ms)
            end_ns = now_ns()
            label = "%s%s-%d-%dms" % (self.args.label_prefix, self.args.mode, i, ms)
            self.truth.write({"kind": "stall", "label": label, "tid": self.tid,
                              "start_ns": start_ns, "end_ns": end_ns})
        self.truth.scenario_finished()

    def run(self):
        if threading.current_thread() is not threading.main_thread():
            set_os_thread_name(threading.current_thread().name)
        # Look the tid up now: on 3.6/3.7 it imports ctypes, which would add
        # a few ms to the first stall's blocking span outside its truth window.
        self.tid = gettid()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self.heartbeat)
        self.loop.call_soon(self.started.set)
        self.loop.run_forever()
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            self.loop.run_until_complete(
                asyncio.gather(*self.tasks, return_exceptions=True))
        self.loop.close()


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--stalls-ms", default="40,60,120,300",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--mode", choices=["cpu", "sleep"], default="cpu")
    p.add_argument("--gap-ms", type=int, default=250)
    p.add_argument("--label-prefix", default="")
    p.add_argument("--thread", action="store_true")
    p.add_argument("--loops", type=int, choices=[1, 2], default=1)
    p.add_argument("--exit-linger-ms", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    if args.loops == 2:
        names = ["loop-a", "loop-b"]
    elif args.thread:
        names = ["loop-thread"]
    else:
        names = []  # loop on the main thread
    truth = Truth(args.truth, max(1, len(names)))

    if not names:
        sl = StallLoop(args, truth)
        sl.loop.add_signal_handler(signal.SIGUSR1, sl.start_scenario)
        for sig in (signal.SIGTERM, signal.SIGINT):
            sl.loop.add_signal_handler(sig, sl.loop.stop)
        sl.loop.call_soon(lambda: print("READY %d" % os.getpid(), flush=True))
        sl.run()
        if args.exit_linger_ms:
            linger_at_exit(args.exit_linger_ms)
        return 0

    # Loops in worker threads: signals arrive on the main thread, which hands
    # them to each loop with call_soon_threadsafe.
    loops = [StallLoop(args, truth) for _ in names]
    threads = [threading.Thread(target=sl.run, name=n) for sl, n in zip(loops, names)]

    def on_usr1(signum, frame):
        for sl in loops:
            sl.loop.call_soon_threadsafe(sl.start_scenario)

    def on_stop(signum, frame):
        for sl in loops:
            sl.loop.call_soon_threadsafe(sl.loop.stop)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    for t in threads:
        t.start()
    for sl in loops:
        sl.started.wait()
    print("READY %d" % os.getpid(), flush=True)
    # The main thread just waits: the kernel hands it the process's signals,
    # the wait is interrupted and the handlers above run (CPython >= 3.2).
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
