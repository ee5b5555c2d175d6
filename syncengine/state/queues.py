"""What the engine parks for a person (SQL for the state store): the review queue, the held
deletes and the audit log of what people did about them (migration 0007).

- **Review items**: a record new on a member that matches several hub records, or looks like
  a copy of another, is one row per (pipeline, entity, member, native id). A run that finds
  it again refreshes it; a person's decision (``linked`` to a hub key, or ``separate``) is
  kept for good and acted on by the next runs; a record that is gone or no longer ambiguous
  closes its item.
- **Held deletes**: one row per record and deleting member while it waits for approval; a
  guard's stopped batch is held the same way, with the guard's explanation.
- **Audit**: one row per action, with who, what, when, before and after.

These functions take an open connection (``StateStore.query``, ``Tx.run``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from syncengine.errors import UsageError
from syncengine.state.schema import audit, held_deletes, review_items

__all__ = [
    "AlreadyDecided",
    "AuditRow",
    "HeldRow",
    "ReviewRow",
    "add_audit",
    "approved_keys",
    "audit_rows",
    "clear_guarded",
    "close_review",
    "decide_review",
    "decided_text",
    "finish_approved",
    "held_counts",
    "held_rows",
    "hold_delete",
    "review_counts",
    "review_rows",
    "set_held",
    "upsert_review",
]


Held = tuple[str, str, bool]
"""(entity, status, guarded) of a pipeline's held deletes (``holdings``)."""

CHUNK = 500
"""Keys per statement where a statement names many (SQLite caps its parameters)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _chunked(items: Sequence[str]) -> Iterable[Sequence[str]]:
    return (items[i : i + CHUNK] for i in range(0, len(items), CHUNK))


@dataclass(frozen=True)
class ReviewRow:
    id: int
    pipeline: str
    entity: str
    member: str
    native_id: str
    native_hash: str | None
    provisional: bool
    location: str | None
    label: str
    fields: dict[str, Any]
    reason: str
    candidates: list[str]
    status: str
    hub_key: str | None
    decided_by: str | None
    decided_at: datetime | None
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class HeldRow:
    id: int
    pipeline: str
    entity: str
    key: str
    member: str
    reach: list[str]
    label: str
    guard: str | None
    status: str
    held_at: datetime
    decided_by: str | None
    decided_at: datetime | None


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    pipeline: str | None
    before: Any
    after: Any


class AlreadyDecided(UsageError):
    """A person decided on a review item or held delete that is no longer open or held
    (another decision came first): nothing was changed."""


def decided_text(row: ReviewRow | HeldRow) -> str:
    """What became of an item or held delete no longer waiting for a decision: "was
    already approved by ann at ...", "was already linked to K by ann at ..."."""
    what = f"review item {row.id}" if isinstance(row, ReviewRow) else f"held delete {row.id}"
    by = f" by {row.decided_by}" if row.decided_by else ""
    at = f" at {row.decided_at.isoformat(timespec='seconds')}" if row.decided_at else ""
    if row.status == "linked" and isinstance(row, ReviewRow):
        return f"{what} was already linked to {row.hub_key}{by}{at}"
    if row.status in ("approved", "restored", "separate"):
        kept = "kept separate" if row.status == "separate" else row.status
        return f"{what} was already {kept}{by}{at}"
    if row.status == "done":
        return f"{what} was already approved{by}{at} and the delete carried out"
    if row.status == "cleared":
        return f"{what} is no longer held: the record is back, or its guard's batch cleared"
    if row.status == "closed":
        return f"{what} is closed: its record is gone or no longer ambiguous"
    return f"{what} is {row.status}"


def _review(row: sa.Row[Any]) -> ReviewRow:
    m = row._mapping
    return ReviewRow(**{c.name: m[c.name] for c in review_items.columns})


def _held(row: sa.Row[Any]) -> HeldRow:
    m = row._mapping
    return HeldRow(**{c.name: m[c.name] for c in held_deletes.columns})


# -- review queue --------------------------------------------------------------------------


