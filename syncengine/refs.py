"""References between entities: an invoice's customer, a payment's invoice.

Inside the engine a reference is the hub key of the record referred to. Each member shows it
its own way, as its mapping says: by the member's native id of that record (HCP's
``customer_id``), resolved through the link table, or by a human key with ``ref_by`` (a sheet's
``Customer Email``), resolved through the hub's base records. This module turns one into the
other for one member, in both directions:

- reading: the native form a mapping produced -> the hub key, or a reason it cannot be
  resolved (no such customer, several customers with that email);
- writing: the hub key -> the member's native form, or a reason it cannot be written yet (the
  customer is not on that member yet: the record waits, it is never written half-formed).

Referenced entities sync first (dependency order), so by the time invoices are planned the
customers' links and bases in the state store are current. A dry run writes no state: there
the plan of the referenced entity is laid over the state (its new links and merged values),
so that a dry run of a first sync shows invoices as they would be written.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncengine import model
from syncengine.display import label_of
from syncengine.mapping import EntityMapping, FieldMapping
from syncengine.plan import Create, EntityPlan, Update, Waiting
from syncengine.state import StateStore

AMBIGUOUS = object()
"""An index entry shared by several hub records."""

PENDING = "(created by this sync)"
"""A dry run's stand-in for the native id a planned create would get."""

BASES_AT_ONCE = 2_000
"""How many records' bases ``References.back_index`` holds at once, to learn how a member
shows them: a few megabytes of bases, where a whole entity's would be a hundred."""


@dataclass
class RefIndex:
    """How one member shows the records of one entity it refers to, both ways."""

    forward: dict[Any, Any] = field(default_factory=dict)
    """native form -> hub key (or AMBIGUOUS)."""
    back: dict[str, Any] = field(default_factory=dict)
    """hub key -> native form."""
    loaded: set[str] | None = None
    """None: every record of the entity is indexed, both ways. Otherwise only ``back`` is,
    and only for these keys (``References.back_index``): what planning a few records needs
    when a member shows references by value, without reading every record referred to."""
    deleted: set[str] = field(default_factory=set)
    """Keys indexed whose record is deleted in the hub (a value it shares with a live
    record means the live one)."""

    def shown(self, key: str) -> Any:
        """How the member shows hub record ``key`` (None: it cannot show it)."""
        if self.loaded is not None and isinstance(key, str) and key not in self.loaded:
            raise LookupError(f"reference {key!r} was not loaded before planning (a bug)")
        return self.back.get(key)

    def add(self, native: Any, key: str) -> None:
        if native is None:
            return
        known = self.forward.get(native)
        if known is not None and known != key:
            self.forward[native] = AMBIGUOUS
        else:
            self.forward[native] = key
        self.back[key] = native


@dataclass(frozen=True)
class RefField:
    """One reference field of a mapping: the entity it refers to and how it shows it."""

    name: str
    target: str
    ref_by: tuple[str, ...] | None
    mapping: FieldMapping | None
    normalisers: tuple[Callable[[Any], Any], ...]

    def what(self) -> str:
        return model.ENTITIES[self.target].name[:-1]  # "customer", "invoice"

    def shown_by(self) -> str:
        return " or ".join(self.ref_by or ("id",))

    def candidates(self, raw: Any) -> list[Any]:
        """The normal forms a native value may take, one per field it may show."""
        out = []
        for normalise in self.normalisers:
            value = _safe(normalise, raw)
            if value is not None and value not in out:
                out.append(value)
        return out


