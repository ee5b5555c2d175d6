"""Refunds, subtotals and tax in the books, end to end through the ``syncengine`` command.

A seeded Housecall Pro sandbox (a process of its own) syncs into books (a CSV folder, or one
workbook). Then, as a demanding bookkeeper would check:

- a refund made in HCP (``POST /_sandbox/payments/{id}/refund``), partial and then full,
  reaches the books as a change of the payment's row — the same row, the same Sync ID, its
  ``Refunded`` cell and (in full) its status — never as a new payment; the invoice's balance
  and status follow; a second sync plans nothing and ``reconcile-report`` proves the books;
- books written before ``Subtotal``, ``Tax`` and ``Refunded`` existed (a mapping without
  them) gain the columns at the end of their headers, filled for every row, and lose
  nothing: every other cell, and a column of the bookkeeper's own, stay as they were;
- a row whose ``Refunded`` is more than its ``Amount`` is that row's problem (exit 1, the
  row and the field named), not a crash, and the rest of the books still sync.

What HCP holds is read through its API, what the books hold with ``csv`` / ``openpyxl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.books import (
    Hcp,
    assert_books_match_hcp,
    assert_nothing_planned,
    books_config,
    cents,
    currency,
    dry_run_blocks,
    planned_writes,
    read_books,
    write_csv_rows,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 24
KINDS = ["csv", "xlsx"]

OLD_INVOICES = """\
[fields]
invoice_number = "Invoice #"
customer = { native = "Customer Email", ref_by = ["email", "mobile_number"] }
status = "Status"
amount = { native = "Amount", transform = "cents" }
balance = { native = "Balance", transform = "cents" }
due_at = { native = "Due Date", transform = "date" }
created_at = { native = "Created", transform = "date" }
"""
OLD_PAYMENTS = """\
[fields]
invoice = { native = "Invoice #", ref_by = "invoice_number" }
amount = { native = "Amount", transform = "cents" }
method = "Method"
status = "Status"
paid_at = { native = "Date", transform = "date" }
"""
"""The spreadsheet's default mappings as they were before subtotals, tax and refunds."""


def setup(kind: str, tmp_path: Path, box: Sandbox, *, old: bool = False) -> tuple[Path, Path]:
    """(config, books) for a sync of the sandbox into a new CSV folder or workbook; ``old``:
    through the mappings from before the new columns."""
    folder = tmp_path / "work"
    books = folder / ("books.xlsx" if kind == "xlsx" else "books")
    config = books_config(folder, box.port, path=books.name)
    if old:
        use_old_mappings(config)
    return config, books


def use_old_mappings(config: Path) -> None:
    (config.parent / "old-invoices.toml").write_text(OLD_INVOICES, encoding="utf-8")
    (config.parent / "old-payments.toml").write_text(OLD_PAYMENTS, encoding="utf-8")
    with config.open("a", encoding="utf-8") as out:
        out.write(
            "\n[pipelines.mappings]\n"
            'books = { invoices = "old-invoices.toml", payments = "old-payments.toml" }\n'
        )


def use_default_mappings(config: Path) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text.split("\n[pipelines.mappings]\n")[0] + "\n", encoding="utf-8")


def sync(cli: Cli, config: Path, code: int = 0) -> dict[str, Any]:
    run = cli("sync", "--config", config, "--json")
    assert_clean_exit(run, code)
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def by_sync_id(books: Path, entity: str) -> dict[str, dict[str, Any]]:
    rows = read_books(books, entity).filled()
    found = {str(r["Sync ID"]): r for r in rows}
    assert len(found) == len(rows), f"{entity}: Sync IDs on several rows"
    return found


def refundable_invoice(hcp: Hcp) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A paid invoice with two succeeded payments or more, and those payments."""
    for invoice in hcp.invoices():
        succeeded = [p for p in invoice["payments"] if p["status"] == "succeeded"]
        if invoice["status"] == "paid" and len(succeeded) >= 2:
            return invoice, succeeded
    raise AssertionError("the seed should have a paid invoice with two payments")


def payment_row(
    rows: dict[str, dict[str, Any]], number: str, payment: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The books' row of an HCP payment: its invoice, amount and method, on one row only."""
    found = [
        (sync_id, row)
        for sync_id, row in rows.items()
        if str(row["Invoice #"]) == number
        and cents(row["Amount"]) == payment["amount"]
        and str(row["Method"]) == payment["payment_method"]
    ]
    assert len(found) == 1, (payment, found)
    return found[0]


