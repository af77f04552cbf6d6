"""What an HttpProtocol talks to, without sockets or a loop.

`Transport` records every call the protocol makes on it, in order, so two
implementations can be compared call for call; given a `high_water` it also
keeps a write buffer that only `drain()` empties, and calls the protocol's
pause_writing / resume_writing as asyncio's transports do; `Server` has the attributes
HttpProtocol reads from ingest.server.Server; `App` answers each request as
its path says (`/later...` waits until the test answers it, `/raise...`
raises out of the handler, anything else is answered at once).
"""
from __future__ import annotations

from ingest.config import Config, Limits
from ingest.metrics import Metrics

DATE = b"Sun, 22 Nov 2026 00:00:00 GMT"


class Transport:
    def __init__(self, high_water: int | None = None, tls: bool = False):
        self.calls: list[tuple] = []
        self.tls = tls  # what get_extra_info("sslcontext") says: is it TLS?
        self.high_water = high_water  # None: no buffer, never pauses the protocol
        self.buffered = 0  # bytes written that the client has not taken (drain)
        self.writing_paused = False
        self.protocol = None  # set by connect()

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))
        if self.high_water is not None:
            self.buffered += len(data)
            if self.buffered > self.high_water and not self.writing_paused:
                self.writing_paused = True
                self.protocol.pause_writing()

    def drain(self) -> None:
        """The client takes everything written so far."""
        self.buffered = 0
        if self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()

    def get_extra_info(self, name: str, default=None):
        return object() if name == "sslcontext" and self.tls else default

    def close(self) -> None:
        self.calls.append(("close",))

    def abort(self) -> None:
        self.calls.append(("abort",))

    def pause_reading(self) -> None:
        self.calls.append(("pause_reading",))

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading",))

    def written(self) -> bytes:
        return b"".join(call[1] for call in self.calls if call[0] == "write")


class App:
    """Answers `/later...` only when told (`answer_later`), raises on
    `/raise...`, answers anything else at once; the answer echoes the method,
    path and body length, so a misplaced answer shows."""

    def __init__(self):
        self.later: list = []  # slots waiting for answer_later, oldest first
        self.handled: list[tuple] = []

    def handle(self, req, slot) -> None:
        self.handled.append((req.method, req.path))
        slot.route = "route" + req.path[:3]
        if req.path.startswith("/raise"):
            raise RuntimeError("handler failed: " + req.path)
        if req.path.startswith("/later"):
            self.later.append((req, slot))
            return
        self.answer(req, slot)

    @staticmethod
    def answer(req, slot, variant: int = 0) -> None:
        body = b'{"m":"%s","p":"%s","n":%d}' % (req.method, req.path.encode("latin-1"), len(req.body))
        if variant == 1:
            slot.respond(404, body, b"application/msgpack")
        elif variant == 2:
            slot.respond(503, body, extra=b"Retry-After: 1\r\n")
        else:
            slot.respond(200 if req.method != b"POST" else 201, body)

    def answer_later(self, index: int, variant: int = 0) -> None:
        req, slot = self.later.pop(index % len(self.later))
        self.answer(req, slot, variant)


class Server:
    """The attributes HttpProtocol reads from ingest.server.Server."""

    def __init__(self, app=None, **limits):
        self.app = app if app is not None else App()
        self.config = Config(limits=Limits(**limits))
        self.metrics = Metrics("test")
        self.connections: set = set()
        self.now = 100.0
        self.date = DATE
        self.draining = False


def connect(impl, server: Server, high_water: int | None = None, tls: bool = False):
    """A new connection of `impl` (a protocol module) on `server`, and its transport."""
    conn = impl.HttpProtocol(server)
    transport = Transport(high_water, tls)
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport
