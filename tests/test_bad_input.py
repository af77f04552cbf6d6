"""Hostile and broken input: bodies, HTTP framing, slow and idle clients.

One server with small limits serves the module. Every refused input must
get its answer (or a closed connection where the framing is broken), leave
the server serving others, and change nothing: the last test checks that
last_seq moved only by the events this module meant to bind.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import Client, RawConn, config_with, decode_body, event, metric, parse_metrics, raw_request

BODY_MAX = 65_536
HEADER_MAX = 4_096
REQUEST_S = 1.0
KEEPALIVE_S = 2.0
# How long a test waits for an answer that must come (the server's own
# timeouts are 1-2 s; this only bounds a hang).
WAIT_S = 15.0

CONFIG = config_with(limits={
    "request_seconds_max": REQUEST_S,
    "keepalive_seconds_max": KEEPALIVE_S,
    "body_bytes_max": BODY_MAX,
    "header_bytes_max": HEADER_MAX,
})

JSON_CT = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(module_server_factory):
    return module_server_factory(config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def ledger(server):
    """last_seq before this module's first test, and the events it binds."""
    return {"seq0": server.last_seq(), "accepted": 0}


def post_raw(server, body: bytes, path="/v1/bindings", ctype="application/json"):
    return server.request("POST", path, body, {"Content-Type": ctype})


def assert_malformed(status, body, field=None):
    assert status == 400, body
    assert body["error"]["code"] == "malformed", body
    if field is not None:
        assert body["error"].get("field") == field, body


def exchange(server, data: bytes) -> RawConn:
    conn = RawConn(server.port, timeout=WAIT_S)
    conn.send(data)
    return conn


def post_request(body: bytes, ctype="application/json", path="/v1/bindings", extra: dict | None = None) -> bytes:
    return raw_request("POST", path, body, {"Content-Type": ctype, **(extra or {})})


def assert_serving(server):
    assert server.request("GET", "/livez")[0] == 200


# -- bodies -------------------------------------------------------------------------


VALID = json.dumps(event(tube="100000000016", person="HC00000000000001R")).encode()


