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
import os
import sys
from collections.abc import Iterator

from ingest.events import BindingEvent
from ingest.records import decode_log_entry
from ingest.store import Store

# Entries read per transaction: bounds memory for a long tail.
PAGE_ENTRIES = 1000


class TailIncomplete(Exception):
    """The tail cannot be read whole; a partial one would hide a loss."""


def bindings_after(data: str, after: int) -> Iterator[dict]:
    """The binding events in the store at `data` with seq > `after`.

    Raises TailIncomplete when there is no store there (Store would create an
    empty one, whose empty tail would pass for "nothing unreplicated") or when
    retention has trimmed entries after `after`.
    """
    if not os.path.isfile(os.path.join(data, "data.mdb")):
        raise TailIncomplete(f"no store in {data}")
    store = Store(data)
    try:
        if store.log_start > after + 1:
            raise TailIncomplete(f"the log in {data} starts at seq {store.log_start}; "
                                 f"its tail after seq {after} is no longer all there")
        fields = BindingEvent.__struct_fields__
        # Every page moves `after` forward, and the log is finite (nothing
        # writes to a dead node's store): the loop ends by last_seq.
        while after < store.last_seq:
            page = store.log_raw(after, limit=PAGE_ENTRIES)
            if not page:
                break
            for seq, raw in page:
                entry = decode_log_entry(raw)
                if entry.kind == "binding":
                    yield {k: v for k, v in zip(fields, entry.payload) if v is not None}
                after = seq
    finally:
        store.close()


def main(args) -> int:
    try:
        for event in bindings_after(args.data, args.after):
            sys.stdout.write(json.dumps(event) + "\n")
    except TailIncomplete as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    return 0
