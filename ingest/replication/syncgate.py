"""Sync mode: a client's answer waits until a standby has durably applied the
change-log entries it depends on.

The committer hands every group's answers to the gate with the group's last
sequence number; the gate releases them when a standby acknowledges that
sequence. If no acknowledgement comes within `timeout_s`, the configured
policy decides: "wait" keeps the answers waiting (no write is acknowledged
that is not on two disks), "async" releases them and every later one at
once, logs an error, and shows `degraded` in the status until a standby has
caught up again. Nothing is ever answered before its own commit.
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
        self._parked: deque[tuple[int, float, Callable[[], None]]] = deque()
        self._warned_at = 0.0

    def park(self, seq: int, release: Callable[[], None]) -> None:
        if seq <= self.acked or self.degraded:
            release()
        else:
            self._parked.append((seq, time.monotonic(), release))

    def on_ack(self, seq: int, primary_last_seq: int) -> None:
        if seq > self.acked:
            self.acked = seq
        parked = self._parked
        while parked and parked[0][0] <= self.acked:
            parked.popleft()[2]()
        if self.degraded and self.acked >= primary_last_seq:
            self.degraded = False
            log.warning("sync replication restored: a standby has caught up to seq %d", self.acked)

    def check(self, now: float) -> None:
        """Called on every tick: apply the policy to answers that waited too long."""
        parked = self._parked
        if not parked or now - parked[0][1] < self.timeout_s:
            return
        if self.policy == "async":
            self.degraded = True
            log.error(
                "SYNC REPLICATION DEGRADED: no standby acknowledged seq %d within %.1fs; answering %d waiting "
                "writes after the primary's commit only (async) until a standby catches up",
                parked[0][0], self.timeout_s, len(parked),
            )
            while parked:
                parked.popleft()[2]()
        elif now - self._warned_at > self.timeout_s:
            self._warned_at = now
            log.error("sync replication: %d writes waiting for a standby for over %.1fs (policy: wait)",
                      len(parked), self.timeout_s)

    def status(self) -> dict:
        return {"mode": "sync", "policy_on_standby_lost": self.policy, "degraded": self.degraded,
                "acked_seq": self.acked, "waiting_answers": len(self._parked)}
