"""The core pipeline end to end over real memory members and a real SQLite state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from syncengine import api
from syncengine.config import Config
from syncengine.plan import Create, Delete, Update
from syncengine.render import render_result
from tests.helpers import ds, memory_config, ops, run

C = "customers"


def rows(name: str) -> list[dict[str, Any]]:
    return sorted(
        ({k: v for k, v in r.items() if k != "updated_at"} for r in ds(name).table(C).values()),
        key=lambda r: str(r.get("email")),
    )


@pytest.fixture
def two(tmp_path: Path) -> Config:
    return memory_config(tmp_path, {"a": {}, "b": {"assigns_ids": True}})


def test_initial_sync_links_by_email_and_creates_the_rest(two: Config) -> None:
    ds("a").put(
        C, "a1", {"first_name": "Ann", "email": "ann@x.com", "mobile_number": "+15552013344"}
    )
    ds("a").put(C, "a2", {"first_name": "Bob", "email": "bob@x.com"})
    ds("b").put(C, "b1", {"first_name": "Ann", "email": " ANN@X.com", "company": "Acme"})
    first = run(two)
    assert ops(first) == [("create", "b"), ("update", "a"), ("update", "b")]
    assert len(ds("a").table(C)) == 2 and len(ds("b").table(C)) == 2
    ann_a = ds("a").table(C)["a1"]
    assert ann_a["company"] == "Acme"  # filled in from b
    ann_b = ds("b").table(C)["b1"]
    assert ann_b["mobile_number"] == "+15552013344"
    second = run(two)
    assert second.plan.actions == []
    assert second.exit_code == 0


def test_edit_propagates_once_and_echo_is_not_a_change(two: Config) -> None:
    ds("a").put(
        C, "a1", {"first_name": "Ann", "email": "ann@x.com", "mobile_number": "(555) 201-3344"}
    )
    run(two)
    # b holds the E.164 form, a its own national format: same canonical value, no ping-pong
    assert (
        ds("b").table(C)
        and next(iter(ds("b").table(C).values()))["mobile_number"] == "+15552013344"
    )
    assert run(two).plan.actions == []
    ds("a").edit(C, "a1", first_name="Anne")
    result = run(two)
    assert ops(result) == [("update", "b")]
    change = result.plan.actions[0]
    assert isinstance(change, Update) and change.changes == {"first_name": ("Ann", "Anne")}
    assert run(two).plan.actions == []


def test_conflict_settled_by_member_rule(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}}, conflicts={"default": ["b"]})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(cfg)
    b_id = next(iter(ds("b").table(C)))
    ds("a").edit(C, "a1", first_name="Anna")
    ds("b").edit(C, b_id, first_name="Annie")
    result = run(cfg)
    [conflict] = result.plan.entities[0].conflicts
    assert conflict.winner == "b" and conflict.field == "first_name"
    assert ds("a").table(C)["a1"]["first_name"] == "Annie"
    assert run(cfg).plan.actions == []


def test_newest_rule_uses_update_times_then_falls_back(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}}, conflicts={"default": ["newest", "a"]})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(cfg)
    b_id = next(iter(ds("b").table(C)))
    ds("b").edit(C, b_id, first_name="Older")
    ds("a").edit(C, "a1", first_name="Newer")  # the memory clock only moves forward
    result = run(cfg)
    [conflict] = result.plan.entities[0].conflicts
    assert (conflict.winner, conflict.rule) == ("a", "newest")
    assert ds("b").table(C)[b_id]["first_name"] == "Newer"


def test_manual_conflict_is_parked_then_resolved(tmp_path: Path) -> None:
    cfg = memory_config(
        tmp_path, {"a": {}, "b": {}}, conflicts={"default": ["a"], "customers.company": ["manual"]}
    )
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com", "company": "A"})
    run(cfg)
    b_id = next(iter(ds("b").table(C)))
    ds("a").edit(C, "a1", company="From A", first_name="Anne")
    ds("b").edit(C, b_id, company="From B")
    result = run(cfg)
    assert result.exit_code == 1 and result.open_conflicts == 1
    assert ds("b").table(C)[b_id]["first_name"] == "Anne"  # other fields still flow
    assert ds("b").table(C)[b_id]["company"] == "From B"  # the parked one does not
    again = run(cfg)
    assert again.plan.actions == [] and again.exit_code == 1
    [row] = api.list_conflicts(cfg)
    assert row.values == {"a": "From A", "b": "From B"}
    api.resolve_conflict(cfg, row.id, "b")
    after = run(cfg)
    assert ops(after) == [("update", "a")]
    assert ds("a").table(C)["a1"]["company"] == "From B"
    assert after.exit_code == 0 and api.list_conflicts(cfg) == []
    assert run(cfg).plan.actions == []


def _parked_company(
    tmp_path: Path, members: tuple[str, ...] = ("a", "b")
) -> tuple[Config, str, str]:
    """Ann on every member, her company changed on a and b: one conflict parked
    (``manual``). Returns the config and Ann's ids on b and on the third member ("" when
    there are two)."""
    cfg = memory_config(
        tmp_path,
        {member: {} for member in members},
        conflicts={"default": ["a"], "customers.company": ["manual"]},
    )
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com", "company": "A"})
    run(cfg)
    b_id = next(iter(ds("b").table(C)))
    c_id = next(iter(ds(members[2]).table(C))) if len(members) > 2 else ""
    ds("a").edit(C, "a1", company="From A")
    ds("b").edit(C, b_id, company="From B")
    assert run(cfg).open_conflicts == 1
    return cfg, b_id, c_id


def test_a_parked_conflict_shows_a_value_typed_over_while_it_waits(tmp_path: Path) -> None:
    """The bookkeeper corrects the cell while its conflict waits: the conflict shows the
    correction (once), and taking b's value takes it; before, the conflict kept showing
    'From B', and taking it wrote 'From B' over the correction everywhere."""
    cfg, b_id, _c_id = _parked_company(tmp_path)
    ds("b").edit(C, b_id, company="From B, corrected")
    result = run(cfg)
    assert result.plan.actions == [] and result.exit_code == 1
    [conflict] = [c for ep in result.plan.entities for c in ep.conflicts]
    assert conflict.values == {"a": "From A", "b": "From B, corrected"}
    assert conflict.winner is None and conflict.base_value == "A"
    again = run(cfg)
    assert (
        not any(ep.conflicts for ep in again.plan.entities) and again.open_conflicts == 1
    )  # told once
    [row] = api.list_conflicts(cfg)
    assert row.values == {"a": "From A", "b": "From B, corrected"}
    api.resolve_conflict(cfg, row.id, "b")
    assert ops(run(cfg)) == [("update", "a")]
    assert ds("a").table(C)["a1"]["company"] == "From B, corrected"
    assert ds("b").table(C)[b_id]["company"] == "From B, corrected"
    assert run(cfg).plan.actions == [] and api.list_conflicts(cfg) == []


def test_a_parked_conflict_resolved_for_the_other_member_after_a_correction(
    tmp_path: Path,
) -> None:
    """As above, but a person takes a's value: b's correction is not taken for a new edit
    of b's once the conflict is settled, and b gets a's value."""
    cfg, b_id, _c_id = _parked_company(tmp_path)
    ds("b").edit(C, b_id, company="From B, corrected")
    run(cfg)
    ds("a").edit(C, "a1", company="From A, corrected")
    assert [c.values for ep in run(cfg).plan.entities for c in ep.conflicts] == [
        {"a": "From A, corrected", "b": "From B, corrected"}
    ]
    [row] = api.list_conflicts(cfg)
    api.resolve_conflict(cfg, row.id, "a")
    assert ops(run(cfg)) == [("update", "b")]
    assert ds("b").table(C)[b_id]["company"] == "From A, corrected"
    assert ds("a").table(C)["a1"]["company"] == "From A, corrected"


def test_a_parked_conflict_closes_once_the_members_agree(tmp_path: Path) -> None:
    """The bookkeeper types a's value over b's while the conflict waits: nothing is left to
    decide. The conflict closes (a dry run counts it closed already), the run exits 0, and
    the field syncs again."""
    cfg, b_id, _c_id = _parked_company(tmp_path)
    ds("b").edit(C, b_id, company="From A")
    dry = run(cfg, dry_run=True)
    assert dry.open_conflicts == 0 and len(api.list_conflicts(cfg)) == 1
    result = run(cfg)
    assert result.plan.actions == [] and result.exit_code == 0
    [closed] = [c for ep in result.plan.entities for c in ep.conflicts]
    assert (closed.rule, closed.values) == ("the members agree now", {"a": "From A", "b": "From A"})
    assert result.open_conflicts == 0 and api.list_conflicts(cfg) == []
    ds("a").edit(C, "a1", company="Later")
    assert ops(run(cfg)) == [("update", "b")]
    assert ds("b").table(C)[b_id]["company"] == "Later"


def test_the_plan_says_a_conflict_is_told_again_or_closed(tmp_path: Path) -> None:
    cfg, b_id, _c_id = _parked_company(tmp_path)

    def shown() -> str:
        console = Console(width=200, record=True)
        render_result(console, run(cfg), verbose=True)
        return console.export_text()

    ds("b").edit(C, b_id, company="From B, corrected")
    assert (
        "! conflict on company: a='From A', b='From B, corrected' → parked for a person, "
        "changed again while open (syncengine conflicts list)"
    ) in shown()
    ds("b").edit(C, b_id, company="From A")
    assert "! conflict on company closed: a='From A', b='From A' agree now" in shown()


def test_a_conflict_of_two_of_three_members_closes_once_those_two_agree(tmp_path: Path) -> None:
    """c never changed the field: the conflict is a's and b's, and closes once b types a's
    value; c gets it (a cold review found it left open for good, c's old value counted)."""
    cfg, b_id, _c_id = _parked_company(tmp_path, ("a", "b", "c"))
    ds("b").edit(C, b_id, company="From A")
    result = run(cfg)
    assert result.exit_code == 0 and result.open_conflicts == 0
    assert ops(result) == [("update", "c")]
    assert [r["company"] for r in ds("c").table(C).values()] == ["From A"]


def test_a_third_member_changing_the_field_too_keeps_the_conflict_open(tmp_path: Path) -> None:
    """b types a's value while c changes the field too: not agreed; the conflict is told
    again with c's value (a cold review found c's edit overwritten)."""
    cfg, b_id, c_id = _parked_company(tmp_path, ("a", "b", "c"))
    ds("b").edit(C, b_id, company="From A")
    ds("c").edit(C, c_id, company="From C")
    result = run(cfg)
    assert result.exit_code == 1 and result.open_conflicts == 1 and ops(result) == []
    [row] = api.list_conflicts(cfg)
    assert row.values == {"a": "From A", "b": "From A", "c": "From C"}
    assert ds("c").table(C)[c_id]["company"] == "From C"


def test_a_blank_where_a_value_is_unseen_does_not_tell_a_conflict_again(tmp_path: Path) -> None:
    """b's link marks company UNSEEN (its sheet lacked the column while the row was in
    error; the column came back blank on it): the blank is no edit of b's, and the open
    conflict keeps b's value (a cold review found it told again with b 'clearing' it, and
    taking b then cleared the company everywhere)."""
    cfg, b_id, _c_id = _parked_company(tmp_path)
    store = api.open_store(cfg)
    try:
        [rs] = store.iter_records("p", C)
        link = rs.links["b"]
        with store.transaction() as tx:
            seen = {**(link.last_seen or {}), "_unseen": ["company"]}
            tx.put_link(
                "p",
                C,
                rs.key,
                "b",
                native_id=link.native_id,
                native_hash=link.native_hash,
                last_seen=seen,
            )
    finally:
        store.close()
    ds("b").edit(C, b_id, company=None, first_name="Annie")
    result = run(cfg)
    assert not any(ep.conflicts for ep in result.plan.entities)
    [row] = api.list_conflicts(cfg)
    assert row.values == {"a": "From A", "b": "From B"}


def test_a_dry_run_counts_a_conflict_told_again_once(tmp_path: Path) -> None:
    cfg, b_id, _c_id = _parked_company(tmp_path)
    ds("b").edit(C, b_id, company="From B, corrected")
    assert run(cfg, dry_run=True).open_conflicts == 1


def test_delete_propagates(two: Config) -> None:
    for i in range(10):
        ds("a").put(C, f"a{i}", {"first_name": f"N{i}", "email": f"n{i}@x.com"})
    run(two)
    ds("a").remove(C, "a3")
    result = run(two)
    assert ops(result) == [("delete", "b")]
    assert len(ds("b").table(C)) == 9
    assert run(two).plan.actions == []


def test_delete_modify_conflict_keeps_the_data(two: Config) -> None:
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    ds("a").put(C, "a2", {"first_name": "Bob", "email": "bob@x.com"})
    run(two)
    b_id = next(k for k, r in ds("b").table(C).items() if r["email"] == "ann@x.com")
    ds("a").remove(C, "a1")
    ds("b").edit(C, b_id, first_name="Still here")
    result = run(two)
    assert [type(a) for a in result.plan.actions] == [Create]
    assert sorted(r["first_name"] for r in ds("a").table(C).values()) == ["Bob", "Still here"]
    assert run(two).plan.actions == []


def test_deletes_not_propagated_leave_a_tombstone(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}}, deletes={"propagate": False})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(cfg)
    ds("a").remove(C, "a1")
    assert run(cfg).plan.actions == []
    assert len(ds("b").table(C)) == 1 and not ds("a").table(C)
    assert run(cfg).plan.actions == []  # not re-created on a either


