"""What the console's pages show, as plain values built from ``syncengine.api`` (no HTTP
here): one function per page, and the settling of a conflict from a form."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from syncengine import api, model
from syncengine.config import Config
from syncengine.display import entity_changes, format_cents, local_time
from syncengine.errors import StateError, StateUnavailableError, UsageError
from syncengine.render import show_value
from syncengine.state import ConflictRow

__all__ = [
    "audit",
    "conflicts",
    "overview",
    "reconcile",
    "resolve",
    "runs",
    "skipped",
    "when",
]


def when(value: dt.datetime | str | None) -> str:
    """A time for the pages: local, to the minute, with how long ago."""
    return local_time(value)


def audit(
    config: Config,
    actor: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    pipeline: str | None = None,
) -> None:
    """Record one console action in the audit log (who, what, when, on what, before and
    after); the API records its own actions (review, deletes) itself."""
    api.record_audit(config, actor, action, target, before, after, pipeline)


def review(config: Config) -> list[api.ReviewItem]:
    """The open review items: ambiguous matches and possible duplicates."""
    return api.list_review(config) if _open_store_safely(config) else []


def held_deletes(config: Config) -> list[api.HeldDelete]:
    """The deletes awaiting approval."""
    return api.list_held_deletes(config) if _open_store_safely(config) else []


def audit_entries(config: Config, page: int = 1, size: int = 100) -> list[api.AuditEntry]:
    """One page of the audit log, newest first."""
    if not _open_store_safely(config):
        return []
    return api.list_audit(config, limit=size, offset=(page - 1) * size)


@dataclass
class PipelineRow:
    """One pipeline on the Overview."""

    name: str
    members: str
    last_run: str
    outcome: str
    next_run: str
    state: str
    """running, paused, backing off or idle, with why."""
    paused: bool
    conflicts: int
    review: int
    held_deletes: int
    skipped: int
    waiting_events: int
    problems: list[str] = field(default_factory=list)


def _open_store_safely(config: Config) -> bool:
    """Whether the state store exists (a console on a config never synced shows empty
    pages, not an error)."""
    try:
        api.open_store(config, create=False).close()
    except StateUnavailableError:
        raise  # there, but it cannot be reached: the page says so (``create_app``)
    except StateError:
        return False
    return True


def overview(config: Config) -> list[PipelineRow]:
    """Every pipeline: last and next run, outcome, paused or backing off, and what waits
    for a person (conflicts, review items, held deletes, skipped writes)."""
    if not _open_store_safely(config):
        return [
            PipelineRow(
                p.name,
                ", ".join(p.members),
                "never",
                "-",
                "-",
                "never synced",
                False,
                0,
                0,
                0,
                0,
                0,
            )
            for p in config.pipelines.values()
        ]
    rows = []
    for s in api.status(config):
        last = s.last_run
        state = "idle"
        if s.lease is not None:
            state = f"running: {s.lease['by']}"
        if s.paused is not None:
            state = f"paused: {s.paused.get('reason') or ''}".rstrip(": ")
        elif s.backoff is not None:
            until = s.backoff.get("until")
            state = (
                f"backing off after {s.backoff['failures']} failed run(s)"
                + (f" until {when(until)}" if until else "")
                + (f": {s.backoff['last_error']}" if s.backoff.get("last_error") else "")
            )
        rows.append(
            PipelineRow(
                name=s.name,
                members=", ".join(s.members),
                last_run=when(last["started_at"]) if last else "never",
                outcome=last["outcome"] if last else "-",
                next_run=when(s.next_run) if s.next_run else "- (paused)",
                state=state,
                paused=s.paused is not None,
                conflicts=s.open_conflicts,
                review=s.open_review,
                held_deletes=s.held_deletes,
                skipped=s.skipped_total,
                waiting_events=s.waiting_events,
                problems=[str(e) for e in (last or {}).get("errors", [])][:3],
            )
        )
    return rows


@dataclass
class RunView:
    """One run of the history with its counts per entity and member, and its problems."""

    id: int
    pipeline: str
    dry_run: bool
    started: str
    seconds: float | None
    outcome: str
    entities: list[dict[str, Any]]
    problems: list[dict[str, str]]


def runs(config: Config, pipeline: str | None, limit: int = 50) -> list[RunView]:
    """The run history, newest first: per entity a row per member (read, created, updated,
    linked, deleted), the entity's tallies, and the record-level problems."""
    if not _open_store_safely(config):
        return []
    out = []
    for r in api.runs(config, pipeline, limit=limit):
        entities = []
        counts = r["counts"] if isinstance(r["counts"], dict) else {}
        for entity, c in counts.items():
            if not isinstance(c, dict):
                continue
            members = []
            read = c.get("read", {}) if isinstance(c.get("read"), dict) else {}
            for member, m in c.items():
                if isinstance(m, dict) and "create" in m:
                    link = int(m.get("link", 0) or 0)
                    members.append(
                        {
                            "member": member,
                            "read": read.get(member, 0),
                            "create": m.get("create", 0),
                            "update": int(m.get("update", 0) or 0) - link,
                            "link": link,
                            "delete": m.get("delete", 0),
                        }
                    )
            entities.append(
                {
                    "entity": entity,
                    "members": members,
                    "tallies": entity_changes(
                        {k: v for k, v in c.items() if not isinstance(v, dict)}
                    ),
                }
            )
        problems = []
        for e in r["errors"]:
            if isinstance(e, dict):
                problems.append({k: str(v) for k, v in e.items()})
            else:
                problems.append({"message": str(e)})
        out.append(
            RunView(
                r["id"],
                r["pipeline"],
                r["dry_run"],
                when(r["started_at"]),
                r["seconds"],
                r["outcome"],
                entities,
                problems,
            )
        )
    return out


