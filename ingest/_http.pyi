"""Stub for the compiled ``ingest._http`` (source ``ext/_http.pyx``).

``ingest._http_py`` is the plain-Python twin with the same names and
behaviour; import both through ``ingest.http``.
"""

from ingest.http_types import HttpError as HttpError
from ingest.http_types import Request as Request

class RequestParser:
    # When the request now being received began (the `now` of the feed that
    # brought its first byte); None between requests.
    started_at: float | None
    # `100 Continue` bytes to send before the final answer; the caller sends
    # and clears them after each feed.
    interim: bytes
    def __init__(self, header_bytes_max: int, body_bytes_max: int) -> None: ...
    @property
    def in_request(self) -> bool: ...
    def feed(self, data: bytes, now: float) -> list[Request]: ...
    # httptools' callbacks (called by llhttp through httptools, not by users)
    def on_message_begin(self) -> None: ...
    def on_url(self, url: bytes) -> None: ...
    def on_header(self, name: bytes, value: bytes) -> None: ...
    def on_headers_complete(self) -> None: ...
    def on_body(self, body: bytes) -> None: ...
    def on_message_complete(self) -> None: ...

def response(
    status: int,
    body: bytes,
    date: bytes,
    content_type: bytes = b"application/json",
    keep_alive: bool = True,
    extra: bytes = b"",
    head: bool = False,
) -> bytes: ...
