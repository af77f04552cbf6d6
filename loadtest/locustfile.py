"""Locust users that behave like sampling sites and labs.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080            # web UI
    python loadtest/run.py --time 60 --users 40                              # headless, server included

A `SiteUser` is one registration volunteer's phone at a sampling point. It
opens a tube (10-in-1 mostly, some 1, 5 and 20-in-1), scans its people,
seals it, and packs sealed tubes into boxes that a courier takes. Along the
way it does what real volunteers and phones do: scans someone twice,
retries a scan whose answer it did not see, scans a bad code (wrong check
character, a barcode of no lab), voids a wrong scan, tries an eleventh
person or a sealed tube, reads a tube back. A share of phones is offline:
they scan a whole tube without a network and replay the backlog later in one
batch (sometimes twice, when the answer was lost), with the mistakes offline
scanning brings (the same person twice, a person already in an earlier
tube). A `LabUser` receives handed-over boxes and posts results.

Every answer is checked against loadtest/model.py (what the rules say it must
be); a wrong answer is a Locust failure named by its kind, even when it is a
2xx. Environment (all optional):

    INGEST_LOAD_PACE_S        mean seconds between one volunteer's scans (0.1;
                              a real volunteer takes ~8 s: raise users with it)
    INGEST_LOAD_OFFLINE_SHARE share of phones that scan offline and replay (0.1)
    INGEST_LOAD_BAD_SHARE     share of scans with a bad code (0.02)
    INGEST_LOAD_BOX_TUBES     sealed tubes per box (5)
    INGEST_LOAD_ACKS          directory: every acknowledged event is written
                              there (acks-<pid>.jsonl) for the end-of-run check
    INGEST_LOAD_RUN           run number, keeps codes of runs apart (random); in
                              distributed mode the master's reaches every worker
    INGEST_LOAD_SUMMARY       file: the final figures as JSON, written on quitting
                              (Locust's CSV files lag by up to 2 s; this does not)
    INGEST_TOKEN              a bearer token with the scan, lab and read roles, for
                              a server with access control (`ingest token`)
"""
from __future__ import annotations

import collections
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

from locust import FastHttpUser, between, events, task
from locust.runners import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest import codes  # noqa: E402
from loadtest.model import Expect, SiteModel, item_expect, mismatch  # noqa: E402

log = logging.getLogger("loadtest")

PACE_S = float(os.environ.get("INGEST_LOAD_PACE_S", "0.1"))
OFFLINE_SHARE = float(os.environ.get("INGEST_LOAD_OFFLINE_SHARE", "0.1"))
BAD_SHARE = float(os.environ.get("INGEST_LOAD_BAD_SHARE", "0.02"))
BOX_TUBES = int(os.environ.get("INGEST_LOAD_BOX_TUBES", "5"))
RUN = int(os.environ.get("INGEST_LOAD_RUN") or random.SystemRandom().randrange(1, 2**16))
POOLS = ((10, 0.80), (20, 0.10), (5, 0.05), (1, 0.05))
POSITIVE_SHARE = 0.02
# Every request carries the token when there is one: reads as well as writes.
AUTH = {"Authorization": f"Bearer {os.environ['INGEST_TOKEN']}"} if os.environ.get("INGEST_TOKEN") else {}
JSON = {"Content-Type": "application/json", **AUTH}

# Boxes handed to couriers, waiting for a lab (one queue per Locust process:
# every worker runs both user classes).
BOXES: collections.deque = collections.deque(maxlen=100_000)


class Acks:
    """Every acknowledged event, appended to a per-process file for the end-of-run check."""

    def __init__(self):
        self.file = None

    def write(self, *record) -> None:
        if self.file is None:
            directory = os.environ.get("INGEST_LOAD_ACKS")
            if not directory:
                return
            Path(directory).mkdir(parents=True, exist_ok=True)
            self.file = open(Path(directory) / f"acks-{os.getpid()}.jsonl", "a", buffering=1 << 16)
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


ACKS = Acks()


@events.init_command_line_parser.add_listener
def _run_option(parser) -> None:
    # Locust hands a master's custom options to its workers with every spawn
    # message, before they start users: workers that drew their own run
    # numbers could make the same tubes (codes.py keeps workers apart only
    # within one run), so the master's is the one used.
    parser.add_argument("--ingest-run", type=int, default=RUN, include_in_web_ui=False,
                        help="run number that keeps codes of runs apart (default: INGEST_LOAD_RUN, or random); "
                             "the master's reaches every worker")


def _run_of(user) -> int:
    """The run number: the master's when distributed (see _run_option)."""
    return getattr(user.environment.parsed_options, "ingest_run", None) or RUN


