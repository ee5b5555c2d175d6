"""The alerts' claims in a real state store (SQLite file, PostgreSQL database): when two
daemons decide the same change of a condition at the same moment, exactly one wins and
sends; the condition's rows read back as written. The sandbox's fault knob that the daemon
alert tests use is checked here too."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.alerts.decide import Items, Observed, decide
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from syncengine.state import StateStore
from syncengine.state.alert_rows import ConditionRow

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        yield str(request.getfixturevalue("pg_url"))


def race(stores: list[StateStore], row: ConditionRow, seen: int | None) -> list[bool]:
    """Every store claims the same change at once (a barrier lines them up)."""
    barrier = threading.Barrier(len(stores))
    won: list[bool] = [False] * len(stores)

    def claim(i: int) -> None:
        barrier.wait(10)
        with stores[i].transaction() as tx:
            won[i] = tx.claim_alert(row, seen)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return won


def test_of_daemons_deciding_the_same_change_exactly_one_wins(url: str, tmp_path: Path) -> None:
    stores = [StateStore.open(url, base_dir=str(tmp_path)) for _ in range(3)]
    try:
        stored: ConditionRow | None = None
        kinds = []
        now = T0
        story = [(True, 1), (True, 1), (True, 2), (False, 2), (True, 3)]
        for step, (is_open, mark) in enumerate(story):
            now += DAY / 4
            obs = Observed("conflicts_parked", "", is_open, items=Items(1, mark))
            change = decide(obs, stored, pipeline="p", now=now, remind=DAY)
            if change is None:
                continue
            kinds.append(change.kind)
            won = race(stores, change.row, change.seen)
            assert won.count(True) == 1, f"step {step}: {won}"
            assert race(stores, change.row, change.seen) == [False] * 3, "claimed twice"
            with stores[0].transaction() as tx:
                (stored,) = tx.alert_conditions("p")
            assert stored == change.row
        assert kinds == ["open", "more", "clear", "open"]
        assert stored is not None and stored.open and stored.version == 4
    finally:
        for s in stores:
            s.close()


def test_the_sandbox_error_rate_can_be_changed_while_it_runs() -> None:
    app: Any = create_app("k-123456789", seed=2)
    headers = {"Authorization": "Token k-123456789"}
    with httpx.Client(
        transport=SyncASGITransport(app), base_url="http://sandbox", headers=headers
    ) as c:
        assert c.get("/customers").status_code == 200
        assert c.put("/_sandbox/faults", json={"error_rate": 1}).json() == {"error_rate": 1.0}
        assert c.get("/customers").status_code == 500
        assert c.get("/_sandbox/faults").json() == {"error_rate": 1.0}
        bad = c.put("/_sandbox/faults", json={"error_rate": 2, "latency": 1})
        assert bad.status_code == 422
        assert set(bad.json()["errors"]) == {"error_rate", "latency"}
        c.put("/_sandbox/faults", json={"error_rate": 0}).raise_for_status()
        assert c.get("/customers").status_code == 200