class References:
    """Reference indexes of one pipeline run, built on first use and cached per member."""

    def __init__(self, store: StateStore, pipeline: str, *, dry_run: bool = False) -> None:
        self.store = store
        self.pipeline = pipeline
        self.dry_run = dry_run
        self.plans: dict[str, EntityPlan] = {}
        """entity -> this run's plan, laid over the state in a dry run (a real run has
        committed it, and keeps no plan: ``_changed`` and ``_created`` say what it did)."""
        self._changed: dict[str, dict[str, frozenset[str]]] = {}
        """entity -> key -> the fields this run's plan changed in its base."""
        self._created: dict[tuple[str, str], set[str]] = {}
        """(entity, member) -> keys already in the hub this run's plan creates on member."""
        self._indexes: dict[tuple[str, str, tuple[str, ...] | None], RefIndex] = {}
        self._shown: dict[tuple[str, tuple[str, ...]], RefIndex] = {}
        """(entity, ref_by) -> how the records looked up so far are shown that way
        (``back_index``), kept for the run like the whole indexes."""
        self._held: dict[str, Waiting] = {}
        """entity -> its records new this run that wait for a missing column
        (``EntityPlan.waiting``)."""
        self._waiting: dict[tuple[str, str], set[str]] = {}
        """(entity, member) -> keys that member deleted while they are still referred to:
        its link still names the deleted record, so nothing may refer to it there."""

    def held(self, entity: str) -> Waiting | None:
        """This run's new records of ``entity`` that wait for a missing column, if any: a
        reference that finds no record may mean one of them."""
        return self._held.get(entity)

    def planned(self, plan: EntityPlan) -> None:
        """Tell the indexes about an entity's plan; indexes of it are rebuilt when next used."""
        if self.dry_run:
            self.plans[plan.entity] = plan
        if plan.waiting is not None:  # a later pass of the entity (derived records) holds none
            self._held[plan.entity] = plan.waiting
        changed = self._changed[plan.entity] = {}
        for entity_member in [k for k in self._created if k[0] == plan.entity]:
            del self._created[entity_member]
        for kp in plan.keys:
            for member in kp.waiting:
                self._waiting.setdefault((plan.entity, member), set()).add(kp.key)
            before, after = kp.base_before, kp.base_after
            if before is not None and after is not None and before != after:
                changed[kp.key] = frozenset(
                    f for f in before.keys() | after.keys() if before.get(f) != after.get(f)
                )
            if not kp.new_key:
                for action in kp.actions:
                    if isinstance(action, Create):
                        self._created.setdefault((plan.entity, action.member), set()).add(kp.key)
        self._drop_indexes(lambda target: target == plan.entity)

    def keep_only(self, targets: Collection[str]) -> None:
        """Let go of the indexes of every entity not in ``targets``, the ones the entities
        still to plan refer to: a customers index held through the payments, which refer to
        invoices alone, was about 160 bytes a customer. One asked for again is rebuilt, as
        after ``planned``."""
        self._drop_indexes(lambda target: target not in targets)

    def _drop_indexes(self, of: Callable[[str], bool]) -> None:
        """Let go of every index of a target entity ``of`` picks: rebuilt when next used."""
        for cache_key in list(self._indexes):
            if of(cache_key[0]):
                del self._indexes[cache_key]
        for shown_key in list(self._shown):
            if of(shown_key[0]):
                del self._shown[shown_key]

    def changed(self, target: str, ref_by: tuple[str, ...]) -> set[str]:
        """Keys of ``target`` whose ``ref_by`` values this run's plan changes (a customer's new
        email): records that show them need rewriting."""
        wanted = set(ref_by)
        return {key for key, fields in self._changed.get(target, {}).items() if fields & wanted}

    def created(self, target: str, member: str) -> set[str]:
        """Keys of ``target`` this run's plan creates on ``member`` (where they already
        existed before, a record referring to them by id still holds the old id)."""
        return set(self._created.get((target, member), set()))

    def label_targets(self, ent: EntityPlan) -> None:
        """Name the records the planned actions of ``ent`` and its reported skipped writes
        refer to (``ent.ref_labels``), for the plan's details to show: from this run's plan of
        the target where it has one (a dry run), else from the state."""
        fields = model.ENTITIES[ent.entity].refs
        wanted: dict[str, set[str]] = {}
        shown: list[tuple[Any, dict[str, tuple[Any, Any]] | None]] = [
            (action, None) for action in ent.actions
        ]
        # what skipped writes leave different is shown too ("invoice: 1017 → 1018")
        shown += [(None, s.changes) for kp in ent.keys for s in kp.reported_skips if s.changes]
        for action, skipped in shown:
            if skipped is not None:
                values = [{n: v for n, (v, _new) in skipped.items()}]
                values.append({n: v for n, (_old, v) in skipped.items()})
            elif isinstance(action, Create):
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
            plan = self.plans.get(target)
            bases = {kp.key: kp.base_after for kp in plan.keys} if plan else {}
            missing = [k for k in keys if k not in bases]
            for key, state in self.store.load_records(self.pipeline, target, missing).items():
                bases[key] = state.base
            for key in keys:
                ent.ref_labels[key] = label_of(bases.get(key), key)

    def for_member(self, member: str, mapping: EntityMapping) -> MemberRefs | None:
        if not mapping.refs:
            return None
        return MemberRefs(self, member, mapping)

    def index(self, target: str, member: str, ref_by: tuple[str, ...] | None) -> RefIndex:
        cache_key = (target, member if ref_by is None else "", ref_by)
        found = self._indexes.get(cache_key)
        if found is None:
            found = self._indexes[cache_key] = self._build(target, member, ref_by)
        return found

    def _build(self, target: str, member: str, ref_by: tuple[str, ...] | None) -> RefIndex:
        index = RefIndex()
        plan = self.plans.get(target) if self.dry_run else None
        if ref_by is None:
            for native_id, (key, _hash) in self.store.link_index(
                self.pipeline, target, member
            ).items():
                index.add(native_id, key)
            if plan is not None:
                for kp in plan.keys:
                    for lp in (*kp.prior.values(), *kp.links.values()):
                        if lp.member == member and lp.native_id and not lp.remove:
                            index.add(lp.native_id, kp.key)
                    for action in kp.actions:
                        if isinstance(action, Create) and action.member == member:
                            index.back.setdefault(kp.key, PENDING)
            for key in self._waiting.get((target, member), ()):
                index.back.pop(key, None)
            return index
        shown = _shown_by(target, ref_by)
        deleted: set[str] = set()
        overlay = {kp.key: kp.base_after for kp in plan.keys} if plan is not None else {}

        def add(key: str, base: Mapping[str, Any]) -> None:
            # every field indexes the record; the first one it has is how it is shown
            values = _values(shown, base)
            for value in values:
                index.add(value, key)
            if values:
                index.back[key] = values[0]

        for key, base in self.store.iter_bases(self.pipeline, target):
            if key in overlay:
                continue
            if base.get(model.DELETED):
                deleted.add(key)
            add(key, base)
        index.deleted = deleted
        for key, planned in overlay.items():
            if planned is not None:
                add(key, planned)
        # a value shared by a live and a deleted record means the live one
        for key in deleted:
            value = index.back.get(key)
            if value is not None and index.forward.get(value) is AMBIGUOUS:
                live = [k for k, v in index.back.items() if v == value and k not in deleted]
                if len(live) == 1:
                    index.forward[value] = live[0]
        return index

    def back_index(self, target: str, ref_by: tuple[str, ...], keys: Iterable[str]) -> RefIndex:
        """How a member showing ``target`` by ``ref_by`` shows the records ``keys``: their
        ``back`` entries only, the same as the whole index has for them, read from their
        bases alone and added to the ones this run looked up before. The whole index when
        this run has built it already (a record read needed it)."""
        whole = self._indexes.get((target, "", ref_by))
        if whole is not None:
            return whole
        index = self._shown.setdefault((target, ref_by), RefIndex(loaded=set()))
        assert index.loaded is not None
        todo = [k for k in dict.fromkeys(keys) if k not in index.loaded]
        if not todo:
            return index
        plan = self.plans.get(target) if self.dry_run else None
        overlay = {kp.key: kp.base_after for kp in plan.keys} if plan is not None else {}
        shown = _shown_by(target, ref_by)

        def show(key: str, base: Mapping[str, Any] | None, *, stored: bool) -> None:
            if base is None:
                return
            if stored and base.get(model.DELETED):
                index.deleted.add(key)
            values = _values(shown, base)
            if values:
                index.back[key] = values[0]

        planned = [k for k in todo if k in overlay]
        for key in planned:
            show(key, overlay[key], stored=False)
        index.loaded.update(planned)
        stored = [k for k in todo if k not in overlay]
        # a batch of bases at a time: a first sync's payments refer to every invoice, and
        # their bases, each a record of a dozen fields, are not all held at once for a number.
        # A key counts as loaded once its batch is (a failed read loads it again next time)
        for start in range(0, len(stored), BASES_AT_ONCE):
            batch = stored[start : start + BASES_AT_ONCE]
            for key, base in self.store.load_bases(self.pipeline, target, batch).items():
                show(key, base, stored=True)
            index.loaded.update(batch)
        return index


