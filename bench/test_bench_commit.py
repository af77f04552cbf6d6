"""The commit path: apply bindings to the store and commit them durably.

    pytest bench/test_bench_commit.py --benchmark-only

Each round binds 64 fresh events (rules.apply_binding, the change log, the
counters) and syncs them to disk, either as one group commit or as 64
commits of one event: the ratio is what group commit buys on this disk.
Real fsyncs, so the figures are the machine's disk as much as our code.
"""
from __future__ import annotations

import time

import pytest

from ingest import rules
from ingest.codes import DEMO_SCHEMES
from ingest.drill import Events
from ingest.events import BindingEvent
from ingest.store import Store

GROUP = 64
WINDOW_MS = 12 * 3_600_000


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "data"), map_bytes_initial=1 << 28)
    yield s
    s.close()


def _fresh(source: Events) -> list[tuple[BindingEvent, str]]:
    out = []
    for _ in range(GROUP):
        ev = BindingEvent(**source.next())
        out.append((ev, DEMO_SCHEMES.lab_of(ev.tube)))
    return out


def _apply_all(batch):
    def apply(tx):
        return [rules.apply_binding(tx, ev, lab, WINDOW_MS) for ev, lab in batch]
    return apply


@pytest.mark.benchmark(group=f"commit: {GROUP} bindings")
def test_one_group_commit(benchmark, store):
    source = Events(f"G{int(time.time()) % 10000}")

    def run(batch):
        outcomes = store.write(_apply_all(batch))
        assert all(isinstance(o, rules.Bound) for o in outcomes)

    benchmark.pedantic(run, setup=lambda: ((_fresh(source),), {}), rounds=40)


@pytest.mark.benchmark(group=f"commit: {GROUP} bindings")
def test_one_commit_per_event(benchmark, store):
    source = Events(f"O{int(time.time()) % 10000}")

    def run(batch):
        for item in batch:
            (outcome,) = store.write(_apply_all([item]))
            assert isinstance(outcome, rules.Bound)

    benchmark.pedantic(run, setup=lambda: ((_fresh(source),), {}), rounds=10)
