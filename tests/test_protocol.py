"""ingest.protocol without sockets: a fake transport records what the
protocol writes, closes, aborts and pauses (tests/protocol_fakes.py).

Answers in order, one request at a time per connection, pipelining and its
back-pressure, Expect: 100-continue, Connection: close, HTTP/1.0, bad bytes,
timeouts, draining and the latency count. Every test runs against both
implementations: the compiled kernel ``ingest._protocol``
(``ext/_protocol.pyx``) and its plain-Python twin ``ingest._protocol_py``;
tests/test_protocol_kernel.py feeds both random streams and checks that they
agree call for call. tests/test_bad_input.py checks the same against real
servers.
"""
from __future__ import annotations

import asyncio
import os

import pytest
from helpers import compiled_kernel
from protocol_fakes import DATE, App, Server, connect

from ingest import _protocol_py, errors, protocol
from ingest.http import response

PURE = os.environ.get("INGEST_PURE_PYTHON") == "1"

def _compiled():
    return compiled_kernel("_protocol")


@pytest.fixture(params=["python", "cython"])
def impl(request):
    return _protocol_py if request.param == "python" else _compiled()


def test_the_switch_picks_the_implementation():
    expected = _protocol_py if PURE else _compiled()
    assert protocol.HttpProtocol is expected.HttpProtocol and protocol.Slot is expected.Slot
    assert protocol.IMPLEMENTATION == ("python" if PURE else "cython")


