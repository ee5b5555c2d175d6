"""Schedules: intervals and crontab expressions, their errors, next run and due-ness."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from syncengine.config import load_config
from syncengine.errors import ConfigError
from syncengine.schedule import parse_schedule, parse_timezone

UTC = dt.UTC
NOW = dt.datetime(2026, 5, 13, 12, 3, 30, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("every 30s", 30),
        ("every 15m", 900),
        ("every 2h", 7200),
        ("every 1d", 86400),
        ("every 15 minutes", 900),
        ("Every 2 Hours", 7200),
        ("every  45 sec", 45),
    ],
)
def test_intervals(text: str, seconds: int) -> None:
    schedule = parse_schedule(text)
    assert schedule.interval_s == seconds and schedule.cron is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty schedule"),
        ("every banana", "cannot read interval"),
        ("every 5y", "unknown unit 'y'"),
        ("every 0s", "at least 1s"),
        ("every 5000000d", "at most 366d"),
        ("every 999999999999999999999s", "at most 366d"),
        ("* * *", "5 fields"),
        ("61 * * * *", "invalid cron expression"),
        ("0 25 * * *", "invalid cron expression"),
        ("0 0 * * 8", "out of range"),
        ("0 0 * * funday", "unknown day of week"),
        ("0 0 1 * mon", "restricts both day-of-month and day-of-week"),
    ],
)
def test_errors_say_what_is_wrong_and_show_examples(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_schedule(text)
    assert any(hint in str(info.value) for hint in ("every 15m", "cron", "at least", "pause"))


def test_the_longest_interval_still_gives_dates() -> None:
    """A year and a day is accepted, and the questions asked of it are answered (an interval
    of a million days overflowed the calendar in ``status`` and the daemon)."""
    schedule = parse_schedule("every 366d")
    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    assert schedule.next_run(now, now) == now + dt.timedelta(days=366)
    assert not schedule.is_due(now, now)


@pytest.mark.parametrize(
    ("weekday", "fires_on"),
    [
        ("0", {"Sun"}),
        ("7", {"Sun"}),
        ("sun", {"Sun"}),
        ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("5-7", {"Fri", "Sat", "Sun"}),
        ("*/2", {"Sun", "Tue", "Thu", "Sat"}),
        ("1,3", {"Mon", "Wed"}),
        ("*", None),
    ],
)
def test_cron_weekdays_mean_what_crontab_means(weekday: str, fires_on: set[str] | None) -> None:
    schedule = parse_schedule(f"0 6 * * {weekday}")
    seen: set[str] = set()
    when = NOW
    for _ in range(14):
        when = schedule.next_run(None, when + dt.timedelta(seconds=1))
        assert (when.hour, when.minute) == (6, 0)
        seen.add(when.strftime("%a"))
    assert seen == (fires_on or {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"})


def test_next_run_of_an_interval_follows_the_last_start() -> None:
    schedule = parse_schedule("every 15m")
    assert schedule.next_run(None, NOW) == NOW  # never ran: at once
    last = NOW - dt.timedelta(minutes=5)
    assert schedule.next_run(last, NOW) == last + dt.timedelta(minutes=15)
    assert schedule.next_run(NOW - dt.timedelta(hours=3), NOW) == NOW  # overdue: at once


def test_next_run_of_cron_is_its_next_fire_time_in_the_configured_zone() -> None:
    schedule = parse_schedule("*/10 * * * *")
    assert schedule.next_run(None, NOW) == NOW.replace(minute=10, second=0)
    daily = parse_schedule("0 2 * * *")
    chicago = parse_timezone("America/Chicago")
    fire = daily.next_run(None, NOW, chicago)
    assert fire.tzinfo == UTC and fire.astimezone(chicago).hour == 2


def test_is_due_with_a_little_slack_for_cron_invocations() -> None:
    every15 = parse_schedule("every 15m")
    assert every15.is_due(None, NOW)
    assert every15.is_due(NOW - dt.timedelta(minutes=15), NOW)
    assert every15.is_due(NOW - dt.timedelta(minutes=14, seconds=59), NOW)  # cron jitter
    assert not every15.is_due(NOW - dt.timedelta(minutes=10), NOW)
    hourly = parse_schedule("0 * * * *")
    assert hourly.is_due(NOW.replace(hour=11, minute=0), NOW)
    assert not hourly.is_due(NOW.replace(minute=1), NOW)


def test_unknown_timezone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        parse_timezone("Mars/Base")


def _config(tmp_path: Path, daemon: str, schedule: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[daemon]
{daemon}

[connectors.a]
type = "memory"

[connectors.b]
type = "memory"

[[pipelines]]
name = "p"
members = ["a", "b"]
{schedule}

[[pipelines]]
name = "q"
members = ["a", "b"]
""",
        encoding="utf-8",
    )
    return path


def test_config_validates_every_schedule_and_daemon_setting_at_once(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        'schedule = "every fortnight"\ntimezone = "Nowhere/Land"\n'
        "lease_tll = 5\nmax_concurrent = 0",
        'schedule = "every 5y"',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "daemon.schedule" in text and "cannot read interval 'every fortnight'" in text
    assert "daemon.timezone" in text and "Nowhere/Land" in text
    assert "unknown key 'lease_tll'" in text and "did you mean 'lease_ttl'" in text
    assert "daemon.max_concurrent" in text
    assert "pipelines.p.schedule" in text and "unknown unit 'y'" in text


def test_backoff_bounds_are_checked(tmp_path: Path) -> None:
    path = _config(tmp_path, "backoff_initial = 60\nbackoff_max = 10", "")
    with pytest.raises(ConfigError, match="backoff_max"):
        load_config(path)


def test_pipelines_without_a_schedule_use_the_daemon_default(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, 'schedule = "every 5m"', 'schedule = "0 2 * * *"'))
    assert config.schedule("p").cron == ("0", "2", "*", "*", "*")
    assert config.schedule("q").interval_s == 300
    assert load_config(_config(tmp_path, "", "")).schedule("q").text == "every 15m"
