"""Sans-IO replication state machines: bytes in, actions out.

No sockets, clock or threads (like h11): the caller feeds received bytes to
`receive`, carries out the returned actions in order, and sends the bytes the
other methods return. Timeouts, reconnects and durability stay with it.

Primary (one per standby connection)

    state           event                       actions                               next
    awaiting_hello  HELLO from our own node     Send(REFUSE self), Close              closed
                    HELLO with a higher epoch   Fence, Send(REFUSE stale_primary),    closed
                                                Close
                    HELLO                       Hello                                 welcoming
    welcoming       welcome(last_seq)           -> bytes                              streaming
                    refuse(history_refusal())   -> bytes (ahead, diverged,            closed
                                                unverifiable)
    streaming       ACK, non-decreasing, sent   Acked                                 streaming
                    ACK going back or unsent    Close(bad_ack)                        closed
                    entries(), ping()           -> bytes                              streaming
                    snapshot_begin(seq, size)   -> bytes (seq >= last sent)           snapshotting
    snapshotting    snapshot_chunk(data)        -> bytes (never past size)            snapshotting
                    snapshot_end()              -> bytes (all size bytes sent);       streaming
                                                entries continue from the snapshot
                    ping(), ACK                 as in streaming                       snapshotting
    any             REFUSE                      [Fence if higher epoch], Close        closed
    any             frame with a higher epoch   Fence, Send(REFUSE stale_primary),    closed
                                                Close
    any             bad frame, unexpected type  Close                                 closed
    any but closed  refuse(code, message)       -> bytes                              closed

Standby

    state             event                       actions                             next
    connecting        hello()                     -> bytes                            awaiting_welcome
    awaiting_welcome  WELCOME from our own node   Send(REFUSE self), Close            closed
                      WELCOME of an older epoch   Send(REFUSE stale_primary), Close   closed
                      WELCOME behind our log      Send(REFUSE ahead), Close           closed
                      WELCOME                     Welcomed (adopt a higher epoch)     following
    following         ENTRIES contiguous          Apply                               following
                      ENTRIES not contiguous      Close(gap)                          closed
                      PING                        (records primary_last_seq)          following
                      SNAPSHOT_BEGIN, not behind  SnapshotBegin                       receiving
                      SNAPSHOT_BEGIN behind us    Close(bad_snapshot)                 closed
                      frame of another epoch      Close(epoch_changed)                closed
                      ack(seq)                    -> bytes                            following
    receiving         SNAPSHOT_CHUNK at offset    SnapshotChunk                       receiving
                      CHUNK elsewhere, past size  Close(bad_snapshot)                 closed
                      SNAPSHOT_END, size and      SnapshotEnd (install it, then ACK   following
                      sha256 of the chunks match  its seq); entries continue from it
                      SNAPSHOT_END otherwise      Close(bad_snapshot)                 closed
                      PING                        (records primary_last_seq)          receiving
                      frame of another epoch      Close(epoch_changed)                closed
    any               REFUSE                      [Fence if higher epoch], Close      closed
    any               bad frame, unexpected type  Close                               closed
    any but closed    refuse(code, message)       -> bytes                            closed
    closed            ack(seq) of an Apply        -> b"" (nothing to send)            closed

A snapshot is checked twice: every chunk by its frame's crc32, and the whole
by a sha256 over all chunks that the standby recomputes (a lost, repeated or
reordered chunk fails here even if each frame was sound). Neither side knows
files: the caller writes the chunks somewhere and installs them on
SnapshotEnd; a cut before that leaves nothing installed.

REFUSE is sent when the peer is sound but must not be followed or served
(self, stale_primary, ahead, diverged, unverifiable): it tells the other side why. A broken
stream (bad frame, gap, bad ACK) is closed without one, since a peer that
sends such frames cannot be relied on to read one. In `closed`, `receive`
discards everything and the sending methods raise StateError, except the
standby's `ack` for entries it already handed out (see `Standby.ack`).
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import NamedTuple

from ingest.replication import wire
from ingest.replication.wire import Frame, Type, WireError

AWAITING_HELLO = "awaiting_hello"
WELCOMING = "welcoming"
STREAMING = "streaming"
CONNECTING = "connecting"
AWAITING_WELCOME = "awaiting_welcome"
FOLLOWING = "following"
SNAPSHOTTING = "snapshotting"
RECEIVING = "receiving"
CLOSED = "closed"


class Send(NamedTuple):
    data: bytes


class Apply(NamedTuple):
    entries: list[tuple[int, bytes]]
    primary_last_seq: int  # the highest seq the primary is known to have: lag = this - entries[-1][0]


class Acked(NamedTuple):
    seq: int


class Welcomed(NamedTuple):
    node: str
    epoch: int  # higher than the standby's own: store it durably before applying anything
    last_seq: int


class Hello(NamedTuple):
    node: str
    epoch: int
    last_seq: int  # stream from last_seq + 1, once history_refusal() found nothing against it
    tip: bytes = b""  # digest of the standby's entry at last_seq; b"" from a peer too old to send it
    time_zone: str = ""  # the zone of its statistics; "" from a peer too old to send it


class Fence(NamedTuple):
    epoch: int  # a newer primary exists: stop accepting writes at once


class Close(NamedTuple):
    code: str
    message: str


class SnapshotBegin(NamedTuple):
    last_seq: int  # the store as of this seq follows; keep serving the old one meanwhile
    size: int


class SnapshotChunk(NamedTuple):
    data: bytes  # the next bytes of the copy, in order


class SnapshotEnd(NamedTuple):
    last_seq: int  # install the copy (it checked out), then ACK this seq
    size: int
    sha256: str


Action = Send | Apply | Acked | Welcomed | Hello | Fence | Close | SnapshotBegin | SnapshotChunk | SnapshotEnd


class _Transfer:
    """A snapshot under way: where it ends, how far it got, its running sha256."""

    def __init__(self, last_seq: int, size: int):
        self.last_seq = last_seq
        self.size = size
        self.offset = 0
        self.sha256 = hashlib.sha256()

    def add(self, data: bytes) -> None:
        self.offset += len(data)
        self.sha256.update(data)


class StateError(RuntimeError):
    """The caller asked for a message its connection's state does not allow."""


