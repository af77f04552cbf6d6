"""ingest.client: an answer that is not an ingest server's is a failure of
that address, tried elsewhere, never an exception out of the client."""
from __future__ import annotations

import http.server
import threading

import pytest

from ingest.client import Client, NoPrimary


class Canned:
    """A server on a loopback port that answers every POST with one status
    and body, and counts them."""

    def __init__(self, status: int, body: bytes):
        posts = self.posts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                posts.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned():
    made = []

    def make(status: int, body: bytes) -> Canned:
        made.append(Canned(status, body))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.mark.parametrize("status, body", [
    (502, b"<html>502 Bad Gateway</html> hello"),  # a proxy's page
    (502, b""),  # Caddy's and Go's ReverseProxy's default
    (502, b'{"message":"An invalid response was received from the upstream server"}'),  # a gateway's JSON
    (200, b"{}"),
    (503, b'{"error":"x"}'),  # an error that is not an object
    (201, b'{"result":"bound","se'),  # cut short
    (200, b"[1, 2]"),  # JSON, not an object
    (201, b"\xff\xfe"),  # not UTF-8
])
def test_an_answer_that_is_not_an_ingest_one_sends_the_event_to_the_next_address(canned, status, body):
    odd = canned(status, body)
    good = canned(201, b'{"result":"bound","seq":7}')
    client = Client([odd.address, good.address], timeout_s=2, deadline_s=5)
    try:
        assert client.bind({"event_id": "e-1"}) == (201, {"result": "bound", "seq": 7})
        assert client.answered_by == good.address
        # the same event, once at each: the server's dedup makes that safe
        assert len(odd.posts) == 1 and odd.posts == good.posts
    finally:
        client.close()


def test_only_odd_answers_end_in_no_primary_at_the_deadline(canned):
    odd = canned(502, b"hello")
    client = Client([odd.address], timeout_s=2, deadline_s=0.3, retry_pause_s=0.05)
    try:
        with pytest.raises(NoPrimary):
            client.bind({"event_id": "e-2"})
        assert len(odd.posts) > 1  # retried until the deadline
    finally:
        client.close()


def test_an_ingest_error_answer_is_returned_as_before(canned):
    full = canned(507, b'{"error":{"code":"insufficient_storage","message":"full"}}')
    client = Client([full.address], timeout_s=2, deadline_s=2)
    try:
        status, body = client.bind({"event_id": "e-3"})
        assert status == 507 and body["error"]["code"] == "insufficient_storage"
    finally:
        client.close()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "ftp://127.0.0.1:21",
    "https://127.0.0.1:8443/v1", "https://user@127.0.0.1:8443", ":8080",
    " localhost:8080", "localhost :8080", "local host:8080", "127.0.0.1:8080\n",
])
def test_a_malformed_address_is_refused_at_construction(address):
    with pytest.raises(ValueError, match="expected HOST:PORT or https://HOST:PORT"):
        Client([address])


def test_plain_addresses_with_or_without_scheme_reach_the_same_server(canned):
    good = canned(201, b'{"result":"bound","seq":1}')
    for address in (good.address, f"http://{good.address}"):
        client = Client([address], timeout_s=2, deadline_s=2)
        try:
            assert client.bind({"event_id": "e-4"})[0] == 201
            assert client.answered_by == address
        finally:
            client.close()
    assert len(good.posts) == 2


def test_a_batch_with_items_answered_not_primary_goes_whole_to_the_next_address(canned):
    """A primary fenced while a batch waited for its standby answers 200 with
    503 items; the batch goes again, whole, to the next address (what the
    first stored is answered there as duplicates)."""
    fenced = canned(200, b'{"results":[{"result":"bound","seq":1},'
                         b'{"error":{"code":"not_primary","message":"fenced"},"status":503}]}')
    good = canned(200, b'{"results":[{"result":"duplicate"},{"result":"bound","seq":9}]}')
    client = Client([fenced.address, good.address], timeout_s=2, deadline_s=5)
    try:
        status, body = client.post("/v1/bindings/batch", {"events": [{"event_id": "a"}, {"event_id": "b"}]})
        assert status == 200 and body["results"][1] == {"result": "bound", "seq": 9}
        assert client.answered_by == good.address
        assert fenced.posts == good.posts and len(good.posts) == 1
    finally:
        client.close()


def test_no_primary_says_what_each_address_answered(canned):
    odd = canned(502, b"")
    standby = canned(503, b'{"error":{"code":"not_primary","message":"standby"}}')
    client = Client([odd.address, standby.address], timeout_s=2, deadline_s=0.3, retry_pause_s=0.05)
    try:
        with pytest.raises(NoPrimary) as caught:
            client.bind({"event_id": "e-5"})
        message = str(caught.value)
        assert f"{odd.address}: ValueError: " in message and f"{standby.address}: 503 not_primary" in message
        assert isinstance(caught.value.__cause__, ValueError)
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/v1/boxes/BOX 17/handover", "/v1/tubes/\u00e4/seal", "v1/bindings", "/a\r\nb"])
def test_a_path_http_cannot_carry_is_refused_at_once(canned, path):
    good = canned(201, b'{"result":"bound","seq":1}')
    client = Client([good.address], timeout_s=2, deadline_s=30)
    try:
        with pytest.raises(ValueError, match="percent-encoded ASCII"):
            client.post(path, {"event_id": "e-6"})
        assert good.posts == []
    finally:
        client.close()


def test_the_deadline_bounds_an_attempt_on_a_server_that_never_answers():
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers
    client = Client([f"127.0.0.1:{silent.getsockname()[1]}"], timeout_s=30, deadline_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(NoPrimary, match="TimeoutError"):
            client.bind({"event_id": "e-7"})
        # Not a speed assertion: without the bound it waits timeout_s (30 s).
        assert time.monotonic() - started < 15
    finally:
        client.close()
        silent.close()
