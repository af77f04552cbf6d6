"""What a read accepts in its query and path, through the real server:
`since`/`limit` of the positives feed and `from`/`to` of the statistics are
plain ASCII values of their documented form (anything else, an empty value
included, is `400 malformed` naming the parameter), a `since` past the u64
sequence numbers is refused rather than failing the handler, and a path
parameter whose bytes are not UTF-8 names nothing (`404 not_found`).

Also the local date the birth-date check uses, across DST changes
(`app.local_day`, no server needed).
"""
from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
from helpers import event, fresh_event_id

U64_MAX = 2**64 - 1


def assert_malformed(got: tuple, field: str) -> None:
    status, _, body = got
    assert status == 400, body
    assert body["error"]["code"] == "malformed", body
    assert body["error"]["field"] == field, body


def assert_not_found(got: tuple) -> None:
    status, _, body = got
    assert status == 404, body
    assert body["error"]["code"] == "not_found", body


# -- the positives feed: since and limit ---------------------------------------------


@pytest.mark.parametrize("since", [
    str(2**64),                     # one past the largest sequence number: was a 500
    str(2**64 + 1),
    "99999999999999999999",         # 20 digits, above 2^64-1
])
def test_since_above_u64_is_malformed(server, since):
    assert_malformed(server.request("GET", f"/v1/positives?since={since}"), "since")


def test_since_at_largest_sequence_number_is_an_empty_page(server):
    status, _, body = server.request("GET", f"/v1/positives?since={U64_MAX}")
    assert status == 200, body
    assert body == {"positives": [], "next_since": U64_MAX}


@pytest.mark.parametrize("name", ["since", "limit"])
@pytest.mark.parametrize("raw", [
    "1_0",            # int() takes digit separators
    "%20%2B5%20",     # " +5 ": sign and spaces
    "+5",             # "+" in a query is a space: " 5"
    "%2B5",
    "5%0A",           # a trailing newline
    "%D9%A1",         # ARABIC-INDIC DIGIT ONE
    "%EF%BC%95",      # FULLWIDTH DIGIT FIVE
    "",               # empty: not the default
    "0" * 20 + "1",   # 21 digits: more than any u64 needs
])
def test_not_plain_decimal_digits_is_malformed(server, name, raw):
    assert_malformed(server.request("GET", f"/v1/positives?{name}={raw}"), name)


@pytest.mark.parametrize("query,field", [
    ("since", "since"), ("limit", "limit"), ("since=1&limit", "limit"), ("limit=5&since=", "since"),
])
def test_a_parameter_without_a_value_is_malformed(server, query, field):
    assert_malformed(server.request("GET", f"/v1/positives?{query}"), field)


@pytest.mark.parametrize("path,query,field", [
    ("/v1/positives", "sinse=5", "sinse"),       # a misspelling read the whole feed from 0
    ("/v1/positives", "since=5&since=9", "since"),  # which one? a guess either way
    ("/v1/positives", "since=5&format=csv", "format"),
    ("/v1/stats", "from=2026-11-22T08&form=2026-11-22T09", "form"),
    ("/v1/sites/S-Q/stats", "to=2026-11-22T08&to=2026-11-22T09", "to"),
])
def test_an_unknown_or_repeated_parameter_is_malformed(server, path, query, field):
    assert_malformed(server.request("GET", f"{path}?{query}"), field)


@pytest.mark.parametrize("limit", ["0", "1001"])
def test_a_limit_out_of_range_names_limit(server, limit):
    assert_malformed(server.request("GET", f"/v1/positives?since=0&limit={limit}"), "limit")


def test_plain_numbers_are_accepted(server):
    """Guard: the forms the docs promise still answer 200."""
    for query in ["", "since=0", "since=00&limit=1000", "limit=1", f"since={U64_MAX - 1}&limit=0100"]:
        status, _, body = server.request("GET", f"/v1/positives?{query}")
        assert status == 200, (query, body)
        assert body["positives"] == [], (query, body)


# -- statistics: from and to --------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/stats", "/v1/sites/S-Q/stats"])
@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize("raw", [
    "",                    # empty: not "no bound"
    "2026-11-22",          # a day is not an hour label
    "2026-11-22T8",        # not zero-padded: would compare wrongly
    "2026-11-22T08%0A",    # a trailing newline
    "%EF%BC%92026-11-22T08",  # a fullwidth digit
    "~",
    "2026-02-30T10",       # no such day: matched no bucket, answered as a quiet day
    "2026-13-01T10",       # no such month
    "2026-11-22T24",       # no such hour
    "0000-01-01T00",       # no year 0
])
def test_an_hour_bound_not_an_hour_label_is_malformed(server, path, name, raw):
    assert_malformed(server.request("GET", f"{path}?{name}={raw}"), name)


