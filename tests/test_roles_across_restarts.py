"""A node's role across restarts and operator steps: a standby started with
a primary's command line, a promoted node restarted before it could tell
the primary it replaced, a planned switchover by SIGTERM. Each used to leave
two primaries, or acknowledged events only on the node that was left."""
from __future__ import annotations

import signal
import threading
import time

from helpers import event, fresh_tube, http_request
from ingest.store import Store
from test_replication_http import WAIT_S, pair, replication_port, wait_caught_up


def test_a_standby_restarted_without_follow_takes_no_writes_until_promoted(server_factory):
    primary, standby = pair(server_factory)
    assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    follows = f"127.0.0.1:{replication_port(primary)}"
    standby.stop()
    # the primary's command line, as a shared unit file would start it
    restarted = server_factory(data=standby.data, args=("--replication-port", "0"))
    status = restarted.status()
    assert (status["role"], status["epoch"]) == ("standby", 0)
    code, _, body = restarted.post(event(fresh_tube()))
    assert code == 503 and body["error"]["code"] == "not_primary" and body["error"]["primary"] == follows
    assert http_request(restarted.port, "GET", "/readyz")[0] == 503
    assert f"this store is a standby's (it followed {follows}): it takes no writes until promoted" \
        in restarted.stderr_text()
    assert primary.post(event(fresh_tube()))[0] == 201  # one primary
    # a deliberate promotion makes it one, for good
    code, _, body = restarted.request("POST", "/v1/admin/promote", {})
    assert code == 200 and (body["result"], body["epoch"]) == ("promoted", 1), body
    restarted.stop()
    again = server_factory(data=restarted.data, args=("--replication-port", "0"))
    assert again.status()["role"] == "primary" and again.post(event(fresh_tube()))[0] == 201


def test_a_promoted_node_restarted_still_fences_the_former_primary_before_its_first_write(server_factory):
    primary, standby = pair(server_factory)
    port = replication_port(primary)
    for _ in range(5):
        assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    primary.kill()
    code, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert code == 200 and body["epoch"] == 1
    # restarted before the dead primary came back to be told
    standby.stop()
    promoted = server_factory(data=standby.data, args=("--replication-port", "0"))
    assert promoted.status()["role"] == "primary"
    # the former primary, with its usual command line, more than a minute
    # later or not: it hears of epoch 1 before its API port opens
    former = server_factory(data=primary.data, args=("--replication-port", str(port)))
    assert former.status()["role"] == "fenced"
    code, _, body = former.post(event(fresh_tube()))
    assert code == 503 and body["error"]["code"] == "not_primary"
    deadline = time.monotonic() + WAIT_S
    while "told the former primary" not in promoted.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"told the former primary 127.0.0.1:{port} of epoch 1" in promoted.stderr_text()
    # told: the promoted node's store forgets whom to tell, and says nothing more at its next start
    promoted.stop()
    store = Store(str(promoted.data))
    try:
        assert store.tell == "" and store.follows == "" and store.epoch == 1
    finally:
        store.close()


def test_a_stopping_async_primary_leaves_everything_it_acknowledged_on_its_standby(server_factory):
    # The rolling upgrade of operations.md: SIGTERM the primary, promote the
    # standby. Its sessions were closed right after the drain, and the
    # standby lacked hundreds of acknowledged events.
    primary, standby = pair(server_factory)
    acknowledged, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            ev = event(fresh_tube())
            try:
                if primary.post(ev)[0] == 201:
                    acknowledged.append(ev)
            except OSError:
                return  # the primary is gone

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT_S
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    # The standby falls behind (a slow disk, a busy core): the primary holds
    # entries it has not sent when it is told to stop.
    standby.proc.send_signal(signal.SIGSTOP)
    resume = threading.Timer(1.0, standby.proc.send_signal, (signal.SIGCONT,))
    try:
        behind = len(acknowledged)
        while len(acknowledged) < behind + 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        resume.start()
        assert primary.terminate() == 0
    finally:
        resume.cancel()
        standby.proc.send_signal(signal.SIGCONT)
        stop.set()
        for t in threads:
            t.join(WAIT_S)
    store = Store(str(primary.data))
    try:
        last = store.last_seq
    finally:
        store.close()
    assert len(acknowledged) >= 600 and last >= len(acknowledged)
    code, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert code == 200 and body["last_seq"] == last, (body, last)
    missing = [ev for ev in acknowledged[-50:] if standby.tube(ev["tube"])[0] != 200]
    assert missing == []
