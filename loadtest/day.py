"""The shape of a campaign day: how busy the sampling points are, hour by hour.

One table serves both the Locust load shape (loadtest/day_shape.py) and the
capacity report (bench/capacity.py), so the day a load test plays is the day
the report plans for. Shares are of the day's peak: queues form at opening,
thin out over lunch, and the evening (people back from work) is the peak.
Sampling points are open 07:00-22:00.
"""
from __future__ import annotations

# (hour of day, share of the peak load)
DAY_SHAPE: tuple[tuple[int, float], ...] = (
    (7, 0.30), (8, 0.65), (9, 0.90), (10, 0.85), (11, 0.75), (12, 0.40), (13, 0.45), (14, 0.70),
    (15, 0.75), (16, 0.85), (17, 1.00), (18, 1.00), (19, 0.85), (20, 0.55), (21, 0.30),
)


def share_at(fraction: float) -> float:
    """Share of the peak at `fraction` (0..1) of the open hours, linear between hours' midpoints."""
    shares = [s for _, s in DAY_SHAPE]
    x = min(max(fraction, 0.0), 1.0) * len(shares) - 0.5
    i = int(x // 1)
    if i < 0:
        return shares[0]
    if i >= len(shares) - 1:
        return shares[-1]
    t = x - i
    return shares[i] * (1 - t) + shares[i + 1] * t


def peak_to_mean(hours_per_day: int = 24) -> float:
    """The shape's own peak factor: peak hour's rate over the day's mean rate (closed hours count as 0)."""
    shares = [s for _, s in DAY_SHAPE]
    return max(shares) / (sum(shares) / hours_per_day)


def starts_per_peak() -> float:
    """Users the day starts per user of its peak: Locust stops users as the
    shape falls and starts new ones as it rises again."""
    shares = [s for _, s in DAY_SHAPE]
    return shares[0] + sum(max(0.0, b - a) for a, b in zip(shares, shares[1:]))
