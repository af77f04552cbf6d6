"""A campaign day as a Locust load shape, compressed into the run time.

    locust -f loadtest/locustfile.py,loadtest/day_shape.py --headless -u 200 -r 50 -t 600s ...
    python loadtest/run.py --shape day --time 600 --users 200

`-u` is the peak (the evening); the day's hours (loadtest/day.py) pass in
`-t` seconds: opening ramp, lunchtime dip, evening peak, closing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from locust import LoadTestShape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.day import share_at  # noqa: E402


class CampaignDay(LoadTestShape):
    use_common_options = True  # -u, -r and -t are the peak users, the spawn rate and the day's length

    def tick(self):
        options = self.runner.environment.parsed_options
        day_s = options.run_time or 600
        elapsed = self.get_run_time()
        if elapsed >= day_s:
            return None
        users = max(1, round(options.num_users * share_at(elapsed / day_s)))
        return users, options.spawn_rate
