"""Prometheus metrics for GET /metrics, exposed through prometheus-client.

The per-request counts (events by outcome, request latency) are the hot path:
a prometheus-client `Histogram.observe` takes a lock and walks its buckets on
every call. Here the event loop thread, the only writer, bumps plain ints
(a `bisect` into the bucket bounds) and a custom collector turns them into
metric families at scrape time. bench/test_bench_metrics.py measures both.
Per-batch metrics (commit size and duration) are rare enough for the
library's own Histogram.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

# Sub-millisecond buckets first: a healthy commit path answers in < 1 ms.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
COMMIT_EVENTS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class LatencyCounter:
    """A histogram a single thread fills without locks."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs in that bound's bucket (le).
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            out.append((repr(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class HotPathCollector(Collector):
    def __init__(self, metrics: "Metrics"):
        self._m = metrics

    def collect(self) -> Iterator:
        m = self._m
        events = CounterMetricFamily(
            "ingest_events", "Binding events by outcome (bound, duplicate, rejected) and error code.",
            labels=["outcome", "code"],
        )
        for (outcome, code), n in sorted(m.events.items()):
            events.add_metric([outcome, code], n)
        yield events
        latency = HistogramMetricFamily(
            "ingest_http_request_duration_seconds",
            "Time from a complete request to its answer being written, by route.",
            labels=["route"],
        )
        for route, hist in sorted(m.latency.items()):
            latency.add_metric([route], hist.buckets(), hist.total)
        yield latency
        conns = GaugeMetricFamily("ingest_http_connections", "Open HTTP connections.")
        conns.add_metric([], m.connections())
        yield conns
        sizes = m.store_sizes()
        used = GaugeMetricFamily("ingest_store_used_bytes", "Bytes of the LMDB map in use.")
        used.add_metric([], sizes.get("used_bytes", 0))
        yield used
        mapped = GaugeMetricFamily("ingest_store_map_bytes", "Current LMDB map size in bytes.")
        mapped.add_metric([], sizes.get("map_bytes", 0))
        yield mapped
        entries = GaugeMetricFamily("ingest_store_entries", "Entries per store table.", labels=["table"])
        for name, value in sorted(sizes.items()):
            if name.startswith("entries_"):
                entries.add_metric([name[len("entries_"):]], value)
        yield entries
        seq = GaugeMetricFamily("ingest_last_sequence", "Last change-log sequence number committed.")
        seq.add_metric([], m.last_seq())
        yield seq
        yield from replication_families(m.replication())


# name -> help of the replication gauges (NodeRoutes.replication_gauges gives
# their values; one left out is unknown now, and not exported).
REPLICATION_GAUGES = {
    "ingest_replication_epoch": "The highest epoch this node knows.",
    "ingest_replication_standbys": "Standbys streaming from this primary.",
    "ingest_replication_standby_lag_events": "Entries the furthest-behind streaming standby has not acknowledged.",
    "ingest_replication_degraded": "1 while a sync primary answers without its standby (on_standby_lost = async).",
    "ingest_replication_connected": "1 while this standby is connected to its primary.",
    "ingest_replication_lag_events": "Entries this standby lacks of what its primary has.",
    "ingest_replication_stopped": "1 when this standby stopped following for good (stopped_because in the status).",
}


def replication_families(values: dict):
    role = GaugeMetricFamily("ingest_replication_role", "This node's role (1 = this one).", labels=["role"])
    role.add_metric([values.get("role", "primary")], 1)
    yield role
    for name, text in REPLICATION_GAUGES.items():
        if values.get(name) is not None:
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], values[name])
            yield gauge


class Metrics:
    def __init__(
        self,
        implementation: str,
        connections: Callable[[], int] = lambda: 0,
        store_sizes: Callable[[], dict[str, int]] = dict,
        last_seq: Callable[[], int] = lambda: 0,
        replication: Callable[[], dict] = dict,
    ):
        self.registry = CollectorRegistry(auto_describe=True)
        # (outcome, code) -> count; code is "" for bound and duplicate.
        self.events: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, LatencyCounter] = defaultdict(LatencyCounter)
        self.connections = connections
        self.store_sizes = store_sizes
        self.last_seq = last_seq
        self.replication = replication
        self.registry.register(HotPathCollector(self))
        info = Gauge(
            "ingest_build_info", "Which implementation of the kernels runs (1 = this one).",
            ["implementation"], registry=self.registry,
        )
        info.labels(implementation).set(1)
        self.commit_events = Histogram(
            "ingest_commit_batch_events", "Events in one group commit.",
            buckets=COMMIT_EVENTS_BUCKETS, registry=self.registry,
        )
        # Not per request: only refusals count, a client guessing tokens or
        # a device with a revoked one.
        self.access_refused = Counter(
            "ingest_access_refused", "Requests refused by access control (unauthorized, forbidden), by route.",
            ["route", "code"], registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "ingest_commit_duration_seconds", "Time to apply and durably commit one group commit.",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
