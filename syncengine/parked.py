"""Parked for a person: what the engine leaves to people, and what it does with their answers.

- **Review queue.** A record new on a member that matches several hub records, or looks like
  a copy of another record (``match``, ``read.set_aside_copies``), is left alone and becomes
  (or refreshes) a review item. A person's decision is read by the next runs
  (``Decisions``): *link* makes the record that hub record's (where its member already holds
  that record, the row is a copy: it is left alone, quietly); *separate* makes it a new
  record of its own, for good. A decision that no longer applies (the chosen record was
  deleted, a row without an id changed) opens the item again with the reason. An open item
  whose record a complete read no longer finds ambiguous closes itself.
- **Held deletes.** With ``[pipelines.deletes] approve``, reconcile holds a delete instead
  of propagating it (``KeyPlan.held``); the run records one row per record and member.
- **Guards.** When a delete guard stops an entity, the records it would have deleted are held
  with its explanation; a person approves the batch (``api.approve_guarded``) and the next
  run lets exactly those deletes through the guards.

Nothing here runs in a dry run: it records nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from syncengine import model
from syncengine.display import label_of
from syncengine.match import MatchResult, Observed
from syncengine.plan import Delete, EntityPlan
from syncengine.read import MemberRead
from syncengine.spill import whole
from syncengine.state import StateStore, queues

__all__ = [
    "Decisions",
    "Parked",
    "QueueHoldings",
    "approved_keys",
    "emptied_members",
    "guard_stopped",
    "hold_guarded",
    "record_held",
    "record_review",
    "settle_held",
]


class QueueHoldings:
    """What a pipeline's review queue and held deletes hold, by entity and status, as read
    when its run starts: which of the per-entity reads and writes below can find anything
    to do. A quiet run of an installation whose queues are empty then makes none of them
    (six statements and two transactions per entity).

    That is exact for a run that holds the pipeline's lease: items are opened and deletes
    held only by runs of the pipeline, and a person only decides what is there (an open
    item, a held delete), so an entity that had neither when the run started cannot get a
    decision during it. What the run itself adds is noted as it is added (``note_review``,
    ``note_held``). ``unknown()`` stands for a run that did not read them: everything may
    be there."""

    def __init__(
        self,
        review: Iterable[tuple[str, str]] = (),
        held: Iterable[queues.Held] = (),
        *,
        everything: bool = False,
    ) -> None:
        self._review = set(review)
        self._held = set(held)
        self._everything = everything

    @classmethod
    def read(cls, store: StateStore, pipeline: str) -> QueueHoldings:
        review, held = store.queue_holdings(pipeline)
        return cls(review, held)

    @classmethod
    def unknown(cls) -> QueueHoldings:
        return cls(everything=True)

    def reviews(self, entity: str, *statuses: str) -> bool:
        """Whether the entity had review items of one of ``statuses``."""
        return self._everything or any((entity, s) in self._review for s in statuses)

    def holds(self, entity: str, *statuses: str, guarded: bool | None = None) -> bool:
        """Whether the entity had held deletes of one of ``statuses`` (held by a guard or
        not, if ``guarded`` says)."""
        return self._everything or any(
            (entity, s, g) in self._held
            for s in statuses
            for g in ((True, False) if guarded is None else (guarded,))
        )

    def note_review(self, entity: str) -> None:
        """The run opened (or refreshed) review items of the entity."""
        self._review.add((entity, "open"))

    def note_held(self, entity: str, *, guarded: bool) -> None:
        """The run held deletes of the entity (by a guard, or for approval)."""
        self._held.add((entity, "held", guarded))


@dataclass(frozen=True)
class Decision:
    """A person's decision on a record: ``link`` (to ``hub_key``) or ``separate``."""

    kind: str
    hub_key: str | None
    item_id: int
    candidates: tuple[str, ...] = ()
    """The records the item's record may be, as they were when it was decided."""

    def refused(self) -> str | None:
        """Why the engine cannot carry this decision out (the item is opened again with
        it), or None: a link to a record that is not one of the item's candidates (decided
        before that was refused, or written to the store by hand)."""
        if self.kind == "linked" and self.hub_key not in self.candidates:
            return (
                f"it was linked by hand to {self.hub_key}, which is not one of the records "
                "it may be; choose again"
            )
        return None


