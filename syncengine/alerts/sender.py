"""Alerts at the edge: after each attempt at a pipeline, on a thread of their own, read the
facts from the state store, decide (``syncengine.alerts.decide``), claim each change in the
store (only the daemon that wins a change sends its alert) and send through every channel
with retries and a doubling backoff. Nothing here fails or slows a sync: the run's thread
only puts its outcome on a queue; every failure is logged and counted."""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from syncengine.alerts.channels import Attempt, Channel, channels_of
from syncengine.alerts.decide import (
    Alert,
    Ending,
    Items,
    RunFacts,
    StoreOutage,
    Transition,
    compose,
    decide_all,
    due_reminders,
    observe,
)
from syncengine.config import AlertsSection, Config, Pipeline
from syncengine.engine import SyncResult
from syncengine.errors import StateUnavailableError, describe
from syncengine.logging import REDACTOR
from syncengine.metrics import Metrics
from syncengine.redact import redact_text, redact_value
from syncengine.state import COMPLETED_OUTCOMES, StateStore

__all__ = ["FLUSH_S", "Alerter", "Delivery", "ending_of", "send_test"]

log = structlog.get_logger("syncengine.alerts")

TICK_S = 60.0
"""How often a daemon looks for open conditions due a reminder."""
FLUSH_S = 10.0
"""How long a stopping daemon (or a one-shot command) waits for queued alerts to go out."""
ACCOUNTING = ("invoices", "payments")
"""Entities whose sync makes ``reconcile_after_sync`` run the reconcile report."""


