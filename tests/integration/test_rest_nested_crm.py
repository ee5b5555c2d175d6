"""Three members through the real ``syncengine`` command: the Housecall Pro sandbox, a CSV
folder, and testbed/nestedcrm.py (a CRM with nested properties, a cursor at
``paging.next.after``, read-only properties refused, 409 on a duplicate e-mail, a POST search)
described by mappings/rest/crm-properties.toml.

Creates, edits and deletes on each member reach the other two; every PATCH carries only the
changed properties; a create refused as a duplicate links to the existing contact; a second
sync plans nothing and lists the CRM with the fewest calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.nestedcrm import BASE, READ_ONLY, NestedCrm
from tests.csvfiles import CSV_HEADER, read_csv, write_csv
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit
from tests.integration.test_rest_three_way import BOOKS_PEOPLE, hcp_client

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
Name = tuple[str, str]
PAGE_SIZE = 4
MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "rest" / "crm-properties.toml"

CRM_PEOPLE = [
    {"firstname": "Cora", "lastname": "Crmsworth", "email": "cora.crm@example.org",
     "company": "Cora Cleaning", "city": "Austin"},
    {"firstname": "Cal", "lastname": "Crmley", "email": "cal.crm@example.org"},
]  # fmt: skip


def config(folder: Path, hcp_port: int, crm_url: str) -> Path:
    text = f"""\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:{hcp_port}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 1
delete_customers = true

[connectors.books]
type = "spreadsheet"
path = "books"

[connectors.crm]
type = "rest"
base_url = "{crm_url}"
rate_limit = 0
max_retries = 1
page_size = {PAGE_SIZE}

[connectors.crm.entities.customers]
path = "{BASE}"
records_path = "results"
read_only_fields = ["properties.hs_*", "properties.createdate", "properties.lastmodifieddate",
                    "createdAt", "updatedAt", "archived"]
duplicate = {{ status = 409, id_pattern = "Existing ID: (\\\\d+)" }}
[connectors.crm.entities.customers.pagination]
style = "cursor"
cursor_param = "after"
cursor_path = "paging.next.after"
size_param = "limit"

[connectors.crm.entities.customers.find]
method = "POST"
path = "{BASE}/search"
records_path = "results"

[connectors.crm.entities.customers.find.body]
limit = 10

[[connectors.crm.entities.customers.find.body.filterGroups]]
[[connectors.crm.entities.customers.find.body.filterGroups.filters]]
propertyName = "email"
operator = "EQ"
value = "{{properties.email}}"

[[pipelines]]
name = "three"
members = ["hcp", "books", "crm"]
entities = ["customers"]

[pipelines.mappings.crm]
customers = "{MAPPING}"

[pipelines.conflicts]
default = ["hcp"]

