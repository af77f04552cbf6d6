"""ingest.http without sockets: whole, byte by byte, pipelined, and every limit."""
import pytest

from ingest import errors
from ingest.http import HttpError, RequestParser, response

BODY = b'{"a":1}'
REQ = b"POST /v1/bindings?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 7\r\n\r\n" + BODY


def parser(header_max=16384, body_max=1024):
    return RequestParser(header_max, body_max)


def test_whole_request():
    [req] = parser().feed(REQ, 1.0)
    assert (req.method, req.path, req.query) == (b"POST", "/v1/bindings", "x=1")
    assert req.content_type == b"application/json"
    assert req.body == BODY
    assert req.keep_alive


def test_byte_by_byte_gives_the_same_request():
    p = parser()
    got = []
    for i in range(len(REQ)):
        got += p.feed(REQ[i:i + 1], float(i))
    assert len(got) == 1 and got[0].body == BODY and got[0].path == "/v1/bindings"


def test_pipelined_and_trailing_partial():
    p = parser()
    got = p.feed(REQ + REQ + REQ[:20], 1.0)
    assert len(got) == 2
    assert p.in_request and p.started_at == 1.0
    got = p.feed(REQ[20:], 2.0)
    assert len(got) == 1 and not p.in_request


def test_started_at_is_when_the_request_began():
    p = parser()
    p.feed(REQ[:5], 10.0)
    p.feed(REQ[5:30], 20.0)
    assert p.started_at == 10.0


def test_chunked_body():
    p = parser()
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    [req] = p.feed(raw, 0)
    assert req.body == b"abcde"


def test_connection_close():
    [req] = parser().feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 0)
    assert not req.keep_alive


def test_announced_oversize_body_is_refused_before_it_is_sent():
    with pytest.raises(HttpError) as e:
        parser(body_max=10).feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", 0)
    assert e.value.error is errors.BODY_TOO_LARGE


def test_chunked_oversize_body():
    with pytest.raises(HttpError) as e:
        parser(body_max=4).feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", 0)
    assert e.value.error is errors.BODY_TOO_LARGE


def test_oversize_headers():
    with pytest.raises(HttpError) as e:
        parser(header_max=64).feed(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100 + b"\r\n\r\n", 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE


def test_oversize_url():
    with pytest.raises(HttpError) as e:
        parser(header_max=64).feed(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
])
def test_garbage_is_bad_request(raw):
    with pytest.raises(HttpError) as e:
        parser().feed(raw, 0)
    assert e.value.error is errors.BAD_REQUEST


def test_upgrade_is_refused():
    with pytest.raises(HttpError) as e:
        parser().feed(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0)
    assert e.value.error is errors.BAD_REQUEST


def test_expect_continue_produces_interim_response():
    p = parser()
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 0)
    assert p.interim == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_repr_does_not_show_the_body():
    [req] = parser().feed(REQ, 0)
    assert "a" not in repr(req).split("bindings")[1].replace("B>", "")


def test_response_bytes():
    out = response(201, b"{}", b"DATE", keep_alive=False, extra=b"Allow: GET\r\n")
    assert out == (b"HTTP/1.1 201 Created\r\nDate: DATE\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 2\r\nConnection: close\r\nAllow: GET\r\n\r\n{}")
    assert b"Connection" not in response(200, b"", b"D")


def test_header_that_never_ends_hits_the_limit():
    p = parser(header_max=256)
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ", 0)
    with pytest.raises(HttpError) as e:
        for _ in range(10):
            p.feed(b"a" * 64, 0)
    assert e.value.error is errors.HEADERS_TOO_LARGE


def test_requests_before_a_parse_error_are_handed_over():
    good = b"GET /livez HTTP/1.1\r\nHost: h\r\n\r\n"
    with pytest.raises(HttpError) as e:
        parser().feed(good + b"NOT HTTP AT ALL\r\n\r\n", 0)
    assert [r.path for r in e.value.requests] == ["/livez"]


def test_nothing_is_parsed_after_a_closing_request():
    p = parser()
    got = p.feed(b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", 0)
    assert [r.path for r in got] == ["/a"]
    assert p.feed(b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n", 0) == []


def test_absolute_form_target():
    [req] = parser().feed(b"GET http://127.0.0.1:8080/v1/status?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", 0)
    assert (req.path, req.query) == ("/v1/status", "x=1")


def test_http11_needs_host_http10_does_not():
    with pytest.raises(HttpError) as e:
        parser().feed(b"GET / HTTP/1.1\r\n\r\n", 0)
    assert e.value.error is errors.BAD_REQUEST
    [req] = parser().feed(b"GET / HTTP/1.0\r\n\r\n", 0)
    assert not req.keep_alive


def test_head_response_has_no_body_but_its_length():
    out = response(405, b"12345", b"D", head=True)
    assert out.endswith(b"Content-Length: 5\r\n\r\n")
