"""The command line's conventions, checked on the installed ``syncengine`` command.

Every command and subcommand is discovered from the typer app, so a new command is covered
without touching this file; its help is rendered by the real console script (a subprocess).

The conventions (the README's CLI reference):

- ``-h`` is ``--help`` everywhere; ``syncengine --version`` prints ``syncengine X.Y.Z``.
- A short flag means one long option on every command (``-n`` is only ``--dry-run``).
- An option taking a value shows a name for it (``FILE``, ``NAME``), never a type
  placeholder such as ``<bool>``, ``<str>`` or ``<list[str]>``.
- Words in square brackets in a help string (``[pipelines.deletes]``) are shown as written.
- ``-p/--pipeline`` is optional everywhere (omitted: all pipelines), with a help text.
- ``--json`` on every command that reports something; ``--log-level`` before any command
  or after it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup, TyperOption

import syncengine
from syncengine.cli import app
from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import (
    CliResult,
    Sandbox,
    assert_clean_exit,
    cli_env,
    hcp_books_config,
)

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]

ROOT = typer.main.get_command(app)

# Commands that report nothing a script reads from stdout: the daemon logs JSON lines
# (--log-format json), the sandbox serves, the demo explains.
NO_JSON = {"daemon", "sandbox", "demo"}


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(ROOT))
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not isinstance(cmd, TyperGroup)]


def _ids(items: list[tuple[tuple[str, ...], Any]]) -> list[str]:
    return [" ".join(path) or "syncengine" for path, _ in items]


def _options(command: Any) -> list[TyperOption]:
    return [p for p in command.params if isinstance(p, TyperOption)]


def _bracketed(text: str | None) -> list[str]:
    """The ``[...]`` words of a help string."""
    return re.findall(r"\[[^\[\]]+\]", text or "")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_discovery_finds_every_command() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"sync", "validate", "status", "runs", "pause", "resume", "daemon"} <= names
    assert {"conflicts list", "conflicts resolve", "probe", "reconcile-report"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=_ids(COMMANDS))
def test_help_renders_every_word_and_no_type_placeholder(
    cli: Cli, path: tuple[str, ...], command: Any
) -> None:
    shown = cli(*path, "--help", api_key=None)
    assert_clean_exit(shown, 0)
    assert shown.stdout.startswith(f"Usage: {' '.join(('syncengine', *path))} "), str(shown)
    assert shown.stderr == ""
    short = cli(*path, "-h", api_key=None)
    assert_clean_exit(short, 0)
    assert short.stdout == shown.stdout
    assert "-h, --help" in shown.stdout

    # Every [word] of the command's help and of its options' help is on screen as written.
    flat = _flat(shown.stdout)
    texts = [command.help, *(p.help for p in _options(command))]
    for text in texts:
        for word in _bracketed(text):
            assert _flat(word) in flat, f"{word!r} is missing from the help:\n{shown.stdout}"

    # No type placeholder for an option: flags show none, value options show a name.
    options_part = shown.stdout.split("\nOptions:\n", 1)[1]
    assert "<bool>" not in shown.stdout and "<list" not in shown.stdout, shown.stdout
    assert re.findall(r"<[a-z][^>]*>", options_part) == [], shown.stdout
    for option in _options(command):
        if option.is_flag or option.hidden:
            continue
        metavar = option.metavar
        assert metavar is not None and metavar == metavar.upper(), (path, option.opts)
        long = next(o for o in option.opts if o.startswith("--"))
        assert f"{long} {metavar} " in shown.stdout, (path, long, shown.stdout)


GROUPS = [(path, cmd) for path, cmd in COMMANDS if isinstance(cmd, TyperGroup)]


@pytest.mark.parametrize(("path", "group"), GROUPS, ids=_ids(GROUPS))
def test_a_command_list_shows_every_summary_whole(
    cli: Cli, path: tuple[str, ...], group: Any
) -> None:
    shown = cli(*path, "--help", env={**cli_env(None), "COLUMNS": "100"})
    assert_clean_exit(shown, 0)
    listing = shown.stdout.split("\nCommands:\n", 1)[1]
    for name, sub in group.commands.items():
        line = next(x for x in listing.splitlines() if x.split()[:1] == [name])
        summary = sub.short_help or (sub.help or "").strip()
        assert summary, f"{name} has no summary for the command list"
        assert line.split(None, 1)[1] == summary, line
        assert not line.endswith("..."), line


def test_help_words_are_collected_from_the_source() -> None:
    """The bracket check above is not empty: the help strings the issue named are in it."""
    words = {
        w
        for _, cmd in COMMANDS
        for text in (cmd.help, *(p.help for p in _options(cmd)))
        for w in _bracketed(text)
    }
    assert {"[pipelines.deletes]", "[connectors.NAME]", "[daemon]"} <= words


def test_a_short_flag_means_one_option_everywhere() -> None:
    meaning: dict[str, set[str]] = {}
    for _, command in LEAVES:
        for option in _options(command):
            longs = [o for o in option.opts if o.startswith("--")]
            for short in (o for o in option.opts if not o.startswith("--")):
                meaning.setdefault(short, set()).update(longs)
    assert meaning["-n"] == {"--dry-run"}
    assert meaning["-p"] == {"--pipeline"}
    assert meaning["-c"] == {"--config"}
    assert all(len(longs) == 1 for longs in meaning.values()), meaning


def test_pipeline_is_optional_with_help_and_json_and_log_level_are_everywhere() -> None:
    without_json = set()
    for path, command in LEAVES:
        names = {o for option in _options(command) for o in option.opts}
        for option in _options(command):
            if "--pipeline" in option.opts:
                assert option.opts == ["--pipeline", "-p"] or set(option.opts) == {
                    "--pipeline",
                    "-p",
                }
                assert not option.required, path
                assert option.help, f"{' '.join(path)} -p has no help"
        if "--json" not in names:
            without_json.add(" ".join(path))
        assert "--log-level" in names, path
    assert without_json == NO_JSON


def test_version(cli: Cli) -> None:
    shown = cli("--version", api_key=None)
    assert_clean_exit(shown, 0)
    assert shown.stdout == f"syncengine {syncengine.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", syncengine.__version__)
    root = cli("-h", api_key=None)
    assert "--version" in root.stdout and "--log-level LEVEL" in root.stdout


# ----------------------------------------------------------------- two memory pipelines


def _two_pipelines(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(
        """\
