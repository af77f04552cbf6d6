"""Access control through the real server: bearer tokens and roles."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import LABS_TOML, RawConn, event, fresh_event_id, fresh_tube, metric, now_ms, raw_request, stderr_lines
from ingest import config, routes
from ingest.access import ROLES, Access, is_loopback, new_token, token_sha256

TOKENS = {role: new_token() for role in ("scan", "lab", "read", "admin")}
BOTH = new_token()  # scan and read
LUHN_LAB = new_token()  # lab, for DEMO-LUHN only
SITE_A = new_token()  # scan, for SITE-A only
SITE_B = new_token()  # scan, for SITE-B and SITE-C


def access_config(extra: str = "") -> str:
    entries = "".join(
        f'[[access.tokens]]\nname = "{role} client"\nroles = ["{role}"]\nsha256 = "{token_sha256(token)}"\n\n'
        for role, token in TOKENS.items())
    entries += f'[[access.tokens]]\nname = "both"\nroles = ["scan", "read"]\nsha256 = "{token_sha256(BOTH)}"\n\n'
    entries += (f'[[access.tokens]]\nname = "luhn lab"\nroles = ["lab"]\nlabs = ["DEMO-LUHN"]\n'
                f'sha256 = "{token_sha256(LUHN_LAB)}"\n\n')
    entries += (f'[[access.tokens]]\nname = "site A phones"\nroles = ["scan"]\nsites = ["SITE-A"]\n'
                f'sha256 = "{token_sha256(SITE_A)}"\n\n')
    entries += (f'[[access.tokens]]\nname = "sites B and C"\nroles = ["scan"]\nsites = ["SITE-B", "SITE-C"]\n'
                f'sha256 = "{token_sha256(SITE_B)}"\n\n')
    return "[access]\n" + extra + "\n" + entries + LABS_TOML


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def guarded(module_server_factory):
    return module_server_factory(config=access_config())


def code(body) -> str:
    return body["error"]["code"]


def test_a_binding_without_a_token_is_401_with_a_challenge_and_changes_nothing(guarded):
    ev = event()
    status, headers, body = guarded.post(ev)
    assert status == 401 and code(body) == "unauthorized"
    assert headers["WWW-Authenticate"] == 'Bearer realm="ingest"'
    assert "Bearer" in body["error"]["message"]
    status, _, _ = guarded.request("GET", f"/v1/tubes/{ev['tube']}", headers=bearer(TOKENS["read"]))
    assert status == 404  # nothing was bound


@pytest.mark.parametrize("value", ["Bearer not-a-known-token", "Basic c2Nhbjpzb21ldGhpbmc=", "Bearer", "Bearer ",
                                   "bearer", TOKENS["scan"]])
def test_a_bad_or_unknown_token_is_401(guarded, value):
    status, headers, body = guarded.post(event(), headers={"Authorization": value})
    assert status == 401 and code(body) == "unauthorized"
    assert "not one this server knows" in body["error"]["message"]
    assert headers["WWW-Authenticate"] == 'Bearer realm="ingest"'
    assert not any(part in body["error"]["message"] for part in value.split() if len(part) > 8)  # never echoed


def test_a_scan_token_binds_singles_and_batches(guarded):
    status, _, body = guarded.post(event(), headers=bearer(TOKENS["scan"]))
    assert status == 201 and body["result"] == "bound"
    status, _, body = guarded.batch([event(), event()], headers=bearer(TOKENS["scan"]))
    assert status == 200 and [r["result"] for r in body["results"]] == ["bound", "bound"]


@pytest.mark.parametrize("spelling", ["Bearer {}", "bearer {}", "BEARER  {}", "Bearer {}  "])
def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_do_not_matter(guarded, spelling):
    status, _, body = guarded.post(event(), headers={"Authorization": spelling.format(TOKENS["scan"])})
    assert status == 201, body


def test_a_token_without_the_role_is_403_naming_the_role(guarded):
    ev = event()
    status, _, body = guarded.post(ev, headers=bearer(TOKENS["read"]))
    assert status == 403 and code(body) == "forbidden", body
    assert body["error"]["message"] == "this token may not call POST /v1/bindings: that needs the scan role"
    status, _, body = guarded.request("GET", f"/v1/tubes/{ev['tube']}", headers=bearer(TOKENS["read"]))
    assert status == 404  # the refused binding changed nothing
    status, _, body = guarded.request("GET", f"/v1/persons/{ev['person']}", headers=bearer(TOKENS["scan"]))
    # the route as api.md writes it, not the path: a person code is not echoed
    assert status == 403 and body["error"]["message"] == (
        "this token may not call GET /v1/persons/{…}: that needs the read role")


def test_person_data_answers_are_not_to_be_cached(guarded):
    ev = event()
    assert guarded.post(ev, headers=bearer(TOKENS["scan"]))[0] == 201
    for path in (f"/v1/tubes/{ev['tube']}", f"/v1/persons/{ev['person']}", "/v1/positives", "/v1/stats"):
        status, headers, _ = guarded.request("GET", path, headers=bearer(TOKENS["read"]))
        assert status == 200 and headers.get("cache-control") == "no-store", (path, headers)


def test_person_data_routes_errors_are_not_to_be_cached_either(guarded):
    # "No binding names this person" is person data too, and every one of
    # these requests carries a token.
    ev = event()
    read = bearer(TOKENS["read"])
    for path, headers, want in ((f"/v1/persons/{ev['person']}", read, 404), (f"/v1/tubes/{ev['tube']}", read, 404),
                                ("/v1/boxes/NOPE", read, 404), ("/v1/positives?since=x", read, 400),
                                ("/v1/stats?from=bad", read, 400), (f"/v1/persons/{ev['person']}", {}, 401),
                                (f"/v1/persons/{ev['person']}", bearer(TOKENS["scan"]), 403)):
        status, got, _ = guarded.request("GET", path, headers=headers)
        assert status == want and got.get("cache-control") == "no-store", (path, status, got)
    status, got, _ = guarded.post(event(tube="bad"), headers=bearer(TOKENS["scan"]))
    assert status == 422 and "cache-control" not in got  # a write's answer shows nothing stored


def test_person_data_needs_the_read_role(guarded):
    ev = event()
    assert guarded.post(ev, headers=bearer(TOKENS["scan"]))[0] == 201
    for path in (f"/v1/persons/{ev['person']}", f"/v1/tubes/{ev['tube']}", "/v1/positives", "/v1/stats",
                 "/v1/sites/SITE-1/stats"):
        assert guarded.request("GET", path)[0] == 401, path
        assert guarded.request("GET", path, headers=bearer(TOKENS["lab"]))[0] == 403, path
        status, _, body = guarded.request("GET", path, headers=bearer(TOKENS["read"]))
        assert status == 200, (path, body)
    status, _, body = guarded.request("GET", f"/v1/persons/{ev['person']}", headers=bearer(BOTH))
    assert status == 200 and body["tubes"][0]["tube"] == ev["tube"]
    status, _, _ = guarded.request("HEAD", f"/v1/tubes/{ev['tube']}")
    assert status == 401


def test_lab_routes_need_the_lab_role(guarded):
    body = {"results": [{"event_id": fresh_event_id("res"), "lab_id": "DEMO-LUHN", "tube": fresh_tube(),
                         "result": "negative", "tested_at": now_ms()}]}
    assert guarded.request("POST", "/v1/results", body, headers=bearer(TOKENS["scan"]))[0] == 403
    status, _, got = guarded.request("POST", "/v1/results", body, headers=bearer(TOKENS["lab"]))
    assert status == 200 and "results" in got  # past access: the rules answer (an unknown tube)
    receive = {"event_id": fresh_event_id("rcv"), "lab_id": "DEMO-LUHN", "received_at": now_ms(), "tubes": []}
    assert guarded.request("POST", "/v1/boxes/BOX-NONE/receive", receive, headers=bearer(TOKENS["scan"]))[0] == 403
    status, _, got = guarded.request("POST", "/v1/boxes/BOX-NONE/receive", receive, headers=bearer(TOKENS["lab"]))
    assert status != 403 and status != 401, got


def test_a_lab_token_acts_only_for_its_labs(guarded):
    # Without it any lab's token could receive another lab's boxes and post
    # its results: a false positive sends a team to ten people.
    def result(lab_id):
        return {"event_id": fresh_event_id("res"), "lab_id": lab_id, "tube": fresh_tube(), "result": "positive",
                "tested_at": now_ms()}

    before = metric(guarded.metrics(), "ingest_access_refused_total", route="post_results", code="forbidden")
    status, _, got = guarded.request("POST", "/v1/results", {"results": [result("DEMO-GS1"), result("DEMO-LUHN")]},
                                     headers=bearer(LUHN_LAB))
    assert status == 200, got
    refused, allowed = got["results"]
    assert (refused["status"], code(refused), refused["error"]["field"]) == (403, "forbidden", "lab_id"), refused
    assert "acts for lab DEMO-LUHN, not for DEMO-GS1" in refused["error"]["message"]
    assert allowed["status"] == 404 and code(allowed) == "unknown_tube"  # past access: the rules answer
    assert metric(guarded.metrics(), "ingest_access_refused_total", route="post_results", code="forbidden") \
        == before + 1
    for path in ("/v1/boxes/BOX-NONE/receive", f"/v1/tubes/{fresh_tube()}/receive"):
        body = {"event_id": fresh_event_id("rcv"), "lab_id": "DEMO-GS1", "received_at": now_ms()}
        if "boxes" in path:
            body["tubes"] = []
        status, _, got = guarded.request("POST", path, body, headers=bearer(LUHN_LAB))
        assert (status, code(got)) == (403, "forbidden"), got
        status, _, got = guarded.request("POST", path, {**body, "lab_id": "DEMO-LUHN"}, headers=bearer(LUHN_LAB))
        assert status not in (401, 403), got
        status, _, got = guarded.request("POST", path, body, headers=bearer(TOKENS["lab"]))  # every lab's
        assert status not in (401, 403), got


def scanned(server, token, path, body) -> tuple[int, dict]:
    status, _, got = server.request("POST", path, body, headers=bearer(token))
    return status, got


def forbidden_site(got, site) -> bool:
    return (code(got), got["error"]["field"]) == ("forbidden", "site_id") and f"not for {site}" in got["error"][
        "message"]


def test_a_site_token_binds_only_for_its_sites(guarded):
    # Without it one lost phone's token could write into every site's tubes.
    before = metric(guarded.metrics(), "ingest_access_refused_total", route="post_binding", code="forbidden")
    ev = event(site_id="SITE-B")
    status, got = scanned(guarded, SITE_A, "/v1/bindings", ev)
    assert status == 403 and forbidden_site(got, "SITE-B"), got
    assert "scans for site SITE-A" in got["error"]["message"]
    assert guarded.request("GET", f"/v1/tubes/{ev['tube']}", headers=bearer(TOKENS["read"]))[0] == 404
    assert metric(guarded.metrics(), "ingest_access_refused_total", route="post_binding", code="forbidden") \
        == before + 1
    for token in (SITE_B, TOKENS["scan"]):  # one of its sites; a token of every site
        status, got = scanned(guarded, token, "/v1/bindings", event(site_id="SITE-C"))
        assert status == 201, got
    # Before every other check, as for labs: an off-site retry of a stored event too.
    assert scanned(guarded, SITE_B, "/v1/bindings", ev)[0] == 201
    status, got = scanned(guarded, SITE_A, "/v1/bindings", ev)
    assert status == 403 and forbidden_site(got, "SITE-B"), got
    status, got = scanned(guarded, SITE_A, "/v1/bindings", {**event(site_id="SITE-Z"), "person": "bad"})
    assert status == 403 and forbidden_site(got, "SITE-Z"), got


def test_a_site_token_s_batch_refuses_the_items_of_other_sites(guarded):
    evs = [event(site_id="SITE-A"), event(site_id="SITE-B"), {**event(site_id="SITE-A"), "person": "bad"}]
    status, got = scanned(guarded, SITE_A, "/v1/bindings/batch", {"events": evs})
    assert status == 200, got
    bound, refused, invalid = got["results"]
    assert bound["status"] == 201 and bound["result"] == "bound", bound
    assert refused["status"] == 403 and forbidden_site(refused, "SITE-B"), refused
    assert invalid["status"] == 422 and code(invalid) == "invalid_person", invalid
    assert guarded.request("GET", f"/v1/tubes/{evs[1]['tube']}", headers=bearer(TOKENS["read"]))[0] == 404


def test_a_site_token_seals_packs_voids_and_hands_over_only_at_its_sites(guarded):
    ev = event(site_id="SITE-B", pool_size=5)
    kept = event(ev["tube"], site_id="SITE-B", pool_size=5)
    for scan in (ev, kept):
        assert scanned(guarded, SITE_B, "/v1/bindings", scan)[0] == 201
    void = {"event_id": fresh_event_id("void"), "device_id": "DEV-1", "reason": "wrong person",
            "voided_at": now_ms()}
    seal = {"event_id": fresh_event_id("seal"), "site_id": "SITE-B", "device_id": "DEV-1", "sealed_at": now_ms()}
    box = {"event_id": fresh_event_id("box"), "box": fresh_event_id("BOX"), "site_id": "SITE-B",
           "device_id": "DEV-1", "tubes": [ev["tube"]], "packed_at": now_ms()}
    handover = {"event_id": fresh_event_id("hand"), "courier_id": "COURIER-1", "handed_at": now_ms()}
    tube_path = f"/v1/tubes/{ev['tube']}"
    # The void and the hand-over name no site: the binding's tube and the box have one.
    steps = [(f"/v1/bindings/{ev['event_id']}/void", void), (f"{tube_path}/seal", seal), ("/v1/boxes", box),
             (f"/v1/boxes/{box['box']}/handover", handover)]
    for path, body in steps:
        status, got = scanned(guarded, SITE_A, path, body)
        assert status == 403 and forbidden_site(got, "SITE-B"), (path, got)
        status, got = scanned(guarded, SITE_B, path, body)
        assert status == 201, (path, got)
    status, _, got = guarded.request("GET", tube_path, headers=bearer(TOKENS["read"]))
    assert got["state"] == "in_transit" and [p["event_id"] for p in got["persons"]] == [kept["event_id"]], got
    # A void or hand-over naming what is not stored is refused as its apply refuses it.
    status, got = scanned(guarded, SITE_A, f"/v1/bindings/{fresh_event_id('none')}/void",
                          {**void, "event_id": fresh_event_id("void")})
    assert (status, code(got)) == (404, "unknown_binding"), got
    status, got = scanned(guarded, SITE_A, "/v1/boxes/BOX-NONE/handover", {**handover, "event_id": fresh_event_id("h")})
    assert (status, code(got)) == (404, "unknown_box"), got
    # ... the same answer as without the limit, in the same order
    old = now_ms() - 30 * 86_400_000
    for token in (SITE_A, TOKENS["scan"]):
        status, got = scanned(guarded, token, f"/v1/bindings/{fresh_event_id('none')}/void",
                              {**void, "event_id": fresh_event_id("void"), "voided_at": old})
        assert (status, code(got)) == (422, "invalid_time"), got
        status, got = scanned(guarded, token, "/v1/boxes/BOX-NONE/handover",
                              {**handover, "event_id": fresh_event_id("h"), "handed_at": old})
        assert (status, code(got)) == (422, "invalid_time"), got
        status, got = scanned(guarded, token, f"/v1/bindings/{fresh_event_id('none')}/void",
                              {**void, "event_id": kept["event_id"]})  # a stored binding's id
        assert (status, code(got)) == (409, "event_id_conflict"), got


def test_a_void_is_checked_against_the_tube_s_site_not_the_scan_s(guarded):
    # A pair duplicate sent for another site is answered "duplicate", and a
    # void of its id voids the original: the site that counts is the tube's.
    first = event(site_id="SITE-A")
    assert scanned(guarded, SITE_A, "/v1/bindings", first)[0] == 201
    again = {**first, "event_id": fresh_event_id("dup"), "site_id": "SITE-B"}
    status, got = scanned(guarded, SITE_B, "/v1/bindings", again)
    assert status == 200 and got["result"] == "duplicate", got
    void = {"event_id": fresh_event_id("void"), "device_id": "DEV-1", "reason": "x", "voided_at": now_ms()}
    status, got = scanned(guarded, SITE_B, f"/v1/bindings/{again['event_id']}/void", void)
    assert status == 403 and forbidden_site(got, "SITE-A"), got
    status, _, tube = guarded.request("GET", f"/v1/tubes/{first['tube']}", headers=bearer(TOKENS["read"]))
    assert len(tube["persons"]) == 1, tube


def ingest_token(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", "token", *args], capture_output=True, text=True,
                          timeout=60)


def printed_entry(*args: str) -> config.Token:
    """The [[access.tokens]] entry `ingest token ARGS` prints, as the server loads it."""
    out = ingest_token(*args)
    assert out.returncode == 0, out.stderr
    return config.loads("\n".join(out.stdout.splitlines()[3:]) + "\n\n" + LABS_TOML).access.tokens[0]


def test_ingest_token_prints_the_sites_a_scan_token_scans_for():
    entry = printed_entry("--name", "site 7", "--role", "scan", "--site", "SITE-7", "--site", "SITE 8",
                          "--site", "SITE-7")
    assert entry.sites == ["SITE-7", "SITE 8"]
    for args in (["--role", "read", "--site", "S"], ["--role", "scan", "--site", ""]):
        out = ingest_token("--name", "x", *args)
        assert (out.returncode, out.stdout) == (2, "") and "--site" in out.stderr, out


@pytest.mark.parametrize(("sites", "roles", "says"), [
    ('["SITE-1"]', '["read"]', "sites is given, but the token has no scan role"),
    ('[]', '["scan"]', "sites"),
    (f'["{"S" * 65}"]', '["scan"]', "sites"),
])
def test_a_token_s_sites_are_site_ids_of_a_scan_token(sites, roles, says):
    entry = f'[[access.tokens]]\nname = "x"\nroles = {roles}\nsites = {sites}\nsha256 = "{token_sha256("t")}"\n\n'
    with pytest.raises(config.ConfigError, match=says):
        config.loads("[access]\n" + entry + LABS_TOML)


@pytest.mark.parametrize(("labs", "roles", "says"), [
    ('["DEMO-NONE"]', '["lab"]', "'DEMO-NONE' is no \\[\\[labs\\]\\] id"),
    ('[]', '["lab"]', "labs"),
    ('["DEMO-LUHN"]', '["scan"]', "no lab role"),
])
def test_a_token_s_labs_must_be_configured_labs_of_a_lab_token(labs, roles, says):
    entry = f'[[access.tokens]]\nname = "x"\nroles = {roles}\nlabs = {labs}\nsha256 = "{token_sha256("t")}"\n\n'
    with pytest.raises(config.ConfigError, match=says):
        config.loads(entry + LABS_TOML)


def test_promotion_needs_the_admin_role(guarded):
    assert guarded.request("POST", "/v1/admin/promote", {})[0] == 401
    assert guarded.request("POST", "/v1/admin/promote", {}, headers=bearer(TOKENS["scan"]))[0] == 403
    status, _, body = guarded.request("POST", "/v1/admin/promote", {}, headers=bearer(TOKENS["admin"]))
    assert status == 200 and body["result"] == "already_primary"


def test_health_status_and_metrics_are_open(guarded):
    for path in ("/livez", "/readyz", "/v1/status", "/metrics"):
        status, _, _ = guarded.request("GET", path)
        assert status == 200, path


def test_unknown_paths_and_methods_answer_as_without_access_control(guarded):
    assert guarded.request("GET", "/v1/nothing-here")[0] == 404
    status, headers, _ = guarded.request("GET", "/v1/bindings")
    assert status == 405 and headers["Allow"] == "POST"


def test_refusals_are_counted_by_route_and_code(guarded):
    name = "ingest_access_refused_total"
    before = guarded.metrics()
    guarded.post(event())
    guarded.post(event(), headers=bearer(TOKENS["read"]))
    guarded.request("GET", "/v1/stats", headers=bearer(TOKENS["scan"]))
    after = guarded.metrics()
    for route, why in (("post_binding", "unauthorized"), ("post_binding", "forbidden"), ("get_stats", "forbidden")):
        assert metric(after, name, route=route, code=why) == metric(before, name, route=route, code=why) + 1


def test_two_authorization_headers_are_a_bad_request(guarded):
    body = b'{"x": 1}'
    raw = raw_request("POST", "/v1/bindings", body, {"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {TOKENS['scan']}"})
    raw = raw.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKENS['read']}\r\n\r\n".encode(), 1)
    with RawConn(guarded.port) as conn:
        conn.send(raw)
        resp = conn.read_response()
    assert resp.status == 400 and b"more than one Authorization header" in resp.body


def test_one_connection_keeps_its_token_across_requests(guarded):
    with RawConn(guarded.port) as conn:
        for _ in range(3):
            body = event()
            raw = raw_request("POST", "/v1/bindings", json.dumps(body).encode(),
                              {"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS['scan']}"})
            conn.send(raw)
            assert conn.read_response().status == 201
        conn.send(raw_request("POST", "/v1/bindings", b"{}", {"Content-Type": "application/json",
                                                             "Authorization": "Bearer wrong"}))
        assert conn.read_response().status == 401


def test_a_standby_checks_the_token_before_saying_it_is_not_primary(module_server_factory, guarded, tmp_path):
    # A client without a token learns nothing of the pair, not even which node is the primary.
    standby = module_server_factory(config=access_config(), args=("--follow", "127.0.0.1:9"))
    assert standby.post(event())[0] == 401
    status, _, body = standby.post(event(), headers=bearer(TOKENS["scan"]))
    assert status == 503 and code(body) == "not_primary"


# -- the listen address --------------------------------------------------------


def serve_exit(tmp_path, config: str, host: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.toml"
    path.write_text(config)
    return subprocess.run([sys.executable, "-m", "ingest", "serve", "--host", host, "--port", "0",
                           "--data", str(tmp_path / "data"), "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_serving_a_network_address_without_tokens_is_refused_before_anything_opens(tmp_path, host):
    proc = serve_exit(tmp_path, LABS_TOML, host)
    assert proc.returncode == 2
    (line,) = stderr_lines(proc.stderr)
    assert "no [[access.tokens]]" in line and f"reaches {host}" in line and "ingest token" in line
    assert not (tmp_path / "data").exists()


def test_loopback_addresses_need_no_tokens():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org", ""))


def test_a_loopback_server_without_tokens_warns_that_the_hosts_users_can_reach_it(server_factory, guarded):
    # Its data directory is the server's user's alone, but its port is
    # every local user's: the shipped config's quick start is for one's own machine.
    srv = server_factory(config=LABS_TOML)
    warnings = [line for line in srv.stderr_text().splitlines() if "no [[access.tokens]]" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{srv.port}" in warnings[0] and "WARNING" in warnings[0]
    assert "no [[access.tokens]]" not in guarded.stderr_text()


def test_open_on_network_lets_a_server_behind_a_proxy_start(server_factory):
    # Bound to loopback here (the suite never listens beyond it); the check
    # it passes is the one a network address meets (test above).
    srv = server_factory(config="[access]\nopen_on_network = true\n" + LABS_TOML)
    assert srv.post(event())[0] == 201


# -- tokens and their config ---------------------------------------------------


def test_ingest_token_prints_an_entry_the_server_accepts(server_factory):
    out = ingest_token("--name", 'site "17" phones', "--role", "scan", "--role", "read", "--role", "scan")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    token = lines[1]
    assert len(token) == 43 and lines[0].startswith("#") and lines[2].startswith("#")
    entry = "\n".join(lines[3:])
    assert f'sha256 = "{token_sha256(token)}"' in entry and token not in entry
    srv = server_factory(config="[access]\n" + entry + "\n\n" + LABS_TOML)
    ev = event()
    assert srv.post(ev, headers=bearer(token))[0] == 201
    status, _, body = srv.request("GET", f"/v1/persons/{ev['person']}", headers=bearer(token))
    assert status == 200
    assert srv.request("POST", "/v1/admin/promote", {}, headers=bearer(token))[0] == 403


def test_ingest_token_prints_the_labs_a_lab_token_acts_for():
    entry = printed_entry("--name", "luhn lab", "--role", "lab", "--lab", "DEMO-LUHN", "--lab", "DEMO-M37",
                          "--lab", "DEMO-LUHN")
    assert entry.labs == ["DEMO-LUHN", "DEMO-M37"]
    out = ingest_token("--name", "x", "--role", "scan", "--lab", "DEMO-LUHN")
    assert (out.returncode, out.stdout) == (2, "") and "give --role lab too" in out.stderr


def test_every_route_has_a_role_or_is_open_by_name():
    handlers = {h for by_method in [*routes.EXACT.values(), *routes.WITH_PARAM.values()] for h in by_method.values()}
    assert handlers == set(routes.ROLE_OF)
    assert set(routes.ROLE_OF.values()) == {*ROLES, None}  # and every role opens something
    assert {h for h, role in routes.ROLE_OF.items() if role is None} == {"get_status", "get_metrics", "get_livez",
                                                                         "get_readyz"}


@pytest.mark.parametrize(("entry", "says"), [
    ('name = "x"\nroles = ["scan"]\nsha256 = "abc"', "sha256"),
    (f'name = "x"\nroles = ["scan"]\nsha256 = "{token_sha256("t").upper()}"', "sha256"),
    (f'name = "x"\nroles = ["scanner"]\nsha256 = "{token_sha256("t")}"', "roles"),
    (f'name = "x"\nroles = []\nsha256 = "{token_sha256("t")}"', "roles"),
    (f'name = ""\nroles = ["scan"]\nsha256 = "{token_sha256("t")}"', "name"),
    (f'name = "x"\nroles = ["scan"]\nsha256 = "{token_sha256("t")}"\ntoken = "t"', "token"),
])
def test_a_bad_token_entry_is_a_config_error_naming_the_field(entry, says):
    with pytest.raises(config.ConfigError, match=says):
        config.loads("[[access.tokens]]\n" + entry + "\n\n" + LABS_TOML)


def test_the_same_token_twice_is_a_config_error():
    entry = f'[[access.tokens]]\nname = "a"\nroles = ["scan"]\nsha256 = "{token_sha256("t")}"\n\n'
    with pytest.raises(config.ConfigError, match="same sha256"):
        config.loads(entry + entry.replace('"a"', '"b"') + LABS_TOML)


def test_access_remembers_only_tokens_that_verified():
    token = new_token()
    access = Access({token_sha256(token): frozenset({"scan"})})
    assert access.roles(f"Bearer {token}".encode()) == {"scan"}
    for i in range(100):
        assert access.roles(f"Bearer guess-{i}".encode()) is None
    assert list(access._seen) == [f"Bearer {token}".encode()]
    assert access.roles(None) is None and access.roles(b"") is None
    padded = f"Bearer {token}".encode() + b" " * 8000  # valid, but kept would cost 8 KB a variant
    assert access.roles(padded) == {"scan"} and padded not in access._seen


def test_access_remembers_the_sites_only_of_tokens_that_verified():
    scoped, every = new_token(), new_token()
    access = Access({token_sha256(scoped): frozenset({"scan"}), token_sha256(every): frozenset({"scan"})},
                    sites={token_sha256(scoped): frozenset({"SITE-1"})})
    assert access.site_scoped
    assert access.sites(f"Bearer {scoped}".encode()) == {"SITE-1"}
    assert access.sites(f"Bearer {every}".encode()) is None
    for i in range(100):
        assert access.sites(f"Bearer guess-{i}".encode()) is None
    assert sorted(access._seen_sites) == sorted([f"Bearer {scoped}".encode(), f"Bearer {every}".encode()])
    assert access.sites(f"Bearer {scoped}".encode()) == {"SITE-1"}  # from what it remembers
    padded = f"Bearer {scoped}".encode() + b" " * 8000
    assert access.sites(padded) == {"SITE-1"} and padded not in access._seen_sites
    assert not Access({token_sha256(every): frozenset({"scan"})}).site_scoped


def test_tokens_are_random_and_url_safe():
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(len(t) == 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_ingest_promote_sends_the_admin_token_from_the_environment(guarded):
    def promote(token: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "INGEST_TOKEN"}
        if token is not None:
            env["INGEST_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "ingest", "promote", "--url", guarded.url], env=env,
                              capture_output=True, text=True, timeout=60)

    refused = promote(None)
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"]["code"] == "unauthorized"
    done = promote(TOKENS["admin"])
    assert done.returncode == 0 and json.loads(done.stdout)["result"] == "already_primary"
