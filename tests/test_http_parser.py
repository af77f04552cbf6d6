"""ingest.http without sockets: whole, byte by byte, pipelined, and every limit.

Every test runs against both implementations: the compiled kernel
``ingest._http`` (``ext/_http.pyx``) and its plain-Python twin
``ingest._http_py``. tests/test_http_kernel.py feeds both random streams and
checks that they agree on everything.
"""
import ast
import os
from pathlib import Path

import pytest
from helpers import compiled_kernel, run_python

from ingest import _http_py, errors, http
from ingest.http import HttpError, Request

REPO = Path(__file__).resolve().parents[1]
PURE = os.environ.get("INGEST_PURE_PYTHON") == "1"

def _compiled():
    return compiled_kernel("_http")


@pytest.fixture(params=["python", "cython"])
def impl(request):
    return _http_py if request.param == "python" else _compiled()


BODY = b'{"a":1}'
REQ = b"POST /v1/bindings?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 7\r\n\r\n" + BODY


GOOD = b"GET /livez HTTP/1.1\r\nHost: h\r\n\r\n"


def parser(impl, header_max=16384, body_max=1024):
    return impl.RequestParser(header_max, body_max)


def test_whole_request(impl):
    [req] = parser(impl).feed(REQ, 1.0)
    assert (req.method, req.path, req.query) == (b"POST", "/v1/bindings", "x=1")
    assert req.content_type == b"application/json"
    assert req.body == BODY
    assert req.keep_alive


def test_byte_by_byte_gives_the_same_request(impl):
    p = parser(impl)
    got = []
    for i in range(len(REQ)):
        got += p.feed(REQ[i:i + 1], float(i))
    assert len(got) == 1 and got[0].body == BODY and got[0].path == "/v1/bindings"


def test_pipelined_and_trailing_partial(impl):
    p = parser(impl)
    got = p.feed(REQ + REQ + REQ[:20], 1.0)
    assert len(got) == 2
    assert p.in_request and p.started_at == 1.0
    got = p.feed(REQ[20:], 2.0)
    assert len(got) == 1 and not p.in_request


def test_started_at_is_when_the_request_began(impl):
    p = parser(impl)
    p.feed(REQ[:5], 10.0)
    p.feed(REQ[5:30], 20.0)
    assert p.started_at == 10.0


def test_chunked_body(impl):
    p = parser(impl)
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    [req] = p.feed(raw, 0)
    assert req.body == b"abcde"


def test_connection_close(impl):
    [req] = parser(impl).feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 0)
    assert not req.keep_alive


def test_announced_oversize_body_is_refused_before_it_is_sent(impl):
    with pytest.raises(HttpError) as e:
        parser(impl, body_max=10).feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", 0)
    assert e.value.error is errors.BODY_TOO_LARGE


def test_chunked_oversize_body(impl):
    with pytest.raises(HttpError) as e:
        parser(impl, body_max=4).feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", 0)
    assert e.value.error is errors.BODY_TOO_LARGE


def test_oversize_headers(impl):
    with pytest.raises(HttpError) as e:
        parser(impl, header_max=64).feed(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100 + b"\r\n\r\n", 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE


def test_oversize_url(impl):
    with pytest.raises(HttpError) as e:
        parser(impl, header_max=64).feed(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
])
def test_garbage_is_bad_request(impl, raw):
    with pytest.raises(HttpError) as e:
        parser(impl).feed(raw, 0)
    assert e.value.error is errors.BAD_REQUEST


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    # an upgrade that also closes used to finish the parser with no answer at all
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
])
def test_upgrade_is_refused(impl, raw):
    with pytest.raises(HttpError) as e:
        parser(impl).feed(GOOD + raw, 0)
    assert e.value.error is errors.BAD_REQUEST and "upgrade" in e.value.message
    assert [r.path for r in e.value.requests] == ["/livez"]  # the request before it is answered


def test_expect_continue_produces_interim_response(impl):
    p = parser(impl)
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 0)
    assert p.interim == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_repr_does_not_show_the_body(impl):
    [req] = parser(impl).feed(REQ, 0)
    assert "a" not in repr(req).split("bindings")[1].replace("B>", "")


def test_response_bytes(impl):
    out = impl.response(201, b"{}", b"DATE", keep_alive=False, extra=b"Allow: GET\r\n")
    assert out == (b"HTTP/1.1 201 Created\r\nDate: DATE\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 2\r\nConnection: close\r\nAllow: GET\r\n\r\n{}")
    assert b"Connection" not in impl.response(200, b"", b"D")


