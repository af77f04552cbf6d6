"""The LMDB store: the environment, its write path (group commits through
`write`, the map's growth, log retention), replication's hooks (epoch,
fence, the log, snapshots) and the reads the HTTP API serves.

The key layout is keys.py; the write transaction the rules run in,
writetx.py; opening and locking the data directory, datadir.py. Only one
thread writes (the committer); readers may run on any thread.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import lmdb

from ingest import records
from ingest.datadir import FILE_MODE, is_new, lock_directory, make_directory, unlock_directory
from ingest.keys import (EPOCH, FENCED, FOLLOWS, FORMAT, FORMAT_VERSION, LAST_SEQ, NODE, TABLES, TELL, TIME_ZONE,
                         HourLabels, first_seq, seq_key)
from ingest.outcomes import Rejected
from ingest.readview import ReadView
from ingest.records import Box, EventRecord, LogEntry, Member, PersonBinding, Tube
from ingest.store_errors import LogRefused, StoreClosed, StoreError, StoreFull
from ingest.writetx import WriteTx

T = TypeVar("T")

log = logging.getLogger("ingest.store")

# Log entries a write transaction may delete beyond the ones it appends, so
# that retention catches up in bounded steps (a lowered setting, or a store
# from before it) instead of in one long transaction that holds up ingest.
TRIM_STEP = 1000
# Files of a snapshot on its way, in the data directory (a store's own disk,
# so the final rename is atomic). Whatever is left of them at open is the
# debris of a killed process: removed, never used.
SNAPSHOT_OUT_PREFIX = "snapshot-out-"
SNAPSHOT_IN = "snapshot-in.mdb"
CLOSE_WAIT_S = 120.0


def zone_mismatch(stored: str, configured: str) -> str:
    return (f"the store counts statistics in time zone {stored!r}, the config says stats.time_zone = "
            f"{configured!r}: set it back to {stored!r} (a store keeps the zone it was made with), or start "
            "on a new data directory")


class Store:
    def __init__(self, path: str, map_bytes_initial: int = 64 << 20, map_bytes_max: int = 1 << 40,
                 time_zone: str = "UTC", log_keep: int = 0):
        make_directory(path)
        self.path = path
        self.time_zone = time_zone
        self.hour_of = HourLabels(time_zone)
        self.map_bytes_initial = map_bytes_initial
        self.map_bytes_max = map_bytes_max
        # Change-log retention: keep the newest `log_keep` entries (0: all).
        # Trimmed inside write transactions (`_trim`), on every node alike.
        self.log_keep = log_keep
        self._data_file = os.path.join(path, "data.mdb")
        self._data_fd = -1
        # LMDB may only change the map size while this process has no open
        # transaction; every transaction passes this gate. A hot copy holds
        # a read transaction for its whole length without holding the gate
        # (that would stop ingest): it is counted, and growing waits for it.
        self._gate = threading.Lock()
        # One write transaction at a time, from its begin to the update of
        # last_seq after its commit. LMDB serializes write transactions, but
        # last_seq is read after begin and set after commit: a second writer
        # (the fence, a promotion, beside the committer) began between those
        # two and appended at seqs the log already held.
        self._writer = threading.Lock()
        self._copies = 0
        # Set when the store closed under the process (StoreClosed): why.
        self.closed_because = ""
        self._copies_done = threading.Condition(self._gate)
        # Before anything in the directory is touched: the debris below may
        # be a running process's snapshot on its way.
        self._lock_fd: int | None = lock_directory(path)
        try:
            for name in os.listdir(path):
                if name == SNAPSHOT_IN or name.startswith(SNAPSHOT_OUT_PREFIX):
                    os.unlink(os.path.join(path, name))
            self._open()
        except BaseException:
            self._unlock()
            raise

    def _open(self) -> None:
        # writemap: transactions write straight into the map and a commit is
        # one msync, instead of a malloc'd copy of every dirty page and a
        # pwrite per page; that halves the CPU of the commit path
        # (docs/benchmarks.md). Its hazard is a page of a sparse file that
        # cannot get a disk block: SIGBUS instead of ENOSPC. So every byte of
        # the map is allocated (fallocate) before LMDB may use it, and a
        # failed allocation is a clean StoreFull.
        # readahead off: access is random and the store outgrows RAM.
        # What is there is checked first, read-only: a writemap open already
        # grows the file to the map size, and a store that is not ours (or
        # of another format) must be refused as it was found.
        new = is_new(self.path)
        self.env = lmdb.open(
            self.path,
            map_size=self.map_bytes_initial,
            max_dbs=len(TABLES) + 4,
            sync=True,
            metasync=True,
            writemap=True,
            readahead=False,
            max_readers=512,
            mode=FILE_MODE,
        )
        # LMDB creates the file (a new one must be its own); nothing has been
        # written through the map yet when its blocks are allocated here.
        # Held open for the map's growth (_allocate): a growth must not need
        # a free descriptor when thousands of connections hold them all.
        try:
            self._data_fd = os.open(self._data_file, os.O_RDWR)
        except BaseException:
            self.env.close()
            raise
        try:
            self._allocate(self.env.info()["map_size"])
            self._load(new)
        except BaseException:
            self._close_env()
            raise
        self._clear_dead_readers()

    def reader_check(self) -> int:
        """Free the reader slots of processes that died with a read
        transaction open; how many. Called at open and every few seconds by
        the server's tick."""
        with self._gate:
            return self._clear_dead_readers()

    def _clear_dead_readers(self) -> int:
        # An `ingest export` killed under way (SIGKILL, the OOM killer, a
        # lost ssh session's SIGHUP) leaves its slot in lock.mdb with its old
        # snapshot; LMDB then reuses no page freed after it, and the store
        # grows by every page every commit copies until the disk is full.
        # LMDB frees such slots only when asked (mdb_reader_check).
        cleared = self.env.reader_check()
        if cleared:
            log.warning("freed %d reader slot(s) of processes that died reading the store (an export or tail "
                        "killed under way?); pages they held may be reused again", cleared)
        return cleared

    def _load(self, new: bool) -> None:
        # One transaction, not _read: a snapshot swap reopens with the gate
        # held. A new store gets its tables and format in it too, so that a
        # kill cannot leave tables without a format (refused at the next open).
        with self.env.begin(write=True) as txn:
            self.dbs = {name: self.env.open_db(name, txn=txn) for name in TABLES}
            meta = self.dbs[b"meta"]
            if new:
                txn.put(FORMAT, FORMAT_VERSION.to_bytes(4, "big"), db=meta)
            if txn.get(NODE, db=meta) is None:
                txn.put(NODE, os.urandom(8).hex().encode(), db=meta)
            zone = txn.get(TIME_ZONE, db=meta)
            if zone is None:  # a new store, or one made before the zone was kept
                txn.put(TIME_ZONE, self.time_zone.encode(), db=meta)
            elif bytes(zone).decode() != self.time_zone:
                raise StoreError(zone_mismatch(bytes(zone).decode(), self.time_zone))
            raw = txn.get(LAST_SEQ, db=meta)
            self.last_seq = 0 if raw is None else int.from_bytes(raw, "big")
            self.node = bytes(txn.get(NODE, db=meta)).decode()
            raw = txn.get(EPOCH, db=meta)
            self.epoch = 0 if raw is None else int.from_bytes(raw, "big")
            raw = txn.get(FENCED, db=meta)
            self.fenced_at = 0 if raw is None else int.from_bytes(raw, "big")
            raw = txn.get(FOLLOWS, db=meta)
            self.follows = "" if raw is None else bytes(raw).decode()
            raw = txn.get(TELL, db=meta)
            self.tell = "" if raw is None else bytes(raw).decode()
            self.log_start = first_seq(txn, self.dbs)

    def close(self) -> None:
        # A write under way (a fence stored on an executor thread at
        # shutdown, say) commits first: closing under its transaction would
        # crash the process or lose the write.
        with self._writer, self._gate:
            # A hot copy's transaction must end before the environment does.
            if not self._copies_done.wait_for(lambda: self._copies == 0, timeout=CLOSE_WAIT_S):
                return  # the process is exiting; closing under the copy would crash it
            self._close_env()
            self._unlock()  # after the environment: no write may follow the next opener's

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            unlock_directory(self.path, self._lock_fd)
            self._lock_fd = None

    # -- writing ------------------------------------------------------------

    def write(self, fn: Callable[[WriteTx], T], at_ms: int | None = None) -> T:
        """Run `fn` in one write transaction and commit it durably.

        `fn` must be a pure function of the store it is given (it may be run
        again after the map grows). Raises StoreFull or StoreError, in which
        case nothing was written.
        """
        with self._writer:
            return self._write(fn, at_ms)

    def _write(self, fn: Callable[[WriteTx], T], at_ms: int | None) -> T:
        while True:
            with self._gate:
                txn = self.env.begin(write=True)
            tx = WriteTx(txn, self.dbs, self.last_seq, self.hour_of,
                         int(time.time() * 1000) if at_ms is None else at_ms)
            try:
                result = fn(tx)
                tx.flush()
                if tx.seq != self.last_seq:
                    txn.put(LAST_SEQ, seq_key(tx.seq), db=self.dbs[b"meta"])
                log_start = self._trim(txn, tx.seq, tx.seq - self.last_seq) if self.log_keep else None
                txn.commit()  # fsync here; py-lmdb releases the GIL meanwhile
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
                continue
            except lmdb.DiskError as exc:
                txn.abort()
                raise StoreFull(f"disk: {exc}") from None
            except lmdb.Error as exc:
                txn.abort()
                raise StoreError(str(exc)) from None
            except BaseException:
                txn.abort()
                raise
            self.last_seq = tx.seq
            if log_start is not None:
                self.log_start = log_start
            return result

    def _trim(self, txn: lmdb.Transaction, last_seq: int, appended: int) -> int:
        """Delete the oldest log entries beyond the newest `log_keep`, at most
        `appended + TRIM_STEP` of them; returns the oldest seq left."""
        if last_seq <= self.log_keep:
            return first_seq(txn, self.dbs)
        cutoff = seq_key(last_seq - self.log_keep)  # delete keys <= this
        budget = appended + TRIM_STEP
        cur = txn.cursor(db=self.dbs[b"log"])
        if cur.first():
            while budget > 0 and cur.key() <= cutoff:
                budget -= 1
                if not cur.delete():  # deletes and moves to the next; False once empty
                    break
        return first_seq(txn, self.dbs)

    def _allocate(self, size: int) -> None:
        """Give data.mdb real disk blocks up to `size` bytes, or raise StoreFull."""
        try:
            os.posix_fallocate(self._data_fd, 0, size)
        except OSError as exc:
            raise StoreFull(f"cannot allocate {size} bytes for {self._data_file}: {exc.strerror}") from None

    def _close_env(self) -> None:
        self.env.close()  # closing a closed environment is nothing
        if self._data_fd >= 0:
            os.close(self._data_fd)
            self._data_fd = -1  # a second close would close whatever reused the number

    def set_epoch(self, epoch: int) -> None:
        """Store a higher epoch durably: on promotion, or adopted from the
        primary this node follows. Either way the node is no longer fenced."""
        if epoch <= self.epoch and not self.fenced_at:
            return
        meta = self.dbs[b"meta"]

        def put(tx: WriteTx) -> None:
            tx.txn.put(EPOCH, max(epoch, self.epoch).to_bytes(8, "big"), db=meta)
            tx.txn.delete(FENCED, db=meta)

        self.write(put)
        self.epoch = max(self.epoch, epoch)
        self.fenced_at = 0

    def promote(self, epoch: int, followed: str) -> None:
        """Store a promotion durably: the higher epoch, no fence, no longer a
        standby, and (when it followed one) the former primary to tell of
        the epoch until it answers that it knows (`told`)."""
        meta = self.dbs[b"meta"]

        def put(tx: WriteTx) -> None:
            tx.txn.put(EPOCH, max(epoch, self.epoch).to_bytes(8, "big"), db=meta)
            tx.txn.delete(FENCED, db=meta)
            tx.txn.delete(FOLLOWS, db=meta)
            if followed:
                tx.txn.put(TELL, followed.encode(), db=meta)
            else:
                tx.txn.delete(TELL, db=meta)

        self.write(put)
        self.epoch, self.fenced_at, self.follows, self.tell = max(epoch, self.epoch), 0, "", followed

    def told(self) -> None:
        """The former primary knows this node's epoch: stop telling it, after a restart too."""
        if self.tell:
            self.write(lambda tx: tx.txn.delete(TELL, db=self.dbs[b"meta"]))
            self.tell = ""

    def mark_follows(self, address: str) -> None:
        """This node is a standby of `address`, until promoted."""
        if self.follows != address:
            self.write(lambda tx: tx.txn.put(FOLLOWS, address.encode(), db=self.dbs[b"meta"]))
            self.follows = address

    def fence(self, epoch: int) -> None:
        """This node led an older epoch and `epoch` exists now: keep that
        durably (the node must not take writes after a restart either). Its
        own epoch stays the one its history belongs to; a promotion of it
        goes above both."""
        if epoch <= self.fenced_at:
            return
        meta = self.dbs[b"meta"]
        self.write(lambda tx: tx.txn.put(FENCED, epoch.to_bytes(8, "big"), db=meta))
        self.fenced_at = epoch

    def apply_log(self, entries: list[tuple[int, bytes]], window_ms: int) -> int:
        """A standby's write: apply a contiguous run of the primary's log
        entries in one durable transaction. Returns the last seq applied."""
        from ingest import changelog

        def apply_all(tx: WriteTx) -> None:
            for seq, raw in entries:
                if seq != tx.seq + 1:
                    raise StoreError(f"log gap: expected {tx.seq + 1}, got {seq}")
                entry = records.decode_log_entry(raw)
                outcome = changelog.apply_entry(tx, entry, window_ms)
                if tx.seq != seq:
                    # Skipping it would leave this node one seq short and its
                    # state apart from the primary's, silently.
                    why = f"{outcome.error.code}: {outcome.message}" if isinstance(outcome, Rejected) else repr(outcome)
                    raise LogRefused(f"log entry {seq} ({entry.kind}) is refused here ({why}); the primary "
                                     "accepted it: this node's [rules] differ from the primary's")

        self.write(apply_all)
        return self.last_seq

    def tip(self, seq: int) -> bytes | None:
        """A digest of the log entry at `seq`; None when the log does not hold
        it (seq 0, or trimmed). A standby sends its own in HELLO, the primary
        compares it with its entry there (replication.protocol.history_refusal):
        an entry holds its commit time and payload, so two histories that
        forked do not share one at the same seq."""
        if seq <= 0:
            return None
        raw = self._read(lambda txn: txn.get(seq_key(seq), db=self.dbs[b"log"]))
        return None if raw is None else hashlib.blake2b(raw, digest_size=16).digest()

    def log_raw(self, after: int, limit: int = 1000, bytes_max: int = 4 << 20) -> list[tuple[int, bytes]]:
        """Stored log entries after `after`, as bytes, for streaming."""
        def scan(txn: lmdb.Transaction) -> list[tuple[int, bytes]]:
            out, size = [], 0
            cur = txn.cursor(db=self.dbs[b"log"])
            if cur.set_range(seq_key(after + 1)):
                for key, value in cur:
                    out.append((int.from_bytes(key, "big"), value))
                    size += len(value)
                    if len(out) >= limit or size >= bytes_max:
                        break
            return out

        return self._read(scan)

    def _grow(self) -> None:
        if self.reader_check():
            return  # pages a dead reader held may be reused: try the write again first
        size = self.env.info()["map_size"]
        if size >= self.map_bytes_max:
            raise StoreFull(f"map is at store.map_bytes_max ({self.map_bytes_max} bytes)")
        new = min(size * 2, self.map_bytes_max)
        self._allocate(new)
        with self._gate:
            # Writes wait here for a running hot copy: rare (the map doubles)
            # and the alternative, resizing under its transaction, is
            # undefined behaviour in LMDB.
            self._copies_done.wait_for(lambda: self._copies == 0)
            self.env.set_mapsize(new)

    # -- snapshots (a standby too far behind for the retained log) ----------

    def snapshot(self, fd: int) -> int:
        """Write a compacted hot copy of the store to `fd` (LMDB's own copy,
        consistent as of one read transaction); returns that copy's last_seq.

        Runs beside ingest: the copy holds a read transaction, not the gate,
        and py-lmdb releases the GIL while it copies. Call it off the loop."""
        with self._gate:
            txn = self.env.begin(buffers=False)
            self._copies += 1
        try:
            raw = txn.get(LAST_SEQ, db=self.dbs[b"meta"])
            try:
                self.env.copyfd(fd, compact=True, txn=txn)
            except lmdb.Error:
                # LMDB refuses to compact a store that leaked a page; a
                # plain copy of the same transaction is as good, only larger.
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                self.env.copyfd(fd, compact=False, txn=txn)
            os.fsync(fd)
            return 0 if raw is None else int.from_bytes(raw, "big")
        finally:
            txn.abort()
            with self._gate:
                self._copies -= 1
                self._copies_done.notify_all()

    def install_snapshot(self, path: str, last_seq: int, size: int, sha256: str) -> None:
        """Make the received copy at `path` this store, atomically.

        The copy is checked (the bytes the primary sent, as they are on this
        disk; then an LMDB file of our format whose last_seq is the announced
        one) and given this node's identity and the higher of the two epochs
        *before* it is renamed over data.mdb: a process killed at any point
        leaves either the old store or the whole new one, never a mixture and
        never a store that thinks it is the primary. Writer thread only;
        reads wait at the gate for the moment of the swap."""
        # Bytes first: LMDB maps the file, and a short one is a SIGBUS, not
        # an error.
        h = hashlib.sha256()
        got = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                got += len(chunk)
        if got != size or h.hexdigest() != sha256:
            raise StoreError(f"snapshot: {got} bytes on disk with sha256 {h.hexdigest()}, sent {size} with {sha256}")
        try:
            check = lmdb.open(path, subdir=False, lock=False, max_dbs=len(TABLES) + 4, sync=True, metasync=True)
        except lmdb.Error as exc:
            raise StoreError(f"snapshot: not a usable store: {exc}") from None
        try:
            meta = check.open_db(b"meta", create=False)
            with check.begin(write=True, db=meta) as txn:
                fmt = txn.get(FORMAT)
                if fmt is None or int.from_bytes(fmt, "big") != FORMAT_VERSION:
                    raise StoreError(f"snapshot: store format {fmt!r}, this build reads {FORMAT_VERSION}")
                raw = txn.get(LAST_SEQ)
                if (0 if raw is None else int.from_bytes(raw, "big")) != last_seq:
                    raise StoreError(f"snapshot: holds last_seq {raw!r}, announced {last_seq}")
                for name in TABLES:
                    check.open_db(name, txn=txn, create=False)  # every table is there
                raw = txn.get(EPOCH)
                if self.epoch > (0 if raw is None else int.from_bytes(raw, "big")):
                    txn.put(EPOCH, self.epoch.to_bytes(8, "big"))  # never forget a higher epoch
                zone = txn.get(TIME_ZONE)
                if zone is not None and bytes(zone).decode() != self.time_zone:
                    raise StoreError(f"snapshot: {zone_mismatch(bytes(zone).decode(), self.time_zone)}")
                txn.put(TIME_ZONE, self.time_zone.encode())
                txn.put(NODE, self.node.encode())
                txn.delete(FENCED)  # a node that installs a snapshot follows
                # and is a standby (the primary's own role marks are not its)
                txn.delete(TELL)
                if self.follows:
                    txn.put(FOLLOWS, self.follows.encode())
                else:
                    txn.delete(FOLLOWS)
            check.sync(True)
        except lmdb.Error as exc:
            raise StoreError(f"snapshot: not a usable store: {exc}") from None
        finally:
            check.close()
        with self._gate:
            self._copies_done.wait_for(lambda: self._copies == 0)
            self._close_env()
            os.replace(path, self._data_file)
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself is durable
            finally:
                os.close(dir_fd)
            # Still inside the gate: no read may meet the closed environment.
            try:
                self._open()
            except BaseException as exc:
                # Nothing to fall back to: the old file is gone. Say so once,
                # here; the server stops on it (server.Server._tick_once).
                self.closed_because = f"could not open it again after installing a snapshot: {exc}"
                raise StoreClosed(self.closed_because) from exc

    # -- reading ------------------------------------------------------------

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        with self._gate:
            with self.env.begin(buffers=False) as txn:
                return fn(txn)

    @contextmanager
    def view(self) -> Iterator[ReadView]:
        """Committed state as of one read transaction (readview.py): the
        reads of one answer agree with each other. Keep it short: it holds
        the gate, as every read does."""
        with self._gate:
            with self.env.begin(buffers=False) as txn:
                yield ReadView(txn, self.dbs)

    # One read each, for callers that need no more than one.

    def tube(self, code: str) -> tuple[Tube, list[Member]] | None:
        with self.view() as v:
            return v.tube(code)

    def box(self, code: str) -> Box | None:
        with self.view() as v:
            return v.box(code)

    def stats(self, scope: str) -> dict[str, list[int]]:
        with self.view() as v:
            return v.stats(scope)

    def person(self, code: str) -> list[PersonBinding]:
        with self.view() as v:
            return v.person(code)

    def event(self, event_id: str) -> EventRecord | None:
        with self.view() as v:
            return v.event(event_id)

    def log(self, after: int = 0, limit: int = 1000) -> list[tuple[int, LogEntry]]:
        def scan(txn: lmdb.Transaction) -> list[tuple[int, LogEntry]]:
            out = []
            cur = txn.cursor(db=self.dbs[b"log"])
            if cur.set_range(seq_key(after + 1)):
                for key, value in cur:
                    out.append((int.from_bytes(key, "big"), records.decode_log_entry(value)))
                    if len(out) >= limit:
                        break
            return out

        return self._read(scan)

    def digest(self) -> str:
        """SHA-256 over every table's keys and values, in key order.

        Two stores with the same digest hold the same state (used to prove a
        replay or a standby equals the primary).
        """
        def scan(txn: lmdb.Transaction) -> str:
            h = hashlib.sha256()
            for name in TABLES:
                h.update(b"\x00table\x00" + name)
                for key, value in txn.cursor(db=self.dbs[name]):
                    if name == b"meta" and key in (NODE, FENCED, FOLLOWS, TELL):
                        # identity, not state: differs on every node; and
                        # what the node heard of others and its role (a
                        # standby may store a fence and still equal its
                        # primary)
                        continue
                    h.update(len(key).to_bytes(4, "big") + key)
                    h.update(len(value).to_bytes(4, "big") + value)
            return h.hexdigest()

        return self._read(scan)

    def sizes(self) -> dict[str, int]:
        """Bytes in use, bytes mapped, and entries per table (for /metrics)."""
        out = {}

        def counts(txn: lmdb.Transaction) -> None:
            # Inside the gate: a snapshot swap closes the environment.
            info = self.env.info()
            out["used_bytes"] = (info["last_pgno"] + 1) * self.env.stat()["psize"]
            out["map_bytes"] = info["map_size"]
            for name in TABLES:
                out[f"entries_{name.decode()}"] = txn.stat(self.dbs[name])["entries"]
        self._read(counts)
        return out

    def iter_log(self, after: int = 0) -> Iterator[tuple[int, LogEntry]]:
        while True:
            chunk = self.log(after, 1000)
            if not chunk:
                return
            yield from chunk
            after = chunk[-1][0]
