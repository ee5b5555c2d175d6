"""Pipeline schedules: ``"every 15m"`` or a five-field cron expression, parsed once.

``parse_schedule(text)`` returns a :class:`Schedule` or raises ``ValueError`` with a message
fit for a configuration error. A schedule gives the daemon an APScheduler trigger
(``trigger()``) and answers the two questions asked without a running scheduler:
when is the next run after the last one (``next_run``, for ``syncengine status``) and is a
pipeline due now (``is_due``, for ``syncengine daemon --once`` under cron).

Intervals, from 1 s to 366 days: ``every N`` followed by a unit: ``s``/``sec``/``seconds``,
``m``/``min``/``minutes``, ``h``/``hours``, ``d``/``days`` (``every 30s``, ``every 15m``,
``every 2 hours``).

Cron: ``minute hour day-of-month month day-of-week`` with classic crontab meanings, including
day-of-week numbers (0 and 7 are Sunday) and names (``mon-fri``). Unlike classic cron, which
runs a day matching *either* a restricted day-of-month or a restricted day-of-week, restricting
both is refused (APScheduler would require both to match, a silent difference).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["EXAMPLES", "Schedule", "parse_schedule", "parse_timezone"]

EXAMPLES = '"every 15m", "every 30s", "every 2h" or a cron expression such as "*/10 * * * *"'
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 366 * 86400
"""The longest interval: a year and a day. Beyond it no date arithmetic is safe (a run
scheduled a million days out overflows the calendar), and no pipeline means it."""
_INTERVAL = re.compile(r"every\s+(\d+)\s*([a-z]+)", re.IGNORECASE)
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NEVER_FIRES_FROM = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""Where the search for a cron schedule's first fire time starts (a fixed point, so that a
leap-day schedule is accepted whatever today is)."""
_DUE_SLACK_S = 60.0
"""``is_due`` tolerance at most: a cron job started a little early still counts as due."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``interval_s`` for ``every N``, else ``cron`` (five fields)."""

    text: str
    interval_s: int | None = None
    cron: tuple[str, str, str, str, str] | None = None

    def trigger(self, timezone: dt.tzinfo) -> Any:
        """The APScheduler trigger (interval or cron) for this schedule."""
        if self.interval_s is not None:
            # imported here (and in _cron_trigger): only a config with a schedule needs
            # APScheduler, not every command that loads a config
            from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

            return IntervalTrigger(seconds=self.interval_s, timezone=timezone)
        return _cron_trigger(self.cron, timezone)

    def next_run(
        self, last_started: dt.datetime | None, now: dt.datetime, timezone: dt.tzinfo = dt.UTC
    ) -> dt.datetime:
        """When the pipeline runs next, given when its last run started (None: never).

        An interval runs ``interval`` after the last start, at once when that has passed (or
        it never ran); a cron schedule at its next fire time after ``now``."""
        if self.interval_s is not None:
            if last_started is None:
                return now
            return max(now, last_started + dt.timedelta(seconds=self.interval_s))
        fire = self.trigger(timezone).get_next_fire_time(None, now)
        if not isinstance(fire, dt.datetime):  # pragma: no cover - validated cron always fires
            raise ValueError(f"schedule {self.text!r} never fires")
        return fire.astimezone(dt.UTC)

    def is_due(
        self, last_started: dt.datetime | None, now: dt.datetime, timezone: dt.tzinfo = dt.UTC
    ) -> bool:
        """Whether a run is owed: never ran, or a scheduled time passed since the last start.

        A little slack (a tenth of the interval, at most a minute) lets a crontab entry that
        fires every 15 minutes run a pipeline scheduled ``every 15m`` each time."""
        if last_started is None:
            return True
        if self.interval_s is not None:
            slack = min(_DUE_SLACK_S, self.interval_s / 10)
            return (now - last_started).total_seconds() >= self.interval_s - slack
        fire = self.trigger(timezone).get_next_fire_time(None, last_started)
        if not isinstance(fire, dt.datetime):  # pragma: no cover
            return False
        return fire <= now + dt.timedelta(seconds=_DUE_SLACK_S / 6)

    def __str__(self) -> str:
        return self.text


