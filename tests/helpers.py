"""Shared pieces of the behaviour tests: valid codes, events, a real server
process, raw-socket HTTP, and a Prometheus text parser.

Valid codes are made with the same textbook check-character formulas as
tests/test_codes.py (written from the standards, not from the kernels), so
"valid" here means valid by the standard.
"""
from __future__ import annotations

import datetime
import http.client
import itertools
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec

REPO = Path(__file__).resolve().parents[1]
DIGITS = "0123456789"
ALNUM = DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_CONFIG = (REPO / "ingest" / "default_config.toml").read_text()
# Every config file needs the [[labs]] tables: the shipped ones, verbatim.
LABS_TOML = DEFAULT_CONFIG[DEFAULT_CONFIG.index("[[labs]]"):]
SERVING = re.compile(r"serving on https?://127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def stderr_lines(text: str) -> list[str]:
    """A command's stderr lines, without the warning `ingest serve` logs
    first under INGEST_PURE_PYTHON=1 (the suite runs in both modes)."""
    return [line for line in text.splitlines() if "running the pure-Python kernels" not in line]


def config_with(limits: dict | None = None, rules: dict | None = None, store: dict | None = None,
                stats: dict | None = None) -> str:
    """A config file text: the given sections plus the shipped labs."""
    parts = []
    for name, values in (("rules", rules), ("limits", limits), ("store", store), ("stats", stats)):
        if values:
            parts.append(f"[{name}]")
            parts.extend(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in values.items())
            parts.append("")
    return "\n".join(parts) + "\n" + LABS_TOML


# Check characters by the textbook formulas, shared with the load test's
# code maker (written from the standards, not from the kernels).
from loadtest.codes import base36 as _base36  # noqa: E402
from loadtest.codes import gb11643_char, gs1_digit, luhn_digit, mod37_36_char  # noqa: E402,F401


# -- the n-th distinct valid code -------------------------------------------


def luhn_tube(n: int) -> str:
    """DEMO-LUHN: "10", 9 digits, Luhn check digit (12 in all)."""
    body = f"10{n:09d}"
    return body + luhn_digit(body)


def gs1_tube(n: int) -> str:
    """DEMO-GS1: "69", 10 digits, GS1 check digit (13 in all)."""
    body = f"69{n:010d}"
    return body + gs1_digit(body)


def m37_tube(n: int) -> str:
    """DEMO-M37: "L", 10 of 0-9A-Z, MOD 37,36 check character (12 in all)."""
    body = "L" + _base36(n, 10)
    return body + mod37_36_char(body)


def hc_person(n: int) -> str:
    """Registration token: "HC", 14 of 0-9A-Z, MOD 37,36 check character."""
    body = "HC" + _base36(n, 14)
    return body + mod37_36_char(body)


def id_person(n: int) -> str:
    """Resident id number (GB 11643): region 110105, a birth date, sequence, check."""
    born = datetime.date(1950, 1, 1) + datetime.timedelta(days=n // 1000)
    body = f"110105{born:%Y%m%d}{n % 1000:03d}"
    return body + gb11643_char(body)


TUBE_MAKERS = (luhn_tube, gs1_tube, m37_tube)
PERSON_MAKERS = (hc_person, id_person)

# One counter for the whole test process: every fresh code is distinct from
# every other one, whichever module asked for it.
_counter = itertools.count(1)
_counter_lock = threading.Lock()


def next_n() -> int:
    """A number never handed out before in this test process."""
    with _counter_lock:
        return next(_counter)


def fresh_tube() -> str:
    n = next_n()
    return TUBE_MAKERS[n % 3](n)


# Every person code handed out, for checks that no log line ever shows one.
PERSONS_USED: set[str] = set()


def fresh_person() -> str:
    n = next_n()
    code = PERSON_MAKERS[n % 2](n)
    PERSONS_USED.add(code)
    return code


_RUN = f"{os.getpid():x}"


def fresh_event_id(tag: str = "ev") -> str:
    return f"{tag}-{_RUN}-{next_n()}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(
    tube: str | None = None,
    person: str | None = None,
    *,
    event_id: str | None = None,
    site_id: str = "SITE-1",
    device_id: str = "DEV-1",
    pool_size: int = 5,
    scanned_at: int | None = None,
    **extra,
) -> dict:
    """A valid binding event (fresh codes and id unless given)."""
    ev = {
        "event_id": event_id or fresh_event_id(),
        "site_id": site_id,
        "device_id": device_id,
        "tube": fresh_tube() if tube is None else tube,
        "person": fresh_person() if person is None else person,
        "pool_size": pool_size,
        "scanned_at": now_ms() if scanned_at is None else scanned_at,
    }
    ev.update(extra)
    return ev


# -- HTTP ----------------------------------------------------------------------


def decode_body(content_type: str | None, raw: bytes):
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return json.loads(raw) if raw else None
    if ctype in ("application/msgpack", "application/x-msgpack"):
        return msgspec.msgpack.decode(raw)
    return raw


def free_port_base(offsets=(0, 1, 2, 3)) -> int:
    """A port P with every P + offset free on 127.0.0.1 now, for the tools
    that take one port and use the ones above it (the bench scripts, the
    drill): a fixed P collided with another test run on the same machine.
    Below the kernel's ephemeral range (32768-60999), so that no client
    connection takes one in between."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - max(offsets))
        held = []
        try:
            for offset in offsets:
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no free ports at offsets {offsets} in 20000-32000")


def http_request(port: int, method: str, path: str, body=None, headers=None, timeout: float = 30.0,
                 tls: ssl.SSLContext | None = None):
    """One request on a fresh connection: (status, headers, parsed body).

    A dict/list body is sent as JSON (Content-Type application/json unless a
    Content-Type header is given); bytes are sent as they are. With `tls`,
    over HTTPS.
    """
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout) if tls is None else \
        http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, resp.headers, decode_body(resp.headers.get("Content-Type"), raw)
    finally:
        conn.close()


class Client:
    """A keep-alive connection for many requests in a row (one thread)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body=None, headers=None):
        headers = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, resp.headers, decode_body(resp.headers.get("Content-Type"), raw)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def raw_request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request (Content-Length set when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawResponse:
    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {self.headers} {self.body[:200]!r}>"


class RawConn:
    """A socket with a response reader: for pipelining, stalls and garbage."""

    def __init__(self, port: int, timeout: float = 15.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_response(self) -> RawResponse:
        """Read one response (status line, headers, Content-Length body).
        Raises EOFError if the server closes before a whole response."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; got {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                raise EOFError(f"connection closed inside a body; got {self.buf[:200]!r}")
        body, self.buf = self.buf[:length], self.buf[length:]
        return RawResponse(int(status), reason, headers, body)

    def at_eof(self) -> bool:
        """True if the server closed the connection (after any buffered bytes);
        waits up to the socket timeout."""
        if self.buf:
            return False
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- Prometheus text -------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, frozenset(labels.items())): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        name, labels, value = m.groups()
        out[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return out


def metric(samples: dict, name: str, **labels) -> float:
    """One sample's value, 0 when absent (a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def events_total(samples: dict, outcome: str, code: str = "") -> float:
    return metric(samples, "ingest_events_total", outcome=outcome, code=code)


# -- a real server process ---------------------------------------------------------


class ServerProcess:
    """`python -m ingest serve` on 127.0.0.1, port 0, its own data dir.

    stderr goes to a file (`stderr_text()`); `port` is parsed from the
    "serving on" log line; `start()` returns once GET /livez answers.
    """

    def __init__(self, data: Path, workdir: Path, config: str | None = None, env: dict | None = None,
                 args: tuple[str, ...] = (), tls: ssl.SSLContext | None = None):
        self.tls = tls  # a client context, for a server whose config sets HTTPS
        self.data = Path(data)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = None
        if config is not None:
            self.config_path = self.workdir / f"config-{next_n()}.toml"
            self.config_path.write_text(config)
        self.env = dict(os.environ)
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = v
        self.args = args
        self.stderr_path = self.workdir / f"stderr-{next_n()}.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.killed = False
        self.stopped = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ingest", "serve", "--data", str(self.data), "--host", "127.0.0.1",
               "--port", "0"]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd + list(self.args)

    def start(self) -> "ServerProcess":
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.port is None:
            m = SERVING.search(self.stderr_text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.stderr_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not log its port within {START_TIMEOUT_S} s:\n{self.stderr_text()}")
            time.sleep(0.02)
        while True:
            try:
                status, _, _ = http_request(self.port, "GET", "/livez", timeout=5, tls=self.tls)
                if status == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"GET /livez never answered 200:\n{self.stderr_text()}")
            time.sleep(0.05)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 30.0):
        return http_request(self.port, method, path, body, headers, timeout, self.tls)

    def post(self, ev, headers=None):
        return self.request("POST", "/v1/bindings", ev, headers)

    def batch(self, events, headers=None):
        return self.request("POST", "/v1/bindings/batch", {"events": events}, headers)

    def tube(self, code: str):
        return self.request("GET", f"/v1/tubes/{code}")

    def person(self, code: str):
        return self.request("GET", f"/v1/persons/{code}")

    def status(self) -> dict:
        status, _, body = self.request("GET", "/v1/status")
        assert status == 200, body
        return body

    def last_seq(self) -> int:
        return self.status()["last_seq"]

    def metrics(self) -> dict:
        status, headers, body = self.request("GET", "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        return parse_metrics(body.decode())

    def kill(self) -> None:
        """SIGKILL: the point is a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)
        self.killed = True

    def terminate(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM) and wait for the exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit()

    def wait_exit(self) -> int:
        """Wait (bounded) for the process to exit after a signal already sent."""
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server did not exit within {STOP_TIMEOUT_S} s of SIGTERM:\n{self.stderr_text()}")
        self.stopped = True
        return self.proc.returncode

    def stop(self) -> None:
        """Teardown: SIGTERM, and it must exit 0 (unless a test killed it)."""
        if self.killed or self.proc is None:
            return
        if self.stopped:
            code = self.proc.returncode
        else:
            code = self.terminate()
        assert code == 0, f"server exited with {code}:\n{self.stderr_text()[-4000:]}"


class ServerFactory:
    def __init__(self, base: Path):
        self.base = Path(base)
        self.servers: list[ServerProcess] = []

    def __call__(self, config: str | None = None, env: dict | None = None, data: Path | None = None,
                 args: tuple[str, ...] = (), start: bool = True, tls: ssl.SSLContext | None = None) -> ServerProcess:
        n = next_n()
        workdir = self.base / f"srv-{n}"
        server = ServerProcess(data if data is not None else self.base / f"data-{n}", workdir, config, env, args,
                               tls)
        self.servers.append(server)
        return server.start() if start else server

    def stop_all(self) -> None:
        errors = []
        for server in self.servers:
            try:
                server.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, "\n\n".join(errors)


def run_python(code: str, pure: bool) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter on this checkout, with the compiled
    kernels (pure=False) or their twins (INGEST_PURE_PYTHON=1)."""
    env = {k: v for k, v in os.environ.items() if k != "INGEST_PURE_PYTHON"}
    if pure:
        env["INGEST_PURE_PYTHON"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def compiled_kernel(name: str):
    """The compiled kernel `ingest.<name>` for a test that compares it with
    its twin: skipped when it is not built and INGEST_PURE_PYTHON=1 says the
    twins alone are under test, a failure otherwise."""
    import importlib

    import pytest

    try:
        return importlib.import_module(f"ingest.{name}")
    except ImportError as exc:
        missing = f"ingest.{name} is not importable ({exc})"
        if os.environ.get("INGEST_PURE_PYTHON") == "1":
            pytest.skip(f"{missing}; INGEST_PURE_PYTHON=1 tests the Python twin only")
        pytest.fail(f"{missing}: build it with `pip install -e .`")
