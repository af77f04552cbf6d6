"""Query-string parameters, read strictly.

A value is checked whole against its format (fullmatch: "$" would let a
final newline through); a malformed one is `events.Malformed` naming the
parameter, for the `400 malformed` answer. Blank values count as given:
"?since=" is a malformed since, not an absent one. A parameter the route
does not take, or one given twice, is malformed too.
"""
from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import parse_qs

from ingest.events import Malformed

# [0-9], not \d or int(): int() also takes " +5 ", "1_0" and other scripts'
# digits, which no client means as a number. 20 digits hold any u64 and keep
# int() away from huge strings.
DIGITS = re.compile(r"[0-9]{1,20}")
HOUR = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}")  # a stats hour label, as keys.HourLabels makes them


def parse(text: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """The parameters of a query string; Malformed for one the route does
    not take (a misspelt `sinse` read the feed from 0, silently) or one
    given twice (which one counts would be a guess)."""
    query = parse_qs(text, keep_blank_values=True)
    for name, values in query.items():
        if name not in allowed:
            raise Malformed(f"unknown query parameter {name[:40]!r}; this route takes {', '.join(allowed)}",
                            name[:40])
        if len(values) > 1:
            raise Malformed(f"{name} is given {len(values)} times", name)
    return query


def param(query: dict[str, list[str]], name: str, pattern: re.Pattern, what: str) -> str | None:
    """The value of parameter `name` (its first), None when absent; Malformed
    naming it when the value is not `pattern`, whole."""
    values = query.get(name)
    if values is None:
        return None
    if pattern.fullmatch(values[0]) is None:
        raise Malformed(f"{name} must be {what}", name)
    return values[0]


def number(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    """A count or sequence number: decimal digits, low..high."""
    what = f"a number {low}..{high} in decimal digits"
    text = param(query, name, DIGITS, what)
    if text is None:
        return default
    value = int(text)
    if not low <= value <= high:
        raise Malformed(f"{name} must be {what}", name)
    return value


def hour(query: dict[str, list[str]], name: str) -> str | None:
    """A stats hour label, `YYYY-MM-DDTHH`, of a real date and hour: a
    2026-02-30 or an hour 24 matches no bucket, and an answer with no hours
    would read as a quiet day."""
    what = "an hour label, YYYY-MM-DDTHH, of a real date and hour 00-23"
    text = param(query, name, HOUR, what)
    if text is not None:
        try:
            datetime.strptime(text, "%Y-%m-%dT%H")
        except ValueError:
            raise Malformed(f"{name} must be {what}", name) from None
    return text
