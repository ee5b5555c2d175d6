"""Match: link records that are new on a member to the hub record they already belong to.

A record is new on a member when the member has no link for it (a customer typed into HCP,
a row added to the spreadsheet). Before it becomes a new hub record, it is looked up by the
pipeline's match keys (default: email, then E.164 mobile) among hub records that member does
not hold yet, and among records new on other members in this run. One candidate: linked.
Several: reported as ambiguous and left alone, never guessed. None: a new hub record.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from syncengine.connector import NativeRecord
from syncengine.model import Record

if TYPE_CHECKING:
    from syncengine.spill import Spill


@dataclass(slots=True)
class Observed:
    """A record as read from a member this run, mapped to canonical form."""

    member: str
    record: NativeRecord
    canonical: Record
    native_hash: str
    order: int = 0
    """Position in the member's read, to keep the member's order for new records."""
    relinked: bool = False
    """The record is one this member held under another id until this read (its Sync ID
    blanked or mistyped): it takes its hub record back, with that record's id."""
    joined: bool = False
    """Matched by its values (a match key, a relink combination), or linked by a person's
    review decision, to a hub record the other members already hold: a record of a member
    joining the pipeline, or one typed again. Where it differs from what they hold, that is
    a disagreement for the rules, not an edit (``reconcile``): a person who links two
    records says they are one, not whose values are right."""
    spilled: int = -1
    """Where the member's read keeps the native record on disk until it is planned
    (``spill.Spill``; -1: in ``record``): ``record`` is then released, its data taken back by
    ``MemberRead.unspill`` when its hub record is planned."""
    spill: Spill | None = field(default=None, repr=False, compare=False)
    """The spill that keeps the record's location too, where ``record`` was released without
    it (``location``)."""

    @property
    def location(self) -> str:
        """Where a person finds the record (``NativeRecord.location``): in memory, or, while
        its native record waits on disk, read back from there (``read.observe`` keeps it
        there, about 100 bytes a record; before planning, only messages ask for it, and
        ``read.set_aside_copies`` for two records of one hash)."""
        where = self.record.location
        if where or self.spill is None:
            return where
        return self.spill.location(self.spilled)

    def hold_location(self) -> None:
        """Keep the location in memory from now on: for what looks at the record after its
        read's spill is closed (a review item, recorded once the entity is applied)."""
        if self.spill is not None and not self.record.location:
            self.record = replace(self.record, location=self.spill.location(self.spilled))
        self.spill = None

    def release_native(self) -> None:
        """Let go of the native record once the hub record it belongs to is planned. The
        plan keeps what it needs of it (a create's or an update's own native record, the
        canonical record as last seen); the read's copy would otherwise stay alive beside
        the growing plan until the whole entity is planned, the largest part of a first
        sync's peak memory. The id, location and hash stay."""
        self.record = self.record.released()


@dataclass
class MatchResult:
    groups: dict[str, Mapping[str, Observed]] = field(default_factory=dict)
    """key -> member -> the new record linked to it (a group of one record, most of a first
    sync's, is an ``_Alone``)."""
    new_keys: set[str] = field(default_factory=set)
    ambiguous: list[tuple[Observed, str]] = field(default_factory=list)
    """(record, explanation) for records that matched several hub records."""
    candidates: dict[int, list[str]] = field(default_factory=dict)
    """id() of an ambiguous record -> the hub keys it might be (for a person to choose)."""
    copies: list[Observed] = field(default_factory=list)
    """Records a person linked to a hub record their member already holds (a copy): left
    alone, and not reported again."""


@dataclass
class Relinks:
    """Records new on a member that are records the member dropped in the same read."""

    keys: dict[int, str] = field(default_factory=dict)
    """id() of the new record -> the hub key of the record it is."""
    ambiguous: list[tuple[Observed, str]] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    """Hub keys whose record vanished and matches ambiguously: their delete waits a run."""


