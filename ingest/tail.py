"""A store's unreplicated tail: its change log after a seq, as the requests
that made it.

After a failover, the dead primary's log may hold entries the promoted
standby never got (async mode): acknowledged bindings, and as much the
seals, boxes, receipts and lab results. Each is written out as the request
that replays it (`request_of`), in log order; sent to the new primary, each
is either new there or answered as a duplicate (event ids make that safe).
`ingest drill` reads the tail in-process on one machine and through
`ingest tail` on a remote host: this is the one rule both use.

    ingest tail --data DIR --after SEQ      # JSON lines on stdout
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from urllib.parse import quote

import lmdb
import msgspec

from ingest.changelog import event_of
from ingest.cli import exit_on_termination, write_output
from ingest.datadir import StoreReader
from ingest.keys import LAST_SEQ, seq_key
from ingest.records import LogEntry, decode_log_entry
from ingest.store_errors import StoreError


class TailIncomplete(Exception):
    """The tail cannot be read whole; a partial one would hide a loss."""


def _segment(code: str) -> str:
    return quote(code, safe="")


# kind -> the path of the route that takes its event (ingest/routes.py)
PATH_OF: dict[str, Callable] = {
    "binding": lambda ev: "/v1/bindings",
    "seal": lambda ev: f"/v1/tubes/{_segment(ev.tube)}/seal",
    "void": lambda ev: f"/v1/bindings/{_segment(ev.binding_event_id)}/void",
    "box": lambda ev: "/v1/boxes",
    "handover": lambda ev: f"/v1/boxes/{_segment(ev.box)}/handover",
    "receive": lambda ev: f"/v1/boxes/{_segment(ev.box)}/receive",
    "receive_tube": lambda ev: f"/v1/tubes/{_segment(ev.tube)}/receive",
    "result": lambda ev: "/v1/results",
}


def request_of(seq: int, entry: LogEntry) -> dict:
    """The request that replays a log entry: {"seq", "kind", "method",
    "path", "body"}, the body as the route takes it (JSON)."""
    ev = event_of(entry)
    body = msgspec.to_builtins(ev)  # the fields it was stored with, defaults left out
    if entry.kind == "result":
        body = {"results": [body]}
    return {"seq": seq, "kind": entry.kind, "method": "POST", "path": PATH_OF[entry.kind](ev), "body": body}


def requests_after(data: str, after: int) -> Iterator[dict]:
    """The requests of the entries in the store at `data` with seq > `after`.

    Reads the store read-only (StoreReader: a stopped node's store is not
    grown, written or created). Raises TailIncomplete when there is no store
    there (an empty tail would pass for "nothing unreplicated"), when it
    cannot be read, or when retention has trimmed entries after `after`.
    """
    try:
        reader = StoreReader(data)
    except StoreError as exc:
        raise TailIncomplete(f"cannot read the store in {data}: {exc}") from None
    try:
        # One read transaction: nothing writes to a dead node's store, and
        # the entries are decoded and handed on one at a time.
        with reader.env.begin(buffers=False) as txn:
            raw = txn.get(LAST_SEQ, db=reader.dbs[b"meta"])
            last_seq = 0 if raw is None else int.from_bytes(raw, "big")
            if after > last_seq:
                # Not "nothing unreplicated": a seq this store never reached
                # is a mistaken --after (the promoted node's seq now, not at
                # its promotion), and an empty tail would be thrown away.
                raise TailIncomplete(f"the store in {data} ends at seq {last_seq}, before --after {after}: give "
                                     "the last_seq that `ingest promote` answered (the promoted node's last seq "
                                     "at its promotion), not its last seq now")
            log_start = reader.log_start(txn)
            if log_start > after + 1:
                raise TailIncomplete(f"the log in {data} starts at seq {log_start}; "
                                     f"its tail after seq {after} is no longer all there")
            cur = txn.cursor(db=reader.dbs[b"log"])
            if cur.set_range(seq_key(after + 1)):
                for key, raw in cur:
                    yield request_of(int.from_bytes(key, "big"), decode_log_entry(raw))
    except lmdb.Error as exc:
        raise TailIncomplete(f"cannot read the store in {data}: {exc}") from None
    finally:
        reader.close()


def main(args) -> int:
    exit_on_termination()  # the reader slot goes back even on SIGTERM/SIGHUP

    def write(out) -> None:
        for request in requests_after(args.data, args.after):
            out.write(json.dumps(request) + "\n")

    return write_output(args.out, write, (TailIncomplete,), str)
