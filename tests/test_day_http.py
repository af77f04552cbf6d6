"""A whole testing day through the real server: bind, seal, box, hand over,
receive with reconciliation, results, and the positives feed; plus the
refusals and retries of every box and result event.

The module server is shared: every test uses its own tubes, persons, boxes,
sites and event ids. Tubes here are made per lab on purpose (`luhn()` is a
DEMO-LUHN tube, `gs1()` a DEMO-GS1 one): `helpers.fresh_tube()` cycles through
the labs.
"""
from __future__ import annotations

import pytest

from helpers import config_with, event, events_total, fresh_event_id, fresh_person, gs1_tube, luhn_tube, next_n, now_ms

LUHN = "DEMO-LUHN"
GS1 = "DEMO-GS1"


# -- local helpers ------------------------------------------------------------


def luhn() -> str:
    """A fresh DEMO-LUHN tube barcode."""
    return luhn_tube(next_n())


def gs1() -> str:
    """A fresh DEMO-GS1 tube barcode."""
    return gs1_tube(next_n())


def fresh_site() -> str:
    return f"SITE-DAY-{next_n()}"


def fresh_box() -> str:
    return f"BOX-{next_n()}-{fresh_event_id('b')}"


def code(body) -> str:
    return body["error"]["code"]


def bind_all(server, tube, n, *, site_id, pool_size=10) -> list[dict]:
    """Bind n fresh persons into `tube`; the binding events, in scan order."""
    evs = []
    for _ in range(n):
        ev = event(tube, fresh_person(), site_id=site_id, pool_size=pool_size)
        status, _, body = server.post(ev)
        assert status == 201, body
        evs.append(ev)
    return evs


def seal(server, tube, *, site_id):
    body = {"event_id": fresh_event_id("seal"), "site_id": site_id, "device_id": "DEV-1", "sealed_at": now_ms()}
    status, _, got = server.request("POST", f"/v1/tubes/{tube}/seal", body)
    assert status == 201, got
    return got


def void(server, binding_event_id):
    body = {"event_id": fresh_event_id("void"), "device_id": "DEV-1", "reason": "wrong person scanned",
            "voided_at": now_ms()}
    status, _, got = server.request("POST", f"/v1/bindings/{binding_event_id}/void", body)
    assert status == 201, got
    return got


def box_req(box, tubes, *, site_id, event_id=None, **extra) -> dict:
    return {"event_id": event_id or fresh_event_id("box"), "box": box, "site_id": site_id, "device_id": "DEV-1",
            "tubes": list(tubes), "packed_at": now_ms(), **extra}


def handover_req(*, event_id=None, courier_id="COURIER-1", **extra) -> dict:
    return {"event_id": event_id or fresh_event_id("hand"), "courier_id": courier_id, "handed_at": now_ms(), **extra}


def receive_req(tubes, *, lab_id=LUHN, event_id=None, **extra) -> dict:
    return {"event_id": event_id or fresh_event_id("recv"), "lab_id": lab_id, "tubes": list(tubes),
            "received_at": now_ms(), **extra}


def result_item(tube, result, *, lab_id=LUHN, event_id=None) -> dict:
    return {"event_id": event_id or fresh_event_id("res"), "lab_id": lab_id, "tube": tube, "result": result,
            "tested_at": now_ms()}


def post_box(server, req):
    status, _, got = server.request("POST", "/v1/boxes", req)
    return status, got


def post_handover(server, box, req):
    status, _, got = server.request("POST", f"/v1/boxes/{box}/handover", req)
    return status, got


def post_receive(server, box, req):
    status, _, got = server.request("POST", f"/v1/boxes/{box}/receive", req)
    return status, got


def post_results(server, items) -> list[dict]:
    status, _, got = server.request("POST", "/v1/results", {"results": items})
    assert status == 200, got
    assert len(got["results"]) == len(items)
    return got["results"]


def get_box(server, box):
    status, _, got = server.request("GET", f"/v1/boxes/{box}")
    assert status == 200, got
    return got


def tube_view(server, tube):
    status, _, got = server.tube(tube)
    assert status == 200, got
    return got


def positives(server, since, limit=None):
    path = f"/v1/positives?since={since}" + (f"&limit={limit}" if limit is not None else "")
    status, _, got = server.request("GET", path)
    assert status == 200, got
    return got


def in_transit_tubes(server, n, *, site_id, persons=1) -> tuple[str, list[str]]:
    """A box of n sealed DEMO-LUHN tubes, packed and handed over: (box, tubes)."""
    tubes = [luhn() for _ in range(n)]
    for t in tubes:
        bind_all(server, t, persons, site_id=site_id, pool_size=5)
        seal(server, t, site_id=site_id)
    box = fresh_box()
    status, got = post_box(server, box_req(box, tubes, site_id=site_id))
    assert status == 201, got
    status, got = post_handover(server, box, handover_req())
    assert status == 201, got
    return box, tubes


def received_tubes(server, n, *, site_id, persons=1) -> tuple[str, list[str]]:
    """n DEMO-LUHN tubes received by their lab: (box, tubes)."""
    box, tubes = in_transit_tubes(server, n, site_id=site_id, persons=persons)
    status, got = post_receive(server, box, receive_req(tubes))
    assert status == 201 and got["received"] == n, got
    return box, tubes


