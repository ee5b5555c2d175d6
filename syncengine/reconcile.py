"""Reconcile: the field-level three-way merge of one hub record, as a pure function.

For every member the engine knows what the member holds now (``current``) and what it held
when last seen (``last_seen``, in the member's own normal form). A field *changed on a member*
when those differ; that is echo suppression: a value we wrote and read back is not a change,
however the member formats it. Changes propagate; several different changes to one field are
a conflict, settled by the ordered rules (member names, ``newest``, ``manual``) or parked.

``reconcile`` reads nothing but its arguments: the reference indexes and the counts of
records referring to a key are built by the engine before planning and passed in as data.
It runs in five phases, one function each:

1. ``_changes``: which fields changed on which member;
2. ``_plan_deletes``: whether the record is deleted, kept for its users, or brought back;
3. ``_merge``: the new base, with conflicts settled or parked;
4. ``_plan_writes``: what each member is written (update, create) or cannot take (skip);
5. ``_hold_closed``: the writes a member's closed period refuses (``syncengine.locks``),
   skipped; nothing else about the record changes.

The result is a ``KeyPlan``: actions per member plus how each link looks afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from syncengine import jsoncodec
from syncengine.connector import Capabilities
from syncengine.display import label_of
from syncengine.errors import RecordError
from syncengine.locks import Lock, Through, refuses
from syncengine.mapping import EntityMapping
from syncengine.model import DELETED, UNSEEN, EntitySpec, Record, unseen_in
from syncengine.plan import (
    AGREED,
    RETOLD,
    Action,
    Conflict,
    Create,
    Delete,
    KeyPlan,
    LinkPlan,
    Skip,
    Update,
)

if TYPE_CHECKING:
    from syncengine.refs import RefIndexes

Status = Literal["unchanged", "changed", "new", "gone", "absent", "tombstone", "blocked"]


@dataclass(kw_only=True, slots=True)
class MemberView:
    """One member's side of one hub record in this run."""

    member: str
    status: Status
    native_id: str | None = None
    current: Record | None = None
    """The canonical record the member holds now (None when it holds none)."""
    last_seen: Record | None = None
    """What the member held when last seen, in its own normal form (None: never seen)."""
    native: dict[str, Any] | bytes | None = None
    """The member's native record (None: not read this run, e.g. unseen by a partial read);
    for a member that reads JSON, its JSON text, decoded by ``native_record`` if needed."""
    native_hash: str | None = None
    provisional: bool = False
    """The member's id for it is provisional (it takes the hub key as its id)."""
    joined: bool = False
    """A record new on the member, matched by its values to a hub record the others hold
    (``Observed.joined``)."""
    relinked: bool = False
    """A record the member dropped and holds again under another id in the same read (a
    Sync ID blanked or mistyped): a member that takes the hub key as its id gets it back."""
    dirty: bool = False
    """A write to this member failed or was not confirmed: check every field."""
    location: str = ""
    missing: frozenset[str] = frozenset()
    """Fields the member does not hold yet (their column is missing from its sheet): never
    a change of the member's, whatever ``current`` says of them; written from the base."""

    @property
    def present(self) -> bool:
        return self.status in ("unchanged", "changed", "new")

    def native_record(self) -> dict[str, Any] | None:
        """The member's native record, decoded (once) if it was kept as JSON text: only a
        write to the member, a write-only field and a reference it shows look at it."""
        native = self.native
        if isinstance(native, bytes):
            native = self.native = jsoncodec.loads(native)
        return native


