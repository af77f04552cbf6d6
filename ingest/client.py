"""A small failover client for sampling endpoints, the load tests and the drill.

It knows several server addresses (a site's card lists them), sends each
event with its own event_id, and on a broken connection, a timeout, an
answer that is not an ingest server's (a proxy's error page or empty 502, a
cut body), or `503 not_primary` (for a batch: any item's) tries the next
address with the same event_id: the server's dedup makes a retry safe, so an
event is either answered once or not at all. The address that answered last
is tried first.

A retry of an event the server stored from an attempt whose answer was lost
(a timeout) is answered `200 duplicate` with `original.event_id` its own: the
event is stored. `timeout_s` must exceed the server's `sync_timeout_s` in
sync mode (10 s shipped), or a write waiting for a standby is cut and
retried.

An address is `HOST:PORT` (plain HTTP) or `https://HOST:PORT`: a server with
`[http] tls_cert_file` (docs/operations.md). Its certificate is checked, host
name included, against the system's CAs (or `SSL_CERT_FILE`), or against the
`tls` context given.
"""
from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from urllib.parse import urlsplit


class NoPrimary(Exception):
    """No address took the event before the deadline."""


class Client:
    def __init__(self, addresses: list[str], timeout_s: float = 15.0, deadline_s: float = 60.0,
                 retry_pause_s: float = 0.05, token: str | None = None, tls: ssl.SSLContext | None = None):
        """`token`: a bearer token with the `scan` role, for servers with
        access control (docs/operations.md). `tls`: the context for the
        `https://` addresses (a private CA's, say); by default the system's."""
        if not addresses:
            raise ValueError("at least one server address")
        self.addresses = list(addresses)
        # Checked here, not at the first post: a typo would otherwise read as
        # an unreachable server and be retried until the deadline.
        self._targets = {address: _target(address) for address in self.addresses}
        if tls is None and any(secure for secure, _, _ in self._targets.values()):
            tls = ssl.create_default_context()
        self._tls = tls
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.retry_pause_s = retry_pause_s
        self._current = 0
        self.answered_by: str | None = None  # the address of the last answer post() returned
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        """POST until a primary answers; returns (status, body) of that answer.

        NoPrimary once `deadline_s` has passed (no attempt waits past it),
        saying what each address last answered."""
        if not path.startswith("/") or _NOT_PRINTABLE_ASCII.search(path):
            raise ValueError(f"path {path!r}: expected /..., percent-encoded ASCII")
        data = json.dumps(body).encode()
        deadline = time.monotonic() + self.deadline_s
        last: dict[str, str] = {}
        cause: BaseException | None = None
        while True:
            for i in range(len(self.addresses)):
                left = deadline - time.monotonic()
                if left <= 0:
                    why = "; ".join(f"{a}: {w}" for a, w in last.items())
                    raise NoPrimary(f"no primary among {self.addresses} within {self.deadline_s}s ({why})") from cause
                index = (self._current + i) % len(self.addresses)
                address = self.addresses[index]
                try:
                    status, answer = self._send(address, path, data, min(self.timeout_s, left))
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    # A certificate the context does not trust is an OSError
                    # too: another address may be right, so it is tried, and
                    # the NoPrimary names it.
                    self._drop(address)
                    last[address], cause = f"{type(exc).__name__}: {exc}", exc
                    continue
                if _not_primary(status, answer):
                    last[address] = f"{status} {_code(answer) or 'not_primary'}"
                    continue
                self._current = index
                self.answered_by = address
                return status, answer
            time.sleep(max(0.0, min(self.retry_pause_s, deadline - time.monotonic())))

    def bind(self, event: dict) -> tuple[int, dict]:
        return self.post("/v1/bindings", event)

    def _send(self, address: str, path: str, data: bytes, timeout_s: float) -> tuple[int, dict]:
        conn = self._conns.get(address)
        if conn is None:
            secure, host, port = self._targets[address]
            if secure:
                conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=self._tls)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
            self._conns[address] = conn
        conn.timeout = timeout_s  # for a connect to come
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        conn.request("POST", path, data, self._headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, _answer(resp.status, raw)

    def _drop(self, address: str) -> None:
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for address in list(self._conns):
            self._drop(address)


def _target(address: str) -> tuple[bool, str, int]:
    """(https?, host, port) of `HOST:PORT`, `http://HOST:PORT` or
    `https://HOST:PORT`; ValueError for anything else."""
    if _NOT_PRINTABLE_ASCII.search(address):
        raise ValueError(f"server address {address!r}: expected HOST:PORT or https://HOST:PORT")
    parts = urlsplit(address if "://" in address else f"http://{address}")
    try:
        port = parts.port
    except ValueError:  # out of range, not a number
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None \
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"server address {address!r}: expected HOST:PORT or https://HOST:PORT")
    return parts.scheme == "https", parts.hostname, port


# A space, a control character, non-ASCII: in a path http.client refuses
# them at every attempt, and no host name has one.
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x21-\x7e]")
_MOVED_ON = ("not_primary", "shutting_down")  # this node takes no writes now; another may


def _answer(status: int, raw: bytes) -> dict:
    """The body of an ingest server's answer to a write: a JSON object with
    `result`, `results` or an `error` object with its `code`. Anything else (a
    gateway's "502 Bad Gateway" page, its empty or JSON 502, a body cut
    short) did not come from an ingest server: ValueError, and post() treats
    that address as it treats a broken connection."""
    try:
        answer = json.loads(raw)
    except ValueError:  # JSONDecodeError (an empty body too), UnicodeDecodeError
        answer = None
    if not isinstance(answer, dict) or not ("result" in answer or "results" in answer or _code(answer)):
        raise ValueError(f"{status}, not an ingest answer: {raw[:80]!r}")
    return answer


def _code(answer: dict) -> str | None:
    error = answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _not_primary(status: int, answer: dict) -> bool:
    """The node takes no writes now: a 503 not_primary, or a batch answered
    200 with such items (fenced while its items waited for a standby). The
    whole request goes to the next address; what this node stored is
    answered there as duplicates."""
    if status == 503:
        return _code(answer) in _MOVED_ON
    items = answer.get("results")
    return status == 200 and isinstance(items, list) and any(
        isinstance(item, dict) and _code(item) in _MOVED_ON for item in items)
