"""The binding event as clients send it, and its decoding.

msgspec checks types, lengths and patterns while decoding, so a body that
reaches the rules is well-formed. A decoding failure becomes `Malformed`
naming the field, for the `400 malformed` answer.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Raw, Struct

# msgspec matches with re.search, where "$" also matches before a final
# newline: "\Z" is the end of the string, so "id\n" is refused.
EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]+\Z"
BATCH_EVENTS_MAX = 1000

EventId = Annotated[str, Meta(min_length=1, max_length=64, pattern=EVENT_ID_PATTERN)]
# Site, device and operator ids are opaque to us; bound them so that a record
# cannot be blown up by a client.
Ident = Annotated[str, Meta(min_length=1, max_length=64)]
# A code of the right type but wrong content is a 422 from the code checks,
# not a 400; only absurd lengths are malformed.
Code = Annotated[str, Meta(max_length=64)]
# Unix milliseconds; 2**53 keeps it exact in every JSON client.
Millis = Annotated[int, Meta(ge=0, le=2**53)]
PoolSize = Literal[1, 5, 10, 20]


class BindingEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One scan: this person's swab goes into this tube.

    Field order is the stored order (records.py): append new fields at the
    end, with defaults, never reorder.
    """

    event_id: EventId
    site_id: Ident
    device_id: Ident
    tube: Code
    person: Code
    pool_size: PoolSize
    scanned_at: Millis
    operator_id: Ident | None = None
    resample: bool = False


class SealEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The site closes a tube: no binding enters it afterwards. The tube comes
    from the path (`POST /v1/tubes/{tube}/seal`); a body naming another is refused.

    `expected_count`: the people whose swabs the sealer put in the tube. The
    seal is irreversible, so a scan that never reached the server (refused
    offline, or still on another phone) must be caught before it, while the
    person can still be bound. Appended last, as the change log requires.
    """

    event_id: EventId
    site_id: Ident
    device_id: Ident
    sealed_at: Millis
    tube: Code = ""
    operator_id: Ident | None = None
    expected_count: Annotated[int, Meta(ge=1, le=20)] | None = None


class VoidEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A volunteer scanned the wrong person: that binding is undone while the
    tube is open. The binding comes from the path
    (`POST /v1/bindings/{binding_event_id}/void`)."""

    event_id: EventId
    device_id: Ident
    reason: Annotated[str, Meta(min_length=1, max_length=200)]
    voided_at: Millis
    binding_event_id: EventId | None = None
    operator_id: Ident | None = None


# A box holds a rack of tubes; 500 is far above any real rack.
BOX_TUBES_MAX = 500
BoxCode = Annotated[str, Meta(min_length=1, max_length=64, pattern=EVENT_ID_PATTERN)]
TubeList = Annotated[list[Code], Meta(max_length=BOX_TUBES_MAX)]


class BoxEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The site packs sealed tubes into a box (`POST /v1/boxes`)."""

    event_id: EventId
    box: BoxCode
    site_id: Ident
    device_id: Ident
    tubes: Annotated[list[Code], Meta(min_length=1, max_length=BOX_TUBES_MAX)]
    packed_at: Millis
    operator_id: Ident | None = None


class HandoverEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A courier takes the box (`POST /v1/boxes/{box}/handover`)."""

    event_id: EventId
    courier_id: Ident
    handed_at: Millis
    box: BoxCode | None = None
    device_id: Ident | None = None


class ReceiveEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The lab opens the box and lists the tubes it found
    (`POST /v1/boxes/{box}/receive`)."""

    event_id: EventId
    lab_id: Ident
    tubes: TubeList
    received_at: Millis
    box: BoxCode | None = None
    device_id: Ident | None = None


class TubeReceiveEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The lab receives one tube that its own box's receipt does not bring:
    found in another box (whose receipt lists it as extra) or arriving loose
    (`POST /v1/tubes/{tube}/receive`). The tube comes from the path; a body
    naming another is refused."""

    event_id: EventId
    lab_id: Ident
    received_at: Millis
    tube: Code = ""
    device_id: Ident | None = None


class ResultEvent(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A lab's result for one tube (an item of `POST /v1/results`)."""

    event_id: EventId
    lab_id: Ident
    tube: Code
    result: Literal["negative", "positive", "invalid"]
    tested_at: Millis


class ResultBatch(Struct, forbid_unknown_fields=True):
    results: Annotated[list[ResultEvent], Meta(min_length=1, max_length=BATCH_EVENTS_MAX)]


class RawResultBatch(Struct, forbid_unknown_fields=True):
    results: Annotated[list[Raw], Meta(min_length=1, max_length=BATCH_EVENTS_MAX)]


class BindingBatch(Struct, forbid_unknown_fields=True):
    events: Annotated[list[BindingEvent], Meta(min_length=1, max_length=BATCH_EVENTS_MAX)]


class RawBatch(Struct, forbid_unknown_fields=True):
    # The fallback when some item is malformed: items stay raw so that the bad
    # one gets its own error in its own place instead of failing the batch.
    events: Annotated[list[Raw], Meta(min_length=1, max_length=BATCH_EVENTS_MAX)]


class Malformed(Exception):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


# What msgspec raises on bad input: besides its own errors, invalid UTF-8 in a
# string is a UnicodeDecodeError and absurd nesting a RecursionError.
_BAD_INPUT = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)

