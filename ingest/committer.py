"""Group commit: many requests, one durable LMDB transaction.

The event loop queues work; one committer thread drains the queue, applies
every queued event in one write transaction, commits it (LMDB fsyncs with the
GIL released, so the loop keeps parsing the next requests meanwhile) and
hands all the outcomes back to the loop in one callback. Under load the
queue fills while a commit runs, so batches grow exactly when fsyncs would
otherwise be the bottleneck; idle, a lone event commits at once.

An answer is only ever produced after the commit that holds its event
returned, so every 2xx is on disk. The thread is the store's only writer,
which also serializes racing events: of two events for the last place in a
tube, the one applied first wins, the other sees the full tube.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ingest import errors
from ingest.logthrottle import Throttled
from ingest.metrics import Metrics
from ingest.rules import Rejected
from ingest.store import Store
from ingest.store_errors import StoreFull
from ingest.writetx import WriteTx

log = logging.getLogger("ingest.committer")

_STOP = object()

# The answer to each event of a group the sync gate holds when the node is
# fenced: committed here, but maybe on no standby, so maybe not in the new
# primary's history. A retry there is safe (event ids).
REPLACED = Rejected(errors.NOT_PRIMARY, "this node was replaced by a new primary before a standby had the "
                                         "event; send it again to the primary")


class Work(msgspec.Struct, frozen=True):
    """One request's share of a commit: its items, and whom to tell.

    A Struct because one is made per request: msgspec builds it in C, where
    a class with an __init__ costs a Python frame."""

    items: Sequence[Any]
    done: Callable[[list], None]


class Committer:
    def __init__(
        self,
        store: Store,
        apply: Callable[[WriteTx, Any], Any],
        loop: asyncio.AbstractEventLoop,
        events_max: int,
        metrics: Metrics | None = None,
    ):
        self._store = store
        self._apply = apply
        self._loop = loop
        self._events_max = events_max
        self._metrics = metrics
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # A full or failing store refuses every commit under load: a line
        # each flooded the log (and the full disk); logthrottle.py.
        self._log_full = Throttled(log)
        self._log_failed = Throttled(log)
        # Called on the loop after each commit (replication sends the new
        # entries on), and, in sync mode, the gate that holds answers until a
        # standby has the entries (replication/syncgate.py).
        self.on_commit: Callable[[], None] | None = None
        self.gate = None
        self._thread = threading.Thread(target=self._run, name="ingest-committer", daemon=True)
        self.in_flight = 0  # items queued or being committed (loop thread's view)

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Work) -> None:
        self.in_flight += len(work.items)
        self._queue.put(work)

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        q = self._queue
        events_max = self._events_max
        stopping = False
        while not stopping:
            work = q.get()
            if work is _STOP:
                break
            batch = [work]
            n = len(work.items)
            while n < events_max:
                try:
                    work = q.get_nowait()
                except queue.Empty:
                    break
                if work is _STOP:
                    stopping = True
                    break
                batch.append(work)
                n += len(work.items)
            self._commit(batch, n)

    def _commit(self, batch: list[Work], n: int) -> None:
        started = time.perf_counter()
        outcomes = self._write(batch, n)
        if outcomes is None:
            # One request's bug must not cost the others their writes: the
            # apply is a pure function of the store, so each request is run
            # again in a transaction of its own, and only what fails alone fails.
            log.error("write transaction of %d requests failed; committing them one by one", len(batch))
            outcomes = [self._write([work], len(work.items))[0] for work in batch]
        if self._metrics is not None:
            self._metrics.commit_events.observe(n)
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._loop.call_soon_threadsafe(self._deliver, batch, outcomes, n, self._store.last_seq)

    def _write(self, batch: list[Work], n: int) -> list[list] | None:
        """The batch's outcomes, committed; or None when the transaction of
        more than one request failed for a reason other than space."""
        apply = self._apply

        def apply_all(tx: WriteTx) -> list[list]:
            return [[apply(tx, item) for item in work.items] for work in batch]

        try:
            return self._store.write(apply_all)
        except StoreFull as exc:
            self._log_full(logging.ERROR, "store full, %d events refused: %s", n, exc)
            return self._fail(batch, Rejected(errors.INSUFFICIENT_STORAGE, f"store is full: {exc}"))
        except Exception:
            if len(batch) > 1:
                return None
            self._log_failed(logging.ERROR, "write transaction failed, %d events refused", n, exc_info=True)
            return self._fail(batch, Rejected(errors.STORE_ERROR, "the store failed; nothing was written"))

    @staticmethod
    def _fail(batch: list[Work], outcome: Rejected) -> list[list]:
        return [[outcome] * len(work.items) for work in batch]

    def _deliver(self, batch: list[Work], outcomes: list[list], n: int, last_seq: int) -> None:
        if self.on_commit is not None:
            try:
                self.on_commit()
            except Exception:
                # Shipping the log on is replication's business; the answers
                # (and, in sync mode, the gate) must still get their turn.
                log.exception("after-commit hook failed")
        if self.gate is not None:
            # Even a duplicate or a refusal waits: its answer speaks of state
            # that must be on the standby too. Fenced before a standby had
            # it, the whole group is refused instead (syncgate.py).
            self.gate.park(last_seq, lambda: self._answer(batch, outcomes, n),
                           lambda: self._answer(batch, self._fail(batch, REPLACED), n))
        else:
            self._answer(batch, outcomes, n)

    def _answer(self, batch: list[Work], outcomes: list[list], n: int) -> None:
        self.in_flight -= n
        for work, out in zip(batch, outcomes):
            try:
                work.done(out)
            except Exception:
                # One broken answer must not leave the rest of the group unanswered.
                log.exception("answering a committed request failed")
