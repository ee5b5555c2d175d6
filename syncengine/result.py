"""The result of a sync: per entity, what was planned and what applying it did."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from syncengine.exit_codes import ExitCode
from syncengine.plan import EntityPlan, Issue, Plan

MAX_REPORTED = 200
"""Record-level problems listed per entity in JSON output and run history (all are counted)."""


@dataclass
class EntityOutcome:
    """What applying one entity's plan did."""

    plan: EntityPlan
    applied: dict[str, dict[str, int]] = field(default_factory=dict)
    """member -> op -> how many writes took effect (a failed one is in ``failures``)."""
    linked: dict[str, int] = field(default_factory=dict)
    """member -> how many of its updates in ``applied`` only wrote a Sync ID."""
    failures: list[Issue] = field(default_factory=list)

    def counts(self, *, dry_run: bool) -> dict[str, Any]:
        """The entity's counts for people, JSON and run history: the plan's (``counts`` of
        ``EntityPlan``), with a member's create/update/delete/link the writes planned in a
        dry run and, in a real run, only those that took effect; ``failed`` counts the
        writes that failed (a failed flush fails every write it held: it is reported once
        beside them, without a record's location, and not counted again)."""
        counts = self.plan.counts()
        if not dry_run:
            for member in self.plan.members:
                done = self.applied.get(member, {})
                counts[member] = {
                    "create": done.get("create", 0),
                    "update": done.get("update", 0),
                    "delete": done.get("delete", 0),
                    "link": self.linked.get(member, 0),
                }
        counts["failed"] = sum(1 for f in self.failures if f.location)
        return counts


@dataclass
class SyncResult:
    pipeline: str
    dry_run: bool
    run_id: str
    plan: Plan
    outcomes: list[EntityOutcome] = field(default_factory=list)
    guard: str | None = None
    open_conflicts: int = 0
    pending_recovery: int = 0
    duration_s: float = 0.0
    error: str = ""
    """Set when the run stopped on an exception (a member failed, an interrupt)."""
    stopped: bool = False
    """The run was stopped on request (``error`` says so): what was applied is committed."""
    events: int = 0
    """How many webhook events the run took from the inbox (``syncengine.events``)."""
    event_driven: bool = False
    """The run read only what its events named on the members that sent them."""

    @property
    def failures(self) -> list[Issue]:
        return [f for o in self.outcomes for f in o.failures]

    @property
    def exit_code(self) -> int:
        if self.guard:
            return int(ExitCode.GUARD)
        issues = any(ep.issues for ep in self.plan.entities) or self.failures
        if issues or self.open_conflicts:
            return int(ExitCode.PROBLEMS)
        return int(ExitCode.OK)

    @property
    def outcome(self) -> str:
        """One word for run history: ok, conflicts, errors, guard, stopped or failed."""
        if self.error:
            return "stopped" if self.stopped else "failed"
        if self.guard:
            return "guard"
        if any(ep.issues for ep in self.plan.entities) or self.failures:
            return "errors"
        return "conflicts" if self.open_conflicts else "ok"

    def to_json(self) -> dict[str, Any]:
        entities: dict[str, Any] = {}
        for outcome in self.outcomes:
            counts = outcome.counts(dry_run=self.dry_run)
            counts["problems"] = [
                {"member": i.member, "location": i.location, "message": i.message, "kind": kind}
                for kind, items in (("error", outcome.plan.issues), ("failed", outcome.failures))
                for i in items
            ][:MAX_REPORTED]
            if outcome.plan.notes:
                counts["notes"] = list(outcome.plan.notes)
            if outcome.plan.guard:
                counts["guard"] = outcome.plan.guard
            entities[outcome.plan.entity] = counts
        return {
            "pipeline": self.pipeline,
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "entities": entities,
            "open_conflicts": self.open_conflicts,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
        }
