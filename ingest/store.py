"""The LMDB store: its key layout, the write transaction the rules run in,
and the reads the HTTP API serves.

Tables (LMDB named databases), described in docs/storage.md:

  meta     b"last_seq"      -> u64 big-endian, last change-log sequence
           b"format"        -> u32, store format version
           b"node", b"epoch", b"fenced"  -> replication identity (docs/storage.md)
  events   event_id (ascii) -> EventRecord   dedup memory of accepted events
  tubes    tube (ascii)     -> Tube          site, lab, pool size, state, count
  members  tube \0 u16 BE   -> Member        the tube's people, by position 1..
  persons  person (ascii)   -> [PersonBinding]  every tube a person was bound to
  boxes    box (utf-8)      -> Box           a box's tubes, hand-over, receipt
  results  tube \0 seq      -> Result        every result posted for a tube
  positives seq (u64 BE)    -> tube          positive/invalid results, in log order
  stats    scope \0 hour    -> [int] counters (records.STAT_FIELDS); scope "all" or
                               "site:<id>", hour "YYYY-MM-DDTHH" (server time) or "total"
  log      seq (u64 BE)     -> LogEntry      the ordered change log; with retention
                               (log_keep) only its newest entries

Every change goes into `log` in the same transaction as the change itself, so
the log and the tables can never disagree. Only one thread writes (the
committer); readers may run on any thread.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo
from collections.abc import Callable, Iterator
from typing import TypeVar

import lmdb

from ingest import records
from ingest.records import Box, EventRecord, LogEntry, Member, PersonBinding, Result, Tube

# 2: tube heads apart from their members (the first layout kept them inline).
# 3: voids and seals (Tube.slots/sealed_seq, voided_seq, EventRecord.kind).
# 4: boxes, results, positives.
# 5: statistics; LogEntry.at_ms.
FORMAT_VERSION = 5
TABLES = (b"meta", b"events", b"tubes", b"members", b"persons", b"boxes", b"results", b"positives", b"stats",
          b"log")
_LAST_SEQ = b"last_seq"
_FORMAT = b"format"
# This node's identity (random, made once) and the highest epoch it knows:
# replication refuses to follow itself or a primary of an older epoch.
_NODE = b"node"
_EPOCH = b"epoch"
# Present while this node is a primary replaced by a higher epoch (value: that
# epoch): it must take no writes, after a restart too, until promoted again.
_FENCED = b"fenced"

T = TypeVar("T")

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
# One process per data directory: LMDB does not stop a second writer, and
# with writemap the second one's open truncates data.mdb to its own map size
# under the first (SIGBUS on its next write). The lock is an flock on this
# file, which holds the holder's pid for the refusal message.
LOCK_FILE = "ingest.lock"


def seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


# A member's position is two bytes of its key: a tube takes at most this many
# bindings, voided ones included (rules refuse the next with tube_full).
MEMBER_POSITION_MAX = 0xFFFF


def member_key(tube: str, position: int) -> bytes:
    # Codes are [0-9A-Z], so the NUL separator keeps tube "10" from
    # sharing a key range with tube "101".
    return tube.encode() + b"\x00" + position.to_bytes(2, "big")


class HourLabels:
    """Unix ms -> local hour label "YYYY-MM-DDTHH" in one time zone. Offsets
    are whole quarter hours, so the label is cached per UTC quarter hour."""

    def __init__(self, zone: str = "UTC"):
        self._zone = ZoneInfo(zone)
        self._cache: dict[int, str] = {}

    def __call__(self, at_ms: int) -> str:
        quarter = at_ms // 900_000
        label = self._cache.get(quarter)
        if label is None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            local = datetime.fromtimestamp(quarter * 900, timezone.utc).astimezone(self._zone)
            label = self._cache[quarter] = local.strftime("%Y-%m-%dT%H")
        return label


def stats_key(scope: str, bucket: str) -> bytes:
    return scope.encode() + b"\x00" + bucket.encode()


class StoreFull(Exception):
    """The map reached store.map_bytes_max, or the disk is full."""


class StoreError(Exception):
    """Any other failure of a write transaction; nothing was written. Also:
    a store refused at open (not ours, another format, in use)."""


class StoreInUse(StoreError):
    """Another process holds the data directory's lock."""


