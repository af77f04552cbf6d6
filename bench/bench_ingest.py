"""Throughput benchmark: durable single-event and batch ingest against the
no-op ceiling of the same HTTP stack, in one run.

    python bench/bench_ingest.py                      # all scenarios, 15 s each
    python bench/bench_ingest.py --duration 30 --connections 256 --json out.json

The server under test is pinned to CPU 0 and wrk to CPU 1 (taskset), on
loopback, over keep-alive connections. Every request of the single-event
scenario is a new valid binding (bench/wrk_bindings.lua), so each 201 is a
fresh event synced to disk; events/s counts the events the server bound,
and a run in which wrk went round its prepared requests (the server answers
the repeats 200 duplicate) fails: raise --expect-per-s (--batch-expect-per-s).
Needs wrk and taskset: `apt-get install wrk util-linux`.
Prints events/s, p50/p99 latency, the server's CPU use (and per event, split
between the event loop's thread and the committer's) and the ratio of
durable single-event throughput to the no-op ceiling.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_bindings.lua"
SERVER_CPU, LOAD_CPU = "0", "1"
# With --https: the servers speak TLS with a certificate made for the run,
# which this client does not verify (nor does wrk).
HTTPS: ssl.SSLContext | None = None


def scheme() -> str:
    return "https" if HTTPS else "http"


def get(port: int, path: str, timeout: float):
    return urllib.request.urlopen(f"{scheme()}://127.0.0.1:{port}{path}", timeout=timeout, context=HTTPS)


def wait_ready(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with get(port, "/livez", timeout=1):
                return
        # HTTPException: with --port in the ephemeral range, a probe of a
        # port nobody listens on yet can connect to itself.
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not come up")


def wait_following(port: int, timeout: float = 15.0) -> None:
    """Until the standby on `port` is connected to its primary: in sync mode
    the first answers would otherwise wait for it inside the measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get(port, "/v1/status", timeout=5) as r:
            if json.load(r).get("replication", {}).get("connected"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"the standby on port {port} did not connect to its primary")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU of a process, or of one of its threads."""
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu_seconds(pid: int) -> float:
    """CPU of the server's main thread, where the event loop runs (the
    committer and any other thread are the process's rest)."""
    return cpu_seconds(pid, pid)


def metric(port: int, name: str) -> float:
    with get(port, "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out: str) -> dict:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
    }


def counters(port: int) -> dict:
    """What the benchmarks follow in /metrics: requests answered on the write
    routes, events bound and answered as duplicates, and the write routes'
    latency histogram (cumulative count per upper bound, in seconds)."""
    with get(port, "/metrics", timeout=5) as r:
        text = r.read().decode()
    answered = bound = duplicate = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("ingest_http_request_duration_seconds") and ('route="noop"' in name
                                                                       or 'route="post_' in name):
            if name.startswith("ingest_http_request_duration_seconds_count"):
                answered += float(value)
            elif name.startswith("ingest_http_request_duration_seconds_bucket"):
                le = name.split('le="', 1)[1].split('"', 1)[0]
                upper_s = math.inf if le == "+Inf" else float(le)
                buckets[upper_s] = buckets.get(upper_s, 0.0) + float(value)
        elif name.startswith("ingest_events_total") and 'outcome="bound"' in name:
            bound += float(value)
        elif name.startswith("ingest_events_total") and 'outcome="duplicate"' in name:
            duplicate += float(value)
    return {"answered": answered, "bound": bound, "duplicate": duplicate, "buckets": buckets}


def check_bound(name: str, before: dict, after: dict, batch: int) -> None:
    """Every event answered between two scrapes must have been bound: each
    request wrk sends is a fresh valid binding, and the server counts an
    event and its answer in the same step (so no tolerance at the edges)."""
    answered = (after["answered"] - before["answered"]) * (batch or 1)
    bound = after["bound"] - before["bound"]
    if bound >= answered:
        return
    if after["duplicate"] > before["duplicate"]:
        # wrk went round its prepared requests again: the repeats are
        # answered 200 duplicate, which wrk counts as successes.
        option = "--batch-expect-per-s" if batch else "--expect-per-s"
        raise RuntimeError(f"{name}: the prepared request pool ran out ({bound:,.0f} bound of {answered:,.0f} "
                           f"answered): raise {option}")
    raise RuntimeError(f"{name}: the server refused events ({bound:,.0f} bound of {answered:,.0f} answered)")