class _Endpoint(ABC):
    def __init__(self, node: str, epoch: int, state: str) -> None:
        self.node = node
        self.epoch = epoch
        self.state = state
        self._decoder = wire.FrameDecoder()

    def receive(self, data: bytes) -> list[Action]:
        if self.state == CLOSED:
            return []
        try:
            frames, error = self._decoder.feed(data), None
        except WireError as exc:
            frames, error = exc.frames, exc
        actions: list[Action] = []
        for frame in frames:
            try:
                actions += self._handle(frame)
            except WireError as exc:  # a payload that does not decode
                actions += self._close(exc.code, str(exc))
            if self.state == CLOSED:
                return actions
        if error is not None:
            actions += self._close(error.code, str(error))
        return actions

    @abstractmethod
    def _handle(self, frame: Frame) -> list[Action]:
        """One decoded frame -> actions; each side has its own table."""

    def _require(self, state: str) -> None:
        if self.state != state:
            raise StateError(f"in state {self.state}, not {state}")

    def _close(self, code: str, message: str) -> list[Action]:
        self.state = CLOSED
        return [Close(code, message)]

    def refuse(self, code: str, message: str) -> bytes:
        """REFUSE for a reason only the caller knows; send it, then close."""
        if self.state == CLOSED:
            raise StateError("the connection is closed")
        self.state = CLOSED
        return wire.encode(Type.REFUSE, self.epoch, 0, wire.refuse(code, message))

    def _refuse(self, code: str, message: str) -> list[Action]:
        return [Send(self.refuse(code, message)), Close(code, message)]

    def _unexpected(self, frame: Frame) -> list[Action]:
        return self._close("unexpected", f"{frame.type.name} in state {self.state}")


