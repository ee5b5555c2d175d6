"""Keeping the pipeline leases of running syncs: taken before a run, renewed every third of
their ttl by the keeper thread, released after it; a sync whose lease is lost is stopped.

One runner per pipeline across daemons sharing a state store rests on these leases; the
store's side of them is ``syncengine.state.leases``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from syncengine.errors import StateError
from syncengine.state import StateStore

__all__ = ["LeaseKeeper", "LeasedRun"]

log = structlog.get_logger("syncengine.daemon")

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

    def __init__(self, store: StateStore, holder: str, lease_ttl: Callable[[], float]) -> None:
        self.store = store
        self.holder = holder
        self._lease_ttl = lease_ttl
        self._lock = threading.Lock()
        self._running: dict[str, LeasedRun] = {}

    def acquire(self, pipeline: str, ttl: float) -> LeasedRun | None:
        """Take the pipeline's lease for a run and keep it from now on; None when another
        runner holds it."""
        run = LeasedRun(pipeline, ttl)
        with self.store.transaction() as tx:
            acquired = tx.acquire_lease(pipeline, self.holder, run.ttl)
        if not acquired:
            return None
        with self._lock:
            self._running[pipeline] = run
        return run

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
