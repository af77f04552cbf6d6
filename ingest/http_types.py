"""What the HTTP parser hands out: `Request` and `HttpError`, in plain Python.

Both parser implementations (the compiled ``ingest._http`` and its twin
``ingest._http_py``) construct these very classes, and ``ingest.http``
re-exports them; keeping them here, outside both, means no import order can
make a cycle.
"""
from __future__ import annotations

from ingest.errors import ErrorCode


class HttpError(Exception):
    """The bytes are not a request we serve. `requests` are those completed
    before the bad bytes in the same feed: they are answered first."""

    def __init__(self, error: ErrorCode, message: str):
        super().__init__(message)
        self.error = error
        self.message = message
        self.requests: list[Request] = []


class Request:
    __slots__ = ("method", "path", "query", "content_type", "body", "keep_alive")

    def __init__(self, method: bytes, path: str, query: str, content_type: bytes | None, body: bytes, keep_alive: bool):
        self.method = method  # HEAD arrives as HEAD; the caller answers without a body
        self.path = path
        self.query = query
        self.content_type = content_type
        self.body = body
        self.keep_alive = keep_alive

    def __repr__(self) -> str:  # no body: it may hold person codes
        return f"<Request {self.method.decode()} {self.path} {len(self.body)}B>"
