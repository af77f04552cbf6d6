"""What the server must answer to what one simulated site sends.

The load test checks every answer against this model, so a wrong answer is a
failure even when its status is 2xx. The model is a second statement of the
rules in docs/rules.md and docs/api.md, written from the docs, not from
ingest/rules.py: if both said the same wrong thing the load test would not
see it, so it must not share their code.

It is exact because each simulated site touches only its own tubes, persons
and boxes (codes are made unique per run, worker, user and scan). It needs no
Locust, so the unit tests import it as they are.

Sequence numbers are the one thing a client cannot predict: a `201` carries
one, the model records it (`settle`), and every later duplicate must name it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

WINDOW_MS = 12 * 3_600_000  # rules.person_window_hours in the shipped config
POSITIONS_MAX = 65_535  # bindings a tube takes, voided ones included (docs/rules.md)

# Tube states in lifecycle order (docs/api.md).
OPEN, SEALED, BOXED, IN_TRANSIT, RECEIVED, RESULTED = "open", "sealed", "boxed", "in_transit", "received", "resulted"


@dataclass
class Expect:
    """The answer the rules require: a status, and members that must be equal.

    A member's value may be a dict (checked as a subset, recursively) or
    ANY (present, any value). `on_answer` runs after a matching answer: it
    records what only the server knows (sequence numbers).
    """

    status: int
    body: dict
    on_answer: object = None  # callable(body) | None


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()


def mismatch(expect: Expect, status: int, body: object) -> str | None:
    """None if the answer is the one expected, else a short reason.

    The reason names the kind of difference (expected status/code, the
    member that differs), never ids or person codes: Locust groups failures
    by their message, so it must stay a small set of kinds.
    """
    if status != expect.status:
        got = body.get("error", {}).get("code") if isinstance(body, dict) else None
        want = expect.body.get("error", {}).get("code") or expect.body.get("result")
        return f"expected {expect.status} {want}, got {status} {got or (body or {}).get('result', '')}".rstrip()
    return _subset(expect.body, body, "")


def _subset(want: dict, got: object, where: str) -> str | None:
    if not isinstance(got, dict):
        return f"{where or 'body'} is not an object"
    for key, value in want.items():
        path = f"{where}.{key}" if where else key
        if key not in got:
            return f"{path} missing"
        if value is ANY:
            continue
        if isinstance(value, dict):
            reason = _subset(value, got[key], path)
            if reason:
                return reason
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            if not isinstance(got[key], list) or len(got[key]) != len(value):
                return f"{path} differs in length"
            for want_item, got_item in zip(value, got[key]):
                reason = _subset(want_item, got_item, f"{path}[]")
                if reason:
                    return reason
        elif got[key] != value:
            return f"{path} differs"
    return None


def error(status: int, code: str, field_name: str | None = None, **extra) -> Expect:
    err: dict = {"code": code, "message": ANY}
    if field_name:
        err["field"] = field_name
    err.update(extra)
    return Expect(status, {"error": err})


@dataclass
class Binding:
    tube: str
    person: str
    event_id: str
    scanned_at: int
    count: int  # people in the tube right after it was bound
    seq: int | None = None  # known once the server answered
    voided: bool = False

    def original(self) -> dict:
        return {"result": "bound", "event_id": self.event_id, "tube": self.tube, "seq": self.seq}


@dataclass
class Tube:
    code: str
    lab: str
    site_id: str
    pool_size: int
    state: str = OPEN
    count: int = 0
    slots: int = 0
    bindings: list[Binding] = field(default_factory=list)
    box: str | None = None


@dataclass
class Lifecycle:
    """An accepted lifecycle event: its payload and its answer's sequence number."""

    result: str
    payload: dict
    seq: int | None = None


