"""Change-log retention and snapshots at the store level: trimming in
bounded steps, a hot copy taken beside writes, and installing a copy (checked,
given this node's identity, swapped atomically)."""
import hashlib
import os

import pytest

from ingest import rules
from ingest.events import BindingEvent
from ingest.store import SNAPSHOT_IN, TRIM_STEP, Store
from ingest.store_errors import StoreClosed, StoreError

NOW = 1_700_000_000_000
MAP = 8 << 20  # the whole map is allocated on disk: keep test stores small


def store(path, **kw):
    return Store(str(path), map_bytes_initial=MAP, **kw)


def many(n, start=0):
    return [BindingEvent(f"e{i}", "S1", "D1", f"T{i // 10:08d}", f"P{i:016d}", 10, NOW) for i in range(start, start + n)]


def write(store, events):
    return store.write(lambda tx: [rules.apply_binding(tx, e, "LAB", 0) for e in events])


def take_snapshot(primary, path):
    """A hot copy of `primary` at `path`: (last_seq, size, sha256)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        last_seq = primary.snapshot(fd)
    finally:
        os.close(fd)
    data = open(path, "rb").read()
    return last_seq, len(data), hashlib.sha256(data).hexdigest()


def log_seqs(store):
    return [seq for seq, _ in store.log_raw(0, 10**6)]


def test_retention_keeps_the_newest_entries(tmp_path):
    s = store(tmp_path / "d", log_keep=50)
    try:
        for i in range(6):
            write(s, many(40, start=i * 40))
            assert log_seqs(s) == list(range(max(1, s.last_seq - 49), s.last_seq + 1))
            assert s.log_start == log_seqs(s)[0]
        assert s.last_seq == 240 and s.log_start == 191
    finally:
        s.close()


def test_retention_catches_up_in_bounded_steps(tmp_path):
    path = tmp_path / "d"
    s = store(path)
    write(s, many(3 * TRIM_STEP))
    s.close()
    s = store(path, log_keep=10)  # a store from before retention, or a lowered setting
    try:
        assert s.log_start == 1
        write(s, many(5, start=10**6))  # appends 5: deletes at most 5 + TRIM_STEP
        assert s.log_start == 5 + TRIM_STEP + 1
        for _ in range(3):
            write(s, many(1, start=2 * 10**6 + s.last_seq))
        assert log_seqs(s) == list(range(s.last_seq - 9, s.last_seq + 1))
    finally:
        s.close()


def test_snapshot_installs_as_the_same_state_with_its_own_identity(tmp_path):
    # Same retention on both, as one config gives them: the digest covers the log.
    primary = store(tmp_path / "p", log_keep=100)
    standby = store(tmp_path / "s", log_keep=100)
    try:
        write(primary, many(300))
        primary.set_epoch(3)
        write(standby, many(7, start=10**6))  # whatever it had is replaced
        node = standby.node
        incoming = os.path.join(standby.path, SNAPSHOT_IN)
        last_seq, size, sha = take_snapshot(primary, incoming)
        write(primary, many(5, start=300))  # after the copy: not in it
        assert last_seq == 300
        standby.install_snapshot(incoming, last_seq, size, sha)
        assert not os.path.exists(incoming)
        assert (standby.node, standby.epoch, standby.last_seq, standby.log_start) == (node, 3, 300, 201)
        assert standby.event("e299").seq == 300 and standby.event(f"e{10**6}") is None
        standby.apply_log(primary.log_raw(300, 10), 0)
        assert standby.digest() == primary.digest()
        standby.close()
        standby = store(standby.path)  # and it is durable
        assert (standby.node, standby.last_seq) == (node, 305)
        assert standby.digest() == primary.digest()
    finally:
        primary.close()
        standby.close()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not_lmdb", "wrong_seq", "other_time_zone"])
def test_a_bad_snapshot_is_refused_and_the_store_kept(tmp_path, damage):
    # other_time_zone: a whole store, counting statistics in another zone (the
    # hello refuses such a standby first; this is the store's own check, for a
    # primary too old to compare zones).
    primary = store(tmp_path / "p", time_zone="Asia/Shanghai" if damage == "other_time_zone" else "UTC")
    standby = store(tmp_path / "s")
    try:
        write(primary, many(100))
        write(standby, many(3, start=10**6))
        before = standby.digest()
        incoming = os.path.join(standby.path, SNAPSHOT_IN)
        last_seq, size, sha = take_snapshot(primary, incoming)
        with open(incoming, "r+b") as f:
            if damage == "truncated":
                f.truncate(size // 3)
            elif damage == "flipped":
                f.seek(size // 2)
                byte = f.read(1)
                f.seek(size // 2)
                f.write(bytes([byte[0] ^ 1]))
            elif damage == "not_lmdb":  # bytes as sent, but no store: a foreign peer
                f.write(b"\xff" * size)
                f.seek(0)
                sha = hashlib.sha256(f.read()).hexdigest()
        with pytest.raises(StoreError, match="time zone 'Asia/Shanghai'" if damage == "other_time_zone" else None):
            standby.install_snapshot(incoming, last_seq + (damage == "wrong_seq"), size, sha)
        assert standby.digest() == before and standby.last_seq == 3
        write(standby, many(1, start=2 * 10**6))  # and it still takes writes
    finally:
        primary.close()
        standby.close()


def test_a_store_that_cannot_open_again_after_the_swap_says_so(tmp_path):
    # The old file is gone once the rename is done: a failed open (no disk
    # for the map, no descriptors) leaves nothing to serve from, and must
    # say so instead of failing every later read with "closed object".
    primary = store(tmp_path / "p")
    standby = store(tmp_path / "s")
    try:
        write(primary, many(50))
        incoming = os.path.join(standby.path, SNAPSHOT_IN)
        last_seq, size, sha = take_snapshot(primary, incoming)

        def no_disk():
            raise OSError(28, "No space left on device")

        standby._open = no_disk
        with pytest.raises(StoreClosed, match="No space left"):
            standby.install_snapshot(incoming, last_seq, size, sha)
        assert "after installing a snapshot" in standby.closed_because
        standby.close()  # closing what is closed: no error, the lock released
        standby = store(standby.path)  # the restart opens the new file, whole
        assert standby.digest() == primary.digest() and standby.closed_because == ""
    finally:
        primary.close()
        standby.close()


def test_leftovers_of_a_killed_transfer_are_removed_at_open(tmp_path):
    path = tmp_path / "d"
    store(path).close()
    (path / SNAPSHOT_IN).write_bytes(b"half a snapshot")
    (path / "snapshot-out-1234.mdb").write_bytes(b"half a copy")
    store(path).close()
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]
