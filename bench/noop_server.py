"""The ceiling: ingest's own HTTP stack (uvloop, httptools parser, protocol,
slots, response writer, latency counting) with a handler that does nothing.

    python bench/noop_server.py --port 8081

bench_ingest.py runs it beside the real server; real / noop is the share of
the HTTP stack's ceiling that validation, dedup and durability leave us.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import time
from email.utils import formatdate

import uvloop

from ingest import config as config_mod
from ingest.metrics import Metrics
from ingest.protocol import HttpProtocol
from ingest.tls import http_context

BODY = b'{"result":"bound","event_id":"noop","tube":"109836900604","lab":"DEMO-LUHN","count":1,"pool_size":10,"seq":1}'


class NoopApp:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def handle(self, req, slot) -> None:
        # /metrics lets the benchmark count answers the same way on both servers.
        if req.path == "/metrics":
            slot.route = "metrics"
            slot.respond(200, self.metrics.render(), b"text/plain; version=0.0.4")
            return
        slot.route = "noop" if req.method == b"POST" else "other"
        slot.respond(201, BODY)


class NoopServer:
    """The attributes HttpProtocol reads from ingest.server.Server."""

    def __init__(self, config_path: str | None = None):
        self.config = config_mod.load(config_path)
        self.metrics = Metrics("noop")
        self.app = NoopApp(self.metrics)
        self.connections: set = set()
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode()
        self.draining = False

    async def serve(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        tls = http_context(self.config.http)  # the same HTTPS as ingest serve, when the config sets it
        await loop.create_server(lambda: HttpProtocol(self), host, port, backlog=4096, reuse_address=True, ssl=tls)
        print(f"noop serving on {'https' if tls else 'http'}://{host}:{port}", flush=True)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.cancel)
        while not stop.done():
            await asyncio.sleep(0.5)
            self.now = time.monotonic()
            self.date = formatdate(usegmt=True).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--config", default=None, help="an ingest config ([http] TLS is all it reads)")
    args = parser.parse_args()
    uvloop.run(NoopServer(args.config).serve(args.host, args.port))


if __name__ == "__main__":
    main()
