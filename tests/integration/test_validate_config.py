"""``syncengine validate`` finds what only a sync used to find, through the real command.

A config with five mistakes (an unclosed ``${``, a state URL that is not one,
``max_retries = true``, an unknown region, a cron schedule that never fires) is refused by
``validate`` with every mistake named in one run, exit 2, and nothing contacted or created.
``status`` and ``daemon --once`` on the never-firing schedule give the same configuration
error instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
NEVER = "0 2 31 2 *"


def _config(folder: Path, box: Sandbox, *, state_url: str = "sqlite:///state.db") -> Path:
    path = hcp_books_config(folder, box.port, state_url=state_url)
    text = path.read_text(encoding="utf-8")
    broken = 'region = "ZZ"\n' + text.replace(
        'api_key = "${HCP_API_KEY}"', 'api_key = "${HCP_API_KEY"'
    ).replace("max_retries = 1", "max_retries = true").replace(
        'name = "hcp-books"', f'name = "hcp-books"\nschedule = "{NEVER}"'
    )
    path.write_text(broken, encoding="utf-8")
    return path


def _problem_lines(result: CliResult) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize(
    ("state_url", "url_message"),
    [
        ("not a url", "state.url: invalid state store URL 'not a url'"),
        ("mysql://sync@db/sync", "state.url: unsupported state store URL 'mysql://sync@db/sync'"),
        ("sqlite://", "state.url: state store URL 'sqlite://' keeps the state in memory"),
    ],
)
def test_validate_reports_all_five_mistakes_in_one_run(
    tmp_path: Path, cli: Cli, idle_sandbox: Sandbox, state_url: str, url_message: str
) -> None:
    folder = tmp_path / "project"
    config = _config(folder, idle_sandbox, state_url=state_url)
    before = sorted(p.name for p in folder.rglob("*"))
    idle_sandbox.clear_requests()

    result = cli("validate", "--config", config, api_key="hcp-key-0123456789")

    assert_clean_exit(result, 2)
    assert result.stdout == ""
    assert result.stderr.startswith("configuration error (5 problems; nothing was read or written)")
    shown = str(config)
    lines = _problem_lines(result)
    assert len(lines) == 5, result
    expected = [
        f"{shown}: connectors.hcp.api_key: '${{HCP_API_KEY' is not closed "
        '(fix: end it with "}": "${HCP_API_KEY}")',
        f"{shown}: connectors.hcp.max_retries: is true, which is not a number "
        "(fix: write a number without quotes (true and false are not numbers))",
        f"{shown}: {url_message}",
        f"{shown}: region: unknown region 'ZZ' (the default region of phone numbers) "
        '(fix: use a two-letter ISO 3166 country code, e.g. region = "US" or "GB")',
        f"{shown}: pipelines.hcp-books.schedule: cron expression '{NEVER}' never fires",
    ]
    for want in expected:
        assert sum(line.startswith(want) for line in lines) == 1, f"{want!r}\n{result}"
    assert "hcp-key-0123456789" not in result.output
    assert idle_sandbox.requests() == []
    assert sorted(p.name for p in folder.rglob("*")) == before


@pytest.mark.parametrize("command", [("status",), ("daemon", "--once")])
def test_a_never_firing_schedule_is_a_config_error_for_status_and_the_daemon(
    tmp_path: Path, cli: Cli, idle_sandbox: Sandbox, command: tuple[str, ...]
) -> None:
    folder = tmp_path / "project"
    config = hcp_books_config(folder, idle_sandbox.port)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('name = "hcp-books"', f'name = "hcp-books"\nschedule = "{NEVER}"'),
        encoding="utf-8",
    )
    before = sorted(p.name for p in folder.rglob("*"))
    idle_sandbox.clear_requests()

    result = cli(*command, "--config", config)

    assert_clean_exit(result, 2)
    assert result.stdout == ""
    assert result.stderr.startswith("configuration error (1 problem; nothing was read or written)")
    assert _problem_lines(result) == [
        f"{config}: pipelines.hcp-books.schedule: cron expression '{NEVER}' never fires: the "
        "month field (2) names no month that has day 31; use a day those months have (1-28 "
        'is in every month), or "last" for the last day of the month, e.g. "0 2 last 2 *"'
    ]
    assert idle_sandbox.requests() == []
    assert sorted(p.name for p in folder.rglob("*")) == before
