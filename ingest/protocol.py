"""The asyncio side of HTTP: moves bytes between a socket and
ingest.http.RequestParser, one request at a time per connection.

A pipelined request is handled only once the one before it is answered:
a GET after a POST on the same connection must see the POST's commit, and
HTTP allows concurrent handling only of safe methods. Throughput comes from
many connections and from the batch endpoint, not from pipelining. Each
request's answer goes through a `Slot`, which also times it.

Back-pressure and timers: reading pauses at `pipeline_depth_max` waiting
requests and while the client does not take its answers (pause_writing);
in the latter case no further request is handed to the app either, so one
connection's buffers stay bounded. `idle_check` answers 408 to a request not
completed within `request_s` of reading time (the clock stops while reading
is paused and restarts when it resumes), closes a keep-alive connection idle
for `keepalive_s`, and aborts one whose client has taken no answer for
`keepalive_s` (writing paused) or that is still not closed `keepalive_s`
after close() (its last answers unread).

    HttpProtocol(server)           # what loop.create_server's factory returns
    app.handle(request, slot)      # called for each request, in order
    slot.respond(status, body, content_type=b"application/json", extra=b"")
    slot.route = "..."             # the latency histogram's label (set by the app)
    conn.idle_check(now, request_s, keepalive_s), conn.fail(error, message), conn.close()

`HttpProtocol` and `Slot` run in a compiled kernel (``ext/_protocol.pyx`` ->
``ingest._protocol``); ``INGEST_PURE_PYTHON=1`` swaps in the plain-Python
twin ``ingest._protocol_py`` (same behaviour, call for call on the
transport, slower). ``IMPLEMENTATION`` says which one runs. The compiled
`HttpProtocol` is not an `asyncio.Protocol` subclass (a ``cdef class``
cannot derive from a Python class); asyncio and uvloop only call its methods.
"""
from __future__ import annotations

from ingest import kernels

_impl = kernels.load("_protocol", "_protocol_py")
IMPLEMENTATION = kernels.IMPLEMENTATION

__all__ = ["IMPLEMENTATION", "HttpProtocol", "Slot"]

HttpProtocol = _impl.HttpProtocol
Slot = _impl.Slot
