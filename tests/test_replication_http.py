"""Streaming replication between real server processes on loopback."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time


from helpers import config_with, event, fresh_event_id, fresh_person, fresh_tube, now_ms
from ingest.store import Store

REPLICATION = re.compile(r"replication listening on 127\.0\.0\.1:(\d+)")
WAIT_S = 30.0


def replication_port(server) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        m = REPLICATION.search(server.stderr_text())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no replication port logged:\n{server.stderr_text()}")


def wait_caught_up(primary, standby) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        target = primary.last_seq()
        status = standby.status()
        if status["last_seq"] == target and status["replication"]["connected"]:
            return status
        time.sleep(0.05)
    raise AssertionError(f"standby did not catch up: {standby.status()} vs {primary.last_seq()}")


def pair(server_factory):
    primary = server_factory(args=("--replication-port", "0"))
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    return primary, standby


def post(server, path, body):
    status, _, got = server.request("POST", path, body)
    return status, got


def mixed_load(primary, rounds: int) -> None:
    """Bindings (with duplicates and refusals), voids, seals, a box, hand-over,
    receipt, a tube received outside its box, and results: every kind of
    change-log entry."""
    for r in range(rounds):
        tube = fresh_tube()
        evs = [event(tube, site_id="S-R") for _ in range(5)]
        for ev in evs:
            assert primary.post(ev)[0] == 201
        assert primary.post(evs[0])[0] == 200
        assert primary.post(event(tube, site_id="S-R"))[0] == 409  # full
        assert post(primary, f"/v1/bindings/{evs[4]['event_id']}/void",
                    {"event_id": fresh_event_id("v"), "device_id": "D", "reason": "wrong", "voided_at": now_ms()})[0] == 201
        assert post(primary, f"/v1/tubes/{tube}/seal",
                    {"event_id": fresh_event_id("s"), "site_id": "S-R", "device_id": "D", "sealed_at": now_ms()})[0] == 201
        # a second tube of the box arrives outside it: received on its own
        loose = fresh_tube()
        assert primary.post(event(loose, site_id="S-R"))[0] == 201
        assert post(primary, f"/v1/tubes/{loose}/seal",
                    {"event_id": fresh_event_id("s"), "site_id": "S-R", "device_id": "D", "sealed_at": now_ms()})[0] == 201
        box = f"BOX-{fresh_event_id('b')}"
        assert post(primary, "/v1/boxes", {"event_id": fresh_event_id("b"), "box": box, "site_id": "S-R",
                                           "device_id": "D", "tubes": [tube, loose], "packed_at": now_ms()})[0] == 201
        assert post(primary, f"/v1/boxes/{box}/handover",
                    {"event_id": fresh_event_id("h"), "courier_id": "C", "handed_at": now_ms()})[0] == 201
        _, head = primary.tube(tube)[::2]
        assert post(primary, f"/v1/boxes/{box}/receive",
                    {"event_id": fresh_event_id("r"), "lab_id": head["lab"], "tubes": [tube],
                     "received_at": now_ms()})[0] == 201
        assert post(primary, f"/v1/tubes/{loose}/receive",
                    {"event_id": fresh_event_id("rt"), "lab_id": primary.tube(loose)[2]["lab"],
                     "received_at": now_ms()})[0] == 201
        status, got = post(primary, "/v1/results", {"results": [
            {"event_id": fresh_event_id("res"), "lab_id": head["lab"], "tube": tube,
             "result": "positive" if r % 3 == 0 else "negative", "tested_at": now_ms()}]})
        assert status == 200 and got["results"][0]["status"] == 201, got


def digest(server) -> str:
    store = Store(str(server.data))
    try:
        return store.digest()
    finally:
        store.close()


def gauge(server, name: str, labels: dict | None = None) -> float | None:
    return server.metrics().get((name, frozenset((labels or {}).items())))


def test_replication_state_is_in_the_metrics(server_factory):
    primary, standby = pair(server_factory)
    for _ in range(3):
        assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    assert gauge(primary, "ingest_replication_role", {"role": "primary"}) == 1
    assert gauge(primary, "ingest_replication_standbys") == 1
    assert gauge(primary, "ingest_replication_standby_lag_events") == 0
    assert gauge(primary, "ingest_replication_epoch") == 0
    assert gauge(primary, "ingest_replication_degraded") is None  # async: no such state
    assert gauge(standby, "ingest_replication_role", {"role": "standby"}) == 1
    assert (gauge(standby, "ingest_replication_connected"), gauge(standby, "ingest_replication_lag_events"),
            gauge(standby, "ingest_replication_stopped")) == (1, 0, 0)
    primary.kill()
    deadline = time.monotonic() + WAIT_S
    while gauge(standby, "ingest_replication_connected") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gauge(standby, "ingest_replication_connected") == 0


def test_a_standby_following_an_http_port_says_so(server_factory):
    primary = server_factory()
    standby = server_factory(args=("--follow", f"127.0.0.1:{primary.port}"))
    deadline = time.monotonic() + WAIT_S
    hint = "(an HTTP port? --follow takes the primary's --replication-port)"
    while hint not in standby.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"replication from 127.0.0.1:{primary.port} closed: bad_magic" in standby.stderr_text()
    assert hint in standby.stderr_text()


def test_standby_equals_primary_after_mixed_load(server_factory):
    primary, standby = pair(server_factory)
    mixed_load(primary, 12)
    # the batch endpoint too
    status, _, got = primary.batch([event(fresh_tube(), site_id="S-R") for _ in range(200)])
    assert status == 200
    status = wait_caught_up(primary, standby)
    assert status["role"] == "standby" and status["replication"]["lag_events"] == 0
    # the standby serves reads
    tube = got["results"][0]["tube"]
    assert standby.tube(tube)[0] == 200
    primary.stop()
    standby.stop()
    assert digest(primary) == digest(standby)


def test_standby_refuses_writes_and_names_the_primary(server_factory):
    primary, standby = pair(server_factory)
    status, _, body = standby.post(event(fresh_tube()))
    assert status == 503 and body["error"]["code"] == "not_primary"
    assert body["error"]["primary"].startswith("127.0.0.1:")
    assert standby.last_seq() == 0


def test_standby_catches_up_after_a_restart_and_a_gap(server_factory):
    primary, standby = pair(server_factory)
    mixed_load(primary, 2)
    wait_caught_up(primary, standby)
    standby.stop()
    mixed_load(primary, 3)  # written while the standby is down
    again = server_factory(data=standby.data, args=standby.args)
    wait_caught_up(primary, again)
    primary.stop()
    again.stop()
    assert digest(primary) == digest(again)


def assert_fenced(node) -> None:
    """Within WAIT_S the node says it is fenced, and it refuses a write."""
    deadline = time.monotonic() + WAIT_S
    while node.status()["role"] != "fenced" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.status()["role"] == "fenced"
    status, _, body = node.post(event(fresh_tube()))
    assert status == 503 and body["error"]["code"] == "not_primary"


def witness_at_epoch(server_factory, epoch: int, node):
    """A node whose store knows `epoch`, following `node`: its hello tells
    `node` that epoch exists."""
    witness = server_factory(args=("--replication-port", "0"))
    witness.stop()
    store = Store(str(witness.data))
    store.set_epoch(epoch)
    store.close()
    return server_factory(data=witness.data, args=("--follow", f"127.0.0.1:{replication_port(node)}"))


def test_promote_then_the_old_primary_is_fenced(server_factory):
    primary, standby = pair(server_factory)
    mixed_load(primary, 2)
    wait_caught_up(primary, standby)
    status, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert status == 200 and body["result"] == "promoted" and body["epoch"] == 1
    assert standby.post(event(fresh_tube()))[0] == 201
    assert standby.status()["role"] == "primary"
    # A node that knows epoch 1 says hello to the old primary (epoch 0): the
    # old primary learns it was replaced and stops taking writes at once.
    follower = witness_at_epoch(server_factory, 1, primary)
    assert_fenced(primary)
    # and stays fenced through a restart: it must not come back as a primary
    primary.stop()
    restarted = server_factory(data=primary.data, args=primary.args)
    assert restarted.status()["role"] == "fenced"
    status, _, body = restarted.post(event(fresh_tube()))
    assert status == 503 and body["error"]["code"] == "not_primary"
    # until an operator promotes it, deliberately: the node of epoch 1 took
    # writes it lacks, so a plain promotion is refused
    status, _, body = restarted.request("POST", "/v1/admin/promote", {})
    assert status == 409 and body["error"]["code"] == "promotion_refused", body
    assert "fenced at epoch 1" in body["error"]["message"] and "force=true" in body["error"]["message"]
    assert restarted.status()["role"] == "fenced"
    out = subprocess.run([sys.executable, "-m", "ingest", "promote", "--url", restarted.url, "--force"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert (body["result"], body["epoch"]) == ("promoted", 2), body
    restarted.stop()
    promoted = server_factory(data=restarted.data, args=restarted.args)
    assert promoted.status()["role"] == "primary" and promoted.post(event(fresh_tube()))[0] == 201
    # and the witness refused to follow a primary of an older epoch
    deadline = time.monotonic() + WAIT_S
    while follower.status()["replication"]["stopped_because"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert follower.status()["replication"]["stopped_because"] == "stale_primary"


def readyz(node) -> tuple[int, str]:
    status, _, body = node.request("GET", "/readyz")
    return status, body.get("status") or body["error"]["code"]


def test_promotion_fences_the_former_primary_when_it_is_still_there(server_factory):
    # a promotion made while the primary is alive (a partition, an operator
    # too early): the promoted node tells it, and it stops taking writes
    primary, standby = pair(server_factory)
    assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    # a load balancer routes writes by /readyz: to the primary only
    assert (readyz(primary), readyz(standby)) == ((200, "ready"), (503, "not_primary"))
    status, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert status == 200 and body["epoch"] == 1, body
    assert_fenced(primary)
    assert standby.post(event(fresh_tube()))[0] == 201
    assert (readyz(primary), readyz(standby)) == ((503, "not_primary"), (200, "ready"))


def test_a_standby_of_a_promoted_standby_adopts_its_new_epoch(server_factory):
    # C follows B, itself a standby of A with a replication port. C was
    # welcomed by B at epoch 0; when B is promoted, C must not stream on at
    # epoch 0 (promoted in turn later, it would reach B's epoch with another
    # history, and neither would fence the other).
    a = server_factory(args=("--replication-port", "0"))
    b = server_factory(args=("--replication-port", "0", "--follow", f"127.0.0.1:{replication_port(a)}"))
    assert a.post(event(fresh_tube()))[0] == 201
    wait_caught_up(a, b)
    c = server_factory(args=("--follow", f"127.0.0.1:{replication_port(b)}"))
    wait_caught_up(b, c)
    status, _, body = b.request("POST", "/v1/admin/promote", {})
    assert status == 200 and body["epoch"] == 1, body
    assert b.post(event(fresh_tube()))[0] == 201
    deadline = time.monotonic() + WAIT_S
    while c.status()["epoch"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.status()["epoch"] == 1
    assert wait_caught_up(b, c)["last_seq"] == b.last_seq()


def test_a_fenced_former_primary_serves_no_standby_until_promoted_again(server_factory):
    # Its history ends where it was replaced, and its tail may be events the
    # new primary lacks: a standby pointed at it (by mistake) must not copy it.
    node = server_factory(args=("--replication-port", "0"))
    assert node.post(event(fresh_tube()))[0] == 201
    node.stop()
    store = Store(str(node.data))
    store.fence(1)
    store.close()
    fenced = server_factory(data=node.data, args=node.args)
    assert fenced.status()["role"] == "fenced"
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(fenced)}"))
    deadline = time.monotonic() + WAIT_S
    while "fenced: this node is a fenced former primary" not in standby.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "fenced: this node is a fenced former primary" in standby.stderr_text()
    status = standby.status()
    assert status["last_seq"] == 0 and not status["replication"]["connected"]
    assert status["replication"]["stopped_because"] is None  # it retries: the node may be promoted again
    status, _, body = fenced.request("POST", "/v1/admin/promote?force=true", {})
    assert status == 200 and body["result"] == "promoted", body
    assert wait_caught_up(fenced, standby)["last_seq"] == fenced.last_seq() == 1


def test_a_standby_whose_api_port_is_taken_exits_with_the_reason(server_factory, tmp_path):
    # Its follower started before the API listen failed, kept reconnecting,
    # and the process hung: no API, no error, the data directory held.
    primary = server_factory(args=("--replication-port", "0"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ingest", "serve", "--data", str(tmp_path / "standby"), "--host", "127.0.0.1",
             "--port", str(port), "--follow", f"127.0.0.1:{replication_port(primary)}"],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_standby_pointed_at_itself_stops(server_factory):
    node = server_factory(args=("--replication-port", "0"))
    port = replication_port(node)
    node.stop()
    itself = server_factory(data=node.data, args=("--replication-port", str(port), "--follow", f"127.0.0.1:{port}"))
    deadline = time.monotonic() + WAIT_S
    while itself.status()["replication"]["stopped_because"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert itself.status()["replication"]["stopped_because"] == "self"


def test_a_standby_counting_statistics_in_another_time_zone_is_refused(server_factory):
    # The apply writes the hour labels: a standby in Asia/Shanghai following
    # a UTC primary held other statistics from the same log, and served them
    # after a failover, with no error anywhere.
    primary = server_factory(args=("--replication-port", "0"))
    assert primary.post(event(fresh_tube()))[0] == 201
    standby = server_factory(config=config_with(stats={"time_zone": "Asia/Shanghai"}),
                             args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    deadline = time.monotonic() + WAIT_S
    while standby.status()["replication"]["stopped_because"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert standby.status()["replication"]["stopped_because"] == "time_zone"
    assert standby.last_seq() == 0
    assert "counts statistics in time zone 'Asia/Shanghai', this primary in 'UTC'" in primary.stderr_text()


def test_a_store_keeps_the_time_zone_it_was_made_with(server_factory, tmp_path):
    # A restart with another stats.time_zone used to go on counting the
    # same store's hours in the new zone: one day's statistics in two zones.
    server = server_factory()
    assert server.post(event(fresh_tube()))[0] == 201
    server.stop()
    config = tmp_path / "shanghai.toml"
    config.write_text(config_with(stats={"time_zone": "Asia/Shanghai"}))
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "serve", "--data", server.data, "--port", "0", "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "the store counts statistics in time zone 'UTC', the config says stats.time_zone = " \
           "'Asia/Shanghai'" in result.stderr and "Traceback" not in result.stderr
    again = server_factory(data=server.data)
    assert again.last_seq() == 1


def test_lag_is_reported_in_events_and_seconds(server_factory):
    primary, standby = pair(server_factory)
    mixed_load(primary, 1)
    status = wait_caught_up(primary, standby)
    assert status["replication"]["lag_events"] == 0 and status["replication"]["lag_seconds"] == 0.0
    # The standby's own view is current at once; the primary's follows its
    # next acknowledgement, a moment later.
    deadline = time.monotonic() + WAIT_S
    while True:
        [session] = primary.status()["replication"]["standbys"]
        if session["lag_events"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert session["lag_events"] == 0 and session["node"] == status["node"]
    standby.kill()
    mixed_load(primary, 1)
    time.sleep(0.3)
    [session] = primary.status()["replication"]["standbys"] or [None]
    if session is not None:  # the primary may not have noticed the kill yet
        assert session["lag_events"] > 0 and session["lag_seconds"] > 0


def test_standby_killed_while_applying_resumes_to_the_same_state(server_factory):
    primary = server_factory(args=("--replication-port", "0"))
    for _ in range(8):
        primary.batch([event(fresh_tube(), site_id="S-K") for _ in range(500)])
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    deadline = time.monotonic() + WAIT_S
    while standby.last_seq() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    standby.kill()  # most likely in the middle of catching up
    again = server_factory(data=standby.data, args=standby.args)
    wait_caught_up(primary, again)
    primary.stop()
    again.stop()
    assert digest(primary) == digest(again)


def test_primary_store_full_replicates_only_what_it_took(server_factory):
    from helpers import config_with

    small = config_with(store={"map_bytes_initial": 2 << 20, "map_bytes_max": 2 << 20})
    primary = server_factory(config=small, args=("--replication-port", "0"))
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    full = False
    for _ in range(60):
        status, _, body = primary.batch([event(fresh_tube(), site_id="S-D") for _ in range(200)])
        if status == 200 and any(r.get("status") == 507 for r in body["results"]):
            full = True
            break
    assert full, "the small store never filled"
    wait_caught_up(primary, standby)
    primary.stop()
    standby.stop()
    assert digest(primary) == digest(standby)


def failover(server_factory, tail: int):
    """A primary and a standby (which can serve replication once promoted);
    the standby stops, the primary takes `tail` more events alone (async
    mode: acknowledged, never shipped) and dies; the standby comes back,
    is promoted and takes more writes than that tail. Returns the former
    primary (killed), the new primary and the seq the two histories share."""
    primary = server_factory(args=("--replication-port", "0"))
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}", "--replication-port", "0"))
    for _ in range(3):
        assert primary.post(event(fresh_tube()))[0] == 201
    shared = wait_caught_up(primary, standby)["last_seq"]
    standby.stop()
    tail_ids = []
    for _ in range(tail):
        ev = event(fresh_tube())
        assert primary.post(ev)[0] == 201
        tail_ids.append(ev["event_id"])
    primary.kill()
    promoted = server_factory(data=standby.data, args=standby.args)
    status, _, body = promoted.request("POST", "/v1/admin/promote", {})
    assert status == 200 and body["result"] == "promoted", body
    for _ in range(tail + 2):
        assert promoted.post(event(fresh_tube()))[0] == 201
    return primary, promoted, shared, tail_ids


def stopped_because(node) -> str | None:
    deadline = time.monotonic() + WAIT_S
    while node.status()["replication"]["stopped_because"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return node.status()["replication"]["stopped_because"]


def test_a_standby_whose_rules_refuse_an_entry_stops_instead_of_skipping_it(server_factory):
    # The primary lets a person into another tube after 1 h, the standby only
    # after the shipped 12 h: the entry it cannot apply must not be dropped
    # (it would be one seq short for ever, its state apart from the primary's).
    primary = server_factory(config_with(rules={"person_other_tube_window_hours": 1}),
                             args=("--replication-port", "0"))
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}"))
    person = fresh_person()
    assert primary.post(event(fresh_tube(), person, scanned_at=now_ms() - 3 * 3_600_000))[0] == 201
    assert wait_caught_up(primary, standby)["last_seq"] == 1
    assert primary.post(event(fresh_tube(), person))[0] == 201
    assert stopped_because(standby) == "refused"
    assert standby.status()["last_seq"] == 1
    assert "log entry 2 (binding) is refused here (person_in_other_tube: " in standby.stderr_text()
    # and the primary goes on taking writes
    assert primary.post(event(fresh_tube()))[0] == 201
    # Promoting the stopped standby would fence a primary that acknowledged
    # what it lacks: refused unless forced.
    status, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert status == 409 and body["error"]["code"] == "promotion_refused", body
    assert "stopped following" in body["error"]["message"] and "(refused) at seq 1" in body["error"]["message"]
    assert standby.status()["role"] == "standby" and primary.status()["role"] == "primary"
    # what an alert watches: the standby stopped, the primary streams to no one
    assert gauge(standby, "ingest_replication_stopped") == 1
    assert gauge(primary, "ingest_replication_standbys") == 0


def test_a_former_primary_with_an_unreplicated_tail_is_refused_not_forked(server_factory):
    old, new, shared, tail_ids = failover(server_factory, tail=4)
    before = digest(old)
    # The new primary's log is longer than the old one's, so "ahead" cannot
    # catch it: the entries at the old node's last seq differ.
    rejoined = server_factory(data=old.data, args=("--follow", f"127.0.0.1:{replication_port(new)}"))
    assert stopped_because(rejoined) == "diverged"
    assert "diverged: this store's history forked from the primary's" in rejoined.stderr_text()  # and what to do
    assert rejoined.last_seq() == shared + len(tail_ids)
    assert "diverged" in rejoined.stderr_text() and "diverged" in new.stderr_text()
    rejoined.stop()
    assert digest(rejoined) == before  # nothing of the new history was mixed in
    # what the operator is told to do: write the tail out, replay it
    out = subprocess.run([sys.executable, "-m", "ingest", "tail", "--data", str(old.data), "--after", str(shared)],
                         capture_output=True, text=True, timeout=60, check=True)
    requests = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["body"]["event_id"] for r in requests] == tail_ids
    assert new.request("POST", requests[0]["path"], requests[0]["body"])[0] == 201


def test_a_former_primary_refused_as_a_standby_comes_back_fenced_not_as_a_primary(server_factory):
    # Started with --follow after the failover and refused (its tail), then
    # restarted with its usual command line: it must not take writes.
    old, new, _, _ = failover(server_factory, tail=2)
    rejoined = server_factory(data=old.data, args=("--follow", f"127.0.0.1:{replication_port(new)}"))
    assert stopped_because(rejoined) == "diverged"
    replication = rejoined.status()["replication"]
    # never welcomed: how far behind it is, it does not know (0 read as "caught up")
    assert (replication["primary_last_seq"], replication["lag_events"], replication["lag_seconds"]) \
        == (None, None, None)
    rejoined.stop()
    restarted = server_factory(data=old.data, args=old.args)
    assert restarted.status()["role"] == "fenced"
    status, _, body = restarted.post(event(fresh_tube()))
    assert status == 503 and body["error"]["code"] == "not_primary"


def test_a_standby_told_of_a_higher_epoch_comes_back_fenced_not_as_a_primary(server_factory):
    # The promoted node tells the node it followed, which may be running as a
    # standby by then (restarted with --follow): the fence is stored there
    # too, or the teller stops telling and a restart without --follow would
    # be a primary again that no one tells.
    primary = server_factory(args=("--replication-port", "0"))
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}", "--replication-port", "0"))
    assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    teller = witness_at_epoch(server_factory, 3, standby)
    assert stopped_because(teller) == "stale_primary"  # answered once the standby's fence is on disk
    assert standby.status()["role"] == "standby"  # it goes on following
    assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    standby.stop()
    restarted = server_factory(data=standby.data, args=("--replication-port", "0"))
    assert restarted.status()["role"] == "fenced"
    status, _, body = restarted.post(event(fresh_tube()))
    assert status == 503 and body["error"]["code"] == "not_primary"


def test_a_former_primary_without_a_tail_rejoins_and_catches_up(server_factory):
    old, new, _, _ = failover(server_factory, tail=0)
    rejoined = server_factory(data=old.data, args=("--follow", f"127.0.0.1:{replication_port(new)}"))
    wait_caught_up(new, rejoined)
    new.stop()
    rejoined.stop()
    assert digest(new) == digest(rejoined)


def test_lag_seconds_is_the_age_of_the_first_entry_the_standby_misses(server_factory):
    # A standby caught up, idle for a while, then stalled: its lag is how
    # long it has missed what it misses, not the time since its last ACK
    # (or since it connected).
    import signal

    primary, standby = pair(server_factory)
    assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    deadline = time.monotonic() + WAIT_S
    while primary.status()["replication"]["standbys"][0]["lag_events"] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(3.0)  # idle, caught up
    standby.proc.send_signal(signal.SIGSTOP)  # a stall: no FIN, no ACK
    try:
        before = time.time()
        assert primary.post(event(fresh_tube()))[0] == 201
        time.sleep(0.5)
        [session] = primary.status()["replication"]["standbys"]
        assert session["lag_events"] == 1
        assert 0.45 <= session["lag_seconds"] <= time.time() - before + 0.01, session
    finally:
        standby.proc.send_signal(signal.SIGCONT)
    wait_caught_up(primary, standby)
    deadline = time.monotonic() + WAIT_S
    while primary.status()["replication"]["standbys"][0]["lag_events"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert primary.status()["replication"]["standbys"][0]["lag_seconds"] == 0.0