def _make_directory(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:  # what makedirs says of a file in the way
        raise StoreError(f"{path}: not a directory") from None


def _lock_holder(fd: int) -> str:
    raw = os.pread(fd, 32, 0).strip()
    return f"pid {int(raw)}" if raw.isdigit() else "pid unknown"


def _lock_directory(path: str, shared: bool = False) -> int | None:
    """Take the data directory's lock without waiting, or raise StoreInUse;
    returns the fd that holds it (closing it releases the lock).

    An flock belongs to the open file, so the kernel drops it when its
    process dies, SIGKILL included: no stale lock to clean up. Store removes
    the file at close (the directory holds only the store then), so a lock
    taken on a file no longer at its path is the previous holder's: taken
    again on the new one.

    `shared` is for a reader without LMDB's lock (StoreReader), which must
    not read beside a writer. It may not write, so it neither creates nor
    changes the file: None when there is none (no ingest process has the
    store open)."""
    lock_path = os.path.join(path, LOCK_FILE)
    while True:
        try:
            if shared:
                fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            if shared:
                return None
            raise
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            if _same_file(fd, lock_path):
                break
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise StoreInUse(f"data directory {path} is in use by another ingest process ({holder})") from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    if not shared:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def _unlock_directory(path: str, fd: int) -> None:
    """Release Store's lock: the file goes first, while it is still held."""
    try:
        os.unlink(os.path.join(path, LOCK_FILE))
    except OSError:
        pass  # left behind, as after a kill: the next opener takes it over
    os.close(fd)


def _check_format(env: lmdb.Environment, path: str) -> bool:
    """Whether `env` is new (no key at all: to be initialised). Raises
    StoreError unless it is an ingest store of this format. Reads only, so
    a store refused here is left as it was."""
    _check_complete(env, path)
    with env.begin() as txn:
        if not txn.cursor().first():
            return True
    try:
        meta = env.open_db(b"meta", create=False)
    except lmdb.Error:  # NotFoundError, or IncompatibleError: a plain key "meta"
        raise StoreError(f"{path}: not an ingest store (an LMDB environment without its meta table)") from None
    with env.begin(db=meta) as txn:
        fmt = txn.get(_FORMAT)
    if fmt is None:
        raise StoreError(f"{path}: not an ingest store (no format in its meta table)")
    if int.from_bytes(fmt, "big") != FORMAT_VERSION:
        raise StoreError(f"{path}: store format {int.from_bytes(fmt, 'big')}, this build reads {FORMAT_VERSION}")
    return False


def _check_complete(env: lmdb.Environment, path: str) -> None:
    """LMDB maps data.mdb and trusts it to hold every page its meta page
    names: in a truncated file (a partial copy, a full disk) the first read
    past the end is a SIGBUS that kills the process without a word. The meta
    pages are read with read(2) at open, so their last page number is known
    before any page is touched."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(os.path.join(path, "data.mdb"))
    if have < need:
        raise StoreError(f"{path}: data.mdb is truncated: {have} bytes, its pages need {need}")


def _first_seq(txn: lmdb.Transaction, dbs: dict) -> int:
    """The oldest seq still in the log (last_seq + 1 when it is empty)."""
    cur = txn.cursor(db=dbs[b"log"])
    if cur.first():
        return int.from_bytes(cur.key(), "big")
    raw = txn.get(_LAST_SEQ, db=dbs[b"meta"])
    return (0 if raw is None else int.from_bytes(raw, "big")) + 1


def _open_readonly(path: str, lock: bool) -> lmdb.Environment:
    # No writemap and no map size of ours: nothing is allocated, and
    # data.mdb is neither grown nor written.
    return lmdb.open(path, readonly=True, lock=lock, max_dbs=len(TABLES) + 4, readahead=False)


def _is_new(path: str) -> bool:
    """Whether there is no store yet (Store initialises one). Whatever is
    there is checked with a read-only open: StoreError unless it is an
    ingest store of this format."""
    data_file = os.path.join(path, "data.mdb")
    if not os.path.exists(data_file) or os.path.getsize(data_file) == 0:
        return True  # LMDB creates the file before its first page: a first open was killed
    # lock=False: the caller holds the directory's lock, no ingest process writes.
    env = _open_readonly(path, lock=False)
    try:
        return _check_format(env, path)
    finally:
        env.close()


class WriteTx:
    """The store as the rules see it inside one write transaction.

    `seq` is the last sequence number used, including by entries appended in
    this transaction. Lookups of an empty code answer "none" (here and in
    Store's reads): LMDB refuses an empty key with an error, and a client may
    send one where a code is only looked up (a result's tube, a box's tubes).
    """

    __slots__ = ("txn", "seq", "_events", "_tubes", "_members", "_persons", "_log", "_boxes", "_results",
                 "_positives", "_stats", "at_ms", "_hour", "_hour_of", "_counts")

    # One cursor per table, called with positional arguments only: a keyword
    # (`db=`, `append=`) makes py-lmdb build and parse a dict on every call,
    # which was a tenth of the binding apply (docs/benchmarks.md).

    def __init__(self, txn: lmdb.Transaction, dbs: dict[bytes, object], seq: int,
                 hour_of: HourLabels | None = None, at_ms: int = 0):
        self.txn = txn
        self.seq = seq
        self._stats = txn.cursor(dbs[b"stats"])
        self._hour_of = hour_of or HourLabels()
        # (scope, bucket) -> counter deltas, written once at the end (flush)
        self._counts: dict[tuple[str, str], list[int]] = {}
        self.set_time(at_ms)
        self._events = txn.cursor(dbs[b"events"])
        self._tubes = txn.cursor(dbs[b"tubes"])
        self._members = txn.cursor(dbs[b"members"])
        self._persons = txn.cursor(dbs[b"persons"])
        self._log = txn.cursor(dbs[b"log"])
        self._boxes = txn.cursor(dbs[b"boxes"])
        self._results = txn.cursor(dbs[b"results"])
        self._positives = txn.cursor(dbs[b"positives"])

    def set_time(self, at_ms: int) -> None:
        """The server time of what is applied next (a replay sets each entry's)."""
        self.at_ms = at_ms
        self._hour = self._hour_of(at_ms)

    def count(self, site: str, field: int, n: int = 1) -> None:
        """Add n to a statistics counter of `site` (and so of all sites), in
        this hour and in total. Kept in memory until flush: a commit of many
        events writes each counter record once."""
        key = (site, self._hour)
        deltas = self._counts.get(key)
        if deltas is None:
            deltas = self._counts[key] = [0] * len(records.STAT_FIELDS)
        deltas[field] += n

    def flush(self) -> None:
        """Add the counted deltas to the four records each touches:
        (site, hour), (site, total), (all, hour), (all, total)."""
        if not self._counts:
            return
        merged: dict[bytes, list[int]] = {}
        for (site, hour), deltas in self._counts.items():
            for key in (stats_key("site:" + site, hour), stats_key("site:" + site, "total"),
                        stats_key("all", hour), stats_key("all", "total")):
                have = merged.get(key)
                merged[key] = deltas[:] if have is None else [a + b for a, b in zip(have, deltas)]
        for key, deltas in merged.items():
            raw = self._stats.get(key)
            if raw is not None:
                have = records.decode_counts(raw)
                deltas = [a + b for a, b in zip(have + [0] * (len(deltas) - len(have)), deltas)]
            self._stats.put(key, records.encode(deltas))
        self._counts.clear()

    def box(self, code: str) -> Box | None:
        raw = self._boxes.get(code.encode()) if code else None
        return None if raw is None else records.decode_box(raw)

    def put_box(self, code: str, box: Box) -> None:
        self._boxes.put(code.encode(), records.encode(box))

    def put_result(self, tube: str, result: Result) -> None:
        self._results.put(tube.encode() + b"\x00" + seq_key(result.seq), records.encode(result))

    def put_positive(self, seq: int, tube: str) -> None:
        self._positives.put(seq_key(seq), tube.encode(), True, True, True)  # dupdata, overwrite, append

    def tube(self, code: str) -> Tube | None:
        raw = self._tubes.get(code.encode()) if code else None
        return None if raw is None else records.decode_tube(raw)

    def put_tube(self, code: str, tube: Tube) -> None:
        self._tubes.put(code.encode(), records.encode(tube))

    def member(self, tube: str, position: int) -> Member | None:
        raw = self._members.get(member_key(tube, position))
        return None if raw is None else records.decode_member(raw)

    def put_member(self, tube: str, position: int, member: Member) -> None:
        self._members.put(member_key(tube, position), records.encode(member))

    def person(self, code: str) -> list[PersonBinding]:
        raw = self._persons.get(code.encode()) if code else None
        return [] if raw is None else records.decode_person(raw)

    def put_person(self, code: str, bindings: list[PersonBinding]) -> None:
        self._persons.put(code.encode(), records.encode(bindings))

    def claim_event(self, event_id: str, record: EventRecord) -> EventRecord | None:
        """Store `record` under `event_id` unless one is there: then return it.

        One B-tree descent instead of a get and a put on the common path.
        """
        key = event_id.encode()
        if self._events.put(key, records.encode(record), True, False):  # dupdata, overwrite
            return None
        return records.decode_event_record(self._events.get(key))

    def event(self, event_id: str) -> EventRecord | None:
        raw = self._events.get(event_id.encode()) if event_id else None
        return None if raw is None else records.decode_event_record(raw)

    def release_event(self, event_id: str) -> None:
        if self._events.set_key(event_id.encode()):
            self._events.delete()

    def append(self, entry: LogEntry) -> int:
        self.seq += 1
        entry.at_ms = self.at_ms
        if not self._log.put(seq_key(self.seq), records.encode(entry), True, True, True):  # dupdata, overwrite, append
            raise StoreError(f"log entry {self.seq} exists already: the log must only grow")
        return self.seq


class StoreReader:
    """A store opened for reading only, by the tools that read the store of
    a stopped node (`ingest tail`) or beside a running one (`ingest
    export`): no writemap and no allocation, so data.mdb is neither grown
    nor written; the format is checked as at Store's open.

    Raises StoreError, its text without the leading path (the caller says
    "cannot read the store in DIR")."""

    def __init__(self, path: str):
        self.path = path
        self.env: lmdb.Environment | None = None
        self._lock_fd: int | None = None
        try:
            self.env = self._open()
            if _check_format(self.env, path):
                raise StoreError("no ingest store here (an empty LMDB environment)")
            self.dbs = {name: self._table(name) for name in TABLES}
        except (lmdb.Error, StoreError, OSError) as exc:
            self.close()
            text = getattr(exc, "strerror", None) or str(exc)
            raise StoreError(text.removeprefix(f"{path}: ")) from None

    def _table(self, name: bytes):
        try:
            return self.env.open_db(name, create=False)
        except lmdb.Error:
            raise StoreError(f"an incomplete store: no {name.decode()} table") from None

    def _open(self) -> lmdb.Environment:
        if not os.path.isdir(self.path):
            raise StoreError("not a directory" if os.path.exists(self.path) else "no such directory")
        data_file = os.path.join(self.path, "data.mdb")
        if not os.path.exists(data_file) or os.path.getsize(data_file) == 0:
            raise StoreError("no ingest store here (no data.mdb)")
        try:
            # With LMDB's lock (lock.mdb): a running server sees this reader
            # and does not reuse the pages it reads.
            return _open_readonly(self.path, lock=True)
        except lmdb.ReadonlyError:
            pass
        # lock.mdb is not ours to write (a store of another user, a
        # read-only mount): read without it, and only if no ingest process
        # has the store open. The directory's lock is held shared meanwhile
        # when its file is there (a reader may not create it).
        self._lock_fd = _lock_directory(self.path, shared=True)
        try:
            return _open_readonly(self.path, lock=False)
        except BaseException:
            self._unlock()
            raise

    def log_start(self, txn: lmdb.Transaction) -> int:
        """The oldest seq in the log, as Store.log_start."""
        return _first_seq(txn, self.dbs)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Store:
    def __init__(self, path: str, map_bytes_initial: int = 64 << 20, map_bytes_max: int = 1 << 40,
                 time_zone: str = "UTC", log_keep: int = 0):
        _make_directory(path)
        self.path = path
        self.hour_of = HourLabels(time_zone)
        self.map_bytes_initial = map_bytes_initial
        self.map_bytes_max = map_bytes_max
        # Change-log retention: keep the newest `log_keep` entries (0: all).
        # Trimmed inside write transactions (`_trim`), on every node alike.
        self.log_keep = log_keep
        self._data_file = os.path.join(path, "data.mdb")
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
        self._copies_done = threading.Condition(self._gate)
        # Before anything in the directory is touched: the debris below may
        # be a running process's snapshot on its way.
        self._lock_fd: int | None = _lock_directory(path)
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
        new = _is_new(self.path)
        self.env = lmdb.open(
            self.path,
            map_size=self.map_bytes_initial,
            max_dbs=len(TABLES) + 4,
            sync=True,
            metasync=True,
            writemap=True,
            readahead=False,
            max_readers=512,
        )
        # LMDB creates the file (a new one must be its own); nothing has been
        # written through the map yet when its blocks are allocated here.
        try:
            self._allocate(self.env.info()["map_size"])
            self._load(new)
        except BaseException:
            self.env.close()
            raise

    def _load(self, new: bool) -> None:
        # One transaction, not _read: a snapshot swap reopens with the gate
        # held. A new store gets its tables and format in it too, so that a
        # kill cannot leave tables without a format (refused at the next open).
        with self.env.begin(write=True) as txn:
            self.dbs = {name: self.env.open_db(name, txn=txn) for name in TABLES}
            meta = self.dbs[b"meta"]
            if new:
                txn.put(_FORMAT, FORMAT_VERSION.to_bytes(4, "big"), db=meta)
            if txn.get(_NODE, db=meta) is None:
                txn.put(_NODE, os.urandom(8).hex().encode(), db=meta)
            raw = txn.get(_LAST_SEQ, db=meta)
            self.last_seq = 0 if raw is None else int.from_bytes(raw, "big")
            self.node = bytes(txn.get(_NODE, db=meta)).decode()
            raw = txn.get(_EPOCH, db=meta)
            self.epoch = 0 if raw is None else int.from_bytes(raw, "big")
            raw = txn.get(_FENCED, db=meta)
            self.fenced_at = 0 if raw is None else int.from_bytes(raw, "big")
            self.log_start = _first_seq(txn, self.dbs)

    def close(self) -> None:
        with self._gate:
            # A hot copy's transaction must end before the environment does.
            if not self._copies_done.wait_for(lambda: self._copies == 0, timeout=CLOSE_WAIT_S):
                return  # the process is exiting; closing under the copy would crash it
            self.env.close()
            self._unlock()  # after the environment: no write may follow the next opener's

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            _unlock_directory(self.path, self._lock_fd)
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
                    txn.put(_LAST_SEQ, seq_key(tx.seq), db=self.dbs[b"meta"])
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
            return _first_seq(txn, self.dbs)
        cutoff = seq_key(last_seq - self.log_keep)  # delete keys <= this
        budget = appended + TRIM_STEP
        cur = txn.cursor(db=self.dbs[b"log"])
        if cur.first():
            while budget > 0 and cur.key() <= cutoff:
                budget -= 1
                if not cur.delete():  # deletes and moves to the next; False once empty
                    break
        return _first_seq(txn, self.dbs)

    def _allocate(self, size: int) -> None:
        """Give data.mdb real disk blocks up to `size` bytes, or raise StoreFull."""
        fd = os.open(self._data_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            raise StoreFull(f"cannot allocate {size} bytes for {self._data_file}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def set_epoch(self, epoch: int) -> None:
        """Store a higher epoch durably: on promotion, or adopted from the
        primary this node follows. Either way the node is no longer fenced."""
        if epoch <= self.epoch and not self.fenced_at:
            return
        meta = self.dbs[b"meta"]

        def put(tx: WriteTx) -> None:
            tx.txn.put(_EPOCH, max(epoch, self.epoch).to_bytes(8, "big"), db=meta)
            tx.txn.delete(_FENCED, db=meta)

        self.write(put)
        self.epoch = max(self.epoch, epoch)
        self.fenced_at = 0

    def fence(self, epoch: int) -> None:
        """This node led an older epoch and `epoch` exists now: keep that
        durably (the node must not take writes after a restart either). Its
        own epoch stays the one its history belongs to; a promotion of it
        goes above both."""
        if epoch <= self.fenced_at:
            return
        meta = self.dbs[b"meta"]
        self.write(lambda tx: tx.txn.put(_FENCED, epoch.to_bytes(8, "big"), db=meta))
        self.fenced_at = epoch

    def apply_log(self, entries: list[tuple[int, bytes]], window_ms: int) -> int:
        """A standby's write: apply a contiguous run of the primary's log
        entries in one durable transaction. Returns the last seq applied."""
        from ingest import changelog

        def apply_all(tx: WriteTx) -> None:
            for seq, raw in entries:
                if seq != tx.seq + 1:
                    raise StoreError(f"log gap: expected {tx.seq + 1}, got {seq}")
                changelog.apply_entry(tx, records.decode_log_entry(raw), window_ms)

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
            raw = txn.get(_LAST_SEQ, db=self.dbs[b"meta"])
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
                fmt = txn.get(_FORMAT)
                if fmt is None or int.from_bytes(fmt, "big") != FORMAT_VERSION:
                    raise StoreError(f"snapshot: store format {fmt!r}, this build reads {FORMAT_VERSION}")
                raw = txn.get(_LAST_SEQ)
                if (0 if raw is None else int.from_bytes(raw, "big")) != last_seq:
                    raise StoreError(f"snapshot: holds last_seq {raw!r}, announced {last_seq}")
                for name in TABLES:
                    check.open_db(name, txn=txn, create=False)  # every table is there
                raw = txn.get(_EPOCH)
                if self.epoch > (0 if raw is None else int.from_bytes(raw, "big")):
                    txn.put(_EPOCH, self.epoch.to_bytes(8, "big"))  # never forget a higher epoch
                txn.put(_NODE, self.node.encode())
                txn.delete(_FENCED)  # a node that installs a snapshot follows
            check.sync(True)
        except lmdb.Error as exc:
            raise StoreError(f"snapshot: not a usable store: {exc}") from None
        finally:
            check.close()
        with self._gate:
            self._copies_done.wait_for(lambda: self._copies == 0)
            self.env.close()
            os.replace(path, self._data_file)
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself is durable
            finally:
                os.close(dir_fd)
            # Still inside the gate: no read may meet the closed environment.
            self._open()

    # -- reading ------------------------------------------------------------

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        with self._gate:
            with self.env.begin(buffers=False) as txn:
                return fn(txn)

    def tube(self, code: str) -> tuple[Tube, list[Member]] | None:
        """The tube's head and its members in position order."""
        def read(txn: lmdb.Transaction):
            raw = txn.get(code.encode(), db=self.dbs[b"tubes"]) if code else None
            if raw is None:
                return None
            members = self._prefix_scan(txn, b"members", code.encode() + b"\x00", records.decode_member)
            return records.decode_tube(raw), members

        return self._read(read)

    def _prefix_scan(self, txn: lmdb.Transaction, table: bytes, prefix: bytes, decode) -> list:
        out = []
        cur = txn.cursor(db=self.dbs[table])
        if cur.set_range(prefix):
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                out.append(decode(value))
        return out

    def results(self, tube: str) -> list[Result]:
        prefix = tube.encode() + b"\x00"
        return self._read(lambda txn: self._prefix_scan(txn, b"results", prefix, records.decode_result))

    def result(self, tube: str, seq: int) -> Result | None:
        key = tube.encode() + b"\x00" + seq_key(seq)
        raw = self._read(lambda txn: txn.get(key, db=self.dbs[b"results"]))
        return None if raw is None else records.decode_result(raw)

    def box(self, code: str) -> Box | None:
        raw = self._read(lambda txn: txn.get(code.encode(), db=self.dbs[b"boxes"])) if code else None
        return None if raw is None else records.decode_box(raw)

    def positives(self, after: int, limit: int) -> list[tuple[int, str]]:
        """(seq, tube) of positive or invalid results after `after`, in log order."""
        def scan(txn: lmdb.Transaction) -> list[tuple[int, str]]:
            out = []
            cur = txn.cursor(db=self.dbs[b"positives"])
            if cur.set_range(seq_key(after + 1)):
                for key, value in cur:
                    out.append((int.from_bytes(key, "big"), value.decode()))
                    if len(out) >= limit:
                        break
            return out

        return self._read(scan)

    def stats(self, scope: str) -> dict[str, list[int]]:
        """bucket ("total" or an hour label) -> counters, for one scope."""
        prefix = scope.encode() + b"\x00"

        def scan(txn: lmdb.Transaction) -> dict[str, list[int]]:
            out = {}
            cur = txn.cursor(db=self.dbs[b"stats"])
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    bucket = key[len(prefix):]
                    # A bucket label never holds a NUL; a key that does is a
                    # longer scope's (a site id may contain a NUL) sharing our prefix.
                    if b"\x00" not in bucket:
                        out[bucket.decode()] = records.decode_counts(value)
            return out

        return self._read(scan)

    def person(self, code: str) -> list[PersonBinding]:
        raw = self._read(lambda txn: txn.get(code.encode(), db=self.dbs[b"persons"])) if code else None
        return [] if raw is None else records.decode_person(raw)

    def event(self, event_id: str) -> EventRecord | None:
        raw = self._read(lambda txn: txn.get(event_id.encode(), db=self.dbs[b"events"])) if event_id else None
        return None if raw is None else records.decode_event_record(raw)

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
                    if name == b"meta" and key == _NODE:
                        continue  # identity, not state: differs on every node
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
