"""The asyncio HTTP protocol on the no-op path: kernel beside twin.

1000 of the same seeded binding requests as the other benchmarks, each fed
to its own connection's ``HttpProtocol`` (64 connections, round robin)
whose app is bench/noop_server.NoopApp, so one round is what the noop
ceiling's server does for 1000 requests minus the sockets: parser,
protocol, slot, latency count, answer bytes. The compiled protocol
(``ingest._protocol``) and its Python twin (``ingest._protocol_py``) run on
the same parser (the one ``ingest.http`` selects):

    pytest bench/test_bench_protocol.py --benchmark-only
"""
from __future__ import annotations

import msgspec
import pytest
from inproc_cpu import FakeServer, NullTransport
from noop_server import NoopApp
from twins import kernel_and_twin

from ingest import _protocol_py
from ingest import config as config_mod
from ingest.drill import Events
from ingest.metrics import Metrics

IMPLS = kernel_and_twin("_protocol", _protocol_py)

BODIES = [msgspec.json.encode(Events("BPRO").next()) for _ in range(1000)]
REQUESTS = [b"POST /v1/bindings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in BODIES]
CONNECTIONS = 64


@pytest.mark.benchmark(group="protocol: 1000 no-op requests")
@pytest.mark.parametrize("impl", IMPLS)
def test_protocol_noop(benchmark, impl):
    metrics = Metrics("bench")
    server = FakeServer(NoopApp(metrics), config_mod.load(), metrics)
    conns = []
    for _ in range(CONNECTIONS):
        conn = impl.HttpProtocol(server)
        conn.connection_made(NullTransport())
        conns.append(conn)
    work = [(conns[i % CONNECTIONS].data_received, raw) for i, raw in enumerate(REQUESTS)]

    def feed():
        for data_received, raw in work:
            data_received(raw)

    benchmark(feed)
    assert sum(metrics.latency["noop"].counts) % 1000 == 0 and not any(c.pending for c in conns)
