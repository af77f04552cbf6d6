"""Stub for the compiled ``ingest._protocol`` (source ``ext/_protocol.pyx``).

``ingest._protocol_py`` is the plain-Python twin with the same names and
behaviour; import both through ``ingest.protocol``. The compiled
``HttpProtocol`` has asyncio.Protocol's methods but does not derive from it.
"""

import asyncio
from collections import deque
from typing import Any

from ingest.errors import ErrorCode
from ingest.http_types import Request

class Slot:
    """The place of one request's answer on its connection."""

    conn: HttpProtocol
    keep_alive: bool
    # the answer's bytes once respond() was called
    data: bytes | None
    # the latency histogram's label; the app sets it
    route: str
    # time.perf_counter() when the request was handed to the app
    started: float
    # a HEAD request: answered without the body
    head: bool
    def __init__(self, conn: HttpProtocol, keep_alive: bool, head: bool = False) -> None: ...
    def respond(
        self, status: int, body: bytes, content_type: bytes = b"application/json", extra: bytes = b""
    ) -> None: ...

class HttpProtocol:
    server: Any  # ingest.server.Server, or what has its attributes
    app: Any
    transport: asyncio.Transport | None
    parser: Any  # ingest.http.RequestParser
    # handed to the app, not yet written
    pending: deque[Slot]
    # parsed, not yet handed over
    waiting: deque[Request]
    last_active: float
    closing: bool
    def __init__(self, server: Any) -> None: ...
    def connection_made(self, transport: asyncio.Transport) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def eof_received(self) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def flush(self) -> None: ...
    def fail(self, error: ErrorCode, message: str) -> None:
        """Answer `error` after every request already received, then close."""
    def close(self) -> None: ...
    def idle_check(self, now: float, request_s: float, keepalive_s: float) -> None: ...

# for tests: latency[route].observe(seconds) as respond() does it, and
# whether that works on LatencyCounter's slots directly
def _observe_py(latency: dict[str, Any], route: str, seconds: float) -> None: ...
def _observe_is_direct() -> bool: ...