def parse_schedule(text: str) -> Schedule:
    """Parse ``every N<unit>`` or a five-field cron expression; ``ValueError`` says why not."""
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError(f"empty schedule; use {EXAMPLES}")
    if cleaned.lower().startswith("every"):
        found = _INTERVAL.fullmatch(cleaned)
        if not found:
            raise ValueError(f"cannot read interval {text!r}; use {EXAMPLES}")
        count, unit = int(found.group(1)), found.group(2).lower()
        if unit not in _UNITS:
            raise ValueError(
                f"unknown unit {unit!r} in {text!r}; use s, m, h or d (e.g. {EXAMPLES})"
            )
        seconds = count * _UNITS[unit]
        if seconds < MIN_INTERVAL_S:
            raise ValueError(f"{text!r}: the interval must be at least {MIN_INTERVAL_S}s")
        if seconds > MAX_INTERVAL_S:
            raise ValueError(
                f"{text!r}: the interval must be at most {MAX_INTERVAL_S // 86400}d (a year); "
                "to stop a pipeline's schedule, pause it (`syncengine pause -p NAME`) or remove it "
                "from the daemon's config"
            )
        return Schedule(cleaned, interval_s=seconds)
    fields = cleaned.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"{text!r} is neither an interval nor a cron expression with 5 fields "
            f"(minute hour day month weekday; got {len(fields)}); use {EXAMPLES}"
        )
    minute, hour, day, month, weekday = fields
    if day not in ("*", "?") and weekday not in ("*", "?"):
        raise ValueError(
            f"{text!r} restricts both day-of-month and day-of-week; classic cron "
            "runs when either matches, which is ambiguous here: restrict only one"
        )
    try:
        cron = (minute, hour, day, month, _weekdays(weekday))
        trigger = _cron_trigger(cron, dt.UTC)
    except ValueError as exc:
        raise ValueError(
            f"invalid cron expression {text!r}: {exc}; fields are minute hour "
            'day month weekday, e.g. "*/10 * * * *" or "0 2 * * mon-fri"'
        ) from None
    # A date that no month has (February 30th, April 31st) parses but never comes: the
    # daemon would wait forever and `status` could name no next run.
    if trigger.get_next_fire_time(None, _NEVER_FIRES_FROM) is None:
        raise ValueError(
            f"cron expression {text!r} never fires: the month field ({month}) names no "
            f"month that has day {day}; use a day those months have (1-28 is in every "
            'month), or "last" for the last day of the month, e.g. "0 2 last 2 *"'
        )
    return Schedule(cleaned, cron=cron)


def parse_timezone(name: str) -> dt.tzinfo:
    """An IANA time zone (``Europe/Berlin``, ``UTC``); ``ValueError`` when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f'unknown time zone {name!r}; use an IANA name such as "UTC" or "America/Chicago"'
        ) from None


def _cron_trigger(cron: tuple[str, str, str, str, str] | None, timezone: dt.tzinfo) -> Any:
    if cron is None:  # pragma: no cover - a Schedule has one or the other
        raise ValueError("not a cron schedule")
    minute, hour, day, month, weekday = cron
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=weekday, timezone=timezone
    )


def _weekday(token: str) -> int:
    token = token.lower()
    if token.isdigit():
        value = int(token)
        if not 0 <= value <= 7:
            raise ValueError(f"day of week {token} is out of range 0-7")
        return value % 7
    if token[:3] in _WEEKDAYS and len(token) == 3:
        return _WEEKDAYS.index(token)
    raise ValueError(f"unknown day of week {token!r} (0-7 or sun..sat)")


def _weekdays(field: str) -> str:
    """A crontab day-of-week field (0 and 7 = Sunday) as APScheduler's names (0 = Monday)."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"bad step {step_text!r} in day of week {field!r}")
            step = int(step_text)
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            low, high = base.split("-", 1)
            first = _weekday(low)
            last = 7 if high.strip() == "7" else _weekday(high)
            if last < first:
                raise ValueError(f"day-of-week range {base!r} runs backwards")
        else:
            first = _weekday(base)
            last = 6 if step_text else first
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))
