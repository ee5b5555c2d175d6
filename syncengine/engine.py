"""The sync engine: read → map → detect → match → reconcile → plan, then apply → commit.

``Engine.sync(pipeline)`` runs one pipeline over its entities in dependency order. The stages
up to the plan only read; ``dry_run=True`` stops there and writes nothing anywhere, neither
to a member nor to the state store. Each stage is a module:

- ``read``: what each member holds, sorted by what changed since it was last seen;
- ``match``: records new on a member, linked to the hub record they belong to;
- ``reconcile``: the pure three-way merge of one hub record into a ``KeyPlan``;
- ``integrity``: users of a record, waiting deletes, delete guards, stale references;
- ``marks``: where a member's next incremental read starts;
- ``apply``: the plan carried out through the write-ahead journal, and committed;
- ``recovery``: the journal's intents, and settling those an interrupted run left.

This module only orchestrates them: ``sync`` over the entities, ``plan_entity`` as named
phases. A run takes the webhook events waiting in the inbox (``events``) before it plans; an
event-driven run reads only what they name on the members that sent them.

Glossary
--------
hub record
    The pipeline's record of one real thing (a customer), keyed by a hub key, holding the
    *base* and one *link* per member that holds it.
member
    One connector of a pipeline, set up for one entity (``member.Member``).
link
    A hub record's tie to a member's native record: its native id, native hash and
    *last-seen* version, plus the ``dirty`` and ``tombstone`` flags.
last-seen
    What a member held when last read or written, in its own normal form: a field changed
    on a member when what it holds now differs from it (echo suppression).
base
    The last agreed canonical record: the common ancestor of the three-way merge.
tombstone
    A link kept for a record the member dropped while deletes do not propagate: the member
    is not given the record again.
provisional
    A native id a member gave a record it cannot id itself (a sheet row without a Sync ID):
    the record takes the hub key as its id on the next write.
read mark
    Where a member's next incremental read starts (``marks``).
unseen
    A linked record a partial (incremental or event-driven) read did not list: unchanged,
    not gone.
inbox, event-driven run
    Webhook events a member sent, stored before they were acknowledged (``events``); an
    event-driven run syncs only the records they name, and every completed run marks the
    events it took done.
blocked
    A record a member could not read or resolve this run: its hub record is left alone.
deferred
    A write that waits: for a referenced record to reach the member, or a delete for the
    records that still refer to it.
skipped
    A write a member cannot take (it cannot update invoices), or that its closed period
    refuses (``locks``): reported and listed in status, not retried while the record is
    unchanged (a closed period's skip is checked again every run, and reported only once).
intent
    A journalled write, committed before the member is called and finished after, so that a
    crash at any instant is recovered without duplicates (``recovery``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from syncengine import collector, model
from syncengine.apply import EntityApply
from syncengine.collector import COLLECTOR
from syncengine.config import Config, Pipeline
from syncengine.connector import Connector, ReadPass
from syncengine.display import days_in, plural
from syncengine.errors import (
    RecordError,
    StateError,
    StateUnavailableError,
    SyncEngineError,
    SyncStopped,
    describe,
)
from syncengine.events import DERIVED, NO_EVENTS, Events, InboxEvent, entities_named
from syncengine.integrity import (
    count_users,
    empty_member_guard,
    hold_swapped_identities,
    mass_delete_guard,
    planned_users,
    referred_to,
    revive_referred,
    settle_waiting_deletes,
    stale_references,
    users_if_deleting,
)
from syncengine.leasing import busy_error, lease_holder
from syncengine.locks import Through, dated_through, locks_for
from syncengine.logging import redact_text
from syncengine.marks import drop_exact_marks, marks_to_keep, store_marks
from syncengine.match import (
    Blind,
    MatchResult,
    Observed,
    Relinking,
    hold_blind,
    match,
    relink_vanished,
)
from syncengine.member import Member, open_member
from syncengine.parked import (
    Decisions,
    Parked,
    QueueHoldings,
    approved_keys,
    emptied_members,
    guard_stopped,
    hold_guarded,
    record_held,
    record_review,
    settle_held,
)
from syncengine.plan import (
    AGREED,
    RETOLD,
    Delete,
    EntityPlan,
    Issue,
    KeyPlan,
    Plan,
    Update,
    Waiting,
)
from syncengine.progress import ProgressFn, no_progress
from syncengine.read import (
    MemberRead,
    Named,
    ReadAhead,
    check_structures,
    fetch_unseen,
    fill_notes,
    kept_fields,
    member_views,
    narrow_to_named,
    read_member,
    say_withheld,
    set_aside_copies,
)
from syncengine.reconcile import Context, FixedFieldChanged, MemberView, reconcile
from syncengine.recovery import Recovery, recover, settle_creates
from syncengine.refs import References, referenced, targets_of
from syncengine.result import MAX_REPORTED, EntityOutcome, SyncResult
from syncengine.slices import Slices
from syncengine.state import COMPLETED_OUTCOMES, STATISTICS_AFTER, RecordState, StateStore

__all__ = ["MAX_REPORTED", "Engine", "EntityOutcome", "PlannedEntity", "ProgressFn", "SyncResult"]

log = structlog.get_logger("syncengine.engine")

CANDIDATES_LOOKED_UP = 2_000
"""Up to how many match-key values of new records are looked up in the state store, rather
than walking every hub record (``Engine._candidates``)."""


@dataclass
class PlannedEntity:
    """An entity's plan with what planning learnt of its members' read marks (the reads
    themselves are freed once planned: memory must not hold them through apply)."""

    plan: EntityPlan
    marks: dict[str, ReadPass] = field(default_factory=dict)
    """member -> the pass whose read mark to store once the entity is committed (see
    ``marks``)."""
    reread: set[str] = field(default_factory=set)
    """Members whose mark is dropped once the entity is committed (``MemberRead.reread``,
    or an exact mark that could not move: ``marks_to_keep``)."""
    stale_marks: set[str] = field(default_factory=set)
    """Members whose exact mark is dropped before the entity is applied: their read was
    complete, or the entity has something to apply (``marks.drop_exact_marks``)."""
    mappings: dict[str, str] = field(default_factory=dict)
    """member -> the fingerprint of the mapping its complete read was made with, where it is
    not the one stored already, to store once the entity is committed (``MemberRead``)."""
    held: list[HeldDelete] = field(default_factory=list)
    """Deletes of records other entities may refer to, decided after every entity of the
    run is planned (``Engine._decide_held_deletes``)."""
    parked: Parked = field(default_factory=Parked)
    """The records left for a person's review (recorded once the entity is applied)."""
    matched: bool = False
    """Whether the entity's new records were matched (its review items are recorded then)."""
    approved: set[str] = field(default_factory=set)
    """Keys whose delete a person approved: the delete guards let them through."""
    stopped: dict[str, tuple[str, set[str]]] = field(default_factory=dict)
    """When a delete guard stopped the entity: key -> (the member that dropped it, the
    members its delete would reach), held for a person (``api.approve_guarded``)."""


@dataclass
class HeldDelete:
    """A planned delete of a record other entities of the pipeline may refer to, held back
    until they are read: what reconciling it again needs."""

    key: str
    state: RecordState
    views: dict[str, MemberView]
    plan: KeyPlan
    """The plan as made with the entity (its deletes count towards the mass-delete guard)."""

    def placeholder(self) -> KeyPlan:
        """The key's stand-in in the entity's plan until its delete is decided: it writes
        nothing, and nothing referring to it is written on the members that dropped it."""
        return KeyPlan(
            entity=self.plan.entity,
            key=self.key,
            label=self.plan.label,
            new_key=False,
            base_before=self.state.base,
            base_after=self.state.base,
            waiting=frozenset(m for m, v in self.views.items() if v.status == "gone"),
        )


@dataclass
class EntityRun:
    """An entity of the run, kept for the deletes decided after every entity is planned."""

    members: list[Member]
    planned: PlannedEntity
    outcome: EntityOutcome


