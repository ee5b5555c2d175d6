"""The counts a run reports are the writes that took effect, through the real ``syncengine``
command and the sandbox: a failed create is counted as failed, never as a create (in the
summary, the JSON, ``status`` and ``runs``), and a run with an error never says "Nothing to
do: every member agrees"."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.csvfiles import read_csv_table, write_csv
from tests.integration.books import books_config
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def test_a_failed_create_is_counted_as_failed_not_as_a_create(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=3)
    customers = box.customers()
    assert len(customers) == 3
    # A company name a cp1252 file cannot hold: the sheet's create of that customer fails.
    box.update_customer(customers[0]["id"], {"company": "Rocket \U0001f680 Repairs"})
    config = hcp_books_config(tmp_path, box.port, books_extra='encoding = "cp1252"')

    done = cli("sync", "--config", config, "--json")
    assert_clean_exit(done, 1)
    counts = json.loads(done.stdout)["entities"]["customers"]
    assert counts["books"] == {"create": 2, "update": 0, "delete": 0, "link": 0}
    assert counts["hcp"] == {"create": 0, "update": 0, "delete": 0, "link": 0}
    assert counts["failed"] == 1
    assert [p["kind"] for p in counts["problems"]] == ["failed"]
    assert (
        "cannot be stored in customers.csv, which is written as cp1252"
        in (counts["problems"][0]["message"])
    )
    sheet = (tmp_path / "books" / "customers.csv").read_text(encoding="cp1252").splitlines()
    assert len(sheet) == 1 + 2  # the header and the two rows created

    status = cli("status", "--config", config, "--json")
    assert_clean_exit(status, 0)
    last = json.loads(status.stdout)[0]["last_run"]
    assert last["outcome"] == "errors"
    assert last["counts"]["customers"]["books"]["create"] == 2
    assert last["counts"]["customers"]["failed"] == 1
    text = cli("status", "--config", config)
    assert_clean_exit(text, 0)
    assert "customers: books created 2; 1 write failed" in text.stdout, text.stdout
    history = cli("runs", "--config", config)
    assert_clean_exit(history, 0)
    assert "customers: books created 2; 1 write failed" in history.stdout, history.stdout

    # The summary of the next run (which tries the create again) counts it the same way.
    again = cli("sync", "--config", config)
    assert_clean_exit(again, 1)
    row = next(line for line in again.stdout.splitlines() if "│ books" in line)
    cells = [cell.strip() for cell in row.split("│")[1:8]]
    assert cells == ["customers", "books", "2", "0", "0", "0", "0"], again.stdout
    assert "customers: 1 write failed" in again.stdout
    assert "Nothing to do" not in again.stdout


def test_a_row_error_with_nothing_else_to_do_does_not_say_nothing_to_do(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=3)
    config = hcp_books_config(tmp_path, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    clean = cli("sync", "--config", config)
    assert_clean_exit(clean, 0)
    assert "Nothing to do: every member agrees." in clean.stdout

    csv_path = tmp_path / "books" / "customers.csv"
    lines = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].rstrip("\n") + ",spilled,over\n"
    csv_path.write_text("".join(lines), encoding="utf-8")
    for args in ((), ("--dry-run",)):
        done = cli("sync", "--config", config, *args)
        assert_clean_exit(done, 1)
        assert "error customers · books: customers.csv line 3:" in done.stdout, str(done)
        assert "Nothing to do" not in done.stdout, done.stdout


def test_a_skipped_write_is_never_called_every_member_agreeing(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    """HCP takes no invoice updates: an amount edited in the sheet is a skipped write, and
    the run says the members agree but for it, not that there is nothing to do."""
    box = sandbox_factory(seed=3)
    config = books_config(tmp_path, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    invoices = tmp_path / "books" / "invoices.csv"
    table = read_csv_table(invoices)
    table.rows[0]["Amount"] = f"{float(table.rows[0]['Amount']) + 1:.2f}"
    write_csv(invoices, table.rows, table.header, newline=table.newline)
    done = cli("sync", "--config", config)
    assert "1 write skipped" in done.stdout, str(done)
    assert "Nothing to do" not in done.stdout, str(done)
    assert (
        "Nothing to write: every member agrees but for 1 write a member cannot take (skipped)."
        in done.stdout
    ), str(done)