@events.test_stop.add_listener
def _flush_acks(**_kw) -> None:
    ACKS.close()


@events.quitting.add_listener
def _write_summary(environment, **_kw) -> None:
    path = os.environ.get("INGEST_LOAD_SUMMARY")
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    stats = environment.stats
    total = stats.total
    summary = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "requests_per_s": total.total_rps,
        **{f"p{p}_ms": total.get_response_time_percentile(p / 100) for p in (50, 95, 99)},
        "max_ms": total.max_response_time,
        "by_request": {f"{method} {name}": s.num_requests for (name, method), s in sorted(stats.entries.items())},
        "failures_by_kind": sorted(
            ({"request": f"{e.method} {e.name}", "error": str(e.error), "occurrences": e.occurrences}
             for e in stats.errors.values()), key=lambda f: -f["occurrences"]),
    }
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")


_user_numbers = collections.Counter()


def _worker_index(user) -> int:
    return getattr(user.environment.runner, "worker_index", 0) or 0


class Checked:
    """One request whose answer is checked against an expectation, with a phone's retries."""

    TRIES = 3

    def __init__(self, user: FastHttpUser):
        self.user = user

    def post(self, name: str, path: str, body: dict, expect: Expect) -> dict | None:
        """POST and check; returns the answer when it was the expected one."""
        return self._call("POST", name, path, body, expect)

    def post_items(self, name: str, path: str, body: dict, expects: list[Expect]) -> list[dict] | None:
        """POST a batch answered item by item (bindings, results); each item is checked in order.

        Returns the items' answers when every one was the expected one."""
        with self.user.client.post(path, data=json.dumps(body).encode(), headers=JSON, name=name,
                                   catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"wrong answer to {name}: status {resp.status_code}")
                return None
            try:
                results = resp.json().get("results", [])
            except (ValueError, AttributeError):
                resp.failure(f"wrong answer to {name}: body is not a JSON object")
                return None
            if len(results) != len(expects):
                resp.failure(f"wrong answer to {name}: results and items differ in number")
                return None
            for expect, got in zip(expects, results):
                reason = mismatch(expect, got.get("status", 0) if isinstance(got, dict) else 0, got)
                if reason:
                    resp.failure(f"wrong answer to {name} item: {reason}")
                    return None
                if expect.on_answer:
                    expect.on_answer(got)
            return results

    def get(self, name: str, path: str, expect: Expect) -> dict | None:
        return self._call("GET", name, path, None, expect)

    def _call(self, method, name, path, body, expect):
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.TRIES):
            with self.user.client.request(method, path, data=data, headers=JSON if data else AUTH, name=name,
                                          catch_response=True) as resp:
                if not resp.status_code:  # no answer: the phone will retry with the same event_id
                    resp.failure(f"no answer: {type(resp.error).__name__}")
                    continue
                try:
                    answer = resp.json()
                except ValueError:
                    resp.failure(f"wrong answer to {name}: body is not JSON")
                    return None
                reason = mismatch(expect, resp.status_code, answer)
                if reason and attempt and _own_duplicate(expect, resp.status_code, answer):
                    reason = None  # the unanswered first attempt had got through
                    answer = {**answer, "seq": answer["original"]["seq"]}
                if reason:
                    resp.failure(f"wrong answer to {name}: {reason}")
                    return None
                resp.success()  # a 4xx the rules require is a right answer
                if expect.on_answer:
                    expect.on_answer(answer)
                return answer
        return None


def _own_duplicate(expect: Expect, status: int, answer: dict) -> bool:
    return (expect.status == 201 and status == 200 and answer.get("result") == "duplicate"
            and answer.get("original", {}).get("event_id") == expect.body.get("event_id"))


