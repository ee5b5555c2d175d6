"""REST descriptions that are wrong, through the real ``syncengine`` command against a real
json-server 0.17.4 and the Housecall Pro sandbox: a clear message naming the connector, the
entity and the setting, and nothing written anywhere (json-server's ``db.json``, the CSV, the
sandbox). Problems the configuration shows exit 2 before any request (``validate`` and
``sync``); problems only a response shows (a wrong records path, a missing id field, refused
credentials, a pagination loop) stop the sync with exit 4 (the run could not happen) before
any write.

And the other side of "described in configuration": ``probe`` shows what a description reads,
and the same connector describes the Housecall Pro sandbox itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.jsonserver import JsonServer
from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, cli_env
from tests.jsonserver import ensure_json_server

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]

PEOPLE = [
    {"id": n, "firstName": f"Crm{n}", "lastName": "Person", "email": f"p{n}@example.org"}
    for n in range(1, 6)
]
LINK = '{ style = "link", page_param = "_page", size_param = "_limit" }'


def crm_table(
    url: str, *, auth: str = "", path: str = "/customers", pagination: str = LINK, extra: str = ""
) -> str:
    """The ``[connectors.crm]`` tables of a rest member (page size 2: json-server pages)."""
    return f"""\
[connectors.crm]
type = "rest"
base_url = "{url}"
rate_limit = 0
max_retries = 0
page_size = 2
{auth}

[connectors.crm.entities.customers]
path = "{path}"
pagination = {pagination}
{extra}
"""


def config_text(hcp_port: int, crm_table: str) -> str:
    return f"""\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:{hcp_port}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 0

[connectors.books]
type = "spreadsheet"
path = "books"

{crm_table}

[[pipelines]]
name = "three"
members = ["hcp", "books", "crm"]
entities = ["customers"]

[pipelines.conflicts]
default = ["hcp"]
"""


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[JsonServer]:
    with JsonServer(ensure_json_server(), tmp_path / "crm", {"customers": PEOPLE}) as server:
        yield server


def write(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_nothing_written(folder: Path, box: Sandbox, crm: JsonServer, db: bytes) -> None:
    assert box.writes() == []
    assert crm.db_bytes() == db
    assert not (folder / "books" / "customers.csv").exists()


# ------------------------------------------------------------- found by validate: exit 2


def test_configuration_problems_exit_2_before_any_request(
    tmp_path: Path, cli: Cli, idle_sandbox: Sandbox, crm: JsonServer
) -> None:
    idle_sandbox.clear_requests()
    db = crm.db_bytes()
    table = crm_table(
        crm.url,
        auth='[connectors.crm.auth]\nstyle = "bearer"\ntokn = "x"\n',
        pagination='{ style = "cursr" }',
        extra='update = "GET /customers/{id}"\nrecords_path = "data..items"\n',
    )
    config = write(tmp_path, config_text(idle_sandbox.port, table))
    for command in (["validate"], ["sync"], ["sync", "--dry-run"]):
        result = cli(*command, "--config", config)
        assert_clean_exit(result, 2)
        err = result.stderr
        assert "configuration error (4 problems; nothing was read or written)" in err, err
        assert "connectors.crm.auth: token is required for auth style 'bearer'" in err
        assert "did you mean 'token'?" in err
        assert "connectors.crm.entities.customers.update: update cannot use GET" in err
        assert "connectors.crm.entities.customers.records_path" in err
        assert (
            "connectors.crm.entities.customers.pagination: unknown pagination style "
            "'cursr' (did you mean 'cursor'? use one of: cursor, link, none, offset, "
            "page, total_count)"
        ) in err
    assert idle_sandbox.requests() == []
    assert crm.db_bytes() == db
    assert not (tmp_path / "state.db").exists()


# ------------------------------------------------------- found in a response: exit 4


@pytest.mark.parametrize(
    ("table", "words"),
    [
        pytest.param(
            {"extra": 'records_path = "data"'},
            [
                "crm:customers: GET /customers the first page: the response has no 'data' "
                "(setting records_path = 'data' in [connectors.crm.entities.customers])",
                'the body itself is the list of records: set records_path = ""',
            ],
            id="records-path",
        ),
        pytest.param(
            {"extra": 'id_field = "uuid"'},
            [
                "crm:customers: GET /customers the first page: a record has no usable id at 'uuid'",
                "setting id_field = 'uuid'",
                "keys: id, firstName",
            ],
            id="id-field",
        ),
        pytest.param(
            {"path": "/custmers"},
            ["crm:customers:", "the list path does not exist (setting path = '/custmers'"],
            id="list-path",
        ),
        pytest.param(
            {"pagination": '{ style = "page", page_param = "page", size_param = "_limit" }'},
            [
                "crm:customers: GET /customers page 2: the page repeats the previous page's "
                "records",
                "pagination.page_param = 'page'",
            ],
            id="pagination-loop",
        ),  # json-server ignores ?page=: page 2 is page 1
    ],
)
def test_a_description_the_responses_contradict_stops_before_any_write(
    tmp_path: Path,
    cli: Cli,
    sandbox_factory: SandboxFactory,
    crm: JsonServer,
    table: dict[str, str],
    words: list[str],
) -> None:
    box = sandbox_factory(seed=3)
    db = crm.db_bytes()
    config = write(tmp_path, config_text(box.port, crm_table(crm.url, **table)))
    assert_clean_exit(cli("validate", "--config", config), 0)

    result = cli("sync", "--config", config)
    assert_clean_exit(result, 4)
    message = " ".join(result.stderr.split())
    for expected in words:
        assert expected in message, result.stderr
    assert_nothing_written(tmp_path, box, crm, db)


def test_refused_credentials_name_the_connector_and_its_auth_setting(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, crm: JsonServer
) -> None:
    """The CRM here is the HCP sandbox itself (it wants a token), described by the rest
    connector with the wrong one."""
    box = sandbox_factory(seed=3)
    db = crm.db_bytes()
    table = crm_table(
        box.base_url,
        extra='records_path = "customers"',
        auth='[connectors.crm.auth]\nstyle = "token"\ntoken = "${CRM_TOKEN}"\n',
    )
    config = write(tmp_path, config_text(box.port, table))
    env_result = cli("sync", "--config", config, env=cli_env(CRM_TOKEN="wrong-token-123456"))
    assert_clean_exit(env_result, 4)
    message = " ".join(env_result.stderr.split())
    assert "crm:customers: GET /customers: HTTP 401" in message, env_result.stderr
    assert "auth style 'token' in [connectors.crm.auth]" in message
    assert "wrong-token-123456" not in env_result.output
    assert_nothing_written(tmp_path, box, crm, db)


# ----------------------------------------------------------------------- probe, HCP as REST


def test_probe_shows_what_a_description_reads(
    tmp_path: Path, cli: Cli, idle_sandbox: Sandbox, crm: JsonServer
) -> None:
    idle_sandbox.clear_requests()
    db = crm.db_bytes()
    config = write(tmp_path, config_text(idle_sandbox.port, crm_table(crm.url)))
    shown = cli("probe", "--config", config, "--connector", "crm", "--limit", "2", "--json")
    assert_clean_exit(shown, 0)
    [probed] = json.loads(shown.stdout)
    assert probed["entity"] == "customers" and probed["read"] == 2
    assert probed["mapping"].endswith("mappings/rest/customers.toml")
    first = probed["records"][0]
    assert first["id"] == "1" and first["location"] == "crm customers 1"
    assert {k: v for k, v in first["canonical"].items() if v is not None} == {
        "first_name": "Crm1",
        "last_name": "Person",
        "email": "p1@example.org",
    }
    assert idle_sandbox.requests() == []
    assert crm.db_bytes() == db


HCP_AS_REST_MAPPING = """\
[fields]
first_name = "first_name"
last_name = "last_name"
email = { native = "email", transform = "email" }
mobile_number = { native = "mobile_number", transform = { name = "phone", format = "e164" } }
company = "company"
"addresses.service.city" = "addresses[type=service].city"
updated_at = { native = "updated_at", direction = "read" }
"""


def test_the_rest_connector_describes_housecall_pro_itself(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=9)
    (tmp_path / "hcp-as-rest.toml").write_text(HCP_AS_REST_MAPPING, encoding="utf-8")
    config = write(
        tmp_path,
        f"""\
