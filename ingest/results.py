"""Lab results, and the positives feed the follow-up teams poll.

A result is accepted only from the tube's own lab and only once the lab has
received the tube. A changed result is a new event (new event id): the tube
keeps every result in its history and shows the latest by `tested_at` (ties:
the later posted), so a lab system that uploads out of order cannot put an
older test over a newer one. Positive and invalid
results (invalid means resample) are indexed by sequence number, so
`GET /v1/positives?since=SEQ` lists them in change-log order and a poller
that remembers the last seq it saw never misses one.
"""
from __future__ import annotations

from ingest.events import ResultEvent
from ingest.lifecycle import claim, lab_tube
from ingest.records import POSITIVE_RESULTS, TUBES_RESULTED, LogEntry, Result
from ingest.rules import Done, Outcome, Rejected
from ingest.writetx import WriteTx

# Results that send a team back to every person of the pool.
RETEST = frozenset(("positive", "invalid"))


def apply_result(tx: WriteTx, ev: ResultEvent) -> Outcome:
    payload, repeated = claim(tx, "result", ev, "recorded")
    if repeated is not None:
        return repeated
    found = lab_tube(tx, ev, "result", "post its result", "its lab has not received it")
    if type(found) is Rejected:
        return found
    tube, after = found
    seq = tx.append(LogEntry("result", ev.lab_id, payload))
    tx.put_result(ev.tube, Result(ev.lab_id, ev.result, ev.tested_at, ev.event_id, seq))
    if ev.result in RETEST:
        tx.put_positive(seq, ev.tube)
    previous = tube.result
    current = tx.result(ev.tube, tube.result_seq) if tube.result_seq else None
    tube.state = after
    body = {"tube": ev.tube, "test_result": ev.result}
    if current is not None and ev.tested_at < current.tested_at:
        body["current"] = previous  # kept in the history; a newer test decides
    else:
        tube.result = ev.result
        tube.result_seq = seq
        if previous and previous != ev.result:
            body["previous"] = previous
    tx.put_tube(ev.tube, tube)
    if not previous:
        tx.count(tube.site_id, TUBES_RESULTED)
    if ev.result in RETEST:
        tx.count(tube.site_id, POSITIVE_RESULTS)
    return Done("recorded", ev.event_id, seq, body)
