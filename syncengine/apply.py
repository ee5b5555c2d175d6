"""Apply and commit: an entity's plan carried out through the write-ahead journal.

The plan's keys go in batches of ``batch_size`` (unset: ``BATCH_SIZE``, and
``BUFFERED_BATCH_SIZE`` for keys written only to buffered members). For each batch:

1. the batch's intents are committed (``pending``) before any member is called; a record
   new to the hub is stored with the links it already has, dirty where it is being written;
2. the actions run (bounded concurrency for members that write through);
3. one transaction commits the outcomes: links, last-seen versions, the base, and the
   intents that are settled.

Members that buffer writes (a spreadsheet file) make them durable in ``flush``, after the
last batch, and then say what each write made (``Connector.flushed``: the ids of records a
batch created, a write of the batch that failed alone). The state of a key such a member
writes is committed only after the flush succeeded; a failed write marks the member's link
dirty, so the next run writes it again instead of forgetting it. When an intent counts as
finished is decided in one place, ``Write.finish``.
"""

from __future__ import annotations

import contextvars
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from syncengine import model
from syncengine.collector import COLLECTOR
from syncengine.config import Pipeline
from syncengine.connector import RELEASED, NativeRecord, check_allowed
from syncengine.errors import AuthError, ConnectorError, RecordError, SyncEngineError
from syncengine.leasing import lease_holder
from syncengine.member import Member, canonical_of
from syncengine.plan import (
    AGREED,
    Action,
    Conflict,
    Create,
    Delete,
    Issue,
    KeyPlan,
    LinkPlan,
    Update,
)
from syncengine.progress import ProgressFn, Step, no_progress
from syncengine.recovery import intent_payload
from syncengine.result import EntityOutcome
from syncengine.state import StateStore, Tx

T = TypeVar("T")

BATCH_SIZE = 200
"""Keys per batch when the pipeline leaves ``batch_size`` unset."""
BUFFERED_BATCH_SIZE = 1000
"""... for a run of keys whose writes all go to buffered members (a spreadsheet written once,
at its flush): their writes cost nothing before the flush, so a batch is mostly the state
store's two transactions, and fewer, larger ones write each index page fewer times (a first
sync of 100,000 customers into a CSV folder: about 4 % shorter). Crash safety is the same,
since the flush comes after every batch is journaled; a stop request waits for at most a
batch of in-memory writes."""


@dataclass(slots=True)
class Write:
    """One planned action on its way: journalled as an intent, performed, finished."""

    action: Action
    member: Member
    intent_id: int = 0
    result: NativeRecord | None = None
    """What the member answered (None for a delete, or a write it did not echo)."""
    error: Exception | None = None
    finished: bool = False

    def native_id(self) -> str | None:
        if self.result is not None:
            return self.result.id
        if isinstance(self.action, Update | Delete):
            return self.action.native_id
        return None

    def finish(self, *, committed: bool) -> dict[str, Any] | None:
        """The journal row that finishes this write's intent, or None while it stays
        pending (or was finished already).

        A failed write is finished at once. A create on a member that writes through is
        done as soon as it was made: its link is committed with the batch, so a crash now
        cannot create it twice. Any other write is done once its key's state is committed
        (``committed``): with the batch where no buffered member writes the key, else after
        the flush. Until then an update stays pending, so that recovery knows the member
        may hold our values.
        """
        if self.finished:
            return None
        if self.error is not None:
            row: dict[str, Any] = {"state": "failed", "error": str(self.error)}
        elif committed or (isinstance(self.action, Create) and not self.member.buffered):
            row = {"state": "done", "native_id": self.native_id()}
        else:
            return None
        self.finished = True
        return {"id": self.intent_id, **row}


@dataclass(slots=True)
class KeyWrites:
    """One key's plan with the writes of its actions, in the plan's order. A first sync
    into a spreadsheet holds one per record until the file is saved: it is kept small."""

    plan: KeyPlan
    writes: list[Write]
    pending: int = 0
    """How many of its writes are not performed yet (for the progress count)."""
    stored: tuple[LinkPlan, ...] = ()
    """The links stored with the intents (a record new to the hub): the commit does not
    write one again when it is unchanged."""
    stored_base: model.Record | None = None
    """The base stored with the intents, likewise."""

    def __post_init__(self) -> None:
        self.pending = len(self.writes)

    @property
    def buffered(self) -> set[str]:
        """The members writing this key that buffer their writes."""
        return {w.action.member for w in self.writes if w.member.buffered}


