"""Config loading catches what only a sync used to find: a cron schedule that never fires,
an unclosed ``${``, a state URL that is not one, ``true`` given for a number and an unknown
phone region. Each is a configuration problem named by file and key, with a fix, all of them
reported at once, and nothing is connected to."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.config import load_config
from syncengine.connectors.housecallpro.connector import HousecallProOptions
from syncengine.errors import ConfigError, Problem, StateError
from syncengine.schedule import parse_schedule
from syncengine.state.store import StateStore, url_problem

ENV = {"HCP_API_KEY": "hcp-key-0123456789"}
NEVER = "0 2 31 2 *"


def _write(
    tmp_path: Path,
    *,
    top: str = 'region = "US"',
    state_url: str = "sqlite:///state.db",
    hcp: str = 'api_key = "${HCP_API_KEY}"\nmax_retries = 1',
    daemon: str = "",
    pipeline: str = "",
    extra: str = "",
) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""\
{top}

[state]
url = "{state_url}"

[daemon]
{daemon}

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
{hcp}

[connectors.books]
type = "spreadsheet"
path = "books"

{extra}

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
{pipeline}
""",
        encoding="utf-8",
    )
    return path


def _problems(path: Path, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV if env is None else env)
    return info.value.problems


def _one(problems: list[Problem], location: str) -> Problem:
    found = [p for p in problems if p.location == location]
    assert len(found) == 1, problems
    return found[0]


# ------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("text", [NEVER, "0 2 30 2 *", "15 4 31 4,6,9,11 *"])
def test_a_cron_schedule_that_never_fires_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="never fires") as info:
        parse_schedule(text)
    assert f"cron expression {text!r} never fires" in str(info.value)
    assert '"last" for the last day of the month' in str(info.value)


@pytest.mark.parametrize("text", ["0 0 29 2 *", "0 2 last 2 *", "0 2 31 1,2 *", "0 2 31 * *"])
def test_cron_schedules_that_fire_only_some_years_or_months_are_kept(text: str) -> None:
    assert parse_schedule(text).cron is not None


def test_a_pipeline_schedule_that_never_fires_is_a_problem_named_by_pipeline(
    tmp_path: Path,
) -> None:
    problems = _problems(_write(tmp_path, pipeline=f'schedule = "{NEVER}"'))
    problem = _one(problems, f"{tmp_path / 'config.toml'}: pipelines.hcp-books.schedule")
    assert problem.message.startswith(f"cron expression '{NEVER}' never fires")
    assert 'e.g. "0 2 last 2 *"' in problem.message
    assert len(problems) == 1


def test_an_interval_beyond_a_year_is_a_problem_named_by_pipeline(tmp_path: Path) -> None:
    """It used to pass ``validate`` and then crash ``status`` and the daemon (a date past
    the calendar's end); a daemon reloading it now keeps its old config."""
    problems = _problems(_write(tmp_path, pipeline='schedule = "every 5000000d"'))
    problem = _one(problems, f"{tmp_path / 'config.toml'}: pipelines.hcp-books.schedule")
    assert "the interval must be at most 366d" in problem.message
    assert len(problems) == 1


def test_a_daemon_default_schedule_that_never_fires_is_a_problem(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, daemon=f'schedule = "{NEVER}"'))
    assert [p.location for p in problems] == [f"{tmp_path / 'config.toml'}: daemon.schedule"]
    assert "never fires" in problems[0].message


def test_the_never_fires_check_is_made_without_an_env_too(tmp_path: Path) -> None:
    """``status`` loads the config without credentials (strict_env=False): still refused."""
    path = _write(tmp_path, pipeline=f'schedule = "{NEVER}"')
    with pytest.raises(ConfigError, match="never fires"):
        load_config(path, env={}, strict_env=False)


# ----------------------------------------------------------------------- ${...} references


def test_an_unclosed_reference_names_the_key_and_the_variable(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, hcp='api_key = "${HCP_API_KEY"'))
    assert problems == [
        Problem(
            f"{tmp_path / 'config.toml'}: connectors.hcp.api_key",
            "'${HCP_API_KEY' is not closed",
            'end it with "}": "${HCP_API_KEY}"',
        )
    ]


