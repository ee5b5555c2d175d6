"""Slices: a first sync of a large entity applied a slice of records at a time.

A first sync plans a hub record for every record a member holds. Planned whole and then
applied, the plan of 100 000 customers (each record's base, its writes and its links) stays in
memory beside the records read until the last one is written. Instead, ``Engine._plan_keys``
hands each slice of planned records to ``Slices.apply`` once it is large enough. The slice is
journalled, written, flushed and committed as a whole entity's plan is (``EntityApply``), then
compacted to its counts and first details (``EntityPlan.compact``), and the records read for
it are let go of, before the next record is planned. The records read stay whole until their
slice (matching needs them all), and the largest slice is about a fifth of the entity: the
plan held at once is that fifth, not the whole.

Only a first sync is applied so (``Engine.may_slice``):

- every decision that compares records with each other (copies, matching, duplicates) is made
  over the whole read before planning starts, as in any run;
- the hub holds none of the entity's records, so nothing can be deleted: no guard that weighs
  the whole plan can stop the entity after a slice is written, and no delete waits for the
  entities referring to it.

A member whose flush writes more than the entity (a workbook saves every sheet) is flushed
once: the entity is then applied whole, as before (``Connector.flushes_alone``). Slices grow
with what is applied (a quarter of it, and at least ``FIRST_SLICE`` records, ``GROWTH``), so
that a member that rewrites its file at each flush writes each record about five times in all,
not once a slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from syncengine.apply import EntityApply
from syncengine.collector import COLLECTOR
from syncengine.config import Pipeline
from syncengine.marks import drop_exact_marks
from syncengine.member import Member
from syncengine.plan import EntityPlan
from syncengine.result import EntityOutcome, SyncResult

if TYPE_CHECKING:
    from syncengine.engine import Engine

FIRST_SLICE = 5_000
"""Records planned before the first slice is applied; an entity with fewer is applied whole."""

GROWTH = 4
"""A slice after the first is a ``1/GROWTH`` of the records applied before it: the largest
is about a fifth of the entity (its plan is what a first sync holds at the end), and a member
that rewrites its file at each flush writes each record about five times in all."""


class Slices:
    """One entity's first sync, applied slice by slice as it is planned."""

    def __init__(
        self,
        engine: Engine,
        pipeline: Pipeline,
        members: Sequence[Member],
        run_id: str,
        result: SyncResult,
    ) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.members = list(members)
        self.run_id = run_id
        self.result = result
        self.outcome: EntityOutcome | None = None
        """What the slices applied did (None until the first slice): the entity's outcome,
        in ``result`` from the first slice on, so that a run stopped or failing between
        slices reports what it wrote."""
        self.stale: set[str] = set()
        """Members whose exact read mark is dropped before the first slice is written."""
        self.total = 0
        """Records the entity plans (the progress bar's end)."""
        self.records = 0
        """Records applied so far."""
        self.applied = 0
        """Slices applied so far."""
        self.next = FIRST_SLICE

    def possible(self) -> bool:
        """Whether the members can take the entity in slices: a real run, and every member
        that buffers its writes flushes this entity alone."""
        return not self.engine.dry_run and all(
            m.connector.flushes_alone(m.mapping.entity.name) for m in self.members if m.buffered
        )

    def due(self, ent: EntityPlan) -> bool:
        """Whether enough records are planned since the last slice to apply them now, or a
        stop was requested (asked after every record: counted, not listed). Stopped, the
        slice writes nothing more and the run ends, with what earlier slices wrote."""
        stop = self.engine.stop
        kept = ent.compacted.kept if ent.compacted is not None else 0
        return len(ent.keys) - kept >= self.next or (stop is not None and stop.is_set())

    def apply(self, ent: EntityPlan, *, last: bool = False) -> None:
        """Apply the records planned since the last slice (journal, write, flush, commit),
        then compact them. A stop request is honoured here, between slices: what was applied
        is committed, and the run ends as a stopped one. The ``last`` slice knows the
        entity's writes exactly: the progress bar ends at its total, not short of the records
        planned that needed no write."""
        engine = self.engine
        if self.outcome is None:
            drop_exact_marks(engine.store, self.pipeline.name, ent.entity, self.stale)
            self.outcome = EntityOutcome(ent)
            self.result.plan.entities.append(ent)
            self.result.outcomes.append(self.outcome)
        keys = len(ent.after_compaction())
        if last:
            self.total = self.records + keys
        applier = EntityApply(
            engine.store,
            self.pipeline,
            self.members,
            self.outcome,
            self.run_id,
            engine.progress,
            before=self.records,
            total=max(self.total, self.records + keys),
        )
        finished = applier.run(engine.stop)
        if not finished:
            engine.check_stop()  # what the slice did not write stays out of the counts too
        self.records += keys
        self.applied += 1
        self.next = max(FIRST_SLICE, self.records // GROWTH)
        ent.compact(slice_applied=True)
        COLLECTOR.settle()