def persons_of(evs) -> list[dict]:
    return [{"person": e["person"], "scanned_at": e["scanned_at"], "event_id": e["event_id"]} for e in evs]


# -- 1. a whole day ---------------------------------------------------------------------


def test_a_whole_day(server):
    site, site2 = fresh_site(), fresh_site()
    day_start = server.last_seq()

    # Three 10-in-1 tubes filled, one short tube of 4; all sealed.
    t1, t2, t3, t4 = (luhn() for _ in range(4))
    pools = {t: bind_all(server, t, 10, site_id=site) for t in (t1, t2, t3)}
    pools[t4] = bind_all(server, t4, 4, site_id=site)
    for t in (t1, t2, t3, t4):
        got = seal(server, t, site_id=site)
        assert got["count"] == len(pools[t]) and got["state"] == "sealed"

    # A sealed tube of another site and an unsealed tube of this one.
    foreign = luhn()
    bind_all(server, foreign, 2, site_id=site2)
    seal(server, foreign, site_id=site2)
    unsealed = luhn()
    bind_all(server, unsealed, 3, site_id=site)

    # Box A with the two bad tubes in its list: refused, naming them by reason.
    box_a, box_b = fresh_box(), fresh_box()
    bad = box_req(box_a, [t1, foreign, t2, unsealed, t3], site_id=site)
    before = server.last_seq()
    status, got = post_box(server, bad)
    assert status == 409, got
    err = got["error"]
    assert err["code"] == "tubes_not_boxable" and err["field"] == "tubes"
    assert err["other_site"] == [foreign] and err["not_sealed"] == [unsealed]
    assert not {"unknown", "already_boxed"} & set(err), err
    assert server.last_seq() == before
    assert server.request("GET", f"/v1/boxes/{box_a}")[0] == 404
    for t in (t1, t2, t3):
        assert tube_view(server, t)["state"] == "sealed"
    assert tube_view(server, unsealed)["state"] == "open"
    assert tube_view(server, foreign)["state"] == "sealed"

    # The refusal did not claim the event id: the corrected list goes under it.
    good = box_req(box_a, [t1, t2, t3], site_id=site, event_id=bad["event_id"])
    status, got = post_box(server, good)
    assert status == 201, got
    assert (got["result"], got["box"], got["tubes"], got["event_id"]) == ("packed", box_a, 3, bad["event_id"])
    assert got["seq"] == before + 1
    status, got_b = post_box(server, box_req(box_b, [t4], site_id=site))
    assert status == 201 and got_b["tubes"] == 1, got_b
    for t, b in ((t1, box_a), (t2, box_a), (t3, box_a), (t4, box_b)):
        view = tube_view(server, t)
        assert (view["state"], view["box"]) == ("boxed", b)
    view_a = get_box(server, box_a)
    assert view_a == {"box": box_a, "site_id": site, "state": "packed", "tubes": [t1, t2, t3],
                      "packed_seq": got["seq"]}

    # Hand-over of both boxes.
    hand_a = handover_req(courier_id="COURIER-7")
    status, got_ha = post_handover(server, box_a, hand_a)
    assert status == 201, got_ha
    assert (got_ha["result"], got_ha["box"], got_ha["tubes"], got_ha["courier_id"]) == ("handed_over", box_a, 3,
                                                                                        "COURIER-7")
    status, got_hb = post_handover(server, box_b, handover_req(courier_id="COURIER-7"))
    assert status == 201, got_hb
    assert get_box(server, box_a)["state"] == "in_transit"
    for t in (t1, t2, t3, t4):
        assert tube_view(server, t)["state"] == "in_transit"

    # The lab opens box A: t3 missing, t4 (box B's) found in it, and a DEMO-GS1 tube.
    stray = gs1()
    recv_a = receive_req([t1, t4, t2, stray])
    status, got = post_receive(server, box_a, recv_a)
    assert status == 201, got
    assert got == {"result": "received", "event_id": recv_a["event_id"], "seq": got["seq"], "box": box_a,
                   "expected": 3, "found": 4, "received": 2, "missing": [t3], "extra": [t4, stray],
                   "other_lab": [stray]}
    assert got["seq"] == server.last_seq()
    assert get_box(server, box_a) == {
        "box": box_a, "site_id": site, "state": "received", "tubes": [t1, t2, t3], "packed_seq": view_a["packed_seq"],
        "courier_id": "COURIER-7", "handed_at": hand_a["handed_at"], "handover_seq": got_ha["seq"],
        "lab_id": LUHN, "received_at": recv_a["received_at"], "receive_seq": got["seq"],
        "found": [t1, t4, t2, stray], "missing": [t3], "extra": [t4, stray], "other_lab": [stray],
    }
    assert [tube_view(server, t)["state"] for t in (t1, t2, t3, t4)] == [
        "received", "received", "in_transit", "in_transit"]
    # Box B, with its tube.
    status, got = post_receive(server, box_b, receive_req([t4]))
    assert status == 201, got
    assert (got["expected"], got["found"], got["received"], got["missing"], got["extra"], got["other_lab"]) == (
        1, 1, 1, [], [], [])
    assert tube_view(server, t4)["state"] == "received"

    # Results in one batch: t1 positive, t2 invalid, t4 negative.
    batch = [result_item(t1, "positive"), result_item(t2, "invalid"), result_item(t4, "negative")]
    answers = post_results(server, batch)
    for item, ans in zip(batch, answers):
        assert ans["status"] == 201, ans
        assert (ans["result"], ans["event_id"], ans["tube"], ans["test_result"]) == (
            "recorded", item["event_id"], item["tube"], item["result"])
        assert "previous" not in ans
    seq_pos, seq_inv, seq_neg = (a["seq"] for a in answers)
    assert seq_pos < seq_inv < seq_neg == server.last_seq()
    for item in batch:
        view = tube_view(server, item["tube"])
        assert view["state"] == "resulted" and view["result"] == item["result"]
        assert len(view["results"]) == 1

    # The missing tube was never received; another lab may not post a result.
    before = server.last_seq()
    [ans] = post_results(server, [result_item(t3, "negative")])
    assert (ans["status"], code(ans)) == (409, "tube_not_received"), ans
    [ans] = post_results(server, [result_item(t1, "negative", lab_id=GS1)])
    assert (ans["status"], code(ans)) == (403, "wrong_lab"), ans
    assert server.last_seq() == before
    assert tube_view(server, t3)["state"] == "in_transit" and "result" not in tube_view(server, t3)
    assert tube_view(server, t1)["result"] == "positive"

    # The follow-up teams' feed: both pools, every person, in change-log order.
    feed = positives(server, day_start)
    assert feed["positives"] == [
        {"seq": seq_pos, "tube": t1, "result": "positive", "lab_id": LUHN, "tested_at": batch[0]["tested_at"],
         "current_result": "positive", "site_id": site, "box": box_a, "persons": persons_of(pools[t1])},
        {"seq": seq_inv, "tube": t2, "result": "invalid", "lab_id": LUHN, "tested_at": batch[1]["tested_at"],
         "current_result": "invalid", "site_id": site, "box": box_a, "persons": persons_of(pools[t2])},
    ]
    assert len(feed["positives"][0]["persons"]) == 10
    assert feed["next_since"] == seq_inv
    # Paging with limit: one at a time, nothing skipped.
    page = positives(server, day_start, limit=1)
    assert [p["seq"] for p in page["positives"]] == [seq_pos] and page["next_since"] == seq_pos
    page = positives(server, page["next_since"], limit=1)
    assert [p["seq"] for p in page["positives"]] == [seq_inv] and page["next_since"] == seq_inv

    # The lab corrects t1: a new event; the history keeps both.
    fix = result_item(t1, "negative")
    [ans] = post_results(server, [fix])
    assert ans["status"] == 201 and ans["test_result"] == "negative" and ans["previous"] == "positive", ans
    view = tube_view(server, t1)
    assert view["result"] == "negative"
    assert view["results"] == [
        {"result": "positive", "lab_id": LUHN, "tested_at": batch[0]["tested_at"], "event_id": batch[0]["event_id"],
         "seq": seq_pos},
        {"result": "negative", "lab_id": LUHN, "tested_at": fix["tested_at"], "event_id": fix["event_id"],
         "seq": ans["seq"]},
    ]
    feed = positives(server, day_start)
    assert [(p["tube"], p["result"], p["current_result"]) for p in feed["positives"]] == [
        (t1, "positive", "negative"), (t2, "invalid", "invalid")]

    # A poller at next_since sees nothing new, then the next positive.
    empty = positives(server, feed["next_since"])
    assert empty == {"positives": [], "next_since": feed["next_since"]}
    late = result_item(t4, "positive")
    [ans] = post_results(server, [late])
    assert ans["status"] == 201 and ans["previous"] == "negative", ans
    new = positives(server, empty["next_since"])
    assert new == {"positives": [
        {"seq": ans["seq"], "tube": t4, "result": "positive", "lab_id": LUHN, "tested_at": late["tested_at"],
         "current_result": "positive", "site_id": site, "box": box_b, "persons": persons_of(pools[t4])},
    ], "next_since": ans["seq"]}
    assert positives(server, new["next_since"]) == {"positives": [], "next_since": new["next_since"]}

    # The site's statistics match what was sent today.
    status, _, stats = server.request("GET", f"/v1/sites/{site}/stats")
    assert status == 200
    total = stats["total"]
    assert {k: total[k] for k in ("people", "voided", "people_sampled", "tubes_opened", "tubes_sealed",
                                  "tubes_boxed", "tubes_received", "tubes_resulted", "positive_results",
                                  "sealed_not_received")} == {
        "people": 37, "voided": 0, "people_sampled": 37, "tubes_opened": 5, "tubes_sealed": 4,
        "tubes_boxed": 4, "tubes_received": 3, "tubes_resulted": 3, "positive_results": 3,
        "sealed_not_received": 1,
    }
    assert sum(h["people"] for h in stats["hours"]) == 37

    # A person of the positive pool sees the tube's state and latest result.
    status, _, person = server.request("GET", f"/v1/persons/{pools[t1][0]['person']}")
    assert [(t["tube"], t["state"], t["result"]) for t in person["tubes"]] == [(t1, "resulted", "negative")]


