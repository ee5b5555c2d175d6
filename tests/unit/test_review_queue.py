"""The review queue and held deletes through the engine and the library API (memory members,
a real SQLite state store): what a run parks for a person, and what the next run does with
the person's decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import Config
from syncengine.connectors.memory import MemoryConnector
from syncengine.errors import UsageError
from syncengine.render import nothing_to_do
from syncengine.state import StateStore, queues
from tests.helpers import ds, memory_config, ops, run

C = "customers"


@pytest.fixture
def two(tmp_path: Path) -> Config:
    return memory_config(tmp_path, {"a": {}, "b": {"assigns_ids": True}})


def _ann(two: Config) -> str:
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(two)
    [item] = api.status(two)
    assert item.open_review == 0
    [(key, _)] = [(k, v) for k, v in _hub(two).items()]
    return key


def _hub(cfg: Config) -> dict[str, dict[str, object]]:
    store = api.open_store(cfg)
    try:
        return {rs.key: dict(rs.base) for rs in store.iter_records("p", C)}
    finally:
        store.close()


def test_a_possible_duplicate_becomes_a_review_item_with_its_candidate(two: Config) -> None:
    key = _ann(two)
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ANN@x.com"})
    result = run(two)
    assert result.plan.actions == []
    [item] = api.list_review(two)
    assert (item.member, item.native_id, item.status) == ("b", "b-new", "open")
    assert "possible duplicate" in item.reason
    assert item.fields["first_name"] == "Ann again"
    [cand] = item.candidates
    assert cand.hub_key == key and cand.exists and "Ann" in cand.label
    assert set(cand.members) == {"a", "b"}
    assert api.status(two)[0].open_review == 1
    run(two)  # found again: refreshed, not doubled
    assert [i.id for i in api.list_review(two)] == [item.id]


def test_a_record_matching_an_unreadable_one_and_a_new_one_names_neither_as_a_candidate(
    two: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One e-mail on three records: one on ``a`` that could not be read, one new on ``a`` and
    one new on ``b``. ``b``'s is left for a person with a message that says what it matches;
    its review item offers no hub record, since neither of those is one (an unreadable
    record's stand-in once showed as a candidate named by a NUL byte, "no longer there")."""
    read_records = MemoryConnector.read

    def unreadable_a1(self: MemoryConnector, entity: str) -> Any:
        for rec in read_records(self, entity):
            yield replace(rec, error="a1: cannot be read") if rec.id == "a1" else rec

    monkeypatch.setattr(MemoryConnector, "read", unreadable_a1)
    ds("a").put(C, "a1", {"first_name": "Zed", "email": "zed@x.com"})
    ds("a").put(C, "a2", {"first_name": "Zed Zo", "email": "zed@x.com"})
    ds("b").put(C, "b1", {"first_name": "Zed B", "email": "zed@x.com"})
    result = run(two)
    assert result.plan.actions == []
    [b1] = [i for e in result.plan.entities for i in e.issues if i.member == "b"]
    assert b1.message == (
        "email 'zed@x.com' matches 2 records on other members (1 new in this read, 1 that "
        "could not be read); give them distinct values or link by hand"
    )
    items = {i.native_id: i for i in api.list_review(two)}
    assert set(items) == {"a2", "b1"}
    assert items["b1"].candidates == [] and items["a2"].candidates == []
    assert "\0" not in repr(items["b1"])


def test_a_dry_run_records_no_review_item(two: Config) -> None:
    _ann(two)
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ann@x.com"})
    api.sync(two, dry_run=True)
    assert api.list_review(two) == []


def test_keep_separate_creates_it_once_and_never_asks_again(two: Config) -> None:
    _ann(two)
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ann@x.com"})
    run(two)
    [item] = api.list_review(two)
    decided = api.review_separate(two, item.id, "tester")
    assert decided.status == "separate" and decided.decided_by == "tester"
    result = run(two)
    assert ops(result) == [("create", "a")]
    assert sorted(r["first_name"] for r in ds("a").table(C).values()) == ["Ann", "Ann again"]
    assert run(two).plan.actions == []
    assert api.list_review(two) == []
    assert api.list_review(two, status="separate")[0].id == item.id


