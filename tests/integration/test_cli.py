"""The ``syncengine`` command end to end: the console script as a subprocess, the Housecall Pro
sandbox as another subprocess on loopback, the spreadsheet and state store as real files.

Exit codes under test: 0 success · 1 record-level errors or unresolved conflicts · 2
configuration or usage error (nothing read or written) · 3 aborted by a safety guard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import (
    CliResult,
    Sandbox,
    assert_clean_exit,
    hcp_books_config,
)
from tests.statefile import state_files

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def json_of(result: CliResult) -> dict[str, Any]:
    try:
        value = json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(
            f"--json printed something that is not one JSON value: {exc}\n{result}"
        ) from None
    assert isinstance(value, dict), str(result)
    return value


def assert_sync_json_shape(
    obj: dict[str, Any],
    *,
    pipeline: str,
    dry_run: bool,
    members: tuple[str, ...] = ("hcp", "books"),
) -> dict[str, Any]:
    """The documented ``--json`` shape; returns ``entities["customers"]``."""
    assert obj["pipeline"] == pipeline
    assert obj["dry_run"] is dry_run
    assert set(obj["entities"]) == {"customers"}
    customers = obj["entities"]["customers"]
    for member in members:
        counts = customers[member]
        assert {k: type(counts[k]) for k in ("create", "update", "delete")} == {
            "create": int,
            "update": int,
            "delete": int,
        }, counts
    assert isinstance(customers["conflicts"], int)
    assert isinstance(customers["errors"], int)
    return dict(customers)


def synced_pair(
    cli: Cli, sandbox_factory: SandboxFactory, folder: Path, *, seed: int, **config: Any
) -> tuple[Sandbox, Path]:
    """A sandbox with ``seed`` customers, a config, and a first sync that copied them all
    into ``folder/books/customers.csv``."""
    box = sandbox_factory(seed=seed)
    path = hcp_books_config(folder, box.port, **config)
    first = cli("sync", "--config", path)
    assert_clean_exit(first, 0)
    rows = read_csv(folder / "books" / "customers.csv")
    assert len(rows) == seed and all(r["Sync ID"] for r in rows), rows
    box.clear_requests()
    return box, path


# ------------------------------------------------------------------------ config.example.toml


def test_example_config_runs_as_is_against_the_sandbox(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(api_key="sandbox-key", seed=50)
    folder = tmp_path / "example"
    folder.mkdir()
    original = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert original.count('"http://127.0.0.1:8765"') == 1
    config = folder / "config.example.toml"
    # Only the port changes: a fixed 8765 would collide between tests running in parallel.
    config.write_text(
        original.replace('"http://127.0.0.1:8765"', f'"http://127.0.0.1:{box.port}"'),
        encoding="utf-8",
    )
    state = folder / "syncengine-state.db"
    csv_path = folder / "books" / "customers.csv"

    checked = cli("validate", "--config", config, api_key="sandbox-key")
    assert_clean_exit(checked, 0)
    assert "ok" in checked.stdout and "hcp-books" in checked.stdout

    dry = cli("sync", "--config", config, "--dry-run", api_key="sandbox-key")
    assert_clean_exit(dry, 0)
    # 50 customers with their invoices and payments: the summary first, then a hint instead
    # of every record
    assert dry.stdout.startswith("Dry run of pipeline hcp-books\nwhat hcp-books would do\n")
    assert "+ create on books" not in dry.stdout
    assert re.search(
        r"^\d+ records would change; --details to list every record$", dry.stdout, re.M
    ), dry.stdout
    assert "Dry run: nothing was written" in dry.stdout
    detailed = cli("sync", "--config", config, "--dry-run", "--details", api_key="sandbox-key")
    assert_clean_exit(detailed, 0)
    assert "+ create on books" in detailed.stdout
    assert detailed.stdout.index("what hcp-books would do") < detailed.stdout.index(
        "+ create on books"
    )
    assert not state.exists(), "a dry run created the state store"
    assert not csv_path.exists(), "a dry run created the spreadsheet"
    assert box.requests() and not box.writes()

    first = cli("sync", "--config", config, api_key="sandbox-key")
    assert_clean_exit(first, 0)
    rows = read_csv(csv_path)
    assert len(rows) == 50
    assert all(r["Sync ID"] for r in rows)
    hcp_emails = {c.get("email") for c in box.customers() if c.get("email")}
    assert {r["Email"] for r in rows if r["Email"]} == hcp_emails
    assert state.exists()
    assert not box.writes(), "HCP already had everything; nothing should be written to it"

    box.clear_requests()
    csv_bytes = csv_path.read_bytes()
    second = cli("sync", "--config", config, api_key="sandbox-key")
    assert_clean_exit(second, 0)
    assert "Nothing to do" in second.stdout
    assert csv_path.read_bytes() == csv_bytes
    assert box.requests() and not box.writes()
    # Relative paths resolve against the config's folder, not the working directory.
    assert list((tmp_path / "cwd").iterdir()) == []


# ------------------------------------------------------------------------------- dry run


def test_dry_run_shows_per_field_diffs_and_writes_nothing_anywhere(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, config = synced_pair(cli, sandbox_factory, tmp_path, seed=6)
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    edited = next(row for row in rows if row["Email"])  # found again in HCP by its e-mail
    old_company = edited["Company"]
    edited["Company"] = "Dry Run Plumbing LLC"
    rows.append(
        {"First Name": "Nora", "Last Name": "Newcombe", "Email": "nora.newcombe@example.org"}
    )
    csv_bytes = write_csv(csv_path, rows)
    state_before = state_files(tmp_path)
    assert "state.db" in state_before

    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    out = dry.stdout
    # Per record, per field: the edited row's company, and every field of the new row.
    shown_old = repr(old_company) if old_company else "(empty)"
    assert f"company: {shown_old} → 'Dry Run Plumbing LLC'" in out, out
    assert "~ update on hcp" in out
    assert "Nora Newcombe" in out and "+ create on hcp" in out
    assert "email: 'nora.newcombe@example.org'" in out
    assert "first_name: 'Nora'" in out and "last_name: 'Newcombe'" in out

    as_json = cli("sync", "--config", config, "--dry-run", "--json")
    assert_clean_exit(as_json, 0)
    customers = assert_sync_json_shape(json_of(as_json), pipeline="hcp-books", dry_run=True)
    assert {k: customers["hcp"][k] for k in ("create", "update", "delete")} == {
        "create": 1,
        "update": 1,
        "delete": 0,
    }
    assert customers["books"]["create"] == 0 and customers["books"]["delete"] == 0
    assert customers["conflicts"] == 0 and customers["errors"] == 0

    # Nothing anywhere: the member API saw only reads, the file and the state store are
    # byte for byte as they were.
    assert box.requests(), "the dry run should have read HCP"
    assert box.writes() == []
    assert csv_path.read_bytes() == csv_bytes
    assert state_files(tmp_path) == state_before
    assert box.customer_by_email(edited["Email"]).get("company") != "Dry Run Plumbing LLC"


# ------------------------------------------------------------------ --pipeline, --entity, --json


def test_pipeline_and_entity_options_and_json_summary_of_a_real_sync(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=7)
    other = """
