"""Mutual TLS on the replication port, between real server processes."""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from helpers import LABS_TOML, event, stderr_lines
from test_replication_http import replication_port, wait_caught_up
from test_replication_snapshot import wait_for


def pem_files(directory: Path, ca: trustme.CA, name: str) -> dict[str, str]:
    """A node's certificate, key and the CA's certificate, as files."""
    cert = ca.issue_cert(name)
    files = {"tls_cert_file": directory / f"{name}.pem", "tls_key_file": directory / f"{name}.key",
             "tls_ca_file": directory / f"{name}-ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(files["tls_cert_file"]))
    cert.private_key_pem.write_to_path(str(files["tls_key_file"]))
    ca.cert_pem.write_to_path(str(files["tls_ca_file"]))
    return {k: str(v) for k, v in files.items()}


def tls_config(files: dict[str, str] | None, mode: str = "async") -> str:
    lines = ["[replication]", f'mode = "{mode}"', "sync_timeout_s = 2.0"]
    lines += [f'{k} = "{v}"' for k, v in (files or {}).items()]
    return "\n".join(lines) + "\n\n" + LABS_TOML


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_a_standby_with_the_pairs_certificate_follows_over_tls(server_factory, tmp_path, ca):
    primary = server_factory(config=tls_config(pem_files(tmp_path, ca, "node-a"), mode="sync"),
                             args=("--replication-port", "0"))
    assert "mutual TLS" in primary.stderr_text()
    standby = server_factory(config=tls_config(pem_files(tmp_path, ca, "node-b")),
                             args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    ev = event()
    status, _, body = primary.post(ev)  # sync mode: answered once the standby has it
    assert status == 201, body
    wait_caught_up(primary, standby)
    status, _, tube = standby.tube(ev["tube"])
    assert status == 200 and tube["persons"][0]["person"] == ev["person"]


@pytest.mark.parametrize("standby_tls", ["none", "other CA"])
def test_a_peer_without_the_pairs_certificate_gets_nothing(server_factory, tmp_path, ca, standby_tls):
    primary = server_factory(config=tls_config(pem_files(tmp_path, ca, "node-a")), args=("--replication-port", "0"))
    port = replication_port(primary)
    files = None if standby_tls == "none" else pem_files(tmp_path, trustme.CA(), "intruder")
    standby = server_factory(config=tls_config(files), args=("--follow", f"127.0.0.1:{port}"))
    ev = event()
    assert primary.post(ev)[0] == 201
    # It keeps trying (and logging why), and never gets an entry.
    wait_for(lambda: standby.stderr_text().count("reconnecting") >= 2, "the standby's retries")
    assert standby.status()["last_seq"] == 0 and not standby.status()["replication"]["connected"]
    assert primary.status()["replication"]["standbys"] == []
    assert standby.tube(ev["tube"])[0] == 404


def test_a_plain_connection_to_a_tls_port_says_nothing_and_is_closed(server_factory, tmp_path, ca):
    """A hello sent in the clear (a peer of no TLS, or a scanner) is not read as
    a hello: the handshake fails and the primary carries on."""
    primary = server_factory(config=tls_config(pem_files(tmp_path, ca, "node-a")), args=("--replication-port", "0"))
    with socket.create_connection(("127.0.0.1", replication_port(primary)), timeout=10) as sock:
        sock.sendall(b"INGR" + bytes(28))
        sock.settimeout(10)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
    assert b"INGR" not in got  # no frame came back: at most a TLS alert
    assert primary.post(event())[0] == 201


def test_a_tls_client_without_a_certificate_gets_no_frame(server_factory, tmp_path, ca):
    """It trusts the primary (the CA is public knowledge) but has no
    certificate of its own: the primary ends the connection in or right
    after the handshake (TLS 1.3 checks the client's certificate after the
    client thinks it is done), and sends nothing."""
    primary = server_factory(config=tls_config(pem_files(tmp_path, ca, "node-a")), args=("--replication-port", "0"))
    context = ssl.create_default_context(cafile=str(tmp_path / "node-a-ca.pem"))
    context.check_hostname = False
    got = b""
    with socket.create_connection(("127.0.0.1", replication_port(primary)), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as sock:
                sock.sendall(b"INGR" + bytes(28))
                while chunk := sock.recv(4096):
                    got += chunk
        except (ssl.SSLError, ConnectionError):
            pass  # the refusal as an alert, or a reset
    assert got == b""
    assert primary.status()["replication"]["standbys"] == []


def test_promotion_over_tls_fences_the_former_primary(server_factory, tmp_path, ca):
    primary = server_factory(config=tls_config(pem_files(tmp_path, ca, "node-a")), args=("--replication-port", "0"))
    standby = server_factory(config=tls_config(pem_files(tmp_path, ca, "node-b")),
                             args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    assert primary.post(event())[0] == 201
    wait_caught_up(primary, standby)
    status, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert status == 200 and body["result"] == "promoted"
    # The promoted node tells its former primary of the epoch, over the same TLS.
    wait_for(lambda: primary.status()["role"] == "fenced", "the former primary to be fenced")
    assert primary.post(event())[0] == 503


@pytest.mark.parametrize(("which", "says"), [
    ({"tls_cert_file": "x.pem"}, "needs all of tls_cert_file, tls_key_file and tls_ca_file"),
    ({"tls_cert_file": "/nonexistent/a.pem", "tls_key_file": "/nonexistent/a.key", "tls_ca_file": "CA"},
     "replication.tls_ca_file"),
    ({"tls_cert_file": "/nonexistent/a.pem", "tls_key_file": "/nonexistent/a.key", "tls_ca_file": "CA_OK"},
     "replication.tls_cert_file /nonexistent/a.pem"),
])
def test_tls_settings_that_cannot_work_stop_the_server_at_start(tmp_path, ca, which, says):
    if which.get("tls_ca_file") == "CA_OK":
        which = {**which, "tls_ca_file": pem_files(tmp_path, ca, "n")["tls_ca_file"]}
    config = tmp_path / "config.toml"
    config.write_text(tls_config(which))
    proc = subprocess.run([sys.executable, "-m", "ingest", "serve", "--port", "0", "--replication-port", "0",
                           "--data", str(tmp_path / "data"), "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    (line,) = stderr_lines(proc.stderr)
    assert says in line
    assert not (tmp_path / "data").exists()
