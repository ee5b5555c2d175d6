"""The command line's progress bar (``syncengine.bars``): one bar, the step under way, with
its own clock; a step that goes on where it stopped (a first sync's slices, with each
slice's writing and committing between) keeps its clock and its rate over the whole step."""

from __future__ import annotations

import io

from rich.console import Console

from syncengine.bars import Bars


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _bars() -> tuple[Bars, Clock]:
    clock = Clock()
    return Bars(Console(file=io.StringIO(), width=120), get_time=clock), clock


def test_a_step_that_goes_on_where_it_stopped_keeps_its_clock() -> None:
    bars, clock = _bars()
    bars("applying customers", 0, 10_000)  # the first slice
    clock.now = 110.0
    bars("applying customers", 5_000, 10_000)
    bars("writing books customers", 0, 5_000)  # the slice is saved and committed
    clock.now = 112.0
    bars("writing books customers", 5_000, 5_000)
    bars("committing customers", 0, 5_000)
    clock.now = 113.0
    bars("applying customers", 5_000, 10_000)  # the next slice goes on from there
    (task,) = bars.progress.tasks
    assert task.description == "applying customers" and task.completed == 5_000
    assert task.elapsed == 13.0  # since the step started, not since this slice did
    clock.now = 120.0
    bars("applying customers", 10_000, 10_000)
    (task,) = bars.progress.tasks
    assert task.finished and task.finished_time == 20.0  # 500 records a second overall


def test_a_step_that_starts_again_from_nothing_starts_a_new_clock() -> None:
    bars, clock = _bars()
    bars("reading hcp customers", 0, None)
    clock.now = 130.0
    bars("reading hcp customers", 200, None)
    bars("applying customers", 0, 200)
    clock.now = 140.0
    bars("reading hcp customers", 0, None)  # the same step in the next pipeline
    (task,) = bars.progress.tasks
    assert task.description == "reading hcp customers" and task.elapsed == 0.0
