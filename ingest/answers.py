"""What an outcome looks like on the wire: the body (and status) of each
kind of outcome, alone and as an item of a batch answer, and its counter key.
Shared by the handlers in app.py and the compiled binding routes."""
from __future__ import annotations

import msgspec

from ingest.errors import error_body
from ingest.outcomes import Bound, Done, Duplicate, Rejected, Repeat

# Every JSON answer body the handlers make (app.py, reads.py, node_routes.py).
encode_json = msgspec.json.Encoder().encode


class OriginalBody(msgspec.Struct):
    event_id: str
    tube: str
    count: int
    seq: int
    result: str = "bound"


class DuplicateBody(msgspec.Struct):
    event_id: str
    original: OriginalBody
    result: str = "duplicate"


def outcome_body(outcome: Bound | Duplicate | Rejected) -> tuple[int, object]:
    """(HTTP status, body) of one outcome; bodies are structs because msgspec
    encodes those faster than dicts, and a batch encodes a thousand."""
    kind = type(outcome)
    if kind is Bound:
        return 201, outcome
    if kind is Duplicate:
        original = OriginalBody(outcome.original_event_id, outcome.tube, outcome.count, outcome.seq)
        return 200, DuplicateBody(outcome.event_id, original)
    if kind is Done:
        return 201, {"result": outcome.result, "event_id": outcome.event_id, "seq": outcome.seq, **outcome.body}
    if kind is Repeat:
        return 200, {
            "result": "duplicate", "event_id": outcome.event_id,
            "original": {"result": outcome.original_result, "event_id": outcome.event_id, "seq": outcome.seq,
                         **(outcome.original or {})},
        }
    return outcome.error.status, error_body(outcome.error, outcome.message, outcome.field, outcome.extra)


class BoundItem(Bound, tag="bound"):
    """A bound result inside a batch answer: the same body plus its status."""

    status: int = 201


def batch_item(outcome) -> object:
    """One item of a batch answer: the single-event body plus its status."""
    kind = type(outcome)
    if kind is Bound:
        return BoundItem(*msgspec.structs.astuple(outcome))
    status, body = outcome_body(outcome)
    if kind is Duplicate:
        body = msgspec.structs.asdict(body)
    body["status"] = status
    return body


def outcome_key(outcome: Bound | Duplicate | Rejected) -> tuple[str, str]:
    kind = type(outcome)
    if kind is Bound:
        return ("bound", "")
    if kind is Duplicate or kind is Repeat:
        return ("duplicate", "")
    if kind is Done:
        return (outcome.result, "")
    return ("rejected", outcome.error.code)
