"""One command for a headless load test: server(s), Locust, checks, report.

    python loadtest/run.py --time 60 --users 40                   # primary + sync standby, 60 s
    python loadtest/run.py --time 600 --users 60 --shape day       # a campaign day in 10 minutes
    python loadtest/run.py --time 30 --standby none --workers 2    # Locust master and 2 workers

It starts a primary on its shipped configuration (and, unless `--standby
none`, a standby following it in sync or async mode) on loopback with fresh
data directories, runs Locust headless with loadtest/locustfile.py, and then:

- waits for the standby to apply everything and compares the digests of the
  two stores (they must be equal);
- checks every event Locust saw acknowledged against the primary's store
  (through `ingest export`): bindings, voids, seals, boxes and results;
- writes Locust's CSV files and HTML report, and summary.json / summary.md
  (requests, failures by kind, p50/p95/p99 latency, the store checks; the
  figures come from Locust's final statistics, locust-summary.json).

The exit status is 0 only when there was no failure (no wrong answer, no
transport error), no acknowledged event is missing and the digests agree.
Locust's own options can be added after `--`, e.g. `-- --loglevel WARNING`.
"""
from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=5) as r:
        return json.load(r)


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited; its log: {log}\n{log.read_text()[-2000:]}")
        try:
            status(port)
            return
        # HTTPException: free_port's ports are in the ephemeral range, where a
        # probe of a port nobody listens on yet can connect to itself.
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up within {timeout:.0f}s; its log: {log}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Pair:
    """A primary and, optionally, a standby, each in its own directory under `out`."""

    def __init__(self, out: Path, standby_mode: str, config: str | None):
        self.out = out
        self.config = config
        self.mode = standby_mode
        self.port, self.repl_port, self.standby_port = free_port(), free_port(), free_port()
        self.primary = self.standby = None

    def start(self) -> None:
        from ingest import config as ingest_config

        try:
            config = Path(self.config).read_text() if self.config else ingest_config.default_text()
        except OSError as exc:
            raise SystemExit(f"run.py: cannot read --config {self.config}: {exc.strerror or exc}") from None
        if self.mode == "sync":
            try:
                config = ingest_config.edit(config, 'mode = "async"', 'mode = "sync"', "replication")
            except ValueError as exc:
                raise SystemExit(f"run.py: --standby sync: {exc} (the config's [replication] must say "
                                 "mode = \"async\"; run.py switches it to sync)") from None
        else:
            try:
                mode = ingest_config.loads(config).replication.mode
            except ingest_config.ConfigError as exc:
                raise SystemExit(f"run.py: --config {self.config}: {exc}") from None
            if mode != "async":
                # The summary would say one mode while the pair ran another.
                raise SystemExit(f"run.py: --standby {self.mode}: the config's [replication] says mode = "
                                 f"\"{mode}\"; give one that says \"async\" (run.py makes it sync for --standby "
                                 "sync)")
        (self.out / "config.toml").write_text(config)
        serve = [PY, "-m", "ingest", "serve", "--host", "127.0.0.1", "--log-level", "WARNING",
                 "--config", str(self.out / "config.toml")]
        log = self.out / "primary.log"
        self.primary = subprocess.Popen(
            serve + ["--data", str(self.out / "data-primary"), "--port", str(self.port),
                     "--replication-port", str(self.repl_port)],
            stdout=log.open("w"), stderr=subprocess.STDOUT)
        wait_ready(self.port, self.primary, log)
        if self.mode != "none":
            log = self.out / "standby.log"
            self.standby = subprocess.Popen(
                serve + ["--data", str(self.out / "data-standby"), "--port", str(self.standby_port),
                         "--follow", f"127.0.0.1:{self.repl_port}",
                         # as in production: promoted, it serves the next standby
                         # (a sync-mode standby without one is refused)
                         "--replication-port", str(free_port())],
                stdout=log.open("w"), stderr=subprocess.STDOUT)
            wait_ready(self.standby_port, self.standby, log)
            self._wait(lambda: status(self.port)["replication"]["standbys"], "the standby to connect")

    def _wait(self, ready, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise SystemExit(f"gave up waiting for {what} after {timeout:.0f}s")
            time.sleep(0.2)

    def settle(self, timeout: float = 120.0) -> tuple[dict, str | None]:
        """Wait for the standby to apply the primary's whole log. The
        primary's status at the end ({} if it did not answer) and the node
        that stopped answering (None if both did): a server may die under
        load, and the run must still be checked and reported."""
        try:
            primary = status(self.port)
        except OSError:
            return {}, "primary"
        deadline = time.monotonic() + timeout
        while self.standby is not None:
            try:
                if status(self.standby_port)["last_seq"] >= primary["last_seq"]:
                    break
            except OSError:
                return primary, "standby"
            if time.monotonic() > deadline:
                break  # alive but behind: the digests will differ and say so
            time.sleep(0.2)
        return primary, None

    def stop(self) -> None:
        stop(self.standby)
        stop(self.primary)


def run_number() -> int:
    """The run number every Locust process is given (INGEST_LOAD_RUN, or a
    fresh one): processes that drew their own could make the same tubes
    (loadtest/codes.py keeps workers apart only within one run)."""
    value = os.environ.get("INGEST_LOAD_RUN") or str(random.SystemRandom().randrange(1, 2**16))
    if not value.isdigit():
        raise SystemExit(f"run.py: INGEST_LOAD_RUN must be a whole number, not {value!r}")
    return int(value)


def run_locust(args, url: str, out: Path, extra: list[str], run: int) -> int:
    files = str(HERE / "locustfile.py")
    if args.shape == "day":
        files += "," + str(HERE / "day_shape.py")
    common = ["-f", files, "--host", url]
    env = {**os.environ, "INGEST_LOAD_ACKS": str(out / "acks"), "INGEST_LOAD_SUMMARY": str(out / "locust-summary.json"),
           "INGEST_LOAD_RUN": str(run), "PYTHONUNBUFFERED": "1"}
    head = [PY, "-m", "locust", *common, "--headless", "-u", str(args.users), "-r", str(args.spawn_rate),
            "-t", f"{args.time}s", "--stop-timeout", "10", "--csv", str(out / "locust"),
            "--html", str(out / "report.html"), *extra]
    workers = []
    if args.workers:
        master_port = free_port()
        head += ["--master", "--expect-workers", str(args.workers), "--master-bind-host", "127.0.0.1",
                 "--master-bind-port", str(master_port)]
        for _ in range(args.workers):
            workers.append(subprocess.Popen(
                [PY, "-m", "locust", *common, "--worker", "--master-host", "127.0.0.1",
                 "--master-port", str(master_port)],
                env=env, stdout=subprocess.DEVNULL, stderr=(out / "workers.log").open("a")))
    try:
        return subprocess.call(head, env=env, timeout=args.time + 300)
    except BaseException:
        for w in workers:  # interrupted: without their master they would wait for it
            w.kill()
        raise
    finally:
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()


# -- end-of-run checks -----------------------------------------------------------


def read_acks(directory: Path) -> dict[str, list]:
    acks: dict[str, list] = {"binding": [], "void": [], "seal": [], "box": [], "receive": [], "result": []}
    for path in sorted(directory.glob("acks-*.jsonl")):
        with path.open() as f:
            for line in f:
                record = json.loads(line)
                acks[record[0]].append(record[1:])
    return acks


def export(data: Path, what: str, out: Path) -> Path:
    path = out / f"{what}.csv"
    subprocess.run([PY, "-m", "ingest", "export", what, "--data", str(data), "--out", str(path)], check=True)
    return path


def check_store(data: Path, acks: dict[str, list], out: Path) -> dict:
    """Every acknowledged event, looked up in the store: counts acknowledged and missing, by kind."""
    bindings: dict[str, tuple[str, str, bool]] = {}
    with export(data, "bindings", out).open() as f:
        for row in csv.DictReader(f):
            bindings[row["event_id"]] = (row["tube"], row["person"], row["voided_seq"] not in ("", "0"))
    tubes: dict[str, dict] = {}
    with export(data, "tubes", out).open() as f:
        for row in csv.DictReader(f):
            tubes[row["tube"]] = row
    results: dict[str, set[str]] = {}
    with export(data, "results", out).open() as f:
        for row in csv.DictReader(f):
            results.setdefault(row["tube"], set()).add(row["result"])

    order = ["open", "sealed", "boxed", "in_transit", "received", "resulted"]
    sealed_or_later, received_or_later = set(order[1:]), set(order[4:])
    checks = {
        "binding": lambda eid, tube, person: bindings.get(eid, (None, None))[:2] == (tube, person),
        "void": lambda eid, tube, person: bindings.get(eid, (None, None, False)) == (tube, person, True),
        "seal": lambda tube: tubes.get(tube, {}).get("state") in sealed_or_later,
        "box": lambda box, listed: all(tubes.get(t, {}).get("box") == box for t in listed),
        "receive": lambda box, listed: all(tubes.get(t, {}).get("state") in received_or_later for t in listed),
        "result": lambda tube, result: result in results.get(tube, set()),
    }
    report = {}
    for kind, records in acks.items():
        missing = [r for r in records if not checks[kind](*r)]
        report[kind] = {"acknowledged": len(records), "missing": len(missing), "first_missing": missing[:5]}
    for name in ("bindings", "tubes", "results"):
        (out / f"{name}.csv").unlink()  # large, and person codes: not left lying around
    return report


def digest(data: Path) -> str:
    from ingest.store import Store

    store = Store(str(data), map_bytes_initial=1 << 24)
    try:
        return store.digest()
    finally:
        store.close()


# -- the summary ---------------------------------------------------------------


SYNC_DEGRADED = "SYNC REPLICATION DEGRADED"  # a sync primary answered after its own commit only


def logged(path: Path) -> list[list]:
    """What a server logged (at WARNING, what an operator must see), as
    [message, times] most frequent first: the time stamp cut off and
    numbers read as N, so that one kind of line is counted once."""
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 2)
            message = re.sub(r"\d+", "N", parts[2] if len(parts) == 3 else line)
            counts[message] = counts.get(message, 0) + 1
    return sorted(([m, n] for m, n in counts.items()), key=lambda item: -item[1])


