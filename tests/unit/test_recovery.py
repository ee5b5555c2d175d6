"""Interrupted creates settled from the member's own read in the next run (``recovery``).

A run dies right after a member answered a create and before the state store recorded it:
the journal holds the create's intent, pending. The next run tells the record that create
made from its read of the member, the one it makes anyway, and links it: no lookup per
intent, nothing created twice. Only what that read cannot show is looked up: a partial
(incremental) pass, or an entity the run does not read.

Real memory members and a real SQLite state file; the crash is a ``BaseException`` raised
right after the member applied a create (nothing of the engine handles it, like a kill).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import Config
from syncengine.connector import NativeData, NativeRecord
from syncengine.connectors.memory import MemoryConnector
from syncengine.recovery import _pair, recover
from tests.helpers import ds, memory_config, ops, run

C = "customers"


class Crash(BaseException):
    """The process dying right after a member answered (like a SIGKILL)."""


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(method, entity) of every ``find`` and ``get`` asked of a memory member."""
    asked: list[tuple[str, str]] = []
    find, get = MemoryConnector.find, MemoryConnector.get

    def counted_find(self: MemoryConnector, entity: str, data: NativeData) -> list[NativeRecord]:
        asked.append(("find", entity))
        return find(self, entity, data)

    def counted_get(self: MemoryConnector, entity: str, native_id: str) -> NativeRecord | None:
        asked.append(("get", entity))
        return get(self, entity, native_id)

    monkeypatch.setattr(MemoryConnector, "find", counted_find)
    monkeypatch.setattr(MemoryConnector, "get", counted_get)
    return asked