@dataclass(frozen=True)
class Context:
    """Everything about the entity and the pipeline that reconciling one key needs."""

    entity: EntitySpec
    members: tuple[str, ...]
    mappings: Mapping[str, EntityMapping]
    caps: Mapping[str, Capabilities]
    rules: Callable[[str], list[str]]
    """field -> ordered conflict rules."""
    types: Mapping[str, str] = field(default_factory=dict)
    """member -> connector type, for messages such as 'housecallpro cannot update invoices'."""
    propagate_deletes: bool = True
    parked: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    """key -> field with an open (parked) conflict -> member -> the value the conflict
    shows for it: left alone until a person resolves it (``_refresh_parked``)."""
    refs: Mapping[str, RefIndexes] = field(default_factory=dict)
    """member -> how it shows references (members whose mapping has reference fields)."""
    users: Mapping[str, int] | None = None
    """key -> how many live records of other entities refer to it (they keep it alive);
    None when nothing of this entity is being deleted."""
    locks: Mapping[str, Lock] = field(default_factory=dict)
    """member -> its closed period, for an entity whose records are dated (``locks``)."""
    through: Mapping[str, Through] = field(default_factory=dict)
    """locked member -> the versions of the records that date this entity's records (a
    line's invoice: ``locks.Through``), for an entity dated through another."""
    skipped: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """key -> member -> the reason of a skipped write on record from earlier runs (read where
    there are locks: a skip already on record is not reported again)."""
    hold_deletes: bool = False
    """``[pipelines.deletes] approve``: a delete one member made is held for a person's
    approval instead of reaching the others (``KeyPlan.held``)."""
    approved: Collection[str] = frozenset()
    """Keys whose delete a person approved already (a guard's batch): not held again."""
    unfilled: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """member -> fields not written to it this run: the columns its sheet lacks while
    matching is blind to them (``match.hold_blind``), which only a person may add back."""


def decide(
    rules: list[str],
    values: dict[str, Any],
    updated: dict[str, Any],
) -> tuple[str | None, str]:
    """Apply ordered conflict rules to competing values: (winner or None, rule used)."""
    for rule in rules:
        if rule == "manual":
            return None, "manual"
        if rule == "newest":
            stamps = {m: updated.get(m) for m in values}
            if all(stamps.values()):
                ordered = sorted(stamps.items(), key=lambda kv: str(kv[1]), reverse=True)
                if len(ordered) == 1 or ordered[0][1] != ordered[1][1]:
                    return ordered[0][0], "newest"
            continue
        if rule in values:
            return rule, rule
    return None, "no rule decided"


def reconcile(
    ctx: Context,
    key: str,
    base: Record | None,
    views: Mapping[str, MemberView],
    *,
    new_key: bool = False,
) -> KeyPlan:
    """Decide what happens to one hub record: the writes on each member, the conflicts, the
    skips and the new base, from the record's base and each member's view of it; then leave
    out what a member's closed period refuses."""
    plan = _plan_key(ctx, key, base, views, new_key=new_key)
    if ctx.locks:
        _hold_closed(ctx, plan, views)
    plan.settle()
    return plan


def _plan_key(
    ctx: Context,
    key: str,
    base: Record | None,
    views: Mapping[str, MemberView],
    *,
    new_key: bool,
) -> KeyPlan:
    """Phases 1 to 4 of ``reconcile``."""
    plan = KeyPlan(
        entity=ctx.entity.name,
        key=key,
        label=_label(key, base, views),
        new_key=new_key,
        base_before=base,
        base_after=base,
    )
    if any(v.status == "blocked" for v in views.values()):
        # a malformed record on some member: leave the whole key alone
        _forget_unheld(plan, views)
        return plan

    present = {m: v for m, v in views.items() if v.present}
    dropped = [m for m, v in views.items() if v.status == "gone"]
    if new_key:
        plan.prior = {m: _keep(v, dirty=False) for m, v in present.items() if not v.provisional}
    base_now: Record = dict(base or {})
    agreed = _agreed(ctx, plan, present, base_now)
    parked = set(ctx.parked.get(key, {})) - set(agreed)
    changed = {**_changes(ctx, present, base_now, parked), **agreed}
    _refresh_parked(ctx, plan, present, base_now, parked)
    _refuse_fixed(ctx, present, changed)
    given_back = _plan_deletes(ctx, plan, present, dropped, base_now, changed)
    if given_back is None:
        return plan  # deleted, or its delete waits
    new_base = _merge(ctx, plan, present, base_now, changed)
    _plan_writes(ctx, plan, views, given_back, base_now, new_base, parked)
    return plan


