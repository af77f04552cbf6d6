"""The standby's follow loop (ingest/replication/standby.py) against a
scripted primary on 127.0.0.1: what the loop does when the link dies while
an apply runs on the writer thread.

The scenario runs in a process of its own (python this_file.py DIR): it
needs real threads and a real uvloop, and the test process may have been
monkey-patched by then (importing locust patches threading with gevent)."""
from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop

from ingest import rules
from ingest.events import BindingEvent
from ingest.replication import protocol
from ingest.replication.standby import Follower
from ingest.store import Store

NOW = 1_700_000_000_000
WAIT_S = 20.0
MAP = 8 << 20  # the whole map is allocated on disk: keep test stores small


def source_log(path, n: int) -> tuple[list[tuple[int, bytes]], str]:
    """n real change-log entries, and the digest of the store that made them."""
    src = Store(path, map_bytes_initial=MAP)
    try:
        src.write(lambda tx: [rules.apply_binding(
            tx, BindingEvent(f"e{i}", "S1", "D1", f"T{i // 10:08d}", f"P{i:016d}", 10, NOW), "LAB", 0)
            for i in range(n)])
        return src.log_raw(0, n), src.digest()
    finally:
        src.close()


class ScriptedPrimary:
    """Welcomes every standby and streams `log` from its HELLO; the first
    connection gets only the first `first_batch` entries, so a test can cut it."""

    def __init__(self, log: list[tuple[int, bytes]], first_batch: int):
        self.log = log
        self.first_batch = first_batch
        self.hellos: list[int] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = protocol.Primary("primary", 0)
        first = not self.writers
        self.writers.append(writer)
        try:
            while data := await reader.read(1 << 16):
                for action in proto.receive(data):
                    if isinstance(action, protocol.Hello):
                        self.hellos.append(action.last_seq)
                        writer.write(proto.welcome(len(self.log)))
                        rest = self.log[action.last_seq:]
                        writer.write(proto.entries(rest[:self.first_batch] if first else rest))
        except OSError:
            pass

    def reset_first(self) -> None:
        """Close the first connection with a RST, as a cutting middlebox does."""
        writer = self.writers[0]
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def until(condition, what: str) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {WAIT_S}s: {what}")


def test_a_reset_while_applying_reconnects_and_catches_up(tmp_path):
    out = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True,
                         timeout=5 * WAIT_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert out.stdout.strip() == "caught up", out.stdout[-3000:]


def reset_while_applying(tmp_path: Path) -> None:
    log, digest = source_log(str(tmp_path / "src"), 30)
    store = Store(str(tmp_path / "standby"), map_bytes_initial=MAP)
    entered, release = threading.Event(), threading.Event()
    apply_log = store.apply_log

    def held_apply(entries, window_ms):
        if not entered.is_set():
            entered.set()
            release.wait(WAIT_S)
        return apply_log(entries, window_ms)

    store.apply_log = held_apply
    standby_writers = []
    open_connection = asyncio.open_connection

    async def recording_open(*args, **kwargs):
        reader, writer = await open_connection(*args, **kwargs)
        standby_writers.append(writer)
        return reader, writer

    asyncio.open_connection = recording_open  # a process of its own: no one else sees it

    async def main() -> None:
        primary = ScriptedPrimary(log, first_batch=10)
        server = await asyncio.start_server(primary.handle, "127.0.0.1", 0)
        follower = Follower(store, "127.0.0.1", server.sockets[0].getsockname()[1], 0)
        follower.start()
        try:
            await until(entered.is_set, "the first apply started")
            primary.reset_first()
            # The standby's loop has seen the reset before the apply returns:
            # its transport is closed when it comes to write the ACK.
            await until(lambda: standby_writers[0].transport.is_closing(), "the standby saw the reset")
            release.set()
            await until(lambda: store.last_seq == 30 and follower.status()["connected"], "caught up again")
            assert primary.hellos == [0, 10]
        finally:
            release.set()
            await follower.stop()
            server.close()
            for writer in primary.writers:
                writer.transport.abort()

    try:
        # Bounded as a whole: a hang fails with the place it hung.
        uvloop.run(asyncio.wait_for(main(), 3 * WAIT_S))
        assert store.digest() == digest
    finally:
        store.close()
    print("caught up")


if __name__ == "__main__":
    reset_while_applying(Path(sys.argv[1]))
