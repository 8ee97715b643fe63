#!/usr/bin/env python3
# Benchmark target: a minimal asyncio HTTP/1.1 server (standard library
# only, asyncio streams) answering every request on a keep-alive connection
# with a small fixed body. It is what lagtrace's overhead is measured on.
#
# Listens on 127.0.0.1, on an ephemeral port; prints "READY <pid> <port>" on
# stdout once listening; runs until SIGTERM/SIGINT and exits 0.
# LAG_MONITOR=1 also runs lag_monitor.py's 1 s oversleep monitor (JSON lines
# on stderr). PYTHONASYNCIODEBUG=1 is asyncio's own debug mode.
import asyncio
import os
import signal
import sys

BODY = b"hello from asyncio\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(BODY)) + BODY


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            # wrk sends GETs without a body; honour Content-Length anyway.
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    await reader.readexactly(int(line[15:]))
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    if os.environ.get("LAG_MONITOR") == "1":
        from lag_monitor import lag_monitor
        loop.create_task(lag_monitor())
    print("READY", os.getpid(), port, flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    asyncio.run(main())
