"""Fixtures for the integration tests.

Everything here is real: the ``syncengine`` console script installed next to the running
interpreter is run as a subprocess, the Housecall Pro sandbox runs as another subprocess
(``syncengine sandbox --port 0``) on a free loopback port, and the spreadsheet and the state
store are real files under ``tmp_path``. Each test gets its own sandbox and folders, so the
tests can run in parallel (``pytest -n 4``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.processes import ServerProcess
from testbed.sandbox import start_sandbox as start_sandbox_process

SYNCENGINE = Path(sys.executable).parent / "syncengine"
CLI_TIMEOUT = 120.0
"""Seconds one CLI run may take (generous: CI machines run other tests beside it)."""
DEFAULT_KEY = "sandbox-key"
"""The sandbox's own key (``syncengine sandbox``'s default)."""


# ------------------------------------------------------------------------------ the sandbox


class Sandbox:
    """A ``syncengine sandbox`` process (``testbed.sandbox``) and a small HTTP client for
    looking at it."""

    def __init__(self, server: ServerProcess, api_key: str) -> None:
        self.server = server
        self.api_key = api_key
        self.base_url = server.url
        self.port = server.port
        self._client = httpx.Client(
            base_url=self.base_url, timeout=30.0, headers={"Authorization": f"Token {api_key}"}
        )

    # -- the unauthenticated helper endpoints
    def requests(self) -> list[dict[str, Any]]:
        """Every API request the sandbox got (``/_sandbox/*`` calls are not logged)."""
        response = self._client.get("/_sandbox/requests")
        response.raise_for_status()
        return list(response.json()["requests"])

    def writes(self) -> list[dict[str, Any]]:
        """The requests that were not reads."""
        return [r for r in self.requests() if r["method"] not in ("GET", "HEAD")]

    def clear_requests(self) -> None:
        self._client.delete("/_sandbox/requests").raise_for_status()

    # -- the API, as a test (not the engine) uses it
    def customers(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            response = self._client.get(
                "/customers",
                params={
                    "page": page,
                    "page_size": 200,
                    "sort_by": "created_at",
                    "sort_direction": "asc",
                },
            )
            response.raise_for_status()
            body = response.json()
            found += body["customers"]
            if page >= body["total_pages"]:
                return found
            page += 1

    def customer(self, customer_id: str) -> dict[str, Any]:
        response = self._client.get(f"/customers/{customer_id}")
        response.raise_for_status()
        return dict(response.json())

    def customer_by_email(self, email: str) -> dict[str, Any]:
        matches = [
            c for c in self.customers() if (c.get("email") or "").lower() == email.strip().lower()
        ]
        assert len(matches) == 1, f"expected one HCP customer with email {email}: {matches}"
        return matches[0]

    def update_customer(self, customer_id: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.put(f"/customers/{customer_id}", json=body)
        response.raise_for_status()
        return dict(response.json())

    def stop(self) -> None:
        self._client.close()
        self.server.stop()


def start_sandbox(workdir: Path, *flags: str, api_key: str = DEFAULT_KEY, seed: int = 0) -> Sandbox:
    """``syncengine sandbox --port 0 --api-key KEY --seed N FLAGS...`` in ``workdir``."""
    server = start_sandbox_process(api_key=api_key, seed=seed, flags=flags, workdir=workdir)
    return Sandbox(server, api_key)


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., Sandbox]]:
    """``sandbox_factory(api_key=..., seed=...)`` starts a sandbox; all are stopped after."""
    started: list[Sandbox] = []

    def factory(*, api_key: str = DEFAULT_KEY, seed: int = 0) -> Sandbox:
        box = start_sandbox(tmp_path / "sandbox", api_key=api_key, seed=seed)
        started.append(box)
        return box

    yield factory
    for box in started:
        box.stop()


@pytest.fixture(scope="module")
def idle_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox for a module's tests that must never reach it (configuration errors).
    Tests clear its request log first and check it is still empty at the end."""
    box = start_sandbox(tmp_path_factory.mktemp("idle-sandbox"), seed=5)
    yield box
    box.stop()


# ------------------------------------------------------------------------------- the CLI


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"$ syncengine {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def cli_env(api_key: str | None = DEFAULT_KEY, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HCP_API_KEY", "SYNCENGINE_CONFIG") and not k.startswith("PYTEST")
    }
    env.update(COLUMNS="200", NO_COLOR="1", PYTHONUNBUFFERED="1")
    if api_key is not None:
        env["HCP_API_KEY"] = api_key
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., CliResult]:
    """``cli("sync", "--config", path, api_key=..., cwd=...)`` runs the console script.

    It runs in an empty working directory of its own (``tmp_path / "cwd"``) unless told
    otherwise, so that relative paths in a config must resolve against the config's folder.
    """
    default_cwd = tmp_path / "cwd"
    default_cwd.mkdir(exist_ok=True)

    def run(
        *args: str | Path,
        api_key: str | None = DEFAULT_KEY,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> CliResult:
        argv = [str(a) for a in args]
        done = subprocess.run(
            [str(SYNCENGINE), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or default_cwd,
            env=env if env is not None else cli_env(api_key),
        )
        return CliResult(argv, done.returncode, done.stdout, done.stderr)

    return run


# ----------------------------------------------------------------------- configs and files


def hcp_books_config(
    folder: Path,
    port: int,
    *,
    conflicts: str = 'default = ["hcp"]',
    deletes: str = "propagate = true\nmax_fraction = 0.2\nmin_count = 5",
    hcp_extra: str = "",
    books_extra: str = "",
    state_url: str = "sqlite:///state.db",
    extra: str = "",
    name: str = "config.toml",
) -> Path:
    """A config syncing the sandbox on ``port`` with ``folder/books/customers.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f"""\
[state]
url = "{state_url}"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:{port}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 1
delete_customers = true
{hcp_extra}

[connectors.books]
type = "spreadsheet"
path = "books"
{books_extra}

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = ["customers"]

[pipelines.conflicts]
{conflicts}

[pipelines.deletes]
{deletes}
{extra}
"""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_clean_exit(result: CliResult, code: int) -> None:
    """The exit code is ``code`` and nothing printed a Python traceback."""
    assert result.returncode == code, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert "Traceback" not in result.stdout, str(result)