@dataclass
class ConflictView:
    """A parked conflict: each member's value, the base, and when it was found."""

    id: int
    pipeline: str
    entity: str
    record: str
    field: str
    values: list[tuple[str, str, str]]
    """(member, its value, when its record last changed there as last read, or "-")"""
    base: str
    found: str
    typed_hint: str


def _show(row: ConflictRow, value: Any, names: dict[str, str]) -> str:
    if isinstance(value, str) and value in names:
        return f"{names[value]}"
    return show_value(value, row.entity, row.field)


def conflicts(config: Config) -> list[ConflictView]:
    """The open conflicts of every pipeline, each value as people read it."""
    if not _open_store_safely(config):
        return []
    out = []
    found = api.open_conflicts(config)
    changed = _changed_at(config, [c.row for c in found])
    for c in found:
        row = c.row
        spec = (
            model.ENTITIES[row.entity].field_spec(row.field)
            if row.entity in model.ENTITIES
            else None
        )
        hint = {
            "cents": "an amount, e.g. 12.50",
            "datetime": "a date and time, e.g. 2026-12-04T09:30:00+00:00",
            "tags": "comma-separated",
            "bool": "yes or no",
            "int": "a whole number",
        }.get(spec.type if spec else "", "the value as text")
        out.append(
            ConflictView(
                row.id,
                row.pipeline,
                row.entity,
                c.record,
                row.field,
                [
                    (m, _show(row, v, c.names), changed.get((row.id, m), "-"))
                    for m, v in row.values.items()
                ],
                _show(row, row.base_value, c.names),
                when(row.created_at),
                hint,
            )
        )
    return out


