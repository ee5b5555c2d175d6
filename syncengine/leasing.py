"""The pipeline leases of running syncs: taken before a run, renewed every third of their ttl
by the keeper thread, released after it; a sync whose lease is lost is stopped.

One run per pipeline, always: a daemon's scheduled runs (``LeaseKeeper``, from the daemon's
runner) and every manual ``syncengine sync`` (``hold_pipelines``) take the lease before they
read anything, across processes and hosts sharing a state store. A run that finds it held
waits up to its ``wait`` seconds and then stops with ``PipelineBusyError`` (exit 4) naming
the holder, having done nothing. A dry run takes no lease (it writes nothing, not even a
lease row, and never holds the daemon off) but waits or refuses the same way
(``wait_until_free``): its plan would be wrong while another run applies one.

A crashed holder's lease expires after its ttl (``[daemon] lease_ttl``); recovery settles
a run's journal intents only once that run's lease is gone (``syncengine.recovery``). The
store's side of leases is ``syncengine.state.leases``."""

from __future__ import annotations

import contextvars
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import TypeVar

import structlog

from syncengine.errors import PipelineBusyError, StateError, SyncStopped, UnavailableError
from syncengine.state import Lease, StateStore
from syncengine.state.leases import holder_id

__all__ = [
    "HeldPipelines",
    "LeaseKeeper",
    "LeasedRun",
    "busy_error",
    "hold_pipelines",
    "lease_holder",
    "sigterm_interrupts",
    "wait_until_free",
]

log = structlog.get_logger("syncengine.daemon")

T = TypeVar("T")

WAIT_POLL_S = 0.2
"""How often a run waiting for a lease (``--wait``) asks for it again."""

lease_holder: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lease_holder", default=None
)
"""The lease holder the sync running in this context syncs under: set by the engine for its
run (``Engine.holder``) and by the daemon's runner around its sync function; ``apply``
records it on the run's journal intents."""

RENEW_FAILURE_LIMIT = 0.8
"""A lease that could not be renewed for this share of its ttl stops its sync."""


@dataclass
class LeasedRun:
    """A sync running under this process's lease, and what the keeper knows of it."""

    pipeline: str
    ttl: float
    stop: threading.Event = field(default_factory=threading.Event)
    """Set to stop the sync at its next batch boundary (shutdown, or the lease is gone)."""
    renewed: float = field(default_factory=time.monotonic)
    lost: bool = False
    """Another runner took the lease: the sync was stopped for that."""


