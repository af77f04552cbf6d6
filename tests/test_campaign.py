"""The capacity report's arithmetic: what a campaign needs, and whether a rate holds."""
from __future__ import annotations

import pytest

from bench.campaign import Campaign
from loadtest.day import DAY_SHAPE, peak_to_mean, share_at


def test_the_province_needs_2042_events_per_second_at_a_peak_factor_of_4():
    c = Campaign(people=35_000_000, hours=24, peak_factor=4)
    assert c.people_rate == pytest.approx(405.09, abs=0.01)
    # per tube of 10: a seal and a result; per box of 5 tubes: box, hand-over, receipt
    assert c.events_per_person == pytest.approx(1 + 2.6 / 10)
    assert c.mean_rate == pytest.approx(510.42, abs=0.01)
    assert c.required_peak_rate == pytest.approx(2041.67, abs=0.01)


def test_one_person_per_tube_is_a_whole_lifecycle_each():
    assert Campaign(pool_size=1, tubes_per_box=1).events_per_person == 6


@pytest.mark.parametrize("bad", [{"hours": 0}, {"hours": -1}, {"hours": float("inf")}, {"people": 0},
                                 {"peak_factor": 0.5}, {"peak_factor": float("nan")}, {"pool_size": 0},
                                 {"tubes_per_box": 0}])
def test_a_campaign_that_cannot_be_is_refused(bad):
    with pytest.raises(ValueError):
        Campaign(**bad)


def test_a_stated_factor_below_the_day_shape_gives_way_to_the_shape():
    c = Campaign(people=35_000_000, hours=24, peak_factor=1)
    assert c.shape_peak_factor == pytest.approx(peak_to_mean(24))
    assert c.required_peak_rate == pytest.approx(c.mean_rate * c.shape_peak_factor)
    assert c.shape_peak_factor > 1


def test_the_hours_of_the_day_shape_take_everyone():
    c = Campaign(people=35_000_000, hours=24, peak_factor=4)
    assert sum(rate for _, rate in c.hourly_rates()) * 3600 == pytest.approx(35_000_000 * c.events_per_person)
    busiest = max(rate for _, rate in c.hourly_rates())
    assert busiest == pytest.approx(c.mean_rate * c.shape_peak_factor)


@pytest.mark.parametrize(("rate", "holds"), [(2041.0, False), (2042.0, True), (16_204.0, True), (100.0, False)])
def test_the_verdict(rate, holds):
    v = Campaign().verdict(rate)
    assert v["holds"] is holds
    assert v["headroom"] == pytest.approx(rate / Campaign().required_peak_rate)
    assert v["hours_for_all_people"] == pytest.approx(35_000_000 * 1.26 / rate / 3600)


def test_the_day_shape_peaks_in_the_evening_and_dips_at_lunch():
    by_hour = dict(DAY_SHAPE)
    assert max(by_hour, key=by_hour.get) in (17, 18)
    assert by_hour[12] < by_hour[11] and by_hour[12] < by_hour[14]
    assert share_at(0.0) == DAY_SHAPE[0][1] and share_at(1.0) == DAY_SHAPE[-1][1]
    assert all(0 < share_at(i / 100) <= 1 for i in range(101))
