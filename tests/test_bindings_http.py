"""The binding rules, through a real server over HTTP.

One server serves the whole module (logging at DEBUG, so that the last test
can check no log line shows a person code); every test uses its own tubes,
persons and event ids. Tests run one after another, so between two requests
of one test only that test changes the store (seq values are exact).
"""
from __future__ import annotations

import concurrent.futures
import json
import threading

import msgspec
import pytest

from helpers import (
    config_with,
    DAY_MS,
    HOUR_MS,
    PERSONS_USED,
    event,
    events_total,
    fresh_event_id,
    fresh_person,
    fresh_tube,
    gs1_tube,
    hc_person,
    http_request,
    id_person,
    gb11643_char,
    luhn_tube,
    m37_tube,
    metric,
    next_n,
    now_ms,
)

# Invalid person codes sent in this module (checked against the logs too).
BAD_PERSONS: set[str] = set()


@pytest.fixture(scope="module")
def server(module_server_factory):
    return module_server_factory(args=("--log-level", "DEBUG"))


# -- helpers -------------------------------------------------------------------


def post(server, ev, **kw):
    status, _, body = server.post(ev, **kw)
    return status, body


def assert_error(status, body, expected_status, code, field=None):
    assert status == expected_status, body
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == code, body
    assert isinstance(err["message"], str) and err["message"], body
    if field is not None:
        assert err.get("field") == field, body


def bind(server, ev):
    status, body = post(server, ev)
    assert status == 201, body
    assert body["result"] == "bound"
    return body


def snapshot(server, tube, person):
    """Everything a rejected event must leave as it was."""
    return server.tube(tube)[::2], server.person(person)[::2], server.last_seq()


def fill(server, tube, n, pool_size=5, site_id="SITE-1", scanned_at=None):
    """Bind n fresh persons into `tube`; returns their events."""
    evs = []
    for _ in range(n):
        ev = event(tube, pool_size=pool_size, site_id=site_id, scanned_at=scanned_at)
        bind(server, ev)
        evs.append(ev)
    return evs


# -- accepted events ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make_tube, lab",
    [(luhn_tube, "DEMO-LUHN"), (gs1_tube, "DEMO-GS1"), (m37_tube, "DEMO-M37")],
)
@pytest.mark.parametrize("make_person", [hc_person, id_person])
def test_first_binding_opens_the_tube(server, make_tube, lab, make_person):
    tube = make_tube(next_n())
    person = make_person(next_n())
    PERSONS_USED.add(person)
    assert server.tube(tube)[0] == 404
    before = server.last_seq()
    ev = event(tube, person, pool_size=10, operator_id="OP-7")
    status, body = post(server, ev)
    assert status == 201, body
    assert body == {
        "result": "bound", "event_id": ev["event_id"], "tube": tube, "lab": lab,
        "count": 1, "pool_size": 10, "seq": before + 1,
    }
    assert server.last_seq() == before + 1

    status, _, got = server.tube(tube)
    assert status == 200
    assert got == {
        "tube": tube, "lab": lab, "site_id": "SITE-1", "pool_size": 10, "state": "open",
        "opened_seq": before + 1, "count": 1,
        "persons": [{"person": person, "event_id": ev["event_id"], "scanned_at": ev["scanned_at"], "seq": before + 1}],
    }
    status, _, got = server.person(person)
    assert status == 200
    assert got == {
        "person": person,
        "tubes": [{"tube": tube, "site_id": "SITE-1", "scanned_at": ev["scanned_at"], "seq": before + 1,
                   "event_id": ev["event_id"], "voided": False, "state": "open", "result": ""}],
    }


def test_count_and_seq_grow_by_one_per_binding(server):
    tube = fresh_tube()
    before = server.last_seq()
    evs = [event(tube, pool_size=5) for _ in range(5)]
    answers = [bind(server, ev) for ev in evs]
    assert [a["count"] for a in answers] == [1, 2, 3, 4, 5]
    assert [a["seq"] for a in answers] == [before + i for i in range(1, 6)]
    status, _, got = server.tube(tube)
    assert status == 200
    assert got["count"] == 5 and got["opened_seq"] == before + 1
    assert [p["person"] for p in got["persons"]] == [ev["person"] for ev in evs]  # scan order
    assert [p["seq"] for p in got["persons"]] == [a["seq"] for a in answers]


@pytest.mark.parametrize("pool_size", [1, 20])
def test_pool_size_bounds_the_tube(server, pool_size):
    tube = fresh_tube()
    fill(server, tube, pool_size, pool_size=pool_size)
    extra = event(tube, pool_size=pool_size)
    before = snapshot(server, tube, extra["person"])
    status, body = post(server, extra)
    assert_error(status, body, 409, "tube_full", "tube")
    assert body["error"]["message"] == {1: "tube already holds 1 person", 20: "tube already holds 20 people"}[pool_size]
    assert snapshot(server, tube, extra["person"]) == before
    assert server.tube(tube)[2]["count"] == pool_size