class Decisions:
    """The decided review items of an entity, found by the record they are about: its member
    and native id, or, for a record without an id of its own (a sheet row without a Sync
    ID, named by its line), its member and the hash of what it held when it was decided (a
    changed row is asked about again; a moved one is still found)."""

    def __init__(self, rows: Iterable[queues.ReviewRow] = ()) -> None:
        self._by_id: dict[tuple[str, str], Decision] = {}
        self._by_hash: dict[tuple[str, str], Decision] = {}
        self._rows: dict[int, queues.ReviewRow] = {}
        for row in rows:
            decision = Decision(row.status, row.hub_key, row.id, tuple(row.candidates))
            self._rows[row.id] = row
            if row.provisional:
                if row.native_hash:
                    self._by_hash[(row.member, row.native_hash)] = decision
            else:
                self._by_id[(row.member, row.native_id)] = decision

    @classmethod
    def load(cls, store: StateStore, pipeline: str, entity: str) -> Decisions:
        rows = [
            r
            for status in ("linked", "separate")
            for r in store.query(
                partial(queues.review_rows, pipeline=pipeline, entity=entity, status=status)
            )
        ]
        return cls(rows)

    def __bool__(self) -> bool:
        return bool(self._rows)

    def of(self, obs: Observed) -> Decision | None:
        """The decision about a record read this run, or None."""
        if obs.record.provisional:
            return self._by_hash.get((obs.member, obs.native_hash))
        return self._by_id.get((obs.member, obs.record.id))

    def changed(self, obs: Observed) -> bool:
        """Whether a record without an id of its own was decided on with other values (its
        native id names the decided row but its hash differs)."""
        if not obs.record.provisional:
            return False
        return any(
            r.member == obs.member
            and r.native_id == obs.record.id
            and r.native_hash != obs.native_hash
            for r in self._rows.values()
        )

    def linked_keys(self) -> set[str]:
        """The hub keys records were linked to: candidates ``match`` must see."""
        return {r.hub_key for r in self._rows.values() if r.status == "linked" and r.hub_key}


@dataclass
class Parked:
    """What one entity's planning left for a person, recorded once it is applied."""

    items: list[tuple[Observed, str, list[str | Observed]]] = field(default_factory=list)
    """(record, why, candidates): a candidate is a hub key, or a record new in this run
    whose key is known only once it is matched."""
    complete: set[str] = field(default_factory=set)
    """Members whose read was complete: their open items not found again are closed."""

    def add(self, obs: Observed, why: str, candidates: Sequence[str | Observed] = ()) -> None:
        # a person reviews the whole record, after its read's spill is closed
        obs.canonical = whole(obs.canonical)
        obs.hold_location()
        self.items.append((obs, why, list(candidates)))

    def name_candidates(self, matched: MatchResult) -> None:
        """Once the entity is matched: each candidate that is a record new in this run
        becomes the hub key it was matched to (dropped if it was matched to none), so that
        the entity's new records need not be kept through apply to record the items."""
        key_of = {id(obs): key for key, group in matched.groups.items() for obs in group.values()}
        for i, (obs, why, candidates) in enumerate(self.items):
            keys: list[str | Observed] = []
            for c in candidates:
                key = c if isinstance(c, str) else key_of.get(id(c))
                if key and key not in keys:
                    keys.append(key)
            self.items[i] = (obs, why, keys)


def record_review(
    store: StateStore,
    pipeline: str,
    entity: str,
    parked: Parked,
) -> None:
    """Open or refresh the review items of this run (their candidates named by
    ``Parked.name_candidates``), and close the open items of the members read whole that it
    did not find again."""
    with store.transaction() as tx:
        seen: list[int] = []
        for obs, why, candidates in parked.items:
            keys = [c for c in candidates if isinstance(c, str)]
            fields = {k: v for k, v in obs.canonical.items() if not k.startswith("_")}
            seen.append(
                tx.run(
                    partial(
                        queues.upsert_review,
                        pipeline=pipeline,
                        entity=entity,
                        member=obs.member,
                        native_id=obs.record.id,
                        native_hash=obs.native_hash,
                        provisional=obs.record.provisional,
                        location=obs.location,
                        label=label_of(fields, obs.location or obs.record.id),
                        fields=fields,
                        reason=why,
                        candidates=keys,
                    )
                )
            )
        tx.run(
            partial(
                queues.close_review,
                pipeline=pipeline,
                entity=entity,
                members=parked.complete,
                still_open=seen,
            )
        )