@pytest.fixture
def crash_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``crash_after(n, member)``: the member's n-th create of the next sync is applied,
    then the run dies (its intents stay pending)."""
    create = MemoryConnector.create
    armed: dict[str, int] = {}

    def crashing(self: MemoryConnector, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        made = create(self, entity, data, key=key)
        if self.name in armed:
            armed[self.name] -= 1
            if armed[self.name] == 0:
                del armed[self.name]
                raise Crash(f"killed after creating {made.id} on {self.name}")
        return made

    monkeypatch.setattr(MemoryConnector, "create", crashing)

    def arm(n: int, member: str = "b") -> None:
        armed[member] = n

    yield arm


def killed(cfg: Config) -> None:
    with pytest.raises(Crash):
        run(cfg)


def creates_journalled(tmp_path: Path) -> list[tuple[str, str | None]]:
    """(state, error) of every create in the journal, oldest first."""
    con = sqlite3.connect(tmp_path / "state.db")
    try:
        return list(con.execute("SELECT state, error FROM journal WHERE op = 'create' ORDER BY id"))
    finally:
        con.close()


def pending_creates(cfg: Config) -> int:
    with api.open_store(cfg) as store:
        return sum(1 for i in store.pending_intents("p") if i.op == "create")


def linked_on(cfg: Config, member: str) -> set[str]:
    with api.open_store(cfg) as store:
        return set(store.link_index("p", C, member))


def customers(n: int, **extra: Any) -> None:
    for i in range(n):
        ds("a").put(C, f"a{i}", {"first_name": f"N{i}", "email": f"n{i}@x.com", **extra})


@pytest.mark.whole_first_sync
def test_interrupted_creates_are_told_from_the_read_with_no_lookup(
    tmp_path: Path, crash_after: Any, lookups: list[tuple[str, str]]
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    customers(6)
    crash_after(4)
    killed(cfg)
    assert len(ds("b").table(C)) == 4 and pending_creates(cfg) == 6
    result = run(cfg)
    assert lookups == [], "the interrupted creates were looked up one by one"
    assert result.pending_recovery == 6
    assert ops(result) == [("create", "b")] * 2
    assert len(ds("b").table(C)) == 6
    assert linked_on(cfg, "b") == set(ds("b").table(C))
    assert pending_creates(cfg) == 0
    assert run(cfg).plan.actions == []


@pytest.mark.whole_first_sync
def test_interrupted_creates_on_a_member_reading_json_are_told_by_every_value_written(
    tmp_path: Path,
    crash_after: Any,
    lookups: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read keeps only the fields matching compares of each record in memory
    (``spill.Projected``); recovery compares every value a create wrote, so it takes the
    records it compares back whole."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    quiet = {"stamp_updated_at": False}
    cfg = memory_config(tmp_path, {"a": quiet, "b": quiet})
    customers(6, company="Co", tags=["x"], notifications_enabled=True)
    crash_after(4)
    killed(cfg)
    result = run(cfg)
    assert lookups == [] and result.pending_recovery == 6
    assert ops(result) == [("create", "b")] * 2
    assert len(ds("b").table(C)) == 6 and linked_on(cfg, "b") == set(ds("b").table(C))
    assert run(cfg).plan.actions == []


def test_on_a_member_taking_the_engines_ids_the_key_tells_the_record(
    tmp_path: Path, crash_after: Any, lookups: list[tuple[str, str]]
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {"assigns_ids": True}})
    customers(5)
    crash_after(2)
    killed(cfg)
    result = run(cfg)
    assert lookups == []
    assert ops(result) == [("create", "b")] * 3
    assert len(ds("b").table(C)) == 5 and linked_on(cfg, "b") == set(ds("b").table(C))
    assert run(cfg).plan.actions == []


def test_a_record_edited_since_the_crash_is_told_by_its_match_key_and_the_edit_kept(
    tmp_path: Path, crash_after: Any, lookups: list[tuple[str, str]]
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    customers(3)
    crash_after(1)
    killed(cfg)
    [made] = ds("b").table(C)
    ds("b").edit(C, made, company="Edited In B")  # a person, before the next sync
    result = run(cfg)
    assert lookups == []
    assert ops(result) == [("create", "b"), ("create", "b"), ("update", "a")]
    assert len(ds("b").table(C)) == 3
    assert ds("a").table(C)["a0"]["company"] == "Edited In B"  # b's edit is an edit
    assert run(cfg).plan.actions == []


def test_twins_without_a_match_key_take_one_record_each(
    tmp_path: Path, crash_after: Any, lookups: list[tuple[str, str]]
) -> None:
    """Two customers alike in everything written and nothing to match them by: each
    interrupted create takes one of the two records that hold what they wrote."""
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    for i in range(2):
        ds("a").put(C, f"twin{i}", {"first_name": "Twin", "company": "Same Ltd"})
    ds("a").put(C, "other", {"first_name": "Other", "company": "Same Ltd"})
    crash_after(2)
    killed(cfg)
    result = run(cfg)
    assert lookups == []
    assert ops(result) == [("create", "b")]  # only the one not created before the crash
    assert len(ds("b").table(C)) == 3
    assert run(cfg).plan.actions == []


def test_more_records_than_creates_holding_what_was_written_are_left_for_matching(
    tmp_path: Path, crash_after: Any
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    crash_after(1)
    killed(cfg)
    ds("b").put(C, "typed", {"first_name": "Ann", "email": "ann@x.com"})  # a person, too
    result = run(cfg)
    [(state, error)] = creates_journalled(tmp_path)
    assert state == "abandoned" and error is not None and "left for matching" in error
    assert not any(a.op == "create" for a in result.plan.actions), "created a third time"
    assert len(ds("b").table(C)) == 2 and pending_creates(cfg) == 0


def test_a_partial_read_falls_back_to_a_lookup_per_create(
    tmp_path: Path, crash_after: Any, lookups: list[tuple[str, str]]
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {"incremental": True, "full_every": 5}})
    customers(2)
    run(cfg)
    run(cfg)  # b's first passes are complete (the first listed nothing); the next partial
    for i in range(2, 5):
        ds("a").put(C, f"a{i}", {"first_name": f"N{i}", "email": f"n{i}@x.com"})
    crash_after(2)
    killed(cfg)
    lookups.clear()
    result = run(cfg)
    assert ("pass", C, "partial") in ds("b").calls
    assert lookups == [("find", C)] * 3, "one lookup per interrupted create"
    assert ops(result) == [("create", "b")]
    assert len(ds("b").table(C)) == 5 and linked_on(cfg, "b") == set(ds("b").table(C))
    assert run(cfg).plan.actions == []


@pytest.mark.whole_first_sync
def test_a_dry_run_settles_nothing_and_plans_no_create_twice(
    tmp_path: Path, crash_after: Any, lookups: list[tuple[str, str]]
) -> None:
    """Records without match keys: only the interrupted create tells the record it made."""
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    for i in range(3):
        ds("a").put(C, f"a{i}", {"first_name": f"Nameless{i}", "company": f"No Contact {i}"})
    crash_after(2)
    killed(cfg)
    state = (tmp_path / "state.db").read_bytes()
    preview = run(cfg, dry_run=True)
    assert ops(preview) == [("create", "b")]
    assert (tmp_path / "state.db").read_bytes() == state
    assert pending_creates(cfg) == 3 and lookups == []
    assert ops(run(cfg)) == [("create", "b")]
    assert len(ds("b").table(C)) == 3 and run(cfg).plan.actions == []


def test_a_guarded_entity_leaves_its_interrupted_creates_pending(
    tmp_path: Path, crash_after: Any
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    customers(4)
    run(cfg)
    for i in range(4, 8):
        ds("a").put(C, f"a{i}", {"first_name": f"N{i}", "email": f"n{i}@x.com"})
    crash_after(2)
    killed(cfg)
    saved = dict(ds("b").table(C))
    ds("b").table(C).clear()  # the member suddenly lists nothing
    result = run(cfg)
    assert result.plan.entities[0].guard and pending_creates(cfg) == 4
    ds("b").table(C).update(saved)  # back again: the creates are settled, not repeated
    result = run(cfg)
    assert ops(result) == [("create", "b")] * 2
    assert len(ds("b").table(C)) == 8 and pending_creates(cfg) == 0


@pytest.mark.whole_first_sync
def test_creates_of_an_entity_the_run_does_not_read_are_looked_up_at_its_start(
    tmp_path: Path, crash_after: Any, lookups: list[tuple[str, str]]
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    customers(3)
    crash_after(2)
    killed(cfg)
    [pipeline] = cfg.pipeline(None)
    connectors = {m: cfg.make_connector(m) for m in pipeline.members}
    with api.open_store(cfg) as store:
        recovery = recover(store, pipeline, connectors, None, dry_run=False, entities=[])
        assert recovery.pending == 3 and recovery.creates == {}
        assert store.pending_intents("p") == []
    assert lookups == [("find", C)] * 3
    assert linked_on(cfg, "b") == set(ds("b").table(C))
    assert ops(run(cfg)) == [("create", "b")]
    assert len(ds("b").table(C)) == 3


@pytest.mark.parametrize(
    ("options", "paired", "left"),
    [
        pytest.param({1: [10], 2: [11]}, {1: 10, 2: 11}, {}, id="one-each"),
        pytest.param({1: [10, 11], 2: [10, 11]}, {1: 10, 2: 11}, {}, id="twins"),
        pytest.param({1: [10], 2: [10, 11]}, {1: 10, 2: 11}, {}, id="taken-then-left-one"),
        pytest.param({1: [10, 11]}, {}, {1: [10, 11]}, id="two-for-one"),
        pytest.param({1: [10], 2: [10]}, {}, {1: [10], 2: [10]}, id="one-for-two"),
        pytest.param({1: [], 2: [12]}, {2: 12}, {}, id="none-found"),
    ],
)
def test_pairing_interrupted_creates_with_the_records_they_may_have_made(
    options: dict[int, list[int]], paired: dict[int, int], left: dict[int, list[int]]
) -> None:
    assert _pair(options) == (paired, left)


@pytest.mark.parametrize("first", [True, False])
def test_a_record_listed_twice_after_a_crash_is_linked_once(
    tmp_path: Path, crash_after: Any, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """A member that reads JSON (its records wait on disk until planned) lists a record the
    interrupted run created twice, before or after the rest (an API repeating a page): each
    record created is linked once, and nothing is created again."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    customers(4)
    crash_after(2)
    killed(cfg)
    made = sorted(ds("b").table(C))
    read = MemoryConnector.read

    def repeating(self: MemoryConnector, entity: str) -> Iterator[NativeRecord]:
        records = list(read(self, entity))
        if self.name == "b":  # the copy first or last: one of them is the one linked
            yield from (r for r in records if r.id == made[0] and first)
        yield from records
        if self.name == "b":
            yield from (r for r in records if r.id == made[0] and not first)

    monkeypatch.setattr(MemoryConnector, "read", repeating)
    result = run(cfg)
    assert ops(result) == [("create", "b")] * 2
    assert len(ds("b").table(C)) == 4 and linked_on(cfg, "b") == set(ds("b").table(C))
    assert pending_creates(cfg) == 0
    monkeypatch.setattr(MemoryConnector, "read", read)
    assert run(cfg).plan.actions == []
