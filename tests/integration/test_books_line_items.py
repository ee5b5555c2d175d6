"""Line items in the books, end to end through the ``syncengine`` command: a seeded Housecall
Pro sandbox (a process of its own) syncs customers, invoices, payments and line items into a
CSV folder (``line_items.csv``) or a workbook (its ``Line Items`` sheet).

- every line HCP has for the jobs behind its invoices arrives exactly once, under its
  invoice's number, with its quantity (fractions too) and money to the cent; the amount is
  quantity x unit price rounded half to even; each invoice's rows are together, in HCP's order;
- a second sync plans nothing, and costs HCP one request for the lines (the job list's first
  page): no job's lines are asked for again;
- a quantity the bookkeeper changes in the sheet reaches HCP through one ``bulk_update`` for
  that line's job, its Amount in the sheet follows at once, and so do the invoice totals HCP
  derives from the lines (the same run reads that invoice again by id); the sync after
  plans nothing.

What HCP holds is read through its API, what the books hold with ``csv`` / ``openpyxl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.integration.books import (
    Hcp,
    assert_nothing_planned,
    books_config,
    cents,
    read_csv_rows,
    read_xlsx_rows,
    write_csv_rows,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 16
KINDS = ["csv", "xlsx"]
SHEET = "Line Items"
COLUMNS = ["Sync ID", "Invoice #", "Item", "Description", "Kind", "Quantity", "Unit Price",
           "Unit Cost", "Taxable", "Amount"]  # fmt: skip
ENTITIES = '["customers", "invoices", "payments", "line_items"]'


def setup(kind: str, tmp_path: Path, box: Sandbox) -> tuple[Path, Path]:
    folder = tmp_path / "work"
    books = folder / ("books.xlsx" if kind == "xlsx" else "books")
    config = books_config(folder, box.port, path=books.name)
    text = config.read_text(encoding="utf-8")
    old = 'entities = ["customers", "invoices", "payments"]'
    assert text.count(old) == 1
    config.write_text(text.replace(old, f"entities = {ENTITIES}"), encoding="utf-8")
    return config, books


def sync(cli: Cli, config: Path, code: int = 0) -> dict[str, Any]:
    run = cli("sync", "--config", config, "--json")
    assert_clean_exit(run, code)
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def line_rows(books: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and the filled rows of the books' line items."""
    if books.suffix == ".xlsx":
        found = read_xlsx_rows(books, SHEET)
    else:
        found = read_csv_rows(books / "line_items.csv")
    return list(found.header), found.filled()


def invoice_rows(books: Path) -> list[dict[str, Any]]:
    """The filled rows of the books' invoices."""
    if books.suffix == ".xlsx":
        return read_xlsx_rows(books, "Invoices").filled()
    return read_csv_rows(books / "invoices.csv").filled()


def quantity(value: Any) -> Decimal:
    """A Quantity cell (text, or a workbook number) as an exact decimal."""
    if isinstance(value, float):
        return Decimal(repr(value)).normalize()
    return Decimal(str(value).replace(",", "")).normalize()


def exact_amount(number: Decimal, unit_price: int) -> int:
    return int((number * unit_price).quantize(Decimal(1), rounding="ROUND_HALF_EVEN"))


def hcp_lines(hcp: Hcp) -> list[tuple[str, str, Decimal, int, int]]:
    """(invoice number, item, quantity, unit price, amount) of every line of every job behind
    an invoice, the job's lines going with its first invoice, in HCP's order."""
    firsts: dict[str, dict[str, Any]] = {}
    for invoice in sorted(hcp.invoices(), key=lambda i: (i["created_at"], i["id"])):
        if invoice.get("job_id"):
            firsts.setdefault(invoice["job_id"], invoice)
    found = []
    for job_id, invoice in firsts.items():
        body = hcp.http.get(f"/jobs/{job_id}/line_items", params={"page_size": 200})
        for line in body.raise_for_status().json()["line_items"]:
            number = quantity(line["quantity"])
            price = int(line["unit_price"])
            found.append((invoice["invoice_number"], line["name"], number, price,
                          exact_amount(number, price)))  # fmt: skip
    return found


def sheet_lines(rows: list[dict[str, Any]]) -> list[tuple[str, str, Decimal, int, int]]:
    return [
        (str(r["Invoice #"]), str(r["Item"]), quantity(r["Quantity"]),
         cents(r["Unit Price"]) or 0, cents(r["Amount"]) or 0)
        for r in rows
    ]  # fmt: skip