# -- 2. refusals ----------------------------------------------------------------------


def assert_refused(server, status_got, expected_status, expected_code, before_seq):
    status, got = status_got
    assert (status, code(got)) == (expected_status, expected_code), got
    assert server.last_seq() == before_seq


def test_unknown_box_is_refused(server):
    box = fresh_box()
    before = server.last_seq()
    assert_refused(server, post_handover(server, box, handover_req()), 404, "unknown_box", before)
    assert_refused(server, post_receive(server, box, receive_req([luhn()])), 404, "unknown_box", before)
    status, _, got = server.request("GET", f"/v1/boxes/{box}")
    assert status == 404 and code(got) == "not_found"


def test_receive_before_handover_and_handover_twice(server):
    site = fresh_site()
    t = luhn()
    bind_all(server, t, 2, site_id=site, pool_size=5)
    seal(server, t, site_id=site)
    box = fresh_box()
    assert post_box(server, box_req(box, [t], site_id=site))[0] == 201
    packed = get_box(server, box), tube_view(server, t)
    before = server.last_seq()
    assert_refused(server, post_receive(server, box, receive_req([t])), 409, "box_not_handed_over", before)
    assert (get_box(server, box), tube_view(server, t)) == packed

    assert post_handover(server, box, handover_req())[0] == 201
    handed = get_box(server, box), tube_view(server, t)
    before = server.last_seq()
    assert_refused(server, post_handover(server, box, handover_req(courier_id="COURIER-2")), 409,
                   "box_handed_over", before)
    assert (get_box(server, box), tube_view(server, t)) == handed