def _forget_unheld(plan: KeyPlan, views: Mapping[str, MemberView]) -> None:
    """For a record left alone where a member cannot read it: where that member's sheet
    lacks a column its link last saw a value in, the link marks the value ``UNSEEN`` and
    turns dirty. The column the sync adds back stays blank on this row (it is not
    written), and a person may also put the old values back. Once the row is fixed, what
    is there is compared with the last-seen value and the base: a blank is filled from the
    base, the old value or the base's is no edit, and only another value is one."""
    for member, view in views.items():
        seen = view.last_seen
        if view.status != "blocked" or not view.native_id or not seen:
            continue
        known = unseen_in(seen)
        new = (view.missing & seen.keys()) - known
        if not new:
            continue
        kept = {**seen, UNSEEN: sorted(known | new)}
        plan.links[member] = LinkPlan(member, view.native_id, view.native_hash, kept, dirty=True)


class FixedFieldChanged(RecordError):
    """A member changed a field another member keeps as it created the record
    (``Capabilities.fixed``): the record's error, on the member that made the change."""

    def __init__(self, member: str, where: str, message: str) -> None:
        super().__init__(message)
        self.member = member
        self.where = where


def _refuse_fixed(
    ctx: Context, present: Mapping[str, MemberView], changed: Mapping[str, Mapping[str, Any]]
) -> None:
    """Raise ``FixedFieldChanged`` when a member changed a field that another member holding
    the record keeps as created: nothing of the record is written until the change is undone
    there, and no member is sent a write it would refuse on every run."""
    for name, by_member in changed.items():
        for holder in present:
            why = ctx.caps[holder].fixed.get(name)
            if why is None or holder in by_member:
                continue
            source = sorted(by_member)[0]
            raise FixedFieldChanged(
                source,
                present[source].location,
                f"{name} changed here, and {_type_of(ctx, holder)} ({holder}) cannot take "
                f"that: {why}",
            )


def _label(key: str, base: Record | None, views: Mapping[str, MemberView]) -> str:
    """The record's name in messages: as the first member holding it shows it, else as the
    base does, else its key (never one label inside another: ``$1 on 2025-02-18 ($1 on …)``)."""
    for view in views.values():
        if view.present and view.current:
            own = label_of(view.current, key)
            if own != key:
                return own
            break
    return label_of(base, key)


def _changes(
    ctx: Context, present: Mapping[str, MemberView], base_now: Record, parked: set[str]
) -> dict[str, dict[str, Any]]:
    """Phase 1: field -> member -> value, for every field a member changed since it last
    saw the record (for a field ``UNSEEN`` there: a value neither empty, nor the last-seen
    one, nor the base's). A newly linked record (never seen) only brings values the base lacks
    or differs on; parked fields, and fields a member does not hold yet (a column missing
    from its sheet), are left alone."""
    changed: dict[str, dict[str, Any]] = {}
    alone = not base_now and len(present) == 1
    for member, view in present.items():
        mapping = ctx.mappings[member]
        current = view.current or {}
        unseen = unseen_in(view.last_seen)
        if alone and view.last_seen is None:
            # a record new to the hub on one member (a first sync): every value it holds is
            # new, as the general rules below would find field by field
            for name in mapping.readable:
                value = current.get(name)
                if (
                    value is not None
                    and name not in parked
                    and name not in view.missing
                    and not ctx.entity.is_meta(name)
                ):
                    changed.setdefault(name, {})[member] = value
            continue
        for name in mapping.readable:
            if ctx.entity.is_meta(name) or name in parked or name in view.missing:
                continue
            value = current.get(name)
            if view.last_seen is not None and name not in unseen:
                if value == view.last_seen.get(name):
                    continue
                if value is not None and mapping.equivalent(name, value, base_now.get(name)):
                    # changed back to what the hub holds, as the member shows it (a sort
                    # undone: the day of HCP's payment time): nothing to write anywhere
                    continue
                finer = _finer(ctx, member, name, value, present) if value is not None else None
                if finer is not None:
                    # changed to its own form of what another member holds (a date typed
                    # back to the day of HCP's payment time): that member's finer value
                    # is the change, so that the hub takes it and nothing is written there
                    changed.setdefault(name, {})[member] = finer
                    continue
            elif (
                value is None
                or (view.last_seen is not None and value == view.last_seen.get(name))
                or mapping.equivalent(name, value, base_now.get(name))
                or _coarser(ctx, member, name, value, present)
            ):
                continue
            changed.setdefault(name, {})[member] = value
    if changed and any(view.joined for view in present.values()):
        _contest_newcomers(ctx, present, base_now, changed)
    return changed


