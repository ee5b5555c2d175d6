"""Read: what each member holds of one entity, and what it means for the hub (detect).

A member's read is streamed record by record; each record is *observed* against the member's
link table: unchanged (its native hash is the one last seen: not even mapped), changed, new
(no link yet: to be matched), or blocked (unreadable: reported, its hub record left alone).
Linked records the read did not list are gone (complete read) or unseen (partial read).
``member_views`` then turns the reads into each member's ``MemberView`` of one hub record,
the input of reconcile.

A member's storage is checked too (``Connector.structure``): ``structure_problem`` refuses one
whose records show no ids while records are linked to it (the engine asks before anything is
planned, and again after each read), and the mapped columns a sheet lacks become fields the
member does not hold yet (``MemberRead.missing``): never read as cleared, filled from the
others (``fill_notes`` says so).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import structlog

from syncengine import collector, jsoncodec
from syncengine.collector import COLLECTOR
from syncengine.config import Pipeline
from syncengine.connector import (
    RELEASED,
    Connector,
    NativeData,
    NativeRecord,
    ReadPass,
    Structure,
    json_and_hash,
)
from syncengine.errors import NotFoundError, RecordError, StructureError
from syncengine.events import InboxEvent
from syncengine.match import MatchResult, Observed
from syncengine.member import Member, open_member
from syncengine.model import Record, entity_spec
from syncengine.plan import Create, EntityPlan, Issue, KeyPlan, Update
from syncengine.progress import ProgressFn, Step
from syncengine.reconcile import MemberView
from syncengine.spill import Projected, Spill, json_exact, location_text
from syncengine.state import RecordState, StateStore

log = structlog.get_logger("syncengine.engine")


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A linked record read with the native hash last seen: no need to map it again."""

    native_id: str
    native: NativeData | int
    """The native record; for a member that reads JSON (``Connector.reads_json``), the slot
    of its JSON text in the read's spill (``MemberRead.unchanged_native``): most unchanged
    records are not planned at all, and a large entity's would otherwise be held in memory
    until it is planned, as objects or as text."""
    native_hash: str


