"""Sealing and voiding through the real server."""
from __future__ import annotations

import pytest

from helpers import event, fresh_event_id, fresh_tube, now_ms


def seal(server, path_tube, *, event_id=None, site_id="SITE-1", **extra):
    body = {"event_id": event_id or fresh_event_id("seal"), "site_id": site_id, "device_id": "DEV-1",
            "sealed_at": now_ms(), **extra}
    status, _, got = server.request("POST", f"/v1/tubes/{path_tube}/seal", body)
    return status, got, body


def void(server, binding_event_id, *, event_id=None, reason="wrong person scanned"):
    body = {"event_id": event_id or fresh_event_id("void"), "device_id": "DEV-1", "reason": reason,
            "voided_at": now_ms()}
    status, _, got = server.request("POST", f"/v1/bindings/{binding_event_id}/void", body)
    return status, got, body


def bind(server, tube, person=None, **kw):
    ev = event(tube, person, **kw)
    status, _, body = server.post(ev)
    return status, body, ev


def fill(server, tube, n, pool_size=5):
    evs = []
    for _ in range(n):
        status, body, ev = bind(server, tube, pool_size=pool_size)
        assert status == 201, body
        evs.append(ev)
    return evs


def code(body):
    return body["error"]["code"]


# -- seal ------------------------------------------------------------------------


def test_seal_a_short_tube_then_nothing_enters(server):
    tube = fresh_tube()
    fill(server, tube, 3)
    status, got, req = seal(server, tube)
    assert status == 201, got
    assert (got["result"], got["tube"], got["count"], got["state"]) == ("sealed", tube, 3, "sealed")
    _, _, view = server.tube(tube)
    assert view["state"] == "sealed" and view["sealed_seq"] == got["seq"]
    status, body, _ = bind(server, tube)
    assert status == 409 and code(body) == "tube_closed"


def test_a_seal_expecting_more_people_is_refused_until_the_missing_scan_arrives(server):
    """The offline phone's scan reaches the server after the sealer's first
    try: the tube stays open for it, and the same seal then succeeds."""
    tube = fresh_tube()
    evs = fill(server, tube, 4)
    missing = event(tube, pool_size=5)
    before = server.last_seq()
    status, got, req = seal(server, tube, expected_count=5)
    assert status == 409, got
    assert got["error"] == {
        "code": "count_mismatch", "field": "expected_count", "count": 4,
        "message": "tube holds 4 people, the seal expects 5; bind the missing scans (or void the extra ones) "
                   "and seal again",
    }
    assert server.last_seq() == before
    assert server.tube(tube)[2]["state"] == "open"
    assert server.post(missing)[0] == 201
    status, _, got = server.request("POST", f"/v1/tubes/{tube}/seal", req)  # the same event, retried
    assert status == 201, got
    assert (got["result"], got["count"]) == ("sealed", 5)
    status, _, again = server.request("POST", f"/v1/tubes/{tube}/seal", req)
    assert status == 200 and again["result"] == "duplicate" and again["original"]["seq"] == got["seq"]
    status, got, _ = seal(server, tube, event_id=req["event_id"], expected_count=4)
    assert status == 409 and code(got) == "event_id_conflict"
    assert [p["person"] for p in server.tube(tube)[2]["persons"]] == [e["person"] for e in evs + [missing]]


def test_a_seal_expecting_fewer_people_names_the_count(server):
    tube = fresh_tube()
    evs = fill(server, tube, 2)
    status, got, req = seal(server, tube, expected_count=1)
    assert status == 409 and code(got) == "count_mismatch" and got["error"]["count"] == 2, got
    assert got["error"]["message"].startswith("tube holds 2 people, the seal expects 1;")
    assert void(server, evs[1]["event_id"])[0] == 201
    status, _, got = server.request("POST", f"/v1/tubes/{tube}/seal", req)
    assert status == 201 and got["count"] == 1, got


@pytest.mark.parametrize("value", [0, 21, -1, "5", 5.0, True, None])
def test_an_expected_count_out_of_range_or_not_an_integer_is_malformed(server, value):
    tube = fresh_tube()
    fill(server, tube, 1)
    before = server.last_seq()
    status, got, _ = seal(server, tube, expected_count=value)
    if value is None:  # JSON null: as if absent
        assert status == 201, got
        return
    assert status == 400 and code(got) == "malformed" and got["error"]["field"] == "expected_count", got
    assert server.last_seq() == before


def test_seal_is_idempotent_and_conflicts_are_refused(server):
    tube = fresh_tube()
    fill(server, tube, 1)
    status, first, req = seal(server, tube)
    assert status == 201
    before = server.last_seq()
    status, _, again = server.request("POST", f"/v1/tubes/{tube}/seal", req)
    assert status == 200 and again["result"] == "duplicate"
    # the count too: the phone whose first answer was lost compares it with the people it saw
    assert again["original"] == {"result": "sealed", "event_id": req["event_id"], "seq": first["seq"],
                                 "tube": tube, "count": 1, "state": "sealed"}
    status, got, _ = seal(server, tube, event_id=req["event_id"], site_id="SITE-1", operator_id="OP-9")
    assert status == 409 and code(got) == "event_id_conflict"
    status, got, _ = seal(server, tube)  # another seal event for a sealed tube
    assert status == 409 and code(got) == "tube_closed"
    assert server.last_seq() == before


