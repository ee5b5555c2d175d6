"""A configured key, token or password shorter than 8 characters is a configuration problem:
named by file, connector and field (and the environment variable it came from), with the fix,
never showing the value, found by every command that loads the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.config import MIN_SECRET_LENGTH, load_config
from syncengine.errors import ConfigError, Problem

CONFIG = """\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
api_key = {key}

[connectors.crm]
type = "rest"
base_url = "http://127.0.0.1:3000/api/"
{crm_auth}

[connectors.crm.entities.customers]
path = "/customers"

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "p"
members = ["hcp", "crm", "books"]
entities = ["customers"]
"""
BEARER = '[connectors.crm.auth]\nstyle = "bearer"\ntoken = "${CRM_TOKEN}"'
GOOD_ENV = {"HCP_API_KEY": "hcp-key-0123", "CRM_TOKEN": "crm-token-0123"}


def write(tmp_path: Path, *, key: str = '"${HCP_API_KEY}"', crm_auth: str = BEARER) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(key=key, crm_auth=crm_auth), encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str]) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return info.value.problems


def test_a_key_from_the_environment_shorter_than_8_is_named_with_its_variable(
    tmp_path: Path,
) -> None:
    path = write(tmp_path)
    found = problems(path, {**GOOD_ENV, "HCP_API_KEY": "sandbox"})
    assert [p.location for p in found] == [f"{path}: connectors.hcp.api_key"], found
    text = str(found[0])
    assert "is 7 characters long (from the environment variable HCP_API_KEY)" in text
    assert f"at least {MIN_SECRET_LENGTH}" in text
    assert found[0].fix == "set HCP_API_KEY to the whole api_key"
    assert "sandbox" not in text.replace("sandbox-key", ""), "the value is never shown"


def test_a_key_of_8_characters_is_taken(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), env={**GOOD_ENV, "HCP_API_KEY": "12345678"})
    assert "12345678" in config.secrets


def test_a_short_key_written_in_the_file_is_told_to_come_from_the_environment(
    tmp_path: Path,
) -> None:
    found = problems(write(tmp_path, key='"k3y"'), GOOD_ENV)
    assert len(found) == 1 and found[0].location.endswith("connectors.hcp.api_key"), found
    assert "is 3 characters long;" in found[0].message
    assert "k3y" not in str(found[0])
    assert 'api_key = "${VAR}"' in found[0].fix


def test_spaces_around_a_key_do_not_count(tmp_path: Path) -> None:
    found = problems(write(tmp_path), {**GOOD_ENV, "HCP_API_KEY": "  abcdef  "})
    assert [p.location.rsplit(": ", 1)[1] for p in found] == ["connectors.hcp.api_key"]
    assert "is 6 characters long" in found[0].message


@pytest.mark.parametrize(
    ("auth", "env", "field"),
    [
        (BEARER, {"CRM_TOKEN": "zq9"}, "connectors.crm.auth.token"),
        (
            '[connectors.crm.auth]\nstyle = "header"\ntoken = "${CRM_TOKEN}"',
            {"CRM_TOKEN": "1234567"},
            "connectors.crm.auth.token",
        ),
        (
            '[connectors.crm.auth]\nstyle = "basic"\nusername = "office"\n'
            'password = "${CRM_PASSWORD}"',
            {"CRM_PASSWORD": "hunter2"},
            "connectors.crm.auth.password",
        ),
    ],
)
def test_short_tokens_and_passwords_of_a_rest_member_are_named_by_their_field(
    tmp_path: Path, auth: str, env: dict[str, str], field: str
) -> None:
    found = problems(write(tmp_path, crm_auth=auth), {**GOOD_ENV, **env})
    assert [p.location.rsplit(": ", 1)[1] for p in found] == [field], found
    variable = next(iter(env))
    assert f"(from the environment variable {variable})" in found[0].message
    assert env[variable] not in str(found[0])


def test_every_short_secret_is_reported_in_one_load(tmp_path: Path) -> None:
    found = problems(write(tmp_path), {"HCP_API_KEY": "abc", "CRM_TOKEN": "def"})
    assert sorted(p.location.rsplit(": ", 1)[1] for p in found) == [
        "connectors.crm.auth.token",
        "connectors.hcp.api_key",
    ]


def test_an_unset_variable_is_not_taken_for_a_short_key_where_it_may_be_unset(
    tmp_path: Path,
) -> None:
    """``status`` loads the config without requiring the variables: ``${HCP_API_KEY}`` left
    as written is not a key that is too short."""
    config = load_config(write(tmp_path), env={}, strict_env=False)
    assert set(config.connectors) == {"hcp", "crm", "books"}
