"""The store's floor: what LMDB alone costs per binding, against the apply.

The batch target (250,000 events/s on one core) leaves 4 µs per event for
everything. This measures how much of that the store's own work takes, with
the bindings' exact bytes, so the gap can be put where it is:

1. **record**: the real apply (the selected kernel, through `Store.write`)
   binds N fresh events in groups into a scratch store, while every read and
   write it makes on a cursor is recorded (table, key, value), per group;
2. **apply**: the same events, the same groups, through the same apply into
   a fresh store (what the server's committer thread does per group);
3. **floor**: the recorded operations replayed into another fresh store with
   py-lmdb's C loops (`Cursor.getmulti`, `Cursor.putmulti`: one Python call per
   table and group), the same commit (sync, writemap), nothing else.

All three stores must end with the same digest (`Store.digest`), or the
script stops: the floor does exactly the apply's writes, nothing less.
`apply − floor` is what the rules, the records and one py-lmdb call per
operation cost on top of LMDB; `floor` is the B-tree work, the page copies
and the commit, which no change to our code removes without writing fewer
records. Rounds alternate apply and floor, each on a fresh store; CPU time
(user + sys) of this process, one thread:

    python bench/store_floor.py 200000 --group 5000     # groups as the batch endpoint makes them
    python bench/store_floor.py 50000 --group 64        # groups as 256 single-event connections make them
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from ingest import config as config_mod
from ingest import rules
from ingest.drill import Events
from ingest.events import BindingEvent
from ingest.server import tune_gc
from ingest.store import Store
from ingest.writetx import WriteTx

# WriteTx's cursor slots a binding touches, in the order the floor replays them
CURSORS = ("_tubes", "_persons", "_events", "_members", "_log", "_stats")


class Recorder:
    """A cursor that notes each get and put before passing it on."""

    def __init__(self, cursor, reads: list, writes: list):
        self._cursor, self._reads, self._writes = cursor, reads, writes

    def get(self, key):
        self._reads.append(key)
        return self._cursor.get(key)

    def put(self, key, value, *flags):
        self._writes.append((key, value))
        return self._cursor.put(key, value, *flags)

    def set_key(self, key):
        return self._cursor.set_key(key)

    def delete(self):
        return self._cursor.delete()


def groups_of(events: int, size: int) -> list[list[tuple[BindingEvent, str]]]:
    schemes = config_mod.tube_schemes(config_mod.load().labs)
    source = Events("FLOR")
    out, group = [], []
    for _ in range(events):
        ev = BindingEvent(**source.next())
        group.append((ev, schemes.lab_of(ev.tube)))
        if len(group) == size:
            out.append(group)
            group = []
    return out + ([group] if group else [])


def apply_group(group, window_ms: int, hook=None):
    def apply(tx: WriteTx) -> list:
        if hook is not None:
            hook(tx)
        return [rules.apply_binding(tx, ev, lab, window_ms) for ev, lab in group]
    return apply


# One server time for every commit of every round, so that the stores'
# digests do not depend on the clock (the log entries and counters hold it).
AT_MS = int(time.time() * 1000)


def record(groups, window_ms: int) -> tuple[list[dict], str]:
    """Per group: {slot: (keys read, (key, value) written)}, as the apply made
    them; and the digest of the store they made."""
    data = tempfile.mkdtemp(prefix="ingest-floor-")
    store = Store(data)
    recorded = []
    try:
        for group in groups:
            ops = {slot: ([], []) for slot in CURSORS}

            def hook(tx: WriteTx) -> None:
                # Store.write runs the function again after growing the map:
                # only the attempt that commits may stay recorded.
                for slot in CURSORS:
                    reads, writes = ops[slot]
                    reads.clear()
                    writes.clear()
                    setattr(tx, slot, Recorder(getattr(tx, slot), reads, writes))

            outcomes = store.write(apply_group(group, window_ms, hook), AT_MS)
            if not all(isinstance(o, rules.Bound) for o in outcomes):
                raise SystemExit("store_floor: an event was not bound; the events must be fresh")
            recorded.append(ops)
        return recorded, store.digest()
    finally:
        store.close()
        shutil.rmtree(data, ignore_errors=True)


def check(store: Store, digest: str, what: str) -> None:
    if store.digest() != digest:
        raise SystemExit(f"store_floor: the {what} store differs from the recorded one")


def timed(writes: list, digest: str, what: str) -> float:
    """CPU seconds to commit `writes` (one write function per group) into a
    fresh store, which must end as the recorded one did."""
    data = tempfile.mkdtemp(prefix="ingest-floor-")
    store = Store(data)
    try:
        t0 = time.process_time()
        for write in writes:
            store.write(write, AT_MS)
        spent = time.process_time() - t0
        check(store, digest, what)
        return spent
    finally:
        store.close()
        shutil.rmtree(data, ignore_errors=True)


def replay_group(ops: dict):
    def replay(tx: WriteTx) -> None:
        for slot in CURSORS:
            reads, writes = ops[slot]
            cursor = getattr(tx, slot)
            if reads:
                cursor.getmulti(reads)
            cursor.putmulti(writes, True, True, slot == "_log")  # dupdata, overwrite, append
        tx.seq += len(ops["_log"][1])  # Store.write stores last_seq, as after an apply
    return replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("events", type=int)
    parser.add_argument("--group", type=int, default=5000, help="events per commit")
    parser.add_argument("--rounds", type=int, default=3, help="alternating apply/floor rounds")
    args = parser.parse_args()
    if args.events < 1 or args.group < 1 or args.rounds < 1:
        parser.error("events, --group and --rounds must be at least 1")
    window_ms = config_mod.load().person_window_ms
    groups = groups_of(args.events, args.group)
    recorded, digest = record(groups, window_ms)
    tune_gc()
    per_op = sum(len(r) + len(w) for ops in recorded for r, w in ops.values()) / args.events
    print(f"{args.events} events in groups of {args.group}: {per_op:.1f} reads and writes per event "
          f"(kernels: {rules.apply_binding.__module__})")
    print(f"{'round':>5s} {'apply us/ev':>12s} {'floor us/ev':>12s} {'floor/apply':>12s} "
          f"{'apply ev/s':>12s} {'floor ev/s':>12s}")
    for n in range(1, args.rounds + 1):
        a = timed([apply_group(group, window_ms) for group in groups], digest, "apply") / args.events
        f = timed([replay_group(ops) for ops in recorded], digest, "floor") / args.events
        print(f"{n:5d} {a * 1e6:12.2f} {f * 1e6:12.2f} {f / a:12.2f} {1 / a:12,.0f} {1 / f:12,.0f}")


if __name__ == "__main__":
    main()