@dataclass
class MemberRead:
    """What one member's read of one entity produced."""

    changed: dict[str, Observed] = field(default_factory=dict)
    """key -> the linked record, changed since last seen."""
    unchanged: dict[str, Unchanged] = field(default_factory=dict)
    new: list[Observed] = field(default_factory=list)
    """Records the member holds that are linked to no hub record yet."""
    gone: dict[str, str] = field(default_factory=dict)
    """key -> native_id of records linked but no longer there (a complete read left them
    out, or a partial one said they were deleted)."""
    unseen: dict[str, str] = field(default_factory=dict)
    """key -> native_id of records linked but not listed by a partial read: unchanged since
    the read mark, not gone."""
    blocked: set[str] = field(default_factory=set)
    """Keys whose record on this member could not be read or resolved: left alone."""
    withheld: dict[str, str] = field(default_factory=dict)
    """key -> native_id of linked records missing from a complete read that had unreadable
    records: blocked (one of those may be it), but still records a row with a blanked Sync
    ID may be (``Engine._relink_vanished``)."""
    unreadable_count: int = 0
    """How many of the member's records could not be read (while ``withheld`` holds any)."""
    unreadable: list[Observed] = field(default_factory=list)
    """Unlinked records in error (reported) whose values could be read: a record new on
    another member that matches one of them may be it, and is not synced either."""
    faulty: list[NativeRecord] = field(default_factory=list)
    """Every unlinked record in error (reported), whether or not its values could be read:
    recovery tells an interrupted create among them by its id, or looks it up."""
    linked: int = 0
    """How many records the member had linked before this read."""
    count: int = 0
    """How many records the read listed."""
    read_pass: ReadPass | None = None
    """The incremental pass this entity was read with (None: a plain ``read``)."""
    marked: bool = False
    """A read mark was stored for the member when this read started."""
    reread: bool = False
    """A record the partial read did not list turned out to be missing: the read mark is
    dropped once the entity is committed, so that the next read is complete (and sees it
    gone)."""
    structure: Structure = field(default_factory=Structure)
    """How the member stores the entity, as it said after the read."""
    missing: frozenset[str] = frozenset()
    """Canonical fields whose column the member's sheet lacks (``Structure.missing``): the
    member does not hold them yet."""
    fills: bool = False
    """Some of ``missing`` are written to the member: each of its records needs a look,
    unchanged ones too, so that the base fills them."""
    unfilled: frozenset[str] = frozenset()
    """Of ``missing``, the fields not written this run: matching is blind without them and
    holds records back (``match.hold_blind``), so their columns wait for a person."""
    fingerprint: str = ""
    """The fingerprint of the mapping this read was made with (``EntityMapping.fingerprint``)."""
    stored_fingerprint: str | None = None
    """The fingerprint stored for the member's last complete, committed read (None: none)."""
    remapped: bool = False
    """The member's mapping changed since its last complete read: every linked record it
    listed was mapped again, not taken as unchanged on its native hash."""
    set_aside: bool = False
    """An event-driven run left some of what this read showed for a later run
    (``narrow_to_named``): its read mark stays where it was, so that the next incremental
    pass lists those records again."""
    spill: Spill = field(default_factory=Spill)
    """The native records of ``new``, ``changed`` and ``unchanged``, on disk until they are
    planned, where the member reads JSON (``Observed.spilled``, ``Unchanged.native``), with
    the locations of the new and changed ones (``Observed.location``); closed once the entity
    is planned."""
    keeps: frozenset[str] | None = None
    """The canonical fields a new or changed record keeps in memory until it is planned
    (``kept_fields``; the rest waits in ``spill``, see ``spill.Projected``). None: the whole
    record stays in memory."""

    @property
    def complete(self) -> bool:
        """False for an incremental pass that listed only what changed since the read mark."""
        return self.read_pass is None or self.read_pass.complete

    def unspill(self, obs: Observed) -> Observed:
        """``obs`` with its native record and its whole canonical record taken back from the
        spill (``Observed.spilled``), as its hub record is planned: once planned,
        ``Engine._plan_keys`` lets go of the native record again
        (``Observed.release_native``), and a later look takes it back once more."""
        rec = obs.record
        if obs.spilled < 0:
            return obs
        projected = type(obs.canonical) is Projected
        if not projected and rec.data is not RELEASED:
            return obs
        data, canonical, where = self.spill.whole(obs.spilled)
        if projected:
            if canonical is None:
                raise RuntimeError(f"slot {obs.spilled} of a spill holds no canonical record")
            obs.canonical = canonical
        if rec.data is RELEASED:
            obs.record = NativeRecord(
                rec.id, data, rec.provisional, rec.location or where, rec.error, obs.native_hash
            )
        return obs

    def unchanged_native(self, same: Unchanged) -> NativeData | bytes:
        """The native record of a record read unchanged: for a member that reads JSON, its
        text as read (``MemberView.native_record`` decodes it if a write needs it)."""
        native = same.native
        return self.spill.text(native) if isinstance(native, int) else native


class ReadAhead:
    """A member's read of an entity started in a thread before the engine gets to it (while
    it still plans and applies the entity before), handed over record by record as it comes.

    At most ``size`` records wait to be taken: memory holds a few pages, not the entity. An
    error of the read is raised where the engine takes the record it stopped at. ``cancel``
    ends the read early (a run that fails or stops before it gets there)."""

    _END = object()

    def __init__(
        self,
        store: StateStore,
        pipeline: str,
        entity: str,
        member: Member,
        named: Sequence[InboxEvent] | None = None,
    ) -> None:
        self.entity = entity
        self._named = named
        self.member = member.name
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, READ_AHEAD_RECORDS // _CHUNK))
        self._cancelled = threading.Event()
        self._pass: ReadPass | None = None
        self._started = threading.Event()
        self.mark = mark = store.read_mark(pipeline, entity, member.name)
        context = contextvars.copy_context()  # its log lines carry the run's context
        self._thread = threading.Thread(
            target=context.run,
            args=(self._read, member.connector, mark),
            name=f"{member.name}-{entity}-read-ahead",
            daemon=True,
        )
        self._thread.start()

    def _read(self, connector: Connector, mark: str | None) -> None:
        chunk: list[NativeRecord] = []
        try:
            self._pass, records = open_read(connector, self.entity, mark, self._named)
            self._started.set()
            since = monotonic()
            for rec in records:
                chunk.append(rec)
                # handed over in chunks (a queue's lock per record costs more than mapping the
                # record), and at least every _CHUNK_S while the read is slow, so that the
                # engine (and its progress bar) goes on with what has come
                if len(chunk) >= _CHUNK or monotonic() - since >= _CHUNK_S:
                    if not self._put(chunk):
                        return
                    chunk, since = [], monotonic()
            if chunk and not self._put(chunk):
                return
        except BaseException as exc:  # handed to the engine's thread, raised there
            if chunk:
                self._put(chunk)
            self._put(_Failed(exc))
        finally:
            self._started.set()
            self._put(self._END)

    def _put(self, item: Any) -> bool:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def take(self) -> tuple[ReadPass | None, Iterator[NativeRecord]]:
        """The read pass (None: a complete read) and its records, as the thread reads them."""
        self._started.wait()
        return self._pass, self._records()

    def _records(self) -> Iterator[NativeRecord]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield from item

    def cancel(self) -> None:
        """Stop the read where it is (the page on the wire finishes) and wait for it."""
        self._cancelled.set()
        self._thread.join(timeout=60)


