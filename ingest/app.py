"""Request handlers: from a parsed request to an answer.

Writes go: decode (msgspec) -> stateless checks (rules.check_stateless) ->
the committer queue -> rules.apply_binding in a group commit -> answer.
The GET routes of the data are reads.py's, the node's own routes (status,
promotion, health) node_routes.py's: both are parts of App.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

import msgspec

from ingest import boxes, errors, kernels, lifecycle, results, routes
from ingest.access import Access
from ingest.codes import LAB_INVALID_TUBE, LAB_UNKNOWN
from ingest.answers import batch_item, encode_json, outcome_body, outcome_key
from ingest.committer import Committer, Work
from ingest.config import Config, tube_schemes
from ingest.errors import ErrorCode, error_body, error_json
from ingest.events import (
    JSON,
    MSGPACK,
    BindingEvent,
    BoxEvent,
    HandoverEvent,
    Malformed,
    ReceiveEvent,
    ResultEvent,
    SealEvent,
    TubeReceiveEvent,
    VoidEvent,
    decode_batch,
    decode_event,
    decode_lifecycle,
    decode_results,
)
from ingest.http import Request
from ingest.metrics import Metrics
from ingest.node_routes import NodeRoutes
from ingest.reads import NO_STORE, Reads
from ingest.rules import (
    Duplicate,
    Rejected,
    apply_binding,
    check_stateless,
)
from ingest.store import Store

# Each lifecycle event's own time, checked against the clock (App._refusal).
_EVENT_TIME = {
    SealEvent: "sealed_at", VoidEvent: "voided_at", BoxEvent: "packed_at", HandoverEvent: "handed_at",
    ReceiveEvent: "received_at", TubeReceiveEvent: "received_at", ResultEvent: "tested_at",
}

# The events a lab posts: their lab_id must be a configured lab (App._refusal).
_LAB_EVENTS = (ReceiveEvent, TubeReceiveEvent, ResultEvent)

log = logging.getLogger("ingest.app")

_MEDIA = {b"application/json": JSON, b"application/msgpack": MSGPACK, b"application/x-msgpack": MSGPACK}
_ENCODERS = {JSON: encode_json, MSGPACK: msgspec.msgpack.Encoder().encode}
_CONTENT_TYPE = {JSON: b"application/json", MSGPACK: b"application/msgpack"}
_encode_json = _ENCODERS[JSON]
# RFC 9110 11.6.1: a 401 says which scheme the route takes.
_CHALLENGE = b'WWW-Authenticate: Bearer realm="ingest"\r\n'


def local_day(now_ms: int) -> tuple[int, int]:
    """(the local date as YYYYMMDD, the Unix ms at which the next local day
    begins). A day is not always 86400 s: one with a DST change has 23 or 25
    hours, so the next midnight is asked of mktime (day + 1 normalizes across
    months and years; isdst -1 takes the offset in force then)."""
    now = time.localtime(now_ms / 1000)
    midnight = time.mktime((now.tm_year, now.tm_mon, now.tm_mday + 1, 0, 0, 0, 0, 0, -1))
    return now.tm_year * 10000 + now.tm_mon * 100 + now.tm_mday, int(midnight) * 1000


class App(Reads, NodeRoutes):
    def __init__(self, config: Config, store: Store, committer: Committer | None, metrics: Metrics):
        self.config = config
        self.store = store
        self.committer = committer
        self.metrics = metrics
        self.schemes = tube_schemes(config.labs)
        # None: no token configured, every route open (loopback, or a proxy in front: server.check_access)
        self.access = Access({t.sha256: frozenset(t.roles) for t in config.access.tokens},
                             {t.sha256: frozenset(t.labs) for t in config.access.tokens if t.labs is not None},
                             {t.sha256: frozenset(t.sites) for t in config.access.tokens if t.sites is not None}) \
            if config.access.tokens else None
        self.draining = False
        # "primary" takes writes; "standby" follows one; "fenced": a former
        # primary that learned of a higher epoch (kept in the store, so that
        # a restart does not bring it back). Only a primary takes writes.
        self.role = "fenced" if store.fenced_at else "primary"
        self.primary_address = ""
        self.follower = None
        self._telling: asyncio.Task | None = None  # after a promotion: keep_telling_promoted
        self._fencing: asyncio.Future | None = None  # the fence on its way to disk (node_routes.fence)
        # One promotion at a time: a second request (a retry, two operators)
        # waits for the first and is answered by the state it left.
        self._promotion = asyncio.Lock()
        self._promotions: set[asyncio.Task] = set()  # promote requests being served
        self.hub = None
        self.gate = None
        self._future_ms = config.future_ms_max
        self._age_ms = config.age_ms_max
        self._window_ms = config.person_window_ms
        self._today = 0
        self._today_until_ms = 0

    # -- the shared pieces ------------------------------------------------

    def apply(self, tx, item: tuple):
        """What the committer runs per event: (binding, lab) goes to the
        binding rules, (lifecycle event, its apply function) to that."""
        ev, arg = item
        if type(ev) is BindingEvent:
            return apply_binding(tx, ev, arg, self._window_ms)
        return arg(tx, ev)

    def _today_yyyymmdd(self, now_ms: int) -> int:
        # Birth dates are checked against the local date; recomputed once a day
        # boundary passes, not per event.
        if now_ms >= self._today_until_ms:
            self._today, self._today_until_ms = local_day(now_ms)
        return self._today

    def _count(self, outcome) -> None:
        self.metrics.events[outcome_key(outcome)] += 1

    def _media(self, req: Request, slot) -> str | None:
        media = _MEDIA.get(req.content_type) if req.content_type else None
        if media is None:
            self._error(slot, errors.UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json or application/msgpack")
        return media

    def _error_body(self, slot, code: ErrorCode, message: str, extra: dict | None) -> None:
        slot.respond(code.status, _encode_json(error_body(code, message, None, extra)))

    def _error(self, slot, code: ErrorCode, message: str, field: str | None = None, extra: bytes = b"") -> None:
        if slot.route in routes.PERSON_DATA:
            extra += NO_STORE
        slot.respond(code.status, error_json(code, message, field), extra=extra)

    def _stateless(self, ev: BindingEvent) -> Rejected | Duplicate | str:
        now_ms = time.time_ns() // 1_000_000
        lab = check_stateless(ev, self.schemes, now_ms, self._today_yyyymmdd(now_ms), self._future_ms, self._age_ms)
        if type(lab) is Rejected:
            # A phone replaying a scan the server already took, after the
            # scan aged past the window (or the lab table changed), must hear
            # "duplicate", not a refusal of what is stored. Rare path: one read.
            seen = self.store.event(ev.event_id)
            if seen is not None and seen.payload == list(msgspec.structs.astuple(ev)):
                return Duplicate(ev.event_id, seen.original or ev.event_id, ev.tube, seen.count, seen.seq)
        return lab

    def when_replicated(self, outcomes: list, answer: Callable[[], None]) -> None:
        """Answer outcomes made without the committer: at once, unless one is
        a duplicate read from the store and sync replication is on. A
        duplicate says "the server has it", so in sync mode it waits at the
        gate like an answer from a commit does: the event it names may not be
        on a standby yet (its first answer may still be waiting there).

        `answer()` must answer from `outcomes` as they are when it runs: if
        the node is fenced while it waits, each duplicate in the list is
        replaced by a 503 not_primary refusal first (the new primary may
        not have the event; the client sends it there again)."""
        gate = self.committer.gate
        if gate is None or not any(type(o) is Duplicate for o in outcomes):
            answer()
            return

        def refuse() -> None:
            from ingest.committer import REPLACED

            for i, outcome in enumerate(outcomes):
                if type(outcome) is Duplicate:
                    outcomes[i] = REPLACED
            answer()

        seq = max(o.seq for o in outcomes if type(o) is Duplicate)
        gate.park(max(seq, self.store.last_seq), answer, refuse)  # the gate's queue is in seq order

    # -- dispatch ----------------------------------------------------------

    def handle_py(self, req: Request, slot) -> None:
        """Route a request to its handler. The plain-Python twin of the
        compiled handle (ext/_binding_routes.pyx), which takes the binding
        routes of a primary (most requests) itself and hands every other here."""
        target = routes.resolve(req.method, req.path)
        if type(target) is ErrorCode:
            slot.route = "unknown"
            extra = b""
            if target is errors.METHOD_NOT_ALLOWED:
                extra = f"Allow: {routes.allowed(req.path)}\r\n".encode()
            # Not the path itself: it may hold a person code (logs and
            # answers never show one in full), and the client knows it.
            self._error(slot, target, f"{req.method.decode(errors='replace')}: {target.doc}", extra=extra)
            return
        name, param = target
        slot.route = name
        if self.access is not None and not self.authorize(req, slot, name):
            return
        if self.role != "primary" and req.method == b"POST" and name != "post_promote":
            self._error_body(slot, errors.NOT_PRIMARY, f"this node is {self.role}; write to the primary",
                             {"primary": self.primary_address} if self.primary_address else None)
            return
        try:
            if param is None:
                getattr(self, name)(req, slot)
            else:
                getattr(self, name)(req, slot, param)
        except Exception:
            self.handler_failed(name, slot)

    def authorize(self, req: Request, slot, name: str) -> bool:
        """Whether the request's token may call the handler `name`; if not,
        it is answered here: 401 without a known token, 403 without the role."""
        need = routes.ROLE_OF[name]
        if need is None:
            return True
        roles = self.access.roles(req.authorization)
        if roles is None:
            self.metrics.access_refused.labels(name, errors.UNAUTHORIZED.code).inc()
            # Not "which token was wrong": the answer must not help a guesser.
            self._error(slot, errors.UNAUTHORIZED,
                        "send Authorization: Bearer <token>, a token this server knows"
                        if req.authorization is None else "the bearer token is not one this server knows",
                        extra=_CHALLENGE)
            return False
        if need not in roles:
            self.metrics.access_refused.labels(name, errors.FORBIDDEN.code).inc()
            self._error(slot, errors.FORBIDDEN,
                        f"this token may not call {routes.ROUTE_OF[name]}: that needs the {need} role")
            return False
        return True

    def handler_failed(self, name: str, slot) -> None:
        """A handler raised: log it, and answer 500 unless it answered already."""
        log.exception("handler %s failed", name)
        if slot.data is None:
            self._error(slot, errors.INTERNAL_ERROR, "the server failed to handle the request")

    # -- writes ------------------------------------------------------------

    def post_binding_py(self, req: Request, slot) -> None:
        """POST /v1/bindings. The plain-Python twin of ext/_binding_routes.pyx,
        which runs the common case compiled and hands every other to this."""
        media = self._media(req, slot)
        if media is None:
            return
        try:
            ev = decode_event(req.body, media)
        except Malformed as m:
            self._answer_one(slot, media, [Rejected(errors.MALFORMED, m.message, m.field)])
            return
        lab = self._off_site(self.token_sites(req), ev.site_id, "post_binding") or self._stateless(ev)
        if type(lab) is not str:
            outcomes = [lab]  # when_replicated may replace it (fenced while waiting)
            self.when_replicated(outcomes, lambda: self._answer_one(slot, media, outcomes))
            return
        if self.draining:
            self._error(slot, errors.SHUTTING_DOWN, "server is shutting down; retry on another server")
            return
        self.committer.submit(Work(((ev, lab),), lambda outs: self._answer_one(slot, media, outs)))

    def _answer_one(self, slot, media: str, outcomes: list) -> None:
        outcome = outcomes[0]
        self._count(outcome)
        status, body = outcome_body(outcome)
        slot.respond(status, _ENCODERS[media](body), _CONTENT_TYPE[media])

    def post_batch_py(self, req: Request, slot) -> None:
        """POST /v1/bindings/batch. The plain-Python twin of
        ext/_binding_routes.pyx, which runs it compiled."""
        sites = self.token_sites(req)
        self._post_items(req, slot, decode_batch, lambda ev: self._binding_work(ev, sites))

    def post_results(self, req: Request, slot) -> None:
        labs = self._token_labs(req)
        self._post_items(req, slot, decode_results, lambda ev: self._outside(labs, ev, "post_results")
                         or self._refusal(ev) or (ev, results.apply_result))

    def _token_labs(self, req: Request) -> frozenset[str] | None:
        """The labs the request's token acts for; None: every lab."""
        return None if self.access is None else self.access.labs(req.authorization)

    def _outside(self, labs: frozenset[str] | None, ev, name: str) -> Rejected | None:
        """A lab event for a lab its token does not act for: access control,
        so before everything else, a retry of a stored event too."""
        if labs is None or ev.lab_id in labs:
            return None
        self.metrics.access_refused.labels(name, errors.FORBIDDEN.code).inc()
        return Rejected(errors.FORBIDDEN, f"this token acts for lab {', '.join(sorted(labs))}, not for "
                                          f"{ev.lab_id}", "lab_id")

    def token_sites(self, req: Request) -> frozenset[str] | None:
        """The sites the request's token scans for; None: every site."""
        return None if self.access is None else self.access.sites(req.authorization)

    def _off_site(self, sites: frozenset[str] | None, site_id: str | None, name: str) -> Rejected | None:
        """A scan event for a site its token does not scan for: access
        control, so before everything else, as _outside is for labs."""
        if sites is None or site_id in sites:
            return None
        self.metrics.access_refused.labels(name, errors.FORBIDDEN.code).inc()
        return Rejected(errors.FORBIDDEN, f"this token scans for site {', '.join(sorted(sites))}, not for "
                                          f"{site_id}", "site_id")

    def _site_of(self, ev) -> str | None:
        """The site a void or a hand-over acts at, which its body does not
        name: the site of the tube of the binding it voids (not the
        binding's own site_id: a pair duplicate sent for another site voids
        the original), of the box it hands over; each fixed once stored.
        None when that is not stored (yet)."""
        with self.store.view() as view:
            if type(ev) is VoidEvent:
                bound = view.event(ev.binding_event_id)
                found = view.tube(bound.payload[3]) if bound is not None and bound.kind == "binding" else None
                return None if found is None else found[0].site_id  # payload in BindingEvent order: tube 3
            box = view.box(ev.box)
            return None if box is None else box.site_id

    def _refusal(self, ev) -> Rejected | None:
        """A lifecycle event's refusals that need no write transaction: its
        own time outside the window scanned_at has (rules.check_stateless);
        for a receipt, a lab id that is not configured, or that owns none of
        the box's tubes (a typo would otherwise use up the box's one receipt).
        A retry of a stored event is not refused here, also after its time
        aged past the window or the lab table changed: its apply answers it
        (a duplicate, or event_id_conflict). Rare paths, one read each."""
        name = _EVENT_TIME[type(ev)]
        at = getattr(ev, name)
        now_ms = time.time_ns() // 1_000_000
        refusal = None
        if at > now_ms + self._future_ms:
            refusal = Rejected(errors.INVALID_TIME, f"{name} is ahead of the server clock", name)
        elif at < now_ms - self._age_ms:
            refusal = Rejected(errors.INVALID_TIME, f"{name} is older than the accepted age", name)
        elif type(ev) in _LAB_EVENTS and ev.lab_id not in self.schemes.labs:
            refusal = Rejected(errors.UNKNOWN_LAB, f"no configured lab has the id {ev.lab_id}", "lab_id")
        elif type(ev) is ReceiveEvent:
            # A box's tubes are fixed when it is packed; an unknown box is
            # the apply's to refuse.
            box = self.store.box(ev.box)
            if box is not None and all(self.schemes.lab_of(t) != ev.lab_id for t in box.tubes):
                refusal = Rejected(errors.WRONG_LAB, f"the box holds no tube of lab {ev.lab_id}", "lab_id")
        if refusal is not None and self.store.event(ev.event_id) is not None:
            return None
        return refusal

    def _binding_work(self, ev: BindingEvent, sites: frozenset[str] | None = None):
        refusal = self._off_site(sites, ev.site_id, "post_batch")
        if refusal is not None:
            return refusal
        lab = self._stateless(ev)
        return (ev, lab) if type(lab) is str else lab

    def _site_refusal(self, sites: frozenset[str], ev, name: str) -> Rejected | None:
        """A site-scoped token's seal, box, void or hand-over elsewhere. What
        a void or hand-over names must be stored for its site to be known:
        unknown, it is refused here as it would be without the limit, so
        that it is not applied if what it names is committed meanwhile."""
        if type(ev) is VoidEvent or type(ev) is HandoverEvent:
            site_id = self._site_of(ev)
            if site_id is None:
                if self.store.event(ev.event_id) is not None:
                    # its own id is stored (under another payload: a stored
                    # void names what it voided): the apply answers
                    # event_id_conflict from that, and changes nothing
                    return None
                refusal = self._refusal(ev)  # its time, as without the limit
                if refusal is not None:
                    return refusal
                if type(ev) is VoidEvent:
                    return Rejected(errors.UNKNOWN_BINDING, "no binding has this event id", "binding_event_id")
                return Rejected(errors.UNKNOWN_BOX, "no box has this barcode", "box")
            return self._off_site(sites, site_id, name)
        return self._off_site(sites, ev.site_id, name)

    def _post_items(self, req: Request, slot, decode, work_of) -> None:
        """A batch: decode, decide what needs no store, commit the rest in one
        group, answer every item in its place. `work_of(item)` gives the
        committer's work item, or the outcome when the store is not needed."""
        media = self._media(req, slot)
        if media is None:
            return
        try:
            items = decode(req.body, media)
        except Malformed as m:
            self._answer_one(slot, media, [Rejected(errors.MALFORMED, m.message, m.field)])
            return
        outcomes: list = [None] * len(items)
        queued: list[tuple] = []
        places: list[int] = []
        for i, item in enumerate(items):
            if type(item) is Malformed:
                outcomes[i] = Rejected(errors.MALFORMED, item.message, item.field)
                continue
            work = work_of(item)
            if type(work) is tuple:
                queued.append(work)
                places.append(i)
            else:
                outcomes[i] = work
        if not queued:
            self.when_replicated(outcomes, lambda: self._answer_batch(slot, media, outcomes))
            return
        if self.draining:
            self._error(slot, errors.SHUTTING_DOWN, "server is shutting down; retry on another server")
            return

        def done(committed: list) -> None:
            for i, outcome in zip(places, committed):
                outcomes[i] = outcome
            self._answer_batch(slot, media, outcomes)

        self.committer.submit(Work(queued, done))

    def _answer_batch(self, slot, media: str, outcomes: list) -> None:
        results = []
        events = self.metrics.events
        for outcome in outcomes:
            events[outcome_key(outcome)] += 1
            results.append(batch_item(outcome))
        slot.respond(200, _ENCODERS[media]({"results": results}), _CONTENT_TYPE[media])

    def _post_lifecycle(self, req: Request, slot, kind: type, path_field: str, path_value: str, apply) -> None:
        media = self._media(req, slot)
        if media is None:
            return
        try:
            ev = decode_lifecycle(kind, req.body, media)
        except Malformed as m:
            self._answer_one(slot, media, [Rejected(errors.MALFORMED, m.message, m.field)])
            return
        if path_field is not None:
            given = getattr(ev, path_field)
            if given and given != path_value:
                self._answer_one(slot, media, [Rejected(
                    errors.MALFORMED, f"{path_field}: the body names another one than the path", path_field)])
                return
            ev = msgspec.structs.replace(ev, **{path_field: path_value})
        refusal = None
        if kind is ReceiveEvent or kind is TubeReceiveEvent:
            refusal = self._outside(self._token_labs(req), ev, "post_receive" if kind is ReceiveEvent
                                    else "post_tube_receive")
        elif (sites := self.token_sites(req)) is not None:
            refusal = self._site_refusal(sites, ev, slot.route)
        refusal = refusal or self._refusal(ev)
        if refusal is not None:
            self._answer_one(slot, media, [refusal])
            return
        if kind is ReceiveEvent:
            # Which found tubes belong to another lab is decided from the lab
            # table here, and stored with the event (see boxes.apply_receive).
            # A barcode of no lab (misread, mistyped) is not "another lab's":
            # the lab would be told to send it on. It shows in `extra` (a
            # box only ever lists valid barcodes), and is received nowhere.
            other_lab = [t for t in dict.fromkeys(ev.tubes)
                         if self.schemes.lab_of(t) not in (ev.lab_id, LAB_INVALID_TUBE, LAB_UNKNOWN)]
            apply = functools.partial(apply, other_lab=other_lab)
        if self.draining:
            self._error(slot, errors.SHUTTING_DOWN, "server is shutting down; retry on another server")
            return
        self.committer.submit(Work(((ev, apply),), lambda outs: self._answer_one(slot, media, outs)))

    def post_seal(self, req: Request, slot, tube: str) -> None:
        self._post_lifecycle(req, slot, SealEvent, "tube", tube, lifecycle.apply_seal)

    def post_void(self, req: Request, slot, binding_event_id: str) -> None:
        self._post_lifecycle(req, slot, VoidEvent, "binding_event_id", binding_event_id, lifecycle.apply_void)

    def post_box(self, req: Request, slot) -> None:
        self._post_lifecycle(req, slot, BoxEvent, None, None, boxes.apply_box)

    def post_handover(self, req: Request, slot, box: str) -> None:
        self._post_lifecycle(req, slot, HandoverEvent, "box", box, boxes.apply_handover)

    def post_receive(self, req: Request, slot, box: str) -> None:
        self._post_lifecycle(req, slot, ReceiveEvent, "box", box, boxes.apply_receive)

    def post_tube_receive(self, req: Request, slot, tube: str) -> None:
        self._post_lifecycle(req, slot, TubeReceiveEvent, "tube", tube, boxes.apply_receive_tube)


# The binding routes run compiled (ext/_binding_routes.pyx) unless INGEST_PURE_PYTHON=1.
if kernels.PURE_PYTHON:
    App.handle, App.post_binding, App.post_batch = App.handle_py, App.post_binding_py, App.post_batch_py
else:
    _routes = kernels.load("_binding_routes", "app")
    App.handle, App.post_binding, App.post_batch = _routes.handle, _routes.post_binding, _routes.post_batch