def test_header_that_never_ends_hits_the_limit(impl):
    p = parser(impl, header_max=256)
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ", 0)
    with pytest.raises(HttpError) as e:
        for _ in range(10):
            p.feed(b"a" * 64, 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE




@pytest.mark.parametrize("tail_feeds", [0, 2, 3])
def test_header_that_never_ends_after_a_request_in_the_same_feed_hits_the_limit(impl, tail_feeds):
    """The head is counted from where it begins, not from where a feed does:
    a request, then a header that never ends, in one segment (and more of
    that header in later ones) is refused within 2 * header_bytes_max."""
    p = parser(impl, header_max=1024)
    with pytest.raises(HttpError) as e:
        p.feed(GOOD + b"GET /livez HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * (2048 if tail_feeds == 0 else 600), 0)
        for _ in range(tail_feeds):
            p.feed(b"a" * 700, 1)
    assert e.value.error is errors.HEADERS_TOO_LARGE
    assert [r.path for r in e.value.requests] == (["/livez"] if tail_feeds == 0 else [])


def test_header_that_never_ends_after_a_request_is_refused_by_twice_the_limit(impl):
    """The bound: httptools does not say where in a feed a head begins, so it
    may be counted from the next header_bytes_max bytes on, never later."""
    p = parser(impl, header_max=1024)
    start = b"GET /livez HTTP/1.1\r\nHost: h\r\nX-A: "
    p.feed(GOOD * 20 + start, 0)
    head = len(start)
    with pytest.raises(HttpError) as e:
        while head <= 2 * 1024 + 1:
            p.feed(b"a" * 50, 1)
            head += 50
    assert e.value.error is errors.HEADERS_TOO_LARGE


def test_a_head_that_begins_after_a_body_is_not_charged_for_the_body(impl):
    body = b"b" * 3000
    post = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3000\r\n\r\n" + body
    head = b"GET /b HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * 900 + b"\r\n\r\n"  # under 1024
    p = parser(impl, header_max=1024, body_max=4096)
    got = p.feed(post + head[:100], 0)
    got += p.feed(head[100:], 1)
    assert [r.path for r in got] == ["/a", "/b"]


def test_two_host_headers_are_bad_request(impl):
    with pytest.raises(HttpError) as e:
        parser(impl).feed(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 0)
    assert (e.value.error, e.value.message) == (errors.BAD_REQUEST, "more than one Host header")


@pytest.mark.parametrize("host", [
    b"localhost:8080", b"127.0.0.1:8080", b"[::1]:8080", b"bench", b"example.com", b"", b"h:", b" h \t",
    b"a-b.c_d~e", b"%41b", b"x!$&'()*+,;=y", b"[v1.fe80::a+en1]", b"[::ffff:1.2.3.4]",
])
def test_valid_host_values_are_accepted(impl, host):
    [req] = parser(impl).feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 0)
    assert req.path == "/"


@pytest.mark.parametrize("host", [
    b"a/b@c d", b"a b", b"a/b", b"u@h", b"h:8x", b"h:80:80", b"[::1", b"::1]", b"[]", b"%4", b"%zz", b"h?q", b"h#f",
    b"\xe9", b"h\"",
])
def test_invalid_host_value_is_bad_request(impl, host):
    with pytest.raises(HttpError) as e:
        parser(impl).feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 0)
    assert (e.value.error, e.value.message) == (errors.BAD_REQUEST, "Host header is not host[:port]")


def test_no_100_continue_for_http10(impl):
    p = parser(impl)
    [req] = p.feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab", 0)
    assert p.interim == b"" and req.body == b"ab"


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"GZIP,chunked", b"identity", b"gzip", b"x\r\nTransfer-Encoding: chunked"])
def test_transfer_coding_other_than_chunked_is_not_implemented(impl, coding):
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + coding + b"\r\n\r\n2\r\nab\r\n0\r\n\r\n"
    with pytest.raises(HttpError) as e:
        parser(impl).feed(raw, 0)
    assert e.value.error is errors.NOT_IMPLEMENTED and e.value.error.status == 501


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",     # an HTTP/1 request line claiming 2.0
    # llhttp calls these keep-alive when they say so: they were served
    b"GET / HTTP/2.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/0.9\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/0.9\r\nHost: h\r\n\r\n",
    b"GET /\r\n\r\n",                          # HTTP/0.9: no version at all
])
def test_http_versions_other_than_1_are_505(impl, raw):
    with pytest.raises(HttpError) as e:
        parser(impl).feed(raw, 0)
    assert e.value.error is errors.HTTP_VERSION_NOT_SUPPORTED and e.value.error.status == 505


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
])
def test_http_1_with_and_without_keep_alive_is_served(impl, raw):
    [req] = parser(impl).feed(raw, 0)
    assert req.path == "/"