@pytest.mark.parametrize("offset_ms", [60_000, 4 * 60_000, -6 * DAY_MS, -HOUR_MS])
def test_scanned_at_inside_the_accepted_range_is_bound(server, offset_ms):
    ev = event(scanned_at=now_ms() + offset_ms)
    assert bind(server, ev)["count"] == 1


# -- malformed (400) ------------------------------------------------------------------

REQUIRED = ["event_id", "site_id", "device_id", "tube", "person", "pool_size", "scanned_at"]


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_field_is_malformed_and_named(server, missing):
    ev = event()
    del ev[missing]
    status, body = post(server, ev)
    assert_error(status, body, 400, "malformed", missing)


@pytest.mark.parametrize(
    "field, value",
    [
        ("event_id", 12),
        ("event_id", ""),
        ("event_id", "x" * 65),
        ("event_id", "has space"),
        ("event_id", "slash/no"),
        ("event_id", "é"),
        ("event_id", "ends-in-newline\n"),
        ("site_id", None),
        ("site_id", ""),
        ("site_id", "s" * 65),
        ("device_id", ["D"]),
        ("operator_id", 5),
        ("operator_id", "o" * 65),
        ("tube", 100000000016),
        ("tube", "1" * 65),
        ("person", {"id": "x"}),
        ("person", "1" * 65),
        ("pool_size", 3),
        ("pool_size", 0),
        ("pool_size", "5"),
        ("pool_size", 5.0),
        ("pool_size", True),
        ("scanned_at", -1),
        ("scanned_at", "1700000000000"),
        ("scanned_at", 1.7e12),
        ("scanned_at", 2**53 + 1),
        ("resample", "true"),
        ("resample", 1),
        ("unknown_field", "x"),
    ],
)
def test_ill_typed_or_unknown_field_is_malformed_and_named(server, field, value):
    ev = event()
    ev[field] = value
    before = server.last_seq()
    status, body = post(server, ev)
    assert_error(status, body, 400, "malformed", field)
    assert server.last_seq() == before


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b"42", b'"event"', b"not json", b"{}"])
def test_body_that_is_no_event_object_is_malformed(server, raw):
    status, _, body = server.request("POST", "/v1/bindings", raw, {"Content-Type": "application/json"})
    assert_error(status, body, 400, "malformed")


# -- codes and clock (422) -------------------------------------------------------------

BAD_TUBES = [
    ("100000000017", "invalid_tube"),  # Luhn check digit off by one
    ("10000000001", "invalid_tube"),  # one digit short
    ("1000000000016", "invalid_tube"),  # one digit long
    ("690000000001", "invalid_tube"),  # GS1 one short
    ("6900000000015", "invalid_tube"),  # GS1 check off
    ("L0000000001M", "invalid_tube"),  # MOD 37,36 check off
    ("l0000000001l", "invalid_tube"),  # lower case
    ("10000000001A", "invalid_tube"),  # letter in a digits scheme
    ("１０００００００００１６", "invalid_tube"),  # full-width digits
    ("", "invalid_tube"),
    ("79927398713", "unknown_lab"),  # valid Luhn, no lab's prefix
    ("M00000000000", "unknown_lab"),
    ("99" + "0" * 10, "unknown_lab"),
]


@pytest.mark.parametrize("tube, code", BAD_TUBES)
def test_bad_tube_is_refused(server, tube, code):
    ev = event(tube)
    before = server.last_seq()
    status, body = post(server, ev)
    assert_error(status, body, 422, code, "tube")
    assert server.last_seq() == before
    assert server.person(ev["person"])[0] == 404


BAD_PERSON_CODES = [
    "110105195001010013",  # GB 11643 check character off
    "11010519500101001",  # 17 characters
    "1101051950010100120",  # 19 characters
    "01010519500101001" + gb11643_char("01010519500101001"),  # region 0..., right check
    "11010520990101001" + gb11643_char("11010520990101001"),  # born in 2099, right check
    "11010519500230001" + gb11643_char("11010519500230001"),  # 30 February, right check
    "11010519500101001x",  # lower-case x
    "HC0000000000000X",  # token one short
    "HC00000000000001S",  # token check off (R is right)
    "hc00000000000001R",  # lower-case token
    "",
]


@pytest.mark.parametrize("person", BAD_PERSON_CODES)
def test_bad_person_is_refused(server, person):
    BAD_PERSONS.add(person)
    ev = event(person=person)
    before = server.last_seq()
    status, body = post(server, ev)
    assert_error(status, body, 422, "invalid_person", "person")
    assert server.last_seq() == before
    assert server.tube(ev["tube"])[0] == 404


