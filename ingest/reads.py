"""The GET routes of the data: tubes, persons, boxes, the positives feed,
statistics (docs/api.md). A part of App (app.py): they read committed state
on the loop thread, through `self.store`, and answer errors with App's
`_error`."""
from __future__ import annotations

from ingest import errors, query
from ingest.answers import encode_json
from ingest.events import Malformed
from ingest.http import Request
from ingest.records import BOX_STATE_NAMES, PEOPLE, STAT_FIELDS, STATE_NAMES, VOIDED

SEQ_MAX = 2**64 - 1  # sequence numbers are u64
# Person data: no cache on the way (a proxy, a browser) may keep a copy.
NO_STORE = b"Cache-Control: no-store\r\n"


class Reads:
    def get_tube(self, req: Request, slot, code: str) -> None:
        with self.store.view() as view:
            found = view.tube(code)
            results = view.results(code) if found is not None and found[0].result else []
        if found is None:
            self._error(slot, errors.NOT_FOUND, "no binding names this tube", "tube")
            return
        tube, members = found
        body = {
            "tube": code, "lab": tube.lab, "site_id": tube.site_id, "pool_size": tube.pool_size,
            "state": STATE_NAMES[tube.state], "opened_seq": tube.opened_seq, "count": tube.count,
            "persons": [
                {"person": m.person, "event_id": m.event_id, "scanned_at": m.scanned_at, "seq": m.seq}
                for m in members if not m.voided_seq
            ],
        }
        voided = [
            {"person": m.person, "event_id": m.event_id, "scanned_at": m.scanned_at, "seq": m.seq,
             "voided_seq": m.voided_seq}
            for m in members if m.voided_seq
        ]
        if voided:
            body["voided"] = voided
        if tube.sealed_seq:
            body["sealed_seq"] = tube.sealed_seq
        if tube.box:
            body["box"] = tube.box
        if tube.result:
            body["result"] = tube.result
            body["results"] = [
                {"result": r.result, "lab_id": r.lab_id, "tested_at": r.tested_at, "event_id": r.event_id, "seq": r.seq}
                for r in results
            ]
        slot.respond(200, encode_json(body), extra=NO_STORE)

    def get_person(self, req: Request, slot, code: str) -> None:
        with self.store.view() as view:
            history = view.person(code)
            found = [view.tube(b.tube) for b in history]
        if not history:
            self._error(slot, errors.NOT_FOUND, "no binding names this person", "person")
            return
        tubes = []
        for b, tube in zip(history, found):
            head = tube[0] if tube else None
            tubes.append({
                "tube": b.tube, "site_id": b.site_id, "scanned_at": b.scanned_at, "seq": b.seq, "event_id": b.event_id,
                "voided": bool(b.voided_seq), "state": STATE_NAMES[head.state] if head else None,
                "result": head.result if head else "",
            })
        body = {"person": code, "tubes": tubes}
        slot.respond(200, encode_json(body), extra=NO_STORE)

    def get_box(self, req: Request, slot, code: str) -> None:
        box = self.store.box(code)
        if box is None:
            self._error(slot, errors.NOT_FOUND, "no box has this barcode", "box")
            return
        body = {"box": code, "site_id": box.site_id, "state": BOX_STATE_NAMES[box.state], "tubes": box.tubes,
                "packed_seq": box.packed_seq}
        if box.handover_seq:
            body.update(courier_id=box.courier_id, handed_at=box.handed_at, handover_seq=box.handover_seq)
        if box.receive_seq:
            body.update(lab_id=box.lab_id, received_at=box.received_at, receive_seq=box.receive_seq,
                        found=box.found, missing=box.missing, extra=box.extra, other_lab=box.other_lab)
        slot.respond(200, encode_json(body), extra=NO_STORE)

    def get_positives(self, req: Request, slot) -> None:
        try:
            q = query.parse(req.query, ("since", "limit"))
            since = query.number(q, "since", 0, 0, SEQ_MAX)
            limit = query.number(q, "limit", 100, 1, 1000)
        except Malformed as m:
            self._error(slot, errors.MALFORMED, m.message, m.field)
            return
        # The largest u64 is a sequence number, but none can follow it (nor
        # would the store's key for since + 1 fit its 8 bytes).
        gate = self.gate
        with self.store.view() as view:
            found = view.positives(since, limit) if since < SEQ_MAX else []
            if gate is not None and not gate.degraded and self.role != "standby":
                # Sync mode: only what a standby has. A positive shown before it
                # is replicated could vanish in a failover and its seq go to
                # another positive, which a poller past that seq would never see.
                # A standby shows all it has: it got it from its primary.
                found = [(seq, code) for seq, code in found if seq <= gate.acked]
            found = [(seq, code, view.tube(code), view.result(code, seq)) for seq, code in found]
        items = []
        last = since
        for seq, code, (tube, members), result in found:
            last = seq
            items.append({
                "seq": seq, "tube": code, "result": result.result, "lab_id": result.lab_id,
                "tested_at": result.tested_at, "current_result": tube.result, "site_id": tube.site_id,
                "box": tube.box,
                "persons": [
                    {"person": m.person, "scanned_at": m.scanned_at, "event_id": m.event_id}
                    for m in members if not m.voided_seq
                ],
            })
        slot.respond(200, encode_json({"positives": items, "next_since": last}), extra=NO_STORE)

    def get_stats(self, req: Request, slot) -> None:
        self._stats(req, slot, "all")

    def get_site_stats(self, req: Request, slot, site: str) -> None:
        self._stats(req, slot, "site:" + site)

    def _stats(self, req: Request, slot, scope: str) -> None:
        """Counters kept as events are applied: no scan of the store."""
        try:
            q = query.parse(req.query, ("from", "to"))
            start = query.hour(q, "from") or ""
            end = query.hour(q, "to") or "~"
            if start > end:
                raise Malformed(f"to ({end}) is before from ({start})", "to")
        except Malformed as m:
            self._error(slot, errors.MALFORMED, m.message, m.field)
            return
        buckets = self.store.stats(scope)
        zero = [0] * len(STAT_FIELDS)

        def named(counts: list[int]) -> dict:
            counts = counts + [0] * (len(STAT_FIELDS) - len(counts))
            out = dict(zip(STAT_FIELDS, counts))
            out["people_sampled"] = counts[PEOPLE] - counts[VOIDED]
            return out

        total = named(buckets.get("total", zero))
        total["sealed_not_received"] = total["tubes_sealed"] - total["tubes_received"]
        hours = [
            {"hour": hour, **named(counts)}
            for hour, counts in sorted(buckets.items())
            if hour != "total" and start <= hour <= end
        ]
        body = {"scope": scope.removeprefix("site:") if scope != "all" else "all",
                "time_zone": self.config.stats.time_zone, "total": total, "hours": hours}
        slot.respond(200, encode_json(body), extra=NO_STORE)
