"""The replication frame format: a fixed 32-byte header, then a payload.

    magic    4s   b"INGR": a stray connection (HTTP, a port scanner) or a
                  desynchronised stream fails on the first frame, not later
                  as a confusing checksum or length error.
    version  u16  the format of everything after it; a node refuses a peer it
                  cannot read instead of misreading it.
    type     u16  which message (`Type`): the payload's schema and the
                  receiver's state transition.
    epoch    u64  the sender's epoch (how many failovers the cluster has
                  seen): a node that learns of a higher one from any frame
                  knows it is no longer the primary.
    seq      u64  the change-log position the frame is about (HELLO/WELCOME:
                  the sender's last seq; ENTRIES: the batch's last; ACK: the
                  seq made durable; PING: the primary's last; SNAPSHOT_BEGIN/
                  END: the snapshot's last seq; SNAPSHOT_CHUNK: the chunk's
                  byte offset in the snapshot), so lag can be read without
                  decoding a payload.
    length   u32  payload bytes, checked against FRAME_BYTES_MAX as soon as
                  the header is in, before any of the payload is buffered.
    crc32    u32  over the header (this field zeroed) and the payload: a
                  flipped bit anywhere is a refused frame, never a wrong one.

All integers are big-endian. Payloads are msgpack arrays (array_like
msgspec structs): field order is the format, as in the store. The one
exception is SNAPSHOT_CHUNK, whose payload is the file's bytes as they are.

Version 2 added the SNAPSHOT_* frames (a standby too far behind for the
retained log gets a copy of the whole store); a version-1 peer is refused
with bad_version rather than sent frames it cannot read.
"""
from __future__ import annotations

import enum
import struct
import zlib
from typing import Annotated, NamedTuple

import msgspec

MAGIC = b"INGR"
VERSION = 2
HEADER = struct.Struct(">4sHHQQII")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 32, HEADER_SIZE
# Without a limit a corrupted or hostile length would make the receiver
# buffer up to 4 GiB before the checksum could reject it.
FRAME_BYTES_MAX = 8 * 1024 * 1024

_CRC_OFFSET = HEADER_SIZE - 4
_CRC_ZERO = b"\x00\x00\x00\x00"


class Type(enum.IntEnum):
    HELLO = 1  # standby -> primary: who it is, its epoch and last seq
    WELCOME = 2  # primary -> standby: accepted; the primary's node and last seq
    ENTRIES = 3  # primary -> standby: a contiguous batch of log entries
    ACK = 4  # standby -> primary: everything up to seq is durable here
    REFUSE = 5  # either way: why the sender is closing; nothing follows it
    PING = 6  # primary -> standby: keepalive carrying the primary's last seq
    SNAPSHOT_BEGIN = 7  # primary -> standby: a copy of the store follows, at this last seq, this many bytes
    SNAPSHOT_CHUNK = 8  # primary -> standby: the copy's next bytes (header seq: their offset)
    SNAPSHOT_END = 9  # primary -> standby: the copy is whole; its sha256; entries follow from its last seq


class Frame(NamedTuple):
    type: Type
    epoch: int
    seq: int
    payload: bytes