@pytest.mark.parametrize("offset_ms", [6 * 60_000, 24 * HOUR_MS, -8 * DAY_MS, -365 * DAY_MS])
def test_scanned_at_out_of_range_is_invalid_time(server, offset_ms):
    ev = event(scanned_at=now_ms() + offset_ms)
    status, body = post(server, ev)
    assert_error(status, body, 422, "invalid_time", "scanned_at")
    assert server.tube(ev["tube"])[0] == 404


@pytest.mark.parametrize("scanned_at", [0, 1])
def test_scanned_at_epoch_is_invalid_time(server, scanned_at):
    status, body = post(server, event(scanned_at=scanned_at))
    assert_error(status, body, 422, "invalid_time", "scanned_at")


# -- the order of the checks ----------------------------------------------------------


@pytest.mark.parametrize(
    "changes, status_code, code",
    [
        ({"tube": "100000000017", "device_id": None}, 400, "malformed"),
        ({"tube": "100000000017", "person": "110105195001010013"}, 422, "invalid_tube"),
        ({"tube": "79927398713", "person": "110105195001010013"}, 422, "unknown_lab"),
        ({"tube": "100000000017", "scanned_at": 0}, 422, "invalid_tube"),
        ({"person": "110105195001010013", "scanned_at": 0}, 422, "invalid_person"),
    ],
)
def test_stateless_checks_in_documented_order(server, changes, status_code, code):
    ev = event()
    for k, v in changes.items():
        if v is None:
            del ev[k]
        else:
            ev[k] = v
    status, body = post(server, ev)
    assert_error(status, body, status_code, code)


def test_duplicate_after_tube_became_full_still_answers_duplicate(server):
    tube = fresh_tube()
    first = event(tube, pool_size=5)
    answer = bind(server, first)
    fill(server, tube, 4)
    before = server.last_seq()
    # Same event id, identical payload: a retry, not a sixth person.
    status, body = post(server, first)
    assert status == 200, body
    assert body == {
        "result": "duplicate", "event_id": first["event_id"],
        "original": {"result": "bound", "event_id": first["event_id"], "tube": tube, "count": 1, "seq": answer["seq"]},
    }
    # Same (tube, person) under a new event id: also the original binding.
    again = dict(first, event_id=fresh_event_id())
    status, body = post(server, again)
    assert status == 200, body
    assert body["result"] == "duplicate" and body["event_id"] == again["event_id"]
    assert body["original"] == {"result": "bound", "event_id": first["event_id"], "tube": tube, "count": 1,
                                "seq": answer["seq"]}
    # The new id is remembered (one log entry, no change to the tube): its
    # resend answers the same; the retry of `first` wrote nothing.
    assert server.last_seq() == before + 1
    assert post(server, again) == (200, body)
    assert server.last_seq() == before + 1


def test_event_id_conflict_comes_before_tube_state(server):
    tube = fresh_tube()
    first = event(tube, pool_size=5)
    bind(server, first)
    fill(server, tube, 4)
    # Same id, other payload, full tube, other site, other pool size.
    other = dict(first, person=fresh_person(), site_id="SITE-2", pool_size=10)
    before = snapshot(server, tube, other["person"])
    status, body = post(server, other)
    assert_error(status, body, 409, "event_id_conflict", "event_id")
    assert snapshot(server, tube, other["person"]) == before


def test_stateless_check_comes_before_event_id_memory(server):
    first = event()
    bind(server, first)
    # The same id with a clock out of range is refused as invalid_time (a
    # stateless check), before the event id is looked up.
    late = dict(first, scanned_at=now_ms() - 8 * DAY_MS)
    status, body = post(server, late)
    assert_error(status, body, 422, "invalid_time", "scanned_at")


def test_tube_checks_in_documented_order(server):
    """site_mismatch, then pool_size_mismatch, then tube_full, then person_in_other_tube."""
    tube = fresh_tube()
    fill(server, tube, 5, pool_size=5, site_id="SITE-A")
    # A person just bound elsewhere, so person_in_other_tube would also apply.
    person = fresh_person()
    bind(server, event(person=person))
    cases = [
        (dict(site_id="SITE-B", pool_size=10), "site_mismatch", "site_id"),
        (dict(site_id="SITE-A", pool_size=10), "pool_size_mismatch", "pool_size"),
        (dict(site_id="SITE-A", pool_size=5), "tube_full", "tube"),
    ]
    for fields, code, field in cases:
        ev = event(tube, person, **fields)
        before = snapshot(server, tube, person)
        status, body = post(server, ev)
        assert_error(status, body, 409, code, field)
        assert snapshot(server, tube, person) == before


# -- duplicates and conflicts -----------------------------------------------------------


def test_identical_retry_is_a_duplicate_with_the_original_outcome(server):
    tube = fresh_tube()
    fill(server, tube, 2)
    ev = event(tube)
    answer = bind(server, ev)
    assert answer["count"] == 3
    fill(server, tube, 1)
    before = snapshot(server, tube, ev["person"])
    for _ in range(3):
        status, body = post(server, ev)
        assert status == 200, body
        assert body["result"] == "duplicate"
        assert body["event_id"] == ev["event_id"]
        assert body["original"] == {"result": "bound", "event_id": ev["event_id"], "tube": tube,
                                    "count": answer["count"], "seq": answer["seq"]}
    assert snapshot(server, tube, ev["person"]) == before


