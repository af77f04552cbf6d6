"""The asyncio side of HTTP: moves bytes between a socket and
ingest.http.RequestParser, and keeps answers in request order.

Answers may complete out of order (a GET is answered at once, a POST after
its group commit), but HTTP/1.1 pipelining needs them in order, so each
request gets a `Slot` in a queue and only the head of the queue is written.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from ingest import errors, http
from ingest.errors import error_json
from ingest.http import HttpError

if TYPE_CHECKING:
    from ingest.server import Server

_perf = time.perf_counter


class Slot:
    """The place of one request's answer on its connection."""

    __slots__ = ("conn", "keep_alive", "data", "route", "started")

    def __init__(self, conn: "HttpProtocol", keep_alive: bool):
        self.conn = conn
        self.keep_alive = keep_alive
        self.data: bytes | None = None
        self.route = ""
        self.started = _perf()

    def respond(self, status: int, body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> None:
        conn = self.conn
        server = conn.server
        server.metrics.latency[self.route].observe(_perf() - self.started)
        if conn.transport is None:
            return  # the client left; a committed event stays committed
        keep = self.keep_alive and not server.draining
        self.keep_alive = keep
        self.data = http.response(status, body, server.date, content_type, keep, extra)
        conn.flush()


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("server", "app", "transport", "parser", "pending", "last_active", "closing", "_reading_paused",
                 "_writing_paused", "_depth_max")

    def __init__(self, server: "Server"):
        self.server = server
        self.app = server.app
        limits = server.config.limits
        self.parser = http.RequestParser(limits.header_bytes_max, limits.body_bytes_max)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Slot] = deque()
        self.last_active = server.now
        self.closing = False
        self._reading_paused = False
        self._writing_paused = False
        self._depth_max = limits.pipeline_depth_max

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        server = self.server
        if len(server.connections) >= server.config.limits.connections_max or server.draining:
            transport.abort()
            return
        self.transport = transport
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.server.now
        try:
            requests = self.parser.feed(data, self.server.now)
        except HttpError as exc:
            self.fail(exc.error, exc.message)
            return
        if self.parser.interim:
            self.transport.write(self.parser.interim)
            self.parser.interim = b""
        handle = self.app.handle
        for req in requests:
            slot = Slot(self, req.keep_alive)
            self.pending.append(slot)
            handle(req, slot)
            if self.closing:
                return
        if len(self.pending) >= self._depth_max:
            self._pause_reading()

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests.
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._maybe_resume_reading()

    # -- answers -------------------------------------------------------------

    def flush(self) -> None:
        pending = self.pending
        transport = self.transport
        while pending and pending[0].data is not None:
            slot = pending.popleft()
            transport.write(slot.data)
            if not slot.keep_alive:
                self.close()
                return
        self.last_active = self.server.now
        if self._reading_paused:
            self._maybe_resume_reading()

    def fail(self, error, message: str) -> None:
        """Answer a request we cannot parse, after those already queued, then
        close: after a framing error the byte stream cannot be trusted."""
        slot = Slot(self, keep_alive=False)
        slot.route = "unparsed"
        self.pending.append(slot)
        self.closing = True
        slot.respond(error.status, error_json(error, message))

    def close(self) -> None:
        self.closing = True
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (self._reading_paused and not self._writing_paused and not self.closing
                and len(self.pending) < self._depth_max // 2 + 1 and self.transport is not None):
            self._reading_paused = False
            self.transport.resume_reading()

    # -- timers (called by the server's tick) ----------------------------------

    def idle_check(self, now: float, request_s: float, keepalive_s: float) -> None:
        if self.transport is None or self.closing:
            return
        started = self.parser.started_at
        if started is not None:
            if now - started > request_s:
                self.fail(errors.REQUEST_TIMEOUT, f"request not completed within {request_s:g} s")
        elif not self.pending and now - self.last_active > keepalive_s:
            self.close()
