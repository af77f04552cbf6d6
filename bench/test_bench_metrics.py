"""What counting costs on the hot path: prometheus-client's Histogram and
Counter against the lock-free counters ingest.metrics uses per request.

    pytest bench/test_bench_metrics.py --benchmark-only
"""
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from ingest.metrics import LATENCY_BUCKETS_S, LatencyCounter, Metrics

VALUES = [0.00007 * (i % 97) for i in range(1000)]


@pytest.mark.benchmark(group="latency observe x1000")
def test_prometheus_histogram_observe(benchmark):
    h = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS_S, registry=CollectorRegistry())

    def run():
        for v in VALUES:
            h.observe(v)

    benchmark(run)


@pytest.mark.benchmark(group="latency observe x1000")
def test_ingest_latency_counter_observe(benchmark):
    h = LatencyCounter()

    def run():
        for v in VALUES:
            h.observe(v)

    benchmark(run)


@pytest.mark.benchmark(group="outcome count x1000")
def test_prometheus_counter_inc(benchmark):
    c = Counter("x", "x", ["outcome", "code"], registry=CollectorRegistry()).labels("bound", "")

    def run():
        for _ in VALUES:
            c.inc()

    benchmark(run)


@pytest.mark.benchmark(group="outcome count x1000")
def test_ingest_outcome_count(benchmark):
    events = Metrics("x").events
    key = ("bound", "")

    def run():
        for _ in VALUES:
            events[key] += 1

    benchmark(run)
