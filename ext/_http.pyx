# cython: language_level=3
"""HTTP request parser and response writer (compiled twin of ``ingest._http_py``).

The parsing itself is httptools' (llhttp), exactly as in the twin: this
module is the *protocol object* httptools calls back, as a ``cdef class``
so that each of the eight callbacks per request is a C method on typed
fields: no instance dict, header names matched by length then by an ASCII
case-folding compare in C (no ``name.lower()`` copies), the content type cut
and folded without a copy when it is already clean, the URL split at ``?``
and decoded in one step, and ``Request`` filled without running its Python
``__init__``. ``response()`` writes the answer into one preallocated bytes.

Behaviour, errors and messages are the twin's, case for case; the twin is the
reference (read it first) and tests/test_http_kernel.py holds this module to
it. ``Request`` and ``HttpError`` are the plain-Python classes of
``ingest.http_types``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from libc.string cimport memchr, memcpy

from http import HTTPStatus

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)

from ingest import errors
from ingest.http_types import HttpError, Request, host_is_valid, only_chunked

cdef extern from "Python.h":
    object PyUnicode_DecodeLatin1(const char *s, Py_ssize_t size, const char *errors)

_BAD_REQUEST = errors.BAD_REQUEST
_HEADERS_TOO_LARGE = errors.HEADERS_TOO_LARGE
_BODY_TOO_LARGE = errors.BODY_TOO_LARGE
_NOT_IMPLEMENTED = errors.NOT_IMPLEMENTED
_UNSUPPORTED_MEDIA_TYPE = errors.UNSUPPORTED_MEDIA_TYPE
_HTTP_VERSION_NOT_SUPPORTED = errors.HTTP_VERSION_NOT_SUPPORTED
_new = object.__new__


cdef inline bint _is_space(char c) noexcept:
    # bytes.strip()'s whitespace (Py_ISSPACE)
    return c == ord(' ') or c == ord('\t') or c == ord('\n') or c == ord('\r') or c == 0x0B or c == 0x0C


cdef inline char _lower(char c) noexcept:
    # bytes.lower(): ASCII letters only
    if ord('A') <= c <= ord('Z'):
        return c + 32
    return c


cdef inline bint _is_lower(const char *s, const char *lower, Py_ssize_t n) noexcept:
    """s[:n].lower() == lower[:n]; `lower` is already lower case."""
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(s[i]) != lower[i]:
            return False
    return True


cdef bytes _media_type(bytes value):
    """value.split(b";", 1)[0].strip().lower(), without a copy when nothing changes."""
    cdef const char *s = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t start = 0, end = n, i
    cdef const char *semi = <const char *>memchr(s, ord(';'), <size_t>n)
    cdef bint upper = False
    cdef bytes out
    cdef char *o
    if semi != NULL:
        end = semi - s
    while start < end and _is_space(s[start]):
        start += 1
    while end > start and _is_space(s[end - 1]):
        end -= 1
    for i in range(start, end):
        if ord('A') <= s[i] <= ord('Z'):
            upper = True
            break
    if start == 0 and end == n and not upper:
        return value
    # A fresh object: PyBytes_FromStringAndSize(NULL, n) never hands out a
    # shared one-byte singleton, so it may be written before it is published.
    out = PyBytes_FromStringAndSize(NULL, end - start)
    o = PyBytes_AS_STRING(out)
    for i in range(end - start):
        o[i] = _lower(s[start + i])
    return out


cdef class RequestParser:
    cdef:
        object _parser
        # httptools' methods, bound once
        object _feed_data, _should_keep_alive, _get_method
        Py_ssize_t _header_bytes_max, _body_bytes_max
        list _done
        object _error
        # When the request now being received began; None between requests.
        public object started_at
        # Bytes to send before the final answer (`100 Continue`); the caller
        # sends and clears it after each feed.
        public object interim
        object _now
        # See the twin: bytes fed while a request line or headers are
        # incomplete, counted per piece of at most header_bytes_max bytes.
        bint _in_head
        Py_ssize_t _head_bytes
        # See the twin: past the head, bytes fed since httptools last
        # reported progress (a trailer field or chunk framing that never ends).
        Py_ssize_t _quiet_bytes
        # After a request that closes the connection nothing more is parsed.
        bint _finished
        # The request being received (reset by _reset)
        bytes _url
        Py_ssize_t _header_bytes
        object _content_type
        object _authorization
        # The twin keeps Content-Length and compares it at the end of the
        # headers; the limit does not change in between, so the verdict is kept.
        bint _length_too_big
        bint _expect_continue
        bint _has_host
        bint _connection  # a Connection header: llhttp's keep-alive then says nothing of the version
        object _host_ok  # see the twin: the last Host value found valid
        object _body  # the first body chunk, or None
        list _body_parts  # every chunk, once there are two
        Py_ssize_t _body_len

    def __cinit__(self, *args, **kwargs):
        self._done = []
        self._url = b""
        self.interim = b""

    def __init__(self, Py_ssize_t header_bytes_max, Py_ssize_t body_bytes_max):
        parser = HttpRequestParser(self)
        self._parser = parser
        self._feed_data = parser.feed_data
        self._should_keep_alive = parser.should_keep_alive
        self._get_method = parser.get_method
        self._header_bytes_max = header_bytes_max
        self._body_bytes_max = body_bytes_max
        self._done = []
        self._error = None
        self.started_at = None
        self.interim = b""
        self._now = 0.0
        self._in_head = True
        self._head_bytes = 0
        self._quiet_bytes = 0
        self._finished = False
        self._host_ok = None
        self._reset()

    cdef inline void _reset(self) noexcept:
        self._url = b""
        self._header_bytes = 0
        self._content_type = None
        self._authorization = None
        self._length_too_big = False
        self._expect_continue = False
        self._has_host = False
        self._connection = False
        self._body = None
        self._body_parts = None
        self._body_len = 0

    @property
    def in_request(self):
        return self.started_at is not None

    def feed(self, data, now):
        if self._finished:
            return []
        self._now = now
        error = None
        cdef Py_ssize_t step = self._header_bytes_max if self._header_bytes_max > 0 else 1
        cdef Py_ssize_t size = len(data)
        cdef Py_ssize_t at = 0
        view = data if size <= step else memoryview(data)
        while True:
            piece = view if size <= step else view[at:at + step]
            at += step
            if self._in_head:
                self._head_bytes += len(piece)
            else:
                self._quiet_bytes += len(piece)
            try:
                self._feed_data(piece)
            except HttpParserCallbackError:
                error = self._error
            except HttpParserUpgrade:
                # llhttp completes the upgrade request, then stops: it is refused,
                # the requests before it are not.
                error = HttpError(_BAD_REQUEST, "protocol upgrade is not supported")
                if self._done:
                    self._done.pop()
                # An upgrade that also closes (Connection: upgrade, close;
                # HTTP/1.0) finished the parser: it is still answered.
                self._finished = False
            except HttpParserError as exc:
                error = HttpError(_BAD_REQUEST, f"bad HTTP request: {exc}")
            if error is None and self._in_head and self._head_bytes > self._header_bytes_max:
                error = HttpError(_HEADERS_TOO_LARGE, "request line and headers are too large")
            if error is None and not self._in_head and self._quiet_bytes > self._header_bytes_max:
                error = HttpError(_HEADERS_TOO_LARGE, "trailer fields or chunk framing are too large")
            if error is not None or self._finished or at >= size:
                break
        cdef list done = self._done
        if PyList_GET_SIZE(done):
            self._done = []
        if error is not None:
            if self._finished:
                return done  # bytes after a closing request are not ours to judge
            error.requests = done
            raise error
        return done

    cdef int _fail(self, error, str message) except -1:
        self._error = HttpError(error, message)
        raise self._error

    # httptools callbacks --------------------------------------------------

    def on_chunk_header(self):
        self._quiet_bytes = 0

    def on_chunk_complete(self):
        self._quiet_bytes = 0

    def on_message_begin(self):
        self.started_at = self._now
        self._in_head = True
        self._reset()

    def on_url(self, bytes url):
        if PyBytes_GET_SIZE(self._url):
            self._url = self._url + url
        else:
            self._url = url
        self._header_bytes += PyBytes_GET_SIZE(url)
        if self._header_bytes > self._header_bytes_max:
            self._fail(_HEADERS_TOO_LARGE, "request line and headers are too large")

    def on_header(self, bytes name, bytes value):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
        cdef Py_ssize_t m = PyBytes_GET_SIZE(value)
        cdef const char *s = PyBytes_AS_STRING(name)
        cdef const char *v
        cdef long long length
        cdef Py_ssize_t i
        if not self._in_head:
            return  # a trailer field: see the twin
        self._header_bytes += n + m + 4
        if self._header_bytes > self._header_bytes_max:
            self._fail(_HEADERS_TOO_LARGE, "request line and headers are too large")
        if n == 4 and _is_lower(s, b"host", 4):
            # RFC 9112 3.2: more than one Host, or an invalid one, is a 400.
            if self._has_host:
                self._fail(_BAD_REQUEST, "more than one Host header")
            if value != self._host_ok:
                if not host_is_valid(value):
                    self._fail(_BAD_REQUEST, "Host header is not host[:port]")
                self._host_ok = value
            self._has_host = True
        elif n == 12 and _is_lower(s, b"content-type", 12):
            if self._content_type is not None:
                self._fail(_BAD_REQUEST, "more than one Content-Type header")
            self._content_type = _media_type(value)
        elif n == 13 and _is_lower(s, b"authorization", 13):
            if self._authorization is not None:
                self._fail(_BAD_REQUEST, "more than one Authorization header")
            self._authorization = value
        elif n == 14 and _is_lower(s, b"content-length", 14):
            # llhttp has already rejected a malformed or repeated length;
            # anything but plain digits takes the twin's int() path.
            v = PyBytes_AS_STRING(value)
            if 0 < m <= 18:
                length = 0
                for i in range(m):
                    if not (ord('0') <= v[i] <= ord('9')):
                        break
                    length = length * 10 + (v[i] - ord('0'))
                else:
                    self._length_too_big = length > self._body_bytes_max
                    return
            self._length_too_big = int(value) > self._body_bytes_max
        elif n == 10 and _is_lower(s, b"connection", 10):
            self._connection = True
        elif n == 6 and _is_lower(s, b"expect", 6) and m == 12 and _is_lower(PyBytes_AS_STRING(value), b"100-continue", 12):
            self._expect_continue = True
        elif n == 16 and _is_lower(s, b"content-encoding", 16) and value.strip().lower() != b"identity":
            self._fail(_UNSUPPORTED_MEDIA_TYPE, "Content-Encoding is not supported: send the body uncompressed")
        elif n == 17 and _is_lower(s, b"transfer-encoding", 17) and not only_chunked(value):
            # RFC 9112 6.1: a coding we do not decode (llhttp refuses some itself)
            self._fail(_NOT_IMPLEMENTED, "only the chunked transfer coding is supported")

    def on_headers_complete(self):
        self._in_head = False
        self._head_bytes = 0
        self._quiet_bytes = 0
        # See the twin: the version is asked for only where it can matter.
        cdef bint http11 = True
        if not self._has_host or self._expect_continue or self._connection or not self._should_keep_alive():
            version = self._parser.get_http_version()
            if version != "1.1" and version != "1.0":
                self._fail(_HTTP_VERSION_NOT_SUPPORTED, f"HTTP/{version} is not supported: send HTTP/1.1")
            http11 = version == "1.1"
        if not self._has_host and http11:
            self._fail(_BAD_REQUEST, "an HTTP/1.1 request needs a Host header")
        # Refuse an announced oversize body before the client sends it.
        if self._length_too_big:
            self._fail(_BODY_TOO_LARGE, f"body is larger than {self._body_bytes_max} bytes")
        if self._expect_continue and http11:  # RFC 9110 10.1.1: HTTP/1.0 ignores it
            self.interim += b"HTTP/1.1 100 Continue\r\n\r\n"

    def on_body(self, bytes body):
        self._quiet_bytes = 0
        self._body_len += PyBytes_GET_SIZE(body)
        if self._body_len > self._body_bytes_max:
            self._fail(_BODY_TOO_LARGE, f"body is larger than {self._body_bytes_max} bytes")
        if self._body is None:
            self._body = body
        elif self._body_parts is None:
            self._body_parts = [self._body, body]
        else:
            self._body_parts.append(body)

    def on_message_complete(self):
        cdef bytes url = self._url
        cdef const char *s
        cdef const char *q
        cdef Py_ssize_t n
        if PyBytes_GET_SIZE(url) == 0 or PyBytes_AS_STRING(url)[0] != ord('/'):
            # absolute-form ("GET http://host/path"), which servers must accept
            try:
                parsed = parse_url(url)
            except HttpParserInvalidURLError:
                self._fail(_BAD_REQUEST, "bad request target")
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        s = PyBytes_AS_STRING(url)
        n = PyBytes_GET_SIZE(url)
        q = <const char *>memchr(s, ord('?'), <size_t>n)
        if q == NULL:
            path = PyUnicode_DecodeLatin1(s, n, NULL)
            query = ""
        else:
            path = PyUnicode_DecodeLatin1(s, q - s, NULL)
            query = PyUnicode_DecodeLatin1(q + 1, n - (q - s) - 1, NULL)
        if self._body is None:
            body = b""
        elif self._body_parts is None:
            body = self._body
        else:
            body = b"".join(self._body_parts)
        keep_alive = self._should_keep_alive()
        # Request's slots filled directly: its __init__ would cost a Python
        # frame per request. tests/test_http_kernel.py compares every slot.
        req = _new(Request)
        req.method = self._get_method()
        req.path = path
        req.query = query
        req.content_type = self._content_type
        req.body = body
        req.keep_alive = keep_alive
        req.authorization = self._authorization
        self._done.append(req)
        self.started_at = None
        self._in_head = True
        self._quiet_bytes = 0
        if not keep_alive:
            self._finished = True


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


cdef inline char *_put(char *o, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(o, PyBytes_AS_STRING(b), <size_t>n)
    return o + n


def response(
    status,
    body,
    date,
    content_type=b"application/json",
    keep_alive=True,
    extra=b"",
    head=False,
):
    """Serialize one response. `date` is the preformatted `Date` value
    (refreshed once a second by the server), `extra` more header lines;
    `head` answers a HEAD: the headers of the body, without it."""
    cdef bytes line = _STATUS_LINES[status]
    cdef char digits[24]
    cdef Py_ssize_t nd = 0, body_len, total, k
    cdef bint keep, with_body
    cdef bytes out
    cdef char *o
    if not (type(body) is bytes and type(date) is bytes and type(content_type) is bytes and type(extra) is bytes):
        # bytes-like or wrong arguments: the twin's own expression, so its
        # results and its errors
        return b"".join((
            line,
            b"Date: ", date,
            b"\r\nContent-Type: ", content_type,
            b"\r\nContent-Length: ", str(len(body)).encode(),
            b"\r\n" if keep_alive else b"\r\nConnection: close\r\n",
            extra,
            b"\r\n",
            b"" if head else body,
        ))
    body_len = PyBytes_GET_SIZE(body)
    keep = keep_alive
    with_body = not head
    k = body_len
    while True:  # the decimal digits of the length, last first
        digits[nd] = <char>(ord('0') + k % 10)
        nd += 1
        k //= 10
        if k == 0:
            break
    total = (PyBytes_GET_SIZE(line) + 6 + PyBytes_GET_SIZE(date) + 16 + PyBytes_GET_SIZE(content_type)
             + 18 + nd + (2 if keep else 21) + PyBytes_GET_SIZE(extra) + 2 + (body_len if with_body else 0))
    out = PyBytes_FromStringAndSize(NULL, total)
    o = PyBytes_AS_STRING(out)
    o = _put(o, line)
    memcpy(o, b"Date: ", 6)
    o = _put(o + 6, date)
    memcpy(o, b"\r\nContent-Type: ", 16)
    o = _put(o + 16, content_type)
    memcpy(o, b"\r\nContent-Length: ", 18)
    o += 18
    while nd:
        nd -= 1
        o[0] = digits[nd]
        o += 1
    if keep:
        memcpy(o, b"\r\n", 2)
        o += 2
    else:
        memcpy(o, b"\r\nConnection: close\r\n", 21)
        o += 21
    o = _put(o, extra)
    memcpy(o, b"\r\n", 2)
    o += 2
    if with_body:
        _put(o, body)
    return out
