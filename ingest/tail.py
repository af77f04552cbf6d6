"""A store's unreplicated tail: the binding events in its log after a seq.

After a failover, the dead primary's log may hold entries the promoted
standby never got (async mode). Its bindings, replayed through the new
primary, are either new there or answered as duplicates (event ids make that
safe). `ingest drill` reads the tail in-process on one machine and through
`ingest tail` on a remote host: this is the one rule both use.

    ingest tail --data DIR --after SEQ      # JSON lines on stdout
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import lmdb

from ingest.cli import stdout_failed
from ingest.datadir import StoreReader
from ingest.events import BindingEvent
from ingest.keys import seq_key
from ingest.records import decode_log_entry
from ingest.store_errors import StoreError


class TailIncomplete(Exception):
    """The tail cannot be read whole; a partial one would hide a loss."""


def bindings_after(data: str, after: int) -> Iterator[dict]:
    """The binding events in the store at `data` with seq > `after`.

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
            log_start = reader.log_start(txn)
            if log_start > after + 1:
                raise TailIncomplete(f"the log in {data} starts at seq {log_start}; "
                                     f"its tail after seq {after} is no longer all there")
            fields = BindingEvent.__struct_fields__
            cur = txn.cursor(db=reader.dbs[b"log"])
            if cur.set_range(seq_key(after + 1)):
                for _key, raw in cur:
                    entry = decode_log_entry(raw)
                    if entry.kind == "binding":
                        yield {k: v for k, v in zip(fields, entry.payload) if v is not None}
    except lmdb.Error as exc:
        raise TailIncomplete(f"cannot read the store in {data}: {exc}") from None
    finally:
        reader.close()


def main(args) -> int:
    try:
        for event in bindings_after(args.data, args.after):
            sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
    except TailIncomplete as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # bindings_after's own errors are TailIncomplete: this is stdout's
        return stdout_failed(exc)
    return 0