@dataclass(frozen=True)
class _Failed:
    error: BaseException


READ_AHEAD_RECORDS = 2_000
"""How many records a ``ReadAhead`` reads before the engine takes them (10 pages of 200)."""
_CHUNK = 200
_CHUNK_S = 0.05


def open_read(
    connector: Connector, entity: str, mark: str | None, named: Sequence[InboxEvent] | None
) -> tuple[ReadPass | None, Iterator[NativeRecord]]:
    """How a member's entity is read: only the records its webhook events name when the run
    is event-driven and the member can (``named``: its events about ``entity``), else an
    incremental pass from ``mark`` where the member offers one, else the whole listing."""
    rp = connector.read_events(entity, named) if named else None
    if rp is None:
        rp = connector.read_incremental(entity, mark)
    return rp, (connector.read(entity) if rp is None else rp.records)


def read_member(
    store: StateStore,
    pipeline: str,
    entity: str,
    member: Member,
    ent: EntityPlan,
    progress: ProgressFn,
    ahead: ReadAhead | None = None,
    named: Sequence[InboxEvent] | None = None,
    keeps: frozenset[str] | None = None,
) -> MemberRead:
    """Read the member's records of ``entity`` and sort them by what changed since the
    member was last seen. Record-level problems are added to ``ent.issues``. A new or
    changed record of a member that reads JSON keeps only the canonical fields ``keeps`` in
    memory until it is planned (``MemberRead.keeps``).

    The read is an incremental pass where the member offers one (a dry run may read that
    way too; only a committed sync stores the mark the next pass starts from), or, in an
    event-driven run, a partial pass of the records the member's events (``named``) name.
    Linked records missing from a complete read are gone, unless the member also had
    unreadable records (one of them may be it): then they are blocked and reported.
    """
    index = store.link_index(pipeline, entity, member.name)
    if ahead is not None:  # started while the entity before was applied
        mark = ahead.mark
        rp, records = ahead.take()
    else:
        mark = store.read_mark(pipeline, entity, member.name)
        rp, records = open_read(member.connector, entity, mark, named)
    out = MemberRead(
        linked=len(index),
        read_pass=rp,
        marked=mark is not None,
        fingerprint=member.mapping.fingerprint(),
        stored_fingerprint=store.mapping_mark(pipeline, entity, member.name),
        keeps=keeps,
    )
    mapped_with, unlisted_before = _mark_parts(out.stored_fingerprint)
    out.remapped = bool(index) and out.fingerprint != mapped_with
    remap = out.remapped
    seen: set[str] = set()
    step = Step(progress, f"reading {member.name} {entity}")
    settle_every = collector.SETTLE_EVERY
    for rec in records:
        out.count += 1
        if monotonic() >= step.due:  # inlined Step.tick: one clock reading per record
            step.tick(out.count)
        if out.count % settle_every == 0:
            # the records read so far, held until the entity is applied (freed by reference
            # counting: no pass of the collector first, see ``SyncCollector.settle``)
            COLLECTOR.settle(collect=False)
        linked = None if rec.provisional else index.get(rec.id)
        if linked is not None:
            seen.add(rec.id)
            # a changed mapping reads the record again, whatever its native hash says
            observe(entity, member, ent, out, rec, linked[0], None if remap else linked[1])
        else:
            observe(entity, member, ent, out, rec, None, None)
    _unlisted(entity, member, ent, out, index, seen)
    out.structure = member.connector.structure(entity)
    problem = structure_problem(out.structure, out.linked, entity)
    if problem:
        raise StructureError(problem, connector=member.name, entity=entity)
    if out.structure.missing:
        columns = set(out.structure.missing)
        out.missing = frozenset(f.canonical for f in member.mapping.fields if f.native in columns)
        if out.structure.listed:
            # an API's field that none of its records has: never read as cleared, and not
            # written either (the API may not take it, or the mapping names it wrongly)
            out.unfilled = out.missing
        else:
            out.fills = bool(out.missing & member.mapping.writable)
    if out.complete:
        unlisted = frozenset(out.structure.missing) if out.structure.listed else frozenset()
        if unlisted:  # kept with the mapping's mark: the next read tells a field listed since
            out.fingerprint += UNLISTED + ",".join(sorted(unlisted))
        if unlisted_before - unlisted and not remap:
            _read_again(entity, member, ent, out, unlisted_before - unlisted)
    if remap:
        log.info(
            "mapping changed since the last read: every record read again",
            member=member.name,
            entity=entity,
            records=out.count,
        )
    if not out.complete:
        log.info(
            "read what webhook events named"
            if rp is not None and rp.named
            else "read incrementally",
            member=member.name,
            entity=entity,
            read=out.count,
            unseen=len(out.unseen),
        )
    step.end(out.count)
    return out


