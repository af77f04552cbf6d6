"""The apply function against a real store: outcomes, no change on refusal,
and replaying the change log reproduces the state exactly."""
import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import changelog, errors, lifecycle, rules
from ingest.events import BindingEvent, VoidEvent
from ingest.rules import Bound, Duplicate, Rejected
from ingest.store import Store

WINDOW = 12 * 3_600_000
NOW = int(time.time() * 1000)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "data"), map_bytes_initial=1 << 24)
    yield s
    s.close()


def ev(eid, tube="T1", person="P1", site="S1", pool=5, at=NOW, resample=False):
    return BindingEvent(eid, site, "D1", tube, person, pool, at, None, resample)


def apply(store, event):
    return store.write(lambda tx: rules.apply_binding(tx, event, "LAB", WINDOW))


def test_bound_then_duplicates(store):
    assert apply(store, ev("a")) == Bound("a", "T1", "LAB", 1, 5, 1)
    assert apply(store, ev("a")) == Duplicate("a", "a", "T1", 1, 1)
    # same pair, other event id: names the original event
    assert apply(store, ev("b")) == Duplicate("b", "a", "T1", 1, 1)
    # ... and remembers it (logged, so that a standby remembers it too)
    assert store.last_seq == 2
    assert apply(store, ev("b")) == Duplicate("b", "a", "T1", 1, 1)
    assert store.last_seq == 2
    assert type(apply(store, ev("b", person="P2"))) is Rejected  # event_id_conflict, as for any stored id


def test_a_pair_duplicate_resent_after_the_void_of_its_original_binds_nothing(store):
    # The phone scanned P1 twice (a, then b: "duplicate" of a), the volunteer
    # voided a, then the phone resent b, which it never heard the answer to:
    # b used to bind P1 into the tube again.
    apply(store, ev("a"))
    apply(store, ev("b"))
    voided = store.write(lambda tx: lifecycle.apply_void(tx, VoidEvent("v1", "D1", "wrong person", NOW + 1, "a")))
    assert voided.result == "voided" and voided.body["count"] == 0
    assert apply(store, ev("b")) == Duplicate("b", "a", "T1", 1, 1)
    assert store.tube("T1")[0].count == 0
    # A void of the duplicate's id voids the scan it repeats.
    apply(store, ev("c"))  # P1 again, after the void: bound
    assert store.tube("T1")[0].count == 1
    assert apply(store, ev("d")) == Duplicate("d", "c", "T1", 1, 4)
    voided = store.write(lambda tx: lifecycle.apply_void(tx, VoidEvent("v2", "D1", "wrong person", NOW + 2, "d")))
    assert voided.result == "voided" and store.tube("T1")[0].count == 0


def test_event_id_conflict(store):
    apply(store, ev("a"))
    out = apply(store, ev("a", person="P2"))
    assert type(out) is Rejected and out.error is errors.EVENT_ID_CONFLICT


@pytest.mark.parametrize("second, code", [
    (dict(site="S2"), errors.SITE_MISMATCH),
    (dict(pool=10), errors.POOL_SIZE_MISMATCH),
])
def test_tube_mismatches(store, second, code):
    apply(store, ev("a"))
    out = apply(store, ev("b", person="P2", **second))
    assert type(out) is Rejected and out.error is code


def test_tube_full_and_rejection_changes_nothing(store):
    for i in range(5):
        assert type(apply(store, ev(f"e{i}", person=f"P{i}"))) is Bound
    before = store.digest()
    out = apply(store, ev("e9", person="P9"))
    assert type(out) is Rejected and out.error is errors.TUBE_FULL
    assert store.digest() == before
    # the refused event id was released: the same id may bind elsewhere
    assert type(apply(store, ev("e9", tube="T2", person="P9"))) is Bound


def test_person_in_other_tube_window_and_resample(store):
    apply(store, ev("a", tube="T1"))
    out = apply(store, ev("b", tube="T2"))
    assert out.error is errors.PERSON_IN_OTHER_TUBE and out.extra == {"other_tube": "T1"}
    assert type(apply(store, ev("c", tube="T2", resample=True))) is Bound
    # outside the window a second tube is fine
    assert type(apply(store, ev("d", tube="T3", person="P7", at=NOW - WINDOW - 1))) is Bound
    assert type(apply(store, ev("e", tube="T4", person="P7", at=NOW))) is Bound


