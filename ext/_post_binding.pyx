# cython: language_level=3
"""POST /v1/bindings, compiled: the common case only.

``App.post_binding_py`` and ``App._answer_one`` (ingest/app.py) are the
plain-Python twin and the reference: media type, decoding, the stateless
checks of rules.check_stateless, the commit, the answer. A JSON event that
passes every stateless check and is bound is most of a campaign's traffic,
and for it the twin walks a dozen Python frames; here it is one C function
on the way in and one on the way out, calling the same decoder, the same
code kernels and the same committer.

Anything else (another media type, a body that does not decode, a refused
code or clock, a duplicate or a refusal from the store, a draining server)
is handed to the twin, which answers it: the kernel never composes an
error, so it cannot word one differently (tests/test_post_binding_kernel.py
compares the two answer by answer).
"""
import time

import msgspec

from ingest import events
from ingest.codes import PERSON_OK, person_check, tube_classify
from ingest.committer import Work
from ingest.outcomes import Bound

cdef object _decode_json = events._decoders[events.JSON][0].decode
cdef object _Bound = Bound
# The twin's encoder is msgspec's default JSON one too: the same bytes.
cdef object _encode_json = msgspec.json.Encoder().encode
cdef object _time_ns = time.time_ns
cdef tuple _BOUND_KEY = ("bound", "")
cdef bytes _JSON = b"application/json"


cdef class _AnswerOne:
    """The committer's callback for one bound-or-not event (the twin's lambda)."""

    cdef object app, slot

    def __cinit__(self, app, slot):
        self.app = app
        self.slot = slot

    def __call__(self, list outcomes):
        outcome = outcomes[0]
        if type(outcome) is not _Bound:
            self.app._answer_one(self.slot, events.JSON, outcomes)
            return
        self.app.metrics.events[_BOUND_KEY] += 1
        self.slot.respond(201, _encode_json(outcome), _JSON)


def post_binding(app, req, slot):
    cdef long long now_ms, scanned_at, today
    cdef Py_ssize_t idx
    if req.content_type != _JSON or app.draining:
        return app.post_binding_py(req, slot)
    try:
        ev = _decode_json(req.body)
    except Exception:
        return app.post_binding_py(req, slot)  # decodes again, answers why not
    now_ms = _time_ns() // 1_000_000
    today = app._today if now_ms < app._today_until_ms else app._today_yyyymmdd(now_ms)
    idx = tube_classify(ev.tube, app.schemes.table)
    scanned_at = ev.scanned_at
    if (idx < 0 or person_check(ev.person, today) != PERSON_OK
            or scanned_at > now_ms + <long long>app._future_ms or scanned_at < now_ms - <long long>app._age_ms):
        return app.post_binding_py(req, slot)
    app.committer.submit(Work(((ev, app.schemes.labs[idx]),), _AnswerOne(app, slot)))