def upsert_review(
    conn: sa.Connection,
    *,
    pipeline: str,
    entity: str,
    member: str,
    native_id: str,
    native_hash: str | None,
    provisional: bool,
    location: str | None,
    label: str,
    fields: Mapping[str, Any],
    reason: str,
    candidates: Sequence[str],
) -> int:
    """Open (or refresh) the item of one ambiguous record: a new item, a closed one opened
    again, or an open one given this run's values. A decided item passed here is opened
    again: its decision did not apply (the caller says why in ``reason``). Its id."""
    now = _now()
    values: dict[str, Any] = {
        "native_hash": native_hash,
        "provisional": provisional,
        "location": location,
        "label": label,
        "fields": dict(fields),
        "reason": reason,
        "candidates": list(candidates),
        "last_seen": now,
    }
    where = (
        (review_items.c.pipeline == pipeline)
        & (review_items.c.entity == entity)
        & (review_items.c.member == member)
        & (review_items.c.native_id == native_id)
    )
    found = conn.execute(sa.select(review_items.c.id, review_items.c.status).where(where)).first()
    if found is None:
        inserted = conn.execute(
            review_items.insert()
            .values(
                pipeline=pipeline,
                entity=entity,
                member=member,
                native_id=native_id,
                status="open",
                first_seen=now,
                **values,
            )
            .returning(review_items.c.id)
        ).scalar_one()
        return int(inserted)
    if found.status != "open":
        values.update(status="open", hub_key=None, decided_by=None, decided_at=None)
        if found.status == "closed":
            values["first_seen"] = now
    conn.execute(review_items.update().where(review_items.c.id == found.id).values(**values))
    return int(found.id)


def close_review(
    conn: sa.Connection,
    pipeline: str,
    entity: str,
    members: Collection[str],
    still_open: Collection[int],
) -> int:
    """Close the open items of ``members`` (whose reads were complete) that this run did not
    find ambiguous again (``still_open``: the ids it refreshed): their record is gone, linked
    by hand elsewhere, or no longer matches several. How many it closed."""
    if not members:
        return 0
    query = (
        review_items.update()
        .where(
            review_items.c.pipeline == pipeline,
            review_items.c.entity == entity,
            review_items.c.member.in_(sorted(members)),
            review_items.c.status == "open",
        )
        .values(status="closed", last_seen=_now())
    )
    if still_open:
        query = query.where(review_items.c.id.not_in(sorted(still_open)))
    return int(conn.execute(query).rowcount or 0)


def review_rows(
    conn: sa.Connection,
    pipeline: str | None = None,
    status: str | None = "open",
    entity: str | None = None,
    ids: Iterable[int] | None = None,
) -> list[ReviewRow]:
    """The review items (of one pipeline, entity, status, or ids), oldest first."""
    query = sa.select(review_items).order_by(review_items.c.id)
    if pipeline is not None:
        query = query.where(review_items.c.pipeline == pipeline)
    if entity is not None:
        query = query.where(review_items.c.entity == entity)
    if status is not None:
        query = query.where(review_items.c.status == status)
    if ids is not None:
        query = query.where(review_items.c.id.in_(sorted(set(ids))))
    return [_review(r) for r in conn.execute(query)]


def decide_review(
    conn: sa.Connection, item_id: int, status: str, hub_key: str | None, actor: str
) -> None:
    """Record a person's decision on an item: ``linked`` (to ``hub_key``) or ``separate``.
    Only an open item is decided (one conditional update): an item another decision came
    first to raises `AlreadyDecided` saying what became of it."""
    done = conn.execute(
        review_items.update()
        .where(review_items.c.id == item_id, review_items.c.status == "open")
        .values(status=status, hub_key=hub_key, decided_by=actor, decided_at=_now())
    ).rowcount
    if not done:
        rows = review_rows(conn, status=None, ids=[item_id])
        if not rows:
            raise AlreadyDecided(f"no review item with id {item_id}; nothing was changed")
        raise AlreadyDecided(f"{decided_text(rows[0])}; nothing was changed")


