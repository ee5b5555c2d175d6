"""Bad input in the books: per-row errors naming the sheet and row, nothing else blocked,
nothing lost.

After a first sync, the bookkeeper mistypes four rows: a non-numeric amount, an unknown
invoice status, a due date in the wrong format, and adds a payment on an invoice number no
invoice has (and one whose date is in the wrong format). In the same run a customer is edited
in the sheet and payments are recorded in Housecall Pro, one of them on the invoice whose row
is broken. The sync exits 1 with one error per bad row, naming it (``invoices.csv line N`` /
``books.xlsx, sheet Invoices, row N``) and the fix; the customer edit reaches HCP and the
payments reach the books; the bad rows stay exactly as they were (the balance of the broken
invoice is not written over them). A dry run reports the same errors again. Once the cells are
fixed, the invoice catches up with HCP, the books reconcile and a further sync plans nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.integration.books import (
    Hcp,
    assert_books_match_hcp,
    assert_nothing_planned,
    books_config,
    read_books,
    read_csv_rows,
    write_csv_rows,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 30
BAD = {"Amount": "12,34x", "Status": "bogus", "Due Date": "13/45/2025"}
"""Invoice column -> the mistyped value."""
NEW_PAYMENTS = [  # rows the bookkeeper adds: (invoice number or None for a real one, date)
    ("9999", "2025-06-02"),
    (None, "06/02/2025"),
    ("", "2025-06-02"),  # a totals row: no invoice
]


class Books:
    """The same edits on a CSV folder or a workbook; rows addressed by their Sync ID."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.xlsx = path.suffix == ".xlsx"

    def where(self, entity: str, sync_id: str) -> str:
        """How the error names the row: ``invoices.csv line N`` or ``books.xlsx, sheet
        Invoices, row N`` (a header and no blank lines: line N is row N)."""
        sheet = read_books(self.path, entity)
        n = next(
            w
            for r, w in zip(sheet.rows, sheet.where, strict=True)
            if str(r["Sync ID"] or "") == sync_id
        )
        if self.xlsx:
            return f"books.xlsx, sheet {entity.capitalize()}, row {n}"
        return f"{entity}.csv line {n}"

    def new_row_where(self, entity: str, index_from_end: int) -> str:
        sheet = read_books(self.path, entity)
        n = sheet.where[len(sheet.rows) - index_from_end]
        if self.xlsx:
            return f"books.xlsx, sheet {entity.capitalize()}, row {n}"
        return f"{entity}.csv line {n}"

    def edit(
        self, entity: str, changes: dict[str, dict[str, Any]], added: list[dict[str, Any]] = ()
    ) -> None:  # type: ignore[assignment]
        """``changes``: Sync ID -> {column: value}; ``added``: new rows."""
        if not self.xlsx:
            csv_path = self.path / f"{entity}.csv"
            sheet = read_csv_rows(csv_path)
            for row in sheet.rows:
                row.update(changes.get(row["Sync ID"], {}))
            write_csv_rows(csv_path, sheet.header, [*sheet.rows, *added])
            return
        wb = openpyxl.load_workbook(self.path)
        ws = wb[entity.capitalize()]
        header = [c.value for c in ws[1]]
        for row in ws.iter_rows(min_row=2):
            for column, value in changes.get(str(row[0].value or ""), {}).items():
                row[header.index(column)].value = value
        for new in added:
            ws.append([new.get(str(h)) or None for h in header])
        wb.save(self.path)

    def snapshot(self, entity: str, sync_ids: set[str]) -> dict[str, dict[str, Any]]:
        return {
            str(r["Sync ID"]): r
            for r in read_books(self.path, entity).rows
            if str(r["Sync ID"] or "") in sync_ids
        }

    def unlinked(self, entity: str) -> list[dict[str, Any]]:
        return [r for r in read_books(self.path, entity).filled() if not r["Sync ID"]]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error ")]


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_bad_rows_are_reported_by_row_and_block_nothing_else(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    path = folder / ("books.xlsx" if kind == "xlsx" else "books")
    config = books_config(folder, box.port, path=path.name)
    assert_clean_exit(cli("sync", "--config", config), 0)
    books = Books(path)

    invoices = {r["Invoice #"]: r for r in read_books(path, "invoices").filled()}
    owing = sorted(
        (i for i in hcp.invoices() if i["status"] == "sent" and i["outstanding_balance"] > 3000),
        key=lambda i: i["invoice_number"],
    )
    assert len(owing) >= 4, "the seed should have four invoices that owe something"
    broken = {
        column: str(invoices[inv["invoice_number"]]["Sync ID"])
        for column, inv in zip(BAD, owing, strict=False)
    }
    healthy = owing[3]
    before = books.snapshot("invoices", set(broken.values()))
    books.edit("invoices", {sync_id: {column: BAD[column]} for column, sync_id in broken.items()})
    payment_rows = [
        {
            "Sync ID": None,
            "Invoice #": healthy["invoice_number"] if number is None else number,
            "Amount": "5.00",
            "Method": "cash",
            "Status": "succeeded",
            "Date": date,
        }
        for number, date in NEW_PAYMENTS
    ]
    books.edit("payments", {}, payment_rows)
    customer = next(r for r in read_books(path, "customers").filled() if r["Email"])
    books.edit("customers", {str(customer["Sync ID"]): {"Company": "Fixed In The Books"}})
    bad_before = books.snapshot("invoices", set(broken.values()))
    expected = {  # where each error must point (before the sync appends rows)
        books.where("invoices", broken["Amount"]): "field 'Amount': '12,34x' is not an amount",
        books.where("invoices", broken["Status"]): "field 'Status': 'bogus' is not a known "
        "invoice status (use one of:",
        books.where("invoices", broken["Due Date"]): "field 'Due Date': '13/45/2025' is not a "
        "date written as YYYY-MM-DD, such as 2025-01-31 (the mapping's format '%Y-%m-%d')",
        books.new_row_where("payments", 3): "Invoice # '9999': no invoice has invoice_number "
        "'9999'",
        books.new_row_where("payments", 2): "field 'Date': '06/02/2025' is not a date written "
        "as YYYY-MM-DD",
        books.new_row_where("payments", 1): "field 'Invoice #': is empty: every payment "
        "belongs to an invoice; type the invoice's invoice number (a totals or note row belongs "
        "outside the table)",
    }
    # meanwhile in HCP: payments on the invoice with the bad amount and on a healthy one
    on_broken = owing[0]
    hcp.record_payment(on_broken["id"], 1500, processed_at="2025-06-05T15:00:00Z")
    hcp.record_payment(healthy["id"], 2500, processed_at="2025-06-05T16:00:00Z")

    run = cli("sync", "--config", config)
    assert_clean_exit(run, 1)
    errors = error_lines(run.stdout)
    for where, message in expected.items():
        mine = [e for e in errors if re.search(re.escape(where) + r"\b", e)]
        assert len(mine) == 1 and message in mine[0], (
            f"expected one error at {where!r} saying {message!r}; errors:\n" + "\n".join(errors)
        )
    assert len(errors) == len(expected), "\n".join(errors)

    # nothing else blocked: the customer edit reached HCP, both payments reached the books
    assert hcp.customers() and any(
        c.get("company") == "Fixed In The Books"
        and (c.get("email") or "").lower() == customer["Email"]
        for c in hcp.customers()
    ), "the customer edit did not sync"
    truth = hcp.books()
    pay_rows = read_books(path, "payments").filled()
    for inv, amount in ((on_broken, "15"), (healthy, "25")):
        got = [
            r
            for r in pay_rows
            if r["Invoice #"] == inv["invoice_number"]
            and r["Sync ID"]
            and str(r["Amount"]).startswith(amount)
            and "2025-06-05" in str(r["Date"])
        ]
        assert len(got) == 1, f"the HCP payment on {inv['invoice_number']}: {got}"
    (healthy_row,) = [
        r
        for r in read_books(path, "invoices").filled()
        if r["Invoice #"] == healthy["invoice_number"]
    ]
    healthy_now = truth.by_number[healthy["invoice_number"]]
    assert float(str(healthy_row["Balance"])) * 100 == pytest.approx(
        healthy_now["outstanding_balance"]
    ), healthy_row
    # nothing lost: the bad rows stay exactly as the bookkeeper left them
    assert books.snapshot("invoices", set(broken.values())) == bad_before
    assert [(r["Invoice #"] or "", r["Date"]) for r in books.unlinked("payments")] == [
        (r["Invoice #"], r["Date"]) for r in payment_rows
    ]

    # the same errors again next time (not forgotten), and nothing else to do
    dry = cli("sync", "--config", config, "--dry-run", "--json")
    assert_clean_exit(dry, 1)
    result = json.loads(dry.stdout)
    problems = [p for e in result["entities"].values() for p in e["problems"]]
    assert sorted(p["location"] for p in problems) == sorted(expected), problems
    assert all(p["member"] == "books" for p in problems), problems
    writes = {
        (e, m): c[m]
        for e, c in result["entities"].items()
        for m in ("hcp", "books")
        if any(c[m].values())
    }
    assert not writes, writes

    # fixed: the bad cells back to what they were, the payment rows removed
    books.edit("invoices", {sid: {c: before[sid][c]} for c, sid in broken.items()})
    if kind == "csv":
        sheet = read_csv_rows(path / "payments.csv")
        write_csv_rows(path / "payments.csv", sheet.header, [r for r in sheet.rows if r["Sync ID"]])
    else:
        wb = openpyxl.load_workbook(path)
        ws = wb["Payments"]
        header = [c.value for c in ws[1]]
        id_col = header.index("Sync ID")
        added = [
            row[0].row
            for row in ws.iter_rows(min_row=2)
            if not row[id_col].value and any(c.value not in (None, "") for c in row)
        ]
        assert len(added) == 3, added  # the rows typed above, wherever they landed
        for number in sorted(added, reverse=True):
            ws.delete_rows(number)
        wb.save(path)
    fixed = cli("sync", "--config", config, "--json")
    assert_clean_exit(fixed, 0)
    again = cli("sync", "--config", config, "--json")
    assert_clean_exit(again, 0)
    assert_nothing_planned(json.loads(again.stdout))
    assert_books_match_hcp(hcp.books(), path)
    report = cli("reconcile-report", "--config", config)
    assert_clean_exit(report, 0)