class StateWrites:
    """The state changes of one entity's batch, collected and then sent as a few bulk
    statements in one transaction (``commit``) instead of one per record."""

    def __init__(self, pipeline: str, entity: str) -> None:
        self.pipeline = pipeline
        self.entity = entity
        self.records: list[dict[str, Any]] = []
        self.links: list[dict[str, Any]] = []
        self.unlinks: list[tuple[str, str]] = []
        self.dirty: list[tuple[str, set[str]]] = []
        self.conflicts: list[Conflict] = []
        self.agreed: list[tuple[str, str, Any]] = []
        """(key, field, the value) of open conflicts whose members hold it alike now: closed."""
        self.deleted: list[str] = []
        self.skips: list[tuple[str, dict[str, str]]] = []
        self.finished: list[dict[str, Any]] = []

    def put_record(self, key: str, base: model.Record) -> None:
        self.records.append(
            {"pipeline": self.pipeline, "entity": self.entity, "key": key, "base": base}
        )

    def put_link(self, key: str, lp: LinkPlan) -> None:
        self.links.append(
            {
                "pipeline": self.pipeline,
                "entity": self.entity,
                "key": key,
                "member": lp.member,
                "native_id": lp.native_id,
                "native_hash": lp.native_hash,
                "last_seen": lp.last_seen,
                "dirty": lp.dirty,
                "tombstone": lp.tombstone,
            }
        )

    def finish(self, key: KeyWrites, *, committed: bool) -> None:
        """Finish the intents of ``key`` that are settled (see ``Write.finish``)."""
        for w in key.writes:
            row = w.finish(committed=committed)
            if row is not None:
                self.finished.append(row)

    def commit(self, store: StateStore) -> None:
        """Write the changes in one transaction; none is opened when there are none."""
        if any(
            (
                self.records,
                self.links,
                self.unlinks,
                self.dirty,
                self.conflicts,
                self.agreed,
                self.deleted,
                self.skips,
                self.finished,
            )
        ):
            with store.transaction() as tx:
                self.write(tx)

    def write(self, tx: Tx) -> None:
        """Send the changes within ``tx``."""
        p, e = self.pipeline, self.entity
        if self.records:
            tx.put_records(self.records)
        if self.unlinks:
            tx.delete_links(
                [{"pipeline": p, "entity": e, "key": k, "member": m} for k, m in self.unlinks]
            )
        if self.links:
            tx.put_links(self.links)
        if self.dirty:
            tx.set_dirty_links(
                [
                    {"pipeline": p, "entity": e, "key": key, "member": m}
                    for key, members in self.dirty
                    for m in sorted(members)
                ]
            )
        for c in self.conflicts:
            tx.add_conflict(p, e, c.key, c.field, c.values, c.base_value)
        for key, name, value in self.agreed:
            tx.close_agreed_conflict(p, e, key, name, value)
        if self.deleted:
            tx.delete_records([{"pipeline": p, "entity": e, "key": key} for key in self.deleted])
        if self.skips:
            tx.set_skips_of(p, e, dict(self.skips))
        if self.finished:
            tx.finish_intents(self.finished)


