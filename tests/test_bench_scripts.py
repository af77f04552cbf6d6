"""The benchmark scripts run, and what they print holds: the in-process
ones, and bench_ingest.py and capacity.py where wrk and taskset are
installed.

Capacity planners run these on new hardware; a script that rotted with the
code would be found only then. Tiny sizes: this checks that they work and
say what they measured, not how fast anything is.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port_base
from ingest import config, kernels, tls
from ingest.access import token_sha256
from ingest.store import Store
from test_loadtest import kill_leftovers, pids_mentioning

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_store_floor_replays_the_applys_writes_and_reports_each_round():
    out = run("bench/store_floor.py", "300", "--group", "100", "--rounds", "2")
    # store_floor exits 1 if a round's store differs from the recorded one
    head = re.search(r"^300 events in groups of 100: ([\d.]+) reads and writes per event \(kernels: ([\w.]+)\)$",
                     out, re.M)
    assert head, out
    assert float(head[1]) >= 7.0  # two reads and five writes per binding, plus the counters
    assert head[2] == ("ingest.rules" if kernels.PURE_PYTHON else "ingest._apply")
    rounds = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)\s+([\d,]+)$", out, re.M)
    assert [r[0] for r in rounds] == ["1", "2"]
    for _, apply_us, floor_us, ratio, apply_rate, floor_rate in rounds:
        assert float(apply_us) > 0 and float(floor_us) > 0
        assert abs(float(ratio) - float(floor_us) / float(apply_us)) < 0.01


def bench_module(name: str):
    """A script of bench/, imported (they import their neighbours by name)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_store_floor_records_only_the_attempt_that_commits(monkeypatch):
    """Store.write runs a group again after the map grows: a map too small
    for the first group makes it happen, and the floor must still replay
    exactly the apply's writes."""
    floor = bench_module("store_floor")
    monkeypatch.setattr(floor, "Store", functools.partial(Store, map_bytes_initial=1 << 18))
    window_ms = config.load().person_window_ms
    groups = floor.groups_of(2000, 400)
    recorded, digest = floor.record(groups, window_ms)
    assert [len(ops["_log"][1]) for ops in recorded] == [400] * 5  # one log entry per binding
    floor.timed([floor.replay_group(ops) for ops in recorded], digest, "floor")  # exits if it differs


def test_inproc_cpu_binds_every_event_it_sends():
    out = run("bench/inproc_cpu.py", "120", "--group", "12")
    assert re.fullmatch(r"[\d.]+ us CPU per event, group 12, batch 0, 120 bound\n", out), out


def test_inproc_cpu_with_access_control_binds_every_event():
    out = run("bench/inproc_cpu.py", "60", "--group", "12", "--access")
    assert re.fullmatch(r"[\d.]+ us CPU per event, group 12, batch 0, 60 bound, access control on\n", out), out


def test_inproc_cpu_binds_every_event_of_its_batches():
    out = run("bench/inproc_cpu.py", "300", "--group", "2", "--batch", "100")
    assert re.fullmatch(r"[\d.]+ us CPU per event, group 2, batch 100, 300 bound\n", out), out


