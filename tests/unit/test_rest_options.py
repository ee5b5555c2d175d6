"""Validating a REST description when the configuration is loaded: every problem at once, at
the setting's location (connector, entity, setting), with the fix, no secret shown, and
nothing read or written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from syncengine.config import load_config
from syncengine.connector import Capabilities
from syncengine.connectors.rest import (
    PAGINATORS,
    PaginationOptions,
    Paginator,
    RestConnector,
    RestOptions,
    register_paginator,
)
from syncengine.connectors.rest.options import Route, parse_route
from syncengine.connectors.rest.paging import Page, PageRequest
from syncengine.errors import ConfigError
from syncengine.exit_codes import ExitCode
from tests.helpers import write_config

GOOD = """\
[state]
url = "sqlite:///state.db"

[connectors.crm]
type = "rest"
base_url = "http://127.0.0.1:3000/api/"
{crm}

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "p"
members = ["crm", "books"]
"""
CUSTOMERS = """\
[connectors.crm.entities.customers]
path = "/customers"
"""


def load(tmp_path: Path, crm: str, env: dict[str, str] | None = None) -> Any:
    return load_config(write_config(tmp_path, GOOD.format(crm=crm)), env=env or {})


def problems(tmp_path: Path, crm: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, crm, env)
    return [str(p) for p in caught.value.problems]


def only(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------- good


def test_a_path_gives_every_operation(tmp_path: Path) -> None:
    config = load(tmp_path, CUSTOMERS)
    options = config.connectors["crm"].options
    assert isinstance(options, RestOptions)
    assert options.base_url == "http://127.0.0.1:3000/api"
    routes = options.entities["customers"].routes()
    assert [
        str(r) for r in (routes.list, routes.get, routes.create, routes.update, routes.delete)
    ] == [
        "GET /customers",
        "GET /customers/{id}",
        "POST /customers",
        "PATCH /customers/{id}",
        "DELETE /customers/{id}",
    ]
    conn = config.make_connector("crm")
    try:
        assert conn.entities() == ("customers",)
        assert conn.capabilities("customers") == Capabilities()
    finally:
        conn.close()


def test_operations_can_be_given_or_switched_off(tmp_path: Path) -> None:
    config = load(
        tmp_path, CUSTOMERS + 'update = "PUT /customers/{id}/full"\ndelete = false\nget = false\n'
    )
    conn = config.make_connector("crm")
    assert isinstance(conn, RestConnector)
    routes = conn.opts.entities["customers"].routes()
    assert str(routes.update) == "PUT /customers/{id}/full"
    assert routes.get is None and routes.delete is None
    assert conn.capabilities("customers") == Capabilities(delete=False)
    conn.close()


def test_a_list_alone_is_a_read_only_member(tmp_path: Path) -> None:
    config = load(tmp_path, '[connectors.crm.entities.customers]\nlist = "/people"\n')
    conn = config.make_connector("crm")
    assert conn.capabilities("customers") == Capabilities(create=False, update=False, delete=False)
    conn.close()


def test_the_default_mapping_is_found(tmp_path: Path) -> None:
    config = load(tmp_path, CUSTOMERS)
    mapping = config.pipelines["p"].mappings[("crm", "customers")]
    assert mapping.source.endswith("mappings/rest/customers.toml")


def test_secrets_are_collected_for_redaction(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        CUSTOMERS + '[connectors.crm.auth]\nstyle = "query"\ntoken = "${CRM_KEY}"\n',
        {"CRM_KEY": "k-123456"},
    )
    assert "k-123456" in config.secrets
    options = config.connectors["crm"].options
    assert "k-123456" not in repr(options)


def test_the_write_and_lookup_settings_are_read(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        CUSTOMERS
        + 'update_body = "top_level"\n'
        + 'read_only_fields = ["createdAt", "properties.hs_*", "meta.?d"]\n'
        + 'duplicate = { status = 400, message_pattern = "already", id_pattern = "id (\\\\d+)" }\n'
        + 'find = { method = "post", path = "/s", body = { f = [{ v = "{p.email}" }] } }\n',
    )
    options = config.connectors["crm"].options
    assert isinstance(options, RestOptions)
    customers = options.entities["customers"]
    assert customers.update_body == "top_level"
    assert customers.read_only_patterns()[1:] == (
        ("createdAt",),
        ("properties", "hs_*"),
        ("meta", "?d"),
    )
    assert customers.duplicate is not None
    assert (customers.duplicate.status, customers.duplicate.id_pattern) == (400, r"id (\d+)")
    assert customers.find is not None
    assert customers.find.method == "POST"  # written in any case, as in routes
    assert customers.find.placeholders() == ["p.email"]
    off = load(tmp_path, CUSTOMERS + "duplicate = false\n").connectors["crm"].options
    assert off.entities["customers"].duplicate is None


# ----------------------------------------------------------------------------------- bad


@pytest.mark.parametrize(
    ("crm", "location", "words"),
    [
        (
            '[connectors.crm.entities.customers]\nrecords_path = "x"\n',
            "connectors.crm.entities.customers.list",
            'path = "/contacts"',
        ),
        (
            CUSTOMERS + 'update = "GET /customers/{id}"\n',
            "connectors.crm.entities.customers.update",
            "update cannot use GET (use PATCH or PUT",
        ),
        (
            CUSTOMERS + 'delete = "DELETE /customers"\n',
            "connectors.crm.entities.customers.delete",
            "must hold {id} once",
        ),
        (
            CUSTOMERS + 'get = "GET /customers/{uuid}"\n',
            "connectors.crm.entities.customers.get",
            "placeholder {uuid}; only {id} is known",
        ),
        (
            CUSTOMERS + 'create = "POST customers"\n',
            "connectors.crm.entities.customers.create",
            "must start with '/'",
        ),
        (
            CUSTOMERS + 'create = "POST /customers?x=1"\n',
            "connectors.crm.entities.customers.create",
            "put query parameters in list_params",
        ),
        (
            '[connectors.crm.entities.customers]\nlist = "/c"\ncreate = true\n',
            "connectors.crm.entities.customers.create",
            "create = true needs path",
        ),
        (
            CUSTOMERS + 'records_path = "data..items"\n',
            "connectors.crm.entities.customers.records_path",
            "not a dotted path",
        ),
        (
            CUSTOMERS + 'id_field = ""\n',
            "connectors.crm.entities.customers.id_field",
            "is required",
        ),
        (
            CUSTOMERS + 'pagination = { style = "pages" }\n',
            "connectors.crm.entities.customers.pagination",
            "unknown pagination style 'pages' (did you mean 'page'? use one of: cursor, link, "
            "none, offset, page, total_count)",
        ),
        (
            CUSTOMERS + "pagination = { page_param = 'p' }\n",
            "connectors.crm.entities.customers.pagination",
            "style is required (use one of: cursor,",
        ),
        (
            CUSTOMERS + 'pagination = { style = "cursor", cursor_pth = "next" }\n',
            "connectors.crm.entities.customers.pagination",
            "unknown key 'cursor_pth' for pagination style 'cursor' (did you mean 'cursor_path'?)",
        ),
        (
            CUSTOMERS + 'pagination = { style = "page", page_size = 0 }\n',
            "connectors.crm.entities.customers.pagination",
            "page_size: Input should be greater",
        ),
        (
            CUSTOMERS + 'pagination = { style = "total_count", total_header = "" }\n',
            "connectors.crm.entities.customers.pagination",
            "total_header: is required",
        ),
        (
            CUSTOMERS + "incremental = { enabled = true }\n",
            "connectors.crm.entities.customers.incremental",
            "needs updated_field",
        ),
        (
            '[connectors.crm.entities.contacts]\npath = "/contacts"\n',
            "connectors.crm.entities.contacts",
            "unknown entity 'contacts'",
        ),
        (
            CUSTOMERS + '[connectors.crm.auth]\nstyle = "oauth"\n',
            "connectors.crm.auth",
            "unknown auth style 'oauth' (use one of: basic, bearer, header, none, query, token)",
        ),
        (
            CUSTOMERS + '[connectors.crm.auth]\nstyle = "bearer"\n',
            "connectors.crm.auth",
            "token is required for auth style 'bearer'",
        ),
        (
            'headers = { Authorization = "Bearer x" }\n' + CUSTOMERS,
            "connectors.crm.headers",
            "describe them in [auth] instead",
        ),
        (
            CUSTOMERS + 'pth = "/x"\n',
            "connectors.crm.entities.customers.pth",
            "unknown key 'pth' (did you mean 'path'?)",
        ),
        (
            CUSTOMERS + 'incremental = { enabled = false, parm = "x" }\n',
            "connectors.crm.entities.customers.incremental.parm",
            "unknown key 'parm' (did you mean 'param'?)",
        ),
        ("page_size = 0\n" + CUSTOMERS, "connectors.crm.page_size", "greater than or equal to 1"),
        ("colour = 'blue'\n" + CUSTOMERS, "connectors.crm.colour", "unknown key 'colour'"),
        # update_body
        (
            CUSTOMERS + 'update_body = "whole"\n',
            "connectors.crm.entities.customers.update_body",
            "Input should be 'leaves' or 'top_level' (got 'whole')",
        ),
        # read_only_fields
        (
            CUSTOMERS + 'read_only_fields = "createdAt"\n',
            "connectors.crm.entities.customers.read_only_fields",
            'must be a list of dotted field paths, e.g. read_only_fields = ["createdAt",',
        ),
        (
            CUSTOMERS + "read_only_fields = [1]\n",
            "connectors.crm.entities.customers.read_only_fields",
            "must be a list of dotted field paths",
        ),
        (
            CUSTOMERS + 'read_only_fields = ["properties..hs_*"]\n',
            "connectors.crm.entities.customers.read_only_fields",
            "'properties..hs_*' is not a dotted field path (part ''); write keys separated "
            "by '.', with * or ? as wildcards",
        ),
        (
            CUSTOMERS + 'read_only_fields = ["emails[0]"]\n',
            "connectors.crm.entities.customers.read_only_fields",
            "'emails[0]' is not a dotted field path",
        ),
        (
            CUSTOMERS + 'read_only_fields = ["*"]\n',
            "connectors.crm.entities.customers.read_only_fields",
            "'*' matches every field, so nothing would ever be sent: name the fields",
        ),
        # duplicate
        (
            CUSTOMERS + "duplicate = { status = 99 }\n",
            "connectors.crm.entities.customers.duplicate.status",
            "greater than or equal to 400",
        ),
        (
            CUSTOMERS + "duplicate = { status = 500 }\n",
            "connectors.crm.entities.customers.duplicate.status",
            "less than or equal to 499",
        ),
        (
            CUSTOMERS + "duplicate = { status = 429 }\n",
            "connectors.crm.entities.customers.duplicate.status",
            "429 means too many requests (it is waited out and retried), never a duplicate: "
            "use the status the API refuses a duplicate create with",
        ),
        (
            CUSTOMERS + "duplicate = { status = true }\n",
            "connectors.crm.entities.customers.duplicate.status",
            "which is not a number",
        ),
        (
            CUSTOMERS + 'duplicate = "yes"\n',
            "connectors.crm.entities.customers.duplicate",
            "valid dictionary",
        ),
        (
            CUSTOMERS + 'duplicate = { id_pattern = "(" }\n',
            "connectors.crm.entities.customers.duplicate.id_pattern",
            "'(' is not a regular expression (missing ), unterminated subpattern",
        ),
        (
            CUSTOMERS + 'duplicate = { id_pattern = "Existing ID: \\\\d+" }\n',
            "connectors.crm.entities.customers.duplicate.id_pattern",
            'has no group: put the id in parentheses, e.g. "Existing ID: (\\d+)"',
        ),
        (
            CUSTOMERS + 'duplicate = { id_pattern = "(?:\\\\d+)" }\n',
            "connectors.crm.entities.customers.duplicate.id_pattern",
            "has no group",
        ),
        (
            CUSTOMERS + 'duplicate = { status = 400, message_pattern = "[already" }\n',
            "connectors.crm.entities.customers.duplicate.message_pattern",
            "'[already' is not a regular expression (unterminated character set",
        ),
        (
            CUSTOMERS + "duplicate = { stauts = 409 }\n",
            "connectors.crm.entities.customers.duplicate.stauts",
            "unknown key 'stauts' (did you mean 'status'?)",
        ),
        # find
        (
            CUSTOMERS + 'find = { method = "PUT", path = "/s", body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find.method",
            "Input should be 'GET' or 'POST' (got 'PUT')",
        ),
        (
            CUSTOMERS + 'find = { body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find.path",
            "is required (fix: add it)",
        ),
        (
            CUSTOMERS + 'find = "/customers/search"\n',
            "connectors.crm.entities.customers.find",
            "valid dictionary",
        ),
        (
            CUSTOMERS + 'find = { path = "POST /s", body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find.path",
            "'POST /s' is not a path: give the path alone",
        ),
        (
            CUSTOMERS + 'find = { path = "/s?limit=1", body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find.path",
            "has a query; put query parameters in params",
        ),
        (
            CUSTOMERS + 'find = { path = "s", body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find.path",
            "must start with '/'",
        ),
        (
            CUSTOMERS + 'find = { path = "/s/{email}", body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find.path",
            "holds a brace: a find path is sent as written; the record's values go in body "
            "or params placeholders",
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { q = "{email}" }, records_path = "a..b" }\n',
            "connectors.crm.entities.customers.find.records_path",
            "'a..b' is not a dotted path",
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { q = "{email}" }, recordspath = "r" }\n',
            "connectors.crm.entities.customers.find.recordspath",
            "unknown key 'recordspath' (did you mean 'records_path'?)",
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { q = "email" } }\n',
            "connectors.crm.entities.customers.find",
            'names no field of the record: put a placeholder such as "{email}"',
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { q = "{}" } }\n',
            "connectors.crm.entities.customers.find",
            "body.q: '{}' has an empty placeholder {}: name the record's field in it",
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { f = [{ v = "{email}" }, "{}"] } }\n',
            "connectors.crm.entities.customers.find",
            "body.f.1: '{}' has an empty placeholder",
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { q = "{email", n = "{name}" } }\n',
            "connectors.crm.entities.customers.find",
            "body.q: '{email' has an unmatched brace; braces only mark placeholders",
        ),
        (
            CUSTOMERS + 'find = { method = "GET", path = "/s", params = { q = "email}" } }\n',
            "connectors.crm.entities.customers.find",
            "params.q: 'email}' has an unmatched brace",
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { "{email}" = "{email}" } }\n',
            "connectors.crm.entities.customers.find",
            "the key '{email}' holds a placeholder, which only values may hold",
        ),
        (
            CUSTOMERS + 'find = { path = "/s", body = { q = "{ email }" } }\n',
            "connectors.crm.entities.customers.find",
            "placeholder { email }: ' email ' is not a dotted path",
        ),
        (
            CUSTOMERS + 'find = { method = "GET", path = "/s", body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find",
            'a GET find sends no body: use params, or method = "POST"',
        ),
        (
            CUSTOMERS + 'find = { method = "GET", path = "/s", params = { q = ["{email}"] } }\n',
            "connectors.crm.entities.customers.find.params",
            "q is a list: a query parameter is a text, a number or true/false",
        ),
        (
            CUSTOMERS
            + 'find_params = { email = "email" }\n'
            + 'find = { path = "/s", body = { q = "{email}" } }\n',
            "connectors.crm.entities.customers.find",
            "find replaces find_params, which would never be used: remove find_params",
        ),
    ],
)
def test_a_bad_setting_is_named_with_its_fix(
    tmp_path: Path, crm: str, location: str, words: str
) -> None:
    problem = only(problems(tmp_path, crm))
    assert f"config.toml: {location}" in problem
    assert words in problem


def test_validate_reports_a_bad_rest_setting_with_exit_2_and_no_traceback(
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        GOOD.format(crm=CUSTOMERS + 'duplicate = { id_pattern = "Existing ID: (" }\n'),
    )
    env = {k: v for k, v in os.environ.items() if k != "SYNCENGINE_CONFIG"}
    env.update(COLUMNS="200", NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "syncengine.cli", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    said = done.stdout + done.stderr
    assert done.returncode == ExitCode.CONFIG, said
    assert "Traceback" not in said
    assert "connectors.crm.entities.customers.duplicate.id_pattern" in said
    assert "is not a regular expression" in said


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
[connectors.crm.auth]
style = "bearer"
tokn = "${CRM_TOKEN}"

[connectors.crm.entities.customers]
path = "/customers/{id}"
update = "GET /customers/{id}"
records_path = "a..b"
pagination = { style = "pages" }

[connectors.crm.entities.invoices]
list = "/invoices"
delete = true
""",
        {"CRM_TOKEN": "t0ps3cret"},
    )
    where = [p.split(": ", 2)[1] for p in found]
    assert where == [
        "connectors.crm.auth",
        "connectors.crm.entities.customers.path",
        "connectors.crm.entities.customers.update",
        "connectors.crm.entities.customers.records_path",
        "connectors.crm.entities.customers.pagination",
        "connectors.crm.entities.invoices.delete",
    ], found


