"""``reconcile-report`` down to the lines, the tax view and the unbilled jobs, end to end
through the ``syncengine`` command against a seeded Housecall Pro sandbox (a process of its
own) and books in a CSV folder:

- after a sync the report is clean, every invoice's lines included (JSON and text);
- ``--tax`` gives per month and member taxable and non-taxable sales and tax that agree, and
  HCP's tax per month is the sum of its sales invoices' tax; ``--from`` narrows it, and a bad
  date is a usage error (exit 2);
- a line's amount typed by hand in the books is named, with the sum against the subtotal
  (exit 1), and the tax view names the month it moves;
- ``--unbilled`` lists a complete job created without an invoice (the seed bills every
  complete job), though the pipeline does not sync jobs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.books import Hcp, books_config, read_csv_rows, write_csv_rows
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 16
ENTITIES = '["customers", "invoices", "payments", "line_items"]'


def setup(tmp_path: Path, box: Sandbox) -> tuple[Path, Path]:
    folder = tmp_path / "work"
    config = books_config(folder, box.port, path="books")
    text = config.read_text(encoding="utf-8")
    old = 'entities = ["customers", "invoices", "payments"]'
    assert text.count(old) == 1
    config.write_text(text.replace(old, f"entities = {ENTITIES}"), encoding="utf-8")
    return config, folder / "books"


def report(cli: Cli, config: Path, *args: str, code: int = 0) -> dict[str, Any]:
    run = cli("reconcile-report", "--config", config, "--json", *args)
    assert_clean_exit(run, code)
    found: dict[str, Any] = json.loads(run.stdout)
    return found


def test_lines_tax_and_unbilled_through_the_cli(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    config, books = setup(tmp_path, box)
    assert_clean_exit(cli("sync", "--config", config, "--json"), 0)

    clean = report(cli, config)
    assert clean["clean"], clean
    with_lines = [x for x in clean["invoices"] if x["members"]["books"].get("lines")]
    assert with_lines, "the seed should give invoices lines"
    text = cli("reconcile-report", "--config", config)
    assert_clean_exit(text, 0)
    assert "The books reconcile" in text.stdout

    tax = report(cli, config, "--tax")
    assert tax["agree"], tax
    want: dict[str, int] = defaultdict(int)
    for invoice in hcp.invoices():
        if invoice["status"] not in ("draft", "voided", "canceled"):
            want[invoice["created_at"][:7]] += int(invoice.get("tax_amount") or 0)
    assert {m["month"]: m["members"]["hcp"]["tax"] for m in tax["months"]} == dict(want)
    for month in tax["months"]:
        assert month["members"]["hcp"] == month["members"]["books"], month
    assert sum(m["members"]["hcp"]["taxable"] for m in tax["months"]) > 0
    last = tax["months"][-1]["month"]
    narrowed = report(cli, config, "--tax", "--from", f"{last}-01")
    assert [m["month"] for m in narrowed["months"]] == [last]
    bad = cli("reconcile-report", "--config", config, "--tax", "--to", "31/12/2026")
    assert_clean_exit(bad, 2)
    assert "--to '31/12/2026' is not a date" in bad.stderr

    # a line's amount typed by hand: one cent more
    found = read_csv_rows(books / "line_items.csv")
    rows = found.filled()
    row = rows[0]
    number = str(row["Invoice #"])
    row["Amount"] = str(Decimal(str(row["Amount"]).replace(",", "")) + Decimal("0.01"))
    write_csv_rows(books / "line_items.csv", list(found.header), rows)
    broken = report(cli, config, code=1)
    [line] = [x for x in broken["invoices"] if x["invoice_number"] == number]
    kinds = {(d["kind"], d["member"]) for d in line["disagreements"]}
    assert {("line_amount", "books"), ("lines", "books"), ("line", "")} <= kinds, kinds
    moved = report(cli, config, "--tax", code=1)
    assert [m["month"] for m in moved["months"] if not m["agree"]], moved

    # a complete job nobody billed
    customer = hcp.customers()[0]["id"]
    created = hcp.http.post(
        "/jobs", json={"customer_id": customer, "work_status": "complete", "description": "Leak"}
    )
    job_id = created.raise_for_status().json()["id"]
    unbilled = report(cli, config, "--unbilled")
    assert unbilled["members"] == ["hcp"]
    assert [j["id"] for j in unbilled["unbilled"]] == [job_id]
    assert unbilled["unbilled"][0]["description"] == "Leak"
    listed = cli("reconcile-report", "--config", config, "--unbilled")
    assert_clean_exit(listed, 0)
    assert "1 complete job without an invoice" in listed.stdout