def _contest_newcomers(
    ctx: Context,
    present: Mapping[str, MemberView],
    base_now: Record,
    changed: dict[str, dict[str, Any]],
) -> None:
    """A field only records joining the hub record changed (``MemberView.joined``: found by
    their values, a member added to a pipeline, a customer typed in again), where the base
    holds another value that the linked members still hold: that is a disagreement between
    them, not an edit, so the linked members' value is put beside the newcomers' and the
    field's conflict rules decide (a new member's older data never overwrites the others
    unasked)."""
    for name, by_member in changed.items():
        if base_now.get(name) is None:
            continue
        if not all(present[m].joined for m in by_member):
            continue  # a linked member changed it: an edit, weighed as any other
        for member, view in present.items():
            if (
                view.last_seen is not None
                and name in ctx.mappings[member].readable
                and name not in view.missing
                and ctx.mappings[member].equivalent(
                    name, (view.current or {}).get(name), base_now.get(name)
                )
            ):
                by_member[member] = base_now[name]


def _agreed(
    ctx: Context, plan: KeyPlan, present: Mapping[str, MemberView], base_now: Record
) -> dict[str, dict[str, Any]]:
    """The fields of open conflicts whose members (those the conflict shows a value of) all
    hold the same value now (a person typed the other side's): field -> member -> that
    value, taken as the members' change, so the new base takes it and the members outside
    the conflict get it. Each such conflict is closed (``KeyPlan.conflicts``, rule
    ``AGREED``), and the field is synced again."""
    agreed: dict[str, dict[str, Any]] = {}
    for name, shown in ctx.parked.get(plan.key, {}).items():
        held = {
            member: (view.current or {}).get(name)
            for member, view in present.items()
            if member in shown
            and name in ctx.mappings[member].readable
            and name not in view.missing
        }
        if len(held) < 2 or len({_freeze(v) for v in held.values()}) != 1:
            continue
        value = next(iter(held.values()))
        if any(
            member not in shown
            and _edited(view, name, base_now, ctx.mappings[member])
            and (view.current or {}).get(name) != value
            for member, view in present.items()
        ):
            continue  # another member changed it too: told again (``_refresh_parked``)
        agreed[name] = held
        winner = sorted(held)[0]
        plan.conflicts.append(
            Conflict(
                ctx.entity.name,
                plan.key,
                name,
                held,
                base_now.get(name),
                winner,
                AGREED,
                plan.label,
            )
        )
    return agreed


def _refresh_parked(
    ctx: Context,
    plan: KeyPlan,
    present: Mapping[str, MemberView],
    base_now: Record,
    parked: set[str],
) -> None:
    """A field with an open conflict stays left alone, but a member that changed it again
    since it last saw it (a cell typed over while the conflict waits) has its new value put
    in the conflict (``KeyPlan.conflicts``, rule ``RETOLD``; a member the conflict did not
    show joins it). A person resolving it then takes that value, not the one the member no
    longer holds."""
    for name, shown in ctx.parked.get(plan.key, {}).items():
        if name not in parked:
            continue
        edits: dict[str, Any] = {}
        for member, view in present.items():
            if view.last_seen is None or name in view.missing:
                continue
            value = (view.current or {}).get(name)
            if _edited(view, name, base_now, ctx.mappings[member]) and value != shown.get(member):
                edits[member] = value
        if edits:
            values = {**shown, **edits}
            plan.conflicts.append(
                Conflict(
                    ctx.entity.name,
                    plan.key,
                    name,
                    values,
                    base_now.get(name),
                    None,
                    RETOLD,
                    plan.label,
                )
            )


def _edited(
    view: MemberView, name: str, base_now: Record, mapping: EntityMapping | None = None
) -> bool:
    """Whether the member changed ``name`` since it last saw the record, as ``_changes``
    tells for a member that saw it: never where its sheet lacks the column; for a field
    ``UNSEEN`` there, only to a value neither empty, nor the last-seen one, nor the base's;
    never back to the base's value as the member shows it (``mapping``)."""
    if view.last_seen is None or name in view.missing:
        return False
    value = (view.current or {}).get(name)
    last = view.last_seen.get(name)
    if name in unseen_in(view.last_seen):
        return value not in (None, last, base_now.get(name))
    if value != last and value is not None and mapping is not None:
        return not mapping.equivalent(name, value, base_now.get(name))
    return value != last