def targets_of(entities: Iterable[str]) -> set[str]:
    """The entities that records of ``entities`` may refer to."""
    specs = (model.ENTITIES.get(e) for e in entities)
    return {target for spec in specs if spec is not None for target in spec.refs.values()}


def referenced(entity: str, records: Iterable[Mapping[str, Any] | None]) -> dict[str, set[str]]:
    """Target entity -> the hub keys that ``records`` of ``entity`` refer to: every record
    planning them may have to show (``References.back_index``)."""
    spec = model.ENTITIES.get(entity)
    fields = spec.refs if spec is not None else {}
    out: dict[str, set[str]] = {}
    if not fields:
        return out
    for record in records:
        if not record:
            continue
        for name, target in fields.items():
            value = record.get(name)
            if isinstance(value, str):
                out.setdefault(target, set()).add(value)
    return out


def _shown_by(target: str, ref_by: tuple[str, ...]) -> list[tuple[str, Callable[[Any], Any]]]:
    spec = model.ENTITIES[target]
    return [(name, _normaliser(spec, name)) for name in ref_by]


def _values(shown: list[tuple[str, Callable[[Any], Any]]], base: Mapping[str, Any]) -> list[Any]:
    """The normal forms of the fields a record is shown by, in order (the first is how it is
    shown; each one finds it)."""
    out = []
    for name, normalise in shown:
        value = _safe(normalise, base.get(name))
        if value is not None:
            out.append(value)
    return out