def test_box_received_twice(server):
    box, tubes = received_tubes(server, 2, site_id=fresh_site())
    received = get_box(server, box), [tube_view(server, t) for t in tubes]
    before = server.last_seq()
    # another event id, even with the same tubes: the box was received already
    assert_refused(server, post_receive(server, box, receive_req(tubes)), 409, "box_received", before)
    assert_refused(server, post_receive(server, box, receive_req(tubes[:1])), 409, "box_received", before)
    # and a received box cannot be handed over again
    assert_refused(server, post_handover(server, box, handover_req()), 409, "box_handed_over", before)
    assert (get_box(server, box), [tube_view(server, t) for t in tubes]) == received


def test_box_exists_and_unboxable_tubes(server):
    site = fresh_site()
    t1, t2, t3 = luhn(), luhn(), luhn()
    for t in (t1, t2, t3):
        bind_all(server, t, 1, site_id=site, pool_size=5)
        seal(server, t, site_id=site)
    box = fresh_box()
    assert post_box(server, box_req(box, [t1], site_id=site))[0] == 201
    packed = get_box(server, box)
    before = server.last_seq()
    # the same box barcode again, with other tubes and another event id
    assert_refused(server, post_box(server, box_req(box, [t2], site_id=site)), 409, "box_exists", before)
    assert get_box(server, box) == packed
    assert tube_view(server, t2)["state"] == "sealed"
    # a boxed tube and an unknown one in a new box: named, nothing packed
    unknown = luhn()
    other = fresh_box()
    status, got = post_box(server, box_req(other, [t3, t1, unknown], site_id=site))
    assert_refused(server, (status, got), 409, "tubes_not_boxable", before)
    assert got["error"]["already_boxed"] == [t1] and got["error"]["unknown"] == [unknown]
    assert not {"not_sealed", "other_site"} & set(got["error"])
    assert server.request("GET", f"/v1/boxes/{other}")[0] == 404
    assert tube_view(server, t3)["state"] == "sealed"


def test_ids_ending_in_a_newline_are_malformed(server):
    # "$" in a pattern also matches before a final newline; ids are whole strings of their characters
    site = fresh_site()
    tube = luhn()
    bind_all(server, tube, 1, site_id=site, pool_size=5)
    seal(server, tube, site_id=site)
    before = server.last_seq()
    for req, field in ((box_req(fresh_box() + "\n", [tube], site_id=site), "box"),
                       (box_req(fresh_box(), [tube], site_id=site, event_id=fresh_event_id("box") + "\n"),
                        "event_id")):
        status, got = post_box(server, req)
        assert status == 400 and code(got) == "malformed" and got["error"]["field"] == field, got
    assert server.last_seq() == before
    assert tube_view(server, tube)["state"] == "sealed"


def test_an_empty_tube_code_is_unknown_not_a_store_failure(server):
    # LMDB refuses an empty key: a lookup of "" must answer "no such tube",
    # not fail the write transaction (and with it every request committed in its group)
    box, (tube,) = received_tubes(server, 1, site_id=fresh_site())
    before = server.last_seq()
    empty, good = result_item("", "positive"), result_item(tube, "negative")
    answers = post_results(server, [empty, good])
    assert (answers[0]["status"], code(answers[0])) == (404, "unknown_tube"), answers
    assert answers[1]["status"] == 201, answers
    assert server.last_seq() == before + 1
    site = fresh_site()
    sealed = luhn()
    bind_all(server, sealed, 1, site_id=site, pool_size=5)
    seal(server, sealed, site_id=site)
    before = server.last_seq()
    status, got = post_box(server, box_req(fresh_box(), [sealed, ""], site_id=site))
    assert_refused(server, (status, got), 409, "tubes_not_boxable", before)
    assert got["error"]["unknown"] == [""], got


