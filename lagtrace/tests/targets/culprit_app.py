#!/usr/bin/env python3
# Target for lagtrace's culprit tests: an asyncio "service" whose handlers
# stall the loop inside library code, so the innermost frame is the
# library's and the culprit is the handler:
#   - catalog_handler -> load_catalog -> json.loads of a multi-MB body
#     (on-CPU, in the standard library's json decoder);
#   - stock_handler (async def) -> fetch_stock -> urllib.request.urlopen of a
#     local HTTP server that answers after --delay-ms (off-CPU, in recv under
#     http.client and socket).
# Each handler runs --count times, alternating. Labels: "catalog", "stock".
# Protocol: prints "READY <pid>", does nothing until SIGUSR1, writes one
# {"kind":"stall",...} line per stall then {"kind":"done"} to --truth,
# prints "DONE", idles until SIGTERM/SIGINT (exit 0). CPython 3.8+.
import argparse
import asyncio
import http.server
import json
import signal
import threading
import time
import urllib.request


def body(mb):
    items = [{"sku": i, "name": "item %d" % i, "tags": ["a", "b", "c"], "price": i * 0.5}
             for i in range(mb * 12000)]
    return json.dumps({"items": items})


class Slow(http.server.BaseHTTPRequestHandler):
    delay_ms = 100

    def do_GET(self):
        time.sleep(self.delay_ms / 1000.0)
        data = b'{"stock": 42}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def load_catalog(raw):
    return len(json.loads(raw)["items"])


async def catalog_handler(raw):
    return load_catalog(raw)


def fetch_stock(url):
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


async def stock_handler(url):
    return fetch_stock(url)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--mb", type=int, default=4)
    p.add_argument("--delay-ms", type=int, default=150)
    args = p.parse_args()

    Slow.delay_ms = args.delay_ms
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/stock" % server.server_address[1]
    raw = body(args.mb)
    truth = open(args.truth, "w")
    tid = threading.get_native_id()

    def record(label, start, end):
        truth.write(json.dumps({"kind": "stall", "label": label, "tid": tid,
                                "start_ns": start, "end_ns": end}) + "\n")
        truth.flush()

    loop = asyncio.new_event_loop()
    go = asyncio.Event()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def timed(label, run):
        start = time.time_ns()
        await run()
        record(label, start, time.time_ns())

    async def scenario():
        print("READY %d" % __import__("os").getpid(), flush=True)
        await go.wait()
        for _ in range(args.count):
            for label, run in (("catalog", lambda: catalog_handler(raw)),
                               ("stock", lambda: stock_handler(url))):
                await asyncio.sleep(0.05)
                # The handler runs in its own task, as a server's would.
                await loop.create_task(timed(label, run))
        await asyncio.sleep(0.1)
        truth.write(json.dumps({"kind": "done"}) + "\n")
        truth.flush()
        print("DONE", flush=True)
        await stop.wait()

    asyncio.set_event_loop(loop)
    loop.run_until_complete(scenario())
    server.shutdown()


if __name__ == "__main__":
    main()