[state]
url = "sqlite:///state.db"

[connectors.a]
type = "memory"

[connectors.b]
type = "memory"

[[pipelines]]
name = "first"
members = ["a", "b"]

[[pipelines]]
name = "second"
members = ["a", "b"]
""",
        encoding="utf-8",
    )
    return path


def _json(result: CliResult) -> Any:
    try:
        return json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"--json printed no JSON: {exc}\n{result}") from None


def test_pause_without_pipeline_pauses_all_and_resume_lifts_them(tmp_path: Path, cli: Cli) -> None:
    config = _two_pipelines(tmp_path)
    paused = cli("pause", "-c", config, "--reason", "books closed", "--json")
    assert_clean_exit(paused, 0)
    assert _json(paused) == {"paused": ["first", "second"]}
    status = _json(cli("status", "-c", config, "--json"))
    assert {row["name"]: row["paused"]["reason"] for row in status} == {
        "first": "books closed",
        "second": "books closed",
    }
    only = _json(cli("status", "-c", config, "-p", "second", "--json"))
    assert [row["name"] for row in only] == ["second"]

    one = cli("resume", "-c", config, "-p", "second", "--json")
    assert_clean_exit(one, 0)
    assert _json(one) == {"resumed": ["second"]}
    rest = cli("resume", "-c", config)
    assert_clean_exit(rest, 0)
    assert rest.stdout == "resumed: first\n"
    assert _json(cli("resume", "-c", config, "--json")) == {"resumed": []}

    text = cli("pause", "-c", config, "-p", "first")
    assert_clean_exit(text, 0)
    assert text.stdout == "paused: first; `syncengine resume -p first` lifts it\n"
    unknown = cli("pause", "-c", config, "-p", "nope")
    assert_clean_exit(unknown, 2)
    assert "no pipeline named 'nope'" in unknown.stderr and "first, second" in unknown.stderr


def test_log_level_before_the_command_and_after_it(tmp_path: Path, cli: Cli) -> None:
    config = _two_pipelines(tmp_path)
    quiet = cli("sync", "-c", config)
    assert_clean_exit(quiet, 0)
    assert "planned" not in quiet.stderr

    before = cli("--log-level", "info", "sync", "-c", config)
    assert_clean_exit(before, 0)
    assert "planned" in before.stderr and "pipeline=first" in before.stderr

    after = cli("sync", "-c", config, "--log-level", "info")
    assert_clean_exit(after, 0)
    assert "planned" in after.stderr

    overruled = cli("--log-level", "info", "sync", "-c", config, "--log-level", "error")
    assert_clean_exit(overruled, 0)
    assert "planned" not in overruled.stderr

    for args in (("--log-level", "loud", "status", "-c", config), ("status", "--log-level", "x")):
        bad = cli(*args)
        assert_clean_exit(bad, 2)
        assert "--log-level" in bad.stderr and "debug, info, warning or error" in bad.stderr


# ------------------------------------------------------------------- validate --json


def test_validate_json_reports_the_config_or_every_problem(tmp_path: Path, cli: Cli) -> None:
    config = hcp_books_config(tmp_path, 9)  # validate makes no request: nothing listens on 9
    good = cli("validate", "-c", config, "--json")
    assert_clean_exit(good, 0)
    assert _json(good) == {
        "config": str(config),
        "ok": True,
        "connectors": {"hcp": "housecallpro", "books": "spreadsheet"},
        "pipelines": [
            {"name": "hcp-books", "members": ["hcp", "books"], "entities": ["customers"]}
        ],
    }
    text = cli("validate", "-c", config)
    assert_clean_exit(text, 0)
    assert text.stdout == (
        f"{config}: ok — 2 connectors, pipelines: hcp-books (hcp + books: customers)\n"
    )

    bad = cli("validate", "-c", config, "--json", api_key=None)
    assert_clean_exit(bad, 2)
    report = _json(bad)
    assert report["config"] == str(config) and report["ok"] is False
    assert len(report["problems"]) == 1
    problem = report["problems"][0]
    assert set(problem) == {"location", "message", "fix"}
    assert "HCP_API_KEY" in problem["message"]
    assert "configuration error" in bad.stderr and "HCP_API_KEY" in bad.stderr

    missing = cli("validate", "-c", tmp_path / "nope.toml", "--json")
    assert_clean_exit(missing, 2)
    assert _json(missing)["problems"][0]["message"] == "file not found"
    assert not (tmp_path / "state.db").exists()


# --------------------------------------------------------------- conflicts resolve --json


def test_conflicts_resolve_json_names_the_conflict_and_the_value_taken(
    tmp_path: Path, cli: Cli, sandbox_factory: Callable[..., Sandbox]
) -> None:
    box = sandbox_factory(seed=3)
    config = hcp_books_config(
        tmp_path, box.port, conflicts='default = ["hcp"]\n"customers.company" = ["manual"]'
    )
    assert_clean_exit(cli("sync", "-c", config), 0)
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    row = next(r for r in rows if r["Email"])
    box.update_customer(box.customer_by_email(row["Email"])["id"], {"company": "One Co"})
    row["Company"] = "Other Co"
    write_csv(csv_path, rows)
    assert_clean_exit(cli("sync", "-c", config), 1)

    listed = _json(cli("conflicts", "list", "-c", config, "-p", "hcp-books", "--json"))
    assert len(listed) == 1
    conflict = listed[0]
    resolved = cli(
        "conflicts", "resolve", str(conflict["id"]), "--take", "books", "-c", config, "--json"
    )
    assert_clean_exit(resolved, 0)
    assert _json(resolved) == {
        "id": conflict["id"],
        "pipeline": "hcp-books",
        "entity": "customers",
        "key": conflict["key"],
        "field": "company",
        "taken": "books",
        "value": "Other Co",
    }
    assert _json(cli("conflicts", "list", "-c", config, "--json")) == []
    again = cli("conflicts", "resolve", str(conflict["id"]), "--take", "books", "-c", config)
    assert_clean_exit(again, 2)


# -------------------------------------------------------------------- PostgreSQL driver


def test_missing_postgres_driver_names_the_extra(tmp_path: Path, cli: Cli) -> None:
    """Without psycopg (here: a package on PYTHONPATH that fails to import, as a missing
    one does), a PostgreSQL state store names the extra that installs it."""
    shadow = tmp_path / "no-psycopg" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n",
        encoding="utf-8",
    )
    config = hcp_books_config(
        tmp_path, 9, state_url="postgresql+psycopg://syncengine@127.0.0.1:9/syncengine"
    )
    env = cli_env(PYTHONPATH=str(shadow.parent))
    shown = cli("status", "-c", config, env=env)
    assert_clean_exit(shown, 2)
    assert "configuration error" in shown.stderr
    assert "(fix: pip install 'syncengine[postgres]')" in shown.stderr