class Engine:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        *,
        dry_run: bool = False,
        connector_extra: dict[str, dict[str, object]] | None = None,
        progress: ProgressFn | None = None,
        allow_mass_delete: bool = False,
        stop: threading.Event | None = None,
        holder: str | None = None,
        event_driven: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.dry_run = dry_run
        self.connector_extra = connector_extra or {}
        self.progress: ProgressFn = progress or no_progress
        self.allow_mass_delete = allow_mass_delete
        self.stop = stop
        """Set it to stop at the next batch boundary: the batch in flight is applied and
        committed (buffered members flushed), then ``SyncStopped`` is raised."""
        self.holder = holder
        """The lease holder this run syncs under (``syncengine.leasing``: ``api.sync`` and
        the daemon take the lease first). It is recorded on the run's journal intents, and
        recovery leaves the intents of a run whose lease still holds alone. A run that is
        not a dry run refuses to start while another holder's lease on the pipeline holds."""
        self._ahead: dict[tuple[str, str], ReadAhead] = {}
        """(member, entity) -> the read started ahead of the entity (``ReadAhead``)."""
        self._exact_marks: dict[str, set[str]] = {}
        """entity -> members whose exact read marks this run stored: a later apply of the
        entity in the run (held deletes, records its writes changed) drops them first."""
        self.event_driven = event_driven
        """An event-driven run (``syncengine.events``): it syncs only the entities its webhook
        events name, and reads only the records they name on the members that sent them."""
        self._events: Events = NO_EVENTS
        """The webhook events this run took from the inbox."""
        self._queues = QueueHoldings.unknown()
        """What the review queue and the held deletes held when this run started."""

    # ------------------------------------------------------------------------------ sync
    def sync(self, pipeline: Pipeline, entities: Sequence[str] | None = None) -> SyncResult:
        """Sync ``pipeline`` (or only ``entities`` of it): recover, then plan and apply each
        entity in dependency order. The run is recorded in the run history."""
        # A sync allocates many long-lived small objects (one entity's records) and no
        # reference cycles of note: collect the young generation less often while it runs.
        # Several syncs may overlap in one process (the daemon): the first raises the
        # threshold, the last restores it.
        COLLECTOR.enter()
        held = lease_holder.set(self.holder)  # apply records it on the run's intents
        try:
            with (
                structlog.contextvars.bound_contextvars(pipeline=pipeline.name, run_id=None),
                days_in(self.config.day_zone(pipeline)),  # a payment's day, as its books show it
            ):
                return self._sync(pipeline, entities)
        finally:
            lease_holder.reset(held)
            COLLECTOR.leave()

    def _check_lease(self, pipeline: Pipeline) -> None:
        """Refuse a run that writes while another run holds the pipeline's lease (nothing has
        been read or written yet)."""
        lease = self.store.live_lease(pipeline.name)
        if lease is not None and lease.holder != self.holder:
            raise busy_error(pipeline.name, lease, 0)

    def _sync(self, pipeline: Pipeline, entities: Sequence[str] | None) -> SyncResult:
        """One run of ``pipeline`` (``entities``: None for all of them), in the order that
        keeps every step safe: refuse a wrong sheet structure before anything is read into a
        plan, take what an interrupted run left in the journal (its creates are settled from
        each entity's reads, before that entity is matched), plan and apply each entity in
        dependency order, then decide the deletes other entities may refer to, those
        referring first. The run is recorded (``runs``) however it ends."""
        if not self.dry_run:
            self._check_lease(pipeline)
        started = time.monotonic()
        run_id = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(run_id=run_id)  # every line of this run
        result = SyncResult(pipeline.name, self.dry_run, run_id, Plan(pipeline.name, self.dry_run))
        bound = log.bind(pipeline=pipeline.name, run_id=run_id, dry_run=self.dry_run)
        connectors = {m: self.config.make_connector(m, self._extra(m)) for m in pipeline.members}
        run_row: int | None = None
        try:
            if not self.dry_run:
                with self.store.transaction() as tx:
                    run_row = tx.start_run(pipeline.name, False, run_id)
                self._events = self._take_events(pipeline, result)
            self._queues = QueueHoldings.read(self.store, pipeline.name)
            scope = [e for e in pipeline.entities if entities is None or e in entities]
            for name, connector in connectors.items():
                connector.will_sync([e for e in scope if name in pipeline.members_of(e)])
            # a sheet a person must fix stops the whole run before anything is written
            check_structures(self.store, pipeline, entities, connectors)
            refs = References(self.store, pipeline.name, dry_run=self.dry_run)
            recovery = recover(
                self.store,
                pipeline,
                connectors,
                refs,
                dry_run=self.dry_run,
                holder=self.holder,
                entities=scope,
                progress=self.progress,
            )
            result.pending_recovery = recovery.pending
            runs: list[EntityRun] = []
            chosen = scope
            if self.event_driven:
                chosen = entities_named(self._events, chosen)
            derived: dict[str, dict[str, set[str]]] = {}
            for at, (entity, then) in enumerate(
                zip(chosen, [*chosen[1:], None][: len(chosen)], strict=True)
            ):
                self.check_stop()
                refs.keep_only(targets_of(chosen[at:]))
                runs.append(
                    self._sync_entity(
                        pipeline, entity, connectors, recovery, refs, result, run_id, then
                    )
                )
                if not self.dry_run:
                    self._note_derived(pipeline, entity, chosen, connectors, derived)
            # deletes other entities may depend on, decided once every entity is planned (and
            # applied): those referring first, so that a customer's delete sees its invoices'
            for run in reversed(runs):
                if run.planned.held:
                    self.check_stop()
                    self._decide_held_deletes(pipeline, run, result, run_id)
            for entity in (e for e in chosen if e in derived):
                self.check_stop()
                self._resync_derived(pipeline, entity, derived[entity], connectors, refs, result)
            if not self.dry_run:
                settle_waiting_deletes(self.store, pipeline, result.plan.entities)
                revive_referred(self.store, pipeline, result.plan.entities)
            result.open_conflicts = self._open_conflicts(pipeline, result.plan)
            return result
        except BaseException as exc:
            result.error = redact_text(describe(exc), self.config.secrets)
            result.stopped = isinstance(exc, SyncStopped)
            raise
        finally:
            for ahead in self._ahead.values():  # a run that ends before it gets there
                ahead.cancel()
            self._ahead.clear()
            self._exact_marks.clear()
            self._queues = QueueHoldings.unknown()
            result.duration_s = time.monotonic() - started
            self._close(connectors, bound)
            if run_row is not None:
                self._finish_run(pipeline, run_row, result)
            if result.stopped:  # asked for (a daemon shutting down): not a failure
                bound.info("stopped", reason=result.error, seconds=round(result.duration_s, 3))
            elif result.error:
                bound.error("failed", error=result.error, seconds=round(result.duration_s, 3))
            else:
                bound.info(
                    "finished", exit_code=result.exit_code, seconds=round(result.duration_s, 3)
                )

    def _extra(self, member: str) -> dict[str, object]:
        """What the member's connector is given beyond its options: the caller's test hooks,
        and this run's stop event, which ends an HTTP client's waits (``syncengine.http``)."""
        extra = dict(self.connector_extra.get(member) or {})
        if self.stop is not None:
            extra.setdefault("stop", self.stop)
        return extra

    def _take_events(self, pipeline: Pipeline, result: SyncResult) -> Events:
        """The webhook events of the pipeline's members that no run of it took yet: an
        event-driven run reads what they name, any run marks them done when it completes."""
        pending = self.store.pending_events(pipeline.name, pipeline.members)
        by_member: dict[str, list[InboxEvent]] = {}
        for event in pending:
            # only what its member syncs here (``[pipelines.member_entities]``): a CRM's event
            # about an invoice makes no run read the invoices; it is done with the run
            mine = tuple(e for e in event.entities if pipeline.syncs(event.connector, e))
            if mine != event.entities:
                event = replace(event, entities=mine)
            by_member.setdefault(event.connector, []).append(event)
        result.events = len(pending)
        result.event_driven = self.event_driven
        if pending:
            log.info(
                "webhook events taken",
                pipeline=pipeline.name,
                events=len(pending),
                event_driven=self.event_driven,
            )
        return Events(by_member)

    def _covered_events(self, pipeline: Pipeline, result: SyncResult) -> list[int]:
        """The taken events this run covered: those about entities it synced (all of them,
        unless it was asked for some entities only)."""
        synced = {o.plan.entity for o in result.outcomes}
        ours = set(pipeline.entities)
        return [
            e.id
            for events in self._events.by_member.values()
            for e in events
            if set(e.entities) & ours <= synced
        ]

    def _named(self, member: str, entity: str) -> list[InboxEvent] | None:
        """The events an event-driven run reads ``entity`` of ``member`` from (None: read it
        as any run does)."""
        if not self.event_driven:
            return None
        return self._events.of(member, entity) or None

    def _sync_entity(
        self,
        pipeline: Pipeline,
        entity: str,
        connectors: Mapping[str, Connector],
        recovery: Recovery,
        refs: References,
        result: SyncResult,
        run_id: str,
        then: str | None = None,
    ) -> EntityRun:
        """Plan one entity and, unless this is a dry run or a guard stopped it, apply it,
        settle the recovered updates it covers and store the members' read marks. Deletes
        other entities may depend on are held for ``_decide_held_deletes``. Members whose
        reads cost requests start reading the entity ``then`` (the next one) once this one
        is read, so that their waiting overlaps its planning and applying."""
        members = [
            open_member(pipeline, connectors[m], entity, refs) for m in pipeline.members_of(entity)
        ]
        forgotten = {} if self.dry_run else self._forget_unsynced(pipeline, entity)

        def read_next() -> None:
            if then is None:
                return
            for name in pipeline.members_of(then):
                connector = connectors[name]
                if connector.reads_ahead and (name, then) not in self._ahead:
                    ahead = open_member(pipeline, connector, then, refs)
                    self._ahead[(name, then)] = ReadAhead(
                        self.store, pipeline.name, then, ahead, self._named(name, then)
                    )

        COLLECTOR.settle()
        slices = Slices(self, pipeline, members, run_id, result)
        planned = self.plan_entity(
            pipeline,
            entity,
            members,
            recovery,
            refs,
            hold_deletes=True,
            when_read=read_next,
            slices=slices if slices.possible() else None,
        )
        ent = planned.plan
        for member, n in forgotten.items():
            ent.notes.append(
                f"{member} no longer syncs {entity} ([pipelines.member_entities]): the "
                f"{plural(n, 'link')} the state kept of its {entity} were dropped; if it syncs "
                "them again, its records are matched anew, as a new member's are"
            )
        outcome = slices.outcome  # a first sync applied in slices is in the result already
        if outcome is None:
            result.plan.entities.append(ent)
            outcome = EntityOutcome(ent)
            result.outcomes.append(outcome)
        counts = ent.counts()
        log.info(
            "planned",
            pipeline=pipeline.name,
            run_id=run_id,
            dry_run=self.dry_run,
            entity=entity,
            actions=sum(
                counts[m][op] for m in ent.members for op in ("create", "update", "delete")
            ),
            conflicts=counts["conflicts"] + counts["conflicts_settled"],
            issues=len(ent.issues),
            guard=ent.guard,
            applied_slices=slices.applied,
        )
        if ent.guard:
            result.guard = ent.guard
        elif not self.dry_run:
            drop_exact_marks(self.store, pipeline.name, entity, planned.stale_marks)
            applier = EntityApply(
                self.store,
                pipeline,
                members,
                outcome,
                run_id,
                self.progress,
                before=slices.records,
                total=slices.records + len(ent.after_compaction()),
            )
            finished = applier.run(self.stop)
            self._record_held(pipeline, ent)
            # writes that took effect (failed ones change a dirty flag, and come back every
            # run while their member refuses them): the next entity looks these records up
            written = sum(n for ops in outcome.applied.values() for n in ops.values())
            if finished and written >= STATISTICS_AFTER:
                try:
                    self.store.refresh_statistics()
                except StateError as exc:  # an aid to the planner: the run goes on without it
                    log.warning("state statistics not refreshed", entity=entity, error=str(exc))
            if not finished:
                self.check_stop()
            settled = recovery.updates.pop(entity, [])
            if settled:  # the entity's state now reflects them
                with self.store.transaction() as tx:
                    tx.finish_intents([{"id": i, "state": "abandoned"} for i in settled])
            self._exact_marks[entity] = store_marks(
                self.store,
                pipeline.name,
                entity,
                planned.marks,
                planned.reread,
                outcome.failures,
                planned.mappings,
            )
        if not self.dry_run:
            queues = self._queues
            if planned.matched and (planned.parked.items or queues.reviews(entity, "open")):
                record_review(self.store, pipeline.name, entity, planned.parked)
                if planned.parked.items:
                    queues.note_review(entity)
            hold_guarded(self.store, pipeline.name, ent, planned.stopped, planned.approved, queues)
            if pipeline.section.deletes.approve and queues.holds(entity, "held", guarded=False):
                settle_held(self.store, pipeline.name, entity)
        # until decided, a held delete's record is not there for the members that dropped it
        ent.keys.extend(h.placeholder() for h in planned.held)
        refs.planned(ent)  # entities referring to this one see its new state
        if not planned.held:
            self._done_with(ent, members, refs)
        return EntityRun(members, planned, outcome)

    def _forget_unsynced(self, pipeline: Pipeline, entity: str) -> dict[str, int]:
        """Drop what the state keeps of ``entity`` for the pipeline's members that no longer
        sync it (``[pipelines.member_entities]`` changed): their links and skipped writes.
        Kept, they would read as that member's deletes if it synced the entity again (every
        record it lost or changed meanwhile deleted everywhere), and still count as a member
        holding a record. Returns member -> links dropped."""
        dropped: dict[str, int] = {}
        for member in pipeline.members:
            if pipeline.syncs(member, entity):
                continue
            if not self.store.holds_any(pipeline.name, entity, member):
                continue
            with self.store.transaction() as tx:
                dropped[member] = tx.forget_member(pipeline.name, entity, member)
            log.warning(
                "links of a member that no longer syncs the entity dropped",
                member=member,
                entity=entity,
                links=dropped[member],
            )
        return dropped

    def _record_held(self, pipeline: Pipeline, ent: EntityPlan) -> None:
        if record_held(self.store, pipeline.name, ent):
            self._queues.note_held(ent.entity, guarded=False)

    @staticmethod
    def _note_derived(
        pipeline: Pipeline,
        entity: str,
        chosen: Sequence[str],
        connectors: Mapping[str, Connector],
        derived: dict[str, dict[str, set[str]]],
    ) -> None:
        """Add to ``derived`` (entity -> member -> native ids) the records of entities synced
        earlier in this run that the writes of ``entity`` changed on a member
        (``Connector.changed_by_writes``): an invoice HCP totals from the lines just written.
        Records of entities the run does not sync, or syncs later, are left to their pass."""
        done = chosen[: chosen.index(entity)]
        for name, connector in connectors.items():
            for other, ids in connector.changed_by_writes(entity).items():
                if other in done and ids and pipeline.syncs(name, other):
                    derived.setdefault(other, {}).setdefault(name, set()).update(ids)

    def _resync_derived(
        self,
        pipeline: Pipeline,
        entity: str,
        changed: Mapping[str, set[str]],
        connectors: Mapping[str, Connector],
        refs: References,
        result: SyncResult,
    ) -> None:
        """Sync again, in the same run, the records of ``entity`` that a later entity's writes
        changed on a member (``changed``: member -> native ids): they are read by id on that
        member as an event-driven run reads what its events name, and the other members'
        changes to any other record are set aside (this run's pass of the entity took them).
        Its writes and problems count with the entity's own pass; no read mark moves."""
        stand_ins = Events(
            {
                member: [
                    InboxEvent(0, member, DERIVED, (entity,), native_id, {})
                    for native_id in sorted(ids)
                ]
                for member, ids in changed.items()
            }
        )
        saved = self._events, self.event_driven
        self._events, self.event_driven = stand_ins, True
        try:
            members = [
                open_member(pipeline, connectors[m], entity, refs)
                for m in pipeline.members_of(entity)
            ]
            planned = self.plan_entity(pipeline, entity, members, None, refs)
        finally:
            self._events, self.event_driven = saved
        ent = planned.plan
        first = next(o for o in result.outcomes if o.plan.entity == entity)
        first.plan.issues.extend(ent.issues)
        if ent.guard:  # nothing is written: the next run's pass of the entity sees it again
            first.plan.notes.append(f"not synced again after the writes of this run: {ent.guard}")
            self._done_with(ent, members)
            return
        outcome = EntityOutcome(ent)
        drop_exact_marks(self.store, pipeline.name, entity, self._exact_marks.pop(entity, ()))
        EntityApply(self.store, pipeline, members, outcome, result.run_id, self.progress).run(
            self.stop
        )
        self._record_held(pipeline, ent)
        first.plan.keys.extend(kp for kp in ent.keys if kp.actions or kp.conflicts or kp.links)
        first.failures.extend(outcome.failures)
        for member, ops in outcome.applied.items():
            into = first.applied.setdefault(member, {})
            for op, n in ops.items():
                into[op] = into.get(op, 0) + n
        refs.planned(ent)
        self._done_with(ent, members, refs)

    def _decide_held_deletes(
        self, pipeline: Pipeline, run: EntityRun, result: SyncResult, run_id: str
    ) -> None:
        """Decide the deletes held back while the entity was planned, now that the entities
        referring to it are planned too: a record still referred to (by a record already
        synced, or one new in this run) waits and is given back to the members that dropped
        it (``settle_waiting_deletes``); any other is deleted where it can be. Nothing is
        applied for an entity a guard stopped."""
        ent = run.planned.plan
        try:
            self._decide(pipeline, run, result, run_id)
        finally:
            self._done_with(ent, run.members)  # kept whole until now: its placeholders are gone

    def _done_with(
        self, ent: EntityPlan, members: Sequence[Member], refs: References | None = None
    ) -> None:
        """The run is done with an entity: its applied plan is compacted and its members
        drop what they hold of it, so that the next entity does not run beside them. The
        records the kept details refer to are named (``refs``: a payment's invoice by its
        number in ``--details``, as a dry run names it), once the plan is that small."""
        if not self.dry_run:
            ent.compact()
            if refs is not None:
                refs.label_targets(ent)
        for member in members:
            member.connector.release(ent.entity)

    def _decide(self, pipeline: Pipeline, run: EntityRun, result: SyncResult, run_id: str) -> None:
        ent = run.planned.plan
        held = {h.key for h in run.planned.held}
        ent.keys = [kp for kp in ent.keys if kp.key not in held or kp.actions or kp.links]
        if ent.guard:
            return
        users = count_users(self.store, pipeline, ent.entity)
        for key, n in planned_users(result.plan.entities, ent.entity).items():
            users[key] = users.get(key, 0) + n
        wanted = referenced(
            ent.entity, (r for h in run.planned.held for r in _records_of(h.state.base, h.views))
        )
        ctx = replace(
            self._context(pipeline, ent.entity, run.members, {}, wanted=wanted), users=users
        )
        decided = EntityPlan(ent.entity, ent.members)
        for h in run.planned.held:
            kp = reconcile(ctx, h.key, h.state.base, h.views)
            if kp.changes_state:
                decided.keys.append(kp)
            n = users.get(h.key, 0)
            if (
                n
                and h.key in run.planned.approved
                and not any(isinstance(a, Delete) for a in kp.actions)
            ):
                # a person approved it, but records still refer to it: given back, and said
                ent.notes.append(
                    f"the approved delete of {ent.entity} {kp.label or h.key} was not carried "
                    f"out: {n} record{'s' if n != 1 else ''} of other entities still refer to "
                    "it, so it is given back (delete those too, then delete it again)"
                )
        ent.keys.extend(decided.keys)
        if self.dry_run or not decided.keys:
            return
        outcome = EntityOutcome(decided)
        drop_exact_marks(
            self.store, pipeline.name, ent.entity, self._exact_marks.pop(ent.entity, ())
        )
        EntityApply(self.store, pipeline, run.members, outcome, run_id, self.progress).run(
            self.stop
        )
        run.outcome.failures.extend(outcome.failures)
        for member, ops in outcome.applied.items():
            into = run.outcome.applied.setdefault(member, {})
            for op, n in ops.items():
                into[op] = into.get(op, 0) + n

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise SyncStopped(
                "stopped on request; what was applied is committed, the next run goes on from there"
            )

    def _open_conflicts(self, pipeline: Pipeline, plan: Plan) -> int:
        """Open conflicts after the run; a dry run counts the ones it would park too."""
        stored = len(self.store.open_conflicts(pipeline.name))
        if not self.dry_run:
            return stored
        planned = [x for c in plan.entities for x in c.conflicts]
        parked = sum(1 for x in planned if x.winner is None and x.rule != RETOLD)
        return stored + parked - sum(1 for x in planned if x.rule == AGREED)

    @staticmethod
    def _close(
        connectors: Mapping[str, Connector], bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        for conn in connectors.values():
            try:
                conn.close()
            except Exception as exc:  # closing must not hide the real outcome
                bound.warning("close failed", connector=conn.name, error=str(exc))

    def _finish_run(self, pipeline: Pipeline, run_row: int, result: SyncResult) -> None:
        errors = [i.describe() for o in result.outcomes for i in (o.plan.issues + o.failures)][
            :MAX_REPORTED
        ]
        if result.error:
            errors.insert(0, result.error)
        with self.store.transaction() as tx:
            tx.finish_run(run_row, result.outcome, result.to_json()["entities"], errors)
            if self._events and result.outcome in COMPLETED_OUTCOMES:
                # with the outcome: a run that did not complete leaves them to the next one
                tx.events_done(pipeline.name, self._covered_events(pipeline, result), result.run_id)
            retention = dt.timedelta(days=self.config.journal_retention_days)
            tx.prune_journal(pipeline.name, dt.datetime.now(dt.UTC) - retention)

    # ------------------------------------------------------------------------------ plan
    def plan_entity(
        self,
        pipeline: Pipeline,
        entity: str,
        members: list[Member],
        recovery: Recovery | None = None,
        refs: References | None = None,
        *,
        hold_deletes: bool = False,
        when_read: Callable[[], None] | None = None,
        slices: Slices | None = None,
    ) -> PlannedEntity:
        """Plan one entity: read every member, settle the creates an interrupted run left
        from those reads (``recovery.settle_creates``), find the hub records that need a look,
        match new records, reconcile each record, then apply the guards. Writes nothing but
        what settling interrupted creates commits (nothing in a dry run).

        With ``hold_deletes``, deletes of records other entities of the pipeline may refer
        to are planned (they count towards the mass-delete guard) but held out of the plan
        (``PlannedEntity.held``), to be decided once those entities are planned.

        ``when_read`` is called once every member's read is taken, before anything is planned
        (``_sync_entity`` starts reading the next entity then).

        With ``slices``, a first sync of the entity (``may_slice``) is applied as it is
        planned, a slice of records at a time (``Slices``): this is the one case where
        planning writes.

        The native records the reads spilled to disk until planned (``spill``) are let go of
        with their files once the entity is planned."""
        reads: dict[str, MemberRead] = {}
        try:
            return self._plan_read(
                pipeline, entity, members, reads, recovery, refs, hold_deletes, when_read, slices
            )
        finally:
            for r in reads.values():
                r.spill.close()

    def _plan_read(
        self,
        pipeline: Pipeline,
        entity: str,
        members: list[Member],
        reads: dict[str, MemberRead],
        recovery: Recovery | None,
        refs: References | None,
        hold_deletes: bool,
        when_read: Callable[[], None] | None,
        slices: Slices | None,
    ) -> PlannedEntity:
        """``plan_entity``, with the members' reads kept in ``reads``."""
        ent = EntityPlan(entity, tuple(m.name for m in members))
        planned = PlannedEntity(ent)
        # (an interrupted create settled from the reads commits a hub record before matching)
        first = not self.store.holds_records(pipeline.name, entity) and not (
            recovery is not None and recovery.creates.get(entity)
        )
        for member in _read_order(members, first=first):
            # the last member read of a first sync whose others, read whole, hold nothing of
            # the entity: its records can be paired with none (their relink fields are
            # never compared)
            alone = (
                first
                and 0 < len(reads) == len(members) - 1
                and all(r.complete and not r.count for r in reads.values())
            )
            reads[member.name] = read_member(
                self.store,
                pipeline.name,
                entity,
                member,
                ent,
                self.progress,
                self._ahead.pop((member.name, entity), None),
                self._named(member.name, entity),
                kept_fields(pipeline, entity, alone=alone),
            )
        in_order = {m.name: reads[m.name] for m in members}  # the pipeline's order from here
        reads.clear()
        reads.update(in_order)
        for name, r in reads.items():
            ent.seen[name] = r.count
        if when_read is not None:
            when_read()
        planned.approved = self._approved(pipeline, entity)
        if not self.allow_mass_delete:
            ent.guard = empty_member_guard(entity, reads)
            emptied = emptied_members(reads)
            approved = planned.approved
            if ent.guard and emptied and all(set(reads[n].gone) <= approved for n in emptied):
                ent.guard = None  # a person approved the deletes of exactly these records
            if ent.guard:
                planned.stopped = guard_stopped(ent, reads, planned.approved)
                return planned  # its interrupted creates wait for a run that plans it
        if recovery is not None and recovery.creates.get(entity):
            # before anything new in the reads is matched: a record an interrupted run
            # created is linked, not taken for new (nor created again)
            settle_creates(
                self.store, pipeline, entity, members, reads, ent, recovery, dry_run=self.dry_run
            )
        named = self._narrow_to_events(entity, reads)
        decisions = (
            Decisions.load(self.store, pipeline.name, entity)
            if self._queues.reviews(entity, "open", "linked", "separate")
            else Decisions()
        )
        relinked = self._relink_vanished(
            pipeline, entity, members, reads, ent, lambda obs: decisions.of(obs) is not None
        )
        planned.parked.complete = {name for name, r in reads.items() if r.complete}
        set_aside_copies(
            entity,
            reads,
            ent,
            lambda obs: decisions.of(obs) is not None,
            planned.parked.add,
            lambda name, native_id: _location_of(members, entity, name, native_id),
        )
        hold_swapped_identities(self.store, pipeline, entity, reads, ent)
        touched = self._touched(pipeline, entity, members, reads, refs)
        matched = self._match_new(
            pipeline, entity, members, reads, recovery, ent, relinked, decisions, planned.parked
        )
        planned.matched = True
        if named is not None:
            named.keep_named(matched, reads)
        planned.parked.name_candidates(matched)
        touched.update(k for k in matched.groups if k not in matched.new_keys)
        matched.new_keys = set()  # not looked at again: no set of every new key while planning
        states = self.store.load_records(pipeline.name, entity, touched) if touched else {}
        self._fetch_referring_unseen(entity, members, reads, ent, touched, states)
        hold = hold_deletes and pipeline.section.deletes.propagate and referred_to(pipeline, entity)
        if slices is not None and not self.may_slice(
            pipeline, entity, reads, states, recovery, named
        ):
            slices = None
        if slices is not None:
            # the state changes as slices are applied: what the plan says of it before, now
            ent.skipped_before = self.store.skipped_keys(pipeline.name, entity)
            slices.stale = {
                name
                for name, r in reads.items()
                if r.read_pass is not None and r.read_pass.exact and r.marked
            }
        untaken = self._plan_keys(
            pipeline,
            ent,
            members,
            reads,
            states,
            matched,
            touched,
            recovery,
            planned,
            hold,
            named,
            refs,
            slices,
        )
        planned.marks, unmoved = marks_to_keep(reads, ent, untaken)
        planned.reread = {name for name, r in reads.items() if r.reread} | unmoved
        # an exact mark vouches for the state as its content showed it: gone before the
        # state takes another version (a complete read) or the entity's own writes, which
        # a run stopped mid-apply commits without storing the mark they leave
        changes = bool(ent.keys or ent.actions)
        planned.stale_marks = {
            name
            for name, r in reads.items()
            if r.read_pass is not None and r.read_pass.exact and r.marked
            and (r.complete or changes)
        }  # fmt: skip
        # only a complete read looked at every record with the mapping in force; one an
        # event-driven run narrowed set records aside unplanned: their look waits (a mapping
        # changed, a field listed since), so the mark stays where it was
        planned.mappings = {
            name: r.fingerprint
            for name, r in reads.items()
            if r.complete and not r.set_aside and r.fingerprint != r.stored_fingerprint
        }
        fill_notes(ent, reads, dry_run=self.dry_run)
        if not self.allow_mass_delete:
            ent.guard = mass_delete_guard(pipeline, ent, reads, planned.approved)
            if ent.guard:
                planned.stopped = guard_stopped(ent, reads, planned.approved)
        held_for_approval = sum(len(kp.held) for kp in ent.keys)
        if held_for_approval:
            ent.notes.append(
                f"{held_for_approval} delete{'s' if held_for_approval != 1 else ''} of {entity} "
                f"{'are' if held_for_approval != 1 else 'is'} held for approval "
                "([pipelines.deletes] approve): see `syncengine deletes list`"
            )
        if planned.held:
            held = {id(h.plan) for h in planned.held}
            ent.keys = [kp for kp in ent.keys if id(kp) not in held]
        if self.dry_run and refs is not None:
            refs.label_targets(ent)
        if slices is None:
            ent.skipped_before = self.store.skipped_keys(pipeline.name, entity)
        return planned

    def may_slice(
        self,
        pipeline: Pipeline,
        entity: str,
        reads: Mapping[str, MemberRead],
        states: Mapping[str, RecordState],
        recovery: Recovery | None,
        named: Named | None,
    ) -> bool:
        """Whether the entity's plan may be applied in slices as it is planned: a first sync
        of it (the hub holds none of its records: nothing can be deleted, so no guard can
        stop it once a slice is written, and no delete waits for other entities), in a real,
        complete run (not event-driven), with no interrupted write to recover and no column
        missing on any member (their notes count the whole plan's writes). Every decision
        that compares a record with others (copies, matching, duplicates) is made over the
        whole read before the first slice, as in any run; a slice only reconciles and writes
        records new to the hub, each on its own."""
        return (
            not self.dry_run
            and not self.event_driven
            and named is None
            and not states
            and not any(r.linked or not r.complete or r.structure.missing for r in reads.values())
            and (recovery is None or not recovery.pending)
            and not self.store.holds_records(pipeline.name, entity)
        )

    def _touched(
        self,
        pipeline: Pipeline,
        entity: str,
        members: list[Member],
        reads: Mapping[str, MemberRead],
        refs: References | None,
    ) -> set[str]:
        """The hub records that need a look this run: dirty ones, ones showing a reference
        this run changed, ones a member changed, dropped or could not read, ones a member
        that can create lacks, and every one a member holds whose sheet lacks a column the
        sync writes."""
        touched: set[str] = set(self.store.dirty_keys(pipeline.name, entity))
        if refs is not None:
            touched |= stale_references(self.store, pipeline, entity, members, refs)
        live: dict[str, set[str]] = {}
        for name, r in reads.items():
            touched.update(r.changed, r.gone, r.blocked)
            if r.fills:  # a column its sheet lacks is filled on every record that has a value
                touched.update(r.unchanged, r.unseen)
            # records a partial read did not list are still there: no member takes them for
            # missing, and none is created again on it
            for key in (*r.changed, *r.unchanged, *r.unseen, *r.gone, *r.blocked):
                live.setdefault(key, set()).add(name)
        for member in members:
            if member.caps.create:
                touched.update(k for k, holders in live.items() if member.name not in holders)
        return touched

    def _narrow_to_events(self, entity: str, reads: Mapping[str, MemberRead]) -> Named | None:
        """In an event-driven run, what of ``entity`` it syncs: only the records its events
        name (``read.Named``); None in any other run, or when no member was read by its
        events."""
        if not self.event_driven:
            return None
        by_events = {
            name for name, r in reads.items() if r.read_pass is not None and r.read_pass.named
        }
        return narrow_to_named(reads, by_events) if by_events else None

    def _relink_vanished(
        self,
        pipeline: Pipeline,
        entity: str,
        members: Sequence[Member],
        reads: Mapping[str, MemberRead],
        ent: EntityPlan,
        decided: Callable[[Observed], bool] = lambda _obs: False,
    ) -> dict[tuple[str, str], str]:
        """Records new on a member that are linked records vanished from it in the same read
        (a Sync ID blanked or mistyped): each takes its hub record back instead of being
        deleted and created again. Ambiguous ones are reported, not synced, and the vanished
        records they name are held (blocked) for this run. Then rows typed in again for
        records deleted there earlier (``_rejoin_kept``; not those a person ``decided`` on).
        Returns the pairs as match hints: (member, native hash) -> hub key."""
        hints: dict[tuple[str, str], str] = {}
        keys = pipeline.match_keys(entity)
        combos = model.entity_spec(entity).relink_keys
        for name, r in reads.items():
            # withheld: missing while the member has unreadable records; a new record that is
            # one of them is still that record (a Sync ID blanked beside a row in error)
            if not ((r.gone or r.withheld) and r.new and (keys or combos)):
                continue
            states = self.store.load_records(pipeline.name, entity, {*r.gone, *r.withheld})
            vanished = {k: rs.base for k, rs in states.items() if not rs.base.get(model.DELETED)}
            relink = Relinking(
                combos, _same_on_some(members), missing={name: r.missing}, match_keys=keys
            )
            found = relink_vanished(name, r.new, vanished, keys, relink)
            if not (found.keys or found.ambiguous):
                continue
            unsynced = {id(obs) for obs, _why in found.ambiguous}
            for obs, why in found.ambiguous:
                ent.issues.append(Issue(entity, name, obs.location, why))
            for key in found.held:
                r.gone.pop(key, None)
                r.blocked.add(key)
            for obs in r.new:
                paired = found.keys.get(id(obs))
                if paired is not None and id(obs) not in unsynced:
                    obs.relinked = True
                    r.gone.pop(paired, None)
                    if r.withheld.pop(paired, None) is not None:
                        r.blocked.discard(paired)
                    hints[(name, obs.native_hash)] = paired
            r.new = [obs for obs in r.new if id(obs) not in unsynced]
            if r.unreadable_count:
                say_withheld(entity, name, ent, r)
            log.info("records re-linked", member=name, entity=entity, records=len(hints))
        hints.update(self._rejoin_kept(pipeline, entity, members, reads, hints, decided))
        return hints

    def _rejoin_kept(
        self,
        pipeline: Pipeline,
        entity: str,
        members: Sequence[Member],
        reads: Mapping[str, MemberRead],
        paired: Mapping[tuple[str, str], str],
        decided: Callable[[Observed], bool],
    ) -> dict[tuple[str, str], str]:
        """Rows typed in again (without a Sync ID, on a member that takes its ids from us: a
        sheet) for records deleted there in an earlier run that a member which cannot delete
        them still holds (HCP keeps payments): each takes that hub record back, one to one,
        instead of becoming a second record of the same money, which HCP's next change to the
        first would bring back beside it. Only what names one record alone counts: a match
        key (an e-mail), or all of the entity's strictest relink combination (a payment's
        invoice, amount, day and method), never a looser one: a new payment of the same
        amount on another day is new money. A row naming several such records, or named
        with another row, or one a person decided on (``decided``), is left new, as before.
        Returns the pairs as match hints: (member, native hash) -> hub key."""
        keys = pipeline.match_keys(entity)
        strictest = model.entity_spec(entity).relink_keys[:1]
        hints: dict[tuple[str, str], str] = {}
        if not (keys or strictest):
            return hints
        kept: dict[str, tuple[model.Record, frozenset[str]]] | None = None
        for member in members:
            typed = [
                obs
                for obs in reads[member.name].new
                if obs.record.provisional
                and not obs.relinked
                and (member.name, obs.native_hash) not in paired
                and not decided(obs)
            ]
            if not (typed and member.caps.assigns_ids):
                continue
            if kept is None:
                kept = self._deleted_kept(pipeline, entity, members)
            kept_here = {
                k: base for k, (base, holders) in kept.items() if member.name not in holders
            }
            if not kept_here:
                continue
            relink = Relinking(
                strictest,
                _same_on_some(members),
                missing={member.name: reads[member.name].missing},
                match_keys=keys,
            )
            found = relink_vanished(member.name, typed, kept_here, keys, relink)
            taken = 0
            for obs in typed:
                key = found.keys.get(id(obs))
                if key is not None:
                    obs.relinked = True
                    hints[(member.name, obs.native_hash)] = key
                    taken += 1
            if taken:
                log.info(
                    "rows typed again took back their deleted records",
                    member=member.name,
                    entity=entity,
                    records=taken,
                )
        return hints

    def _deleted_kept(
        self, pipeline: Pipeline, entity: str, members: Sequence[Member]
    ) -> dict[str, tuple[model.Record, frozenset[str]]]:
        """key -> (base without the deleted mark, the members holding it) of the records the
        hub holds deleted that some member of the entity still holds (one that cannot delete
        them): what a row typed in again elsewhere may be. Looked for among the records with
        a skipped write on record (such a delete leaves one: "cannot delete payments"), not
        among every record of the entity."""
        skipped = self.store.skipped_keys(pipeline.name, entity)
        flagged = self.store.keys_flagged(pipeline.name, entity, skipped, model.DELETED)
        out: dict[str, tuple[model.Record, frozenset[str]]] = {}
        names = {m.name for m in members}
        for key, rs in self.store.load_records(pipeline.name, entity, flagged).items():
            holders = frozenset(
                m for m, ln in rs.links.items() if m in names and ln.native_id and not ln.tombstone
            )
            if rs.base.get(model.DELETED) and holders:
                out[key] = ({k: v for k, v in rs.base.items() if k != model.DELETED}, holders)
        return out

    def _match_new(
        self,
        pipeline: Pipeline,
        entity: str,
        members: list[Member],
        reads: Mapping[str, MemberRead],
        recovery: Recovery | None,
        ent: EntityPlan,
        relinked: Mapping[tuple[str, str], str] | None = None,
        decisions: Decisions | None = None,
        parked: Parked | None = None,
    ) -> MatchResult:
        """Link the records new on a member to hub records by match keys (ambiguous ones
        are reported, left alone and told to ``parked`` for a person's review);
        ``relinked`` pairs are taken as they are, and a person's ``decisions`` are acted on."""
        new_records = {name: r.new for name, r in reads.items() if r.new}
        if not new_records:
            return MatchResult()
        unreadable = {name: r.unreadable for name, r in reads.items() if r.unreadable}
        keys = pipeline.match_keys(entity)
        hints = {**(recovery.match if recovery else {}), **(relinked or {})} or None
        released = {(m, k) for (m, _h), k in (relinked or {}).items()}
        relinking = self._relinking(entity, members, reads, keys)
        decisions = decisions or Decisions()
        linked_to = decisions.linked_keys()
        existing = (
            (
                rs.key,
                rs.base,
                frozenset(
                    m
                    for m, ln in rs.links.items()
                    if ln.native_id and not ln.tombstone and (m, rs.key) not in released
                ),
            )
            for rs in self._candidates(
                pipeline, entity, new_records, keys, hints, relinking, linked_to
            )
        )

        def decided(obs: Observed) -> tuple[str, str | None] | None:
            found = decisions.of(obs)
            if found is None:
                return None
            refused = found.refused()
            if refused is not None:
                return ("refuse", refused)
            return ("link" if found.kind == "linked" else "separate", found.hub_key)

        result = match(
            [m.name for m in members],
            new_records,
            existing,
            keys,
            hints=hints,
            relink=relinking,
            unreadable=unreadable,
            decided=decided if decisions else None,
        )
        missing = _blind_candidates(reads)
        if missing and keys:
            paired = set(hints or {})
            blind = hold_blind(
                result, missing, keys, lambda obs: (obs.member, obs.native_hash) in paired
            )
            if blind.held:
                for name, lacking in blind.lacking.items():
                    reads[name].unfilled = frozenset(lacking)
                ent.waiting = _report_blind(entity, members, reads, blind, ent, keys)
        for obs, why in result.ambiguous:
            ent.issues.append(Issue(entity, obs.member, obs.location, why))
            if parked is not None:
                if decisions.changed(obs):
                    why = f"it changed since it was decided on, so it is asked again: {why}"
                found = decisions.of(obs)
                kept = list(found.candidates) if found is not None else []
                parked.add(obs, why, result.candidates.get(id(obs), kept))
        return result

    def _candidates(
        self,
        pipeline: Pipeline,
        entity: str,
        new_records: Mapping[str, Sequence[Observed]],
        keys: Sequence[str],
        hints: Mapping[tuple[str, str], str] | None,
        relinking: Relinking | None,
        also: set[str] | None = None,
    ) -> Iterable[RecordState]:
        """The hub records new records may be matched to. Without match keys (payments),
        recovery hints or relinking, there are none: the hub is not walked. A few new records
        with text match keys look their candidates up by value; relinking (which compares
        other fields too) and many new records walk every hub record."""
        if not (keys or hints or relinking or also):
            return ()
        if relinking is None:
            values: dict[str, list[str]] = {name: [] for name in keys}
            plain = True
            for records in new_records.values():
                for obs in records:
                    for name in keys:
                        value = obs.canonical.get(name)
                        if isinstance(value, str) and value and "\x00" not in value:
                            values[name].append(value)
                        elif value not in (None, ""):
                            plain = False  # not plain text: compared as stored, walk instead
            looked_up = sum(len(v) for v in values.values())
            if plain and looked_up <= CANDIDATES_LOOKED_UP:
                try:
                    found = self.store.records_holding(pipeline.name, entity, values)
                except StateUnavailableError:
                    raise
                except StateError as exc:  # PostgreSQL: a stored text it cannot extract
                    log.info("match candidates walked", entity=entity, reason=str(exc))
                else:
                    hinted = {key for key in (hints or {}).values() if key not in found}
                    hinted |= {key for key in also or () if key not in found}
                    found.update(self.store.load_records(pipeline.name, entity, hinted))
                    return found.values()
        return self.store.iter_records(pipeline.name, entity)

    @staticmethod
    def _relinking(
        entity: str,
        members: Sequence[Member],
        reads: Mapping[str, MemberRead],
        match_keys: Sequence[str],
    ) -> Relinking | None:
        """How to re-link when the state knows nothing of records a member already holds
        (a lost or restored state store, a first sync of members that both hold records): a
        member that holds records none of which is linked, or a member that names records by
        ids the hub does not know (a sheet's Sync IDs); and while a member has unlinked rows
        in error, which records new elsewhere are compared with by the relink keys too (a
        payment has no match key). None otherwise."""
        spec = model.entity_spec(entity)
        ids = {
            id(obs): obs.record.id
            for m in members
            if m.caps.assigns_ids
            for obs in reads[m.name].new
            if not obs.record.provisional and not obs.relinked
        }
        unknown = any((r.linked == 0 and r.count > 0) or r.unreadable for r in reads.values())
        if not (ids or unknown):
            return None
        missing = {name: r.missing for name, r in reads.items() if r.missing}
        return Relinking(spec.relink_keys, _same_on_some(members), ids, missing, match_keys)

    @staticmethod
    def _fetch_referring_unseen(
        entity: str,
        members: list[Member],
        reads: Mapping[str, MemberRead],
        ent: EntityPlan,
        touched: set[str],
        states: Mapping[str, RecordState],
    ) -> None:
        """Whether a record shows a reference by an outdated human key (a customer's former
        e-mail) can only be told from the record itself: fetch the touched ones a partial
        read did not list."""
        for member in members:
            r = reads[member.name]
            if not (r.unseen and member.refs is not None and member.refs.by_value):
                continue
            for key in touched & r.unseen.keys():
                link = states[key].links.get(member.name) if key in states else None
                fetch_unseen(
                    entity, member, ent, r, key, r.unseen[key], link.native_hash if link else None
                )

    def _context(
        self,
        pipeline: Pipeline,
        entity: str,
        members: list[Member],
        reads: Mapping[str, MemberRead],
        *,
        hold: bool = False,
        wanted: Mapping[str, Iterable[str]] | None = None,
    ) -> Context:
        """What reconcile needs of the entity, the pipeline and the state, as plain data
        (``hold``: deletes are held, so their users are counted later, not now). Where a
        member's period is closed, the skipped writes on record come along (``locks``). A
        member showing references by value gets how the records ``wanted`` are shown (target
        entity -> hub keys: those the records planned refer to), not every record's."""
        locks = locks_for(pipeline.locks, entity)
        return Context(
            entity=model.entity_spec(entity),
            members=tuple(m.name for m in members),
            mappings={m.name: m.mapping for m in members},
            caps={m.name: m.caps for m in members},
            types={m.name: m.type for m in members},
            rules=lambda f: pipeline.conflict_rules(entity, f),
            propagate_deletes=pipeline.section.deletes.propagate,
            hold_deletes=pipeline.section.deletes.approve,
            approved=self._approved(pipeline, entity)
            if pipeline.section.deletes.approve
            else frozenset(),
            parked=self.store.open_conflict_fields(pipeline.name, entity),
            unfilled={name: r.unfilled for name, r in reads.items() if r.unfilled},
            refs={m.name: m.refs.snapshot(wanted) for m in members if m.refs is not None},
            users=None if hold else users_if_deleting(self.store, pipeline, entity, reads),
            locks=locks,
            skipped=self._skips_on_record(pipeline, entity) if locks else {},
        )

    def _through(
        self,
        pipeline: Pipeline,
        entity: str,
        ctx: Context,
        keys: Iterable[str],
        states: Mapping[str, RecordState],
        reads: Mapping[str, MemberRead],
        refs: References | None,
    ) -> dict[str, Through]:
        """What the lock rule needs to date the records of an entity that takes its day from
        another (a line from its invoice, ``locks.DATED_THROUGH``): for each locked member,
        every invoice the lines planned now refer to (as the hub holds them, as each member
        shows them now), in two versions: the hub's base once this run planned the invoices
        (they are planned, and applied, before their lines; a dry run lays its plan over the
        state) and what the locked member holds of it (its link's last-seen). An invoice new
        in this run is dated by the hub alone; one moved across the lock by both sides."""
        ref, target = dated_through(entity) or ("", "")
        wanted: set[str] = set()

        def note(record: Mapping[str, Any] | None) -> None:
            value = record.get(ref) if record else None
            if isinstance(value, str):
                wanted.add(value)

        for key in keys:
            rs = states.get(key)
            if rs is not None:
                note(rs.base)
                for held in rs.links.values():
                    note(held.last_seen)
            for r in reads.values():
                if key in r.changed:
                    note(r.changed[key].canonical)
        for r in reads.values():
            for obs in r.new:
                note(obs.canonical)
        found = self.store.load_records(pipeline.name, target, wanted) if wanted else {}
        plan = refs.plans.get(target) if refs is not None and refs.dry_run else None
        planned = {kp.key: kp.base_after for kp in plan.keys} if plan is not None else {}
        out: dict[str, Through] = {}
        for member in ctx.locks:
            versions: dict[str, list[Mapping[str, Any] | None]] = {}
            for key in wanted:
                rs = found.get(key)
                link = rs.links.get(member) if rs is not None else None
                base = planned.get(key, rs.base if rs is not None else None)
                versions[key] = [base, link.last_seen if link is not None else None]
            out[member] = versions
        return out

    def _approved(self, pipeline: Pipeline, entity: str) -> set[str]:
        """The keys whose delete a person approved (none where no delete of the entity was
        held or approved when the run started: there is none to approve)."""
        if not self._queues.holds(entity, "held", "approved"):
            return set()
        return approved_keys(self.store, pipeline.name, entity)

    def _skips_on_record(self, pipeline: Pipeline, entity: str) -> dict[str, dict[str, str]]:
        """key -> member -> reason of the entity's skipped writes on record."""
        out: dict[str, dict[str, str]] = {}
        for row in self.store.skipped(pipeline.name):
            if row.entity == entity:
                out.setdefault(row.key, {})[row.member] = row.reason
        return out

    def _plan_keys(
        self,
        pipeline: Pipeline,
        ent: EntityPlan,
        members: list[Member],
        reads: Mapping[str, MemberRead],
        states: Mapping[str, RecordState],
        matched: MatchResult,
        touched: set[str],
        recovery: Recovery | None,
        planned: PlannedEntity | None = None,
        hold: bool = False,
        named: Named | None = None,
        refs: References | None = None,
        slices: Slices | None = None,
    ) -> set[str]:
        """Reconcile every hub record that needs a look into ``ent.keys``. Returns the
        members whose change of some record the plan leaves out (see ``_untaken``). With
        ``hold``, the plans deleting a record some member dropped are also kept, with what
        deciding them again needs, in ``planned.held``. In an event-driven run (``named``),
        a record it would create on a member read by its events is left as it is. With
        ``slices`` (a first sync), the keys are applied as they are planned, a slice at a
        time, and the records read for them let go of once applied."""
        groups = matched.groups
        ordered = _in_read_order(touched, groups)
        untaken: set[str] = set()
        if not ordered:
            return untaken
        wanted = referenced(
            ent.entity, _records_read(ordered, states, reads, groups, [m.name for m in members])
        )
        ctx = self._context(pipeline, ent.entity, members, reads, hold=hold, wanted=wanted)
        if ctx.locks and dated_through(ent.entity) is not None:
            ctx = replace(
                ctx, through=self._through(pipeline, ent.entity, ctx, ordered, states, reads, refs)
            )
        by_name = {m.name: m for m in members}
        if slices is not None:
            # each record read is held by its key's group alone from here: once its slice is
            # applied, nothing refers to it
            for r in reads.values():
                r.new = []
            slices.total = len(ordered)

        def views_of(key: str, rs: RecordState | None) -> dict[str, MemberView]:
            views = member_views(key, rs, reads, groups.get(key, {}), members)
            if recovery is not None:
                recovery.apply_written_hints(ent.entity, key, views)
            # a record fetched, or a hint, may refer to a record not looked up yet
            more = referenced(ent.entity, _records_of(rs.base if rs else None, views))
            for m in members:
                if m.refs is not None and m.name in ctx.refs:
                    m.refs.fill(ctx.refs[m.name], more)
            return views

        def plan_key(key: str) -> None:
            """Reconcile one hub record into ``ent.keys``, or report why it is left."""
            rs = states.get(key)
            if rs is None and key not in groups:
                return
            views = views_of(key, rs)
            try:
                kp = reconcile(ctx, key, rs.base if rs else None, views, new_key=rs is None)
                unread = sorted(
                    {
                        a.member
                        for a in kp.actions
                        if isinstance(a, Update) and views[a.member].native is None
                    }
                )
                if unread:
                    # updates of records a partial read did not list: fetch them and plan the
                    # record again, so that the patch goes onto what the member holds (not
                    # onto nothing) and a record deleted there meets the edit as a conflict
                    for name in unread:
                        link = rs.links.get(name) if rs else None
                        fetch_unseen(
                            ent.entity,
                            by_name[name],
                            ent,
                            reads[name],
                            key,
                            views[name].native_id or "",
                            link.native_hash if link else None,
                        )
                    views = views_of(key, rs)
                    kp = reconcile(ctx, key, rs.base if rs else None, views, new_key=rs is None)
            except FixedFieldChanged as exc:  # a line moved to another invoice, ...
                ent.issues.append(Issue(ent.entity, exc.member, exc.where or key, str(exc)))
                untaken.update(_untaken(None, views))
                return
            except RecordError as exc:
                # a value one member cannot take (a tag holding the list separator, ...):
                # report this record, leave it as it is everywhere, plan the rest
                where = next((v.location for v in views.values() if v.location), key)
                ent.issues.append(Issue(ent.entity, exc.location or "", where, str(exc)))
                untaken.update(_untaken(None, views))
                return
            if named is not None and named.leaves(kp):
                untaken.update(_untaken(None, views))
                return
            untaken.update(_untaken(kp, views))
            if kp.changes_state:
                ent.keys.append(kp)
                if hold and planned is not None and rs is not None and _deletes(kp, views):
                    planned.held.append(HeldDelete(key, rs, dict(views), kp))

        settle_every = collector.SETTLE_EVERY
        for i, key in enumerate(ordered, 1):
            plan_key(key)
            if i % settle_every == 0:
                # planned so far, held until the entity is applied (no pass first: what
                # planning makes is freed by reference counting, see ``SyncCollector.settle``)
                COLLECTOR.settle(collect=False)
            # the plan holds what it needs of the records read for this key (a write's own
            # native record, the canonical record as last seen): the read's native records
            # need not stay beside the rest of the plan
            for obs in groups.get(key, {}).values():
                obs.release_native()
            for r in reads.values():
                changed = r.changed.get(key)
                if changed is not None:
                    changed.release_native()
            if slices is not None:
                groups.pop(key, None)
                if slices.due(ent):
                    slices.apply(ent)
        if slices is not None and slices.applied and ent.after_compaction():
            # the last slice (a smaller entity is applied whole, as planned)
            slices.apply(ent, last=True)
        return untaken


def _read_order(members: Sequence[Member], *, first: bool) -> list[Member]:
    """The order the members of an entity are read in: the pipeline's, but in a first sync of
    the entity (the hub holds none of its records, and no interrupted create of it waits to be
    settled from the reads) the members whose reads cost requests (they
    read ahead, as HCP does) come last. A spreadsheet or a CRM read first and found empty of
    the entity tells that the records of the large read cannot be paired with any: they keep
    only the fields matching compares among themselves (``read.kept_fields``)."""
    if not first:
        return list(members)
    return sorted(members, key=lambda m: m.connector.reads_ahead)


def _in_read_order(touched: set[str], groups: Mapping[str, Mapping[str, Observed]]) -> list[str]:
    """The keys to plan: those ``touched``, then the new records' keys in the order their
    member listed them (a sheet gets HCP's order). The positions are let go of once sorted:
    a dict of every key, held through a first sync's slices, is no part of the plan."""
    position: dict[str, int] = {}
    for key, group in groups.items():
        for obs in group.values():
            position[key] = min(position.get(key, obs.order), obs.order)
    return sorted(touched | set(groups), key=lambda k: (position.get(k, -1), k))


def _location_of(members: Sequence[Member], entity: str, name: str, native_id: str) -> str | None:
    """Where member ``name`` holds the record ``native_id`` (a sheet's row), for a message
    about it; None where the member does not give ids of its own (a lookup there costs a
    request) or cannot find it."""
    member = next((m for m in members if m.name == name), None)
    if member is None or not member.caps.assigns_ids:
        return None
    try:
        found = member.connector.get(entity, native_id)
    except SyncEngineError:
        return None
    return found.location if found is not None and found.location else None


def _records_of(
    base: Mapping[str, Any] | None, views: Mapping[str, MemberView]
) -> Iterator[Mapping[str, Any] | None]:
    """What reconciling a key starts from: its base and each member's current and
    last-seen record (the references of its new base are among theirs)."""
    yield base
    for view in views.values():
        yield view.current
        yield view.last_seen


def _records_read(
    keys: Iterable[str],
    states: Mapping[str, RecordState],
    reads: Mapping[str, MemberRead],
    groups: Mapping[str, Mapping[str, Observed]],
    members: Sequence[str],
) -> Iterator[Mapping[str, Any] | None]:
    """``_records_of`` every key, from the state and the reads, before their views are made."""
    for key in keys:
        rs = states.get(key)
        if rs is not None:
            yield rs.base
            for link in rs.links.values():
                yield link.last_seen
        for obs in groups.get(key, {}).values():
            yield obs.canonical
        for name in members:
            changed = reads[name].changed.get(key)
            if changed is not None:
                yield changed.canonical


def _blind_candidates(reads: Mapping[str, MemberRead]) -> dict[str, frozenset[str]]:
    """member -> the columns its sheet lacks, for sheets the sync wrote before, which had
    every mapped column then: records linked to it, or rows carrying Sync IDs (a lost or
    restored state store). A column a sheet typed by hand never had hides no value, so
    matching is not blind there: it is added and filled as any missing column. Nor is it
    for a field none of an API's records showed (``Structure.listed``): an API leaves out
    the fields a record has empty, so holding its records back for a person would stop
    every CRM whose contacts all lack, say, a phone."""
    return {
        name: r.missing
        for name, r in reads.items()
        if r.missing
        and not r.structure.listed
        and (r.linked or any(not obs.record.provisional for obs in r.new))
    }


def _report_blind(
    entity: str,
    members: Sequence[Member],
    reads: Mapping[str, MemberRead],
    blind: Blind,
    ent: EntityPlan,
    match_keys: Sequence[str],
) -> Waiting:
    """Say why records new to the hub wait (``match.hold_blind``): on each blind member,
    which columns are missing and what to do; on the others, how many of theirs wait.
    Returns what they wait for, and which they are."""
    gone: list[str] = []
    for m in members:
        if m.name not in blind.lacking:
            continue
        structure = reads[m.name].structure
        columns = [f.native for f in m.mapping.fields if f.canonical in blind.lacking[m.name]]
        where = structure.where or m.name
        gone += [f"{c} of {where}" for c in columns]
        named = " and ".join(columns)
        one = len(columns) == 1
        which = f"column {named} is" if one else f"columns {named} are"
        it, back = ("it", "it is") if one else ("them", "they are")
        waiting = plural(len(blind.held.get(m.name, [])), entity[:-1], entity)
        ent.issues.append(
            Issue(
                entity,
                m.name,
                structure.where,
                f"{which} missing, and {entity} are matched by {it}: {waiting} here not "
                f"linked yet, and the {entity} new elsewhere that could be one of them, wait "
                f"until {back} back, so that none is added twice. Rename the "
                f"{'column' if one else 'columns'} back to {named}, or add {it} (empty, if "
                f"these rows have no value there); the sync does not add {it} back while "
                "they wait",
            )
        )
    for name, records in sorted(blind.held.items()):
        if name not in blind.lacking:
            count = len(records)
            ent.issues.append(
                Issue(
                    entity,
                    name,
                    "",
                    f"{plural(count, 'new ' + entity[:-1], 'new ' + entity)} "
                    f"{'waits' if count == 1 else 'wait'} for the missing "
                    f"{'column' if len(gone) == 1 else 'columns'} {' and '.join(gone)} "
                    f"(see that error): {entity} are matched by {_them(gone)}",
                )
            )
    held = [obs for records in blind.held.values() for obs in records]
    return Waiting(
        f"the missing {'column' if len(gone) == 1 else 'columns'} {' and '.join(gone)}",
        len(gone),
        frozenset(blind.lacking),
        frozenset(k for keys in blind.lacking.values() for k in keys),
        {name: frozenset(o.record.id for o in records) for name, records in blind.held.items()},
        {
            key: frozenset(v for o in held if isinstance(v := o.canonical.get(key), Hashable))
            for key in match_keys
        },
    )


def _them(items: Sequence[str]) -> str:
    return "it" if len(items) == 1 else "them"


def _deletes(kp: KeyPlan, views: Mapping[str, MemberView]) -> bool:
    """Whether the plan deletes the record: a member dropped it this run, or a delete the
    hub decided earlier is carried out (again) where the record is still held."""
    if any(isinstance(a, Delete) for a in kp.actions):
        return True
    gone = any(v.status == "gone" for v in views.values())
    return gone and (kp.base_after is None or bool(kp.base_after.get(model.DELETED)))


def _untaken(kp: KeyPlan | None, views: Mapping[str, MemberView]) -> set[str]:
    """The members whose change of this record the plan leaves out: every member that
    changed, added or dropped it when the record is left alone (``kp`` None: it could not be
    planned, or a member could not read it), else a member that dropped it whose link stays
    (a delete that waits for the records referring to it)."""
    if kp is None or any(v.status == "blocked" for v in views.values()):
        return {m for m, v in views.items() if v.status in ("changed", "new", "gone")}
    return {m for m, v in views.items() if v.status == "gone" and m not in kp.links}


def _same_on_some(members: Sequence[Member]) -> Callable[[str, Any, Any], bool]:
    """Whether two values of a field are the same on some member of the pipeline (a date
    and a timestamp of that day, on a sheet that holds dates)."""

    def same(name: str, a: Any, b: Any) -> bool:
        return any(m.mapping.equivalent(name, a, b) for m in members)

    return same
