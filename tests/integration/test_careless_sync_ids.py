"""Issue 10, case 1, through the real ``syncengine`` command against the loopback HCP sandbox:
a bookkeeper blanks or mistypes a ``Sync ID`` cell in the customers sheet.

The row then reads as a new record, and the record it was as vanished from the sheet. They are
one record: the row takes its hub record back (the right Sync ID is written into it), and
nothing is deleted in HCP or created again there. When the pairing is ambiguous (the row was
copied too), it is reported and the vanished record's delete is held for that run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.csvfiles import read_csv_table, write_csv
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def _setup(tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli) -> tuple[Sandbox, Path]:
    box = sandbox_factory(seed=8)
    config = hcp_books_config(tmp_path / "proj", box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    return box, config


def _sheet(config: Path) -> Path:
    return config.parent / "books" / "customers.csv"


def _edit_rows(config: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    table = read_csv_table(_sheet(config))
    write_csv(_sheet(config), edit(table.rows), table.header, newline=table.newline)


def _blank_sync_id(config: Path, index: int) -> None:
    def blank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[index]["Sync ID"] = ""
        return rows

    _edit_rows(config, blank)


def _planned(cli: Cli, config: Path) -> dict[str, Any]:
    done = cli("sync", "--config", config, "--dry-run", "--json")
    assert done.returncode in (0, 1), str(done)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _hcp_ids(box: Sandbox) -> list[str]:
    return sorted(c["id"] for c in box.customers())


@pytest.mark.parametrize("typed", ["", "  ", "0a1b2c-typo"], ids=["blank", "spaces", "mistyped"])
def test_a_row_whose_sync_id_was_blanked_or_mistyped_takes_its_record_back(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli, typed: str
) -> None:
    box, config = _setup(tmp_path, sandbox_factory, cli)
    before_ids = _hcp_ids(box)
    rows = read_csv_table(_sheet(config)).rows
    target = rows[3]
    sync_id, email = target["Sync ID"], target["Email"]
    assert sync_id and email

    def retype(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            if row["Sync ID"] == sync_id:
                row["Sync ID"] = typed
                row["Phone"] = row.get("Phone", "")  # left as it was
        return rows

    _edit_rows(config, retype)
    box.clear_requests()

    plan = _planned(cli, config)["entities"]["customers"]
    assert plan["hcp"]["delete"] == 0 and plan["hcp"]["create"] == 0, plan
    assert plan["books"]["create"] == 0 and plan["books"]["delete"] == 0, plan
    assert plan["books"]["link"] == 1, plan  # only the Sync ID is written back

    done = cli("sync", "--config", config)
    assert_clean_exit(done, 0)
    assert box.writes() == []  # HCP was not touched: no delete, no create
    assert _hcp_ids(box) == before_ids
    after = read_csv_table(_sheet(config)).rows
    assert [r["Sync ID"] for r in after if r["Email"] == email] == [sync_id]
    assert len(after) == len(rows)
    again = _planned(cli, config)["entities"]["customers"]
    assert again["hcp"] == {"create": 0, "update": 0, "delete": 0, "link": 0}
    assert again["books"] == {"create": 0, "update": 0, "delete": 0, "link": 0}


def test_a_blanked_row_that_was_also_copied_is_reported_and_deletes_nothing(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box, config = _setup(tmp_path, sandbox_factory, cli)
    before_ids = _hcp_ids(box)
    rows = read_csv_table(_sheet(config)).rows
    sync_id, email = rows[2]["Sync ID"], rows[2]["Email"]

    def blank_and_copy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            if row["Sync ID"] == sync_id:
                row = {**row, "Sync ID": ""}
                out.append(dict(row))
            out.append(row)
        return out

    _edit_rows(config, blank_and_copy)
    box.clear_requests()
    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    assert "vanished" in done.output and "customers.csv" in done.output, str(done)
    assert box.writes() == []  # the held delete did not reach HCP; nothing was created
    assert _hcp_ids(box) == before_ids

    # the bookkeeper removes the copy and gives the row its Sync ID back: all agree again
    def fix(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out, seen = [], False
        for row in rows:
            if row["Email"] == email and not row["Sync ID"]:
                if seen:
                    continue
                seen = True
                row["Sync ID"] = sync_id
            out.append(row)
        return out

    _edit_rows(config, fix)
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert box.writes() == []
    again = _planned(cli, config)["entities"]["customers"]
    assert again["hcp"] == {"create": 0, "update": 0, "delete": 0, "link": 0}
    assert again["books"] == {"create": 0, "update": 0, "delete": 0, "link": 0}


def test_a_blanked_sync_id_beside_a_row_in_error_still_takes_its_record_back(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    """Another row of the sheet is in error (two rows share a Sync ID), so linked records
    missing from the sheet are not taken for deleted; the row whose Sync ID was blanked is
    still the record it was: re-linked, not a 'possible duplicate', nothing deleted or
    created in HCP. Only the rows in error are reported."""
    box, config = _setup(tmp_path, sandbox_factory, cli)
    before_ids = _hcp_ids(box)
    rows = read_csv_table(_sheet(config)).rows
    sync_id, email = rows[1]["Sync ID"], rows[1]["Email"]
    pasted = rows[4]["Sync ID"]

    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            if row["Sync ID"] == sync_id:
                row["Sync ID"] = ""
        rows[6]["Sync ID"] = pasted  # pasted over another row's Sync ID
        return rows

    _edit_rows(config, edit)
    box.clear_requests()
    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    assert "share Sync ID" in done.output, str(done)
    assert "possible duplicate" not in done.output and "vanished" not in done.output, str(done)
    assert box.writes() == []
    assert _hcp_ids(box) == before_ids
    after = read_csv_table(_sheet(config)).rows
    assert [r["Sync ID"] for r in after if r["Email"] == email] == [sync_id]


def _hcp_people(box: Sandbox) -> dict[str, tuple[str, str, str]]:
    return {
        c["id"]: (c.get("first_name") or "", c.get("last_name") or "", c.get("email") or "")
        for c in box.customers()
    }


def _assert_held_as_sorted(
    cli: Cli, config: Path, box: Sandbox, people: dict[str, tuple[str, str, str]]
) -> None:
    """The next sync holds the rows as sorted without their Sync ID column and writes
    nothing to HCP, whose customers stay as they were."""
    box.clear_requests()
    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    assert "were the rows sorted without their Sync ID column" in done.output, str(done)
    assert box.writes() == []
    assert _hcp_people(box) == people


def test_rows_sorted_without_their_sync_id_column_write_nobody_over_anybody(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    """The classic spreadsheet mistake: the rows are sorted by last name, but the Sync ID
    column is left as it was, so each Sync ID now stands beside another customer. Every
    such row is held and reported; no HCP customer takes another's name or e-mail."""
    box, config = _setup(tmp_path, sandbox_factory, cli)
    people = _hcp_people(box)
    table = read_csv_table(_sheet(config))
    ids = [r["Sync ID"] for r in table.rows]
    ordered = sorted(table.rows, key=lambda r: (r["Last Name"], r["First Name"], r["Email"]))
    assert [r["Sync ID"] for r in ordered] != ids, "the sort must move rows"
    for row, sync_id in zip(ordered, ids, strict=True):
        row["Sync ID"] = sync_id  # the Sync ID column did not move with the rows
    write_csv(_sheet(config), ordered, table.header, newline=table.newline)
    _assert_held_as_sorted(cli, config, box, people)


