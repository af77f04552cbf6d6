"""The group commit on its own: a real store, a real thread and loop, an apply
function that fails on purpose for one request."""
from __future__ import annotations

import asyncio

import pytest

from ingest import errors
from ingest.committer import Committer, Work
from ingest.outcomes import Rejected
from ingest.records import LogEntry
from ingest.store import Store


def apply(tx, item: str):
    """Log the item, or fail the transaction on "bug" (as a programming error would)."""
    if item == "bug":
        raise RuntimeError("a bug in one request's apply")
    tx.append(LogEntry("test", "", [item]))
    return item


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "data"), map_bytes_initial=16 << 20)
    yield s
    s.close()


def commit_one_group(store: Store, requests: list[list[str]]) -> list[list]:
    """Queue every request before the thread starts, so that they share one commit."""
    loop = asyncio.new_event_loop()
    committer = Committer(store, apply, loop, events_max=4096)
    answers: dict[int, list] = {}
    everyone = loop.create_future()

    def done_for(i: int):
        def done(outcomes: list) -> None:
            answers[i] = outcomes
            if len(answers) == len(requests):
                everyone.set_result(None)
        return done

    for i, items in enumerate(requests):
        committer.submit(Work(items, done_for(i)))
    committer.start()
    try:
        loop.run_until_complete(asyncio.wait_for(everyone, 30))
    finally:
        committer.stop(timeout=30)
        loop.close()
    return [answers[i] for i in range(len(requests))]


def test_a_failing_request_fails_alone_and_the_others_commit(store):
    answers = commit_one_group(store, [["a1", "a2"], ["b1", "bug"], ["c1"]])
    assert answers[0] == ["a1", "a2"] and answers[2] == ["c1"]
    assert all(type(o) is Rejected and o.error is errors.STORE_ERROR for o in answers[1]), answers[1]
    # nothing of the failed request was written, and the others exactly once
    assert [entry.payload for _, entry in store.log()] == [["a1"], ["a2"], ["c1"]]
    assert store.last_seq == 3


def test_a_request_alone_in_its_group_fails_with_store_error(store):
    [answer] = commit_one_group(store, [["bug"]])
    assert type(answer[0]) is Rejected and answer[0].error is errors.STORE_ERROR
    assert store.last_seq == 0 and store.log() == []


def test_a_failing_after_commit_hook_does_not_hold_the_answers(store):
    loop = asyncio.new_event_loop()
    committer = Committer(store, apply, loop, events_max=4096)

    def broken() -> None:
        raise RuntimeError("a replication hook that fails")

    committer.on_commit = broken
    answered = loop.create_future()
    committer.submit(Work(["x"], answered.set_result))
    committer.start()
    try:
        assert loop.run_until_complete(asyncio.wait_for(answered, 30)) == ["x"]
    finally:
        committer.stop(timeout=30)
        loop.close()
    assert committer.in_flight == 0 and store.last_seq == 1