def _locust_figures(out: Path) -> dict:
    """Locust's final figures (locustfile.py writes them on quitting); an empty run if it never got there."""
    path = out / "locust-summary.json"
    if not path.exists():
        print(f"loadtest: Locust wrote no summary (it did not start or crashed); see {out}", file=sys.stderr)
        return {"requests": 0, "failures": 0, "requests_per_s": 0.0, "p50_ms": 0, "p95_ms": 0, "p99_ms": 0,
                "max_ms": 0, "by_request": {}, "failures_by_kind": []}
    return json.loads(path.read_text())


def write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    s = summary["locust"]
    lines = [
        f"# Load test: {summary['verdict']}", "",
        f"Command: `{summary['command']}`", "",
        f"- {summary['seconds']} s, {summary['users']} users, shape `{summary['shape']}`, "
        f"standby: {summary['standby']}, Locust workers: {summary['workers'] or 'none (one process)'}",
        f"- requests: {s['requests']} ({s['requests_per_s']:.0f}/s), failures: {s['failures']}",
        f"- latency: p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, "
        f"max {s['max_ms']:.0f} ms", "",
        "| failure | request | occurrences |", "|---|---|---|",
        *[f"| {f['error']} | {f['request']} | {f['occurrences']} |" for f in s["failures_by_kind"]],
        "" if s["failures_by_kind"] else "| (none) | | |", "",
        "| acknowledged | in the store | missing |", "|---|---|---|",
        *[f"| {k} | {v['acknowledged'] - v['missing']} of {v['acknowledged']} | {v['missing']} |"
          for k, v in summary["store"].items()], "",
    ]
    logs = summary.get("server_log_lines", {})
    idle = [k for k, v in summary["store"].items() if v["acknowledged"] == 0]
    if idle:
        # Not a failure (a short run may pack no box yet), but not tested either.
        lines += [f"Not exercised in this run: {', '.join(idle)} (no such event was acknowledged; "
                  "run longer, or with more users: one in 21 is a LabUser).", ""]
    lines += [f"Server warnings and errors logged: primary {logs.get('primary', 0)}, "
              f"standby {logs.get('standby', 0)} (see primary.log, standby.log)"
              + (":" if any(summary.get("server_logged", {}).values()) else "."), ""]
    for name, kinds in summary.get("server_logged", {}).items():
        # Double backticks: a logged line may hold single ones.
        lines += [f"- {name}, {n}×: `` {message[:300]} ``" for message, n in kinds[:10]]
        if len(kinds) > 10:
            lines.append(f"- {name}: {len(kinds) - 10} more kinds of line")
    if any(summary.get("server_logged", {}).values()):
        lines.append("")
    if summary.get("sync_degraded"):
        lines += [f"The sync standby fell behind: the primary logged `{SYNC_DEGRADED}` "
                  f"{summary['sync_degraded']} times and answered writes after its own commit only, so for a "
                  "while acknowledged events were on one disk: a sync run that degrades fails.", ""]
    if summary.get("lost"):
        lines += [f"The {summary['lost']} stopped answering before the end-of-run checks (see "
                  f"{summary['lost']}.log); the acknowledged events were looked up in the primary's data "
                  "directory as it was left.", ""]
    if summary.get("store_error"):
        lines += [f"The store check could not run: {summary['store_error']}.", ""]
    if summary.get("digests_equal") is not None:
        lines += [f"Primary and standby digests: {'equal' if summary['digests_equal'] else 'DIFFERENT'} "
                  f"(last sequence number {summary['last_seq']}).", ""]
    (out / "summary.md").write_text("\n".join(lines))


