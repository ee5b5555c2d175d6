"""Line items in the books: the HCP sandbox in-process and a spreadsheet member, a folder of
CSV files (``line_items.csv``) or a workbook (its ``Line Items`` sheet). Rows come grouped
under their invoice in HCP's order, quantities and money exactly; a row added later for an
invoice goes below that invoice's rows (CSV); a quantity edited in the sheet reaches HCP
through one ``bulk_update`` and comes back with its amount; a second sync plans nothing."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.housecallpro.sandbox import SandboxState, SyncASGITransport, create_app
from syncengine.connectors.housecallpro.sandbox_lines import first_invoice
from syncengine.engine import SyncResult
from syncengine.model import line_amount
from tests.csvfiles import read_csv_table, write_csv
from tests.helpers import write_config

KEY = "hcp_test_key_0123456789"
HEADER = ["Sync ID", "Invoice #", "Item", "Description", "Kind", "Quantity", "Unit Price",
          "Unit Cost", "Taxable", "Amount"]  # fmt: skip


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=10, random_seed=4)


def state_of(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


def config(tmp_path: Path, books: str) -> Config:
    path = write_config(
        tmp_path,
        f"""
        [state]
        url = "sqlite:///state.db"

        [connectors.hcp]
        type = "housecallpro"
        base_url = "http://sandbox"
        api_key = "{KEY}"
        rate_limit = 0
        page_size = 50

        [connectors.books]
        type = "spreadsheet"
        path = "{books}"

        [[pipelines]]
        name = "p"
        members = ["hcp", "books"]
        entities = ["customers", "invoices", "payments", "line_items"]
        [pipelines.conflicts]
        default = ["hcp"]
        """,
    )
    return load_config(path)


def sync(cfg: Config, app: Any) -> SyncResult:
    state = state_of(app)
    state.clear_requests()
    extra = {"hcp": {"transport": SyncASGITransport(app), "sleep": lambda _: None}}
    result = api.sync(cfg, connector_extra=extra)[0]
    assert not result.failures and not result.error, (result.failures, result.error)
    return result


def sent(state: SandboxState) -> list[tuple[str, str]]:
    found = [(r["method"], r["path"]) for r in state.requests()]
    state.clear_requests()
    return found


def expected_rows(state: SandboxState) -> list[tuple[str, str, str, str]]:
    """(invoice number, item, quantity, amount) of every HCP line, job by job in the order
    of their first invoices, each job's lines in order."""
    rows = []
    invoices = sorted(
        (i for j in state.jobs.all() if (i := first_invoice(state, j["id"])) is not None),
        key=lambda i: (i["created_at"], i["id"]),
    )
    for invoice in invoices:
        for line in state.lines.of(invoice["job_id"]):
            amount = line_amount(line["quantity"], line["unit_price"])
            rows.append((invoice["invoice_number"], line["name"], line["quantity"],
                         f"{Decimal(amount).scaleb(-2):.2f}"))  # fmt: skip
    return rows


