"""The store's key layout: LMDB tables, their keys, the format version.

Tables (LMDB named databases), described in docs/storage.md:

  meta     b"last_seq"      -> u64 big-endian, last change-log sequence
           b"format"        -> u32, store format version
           b"node", b"epoch", b"fenced"  -> replication identity (docs/storage.md)
           b"follows", b"tell" -> utf-8 host:port, the node's role across restarts
           b"time_zone"     -> utf-8 IANA name the stats hours are counted in
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

The values are records.py's. Every change goes into `log` in the same
transaction as the change itself (writetx.WriteTx), so the log and the
tables can never disagree.
"""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import lmdb

# 2: tube heads apart from their members (the first layout kept them inline).
# 3: voids and seals (Tube.slots/sealed_seq, voided_seq, EventRecord.kind).
# 4: boxes, results, positives.
# 5: statistics; LogEntry.at_ms.
FORMAT_VERSION = 5
TABLES = (b"meta", b"events", b"tubes", b"members", b"persons", b"boxes", b"results", b"positives", b"stats",
          b"log")
LAST_SEQ = b"last_seq"
FORMAT = b"format"
# This node's identity (random, made once) and the highest epoch it knows:
# replication refuses to follow itself or a primary of an older epoch.
NODE = b"node"
EPOCH = b"epoch"
# Present while this node is a primary replaced by a higher epoch (value: that
# epoch): it must take no writes, after a restart too, until promoted again.
FENCED = b"fenced"
# Present while this node is a standby (value: the replication address it was
# last started to follow); removed by its promotion. Started without --follow
# it takes no writes until promoted: a standby's unit file run with the
# primary's command line must not make a second primary at the same epoch.
FOLLOWS = b"follows"
# Present from a promotion until the primary this node followed (value: its
# replication address) answers that it knows the new epoch: telling it goes
# on after a restart of this node, so that the former primary cannot come back
# as a second primary that no one tells.
TELL = b"tell"
# The zone of the stats table's hour labels (stats.time_zone when the store
# was made). The labels are written by the apply, so every node applying one
# change log must count in the same zone, and a store in one zone only.
TIME_ZONE = b"time_zone"


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


def first_seq(txn: lmdb.Transaction, dbs: dict) -> int:
    """The oldest seq still in the log (last_seq + 1 when it is empty)."""
    cur = txn.cursor(db=dbs[b"log"])
    if cur.first():
        return int.from_bytes(cur.key(), "big")
    raw = txn.get(LAST_SEQ, db=dbs[b"meta"])
    return (0 if raw is None else int.from_bytes(raw, "big")) + 1
