#!/usr/bin/env python3
# Target for lagtrace's integration tests: a pre-fork asyncio server in the
# style of gunicorn/uvicorn workers, standard library only. It exists to test
# `lagtrace --children`: lagtrace attaches to the PARENT pid before SIGUSR1,
# the worker processes are forked only after SIGUSR1, and the stalls happen
# in those workers, so lagtrace must follow the forks to find them.
#
# Protocol (as asyncio_stalls.py, plus a pid field):
#   - the parent opens a listening socket on 127.0.0.1 (ephemeral port),
#     writes {"kind":"listen","host":"127.0.0.1","port":P} to --truth, prints
#     "READY <parent pid>" and forks nothing until SIGUSR1;
#   - on SIGUSR1 it forks --workers N (default 2) processes; each runs its own
#     asyncio loop serving the shared socket (a tiny HTTP/1.0 answer), waits
#     --stall-delay-ms (default 200, time for a tracer to pick the new process
#     up), blocks its loop once with burn_cpu(--stall-ms, default 120), and
#     appends {"kind":"stall","label":..,"tid":<its pid>,"pid":<its pid>,
#     "start_ns":..,"end_ns":..} (appends are serialised with fcntl.flock);
#   - the parent polls the truth file until it holds N stall lines, then
#     appends {"kind":"done"} and prints "DONE";
#   - on SIGTERM/SIGINT the parent SIGTERMs the workers, reaps them and exits
#     0. Workers also get SIGTERM if the parent dies (PR_SET_PDEATHSIG), so a
#     test that SIGKILLs the parent leaves no orphans behind.
# Runs on CPython 3.6 .. 3.13 (no asyncio.run, no time.time_ns without a
# fallback).
import argparse
import asyncio
import fcntl
import json
import os
import signal
import socket
import sys
import time

SIGNALS = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}


def now_ns():
    if hasattr(time, "time_ns"):
        return time.time_ns()
    return int(time.time() * 1e9)  # Python 3.6: ~µs precision


def burn_cpu(ms):
    """Spin on the CPU for `ms` milliseconds of wall time."""
    deadline = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < deadline:
        for i in range(100):
            x = (x * 31 + i) % 1000003
    return x


def append_truth(path, obj):
    """One JSON line, appended under an exclusive lock (several writers)."""
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_truth(path):
    with open(path) as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            text = f.read()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def die_with_parent(parent_pid):
    # prctl(PR_SET_PDEATHSIG, SIGTERM); best effort (ctypes may be missing).
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except Exception:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(0)


def worker(index, sock, args, parent_pid):
    """Body of one forked worker process; never returns."""
    die_with_parent(parent_pid)
    pid = os.getpid()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a second USR1 is no-op
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    async def handle(reader, writer):
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
            body = ("worker %d pid %d\n" % (index, pid)).encode()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(body) + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def heartbeat():
        loop.call_later(0.005, heartbeat)  # healthy: does ~nothing

    def stall():
        start_ns = now_ns()
        burn_cpu(args.stall_ms)
        end_ns = now_ns()
        label = "%sw%d-cpu-%dms" % (args.label_prefix, index, args.stall_ms)
        append_truth(args.truth, {"kind": "stall", "label": label, "tid": pid,
                                  "pid": pid, "start_ns": start_ns,
                                  "end_ns": end_ns})

    server = loop.run_until_complete(asyncio.start_server(handle, sock=sock))
    loop.call_soon(heartbeat)
    loop.call_later(args.stall_delay_ms / 1000.0, stall)
    code = 0
    try:
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    except BaseException as e:  # never fall back into the parent's code
        sys.stderr.write("prefork worker %d: %r\n" % (pid, e))
        code = 1
    sys.stderr.flush()
    os._exit(code)


def stop_workers(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                left.discard(pid)
        time.sleep(0.01)
    for pid in left:  # did not stop in 5 s
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stall-ms", type=int, default=120)
    p.add_argument("--stall-delay-ms", type=int, default=200)
    p.add_argument("--label-prefix", default="prefork-")
    return p.parse_args()


def main():
    args = parse_args()
    parent_pid = os.getpid()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    with open(args.truth, "w") as f:
        f.write(json.dumps({"kind": "listen", "host": "127.0.0.1",
                            "port": sock.getsockname()[1]},
                           separators=(",", ":")) + "\n")

    # Signals are taken synchronously with sigtimedwait, so the parent has no
    # handler state for the forked workers to inherit; workers unblock them.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    print("READY %d" % parent_pid, flush=True)

    workers = []
    done = False
    while True:
        info = signal.sigtimedwait(SIGNALS, 0.02)
        sig = info.si_signo if info else None
        if sig in (signal.SIGTERM, signal.SIGINT):
            break
        if sig == signal.SIGUSR1 and not workers:
            for i in range(args.workers):
                pid = os.fork()
                if pid == 0:
                    worker(i, sock, args, parent_pid)
                workers.append(pid)
        if workers and not done:
            for pid in workers:
                gone, status = os.waitpid(pid, os.WNOHANG)
                if gone:
                    sys.stderr.write("prefork_server: worker %d exited early "
                                     "(status %d)\n" % (pid, status))
                    stop_workers([w for w in workers if w != pid])
                    return 1
            stalls = [v for v in read_truth(args.truth) if v["kind"] == "stall"]
            if len(stalls) >= args.workers:
                append_truth(args.truth, {"kind": "done"})
                print("DONE", flush=True)
                done = True
    stop_workers(workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