class LeaseKeeper:
    """The leases this process holds for its running syncs (``holder`` in the store)."""

    def __init__(
        self,
        store: StateStore,
        holder: str,
        lease_ttl: Callable[[], float],
        *,
        kind: str = "daemon",
    ) -> None:
        self.store = store
        self.holder = holder
        self.kind = kind
        """What kind of run holds the leases (``daemon``, ``sync``), shown to runs that
        find a pipeline busy."""
        self._lease_ttl = lease_ttl
        self._lock = threading.Lock()
        self._running: dict[str, LeasedRun] = {}
        self._starting: set[str] = set()
        """Pipelines whose lease this process is taking now."""

    def acquire(self, pipeline: str, ttl: float) -> LeasedRun | None:
        """Take the pipeline's lease for a run and keep it from now on; None when another
        runner holds it."""
        run = LeasedRun(pipeline, ttl)
        with self._lock:
            # this process's own run of it (a scheduled and an event-driven run of one
            # pipeline): the lease is ours already, and would be taken again
            if pipeline in self._running or pipeline in self._starting:
                return None
            self._starting.add(pipeline)
        try:
            with self.store.transaction() as tx:
                acquired = tx.acquire_lease(pipeline, self.holder, run.ttl, self.kind)
            if not acquired:
                return None
            with self._lock:
                self._running[pipeline] = run
            return run
        finally:
            with self._lock:
                self._starting.discard(pipeline)

    def forget(self, pipeline: str) -> None:
        """The run is over: stop renewing its lease."""
        with self._lock:
            self._running.pop(pipeline, None)

    def release(self, pipeline: str) -> None:
        """Give the lease back; when the store cannot be reached it expires by itself."""
        try:
            with self.store.transaction() as tx:
                tx.release_lease(pipeline, self.holder)
        except StateError as exc:
            log.warning("lease not released; it expires by itself", error=str(exc))

    @property
    def running(self) -> list[str]:
        """The pipelines syncing under a lease of this process now."""
        with self._lock:
            return list(self._running)

    def stop_all(self) -> list[LeasedRun]:
        """Ask every running sync to stop at its next batch boundary; the runs asked."""
        with self._lock:
            runs = list(self._running.values())
            for run in runs:
                run.stop.set()
        return runs

    def wait_idle(self, deadline: float) -> list[str]:
        """Wait until no sync runs or ``deadline`` (monotonic) passes; the ones still running."""
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.05)
        return self.running

    def keep(self, stopping: threading.Event) -> None:
        """The keeper thread: renew until ``stopping``, then for as long as syncs still
        finish (they commit while shutting down, under their lease)."""
        while not stopping.wait(self._renew_interval()):
            self.renew()
        while True:
            with self._lock:
                if not self._running:
                    return
            time.sleep(min(self._renew_interval(), 0.5))
            self.renew()

    def _renew_interval(self) -> float:
        with self._lock:
            ttls = [r.ttl for r in self._running.values()]
        return max(0.1, min([*ttls, self._lease_ttl()]) / 3)

    def renew(self) -> None:
        """Renew every running sync's lease once. A lease taken by another runner stops its
        sync at once; one that cannot be renewed stops it after most of its ttl."""
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            try:
                with self.store.transaction() as tx:
                    held = tx.renew_lease(run.pipeline, self.holder, run.ttl)
            except StateError as exc:
                log.warning("lease renewal failed", pipeline=run.pipeline, error=str(exc))
                if time.monotonic() - run.renewed > run.ttl * RENEW_FAILURE_LIMIT:
                    run.stop.set()
                continue
            if held:
                run.renewed = time.monotonic()
            else:
                run.lost = True
                run.stop.set()
                log.error("lease lost; stopping the run", pipeline=run.pipeline)

    def release_all(self, timeout: float) -> None:
        """Release every lease this process holds, giving up after ``timeout`` seconds (a
        forced exit must not hang on an unreachable store)."""
        names = self.running

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


# --------------------------------------------------------------------------- manual runs


def busy_error(name: str, lease: Lease, waited: float) -> PipelineBusyError:
    """The refusal of a run that found ``name`` held by ``lease``: who holds it, that nothing
    was done, and what to do."""
    hint = "run it again when that run is done, or give --wait SECONDS to wait for it"
    if lease.gone_from_here():
        left = max(0.0, (lease.expires_at - datetime.now(UTC)).total_seconds())
        hint = (
            "that process is no longer running (killed?); its lease expires by itself in "
            f"{left:.0f} s, and what it left unfinished is recovered by the next sync: run it "
            f"again then, or give --wait {int(left) + 5} to wait for it"
        )
    if lease.kind == "daemon":
        hint += f"; `syncengine pause -p {name}` keeps the daemon off it"
    after = f" after waiting {waited:g} s" if waited > 0 else ""
    return PipelineBusyError(
        f"pipeline {name} is busy{after}: a {lease.describe()} holds its lease; nothing was "
        f"read or written ({hint})",
        pipeline=name,
        holder=lease.holder,
    )


def _first_busy(store: StateStore, names: Sequence[str]) -> Lease | None:
    for name in names:
        lease = store.live_lease(name)
        if lease is not None:
            return lease
    return None


def _waiting_text(lease: Lease, wait: float) -> str:
    return (
        f"pipeline {lease.pipeline} is busy: a {lease.describe()} holds its lease; "
        f"waiting up to {wait:g} s for it"
    )