def test_hour_bounds_narrow_the_hours(server):
    """Guard: well-formed hour labels still narrow the hours."""
    site = fresh_event_id("S-H")
    before = datetime.now(UTC).strftime("%Y-%m-%dT%H")  # the shipped stats.time_zone is UTC
    assert server.post(event(site_id=site))[0] == 201
    after = datetime.now(UTC).strftime("%Y-%m-%dT%H")
    status, _, body = server.request("GET", f"/v1/sites/{site}/stats?from={before}&to={after}")
    assert status == 200, body
    assert sum(h["people"] for h in body["hours"]) == 1
    status, _, body = server.request("GET", f"/v1/sites/{site}/stats?from=9999-12-31T23")
    assert status == 200 and body["hours"] == [] and body["total"]["people"] == 1, body


@pytest.mark.parametrize("path", ["/v1/stats", "/v1/sites/S-Q/stats"])
def test_a_to_before_from_is_malformed(server, path):
    status, _, body = server.request("GET", f"{path}?from=2026-11-22T09&to=2026-11-22T08")
    assert_malformed((status, _, body), "to")
    assert "before from" in body["error"]["message"], body
    status, _, body = server.request("GET", f"{path}?from=2026-11-22T08&to=2026-11-22T08")  # one hour: fine
    assert status == 200, body


# -- path parameters that are not UTF-8 -------------------------------------------------


@pytest.fixture(scope="module")
def replacement_site(server):
    """A site literally named U+FFFD, with one person: what every undecodable
    site path used to resolve to."""
    assert server.post(event(site_id="\ufffd"))[0] == 201
    status, _, body = server.request("GET", "/v1/sites/%EF%BF%BD/stats")
    assert status == 200 and body["total"]["people"] == 1, body


@pytest.mark.parametrize("param", [
    "%FF", "%FE", "%C0", "%80",
    "%C0%80",          # an overlong NUL
    "%ED%A0%80",       # a UTF-16 surrogate
    "%F4%90%80%80",    # above U+10FFFF
    "S-%C3",           # cut short
])
def test_site_stats_of_a_non_utf8_site_is_not_found(server, replacement_site, param):
    assert_not_found(server.request("GET", f"/v1/sites/{param}/stats"))


def test_a_percent_encoded_utf8_site_is_found(server):
    """Guard: strict decoding still reads UTF-8 escapes."""
    site = "\u00c4-" + fresh_event_id("S")
    assert server.post(event(site_id=site))[0] == 201
    status, _, body = server.request("GET", "/v1/sites/%C3%84-" + site[2:] + "/stats")
    assert status == 200 and body["scope"] == site and body["total"]["people"] == 1, body


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/tubes/%FF/seal",
     {"event_id": "seal-ff", "site_id": "S", "device_id": "D", "sealed_at": 1}),
    ("POST", "/v1/bindings/%FF/void",
     {"event_id": "void-ff", "device_id": "D", "reason": "r", "voided_at": 1}),
    ("POST", "/v1/sites/%FF/stats", None),   # not a 405: the path names nothing
])
def test_other_routes_with_a_non_utf8_parameter_are_not_found(server, method, path, body):
    before = server.last_seq()
    assert_not_found(server.request(method, path, body))
    assert server.last_seq() == before


# -- the local date across DST changes (no server) -------------------------------------


@pytest.fixture
def berlin():
    """Local time is Europe/Berlin (as a POSIX rule: no tz database needed)
    for the test, then whatever it was."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "CET-1CEST,M3.5.0,M10.5.0/3"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def utc_ms(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize("now,today,next_day", [
    # 2024-03-31 has 23 hours (02:00 CET -> 03:00 CEST); 01:30 CET is 00:30Z,
    # the next midnight 2024-04-01 00:00 CEST is 22:00Z.
    (utc_ms(2024, 3, 31, 0, 30), 20240331, utc_ms(2024, 3, 31, 22)),
    # 2024-10-27 has 25 hours (03:00 CEST -> 02:00 CET); 01:30 CEST is 23:30Z
    # the day before, the next midnight 2024-10-28 00:00 CET is 23:00Z.
    (utc_ms(2024, 10, 26, 23, 30), 20241027, utc_ms(2024, 10, 27, 23)),
    # an ordinary day, across a year end: 2024-12-31 12:00 CET
    (utc_ms(2024, 12, 31, 11), 20241231, utc_ms(2024, 12, 31, 23)),
])
def test_local_day_ends_at_the_next_local_midnight(berlin, now, today, next_day):
    from ingest.app import local_day

    assert local_day(now) == (today, next_day)
    assert local_day(next_day - 1)[0] == today
    assert local_day(next_day)[0] != today


def test_birth_date_day_turns_at_midnight_after_a_short_day(berlin):
    """The app's cached date, first asked before a spring-forward change,
    turns at the next local midnight, not an hour after it: a person born
    on the new day is not a future birth."""
    from ingest.app import App

    app = App.__new__(App)  # only the date cache is exercised
    app._today = app._today_until_ms = 0
    assert app._today_yyyymmdd(utc_ms(2024, 3, 31, 0, 30)) == 20240331   # 01:30 CET
    assert app._today_yyyymmdd(utc_ms(2024, 3, 31, 21, 59)) == 20240331  # 23:59 CEST
    assert app._today_yyyymmdd(utc_ms(2024, 3, 31, 22, 30)) == 20240401  # 00:30 CEST, next day