def test_blanking_the_wrong_one_of_two_rows_sharing_a_sync_id_overwrites_nobody(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    """A Sync ID pasted onto another row; the bookkeeper follows 'give one of them a new
    (blank) Sync ID' but blanks the row that owned it. The row left with that Sync ID holds
    another customer: it is held, with that customer (whose own row is gone), and reported;
    nobody is overwritten or deleted in HCP."""
    box, config = _setup(tmp_path, sandbox_factory, cli)
    people = _hcp_people(box)
    rows = read_csv_table(_sheet(config)).rows
    owner_id = rows[4]["Sync ID"]

    def paste(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[5]["Sync ID"] = owner_id
        return rows

    _edit_rows(config, paste)
    assert_clean_exit(cli("sync", "--config", config), 1)  # 'share Sync ID'

    _blank_sync_id(config, 4)  # the owner's, not the pasted one
    box.clear_requests()
    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    assert "were the rows sorted without their Sync ID column, or a Sync ID pasted" in (
        done.output
    ), str(done)
    assert box.writes() == []
    assert _hcp_people(box) == people


def test_a_copy_made_into_another_customer_then_the_original_blanked_overwrites_nobody(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    """A row copied to the end and changed into a new customer (name, e-mail, mobile); told
    that two rows share a Sync ID, the bookkeeper blanks the original's instead of the
    copy's. The copy then holds the customer's Sync ID with someone else's identity, and the
    original, without one, holds the customer: both are held and reported. Before, the sync
    renamed the real customer in HCP (her invoices with her) and created her again as a new
    customer the run after (a cold trial found it)."""
    box, config = _setup(tmp_path, sandbox_factory, cli)
    people = _hcp_people(box)
    table = read_csv_table(_sheet(config))
    original = dict(table.rows[4])
    copy = {
        **original,
        "First Name": "Tom",
        "Last Name": "Baker",
        "Email": "tom.baker@example.com",
        "Mobile": "(555) 222-3333",
    }
    write_csv(_sheet(config), [*table.rows, copy], table.header, newline=table.newline)
    assert_clean_exit(cli("sync", "--config", config), 1)  # 'share Sync ID'

    _blank_sync_id(config, 4)  # the original's, not the copy's
    box.clear_requests()
    for _run in range(2):
        done = cli("sync", "--config", config)
        assert_clean_exit(done, 1)
        assert "was the Sync ID blanked on the original row instead of on the copy?" in (
            done.output
        ), str(done)
        assert box.writes() == []
        assert _hcp_people(box) == people
    rows = read_csv_table(_sheet(config)).rows
    assert sum(r["Email"] == original["Email"] for r in rows) == 1
    assert rows[-1]["Sync ID"] == original["Sync ID"]  # nothing rewritten in the sheet

    def put_it_back(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[4]["Sync ID"], rows[-1]["Sync ID"] = original["Sync ID"], ""
        return rows

    _edit_rows(config, put_it_back)  # the fix the message gives
    assert_clean_exit(cli("sync", "--config", config), 0)
    after = _hcp_people(box)
    assert (
        after[next(k for k, v in people.items() if v[2] == original["Email"])]
        == people[next(k for k, v in people.items() if v[2] == original["Email"])]
    )
    assert ("Tom", "Baker", "tom.baker@example.com") in after.values()
    assert len(after) == len(people) + 1


def test_rows_sorted_with_a_new_row_among_them_write_nobody_over_anybody(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    """A new customer typed at the end, then the data columns sorted without the Sync ID
    column: the first row takes the new customer's values, the second the first's, the new
    row the second's. Every row in that chain is held and reported; nobody is renamed in HCP
    and nobody is created (a cold reviewer found the first row's customer renamed)."""
    box, config = _setup(tmp_path, sandbox_factory, cli)
    people = _hcp_people(box)
    table = read_csv_table(_sheet(config))
    rows = [dict(r) for r in table.rows]
    new = dict.fromkeys(table.header, "")
    new.update({"First Name": "Nina", "Last Name": "Newman", "Email": "nina@example.com"})
    rows.append(new)
    first, second, typed = dict(rows[0]), dict(rows[1]), dict(rows[-1])
    for column in (c for c in table.header if c != "Sync ID"):
        rows[0][column], rows[1][column], rows[-1][column] = (
            typed[column],
            first[column],
            second[column],
        )
    write_csv(_sheet(config), rows, table.header, newline=table.newline)
    _assert_held_as_sorted(cli, config, box, people)


def test_a_row_deleted_and_typed_again_with_some_cells_clears_nothing(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    # The bookkeeper deletes a customer's row and types it again at the end, without its
    # Sync ID and with only some of its cells, one of them corrected. It is the same
    # customer: the corrected company is an edit, the cells left blank are not clears, and
    # they are filled back in from HCP.
    box, config = _setup(tmp_path, sandbox_factory, cli)
    rows = read_csv_table(_sheet(config)).rows
    target = next(r for r in rows if r["Email"] and r["Company"] and r["Street"])
    kept = ("First Name", "Last Name", "Email")
    before = box.customer_by_email(target["Email"])

    def retype(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = [r for r in rows if r["Sync ID"] != target["Sync ID"]]
        typed = {name: "" for name in target}
        typed.update({name: target[name] for name in kept}, Company="Retyped Co")
        return [*rows, typed]

    _edit_rows(config, retype)
    box.clear_requests()
    done = cli("sync", "--config", config)
    assert_clean_exit(done, 0)

    after = box.customer_by_email(target["Email"])
    assert after["id"] == before["id"]  # the same customer, neither deleted nor created
    assert after["company"] == "Retyped Co"
    assert after["addresses"] == before["addresses"]
    assert after["mobile_number"] == before["mobile_number"]
    assert after["tags"] == before["tags"]
    [row] = [r for r in read_csv_table(_sheet(config)).rows if r["Email"] == target["Email"]]
    assert row["Sync ID"] == target["Sync ID"]
    assert {n: row[n] for n in target if n != "Company"} == {
        n: target[n] for n in target if n != "Company"
    }
    assert box.writes() and {w["method"] for w in box.writes()} <= {"PUT", "PATCH"}