def test_mass_delete_guard_stops_and_writes_nothing(two: Config) -> None:
    for i in range(20):
        ds("a").put(C, f"a{i}", {"first_name": f"N{i}", "email": f"n{i}@x.com"})
    run(two)
    for i in range(10):
        ds("a").remove(C, f"a{i}")
    result = run(two)
    assert result.exit_code == 3 and result.guard and "max_fraction" in result.guard
    assert len(ds("b").table(C)) == 20
    allowed = run(two, allow_mass_delete=True)
    assert allowed.exit_code == 0 and len(ds("b").table(C)) == 10


def test_member_that_suddenly_returns_nothing_is_refused(two: Config) -> None:
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(two)
    ds("b").table(C).clear()
    result = run(two)
    assert result.exit_code == 3 and "returned no customers" in (result.guard or "")
    assert len(ds("a").table(C)) == 1


def test_failed_write_is_retried_next_run_without_duplicates(tmp_path: Path) -> None:
    failing = {"on": True}

    def fail(op: str, entity: str, ref: str) -> bool:
        return failing["on"] and op == "update"

    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(cfg)
    ds("a").edit(C, "a1", first_name="Anne")
    result = api.sync(cfg, connector_extra={"b": {"fail_write": fail}})[0]
    assert result.exit_code == 1 and len(result.failures) == 1
    [b_row] = ds("b").table(C).values()
    assert b_row["first_name"] == "Ann"
    failing["on"] = False
    retry = run(cfg)
    assert ops(retry) == [("update", "b")]
    assert [r["first_name"] for r in ds("b").table(C).values()] == ["Anne"]
    assert run(cfg).plan.actions == []


