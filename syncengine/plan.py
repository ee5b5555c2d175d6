"""The plan: a plain value saying what a sync would do, built by pure stages.

Actions (``Create``, ``Update``, ``Delete``) carry what the executor and the journal need and
describe themselves for ``--dry-run``. A ``KeyPlan`` groups everything decided about one hub
record: the base before and after the merge, the actions on members, and how each member's
link should look once the actions succeed (``LinkPlan``). State-only changes (a refreshed
hash, a newly matched link) are link plans, not actions: a second sync with nothing new to do
plans zero actions even when it refreshes state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Self, SupportsIndex

from syncengine import model
from syncengine.connector import RELEASED
from syncengine.model import Record

Value = Any


@dataclass(frozen=True, slots=True)
class Create:
    entity: str
    member: str
    key: str
    values: Record
    """Canonical values written (for display and the journal)."""
    native: dict[str, Any]
    """The native record to create (nested)."""
    op: str = "create"
    unseen: tuple[str, ...] = ()
    """Fields with a value that the write leaves out, the member's sheet lacking their column
    (``Context.unfilled``): its link marks them ``model.UNSEEN``."""

    def describe(self) -> str:
        return f"create on {self.member}"

    def released(self) -> Create:
        """The create once performed, without its native record (``connector.RELEASED``):
        what the member made of it is its answer. Made field by field, as
        ``NativeRecord.released`` is."""
        return Create(
            self.entity, self.member, self.key, self.values, RELEASED, self.op, self.unseen
        )


@dataclass(frozen=True, slots=True)
class Update:
    entity: str
    member: str
    key: str
    native_id: str
    changes: dict[str, tuple[Value, Value]]
    """Canonical field -> (value on the member now, value it will get)."""
    patch: dict[str, Any]
    """Flat native patch: native path -> native value."""
    full: dict[str, Any]
    """The member's whole native record with the patch applied."""
    assign_id: str | None = None
    """Give a provisional record (a spreadsheet row without Sync ID) this id."""
    read_hash: str = ""
    """The native hash of the record as read (finds a provisional row again after a crash)."""
    op: str = "update"
    unseen: dict[str, Value] = field(default_factory=dict)
    """Fields the member's sheet lacks that the write leaves out -> the value last seen there
    (None: none): its link keeps that value and marks them ``model.UNSEEN``."""

    @property
    def link_only(self) -> bool:
        """The update only writes the Sync ID into a provisional record (a new link), no
        field changes: people see it as a link, not an update."""
        return bool(self.assign_id) and not self.changes

    def describe(self) -> str:
        if self.link_only:
            return f"link on {self.member} (write Sync ID)"
        return f"update on {self.member}"


@dataclass(frozen=True, slots=True)
class Delete:
    entity: str
    member: str
    key: str
    native_id: str
    values: Record = field(default_factory=dict)
    op: str = "delete"

    def describe(self) -> str:
        return f"delete on {self.member}"


Action = Create | Update | Delete


@dataclass(frozen=True, slots=True)
class Conflict:
    entity: str
    key: str
    field: str
    values: dict[str, Value]
    """member -> the value it changed the field to."""
    base_value: Value
    winner: str | None
    """The member whose value won by rule, or None when parked for a person."""
    rule: str
    label: str = ""


AGREED = "the members agree now"
"""The rule of an open conflict closed because every member holding the field has come to
hold the same value (``reconcile._agreed``)."""
RETOLD = "changed again while open"
"""The rule of an open conflict told again with a member's newer value
(``reconcile._refresh_parked``): still parked, not a new one."""


@dataclass(frozen=True, slots=True)
class Skip:
    """A write left out: the member cannot take it (``unsupported``: it is reported, and not
    tried again until the record changes), or it must wait (``deferred``: a reference that is
    not on the member yet; tried again every run)."""

    entity: str
    member: str
    key: str
    reason: str
    label: str = ""
    kind: str = "unsupported"
    quiet: bool = False
    """On record already from an earlier run, for the same reason: it is kept (``syncengine
    status`` lists it) but not reported again, and alone it does not make the record part of
    the plan (a period closed on a member: see ``syncengine.locks``)."""
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict, compare=False)
    """field -> (what the member holds, what it would have been given): the update it cannot
    take, shown by the dry run so that a person sees what stays different."""