def line_requests(hcp: Hcp) -> list[tuple[str, str]]:
    return [
        (r["method"], r["path"])
        for r in hcp.requests()
        if "line_items" in r["path"] or r["path"] == "/jobs"
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_lines_arrive_exactly_and_a_second_sync_plans_nothing(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    config, books = setup(kind, tmp_path, box)
    first = sync(cli, config)
    assert first["entities"]["line_items"]["books"]["create"] > 0, first
    header, rows = line_rows(books)
    assert header[: len(COLUMNS)] == COLUMNS
    want = hcp_lines(hcp)
    assert sorted(sheet_lines(rows)) == sorted(want)
    for _number, _item, number, price, amount in sheet_lines(rows):
        assert amount == exact_amount(number, price)
    # each invoice's rows together, in HCP's order
    numbers = [str(r["Invoice #"]) for r in rows]
    for number in set(numbers):
        at = [i for i, n in enumerate(numbers) if n == number]
        assert at == list(range(at[0], at[0] + len(at))), number
        assert [x for x in sheet_lines(rows) if x[0] == number] == [
            x for x in want if x[0] == number
        ]

    hcp.clear_requests()
    assert_nothing_planned(sync(cli, config))
    assert line_requests(hcp) == [("GET", "/jobs")]  # no job's lines asked for again
    assert not [r for r in hcp.requests() if r["method"] != "GET"], "writes reached HCP"


@pytest.mark.parametrize("kind", KINDS)
def test_a_quantity_edited_in_the_sheet_reaches_hcp_through_one_bulk_update(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    config, books = setup(kind, tmp_path, box)
    sync(cli, config)
    header, rows = line_rows(books)
    open_numbers = {
        i["invoice_number"] for i in hcp.invoices() if i["status"] not in ("voided", "canceled")
    }
    index, row = next((i, r) for i, r in enumerate(rows) if str(r["Invoice #"]) in open_numbers)
    number = str(row["Invoice #"])
    invoice = next(i for i in hcp.invoices() if i["invoice_number"] == number)
    job_id = invoice["job_id"]
    higher = quantity(row["Quantity"]) + Decimal("1.25")
    price = cents(row["Unit Price"]) or 0
    if kind == "csv":
        rows[index]["Quantity"] = f"{higher:,}"
        write_csv_rows(books / "line_items.csv", header, rows)
    else:
        book = openpyxl.load_workbook(books)
        sheet = book[SHEET]
        column = header.index("Quantity") + 1
        target = next(
            cell.row
            for cell in sheet["A"]
            if cell.value is not None and str(cell.value) == str(row["Sync ID"])
        )
        sheet.cell(row=target, column=column).value = float(higher)
        book.save(books)

    hcp.clear_requests()
    result = sync(cli, config)
    writes = [(r["method"], r["path"]) for r in hcp.requests() if r["method"] != "GET"]
    assert writes == [("PUT", f"/jobs/{job_id}/line_items/bulk_update")]
    assert result["entities"]["line_items"]["hcp"]["update"] == 1, result
    lines = hcp.http.get(f"/jobs/{job_id}/line_items").json()["line_items"]
    assert any(quantity(line["quantity"]) == higher for line in lines)
    _header, rows = line_rows(books)
    edited = next(r for r in rows if str(r["Sync ID"]) == str(row["Sync ID"]))
    assert quantity(edited["Quantity"]) == higher
    assert cents(edited["Amount"]) == exact_amount(higher, price)

    # HCP totals the invoice from its job's lines: the same run reads it again (by id) and
    # its new subtotal, tax and amount reach the books at once, not a sync later
    moved = next(i for i in hcp.invoices() if i["invoice_number"] == number)
    assert moved["subtotal"] != invoice["subtotal"]
    assert result["entities"]["invoices"]["books"]["update"] >= 1, result
    gets = [r["path"] for r in hcp.requests() if r["method"] == "GET"]
    assert f"/invoices/{invoice['id']}" in gets
    books_invoice = next(r for r in invoice_rows(books) if str(r["Invoice #"]) == number)
    assert cents(books_invoice["Subtotal"]) == moved["subtotal"]
    assert cents(books_invoice["Amount"]) == moved["amount"]
    assert_nothing_planned(sync(cli, config))


def test_a_line_moved_to_another_invoice_in_the_sheet_is_that_rows_error_before_anything_is_sent(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    """HCP keeps a line on its job: a row moved under another invoice is reported at plan
    time, on the books' row, in a dry run and in a sync alike; nothing of it is sent, the
    other lines still sync, and putting the row back ends the error."""
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    config, books = setup("csv", tmp_path, box)
    sync(cli, config)
    header, rows = line_rows(books)
    numbers = list(dict.fromkeys(str(r["Invoice #"]) for r in rows))
    assert len(numbers) >= 2, numbers
    index = next(i for i, r in enumerate(rows) if str(r["Invoice #"]) == numbers[0])
    other = next(i for i, r in enumerate(rows) if str(r["Invoice #"]) == numbers[1])
    original = dict(rows[index])
    rows[index]["Invoice #"] = numbers[1]
    rows[other]["Description"] = "edited beside the moved row"
    write_csv_rows(books / "line_items.csv", header, rows)

    preview = cli("sync", "--config", config, "--dry-run", "--json")
    assert_clean_exit(preview, 1)
    problems = json.loads(preview.stdout)["entities"]["line_items"]["problems"]
    assert len(problems) == 1, problems
    assert problems[0]["member"] == "books"
    assert problems[0]["location"].startswith("line_items.csv line "), problems
    assert "cannot move to another invoice" in problems[0]["message"]

    hcp.clear_requests()
    result = sync(cli, config, code=1)
    assert result["entities"]["line_items"]["problems"] == problems
    writes = [(r["method"], r["path"]) for r in hcp.requests() if r["method"] != "GET"]
    assert len(writes) == 1 and writes[0][1].endswith("/bulk_update"), writes  # the edit only
    assert result["entities"]["line_items"]["failed"] == 0, result

    _header, now = line_rows(books)
    back = next(i for i, r in enumerate(now) if str(r["Sync ID"]) == str(original["Sync ID"]))
    now[back]["Invoice #"] = original["Invoice #"]
    write_csv_rows(books / "line_items.csv", _header, now)
    assert_nothing_planned(sync(cli, config))