class SiteModel:
    """The state one site's own events built, and the answer each next event must get."""

    def __init__(self, window_ms: int = WINDOW_MS):
        self.window_ms = window_ms
        self.tubes: dict[str, Tube] = {}
        self.events: dict[str, tuple[dict, Binding]] = {}
        self.persons: dict[str, list[Binding]] = {}
        self.lifecycle: dict[str, Lifecycle] = {}

    # -- bindings -----------------------------------------------------------

    def bind(self, ev: dict, lab: str) -> Expect:
        """The answer to a binding with valid codes and time; updates the model as the server must."""
        seen = self.events.get(ev["event_id"])
        if seen is not None:
            payload, b = seen
            if payload != ev:
                return error(409, "event_id_conflict", "event_id")
            return self._duplicate(ev["event_id"], b)
        tube = self.tubes.get(ev["tube"])
        history = self.persons.get(ev["person"], [])
        for b in history:
            if b.tube == ev["tube"] and not b.voided:
                return self._duplicate(ev["event_id"], b)  # the original's answer: its count, not its position
        if tube is not None:
            if tube.state != OPEN:
                return error(409, "tube_closed", "tube")
            if tube.site_id != ev["site_id"]:
                return error(409, "site_mismatch", "site_id")
            if tube.pool_size != ev["pool_size"]:
                return error(409, "pool_size_mismatch", "pool_size")
            if tube.count >= tube.pool_size or tube.slots >= POSITIONS_MAX:
                return error(409, "tube_full", "tube")
        if not ev.get("resample"):
            for b in history:
                if not b.voided and abs(b.scanned_at - ev["scanned_at"]) < self.window_ms:
                    return error(409, "person_in_other_tube", "person", other_tube=b.tube)
        if tube is None:
            tube = self.tubes[ev["tube"]] = Tube(ev["tube"], lab, ev["site_id"], ev["pool_size"])
        tube.count += 1
        tube.slots += 1
        b = Binding(ev["tube"], ev["person"], ev["event_id"], ev["scanned_at"], tube.count)
        tube.bindings.append(b)
        history.append(b)
        self.persons[ev["person"]] = history
        self.events[ev["event_id"]] = (dict(ev), b)

        def settle(body: dict) -> None:
            b.seq = body["seq"]

        return Expect(201, {"result": "bound", "event_id": ev["event_id"], "tube": ev["tube"], "lab": lab,
                            "count": tube.count, "pool_size": ev["pool_size"], "seq": ANY}, settle)

    @staticmethod
    def _duplicate(event_id: str, b: Binding) -> Expect:
        original = {**b.original(), "count": b.count}
        if b.seq is None:  # bound in the same batch, answer not read yet: cannot happen in order
            original["seq"] = ANY
        return Expect(200, {"result": "duplicate", "event_id": event_id, "original": original})

    def void(self, ev: dict, binding_event_id: str) -> Expect:
        seen = self._seen(ev, "voided")
        if seen:
            return seen
        found = self.events.get(binding_event_id)
        if found is None:
            return error(404, "unknown_binding")
        b = found[1]
        if b.voided:
            return error(409, "binding_voided")
        tube = self.tubes[b.tube]
        if tube.state != OPEN:
            return error(409, "tube_closed")
        b.voided = True
        tube.count -= 1
        return self._accepted(ev, "voided", {"tube": b.tube, "count": tube.count,
                                             "binding_event_id": binding_event_id})

    def tube_view(self, code: str) -> Expect:
        """GET /v1/tubes/{code}: the people still in it, in scan order."""
        t = self.tubes.get(code)
        if t is None:
            return error(404, "not_found", "tube")
        persons = [{"person": b.person, "event_id": b.event_id, "scanned_at": b.scanned_at, "seq": b.seq}
                   for b in t.bindings if not b.voided]
        return Expect(200, {"tube": code, "lab": t.lab, "site_id": t.site_id, "pool_size": t.pool_size,
                            "state": t.state, "count": t.count, "persons": persons})

    # -- lifecycle ----------------------------------------------------------

    def seal(self, ev: dict, tube_code: str) -> Expect:
        seen = self._seen(ev, "sealed")
        if seen:
            return seen
        tube = self.tubes.get(tube_code)
        if tube is None:
            return error(404, "unknown_tube")
        if tube.site_id != ev["site_id"]:
            return error(409, "site_mismatch")
        if tube.state != OPEN:
            return error(409, "tube_closed")
        if tube.count == 0:
            return error(409, "tube_empty")
        if ev.get("expected_count") not in (None, tube.count):
            return error(409, "count_mismatch", "expected_count", count=tube.count)
        tube.state = SEALED
        return self._accepted(ev, "sealed", {"tube": tube_code, "count": tube.count, "state": SEALED})

    def pack(self, ev: dict) -> Expect:
        seen = self._seen(ev, "packed")
        if seen:
            return seen
        tubes = list(dict.fromkeys(ev["tubes"]))
        reasons: dict[str, list[str]] = {}
        for code in tubes:
            t = self.tubes.get(code)
            why = ("unknown" if t is None else "other_site" if t.site_id != ev["site_id"]
                   else "already_boxed" if t.box is not None else "not_sealed" if t.state != SEALED else None)
            if why:
                reasons.setdefault(why, []).append(code)
        if reasons:
            return error(409, "tubes_not_boxable", "tubes", **reasons)
        for code in tubes:
            self.tubes[code].state = BOXED
            self.tubes[code].box = ev["box"]
        return self._accepted(ev, "packed", {"box": ev["box"], "tubes": len(tubes)})

    def handover(self, ev: dict, box: str, tubes: list[str]) -> Expect:
        seen = self._seen(ev, "handed_over")
        if seen:
            return seen
        for code in tubes:
            self.tubes[code].state = IN_TRANSIT
        return self._accepted(ev, "handed_over", {"box": box, "tubes": len(tubes), "courier_id": ev["courier_id"]})

    def receive(self, ev: dict, box: str, listed: list[str]) -> Expect:
        """The lab `ev["lab_id"]` found `ev["tubes"]` in a box the site listed as `listed`."""
        seen = self._seen(ev, "received")
        if seen:
            return seen
        lab = ev["lab_id"]
        found = list(dict.fromkeys(ev["tubes"]))
        missing = [t for t in listed if t not in found]
        extra = [t for t in found if t not in listed]
        other_lab = [t for t in found if t in self.tubes and self.tubes[t].lab != lab]
        received = [t for t in listed if t in found and self.tubes[t].lab == lab]
        for code in received:
            self.tubes[code].state = RECEIVED
        return self._accepted(ev, "received", {"box": box, "expected": len(listed), "found": len(found),
                                               "received": len(received), "missing": missing, "extra": extra,
                                               "other_lab": other_lab})

    def result(self, item: dict) -> Expect:
        """One item of POST /v1/results; the item's expected body carries its `status`."""
        seen = self.lifecycle.get(item["event_id"])
        if seen is not None:
            if seen.payload != item:
                return error(409, "event_id_conflict", "event_id")
            return Expect(200, {"result": "duplicate", "event_id": item["event_id"], "status": 200,
                                "original": {"result": "recorded", "event_id": item["event_id"], "seq": seen.seq}})
        tube = self.tubes.get(item["tube"])
        if tube is None:
            return error(404, "unknown_tube")
        if tube.lab != item["lab_id"]:
            return error(403, "wrong_lab")
        if tube.state not in (RECEIVED, RESULTED):
            return error(409, "tube_not_received")
        tube.state = RESULTED
        record = self.lifecycle[item["event_id"]] = Lifecycle("recorded", dict(item))

        def settle(body: dict) -> None:
            record.seq = body["seq"]

        return Expect(201, {"result": "recorded", "event_id": item["event_id"], "tube": item["tube"],
                            "test_result": item["result"], "seq": ANY, "status": 201}, settle)

    def _seen(self, ev: dict, result: str) -> Expect | None:
        seen = self.lifecycle.get(ev["event_id"])
        if seen is None:
            return None
        if seen.payload != ev:
            return error(409, "event_id_conflict", "event_id")
        return Expect(200, {"result": "duplicate", "event_id": ev["event_id"],
                            "original": {"result": seen.result, "event_id": ev["event_id"], "seq": seen.seq}})

    def _accepted(self, ev: dict, result: str, members: dict) -> Expect:
        record = self.lifecycle[ev["event_id"]] = Lifecycle(result, dict(ev))

        def settle(body: dict) -> None:
            record.seq = body["seq"]

        return Expect(201, {"result": result, "event_id": ev["event_id"], "seq": ANY, **members}, settle)


def item_expect(expect: Expect) -> Expect:
    """A batch item carries its status in its body as well."""
    return Expect(expect.status, {**expect.body, "status": expect.status}, expect.on_answer)