def review_counts(conn: sa.Connection) -> dict[str, int]:
    """pipeline -> its open review items."""
    query = (
        sa.select(review_items.c.pipeline, sa.func.count())
        .where(review_items.c.status == "open")
        .group_by(review_items.c.pipeline)
    )
    return {str(p): int(n) for p, n in conn.execute(query)}


# -- held deletes --------------------------------------------------------------------------


def hold_delete(
    conn: sa.Connection,
    *,
    pipeline: str,
    entity: str,
    key: str,
    member: str,
    reach: Sequence[str],
    label: str,
    guard: str | None = None,
) -> int:
    """Hold one record's delete by ``member`` (or refresh the row already holding it). Its
    id."""
    where = (
        (held_deletes.c.pipeline == pipeline)
        & (held_deletes.c.entity == entity)
        & (held_deletes.c.key == key)
        & (held_deletes.c.member == member)
        & (held_deletes.c.status == "held")
    )
    found = conn.execute(sa.select(held_deletes.c.id).where(where)).scalar()
    values = {"reach": sorted(reach), "label": label, "guard": guard}
    if found is not None:
        conn.execute(held_deletes.update().where(held_deletes.c.id == found).values(**values))
        return int(found)
    inserted = conn.execute(
        held_deletes.insert()
        .values(
            pipeline=pipeline,
            entity=entity,
            key=key,
            member=member,
            status="held",
            held_at=_now(),
            **values,
        )
        .returning(held_deletes.c.id)
    ).scalar_one()
    return int(inserted)


def held_rows(
    conn: sa.Connection,
    pipeline: str | None = None,
    status: str | None = "held",
    ids: Iterable[int] | None = None,
    entity: str | None = None,
    guarded: bool | None = None,
) -> list[HeldRow]:
    """The held deletes (of one pipeline, entity, status, ids; only a guard's or only the
    others), oldest first."""
    query = sa.select(held_deletes).order_by(held_deletes.c.id)
    if pipeline is not None:
        query = query.where(held_deletes.c.pipeline == pipeline)
    if entity is not None:
        query = query.where(held_deletes.c.entity == entity)
    if status is not None:
        query = query.where(held_deletes.c.status == status)
    if ids is not None:
        query = query.where(held_deletes.c.id.in_(sorted(set(ids))))
    if guarded is not None:
        column = held_deletes.c.guard
        query = query.where(column.is_not(None) if guarded else column.is_(None))
    return [_held(r) for r in conn.execute(query)]


def set_held(
    conn: sa.Connection,
    ids: Collection[int],
    status: str,
    actor: str,
    all_or_nothing: bool = True,
) -> list[int]:
    """Record a decision on held deletes: ``approved`` or ``restored`` (a person's), or
    ``cleared``. Only a delete still held is decided (one conditional update): when one of
    ``ids`` is no longer held (another decision came first), ``all_or_nothing`` raises
    `AlreadyDecided` saying what became of it (the caller's transaction rolls back);
    otherwise the others are decided. The ids decided."""
    if not ids:
        return []
    wanted = sorted(set(ids))
    done = conn.execute(
        held_deletes.update()
        .where(held_deletes.c.id.in_(wanted), held_deletes.c.status == "held")
        .values(status=status, decided_by=actor, decided_at=_now())
        .returning(held_deletes.c.id)
    ).scalars()
    decided = sorted(int(i) for i in done)
    if all_or_nothing and decided != wanted:
        others = held_rows(conn, status=None, ids=set(wanted) - set(decided))
        found = {r.id for r in others}
        lines = [decided_text(r) for r in others]
        lines += [
            f"no held delete with id {i}" for i in wanted if i not in found and i not in decided
        ]
        raise AlreadyDecided(f"{'; '.join(lines)}; nothing was changed")
    return decided


def approved_keys(conn: sa.Connection, pipeline: str, entity: str) -> set[str]:
    """The keys whose delete a person approved and no run carried out yet: the delete
    guards let them through."""
    query = sa.select(held_deletes.c.key).where(
        held_deletes.c.pipeline == pipeline,
        held_deletes.c.entity == entity,
        held_deletes.c.status == "approved",
    )
    return {str(k) for k in conn.execute(query).scalars()}


