"""`ingest drill` end to end: real processes, SIGKILL failovers at random moments."""
from __future__ import annotations

import json
import subprocess
import sys


def drill(tmp_path, *args) -> tuple[int, dict, str]:
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "ingest", "drill", "--workdir", str(tmp_path / "work"), "--report", str(report),
         "--threads", "2", "--rate", "200", *args],
        capture_output=True, text=True, timeout=600,
    )
    assert report.exists(), out.stderr[-3000:]
    return out.returncode, json.loads(report.read_text()), out.stdout


def test_sync_mode_loses_nothing_across_20_failovers(tmp_path):
    rc, report, stdout = drill(tmp_path, "--mode", "sync", "--failovers", "20", "--seconds", "0.5",
                               "--base-port", "18640", "--seed", "7")
    assert rc == 0, stdout
    assert len(report["failovers"]) == 20
    assert report["acknowledged"] > 0
    assert report["lost"] == 0 and report["found"] == report["acknowledged"]
    assert report["kill_to_first_write_s_max"] < 5
    kinds = [t["event"] for t in report["timeline"]]
    assert kinds.count("killed") == 20 and kinds.count("promoted") == 20
    # the drill keeps a short log: once it no longer starts at seq 1, a node
    # rejoining from an empty directory can only catch up by a snapshot
    trimmed = [f for f in report["failovers"] if f["rejoin_primary_log_first_seq"] > 1]
    assert trimmed, "the log was never trimmed: no rejoin needed a snapshot"
    assert all(f["rejoined_by_snapshot"] for f in trimmed)


def test_async_mode_replays_the_unreplicated_tail(tmp_path):
    rc, report, stdout = drill(tmp_path, "--mode", "async", "--failovers", "4", "--seconds", "0.5",
                               "--base-port", "18660", "--seed", "11")
    assert rc == 0, stdout
    # every acknowledged event is on the last primary: those that only the
    # killed primary had were written out and replayed (event ids make it safe)
    assert report["lost"] == 0 and report["found"] == report["acknowledged"] > 0
    newly_bound = sum(f["tail_newly_bound"] for f in report["failovers"])
    assert report["replayed_with_new_seq"] <= newly_bound
    assert all(f["tail_written_out"] >= f["tail_newly_bound"] for f in report["failovers"])
