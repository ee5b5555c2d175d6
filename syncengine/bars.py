"""The command line's progress bar: the engine's steps (``syncengine.progress``) on a
terminal.

One line, the step under way: what it is, a bar (moving back and forth while the total is
unknown, as in a read), the count, the rate, the time it has taken so far and, where the
total is known, the time left::

    reading hcp payments    ━━━━━━━━━━━━━━━━━━   1,204     61/s  0:00:19
    applying customers      ━━━━━━━━━━╸━━━━━━━  5,200/9,781  1,630/s  0:00:03  0:00:03 left

A step's bar is made when the step starts, so its clock is real; the step before it is
taken off the screen, and the whole bar goes when the sync ends (``transient``). A step that
goes on where it stopped (a first sync applied in slices: each slice's writing and committing
come between) gets its bar back with its clock: the time and the rate are the whole step's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from syncengine.progress import ProgressFn


class CountColumn(ProgressColumn):
    """``done/total``, or ``done`` while the total is unknown."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        if task.total is None:
            return Text(f"{done:,}", style="progress.download")
        return Text(f"{done:,}/{int(task.total):,}", style="progress.download")


class RateColumn(ProgressColumn):
    """Records a second: over the last seconds while the step goes on, over the whole step
    once it is over; blank until there is something to measure."""

    def render(self, task: Task) -> Text:
        if task.finished:
            took = task.finished_time
            speed = task.completed / took if took else None
        else:
            speed = task.speed
        if not speed:
            return Text("")
        shown = f"{speed:,.0f}/s" if speed >= 10 else f"{speed:.1f}/s"
        return Text(shown, style="progress.data.speed")


class TimeLeftColumn(ProgressColumn):
    """``H:MM:SS left`` where the total is known and a rate was measured; blank otherwise
    (a read's total is unknown until it ends)."""

    def render(self, task: Task) -> Text:
        if task.total is None or task.finished:
            return Text("")
        left = task.time_remaining
        if left is None:
            return Text("")
        return Text(f"{timedelta(seconds=int(left))} left", style="progress.remaining")


class Bars:
    """A ``ProgressFn`` drawing the steps it is told of on ``console``."""

    def __init__(self, console: Console, get_time: Callable[[], float] | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            CountColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TimeLeftColumn(),
            console=console,
            transient=True,
            get_time=get_time,
        )
        self.current: tuple[str, TaskID] | None = None
        """The step under way and its bar, the only one in ``progress``."""
        self.started: dict[str, float] = {}
        """When each step's bar was first made, for a step that goes on where it stopped."""

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if self.current is not None and self.current[0] == what and done:
            self.progress.update(self.current[1], completed=done, total=total)
            return
        # a step starts (perhaps again: the same step in the next pipeline): a new bar, in
        # place of the last one
        if self.current is not None:
            self.progress.remove_task(self.current[1])
        task = self.progress.add_task(what, total=total, completed=done)
        self.current = (what, task)
        (shown,) = self.progress.tasks
        if done and what in self.started:  # goes on where it stopped: its clock goes on
            shown.start_time = self.started[what]
        elif shown.start_time is not None:
            self.started[what] = shown.start_time


@contextmanager
def progress_bars(console: Console, enabled: bool) -> Iterator[ProgressFn | None]:
    """A ``ProgressFn`` drawing bars on ``console`` for the ``with`` block (None when not
    ``enabled``: nothing is drawn)."""
    if not enabled:
        yield None
        return
    bars = Bars(console)
    with bars.progress:
        yield bars
