"""Writes Housecall Pro cannot take: an invoice edited in the books, a payment added there.

HCP's API updates no invoice and takes no payment. When the bookkeeper changes an invoice's
Amount in the sheet and adds a payment row, the dry run says so per record (``skipped on hcp:
housecallpro cannot update invoices`` / ``cannot create payments``), the sync exits 0 and
writes nothing to HCP, ``syncengine status`` (and ``--json``) lists both skipped writes, a
further sync does not plan them again, and ``reconcile-report`` exits 1 naming the amount
disagreement and the payment HCP lacks. Nothing is silently dropped: the sheet keeps the
bookkeeper's amount and row. When HCP later records a payment on the edited invoice, that
payment and the new balance still reach the sheet, and the skip is neither duplicated nor
retried.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.books import (
    Hcp,
    assert_nothing_planned,
    books_config,
    cents,
    currency,
    dry_run_blocks,
    planned_writes,
    read_books,
    read_csv_rows,
    write_csv_rows,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 30
ADDED = 2500  # the payment the bookkeeper adds, in cents
RAISE = 1234  # what the bookkeeper adds to the invoice's amount


def skipped_of(status_json: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    (pipeline,) = status_json
    return sorted((s["entity"], s["record"], s["member"], s["reason"]) for s in pipeline["skipped"])


def test_writes_hcp_cannot_take_are_skipped_listed_and_not_replanned(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    books = folder / "books"
    config = books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)

    owing = [
        i
        for i in hcp.invoices()
        if i["status"] == "sent" and i["outstanding_balance"] > ADDED + 1000
    ]
    assert len(owing) >= 2, "the seed should have two invoices that owe something"
    edited, paid_in_books = owing[0], owing[1]
    new_amount = edited["amount"] + RAISE
    inv = read_csv_rows(books / "invoices.csv")
    (row,) = [r for r in inv.rows if r["Invoice #"] == edited["invoice_number"]]
    row["Amount"] = f"{new_amount / 100:.2f}"
    write_csv_rows(books / "invoices.csv", inv.header, inv.rows)
    pay = read_csv_rows(books / "payments.csv")
    pay.rows.append(
        {
            "Sync ID": "",
            "Invoice #": paid_in_books["invoice_number"],
            "Amount": f"{ADDED / 100:.2f}",
            "Method": "cash",
            "Status": "succeeded",
            "Date": "2025-06-01",
        }
    )
    write_csv_rows(books / "payments.csv", pay.header, pay.rows)
    sheet_before = {p.name: p.read_bytes() for p in books.iterdir()}
    hcp_before = hcp.books()
    hcp.clear_requests()

    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    blocks = dry_run_blocks(dry.stdout)
    invoice_block = blocks[f"invoices · invoice {edited['invoice_number']}"]
    assert "· skipped on hcp: housecallpro cannot update invoices" in invoice_block, dry.stdout
    # ... and what stays different there, as a person reads it
    assert f"amount: {currency(edited['amount'])} → {currency(new_amount)}" in "\n".join(
        invoice_block
    ), invoice_block
    payment_blocks = {
        h: lines
        for h, lines in blocks.items()
        if h.startswith(f"payments · {currency(ADDED)} on 2025-06-01")
    }
    assert len(payment_blocks) == 1, dry.stdout
    (lines,) = payment_blocks.values()
    assert "· skipped on hcp: housecallpro cannot create payments" in lines, dry.stdout
    skip_lines = [line for line in dry.stdout.splitlines() if "skipped on" in line]
    assert len(skip_lines) == 2, skip_lines
    assert {p.name: p.read_bytes() for p in books.iterdir()} == sheet_before

    run = cli("sync", "--config", config, "--json")
    assert_clean_exit(run, 0)
    result = json.loads(run.stdout)
    assert result["entities"]["invoices"]["skipped"] == 1
    assert result["entities"]["payments"]["skipped"] == 1
    assert not [k for k in planned_writes(result) if k[1] == "hcp"], result
    assert not [r for r in hcp.requests() if r["method"] != "GET"], "a write reached HCP"
    assert hcp.books() == hcp_before, "HCP changed"
    # nothing dropped from the books: the edited amount and the added row stay
    (row,) = [
        r
        for r in read_csv_rows(books / "invoices.csv").rows
        if r["Invoice #"] == edited["invoice_number"]
    ]
    assert cents(row["Amount"]) == new_amount
    added = [
        r
        for r in read_books(books, "payments").filled()
        if r["Invoice #"] == paid_in_books["invoice_number"]
        and cents(r["Amount"]) == ADDED
        and r["Date"] == "2025-06-01"
    ]
    assert len(added) == 1 and added[0]["Sync ID"], added

    expected_skips = [
        (
            "invoices",
            f"invoice {edited['invoice_number']}",
            "hcp",
            "housecallpro cannot update invoices",
        ),
        (
            "payments",
            f"{currency(ADDED)} on 2025-06-01 ({added[0]['Sync ID']})",
            "hcp",
            "housecallpro cannot create payments",
        ),
    ]
    status = cli("status", "--config", config)
    assert_clean_exit(status, 0)
    assert "skipped writes: 2" in status.stdout, status.stdout
    for entity, record, member, reason in expected_skips:
        assert f"{entity} · {record} on {member}: {reason}" in status.stdout, status.stdout
    status_json = cli("status", "--config", config, "--json")
    assert_clean_exit(status_json, 0)
    assert skipped_of(json.loads(status_json.stdout)) == expected_skips

    further = cli("sync", "--config", config, "--json")
    assert_clean_exit(further, 0)
    assert_nothing_planned(json.loads(further.stdout))
    dry_again = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry_again, 0)
    assert "skipped on" not in dry_again.stdout and "Nothing to do" in dry_again.stdout
    status_json = cli("status", "--config", config, "--json")
    assert skipped_of(json.loads(status_json.stdout)) == expected_skips, (
        "the skipped writes are no longer listed although HCP still lacks them"
    )

    report = cli("reconcile-report", "--config", config)
    assert_clean_exit(report, 1)
    flat = " ".join(report.stdout.split())
    assert (
        f"amounts differ: hcp {currency(edited['amount'])}, books {currency(new_amount)}" in flat
    ), report.stdout
    assert "payment(s) held elsewhere are not on hcp" in flat, report.stdout
    assert "the books do not reconcile" in flat
    report_json = cli("reconcile-report", "--config", config, "--json")
    assert_clean_exit(report_json, 1)
    body = json.loads(report_json.stdout)
    assert body["clean"] is False
    lines_by_number = {x["invoice_number"]: x for x in body["invoices"]}
    kinds = {
        (d["kind"], d["member"]) for d in lines_by_number[edited["invoice_number"]]["disagreements"]
    }
    assert ("amount", "") in kinds, kinds
    missing = lines_by_number[paid_in_books["invoice_number"]]
    assert ("missing", "hcp") in {(d["kind"], d["member"]) for d in missing["disagreements"]}
    assert missing["members"]["books"]["payments"] == missing["members"]["hcp"]["payments"] + 1
    assert {x["invoice_number"] for x in body["invoices"] if x["disagreements"]} == {
        edited["invoice_number"],
        paid_in_books["invoice_number"],
    }


def edit_amount(books: Path, number: str, amount: int) -> None:
    inv = read_csv_rows(books / "invoices.csv")
    (row,) = [r for r in inv.rows if r["Invoice #"] == number]
    row["Amount"] = f"{amount / 100:.2f}"
    write_csv_rows(books / "invoices.csv", inv.header, inv.rows)


def test_skipped_invoice_edit_stays_listed_after_hcp_changes_that_invoice(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    books = folder / "books"
    config = books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    edited = next(
        i for i in hcp.invoices() if i["status"] == "sent" and i["outstanding_balance"] > 2000
    )
    new_amount = edited["amount"] + RAISE
    edit_amount(books, edited["invoice_number"], new_amount)
    assert_clean_exit(cli("sync", "--config", config), 0)
    skip = (
        "invoices",
        f"invoice {edited['invoice_number']}",
        "hcp",
        "housecallpro cannot update invoices",
    )
    status = cli("status", "--config", config, "--json")
    assert skipped_of(json.loads(status.stdout)) == [skip]

    # HCP moves on: a payment on the edited invoice (its balance and updated_at change)
    hcp.record_payment(edited["id"], 1000, method="check", processed_at="2025-06-02T16:00:00Z")
    moved = cli("sync", "--config", config, "--json")
    assert_clean_exit(moved, 0)
    assert planned_writes(json.loads(moved.stdout)) == {
        ("payments", "books", "create"): 1,
        ("invoices", "books", "update"): 1,
    }
    now = {i["invoice_number"]: i for i in hcp.invoices()}[edited["invoice_number"]]
    assert now["amount"] == edited["amount"], "HCP took the amount after all?"
    (row,) = [
        r
        for r in read_csv_rows(books / "invoices.csv").rows
        if r["Invoice #"] == edited["invoice_number"]
    ]
    assert (cents(row["Amount"]), cents(row["Balance"])) == (
        new_amount,
        now["outstanding_balance"],
    ), row
    report = cli("reconcile-report", "--config", config)
    assert_clean_exit(report, 1)  # the amounts still differ ...
    status = cli("status", "--config", config, "--json")
    # ... so the skipped write is still listed (it was dropped before 2460cac)
    assert skipped_of(json.loads(status.stdout)) == [skip]
