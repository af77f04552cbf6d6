"""A recurring log line, said once and then at most once per interval.

Some failures recur at the rate of the load: a full store refuses every
commit (a line each was ~2,600 a second, onto the disk that was already
full), and anyone may open connections to the replication port. The first
occurrence is logged as it happens; later ones within the interval are only
counted, and the next line says how many there were.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

INTERVAL_S = 60.0


class Throttled:
    def __init__(self, log: logging.Logger, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = float("-inf")
        self._quiet = 0  # occurrences not logged since the last line

    def __call__(self, level: int, msg: str, *args, exc_info: bool = False) -> bool:
        """Log `msg % args` at `level` unless a line went out within the
        interval; whether it was logged."""
        now = self._clock()
        if now < self._next_at:
            self._quiet += 1
            return False
        if self._quiet:
            msg += f" (and {self._quiet} more like it in the last {self._interval_s:g} s, not logged)"
        self._log.log(level, msg, *args, exc_info=exc_info)
        self._next_at = now + self._interval_s
        self._quiet = 0
        return True
