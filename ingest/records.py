"""What the store keeps: the value formats of every LMDB table.

Values are msgpack arrays (msgspec `array_like` structs): compact, fast, and
field order is the format, so fields are only ever appended, with defaults.
The key layout lives in store.py; both are described in docs/storage.md.
"""
from __future__ import annotations

import msgspec
from msgspec import Struct

# Tube states. Bindings enter only OPEN tubes; everything after sealing is the
# tube lifecycle (docs/storage.md), so "closed" means state > OPEN.
OPEN, SEALED, BOXED, IN_TRANSIT, RECEIVED, RESULTED = range(6)
STATE_NAMES = ("open", "sealed", "boxed", "in_transit", "received", "resulted")


class Member(Struct, array_like=True, gc=False):
    """One person in a tube, stored under (tube, position). A voided member
    stays, marked, for the history; its place is free again."""

    person: str
    event_id: str
    scanned_at: int
    seq: int
    voided_seq: int = 0


class Tube(Struct, array_like=True, gc=False):
    """A tube's head. Its members are separate records, so adding the tenth
    person does not decode and rewrite the other nine."""

    site_id: str
    lab: str
    pool_size: int
    state: int
    opened_seq: int
    count: int  # people in the tube now (voids excluded)
    slots: int = 0  # positions ever used; the next binding takes slots + 1
    sealed_seq: int = 0


class PersonBinding(Struct, array_like=True, gc=False):
    """One tube a person was bound to; a person's record is a list of these.

    It doubles as the (tube, person) index: a person has few tubes, so the
    pair check reads this short list instead of the tube's members.
    """

    tube: str
    scanned_at: int
    seq: int
    event_id: str
    site_id: str
    position: int
    voided_seq: int = 0


class EventRecord(Struct, array_like=True, gc=False):
    """Dedup memory: the accepted event's payload and its original outcome.

    `payload` is the event's fields in BindingEvent order, so a retry is
    compared field by field without another table lookup.
    """

    seq: int
    count: int
    payload: list
    kind: str = "binding"


class LogEntry(Struct, array_like=True, gc=False):
    """One change-log entry: the input that produced the change, not the
    change itself. Applying it with rules.apply_entry to the state before it
    gives the state after it, on the primary and on a standby alike."""

    kind: str  # "binding", "seal", "void" (rules.APPLY_ENTRY)
    lab: str
    payload: list


encode = msgspec.msgpack.Encoder().encode
decode_tube = msgspec.msgpack.Decoder(Tube).decode
decode_member = msgspec.msgpack.Decoder(Member).decode
decode_person = msgspec.msgpack.Decoder(list[PersonBinding]).decode
decode_event_record = msgspec.msgpack.Decoder(EventRecord).decode
decode_log_entry = msgspec.msgpack.Decoder(LogEntry).decode
