"""`ingest export`: CSV of bindings, tubes or results, streamed.

Rows come from one read-only LMDB snapshot (datadir.StoreReader: the store
is neither grown nor written), cursor by cursor, and are written as they
are read, so 35 million rows need no more memory than one.
The server may keep running meanwhile (LMDB readers never block the writer;
a very long export only delays the reuse of freed pages, so the file may
grow while it runs).

Client text that a spreadsheet would take for a formula is written with a
leading "'" (`_safe_cell`, docs/operations.md "Export").
"""
from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterator
from typing import IO

import lmdb

from ingest import records
from ingest.datadir import StoreReader
from ingest.records import STATE_NAMES
from ingest.store_errors import StoreError

KINDS = ("bindings", "tubes", "results")

COLUMNS = {
    "bindings": ["tube", "position", "person", "event_id", "scanned_at", "seq", "voided_seq", "site_id", "lab",
                 "pool_size"],
    "tubes": ["tube", "site_id", "lab", "pool_size", "state", "count", "opened_seq", "sealed_seq", "box",
              "result", "result_seq"],
    "results": ["tube", "seq", "lab_id", "result", "tested_at", "event_id", "site_id"],
}


# A cell starting with one of these is a formula to a spreadsheet (OWASP
# "CSV injection"); TAB and CR too. Spreadsheets also skip leading blanks
# (" =1+1") and, in CJK locales, take full-width signs ("＝1+1") for
# formulas, so the check reads the text as NFKC folds it (U+FF1D to "=",
# U+3000 to " ") with blanks stripped. "'" itself is escaped so that the
# escape can be undone without guessing: a cell that begins with "'" had one
# added.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "'")
_BLANKS = " \t\r\n"


def _safe_cell(value: object) -> object:
    """Text from clients (site, person, event id, lab, box...) gets a leading
    "'" if a spreadsheet would run it; numbers the server wrote stay numbers."""
    if (isinstance(value, str) and value and not (value[0].isascii() and value[0].isalnum())
            and unicodedata.normalize("NFKC", value).lstrip(_BLANKS).startswith(FORMULA_STARTS)):
        return "'" + value
    return value


def _tube_rows(txn, dbs, site: str | None) -> Iterator[list]:
    for key, value in txn.cursor(db=dbs[b"tubes"]):
        t = records.decode_tube(value)
        if site is None or t.site_id == site:
            yield [key.decode(), t.site_id, t.lab, t.pool_size, STATE_NAMES[t.state], t.count, t.opened_seq,
                   t.sealed_seq, t.box, t.result, t.result_seq]


def _grouped(txn, dbs, table: bytes) -> Iterator[tuple[str, object, bytes]]:
    """(tube, its head, value) for a table keyed tube \\0 ...; the head is read
    once per tube, because keys of one tube are adjacent."""
    tube_code, head = None, None
    for key, value in txn.cursor(db=dbs[table]):
        code = key[:key.index(b"\x00")].decode()
        if code != tube_code:
            tube_code = code
            raw = txn.get(code.encode(), db=dbs[b"tubes"])
            head = records.decode_tube(raw) if raw is not None else None
        yield code, head, key, value


def _binding_rows(txn, dbs, site, since, until) -> Iterator[list]:
    for code, head, key, value in _grouped(txn, dbs, b"members"):
        if head is None or (site is not None and head.site_id != site):
            continue
        m = records.decode_member(value)
        if since <= m.scanned_at < until:
            yield [code, int.from_bytes(key[-2:], "big"), m.person, m.event_id, m.scanned_at, m.seq, m.voided_seq,
                   head.site_id, head.lab, head.pool_size]


def _result_rows(txn, dbs, site, since, until) -> Iterator[list]:
    for code, head, _key, value in _grouped(txn, dbs, b"results"):
        if head is None or (site is not None and head.site_id != site):
            continue
        r = records.decode_result(value)
        if since <= r.tested_at < until:
            yield [code, r.seq, r.lab_id, r.result, r.tested_at, r.event_id, head.site_id]


def open_store(data_dir: str) -> StoreReader:
    """The store at `data_dir`, read-only; raises lmdb.Error when it cannot
    be read (`ingest export` says "cannot read the store in DIR")."""
    try:
        return StoreReader(data_dir)
    except StoreError as exc:
        raise lmdb.Error(str(exc)) from None


def export(reader: StoreReader, kind: str, out: IO[str], site: str | None = None,
           since_ms: int = 0, until_ms: int = 2**63) -> int:
    """Write the CSV to `out` from one read transaction of `reader`; returns
    the number of rows. lmdb.Error: the store cannot be read; OSError: from
    writing `out` ("cannot write")."""
    env, dbs = reader.env, reader.dbs
    writer = csv.writer(out)
    writer.writerow(COLUMNS[kind])
    n = 0
    with env.begin(buffers=False) as txn:
        if kind == "tubes":
            rows = _tube_rows(txn, dbs, site)
        elif kind == "bindings":
            rows = _binding_rows(txn, dbs, site, since_ms, until_ms)
        else:
            rows = _result_rows(txn, dbs, site, since_ms, until_ms)
        for row in rows:
            writer.writerow([_safe_cell(cell) for cell in row])
            n += 1
    return n


__all__ = ["KINDS", "COLUMNS", "FORMULA_STARTS", "export", "open_store"]