def test_a_reference_that_is_no_variable_name_is_a_problem(tmp_path: Path) -> None:
    path = _write(tmp_path, hcp='api_key = "${HCP_API_KEY}"\ncompany_id = "${1COMPANY}"')
    problem = _one(_problems(path), f"{tmp_path / 'config.toml'}: connectors.hcp.company_id")
    assert problem.message == "'${1COMPANY}' is not an environment variable reference"
    assert problem.fix.startswith("write ${NAME} or ${NAME:-default}")


def test_a_broken_reference_in_a_secret_shows_no_part_of_it(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, hcp='api_key = "pa55${word-w1th-dash"'))
    assert problems == [
        Problem(
            f"{tmp_path / 'config.toml'}: connectors.hcp.api_key",
            "'${' is not closed",
            'end the reference with "}": "${NAME}"',
        )
    ]
    assert "word" not in str(problems[0]) and "pa55" not in str(problems[0])


def test_closed_references_and_defaults_still_work(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, hcp='api_key = "${HCP_API_KEY}"\ncompany_id = "c-${CO:-7}"'), env=ENV
    )
    options = config.connectors["hcp"].options
    assert isinstance(options, HousecallProOptions) and options.company_id == "c-7"


# ------------------------------------------------------------------------------ state URL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "invalid state store URL 'not a url'"),
        (
            "mysql://me:Sup3rS3cretPw@db/sync",
            "unsupported state store URL 'mysql://me:***@db/sync'",
        ),
        ("postgresqlx://db/sync", "unsupported state store URL 'postgresqlx://db/sync'"),
    ],
)
def test_a_state_url_that_cannot_be_used_is_a_problem(
    tmp_path: Path, url: str, message: str
) -> None:
    problems = _problems(_write(tmp_path, state_url=url))
    problem = _one(problems, f"{tmp_path / 'config.toml'}: state.url")
    assert problem.message.startswith(message), problem
    assert problem.fix.startswith('use "sqlite:///PATH"')
    assert "Sup3rS3cretPw" not in str(problems)
    assert not (tmp_path / "state.db").exists()


def test_a_postgresql_url_whose_driver_is_missing_is_a_problem() -> None:
    problem = url_problem("postgresql+nosuchdriver://u@h/db")
    assert problem is not None and "postgresql+nosuchdriver" in problem


@pytest.mark.parametrize("url", ["sqlite:///state.db", "sqlite://", "postgresql+psycopg://u@h/d"])
def test_usable_state_urls_pass(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite+pysqlite://", "sqlite+pysqlite://"),
        (
            "sqlite://?password=Sup3rS3cretPw",
            "sqlite://?password=%2A%2A%2A",
        ),  # as mask_url shows it
        ("sqlite://me:Sup3rS3cretPw@/", "sqlite://me:***@/"),
    ],
)
def test_a_state_store_in_memory_is_a_problem_of_the_config(
    tmp_path: Path, url: str, shown: str
) -> None:
    """The store opens in memory (a dry run on a fresh setup uses one), but a config that
    names one would have every run start from nothing and two syncs at once not see each
    other's lease: refused like a URL that is not one, with the same fix."""
    problem = _one(
        _problems(_write(tmp_path, state_url=url)), f"{tmp_path / 'config.toml'}: state.url"
    )
    assert problem.message.startswith(f"state store URL {shown!r} keeps the state in memory")
    assert "two syncs at once" in problem.message
    assert problem.fix.startswith('use "sqlite:///PATH"')
    assert "Sup3rS3cretPw" not in str(problem)
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    "url", ["sqlite:///file::memory:?cache=shared&uri=true", "sqlite:///file:m?mode=memory&URI=1"]
)
def test_an_sqlite_uri_filename_is_refused_before_anything_is_made(
    tmp_path: Path, url: str
) -> None:
    """The store takes the database for a path beside the config: a URI filename made a file
    of that odd name (world-readable), beside an empty one the store had tightened."""
    assert url_problem(url) is not None and "SQLite URI" in (url_problem(url) or "")
    problem = _one(
        _problems(_write(tmp_path, state_url=url)), f"{tmp_path / 'config.toml'}: state.url"
    )
    assert problem.fix.startswith('use "sqlite:///PATH"')
    with pytest.raises(StateError, match="SQLite URI"):
        StateStore.open(url, base_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_the_store_refuses_the_urls_validate_refuses(tmp_path: Path) -> None:
    for url in ("not a url", "mysql://db/sync"):
        with pytest.raises(StateError) as info:
            StateStore.open(url, base_dir=str(tmp_path))
        assert str(info.value) == url_problem(url)


# -------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("hcp", "key"),
    [
        ("max_retries = true", "max_retries"),
        ("page_size = false", "page_size"),
        ("rate_limit = true", "rate_limit"),
    ],
)
def test_true_or_false_is_not_a_number_in_connector_options(
    tmp_path: Path, hcp: str, key: str
) -> None:
    path = _write(tmp_path, hcp=f'api_key = "${{HCP_API_KEY}}"\n{hcp}')
    problem = _one(_problems(path), f"{tmp_path / 'config.toml'}: connectors.hcp.{key}")
    value = hcp.split(" = ")[1]
    assert problem.message == f"is {value}, which is not a number"
    assert problem.fix == "write a number without quotes (true and false are not numbers)"


