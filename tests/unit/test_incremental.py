"""Incremental reads in the engine: partial passes between complete ones, over memory members
with ``incremental = true`` (a pass since a token lists only records updated since; every
``full_every``-th pass is complete) and a real SQLite state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.plan import Update
from tests.helpers import ds, memory_config, ops, run

C = "customers"
INCREMENTAL = {"incremental": True, "full_every": 3, "put_updates": True}
"""Passes: complete, partial, partial, complete, ... Updates replace the whole record (a PUT),
so an update built without the record would wipe its other fields."""


def passes(name: str) -> list[str]:
    return [detail for op, _entity, detail in ds(name).calls if op == "pass"]


def gets(name: str) -> list[str]:
    return [detail for op, _entity, detail in ds(name).calls if op == "get"]


def mark(cfg: Config, member: str = "a") -> str | None:
    with api.open_store(cfg) as store:
        return store.read_mark("p", C, member)


def b_row(email: str) -> dict[str, Any]:
    [row] = [r for r in ds("b").table(C).values() if r.get("email") == email]
    return row


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """a reads incrementally; b reads everything and takes the engine's keys as ids."""
    return memory_config(tmp_path, {"a": INCREMENTAL, "b": {"assigns_ids": True}})


def seed(count: int = 5) -> None:
    for i in range(1, count + 1):
        ds("a").put(
            C,
            f"a{i}",
            {
                "first_name": f"N{i}",
                "email": f"n{i}@x.com",
                "crm_only": f"kept {i}",
                "addresses.service.city": "Austin",
            },
        )


def test_a_partial_pass_does_not_delete_or_recreate_unseen_records(cfg: Config) -> None:
    seed()
    first = run(cfg)
    assert ops(first) == [("create", "b")] * 5 and passes("a") == ["complete"]
    assert mark(cfg) is not None
    second = run(cfg)
    assert passes("a") == ["complete", "partial"]
    assert second.plan.entities[0].seen["a"] == 0  # nothing changed since the mark
    assert second.plan.actions == [] and second.exit_code == 0 and second.guard is None
    assert len(ds("a").table(C)) == 5 and len(ds("b").table(C)) == 5
    assert gets("a") == []  # nothing was fetched either


def test_changes_in_a_partial_pass_propagate_both_ways(cfg: Config) -> None:
    seed()
    run(cfg)
    ds("a").edit(C, "a2", first_name="Second")
    ds("b").edit(
        C,
        next(k for k, r in ds("b").table(C).items() if r["email"] == "n4@x.com"),
        first_name="Fourth",
    )
    result = run(cfg)
    assert passes("a")[-1] == "partial" and result.plan.entities[0].seen["a"] == 1
    assert ops(result) == [("update", "a"), ("update", "b")]
    assert b_row("n2@x.com")["first_name"] == "Second"
    assert ds("a").table(C)["a4"]["first_name"] == "Fourth"
    again = run(cfg)
    assert passes("a")[-1] == "partial" and again.plan.actions == []


def test_an_update_of_an_unseen_record_fetches_it_and_keeps_its_other_fields(cfg: Config) -> None:
    seed(3)
    run(cfg)
    b_id = next(k for k, r in ds("b").table(C).items() if r["email"] == "n2@x.com")
    ds("b").edit(C, b_id, first_name="Edited", last_name="On B")
    result = run(cfg)
    assert passes("a")[-1] == "partial"
    [update] = result.plan.actions
    assert gets("a") == ["a2"]  # fetched while planning: the plan shows the real record
    assert isinstance(update, Update) and update.member == "a"
    assert update.full["crm_only"] == "kept 2" and update.changes["first_name"] == ("N2", "Edited")
    a2 = ds("a").table(C)["a2"]
    assert (a2["first_name"], a2["last_name"]) == ("Edited", "On B")
    # a whole-record write built from the patch alone would have dropped these
    assert (a2["email"], a2["crm_only"], a2["addresses.service.city"]) == (
        "n2@x.com",
        "kept 2",
        "Austin",
    )
    assert result.exit_code == 0 and run(cfg).plan.actions == []


def test_an_edit_of_a_record_deleted_where_it_was_not_read_is_a_delete_modify_conflict(
    cfg: Config,
) -> None:
    seed(3)
    run(cfg)
    ds("a").remove(C, "a1")
    for email in ("n1@x.com", "n3@x.com"):
        b_id = next(k for k, r in ds("b").table(C).items() if r["email"] == email)
        ds("b").edit(C, b_id, company="Acme")
    waits = run(cfg)
    assert passes("a")[-1] == "partial" and sorted(gets("a")) == ["a1", "a3"]
    # a3 is updated; a1 is not there: left alone until a complete pass says it is gone
    assert ops(waits) == [("update", "a")] and ds("a").table(C)["a3"]["company"] == "Acme"
    assert waits.failures == [] and mark(cfg) is None  # so the next read is complete
    final = run(cfg)
    assert passes("a")[-1] == "complete"
    # as with complete reads, the edit on b meets the delete on a: the data is kept
    assert ops(final) == [("create", "a")] and final.exit_code == 0
    assert sorted((r["email"], r.get("company")) for r in ds("a").table(C).values()) == [
        ("n1@x.com", "Acme"),
        ("n2@x.com", None),
        ("n3@x.com", "Acme"),
    ]
    assert len(ds("b").table(C)) == 3
    assert run(cfg).plan.actions == [] and mark(cfg) is not None