def _changed_at(config: Config, rows: list[ConflictRow]) -> dict[tuple[int, str], str]:
    """(conflict id, member) -> when the member's record last changed, as the member said
    (its ``updated_at`` when last read), for the members that keep one."""
    out: dict[tuple[int, str], str] = {}
    store = api.open_store(config, create=False)
    try:
        wanted: dict[tuple[str, str], set[str]] = {}
        for row in rows:
            wanted.setdefault((row.pipeline, row.entity), set()).add(row.key)
        states = {
            (p, e, key): state
            for (p, e), keys in wanted.items()
            for key, state in store.load_records(p, e, sorted(keys)).items()
        }
    finally:
        store.close()
    for row in rows:
        state = states.get((row.pipeline, row.entity, row.key))
        if state is None:
            continue
        for member in row.values:
            link = state.links.get(member)
            stamp = (link.last_seen or {}).get("updated_at") if link is not None else None
            if isinstance(stamp, str) and stamp:
                try:
                    out[(row.id, member)] = when(stamp.replace("Z", "+00:00"))
                except ValueError:
                    out[(row.id, member)] = stamp
    return out


def parse_typed(config: Config, conflict_id: int, text: str) -> Any:
    """A value typed in the console for a conflict's field, as the field's type wants it
    (an amount in dollars -> cents; an empty box -> no value). A UsageError says what is
    wrong with it."""
    row = next((c for c in api.list_conflicts(config) if c.id == conflict_id), None)
    if row is None:
        raise UsageError(f"no open conflict with id {conflict_id}")
    text = text.strip()
    if not text:
        return None
    spec = (
        model.ENTITIES[row.entity].field_spec(row.field) if row.entity in model.ENTITIES else None
    )
    kind = spec.type if spec else "str"
    if kind == "cents":
        try:
            cents = Decimal(text.replace("$", "").replace(",", "")) * 100
        except InvalidOperation:
            raise UsageError(f"{row.field}: {text!r} is not an amount (e.g. 12.50)") from None
        if cents != cents.to_integral_value():
            raise UsageError(f"{row.field}: {text!r} has more than two decimals")
        return int(cents)
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{row.field}: {text!r} is not a whole number") from None
    if kind == "bool":
        if text.lower() not in ("true", "false", "yes", "no"):
            raise UsageError(f"{row.field}: type yes or no")
        return text.lower() in ("true", "yes")
    if kind == "tags":
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


def resolve(config: Config, conflict_id: int, take: str, typed: Any) -> tuple[ConflictRow, Any]:
    """Settle a conflict from the console's form: ``take`` a member's value, or ``typed``
    (``take == "typed"``); the conflict and the value settled on."""
    if take == "typed":
        value = parse_typed(config, conflict_id, str(typed or ""))
        row = api.resolve_conflict(config, conflict_id, value=value)
        return row, value
    row = api.resolve_conflict(config, conflict_id, take)
    return row, row.values.get(take)


@dataclass
class SkipView:
    entity: str
    record: str
    member: str
    reason: str
    advice: str
    first_seen: str
    last_seen: str


def skip_advice(reason: str) -> str:
    """What a person can do about a skipped write, from its reason."""
    low = reason.lower()
    if "wait" in low or "not on" in low or "refer" in low:
        return (
            "Nothing, usually: it is written once the record it refers to is on the "
            "member. If it stays, look at that record's own problems."
        )
    if "closed" in low or "lock" in low:
        return (
            "The member's books are closed for that date: book the change in an open "
            "period, or move [pipelines.locks] if the close was wrong."
        )
    return (
        "The member cannot take this change. Make it there by hand, or change the "
        "mapping; it is not tried again until the record changes."
    )


def skipped(config: Config) -> list[tuple[str, int, int, list[SkipView]]]:
    """Per pipeline: skipped writes in all, webhook events waiting, and the newest skips
    with what to do."""
    if not _open_store_safely(config):
        return []
    out = []
    for s in api.status(config):
        views = [
            SkipView(
                k["entity"],
                k["record"],
                k["member"],
                k["reason"],
                skip_advice(k["reason"]),
                when(k["first_seen"]),
                when(k["last_seen"]),
            )
            for k in s.skipped
        ]
        out.append((s.name, s.skipped_total, s.waiting_events, views))
    return out


