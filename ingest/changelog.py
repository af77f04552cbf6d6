"""The change log's entry kinds and how each is applied.

A log entry holds the input of a change (`records.LogEntry`); applying it
with the same function the primary used, to the state before it, gives the
state after it. This table is all a standby or a rebuild needs.
"""
from __future__ import annotations

from collections.abc import Callable

from ingest import boxes, lifecycle, results, rules
from ingest.events import (
    BindingEvent, BoxEvent, HandoverEvent, ReceiveEvent, ResultEvent, SealEvent, TubeReceiveEvent, VoidEvent,
)
from ingest.records import LogEntry
from ingest.rules import Outcome
from ingest.writetx import WriteTx


# What each kind's payload holds: the event's fields in order; a lifecycle
# payload starts with its kind. A receive carries, last, the other-lab tubes
# decided before it was queued.
EVENT_OF: dict[str, type] = {
    "binding": BindingEvent,
    "seal": SealEvent,
    "void": VoidEvent,
    "box": BoxEvent,
    "handover": HandoverEvent,
    "receive": ReceiveEvent,
    "receive_tube": TubeReceiveEvent,
    "result": ResultEvent,
}


def event_of(entry: LogEntry):
    """The event an entry was made from, as its route decoded it."""
    payload = entry.payload
    if entry.kind == "binding":
        return BindingEvent(*payload)
    if entry.kind == "receive":
        return ReceiveEvent(*payload[1:-1])
    return EVENT_OF[entry.kind](*payload[1:])


APPLY: dict[str, Callable[[WriteTx, LogEntry, int], Outcome]] = {
    "binding": lambda tx, entry, window_ms: rules.apply_binding(tx, event_of(entry), entry.lab, window_ms),
    "seal": lambda tx, entry, _: lifecycle.apply_seal(tx, event_of(entry)),
    "void": lambda tx, entry, _: lifecycle.apply_void(tx, event_of(entry)),
    "box": lambda tx, entry, _: boxes.apply_box(tx, event_of(entry)),
    "handover": lambda tx, entry, _: boxes.apply_handover(tx, event_of(entry)),
    "receive": lambda tx, entry, _: boxes.apply_receive(tx, event_of(entry), entry.payload[-1]),
    "receive_tube": lambda tx, entry, _: boxes.apply_receive_tube(tx, event_of(entry)),
    "result": lambda tx, entry, _: results.apply_result(tx, event_of(entry)),
}
assert APPLY.keys() == EVENT_OF.keys()


def apply_entry(tx: WriteTx, entry: LogEntry, window_ms: int) -> Outcome:
    """Replay one change-log entry (a standby, or a rebuild from the log)."""
    try:
        apply = APPLY[entry.kind]
    except KeyError:
        raise ValueError(f"unknown log entry kind {entry.kind!r}") from None
    tx.set_time(entry.at_ms)
    return apply(tx, entry, window_ms)