def test_a_failed_create_elsewhere_is_retried_though_the_source_is_not_listed_again(
    cfg: Config,
) -> None:
    seed(2)
    run(cfg)
    ds("a").put(C, "a9", {"first_name": "Nine", "email": "n9@x.com"})

    def fail(op: str, entity: str, ref: str) -> bool:
        return op == "create"

    failed = run(cfg, connector_extra={"b": {"fail_write": fail}})
    assert ops(failed) == [("create", "b")] and len(failed.failures) == 1
    assert len(ds("b").table(C)) == 2
    retry = run(cfg)
    assert passes("a")[-1] == "partial" and retry.plan.entities[0].seen["a"] == 0
    assert ops(retry) == [("create", "b")] and len(ds("b").table(C)) == 3
    assert run(cfg).plan.actions == []


def test_deletes_are_seen_on_the_next_complete_pass(cfg: Config) -> None:
    seed()
    run(cfg)  # complete
    ds("a").remove(C, "a3")
    for _ in range(2):
        partial = run(cfg)
        assert passes("a")[-1] == "partial"
        assert partial.plan.actions == [] and len(ds("b").table(C)) == 5
    complete = run(cfg)
    assert passes("a")[-1] == "complete"
    assert ops(complete) == [("delete", "b")]
    assert sorted(r["email"] for r in ds("b").table(C).values()) == [
        "n1@x.com",
        "n2@x.com",
        "n4@x.com",
        "n5@x.com",
    ]
    assert run(cfg).plan.actions == []


def test_a_delete_on_another_member_reaches_an_unseen_record(cfg: Config) -> None:
    seed()
    run(cfg)
    b_id = next(k for k, r in ds("b").table(C).items() if r["email"] == "n2@x.com")
    ds("b").remove(C, b_id)
    result = run(cfg)
    assert passes("a")[-1] == "partial" and ops(result) == [("delete", "a")]
    assert "a2" not in ds("a").table(C) and len(ds("a").table(C)) == 4
    assert run(cfg).plan.actions == []


def test_the_empty_member_guard_does_not_fire_on_an_empty_partial_pass(cfg: Config) -> None:
    seed()
    run(cfg)
    quiet = run(cfg)
    assert passes("a")[-1] == "partial" and quiet.plan.entities[0].seen["a"] == 0
    assert quiet.guard is None and quiet.exit_code == 0
    # an empty *complete* pass is still refused
    ds("a").table(C).clear()
    run(cfg)  # partial: nothing listed, nothing missing
    refused = run(cfg)
    assert passes("a")[-1] == "complete"
    assert refused.exit_code == 3 and "returned no customers" in (refused.guard or "")
    assert len(ds("b").table(C)) == 5


def test_a_crash_before_the_commit_does_not_advance_the_mark(cfg: Config) -> None:
    path = cfg.path
    text = path.read_text().replace(
        'entities = ["customers"]', 'entities = ["customers"]\nbatch_size = 2'
    )
    path.write_text(text)
    cfg = load_config(path)
    seed()
    run(cfg)
    before = mark(cfg)
    for i in range(1, 6):
        ds("a").edit(C, f"a{i}", first_name=f"Edited {i}")

    def crash(what: str, done: int, total: int | None) -> None:
        if what.startswith("applying") and done >= 2:  # 0: the apply starts
            raise RuntimeError("the process dies after the first batch")

    with pytest.raises(RuntimeError):
        run(cfg, progress=crash)
    assert sum(r["first_name"].startswith("Edited") for r in ds("b").table(C).values()) == 2
    assert mark(cfg) == before
    # the next pass starts from the old mark, so the edits not applied yet are listed again
    result = run(cfg)
    assert passes("a")[-1] == "partial" and result.plan.entities[0].seen["a"] == 5
    assert ops(result) == [("update", "b")] * 3
    assert sorted(r["first_name"] for r in ds("b").table(C).values()) == [
        f"Edited {i}" for i in range(1, 6)
    ]
    assert mark(cfg) != before and run(cfg).plan.actions == []