def test_explicit_defaults_are_the_identical_payload(server):
    ev = event()
    answer = bind(server, ev)
    status, body = post(server, dict(ev, resample=False, operator_id=None))
    assert status == 200, body
    assert body["original"]["seq"] == answer["seq"]


@pytest.mark.parametrize(
    "change",
    [
        {"person": None}, {"tube": None}, {"site_id": "SITE-X"}, {"device_id": "DEV-X"},
        {"operator_id": "OP-X"}, {"pool_size": 10}, {"scanned_at": -1000}, {"resample": True},
    ],
)
def test_same_event_id_other_payload_is_a_conflict(server, change):
    first = event()
    bind(server, first)
    other = dict(first)
    for k, v in change.items():
        if v is None:
            other[k] = fresh_person() if k == "person" else fresh_tube()
        elif k == "scanned_at":
            other[k] = first["scanned_at"] + v
        else:
            other[k] = v
    before = snapshot(server, other["tube"], other["person"])
    status, body = post(server, other)
    assert_error(status, body, 409, "event_id_conflict", "event_id")
    assert snapshot(server, other["tube"], other["person"]) == before
    # ... and the original is still the original.
    status, body = post(server, first)
    assert status == 200 and body["result"] == "duplicate"


def test_same_tube_and_person_under_another_event_id_names_the_original(server):
    tube = fresh_tube()
    fill(server, tube, 1)
    first = event(tube)
    answer = bind(server, first)
    before = snapshot(server, tube, first["person"])
    # Another device rescans the same pair, even with other metadata.
    again = event(tube, first["person"], device_id="DEV-2", scanned_at=first["scanned_at"] + 5000)
    status, body = post(server, again)
    assert status == 200, body
    assert body == {
        "result": "duplicate", "event_id": again["event_id"],
        "original": {"result": "bound", "event_id": first["event_id"], "tube": tube, "count": 2, "seq": answer["seq"]},
    }
    # The tube and the person are as they were; only the new id is
    # remembered, in one log entry.
    tube_view, person_view, last_seq = before
    assert snapshot(server, tube, first["person"]) == (tube_view, person_view, last_seq + 1)


def test_rejected_event_id_is_not_remembered(server):
    tube = fresh_tube()
    fill(server, tube, 1, pool_size=1)
    refused = event(tube, pool_size=1)
    status, body = post(server, refused)
    assert_error(status, body, 409, "tube_full", "tube")
    # The id was never accepted: another payload under it is a new event.
    retry = dict(refused, tube=fresh_tube())
    assert bind(server, retry)["count"] == 1


# -- tube state conflicts ---------------------------------------------------------------


def test_site_mismatch(server):
    tube = fresh_tube()
    fill(server, tube, 1, site_id="SITE-A")
    ev = event(tube, site_id="SITE-B")
    before = snapshot(server, tube, ev["person"])
    status, body = post(server, ev)
    assert_error(status, body, 409, "site_mismatch", "site_id")
    assert snapshot(server, tube, ev["person"]) == before
    assert server.person(ev["person"])[0] == 404


def test_pool_size_mismatch(server):
    tube = fresh_tube()
    fill(server, tube, 1, pool_size=10)
    ev = event(tube, pool_size=20)
    before = snapshot(server, tube, ev["person"])
    status, body = post(server, ev)
    assert_error(status, body, 409, "pool_size_mismatch", "pool_size")
    assert snapshot(server, tube, ev["person"]) == before


def test_tube_closed(server):
    tube = fresh_tube()
    fill(server, tube, 2)
    status, _, body = server.request("POST", f"/v1/tubes/{tube}/seal", {
        "event_id": fresh_event_id("seal"), "site_id": "SITE-1", "device_id": "DEV-1", "sealed_at": now_ms()})
    assert status == 201, body
    ev = event(tube)
    before = snapshot(server, tube, ev["person"])
    status, body = post(server, ev)
    assert_error(status, body, 409, "tube_closed", "tube")
    assert snapshot(server, tube, ev["person"]) == before


# -- the person window ------------------------------------------------------------------


def test_person_in_other_tube_within_window(server):
    person = fresh_person()
    first = event(person=person)
    bind(server, first)
    ev = event(person=person, scanned_at=first["scanned_at"] + 60_000)
    before = snapshot(server, ev["tube"], person)
    status, body = post(server, ev)
    assert_error(status, body, 409, "person_in_other_tube", "person")
    assert body["error"]["other_tube"] == first["tube"]
    assert snapshot(server, ev["tube"], person) == before
    assert server.tube(ev["tube"])[0] == 404


