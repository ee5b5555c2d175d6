"""The Housecall Pro API key never leaves the process: not in stdout or stderr (at any log
level, on success, on a refused key, on an unreachable server), not in the state store's
SQLite files, not in the spreadsheet.

The key is a distinctive canary; every command runs as the real console script with the key
only in its environment, exactly as a user would run it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config

pytestmark = pytest.mark.integration

CANARY = "sk-LEAK-CANARY-7f3a9"
Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def assert_no_canary_in_output(results: list[CliResult]) -> None:
    for result in results:
        assert CANARY not in result.stdout, f"the API key leaked to stdout\n{result}"
        assert CANARY not in result.stderr, f"the API key leaked to stderr\n{result}"
        assert "Traceback" not in result.output, str(result)


def assert_no_canary_in_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (state.db and any -wal/-shm, the CSV, the config), read as
    raw bytes. Returns the files read."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        assert CANARY.encode() not in data, f"the API key was written to {path}"
        assert CANARY.encode("utf-16-le") not in data, f"the API key was written to {path}"
    return files


def _project(tmp_path: Path, sandbox_factory: SandboxFactory) -> tuple[Sandbox, Path, Path, Path]:
    """A sandbox whose API key is the canary, and a project syncing it with a CSV folder:
    (sandbox, project folder, config, customers.csv)."""
    box = sandbox_factory(api_key=CANARY, seed=5)
    project = tmp_path / "project"
    config = hcp_books_config(project, box.port)
    return box, project, config, project / "books" / "customers.csv"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused, and no other
    process can take it while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_api_key_is_never_printed_or_stored_on_a_working_setup(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, project, config, csv_path = _project(tmp_path, sandbox_factory)
    results = []

    def run(*args: str, code: int = 0) -> CliResult:
        result = cli(*args, "--config", config, api_key=CANARY)
        assert_clean_exit(result, code)
        results.append(result)
        return result

    run("validate", "--log-level", "debug")
    run("sync", "--dry-run", "--log-level", "debug")
    first = run("sync", "--log-level", "debug")
    assert "finished" in first.stderr, "debug logging should have said something"
    # The key really was used: the sandbox only answers requests that carry it.
    assert len(read_csv(csv_path)) == 5
    assert {r["status"] for r in box.requests()} == {200}

    rows = read_csv(csv_path)
    rows[0]["Company"] = "Canary Cage Supplies"
    write_csv(csv_path, rows)
    box.clear_requests()
    run("sync", "--dry-run", "--log-level", "debug")
    run("sync", "--json", "--log-level", "debug")
    assert [w["method"] for w in box.writes()] == ["PUT"]  # a write carried the key too
    run("status")
    run("status", "--json")
    run("conflicts", "list")
    run("conflicts", "list", "--json")

    assert_no_canary_in_output(results)
    files = assert_no_canary_in_files(project)
    names = {p.name for p in files}
    assert {"state.db", "customers.csv", "config.toml"} <= names, names
    assert b"hcp-books" in (project / "state.db").read_bytes()


def test_a_secret_in_a_records_data_is_masked_in_every_printed_plan_and_probe(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    # someone pasted the API key into a customer's company: the plan prints records' values
    _box, _project_dir, config, csv_path = _project(tmp_path, sandbox_factory)
    assert_clean_exit(cli("sync", "--config", config, api_key=CANARY), 0)
    rows = read_csv(csv_path)
    rows[0]["Company"] = f"key={CANARY}"
    write_csv(csv_path, rows)
    results = [
        cli(*args, "--config", config, api_key=CANARY)
        for args in (
            ("sync", "--dry-run", "--details"),
            ("sync", "--dry-run", "--json"),
            ("probe", "--connector", "books"),
        )
    ]
    for result in results:
        assert_clean_exit(result, 0)
    assert "key=***" in results[0].stdout, results[0].stdout
    assert "key=***" in results[1].stdout and "key=***" in results[2].stdout
    assert_no_canary_in_output(results)


def test_api_key_is_never_printed_or_stored_when_refused_or_unreachable(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, closed_port: int
) -> None:
    # A sandbox that expects another key: ours is refused with 401.
    box = sandbox_factory(api_key="the-key-the-server-expects", seed=3)
    refused = hcp_books_config(tmp_path / "refused", box.port)
    unreachable = hcp_books_config(tmp_path / "unreachable", closed_port)
    results = []

    for config in (refused, unreachable):
        for args in (
            ("sync", "--log-level", "debug"),
            ("sync", "--dry-run", "--log-level", "debug"),
            ("sync", "--json", "--log-level", "debug"),
        ):
            result = cli(*args, "--config", config, api_key=CANARY)
            assert result.returncode == 4, str(result)  # the run could not happen
            said = "sync --dry-run could not read" if "--dry-run" in args else "sync failed"
            assert said in result.stderr, str(result)
            results.append(result)
        status = cli("status", "--config", config, api_key=CANARY)
        assert_clean_exit(status, 0)
        results.append(status)

    refused_runs, unreachable_runs = results[:4], results[4:]
    assert all("401" in r.stderr for r in refused_runs[:3]), refused_runs
    assert all("refused" in r.stderr.lower() for r in unreachable_runs[:3]), unreachable_runs
    # The key really went out, and was refused.
    statuses = {r["status"] for r in box.requests()}
    assert statuses == {401}, box.requests()

    assert_no_canary_in_output(results)
    for folder in (tmp_path / "refused", tmp_path / "unreachable"):
        assert_no_canary_in_files(folder)
        assert not (folder / "books" / "customers.csv").exists(), (
            "nothing should be written to the spreadsheet when HCP cannot be read"
        )


def test_api_key_is_not_echoed_in_configuration_errors(tmp_path: Path, cli: Cli) -> None:
    # A typo in the key's name, a wrong auth scheme and a bad page size, with the key set.
    config = hcp_books_config(
        tmp_path / "project", 9, hcp_extra='auth_scheme = "Basic"\npage_size = 0'
    )
    text = config.read_text(encoding="utf-8").replace(
        'api_key = "${HCP_API_KEY}"', 'apikey = "${HCP_API_KEY}"'
    )
    config.write_text(text, encoding="utf-8")
    results = [
        cli(*args, "--config", config, api_key=CANARY)
        for args in (("validate",), ("sync", "--log-level", "debug"))
    ]
    for result in results:
        assert_clean_exit(result, 2)
        assert "unknown key 'apikey'" in result.stderr and "auth_scheme" in result.stderr
    assert_no_canary_in_output(results)
    assert_no_canary_in_files(tmp_path / "project")


def test_a_key_shorter_than_8_characters_is_refused_by_validate_and_sync_and_8_works(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    """The config refuses a 7-character key before anything is read or written (nothing
    reaches the sandbox). With 8 characters the same commands run."""
    short, enough = "k3y-7ch", "k3y-8chr"
    taking = sandbox_factory(api_key=enough, seed=3)
    refusing = taking
    project = tmp_path / "short"
    config = hcp_books_config(project, refusing.port)
    for args in (("validate",), ("sync",), ("sync", "--dry-run"), ("status",)):
        result = cli(*args, "--config", config, api_key=short)
        assert_clean_exit(result, 2)
        assert (
            f"{config}: connectors.hcp.api_key: is 7 characters long (from the environment "
            "variable HCP_API_KEY); a key, token or password must have at least 8 (fix: set "
            "HCP_API_KEY to the whole api_key)"
        ) in result.stderr, str(result)
        assert short not in result.output, str(result)
    assert refusing.requests() == [], "nothing is read with a refused key"
    assert sorted(p.name for p in project.iterdir()) == ["config.toml"], "nothing is written"

    config = hcp_books_config(tmp_path / "enough", taking.port)
    for args in (("validate",), ("sync",)):
        assert_clean_exit(cli(*args, "--config", config, api_key=enough), 0)
    assert len(read_csv(tmp_path / "enough" / "books" / "customers.csv")) == 3
