"""A payments sheet sorted without its Sync ID column, synced, then put back as it was.

The bookkeeper sorts the Payments rows by amount but leaves the Sync ID column where it was,
so every payment's id now sits beside another payment's values. The sync holds those rows
and asks whether the rows were sorted without their Sync ID column, as it does for customers
and invoices (before, it took them as edits HCP cannot take: 41 skipped writes, exit 0).
The bookkeeper puts the sheet back. The books' dates
are days in Chicago, HCP's are times: a row back as it was shows HCP's payment time as its
day, which is what the hub holds, not an edit of it. Before, each such row left a skipped
update of ``paid_at`` (HCP's time → that day's midnight) on record for good, and every run
said the members differed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.books import books_config, read_csv_rows, write_csv_rows
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit
from tests.integration.test_books_line_items import ENTITIES as LINE_ENTITIES
from tests.integration.test_books_line_items import SEED as LINES_SEED

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def test_a_sort_undone_leaves_no_skipped_write_behind(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=20)
    folder = tmp_path / "work"
    sheet = folder / "books" / "payments.csv"
    config = books_config(folder, box.port, timezone="America/Chicago")
    assert_clean_exit(cli("sync", "--config", config), 0)
    as_synced = sheet.read_bytes()

    table = read_csv_rows(sheet)
    ids = [r["Sync ID"] for r in table.rows]
    by_amount = sorted(table.rows, key=lambda r: float(r["Amount"] or 0))
    write_csv_rows(
        sheet, table.header, [{**r, "Sync ID": i} for r, i in zip(by_amount, ids, strict=True)]
    )
    sorted_run = cli("sync", "--config", config)
    # told, and held: no payment's values are written over another's anywhere
    assert_clean_exit(sorted_run, 1)
    flat = " ".join(sorted_run.stdout.split())
    assert "were the rows sorted without their Sync ID column" in flat, sorted_run.stdout
    assert "but it holds the invoice and amount of $" in flat
    assert "holds this record's invoice and amount, so this row's values may be" in flat

    sheet.write_bytes(as_synced)  # put back as it was
    assert_clean_exit(cli("sync", "--config", config), 0)
    status = json.loads(cli("status", "--config", config, "--json").stdout)[0]
    left = [s for s in status["skipped"] if s["entity"] == "payments"]
    assert left == [], json.dumps(left[:2], indent=1)
    last = cli("sync", "--config", config)
    assert_clean_exit(last, 0)
    assert "Nothing to do: every member agrees." in last.stdout, last.stdout
    assert_clean_exit(cli("reconcile-report", "--config", config), 0)


def given_another_rows_value(sheet: Path, column: str) -> None:
    """Give one row of an invoice that has two rows differing in ``column`` the other's value
    there, as a bookkeeper's correction (the rest of the sheet as it was)."""
    table = read_csv_rows(sheet)
    by_invoice: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(table.rows):
        by_invoice[row["Invoice #"]].append(i)
    first, second = next(
        (a, b)
        for a, b, *_ in (v for v in by_invoice.values() if len(v) >= 2)
        if table.rows[a][column] != table.rows[b][column]
    )
    rows = [dict(r) for r in table.rows]
    rows[first][column] = rows[second][column]
    write_csv_rows(sheet, table.header, rows)


def test_one_payment_corrected_to_another_s_amount_is_an_edit_not_a_sort(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    # installments: the bookkeeper corrects a payment's amount to equal the other payment of
    # its invoice. Only that row changed: an edit (HCP cannot take it: skipped), not rows
    # sorted without their Sync ID column (a cold review found it held as one)
    box = sandbox_factory(seed=20)
    folder = tmp_path / "work"
    sheet = folder / "books" / "payments.csv"
    config = books_config(folder, box.port, timezone="America/Chicago")
    assert_clean_exit(cli("sync", "--config", config), 0)
    given_another_rows_value(sheet, "Amount")
    run = cli("sync", "--config", config)
    assert_clean_exit(run, 0)
    assert "were the rows sorted" not in " ".join(run.stdout.split()), run.stdout
    assert "payments: 1 write skipped" in run.stdout, run.stdout


def test_a_line_renamed_as_its_invoice_s_other_line_is_an_edit_not_a_sort(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    # line items have no identity of their own to tell a sort by: a line renamed to its
    # invoice's other line's name ("Labour" fixed to "Labor") is synced as any edit
    box = sandbox_factory(seed=LINES_SEED)
    folder = tmp_path / "work"
    config = books_config(folder, box.port)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace(
            'entities = ["customers", "invoices", "payments"]', f"entities = {LINE_ENTITIES}"
        ),
        encoding="utf-8",
    )
    assert_clean_exit(cli("sync", "--config", config), 0)
    sheet = folder / "books" / "line_items.csv"
    given_another_rows_value(sheet, "Item")
    run = cli("sync", "--config", config)
    assert "were the rows sorted" not in " ".join(run.stdout.split()), run.stdout
    assert_clean_exit(run, 0)
