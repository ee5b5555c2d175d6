"""Signals and the way out: SIGTERM/SIGINT stop gracefully, a second one exits at once,
SIGHUP asks for a reload.

- SIGTERM/SIGINT: stop scheduling, set every running sync's stop event (it finishes the batch
  in flight, commits and stops), release the leases, exit 0 — or exit 1 when
  ``shutdown_grace`` passes first.
- A second signal releases what it can within two seconds and exits at once (128 + signal
  number); the journal makes the interrupted run safe to resume.
- SIGHUP: the main thread reloads the config.

Nothing is done in a signal handler. A Python handler runs in the main thread between two of
its steps, whatever that thread holds then (the lock of the log line it is writing, the
leases' lock), and only once it gets back to Python code (not while it waits on the state
store). So the handlers do nothing, and the interpreter's own C handler writes each signal's
number to a pipe as it arrives (``signal.set_wakeup_fd``): a thread reads them
(``Signals._read``), counts the stop signals, starts the last-resort clock on the second one,
and hands each signal to another thread that acts on it (``Signals._act``: logs, stops,
exits), so that a stop that hangs cannot keep the second signal from being counted. A handler
that logged itself hung the daemon for ever when the signal came while the main thread wrote
a line (the log's lock is not re-entrant), and a second signal could not get it out."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

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
    """The daemon's signals: installed from the main thread, acted on by two threads of
    their own until ``uninstall``."""

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
        self.forced = threading.Event()
        """Set once a second stop signal is being acted on: the process is about to exit
        with its code, and a clean exit must not overtake it (``hold_if_forced``)."""
        self._reload_requested = False
        self._pipe: tuple[int, int] | None = None
        self._todo: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def install(self) -> None:
        """Take SIGTERM and SIGINT (stop), and SIGHUP (reload) where there is one, until
        ``uninstall``."""
        if self._pipe is not None:
            return
        read, write = os.pipe()
        os.set_blocking(write, False)  # the interpreter's handler never waits on it
        self._pipe = (read, write)
        threading.Thread(target=self._read, args=(read,), name="signals", daemon=True).start()
        threading.Thread(target=self._act, name="signals-act", daemon=True).start()
        for signum in _SIGNALS:
            self._previous[signum] = signal.signal(signum, _noted)
        self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def uninstall(self) -> None:
        """Give the signals back to the handlers before ``install``, and end the threads."""
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        write = self._pipe[1]
        self._pipe = None
        os.close(write)  # ``_read`` reads the end of the pipe, closes it and ends ``_act``

    def take_reload_request(self) -> bool:
        """Whether SIGHUP asked for a reload since the last call."""
        if not self._reload_requested:
            return False
        self._reload_requested = False
        return True

    def hold_if_forced(self) -> None:
        """Where the daemon is about to end by itself: if a second signal is ending it
        already, wait for that (its exit code, its leases released) instead."""
        if self.forced.is_set():
            while True:
                time.sleep(60)

    def _read(self, read: int) -> None:
        """The signals as they come down the pipe ``read``: a stop signal's count, the
        last-resort clock started on the second, each handed to ``_act`` in order."""
        stops = 0
        while chunk := os.read(read, 64):
            for signum in chunk:
                if signum not in _STOPS:
                    self._todo.put(signum)
                    continue
                stops += 1
                if stops == 2:
                    self.forced.set()
                    threading.Thread(
                        target=_exit_anyway, args=(128 + signum,), name="signals-exit", daemon=True
                    ).start()
                self._todo.put(signum)
        os.close(read)
        self._todo.put(None)

    def _act(self) -> None:
        """What each signal asks for, in the order they came; an error in one (a log whose
        pipe is closed) does not keep the next from being acted on."""
        while (signum := self._todo.get()) is not None:
            try:
                if signum in _STOPS:
                    self._on_signal(signum)
                elif signum == _RELOAD:
                    self._reload_requested = True
                    self._wake()
                # any other signal with a Python handler is written down too: not ours
            except Exception:  # nothing to tell it to; the next signal is still acted on
                continue

    def _on_signal(self, signum: int) -> None:
        """The first signal stops gracefully; a second one exits at once (128 + signal)."""
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            with contextlib.suppress(Exception):
                log.warning("second signal: exiting at once", signal=name)
            self._exit_now(128 + signum)
        with contextlib.suppress(Exception):
            log.info("signal received: finishing running syncs, then exiting", signal=name)
        self._stop()


_STOPS = frozenset({int(signal.SIGTERM), int(signal.SIGINT)})
_RELOAD = int(signal.SIGHUP) if hasattr(signal, "SIGHUP") else None
_SIGNALS = sorted(_STOPS | ({_RELOAD} if _RELOAD is not None else set()))


def _noted(_signum: int, _frame: FrameType | None) -> None:
    """The Python handler of the daemon's signals: nothing (the interpreter has written the
    signal down the wakeup pipe already, and ``Signals._read`` takes it from there)."""


def _exit_anyway(code: int) -> None:
    """The second signal's promise kept whatever else the process is doing: it ends
    ``FORCED_RELEASE_S`` + 1 s after the signal, the leases released or not, the log flushed
    or not (the next run resumes from the journal)."""
    time.sleep(FORCED_RELEASE_S + 1.0)
    os._exit(code)