@dataclass(frozen=True, slots=True)
class Issue:
    """A record-level error: reported, the record left alone, the run goes on."""

    entity: str
    member: str
    location: str
    message: str

    def describe(self) -> str:
        """``member location: message``, saying neither the location nor the member twice
        (a member whose locations start with its own name and the entity's: "crm customers
        77"; a workbook named "books 2026.xlsx" of member books is still named)."""
        if not self.location or self.message.startswith(self.location):
            return f"{self.member}: {self.message}"
        if self.location.startswith(f"{self.member} {self.entity} "):
            return f"{self.location}: {self.message}"
        return f"{self.member} {self.location}: {self.message}"


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """How a member's link should look after the key's actions succeed."""

    member: str
    native_id: str | None
    native_hash: str | None
    last_seen: Record | None
    tombstone: bool = False
    remove: bool = False
    dirty: bool = False


class _Nothing(list[Any]):
    """The empty list that every finished plan without conflicts (or skips) shares
    (``KeyPlan.settle``). It refuses items, so that sharing it cannot carry one record's
    conflict into every other plan: a plan that needs one after it is settled gives itself
    a list of its own."""

    __slots__ = ()

    def _refuse(self) -> NoReturn:
        raise TypeError("a settled plan's shared empty list takes no items: give it its own")

    def append(self, item: Any, /) -> None:
        self._refuse()

    def extend(self, items: Iterable[Any], /) -> None:
        self._refuse()

    def insert(self, index: SupportsIndex, item: Any, /) -> None:
        self._refuse()

    def __setitem__(self, index: Any, value: Any, /) -> None:
        self._refuse()

    def __iadd__(self, items: Any, /) -> Self:  # type: ignore[misc]  # list's own, refusing
        self._refuse()


NOTHING: list[Any] = _Nothing()


@dataclass(slots=True, weakref_slot=True)  # weakly referable: tests check plans are freed
class KeyPlan:
    entity: str
    key: str
    label: str
    new_key: bool
    base_before: Record | None
    base_after: Record | None
    """None: the hub record is deleted (every member dropped it)."""
    actions: list[Action] = field(default_factory=list)
    links: dict[str, LinkPlan] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    purge: bool = False
    """Drop the hub record once every planned delete succeeded (nobody else holds it)."""
    waiting: frozenset[str] = frozenset()
    """Members that deleted this record while records of other entities still refer to it:
    the delete waits (see ``Engine._settle_waiting_deletes``), and until then nothing may be
    written on them referring to it."""
    held: frozenset[str] = frozenset()
    """Members whose delete of this record is held for a person's approval
    (``[pipelines.deletes] approve``): the others keep it until it is approved."""
    prior: dict[str, LinkPlan] = field(default_factory=dict)
    """What each member holding the record had before this run's writes. For a new hub
    record it is committed before any write, so that a crash after a write leaves a base
    to merge against (an interrupted write is then recognised, not taken for an edit)."""

    def settle(self) -> None:
        """The plan is decided: keep it small until it is applied, as a first sync holds one
        per record read. Without a conflict or a skip it shares the one empty list
        (``NOTHING``) rather than holding two of its own, and links that are the ones the
        record had are that same dict. Nothing changes a decided plan (the shared list
        refuses items)."""
        if not self.conflicts:
            self.conflicts = NOTHING
        if not self.skips:
            self.skips = NOTHING
        if self.links == self.prior:
            self.links = self.prior

    @property
    def reported_skips(self) -> list[Skip]:
        """The skips this run reports: not those already on record (``Skip.quiet``)."""
        return [s for s in self.skips if not s.quiet]

    @property
    def changes_state(self) -> bool:
        return bool(
            self.actions
            or self.links
            or self.new_key
            or self.reported_skips
            or self.held
            or self.base_before != self.base_after
        )


DETAILS_KEPT = 1_000
"""Records of an applied entity kept field by field for the run's report (``--verbose``);
the counts cover every record."""


