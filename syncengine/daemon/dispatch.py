"""When webhook events start a run: debounced, one run per pipeline at a time.

An event stored by the receiver (``webhooks.py``) makes every pipeline it concerns (the
connector is a member, and it syncs an entity the event may change: ``events.pipelines_of``)
*due*, ``[daemon] webhook_debounce`` seconds later: the events that arrive in the meantime
go into the same run. A due pipeline is run event-driven (``PipelineRunner.run(events=True)``)
on a thread of this dispatcher's own, at most ``max_concurrent`` at once:

- a run of it already going on in this daemon, or in another one (its lease is held): it
  stays due and is tried again a debounce later, so that events arriving during a run get
  a run of their own after it;
- paused, or backing off after failures: it is not run; its events stay in the inbox for the
  next run that may (the schedule's, or the next event's after the backoff);
- any outcome else: done. Events the run did not take (they arrived after it started) made
  the pipeline due again when they arrived.

When the daemon starts, a pipeline with events in the inbox that no run of it took (the
daemon was down, or killed before it could run them) is due at once.

A run someone asked for (the console's "Run now": ``run_now``) is due at once and goes the
same way, as a complete run (``asked``), not while paused or backing off. While its lease is
held it is tried again every ``ASKED_RETRY_S`` (or a debounce, when shorter), and at once
when this daemon's scheduled run of it ends (``ran``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from syncengine.config import Config
from syncengine.daemon.policy import RunOutcome
from syncengine.events import InboxEvent, pipelines_of
from syncengine.state import StateStore

__all__ = ["EventDispatch"]

log = structlog.get_logger("syncengine.daemon")

RETRY_SKIPS = frozenset({"skipped:lease_held"})
"""Outcomes after which a due pipeline is tried again a debounce later."""
ASKED_RETRY_S = 5.0
"""How soon a run someone asked for is tried again while another run holds the lease."""


class EventDispatch:
    """Starts the event-driven runs of one daemon (see the module docstring)."""

    def __init__(
        self,
        config: Callable[[], Config],
        store: StateStore,
        run: Callable[[str], RunOutcome],
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        asked: Callable[[str], RunOutcome] | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self._run = run
        self._run_asked = asked or run
        self._stopping = stopping
        self._clock = clock
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}
        """pipeline -> when (``clock``) its event-driven run is due."""
        self._running: set[str] = set()
        self._asked: set[str] = set()
        """Due pipelines whose run was asked for (``run_now``)."""
        self._running_asked: set[str] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- told by the receiver
    def stored(self, event: InboxEvent) -> None:
        """An event was stored: the pipelines it concerns are due a debounce from now
        (unless they already are)."""
        config = self._config()
        shapes = {
            n: (p.members, [e for e in p.entities if p.syncs(event.connector, e)])
            for n, p in config.pipelines.items()
        }
        names = pipelines_of(event.connector, event.entities, shapes)
        if names:
            self._make_due(names, config.daemon.webhook_debounce)

    # -- told by the console
    def run_now(self, name: str) -> None:
        """Someone asked for a run of the pipeline: it is due now, for a complete run."""
        self._make_due([name], 0.0, asked=True)

    # -- told by the daemon
    def ran(self, name: str) -> None:
        """A scheduled run of the pipeline ended: a run asked for meanwhile is due now."""
        with self._lock:
            if name not in self._asked:
                return
            self._due[name] = self._clock()
        self._wake.set()

    def _make_due(self, names: list[str], delay: float, *, asked: bool = False) -> None:
        when = self._clock() + delay
        with self._lock:
            for name in names:
                if asked:  # sooner than events' debounce, never later
                    self._asked.add(name)
                    self._due[name] = min(self._due.get(name, when), when)
                else:
                    self._due.setdefault(name, when)
        self._wake.set()

    # -- the loop
    def start(self) -> None:
        """Make due the pipelines with events no run took, and start the loop's thread."""
        config = self._config()
        self._pool = ThreadPoolExecutor(
            config.daemon.max_concurrent, thread_name_prefix="event-run"
        )
        waiting = [
            name
            for name, p in config.pipelines.items()
            if self.store.pending_events(name, p.members, limit=1)
        ]
        if waiting:
            log.info("webhook events waiting since before the start", pipelines=waiting)
            self._make_due(waiting, 0.0)
        self._thread = threading.Thread(target=self._loop, name="event-dispatch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._until_next())
            self._wake.clear()
            if self._stopping.is_set():
                return
            for name in self._take_due():
                assert self._pool is not None
                try:
                    self._pool.submit(self._attempt, name)
                except RuntimeError:  # the daemon shut the pool down meanwhile
                    return  # its events stay in the inbox for the next start

    def _until_next(self) -> float:
        with self._lock:
            waiting = [when for name, when in self._due.items() if name not in self._running]
        if not waiting:
            return 60.0
        return max(0.0, min(waiting) - self._clock())

    def _take_due(self) -> list[str]:
        now = self._clock()
        with self._lock:
            due = [n for n, when in self._due.items() if when <= now and n not in self._running]
            for name in due:
                del self._due[name]
                self._running.add(name)
                if name in self._asked:
                    self._asked.discard(name)
                    self._running_asked.add(name)
        return due

    def _attempt(self, name: str) -> None:
        with self._lock:
            asked = name in self._running_asked
        outcome = None
        try:
            outcome = (self._run_asked if asked else self._run)(name)
        except Exception as exc:  # the runner handles a run's failures; this is a bug
            log.error("event-driven run could not be attempted", pipeline=name, error=str(exc))
        finally:
            with self._lock:
                self._running.discard(name)
                self._running_asked.discard(name)
            if outcome is not None and outcome.outcome in RETRY_SKIPS:
                debounce = self._config().daemon.webhook_debounce
                delay = min(debounce, ASKED_RETRY_S) if asked else debounce
                self._make_due([name], delay, asked=asked)
            self._wake.set()

    def stop(self, wait: bool = True) -> None:
        """Start no more runs (``stopping`` is set by the daemon); wait for those running."""
        self._wake.set()
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)

    @property
    def due(self) -> dict[str, float]:
        """pipeline -> seconds until its event-driven run is due (tests, ``/healthz``)."""
        now = self._clock()
        with self._lock:
            return {name: max(0.0, when - now) for name, when in self._due.items()}