def test_window_counts_both_ways_in_scan_time(server):
    person = fresh_person()
    first = event(person=person)
    bind(server, first)
    # Scanned 11 h *before* the first scan: still within 12 h of it.
    ev = event(person=person, scanned_at=first["scanned_at"] - 11 * HOUR_MS)
    status, body = post(server, ev)
    assert_error(status, body, 409, "person_in_other_tube", "person")
    assert body["error"]["other_tube"] == first["tube"]


def test_resample_binds_a_person_again(server):
    person = fresh_person()
    first = event(person=person)
    a = bind(server, first)
    ev = event(person=person, resample=True, scanned_at=first["scanned_at"] + 1000)
    b = bind(server, ev)
    assert b["count"] == 1 and b["seq"] > a["seq"]
    status, _, got = server.person(person)
    assert status == 200
    assert [t["tube"] for t in got["tubes"]] == [first["tube"], ev["tube"]]
    assert [t["seq"] for t in got["tubes"]] == [a["seq"], b["seq"]]


def test_outside_the_window_no_resample_is_needed(server):
    person = fresh_person()
    first = event(person=person, scanned_at=now_ms() - 13 * HOUR_MS)
    bind(server, first)
    ev = event(person=person)
    bind(server, ev)
    assert len(server.person(person)[2]["tubes"]) == 2


def test_tube_full_comes_before_person_in_other_tube(server):
    person = fresh_person()
    bind(server, event(person=person))
    tube = fresh_tube()
    fill(server, tube, 1, pool_size=1)
    status, body = post(server, event(tube, person, pool_size=1))
    assert_error(status, body, 409, "tube_full", "tube")


# -- concurrency ----------------------------------------------------------------------


def _post_at_once(port, bodies):
    barrier = threading.Barrier(len(bodies))

    def one(ev):
        barrier.wait(timeout=30)
        status, _, body = http_request(port, "POST", "/v1/bindings", ev)
        return status, body

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies, timeout=60))


def test_retry_while_in_flight_binds_once(server):
    tube = fresh_tube()
    ev = event(tube)
    before = server.last_seq()
    answers = _post_at_once(server.port, [ev] * 20)
    bound = [b for s, b in answers if s == 201]
    dups = [b for s, b in answers if s == 200]
    assert len(bound) == 1, answers
    assert len(dups) == 19, answers
    seq = bound[0]["seq"]
    assert seq == before + 1 and bound[0]["count"] == 1
    for body in dups:
        assert body["result"] == "duplicate"
        assert body["original"] == {"result": "bound", "event_id": ev["event_id"], "tube": tube, "count": 1, "seq": seq}
    assert server.last_seq() == before + 1
    assert server.tube(tube)[2]["count"] == 1


def test_race_for_the_last_place(server):
    tube = fresh_tube()
    fill(server, tube, 4, pool_size=5)
    racers = [event(tube, pool_size=5) for _ in range(8)]
    answers = _post_at_once(server.port, racers)
    winners = [(ev, b) for ev, (s, b) in zip(racers, answers) if s == 201]
    losers = [(s, b) for s, b in answers if s != 201]
    assert len(winners) == 1, answers
    assert winners[0][1]["count"] == 5
    assert len(losers) == 7
    for status, body in losers:
        assert_error(status, body, 409, "tube_full", "tube")
    status, _, got = server.tube(tube)
    assert got["count"] == 5
    assert got["persons"][-1]["person"] == winners[0][0]["person"]
    for ev, (s, _) in zip(racers, answers):
        if s != 201:
            assert server.person(ev["person"])[0] == 404


# -- msgpack --------------------------------------------------------------------------


@pytest.mark.parametrize("media", ["application/msgpack", "application/x-msgpack"])
def test_msgpack_in_msgpack_out(server, media):
    ev = event()
    before = server.last_seq()
    status, headers, body = server.request(
        "POST", "/v1/bindings", msgspec.msgpack.encode(ev), {"Content-Type": media}
    )
    assert status == 201
    assert headers["Content-Type"] == "application/msgpack"
    assert body["result"] == "bound" and body["seq"] == before + 1 and body["event_id"] == ev["event_id"]
    # The same event as JSON is the identical payload: a duplicate.
    status, _, body = server.post(ev)
    assert status == 200 and body["original"]["seq"] == before + 1


def test_msgpack_errors_are_msgpack(server):
    ev = event("100000000017")
    status, headers, body = server.request(
        "POST", "/v1/bindings", msgspec.msgpack.encode(ev), {"Content-Type": "application/msgpack"}
    )
    assert headers["Content-Type"] == "application/msgpack"
    assert_error(status, body, 422, "invalid_tube", "tube")
    # A malformed msgpack write is answered in msgpack too (it was JSON),
    # on every write route.
    for path, sent in (("/v1/bindings", {"event_id": 1}), ("/v1/bindings/batch", {"events": []}),
                       ("/v1/results", {"results": 1}), (f"/v1/tubes/{fresh_tube()}/seal", {"event_id": 1}),
                       ("/v1/bindings", {1: 2})):
        status, headers, body = server.request("POST", path, msgspec.msgpack.encode(sent),
                                               {"Content-Type": "application/msgpack"})
        assert headers["Content-Type"] == "application/msgpack", (path, headers)
        assert status == 400 and body["error"]["code"] == "malformed", (path, body)
        if sent == {"event_id": 1}:
            assert body["error"]["field"] == "event_id", body
        if sent == {1: 2}:
            assert "a map key is not a string" in body["error"]["message"], body


