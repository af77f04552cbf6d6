"""The binding rules: every check an event passes, in one place.

Two halves, in the order the API documents them:

1. `check_stateless(event, ...)`: what needs no store, on the event loop
   before anything is queued: codes and the device clock (400/422).
2. `apply_binding(tx, event, lab, window_ms)`: what needs the store, inside
   the write transaction: dedup, tube state, capacity, the person window.
   It is a pure function of (store, event): the primary runs it on new
   events and a standby runs it, through `changelog.apply_entry`, on the
   change log; the same log always gives the same state. A rejected event leaves the
   transaction exactly as it found it.

   It runs compiled (`ext/_apply.pyx`, the hot path of every binding); the
   rules are read in `apply_binding_py` below, its plain-Python twin, which
   `INGEST_PURE_PYTHON=1` selects. Both give the same outcomes and the same
   store, byte for byte (tests/test_apply_kernel.py).
"""
from __future__ import annotations

import msgspec

from ingest import errors, kernels
from ingest.codes import INVALID_TUBE, TubeSchemes, person_check, person_reason
from ingest.events import BindingEvent
from ingest.keys import MEMBER_POSITION_MAX
from ingest.outcomes import Bound, Done, Duplicate, Outcome, Rejected, Repeat
from ingest.records import OPEN, PEOPLE, TUBES_OPENED, EventRecord, LogEntry, Member, PersonBinding, Tube
from ingest.writetx import WriteTx

__all__ = ["Bound", "Done", "Duplicate", "Outcome", "Rejected", "Repeat", "apply_binding", "apply_binding_py",
           "check_stateless"]

_astuple = msgspec.structs.astuple


def check_stateless(
    ev: BindingEvent, schemes: TubeSchemes, now_ms: int, today: int, future_ms_max: int, age_ms_max: int
) -> Rejected | str:
    """Return the tube's lab id, or why the event is refused without a lookup."""
    idx = schemes.classify(ev.tube)
    if idx < 0:
        if idx == INVALID_TUBE:
            return Rejected(errors.INVALID_TUBE, "tube barcode fails its lab's format or check character", "tube")
        return Rejected(errors.UNKNOWN_LAB, "no lab owns this tube barcode's prefix", "tube")
    if person_check(ev.person, today):
        return Rejected(errors.INVALID_PERSON, f"person code invalid: {person_reason(ev.person, today)}", "person")
    if ev.scanned_at > now_ms + future_ms_max:
        return Rejected(errors.INVALID_TIME, "scanned_at is ahead of the server clock", "scanned_at")
    if ev.scanned_at < now_ms - age_ms_max:
        return Rejected(errors.INVALID_TIME, "scanned_at is older than the accepted age", "scanned_at")
    return schemes.labs[idx]


def apply_binding_py(tx: WriteTx, ev: BindingEvent, lab: str, window_ms: int) -> Outcome:
    """The plain-Python twin of the compiled kernel (ext/_apply.pyx), and the
    reference for it: the rules are read here."""
    tube = tx.tube(ev.tube)
    history = tx.person(ev.person)
    seq = tx.seq + 1
    count = 1 if tube is None else tube.count + 1
    # A void frees a place but not its position: positions only grow.
    position = 1 if tube is None else tube.slots + 1
    payload = list(_astuple(ev))

    # Same event id: a retry (same payload) or a client bug (different one).
    seen = tx.claim_event(ev.event_id, EventRecord(seq, count, payload))
    if seen is not None:
        if seen.payload != payload:
            return Rejected(errors.EVENT_ID_CONFLICT, "event_id was used before with a different payload", "event_id")
        return Duplicate(ev.event_id, seen.original or ev.event_id, ev.tube, seen.count, seen.seq)

    # From here on the event id is claimed; every refusal must release it.
    refusal = _refusal(tx, ev, tube, history, window_ms)
    if refusal is not None:
        if type(refusal) is Duplicate:
            # The pair is bound under another id. This id is remembered (and
            # logged, for the standby): forgotten, a resend after a void of
            # the original bound the voided person into the tube again.
            tx.put_event(ev.event_id, EventRecord(refusal.seq, refusal.count, payload, "binding",
                                                  refusal.original_event_id))
            tx.append(LogEntry("binding", lab, payload))
            return refusal
        tx.release_event(ev.event_id)
        return refusal

    if tube is None:
        tube = Tube(ev.site_id, lab, ev.pool_size, OPEN, seq, count, position)
        tx.count(ev.site_id, TUBES_OPENED)
    else:
        tube.count = count
        tube.slots = position
        # A tube keeps the lab it was opened with, also when the lab table
        # changed since (the answer named the table's lab, not the tube's).
        lab = tube.lab
    tx.put_tube(ev.tube, tube)
    tx.put_member(ev.tube, position, Member(ev.person, ev.event_id, ev.scanned_at, seq))
    history.append(PersonBinding(ev.tube, ev.scanned_at, seq, ev.event_id, ev.site_id, position))
    tx.put_person(ev.person, history)
    tx.append(LogEntry("binding", lab, payload))
    tx.count(ev.site_id, PEOPLE)
    return Bound(ev.event_id, ev.tube, lab, count, ev.pool_size, seq)


def _refusal(tx: WriteTx, ev: BindingEvent, tube: Tube | None, history: list[PersonBinding],
             window_ms: int) -> Outcome | None:
    """The rules after the event-id check, in the documented order."""
    for b in history:
        if b.tube == ev.tube and not b.voided_seq:
            # The original's own answer: its count then, which after a void
            # in the tube is less than its position.
            return Duplicate(ev.event_id, b.event_id, ev.tube, tx.event(b.event_id).count, b.seq)
    if tube is not None:
        if tube.state != OPEN:
            return Rejected(errors.TUBE_CLOSED, "tube is sealed and takes no more people", "tube")
        if tube.site_id != ev.site_id:
            return Rejected(errors.SITE_MISMATCH, "tube was opened at another site", "site_id")
        if tube.pool_size != ev.pool_size:
            return Rejected(
                errors.POOL_SIZE_MISMATCH, f"tube was opened with pool_size {tube.pool_size}", "pool_size"
            )
        if tube.count >= tube.pool_size:
            people = "person" if tube.pool_size == 1 else "people"
            return Rejected(errors.TUBE_FULL, f"tube already holds {tube.pool_size} {people}", "tube")
        if tube.slots >= MEMBER_POSITION_MAX:
            return Rejected(errors.TUBE_FULL, f"tube has used all {MEMBER_POSITION_MAX} positions, voided ones included",
                            "tube")
    if not ev.resample:
        for b in history:
            if not b.voided_seq and abs(b.scanned_at - ev.scanned_at) < window_ms:
                return Rejected(
                    errors.PERSON_IN_OTHER_TUBE,
                    f"person was bound to tube {b.tube} within the window; send resample=true to bind again",
                    "person",
                    {"other_tube": b.tube},
                )
    return None


# The compiled kernel runs unless INGEST_PURE_PYTHON=1 (ingest/kernels.py).
apply_binding = apply_binding_py if kernels.PURE_PYTHON else kernels.load("_apply", "rules").apply_binding