def invoice_row(rows: dict[str, dict[str, Any]], number: str) -> dict[str, Any]:
    [row] = [r for r in rows.values() if str(r["Invoice #"]) == number]
    return row


@pytest.mark.parametrize("kind", KINDS)
def test_a_refund_in_hcp_changes_the_payment_in_the_books(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    config, books = setup(kind, tmp_path, box)
    sync(cli, config)
    invoice, (first, second, *_) = refundable_invoice(hcp)
    number = invoice["invoice_number"]
    before = by_sync_id(books, "payments")
    first_id, first_row = payment_row(before, number, first)
    second_id, _ = payment_row(before, number, second)
    assert cents(first_row["Refunded"]) == 0

    # a partial refund: one payment row changes, the invoice owes the refund again
    part = min(1_234, first["amount"] - 1)
    hcp.refund(first["id"], part)
    hcp.clear_requests()
    dry = cli("sync", "--config", config, "--dry-run", "--details")
    assert_clean_exit(dry, 0)
    blocks = dry_run_blocks(dry.stdout)
    assert not [h for h, lines in blocks.items() if any("create" in x for x in lines)], blocks
    [payment_block] = [lines for h, lines in blocks.items() if h.startswith("payments · ")]
    assert payment_block == ["~ update on books", f"refunded_amount: $0.00 → {currency(part)}"]
    assert blocks[f"invoices · invoice {number}"] == [
        "~ update on books",
        f"balance: $0.00 → {currency(part)}",
        "status: 'paid' → 'sent'",
    ]
    result = sync(cli, config)
    assert planned_writes(result) == {
        ("payments", "books", "update"): 1,
        ("invoices", "books", "update"): 1,
    }, result
    after = by_sync_id(books, "payments")
    assert after.keys() == before.keys(), "a refund is never a new payment row"
    row = after[first_id]
    assert (cents(row["Amount"]), cents(row["Refunded"]), row["Status"]) == (
        first["amount"],
        part,
        "succeeded",
    )
    owed = invoice_row(by_sync_id(books, "invoices"), number)
    assert (cents(owed["Balance"]), owed["Status"]) == (part, "sent")

    # the rest of the other payment, in full: refunded
    hcp.refund(second["id"])
    result = sync(cli, config)
    assert planned_writes(result) == {
        ("payments", "books", "update"): 1,
        ("invoices", "books", "update"): 1,
    }, result
    after = by_sync_id(books, "payments")
    assert after.keys() == before.keys()
    row = after[second_id]
    assert (cents(row["Refunded"]), row["Status"]) == (second["amount"], "refunded")
    owed = invoice_row(by_sync_id(books, "invoices"), number)
    assert cents(owed["Balance"]) == part + second["amount"]

    assert_nothing_planned(sync(cli, config))
    assert not [r for r in hcp.requests() if r["method"] != "GET"], "writes reached HCP"
    truth = hcp.books()
    assert_books_match_hcp(truth, books)
    report = cli("reconcile-report", "--config", config, "--json")
    assert_clean_exit(report, 0)
    body = json.loads(report.stdout)
    assert body["clean"] is True, body
    for member in ("hcp", "books"):
        assert body["totals"][member]["refunded"] == truth.total_refunded() == part
        assert body["totals"][member]["balance"] == truth.total_balance()
    text = cli("reconcile-report", "--config", config, "--all")
    assert_clean_exit(text, 0)
    assert "refunded" in text.stdout and "The books reconcile" in text.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_books_from_before_gain_the_new_columns_and_lose_nothing(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    config, books = setup(kind, tmp_path, box, old=True)
    sync(cli, config)
    old_headers = {e: read_books(books, e).header for e in ("invoices", "payments")}
    assert "Subtotal" not in old_headers["invoices"] and "Tax" not in old_headers["invoices"]
    assert "Refunded" not in old_headers["payments"]
    if kind == "csv":  # a column of the bookkeeper's own, with a note in one row
        table = read_books(books, "invoices")
        table.rows[0]["Memo"] = "ask about the warranty"
        write_csv_rows(books / "invoices.csv", [*table.header, "Memo"], table.rows)
    invoice, (payment, *_) = refundable_invoice(hcp)
    hcp.refund(payment["id"], 500)  # a refund while the books have no column for it yet
    sync(cli, config)
    before = {e: by_sync_id(books, e) for e in ("invoices", "payments")}
    raw_before = (books / "invoices.csv").read_bytes() if kind == "csv" else b""

    use_default_mappings(config)
    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    assert "column Subtotal is missing" in dry.stdout and "column Refunded" in dry.stdout
    if kind == "csv":
        assert (books / "invoices.csv").read_bytes() == raw_before, "the dry run wrote"
    result = sync(cli, config)
    writes = planned_writes(result)
    assert writes == {
        ("invoices", "books", "update"): len(before["invoices"]),
        ("payments", "books", "update"): len(before["payments"]),
    }, writes

    for entity, added in (("invoices", ["Subtotal", "Tax"]), ("payments", ["Refunded"])):
        table = read_books(books, entity)
        kept = [c for c in table.header if c not in added]
        assert kept == read_books_header(before[entity]), (entity, table.header)
        assert table.header[-len(added) :] == added, "new columns go at the end"
        now = by_sync_id(books, entity)
        assert now.keys() == before[entity].keys()
        changed = [
            (sync_id, column)
            for sync_id, row in before[entity].items()
            for column, value in row.items()
            if now[sync_id].get(column) != value
        ]
        assert not changed, f"{entity}: cells changed by adding columns: {changed[:10]}"
        empty = [s for s, row in now.items() if any(row[c] in (None, "") for c in added)]
        assert not empty, f"{entity}: rows left without the new columns' values: {empty[:5]}"
    truth = hcp.books()
    assert_books_match_hcp(truth, books)
    refunded = [r for r in by_sync_id(books, "payments").values() if cents(r["Refunded"])]
    assert [(str(r["Invoice #"]), cents(r["Refunded"])) for r in refunded] == [
        (invoice["invoice_number"], 500)
    ]
    assert_nothing_planned(sync(cli, config))
    report = cli("reconcile-report", "--config", config)
    assert_clean_exit(report, 0)


def read_books_header(rows: dict[str, dict[str, Any]]) -> list[str]:
    return list(next(iter(rows.values())))


@pytest.mark.parametrize("kind", KINDS)
def test_a_refund_above_its_payment_typed_in_the_books_is_that_rows_problem(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    config, books = setup(kind, tmp_path, box)
    sync(cli, config)
    invoice, (payment, *_) = refundable_invoice(hcp)
    rows = by_sync_id(books, "payments")
    sync_id, _row = payment_row(rows, invoice["invoice_number"], payment)
    too_much = payment["amount"] + 1
    set_cell(books, "payments", sync_id, "Refunded", too_much)

    run = cli("sync", "--config", config, "--json")
    assert_clean_exit(run, 1)
    result = json.loads(run.stdout)
    shown = json.dumps(result)
    where = "payments.csv line" if kind == "csv" else "sheet Payments, row"
    assert where in shown and "field 'Refunded'" in shown, shown
    assert "is more than the payment's amount" in shown, shown
    assert not planned_writes(result), "nothing else had to change"
    row = by_sync_id(books, "payments")[sync_id]
    assert cents(row["Refunded"]) == too_much, "the row is left as the bookkeeper typed it"
    assert not [r for r in hcp.requests() if r["method"] != "GET"]
    report = cli("reconcile-report", "--config", config)
    assert_clean_exit(report, 1)
    assert "Refunded" in report.stdout


def set_cell(books: Path, entity: str, sync_id: str, column: str, amount_cents: int) -> None:
    """Type an amount into one cell of the books, as a person would."""
    text = f"{amount_cents // 100}.{amount_cents % 100:02d}"
    if books.suffix != ".xlsx":
        table = read_books(books, entity)
        for row in table.rows:
            if str(row["Sync ID"]) == sync_id:
                row[column] = text
        write_csv_rows(books / f"{entity}.csv", table.header, table.rows)
        return
    import openpyxl

    wb = openpyxl.load_workbook(books)
    ws = wb[entity.capitalize()]
    header = [c.value for c in ws[1]]
    for cells in ws.iter_rows(min_row=2):
        if str(cells[header.index("Sync ID")].value) == sync_id:
            cells[header.index(column)].value = float(text)
    wb.save(books)
