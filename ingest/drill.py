"""`ingest drill`: prove failover on demand.

On one machine (two data directories, loopback ports) it starts a primary and
a standby, drives a steady load of bindings through ingest.client, and then,
`failovers` times: waits until the standby has caught up, SIGKILLs the
primary at a random moment, promotes the standby, writes out the dead
primary's log entries the new primary does not have (its unreplicated tail)
and replays them through the client (event ids make that safe), and brings
the dead node back, from an empty directory, as the new primary's standby:
by the log while it still starts at seq 1, by a snapshot once retention
(LOG_KEEP) has trimmed it.
At the end every acknowledged event is checked on the last primary, and a
report is printed and written as JSON.
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ingest import _codes_py
from ingest.client import Client, NoPrimary
from ingest.records import decode_log_entry
from ingest.store import Store

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Change-log retention of the drill's nodes: small enough that a rejoin from
# an empty directory soon needs a snapshot, large enough to hold any
# unreplicated tail (the standby has caught up shortly before each kill).
LOG_KEEP = 500
SNAPSHOT_INSTALLED = "installed the snapshot"


def _check_char(body: str, alphabet: str, ok) -> str:
    return next(c for c in alphabet if ok(body + c))


class Events:
    """Fresh valid bindings, 10 people to a tube, unique per drill."""

    def __init__(self, run: str):
        self.run = run
        self.n = 0
        self.lock = threading.Lock()

    def next(self) -> dict:
        with self.lock:
            self.n += 1
            n = self.n
        tube_body = f"10{(int(self.run, 36) * 7919 + n // 10) % 10**9:09d}"
        tube = tube_body + _check_char(tube_body, "0123456789", _codes_py.luhn_ok)
        body = "HC" + self.run[:4].rjust(4, "0") + "".join(ALNUM[(n // 36**i) % 36] for i in range(9, -1, -1))
        person = body + _check_char(body, ALNUM, _codes_py.mod37_36_ok)
        return {"event_id": f"drill-{self.run}-{n}", "site_id": "DRILL", "device_id": "drill", "tube": tube,
                "person": person, "pool_size": 10, "scanned_at": int(time.time() * 1000)}


class Node:
    def __init__(self, name: str, workdir: Path, http_port: int, repl_port: int, config: Path):
        self.name = name
        self.data = workdir / f"data-{name}"
        self.log = workdir / f"{name}.log"
        self.http_port = http_port
        self.repl_port = repl_port
        self.config = config
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self, follow: "Node | None") -> None:
        cmd = [sys.executable, "-m", "ingest", "serve", "--data", str(self.data), "--port", str(self.http_port),
               "--replication-port", str(self.repl_port), "--config", str(self.config), "--log-level", "WARNING"]
        if follow is not None:
            cmd += ["--follow", f"127.0.0.1:{follow.repl_port}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.status()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node {self.name} exited; see {self.log}") from None
                time.sleep(0.05)
        raise RuntimeError(f"node {self.name} did not start; see {self.log}")

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.address}/v1/status", timeout=5) as r:
            return json.loads(r.read())

    def promote(self) -> dict:
        req = urllib.request.Request(f"http://{self.address}/v1/admin/promote", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Drill:
    def __init__(self, workdir: Path, base_port: int, mode: str, failovers: int, seconds_between: float,
                 threads: int, seed: int | None, rate: float = 200.0):
        self.workdir = workdir
        self.mode = mode
        self.failovers = failovers
        self.seconds_between = seconds_between
        self.threads = threads
        # A steady load, as sites produce: a flood would also starve the
        # standby's catch-up on the same machine.
        self.interval_s = threads / rate
        self.random = random.Random(seed)
        config = workdir / "config.toml"
        from importlib import resources

        text = resources.files("ingest").joinpath("default_config.toml").read_text()
        text = text.replace('mode = "async"', f'mode = "{mode}"', 1).replace(
            "sync_timeout_s = 10.0", "sync_timeout_s = 2.0", 1).replace(
            "log_keep_entries = 0", f"log_keep_entries = {LOG_KEEP}", 1)
        config.write_text(text)
        self.nodes = [Node("a", workdir, base_port, base_port + 100, config),
                      Node("b", workdir, base_port + 1, base_port + 101, config)]
        stamp = int(time.time() * 1000) % 36**4
        self.events = Events("".join(ALNUM[(stamp // 36**i) % 36] for i in range(3, -1, -1)))
        self.load_error: BaseException | None = None
        self.acked: dict[str, tuple[dict, int]] = {}
        self.acked_at: list[float] = []
        self.lock = threading.Lock()
        self.stop_load = threading.Event()
        self.t0 = time.monotonic()
        self.timeline: list[dict] = []
        self.report: dict = {"mode": mode, "failovers": []}

    def note(self, what: str, **extra) -> None:
        self.timeline.append({"t": round(time.monotonic() - self.t0, 3), "event": what, **extra})

    def _load(self) -> None:
        client = Client([n.address for n in self.nodes], timeout_s=5, deadline_s=120)
        next_at = time.monotonic()
        try:
            while not self.stop_load.is_set():
                next_at += self.interval_s
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                ev = self.events.next()
                try:
                    status, body = client.bind(ev)
                except NoPrimary:
                    continue
                if status == 201:
                    with self.lock:
                        self.acked[ev["event_id"]] = (ev, body["seq"])
                        self.acked_at.append(time.monotonic())
                elif status != 200:
                    raise RuntimeError(f"unexpected answer {status}: {body}")
        except BaseException as exc:  # a drill whose load died proves nothing
            self.load_error = exc
            self.stop_load.set()
        finally:
            client.close()

    def _wait_healthy(self, primary: Node, standby: Node, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = standby.status()
            pst = primary.status()
            repl = pst.get("replication", {})
            if st["replication"]["connected"] and st["replication"]["lag_events"] == 0 and not repl.get("degraded"):
                return pst
            time.sleep(0.1)
        raise RuntimeError("the standby did not catch up")

    def _tail(self, dead: Node, after: int) -> list[dict]:
        """Bindings in the dead primary's log that the new primary lacks."""
        store = Store(str(dead.data))
        try:
            if store.log_start > after + 1:
                # Retention trimmed part of the tail: replaying the rest would
                # pass for a complete check and hide the loss.
                raise RuntimeError(f"node {dead.name}'s log starts at seq {store.log_start}; its tail after "
                                   f"seq {after} is no longer all there (LOG_KEEP {LOG_KEEP} too small)")
            out = []
            from ingest.events import BindingEvent

            for _seq, raw in store.log_raw(after, limit=10**9):
                entry = decode_log_entry(raw)
                if entry.kind == "binding":
                    fields = BindingEvent.__struct_fields__
                    out.append({k: v for k, v in zip(fields, entry.payload) if v is not None})
            return out
        finally:
            store.close()

    @staticmethod
    def _snapshots_installed(node: Node) -> int:
        """Snapshots the node has installed so far (its log outlives restarts)."""
        try:
            return node.log.read_text(errors="replace").count(SNAPSHOT_INSTALLED)
        except FileNotFoundError:
            return 0

    def run(self) -> dict:
        primary, standby = self.nodes
        primary.start(None)
        standby.start(primary)
        self.note("started", primary=primary.name, standby=standby.name)
        workers = [threading.Thread(target=self._load, daemon=True) for _ in range(self.threads)]
        for w in workers:
            w.start()
        replay = Client([n.address for n in self.nodes], timeout_s=5, deadline_s=120)
        for i in range(self.failovers):
            self._wait_healthy(primary, standby)
            time.sleep(self.random.uniform(0.3, 1.0) * self.seconds_between)
            before = primary.status()
            lag = standby.status()["replication"]["lag_events"]
            killed_at = time.monotonic()
            primary.kill()
            self.note("killed", node=primary.name, last_seq=before["last_seq"], standby_lag_events=lag)
            promoted = standby.promote()
            self.note("promoted", node=standby.name, epoch=promoted["epoch"], last_seq=promoted["last_seq"])
            tail = self._tail(primary, promoted["last_seq"])
            tail_file = self.workdir / f"tail-{i + 1}-{primary.name}.jsonl"
            tail_file.write_text("".join(json.dumps(ev) + "\n" for ev in tail))
            replayed_new = sum(1 for ev in tail if replay.bind(ev)[0] == 201)
            self.note("tail replayed", written_out=len(tail), newly_bound=replayed_new, file=str(tail_file))
            shutil.rmtree(primary.data, ignore_errors=True)
            installs_before = self._snapshots_installed(primary)
            log_first_seq = standby.status()["log_first_seq"]
            primary.start(standby)
            self.note("rejoined as standby", node=primary.name, primary_log_first_seq=log_first_seq)
            with self.lock:
                first = next((t for t in self.acked_at if t > killed_at), None)
            self.report["failovers"].append({
                "killed": primary.name, "promoted": standby.name, "standby_lag_events_before_kill": lag,
                "kill_to_first_write_s": round(first - killed_at, 3) if first else None,
                "tail_written_out": len(tail), "tail_newly_bound": replayed_new,
                "rejoin_primary_log_first_seq": log_first_seq,
            })
            primary, standby = standby, primary
            self._wait_healthy(primary, standby)
            self.report["failovers"][-1]["rejoined_by_snapshot"] = \
                self._snapshots_installed(standby) > installs_before
        self._wait_healthy(primary, standby)
        self.stop_load.set()
        for w in workers:
            w.join(120)
        self.note("load stopped", acked=len(self.acked))
        if self.load_error is not None:
            raise RuntimeError(f"the drill's load failed: {self.load_error!r}")
        lost, seq_changed = [], 0
        for event_id, (ev, seq) in self.acked.items():
            status, body = replay.bind(ev)
            if status == 201:
                lost.append(event_id)
            elif body.get("original", {}).get("seq") != seq:
                seq_changed += 1
        replay.close()
        self.note("checked", found=len(self.acked) - len(lost), lost=len(lost))
        for node in self.nodes:
            node.stop()
        first_writes = [f["kill_to_first_write_s"] for f in self.report["failovers"] if f["kill_to_first_write_s"]]
        self.report.update({
            "acknowledged": len(self.acked), "found": len(self.acked) - len(lost), "lost": len(lost),
            "lost_event_ids": lost[:100], "replayed_with_new_seq": seq_changed,
            "kill_to_first_write_s_max": max(first_writes) if first_writes else None,
            "timeline": self.timeline,
        })
        return self.report


def main(args) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ingest-drill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    drill = Drill(workdir, args.base_port, args.mode, args.failovers, args.seconds, args.threads, args.seed,
                  args.rate)
    try:
        report = drill.run()
    finally:
        for node in drill.nodes:
            node.kill()
    out = Path(args.report) if args.report else workdir / "drill-report.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"mode {report['mode']}, {len(report['failovers'])} failovers: "
          f"{report['acknowledged']} events acknowledged, {report['found']} found, {report['lost']} lost; "
          f"kill to first write at most {report['kill_to_first_write_s_max']} s; "
          f"tails written out {sum(f['tail_written_out'] for f in report['failovers'])}, "
          f"of which newly bound {sum(f['tail_newly_bound'] for f in report['failovers'])}. Report: {out}")
    return 0 if report["lost"] == 0 and report["acknowledged"] > 0 else 1


