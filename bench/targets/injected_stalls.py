#!/usr/bin/env python3
# Benchmark target: known event-loop stalls, to compare what lagtrace sees
# with what an in-process lag monitor (lag_monitor.py, 1 s period) sees.
#
# Usage: injected_stalls.py MONITOR_LOG [GAP_S]
# Prints "READY <pid>" on stdout and idles (a 5 ms ticker keeps the loop
# turning) until SIGUSR1. Then, GAP_S (default 0.75) apart, it blocks the loop
# in checksum_blob() — a CPU-bound function lagtrace should name — for each of
# STALLS_MS, printing one JSON line per stall with its CLOCK_REALTIME window:
#   {"kind": "stall", "ms": 20, "start_unix_ns": ..., "end_unix_ns": ...}
# then "DONE". The monitor runs from the start and writes its JSON lines to
# MONITOR_LOG. Runs until SIGTERM/SIGINT and exits 0. Run it with
# `python3 -X perf` (3.12+) so a perf map names the Python frames.
import asyncio
import json
import os
import signal
import sys
import time
import zlib

from lag_monitor import lag_monitor

STALLS_MS = [20, 50, 200, 500, 2000]
BLOB = bytes(range(256)) * 256  # 64 KiB


def checksum_blob(ms):
    """Checksum a blob over and over for `ms` ms: a CPU-bound stall."""
    deadline = time.perf_counter() + ms / 1000
    crc = 0
    while time.perf_counter() < deadline:
        crc = zlib.crc32(BLOB[:4096], crc)
        for b in BLOB[:512]:
            crc = (crc * 31 + b) & 0xFFFFFFFF
    return crc


async def ticker():
    while True:
        await asyncio.sleep(0.005)


async def inject(gap):
    for ms in STALLS_MS:
        await asyncio.sleep(gap)
        start = time.time_ns()
        checksum_blob(ms)
        end = time.time_ns()
        print(json.dumps({"kind": "stall", "ms": ms, "start_unix_ns": start,
                          "end_unix_ns": end}), flush=True)
    print("DONE", flush=True)


async def main():
    log = open(sys.argv[1], "w")
    gap = float(sys.argv[2]) if len(sys.argv) > 2 else 0.75
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [loop.create_task(ticker()), loop.create_task(lag_monitor(log))]
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: tasks.append(loop.create_task(inject(gap))))
    print("READY", os.getpid(), flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()
    log.close()


if __name__ == "__main__":
    asyncio.run(main())
