"""``syncengine daemon``: every pipeline on its schedule, one runner per pipeline, clean exits.

How a scheduled run goes (``Daemon.run_pipeline``)::

    paused? ── yes ─▶ skip (until `syncengine resume`, or new credentials)
    backing off? ─ yes ─▶ skip (until backoff_until)
    lease acquired? ─ no ─▶ skip (another daemon runs it)
    Engine.sync(pipeline, stop=event)   lease renewed every ttl/3 by the keeper thread
      ok / conflicts / errors ─▶ failures reset
      AuthError               ─▶ paused, with the reason, persisted
      any other failure       ─▶ failures + 1, backoff min(max, initial·2^(n-1)) + jitter
      SyncStopped             ─▶ (shutdown, or the lease was lost) nothing counted
    lease released

APScheduler runs one job per pipeline (``max_instances=1``, ``coalesce=True``, a misfire grace
time) on a thread pool of ``[daemon] max_concurrent`` workers. The main thread only waits for
signals and watches the config file:

- SIGTERM/SIGINT: stop scheduling, set every running sync's stop event (it finishes the batch
  in flight, commits and stops), release the leases, exit 0 — or exit 1 when
  ``shutdown_grace`` passes first. A second signal releases what it can within two seconds and
  exits at once (128 + signal number); the journal makes the interrupted run safe to resume.
- SIGHUP, or a changed config/mapping file (checked every ``reload_poll`` seconds): the config
  is loaded and validated again; an invalid one is logged and ignored, the old one keeps
  running. ``[state] url`` and ``max_concurrent`` changes need a restart.

A pause after refused credentials is lifted by ``syncengine resume -p NAME``, or
automatically when a daemon starts or reloads with different credentials for the pipeline's
members (a hash of their options is kept with the pause, never the secrets themselves).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import structlog
from apscheduler.executors.pool import (  # type: ignore[import-untyped]
    ThreadPoolExecutor as JobPool,
)
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from pydantic import SecretBytes, SecretStr

from syncengine.config import Config, Pipeline, load_config
from syncengine.connector import Connector
from syncengine.engine import Engine, SyncResult
from syncengine.errors import (
    AuthError,
    ConfigError,
    StateError,
    SyncEngineError,
    SyncStopped,
    UsageError,
)
from syncengine.logging import REDACTOR, redact_text
from syncengine.metrics import CONTENT_TYPE_LATEST, Metrics, http_stats
from syncengine.schedule import parse_timezone
from syncengine.state import COMPLETED_OUTCOMES, PipelineState, StateStore, Tx
from syncengine.state.leases import holder_id

__all__ = [
    "Daemon",
    "RunOutcome",
    "SyncFn",
    "backoff_seconds",
    "credentials_fingerprint",
    "engine_sync",
    "parse_http_address",
    "run",
]

log = structlog.get_logger("syncengine.daemon")
T = TypeVar("T")

SyncFn = Callable[[Config, StateStore, Pipeline, threading.Event, list[Connector]], SyncResult]
"""Runs one pipeline: (config, store, pipeline, stop event, connectors made -> appended)."""

FORCED_RELEASE_S = 2.0
"""On a second signal, leases are released for at most this long before exiting."""
PRUNE_EVERY_S = 3600.0
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


# ------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _ObservedConfig(Config):
    """The config, telling ``observer`` about every connector the engine makes (for the
    HTTP counters of the run's connectors)."""

    observer: Callable[[Connector], None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, config: Config, observer: Callable[[Connector], None]) -> _ObservedConfig:
        values = {f.name: getattr(config, f.name) for f in fields(Config)}
        return cls(**values, observer=observer)

    def make_connector(self, name: str, extra: Any = None) -> Connector:
        connector = super().make_connector(name, extra)
        if self.observer is not None:
            self.observer(connector)
        return connector


def engine_sync(
    config: Config,
    store: StateStore,
    pipeline: Pipeline,
    stop: threading.Event,
    connectors: list[Connector],
) -> SyncResult:
    """The default ``SyncFn``: one ``Engine`` run, stoppable through ``stop``."""
    engine = Engine(_ObservedConfig.of(config, connectors.append), store, stop=stop)
    return engine.sync(pipeline)


def backoff_seconds(
    failures: int, initial: float, maximum: float, jitter: Callable[[], float] = random.random
) -> float:
    """``initial · 2^(failures-1)``, at most ``maximum``, plus up to 10 % jitter (within it)."""
    base = min(maximum, initial * 2.0 ** max(0, min(failures - 1, 60)))
    return min(maximum, base * (1.0 + 0.1 * jitter()))


def credentials_fingerprint(config: Config, pipeline: Pipeline) -> str:
    """A hash of the pipeline's members' options, secrets included: a pause after refused
    credentials lifts itself once these change."""

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr | SecretBytes):
            return str(value.get_secret_value())
        if isinstance(value, dict):
            return {str(k): reveal(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [reveal(v) for v in value]
        return value

    members = {
        m: reveal(config.connectors[m].options.model_dump())
        for m in pipeline.members
        if m in config.connectors
    }
    text = json.dumps([pipeline.name, members], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (127.0.0.1) -> (host, port); ``ValueError`` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http {text!r}: use HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class RunOutcome:
    """What one scheduled attempt did: a run (``outcome`` of the run) or a skip."""

    pipeline: str
    outcome: str
    """ok, conflicts, errors, guard, failed, stopped, or skipped:<why> (paused, backoff,
    lease_held, removed, stopping)."""
    exit_code: int = 0
    result: SyncResult | None = None
    error: str = ""
    seconds: float = 0.0


@dataclass
class _Run:
    pipeline: str
    ttl: float
    stop: threading.Event = field(default_factory=threading.Event)
    renewed: float = field(default_factory=time.monotonic)
    lost: bool = False


# -------------------------------------------------------------------------------- daemon


class Daemon:
    """Schedules and runs the pipelines of one config. ``serve()`` blocks until a signal;
    ``run_once()`` runs the due pipelines once. Both return the process exit code."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        *,
        sync: SyncFn = engine_sync,
        http: tuple[str, int] | None = None,
        holder: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.holder = holder or holder_id()
        self.metrics = Metrics()
        self._sync = sync
        self._http_address = http
        self._lock = threading.Lock()
        self._running: dict[str, _Run] = {}
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self._signals = 0
        self._scheduler: Any = None
        self._schedules: dict[str, tuple[str, str]] = {}
        self._keeper: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._watched = self._signature(config)
        self._last_success: dict[str, dt.datetime | None] = {}
        self._states: dict[str, PipelineState] = {}

    # ----------------------------------------------------------------------- one run

    def run_pipeline(self, name: str) -> RunOutcome:
        """One attempt at running a pipeline, with every rule of the failure policy."""
        config = self.config  # a reload swaps it; this run keeps the one it started with
        pipeline = config.pipelines.get(name)
        if pipeline is None:
            return RunOutcome(name, "skipped:removed")
        with structlog.contextvars.bound_contextvars(pipeline=name):
            if self._stopping.is_set():
                return RunOutcome(name, "skipped:stopping")
            skip = self._why_not_now(name)
            if skip is not None:
                return skip
            run = _Run(name, config.daemon.lease_ttl)
            with self.store.transaction() as tx:
                acquired = tx.acquire_lease(name, self.holder, run.ttl)
            if not acquired:
                self.metrics.skipped.labels(name, "lease_held").inc()
                holder = self.store.leases().get(name)
                log.debug(
                    "run skipped: another runner holds the lease",
                    holder=holder.holder if holder else None,
                )
                return RunOutcome(name, "skipped:lease_held")
            with self._lock:
                self._running[name] = run
            self.metrics.running.labels(name).set(1)
            try:
                if self._stopping.is_set():
                    return RunOutcome(name, "skipped:stopping")
                return self._run_leased(config, pipeline, run)
            finally:
                with self._lock:
                    self._running.pop(name, None)
                self.metrics.running.labels(name).set(0)
                try:
                    with self.store.transaction() as tx:
                        tx.release_lease(name, self.holder)
                except StateError as exc:
                    log.warning("lease not released; it expires by itself", error=str(exc))

    def _why_not_now(self, name: str) -> RunOutcome | None:
        state = self.store.pipeline_states().get(name)
        if state is not None:
            self._states[name] = state
            self.metrics.paused.labels(name).set(1 if state.paused else 0)
            self.metrics.failures.labels(name).set(state.failures)
        if state is not None and state.paused:
            self.metrics.skipped.labels(name, "paused").inc()
            log.debug("run skipped: pipeline paused", reason=state.paused_reason)
            return RunOutcome(
                name, "skipped:paused", EXIT_FAILED, error=state.paused_reason or "paused"
            )
        if state is not None and state.backoff_until and state.backoff_until > _utcnow():
            self.metrics.skipped.labels(name, "backoff").inc()
            log.info(
                "run skipped: backing off after failures",
                failures=state.failures,
                until=state.backoff_until.isoformat(),
            )
            return RunOutcome(name, "skipped:backoff")
        return None

    def _run_leased(self, config: Config, pipeline: Pipeline, run: _Run) -> RunOutcome:
        name = pipeline.name
        connectors: list[Connector] = []
        started = time.monotonic()
        out = RunOutcome(name, "failed", EXIT_FAILED)
        try:
            result = self._sync(config, self.store, pipeline, run.stop, connectors)
            out = RunOutcome(name, result.outcome, result.exit_code, result)
            if result.outcome in COMPLETED_OUTCOMES:
                with self.store.transaction() as tx:
                    tx.record_success(name)
                self._succeeded(name)
        except SyncStopped as exc:
            out = RunOutcome(name, "stopped", EXIT_OK, error=str(exc))
            if run.lost:
                log.error("run stopped: the lease was lost to another runner")
        except AuthError as exc:
            out.error = self._redact(exc)
            reason = (
                f"credentials refused: {out.error}; fix the member's api key, then "
                f"`syncengine resume -p {name}` (or restart the daemon with new ones)"
            )
            self._persist(
                lambda tx: tx.pause_pipeline(
                    name, reason, credentials_fingerprint(config, pipeline)
                )
            )
            self.metrics.paused.labels(name).set(1)
            log.error("pipeline paused: credentials refused", error=out.error)
        except Exception as exc:
            out.error = self._redact(exc)
            if not isinstance(exc, SyncEngineError):
                log.error(
                    "run failed with an internal error (a bug, please report it)",
                    traceback=redact_text(traceback.format_exc(), REDACTOR.secrets),
                )
            self._failed(config, name, out.error)
        finally:
            out.seconds = time.monotonic() - started
            self.metrics.observe_run(
                name, out.outcome, out.seconds, out.result, http_stats(connectors)
            )
        log.info(
            "run finished",
            outcome=out.outcome,
            exit_code=out.exit_code,
            run_id=out.result.run_id if out.result else None,
            seconds=round(out.seconds, 3),
            error=out.error or None,
        )
        return out

    def _succeeded(self, name: str) -> None:
        now = _utcnow()
        self._last_success[name] = now
        self._states.pop(name, None)
        self.metrics.last_success.labels(name).set(now.timestamp())
        self.metrics.failures.labels(name).set(0)

    def _failed(self, config: Config, name: str, error: str) -> None:
        section = config.daemon

        def backoff(failures: int) -> float:
            return backoff_seconds(failures, section.backoff_initial, section.backoff_max)

        state = self._persist(lambda tx: tx.record_failure(name, error, backoff))
        if isinstance(state, PipelineState):
            self._states[name] = state
            self.metrics.failures.labels(name).set(state.failures)
            log.warning(
                "run failed; backing off",
                error=error,
                failures=state.failures,
                until=state.backoff_until.isoformat() if state.backoff_until else None,
            )

    def _persist(self, write: Callable[[Tx], T]) -> T | None:
        try:
            with self.store.transaction() as tx:
                return write(tx)
        except StateError as exc:
            log.error("state store write failed", error=str(exc))
            return None

    def _redact(self, exc: BaseException) -> str:
        return redact_text(
            f"{type(exc).__name__}: {exc}", (*self.config.secrets, *REDACTOR.secrets)
        )

    # ------------------------------------------------------------------ lease keeper

    def _keep_leases(self) -> None:
        """Renew the leases of running syncs every third of their ttl; stop a sync whose
        lease was taken, or could not be renewed for most of its ttl."""
        while not self._stopping.wait(self._renew_interval()):
            self.renew_leases()
        # while shutting down the syncs are still finishing: keep their leases alive
        while True:
            with self._lock:
                if not self._running:
                    return
            time.sleep(min(self._renew_interval(), 0.5))
            self.renew_leases()

    def _renew_interval(self) -> float:
        with self._lock:
            ttls = [r.ttl for r in self._running.values()]
        return max(0.1, min([*ttls, self.config.daemon.lease_ttl]) / 3)

    def renew_leases(self) -> None:
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            try:
                with self.store.transaction() as tx:
                    held = tx.renew_lease(run.pipeline, self.holder, run.ttl)
            except StateError as exc:
                held = True  # unknown: keep going until most of the ttl has passed
                log.warning("lease renewal failed", pipeline=run.pipeline, error=str(exc))
                if time.monotonic() - run.renewed > run.ttl * 0.8:
                    run.stop.set()
                continue
            if held:
                run.renewed = time.monotonic()
            else:
                run.lost = True
                run.stop.set()
                log.error("lease lost; stopping the run", pipeline=run.pipeline)

    # ------------------------------------------------------------------- scheduling

    def start(self) -> None:
        """Start the scheduler, the lease keeper and the HTTP endpoint (if asked for)."""
        self._prepare()
        if self._http_address is not None:  # first: a port in use fails before any run
            self._start_http(*self._http_address)
        section = self.config.daemon
        self._scheduler = BackgroundScheduler(
            executors={"default": JobPool(max_workers=section.max_concurrent)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": section.misfire_grace,
            },
            timezone=parse_timezone(section.timezone),
        )
        self._schedule_jobs(self.config)
        self._scheduler.start()
        self.metrics.scheduler_up.set(1)
        self._keeper = threading.Thread(target=self._keep_leases, name="lease-keeper", daemon=True)
        self._keeper.start()
        log.info(
            "daemon started",
            holder=self.holder,
            pipelines=list(self.config.pipelines),
            max_concurrent=section.max_concurrent,
            lease_ttl=section.lease_ttl,
            state=self.store.url_for_display,
        )

    def _prepare(self) -> None:
        self._lift_stale_pauses(self.config)
        self.prune_history()
        for name in self.config.pipelines:
            last = self.store.last_success(name)
            self._last_success[name] = last
            if last is not None:
                self.metrics.last_success.labels(name).set(last.timestamp())
        self._states = self.store.pipeline_states()
        for name in self.config.pipelines:
            state = self._states.get(name)
            self.metrics.paused.labels(name).set(1 if state and state.paused else 0)
            self.metrics.failures.labels(name).set(state.failures if state else 0)
            if state and state.paused:
                log.warning("pipeline is paused", pipeline=name, reason=state.paused_reason)

    def _schedule_jobs(self, config: Config) -> None:
        scheduler = self._scheduler
        tz_name = config.daemon.timezone
        timezone = parse_timezone(tz_name)
        for name in list(self._schedules):
            if name not in config.pipelines:
                scheduler.remove_job(name)
                del self._schedules[name]
                log.info("pipeline unscheduled", pipeline=name)
        now = _utcnow()
        for name in config.pipelines:
            schedule = config.schedule(name)
            if self._schedules.get(name) == (schedule.text, tz_name):
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
            self._schedules[name] = (schedule.text, tz_name)
            job = scheduler.get_job(name)
            log.info(
                "pipeline scheduled",
                pipeline=name,
                schedule=schedule.text,
                next_run=_iso(job.next_run_time if job else None),
            )

    def _job(self, name: str) -> None:
        try:
            self.run_pipeline(name)
        except Exception as exc:  # the scheduler thread must survive anything
            log.error(
                "scheduled run crashed",
                pipeline=name,
                error=self._redact(exc),
                traceback=redact_text(traceback.format_exc(), REDACTOR.secrets),
            )

    def next_run(self, name: str) -> dt.datetime | None:
        job = self._scheduler.get_job(name) if self._scheduler is not None else None
        when = job.next_run_time if job is not None else None
        return when.astimezone(dt.UTC) if isinstance(when, dt.datetime) else None

    # ------------------------------------------------------------------- reloading

    def _signature(self, config: Config) -> tuple[tuple[str, int, int], ...]:
        paths = {config.path.resolve()}
        for pipeline in config.pipelines.values():
            for per_entity in pipeline.section.mappings.values():
                for override in per_entity.values():
                    path = Path(override)
                    paths.add(path if path.is_absolute() else config.base_dir / path)
        out = []
        for path in sorted(paths):
            try:
                stat = path.stat()
                out.append((str(path), stat.st_mtime_ns, stat.st_size))
            except OSError:
                out.append((str(path), -1, -1))
        return tuple(out)

    def files_changed(self) -> bool:
        return self._signature(self.config) != self._watched

    def reload(self) -> bool:
        """Load the config again; keep the old one (and say why) when the new one is invalid."""
        old = self.config
        self._watched = self._signature(old)
        try:
            new = load_config(old.path)
        except ConfigError as exc:
            self.metrics.reloads.labels("rejected").inc()
            log.error(
                "config reload rejected; the previous config keeps running",
                path=str(old.path),
                problems=[str(p) for p in exc.problems],
            )
            return False
        except Exception as exc:
            self.metrics.reloads.labels("rejected").inc()
            log.error(
                "config reload rejected; the previous config keeps running",
                path=str(old.path),
                error=self._redact(exc),
            )
            return False
        if new.state_url != old.state_url:
            log.warning("[state] url changed: it takes effect when the daemon restarts")
        if new.daemon.max_concurrent != old.daemon.max_concurrent:
            log.warning("[daemon] max_concurrent changed: it takes effect when the daemon restarts")
        REDACTOR.add(new.secrets)
        self.config = new
        self._watched = self._signature(new)
        if self._scheduler is not None:
            if new.daemon.timezone != old.daemon.timezone:
                self._schedules.clear()
            self._schedule_jobs(new)
        self._lift_stale_pauses(new)
        self.metrics.reloads.labels("ok").inc()
        log.info("config reloaded", path=str(new.path), pipelines=list(new.pipelines))
        return True

    def _lift_stale_pauses(self, config: Config) -> None:
        """Resume pipelines paused for refused credentials that have changed since."""
        try:
            states = self.store.pipeline_states()
        except StateError as exc:
            log.warning("cannot read pipeline states", error=str(exc))
            return
        for name, state in states.items():
            pipeline = config.pipelines.get(name)
            if pipeline is None or not state.paused or state.paused_fingerprint is None:
                continue
            if state.paused_fingerprint != credentials_fingerprint(config, pipeline):
                self._persist(partial(Tx.resume_pipeline, pipeline=name))
                self.metrics.paused.labels(name).set(0)
                log.info("pipeline resumed: its credentials changed since the pause", pipeline=name)

    def prune_history(self) -> int:
        cutoff = _utcnow() - dt.timedelta(days=self.config.daemon.history_days)
        pruned = self._persist(lambda tx: tx.prune_runs(cutoff))
        if pruned:
            log.info("run history pruned", runs=pruned, before=cutoff.isoformat())
        return int(pruned or 0)

    # ------------------------------------------------------------------ the process

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (from the main thread); returns the exit code."""
        self._install_signals()
        self.start()
        last_prune = time.monotonic()
        try:
            while not self._stopping.is_set():
                poll = self.config.daemon.reload_poll
                self._wake.wait(poll if poll > 0 else 60.0)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    log.info("SIGHUP: reloading the config")
                    self.reload()
                elif poll > 0 and self.files_changed():
                    log.info("config file changed: reloading")
                    self.reload()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    self.prune_history()
        finally:
            finished = self.shutdown()
        return EXIT_OK if finished else EXIT_FAILED

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def shutdown(self) -> bool:
        """Stop scheduling, stop the running syncs at their next batch boundary, wait up to
        ``shutdown_grace`` for them. True when everything finished in time."""
        self._stopping.set()
        self.metrics.scheduler_up.set(0)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.stop.set()
        grace = self.config.daemon.shutdown_grace
        if running:
            log.info(
                "shutting down: waiting for running syncs to commit",
                pipelines=[r.pipeline for r in running],
                grace_s=grace,
            )
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.05)
        with self._lock:
            left = [r.pipeline for r in self._running.values()]
        if left:
            log.error(
                "shutdown grace period passed with syncs still running; exiting "
                "anyway (the next run resumes them from the journal)",
                pipelines=left,
            )
            self._release_all(FORCED_RELEASE_S)
            _flush_and_exit(EXIT_FAILED)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("daemon stopped", holder=self.holder)
        return True

    def _release_all(self, timeout: float) -> None:
        """Release every lease this process holds, giving up after ``timeout`` seconds."""
        with self._lock:
            names = list(self._running)

        def release() -> None:
            for name in names:
                try:
                    with self.store.transaction() as tx:
                        tx.release_lease(name, self.holder)
                except StateError:
                    continue

        worker = threading.Thread(target=release, daemon=True)
        worker.start()
        worker.join(timeout)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            log.warning("second signal: exiting at once", signal=name)
            self._release_all(FORCED_RELEASE_S)
            _flush_and_exit(128 + signum)
        log.info("signal received: finishing running syncs, then exiting", signal=name)
        self.request_stop()
        with self._lock:
            for run in self._running.values():
                run.stop.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True
        self._wake.set()

    # ------------------------------------------------------------------------ once

    def due(self, name: str, now: dt.datetime | None = None) -> bool:
        """Whether the pipeline's schedule owes a run (from its last run's start)."""
        runs = [r for r in self.store.runs(name, limit=5) if not r.dry_run]
        last = runs[0].started_at if runs else None
        tz = parse_timezone(self.config.daemon.timezone)
        return self.config.schedule(name).is_due(last, now or _utcnow(), tz)

    def run_once(self) -> int:
        """Run every due pipeline once (``--once``); the worst exit code of them."""
        self._install_signals()
        self._prepare()
        due = [n for n in self.config.pipelines if self.due(n)]
        log.info(
            "running due pipelines once",
            due=due,
            not_due=[n for n in self.config.pipelines if n not in due],
        )
        codes = [EXIT_OK]
        for name, state in self._states.items():
            if name in self.config.pipelines and state.paused and name not in due:
                log.error("pipeline is paused", pipeline=name, reason=state.paused_reason)
                codes.append(EXIT_FAILED)
        keeper = threading.Thread(target=self._keep_leases, name="lease-keeper", daemon=True)
        keeper.start()
        with ThreadPoolExecutor(max_workers=self.config.daemon.max_concurrent) as pool:
            outcomes = list(pool.map(self.run_pipeline, due))
        self._stopping.set()
        for out in outcomes:
            if out.outcome == "skipped:paused":
                log.error("pipeline is paused", pipeline=out.pipeline, reason=out.error)
            codes.append(out.exit_code)
        return max(codes)

    # ------------------------------------------------------------------- health, HTTP

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body) for ``/healthz``: healthy while the scheduler runs."""
        alive = (
            self._scheduler is not None
            and bool(self._scheduler.running)
            and not self._stopping.is_set()
        )
        with self._lock:
            running = set(self._running)
        pipelines = {}
        for name in self.config.pipelines:
            state = self._states.get(name)
            pipelines[name] = {
                "last_success": _iso(self._last_success.get(name)),
                "running": name in running,
                "next_run": _iso(self.next_run(name)),
                "paused": bool(state and state.paused),
                "failures": state.failures if state else 0,
            }
        body = {
            "status": "ok" if alive else "unavailable",
            "scheduler": "running" if alive else "stopped",
            "holder": self.holder,
            "pipelines": pipelines,
        }
        return alive, body

    def _start_http(self, host: str, port: int) -> None:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, body = daemon.health()
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, daemon.metrics.render())
                else:
                    self._send(404, "application/json", b'{"error": "not found"}')

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UsageError(
                f"--http {host}:{port}: cannot listen there: {exc.strerror or exc}"
            ) from None
        server.daemon_threads = True
        self._http = server
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        bound_host, bound_port = server.server_address[:2]
        log.info(
            "http listening",
            url=f"http://{bound_host!s}:{bound_port}",
            endpoints=["/healthz", "/metrics"],
        )

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where ``/healthz`` and ``/metrics`` are served (the real port when 0 was asked)."""
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    @property
    def running(self) -> list[str]:
        """The pipelines this daemon is syncing now."""
        with self._lock:
            return list(self._running)


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            continue
    os._exit(code)


def run(
    config: Config,
    *,
    once: bool = False,
    http: tuple[str, int] | None = None,
    sync: SyncFn = engine_sync,
) -> int:
    """``syncengine daemon``: open the state store, then serve (or ``once``); the exit code."""
    from syncengine.api import open_store

    store = open_store(config)
    try:
        daemon = Daemon(config, store, sync=sync, http=http)
        return daemon.run_once() if once else daemon.serve()
    finally:
        store.close()
