"""CPU time per binding through the whole server path, without sockets.

Feeds N valid binding events (single-event requests, or batches with --batch) to ingest's protocol objects (parser,
handler, rules, store, answer bytes) and commits them in groups, inline, with
real fsyncs; prints CPU time (user + sys of this process) per event. Steadier
than a loopback benchmark on a noisy machine, and repeatable under callgrind:

    python bench/inproc_cpu.py 20000 --group 64
    python bench/inproc_cpu.py 20000 --group 4 --batch 1000     # the batch endpoint
    valgrind --tool=callgrind python bench/inproc_cpu.py 3000 --group 64
    valgrind --tool=callgrind python bench/inproc_cpu.py 3000 --group 64 --skip-run   # subtract this

`--protocol python` runs the HTTP protocol's Python twin (ingest._protocol_py)
with every other kernel as selected (see bench/inproc_noop.py).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import tempfile
import time

import msgspec

from ingest import app as app_mod
from ingest import config as config_mod
from ingest.access import new_token, token_sha256
from ingest.committer import Committer
from ingest.drill import Events
from ingest.metrics import Metrics
from ingest.server import tune_gc
from ingest.store import Store


class InlineCommitter(Committer):
    """Group commit on the caller's thread, when told to (no thread, no loop)."""

    def start(self) -> None:
        self._pending = []

    def submit(self, work) -> None:
        self.in_flight += len(work.items)
        self._pending.append(work)

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        self._loop.call_soon_threadsafe = lambda fn, *a: fn(*a)
        self._commit(batch, sum(len(w.items) for w in batch))


class FakeServer:
    """What HttpProtocol reads from ingest.server.Server."""

    def __init__(self, app, config, metrics):
        self.app, self.config, self.metrics = app, config, metrics
        self.connections: set = set()
        self.now = 0.0
        self.date = b"Sun, 22 Nov 2026 00:00:00 GMT"
        self.draining = False


class NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def connections(protocol, server, n: int) -> list:
    """n protocol objects of `protocol` (a module), each on a NullTransport."""
    conns = []
    for _ in range(n):
        conn = protocol.HttpProtocol(server)
        conn.connection_made(NullTransport())
        conns.append(conn)
    return conns


def binding_requests(events: int, batch: int = 0, token: str | None = None) -> list[bytes]:
    """Raw requests carrying `events` fresh valid bindings: one per request,
    or `batch` per POST /v1/bindings/batch; with `token`, its bearer header."""
    auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    source = Events("BNCH")
    requests = []
    for _ in range(events // (batch or 1)):
        if batch:
            path = b"/v1/bindings/batch"
            body = msgspec.json.encode({"events": [source.next() for _ in range(batch)]})
        else:
            path = b"/v1/bindings"
            body = msgspec.json.encode(source.next())
        requests.append(b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%s"
                        b"Content-Length: %d\r\n\r\n%s" % (path, auth, len(body), body))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("events", type=int)
    parser.add_argument("--group", type=int, default=64, help="requests per group commit (= connections)")
    parser.add_argument("--protocol", choices=["selected", "cython", "python"], default="selected",
                        help="which HttpProtocol (default: the one ingest.protocol selects)")
    parser.add_argument("--skip-run", action="store_true", help="build the requests only (callgrind baseline)")
    parser.add_argument("--batch", type=int, default=0,
                        help="send POST /v1/bindings/batch with this many events per request (default: single events)")
    parser.add_argument("--access", action="store_true",
                        help="access control on: a scan token configured and sent with every request")
    parser.add_argument("--default-gc", action="store_true",
                        help="leave the cycle collector at Python's defaults (the server tunes it: server.tune_gc)")
    args = parser.parse_args()
    if args.events < 1 or args.group < 1:
        parser.error("events and --group must be at least 1")
    if args.batch and args.events < args.batch:
        # only whole batches are sent: fewer events than one would send none
        parser.error(f"events ({args.events}) must be at least --batch ({args.batch})")
    protocol = importlib.import_module(
        {"selected": "ingest.protocol", "cython": "ingest._protocol", "python": "ingest._protocol_py"}[args.protocol])

    token = new_token() if args.access else None
    text = config_mod.default_text()
    if token:
        text += f'\n[[access.tokens]]\nname = "bench"\nroles = ["scan"]\nsha256 = "{token_sha256(token)}"\n'
    cfg = config_mod.loads(text)
    data = tempfile.mkdtemp(prefix="ingest-inproc-")
    store = Store(data)
    metrics = Metrics("bench")
    app = app_mod.App(cfg, store, None, metrics)
    committer = InlineCommitter(store, app.apply, asyncio.new_event_loop(), 4096, metrics)
    committer.start()
    app.committer = committer
    server = FakeServer(app, cfg, metrics)
    conns = connections(protocol, server, args.group)
    requests = binding_requests(args.events, args.batch, token)
    try:
        if args.skip_run:
            print("requests built; run skipped")
            return
        if not args.default_gc:
            tune_gc()
        t0 = time.process_time()
        for start in range(0, len(requests), args.group):
            for conn, raw in zip(conns, requests[start:start + args.group]):
                conn.data_received(raw)
            committer.flush()
        spent = time.process_time() - t0
        bound = metrics.events[("bound", "")]
        print(f"{spent / bound * 1e6:.2f} us CPU per event, group {args.group}, batch {args.batch}, {bound} bound"
              + (", access control on" if token else ""))
    finally:
        store.close()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
