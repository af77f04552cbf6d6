"""Sync replication through real processes: an answer means the standby has it."""
from __future__ import annotations

import concurrent.futures
import threading
import time

from helpers import config_with, event, fresh_tube
from test_replication_http import replication_port, wait_caught_up

WAIT_S = 30.0


def sync_pair(server_factory, policy="async", timeout_s=1.0, rules=None):
    cfg = (config_with(rules=rules)
           + f'\n[replication]\nmode = "sync"\nsync_timeout_s = {timeout_s}\non_standby_lost = "{policy}"\n')
    primary = server_factory(config=cfg, args=("--replication-port", "0"))
    port = replication_port(primary)
    standby = server_factory(args=("--follow", f"127.0.0.1:{port}"))
    wait_caught_up(primary, standby)
    return primary, standby


def test_every_answer_is_already_on_the_standby(server_factory):
    primary, standby = sync_pair(server_factory)
    tube = fresh_tube()
    for i in range(30):
        ev = event(tube if i < 5 else fresh_tube())
        status, _, body = primary.post(ev)
        assert status == 201, body
        assert standby.last_seq() >= body["seq"]
    assert primary.status()["replication"]["degraded"] is False


def test_standby_lost_policy_async_degrades_then_recovers(server_factory):
    primary, standby = sync_pair(server_factory, policy="async", timeout_s=1.0)
    standby.kill()
    t0 = time.monotonic()
    status, _, body = primary.post(event(fresh_tube()))
    assert status == 201, body
    assert time.monotonic() - t0 >= 0.9  # it waited for the standby first
    assert primary.status()["replication"]["degraded"] is True
    assert "SYNC REPLICATION DEGRADED" in primary.stderr_text()
    again = server_factory(data=standby.data, args=standby.args)
    wait_caught_up(primary, again)
    assert primary.post(event(fresh_tube()))[0] == 201
    deadline = time.monotonic() + WAIT_S
    while primary.status()["replication"]["degraded"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert primary.status()["replication"]["degraded"] is False


def test_standby_lost_policy_wait_holds_the_answer(server_factory):
    primary, standby = sync_pair(server_factory, policy="wait", timeout_s=0.5)
    standby.kill()
    answer = {}

    def write():
        answer["result"] = primary.post(event(fresh_tube()))

    t = threading.Thread(target=write, daemon=True)
    t.start()
    t.join(2.0)
    assert t.is_alive(), "the write was answered without a standby"
    again = server_factory(data=standby.data, args=standby.args)
    t.join(WAIT_S)
    assert not t.is_alive() and answer["result"][0] == 201
    assert again.last_seq() >= answer["result"][2]["seq"]


def start_posting(primary, ev, answers: dict, name: str) -> threading.Thread:
    """POST `ev` on a thread (a single binding, or a batch of it when `name`
    is "batch"); its answer lands in answers[name]."""
    def post():
        if name == "batch":
            answers[name] = primary.request("POST", "/v1/bindings/batch", {"events": [ev]})
        else:
            answers[name] = primary.post(ev)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def stale_write_waiting(primary, ev, answers: dict) -> threading.Thread:
    """The first write of `ev`, held at the gate (no standby) until the
    sync pair's 1 s age has passed: a retry of it is then answered from the
    store (App.when_replicated), not by the committer."""
    first = start_posting(primary, ev, answers, "first")
    first.join(1.5)
    assert first.is_alive(), "the write was answered without a standby"
    return first


def test_a_retry_answered_from_the_store_waits_for_the_standby_too(server_factory):
    # A retry whose scan aged past the accepted age is answered "duplicate"
    # from the store, without the committer; in sync mode that answer still
    # says "you have it", so it must wait for a standby like the first one.
    primary, standby = sync_pair(server_factory, policy="wait", timeout_s=0.5,
                                 rules={"scanned_at_age_days_max": 1.0 / 86400})
    standby.kill()
    ev = event(fresh_tube())
    answers = {}
    first = stale_write_waiting(primary, ev, answers)
    retries = [start_posting(primary, ev, answers, name) for name in ("retry", "batch")]
    time.sleep(1.5)
    assert all(t.is_alive() for t in retries), f"a retry was answered without a standby: {answers}"
    again = server_factory(data=standby.data, args=standby.args)
    for t in (first, *retries):
        t.join(WAIT_S)
    seq = answers["first"][2]["seq"]
    assert answers["first"][0] == 201 and answers["retry"][0] == 200, answers
    assert answers["retry"][2]["original"]["seq"] == seq
    assert answers["batch"][0] == 200 and answers["batch"][2]["results"][0]["original"]["seq"] == seq, answers
    assert again.last_seq() >= seq


def test_failover_under_load_loses_no_acknowledged_event(server_factory):
    primary, standby = sync_pair(server_factory, policy="wait", timeout_s=5.0)
    acked: dict[str, tuple[dict, int]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        for _ in range(400):
            if stop.is_set():
                return
            ev = event(fresh_tube())
            try:
                status, _, body = primary.post(ev)
            except OSError:
                return
            if status == 201:
                with lock:
                    acked[ev["event_id"]] = (ev, body["seq"])

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(load, i) for i in range(6)]
        deadline = time.monotonic() + 10
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        primary.kill()
        stop.set()
        for f in futures:
            f.result(timeout=WAIT_S)
    assert len(acked) > 0
    status, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert status == 200 and body["result"] == "promoted", body
    for ev, seq in acked.values():
        status, _, body = standby.post(ev)
        assert status == 200 and body["result"] == "duplicate", (ev["event_id"], body)
        assert body["original"]["seq"] == seq


def test_the_positives_feed_shows_only_what_the_standby_has(server_factory):
    # A positive the feed showed before the standby had it could vanish in a
    # failover, its seq going to another positive that a poller past it
    # would never see: in sync mode the feed stops at the standby's seq.
    from test_day_http import positives, received_tubes, result_item

    primary, standby = sync_pair(server_factory, policy="wait", timeout_s=0.5)
    _, tubes = received_tubes(primary, 2, site_id="S-POS")
    status, _, got = primary.request("POST", "/v1/results", {"results": [result_item(tubes[0], "positive")]})
    assert status == 200 and got["results"][0]["status"] == 201, got
    first = positives(primary, 0)["positives"]
    assert [p["tube"] for p in first] == [tubes[0]]
    standby.kill()
    answer = {}
    writer = threading.Thread(target=lambda: answer.update(r=primary.request(
        "POST", "/v1/results", {"results": [result_item(tubes[1], "positive")]})))
    writer.start()
    deadline = time.monotonic() + WAIT_S
    while primary.last_seq() <= first[0]["seq"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert primary.last_seq() > first[0]["seq"]  # committed on the primary, waiting for a standby
    page = positives(primary, first[0]["seq"])
    assert (page["positives"], page["next_since"]) == ([], first[0]["seq"])
    again = server_factory(data=standby.data, args=standby.args)
    writer.join(WAIT_S)
    assert answer["r"][0] == 200 and answer["r"][2]["results"][0]["status"] == 201, answer
    wait_caught_up(primary, again)
    assert [p["tube"] for p in positives(primary, first[0]["seq"])["positives"]] == [tubes[1]]


def test_the_gate_refuses_everything_once_fenced_and_releases_nothing_after():
    from ingest.replication.syncgate import SyncGate

    gate = SyncGate(0.1, "async")
    got = []

    def park(seq):
        gate.park(seq, lambda: got.append(f"released {seq}"), lambda: got.append(f"refused {seq}"))

    park(1)
    park(2)
    role = ["fenced"]
    gate.fence(lambda: role[0] != "primary")
    assert got == ["refused 1", "refused 2"] and gate.status()["waiting_answers"] == 0
    park(3)  # a commit delivered after the fence
    assert got[-1] == "refused 3"
    gate.check(time.monotonic() + 60)  # the degraded path (policy async)
    gate.on_ack(3, 3)  # a late ACK
    assert len(got) == 3 and not gate.degraded
    role[0] = "primary"  # promoted again: the gate waits and releases as before
    park(4)
    assert len(got) == 3
    gate.on_ack(4, 4)
    assert got[-1] == "released 4"


def test_a_fenced_primary_answers_the_writes_waiting_for_a_standby_not_primary(server_factory):
    # Answers wait at the gate (the standby is gone) when the primary learns
    # that another node was promoted: the new primary may never get those
    # events, so a 201, or a "duplicate" (you have it) for a retry, would be
    # a promise nobody keeps once this node dies. Each is refused with 503
    # not_primary (the client sends it to the new primary), at once, and
    # the policy ("async": release after sync_timeout_s) releases nothing.
    from ingest.store import Store

    primary, standby = sync_pair(server_factory, policy="async", timeout_s=8.0,
                                 rules={"scanned_at_age_days_max": 1.0 / 86400})
    standby.kill()
    ev = event(fresh_tube())
    answers = {}
    first = stale_write_waiting(primary, ev, answers)  # through the committer
    retry = start_posting(primary, ev, answers, "batch")  # App.when_replicated
    deadline = time.monotonic() + WAIT_S
    while primary.status()["replication"]["waiting_answers"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert primary.status()["replication"]["waiting_answers"] == 2
    # The standby learned of a higher epoch (as from a promotion) and says
    # hello: the primary is fenced.
    store = Store(str(standby.data))
    store.set_epoch(1)
    store.close()
    server_factory(data=standby.data, args=standby.args)
    first.join(WAIT_S)
    retry.join(WAIT_S)
    assert primary.status()["role"] == "fenced"
    status, _, body = answers["first"]
    assert status == 503 and body["error"]["code"] == "not_primary", answers
    assert "replaced" in body["error"]["message"]
    status, _, body = answers["batch"]
    assert status == 200 and body["results"][0]["status"] == 503, answers
    assert body["results"][0]["error"]["code"] == "not_primary", answers
    after = primary.status()
    assert after["replication"]["waiting_answers"] == 0 and after["in_flight"] == 0
    assert after["replication"]["degraded"] is False
    assert "SYNC REPLICATION DEGRADED" not in primary.stderr_text()


def test_a_retry_after_a_primary_restart_needs_no_other_write(server_factory):
    # The standby reconnects to the restarted primary with everything it has:
    # its HELLO acknowledges that (no ACK comes until a new entry), so a
    # client's retry answered from the store is not left waiting for an
    # unrelated write (policy wait: for ever without one).
    primary, _ = sync_pair(server_factory, policy="wait", timeout_s=0.5)
    ev = event(fresh_tube())
    status, _, body = primary.post(ev)
    assert status == 201, body
    seq = body["seq"]
    port = replication_port(primary)
    config = primary.config_path.read_text()
    primary.stop()
    again = server_factory(config=config, data=primary.data, args=("--replication-port", str(port)))
    deadline = time.monotonic() + WAIT_S
    while not again.status()["replication"]["standbys"] and time.monotonic() < deadline:
        time.sleep(0.05)
    [session] = again.status()["replication"]["standbys"]
    assert session["acked_seq"] == seq
    assert again.status()["replication"]["acked_seq"] == seq  # the gate heard it too
    answer = {}
    retry = threading.Thread(target=lambda: answer.update(r=again.post(ev)), daemon=True)
    retry.start()
    retry.join(10.0)
    assert not retry.is_alive(), "the retry waits for another write"
    status, _, body = answer["r"]
    assert status == 200 and body["original"]["seq"] == seq, body


def test_the_positives_feed_of_a_standby_and_of_the_node_promoted_from_it(server_factory):
    # Both nodes with the pair's one sync config and a replication port, as
    # the drill runs them: the standby's gate never hears an ACK, and its
    # feed (and the promoted node's, until a new standby caught up) was empty.
    from test_day_http import positives, received_tubes, result_item

    cfg = config_with() + '\n[replication]\nmode = "sync"\nsync_timeout_s = 1.0\non_standby_lost = "wait"\n'
    primary = server_factory(config=cfg, args=("--replication-port", "0"))
    standby = server_factory(config=cfg, args=("--replication-port", "0",
                                               "--follow", f"127.0.0.1:{replication_port(primary)}"))
    wait_caught_up(primary, standby)
    _, tubes = received_tubes(primary, 1, site_id="S-POS-STANDBY")
    status, _, got = primary.request("POST", "/v1/results", {"results": [result_item(tubes[0], "positive")]})
    assert status == 200 and got["results"][0]["status"] == 201, got
    wait_caught_up(primary, standby)
    assert [p["tube"] for p in positives(standby, 0)["positives"]] == [tubes[0]]
    primary.kill()
    status, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert status == 200 and body["result"] == "promoted", body
    assert [p["tube"] for p in positives(standby, 0)["positives"]] == [tubes[0]]
