"""Replication wire format and state machines, without sockets.

Bytes go from one state machine to the other by hand, cut at arbitrary
places, the way TCP may deliver them.
"""
import hashlib
import random
import struct
import zlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.replication import wire
from ingest.replication.protocol import (
    Acked, Apply, Close, Fence, Hello, Primary, Send, SnapshotBegin, SnapshotChunk, SnapshotEnd, Standby,
    StateError, Welcomed, history_refusal,
)
from ingest.replication.wire import FRAME_BYTES_MAX, HEADER, HEADER_SIZE, Frame, FrameDecoder, Type, WireError

SAMPLES = [
    Frame(Type.HELLO, 3, 41, wire.hello("standby-a", 41, 3)),
    Frame(Type.WELCOME, 3, 57, wire.welcome("primary", 57)),
    Frame(Type.ENTRIES, 3, 44, wire.entries([(42, b"\x93\x01"), (43, b""), (44, b"\x00" * 300)])),
    Frame(Type.ACK, 3, 44, b""),
    Frame(Type.REFUSE, 2**64 - 1, 0, wire.refuse("stale_primary", "peer is at epoch 4")),
    Frame(Type.PING, 0, 2**64 - 1, b""),
    Frame(Type.SNAPSHOT_BEGIN, 3, 900, wire.snapshot_begin(900, 5 << 30)),
    Frame(Type.SNAPSHOT_CHUNK, 3, 1 << 20, bytes(range(256)) * 4),
    Frame(Type.SNAPSHOT_END, 3, 900, wire.snapshot_end(900, 5 << 30, "ab" * 32)),
]


def raw_frame(magic=wire.MAGIC, version=wire.VERSION, type=Type.PING, epoch=1, seq=1, payload=b"", length=None):
    """A frame with any header field forged, and a checksum that matches it."""
    length = len(payload) if length is None else length
    header = HEADER.pack(magic, version, type, epoch, seq, length, 0)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header[:-4] + struct.pack(">I", crc) + payload


def decode_all(data, chunks=None):
    decoder = FrameDecoder()
    frames = []
    for chunk in chunks or [data]:
        frames += decoder.feed(chunk)
    return frames


# -- wire ------------------------------------------------------------------

def test_header_is_32_bytes():
    assert HEADER_SIZE == 32
    assert len(wire.encode(Type.ACK, 1, 1)) == 32


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: f.type.name)
def test_frame_round_trip_whole_and_byte_by_byte(frame):
    data = wire.encode(*frame)
    assert decode_all(data) == [frame]
    assert decode_all(data, [data[i:i + 1] for i in range(len(data))]) == [frame]


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: f.type.name)
def test_trailing_data_waits_for_the_next_frame(frame):
    data = wire.encode(*frame)
    following = wire.encode(Type.PING, 9, 99)
    for cut in range(len(following)):
        decoder = FrameDecoder()
        assert decoder.feed(data + following[:cut]) == [frame]
        assert decoder.feed(following[cut:]) == [Frame(Type.PING, 9, 99, b"")]


def test_all_samples_in_one_feed():
    data = b"".join(wire.encode(*frame) for frame in SAMPLES)
    assert decode_all(data) == SAMPLES


def test_payload_helpers_round_trip():
    assert wire.decode_hello(wire.hello("n1", 7, 2)) == wire.HelloPayload("n1", 7, 2)
    assert wire.decode_welcome(wire.welcome("n2", 9)) == wire.WelcomePayload("n2", 9)
    assert wire.decode_refuse(wire.refuse("gap", "why")) == wire.RefusePayload("gap", "why")
    assert wire.decode_snapshot_begin(wire.snapshot_begin(5, 6)) == wire.SnapshotBeginPayload(5, 6)
    assert wire.decode_snapshot_end(wire.snapshot_end(5, 6, "x")) == wire.SnapshotEndPayload(5, 6, "x")
    batch = [(1, b"a"), (2, bytes(range(256)))]
    assert wire.decode_entries(wire.entries(batch)) == batch
    assert wire.decode_entries(wire.entries([])) == []