class Primary(_Endpoint):
    def __init__(self, node: str, epoch: int) -> None:
        super().__init__(node, epoch, AWAITING_HELLO)
        self.peer: str | None = None
        self._acked = 0
        self._sent = 0
        self._transfer: _Transfer | None = None

    def welcome(self, last_seq: int) -> bytes:
        self._require(WELCOMING)
        self.state = STREAMING
        return wire.encode(Type.WELCOME, self.epoch, last_seq, wire.welcome(self.node, last_seq))

    def entries(self, batch: list[tuple[int, bytes]]) -> bytes:
        self._require(STREAMING)
        # The standby would close with "gap"; failing here points at the side
        # with the bug.
        if not batch or [seq for seq, _ in batch] != list(range(self._sent + 1, self._sent + 1 + len(batch))):
            raise ValueError(f"a batch must be non-empty and continue from seq {self._sent}")
        self._sent = batch[-1][0]
        return wire.encode(Type.ENTRIES, self.epoch, self._sent, wire.entries(batch))

    def ping(self, last_seq: int) -> bytes:
        if self.state != SNAPSHOTTING:
            self._require(STREAMING)
        return wire.encode(Type.PING, self.epoch, last_seq)

    def snapshot_begin(self, last_seq: int, size: int) -> bytes:
        """Announce a copy of the store as of `last_seq`, `size` bytes long."""
        self._require(STREAMING)
        if last_seq < self._sent:
            raise ValueError(f"a snapshot at seq {last_seq} would go back behind seq {self._sent} already sent")
        self.state = SNAPSHOTTING
        self._transfer = _Transfer(last_seq, size)
        return wire.encode(Type.SNAPSHOT_BEGIN, self.epoch, last_seq, wire.snapshot_begin(last_seq, size))

    def snapshot_chunk(self, data: bytes) -> bytes:
        self._require(SNAPSHOTTING)
        t = self._transfer
        if not data or t.offset + len(data) > t.size:
            raise ValueError(f"a chunk of {len(data)} bytes at offset {t.offset} of {t.size}")
        offset = t.offset
        t.add(data)
        return wire.encode(Type.SNAPSHOT_CHUNK, self.epoch, offset, data)

    def snapshot_end(self) -> bytes:
        """The copy is sent; entries continue from its last seq."""
        self._require(SNAPSHOTTING)
        t = self._transfer
        if t.offset != t.size:
            raise ValueError(f"snapshot ends at {t.offset} of {t.size} bytes")
        self.state = STREAMING
        self._transfer = None
        self._sent = t.last_seq
        return wire.encode(Type.SNAPSHOT_END, self.epoch, t.last_seq,
                           wire.snapshot_end(t.last_seq, t.size, t.sha256.hexdigest()))

    def _handle(self, frame: Frame) -> list[Action]:
        if frame.type == Type.REFUSE:
            refused = wire.decode_refuse(frame.payload)
            # A standby refusing us as stale knows of a newer primary.
            fence = [Fence(frame.epoch)] if frame.epoch > self.epoch else []
            return fence + self._close(refused.code, refused.message)
        if frame.type == Type.HELLO and self.state == AWAITING_HELLO:
            return self._hello(wire.decode_hello(frame.payload))
        if frame.epoch > self.epoch:
            return [Fence(frame.epoch), *self._refuse("stale_primary", f"peer is at epoch {frame.epoch}")]
        if frame.epoch < self.epoch:
            return self._close("epoch_changed", f"frame of epoch {frame.epoch}, welcomed at {self.epoch}")
        if frame.type == Type.ACK and self.state in (STREAMING, SNAPSHOTTING):
            return self._ack(frame.seq)
        return self._unexpected(frame)

    def _hello(self, hello: wire.HelloPayload) -> list[Action]:
        if hello.node == self.node:
            return self._refuse("self", f"node {self.node} connected to itself")
        if hello.epoch > self.epoch:
            return [Fence(hello.epoch), *self._refuse("stale_primary", f"peer is at epoch {hello.epoch}")]
        # An older epoch is a former primary rejoining: WELCOME carries ours.
        self.peer = hello.node
        self._acked = self._sent = hello.last_seq
        self.state = WELCOMING
        return [Hello(hello.node, hello.epoch, hello.last_seq, hello.tip, hello.time_zone)]

    def _ack(self, seq: int) -> list[Action]:
        if seq < self._acked:
            return self._close("bad_ack", f"ACK {seq} after ACK {self._acked}")
        if seq > self._sent:
            return self._close("bad_ack", f"ACK {seq} but only sent up to {self._sent}")
        self._acked = seq
        return [Acked(seq)]


