"""The compiled HTTP kernel against its Python twin, on random input.

Random streams of valid and malformed requests (pipelined, cut at arbitrary
byte boundaries, oversize heads and bodies, heads that begin inside a feed and
never end, missing, repeated and invalid Host, Expect: 100-continue (also on
HTTP/1.0), transfer codings other than chunked, absolute-form targets,
Connection: close, HTTP/1.0, upgrades, chunked bodies, garbage) are fed to
``ingest._http_py.RequestParser`` and
``ingest._http.RequestParser`` side by side. After every feed both must
have returned the same requests (every slot, with its type) or raised the
same error (type, code, message, the requests attached), and agree on
``in_request``, ``started_at`` and ``interim``. ``response()`` must give the
same bytes, or the same exception, for random arguments.
"""
from __future__ import annotations

import itertools
import os
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest import _http_py
from ingest.http import HttpError, Request

try:
    from ingest import _http as _http_c
except ImportError as exc:
    _http_c = None
    if os.environ.get("INGEST_PURE_PYTHON") == "1":
        pytestmark = pytest.mark.skip(f"ingest._http is not importable ({exc}); INGEST_PURE_PYTHON=1 tests the twin only")
    else:
        raise

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- a request, piece by piece --------------------------------------------------

TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
VALUE = TOKEN + " \t;=/,.:\"*"
URL_CHARS = "abcXYZ019-._~%/?=&+:@!$'()*,;#"


def _cases(name: str):
    """`name` in a few spellings: llhttp and we must match names in any case."""
    return st.sampled_from([name, name.lower(), name.upper(), name.swapcase()])


methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "FOO", "get"])
versions = st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0"] * 2 + ["HTTP/2.0", "HTTP/9.9", "HTTX/1.1"])
origin_targets = st.text(URL_CHARS, max_size=30).map(lambda s: "/" + s)
absolute_targets = st.one_of(
    st.sampled_from([
        "http://127.0.0.1:8080/v1/status?x=1", "http://h", "http://h/", "https://x.y/z?", "http://h?q",
        "*", "//x/y", "http:/bad", "h:80", "http://[::1]:9/p?a=b#f", "http://u@h/p",
    ]),
    st.text(URL_CHARS, min_size=1, max_size=20).map(lambda s: "http://host" + ("/" if s[0] != "/" else "") + s),
)
targets = st.one_of(origin_targets, origin_targets, absolute_targets)
content_types = st.one_of(
    st.sampled_from([
        "application/json", "application/json; charset=utf-8", "Application/JSON", " text/plain \t",
        "application/msgpack;", ";", "", "A", "a b ;c", "APPLICATION/X-MSGPACK ; q=1",
    ]),
    st.text(VALUE, max_size=24),
)
# valid and invalid Host values (RFC 9112 3.2: uri-host [":" port])
hosts = st.one_of(
    st.sampled_from(["h", "127.0.0.1:8080", "", "[::1]:8080", "example.com", "h:", " h ", "%41", "[v1.x]",
                     "a/b@c d", "h:8x", "[::1", "u@h", "%zz", "h:1:2", "a b"]),
    st.text(URL_CHARS + " []", max_size=12),
)
other_headers = st.tuples(
    st.one_of(
        st.text(TOKEN, min_size=1, max_size=16),
        # the lengths of the names we read, other names
        st.sampled_from(["Hoss", "Hosts", "Content-Typo", "Content-Lengthy", "Expecs", "X-Host", "Authorisation",
                         "Authorizations"]),
    ),
    st.text(VALUE, max_size=40),
)


