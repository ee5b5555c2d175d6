"""What the ``syncengine`` command prints for people: the dry run (summary first, details by
threshold, links apart from updates, write-only fields), ``status`` and ``runs`` (local
times, labelled counts) and ``conflicts list`` (who the conflict is about). The real command
as a subprocess, real CSV files and state store; no sandbox is needed: two spreadsheets."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from syncengine.render import DETAILS_UP_TO
from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import CliResult, assert_clean_exit
from tests.statefile import state_files

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]


def two_sheets(folder: Path, *, b_mapping: str = "", conflicts: str = 'default = ["a"]') -> Path:
    """Sheets ``a`` and ``b`` syncing customers; ``b_mapping`` replaces b's mapping."""
    mappings = ""
    if b_mapping:
        (folder / "b-customers.toml").write_text(b_mapping, encoding="utf-8")
        mappings = '[pipelines.mappings]\nb = { customers = "b-customers.toml" }\n'
    config = folder / "config.toml"
    config.write_text(
        f"""\
[state]
url = "sqlite:///state.db"

[connectors.a]
type = "spreadsheet"
path = "a"

[connectors.b]
type = "spreadsheet"
path = "b"

[[pipelines]]
name = "sheets"
members = ["a", "b"]
entities = ["customers"]
{mappings}
[pipelines.conflicts]
{conflicts}
""",
        encoding="utf-8",
    )
    return config


def person(i: int, **extra: str) -> dict[str, str]:
    return {
        "First Name": f"Ada{i}",
        "Last Name": "Lovelace",
        "Email": f"ada{i}@example.org",
        **extra,
    }


def lines_of(result: CliResult) -> list[str]:
    return result.stdout.splitlines()


# ------------------------------------------------------------------------------ dry run


def test_a_small_dry_run_prints_the_summary_first_then_every_record(
    tmp_path: Path, cli: Cli
) -> None:
    config = two_sheets(tmp_path)
    write_csv(tmp_path / "a" / "customers.csv", [person(1), person(2)])
    # b already has Ada1 (no Sync ID): the sync only links it
    write_csv(tmp_path / "b" / "customers.csv", [person(1)])

    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    out = lines_of(dry)
    assert out[:2] == ["Dry run of pipeline sheets", "what sheets would do"]
    header = next(line for line in out if "entity" in line)
    assert re.findall(r"\w+", header) == [
        "entity",
        "member",
        "read",
        "create",
        "update",
        "link",
        "delete",
    ]
    rows = [re.findall(r"[\w-]+", line) for line in out if "customers" in line and "│" in line]
    # Ada1 only gets a Sync ID on a: a link, not an update; Ada2 is created on b
    assert rows == [
        ["customers", "a", "2", "0", "0", "2", "0"],
        ["customers", "b", "1", "1", "0", "1", "0"],
    ], dry.stdout
    summary_end = out.index(next(line for line in out if line.startswith("└")))
    details = out.index(next(line for line in out if "every record, field by field" in line))
    assert summary_end < details
    assert out[details + 1 :] == [
        "customers · Ada1 Lovelace <ada1@example.org>",
        "  = link on a (write Sync ID)",
        "  = link on b (write Sync ID)",
        "customers · Ada2 Lovelace <ada2@example.org>",
        "  = link on a (write Sync ID)",
        "  + create on b",
        "      email: 'ada2@example.org'",
        "      first_name: 'Ada2'",
        "      last_name: 'Lovelace'",
        "Dry run: nothing was written to any member or to the state store.",
    ]

    quiet = cli("sync", "--config", config, "--dry-run", "--no-details")
    assert_clean_exit(quiet, 0)
    assert "field by field" not in quiet.stdout and "link on" not in quiet.stdout
    assert lines_of(quiet)[-2:] == [
        "2 records would change; --details to list every record",
        "Dry run: nothing was written to any member or to the state store.",
    ]
    # the JSON keeps its keys; "link" is new and says which updates only wrote a Sync ID
    as_json = json.loads(cli("sync", "--config", config, "--dry-run", "--json").stdout)
    counts = as_json["entities"]["customers"]
    assert counts["a"] == {"create": 0, "update": 2, "delete": 0, "link": 2}
    assert counts["b"] == {"create": 1, "update": 1, "delete": 0, "link": 1}
    assert not (tmp_path / "state.db").exists()


def test_a_large_dry_run_prints_the_summary_and_a_hint_unless_details_are_asked_for(
    tmp_path: Path, cli: Cli
) -> None:
    config = two_sheets(tmp_path)
    many = DETAILS_UP_TO + 1
    write_csv(tmp_path / "a" / "customers.csv", [person(i) for i in range(many)])
    before = state_files(tmp_path)

    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    out = lines_of(dry)
    assert out[:2] == ["Dry run of pipeline sheets", "what sheets would do"]
    assert "create on b" not in dry.stdout
    assert out[-2:] == [
        f"{many} records would change; --details to list every record",
        "Dry run: nothing was written to any member or to the state store.",
    ]
    assert len(out) < 20, dry.stdout

    detailed = cli("sync", "--config", config, "--dry-run", "--details")
    assert_clean_exit(detailed, 0)
    assert detailed.stdout.count("  + create on b") == many
    assert detailed.stdout.index("what sheets would do") < detailed.stdout.index("+ create on b")
    assert "records would change" not in detailed.stdout
    assert state_files(tmp_path) == before

    # a real sync lists no records by default, --details lists them
    done = cli("sync", "--config", config, "--details")
    assert_clean_exit(done, 0)
    assert done.stdout.count("  + create on b") == many
    assert lines_of(done)[:2] == ["Sync of pipeline sheets", "what sheets did"]


