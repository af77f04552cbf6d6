"""`ingest drill` end to end: real processes, SIGKILL failovers at random moments."""
from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import free_port_base, stderr_lines
from ingest.drill import LOCAL_PORT_OFFSETS

FOREIGN_NODE = "0f0f0f0f0f0f0f0f"


class Foreign:
    """A server the drill did not start, on a port it is told to use: it
    answers GET /v1/status as an ingest primary (or `status_body`) and binds
    whatever is posted, counting it."""

    def __init__(self, port: int, status_body: bytes | None = None):
        posts = self.posts = []
        status = status_body or json.dumps({"role": "primary", "node": FOREIGN_NODE, "epoch": 0,
                                            "last_seq": 0, "log_first_seq": 1}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self._answer(200, status)

            def do_POST(self):
                posts.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self._answer(201, json.dumps({"result": "bound", "seq": len(posts)}).encode())

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_beside(foreign: Foreign, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `ingest ARGV` in its own session; stop it (and whatever it
    started) at the first write the foreign server gets."""
    proc = subprocess.Popen([sys.executable, "-m", "ingest", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not foreign.posts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not foreign.posts, "the drill wrote into a server it did not start"
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
                               "--base-port", str(free_port_base(LOCAL_PORT_OFFSETS)), "--seed", "7")
    assert rc == 0, stdout
    assert len(report["failovers"]) == 20
    assert report["acknowledged"] > 0
    assert report["lost"] == 0 and report["found"] == report["acknowledged"]
    # ... and not because a tail replay put back what a promoted node lacked
    assert report["lost_at_failover"] == 0
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
                               "--base-port", str(free_port_base(LOCAL_PORT_OFFSETS)), "--seed", "11")
    assert rc == 0, stdout
    # every acknowledged event is on the last primary: those that only the
    # killed primary had were written out and replayed (event ids make it safe)
    assert report["lost"] == 0 and report["found"] == report["acknowledged"] > 0
    newly_bound = sum(f["tail_newly_bound"] for f in report["failovers"])
    assert report["replayed_with_new_seq"] <= newly_bound
    assert all(f["tail_written_out"] >= f["tail_newly_bound"] for f in report["failovers"])
    # an acknowledged event the promoted node lacked is in the tail, and new when replayed
    assert all(f["lost_at_failover"] <= f["tail_newly_bound"] for f in report["failovers"])
    assert report["lost_at_failover"] == sum(f["lost_at_failover"] for f in report["failovers"])
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

    base = free_port_base(LOCAL_PORT_OFFSETS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "drill", "--workdir", str(tmp_path / "work"), "--failovers", "50",
         "--seconds", "1", "--base-port", str(base), "--threads", "1", "--rate", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # a signal to it alone
    try:
        def up(port: int) -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        deadline = time.monotonic() + 60
        while not (up(base) and up(base + 1)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert up(base) and up(base + 1), "the drill's servers did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while (up(base) or up(base + 1)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not up(base) and not up(base + 1), "a server outlived the drill"
    finally:
        try:  # the drill's session: it and whatever it left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)


def test_a_server_already_on_the_port_is_not_taken_for_the_drills_node(tmp_path):
    base = free_port_base(LOCAL_PORT_OFFSETS)
    foreign = Foreign(base)
    report = tmp_path / "report.json"
    try:
        out = run_beside(foreign, ["drill", "--workdir", str(tmp_path / "work"), "--report", str(report),
                                   "--failovers", "1", "--seconds", "1", "--rate", "50", "--threads", "2",
                                   "--base-port", str(base)])
    finally:
        foreign.close()
    assert out.returncode == 1, out.stdout + out.stderr
    # one line, naming the node and its log: its server could not listen, or
    # it did, on a store whose node id is not the one answering
    lines = stderr_lines(out.stderr)
    assert len(lines) == 1 and re.match(r"ingest: drill failed: node a[ :]", lines[0]), out.stderr
    assert str(tmp_path / "work" / "a.log") in lines[0] and "Traceback" not in out.stderr
    partial = json.loads(report.read_text())
    assert partial["failed"] in lines[0] and partial["failovers"] == []


@pytest.mark.parametrize("status_body, answered", [
    (None, f"node {FOREIGN_NODE}"),
    (b"<html>hello</html>", "no ingest node"),
])
def test_a_node_counts_as_started_only_when_its_own_store_answers(tmp_path, status_body, answered):
    from ingest.drillnodes import LocalNode
    from ingest.store import Store

    foreign = Foreign(0, status_body)
    node = LocalNode("a", tmp_path, foreign.port, 1)
    store = Store(str(node.data), map_bytes_initial=1 << 20)
    own = store.node
    store.close()
    try:
        # alive, as a server still starting while the stranger answers
        node.proc = subprocess.Popen(["sleep", "30"])
        try:
            with pytest.raises(RuntimeError) as e:
                node._wait_serving(1)
            assert f"answers as {answered}, not as the server the drill started (node {own})" in str(e.value)
        finally:
            node.proc.kill()
            node.proc.wait(10)
        with pytest.raises(RuntimeError, match="node a exited"):  # whatever answers
            node._wait_serving(1)
    finally:
        foreign.close()
    assert not foreign.posts


@pytest.mark.parametrize("option, value, error", [
    ("--rate", "0", "--rate 0: events per second, above 0"),
    ("--rate", "nan", "--rate nan"),
    ("--threads", "0", "--threads 0: at least 1"),
    ("--seconds", "-1", "--seconds -1: above 0"),
    ("--failovers", "0", "--failovers 0: at least 1"),
    ("--base-port", "65535", "--base-port 65535: 1 to 65434"),
    ("--base-port", "0", "--base-port 0: 1 to 65434"),
    ("--hosts", "a:70000:1,b:2:3", "--hosts: port 70000 of a is not 1 to 65535"),
])
def test_drill_refuses_options_it_cannot_run_with(tmp_path, option, value, error):
    # (a later option of the same name wins: the others are valid)
    out = subprocess.run([sys.executable, "-m", "ingest", "drill", "--workdir", str(tmp_path / "w"),
                          "--failovers", "1", "--seconds", "0.5",
                          "--base-port", str(free_port_base(LOCAL_PORT_OFFSETS)), option, value],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = stderr_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"ingest: {error}"), out.stderr[-2000:]
    assert not (tmp_path / "w").exists()  # refused before anything started


def test_sync_drill_fails_when_the_promoted_node_lacked_acknowledged_events(tmp_path, monkeypatch, capsys):
    """The standby's stream stalls before the kill: the sync primary waits
    sync_timeout_s, degrades (on_standby_lost = "async") and acknowledges
    writes the standby never gets. The tail replay puts them back on the new
    primary, so the final check finds every one; the drill must fail all
    the same, and say why."""
    from proxy import Proxy

    from ingest import drill
    from ingest.cli import build_parser
    from ingest.drillnodes import LocalNode

    class StalledPrimary(LocalNode):
        """Node a: its standby follows it through a proxy, which stalls for
        longer than sync_timeout_s (the drill sets 2 s) before the kill."""

        def __init__(self, *args):
            super().__init__(*args)
            self.proxy = Proxy(self.repl_port)
            self.stalled = False

        @property
        def repl_address(self) -> str:
            return f"127.0.0.1:{self.proxy.port}"

        def kill(self) -> None:
            if not self.stalled and self.proc is not None and self.proc.poll() is None:
                self.stalled = True
                self.proxy.flowing.clear()
                # the load goes on: answers lack the standby once the gate gives up
                # (sync_timeout_s, on the next 0.5 s tick)
                time.sleep(3.0)
                super().kill()
                self.proxy.cut_all()  # what the proxy held is gone with the primary
                self.proxy.flowing.set()
            super().kill()

    nodes = []
    base = free_port_base(LOCAL_PORT_OFFSETS)

    def make_nodes(args, workdir, hosts):
        nodes[:] = [StalledPrimary("a", workdir, base, base + 100), LocalNode("b", workdir, base + 1, base + 101)]
        return nodes

    monkeypatch.setattr(drill, "make_nodes", make_nodes)
    report = tmp_path / "report.json"
    args = build_parser().parse_args([
        "drill", "--mode", "sync", "--failovers", "1", "--seconds", "0.2", "--threads", "2", "--rate", "100",
        "--seed", "3", "--base-port", str(base), "--workdir", str(tmp_path / "work"),
        "--report", str(report)])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = drill.main(args)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for node in nodes:
            node.kill()
        if nodes:
            nodes[0].proxy.close()
    out = capsys.readouterr()
    result = json.loads(report.read_text())
    # the replay hid them from the final check ...
    assert result["lost"] == 0 and result["found"] == result["acknowledged"] > 0
    # ... not from the drill
    assert rc == 1, out.out + out.err
    (failover,) = result["failovers"]
    assert result["lost_at_failover"] == failover["lost_at_failover"] > 0
    assert failover["tail_newly_bound"] >= failover["lost_at_failover"]
    assert failover["degraded_before_kill"] >= 1 and result["policy_on_standby_lost"] == "async"
    assert f"{failover['lost_at_failover']} acknowledged events were not on the promoted standby" in out.err
    assert "answers without its standby only when degraded" in out.err and "SYNC REPLICATION DEGRADED" in out.err
    assert (tmp_path / "work" / "data-a").exists()  # a failed drill keeps its stores