@st.composite
def requests(draw) -> bytes:
    """One request: mostly well-formed, else with one or more knobs turned
    to what the parser must refuse or treat specially."""
    odd = draw(st.sampled_from([False] * 3 + [True] * 2))
    method = draw(methods) if odd else draw(st.sampled_from(["GET", "POST", "POST", "HEAD"]))
    target = draw(targets) if odd else draw(origin_targets)
    version = draw(versions) if odd else draw(st.sampled_from(["HTTP/1.1"] * 3 + ["HTTP/1.0"]))
    body = draw(st.binary(max_size=80))
    headers: list[tuple[str, str]] = []
    if not odd or draw(st.booleans()):  # a missing Host now and then
        headers.append((draw(_cases("Host")), draw(hosts if odd else st.sampled_from(["h", "127.0.0.1:8080", ""]))))
    if odd and draw(st.sampled_from([False] * 3 + [True])):  # a second Host
        headers.append((draw(_cases("Host")), draw(hosts)))
    if draw(st.booleans()):
        headers.append((draw(_cases("Content-Type")), draw(content_types)))
    framings = ["length", "none", "chunked"] + (["wrong length", "odd length"] if odd else [])
    framing = draw(st.sampled_from(framings))
    if framing == "length":
        headers.append((draw(_cases("Content-Length")), str(len(body))))
    elif framing == "wrong length":
        # around the body limits the test draws (0, 5, 40, 1024), or anything
        near_limits = st.sampled_from([0, 1, 5, 6, 40, 41, 1024, 1025])
        headers.append(("Content-Length", str(draw(st.one_of(near_limits, st.integers(0, 300))))))
    elif framing == "odd length":
        headers.append(("Content-Length", draw(st.sampled_from(
            ["x", "-1", "1_0", " 5", "5 ", "0005", "99999999999999999999999", "18446744073709551615", "", "1,1"]))))
    elif framing == "chunked":
        coding = draw(st.sampled_from(["chunked", "gzip, chunked", "identity", "Chunked ", "chunked, gzip", "x,chunked"])) if odd else "chunked"
        headers.append((draw(_cases("Transfer-Encoding")), coding))
    if draw(st.sampled_from([False] * 3 + [True])):
        headers.append((draw(_cases("Expect")), draw(st.sampled_from(["100-continue", "100-Continue", "100-continues", "200-ok"]))))
    if draw(st.sampled_from([False] * 2 + [True])):
        connection = ["close", "keep-alive", "Close"] + (["Upgrade", "upgrade, keep-alive"] if odd else [])
        headers.append((draw(_cases("Connection")), draw(st.sampled_from(connection))))
    if odd and draw(st.sampled_from([False] * 3 + [True])):
        headers.append(("Upgrade", "websocket"))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2] if odd else [0, 1]))):  # a second one is a 400
        headers.append((draw(_cases("Authorization")),
                        draw(st.sampled_from(["Bearer abc", "bearer  abc ", "Basic eA==", "", "Bearer"]))))
    headers += draw(st.lists(other_headers, max_size=3))
    headers = draw(st.permutations(headers))
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    raw = head.encode("latin-1")
    if framing == "chunked":
        chunks = draw(st.lists(st.binary(min_size=1, max_size=30), max_size=3))
        raw += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        ends = [b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n"] + ([b"zz\r\n"] if odd else [])
        raw += draw(st.sampled_from(ends))
    elif framing != "none":
        raw += body
    return raw


garbage = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"GARBAGE\r\n\r\n", b"\x00\x01\x02\r\n\r\n", b"GET / HTTP/1.1\r\nHost h\r\n\r\n", b"\r\n"]),
)
# garbage one piece in four; a stream is 1-5 pieces back to back (pipelined)
streams = st.lists(st.one_of(requests(), requests(), requests(), garbage), min_size=1, max_size=5).map(b"".join)

# -- comparing outcomes ---------------------------------------------------------


def _request(req: Request):
    return tuple((slot, type(getattr(req, slot)), getattr(req, slot)) for slot in Request.__slots__)


def _state(parser):
    return (parser.in_request, type(parser.started_at), parser.started_at, parser.interim)


def _feed(parser, data, now):
    try:
        got = parser.feed(data, now)
    except HttpError as exc:
        outcome = ("HttpError", exc.error, exc.message, str(exc), exc.args, [_request(r) for r in exc.requests])
    except Exception as exc:  # noqa: BLE001 - any other exception must be the same one too
        outcome = ("raised", type(exc), str(exc))
    else:
        assert type(got) is list
        outcome = ("returned", [_request(r) for r in got])
    return outcome, _state(parser)


def _cuts(stream: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(stream), *(p % (len(stream) + 1) for p in points)})
    return [stream[a:b] for a, b in itertools.pairwise(edges)] or [b""]


@BOUNDED
@given(
    stream=streams,
    points=st.lists(st.integers(0, 10_000), max_size=8),
    header_max=st.sampled_from([24, 64, 128, 512, 16_384, 16_384, 16_384]),
    body_max=st.sampled_from([0, 5, 40, 1024, 1024]),
    clear_interim=st.booleans(),
    int_clock=st.booleans(),
    view=st.booleans(),
)
@example(stream=b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab" * 2,
         points=[60], header_max=16_384, body_max=1024, clear_interim=False, int_clock=True, view=False)
@example(stream=b"GET http://h/p?q HTTP/1.1\r\nHost: h\r\n\r\nGET * HTTP/1.1\r\nHost: h\r\n\r\n",
         points=[], header_max=16_384, body_max=1024, clear_interim=True, int_clock=False, view=False)
# A head that begins after a request in the same feed and never ends; a second
# Host; a bad Host; Expect on HTTP/1.0; a coding other than chunked.
@example(stream=b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * 300,
         points=[100, 150], header_max=128, body_max=1024, clear_interim=False, int_clock=False, view=True)
@example(stream=b"GET / HTTP/1.1\r\nHost: h\r\nHOST: h\r\n\r\n", points=[], header_max=16_384, body_max=1024,
         clear_interim=False, int_clock=False, view=False)
@example(stream=b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\nGET / HTTP/1.1\r\nHost: a/b@c d\r\n\r\n", points=[],
         header_max=16_384, body_max=1024, clear_interim=False, int_clock=False, view=False)
