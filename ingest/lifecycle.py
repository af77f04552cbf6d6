"""The tube lifecycle: its states, which event moves a tube from which state,
and the rules of each event.

    open --seal--> sealed --box--> boxed --handover--> in_transit
         --receive--> received --result--> resulted (--result--> resulted)

Bindings enter only open tubes; a void undoes a binding while the tube is
open. Every apply function here is, like rules.apply_binding, a pure function
of (store, event): it claims the event id (a retry answers `Repeat`, another
payload under the id `event_id_conflict`), checks its rules in order, and on
success writes its changes and one change-log entry; a refusal leaves the
transaction as it found it.
"""
from __future__ import annotations

import msgspec

from ingest import errors
from ingest.events import SealEvent, VoidEvent
from ingest.records import (
    BOXED, IN_TRANSIT, OPEN, RECEIVED, RESULTED, SEALED, STATE_NAMES, TUBES_SEALED, VOIDED, EventRecord, LogEntry,
    Tube,
)
from ingest.rules import Done, Outcome, Rejected, Repeat
from ingest.writetx import WriteTx

_astuple = msgspec.structs.astuple

# (event kind, state before) -> state after. An event not allowed in the
# tube's state is refused with the error named in REFUSED.
TRANSITIONS: dict[tuple[str, int], int] = {
    ("seal", OPEN): SEALED,
    ("box", SEALED): BOXED,
    ("handover", BOXED): IN_TRANSIT,
    ("receive", IN_TRANSIT): RECEIVED,
    # A tube the lab holds is received on its own whatever its papers say:
    # sealed but never boxed, or boxed but its box's hand-over not synced yet
    # (the courier's phone is offline). Without it the lab could not post its
    # result, and its people would never reach the positives feed. A later
    # hand-over or box receipt moves only tubes still boxed / in transit.
    ("receive_tube", SEALED): RECEIVED,
    ("receive_tube", BOXED): RECEIVED,
    ("receive_tube", IN_TRANSIT): RECEIVED,
    ("result", RECEIVED): RESULTED,
    ("result", RESULTED): RESULTED,  # a changed result is a new event; history kept
}
REFUSED = {
    "seal": errors.TUBE_CLOSED,
    "void": errors.TUBE_CLOSED,
    "result": errors.TUBE_NOT_RECEIVED,
    "receive": errors.TUBE_NOT_IN_TRANSIT,
    "receive_tube": errors.TUBE_NOT_IN_TRANSIT,
}


def claim(tx: WriteTx, kind: str, ev, result: str, *extra) -> tuple[list, Outcome | None]:
    """Claim the event's id: returns its change-log payload (the kind, the
    event's fields, then `extra`) and None, or the answer to an earlier claim
    of the id (a Repeat, or event_id_conflict).

    A retry is the same event when the client's part is: `extra` is what the
    server decided (a receipt's other-lab tubes, from the lab table), and a
    changed lab table must not turn a retry into a conflict."""
    sent = [kind, *_astuple(ev)]
    payload = [*sent, *extra]
    seen = tx.claim_event(ev.event_id, EventRecord(tx.seq + 1, 0, payload, kind))
    if seen is None:
        return payload, None
    stored = seen.payload[:len(sent)]
    # Stored by a release before a field was appended to the event (a seal's
    # expected_count): its retry sends that field's default, None.
    stored += [None] * (len(sent) - len(stored))
    if seen.kind != kind or stored != sent:
        return payload, Rejected(
            errors.EVENT_ID_CONFLICT, "event_id was used before with a different payload", "event_id")
    return payload, Repeat(ev.event_id, result, seen.seq)


def refuse(tx: WriteTx, event_id: str, rejection: Rejected) -> Rejected:
    tx.release_event(event_id)
    return rejection