def test_link_to_a_candidate_syncs_the_record_as_that_one(two: Config) -> None:
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "same@x.com"})
    ds("a").put(C, "a2", {"first_name": "Annie", "email": "same@x.com"})
    ds("b").put(C, "b1", {"first_name": "Who", "email": "same@x.com"})
    run(two)
    items = {i.native_id: i for i in api.list_review(two)}
    assert set(items) == {"a1", "a2", "b1"}
    # a's two records are different people: kept apart; then b's is a1's
    api.review_separate(two, items["a1"].id, "tester")
    api.review_separate(two, items["a2"].id, "tester")
    run(two)
    assert sorted(r["first_name"] for r in ds("b").table(C).values()) == ["Ann", "Annie", "Who"]
    hub = {v["first_name"]: k for k, v in _hub(two).items()}
    # b1 stays open (two candidates now); link it to Ann
    [open_item] = api.list_review(two)
    assert open_item.native_id == "b1"
    assert {c.hub_key for c in open_item.candidates} == {hub["Ann"], hub["Annie"]}
    api.review_link(two, open_item.id, hub["Ann"], "tester")
    result = run(two)
    assert all(op != "create" for op, _ in ops(result))  # no duplicate planned
    assert api.list_review(two) == []
    assert run(two).plan.actions == []
    assert len(ds("b").table(C)) == 3 and len(ds("a").table(C)) == 2


def test_link_to_a_record_deleted_since_reopens_the_item(two: Config) -> None:
    ds("a").put(C, "a0", {"first_name": "Bob", "email": "bob@x.com"})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(two)
    key = next(k for k, v in _hub(two).items() if v["first_name"] == "Ann")
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ann@x.com"})
    run(two)
    [item] = api.list_review(two)
    api.review_link(two, item.id, key, "tester")
    # meanwhile Ann is deleted everywhere
    ds("a").table(C).pop("a1")
    run(two)
    run(two)
    [reopened] = api.list_review(two)
    assert (reopened.id, reopened.status, reopened.hub_key) == (item.id, "open", None)
    assert "no longer there" in reopened.reason
    assert [(c.hub_key, c.exists) for c in reopened.candidates] == [(key, False)]


def test_unknown_ids_and_keys_are_usage_errors(two: Config) -> None:
    key = _ann(two)
    with pytest.raises(UsageError, match="no review item with id 99"):
        api.review_link(two, 99, key, "tester")
    with pytest.raises(UsageError, match="no held delete with id 7"):
        api.approve_delete(two, [7], "tester")
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ann@x.com"})
    run(two)
    [item] = api.list_review(two)
    with pytest.raises(UsageError, match="'nope' is not one of its candidates"):
        api.review_link(two, item.id, "nope", "tester")
    assert api.list_audit(two) == []  # refused: nothing recorded


def test_an_item_closes_itself_when_its_record_is_gone(two: Config) -> None:
    _ann(two)
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ann@x.com"})
    run(two)
    ds("b").table(C).pop("b-new")
    run(two)
    assert api.list_review(two) == []
    assert [i.status for i in api.list_review(two, status=None)] == ["closed"]


@pytest.fixture
def held(tmp_path: Path) -> Config:
    return memory_config(tmp_path, {"a": {}, "b": {"assigns_ids": True}}, deletes={"approve": True})


def _three(cfg: Config) -> dict[str, str]:
    for i, name in enumerate(("Ann", "Bob", "Cy")):
        ds("a").put(C, f"a{i}", {"first_name": name, "email": f"{name.lower()}@x.com"})
    run(cfg)
    return {str(v["first_name"]): k for k, v in _hub(cfg).items()}


def test_a_held_delete_waits_then_approve_deletes_it_everywhere(held: Config) -> None:
    keys = _three(held)
    ds("a").table(C).pop("a1")  # Bob deleted on a
    result = run(held)
    assert result.plan.actions == []
    assert result.to_json()["entities"]["customers"]["held_deletes"] == 1
    assert nothing_to_do(result) == (
        "Nothing else to do: 1 delete waits for approval (`syncengine deletes list`)."
    )
    assert len(ds("b").table(C)) == 3
    [hd] = api.list_held_deletes(held)
    assert (hd.hub_key, hd.member, hd.reach, hd.guard) == (keys["Bob"], "a", ["b"], None)
    assert "Bob" in hd.label and api.status(held)[0].held_deletes == 1
    assert run(held).plan.actions == []  # still held, nothing asked twice
    assert [h.id for h in api.list_held_deletes(held)] == [hd.id]
    api.approve_delete(held, [hd.id], "tester")
    assert api.list_held_deletes(held) == []
    for again in (api.approve_delete, api.restore_delete):  # not "no held delete with id"
        with pytest.raises(UsageError, match=f"held delete {hd.id} was already approved by tester"):
            again(held, [hd.id], "someone")
    result = run(held)
    assert ops(result) == [("delete", "b")]
    assert sorted(r["first_name"] for r in ds("b").table(C).values()) == ["Ann", "Cy"]
    assert run(held).plan.actions == []
    [entry, *_] = api.list_audit(held)
    assert (entry.actor, entry.action) == ("tester", "delete.approve")


