"""Snapshots between real server processes: a primary that keeps only a
short change log brings a fresh standby, and one that fell far behind, up to
its state with a hot copy of its store and then the stream; a standby cut or
killed mid-snapshot retries cleanly and never holds half a store."""
from __future__ import annotations

import os
import stat
import time

from helpers import config_with, event, fresh_tube
from proxy import Proxy
from test_replication_http import WAIT_S, mixed_load, replication_port, wait_caught_up
from ingest.store import SNAPSHOT_IN, Store

KEEP = 200
# Both nodes get the same retention, as one config file gives a pair: the
# digest covers the (retained) log, so it must be trimmed alike.
CONFIG = "[replication]\nlog_keep_entries = %d\n\n" % KEEP + config_with()


def load(primary, batches: int, size: int = 500) -> None:
    for _ in range(batches):
        status, _, _ = primary.batch([event(fresh_tube(), site_id="S-N") for _ in range(size)])
        assert status == 200


def digest(server) -> str:
    store = Store(str(server.data), map_bytes_initial=64 << 20)  # as served: no bigger allocation
    try:
        return store.digest()
    finally:
        store.close()


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {WAIT_S}s: {what}")


def test_a_fresh_standby_of_a_trimmed_log_starts_from_a_snapshot(server_factory):
    primary = server_factory(config=CONFIG, args=("--replication-port", "0"))
    mixed_load(primary, 2)
    load(primary, 3)
    first = primary.status()["log_first_seq"]
    assert first > 1 and primary.last_seq() - first + 1 == KEEP
    standby = server_factory(config=CONFIG, args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    node = standby.status()["node"]
    wait_caught_up(primary, standby)
    assert "sending a snapshot" in primary.stderr_text()
    assert "installed the snapshot" in standby.stderr_text()
    # the copy, now the standby's store, is its user's alone like one LMDB made
    assert stat.S_IMODE(os.stat(standby.data / "data.mdb").st_mode) == 0o600
    # and then the stream, every kind of entry
    mixed_load(primary, 2)
    status = wait_caught_up(primary, standby)
    assert status["node"] == node and status["replication"]["snapshot"] is None
    assert status["log_first_seq"] == primary.status()["log_first_seq"]
    primary.stop()
    standby.stop()
    assert digest(primary) == digest(standby)


def test_a_standby_that_fell_far_behind_catches_up_through_a_snapshot(server_factory):
    primary = server_factory(config=CONFIG, args=("--replication-port", "0"))
    standby = server_factory(config=CONFIG, args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    mixed_load(primary, 1)
    wait_caught_up(primary, standby)
    node = standby.status()["node"]
    assert "sending a snapshot" not in primary.stderr_text()  # it kept up: entries only
    standby.stop()
    load(primary, 2)  # 1000 entries, far more than the 200 kept
    mixed_load(primary, 1)
    again = server_factory(config=CONFIG, data=standby.data, args=standby.args)
    status = wait_caught_up(primary, again)
    assert status["node"] == node
    assert "installed the snapshot" in again.stderr_text()
    primary.stop()
    again.stop()
    assert digest(primary) == digest(again)


def test_a_standby_cut_and_killed_mid_snapshot_retries_cleanly(server_factory):
    from ingest.replication.primary import SNAPSHOT_CHUNK_BYTES

    primary = server_factory(config=CONFIG, args=("--replication-port", "0"))
    load(primary, 14)  # a copy of several chunks
    proxy = Proxy(replication_port(primary))
    try:
        # each connection's stream is held after a chunk and a half: the
        # standby has part of the snapshot on disk, and no more comes
        proxy.hold_after_bytes = SNAPSHOT_CHUNK_BYTES * 3 // 2
        standby = server_factory(config=CONFIG, args=("--follow", f"127.0.0.1:{proxy.port}"))
        incoming = standby.data / SNAPSHOT_IN

        def partial() -> bool:
            # The standby counts a chunk in its status only after the chunk's
            # write has returned on its writer thread: the file shows the
            # bytes a moment before the status does, and a status read in
            # that moment says 0 received. So the status first; the file,
            # looked at after it, holds at least what the status counted.
            snap = standby.status()["replication"]["snapshot"]
            return (snap is not None and snap["bytes_received"] >= SNAPSHOT_CHUNK_BYTES
                    and incoming.exists() and incoming.stat().st_size >= SNAPSHOT_CHUNK_BYTES)

        wait_for(partial, "part of a snapshot on disk")
        snap = standby.status()["replication"]["snapshot"]
        assert 0 < snap["bytes_received"] < snap["bytes_total"]
        # Only a reconnect logged after the cut proves the old connection
        # ended, its partial file and status gone (both before that line).
        reconnects = standby.stderr_text().count("reconnecting")
        proxy.cut_all()  # a cut mid-snapshot: it starts over on a new connection
        wait_for(lambda: standby.stderr_text().count("reconnecting") > reconnects, "a reconnect")
        wait_for(partial, "part of a snapshot on disk again")
        assert standby.last_seq() == 0  # nothing half-installed
        standby.kill()
        assert incoming.exists()  # the killed process left its partial file
        # what a SIGKILL mid-snapshot leaves: the old (empty) store, whole
        store = Store(str(standby.data), map_bytes_initial=64 << 20)
        try:
            assert store.last_seq == 0 and not incoming.exists()  # the leftover is removed at open
        finally:
            store.close()
        proxy.hold_after_bytes = None
        proxy.released.set()
        proxy.cut_all()
        again = server_factory(config=CONFIG, data=standby.data, args=standby.args)
        wait_caught_up(primary, again)
        load(primary, 1)
        wait_caught_up(primary, again)
        primary.stop()
        again.stop()
        assert digest(primary) == digest(again)
        assert not any(name.startswith("snapshot-") for name in os.listdir(primary.data))
    finally:
        proxy.released.set()
        proxy.close()