def test_result_refusals_and_malformed_items(server):
    box, (t1, t2) = received_tubes(server, 2, site_id=fresh_site())
    before = server.last_seq()
    [ans] = post_results(server, [result_item(luhn(), "negative")])
    assert (ans["status"], code(ans)) == (404, "unknown_tube"), ans
    assert server.last_seq() == before

    # A bad `result` value is its own 400 item; the others apply.
    good1, good2 = result_item(t1, "negative"), result_item(t2, "positive")
    bad = result_item(t1, "maybe")
    answers = post_results(server, [good1, bad, good2])
    assert answers[0]["status"] == 201 and answers[0]["test_result"] == "negative", answers
    assert answers[1]["status"] == 400 and code(answers[1]) == "malformed", answers
    assert answers[1]["error"]["field"] == "result"
    assert answers[2]["status"] == 201 and answers[2]["test_result"] == "positive", answers
    assert server.last_seq() == before + 2
    assert tube_view(server, t1)["results"] == [
        {"result": "negative", "lab_id": LUHN, "tested_at": good1["tested_at"], "event_id": good1["event_id"],
         "seq": answers[0]["seq"]}]
    # the malformed item's id was never claimed
    [ans] = post_results(server, [dict(bad, result="invalid")])
    assert ans["status"] == 201 and ans["previous"] == "negative", ans
    # a batch that is not a batch is refused as a whole
    before = server.last_seq()
    status, _, got = server.request("POST", "/v1/results", {"results": []})
    assert status == 400 and code(got) == "malformed", got
    assert server.last_seq() == before


# -- 3. idempotency ---------------------------------------------------------------------


def test_retries_are_duplicates_and_reused_ids_conflict(server):
    site = fresh_site()
    tubes = [luhn(), luhn()]
    for t in tubes:
        bind_all(server, t, 1, site_id=site, pool_size=5)
        seal(server, t, site_id=site)
    box = fresh_box()

    def dup(status_got, req, original_result, seq):
        status, got = status_got
        assert status == 200, got
        assert got == {"result": "duplicate", "event_id": req["event_id"],
                       "original": {"result": original_result, "event_id": req["event_id"], "seq": seq}}

    # box
    req_box = box_req(box, tubes, site_id=site)
    status, first = post_box(server, req_box)
    assert status == 201, first
    before = server.last_seq()
    dup(post_box(server, req_box), req_box, "packed", first["seq"])
    assert_refused(server, post_box(server, dict(req_box, tubes=tubes[:1])), 409, "event_id_conflict", before)
    assert_refused(server, post_box(server, dict(req_box, box=fresh_box())), 409, "event_id_conflict", before)

    # handover
    req_hand = handover_req()
    status, first = post_handover(server, box, req_hand)
    assert status == 201, first
    before = server.last_seq()
    dup(post_handover(server, box, req_hand), req_hand, "handed_over", first["seq"])
    assert_refused(server, post_handover(server, box, dict(req_hand, courier_id="COURIER-OTHER")), 409,
                   "event_id_conflict", before)
    # the same id used for another kind of event
    assert_refused(server, post_box(server, box_req(fresh_box(), tubes, site_id=site,
                                                     event_id=req_hand["event_id"])), 409, "event_id_conflict", before)

    # receive
    req_recv = receive_req(tubes)
    status, first = post_receive(server, box, req_recv)
    assert status == 201 and first["received"] == 2, first
    before = server.last_seq()
    dup(post_receive(server, box, req_recv), req_recv, "received", first["seq"])
    assert_refused(server, post_receive(server, box, dict(req_recv, tubes=tubes[:1])), 409, "event_id_conflict",
                   before)
    received = get_box(server, box)
    assert received["receive_seq"] == first["seq"] and received["missing"] == []

    # result
    item = result_item(tubes[0], "positive")
    [first] = post_results(server, [item])
    assert first["status"] == 201, first
    before = server.last_seq()
    [again] = post_results(server, [item])
    assert again == {"result": "duplicate", "event_id": item["event_id"],
                     "original": {"result": "recorded", "event_id": item["event_id"], "seq": first["seq"]},
                     "status": 200}
    [conflict] = post_results(server, [dict(item, result="negative")])
    assert (conflict["status"], code(conflict)) == (409, "event_id_conflict"), conflict
    assert server.last_seq() == before
    view = tube_view(server, tubes[0])
    assert view["result"] == "positive" and len(view["results"]) == 1
    # a retry inside a batch with a new item: the new one applies, the old one is a duplicate
    other = result_item(tubes[1], "negative")
    answers = post_results(server, [item, other])
    assert [a["status"] for a in answers] == [200, 201], answers
    assert answers[0]["original"]["seq"] == first["seq"]
    assert server.last_seq() == before + 1


# -- 4. voided persons -----------------------------------------------------------------------


