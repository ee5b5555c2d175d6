"""The failure policy: whether a pipeline may run now, and what a run's outcome means for it.

::

    paused?       ─ yes ─▶ skip (until `syncengine resume`, or new credentials)
    backing off?  ─ yes ─▶ skip (until backoff_until)
    ... the run ...
      ok / conflicts / errors ─▶ failures reset
      AuthError               ─▶ paused, with the reason, persisted
      any other failure       ─▶ failures + 1, backoff min(max, initial·2^(n-1)) + jitter
      SyncStopped             ─▶ (shutdown, or the lease was lost) nothing counted

A pause after refused credentials keeps a fingerprint of the members' options (a hash, never
the secrets themselves): it lifts itself when the daemon starts or reloads with other ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

import structlog
from pydantic import SecretBytes, SecretStr

from syncengine.config import Config, Pipeline
from syncengine.engine import SyncResult
from syncengine.errors import StateError
from syncengine.exit_codes import ExitCode
from syncengine.metrics import Metrics
from syncengine.state import PipelineState, StateStore, Tx

__all__ = [
    "RunOutcome",
    "RunPolicy",
    "SkipReason",
    "backoff_seconds",
    "credentials_fingerprint",
    "pause_reason",
    "persist",
    "skip_reason",
]

log = structlog.get_logger("syncengine.daemon")
T = TypeVar("T")

SkipReason = Literal["paused", "backoff"]


@dataclass
class RunOutcome:
    """What one scheduled attempt did: a run (``outcome`` of the run) or a skip."""

    pipeline: str
    outcome: str
    """ok, conflicts, errors, guard, failed, stopped, or skipped:<why> (paused, backoff,
    lease_held, removed, stopping)."""
    exit_code: int = ExitCode.OK
    result: SyncResult | None = None
    error: str = ""
    seconds: float = 0.0
    refused: bool = False
    """The member refused the credentials (the pipeline is paused)."""

    def __post_init__(self) -> None:
        self.exit_code = int(self.exit_code)  # a plain number in logs and JSON


def skip_reason(state: PipelineState | None, now: dt.datetime) -> SkipReason | None:
    """Whether the pipeline's standing forbids a run at ``now``: ``paused`` (until resumed),
    ``backoff`` (until ``backoff_until``), or None: it may run."""
    if state is None:
        return None
    if state.paused:
        return "paused"
    if state.backoff_until and state.backoff_until > now:
        return "backoff"
    return None


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


def pause_reason(pipeline: str, error: str) -> str:
    """Why a pipeline is paused after refused credentials, and how to lift the pause."""
    return (
        f"credentials refused: {error}; fix the member's api key, then "
        f"`syncengine resume -p {pipeline}` (or restart the daemon with new ones)"
    )


def persist(store: StateStore, write: Callable[[Tx], T]) -> T | None:
    """``write`` in a transaction; a failing state store is logged and gives None, so that a
    daemon outlives a store that is briefly unavailable."""
    try:
        with store.transaction() as tx:
            return write(tx)
    except StateError as exc:
        log.error("state store write failed", error=str(exc))
        return None


class RunPolicy:
    """Applies the failure policy to the pipelines of one daemon, and remembers their standing
    (last success, failures, pause) for ``/healthz`` and the metrics."""

    def __init__(self, store: StateStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.last_success: dict[str, dt.datetime | None] = {}
        self.states: dict[str, PipelineState] = {}

    def load(self, config: Config) -> None:
        """Read every pipeline's last success and standing from the store (at start)."""
        for name in config.pipelines:
            last = self.store.last_success(name)
            self.last_success[name] = last
            if last is not None:
                self.metrics.last_success.labels(name).set(last.timestamp())
        self.states = self.store.pipeline_states()
        for name in config.pipelines:
            state = self.states.get(name)
            self.metrics.paused.labels(name).set(1 if state and state.paused else 0)
            self.metrics.failures.labels(name).set(state.failures if state else 0)
            if state and state.paused:
                log.warning("pipeline is paused", pipeline=name, reason=state.paused_reason)

    def why_not_now(self, name: str) -> RunOutcome | None:
        """The skip outcome when the pipeline is paused or backing off; None: run it."""
        state = self.store.pipeline_states().get(name)
        if state is not None:
            self.states[name] = state
            self.metrics.paused.labels(name).set(1 if state.paused else 0)
            self.metrics.failures.labels(name).set(state.failures)
        reason = skip_reason(state, dt.datetime.now(dt.UTC))
        if reason is None or state is None:
            return None
        self.metrics.skipped.labels(name, reason).inc()
        if reason == "paused":
            log.debug("run skipped: pipeline paused", reason=state.paused_reason)
            return RunOutcome(
                name, "skipped:paused", ExitCode.PROBLEMS, error=state.paused_reason or "paused"
            )
        log.info(
            "run skipped: backing off after failures",
            failures=state.failures,
            until=state.backoff_until.isoformat() if state.backoff_until else None,
        )
        return RunOutcome(name, "skipped:backoff")

    def succeeded(self, name: str) -> None:
        """A run completed: record it; failures and backoff are forgotten."""
        with self.store.transaction() as tx:
            tx.record_success(name)
        now = dt.datetime.now(dt.UTC)
        self.last_success[name] = now
        self.states.pop(name, None)
        self.metrics.last_success.labels(name).set(now.timestamp())
        self.metrics.failures.labels(name).set(0)

    def failed(self, config: Config, name: str, error: str) -> None:
        """A run failed: one more failure, and a backoff that grows with them."""
        section = config.daemon

        def backoff(failures: int) -> float:
            return backoff_seconds(failures, section.backoff_initial, section.backoff_max)

        state = persist(self.store, lambda tx: tx.record_failure(name, error, backoff))
        if isinstance(state, PipelineState):
            self.states[name] = state
            self.metrics.failures.labels(name).set(state.failures)
            log.warning(
                "run failed; backing off",
                error=error,
                failures=state.failures,
                until=state.backoff_until.isoformat() if state.backoff_until else None,
            )

    def refused(self, config: Config, pipeline: Pipeline, error: str) -> None:
        """Credentials were refused: pause the pipeline, keeping the credentials' fingerprint."""
        name = pipeline.name
        reason = pause_reason(name, error)
        fingerprint = credentials_fingerprint(config, pipeline)
        persist(self.store, lambda tx: tx.pause_pipeline(name, reason, fingerprint))
        self.metrics.paused.labels(name).set(1)
        log.error("pipeline paused: credentials refused", error=error)

    def lift_stale_pauses(self, config: Config) -> None:
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
                persist(self.store, partial(Tx.resume_pipeline, pipeline=name))
                self.metrics.paused.labels(name).set(0)
                log.info("pipeline resumed: its credentials changed since the pause", pipeline=name)
