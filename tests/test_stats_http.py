"""Statistics through the real server: counted as events are applied, per
site and in all, per hour of server time in the configured zone."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from helpers import config_with, event, fresh_event_id, fresh_tube, now_ms


def hour_now(zone: str) -> str:
    return datetime.now(ZoneInfo(zone)).strftime("%Y-%m-%dT%H")


def test_counts_per_site_and_in_all(server_factory):
    zone = "Asia/Kolkata"  # +05:30: hours do not start on UTC hours
    srv = server_factory(config=config_with() + f'\n[stats]\ntime_zone = "{zone}"\n')
    before_hour = hour_now(zone)
    tubes = [fresh_tube() for _ in range(3)]
    bound = []
    for i, tube in enumerate(tubes):
        for _ in range(4 if i < 2 else 2):
            ev = event(tube, site_id="S-A" if i < 2 else "S-B")
            status, _, body = srv.post(ev)
            assert status == 201, body
            bound.append(ev)
    # a void, a seal and refused events
    assert srv.request("POST", f"/v1/bindings/{bound[0]['event_id']}/void", {
        "event_id": fresh_event_id("void"), "device_id": "D", "reason": "wrong card", "voided_at": now_ms()})[0] == 201
    assert srv.request("POST", f"/v1/tubes/{tubes[0]}/seal", {
        "event_id": fresh_event_id("seal"), "site_id": "S-A", "device_id": "D", "sealed_at": now_ms()})[0] == 201
    assert srv.post(bound[1])[0] == 200  # a duplicate counts nothing
    assert srv.post(event(tubes[0], site_id="S-A"))[0] == 409  # closed: counts nothing

    status, _, site_a = srv.request("GET", "/v1/sites/S-A/stats")
    assert status == 200
    total = site_a["total"]
    assert (total["people"], total["voided"], total["people_sampled"]) == (8, 1, 7)
    assert (total["tubes_opened"], total["tubes_sealed"], total["sealed_not_received"]) == (2, 1, 1)
    assert site_a["scope"] == "S-A" and site_a["time_zone"] == zone
    hours = {h["hour"] for h in site_a["hours"]}
    assert hours <= {before_hour, hour_now(zone)} and hours
    assert sum(h["people"] for h in site_a["hours"]) == 8

    status, _, everything = srv.request("GET", "/v1/stats")
    assert everything["total"]["people"] == 10 and everything["total"]["tubes_opened"] == 3
    status, _, nobody = srv.request("GET", "/v1/sites/S-NONE/stats")
    assert status == 200 and nobody["total"]["people"] == 0 and nobody["hours"] == []


def test_stats_survive_restart(server_factory):
    srv = server_factory()
    assert srv.post(event(fresh_tube(), site_id="S-R"))[0] == 201
    data = srv.data
    srv.stop()
    again = server_factory(data=data)
    _, _, body = again.request("GET", "/v1/sites/S-R/stats")
    assert body["total"]["people"] == 1


def test_a_site_id_that_extends_another_with_a_nul_stays_its_own(server):
    # Stats keys are scope NUL bucket and a site's are read by prefix; site ids
    # are opaque, so one may hold a NUL: "S-N\0total" must not show up as
    # buckets of "S-N".
    for site in ("S-N", "S-N\x00total"):
        status, _, body = server.post(event(fresh_tube(), site_id=site))
        assert status == 201, body
    _, _, plain = server.request("GET", "/v1/sites/S-N/stats")
    assert plain["total"]["people"] == 1
    assert len(plain["hours"]) == 1 and plain["hours"][0]["people"] == 1, plain["hours"]
    _, _, other = server.request("GET", "/v1/sites/S-N%00total/stats")
    assert other["scope"] == "S-N\x00total" and other["total"]["people"] == 1
    assert len(other["hours"]) == 1 and other["hours"][0]["people"] == 1, other["hours"]