def _coarser(
    ctx: Context, member: str, name: str, value: Any, present: Mapping[str, MemberView]
) -> bool:
    """Whether a never-seen record's ``value`` is only this member's coarser form of what
    another member holds (a sheet's date of HCP's timestamp): the same value to this member,
    not to the other. Then it is no change of its own, and no conflict with the other."""
    return _finer(ctx, member, name, value, present) is not None


def _finer(
    ctx: Context, member: str, name: str, value: Any, present: Mapping[str, MemberView]
) -> Any:
    """What another member holds of which ``value`` is only this member's coarser form (HCP's
    payment time, of which a sheet's date is the day), or None; None too when two members
    hold different such values (which one this member means cannot be told)."""
    mapping = ctx.mappings[member]
    found: list[Any] = []
    for other, view in present.items():
        theirs = (view.current or {}).get(name)
        if other == member or theirs is None or theirs == value or name in view.missing:
            continue
        if mapping.equivalent(name, value, theirs) and not ctx.mappings[other].equivalent(
            name, theirs, value
        ):
            found.append(theirs)
    return found[0] if found and all(v == found[0] for v in found) else None


def _plan_deletes(
    ctx: Context,
    plan: KeyPlan,
    present: Mapping[str, MemberView],
    gone: list[str],
    base_now: Record,
    changed: Mapping[str, Any],
) -> list[str] | None:
    """Phase 2: what the members that dropped the record (``gone``) mean for it.

    Returns None when the plan is complete: the record is deleted where it can be, or its
    delete waits for the records that refer to it. Otherwise returns the members whose
    delete lost to a modification elsewhere (they get the record back) or an empty set.

    A deleted record stays in the hub, marked, for as long as some member still holds it (a
    delete that failed, a member that cannot delete): each run deletes it where it can, and
    nothing re-creates it. A modification anywhere brings it back (the data wins).
    """
    spec = ctx.entity
    deleted = bool(base_now.get(DELETED))
    modified = bool(changed) or any(v.status == "new" for v in present.values())
    if gone and not deleted and not ctx.propagate_deletes:
        for member in gone:  # the others keep it; this member is not given it again
            plan.links[member] = LinkPlan(member, None, None, None, tombstone=True)
        gone = []
    held = ctx.hold_deletes and plan.key not in ctx.approved
    if gone and present and not deleted and not modified and held:
        # held for a person: the others keep it, the hub remembers that these members
        # deleted it (approving it deletes it everywhere; restoring gives it back to them)
        for member in gone:
            plan.links[member] = LinkPlan(member, None, None, None, tombstone=True)
        plan.held = frozenset(gone)
        return None
    if gone and not deleted and not modified and ctx.users is not None:
        users = ctx.users.get(plan.key, 0)
        if users:
            # records of other entities still refer to it (a customer's invoices): deleting it
            # now would leave them dangling. Wait; once they are gone it goes too.
            for member in present:
                plan.skips.append(
                    _skip(
                        ctx,
                        plan,
                        member,
                        f"deleted on {', '.join(sorted(gone))}, but {users} "
                        "record(s) of other entities still refer to it; it is "
                        "deleted once they are, or restored where it was "
                        "deleted if they stay",
                        kind="deferred",
                    )
                )
            plan.waiting = frozenset(gone)
            return None
    if deleted and not modified and present and ctx.users and ctx.users.get(plan.key):
        # a live record refers to a record the hub deleted but some member still holds (a
        # payment recorded against it since): the data wins, as for a modification
        modified = True
    if (gone or deleted) and not modified:
        for member in gone:
            plan.links[member] = LinkPlan(member, None, None, None, remove=True)
        if not present:
            plan.base_after = None
            return None
        keepers = []
        for member, view in present.items():
            if ctx.caps[member].delete and view.native_id and not view.provisional:
                plan.actions.append(
                    Delete(
                        spec.name,
                        member,
                        plan.key,
                        view.native_id,
                        values=dict(view.current or {}),
                    )
                )
            else:
                keepers.append(member)
                if not deleted:
                    plan.skips.append(
                        _skip(
                            ctx,
                            plan,
                            member,
                            f"{_type_of(ctx, member)} cannot delete {spec.name}; it keeps "
                            "this record",
                        )
                    )
        plan.base_after = {**base_now, DELETED: True}
        plan.purge = not keepers
        return None
    if gone or deleted:
        # a delete/modify conflict keeps the data: the deleting members get it back (they
        # count as absent from here on, and are re-created where they can be)
        base_now.pop(DELETED, None)
        for member in gone:
            plan.links[member] = LinkPlan(member, None, None, None, remove=True)
    return gone


