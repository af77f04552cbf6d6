"""Replication through a proxy that cuts and stalls the stream, and toward
something that is not an ingest node: the standby ends equal or refuses,
never different."""
from __future__ import annotations

import socket
import time

from helpers import event, fresh_tube
from proxy import Proxy
from test_replication_http import assert_fenced, digest, mixed_load, replication_port, wait_caught_up

from ingest.replication import primary as primary_module
from ingest.replication import standby as standby_module
from ingest.replication import wire


def test_cuts_and_stalls_end_in_the_same_state(server_factory):
    primary = server_factory(args=("--replication-port", "0"))
    proxy = Proxy(replication_port(primary))
    try:
        standby = server_factory(args=("--follow", f"127.0.0.1:{proxy.port}"))
        for round_ in range(6):
            mixed_load(primary, 2)
            primary.batch([event(fresh_tube(), site_id="S-F") for _ in range(300)])
            if round_ % 2 == 0:
                proxy.cut_all()  # wherever the stream is: often mid-frame
            else:
                proxy.flowing.clear()  # stall, then let it flow again
                time.sleep(0.5)
                proxy.flowing.set()
        # every connection from now on is cut after 10 KB: frames split across
        # connections must never be applied half
        proxy.cut_after_bytes = 10_000
        proxy.cut_all()
        mixed_load(primary, 2)
        time.sleep(1.0)
        proxy.cut_after_bytes = None
        proxy.cut_all()
        # On its own: a cut that lands while the standby applies used to kill
        # its follow task and leave it "connected" for ever
        # (tests/test_replication_follower.py shows that case alone).
        wait_caught_up(primary, standby)
        assert proxy.cuts >= 4
        assert "reconnecting" in standby.stderr_text()
        primary.stop()
        standby.stop()
        assert digest(primary) == digest(standby)
    finally:
        proxy.close()


def test_following_something_that_is_not_an_ingest_node(server_factory):
    primary = server_factory()
    # the primary's HTTP port speaks HTTP, not the replication protocol
    standby = server_factory(args=("--follow", f"127.0.0.1:{primary.port}"))
    deadline = time.monotonic() + 20
    while "bad_magic" not in standby.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "bad_magic" in standby.stderr_text()
    status = standby.status()
    assert status["replication"]["connected"] is False and status["last_seq"] == 0
    # and the primary still serves
    assert primary.post(event(fresh_tube()))[0] == 201


def test_a_stalled_link_is_dropped_and_the_standby_reconnects(server_factory):
    from ingest.replication.standby import READ_TIMEOUT_S

    primary = server_factory(args=("--replication-port", "0"))
    proxy = Proxy(replication_port(primary))
    try:
        standby = server_factory(args=("--follow", f"127.0.0.1:{proxy.port}"))
        mixed_load(primary, 1)
        wait_caught_up(primary, standby)
        proxy.flowing.clear()  # no FIN, no bytes: a silent link
        mixed_load(primary, 1)
        deadline = time.monotonic() + READ_TIMEOUT_S + 10
        while "nothing from the primary" not in standby.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "nothing from the primary" in standby.stderr_text()
        proxy.flowing.set()
        wait_caught_up(primary, standby)
    finally:
        proxy.close()


def test_a_former_primary_behind_a_partition_is_fenced_when_it_heals(server_factory):
    """The promoted node keeps telling the primary it followed of its epoch:
    one attempt, made while a partition held, left two primaries taking
    writes once it healed."""
    primary = server_factory(args=("--replication-port", "0"))
    proxy = Proxy(replication_port(primary))
    try:
        standby = server_factory(args=("--follow", f"127.0.0.1:{proxy.port}"))
        assert primary.post(event(fresh_tube()))[0] == 201
        wait_caught_up(primary, standby)
        proxy.flowing.clear()  # the partition: bytes are held, not delivered
        proxy.cut_all()
        status, _, body = standby.request("POST", "/v1/admin/promote", {})
        assert status == 200 and body["result"] == "promoted", body
        held_until = time.monotonic() + standby_module.CONNECT_TIMEOUT_S + 1  # the first tell times out
        while time.monotonic() < held_until:
            assert primary.status()["role"] == "primary"  # it has heard nothing
            time.sleep(0.2)
        proxy.cut_all()  # what was held is dropped, never delivered
        proxy.flowing.set()  # the partition heals
        assert_fenced(primary)
        assert standby.post(event(fresh_tube()))[0] == 201
    finally:
        proxy.close()


