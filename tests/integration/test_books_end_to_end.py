"""The books end to end, through the real ``syncengine`` command over loopback.

A seeded Housecall Pro sandbox (customers, jobs, invoices, payments) syncs into books that
hold nothing yet: a workbook a bookkeeper prepared beforehand with openpyxl (a "Notes" sheet
with a styled cell, a number format and a column width; an "Invoices" sheet with only a
styled header), or an empty CSV folder. The dry run shows money as currency and writes
nothing; the sync exits 0; a second sync plans nothing; ``reconcile-report`` says the books
reconcile; the workbook keeps what the bookkeeper made and holds amounts as numbers with a
money format and dates as dates; and the books agree with what HCP's API says, invoice by
invoice and payment by payment (read independently of the engine).

The sandbox command's live-API flags (``--live-invoices --no-nest-payments``: invoices
without ``customer_id`` and ``updated_at``, payments only through
``GET /invoices/{id}/payments``) give the same books.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.styles import Font, PatternFill
from openpyxl.styles.numbers import is_date_format

from tests.integration.books import (
    INVOICE_COLUMNS,
    Hcp,
    assert_books_match_hcp,
    assert_nothing_planned,
    books_config,
    currency,
    dry_run_blocks,
    planned_writes,
    read_books,
    start_sandbox_with,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit
from tests.statefile import state_files

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 40
ZONE = "America/Chicago"
NOTES_FILL = "FFFFE699"
NOTES_FORMAT = '"$"#,##0.00;[Red]-"$"#,##0.00'


def prepare_workbook(path: Path) -> None:
    """What a bookkeeper made before the first sync: a Notes sheet and an Invoices header."""
    wb = openpyxl.Workbook()
    notes = wb.active
    assert notes is not None
    notes.title = "Notes"
    notes["A1"] = "Q1 close: check the open invoices"
    notes["A1"].font = Font(bold=True, italic=True, color="FF1F4E79")
    notes["A1"].fill = PatternFill("solid", fgColor=NOTES_FILL)
    notes["A2"] = "Float in the till"
    notes["B2"] = 1234.5
    notes["B2"].number_format = NOTES_FORMAT
    notes["B3"] = "=B2*2"
    notes.column_dimensions["A"].width = 42.5
    notes.row_dimensions[1].height = 30
    invoices = wb.create_sheet("Invoices")
    invoices.append(INVOICE_COLUMNS)
    for cell in invoices[1]:
        cell.font = Font(bold=True)
    invoices.column_dimensions["C"].width = 34
    invoices.column_dimensions["E"].width = 15
    invoices.freeze_panes = "A2"
    wb.save(path)


def check_prepared_parts_kept(path: Path) -> None:
    wb = openpyxl.load_workbook(path)
    try:
        assert wb.sheetnames[:2] == ["Notes", "Invoices"], wb.sheetnames
        assert set(wb.sheetnames) == {"Notes", "Invoices", "Customers", "Payments"}
        notes = wb["Notes"]
        a1 = notes["A1"]
        assert a1.value == "Q1 close: check the open invoices"
        assert (a1.font.b, a1.font.i, a1.font.color.rgb) == (True, True, "FF1F4E79")
        assert (a1.fill.fill_type, a1.fill.fgColor.rgb) == ("solid", NOTES_FILL)
        assert notes["B2"].value == 1234.5 and notes["B2"].number_format == NOTES_FORMAT
        assert notes["B3"].value == "=B2*2", "the bookkeeper's formula was not kept"
        assert notes.column_dimensions["A"].width == 42.5
        assert notes.row_dimensions[1].height == 30
        invoices = wb["Invoices"]
        assert [c.value for c in invoices[1]][: len(INVOICE_COLUMNS)] == INVOICE_COLUMNS
        assert all(c.font.b for c in invoices[1][: len(INVOICE_COLUMNS)]), "header lost its bold"
        assert invoices.column_dimensions["C"].width == 34
        assert invoices.column_dimensions["E"].width == 15
        assert invoices.freeze_panes == "A2"
    finally:
        wb.close()


def is_money_format(fmt: str) -> bool:
    """Thousands separators and two decimals (``#,##0.00``, ``"$"#,##0.00``, …)."""
    return "#,##0.00" in fmt or ("$" in fmt and "0.00" in fmt)


def check_typed_cells(path: Path) -> None:
    """Amounts are numbers with a money format, dates are dates, invoice numbers text."""
    wb = openpyxl.load_workbook(path)
    try:
        bad: list[str] = []
        for title, money, dates in (
            ("Invoices", ("Subtotal", "Tax", "Amount", "Balance"), ("Due Date", "Created")),
            ("Payments", ("Amount", "Refunded"), ("Date",)),
        ):
            ws = wb[title]
            header = [c.value for c in ws[1]]
            col = {name: header.index(name) for name in (*money, *dates, "Invoice #")}
            for row in ws.iter_rows(min_row=2):
                if all(c.value in (None, "") for c in row):
                    continue
                for name in money:
                    cell = row[col[name]]
                    if (
                        cell.data_type != "n"
                        or isinstance(cell.value, bool)
                        or not isinstance(cell.value, int | float)
                        or not is_money_format(cell.number_format)
                    ):
                        bad.append(
                            f"{title}!{cell.coordinate} {name}: {cell.value!r} "
                            f"({cell.data_type}, format {cell.number_format!r})"
                        )
                for name in dates:
                    cell = row[col[name]]
                    if cell.value is None and name == "Due Date":
                        continue
                    if not (
                        isinstance(cell.value, dt.datetime | dt.date)
                        and is_date_format(cell.number_format)
                    ):
                        bad.append(
                            f"{title}!{cell.coordinate} {name}: {cell.value!r} "
                            f"(format {cell.number_format!r})"
                        )
                cell = row[col["Invoice #"]]
                if not isinstance(cell.value, str):
                    bad.append(f"{title}!{cell.coordinate} Invoice #: {cell.value!r} is not text")
        assert not bad, "cells of the wrong type:\n  " + "\n  ".join(bad[:20])
    finally:
        wb.close()


def check_dry_run(output: str, hcp_books: Any) -> None:
    """Every invoice and payment is in the dry run, its money shown as currency."""
    blocks = dry_run_blocks(output)
    missing = []
    for inv in hcp_books.invoices:
        lines = blocks.get(f"invoices · invoice {inv['invoice_number']}")
        if lines is None:
            missing.append(f"invoice {inv['invoice_number']} (no block)")
            continue
        for want in (
            "+ create on books",
            f"amount: {currency(inv['amount'])}",
            f"balance: {currency(inv['outstanding_balance'])}",
        ):
            if want not in lines:
                missing.append(f"invoice {inv['invoice_number']}: {want!r} not in {lines}")
    assert not missing, "the dry run does not show:\n  " + "\n  ".join(missing[:10])
    shown: Counter[str] = Counter()
    for header, lines in blocks.items():
        if header.startswith("payments · "):
            amounts = [
                line.removeprefix("amount: ") for line in lines if line.startswith("amount: ")
            ]
            assert len(amounts) == 1 and header.startswith(f"payments · {amounts[0]} on "), (
                header,
                lines,
            )
            shown[amounts[0]] += 1
    wanted = Counter(currency(p["amount"]) for p in hcp_books.all_payments())
    assert shown == wanted, (
        f"payments in the dry run: missing {dict(wanted - shown)}, "
        f"unexpected {dict(shown - wanted)}"
    )
    big = [inv for inv in hcp_books.invoices if inv["amount"] >= 100_000]
    assert big, "the seed should have an invoice of $1,000 or more"
    assert f"amount: {currency(big[0]['amount'])}" in output and "," in currency(big[0]["amount"])


@pytest.mark.parametrize("kind", ["xlsx", "csv"])
def test_seeded_sandbox_syncs_into_empty_books_and_reconciles(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    xlsx = kind == "xlsx"
    books = folder / ("books.xlsx" if xlsx else "books")
    zone = ZONE if xlsx else "UTC"
    config = books_config(folder, box.port, path=books.name, timezone=ZONE if xlsx else None)
    if xlsx:
        prepare_workbook(books)
    else:
        books.mkdir()
    before = books.read_bytes() if xlsx else None
    truth = hcp.books()
    assert len(truth.invoices) >= SEED // 2 and truth.total_paid() > 0, "seed without books?"
    assert {i["status"] for i in truth.invoices} >= {"paid", "sent"}
    hcp.clear_requests()

    dry = cli("sync", "--config", config, "--dry-run", "--details")
    assert_clean_exit(dry, 0)
    check_dry_run(dry.stdout, truth)
    assert "Dry run: nothing was written" in dry.stdout
    if xlsx:
        assert books.read_bytes() == before, "the dry run changed the workbook"
    else:
        assert not any(books.iterdir()), "the dry run wrote into the CSV folder"
    assert state_files(folder) == {}, "the dry run created the state store"

    first = cli("sync", "--config", config, "--json")
    assert_clean_exit(first, 0)
    result = json.loads(first.stdout)
    assert planned_writes(result) == {
        ("customers", "books", "create"): len(truth.customers),
        ("invoices", "books", "create"): len(truth.invoices),
        ("payments", "books", "create"): len(truth.all_payments()),
    }, result

    second = cli("sync", "--config", config, "--json")
    assert_clean_exit(second, 0)
    assert_nothing_planned(json.loads(second.stdout))

    report = cli("reconcile-report", "--config", config)
    assert_clean_exit(report, 0)
    assert "The books reconcile" in report.stdout
    report_json = cli("reconcile-report", "--config", config, "--json")
    assert_clean_exit(report_json, 0)
    body = json.loads(report_json.stdout)
    assert body["clean"] is True and body["disagreements"] == 0, body
    for member in ("hcp", "books"):
        assert body["totals"][member] == {
            "invoices": len(truth.invoices),
            "amount": truth.total_amount(),
            "paid": truth.total_paid(),
            "balance": truth.total_balance(),
            "refunded": truth.total_refunded(),
        }, body["totals"]

    assert hcp.books() == truth, "HCP changed although only the books had anything to take"
    assert not [r for r in hcp.requests() if r["method"] != "GET"], "writes reached HCP"
    assert_books_match_hcp(truth, books, zone)
    assert len(read_books(books, "customers").filled()) == len(truth.customers)
    if xlsx:
        check_prepared_parts_kept(books)
        check_typed_cells(books)


# ------------------------------------------------------------------ the live-API flags


@pytest.fixture
def flagged_sandboxes(tmp_path: Path) -> Iterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for box in started:
        box.stop()


def payments_requests(requests: list[dict[str, Any]]) -> Counter[str]:
    return Counter(
        r["path"] for r in requests if r["method"] == "GET" and r["path"].endswith("/payments")
    )


def rows_without_ids(books: Path, entity: str) -> list[tuple[Any, ...]]:
    rows = read_books(books, entity).filled()
    return sorted(tuple(sorted((k, str(v)) for k, v in r.items() if k != "Sync ID")) for r in rows)


def test_live_invoices_without_nested_payments_fill_the_same_books(
    tmp_path: Path, flagged_sandboxes: list[Sandbox], cli: Cli
) -> None:
    seed = 30
    live = start_sandbox_with(
        tmp_path / "live-sandbox",
        "--live-invoices",
        "--no-nest-payments",
        seed=seed,
        started=flagged_sandboxes,
    )
    plain = start_sandbox_with(tmp_path / "plain-sandbox", seed=seed, started=flagged_sandboxes)
    live_hcp, plain_hcp = Hcp(live), Hcp(plain)
    assert live_hcp.options() == {"nest_payments": False, "live_invoices": True}
    assert plain_hcp.options() == {"nest_payments": True, "live_invoices": False}
    raw = live_hcp.invoices()
    assert raw and all(
        "customer_id" not in i and "updated_at" not in i and "payments" not in i for i in raw
    ), raw[:2]

    live_config = books_config(tmp_path / "live", live.port)
    plain_config = books_config(tmp_path / "plain", plain.port)
    live_hcp.clear_requests()
    plain_hcp.clear_requests()
    for config in (live_config, plain_config):
        run = cli("sync", "--config", config, "--json")
        assert_clean_exit(run, 0)
    # payments read per invoice, once each, only where they are not nested
    assert payments_requests(live_hcp.requests()) == Counter(
        f"/invoices/{i['id']}/payments" for i in raw
    )
    assert not payments_requests(plain_hcp.requests())
    truth = live_hcp.books()
    assert_books_match_hcp(truth, tmp_path / "live" / "books")
    for entity in ("customers", "invoices", "payments"):
        assert rows_without_ids(tmp_path / "live" / "books", entity) == rows_without_ids(
            tmp_path / "plain" / "books", entity
        ), f"{entity} differ between the two sandboxes"

    second = cli("sync", "--config", live_config, "--json")
    assert_clean_exit(second, 0)
    assert_nothing_planned(json.loads(second.stdout))

    # a payment recorded in HCP reaches the books through GET /invoices/{id}/payments
    owing = next(
        i for i in truth.invoices if i["status"] == "sent" and i["outstanding_balance"] > 500
    )
    live_hcp.record_payment(owing["id"], 499, method="cash", processed_at="2025-06-03T15:00:00Z")
    third = cli("sync", "--config", live_config, "--json")
    assert_clean_exit(third, 0)
    assert planned_writes(json.loads(third.stdout)) == {
        ("payments", "books", "create"): 1,
        ("invoices", "books", "update"): 1,
    }
    assert_books_match_hcp(live_hcp.books(), tmp_path / "live" / "books")
    fourth = cli("sync", "--config", live_config, "--json")
    assert_clean_exit(fourth, 0)
    assert_nothing_planned(json.loads(fourth.stdout))
    report = cli("reconcile-report", "--config", live_config, "--json")
    assert_clean_exit(report, 0)
    assert json.loads(report.stdout)["clean"] is True