@pytest.mark.parametrize(
    "auth",
    [
        'style = "basic"\nusername = "a:b"\npassword = "${CRM_SECRET}"\n',
        'style = "bearer"\ntoken = "${CRM_SECRET}"\nschema = "x"\n',
        'style = "header"\ntoken = "${CRM_SECRET}"\nheader = "X Key"\n',
        'style = "none"\ntoken = "${CRM_SECRET}"\n',
    ],
)
def test_problems_never_show_a_secret(tmp_path: Path, auth: str) -> None:
    found = problems(
        tmp_path, CUSTOMERS + "[connectors.crm.auth]\n" + auth, {"CRM_SECRET": "s3cr3t-value"}
    )
    assert found
    assert not any("s3cr3t-value" in p for p in found), found


def test_an_empty_secret_says_which_variable_may_be_unset(tmp_path: Path) -> None:
    problem = only(
        problems(
            tmp_path,
            CUSTOMERS + '[connectors.crm.auth]\nstyle = "token"\ntoken = "${CRM_TOKEN:-}"\n',
        )
    )
    assert "connectors.crm.auth" in problem
    assert "where it names an environment variable (${NAME}), give that variable a value" in (
        problem
    )


# ---------------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("text", "op", "route"),
    [
        ("/contacts", "list", Route("GET", "/contacts")),
        ("get /contacts/{id}", "get", Route("GET", "/contacts/{id}")),
        ("/contacts/{id}", "update", Route("PATCH", "/contacts/{id}")),
        ("PUT /contacts/{id}", "update", Route("PUT", "/contacts/{id}")),
        ("POST /contacts/{id}/archive", "delete", Route("POST", "/contacts/{id}/archive")),
    ],
)
def test_parse_route(text: str, op: str, route: Route) -> None:
    assert parse_route(text, op) == route


