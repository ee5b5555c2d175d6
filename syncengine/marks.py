"""Read marks: where a member's next incremental read starts.

A member that reads incrementally lists only what changed since its mark. A mark may move
forward only when everything the pass listed was taken into the plan and committed: a record
left out (a record-level problem, a change of a record left alone) would otherwise never be
listed again. ``marks_to_keep`` decides that while planning; ``store_marks`` writes them after
the entity's commit, and never in a dry run.

An *exact* mark (``ReadPass.exact``: a file's fingerprint) names the member's content, not a
point in time, and the pass from it lists nothing when the content is back to what it names.
Such a mark is only true while the state holds what that content showed, so it is dropped
before the entity is applied whenever the state may take anything else: another version of
the content, or the entity's own writes, which a run stopped or killed mid-apply commits
without storing the mark they leave (``drop_exact_marks``); an apply of the entity later
in the run (held deletes decided, records its writes changed synced again) drops the marks
stored before it. Where another mark would be kept (a record left out, a write that failed)
it is dropped instead. The next pass is then a complete one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from syncengine.connector import ReadPass
from syncengine.plan import EntityPlan, Issue
from syncengine.read import MemberRead
from syncengine.state import StateStore


def marks_to_keep(
    reads: Mapping[str, MemberRead], ent: EntityPlan, untaken: set[str]
) -> tuple[dict[str, ReadPass], set[str]]:
    """(member -> the pass whose mark to store after the commit, members whose exact mark
    to drop then). A pass's mark moves unless something it showed is not taken into the plan
    (a record-level problem on it, or on no member in particular; a change of a record left
    alone; what an event-driven run left for a later one). Such a record is only listed again
    by a pass from the old mark, so the old mark stays; an exact one is dropped instead."""
    names = set(reads)
    held = (
        untaken
        | {i.member for i in ent.issues}
        | {n for n, r in reads.items() if r.reread or r.set_aside}
    )
    if not held <= names:
        held = names
    passes: dict[str, ReadPass] = {}
    dropped: set[str] = set()
    for name, r in reads.items():
        rp = r.read_pass
        if rp is None:
            continue
        if name in held:
            if rp.exact:
                dropped.add(name)
        elif rp.exact or rp.token() is not None:
            passes[name] = rp
    return passes, dropped


def drop_exact_marks(store: StateStore, pipeline: str, entity: str, stale: Iterable[str]) -> None:
    """Before anything of the entity is applied: drop the exact marks of ``stale``, the
    members whose read was complete (their content is not the one their mark names) or whose
    state the apply changes. Until the entity is committed and its new marks stored, a run
    stopped or killed then leaves no mark that could vouch for content the state no longer
    reflects."""
    names = sorted(stale)
    if not names:
        return
    with store.transaction() as tx:
        for name in names:
            tx.delete_read_mark(pipeline, entity, name)


def store_marks(
    store: StateStore,
    pipeline: str,
    entity: str,
    passes: Mapping[str, ReadPass],
    dropped: Iterable[str],
    failures: Iterable[Issue],
    mappings: Mapping[str, str] | None = None,
) -> set[str]:
    """After the entity was applied and committed: store the read marks of the members
    no write failed on (see ``marks_to_keep``; an exact pass's is its token once settled,
    the sync's own writes included), and drop those of ``dropped`` (a partial read of which
    missed a record that is gone, or an exact mark that could not move) and the exact marks
    of members a write failed on. ``mappings``: member -> the fingerprint of the mapping its
    complete read was made with, where it changed, stored the same way (a member a write
    failed on reads every record again next time). Returns the members whose exact marks
    were stored: an apply of the entity later in the run drops them first."""
    failed = {f.member for f in failures}
    keep: dict[str, str] = {}
    drop = set(dropped)
    for name, rp in passes.items():
        token = rp.settled_token() if name not in failed else None
        if token is not None:
            keep[name] = token
        elif rp.exact:
            drop.add(name)
    fingerprints = {name: fp for name, fp in (mappings or {}).items() if name not in failed}
    if not keep and not drop and not fingerprints:
        return set()
    with store.transaction() as tx:
        for name, token in keep.items():
            tx.put_read_mark(pipeline, entity, name, token)
        for name in sorted(drop):
            tx.delete_read_mark(pipeline, entity, name)
        for name, fp in fingerprints.items():
            tx.put_mapping_mark(pipeline, entity, name, fp)
    return {name for name in keep if passes[name].exact}