def test_failed_create_is_retried(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    result = api.sync(cfg, connector_extra={"b": {"fail_write": lambda *a: True}})[0]
    assert result.failures and not ds("b").table(C)
    assert ops(run(cfg)) == [("create", "b")]
    assert len(ds("b").table(C)) == 1
    assert run(cfg).plan.actions == []


def test_read_only_member_is_never_written(tmp_path: Path) -> None:
    cfg = memory_config(
        tmp_path, {"a": {}, "ro": {"create": False, "update": False, "delete": False}}
    )
    ds("ro").put(C, "r1", {"first_name": "Ro", "email": "ro@x.com"})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    before = rows("ro")
    run(cfg)
    assert rows("ro") == before
    assert {r["email"] for r in rows("a")} == {"ann@x.com", "ro@x.com"}
    assert run(cfg).plan.actions == []


def test_dry_run_writes_nothing_anywhere(two: Config, tmp_path: Path) -> None:
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    result = run(two, dry_run=True)
    assert ops(result) == [("create", "b")]
    assert not ds("b").table(C)
    assert not (tmp_path / "state.db").exists()
    real = run(two)
    assert ops(real) == [("create", "b")]
    ds("a").edit(C, "a1", first_name="Anne")
    state_before = (tmp_path / "state.db").read_bytes()
    preview = run(two, dry_run=True)
    assert ops(preview) == [("update", "b")]
    assert (tmp_path / "state.db").read_bytes() == state_before


def test_ambiguous_match_is_reported_not_guessed(two: Config) -> None:
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "same@x.com"})
    ds("a").put(C, "a2", {"first_name": "Annie", "email": "same@x.com"})
    ds("b").put(C, "b1", {"first_name": "Who", "email": "same@x.com"})
    result = run(two)
    issues = result.plan.entities[0].issues
    assert [i.member for i in issues if "matches 2 records" in i.message] == ["b"]
    assert [i.location for i in issues if "held back" in i.message] == ["a customers a1"]
    # a's second record with that e-mail is a possible duplicate of its first
    assert [i.location for i in issues if "possible duplicate" in i.message] == ["a customers a2"]
    assert result.exit_code == 1
    assert result.plan.actions == []  # nothing guessed, nothing duplicated
    assert len(ds("b").table(C)) == 1 and len(ds("a").table(C)) == 2