def test_the_replication_port_drops_silent_peers_and_caps_sessions(server_factory):
    """Whoever reaches the port gets HELLO_TIMEOUT_S to say hello, and at
    most SESSIONS_MAX sessions are served; the real standby keeps its own."""
    primary = server_factory(args=("--replication-port", "0"))
    port = replication_port(primary)
    standby = server_factory(args=("--follow", f"127.0.0.1:{port}"))
    assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(primary_module.SESSIONS_MAX)]
    try:
        # the standby holds one session: the last of these is one too many
        refused = silent[-1].recv(4096)
        assert wire.decode_refuse(wire.FrameDecoder().feed(refused)[0].payload).code == "busy"
        assert silent[-1].recv(4096) == b""
        started = time.monotonic()
        for sock in silent[:-1]:
            assert sock.recv(4096) == b""  # closed: no hello in time
        assert time.monotonic() - started < primary_module.HELLO_TIMEOUT_S + 5
        assert primary.post(event(fresh_tube()))[0] == 201
        wait_caught_up(primary, standby)
        assert "no hello within" in primary.stderr_text()
    finally:
        for sock in silent:
            sock.close()


def pair_with_replication_ports(server_factory):
    primary = server_factory(args=("--replication-port", "0"))
    standby = server_factory(args=("--follow", f"127.0.0.1:{replication_port(primary)}", "--replication-port", "0"))
    return primary, standby


def test_the_promoted_node_stops_telling_once_the_old_primary_knows(server_factory):
    """Told once it knows, the former primary hears no more hellos: rejoined
    as a standby it would otherwise refuse one every few seconds, in its log."""
    primary, standby = pair_with_replication_ports(server_factory)
    assert primary.post(event(fresh_tube()))[0] == 201
    wait_caught_up(primary, standby)
    status, _, body = standby.request("POST", "/v1/admin/promote", {})
    assert status == 200, body
    assert_fenced(primary)
    time.sleep(3 * standby_module.TELL_PROMOTED_EVERY_S)
    refusals = primary.stderr_text().count("stale_primary")
    time.sleep(3 * standby_module.TELL_PROMOTED_EVERY_S)
    assert primary.stderr_text().count("stale_primary") == refusals
    assert standby.stderr_text().count("told the former primary") == 1


def test_answers_that_show_the_epoch_is_known():
    from ingest.replication.protocol import Primary, Standby

    old = Primary("old", 1)
    refusal = b"".join(a.data for a in old.receive(Standby("new", 2, 5).hello()) if hasattr(a, "data"))
    assert standby_module._knows_epoch(refusal, 2)  # stale_primary: it fenced itself
    same = wire.encode(wire.Type.REFUSE, 2, 0, wire.refuse("ahead", "standby has seq 9"))
    assert standby_module._knows_epoch(same, 2)  # at our epoch: it follows this history
    older = wire.encode(wire.Type.REFUSE, 1, 0, wire.refuse("self", "x"))
    assert not standby_module._knows_epoch(older, 2)
    assert not standby_module._knows_epoch(b"", 2) and not standby_module._knows_epoch(b"HTTP/1.1 400", 2)


def test_stray_connections_to_the_replication_port_do_not_flood_the_log(server_factory):
    # A port scan or a load balancer's health check: a line or two per
    # connection was an easy way to fill a disk.
    primary = server_factory(args=("--replication-port", "0"))
    port = replication_port(primary)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10)
            for _ in range(primary_module.SESSIONS_MAX + 5)]
    deadline = time.monotonic() + 10  # held until the server has refused the 5 beyond its limit
    while "sessions already" not in primary.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    for sock in held:
        sock.close()
    for _ in range(10):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    assert primary.request("GET", "/livez")[0] == 200
    log = primary.stderr_text()
    assert log.count("sessions already") == 1, log
    assert "disconnected" not in log, log