def test_true_is_not_a_number_in_the_rest_and_pipeline_settings(tmp_path: Path) -> None:
    rest = """\
[connectors.crm]
type = "rest"
base_url = "http://127.0.0.1:9"
max_retries = true
[connectors.crm.entities.customers]
path = "/customers"
"""
    path = _write(
        tmp_path, extra=rest, pipeline="batch_size = true\n[pipelines.deletes]\nmax_fraction = true"
    )
    shown = f"{tmp_path / 'config.toml'}"
    problems = _problems(path)
    assert sorted(p.location for p in problems) == [
        f"{shown}: connectors.crm.max_retries",
        f"{shown}: pipelines.hcp-books.batch_size",
        f"{shown}: pipelines.hcp-books.deletes.max_fraction",
    ]
    assert {p.message for p in problems} == {"is true, which is not a number"}


def test_numbers_from_the_environment_are_still_read(tmp_path: Path) -> None:
    path = _write(tmp_path, hcp='api_key = "${HCP_API_KEY}"\nmax_retries = "${RETRIES:-3}"')
    config = load_config(path, env=ENV)
    options = config.connectors["hcp"].options
    assert isinstance(options, HousecallProOptions) and options.max_retries == 3


# --------------------------------------------------------------------------------- region


def test_an_unknown_region_is_refused_with_the_likely_one(tmp_path: Path) -> None:
    problem = _one(
        _problems(_write(tmp_path, top='region = "UK"')), f"{tmp_path / 'config.toml'}: region"
    )
    assert problem.message == "unknown region 'UK' (the default region of phone numbers)"
    # one readable line, not every region there is
    assert problem.fix == (
        'did you mean GB? use a two-letter ISO 3166 country code, e.g. region = "US" or "GB"'
    )


def test_a_known_region_in_lower_case_is_taken(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, top='region = "ca"'), env=ENV).region == "CA"


# ----------------------------------------------------------------------------- all at once


def test_every_mistake_is_reported_in_one_load(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        top='region = "ZZ"',
        state_url="not a url",
        hcp='api_key = "${HCP_API_KEY"\nmax_retries = true',
        pipeline=f'schedule = "{NEVER}"',
    )
    shown = f"{tmp_path / 'config.toml'}"
    assert sorted(p.location for p in _problems(path)) == [
        f"{shown}: connectors.hcp.api_key",
        f"{shown}: connectors.hcp.max_retries",
        f"{shown}: pipelines.hcp-books.schedule",
        f"{shown}: region",
        f"{shown}: state.url",
    ]


def test_an_empty_secret_says_so_without_a_masked_value(tmp_path: Path) -> None:
    """'(got '***')' for an empty key would read as if a value were set."""
    path = _write(tmp_path)
    problem = _one(
        _problems(path, env={**ENV, "HCP_API_KEY": ""}),
        f"{tmp_path / 'config.toml'}: connectors.hcp.api_key",
    )
    assert problem.message == (
        "is empty: write the key there, or, where it names an environment variable "
        "(${NAME}), give that variable a value"
    )


