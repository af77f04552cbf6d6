# cython: language_level=3
"""The asyncio HTTP protocol (compiled twin of ``ingest._protocol_py``).

Every request of the server passes through here: ``data_received`` feeds
the parser, ``_dispatch`` makes a ``Slot`` and calls the app, the app calls
``Slot.respond``, which counts the latency, writes the answer bytes and
``flush``es them in order. As ``cdef class``es on typed fields this is C
between the two places the interpreter must be entered (the app's handler
and the transport's write): the slot is made without running ``__init__``,
the deques' methods are bound once per connection, ``respond`` reads the
clock with ``clock_gettime`` and counts the latency in C (see
``_observe``), and ``response()`` is the HTTP kernel's.

Behaviour is the twin's, call for call on the transport; the twin is the
reference (read it first) and tests/test_protocol_kernel.py holds this
module to it. ``HttpProtocol`` is not an ``asyncio.Protocol`` subclass (a
``cdef class`` cannot derive from a Python class): asyncio's transports and
uvloop's only call the protocol's methods (uvloop 0.23,
``UVBaseTransport._set_protocol`` / ``UVStream._set_protocol``: an
``isinstance`` check only to detect buffered and SSL protocols).
"""

cimport cython
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import time
import types
from bisect import bisect_left
from collections import defaultdict, deque

from ingest import errors
from ingest.errors import error_json
from ingest.http import HttpError, RequestParser, response
from ingest.metrics import LatencyCounter

cdef extern from "Python.h":
    PyObject *PyDict_GetItemWithError(object d, object key) except? NULL
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member

cdef extern from "structmember.h":
    int T_OBJECT_EX
    int READONLY

_REQUEST_TIMEOUT = errors.REQUEST_TIMEOUT
_perf = time.perf_counter

# -- the clock ------------------------------------------------------------------

# time.perf_counter() is clock_gettime(CLOCK_MONOTONIC) on Linux; read it
# directly where the interpreter says so, else call it.
cdef bint _clock_direct = time.get_clock_info("perf_counter").implementation == "clock_gettime(CLOCK_MONOTONIC)"