def relink_vanished(
    member: str,
    new: Sequence[Observed],
    vanished: Mapping[str, Record],
    match_keys: Sequence[str],
    relink: Relinking | None = None,
) -> Relinks:
    """Pair the records new on ``member`` with the records that vanished from it in the same
    read (``vanished``: hub key -> base), by the first match key that names any of them, else
    by the first of ``relink``'s field combinations that names any (payments have no match
    key: invoice, amount and date name them).

    A record whose Sync ID a person blanked or mistyped reads as a new record plus a vanished
    one; it is the same record and must take its hub record back, not be deleted and created
    again. A pairing that is not one to one (two new records for one vanished, or one for
    two) is reported, and the vanished records it names are held: not deleted this run.
    """
    out = Relinks()
    if not vanished or not new:
        return out
    index = _KeysByValue()
    for key, base in vanished.items():
        for name in match_keys:
            value = base.get(name)
            if value not in (None, ""):
                index.add(name, value, key)
    claims: dict[str, list[Observed]] = {}
    for obs in new:
        found: list[str] = []
        what = ""
        for name in match_keys:
            value = obs.canonical.get(name)
            if value in (None, ""):
                continue
            found = index.get(name, value)
            what = f"{name} {value!r}"
            if found:
                break
        if not found and relink is not None:
            found, what = relink.among(obs, vanished)
        if len(found) == 1:
            claims.setdefault(found[0], []).append(obs)
        elif found:
            out.held.update(found)
            out.ambiguous.append(
                (
                    obs,
                    f"{what} matches {len(found)} records that vanished from {member} in this "
                    "read; their deletes wait. Give the row its record's Sync ID back (see "
                    "the last sync's output or `syncengine runs`)",
                )
            )
    for key, claimants in claims.items():
        if len(claimants) == 1 and key not in out.held:
            out.keys[id(claimants[0])] = key
            continue
        out.held.add(key)
        for obs in claimants:
            out.ambiguous.append(
                (
                    obs,
                    f"{len(claimants)} new records on {member} match the record that vanished "
                    f"from it in this read ({key}); it is not deleted, and they are not synced, "
                    "until one of them holds its Sync ID again",
                )
            )
    return out


class _KeysByValue:
    """Match key value -> the hub keys whose records show it, in the order they came.

    A first sync holds an entry for every value of every record it read while it matches
    them, and nearly every value names one record: that one key is held as itself (no list,
    no ``(name, value)`` tuple per entry), a list only where several records share a value.
    """

    __slots__ = ("_by_name",)

    def __init__(self) -> None:
        self._by_name: dict[str, dict[Any, str | list[str]]] = {}

    def get(self, name: str, value: Any) -> list[str]:
        """The keys showing ``value`` in field ``name`` (a new list: changing it changes
        nothing here)."""
        found = self._by_name.get(name, {}).get(value)
        if found is None:
            return []
        return [found] if isinstance(found, str) else list(found)

    def add(self, name: str, value: Any, key: str) -> bool:
        """Add ``key`` to the keys showing ``value``; False where it is among them already."""
        values = self._by_name.setdefault(name, {})
        found = values.get(value)
        if found is None:
            values[value] = key
        elif isinstance(found, str):
            if found == key:
                return False
            values[value] = [found, key]
        elif key in found:
            return False
        else:
            found.append(key)
        return True

    def remove(self, name: str, value: Any, key: str) -> None:
        """Take ``key`` out of the keys showing ``value``, where it is among them."""
        values = self._by_name.get(name, {})
        found = values.get(value)
        if found == key:
            del values[value]
        elif isinstance(found, list) and key in found:
            found.remove(key)
            if not found:
                del values[value]


class _Holders:
    """Hub key -> the members that hold its record (linked, or attached in this match).

    A first sync holds an entry for every record it read while it matches them, and nearly
    all of them are held by the same member or two: each distinct set of members is one
    shared frozenset, not a set of its own per record."""

    __slots__ = ("_shared", "of")

    def __init__(self) -> None:
        self.of: dict[str, frozenset[str]] = {}
        """The members holding each key's record (read only: change it through ``hold``,
        ``add`` and ``discard``)."""
        self._shared: dict[frozenset[str], frozenset[str]] = {}

    def hold(self, key: str, members: Iterable[str]) -> None:
        """The record of ``key`` is held by ``members`` (and no other, so far)."""
        held = frozenset(members)
        self.of[key] = self._shared.setdefault(held, held)

    def add(self, key: str, member: str) -> None:
        self.hold(key, self.of.get(key, frozenset()) | {member})

    def discard(self, key: str, member: str) -> None:
        self.hold(key, self.of[key] - {member})

    def get(self, key: str, default: AbstractSet[str] = frozenset()) -> AbstractSet[str]:
        return self.of.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.of


