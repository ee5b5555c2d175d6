"""The sync engine: read → map → detect → match → reconcile → plan, then apply → commit.

``Engine.sync(pipeline)`` runs one pipeline over its entities in dependency order. The stages
up to the plan only read; ``dry_run=True`` stops there and writes nothing anywhere, neither
to a member nor to the state store. Apply goes through the write-ahead journal in batches:

1. the batch's intents are committed (``pending``) before any member is called;
2. the actions run (bounded concurrency for members that write through);
3. one transaction records the outcomes: links, last-seen versions, the base.

Members that buffer writes (a spreadsheet file) make them durable in ``flush``; the state of
the keys they touch is committed only after the flush succeeded, and a failed write marks
the member's link dirty so that the next run writes it again instead of forgetting it.

Members that read incrementally (``Connector.read_incremental``) may list only the records
changed since their read mark. A linked record such a partial pass does not list is unchanged,
not gone: it counts as present with what was last seen of it, and it is fetched by id only
when it is to be updated (the patch must go onto the whole record). Deletes are seen by the
complete passes the connector makes from time to time. A member's new mark is stored only
after the entity was committed with every record the pass listed taken into the plan and no
write on that member failed; a dry run never stores one.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import gc
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from syncengine import model
from syncengine.config import Config, Pipeline
from syncengine.connector import (
    Capabilities,
    Connector,
    NativeData,
    NativeRecord,
    ReadPass,
    check_allowed,
)
from syncengine.display import label_of
from syncengine.errors import (
    AuthError,
    ConnectorError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
    SyncEngineError,
    SyncStopped,
)
from syncengine.logging import redact_text
from syncengine.mapping import EntityMapping
from syncengine.match import Observed, match
from syncengine.plan import (
    Action,
    Create,
    Delete,
    EntityPlan,
    Issue,
    KeyPlan,
    LinkPlan,
    Plan,
    Update,
)
from syncengine.reconcile import Context, MemberView, reconcile
from syncengine.refs import MemberRefs, References
from syncengine.state import RecordState, StateStore

log = structlog.get_logger("syncengine.engine")
T = TypeVar("T")
MAX_REPORTED = 200
"""Record-level problems listed per entity in JSON output and run history (all are counted)."""

ProgressFn = Callable[[str, int, int | None], None]
"""(what, done, total or None) — called while reading and applying."""


class _GcThreshold:
    """The young-generation GC threshold raised while any sync of this process runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: tuple[int, ...] = ()

    def enter(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(max(self._saved[0], 50_000), *self._saved[1:])
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._saved:
                gc.set_threshold(*self._saved)


_GC = _GcThreshold()


@dataclass
class Member:
    name: str
    connector: Connector
    mapping: EntityMapping
    caps: Capabilities
    type: str
    refs: MemberRefs | None = None
    read_pass: ReadPass | None = None
    """The incremental pass this entity was read with (None: a plain ``read``)."""
    mark: str | None = None
    """The read mark to store once the entity is committed without a failure on this member:
    the pass's token, kept only when everything the pass showed was taken into the plan."""
    reread: bool = False
    """A record the partial read did not list turned out to be missing: the read mark is
    dropped once the entity is committed, so that the next read is complete (and sees it
    gone)."""

    @property
    def buffered(self) -> bool:
        return bool(self.connector.buffered_writes)


@dataclass
class EntityOutcome:
    plan: EntityPlan
    applied: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Issue] = field(default_factory=list)


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

    @property
    def failures(self) -> list[Issue]:
        return [f for o in self.outcomes for f in o.failures]

    @property
    def exit_code(self) -> int:
        if self.guard:
            return 3
        issues = any(ep.issues for ep in self.plan.entities) or self.failures
        if issues or self.open_conflicts:
            return 1
        return 0

    @property
    def outcome(self) -> str:
        """One word for run history: ok, conflicts, errors, guard or failed."""
        if self.error:
            return "stopped" if self.error.startswith("SyncStopped") else "failed"
        if self.guard:
            return "guard"
        if any(ep.issues for ep in self.plan.entities) or self.failures:
            return "errors"
        return "conflicts" if self.open_conflicts else "ok"

    def to_json(self) -> dict[str, Any]:
        entities: dict[str, Any] = {}
        for outcome in self.outcomes:
            counts = outcome.plan.counts()
            counts["failed"] = len(outcome.failures)
            counts["problems"] = [
                {"member": i.member, "location": i.location, "message": i.message, "kind": kind}
                for kind, items in (("error", outcome.plan.issues), ("failed", outcome.failures))
                for i in items
            ][:MAX_REPORTED]
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


@dataclass
class _Read:
    """What one member's read of one entity produced."""

    changed: dict[str, Observed] = field(default_factory=dict)
    unchanged: dict[str, tuple[str, NativeData, str]] = field(default_factory=dict)
    """key -> (native_id, native record, native hash): no need to map it again."""
    new: list[Observed] = field(default_factory=list)
    gone: dict[str, str] = field(default_factory=dict)
    """key -> native_id of records linked but no longer there (complete reads only)."""
    unseen: dict[str, str] = field(default_factory=dict)
    """key -> native_id of records linked but not listed by a partial read: unchanged since
    the read mark, not gone."""
    blocked: set[str] = field(default_factory=set)
    linked: int = 0
    count: int = 0
    complete: bool = True
    """False for an incremental pass that listed only what changed since the read mark."""


@dataclass
class _Recovery:
    match: dict[tuple[str, str], str] = field(default_factory=dict)
    """(member, native hash of a provisional record) -> the key it was being given."""
    written: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    """(entity, key, member) -> canonical values an interrupted update was writing."""
    updates: dict[str, list[int]] = field(default_factory=dict)
    """entity -> ids of the interrupted update intents, finished once the entity commits."""