class SiteUser(FastHttpUser):
    """A volunteer's phone at a sampling point."""

    weight = 20
    wait_time = between(PACE_S * 0.5, PACE_S * 1.5)

    def on_start(self) -> None:
        worker = _worker_index(self)
        _user_numbers[worker] += 1
        self.no = _user_numbers[worker]
        run = _run_of(self)
        self.rng = random.Random(f"{run}-{worker}-{self.no}")
        self.codes = codes.CodeMaker(run, worker, self.no)
        self.site = f"S-{run}-{worker}-{self.no}"
        self.device = f"phone-{self.no}"
        self.lab = self.rng.choice(codes.LABS)
        self.offline = self.rng.random() < OFFLINE_SHARE
        self.model = SiteModel()
        self.http = Checked(self)
        self.n = 0
        self.sealed: list[str] = []
        self.recent: list[str] = []  # persons of earlier tubes (for the "second tube" mistakes)
        self.steps = self.session()

    @task
    def step(self) -> None:
        next(self.steps)

    # -- one volunteer's day, a scan per step --------------------------------

    def session(self):
        while True:
            pool = self._pick_pool()
            tube = self._new_tube()
            if self.offline:
                yield from self._offline_tube(tube, pool)
            else:
                yield from self._online_tube(tube, pool)
            yield from self._seal(tube)
            if len(self.sealed) >= BOX_TUBES:
                yield from self._box()

    def _online_tube(self, tube: str, pool: int):
        # Now and then the last group of the day is short.
        people = pool if self.rng.random() > 0.05 or pool == 1 else self.rng.randint(1, pool - 1)
        last = None
        while self.model.tubes.get(tube) is None or self.model.tubes[tube].count < people:
            r = self.rng.random()
            if r < BAD_SHARE:
                self._bad_scan(tube, pool)
            elif r < BAD_SHARE + 0.02 and last is not None:
                self._bind(last, "retry")  # the phone did not see the answer
            elif r < BAD_SHARE + 0.04 and last is not None:
                self._bind(self._event(tube, last["person"], pool), "scanned twice")
            elif r < BAD_SHARE + 0.05 and self.recent:
                self._bind(self._event(tube, self.rng.choice(self.recent), pool), "person in other tube")
            elif r < BAD_SHARE + 0.055 and last is not None and pool > 1:
                self._bind(self._event(tube, self._person(), 5 if pool != 5 else 10), "wrong pool size")
            elif r < BAD_SHARE + 0.06 and last is not None:
                self._void(last)
                last = None
            else:
                last = self._event(tube, self._person(), pool)
                self._bind(last, "scan")
            yield
        if self.rng.random() < 0.05:
            self._bind(self._event(tube, self._person(), pool), "one too many" if people == pool else "scan")
            yield
        if self.rng.random() < 0.05:
            self._read(tube)
            yield

    def _offline_tube(self, tube: str, pool: int):
        backlog: list[dict] = []
        first_scans: list[dict] = []
        while len(first_scans) < pool:
            r = self.rng.random()
            if r < 0.05 and first_scans:
                backlog.append(dict(self.rng.choice(first_scans)))  # the same scan stored twice
            elif r < 0.10 and first_scans:
                backlog.append(self._event(tube, self.rng.choice(first_scans)["person"], pool))  # person twice
            elif r < 0.13 and self.recent:
                backlog.append(self._event(tube, self.rng.choice(self.recent), pool))  # already in a tube
            else:
                ev = self._event(tube, self._person(), pool)
                first_scans.append(ev)
                backlog.append(ev)
            yield  # offline scanning takes the volunteer's time too
        self._replay(backlog)
        yield
        if self.rng.random() < 0.3:
            self._replay(backlog)  # the answer was lost on the way back
            yield

    def _seal(self, tube: str):
        ev = {"event_id": f"seal-{self.site}-{tube}", "site_id": self.site, "device_id": self.device,
              "sealed_at": self._now()}
        count = self.model.tubes[tube].count if tube in self.model.tubes else 0
        if count and self.rng.random() < 0.03:
            # A miscount (or a swab whose scan never reached the server):
            # refused, the tube left open, the server's count in the answer;
            # the same seal then goes with that count.
            wrong = {**ev, "expected_count": count + 1 if count < 20 else count - 1}
            self.http.post("seal: miscounted", f"/v1/tubes/{tube}/seal", wrong, self.model.seal(wrong, tube))
            yield
        if count:
            ev["expected_count"] = count
        if self.http.post("seal", f"/v1/tubes/{tube}/seal", ev, self.model.seal(ev, tube)):
            ACKS.write("seal", tube)
            self.sealed.append(tube)
        yield
        if self.rng.random() < 0.05:
            self._bind(self._event(tube, self._person(), self.model.tubes[tube].pool_size), "sealed tube")
            yield

    def _box(self):
        box = f"BOX-{self.site}-{self.n}"
        tubes, self.sealed = self.sealed, []
        ev = {"event_id": f"box-{box}", "box": box, "site_id": self.site, "device_id": self.device,
              "tubes": tubes, "packed_at": self._now()}
        if not self.http.post("box", "/v1/boxes", ev, self.model.pack(ev)):
            return
        ACKS.write("box", box, tubes)
        yield
        ho = {"event_id": f"ho-{box}", "courier_id": f"C-{self.no % 50}", "handed_at": self._now()}
        if self.http.post("handover", f"/v1/boxes/{box}/handover", ho, self.model.handover(ho, box, tubes)):
            BOXES.append((self.model, box, tubes, self.lab))
        yield

    # -- requests -------------------------------------------------------------

    def _bind(self, ev: dict, kind: str) -> None:
        expect = self.model.bind(ev, self.lab)
        answer = self.http.post(f"binding: {kind}", "/v1/bindings", ev, expect)
        if answer is not None and answer.get("result") == "bound":
            ACKS.write("binding", ev["event_id"], ev["tube"], ev["person"])

    def _replay(self, backlog: list[dict]) -> None:
        expects = [item_expect(self.model.bind(ev, self.lab)) for ev in backlog]
        answers = self.http.post_items("offline backlog (batch)", "/v1/bindings/batch", {"events": backlog}, expects)
        for ev, got in zip(backlog, answers or ()):
            if got.get("result") == "bound":
                ACKS.write("binding", ev["event_id"], ev["tube"], ev["person"])

    def _bad_scan(self, tube: str, pool: int) -> None:
        kind = self.rng.randrange(3)
        if kind == 0:
            ev = self._event(codes.wrong_check(tube, self.rng), self._person(), pool)
            expect = Expect(422, {"error": {"code": "invalid_tube", "field": "tube"}})
        elif kind == 1:
            ev = self._event(codes.unknown_lab_tube(self.codes.people), self._person(), pool)
            expect = Expect(422, {"error": {"code": "unknown_lab", "field": "tube"}})
        else:
            ev = self._event(tube, codes.wrong_check(self._person(), self.rng), pool)
            expect = Expect(422, {"error": {"code": "invalid_person", "field": "person"}})
        self.http.post("binding: bad code", "/v1/bindings", ev, expect)

    def _void(self, ev: dict) -> None:
        void = {"event_id": f"void-{ev['event_id']}", "device_id": self.device, "reason": "wrong card",
                "voided_at": self._now()}
        expect = self.model.void(void, ev["event_id"])
        if self.http.post("void", f"/v1/bindings/{ev['event_id']}/void", void, expect):
            ACKS.write("void", ev["event_id"], ev["tube"], ev["person"])

    def _read(self, tube: str) -> None:
        self.http.get("read tube", f"/v1/tubes/{tube}", self.model.tube_view(tube))

    # -- codes and events -----------------------------------------------------

    def _pick_pool(self) -> int:
        r = self.rng.random()
        for pool, share in POOLS:
            if r < share:
                return pool
            r -= share
        return 10

    def _new_tube(self) -> str:
        while True:
            try:
                return self.codes.tube(self.lab)
            except codes.Exhausted:
                self.lab = "DEMO-M37"  # a block of the short barcodes is used up: the site changes lab

    def _person(self) -> str:
        person = self.codes.person(self.rng)
        if len(self.recent) < 50:
            self.recent.append(person)
        elif self.rng.random() < 0.1:
            self.recent[self.rng.randrange(50)] = person
        return person

    def _event(self, tube: str, person: str, pool: int) -> dict:
        self.n += 1
        return {"event_id": f"{self.site}-{self.n}", "site_id": self.site, "device_id": self.device,
                "tube": tube, "person": person, "pool_size": pool, "scanned_at": self._now()}

    @staticmethod
    def _now() -> int:
        return int(time.time() * 1000)


class LabUser(FastHttpUser):
    """A lab's reception desk: receives handed-over boxes, then posts the tubes' results."""

    weight = 1
    wait_time = between(PACE_S * 2, PACE_S * 6)

    def on_start(self) -> None:
        self.http = Checked(self)
        self.rng = random.Random()

    @task
    def receive_and_test(self) -> None:
        if not BOXES:
            return
        model, box, tubes, lab = BOXES.popleft()
        ev = {"event_id": f"rx-{box}", "lab_id": lab, "tubes": tubes, "received_at": int(time.time() * 1000)}
        if not self.http.post("receive", f"/v1/boxes/{box}/receive", ev, model.receive(ev, box, tubes)):
            return
        ACKS.write("receive", box, tubes)
        items = [{"event_id": f"res-{tube}", "lab_id": lab, "tube": tube, "tested_at": int(time.time() * 1000),
                  "result": "positive" if self.rng.random() < POSITIVE_SHARE else "negative"} for tube in tubes]
        answers = self.http.post_items("results", "/v1/results", {"results": items},
                                       [model.result(item) for item in items])
        for item, got in zip(items, answers or ()):
            if got.get("result") == "recorded":
                ACKS.write("result", item["tube"], item["result"])
