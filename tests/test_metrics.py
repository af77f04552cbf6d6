from ingest.metrics import LatencyCounter, Metrics


def test_latency_counter_buckets_are_cumulative_and_le():
    h = LatencyCounter((0.001, 0.01))
    for v in (0.0005, 0.001, 0.002, 5.0):
        h.observe(v)
    assert h.buckets() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert abs(h.total - 5.0035) < 1e-9


def test_exposition_has_the_documented_families():
    m = Metrics("cython", store_sizes=lambda: {"used_bytes": 10, "map_bytes": 20, "entries_log": 3})
    m.events[("bound", "")] += 2
    m.events[("rejected", "tube_full")] += 1
    m.latency["post_binding"].observe(0.0002)
    m.commit_events.observe(7)
    text = m.render().decode()
    assert 'ingest_events_total{code="",outcome="bound"} 2.0' in text
    assert 'ingest_events_total{code="tube_full",outcome="rejected"} 1.0' in text
    assert 'ingest_http_request_duration_seconds_bucket{le="0.00025",route="post_binding"} 1.0' in text
    assert "ingest_commit_batch_events_count 1.0" in text
    assert 'ingest_store_entries{table="log"} 3.0' in text
    assert 'ingest_build_info{implementation="cython"} 1.0' in text