@pytest.mark.parametrize("cut", [1, 2, 15, len(VALID) // 2, len(VALID) - 2, len(VALID) - 1])
def test_truncated_json(server, cut):
    status, _, body = post_raw(server, VALID[:cut])
    assert_malformed(status, body)


@pytest.mark.parametrize("cut", [1, len(VALID) // 2, len(VALID) - 1])
def test_truncated_batch(server, cut):
    batch = b'{"events":[' + VALID + b"]}"
    status, _, body = post_raw(server, batch[:cut + 11], "/v1/bindings/batch")
    assert_malformed(status, body)


@pytest.mark.parametrize("ctype", ["application/json", "application/msgpack"])
@pytest.mark.parametrize("path", [
    "/v1/bindings", "/v1/bindings/batch", "/v1/boxes", "/v1/results", "/v1/tubes/100000000016/seal",
    "/v1/bindings/e-1/void", "/v1/boxes/B-1/handover", "/v1/boxes/B-1/receive", "/v1/tubes/100000000016/receive",
])
def test_an_empty_body_is_said_to_be_empty(server, path, ctype):
    before = server.last_seq()
    status, _, body = post_raw(server, b"", path, ctype)
    assert_malformed(status, body)
    assert body["error"]["message"] == "the body is empty; expected an object", body
    assert server.last_seq() == before


@pytest.mark.parametrize(
    "raw",
    [b"[]", b"[1,2]", b"null", b"true", b"0", b"-1.5", b'"a string"', b"{} {}", VALID + b"x", VALID + b",{}",
     b'{"event_id" "x"}', b"{'event_id': 'x'}", b"{,}", b"\x00"],
)
def test_not_one_json_object(server, raw):
    status, _, body = post_raw(server, raw)
    assert_malformed(status, body)


@pytest.mark.parametrize(
    "field, value",
    [("tube", {"code": "100000000016"}), ("person", ["HC00000000000001R"]), ("pool_size", None),
     ("scanned_at", True), ("site_id", 1.5), ("resample", "yes"), ("event_id", {"$oid": "1"})],
)
def test_wrong_json_types(server, field, value):
    ev = event()
    ev[field] = value
    before = server.last_seq()
    status, _, body = post_raw(server, json.dumps(ev).encode())
    assert_malformed(status, body, field)
    assert server.last_seq() == before


@pytest.mark.parametrize(
    "field, literal",
    [
        ("scanned_at", "1e400"),
        ("scanned_at", "-1e400"),
        ("scanned_at", str(2**64)),
        ("scanned_at", str(-(2**64))),
        ("scanned_at", str(2**53 + 1)),
        ("scanned_at", "1" * 400),
        ("scanned_at", "1.7e12"),
        ("pool_size", str(2**64)),
        ("pool_size", "1e400"),
        ("pool_size", "5.000000000000000001"),
    ],
)
def test_huge_and_inexact_numbers(server, field, literal):
    ev = event()
    ev[field] = "@@"
    raw = json.dumps(ev).replace('"@@"', literal).encode()
    status, _, body = post_raw(server, raw)
    assert_malformed(status, body, field)


def test_huge_numbers_in_msgpack(server):
    ev = event()
    ev["scanned_at"] = 2**64 - 1
    status, _, body = post_raw(server, msgspec.msgpack.encode(ev), ctype="application/msgpack")
    assert_malformed(status, body, "scanned_at")


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b"\xef\xbb\xbf" + VALID, b"\x80" * 10, "{}".encode("utf-16")])
def test_body_that_is_not_utf8_json(server, raw):
    status, _, body = post_raw(server, raw)
    assert_malformed(status, body)


NON_UTF8_STRING_BODIES = [
    pytest.param(
        json.dumps(event(event_id="EVENT")).encode().replace(b"EVENT", b"\xff\xfe"), "/v1/bindings", "application/json",
        id="json-event_id",
    ),
    pytest.param(
        json.dumps(event(site_id="SITE")).encode().replace(b"SITE", b"caf\xe9"), "/v1/bindings", "application/json",
        id="json-site_id-latin1",
    ),
    pytest.param(
        b'{"ev\xffents": []}', "/v1/bindings/batch", "application/json", id="json-batch-key",
    ),
    pytest.param(
        msgspec.msgpack.encode(event(site_id="SITE")).replace(b"\xa4SITE", b"\xa4\xff\xff\xff\xff"),
        "/v1/bindings", "application/msgpack", id="msgpack-site_id",
    ),
]



def test_invalid_utf8_inside_one_batch_item_fails_only_that_item(server, ledger):
    good = event()
    bad = json.dumps(event(site_id="SITE")).encode().replace(b"SITE", b"\xc3\x28")
    raw = b'{"events": [' + bad + b", " + json.dumps(good).encode() + b"]}"
    status, _, body = post_raw(server, raw, "/v1/bindings/batch")
    assert status == 200
    first, second = body["results"]
    assert (first["status"], first["error"]["code"]) == (400, "malformed")
    assert second["status"] == 201
    ledger["accepted"] += 1


@pytest.mark.parametrize("raw, path, ctype", NON_UTF8_STRING_BODIES)
def test_invalid_utf8_inside_a_string_is_malformed(server, raw, path, ctype):
    with exchange(server, post_request(raw, ctype, path)) as conn:
        try:
            resp = conn.read_response()
        except (EOFError, ConnectionResetError) as exc:
            pytest.fail(f"no answer, connection dropped: {exc}")
    assert resp.status == 400
    # answered in the media type it was sent in
    assert resp.headers["content-type"] == ctype
    assert decode_body(ctype, resp.body)["error"]["code"] == "malformed"


def test_server_survives_invalid_utf8_bodies(server):
    """Whatever the answer to the bodies above, the server keeps serving and
    stores nothing from them."""
    for p in NON_UTF8_STRING_BODIES:
        raw, path, ctype = p.values
        with exchange(server, post_request(raw, ctype, path)) as conn:
            try:
                conn.read_response()
            except (EOFError, ConnectionResetError):
                pass
    assert_serving(server)


DEPTH = 20_000  # 40 KB of brackets, under body_bytes_max


@pytest.mark.parametrize(
    "raw, path",
    [
        (b'{"event_id":' + b"[" * DEPTH + b"]" * DEPTH + b"}", "/v1/bindings"),
        (b"[" * DEPTH + b"]" * DEPTH, "/v1/bindings"),
        (b'{"zzz":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "/v1/bindings"),
        (b'{"events":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "/v1/bindings/batch"),
    ],
    ids=["in-a-field", "top-level", "objects-in-unknown-field", "objects-as-events"],
)
def test_deeply_nested_json_is_malformed(server, raw, path):
    assert len(raw) < BODY_MAX
    status, _, body = post_raw(server, raw, path)
    assert_malformed(status, body)




@pytest.mark.parametrize(
    "raw, ctype",
    [
        (b'{"events":' + b"[" * DEPTH + b"]" * DEPTH + b"}", "application/json"),
        (b'{"events":[' + b"[" * DEPTH + b"]" * DEPTH + b"]}", "application/json"),
        (b'{"events":[{"a":' + b"[" * DEPTH + b"]" * DEPTH + b"}]}", "application/json"),
        (b"\x81\xa6events\x91" + b"\x91" * DEPTH + b"\x90", "application/msgpack"),
    ],
    ids=["json-events-itself", "json-array-item", "json-object-item", "msgpack-array-item"],
)
def test_deeply_nested_batch_item_is_malformed(server, raw, ctype):
    with exchange(server, post_request(raw, ctype, "/v1/bindings/batch")) as conn:
        try:
            resp = conn.read_response()
        except (EOFError, ConnectionResetError) as exc:
            pytest.fail(f"no answer, connection dropped: {exc}")
    assert resp.status == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=json_values, as_batch=st.booleans())
def test_arbitrary_json_is_answered_malformed(server, value, as_batch):
    if as_batch:
        status, _, body = server.request("POST", "/v1/bindings/batch", {"events": [value]})
        assert status in (200, 400), body
        if status == 200:
            [result] = body["results"]
            assert result["status"] == 400 and result["error"]["code"] == "malformed"
    else:
        status, _, body = post_raw(server, json.dumps({"x": value} if isinstance(value, dict) else value).encode())
        assert_malformed(status, body)


# -- sizes --------------------------------------------------------------------------


def test_oversize_body_is_413_and_server_serves_the_next_connection(server):
    # Announced length: refused before the body is sent.
    head = raw_request("POST", "/v1/bindings", headers={"Content-Type": "application/json"})
    head = head.replace(b"Content-Length: 0", f"Content-Length: {BODY_MAX + 1}".encode())
    with exchange(server, head) as conn:
        resp = conn.read_response()
        assert resp.status == 413
        assert resp.json()["error"]["code"] == "body_too_large"
        assert resp.headers.get("connection") == "close"
        assert conn.at_eof()
    assert_serving(server)


def test_oversize_chunked_body_is_413(server):
    data = (
        b"POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{BODY_MAX + 1:x}\r\n".encode() + b" " * (BODY_MAX + 1)
    )
    with exchange(server, data) as conn:
        resp = conn.read_response()
        assert resp.status == 413
        assert conn.at_eof()
    assert_serving(server)


def test_body_at_the_limit_is_read(server):
    raw = b" " * (BODY_MAX - 2) + b"{}"
    status, _, body = post_raw(server, raw)
    assert_malformed(status, body)


@pytest.mark.parametrize(
    "data",
    [
        raw_request("GET", "/livez", headers={"X-Big": "a" * HEADER_MAX}),
        raw_request("GET", "/livez", headers={f"X-H{i}": "v" * 20 for i in range(HEADER_MAX // 20)}),
        raw_request("GET", "/livez?" + "q" * HEADER_MAX),
    ],
    ids=["one-big-header", "many-headers", "long-url"],
)
def test_oversize_headers_are_431(server, data):
    with exchange(server, data) as conn:
        resp = conn.read_response()
        assert resp.status == 431
        assert resp.json()["error"]["code"] == "headers_too_large"
        assert conn.at_eof()
    assert_serving(server)


def test_unterminated_oversize_header_is_431(server):
    data = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (HEADER_MAX * 8)
    with exchange(server, data) as conn:
        resp = conn.read_response()
    assert resp.status == 431


def test_headers_just_under_the_limit_are_served(server):
    data = raw_request("GET", "/livez", headers={"X-Pad": "p" * (HEADER_MAX - 200)})
    with exchange(server, data) as conn:
        assert conn.read_response().status == 200


# -- broken framing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET /livez HTTP/1.1\r\nHost x\r\n\r\n",  # header without colon
        b"GET /livez HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /v1/bindings HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/bindings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /livez HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["word", "no-path", "tls", "no-colon", "two-lengths", "negative-length", "bad-chunk", "upgrade"],
)
def test_garbage_request_is_400_and_closed(server, data):
    with exchange(server, data) as conn:
        resp = conn.read_response()
        assert resp.status == 400
        assert resp.json()["error"]["code"] == "bad_request"
        assert resp.headers.get("connection") == "close"
        assert conn.at_eof()
    assert_serving(server)


@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"br", b"gzip, identity"])
def test_a_compressed_body_is_415_naming_the_content_encoding(server, coding):
    import gzip

    ev = event()
    body = gzip.compress(json.dumps(ev).encode())
    data = (b"POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: " + coding
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with exchange(server, data) as conn:
        resp = conn.read_response()
        assert resp.status == 415, resp
        assert resp.json()["error"] == {"code": "unsupported_media_type",
                                        "message": "Content-Encoding is not supported: send the body uncompressed"}
    assert server.tube(ev["tube"])[0] == 404
    assert_serving(server)


def test_content_encoding_identity_is_a_plain_body(server, ledger):
    ev = event()
    status, _, body = server.request("POST", "/v1/bindings", ev, {"Content-Encoding": "Identity"})
    assert status == 201, body
    ledger["accepted"] += 1


@pytest.mark.parametrize("second", [b"application/json", b"application/msgpack"])
def test_two_content_types_are_400_and_nothing_is_bound(server, second):
    """Which one the body was decoded as would be a guess."""
    ev = event()
    body = json.dumps(ev).encode()
    data = (b"POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Type: " + second
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with exchange(server, data) as conn:
        resp = conn.read_response()
        assert resp.status == 400, resp
        assert resp.json()["error"] == {"code": "bad_request", "message": "more than one Content-Type header"}
        assert conn.at_eof()
    assert server.tube(ev["tube"])[0] == 404
    assert_serving(server)


@pytest.mark.parametrize(
    "data",
    [
        raw_request("GET", "/livez") + b"NOT HTTP AT ALL\r\n\r\n",
        raw_request("GET", "/livez", headers={"Connection": "close"}) + raw_request("GET", "/readyz"),
    ],
    ids=["garbage-after", "request-after-close"],
)
def test_good_request_before_a_bad_one_is_answered(server, data):
    with exchange(server, data) as conn:
        first = conn.read_response()
    assert first.status == 200, first


def test_nothing_after_connection_close_is_processed(server):
    ev = event()
    data = raw_request("GET", "/livez", headers={"Connection": "close"}) + post_request(json.dumps(ev).encode())
    with exchange(server, data) as conn:
        conn.read_response()
        assert conn.at_eof()
    assert server.tube(ev["tube"])[0] == 404


def test_slow_trickle_gets_408(server):
    """A client that keeps sending, one byte at a time, but never finishes
    its request: request_seconds_max counts from the request's start."""
    request = raw_request("GET", "/livez", headers={"X-Pad": "p" * 200})
    with RawConn(server.port, timeout=WAIT_S) as conn:
        answered = None
        for i in range(len(request) - 4):  # never the final CRLF CRLF
            try:
                conn.send(request[i:i + 1])
            except OSError:
                break
            conn.sock.settimeout(0.05)
            try:
                if conn._fill():
                    answered = True
                    break
                break  # closed without an answer
            except (socket.timeout, BlockingIOError):
                pass
            except ConnectionResetError:
                break
        conn.sock.settimeout(WAIT_S)
        assert answered, "the trickling client was not answered before it sent its whole request"
        resp = conn.read_response()
        assert resp.status == 408
        assert conn.at_eof()


def test_valid_chunked_body_is_accepted(server, ledger):
    ev = json.dumps(event()).encode()
    half = len(ev) // 2
    data = (
        b"POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{half:x}\r\n".encode() + ev[:half] + b"\r\n"
        + f"{len(ev) - half:x}\r\n".encode() + ev[half:] + b"\r\n0\r\n\r\n"
    )
    with exchange(server, data) as conn:
        resp = conn.read_response()
    assert resp.status == 201, resp
    ledger["accepted"] += 1


@pytest.mark.parametrize(
    "partial",
    [
        b"POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 300\r\n\r\n"
        b'{"event_id": "half',
        b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"GE",
    ],
    ids=["half-body", "half-headers", "half-request-line"],
)
def test_stalled_request_gets_408_while_others_are_served(server, ledger, partial):
    with exchange(server, partial) as stalled:
        # Meanwhile another client is served, reads and writes alike.
        with Client(server.port) as other:
            assert other.request("GET", "/livez")[0] == 200
            status, _, body = other.request("POST", "/v1/bindings", event())
            assert status == 201, body
            ledger["accepted"] += 1
        resp = stalled.read_response()  # bounded by the socket timeout (WAIT_S)
        assert resp.status == 408
        assert resp.json()["error"]["code"] == "request_timeout"
        assert resp.headers.get("connection") == "close"
        assert stalled.at_eof()


def test_idle_keepalive_connection_is_closed(server):
    with RawConn(server.port, timeout=WAIT_S) as conn:
        conn.send(raw_request("GET", "/livez"))
        assert conn.read_response().status == 200
        # Nothing more is sent: the server closes it after keepalive_seconds_max,
        # without an answer.
        assert conn.at_eof()


def test_connection_close_is_honoured(server):
    with exchange(server, raw_request("GET", "/livez", headers={"Connection": "close"})) as conn:
        resp = conn.read_response()
        assert resp.status == 200 and resp.headers.get("connection") == "close"
        assert conn.at_eof()
    with exchange(server, b"GET /livez HTTP/1.0\r\n\r\n") as conn:
        assert conn.read_response().status == 200
        assert conn.at_eof()


# -- many connections ---------------------------------------------------------------


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_300_idle_connections_do_not_block_others(server, ledger):
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S))
        with Client(server.port) as other:
            for _ in range(3):
                assert other.request("GET", "/livez")[0] == 200
            status, _, body = other.request("POST", "/v1/bindings", event())
            assert status == 201, body
            ledger["accepted"] += 1
            status, _, text = other.request("GET", "/metrics")
            assert status == 200
        # The idle ones were accepted before ours (listen queue order); those
        # the server did not close yet (keepalive_seconds_max) are counted.
        still_open = sum(1 for s in idle if not _closed_by_peer(s))
        assert metric(parse_metrics(text.decode()), "ingest_http_connections") >= still_open + 1
    finally:
        for s in idle:
            s.close()
    # Once closed, the server forgets them (bounded wait, no timing claim).
    deadline = time.monotonic() + WAIT_S
    while True:
        open_now = metric(server.metrics(), "ingest_http_connections")
        if open_now <= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert open_now <= 2


def test_many_clients_at_once_all_get_answers(server, ledger):
    results = []
    lock = threading.Lock()

    def client():
        with Client(server.port) as c:
            for _ in range(5):
                status, _, _ = c.request("GET", "/v1/status")
                with lock:
                    results.append(status)
            status, _, _ = c.request("POST", "/v1/bindings", event())
            with lock:
                results.append(status)

    threads = [threading.Thread(target=client) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert not any(t.is_alive() for t in threads)
    assert results.count(200) == 150 and results.count(201) == 30
    ledger["accepted"] += 30


# -- pipelining and Expect ------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(server, ledger):
    known = event()
    assert server.post(known)[0] == 201
    ledger["accepted"] += 1
    new = event()
    data = (
        raw_request("GET", "/livez")
        + post_request(json.dumps(new).encode())
        + raw_request("GET", f"/v1/tubes/{known['tube']}")
    )
    with exchange(server, data) as conn:
        first, second, third = conn.read_response(), conn.read_response(), conn.read_response()
    ledger["accepted"] += 1
    assert (first.status, first.json()) == (200, {"status": "live"})
    assert second.status == 201 and second.json()["event_id"] == new["event_id"]
    assert third.status == 200 and third.json()["tube"] == known["tube"]


def test_a_half_closed_client_gets_its_answers(server, ledger):
    # A one-shot client (nc -N, some scanner firmware) shuts its sending side
    # right after its requests: the bindings are committed all the same, so
    # their answers must reach it; asyncio's default closed the connection
    # on the EOF and dropped them.
    first, second = event(), event()
    data = post_request(json.dumps(first).encode()) + post_request(json.dumps(second).encode())
    with exchange(server, data) as conn:
        conn.sock.shutdown(socket.SHUT_WR)
        answers = [conn.read_response(), conn.read_response()]
        assert conn.at_eof()  # then the server closes
    ledger["accepted"] += 2
    assert [(a.status, a.json()["event_id"]) for a in answers] == [(201, first["event_id"]), (201, second["event_id"])]
    assert server.tube(first["tube"])[0] == 200


def test_half_close_in_the_middle_of_a_request_is_400_and_stores_nothing(server):
    ev = event()
    whole = post_request(json.dumps(ev).encode())
    with exchange(server, whole[:-5]) as conn:
        conn.sock.shutdown(socket.SHUT_WR)
        resp = conn.read_response()
        assert conn.at_eof()
    assert resp.status == 400 and resp.json()["error"]["code"] == "bad_request"
    assert "in the middle of a request" in resp.json()["error"]["message"]
    assert server.tube(ev["tube"])[0] == 404
    assert_serving(server)


def test_deep_pipeline_with_a_slow_reader_is_answered_in_order(server, ledger):
    """More pipelined requests than limits.pipeline_depth_max, sent while the
    client does not read: back-pressure, then every answer in order."""
    n_get, n_post = 1500, 150
    evs = [event() for _ in range(n_post)]
    data = b"".join(
        post_request(json.dumps(evs[i // 10]).encode()) if i % 10 == 0 and i // 10 < n_post
        else raw_request("GET", f"/v1/status?i={i}")
        for i in range(n_get)
    )
    with RawConn(server.port, timeout=WAIT_S) as conn:
        sender = threading.Thread(target=conn.send, args=(data,), daemon=True)
        sender.start()
        time.sleep(0.3)  # let the server fill its buffers and pause (no assertion on time)
        statuses = [conn.read_response().status for _ in range(n_get)]
        sender.join(WAIT_S)
        assert not sender.is_alive()
    ledger["accepted"] += n_post
    expected = [201 if i % 10 == 0 and i // 10 < n_post else 200 for i in range(n_get)]
    assert statuses == expected
    for ev in evs[:: 30]:
        assert server.tube(ev["tube"])[0] == 200


def test_pipelined_errors_keep_their_place(server):
    data = (
        post_request(b"{", path="/v1/bindings")
        + raw_request("GET", "/nowhere")
        + post_request(json.dumps(event("100000000017")).encode())
        + raw_request("GET", "/readyz")
    )
    with exchange(server, data) as conn:
        statuses = [conn.read_response().status for _ in range(4)]
    assert statuses == [400, 404, 422, 200]


def test_pipelined_get_sees_the_post_before_it(server, ledger):
    found = []
    for _ in range(5):
        ev = event()
        data = post_request(json.dumps(ev).encode()) + raw_request("GET", f"/v1/tubes/{ev['tube']}")
        with exchange(server, data) as conn:
            posted, got = conn.read_response(), conn.read_response()
        assert posted.status == 201
        ledger["accepted"] += 1
        found.append(got.status)
    assert found == [200] * 5


def test_expect_100_continue(server, ledger):
    ev = json.dumps(event()).encode()
    head = post_request(b"", extra={"Expect": "100-continue"}).replace(
        b"Content-Length: 0", f"Content-Length: {len(ev)}".encode()
    )
    with RawConn(server.port, timeout=WAIT_S) as conn:
        conn.send(head)
        interim = conn.read_response()
        assert interim.status == 100
        conn.send(ev)
        resp = conn.read_response()
        assert resp.status == 201, resp
        ledger["accepted"] += 1
        # The connection stays usable.
        conn.send(raw_request("GET", "/livez"))
        assert conn.read_response().status == 200


def test_expect_100_continue_with_oversize_length_is_413_without_100(server):
    head = post_request(b"", extra={"Expect": "100-continue"}).replace(
        b"Content-Length: 0", f"Content-Length: {BODY_MAX * 4}".encode()
    )
    with exchange(server, head) as conn:
        resp = conn.read_response()
        assert resp.status == 413
        assert conn.at_eof()


def test_100_continue_of_a_pipelined_request_comes_after_earlier_answers(server):
    head = post_request(b"", extra={"Expect": "100-continue"}).replace(b"Content-Length: 0", b"Content-Length: 2")
    with exchange(server, raw_request("GET", "/livez") + head) as conn:
        first = conn.read_response()
        assert first.status == 200, first
        assert conn.read_response().status == 100


def test_head_answer_carries_no_body(server):
    with exchange(server, raw_request("HEAD", "/livez") + raw_request("GET", "/livez")) as conn:
        conn.sock.settimeout(3)
        data = b""
        try:
            while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
                chunk = conn.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    head_answer, _, rest = data.partition(b"\r\n\r\n")
    assert head_answer.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: " in head_answer
    assert rest.startswith(b"HTTP/1.1 200"), rest[:120]


def test_absolute_form_request_target(server):
    with exchange(server, b"GET http://127.0.0.1/livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") as conn:
        assert conn.read_response().status == 200


def test_http11_request_without_host_is_400(server):
    with exchange(server, b"GET /livez HTTP/1.1\r\n\r\n") as conn:
        assert conn.read_response().status == 400


def test_unterminated_header_after_a_request_in_the_same_segment_is_431(server):
    """The head is counted from where it begins, wherever in a segment: not a
    408 after request_seconds_max."""
    data = (raw_request("GET", "/livez") + b"GET /livez HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * (HEADER_MAX * 8))
    with exchange(server, data) as conn:
        t0 = time.monotonic()
        assert conn.read_response().status == 200
        resp = conn.read_response()
        assert resp.status == 431, resp
        assert resp.json()["error"]["code"] == "headers_too_large"
        assert time.monotonic() - t0 < REQUEST_S
        assert conn.at_eof()
    assert_serving(server)


def test_two_host_headers_are_400(server):
    with exchange(server, b"GET /livez HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") as conn:
        resp = conn.read_response()
        assert resp.status == 400 and resp.json()["error"]["code"] == "bad_request", resp
        assert "more than one Host" in resp.json()["error"]["message"]
        assert conn.at_eof()


@pytest.mark.parametrize("host", [b"a/b@c d", b"u@h", b"h:8x", b"[::1", b"%zz"])
def test_invalid_host_value_is_400(server, host):
    with exchange(server, b"GET /livez HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") as conn:
        resp = conn.read_response()
        assert resp.status == 400 and resp.json()["error"]["code"] == "bad_request", resp
        assert "Host" in resp.json()["error"]["message"]
        assert conn.at_eof()


@pytest.mark.parametrize("host", [b"localhost:8080", b"127.0.0.1:8080", b"[::1]:8080", b"bench", b"example.com", b""])
def test_ordinary_host_values_are_served(server, host):
    with exchange(server, b"GET /livez HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") as conn:
        assert conn.read_response().status == 200


def test_no_100_continue_for_http10(server):
    head = (b"POST /v1/bindings HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n")
    with exchange(server, head) as conn:
        conn.sock.settimeout(REQUEST_S / 2)
        with pytest.raises(socket.timeout):
            conn.read_response()  # no interim answer: the client sends its body anyway
        assert conn.buf == b""
        conn.sock.settimeout(WAIT_S)
        conn.send(b"{}")
        resp = conn.read_response()
    assert_malformed(resp.status, resp.json())


@pytest.mark.parametrize("coding, status, code", [
    (b"gzip, chunked", 501, "not_implemented"),
    (b"identity", 501, "not_implemented"),
    (b"chunked, gzip", 400, "bad_request"),
])
def test_unknown_transfer_coding_is_refused(server, coding, status, code):
    body = VALID  # claimed to be gzip-coded, it is not: it must not be bound
    data = (b"POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: "
            + coding + b"\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    with exchange(server, data) as conn:
        resp = conn.read_response()
        assert (resp.status, resp.json()["error"]["code"]) == (status, code), resp
        assert conn.at_eof()
    assert_serving(server)


@pytest.mark.parametrize("request_line", [b"POST /v1/bindings HTTP/2.0", b"POST /v1/bindings HTTP/0.9"])
def test_http_versions_other_than_1_are_505_and_bind_nothing(server, request_line):
    ev = event()
    body = json.dumps(ev).encode()
    data = request_line + b"\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    with exchange(server, data) as conn:
        resp = conn.read_response()
        assert (resp.status, resp.json()["error"]["code"]) == (505, "http_version_not_supported"), resp
        assert conn.at_eof()
    assert server.tube(ev["tube"])[0] == 404
    assert_serving(server)


# -- odd but harmless ------------------------------------------------------------------


def test_non_ascii_header_value_and_path(server):
    data = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n"
    with exchange(server, data) as conn:
        assert conn.read_response().status == 200
    with exchange(server, b"GET /v1/tubes/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n") as conn:
        resp = conn.read_response()
        assert resp.status in (400, 404)
        assert resp.json()["error"]["code"] in ("bad_request", "not_found")


def test_long_tube_in_path_is_404(server):
    status, _, body = server.request("GET", "/v1/tubes/" + "A" * 2000)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _, body = server.request("GET", "/v1/persons/" + "%41" * 1000)
    assert status == 404


# -- nothing refused was stored ---------------------------------------------------------


def test_refused_input_changed_nothing(server, ledger):
    """Last in the module: last_seq moved only by the events meant to bind."""
    assert_serving(server)
    status = server.status()
    assert status["last_seq"] == ledger["seq0"] + ledger["accepted"]
    assert status["in_flight"] == 0


# -- a server that stops reading, a client that stops reading ---------------------------
# (own servers: nothing here touches the module's ledger)


def _post_binding(ev: dict) -> bytes:
    return post_request(json.dumps(ev).encode())


def _statuses(data: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1.1 (\d+) ", data)


def _rss_mib(srv) -> int:
    with open(f"/proc/{srv.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def test_no_408_for_a_request_the_server_stopped_reading(server_factory):
    # The whole pipeline sent at once: the server pauses reading at
    # pipeline_depth_max with a request half read; the rest waits in the
    # socket through no fault of the client, who reads all the while.
    n = 4000
    srv = server_factory(config=config_with(limits={"request_seconds_max": 0.5}))
    data = b"".join(_post_binding(event()) for _ in range(n))
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    sock.settimeout(0.2)
    out, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline and out.count(b"HTTP/1.1 ") < n:
            try:
                got = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not got:
                break
            out += got
    finally:
        sock.close()
        sender.join(10)
    statuses = _statuses(out)
    assert b"408" not in statuses, (len(statuses), statuses[-3:])
    assert statuses == [b"201"] * n, (len(statuses), statuses[-3:])


def test_client_that_never_reads_is_closed_and_bounded(server_factory):
    # A client that sends requests and reads none of the answers: answers
    # are not made beyond what the transport holds, and the connection is
    # aborted once it has taken nothing for keepalive_seconds_max.
    srv = server_factory(config=config_with(limits={"request_seconds_max": 1.0, "keepalive_seconds_max": 2.0}))
    for _ in range(3):
        srv.request("GET", "/metrics")
    before = _rss_mib(srv)
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    sock.setblocking(False)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2:
            try:
                sock.send(req * 2000)
            except BlockingIOError:
                time.sleep(0.05)
            except (ConnectionResetError, BrokenPipeError):
                break
        time.sleep(1)
        grown = _rss_mib(srv) - before
        deadline = time.monotonic() + 10  # > keepalive_seconds_max + ticks
        while True:
            open_conns = metric(srv.metrics(), "ingest_http_connections")  # counts the scrape's own connection
            if open_conns == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    finally:
        sock.close()
    assert open_conns == 1, f"{open_conns - 1} stalled connection(s) still open; RSS grew {grown} MiB"
    assert grown < 8, f"one non-reading connection made the server grow by {grown} MiB"
    assert_serving(srv)