class WireError(Exception):
    """A frame that cannot be trusted; the connection must be closed.

    `code` is one of bad_magic, bad_version, too_large, bad_checksum,
    bad_type (from FrameDecoder) or bad_payload (from the decode_* helpers).
    `frames` holds the good frames decoded before the bad one in the same
    `feed` call, so a single call both delivers them and reports the error.
    """

    def __init__(self, code: str, message: str, frames: list[Frame] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.frames = frames if frames is not None else []


def encode(type: int, epoch: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > FRAME_BYTES_MAX:
        raise ValueError(f"payload of {len(payload)} bytes exceeds FRAME_BYTES_MAX ({FRAME_BYTES_MAX})")
    header = HEADER.pack(MAGIC, VERSION, type, epoch, seq, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header[:_CRC_OFFSET] + crc.to_bytes(4, "big") + payload


class FrameDecoder:
    """Turns a byte stream, cut anywhere, into frames.

    After a WireError the stream has no trustworthy frame boundary left, so
    every later `feed` raises the same error (with no frames).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: WireError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise WireError(self._error.code, str(self._error))
        self._buffer += data
        frames: list[Frame] = []
        pos = 0
        try:
            while (frame_end := self._complete_frame(pos)) is not None:
                frames.append(self._frame(pos, frame_end))
                pos = frame_end
        except WireError as exc:
            self._buffer.clear()
            self._error = exc
            exc.frames = frames
            raise
        del self._buffer[:pos]
        return frames

    def _complete_frame(self, pos: int) -> int | None:
        """Where the frame at `pos` ends, once all of it is buffered."""
        if len(self._buffer) - pos < HEADER_SIZE:
            return None
        magic, version, _, _, _, length, _ = HEADER.unpack_from(self._buffer, pos)
        if magic != MAGIC:
            raise WireError("bad_magic", f"bad magic {bytes(magic)!r}")
        if version != VERSION:
            raise WireError("bad_version", f"version {version}, this node speaks {VERSION}")
        if length > FRAME_BYTES_MAX:
            raise WireError("too_large", f"payload of {length} bytes exceeds {FRAME_BYTES_MAX}")
        end = pos + HEADER_SIZE + length
        return end if len(self._buffer) >= end else None

    def _frame(self, pos: int, end: int) -> Frame:
        _, _, type, epoch, seq, _, crc = HEADER.unpack_from(self._buffer, pos)
        view = memoryview(self._buffer)
        try:
            computed = zlib.crc32(view[pos:pos + _CRC_OFFSET])
            computed = zlib.crc32(view[pos + HEADER_SIZE:end], zlib.crc32(_CRC_ZERO, computed))
            payload = bytes(view[pos + HEADER_SIZE:end])
        finally:
            view.release()  # a live view would forbid resizing the buffer
        if computed != crc:
            raise WireError("bad_checksum", f"checksum mismatch in frame at seq {seq}")
        # Checked after the checksum: an unknown type with a good checksum is
        # a peer speaking another dialect, not line noise.
        try:
            return Frame(Type(type), epoch, seq, payload)
        except ValueError:
            raise WireError("bad_type", f"unknown frame type {type}") from None


# What a peer names goes into this node's log: a line break in it would
# forge log lines, so the text fields are held to what they carry. Node ids
# are 16 hex digits (Store.node); the shape of event ids leaves room.
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,40}$")]
# One line of printable text: no control characters.
Line = Annotated[str, msgspec.Meta(pattern=r"^[^\x00-\x1f\x7f]*$", max_length=2000)]
ZoneName = Annotated[str, msgspec.Meta(pattern=r"^[^\x00-\x1f\x7f]*$", max_length=64)]


class HelloPayload(msgspec.Struct, array_like=True, frozen=True):
    node: NodeId
    last_seq: int
    epoch: int
    # Digest of the standby's log entry at last_seq (Store.tip): the primary
    # compares it with its own entry there, so that a history which forked
    # (a former primary's unreplicated tail) is refused, not continued. A
    # trailing field: a peer from before it sends none (b""), and one from
    # before it ignores it.
    tip: bytes = b""
    # The zone its statistics are counted in (Store.time_zone): a primary
    # counting in another refuses it, as the two stores' stats would differ.
    # Trailing too: "" from a peer from before it.
    time_zone: ZoneName = ""


class WelcomePayload(msgspec.Struct, array_like=True, frozen=True):
    node: NodeId
    last_seq: int


class RefusePayload(msgspec.Struct, array_like=True, frozen=True):
    code: Code
    message: Line


class SnapshotBeginPayload(msgspec.Struct, array_like=True, frozen=True):
    last_seq: int
    size: int


class SnapshotEndPayload(msgspec.Struct, array_like=True, frozen=True):
    last_seq: int
    size: int
    sha256: Line  # hex, of all the chunks' bytes in order: the copy end to end


_encoder = msgspec.msgpack.Encoder()
_hello = msgspec.msgpack.Decoder(HelloPayload)
_welcome = msgspec.msgpack.Decoder(WelcomePayload)
_refuse = msgspec.msgpack.Decoder(RefusePayload)
_snapshot_begin = msgspec.msgpack.Decoder(SnapshotBeginPayload)
_snapshot_end = msgspec.msgpack.Decoder(SnapshotEndPayload)
# A batch is a bare array of [seq, raw log-entry bytes] pairs: the entries
# stay the bytes the primary stored, so the standby stores exactly them.
_entries = msgspec.msgpack.Decoder(list[tuple[int, bytes]])


def _decode(decoder: msgspec.msgpack.Decoder, payload: bytes):
    # A payload with a good checksum that does not decode comes from a buggy
    # or foreign peer: the same kind of failure as a bad frame.
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError("bad_payload", str(exc)) from None


def hello(node: str, last_seq: int, epoch: int, tip: bytes = b"", time_zone: str = "") -> bytes:
    return _encoder.encode(HelloPayload(node, last_seq, epoch, tip, time_zone))


def decode_hello(payload: bytes) -> HelloPayload:
    return _decode(_hello, payload)


def welcome(node: str, last_seq: int) -> bytes:
    return _encoder.encode(WelcomePayload(node, last_seq))


def decode_welcome(payload: bytes) -> WelcomePayload:
    return _decode(_welcome, payload)


def refuse(code: str, message: str) -> bytes:
    return _encoder.encode(RefusePayload(code, message))


def decode_refuse(payload: bytes) -> RefusePayload:
    return _decode(_refuse, payload)


def entries(batch: list[tuple[int, bytes]]) -> bytes:
    return _encoder.encode(batch)


def decode_entries(payload: bytes) -> list[tuple[int, bytes]]:
    return _decode(_entries, payload)


def snapshot_begin(last_seq: int, size: int) -> bytes:
    return _encoder.encode(SnapshotBeginPayload(last_seq, size))


def decode_snapshot_begin(payload: bytes) -> SnapshotBeginPayload:
    return _decode(_snapshot_begin, payload)


def snapshot_end(last_seq: int, size: int, sha256: str) -> bytes:
    return _encoder.encode(SnapshotEndPayload(last_seq, size, sha256))


def decode_snapshot_end(payload: bytes) -> SnapshotEndPayload:
    return _decode(_snapshot_end, payload)