def finish_approved(conn: sa.Connection, pipeline: str, entity: str, keys: Collection[str]) -> None:
    """A run applied the entity: the approved deletes of ``keys`` (those its planning saw
    approved, and so let through) are done. One a person approved after that stays approved
    for the next run."""
    for chunk in _chunked(sorted(keys)):
        conn.execute(
            held_deletes.update()
            .where(
                held_deletes.c.pipeline == pipeline,
                held_deletes.c.entity == entity,
                held_deletes.c.status == "approved",
                held_deletes.c.key.in_(chunk),
            )
            .values(status="done")
        )


def _one_of(column: sa.Column[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
    """``column IN (values)`` with the values written into the SQL (no parameters of their
    own: the statement goes to the driver as it is, ``StateStore._select``)."""
    return column.in_([sa.literal_column(f"'{v}'") for v in values])


REVIEW_HOLDINGS = (
    sa.select(review_items.c.entity, review_items.c.status)
    .where(
        _one_of(review_items.c.status, ("open", "linked", "separate")),
        review_items.c.pipeline == sa.bindparam("pipeline"),
    )
    .distinct()
)
"""The (entity, status) of a pipeline's review items that a run acts on or a person may
still decide (``StateStore.queue_holdings``): closed ones, which pile up, are not read."""
HELD_HOLDINGS = (
    sa.select(
        held_deletes.c.entity,
        held_deletes.c.status,
        sa.func.count(),
        sa.func.count(held_deletes.c.guard),
    )
    .where(
        _one_of(held_deletes.c.status, ("held", "approved")),
        held_deletes.c.pipeline == sa.bindparam("pipeline"),
    )
    .group_by(held_deletes.c.entity, held_deletes.c.status)
)
"""Per entity, of a pipeline's deletes held or approved (not those done, cleared or
restored, which pile up): how many, and how many a guard held."""


def clear_guarded(
    conn: sa.Connection, pipeline: str, entity: str, keep: Collection[str] = ()
) -> None:
    """A guard's held batch that no longer stands (the guard did not trip again, or tripped
    on other records) is cleared, but for the keys in ``keep``."""
    query = held_deletes.update().where(
        held_deletes.c.pipeline == pipeline,
        held_deletes.c.entity == entity,
        held_deletes.c.status == "held",
        held_deletes.c.guard.is_not(None),
    )
    if keep:
        query = query.where(held_deletes.c.key.not_in(sorted(keep)))
    conn.execute(query.values(status="cleared", decided_at=_now()))


def held_counts(conn: sa.Connection) -> dict[str, int]:
    """pipeline -> its deletes awaiting approval."""
    query = (
        sa.select(held_deletes.c.pipeline, sa.func.count())
        .where(held_deletes.c.status == "held")
        .group_by(held_deletes.c.pipeline)
    )
    return {str(p): int(n) for p, n in conn.execute(query)}


# -- audit ---------------------------------------------------------------------------------


def add_audit(
    conn: sa.Connection,
    *,
    actor: str,
    action: str,
    target: str,
    pipeline: str | None,
    before: Any,
    after: Any,
) -> int:
    """Record one action. Its id."""
    inserted = conn.execute(
        audit.insert()
        .values(
            at=_now(),
            actor=actor,
            action=action,
            target=target,
            pipeline=pipeline,
            before=before,
            after=after,
        )
        .returning(audit.c.id)
    ).scalar_one()
    return int(inserted)


def audit_rows(conn: sa.Connection, limit: int = 100, offset: int = 0) -> list[AuditRow]:
    """The audit log, newest first."""
    query = sa.select(audit).order_by(audit.c.id.desc()).limit(limit).offset(offset)
    return [
        AuditRow(**{c.name: r._mapping[c.name] for c in audit.columns}) for r in conn.execute(query)
    ]