def _normaliser(
    spec: model.EntitySpec, name: str, region: str = model.DEFAULT_REGION
) -> Callable[[Any], Any]:
    """The normal form of a field's values; a phone number shown without a country code is
    one of ``region`` (the member's mapping's)."""
    field_spec = spec.field_spec(name)
    if field_spec is not None and field_spec.type == "phone" and region != model.DEFAULT_REGION:
        return lambda value: model.norm_phone(value, region)
    return field_spec.normalise if field_spec else model.norm_str


def _safe(normalise: Callable[[Any], Any], value: Any) -> Any:
    try:
        return normalise(value)
    except (ValueError, TypeError):
        return None


class MemberRefs:
    """The references of one member's records of one entity."""

    def __init__(self, refs: References, member: str, mapping: EntityMapping) -> None:
        self.refs = refs
        self.member = member
        self.mapping = mapping
        by_name = {f.canonical: f for f in mapping.fields}
        self.fields: list[RefField] = []
        for name, (target, ref_by) in mapping.refs.items():
            spec = model.ENTITIES[target]
            normalisers = (
                tuple(_normaliser(spec, f, mapping.region) for f in ref_by)
                if ref_by
                else (model.norm_str,)
            )
            self.fields.append(RefField(name, target, ref_by, by_name.get(name), normalisers))
        self.by_value = [f for f in self.fields if f.ref_by is not None]

    def _index(self, f: RefField) -> RefIndex:
        return self.refs.index(f.target, self.member, f.ref_by)

    # ---------------------------------------------------------------------------- reading
    def resolve(self, record: dict[str, Any], meant: Mapping[str, Any] | None = None) -> list[str]:
        """Replace the native form of each reference in ``record`` by the hub key, in place.
        Returns what could not be resolved (the record must then be left alone).

        ``meant``: the values a record this run wrote was written from. A reference shown by
        value that shows what was written for the record meant is that record, without
        looking at every record referred to that way (a value two live records share
        included: the writer meant one of them)."""
        problems: list[str] = []
        for f in self.fields:
            if f.name not in record:
                continue
            raw = record[f.name]
            if raw is None:
                continue
            if f.ref_by is not None and meant is not None and isinstance(meant.get(f.name), str):
                key = meant[f.name]
                index = self.refs.back_index(f.target, f.ref_by, [key])
                shown = index.shown(key)
                if shown is not None and key not in index.deleted and shown in f.candidates(raw):
                    record[f.name] = key
                    continue
            forward = self._index(f).forward
            shown_as = f.candidates(raw)
            found = [forward[v] for v in shown_as if v in forward]
            key = found[0] if len(found) == 1 else AMBIGUOUS if found else None
            column = f.mapping.native if f.mapping else f.name
            if key is None:
                problems.append(f"{column} {raw!r}: {self._none_found(f, raw, shown_as)}")
                record[f.name] = None
            elif key is AMBIGUOUS:
                problems.append(
                    f"{column} {raw!r}: several {f.target} have {f.shown_by()} "
                    f"{raw!r}; it cannot say which one is meant"
                )
                record[f.name] = None
            else:
                record[f.name] = key
        return problems

    def _none_found(self, f: RefField, raw: Any, shown_as: list[Any]) -> str:
        """Why a reference found no record, and what to do: wait, where it may mean a record
        that waits for a missing column (``References.held``); else sync or fix it."""
        how = "with that id is synced" if f.ref_by is None else f"has {f.shown_by()} {raw!r}"
        held = self.refs.held(f.target)
        if held is not None and held.may_be(self.member, f.ref_by, shown_as):
            back = "the column is" if held.columns == 1 else "the columns are"
            return (
                f"no {f.what()} {how} yet: new {f.target} wait for {held.what} (see that "
                f"error), and this may be one of them; it syncs once {back} back"
            )
        if f.ref_by is None:
            return f"no {f.what()} {how} (the {f.what()} must sync first; see errors above, if any)"
        return f"no {f.what()} {how} (fix the cell, or add that {f.what()} first)"

    def snapshot(self, wanted: Mapping[str, Iterable[str]] | None = None) -> RefIndexes:
        """Every reference field's index, built now, as plain data for planning (reconcile
        reads no state). With ``wanted`` (target entity -> hub keys, ``referenced``), a field
        shown by value gets only how those records are shown: planning a few invoices does
        not read every customer (``fill`` adds records found later)."""
        indexes: dict[str, RefIndex] = {}
        for f in self.fields:
            if wanted is None or f.ref_by is None:
                indexes[f.name] = self._index(f)
            else:
                keys = wanted.get(f.target, ())
                indexes[f.name] = self.refs.back_index(f.target, f.ref_by, keys)
        return RefIndexes(self.member, self.mapping, tuple(self.fields), indexes)

    def fill(self, snapshot: RefIndexes, wanted: Mapping[str, Iterable[str]]) -> None:
        """Add the records of ``wanted`` that ``snapshot``'s partial indexes lack."""
        for f in self.fields:
            index = snapshot.indexes[f.name]
            if f.ref_by is not None and index.loaded is not None and f.target in wanted:
                missing = [k for k in wanted[f.target] if k not in index.loaded]
                if not missing:
                    continue
                found = self.refs.back_index(f.target, f.ref_by, missing)
                if found is not index:  # the whole index, built since the snapshot
                    index.loaded.update(missing)
                    index.back.update((k, found.back[k]) for k in missing if k in found.back)
                    index.deleted.update(k for k in missing if k in found.deleted)