UNLISTED = "|unlisted="
"""Joins a member's mapping fingerprint and the fields none of its records listed (an API's),
in the mapping mark its complete read leaves."""


def _mark_parts(mark: str | None) -> tuple[str | None, frozenset[str]]:
    """(the mapping's fingerprint, the fields an API listed in none of its records) of a
    stored mapping mark."""
    if mark is None:
        return None, frozenset()
    fingerprint, joined, fields = mark.partition(UNLISTED)
    return fingerprint, frozenset(f for f in fields.split(",") if f) if joined else frozenset()


def _read_again(
    entity: str, member: Member, ent: EntityPlan, out: MemberRead, listed: frozenset[str]
) -> None:
    """Fields none of an API's records had before are listed now (a person gave one contact
    a company): every record read as unchanged is looked at again, so that the records
    created there without those fields get them (their links say they never held them)."""
    for key, seen in list(out.unchanged.items()):
        native = out.unchanged_native(seen)
        data = jsoncodec.loads(native) if isinstance(native, bytes) else native
        del out.unchanged[key]
        observe(entity, member, ent, out, NativeRecord(seen.native_id, data), key, None)
    log.info(
        "fields listed since the last read: every record looked at again",
        member=member.name,
        entity=entity,
        fields=sorted(listed),
    )


def check_structures(
    store: StateStore | None,
    pipeline: Pipeline,
    entities: Sequence[str] | None,
    connectors: Mapping[str, Connector],
) -> None:
    """Refuse a run before anything is recovered, planned or written anywhere when the
    storage of any entity it syncs (``entities``, None: all of the pipeline's) on any member
    is wrong: a duplicated column the sync uses, a missing or empty id column while records
    are linked to it (``store`` None: not known, only what the member says itself). Raises
    one ``StructureError`` naming every problem, so that a person fixes them at once."""
    problems: list[str] = []
    for entity in pipeline.entities:
        if entities is not None and entity not in entities:
            continue
        for name in pipeline.members_of(entity):
            try:
                member = open_member(pipeline, connectors[name], entity)
                if store is not None:
                    member.connector.expect(entity, store.read_mark(pipeline.name, entity, name))
                found = member.connector.structure(entity)
            except StructureError as exc:
                # one workbook holding every entity's sheet is damaged once, not per entity
                if str(exc) not in problems:
                    problems.append(str(exc))
                continue
            if not found.no_ids:
                continue
            linked = store.linked_count(pipeline.name, entity, name) if store is not None else 0
            problem = structure_problem(found, linked, entity)
            if problem:
                problems.append(str(StructureError(problem, connector=name, entity=entity)))
    if len(problems) == 1:
        raise StructureError(problems[0])
    if problems:
        raise StructureError(f"{len(problems)} problems:\n  " + "\n  ".join(problems))


def structure_problem(found: Structure, linked: int, entity: str) -> str:
    """Why a member's storage of ``entity`` cannot be read into a plan although the member
    itself could read it, or "": none of its records shows an id while ``linked`` records are
    linked to it (an id column removed or cleared). Every linked record would look deleted
    and every row new, so nothing is planned until a person restores the ids. A storage
    without ids and without links (a new sheet a person typed) is fine: it gets its ids at
    the first write."""
    if not found.no_ids or not linked:
        return ""
    records = f"{linked} {entity} are" if linked != 1 else f"1 record of {entity} is"
    where = f"{found.where}: " if found.where else ""
    fix = found.misread or "restore the column (undo the change, or copy it back from a backup)"
    return f"{where}{found.no_ids}, but {records} linked to it; {fix} and sync again"