def wait_until_free(
    store: StateStore,
    names: Sequence[str],
    wait: float,
    waiting: Callable[[str], None] | None = None,
) -> None:
    """For a dry run: return once no other run holds any of the pipelines' leases, waiting
    up to ``wait`` seconds (``waiting`` is told once, when it starts waiting); else raise
    ``PipelineBusyError`` naming the holder. Takes no lease: writes nothing."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        lease = _first_busy(store, names)
        if lease is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise busy_error(lease.pipeline, lease, wait)
        if not told and waiting is not None:
            waiting(_waiting_text(lease, wait))
            told = True
        time.sleep(min(WAIT_POLL_S, left))


@dataclass
class HeldPipelines:
    """The leases a manual run holds, one per pipeline it syncs, renewed while it runs."""

    keeper: LeaseKeeper
    runs: dict[str, LeasedRun]

    @property
    def holder(self) -> str:
        return self.keeper.holder

    def run(self, name: str) -> LeasedRun:
        """The pipeline's run: its ``stop`` is the event to give the engine."""
        return self.runs[name]

    def run_sync(self, name: str, sync: Callable[[], T]) -> T:
        """Run one pipeline's sync (``sync()``, stoppable through ``run(name).stop``) under
        its lease. A sync the keeper stopped, because another run took the lease or it could
        not be renewed, could not complete: ``UnavailableError`` says which."""
        run = self.runs[name]
        try:
            return sync()
        except SyncStopped as exc:
            if not run.stop.is_set():
                raise
            why = (
                "its lease was taken over by another run"
                if run.lost
                else "its lease could not be renewed (the state store did not answer)"
            )
            raise UnavailableError(
                f"pipeline {name}: {why}, so the sync stopped at a batch boundary; what was "
                "applied is committed and the next sync goes on from there"
            ) from exc


def _take_all(keeper: LeaseKeeper, names: Sequence[str], ttl: float) -> dict[str, LeasedRun] | str:
    """Every pipeline's lease, or none: the name of the first one held elsewhere (the
    leases taken before it are given back, so that two runs never hold half each)."""
    taken: dict[str, LeasedRun] = {}
    for name in names:
        run = keeper.acquire(name, ttl)
        if run is None:
            for got in taken:
                keeper.forget(got)
                keeper.release(got)
            return name
        taken[name] = run
    return taken


@contextmanager
def hold_pipelines(
    store: StateStore,
    names: Sequence[str],
    *,
    ttl: float,
    wait: float = 0.0,
    waiting: Callable[[str], None] | None = None,
    kind: str = "sync",
) -> Iterator[HeldPipelines]:
    """Hold the lease of every pipeline in ``names`` for the whole of the block: all of them
    or none, waiting up to ``wait`` seconds for them (``waiting`` is told once, when it
    starts waiting). A keeper thread renews them every third of ``ttl``; a lease lost on the
    way sets its run's ``stop``. They are released when the block ends, also on an error or
    Ctrl-C; a process killed outright leaves them to expire after ``ttl``.

    Raises ``PipelineBusyError`` naming the holder when they cannot all be had in time:
    nothing was read or written then."""
    keeper = LeaseKeeper(store, holder_id(), lambda: ttl, kind=kind)
    deadline = time.monotonic() + wait
    told = False
    while True:
        got = _take_all(keeper, names, ttl)
        if not isinstance(got, str):
            break
        lease = store.live_lease(got)
        left = deadline - time.monotonic()
        if lease is None:
            continue  # released in between: ask again at once
        if left <= 0:
            raise busy_error(got, lease, wait)
        if not told and waiting is not None:
            waiting(_waiting_text(lease, wait))
            told = True
        time.sleep(min(WAIT_POLL_S, left))
    stopping = threading.Event()
    renewer = threading.Thread(
        target=keeper.keep, args=(stopping,), name="lease-keeper", daemon=True
    )
    renewer.start()
    try:
        yield HeldPipelines(keeper, got)
    finally:
        for name in got:
            keeper.forget(name)
        stopping.set()
        renewer.join()
        for name in got:
            keeper.release(name)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM interrupts the main thread like Ctrl-C, so that a
    manual sync that is terminated still releases its leases and says so (the journal makes
    any instant safe to stop at). Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