@example(stream=b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
         b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
         points=[], header_max=16_384, body_max=1024, clear_interim=False, int_clock=False, view=False)
# The kernel's own paths, each once for sure: media types cut, stripped and
# folded; Content-Length digits, odd spellings and the limit +-1; Expect in
# any case; names of the lengths we read; a body in pieces; HTTP/1.0.
@example(stream=b"".join(
    b"POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Type: " + ct + b"\r\nContent-Length: 0\r\n\r\n"
    for ct in (b"a b ;c", b"text/plain \t", b"APPLICATION/X-MSGPACK ; q=1", b"A", b";", b"x/y"))
    + b"POST / HTTP/1.1\r\nhost: h\r\nEXPECT: 100-Continue\r\nContent-length: 0005\r\n\r\n" + b"x" * 5
    + b"POST / HTTP/1.1\r\nHoss: h\r\nHost: h\r\nContent-Typo: a\r\nContent-Length: 40\r\n\r\n" + b"y" * 40
    + b"GET / HTTP/1.0\r\nContent-Length: 41\r\n\r\n",  # refused before its body
    points=[30, 200, 201, 260, 400, 402, 500], header_max=16_384, body_max=40,
    clear_interim=False, int_clock=False, view=False)
def test_twins_agree_on_any_stream(stream, points, header_max, body_max, clear_interim, int_clock, view):
    twin = _http_py.RequestParser(header_max, body_max)
    kernel = _http_c.RequestParser(header_max, body_max)
    assert _state(twin) == _state(kernel)
    # Feeding goes on after an error: what each does then must agree too.
    for i, piece in enumerate(_cuts(stream, points)):
        now = i if int_clock else i + 0.5
        data = memoryview(piece) if view else piece
        assert _feed(kernel, data, now) == _feed(twin, data, now), (i, piece)
        if clear_interim:
            twin.interim = kernel.interim = b""


@BOUNDED
@given(stream=streams)
def test_byte_by_byte_is_the_same_as_whole(stream):
    """Each implementation, fed one byte at a time, hands out what it does for
    the whole stream (up to the first error), and the twins agree."""
    seen = []
    for module in (_http_py, _http_c):
        whole, one = module.RequestParser(512, 1024), module.RequestParser(512, 1024)
        got_whole, err_whole = [], None
        try:
            got_whole = whole.feed(stream, 0.0)
        except HttpError as exc:
            got_whole, err_whole = exc.requests, exc.error
        got_one, err_one = [], None
        for i in range(len(stream)):
            try:
                got_one += one.feed(stream[i:i + 1], float(i))
            except HttpError as exc:
                got_one += exc.requests
                err_one = exc.error
                break
        whole_requests = [_request(r) for r in got_whole]
        one_requests = [_request(r) for r in got_one]
        # A limit may trip on a different byte, never on different requests.
        assert one_requests == whole_requests[:len(one_requests)]
        if err_whole is None and err_one is None:
            assert one_requests == whole_requests
        seen.append((whole_requests, err_whole, one_requests, err_one, _state(one)))
    assert seen[0] == seen[1]


statuses = st.one_of(st.sampled_from([s.value for s in HTTPStatus]), st.integers(-1, 1000))
byte_strings = st.one_of(st.binary(max_size=60), st.binary(max_size=60).map(bytearray),
                         st.binary(max_size=8).map(memoryview))
flags = st.one_of(st.booleans(), st.sampled_from([0, 1, None, "", "x", b"", [], [0]]))


@BOUNDED
@given(
    status=statuses,
    body=st.one_of(st.binary(max_size=300), byte_strings, st.sampled_from([None, "text", 5])),
    date=st.one_of(st.binary(max_size=40), byte_strings, st.just("Mon, 01 Jan 2026 00:00:00 GMT")),
    content_type=st.one_of(st.binary(max_size=40), byte_strings),
    keep_alive=flags,
    extra=st.one_of(st.binary(max_size=60), byte_strings, st.just(None)),
    head=flags,
    positional=st.booleans(),
)
def test_response_is_byte_equal(status, body, date, content_type, keep_alive, extra, head, positional):
    def outcome(module):
        try:
            if positional:
                return module.response(status, body, date, content_type, keep_alive, extra, head)
            return module.response(status, body, date, content_type=content_type,
                                   keep_alive=keep_alive, extra=extra, head=head)
        except Exception as exc:  # noqa: BLE001
            return ("raised", type(exc), str(exc))

    expected = outcome(_http_py)
    got = outcome(_http_c)
    assert type(got) is type(expected) and got == expected


@BOUNDED
@given(status=st.sampled_from([s.value for s in HTTPStatus]), body=st.binary(max_size=100), date=st.binary(max_size=30))
def test_response_defaults_are_the_same(status, body, date):
    assert _http_c.response(status, body, date) == _http_py.response(status, body, date)
    assert _http_c.response(status, body, date, head=True) == _http_py.response(status, body, date, head=True)
