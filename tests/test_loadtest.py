"""The load test's answer checking: the model agrees with a real server on
every rule, the checker catches wrong answers, and the headless run fails
when the server answers against the rules. And the run itself: one run
number for every Locust process, a server lost mid-run reported, SIGTERM
leaving nothing behind."""
from __future__ import annotations

import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, config_with, free_port_base, http_request
from ingest.codes import INVALID_TUBE, UNKNOWN_LAB
from loadtest import codes
from loadtest.model import ANY, Expect, SiteModel, error, item_expect, mismatch


# -- the checker ----------------------------------------------------------------


def test_a_right_answer_passes():
    expect = Expect(201, {"result": "bound", "count": 3, "seq": ANY, "original": {"event_id": "a"}})
    assert mismatch(expect, 201, {"result": "bound", "count": 3, "seq": 17, "original": {"event_id": "a"},
                                  "extra": 1}) is None


@pytest.mark.parametrize(("status", "body", "reason"), [
    (409, {"error": {"code": "tube_full"}}, "expected 201 bound, got 409 tube_full"),
    (201, {"result": "bound", "count": 4, "seq": 1, "original": {"event_id": "a"}}, "count differs"),
    (201, {"result": "bound", "count": 3, "original": {"event_id": "a"}}, "seq missing"),
    (201, {"result": "bound", "count": 3, "seq": 1, "original": {"event_id": "b"}}, "original.event_id differs"),
    (201, {"result": "bound", "count": 3, "seq": 1, "original": "a"}, "original is not an object"),
])
def test_a_wrong_answer_is_named_by_its_kind(status, body, reason):
    expect = Expect(201, {"result": "bound", "count": 3, "seq": ANY, "original": {"event_id": "a"}})
    assert mismatch(expect, status, body) == reason


def test_lists_of_objects_are_compared_item_by_item():
    expect = Expect(200, {"persons": [{"person": "p1"}, {"person": "p2"}]})
    assert mismatch(expect, 200, {"persons": [{"person": "p1", "seq": 1}, {"person": "p2", "seq": 2}]}) is None
    assert mismatch(expect, 200, {"persons": [{"person": "p1"}]}) == "persons differs in length"
    assert mismatch(expect, 200, {"persons": [{"person": "p2"}, {"person": "p1"}]}) == "persons[].person differs"


# -- the codes ------------------------------------------------------------------


def test_made_codes_are_valid_distinct_and_bad_ones_are_bad():
    from ingest.codes import DEMO_SCHEMES, person_ok, yyyymmdd

    today = yyyymmdd(datetime.date.today())
    rng = random.Random(7)
    tubes, persons = set(), set()
    for worker, user in ((0, 1), (0, 2), (1, 1), (15, 4095)):
        maker = codes.CodeMaker(run=3, worker=worker, user=user)
        for _ in range(200):
            tubes.update(maker.tube(lab) for lab in codes.LABS)
            persons.add(maker.person(rng))
    assert len(tubes) == 4 * 200 * 3 and len(persons) == 4 * 200
    for code in tubes:
        assert DEMO_SCHEMES.classify(code) >= 0, code
        assert DEMO_SCHEMES.classify(codes.wrong_check(code, rng)) == INVALID_TUBE, code
    for code in persons:
        assert person_ok(code, today), code
        assert not person_ok(codes.wrong_check(code, rng), today), code
    assert DEMO_SCHEMES.classify(codes.unknown_lab_tube(5)) == UNKNOWN_LAB


def test_every_worker_and_user_of_a_run_gets_its_own_tubes():
    """docs/loadtest.md: distinct for up to 16 workers of 4095 users each,
    within one run (with its own run number each, two workers' blocks of
    the short barcodes can meet)."""
    slots = [(w, u) for w in range(codes.WORKERS_MAX) for u in range(1, codes.USERS_MAX + 1)]
    for lab in codes.LABS:
        tubes = {codes.CodeMaker(run=40_000, worker=w, user=u).tube(lab) for w, u in slots}
        assert len(tubes) == len(slots), lab
    with pytest.raises(ValueError):
        codes.CodeMaker(run=1, worker=codes.WORKERS_MAX, user=1)
    with pytest.raises(ValueError):
        codes.CodeMaker(run=1, worker=0, user=codes.USERS_MAX + 1)


