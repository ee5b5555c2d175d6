"""One scheduled attempt at a pipeline, start to end::

    removed from the config? / stopping?  ─▶ skip
    paused or backing off?                ─▶ skip (the policy says)
    lease acquired?  ─ no ─▶ skip (a manual sync or another daemon runs it)
    sync(pipeline, stop=event)            lease renewed every ttl/3 by the keeper thread
    outcome ─▶ the policy (reset, pause, failures + backoff), metrics, "run finished"
    lease released

The sync itself is a ``SyncFn``; ``engine_sync`` (one ``Engine`` run) unless a test or the
bench gives another."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import structlog

from syncengine.alerts import Alerter
from syncengine.config import Config, Pipeline
from syncengine.connector import Connector
from syncengine.daemon.policy import RunOutcome, RunPolicy
from syncengine.daemon.redaction import describe_error, redacted_traceback
from syncengine.engine import Engine, SyncResult
from syncengine.errors import (
    AuthError,
    StateError,
    StateUnavailableError,
    SyncEngineError,
    SyncStopped,
)
from syncengine.exit_codes import ExitCode, failed_run_code
from syncengine.leasing import LeasedRun, LeaseKeeper, lease_holder
from syncengine.metrics import Metrics, http_stats
from syncengine.state import COMPLETED_OUTCOMES, StateStore

__all__ = ["PipelineRunner", "SyncFn", "engine_sync"]

log = structlog.get_logger("syncengine.daemon")

SyncFn = Callable[[Config, StateStore, Pipeline, threading.Event, list[Connector]], SyncResult]
"""Runs one pipeline: (config, store, pipeline, stop event, connectors made -> appended)."""


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


event_driven: contextvars.ContextVar[bool] = contextvars.ContextVar("event_driven", default=False)
"""True while the runner runs an event-driven run (``engine_sync`` tells the engine)."""


def engine_sync(
    config: Config,
    store: StateStore,
    pipeline: Pipeline,
    stop: threading.Event,
    connectors: list[Connector],
) -> SyncResult:
    """The default ``SyncFn``: one ``Engine`` run, stoppable through ``stop``, under the
    lease the runner holds (``lease_holder``)."""
    engine = Engine(
        _ObservedConfig.of(config, connectors.append),
        store,
        stop=stop,
        holder=lease_holder.get(),
        event_driven=event_driven.get(),
    )
    return engine.sync(pipeline)


class PipelineRunner:
    """Runs a pipeline when the policy and its lease allow, and hands the outcome to the
    policy. ``config()`` is the daemon's current config (a reload swaps it)."""

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        store: StateStore,
        sync: SyncFn,
        policy: RunPolicy,
        leases: LeaseKeeper,
        metrics: Metrics,
        stopping: threading.Event,
        alerts: Alerter | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self._sync = sync
        self.policy = policy
        self.leases = leases
        self.metrics = metrics
        self._stopping = stopping
        self.alerts = alerts
        """Told every run's outcome (``syncengine.alerts``: queued, never slows it)."""

    def run(self, name: str, *, events: bool = False, trigger: str | None = None) -> RunOutcome:
        """One attempt at running a pipeline, with every rule of the failure policy; with
        ``events``, an event-driven run (``syncengine.events``). ``trigger`` names what
        started it in the logs (default: webhook or schedule)."""
        config = self._config()  # a reload swaps it; this run keeps the one it started with
        pipeline = config.pipelines.get(name)
        if pipeline is None:
            return RunOutcome(name, "skipped:removed")
        trigger = trigger or ("webhook" if events else "schedule")
        with (
            structlog.contextvars.bound_contextvars(pipeline=name, trigger=trigger),
            _event_driven(events),
        ):
            if self._stopping.is_set():
                return RunOutcome(name, "skipped:stopping")
            try:
                skip = self.policy.why_not_now(name)
                if skip is not None:
                    return skip
                run = self.leases.acquire(name, config.daemon.lease_ttl)
            except StateError as exc:
                # the store cannot be used (down, locked, its file deleted): a failed run
                # that says why, not a crash with a traceback
                error = describe_error(exc, config.secrets)
                log.error("run failed: the state store cannot be used", error=error)
                if self.alerts is not None and isinstance(exc, StateUnavailableError):
                    self.alerts.store_failed(config)  # store_unavailable, if it still is
                return RunOutcome(name, "failed", failed_run_code(exc), error=error)
            if run is None:
                self.metrics.skipped.labels(name, "lease_held").inc()
                holder = self.store.live_lease(name)
                log.debug(
                    "run skipped: another run holds the lease (a manual sync, or another daemon)",
                    holder=holder.describe() if holder else None,
                )
                return RunOutcome(name, "skipped:lease_held")
            self.metrics.running.labels(name).set(1)
            try:
                if self._stopping.is_set():
                    return RunOutcome(name, "skipped:stopping")
                return self._run_leased(config, pipeline, run)
            finally:
                self.leases.forget(name)
                self.metrics.running.labels(name).set(0)
                self.leases.release(name)

    def _run_leased(self, config: Config, pipeline: Pipeline, run: LeasedRun) -> RunOutcome:
        """The sync under its lease; what its outcome (or exception) means goes to the policy."""
        name = pipeline.name
        connectors: list[Connector] = []
        started = time.monotonic()
        out = RunOutcome(name, "failed", ExitCode.PROBLEMS)
        held = lease_holder.set(self.leases.holder)
        try:
            result = self._sync(config, self.store, pipeline, run.stop, connectors)
            out = RunOutcome(name, result.outcome, result.exit_code, result)
            if result.outcome in COMPLETED_OUTCOMES:
                self.policy.succeeded(name)
        except SyncStopped as exc:
            out = RunOutcome(name, "stopped", ExitCode.OK, error=str(exc))
            if run.lost:
                log.error("run stopped: the lease was lost to another runner")
        except AuthError as exc:
            out.error = self._describe(exc)
            out.exit_code = int(failed_run_code(exc))
            out.refused = True
            self.policy.refused(config, pipeline, out.error)
        except Exception as exc:
            out.error = self._describe(exc)
            out.exit_code = int(failed_run_code(exc))
            if not isinstance(exc, SyncEngineError):
                log.error(
                    "run failed with an internal error (a bug, please report it)",
                    traceback=redacted_traceback(),
                )
            self.policy.failed(config, name, out.error)
        finally:
            lease_holder.reset(held)
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
        if self.alerts is not None:
            self.alerts.notify(
                config,
                name,
                out.outcome,
                result=out.result,
                error=out.error,
                refused=out.refused,
            )
        return out

    def _describe(self, exc: BaseException) -> str:
        return describe_error(exc, self._config().secrets)


@contextmanager
def _event_driven(events: bool) -> Iterator[None]:
    token = event_driven.set(events)
    try:
        yield
    finally:
        event_driven.reset(token)