def test_voided_person_is_not_in_the_positives(server):
    site = fresh_site()
    t = luhn()
    evs = bind_all(server, t, 5, site_id=site, pool_size=5)
    void(server, evs[1]["event_id"])
    seal(server, t, site_id=site)
    box = fresh_box()
    assert post_box(server, box_req(box, [t], site_id=site))[0] == 201
    assert post_handover(server, box, handover_req())[0] == 201
    assert post_receive(server, box, receive_req([t]))[0] == 201
    since = server.last_seq()
    [ans] = post_results(server, [result_item(t, "positive")])
    assert ans["status"] == 201, ans
    feed = positives(server, since)
    assert [p["tube"] for p in feed["positives"]] == [t]
    listed = feed["positives"][0]["persons"]
    assert listed == persons_of([e for i, e in enumerate(evs) if i != 1])
    assert evs[1]["person"] not in {p["person"] for p in listed}


# -- refusals that need no transaction: the lab of a receipt, event times --------------


def test_a_receipt_by_an_unknown_lab_or_one_owning_none_of_the_tubes_leaves_the_box(server):
    # a typo in lab_id used to receive the box (every tube "other lab"),
    # and the real lab could then never receive it nor post a result
    site = fresh_site()
    box, tubes = in_transit_tubes(server, 2, site_id=site)
    before = server.last_seq()
    status, got = post_receive(server, box, receive_req(tubes, lab_id="DEMO-LUNH"))
    assert (status, code(got), got["error"]["field"]) == (422, "unknown_lab", "lab_id")
    status, got = post_receive(server, box, receive_req(tubes, lab_id=GS1))  # a real lab, not of these tubes
    assert (status, code(got), got["error"]["field"]) == (403, "wrong_lab", "lab_id")
    assert server.last_seq() == before and get_box(server, box)["state"] == "in_transit"
    status, got = post_receive(server, box, receive_req(tubes))
    assert status == 201 and got["received"] == 2, got


@pytest.mark.parametrize("path, field, body", [
    ("/v1/tubes/{tube}/seal", "sealed_at", lambda: {"event_id": fresh_event_id("seal"), "site_id": "S",
                                                     "device_id": "D"}),
    ("/v1/boxes", "packed_at", lambda: box_req(fresh_box(), [luhn()], site_id="S")),
    ("/v1/boxes/{box}/handover", "handed_at", lambda: handover_req()),
    ("/v1/boxes/{box}/receive", "received_at", lambda: receive_req([luhn()])),
    ("/v1/bindings/{box}/void", "voided_at", lambda: {"event_id": fresh_event_id("void"), "device_id": "D",
                                                      "reason": "wrong person"}),
])
@pytest.mark.parametrize("when", ["epoch", "future"])
def test_lifecycle_times_are_checked_like_scanned_at(server, path, field, body, when):
    req = body()
    req[field] = 0 if when == "epoch" else now_ms() + 3_600_000
    before = server.last_seq()
    status, _, got = server.request("POST", path.format(tube=luhn(), box=fresh_box()), req)
    assert (status, code(got), got["error"]["field"]) == (422, "invalid_time", field), got
    assert server.last_seq() == before


def test_a_result_dated_1970_is_refused_not_hidden_from_dated_exports(server):
    _, tubes = received_tubes(server, 1, site_id=fresh_site())
    item = result_item(tubes[0], "positive")
    item["tested_at"] = 0
    [got] = post_results(server, [item])
    assert (got["error"]["code"], got["error"]["field"]) == ("invalid_time", "tested_at")
    assert "result" not in tube_view(server, tubes[0])


def test_not_found_and_not_allowed_do_not_echo_the_path(server):
    person = fresh_person()
    for method, path in (("GET", f"/v1/persons/{person}/tubes"), ("POST", f"/v1/persons/{person}")):
        status, _, got = server.request(method, path, {})
        assert status in (404, 405) and person not in got["error"]["message"], got


def test_retries_stay_duplicates_after_the_window_and_the_lab_table_change(server_factory):
    """A lab replays its receipt after a restart with a new lab table, and a
    site its seal after the event aged past the accepted age: both are the
    same events, so both are duplicates, not conflicts or refusals."""
    first = server_factory()
    site = fresh_site()
    box, tubes = in_transit_tubes(first, 1, site_id=site)
    receipt = receive_req(tubes)
    assert post_receive(first, box, receipt)[0] == 201
    tube = luhn()
    bind_all(first, tube, 1, site_id=site)
    sealing = {"event_id": fresh_event_id("seal"), "site_id": site, "device_id": "D",
               "sealed_at": now_ms() - 2 * 86_400_000}  # two days old: within the default 7
    status, _, got = first.request("POST", f"/v1/tubes/{tube}/seal", sealing)
    assert status == 201, got
    first.stop()
    # the new lab takes the "100" prefix of these DEMO-LUHN codes: other_lab changes
    new_lab = '[[labs]]\nid = "DEMO-NEW"\nprefix = "100"\nlength = 12\ncharset = "digits"\ncheck = "none"\n\n'
    assert tubes[0].startswith("100")
    again = server_factory(data=first.data, config=config_with(rules={"scanned_at_age_days_max": 1}) + new_lab)
    status, got = post_receive(again, box, receipt)
    assert status == 200 and got["result"] == "duplicate", got
    status, _, got = again.request("POST", f"/v1/tubes/{tube}/seal", sealing)
    assert status == 200 and got["result"] == "duplicate", got
    other = {**sealing, "event_id": fresh_event_id("seal")}  # a new event that old is refused
    status, _, got = again.request("POST", f"/v1/tubes/{tube}/seal", other)
    assert (status, code(got)) == (422, "invalid_time"), got