def test_msgpack_batch(server):
    evs = [event(), event("100000000017")]
    status, headers, body = server.request(
        "POST", "/v1/bindings/batch", msgspec.msgpack.encode({"events": evs}), {"Content-Type": "application/msgpack"}
    )
    assert status == 200 and headers["Content-Type"] == "application/msgpack"
    assert [r["status"] for r in body["results"]] == [201, 422]


# -- batches --------------------------------------------------------------------------


def test_batch_keeps_order_and_mixes_outcomes(server):
    tube = fresh_tube()
    a = event(tube)
    b = event(tube)
    conflict = dict(a, person=fresh_person())
    full_tube = fresh_tube()
    fill(server, full_tube, 1, pool_size=1)
    too_many = event(full_tube, pool_size=1)
    bad_tube = event("100000000017")
    bad_person = event(person="110105195001010013")
    late = event(scanned_at=now_ms() - 8 * DAY_MS)
    same_pair = event(tube, a["person"])
    items = [a, bad_tube, b, {"event_id": "only-an-id"}, a, conflict, too_many, bad_person, late, same_pair, 17]
    before = server.last_seq()
    status, _, body = server.batch(items)
    assert status == 200, body
    results = body["results"]
    assert len(results) == len(items)
    assert [r["status"] for r in results] == [201, 422, 201, 400, 200, 409, 409, 422, 422, 200, 400]
    assert results[0] == {"result": "bound", "event_id": a["event_id"], "tube": tube, "lab": results[0]["lab"],
                          "count": 1, "pool_size": 5, "seq": before + 1, "status": 201}
    assert results[1]["error"]["code"] == "invalid_tube"
    assert results[2]["count"] == 2 and results[2]["seq"] == before + 2
    assert results[3]["error"]["code"] == "malformed" and results[3]["error"]["field"] == "site_id"
    assert results[4]["result"] == "duplicate" and results[4]["original"]["seq"] == before + 1
    assert results[5]["error"]["code"] == "event_id_conflict"
    assert results[6]["error"]["code"] == "tube_full"
    assert results[7]["error"]["code"] == "invalid_person"
    assert results[8]["error"]["code"] == "invalid_time"
    assert results[9]["result"] == "duplicate"
    assert results[9]["original"]["event_id"] == a["event_id"] and results[9]["event_id"] == same_pair["event_id"]
    assert results[10]["error"]["code"] == "malformed"
    assert server.last_seq() == before + 3  # a, b, and same_pair's id remembered
    assert [p["person"] for p in server.tube(tube)[2]["persons"]] == [a["person"], b["person"]]


def test_rules_apply_between_events_of_one_batch(server):
    person = fresh_person()
    tube = fresh_tube()
    items = [
        event(person=person),  # bound
        event(person=person),  # the same person into another tube: refused
        event(tube, pool_size=1),  # bound, fills the tube
        event(tube, pool_size=1),  # tube_full
        event(tube, pool_size=5),  # pool_size_mismatch
        event(tube, pool_size=1, site_id="SITE-9"),  # site_mismatch
        event(person=person, resample=True),  # bound again with resample
    ]
    status, _, body = server.batch(items)
    assert status == 200
    got = [(r["status"], r.get("error", {}).get("code")) for r in body["results"]]
    assert got == [
        (201, None), (409, "person_in_other_tube"), (201, None), (409, "tube_full"),
        (409, "pool_size_mismatch"), (409, "site_mismatch"), (201, None),
    ]
    assert body["results"][1]["error"]["other_tube"] == items[0]["tube"]
    assert [t["tube"] for t in server.person(person)[2]["tubes"]] == [items[0]["tube"], items[6]["tube"]]


def test_batch_of_stateless_refusals_only(server):
    before = server.last_seq()
    status, _, body = server.batch([event("100000000017"), {"nope": 1}])
    assert status == 200
    assert [(r["status"], r["error"]["code"]) for r in body["results"]] == [(422, "invalid_tube"), (400, "malformed")]
    assert server.last_seq() == before