def check_limits(parser: argparse.ArgumentParser, args) -> None:
    """What loadtest/codes.py keeps apart: past it a user could not start."""
    from loadtest.codes import USERS_MAX, WORKERS_MAX
    from loadtest.day import starts_per_peak

    if not 0 <= args.workers <= WORKERS_MAX:
        parser.error(f"--workers: from 0 to {WORKERS_MAX} (loadtest/codes.py keeps their codes apart)")
    started = args.users * (starts_per_peak() if args.shape == "day" else 1) / max(args.workers, 1)
    if started > USERS_MAX:
        parser.error(f"--users: at most {USERS_MAX} users started per Locust process (a day shape starts "
                     f"{starts_per_peak():g} times its peak); add --workers")


def exit_on_sigterm() -> None:
    """SIGTERM (a timeout, a cancelled CI job) as SystemExit: Python's default
    ends the process at once, leaving the servers, Locust and the data
    directories behind; an exception runs the `finally` blocks that stop
    and remove them."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python loadtest/run.py", *argv])
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", type=int, default=60, help="seconds of load (default 60)")
    p.add_argument("--users", type=int, default=40, help="peak simulated users (default 40)")
    p.add_argument("--spawn-rate", type=float, default=20.0, help="users started per second (default 20)")
    p.add_argument("--standby", choices=["sync", "async", "none"], default="sync",
                   help="a standby following the primary, and its mode (default sync)")
    p.add_argument("--shape", choices=["flat", "day"], default="flat",
                   help="flat: all users for the whole run; day: a campaign day compressed into --time")
    p.add_argument("--workers", type=int, default=0, help="Locust workers (0: one Locust process)")
    p.add_argument("--out", default=None, help="results directory (default loadtest/results/<time>)")
    p.add_argument("--config", default=None,
                   help="server configuration (default: the shipped one); the model expects its rules")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the data directories and acks/ (the acknowledged events Locust saw)")
    args = p.parse_args(argv)
    check_limits(p, args)
    run = run_number()

    out = Path(args.out or HERE / "results" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "acks", ignore_errors=True)
    for name in ("data-primary", "data-standby"):
        shutil.rmtree(out / name, ignore_errors=True)
    pair = Pair(out, args.standby, args.config)
    print(f"loadtest: results in {out}", flush=True)
    try:
        ok = run_and_check(args, pair, out, extra, run, command)
    finally:
        if not args.keep_data:  # person codes: not left lying around
            for name in ("data-primary", "data-standby", "acks"):
                shutil.rmtree(out / name, ignore_errors=True)
    print((out / "summary.md").read_text())
    return 0 if ok else 1


def run_and_check(args, pair: Pair, out: Path, extra: list[str], run: int, command: str) -> bool:
    """The servers, Locust, the end-of-run checks and the summary; whether the run passed."""
    try:
        pair.start()
        print(f"loadtest: primary on 127.0.0.1:{pair.port}"
              + (f", {args.standby} standby on 127.0.0.1:{pair.standby_port}" if pair.standby else ""), flush=True)
        code = run_locust(args, f"http://127.0.0.1:{pair.port}", out, extra, run)
        primary_status, lost = pair.settle()
    finally:
        pair.stop()
    if lost:
        print(f"loadtest: the {lost} stopped answering; checking what the primary's data directory holds",
              file=sys.stderr, flush=True)
    print("loadtest: checking every acknowledged event against the store", flush=True)
    store, store_error = {}, None
    try:
        store = check_store(out / "data-primary", read_acks(out / "acks"), out)
    except subprocess.CalledProcessError:
        store_error = "ingest export failed on the primary's data directory (its error is above)"
    summary = {
        "command": command, "run": run,
        "seconds": args.time, "users": args.users, "shape": args.shape, "standby": args.standby,
        "workers": args.workers, "locust_exit": code, "last_seq": primary_status.get("last_seq"),
        "replication": primary_status.get("replication"), "lost": lost, "store_error": store_error,
        "locust": _locust_figures(out), "store": store,
    }
    # At WARNING level a server logs only what an operator must see (a sync
    # standby lost and the fall back to async, a store error): show them.
    summary["server_logged"] = {name: logged(out / f"{name}.log") for name in ("primary", "standby")}
    summary["server_log_lines"] = {name: sum(n for _, n in kinds) for name, kinds in summary["server_logged"].items()}
    summary["sync_degraded"] = sum(n for message, n in summary["server_logged"]["primary"]
                                   if SYNC_DEGRADED in message) if args.standby == "sync" else 0
    # A lost node's store is not the other's: there is nothing to compare.
    summary["digests_equal"] = (digest(out / "data-primary") == digest(out / "data-standby")
                                if pair.standby is not None and not lost else None)
    missing = sum(v["missing"] for v in store.values())
    ok = (code == 0 and summary["locust"]["failures"] == 0 and missing == 0 and not lost and not store_error
          and summary["digests_equal"] is not False and summary["locust"]["requests"] > 0
          and not summary["sync_degraded"])
    summary["verdict"] = "pass" if ok else "FAIL"
    write_summary(out, summary)
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
