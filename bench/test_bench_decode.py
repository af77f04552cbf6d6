"""The decode path: request bytes to a validated event, before any store work.

    pytest bench/test_bench_decode.py --benchmark-only

Each round handles the same seeded requests. The groups set like beside
like: a single event as JSON and as msgpack; a batch of 1000 decoded in one
pass against the same events sent as 1000 single bodies; the HTTP parser (httptools through our sans-IO
wrapper) on a whole request, and the response writer, each as the compiled kernel
(``ingest._http``) beside its Python twin (``ingest._http_py``):

    pytest bench/test_bench_decode.py --benchmark-only -k http
"""
from __future__ import annotations

import msgspec
import pytest
from twins import kernel_and_twin

from ingest import _http_py, events
from ingest.drill import Events

HTTP_IMPLS = kernel_and_twin("_http", _http_py)

EVENTS = [Events("BDEC").next() for _ in range(1000)]
JSON_BODIES = [msgspec.json.encode(e) for e in EVENTS]
MSGPACK_BODIES = [msgspec.msgpack.encode(e) for e in EVENTS]
BATCH_BODY = msgspec.json.encode({"events": EVENTS})
REQUESTS = [b"POST /v1/bindings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in JSON_BODIES]


def _decode_all(bodies, media):
    for body in bodies:
        events.decode_event(body, media)


@pytest.mark.benchmark(group="decode: 1000 single events")
def test_decode_single_json(benchmark):
    benchmark(_decode_all, JSON_BODIES, events.JSON)


@pytest.mark.benchmark(group="decode: 1000 single events")
def test_decode_single_msgpack(benchmark):
    benchmark(_decode_all, MSGPACK_BODIES, events.MSGPACK)


@pytest.mark.benchmark(group="decode: a batch of 1000")
def test_decode_batch_one_pass(benchmark):
    decoded = benchmark(events.decode_batch, BATCH_BODY, events.JSON)
    assert len(decoded) == 1000 and all(isinstance(e, events.BindingEvent) for e in decoded)


@pytest.mark.benchmark(group="decode: a batch of 1000")
def test_decode_1000_single_bodies(benchmark):
    # The same events as 1000 single requests' bodies: what batching saves in decoding.
    benchmark(_decode_all, JSON_BODIES, events.JSON)


@pytest.mark.benchmark(group="http: parse 1000 requests")
@pytest.mark.parametrize("impl", HTTP_IMPLS)
def test_http_parse(benchmark, impl):
    parser = impl.RequestParser(16_384, 2_097_152)

    def parse():
        n = 0
        for raw in REQUESTS:
            n += len(parser.feed(raw, 0.0))
        return n

    assert benchmark(parse) == 1000


# What the server writes for a stored binding: a 201 with a ~120-byte JSON body.
ANSWER = (b'{"result":"bound","event_id":"scan-0001","tube":"109836900604","lab":"DEMO-LUHN",'
          b'"count":1,"pool_size":10,"seq":123456}')
DATE = b"Sun, 22 Nov 2026 10:00:00 GMT"


@pytest.mark.benchmark(group="http: 1000 responses")
@pytest.mark.parametrize("impl", HTTP_IMPLS)
def test_http_response(benchmark, impl):
    response = impl.response

    def answer():
        for _ in range(1000):
            out = response(201, ANSWER, DATE, b"application/json", True, b"", False)
        return out

    assert benchmark(answer) == _http_py.response(201, ANSWER, DATE)
