#!/usr/bin/env python3
# The story lagtrace is built to tell: an asyncio app whose coroutine
# decode_response() fetches a big JSON body from a local asyncio server (same
# process, same loop, over 127.0.0.1) and then calls json.loads on it inside
# the loop. The fetch is healthy async I/O; the decode is the stall.
# The body (--body-mb MB of nested dicts/lists of numbers and strings) is
# built once at start-up. After SIGUSR1 it runs --count fetch+decode rounds,
# --gap-ms apart; each decode's wall-clock window goes to --truth with label
# "json". Then {"kind":"done"}, "DONE" on stdout, and it idles until
# SIGTERM/SIGINT (exit 0). Same protocol as asyncio_stalls.py; CPython 3.6+.
import argparse
import asyncio
import gc
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


def build_body(mb):
    """About `mb` MiB of JSON: a catalogue of nested records."""
    def record(i):
        return {"id": i, "sku": "SKU-%06d" % i, "price": round(i * 0.37, 2),
                "tags": ["tag%d" % (i % 7), "grp%d" % (i % 13)],
                "dims": {"w": i % 100, "h": (i * 7) % 100, "unit": "mm"},
                "history": [i % 5, i % 11, i % 17, i % 23]}
    per_record = len(json.dumps(record(123456))) + 2
    count = int(mb * 1024 * 1024 / per_record)
    catalogue = {"version": 3, "items": [record(i) for i in range(count)]}
    return json.dumps(catalogue).encode()


async def serve_catalogue(body, reader, writer):
    """The local 'remote' service: answers any request line with the body."""
    await reader.readline()
    writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    view = memoryview(body)
    for off in range(0, len(body), 256 * 1024):  # in chunks: no multi-ms write
        writer.write(view[off:off + 256 * 1024])
        await writer.drain()
    writer.close()


async def fetch(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /catalogue HTTP/1.0\r\n\r\n")
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    payload = await reader.readexactly(length)
    writer.close()
    return payload


async def decode_response(port, label, tid, write_truth, keep):
    payload = await fetch(port)          # healthy: awaits the network
    # Start the decode in a loop iteration of its own, so the blocking span
    # is the decode alone, not also readexactly's few-ms copy of the body.
    await asyncio.sleep(0)
    start_ns = now_ns()
    catalogue = json.loads(payload)      # the stall: CPU-bound, on the loop
    end_ns = now_ns()
    write_truth({"kind": "stall", "label": label, "tid": tid,
                 "start_ns": start_ns, "end_ns": end_ns})
    # Kept alive until exit: freeing millions of objects later would be a
    # second, unlabelled stall of its own. gc.freeze (3.7+) stops the cyclic
    # GC from rescanning them, so every decode costs about the same.
    keep.append(catalogue)
    if hasattr(gc, "freeze"):
        gc.freeze()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--body-mb", type=float, default=8)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--gap-ms", type=int, default=250)
    args = p.parse_args()
    truth = open(args.truth, "w")
    tid = gettid()
    body = build_body(args.body_mb)
    sys.stderr.write("seed_story: body is %d bytes\n" % len(body))

    def write_truth(obj):
        truth.write(json.dumps(obj, separators=(",", ":")) + "\n")
        truth.flush()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(asyncio.start_server(
        lambda r, w: serve_catalogue(body, r, w), "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    tasks, keep = [], []

    async def scenario():
        for i in range(args.count):
            if i:
                await asyncio.sleep(args.gap_ms / 1000.0)
            await decode_response(port, "json", tid, write_truth, keep)
        write_truth({"kind": "done"})
        print("DONE", flush=True)

    def heartbeat():
        loop.call_later(0.005, heartbeat)

    def on_usr1():
        if not tasks:
            tasks.append(loop.create_task(scenario()))

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
    server.close()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