def test_possible_duplicate_on_one_member_is_reported(two: Config) -> None:
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    run(two)
    ds("b").put(C, "b-new", {"first_name": "Ann again", "email": "ANN@x.com"})
    result = run(two)
    [issue] = result.plan.entities[0].issues
    assert "possible duplicate" in issue.message and issue.member == "b"
    assert result.plan.actions == [] and len(ds("a").table(C)) == 1


def test_three_members_change_anywhere_reaches_the_others(tmp_path: Path) -> None:
    cfg = memory_config(
        tmp_path,
        {"a": {}, "b": {}, "c": {"assigns_ids": True}},
        conflicts={"default": ["newest", "a"]},
    )
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    ds("b").put(C, "b1", {"first_name": "Bob", "email": "bob@x.com"})
    ds("c").put(C, "c1", {"first_name": "Cy", "email": "cy@x.com"})
    run(cfg)
    for name in "abc":
        assert {r["email"] for r in rows(name)} == {"ann@x.com", "bob@x.com", "cy@x.com"}
    c_ann = next(k for k, r in ds("c").table(C).items() if r["email"] == "ann@x.com")
    ds("c").edit(C, c_ann, company="Cy's edit")
    result = run(cfg)
    assert ops(result) == [("update", "a"), ("update", "b")]
    assert ds("a").table(C)["a1"]["company"] == "Cy's edit"
    ds("b").remove(C, "b1")
    result = run(cfg, allow_mass_delete=True)
    assert ops(result) == [("delete", "a"), ("delete", "c")]
    assert run(cfg).plan.actions == []