def test_restore_gives_the_record_back_to_the_member_that_deleted_it(held: Config) -> None:
    keys = _three(held)
    ds("a").table(C).pop("a2")  # Cy deleted on a
    run(held)
    [hd] = api.list_held_deletes(held)
    api.restore_delete(held, [hd.id], "tester")
    result = run(held)
    assert ops(result) == [("create", "a")]
    assert sorted(r["first_name"] for r in ds("a").table(C).values()) == ["Ann", "Bob", "Cy"]
    assert len(ds("b").table(C)) == 3
    assert run(held).plan.actions == []
    assert keys["Cy"] in _hub(held)


def test_without_approve_a_delete_propagates_as_before(two: Config) -> None:
    _three(two)
    ds("a").table(C).pop("a1")
    assert ops(run(two)) == [("delete", "b")]
    assert api.list_held_deletes(two) == []


def test_a_guard_trip_is_held_and_its_batch_approved_deletes_exactly_those(
    tmp_path: Path,
) -> None:
    cfg = memory_config(
        tmp_path,
        {"a": {}, "b": {"assigns_ids": True}},
        deletes={"max_fraction": 0.3, "min_count": 2},
    )
    for i in range(6):
        ds("a").put(C, f"a{i}", {"first_name": f"P{i}", "email": f"p{i}@x.com"})
    run(cfg)
    for i in range(3):
        ds("a").table(C).pop(f"a{i}")
    result = run(cfg)
    assert result.guard and result.plan.actions  # planned, not applied
    assert len(ds("b").table(C)) == 6
    batch = api.list_held_deletes(cfg)
    assert sorted(h.label.split()[0] for h in batch) == ["P0", "P1", "P2"]
    assert all(h.guard == result.guard and h.member == "a" for h in batch)
    with pytest.raises(UsageError, match="--guarded"):
        api.approve_delete(cfg, [batch[0].id], "tester")
    approved = api.approve_guarded(cfg, "p", C, "tester")
    assert {h.status for h in approved} == {"approved"}
    # deletes after the approval are not part of the batch: they are still guarded
    ds("a").table(C).pop("a3")
    ds("a").table(C).pop("a4")
    result = run(cfg)
    assert result.guard and len(ds("b").table(C)) == 6
    assert sorted(h.label.split()[0] for h in api.list_held_deletes(cfg)) == ["P3", "P4"]
    ds("a").put(C, "a3", {"first_name": "P3", "email": "p3@x.com"})  # put back (new rows)
    ds("a").put(C, "a4", {"first_name": "P4", "email": "p4@x.com"})
    result = run(cfg)
    assert not result.guard
    assert ops(result) == [("delete", "b")] * 3
    assert sorted(r["first_name"] for r in ds("b").table(C).values()) == ["P3", "P4", "P5"]
    assert api.list_held_deletes(cfg) == []
    assert run(cfg).plan.actions == []


def test_an_approved_guard_batch_is_not_held_again_by_approve(held: Config) -> None:
    """Found by the property: every record deleted on a one by one, the last one emptying it
    (the empty-member guard); once everything is approved, the next sync deletes them all."""
    _three(held)
    for i in range(3):
        ds("a").table(C).pop(f"a{i}")
        assert run(held).plan.actions == []
    batch = api.list_held_deletes(held)
    assert [h.guard is None for h in batch] == [True, True, False]
    api.approve_delete(held, [h.id for h in batch if h.guard is None], "tester")
    api.approve_guarded(held, "p", C, "tester")
    result = run(held)
    assert ops(result) == [("delete", "b")] * 3
    assert ds("b").table(C) == {} and api.list_held_deletes(held) == []
    assert run(held).plan.actions == []


