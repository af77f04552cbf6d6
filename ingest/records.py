"""What the store keeps: the value formats of every LMDB table.

Values are msgpack arrays (msgspec `array_like` structs): compact, fast, and
field order is the format, so fields are only ever appended, with defaults.
The key layout lives in keys.py; both are described in docs/storage.md.
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
    box: str = ""
    received_seq: int = 0
    result: str = ""  # the latest result: "negative", "positive", "invalid"
    result_seq: int = 0


# Box states.
PACKED, HANDED_OVER, BOX_RECEIVED = range(3)
BOX_STATE_NAMES = ("packed", "in_transit", "received")


class Box(Struct, array_like=True, gc=False):
    """A box of sealed tubes from one site, and what the lab found in it."""

    site_id: str
    tubes: list[str]
    state: int
    packed_seq: int
    courier_id: str = ""
    handed_at: int = 0
    handover_seq: int = 0
    lab_id: str = ""
    received_at: int = 0
    receive_seq: int = 0
    found: list[str] = []
    missing: list[str] = []
    extra: list[str] = []
    other_lab: list[str] = []


class Result(Struct, array_like=True, gc=False):
    """One result posted for a tube; a tube's results are its history."""

    lab_id: str
    result: str
    tested_at: int
    event_id: str
    seq: int


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
    # A pair duplicate (its tube and person bound already under another id):
    # that binding's event id; seq and count are that binding's too, so a
    # resend gets the first answer again, after a void of the original too.
    original: str = ""


class LogEntry(Struct, array_like=True, gc=False):
    """One change-log entry: the input that produced the change, not the
    change itself. Applying it with rules.apply_entry to the state before it
    gives the state after it, on the primary and on a standby alike."""

    kind: str  # "binding", "seal", "void", "box", "handover", "receive", "result" (changelog.APPLY)
    lab: str
    payload: list
    # The primary's clock when it applied the entry: statistics are kept per
    # hour of server time, and a replay must put them in the same hour.
    at_ms: int = 0


# Statistics counters (stats table), in this order in every record.
STAT_FIELDS = ("people", "voided", "tubes_opened", "tubes_sealed", "tubes_boxed", "tubes_received",
               "tubes_resulted", "positive_results")
(PEOPLE, VOIDED, TUBES_OPENED, TUBES_SEALED, TUBES_BOXED, TUBES_RECEIVED, TUBES_RESULTED,
 POSITIVE_RESULTS) = range(len(STAT_FIELDS))

encode = msgspec.msgpack.Encoder().encode
decode_tube = msgspec.msgpack.Decoder(Tube).decode
decode_member = msgspec.msgpack.Decoder(Member).decode
decode_box = msgspec.msgpack.Decoder(Box).decode
decode_result = msgspec.msgpack.Decoder(Result).decode
decode_person = msgspec.msgpack.Decoder(list[PersonBinding]).decode
decode_event_record = msgspec.msgpack.Decoder(EventRecord).decode
decode_log_entry = msgspec.msgpack.Decoder(LogEntry).decode
decode_counts = msgspec.msgpack.Decoder(list[int]).decode
