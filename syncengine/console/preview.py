"""A dry run's plan as rows for the Preview page: one row per record, member and field
(before → after), filtered and paged. Pure: it reads a ``SyncResult`` and returns values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncengine import model
from syncengine.plan import AGREED, RETOLD, Create, Delete, EntityPlan, Update
from syncengine.render import show_value
from syncengine.result import SyncResult

__all__ = ["PAGE_SIZE", "PreviewRow", "Summary", "filter_rows", "plan_rows", "summary"]

PAGE_SIZE = 100
"""Rows per page of the Preview."""


@dataclass(frozen=True)
class PreviewRow:
    """One change the plan makes: ``op`` (create, update, link, delete, conflict, skip) on
    ``member`` for one ``field`` (empty for a whole-record op) of a record."""

    entity: str
    key: str
    record: str
    member: str
    op: str
    field: str = ""
    before: str = ""
    after: str = ""
    note: str = ""


@dataclass(frozen=True)
class Summary:
    """Per entity and member: read, and the writes planned."""

    entity: str
    member: str
    read: int
    create: int
    update: int
    link: int
    delete: int


def _shown(ep: EntityPlan, name: str, value: Any) -> str:
    """A value as the CLI's dry run shows it (references by their record's name)."""
    refs = model.ENTITIES[ep.entity].refs if ep.entity in model.ENTITIES else {}
    if name in refs and isinstance(value, str):
        value = ep.ref_labels.get(value, value)
    return show_value(value, ep.entity, name)


def plan_rows(result: SyncResult) -> list[PreviewRow]:
    """Every change of the plan, record by record, field by field, in the order of the
    CLI's ``sync --dry-run --details``."""
    rows: list[PreviewRow] = []
    for outcome in result.outcomes:
        ep = outcome.plan
        for kp in ep.keys:
            base = dict(entity=ep.entity, key=kp.key, record=kp.label)
            for action in kp.actions:
                if isinstance(action, Create):
                    for name, value in sorted(action.values.items()):
                        rows.append(
                            PreviewRow(
                                **base,
                                member=action.member,
                                op="create",
                                field=name,
                                before="(none)",
                                after=_shown(ep, name, value),
                            )
                        )
                elif isinstance(action, Update) and action.link_only:
                    rows.append(
                        PreviewRow(
                            **base, member=action.member, op="link", note="write its Sync ID"
                        )
                    )
                elif isinstance(action, Update):
                    for name, (old, new) in sorted(action.changes.items()):
                        rows.append(
                            PreviewRow(
                                **base,
                                member=action.member,
                                op="update",
                                field=name,
                                before=_shown(ep, name, old),
                                after=_shown(ep, name, new),
                            )
                        )
                elif isinstance(action, Delete):
                    rows.append(PreviewRow(**base, member=action.member, op="delete"))
            for c in kp.conflicts:
                values = ", ".join(f"{m}={_shown(ep, c.field, v)}" for m, v in c.values.items())
                if c.rule == AGREED:
                    decided = "closed: the members agree now"
                elif c.winner:
                    decided = f"{c.winner} wins (rule: {c.rule})"
                else:
                    again = ", changed again while open" if c.rule == RETOLD else ""
                    decided = f"parked for a person{again}"
                rows.append(
                    PreviewRow(
                        **base,
                        member=", ".join(c.values),
                        op="conflict",
                        field=c.field,
                        before=_shown(ep, c.field, c.base_value),
                        after=values,
                        note=decided,
                    )
                )
            for s in kp.reported_skips:
                rows.append(PreviewRow(**base, member=s.member, op="skip", note=s.reason))
    return rows


def summary(result: SyncResult) -> list[Summary]:
    """The summary table of the dry run (the CLI's ``what P would do``)."""
    out = []
    for outcome in result.outcomes:
        counts = outcome.counts(dry_run=result.dry_run)
        for member in outcome.plan.members:
            c = counts[member]
            link = int(c.get("link", 0))
            out.append(
                Summary(
                    outcome.plan.entity,
                    member,
                    int(counts["read"].get(member, 0)),
                    int(c.get("create", 0)),
                    int(c.get("update", 0)) - link,
                    link,
                    int(c.get("delete", 0)),
                )
            )
    return out


def filter_rows(
    rows: Sequence[PreviewRow], *, entity: str = "", member: str = "", op: str = ""
) -> list[PreviewRow]:
    """The rows of ``entity``, ``member`` and ``op`` (an empty filter takes every row; a
    conflict row matches each member it names)."""
    return [
        r
        for r in rows
        if (not entity or r.entity == entity)
        and (not member or member in r.member.split(", "))
        and (not op or r.op == op)
    ]


def changes_json(result: SyncResult) -> list[dict[str, Any]]:
    """The plan's writes as JSON for ``sync --dry-run --json`` (``changes``): per record and
    member, the op and each field's canonical value before and after (None: none). The
    console's Preview shows the same changes, values as people read them."""
    out: list[dict[str, Any]] = []
    for outcome in result.outcomes:
        ep = outcome.plan
        for kp in ep.keys:
            for action in kp.actions:
                fields: dict[str, dict[str, Any]] = {}
                op = action.op
                if isinstance(action, Create):
                    fields = {n: {"before": None, "after": v} for n, v in action.values.items()}
                elif isinstance(action, Update) and action.link_only:
                    op = "link"
                elif isinstance(action, Update):
                    fields = {n: {"before": o, "after": v} for n, (o, v) in action.changes.items()}
                out.append(
                    {
                        "entity": ep.entity,
                        "key": kp.key,
                        "record": kp.label,
                        "member": action.member,
                        "op": op,
                        "fields": dict(sorted(fields.items())),
                    }
                )
    return out
