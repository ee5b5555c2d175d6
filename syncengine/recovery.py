"""Recovery: the journal's intents, what they carry, and settling those a run left pending.

Every write is journalled as an *intent* before the member is called (see ``apply``). The
payload an intent carries is written and read here, by the dataclasses below, so the two
sides cannot drift apart. A run that dies leaves intents ``pending``; the next run settles
them before it plans anything of their entity:

- ``recover``, at the start of the run, turns interrupted updates into hints for planning
  and gives up interrupted deletes (updates and deletes are idempotent: planning writes
  what is still owed);
- ``settle_creates``, once an entity's members are read and before anything new in that
  read is matched, tells each interrupted create from the member's own read of this run:
  the record it made is there, unlinked, holding what the intent wrote (or, on a member that
  takes the engine's ids, the intent's key). Found, it is linked, so that it is neither
  taken for new nor created again; not found, the intent is given up and the record is
  planned again. The requests of a recovery are those of the read the run makes anyway.

Only what a read cannot show is looked up on the member, one request per intent
(``Connector.get`` where the engine gives the ids, else ``Connector.find``): the creates of
a member read by a partial (incremental) pass or one that cannot list, of an entity this run
does not sync, and creates whose record may be one the read could not make out (in error).

An intent belongs to its run and to the lease that run held (``Intent.holder``): it is
recovered only once that lease is gone (released, or expired after a crash). Every run that
writes holds the pipeline's lease (``syncengine.leasing``), so the intents a run finds are
those of runs that are over; the intents of a run whose lease still holds are never touched.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncengine import model
from syncengine.config import Pipeline
from syncengine.connector import Connector, NativeRecord
from syncengine.errors import NotFoundError, SyncEngineError, SyncStopped
from syncengine.mapping import EntityMapping
from syncengine.match import Observed
from syncengine.member import Member, canonical_of
from syncengine.plan import Action, Create, EntityPlan, KeyPlan, Update
from syncengine.progress import ProgressFn, Step, no_progress
from syncengine.read import MemberRead, observe
from syncengine.reconcile import MemberView
from syncengine.refs import References
from syncengine.spill import whole
from syncengine.state import Intent, StateStore

log = structlog.get_logger("syncengine.engine")


# ---------------------------------------------------------------------------- payloads
@dataclass(frozen=True)
class CreatePayload:
    """What an interrupted create needs to be found and linked."""

    native: dict[str, Any]
    """The native record sent to the member."""
    base: model.Record
    """The hub record's base after the write; empty where the record was committed with the
    intent (a record new to the hub: see ``apply``), which recovery then finds stored."""
    sources: dict[str, str]
    """member -> native id of the members that already held the record: recovery re-links
    them with the create, so a record without match keys cannot be copied twice."""

    def to_json(self) -> dict[str, Any]:
        out = {"native": self.native, "base": self.base, "sources": self.sources}
        if not self.base:
            del out["base"]
        return out

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> CreatePayload:
        return cls(
            payload.get("native") or {}, payload.get("base") or {}, payload.get("sources") or {}
        )


@dataclass(frozen=True)
class UpdatePayload:
    """What an interrupted update was writing."""

    patch: dict[str, Any]
    values: model.Record
    """field -> the canonical value written."""
    assign_id: str | None = None
    """The id given to a provisional record (the hub key), with its native hash as read."""
    native_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"patch": self.patch, "values": self.values}
        if self.assign_id:
            payload["assign_id"] = self.assign_id
            payload["native_hash"] = self.native_hash
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> UpdatePayload:
        return cls(
            payload.get("patch") or {},
            payload.get("values") or {},
            payload.get("assign_id"),
            payload.get("native_hash"),
        )


@dataclass(frozen=True)
class DeletePayload:
    native_id: str

    def to_json(self) -> dict[str, Any]:
        return {"native_id": self.native_id}


def intent_payload(action: Action, kp: KeyPlan, *, base_stored: bool = False) -> dict[str, Any]:
    """The journal payload of ``action``, planned in ``kp`` (``base_stored``: the key's base
    is committed with the intent, so a create's payload need not carry it: on a first sync
    that is a third of the journal's bytes)."""
    if isinstance(action, Create):
        sources = {
            m: lp.native_id
            for m, lp in kp.links.items()
            if lp.native_id and not lp.remove and not lp.tombstone
        }
        base = {} if base_stored else kp.base_after or {}
        return CreatePayload(action.native, base, sources).to_json()
    if isinstance(action, Update):
        values = {f: new for f, (_old, new) in action.changes.items()}
        if action.assign_id:
            return UpdatePayload(action.patch, values, action.assign_id, action.read_hash).to_json()
        return UpdatePayload(action.patch, values).to_json()
    return DeletePayload(action.native_id).to_json()


# ---------------------------------------------------------------------------- recovery
@dataclass
class Recovery:
    """What the pending intents tell this run's planning."""

    match: dict[tuple[str, str], str] = field(default_factory=dict)
    """(member, native hash of a provisional record) -> the key it was being given."""
    written: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    """(entity, key, member) -> canonical values an interrupted update was writing."""
    updates: dict[str, list[int]] = field(default_factory=dict)
    """entity -> ids of the interrupted update intents, finished once the entity commits."""
    creates: dict[str, list[Intent]] = field(default_factory=dict)
    """entity -> its interrupted creates, settled from the members' reads once the entity
    is read (``settle_creates``)."""
    pending: int = 0
    """How many intents were pending when the run started."""
    writing: set[tuple[str, str, str]] = field(default_factory=set)
    """(entity, key, member) of every pending intent: a record of that member found by its
    values is one an interrupted run was writing, not a member's own record joining."""

    def apply_written_hints(self, entity: str, key: str, views: Mapping[str, MemberView]) -> None:
        """Where a member holds exactly what an interrupted update wrote, count it as seen:
        our own write, not an edit of the member's. A record an interrupted run was writing
        to is not one joining the hub record (``MemberView.joined``)."""
        for member, view in views.items():
            if view.joined and (entity, key, member) in self.writing:
                view.joined = False
        if not self.written:
            return
        for member, view in views.items():
            values = self.written.get((entity, key, member))
            if not values or not view.present or view.current is None or view.last_seen is None:
                continue
            seen = dict(view.last_seen or {})
            for name, value in values.items():
                if view.current.get(name) == value:
                    seen[name] = value
            view.last_seen = seen


def recover(
    store: StateStore,
    pipeline: Pipeline,
    connectors: Mapping[str, Connector],
    refs: References | None,
    *,
    dry_run: bool,
    holder: str | None = None,
    entities: Collection[str] | None = None,
    progress: ProgressFn = no_progress,
) -> Recovery:
    """Take the writes an interrupted run left pending, at the start of a run.

    Only the intents of runs that are over are taken: while another holder than ``holder``
    (this run's lease) holds the pipeline's lease, its intents are left alone, neither
    settled nor used as hints: that run is still writing them.

    - A create of an entity this run plans (``entities``, None: all of the pipeline's) is
      left for ``settle_creates``, which tells it from the member's read in this run
      (``Recovery.creates``). A create of any other entity is looked up on its target now
      (by id where the engine chose it, else by the data it carried), since no read of
      this run shows it: found, it is linked, with what was written as its last-seen
      version, so that an edit made since then is still seen as an edit; not found, it is
      abandoned and planned again by the next run that syncs the entity.
    - An update may or may not have reached the member. Its intended values become
      hints: where the member now holds exactly them, they count as our own write, not
      as an edit of the member's (which could otherwise win a conflict against a newer
      edit elsewhere). These intents stay pending until the entity's state is committed.
    - A provisional record's id assignment becomes a match hint for that record.
    - A delete is given up: planning deletes again what is still to be deleted.

    A dry run only reads the hints; it settles nothing and looks nothing up. ``progress`` is
    told of the writes being settled here (when there are any).
    """
    recovery = Recovery()
    intents = _of_runs_that_are_over(store, pipeline.name, holder)
    recovery.pending = len(intents)
    planned = set(pipeline.entities if entities is None else entities)
    settle: list[Intent] = []
    for intent in intents:
        recovery.writing.add((intent.entity, intent.key, intent.member))
        if intent.op == "update":
            payload = UpdatePayload.from_json(intent.payload)
            if payload.assign_id and payload.native_hash:
                recovery.match[(intent.member, payload.native_hash)] = intent.key
            if payload.values:
                recovery.written.setdefault((intent.entity, intent.key, intent.member), {}).update(
                    payload.values
                )
            recovery.updates.setdefault(intent.entity, []).append(intent.id)
        elif (
            intent.op == "create"
            and intent.entity in planned
            and intent.entity in pipeline.entities
            and intent.member in connectors
            and pipeline.syncs(intent.member, intent.entity)
        ):
            recovery.creates.setdefault(intent.entity, []).append(intent)
        else:
            settle.append(intent)
    if dry_run:
        return recovery
    step = Step(progress if settle else no_progress, "recovering interrupted writes", len(settle))
    for done, intent in enumerate(settle, 1):
        conn = connectors.get(intent.member)
        if (
            intent.op == "create"
            and intent.entity in pipeline.entities
            and not pipeline.syncs(intent.member, intent.entity)
        ):
            # its member no longer syncs the entity: what it may have created there stays
            # unlinked, and is matched anew if it syncs the entity again
            log.warning(
                "interrupted create abandoned: its member no longer syncs the entity",
                member=intent.member,
                entity=intent.entity,
                key=intent.key,
            )
        if not (
            intent.op == "create"
            and conn is not None
            and intent.entity in pipeline.entities
            and pipeline.syncs(intent.member, intent.entity)
            and _recover_create(store, pipeline, conn, intent, connectors, refs)
        ):
            with store.transaction() as tx:
                tx.finish_intent(intent.id, "abandoned")
        step.tick(done)
    step.end(len(settle))
    return recovery


def _of_runs_that_are_over(store: StateStore, pipeline: str, holder: str | None) -> list[Intent]:
    """The pipeline's pending intents, less those of a run whose lease still holds (one that
    is not ``holder``'s: an earlier run under this same lease is over)."""
    intents = store.pending_intents(pipeline)
    live = store.live_lease(pipeline)
    if live is None or live.holder == holder:
        return intents
    left = [i for i in intents if i.holder == live.holder]
    if left:
        log.info(
            "left the pending writes of a run still going alone",
            pipeline=pipeline,
            holder=live.holder,
            intents=len(left),
        )
    return [i for i in intents if i.holder != live.holder]


def _look_up(
    conn: Connector, entity: str, intent: Intent, payload: CreatePayload
) -> tuple[list[NativeRecord], str | None]:
    """An interrupted create looked up on its target, one request: by its key where the
    member takes the engine's ids, else by the data it carried. Returns what was found and
    why the lookup failed (None: it did not)."""
    try:
        if conn.capabilities(entity).assigns_ids:
            return [r for r in [conn.get(entity, intent.key)] if r is not None], None
        return conn.find(entity, payload.native), None
    except NotFoundError:
        return [], None
    except SyncStopped:
        raise  # the run stops: the intent is looked up by the next one
    except SyncEngineError as exc:
        return [], f"recovery lookup failed: {exc}"


def _ambiguous(count: int, member: str) -> str:
    return (
        f"{count} records on {member} look like the one an interrupted run created; left for "
        "matching"
    )


def _recover_create(
    store: StateStore,
    pipeline: Pipeline,
    conn: Connector,
    intent: Intent,
    connectors: Mapping[str, Connector],
    refs: References | None,
) -> bool:
    """Look an interrupted create of an entity this run does not read up on its target;
    link it when exactly one unlinked record there is it (True), else abandon the intent
    (False: it is planned again)."""
    p, e = pipeline.name, intent.entity
    mapping = pipeline.mappings[(intent.member, e)]
    member_refs = refs.for_member(intent.member, mapping) if refs else None
    payload = CreatePayload.from_json(intent.payload)
    found, error = _look_up(conn, e, intent, payload)
    linked = store.link_index(p, e, intent.member)
    fresh = [r for r in found if r.id not in linked and not r.provisional]
    if len(fresh) != 1:
        if len(fresh) > 1:
            error = _ambiguous(len(fresh), intent.member)
        with store.transaction() as tx:
            tx.finish_intent(intent.id, "abandoned", error=error)
        return False
    rec = fresh[0]
    written = canonical_of(mapping, NativeRecord(rec.id, payload.native), member_refs)
    with store.transaction() as tx:
        if not store.load_records(p, e, [intent.key]):
            tx.put_record(p, e, intent.key, payload.base)
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
        for source, source_id in payload.sources.items():
            if source == intent.member or source not in connectors:
                continue
            if source_id not in store.link_index(p, e, source):
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


# ------------------------------------------------------------- creates, from the read
@dataclass
class _Settled:
    """What became of one interrupted create: the record it made, or why none is taken."""

    intent: Intent
    payload: CreatePayload
    record: NativeRecord | None = None
    """The record the create made (None: not found, or not told apart; given up)."""
    obs: Observed | None = None
    """The record as this run's read showed it (None: in error there, or not listed)."""
    error: str | None = None
    look_up: bool = False
    """The read cannot tell: the record is looked up on the member."""


def settle_creates(
    store: StateStore,
    pipeline: Pipeline,
    entity: str,
    members: Sequence[Member],
    reads: Mapping[str, MemberRead],
    ent: EntityPlan,
    recovery: Recovery,
    *,
    dry_run: bool,
) -> None:
    """Settle the entity's interrupted creates from this run's reads of its members: called
    once every member is read, before the records new in those reads are matched.

    Which record an interrupted create made is decided on what its member's read shows
    (``_from_read``): the unlinked record with the intent's key as its id where the member
    takes the engine's ids, else the unlinked record holding what the intent wrote. Only a
    member read by a partial pass, or one that cannot list, and records the read could not
    make out, are looked up on the member, one request per intent (``_look_up``).

    A record found is linked as a create that was recorded would have been, with what was
    written as its last-seen version (an edit made since is an edit), and the records the
    create was copied from are linked with it; the intent is done. The reads are told too:
    the record is no longer new there but linked, as a read of it would have found it had
    the create been recorded (changed since what was written, or blocked while in error). A
    create whose record is not found is abandoned, and so planned again; one that several
    records may be is abandoned with an error, left for matching. Every outcome is
    committed in one transaction, before anything of the entity is written.

    A dry run settles and looks up nothing: the records the read tells are only matching
    hints (``Recovery.match``), so that its plan does not create them again either.
    """
    intents = recovery.creates.pop(entity, [])
    if not intents:
        return
    by_name = {m.name: m for m in members}
    pending: dict[str, list[Intent]] = {}
    for intent in intents:
        pending.setdefault(intent.member, []).append(intent)
    settled: list[_Settled] = []
    for name, mine in pending.items():
        member, r = by_name.get(name), reads.get(name)
        if member is None or r is None:  # not a member of this run: planned again
            settled += [_Settled(i, CreatePayload.from_json(i.payload)) for i in mine]
            continue
        if r.complete and member.caps.read:
            told = _from_read(pipeline, entity, member, r, mine)
        else:
            told = [_Settled(i, CreatePayload.from_json(i.payload), look_up=True) for i in mine]
        if not dry_run and any(s.look_up for s in told):
            _look_up_the_rest(store, pipeline.name, entity, member, told)
        settled += told
    if dry_run:
        for s in settled:
            if s.obs is not None:
                recovery.match[(s.intent.member, s.obs.native_hash)] = s.intent.key
        return
    _commit_settled(store, pipeline.name, entity, by_name, reads, ent, settled)


def _from_read(
    pipeline: Pipeline, entity: str, member: Member, r: MemberRead, intents: Sequence[Intent]
) -> list[_Settled]:
    """Which record of ``member``'s complete read each interrupted create made, among the
    records the read found unlinked.

    - Where the member takes the engine's ids (a sheet's Sync ID), it is the record with
      the intent's key as its id, also one in error (it is linked, and left alone while the
      error lasts).
    - Elsewhere it is told by what the intent wrote, in canonical form: the record that holds
      every value it wrote; failing that (a person edited it since), the record with its
      first match key's value (``_match_written``).

    A create none of whose candidates the read could make out (a record in error that could
    not be mapped) is looked up (``look_up``)."""
    settled = [_Settled(i, CreatePayload.from_json(i.payload)) for i in intents]
    if member.caps.assigns_ids:
        shown: dict[str, list[tuple[NativeRecord, Observed | None]]] = {}
        for obs in r.new:
            if not obs.record.provisional:
                shown.setdefault(obs.record.id, []).append((obs.record, obs))
        for rec in r.faulty:  # in error: also those whose values could be read
            if not rec.provisional:
                shown.setdefault(rec.id, []).append((rec, None))
        for s in settled:
            found = shown.get(s.intent.key, [])
            if len(found) == 1:
                s.record, s.obs = found[0]
            elif found:
                s.error = _ambiguous(len(found), member.name)
        return settled
    candidates = [o for o in (*r.new, *r.unreadable) if not o.record.provisional]
    compared = {id(o.record) for o in r.unreadable}
    unmade = any(not rec.provisional and id(rec) not in compared for rec in r.faulty)
    _match_written(pipeline, entity, member, r, settled, candidates)
    for s in settled:
        if s.record is None and s.error is None and unmade:
            s.look_up = True
    return settled


def _match_written(
    pipeline: Pipeline,
    entity: str,
    member: Member,
    r: MemberRead,
    settled: Sequence[_Settled],
    candidates: Sequence[Observed],
) -> None:
    """Give each interrupted create the candidate that holds what it wrote (``_Settled.
    record``), or say it is ambiguous (``error``).

    First every value the create wrote must be there (``mapping.equivalent``: as the member
    shows it). A create for which no candidate holds them all (a person edited the record
    since: that edit is then seen as an edit) takes the candidate with the value it wrote
    for the first match key it wrote, among those no other create took or might take.

    Creates that wrote the same values (twins without a match key) take the candidates
    holding them one each, when there are as many candidates as creates (``_pair``); with
    more candidates than creates, which is which cannot be told, and none is taken."""
    spec = model.entity_spec(entity)
    mapping = member.mapping
    for obs in candidates:
        # compared on whatever the create wrote: the whole record, not what the read keeps
        obs.canonical = whole(obs.canonical)
    wrote: dict[int, dict[str, Any]] = {}
    for s in settled:
        written = canonical_of(mapping, NativeRecord("", s.payload.native), member.refs)
        values = {
            n: v
            for n, v in written.items()
            if v is not None and v != "" and not spec.is_meta(n) and n not in r.missing
        }
        if values:
            wrote[s.intent.id] = values
        else:  # nothing the read could be compared with
            s.look_up = True
    keys = pipeline.match_keys(entity)
    index = _ValueIndex(candidates)

    def holds(obs: Observed, values: Mapping[str, Any]) -> bool:
        return all(_same(mapping, n, v, obs.canonical.get(n)) for n, v in values.items())

    exact: dict[int, list[int]] = {}
    for s in settled:
        given = wrote.get(s.intent.id)
        if given is None:
            continue
        probe = _probe(given, keys)
        pool = index.having(*probe) if probe else range(len(candidates))
        exact[s.intent.id] = [c for c in pool if holds(candidates[c], given)]
    paired, contested = _pair(exact)
    taken = set(paired.values()) | {c for cs in contested.values() for c in cs}
    by_key: dict[int, list[int]] = {}
    for s in settled:
        given = wrote.get(s.intent.id)
        if given is None or exact.get(s.intent.id):
            continue
        for name in keys:
            if given.get(name) is None:
                continue
            found = [
                c
                for c in index.having(name, given[name])
                if c not in taken
                and _same(mapping, name, given[name], candidates[c].canonical.get(name))
            ]
            if found:
                by_key[s.intent.id] = found
                break
    paired_by_key, contested_by_key = _pair(by_key)
    paired.update(paired_by_key)
    contested.update(contested_by_key)
    for s in settled:
        chosen = paired.get(s.intent.id)
        if chosen is not None:
            s.obs = candidates[chosen]
            s.record = s.obs.record
        elif s.intent.id in contested:
            s.error = _ambiguous(len(contested[s.intent.id]), member.name)


def _same(mapping: EntityMapping, name: str, wrote: Any, holds: Any) -> bool:
    """Whether the member holds the value written, as it shows it."""
    return bool(wrote == holds or mapping.equivalent(name, wrote, holds))


def _probe(values: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, Any] | None:
    """The field (and value) the candidates for ``values`` are first narrowed by: the first
    match key written, else the first plain text or number written. None: compare all."""
    for name in (*keys, *sorted(values)):
        value = values.get(name)
        if isinstance(value, str | int | bool) and value != "":
            return name, value
    return None


class _ValueIndex:
    """Candidates by the value of one field, built for a field when first asked for."""

    def __init__(self, candidates: Sequence[Observed]) -> None:
        self.candidates = candidates
        self.by_field: dict[str, dict[Any, list[int]]] = {}

    def having(self, name: str, value: Any) -> list[int]:
        index = self.by_field.get(name)
        if index is None:
            index = {}
            for c, obs in enumerate(self.candidates):
                held = obs.canonical.get(name)
                if isinstance(held, str | int | bool):
                    index.setdefault(held, []).append(c)
            self.by_field[name] = index
        return index.get(value, []) if isinstance(value, str | int | bool) else []


def _pair(options: Mapping[int, Sequence[int]]) -> tuple[dict[int, int], dict[int, list[int]]]:
    """Pair intents with the candidates each one may have made (``options``: intent id ->
    candidates). A set of candidates that is exactly what as many intents may have made is
    theirs, one each (one intent, one candidate; or twins: creates that wrote the same
    values, and as many records holding them), smallest sets first; what they took is no
    longer a candidate of the others, and pairing goes on until nothing more is settled.

    Returns intent -> its candidate, and intent -> the candidates it is left with where more
    than one intent or candidate remains (ambiguous). An intent left with none made nothing
    the read shows."""
    left = {i: set(cs) for i, cs in options.items() if cs}
    paired: dict[int, int] = {}
    while True:
        groups: dict[frozenset[int], list[int]] = {}
        for i, cs in left.items():
            if cs:
                groups.setdefault(frozenset(cs), []).append(i)
        ready = sorted(
            ((cs, ids) for cs, ids in groups.items() if len(cs) == len(ids)),
            key=lambda group: (len(group[0]), min(group[1])),
        )
        if not ready:
            break
        claimed: set[int] = set()
        for group, ids in ready:
            if group & claimed:
                continue  # an earlier group took some of them: looked at again
            for i, c in zip(sorted(ids), sorted(group), strict=True):
                paired[i] = c
                del left[i]
            claimed |= group
        for cs_left in left.values():
            cs_left -= claimed
    return paired, {i: sorted(cs) for i, cs in left.items() if cs}


def _look_up_the_rest(
    store: StateStore, pipeline: str, entity: str, member: Member, settled: Sequence[_Settled]
) -> None:
    """Look up on the member the creates its read cannot tell (``_Settled.look_up``), one
    request each; one unlinked record found, not taken by another create, is the one."""
    linked = store.link_index(pipeline, entity, member.name)
    taken = {s.record.id for s in settled if s.record is not None}
    for s in settled:
        if not s.look_up:
            continue
        found, s.error = _look_up(member.connector, entity, s.intent, s.payload)
        fresh = [r for r in found if r.id not in linked and r.id not in taken and not r.provisional]
        if len(fresh) == 1:
            s.record = fresh[0]
            taken.add(s.record.id)
        elif fresh:
            s.error = _ambiguous(len(fresh), member.name)


def _commit_settled(
    store: StateStore,
    pipeline: str,
    entity: str,
    members: Mapping[str, Member],
    reads: Mapping[str, MemberRead],
    ent: EntityPlan,
    settled: Sequence[_Settled],
) -> None:
    """Commit what became of the interrupted creates (one transaction), then tell the reads:
    each record linked is a linked record of its member's read from now on."""
    p, e = pipeline, entity
    found = [s for s in settled if s.record is not None]
    known = store.load_records(p, e, [s.intent.key for s in found]) if found else {}
    records: dict[str, dict[str, Any]] = {}
    links: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    taken: dict[str, list[tuple[str, NativeRecord, Observed | None]]] = {}
    """member -> (key, record, as read) linked to it here."""
    keys_linked: set[tuple[str, str]] = set()
    """(member, key) linked here."""
    ids_linked: set[tuple[str, str]] = set()
    """(member, native id) linked here."""
    unlinked = _NewById(reads)
    for s in settled:
        intent, rec = s.intent, s.record
        member = members.get(intent.member)
        if (
            rec is None
            or member is None
            or (intent.member, intent.key) in keys_linked
            or (intent.member, rec.id) in ids_linked
        ):
            finished.append({"id": intent.id, "state": "abandoned", "error": s.error})
            continue
        keys_linked.add((intent.member, intent.key))
        ids_linked.add((intent.member, rec.id))
        if intent.key not in known:
            records.setdefault(
                intent.key, {"pipeline": p, "entity": e, "key": intent.key, "base": s.payload.base}
            )
        # last seen = what was written; the hash is unknown, so the record is mapped as read
        written = canonical_of(member.mapping, NativeRecord(rec.id, s.payload.native), member.refs)
        links.append(_link_row(p, e, intent.key, intent.member, rec.id, written))
        taken.setdefault(intent.member, []).append((intent.key, rec, s.obs))
        for source, source_id in s.payload.sources.items():
            obs = unlinked.get(source, source_id) if source != intent.member else None
            if obs is None or (source, source_id) in ids_linked:
                continue  # linked already, or not there to link
            ids_linked.add((source, source_id))
            links.append(_link_row(p, e, intent.key, source, source_id, None))
            taken.setdefault(source, []).append((intent.key, obs.record, obs))
        finished.append({"id": intent.id, "state": "done", "native_id": rec.id})
    with store.transaction() as tx:
        if records:
            tx.put_records(list(records.values()))
        if links:
            tx.put_links(links)
        tx.finish_intents(finished)
    for name, linked in taken.items():
        _into_read(entity, members[name], ent, reads[name], linked)
    recovered = sum(1 for row in finished if row["state"] == "done")
    log.info(
        "settled interrupted creates",
        pipeline=p,
        entity=e,
        recovered=recovered,
        abandoned=len(finished) - recovered,
    )


def _link_row(
    pipeline: str,
    entity: str,
    key: str,
    member: str,
    native_id: str,
    last_seen: model.Record | None,
) -> dict[str, Any]:
    return {
        "pipeline": pipeline,
        "entity": entity,
        "key": key,
        "member": member,
        "native_id": native_id,
        "native_hash": None,
        "last_seen": last_seen,
    }


class _NewById:
    """The records each member's read found unlinked, by id (built for a member when first
    asked for)."""

    def __init__(self, reads: Mapping[str, MemberRead]) -> None:
        self.reads = reads
        self.by_member: dict[str, dict[str, Observed]] = {}

    def get(self, member: str, native_id: str) -> Observed | None:
        found = self.by_member.get(member)
        if found is None:
            r = self.reads.get(member)
            new = r.new if r is not None else []
            found = {o.record.id: o for o in new if not o.record.provisional}
            self.by_member[member] = found
        return found.get(native_id)


def _into_read(
    entity: str,
    member: Member,
    ent: EntityPlan,
    r: MemberRead,
    linked: Iterable[tuple[str, NativeRecord, Observed | None]],
) -> None:
    """Tell ``member``'s read that these records are linked to these keys now, as a read
    of them as linked records would have found them: changed (its last-seen version is what
    was written, its hash unknown), or blocked when the record is in error."""
    new = {o.record.id: o for o in r.new if not o.record.provisional}
    faulty = {rec.id for rec in r.faulty if not rec.provisional}
    dropped: set[str] = set()
    for key, rec, obs in linked:
        r.linked += 1
        listed = new.get(rec.id)
        if listed is not None and (obs is None or obs is listed):
            r.changed[key] = listed
        elif rec.id in faulty or rec.error:
            r.blocked.add(key)  # already reported by the read
        else:  # found by a lookup, or listed twice by the read (one copy is linked)
            if obs is not None:
                rec = r.unspill(obs).record  # the read's copy waits on disk
            observe(entity, member, ent, r, rec, key, None)
        dropped.add(rec.id)
    r.new = [o for o in r.new if o.record.provisional or o.record.id not in dropped]
    r.unreadable = [o for o in r.unreadable if o.record.provisional or o.record.id not in dropped]
