"""Every acknowledged event survives a crash (SIGKILL) and a shutdown
(SIGTERM); a restarted server remembers what it deduplicates and continues
the sequence.

Load loops are bounded in count and in time and stop by themselves; the
assertions are about what was acknowledged, never about speed.
"""
from __future__ import annotations

import http.client
import json
import signal
import threading
import time

import pytest

from helpers import Client, RawConn, config_with, event, fresh_person, fresh_tube, raw_request

THREADS = 8
EVENTS_PER_THREAD = 400
LOAD_S = 1.0
ACKS_ENOUGH = 1000
JOIN_S = 60.0


class Load:
    """THREADS writers posting distinct valid events until told to stop, the
    server goes away, or EVENTS_PER_THREAD each are sent. Odd threads send
    batches of 5 (one full tube), even ones single events."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[int, dict]] = {}  # event_id -> (seq, event)
        self.answers: list[tuple[int, dict]] = []  # every (status, body) received
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(THREADS)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(JOIN_S)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"

    def wait(self, seconds: float, acks: int) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(self.acked) < acks:
            time.sleep(0.01)

    def _record(self, status: int, body, evs: list[dict]) -> None:
        with self.lock:
            if isinstance(body, dict) and "results" in body:
                for ev, r in zip(evs, body["results"]):
                    self.answers.append((r["status"], r))
                    if 200 <= r["status"] < 300:
                        self.acked[ev["event_id"]] = (r.get("seq") or r["original"]["seq"], ev)
            else:
                self.answers.append((status, body))
                if 200 <= status < 300 and len(evs) == 1:
                    self.acked[evs[0]["event_id"]] = (body.get("seq") or body["original"]["seq"], evs[0])

    def _run(self, k: int) -> None:
        client = Client(self.port, timeout=30)
        try:
            n = 0
            while n < EVENTS_PER_THREAD and not self.stop.is_set():
                tube = fresh_tube()
                evs = [event(tube, pool_size=5, device_id=f"DEV-{k}") for _ in range(5)]
                n += 5
                try:
                    if k % 2:
                        status, _, body = client.request("POST", "/v1/bindings/batch", {"events": evs})
                        self._record(status, body, evs)
                    else:
                        for ev in evs:
                            status, _, body = client.request("POST", "/v1/bindings", ev)
                            self._record(status, body, [ev])
                except (OSError, http.client.HTTPException):
                    return  # the server is gone (killed, or refusing after SIGTERM)
        finally:
            client.close()


def verify_present(server, acked: dict[str, tuple[int, dict]]) -> None:
    """Every acknowledged event is in the store with its seq."""
    items = list(acked.values())
    assert server.last_seq() >= max(seq for seq, _ in items)
    # Re-posting each one answers duplicate with the original seq.
    for start in range(0, len(items), 1000):
        chunk = items[start:start + 1000]
        status, _, body = server.batch([ev for _, ev in chunk])
        assert status == 200
        for (seq, ev), r in zip(chunk, body["results"]):
            assert r["status"] == 200, (ev["event_id"], r)
            assert r["result"] == "duplicate"
            assert r["original"]["event_id"] == ev["event_id"]
            assert r["original"]["seq"] == seq
    # ... and the tubes list them, in the tube's state.
    by_tube: dict[str, dict[str, int]] = {}
    for seq, ev in items:
        by_tube.setdefault(ev["tube"], {})[ev["person"]] = seq
    with Client(server.port) as c:
        for tube, persons in by_tube.items():
            status, _, got = c.request("GET", f"/v1/tubes/{tube}")
            assert status == 200, (tube, got)
            assert got["count"] == len(got["persons"])
            stored = {p["person"]: p["seq"] for p in got["persons"]}
            for person, seq in persons.items():
                assert stored.get(person) == seq, (tube, person)


def test_sigkill_under_load_loses_no_acknowledged_event(server_factory):
    server = server_factory()
    load = Load(server.port).start()
    try:
        load.wait(LOAD_S, ACKS_ENOUGH)
        server.kill()  # mid-load: requests are in flight
    finally:
        load.join()
    assert server.proc.returncode == -signal.SIGKILL
    acked = dict(load.acked)
    assert acked, "no event was acknowledged before the kill"
    seqs = [seq for seq, _ in acked.values()]
    assert len(set(seqs)) == len(seqs), "two acknowledged events share a seq"

    restarted = server_factory(data=server.data)
    assert f"last_seq={restarted.last_seq()}" in restarted.stderr_text()
    verify_present(restarted, acked)


def test_sighup_is_ignored_and_said_so(server_factory):
    # A logrotate postrotate or a closed terminal: its default ended the
    # server at once, in-flight answers lost, with nothing in the log.
    server = server_factory()
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP: ignored" not in server.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "SIGHUP: ignored" in server.stderr_text()
    assert server.proc.poll() is None and server.post(event(fresh_tube()))[0] == 201


def test_sigterm_drains_in_flight_requests(server_factory):
    server = server_factory()
    load = Load(server.port).start()
    try:
        load.wait(LOAD_S / 2, ACKS_ENOUGH // 3)
        code = server.terminate()  # SIGTERM mid-load, then a bounded wait for the exit
    finally:
        load.join()
    assert code == 0, server.stderr_text()
    log = server.stderr_text()
    assert "SIGTERM: draining" in log and "stopped; last_seq=" in log
    assert "drain timed out" not in log

    statuses = [s for s, _ in load.answers]
    assert statuses
    for status, body in load.answers:
        assert status in (200, 201, 503), (status, body)
        if status == 503:
            assert body["error"]["code"] == "shutting_down", body
    acked = dict(load.acked)
    assert acked

    restarted = server_factory(data=server.data)
    verify_present(restarted, acked)
    # What the log said at the end is what the store holds.
    stopped_at = int(log.rsplit("stopped; last_seq=", 1)[1].split()[0])
    assert restarted.last_seq() == stopped_at


def test_sigterm_answers_the_requests_pipelined_behind_one_in_flight(server_factory):
    # A is committed and held at the sync gate (no standby yet, policy wait);
    # B was read behind it. Draining used to close the connection after A's
    # answer and drop B unanswered; B now gets its 503, then the close.
    from test_replication_http import replication_port

    config = config_with(limits={"drain_seconds_max": 20.0}) + (
        '\n[replication]\nmode = "sync"\nsync_timeout_s = 60.0\non_standby_lost = "wait"\n')
    primary = server_factory(config=config, args=("--replication-port", "0"))
    a, b = event(fresh_tube()), event(fresh_tube())
    post = [raw_request("POST", "/v1/bindings", json.dumps(ev).encode(), {"Content-Type": "application/json"})
            for ev in (a, b)]
    conn = RawConn(primary.port, timeout=30)
    try:
        conn.send(post[0] + post[1])
        deadline = time.monotonic() + 10
        while primary.status()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        primary.proc.send_signal(signal.SIGTERM)
        server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}"))  # releases A
        first = conn.read_response()
        assert first.status == 201 and first.json()["event_id"] == a["event_id"], first
        second = conn.read_response()
        assert second.status == 503 and second.json()["error"]["code"] == "shutting_down", second
        assert second.headers.get("connection") == "close" and conn.at_eof()
    finally:
        conn.close()
    assert primary.wait_exit() == 0


def test_request_half_received_at_sigterm_is_answered_503_not_committed(server_factory):
    """A request still being received when the drain starts is answered
    503 shutting_down (it used to be cut off with an EOF, which a client
    cannot tell from a network fault), never committed; the server exits 0."""
    server = server_factory()
    ev = event()
    request = raw_request("POST", "/v1/bindings", json.dumps(ev).encode(), {"Content-Type": "application/json"})
    with RawConn(server.port, timeout=30) as conn:
        conn.send(raw_request("GET", "/readyz"))
        assert conn.read_response().status == 200
        conn.send(request[:-5])
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "SIGTERM: draining" not in server.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "SIGTERM: draining" in server.stderr_text()
        time.sleep(0.2)  # several drain rounds: the connection must stay
        conn.send(request[-5:])
        resp = conn.read_response()
        assert resp.status == 503 and resp.json()["error"]["code"] == "shutting_down", resp
        assert resp.headers.get("connection") == "close" and conn.at_eof()
    assert server.wait_exit() == 0
    restarted = server_factory(data=server.data)
    assert restarted.tube(ev["tube"])[0] == 404
    assert restarted.last_seq() == 0


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_restart_keeps_dedup_memory_and_continues_seq(server_factory, stop):
    server = server_factory()
    tube = fresh_tube()
    person = fresh_person()
    first = event(tube, person)
    evs = [first] + [event(tube) for _ in range(2)]
    answers = []
    for ev in evs:
        status, _, body = server.post(ev)
        assert status == 201, body
        answers.append(body)
    assert [a["seq"] for a in answers] == [1, 2, 3]
    if stop == "sigterm":
        assert server.terminate() == 0
    else:
        server.kill()

    again = server_factory(data=server.data)
    assert again.last_seq() == 3
    assert "last_seq=3" in again.stderr_text()
    # Identical retry: the original outcome.
    status, _, body = again.post(evs[1])
    assert status == 200 and body["original"] == {
        "result": "bound", "event_id": evs[1]["event_id"], "tube": tube, "count": 2, "seq": 2,
    }
    # Same id, other payload: still a conflict.
    status, _, body = again.post(dict(evs[2], person=fresh_person()))
    assert status == 409 and body["error"]["code"] == "event_id_conflict"
    # Same (tube, person), new id: the original binding.
    status, _, body = again.post(event(tube, person))
    assert status == 200 and body["original"]["event_id"] == first["event_id"]
    # The person window remembers too.
    status, _, body = again.post(event(person=person))
    assert status == 409 and body["error"]["code"] == "person_in_other_tube"
    assert body["error"]["other_tube"] == tube
    # New events continue the sequence (4 remembers the pair duplicate's
    # id) and fill the same tube.
    status, _, body = again.post(event(tube))
    assert status == 201 and body["seq"] == 5 and body["count"] == 4
    status, _, got = again.tube(tube)
    assert got["count"] == 4
    assert [p["seq"] for p in got["persons"]] == [1, 2, 3, 5]
    assert again.last_seq() == 5


def test_store_full_answers_507_and_loses_nothing(server_factory):
    """Past store.map_bytes_max writes are refused with 507, the server keeps
    serving, and a restart with a bigger map takes the refused events."""
    small = config_with(store={"map_bytes_initial": 262_144, "map_bytes_max": 524_288})
    server = server_factory(config=small)
    acked, refused = [], []
    for _ in range(100):  # bounded: the map holds a few hundred events
        evs = [event(pool_size=1) for _ in range(50)]
        status, _, body = server.batch(evs)
        assert status == 200
        for ev, r in zip(evs, body["results"]):
            if r["status"] == 201:
                acked.append((r["seq"], ev))
            else:
                assert r["status"] == 507, r
                assert r["error"]["code"] == "insufficient_storage"
                refused.append(ev)
        if refused:
            break
    assert acked and refused, "the small map never filled up"
    assert "store full" in server.stderr_text()
    for _ in range(20):  # refused again and again, as under load: logged once a minute, not each time
        body = server.batch(refused)[2]
        assert {r["status"] for r in body["results"]} == {507}
    assert server.stderr_text().count("store full") == 1
    # Still serving reads, and nothing refused was half-written.
    assert server.request("GET", "/livez")[0] == 200
    assert server.last_seq() == len(acked)
    assert server.tube(refused[0]["tube"])[0] == 404
    assert server.terminate() == 0

    bigger = server_factory(config=config_with(store={"map_bytes_initial": 262_144, "map_bytes_max": 64 << 20}),
                            data=server.data)
    verify_present(bigger, dict((ev["event_id"], (seq, ev)) for seq, ev in acked))
    status, _, body = bigger.batch(refused)
    assert [r["status"] for r in body["results"]] == [201] * len(refused)
    assert bigger.last_seq() == len(acked) + len(refused)


def test_the_map_grows_while_connections_hold_every_descriptor(tmp_path):
    # A growth opened data.mdb anew: with every descriptor taken by idle
    # connections it failed, and every write was a 500 store_error.
    import resource
    import socket
    import subprocess
    import sys

    from helpers import SERVING

    cfg = tmp_path / "c.toml"
    cfg.write_text(config_with(store={"map_bytes_initial": 262_144, "map_bytes_max": 16 << 20}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "serve", "--data", str(tmp_path / "d"), "--port", "0", "--config", str(cfg)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))
    idle = []
    try:
        log = ""
        deadline = time.monotonic() + 30
        while not SERVING.search(log) and time.monotonic() < deadline:
            log += proc.stderr.readline()
        port = int(SERVING.search(log).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        for _ in range(200):  # more than the server has descriptors left
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.5)  # accepted, as far as descriptors go
        statuses = []
        for _ in range(30):  # ~3000 events: the 256 KiB map doubles several times
            evs = [event(pool_size=1) for _ in range(100)]
            conn.request("POST", "/v1/bindings/batch", json.dumps({"events": evs}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            statuses += [r["status"] for r in body["results"]]
        assert set(statuses) == {201}, {s: statuses.count(s) for s in set(statuses)}
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    assert "Too many open files" not in log + rest, rest[-2000:]