def test_chunked_not_last_is_bad_request(impl):
    with pytest.raises(HttpError) as e:
        parser(impl).feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 0)
    assert e.value.error is errors.BAD_REQUEST


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked ", b"CHUNKED"])
def test_chunked_in_any_case_is_decoded(impl, coding):
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + coding + b"\r\n\r\n2\r\nab\r\n0\r\n\r\n"
    [req] = parser(impl).feed(raw, 0)
    assert req.body == b"ab"


def test_requests_before_a_parse_error_are_handed_over(impl):
    good = b"GET /livez HTTP/1.1\r\nHost: h\r\n\r\n"
    with pytest.raises(HttpError) as e:
        parser(impl).feed(good + b"NOT HTTP AT ALL\r\n\r\n", 0)
    assert [r.path for r in e.value.requests] == ["/livez"]


def test_nothing_is_parsed_after_a_closing_request(impl):
    p = parser(impl)
    got = p.feed(b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", 0)
    assert [r.path for r in got] == ["/a"]
    assert p.feed(b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n", 0) == []


def test_absolute_form_target(impl):
    [req] = parser(impl).feed(b"GET http://127.0.0.1:8080/v1/status?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", 0)
    assert (req.path, req.query) == ("/v1/status", "x=1")


def test_each_request_s_host_is_checked_though_valid_ones_are_remembered(impl):
    p = parser(impl)
    assert len(p.feed(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n" * 2, 0)) == 2
    with pytest.raises(HttpError) as e:
        p.feed(b"GET / HTTP/1.1\r\nHost: a/b@c d\r\n\r\n", 0)
    assert (e.value.error, e.value.message) == (errors.BAD_REQUEST, "Host header is not host[:port]")


def test_http11_needs_host_http10_does_not(impl):
    with pytest.raises(HttpError) as e:
        parser(impl).feed(b"GET / HTTP/1.1\r\n\r\n", 0)
    assert e.value.error is errors.BAD_REQUEST
    [req] = parser(impl).feed(b"GET / HTTP/1.0\r\n\r\n", 0)
    assert not req.keep_alive


def test_head_response_has_no_body_but_its_length(impl):
    out = impl.response(405, b"12345", b"D", head=True)
    assert out.endswith(b"Content-Length: 5\r\n\r\n")


@pytest.mark.parametrize("value, media", [
    (b"application/json", b"application/json"),
    (b"Application/JSON; charset=UTF-8", b"application/json"),
    (b" \ttext/plain \t", b"text/plain"),
    (b"application/msgpack;", b"application/msgpack"),
    (b";x", b""),
    (b"A", b"a"),
    (b"a b ;c", b"a b"),
])
def test_content_type_is_the_media_type_folded(impl, value, media):
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: " + value + b"\r\nContent-Length: 0\r\n\r\n"
    [req] = parser(impl).feed(raw, 0)
    assert req.content_type == media


def test_header_names_match_in_any_case_and_only_whole(impl):
    raw = (b"POST / HTTP/1.1\r\nhOsT: h\r\nCONTENT-TYPE: X/Y\r\ncontent-length: 2\r\n"
           b"eXpEcT: 100-CONTINUE\r\nContent-Typo: a/b\r\nHosts: h\r\n\r\nab")
    p = parser(impl)
    [req] = p.feed(raw, 0)
    assert (req.content_type, req.body) == (b"x/y", b"ab")
    assert p.interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    # same lengths as the names we read, other names: ignored
    [req] = parser(impl).feed(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Typo: a/b\r\nExpecT: 100-continues\r\n\r\n", 0)
    assert req.content_type is None


def test_announced_length_at_the_limit_is_accepted(impl):
    p = parser(impl, body_max=10)
    [req] = p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789", 0)
    assert req.body == b"0123456789"
    with pytest.raises(HttpError) as e:
        parser(impl, body_max=10).feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0000000000000000000011\r\n\r\n", 0)
    assert e.value.error is errors.BODY_TOO_LARGE
    assert e.value.message == "body is larger than 10 bytes"


def test_body_in_many_pieces(impl):
    p = parser(impl)
    head = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\n"
    assert p.feed(head + b"ab", 0) == []
    assert p.feed(b"cd", 0) == []
    [req] = p.feed(b"ef", 0)
    assert req.body == b"abcdef"
    [req] = parser(impl).feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 0)
    assert req.body == b"" and req.content_type is None


def test_request_fields(impl):
    [req] = parser(impl).feed(b"HEAD /a%20b?q=1?2&x HTTP/1.1\r\nHost: h\r\n\r\n", 0)
    assert type(req) is Request
    assert (req.method, req.path, req.query, req.keep_alive) == (b"HEAD", "/a%20b", "q=1?2&x", True)


def test_in_request_and_errors_keep_started_at(impl):
    p = parser(impl, header_max=40)
    assert not p.in_request and p.started_at is None
    p.feed(b"GET /", 7)
    assert p.in_request and p.started_at == 7
    with pytest.raises(HttpError) as e:
        p.feed(b"x" * 50, 8)
    assert e.value.error is errors.HEADERS_TOO_LARGE and e.value.requests == []
    assert p.started_at == 7


def test_response_takes_bytes_like_and_refuses_the_rest(impl):
    out = impl.response(200, bytearray(b"ab"), memoryview(b"D"), b"text/plain", False, b"X: y\r\n", False)
    assert out == (b"HTTP/1.1 200 OK\r\nDate: D\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                   b"Connection: close\r\nX: y\r\n\r\nab")
    with pytest.raises(KeyError):
        impl.response(999, b"", b"D")
    with pytest.raises(TypeError):
        impl.response(200, b"", "D")
    with pytest.raises(TypeError):
        impl.response(200, None, b"D")


def test_response_length_digits(impl):
    for n in (0, 9, 10, 99, 100, 12345, 1_000_000):
        out = impl.response(200, b"x" * n, b"D", head=True)
        assert out.endswith(b"Content-Length: %d\r\n\r\n" % n)


# -- which implementation runs -------------------------------------------------

def test_implementation_in_this_process():
    assert http.IMPLEMENTATION == ("python" if PURE else "cython")
    expected = _http_py if PURE else _compiled()
    assert http.RequestParser is expected.RequestParser
    assert http.response is expected.response


def test_both_hand_out_the_same_classes():
    assert _http_py.HttpError is http.HttpError and _http_py.Request is http.Request
    compiled = _compiled()
    assert compiled.HttpError is http.HttpError and compiled.Request is http.Request


def test_stub_lists_exactly_the_public_names():
    tree = ast.parse((REPO / "ingest/_http.pyi").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    [cls] = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    members = {
        node.name if isinstance(node, ast.FunctionDef) else node.target.id
        for node in cls.body
        if isinstance(node, (ast.FunctionDef, ast.AnnAssign))
    } - {"__init__"}
    assert functions == {"response"} and cls.name == "RequestParser"
    for module in (_http_py, _compiled()):
        public = {n for n in dir(module.RequestParser) if not n.startswith("_")}
        assert members == public, module.__name__


def test_twin_imported_first_makes_no_cycle():
    result = run_python(
        "from ingest import _http_py\n"
        "from ingest import http\n"
        "assert http.RequestParser is _http_py.RequestParser\n"
        "print(http.IMPLEMENTATION)\n",
        pure=True,
    )
    assert result.stdout.strip() == "python", result.stderr


def test_implementation_is_cython_by_default():
    _compiled()
    result = run_python("from ingest import http; print(http.IMPLEMENTATION, http.RequestParser.__module__)", pure=False)
    assert result.stdout.strip() == "cython ingest._http", result.stderr




CHUNKED = (b"POST /v1/bindings HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n7\r\n" + BODY + b"\r\n0\r\n")


@pytest.mark.parametrize("trailer", [
    b"Authorization: Bearer a-token\r\n",  # RFC 9110 6.5.1: no credentials from a trailer
    b"Host: h\r\n",  # was "more than one Host header"
    b"Content-Type: text/plain\r\n",
])
def test_trailer_fields_are_not_request_headers(impl, trailer):
    [req] = parser(impl).feed(CHUNKED + trailer + b"\r\n", 0)
    assert (req.body, req.authorization, req.content_type) == (BODY, None, b"application/json")


def test_a_trailer_field_that_never_ends_hits_the_limit(impl):
    # httptools buffers it, a copy per piece, on the event loop: 25 MiB of it
    # stalled a server for 16 s.
    p = parser(impl, header_max=256)
    p.feed(CHUNKED + b"X-Long: ", 0)
    with pytest.raises(HttpError) as e:
        for _ in range(10):
            p.feed(b"a" * 64, 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE


def test_many_trailer_fields_hit_the_limit(impl):
    p = parser(impl, header_max=256)
    p.feed(CHUNKED, 0)
    with pytest.raises(HttpError) as e:
        for i in range(20):
            p.feed(b"X-%d: %s\r\n" % (i, b"a" * 30), 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE


def test_a_chunked_body_far_longer_than_the_header_limit_is_taken(impl):
    # Progress (each chunk) resets what the trailer limit counts.
    p = parser(impl, header_max=256, body_max=1 << 20)
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 0)
    got = []
    for _ in range(200):
        got += p.feed(b"40\r\n" + b"b" * 64 + b"\r\n", 0)
    got += p.feed(b"0\r\n\r\n", 0)
    assert [len(r.body) for r in got] == [200 * 64]