_SHADOW = "\0unreadable:"
"""The prefix of the keys ``match`` gives the unreadable records it matches against."""


def new_key() -> str:
    """A new hub key: 32 hex digits, the time in milliseconds then 80 random bits (as in a
    version 7 UUID). Keys made one after another sort together, so that the state store adds
    a run's new records at the end of its indexes instead of all over them: a first sync of
    many records writes about half as much."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def _shows_any(obs: Observed, keys: Iterable[str]) -> bool:
    return any(obs.canonical.get(k) not in (None, "") for k in keys)


@dataclass
class Blind:
    """What ``hold_blind`` held back, and why."""

    lacking: dict[str, list[str]] = field(default_factory=dict)
    """member -> the match keys whose column its sheet lacks, where that held records."""
    held: dict[str, list[Observed]] = field(default_factory=dict)
    """member -> its records new to the hub that wait."""


def hold_blind(
    result: MatchResult,
    missing: Mapping[str, frozenset[str]],
    match_keys: Sequence[str],
    hinted: Callable[[Observed], bool],
) -> Blind:
    """Take out of ``result`` the new hub records matching could not vouch for because a
    member's sheet lacks a match key's column (renamed or removed), and say which.

    A member is blind to a key when, after matching, it has records that paired with
    nothing (any of them may hold a value in the column that is gone) while new hub records
    it is not part of hold a value of that key (a lost state store, a customer typed on
    both sides; paired between other members or not). Matching would have paired some of
    them had the column been there, so both wait: the member's unpaired records, and the new
    hub records it lacks that hold a value of a key it lacks (they would be created on it).
    Records paired with the member's go on, and so do records an earlier run paired
    (``hinted``). ``missing`` names only members whose columns were there once (the
    engine's ``_blind_candidates``): a column a sheet never had hides nothing."""
    alone: dict[str, list[str]] = {}
    fresh: list[tuple[str, Mapping[str, Observed]]] = []
    for key in result.new_keys:
        group = result.groups.get(key, {})
        if not group or any(hinted(obs) for obs in group.values()):
            continue
        fresh.append((key, group))
        if len(group) == 1:
            alone.setdefault(next(iter(group)), []).append(key)
    out = Blind()
    waiting: set[str] = set()
    for member in alone:
        gone = missing.get(member, frozenset())
        lacking = [k for k in match_keys if k in gone]
        if not lacking:
            continue
        theirs = [
            key
            for key, group in fresh
            if member not in group and any(_shows_any(obs, lacking) for obs in group.values())
        ]
        if theirs:
            out.lacking[member] = lacking
            waiting.update(theirs)
            waiting.update(alone[member])
    for key in sorted(waiting):
        for obs in result.groups.pop(key).values():
            out.held.setdefault(obs.member, []).append(obs)
        result.new_keys.discard(key)
    return out


def match(
    members: Sequence[str],
    new_records: Mapping[str, list[Observed]],
    existing: Iterable[tuple[str, Record, frozenset[str]]],
    match_keys: Sequence[str],
    *,
    hints: Mapping[tuple[str, str], str] | None = None,
    make_key: Callable[[], str] | None = None,
    relink: Relinking | None = None,
    unreadable: Mapping[str, Sequence[Observed]] | None = None,
    decided: Callable[[Observed], tuple[str, str | None] | None] | None = None,
) -> MatchResult:
    """Group new records with hub records or with each other.

    ``existing`` yields ``(key, base, members holding a live link)``; ``hints`` maps
    ``(member, native_hash)`` to the key an interrupted run had already given that record.
    ``relink`` (the state knows nothing of some member's records) adds the entity's relink
    keys after the match keys, and lets a new hub record take an id a member already gave it.
    ``unreadable`` (member -> its unlinked records in error) take part as candidates only: a
    record they would match is reported, not synced, so that it is not created again there.
    ``decided`` gives a person's decision on a record (``("separate", None)``: a new hub
    record of its own; ``("link", key)``: that hub record's, which must be among
    ``existing``; ``("refuse", why)``: a decision that cannot be carried out); a link to a
    record that is gone, or a refused decision, is reported as ambiguous again.
    """
    result = MatchResult()
    index = _KeysByValue()
    holders = _Holders()
    deleted: set[str] = set()
    combos = _Combos(relink, new_records) if relink is not None else None
    for key, base, linked in existing:
        holders.hold(key, linked)
        if base.get("_deleted"):
            deleted.add(key)
        for name in match_keys:
            value = base.get(name)
            if value not in (None, ""):
                index.add(name, value, key)
        if combos is not None:
            combos.add(key, base)

    shadows: dict[str, str] = {}
    """Keys of records that are candidates but never synced -> why a record that matches
    one of them alone is not synced either."""

    def shadow(obs: Observed, why: str) -> None:
        key = f"{_SHADOW}{len(shadows)}"
        shadows[key] = why
        holders.hold(key, (obs.member,))
        for name in match_keys:
            value = obs.canonical.get(name)
            if value not in (None, ""):
                index.add(name, value, key)
        if combos is not None:
            combos.add(key, obs.canonical)

    for records in (unreadable or {}).values():
        for obs in records:
            shadow(
                obs,
                f"it may be {obs.location or 'a record'} on {obs.member}, which could "
                "not be read (see that error): not synced until that is fixed",
            )

    def fresh_key(obs: Observed) -> str:
        """A new hub record's key for ``obs``, known to the relink combinations."""
        key = (make_key or new_key)()
        result.new_keys.add(key)
        holders.hold(key, ())
        if combos is not None:
            combos.add(key, obs.canonical)
        return key

    hints = hints or {}
    weak: dict[tuple[str, str], tuple[Observed, list[tuple[str, Any]]]] = {}
    """(key, member) -> a record linked to that key by a relink key only (a full name), and
    the index entries its values added: a record of the same member that matches the key
    by a match key (its e-mail) takes the place instead, and it becomes a record of its own."""
    contested: set[str] = set()
    settled: set[str] = set()
    """Keys a person's decision gave a record: never held back for another's ambiguity."""
    for member in members:
        # a relink key pairs a record only with one its member does not hold yet: where there
        # is none (the first sync into an empty member), it is not looked for record by record
        pairs = combos is not None and _could_pair(member, holders.of, new_records)
        for obs in new_records.get(member, []):
            hinted = hints.get((member, obs.native_hash))
            if hinted is not None and member not in holders.get(hinted, {member}):
                _attach(result, holders, hinted, obs)
                continue
            chosen: str | None = None
            ambiguous = ""
            decision = decided(obs) if decided is not None else None
            if decision is not None:
                kind, linked_to = decision
                if kind == "refuse":  # a decision that cannot be carried out: asked again
                    result.ambiguous.append((obs, linked_to or "its decision cannot apply"))
                    continue
                if kind == "link" and (linked_to not in holders or linked_to in deleted):
                    result.candidates[id(obs)] = [linked_to] if linked_to else []
                    result.ambiguous.append(
                        (
                            obs,
                            f"it was linked by hand to a record ({linked_to}) that is no longer "
                            "there (deleted since); choose again",
                        )
                    )
                    continue
                if kind == "link" and linked_to is not None:
                    if member in holders.get(linked_to):
                        result.copies.append(obs)  # a copy of a record its member holds
                        continue
                    chosen = linked_to
            for name in match_keys if decision is None else ():
                value = obs.canonical.get(name)
                if value in (None, ""):
                    continue
                same_value = index.get(name, value)
                candidates = [
                    k
                    for k in same_value
                    if member not in holders.get(k)
                    # held by name alone, and shown here by a value not of that record's own
                    or ((k, member) in weak and (name, value) not in weak[k, member][1])
                ]
                if len(candidates) == 1:
                    chosen = candidates[0]
                    break
                if len(candidates) > 1:
                    result.candidates[id(obs)] = list(candidates)
                    ambiguous = (
                        f"{name} {value!r} matches {len(candidates)} records "
                        f"{_kinds(candidates, result.new_keys, shadows)}; give them distinct "
                        "values or link by hand"
                    )
                    contested.update(k for k in candidates if k in result.new_keys)
                    break
                twins = [k for k in same_value if holders.get(k) - {member}]
                alike = [k for k in same_value if k in result.new_keys and k not in twins]
                if alike:
                    result.candidates[id(obs)] = list(alike)
                    # a copied row, or a customer typed twice: the first is synced, a second
                    # created elsewhere would duplicate it there. It stays a candidate, so
                    # that a record elsewhere with this value is not taken for the first.
                    ambiguous = (
                        f"{name} {value!r} is also on a record new on {member} before it in "
                        "this read (a copied row, or one typed twice?): a possible duplicate, "
                        "not synced (delete the copy, or give this one a distinct value)"
                    )
                    shadow(
                        obs,
                        f"{name} {value!r} is on two records new on {member} in this run; "
                        "which one this is cannot be told (see that error)",
                    )
                    break
                if twins:
                    result.candidates[id(obs)] = list(twins)
                    ambiguous = (
                        f"{name} {value!r} is already used by another record on "
                        f"{member} that is linked to the other members: a possible "
                        "duplicate, not synced (delete one of the two, give this one a "
                        "distinct value, or decide with `syncengine review link` or "
                        "`separate`)"
                    )
                    break
            if (
                decision is None
                and chosen is None
                and not ambiguous
                and combos is not None
                and pairs
            ):
                chosen, ambiguous, unsure = combos.find(obs, holders.of)
                contested.update(k for k in unsure if k in result.new_keys)
                if ambiguous:
                    result.candidates[id(obs)] = [k for k in unsure if k not in shadows]
                elif chosen is not None and chosen not in shadows:
                    weak[(chosen, member)] = (obs, [])
            if chosen in shadows:
                ambiguous = shadows[chosen]
            if ambiguous:
                result.ambiguous.append((obs, ambiguous))
                continue
            if decision is not None and chosen is None:
                chosen = fresh_key(obs)
            if decision is not None and chosen is not None:
                settled.add(chosen)
            if (
                chosen is not None
                and (chosen, member) in weak
                and weak[chosen, member][0] is not obs
            ):
                # this record shows the key's e-mail (or mobile): the one that took the key by
                # name alone gives it up, and is a record of its own
                loser, entries = weak.pop((chosen, member))
                result.groups[chosen] = {
                    m: o for m, o in result.groups[chosen].items() if m != member
                }
                holders.discard(chosen, member)
                # a hub record of its own, found by its values from here on
                own = fresh_key(loser)
                loser.joined = False
                _attach(result, holders, own, loser)
                for name, value in entries:
                    index.remove(name, value, chosen)
                    index.add(name, value, own)
            if chosen is None:
                chosen = fresh_key(obs)
            elif chosen not in result.new_keys:
                obs.joined = True  # by its values, or by a person who said it is the same
            _attach(result, holders, chosen, obs)
            # the record's own values now lead to its key too: a third member's record that
            # shares only the email with it (not the phone it was matched by) finds it
            for name in match_keys:
                value = obs.canonical.get(name)
                if value in (None, ""):
                    continue
                if index.add(name, value, chosen) and (chosen, member) in weak:
                    weak[chosen, member][1].append((name, value))
    # new hub records that an ambiguous record might also belong to are held back too:
    # creating them elsewhere could duplicate what a person has to sort out first
    for key in contested - settled:
        for obs in result.groups.pop(key, {}).values():
            result.ambiguous.append(
                (
                    obs,
                    "held back: another record matches it ambiguously "
                    "(see the other error for this value)",
                )
            )
        result.new_keys.discard(key)
    # a person links a record to a hub record: neither the stand-in of a record that could
    # not be read nor a new record held back here is one (nor becomes one in this run)
    unlinkable = shadows.keys() | (contested - settled)
    if unlinkable:
        for ident, keys in result.candidates.items():
            result.candidates[ident] = [k for k in keys if k not in unlinkable]
    if relink is not None:
        _adopt_ids(result, relink, holders.of)
    return result


def _kinds(candidates: Sequence[str], new_keys: set[str], shadows: Mapping[str, str]) -> str:
    """What the records a value matches are, for the message: "already linked elsewhere"
    where they all are, else how many of each kind (new ones, unreadable ones)."""
    unreadable = sum(1 for k in candidates if k in shadows)
    new = sum(1 for k in candidates if k in new_keys)
    linked = len(candidates) - unreadable - new
    if not unreadable and not new:
        return "already linked elsewhere"
    parts = [
        f"{n} {kind}"
        for n, kind in (
            (linked, "already linked elsewhere"),
            (new, "new in this read"),
            (unreadable, "that could not be read"),
        )
        if n
    ]
    return "on other members (" + ", ".join(parts) + ")"


@dataclass
class Relinking:
    """How ``match`` re-links records when the state knows nothing of them."""

    keys: Sequence[tuple[str, ...]]
    """The entity's relink keys: combinations of fields (``EntitySpec.relink_keys``)."""
    same: Callable[[str, Any, Any], bool]
    """Whether two values of a field are the same on some member (a date and a timestamp
    of that day)."""
    ids: Mapping[int, str] = field(default_factory=dict)
    """id() of a new record -> the id its member gave it, which a new hub record it starts
    takes as its key (a sheet's Sync ID after the state was lost)."""
    missing: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """member -> fields it does not hold (a sheet's column removed): a relink key of its
    records is the rest of the combination, when two fields or more are left."""
    match_keys: Sequence[str] = ()
    """The pipeline's match keys: two records that both hold one of them, with different
    values, are two records (two customers of one name with their own e-mails)."""

    def apart(self, a: Record, b: Record) -> bool:
        """Whether a match key tells ``a`` and ``b`` apart."""
        for name in self.match_keys:
            x, y = a.get(name), b.get(name)
            if x not in (None, "") and y not in (None, "") and x != y:
                return True
        return False

    def fields(self, i: int, member: str) -> tuple[str, ...]:
        """The fields of relink key ``i`` that ``member``'s records hold, or () when fewer
        than two are left and the key names nothing on it."""
        gone = self.missing.get(member, frozenset())
        held = tuple(n for n in self.keys[i] if n not in gone)
        return held if len(held) >= 2 else ()

    def among(self, obs: Observed, records: Mapping[str, Record]) -> tuple[list[str], str]:
        """(the keys of ``records`` that agree with ``obs`` on the first relink key that
        names any of them, what that key is) - ([], "") when none does."""
        for i in range(len(self.keys)):
            names = self.fields(i, obs.member)
            values = [obs.canonical.get(n) for n in names]
            if not names or any(v in (None, "") for v in values):
                continue
            found = [
                key
                for key, record in records.items()
                if not self.apart(obs.canonical, record)
                and all(
                    record.get(n) not in (None, "") and self.same(n, v, record.get(n))
                    for n, v in zip(names, values, strict=True)
                )
            ]
            if found:
                return found, ", ".join(n.rsplit(".", 1)[-1] for n in names)
        return [], ""


class _Combos:
    """The candidates of the relink keys: hub records and records new in this run, indexed
    by their first field's value, compared field by field with ``Relinking.same`` on the
    fields the new record's member holds (``Relinking.fields``)."""

    def __init__(self, relink: Relinking, new_records: Mapping[str, list[Observed]]) -> None:
        self.relink = relink
        self.new_records = new_records
        self.index: dict[tuple[int, Any], list[tuple[str, Record]]] = {}
        self.every: dict[int, list[tuple[str, Record]]] = {}
        """Relink key -> every candidate, for a member that lacks the key's first field."""
        self.seen: dict[tuple[int, str, tuple[Any, ...]], int] = {}
        """(relink key, member, values) -> how many of the member's new records hold them."""
        self.pending: tuple[list[str], list[Record]] | None = ([], [])
        """Candidates not indexed yet, as their keys and their records side by side (not a
        pair each: a first sync of 200 000 payments held 13 MiB of pairs while it matched):
        the indexes are built at the first ``find`` (a first sync into an empty member
        never looks)."""

    def _build(self) -> None:
        relink = self.relink
        for member, records in self.new_records.items():
            for obs in records:
                for i in range(len(relink.keys)):
                    names = relink.fields(i, member)
                    own = self._own(i, member, [obs.canonical.get(n) for n in names])
                    self.seen[own] = self.seen.get(own, 0) + 1
        keys, bases = self.pending or ([], [])
        self.pending = None
        for key, base in zip(keys, bases, strict=True):
            self.add(key, base)

    @staticmethod
    def _own(i: int, member: str, values: list[Any]) -> tuple[int, str, tuple[Any, ...]]:
        return (i, member, tuple(_hashable(v) for v in values))

    def add(self, key: str, record: Record) -> None:
        if self.pending is not None:
            self.pending[0].append(key)
            self.pending[1].append(record)
            return
        for i, names in enumerate(self.relink.keys):
            self.every.setdefault(i, []).append((key, record))
            if record.get(names[0]) not in (None, ""):
                self.index.setdefault((i, _hashable(record[names[0]])), []).append((key, record))

    def find(
        self, obs: Observed, holders: Mapping[str, AbstractSet[str]]
    ) -> tuple[str | None, str, set[str]]:
        """(the one hub key whose record agrees with ``obs`` on a relink key, or None;
        why that is ambiguous, or ""; the keys it might belong to when ambiguous)."""
        if self.pending is not None:
            self._build()
        same = self.relink.same
        for i in range(len(self.relink.keys)):
            names = self.relink.fields(i, obs.member)
            values = [obs.canonical.get(n) for n in names]
            if not names or any(v in (None, "") for v in values):
                continue
            twins = self.seen.get(self._own(i, obs.member, values), 0)
            candidates = (
                self.index.get((i, _hashable(values[0])), [])
                if names[0] == self.relink.keys[i][0]
                else self.every.get(i, [])
            )
            found = {
                key
                for key, record in candidates
                if obs.member not in holders.get(key, frozenset())
                and not self.relink.apart(obs.canonical, record)
                and all(
                    record.get(n) not in (None, "") and same(n, v, record.get(n))
                    for n, v in zip(names, values, strict=True)
                )
            }
            what = ", ".join(n.rsplit(".", 1)[-1] for n in names)
            if len(found) > 1 or (found and twins > 1):
                where = f"{obs.member} holds {twins} like it" if twins > 1 else "it"
                return (
                    None,
                    f"{len(found)} record(s) elsewhere and {where} agree on {what}: which is "
                    "which cannot be told, so none of them is synced (nothing is duplicated); "
                    "make them differ (a note, a date) or delete the extra one",
                    found,
                )
            if found:
                return found.pop(), "", set()
        return None, "", set()


def _could_pair(
    member: str, holders: Mapping[str, AbstractSet[str]], new_records: Mapping[str, list[Observed]]
) -> bool:
    """Whether any record could be paired with a record new on ``member``: a hub record (or an
    unreadable record's stand-in) it does not hold, or a record new on another member."""
    return any(member not in held for held in holders.values()) or any(
        records for other, records in new_records.items() if other != member
    )


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _adopt_ids(
    result: MatchResult, relink: Relinking, holders: Mapping[str, AbstractSet[str]]
) -> None:
    """A new hub record takes the id a member already gave one of its records (a sheet's
    Sync ID), so that the member keeps its ids and agrees with any old backup.

    A key is taken if a hub record, a record new in this run or an id adopted before holds
    it (every key of ``result.groups`` is in ``holders``). Asked of each key rather than
    copied into one set: a first sync of 200 000 payments held three sets of its keys (about
    24 MiB) at the end of matching, its peak, where no record had an id to adopt."""
    if not relink.ids:
        return
    adopted: set[str] = set()
    for key in sorted(result.new_keys):
        group = result.groups.get(key, {})
        wanted = next(
            (relink.ids[id(o)] for o in group.values() if id(o) in relink.ids),
            None,
        )
        if wanted is None or wanted in holders or wanted in adopted:
            continue
        adopted.add(wanted)
        result.groups[wanted] = result.groups.pop(key)
        result.new_keys.discard(key)
        result.new_keys.add(wanted)


class _Alone(Mapping[str, Observed]):
    """A group of one record (one member's), in a fifth of the memory of a dict of one: a
    first sync holds one for every record it read until its slice is planned."""

    __slots__ = ("obs",)

    def __init__(self, obs: Observed) -> None:
        self.obs = obs

    def __getitem__(self, member: str) -> Observed:
        if member != self.obs.member:
            raise KeyError(member)
        return self.obs

    def __iter__(self) -> Iterator[str]:
        return iter((self.obs.member,))

    def __len__(self) -> int:
        return 1


def _attach(result: MatchResult, holders: _Holders, key: str, obs: Observed) -> None:
    group = result.groups.get(key)
    if not group:
        result.groups[key] = _Alone(obs)
    elif isinstance(group, dict):
        group[obs.member] = obs
    else:
        result.groups[key] = {**group, obs.member: obs}
    holders.add(key, obs.member)
