"""The HTTP request parser and response writer: the plain-Python twin of ``ext/_http.pyx``.

This is the reference the compiled ``ingest._http`` is tested against
(tests/test_http_parser.py, tests/test_http_kernel.py), and what runs under
``INGEST_PURE_PYTHON=1``. Import ``ingest.http``, not this module: it picks
the implementation and documents the API.
"""
from __future__ import annotations

from http import HTTPStatus

import httptools

from ingest import errors
from ingest.errors import ErrorCode
from ingest.http_types import HttpError, Request, host_is_valid, only_chunked


class RequestParser:
    __slots__ = (
        "_parser", "_header_bytes_max", "_body_bytes_max", "_done", "_url", "_header_bytes",
        "_content_type", "_content_length", "_expect_continue", "_has_host", "_body", "_body_len", "_error",
        "_authorization",
        "started_at", "interim", "_now", "_in_head", "_head_bytes", "_quiet_bytes", "_connection", "_finished",
        "_host_ok",
    )

    def __init__(self, header_bytes_max: int, body_bytes_max: int):
        self._parser = httptools.HttpRequestParser(self)
        self._header_bytes_max = header_bytes_max
        self._body_bytes_max = body_bytes_max
        self._done: list[Request] = []
        self._error: HttpError | None = None
        # When the request now being received began; None between requests.
        self.started_at: float | None = None
        # Bytes to send before the final answer (`100 Continue`); the caller
        # sends and clears it after each feed.
        self.interim = b""
        self._now = 0.0
        # Bytes received while a request line or headers are incomplete:
        # httptools buffers a header that never ends without telling us, so
        # the limit is applied to what we feed it. httptools does not say
        # where in a feed a request begins, so a feed is handed to it in
        # pieces of at most header_bytes_max bytes, and a piece counts if it
        # starts in a head: a head that begins inside a piece is counted from
        # the next one, so a head that never ends is refused by the time it
        # is 2 * header_bytes_max long, wherever in a segment it began.
        self._in_head = True
        self._head_bytes = 0
        # Past the head, bytes fed since httptools last reported progress
        # (body, a chunk's start or end, the message's end): a trailer
        # field, or a chunk's framing, that never ends. httptools would
        # buffer it on the event loop, growing it by a copy per piece; it is
        # bounded like a head.
        self._quiet_bytes = 0
        # After a request that closes the connection nothing more is parsed.
        self._finished = False
        # The last Host value found valid: a connection sends the same one
        # with every request, so it is checked once, not per request.
        self._host_ok = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._header_bytes = 0
        self._content_type = None
        self._authorization = None
        self._content_length = None
        self._expect_continue = False
        self._has_host = False
        self._connection = False
        self._body: list[bytes] = []
        self._body_len = 0

    @property
    def in_request(self) -> bool:
        return self.started_at is not None

    def feed(self, data: bytes, now: float) -> list[Request]:
        if self._finished:
            return []
        self._now = now
        error = None
        step = self._header_bytes_max if self._header_bytes_max > 0 else 1
        size = len(data)
        view = data if size <= step else memoryview(data)
        at = 0
        while True:
            piece = view if size <= step else view[at:at + step]
            at += step
            if self._in_head:
                self._head_bytes += len(piece)
            else:
                self._quiet_bytes += len(piece)
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserCallbackError:
                error = self._error
            except httptools.HttpParserUpgrade:
                # llhttp completes the upgrade request, then stops: it is refused,
                # the requests before it are not.
                error = HttpError(errors.BAD_REQUEST, "protocol upgrade is not supported")
                if self._done:
                    self._done.pop()
                # An upgrade that also closes (Connection: upgrade, close;
                # HTTP/1.0) finished the parser: it is still answered.
                self._finished = False
            except httptools.HttpParserError as exc:
                error = HttpError(errors.BAD_REQUEST, f"bad HTTP request: {exc}")
            if error is None and self._in_head and self._head_bytes > self._header_bytes_max:
                error = HttpError(errors.HEADERS_TOO_LARGE, "request line and headers are too large")
            if error is None and not self._in_head and self._quiet_bytes > self._header_bytes_max:
                error = HttpError(errors.HEADERS_TOO_LARGE, "trailer fields or chunk framing are too large")
            if error is not None or self._finished or at >= size:
                break
        done = self._done
        if done:
            self._done = []
        if error is not None:
            if self._finished:
                return done  # bytes after a closing request are not ours to judge
            error.requests = done
            raise error
        return done

    def _fail(self, error: ErrorCode, message: str) -> None:
        self._error = HttpError(error, message)
        raise self._error

    # httptools callbacks --------------------------------------------------

    def on_chunk_header(self) -> None:
        self._quiet_bytes = 0

    def on_chunk_complete(self) -> None:
        self._quiet_bytes = 0

    def on_message_begin(self) -> None:
        self.started_at = self._now
        self._in_head = True
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._header_bytes_max:
            self._fail(errors.HEADERS_TOO_LARGE, "request line and headers are too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer field: never a request header (RFC 9110 6.5.1: an
            # Authorization, a Host, a Content-Type after the body must not
            # count as one); ignored. Its size is bounded in feed.
            return
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._header_bytes_max:
            self._fail(errors.HEADERS_TOO_LARGE, "request line and headers are too large")
        n = len(name)
        if n == 4 and name.lower() == b"host":
            # RFC 9112 3.2: more than one Host, or an invalid one, is a 400.
            if self._has_host:
                self._fail(errors.BAD_REQUEST, "more than one Host header")
            if value != self._host_ok:
                if not host_is_valid(value):
                    self._fail(errors.BAD_REQUEST, "Host header is not host[:port]")
                self._host_ok = value
            self._has_host = True
        elif n == 12 and name.lower() == b"content-type":
            # Two would leave open which one the body was decoded as.
            if self._content_type is not None:
                self._fail(errors.BAD_REQUEST, "more than one Content-Type header")
            self._content_type = value.split(b";", 1)[0].strip().lower()
        elif n == 13 and name.lower() == b"authorization":
            # Two would leave open which one the access check read.
            if self._authorization is not None:
                self._fail(errors.BAD_REQUEST, "more than one Authorization header")
            self._authorization = value
        elif n == 14 and name.lower() == b"content-length":
            # llhttp has already rejected a malformed or repeated length.
            self._content_length = int(value)
        elif n == 10 and name.lower() == b"connection":
            self._connection = True
        elif n == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        elif n == 16 and name.lower() == b"content-encoding" and value.strip().lower() != b"identity":
            # A phone's gzipped body would otherwise be decoded as JSON and
            # answered "malformed"; RFC 9110 15.5.16: 415.
            self._fail(errors.UNSUPPORTED_MEDIA_TYPE, "Content-Encoding is not supported: send the body uncompressed")
        elif n == 17 and name.lower() == b"transfer-encoding" and not only_chunked(value):
            # RFC 9112 6.1: a coding we do not decode (llhttp refuses some itself)
            self._fail(errors.NOT_IMPLEMENTED, "only the chunked transfer coding is supported")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._quiet_bytes = 0
        # Asking for the version costs a call, so it is asked only where it
        # can matter: no Host, an Expect, a Connection header, or no
        # keep-alive. llhttp also takes HTTP/0.9 and HTTP/2.0 request lines,
        # and those are never keep-alive for it unless they say Connection:
        # keep-alive.
        version = "1.1"
        if not self._has_host or self._expect_continue or self._connection or not self._parser.should_keep_alive():
            version = self._parser.get_http_version()
            if version != "1.1" and version != "1.0":
                self._fail(errors.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/{version} is not supported: send HTTP/1.1")
        http11 = version == "1.1"
        if not self._has_host and http11:
            self._fail(errors.BAD_REQUEST, "an HTTP/1.1 request needs a Host header")
        # Refuse an announced oversize body before the client sends it.
        if self._content_length is not None and self._content_length > self._body_bytes_max:
            self._fail(errors.BODY_TOO_LARGE, f"body is larger than {self._body_bytes_max} bytes")
        if self._expect_continue and http11:  # RFC 9110 10.1.1: HTTP/1.0 ignores it
            self.interim += b"HTTP/1.1 100 Continue\r\n\r\n"

    def on_body(self, body: bytes) -> None:
        self._quiet_bytes = 0
        self._body_len += len(body)
        if self._body_len > self._body_bytes_max:
            self._fail(errors.BODY_TOO_LARGE, f"body is larger than {self._body_bytes_max} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        if url[:1] != b"/":
            # absolute-form ("GET http://host/path"), which servers must accept
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._fail(errors.BAD_REQUEST, "bad request target")
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        path, _, query = url.decode("latin-1").partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep_alive = self._parser.should_keep_alive()
        self._done.append(Request(self._parser.get_method(), path, query, self._content_type, body, keep_alive,
                                  self._authorization))
        self.started_at = None
        self._in_head = True
        self._quiet_bytes = 0
        if not keep_alive:
            self._finished = True


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


def response(
    status: int,
    body: bytes,
    date: bytes,
    content_type: bytes = b"application/json",
    keep_alive: bool = True,
    extra: bytes = b"",
    head: bool = False,
) -> bytes:
    """Serialize one response. `date` is the preformatted `Date` value
    (refreshed once a second by the server), `extra` more header lines;
    `head` answers a HEAD: the headers of the body, without it."""
    return b"".join((
        _STATUS_LINES[status],
        b"Date: ", date,
        b"\r\nContent-Type: ", content_type,
        b"\r\nContent-Length: ", str(len(body)).encode(),
        b"\r\n" if keep_alive else b"\r\nConnection: close\r\n",
        extra,
        b"\r\n",
        b"" if head else body,
    ))
