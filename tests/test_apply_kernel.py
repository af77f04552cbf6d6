"""The compiled binding apply (ext/_apply.pyx) against its plain-Python twin
(rules.apply_binding_py): on any stream of events, the same outcomes and the
same store, byte for byte.

Streams are drawn from a small world (a few tubes, people, sites, event ids)
so that every rule fires: retries, event-id conflicts, the same pair under
another id, full tubes, site and pool-size mismatches, the person window,
resamples; seals and voids are interleaved (shared Python code) so that the
closed-tube and voided-member paths are taken too.
"""

from helpers import compiled_kernel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import kernels, lifecycle, rules
from ingest.events import BindingEvent, SealEvent, VoidEvent
from ingest.outcomes import Bound, Duplicate, Rejected
from ingest.records import OPEN, Member, Tube
from ingest.keys import MEMBER_POSITION_MAX
from ingest.store import Store

AT_MS = 1_790_000_000_000  # the server time of every commit: digests must not depend on the clock
T0 = AT_MS - 3_600_000
HOUR = 3_600_000
WINDOW = 12 * HOUR


def _compiled():
    return compiled_kernel("_apply").apply_binding


def test_rules_select_the_implementation():
    if kernels.PURE_PYTHON:
        assert rules.apply_binding is rules.apply_binding_py
    else:
        assert rules.apply_binding is _compiled()


binding = st.builds(
    BindingEvent,
    event_id=st.sampled_from([f"e{i}" for i in range(12)]),
    site_id=st.sampled_from(["S1", "S2", "站点"]),
    device_id=st.just("D1"),
    tube=st.sampled_from(["T1", "T2", "T3"]),
    person=st.sampled_from(["P1", "P2", "P3", "P4", "P5", "P6"]),
    pool_size=st.sampled_from([1, 5, 10, 20]),
    # hours apart around the 12 h window, so that its edge is met often
    scanned_at=st.sampled_from([0, 1, 11, 12, 13, 24]).map(lambda h: T0 - h * HOUR),
    operator_id=st.sampled_from([None, "op"]),
    resample=st.sampled_from([None, False, True]),
)
seal = st.builds(lambda i, t: ("seal", SealEvent(f"s{i}", "S1", "D1", T0, t)),
                 st.integers(0, 3), st.sampled_from(["T1", "T2", "T3"]))
void = st.builds(lambda i, b: ("void", VoidEvent(f"v{i}", "D1", "wrong person", T0, f"e{b}")),
                 st.integers(0, 3), st.integers(0, 11))
step = st.one_of(binding.map(lambda e: ("binding", e)), binding.map(lambda e: ("binding", e)), seal, void)


def _run(path: str, apply_binding, steps, group: int):
    store = Store(path, map_bytes_initial=1 << 22)
    try:
        outcomes = []

        def apply(tx, kind, ev):
            if kind == "binding":
                return apply_binding(tx, ev, "LAB", WINDOW)
            if kind == "seal":
                return lifecycle.apply_seal(tx, ev)
            return lifecycle.apply_void(tx, ev)

        # Several events per transaction, as the committer groups them.
        for start in range(0, len(steps), group):
            chunk = steps[start:start + group]
            outcomes += store.write(lambda tx, chunk=chunk: [apply(tx, kind, ev) for kind, ev in chunk], at_ms=AT_MS)
        return outcomes, store.digest(), store.last_seq
    finally:
        store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=40), group=st.integers(1, 8))
def test_kernel_and_twin_agree_on_any_stream(tmp_path_factory, steps, group):
    compiled = _compiled()
    base = tmp_path_factory.mktemp("twins")
    got_py = _run(str(base / "py"), rules.apply_binding_py, steps, group)
    got_c = _run(str(base / "c"), compiled, steps, group)
    assert got_c[0] == got_py[0]  # outcomes, one by one
    assert got_c[1:] == got_py[1:]  # digest of every table, last seq


def test_every_rule_is_exercised(tmp_path):
    """The differential test is only as good as the paths it takes: a fixed
    stream that reaches every outcome, through both."""
    e = lambda eid, **kw: BindingEvent(**{"event_id": eid, "site_id": "S1", "device_id": "D1", "tube": "T1",
                                         "person": "P1", "pool_size": 1, "scanned_at": T0, **kw})
    steps = [
        ("binding", e("a")),                                        # bound
        ("binding", e("a")),                                        # retry: duplicate
        ("binding", e("a", person="P2")),                           # event_id_conflict
        ("binding", e("b")),                                        # same pair: duplicate
        ("binding", e("c", person="P2")),                           # tube_full
        ("binding", e("d", tube="T2", person="P1")),                # person_in_other_tube
        ("binding", e("d", tube="T2", person="P1", resample=True)),  # resample: bound
        ("binding", e("w", tube="T3", person="P1", scanned_at=T0 + WINDOW)),  # window apart: bound
        ("binding", e("f", tube="T2", person="P3", site_id="S2")),  # site_mismatch
        ("binding", e("g", tube="T2", person="P3", pool_size=5)),   # pool_size_mismatch
        ("seal", SealEvent("s", "S1", "D1", T0, "T1")),
        ("binding", e("h", person="P4")),                           # tube_closed
    ]
    outcomes, digest, last = _run(str(tmp_path / "py"), rules.apply_binding_py, steps, 3)
    kinds = [type(o).__name__ if type(o) is not Rejected else o.error.code for o in outcomes]
    assert kinds == ["Bound", "Duplicate", "event_id_conflict", "Duplicate", "tube_full", "person_in_other_tube",
                     "Bound", "Bound", "site_mismatch", "pool_size_mismatch", "Done", "tube_closed"]
    assert _run(str(tmp_path / "c"), _compiled(), steps, 3) == (outcomes, digest, last)
    assert isinstance(outcomes[0], Bound) and isinstance(outcomes[1], Duplicate)


def test_a_tube_takes_no_more_bindings_than_member_keys_hold(tmp_path):
    """Bind-and-void can use up a tube's positions (two bytes of the member
    key): the last one is taken, the next binding is refused, and no member
    is overwritten. Both implementations alike."""
    first = Member("P0", "e0", T0, 1)
    e = lambda eid, person: BindingEvent(eid, "S1", "D1", "T1", person, 10, T0)

    def run(path, apply_binding):
        store = Store(path, map_bytes_initial=1 << 22)
        try:
            def setup(tx):
                # as after MEMBER_POSITION_MAX - 1 bindings, all but one voided
                tx.put_tube("T1", Tube("S1", "LAB", 10, OPEN, 1, 1, MEMBER_POSITION_MAX - 1))
                tx.put_member("T1", 1, first)
            store.write(setup, at_ms=AT_MS)
            outcomes = store.write(lambda tx: [apply_binding(tx, e("last", "P1"), "LAB", WINDOW),
                                               apply_binding(tx, e("over", "P2"), "LAB", WINDOW)], at_ms=AT_MS)
            view = store.tube("T1")
            return outcomes, view, store.digest()
        finally:
            store.close()

    outcomes, (tube, members), digest = run(str(tmp_path / "py"), rules.apply_binding_py)
    assert type(outcomes[0]) is Bound and outcomes[0].count == 2
    assert type(outcomes[1]) is Rejected and outcomes[1].error.code == "tube_full"
    assert "positions" in outcomes[1].message
    assert tube.slots == MEMBER_POSITION_MAX and [m.person for m in members] == ["P0", "P1"]
    assert members[0] == first
    assert run(str(tmp_path / "c"), _compiled()) == (outcomes, (tube, members), digest)