def lab_tube(tx: WriteTx, ev, kind: str, own_lab_may: str, not_now: str) -> tuple[Tube, int] | Rejected:
    """The tube a lab's event names (a receipt of it, a result), with the
    state `kind` moves it to; or the refusal, its event id released: an
    unknown tube, another lab's, or one `kind` may not move now."""
    tube = tx.tube(ev.tube)
    if tube is None:
        return refuse(tx, ev.event_id, Rejected(errors.UNKNOWN_TUBE, "no binding names this tube", "tube"))
    if tube.lab != ev.lab_id:
        return refuse(tx, ev.event_id, Rejected(errors.WRONG_LAB, f"only the tube's own lab may {own_lab_may}",
                                                "lab_id"))
    after = TRANSITIONS.get((kind, tube.state))
    if after is None:
        return refuse(tx, ev.event_id, Rejected(REFUSED[kind], f"tube is {STATE_NAMES[tube.state]}; {not_now}", "tube"))
    return tube, after


def apply_seal(tx: WriteTx, ev: SealEvent) -> Outcome:
    payload, repeated = claim(tx, "seal", ev, "sealed")
    if type(repeated) is Repeat:
        tube = tx.tube(ev.tube)
        return repeated._replace(original={"tube": ev.tube, "count": tube.count, "state": STATE_NAMES[SEALED]})
    if repeated is not None:
        return repeated
    tube = tx.tube(ev.tube)
    if tube is None:
        return refuse(tx, ev.event_id, Rejected(errors.UNKNOWN_TUBE, "no binding names this tube", "tube"))
    if tube.site_id != ev.site_id:
        return refuse(tx, ev.event_id, Rejected(errors.SITE_MISMATCH, "tube was opened at another site", "site_id"))
    after = TRANSITIONS.get(("seal", tube.state))
    if after is None:
        return refuse(tx, ev.event_id, Rejected(
            REFUSED["seal"], f"tube is {STATE_NAMES[tube.state]}, only an open tube can be sealed", "tube"))
    if tube.count == 0:
        return refuse(tx, ev.event_id, Rejected(errors.TUBE_EMPTY, "an empty tube cannot be sealed", "tube"))
    if ev.expected_count is not None and tube.count != ev.expected_count:
        people = "person" if tube.count == 1 else "people"
        return refuse(tx, ev.event_id, Rejected(
            errors.COUNT_MISMATCH, f"tube holds {tube.count} {people}, the seal expects {ev.expected_count}; "
            "bind the missing scans (or void the extra ones) and seal again", "expected_count",
            {"count": tube.count}))
    seq = tx.append(LogEntry("seal", tube.lab, payload))
    tube.state = after
    tube.sealed_seq = seq
    tx.put_tube(ev.tube, tube)
    tx.count(tube.site_id, TUBES_SEALED)
    return Done("sealed", ev.event_id, seq, {"tube": ev.tube, "count": tube.count, "state": STATE_NAMES[after]})


def apply_void(tx: WriteTx, ev: VoidEvent) -> Outcome:
    payload, repeated = claim(tx, "void", ev, "voided")
    if repeated is not None:
        return repeated
    bound = tx.event(ev.binding_event_id)
    if bound is None or bound.kind != "binding":
        return refuse(tx, ev.event_id, Rejected(
            errors.UNKNOWN_BINDING, "no binding has this event id", "binding_event_id"))
    # Binding payloads are in BindingEvent field order: tube 3, person 4.
    tube_code, person = bound.payload[3], bound.payload[4]
    history = tx.person(person)
    # A pair duplicate's id names the scan of its original: void that one.
    binding_id = bound.original or ev.binding_event_id
    binding = next(b for b in history if b.event_id == binding_id)
    if binding.voided_seq:
        return refuse(tx, ev.event_id, Rejected(
            errors.BINDING_VOIDED, "this binding was voided already", "binding_event_id"))
    tube = tx.tube(tube_code)
    if tube.state != OPEN:
        return refuse(tx, ev.event_id, Rejected(
            REFUSED["void"], f"tube is {STATE_NAMES[tube.state]}; a binding can only be voided while it is open",
            "binding_event_id"))
    seq = tx.append(LogEntry("void", tube.lab, payload))
    member = tx.member(tube_code, binding.position)
    member.voided_seq = seq
    tx.put_member(tube_code, binding.position, member)
    binding.voided_seq = seq
    tx.put_person(person, history)
    tube.count -= 1
    tx.put_tube(tube_code, tube)
    tx.count(tube.site_id, VOIDED)
    return Done("voided", ev.event_id, seq, {"tube": tube_code, "count": tube.count,
                                              "binding_event_id": ev.binding_event_id})
