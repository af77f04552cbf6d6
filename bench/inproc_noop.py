"""CPU per request through ingest's HTTP stack with a handler that does nothing.

The in-process twin of bench_ingest.py's noop ceiling: feeds N of the same
valid single-event requests as bench/inproc_cpu.py to HttpProtocol objects
whose app is bench/noop_server.NoopApp (parser, protocol, slot, latency
count, answer bytes; no sockets, no loop, no store), one request per
connection per round, and prints the process's CPU time per request.
Repeatable under callgrind:

    python bench/inproc_noop.py 20000 --group 64
    valgrind --tool=callgrind python bench/inproc_noop.py 3000 --group 64
    valgrind --tool=callgrind python bench/inproc_noop.py 3000 --group 64 --skip-run   # subtract this

`--protocol python` runs the protocol's Python twin (ingest._protocol_py)
with every other kernel as selected, so that the difference is the protocol
kernel's alone (INGEST_PURE_PYTHON=1 switches every kernel at once).
"""
from __future__ import annotations

import argparse
import importlib
import time

from inproc_cpu import FakeServer, binding_requests, connections
from noop_server import NoopApp

from ingest import config as config_mod
from ingest.metrics import Metrics
from ingest.server import tune_gc

PROTOCOLS = {"selected": "ingest.protocol", "cython": "ingest._protocol", "python": "ingest._protocol_py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requests", type=int)
    parser.add_argument("--group", type=int, default=64, help="connections, each sent one request per round")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="selected",
                        help="which HttpProtocol (default: the one ingest.protocol selects)")
    parser.add_argument("--skip-run", action="store_true", help="build the requests only (callgrind baseline)")
    args = parser.parse_args()
    if args.requests < 1 or args.group < 1:
        parser.error("requests and --group must be at least 1")

    protocol = importlib.import_module(PROTOCOLS[args.protocol])
    metrics = Metrics("bench")
    server = FakeServer(NoopApp(metrics), config_mod.load(), metrics)
    conns = connections(protocol, server, args.group)
    requests = binding_requests(args.requests)
    if args.skip_run:
        print("requests built; run skipped")
        return
    tune_gc()  # as the server does
    t0 = time.process_time()
    for start in range(0, len(requests), args.group):
        for conn, raw in zip(conns, requests[start:start + args.group]):
            conn.data_received(raw)
    spent = time.process_time() - t0
    answered = sum(metrics.latency["noop"].counts)
    print(f"{spent / args.requests * 1e6:.2f} us CPU per request, group {args.group}, "
          f"{answered} answered, protocol {protocol.__name__}")


if __name__ == "__main__":
    main()