def fill_notes(ent: EntityPlan, reads: Mapping[str, MemberRead], *, dry_run: bool) -> None:
    """Say in ``ent.notes`` which missing columns the plan fills: per member and column its
    sheet lacks, how many of the planned updates write it (a column nothing is written to
    is not added, and not mentioned). A field none of an API's records showed (neither read
    nor written) is said, with the hint that the mapping may name it wrongly."""
    for name, r in reads.items():
        if not r.structure.missing:
            continue
        filled = dict.fromkeys(r.structure.missing, 0)
        for action in ent.actions:
            if action.member == name and isinstance(action, Update):
                for column in filled.keys() & action.patch.keys():
                    filled[column] += 1
        verb = "would be" if dry_run else "is"
        if r.structure.listed:  # fields no record of an API showed, not a sheet's columns
            # said on a first sync too: the records it creates there go without the field
            for column in r.structure.missing:
                ent.notes.append(
                    f"{r.structure.where}: field {column} is in none of the "
                    f"{r.structure.listed} records listed; it is neither read as cleared "
                    f"nor written to {name} until one of its records has it. If the mapping "
                    "names the wrong field, correct it"
                )
            continue
        for column, rows in filled.items():
            if rows:
                ent.notes.append(
                    f"{r.structure.where}: column {column} is missing; it {verb} added at the "
                    f"end of the header and filled from the other members ({rows} "
                    f"{'row' if rows == 1 else 'rows'}); what was there is not read as cleared"
                )


def _unlisted(
    entity: str,
    member: Member,
    ent: EntityPlan,
    out: MemberRead,
    index: Mapping[str, tuple[str, str | None]],
    seen: set[str],
) -> None:
    """Sort the linked records the read did not list.

    - A partial pass lists only what changed since the mark (or what webhook events named):
      such a record is unchanged, not gone (``unseen``), unless the pass says the member
      deleted it (``ReadPass.gone``). One whose hash is unknown (linked by recovery) cannot
      be vouched for, so it is fetched and looked at like a listed one.
    - A complete read says it is gone, unless the member had unreadable records: one of them
      may be it (a Sync ID pasted over another), and deleting it elsewhere could lose data,
      so every missing one waits (``blocked``), reported.
    """
    missing = [(native_id, link) for native_id, link in index.items() if native_id not in seen]
    if not out.complete:
        deleted = out.read_pass.gone() if out.read_pass is not None else ()
        for native_id, (key, known_hash) in missing:
            if native_id in deleted:  # the member said so, and confirmed it
                out.gone[key] = native_id
            elif known_hash is None:
                fetch_unseen(entity, member, ent, out, key, native_id, known_hash)
            else:
                out.unseen[key] = native_id
        return
    out.gone = {key: native_id for native_id, (key, _hash) in missing}
    unreadable = sum(1 for i in ent.issues if i.member == member.name)
    if out.gone and unreadable:
        out.blocked.update(out.gone)
        out.withheld, out.gone = out.gone, {}
        out.unreadable_count = unreadable
        say_withheld(entity, member.name, ent, out)


@dataclass(frozen=True)
class Named:
    """What an event-driven run syncs of an entity: the records its events name."""

    members: frozenset[str]
    """The members read by their events (a partial pass of the named records)."""
    keys: frozenset[str]
    """The hub records those reads showed (changed, unchanged, gone or blocked)."""
    unlinked: set[tuple[str, str]] = field(default_factory=set)
    """(member, hub key) of the new records this run left unlinked although they match a hub
    record (``keep_named``)."""

    def keep_named(self, matched: MatchResult, reads: Mapping[str, MemberRead]) -> None:
        """Of the records new on the members, keep only those linked to a named hub record,
        or grouped with a record new on a member read by its events. Any other (a row typed
        into a sheet) is left for a run that reads everything: the records a few events
        name cannot tell whether it is already on those members, unlinked."""
        groups: dict[str, Mapping[str, Observed]] = {}
        for key, group in matched.groups.items():
            if key in self.keys or set(group) & self.members:
                groups[key] = group
            else:
                for name in group:
                    reads[name].set_aside = True
                    self.unlinked.add((name, key))
        matched.groups = groups
        matched.new_keys &= set(groups)

    def leaves(self, kp: KeyPlan) -> bool:
        """Whether the run leaves a record for one that reads everything: it would create
        it on a member read by its events (a create a failed run left, a record brought back),
        where it may be among the records no event named; or on a member whose new record
        matching it this run left unlinked (a person typed the customer a failed create owed
        that member)."""
        return any(
            isinstance(a, Create)
            and (a.member in self.members or (a.member, kp.key) in self.unlinked)
            for a in kp.actions
        )


