"""Two syncs of one pipeline at once, through the installed ``syncengine`` command (issue 10,
case 4), against the Housecall Pro sandbox on loopback.

A first ``syncengine sync`` is held at an exact point of its run (``tests/holdpoints.py``:
HCP is wrapped in a plugin that stops before its second customer create until the test lets
it go). By then it holds the pipeline's lease, has created one new customer in HCP and has
journalled the creates of the others. A second ``syncengine sync`` (and its dry run) exits 4
naming the first (pid, host, start) having done nothing: no request to HCP, no run recorded,
the first run's journal untouched. Released, the first completes; afterwards HCP holds no
duplicate, the next sync has nothing to do and ``reconcile-report`` is clean. With
``--wait`` the second sync waits for the first, then runs (and finds nothing left to do).

On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from syncengine.state import StateStore
from tests.crashpoints import crash_at, mapping_overrides
from tests.csvfiles import read_csv_table, write_csv
from tests.holdpoints import plugin_env, start_held
from tests.integration.books import assert_nothing_planned
from tests.integration.conftest import (
    CLI_TIMEOUT,
    SYNCENGINE,
    CliResult,
    Sandbox,
    assert_clean_exit,
    cli_env,
    start_sandbox,
)

pytestmark = pytest.mark.integration

ENTITIES = ("customers", "invoices", "payments")
NEW = [("Nora", "Quill", "nora.quill@example.com"), ("Otto", "Reyes", "otto.reyes@example.com")]
NEW += [("Pia", "Stone", "pia.stone@example.com")]
HOLD = crash_at("hcp", "create", "customers", n=2, when="before")
"""The first sync stops before its second create of a customer in HCP."""


@dataclass
class Setup:
    folder: Path
    config: Path
    state_url: str
    env: dict[str, str]
    sandbox: Sandbox
    cli: Callable[..., CliResult]

    def run(self, *args: str) -> CliResult:
        return self.cli(*args, "--config", self.config, env=self.env)

    def start_held(self, *args: str, at: str = HOLD) -> subprocess.Popen[str]:
        """``syncengine sync ARGS`` held at ``at``: returns once it waits there."""
        return start_held(
            [str(SYNCENGINE), "sync", "--config", str(self.config), *args],
            at=at,
            hold=self.folder / "hold",
            env=self.env,
            cwd=self.folder,
            timeout=CLI_TIMEOUT,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(SYNCENGINE), "sync", "--config", str(self.config), *args],
            env=self.env,
            cwd=self.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def release(self) -> None:
        (self.folder / "hold" / "release").touch()

    def store(self) -> StateStore:
        return StateStore.open(self.state_url, base_dir=str(self.folder), create=False)

    def new_rows_in_the_books(self) -> None:
        path = self.folder / "books" / "customers.csv"
        table = read_csv_table(path)
        rows = table.rows + [
            {"First Name": first, "Last Name": last, "Email": email} for first, last, email in NEW
        ]
        write_csv(path, rows, table.header)


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, cli: Callable[..., CliResult]
) -> Iterator[Setup]:
    state_url = "sqlite:///state.db"
    if request.param == "postgresql":
        state_url = str(request.getfixturevalue("pg_url"))
    sandbox = start_sandbox(tmp_path / "sandbox", seed=6)
    folder = tmp_path / "work"
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text(
        f"""\
[state]
url = "{state_url}"

[connectors.hcp]
type = "holdpoint"
wraps = "housecallpro"
base_url = "{sandbox.base_url}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 1
timeout = 20
concurrency = 1

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = {json.dumps(list(ENTITIES))}

[pipelines.conflicts]
default = ["hcp"]

{mapping_overrides({"hcp": "housecallpro"}, ENTITIES)}""",
        encoding="utf-8",
    )
    env = {**cli_env(), **plugin_env(tmp_path / "plugin")}
    yield Setup(folder, config, state_url, env, sandbox, cli)
    sandbox.stop()


def first_sync_and_new_rows(s: Setup) -> None:
    """The books get HCP's records; then a person adds three customers to the sheet."""
    assert_clean_exit(s.run("sync"), 0)
    s.new_rows_in_the_books()


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=CLI_TIMEOUT)
    return proc.returncode, out, err


