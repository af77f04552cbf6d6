"""The `ingest` command: help, configuration errors, a busy port, which
kernels run, signals, and the checks on what `ingest token` and the admin
commands are given."""
from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from helpers import HOUR_MS, LABS_TOML, config_with, event, fresh_person, now_ms

from ingest import config as ingest_config
from ingest import server as ingest_server

RUN_TIMEOUT_S = 60


def ingest(*args, cwd, env=None, timeout=RUN_TIMEOUT_S):
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_serve_help(tmp_path):
    result = ingest("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--data", "--host", "--port", "--config", "--log-level"):
        assert option in result.stdout
    assert not (tmp_path / "data").exists()


def test_top_level_help_and_missing_command(tmp_path):
    result = ingest("--help", cwd=tmp_path)
    assert result.returncode == 0 and "serve" in result.stdout
    result = ingest(cwd=tmp_path)
    assert result.returncode == 2
    assert "serve" in result.stderr or "command" in result.stderr


@pytest.mark.parametrize(
    "text, named",
    [
        (config_with(limits={"body_bytes_maxx": 1}), "body_bytes_maxx"),
        (config_with(limits={"body_bytes_max": "big"}), "body_bytes_max"),
        (config_with(limits={"request_seconds_max": -1.0}), "request_seconds_max"),
        (config_with(limits={"connections_max": 0}), "connections_max"),
        (config_with(rules={"person_other_tube_window_hours": "12h"}), "person_other_tube_window_hours"),
        ("[limitz]\nbody_bytes_max = 1\n" + LABS_TOML, "limitz"),
        (LABS_TOML.replace('charset = "digits"', 'charset = "hex"', 1), "charset"),
        (LABS_TOML + '\n[[labs]]\nid = "X"\nprefix = "10"\nlength = 12\ncharset = "digits"\ncheck = "luhn"\nextra = 1\n',
         "extra"),
        ("[limits]\nbody_bytes_max = 1\n", "labs"),
        (config_with(store={"map_bytes_initial": 2 << 30, "map_bytes_max": 1 << 30}), "map_bytes_initial"),
        ("[limits\nbody_bytes_max = 1\n", "config"),
    ],
    ids=["unknown-key", "wrong-type", "negative", "zero", "rules-type", "unknown-section", "bad-charset",
         "unknown-lab-key", "no-labs", "map-sizes", "toml-syntax"],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, text, named):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = ingest("serve", "--data", str(tmp_path / "data"), "--port", "0", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr, result.stderr
    assert result.stderr.startswith("ingest: config")
    assert "Traceback" not in result.stderr
    # Refused before anything was opened.
    assert not (tmp_path / "data").exists()


def test_missing_config_file_exits_2(tmp_path):
    missing = tmp_path / "nope.toml"
    result = ingest("serve", "--data", str(tmp_path / "data"), "--port", "0", "--config", str(missing), cwd=tmp_path)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_config_not_utf8_exits_2_naming_the_file(tmp_path):
    config = tmp_path / "utf16.toml"
    config.write_bytes(LABS_TOML.encode("utf-16"))  # b"\xff\xfe..." as Windows editors save it
    result = ingest("serve", "--data", str(tmp_path / "data"), "--port", "0", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"ingest: config: {config} is not UTF-8"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("option, value, named", [
    ("--follow", "primaryhost", "HOST:PORT"),
    ("--follow", "primaryhost:abc", "1 to 65535"),
    ("--follow", "primaryhost:0", "1 to 65535"),
    ("--follow", "primaryhost:65536", "1 to 65535"),
    ("--follow", ":9000", "HOST:PORT"),
    ("--port", "70000", "0-65535"),
    ("--port", "-1", "0-65535"),
    ("--replication-port", "70001", "0-65535"),
], ids=["follow-no-port", "follow-port-not-a-number", "follow-port-0", "follow-port-too-big", "follow-no-host",
        "port-too-big", "port-negative", "replication-port-too-big"])
def test_bad_address_option_is_a_usage_error(tmp_path, option, value, named):
    """Refused by the argument parser, before the store is opened: the OS
    would take a port modulo 65536 (70000 listened on 4464)."""
    result = ingest("serve", "--data", str(tmp_path / "data"), "--port", "0", option, value, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"argument {option}" in result.stderr and named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_data_that_is_a_file_is_a_store_error(tmp_path):
    data = tmp_path / "afile"
    data.write_text("x")
    result = ingest("serve", "--data", str(data), "--port", "0", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == f"ingest: cannot open the store in {data}: not a directory", result.stderr
    assert "cannot serve" not in result.stderr
    assert "Traceback" not in result.stderr


def test_read_only_store_is_a_start_error(tmp_path, monkeypatch):
    """What a data directory the server may not write gives (lmdb.ReadonlyError,
    seen running as another user); faked, because root may write anywhere."""
    import lmdb

    def read_only(path, **kwargs):
        raise lmdb.ReadonlyError(f"{path}: Permission denied")

    monkeypatch.setattr(lmdb, "open", read_only)
    server = ingest_server.Server(ingest_config.load(), str(tmp_path / "data"), "127.0.0.1", 0)
    with pytest.raises(ingest_server.StartError) as exc:
        asyncio.run(server.serve())
    assert str(exc.value) == f"cannot open the store in {tmp_path / 'data'}: Permission denied"


@contextlib.contextmanager
def busy_port():
    """A loopback port something already listens on, for as long as the block runs."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_replication_port_in_use_names_the_replication_listen(tmp_path):
    with busy_port() as port:
        result = ingest("serve", "--data", str(tmp_path / "data"), "--port", "0", "--replication-port", str(port),
                        cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"ingest: cannot listen for replication on 127.0.0.1:{port}:" in result.stderr, result.stderr
    assert "in use" in result.stderr.lower()
    assert "cannot serve" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["promote", "status"])
@pytest.mark.parametrize("url", ["notaurl", "ftp://host/", "http://host:abc", "http://"])
def test_admin_bad_url_is_a_usage_error(tmp_path, command, url):
    result = ingest(command, "--url", url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "argument --url" in result.stderr and repr(url) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 with `body`, or a 302 to `redirect_to` when it is set;
    keeps what each request carried in `seen`."""
    seen: list = []
    redirect_to = None
    body, content_type = b'{"result":"promoted","epoch":9}', "application/json"

    def _answer(self):
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def recorder(redirect_to=None, **answer):
    handler = type("Handler", (_Recorder,), {"seen": [], "redirect_to": redirect_to, **answer})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def not_json_url():
    with recorder(body=b"<html>a proxy's login page</html>", content_type="text/html") as (url, _):
        yield url


@pytest.fixture
def not_http_url():
    """A listener that answers a line that is not HTTP, then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=answer, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize("command", ["promote", "status"])
def test_admin_answer_not_json_is_a_clear_error(tmp_path, not_json_url, command):
    result = ingest(command, "--url", not_json_url, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"ingest: {not_json_url}/v1/" in result.stderr, result.stderr
    assert "answered 200 with a body that is not JSON" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_admin_answer_not_http_is_a_clear_error(tmp_path, not_http_url):
    result = ingest("promote", "--url", not_http_url, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"ingest: {not_http_url}/v1/admin/promote did not answer HTTP" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    with busy_port() as port:
        result = ingest("serve", "--data", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port),
                        cwd=tmp_path)
    assert result.returncode not in (0, None)
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_bad_port_argument(tmp_path):
    result = ingest("serve", "--port", "eighty", cwd=tmp_path)
    assert result.returncode == 2
    assert "--port" in result.stderr


@pytest.mark.parametrize("pure, implementation", [(None, "cython"), ("1", "python")])
def test_status_and_log_say_which_kernels_run(server_factory, pure, implementation):
    server = server_factory(env={"INGEST_PURE_PYTHON": pure})
    assert server.status()["implementation"] == implementation
    log = server.stderr_text()
    serving = [line for line in log.splitlines() if "serving on" in line]
    assert len(serving) == 1
    assert f"kernels={implementation}" in serving[0]
    assert f"127.0.0.1:{server.port}" in serving[0]
    assert ("pure-Python kernels" in log) == (implementation == "python")
    samples = server.metrics()
    assert samples[("ingest_build_info", frozenset({("implementation", implementation)}))] == 1


def test_sigint_drains_and_exits_0(server_factory):
    server = server_factory()
    assert server.post(event())[0] == 201
    assert server.terminate(signal.SIGINT) == 0
    log = server.stderr_text()
    assert "SIGINT: draining" in log
    assert "stopped; last_seq=1" in log


def test_config_limits_are_applied(server_factory):
    server = server_factory(config=config_with(limits={"body_bytes_max": 1000}))
    status, _, body = server.request("POST", "/v1/bindings", b" " * 1001, {"Content-Type": "application/json"})
    assert status == 413 and body["error"]["code"] == "body_too_large"
    status, _, body = server.request("POST", "/v1/bindings", b" " * 998 + b"{}", {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "malformed"


def test_config_rules_are_applied(server_factory):
    """A 1-hour person window (instead of 12 h): a scan 2 h after the first
    one is outside it."""
    server = server_factory(config=config_with(rules={"person_other_tube_window_hours": 1}))
    person = fresh_person()
    assert server.post(event(person=person, scanned_at=now_ms() - 2 * HOUR_MS))[0] == 201
    assert server.post(event(person=person))[0] == 201
    status, _, body = server.post(event(person=person, scanned_at=now_ms() - 30 * 60_000))
    assert status == 409 and body["error"]["code"] == "person_in_other_tube"


def token_entry(stdout: str) -> str:
    """The [[access.tokens]] lines `ingest token` printed."""
    lines = stdout.splitlines()
    return "\n".join(lines[lines.index("[[access.tokens]]"):])


@pytest.mark.parametrize("name", ["", "x" * 201, "a\udcffb"], ids=["empty", "too-long", "not-utf8"])
def test_a_token_name_the_config_refuses_is_a_usage_error(tmp_path, name):
    """Refused before a token is made: the operator is shown none."""
    result = ingest("token", "--name", name, "--role", "scan", cwd=tmp_path)  # "a\udcffb": the bytes a, 0xFF, b
    assert (result.returncode, result.stdout) == (2, ""), result.stdout
    assert "argument --name" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["x", "\U0001f600" * 200, "é\x7f\x85\u2028\n\"\\"],
                         ids=["one", "200-astral", "controls-and-quotes"])
def test_a_token_name_the_config_takes_comes_back_from_the_config(tmp_path, name):
    result = ingest("token", "--name", name, "--role", "scan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    loaded = ingest_config.loads(token_entry(result.stdout) + "\n\n" + LABS_TOML)
    assert loaded.access.tokens[0].name == name


@pytest.mark.parametrize("command", ["promote", "status"])
@pytest.mark.parametrize("token", ["abc\ndef", "tökén€", "abc def", " abc"])
def test_a_bad_ingest_token_is_refused_before_a_request_and_not_shown(tmp_path, command, token):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = ingest(command, "--url", url, cwd=tmp_path, env={**os.environ, "INGEST_TOKEN": token})
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "ingest: INGEST_TOKEN is not a valid bearer token\n", result.stderr


def test_admin_commands_follow_no_redirect_and_send_the_token_only_to_promote(tmp_path):
    # urllib followed a 3xx with the Authorization header: the admin token
    # went to whatever host the answer named, and the POST became a GET
    # whose 200 passed for a promotion.
    token = "t0ken-" + "x" * 40
    env = {**os.environ, "INGEST_TOKEN": token}
    with recorder() as (elsewhere, stolen), recorder(redirect_to=elsewhere) as (url, seen):
        result = subprocess.run([sys.executable, "-m", "ingest", "promote", "--url", url], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result.stdout
        assert "answered 302, a redirect to" in result.stderr and "not followed" in result.stderr, result.stderr
        assert token not in result.stderr and result.stdout == ""
        assert seen == [("POST", "/v1/admin/promote", f"Bearer {token}")] and stolen == []
    with recorder() as (url, seen):
        result = subprocess.run([sys.executable, "-m", "ingest", "status", "--url", url], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert seen == [("GET", "/v1/status", None)]  # an open route: no token travels


def serve_with_open_files(tmp_path, soft: int, hard: int) -> tuple[str, str]:
    """Start `ingest serve` under that limit on open files; its log to the
    end of its warnings at start and its "Max open files" line of
    /proc/PID/limits."""
    import resource
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "serve", "--data", str(tmp_path / "data"), "--port", "0"], cwd=tmp_path,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    try:
        log = ""
        deadline = time.monotonic() + 30
        # the warnings at start follow "serving on"; the last is the one of no tokens
        while "no [[access.tokens]]" not in log and time.monotonic() < deadline:
            log += proc.stderr.readline()
        limits = next(line for line in open(f"/proc/{proc.pid}/limits") if line.startswith("Max open files"))
        return log, limits
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_serve_lifts_the_open_files_limit_and_warns_when_it_cannot_hold_the_connections(tmp_path):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # what this machine lets a process have
    if hard == resource.RLIM_INFINITY or hard < 1024:
        pytest.skip(f"a hard limit of {hard} open files")
    log, limits = serve_with_open_files(tmp_path, 256, hard)
    assert limits.split()[3:5] == [str(hard)] * 2, limits  # the soft limit raised to the hard one
    assert ("open files limit" in log) == (hard < 20_000), log
    log, limits = serve_with_open_files(tmp_path, 256, 256)
    assert "open files limit 256 is below limits.connections_max (20000): connections beyond about 156" in log, log


def test_a_closed_pipe_ends_ingest_status_quietly(server_factory):
    # `ingest status | head -3`: the reader's doing, not an error to trace back
    srv = server_factory()
    r, w = os.pipe()
    os.close(r)
    try:
        out = subprocess.run([sys.executable, "-m", "ingest", "status", "--url", srv.url], stdout=w,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert (out.returncode, out.stderr) == (1, "")
