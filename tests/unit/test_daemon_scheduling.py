"""The daemon's scheduling (``syncengine.daemon.scheduling``): a job's next run before and
after the scheduler starts, and a scheduler started on cron schedules.

APScheduler 3 leaves ``next_run_time`` unset on a job added before ``start()`` unless it was
given one: an interval job is (it keeps its rhythm across restarts), a cron job is not, so
``syncengine daemon`` once crashed at start on any cron schedule. The daemon as a real
process on a cron schedule is in ``tests/integration/test_daemon.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.daemon.scheduling import Schedules, job_next_run
from syncengine.schedule import parse_schedule
from syncengine.state import StateStore

FRIDAY_NOON = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
MONDAY_2AM = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
CHICAGO = ZoneInfo("America/Chicago")


def nothing() -> None:
    """A job's function: never called here."""


@pytest.fixture
def scheduler() -> Iterator[BackgroundScheduler]:
    """A scheduler not started (in UTC), shut down afterwards if a test started it."""
    scheduler = BackgroundScheduler(timezone=dt.UTC)
    yield scheduler
    if scheduler.running:
        scheduler.shutdown(wait=False)


@pytest.mark.parametrize(
    ("timezone", "expected"),
    [
        (dt.UTC, MONDAY_2AM),
        (CHICAGO, dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)),  # 02:00 CST
    ],
)
def test_a_pending_cron_job_runs_next_at_its_triggers_first_fire_time(
    scheduler: BackgroundScheduler, timezone: dt.tzinfo, expected: dt.datetime
) -> None:
    trigger = parse_schedule("0 2 * * mon-fri").trigger(timezone)
    job = scheduler.add_job(nothing, trigger, id="p")
    # what broke the daemon: a pending job has no next_run_time at all until start()
    assert job.pending and not hasattr(job, "next_run_time")
    assert job_next_run(job, FRIDAY_NOON) == expected
    assert job_next_run(job, FRIDAY_NOON.astimezone(CHICAGO)) == expected  # any aware now
    assert job_next_run(job, expected) == expected  # a fire time is its own next run
    assert job_next_run(job, MONDAY_2AM + dt.timedelta(hours=8)) == expected + dt.timedelta(days=1)


def test_a_pending_job_given_its_first_run_keeps_it(scheduler: BackgroundScheduler) -> None:
    first = FRIDAY_NOON + dt.timedelta(minutes=5)
    job = scheduler.add_job(
        nothing, parse_schedule("every 1h").trigger(dt.UTC), id="p", next_run_time=first
    )
    assert job.pending
    assert job_next_run(job, FRIDAY_NOON) == first
    paused = scheduler.add_job(
        nothing, parse_schedule("*/10 * * * *").trigger(dt.UTC), id="q", next_run_time=None
    )
    assert job_next_run(paused, FRIDAY_NOON) is None  # added paused: no next run


def test_a_started_cron_job_runs_next_when_the_scheduler_says(
    scheduler: BackgroundScheduler,
) -> None:
    job = scheduler.add_job(nothing, parse_schedule("0 2 * * mon-fri").trigger(dt.UTC), id="p")
    scheduler.start()
    job = scheduler.get_job("p")
    assert not job.pending
    assert job_next_run(job, FRIDAY_NOON) == job.next_run_time.astimezone(dt.UTC)
    scheduler.pause_job("p")
    assert job_next_run(scheduler.get_job("p"), FRIDAY_NOON) is None


def cron_config(folder: Path) -> Config:
    """One pipeline with a cron schedule of its own, one on the ``[daemon]`` cron default."""
    path = folder / "config.toml"
    path.write_text(
        """
[state]
url = "sqlite:///state.db"

[daemon]
schedule = "0 2 * * mon-fri"
timezone = "America/Chicago"
reload_poll = 0

[connectors.a]
type = "memory"

[connectors.b]
type = "memory"

[[pipelines]]
name = "own"
members = ["a", "b"]
schedule = "*/10 * * * *"

[[pipelines]]
name = "default"
members = ["a", "b"]
""",
        encoding="utf-8",
    )
    return load_config(path)


def test_schedules_start_on_cron_schedules_and_tell_the_next_runs(tmp_path: Path) -> None:
    config = cron_config(tmp_path)
    store: StateStore = api.open_store(config)
    ran: list[str] = []
    schedules = Schedules(store, ran.append, lambda: [])
    before = dt.datetime.now(dt.UTC)
    try:
        schedules.start(config)  # raised AttributeError: 'Job' ... 'next_run_time'
        after = dt.datetime.now(dt.UTC)
        assert schedules.running
        for name in ("own", "default"):
            schedule = config.schedule(name)
            expected = {schedule.next_run(None, t, CHICAGO) for t in (before, after)}
            assert schedules.next_run(name) in expected, name
        assert config.schedule("default").text == "0 2 * * mon-fri"
        default_next = schedules.next_run("default")
        assert default_next is not None
        local = default_next.astimezone(CHICAGO)
        assert (local.hour, local.minute) == (2, 0) and local.weekday() < 5
        assert ran == []  # a cron schedule does not run at start
    finally:
        schedules.shutdown()
        store.close()
    assert not schedules.running
