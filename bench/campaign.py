"""What a campaign asks of the ingest service, and whether a measured rate holds.

Inputs a planner states: people to sample, the hours the campaign has, the
peak factor (the busiest minutes' rate over the campaign's mean rate), the
people per tube and tubes per box (each person is a binding, and a share of
the seals, results, boxes, hand-overs and receipts: every one a stored
event), and the day shape (loadtest/day.py, the same day the load test plays). The required
peak rate is the mean rate times the larger of the stated peak factor and
the day shape's own peak-to-mean ratio: a stated factor below what the day
shape already implies would understate the evening.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.day import DAY_SHAPE, peak_to_mean  # noqa: E402


@dataclass(frozen=True)
class Campaign:
    people: int = 35_000_000
    hours: float = 24.0
    peak_factor: float = 4.0
    pool_size: int = 10  # people per tube
    tubes_per_box: int = 5

    def __post_init__(self):
        # Checked before a measurement that takes minutes, not after it.
        if not (self.people >= 1 and self.pool_size >= 1 and self.tubes_per_box >= 1):
            raise ValueError("people, pool size and tubes per box are at least 1")
        if not (0 < self.hours < float("inf")):
            raise ValueError("hours: a positive number")
        if not (1 <= self.peak_factor < float("inf")):
            raise ValueError("peak factor: at least 1 (the peak is never below the mean)")

    @property
    def events_per_person(self) -> float:
        """Stored events per person: a binding, and a share of its tube's
        lifecycle (per tube a seal and a result; per box its packing,
        hand-over and receipt), each one request and one log entry."""
        return 1 + (2 + 3 / self.tubes_per_box) / self.pool_size

    @property
    def people_rate(self) -> float:
        """People per second averaged over the whole campaign."""
        return self.people / (self.hours * 3600)

    @property
    def mean_rate(self) -> float:
        """Events per second averaged over the whole campaign."""
        return self.people_rate * self.events_per_person

    @property
    def shape_peak_factor(self) -> float:
        """The day shape's busiest hour over a whole day's mean (closed hours count as zero)."""
        return peak_to_mean(hours_per_day=24)

    @property
    def required_peak_rate(self) -> float:
        return self.mean_rate * max(self.peak_factor, self.shape_peak_factor)

    def hourly_rates(self) -> list[tuple[int, float]]:
        """Events per second each open hour needs when a day takes 24 hours' share of the people."""
        total = sum(share for _, share in DAY_SHAPE)
        per_day = self.people * self.events_per_person * 24 / self.hours
        return [(hour, per_day * share / total / 3600) for hour, share in DAY_SHAPE]

    def verdict(self, sustained_rate: float) -> dict:
        """Whether a sustained rate (events/s) takes the campaign's peak, and with how much room."""
        required = self.required_peak_rate
        return {
            "sustained_events_per_s": sustained_rate,
            "required_peak_events_per_s": required,
            "headroom": sustained_rate / required,
            "holds": sustained_rate >= required,
            "hours_for_all_people": (self.people * self.events_per_person / sustained_rate / 3600
                                     if sustained_rate > 0 else float("inf")),
        }

    def as_dict(self) -> dict:
        return {**asdict(self), "mean_people_per_s": self.people_rate, "events_per_person": self.events_per_person,
                "mean_events_per_s": self.mean_rate, "shape_peak_factor": self.shape_peak_factor,
                "required_peak_events_per_s": self.required_peak_rate,
                "day_shape": [{"hour": h, "share_of_peak": s} for h, s in DAY_SHAPE],
                "hourly_events_per_s": [{"hour": h, "events_per_s": r} for h, r in self.hourly_rates()]}
