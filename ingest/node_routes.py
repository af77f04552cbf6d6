"""The node's own routes: its role (status, promotion, fencing) and its
health for operators and load balancers (metrics, livez, readyz); see
docs/replication.md and docs/operations.md. A part of App (app.py)."""
from __future__ import annotations

import asyncio
import logging
import re

from ingest import codes, errors, query
from ingest.answers import encode_json
from ingest.events import Malformed
from ingest.http import Request
from ingest.store_errors import StoreFull

log = logging.getLogger("ingest.app")

_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
_BOOL = re.compile(r"true|false")


class NodeRoutes:
    def get_status(self, req: Request, slot) -> None:
        body = {
            "role": self.role,
            "node": self.store.node,
            "epoch": self.store.epoch,
            "implementation": codes.IMPLEMENTATION,
            "last_seq": self.store.last_seq,
            "log_first_seq": self.store.log_start,
            "draining": self.draining,
            "in_flight": self.committer.in_flight if self.committer else 0,
        }
        if self.follower is not None:
            body["replication"] = self.follower.status()
        elif self.hub is not None:
            body["replication"] = {"standbys": self.hub.status(),
                                   **(self.gate.status() if self.gate else {"mode": "async"})}
        slot.respond(200, encode_json(body))

    def replication_gauges(self) -> dict:
        """The replication state /metrics exports (metrics.REPLICATION_GAUGES),
        as the status route shows it: what an alert watches."""
        gauges = {"role": self.role, "ingest_replication_epoch": self.store.epoch}
        if self.follower is not None:
            status = self.follower.status()
            gauges.update(ingest_replication_connected=int(status["connected"]),
                          ingest_replication_lag_events=status["lag_events"],
                          ingest_replication_stopped=int(bool(status["stopped_because"])))
        elif self.hub is not None:
            standbys = self.hub.status()
            gauges.update(ingest_replication_standbys=len(standbys),
                          ingest_replication_standby_lag_events=max((s["lag_events"] for s in standbys), default=None))
            if self.gate is not None:
                gauges["ingest_replication_degraded"] = int(self.gate.degraded)
        return gauges

    def fence(self, epoch: int) -> asyncio.Future:
        """A higher epoch exists: another node was promoted. Stop writes now,
        and for good: the store keeps it across restarts. The future is True
        once the fence is on disk (at once when the store has it, or follows
        that epoch already), False when storing it failed; the peer that
        told us is answered only then (replication/primary.py), and stops
        telling. A standby stores it too: restarted without --follow (a unit
        file's usual command line), it would otherwise be a primary again
        that no one tells any more."""
        loop = asyncio.get_running_loop()
        if self.role == "primary":
            log.error("fenced: epoch %d is above ours (%d); refusing writes from now on", epoch, self.store.epoch)
            self.role = "fenced"
            if self.gate is not None:
                # Answers waiting for a standby (sync mode) speak of events
                # the new primary may never get: they are refused, not
                # released, while this node is not the primary.
                self.gate.fence(lambda: self.role != "primary")
        elif self.store.fenced_at >= epoch or self.store.epoch >= epoch:
            done = loop.create_future()
            done.set_result(True)
            return done
        if self._fencing is None or self._fencing.done():
            # A failed store is tried again at the next hello of the
            # promoted node, which keeps telling until we answer.
            self._fencing = loop.run_in_executor(None, self._store_fence, epoch)
        return self._fencing

    def _store_fence(self, epoch: int) -> bool:
        try:
            self.store.fence(epoch)
            return True
        except Exception:
            log.exception("could not store the fence at epoch %d; a restart would take writes again", epoch)
            return False

    def post_promote(self, req: Request, slot) -> None:
        try:
            force = query.param(query.parse(req.query, ("force",)), "force", _BOOL, "true or false") == "true"
        except Malformed as m:
            self._error(slot, errors.MALFORMED, m.message, m.field)
            return
        if self.role == "primary" and not self._promotion.locked():
            slot.respond(200, encode_json({"result": "already_primary", "epoch": self.store.epoch}))
            return
        # Held until done: the loop keeps only a weak reference to a task.
        task = asyncio.get_running_loop().create_task(self._promote_once(slot, force))
        self._promotions.add(task)
        task.add_done_callback(self._promotions.discard)

    async def _promote_once(self, slot, force: bool) -> None:
        async with self._promotion:
            if self.role == "primary":  # the promotion this request waited for
                slot.respond(200, encode_json({"result": "already_primary", "epoch": self.store.epoch}))
                return
            why = None if force else self._behind_another()
            if why is not None:
                log.error("promotion refused: %s", why)
                self._error(slot, errors.PROMOTION_REFUSED, f"{why}: promoting it would fence a primary that has "
                            "acknowledged events this node lacks, or make a second one; if that node is gone for "
                            "good, promote with force=true (`ingest promote --force`)")
                return
            await self._promote(slot)

    def _behind_another(self) -> str | None:
        """Why this node's history is known to end behind another node's,
        or None. Such a promotion loses what that node acknowledged."""
        if self.role == "fenced":
            return (f"this node is a former primary, fenced at epoch {self.store.fenced_at}: a node of that epoch "
                    "took writes after it")
        # stale_primary: the primary is the older one; self: there was none.
        if self.follower is not None and self.follower.stopped_because not in ("", "self", "stale_primary"):
            return (f"this standby stopped following {self.follower.host}:{self.follower.port} "
                    f"({self.follower.stopped_because}) at seq {self.store.last_seq}, and that primary went on")
        return None

    async def _promote(self, slot) -> None:
        """Stop following, raise the epoch durably, take writes."""
        followed = None
        tls = None  # the pair's TLS client context, when the link has one
        if self.follower is not None:
            await self.follower.stop()
            followed = (self.follower.host, self.follower.port)
            tls = self.follower.tls
            self.follower = None
        epoch = max(self.store.epoch, self.store.fenced_at) + 1  # above any epoch it has heard of
        told = f"{followed[0]}:{followed[1]}" if followed else ""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.promote, epoch, told)
        except Exception as exc:
            # Nothing changed (a full disk, most likely): say so, and go on
            # following, instead of a request never answered and a standby
            # that follows no one.
            log.exception("promotion to epoch %d failed; nothing changed", epoch)
            if followed is not None:
                from ingest.replication.standby import Follower

                self.follower = Follower(self.store, *followed, self.config.person_window_ms, tls)
                self.follower.start()
            code = errors.INSUFFICIENT_STORAGE if isinstance(exc, StoreFull) else errors.STORE_ERROR
            self._error(slot, code, f"promotion failed, nothing changed ({exc}); this node is still a "
                                    f"{self.role}")
            return
        self.role = "primary"
        self.primary_address = ""
        if self.gate is not None:
            # What this node holds came from the primary it followed (which
            # showed it): it is the history that goes on, not a tail a
            # failover could take back. Without this the positives feed
            # hid it until a new standby acknowledged, or for good.
            self.gate.acked = max(self.gate.acked, self.store.last_seq)
        if self.hub is not None:
            self.hub.restart_sessions()
        log.warning("promoted to primary at epoch %d, last_seq %d", epoch, self.store.last_seq)
        slot.respond(200, encode_json({"result": "promoted", "epoch": epoch, "last_seq": self.store.last_seq}))
        if followed is not None:
            self.tell_former_primary(tls)

    def tell_former_primary(self, tls) -> None:
        """Tell the primary this node followed (store.tell) of its epoch,
        until it knows: after a promotion, and at every start until then."""
        from ingest.replication.standby import keep_telling_promoted

        host, _, port = self.store.tell.rpartition(":")
        # Not while draining: asyncio.wait_for (3.11) can swallow the
        # cancellation of a shutdown, and the loop kept the process alive.
        self._telling = asyncio.get_running_loop().create_task(keep_telling_promoted(
            host, int(port), self.store, lambda: self.role == "primary" and not self.draining, tls))

    def get_metrics(self, req: Request, slot) -> None:
        slot.respond(200, self.metrics.render(), _PROMETHEUS)

    def get_livez(self, req: Request, slot) -> None:
        slot.respond(200, b'{"status":"live"}')

    def get_readyz(self, req: Request, slot) -> None:
        # Ready means "send writes here": a load balancer in front of a pair
        # must route to the primary only (a standby or fenced node refuses
        # every write; its reads are GET routes, and /livez says it runs).
        if self.draining:
            self._error(slot, errors.SHUTTING_DOWN, "draining for shutdown")
        elif self.role != "primary":
            self._error_body(slot, errors.NOT_PRIMARY, f"this node is {self.role}; it takes no writes",
                             {"primary": self.primary_address} if self.primary_address else None)
        else:
            slot.respond(200, b'{"status":"ready"}')
