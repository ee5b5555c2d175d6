"""The console as people start it: ``syncengine console`` (alone, no scheduling) and
``syncengine daemon --http`` with a ``[console]`` table (beside ``/healthz``; its Run now asks
the daemon). Real processes on loopback ports, real HTTP."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from syncengine import api
from syncengine.config import load_config
from testbed.processes import ServerProcess
from tests.console_support import add_users, console_config, csrf_of, signed_in_client
from tests.csvfiles import CSV_HEADER, read_csv, write_csv
from tests.integration.conftest import cli_env

pytestmark = pytest.mark.integration

SYNCENGINE = Path(sys.executable).parent / "syncengine"


def _setup(tmp_path: Path, daemon: str = "") -> Path:
    path = console_config(tmp_path, {"p": {}})
    if daemon:
        path.write_text(path.read_text() + daemon, encoding="utf-8")
    (tmp_path / "p-a").mkdir()
    write_csv(
        tmp_path / "p-a" / "customers.csv",
        [{"First Name": "Ada", "Last Name": "Lovelace", "Email": "ada@example.com"}],
        CSV_HEADER,
    )
    add_users(path, "anna")
    return path


def _wait_for(
    done: Callable[[], bool], what: str | Callable[[], str], timeout: float = 60.0
) -> None:
    """Poll ``done`` until it is true; fail saying ``what`` did not happen after ``timeout``
    (a callable: what it says then, such as the runs recorded and the server's output)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what if isinstance(what, str) else what()
        time.sleep(0.05)


def test_syncengine_console_serves_on_loopback_and_runs_now(tmp_path: Path) -> None:
    path = _setup(tmp_path)
    command = [str(SYNCENGINE), "console", "-c", str(path), "--http", "127.0.0.1:0"]
    with ServerProcess(
        command,
        ready=r"console listening on http://127\.0\.0\.1:(?P<port>\d+)",
        env=cli_env(None),
        cwd=tmp_path,
    ) as server:
        client = signed_in_client(server.url, "anna")
        assert "Every pipeline" in client.get("/").text
        assert client.get("/healthz").status_code == 404  # the daemon's, not the console's
        token = csrf_of(client.get("/").text)
        response = client.post("/pipelines/p/run", data={"csrf": token})
        assert response.status_code == 303
        cfg = load_config(path)
        _wait_for(
            lambda: [r["outcome"] for r in api.runs(cfg, "p")] == ["ok"],
            lambda: f"no run: {api.runs(cfg, 'p')}\n{server.output()[-3000:]}",
        )
        assert [r["Email"] for r in read_csv(tmp_path / "p-b" / "customers.csv")] == [
            "ada@example.com"
        ]
        client.close()
    assert "Traceback" not in server.output()


DAEMON = """
[daemon]
schedule = "every 24h"
"""


def test_the_daemon_serves_the_console_beside_healthz_and_runs_now(tmp_path: Path) -> None:
    path = _setup(tmp_path, DAEMON)
    command = [
        str(SYNCENGINE),
        "daemon",
        "-c",
        str(path),
        "--http",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]
    with ServerProcess(
        command,
        ready=r'"url": "http://127\.0\.0\.1:(?P<port>\d+)"',
        env=cli_env(None),
        cwd=tmp_path,
    ) as server:
        assert httpx.get(server.url + "/healthz").status_code in (200, 503)
        cfg = load_config(path)
        _wait_for(lambda: len(api.runs(cfg, "p")) == 1, "the daemon's first run")
        client = signed_in_client(server.url, "anna")
        token = csrf_of(client.get("/").text)
        response = client.post("/pipelines/p/run", data={"csrf": token})
        assert response.status_code == 303
        said = client.get("/").text  # the daemon's answer, shown once
        assert "p starts now" in said or "p is running now" in said
        _wait_for(lambda: len(api.runs(cfg, "p")) == 2, "the run asked from the console")
        entries = api.list_audit(cfg)
        assert any(e.action == "pipeline.run_now" and e.actor == "anna" for e in entries)
        client.close()


def test_console_add_user_writes_a_hash_and_audits_it(tmp_path: Path) -> None:
    import subprocess

    path = console_config(tmp_path, {"p": {}})
    command = [str(SYNCENGINE), "console", "add-user", "office.manager", "-c", str(path)]
    done = subprocess.run(
        [*command, "--password-stdin", "--json"],
        input="a sturdy passphrase\n",
        capture_output=True,
        text=True,
        env=cli_env(None),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    users = tmp_path / "console-users.toml"
    assert json.loads(done.stdout) == {
        "user": "office.manager",
        "users_file": str(users),
        "replaced": False,
    }
    assert "a sturdy passphrase" not in users.read_text() + done.stdout + done.stderr
    (entry,) = api.list_audit(load_config(path))
    assert (entry.action, entry.target) == ("console.add_user", "console user office.manager")
    short = subprocess.run(
        [*command, "--password-stdin"], input="short\n", capture_output=True, text=True,
        env=cli_env(None), timeout=120, check=False,
    )  # fmt: skip
    assert short.returncode == 2 and "at least 10" in short.stderr
    assert "Traceback" not in short.stderr
