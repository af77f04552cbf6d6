"""`ingest drill`: prove failover on demand.

On one machine (two data directories, loopback ports), or on two real hosts
(`--hosts`, each node driven through a shell command template such as
`ssh {host} {command}`: ingest/drillnodes.py), it starts a primary and a
standby, drives a steady load of bindings through ingest.client, and then,
`failovers` times: waits until the standby has caught up, SIGKILLs the
primary at a random moment, promotes the standby, counts the events the
dead primary acknowledged that the promoted node lacks (lost at the
failover; in sync mode there must be none), writes out the dead primary's
log entries the new primary does not have (its unreplicated tail) and
replays them through the client (event ids make that safe; it is how an
operator recovers them while the dead disk can be read), and brings the
dead node back, from an empty directory, as the new primary's standby: by
the log while it still starts at seq 1, by a snapshot once retention
(LOG_KEEP) has trimmed it.
At the end every acknowledged event is checked on the last primary, and a
report is printed and written as JSON (a partial one when a step failed).
"""
from __future__ import annotations

import bisect
import json
import math
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ingest import _codes_py, config
from ingest.access import new_token, token_sha256
from ingest.client import Client, NoPrimary
from ingest.drillnodes import SNAPSHOT_INSTALLED, SYNC_DEGRADED, LocalNode, RemoteNode, parse_hosts

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PORT_MAX = 65535
# The ports of a drill on this machine, above --base-port: the nodes' HTTP
# ports, then their replication ports (make_nodes).
LOCAL_PORT_OFFSETS = (0, 1, 100, 101)
# Change-log retention of the drill's nodes: small enough that a rejoin from
# an empty directory soon needs a snapshot, large enough to hold any
# unreplicated tail (the standby has caught up shortly before each kill).
LOG_KEEP = 500


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


def drill_config(mode: str, token: str) -> str:
    """The shipped configuration with the drill's replication settings, and
    access control on: the drill's own token (this run's, made here and
    never written but as its hash) may bind and promote. Nodes on real
    hosts listen on every address, which needs tokens (or a proxy)."""
    text = config.default_text()
    text = config.edit(text, 'mode = "async"', f'mode = "{mode}"', "replication")
    text = config.edit(text, "sync_timeout_s = 10.0", "sync_timeout_s = 2.0", "replication")
    # Named, not inherited: after sync_timeout_s without a standby (the new
    # primary, until the dead node rejoins) answers go out without it, and
    # the drill relies on that to see a write after each failover. It also
    # means a sync pair that degrades can lose acknowledged writes at a
    # kill: the drill counts those (lost_at_failover) and fails on them.
    text = config.edit(text, 'on_standby_lost = "async"', 'on_standby_lost = "async"', "replication")
    text = config.edit(text, "log_keep_entries = 0", f"log_keep_entries = {LOG_KEEP}", "replication")
    return config.edit(text, "open_on_network = false\n", f"""open_on_network = false

[[access.tokens]]
name = "ingest drill"
roles = ["scan", "admin"]
sha256 = "{token_sha256(token)}"
""", "access")


