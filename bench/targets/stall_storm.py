#!/usr/bin/env python3
# Benchmark target: a storm of ~50 event-loop stalls per second, to measure
# lagtrace's own cost when it has a span (with stacks) to assemble, symbolize
# and print every 20 ms. Each cycle blocks the loop on the CPU in
# storm_block() for BLOCK_MS, then yields for YIELD_MS: with the defaults
# (15 + 5 ms) that is 50 stalls/s, each over a 10 ms threshold. (A loop
# cannot block 25 ms *every* 20 ms: the stalls would overlap.)
#
# Usage: stall_storm.py [BLOCK_MS [YIELD_MS]]. Prints "READY <pid>" on stdout;
# runs until SIGTERM/SIGINT and exits 0. Run it with `python3 -X perf` (3.12+)
# so a perf map names the Python frames.
import asyncio
import os
import signal
import sys
import time

BLOCK_MS = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
YIELD_MS = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0


def storm_block(ms):
    """Burn the CPU for `ms` milliseconds without yielding to the loop."""
    deadline = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < deadline:
        for i in range(200):
            x = (x * 31 + i) & 0xFFFFFFFF
    return x


async def storm():
    while True:
        storm_block(BLOCK_MS)
        await asyncio.sleep(YIELD_MS / 1000)


async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = loop.create_task(storm())
    print("READY", os.getpid(), flush=True)
    await stop.wait()
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