def wrk_env(expect_per_s: int, duration: int, threads: int, batch: int) -> dict:
    """wrk_bindings.lua's settings: enough distinct requests that no thread
    wraps around within the run at up to 1.3 times the expected events/s
    (if it does, check_bound says so)."""
    count = math.ceil((expect_per_s * duration * 1.3 + 1000) / (batch or 1) / threads)
    return {"COUNT": str(count), "BATCH": str(batch), "RUN_ID": str(int(time.time()) % 90000 + 1)}


def start_wrk(port: int, path: str, duration: int, connections: int, threads: int, env: dict) -> subprocess.Popen:
    """wrk on the load generator's core, with the bindings script, latency percentiles on."""
    cmd = [
        "taskset", "-c", LOAD_CPU, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
        "-s", str(LUA), f"{scheme()}://127.0.0.1:{port}{path}",
    ]
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def end(proc: subprocess.Popen) -> None:
    """Kill wrk if it still runs (the scenario failed or was interrupted):
    it ignores SIGINT while it builds its requests, and left running it
    would load the next scenario's server."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def run_wrk(port: int, path: str, duration: int, connections: int, threads: int, env: dict, server_pid: int) -> dict:
    proc = start_wrk(port, path, duration, connections, threads, env)
    try:
        # wrk builds its request pool before its clock starts; the steady-state
        # window is found from the server's own answer count, and both processes'
        # CPU is sampled in it. wrk at 100% means the generator set the figure.
        window = {}
        baseline = counters(port)["answered"]  # the readiness probe may have been counted
        while proc.poll() is None and counters(port)["answered"] <= baseline:
            time.sleep(0.1)
        if proc.poll() is None:
            time.sleep(duration * 0.2)
            c0, t0 = counters(port), time.monotonic()
            s0, l0, w0 = cpu_seconds(server_pid), loop_cpu_seconds(server_pid), cpu_seconds(proc.pid)
            time.sleep(duration * 0.5)
            c1, t1 = counters(port), time.monotonic()
            s1, l1, w1 = cpu_seconds(server_pid), loop_cpu_seconds(server_pid), cpu_seconds(proc.pid)
            dt = t1 - t0
            window = {"window_requests_per_s": (c1["answered"] - c0["answered"]) / dt,
                      "window_bound_per_s": (c1["bound"] - c0["bound"]) / dt,
                      "server_cpu": (s1 - s0) / dt, "wrk_cpu": (w1 - w0) / dt, "loop_cpu": (l1 - l0) / dt,
                      "_window": (c0, c1)}
        out, err = proc.communicate(timeout=duration + 120)
    finally:
        end(proc)
    if proc.returncode != 0 or not window:
        raise RuntimeError(f"wrk failed: {err or out}")
    return {**parse_wrk(out), **window}


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start(cmd: list[str], port: int) -> subprocess.Popen:
    # A stale server from an earlier run would be measured instead of ours.
    if not port_is_free(port):
        raise RuntimeError(f"port {port} is already in use; stop what listens there or pass --port")
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"{' '.join(cmd)} did not start: {proc.stderr.read().decode()[-2000:]}") from None
    except BaseException:  # SIGTERM: the caller never gets the process to stop
        proc.kill()
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate and its key, for --https."""
    if not shutil.which("openssl"):
        raise RuntimeError("--https needs the openssl command (Debian/Ubuntu: apt-get install openssl)")
    cert, key = os.path.join(directory, "bench.pem"), os.path.join(directory, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def make_pair_certificates(directory: str) -> tuple[str, str, str]:
    """A CA and one certificate it signed (docs/replication.md's recipe),
    for --replication-tls: both nodes present the same one."""
    if not shutil.which("openssl"):
        raise RuntimeError("--replication-tls needs the openssl command (Debian/Ubuntu: apt-get install openssl)")
    ca, ca_key = os.path.join(directory, "pair-ca.pem"), os.path.join(directory, "pair-ca.key")
    cert, key, csr = (os.path.join(directory, f"pair-node.{ext}") for ext in ("pem", "key", "csr"))
    for cmd in (
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
         "-subj", "/CN=bench-pair-ca", "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=bench-node",
         "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1", "-out", cert],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    return cert, key, ca


def config_file(directory: str, mode: str = "async", token: str | None = None,
                certificate: tuple[str, str] | None = None, pair: tuple[str, str, str] | None = None) -> str:
    """A config file: the shipped one with [replication] mode set, with
    `token` the only access token (roles scan), with `certificate` (PEM
    files of a certificate and its key) HTTPS, with `pair` (certificate,
    key, CA) mutual TLS between primary and standby."""
    from ingest import config
    from ingest.access import token_sha256

    text = config.edit(config.default_text(), 'mode = "async"', f'mode = "{mode}"', "replication")
    if token:
        text += f'\n[[access.tokens]]\nname = "bench"\nroles = ["scan"]\nsha256 = "{token_sha256(token)}"\n'
    if certificate:
        text = config.edit(text, 'tls_cert_file = ""', f'tls_cert_file = "{certificate[0]}"', "http")
        text = config.edit(text, 'tls_key_file = ""', f'tls_key_file = "{certificate[1]}"', "http")
    if pair:
        for name, value in zip(("tls_cert_file", "tls_key_file", "tls_ca_file"), pair):
            text = config.edit(text, f'{name} = ""', f'{name} = "{value}"', "replication")
    path = os.path.join(directory, f"config-{mode}{'-access' if token else ''}{'-https' if certificate else ''}"
                                   f"{'-pair' if pair else ''}.toml")
    Path(path).write_text(text)
    return path


def scenario(name: str, cmd: list[str], port: int, path: str, args, batch: int = 0, real: bool = True,
             standby: list[str] | None = None) -> dict:
    env = wrk_env(args.batch_expect_per_s if batch else args.expect_per_s, args.duration, args.threads, batch)
    if args.token:
        env["TOKEN"] = args.token  # the no-op server reads the header and ignores it: the same bytes
    proc = start(cmd, port)
    follower = None
    try:
        if standby is not None:
            # The standby shares the load generator's core: this machine has two.
            follower = subprocess.Popen(["taskset", "-c", LOAD_CPU, *standby], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            wait_ready(port + 1)  # the standby listens right above the primary
            wait_following(port + 1)
        res = run_wrk(port, path, args.duration, args.connections, args.threads, env, proc.pid)
        window = res.pop("_window")
        if real:
            # Durable events are the ones bound: a 2xx may be a duplicate.
            check_bound(name, *window, batch)
            res["events_per_s"] = res["window_bound_per_s"]
        else:
            res["events_per_s"] = res["window_requests_per_s"]  # the no-op binds nothing
        # Where each event's core time went: the event loop's thread (HTTP,
        # decoding, checks, answers) and the rest (the committer: apply, commit).
        res["loop_us_per_event"] = res["loop_cpu"] / res["events_per_s"] * 1e6
        res["rest_us_per_event"] = (res["server_cpu"] - res["loop_cpu"]) / res["events_per_s"] * 1e6
        if real:
            res["bound"] = counters(port)["bound"]
            res["commits"] = metric(port, "ingest_commit_batch_events_count")
            res["events_per_commit"] = res["bound"] / res["commits"] if res["commits"] else 0.0
    finally:
        stop(proc)
        if follower is not None:
            stop(follower)
    res["name"] = name
    return res


def exit_on_sigterm() -> None:
    """SIGTERM (a timeout, a cancelled CI job) as SystemExit: Python's default
    ends the process at once, leaving the servers, wrk and the temporary data
    directories behind; an exception runs the `finally` blocks that stop and
    remove them."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=256)
    # One wrk thread: wrk starts sending on thread 1 while later threads still
    # build their request pools, which inflates its rate; one thread on its
    # own core is also what that core can drive.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000, help="events per batch request")
    parser.add_argument("--batch-connections", type=int, default=16)
    parser.add_argument("--expect-per-s", type=int, default=90_000,
                        help="events/s the single-event scenarios may reach: sizes wrk's pre-built request pool")
    # Batches bind several times more events per second than single requests.
    parser.add_argument("--batch-expect-per-s", type=int, default=150_000,
                        help="events/s the batch scenario may reach: sizes its pool")
    parser.add_argument("--port", type=int, default=18900)
    parser.add_argument("--only", choices=["noop", "single", "batch", "async", "sync"], action="append",
                        help="scenarios (default: noop, single, batch); async/sync add a standby")
    parser.add_argument("--access", action="store_true",
                        help="access control on: the servers hold a scan token, every request carries it")
    parser.add_argument("--https", action="store_true",
                        help="the servers (the no-op one too) speak HTTPS, with a certificate made for the run "
                             "(needs the openssl command)")
    parser.add_argument("--replication-tls", action="store_true",
                        help="the async/sync scenarios' primary and standby talk mutual TLS, with a CA and a "
                             "certificate made for the run (needs the openssl command)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        print("bench_ingest: needs wrk and taskset (Debian/Ubuntu: apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    only = set(args.only or ["noop", "single", "batch"])
    from ingest.access import new_token

    args.token = new_token() if args.access else None
    py = sys.executable
    results = []
    data = tempfile.mkdtemp(prefix="ingest-bench-")
    try:
        certificate = make_certificate(data) if args.https else None
        if certificate:
            global HTTPS
            HTTPS = ssl.create_default_context()
            HTTPS.check_hostname, HTTPS.verify_mode = False, ssl.CERT_NONE
        pair = make_pair_certificates(data) if args.replication_tls else None
        tls_only = ["--config", config_file(data, certificate=certificate)] if certificate else []
        if "noop" in only:
            results.append(scenario("noop ceiling", [py, str(HERE / "noop_server.py"), "--port", str(args.port),
                                                     *tls_only], args.port, "/v1/bindings", args, real=False))
        serve = [py, "-m", "ingest", "serve", "--port", str(args.port + 1), "--log-level", "WARNING"]
        single = serve + (["--config", config_file(data, token=args.token, certificate=certificate)]
                          if args.token or certificate else [])
        if "single" in only:
            results.append(scenario("durable single-event", single + ["--data", f"{data}/single"],
                                    args.port + 1, "/v1/bindings", args))
        for mode in ("async", "sync"):
            if mode in only:
                repl_port = args.port + 3
                primary = serve + ["--data", f"{data}/{mode}-primary", "--replication-port", str(repl_port),
                                   "--config", config_file(data, mode, args.token, certificate, pair)]
                follower = [py, "-m", "ingest", "serve", "--port", str(args.port + 2), "--log-level", "WARNING",
                            "--data", f"{data}/{mode}-standby", "--follow", f"127.0.0.1:{repl_port}",
                            *(["--config", config_file(data, certificate=certificate, pair=pair)] if pair
                              else tls_only)]
                results.append(scenario(f"durable single, {mode} standby", primary, args.port + 1, "/v1/bindings",
                                        args, standby=follower))
        if "batch" in only:
            b_args = argparse.Namespace(**{**vars(args), "connections": args.batch_connections})
            results.append(scenario(f"durable batch of {args.batch}", single + ["--data", f"{data}/batch"],
                                    args.port + 1, "/v1/bindings/batch", b_args, batch=args.batch))
    except RuntimeError as exc:  # a server that did not start, wrk failed, the pool ran out
        print(f"bench_ingest: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(data, ignore_errors=True)

    if args.token:
        print("access control on: the servers hold a scan token and every request carries it.")
    if args.https:
        print("HTTPS: every server, the no-op one too, speaks TLS (a P-256 certificate made for the run).")
    if args.replication_tls:
        print("replication TLS: primary and standby authenticate each other (a CA and a P-256 certificate "
              "made for the run).")
    print("events/s: events bound (answers for the no-op), counted by the server itself (/metrics), and CPU,")
    print("from /proc, over 20-70% of the run; req/s is wrk's figure over its whole run. loop and rest: the")
    print("server's CPU per event (per request for the no-op) on the event loop's thread and on its other")
    print("threads (the committer), in µs.")
    print(f"{'scenario':28s} {'events/s':>10s} {'req/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'srv CPU':>8s} {'wrk CPU':>8s} {'ev/commit':>9s} {'non-2xx':>8s} {'loop':>6s} {'rest':>6s}")
    for r in results:
        print(f"{r['name']:28s} {r['events_per_s']:10.0f} {r['requests_per_s']:10.0f} {r['p50_ms']:8.2f} "
              f"{r['p99_ms']:8.2f} {r['server_cpu']:8.0%} {r['wrk_cpu']:8.0%} "
              f"{r.get('events_per_commit', 0):9.1f} {r['non_2xx']:8d} "
              f"{r['loop_us_per_event']:6.2f} {r['rest_us_per_event']:6.2f}")
    by = {r["name"]: r for r in results}
    if "noop ceiling" in by and "durable single-event" in by:
        ratio = by["durable single-event"]["events_per_s"] / by["noop ceiling"]["events_per_s"]
        print(f"durable single-event / noop ceiling = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
