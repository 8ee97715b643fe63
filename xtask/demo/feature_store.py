#!/usr/bin/env python3
# lagtrace's demo app: a small asyncio "feature store" with realistic event
# loop stalls, to attach lagtrace to and watch. Standard library, Python 3.8+.
#
# One asyncio TCP server on 127.0.0.1 (ephemeral port) in one loop serves:
#   FEATURES <set>  -> a JSON body of feature vectors, 0.1 MB to ~6 MB
#   SCORE <entity>  -> a tiny JSON score, handled by score_request()
# In the same loop:
#   refresh_features()  re-fetches a feature set every ~0.4 s and decodes it
#                       with json.loads inside the loop: the big sets stall
#                       the loop for ~50-250 ms (the bug lagtrace finds).
#   traffic()           a client sending SCORE requests every few ms (healthy).
#   audit_ticker()      every ~2 s calls legacy_audit_log(), a blocking
#                       time.sleep(0.08): the other bug.
# Over 10 s that is roughly 15-25 stalls above 50 ms; the rest is healthy.
# Prints "READY <pid>" on stdout, logs one line per refresh to stderr, runs
# until SIGTERM/SIGINT and exits 0.
import asyncio
import json
import os
import random
import signal
import sys
import time

# feature set -> (entities, dimensions); values are 6-digit floats
FEATURE_SETS = {
    "user_recent": (300, 32),        # ~0.1 MB: decodes in a few ms
    "user_profile": (2000, 64),      # ~1.5 MB: ~50 ms
    "item_embeddings": (4000, 64),   # ~3 MB: ~100 ms
    "user_embeddings": (8000, 64),   # ~6 MB: ~200 ms
}
REFRESH_ORDER = ["user_recent", "item_embeddings", "user_recent",
                 "user_profile", "user_embeddings"]
WEIGHTS = [0.01 * (i % 7) for i in range(64)]

rng = random.Random(42)
cache = {}      # feature set name -> {entity: vector}, filled by refreshes
bodies = {}     # feature set name -> encoded JSON body, built at start-up


def build_body(name, entities, dims):
    vectors = [{"entity": "%s-%d" % (name, i), "updated": 1700000000 + i,
                "values": [round(rng.uniform(-1, 1), 6) for _ in range(dims)]}
               for i in range(entities)]
    return json.dumps({"feature_set": name, "version": 1, "vectors": vectors}).encode()


def legacy_audit_log(event):
    """An old synchronous audit client: blocks the loop for ~80 ms."""
    time.sleep(0.08)


async def score_request(entity, writer):
    """Healthy work: score one entity from the cached features."""
    vec = cache.get("user_recent", {}).get(entity) or [0.0] * 32
    score = sum(v * w for v, w in zip(vec, WEIGHTS))
    writer.write(json.dumps({"entity": entity, "score": score}).encode() + b"\n")
    await writer.drain()


async def handle_conn(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb, _, arg = line.decode().strip().partition(" ")
            if verb == "SCORE":
                await score_request(arg, writer)
            elif verb == "FEATURES":
                body = bodies[arg]
                writer.write(b"%d\n" % len(body))
                view = memoryview(body)
                for off in range(0, len(body), 256 * 1024):
                    writer.write(view[off:off + 256 * 1024])
                    await writer.drain()
    except (asyncio.CancelledError, ConnectionError):
        pass  # shutting down, or the client went away
    finally:
        writer.close()


async def refresh_features(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(sys.maxsize):
        name = REFRESH_ORDER[n % len(REFRESH_ORDER)]
        writer.write(b"FEATURES %s\n" % name.encode())
        length = int(await reader.readline())
        payload = await reader.readexactly(length)
        t0 = time.perf_counter()
        doc = json.loads(payload)            # the stall: big decode on the loop
        cache[name] = {v["entity"]: v["values"] for v in doc["vectors"]}
        ms = (time.perf_counter() - t0) * 1000
        print("refresh %-16s %5.2f MB  decode+index %6.1f ms"
              % (name, length / 1e6, ms), file=sys.stderr, flush=True)
        await asyncio.sleep(0.4)


async def traffic(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"SCORE user_recent-%d\n" % rng.randrange(300))
        await reader.readline()
        await asyncio.sleep(0.004)


async def audit_ticker():
    while True:
        await asyncio.sleep(rng.uniform(1.5, 2.5))
        legacy_audit_log("scores-flushed")


async def main():
    for name, (entities, dims) in FEATURE_SETS.items():
        bodies[name] = build_body(name, entities, dims)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(handle_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tasks = [asyncio.ensure_future(c) for c in
             (refresh_features(port), traffic(port), audit_ticker())]
    print("READY %d" % os.getpid(), flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