def history_refusal(hello: Hello, epoch: int, last_seq: int, tip_here: bytes | None,
                    time_zone: str = "") -> tuple[str, str] | None:
    """Why a primary (at `epoch`, with `last_seq`) must not continue the
    standby's history, as (code, message) for REFUSE; None if it may.

    `tip_here` is the digest of the primary's own log entry at the standby's
    last seq (None when its log no longer holds that seq). Streaming from
    last_seq + 1 is only right if the standby's log is a prefix of ours:
    after a failover, the former primary rejoining as a standby may hold an
    unreplicated tail of its own (async mode), and continuing it would mix
    two histories with no error anywhere. Equal digests at one seq mean one
    history up to it: a standby only ever appends what its primary sent,
    after this same check. Without our entry to compare, a standby of our
    own epoch followed this history; one of an older epoch may be that
    former primary, and the snapshot that would bring it up to date would
    overwrite its tail, so it is refused too.

    `time_zone` is the zone the primary counts statistics in: the apply
    writes the hour labels, so a standby counting in another would hold
    other statistics from the same log (and after a failover serve them)."""
    if time_zone and hello.time_zone and hello.time_zone != time_zone:
        return "time_zone", (f"standby counts statistics in time zone {hello.time_zone!r}, this primary in "
                             f"{time_zone!r}: give both nodes the same stats.time_zone (a store keeps the "
                             "zone it was made with: a standby of another zone needs an empty data directory)")
    if hello.last_seq > last_seq:
        return "ahead", (f"standby has seq {hello.last_seq}, this primary only {last_seq}: it holds entries "
                         "this primary never had (a former primary's unreplicated tail)")
    if hello.last_seq == 0:
        return None  # an empty store: a prefix of any history
    if not hello.tip and tip_here is not None:
        return None  # a peer from before tips (a rolling upgrade): cannot check; the caller warns
    advice = ("write out its tail (`ingest tail --data DIR --after SEQ`, replayed through this primary), "
              "then start it with an empty data directory")
    if tip_here is None:
        if hello.epoch < epoch:
            return "unverifiable", (f"standby (epoch {hello.epoch}) is at seq {hello.last_seq}, which this "
                                    f"primary's log no longer holds; it may hold a tail of its own: {advice}")
        return None
    if hello.tip != tip_here:
        return "diverged", (f"standby's entry at seq {hello.last_seq} differs from this primary's: its history "
                            f"forked at or before it: {advice}")
    return None


