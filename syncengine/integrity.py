"""Integrity: what keeps the hub whole across entities and against mass deletes.

- **Users of a record**: records of other entities that refer to it (an invoice's customer).
  A record is not deleted while it has users; its delete *waits* (``KeyPlan.waiting``), and
  after the run either goes ahead (the users are gone too) or is undone: the record is given
  back to the members that deleted it (``settle_waiting_deletes``).
- **Delete guards**: a member that suddenly lists nothing, or a plan deleting more than
  ``max_fraction`` of a member's linked records, stops the entity with nothing written.
- **Stale references**: records that show a reference this run changed (a customer's new
  e-mail, a new id) need rewriting, so they are looked at even if nothing else changed.
- **Swapped identities**: a record whose match key now holds another hub record's value
  (rows sorted without their Sync ID column, a Sync ID pasted onto another row) is held
  with that other record, never written over it (``hold_swapped_identities``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import structlog

from syncengine import model
from syncengine.config import Pipeline
from syncengine.display import label_of
from syncengine.member import Member
from syncengine.plan import Delete, EntityPlan, Issue, users_of
from syncengine.read import MemberRead
from syncengine.refs import References
from syncengine.state import RecordState, StateStore

log = structlog.get_logger("syncengine.engine")


def count_users(
    store: StateStore,
    pipeline: Pipeline,
    entity: str,
    leaving: frozenset[tuple[str, str]] = frozenset(),
) -> dict[str, int]:
    """key of ``entity`` -> how many hub records of other entities refer to it, in their
    base or in what any member holds (a member that could not take a re-pointing, or keeps
    a record it cannot delete, still refers to the old one). Records in ``leaving``
    ((entity, key) pairs on their way out) keep nothing alive."""
    users: dict[str, int] = {}
    for other in pipeline.entities:
        names = [n for n, target in model.ENTITIES[other].refs.items() if target == entity]
        if not names or other == entity:
            continue
        for rs in store.iter_records(pipeline.name, other):
            if (other, rs.key) in leaving:
                continue
            held = [
                ln.last_seen
                for ln in rs.links.values()
                if ln.native_id and not ln.tombstone and ln.last_seen
            ]
            if rs.base.get(model.DELETED) and not held:
                continue
            values = {record.get(name) for record in (rs.base, *held) for name in names}
            for value in values:
                if isinstance(value, str):
                    users[value] = users.get(value, 0) + 1
    return users


def referred_to(pipeline: Pipeline, entity: str) -> bool:
    """Whether records of another entity of the pipeline may refer to ``entity``'s records
    (an invoice's customer): then its deletes wait until those are planned."""
    return any(
        target == entity
        for other in pipeline.entities
        if other != entity
        for target in model.ENTITIES[other].refs.values()
    )


def planned_users(plans: Sequence[EntityPlan], entity: str) -> dict[str, int]:
    """key of ``entity`` -> how many records this run's plans of other entities leave
    referring to it (in a dry run the state does not hold them yet)."""
    users: dict[str, int] = {}
    for ent in plans:
        for key, n in users_of(ent, entity).items():
            users[key] = users.get(key, 0) + n
    return users


def revive_referred(store: StateStore, pipeline: Pipeline, plans: Sequence[EntityPlan]) -> None:
    """A record deleted in the hub but kept by a member that cannot delete it comes back
    when a live record this run planned refers to it (a payment HCP recorded for an invoice
    the bookkeeper deleted): the money is real, so the invoice is. Its base loses the deleted
    mark and its links are marked dirty, so the members lacking it get it again next run
    (the records referring to it would otherwise wait for it forever)."""
    for entity in pipeline.entities:
        users = planned_users(plans, entity)
        if not users:
            continue
        revive = _deleted_among(store, pipeline.name, entity, users)
        if not revive:
            continue
        with store.transaction() as tx:
            for key, state in sorted(revive.items()):
                base = {k: v for k, v in state.base.items() if k != model.DELETED}
                tx.put_record(pipeline.name, entity, key, base)
                tx.set_dirty(pipeline.name, entity, key)
        log.info(
            "deleted records that live records refer to are brought back",
            entity=entity,
            records=len(revive),
        )


def _deleted_among(
    store: StateStore, pipeline: str, entity: str, keys: Collection[str]
) -> dict[str, RecordState]:
    """The records among ``keys`` that are marked deleted, by key. The database picks the
    candidates (a first sync refers to every record, and few are ever deleted); only those
    are loaded, and the mark is confirmed on what was loaded."""
    candidates = store.keys_flagged(pipeline, entity, keys, model.DELETED)
    states = store.load_records(pipeline, entity, candidates) if candidates else {}
    return {k: rs for k, rs in states.items() if rs.base.get(model.DELETED)}


def users_if_deleting(
    store: StateStore, pipeline: Pipeline, entity: str, reads: Mapping[str, MemberRead]
) -> dict[str, int] | None:
    """The users of this entity's records, counted only when some member dropped one of
    them (None otherwise: nothing is being deleted, so nothing needs to wait)."""
    if not pipeline.section.deletes.propagate or not any(r.gone for r in reads.values()):
        return None
    return count_users(store, pipeline, entity)


def settle_waiting_deletes(
    store: StateStore, pipeline: Pipeline, plans: Sequence[EntityPlan]
) -> None:
    """After every entity of the run: a delete that waited for the records referring to
    it is left to go ahead next run if they are gone now; if they stay, the record is
    given back to the members that deleted it (its link there is dropped, so the next run
    re-creates it): records referring to it must never dangle, and nothing waits forever.
    """
    # records whose own delete waits are on their way out: they keep nothing alive
    leaving = frozenset((ent.entity, kp.key) for ent in plans for kp in ent.keys if kp.waiting)
    for ent in plans:
        waiting = [kp for kp in ent.keys if kp.waiting]
        if not waiting or ent.guard:
            continue
        users = count_users(store, pipeline, ent.entity, leaving)
        restore = [kp for kp in waiting if users.get(kp.key)]
        if not restore:
            continue
        with store.transaction() as tx:
            for kp in restore:
                for member in sorted(kp.waiting):
                    tx.delete_link(pipeline.name, ent.entity, kp.key, member)
        log.info(
            "deleted records still referred to are restored next run",
            entity=ent.entity,
            records=len(restore),
        )


def empty_member_guard(entity: str, reads: Mapping[str, MemberRead]) -> str | None:
    """The guard's message when a member listed no record of the entity though records are
    linked to it (a wrong path, refused credentials), else None."""
    for name, r in reads.items():
        if r.count == 0 and r.linked > 0 and r.complete and r.structure.absent:
            where = r.structure.where or f"{name}'s {entity}"
            if r.structure.misread:  # the sheet renamed: its new name is known
                return (
                    f"{where} is missing but {r.linked} {entity} are linked to it; nothing "
                    f"of {entity} was written. {r.structure.misread}; then sync again (only "
                    f"if every one of them is to be deleted everywhere, run `syncengine sync "
                    "--allow-mass-delete`)"
                )
            return (
                f"{where} is missing (deleted, moved or renamed?) but {r.linked} {entity} "
                f"are linked to it; nothing of {entity} was written. Put it back (undo, the "
                "recycle bin, "
                "a backup) and sync again; only if every one of them is to be deleted "
                "everywhere, run `syncengine sync --allow-mass-delete`"
            )
        if r.count == 0 and r.linked > 0 and r.complete and r.structure.misread:
            return (
                f"{name} returned no {entity} but {r.linked} are linked to it; refusing to "
                f"treat that as deleting them all: {r.structure.where}: "
                f"{r.structure.misread}, and sync again"
            )
        if r.count == 0 and r.linked > 0 and r.complete:
            return (
                f"{name} returned no {entity} but {r.linked} are linked to "
                "it; refusing to treat that as deleting them all (check the "
                "member's path/credentials, or run `syncengine sync "
                "--allow-mass-delete` if they really are gone)"
            )
    return None


def mass_delete_guard(
    pipeline: Pipeline,
    ent: EntityPlan,
    reads: Mapping[str, MemberRead],
    allowed: Collection[str] = frozenset(),
) -> str | None:
    """The guard's message when the plan deletes at least ``min_count`` and more than
    ``max_fraction`` of the records linked on a member, else None. The deletes of
    ``allowed`` keys (a person approved them) do not count."""
    rules = pipeline.section.deletes
    deletes: dict[str, int] = {}
    for action in ent.actions:
        if isinstance(action, Delete) and action.key not in allowed:
            deletes[action.member] = deletes.get(action.member, 0) + 1
    for member, count in deletes.items():
        linked = reads[member].linked
        if count >= max(rules.min_count, 1) and count > rules.max_fraction * linked:
            return (
                f"{count} of {linked} linked {ent.entity} would be deleted on "
                f"{member} (more than max_fraction = {rules.max_fraction}); "
                f"nothing of {ent.entity} was written. If that is intended, run with "
                "--allow-mass-delete or raise [pipelines.deletes] max_fraction"
            )
    return None


def stale_references(
    store: StateStore,
    pipeline: Pipeline,
    entity: str,
    members: Sequence[Member],
    refs: References,
) -> set[str]:
    """Records whose reference, as a member shows it, this run changed: by a human key
    (an invoice row's Customer Email, after the customer's email changed), or by an id
    (a customer re-created on a member gets a new id there). They need rewriting."""
    changed: dict[str, set[str]] = {}
    for member in members:
        if member.refs is None:
            continue
        for f in member.refs.fields:
            if f.mapping is None:
                continue
            if f.ref_by is not None:
                keys = refs.changed(f.target, f.ref_by)
            else:
                keys = refs.created(f.target, member.name)
            if keys:
                changed.setdefault(f.name, set()).update(keys)
    if not changed:
        return set()
    return store.keys_holding(pipeline.name, entity, changed)


PAIRED = " and "
"""Joins the fields of an identity that takes several (``identity_fields``)."""


def identity_fields(pipeline: Pipeline, entity: str) -> tuple[str, ...]:
    """What names one record of ``entity`` on its own, for telling a row that took another
    record's values: each match key (an e-mail, an invoice number), or, for an entity
    without one, its ``EntitySpec.sorted_by`` fields as one identity ("invoice and amount":
    a payment's row sorted onto another payment's Sync ID holds that payment's invoice and
    amount, while that payment's own row changed too)."""
    keys = pipeline.match_keys(entity)
    if keys:
        return keys
    paired = model.entity_spec(entity).sorted_by
    return (PAIRED.join(paired),) if paired else ()


def identity(record: Mapping[str, Any], field_name: str) -> Any:
    """``record``'s value of an identity field (``identity_fields``): of a paired one, the
    tuple of its fields' values, or None when one of them is empty."""
    if PAIRED not in field_name:
        return record.get(field_name)
    values = tuple(record.get(name) for name in field_name.split(PAIRED))
    return None if any(v in (None, "") for v in values) else values


def shown(field_name: str, value: Any) -> str:
    """An identity field's value in a message: ``email 'ann@x.com'``; a paired one is only
    named, ``invoice and amount`` (its values are hub keys and cents)."""
    return field_name if PAIRED in field_name else f"{field_name} {value!r}"


def hold_swapped_identities(
    store: StateStore,
    pipeline: Pipeline,
    entity: str,
    reads: Mapping[str, MemberRead],
    ent: EntityPlan,
) -> None:
    """Hold (block, reported) each linked record a member changed so that a match key now
    holds the value another live hub record holds: the row's Sync ID names one customer and
    its e-mail is another's. That is rows sorted without their Sync ID column, or a Sync ID
    pasted onto another row, far more often than a person giving one customer another's
    e-mail; syncing it would write one customer over another on every member. The other
    record is held too (its delete, when its row vanished, would lose it). An entity without
    a match key is told apart by what names one of its records (``identity_fields``: a
    payment's invoice and amount)."""
    keys = identity_fields(pipeline, entity)
    changed = {(name, key): obs for name, r in reads.items() for key, obs in r.changed.items()}
    if not keys or not changed:
        return
    states = store.load_records(pipeline.name, entity, {key for _n, key in changed})
    suspects: dict[tuple[str, object], list[tuple[str, str]]] = {}
    left: dict[str, dict[tuple[str, object], list[str]]] = {}
    for (name, key), obs in changed.items():
        base = states[key].base if key in states else {}
        for field_name in keys:
            new, old = identity(obs.canonical, field_name), identity(base, field_name)
            if new not in (None, "") and old not in (None, "") and new != old:
                suspects.setdefault((field_name, new), []).append((name, key))
                if PAIRED not in field_name:  # a new row holding a payment's old pair is new
                    left.setdefault(name, {}).setdefault((field_name, old), []).append(key)
    if suspects:
        _hold_swaps(store, pipeline, entity, reads, ent, states, suspects)
    # after the swaps: a row holding another live record's identity is held with that
    # record (whose delete would otherwise lose it), whatever row holds its own old one
    _hold_moved_sync_ids(entity, reads, ent, states, left)


def _hold_swaps(
    store: StateStore,
    pipeline: Pipeline,
    entity: str,
    reads: Mapping[str, MemberRead],
    ent: EntityPlan,
    states: Mapping[str, RecordState],
    suspects: Mapping[tuple[str, object], list[tuple[str, str]]],
) -> None:
    """``hold_swapped_identities``' holds: ``suspects`` is (field, new value) -> the linked
    records (member, key) a member changed to that value."""
    keys = identity_fields(pipeline, entity)
    owners: dict[tuple[str, object], tuple[str, model.Record]] = {}
    for rs in store.iter_records(pipeline.name, entity):
        if rs.base.get(model.DELETED):
            continue
        for field_name in keys:
            value = identity(rs.base, field_name)
            if (field_name, value) in suspects:
                owners.setdefault((field_name, value), (rs.key, rs.base))
    for (field_name, value), holders in suspects.items():
        owner = owners.get((field_name, value))
        if owner is None:
            continue
        other, other_base = owner
        for name, key in holders:
            if key == other:
                continue
            r = reads[name]
            if key not in r.changed:
                continue
            if PAIRED in field_name and other not in r.changed and other not in r.blocked:
                # one payment corrected to another's amount (installments): an edit; a sort
                # changes the other payment's row as well
                continue
            obs = r.changed.pop(key)
            r.blocked.add(key)
            if r.gone.pop(other, None) is not None or other in r.withheld:
                r.blocked.add(other)
            moved_away = r.changed.pop(other, None)
            if moved_away is not None:
                # the owner's own row changed too (rows sorted, a new row among them): its
                # values are another record's as much as this row's are
                r.blocked.add(other)
                ent.issues.append(
                    Issue(
                        entity,
                        name,
                        moved_away.location,
                        f"not synced: {obs.location or 'another row'} holds this "
                        f"record's {shown(field_name, value)}, so this row's values may be "
                        "another record's too (see that row's error)",
                    )
                )
            was = label_of(states[key].base if key in states else None, key)
            ent.issues.append(
                Issue(
                    entity,
                    name,
                    obs.location,
                    f"its Sync ID is {was}'s, but it holds "
                    + (
                        f"the {field_name} of {label_of(other_base, other)}"
                        if PAIRED in field_name
                        else f"{field_name} {value!r}, which is {label_of(other_base, other)}'s"
                    )
                    + ": were the rows sorted without their "
                    "Sync ID column, or a Sync ID pasted onto another row? Neither record is "
                    "synced until each row has its own Sync ID again (undo the change, or "
                    "copy the Sync IDs back from a backup)",
                )
            )
            # told as the run's error on that row; the log line is for the record only
            log.info("identity swap held", entity=entity, member=name, key=key, other=other)


def _hold_moved_sync_ids(
    entity: str,
    reads: Mapping[str, MemberRead],
    ent: EntityPlan,
    states: Mapping[str, RecordState],
    left: Mapping[str, Mapping[tuple[str, object], list[str]]],
) -> None:
    """Hold each linked record a member changed so that a match key left a value (``left``:
    member -> (field, old value) -> keys) which a row new on that member, without an id of
    its own (a blank Sync ID), now holds: a row copied and changed into another customer,
    whose Sync ID was then blanked on the original row instead of on the copy; or rows sorted
    with a new one among them (the record already held by the swap rule: the row waits with
    it). Syncing would write the new customer over the old one on
    every member, and then create the old one again without its history. Both rows are held
    and reported until the Sync ID is back on the row that holds the record."""
    for name, moved in left.items():
        r = reads[name]
        if not r.new:
            continue
        held: set[int] = set()
        for obs in r.new:
            if not obs.record.provisional:
                continue  # a record with an id of its own (a customer new in HCP) is new
            for (field_name, value), keys in moved.items():
                if identity(obs.canonical, field_name) != value:
                    continue
                for key in keys:
                    linked = r.changed.pop(key, None)
                    if linked is None:
                        if key in r.blocked:  # held already (a swap): this row waits too
                            held.add(id(obs))
                        continue
                    r.blocked.add(key)
                    held.add(id(obs))
                    was = label_of(states[key].base if key in states else None, key)
                    now = identity(linked.canonical, field_name)
                    ent.issues.append(
                        Issue(
                            entity,
                            name,
                            linked.location,
                            f"its Sync ID is {was}'s, but it now holds {shown(field_name, now)}, "
                            f"while {obs.location or 'a record'}, which has no Sync ID, "
                            f"holds {was}'s {shown(field_name, value)}: was the Sync ID blanked on "
                            "the original row instead of on the copy? Neither row is synced "
                            f"until {was}'s Sync ID is back on the row that holds {was} (undo "
                            "the change) and the copy's Sync ID is blank",
                        )
                    )
                    log.warning("moved sync id held", entity=entity, member=name, key=key)
        if held:
            for obs in r.new:
                if id(obs) in held:
                    ent.issues.append(
                        Issue(
                            entity,
                            name,
                            obs.location,
                            "not synced: it may be the record whose Sync ID another row now "
                            "holds (see that row's error)",
                        )
                    )
            r.new = [obs for obs in r.new if id(obs) not in held]