def get(path: str = "/x", extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + path.encode() + b" " + version + b"\r\nHost: h\r\n" + extra + b"\r\n"


def post(path: str = "/x", body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


def answer(method: bytes, path: str, n: int = 0, keep_alive: bool = True, head: bool = False) -> bytes:
    body = b'{"m":"%s","p":"%s","n":%d}' % (method, path.encode(), n)
    return response(201 if method == b"POST" else 200, body, DATE, b"application/json", keep_alive, b"", head)


def test_one_request_one_answer(impl):
    conn, t = connect(impl, server := Server())
    conn.data_received(get("/a"))
    assert t.calls == [("write", answer(b"GET", "/a"))]
    assert not conn.pending and not conn.waiting and not conn.closing
    assert conn in server.connections


def test_split_at_every_byte_gives_the_same_bytes(impl):
    stream = get("/a") + post("/b", b"hello") + get("/c")
    whole, t_whole = connect(impl, Server())
    whole.data_received(stream)
    for cut in range(1, len(stream)):
        conn, t = connect(impl, Server())
        conn.data_received(stream[:cut])
        conn.data_received(stream[cut:])
        assert t.written() == t_whole.written(), cut
    assert t_whole.written() == answer(b"GET", "/a") + answer(b"POST", "/b", 5) + answer(b"GET", "/c")


def test_pipelined_requests_wait_for_the_one_before(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later1") + get("/now") + post("/later2", b"xy"))
    assert t.calls == [] and len(conn.pending) == 1 and len(conn.waiting) == 2
    assert server.app.handled == [(b"GET", "/later1")]
    server.app.answer_later(0)
    # /now is answered at once, then /later2 is handed over and waits
    assert t.written() == answer(b"GET", "/later1") + answer(b"GET", "/now")
    assert server.app.handled[-1] == (b"POST", "/later2") and not conn.waiting
    server.app.answer_later(0)
    assert t.written().endswith(answer(b"POST", "/later2", 2))


def test_a_long_pipeline_answered_at_once_does_not_recurse(impl):
    """Each immediate answer hands over the next request from the dispatch
    loop, not from inside the answer: 2000 pipelined requests in one read
    once overflowed the Python stack (RecursionError, connection lost)."""
    conn, t = connect(impl, Server())
    conn.data_received(get("/a") * 2000)
    assert t.written() == answer(b"GET", "/a") * 2000
    assert not conn.waiting and not conn.pending


def test_connection_close_is_answered_then_closed(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/a", b"Connection: close\r\n") + get("/b"))
    assert t.calls == [("write", answer(b"GET", "/a", keep_alive=False)), ("close",)]
    assert conn.closing
    conn.data_received(get("/c"))
    assert len(t.calls) == 2 and server.app.handled == [(b"GET", "/a")]


def test_a_half_closed_client_gets_its_answers_then_the_close(impl):
    # a one-shot client sends its requests, then shuts its sending side
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later1") + get("/b"))
    assert conn.eof_received() is True  # asyncio keeps the transport open for the answers
    assert t.calls == [] and not conn.closing
    server.app.answer_later(0)
    assert t.calls == [("write", answer(b"GET", "/later1")), ("write", answer(b"GET", "/b")), ("close",)]
    assert conn.closing


def test_a_half_closed_tls_client_leaves_the_close_to_the_tls_layer(impl):
    # TLS cannot stay half-open: uvloop closes after its close_notify
    # whatever eof_received returns, and logs a warning for a True.
    server = Server()
    conn, t = connect(impl, server, tls=True)
    conn.data_received(get("/later1"))
    assert conn.eof_received() is None
    server.app.answer_later(0)  # written if the TLS layer still takes it
    assert t.calls == [("write", answer(b"GET", "/later1")), ("close",)]


def test_eof_with_everything_answered_closes_at_once(impl):
    conn, t = connect(impl, Server())
    conn.data_received(get("/a"))
    assert conn.eof_received() is None  # asyncio closes the transport itself
    assert t.calls == [("write", answer(b"GET", "/a"))]


def test_eof_in_the_middle_of_a_request_is_a_400_after_those_before(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later1") + post("/b", b"hello")[:-2])
    assert conn.eof_received() is True
    assert t.calls == []
    server.app.answer_later(0)
    assert t.calls[0] == ("write", answer(b"GET", "/later1"))
    assert t.calls[1][1].startswith(b"HTTP/1.1 400 Bad Request") and b"in the middle of a request" in t.calls[1][1]
    assert t.calls[2] == ("close",)
    assert server.app.handled == [(b"GET", "/later1")]  # the cut request was never handed over


def test_http10_closes_unless_keep_alive(impl):
    conn, t = connect(impl, Server())
    conn.data_received(get("/a", version=b"HTTP/1.0"))
    assert t.calls == [("write", answer(b"GET", "/a", keep_alive=False)), ("close",)]
    conn, t = connect(impl, Server())
    conn.data_received(get("/a", b"Connection: keep-alive\r\n", version=b"HTTP/1.0"))
    assert t.calls == [("write", answer(b"GET", "/a"))]


def test_head_answer_has_no_body(impl):
    conn, t = connect(impl, Server())
    conn.data_received(b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert t.calls == [("write", answer(b"HEAD", "/a", head=True))]


def test_bad_bytes_after_good_requests_answer_them_first(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later") + get("/b") + b"GARBAGE\r\n\r\n")
    assert t.calls == []
    server.app.answer_later(0)
    data = t.written()
    assert data.startswith(answer(b"GET", "/later") + answer(b"GET", "/b") + b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in data and t.calls[-1] == ("close",)
    assert server.metrics.latency["unparsed"].counts and sum(server.metrics.latency["unparsed"].counts) == 1
    conn.data_received(get("/c"))
    assert server.app.handled == [(b"GET", "/later"), (b"GET", "/b")]


def test_oversize_body_is_413_and_closed(impl):
    conn, t = connect(impl, Server(body_bytes_max=4))
    conn.data_received(post("/a", b"12345"))
    assert t.written().startswith(b"HTTP/1.1 413 ") and t.calls[-1] == ("close",)


def test_expect_100_continue_is_sent_when_nothing_is_before_it(impl):
    conn, t = connect(impl, Server())
    conn.data_received(post("/a", b"", b"Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: 3"))
    assert t.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]
    conn.data_received(b"abc")
    assert t.calls[1:] == [("write", answer(b"POST", "/a", 3))]


def test_expect_100_continue_behind_an_unanswered_request_is_omitted(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later") + post("/a", b"", b"Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: 3"))
    assert t.calls == []
    server.app.answer_later(0)
    conn.data_received(b"abc")
    assert t.written() == answer(b"GET", "/later") + answer(b"POST", "/a", 3)


def test_deep_pipeline_pauses_reading_until_half_is_answered(impl):
    server = Server(pipeline_depth_max=4)
    conn, t = connect(impl, server)
    conn.data_received(get("/later") * 6)
    assert t.calls == [("pause_reading",)] and len(conn.waiting) == 5
    for left in range(5, 0, -1):
        server.app.answer_later(0)
        assert len(conn.waiting) == left - 1
        resumed = ("resume_reading",) in t.calls
        assert resumed == (left - 1 < 4 // 2 + 1)
    assert t.calls.count(("resume_reading",)) == 1


def test_a_client_that_does_not_read_is_not_read(impl):
    conn, t = connect(impl, Server())
    conn.pause_writing()
    assert t.calls == [("pause_reading",)]
    conn.pause_writing()
    assert t.calls == [("pause_reading",)]
    conn.resume_writing()
    assert t.calls == [("pause_reading",), ("resume_reading",)]


def test_writing_paused_keeps_reading_paused_after_answers(impl):
    server = Server(pipeline_depth_max=2)
    conn, t = connect(impl, server)
    conn.data_received(get("/later") * 3)
    conn.pause_writing()
    server.app.answer_later(0)
    # while writing is paused nothing more is handed over, nor read
    assert len(server.app.handled) == 1 and len(conn.waiting) == 2
    assert ("resume_reading",) not in t.calls
    conn.resume_writing()
    assert len(server.app.handled) == 2 and len(conn.waiting) == 1
    assert t.calls[-1] == ("resume_reading",)


def test_a_client_that_does_not_read_is_handed_nothing_more(impl):
    # The answers of requests already read are not made while the client
    # takes none: that would only grow the transport's buffer.
    server = Server()
    conn, t = connect(impl, server, high_water=len(answer(b"GET", "/a")) - 1)
    conn.data_received(b"".join(get(f"/a{i}") for i in range(6)))
    assert t.calls == [("write", answer(b"GET", "/a0")), ("pause_reading",)]
    assert len(server.app.handled) == 1 and len(conn.waiting) == 5
    for i in range(1, 6):
        t.drain()  # the client takes one answer: one more is made
        assert len(server.app.handled) == i + 1 and t.buffered == len(answer(b"GET", f"/a{i}"))
    t.drain()
    assert t.written() == b"".join(answer(b"GET", f"/a{i}") for i in range(6))
    assert t.calls[-1] == ("resume_reading",) and t.calls.count(("resume_reading",)) == 1


def test_a_client_that_does_not_read_is_aborted_after_the_keepalive_time(impl):
    server = Server()
    conn, t = connect(impl, server, high_water=10)
    conn.data_received(get("/a") * 3 + b"GET / HTTP/1.1\r\n")
    assert t.calls[-1] == ("pause_reading",) and len(conn.waiting) == 2
    conn.idle_check(server.now + 74, 10.0, 75.0)  # no 408 either: it could not be read
    assert t.calls[-1] == ("pause_reading",)
    conn.idle_check(server.now + 76, 10.0, 75.0)
    assert t.calls[-1] == ("abort",) and conn.closing and not conn.waiting and not conn.pending
    conn.idle_check(server.now + 200, 10.0, 75.0)
    assert t.calls.count(("abort",)) == 1


def test_a_closing_connection_whose_answers_are_not_read_is_aborted(impl):
    # transport.close() waits until the buffer is written, which a client
    # that does not read never lets happen.
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/a", b"Connection: close\r\n"))
    assert t.calls[-1] == ("close",) and conn.closing
    server.now += 50
    conn.close()  # closed again (draining does so): the clock is not restarted
    conn.idle_check(server.now + 24, 10.0, 75.0)
    assert t.calls[-1] == ("close",)
    conn.idle_check(server.now + 26, 10.0, 75.0)
    assert t.calls[-1] == ("abort",)
    conn.idle_check(server.now + 100, 10.0, 75.0)
    assert t.calls.count(("abort",)) == 1


def test_no_408_while_the_server_does_not_read(impl):
    # pipeline_depth_max reached: the rest of the request waits unread in
    # the socket; its clock starts again when reading resumes.
    server = Server(pipeline_depth_max=2)
    conn, t = connect(impl, server)
    conn.data_received(get("/later") * 3 + b"GET / HTTP/1.1\r\n")
    assert t.calls == [("pause_reading",)] and conn.parser.started_at == 100.0
    conn.idle_check(server.now + 30, 10.0, 75.0)
    assert t.calls == [("pause_reading",)]
    server.now += 30
    server.app.answer_later(0)
    assert t.calls[-1] == ("resume_reading",)
    server.app.answer_later(0)
    server.app.answer_later(0)
    conn.idle_check(server.now + 9, 10.0, 75.0)
    assert t.written() == answer(b"GET", "/later") * 3 and not conn.closing
    conn.idle_check(server.now + 11, 10.0, 75.0)
    assert t.written().startswith(answer(b"GET", "/later") * 3 + b"HTTP/1.1 408 Request Timeout\r\n")
    assert t.calls[-1] == ("close",)


def test_slow_request_gets_408(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(b"GET / HTTP/1.1\r\n")
    conn.idle_check(server.now + 5, 10.0, 75.0)
    assert t.calls == []
    conn.idle_check(server.now + 11, 10.0, 75.0)
    assert t.written().startswith(b"HTTP/1.1 408 Request Timeout\r\n") and t.calls[-1] == ("close",)
    assert b"request not completed within 10 s" in t.written()


def test_idle_keepalive_is_closed_but_not_while_answering(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later"))
    conn.idle_check(server.now + 100, 10.0, 75.0)
    assert t.calls == []
    server.app.answer_later(0)
    conn.idle_check(server.now + 74, 10.0, 75.0)
    assert t.calls[-1][0] == "write"
    conn.idle_check(server.now + 76, 10.0, 75.0)
    assert t.calls[-1] == ("close",) and conn.closing


def test_fail_answers_after_what_was_received(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later"))
    conn.fail(errors.REQUEST_TIMEOUT, "stop")
    assert t.calls == []
    server.app.answer_later(0)
    assert t.written().startswith(answer(b"GET", "/later") + b"HTTP/1.1 408 ")
    assert t.calls[-1] == ("close",)


def test_too_many_connections_and_draining_are_refused(impl):
    server = Server(connections_max=1)
    first, t1 = connect(impl, server)
    second, t2 = connect(impl, server)
    assert t1.calls == [] and t2.calls == [("abort",)] and second.transport is None
    assert server.connections == {first}
    first.connection_lost(None)
    assert server.connections == set() and first.transport is None
    server.draining = True
    _, t3 = connect(impl, server)
    assert t3.calls == [("abort",)]


def test_answers_while_draining_close_the_connection(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later") + get("/b"))
    server.draining = True
    server.app.answer_later(0)
    # /b, read behind /later, is answered too (the app answers a write
    # 503 shutting_down while draining); the last answer closes.
    assert t.calls == [("write", answer(b"GET", "/later")), ("write", answer(b"GET", "/b", keep_alive=False)),
                       ("close",)]


def test_a_draining_connection_with_nothing_behind_closes_after_its_answer(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later"))
    server.draining = True
    server.app.answer_later(0)
    assert t.calls == [("write", answer(b"GET", "/later", keep_alive=False)), ("close",)]


def test_an_answer_after_the_client_left_is_counted_not_written(impl):
    server = Server()
    conn, t = connect(impl, server)
    conn.data_received(get("/later"))
    conn.connection_lost(None)
    server.app.answer_later(0)
    assert t.calls == [] and sum(server.metrics.latency["route/la"].counts) == 1


def test_latency_is_counted_by_route(impl):
    server = Server()
    conn, _ = connect(impl, server)
    conn.data_received(get("/a") * 3 + get("/bb"))
    latency = server.metrics.latency
    assert sum(latency["route/a"].counts) == 3 and sum(latency["route/bb"].counts) == 1
    assert latency["route/a"].total >= 0.0 and sum(latency["route/a"].counts[:3]) == 3  # < 0.5 ms each


def test_a_failing_handler_raises_out_of_data_received(impl):
    server = Server()
    conn, t = connect(impl, server)
    with pytest.raises(RuntimeError, match="handler failed: /raise"):
        conn.data_received(get("/raise") + get("/b"))
    assert len(conn.pending) == 1 and len(conn.waiting) == 1 and t.calls == []


def test_slot_attributes_and_respond(impl):
    server = Server()
    conn, t = connect(impl, server)
    slot = impl.Slot(conn, True)
    assert (slot.conn, slot.keep_alive, slot.data, slot.route, slot.head) == (conn, True, None, "", False)
    assert isinstance(slot.started, float)
    slot.route = "r"
    conn.pending.append(slot)
    slot.respond(202, b"{}", content_type=b"text/plain", extra=b"X: y\r\n")
    expected = response(202, b"{}", DATE, b"text/plain", True, b"X: y\r\n", False)
    assert slot.data == expected and t.calls == [("write", expected)]
    head = impl.Slot(conn, False, head=True)
    assert head.head and not head.keep_alive
    conn.pending.append(head)
    head.respond(200, b"abc")
    assert t.calls[-2:] == [("write", response(200, b"abc", DATE, b"application/json", False, b"", True)), ("close",)]


def test_protocol_attributes(impl):
    server = Server()
    conn, t = connect(impl, server)
    assert conn.transport is t and conn.server is server and conn.app is server.app
    assert conn.last_active == server.now and not conn.closing
    assert conn.parser.started_at is None
    server.now += 1
    conn.data_received(b"G")
    assert conn.last_active == server.now and conn.parser.in_request
    conn.close()
    assert conn.closing and t.calls == [("close",)]
    conn.close()
    assert t.calls == [("close",), ("close",)]


def test_app_is_used(impl):
    app = App()
    conn, _ = connect(impl, Server(app))
    conn.data_received(get("/z"))
    assert app.handled == [(b"GET", "/z")]


def test_asyncio_runs_it_over_a_socket(impl):
    """A real loop and socket: asyncio only calls the protocol's methods (the
    compiled HttpProtocol is no asyncio.Protocol subclass). uvloop does the
    same in tests/test_bad_input.py's servers."""

    async def main():
        server = Server()
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: impl.HttpProtocol(server), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/a") + get("/b", b"Connection: close\r\n"))
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        listener.close()
        await listener.wait_closed()
        return data, server

    data, server = asyncio.run(main())
    assert data == answer(b"GET", "/a") + answer(b"GET", "/b", keep_alive=False)
    assert server.connections == set()