@pytest.mark.parametrize("case", ["unknown", "other_site", "empty"])
def test_seal_refusals_change_nothing(server, case):
    tube = fresh_tube()
    if case != "unknown":
        evs = fill(server, tube, 1)
    if case == "empty":
        assert void(server, evs[0]["event_id"])[0] == 201
    before = server.last_seq(), server.tube(tube)[2]
    status, got, _ = seal(server, tube, site_id="SITE-2" if case == "other_site" else "SITE-1")
    expected = {"unknown": (404, "unknown_tube"), "other_site": (409, "site_mismatch"), "empty": (409, "tube_empty")}
    assert (status, code(got)) == expected[case]
    assert (server.last_seq(), server.tube(tube)[2]) == before


def test_seal_body_naming_another_tube_is_malformed(server):
    tube = fresh_tube()
    fill(server, tube, 1)
    status, got, _ = seal(server, tube, tube=fresh_tube())
    assert status == 400 and code(got) == "malformed" and got["error"]["field"] == "tube"


# -- void ------------------------------------------------------------------------


def test_void_frees_the_place_and_keeps_the_history(server):
    tube = fresh_tube()
    evs = fill(server, tube, 5)
    status, body, _ = bind(server, tube)
    assert status == 409 and code(body) == "tube_full"
    wrong = evs[2]
    status, got, _ = void(server, wrong["event_id"])
    assert status == 201, got
    assert (got["result"], got["tube"], got["count"]) == ("voided", tube, 4)
    status, body, late = bind(server, tube)
    assert status == 201 and body["count"] == 5
    _, _, view = server.tube(tube)
    assert [p["person"] for p in view["persons"]] == [e["person"] for e in evs if e is not wrong] + [late["person"]]
    assert [v["person"] for v in view["voided"]] == [wrong["person"]]
    _, _, person = server.person(wrong["person"])
    assert person["tubes"][0]["voided"] is True


def test_after_a_void_a_pair_duplicate_names_the_original_count(server):
    # a void frees a place, so a later binding's count is below its slot in the tube
    tube = fresh_tube()
    first, _ = fill(server, tube, 2)
    assert void(server, first["event_id"])[0] == 201
    status, bound, late = bind(server, tube)
    assert status == 201 and bound["count"] == 2, bound
    original = {"result": "bound", "event_id": late["event_id"], "tube": tube, "count": 2, "seq": bound["seq"]}
    status, _, retry = server.post(late)
    assert status == 200 and retry["original"] == original, retry
    again = dict(late, event_id=fresh_event_id("again"))
    status, _, pair = server.post(again)
    assert status == 200 and pair["result"] == "duplicate" and pair["original"] == original, pair


def test_a_pair_duplicate_resent_after_the_void_of_its_original_binds_nothing(server):
    # The phone scanned one person twice (the second scan answered as a
    # duplicate of the first), the volunteer voided the scan, the phone then
    # resent the second one, whose answer it had lost: it bound the voided
    # person into the tube again, under the same event id that had been
    # answered "duplicate".
    tube = fresh_tube()
    first, other = fill(server, tube, 2)
    second = dict(first, event_id=fresh_event_id("twice"))
    status, _, dup = server.post(second)
    assert status == 200 and dup["original"]["event_id"] == first["event_id"], dup
    assert void(server, first["event_id"])[0] == 201
    assert server.post(second)[::2] == (200, dup)
    _, _, view = server.tube(tube)
    assert view["count"] == 1 and [p["person"] for p in view["persons"]] == [other["person"]]
    # Voiding the second scan's id voids the binding it repeats.
    status, body, third = bind(server, tube, first["person"])  # the person again, on purpose, after the void
    assert status == 201, body
    fourth = dict(third, event_id=fresh_event_id("twice"))
    assert server.post(fourth)[0] == 200
    status, got, _ = void(server, fourth["event_id"])
    assert status == 201 and got["count"] == 1, got
    _, _, view = server.tube(tube)
    assert [p["person"] for p in view["persons"]] == [other["person"]]
    assert [v["event_id"] for v in view["voided"]] == [first["event_id"], third["event_id"]]


def test_voided_person_may_go_into_another_tube_and_back(server):
    tube = fresh_tube()
    [ev] = fill(server, tube, 1)
    assert void(server, ev["event_id"])[0] == 201
    # no person_in_other_tube: the voided binding does not count
    status, body, _ = bind(server, fresh_tube(), ev["person"])
    assert status == 201, body


def test_void_refusals(server):
    tube = fresh_tube()
    evs = fill(server, tube, 2)
    status, got, req = void(server, evs[0]["event_id"])
    assert status == 201
    status, _, again = server.request("POST", f"/v1/bindings/{evs[0]['event_id']}/void", req)
    assert status == 200 and again["result"] == "duplicate"
    before = server.last_seq()
    status, got, _ = void(server, evs[0]["event_id"])
    assert status == 409 and code(got) == "binding_voided"
    status, got, _ = void(server, "no-such-binding")
    assert status == 404 and code(got) == "unknown_binding"
    assert seal(server, tube)[0] == 201
    before = server.last_seq()
    status, got, _ = void(server, evs[1]["event_id"])
    assert status == 409 and code(got) == "tube_closed"
    assert server.last_seq() == before


def test_void_reason_is_required(server):
    tube = fresh_tube()
    [ev] = fill(server, tube, 1)
    status, got, _ = void(server, ev["event_id"], reason="")
    assert status == 400 and code(got) == "malformed" and got["error"]["field"] == "reason"
