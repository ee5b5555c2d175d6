"""A CRM of customers beside HCP and the books in one pipeline, through the real ``syncengine``
command: the Housecall Pro sandbox (a subprocess), a CSV folder, and a real json-server 0.17.4
(a subprocess) described as a CRM that holds customers only.

``members = ["hcp", "books", "crm"]`` with ``[pipelines.member_entities] crm = ["customers"]``:
the books get HCP's customers, invoices and payments, the CRM gets the customers alone and is
never asked for anything else, and an edit made in the books and another made in the CRM to
the same customer between two runs both reach every member in one sync (two pipelines, the
only way before, settled them by whichever ran second).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.jsonserver import JsonServer
from tests.csvfiles import read_csv_table, write_csv
from tests.integration.books import Hcp, assert_books_match_hcp, assert_nothing_planned
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit
from tests.jsonserver import ensure_json_server

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]

CONTACT = {
    "id": 1,
    "firstName": "Cora",
    "lastName": "Crmsworth",
    "email": "cora.crm@example.org",
    "phone": "+15125550101",
    "company": "Cora Cleaning",
    "tags": [],
}


def shop_config(folder: Path, hcp_port: int, crm_url: str) -> Path:
    text = f"""\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:{hcp_port}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 1

[connectors.books]
type = "spreadsheet"
path = "books"

[connectors.crm]
type = "rest"
base_url = "{crm_url}"
rate_limit = 0
max_retries = 1
page_size = 20

[connectors.crm.entities.customers]
path = "/customers"
find_params = {{ email = "email" }}
update_body = "top_level"
pagination = {{ style = "link", page_param = "_page", size_param = "_limit" }}

[[pipelines]]
name = "shop"
members = ["hcp", "books", "crm"]
entities = ["customers", "invoices", "payments"]

[pipelines.member_entities]
crm = ["customers"]

[pipelines.conflicts]
default = ["hcp"]
"""
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[JsonServer]:
    binary = ensure_json_server()
    with JsonServer(binary, tmp_path / "crm", {"customers": [CONTACT]}) as server:
        yield server


def emails_of(rows: list[dict[str, object]], column: str) -> set[str]:
    return {str(r[column]).lower() for r in rows if r.get(column)}


def test_a_crm_of_customers_and_the_books_sync_in_one_pipeline(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, crm: JsonServer
) -> None:
    box = sandbox_factory(seed=40)
    config = shop_config(tmp_path, box.port, crm.url)
    books = tmp_path / "books"

    checked = cli("validate", "--config", config)
    assert_clean_exit(checked, 0)
    assert "crm: customers only" in checked.stdout, checked.stdout

    first = cli("sync", "--config", config, "--json")
    assert_clean_exit(first, 0)
    summary = json.loads(first.stdout)
    assert "crm" in summary["entities"]["customers"]
    assert "crm" not in summary["entities"]["invoices"], summary["entities"]["invoices"]
    assert "crm" not in summary["entities"]["payments"]

    hcp = Hcp(box)
    try:
        assert_books_match_hcp(hcp.books(), books)
        hcp_emails = emails_of(hcp.customers(), "email")
        hcp_count = len(hcp.customers())
    finally:
        hcp.close()
    # the CRM holds every customer (HCP's and its own) and was asked for nothing else
    assert set(crm.db()) == {"customers"}
    crm_emails = emails_of(crm.records(), "email")
    assert crm_emails == hcp_emails and "cora.crm@example.org" in hcp_emails
    assert len(crm.records()) == hcp_count, "a customer missing, or twice, on the CRM"
    sheet = read_csv_table(books / "customers.csv")
    assert emails_of(sheet.rows, "Email") == crm_emails
    assert len(sheet.rows) == hcp_count

    status = cli("status", "--config", config)
    assert_clean_exit(status, 0)
    assert "crm: customers only" in status.stdout, status.stdout
    report = cli("reconcile-report", "--config", config)
    assert_clean_exit(report, 0)
    assert "crm" not in report.stdout, report.stdout

    again = cli("sync", "--config", config, "--json")
    assert_clean_exit(again, 0)
    assert_nothing_planned(json.loads(again.stdout))

    # Between two runs, one customer is edited twice: the bookkeeper fixes the company in the
    # books, the office the phone in the CRM. One sync takes both edits everywhere.
    row = next(r for r in sheet.rows if r["Email"] and r["Email"].lower() in hcp_emails)
    email = row["Email"]
    row["Company"] = "Edited In The Books"
    write_csv(books / "customers.csv", sheet.rows, sheet.header)
    contact = crm.by_email(email)
    crm.patch(contact["id"], {"phone": "+15125559876"})

    both = cli("sync", "--config", config)
    assert_clean_exit(both, 0)
    held = box.customer_by_email(email)
    assert held["company"] == "Edited In The Books"
    assert held["mobile_number"].endswith("5125559876"), held
    contact = crm.by_email(email)
    assert contact.get("company") == "Edited In The Books", (contact, both.stdout)
    row = next(r for r in read_csv_table(books / "customers.csv").rows if r["Email"] == email)
    assert "".join(c for c in row["Mobile"] if c.isdigit()).endswith("5125559876"), row
    assert set(crm.db()) == {"customers"}

    last = cli("sync", "--config", config, "--json")
    assert_clean_exit(last, 0)
    assert_nothing_planned(json.loads(last.stdout))