def test_a_route_puts_the_id_in_quoted() -> None:
    assert Route("GET", "/c/{id}").path("a b/c") == "/c/a%20b%2Fc"


# --------------------------------------------------------------------------- the registry


class _EveryOtherOptions(PaginationOptions):
    style: str = "every_other"
    step_param: str = "n"


class _EveryOther(Paginator):
    """A test style: ?n=0, 2, 4, ... (shows the registry can be extended)."""

    style_name: ClassVar[str] = "every_other"
    Options: ClassVar[type[PaginationOptions]] = _EveryOtherOptions

    def _first(self) -> PageRequest:
        return PageRequest(self.path, self.base, "n 0")

    def _next(self, page: Page) -> PageRequest | None:
        return None


@pytest.fixture
def extra_style() -> Iterator[None]:
    register_paginator(_EveryOther)
    yield
    del PAGINATORS["every_other"]


@pytest.mark.usefixtures("extra_style")
def test_a_registered_pagination_style_is_accepted_with_its_own_settings(tmp_path: Path) -> None:
    config = load(
        tmp_path, CUSTOMERS + 'pagination = { style = "every_other", step_param = "k" }\n'
    )
    options = config.connectors["crm"].options
    assert isinstance(options, RestOptions)
    pagination = options.entities["customers"].pagination
    assert isinstance(pagination, _EveryOtherOptions)
    assert pagination.step_param == "k"
    problem = only(problems(tmp_path, CUSTOMERS + 'pagination = { style = "nope" }\n'))
    assert "every_other" in problem


def test_registering_a_second_style_of_the_same_name_is_refused() -> None:
    class Impostor(_EveryOther):
        style_name: ClassVar[str] = "page"

    with pytest.raises(ValueError, match="already registered"):
        register_paginator(Impostor)