def assert_one_of_each_and_clean(s: Setup) -> None:
    """No customer twice in HCP, the new ones there once each; the next sync has nothing
    to do and the books reconcile."""
    emails = Counter((c.get("email") or "").lower() for c in s.sandbox.customers())
    emails.pop("", None)
    twice = {e: n for e, n in emails.items() if n > 1}
    assert not twice, f"customers twice in HCP: {twice}"
    assert all(emails[email] == 1 for _, _, email in NEW), emails
    again = s.run("sync", "--json")
    assert_clean_exit(again, 0)
    assert_nothing_planned(json.loads(again.stdout))
    assert_clean_exit(s.run("reconcile-report"), 0)


def test_a_second_sync_exits_4_naming_the_first_and_does_nothing(setup: Setup) -> None:
    s = setup
    first_sync_and_new_rows(s)
    first = s.start_held("--json")
    try:
        requests = len(s.sandbox.requests())
        with s.store() as store:
            runs = store.runs("hcp-books")
            pending = store.pending_intents("hcp-books")
        # the first run's writes are journalled: its creates in HCP (and the Sync IDs to write
        # back into the sheet), all of them its lease's
        assert sum(1 for i in pending if i.op == "create") == len(NEW), pending
        assert len({i.holder for i in pending}) == 1 and None not in {i.holder for i in pending}

        holder = f"a sync by pid {first.pid} on host {socket.gethostname()}, started "
        for args in (("sync",), ("sync", "--dry-run")):
            second = s.run(*args)
            assert_clean_exit(second, 4)
            assert f"pipeline hcp-books is busy: {holder}" in second.stderr, str(second)
            assert "nothing was read or written" in second.stderr, str(second)
            assert "--wait SECONDS" in second.stderr, str(second)
        status = s.run("status")
        assert_clean_exit(status, 0)
        assert f"running now: {holder}" in status.stdout, str(status)

        # nothing done: no request to HCP, no run recorded, the first run's journal untouched
        assert len(s.sandbox.requests()) == requests
        with s.store() as store:
            assert store.runs("hcp-books") == runs
            assert store.pending_intents("hcp-books") == pending
    finally:
        s.release()
    code, out, err = finished(first)
    assert code == 0, f"{out}\n{err}"
    assert json.loads(out)["entities"]["customers"]["hcp"]["create"] == len(NEW)
    with s.store() as store:
        assert "hcp-books" not in store.leases()
    assert_one_of_each_and_clean(s)


def test_a_second_sync_with_wait_runs_once_the_first_is_done(setup: Setup) -> None:
    s = setup
    first_sync_and_new_rows(s)
    first = s.start_held("--json")
    try:
        second = s.start("--wait", "300", "--json")
        assert second.stderr is not None
        told = second.stderr.readline()  # it says so when it starts waiting
        assert "pipeline hcp-books is busy: a sync by pid" in told, told
        assert told.rstrip().endswith("waiting up to 300 s for it"), told
    finally:
        s.release()
    code, out, err = finished(first)
    assert code == 0, f"{out}\n{err}"
    code, out, err = finished(second)
    assert code == 0, f"{out}\n{err}"
    result: dict[str, Any] = json.loads(out)
    assert_nothing_planned(result)  # the first did it all
    with s.store() as store:
        newest, older = store.runs("hcp-books", limit=2)
    assert newest.run_uuid == result["run_id"]
    assert older.finished_at is not None and newest.started_at >= older.finished_at
    assert_one_of_each_and_clean(s)


def test_a_terminated_sync_releases_the_lease_at_once(setup: Setup) -> None:
    s = setup
    first_sync_and_new_rows(s)
    # held in its main thread, while it reads HCP's customers: SIGTERM interrupts it there
    first = s.start_held(at=crash_at("hcp", "read", "customers", n=1, when="before"))
    with s.store() as store:
        assert "hcp-books" in store.leases()
    first.send_signal(signal.SIGTERM)
    code, out, err = finished(first)
    assert code == 130 and "interrupted" in err, f"{out}\n{err}"
    with s.store() as store:
        assert "hcp-books" not in store.leases()  # released, not left to expire
    assert_clean_exit(s.run("sync"), 0)  # no waiting for a lease
    assert_one_of_each_and_clean(s)
