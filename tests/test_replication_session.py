"""The primary's session (ingest/replication/primary.py) against a fake
transport and hub: what it sends and when, with no socket. The protocol
itself is tests/test_replication_protocol.py; real processes are
tests/test_replication_*.py."""
from __future__ import annotations

import asyncio

import pytest

from protocol_fakes import Transport
from ingest import rules
from ingest.events import BindingEvent
from ingest.replication import protocol, wire
from ingest.replication.primary import Hub, Session
from ingest.store import Store

NOW = 1_700_000_000_000


class PeerTransport(Transport):
    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def frames(self) -> list:
        return list(wire.FrameDecoder().feed(self.written()))


class FakeHub:
    """What a Session asks of its Hub; `fence_result` is the future the
    server's fence returns (App.fence)."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop):
        self.store = store
        self.sessions: set = set()
        self.fence_result = loop.create_future()
        self.fenced: list[int] = []
        self.acked: list = []

    def on_fence(self, epoch: int) -> asyncio.Future:
        self.fenced.append(epoch)
        return self.fence_result

    def on_ack(self, session) -> None:
        self.acked.append(session.acked)

    def closed_to_standbys(self) -> None:
        return None


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "d"))
    events = [BindingEvent(f"e{i}", "S1", "D1", f"T{i:08d}", f"P{i:016d}", 10, NOW) for i in range(3)]
    s.write(lambda tx: [rules.apply_binding(tx, e, "LAB", 0) for e in events])
    yield s
    s.close()


def connect(hub) -> tuple[Session, PeerTransport]:
    session = Session(hub)
    transport = PeerTransport()
    transport.protocol = session
    session.connection_made(transport)
    return session, transport


def run_callbacks(loop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def refusals(transport) -> list[str]:
    return [wire.decode_refuse(f.payload).code for f in transport.frames() if f.type == wire.Type.REFUSE]


def test_a_stale_primary_refusal_waits_for_the_fence_on_disk(loop, store):
    # The refusal tells the promoted node that this one knows its epoch, and
    # it stops telling then: sent before the fence is stored, a crash in
    # between would bring this node back as a primary no one tells.
    hub = FakeHub(store, loop)
    session, transport = connect(hub)
    session.data_received(protocol.Standby("promoted", store.epoch + 1, store.last_seq).hello())
    assert hub.fenced == [store.epoch + 1]
    assert transport.written() == b""
    hub.fence_result.set_result(True)
    run_callbacks(loop)
    assert refusals(transport) == ["stale_primary"]
    assert ("close",) in transport.calls and session not in hub.sessions


def test_a_fence_that_could_not_be_stored_sends_no_refusal(loop, store):
    hub = FakeHub(store, loop)
    session, transport = connect(hub)
    session.data_received(protocol.Standby("promoted", store.epoch + 1, store.last_seq).hello())
    hub.fence_result.set_result(False)
    run_callbacks(loop)
    # The promoted node hears nothing, keeps telling, and each hello is
    # another try at storing the fence.
    assert refusals(transport) == [] and ("abort",) in transport.calls
    assert session not in hub.sessions


def test_a_session_closed_by_a_bad_frame_leaves_the_hub_at_once(loop, store):
    # The transport stays open while its queued bytes drain; the closed
    # protocol used to stay in the hub meanwhile, and the next ping raised
    # out of the server's tick, which then never ran again.
    hub = FakeHub(store, loop)
    session, transport = connect(hub)
    hub.sessions.add(session)
    session.data_received(protocol.Standby("standby", store.epoch, 0).hello())
    assert session.cursor == store.last_seq and session in hub.sessions
    session.data_received(b"XXXX" * 8)  # not a frame
    assert session not in hub.sessions and ("close",) in transport.calls
    before = len(transport.calls)
    session.ping()
    session.pump()
    session.data_received(wire.encode(wire.Type.ACK, store.epoch, 1, b""))
    assert len(transport.calls) == before  # nothing more goes out, nothing raises


def test_one_failing_session_does_not_stop_the_others(loop, store):
    hub = Hub(store, on_fence=lambda epoch: None, on_ack=lambda session: None)
    try:
        broken, broken_transport = connect(hub)
        healthy, healthy_transport = connect(hub)
        for session in (broken, healthy):
            session.data_received(protocol.Standby(f"standby-{id(session)}", store.epoch, 0).hello())

        def fail() -> None:
            raise RuntimeError("a state nobody foresaw")

        broken.pump = fail
        broken.ping = fail
        events = [BindingEvent("e9", "S1", "D1", "T00000009", "P0000000000000009", 10, NOW)]
        store.write(lambda tx: [rules.apply_binding(tx, e, "LAB", 0) for e in events])
        hub.notify()
        hub.ping()
        assert broken not in hub.sessions and ("abort",) in broken_transport.calls
        got = [f.seq for f in healthy_transport.frames() if f.type == wire.Type.ENTRIES]
        assert got[-1] == store.last_seq
    finally:
        hub.close()
