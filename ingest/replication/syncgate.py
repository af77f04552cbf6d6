"""Sync mode: a client's answer waits until a standby has durably applied the
change-log entries it depends on.

The committer hands every group's answers to the gate with the group's last
sequence number, as two callbacks: `release` (the answers it made) and
`refuse` (a 503 not_primary for each request instead). The gate releases
them when a standby acknowledges that sequence (an ACK, or the HELLO of a
standby whose log the primary checked to be a prefix of its own). If no
acknowledgement comes within `timeout_s`, the configured policy decides:
"wait" keeps the answers waiting (no write is acknowledged that is not on
two disks), "async" releases them and every later one at once, logs an
error, and shows `degraded` in the status until a standby has caught up
again. Nothing is ever answered before its own commit.

Fenced (another node was promoted; `fence`), the gate refuses every answer
waiting and every one parked after: a standby may not have the event, and
the new primary's history will never have what it lacks, so "201" would be
a promise nobody keeps. The client retries on the new primary (event ids
make that safe). Neither the policy nor a late ACK releases anything then.

    state      event                             what happens to answers
    normal     park(seq <= acked)                released at once
               park                              wait
               ACK/HELLO of seq                  those up to seq released
               timeout, policy "async"           all released -> degraded
               timeout, policy "wait"            keep waiting (logged)
    degraded   park                              released at once
               ACK of the primary's last seq     -> normal
    any        fence                             all refused -> fenced
    fenced     park                              refused at once
               ACK, timeout                      nothing
               promoted again                    as normal (acked kept)
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("ingest.replication")


class SyncGate:
    def __init__(self, timeout_s: float, policy: str):
        assert policy in ("wait", "async")
        self.timeout_s = timeout_s
        self.policy = policy
        self.acked = 0  # highest seq any standby has durably applied
        self.degraded = False
        # Set by fence(): says whether the node is still fenced (a fenced node
        # may be promoted again; then the gate works as before).
        self._fenced: Callable[[], bool] | None = None
        # (seq, parked at, release, refuse), in seq order
        self._parked: deque[tuple[int, float, Callable[[], None], Callable[[], None]]] = deque()
        self._warned_at = 0.0

    @property
    def fenced(self) -> bool:
        return self._fenced is not None and self._fenced()

    def park(self, seq: int, release: Callable[[], None], refuse: Callable[[], None]) -> None:
        if self.fenced:
            refuse()
        elif seq <= self.acked or self.degraded:
            release()
        else:
            self._parked.append((seq, time.monotonic(), release, refuse))

    def fence(self, still_fenced: Callable[[], bool]) -> None:
        """Another node was promoted: refuse every answer waiting, and every
        one parked while `still_fenced()` says so."""
        self._fenced = still_fenced
        parked = self._parked
        if parked:
            log.error("fenced: answering %d waiting writes 503 not_primary (no standby had acknowledged them)",
                      len(parked))
        while parked:
            _call(parked.popleft()[3])

    def on_ack(self, seq: int, primary_last_seq: int) -> None:
        if seq > self.acked:
            self.acked = seq
        if self.fenced:
            return
        parked = self._parked
        while parked and parked[0][0] <= self.acked:
            _call(parked.popleft()[2])
        if self.degraded and self.acked >= primary_last_seq:
            self.degraded = False
            log.warning("sync replication restored: a standby has caught up to seq %d", self.acked)

    def check(self, now: float) -> None:
        """Called on every tick: apply the policy to answers that waited too long."""
        parked = self._parked
        if not parked or now - parked[0][1] < self.timeout_s:
            return
        if self.fenced:
            return  # fence() refused them all; nothing waits while fenced
        if self.policy == "async":
            self.degraded = True
            log.error(
                "SYNC REPLICATION DEGRADED: no standby acknowledged seq %d within %.1fs; answering %d waiting "
                "writes after the primary's commit only (async) until a standby catches up",
                parked[0][0], self.timeout_s, len(parked),
            )
            while parked:
                _call(parked.popleft()[2])
        elif now - self._warned_at > self.timeout_s:
            self._warned_at = now
            log.error("sync replication: %d writes waiting for a standby for over %.1fs (policy: wait)",
                      len(parked), self.timeout_s)

    def status(self) -> dict:
        return {"mode": "sync", "policy_on_standby_lost": self.policy, "degraded": self.degraded,
                "acked_seq": self.acked, "waiting_answers": len(self._parked)}


def _call(answer: Callable[[], None]) -> None:
    # One broken answer must not leave the rest waiting, nor break the ACK's
    # connection or the tick that called the gate.
    try:
        answer()
    except Exception:
        log.exception("answering a write at the sync gate failed")