# ----------------------------------------------------------- keys typed below a sub-table


@pytest.mark.parametrize(
    ("where", "text", "location", "message", "above", "header"),
    [
        (
            "pipeline",
            "[pipelines.deletes]\npropagate = true\nbatch_size = 100",
            "pipelines.hcp-books.deletes.batch_size",
            "unknown key 'batch_size'",
            "its [[pipelines]] entry",
            "[pipelines.deletes]",
        ),
        (
            "pipeline",
            '[pipelines.mappings]\nentities = ["customers"]',
            "pipelines.hcp-books.mappings.entities",
            "Input should be a valid dictionary",
            "its [[pipelines]] entry",
            "[pipelines.mappings]",
        ),
        (
            "pipeline",
            '[pipelines.conflicts]\ndefault = ["hcp"]\nentities = ["customers"]',
            "pipelines[0].conflicts.entities",
            "'entities' is not a conflicts entry",
            "its [[pipelines]] entry",
            "[pipelines.conflicts]",
        ),
        (
            "state",
            'region = "US"',
            "state.region",
            "unknown key 'region'",
            "the top of the file, before any [table]",
            "[state]",
        ),
        (
            "hcp",
            "max_retries = 1\n[connectors.hcp.extra]\npage_size = 50",
            "connectors.hcp.extra",
            "unknown key 'extra'",
            "",
            "",
        ),
    ],
)
def test_a_key_typed_below_a_sub_table_says_where_it_belongs(
    tmp_path: Path, where: str, text: str, location: str, message: str, above: str, header: str
) -> None:
    """TOML gives every key after a ``[table]`` header to that table: a pipeline's
    ``batch_size`` typed at the end of the file is read as a delete setting. The problem names
    the table the key belongs to and the header to move it above (a cold trial's slip); a key
    no table above knows keeps the plain unknown-key fix."""
    if where == "pipeline":
        path = _write(tmp_path, pipeline=text)
    elif where == "state":
        path = _write(tmp_path, top="", state_url=f'sqlite:///state.db"\n{text}\n#"')
    else:
        path = _write(tmp_path, hcp=f'api_key = "${{HCP_API_KEY}}"\n{text}')
    problem = _one(_problems(path), f"{tmp_path / 'config.toml'}: {location}")
    assert problem.message.startswith(message)
    if above:
        key = location.rsplit(".", 1)[1]
        assert problem.fix == (
            f"{key!r} belongs to {above}, but it is written below the {header} header, and "
            f"TOML reads every key after a header as part of that table: move {key} above "
            f"{header}"
        )
    else:
        assert "belongs to" not in problem.fix


def test_a_pipeline_of_one_member_and_a_rule_not_in_a_list_say_how_to_write_them(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path)
    text = path.read_text().replace('members = ["hcp", "books"]', 'members = ["hcp"]')
    text += '\n[pipelines.conflicts]\ndefault = "hcp"\n'
    path.write_text(text)
    problems = _problems(path)
    shown = f"{tmp_path / 'config.toml'}: pipelines.hcp-books"
    one = _one(problems, f"{shown}.members")
    assert one.message == "a pipeline needs at least two members"
    assert one.fix == 'list the connectors it keeps in step, such as members = ["hcp", "books"]'
    rule = _one(problems, f"{shown}.conflicts.default")
    assert rule.message == "Input should be a valid list (got 'hcp')"
    assert rule.fix == 'write it as a list: default = ["hcp"]'


def test_a_missing_entity_a_record_needs_is_named_with_its_article(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, pipeline='entities = ["payments"]'))
    found = [p for p in problems if "without its invoice" in p.fix]
    assert [p.fix for p in found] == [
        "add 'invoices' to entities: a payment cannot be written anywhere without its invoice"
    ]
    problems = _problems(_write(tmp_path, pipeline='entities = ["invoices"]'))
    assert any(
        "an invoice cannot be written anywhere without its customer" in p.fix for p in problems
    )