@dataclass(frozen=True)
class Waiting:
    """Records new to the hub that wait this run for a sheet's missing match-key column
    (``match.hold_blind``): what a reference that finds no record may be pointing at."""

    what: str
    """In a person's words: "the missing column Email of customers.csv"."""
    columns: int
    """How many columns ``what`` names."""
    blind: frozenset[str]
    """Members whose sheet lacks the column: any value they show may be a waiting record's."""
    hidden: frozenset[str]
    """The match keys whose column is missing: any value of these may be a waiting row's."""
    ids: dict[str, frozenset[str]]
    """member -> native ids of its waiting records."""
    values: dict[str, frozenset[Any]]
    """match key -> the values the waiting records show in it."""

    def may_be(self, member: str, ref_by: tuple[str, ...] | None, shown: list[Any]) -> bool:
        """Whether a reference of ``member`` that found no record may mean a waiting one
        (``shown``: the normal forms of its value): by id, one of the member's waiting
        records; by value, any value of a blind member or of a key whose column is missing,
        else one a waiting record shows in a field the reference goes by."""
        if ref_by is None:
            return any(v in self.ids.get(member, ()) for v in shown)
        if member in self.blind or self.hidden.intersection(ref_by):
            return True
        return any(v in self.values.get(f, ()) for f in ref_by for v in shown)


@dataclass
class EntityPlan:
    entity: str
    members: tuple[str, ...]
    keys: list[KeyPlan] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    guard: str | None = None
    """Set when a safety guard stops this entity: nothing is applied."""
    seen: dict[str, int] = field(default_factory=dict)
    """member -> records read."""
    skipped_before: set[str] = field(default_factory=set)
    """Keys with skipped writes on record before this run (their rows are refreshed)."""
    ref_labels: dict[str, str] = field(default_factory=dict)
    """Hub keys of referenced records -> their names, for showing references to people."""
    waiting: Waiting | None = None
    """This run's records new to the hub that wait for a missing column, if any."""
    notes: list[str] = field(default_factory=list)
    """What the run does that a person should know of and that is no problem (a column
    missing from a sheet, added back and filled)."""
    compacted: Compacted | None = None
    """Set once the applied plan was cut down to the records a person reads (``compact``)."""

    @property
    def actions(self) -> list[Action]:
        return [a for kp in self.keys for a in kp.actions]

    @property
    def conflicts(self) -> list[Conflict]:
        return [c for kp in self.keys for c in kp.conflicts]

    @property
    def skips(self) -> list[Skip]:
        return [s for kp in self.keys for s in kp.skips]

    def compact(self, details: int | None = None, *, slice_applied: bool = False) -> None:
        """The entity is applied (or, in a first sync applied in slices, the keys planned
        since the last call are): keep only what the rest of the run and its report read, so
        that its plan does not stay in memory beside the next entity's (or the next slice's).

        Kept: every record whose delete waits (``waiting``), and the first ``details``
        records with a write, a conflict or a skip (``DETAILS_KEPT``), field by field for
        ``--verbose``. The counts, how many records changed, and how many records of this
        entity refer to each record of another (``planned_users``) are taken first, over
        every record, and added to what earlier calls took. A plan no larger than ``details``
        is left whole, unless ``slice_applied``: the keys since the last call are a slice just
        applied, which must not be applied again (``after_compaction``)."""
        details = DETAILS_KEPT if details is None else details
        before = self.compacted
        fresh = self.after_compaction()
        if not fresh or (before is None and len(self.keys) <= details and not slice_applied):
            return
        refs = model.ENTITIES[self.entity].refs if self.entity in model.ENTITIES else {}
        users = {target: users_of(self, target) for target in set(refs.values())}
        counts = self.counts()
        kept = self.keys[: before.kept] if before else []
        changed = before.changed if before else 0
        shown = changed - before.dropped if before else 0
        for kp in fresh:
            detail = bool(kp.actions or kp.conflicts or kp.reported_skips)
            changed += detail
            if kp.waiting or kp.held or (detail and shown < details):
                kept.append(kp)
                shown += detail
        self.compacted = Compacted(counts, changed, changed - shown, users, len(kept))
        self.keys = kept

    def changed_records(self) -> int:
        """How many records the plan does something for: a write, a conflict or a skip."""
        later = sum(
            1 for kp in self.after_compaction() if kp.actions or kp.conflicts or kp.reported_skips
        )
        return later + (self.compacted.changed if self.compacted else 0)

    def after_compaction(self) -> list[KeyPlan]:
        """The records added since the plan was last compacted (a first sync's next slice,
        deletes decided at the run's end), or all of them: what is left to apply."""
        return self.keys[self.compacted.kept :] if self.compacted else self.keys

    def counts(self) -> dict[str, Any]:
        own = self._count(self.after_compaction())
        if self.compacted is None:
            return own
        before = self.compacted.counts
        out: dict[str, Any] = {}
        for name, value in before.items():
            if isinstance(value, dict) and name != "read":
                out[name] = {op: n + own[name].get(op, 0) for op, n in value.items()}
            elif isinstance(value, int):
                out[name] = value + own.get(name, 0)
            else:
                out[name] = value
        for name, value in own.items():
            out.setdefault(name, value)
        out["errors"] = len(self.issues)
        return out

    def _count(self, keys: list[KeyPlan]) -> dict[str, Any]:
        per: dict[str, Counter[str]] = {m: Counter() for m in self.members}
        for action in (a for kp in keys for a in kp.actions):
            per[action.member][action.op] += 1
            if isinstance(action, Update) and action.link_only:
                per[action.member]["link"] += 1
        # "update" counts every update write; "link" says how many of them only wrote a
        # Sync ID (a new key: the others keep the meaning they always had)
        out: dict[str, Any] = {
            m: {
                "create": c["create"],
                "update": c["update"],
                "delete": c["delete"],
                "link": c["link"],
            }
            for m, c in per.items()
        }
        # records found on several members and linked as one (a first sync, a lost state
        # store): they are written nothing, yet a person should see that they were matched
        out["matched"] = sum(1 for kp in keys if kp.new_key and len(kp.prior) >= 2)
        conflicts = [c for kp in keys for c in kp.conflicts]
        # a conflict told again is the one parked before, and one closed because its members
        # agree now was settled by no rule: each is shown in the plan, counted as neither
        out["conflicts"] = sum(1 for c in conflicts if c.winner is None and c.rule != RETOLD)
        out["conflicts_settled"] = sum(
            1 for c in conflicts if c.winner is not None and c.rule != AGREED
        )
        out["errors"] = len(self.issues)
        out["skipped"] = sum(len(kp.reported_skips) for kp in keys)
        held = sum(len(kp.held) for kp in keys)
        if held:  # deletes waiting for a person's approval ([pipelines.deletes] approve)
            out["held_deletes"] = held
        out["read"] = dict(self.seen)
        return out