def test_interrupted_create_is_found_not_repeated(two: Config, tmp_path: Path) -> None:
    """A create whose response was lost: the journal's pending intent is settled by `find`."""
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})

    def crash_after_write(op: str, entity: str, ref: str) -> bool:
        if op == "create":
            ds("b").table(C)[ref] = {"first_name": "Ann", "email": "ann@x.com"}
            raise KeyboardInterrupt  # the process dies right after the member applied it
        return False

    with pytest.raises(KeyboardInterrupt):
        api.sync(two, connector_extra={"b": {"fail_write": crash_after_write}})
    assert len(ds("b").table(C)) == 1
    cfg_store = api.open_store(two)
    assert [i.op for i in cfg_store.pending_intents("p")] == ["create"]
    cfg_store.close()
    result = run(two)
    assert result.pending_recovery == 1
    assert result.plan.actions == []
    assert len(ds("b").table(C)) == 1
    assert run(two).plan.actions == []


def test_delete_actions_carry_ids(two: Config) -> None:
    for i in range(6):
        ds("a").put(C, f"a{i}", {"first_name": f"N{i}", "email": f"n{i}@x.com"})
    run(two)
    ds("b").remove(C, next(iter(ds("b").table(C))))
    result = run(two)
    [action] = result.plan.actions
    assert isinstance(action, Delete) and action.member == "a" and action.native_id.startswith("a")


def test_interrupted_create_without_match_keys_is_not_copied_twice(two: Config) -> None:
    """No email or phone to match by: recovery re-links the source with the found create."""
    ds("a").put(C, "a1", {"first_name": "Nameless", "company": "No Contact Ltd"})

    def crash_after_write(op: str, entity: str, ref: str) -> bool:
        if op == "create":
            ds("b").table(C)[ref] = {"first_name": "Nameless", "company": "No Contact Ltd"}
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        api.sync(two, connector_extra={"b": {"fail_write": crash_after_write}})
    result = run(two)
    assert result.pending_recovery == 1
    assert result.plan.actions == []
    assert len(ds("a").table(C)) == 1 and len(ds("b").table(C)) == 1
    assert run(two).plan.actions == []


def test_a_value_one_member_cannot_take_is_reported_and_the_rest_syncs(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "books": {"type": "spreadsheet", "path": "books"}})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com", "tags": ["x, y"]})
    ds("a").put(C, "a2", {"first_name": "Bob", "email": "bob@x.com", "tags": ["vip"]})
    result = run(cfg)
    [issue] = result.plan.entities[0].issues
    assert "x, y" in issue.message and result.exit_code == 1
    text = (tmp_path / "books" / "customers.csv").read_text()
    assert "bob@x.com" in text and "ann@x.com" not in text


def test_a_record_matched_by_phone_also_leads_others_by_its_email(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}, "c": {}})
    ds("a").put(C, "a1", {"mobile_number": "(555) 201-0001"})
    ds("b").put(C, "b1", {"email": "u0@x.com", "mobile_number": "+15552010001"})
    ds("c").put(C, "c1", {"email": "U0@x.com"})  # shares only the email, with b's record
    result = run(cfg)
    assert result.plan.entities[0].issues == []
    for name in "abc":
        assert len(ds(name).table(C)) == 1, name
    assert run(cfg).plan.actions == []