class Drill:
    def __init__(self, workdir: Path, nodes: list, mode: str, failovers: int, seconds_between: float,
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
        # Two nodes with the same methods (ingest/drillnodes.py): local
        # processes or servers on real hosts; the steps below are the same.
        self.nodes = nodes
        self.token = new_token()
        for node in nodes:
            node.token = self.token
        stamp = int(time.time() * 1000) % 36**4
        self.events = Events("".join(ALNUM[(stamp // 36**i) % 36] for i in range(3, -1, -1)))
        self.load_error: BaseException | None = None
        self.acked: dict[str, tuple[dict, int]] = {}
        self.acked_at: list[float] = []
        # Per address, (event id, seq) of every 2xx it gave since it last
        # became primary: what a failover of it may have lost.
        self.acked_by: dict[str, list[tuple[str, int]]] = {}
        self.lock = threading.Lock()
        self.stop_load = threading.Event()
        self.t0 = time.monotonic()
        self.timeline: list[dict] = []
        self.report: dict = {"mode": mode, "nodes": {n.name: n.address for n in nodes}, "failovers": []}

    def note(self, what: str, **extra) -> None:
        self.timeline.append({"t": round(time.monotonic() - self.t0, 3), "event": what, **extra})

    def _load(self) -> None:
        client = Client([n.address for n in self.nodes], timeout_s=5, deadline_s=120, token=self.token)
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
                # Every 2xx is a promise: a 200 duplicate too (a retry whose
                # first answer died with the primary, or an event the tail
                # replay bound first), under the seq of its original.
                if status == 201:
                    seq = body["seq"]
                elif status == 200:
                    seq = body["original"]["seq"]
                else:
                    raise RuntimeError(f"unexpected answer {status}: {body}")
                with self.lock:
                    self.acked[ev["event_id"]] = (ev, seq)
                    self.acked_at.append(time.monotonic())
                    self.acked_by.setdefault(client.answered_by, []).append((ev["event_id"], seq))
        except BaseException as exc:  # a drill whose load died proves nothing
            self.load_error = exc
            self.stop_load.set()
        finally:
            client.close()

    def _wait_healthy(self, primary, standby, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = standby.status()
            pst = primary.status()
            repl = pst.get("replication", {})
            if st["replication"]["connected"] and st["replication"]["lag_events"] == 0 and not repl.get("degraded"):
                return pst
            time.sleep(0.1)
        raise RuntimeError("the standby did not catch up")

    def _first_ack_after(self, t: float, timeout: float = 30) -> float | None:
        """When the first write after `t` was acknowledged. Waited for: the
        new primary may hold its first answers (sync mode, until a standby
        has the entries or sync_timeout_s) past the rejoin; the load goes on,
        so one comes unless the load died."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                # acked_at is appended under the lock, so it is sorted
                i = bisect.bisect_right(self.acked_at, t)
                if i < len(self.acked_at):
                    return self.acked_at[i]
            if self.stop_load.is_set() or time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def _lost_at_failover(self, dead, promoted_last_seq: int) -> list[str]:
        """The events `dead` acknowledged (as primary: a standby answers no
        2xx) that the promoted node lacks: seqs above its last_seq, as the
        standby's log is a prefix of the primary's. Counted before the tail
        replay, which binds them again and would hide the loss from the
        final check while the dead disk can be read. The list is emptied:
        its seqs belong to the history this failover ended."""
        with self.lock:
            acks = self.acked_by.pop(dead.address, [])
        return [event_id for event_id, seq in acks if seq > promoted_last_seq]

    @staticmethod
    def _tail(dead, after: int) -> list[dict]:
        """The requests of the entries in the dead primary's log that the
        new primary lacks (ingest/tail.py)."""
        try:
            return dead.tail_after(after)
        except RuntimeError as exc:
            # Retention may have trimmed part of the tail: replaying the rest
            # would pass for a complete check and hide the loss.
            raise RuntimeError(f"cannot write out node {dead.name}'s tail after seq {after} (the drill's "
                               f"nodes keep {LOG_KEEP} log entries): {exc}") from None

    def run(self) -> dict:
        config_text = drill_config(self.mode, self.token)
        for node in self.nodes:
            node.setup(config_text)
        primary, standby = self.nodes
        primary.start(None)
        standby.start(primary)
        self.note("started", primary=primary.name, standby=standby.name)
        workers = [threading.Thread(target=self._load, daemon=True) for _ in range(self.threads)]
        for w in workers:
            w.start()
        replay = Client([n.address for n in self.nodes], timeout_s=5, deadline_s=120, token=self.token)
        for i in range(self.failovers):
            self._wait_healthy(primary, standby)
            # Counted from here, where the pair is whole: in sync mode an
            # answer without the standby comes only after a degradation.
            degraded_base = primary.log_count(SYNC_DEGRADED)
            time.sleep(self.random.uniform(0.3, 1.0) * self.seconds_between)
            before = primary.status()
            lag = standby.status()["replication"]["lag_events"]
            killed_at = time.monotonic()
            primary.kill()
            # The kill returns once the process is gone; an answer before
            # that may still be the old primary's (a remote kill takes a
            # round trip).
            dead_at = time.monotonic()
            self.note("killed", node=primary.name, last_seq=before["last_seq"], standby_lag_events=lag)
            promoted = standby.promote()
            self.note("promoted", node=standby.name, epoch=promoted["epoch"], last_seq=promoted["last_seq"])
            lost_here = self._lost_at_failover(primary, promoted["last_seq"])
            # what a sync primary does without its standby (the shipped config's, unless changed)
            self.report.setdefault("policy_on_standby_lost",
                                   before.get("replication", {}).get("policy_on_standby_lost"))
            degraded = primary.log_count(SYNC_DEGRADED) - degraded_base
            self.note("counted the acknowledged events the promoted node lacks", lost_at_failover=len(lost_here),
                      degraded_before_kill=degraded)
            tail = self._tail(primary, promoted["last_seq"])
            tail_file = self.workdir / f"tail-{i + 1}-{primary.name}.jsonl"
            tail_file.write_text("".join(json.dumps(request) + "\n" for request in tail))
            # The drill's load is bindings: newly bound is a 201 to one of those.
            replayed_new = sum(1 for request in tail
                               if replay.post(request["path"], request["body"])[0] == 201 and request["kind"] == "binding")
            self.note("tail replayed", written_out=len(tail), newly_bound=replayed_new, file=str(tail_file))
            primary.wipe()
            installs_before = primary.log_count(SNAPSHOT_INSTALLED)
            log_first_seq = standby.status()["log_first_seq"]
            primary.start(standby)
            self.note("rejoined as standby", node=primary.name, primary_log_first_seq=log_first_seq)
            self.report["failovers"].append({
                "killed": primary.name, "promoted": standby.name, "standby_lag_events_before_kill": lag,
                "lost_at_failover": len(lost_here), "lost_at_failover_event_ids": lost_here[:20],
                "degraded_before_kill": degraded,
                "tail_written_out": len(tail), "tail_newly_bound": replayed_new,
                "rejoin_primary_log_first_seq": log_first_seq,
            })
            primary, standby = standby, primary
            self._wait_healthy(primary, standby)
            first = self._first_ack_after(dead_at)
            self.report["failovers"][-1].update({
                "kill_to_first_write_s": round(first - killed_at, 3) if first else None,
                "rejoined_by_snapshot": standby.log_count(SNAPSHOT_INSTALLED) > installs_before,
            })
        self._wait_healthy(primary, standby)
        self.stop_load.set()
        for w in workers:
            w.join(120)
        self.note("load stopped", acked=len(self.acked))
        if self.load_error is not None:
            raise RuntimeError(f"the drill's load failed: {self.load_error!r}")
        lost, unchecked, seq_changed = check_acknowledged(self.acked, replay.bind)
        replay.close()
        found = len(self.acked) - len(lost) - len(unchecked)
        self.note("checked", found=found, lost=len(lost), unchecked=len(unchecked))
        for node in self.nodes:
            node.stop()
        first_writes = [f["kill_to_first_write_s"] for f in self.report["failovers"]]
        self.report.update({
            "acknowledged": len(self.acked), "found": found, "lost": len(lost), "unchecked": len(unchecked),
            "lost_at_failover": sum(f["lost_at_failover"] for f in self.report["failovers"]),
            "lost_event_ids": lost[:100], "unchecked_answers": unchecked[:20], "replayed_with_new_seq": seq_changed,
            # None when a failover saw no write at all: the worst case, not one to leave out
            "kill_to_first_write_s_max": None if None in first_writes or not first_writes else max(first_writes),
            "failovers_without_a_write": first_writes.count(None),
            "timeline": self.timeline,
        })
        return self.report


def check_acknowledged(acked: dict[str, tuple[dict, int]], bind) -> tuple[list[str], list[dict], int]:
    """Send each acknowledged event again (`bind(event) -> (status, body)`):
    a duplicate naming it is found; a 201 means the last primary did not
    have it (lost); any other answer means the check itself failed and
    proves nothing (unchecked). Returns (lost ids, unchecked answers, how
    many were found under another seq than first answered)."""
    lost, unchecked, seq_changed = [], [], 0
    for event_id, (ev, seq) in acked.items():
        status, body = bind(ev)
        if status == 201:
            lost.append(event_id)
        elif status == 200 and body.get("original", {}).get("event_id") == event_id:
            seq_changed += body["original"].get("seq") != seq
        else:
            unchecked.append({"event_id": event_id, "status": status, "body": body})
    return lost, unchecked, seq_changed


def make_nodes(args, workdir: Path, hosts: list[tuple[str, int, int]] | None) -> list:
    """Local nodes on loopback ports, or, with --hosts, one node per host."""
    if hosts is None:
        a_http, b_http, a_repl, b_repl = (args.base_port + offset for offset in LOCAL_PORT_OFFSETS)
        return [LocalNode("a", workdir, a_http, a_repl), LocalNode("b", workdir, b_http, b_repl)]
    return [RemoteNode(name, host, http_port, repl_port, args.remote_dir, args.remote, args.python)
            for name, (host, http_port, repl_port) in zip("ab", hosts)]


def check_options(args, hosts: list[tuple[str, int, int]] | None) -> None:
    """ValueError for options the drill cannot run with, before anything
    starts: found later they are a division by zero, a negative sleep with
    the servers up, or a server that cannot listen on its port."""
    if not (args.rate > 0 and math.isfinite(args.rate)):
        raise ValueError(f"--rate {args.rate:g}: events per second, above 0")
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: at least 1")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise ValueError(f"--seconds {args.seconds:g}: above 0")
    if args.failovers < 1:
        raise ValueError(f"--failovers {args.failovers}: at least 1")
    if hosts is None:
        top = PORT_MAX - max(LOCAL_PORT_OFFSETS)
        if not 1 <= args.base_port <= top:
            raise ValueError(f"--base-port {args.base_port}: 1 to {top} (the drill uses it, +1, +100 and +101)")
        return
    for host, http_port, repl_port in hosts:
        for port in (http_port, repl_port):
            if not 1 <= port <= PORT_MAX:
                raise ValueError(f"--hosts: port {port} of {host} is not 1 to {PORT_MAX}")


def passed(report: dict) -> bool:
    """Nothing lost or unchecked, every failover saw a write, and in sync
    mode no acknowledged event missing on a promoted node: the final check
    finds those only thanks to the tail replay, from a dead disk that a real
    failure need not leave readable."""
    return (report["lost"] == 0 and report["unchecked"] == 0 and report["acknowledged"] > 0
            and report["failovers_without_a_write"] == 0
            and (report["mode"] != "sync" or report["lost_at_failover"] == 0))


def main(args) -> int:
    hosts = None
    try:
        if args.hosts:
            hosts = parse_hosts(args.hosts, args.http_port, args.replication_port)
            if "{command}" not in args.remote:
                raise ValueError(f"--remote {args.remote!r} has no {{command}}")
            if not args.remote_dir.startswith("/"):
                raise ValueError("--remote-dir must be an absolute path")
        check_options(args, hosts)
    except ValueError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ingest-drill-"))
    nodes = make_nodes(args, workdir, hosts)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.report) if args.report else workdir / "drill-report.json"
    drill = Drill(workdir, nodes, args.mode, args.failovers, args.seconds, args.threads, args.seed, args.rate)
    # SIGTERM or SIGHUP would end the process without its finally blocks,
    # leaving both servers running: make them an exit that cleans up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on)
    failed = None
    try:
        report = drill.run()
    # A step that failed (a node that did not start, a host out of reach, a
    # standby that did not catch up): the drill proves nothing, says why in
    # one line, and keeps what it has for a look.
    except (RuntimeError, OSError, subprocess.TimeoutExpired, NoPrimary) as exc:
        failed = " ".join(str(exc).split()) or type(exc).__name__
        report = {**drill.report, "failed": failed, "timeline": drill.timeline}
    finally:
        drill.stop_load.set()
        for node in drill.nodes:
            if not node.started:
                continue  # nothing of this drill's runs there (a host never reached)
            try:
                node.kill()
            except Exception as exc:  # noqa: BLE001 - one node's cleanup must not skip the other's
                print(f"ingest: could not kill node {node.name} ({node.address}): {exc}", file=sys.stderr)
    written = _write_report(out, report)
    if failed is not None:
        logs = "" if any(n.log_where in failed for n in nodes) else \
            f"; node logs: {', '.join(n.log_where for n in nodes)}"
        print(f"ingest: drill failed: {failed}{logs}{f'; partial report: {out}' if written else ''}", file=sys.stderr)
        return 1
    if not written:
        return 1
    ok = passed(report)
    if ok:
        # The stores (a 64 MiB map each) have served their purpose; the
        # tails and the report stay. Kept after a failed drill, to look at.
        for node in nodes:
            if isinstance(node, LocalNode):
                shutil.rmtree(node.data, ignore_errors=True)
    print(f"mode {report['mode']}, {len(report['failovers'])} failovers: "
          f"{report['acknowledged']} events acknowledged, {report['found']} found, {report['lost']} lost; "
          f"{report['lost_at_failover']} not on the promoted node at a failover; "
          f"kill to first write at most {report['kill_to_first_write_s_max']} s; "
          f"tails written out {sum(f['tail_written_out'] for f in report['failovers'])}, "
          f"of which newly bound {sum(f['tail_newly_bound'] for f in report['failovers'])}. Report: {out}")
    if report["mode"] == "sync" and report["lost_at_failover"]:
        print(f"ingest: {_sync_loss(report)}", file=sys.stderr)
    if report["unchecked"]:
        print(f"ingest: {report['unchecked']} acknowledged events could not be checked (see unchecked_answers)",
              file=sys.stderr)
    if report["failovers_without_a_write"]:
        print(f"ingest: {report['failovers_without_a_write']} failovers saw no acknowledged write within 30 s",
              file=sys.stderr)
    return 0 if ok else 1


def _write_report(out: Path, report: dict) -> bool:
    try:
        out.write_text(json.dumps(report, indent=2))
    except OSError as exc:
        print(f"ingest: cannot write the report to {out}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def _sync_loss(report: dict) -> str:
    """Why a sync drill lost acknowledged events at a failover, in one line."""
    degraded = sum(f["degraded_before_kill"] for f in report["failovers"] if f["lost_at_failover"])
    policy = json.dumps(report.get("policy_on_standby_lost"))
    seen = (f"the killed primaries logged {SYNC_DEGRADED} {degraded} time(s) between a caught-up standby and "
            f"the kill (failovers[].degraded_before_kill)") if degraded else \
        "yet the killed primaries logged no degradation between a caught-up standby and the kill: a bug"
    return (f"{report['lost_at_failover']} acknowledged events were not on the promoted standby "
            f"(failovers[].lost_at_failover); the final check found them only because the dead primary's tail "
            f"was replayed from its disk. A sync primary answers without its standby only when degraded "
            f"(on_standby_lost = {policy}, no acknowledgement within sync_timeout_s): {seen}")


def _exit_on(sig: int, frame) -> None:
    raise SystemExit(128 + sig)


