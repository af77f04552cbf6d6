"""Capacity report: can this machine take a campaign at its peak, with a sync standby?

    pip install -e '.[bench]'  &&  apt-get install wrk
    python bench/capacity.py                                   # 30 s per scenario, writes ./capacity-report/
    python bench/capacity.py --duration 60 --out docs          # what docs/capacity.md records
    python bench/capacity.py --people 12000000 --hours 24 --peak-factor 5
    python bench/capacity.py --compare docs/capacity.json      # and set the new run beside an old one

Measures sustained durable ingest on this machine, in one run:

- the load generator's own ceiling: wrk against a no-op server on the same
  HTTP stack, as requests per second per core of wrk;
- single-event and batch ingest, without a standby and with a sync standby
  (every answer waits for the standby's fsync as well).

The server runs on CPU 0; wrk (and the standby, when there is one) on CPU 1.
Events/s is counted by the server itself over the steady middle of each
scenario; latency percentiles are wrk's, over the whole scenario; the
per-second p99 in the chart is the server's own histogram (the upper bound
of the bucket holding the 99th percentile). A scenario whose wrk used more
than 90% of its core is marked generator-bound: its figure is a lower bound
on the server, not the server's. Events/s are the events bound: if wrk went
round its prepared requests (the server answers the repeats 200 duplicate)
the run fails; raise --expect-per-s or --batch-expect-per-s, as it says.

The campaign (people, hours, peak factor; the day shape of loadtest/day.py)
is an input: the report computes the peak rate it needs, whether each
measured rate holds it, the headroom and the time to ingest everyone.
Writes capacity.json (to compare runs), capacity.md and capacity.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ingest as bi  # noqa: E402
from campaign import Campaign  # noqa: E402

GENERATOR_BOUND_CPU = 0.90
WARMUP_SHARE, TAIL_SHARE = 0.2, 0.1  # of each scenario: not in the steady window


def p99_of(before: dict, after: dict) -> float:
    """99th percentile (ms, upper bucket bound) of the answers between two scrapes."""
    delta = sorted((le, after["buckets"].get(le, 0.0) - before["buckets"].get(le, 0.0)) for le in after["buckets"])
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return float("nan")
    for le, cumulative in delta:
        if cumulative >= 0.99 * total:
            return le * 1000 if le != math.inf else float("nan")
    return float("nan")


def run_scenario(name: str, cmd: list[str], port: int, path: str, args, progress, batch: int = 0,
                 standby: list[str] | None = None, standby_port: int | None = None) -> dict:
    env = bi.wrk_env(args.batch_expect_per_s if batch else args.expect_per_s, args.duration, 1, batch)
    server = bi.start(cmd, port)
    follower = None
    try:
        if standby is not None:
            follower = subprocess.Popen(["taskset", "-c", bi.LOAD_CPU, *standby], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            bi.wait_ready(standby_port)
            bi.wait_following(standby_port)
        wrk = bi.start_wrk(port, path, args.duration, args.batch_connections if batch else args.connections, 1, env)
        try:
            out, samples = _follow(name, server, wrk, port, progress)
        finally:
            bi.end(wrk)
        # The disk a binding takes: the store's pages in use over the events
        # in it (bound in this scenario only: each has a fresh store).
        store = ({"store_used_bytes": bi.metric(port, "ingest_store_used_bytes"),
                  "store_events": bi.counters(port)["bound"]} if name != "generator ceiling" else {})
    finally:
        bi.stop(server)
        if follower is not None:
            bi.stop(follower)
    res = {"name": name, **bi.parse_wrk(out), **_latency_line(out), **store, "series": samples}
    steady = [s for s in samples if args.duration * WARMUP_SHARE <= s["t"] <= args.duration * (1 - TAIL_SHARE)]
    if len(steady) < 2:
        raise RuntimeError(f"{name}: too short to find a steady window; use a longer --duration")
    first, last = steady[0].pop("_counters"), steady[-1].pop("_counters")
    if name != "generator ceiling":  # the no-op binds nothing
        bi.check_bound(name, first, last, batch)
    span = steady[-1]["t"] - steady[0]["t"]
    counted = "answered" if name == "generator ceiling" else "bound"
    res["events_per_s"] = (last[counted] - first[counted]) / span if span else 0.0
    res["server_cpu"] = sum(s["server_cpu"] for s in steady[1:]) / (len(steady) - 1)
    res["wrk_cpu"] = sum(s["wrk_cpu"] for s in steady[1:]) / (len(steady) - 1)
    for s in samples:
        s.pop("_counters", None)
    res["generator_bound"] = res["wrk_cpu"] > GENERATOR_BOUND_CPU
    return res


def _follow(name: str, server, wrk, port: int, progress) -> tuple[str, list[dict]]:
    """A sample of the server's counters and both processes' CPU every second
    until wrk ends; wrk's output and the samples."""
    # wrk builds its requests before its clock starts: time 0 is the first answer.
    first = bi.counters(port)
    while wrk.poll() is None and bi.counters(port)["answered"] <= first["answered"]:
        time.sleep(0.05)
    samples = []
    t0 = time.monotonic()
    prev = bi.counters(port)
    prev_t, prev_s, prev_w = t0, bi.cpu_seconds(server.pid), bi.cpu_seconds(wrk.pid)
    while wrk.poll() is None:
        time.sleep(1.0)
        try:
            now, cur_s, cur_w = time.monotonic(), bi.cpu_seconds(server.pid), bi.cpu_seconds(wrk.pid)
        except (FileNotFoundError, ProcessLookupError):
            break  # wrk ended between the poll and the read
        cur = bi.counters(port)
        dt = now - prev_t
        samples.append({
            "t": round(now - t0, 2),
            "events_per_s": ((cur["bound"] - prev["bound"]) if name != "generator ceiling"
                             else (cur["answered"] - prev["answered"])) / dt,
            "p99_ms": p99_of(prev, cur),
            "server_cpu": (cur_s - prev_s) / dt, "wrk_cpu": (cur_w - prev_w) / dt,
            "_counters": cur,
        })
        prev, prev_t, prev_s, prev_w = cur, now, cur_s, cur_w
        progress.update(1)
    out, err = wrk.communicate(timeout=60)
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed: {err or out}")
    return out, samples