def record_held(store: StateStore, pipeline: str, ent: EntityPlan) -> int:
    """Record the deletes this applied plan held for approval; how many."""
    held = [kp for kp in ent.keys if kp.held]
    if not held:
        return 0
    with store.transaction() as tx:
        for kp in held:
            holders = sorted(set(ent.members) - kp.held)
            for member in sorted(kp.held):
                tx.run(
                    partial(
                        queues.hold_delete,
                        pipeline=pipeline,
                        entity=ent.entity,
                        key=kp.key,
                        member=member,
                        reach=holders,
                        label=kp.label,
                    )
                )
    return sum(len(kp.held) for kp in held)


def settle_held(store: StateStore, pipeline: str, entity: str) -> int:
    """Clear the held deletes whose member holds the record again (a person typed it back,
    and it was linked to its record): there is nothing left to approve. How many."""
    rows = store.query(
        partial(queues.held_rows, pipeline=pipeline, entity=entity, status="held", guarded=False)
    )
    if not rows:
        return 0
    states = store.load_records(pipeline, entity, sorted({r.key for r in rows}))
    back = []
    for r in rows:
        link = states[r.key].links.get(r.member) if r.key in states else None
        if link is not None and link.native_id and not link.tombstone:
            back.append(r.id)
    if back:
        with store.transaction() as tx:
            tx.run(
                partial(
                    queues.set_held,
                    ids=back,
                    status="cleared",
                    actor="syncengine",
                    all_or_nothing=False,  # one a person decided meanwhile stays decided
                )
            )
    return len(back)


def approved_keys(store: StateStore, pipeline: str, entity: str) -> set[str]:
    """The keys whose delete a person approved and no run carried out yet."""
    return store.query(partial(queues.approved_keys, pipeline=pipeline, entity=entity))


def emptied_members(reads: Mapping[str, MemberRead]) -> list[str]:
    """The members the empty-member guard is about: read whole, nothing listed, records
    linked."""
    return [n for n, r in reads.items() if r.count == 0 and r.linked > 0 and r.complete]


def guard_stopped(
    ent: EntityPlan, reads: Mapping[str, MemberRead], approved: Collection[str] = ()
) -> dict[str, tuple[str, set[str]]]:
    """The deletes a guard that tripped on ``ent`` stopped, but for those a person approved:
    key -> (the member that dropped the record, the members its delete would reach). The
    empty-member guard stops every record linked on the emptied member; the fraction guard
    the planned deletes."""
    stopped: dict[str, tuple[str, set[str]]] = {}
    for name in emptied_members(reads):
        for key in reads[name].gone:
            stopped[key] = (name, set(ent.members) - {name})
    for kp in ent.keys:
        deletes = {a.member for a in kp.actions if isinstance(a, Delete)}
        if deletes and kp.key not in stopped:
            gone = sorted(m for m, lp in kp.links.items() if lp.remove)
            stopped[kp.key] = (gone[0] if gone else "the hub", deletes)
    return {k: v for k, v in stopped.items() if k not in approved}


def hold_guarded(
    store: StateStore,
    pipeline: str,
    ent: EntityPlan,
    stopped: Mapping[str, tuple[str, set[str]]],
    approved: Collection[str],
    holdings: QueueHoldings,
) -> None:
    """After a run (not a dry run) planned an entity: where a guard stopped it, hold each
    delete it ``stopped`` with the guard's explanation and clear what an earlier trip held
    that this one does not repeat; where no guard stopped it, the deletes its planning saw
    ``approved`` were carried out (done) and earlier batches no longer stand (cleared).
    Nothing is sent where ``holdings`` says there is nothing to finish or clear."""
    if not ent.guard:
        guarded = holdings.holds(ent.entity, "held", guarded=True)
        if not approved and not guarded:
            return
        with store.transaction() as tx:
            if approved:
                tx.run(
                    partial(
                        queues.finish_approved,
                        pipeline=pipeline,
                        entity=ent.entity,
                        keys=approved,
                    )
                )
            if guarded:
                tx.run(partial(queues.clear_guarded, pipeline=pipeline, entity=ent.entity))
        return
    holdings.note_held(ent.entity, guarded=True)
    with store.transaction() as tx:
        bases = store.load_records(pipeline, ent.entity, list(stopped))
        for key, (member, reach) in stopped.items():
            base = bases[key].base if key in bases else {}
            shown = {k: v for k, v in base.items() if k != model.DELETED}
            tx.run(
                partial(
                    queues.hold_delete,
                    pipeline=pipeline,
                    entity=ent.entity,
                    key=key,
                    member=member,
                    reach=sorted(reach),
                    label=label_of(shown, key),
                    guard=ent.guard,
                )
            )
        tx.run(
            partial(queues.clear_guarded, pipeline=pipeline, entity=ent.entity, keep=set(stopped))
        )
