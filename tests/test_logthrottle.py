"""logthrottle.Throttled: a recurring line once, then once per interval with
how many were left out."""
from __future__ import annotations

import logging

from ingest.logthrottle import Throttled


def test_a_recurring_line_is_said_once_per_interval_with_the_count_left_out(caplog):
    now = [100.0]
    say = Throttled(logging.getLogger("test.throttle"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        assert say(logging.ERROR, "store full, %d events refused", 5)
        now[0] += 1
        assert not say(logging.ERROR, "store full, %d events refused", 6)
        now[0] += 30
        assert not say(logging.ERROR, "store full, %d events refused", 7)
        now[0] += 29.5  # 60.5 s after the first line
        assert say(logging.ERROR, "store full, %d events refused", 8)
        assert not say(logging.ERROR, "store full, %d events refused", 9)
    assert [r.getMessage() for r in caplog.records] == [
        "store full, 5 events refused",
        "store full, 8 events refused (and 2 more like it in the last 60 s, not logged)",
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records)