@dataclass(frozen=True)
class RefIndexes:
    """How one member shows the references of one entity, as plain data: per reference
    field, the index of the records it refers to. Planning uses it without touching the
    state store."""

    member: str
    mapping: EntityMapping
    fields: tuple[RefField, ...]
    indexes: Mapping[str, RefIndex]
    """reference field -> the index of its target as this member shows it."""

    def stale_fields(
        self, native: Callable[[], Mapping[str, Any] | None], values: Mapping[str, Any]
    ) -> set[str]:
        """The reference fields whose native value differs from what ``values`` would show
        (the customer's e-mail changed since the row was written, or the customer was
        re-created there under a new id). ``native`` gives the member's native record (None:
        not read); it is asked only once a field is to be compared, since a record kept as
        JSON text is decoded for it (``MemberView.native_record``)."""
        out: set[str] = set()
        held: Mapping[str, Any] | None = None
        for f in self.fields:
            key = values.get(f.name)
            if key is None or f.mapping is None or f.name not in self.mapping.writable:
                continue
            want = self.indexes[f.name].shown(key)
            if want is None:
                continue
            if held is None:
                held = native()
                if held is None:
                    return set()
            if want not in self._shown(f, held):
                out.add(f.name)
        return out

    def _shown(self, f: RefField, native: Mapping[str, Any]) -> list[Any]:
        """The normal forms of what the member's cell shows now."""
        assert f.mapping is not None
        raw = f.mapping.path().get(native)
        if f.mapping.transform is not None and raw is not None:
            try:
                raw = f.mapping.transform.read(raw)
            except (ValueError, TypeError):
                return [raw]
        return f.candidates(raw)

    def render(
        self, values: Mapping[str, Any], fields: Iterable[str] | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """``values`` with each reference as this member shows it, and what cannot be shown
        yet (then nothing may be written)."""
        out = dict(values)
        missing: list[str] = []
        wanted = None if fields is None else set(fields)
        for f in self.fields:
            if f.name not in out or (wanted is not None and f.name not in wanted):
                continue
            key = out[f.name]
            if key is None:
                continue
            native = self.indexes[f.name].shown(key)
            if native is None:
                if f.ref_by is None:
                    missing.append(f"its {f.name} is not on {self.member} yet")
                else:
                    missing.append(
                        f"its {f.name} has no {f.shown_by()}, which "
                        f"{self.member} uses to refer to {f.target}"
                    )
                continue
            out[f.name] = native
        return out, missing
