"""The snapshot copy's file outlives a cancel of the task that sends it.

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