def test_batch_of_1000_is_accepted_in_order(server):
    tubes = [fresh_tube() for _ in range(50)]
    evs = [event(tubes[i // 20], pool_size=20) for i in range(1000)]
    before = server.last_seq()
    status, _, body = server.batch(evs)
    assert status == 200
    results = body["results"]
    assert [r["status"] for r in results] == [201] * 1000
    assert [r["seq"] for r in results] == list(range(before + 1, before + 1001))
    assert [r["count"] for r in results] == [i % 20 + 1 for i in range(1000)]
    assert [r["event_id"] for r in results] == [ev["event_id"] for ev in evs]
    assert server.tube(tubes[-1])[2]["count"] == 20


@pytest.mark.parametrize(
    "body, field",
    [
        ({"events": []}, "events"),
        ({"events": "x"}, "events"),
        ({"events": [{}] * 1001}, "events"),
        ({}, "events"),
        ({"events": [{}], "more": 1}, "more"),
    ],
)
def test_batch_envelope_errors(server, body, field):
    before = server.last_seq()
    status, _, got = server.request("POST", "/v1/bindings/batch", body)
    assert_error(status, got, 400, "malformed", field)
    assert server.last_seq() == before


def test_batch_over_1000_binds_nothing(server):
    evs = [event() for _ in range(1001)]
    before = server.last_seq()
    status, _, got = server.batch(evs)
    assert_error(status, got, 400, "malformed", "events")
    assert server.last_seq() == before
    assert server.tube(evs[0]["tube"])[0] == 404


# -- reads and routes -----------------------------------------------------------------


def test_unknown_tube_and_person_are_404(server):
    status, _, body = server.tube(fresh_tube())
    assert_error(status, body, 404, "not_found", "tube")
    status, _, body = server.person(fresh_person())
    assert_error(status, body, 404, "not_found", "person")


def test_percent_encoded_code_and_query_string(server):
    ev = event(m37_tube(99_999))
    bind(server, ev)
    quoted = "".join(f"%{ord(c):02X}" for c in ev["tube"])
    status, _, body = server.request("GET", f"/v1/tubes/{quoted}?verbose=1")
    assert status == 200 and body["tube"] == ev["tube"]


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/"), ("GET", "/v1"), ("GET", "/v1/tubes/"), ("GET", "/v1/tubes/a/b"), ("POST", "/v1/binding"),
     ("GET", "/v1/persons"), ("GET", "/metrics/")],
)
def test_unknown_path_is_404(server, method, path):
    status, _, body = server.request(method, path, b"{}" if method == "POST" else None,
                                     {"Content-Type": "application/json"})
    assert_error(status, body, 404, "not_found")


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("GET", "/v1/bindings", "POST"),
        ("PUT", "/v1/bindings/batch", "POST"),
        ("POST", "/v1/status", "GET, HEAD"),
        ("DELETE", "/v1/tubes/100000000016", "GET, HEAD"),
        ("POST", "/v1/persons/HC00000000000001R", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("PATCH", "/livez", "GET, HEAD"),
        ("OPTIONS", "/readyz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(server, method, path, allow):
    status, headers, body = server.request(method, path)
    assert_error(status, body, 405, "method_not_allowed")
    assert headers["Allow"] == allow


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/xml", "application/jsonx", "multipart/form-data"])
def test_other_content_type_is_415(server, ctype):
    ev = event()
    headers = {} if ctype is None else {"Content-Type": ctype}
    status, _, body = server.request("POST", "/v1/bindings", json.dumps(ev).encode(), headers)
    assert_error(status, body, 415, "unsupported_media_type")
    status, _, body = server.request("POST", "/v1/bindings/batch", json.dumps({"events": [ev]}).encode(), headers)
    assert_error(status, body, 415, "unsupported_media_type")
    assert server.tube(ev["tube"])[0] == 404


def test_content_type_parameters_and_case_are_accepted(server):
    ev = event()
    status, _, body = server.request(
        "POST", "/v1/bindings", json.dumps(ev).encode(), {"Content-Type": "Application/JSON; charset=utf-8"}
    )
    assert status == 201, body


def test_health_and_status(server):
    assert server.request("GET", "/livez")[::2] == (200, {"status": "live"})
    assert server.request("GET", "/readyz")[::2] == (200, {"status": "ready"})
    status = server.status()
    assert status["role"] == "primary"
    assert status["draining"] is False
    assert status["implementation"] in ("cython", "python")
    assert isinstance(status["last_seq"], int) and status["last_seq"] > 0
    assert status["in_flight"] == 0


# -- metrics --------------------------------------------------------------------------


def test_metrics_count_outcomes(server):
    before = server.metrics()
    tube = fresh_tube()
    a = event(tube, pool_size=1)
    bind(server, a)  # bound
    bind(server, event())  # bound
    assert post(server, a)[0] == 200  # duplicate
    assert post(server, event(tube, pool_size=1))[0] == 409  # tube_full
    assert post(server, event("100000000017"))[0] == 422  # invalid_tube
    assert post(server, {"event_id": "x"})[0] == 400  # malformed
    status, _, _ = server.batch([event(), event("79927398713")])  # bound + unknown_lab
    assert status == 200
    after = server.metrics()

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert events_total(after, "bound") - events_total(before, "bound") == 3
    assert events_total(after, "duplicate") - events_total(before, "duplicate") == 1
    for code in ("tube_full", "invalid_tube", "malformed", "unknown_lab"):
        assert events_total(after, "rejected", code) - events_total(before, "rejected", code) == 1, code
    assert events_total(after, "rejected", "invalid_person") == events_total(before, "rejected", "invalid_person")
    # 6 single posts and one batch went through their routes.
    assert delta("ingest_http_request_duration_seconds_count", route="post_binding") == 6
    assert delta("ingest_http_request_duration_seconds_bucket", route="post_binding", le="+Inf") == 6
    assert delta("ingest_http_request_duration_seconds_count", route="post_batch") == 1
    # Events that reached the store: 2 bound + duplicate + tube_full + 1 bound in the batch.
    assert delta("ingest_commit_batch_events_sum") == 5
    assert 1 <= delta("ingest_commit_batch_events_count") <= 5
    assert delta("ingest_commit_duration_seconds_count") == delta("ingest_commit_batch_events_count")
    assert metric(after, "ingest_store_used_bytes") > 0
    assert metric(after, "ingest_last_sequence") == server.last_seq()
    impl = server.status()["implementation"]
    assert metric(after, "ingest_build_info", implementation=impl) == 1


# -- logs -------------------------------------------------------------------------------


def test_logs_never_show_a_person_code(server):
    """Last in the module: after every accepted and refused event above, and
    a few more of each kind here (so that it also stands alone)."""
    tube = fresh_tube()
    persons = [fresh_person() for _ in range(6)]
    for p in persons[:5]:
        bind(server, event(tube, p, pool_size=5))  # bound, the tube is full
    post(server, event(tube, persons[5], pool_size=5))  # tube_full
    post(server, event(tube, persons[0], pool_size=5))  # duplicate
    post(server, event(person=persons[1]))  # person_in_other_tube
    post(server, event(person=persons[5], scanned_at=0))  # invalid_time
    post(server, event(person=persons[5], pool_size=3))  # malformed
    post(server, event("100000000017", persons[5]))  # invalid_tube
    server.request("POST", "/v1/bindings", json.dumps(event(person=persons[5])).encode()[:-3],
                   {"Content-Type": "application/json"})
    server.batch([event(person=persons[5]), event(person="110105195001010013")])
    server.request("GET", f"/v1/persons/{persons[0]}")
    BAD_PERSONS.add("110105195001010013")
    log = server.stderr_text()
    assert "serving on" in log
    used = {p for p in PERSONS_USED | BAD_PERSONS if len(p) > 4}
    assert set(persons) <= used
    leaked = sorted(p for p in used if p in log)
    assert not leaked, f"person codes in the server log: {leaked[:5]}"


def test_retry_of_a_stored_event_that_aged_past_the_window_is_a_duplicate(server_factory):
    """A phone replaying a scan the server took must hear "duplicate" even when
    the scan is now older than the accepted age (here ~1 s)."""
    import time

    srv = server_factory(config=config_with(rules={"scanned_at_age_days_max": 1.0 / 86400}))
    ev = event()
    status, _, first = srv.request("POST", "/v1/bindings", json.dumps(ev).encode(), {"Content-Type": "application/json"})
    assert status == 201
    time.sleep(1.6)
    status, _, again = srv.request("POST", "/v1/bindings", json.dumps(ev).encode(), {"Content-Type": "application/json"})
    assert status == 200 and again["result"] == "duplicate"
    assert again["original"]["seq"] == first["seq"]
    # a new event of the same age is still refused
    other = event(scanned_at=ev["scanned_at"])
    status, _, body = srv.request("POST", "/v1/bindings", json.dumps(other).encode(), {"Content-Type": "application/json"})
    assert status == 422 and body["error"]["code"] == "invalid_time"


def test_a_binding_names_the_lab_its_tube_was_opened_with_after_the_lab_table_changed(server_factory):
    # A lab LONG owned prefix 109 when the tube was opened; after a restart
    # without it, a second binding into that tube was answered with the lab
    # the table now gives (DEMO-LUHN), while the tube, its receipt and its
    # results stay LONG's.
    long_lab = '\n[[labs]]\nid = "LONG"\nprefix = "109"\nlength = 12\ncharset = "digits"\ncheck = "luhn"\n'
    first_server = server_factory(config=config_with() + long_lab)
    tube = luhn_tube(900_000_000 + next_n())  # "109...": LONG's prefix, and DEMO-LUHN's "10"
    status, _, body = first_server.post(event(tube))
    assert status == 201 and body["lab"] == "LONG", body
    first_server.stop()
    again = server_factory(data=first_server.data)
    status, _, body = again.post(event(tube))
    assert status == 201 and body["lab"] == "LONG" and body["count"] == 2, body
    assert again.tube(tube)[2]["lab"] == "LONG"