def narrow_to_named(reads: Mapping[str, MemberRead], by_events: set[str]) -> Named:
    """Narrow an event-driven run's reads of one entity to the records its events name.

    ``by_events`` are the members read by their events: what their reads showed is what the
    run syncs. The other members were read as any run reads them; a change or a delete
    there that concerns no named record is taken as not seen (``unseen``): it waits for a run
    that reads everything, which sees it still (its last-seen state is kept as it was)."""
    keys: set[str] = set()
    for name in by_events:
        r = reads[name]
        keys.update(r.changed, r.unchanged, r.gone, r.blocked)
    for name, r in reads.items():
        if name in by_events:
            continue
        aside = [k for k in r.changed if k not in keys]
        for key in aside:
            r.unseen[key] = r.changed.pop(key).record.id
        gone = [k for k in r.gone if k not in keys]
        for key in gone:
            r.unseen[key] = r.gone.pop(key)
        r.set_aside = r.set_aside or bool(aside or gone)
    return Named(frozenset(by_events), frozenset(keys))


def set_aside_copies(
    entity: str,
    reads: Mapping[str, MemberRead],
    ent: EntityPlan,
    decided: Callable[[Observed], bool] | None = None,
    parked: Callable[[Observed, str, list[str | Observed]], None] | None = None,
    locate: Callable[[str, str], str | None] | None = None,
) -> None:
    """Report and set aside each record new on a member that holds exactly what another
    record read from it holds (a row copied without its Sync ID, a customer or payment typed
    twice): syncing it would count that record twice. Records with an id the member gave
    them, and linked ones, are the originals; a blank-id copy is the one set aside. A record
    a person decided on (``decided``) is left to ``match``; each one set aside is told to
    ``parked`` with the original (its hub key, or the new record it copies). ``locate``
    (member, native id) names where an unchanged original is (its row), which its read kept
    no note of."""
    for name, r in reads.items():
        if not r.new:
            continue
        # the first record of each hash, or where it is: a location is asked for only where
        # a hash comes twice (it may wait on disk, ``Observed.location``)
        first: dict[str, str | Observed] = {obs.native_hash: obs for obs in r.changed.values()}
        origin: dict[str, str | Observed] = {o.native_hash: k for k, o in r.changed.items()}
        unchanged: dict[str, str] = {}
        for key, u in r.unchanged.items():
            if u.native_hash not in first:
                first[u.native_hash] = f"the record {u.native_id}"
                unchanged[u.native_hash] = u.native_id
            origin.setdefault(u.native_hash, key)
        copies: set[int] = set()
        for obs in sorted(r.new, key=lambda o: o.record.provisional):  # ids first
            if decided is not None and decided(obs):
                continue
            was = first.setdefault(obs.native_hash, obs)
            original = origin.setdefault(obs.native_hash, obs)
            if was is obs:
                continue
            seen = was if isinstance(was, str) else was.location or was.record.id
            if seen != (obs.location or obs.record.id):
                native_id = unchanged.pop(obs.native_hash, None)
                where = locate(name, native_id) if native_id and locate else None
                if where:
                    seen = first[obs.native_hash] = f"{where} (Sync ID {native_id})"
                copies.add(id(obs))
                why = (
                    f"holds exactly what {seen} holds (a copied row, or one typed twice?): "
                    "a possible duplicate, not synced; delete it, or change it if it is "
                    "another record"
                )
                ent.issues.append(Issue(entity, name, obs.location, why))
                if parked is not None:
                    parked(obs, why, [original])
        if copies:
            r.new = [obs for obs in r.new if id(obs) not in copies]


def say_withheld(entity: str, member: str, ent: EntityPlan, out: MemberRead) -> None:
    """Report (once, or again with the right count after some were re-linked) the linked
    records missing from the member that are not taken for deleted while it has unreadable
    records."""
    start = f"missing from {member}; "
    ent.issues[:] = [i for i in ent.issues if not (i.member == member and start in i.message)]
    n = len(out.withheld)
    if n:
        records = f"1 linked record of {entity} is" if n == 1 else f"{n} linked {entity} are"
        ent.issues.append(
            Issue(
                entity,
                member,
                member,
                f"{records} {start}{'it is' if n == 1 else 'they are'} not treated as deleted "
                f"while it has {out.unreadable_count} unreadable record(s) — fix those and "
                "sync again",
            )
        )