@pytest.fixture
def csv_books(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "books"


def test_lines_arrive_grouped_and_exact_in_a_csv_folder(
    tmp_path: Path, app: Any, csv_books: Path
) -> None:
    cfg = config(tmp_path, "books")
    state = state_of(app)
    sync(cfg, app)
    table = read_csv_table(csv_books / "line_items.csv")
    header, rows = table.header, table.rows
    assert header == HEADER
    got = [(r["Invoice #"], r["Item"], r["Quantity"], r["Amount"]) for r in rows]
    assert sorted(got) == sorted(expected_rows(state))
    # grouped: each invoice's rows are together, in HCP's order
    numbers = [g[0] for g in got]
    assert all(numbers.index(n) + numbers.count(n) - 1 == _last(numbers, n) for n in numbers)
    for number in set(numbers):
        mine = [g for g in got if g[0] == number]
        assert mine == [e for e in expected_rows(state) if e[0] == number]
    assert sync(cfg, app).plan.actions == []
    assert [r for r in sent(state) if "line_items" in r[1]] == []  # quiet: no job asked


def test_a_quantity_edited_in_the_sheet_reaches_hcp_through_one_bulk_update(
    tmp_path: Path, app: Any, csv_books: Path
) -> None:
    cfg = config(tmp_path, "books")
    state = state_of(app)
    sync(cfg, app)
    table = read_csv_table(csv_books / "line_items.csv")
    header, rows = table.header, table.rows
    job = next(
        j
        for j in state.jobs.all()
        if (i := first_invoice(state, j["id"])) is not None
        and i["status"] not in ("voided", "canceled")
        and state.lines.of(j["id"])
    )
    number = first_invoice(state, job["id"])["invoice_number"]  # type: ignore[index]
    line = state.lines.of(job["id"])[0]
    row = next(r for r in rows if r["Invoice #"] == number and r["Item"] == line["name"])
    higher = Decimal(line["quantity"]) + Decimal("1.25")
    row["Quantity"] = f"{higher:,}"  # as a person types it: 1,001.25 for a big one
    write_csv(csv_books / "line_items.csv", rows, header, replace=True)
    sync(cfg, app)
    writes = [r for r in sent(state) if r[0] != "GET"]
    assert writes == [("PUT", f"/jobs/{job['id']}/line_items/bulk_update")]
    assert Decimal(state.lines.of(job["id"])[0]["quantity"]) == higher
    rows = read_csv_table(csv_books / "line_items.csv").rows
    row = next(r for r in rows if r["Sync ID"] == row["Sync ID"])
    assert row["Amount"] == f"{Decimal(line_amount(higher, line['unit_price'])).scaleb(-2):.2f}"
    sync(cfg, app)  # HCP's own read of the change (its invoice's new totals too)
    assert sync(cfg, app).plan.actions == []


def test_a_new_line_in_hcp_goes_below_its_invoices_rows(
    tmp_path: Path, app: Any, csv_books: Path
) -> None:
    cfg = config(tmp_path, "books")
    state = state_of(app)
    sync(cfg, app)
    rows = read_csv_table(csv_books / "line_items.csv").rows
    number = rows[0]["Invoice #"]
    job_id = next(i["job_id"] for i in state.invoices.all() if i["invoice_number"] == number)
    from syncengine.connectors.housecallpro.sandbox_lines import create_line

    create_line(state, job_id, {"name": "Late extra", "quantity": 0.5, "unit_price": 1000})
    sync(cfg, app)
    rows = read_csv_table(csv_books / "line_items.csv").rows
    numbers = [r["Invoice #"] for r in rows]
    extra = next(i for i, r in enumerate(rows) if r["Item"] == "Late extra")
    assert extra == _last(numbers, number)
    assert rows[extra]["Quantity"] == "0.5" and rows[extra]["Amount"] == "5.00"


def test_lines_arrive_in_a_workbook_as_numbers(tmp_path: Path, app: Any) -> None:
    cfg = config(tmp_path, "books.xlsx")
    state = state_of(app)
    sync(cfg, app)
    book = openpyxl.load_workbook(tmp_path / "books.xlsx")
    sheet = book["Line Items"]
    values = list(sheet.iter_rows(values_only=True))
    assert list(values[0]) == HEADER
    column = {name: index for index, name in enumerate(HEADER)}
    quantities = [row[column["Quantity"]] for row in values[1:]]
    assert all(isinstance(q, int | float) for q in quantities)
    got = sorted(
        (row[column["Item"]], Decimal(repr(row[column["Quantity"]])).normalize(),
         round(Decimal(repr(row[column["Amount"]])) * 100))
        for row in values[1:]
    )  # fmt: skip
    want = sorted(
        (line["name"], Decimal(line["quantity"]).normalize(),
         line_amount(line["quantity"], line["unit_price"]))
        for line in state.lines.dump()
    )  # fmt: skip
    assert got == want
    assert sync(cfg, app).plan.actions == []


def _last(items: list[str], value: str) -> int:
    return len(items) - 1 - items[::-1].index(value)
