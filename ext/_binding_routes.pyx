# cython: language_level=3
"""POST /v1/bindings and /v1/bindings/batch, compiled: the common cases.

``App.post_binding_py``, ``App.post_batch_py`` and the answers they build
(ingest/app.py, ingest/answers.py) are the plain-Python twin and the
reference: media type, decoding, the stateless checks of
rules.check_stateless, the commit, the answer. A JSON event that passes
every stateless check and is bound is most of a campaign's traffic, and for
it the twin walks a dozen Python frames per event; here it is one C function
on the way in and one on the way out, calling the same decoder, the same
code kernels and the same committer.

Anything else (another media type, a body that does not decode, a refused
code or clock, a duplicate or a refusal from the store, a draining server)
is handed to the twin, which answers it: the kernel never composes an
error, so it cannot word one differently (tests/test_binding_routes_kernel.py
compares the two answer by answer). In a batch that is done per item.
"""
import time

import msgspec

from ingest import errors, events, routes
from ingest.answers import BoundItem, batch_item, outcome_key
from ingest.codes import PERSON_OK, person_check, tube_classify
from ingest.committer import Work
from ingest.events import BindingEvent
from ingest.outcomes import Bound, Rejected

cdef object _decode_json = events._decoders[events.JSON][0].decode
cdef object _decode_batch = events.decode_batch
cdef object _BindingEvent = BindingEvent
cdef object _Bound = Bound
# The twin's encoder is msgspec's default JSON one too: the same bytes.
cdef object _encode_json = msgspec.json.Encoder().encode
cdef object _time_ns = time.time_ns
cdef tuple _BOUND_KEY = ("bound", "")
cdef bytes _JSON = b"application/json"
cdef bytes _POST = b"POST"
cdef str _PRIMARY = "primary"


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
    cdef long long now_ms, today
    cdef Py_ssize_t idx = 0
    if req.content_type != _JSON or app.draining:
        return app.post_binding_py(req, slot)
    try:
        ev = _decode_json(req.body)
    except Exception:
        return app.post_binding_py(req, slot)  # decodes again, answers why not
    if app.access is not None and app.access.site_scoped and not _on_site(app.token_sites(req), ev):
        return app.post_binding_py(req, slot)
    now_ms = _time_ns() // 1_000_000
    today = app._today if now_ms < app._today_until_ms else app._today_yyyymmdd(now_ms)
    if not _passes(app, ev, now_ms, today, app.schemes.table, &idx):
        return app.post_binding_py(req, slot)
    app.committer.submit(Work(((ev, app.schemes.labs[idx]),), _AnswerOne(app, slot)))


cdef inline bint _on_site(sites, ev):
    """App._off_site said nothing: the token scans for every site, or this one."""
    return sites is None or ev.site_id in sites


cdef inline bint _passes(app, ev, long long now_ms, long long today, tuple table, Py_ssize_t* idx):
    """rules.check_stateless said yes (the twin decides every other case)."""
    cdef long long scanned_at = ev.scanned_at
    idx[0] = tube_classify(ev.tube, table)
    return not (idx[0] < 0 or person_check(ev.person, today) != PERSON_OK
                or scanned_at > now_ms + <long long>app._future_ms or scanned_at < now_ms - <long long>app._age_ms)


cdef void _answer_batch(app, slot, list outcomes):
    """App._answer_batch: one result per event, in order; bound ones built here."""
    cdef list results = []
    cdef Py_ssize_t bound = 0
    counts = app.metrics.events
    for outcome in outcomes:
        if type(outcome) is _Bound:
            bound += 1
            results.append(BoundItem(outcome.event_id, outcome.tube, outcome.lab, outcome.count,
                                     outcome.pool_size, outcome.seq))
        else:
            counts[outcome_key(outcome)] += 1
            results.append(batch_item(outcome))
    if bound:
        counts[_BOUND_KEY] += bound
    slot.respond(200, _encode_json({"results": results}), _JSON)


cdef class _AnswerBatch:
    """The committer's callback for a batch: committed outcomes into their places."""

    cdef object app, slot
    cdef list outcomes, places

    def __cinit__(self, app, slot, list outcomes, list places):
        self.app = app
        self.slot = slot
        self.outcomes = outcomes
        self.places = places

    def __call__(self, list committed):
        cdef Py_ssize_t k
        for k in range(len(committed)):
            self.outcomes[<Py_ssize_t>self.places[k]] = committed[k]
        _answer_batch(self.app, self.slot, self.outcomes)


def post_batch(app, req, slot):
    cdef long long now_ms, today
    cdef Py_ssize_t i, n, idx = 0
    cdef list items, outcomes, queued, places
    if req.content_type != _JSON or app.draining:
        return app.post_batch_py(req, slot)
    try:
        items = _decode_batch(req.body, events.JSON)
    except Exception:
        return app.post_batch_py(req, slot)  # decodes again, answers why not
    now_ms = _time_ns() // 1_000_000
    today = app._today if now_ms < app._today_until_ms else app._today_yyyymmdd(now_ms)
    table = app.schemes.table
    labs = app.schemes.labs
    sites = app.token_sites(req) if app.access is not None and app.access.site_scoped else None
    n = len(items)
    outcomes = [None] * n
    queued = []
    places = []
    for i in range(n):
        item = items[i]
        if type(item) is not _BindingEvent:  # events.Malformed: why this item did not decode
            outcomes[i] = Rejected(errors.MALFORMED, item.message, item.field)
        elif _on_site(sites, item) and _passes(app, item, now_ms, today, table, &idx):
            queued.append((item, labs[idx]))
            places.append(i)
        else:
            work = app._binding_work(item, sites)  # the twin decides: a refusal, or a replay it recognises
            if type(work) is tuple:
                queued.append(work)
                places.append(i)
            else:
                outcomes[i] = work
    if not queued:
        app.when_replicated(outcomes, lambda: _answer_batch(app, slot, outcomes))
        return
    app.committer.submit(Work(queued, _AnswerBatch(app, slot, outcomes, places)))


# path -> (route name, handler, role it needs) of the routes this module
# compiles, read from the route tables (routes.EXACT, routes.ROLE_OF) so that
# a path and its role are named in one place only.
cdef dict _HOT = {
    path: (name, {"post_binding": post_binding, "post_batch": post_batch}[name], routes.ROLE_OF[name])
    for path, by_method in routes.EXACT.items()
    for method, name in by_method.items()
    if method == b"POST" and name in ("post_binding", "post_batch")
}


def handle(app, req, slot):
    """App.handle_py for the binding routes of a primary: the route table's
    lookup, the role check and a Python frame or three per request, skipped
    (the token is checked as there, when access control is on).
    Every other request goes to the twin, unchanged."""
    if req.method == _POST and app.role == _PRIMARY:
        hot = _HOT.get(req.path)
        if hot is not None:
            name, handler, role = hot
            slot.route = name
            access = app.access
            if access is not None:
                # A token seen before, with the role: one dict lookup (most
                # requests); anything else is App.authorize's to answer.
                # Access.roles' first step, inline (a friend of its _seen).
                roles = (<dict>access._seen).get(req.authorization)
                if (roles is None or role not in roles) and not app.authorize(req, slot, name):
                    return
            try:
                handler(app, req, slot)
            except Exception:
                app.handler_failed(name, slot)
            return
    app.handle_py(req, slot)
