#!/usr/bin/env python3
# Target for lagtrace's off-CPU tests: stalls where the loop thread is NOT
# running on the CPU, so lagtrace must explain them as off-CPU time.
#   --mode recv        the loop calls fetch_blocking(), a blocking recv() on a
#                      plain socket to a server thread that answers after
#                      --delay-ms: the loop thread sleeps in the kernel.
#                      --count stalls, label "recv".
#   --mode contention  the loop calls burn_cpu(ms) for each --stalls-ms entry;
#                      the test pins this process and a CPU hog to one core
#                      (taskset), so the stall is partly runqueue wait.
#                      Label "contention".
# Protocol: prints "READY <pid>", injects nothing until SIGUSR1, writes one
# {"kind":"stall",...} line per stall (with "cpu_ns", the loop thread's own
# CPU time during the stall, from Python 3.7) then {"kind":"done"} to --truth, prints
# "DONE", and idles until SIGTERM/SIGINT (exit 0). CPython 3.6 .. 3.13.
import argparse
import asyncio
import json
import os
import signal
import socket
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


def thread_cpu_ns():
    """The loop thread's own CPU time (CLOCK_THREAD_CPUTIME_ID), the truth
    for on-CPU time; None before Python 3.7."""
    if hasattr(time, "thread_time_ns"):
        return time.thread_time_ns()
    return None


def burn_cpu(ms):
    """Spin on the CPU for `ms` milliseconds of wall time."""
    deadline = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < deadline:
        for i in range(100):
            x = (x * 31 + i) % 1000003
    return x


def slow_server(listener):
    """Thread: for each request line "<ms>\\n", sleep ms, then answer "ok\\n"."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as requests:
        for line in requests:
            time.sleep(int(line) / 1000.0)
            conn.sendall(b"ok\n")


def fetch_blocking(sock, delay_ms):
    """The bug under test: a blocking request/response on the loop thread."""
    sock.sendall(b"%d\n" % delay_ms)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("server went away")
        reply += chunk
    return reply


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--mode", choices=["recv", "contention"], default="recv")
    p.add_argument("--delay-ms", type=int, default=200)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--stalls-ms", default="100,200,300",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--gap-ms", type=int, default=250)
    args = p.parse_args()
    truth = open(args.truth, "w")
    tid = gettid()  # before READY: on 3.6/3.7 this imports ctypes (slow)

    sock = None
    if args.mode == "recv":  # connect once, before READY: stalls are pure recv
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        threading.Thread(target=slow_server, args=(listener,), name="slow-server",
                         daemon=True).start()
        sock = socket.create_connection(listener.getsockname())

    def write_truth(obj):
        truth.write(json.dumps(obj, separators=(",", ":")) + "\n")
        truth.flush()

    async def inject_stalls():
        if args.mode == "recv":
            stalls = [("recv", lambda: fetch_blocking(sock, args.delay_ms))] * args.count
        else:
            stalls = [("contention", lambda ms=ms: burn_cpu(ms)) for ms in args.stalls_ms]
        for i, (label, block) in enumerate(stalls):
            if i:
                await asyncio.sleep(args.gap_ms / 1000.0)
            cpu0 = thread_cpu_ns()
            start_ns = now_ns()
            block()
            end_ns = now_ns()
            cpu_ns = thread_cpu_ns() - cpu0 if cpu0 is not None else None
            write_truth({"kind": "stall", "label": label, "tid": tid,
                         "start_ns": start_ns, "end_ns": end_ns, "cpu_ns": cpu_ns})
        write_truth({"kind": "done"})
        print("DONE", flush=True)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    tasks = []

    def heartbeat():
        loop.call_later(0.005, heartbeat)

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