class Standby(_Endpoint):
    def __init__(self, node: str, epoch: int, last_seq: int, tip: bytes = b"", time_zone: str = "") -> None:
        super().__init__(node, epoch, CONNECTING)
        self.last_seq = last_seq  # the last seq handed out in Apply (or stored before connecting)
        self.tip = tip  # digest of our entry at last_seq (Store.tip), sent in HELLO
        self.time_zone = time_zone  # the zone of our statistics (Store.time_zone), sent in HELLO
        self.primary: str | None = None
        self._acked = last_seq
        self._primary_last_seq = last_seq
        self._transfer: _Transfer | None = None

    @property
    def primary_last_seq(self) -> int:
        """The highest seq the primary is known to have (WELCOME, ENTRIES, PING)."""
        return self._primary_last_seq

    def hello(self) -> bytes:
        self._require(CONNECTING)
        self.state = AWAITING_WELCOME
        payload = wire.hello(self.node, self.last_seq, self.epoch, self.tip, self.time_zone)
        return wire.encode(Type.HELLO, self.epoch, self.last_seq, payload)

    def ack(self, seq: int) -> bytes:
        """ACK for entries handed out in Apply; b"" once closed.

        `receive` can return [Apply, Close] (a good frame, then a bad one in
        the same read): the caller carries out the Apply after this side is
        already closed, and its ACK has nowhere to go. The entries are
        durable all the same; the next HELLO carries them."""
        if self.state == CLOSED and seq <= self.last_seq:
            return b""
        if self.state != RECEIVING:  # an ACK of entries from before a snapshot may trail its BEGIN
            self._require(FOLLOWING)
        if not self._acked <= seq <= self.last_seq:
            raise ValueError(f"ACK {seq} outside [{self._acked}, {self.last_seq}]")
        self._acked = seq
        return wire.encode(Type.ACK, self.epoch, seq)

    def _handle(self, frame: Frame) -> list[Action]:
        if frame.type == Type.REFUSE:
            refused = wire.decode_refuse(frame.payload)
            # A primary of a higher epoch that will not take us (our log
            # holds entries its history lacks, another time zone...): this
            # node's history is not the current one, and restarted as a
            # primary it must not take writes.
            fence = [Fence(frame.epoch)] if frame.epoch > self.epoch else []
            return fence + self._close(refused.code, refused.message)
        if frame.type == Type.WELCOME and self.state == AWAITING_WELCOME:
            return self._welcome(frame.epoch, wire.decode_welcome(frame.payload))
        if self.state not in (FOLLOWING, RECEIVING):
            return self._unexpected(frame)
        if frame.epoch != self.epoch:
            return self._close("epoch_changed", f"frame of epoch {frame.epoch}, welcomed at {self.epoch}")
        if frame.type == Type.PING:
            self._primary_last_seq = max(self._primary_last_seq, frame.seq)
            return []
        if self.state == RECEIVING:
            if frame.type == Type.SNAPSHOT_CHUNK:
                return self._snapshot_chunk(frame.seq, frame.payload)
            if frame.type == Type.SNAPSHOT_END:
                return self._snapshot_end(wire.decode_snapshot_end(frame.payload))
        elif frame.type == Type.ENTRIES:
            return self._entries(frame.seq, wire.decode_entries(frame.payload))
        elif frame.type == Type.SNAPSHOT_BEGIN:
            return self._snapshot_begin(wire.decode_snapshot_begin(frame.payload))
        return self._unexpected(frame)

    def _snapshot_begin(self, begin: wire.SnapshotBeginPayload) -> list[Action]:
        if begin.last_seq < self.last_seq:
            return self._close("bad_snapshot", f"snapshot at seq {begin.last_seq}, this node has {self.last_seq}")
        self.state = RECEIVING
        self._transfer = _Transfer(begin.last_seq, begin.size)
        self._primary_last_seq = max(self._primary_last_seq, begin.last_seq)
        return [SnapshotBegin(begin.last_seq, begin.size)]

    def _snapshot_chunk(self, offset: int, data: bytes) -> list[Action]:
        t = self._transfer
        if offset != t.offset or not data or t.offset + len(data) > t.size:
            return self._close("bad_snapshot", f"chunk of {len(data)} bytes at offset {offset}; "
                                               f"expected offset {t.offset} of {t.size}")
        t.add(data)
        return [SnapshotChunk(data)]

    def _snapshot_end(self, end: wire.SnapshotEndPayload) -> list[Action]:
        t = self._transfer
        sha256 = t.sha256.hexdigest()
        if (end.last_seq, end.size, end.sha256) != (t.last_seq, t.offset, sha256) or t.offset != t.size:
            return self._close("bad_snapshot", f"snapshot ends at {end.size} bytes, sha256 {end.sha256}, seq "
                                               f"{end.last_seq}; received {t.offset} of {t.size}, sha256 {sha256}")
        self.state = FOLLOWING
        self._transfer = None
        self.last_seq = t.last_seq
        return [SnapshotEnd(t.last_seq, t.size, sha256)]

    def _welcome(self, epoch: int, welcome: wire.WelcomePayload) -> list[Action]:
        if welcome.node == self.node:
            return self._refuse("self", f"node {self.node} connected to itself")
        if epoch < self.epoch:
            return self._refuse("stale_primary", f"primary at epoch {epoch}, this node knows epoch {self.epoch}")
        # Entries the primary never had cannot be reconciled by streaming;
        # following would silently keep them.
        if welcome.last_seq < self.last_seq:
            return self._refuse("ahead", f"primary ends at seq {welcome.last_seq}, this node at {self.last_seq}")
        self.epoch = epoch
        self.primary = welcome.node
        self._primary_last_seq = welcome.last_seq
        self.state = FOLLOWING
        return [Welcomed(welcome.node, epoch, welcome.last_seq)]

    def _entries(self, frame_seq: int, batch: list[tuple[int, bytes]]) -> list[Action]:
        if not batch or batch[-1][0] != frame_seq:
            return self._close("bad_entries", f"batch does not end at the header's seq {frame_seq}")
        expected = range(self.last_seq + 1, self.last_seq + 1 + len(batch))
        if [seq for seq, _ in batch] != list(expected):
            return self._close("gap", f"batch {batch[0][0]}..{batch[-1][0]} does not continue from {self.last_seq}")
        self.last_seq = frame_seq
        self._primary_last_seq = max(self._primary_last_seq, frame_seq)
        return [Apply(batch, self._primary_last_seq)]
