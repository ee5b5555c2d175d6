"""What is due: one APScheduler job per pipeline, and the due check of ``--once``.

APScheduler runs one job per pipeline (``max_instances=1``, ``coalesce=True``, a misfire
grace time) on a thread pool of ``[daemon] max_concurrent`` workers. An interval schedule
keeps its rhythm across restarts: its first run is ``interval`` after the last run's start.
The schedules themselves (parsing, triggers, ``is_due``) are ``syncengine.schedule``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from apscheduler.executors.pool import (  # type: ignore[import-untyped]
    ThreadPoolExecutor as JobPool,
)
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]

from syncengine.config import Config
from syncengine.daemon.redaction import describe_error, redacted_traceback
from syncengine.schedule import parse_timezone
from syncengine.state import StateStore

__all__ = ["ScheduledAs", "Schedules", "is_due", "iso", "job_next_run", "next_run"]

log = structlog.get_logger("syncengine.daemon")


def iso(value: dt.datetime | None) -> str | None:
    """A time in UTC, ISO 8601, for logs and ``/healthz``; None stays None."""
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


def is_due(store: StateStore, config: Config, name: str, now: dt.datetime) -> bool:
    """Whether the pipeline's schedule owes a run at ``now``, counted from the start of its
    last real (not dry) run."""
    runs = [r for r in store.runs(name, limit=5) if not r.dry_run]
    last = runs[0].started_at if runs else None
    tz = parse_timezone(config.daemon.timezone)
    return config.schedule(name).is_due(last, now, tz)


def next_run(store: StateStore, config: Config, name: str, now: dt.datetime) -> dt.datetime:
    """When the pipeline's schedule owes its next run after ``now`` (UTC), counted from the
    start of its last real run, as ``is_due`` counts it."""
    runs = [r for r in store.runs(name, limit=5) if not r.dry_run]
    last = runs[0].started_at if runs else None
    tz = parse_timezone(config.daemon.timezone)
    return config.schedule(name).next_run(last, now, tz)


def job_next_run(job: Any, now: dt.datetime) -> dt.datetime | None:
    """When an APScheduler job fires next after ``now``, in UTC; None when it never will
    (a paused job, a finished trigger).

    A job added before the scheduler starts is *pending*: unless it was given a
    ``next_run_time`` (an interval keeping its rhythm is), APScheduler 3 leaves that
    attribute unset until ``start()``, which then sets the trigger's first fire time after
    that moment. For such a job that time is computed here the same way (the check is the
    one ``BaseScheduler._real_add_job`` makes)."""
    if job.pending and not hasattr(job, "next_run_time"):
        when = job.trigger.get_next_fire_time(None, now)
    else:
        when = job.next_run_time
    return when.astimezone(dt.UTC) if isinstance(when, dt.datetime) else None


@dataclass(frozen=True)
class ScheduledAs:
    """What a pipeline's job was scheduled with; a reload replaces the job when it changes."""

    schedule: str
    timezone: str


class Schedules:
    """The scheduler and its jobs: each runs ``run(pipeline)`` on the pipeline's schedule."""

    def __init__(
        self,
        store: StateStore,
        run: Callable[[str], object],
        secrets: Callable[[], Iterable[str]],
    ) -> None:
        self.store = store
        self._run = run
        self._secrets = secrets
        self._scheduler: Any = None
        self._jobs: dict[str, ScheduledAs] = {}

    @property
    def running(self) -> bool:
        """Whether the scheduler was started and not shut down."""
        return self._scheduler is not None and bool(self._scheduler.running)

    def start(self, config: Config) -> None:
        """Create the scheduler, add a job per pipeline, start it."""
        section = config.daemon
        self._scheduler = BackgroundScheduler(
            executors={"default": JobPool(max_workers=section.max_concurrent)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": section.misfire_grace,
            },
            timezone=parse_timezone(section.timezone),
        )
        self.update(config)
        self._scheduler.start()

    def reschedule(self, old: Config, new: Config) -> None:
        """After a reload: jobs follow the new config (all of them when the time zone changed)."""
        if self._scheduler is None:
            return
        if new.daemon.timezone != old.daemon.timezone:
            self._jobs.clear()
        self.update(new)

    def update(self, config: Config) -> None:
        """Remove the jobs of removed pipelines; add or replace those whose schedule changed."""
        scheduler = self._scheduler
        tz_name = config.daemon.timezone
        timezone = parse_timezone(tz_name)
        for name in list(self._jobs):
            if name not in config.pipelines:
                scheduler.remove_job(name)
                del self._jobs[name]
                log.info("pipeline unscheduled", pipeline=name)
        now = dt.datetime.now(dt.UTC)
        for name in config.pipelines:
            schedule = config.schedule(name)
            wanted = ScheduledAs(schedule.text, tz_name)
            if self._jobs.get(name) == wanted:
                continue
            first: dt.datetime | None = None
            if schedule.interval_s is not None:  # keep the rhythm across restarts
                runs = self.store.runs(name, limit=1)
                first = schedule.next_run(runs[0].started_at if runs else None, now)
            options: dict[str, Any] = {"next_run_time": first} if first is not None else {}
            scheduler.add_job(
                self._job,
                schedule.trigger(timezone),
                args=[name],
                id=name,
                name=name,
                replace_existing=True,
                **options,
            )
            self._jobs[name] = wanted
            job = scheduler.get_job(name)
            log.info(
                "pipeline scheduled",
                pipeline=name,
                schedule=schedule.text,
                next_run=iso(job_next_run(job, now) if job is not None else None),
            )

    def _job(self, name: str) -> None:
        try:
            self._run(name)
        except Exception as exc:  # the scheduler thread must survive anything
            log.error(
                "scheduled run crashed",
                pipeline=name,
                error=describe_error(exc, self._secrets()),
                traceback=redacted_traceback(),
            )

    def next_run(self, name: str) -> dt.datetime | None:
        """When the pipeline's job fires next (UTC); None without a scheduler or job."""
        job = self._scheduler.get_job(name) if self._scheduler is not None else None
        return job_next_run(job, dt.datetime.now(dt.UTC)) if job is not None else None

    def shutdown(self) -> None:
        """Stop scheduling; runs in flight go on (the daemon stops them)."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
