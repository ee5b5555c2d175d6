"""A payment row the bookkeeper deletes, syncs, then types in again: one payment, not two.

Housecall Pro's API cannot delete a payment, so deleting its row in the books leaves it in
HCP (the sync says so: ``skipped on hcp: housecallpro cannot delete payments``). When the
bookkeeper then types the row in again, without its Sync ID, it is that payment: the row takes
its old Sync ID back and the skipped delete is cleared. Before, the row became a second record
of the same money, and when HCP next changed the first one (a refund), it came back beside it:
two rows in the books for one payment, and the books $157 over HCP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.books import (
    BookRows,
    Hcp,
    assert_books_match_hcp,
    books_config,
    read_csv_rows,
    write_csv_rows,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 20


def synced_with_a_row_deleted(
    tmp_path: Path, box: Sandbox, cli: Cli
) -> tuple[Path, Path, BookRows, dict[str, Any]]:
    """The books after a first sync, less the row of a succeeded payment never refunded:
    (the books' folder, the config, the sheet as synced, the row deleted)."""
    folder = tmp_path / "work"
    books = folder / "books"
    config = books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    sheet = read_csv_rows(books / "payments.csv")
    row = next(
        r for r in sheet.rows if r["Status"] == "succeeded" and r["Refunded"] in ("", "0.00")
    )
    kept = [r for r in sheet.rows if r["Sync ID"] != row["Sync ID"]]
    write_csv_rows(books / "payments.csv", sheet.header, kept)
    return books, config, sheet, row


def test_a_payment_row_deleted_then_typed_again_takes_its_payment_back(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    books, config, sheet, row = synced_with_a_row_deleted(tmp_path, box, cli)
    sync_id = row["Sync ID"]
    deleted = cli("sync", "--config", config)
    assert_clean_exit(deleted, 0)
    assert "payments: 1 write skipped" in deleted.stdout, deleted.stdout
    # a run with nothing to write does not say every member agrees: the books lack it
    quiet = cli("sync", "--config", config)
    assert_clean_exit(quiet, 0)
    assert "every member agrees but for 1 record skipped before" in quiet.stdout, quiet.stdout
    status = cli("status", "--config", config, "--json")
    assert any(
        "cannot delete payments" in s["reason"] for s in json.loads(status.stdout)[0]["skipped"]
    ), status.stdout

    # typed in again, as the bookkeeper reads it off the receipt: no Sync ID
    again = read_csv_rows(books / "payments.csv")
    write_csv_rows(books / "payments.csv", again.header, [*again.rows, {**row, "Sync ID": ""}])
    retyped = cli("sync", "--config", config)
    assert_clean_exit(retyped, 0)
    rows = read_csv_rows(books / "payments.csv").rows
    assert [r["Sync ID"] for r in rows].count(sync_id) == 1, "the row did not take its id back"
    assert len(rows) == len(sheet.rows), "a second row of one payment"
    status = cli("status", "--config", config, "--json")
    assert_clean_exit(status, 0)
    assert not [s for s in json.loads(status.stdout)[0]["skipped"] if s["entity"] == "payments"], (
        status.stdout
    )
    assert_clean_exit(cli("reconcile-report", "--config", config), 0)

    # HCP changes the payment (a partial refund): the books follow on the one row
    payment = next(
        p
        for invoice in hcp.invoices()
        for p in hcp.payments_of(invoice["id"])
        if p["amount"] == round(float(row["Amount"]) * 100)
        and invoice["invoice_number"] == row["Invoice #"]
    )
    hcp.refund(payment["id"], 1000)
    assert_clean_exit(cli("sync", "--config", config), 0)
    rows = read_csv_rows(books / "payments.csv").rows
    mine = [r for r in rows if r["Invoice #"] == row["Invoice #"] and r["Amount"] == row["Amount"]]
    assert len(mine) == 1, mine
    assert mine[0]["Sync ID"] == sync_id and mine[0]["Refunded"] == "10.00", mine
    assert_books_match_hcp(hcp.books(), books)
    assert_clean_exit(cli("reconcile-report", "--config", config), 0)
    hcp.close()


def test_a_new_payment_of_the_same_amount_on_another_day_is_new_money(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    # the bookkeeper deleted a payment row (HCP keeps it); weeks later the customer pays the
    # same amount on the same invoice again: that row is a payment of its own, never the
    # deleted one taken back (its Sync ID and day would overwrite the old payment's)
    books, config, _sheet, row = synced_with_a_row_deleted(
        tmp_path, sandbox_factory(seed=SEED), cli
    )
    assert_clean_exit(cli("sync", "--config", config), 0)

    again = read_csv_rows(books / "payments.csv")
    later = {**row, "Sync ID": "", "Date": "2026-11-30"}
    write_csv_rows(books / "payments.csv", again.header, [*again.rows, later])
    assert_clean_exit(cli("sync", "--config", config), 0)
    rows = read_csv_rows(books / "payments.csv").rows
    assert row["Sync ID"] not in [r["Sync ID"] for r in rows], "the new payment took the old id"
    (new,) = [r for r in rows if r["Date"] == "2026-11-30"]
    assert new["Sync ID"] and new["Amount"] == row["Amount"]
    status = json.loads(cli("status", "--config", config, "--json").stdout)[0]
    reasons = sorted(s["reason"] for s in status["skipped"] if s["entity"] == "payments")
    # both still wait on HCP: the deleted one it keeps, the new one it cannot take
    assert reasons == [
        "housecallpro cannot create payments",
        "housecallpro cannot delete payments; it keeps this record",
    ], status["skipped"]
