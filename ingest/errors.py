"""Every error the API can answer: one stable code, one HTTP status.

Clients branch on `code`, never on `message`. A duplicate is an outcome
(`200`, `"result": "duplicate"`), not an error, so it is not here.
The error body is always `{"error": {"code", "message", "field"?, ...}}`.
"""
from __future__ import annotations

from typing import NamedTuple

import msgspec


class ErrorCode(NamedTuple):
    code: str
    status: int
    doc: str


# The binding rules, in the order they are checked (see rules.py).
MALFORMED = ErrorCode("malformed", 400, "body is not valid JSON/msgpack, or a field is missing or of the wrong type")
INVALID_TUBE = ErrorCode("invalid_tube", 422, "tube barcode fails its lab's length, character set or check character")
UNKNOWN_LAB = ErrorCode("unknown_lab", 422, "no configured lab owns the tube barcode's prefix")
INVALID_PERSON = ErrorCode("invalid_person", 422, "person code is neither a valid resident id number nor a valid HC token")
INVALID_TIME = ErrorCode("invalid_time", 422, "scanned_at is too far in the future or too old")
EVENT_ID_CONFLICT = ErrorCode("event_id_conflict", 409, "event_id was used before with a different payload")
TUBE_CLOSED = ErrorCode("tube_closed", 409, "tube is sealed (or later) and takes no more people")
SITE_MISMATCH = ErrorCode("site_mismatch", 409, "tube was opened at another site")
POOL_SIZE_MISMATCH = ErrorCode("pool_size_mismatch", 409, "tube was opened with another pool size")
TUBE_FULL = ErrorCode("tube_full", 409, "tube already holds pool_size people")
PERSON_IN_OTHER_TUBE = ErrorCode("person_in_other_tube", 409, "person was bound to another tube recently and resample is not set")

# The tube lifecycle (lifecycle.py).
UNKNOWN_TUBE = ErrorCode("unknown_tube", 404, "no binding names this tube")
TUBE_EMPTY = ErrorCode("tube_empty", 409, "an empty tube cannot be sealed")
COUNT_MISMATCH = ErrorCode("count_mismatch", 409, "the tube does not hold the people the seal expects")
UNKNOWN_BINDING = ErrorCode("unknown_binding", 404, "no binding has this event id")
BINDING_VOIDED = ErrorCode("binding_voided", 409, "the binding was voided already")
BOX_EXISTS = ErrorCode("box_exists", 409, "a box with this barcode was packed already")
TUBES_NOT_BOXABLE = ErrorCode("tubes_not_boxable", 409, "some tubes are unknown, not sealed, boxed already or from another site")
UNKNOWN_BOX = ErrorCode("unknown_box", 404, "no box has this barcode")
BOX_HANDED_OVER = ErrorCode("box_handed_over", 409, "the box was handed over already")
BOX_NOT_HANDED_OVER = ErrorCode("box_not_handed_over", 409, "the box was never handed to a courier")
BOX_RECEIVED = ErrorCode("box_received", 409, "the box was received already")
WRONG_LAB = ErrorCode("wrong_lab", 403, "only the tube's own lab may post its result")
TUBE_NOT_RECEIVED = ErrorCode("tube_not_received", 409, "the tube's lab has not received it")
TUBE_NOT_IN_TRANSIT = ErrorCode("tube_not_in_transit", 409,
                                "only a sealed tube not received yet can be received")

# Access control (access.py).
UNAUTHORIZED = ErrorCode("unauthorized", 401, "the route needs a bearer token the server knows")
FORBIDDEN = ErrorCode("forbidden", 403, "the token's roles do not include the one the route needs")

# Protocol and service errors.
NOT_FOUND = ErrorCode("not_found", 404, "no such resource")
METHOD_NOT_ALLOWED = ErrorCode("method_not_allowed", 405, "the path exists but not for this method")
REQUEST_TIMEOUT = ErrorCode("request_timeout", 408, "the request was not completed in time")
BODY_TOO_LARGE = ErrorCode("body_too_large", 413, "body exceeds limits.body_bytes_max")
HEADERS_TOO_LARGE = ErrorCode("headers_too_large", 431, "request line and headers exceed limits.header_bytes_max")
UNSUPPORTED_MEDIA_TYPE = ErrorCode("unsupported_media_type", 415, "use application/json or application/msgpack")
BAD_REQUEST = ErrorCode("bad_request", 400, "the HTTP request itself could not be parsed")
NOT_IMPLEMENTED = ErrorCode("not_implemented", 501, "the request uses a transfer coding other than chunked")
HTTP_VERSION_NOT_SUPPORTED = ErrorCode("http_version_not_supported", 505, "the request is not HTTP/1.1 or HTTP/1.0")
INSUFFICIENT_STORAGE = ErrorCode("insufficient_storage", 507, "the store is full; nothing was written")
STORE_ERROR = ErrorCode("store_error", 500, "the store failed; nothing was written")
INTERNAL_ERROR = ErrorCode("internal_error", 500, "the server failed to handle the request; it is logged")
PROMOTION_REFUSED = ErrorCode("promotion_refused", 409, "this node's history ends behind another node's (it is "
                              "fenced, or its primary refused it); promote with force=true only if that node is "
                              "gone for good")
NOT_PRIMARY = ErrorCode("not_primary", 503, "this node is a standby (or a fenced former primary); write to the primary")
SHUTTING_DOWN = ErrorCode("shutting_down", 503, "the server is draining for shutdown; retry on another server")

ALL = tuple(v for v in globals().values() if isinstance(v, ErrorCode))
BY_CODE = {e.code: e for e in ALL}


def error_body(code: ErrorCode, message: str, field: str | None = None, extra: dict | None = None) -> dict:
    """The one error body shape: {"error": {"code", "message", "field"?, ...}}."""
    err: dict = {"code": code.code, "message": message}
    if field is not None:
        err["field"] = field
    if extra:
        err.update(extra)
    return {"error": err}


_encode = msgspec.json.Encoder().encode


def error_json(code: ErrorCode, message: str, field: str | None = None) -> bytes:
    return _encode(error_body(code, message, field))
