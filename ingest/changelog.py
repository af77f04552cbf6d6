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


def _binding(tx: WriteTx, entry: LogEntry, window_ms: int) -> Outcome:
    return rules.apply_binding(tx, BindingEvent(*entry.payload), entry.lab, window_ms)


# Lifecycle payloads start with their kind, then the event's fields.
APPLY: dict[str, Callable[[WriteTx, LogEntry, int], Outcome]] = {
    "binding": _binding,
    "seal": lambda tx, entry, _: lifecycle.apply_seal(tx, SealEvent(*entry.payload[1:])),
    "void": lambda tx, entry, _: lifecycle.apply_void(tx, VoidEvent(*entry.payload[1:])),
    "box": lambda tx, entry, _: boxes.apply_box(tx, BoxEvent(*entry.payload[1:])),
    "handover": lambda tx, entry, _: boxes.apply_handover(tx, HandoverEvent(*entry.payload[1:])),
    # receive carries the other-lab tubes decided before it was queued, last
    "receive": lambda tx, entry, _: boxes.apply_receive(tx, ReceiveEvent(*entry.payload[1:-1]), entry.payload[-1]),
    "receive_tube": lambda tx, entry, _: boxes.apply_receive_tube(tx, TubeReceiveEvent(*entry.payload[1:])),
    "result": lambda tx, entry, _: results.apply_result(tx, ResultEvent(*entry.payload[1:])),
}


def apply_entry(tx: WriteTx, entry: LogEntry, window_ms: int) -> Outcome:
    """Replay one change-log entry (a standby, or a rebuild from the log)."""
    try:
        apply = APPLY[entry.kind]
    except KeyError:
        raise ValueError(f"unknown log entry kind {entry.kind!r}") from None
    tx.set_time(entry.at_ms)
    return apply(tx, entry, window_ms)