[connectors.sheet_a]
type = "spreadsheet"
path = "sheet-a"

[connectors.sheet_b]
type = "spreadsheet"
path = "sheet-b"

[[pipelines]]
name = "sheets"
members = ["sheet_a", "sheet_b"]
entities = ["customers"]
"""
    config = hcp_books_config(tmp_path, box.port, extra=other)
    a_rows = [{"First Name": "Ada", "Last Name": "Sheet", "Email": "ada.sheet@example.org"}]
    write_csv(tmp_path / "sheet-a" / "customers.csv", a_rows)
    a_bytes = (tmp_path / "sheet-a" / "customers.csv").read_bytes()

    unknown_pipeline = cli("sync", "--config", config, "--pipeline", "hcp-bookz")
    assert_clean_exit(unknown_pipeline, 2)
    assert "hcp-bookz" in unknown_pipeline.stderr and "hcp-books" in unknown_pipeline.stderr
    unknown_entity = cli(
        "sync", "--config", config, "--pipeline", "hcp-books", "--entity", "invoices"
    )
    assert_clean_exit(unknown_entity, 2)
    assert "invoices" in unknown_entity.stderr
    assert box.requests() == [], "a usage error must read nothing"
    assert not (tmp_path / "state.db").exists()

    done = cli(
        "sync", "--config", config, "--pipeline", "hcp-books", "--entity", "customers", "--json"
    )
    assert_clean_exit(done, 0)
    customers = assert_sync_json_shape(json_of(done), pipeline="hcp-books", dry_run=False)
    assert {k: customers["books"][k] for k in ("create", "update", "delete")} == {
        "create": 7,
        "update": 0,
        "delete": 0,
    }
    assert {k: customers["hcp"][k] for k in ("create", "update", "delete")} == {
        "create": 0,
        "update": 0,
        "delete": 0,
    }
    assert customers["conflicts"] == 0 and customers["errors"] == 0
    assert len(read_csv(tmp_path / "books" / "customers.csv")) == 7
    # The other pipeline did not run.
    assert (tmp_path / "sheet-a" / "customers.csv").read_bytes() == a_bytes
    assert not (tmp_path / "sheet-b").exists()

    again = cli("sync", "--config", config, "--pipeline", "hcp-books", "--json")
    assert_clean_exit(again, 0)
    customers = assert_sync_json_shape(json_of(again), pipeline="hcp-books", dry_run=False)
    for member in ("hcp", "books"):
        assert {k: customers[member][k] for k in ("create", "update", "delete")} == {
            "create": 0,
            "update": 0,
            "delete": 0,
        }


# ------------------------------------------------------------------------------ conflicts


def test_conflict_is_parked_listed_resolved_and_written(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, config = synced_pair(
        cli,
        sandbox_factory,
        tmp_path,
        seed=6,
        conflicts='default = ["hcp"]\n"customers.company" = ["manual"]',
    )
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    row = next(r for r in rows if r["Email"])
    customer = box.customer_by_email(row["Email"])
    box.update_customer(customer["id"], {"company": "HCP Side Heating Inc"})
    row["Company"] = "Books Side Heating LLC"
    write_csv(csv_path, rows)

    parked = cli("sync", "--config", config)
    assert_clean_exit(parked, 1)
    assert "conflict" in parked.stdout and "conflicts list" in parked.stdout
    assert box.customer(customer["id"]).get("company") == "HCP Side Heating Inc"

    listed = cli("conflicts", "list", "--config", config)
    assert_clean_exit(listed, 0)
    assert "company" in listed.stdout
    assert "'HCP Side Heating Inc'" in listed.stdout
    assert "'Books Side Heating LLC'" in listed.stdout

    as_json = cli("conflicts", "list", "--config", config, "--json")
    assert_clean_exit(as_json, 0)
    conflicts = json.loads(as_json.stdout)
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict["pipeline"] == "hcp-books" and conflict["entity"] == "customers"
    assert conflict["field"] == "company"
    assert conflict["values"] == {"hcp": "HCP Side Heating Inc", "books": "Books Side Heating LLC"}
    assert f"#{conflict['id']}" in listed.stdout

    # Still parked: a second sync neither settles it nor writes either value.
    still = cli("sync", "--config", config)
    assert_clean_exit(still, 1)
    assert box.customer(customer["id"]).get("company") == "HCP Side Heating Inc"

    wrong_member = cli(
        "conflicts", "resolve", str(conflict["id"]), "--take", "crm", "--config", config
    )
    assert_clean_exit(wrong_member, 2)
    assert "hcp" in wrong_member.stderr and "books" in wrong_member.stderr

    resolved = cli(
        "conflicts", "resolve", str(conflict["id"]), "--take", "books", "--config", config
    )
    assert_clean_exit(resolved, 0)
    assert "Books Side Heating LLC" in resolved.stdout

    settled = cli("sync", "--config", config)
    assert_clean_exit(settled, 0)
    assert box.customer(customer["id"]).get("company") == "Books Side Heating LLC"
    after = {r["Sync ID"]: r for r in read_csv(csv_path)}
    assert after[row["Sync ID"]]["Company"] == "Books Side Heating LLC"

    none_left = cli("conflicts", "list", "--config", config, "--json")
    assert_clean_exit(none_left, 0)
    assert json.loads(none_left.stdout) == []
    again = cli("conflicts", "resolve", str(conflict["id"]), "--take", "books", "--config", config)
    assert_clean_exit(again, 2)
    assert "no open conflict" in again.stderr


# ------------------------------------------------------------------------- safety guards


def test_mass_delete_guard_stops_with_exit_3_and_writes_nothing(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, config = synced_pair(cli, sandbox_factory, tmp_path, seed=20)
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    kept = rows[:4]
    csv_bytes = write_csv(csv_path, kept)

    stopped = cli("sync", "--config", config)
    assert_clean_exit(stopped, 3)
    assert "safety guard" in stopped.output
    assert "--allow-mass-delete" in stopped.output
    assert box.writes() == [], "the guard must stop before any write"
    assert len(box.customers()) == 20
    assert csv_path.read_bytes() == csv_bytes

    as_json = cli("sync", "--config", config, "--json")
    assert_clean_exit(as_json, 3)
    assert json_of(as_json)["pipeline"] == "hcp-books"
    assert box.writes() == []

    allowed = cli("sync", "--config", config, "--allow-mass-delete")
    assert_clean_exit(allowed, 0)
    deletes = [r for r in box.writes() if r["method"] == "DELETE"]
    assert len(deletes) == 16
    remaining = {c.get("email") for c in box.customers()}
    assert remaining == {r["Email"] or None for r in kept}

    box.clear_requests()
    quiet = cli("sync", "--config", config)
    assert_clean_exit(quiet, 0)
    assert "Nothing to do" in quiet.stdout
    assert box.writes() == []


# ----------------------------------------------------------------------- status and usage


def test_status_reports_runs_and_open_conflicts(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=3)
    config = hcp_books_config(
        tmp_path, box.port, conflicts='default = ["hcp"]\n"customers.company" = ["manual"]'
    )
    never = cli("status", "--config", config)
    assert_clean_exit(never, 0)
    assert "hcp-books" in never.stdout and "never run" in never.stdout

    assert_clean_exit(cli("sync", "--config", config), 0)
    rows = read_csv(tmp_path / "books" / "customers.csv")
    row = next(r for r in rows if r["Email"])
    box.update_customer(box.customer_by_email(row["Email"])["id"], {"company": "One Co"})
    row["Company"] = "Other Co"
    write_csv(tmp_path / "books" / "customers.csv", rows)
    assert_clean_exit(cli("sync", "--config", config), 1)

    # status and conflicts only read the state store: they need no credentials.
    shown = cli("status", "--config", config, api_key=None)
    assert_clean_exit(shown, 0)
    assert "last run" in shown.stdout and "conflicts" in shown.stdout
    assert "open conflicts: 1" in shown.stdout
    listed = cli("conflicts", "list", "--config", config, api_key=None)
    assert_clean_exit(listed, 0)
    assert "'One Co'" in listed.stdout and "'Other Co'" in listed.stdout


def test_usage_errors_exit_2_without_a_traceback(tmp_path: Path, cli: Cli) -> None:
    missing = cli("sync", "--config", tmp_path / "nope.toml")
    assert_clean_exit(missing, 2)
    assert "nope.toml" in missing.stderr and "not found" in missing.stderr

    no_command = cli("frobnicate")
    assert_clean_exit(no_command, 2)

    config = hcp_books_config(tmp_path, 9)  # never contacted
    bad_level = cli("sync", "--config", config, "--log-level", "loud")
    assert_clean_exit(bad_level, 2)
    assert "--log-level" in bad_level.stderr
    bad_id = cli("conflicts", "resolve", "not-a-number", "--take", "books", "--config", config)
    assert_clean_exit(bad_id, 2)
    assert not (tmp_path / "state.db").exists()
    assert not (tmp_path / "books").exists()


# -------------------------------------------------------------------------------- the demo


def test_demo_runs_dry_run_sync_and_a_quiet_second_sync(tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "demo"
    done = cli("demo", "--dir", folder, api_key=None)
    assert_clean_exit(done, 0)
    out = done.stdout
    assert "dry-run" in out and "Dry run: nothing was written" in out
    assert "Nothing to do" in out
    # The dry run comes before the real sync, and the quiet sync last.
    assert out.index("Dry run of pipeline") < out.index("Sync of pipeline")
    assert out.rindex("Nothing to do") > out.index("Sync of pipeline")

    csv_path = folder / "books" / "customers.csv"
    rows = read_csv(csv_path)
    assert rows and all(r["Sync ID"].strip() for r in rows), rows
    assert "Notes" in rows[0]
    assert sum(r["Notes"] == "pays by check" for r in rows) == 4
    assert any(r["Notes"] == "new this week" for r in rows)
    assert (folder / "config.toml").exists()

    # The demo leaves a working setup: conflicts and status read it without credentials.
    listed = cli("conflicts", "list", "--config", folder / "config.toml", api_key=None)
    assert_clean_exit(listed, 0)
    assert "mobile_number" in listed.stdout

    # Running it again starts over in the same folder.
    redo = cli("demo", "--dir", folder, api_key=None)
    assert_clean_exit(redo, 0)
    assert all(r["Sync ID"] for r in read_csv(csv_path))