class _Counters:
    """The two counters of ``/metrics`` (none for a one-shot ``sync``)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._m = metrics

    def sent(self, channel: str, event: str) -> None:
        if self._m is not None:
            self._m.alerts_sent.labels(channel, event).inc()

    def failed(self, channel: str) -> None:
        if self._m is not None:
            self._m.alert_failures.labels(channel).inc()


@dataclass(frozen=True)
class Delivery:
    """How one alert went through one channel (after its retries)."""

    channel: str
    ok: bool
    error: str = ""
    attempts: int = 1


def ending_of(outcome: str, *, refused: bool = False) -> Ending | None:
    """The alert view of a run's outcome; None: the attempt says nothing (stopped, the
    lease held elsewhere, removed, stopping)."""
    if refused:
        return "refused"
    if outcome in COMPLETED_OUTCOMES:
        return "completed"
    if outcome in ("guard", "failed", "skipped:paused", "skipped:backoff"):
        return outcome  # type: ignore[return-value]
    return None


@dataclass(frozen=True)
class _Job:
    config: Config
    pipeline: str
    ending: Ending
    result: SyncResult | None
    error: str


@dataclass(frozen=True)
class _StoreLook:
    """A run could not reach the state store: look at it (``Alerter.store_failed``)."""

    config: Config


class Alerter:
    """Turns attempts into alerts on a thread of its own. ``notify`` never blocks or
    raises; ``close`` waits (boundedly) for what is queued to be sent."""

    def __init__(
        self,
        store: StateStore,
        metrics: Metrics | None = None,
        *,
        config: Callable[[], Config] | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        tick: float = TICK_S,
        watch_store: bool = False,
    ) -> None:
        self.store = store
        self._config = config
        self._tick = tick
        self._counters = _Counters(metrics)
        self._clock = clock
        self._queue: queue.Queue[_Job | _StoreLook | None] = queue.Queue()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._watch_store = watch_store
        """A daemon's: tell a state store that cannot be reached (``store_seen``). A one-shot
        command's is not: nothing remembers the outage from one run to the next, so every
        run would tell it again, and none would tell its end."""
        self._outage = StoreOutage(remind=dt.timedelta(hours=24))
        """The state store down, as this daemon saw it (only the alerts thread touches it)."""

    def notify(
        self,
        config: Config,
        pipeline: str,
        outcome: str,
        *,
        result: SyncResult | None = None,
        error: str = "",
        refused: bool = False,
    ) -> None:
        """Queue an attempt's outcome for alerting (nothing when ``config`` has no
        ``[alerts]`` or the outcome says nothing)."""
        if config.alerts is None or self._closing.is_set():
            return
        ending = ending_of(outcome, refused=refused)
        if ending is None:
            return
        self._ensure_thread()
        self._queue.put(_Job(config, pipeline, ending, result, error))

    def store_failed(self, config: Config) -> None:
        """A run could not start because the state store could not be reached: the alerts
        thread looks at the store itself when it comes to it (the store may answer again by
        then) and tells what it finds (``store_seen``), never a failed run of its own."""
        if config.alerts is None or self._closing.is_set() or not self._watch_store:
            return
        self._ensure_thread()
        self._queue.put(_StoreLook(config))

    def start(self) -> None:
        """Start the thread now (a daemon: it also sends the reminders of open conditions
        every ``tick`` seconds, runs or not)."""
        if self._config is not None and self._config().alerts is not None:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="alerts", daemon=True)
                self._thread.start()

    def close(self, timeout: float) -> bool:
        """Stop taking outcomes and wait up to ``timeout`` seconds for the queued ones to be
        sent (retries are cut short past it). True when everything was handled."""
        self._closing.set()
        thread = self._thread
        if thread is None:
            return True
        self._queue.put(None)
        self._deadline = time.monotonic() + timeout
        thread.join(timeout)
        if thread.is_alive():
            log.warning("alerts not sent before exit", queued=self._queue.qsize())
            return False
        return True

    _deadline: float | None = None

    # ------------------------------------------------------------------------- the thread

    def _work(self) -> None:
        next_tick = time.monotonic() + self._tick
        while True:
            try:
                job = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                next_tick = time.monotonic() + self._tick
                self._remind_safely()
                continue
            if job is None:
                return
            try:
                if isinstance(job, _StoreLook):
                    self.look_at_store(job.config)
                else:
                    self.handle(job.config, job.pipeline, job.ending, job.result, job.error)
            except StateUnavailableError as exc:  # the store gone: that is the alert
                self.store_seen(job.config, exc)
            except Exception as exc:  # a bug: the daemon goes on
                log.error(
                    "alerts: handling an outcome failed",
                    pipeline=job.pipeline if isinstance(job, _Job) else "",
                    error=redact_text(f"{type(exc).__name__}: {exc}", job.config.secrets),
                )

    def _remind_safely(self) -> None:
        config = self._config() if self._config is not None else None
        if config is None or config.alerts is None:
            return
        try:
            self.remind(config)
        except StateUnavailableError as exc:
            self.store_seen(config, exc)
        except Exception as exc:
            log.error(
                "alerts: reminders failed",
                error=redact_text(f"{type(exc).__name__}: {exc}", config.secrets),
            )

    def remind(self, config: Config) -> list[Alert]:
        """Remind of every open condition of the config's pipelines last told
        ``remind_hours`` ago or longer (a pause only while the pipeline is paused, failing
        runs only while it still counts failures); the alerts this process won."""
        section = config.alerts
        if section is None:
            return []
        states = self.store.pipeline_states()
        with self.store.transaction() as tx:
            rows = [r for r in tx.alert_conditions() if r.pipeline in config.pipelines]
        self.store_seen(config, None)
        changes = due_reminders(
            rows,
            states,
            now=self._clock(),
            remind=dt.timedelta(hours=section.remind_hours),
        )
        return self._send_won(config, section, changes)

    def handle(
        self,
        config: Config,
        pipeline: str,
        ending: Ending,
        result: SyncResult | None,
        error: str,
    ) -> list[Alert]:
        """Facts, decisions, claims and sending for one attempt; the alerts this process
        won and sent (or tried to)."""
        section = config.alerts
        if section is None:
            return []
        facts = gather_facts(config, self.store, pipeline, ending, result, error)
        now = self._clock()
        with self.store.transaction() as tx:
            stored = {(r.event, r.detail): r for r in tx.alert_conditions(pipeline)}
        self.store_seen(config, None)
        changes = decide_all(
            observe(facts),
            stored,
            pipeline=pipeline,
            now=now,
            remind=dt.timedelta(hours=section.remind_hours),
        )
        return self._send_won(config, section, changes)

    def look_at_store(self, config: Config) -> Alert | None:
        """Ask the state store something small, and tell what its answer says."""
        try:
            self.store.pipeline_states()
        except StateUnavailableError as exc:
            return self.store_seen(config, exc)
        return self.store_seen(config, None)

    def store_seen(self, config: Config, exc: StateUnavailableError | None) -> Alert | None:
        """One look at the state store: ``exc`` is why it could not be reached (None: it
        answered). Sends what that says (``StoreOutage``): the alert sent, if any."""
        section = config.alerts
        if section is None or not self._watch_store:
            self._outage.since = self._outage.told = None  # [alerts] gone: start afresh
            return None
        self._outage.remind = dt.timedelta(hours=section.remind_hours)
        error = None
        if exc is not None:
            error = redact_text(describe(exc), (*config.secrets, *REDACTOR.secrets))
            log.error("alerts: the state store cannot be used", error=error)
        alert = self._outage.observe(
            now=self._clock(), error=error, config_path=str(config.path.absolute())
        )
        if alert is not None:
            clean = _redacted(alert, config.secrets)
            for channel in channels_of(section, config.secrets):
                self.deliver(channel, clean, retries=section.retries, first=section.retry_initial)
        return alert

    def _send_won(
        self, config: Config, section: AlertsSection, changes: list[Transition]
    ) -> list[Alert]:
        """Claim each change in the store and send the alerts of those this process won."""
        won: list[Transition] = []
        for change in changes:
            with self.store.transaction() as tx:
                if tx.claim_alert(change.row, change.seen):
                    won.append(change)
        # the commands in an alert name the config by its absolute path: they are read and
        # typed far from the daemon's working directory
        alerts = compose(won, config_path=str(config.path.absolute()))
        channels = channels_of(section, config.secrets)
        for alert in alerts:
            clean = _redacted(alert, config.secrets)
            for channel in channels:
                self.deliver(channel, clean, retries=section.retries, first=section.retry_initial)
        return alerts

    def deliver(self, channel: Channel, alert: Alert, *, retries: int, first: float) -> Delivery:
        """Send through one channel, retrying what may pass later with a doubling backoff
        (cut short when ``close`` ran out of time); counted and logged."""
        attempt = Attempt(False, "not tried")
        tries = 0
        for tries in range(1, retries + 2):
            attempt = channel.send(alert)
            if attempt.ok or not attempt.retry or tries > retries:
                break
            wait = first * 2 ** (tries - 1)
            if self._deadline is not None and time.monotonic() + wait > self._deadline:
                break
            log.warning(
                "alert not sent; retrying",
                channel=channel.name,
                alert=alert.event,
                pipeline=alert.pipeline,
                error=attempt.error,
                retry_in_s=wait,
            )
            time.sleep(wait)
        if attempt.ok:
            self._counters.sent(channel.name, alert.event)
            log.info("alert sent", channel=channel.name, alert=alert.event, pipeline=alert.pipeline)
            return Delivery(channel.name, True, attempts=tries)
        self._counters.failed(channel.name)
        log.error(
            "alert could not be sent",
            channel=channel.name,
            alert=alert.event,
            pipeline=alert.pipeline,
            error=attempt.error,
            attempts=tries,
        )
        return Delivery(channel.name, False, attempt.error, tries)


def _redacted(alert: Alert, secrets: tuple[str, ...]) -> Alert:
    """The alert with every known secret masked (its texts come from errors and configs)."""
    return replace(
        alert,
        text=redact_text(alert.text, secrets),
        details=dict(redact_value(alert.details, secrets)),
    )


def gather_facts(
    config: Config,
    store: StateStore,
    pipeline: str,
    ending: Ending,
    result: SyncResult | None,
    error: str,
) -> RunFacts:
    """The facts of one attempt: from its result, and for a run that reached the members
    the open conflicts, skipped writes (and with ``reconcile_after_sync`` the books'
    disagreements) from the state store."""
    if ending not in ("completed", "guard") or result is None:
        return RunFacts(pipeline, ending, error=error)
    guards = {o.plan.entity: o.plan.guard for o in result.outcomes if o.plan.guard}
    ran = [o.plan.entity for o in result.outcomes]
    items: dict[str, Items] = {}
    conflicts = store.open_conflicts(pipeline)
    by: dict[str, int] = {}
    for c in conflicts:
        by[c.entity] = by.get(c.entity, 0) + 1
    items["conflicts_parked"] = Items(
        len(conflicts), max((c.id for c in conflicts), default=None), by
    )
    skips = store.skipped(pipeline)
    by = {}
    for s in skips:
        label = f"{s.member} {s.entity}"
        by[label] = by.get(label, 0) + 1
    newest = max((s.first_seen for s in skips), default=None)
    items["skipped_writes"] = Items(
        len(skips), int(newest.timestamp() * 1_000_000) if newest else None, by
    )
    items["needs_review"] = _review_items(store, pipeline)
    failure = ""
    if ending == "completed" and not result.event_driven:
        # only a run that looked at every record can say none fails any more: a run a guard
        # stopped, or one that read what webhook events named, neither opens nor clears it
        failed = [f for o in result.outcomes for f in o.failures]
        # the writes that failed, as ``status`` counts them: a file that could not be saved
        # is said once beside its writes (``nothing written: ...``), and is their cause
        writes = [f for f in failed if f.location] or failed
        failing = Counter(f"{f.member} {f.entity}" for f in writes)
        items["writes_failed"] = Items(len(writes), None, dict(failing))
        # the cause: the first failure's member, entity and error, never the record (an alert
        # names no customer, not even by the label a run report gives it)
        first = next((f for f in failed if not f.location), failed[0]) if failed else None
        failure = (
            redact_text(f"{first.member} {first.entity}: {first.message}", config.secrets)[:300]
            if first is not None
            else ""
        )
    spec = config.pipelines.get(pipeline)
    section = config.alerts
    if (
        section is not None
        and section.reconcile_after_sync
        and spec is not None
        and ending == "completed"
        and any(e in ACCOUNTING for e in ran)
        and "invoices" in spec.entities
    ):
        books = _disagreements(config, store, spec)
        if books is not None:
            items["books_disagree"] = books
    return RunFacts(
        pipeline,
        ending,
        error=error,
        guards=guards,
        entities_ran=ran,
        items=items,
        failure=failure,
    )


def _review_items(store: StateStore, pipeline: str) -> Items:
    """The records waiting for review and the deletes held for approval (``[pipelines.deletes]
    approve``; a guard's batch is ``guard_tripped``'s), as items: the mark is the newest
    one's time."""
    from syncengine.state import queues

    reviews = store.query(lambda conn: queues.review_rows(conn, pipeline, "open"))
    # a guard's batch is told as guard_tripped: only the deletes held for approval here
    held = store.query(lambda conn: queues.held_rows(conn, pipeline, "held", guarded=False))
    times = [r.first_seen for r in reviews] + [h.held_at for h in held]
    by = {k: v for k, v in (("review", len(reviews)), ("held deletes", len(held))) if v}
    newest = max(times, default=None)
    return Items(
        len(reviews) + len(held), int(newest.timestamp() * 1_000_000) if newest else None, by
    )