def post_tube_receive(server, tube, req):
    status, _, got = server.request("POST", f"/v1/tubes/{tube}/receive", req)
    return status, got


def tube_receive_req(*, lab_id=LUHN, event_id=None, **extra) -> dict:
    return {"event_id": event_id or fresh_event_id("rt"), "lab_id": lab_id, "received_at": now_ms(), **extra}


def test_a_tube_found_in_another_box_is_received_on_its_own_and_resulted(server):
    # Box A's tube t_a travels in box B. B's receipt lists it as extra, A's
    # as missing; neither receives it. Before this route it stayed in transit
    # for good, and its people never got a result.
    site = fresh_site()
    box_a, (t_a, t_a2) = in_transit_tubes(server, 2, site_id=site)
    box_b, (t_b,) = in_transit_tubes(server, 1, site_id=site)
    status, got = post_receive(server, box_b, receive_req([t_b, t_a]))
    assert status == 201 and (got["received"], got["extra"]) == (1, [t_a]), got
    assert tube_view(server, t_a)["state"] == "in_transit"

    before = server.last_seq()
    req = tube_receive_req()
    status, got = post_tube_receive(server, t_a, req)
    assert status == 201, got
    assert (got["result"], got["tube"], got["box"], got["seq"]) == ("received", t_a, box_a, before + 1)
    assert tube_view(server, t_a)["state"] == "received"
    assert post_tube_receive(server, t_a, req) == (200, {
        "result": "duplicate", "event_id": req["event_id"],
        "original": {"result": "received", "event_id": req["event_id"], "seq": before + 1}})
    status, got = post_tube_receive(server, t_a, tube_receive_req())  # another receipt of it
    assert (status, code(got), got["error"]["field"]) == (409, "tube_not_in_transit", "tube")

    # its own box's receipt: missing there, and not counted twice
    status, got = post_receive(server, box_a, receive_req([t_a2]))
    assert status == 201 and (got["received"], got["missing"]) == (1, [t_a]), got
    [item] = post_results(server, [result_item(t_a, "negative")])
    assert item["status"] == 201, item
    stats = server.request("GET", f"/v1/sites/{site}/stats")[2]
    assert stats["total"]["tubes_received"] == 3 and stats["total"]["sealed_not_received"] == 0


def test_a_single_tube_receipt_is_refused_as_documented_and_changes_nothing(server):
    site = fresh_site()
    box, (t,) = in_transit_tubes(server, 1, site_id=site)
    still_open = luhn()
    bind_all(server, still_open, 1, site_id=site, pool_size=5)
    before = server.last_seq()
    cases = [
        (t, tube_receive_req(lab_id="DEMO-LUNH"), 422, "unknown_lab", "lab_id"),  # not a configured lab
        (t, tube_receive_req(lab_id=GS1), 403, "wrong_lab", "lab_id"),  # a lab, not this tube's
        (luhn(), tube_receive_req(), 404, "unknown_tube", "tube"),
        (still_open, tube_receive_req(), 409, "tube_not_in_transit", "tube"),  # never sealed
        (t, tube_receive_req(tube=still_open), 400, "malformed", "tube"),  # the body names another tube
    ]
    malformed = events_total(server.metrics(), "rejected", "malformed")
    for tube, req, status, error, field in cases:
        got_status, got = post_tube_receive(server, tube, req)
        assert (got_status, code(got), got["error"]["field"]) == (status, error, field), (tube, req, got)
    assert server.last_seq() == before and tube_view(server, t)["state"] == "in_transit"
    # the body naming another tube counts as a malformed event, as every other one does
    assert events_total(server.metrics(), "rejected", "malformed") == malformed + 1
    assert get_box(server, box)["state"] == "in_transit"


def test_a_tube_the_lab_holds_is_received_on_its_own_before_its_papers_arrive(server):
    # Sealed but never boxed, or boxed with the hand-over still on the
    # courier's offline phone: the lab holds the tube, and without a receipt
    # no result could be posted and its people never reached the feed.
    site = fresh_site()
    loose = luhn()
    evs = bind_all(server, loose, 2, site_id=site, pool_size=5)
    seal(server, loose, site_id=site)
    boxed = luhn()
    bind_all(server, boxed, 1, site_id=site, pool_size=5)
    seal(server, boxed, site_id=site)
    box = fresh_box()
    assert post_box(server, box_req(box, [boxed], site_id=site))[0] == 201
    for tube, was in ((loose, "sealed"), (boxed, "boxed")):
        assert tube_view(server, tube)["state"] == was
        status, got = post_tube_receive(server, tube, tube_receive_req())
        assert status == 201 and got["result"] == "received", got
        assert tube_view(server, tube)["state"] == "received"
    # The papers arrive later and leave the received tube where it is.
    assert post_handover(server, box, handover_req())[0] == 201
    assert tube_view(server, boxed)["state"] == "received"
    status, got = post_receive(server, box, receive_req([boxed]))
    assert status == 201 and got["received"] == 0, got
    since = server.last_seq()
    [item] = post_results(server, [result_item(loose, "positive")])
    assert item["status"] == 201, item
    [entry] = positives(server, since)["positives"]
    assert entry["tube"] == loose and [p["person"] for p in entry["persons"]] == [e["person"] for e in evs]
    stats = server.request("GET", f"/v1/sites/{site}/stats")[2]["total"]
    assert (stats["tubes_received"], stats["sealed_not_received"]) == (2, 0), stats