def reconcile(config: Config) -> list[dict[str, Any]]:
    """Each invoice pipeline's reconciliation, the invoices that disagree first."""
    if not _open_store_safely(config):
        return []
    if not any("invoices" in p.entities for p in config.pipelines.values()):
        return []
    reports = []
    for report in api.reconcile_report(config):
        lines = sorted(
            report.invoices,
            key=lambda x: (not x.problems, not x.after_close, x.invoice_number or x.key),
        )
        invoices = []
        for line in lines:
            cells = []
            for member in report.members:
                if member not in line.amount:
                    cells.append("—")
                    continue
                amount = line.amount.get(member)
                balance = line.balance.get(member)
                cells.append(
                    " / ".join(
                        (
                            format_cents(amount) if isinstance(amount, int) else "(none)",
                            format_cents(line.paid.get(member, 0)),
                            format_cents(balance) if isinstance(balance, int) else "n/a",
                        )
                    )
                )
            invoices.append(
                {
                    "invoice": line.invoice_number or line.key,
                    "cells": cells,
                    "problems": [p.message for p in line.problems],
                    "after_close": [p.message for p in line.after_close],
                }
            )
        reports.append(
            {
                "pipeline": report.pipeline,
                "members": report.members,
                "invoices": invoices,
                "general": [f"{p.kind} {p.member}: {p.message}" for p in report.general],
                "clean": report.clean,
                "bad": sum(1 for x in report.invoices if x.problems) + len(report.general),
            }
        )
    return reports


@dataclass
class ReviewView:
    """A review item with its record and its candidates side by side, field by field."""

    id: int
    pipeline: str
    entity: str
    member: str
    label: str
    location: str
    reason: str
    first_seen: str
    columns: list[tuple[str, str, bool]]
    """(heading, hub key or "" for the item's own record, can be linked to)"""
    rows: list[tuple[str, list[str]]]
    """field -> the value in each column"""


def review_views(config: Config) -> list[ReviewView]:
    """The open review items, each as a table: the new record, then each candidate (its
    agreed values), one row per field any of them has."""
    out = []
    for item in review(config):
        columns = [(f"New on {item.member}: {item.label}", "", False)]
        values: list[dict[str, Any]] = [item.fields]
        for c in item.candidates:
            held = ", ".join(sorted(c.members)) or "no member"
            state = "" if c.exists else " (deleted since)"
            columns.append((f"{c.label}{state} · on {held}", c.hub_key, c.exists))
            values.append(c.base)
        # the fields any of them holds a value for (a field empty everywhere says nothing)
        names = sorted(
            {n for v in values for n, x in v.items() if not n.startswith("_") and x is not None}
        )
        rows = [
            (n, [show_value(v.get(n), item.entity, n) if n in v else "—" for v in values])
            for n in names
        ]
        out.append(
            ReviewView(
                item.id,
                item.pipeline,
                item.entity,
                item.member,
                item.label,
                item.location or item.native_id,
                item.reason,
                when(item.first_seen),
                columns,
                rows,
            )
        )
    return out


@dataclass
class HeldBatch:
    """Held deletes of one pipeline and entity: a batch a delete guard stopped (approved
    as a whole), or deletes held one by one (``[pipelines.deletes] approve``)."""

    pipeline: str
    entity: str
    guard: str | None
    deletes: list[dict[str, Any]]


def held_views(config: Config) -> list[HeldBatch]:
    """The deletes awaiting approval, grouped: each guarded batch, then the deletes held
    one by one per pipeline and entity."""
    batches: dict[tuple[str, str, str | None], HeldBatch] = {}
    for d in held_deletes(config):
        key = (d.pipeline, d.entity, d.guard)
        batch = batches.setdefault(key, HeldBatch(d.pipeline, d.entity, d.guard, []))
        batch.deletes.append(
            {
                "id": d.id,
                "label": d.label,
                "member": d.member,
                "reach": ", ".join(d.reach) or "no other member",
                "held_at": when(d.held_at),
            }
        )
    return sorted(batches.values(), key=lambda b: (b.guard is None, b.pipeline, b.entity))
