#!/usr/bin/env python3
# Negative control for lagtrace's integration tests: an asyncio loop that is
# busy but healthy. After SIGUSR1 it runs, for --seconds, many small tasks
# (each step under 0.2 ms of CPU; a whole loop iteration, epoll_wait return
# to next epoll_wait, measured at most ~8 ms with bpftrace attached) plus
# a local TCP echo server and clients on 127.0.0.1, so the loop does real
# I/O. lagtrace must report no blocking span here. It writes no stall lines,
# only {"kind":"done"} to --truth, prints "DONE", and idles until
# SIGTERM/SIGINT (exit 0). Runs on CPython 3.6 .. 3.13.
import argparse
import asyncio
import os
import random
import signal
import sys
import time

WORKERS = 12        # worst case all run in one iteration: 12 * 0.2 ms
ECHO_CLIENTS = 4
MESSAGE = b"x" * 63 + b"\n"


def small_work(max_us):
    """A little CPU work: spin for a random 20..max_us microseconds."""
    deadline = time.perf_counter() + random.uniform(20, max_us) / 1e6
    x = 0
    while time.perf_counter() < deadline:
        x += 1
    return x


async def worker(stop_at):
    loop = asyncio.get_event_loop()
    while loop.time() < stop_at:
        small_work(200)
        await asyncio.sleep(0)
        small_work(100)
        await asyncio.sleep(random.uniform(0.0005, 0.003))


async def handle_echo(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass  # a client was cancelled mid-exchange
    finally:
        writer.close()


async def echo_client(port, stop_at):
    loop = asyncio.get_event_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    exchanges = 0
    try:
        while loop.time() < stop_at:
            writer.write(MESSAGE)
            await writer.drain()
            assert await reader.readline() == MESSAGE
            exchanges += 1
            await asyncio.sleep(0.001)
    finally:
        writer.close()  # also when cancelled: the server side then sees EOF
    return exchanges


async def busy_phase(seconds, truth_path):
    loop = asyncio.get_event_loop()
    server = await asyncio.start_server(handle_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop_at = loop.time() + seconds
    jobs = [worker(stop_at) for _ in range(WORKERS)]
    jobs += [echo_client(port, stop_at) for _ in range(ECHO_CLIENTS)]
    try:
        results = await asyncio.gather(*jobs)
    finally:
        server.close()
    await server.wait_closed()
    sys.stderr.write("healthy: %d echo exchanges\n" % sum(results[WORKERS:]))
    with open(truth_path, "w") as f:
        f.write('{"kind":"done"}\n')
    print("DONE", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    open(args.truth, "w").close()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    tasks = []

    def heartbeat():
        loop.call_later(0.005, heartbeat)

    def on_usr1():
        if not tasks:  # run the busy phase once
            tasks.append(loop.create_task(busy_phase(args.seconds, args.truth)))

    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    loop.call_soon(heartbeat)
    loop.call_soon(lambda: print("READY %d" % os.getpid(), flush=True))
    loop.run_forever()
    for t in tasks:
        t.cancel()
    if tasks:  # stopped mid-phase: let the echo handlers see EOF and end
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