def test_a_packing_that_reaches_the_server_after_the_lab_received_a_tube_boxes_the_rest(server):
    # The site's phone packed three tubes offline; the lab received one of
    # them on its own (and even posted its result) before the packing
    # synced. The packing was refused whole, as already_boxed, and the box
    # never existed for the courier or the lab.
    site = fresh_site()
    tubes = [luhn() for _ in range(3)]
    for t in tubes:
        bind_all(server, t, 1, site_id=site, pool_size=5)
        seal(server, t, site_id=site)
    early, resulted = tubes[0], tubes[1]
    for t in (early, resulted):
        assert post_tube_receive(server, t, tube_receive_req())[0] == 201
    [item] = post_results(server, [result_item(resulted, "negative")])
    assert item["status"] == 201, item
    box = fresh_box()
    status, got = post_box(server, box_req(box, tubes, site_id=site))
    assert status == 201, got
    assert (got["tubes"], got["received_already"]) == (3, [early, resulted]), got
    assert [tube_view(server, t)["state"] for t in tubes] == ["received", "resulted", "boxed"]
    assert all(tube_view(server, t)["box"] == box for t in tubes)
    assert post_handover(server, box, handover_req())[0] == 201
    assert [tube_view(server, t)["state"] for t in tubes] == ["received", "resulted", "in_transit"]
    status, got = post_receive(server, box, receive_req(tubes))
    assert status == 201 and got["received"] == 1 and got["missing"] == [] and got["extra"] == [], got
    stats = server.request("GET", f"/v1/sites/{site}/stats")[2]["total"]
    assert (stats["tubes_boxed"], stats["tubes_received"], stats["sealed_not_received"]) == (3, 3, 0), stats
    # A tube in a box already is still refused, and so is the whole packing.
    before = server.last_seq()
    status, got = post_box(server, box_req(fresh_box(), [early], site_id=site))
    assert status == 409 and got["error"]["already_boxed"] == [early], got
    assert server.last_seq() == before


def test_a_packing_of_sealed_tubes_only_says_nothing_of_received_ones(server):
    site = fresh_site()
    tube = luhn()
    bind_all(server, tube, 1, site_id=site, pool_size=5)
    seal(server, tube, site_id=site)
    status, got = post_box(server, box_req(fresh_box(), [tube], site_id=site))
    assert status == 201 and "received_already" not in got, got


def test_the_latest_test_decides_a_tubes_result_whatever_order_they_arrive_in(server):
    # A lab system uploaded the retest (negative, tested later) before the
    # first test (positive): the older positive became the tube's result.
    _, (tube,) = received_tubes(server, 1, site_id=fresh_site())
    first, retest = result_item(tube, "positive"), result_item(tube, "negative")
    retest["tested_at"] = first["tested_at"] + 1000
    [got] = post_results(server, [retest])
    assert got["status"] == 201 and "previous" not in got, got
    [got] = post_results(server, [first])
    assert got["status"] == 201 and got["current"] == "negative" and "previous" not in got, got
    view = tube_view(server, tube)
    assert view["result"] == "negative"
    assert sorted(r["result"] for r in view["results"]) == ["negative", "positive"]
    # A newer one still changes it, and says from what.
    later = result_item(tube, "positive")
    later["tested_at"] = retest["tested_at"] + 1000
    [got] = post_results(server, [later])
    assert got["previous"] == "negative" and tube_view(server, tube)["result"] == "positive", got


def test_a_misread_barcode_in_a_receipt_is_extra_not_another_labs(server):
    site = fresh_site()
    box, (tube,) = in_transit_tubes(server, 1, site_id=site)
    misread = tube[:-1] + str((int(tube[-1]) + 1) % 10)  # fails the Luhn check
    other_lab = gs1()
    status, got = post_receive(server, box, receive_req([tube, misread, other_lab]))
    assert status == 201, got
    assert got["extra"] == [misread, other_lab] and got["other_lab"] == [other_lab], got
    assert get_box(server, box)["other_lab"] == [other_lab]


def test_a_result_for_a_lab_that_is_not_configured_is_unknown_lab(server):
    # It was 403 wrong_lab, "only the tube's own lab may post its result",
    # where a tube receipt with the same typo said 422 unknown_lab.
    _, (tube,) = received_tubes(server, 1, site_id=fresh_site())
    before = server.last_seq()
    [got] = post_results(server, [result_item(tube, "negative", lab_id="DEMO-LUNH")])
    assert (got["status"], got["error"]["code"], got["error"]["field"]) == (422, "unknown_lab", "lab_id"), got
    assert server.last_seq() == before
