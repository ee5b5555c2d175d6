"""Bad input through the real ``syncengine`` command: broken configs and broken spreadsheets.

A configuration problem exits 2 with every problem named (file, key, a fix), never a
traceback, and nothing read or written: no state store created, the spreadsheet untouched,
the sandbox not contacted. A broken spreadsheet row is a per-row error (exit 1): the other
rows still sync and the bad row is left exactly as it was. A file that cannot be decoded
stops the run before anything is written, and says which encoding option to set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import (
    DEFAULT_KEY,
    CliResult,
    Sandbox,
    assert_clean_exit,
    hcp_books_config,
)

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
KNOWN_TRANSFORMS = ("bool", "cents", "date", "email", "list", "map", "phone", "strip")


# ------------------------------------------------------------------------- configuration


@dataclass
class BadConfig:
    """A config that must be refused: how to break the valid one, and what the message says."""

    text: Callable[[str], str]
    expected: Callable[[str, Path], list[str]]
    """Substrings of stderr, given the config text and its folder."""
    api_key: str | None = DEFAULT_KEY
    files: dict[str, str] | None = None
    """Other files beside the config (mapping overrides)."""


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _unclosed_string(text: str) -> str:
    return text.replace('api_key = "${HCP_API_KEY}"', 'api_key = "${HCP_API_KEY}')


BAD_TRANSFORM_MAPPING = """\
[fields]
first_name = "First Name"
last_name = "Last Name"
email = { native = "Email", transform = "emial" }
mobile_number = { native = "Mobile", transform = { name = "phone", format = "national" } }
"""

MAPPING_OVERRIDE = '\n[pipelines.mappings]\nbooks = { customers = "books-customers.toml" }\n'

BAD_CONFIGS = {
    "malformed-toml": BadConfig(
        text=_unclosed_string,
        expected=lambda text, folder: [
            "config.toml",
            "TOML",
            f"line {_line_of(text, 'api_key =')}",
        ],
    ),
    "unknown-connector-key": BadConfig(
        text=lambda t: t.replace("max_retries = 1", "max_retries = 1\npagesize = 50"),
        expected=lambda text, folder: [
            "config.toml",
            "connectors.hcp.pagesize",
            "unknown key 'pagesize'",
            "did you mean 'page_size'",
        ],
    ),
    "unknown-pipeline-key": BadConfig(
        text=lambda t: t.replace('entities = ["customers"]', 'entitys = ["customers"]'),
        expected=lambda text, folder: [
            "config.toml",
            "unknown key 'entitys'",
            "did you mean 'entities'",
        ],
    ),
    "unknown-top-level-section": BadConfig(
        text=lambda t: t.replace("[state]", "[stat]"),
        expected=lambda text, folder: ["unknown key 'stat'", "did you mean 'state'"],
    ),
    "unknown-transform-in-mapping-override": BadConfig(
        text=lambda t: t + MAPPING_OVERRIDE,
        files={"books-customers.toml": BAD_TRANSFORM_MAPPING},
        expected=lambda text, folder: [
            "books-customers.toml",
            "unknown transform 'emial'",
            *KNOWN_TRANSFORMS,
        ],
    ),
    "missing-environment-variable": BadConfig(
        text=lambda t: t,
        api_key=None,
        expected=lambda text, folder: [
            "config.toml",
            "connectors.hcp.api_key",
            "environment variable HCP_API_KEY is not set",
            "export HCP_API_KEY",
        ],
    ),
    "unknown-connector-type": BadConfig(
        text=lambda t: t.replace('type = "spreadsheet"', 'type = "spreadsheets"'),
        expected=lambda text, folder: [
            "connectors.books.type",
            "unknown connector type 'spreadsheets'",
            "spreadsheet",
            "housecallpro",
        ],
    ),
    "pipeline-member-that-does-not-exist": BadConfig(
        text=lambda t: t.replace('members = ["hcp", "books"]', 'members = ["hcp", "bookz"]'),
        expected=lambda text, folder: [
            "config.toml",
            "members[1]",
            "no connector named 'bookz'",
            "did you mean 'books'",
        ],
    ),
    "typos-in-field-names-and-a-member-that-left": BadConfig(
        text=lambda t: (
            t.replace('default = ["hcp"]', 'default = ["hcp"]\n"customers.emial" = ["hcp"]')
            + '\n[pipelines.match]\ncustomers = ["emial", "colour"]\n'
            + '\n[pipelines.mappings.bookz]\ncustomers = "books-customers.toml"\n'
        ),
        expected=lambda text, folder: [
            "conflicts.customers.emial: customers has no field 'emial' "
            "(fix: did you mean 'email'?)",
            "match.customers: no field 'emial' (fix: did you mean 'email'?)",
            "match.customers: no field 'colour' (fix: use one of its fields: first_name, ",
            "mappings.bookz: not a member of this pipeline (fix: did you mean 'books'? If "
            "that member left the pipeline, drop [pipelines.mappings.bookz])",
        ],
    ),
    "several-problems-at-once": BadConfig(
        text=lambda t: (
            t.replace("${HCP_API_KEY}", "${HCP_TOKEN_NOT_SET}")
            .replace('members = ["hcp", "books"]', 'members = ["hcp", "books", "crm"]')
            .replace('entities = ["customers"]', 'entities = ["customers", "invoicez"]')
            .replace('default = ["hcp"]', 'default = ["hcpp"]')
            + MAPPING_OVERRIDE
        ),
        files={"books-customers.toml": BAD_TRANSFORM_MAPPING},
        expected=lambda text, folder: [
            "environment variable HCP_TOKEN_NOT_SET is not set",
            "no connector named 'crm'",
            "unknown entity 'invoicez'",
            "unknown rule 'hcpp'",
            "unknown transform 'emial'",
        ],
    ),
}


def _problem_count(stderr: str) -> int:
    found = re.search(r"configuration error \((\d+) problems?", stderr)
    assert found, stderr
    return int(found.group(1))


def _check_refused(tmp_path: Path, cli: Cli, box: Sandbox, case: BadConfig) -> list[CliResult]:
    """Write the broken config beside a spreadsheet, run validate, sync and a dry run, and
    check each refused it with exit 2 and wrote nothing. Returns the results."""
    folder = tmp_path / "project"
    valid = hcp_books_config(folder, box.port).read_text(encoding="utf-8")
    broken = case.text(valid)
    assert broken != valid or case.api_key is None, "the case did not change the config"
    config = folder / "config.toml"
    config.write_text(broken, encoding="utf-8")
    for name, body in (case.files or {}).items():
        (folder / name).write_text(body, encoding="utf-8")
    csv_path = folder / "books" / "customers.csv"
    csv_bytes = write_csv(
        csv_path,
        [
            {"First Name": "Ann", "Last Name": "Untouched", "Email": "ann.untouched@example.org"},
            {"First Name": "Bo", "Last Name": "Untouched", "Company": "Bo's Boilers"},
        ],
    )
    before = sorted(p.name for p in folder.rglob("*"))
    box.clear_requests()

    results = []
    for args in (("validate",), ("sync",), ("sync", "--dry-run", "--json")):
        result = cli(*args, "--config", config, api_key=case.api_key)
        assert_clean_exit(result, 2)
        assert "configuration error" in result.stderr, str(result)
        for expected in case.expected(broken, folder):
            assert expected in result.stderr, f"{expected!r} not in the message\n{result}"
        assert result.stdout == "", str(result)
        results.append(result)

    assert box.requests() == [], "a configuration error must not reach the member"
    assert not (folder / "state.db").exists()
    assert csv_path.read_bytes() == csv_bytes
    assert sorted(p.name for p in folder.rglob("*")) == before
    return results


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_exits_2_names_the_problem_and_writes_nothing(
    name: str, tmp_path: Path, cli: Cli, idle_sandbox: Sandbox
) -> None:
    results = _check_refused(tmp_path, cli, idle_sandbox, BAD_CONFIGS[name])
    if name == "several-problems-at-once":
        for result in results:
            assert _problem_count(result.stderr) == 5, str(result)
    if name == "unknown-transform-in-mapping-override":
        line = next(ln for ln in results[0].stderr.splitlines() if "emial" in ln)
        assert all(t in line for t in KNOWN_TRANSFORMS), line


def test_unknown_keys_in_a_pipeline_and_a_connector_are_reported_together(
    tmp_path: Path, cli: Cli, idle_sandbox: Sandbox
) -> None:
    case = BadConfig(
        text=lambda t: t.replace('entities = ["customers"]', 'entitys = ["customers"]').replace(
            "max_retries = 1", "max_retries = 1\npagesize = 50"
        ),
        expected=lambda text, folder: ["unknown key 'entitys'", "unknown key 'pagesize'"],
    )
    _check_refused(tmp_path, cli, idle_sandbox, case)


# ------------------------------------------------------------------------ the spreadsheet


def _first_sync(cli: Cli, box: Sandbox, folder: Path) -> tuple[Path, Path]:
    config = hcp_books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    csv_path = folder / "books" / "customers.csv"
    assert all(r["Sync ID"] for r in read_csv(csv_path))
    box.clear_requests()
    return config, csv_path


def test_ragged_row_is_a_row_error_the_others_sync_and_it_is_left_as_it_was(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=6)
    config, csv_path = _first_sync(cli, box, tmp_path)
    rows = read_csv(csv_path)
    with_email = [i for i, r in enumerate(rows) if r["Email"]]
    ragged_index, edited_index = with_email[0], with_email[1]
    edited = rows[edited_index]
    edited["Mobile"] = "(555) 010-4477"
    rows.append(
        {
            "First Name": "Nadia",
            "Last Name": "Newrow",
            "Email": "nadia.newrow@example.org",
            "Company": "Newrow Cafe",
        }
    )
    write_csv(csv_path, rows)
    lines = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    ragged_line = lines[ragged_index + 1].rstrip("\n") + ",spilled,over\n"
    lines[ragged_index + 1] = ragged_line
    csv_path.write_text("".join(lines), encoding="utf-8")
    before_ragged = box.customer_by_email(rows[ragged_index]["Email"])

    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    assert f"customers.csv line {ragged_index + 2}" in done.stdout, str(done)
    assert "15 cells but the header has 13 columns" in done.stdout

    after = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert after[ragged_index + 1] == ragged_line, "the ragged row must be left as it was"
    # The other rows synced: the edited mobile reached HCP, the new row was created and linked.
    assert box.customer_by_email(edited["Email"]).get("mobile_number") == "+15550104477"
    assert box.customer_by_email("nadia.newrow@example.org").get("company") == "Newrow Cafe"
    assert read_csv(csv_path)[-1]["Sync ID"], "the new row was not given its Sync ID"
    # The ragged row's customer was neither changed nor deleted.
    assert not [w for w in box.writes() if w["method"] == "DELETE"]
    assert box.customer(before_ragged["id"]) == before_ragged

    box.clear_requests()
    again = cli("sync", "--config", config, "--json")
    assert_clean_exit(again, 1)
    assert json.loads(again.stdout)["entities"]["customers"]["errors"] == 1
    assert box.writes() == []
    assert (
        csv_path.read_text(encoding="utf-8").splitlines(keepends=True)[ragged_index + 1]
        == ragged_line
    )


def test_json_output_still_names_the_bad_row(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=3)
    config, csv_path = _first_sync(cli, box, tmp_path)
    lines = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].rstrip("\n") + ",spilled,over\n"
    csv_path.write_text("".join(lines), encoding="utf-8")

    done = cli("sync", "--config", config, "--json")
    assert_clean_exit(done, 1)
    assert json.loads(done.stdout)["entities"]["customers"]["errors"] == 1
    assert "customers.csv line 3" in done.output, str(done)


def test_copy_pasted_row_with_the_same_sync_id_is_a_row_error(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=6)
    config, csv_path = _first_sync(cli, box, tmp_path)
    rows = read_csv(csv_path)
    edited = next(r for r in rows[3:] if r["Email"])
    target_id = box.customer_by_email(edited["Email"])["id"]
    edited["Last Name"] = "Edited-Surname"
    write_csv(csv_path, rows)
    lines = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    duplicate = lines[2]  # file line 3 ...
    lines.append(duplicate)  # ... pasted again as line 8
    csv_path.write_text("".join(lines), encoding="utf-8")
    ids_before = {c["id"] for c in box.customers()}

    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    # beside the row's own location, the file is not named twice
    assert f"customers.csv line 3: lines 3 and 8 share Sync ID {rows[1]['Sync ID']}" in (
        done.stdout
    )
    assert "give one of them a new (blank) Sync ID" in done.stdout

    after = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(after) == 8
    assert after[2] == duplicate and after[7] == duplicate
    writes = box.writes()
    assert [(w["method"], w["path"]) for w in writes] == [("PUT", f"/customers/{target_id}")], (
        writes
    )
    assert {c["id"] for c in box.customers()} == ids_before
    assert box.customer(target_id).get("last_name") == "Edited-Surname"


def test_sync_id_overwritten_by_another_rows_does_not_delete_the_customer(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=6)
    config, csv_path = _first_sync(cli, box, tmp_path)
    rows = read_csv(csv_path)
    rows[2]["Sync ID"] = rows[1]["Sync ID"]  # file lines 3 and 4
    csv_bytes = write_csv(csv_path, rows)

    done = cli("sync", "--config", config)
    assert_clean_exit(done, 1)
    assert f"customers.csv line 3: lines 3 and 4 share Sync ID {rows[1]['Sync ID']}" in (
        done.stdout
    )
    assert csv_path.read_bytes() == csv_bytes
    assert len(box.customers()) == 6
    assert box.writes() == []


def test_undecodable_bytes_stop_the_run_naming_file_line_and_encoding_option(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=4)
    config, csv_path = _first_sync(cli, box, tmp_path)
    rows = read_csv(csv_path)
    rows[0]["Company"] = "Would Be Written Co"  # a change that must not go out
    good = write_csv(csv_path, rows)
    bad_line = len(rows) + 2  # after the header and the rows
    data = good + b",Bad,Bytes,bad.bytes@example.org,,,,\xff\xfe garbage,,,,,\n"
    csv_path.write_bytes(data)
    customers_before = box.customers()

    for args in (("sync",), ("sync", "--dry-run")):
        done = cli(*args, "--config", config)
        assert done.returncode in (1, 2), str(done)
        assert "Traceback" not in done.output
        message = done.stderr
        assert "customers.csv" in message and "not valid utf-8" in message, str(done)
        assert f"line {bad_line}" in message, str(done)
        assert "encoding" in message and "cp1252" in message, str(done)
        assert box.writes() == []
        assert csv_path.read_bytes() == data
        assert box.customers() == customers_before


def test_undecodable_file_on_a_first_run_writes_nothing_anywhere(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=4)
    config = hcp_books_config(tmp_path, box.port)
    csv_path = tmp_path / "books" / "customers.csv"
    csv_path.parent.mkdir(parents=True)
    data = (
        "Sync ID,First Name,Last Name,Email,Company\n"
        ",Zoë,Café,zoe.cafe@example.org,Crème Brûlée Co\n"
    ).encode("cp1252")
    csv_path.write_bytes(data)

    done = cli("sync", "--config", config)
    assert done.returncode in (1, 2), str(done)
    assert "Traceback" not in done.output
    assert "customers.csv" in done.stderr and "line 2" in done.stderr
    assert "encoding" in done.stderr
    assert box.writes() == []
    assert csv_path.read_bytes() == data
    assert len(box.customers()) == 4

    # With the encoding option the same file syncs, and keeps its encoding.
    fixed = hcp_books_config(tmp_path, box.port, books_extra='encoding = "cp1252"')
    synced = cli("sync", "--config", fixed)
    assert_clean_exit(synced, 0)
    assert box.customer_by_email("zoe.cafe@example.org").get("company") == "Crème Brûlée Co"
    assert "Crème Brûlée Co".encode("cp1252") in csv_path.read_bytes()