@pytest.mark.parametrize("decode", [wire.decode_hello, wire.decode_welcome, wire.decode_refuse, wire.decode_entries])
def test_undecodable_payload_is_bad_payload(decode):
    with pytest.raises(WireError) as exc:
        decode(b"\xc1")
    assert exc.value.code == "bad_payload"
    with pytest.raises(WireError):
        decode(wire.encode(Type.PING, 1, 1))


def test_every_flipped_bit_is_refused_never_misread():
    frame = SAMPLES[2]
    data = wire.encode(*frame)
    for bit in range(len(data) * 8):
        corrupt = bytearray(data)
        corrupt[bit // 8] ^= 1 << (bit % 8)
        decoder = FrameDecoder()
        with pytest.raises(WireError) as exc:
            # A flip in the length may ask for more bytes than the frame has:
            # the checksum rejects the frame once they arrive.
            assert decoder.feed(bytes(corrupt)) == []
            missing = HEADER.unpack_from(corrupt)[5] - len(frame.payload)
            decoder.feed(b"\x00" * missing)
        position = bit // 8
        if position < 4:
            expected = {"bad_magic"}
        elif position < 6:
            expected = {"bad_version"}
        elif 24 <= position < 28:  # the length
            expected = {"too_large", "bad_checksum"}
        else:
            expected = {"bad_checksum"}
        assert exc.value.code in expected, (bit, exc.value.code)


def test_bad_header_fields():
    cases = {
        "bad_magic": raw_frame(magic=b"HTTP"),
        "bad_version": raw_frame(version=wire.VERSION + 1),
        "bad_version_1": raw_frame(version=1),  # before snapshots
        "bad_type": raw_frame(type=99),
        "too_large": raw_frame(length=FRAME_BYTES_MAX + 1),
    }
    for code, data in cases.items():
        with pytest.raises(WireError) as exc:
            decode_all(data)
        assert exc.value.code == code.removesuffix("_1")


def test_oversize_length_is_refused_before_its_payload_arrives():
    decoder = FrameDecoder()
    header = raw_frame(type=Type.ENTRIES, length=FRAME_BYTES_MAX + 1)
    assert decoder.feed(header[:HEADER_SIZE - 1]) == []
    with pytest.raises(WireError) as exc:
        decoder.feed(header[HEADER_SIZE - 1:])
    assert exc.value.code == "too_large"


def test_largest_payload_is_accepted():
    payload = b"\x01" * FRAME_BYTES_MAX
    assert decode_all(wire.encode(Type.ENTRIES, 1, 1, payload)) == [Frame(Type.ENTRIES, 1, 1, payload)]
    with pytest.raises(ValueError):
        wire.encode(Type.ENTRIES, 1, 1, payload + b"\x01")


def test_good_frames_before_a_bad_one_come_with_the_error():
    good = [wire.encode(*frame) for frame in SAMPLES[:2]]
    decoder = FrameDecoder()
    with pytest.raises(WireError) as exc:
        decoder.feed(good[0] + good[1] + raw_frame(version=7) + good[0])
    assert exc.value.code == "bad_version"
    assert exc.value.frames == SAMPLES[:2]
    # No frame boundary can be trusted after a bad frame.
    with pytest.raises(WireError) as again:
        decoder.feed(good[0])
    assert again.value.code == "bad_version" and again.value.frames == []


frames_strategy = st.lists(
    st.builds(
        Frame,
        st.sampled_from(Type),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.binary(max_size=200),
    ),
    max_size=12,
)


@given(frames=frames_strategy, cuts=st.lists(st.integers(0, 3000), max_size=30))
def test_any_chunking_decodes_the_same_frames(frames, cuts):
    data = b"".join(wire.encode(*frame) for frame in frames)
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    assert decode_all(data, chunks) == frames


# -- state machines ------------------------------------------------------------

def frames_in(actions):
    """The frames in the Send actions, decoded."""
    return decode_all(b"".join(a.data for a in actions if isinstance(a, Send)))


def refusal(actions):
    (frame,) = frames_in(actions)
    assert frame.type == Type.REFUSE
    return wire.decode_refuse(frame.payload).code


def handshake(primary_epoch=3, standby_epoch=3, standby_last=10, primary_last=20):
    primary = Primary("p", primary_epoch)
    standby = Standby("s", standby_epoch, standby_last)
    assert primary.receive(standby.hello()) == [Hello("s", standby_epoch, standby_last)]
    actions = standby.receive(primary.welcome(primary_last))
    return primary, standby, actions


def test_handshake():
    primary, standby, actions = handshake()
    assert actions == [Welcomed("p", 3, 20)]
    assert (primary.state, standby.state) == ("streaming", "following")
    assert primary.peer == "s" and standby.primary == "p"
    assert standby.primary_last_seq == 20


def test_primary_refuses_itself():
    primary = Primary("p", 3)
    actions = primary.receive(Standby("p", 3, 0).hello())
    assert refusal(actions) == "self"
    assert actions[-1].code == "self" and primary.state == "closed"


def test_standby_refuses_itself():
    standby = Standby("s", 3, 0)
    standby.hello()
    actions = standby.receive(wire.encode(Type.WELCOME, 3, 0, wire.welcome("s", 0)))
    assert refusal(actions) == "self" and actions[-1] == Close("self", actions[-1].message)


def test_hello_of_a_higher_epoch_fences_the_primary():
    primary = Primary("p", 3)
    actions = primary.receive(Standby("s", 4, 0).hello())
    assert actions[0] == Fence(4)
    assert refusal(actions) == "stale_primary"
    assert actions[-1].code == "stale_primary" and primary.state == "closed"


def test_former_primary_rejoins_and_adopts_the_new_epoch():
    primary, standby, actions = handshake(primary_epoch=5, standby_epoch=2)
    assert actions == [Welcomed("p", 5, 20)]
    assert standby.epoch == 5
    assert standby.receive(primary.ping(20)) == []


def test_standby_refuses_a_primary_of_an_older_epoch_which_then_fences():
    # A primary fences on the HELLO already; the standby's own check covers
    # a WELCOME that crossed a failover it learned of some other way.
    standby = Standby("s", 4, 10)
    standby.hello()
    actions = standby.receive(wire.encode(Type.WELCOME, 3, 20, wire.welcome("p", 20)))
    assert refusal(actions) == "stale_primary"
    assert actions[-1].code == "stale_primary" and standby.state == "closed"
    primary, _, _ = handshake(primary_epoch=3)
    back = primary.receive(actions[0].data)
    assert back[0] == Fence(4) and back[1].code == "stale_primary"
    assert primary.state == "closed"


def test_any_frame_of_a_higher_epoch_fences_the_primary():
    primary, _, _ = handshake()
    actions = primary.receive(wire.encode(Type.ACK, 9, 10))
    assert actions[0] == Fence(9) and refusal(actions) == "stale_primary"


def test_standby_refuses_a_primary_behind_its_log():
    _, standby, actions = handshake(standby_last=30, primary_last=20)
    assert refusal(actions) == "ahead" and standby.state == "closed"


def test_caller_may_refuse_for_its_own_reasons():
    primary = Primary("p", 3)
    standby = Standby("s", 3, 30)
    primary.receive(standby.hello())
    data = primary.refuse("ahead", "standby has seq 30, this primary only 20")
    assert primary.state == "closed"
    assert standby.receive(data) == [Close("ahead", "standby has seq 30, this primary only 20")]
    with pytest.raises(StateError):
        primary.refuse("ahead", "twice")


@pytest.mark.parametrize(("primary_epoch", "fenced"), [(4, True), (3, False)])
def test_a_standby_refused_by_a_primary_of_a_higher_epoch_is_fenced(primary_epoch, fenced):
    # Its log holds a tail the new history lacks (ahead, diverged): restarted
    # as a primary without --follow, it must not take writes.
    primary = Primary("p", primary_epoch)
    standby = Standby("s", 3, 30)
    primary.receive(standby.hello())
    actions = standby.receive(primary.refuse("diverged", "its history forked"))
    assert actions == ([Fence(primary_epoch)] if fenced else []) + [Close("diverged", "its history forked")]
    assert standby.state == "closed"


# -- whose history a primary may continue (history_refusal) ------------------

TIP_A, TIP_B = b"\x01" * 16, b"\x02" * 16


def test_the_standby_tip_reaches_the_primary():
    primary = Primary("p", 3)
    assert primary.receive(Standby("s", 3, 10, TIP_A).hello()) == [Hello("s", 3, 10, TIP_A)]


def test_a_hello_from_before_tips_still_decodes():
    # a peer of the previous release sends a three-field HELLO
    old = msgspec.msgpack.encode(["s", 10, 3])
    primary = Primary("p", 3)
    assert primary.receive(wire.encode(Type.HELLO, 3, 10, old)) == [Hello("s", 3, 10, b"")]


def test_the_standby_time_zone_reaches_the_primary():
    primary = Primary("p", 3)
    assert primary.receive(Standby("s", 3, 10, TIP_A, "Asia/Shanghai").hello()) == [
        Hello("s", 3, 10, TIP_A, "Asia/Shanghai")]


@pytest.mark.parametrize("standby_zone, primary_zone, expected", [
    ("Asia/Shanghai", "UTC", "time_zone"),  # the same log would make other statistics there
    ("UTC", "UTC", None),
    ("", "UTC", None),                       # a peer too old to send its zone: not checkable
])
def test_a_standby_counting_in_another_time_zone_is_refused(standby_zone, primary_zone, expected):
    hello = Hello("s", 3, 10, TIP_A, standby_zone)
    refused = history_refusal(hello, 3, 20, TIP_A, primary_zone)
    assert (refused and refused[0]) == expected
    if refused:
        assert standby_zone in refused[1] and primary_zone in refused[1]


@pytest.mark.parametrize("standby_last, tip, standby_epoch, tip_here, expected", [
    (30, TIP_A, 3, None, "ahead"),          # entries this primary never had
    (10, TIP_B, 3, TIP_A, "diverged"),      # same seq, another entry: a fork at or before it
    (10, TIP_B, 2, TIP_A, "diverged"),      # a former primary's tail, however the epochs stand
    (10, TIP_A, 2, None, "unverifiable"),   # trimmed here; an older epoch may hold a tail of its own
    (10, b"", 2, None, "unverifiable"),     # the same from a peer too old to send its tip
    (10, TIP_A, 3, TIP_A, None),            # a prefix of our history: stream from seq 11
    (10, TIP_A, 2, TIP_A, None),            # a former primary with nothing unreplicated rejoins
    (10, TIP_A, 3, None, None),             # trimmed here, our own epoch: a snapshot brings it up
    (10, b"", 3, TIP_A, None),              # a peer too old to send its tip: not checkable, let in
    (0, b"", 1, None, None),                # an empty store is a prefix of anything
])
def test_history_refusal(standby_last, tip, standby_epoch, tip_here, expected):
    hello = Hello("s", standby_epoch, standby_last, tip)
    refused = history_refusal(hello, 3, 20, tip_here)
    assert (refused and refused[0]) == expected
    if refused:
        assert str(standby_last) in refused[1]


def test_a_diverged_standby_is_told_why_and_stops():
    primary = Primary("p", 3)
    standby = Standby("s", 2, 10, TIP_B)
    (hello,) = primary.receive(standby.hello())
    code, message = history_refusal(hello, primary.epoch, 20, TIP_A)
    # ... and, the refusal coming from a higher epoch, fenced
    assert standby.receive(primary.refuse(code, message)) == [Fence(3), Close("diverged", message)]
    assert (primary.state, standby.state) == ("closed", "closed")


def test_entries_apply_and_ack():
    primary, standby, _ = handshake()
    assert standby.receive(primary.entries([(11, b"a"), (12, b"b")])) == [Apply([(11, b"a"), (12, b"b")], 20)]
    assert standby.receive(primary.entries([(13, b"c")])) == [Apply([(13, b"c")], 20)]
    assert primary.receive(standby.ack(12)) == [Acked(12)]
    assert primary.receive(standby.ack(13)) == [Acked(13)]
    assert standby.last_seq == 13


@pytest.mark.parametrize("batch", [[(12, b"x")], [(11, b"x"), (13, b"y")], [(10, b"x")], [(11, b"x"), (11, b"y")]])
def test_gap_closes(batch):
    _, standby, _ = handshake()
    actions = standby.receive(wire.encode(Type.ENTRIES, 3, batch[-1][0], wire.entries(batch)))
    assert [a.code for a in actions] == ["gap"] and standby.state == "closed"


@pytest.mark.parametrize("seq, batch", [(11, []), (12, [(11, b"x")])])
def test_batch_that_disagrees_with_its_header_closes(seq, batch):
    _, standby, _ = handshake()
    actions = standby.receive(wire.encode(Type.ENTRIES, 3, seq, wire.entries(batch)))
    assert [a.code for a in actions] == ["bad_entries"]


def test_primary_will_not_send_a_gap():
    primary, _, _ = handshake()
    for batch in ([], [(12, b"x")], [(11, b"x"), (13, b"y")]):
        with pytest.raises(ValueError):
            primary.entries(batch)


@pytest.mark.parametrize("epoch", [2, 4])
def test_epoch_change_after_welcome_closes_the_standby(epoch):
    _, standby, _ = handshake()
    actions = standby.receive(wire.encode(Type.PING, epoch, 20))
    assert [a.code for a in actions] == ["epoch_changed"]


def test_ack_from_an_older_epoch_closes_the_primary():
    primary, _, _ = handshake()
    assert [a.code for a in primary.receive(wire.encode(Type.ACK, 2, 10))] == ["epoch_changed"]


def test_acks_must_not_go_back_or_run_ahead():
    primary, standby, _ = handshake()
    standby.receive(primary.entries([(11, b"a"), (12, b"b")]))
    assert primary.receive(wire.encode(Type.ACK, 3, 12)) == [Acked(12)]
    assert primary.receive(wire.encode(Type.ACK, 3, 12)) == [Acked(12)]
    assert [a.code for a in primary.receive(wire.encode(Type.ACK, 3, 11))] == ["bad_ack"]
    primary, standby, _ = handshake()
    standby.receive(primary.entries([(11, b"a")]))
    assert [a.code for a in primary.receive(wire.encode(Type.ACK, 3, 12))] == ["bad_ack"]


def test_standby_acks_only_what_it_was_handed():
    _, standby, _ = handshake()
    with pytest.raises(ValueError):
        standby.ack(11)
    with pytest.raises(ValueError):
        standby.ack(9)


def test_ping_records_the_primary_last_seq():
    primary, standby, _ = handshake()
    assert standby.receive(primary.ping(500)) == []
    assert standby.primary_last_seq == 500
    assert standby.receive(primary.entries([(11, b"a")])) == [Apply([(11, b"a")], 500)]


@pytest.mark.parametrize("side", ["primary", "standby"])
def test_refuse_closes_with_its_reason(side):
    primary, standby, _ = handshake()
    node = primary if side == "primary" else standby
    assert node.receive(wire.encode(Type.REFUSE, 3, 0, wire.refuse("shutdown", "bye"))) == [Close("shutdown", "bye")]
    assert node.receive(wire.encode(Type.PING, 3, 1)) == []


def test_unexpected_frames_close():
    assert Primary("p", 3).receive(wire.encode(Type.ACK, 3, 0))[0].code == "unexpected"
    primary, standby, _ = handshake()
    assert primary.receive(wire.encode(Type.ENTRIES, 3, 1, wire.entries([(1, b"")])))[0].code == "unexpected"
    assert standby.receive(wire.encode(Type.WELCOME, 3, 20, wire.welcome("p", 20)))[0].code == "unexpected"
    waiting = Standby("s", 3, 0)
    waiting.hello()
    assert waiting.receive(wire.encode(Type.PING, 3, 0))[0].code == "unexpected"


@pytest.mark.parametrize("side", ["primary", "standby"])
def test_wire_errors_close_after_the_good_frames(side):
    primary, standby, _ = handshake()
    if side == "primary":
        node, good, expected = primary, wire.encode(Type.ACK, 3, 10), [Acked(10)]
    else:
        node, good, expected = standby, primary.entries([(11, b"a")]), [Apply([(11, b"a")], 20)]
    actions = node.receive(good + raw_frame(magic=b"GET "))
    assert actions[:-1] == expected and actions[-1].code == "bad_magic"
    assert node.state == "closed"


def test_an_apply_handed_out_with_a_close_can_still_be_acked():
    # [Apply, Close] from one read: the caller applies, then asks for the
    # ACK of a side that is already closed. Raising here killed the
    # standby's follow task (the "connected but not applying" stall).
    primary, standby, _ = handshake()
    actions = standby.receive(primary.entries([(11, b"a")]) + raw_frame(magic=b"GET "))
    assert isinstance(actions[0], Apply) and actions[-1].code == "bad_magic"
    assert standby.ack(11) == b""
    with pytest.raises(StateError):
        standby.ack(12)  # never handed out


def test_undecodable_hello_closes():
    actions = Primary("p", 3).receive(wire.encode(Type.HELLO, 3, 0, b"\x01"))
    assert [a.code for a in actions] == ["bad_payload"]


@pytest.mark.parametrize("hello", [["abc\n2026-11-22 23:59:59,000 ERROR ingest.server FORGED", 0, 3],
                                   ["", 0, 3], ["n" * 65, 0, 3], ["a b", 0, 3],
                                   ["s", 0, 3, b"", "UTC\r\nforged"]])
def test_a_hello_with_text_that_could_forge_a_log_line_closes(hello):
    # The primary logs the standby's node and repeats its zone in a refusal.
    actions = Primary("p", 3).receive(wire.encode(Type.HELLO, 3, 0, msgspec.msgpack.encode(hello)))
    assert [a.code for a in actions] == ["bad_payload"]


@pytest.mark.parametrize("frame", [(Type.WELCOME, ["p\nforged", 0]), (Type.REFUSE, ["gap", "why\nforged"]),
                                   (Type.REFUSE, ["Gap: x", "why"])])
def test_a_welcome_or_refusal_with_text_that_could_forge_a_log_line_closes(frame):
    standby = Standby("s", 3, 0)
    standby.hello()
    kind, payload = frame
    actions = standby.receive(wire.encode(kind, 3, 0, msgspec.msgpack.encode(payload)))
    assert [a.code for a in actions] == ["bad_payload"]


def test_methods_out_of_state_raise():
    primary = Primary("p", 3)
    for call in (lambda: primary.welcome(0), lambda: primary.entries([(1, b"")]), lambda: primary.ping(0)):
        with pytest.raises(StateError):
            call()
    standby = Standby("s", 3, 0)
    with pytest.raises(StateError):
        standby.ack(0)
    standby.hello()
    with pytest.raises(StateError):
        standby.hello()


def test_full_conversation_in_memory():
    rng = random.Random(20240611)
    log = [(seq, rng.randbytes(rng.randrange(0, 400))) for seq in range(1, 1001)]
    primary, standby = Primary("p", 7), Standby("s", 7, 0)

    def deliver(data, to):
        actions = []
        while data:
            cut = rng.randrange(1, 700)
            actions += to.receive(data[:cut])
            data = data[cut:]
        return actions

    assert deliver(standby.hello(), primary) == [Hello("s", 7, 0)]
    assert deliver(primary.welcome(len(log)), standby) == [Welcomed("p", 7, 1000)]

    applied, acked, sent = [], [], 0
    while sent < len(log):
        stream = b""
        for _ in range(rng.randrange(1, 5)):
            if sent < len(log):
                size = rng.randrange(1, 60)
                stream += primary.entries(log[sent:sent + size])
                sent = min(sent + size, len(log))
        if rng.random() < 0.2:
            stream += primary.ping(len(log))
        acks = b""
        for action in deliver(stream, standby):
            assert isinstance(action, Apply) and action.primary_last_seq == 1000
            applied += action.entries
            acks += standby.ack(action.entries[-1][0])
        for action in deliver(acks, primary):
            assert isinstance(action, Acked)
            acked.append(action.seq)

    assert applied == log
    assert acked == sorted(acked) and acked[-1] == 1000
    assert (primary.state, standby.state) == ("streaming", "following")


# -- snapshots -------------------------------------------------------------

SNAPSHOT = bytes(random.Random(7).randbytes(10_000))


def send_snapshot(primary, last_seq=500, data=SNAPSHOT, chunk=3000):
    out = primary.snapshot_begin(last_seq, len(data))
    for i in range(0, len(data), chunk):
        out += primary.snapshot_chunk(data[i:i + chunk])
    return out + primary.snapshot_end()


def received(actions):
    return b"".join(a.data for a in actions if isinstance(a, SnapshotChunk))


def test_snapshot_then_entries_from_its_seq():
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    actions = standby.receive(send_snapshot(primary) + primary.ping(510) + primary.entries([(501, b"a")]))
    assert actions[0] == SnapshotBegin(500, len(SNAPSHOT))
    assert received(actions) == SNAPSHOT
    end = [a for a in actions if isinstance(a, SnapshotEnd)]
    assert end == [SnapshotEnd(500, len(SNAPSHOT), hashlib.sha256(SNAPSHOT).hexdigest())]
    assert actions[-1] == Apply([(501, b"a")], 510)
    assert standby.last_seq == 501 and standby.state == "following"
    assert primary.receive(standby.ack(500) + standby.ack(501)) == [Acked(500), Acked(501)]


def test_snapshot_chunked_by_the_network_anywhere():
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    data = send_snapshot(primary, chunk=777)
    rng = random.Random(3)
    actions = []
    while data:
        cut = rng.randrange(1, 500)
        actions += standby.receive(data[:cut])
        data = data[cut:]
    assert received(actions) == SNAPSHOT and isinstance(actions[-1], SnapshotEnd)


def test_a_corrupted_chunk_is_refused_by_its_checksum():
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    data = bytearray(send_snapshot(primary))
    data[len(data) // 2] ^= 0x10  # inside some chunk's payload
    actions = standby.receive(bytes(data))
    assert actions[-1].code == "bad_checksum" and standby.state == "closed"
    assert not any(isinstance(a, SnapshotEnd) for a in actions)


def test_a_forged_chunk_with_a_good_crc_fails_the_sha256():
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    good = send_snapshot(primary, chunk=len(SNAPSHOT))
    frames = decode_all(good)
    forged = frames[1].payload[:-1] + bytes([frames[1].payload[-1] ^ 1])
    data = wire.encode(*frames[0]) + wire.encode(Type.SNAPSHOT_CHUNK, 3, 0, forged) + wire.encode(*frames[2])
    actions = standby.receive(data)
    assert actions[-1].code == "bad_snapshot" and standby.state == "closed"
    assert not any(isinstance(a, SnapshotEnd) for a in actions)


@pytest.mark.parametrize("offset", [1, 2999, 3001, 10_000])
def test_a_chunk_out_of_place_closes(offset):
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    standby.receive(primary.snapshot_begin(500, len(SNAPSHOT)) + primary.snapshot_chunk(SNAPSHOT[:3000]))
    actions = standby.receive(wire.encode(Type.SNAPSHOT_CHUNK, 3, offset, SNAPSHOT[3000:3001]))
    assert [a.code for a in actions] == ["bad_snapshot"] or offset == 3000


def test_an_end_before_every_byte_closes():
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    standby.receive(primary.snapshot_begin(500, len(SNAPSHOT)) + primary.snapshot_chunk(SNAPSHOT[:3000]))
    sha = hashlib.sha256(SNAPSHOT[:3000]).hexdigest()
    actions = standby.receive(wire.encode(Type.SNAPSHOT_END, 3, 500, wire.snapshot_end(500, 3000, sha)))
    assert [a.code for a in actions] == ["bad_snapshot"]


def test_a_cut_mid_snapshot_installs_nothing_and_a_retry_starts_over():
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    data = send_snapshot(primary)
    for cut in (0, 40, len(data) // 2, len(data) - 1):
        primary, standby, _ = handshake(standby_last=0, primary_last=510)
        actions = standby.receive(send_snapshot(primary)[:cut])
        assert not any(isinstance(a, SnapshotEnd) for a in actions)
        assert standby.last_seq == 0  # the next HELLO asks from where it was
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    assert isinstance(standby.receive(data)[-1], SnapshotEnd)


def test_a_snapshot_behind_the_standby_closes():
    primary, standby, _ = handshake(standby_last=15, primary_last=510)
    actions = standby.receive(wire.encode(Type.SNAPSHOT_BEGIN, 3, 14, wire.snapshot_begin(14, 10)))
    assert [a.code for a in actions] == ["bad_snapshot"]


def test_entries_inside_a_snapshot_are_unexpected():
    primary, standby, _ = handshake(standby_last=0, primary_last=510)
    standby.receive(primary.snapshot_begin(500, len(SNAPSHOT)))
    actions = standby.receive(wire.encode(Type.ENTRIES, 3, 1, wire.entries([(1, b"")])))
    assert [a.code for a in actions] == ["unexpected"]


def test_pings_and_acks_go_on_during_a_snapshot():
    primary, standby, _ = handshake(standby_last=10, primary_last=510)
    standby.receive(primary.entries([(11, b"a")]))
    begin = primary.snapshot_begin(500, len(SNAPSHOT))
    assert standby.receive(begin + primary.ping(520)) == [SnapshotBegin(500, len(SNAPSHOT))]
    assert standby.primary_last_seq == 520
    # the ACK of entries applied before the BEGIN arrived
    assert primary.receive(standby.ack(11)) == [Acked(11)]


def test_primary_snapshot_misuse_raises():
    primary, _, _ = handshake(primary_last=510)
    primary.entries([(11, b"a"), (12, b"b")])
    with pytest.raises(ValueError):
        primary.snapshot_begin(11, 10)  # behind what was sent
    primary.snapshot_begin(500, 10)
    with pytest.raises(StateError):
        primary.entries([(13, b"c")])
    with pytest.raises(ValueError):
        primary.snapshot_chunk(b"x" * 11)
    primary.snapshot_chunk(b"x" * 4)
    with pytest.raises(ValueError):
        primary.snapshot_end()
    primary.snapshot_chunk(b"x" * 6)
    primary.snapshot_end()
    with pytest.raises(ValueError):
        primary.entries([(13, b"c")])  # entries continue from the snapshot's seq
    primary.entries([(501, b"c")])