def _latency_line(out: str) -> dict:
    for line in out.splitlines():
        if line.startswith("LATENCY_US"):
            fields = dict(kv.split("=") for kv in line.split()[1:])
            return {f"{k}_ms": int(v) / 1000 for k, v in fields.items()}
    return {}


def measure(args, progress) -> list[dict]:
    py = sys.executable
    port = args.port
    serve = [py, "-m", "ingest", "serve", "--port", str(port), "--log-level", "WARNING"]
    data = tempfile.mkdtemp(prefix="ingest-capacity-")
    results = []
    try:
        results.append(run_scenario("generator ceiling", [py, str(HERE / "noop_server.py"), "--port", str(port)],
                                    port, "/v1/bindings", args, progress))
        sync_config = bi.config_file(data, "sync")
        for batch in (0, args.batch):
            kind = f"batch of {batch}" if batch else "single-event"
            path = "/v1/bindings/batch" if batch else "/v1/bindings"
            results.append(run_scenario(f"{kind}, no standby", serve + ["--data", f"{data}/{kind}"], port, path,
                                        args, progress, batch=batch))
            shutil.rmtree(f"{data}/{kind}", ignore_errors=True)
            primary = serve + ["--data", f"{data}/{kind}-p", "--replication-port", str(port + 2),
                               "--config", sync_config]
            standby = [py, "-m", "ingest", "serve", "--port", str(port + 1), "--log-level", "WARNING",
                       "--data", f"{data}/{kind}-s", "--follow", f"127.0.0.1:{port + 2}"]
            results.append(run_scenario(f"{kind}, sync standby", primary, port, path, args, progress, batch=batch,
                                        standby=standby, standby_port=port + 1))
            shutil.rmtree(f"{data}/{kind}-p", ignore_errors=True)
            shutil.rmtree(f"{data}/{kind}-s", ignore_errors=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return results


# -- the report ------------------------------------------------------------------


def build_report(results: list[dict], campaign: Campaign, command: str) -> dict:
    generator = results[0]
    scenarios = []
    for r in results[1:]:
        scenarios.append({**{k: v for k, v in r.items() if k != "series"}, **campaign.verdict(r["events_per_s"]),
                          "series": r["series"]})
    return {
        "command": command,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "implementation": _implementation(), "commit": _commit()},
        "campaign": campaign.as_dict(),
        "generator": {"requests_per_s": generator["events_per_s"], "wrk_cpu": generator["wrk_cpu"],
                      "ceiling_requests_per_s": generator["events_per_s"] / max(generator["wrk_cpu"], 1e-9),
                      "series": generator["series"]},
        "scenarios": scenarios,
    }


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _implementation() -> str:
    out = subprocess.run([sys.executable, "-c", "import ingest.codes as c; print(c.IMPLEMENTATION)"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def markdown(report: dict, compare: dict | None) -> str:
    c = report["campaign"]
    g = report["generator"]
    headline = next(s for s in report["scenarios"] if s["name"] == "single-event, sync standby")
    lines = [
        "# Capacity report", "",
        f"Command: `{report['command']}`  ",
        f"Run: {report['when']} on {report['machine']['cpus']} CPUs, {report['machine']['platform']}, "
        f"Python {report['machine']['python']}, kernels: {report['machine']['implementation']}"
        f"{', code at ' + report['machine']['commit'] if report['machine'].get('commit') else ''}.", "",
        "## The campaign (inputs)", "",
        f"- {c['people']:,} people in {c['hours']:g} hours: a mean of {c['mean_people_per_s']:,.0f} people/s",
        f"- {c['events_per_person']:.2f} events per person: their binding, and a share of their tube's "
        f"lifecycle ({c['pool_size']} people per tube: a seal and a result per tube; {c['tubes_per_box']} tubes "
        "per box: packing, hand-over and receipt per box), each one request and one log entry like a binding: "
        f"a mean of **{c['mean_events_per_s']:,.0f} events/s**",
        f"- stated peak factor {c['peak_factor']:g}; the day shape's own peak factor is "
        f"{c['shape_peak_factor']:.2f} (busiest hour over the day's mean; loadtest/day.py)",
        f"- required peak: mean × max(factors) = **{c['required_peak_events_per_s']:,.0f} events/s**", "",
        "## Verdict", "",
        f"**{c['people']:,} people in {c['hours']:g} hours at a peak factor of {c['peak_factor']:g}: "
        f"{'holds' if headline['holds'] else 'does NOT hold'}** on this machine with a sync standby, "
        f"one event per request: {headline['sustained_events_per_s']:,.0f} events/s sustained against "
        f"{c['required_peak_events_per_s']:,.0f} needed at the peak, a headroom of "
        f"**{headline['headroom']:.1f}×**; everyone would be ingested in "
        f"{headline['hours_for_all_people']:.1f} hours of such load.", "",
        "## Measured", "",
        f"Load generator ceiling (wrk, one thread, against a no-op server): {g['requests_per_s']:,.0f} req/s "
        f"at {g['wrk_cpu']:.0%} of its core, i.e. **{g['ceiling_requests_per_s']:,.0f} req/s per core of wrk**.", "",
        "| scenario | events/s | p50 ms | p95 ms | p99 ms | server CPU | wrk CPU | bound by | holds the peak | "
        "headroom | hours for everyone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["scenarios"]:
        lines.append(
            f"| {s['name']} | {s['events_per_s']:,.0f} | {s.get('p50_ms', float('nan')):.2f} | "
            f"{s.get('p95_ms', float('nan')):.2f} | {s.get('p99_ms', float('nan')):.2f} | {s['server_cpu']:.0%} | "
            f"{s['wrk_cpu']:.0%} | {'generator (lower bound)' if s['generator_bound'] else 'server'} | "
            f"{'yes' if s['holds'] else 'NO'} | {s['headroom']:.1f}× | {s['hours_for_all_people']:.2f} |")
    lines += [
        "", "Events/s: counted by the server over the steady middle of each scenario. Latency: wrk, whole "
        "scenario. non-2xx answers: " + ", ".join(f"{s['name']}: {s['non_2xx']}" for s in report["scenarios"]) + ".",
        "", "![throughput and p99 over time](capacity.png)", "",
        *_disk(report), "## Hour by hour", "",
        "Events/s each open hour needs under the day shape (without the peak factor's minute-scale bursts):", "",
        "| " + " | ".join(f"{h['hour']:02d}h" for h in c["hourly_events_per_s"]) + " |",
        "|" + "---|" * len(c["hourly_events_per_s"]),
        "| " + " | ".join(f"{h['events_per_s']:,.0f}" for h in c["hourly_events_per_s"]) + " |", "",
    ]
    if compare:
        old = {s["name"]: s for s in compare.get("scenarios", [])}
        lines += ["## Against the earlier run", "", f"Earlier: `{compare.get('command', '?')}` "
                  f"({compare.get('when', '?')})", "",
                  "| scenario | earlier events/s | now events/s | now / earlier | earlier p99 ms | now p99 ms |",
                  "|---|---|---|---|---|---|"]
        for s in report["scenarios"]:
            o = old.get(s["name"])
            if o:
                lines.append(f"| {s['name']} | {o['events_per_s']:,.0f} | {s['events_per_s']:,.0f} | "
                             f"{s['events_per_s'] / o['events_per_s']:.2f} | {o.get('p99_ms', float('nan')):.2f} | "
                             f"{s.get('p99_ms', float('nan')):.2f} |")
        lines.append("")
    lines += [
        "## How to read and remake this report", "",
        "- *events/s* is durable ingest: every event counted was fsynced (and, with a sync standby, applied and "
        "fsynced by the standby) before its answer. The server had one core (CPU 0); wrk and the standby "
        "shared the other.",
        "- *bound by*: `server` when wrk stayed under 90% of its core, so the figure is the server's; "
        "`generator` marks a lower bound. The generator ceiling above is what wrk can send per core.",
        "- *holds the peak*: sustained events/s ≥ the required peak; *headroom* = sustained / required; "
        "*hours for everyone*: the campaign's events (its people's bindings and their tubes' lifecycle) at the "
        "sustained rate. The scenarios measure bindings; a seal, box, hand-over, receipt or result is counted as "
        "costing the same.",
        "- Real phones send one event per request; batches are what offline phones replaying a backlog send. "
        "The verdict uses the most demanding realistic case: single events with a sync standby.",
        "- Remake it: `pip install -e '.[bench]'`, `apt-get install wrk`, then the command at the top; "
        "`--people/--hours/--peak-factor/--pool-size/--tubes-per-box` change the campaign, "
        "`--compare OLD/capacity.json` sets a new run "
        "beside an old one (`--out docs --compare docs/capacity.json`: the report the run replaces, read "
        "before it is). The load test that checks every answer under a campaign day is in "
        "[loadtest.md](loadtest.md).", "",
    ]
    return "\n".join(lines)


def _map_size_for(used: float) -> int:
    """The LMDB map a store of `used` bytes has grown to: the shipped
    store.map_bytes_initial, doubled until it holds them (Store's growth)."""
    from ingest import config

    size = config.load().store.map_bytes_initial
    while size < used:
        size *= 2
    return size


def _disk(report: dict) -> list[str]:
    """The store a node needs for the campaign's bindings, from the
    single-event scenario's store (none in a report from before it)."""
    s = next((s for s in report["scenarios"] if s["name"] == "single-event, no standby"), {})
    if not s.get("store_events"):
        return []
    c = report["campaign"]
    per_binding = s["store_used_bytes"] / s["store_events"]
    total = per_binding * c["people"]
    return [
        "## Disk", "",
        f"The single-event scenario's store held {s['store_events']:,.0f} bindings in "
        f"{s['store_used_bytes'] / 2**20:,.1f} MiB of pages: **{per_binding:,.0f} bytes per binding** (its "
        "records, indexes and change-log entry; codes rising with each event, kind to the B-trees). "
        f"{c['people']:,} bindings: **{total / 2**30:,.1f} GiB on each node** (primary and standby), before the "
        "lifecycle's records (seals, boxes, results) and with the whole change log kept (`log_keep_entries = 0`). "
        "The map doubles when full and is allocated on disk up front (operations.md), so leave the disk "
        f"room for the map size it doubles to past that: {_map_size_for(total) / 2**30:,.0f} GiB.",
        "",
    ]


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for s in report["scenarios"]:
        t = [x["t"] for x in s["series"]]
        top.plot(t, [x["events_per_s"] for x in s["series"]], label=s["name"])
        bottom.plot(t, [x["p99_ms"] for x in s["series"]], label=s["name"])
    need = report["campaign"]["required_peak_events_per_s"]
    top.axhline(need, color="black", linestyle="--", linewidth=1)
    top.text(0.01, need * 1.08, f"the campaign's peak needs {need:,.0f} events/s", transform=top.get_yaxis_transform())
    top.set_yscale("log")
    top.set_ylabel("events/s (log)")
    top.set_title("Durable ingest on this machine, per second")
    top.legend(fontsize=8, loc="lower right")
    bottom.set_yscale("log")
    bottom.set_ylabel("server p99 ms (bucket bound, log)")
    bottom.set_xlabel("seconds into the scenario")
    for ax in (top, bottom):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_compare(path: str) -> dict:
    """The earlier report, read before the run: a wrong path should not cost one."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        print(f"capacity: cannot read --compare {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> int:
    bi.exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=30, help="seconds per scenario (default 30)")
    p.add_argument("--people", type=int, default=35_000_000)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--peak-factor", type=float, default=4.0)
    p.add_argument("--pool-size", type=int, default=10, help="people per tube (default 10)")
    p.add_argument("--tubes-per-box", type=int, default=5, help="tubes per box sent to the lab (default 5)")
    p.add_argument("--connections", type=int, default=256, help="wrk connections, single events")
    p.add_argument("--batch", type=int, default=1000, help="events per batch request")
    p.add_argument("--batch-connections", type=int, default=16)
    p.add_argument("--expect-per-s", type=int, default=90_000,
                   help="events/s the single-event scenarios may reach: sizes wrk's pre-built request pool")
    # Batches bind several times more events per second than single requests.
    p.add_argument("--batch-expect-per-s", type=int, default=150_000,
                   help="events/s the batch scenarios may reach: sizes their pools")
    p.add_argument("--port", type=int, default=18950)
    p.add_argument("--out", default="capacity-report", help="directory for capacity.{json,md,png}")
    p.add_argument("--compare", default=None, help="an earlier capacity.json to set beside this run")
    args = p.parse_args()
    try:
        campaign = Campaign(args.people, args.hours, args.peak_factor, args.pool_size, args.tubes_per_box)
    except ValueError as exc:
        p.error(f"the campaign: {exc}")
    if not shutil.which("wrk") or not shutil.which("taskset"):
        print("capacity: needs wrk and taskset (Debian/Ubuntu: apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    compare = read_compare(args.compare) if args.compare else None
    try:
        from tqdm import tqdm
    except ImportError:
        print("capacity: needs the bench extra (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    command = "python bench/capacity.py " + " ".join(sys.argv[1:])
    try:
        with tqdm(total=5 * args.duration, unit="s", desc="capacity", dynamic_ncols=True) as progress:
            results = measure(args, progress)
    except RuntimeError as exc:  # a server that did not start, wrk failed, the pool ran out
        print(f"capacity: {exc}", file=sys.stderr)
        return 1
    report = build_report(results, campaign, command)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(report, out / "capacity.png")
    (out / "capacity.md").write_text(markdown(report, compare))
    print((out / "capacity.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
