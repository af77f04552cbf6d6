"""What the HTTP parser hands out: `Request` and `HttpError`, in plain Python.

Both parser implementations (the compiled ``ingest._http`` and its twin
``ingest._http_py``) construct these very classes, and ``ingest.http``
re-exports them; keeping them here, outside both, means no import order can
make a cycle.
"""
from __future__ import annotations

import re

from ingest.errors import ErrorCode

# RFC 9112 3.2: Host = uri-host [ ":" port ] (RFC 3986): an IP literal in
# brackets, or a reg-name (which covers IPv4): unreserved, pct-encoded and
# sub-delims characters; the port is digits. An empty value is allowed.
_HOST = re.compile(rb"(?:\[[0-9A-Za-z._~!$&'()*+,;=:-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?")


def host_is_valid(value: bytes) -> bool:
    """`value` (a Host field value, OWS around it allowed) is uri-host [":" port].
    ~0.4 us: the parsers call it once per connection (they remember the last
    value found valid), not per request."""
    return _HOST.fullmatch(value.strip(b" \t")) is not None


def only_chunked(value: bytes) -> bool:
    """A Transfer-Encoding value names no coding but `chunked` (any case, OWS
    and empty list elements allowed): the only one we decode."""
    return all(c.strip(b" \t").lower() in (b"chunked", b"") for c in value.split(b","))


class HttpError(Exception):
    """The bytes are not a request we serve. `requests` are those completed
    before the bad bytes in the same feed: they are answered first."""

    def __init__(self, error: ErrorCode, message: str):
        super().__init__(message)
        self.error = error
        self.message = message
        self.requests: list[Request] = []


class Request:
    __slots__ = ("method", "path", "query", "content_type", "body", "keep_alive", "authorization")

    def __init__(self, method: bytes, path: str, query: str, content_type: bytes | None, body: bytes, keep_alive: bool,
                 authorization: bytes | None = None):
        self.method = method  # HEAD arrives as HEAD; the caller answers without a body
        self.path = path
        self.query = query
        self.content_type = content_type
        self.body = body
        self.keep_alive = keep_alive
        self.authorization = authorization  # the Authorization field's value, as sent (access.py reads it)

    def __repr__(self) -> str:  # no body (it may hold person codes), no credentials
        return f"<Request {self.method.decode()} {self.path} {len(self.body)}B>"
