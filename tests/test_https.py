"""HTTPS on the API port, through real server processes."""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import pytest
import trustme

from helpers import LABS_TOML, event, stderr_lines
from ingest.access import new_token, token_sha256
from ingest.client import Client, NoPrimary


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def client_tls(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def https_config(directory, ca, extra: str = "") -> str:
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = directory / "api.pem", directory / "api.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return f'[http]\ntls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"\n\n{extra}\n{LABS_TOML}'


def test_bindings_and_reads_go_over_https(server_factory, tmp_path, ca, client_tls):
    srv = server_factory(config=https_config(tmp_path, ca), tls=client_tls)
    assert "serving on https://127.0.0.1:" in srv.stderr_text()
    ev = event()
    status, _, body = srv.post(ev)
    assert status == 201 and body["result"] == "bound"
    status, _, tube = srv.tube(ev["tube"])
    assert status == 200 and tube["persons"][0]["person"] == ev["person"]
    status, _, body = srv.batch([event(), event()])
    assert status == 200 and [r["result"] for r in body["results"]] == ["bound", "bound"]


def test_a_keep_alive_connection_carries_many_requests(server_factory, tmp_path, ca, client_tls):
    import http.client
    import json

    srv = server_factory(config=https_config(tmp_path, ca), tls=client_tls)
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=client_tls, timeout=30)
    try:
        for _ in range(5):
            conn.request("POST", "/v1/bindings", json.dumps(event()), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 201, resp.read()
            resp.read()
    finally:
        conn.close()


def test_tokens_travel_inside_tls(server_factory, tmp_path, ca, client_tls):
    token = new_token()
    extra = f'[[access.tokens]]\nname = "phones"\nroles = ["scan"]\nsha256 = "{token_sha256(token)}"\n'
    srv = server_factory(config=https_config(tmp_path, ca, extra), tls=client_tls)
    assert srv.post(event())[0] == 401
    assert srv.post(event(), headers={"Authorization": f"Bearer {token}"})[0] == 201


def read_to_close(sock: socket.socket) -> bytes:
    """Whatever comes until the server closes (or resets) the connection."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionError:
        pass
    return got


def test_plain_http_to_the_https_port_gets_no_http_answer(server_factory, tmp_path, ca, client_tls):
    srv = server_factory(config=https_config(tmp_path, ca), tls=client_tls)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_to_close(sock)
    assert not got.startswith(b"HTTP/")  # at most a TLS alert, then the connection closes
    assert srv.request("GET", "/livez")[0] == 200  # and the server serves the next client


def test_a_client_that_does_not_trust_the_certificate_stops(server_factory, tmp_path, ca, client_tls):
    srv = server_factory(config=https_config(tmp_path, ca), tls=client_tls)
    with pytest.raises(ssl.SSLCertVerificationError):
        import http.client

        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ssl.create_default_context(), timeout=15)
        try:
            conn.request("GET", "/livez")
        finally:
            conn.close()


@pytest.mark.parametrize(("http", "says"), [
    ('tls_cert_file = "a.pem"', "needs both http.tls_cert_file and http.tls_key_file"),
    ('tls_cert_file = "/nonexistent/a.pem"\ntls_key_file = "/nonexistent/a.key"', "http.tls_cert_file /nonexistent"),
])
def test_https_settings_that_cannot_work_stop_the_server_at_start(tmp_path, http, says):
    config = tmp_path / "config.toml"
    config.write_text(f"[http]\n{http}\n\n{LABS_TOML}")
    proc = subprocess.run([sys.executable, "-m", "ingest", "serve", "--port", "0", "--data", str(tmp_path / "data"),
                           "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    (line,) = stderr_lines(proc.stderr)
    assert says in line
    assert not (tmp_path / "data").exists()


def tls_request_then_close_notify(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    """Send `request` and the client's close_notify in one segment (so the
    server reads them together, the request still waiting for its commit),
    then read what comes back until the server closes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(request)
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the server's close_notify has not come yet
        sock.sendall(outgoing.read())
        return read_to_close(sock)


def test_a_client_that_closes_its_tls_side_leaves_no_warning(server_factory, tmp_path, ca, client_tls):
    # uvloop's TLS closes on the client's close_notify whatever eof_received
    # returns, and warned "has no effect" on every such client (a log line
    # per connection anyone can cause). The request itself is still handled.
    import json

    srv = server_factory(config=https_config(tmp_path, ca), tls=client_tls)
    events = [event() for _ in range(3)]
    for ev in events:
        body = json.dumps(ev).encode()
        tls_request_then_close_notify(srv.port, client_tls, b"POST /v1/bindings HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                      % (len(body), body))
    for ev in events:  # each was committed (or a retry would be a 201 now)
        status, _, body = srv.post(ev)
        assert status == 200 and body["result"] == "duplicate", body
    assert "eof_received" not in srv.stderr_text()


def test_the_failover_client_speaks_https_and_checks_the_certificate(server_factory, tmp_path, ca, client_tls):
    srv = server_factory(config=https_config(tmp_path, ca), tls=client_tls)
    address = f"https://127.0.0.1:{srv.port}"
    trusting = Client([address], timeout_s=5, deadline_s=10, tls=client_tls)
    try:
        ev = event()
        status, body = trusting.bind(ev)
        assert status == 201 and body["result"] == "bound"
        assert trusting.answered_by == address
    finally:
        trusting.close()
    # The default context (the system's CAs) does not know the test CA: the
    # event is never sent, and the client ends at its deadline, as for a
    # server it cannot reach.
    stranger = Client([address], timeout_s=5, deadline_s=0.5)
    unsent = event()
    try:
        with pytest.raises(NoPrimary):
            stranger.bind(unsent)
    finally:
        stranger.close()
    assert srv.tube(unsent["tube"])[0] == 404
    status, _, tube = srv.tube(ev["tube"])
    assert status == 200 and len(tube["persons"]) == 1


def test_the_failover_client_checks_the_host_name(server_factory, tmp_path, ca, client_tls):
    srv = server_factory(config=https_config(tmp_path, ca), tls=client_tls)  # a certificate for 127.0.0.1
    address = f"https://localhost:{srv.port}"
    client = Client([address], timeout_s=5, deadline_s=0.5, tls=client_tls)
    try:
        with pytest.raises(NoPrimary):
            client.bind(event())
    finally:
        client.close()
    # the same address and CA without the name check: reachable, so the
    # refusal above was the name
    lax = ssl.create_default_context()
    ca.configure_trust(lax)
    lax.check_hostname = False
    client = Client([address], timeout_s=5, deadline_s=10, tls=lax)
    try:
        assert client.bind(event())[0] == 201
    finally:
        client.close()
