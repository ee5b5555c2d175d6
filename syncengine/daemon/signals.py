"""Signals and the way out: SIGTERM/SIGINT stop gracefully, a second one exits at once,
SIGHUP asks for a reload.

- SIGTERM/SIGINT: stop scheduling, set every running sync's stop event (it finishes the batch
  in flight, commits and stops), release the leases, exit 0 — or exit 1 when
  ``shutdown_grace`` passes first.
- A second signal releases what it can within two seconds and exits at once (128 + signal
  number); the journal makes the interrupted run safe to resume.
- SIGHUP: the main thread reloads the config.

A handler runs in the main thread between two of its steps, whatever it holds then: the lock
of the log it is writing a line to, the leases' lock. So the handlers take no lock: each
writes its signal's number down a pipe, and a thread of its own (``Signals._act``) does the
rest. A handler that logged itself hung the daemon for ever when the signal came while the
main thread wrote a line (the log's lock is not re-entrant), and a second signal could not
get it out."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
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
        self._noted = 0  # by the handlers, in the main thread
        self._pipe: tuple[int, int] | None = None
        self._last_resort: tuple[int, int] | None = None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (stop), and SIGHUP (reload) where there is one; the
        first call starts the thread that acts on them."""
        if self._pipe is None:
            read, write = os.pipe()
            os.set_blocking(write, False)  # a handler never waits on a full pipe
            self._pipe = (read, write)
            self._last_resort = os.pipe()
            threading.Thread(target=self._act, name="signals", daemon=True).start()
            threading.Thread(target=self._exit_anyway, name="signals-exit", daemon=True).start()
        signal.signal(signal.SIGTERM, self._note)
        signal.signal(signal.SIGINT, self._note)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._note)

    def take_reload_request(self) -> bool:
        """Whether SIGHUP asked for a reload since the last call."""
        if not self._reload_requested:
            return False
        self._reload_requested = False
        return True

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        """The handler: the signal's number down the pipe, and nothing that takes a lock.
        The second stop signal also starts ``_exit_anyway``'s clock."""
        assert self._pipe is not None and self._last_resort is not None
        # 64 KiB of signals not acted on yet: this one adds nothing
        with contextlib.suppress(BlockingIOError):
            os.write(self._pipe[1], bytes([signum]))
        if signum != getattr(signal, "SIGHUP", None):
            self._noted += 1
            if self._noted == 2:
                os.write(self._last_resort[1], bytes([signum]))

    def _act(self) -> None:
        """The signals' thread: each signal noted, in the order they came."""
        assert self._pipe is not None
        while True:
            for signum in os.read(self._pipe[0], 64):
                if hasattr(signal, "SIGHUP") and signum == signal.SIGHUP:
                    self._reload_requested = True
                    self._wake()
                else:
                    self._on_signal(signum)

    def _exit_anyway(self) -> None:
        """The second signal's promise kept whatever the signals' thread is doing: the
        process ends ``FORCED_RELEASE_S`` + 1 s after it, the leases released or not, the
        log flushed or not (the next run resumes from the journal)."""
        assert self._last_resort is not None
        signum = os.read(self._last_resort[0], 1)[0]
        time.sleep(FORCED_RELEASE_S + 1.0)
        os._exit(128 + signum)

    def _on_signal(self, signum: int) -> None:
        """The first signal stops gracefully; a second one exits at once (128 + signal)."""
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            log.warning("second signal: exiting at once", signal=name)
            self._exit_now(128 + signum)
        log.info("signal received: finishing running syncs, then exiting", signal=name)
        self._stop()
