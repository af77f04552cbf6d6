"""A small failover client for sampling endpoints, the load tests and the drill.

It knows several server addresses (a site's card lists them), sends each
event with its own event_id, and on a broken connection, a timeout, an
answer that is not a JSON object (a proxy's error page, a cut body), or
`503 not_primary` tries the next address with the same event_id: the server's
dedup makes a retry safe, so an event is either answered once or not at all.
The address that answered last is tried first.

An address is `HOST:PORT` (plain HTTP) or `https://HOST:PORT`: a server with
`[http] tls_cert_file` (docs/operations.md). Its certificate is checked, host
name included, against the system's CAs (or `SSL_CERT_FILE`), or against the
`tls` context given.
"""
from __future__ import annotations

import http.client
import json
import ssl
import time
from urllib.parse import urlsplit


class NoPrimary(Exception):
    """No address took the event before the deadline."""


class Client:
    def __init__(self, addresses: list[str], timeout_s: float = 5.0, deadline_s: float = 60.0,
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
        """POST until a primary answers; returns (status, body) of that answer."""
        data = json.dumps(body).encode()
        deadline = time.monotonic() + self.deadline_s
        while True:
            for i in range(len(self.addresses)):
                index = (self._current + i) % len(self.addresses)
                address = self.addresses[index]
                try:
                    status, answer = self._send(address, path, data)
                except (OSError, http.client.HTTPException, ValueError):
                    self._drop(address)
                    continue
                if status == 503 and answer.get("error", {}).get("code") in ("not_primary", "shutting_down"):
                    continue
                self._current = index
                self.answered_by = address
                return status, answer
            if time.monotonic() > deadline:
                raise NoPrimary(f"no primary among {self.addresses} within {self.deadline_s}s")
            time.sleep(self.retry_pause_s)

    def bind(self, event: dict) -> tuple[int, dict]:
        return self.post("/v1/bindings", event)

    def _send(self, address: str, path: str, data: bytes) -> tuple[int, dict]:
        conn = self._conns.get(address)
        if conn is None:
            secure, host, port = self._targets[address]
            if secure:
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout_s, context=self._tls)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout_s)
            self._conns[address] = conn
        conn.request("POST", path, data, self._headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, _answer(raw)

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
    parts = urlsplit(address if "://" in address else f"http://{address}")
    try:
        port = parts.port
    except ValueError:  # out of range, not a number
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None \
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"server address {address!r}: expected HOST:PORT or https://HOST:PORT")
    return parts.scheme == "https", parts.hostname, port


def _answer(raw: bytes) -> dict:
    """The body as a JSON object, its `error` (if any) an object too. Anything
    else (a gateway's "502 Bad Gateway" page, a body cut short) did not come
    from an ingest server: ValueError, and post() treats that address as it
    treats a broken connection."""
    answer = json.loads(raw) if raw else {}  # JSONDecodeError, UnicodeDecodeError: ValueErrors
    if not isinstance(answer, dict) or not isinstance(answer.get("error", {}), dict):
        raise ValueError(f"not an ingest answer: {raw[:80]!r}")  # noqa: TRY004 - as an undecodable body
    return answer