def test_closed_tube(store):
    apply(store, ev("a"))

    def seal(tx):
        tube = tx.tube("T1")
        tube.state = 1
        tx.put_tube("T1", tube)

    store.write(seal)
    out = apply(store, ev("b", person="P2"))
    assert out.error is errors.TUBE_CLOSED


def _replay(src: Store, dst: Store) -> None:
    for seq, entry in src.iter_log():
        out = dst.write(lambda tx: changelog.apply_entry(tx, entry, WINDOW))
        # a binding, or a pair duplicate's remembered id; either way one entry
        assert type(out) in (Bound, Duplicate) and dst.last_seq == seq, (seq, out)


events_strategy = st.lists(
    st.builds(
        ev,
        eid=st.sampled_from([f"e{i}" for i in range(12)]),
        tube=st.sampled_from(["T1", "T2", "T3"]),
        person=st.sampled_from([f"P{i}" for i in range(8)]),
        site=st.sampled_from(["S1", "S2"]),
        pool=st.sampled_from([1, 5]),
        at=st.integers(NOW - 2 * WINDOW, NOW),
        resample=st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy)
def test_replaying_the_log_gives_the_same_state(tmp_path_factory, events):
    base = tmp_path_factory.mktemp("replay")
    primary = Store(str(base / "p"), map_bytes_initial=1 << 24)
    replica = Store(str(base / "r"), map_bytes_initial=1 << 24)
    try:
        # half one by one, half in one group commit: same rules either way
        half = len(events) // 2
        for e in events[:half]:
            apply(primary, e)
        primary.write(lambda tx: [rules.apply_binding(tx, e, "LAB", WINDOW) for e in events[half:]])
        _replay(primary, replica)
        assert replica.digest() == primary.digest()
        assert replica.last_seq == primary.last_seq
    finally:
        primary.close()
        replica.close()
        # Each example's stores go at once: a failing example is shrunk
        # through hundreds more, and 33 MB each filled the disk.
        shutil.rmtree(base, ignore_errors=True)


def test_replay_with_seals_and_voids(tmp_path):
    from ingest import lifecycle
    from ingest.events import SealEvent, VoidEvent

    primary = Store(str(tmp_path / "p"), map_bytes_initial=1 << 24)
    replica = Store(str(tmp_path / "r"), map_bytes_initial=1 << 24)
    try:
        for i in range(4):
            apply(primary, ev(f"b{i}", tube="T1", person=f"P{i}"))
        out = primary.write(lambda tx: lifecycle.apply_void(tx, VoidEvent("v1", "D1", "wrong", NOW, "b1")))
        assert out.result == "voided"
        assert type(apply(primary, ev("b9", tube="T1", person="P9"))) is Bound
        out = primary.write(lambda tx: lifecycle.apply_seal(tx, SealEvent("s1", "S1", "D1", NOW, "T1",
                                                                          expected_count=4)))
        assert out.result == "sealed"
        for seq, entry in primary.iter_log():
            replica.write(lambda tx: changelog.apply_entry(tx, entry, WINDOW))
        assert replica.digest() == primary.digest()
        head, members = replica.tube("T1")
        assert (head.count, head.slots, head.state) == (4, 5, 1)
        assert [m.person for m in members if m.voided_seq] == ["P1"]
    finally:
        primary.close()
        replica.close()


def test_a_seal_stored_before_expected_count_is_answered_as_a_duplicate_on_retry(store):
    """A seal logged by the release before expected_count has one payload
    member less; its retry through this release sends expected_count None."""
    from ingest.events import SealEvent
    from ingest.records import EventRecord
    from ingest.rules import Repeat

    apply(store, ev("b1"))
    seal = SealEvent("s-old", "S1", "D1", NOW, "T1")
    out = store.write(lambda tx: lifecycle.apply_seal(tx, seal))
    assert out.result == "sealed"

    def as_older_release(tx):
        record = tx.event("s-old")
        assert record.payload[-1] is None  # expected_count
        tx.put_event("s-old", EventRecord(record.seq, record.count, record.payload[:-1], record.kind))

    store.write(as_older_release)
    again = store.write(lambda tx: lifecycle.apply_seal(tx, seal))
    assert type(again) is Repeat and again.seq == out.seq
    other = store.write(lambda tx: lifecycle.apply_seal(tx, SealEvent("s-old", "S1", "D1", NOW, "T1",
                                                                      expected_count=1)))
    assert type(other) is Rejected and other.error is errors.EVENT_ID_CONFLICT
