"""The binding apply: the compiled kernel against its plain-Python twin.

    pytest bench/test_bench_apply.py --benchmark-only

Each round applies the same 1000 fresh bindings (dedup claim, tube head,
member, person history, change log, counters) to a store that already holds
20,000, inside one write transaction that is then aborted, so every round
starts from the same state and no fsync is measured: this is the CPU of the
rules and their LMDB and msgspec calls, nothing else.
"""
from __future__ import annotations

import pytest
from twins import kernel_and_twin

from ingest import rules
from ingest.codes import DEMO_SCHEMES
from ingest.drill import Events
from ingest.events import BindingEvent
from ingest.store import Store
from ingest.writetx import WriteTx

WINDOW_MS = 12 * 3_600_000
IMPLS = kernel_and_twin("_apply", rules.apply_binding_py, "apply_binding")

SOURCE = Events("BAPL")


def _events(n: int) -> list[tuple[BindingEvent, str]]:
    out = []
    for _ in range(n):
        ev = BindingEvent(**SOURCE.next())
        out.append((ev, DEMO_SCHEMES.lab_of(ev.tube)))
    return out


PRELOAD = _events(20_000)
ROUND = _events(1000)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(str(tmp_path_factory.mktemp("apply") / "data"), map_bytes_initial=1 << 28)
    s.write(lambda tx: [rules.apply_binding_py(tx, ev, lab, WINDOW_MS) for ev, lab in PRELOAD])
    yield s
    s.close()


@pytest.mark.benchmark(group="apply: 1000 bindings in one transaction")
@pytest.mark.parametrize("apply_binding", IMPLS)
def test_apply(benchmark, store, apply_binding):

    def one_round():
        txn = store.env.begin(write=True)
        try:
            tx = WriteTx(txn, store.dbs, store.last_seq, store.hour_of, 1_790_000_000_000)
            outcomes = [apply_binding(tx, ev, lab, WINDOW_MS) for ev, lab in ROUND]
        finally:
            txn.abort()
        return outcomes

    outcomes = benchmark(one_round)
    assert all(type(o) is rules.Bound for o in outcomes)