[pipelines.deletes]
propagate = true
max_fraction = 0.5
min_count = 5
"""
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[NestedCrm]:
    with NestedCrm(CRM_PEOPLE, folder=str(tmp_path)) as server:
        yield server


def names(crm: NestedCrm) -> set[Name]:
    return {(r["properties"]["firstname"], r["properties"]["lastname"]) for r in crm.records()}


def assert_all_hold(box: Sandbox, csv_path: Path, crm: NestedCrm, expected: set[Name]) -> None:
    assert {(c["first_name"], c["last_name"]) for c in box.customers()} == expected
    assert {(r["First Name"], r["Last Name"]) for r in read_csv(csv_path)} == expected
    assert names(crm) == expected
    assert len(crm.records()) == len(box.customers()) == len(read_csv(csv_path)) == len(expected)


def quiet_second_sync(cli: Cli, cfg: Path, box: Sandbox, crm: NestedCrm) -> None:
    """Plans nothing, writes nothing, and lists the CRM with the fewest calls."""
    count = len(crm.records())
    crm.clear_log()
    box.clear_requests()
    again = cli("sync", "--config", cfg)
    assert_clean_exit(again, 0)
    assert "Nothing to do" in again.stdout, again.stdout
    log = crm.log()
    assert [e for e in log if e["method"] != "GET"] == [] and box.writes() == []
    assert len(log) == max(1, math.ceil(count / PAGE_SIZE)), log


def test_nested_crm_in_three_way_sync(
    tmp_path: Path, cli: Cli, sandbox_factory: Callable[..., Sandbox], crm: NestedCrm
) -> None:
    box = sandbox_factory(seed=4)
    csv_path = tmp_path / "books" / "customers.csv"
    write_csv(csv_path, BOOKS_PEOPLE, CSV_HEADER)
    cfg = config(tmp_path, box.port, crm.url)
    assert_clean_exit(cli("validate", "--config", cfg), 0)
    seeded = {(c["first_name"], c["last_name"]) for c in box.customers()}
    everyone = seeded | {("Cora", "Crmsworth"), ("Cal", "Crmley"), ("Bea", "Booker"),
                         ("Bart", "Bookman")}  # fmt: skip

    first = cli("sync", "--config", cfg)
    assert_clean_exit(first, 0)
    assert_all_hold(box, csv_path, crm, everyone)
    assert crm.by_email("bea.books@example.org")["properties"]["company"] == "Bea's Bakery"
    quiet_second_sync(cli, cfg, box, crm)

    # One edit, one create and one delete on each member; and someone creates Hana on the
    # CRM just before the sync does (the create is refused as a duplicate).
    people = sorted((c for c in box.customers() if (c["first_name"], c["last_name"]) in seeded),
                    key=lambda c: (c["last_name"], c["first_name"]))  # fmt: skip
    edited, deleted = people[0], people[1]
    with hcp_client(box) as hcp:
        hcp.put(f"/customers/{edited['id']}", json={"last_name": "Hcp-Edited"}).raise_for_status()
        hana = {"first_name": "Hana", "last_name": "Hcpnew", "email": "hana.hcp@example.org"}
        hcp.post("/customers", json=hana).raise_for_status()
        hcp.delete(f"/customers/{deleted['id']}").raise_for_status()
    rows = [r for r in read_csv(csv_path) if r["Email"] != "bart.books@example.org"]
    for r in rows:
        if r["Email"] == "cora.crm@example.org":
            r["Company"] = "Cora Cleaning (books edit)"
    rows.append({"First Name": "Bo", "Last Name": "Booknew", "Email": "bo.books@example.org"})
    write_csv(csv_path, rows, list(rows[0]))
    crm.patch(crm.by_email("bea.books@example.org")["id"], {"firstname": "Beatrix"})
    crm.post({"firstname": "Cyd", "lastname": "Crmnew", "email": "cyd.crm@example.org"})
    crm.delete(crm.by_email("cal.crm@example.org")["id"])
    crm.race({"firstname": "Hana", "lastname": "Hcpnew", "email": "hana.hcp@example.org"})
    crm.clear_log()

    changed = cli("sync", "--config", cfg)
    assert_clean_exit(changed, 0)
    log = crm.log()
    refused = [e for e in log if e["method"] == "POST" and e["path"] == BASE]
    patches = [e["body"] for e in log if e["method"] == "PATCH"]
    gone = {(deleted["first_name"], deleted["last_name"]), ("Bart", "Bookman"), ("Cal", "Crmley"),
            ("Bea", "Booker"), (edited["first_name"], edited["last_name"])}  # fmt: skip
    everyone -= gone
    everyone |= {("Hana", "Hcpnew"), ("Bo", "Booknew"), ("Cyd", "Crmnew"), ("Beatrix", "Booker"),
                 (edited["first_name"], "Hcp-Edited")}  # fmt: skip
    assert_all_hold(box, csv_path, crm, everyone)
    # only the changed properties, nested, never a read-only one
    assert sorted(patches, key=str) == sorted(
        [{"properties": {"lastname": "Hcp-Edited"}},
         {"properties": {"company": "Cora Cleaning (books edit)"}}], key=str
    ), patches  # fmt: skip
    assert not any(set(p["properties"]) & READ_ONLY for p in patches)
    # the duplicate refusal linked Hana to the contact created meanwhile
    assert len(refused) == 2  # Hana (refused) and Bo
    hana = crm.by_email("hana.hcp@example.org")
    fetched = [e["path"] for e in log if e["method"] == "GET" and e["path"] != BASE]
    assert fetched == [f"{BASE}/{hana['id']}"]  # the existing contact, by the id refused with
    assert crm.by_email("cora.crm@example.org")["properties"]["company"] == (
        "Cora Cleaning (books edit)"
    )
    quiet_second_sync(cli, cfg, box, crm)
