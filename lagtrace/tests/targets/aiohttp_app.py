#!/usr/bin/env python3
# Target for lagtrace's culprit tests on real frameworks (aiohttp, requests;
# installed by `cargo xtask setup` into target/venv-frameworks):
#   - catalog_handler -> load_catalog -> aiohttp's `await resp.json()` on a
#     multi-MB body from a second server (on-CPU inside aiohttp and json);
#   - stock_handler (async def) -> fetch_stock -> `requests.get` of a slow
#     server (off-CPU in recv under requests, urllib3, http.client).
# Both are aiohttp web handlers, called --count times each by a client task
# in the same loop. Labels: "catalog", "stock"; each handler writes its own
# stall window.
# Protocol: prints "READY <pid>", does nothing until SIGUSR1, writes one
# {"kind":"stall",...} line per stall then {"kind":"done"} to --truth,
# prints "DONE", idles until SIGTERM/SIGINT (exit 0).
import argparse
import asyncio
import http.server
import json
import os
import signal
import threading
import time

import aiohttp
import requests
from aiohttp import web

ARGS = None
TRUTH = None
TID = threading.get_native_id()


class Backend(http.server.BaseHTTPRequestHandler):
    """Thread server: /big answers a multi-MB JSON body, /slow answers late."""
    big = b""

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(ARGS.delay_ms / 1000.0)
            data = b'{"stock": 42}'
        else:
            data = self.big
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def record(label, start):
    TRUTH.write(json.dumps({"kind": "stall", "label": label, "tid": TID,
                            "start_ns": start, "end_ns": time.time_ns()}) + "\n")
    TRUTH.flush()


async def load_catalog(session, url):
    async with session.get(url) as resp:
        body = await resp.read()
        start = time.time_ns()
        # Decoding the whole body in one go blocks the loop.
        items = await resp.json()
        record("catalog", start)
        del body
        return len(items["items"])


async def catalog_handler(request):
    n = await load_catalog(request.app["session"], request.app["backend"] + "/big")
    return web.json_response({"items": n})


def fetch_stock(url):
    return requests.get(url, timeout=10).json()


async def stock_handler(request):
    start = time.time_ns()
    stock = fetch_stock(request.app["backend"] + "/slow")
    record("stock", start)
    return web.json_response(stock)


async def main():
    global TRUTH
    TRUTH = open(ARGS.truth, "w")
    items = [{"sku": i, "name": "item %d" % i, "tags": ["a", "b"], "price": i * 0.5}
             for i in range(ARGS.mb * 12000)]
    Backend.big = json.dumps({"items": items}).encode()
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()

    app = web.Application()
    app["backend"] = "http://127.0.0.1:%d" % backend.server_address[1]
    app["session"] = aiohttp.ClientSession()
    app.router.add_get("/catalog", catalog_handler)
    app.router.add_get("/stock", stock_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]

    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("READY %d" % os.getpid(), flush=True)
    await go.wait()
    async with aiohttp.ClientSession() as client:
        for _ in range(ARGS.count):
            for path in ("/catalog", "/stock"):
                await asyncio.sleep(0.05)
                async with client.get("http://127.0.0.1:%d%s" % (port, path)) as r:
                    await r.read()
    await asyncio.sleep(0.1)
    TRUTH.write(json.dumps({"kind": "done"}) + "\n")
    TRUTH.flush()
    print("DONE", flush=True)
    await stop.wait()
    await app["session"].close()
    await runner.cleanup()
    backend.shutdown()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--mb", type=int, default=6)
    p.add_argument("--delay-ms", type=int, default=150)
    ARGS = p.parse_args()
    asyncio.run(main())