@pytest.mark.parametrize(("args", "error"), [
    (["--workers", "17"], "--workers: from 0 to 16"),
    (["--users", "4096"], "--users: at most 4095 users started per Locust process"),
    (["--users", "3000", "--shape", "day"], "--users: at most 4095 users started per Locust process"),
])
def test_run_py_refuses_more_workers_or_users_than_codes_keep_apart(tmp_path, args, error):
    proc = subprocess.run([sys.executable, str(REPO / "loadtest" / "run.py"), *args, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and error in proc.stderr.splitlines()[-1], proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_user_that_used_up_its_short_barcodes_is_told():
    maker = codes.CodeMaker(run=1, worker=0, user=1)
    maker.tubes["DEMO-LUHN"] = 10**9 // codes.CodeMaker.SLOTS - 1
    with pytest.raises(codes.Exhausted):
        maker.tube("DEMO-LUHN")


# -- the model against a real server ---------------------------------------------


class Site:
    """One simulated site talking to a real server; every answer must match the model."""

    def __init__(self, server, lab: str = "DEMO-LUHN"):
        self.server = server
        self.model = SiteModel()
        self.lab = lab
        self.rng = random.Random()
        self.codes = codes.CodeMaker(run=random.randrange(2**16), worker=0, user=random.randrange(4096))
        self.site = f"S-{self.codes.run}-{self.codes.slot}"
        self.n = 0

    def event(self, tube, person, pool=5, **extra) -> dict:
        self.n += 1
        return {"event_id": f"{self.site}-{self.n}", "site_id": self.site, "device_id": "d", "tube": tube,
                "person": person, "pool_size": pool, "scanned_at": _now(), **extra}

    def send(self, method: str, path: str, body, expect: Expect) -> dict:
        status, _, answer = self.server.request(method, path, body)
        assert mismatch(expect, status, answer) is None, (mismatch(expect, status, answer), status, answer)
        if expect.on_answer:
            expect.on_answer(answer)
        return answer

    def bind(self, ev: dict) -> dict:
        return self.send("POST", "/v1/bindings", ev, self.model.bind(ev, self.lab))


def _post_items(server, path: str, body: dict, expects: list[Expect]) -> dict:
    """POST a batch answered item by item; every item must match its expectation, in order."""
    status, _, answer = server.request("POST", path, body)
    assert status == 200
    for expect, got in zip(expects, answer["results"], strict=True):
        assert mismatch(expect, got["status"], got) is None, (expect, got)
        if expect.on_answer:
            expect.on_answer(got)
    return answer


def _now() -> int:
    return time.time_ns() // 1_000_000


def test_the_model_agrees_with_the_server_on_every_binding_rule(server):
    s = Site(server)
    tube, tube2 = s.codes.tube(s.lab), s.codes.tube(s.lab)
    people = [s.codes.person(s.rng) for _ in range(7)]
    first = s.event(tube, people[0])
    assert s.bind(first)["result"] == "bound"
    for p in people[1:5]:
        s.bind(s.event(tube, p))
    assert s.bind(first)["result"] == "duplicate"  # retry
    assert s.bind(s.event(tube, people[2]))["original"]["count"] == 3  # same pair, new id
    assert "error" in s.bind({**first, "device_id": "other"})  # event_id_conflict
    assert s.bind(s.event(tube, people[5]))["error"]["code"] == "tube_full"
    s.bind(s.event(tube2, people[5], pool=10))
    assert s.bind(s.event(tube2, people[0], pool=10))["error"]["code"] == "person_in_other_tube"
    s.bind(s.event(tube2, people[0], pool=10, resample=True))
    assert s.bind(s.event(tube2, people[6], pool=5))["error"]["code"] == "pool_size_mismatch"

    # a batch whose items depend on each other, as an offline phone's backlog does
    tube3 = s.codes.tube(s.lab)
    p8, p9 = s.codes.person(s.rng), s.codes.person(s.rng)
    a = s.event(tube3, p8, pool=10)
    backlog = [a, dict(a), s.event(tube3, p8, pool=10), s.event(tube3, p9, pool=10), s.event(tube3, people[1], pool=10)]
    expects = [item_expect(s.model.bind(ev, s.lab)) for ev in backlog]
    answer = _post_items(server, "/v1/bindings/batch", {"events": backlog}, expects)
    assert [r["status"] for r in answer["results"]] == [201, 200, 200, 201, 409]

    # bad codes
    for ev, code in ((s.event(codes.wrong_check(tube, s.rng), people[6]), "invalid_tube"),
                     (s.event(codes.unknown_lab_tube(1), people[6]), "unknown_lab"),
                     (s.event(tube2, codes.wrong_check(people[6], s.rng)), "invalid_person")):
        s.send("POST", "/v1/bindings", ev, error(422, code))

    s.send("GET", f"/v1/tubes/{tube}", None, s.model.tube_view(tube))
    s.send("GET", f"/v1/tubes/{tube3}", None, s.model.tube_view(tube3))


def test_the_model_agrees_with_the_server_on_the_lifecycle(server):
    s = Site(server, lab="DEMO-M37")
    tubes = [s.codes.tube(s.lab) for _ in range(3)]
    bindings = {}
    for tube in tubes:
        bindings[tube] = [s.event(tube, s.codes.person(s.rng), pool=10) for _ in range(3)]
        for ev in bindings[tube]:
            s.bind(ev)
    victim = bindings[tubes[0]][1]
    void = {"event_id": f"void-{victim['event_id']}", "device_id": "d", "reason": "wrong card", "voided_at": _now()}
    assert s.send("POST", f"/v1/bindings/{victim['event_id']}/void", void,
                  s.model.void(void, victim["event_id"]))["count"] == 2
    void2 = {**void, "event_id": "void2-" + victim["event_id"]}
    s.send("POST", f"/v1/bindings/{victim['event_id']}/void", void2, s.model.void(void2, victim["event_id"]))
    s.send("GET", f"/v1/tubes/{tubes[0]}", None, s.model.tube_view(tubes[0]))
    # after the void a binding's count (3) is below its position (4): its pair duplicate names the count
    late = s.event(tubes[0], s.codes.person(s.rng), pool=10)
    assert s.bind(late)["count"] == 3
    assert s.bind({**late, "event_id": late["event_id"] + "-again"})["original"]["count"] == 3

    for tube in tubes:
        seal = {"event_id": f"seal-{tube}", "site_id": s.site, "device_id": "d", "sealed_at": _now()}
        miscounted = {**seal, "expected_count": 4}  # every tube holds 3 (the first after its void and late bind)
        assert s.send("POST", f"/v1/tubes/{tube}/seal", miscounted,
                      s.model.seal(miscounted, tube))["error"]["code"] == "count_mismatch"
        if tube == tubes[1]:
            seal["expected_count"] = 3
        s.send("POST", f"/v1/tubes/{tube}/seal", seal, s.model.seal(seal, tube))
        s.send("POST", f"/v1/tubes/{tube}/seal", seal, s.model.seal(seal, tube))  # retry: duplicate
    assert s.bind(s.event(tubes[0], s.codes.person(s.rng), pool=10))["error"]["code"] == "tube_closed"

    box = f"BOX-{s.site}"
    pack = {"event_id": f"box-{box}", "box": box, "site_id": s.site, "device_id": "d", "tubes": tubes[:2],
            "packed_at": _now()}
    s.send("POST", "/v1/boxes", pack, s.model.pack(pack))
    late = {**pack, "event_id": f"box2-{box}", "box": box + "-2", "tubes": tubes}
    assert s.send("POST", "/v1/boxes", late, s.model.pack(late))["error"]["already_boxed"] == tubes[:2]
    ho = {"event_id": f"ho-{box}", "courier_id": "C-1", "handed_at": _now()}
    s.send("POST", f"/v1/boxes/{box}/handover", ho, s.model.handover(ho, box, tubes[:2]))
    rx = {"event_id": f"rx-{box}", "lab_id": s.lab, "tubes": [tubes[0]], "received_at": _now()}
    assert s.send("POST", f"/v1/boxes/{box}/receive", rx, s.model.receive(rx, box, tubes[:2]))["missing"] == [tubes[1]]

    items = [{"event_id": f"res-{t}", "lab_id": s.lab, "tube": t, "result": "positive", "tested_at": _now()}
             for t in tubes[:2]]
    items.append({**items[0], "event_id": "res-other-lab", "lab_id": "DEMO-GS1"})
    expects = [s.model.result(item) for item in items]
    for _ in range(2):  # the second time, the recorded one is a duplicate
        answer = _post_items(server, "/v1/results", {"results": items}, expects)
        expects = [s.model.result(item) for item in items]
    assert [r["status"] for r in answer["results"]] == [200, 409, 403]


# -- the headless run -------------------------------------------------------------


def test_the_headless_run_fails_when_the_server_breaks_a_rule(tmp_path):
    """A server that lets a person into a second tube at once (window 0 h)
    answers 201 where the rules say 409: the run must fail and say so."""
    config = tmp_path / "lenient.toml"
    config.write_text(config_with(rules={"person_other_tube_window_hours": 0}))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "run.py"), "--time", "6", "--users", "8", "--standby", "none",
         "--config", str(config), "--out", str(out), "--", "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "INGEST_LOAD_OFFLINE_SHARE": "0.5", "INGEST_LOAD_PACE_S": "0.02"})
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["verdict"] == "FAIL"
    kinds = {f["error"] for f in summary["locust"]["failures_by_kind"]}
    assert any("expected 409 person_in_other_tube, got 201 bound" in k for k in kinds), kinds
    assert sum(v["missing"] for v in summary["store"].values()) == 0
    assert (out / "report.html").exists() and (out / "locust_stats.csv").exists()


# -- processes a tool under test started ----------------------------------------


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line holds `text` (a test's own path or port):
    what a tool under test started and must have stopped."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass  # ended meanwhile
    return pids


def kill_leftovers(text: str) -> None:
    for pid in pids_mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- one run number for every Locust process ------------------------------------


def acked_runs(acks: Path) -> set[tuple[str, str]]:
    """(run, worker) of every acknowledged binding: its event id starts with its site, S-<run>-<worker>-<user>."""
    runs = set()
    for path in acks.glob("acks-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record[0] == "binding":
                runs.add(tuple(record[1].split("-")[1:3]))
    return runs


def test_distributed_workers_take_the_masters_run_number(server_factory, tmp_path):
    """Workers started with their own INGEST_LOAD_RUN (or none: a random one)
    could make the same tubes; the master's run number reaches them all."""
    server = server_factory()
    acks = tmp_path / "acks"
    locust = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py")]
    env = {**os.environ, "INGEST_LOAD_ACKS": str(acks), "INGEST_LOAD_PACE_S": "0.02"}
    port = str(free_port_base((0, 1)))
    workers = [subprocess.Popen(locust + ["--worker", "--master-host", "127.0.0.1", "--master-port", port],
                                env={**env, "INGEST_LOAD_RUN": run}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for run in ("5", "9")]
    try:
        master = subprocess.run(
            locust + ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                      "--expect-workers", "2", "--headless", "-u", "6", "-r", "6", "-t", "3s", "--host", server.url,
                      "--loglevel", "WARNING"],
            env={**env, "INGEST_LOAD_RUN": "7"}, capture_output=True, text=True, timeout=60)
        assert master.returncode == 0, master.stderr[-3000:]
    finally:
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
    assert acked_runs(acks) == {("7", "0"), ("7", "1")}


def test_run_py_gives_its_workers_one_run_number(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "run.py"), "--time", "3", "--users", "6", "--standby", "none",
         "--workers", "2", "--out", str(out), "--keep-data", "--", "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "INGEST_LOAD_PACE_S": "0.02"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = str(json.loads((out / "summary.json").read_text())["run"])
    assert acked_runs(out / "acks") == {(run, "0"), (run, "1")}


# -- a server lost, a run stopped -----------------------------------------------


def _start_run(out: Path, seconds: int, standby: str, *options: str) -> tuple[subprocess.Popen, int]:
    """run.py in the background; once its primary has bound events: the process and the primary's port."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "loadtest" / "run.py"), "--time", str(seconds), "--users", "4", "--standby",
         standby, "--out", str(out), *options, "--", "--loglevel", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "INGEST_LOAD_PACE_S": "0.02"})
    for line in proc.stdout:
        if line.startswith("loadtest: primary on 127.0.0.1:"):
            port = int(line.split(":")[2].split(",")[0])
            break
    else:
        raise AssertionError(f"run.py started no primary (exit {proc.wait()})")
    deadline = time.monotonic() + 60
    while http_request(port, "GET", "/v1/status")[2]["last_seq"] < 20:
        assert time.monotonic() < deadline, "no events bound within 60 s"
        time.sleep(0.2)
    return proc, port


def test_a_primary_lost_mid_run_is_reported_and_its_store_checked(tmp_path):
    out = tmp_path / "run"
    proc, _ = _start_run(out, 6, "sync")
    try:
        [primary] = pids_mentioning(str(out / "data-primary"))
        os.kill(primary, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        kill_leftovers(str(out))
    assert proc.returncode == 1, rest[-3000:]
    assert "Traceback" not in rest, rest[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "FAIL" and summary["lost"] == "primary"
    assert summary["digests_equal"] is None  # nothing to compare a lost node with
    # what was acknowledged before the crash is in the primary's store
    assert summary["store"]["binding"]["acknowledged"] > 0
    assert sum(v["missing"] for v in summary["store"].values()) == 0
    assert "The primary stopped answering" in (out / "summary.md").read_text()
    assert not (out / "data-primary").exists() and not (out / "data-standby").exists()


def test_a_sync_run_whose_standby_fell_behind_fails(tmp_path):
    # The primary answered writes after its own commit only for a while:
    # every answer right and every event stored, but not on two disks.
    from ingest import config

    quick = tmp_path / "quick.toml"
    quick.write_text(config.edit(config.default_text(), "sync_timeout_s = 10.0", "sync_timeout_s = 0.3",
                                 "replication"))
    out = tmp_path / "run"
    proc, _ = _start_run(out, 8, "sync", "--config", str(quick))
    try:
        [standby] = pids_mentioning(str(out / "data-standby"))
        os.kill(standby, signal.SIGSTOP)
        time.sleep(2)
        os.kill(standby, signal.SIGCONT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        kill_leftovers(str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 1 and summary["verdict"] == "FAIL", rest[-3000:]
    assert summary["sync_degraded"] >= 1 and summary["locust"]["failures"] == 0 and summary["digests_equal"]
    assert sum(v["missing"] for v in summary["store"].values()) == 0
    assert any("SYNC REPLICATION DEGRADED" in message for message, _ in summary["server_logged"]["primary"])
    assert "The sync standby fell behind" in (out / "summary.md").read_text()
    assert not (out / "acks").exists()  # the acknowledged codes are not left behind


def test_a_config_in_another_replication_mode_than_standby_is_refused(tmp_path):
    from ingest import config

    sync = tmp_path / "sync.toml"
    sync.write_text(config.edit(config.default_text(), 'mode = "async"', 'mode = "sync"', "replication"))
    for standby in ("async", "none"):
        out = subprocess.run([sys.executable, str(REPO / "loadtest" / "run.py"), "--time", "3", "--standby", standby,
                              "--config", str(sync), "--out", str(tmp_path / standby)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and f'--standby {standby}: the config\'s [replication] says mode = "sync"' \
            in out.stderr, out.stderr[-2000:]


def test_sigterm_stops_the_servers_and_locust_and_removes_the_data(tmp_path):
    out = tmp_path / "run"
    proc, _ = _start_run(out, 60, "none")
    try:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        left = pids_mentioning(str(out))
    finally:
        proc.kill()
        kill_leftovers(str(out))
    assert proc.returncode == 143
    assert left == []
    assert not (out / "data-primary").exists()
