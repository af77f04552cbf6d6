"""Store limits: the map grows when full, and past its maximum a write fails
cleanly (StoreFull, nothing written) instead of crashing."""
import threading

import pytest

from ingest import rules
from ingest.events import BindingEvent
from ingest.readview import ReadView
from ingest.records import TUBES_RECEIVED
from ingest.store import Store
from ingest.store_errors import StoreError, StoreFull

NOW = 1_700_000_000_000


def many(n, start=0):
    return [BindingEvent(f"e{i}", "S1", "D1", f"T{i // 10:08d}", f"P{i:016d}", 10, NOW) for i in range(start, start + n)]


def write(store, events):
    return store.write(lambda tx: [rules.apply_binding(tx, e, "LAB", 0) for e in events])


def test_map_grows_when_full(tmp_path):
    s = Store(str(tmp_path / "d"), map_bytes_initial=64 * 1024, map_bytes_max=64 << 20)
    try:
        write(s, many(2000))
        assert s.env.info()["map_size"] > 64 * 1024
        assert s.last_seq == 2000
    finally:
        s.close()


def test_full_store_refuses_and_keeps_what_it_had(tmp_path):
    s = Store(str(tmp_path / "d"), map_bytes_initial=256 * 1024, map_bytes_max=256 * 1024)
    try:
        digest, seq = s.digest(), s.last_seq
        with pytest.raises(StoreFull):
            for i in range(100):  # far more than 256 KiB holds
                write(s, many(200, start=i * 200))
                digest, seq = s.digest(), s.last_seq
        assert seq > 0
        # the refused write left nothing behind, and the store still serves
        assert s.digest() == digest
        assert s.last_seq == seq
        assert s.event("e0").seq == 1
    finally:
        s.close()


def test_reopen_keeps_last_seq_and_state(tmp_path):
    path = str(tmp_path / "d")
    s = Store(path)
    write(s, many(25))
    digest = s.digest()
    s.close()
    s = Store(path)
    try:
        assert s.last_seq == 25
        assert s.digest() == digest
        head, members = s.tube("T00000001")
        assert head.count == 10 and [m.seq for m in members] == list(range(11, 21))
    finally:
        s.close()


def test_a_second_writer_thread_never_rewinds_the_log(tmp_path):
    """The committer writes groups while another thread writes meta (the
    fence, a promotion): every group's log entries must stay at their seqs.
    A write began between another's commit and its update of last_seq once
    appended at seqs the log held, and an acknowledged entry was lost."""
    s = Store(str(tmp_path / "d"), map_bytes_initial=16 << 20)
    stop = threading.Event()
    groups = 300

    def committer():
        for g in range(groups):
            write(s, many(3, start=3 * g))
        stop.set()

    def meta_writer():
        epoch = 0
        while not stop.is_set():
            epoch += 1
            s.fence(epoch)

    threads = [threading.Thread(target=committer), threading.Thread(target=meta_writer)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert s.last_seq == 3 * groups
        logged = s.log_raw(0, limit=10 * groups)
        assert [seq for seq, _ in logged] == list(range(1, 3 * groups + 1))
        assert all(s.event(f"e{i}") is not None for i in range(3 * groups))
    finally:
        stop.set()
        s.close()


def test_an_append_onto_an_existing_log_entry_fails_the_write(tmp_path):
    s = Store(str(tmp_path / "d"), map_bytes_initial=16 << 20)
    try:
        write(s, many(5))
        s.last_seq = 2  # what the race left: a stale in-memory seq
        with pytest.raises(StoreError, match="exists already"):
            write(s, many(1, start=100))
        s.last_seq = 5
        assert [seq for seq, _ in s.log_raw(0)] == [1, 2, 3, 4, 5] and s.event("e100") is None
    finally:
        s.close()


def test_a_view_reads_one_committed_state(tmp_path):
    """Every read through one view sees the same commit, whatever lands
    meanwhile: the GETs that read several records answer from one view."""
    s = Store(str(tmp_path / "d"))
    try:
        write(s, many(5))
        txn = s.env.begin(buffers=False)
        try:
            view = ReadView(txn, s.dbs)
            write(s, many(3, start=5))  # three more people into the same tube
            head, members = view.tube("T00000000")
            assert (head.count, len(members)) == (5, 5)
            assert view.person(f"P{5:016d}") == []
            assert view.event("e5") is None
        finally:
            txn.abort()
        with s.view() as view:
            head, members = view.tube("T00000000")
            assert (head.count, len(members)) == (8, 8)
            assert [b.tube for b in view.person(f"P{5:016d}")] == ["T00000000"]
            assert view.event("e5").seq == 6
    finally:
        s.close()


def test_a_count_of_nothing_writes_no_statistics(tmp_path):
    # A box received with none of its tubes found added an all-zero hour row
    # to GET /v1/stats.
    s = Store(str(tmp_path / "d"))
    try:
        s.write(lambda tx: tx.count("S1", TUBES_RECEIVED, 0))
        assert s.stats("all") == {} and s.stats("site:S1") == {}
        s.write(lambda tx: tx.count("S1", TUBES_RECEIVED, 2))
        assert s.stats("all")["total"][TUBES_RECEIVED] == 2
    finally:
        s.close()


def test_close_waits_for_a_write_under_way(tmp_path):
    # At shutdown a fence could still be written on an executor thread;
    # closing the environment under its transaction would crash the process.
    path = str(tmp_path / "d")
    s = Store(path)
    inside, release = threading.Event(), threading.Event()

    def slow(tx):
        inside.set()
        assert release.wait(10)
        return rules.apply_binding(tx, many(1)[0], "LAB", 0)

    writer = threading.Thread(target=s.write, args=(slow,))
    writer.start()
    assert inside.wait(10)
    closer = threading.Thread(target=s.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # waiting for the write, not closing under it
    release.set()
    writer.join(10)
    closer.join(10)
    assert not closer.is_alive()
    s = Store(path)
    try:
        assert s.last_seq == 1 and s.event("e0").seq == 1
    finally:
        s.close()