def test_a_dry_run_reads_incrementally_but_never_stores_a_mark(cfg: Config) -> None:
    seed()
    dry = run(cfg, dry_run=True)
    assert passes("a") == ["complete"] and len(dry.plan.actions) == 5
    assert mark(cfg) is None
    run(cfg)
    stored = mark(cfg)
    ds("a").edit(C, "a1", first_name="Changed")
    dry = run(cfg, dry_run=True)
    assert passes("a")[-1] == "partial" and ops(dry) == [("update", "b")]
    assert mark(cfg) == stored and b_row("n1@x.com")["first_name"] == "N1"
    real = run(cfg)
    assert ops(real) == [("update", "b")] and mark(cfg) != stored


def test_a_record_level_problem_keeps_the_old_mark(cfg: Config) -> None:
    seed(2)
    run(cfg)
    before = mark(cfg)
    ds("a").put(C, "bad", {"email": "bad@x.com", "notifications_enabled": "maybe"})
    result = run(cfg)
    assert passes("a")[-1] == "partial" and result.exit_code == 1
    assert [i.member for i in result.plan.entities[0].issues] == ["a"]
    assert mark(cfg) == before  # the next pass lists the record again
    ds("a").edit(C, "bad", notifications_enabled="yes")
    fixed = run(cfg)
    assert ops(fixed) == [("create", "b")] and mark(cfg) != before


def test_a_link_with_an_unknown_hash_is_fetched_not_assumed_unchanged(cfg: Config) -> None:
    seed(2)
    run(cfg)
    with api.open_store(cfg) as store:
        [state] = [s for s in store.iter_records("p", C) if s.links["a"].native_id == "a1"]
        link = state.links["a"]
        with store.transaction() as tx:  # as crash recovery links a record it found
            tx.put_link(
                "p", C, state.key, "a", native_id="a1", native_hash=None, last_seen=link.last_seen
            )
    result = run(cfg)
    assert passes("a")[-1] == "partial" and gets("a") == ["a1"]
    assert result.plan.actions == [] and result.exit_code == 0


def test_three_members_two_of_them_incremental(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": INCREMENTAL, "b": INCREMENTAL, "c": {}})
    seed(4)
    run(cfg)
    assert run(cfg).plan.actions == []  # b's first pass found it empty: no mark yet
    assert len(ds("b").table(C)) == 4 and len(ds("c").table(C)) == 4
    c_id = next(k for k, r in ds("c").table(C).items() if r["email"] == "n3@x.com")
    ds("c").edit(C, c_id, company="From C")
    result = run(cfg)
    assert passes("a")[-1] == passes("b")[-1] == "partial"
    assert ops(result) == [("update", "a"), ("update", "b")]
    assert ds("a").table(C)["a3"]["company"] == "From C"
    assert ds("a").table(C)["a3"]["crm_only"] == "kept 3"
    assert [r["company"] for r in ds("b").table(C).values() if r["email"] == "n3@x.com"] == [
        "From C"
    ]
    assert run(cfg).plan.actions == []


def test_a_reference_shown_by_an_outdated_email_is_rewritten_on_an_unseen_record(
    tmp_path: Path,
) -> None:
    """Member a shows an invoice's customer by e-mail (``ref_by``). When the customer's e-mail
    changes, the invoice on a must be rewritten although a partial pass did not list it:
    whether it shows the old e-mail can only be told from the record, so it is fetched."""
    (tmp_path / "a-invoices.toml").write_text(
        '[fields]\ninvoice_number = "invoice_number"\n'
        'customer = { native = "customer_email", ref_by = "email" }\n'
        'amount = "amount"\nstatus = "status"\n',
        encoding="utf-8",
    )
    cfg = memory_config(
        tmp_path,
        {"a": {**INCREMENTAL, "entities": [C, "invoices"]}, "b": {"entities": [C, "invoices"]}},
        entities=(C, "invoices"),
    )
    text = cfg.path.read_text() + '\n[pipelines.mappings.a]\ninvoices = "a-invoices.toml"\n'
    cfg.path.write_text(text)
    cfg = load_config(cfg.path)
    ds("b").put(C, "c1", {"first_name": "Ann", "email": "ann@x.com"})
    ds("b").put(
        "invoices",
        "i1",
        {"invoice_number": "1001", "customer": "c1", "amount": 1000, "status": "open"},
    )
    run(cfg)
    run(cfg)  # a's first passes were empty: now both entities have a mark
    [invoice] = ds("a").table("invoices").values()
    assert invoice["customer_email"] == "ann@x.com"
    assert run(cfg).plan.actions == [] and passes("a")[-2:] == ["partial", "partial"]
    ds("b").edit(C, "c1", email="ann@new.example")
    before = len(gets("a"))
    result = run(cfg)
    assert passes("a")[-2:] == ["partial", "partial"]
    [invoice] = ds("a").table("invoices").values()
    assert invoice["customer_email"] == "ann@new.example"
    assert ("update", "a") in ops(result) and len(gets("a")) - before == 2  # Ann, invoice
    assert run(cfg).plan.actions == []
