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
    # a passing drill removes its stores and keeps its tails
    work = tmp_path / "work"
    assert not (work / "data-a").exists() and not (work / "data-b").exists()
    assert len(list(work.glob("tail-*.jsonl"))) == 4


def test_the_final_check_counts_only_a_duplicate_naming_the_event_as_found():
    from ingest.drill import check_acknowledged

    answers = {
        "kept": (200, {"result": "duplicate", "original": {"event_id": "kept", "seq": 3}}),
        "moved": (200, {"result": "duplicate", "original": {"event_id": "moved", "seq": 9}}),
        "gone": (201, {"result": "bound", "seq": 12}),
        "full": (507, {"error": {"code": "insufficient_storage"}}),
        "other": (200, {"result": "duplicate", "original": {"event_id": "someone-else", "seq": 4}}),
    }
    acked = {event_id: ({"event_id": event_id}, seq) for event_id, seq in
             (("kept", 3), ("moved", 5), ("gone", 6), ("full", 7), ("other", 4))}
    lost, unchecked, seq_changed = check_acknowledged(acked, lambda ev: answers[ev["event_id"]])
    assert lost == ["gone"] and seq_changed == 1
    assert [u["event_id"] for u in unchecked] == ["full", "other"]


def test_sigterm_to_the_drill_stops_its_servers(tmp_path):
    import os
    import signal
    import socket
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "drill", "--workdir", str(tmp_path / "work"), "--failovers", "50",
         "--seconds", "1", "--base-port", "18680", "--threads", "1", "--rate", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # a signal to it alone
    try:
        def up(port: int) -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        deadline = time.monotonic() + 60
        while not (up(18680) and up(18681)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert up(18680) and up(18681), "the drill's servers did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while (up(18680) or up(18681)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not up(18680) and not up(18681), "a server outlived the drill"
    finally:
        try:  # the drill's session: it and whatever it left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
