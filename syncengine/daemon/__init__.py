"""``syncengine daemon``: every pipeline on its schedule, one runner per pipeline, clean exits.

The ``Daemon`` here only wires its parts together; each part is a module named for its job:

- ``runner``: one scheduled attempt at a pipeline (skip, lease, sync, outcome);
- ``policy``: whether a pipeline may run now and what an outcome means (reset, backoff,
  pause on refused credentials);
- ``syncengine.leasing`` (shared with manual syncs): the leases of running syncs, renewed
  every third of their ttl;
- ``scheduling``: what is due (one APScheduler job per pipeline, and ``--once``);
- ``reload``: when the config changed and whether the new one may replace the old;
- ``signals``: SIGTERM/SIGINT (graceful, then at once) and SIGHUP (reload);
- ``server``: ``/healthz``, ``/metrics``, the webhook receiver and the console over HTTP
  (Starlette, served by uvicorn on a thread);
- ``console``: whether the web console is served, and its "Run now";
- ``webhooks``: whether a webhook delivery is genuine, and storing it in the inbox;
- ``dispatch``: the event-driven runs webhook events start (debounced, never overlapping);
- ``redaction``: what of a failure may be logged.

The main thread only waits for signals and watches the config file; the scheduler's thread
pool runs the scheduled syncs and the dispatcher's pool the event-driven ones; the keeper
thread renews their leases.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from syncengine.alerts import Alerter
from syncengine.alerts.sender import FLUSH_S
from syncengine.config import Config
from syncengine.daemon.console import DaemonRunner, console_app
from syncengine.daemon.dispatch import EventDispatch
from syncengine.daemon.policy import (
    RunOutcome,
    RunPolicy,
    backoff_seconds,
    credentials_fingerprint,
    persist,
)
from syncengine.daemon.redaction import describe_error
from syncengine.daemon.reload import ConfigWatch, load_again
from syncengine.daemon.runner import PipelineRunner, SyncFn, engine_sync
from syncengine.daemon.scheduling import Schedules, is_due
from syncengine.daemon.scheduling import next_run as scheduled_next_run
from syncengine.daemon.server import (
    Health,
    HttpAddress,
    PipelineHealth,
    StatusServer,
    health_report,
    parse_http_address,
)
from syncengine.daemon.signals import FORCED_RELEASE_S, Signals
from syncengine.daemon.signals import flush_and_exit as _flush_and_exit
from syncengine.daemon.webhooks import WebhookReceiver
from syncengine.errors import StateError, StateUnavailableError
from syncengine.exit_codes import ExitCode
from syncengine.leasing import LeaseKeeper
from syncengine.logging import REDACTOR
from syncengine.metrics import Metrics
from syncengine.state import StateStore
from syncengine.state.leases import holder_id

__all__ = [
    "Daemon",
    "OnceEntry",
    "OnceReport",
    "RunOutcome",
    "SyncFn",
    "backoff_seconds",
    "credentials_fingerprint",
    "engine_sync",
    "parse_http_address",
    "run",
]

log = structlog.get_logger("syncengine.daemon")


@dataclass(frozen=True)
class OnceEntry:
    """What ``--once`` did with one pipeline: an attempt (a run, or a skip: paused, backing
    off, another daemon holds its lease), or nothing because it was not due."""

    pipeline: str
    attempt: RunOutcome | None
    """None: not due (or paused and not due)."""
    next_run: dt.datetime | None = None
    """Not due: when its schedule owes the next run; backing off: until when (UTC)."""
    paused: str | None = None
    """Paused (and not due): the reason."""


@dataclass(frozen=True)
class OnceReport:
    """``--once``: one entry per pipeline, in config order, and the process exit code."""

    entries: list[OnceEntry]
    exit_code: int


PRUNE_EVERY_S = 3600.0
"""How often a serving daemon prunes the run history (``[daemon] history_days``) and the
webhook inbox."""
SWITCH_INTERVAL_S = 0.001
"""How long a thread of a serving daemon holds the interpreter while others wait."""
INBOX_KEEP_DONE_S = 3600.0
"""Webhook events every pipeline concerned took are kept this long (then pruned); events
some pipeline never took are kept ``history_days``."""


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
        self._http_address = HttpAddress(*http) if http is not None else None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.policy = RunPolicy(store, self.metrics)
        self.alerts = Alerter(store, self.metrics, config=lambda: self.config, watch_store=True)
        self.leases = LeaseKeeper(store, self.holder, lambda: self.config.daemon.lease_ttl)
        self.runner = PipelineRunner(
            config=lambda: self.config,
            store=store,
            sync=sync,
            policy=self.policy,
            leases=self.leases,
            metrics=self.metrics,
            stopping=self._stopping,
            alerts=self.alerts,
        )
        self.schedules = Schedules(store, self.run_pipeline, lambda: self.config.secrets)
        self.dispatch = EventDispatch(
            lambda: self.config, store, self.run_events, self._stopping, asked=self.run_asked
        )
        self.console_runner = DaemonRunner(
            lambda: self.config, store, self.dispatch, lambda: self.running
        )
        self.receiver = WebhookReceiver(
            lambda: self.config, store, self.metrics, stored=self.dispatch.stored
        )
        self.server = StatusServer(self.health, self.metrics, self.receiver)
        self.signals = Signals(stop=self._stop_runs, exit_now=self._exit_now, wake=self._wake.set)
        self._watch = ConfigWatch(config)

    # ------------------------------------------------------------------------ runs

    def run_pipeline(self, name: str) -> RunOutcome:
        """One attempt at running a pipeline, with every rule of the failure policy."""
        try:
            return self.runner.run(name)
        finally:
            self.dispatch.ran(name)

    def run_events(self, name: str) -> RunOutcome:
        """One attempt at an event-driven run of a pipeline (``syncengine.events``)."""
        self.metrics.webhook_runs.labels(name).inc()
        return self.runner.run(name, events=True)

    def run_asked(self, name: str) -> RunOutcome:
        """One attempt at a complete run someone asked for (the console's "Run now")."""
        return self.runner.run(name, trigger="console")

    def renew_leases(self) -> None:
        """Renew the leases of the running syncs once (the keeper thread does it by itself)."""
        self.leases.renew()

    @property
    def running(self) -> list[str]:
        """The pipelines this daemon is syncing now."""
        return self.leases.running

    def due(self, name: str, now: dt.datetime | None = None) -> bool:
        """Whether the pipeline's schedule owes a run (from its last run's start)."""
        return is_due(self.store, self.config, name, now or dt.datetime.now(dt.UTC))

    def next_run(self, name: str) -> dt.datetime | None:
        """When the scheduler runs the pipeline next (None when not scheduled)."""
        return self.schedules.next_run(name)

    def prune_history(self) -> int:
        """Delete runs older than ``[daemon] history_days`` (each pipeline keeps its newest)."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=self.config.daemon.history_days)
        pruned = persist(self.store, lambda tx: tx.prune_runs(cutoff))
        if pruned:
            log.info("run history pruned", runs=pruned, before=cutoff.isoformat())
        concerned: dict[str, list[str]] = {}
        for name, pipeline in self.config.pipelines.items():
            for member in pipeline.members:
                concerned.setdefault(member, []).append(name)
        done_before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=INBOX_KEEP_DONE_S)
        events = persist(
            self.store,
            lambda tx: tx.prune_inbox(concerned, done_before=done_before, any_before=cutoff),
        )
        if events:
            log.info("webhook inbox pruned", events=events)
        return int(pruned or 0)

    # ------------------------------------------------------------------- starting

    def _prepare(self) -> None:
        """Before the first run: lift pauses whose credentials changed, prune the history,
        read every pipeline's standing."""
        self.policy.lift_stale_pauses(self.config)
        self.prune_history()
        self.policy.load(self.config)

    def start(self) -> None:
        """Start the scheduler, the lease keeper and the HTTP endpoint (if asked for)."""
        self._prepare()
        if self._http_address is not None:  # first: a port in use fails before any run
            # uvicorn's event loop and its worker threads answer webhook senders while syncs
            # run on other threads of this process: hand the interpreter over more often than
            # every 5 ms, so that an answer (a few hand-overs) does not wait behind a run's
            # CPU work for long (bench/README.md, issue 13: measured with and without)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            self.server.start(self._http_address, console_app(self.config, self.console_runner))
        section = self.config.daemon
        self.schedules.start(self.config)
        self.metrics.scheduler_up.set(1)
        self._start_lease_keeper()
        self.dispatch.start()
        self.alerts.start()
        log.info(
            "daemon started",
            holder=self.holder,
            pipelines=list(self.config.pipelines),
            max_concurrent=section.max_concurrent,
            lease_ttl=section.lease_ttl,
            state=self.store.url_for_display,
        )

    def _start_lease_keeper(self) -> None:
        """The keeper thread: renews the running syncs' leases until they all finished."""
        keeper = threading.Thread(
            target=self.leases.keep, args=(self._stopping,), name="lease-keeper", daemon=True
        )
        keeper.start()

    # ------------------------------------------------------------------- reloading

    def files_changed(self) -> bool:
        """Whether the config or a mapping file it names changed since it was loaded."""
        return self._watch.changed(self.config)

    def reload(self) -> bool:
        """Load the config again; keep the old one (and say why) when the new one is invalid."""
        old = self.config
        self._watch.remember(old)
        new = load_again(old, self.metrics)
        if new is None:
            return False
        REDACTOR.add(new.secrets)
        self.config = new
        self._watch.remember(new)
        self.schedules.reschedule(old, new)
        self.policy.lift_stale_pauses(new)
        self.metrics.reloads.labels("ok").inc()
        log.info("config reloaded", path=str(new.path), pipelines=list(new.pipelines))
        return True

    # ------------------------------------------------------------------ the process

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (from the main thread); returns the exit code."""
        self.signals.install()
        self.start()
        last_prune = time.monotonic()
        code = ExitCode.OK
        try:
            while not self._stopping.is_set():
                poll = self.config.daemon.reload_poll
                self._wake.wait(poll if poll > 0 else 60.0)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                if self._state_file_gone():
                    code = ExitCode.UNAVAILABLE
                    break
                if self.signals.take_reload_request():
                    log.info("SIGHUP: reloading the config")
                    self.reload()
                elif poll > 0 and self.files_changed():
                    log.info("config file changed: reloading")
                    self.reload()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    self.prune_history()
        finally:
            try:
                finished = self.shutdown()
            finally:
                self.signals.uninstall()
        return int(code if finished else ExitCode.PROBLEMS)

    def _state_file_gone(self) -> bool:
        """Whether the daemon must stop because its SQLite state file was deleted or replaced
        (said in the log): it would write nothing more (``StateStore._same_file``), and its
        service manager starting it again opens the file there now."""
        try:
            what = self.store.file_replaced()
        except StateError as exc:
            log.warning("the state store file cannot be checked", error=str(exc))
            return False
        if what:
            log.error(
                "the state store file was "
                f"{what}: the daemon stops (exit 4); start it again to use the file there now",
                path=str(self.store.path),
            )
        return bool(what)

    def request_stop(self) -> None:
        """Stop starting runs, and wake the main thread to shut down."""
        self._stopping.set()
        self._wake.set()

    def _stop_runs(self) -> None:
        """The first signal: stop starting runs and ask the running ones to stop."""
        self.request_stop()
        self.leases.stop_all()

    def _exit_now(self, code: int) -> None:
        """Release what leases can be released within ``FORCED_RELEASE_S``, then exit."""
        self.leases.release_all(FORCED_RELEASE_S)
        _flush_and_exit(code)

    def shutdown(self) -> bool:
        """Stop scheduling, stop the running syncs at their next batch boundary, wait up to
        ``shutdown_grace`` for them. True when everything finished in time; when they did
        not, the process exits 1 here (the next run resumes them from the journal)."""
        self._stopping.set()
        self.metrics.scheduler_up.set(0)
        self.schedules.shutdown()
        self.dispatch.stop(wait=False)
        running = self.leases.stop_all()
        grace = self.config.daemon.shutdown_grace
        if running:
            log.info(
                "shutting down: waiting for running syncs to commit",
                pipelines=[r.pipeline for r in running],
                grace_s=grace,
            )
        left = self.leases.wait_idle(time.monotonic() + grace)
        if left:
            self.signals.hold_if_forced()
            log.error(
                "shutdown grace period passed with syncs still running; exiting "
                "anyway (the next run resumes them from the journal)",
                pipelines=left,
            )
            self._exit_now(ExitCode.PROBLEMS)
        self.alerts.close(FLUSH_S)  # what the last runs told is sent before exiting
        self.server.stop()
        self.signals.hold_if_forced()  # a second signal's exit is under way: its code, not 0
        log.info("daemon stopped", holder=self.holder)
        return True

    # ------------------------------------------------------------------------ once

    def run_once(self, *, force: bool = False) -> int:
        """Run every due pipeline once (``--once``); the worst exit code of them."""
        return self.once(force=force).exit_code

    def once(self, *, force: bool = False) -> OnceReport:
        """Run every due pipeline once (``--once``), or with ``force`` every pipeline now
        whatever its schedule. Pauses, failure backoff and leases still hold: a paused
        pipeline is reported (and makes the exit code 1), never run."""
        self.signals.install()
        try:
            report = self._once(force)
            self.signals.hold_if_forced()
            return report
        finally:
            self.signals.uninstall()

    def _once(self, force: bool) -> OnceReport:
        """``once`` with the signals taken: every due (or, with ``force``, every) pipeline
        run, and what each did."""
        self._prepare()
        now = dt.datetime.now(dt.UTC)
        names = list(self.config.pipelines)
        due = names if force else [n for n in names if self.due(n, now)]
        log.info(
            "running due pipelines once",
            due=due,
            not_due=[n for n in names if n not in due],
            force=force,
        )
        codes: list[int] = [ExitCode.OK]
        entries: dict[str, OnceEntry] = {}
        for name in names:
            if name in due:
                continue
            state = self.policy.states.get(name)
            paused = (state.paused_reason or "paused") if state and state.paused else None
            if paused is not None:
                log.error("pipeline is paused", pipeline=name, reason=paused)
                codes.append(ExitCode.PROBLEMS)
            when = scheduled_next_run(self.store, self.config, name, now)
            entries[name] = OnceEntry(name, None, next_run=when, paused=paused)
        self._start_lease_keeper()
        with ThreadPoolExecutor(max_workers=self.config.daemon.max_concurrent) as pool:
            outcomes = list(pool.map(self.run_pipeline, due))
        self.alerts.close(FLUSH_S)
        self._stopping.set()
        for out in outcomes:
            if out.outcome == "skipped:paused":
                log.error("pipeline is paused", pipeline=out.pipeline, reason=out.error)
            codes.append(out.exit_code)
            state = self.policy.states.get(out.pipeline)
            until = state.backoff_until if state is not None else None
            entries[out.pipeline] = OnceEntry(out.pipeline, out, next_run=until)
        return OnceReport([entries[n] for n in names if n in entries], int(max(codes)))

    # ------------------------------------------------------------------- health, HTTP

    def health(self) -> Health:
        """(healthy, body) for ``/healthz``: healthy while the scheduler runs and the state
        store can be used."""
        alive = self.schedules.running and not self._stopping.is_set()
        running = set(self.running)
        store_error: str | None = None
        try:  # as the store says now: a pause made by `syncengine pause` shows at once
            states = {**self.policy.states, **self.store.pipeline_states()}
        except StateError as exc:
            states = dict(self.policy.states)  # as last seen
            if isinstance(exc, StateUnavailableError):
                store_error = describe_error(exc, self.config.secrets)
        pipelines = {}
        for name in self.config.pipelines:
            state = states.get(name)
            pipelines[name] = PipelineHealth(
                last_success=self.policy.last_success.get(name),
                running=name in running,
                next_run=self.next_run(name),
                paused=bool(state and state.paused),
                failures=state.failures if state else 0,
            )
        return health_report(alive, self.holder, pipelines, store_error)

    @property
    def http_address(self) -> HttpAddress | None:
        """Where ``/healthz`` and ``/metrics`` are served (the real port when 0 was asked)."""
        return self.server.address


def run(
    config: Config,
    *,
    once: bool = False,
    force: bool = False,
    http: tuple[str, int] | None = None,
    sync: SyncFn = engine_sync,
    report: Callable[[OnceReport], None] | None = None,
) -> int:
    """``syncengine daemon``: open the state store, then serve (or ``once``, every pipeline
    with ``force``, handing ``report`` what it did); the exit code."""
    from syncengine.api import open_store

    store = open_store(config)
    try:
        daemon = Daemon(config, store, sync=sync, http=http)
        if not once:
            return daemon.serve()
        done = daemon.once(force=force)
        if report is not None:
            report(done)
        return done.exit_code
    finally:
        store.close()
