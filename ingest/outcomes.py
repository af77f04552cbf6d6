"""What applying an event can give: the outcomes every apply function returns
(bindings here and in the compiled kernel, lifecycle, boxes, results)."""
from __future__ import annotations

from typing import NamedTuple

import msgspec

from ingest.errors import ErrorCode


class Bound(msgspec.Struct, tag_field="result", tag="bound", frozen=True):
    """Stored. It is also the `201` body as it is: msgspec writes the tag as
    `"result": "bound"`, so a thousand outcomes encode without conversion."""

    event_id: str
    tube: str
    lab: str
    count: int
    pool_size: int
    seq: int


class Duplicate(NamedTuple):
    """Already done: `original_*` is the event that did it, and its outcome."""

    event_id: str
    original_event_id: str
    tube: str
    count: int
    seq: int


class Done(NamedTuple):
    """A lifecycle event applied (`201`): `result` says what happened
    ("sealed", "voided", ...), `body` the rest of the answer."""

    result: str
    event_id: str
    seq: int
    body: dict


class Repeat(NamedTuple):
    """A lifecycle event seen before with the same payload (`200`)."""

    event_id: str
    original_result: str
    seq: int
    # More of the original answer that is still true: a seal's count (a
    # sealed tube's people do not change), which the phone whose first
    # answer was lost compares with the people it saw.
    original: dict | None = None


class Rejected(NamedTuple):
    error: ErrorCode
    message: str
    field: str | None = None
    # Extra members of the error body, e.g. the other tube a person is in.
    extra: dict | None = None


Outcome = Bound | Duplicate | Done | Repeat | Rejected