def _merge(
    ctx: Context,
    plan: KeyPlan,
    present: Mapping[str, MemberView],
    base_now: Record,
    changed: Mapping[str, dict[str, Any]],
) -> Record:
    """Phase 3: the new base. A field changed alike wherever it changed is taken; different
    changes are a conflict, settled by the field's rules or parked (the base keeps its value,
    or, for a record new to the hub, the field stays out of it). A field that follows others
    (``EntitySpec.derived``: a line's amount) follows a change of theirs that came without
    its own."""
    updated_at = {m: (v.current or {}).get("updated_at") for m, v in present.items()}
    new_base = dict(base_now)
    for name, by_member in changed.items():
        if len(by_member) == 1 or len({_freeze(v) for v in by_member.values()}) == 1:
            new_base[name] = next(iter(by_member.values()))
            continue
        winner, rule = decide(ctx.rules(name), by_member, updated_at)
        plan.conflicts.append(
            Conflict(
                ctx.entity.name,
                plan.key,
                name,
                dict(by_member),
                base_now.get(name),
                winner,
                rule,
                plan.label,
            )
        )
        if winner is not None:
            new_base[name] = by_member[winner]
    for derived in ctx.entity.derived:
        if derived.field not in changed and any(s in changed for s in derived.sources):
            value = derived.compute(new_base)
            if value is not None:
                new_base[derived.field] = value
    # drop nulls so "missing" and "empty" agree in the base
    new_base = {k: v for k, v in new_base.items() if v is not None}
    for view in present.values():
        if view.current == new_base:  # the record as a member holds it (a first sync):
            new_base = view.current  # one dict for both, not two of the same values
            break
    plan.base_after = new_base
    return new_base


def _plan_writes(
    ctx: Context,
    plan: KeyPlan,
    views: Mapping[str, MemberView],
    given_back: list[str],
    base_now: Record,
    new_base: Record,
    parked: set[str],
) -> None:
    """Phase 4: per member, the update that brings what it holds to the new base, the
    create where it lacks the record (``given_back``: members whose delete lost to a
    modification count as lacking it), or the skip that says why it cannot take either."""
    base_changed = {n for n in set(new_base) | set(base_now) if new_base.get(n) != base_now.get(n)}
    parked_now = parked | {c.field for c in plan.conflicts if c.winner is None}
    others_new = any(v.present and v.status == "new" for v in views.values())
    for member in ctx.members:
        view = views.get(member) or MemberView(member=member, status="absent")
        if member in given_back:
            view = MemberView(member=member, status="absent")
        if view.present:
            _plan_update(ctx, plan, view, new_base, base_changed, parked_now)
        elif view.status == "absent":
            _plan_create(ctx, plan, member, new_base, parked_now, others_new)