def test_inproc_cpu_refuses_fewer_events_than_one_batch():
    proc = subprocess.run([sys.executable, "bench/inproc_cpu.py", "50", "--batch", "100"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == "inproc_cpu.py: error: events (50) must be at least --batch (100)"
    assert "Traceback" not in proc.stderr


def bench_ingest():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_ingest
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return bench_ingest


def test_bench_ingest_config_carries_every_option(tmp_path):
    path = bench_ingest().config_file(str(tmp_path), "sync", "a-token", ("/api.pem", "/api.key"),
                                      ("/node.pem", "/node.key", "/ca.pem"))
    cfg = config.load(path)
    assert cfg.replication.mode == "sync"
    assert [t.sha256 for t in cfg.access.tokens] == [token_sha256("a-token")]
    assert (cfg.http.tls_cert_file, cfg.http.tls_key_file) == ("/api.pem", "/api.key")
    assert (cfg.replication.tls_cert_file, cfg.replication.tls_key_file, cfg.replication.tls_ca_file) == (
        "/node.pem", "/node.key", "/ca.pem")


@pytest.mark.skipif(not shutil.which("openssl"), reason="--replication-tls makes its certificates with openssl")
def test_bench_ingest_pair_certificates_complete_a_mutual_handshake(tmp_path):
    bench = bench_ingest()
    pair = bench.make_pair_certificates(str(tmp_path))
    contexts = tls.replication_contexts(config.load(bench.config_file(str(tmp_path), pair=pair)).replication)
    # Both ends in memory: the standby's client context against the primary's listener.
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = contexts.server.wrap_bio(to_server, to_client, server_side=True)
    client = contexts.client.wrap_bio(to_client, to_server, server_side=False)
    done = set()
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if name not in done:
                try:
                    end.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
    assert done == {"client", "server"}
    assert server.getpeercert()["subject"] == ((("commonName", "bench-node"),),)


# -- the wrk benchmarks (tiny runs: they check what the tools say, not how fast) ---


needs_wrk = pytest.mark.skipif(not (shutil.which("wrk") and shutil.which("taskset")),
                               reason="the wrk benchmarks need wrk and taskset")


def bench(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@needs_wrk
def test_bench_ingest_counts_the_events_bound(tmp_path):
    proc = bench("bench_ingest.py", "--only", "single", "--duration", "3", "--expect-per-s", "30000",
                 "--port", str(free_port_base()), "--json", str(tmp_path / "out.json"))
    assert proc.returncode == 0, proc.stderr
    [single] = json.loads((tmp_path / "out.json").read_text())
    assert single["events_per_s"] == single["window_bound_per_s"] > 0
    assert single["non_2xx"] == 0


@needs_wrk
def test_bench_ingest_fails_when_wrk_runs_out_of_prepared_requests():
    """Past its pool wrk sends the same requests again; the server answers
    them 200 duplicate, which wrk counts as successes: the figure would be
    answers, not durable events."""
    proc = bench("bench_ingest.py", "--only", "single", "--duration", "4", "--expect-per-s", "1",
                 "--port", str(free_port_base()))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.fullmatch(r"bench_ingest: durable single-event: the prepared request pool ran out \(0 bound of "
                        r"[\d,]+ answered\): raise --expect-per-s\n", proc.stderr), proc.stderr


@needs_wrk
def test_capacity_fails_when_wrk_runs_out_of_prepared_requests(tmp_path):
    proc = bench("capacity.py", "--duration", "4", "--expect-per-s", "1", "--port", str(free_port_base()),
                 "--out", str(tmp_path / "report"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.fullmatch(r"capacity: single-event, no standby: the prepared request pool ran out \(0 bound of "
                        r"[\d,]+ answered\): raise --expect-per-s", proc.stderr.splitlines()[-1]), proc.stderr
    assert not (tmp_path / "report").exists()


@needs_wrk
@pytest.mark.parametrize(("script", "args", "wrk_offset"), [
    ("bench_ingest.py", ["--only", "single"], 1),
    ("capacity.py", [], 0),
])
def test_sigterm_stops_servers_and_wrk_and_removes_the_data(tmp_path, script, args, wrk_offset):
    base = free_port_base()
    args = [*args, "--port", str(base)]
    wrk_port = base + wrk_offset
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, f"bench/{script}", "--duration", "20", "--expect-per-s", "20000",
                             "--out" if script == "capacity.py" else "--json", str(tmp_path / "out"), *args],
                            cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wrk = f"127.0.0.1:{wrk_port}/v1/bindings"
    started = (wrk, f"--port {wrk_port}", str(tmp))  # wrk, the server it loads, any server with data
    try:
        deadline = time.monotonic() + 60
        while not pids_mentioning(wrk):
            assert proc.poll() is None and time.monotonic() < deadline, "no wrk started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        left = [pid for text in started for pid in pids_mentioning(text)]
    finally:
        proc.kill()
        for text in started:
            kill_leftovers(text)
    assert proc.returncode == 143, proc.stderr.read()
    assert left == []
    assert list(tmp.iterdir()) == []


@needs_wrk
def test_bench_ingest_needs_taskset(tmp_path):
    (tmp_path / "wrk").symlink_to(shutil.which("wrk"))  # wrk, and no taskset
    proc = bench("bench_ingest.py", env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr == "bench_ingest: needs wrk and taskset (Debian/Ubuntu: apt-get install wrk util-linux)\n"


@needs_wrk
def test_capacity_says_when_the_run_to_compare_is_missing(tmp_path):
    proc = bench("capacity.py", "--compare", str(tmp_path / "capacity-old.json"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr == f"capacity: cannot read --compare {tmp_path / 'capacity-old.json'}: No such file or directory\n"


@pytest.mark.parametrize("args", [["--hours", "0"], ["--people", "0"], ["--peak-factor", "0.5"],
                                  ["--pool-size", "0"]])
def test_capacity_refuses_a_campaign_that_cannot_be_before_it_measures(tmp_path, args):
    # It used to measure for minutes, then end in a ZeroDivisionError.
    proc = bench("capacity.py", *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "capacity.py: error: the campaign: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
