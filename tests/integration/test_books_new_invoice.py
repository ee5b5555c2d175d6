"""An invoice typed into the books is created in Housecall Pro, which dates it itself and
computes its balance. The next sync writes HCP's date and balance back to the row, as its
plan says, so that the books agree with HCP (a cold bookkeeper's trial found the row keeping
its own date and balance for good while every sync said all members agreed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.books import Hcp, books_config, read_csv_rows, write_csv_rows
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]


def test_an_invoice_typed_into_the_books_takes_hcps_date_and_balance(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox], cli: Cli
) -> None:
    box = sandbox_factory(seed=6)
    hcp = Hcp(box)
    config = books_config(tmp_path, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    invoices = tmp_path / "books" / "invoices.csv"
    sheet = read_csv_rows(invoices)
    customer = next(r for r in sheet.rows if r["Customer Email"])["Customer Email"]
    typed = dict.fromkeys(sheet.header, "")
    typed.update(
        {
            "Invoice #": "7001",
            "Customer Email": customer,
            "Status": "sent",
            "Amount": "500.00",
            "Balance": "1082.50",  # copied from another row
            "Created": "2025-12-15",  # backdated: HCP dates it today
        }
    )
    write_csv_rows(invoices, sheet.header, [*sheet.rows, typed])

    created = cli("sync", "--config", config)
    assert_clean_exit(created, 0)
    [made] = [i for i in hcp.invoices() if i["invoice_number"] == "7001"]
    assert made["outstanding_balance"] == 50000

    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    assert "invoice 7001" in dry.stdout and "update on books" in dry.stdout, dry.stdout
    assert "balance: $1,082.50 → $500.00" in dry.stdout.replace("'", ""), dry.stdout
    assert_clean_exit(cli("sync", "--config", config), 0)
    [row] = [r for r in read_csv_rows(invoices).rows if r["Invoice #"] == "7001"]
    assert row["Balance"] == "500.00"
    assert row["Created"] == made["created_at"][:10]  # the config's zone: UTC
    again = cli("sync", "--config", config)
    assert_clean_exit(again, 0)
    assert "Nothing to do" in again.stdout, again.stdout
