"""`ingest drill --hosts`: the drill against "real hosts", and `ingest tail`.

The hosts are this machine: the `--remote` template is the local shell
instead of ssh, and each node has its own ports (HOST:HTTP:REPL), so every
node operation still goes through the template as a shell command, with the
server detached, killed by its pid file, its tail read through `ingest tail`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LABS_TOML, event, fresh_tube, stderr_lines
from ingest.drillnodes import fill, parse_hosts

PORTS = {"a": (18811, 18812), "b": (18821, 18822)}


def ingest(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "ingest", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def kill_leftovers(remote_dir) -> None:
    """SIGKILL servers a failed drill left running (detached, they would
    outlive the test), by their pid files, if they still serve from here."""
    for pid_file in remote_dir.glob("*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(remote_dir).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)


def test_sync_drill_through_a_remote_template_loses_nothing(tmp_path):
    remote_dir = tmp_path / "remote"
    try:
        check_sync_drill(tmp_path, remote_dir)
    finally:
        kill_leftovers(remote_dir)


def check_sync_drill(tmp_path, remote_dir):
    calls = tmp_path / "calls.log"
    report = tmp_path / "report.json"
    hosts = ",".join(f"127.0.0.1:{http}:{repl}" for http, repl in PORTS.values())
    # The template logs each call, then runs the command in a shell: what
    # ssh would do on a host.
    template = f"echo {{host}} >> {calls}; sh -c {{command}}"
    out = ingest("drill", "--hosts", hosts, "--remote", template, "--remote-dir", str(remote_dir),
                 "--python", sys.executable, "--mode", "sync", "--failovers", "3", "--seconds", "0.5",
                 "--threads", "2", "--rate", "200", "--seed", "5", "--workdir", str(tmp_path / "work"),
                 "--report", str(report), timeout=300)
    assert report.exists(), out.stderr[-3000:]
    result = json.loads(report.read_text())
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert result["nodes"] == {name: f"127.0.0.1:{http}" for name, (http, _) in PORTS.items()}
    assert result["acknowledged"] > 0
    assert result["lost"] == 0 and result["found"] == result["acknowledged"]
    assert len(result["failovers"]) == 3
    assert [f["killed"] for f in result["failovers"]] == ["a", "b", "a"]
    assert all(f["kill_to_first_write_s"] is not None for f in result["failovers"])
    kinds = [t["event"] for t in result["timeline"]]
    assert kinds.count("killed") == 3 and kinds.count("promoted") == 3
    # every node operation went through the template, on the named host
    lines = calls.read_text().split()
    assert len(lines) >= 3 * 4 and set(lines) == {"127.0.0.1"}
    # each tail was read on the "host" by `ingest tail` and saved here
    assert sorted(p.name for p in (tmp_path / "work").glob("tail-*.jsonl")) == \
        ["tail-1-a.jsonl", "tail-2-b.jsonl", "tail-3-a.jsonl"]
    # the nodes' files are in the remote directory, and the drill stopped
    # exactly its servers: no pid file left, nothing listens any more
    assert {p.name for p in remote_dir.iterdir()} >= {"data-a", "data-b", "a.log", "b.log"}
    assert not list(remote_dir.glob("*.pid"))
    assert all(refused(port) for pair in PORTS.values() for port in pair)


def test_tail_refuses_a_trimmed_log_and_a_missing_store(server_factory, tmp_path):
    srv = server_factory(config="[replication]\nlog_keep_entries = 2\n\n" + LABS_TOML)
    tube = fresh_tube()
    for _ in range(5):
        assert srv.post(event(tube))[0] == 201
    srv.stop()
    out = ingest("tail", "--data", str(srv.data), "--after", "0")
    assert out.returncode == 1 and "no longer all there" in out.stderr
    assert out.stdout == ""
    out = ingest("tail", "--data", str(tmp_path / "none"), "--after", "0")
    assert out.returncode == 1 and "cannot read the store" in out.stderr and "no such directory" in out.stderr
    # a tail of nothing must not be made from a store created on the spot
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("spec, error", [
    ("a", "two hosts"),
    ("a,b,c", "two hosts"),
    ("a:1,b", "neither"),
    ("a:1:x,b", "neither"),
    ("h:1:2,h:1:3", "distinct"),
])
def test_bad_hosts_are_refused(spec, error):
    with pytest.raises(ValueError, match=error):
        parse_hosts(spec, 8080, 9080)


def test_hosts_take_the_default_ports_or_their_own():
    assert parse_hosts("a,b:1:2", 8080, 9080) == [("a", 8080, 9080), ("b", 1, 2)]


def test_template_values_are_shell_quoted_once():
    command = "echo 'it''s' {host} $HOME"
    filled = fill("ssh {host} {command}", "h{command}", command)
    out = subprocess.run(["sh", "-c", filled.replace("ssh ", "printf '%s|' ", 1)], capture_output=True,
                         text=True, timeout=10)
    assert out.stdout == f"h{{command}}|{command}|"


def test_drill_refuses_bad_remote_options(tmp_path):
    out = ingest("drill", "--hosts", "a,b", "--remote", "ssh {host}", "--workdir", str(tmp_path / "w"))
    assert out.returncode == 2 and "{command}" in out.stderr
    out = ingest("drill", "--hosts", "a", "--workdir", str(tmp_path / "w"))
    assert out.returncode == 2 and "two hosts" in out.stderr
    assert not (tmp_path / "w").exists()


def test_a_host_out_of_reach_fails_the_drill_in_one_line(tmp_path):
    # what ssh says and does when the host does not answer
    template = "sh -c 'echo \"ssh: connect to host $0 port 22: Connection refused\" >&2; exit 255' {host} {command}"
    report = tmp_path / "report.json"
    out = ingest("drill", "--hosts", "127.0.0.1:18831:18832,127.0.0.1:18841:18842", "--remote", template,
                 "--remote-dir", str(tmp_path / "remote"), "--workdir", str(tmp_path / "work"),
                 "--report", str(report))
    assert out.returncode == 1, out.stderr
    lines = stderr_lines(out.stderr)
    assert len(lines) == 1, out.stderr  # no traceback, and no kill of a server never started
    assert lines[0].startswith("ingest: drill failed: node a on 127.0.0.1: ")
    assert "exited 255: ssh: connect to host 127.0.0.1 port 22: Connection refused" in lines[0]
    assert f"partial report: {report}" in lines[0]
    assert json.loads(report.read_text())["failed"] in lines[0]


def test_a_server_already_on_a_hosts_port_is_not_taken_for_the_drills_node(tmp_path):
    from test_drill import Foreign, run_beside

    remote_dir = tmp_path / "remote"
    foreign = Foreign(18831)
    try:
        out = run_beside(foreign, ["drill", "--hosts", "127.0.0.1:18831:18832,127.0.0.1:18841:18842",
                                   "--remote", "sh -c {command}", "--remote-dir", str(remote_dir),
                                   "--python", sys.executable, "--failovers", "1", "--seconds", "1",
                                   "--rate", "50", "--threads", "2", "--workdir", str(tmp_path / "work")])
    finally:
        foreign.close()
        kill_leftovers(remote_dir)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = stderr_lines(out.stderr)
    assert len(lines) == 1 and re.match(r"ingest: drill failed: node a[ :]", lines[0]), out.stderr
    assert f"127.0.0.1:{remote_dir}/a.log" in lines[0]
    assert not list(remote_dir.glob("*.pid"))  # the drill stopped what it started