def _apply_written_hints(
    entity: str,
    key: str,
    views: dict[str, MemberView],
    written: dict[tuple[str, str, str], dict[str, Any]],
) -> None:
    """Where a member holds exactly what an interrupted update wrote, count it as seen."""
    for member, view in views.items():
        values = written.get((entity, key, member))
        if not values or not view.present or view.current is None or view.last_seen is None:
            continue
        seen = dict(view.last_seen or {})
        for name, value in values.items():
            if view.current.get(name) == value:
                seen[name] = value
        view.last_seen = seen


class _Writes:
    """State changes of one batch, sent as a few bulk statements instead of one per record."""

    def __init__(self, tx: Any) -> None:
        self.tx = tx
        self.records: list[dict[str, Any]] = []
        self.links: list[dict[str, Any]] = []
        self.unlinks: list[tuple[str, str, str, str]] = []
        self.dirty: list[tuple[str, str, str, set[str] | None]] = []
        self.conflicts: list[tuple[Any, ...]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.skips: list[tuple[str, str, str, dict[str, str]]] = []

    def put_record(self, pipeline: str, entity: str, key: str, base: model.Record) -> None:
        self.records.append({"pipeline": pipeline, "entity": entity, "key": key, "base": base})

    def put_link(
        self,
        pipeline: str,
        entity: str,
        key: str,
        member: str,
        *,
        native_id: str | None,
        native_hash: str | None,
        last_seen: model.Record | None,
        dirty: bool = False,
        tombstone: bool = False,
    ) -> None:
        self.links.append(
            {
                "pipeline": pipeline,
                "entity": entity,
                "key": key,
                "member": member,
                "native_id": native_id,
                "native_hash": native_hash,
                "last_seen": last_seen,
                "dirty": dirty,
                "tombstone": tombstone,
            }
        )

    def flush(self) -> None:
        tx = self.tx
        if self.records:
            tx.put_records(self.records)
        for unlink in self.unlinks:
            tx.delete_link(*unlink)
        if self.links:
            tx.put_links(self.links)
        for pipeline, entity, key, members in self.dirty:
            tx.set_dirty(pipeline, entity, key, members)
        for conflict in self.conflicts:
            tx.add_conflict(*conflict)
        for deleted in self.deleted:
            tx.delete_record(*deleted)
        for skip in self.skips:
            tx.set_skips(*skip)


class Engine:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        *,
        dry_run: bool = False,
        connector_extra: dict[str, dict[str, Any]] | None = None,
        progress: ProgressFn | None = None,
        allow_mass_delete: bool = False,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.dry_run = dry_run
        self.connector_extra = connector_extra or {}
        self.progress = progress or (lambda what, done, total: None)
        self.allow_mass_delete = allow_mass_delete
        self.stop = stop
        """Set it to stop at the next batch boundary: the batch in flight is applied and
        committed (buffered members flushed), then ``SyncStopped`` is raised."""

    # ------------------------------------------------------------------------------ entry
    def sync(self, pipeline: Pipeline, entities: Sequence[str] | None = None) -> SyncResult:
        # A sync allocates many long-lived small objects (one entity's records) and no
        # reference cycles of note: collect the young generation less often while it runs.
        # Several syncs may overlap in one process (the daemon): the first raises the
        # threshold, the last restores it.
        _GC.enter()
        try:
            with structlog.contextvars.bound_contextvars(pipeline=pipeline.name, run_id=None):
                return self._sync(pipeline, entities)
        finally:
            _GC.leave()

    def _sync(self, pipeline: Pipeline, entities: Sequence[str] | None) -> SyncResult:
        started = time.monotonic()
        run_uuid = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(run_id=run_uuid)  # every line of this run
        plan = Plan(pipeline.name, self.dry_run)
        result = SyncResult(pipeline.name, self.dry_run, run_uuid, plan)
        bound = log.bind(pipeline=pipeline.name, run_id=run_uuid, dry_run=self.dry_run)
        connectors = {
            m: self.config.make_connector(m, self.connector_extra.get(m)) for m in pipeline.members
        }
        run_row: int | None = None
        try:
            if not self.dry_run:
                with self.store.transaction() as tx:
                    run_row = tx.start_run(pipeline.name, False, run_uuid)
            refs = References(self.store, pipeline.name, dry_run=self.dry_run)
            recovery = self._recover(pipeline, connectors, result, refs)
            wanted = [e for e in pipeline.entities if entities is None or e in entities]
            for entity in wanted:
                self._check_stop()
                members = [
                    self._member(pipeline, connectors[m], entity, refs) for m in pipeline.members
                ]
                ent_plan = self.plan_entity(pipeline, entity, members, recovery, refs)
                plan.entities.append(ent_plan)
                outcome = EntityOutcome(ent_plan)
                result.outcomes.append(outcome)
                bound.info(
                    "planned",
                    entity=entity,
                    actions=len(ent_plan.actions),
                    conflicts=len(ent_plan.conflicts),
                    issues=len(ent_plan.issues),
                    guard=ent_plan.guard,
                )
                if ent_plan.guard:
                    result.guard = ent_plan.guard
                    refs.planned(ent_plan)
                    continue
                if not self.dry_run:
                    self.apply_entity(pipeline, members, ent_plan, outcome, run_uuid)
                    settled = recovery.updates.pop(entity, [])
                    if settled:  # the entity's state now reflects them
                        with self.store.transaction() as tx:
                            tx.finish_intents([{"id": i, "state": "abandoned"} for i in settled])
                    self._store_marks(pipeline, entity, members, outcome)
                refs.planned(ent_plan)  # entities referring to this one see its new state
            if not self.dry_run:
                self._settle_waiting_deletes(pipeline, plan.entities)
            result.open_conflicts = len(self.store.open_conflicts(pipeline.name)) + (
                sum(1 for c in plan.entities for x in c.conflicts if x.winner is None)
                if self.dry_run
                else 0
            )
            return result
        except BaseException as exc:
            result.error = redact_text(f"{type(exc).__name__}: {exc}", self.config.secrets)
            raise
        finally:
            result.duration_s = time.monotonic() - started
            for conn in connectors.values():
                try:
                    conn.close()
                except Exception as exc:  # closing must not hide the real outcome
                    bound.warning("close failed", connector=conn.name, error=str(exc))
            if run_row is not None:
                errors = [
                    i.describe() for o in result.outcomes for i in (o.plan.issues + o.failures)
                ][:MAX_REPORTED]
                if result.error:
                    errors.insert(0, result.error)
                with self.store.transaction() as tx:
                    tx.finish_run(run_row, result.outcome, result.to_json()["entities"], errors)
                    retention = dt.timedelta(days=self.config.journal_retention_days)
                    tx.prune_journal(pipeline.name, dt.datetime.now(dt.UTC) - retention)
            if result.error:
                bound.error("failed", error=result.error, seconds=round(result.duration_s, 3))
            else:
                bound.info(
                    "finished", exit_code=result.exit_code, seconds=round(result.duration_s, 3)
                )

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise SyncStopped(
                "stopped on request; what was applied is committed, the next run goes on from there"
            )

    def _member(
        self, pipeline: Pipeline, connector: Connector, entity: str, refs: References | None = None
    ) -> Member:
        if entity not in connector.entities():
            raise FatalConnectorError(
                f"{connector.type_name} does not hold {entity}; remove it from the pipeline "
                "or the member",
                connector=connector.name,
                entity=entity,
            )
        mapping = pipeline.mappings[(connector.name, entity)]
        connector.prepare(entity, mapping)
        return Member(
            connector.name,
            connector,
            mapping,
            connector.capabilities(entity),
            connector.type_name,
            refs.for_member(connector.name, mapping) if refs else None,
        )

    # --------------------------------------------------------------------------- recovery
    def _recover(
        self,
        pipeline: Pipeline,
        connectors: dict[str, Connector],
        result: SyncResult,
        refs: References | None = None,
    ) -> _Recovery:
        """Settle the writes an interrupted run left pending.

        - A create is looked up on its target (by id where the engine chose it, else by the
          data it carried). Found: it is linked, with what was written as its last-seen
          version, so that an edit made since then is still seen as an edit. Not found: it
          is abandoned and planned again.
        - An update may or may not have reached the member. Its intended values become
          hints: where the member now holds exactly them, they count as our own write, not
          as an edit of the member's (which could otherwise win a conflict against a newer
          edit elsewhere). These intents stay pending until the entity's state is committed.
        - A provisional record's id assignment becomes a match hint for that record.
        """
        recovery = _Recovery()
        intents = self.store.pending_intents(pipeline.name)
        result.pending_recovery = len(intents)
        for intent in intents:
            if intent.op == "update":
                if intent.payload.get("assign_id") and intent.payload.get("native_hash"):
                    recovery.match[(intent.member, intent.payload["native_hash"])] = intent.key
                values = intent.payload.get("values") or {}
                if values:
                    recovery.written.setdefault(
                        (intent.entity, intent.key, intent.member), {}
                    ).update(values)
                recovery.updates.setdefault(intent.entity, []).append(intent.id)
        if self.dry_run:
            return recovery
        for intent in intents:
            if intent.op == "update":
                continue
            conn = connectors.get(intent.member)
            if (
                intent.op == "create"
                and conn is not None
                and intent.entity in pipeline.entities
                and self._recover_create(pipeline, conn, intent, connectors, refs)
            ):
                continue
            with self.store.transaction() as tx:
                tx.finish_intent(intent.id, "abandoned")
        return recovery

    def _recover_create(
        self,
        pipeline: Pipeline,
        conn: Connector,
        intent: Any,
        connectors: dict[str, Connector],
        refs: References | None,
    ) -> bool:
        p, e = pipeline.name, intent.entity
        mapping = pipeline.mappings[(intent.member, e)]
        member_refs = refs.for_member(intent.member, mapping) if refs else None
        native = intent.payload.get("native", {})
        error = None
        try:
            if conn.capabilities(e).assigns_ids:
                found = [r for r in [conn.get(e, intent.key)] if r is not None]
            else:
                found = conn.find(e, native)
        except NotFoundError:
            found = []
        except SyncEngineError as exc:
            found, error = [], f"recovery lookup failed: {exc}"
        linked = self.store.link_index(p, e, intent.member)
        fresh = [r for r in found if r.id not in linked and not r.provisional]
        if len(fresh) != 1:
            if len(fresh) > 1:
                error = (
                    f"{len(fresh)} records on {intent.member} look like the one an "
                    "interrupted run created; left for matching"
                )
            with self.store.transaction() as tx:
                tx.finish_intent(intent.id, "abandoned", error=error)
            return False
        rec = fresh[0]
        written = self._canonical(mapping, NativeRecord(rec.id, native), member_refs)
        with self.store.transaction() as tx:
            if not self.store.load_records(p, e, [intent.key]):
                tx.put_record(p, e, intent.key, intent.payload.get("base", {}))
            # last seen = what was written; the hash is unknown so the next read maps it
            tx.put_link(
                p,
                e,
                intent.key,
                intent.member,
                native_id=rec.id,
                native_hash=None,
                last_seen=written,
            )
            for source, source_id in intent.payload.get("sources", {}).items():
                if source == intent.member or source not in connectors:
                    continue
                if source_id not in self.store.link_index(p, e, source):
                    tx.put_link(
                        p,
                        e,
                        intent.key,
                        source,
                        native_id=source_id,
                        native_hash=None,
                        last_seen=None,
                    )
            tx.finish_intent(intent.id, "done", native_id=rec.id)
        log.info(
            "recovered interrupted create",
            pipeline=p,
            member=intent.member,
            key=intent.key,
            native_id=rec.id,
        )
        return True

    @staticmethod
    def _canonical(
        mapping: EntityMapping, rec: NativeRecord, refs: MemberRefs | None = None
    ) -> model.Record:
        """The canonical record of what a member holds, references resolved (a reference
        that cannot be resolved is left empty: the next read tells)."""
        try:
            record = mapping.to_canonical(rec.data, location=rec.location)
        except RecordError:
            return {}
        if refs is not None:
            refs.resolve(record)
        return record

    # ------------------------------------------------------------------------------- plan
    def plan_entity(
        self,
        pipeline: Pipeline,
        entity: str,
        members: list[Member],
        recovery: _Recovery | None = None,
        refs: References | None = None,
    ) -> EntityPlan:
        spec = model.entity_spec(entity)
        ent = EntityPlan(entity, tuple(m.name for m in members))
        reads: dict[str, _Read] = {}
        for member in members:
            reads[member.name] = self._read_member(pipeline, entity, member, ent)
            ent.seen[member.name] = reads[member.name].count
        for member in members:
            r = reads[member.name]
            if r.count == 0 and r.linked > 0 and r.complete and not self.allow_mass_delete:
                ent.guard = (
                    f"{member.name} returned no {entity} but {r.linked} are linked to "
                    "it; refusing to treat that as deleting them all (check the "
                    "member's path/credentials, or run `syncengine sync "
                    "--allow-mass-delete` if they really are gone)"
                )
                return ent

        # which hub records need a look this run
        touched: set[str] = set(self.store.dirty_keys(pipeline.name, entity))
        if refs is not None:
            touched |= self._stale_references(pipeline, entity, members, refs)
        live: dict[str, set[str]] = {}
        for name, r in reads.items():
            touched.update(r.changed, r.gone, r.blocked)
            # records a partial read did not list are still there: no member takes them for
            # missing, and none is created again on it
            for key in (*r.changed, *r.unchanged, *r.unseen, *r.gone, *r.blocked):
                live.setdefault(key, set()).add(name)
        for member in members:
            if member.caps.create:
                touched.update(k for k, holders in live.items() if member.name not in holders)

        new_records = {name: r.new for name, r in reads.items() if r.new}
        result = None
        if new_records:
            keys = pipeline.match_keys(entity)
            hints = recovery.match if recovery else None
            # without match keys (payments) or recovery hints, the hub has nothing a new
            # record could be matched to: do not walk it
            existing = (
                (
                    (
                        rs.key,
                        rs.base,
                        frozenset(
                            m for m, ln in rs.links.items() if ln.native_id and not ln.tombstone
                        ),
                    )
                    for rs in self.store.iter_records(pipeline.name, entity)
                )
                if keys or hints
                else iter(())
            )
            result = match([m.name for m in members], new_records, existing, keys, hints=hints)
            for obs, why in result.ambiguous:
                ent.issues.append(Issue(entity, obs.member, obs.record.location, why))
            touched.update(k for k in result.groups if k not in result.new_keys)

        states = self.store.load_records(pipeline.name, entity, touched) if touched else {}
        for member in members:
            r = reads[member.name]
            if r.unseen and member.refs is not None and member.refs.by_value:
                # whether a record shows a reference by an outdated human key (a customer's
                # former e-mail) can only be told from the record itself
                for key in touched & r.unseen.keys():
                    link = states[key].links.get(member.name) if key in states else None
                    self._fetch_unseen(
                        entity,
                        member,
                        ent,
                        r,
                        key,
                        r.unseen[key],
                        link.native_hash if link else None,
                    )
        ctx = Context(
            entity=spec,
            members=tuple(m.name for m in members),
            mappings={m.name: m.mapping for m in members},
            caps={m.name: m.caps for m in members},
            types={m.name: m.type for m in members},
            rules=lambda f: pipeline.conflict_rules(entity, f),
            propagate_deletes=pipeline.section.deletes.propagate,
            parked=self.store.open_conflict_fields(pipeline.name, entity),
            refs={m.name: m.refs for m in members if m.refs is not None},
            referenced=self._users(pipeline, entity, reads),
        )
        groups = result.groups if result else {}
        # new records keep the order their member listed them in (a sheet gets HCP's order)
        position: dict[str, int] = {}
        for key, group in groups.items():
            for obs in group.values():
                position[key] = min(position.get(key, obs.order), obs.order)
        ordered = sorted(touched | set(groups), key=lambda k: (position.get(k, -1), k))
        untaken: set[str] = set()
        by_name = {m.name: m for m in members}
        for key in ordered:
            rs = states.get(key)
            if rs is None and key not in groups:
                continue
            views = self._views(key, rs, reads, groups.get(key, {}), members)
            if recovery and recovery.written:
                _apply_written_hints(entity, key, views, recovery.written)
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
                        self._fetch_unseen(
                            entity,
                            by_name[name],
                            ent,
                            reads[name],
                            key,
                            views[name].native_id or "",
                            link.native_hash if link else None,
                        )
                    views = self._views(key, rs, reads, groups.get(key, {}), members)
                    if recovery and recovery.written:
                        _apply_written_hints(entity, key, views, recovery.written)
                    kp = reconcile(ctx, key, rs.base if rs else None, views, new_key=rs is None)
            except RecordError as exc:
                # a value one member cannot take (a tag holding the list separator, ...):
                # report this record, leave it as it is everywhere, plan the rest
                where = next((v.location for v in views.values() if v.location), key)
                ent.issues.append(Issue(entity, exc.location or "", where, str(exc)))
                untaken |= _untaken(None, views)
                continue
            untaken |= _untaken(kp, views)
            if kp.changes_state:
                ent.keys.append(kp)
        self._keep_marks(members, ent, untaken)
        self._guard_deletes(pipeline, ent, reads)
        if self.dry_run and refs is not None:
            self._label_references(pipeline, ent, refs)
        ent.skipped_before = {
            row.key for row in self.store.skipped(pipeline.name) if row.entity == entity
        }
        return ent

    @staticmethod
    def _keep_marks(members: list[Member], ent: EntityPlan, untaken: set[str]) -> None:
        """Set each member's read mark to store after the commit: its pass's token, unless
        something the pass showed is not taken into the plan (a record-level problem on it, or
        on no member in particular; a change of a record left alone). Such a record is only
        listed again by a pass from the old mark, so the old mark stays."""
        names = {m.name for m in members}
        held = untaken | {i.member for i in ent.issues} | {m.name for m in members if m.reread}
        if not held <= names:
            held = names
        for member in members:
            rp = member.read_pass
            member.mark = rp.token() if rp is not None and member.name not in held else None

    def _store_marks(
        self, pipeline: Pipeline, entity: str, members: list[Member], outcome: EntityOutcome
    ) -> None:
        """After the entity was applied and committed: store the read marks of the members
        no write failed on (see ``_keep_marks``), and drop those of the members a partial read
        of which missed a record that is gone (``Member.reread``)."""
        failed = {f.member for f in outcome.failures}
        marks = {m.name: m.mark for m in members if m.mark is not None and m.name not in failed}
        dropped = [m.name for m in members if m.reread]
        if not marks and not dropped:
            return
        with self.store.transaction() as tx:
            for name, token in marks.items():
                tx.put_read_mark(pipeline.name, entity, name, token)
            for name in dropped:
                tx.delete_read_mark(pipeline.name, entity, name)

    def _label_references(self, pipeline: Pipeline, ent: EntityPlan, refs: References) -> None:
        """Names of the records the planned actions refer to, for the dry run to show."""
        fields = model.ENTITIES[ent.entity].refs
        wanted: dict[str, set[str]] = {}
        for action in ent.actions:
            if isinstance(action, Create):
                values = [action.values]
            elif isinstance(action, Update):
                values = [
                    {n: v for n, (_old, v) in action.changes.items()},
                    {n: v for n, (v, _new) in action.changes.items()},
                ]
            else:
                continue
            for record in values:
                for name, target in fields.items():
                    if isinstance(record.get(name), str):
                        wanted.setdefault(target, set()).add(record[name])
        for target, keys in wanted.items():
            plan = refs.plans.get(target)
            bases = {kp.key: kp.base_after for kp in plan.keys} if plan else {}
            missing = [k for k in keys if k not in bases]
            for key, state in self.store.load_records(pipeline.name, target, missing).items():
                bases[key] = state.base
            for key in keys:
                ent.ref_labels[key] = label_of(bases.get(key), key)

    def _stale_references(
        self, pipeline: Pipeline, entity: str, members: list[Member], refs: References
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
        return {
            key
            for key, base in self.store.iter_bases(pipeline.name, entity)
            if any(base.get(name) in keys for name, keys in changed.items())
        }

    def _users(
        self, pipeline: Pipeline, entity: str, reads: dict[str, _Read]
    ) -> Callable[[str], int] | None:
        """How many records of the pipeline's other entities refer to a key of this one;
        counted only when something of this entity is being deleted."""
        if not any(r.gone for r in reads.values()):
            return None
        users: dict[str, int] | None = None

        def count(key: str) -> int:
            nonlocal users
            if users is None:
                users = self._count_users(pipeline, entity)
            return users.get(key, 0)

        return count

    def _count_users(
        self, pipeline: Pipeline, entity: str, leaving: frozenset[tuple[str, str]] = frozenset()
    ) -> dict[str, int]:
        """key of ``entity`` -> how many hub records of other entities refer to it, in their
        base or in what any member holds (a member that could not take a re-pointing, or
        keeps a record it cannot delete, still refers to the old one)."""
        users: dict[str, int] = {}
        for other in pipeline.entities:
            names = [n for n, target in model.ENTITIES[other].refs.items() if target == entity]
            if not names or other == entity:
                continue
            for rs in self.store.iter_records(pipeline.name, other):
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

    def _settle_waiting_deletes(self, pipeline: Pipeline, plans: list[EntityPlan]) -> None:
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
            users = self._count_users(pipeline, ent.entity, leaving)
            restore = [kp for kp in waiting if users.get(kp.key)]
            if not restore:
                continue
            with self.store.transaction() as tx:
                for kp in restore:
                    for member in sorted(kp.waiting):
                        tx.delete_link(pipeline.name, ent.entity, kp.key, member)
            log.info(
                "deleted records still referred to are restored next run",
                entity=ent.entity,
                records=len(restore),
            )

    def _read_member(
        self, pipeline: Pipeline, entity: str, member: Member, ent: EntityPlan
    ) -> _Read:
        out = _Read()
        index = self.store.link_index(pipeline.name, entity, member.name)
        out.linked = len(index)
        seen: set[str] = set()
        # An incremental pass where the member offers one (a dry run may read that way too;
        # only a committed sync stores the mark the next pass starts from).
        rp = member.connector.read_incremental(
            entity, self.store.read_mark(pipeline.name, entity, member.name)
        )
        member.read_pass = rp
        out.complete = rp is None or rp.complete
        for rec in member.connector.read(entity) if rp is None else rp.records:
            out.count += 1
            if out.count % 1000 == 0:
                self.progress(f"reading {member.name} {entity}", out.count, None)
            linked = None if rec.provisional else index.get(rec.id)
            if linked is not None:
                seen.add(rec.id)
            self._observe(entity, member, ent, out, rec, linked)
        if not out.complete:
            # a partial pass lists only what changed since the mark: a linked record missing
            # from it is unchanged, not gone. One whose hash is unknown (linked by recovery)
            # cannot be vouched for, so it is fetched and looked at like a listed one.
            for native_id, (key, known_hash) in index.items():
                if native_id in seen:
                    continue
                if known_hash is None:
                    self._fetch_unseen(entity, member, ent, out, key, native_id, known_hash)
                else:
                    out.unseen[key] = native_id
            log.info(
                "read incrementally",
                member=member.name,
                entity=entity,
                read=out.count,
                unseen=len(out.unseen),
            )
            self.progress(f"reading {member.name} {entity}", out.count, out.count)
            return out
        for native_id, (key, _hash) in index.items():
            if native_id not in seen:
                out.gone[key] = native_id
        unreadable = sum(1 for i in ent.issues if i.member == member.name)
        if out.gone and unreadable:
            # a record that seems gone may be one of the rows we could not read (a Sync ID
            # pasted over another): deleting it elsewhere could lose data, so wait
            ent.issues.append(
                Issue(
                    entity,
                    member.name,
                    member.name,
                    f"{len(out.gone)} linked {entity} are missing from {member.name}; they are "
                    f"not treated as deleted while it has {unreadable} unreadable record(s) — fix "
                    "those and sync again",
                )
            )
            out.blocked.update(out.gone)
            out.gone = {}
        self.progress(f"reading {member.name} {entity}", out.count, out.count)
        return out

    def _observe(
        self,
        entity: str,
        member: Member,
        ent: EntityPlan,
        out: _Read,
        rec: NativeRecord,
        linked: tuple[str, str | None] | None,
    ) -> None:
        """Detect what one record read from the member is: unchanged, changed, new, or
        blocked (unreadable: reported, its hub record left alone)."""
        if rec.error:
            ent.issues.append(Issue(entity, member.name, rec.location, rec.error))
            if linked:
                out.blocked.add(linked[0])
            return
        digest = rec.native_hash()
        if linked is not None:
            key, known_hash = linked
            if known_hash == digest:
                out.unchanged[key] = (rec.id, rec.data, digest)
                return
        try:
            canonical = member.mapping.to_canonical(rec.data, location=rec.location)
        except RecordError as exc:
            ent.issues.append(Issue(entity, member.name, rec.location, str(exc)))
            if linked:
                out.blocked.add(linked[0])
            return
        if member.refs is not None:
            unresolved = member.refs.resolve(canonical)
            if unresolved:
                ent.issues.append(Issue(entity, member.name, rec.location, "; ".join(unresolved)))
                if linked:
                    out.blocked.add(linked[0])
                return
        obs = Observed(member.name, rec, canonical, digest, out.count)
        if linked is None:
            out.new.append(obs)
        else:
            out.changed[linked[0]] = obs

    def _fetch_unseen(
        self,
        entity: str,
        member: Member,
        ent: EntityPlan,
        out: _Read,
        key: str,
        native_id: str,
        known_hash: str | None,
    ) -> None:
        """Read one linked record a partial pass did not list, by id, and look at it as if
        it had been listed. One the member no longer has is left alone (``blocked``), and the
        member's next read is a complete one, which says whether it is gone."""
        out.unseen.pop(key, None)
        try:
            rec = member.connector.get(entity, native_id)
        except NotFoundError:
            rec = None
        if rec is None or rec.id != native_id:
            # gone, most likely; but only a complete pass tells deletes (a get that finds
            # nothing may be a wrong route), so it waits for the next read, a complete one
            out.blocked.add(key)
            member.reread = True
            return
        self._observe(entity, member, ent, out, rec, (key, known_hash))

    @staticmethod
    def _views(
        key: str,
        rs: RecordState | None,
        reads: dict[str, _Read],
        group: dict[str, Observed],
        members: list[Member],
    ) -> dict[str, MemberView]:
        views: dict[str, MemberView] = {}
        for member in members:
            name = member.name
            r = reads[name]
            link = rs.links.get(name) if rs else None
            dirty = bool(link and link.dirty)
            last_seen = link.last_seen if link else None
            if key in r.blocked:
                views[name] = MemberView(name, "blocked")
            elif name in group:
                obs = group[name]
                views[name] = MemberView(
                    name,
                    "new",
                    obs.record.id,
                    obs.canonical,
                    None,
                    obs.record.data,
                    obs.native_hash,
                    obs.record.provisional,
                    dirty,
                    obs.record.location,
                )
            elif key in r.changed:
                obs = r.changed[key]
                views[name] = MemberView(
                    name,
                    "changed",
                    obs.record.id,
                    obs.canonical,
                    last_seen,
                    obs.record.data,
                    obs.native_hash,
                    False,
                    dirty,
                    obs.record.location,
                )
            elif key in r.unchanged:
                native_id, native, digest = r.unchanged[key]
                views[name] = MemberView(
                    name, "unchanged", native_id, last_seen, last_seen, native, digest, False, dirty
                )
            elif key in r.unseen:
                # not listed by a partial read: unchanged since it was last seen, which is
                # all we know of it (no native record: an update fetches it first)
                views[name] = MemberView(
                    name,
                    "unchanged",
                    r.unseen[key],
                    last_seen,
                    last_seen,
                    None,
                    link.native_hash if link else None,
                    False,
                    dirty,
                )
            elif key in r.gone:
                views[name] = MemberView(name, "gone", r.gone[key], None, last_seen)
            elif link is not None and link.tombstone:
                views[name] = MemberView(name, "tombstone")
            else:
                views[name] = MemberView(name, "absent", dirty=dirty)
        return views

    def _guard_deletes(self, pipeline: Pipeline, ent: EntityPlan, reads: dict[str, _Read]) -> None:
        if self.allow_mass_delete or ent.guard:
            return
        rules = pipeline.section.deletes
        deletes: dict[str, int] = {}
        for action in ent.actions:
            if isinstance(action, Delete):
                deletes[action.member] = deletes.get(action.member, 0) + 1
        for member, count in deletes.items():
            linked = reads[member].linked
            if count >= max(rules.min_count, 1) and count > rules.max_fraction * linked:
                ent.guard = (
                    f"{count} of {linked} linked {ent.entity} would be deleted on "
                    f"{member} (more than max_fraction = {rules.max_fraction}); "
                    "nothing was written. If that is intended, run with "
                    "--allow-mass-delete or raise [pipelines.deletes] max_fraction"
                )
                return

    # ------------------------------------------------------------------------------ apply
    def apply_entity(
        self,
        pipeline: Pipeline,
        members: list[Member],
        ent: EntityPlan,
        outcome: EntityOutcome,
        run_id: str,
    ) -> None:
        by_name = {m.name: m for m in members}
        batch_size = pipeline.section.batch_size
        deferred: list[tuple[KeyPlan, dict[int, Any]]] = []
        intent_ids: dict[tuple[int, int], int] = {}
        total = len(ent.keys)
        done = 0
        buffered_used: set[str] = set()
        stopped = False
        for batch in _chunks(ent.keys, batch_size):
            if self.stop is not None and self.stop.is_set():
                stopped = True  # finish like a normal end: flush, commit, then stop
                break
            actions = [(kp, i, a) for kp in batch for i, a in enumerate(kp.actions)]
            if actions:
                with self.store.transaction() as tx:
                    early = _Writes(tx)
                    for kp in batch:
                        if kp.new_key and kp.actions and kp.prior:
                            early.put_record(pipeline.name, ent.entity, kp.key, kp.base_after or {})
                            writing = {a.member for a in kp.actions}
                            for lp in kp.prior.values():
                                # dirty until its write is confirmed: if we die first, the
                                # next run still owes this member the merged values
                                early.put_link(
                                    pipeline.name,
                                    ent.entity,
                                    kp.key,
                                    lp.member,
                                    native_id=lp.native_id,
                                    native_hash=lp.native_hash,
                                    last_seen=lp.last_seen,
                                    dirty=lp.member in writing,
                                )
                    early.flush()
                    ids = tx.add_intents(
                        [
                            {
                                "run_id": run_id,
                                "pipeline": pipeline.name,
                                "entity": ent.entity,
                                "key": kp.key,
                                "member": a.member,
                                "op": a.op,
                                "payload": _intent_payload(a, kp),
                            }
                            for kp, _i, a in actions
                        ]
                    )
                for (kp, i, _a), intent_id in zip(actions, ids, strict=True):
                    intent_ids[(id(kp), i)] = intent_id
            results = self._execute(actions, by_name)
            with self.store.transaction() as tx:
                writes = _Writes(tx)
                finished = []
                for kp in batch:
                    res = results.get(id(kp), {})
                    buffered = {a.member for a in kp.actions if by_name[a.member].buffered}
                    buffered_used |= buffered
                    for i, a in enumerate(kp.actions):
                        outcome_i = res.get(i)
                        if isinstance(outcome_i, Exception):
                            finished.append(
                                {
                                    "id": intent_ids[(id(kp), i)],
                                    "state": "failed",
                                    "error": str(outcome_i),
                                }
                            )
                        elif a.member not in buffered and (not buffered or isinstance(a, Create)):
                            # an update of a key that also waits for a buffered member stays
                            # pending until the key's state is committed after the flush: if
                            # we die first, recovery knows the member may hold our values
                            finished.append(
                                {
                                    "id": intent_ids[(id(kp), i)],
                                    "state": "done",
                                    "native_id": _native_id(outcome_i, a),
                                }
                            )
                    if buffered:
                        self._commit_partial(writes, pipeline, kp, res, by_name)
                        deferred.append((kp, res))
                    else:
                        self._commit_key(writes, pipeline, kp, res, by_name, outcome)
                writes.flush()
                if finished:
                    tx.finish_intents(finished)
            done += len(batch)
            self.progress(f"applying {ent.entity}", done, total)

        flush_errors: dict[str, Exception] = {}
        for name in sorted(buffered_used):
            try:
                by_name[name].connector.flush(ent.entity)
            except SyncEngineError as exc:
                flush_errors[name] = exc
                outcome.failures.append(Issue(ent.entity, name, "", f"nothing written: {exc}"))
        for chunk in _chunks(deferred, batch_size):
            with self.store.transaction() as tx:
                writes = _Writes(tx)
                finished = []
                for kp, res in chunk:
                    for i, a in enumerate(kp.actions):
                        if a.member in flush_errors and not isinstance(res.get(i), Exception):
                            res[i] = flush_errors[a.member]
                            state = "failed"
                        elif isinstance(res.get(i), Exception):
                            continue
                        elif by_name[a.member].buffered or not isinstance(a, Create):
                            state = "done"
                        else:
                            continue  # a write-through create: finished with its batch
                        finished.append(
                            {
                                "id": intent_ids[(id(kp), i)],
                                "state": state,
                                "native_id": _native_id(res.get(i), a),
                            }
                        )
                    self._commit_key(writes, pipeline, kp, res, by_name, outcome)
                writes.flush()
                if finished:
                    tx.finish_intents(finished)
        for kp in ent.keys[:done]:
            for a in kp.actions:
                counts = outcome.applied.setdefault(a.member, {})
                counts[a.op] = counts.get(a.op, 0) + 1
        if stopped:
            self._check_stop()

    def _execute(
        self, actions: list[tuple[KeyPlan, int, Action]], by_name: dict[str, Member]
    ) -> dict[int, dict[int, Any]]:
        results: dict[int, dict[int, Any]] = {}

        def run(item: tuple[KeyPlan, int, Action]) -> tuple[int, int, Any]:
            kp, i, action = item
            member = by_name[action.member]
            try:
                return id(kp), i, _perform(member, action)
            except AuthError:
                raise
            except (ConnectorError, RecordError) as exc:
                return id(kp), i, exc

        unbuffered = [a for a in actions if not by_name[a[2].member].buffered]
        buffered = [a for a in actions if by_name[a[2].member].buffered]
        workers = max(
            (
                int(getattr(by_name[a[2].member].connector.options, "concurrency", 1))
                for a in unbuffered
            ),
            default=1,
        )
        if workers > 1 and len(unbuffered) > 1:
            # the writers' log lines carry the run's context (pipeline, run id) too
            context = contextvars.copy_context()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outs = list(pool.map(lambda item: context.copy().run(run, item), unbuffered))
        else:
            outs = [run(a) for a in unbuffered]
        outs += [run(a) for a in buffered]
        for kp_id, i, out in outs:
            results.setdefault(kp_id, {})[i] = out
        return results

    # ----------------------------------------------------------------------------- commit
    def _commit_partial(
        self,
        tx: _Writes,
        pipeline: Pipeline,
        kp: KeyPlan,
        res: dict[int, Any],
        by_name: dict[str, Member],
    ) -> None:
        """Before a buffered member's flush: make records created on write-through members
        durable at once, so a crash now cannot lead to creating them twice."""
        created = [
            (i, a)
            for i, a in enumerate(kp.actions)
            if isinstance(a, Create)
            and not by_name[a.member].buffered
            and isinstance(res.get(i), NativeRecord)
        ]
        if not created:
            return
        tx.put_record(pipeline.name, kp.entity, kp.key, kp.base_after or kp.base_before or {})
        for i, a in created:
            rec = res[i]
            tx.put_link(
                pipeline.name,
                kp.entity,
                kp.key,
                a.member,
                native_id=rec.id,
                native_hash=rec.native_hash(),
                last_seen=self._canonical(by_name[a.member].mapping, rec, by_name[a.member].refs),
            )

    def _commit_key(
        self,
        tx: _Writes,
        pipeline: Pipeline,
        kp: KeyPlan,
        res: dict[int, Any],
        by_name: dict[str, Member],
        outcome: EntityOutcome,
    ) -> None:
        skipped_before = outcome.plan.skipped_before
        p, e = pipeline.name, kp.entity
        failed_members: set[str] = set()
        links: dict[str, LinkPlan] = dict(kp.links)
        for i, a in enumerate(kp.actions):
            out = res.get(i)
            member = by_name[a.member]
            if isinstance(out, Exception):
                failed_members.add(a.member)
                where = a.native_id if isinstance(a, Update | Delete) else a.key
                outcome.failures.append(
                    Issue(e, a.member, f"{kp.label} ({where})", f"{a.op} failed: {out}")
                )
                continue
            if isinstance(a, Delete):
                links[a.member] = LinkPlan(a.member, None, None, None, remove=True)
                continue
            rec = out if isinstance(out, NativeRecord) else None
            if isinstance(a, Create):
                if rec is None:
                    continue
                data, native_id = rec.data, rec.id
            else:
                data = rec.data if rec else a.full
                native_id = rec.id if rec else (a.assign_id or a.native_id)
            written = NativeRecord(native_id, data)
            links[a.member] = LinkPlan(
                a.member,
                native_id,
                written.native_hash(),
                self._canonical(member.mapping, written, member.refs),
            )

        if kp.base_after is None or (kp.purge and not failed_members):
            tx.deleted.append((p, e, kp.key))
            return
        tx.put_record(p, e, kp.key, kp.base_after)
        rows = []
        for name, lp in links.items():
            if lp.remove:
                tx.unlinks.append((p, e, kp.key, name))
                continue
            rows.append(
                {
                    "pipeline": p,
                    "entity": e,
                    "key": kp.key,
                    "member": name,
                    "native_id": lp.native_id,
                    "native_hash": lp.native_hash,
                    "last_seen": lp.last_seen,
                    "dirty": lp.dirty,
                    "tombstone": lp.tombstone,
                }
            )
        tx.links.extend(rows)
        if failed_members:
            tx.dirty.append((p, e, kp.key, failed_members))
        if kp.skips or kp.key in skipped_before:
            tx.skips.append((p, e, kp.key, {s.member: s.reason for s in kp.skips}))
        for c in kp.conflicts:
            if c.winner is None:
                tx.conflicts.append((p, e, kp.key, c.field, c.values, c.base_value))


def _perform(member: Member, action: Action) -> NativeRecord | None:
    conn = member.connector
    check_allowed(conn, action.entity, "update" if isinstance(action, Update) else action.op)
    if isinstance(action, Create):
        return conn.create(action.entity, action.native, key=action.key)
    if isinstance(action, Update):
        return conn.update(
            action.entity, action.native_id, action.patch, full=action.full, new_id=action.assign_id
        )
    conn.delete(action.entity, action.native_id)
    return None


def _untaken(kp: KeyPlan | None, views: dict[str, MemberView]) -> set[str]:
    """The members whose change of this record the plan leaves out: every member that
    changed, added or dropped it when the record is left alone (``kp`` None: it could not be
    planned, or a member could not read it), else a member that dropped it whose link stays
    (a delete that waits for the records referring to it)."""
    if kp is None or any(v.status == "blocked" for v in views.values()):
        return {m for m, v in views.items() if v.status in ("changed", "new", "gone")}
    return {m for m, v in views.items() if v.status == "gone" and m not in kp.links}


def _native_id(out: Any, action: Action) -> str | None:
    if isinstance(out, NativeRecord):
        return out.id
    if isinstance(action, Update | Delete):
        return action.native_id
    return None


def _intent_payload(action: Action, kp: KeyPlan) -> dict[str, Any]:
    if isinstance(action, Create):
        # the members that already hold the record: recovery re-links them with the create,
        # so a record without match keys cannot be copied twice after a crash
        sources = {
            m: lp.native_id
            for m, lp in kp.links.items()
            if lp.native_id and not lp.remove and not lp.tombstone
        }
        return {"native": action.native, "base": kp.base_after or {}, "sources": sources}
    if isinstance(action, Update):
        payload: dict[str, Any] = {
            "patch": action.patch,
            "values": {f: new for f, (_old, new) in action.changes.items()},
        }
        if action.assign_id:
            payload["assign_id"] = action.assign_id
            payload["native_hash"] = action.read_hash
        return payload
    return {"native_id": action.native_id}


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
