"""Start-up stays light: what a command does not need is not imported before it runs.

Each check runs a fresh interpreter and reads ``sys.modules`` afterwards, so a module-level
import of the console, the daemon's HTTP server, openpyxl or APScheduler put back into the
CLI or the sync path fails here (no timing involved)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# The web console and daemon HTTP server, the XLSX table, the scheduler, the alert senders,
# PostgreSQL's driver: none of them is needed to show help or to sync CSV files.
NEVER_AT_START = (
    "starlette",
    "uvicorn",
    "jinja2",
    "argon2",
    "itsdangerous",
    "multipart",
    "python_multipart",
    "openpyxl",
    "apscheduler",
    "psycopg",
    "smtplib",
    "prometheus_client",
    "syncengine.console",
    "syncengine.daemon",
    "syncengine.alerts",
    "syncengine.metrics",
    "syncengine.connectors.housecallpro.sandbox",
)


def _modules_after(code: str, cwd: Path) -> set[str]:
    """The names in ``sys.modules`` once ``code`` has run in a new interpreter."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` (packages included with their submodules) that were imported."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_importing_the_cli_leaves_the_engine_and_servers_out(tmp_path: Path) -> None:
    modules = _modules_after("import syncengine.cli", tmp_path)
    assert "syncengine.cli" in modules
    # the commands import the API (and SQLAlchemy with it) when they run, --help never does
    heavy = (
        *NEVER_AT_START,
        *("syncengine.api", "syncengine.engine", "sqlalchemy", "alembic", "structlog"),
    )
    assert _loaded(modules, heavy) == []


def test_a_csv_sync_imports_neither_servers_nor_openpyxl(tmp_path: Path) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "customers.csv").write_text(
        "First name,Last name,Email\nAda,Lovelace,ada@example.com\n", encoding="utf-8"
    )
    (tmp_path / "config.toml").write_text(
        textwrap.dedent(
            """\
            [state]
            url = "sqlite:///state.db"

            [connectors.books]
            type = "spreadsheet"
            path = "books"

            [connectors.crm]
            type = "memory"

            [[pipelines]]
            name = "p"
            members = ["books", "crm"]
            entities = ["customers"]

            [pipelines.conflicts]
            default = ["books"]
            """
        ),
        encoding="utf-8",
    )
    code = textwrap.dedent(
        """\
        import sys
        import syncengine.connectors.housecallpro
        from syncengine.cli import main

        sys.argv = ["syncengine", "sync", "-c", "config.toml", "--quiet"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        """
    )
    modules = _modules_after(code, tmp_path)
    # the sync ran: the engine, the state store and the CSV table were all loaded
    assert {"syncengine.engine", "syncengine.state.store"} <= modules
    assert "syncengine.connectors.spreadsheet.csvtable" in modules
    assert _loaded(modules, NEVER_AT_START) == []
    # a new state store is created at the head, without Alembic
    assert (tmp_path / "state.db").exists() and _loaded(modules, ("alembic",)) == []


def test_importing_the_console_users_module_computes_no_password_hash(tmp_path: Path) -> None:
    # `validate` imports it for [console]'s checks; an argon2 hash costs tens of milliseconds
    code = textwrap.dedent(
        """\
        import argon2

        hashed = []
        original = argon2.PasswordHasher.hash

        def counted(self, *args, **kwargs):
            hashed.append(1)
            return original(self, *args, **kwargs)

        argon2.PasswordHasher.hash = counted
        import syncengine.console.auth

        assert not hashed, "a password hash was computed on import"
        syncengine.console.auth.unknown_user_hash()
        assert hashed, "the hash check would not have seen a hash being made"
        """
    )
    assert "syncengine.console.auth" in _modules_after(code, tmp_path)
