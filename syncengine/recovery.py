"""Recovery: the journal's intents, what they carry, and settling those a run left pending.

Every write is journalled as an *intent* before the member is called (see ``apply``). The
payload an intent carries is written and read here, by the dataclasses below, so the two
sides cannot drift apart. A run that dies leaves intents ``pending``; the next run settles
them before it plans anything (``recover``).

An intent belongs to its run and to the lease that run held (``Intent.holder``): it is
recovered only once that lease is gone (released, or expired after a crash). Every run that
writes holds the pipeline's lease (``syncengine.leasing``), so the intents a run finds are
those of runs that are over; the intents of a run whose lease still holds are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncengine import model
from syncengine.config import Pipeline
from syncengine.connector import Connector, NativeRecord
from syncengine.errors import NotFoundError, SyncEngineError
from syncengine.member import canonical_of
from syncengine.plan import Action, Create, KeyPlan, Update
from syncengine.progress import ProgressFn, Step, no_progress
from syncengine.reconcile import MemberView
from syncengine.refs import References
from syncengine.state import Intent, StateStore

log = structlog.get_logger("syncengine.engine")


# ---------------------------------------------------------------------------- payloads
@dataclass(frozen=True)
class CreatePayload:
    """What an interrupted create needs to be found and linked."""

    native: dict[str, Any]
    """The native record sent to the member."""
    base: model.Record
    """The hub record's base after the write."""
    sources: dict[str, str]
    """member -> native id of the members that already held the record: recovery re-links
    them with the create, so a record without match keys cannot be copied twice."""

    def to_json(self) -> dict[str, Any]:
        return {"native": self.native, "base": self.base, "sources": self.sources}

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


def intent_payload(action: Action, kp: KeyPlan) -> dict[str, Any]:
    """The journal payload of ``action``, planned in ``kp``."""
    if isinstance(action, Create):
        sources = {
            m: lp.native_id
            for m, lp in kp.links.items()
            if lp.native_id and not lp.remove and not lp.tombstone
        }
        return CreatePayload(action.native, kp.base_after or {}, sources).to_json()
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
    pending: int = 0
    """How many intents were pending when the run started."""

    def apply_written_hints(self, entity: str, key: str, views: Mapping[str, MemberView]) -> None:
        """Where a member holds exactly what an interrupted update wrote, count it as seen:
        our own write, not an edit of the member's."""
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
    progress: ProgressFn = no_progress,
) -> Recovery:
    """Settle the writes an interrupted run left pending.

    Only the intents of runs that are over are taken: while another holder than ``holder``
    (this run's lease) holds the pipeline's lease, its intents are left alone, neither
    settled nor used as hints: that run is still writing them.

    - A create is looked up on its target (by id where the engine chose it, else by the
      data it carried). Found: it is linked, with what was written as its last-seen
      version, so that an edit made since then is still seen as an edit. Not found: it
      is abandoned and planned again.
    - An update may or may not have reached the member. Its intended values become
      hints: where the member now holds exactly them, they count as our own write, not
      as an edit of the member's (which could otherwise win a conflict against a newer
      edit elsewhere). These intents stay pending until the entity's state is committed.
    - A provisional record's id assignment becomes a match hint for that record.

    A dry run only reads the hints; it settles nothing. ``progress`` is told of the
    creates and deletes being settled (when there are any).
    """
    recovery = Recovery()
    intents = _of_runs_that_are_over(store, pipeline.name, holder)
    recovery.pending = len(intents)
    for intent in intents:
        if intent.op == "update":
            payload = UpdatePayload.from_json(intent.payload)
            if payload.assign_id and payload.native_hash:
                recovery.match[(intent.member, payload.native_hash)] = intent.key
            if payload.values:
                recovery.written.setdefault((intent.entity, intent.key, intent.member), {}).update(
                    payload.values
                )
            recovery.updates.setdefault(intent.entity, []).append(intent.id)
    if dry_run:
        return recovery
    settle = [intent for intent in intents if intent.op != "update"]
    step = Step(progress if settle else no_progress, "recovering interrupted writes", len(settle))
    for done, intent in enumerate(settle, 1):
        conn = connectors.get(intent.member)
        if not (
            intent.op == "create"
            and conn is not None
            and intent.entity in pipeline.entities
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


def _recover_create(
    store: StateStore,
    pipeline: Pipeline,
    conn: Connector,
    intent: Intent,
    connectors: Mapping[str, Connector],
    refs: References | None,
) -> bool:
    """Look an interrupted create up on its target; link it when exactly one unlinked
    record there is it (True), else abandon the intent (False: it is planned again)."""
    p, e = pipeline.name, intent.entity
    mapping = pipeline.mappings[(intent.member, e)]
    member_refs = refs.for_member(intent.member, mapping) if refs else None
    payload = CreatePayload.from_json(intent.payload)
    error = None
    try:
        if conn.capabilities(e).assigns_ids:
            found = [r for r in [conn.get(e, intent.key)] if r is not None]
        else:
            found = conn.find(e, payload.native)
    except NotFoundError:
        found = []
    except SyncEngineError as exc:
        found, error = [], f"recovery lookup failed: {exc}"
    linked = store.link_index(p, e, intent.member)
    fresh = [r for r in found if r.id not in linked and not r.provisional]
    if len(fresh) != 1:
        if len(fresh) > 1:
            error = (
                f"{len(fresh)} records on {intent.member} look like the one an "
                "interrupted run created; left for matching"
            )
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