def _disagreements(config: Config, store: StateStore, pipeline: Pipeline) -> Items | None:
    """The reconcile report's disagreements after a sync, as items (None: it could not be
    made; logged)."""
    from syncengine.report import reconcile_report as build_report

    try:
        report = build_report(config, store, pipeline)
    except Exception as exc:
        log.warning(
            "alerts: the reconcile report after the sync failed",
            pipeline=pipeline.name,
            error=redact_text(f"{type(exc).__name__}: {exc}", config.secrets),
        )
        return None
    invoices = sum(1 for line in report.invoices if line.problems)
    general = len(report.general)
    by = {k: v for k, v in (("invoices", invoices), ("other", general)) if v}
    count = invoices + general
    return Items(count, count or None, by)


def send_test(config: Config) -> list[Delivery]:
    """``syncengine alerts test``: one test alert through every channel, one attempt each
    (no retries: the person is waiting); each channel's result."""
    section = config.alerts
    if section is None:
        return []
    path = config.path.absolute()
    alert = Alert(
        "test",
        "-",
        "info",
        "Test alert from syncengine: this channel works. Alerts for the pipelines in "
        f"{path} come here. Send another: `syncengine alerts test -c {path}`",
        {"command": f"syncengine alerts test -c {path}", "config": str(path)},
    )
    out = []
    for channel in channels_of(section, config.secrets):
        attempt = channel.send(_redacted(alert, config.secrets))
        out.append(Delivery(channel.name, attempt.ok, attempt.error))
    return out
