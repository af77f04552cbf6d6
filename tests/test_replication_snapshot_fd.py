"""A snapshot's temporary file: open as long as its copy writes to it, and
removed when the transfer ends however it ends.

The snapshot copy's file outlives a cancel of the task that sends it.

The copy (LMDB's copyfd) writes through a descriptor on a thread of its own;
the task sending the snapshot is cancelled when the loop ends at shutdown,
maybe mid-copy. Closing the file then would hand its number to the next file
opened, and the rest of the copy would land in that file."""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from ingest.replication import primary as primary_module
from ingest.replication import protocol
from ingest.replication.primary import Session


class SlowStore:
    node, epoch, last_seq = "p", 0, 0

    def __init__(self, path: str):
        self.path = path
        self.started = threading.Event()
        self.release = threading.Event()

    def snapshot(self, fd: int) -> int:
        self.started.set()
        assert self.release.wait(10)
        os.write(fd, b"rest of the copy")
        return 7


def test_a_cancel_mid_copy_leaves_the_descriptor_to_the_copy(tmp_path):
    store = SlowStore(str(tmp_path))
    pool = ThreadPoolExecutor(1)
    session = Session(SimpleNamespace(store=store, pool=pool, sessions=set()))
    session.snapshot = {}

    async def scenario() -> bytes:
        task = asyncio.get_running_loop().create_task(session._send_snapshot())
        await asyncio.get_running_loop().run_in_executor(None, store.started.wait, 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # the next file opened would take a freed descriptor number
        with open(tmp_path / "other", "wb") as other:
            store.release.set()
            pool.shutdown(wait=True)
            other.flush()
        return (tmp_path / "other").read_bytes()

    assert asyncio.run(scenario()) == b""
    assert not list(tmp_path.glob("snapshot-out-*"))  # still removed


class FakeTransport:
    def __init__(self):
        self.protocol = None
        self.written = []
        self.aborted = False

    def get_extra_info(self, name):
        return ("127.0.0.1", 1) if name == "peername" else None

    def write(self, data):
        self.written.append(data)

    def close(self):
        self.abort()

    def abort(self):
        if not self.aborted:
            self.aborted = True
            self.protocol.connection_lost(None)


def test_a_standby_that_stops_reading_mid_snapshot_is_dropped_and_its_file_removed(tmp_path):
    store = SlowStore(str(tmp_path))
    store.release.set()
    pool = ThreadPoolExecutor(1)
    hub = SimpleNamespace(store=store, pool=pool, sessions=set())
    session = Session(hub)
    transport = FakeTransport()
    transport.protocol = session

    async def scenario() -> bool:
        session.connection_made(transport)
        session.proto.receive(protocol.Standby("s", 0, 0).hello())
        session.proto.welcome(0)
        session.cursor = 0
        session.snapshot = {}
        session.pause_writing()  # the peer's socket is full: it reads nothing
        task = asyncio.get_running_loop().create_task(session._send_snapshot())
        await asyncio.sleep(0.2)
        assert list(tmp_path.glob("snapshot-out-*")) and not task.done()  # pinned while it waits
        session._paused_since -= primary_module.STALLED_S + 1
        session.ping()  # the tick
        await asyncio.wait_for(task, 5)
        return transport.aborted

    try:
        assert asyncio.run(scenario())
    finally:
        pool.shutdown(wait=True)
    assert not list(tmp_path.glob("snapshot-out-*")) and session not in hub.sessions