def _plan_update(
    ctx: Context,
    plan: KeyPlan,
    view: MemberView,
    new_base: Record,
    base_changed: set[str],
    parked_now: set[str],
) -> None:
    """The update that brings a member holding the record to the new base: every field the
    merge changed (every writable field where the member's copy is suspect: dirty, new, never
    seen, or a member that cannot update; and every field it does not hold yet), plus
    references it shows stale; or the skip or wait that stands for it."""
    spec, member = ctx.entity, view.member
    caps, mapping, member_refs = ctx.caps[member], ctx.mappings[member], ctx.refs.get(member)
    current = view.current or {}
    if view.missing:
        # a field the member does not hold yet holds nothing, whatever was read or last seen
        current = {n: v for n, v in current.items() if n not in view.missing}
    write_only = mapping.writable - mapping.readable
    native = view.native_record() if write_only else None
    if native is not None:
        # a write-only field is never read back into ``current``: compare (and show in the
        # diff) what the native record really holds there, not an empty value
        current = {**current, **{n: mapping.held(native, n) for n in write_only}}
    # a member that cannot update is checked in full, so that a write it could not take is
    # reported again (and stays listed) whenever the record is looked at
    must_check_all = view.dirty or view.status == "new" or view.last_seen is None or not caps.update
    # (the member holding just the new base, as the one that brought a new record does:
    # nothing differs, and one comparison of the records says so)
    unfilled = ctx.unfilled.get(member, frozenset())
    unknown = unseen_in(view.last_seen)
    wanted = (
        set()
        if new_base == current
        else {
            n
            for n in mapping.writable
            if n not in parked_now
            and n not in unfilled
            and (must_check_all or n in base_changed or n in view.missing or n in unknown)
            and new_base.get(n) != current.get(n)
            and not mapping.equivalent(n, new_base.get(n), current.get(n))
        }
    )
    if member_refs is not None:
        wanted |= member_refs.stale_fields(view.native_record, new_base) - parked_now
    fields = sorted(wanted)
    relinked = view.relinked and caps.assigns_ids and view.native_id != plan.key
    assign = plan.key if view.provisional or relinked else None
    unseen = _still_unseen(ctx, view)
    if not fields and not assign:
        if view.status != "unchanged" or view.dirty:
            kept = plan.prior.get(member) if not unseen else None  # the same link: one object
            plan.links[member] = kept or _keep(view, dirty=False, unseen=unseen)
        return
    if not caps.update:
        if fields:
            skipped = _skip(ctx, plan, member, f"{_type_of(ctx, member)} cannot update {spec.name}")
            skipped.changes.update({n: (current.get(n), new_base.get(n)) for n in fields})
            plan.skips.append(skipped)
        plan.links[member] = _keep(view, dirty=False, unseen=unseen)
        return
    values = {n: new_base.get(n) for n in fields}
    if member_refs is not None and fields:
        values, missing = member_refs.render(values)
        if missing:
            plan.skips.append(_waits(ctx, plan, member, missing))
            plan.links[member] = _keep(view, dirty=True)
            return
    patch = mapping.to_native(values, fields) if fields else {}
    full = mapping.apply_patch(view.native_record() or {}, patch)
    changes = {n: (current.get(n), new_base.get(n)) for n in fields}
    plan.actions.append(
        Update(
            spec.name,
            member,
            plan.key,
            view.native_id or "",
            changes,
            patch,
            full,
            assign_id=assign,
            read_hash=view.native_hash or "",
            unseen={n: (view.last_seen or {}).get(n) for n in unseen if n not in fields},
        )
    )
    # the link is finalised by the executor from what the member returns


def _plan_create(
    ctx: Context,
    plan: KeyPlan,
    member: str,
    new_base: Record,
    parked_now: set[str],
    others_new: bool,
) -> None:
    """The create that gives the record to a member lacking it, with each reference as that
    member shows it; or the skip (it cannot create) or wait (a reference not there yet)."""
    spec, caps, mapping = ctx.entity, ctx.caps[member], ctx.mappings[member]
    unfilled = ctx.unfilled.get(member, frozenset())
    values = {
        n: v
        for n, v in new_base.items()
        if n in mapping.writable and n not in parked_now and n not in unfilled
    }
    if not values:
        return
    if len(values) == len(new_base):
        values = new_base  # every field written: one dict for the base and the create
    if not caps.create:
        if others_new:
            # reported once, when the record first appears; not retried every run
            plan.skips.append(
                _skip(ctx, plan, member, f"{_type_of(ctx, member)} cannot create {spec.name}")
            )
        return
    written = values
    member_refs = ctx.refs.get(member)
    if member_refs is not None:
        written, missing = member_refs.render(values)
        if missing:
            plan.skips.append(_waits(ctx, plan, member, missing))
            return
    native = mapping.build_native(mapping.to_native(written))
    unseen = tuple(sorted(n for n in unfilled if new_base.get(n) is not None))
    plan.actions.append(Create(spec.name, member, plan.key, values, native, unseen=unseen))


