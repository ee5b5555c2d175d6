"""Read marks: where a member's next incremental read starts.

A member that reads incrementally lists only what changed since its mark. A mark may move
forward only when everything the pass listed was taken into the plan and committed: a record
left out (a record-level problem, a change of a record left alone) would otherwise never be
listed again. ``marks_to_keep`` decides that while planning; ``store_marks`` writes them after
the entity's commit, and never in a dry run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from syncengine.plan import EntityPlan, Issue
from syncengine.read import MemberRead
from syncengine.state import StateStore


def marks_to_keep(
    reads: Mapping[str, MemberRead], ent: EntityPlan, untaken: set[str]
) -> dict[str, str]:
    """member -> the read mark to store after the commit: its pass's token, unless
    something the pass showed is not taken into the plan (a record-level problem on it, or
    on no member in particular; a change of a record left alone; what an event-driven run
    left for a later one). Such a record is only listed again by a pass from the old mark,
    so the old mark stays."""
    names = set(reads)
    held = (
        untaken
        | {i.member for i in ent.issues}
        | {n for n, r in reads.items() if r.reread or r.set_aside}
    )
    if not held <= names:
        held = names
    marks: dict[str, str] = {}
    for name, r in reads.items():
        token = r.read_pass.token() if r.read_pass is not None and name not in held else None
        if token is not None:
            marks[name] = token
    return marks


def store_marks(
    store: StateStore,
    pipeline: str,
    entity: str,
    marks: Mapping[str, str],
    reread: Iterable[str],
    failures: Iterable[Issue],
    mappings: Mapping[str, str] | None = None,
) -> None:
    """After the entity was applied and committed: store the read marks of the members
    no write failed on (see ``marks_to_keep``), and drop those of the members a partial read
    of which missed a record that is gone (``reread``). ``mappings``: member -> the
    fingerprint of the mapping its complete read was made with, where it changed, stored the
    same way (a member a write failed on reads every record again next time)."""
    failed = {f.member for f in failures}
    keep = {name: token for name, token in marks.items() if name not in failed}
    dropped = sorted(reread)
    fingerprints = {name: fp for name, fp in (mappings or {}).items() if name not in failed}
    if not keep and not dropped and not fingerprints:
        return
    with store.transaction() as tx:
        for name, token in keep.items():
            tx.put_read_mark(pipeline, entity, name, token)
        for name in dropped:
            tx.delete_read_mark(pipeline, entity, name)
        for name, fp in fingerprints.items():
            tx.put_mapping_mark(pipeline, entity, name, fp)
