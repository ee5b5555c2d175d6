"""Issue 10, cases 2 and 3, through the real ``syncengine`` command against the sandbox: a
bookkeeper changes the structure of the books, not only their cells.

- Case 2: a column the sync uses named twice (a second ``Amount`` in the invoices), or the
  ``Sync ID`` column removed from the customers. ``sync`` (and its dry run) refuses with a
  structure error naming each file, header and fix: exit 2, nothing written anywhere (no
  request to HCP but reads, no file touched, not even the customers, which come first).
  ``validate`` reports the same. Once the person fixes the files, the sync goes on.
- Case 3: the ``Email`` column renamed. It is never read as cleared: ``probe``, the dry run
  and ``sync`` say the column is added back and filled; HCP keeps every e-mail; the renamed
  column keeps its cells; the next sync has nothing to do.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.books import ENTITIES, books_config
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config
from tests.statefile import journal_counts, links

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def rows_of(path: Path) -> list[list[str]]:
    return [list(r) for r in csv.reader(io.StringIO(path.read_text(encoding="utf-8")))]


def write_rows(path: Path, rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def test_case_2_a_wrong_sheet_structure_stops_the_whole_run_with_nothing_written(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=4)
    config = books_config(tmp_path, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    books = tmp_path / "books"
    good = {p.name: p.read_bytes() for p in books.iterdir()}
    # an edit in HCP waits to be written to the customers sheet
    someone = box.customers()[0]
    box.update_customer(someone["id"], {"first_name": "Renamed"})

    invoices = rows_of(books / "invoices.csv")
    amount = invoices[0].index("Amount")
    # a stale copy of the amounts pasted in front of them, under the same name
    write_rows(books / "invoices.csv", [[r[amount], *r] for r in invoices])
    customers = rows_of(books / "customers.csv")
    write_rows(books / "customers.csv", [r[1:] for r in customers])  # Sync ID column deleted
    broken = {p.name: p.read_bytes() for p in books.iterdir()}
    db = tmp_path / "state.db"
    state = ({e: links(db, e) for e in ENTITIES}, journal_counts(db))
    box.clear_requests()

    for args in (("sync", "--dry-run"), ("sync",), ("validate",)):
        done = cli(*args, "--config", config)
        assert_clean_exit(done, 2)
        assert (
            f"customers.csv: the Sync ID column is missing, but {len(customers) - 1} "
            "customers are linked to it; restore the column" in done.stderr
        ), str(done)
        assert (
            f"invoices.csv: 2 columns are named Amount (columns 1 and {amount + 2}), so the "
            "sync cannot tell which one holds Amount; rename or delete one of them"
        ) in done.stderr, str(done)
        lines = done.stderr.splitlines()
        if args[0] == "sync":
            assert "structure error: 2 problems:" in lines, str(done)
            assert "nothing was read into a plan and nothing was written" in done.stderr
        else:
            assert "structure error (2 problems; nothing was written):" in lines, str(done)
        assert done.stdout == ""
        assert {p.name: p.read_bytes() for p in books.iterdir()} == broken
        assert box.writes() == []
        assert ({e: links(db, e) for e in ENTITIES}, journal_counts(db)) == state

    # probe shows the structure error with the same exit code
    probe = cli("probe", "--config", config, "--connector", "books")
    assert_clean_exit(probe, 2)
    assert "2 columns are named Amount" in probe.stdout, str(probe)

    # the person undoes both changes: the waiting edit is synced, nothing else changes
    for name, data in good.items():
        (books / name).write_bytes(data)
    fixed = cli("sync", "--config", config)
    assert_clean_exit(fixed, 0)
    assert box.writes() == []
    assert "Renamed" in (books / "customers.csv").read_text()
    assert (books / "invoices.csv").read_bytes() == good["invoices.csv"]


def test_case_3_a_renamed_email_column_is_added_back_and_filled_never_cleared(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=3)
    config = hcp_books_config(tmp_path, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    emails = sorted(c["email"] for c in box.customers())
    path = tmp_path / "books" / "customers.csv"
    rows = rows_of(path)
    column = rows[0].index("Email")
    rows[0][column] = "E-mail"
    write_rows(path, rows)
    renamed = path.read_bytes()
    box.clear_requests()
    said = "customers.csv: column Email is missing; it {} added at the end of the header and "
    filled = f"filled from the other members ({len(rows) - 1} rows)"

    probe = cli("probe", "--config", config, "--connector", "books")
    assert_clean_exit(probe, 0)
    assert (
        "customers.csv: column Email is missing; a sync adds it at the end of the header and "
        "fills it from the other members (email), unless rows here wait for it: customers "
        "are matched by it, so rows the sync cannot link yet keep it from being added until "
        "a person puts it back (`syncengine sync --dry-run` tells)" in probe.stdout
    ), str(probe)

    dry = cli("sync", "--config", config, "--dry-run", "--details")
    assert_clean_exit(dry, 0)
    assert said.format("would be") + filled in dry.stdout, str(dry)
    assert f"email: (empty) → '{emails[0]}'" in dry.stdout, str(dry)
    assert "Nothing to do" not in dry.stdout
    assert path.read_bytes() == renamed

    done = cli("sync", "--config", config)
    assert_clean_exit(done, 0)
    assert said.format("is") + filled in done.stdout, str(done)
    assert box.writes() == []
    assert sorted(c["email"] for c in box.customers()) == emails
    after = rows_of(path)
    assert after[0][-1] == "Email" and after[0][column] == "E-mail"
    assert sorted(r[-1] for r in after[1:]) == emails
    assert [r[column] for r in after[1:]] == [r[column] for r in rows[1:]]

    again = cli("sync", "--config", config)
    assert_clean_exit(again, 0)
    assert "Nothing to do: every member agrees." in again.stdout, str(again)
    assert "column Email is missing" not in again.output


def test_probe_of_a_member_that_cannot_be_read_now_exits_4(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=4)
    config = books_config(tmp_path, box.port)
    box.stop()
    probe = cli("probe", "--config", config, "--connector", "hcp")
    assert_clean_exit(probe, 4)
    assert "cannot connect" in probe.stdout, str(probe)