def test_a_write_only_field_diff_shows_what_the_member_holds(tmp_path: Path, cli: Cli) -> None:
    b_mapping = """\
[fields]
first_name = "First Name"
last_name = "Last Name"
email = "Email"
company = { native = "Company", direction = "write" }
"""
    config = two_sheets(tmp_path, b_mapping=b_mapping)
    write_csv(
        tmp_path / "a" / "customers.csv",
        [person(1, Company="Analytical Engines"), person(2, Company="Difference Ltd")],
    )
    write_csv(
        tmp_path / "b" / "customers.csv",
        [
            person(1, Company="Analytical Engines"),  # holds the value already: only linked
            person(2, Company="Old Name Ltd"),  # holds another: the diff shows it
        ],
    )
    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    out = lines_of(dry)
    start = out.index("customers · Ada1 Lovelace <ada1@example.org>")
    assert out[start : start + 7] == [
        "customers · Ada1 Lovelace <ada1@example.org>",
        "  = link on a (write Sync ID)",
        "  = link on b (write Sync ID)",
        "customers · Ada2 Lovelace <ada2@example.org>",
        "  = link on a (write Sync ID)",
        "  ~ update on b (and write Sync ID)",
        "      company: 'Old Name Ltd' → 'Difference Ltd'",
    ], dry.stdout

    assert_clean_exit(cli("sync", "--config", config), 0)
    b_rows = {r["Email"]: r["Company"] for r in read_csv(tmp_path / "b" / "customers.csv")}
    assert b_rows == {
        "ada1@example.org": "Analytical Engines",
        "ada2@example.org": "Difference Ltd",
    }
    again = cli("sync", "--config", config, "--dry-run")
    assert "Nothing to do" in again.stdout, again.stdout


# ------------------------------------------------------------- status, runs, conflicts list


def local(when: str) -> str:
    return f"{dt.datetime.fromisoformat(when).astimezone():%Y-%m-%d %H:%M}"


def test_status_runs_and_conflicts_speak_plainly(tmp_path: Path, cli: Cli) -> None:
    config = two_sheets(tmp_path, conflicts='default = ["a"]\n"customers.company" = ["manual"]')
    a_csv, b_csv = tmp_path / "a" / "customers.csv", tmp_path / "b" / "customers.csv"
    write_csv(a_csv, [person(1), person(2)])
    write_csv(b_csv, [person(1)])
    assert_clean_exit(cli("sync", "--config", config), 0)

    rows = read_csv(a_csv)
    rows[0]["Company"] = "Engines A"
    write_csv(a_csv, rows)
    rows = read_csv(b_csv)
    next(r for r in rows if r["Email"] == "ada1@example.org")["Company"] = "Engines B"
    write_csv(b_csv, rows)
    parked = cli("sync", "--config", config)
    assert_clean_exit(parked, 1)
    assert "customers: 1 conflict parked" in parked.stdout
    assert "1 conflict waits for a person: syncengine conflicts list" in parked.stdout
    assert "what sheets did" in parked.stdout and "did do" not in parked.stdout

    runs = json.loads(cli("runs", "--config", config, "--json").stdout)
    first, second = runs[1], runs[0]

    shown = cli("status", "--config", config)
    assert_clean_exit(shown, 0)
    out = lines_of(shown)
    assert out[0] == "sheets (a + b; customers)"
    assert re.fullmatch(
        rf"  last run: {local(second['started_at'])} \((just now|\d+ min ago)\), "
        r"took \d+\.\ds → conflicts",
        out[1],
    ), shown.stdout
    assert out[2] == "    customers: 1 conflict parked"
    assert re.fullmatch(
        r"  schedule: every 15m; next run: \d{4}-\d\d-\d\d \d\d:\d\d \(in 1[45] min\)", out[3]
    ), shown.stdout
    assert "open conflicts: 1" in shown.stdout
    assert "+0" not in shown.stdout and "~0" not in shown.stdout
    assert "T" not in out[1], "a raw ISO timestamp"

    history = cli("runs", "--config", config)
    assert_clean_exit(history, 0)
    assert re.fullmatch(
        rf"#{second['id']} sheets {local(second['started_at'])} \((just now|\d+ min ago)\), "
        rf"took \d+\.\ds → conflicts\n    customers: 1 conflict parked\n"
        rf"#{first['id']} sheets {local(first['started_at'])} \((just now|\d+ min ago)\), "
        rf"took \d+\.\ds → ok\n    customers: a linked 2; b created 1, linked 1\n",
        history.stdout,
    ), history.stdout

    listed = cli("conflicts", "list", "--config", config)
    assert_clean_exit(listed, 0)
    [conflict] = json.loads(cli("conflicts", "list", "--config", config, "--json").stdout)
    assert conflict["record"] == "Ada1 Lovelace <ada1@example.org>"
    out = lines_of(listed)
    assert out[0] == f"#{conflict['id']} sheets · customers · Ada1 Lovelace <ada1@example.org>"
    assert re.fullmatch(
        rf"  field company, parked {local(conflict['created_at'])} "
        r"\((just now|\d+ min ago)\)",
        out[1],
    ), listed.stdout
    assert out[2:5] == [
        "    a:           'Engines A'",
        "    b:           'Engines B'",
        "    last synced: (no value)",
    ]
    assert "None" not in listed.stdout
