"""The store as the rules see it: one write transaction (`WriteTx`), opened
and committed by `store.Store.write`."""
from __future__ import annotations

import lmdb

from ingest import records
from ingest.keys import HourLabels, member_key, seq_key, stats_key
from ingest.records import Box, EventRecord, LogEntry, Member, PersonBinding, Result, Tube
from ingest.store_errors import StoreError


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
        if not n:
            return  # a receipt that received nothing: no all-zero hour in the statistics
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

    def result(self, tube: str, seq: int) -> Result | None:
        raw = self._results.get(tube.encode() + b"\x00" + seq_key(seq))
        return None if raw is None else records.decode_result(raw)

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

    def put_event(self, event_id: str, record: EventRecord) -> None:
        self._events.put(event_id.encode(), records.encode(record))

    def release_event(self, event_id: str) -> None:
        if self._events.set_key(event_id.encode()):
            self._events.delete()

    def append(self, entry: LogEntry) -> int:
        self.seq += 1
        entry.at_ms = self.at_ms
        if not self._log.put(seq_key(self.seq), records.encode(entry), True, True, True):  # dupdata, overwrite, append
            raise StoreError(f"log entry {self.seq} exists already: the log must only grow")
        return self.seq