@dataclass(frozen=True)
class Compacted:
    """What an applied plan knew of every record before ``EntityPlan.compact`` dropped most
    of them."""

    counts: dict[str, Any]
    changed: int
    """Records with a write, a conflict or a skip."""
    dropped: int
    """How many of those are no longer listed."""
    users: dict[str, dict[str, int]]
    """Entity referred to -> its key -> how many records of this plan refer to it."""
    kept: int
    """How many records the plan kept: those after them were added since."""


def users_of(ent: EntityPlan, target: str) -> dict[str, int]:
    """Key of ``target`` -> how many records ``ent`` leaves referring to it (deleted ones
    do not count)."""
    if ent.compacted is not None:
        counted = dict(ent.compacted.users.get(target, {}))
        keys = ent.after_compaction()
    else:
        counted, keys = {}, ent.keys
    spec = model.ENTITIES.get(ent.entity)
    names = [n for n, t in spec.refs.items() if t == target] if spec else []
    if not names or ent.entity == target:
        return counted
    for kp in keys:
        after = kp.base_after
        if after is None or after.get(model.DELETED):
            continue
        for value in {after.get(name) for name in names}:
            if isinstance(value, str):
                counted[value] = counted.get(value, 0) + 1
    return counted


@dataclass
class Plan:
    pipeline: str
    dry_run: bool
    entities: list[EntityPlan] = field(default_factory=list)

    @property
    def actions(self) -> list[Action]:
        return [a for ep in self.entities for a in ep.actions]
