"""A 200 KiB cell in the sheet, through the real ``syncengine`` command and the sandbox.

It once stopped the whole run (the csv module's 128 KiB field limit). It is a row error
naming the file, the line and the column (exit 1); the other rows sync; the row's customer
is neither changed nor deleted in HCP; and the row is kept in the file byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
BIG = "pasted by mistake " * (200 * 1024 // 18 + 1)  # just over 200 KiB


def test_a_200_kib_cell_is_a_row_error_and_the_rest_syncs(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=6)
    config = hcp_books_config(tmp_path, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    with_email = [i for i, r in enumerate(rows) if r["Email"]]
    big_index, edited_index = with_email[0], with_email[1]
    big_customer = box.customer_by_email(rows[big_index]["Email"])
    rows[big_index]["Company"] = BIG
    rows[edited_index]["Mobile"] = "(555) 010-4477"
    rows.append({"First Name": "Nadia", "Last Name": "Newrow", "Email": "nadia@example.org"})
    write_csv(csv_path, rows)
    before = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    big_line = before[big_index + 1]
    assert BIG in big_line
    box.clear_requests()

    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    assert (
        f"error customers · books: customers.csv line {big_index + 2}: the Company cell holds "
        f"{len(BIG):,} characters, more than the 131,072 (128 KiB) a cell may hold; shorten it "
        "(the row is left as it is and not synced until then)"
    ) in done.stdout, str(done)
    assert "Traceback" not in done.output

    # The other rows synced: the edited mobile reached HCP, the new row was created and linked.
    assert box.customer_by_email(rows[edited_index]["Email"])["mobile_number"] == "+15550104477"
    nadia = box.customer_by_email("nadia@example.org")
    # The big row's customer was neither changed nor deleted.
    assert sorted(w["method"] for w in box.writes()) == ["POST", "PUT"], box.writes()
    assert box.customer(big_customer["id"]) == big_customer

    # Nothing else in the file was lost: every line is as written but the new row's, which
    # got its Sync ID; the big row is there byte for byte.
    after = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert after[big_index + 1] == big_line
    assert after[:-1] == before[:-1]
    assert re.fullmatch(r"[0-9a-f]{32}", after[-1].removesuffix(before[-1])), after[-1]
    assert nadia["first_name"] == "Nadia"

    box.clear_requests()
    again = cli("sync", "--config", config, "--json")
    assert_clean_exit(again, 1)
    assert json.loads(again.stdout)["entities"]["customers"]["errors"] == 1
    assert box.writes() == []
    assert csv_path.read_text(encoding="utf-8").splitlines(keepends=True) == after
