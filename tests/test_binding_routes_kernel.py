"""The binding routes compiled (ext/_binding_routes.pyx) against their twin
(App.post_binding_py, App.post_batch_py): on any sequence of single and batch
requests, the same answers, byte for byte, the same counters and the same
store.

Each App gets its own store and a committer that commits every submitted
request at once, on the caller's thread: what is compared is the handler,
not the timing of group commits (the real servers run the whole HTTP suite
in both modes for that).
"""
import time

import msgspec
from helpers import compiled_kernel, hc_person, id_person, luhn_tube, m37_tube
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import app as app_mod
from ingest import config as config_mod
from ingest import kernels
from ingest.http_types import Request
from ingest.metrics import Metrics
from ingest.store import Store

NOW = int(time.time() * 1000)
CONFIG = config_mod.load()


def _compiled():
    kernel = compiled_kernel("_binding_routes")
    return {"single": kernel.post_binding, "batch": kernel.post_batch}


TWIN = {"single": app_mod.App.post_binding_py, "batch": app_mod.App.post_batch_py}


def test_app_selects_the_implementation():
    expected = TWIN if kernels.PURE_PYTHON else _compiled()
    assert {"single": app_mod.App.post_binding, "batch": app_mod.App.post_batch} == expected
    handle = app_mod.App.handle_py if kernels.PURE_PYTHON else compiled_kernel("_binding_routes").handle
    assert app_mod.App.handle is handle


def test_compiled_dispatch_takes_only_a_primarys_binding_routes():
    """The compiled handle answers POST /v1/bindings and /batch on a primary
    itself (naming the route as the table does, and a handler's failure the
    twin's way); every other request, on any role, goes to App.handle_py."""
    kernel = compiled_kernel("_binding_routes")
    calls = []

    class App:  # just what the dispatch reads; its handlers then fail on what is missing
        primary_address = ""
        access = None  # every route open

        def __init__(self, role):
            self.role = role

        def handle_py(self, req, slot):
            calls.append(("twin", req.method, req.path))

        def handler_failed(self, name, slot):
            calls.append(("failed", name, slot.route))

    class Slot:
        route = None

    cases = [(b"POST", "/v1/bindings", "primary"), (b"POST", "/v1/bindings/batch", "primary"),
             (b"POST", "/v1/bindings", "standby"), (b"POST", "/v1/bindings/batch", "fenced"),
             (b"GET", "/v1/bindings", "primary"), (b"HEAD", "/v1/bindings", "primary"),
             (b"POST", "/v1/bindings/", "primary"), (b"POST", "/v1/boxes", "primary"),
             (b"POST", "/v1/bindings/x/void", "primary"), (b"GET", "/metrics", "primary")]
    for method, path, role in cases:
        kernel.handle(App(role), Request(method, path, "", b"application/json", b"{}", True), Slot())
    named = {path: app_mod.routes.resolve(b"POST", path)[0] for path in ("/v1/bindings", "/v1/bindings/batch")}
    assert calls == [("failed", named["/v1/bindings"], "post_binding"),
                     ("failed", named["/v1/bindings/batch"], "post_batch")] + [
        ("twin", method, path) for method, path, _ in cases[2:]]


class AtOnce:
    """A committer that commits each request as it comes."""

    gate = None  # no sync replication

    def __init__(self, store, apply):
        self.store, self.apply, self.in_flight = store, apply, 0

    def submit(self, work):
        work.done(self.store.write(lambda tx: [self.apply(tx, item) for item in work.items], at_ms=NOW))


class Slot:
    def __init__(self, answers):
        self.answers, self.route, self.data = answers, "post_binding", None

    def respond(self, status, body, content_type=b"application/json", extra=b""):
        self.data = b""
        self.answers.append((status, body, content_type, extra))


def _run(path, handlers, requests):
    store = Store(path, map_bytes_initial=1 << 22)
    try:
        metrics = Metrics("test")
        app = app_mod.App(CONFIG, store, None, metrics)
        app.committer = AtOnce(store, app.apply)
        answers = []
        for route, content_type, body in requests:
            handlers[route](app, Request(b"POST", "/v1/bindings", "", content_type, body, True), Slot(answers))
        return answers, dict(metrics.events), store.digest()
    finally:
        store.close()


