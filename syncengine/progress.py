"""How the engine tells what it is doing: ``ProgressFn`` and the ``Step`` that calls it.

A *step* is one long piece of a sync: reading one member's records of one entity, settling
interrupted writes, applying an entity's plan, writing a buffered member's file. Its
progress is reported as ``progress(what, done, total)`` (``total`` None while unknown):
once when the step starts (so that a bar and its clock start then, not at the end), then at
most every ``REPORT_EVERY`` seconds while it goes on, and once when it ends (``done ==
total``). Reporting by time rather than per record keeps a bar moving during a slow read of
a few records and costs a 100 000-record read one clock reading per record, not one call.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

ProgressFn = Callable[[str, int, int | None], None]
"""(what, done, total or None) — called while reading and applying."""

REPORT_EVERY = 0.1
"""Seconds between two reports of a step that goes on (a bar moves ~10 times a second)."""


def no_progress(what: str, done: int, total: int | None) -> None:
    """A ``ProgressFn`` that shows nothing."""


class Step:
    """One step's reports: started at construction, ``tick(done)`` as it goes on (cheap to
    call often: it reports only when ``due``), ``end(done)`` once at the end.

    Hot loops may test ``monotonic() >= step.due`` themselves before calling ``tick``.
    """

    __slots__ = ("due", "progress", "total", "what")

    def __init__(
        self, progress: ProgressFn, what: str, total: int | None = None, done: int = 0
    ) -> None:
        """``done``: how much of ``total`` was done before (a first sync's slices before
        this one: the bar goes on from there)."""
        self.progress = progress
        self.what = what
        self.total = total
        progress(what, done, total)
        self.due = monotonic() + REPORT_EVERY

    def tick(self, done: int) -> None:
        """Report ``done`` if the last report is ``REPORT_EVERY`` old."""
        now = monotonic()
        if now >= self.due:
            self.due = now + REPORT_EVERY
            self.progress(self.what, done, self.total)

    def end(self, done: int) -> None:
        """The step is over: ``done`` of ``done`` (or of the total known from the start,
        when it stopped early)."""
        self.progress(self.what, done, done if self.total is None else self.total)
