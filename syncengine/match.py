"""Match: link records that are new on a member to the hub record they already belong to.

A record is new on a member when the member has no link for it (a customer typed into HCP,
a row added to the spreadsheet). Before it becomes a new hub record, it is looked up by the
pipeline's match keys (default: email, then E.164 mobile) among hub records that member does
not hold yet, and among records new on other members in this run. One candidate: linked.
Several: reported as ambiguous and left alone, never guessed. None: a new hub record.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncengine.connector import NativeRecord
from syncengine.model import Record


@dataclass
class Observed:
    """A record as read from a member this run, mapped to canonical form."""

    member: str
    record: NativeRecord
    canonical: Record
    native_hash: str
    order: int = 0
    """Position in the member's read, to keep the member's order for new records."""


@dataclass
class MatchResult:
    groups: dict[str, dict[str, Observed]] = field(default_factory=dict)
    """key -> member -> the new record linked to it."""
    new_keys: set[str] = field(default_factory=set)
    ambiguous: list[tuple[Observed, str]] = field(default_factory=list)
    """(record, explanation) for records that matched several hub records."""


def new_key() -> str:
    return uuid.uuid4().hex


def match(
    members: Sequence[str],
    new_records: Mapping[str, list[Observed]],
    existing: Iterable[tuple[str, Record, frozenset[str]]],
    match_keys: Sequence[str],
    *,
    hints: Mapping[tuple[str, str], str] | None = None,
    make_key: Callable[[], str] = new_key,
) -> MatchResult:
    """Group new records with hub records or with each other.

    ``existing`` yields ``(key, base, members holding a live link)``; ``hints`` maps
    ``(member, native_hash)`` to the key an interrupted run had already given that record.
    """
    result = MatchResult()
    index: dict[tuple[str, Any], list[str]] = {}
    holders: dict[str, set[str]] = {}
    for key, base, linked in existing:
        holders[key] = set(linked)
        for name in match_keys:
            value = base.get(name)
            if value not in (None, ""):
                index.setdefault((name, value), []).append(key)

    hints = hints or {}
    contested: set[str] = set()
    for member in members:
        for obs in new_records.get(member, []):
            hinted = hints.get((member, obs.native_hash))
            if hinted is not None and member not in holders.get(hinted, {member}):
                _attach(result, holders, hinted, obs)
                continue
            chosen: str | None = None
            ambiguous = ""
            for name in match_keys:
                value = obs.canonical.get(name)
                if value in (None, ""):
                    continue
                same_value = index.get((name, value), [])
                candidates = [k for k in same_value if member not in holders.get(k, set())]
                if len(candidates) == 1:
                    chosen = candidates[0]
                    break
                if len(candidates) > 1:
                    ambiguous = (
                        f"{name} {value!r} matches {len(candidates)} records "
                        "already linked elsewhere; give them distinct values or link "
                        "by hand"
                    )
                    contested.update(k for k in candidates if k in result.new_keys)
                    break
                twins = [k for k in same_value if holders.get(k, set()) - {member}]
                if twins:
                    ambiguous = (
                        f"{name} {value!r} is already used by another record on "
                        f"{member} that is linked to the other members: a possible "
                        "duplicate, not synced (merge the two, or give this one a "
                        "distinct value)"
                    )
                    break
            if ambiguous:
                result.ambiguous.append((obs, ambiguous))
                continue
            if chosen is None:
                chosen = make_key()
                result.new_keys.add(chosen)
                holders[chosen] = set()
            _attach(result, holders, chosen, obs)
            # the record's own values now lead to its key too: a third member's record that
            # shares only the email with it (not the phone it was matched by) finds it
            for name in match_keys:
                value = obs.canonical.get(name)
                if value not in (None, ""):
                    keys = index.setdefault((name, value), [])
                    if chosen not in keys:
                        keys.append(chosen)
    # new hub records that an ambiguous record might also belong to are held back too:
    # creating them elsewhere could duplicate what a person has to sort out first
    for key in contested:
        for obs in result.groups.pop(key, {}).values():
            result.ambiguous.append(
                (
                    obs,
                    "held back: another record matches it ambiguously "
                    "(see the other error for this value)",
                )
            )
        result.new_keys.discard(key)
    return result


def _attach(result: MatchResult, holders: dict[str, set[str]], key: str, obs: Observed) -> None:
    result.groups.setdefault(key, {})[obs.member] = obs
    holders.setdefault(key, set()).add(obs.member)