_AT_PATH = re.compile(r" - at `\$(.*)`$")
# msgpack maps may have keys of any type; msgspec says "at `key` in `$...`".
_AT_KEY = re.compile(r" - at `key` in `\$(.*)`$")
_NAMED_FIELD = re.compile(r"field `([^`]*)`")


def _malformed(exc: Exception) -> Malformed:
    """Turn msgspec's message into (message, field path without `$.`)."""
    if isinstance(exc, UnicodeDecodeError):
        return Malformed("a string is not valid UTF-8")
    if isinstance(exc, RecursionError):
        return Malformed("the body is nested too deeply")
    text = str(exc)
    key = _AT_KEY.search(text)
    if key:
        where = key.group(1).lstrip(".")
        return Malformed(f"{where + ': ' if where else ''}a map key is not a string ({text[:key.start()]})",
                         where or None)
    field = None
    at = _AT_PATH.search(text)
    if at:
        field = at.group(1).lstrip(".") or None
        text = text[: at.start()]
    named = _NAMED_FIELD.search(text)
    if named:
        field = f"{field}.{named.group(1)}" if field else named.group(1)
    return Malformed(f"{field}: {text}" if field else text, field)


def _malformed_body(exc: Exception, body: bytes) -> Malformed:
    """As _malformed, for a whole body: an empty one is said to be empty
    (msgspec's "Input data was truncated" reads as a cut connection)."""
    if not body:
        return Malformed("the body is empty; expected an object")
    return _malformed(exc)


JSON = "application/json"
MSGPACK = "application/msgpack"

_decoders = {
    JSON: (
        msgspec.json.Decoder(BindingEvent), msgspec.json.Decoder(BindingBatch), msgspec.json.Decoder(RawBatch)
    ),
    MSGPACK: (
        msgspec.msgpack.Decoder(BindingEvent),
        msgspec.msgpack.Decoder(BindingBatch),
        msgspec.msgpack.Decoder(RawBatch),
    ),
}


def decode_event(body: bytes, media: str = JSON) -> BindingEvent:
    try:
        return _decoders[media][0].decode(body)
    except _BAD_INPUT as exc:
        raise _malformed_body(exc, body) from None


_lifecycle_decoders = {
    (kind, media): (msgspec.json.Decoder(kind) if media == JSON else msgspec.msgpack.Decoder(kind))
    for kind in (SealEvent, VoidEvent, BoxEvent, HandoverEvent, ReceiveEvent, TubeReceiveEvent, ResultEvent,
                 ResultBatch, RawResultBatch)
    for media in (JSON, MSGPACK)
}


def decode_lifecycle(kind: type, body: bytes, media: str = JSON):
    """Decode a lifecycle event (SealEvent, VoidEvent, ...) or raise Malformed."""
    try:
        return _lifecycle_decoders[kind, media].decode(body)
    except _BAD_INPUT as exc:
        raise _malformed_body(exc, body) from None


def decode_results(body: bytes, media: str = JSON) -> list[ResultEvent | Malformed]:
    """Decode a batch of results; each item a ResultEvent or why not."""
    return _decode_items(
        body, _lifecycle_decoders[ResultEvent, media], _lifecycle_decoders[ResultBatch, media],
        _lifecycle_decoders[RawResultBatch, media], "results",
    )


def decode_batch(body: bytes, media: str = JSON) -> list[BindingEvent | Malformed]:
    """Decode a batch; each item is an event or the Malformed saying why not."""
    return _decode_items(body, *_decoders[media], "events")


def _decode_items(body: bytes, item_decoder, batch_decoder, raw_decoder, name: str) -> list:
    try:
        # The common case in one pass; only a batch with a bad item pays for
        # decoding item by item.
        return getattr(batch_decoder.decode(body), name)
    except _BAD_INPUT:
        pass
    try:
        batch = raw_decoder.decode(body)
    except _BAD_INPUT as exc:
        raise _malformed_body(exc, body) from None
    items: list = []
    for raw in getattr(batch, name):
        try:
            items.append(item_decoder.decode(raw))
        except _BAD_INPUT as exc:
            items.append(_malformed(exc))
    return items
