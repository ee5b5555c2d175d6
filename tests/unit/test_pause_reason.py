"""A pause's reason is typed by a person and shown to others (``status``, ``audit``, the
console): it never carries a secret it was typed with, and what it holds is shown, never
obeyed by the terminal (a cold operator trial pasted the HCP key and an escape code)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from syncengine.cli import app

KEY = "hcp-key-0123456789"
CONFIG = f"""\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
api_key = "{KEY}"

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
"""


def _cli(*args: str) -> str:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, (done.output, done.exception)
    return done.output


def test_a_pause_reason_keeps_no_secret_and_no_escape_code(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    reason = f"rotating \x1b[31mthe key {KEY}"
    _cli("pause", "-c", str(config), "-p", "hcp-books", "--reason", reason)

    shown = _cli("status", "-c", str(config))
    assert KEY not in shown and "\x1b" not in shown
    assert "rotating \\x1b[31mthe key ***" in shown

    entries = json.loads(_cli("audit", "-c", str(config), "--json"))
    assert KEY not in json.dumps(entries)
    assert entries[0]["after"]["reason"] == "rotating \x1b[31mthe key ***"
