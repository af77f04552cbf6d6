"""Boxes: packing sealed tubes, handing the box to a courier, receiving it at
the lab with a reconciliation against the site's list; and receiving one
tube that its own box's receipt does not bring (found in another box).

Each apply function is a pure function of (store, event), like the others
(see lifecycle.py for the claim/refuse pattern and the tube state table).
"""
from __future__ import annotations

from ingest import errors
from ingest.events import BoxEvent, HandoverEvent, ReceiveEvent, TubeReceiveEvent
from ingest.lifecycle import TRANSITIONS, claim, lab_tube, refuse
from ingest.records import (
    BOX_RECEIVED, BOXED, HANDED_OVER, IN_TRANSIT, PACKED, SEALED, TUBES_BOXED, TUBES_RECEIVED, Box, LogEntry,
)
from ingest.rules import Done, Outcome, Rejected
from ingest.writetx import WriteTx



def apply_box(tx: WriteTx, ev: BoxEvent) -> Outcome:
    payload, repeated = claim(tx, "box", ev, "packed")
    if repeated is not None:
        return repeated
    if tx.box(ev.box) is not None:
        return refuse(tx, ev.event_id, Rejected(errors.BOX_EXISTS, "this box was packed already", "box"))
    tubes = list(dict.fromkeys(ev.tubes))  # a tube scanned twice goes in once
    problems: dict[str, list[str]] = {}
    heads = []
    # Received at the lab on its own before this packing reached the server
    # (the site's phone was offline): the tube is in the box on the site's
    # papers, and keeps its state, as a late hand-over leaves it.
    at_lab = []
    for code in tubes:
        tube = tx.tube(code)
        if tube is None:
            why = "unknown"
        elif tube.site_id != ev.site_id:
            why = "other_site"
        elif tube.state == SEALED:
            heads.append((code, tube))
            continue
        elif tube.state < SEALED:
            why = "not_sealed"
        elif tube.box:
            why = "already_boxed"
        else:
            at_lab.append((code, tube))
            continue
        problems.setdefault(why, []).append(code)
    if problems:
        return refuse(tx, ev.event_id, Rejected(
            errors.TUBES_NOT_BOXABLE, "only sealed tubes of this site that are in no box can be boxed", "tubes",
            problems))
    seq = tx.append(LogEntry("box", "", payload))
    after = TRANSITIONS[("box", SEALED)]
    for code, tube in heads:
        tube.state = after
        tube.box = ev.box
        tx.put_tube(code, tube)
    for code, tube in at_lab:
        tube.box = ev.box
        tx.put_tube(code, tube)
    tx.put_box(ev.box, Box(ev.site_id, tubes, PACKED, seq))
    tx.count(ev.site_id, TUBES_BOXED, len(tubes))
    done = {"box": ev.box, "tubes": len(tubes)}
    if at_lab:
        done["received_already"] = [code for code, _ in at_lab]
    return Done("packed", ev.event_id, seq, done)


def apply_handover(tx: WriteTx, ev: HandoverEvent) -> Outcome:
    payload, repeated = claim(tx, "handover", ev, "handed_over")
    if repeated is not None:
        return repeated
    box = tx.box(ev.box)
    if box is None:
        return refuse(tx, ev.event_id, Rejected(errors.UNKNOWN_BOX, "no box has this barcode", "box"))
    if box.state != PACKED:
        return refuse(tx, ev.event_id, Rejected(errors.BOX_HANDED_OVER, "this box was handed over already", "box"))
    seq = tx.append(LogEntry("handover", "", payload))
    for code in box.tubes:
        tube = tx.tube(code)
        if tube.state == BOXED:
            tube.state = TRANSITIONS[("handover", BOXED)]
            tx.put_tube(code, tube)
    box.state = HANDED_OVER
    box.courier_id = ev.courier_id
    box.handed_at = ev.handed_at
    box.handover_seq = seq
    tx.put_box(ev.box, box)
    return Done("handed_over", ev.event_id, seq, {"box": ev.box, "tubes": len(box.tubes), "courier_id": ev.courier_id})


def apply_receive(tx: WriteTx, ev: ReceiveEvent, other_lab: list[str]) -> Outcome:
    """`other_lab`: the found tubes whose barcode belongs to another lab (or
    to none), decided from the lab table before the event was queued and
    stored with it, so that a replay does not depend on configuration."""
    payload, repeated = claim(tx, "receive", ev, "received", other_lab)
    if repeated is not None:
        return repeated
    box = tx.box(ev.box)
    if box is None:
        return refuse(tx, ev.event_id, Rejected(errors.UNKNOWN_BOX, "no box has this barcode", "box"))
    if box.state == BOX_RECEIVED:
        return refuse(tx, ev.event_id, Rejected(errors.BOX_RECEIVED, "this box was received already", "box"))
    if box.state != HANDED_OVER:
        return refuse(tx, ev.event_id, Rejected(
            errors.BOX_NOT_HANDED_OVER, "the box was never handed to a courier; post its hand-over first", "box"))
    found = list(dict.fromkeys(ev.tubes))
    listed = set(box.tubes)
    found_set = set(found)
    foreign = set(other_lab)
    missing = [t for t in box.tubes if t not in found_set]
    extra = [t for t in found if t not in listed]
    seq = tx.append(LogEntry("receive", ev.lab_id, payload))
    received = 0
    for code in found:
        if code not in listed or code in foreign:
            continue
        tube = tx.tube(code)
        if tube.state == IN_TRANSIT:
            tube.state = TRANSITIONS[("receive", IN_TRANSIT)]
            tube.received_seq = seq
            tx.put_tube(code, tube)
            received += 1
    box.state = BOX_RECEIVED
    box.lab_id = ev.lab_id
    box.received_at = ev.received_at
    box.receive_seq = seq
    box.found, box.missing, box.extra, box.other_lab = found, missing, extra, list(other_lab)
    tx.put_box(ev.box, box)
    tx.count(box.site_id, TUBES_RECEIVED, received)
    return Done("received", ev.event_id, seq, {
        "box": ev.box, "expected": len(box.tubes), "found": len(found), "received": received,
        "missing": missing, "extra": extra, "other_lab": list(other_lab),
    })


def apply_receive_tube(tx: WriteTx, ev: TubeReceiveEvent) -> Outcome:
    """A tube of this lab that arrived outside its own box: a box's receipt
    receives only the tubes listed in it, so one found in another box is
    `extra` there and `missing` in its own, and without this it would stay in
    transit, never to be resulted. Also a sealed tube never boxed, or one
    whose box's hand-over has not arrived (lifecycle.TRANSITIONS). The boxes'
    records keep what each receipt found; this moves only the tube."""
    payload, repeated = claim(tx, "receive_tube", ev, "received")
    if repeated is not None:
        return repeated
    found = lab_tube(tx, ev, "receive_tube", "receive it", "only a sealed tube can be received")
    if type(found) is Rejected:
        return found
    tube, after = found
    seq = tx.append(LogEntry("receive_tube", ev.lab_id, payload))
    tube.state = after
    tube.received_seq = seq
    tx.put_tube(ev.tube, tube)
    tx.count(tube.site_id, TUBES_RECEIVED)
    return Done("received", ev.event_id, seq, {"tube": ev.tube, "box": tube.box})
