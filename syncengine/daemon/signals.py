"""Signals and the way out: SIGTERM/SIGINT stop gracefully, a second one exits at once,
SIGHUP asks for a reload.

- SIGTERM/SIGINT: stop scheduling, set every running sync's stop event (it finishes the batch
  in flight, commits and stops), release the leases, exit 0 — or exit 1 when
  ``shutdown_grace`` passes first.
- A second signal releases what it can within two seconds and exits at once (128 + signal
  number); the journal makes the interrupted run safe to resume.
- SIGHUP: the main thread reloads the config."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

import structlog

__all__ = ["FORCED_RELEASE_S", "Signals", "flush_and_exit"]

log = structlog.get_logger("syncengine.daemon")

FORCED_RELEASE_S = 2.0
"""On a second signal, leases are released for at most this long before exiting."""


def flush_and_exit(code: int) -> None:
    """Exit the process at once with ``code`` (no cleanup, other threads or not), after
    flushing what was logged."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            continue
    os._exit(code)


class Signals:
    """The daemon's signal handlers (installed from the main thread)."""

    def __init__(
        self,
        stop: Callable[[], None],
        exit_now: Callable[[int], None],
        wake: Callable[[], None],
    ) -> None:
        self._stop = stop
        self._exit_now = exit_now
        self._wake = wake
        self.received = 0
        self._reload_requested = False

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (stop), and SIGHUP (reload) where there is one."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    def take_reload_request(self) -> bool:
        """Whether SIGHUP asked for a reload since the last call."""
        if not self._reload_requested:
            return False
        self._reload_requested = False
        return True

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """The first signal stops gracefully; a second one exits at once (128 + signal)."""
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            log.warning("second signal: exiting at once", signal=name)
            self._exit_now(128 + signum)
        log.info("signal received: finishing running syncs, then exiting", signal=name)
        self._stop()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True
        self._wake()
