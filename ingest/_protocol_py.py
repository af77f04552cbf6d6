"""The asyncio HTTP protocol: the plain-Python twin of ``ext/_protocol.pyx``.

This is the reference the compiled ``ingest._protocol`` is tested against
(tests/test_protocol.py, tests/test_protocol_kernel.py), and what runs under
``INGEST_PURE_PYTHON=1``. Import ``ingest.protocol``, not this module: it
picks the implementation and documents the behaviour.
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

    __slots__ = ("conn", "keep_alive", "data", "route", "started", "head")

    def __init__(self, conn: "HttpProtocol", keep_alive: bool, head: bool = False):
        self.conn = conn
        self.keep_alive = keep_alive
        self.data: bytes | None = None
        self.route = ""
        self.started = _perf()
        self.head = head

    def respond(self, status: int, body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> None:
        conn = self.conn
        server = conn.server
        server.metrics.latency[self.route].observe(_perf() - self.started)
        if conn.transport is None:
            return  # the client left; a committed event stays committed
        # Draining, a connection closes after its answer, unless requests it
        # sent are still waiting behind it: closing now would drop them
        # unanswered; they are answered first (a write 503 shutting_down).
        keep = self.keep_alive and (not server.draining or bool(conn.waiting))
        self.keep_alive = keep
        self.data = http.response(status, body, server.date, content_type, keep, extra, self.head)
        conn.flush()


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("server", "app", "transport", "parser", "pending", "waiting", "last_active", "closing",
                 "_failed", "_reading_paused", "_writing_paused", "_depth_max", "_dispatching",
                 "_read_resumed_at", "_stalled_since", "_closed_at", "_eof")

    def __init__(self, server: "Server"):
        self.server = server
        self.app = server.app
        limits = server.config.limits
        self.parser = http.RequestParser(limits.header_bytes_max, limits.body_bytes_max)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Slot] = deque()  # handed to the app, not yet written
        self.waiting: deque[http.Request] = deque()  # parsed, not yet handed over
        self.last_active = server.now
        self.closing = False
        # Why the byte stream broke; answered after every request before it.
        self._failed: HttpError | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._depth_max = limits.pipeline_depth_max
        # True while _dispatch runs: an answer given inside a handler must not
        # start a dispatch of its own (one level deeper per pipelined request).
        self._dispatching = False
        # The clocks of idle_check (server.now values; None when not running):
        # when reading last resumed, since when the client has not taken its
        # answers (writing paused), since when the connection is closing.
        self._read_resumed_at = None
        self._stalled_since = None
        self._closed_at = None
        # The client half-closed: answer what it sent, then close.
        self._eof = False

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

    def eof_received(self) -> bool | None:
        # The client sends nothing more (a one-shot client half-closes after
        # its request) but may still read: what it sent is answered, then the
        # connection closes. True keeps the transport open for the answers;
        # asyncio's default (None) closes it at once, and a binding that was
        # committed meanwhile would get no answer.
        if self.closing or self.transport is None:
            return None
        self._eof = True
        if self.parser.in_request and self._failed is None:
            self.fail(errors.BAD_REQUEST, "the client closed its side of the connection in the middle of a request")
        elif not self.pending and not self.waiting and self._failed is None:
            return None
        # TLS cannot stay half-open: on the client's close_notify the loop's
        # TLS layer flushes what was written and closes whatever this returns
        # (and logs a warning for a True). Answers still waiting for their
        # commit are lost there; a retry with the same event_id says what
        # became of each (docs/api.md).
        return None if self.transport.get_extra_info("sslcontext") is not None else True

    def data_received(self, data: bytes) -> None:
        if self.closing or self._failed is not None:
            return
        self.last_active = self.server.now
        parser = self.parser
        try:
            requests = parser.feed(data, self.server.now)
        except HttpError as exc:
            self.waiting.extend(exc.requests)
            self._failed = exc
            self._dispatch()
            return
        if requests:
            self.waiting.extend(requests)
            self._dispatch()
            if len(self.waiting) >= self._depth_max:
                self._pause_reading()
        if parser.interim:
            # A 100 must not overtake the answers of the requests before it:
            # sent only when they are all written and its request is still
            # being received; otherwise omitted (the client then sends the
            # body after its own short wait, as RFC 9110 provides).
            if not self.pending and not self.waiting and parser.in_request and self.transport is not None:
                self.transport.write(parser.interim)
            parser.interim = b""

    def _dispatch(self) -> None:
        # Hands requests to the app one at a time. A request answered inside
        # its handler comes back here through respond() and flush(); the next
        # one is then handed over by this loop, not from inside flush(), so
        # a long pipeline answered at once costs no stack.
        if self._dispatching:
            return
        self._dispatching = True
        try:
            waiting = self.waiting
            handle = self.app.handle
            # Nothing is handed over while writing is paused: the client does
            # not take its answers, and answering more would only grow the
            # transport's buffer without bound; resume_writing goes on.
            while not self.pending and not self.closing and not self._writing_paused:
                if waiting:
                    req = waiting.popleft()
                    slot = Slot(self, req.keep_alive, req.method == b"HEAD")
                    self.pending.append(slot)
                    handle(req, slot)
                elif self._failed is not None:
                    # Answer the bad request, then close: after a framing error the
                    # byte stream cannot be trusted.
                    exc = self._failed
                    slot = Slot(self, keep_alive=False)
                    slot.route = "unparsed"
                    self.pending.append(slot)
                    slot.respond(exc.error.status, error_json(exc.error, exc.message))
                else:
                    return
        finally:
            self._dispatching = False

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests,
        # and handing them over (_dispatch).
        if not self._writing_paused:
            self._writing_paused = True
            self._stalled_since = self.server.now
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._stalled_since = None
        if self.transport is not None and not self.pending and (self.waiting or self._failed is not None):
            self._dispatch()
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
        if not pending and (self.waiting or self._failed is not None or self._eof):
            if not self.waiting and self._failed is None:
                self.close()  # half-closed, and everything it sent is answered
                return
            self._dispatch()
        if self._reading_paused:
            self._maybe_resume_reading()

    def fail(self, error, message: str) -> None:
        """Answer `error` after every request already received, then close."""
        if self._failed is None:
            self._failed = HttpError(error, message)
        self._dispatch()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._closed_at = self.server.now
        self.pending.clear()
        self.waiting.clear()
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        # Drops what is not yet written: connection_lost follows.
        self.closing = True
        self._closed_at = None
        self.pending.clear()
        self.waiting.clear()
        self.transport.abort()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (self._reading_paused and not self._writing_paused and not self.closing
                and len(self.waiting) < self._depth_max // 2 + 1 and self.transport is not None):
            self._reading_paused = False
            self._read_resumed_at = self.server.now
            self.transport.resume_reading()

    # -- timers (called by the server's tick) ----------------------------------

    def idle_check(self, now: float, request_s: float, keepalive_s: float) -> None:
        if self.transport is None:
            return
        if self.closing:
            # transport.close() waits until every answer is written: a client
            # that never reads them would keep the connection, and its
            # buffer, for ever. Given the keep-alive time, it is aborted.
            if self._closed_at is not None and now - self._closed_at > keepalive_s:
                self._abort()
            return
        if self._writing_paused:
            # The client takes none of its answers: it is idle like a client
            # that sends nothing, and the answers it left cannot be written.
            if now - self._stalled_since > keepalive_s:
                self._abort()
            return
        if self._failed is not None:
            return
        started = self.parser.started_at
        if started is not None:
            # A request's clock runs only while the server reads it: with
            # reading paused (pipeline_depth_max reached) its remaining bytes
            # wait unread in the socket, through no fault of the client; when
            # reading resumes its clock starts again. (Reading paused because
            # the client does not read its answers is timed above.)
            if self._reading_paused:
                return
            resumed = self._read_resumed_at
            if resumed is not None and resumed > started:
                started = resumed
            if now - started > request_s:
                self.fail(errors.REQUEST_TIMEOUT, f"request not completed within {request_s:g} s")
        elif not self.pending and not self.waiting and now - self.last_active > keepalive_s:
            self.close()