class EntityApply:
    """Carries out one entity's plan: journal, perform, commit, flush."""

    def __init__(
        self,
        store: StateStore,
        pipeline: Pipeline,
        members: Sequence[Member],
        outcome: EntityOutcome,
        run_id: str,
        progress: ProgressFn,
        *,
        before: int = 0,
        total: int | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.by_name = {m.name: m for m in members}
        self.outcome = outcome
        self.ent = outcome.plan
        self.keys = self.ent.after_compaction()
        """What is left to apply: the plan's keys, or a first sync's slice of them (the slices
        before it were applied and compacted)."""
        self.run_id = run_id
        self.progress = progress
        self.before = before
        """Records of the entity applied before this slice (the progress bar goes on)."""
        self.total = len(self.keys) if total is None else total

    def run(self, stop: threading.Event | None = None) -> bool:
        """Apply every batch (until ``stop`` is set: the batches applied so far are flushed
        and committed as at a normal end). Returns False when it stopped early."""
        chosen = self.pipeline.section.batch_size
        batch_size = chosen or BATCH_SIZE
        deferred: list[KeyWrites] = []
        buffered_used: Counter[str] = Counter()
        done = self.before
        stopped = False
        # nothing to apply: no bar
        progress = self.progress if self.keys else no_progress
        applied = _Applied(Step(progress, f"applying {self.ent.entity}", self.total, done), done)
        for batch in self._batches(batch_size, chosen or BUFFERED_BATCH_SIZE):
            if stop is not None and stop.is_set():
                stopped = True  # finish like a normal end: flush, commit, then stop
                break
            COLLECTOR.settle()  # the plan, and the batches applied: held until the flush
            keys = [
                KeyWrites(kp, [Write(a, self.by_name[a.member]) for a in kp.actions])
                for kp in batch
            ]
            self._journal(keys)
            applied.expect(keys)
            _execute(keys, applied.written)
            _release_created(keys)
            deferred += self._commit_batch(keys)
            buffered_used.update(
                w.action.member for k in keys for w in k.writes if w.member.buffered
            )
            done += len(batch)
            applied.batch_done(done)
        flush_errors = self._flush(buffered_used)
        committing = (
            Step(self.progress, f"committing {self.ent.entity}", len(deferred))
            if deferred
            else None
        )
        committed = 0
        for chunk in _chunks(deferred, chosen or BUFFERED_BATCH_SIZE):
            writes = StateWrites(self.pipeline.name, self.ent.entity)
            for key in chunk:
                for w in key.writes:
                    if w.error is None and w.action.member in flush_errors:
                        w.error = flush_errors[w.action.member]
                    elif w.error is None and w.member.buffered:
                        _settle(w)
                self._commit_key(writes, key)
                writes.finish(key, committed=True)
            writes.commit(self.store)
            self._count(w for key in chunk for w in key.writes if w.member.buffered)
            committed += len(chunk)
            if committing is not None:
                committing.tick(committed)
        if committing is not None:
            committing.end(committed)
        return not stopped

    def _batches(self, size: int, buffered_size: int) -> Iterator[list[KeyPlan]]:
        """The entity's keys in batches: of ``size`` keys once a batch has a write to a
        member that writes through, else of ``buffered_size``."""
        batch: list[KeyPlan] = []
        limit = buffered_size
        for kp in self.keys:
            if any(not self.by_name[a.member].buffered for a in kp.actions):
                limit = size
            batch.append(kp)
            if len(batch) >= limit:
                yield batch
                batch, limit = [], buffered_size
        if batch:
            yield batch

    def _count(self, writes: Iterable[Write]) -> None:
        """Count the writes that took effect in ``outcome.applied`` (and the Sync-ID-only
        updates among them in ``outcome.linked``), once their outcome is known: a write
        through at its batch's commit, a buffered write after its member's flush. A failed
        write is not counted there: it is one of ``outcome.failures``."""
        for w in writes:
            if w.error is not None:
                continue
            a = w.action
            counts = self.outcome.applied.setdefault(a.member, {})
            counts[a.op] = counts.get(a.op, 0) + 1
            if isinstance(a, Update) and a.link_only:
                self.outcome.linked[a.member] = self.outcome.linked.get(a.member, 0) + 1

    def _journal(self, keys: list[KeyWrites]) -> None:
        """Step 1: commit the batch's intents before any member is called."""
        writes = [(k, k.plan, w) for k in keys for w in k.writes]
        if not writes:
            return
        p, e = self.pipeline.name, self.ent.entity
        holder = lease_holder.get()  # the intents belong to this run's lease (``recovery``)
        with self.store.transaction() as tx:
            early = StateWrites(p, e)
            for k in keys:
                kp = k.plan
                if kp.new_key and kp.actions and kp.prior:
                    k.stored_base = kp.base_after or {}
                    early.put_record(kp.key, k.stored_base)
                    writing = {a.member for a in kp.actions}
                    k.stored = tuple(_while_written(lp, writing) for lp in kp.prior.values())
                    for lp in k.stored:
                        early.put_link(kp.key, lp)
            early.write(tx)
            ids = tx.add_intents(
                [
                    {
                        "run_id": self.run_id,
                        "pipeline": p,
                        "entity": e,
                        "key": kp.key,
                        "member": w.action.member,
                        "op": w.action.op,
                        "payload": intent_payload(
                            w.action, kp, base_stored=k.stored_base is not None
                        ),
                        "holder": holder,
                    }
                    for k, kp, w in writes
                ]
            )
        for (_k, _kp, w), intent_id in zip(writes, ids, strict=True):
            w.intent_id = intent_id

    def _commit_batch(self, keys: list[KeyWrites]) -> list[KeyWrites]:
        """Step 3: commit what the batch did. Keys a buffered member writes wait for its
        flush (returned); records they created on write-through members are made durable
        at once, so a crash now cannot lead to creating them twice."""
        deferred = []
        writes = StateWrites(self.pipeline.name, self.ent.entity)
        for key in keys:
            if key.buffered:
                self._commit_created(writes, key)
                deferred.append(key)
            else:
                self._commit_key(writes, key)
            writes.finish(key, committed=not key.buffered)
        writes.commit(self.store)
        self._count(w for key in keys for w in key.writes if not w.member.buffered)
        return deferred

    def _flush(self, members: Counter[str]) -> dict[str, Exception]:
        """Make the buffered members' writes durable (``members``: member -> how many writes
        it buffered); member -> why its flush failed."""
        errors: dict[str, Exception] = {}
        for name in sorted(members):
            step = Step(self.progress, f"writing {name} {self.ent.entity}", members[name])
            try:
                self.by_name[name].connector.flush(self.ent.entity)
                step.end(members[name])
            except SyncEngineError as exc:
                errors[name] = exc
                self.outcome.failures.append(
                    Issue(self.ent.entity, name, "", f"nothing written: {exc}")
                )
        return errors

    def _commit_created(self, tx: StateWrites, key: KeyWrites) -> None:
        """Before a buffered member's flush: the links of records created on members that
        write through, so that a crash before the flush cannot create them twice."""
        created = [
            w
            for w in key.writes
            if isinstance(w.action, Create) and not w.member.buffered and w.result is not None
        ]
        if not created:
            return
        kp = key.plan
        tx.put_record(kp.key, kp.base_after or kp.base_before or {})
        for w in created:
            assert w.result is not None
            tx.put_link(kp.key, _link_to(w, w.result))

    def _commit_key(self, tx: StateWrites, key: KeyWrites) -> None:
        """The key's state after its writes: the base, a link per member (from what each
        member answered), dirty links where a write failed, skips and parked conflicts."""
        kp = key.plan
        e = kp.entity
        failed_members: set[str] = set()
        links: dict[str, LinkPlan] = dict(kp.links)
        for w in key.writes:
            a = w.action
            if w.error is not None:
                failed_members.add(a.member)
                where = a.native_id if isinstance(a, Update | Delete) else a.key
                self.outcome.failures.append(
                    Issue(e, a.member, f"{kp.label} ({where})", f"{a.op} failed: {w.error}")
                )
                continue
            if isinstance(a, Delete):
                links[a.member] = LinkPlan(a.member, None, None, None, remove=True)
                continue
            rec = w.result
            if isinstance(a, Create):
                if rec is None:
                    continue
                data, native_id = rec.data, rec.id
            else:
                data = rec.data if rec else a.full
                native_id = rec.id if rec else (a.assign_id or a.native_id)
            links[a.member] = _link_to(w, NativeRecord(native_id, data), kp.base_after)

        if kp.base_after is None or (kp.purge and not failed_members):
            tx.deleted.append(kp.key)
            return
        if kp.base_after is not key.stored_base:
            tx.put_record(kp.key, kp.base_after)
        for name, lp in links.items():
            if lp.remove:
                tx.unlinks.append((kp.key, name))
            elif lp not in key.stored:  # not as stored with the intents already
                tx.put_link(kp.key, lp)
        if failed_members:
            tx.dirty.append((kp.key, failed_members))
        if kp.skips or kp.key in self.ent.skipped_before:
            tx.skips.append((kp.key, {s.member: s.reason for s in kp.skips}))
        tx.conflicts.extend(c for c in kp.conflicts if c.winner is None)
        tx.agreed.extend(
            (c.key, c.field, next(iter(c.values.values())))
            for c in kp.conflicts
            if c.rule == AGREED
        )


def _while_written(lp: LinkPlan, writing: set[str]) -> LinkPlan:
    """A new record's link as stored with the intents: dirty until its member's write is
    confirmed, so that if we die first, the next run still owes that member the merged
    values."""
    dirty = lp.member in writing
    return lp if lp.dirty == dirty else replace(lp, dirty=dirty)


def _link_to(w: Write, written: NativeRecord, base: model.Record | None = None) -> LinkPlan:
    """The member's link after it took a write: what it holds now is what it answered (its
    references are the records the write meant where it shows them as written). A
    field the entity lets a member assign itself (``EntitySpec.assigned``) that it answered
    with another value than the base's is its change, not seen yet: the next read maps the
    record (no native hash) and syncs it."""
    meant = base if base is not None else w.action.values if isinstance(w.action, Create) else None
    last_seen = canonical_of(w.member.mapping, written, w.member.refs, meant)
    native_hash: str | None = written.native_hash()
    spec = model.ENTITIES.get(w.action.entity)
    if spec is not None and spec.assigned and base is not None:
        mapping = w.member.mapping
        own = [
            f
            for f in spec.assigned
            if f in mapping.readable and f not in mapping.writable
            and last_seen.get(f) != base.get(f)
        ]  # fmt: skip
        if own:
            last_seen = {**last_seen, **{f: base.get(f) for f in own}}
            native_hash = None
    if isinstance(w.action, Update) and w.action.unseen:
        kept = {n: v for n, v in w.action.unseen.items() if v is not None}
        last_seen = {**last_seen, **kept, model.UNSEEN: sorted(w.action.unseen)}
    elif isinstance(w.action, Create) and w.action.unseen:
        last_seen = {**last_seen, model.UNSEEN: list(w.action.unseen)}
    return LinkPlan(w.action.member, written.id, native_hash, last_seen)


def _execute(keys: list[KeyWrites], written: Callable[[KeyWrites], None]) -> None:
    """Step 2: perform the keys' writes, recording each one's answer or error on it, and
    tell ``written`` of each one done with its key (in this thread, in order). Members that
    write through run with their ``concurrency``; buffered members run in order. Refused
    credentials stop the run."""

    def run(w: Write) -> None:
        try:
            w.result = _perform(w.member, w.action)
        except AuthError:
            raise
        except (ConnectorError, RecordError) as exc:
            w.error = _detached(exc)

    through = [(k, w) for k in keys for w in k.writes if not w.member.buffered]
    workers = max(
        (int(getattr(w.member.connector.options, "concurrency", 1)) for _k, w in through),
        default=1,
    )
    if workers > 1 and len(through) > 1:
        # the writers' log lines carry the run's context (pipeline, run id) too
        context = contextvars.copy_context()

        def call(w: Write) -> None:
            context.copy().run(run, w)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = pool.map(call, [w for _k, w in through])
            for (k, _w), _ in zip(through, done, strict=True):
                written(k)
    else:
        for k, w in through:
            run(w)
            written(k)
    for k in keys:
        for w in k.writes:
            if w.member.buffered:
                run(w)
                written(k)


def _release_created(keys: list[KeyWrites]) -> None:
    """Once a batch is performed, its creates' native records have served: what each member
    made of one is its answer (``Write.result``), and the plan keeps the canonical values.
    Letting go of them keeps a large entity's plan from growing beside a buffering member's
    copy of what was written (a spreadsheet's working copy) until it is flushed."""
    for k in keys:
        actions = k.plan.actions
        for i, w in enumerate(k.writes):
            a = w.action
            if isinstance(a, Create) and a.native is not RELEASED:
                spent = a.released()
                w.action = spent
                if i < len(actions) and actions[i] is a:
                    actions[i] = spent


def _settle(w: Write) -> None:
    """A buffered write after its member's flush: what the member made of it (its record
    with the id a batch gave it), or why that one write failed."""
    if w.result is None:
        return
    try:
        w.result = w.member.connector.flushed(w.action.entity, w.result)
    except (ConnectorError, RecordError) as exc:
        w.error = _detached(exc)


def _detached(exc: Exception) -> Exception:
    """``exc`` as a write keeps it: what it says, without the frames it was raised through.
    Those frames (and the exceptions it was raised while handling, with theirs) refer back
    to the write, a cycle that only the collector frees, and that a sync's frozen objects
    (``collector``) would keep until the sync ends: every failed write of a run, with the
    response it failed on."""
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc


def _perform(member: Member, action: Action) -> NativeRecord | None:
    conn = member.connector
    check_allowed(conn, action.entity, "update" if isinstance(action, Update) else action.op)
    if isinstance(action, Create):
        return conn.create(action.entity, action.native, key=action.key)
    if isinstance(action, Update):
        return conn.update(
            action.entity,
            action.native_id,
            action.patch,
            full=action.full,
            new_id=action.assign_id,
        )
    conn.delete(action.entity, action.native_id)
    return None


class _Applied:
    """The apply step's count of records: a record is applied once all its writes are done
    (or at once when it has none), counted as the writes end, so that the bar moves during a
    batch of slow writes too; exact at the end of each batch."""

    def __init__(self, step: Step, done: int = 0) -> None:
        self.step = step
        self.done = done

    def expect(self, keys: list[KeyWrites]) -> None:
        """A batch is about to be written: its records without writes are done already."""
        self.done += sum(1 for k in keys if not k.writes)

    def written(self, key: KeyWrites) -> None:
        """One write of ``key`` is done."""
        key.pending -= 1
        if not key.pending:
            self.done += 1
            self.step.tick(self.done)

    def batch_done(self, done: int) -> None:
        """The batch is committed: ``done`` records in all (always reported: a batch's end
        is where a stop request is honoured)."""
        self.done = done
        self.step.progress(self.step.what, done, self.step.total)


def _chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