TUBES = [luhn_tube(1), luhn_tube(2), m37_tube(3), "109836900600", "99000000001"]  # last two: bad check, no lab
PERSONS = [hc_person(1), hc_person(2), id_person(3), hc_person(4)[:-1] + "0", "HC"]

event = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["e1", "e2", "e3", "e4", "bad id!"]),
        "site_id": st.sampled_from(["S1", "S2"]),
        "device_id": st.just("D1"),
        "tube": st.sampled_from(TUBES),
        "person": st.sampled_from(PERSONS),
        "pool_size": st.sampled_from([1, 5, 10, 7]),
        # valid, 10 min ahead (refused), 8 days old (refused)
        "scanned_at": st.sampled_from([NOW - 60_000, NOW + 600_000, NOW - 8 * 86_400_000]),
    },
    optional={"resample": st.booleans(), "operator_id": st.just("op"), "extra": st.just(1)},
)
BROKEN = [
    (b"application/json", b'{"event_id": "e1"'),           # truncated
    (b"application/json", b"\xff\xfe"),                     # not UTF-8
    (b"application/json", b'{"event_id": 1}'),              # wrong type
    (b"text/plain", b"{}"),                                 # media type
    (None, b"{}"),
]
# A batch item that does not decode: the rest of the batch still counts.
item = st.one_of(event, event, event, st.just({"event_id": 5}), st.just([]))
single = st.one_of(
    event.map(lambda e: ("single", b"application/json", msgspec.json.encode(e))),
    event.map(lambda e: ("single", b"application/json", msgspec.json.encode(e))),
    event.map(lambda e: ("single", b"application/msgpack", msgspec.msgpack.encode(e))),
    st.sampled_from([("single", *b) for b in BROKEN]),
)
batch = st.one_of(
    st.lists(item, min_size=1, max_size=12).map(
        lambda es: ("batch", b"application/json", msgspec.json.encode({"events": es}))),
    st.lists(item, min_size=1, max_size=6).map(
        lambda es: ("batch", b"application/msgpack", msgspec.msgpack.encode({"events": es}))),
    st.sampled_from([("batch", *b) for b in BROKEN] + [("batch", b"application/json", b'{"events": 3}')]),
)
request = st.one_of(single, single, batch)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(request, min_size=1, max_size=25))
def test_kernel_and_twin_answer_alike(tmp_path_factory, requests):
    compiled = _compiled()
    base = tmp_path_factory.mktemp("twins")
    twin = _run(str(base / "py"), TWIN, requests)
    kernel = _run(str(base / "c"), compiled, requests)
    assert kernel == twin


def test_every_kind_of_answer_is_compared(tmp_path):
    """The stream above reaches bound, duplicate, the 4xx of each stage and
    a store refusal; a fixed stream proves the comparison sees them."""
    ok = {"event_id": "e1", "site_id": "S1", "device_id": "D1", "tube": TUBES[0], "person": PERSONS[0],
          "pool_size": 1, "scanned_at": NOW - 60_000}
    changes = ({}, {}, {"event_id": "e2", "person": PERSONS[1]}, {"tube": TUBES[3]}, {"tube": TUBES[4]},
               {"person": PERSONS[3]}, {"scanned_at": NOW + 600_000}, {"extra": 1})
    requests = [("single", b"application/json", msgspec.json.encode({**ok, **change})) for change in changes]
    requests += [("single", b"text/plain", b"{}")]
    # the same again as one batch, after a fresh tube's first event: all duplicates or refusals but one
    fresh = {**ok, "event_id": "b0", "tube": TUBES[1], "person": PERSONS[2]}
    requests += [("batch", b"application/json", msgspec.json.encode(
        {"events": [fresh] + [{**ok, **change} for change in changes] + [{"event_id": 5}]}))]
    answers, counts, _ = _run(str(tmp_path / "c"), _compiled(), requests)
    statuses = [a[0] for a in answers]
    assert statuses == [201, 200, 409, 422, 422, 422, 422, 400, 415, 200]
    items = msgspec.json.decode(answers[-1][1])["results"]
    assert [i["status"] for i in items] == [201, 200, 200, 409, 422, 422, 422, 422, 400, 400]
    assert _run(str(tmp_path / "py"), TWIN, requests)[:2] == (answers, counts)