cdef inline double _now() except? -1.0:
    cdef timespec ts
    if _clock_direct:
        clock_gettime(CLOCK_MONOTONIC, &ts)
        # as time.perf_counter() converts: nanoseconds as a double, / 1e9
        return <double>(<long long>ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9
    return _perf()

# -- the latency count ------------------------------------------------------------

# ingest.metrics.LatencyCounter.observe(seconds) is
#     self.counts[bisect_left(self.bounds, seconds)] += 1; self.total += seconds
# Done here in C on the counter's slots: a binary search on the bounds kept as
# doubles, the count and the total replaced in place, the very same objects
# /metrics reads. Used only when the class still has exactly those three
# slots and the result on probe values is observe()'s own (checked at import,
# below); otherwise, and for any counter, bounds or values out of the
# ordinary, observe() itself is called.
cdef Py_ssize_t _off_bounds = -1, _off_counts = -1, _off_total = -1
cdef bint _observe_direct = False
cdef object _bounds_seen = None  # the bounds tuple _bounds holds, kept alive
cdef double _bounds[64]
cdef Py_ssize_t _bounds_n = 0


cdef Py_ssize_t _slot_offset(cls, str name) except -2:
    desc = cls.__dict__.get(name)
    if type(desc) is not types.MemberDescriptorType:
        return -1
    cdef PyMemberDef *member = (<PyMemberDescrObject *>desc).d_member
    if member.type != T_OBJECT_EX or member.flags & READONLY:
        return -1
    return member.offset


cdef inline PyObject *_slot(obj, Py_ssize_t offset) noexcept:
    return (<PyObject **>((<char *><PyObject *>obj) + offset))[0]


cdef bint _bounds_usable(bounds) except -1:
    """Whether `bounds` are (now) in _bounds: a tuple of floats."""
    global _bounds_seen, _bounds_n
    cdef Py_ssize_t i, n
    if bounds is _bounds_seen:
        return True
    if type(bounds) is not tuple:
        return False
    n = PyTuple_GET_SIZE(bounds)
    if n > 64:
        return False
    for i in range(n):
        if not PyFloat_CheckExact(<object>PyTuple_GET_ITEM(bounds, i)):
            return False
    for i in range(n):
        _bounds[i] = PyFloat_AS_DOUBLE(<object>PyTuple_GET_ITEM(bounds, i))
    _bounds_n = n
    _bounds_seen = bounds
    return True


cdef int _observe(latency, route, double seconds) except -1:
    """latency[route].observe(seconds)"""
    cdef PyObject *found = NULL
    cdef PyObject *p
    cdef Py_ssize_t lo = 0, hi, mid
    cdef object hist, counts, count, total, old
    if type(latency) is defaultdict or type(latency) is dict:
        found = PyDict_GetItemWithError(latency, route)
    hist = <object>found if found != NULL else latency[route]  # a defaultdict's miss makes one
    if not _observe_direct or type(hist) is not LatencyCounter:
        hist.observe(seconds)
        return 0
    p = _slot(hist, _off_bounds)
    if p == NULL or not _bounds_usable(<object>p):
        hist.observe(seconds)
        return 0
    hi = _bounds_n
    while lo < hi:  # bisect_left
        mid = (lo + hi) // 2
        if _bounds[mid] < seconds:
            lo = mid + 1
        else:
            hi = mid
    counts = <object>_slot(hist, _off_counts) if _slot(hist, _off_counts) != NULL else None
    p = _slot(hist, _off_total)
    if (type(counts) is not list or lo >= PyList_GET_SIZE(counts) or p == NULL or not PyFloat_CheckExact(<object>p)
            or not PyLong_CheckExact(<object>PyList_GET_ITEM(counts, lo))):
        hist.observe(seconds)
        return 0
    count = <object>PyList_GET_ITEM(counts, lo) + 1
    total = PyFloat_AS_DOUBLE(<object>p) + seconds
    # Only now is anything changed: the new objects exist, nothing can fail.
    counts[lo] = count
    old = <object>p  # a reference of our own while the slot lets go of its one
    Py_INCREF(total)
    (<PyObject **>((<char *><PyObject *>hist) + _off_total))[0] = <PyObject *>total
    Py_DECREF(old)
    return 0


def _observe_py(latency, route, double seconds):
    """_observe, for tests: latency[route].observe(seconds), done as respond() does it."""
    _observe(latency, route, seconds)


def _observe_is_direct():
    """Whether _observe works on LatencyCounter's slots (else calls observe)."""
    return _observe_direct


cdef bint _check_observe() except -1:
    """The direct count is observe() on probe values, slot for slot."""
    global _off_bounds, _off_counts, _off_total, _observe_direct
    if getattr(LatencyCounter, "__slots__", None) != ("bounds", "counts", "total"):
        return False
    _off_bounds = _slot_offset(LatencyCounter, "bounds")
    _off_counts = _slot_offset(LatencyCounter, "counts")
    _off_total = _slot_offset(LatencyCounter, "total")
    if _off_bounds < 0 or _off_counts < 0 or _off_total < 0:
        return False
    probes = [0.0, 1e-05, 0.0001, 0.00010000001, 0.0004, 0.0025, 0.7, 5.0, 5.5, 1e9, -1.0, 0.0001]
    theirs, ours = {"r": LatencyCounter()}, {"r": LatencyCounter()}
    _observe_direct = True
    for seconds in probes:
        theirs["r"].observe(seconds)
        _observe(ours, "r", seconds)
    _observe_direct = False
    a, b = theirs["r"], ours["r"]
    return a.bounds == b.bounds and a.counts == b.counts and a.total == b.total


_observe_direct = _check_observe()

# -- the protocol -------------------------------------------------------------------


@cython.final
@cython.freelist(64)
cdef class Slot:
    """The place of one request's answer on its connection."""

    cdef public HttpProtocol conn
    cdef public bint keep_alive
    cdef public object data
    cdef public object route
    cdef public double started
    cdef public bint head

    def __init__(self, HttpProtocol conn not None, keep_alive, head=False):
        self.conn = conn
        self.keep_alive = keep_alive
        self.data = None
        self.route = ""
        self.started = _now()
        self.head = head

    cpdef respond(self, status, body, content_type=b"application/json", extra=b""):
        cdef HttpProtocol conn = self.conn
        cdef bint keep
        if conn is None:
            raise AttributeError("'NoneType' object has no attribute 'server'")
        server = conn.server
        _observe(server.metrics.latency, self.route, _now() - self.started)
        if conn.transport is None:
            return  # the client left; a committed event stays committed
        # See the twin: a draining connection closes after its last request.
        keep = self.keep_alive and (not server.draining or len(conn.waiting) > 0)
        self.keep_alive = keep
        self.data = response(status, body, server.date, content_type, keep, extra, self.head)
        conn.flush()


cdef inline object _data(slot):
    return (<Slot>slot).data if type(slot) is Slot else slot.data


cdef inline Slot _new_slot(HttpProtocol conn, bint keep_alive, bint head):
    """Slot(conn, keep_alive, head) without the call of __init__."""
    cdef Slot slot = Slot.__new__(Slot)
    slot.conn = conn
    slot.keep_alive = keep_alive
    slot.route = ""
    slot.started = _now()
    slot.head = head
    return slot


@cython.final
cdef class HttpProtocol:
    cdef public object server, app, transport, parser
    cdef public object last_active
    cdef public bint closing
    # Why the byte stream broke; answered after every request before it.
    cdef public object _failed
    cdef public bint _reading_paused, _writing_paused
    cdef public Py_ssize_t _depth_max
    # True while _dispatch runs: see the twin.
    cdef public bint _dispatching
    # The clocks of idle_check: see the twin.
    cdef public object _read_resumed_at, _stalled_since, _closed_at
    cdef public bint _eof  # the client half-closed: answer what it sent, then close
    # pending: handed to the app, not yet written; waiting: parsed, not yet
    # handed over. Deques, with the methods used per request bound once.
    cdef object _pending, _waiting
    cdef object _pending_append, _pending_popleft, _waiting_append, _waiting_popleft, _waiting_extend

    def __init__(self, server):
        self.server = server
        self.app = server.app
        limits = server.config.limits
        self.parser = RequestParser(limits.header_bytes_max, limits.body_bytes_max)
        self.transport = None
        self.pending = deque()
        self.waiting = deque()
        self.last_active = server.now
        self.closing = False
        self._failed = None
        self._reading_paused = False
        self._writing_paused = False
        self._depth_max = limits.pipeline_depth_max
        self._dispatching = False
        self._read_resumed_at = None
        self._stalled_since = None
        self._closed_at = None
        self._eof = False

    @property
    def pending(self):
        return self._pending

    @pending.setter
    def pending(self, value):
        self._pending = value
        self._pending_append = value.append
        self._pending_popleft = value.popleft

    @property
    def waiting(self):
        return self._waiting

    @waiting.setter
    def waiting(self, value):
        self._waiting = value
        self._waiting_append = value.append
        self._waiting_popleft = value.popleft
        self._waiting_extend = value.extend

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport):
        server = self.server
        if len(server.connections) >= server.config.limits.connections_max or server.draining:
            transport.abort()
            return
        self.transport = transport
        server.connections.add(self)

    def connection_lost(self, exc):
        self.transport = None
        self.server.connections.discard(self)

    def eof_received(self):
        # Answer what a half-closed client sent, then close: see the twin.
        if self.closing or self.transport is None:
            return None
        self._eof = True
        if self.parser.in_request and self._failed is None:
            self.fail(errors.BAD_REQUEST, "the client closed its side of the connection in the middle of a request")
        elif not self._pending and not self._waiting and self._failed is None:
            return None
        return None if self.transport.get_extra_info("sslcontext") is not None else True

    def data_received(self, data):
        if self.closing or self._failed is not None:
            return
        now = self.server.now
        self.last_active = now
        parser = self.parser
        try:
            requests = parser.feed(data, now)
        except HttpError as exc:
            self._waiting_extend(exc.requests)
            self._failed = exc
            self._dispatch()
            return
        if requests:
            if type(requests) is list:  # what the parser returns; one append is cheaper than extend()
                for req in <list>requests:
                    self._waiting_append(req)
            else:
                self._waiting_extend(requests)
            self._dispatch()
            if len(self._waiting) >= self._depth_max:
                self._pause_reading()
        if parser.interim:
            # A 100 must not overtake the answers of the requests before it:
            # see the twin.
            if not self._pending and not self._waiting and parser.in_request and self.transport is not None:
                self.transport.write(parser.interim)
            parser.interim = b""

    cdef int _dispatch(self) except -1:
        cdef Slot slot
        if self._dispatching:
            return 0
        self._dispatching = True
        try:
            waiting = self._waiting
            app = self.app
            # Nothing is handed over while writing is paused: see the twin.
            while not self._pending and not self.closing and not self._writing_paused:
                if waiting:
                    req = self._waiting_popleft()
                    slot = _new_slot(self, req.keep_alive, req.method == b"HEAD")
                    self._pending_append(slot)
                    app.handle(req, slot)
                elif self._failed is not None:
                    # Answer the bad request, then close: after a framing error
                    # the byte stream cannot be trusted.
                    exc = self._failed
                    slot = _new_slot(self, False, False)
                    slot.route = "unparsed"
                    self._pending_append(slot)
                    slot.respond(exc.error.status, error_json(exc.error, exc.message))
                else:
                    return 0
        finally:
            self._dispatching = False
        return 0

    def pause_writing(self):
        # The client does not read its answers: stop reading its requests,
        # and handing them over (_dispatch).
        if not self._writing_paused:
            self._writing_paused = True
            self._stalled_since = self.server.now
        self._pause_reading()

    def resume_writing(self):
        self._writing_paused = False
        self._stalled_since = None
        if self.transport is not None and not self._pending and (self._waiting or self._failed is not None):
            self._dispatch()
        self._maybe_resume_reading()

    # -- answers -------------------------------------------------------------

    cpdef flush(self):
        pending = self._pending
        transport = self.transport
        while pending and _data(pending[0]) is not None:
            slot = self._pending_popleft()
            transport.write(_data(slot))
            if not (<Slot>slot).keep_alive if type(slot) is Slot else not slot.keep_alive:
                self.close()
                return
        self.last_active = self.server.now
        if not pending and (self._waiting or self._failed is not None or self._eof):
            if not self._waiting and self._failed is None:
                self.close()  # half-closed, and everything it sent is answered
                return
            self._dispatch()
        if self._reading_paused:
            self._maybe_resume_reading()

    cpdef fail(self, error, message):
        """Answer `error` after every request already received, then close."""
        if self._failed is None:
            self._failed = HttpError(error, message)
        self._dispatch()

    cpdef close(self):
        if not self.closing:
            self.closing = True
            self._closed_at = self.server.now
        self._pending.clear()
        self._waiting.clear()
        if self.transport is not None:
            self.transport.close()

    cdef int _abort(self) except -1:
        # Drops what is not yet written: connection_lost follows.
        self.closing = True
        self._closed_at = None
        self._pending.clear()
        self._waiting.clear()
        self.transport.abort()
        return 0

    cdef int _pause_reading(self) except -1:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        return 0

    cdef int _maybe_resume_reading(self) except -1:
        if (self._reading_paused and not self._writing_paused and not self.closing
                and len(self._waiting) < self._depth_max // 2 + 1 and self.transport is not None):
            self._reading_paused = False
            self._read_resumed_at = self.server.now
            self.transport.resume_reading()
        return 0

    # -- timers (called by the server's tick) ----------------------------------

    def idle_check(self, now, request_s, keepalive_s):
        if self.transport is None:
            return
        if self.closing:
            # A client that never reads its answers: see the twin.
            if self._closed_at is not None and now - self._closed_at > keepalive_s:
                self._abort()
            return
        if self._writing_paused:
            if now - self._stalled_since > keepalive_s:
                self._abort()
            return
        if self._failed is not None:
            return
        started = self.parser.started_at
        if started is not None:
            # The request's clock runs only while the server reads: see the twin.
            if self._reading_paused:
                return
            resumed = self._read_resumed_at
            if resumed is not None and resumed > started:
                started = resumed
            if now - started > request_s:
                self.fail(_REQUEST_TIMEOUT, f"request not completed within {request_s:g} s")
        elif not self._pending and not self._waiting and now - self.last_active > keepalive_s:
            self.close()