def observe(
    entity: str,
    member: Member,
    ent: EntityPlan,
    out: MemberRead,
    rec: NativeRecord,
    key: str | None,
    known_hash: str | None,
) -> None:
    """Detect what one record read from the member is: unchanged, changed, new, or
    blocked (unreadable: reported, its hub record left alone). ``key`` is the hub record it
    is linked to (None: not linked), ``known_hash`` its native hash when last seen."""
    if rec.error:
        _block(entity, member, ent, out, rec, key, rec.error)
        if key is None and rec.data:
            _shadow(member, out, rec)
        return
    text: bytes | None = None
    if member.connector.reads_json and not rec.digest:
        text, digest = json_and_hash(rec.data)
    else:
        digest = rec.native_hash()
    if key is not None and known_hash == digest:
        # a record of JSON values waits on disk, as its text, in case its hub record is planned
        native = rec.data if text is None else out.spill.put(text)
        out.unchanged[key] = Unchanged(rec.id, native, digest)
        return
    try:
        canonical = member.mapping.to_canonical(rec.data, location=rec.location)
    except RecordError as exc:
        _block(entity, member, ent, out, rec, key, str(exc))
        return
    if member.refs is not None:
        unresolved = member.refs.resolve(canonical)
        if unresolved:
            _block(entity, member, ent, out, rec, key, "; ".join(unresolved))
            return
    obs = Observed(member.name, rec, canonical, digest, out.count)
    if text is not None:
        # the native record waits on disk until its hub record is planned: matching and
        # everything before planning look at the canonical record, its id and its location;
        # of the canonical record, only at the fields ``out.keeps``
        keeps = out.keeps
        worth = keeps is not None and _worth(canonical, keeps)
        kept = _canonical_text(canonical) if worth else b""
        # and so does its location: before then, only messages look at it (and
        # set_aside_copies, for two records of one hash)
        where = location_text(rec.location)
        obs.spilled = out.spill.put(text, kept, where)
        if where:
            obs.record = rec.released("")
            obs.spill = out.spill
        else:
            obs.record = rec.released()
        if kept and keeps is not None:
            obs.canonical = Projected(canonical, keeps, out.spill, obs.spilled)
    if key is None:
        out.new.append(obs)
    else:
        out.changed[key] = obs


def _worth(canonical: Record, keeps: frozenset[str]) -> bool:
    """Whether keeping only the fields ``keeps`` of ``canonical`` in memory is worth its
    writing and reading: it leaves out at least half of the fields. A payment's relink keys
    are four of its six (the two left are a shared word and a small number): kept whole, it
    costs no more."""
    return bool(canonical) and 2 * sum(1 for name in canonical if name in keeps) <= len(canonical)


def _canonical_text(canonical: Record) -> bytes:
    """The JSON text a canonical record is kept on disk as, or b"" where it would not come
    back exactly as it is (``spill.json_exact``): that record stays whole in memory."""
    if not json_exact(canonical):
        return b""
    try:
        return jsoncodec.dumpb(canonical)
    except UnicodeEncodeError:  # a lone surrogate
        return b""


def kept_fields(pipeline: Pipeline, entity: str, *, alone: bool = False) -> frozenset[str]:
    """The canonical fields that the decisions made before a record is planned compare, and
    so the fields a record read keeps in memory until then (``spill.Projected``): the match
    keys, every relink key's fields (``match``, ``Engine._relink_vanished``), the fields a
    sorted sheet is told by (``integrity``), and the references (the records a plan needs
    looked up first, ``refs.referenced``).

    ``alone``: the records are a first sync's whose other members hold none of the entity
    (``engine._read_order``). Nothing can be paired with them by a relink key (``match``
    looks for none where no record of another member or of the hub could pair), and none is
    linked yet (no vanished record to pair, no changed one to compare): their relink keys'
    fields are left out. A customer then keeps its e-mail and mobile number alone, a payment
    its invoice and amount."""
    spec = entity_spec(entity)
    names = set(pipeline.match_keys(entity))
    for combination in () if alone else spec.relink_keys:
        names.update(combination)
    names.update(spec.sorted_by)
    names.update(f.name for f in spec.fields if f.type == "ref")
    return frozenset(names)


