"""HTTP/1.1 without sockets: bytes in, requests out; responses as bytes.

`RequestParser.feed(data, now)` returns the requests completed by `data`
(several when a client pipelines) and raises `HttpError` when the bytes are
not a request we will serve; the caller answers it and closes. Parsing is
httptools' (llhttp); the parser only applies our limits and keeps what the
application needs. No I/O, no clock: `now` is passed in, so every case is a
unit test (tests/test_http_parser.py).

    parser = RequestParser(header_bytes_max, body_bytes_max)
    parser.feed(data, now) -> list[Request]   # or raises HttpError(.requests)
    parser.in_request, parser.started_at      # a request is partly received, since when
    parser.interim                            # `100 Continue` bytes to send; the caller clears it
    response(status, body, date, content_type, keep_alive, extra, head) -> bytes

The parser and `response` run in a compiled kernel (``ext/_http.pyx`` ->
``ingest._http``); ``INGEST_PURE_PYTHON=1`` swaps in its plain-Python twin
``ingest._http_py`` (same behaviour, byte for byte, slower).
``IMPLEMENTATION`` says which one runs. `Request` and `HttpError` are plain
Python classes (``ingest/http_types.py``) that both construct.
"""
from __future__ import annotations

from ingest import kernels
from ingest.http_types import HttpError, Request

_impl = kernels.load("_http", "_http_py")
IMPLEMENTATION = kernels.IMPLEMENTATION

__all__ = ["IMPLEMENTATION", "HttpError", "Request", "RequestParser", "response"]

RequestParser = _impl.RequestParser
response = _impl.response
