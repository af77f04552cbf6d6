"""Promotion when the store cannot take the new epoch (a full disk): the
request is answered, nothing changes, and the node goes on following. Before,
the promotion task died with the exception: the request was never answered
and the standby, its follower stopped, followed no one."""
from __future__ import annotations

import asyncio
import json

from ingest import config
from ingest.app import App
from ingest.http_types import Request
from ingest.metrics import Metrics
from ingest.store import Store
from ingest.store_errors import StoreFull


PROMOTE = Request(b"POST", "/v1/admin/promote", "", None, b"", True)


class Slot:
    def __init__(self):
        self.answers, self.route, self.data = [], "post_promote", None

    def respond(self, status, body, content_type=b"application/json", extra=b""):
        self.data = body
        self.answers.append((status, body))


class StoppedFollower:
    host, port = "127.0.0.1", 9  # nothing listens there: the new follower retries in the background
    tls = None
    stopped_because = ""

    async def stop(self) -> None:
        pass


def test_a_promotion_that_cannot_write_is_answered_and_the_node_keeps_following(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "d"), map_bytes_initial=1 << 20)
    try:
        app = App(config.load(), store, None, Metrics("test"))
        app.role, app.follower = "standby", StoppedFollower()

        def full(epoch: int, followed: str) -> None:
            raise StoreFull("map is at store.map_bytes_max")

        monkeypatch.setattr(store, "promote", full)
        slot = Slot()

        async def promote():
            await app._promote(slot)
            follower = app.follower
            await follower.stop()
            return follower

        follower = asyncio.run(promote())
        [(status, body)] = slot.answers
        assert status == 507 and b"promotion failed, nothing changed" in body, body
        assert app.role == "standby" and store.epoch == 0
        assert (type(follower).__name__, follower.host, follower.port) == ("Follower", "127.0.0.1", 9)
    finally:
        store.close()


class SlowFollower(StoppedFollower):
    async def stop(self) -> None:
        await asyncio.sleep(0.2)  # a follower's stop waits for its task and its writer thread


def test_two_promotions_at_once_are_both_answered_and_raise_the_epoch_once(tmp_path):
    # The second request used to start a second promotion while the first
    # waited for the follower; it then died on the follower the first had
    # dropped, and its client was never answered.
    store = Store(str(tmp_path / "d"), map_bytes_initial=1 << 20)
    try:
        app = App(config.load(), store, None, Metrics("test"))
        app.role, app.follower = "standby", SlowFollower()
        slots = [Slot(), Slot()]

        async def promote_twice():
            for slot in slots:
                app.post_promote(PROMOTE, slot)
            while not all(slot.answers for slot in slots):
                await asyncio.sleep(0.01)

        asyncio.run(asyncio.wait_for(promote_twice(), 10))
        answers = [json.loads(body) for slot in slots for status, body in slot.answers if status == 200]
        assert [a["result"] for a in answers] == ["promoted", "already_primary"]
        assert [a["epoch"] for a in answers] == [1, 1] and store.epoch == 1
        assert app.role == "primary" and app.follower is None
    finally:
        store.close()


def test_only_a_standby_its_primary_went_on_without_is_refused_promotion(tmp_path):
    # stale_primary: this node knows a newer epoch than the primary it
    # followed (the primary is the older history); self: it followed itself.
    store = Store(str(tmp_path / "d"), map_bytes_initial=1 << 20)
    try:
        app = App(config.load(), store, None, Metrics("test"))
        app.role, app.follower = "standby", StoppedFollower()
        for code, refused in (("", False), ("self", False), ("stale_primary", False), ("refused", True),
                              ("ahead", True), ("diverged", True), ("gap", True)):
            app.follower.stopped_because = code
            assert (app._behind_another() is not None) is refused, code
        app.follower, app.role = None, "fenced"
        assert "fenced at epoch" in app._behind_another()
    finally:
        store.close()