def _shadow(member: Member, out: MemberRead, rec: NativeRecord) -> None:
    """Keep what can be read of an unlinked record in error (a row copied with its Sync ID
    after the state was lost), so that no record new elsewhere is created here as well
    while it may be this one (``MemberRead.unreadable``)."""
    try:
        canonical = member.mapping.to_canonical(rec.data, location=rec.location)
    except RecordError:
        return
    if member.refs is not None and member.refs.resolve(canonical):
        return  # a reference that names nothing: it cannot be compared
    out.unreadable.append(Observed(member.name, rec, canonical, rec.native_hash(), out.count))


def _block(
    entity: str,
    member: Member,
    ent: EntityPlan,
    out: MemberRead,
    rec: NativeRecord,
    key: str | None,
    why: str,
) -> None:
    ent.issues.append(Issue(entity, member.name, rec.location, why))
    if key is not None:
        out.blocked.add(key)
    else:
        out.faulty.append(rec)


def fetch_unseen(
    entity: str,
    member: Member,
    ent: EntityPlan,
    out: MemberRead,
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
        out.reread = True
        return
    observe(entity, member, ent, out, rec, key, known_hash)


def member_views(
    key: str,
    rs: RecordState | None,
    reads: Mapping[str, MemberRead],
    group: Mapping[str, Observed],
    members: list[Member],
) -> dict[str, MemberView]:
    """Each member's side of hub record ``key`` (``rs``: its state, None when it is new to
    the hub; ``group``: the new records matched to it this run)."""
    return {m.name: _view(m.name, key, rs, reads[m.name], group) for m in members}


def _view(
    name: str,
    key: str,
    rs: RecordState | None,
    r: MemberRead,
    group: Mapping[str, Observed],
) -> MemberView:
    """One member's view of hub record ``key``, from what its read found of it (first
    match wins: blocked, new, changed, unchanged, unseen, gone) or its link."""
    link = rs.links.get(name) if rs else None
    dirty = bool(link and link.dirty)
    last_seen = link.last_seen if link else None
    if key in r.blocked:
        # left alone, but what its link says is kept in view: a column the member lacks
        # makes its last-seen values there stale (``reconcile``'s blocked records)
        return MemberView(
            member=name,
            status="blocked",
            native_id=link.native_id if link else None,
            last_seen=last_seen,
            native_hash=link.native_hash if link else None,
            dirty=dirty,
            missing=r.missing,
        )
    if name in group:
        obs = r.unspill(group[name])
        # never seen as it is: what it holds that differs is a change, a blank is no clear
        view = _observed_view(obs, "new", None, dirty, r.missing)
        if obs.relinked:
            # the record it was, typed again or its Sync ID blanked: a row retyped with only
            # some of its cells does not clear the rest everywhere; they are filled back in
            view.relinked = True
        else:
            # a record whose member has a live link to this hub record (a row not given its
            # Sync ID yet) is the record that link stands for, not one joining; one whose
            # record there was deleted (a tombstone) and is typed in again is joining
            view.joined = obs.joined and (link is None or link.tombstone)
        return view
    if key in r.changed:
        return _observed_view(r.unspill(r.changed[key]), "changed", last_seen, dirty, r.missing)
    if key in r.unchanged:
        same = r.unchanged[key]
        return MemberView(
            member=name,
            status="unchanged",
            native_id=same.native_id,
            current=last_seen,
            last_seen=last_seen,
            native=r.unchanged_native(same),
            native_hash=same.native_hash,
            dirty=dirty,
            missing=r.missing,
        )
    if key in r.unseen:
        # not listed by a partial read: unchanged since it was last seen, which is all we
        # know of it (no native record: an update fetches it first)
        return MemberView(
            member=name,
            status="unchanged",
            native_id=r.unseen[key],
            current=last_seen,
            last_seen=last_seen,
            native_hash=link.native_hash if link else None,
            dirty=dirty,
            missing=r.missing,
        )
    if key in r.gone:
        return MemberView(member=name, status="gone", native_id=r.gone[key], last_seen=last_seen)
    if link is not None and link.tombstone:
        return MemberView(member=name, status="tombstone")
    return MemberView(member=name, status="absent", dirty=dirty)


def _observed_view(
    obs: Observed,
    status: str,
    last_seen: dict[str, object] | None,
    dirty: bool,
    missing: frozenset[str],
) -> MemberView:
    rec = obs.record
    return MemberView(
        member=obs.member,
        status="new" if status == "new" else "changed",
        native_id=rec.id,
        current=obs.canonical,
        last_seen=last_seen,
        native=rec.data,
        native_hash=obs.native_hash,
        provisional=rec.provisional if status == "new" else False,
        dirty=dirty,
        location=rec.location,
        missing=missing,
    )