def _hold_closed(ctx: Context, plan: KeyPlan, views: Mapping[str, MemberView]) -> None:
    """Phase 5: the writes a member's lock refuses (``locks.refuses``: the record is dated
    before it as the member holds it or as the write would leave it) are left out, each
    skipped with the lock's reason; so is a write that waits for a reference when the record
    would be refused anyway. Writing a Sync ID alone still goes (it changes no value).

    The base, the conflicts and the other members' writes stay as planned: the members that
    are not locked get what they would get without the lock. The locked member's link keeps
    what it holds, marked dirty, so that the record is looked at again every run (quietly:
    a skip on record for the same reason is not reported again) and written once its period
    is open; a record no member holds any more is not dropped from the hub while the locked
    member keeps it."""
    entity = ctx.entity.name
    refused: dict[str, Lock] = {}
    kept: list[Action] = []
    for action in plan.actions:
        lock = ctx.locks.get(action.member)
        view = views.get(action.member)
        if lock is None or not _refused(lock, entity, action, view, ctx.through.get(action.member)):
            kept.append(action)
            continue
        refused[action.member] = lock
        if isinstance(action, Update) and action.assign_id and view is not None:
            # the row still gets its Sync ID, and its link from what the member answers
            native = ctx.mappings[action.member].apply_patch(view.native_record() or {}, {})
            kept.append(replace(action, changes={}, patch={}, full=native))
            continue
        if isinstance(action, Delete):
            plan.purge = False  # the locked member keeps it: the hub record stays
        if view is not None and view.present and (view.status != "unchanged" or not view.dirty):
            plan.links[action.member] = _keep(view, dirty=True)
    plan.actions = kept
    for skip in list(plan.skips):
        lock = ctx.locks.get(skip.member)
        if lock is None or skip.kind != "deferred" or plan.waiting or skip.member in refused:
            continue  # (a delete that waits for its users is decided when it no longer does)
        view = views.get(skip.member)
        held = view.current if view is not None and view.present else None
        if refuses(lock, entity, held, plan.base_after, ctx.through.get(skip.member)):
            plan.skips.remove(skip)
            refused[skip.member] = lock
    known = ctx.skipped.get(plan.key, {})
    for member, lock in refused.items():
        skip = _skip(ctx, plan, member, lock.reason)
        plan.skips.append(replace(skip, quiet=known.get(member) == lock.reason))


def _refused(
    lock: Lock,
    entity: str,
    action: Action,
    view: MemberView | None,
    through: Through | None = None,
) -> bool:
    """Whether ``lock`` refuses ``action``: the record as the member holds it (for a create:
    nothing) and as the action would leave it (for a delete: nothing), by ``locks.refuses``
    (a line dated by its invoice's versions in ``through``)."""
    if isinstance(action, Create):
        return refuses(lock, entity, None, action.values, through)
    if isinstance(action, Delete):
        return refuses(lock, entity, action.values, None, through)
    if action.link_only:
        return False
    held = dict(view.current or {}) if view is not None else {}
    wanted = {**held, **{name: new for name, (_old, new) in action.changes.items()}}
    return refuses(lock, entity, held, wanted, through)


def _skip(
    ctx: Context, plan: KeyPlan, member: str, reason: str, *, kind: str = "unsupported"
) -> Skip:
    return Skip(ctx.entity.name, member, plan.key, reason, plan.label, kind=kind)


def _waits(ctx: Context, plan: KeyPlan, member: str, missing: list[str]) -> Skip:
    return _skip(ctx, plan, member, "waits: " + "; ".join(missing), kind="deferred")


def _keep(view: MemberView, *, dirty: bool, unseen: tuple[str, ...] = ()) -> LinkPlan:
    native_id = None if view.provisional else view.native_id
    last = view.last_seen or {}
    seen = (
        {**(view.current or {}), **{n: last[n] for n in unseen if n in last}, UNSEEN: list(unseen)}
        if unseen
        else view.current
    )
    return LinkPlan(view.member, native_id, view.native_hash, seen, dirty=dirty)


def _still_unseen(ctx: Context, view: MemberView) -> tuple[str, ...]:
    """The fields whose value on the member stays unknown after this run (``UNSEEN``): those
    its sheet still lacks, that were unknown already or are not filled this run."""
    known = unseen_in(view.last_seen)
    unfilled = ctx.unfilled.get(view.member, frozenset())
    return tuple(sorted((known | unfilled) & view.missing))


def _type_of(ctx: Context, member: str) -> str:
    return ctx.types.get(member, member)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value