[state]
url = "sqlite:///state.db"

[connectors.crm]
type = "rest"
base_url = "{box.base_url}"
rate_limit = 0
page_size = 4
auth = {{ style = "token", token = "${{HCP_API_KEY}}" }}

[connectors.crm.entities.customers]
path = "/customers"
update = "PUT /customers/{{id}}"
records_path = "customers"
read_only_fields = ["id", "created_at", "updated_at", "addresses"]
list_params = {{ sort_by = "created_at", sort_direction = "asc" }}
find_params = {{ email = "q" }}
pagination = {{ style = "page", page_param = "page", size_param = "page_size", \
total_path = "total_items" }}

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-rest"
members = ["crm", "books"]
entities = ["customers"]
[pipelines.conflicts]
default = ["crm"]
[pipelines.mappings.crm]
customers = "hcp-as-rest.toml"
""",
    )
    first = cli("sync", "--config", config)
    assert_clean_exit(first, 0)
    pages = [r for r in box.requests() if r["method"] == "GET"]
    assert len(pages) == 3  # 9 customers, 4 a page, the total says when to stop
    assert box.writes() == []
    rows = read_csv(tmp_path / "books" / "customers.csv")
    assert {(r["First Name"], r["Last Name"]) for r in rows} == {
        (c["first_name"], c["last_name"]) for c in box.customers()
    }

    edited = next(r for r in rows if r["Email"])
    edited["Company"] = "Edited In Books"
    write_csv(tmp_path / "books" / "customers.csv", rows, list(rows[0]))
    second = cli("sync", "--config", config)
    assert_clean_exit(second, 0)
    assert box.customer_by_email(edited["Email"])["company"] == "Edited In Books"
    box.clear_requests()
    quiet = cli("sync", "--config", config)
    assert_clean_exit(quiet, 0)
    assert "Nothing to do" in quiet.stdout
    assert box.writes() == []