def test_review_and_held_deletes_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same decisions with the state on PostgreSQL (shared by several workers)."""
    cfg = memory_config(
        tmp_path, {"a": {}, "b": {"assigns_ids": True}}, deletes={"approve": True}, state=pg_url
    )
    _three(cfg)
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ann@x.com"})
    ds("a").table(C).pop("a1")
    result = run(cfg)
    assert result.plan.actions == []
    [item] = api.list_review(cfg)
    [hd] = api.list_held_deletes(cfg)
    api.review_separate(cfg, item.id, "tester")
    api.approve_delete(cfg, [hd.id], "tester")
    assert sorted(ops(run(cfg))) == [("create", "a"), ("delete", "b")]
    assert run(cfg).plan.actions == []
    assert api.list_review(cfg) == [] and api.list_held_deletes(cfg) == []
    assert [e.action for e in api.list_audit(cfg)] == ["delete.approve", "review.separate"]


def test_a_held_delete_is_cleared_when_its_member_holds_the_record_again(held: Config) -> None:
    keys = _three(held)
    ds("a").table(C).pop("a1")
    run(held)
    [hd] = api.list_held_deletes(held)
    ds("a").put(C, "a1-again", {"first_name": "Bob", "email": "bob@x.com"})  # typed back
    run(held)
    assert api.list_held_deletes(held) == []
    assert run(held).plan.actions == []
    assert sorted(r["first_name"] for r in ds("b").table(C).values()) == ["Ann", "Bob", "Cy"]
    assert keys["Bob"] in _hub(held)
    with pytest.raises(UsageError, match=f"held delete {hd.id} is no longer held"):
        api.approve_delete(held, [hd.id], "tester")


def test_a_link_to_a_record_that_is_not_a_candidate_is_refused_or_asked_again(
    two: Config,
) -> None:
    """Linking to a hub key that is not one of the item's candidates is refused, listing
    them; a decision like it already stored is not carried out silently (the row left
    alone as a "copy", the item gone from the list): the next run opens it again, says
    why, and keeps its candidates."""
    ann = _ann(two)
    ds("a").put(C, "a2", {"first_name": "Bob", "email": "bob@x.com"})
    run(two)
    bob = next(k for k, v in _hub(two).items() if v["first_name"] == "Bob")
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ann@x.com"})
    run(two)
    [item] = api.list_review(two)
    with pytest.raises(UsageError, match=f"{bob!r} is not one of its candidates.*{ann} \\(Ann"):
        api.review_link(two, item.id, bob, "tester")
    assert api.list_review(two)[0].status == "open"
    store = api.open_store(two)
    try:
        with store.transaction() as tx:
            tx.run(
                partial(
                    queues.decide_review, item_id=item.id, status="linked", hub_key=bob, actor="x"
                )
            )
    finally:
        store.close()
    result = run(two)
    assert result.plan.actions == []
    [again] = api.list_review(two)
    assert (again.id, again.status, again.hub_key) == (item.id, "open", None)
    assert f"linked by hand to {bob}, which is not one of the records it may be" in again.reason
    assert [c.hub_key for c in again.candidates] == [ann]


def test_an_approved_delete_of_a_record_still_referred_to_warns_and_the_run_says_so(
    tmp_path: Path,
) -> None:
    """A customer with invoices, deleted on a and approved: the approval warns that it will
    be given back unless the invoices go too, and the run that gives it back says which
    approved delete it did not carry out, and why."""
    cfg = memory_config(
        tmp_path,
        {
            "a": {"entities": [C, "invoices"]},
            "b": {"assigns_ids": True, "entities": [C, "invoices"]},
        },
        deletes={"approve": True, "max_fraction": 1.0},
        entities=(C, "invoices"),
    )
    ds("a").put(C, "c1", {"first_name": "Ann", "email": "ann@x.com"})
    ds("a").put(C, "c2", {"first_name": "Bob", "email": "bob@x.com"})
    ds("a").put(C, "c3", {"first_name": "Cy", "email": "cy@x.com"})
    for n in (1, 2):
        ds("a").put(
            "invoices",
            f"i{n}",
            {"invoice_number": f"100{n}", "customer": "c1", "amount": 100, "status": "sent"},
        )
    run(cfg)
    ds("a").table(C).pop("c1")
    ds("a").table(C).pop("c2")
    run(cfg)
    held = {h.label.split()[0]: h for h in api.list_held_deletes(cfg)}
    [ann] = api.approve_delete(cfg, [held["Ann"].id], "tester")
    assert ann.warning == (
        "referred to by 2 invoices: it will be given back unless those are deleted too"
    )
    [bob] = api.approve_delete(cfg, [held["Bob"].id], "tester")
    assert bob.warning is None
    result = run(cfg)
    notes = result.to_json()["entities"]["customers"]["notes"]
    [note] = [n for n in notes if "approved delete" in n]
    assert "Ann" in note and "given back" in note and "2 records" in note
    assert "Bob" not in note


def test_the_decision_that_loses_a_race_is_refused_whole_and_changes_nothing(
    held: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Approve and restore sent at once: both find the delete held, the restore writes
    first; the approval's conditional update finds it decided and is refused (who restored
    it), leaving the hub record and the audit log as the restore left them."""
    keys = _three(held)
    ds("a").table(C).pop("a1")
    run(held)
    [hd] = api.list_held_deletes(held)
    real = api._held_by_ids
    raced: list[int] = []

    def checked_then_raced(
        store: StateStore, ids: Sequence[int], verb: str
    ) -> list[queues.HeldRow]:
        rows = real(store, ids, verb)
        if not raced:  # the other person's restore lands between the check and the write
            raced.append(1)
            api.restore_delete(held, ids, "first")
        return rows

    monkeypatch.setattr(api, "_held_by_ids", checked_then_raced)
    with pytest.raises(UsageError, match=f"held delete {hd.id} was already restored by first"):
        api.approve_delete(held, [hd.id], "second")
    [row] = [h for h in api.list_audit(held) if h.action.startswith("delete.")]
    assert (row.actor, row.action) == ("first", "delete.restore")
    assert "_deleted" not in _hub(held)[keys["Bob"]]
    assert ops(run(held)) == [("create", "a")]  # restored, as the one told so was told
