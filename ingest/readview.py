"""Committed state as of one LMDB read transaction.

A GET that reads more than one record (a person and the tubes they were
bound to, a positive and its tube, members and result) reads them all
through one view, so that a commit landing between two of its reads cannot
make them disagree: a person listed in a tube whose head is from a later
state, a positive shown with members a standby does not have yet. Open one
with `Store.view()`; the key layout is keys.py.
"""
from __future__ import annotations

import lmdb

from ingest import records
from ingest.keys import seq_key
from ingest.records import Box, EventRecord, Member, PersonBinding, Result, Tube


class ReadView:
    def __init__(self, txn: lmdb.Transaction, dbs: dict):
        self.txn = txn
        self.dbs = dbs

    def tube(self, code: str) -> tuple[Tube, list[Member]] | None:
        """The tube's head and its members in position order."""
        raw = self.txn.get(code.encode(), db=self.dbs[b"tubes"]) if code else None
        if raw is None:
            return None
        return records.decode_tube(raw), self._prefix_scan(b"members", code.encode() + b"\x00", records.decode_member)

    def results(self, tube: str) -> list[Result]:
        """Every result posted for the tube, oldest first."""
        return self._prefix_scan(b"results", tube.encode() + b"\x00", records.decode_result)

    def result(self, tube: str, seq: int) -> Result | None:
        raw = self.txn.get(tube.encode() + b"\x00" + seq_key(seq), db=self.dbs[b"results"])
        return None if raw is None else records.decode_result(raw)

    def box(self, code: str) -> Box | None:
        raw = self.txn.get(code.encode(), db=self.dbs[b"boxes"]) if code else None
        return None if raw is None else records.decode_box(raw)

    def person(self, code: str) -> list[PersonBinding]:
        raw = self.txn.get(code.encode(), db=self.dbs[b"persons"]) if code else None
        return [] if raw is None else records.decode_person(raw)

    def event(self, event_id: str) -> EventRecord | None:
        raw = self.txn.get(event_id.encode(), db=self.dbs[b"events"]) if event_id else None
        return None if raw is None else records.decode_event_record(raw)

    def positives(self, after: int, limit: int) -> list[tuple[int, str]]:
        """(seq, tube) of positive or invalid results after `after`, in log order."""
        out = []
        cur = self.txn.cursor(db=self.dbs[b"positives"])
        if cur.set_range(seq_key(after + 1)):
            for key, value in cur:
                out.append((int.from_bytes(key, "big"), value.decode()))
                if len(out) >= limit:
                    break
        return out

    def stats(self, scope: str) -> dict[str, list[int]]:
        """bucket ("total" or an hour label) -> counters, for one scope."""
        prefix = scope.encode() + b"\x00"
        out = {}
        cur = self.txn.cursor(db=self.dbs[b"stats"])
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

    def _prefix_scan(self, table: bytes, prefix: bytes, decode) -> list:
        out = []
        cur = self.txn.cursor(db=self.dbs[table])
        if cur.set_range(prefix):
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                out.append(decode(value))
        return out
