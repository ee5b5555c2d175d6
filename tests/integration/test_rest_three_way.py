"""Three members in one pipeline, through the real ``syncengine`` command: the Housecall Pro
sandbox (a subprocess), a CSV folder, and a real json-server 0.17.4 (a subprocess) described
as a CRM by the ``rest`` connector.

``members = ["hcp", "books", "crm"]``: creates, edits and deletes made on any member reach the
other two in one sync; a second sync plans nothing and writes nothing; the dry run shows each
member's actions and writes nothing anywhere; conflicts among three follow the rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from testbed.jsonserver import JsonServer
from tests.csvfiles import CSV_HEADER, read_csv, write_csv
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit
from tests.jsonserver import ensure_json_server

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
Name = tuple[str, str]

CRM_PEOPLE = [
    {
        "id": 1,
        "firstName": "Cora",
        "lastName": "Crmsworth",
        "email": "cora.crm@example.org",
        "phone": "+15125550101",
        "company": "Cora Cleaning",
        "tags": ["crm"],
        "address": {"street": "1 Crm St", "city": "Austin", "state": "TX", "zip": "78701"},
    },
    {
        "id": 2,
        "firstName": "Cal",
        "lastName": "Crmley",
        "email": "cal.crm@example.org",
        "phone": "+15125550102",
        "tags": [],
    },
]
BOOKS_PEOPLE = [
    {
        "First Name": "Bea",
        "Last Name": "Booker",
        "Email": "bea.books@example.org",
        "Mobile": "(512) 555-0201",
        "Company": "Bea's Bakery",
        "City": "Austin",
    },
    {
        "First Name": "Bart",
        "Last Name": "Bookman",
        "Email": "bart.books@example.org",
        "Mobile": "(512) 555-0202",
    },
]


def three_way_config(
    folder: Path, hcp_port: int, crm_url: str, *, conflicts: str = 'default = ["hcp"]'
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
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
page_size = 4

[connectors.crm.entities.customers]
path = "/customers"
find_params = {{ email = "email" }}
update_body = "top_level"
pagination = {{ style = "link", page_param = "_page", size_param = "_limit" }}

[[pipelines]]
name = "three"
members = ["hcp", "books", "crm"]
entities = ["customers"]

[pipelines.conflicts]
{conflicts}

[pipelines.deletes]
propagate = true
max_fraction = 0.5
min_count = 5
"""
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[JsonServer]:
    binary = ensure_json_server()
    with JsonServer(binary, tmp_path / "crm", {"customers": CRM_PEOPLE}) as server:
        yield server


# ------------------------------------------------------------------------------- members


def hcp_client(box: Sandbox) -> httpx.Client:
    return httpx.Client(
        base_url=box.base_url, timeout=30, headers={"Authorization": f"Token {box.api_key}"}
    )


def hcp_names(box: Sandbox) -> set[Name]:
    return {(c["first_name"], c["last_name"]) for c in box.customers()}


def books_names(csv_path: Path) -> set[Name]:
    return {(r["First Name"], r["Last Name"]) for r in read_csv(csv_path)}


def crm_names(crm: JsonServer) -> set[Name]:
    return {(r["firstName"], r["lastName"]) for r in crm.records()}


def assert_all_hold(box: Sandbox, csv_path: Path, crm: JsonServer, expected: set[Name]) -> None:
    assert hcp_names(box) == expected
    assert books_names(csv_path) == expected
    assert crm_names(crm) == expected
    assert len(crm.records()) == len(expected), "a duplicate on the CRM"
    assert len(read_csv(csv_path)) == len(expected), "a duplicate in the sheet"
    assert len(box.customers()) == len(expected), "a duplicate on HCP"


def counts(result: CliResult) -> dict[str, dict[str, int]]:
    summary = json.loads(result.stdout)
    customers = summary["entities"]["customers"]
    return {
        m: {k: customers[m][k] for k in ("create", "update", "delete")}
        for m in ("hcp", "books", "crm")
    }


def assert_quiet_second_sync(
    cli: Cli, config: Path, box: Sandbox, csv_path: Path, crm: JsonServer
) -> None:
    box.clear_requests()
    db, sheet = crm.db_bytes(), csv_path.read_bytes()
    again = cli("sync", "--config", config)
    assert_clean_exit(again, 0)
    assert "Nothing to do" in again.stdout, again.stdout
    assert box.writes() == []
    assert crm.db_bytes() == db
    assert csv_path.read_bytes() == sheet


# --------------------------------------------------------------------------------- tests


def test_three_members_sync_creates_edits_and_deletes_both_ways(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, crm: JsonServer
) -> None:
    box = sandbox_factory(seed=4)
    csv_path = tmp_path / "books" / "customers.csv"
    sheet = write_csv(csv_path, BOOKS_PEOPLE, CSV_HEADER)
    config = three_way_config(tmp_path, box.port, crm.url)
    seeded = hcp_names(box)
    assert len(seeded) == 4
    everyone = seeded | {
        ("Cora", "Crmsworth"),
        ("Cal", "Crmley"),
        ("Bea", "Booker"),
        ("Bart", "Bookman"),
    }
    db = crm.db_bytes()

    assert_clean_exit(cli("validate", "--config", config), 0)

    # The dry run: each member's actions, nothing written anywhere.
    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    for member in ("hcp", "books", "crm"):
        assert f"+ create on {member}" in dry.stdout, dry.stdout
    assert "Dry run: nothing was written" in dry.stdout
    planned = cli("sync", "--config", config, "--dry-run", "--json")
    assert_clean_exit(planned, 0)
    assert counts(planned) == {
        "hcp": {"create": 4, "update": 0, "delete": 0},
        # the sheet's own two rows are given their Sync IDs
        "books": {"create": 6, "update": 2, "delete": 0},
        "crm": {"create": 6, "update": 0, "delete": 0},
    }
    assert box.writes() == []
    assert crm.db_bytes() == db
    assert csv_path.read_bytes() == sheet
    assert not (tmp_path / "state.db").exists()

    first = cli("sync", "--config", config)
    assert_clean_exit(first, 0)
    assert_all_hold(box, csv_path, crm, everyone)
    cora = crm.by_email("cora.crm@example.org")
    hcp_cora = box.customer_by_email("cora.crm@example.org")
    assert hcp_cora["company"] == "Cora Cleaning"
    assert hcp_cora["mobile_number"].endswith("5125550101")
    row = next(r for r in read_csv(csv_path) if r["Email"] == "cora.crm@example.org")
    assert row["City"] == "Austin" and row["Tags"] == "crm"
    bea = crm.by_email("bea.books@example.org")
    assert bea["company"] == "Bea's Bakery" and bea["address"] == {"city": "Austin"}
    assert bea["phone"] == "+15125550201"
    assert_quiet_second_sync(cli, config, box, csv_path, crm)

    # One edit, one create and one delete on each member.
    seeded_people = sorted(
        (c for c in box.customers() if (c["first_name"], c["last_name"]) in seeded),
        key=lambda c: (c["last_name"], c["first_name"]),
    )
    edited_on_hcp, deleted_on_hcp = seeded_people[0], seeded_people[1]
    with hcp_client(box) as hcp:
        hcp.put(
            f"/customers/{edited_on_hcp['id']}", json={"last_name": "Hcp-Edited"}
        ).raise_for_status()
        hcp.post(
            "/customers",
            json={"first_name": "Hana", "last_name": "Hcpnew", "email": "hana.hcp@example.org"},
        ).raise_for_status()
        hcp.delete(f"/customers/{deleted_on_hcp['id']}").raise_for_status()
    rows = read_csv(csv_path)
    for r in rows:
        if r["Email"] == "cora.crm@example.org":
            r["Company"] = "Cora Cleaning (books edit)"
    rows = [r for r in rows if r["Email"] != "bart.books@example.org"]
    rows.append({"First Name": "Bo", "Last Name": "Booknew", "Email": "bo.books@example.org"})
    write_csv(csv_path, rows, list(rows[0]))
    crm.patch(bea["id"], {"firstName": "Beatrix"})
    crm.post({"firstName": "Cyd", "lastName": "Crmnew", "email": "cyd.crm@example.org"})
    crm.delete(crm.by_email("cal.crm@example.org")["id"])

    changed = cli("sync", "--config", config, "--json")
    assert_clean_exit(changed, 0)
    assert counts(changed) == {
        "hcp": {"create": 2, "update": 2, "delete": 2},
        # and the new row is given its Sync ID
        "books": {"create": 2, "update": 3, "delete": 2},
        "crm": {"create": 2, "update": 2, "delete": 2},
    }
    everyone -= {
        (deleted_on_hcp["first_name"], deleted_on_hcp["last_name"]),
        ("Bart", "Bookman"),
        ("Cal", "Crmley"),
        ("Bea", "Booker"),
        (edited_on_hcp["first_name"], edited_on_hcp["last_name"]),
    }
    everyone |= {
        ("Hana", "Hcpnew"),
        ("Bo", "Booknew"),
        ("Cyd", "Crmnew"),
        ("Beatrix", "Booker"),
        (edited_on_hcp["first_name"], "Hcp-Edited"),
    }
    assert_all_hold(box, csv_path, crm, everyone)
    assert box.customer_by_email("cora.crm@example.org")["company"] == "Cora Cleaning (books edit)"
    assert crm.by_email("cora.crm@example.org")["company"] == "Cora Cleaning (books edit)"
    assert crm.by_email("cora.crm@example.org")["id"] == cora["id"]
    assert_quiet_second_sync(cli, config, box, csv_path, crm)


def test_conflicts_among_three_follow_the_rules(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, crm: JsonServer
) -> None:
    box = sandbox_factory(seed=0)
    csv_path = tmp_path / "books" / "customers.csv"
    config = three_way_config(
        tmp_path,
        box.port,
        crm.url,
        conflicts='default = ["crm"]\n"customers.company" = ["books", "crm"]\n'
        '"customers.first_name" = ["manual"]',
    )
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert len(read_csv(csv_path)) == 2 and len(box.customers()) == 2

    # Cora is edited on all three members at once, differently.
    email = "cora.crm@example.org"
    hcp_cora = box.customer_by_email(email)
    box.update_customer(
        hcp_cora["id"], {"last_name": "Hcp-Last", "company": "Hcp Co", "first_name": "Corinne"}
    )
    rows = read_csv(csv_path)
    for r in rows:
        if r["Email"] == email:
            r.update({"Last Name": "Books-Last", "Company": "Books Co", "First Name": "Cory"})
    write_csv(csv_path, rows, list(rows[0]))
    crm_cora = crm.by_email(email)
    crm.patch(crm_cora["id"], {"lastName": "Crm-Last", "company": "Crm Co"})

    parked = cli("sync", "--config", config)
    assert_clean_exit(parked, 1)  # the first name waits for a person
    # default = crm: the CRM's last name everywhere; company = books first: the sheet's
    for company, last in (
        (box.customer_by_email(email)["company"], box.customer_by_email(email)["last_name"]),
        (crm.by_email(email)["company"], crm.by_email(email)["lastName"]),
    ):
        assert (company, last) == ("Books Co", "Crm-Last")
    row = next(r for r in read_csv(csv_path) if r["Email"] == email)
    assert (row["Company"], row["Last Name"]) == ("Books Co", "Crm-Last")
    # manual: each member keeps its own first name until the conflict is resolved
    assert box.customer_by_email(email)["first_name"] == "Corinne"
    assert row["First Name"] == "Cory"
    assert crm.by_email(email)["firstName"] == "Cora"

    listed = cli("conflicts", "list", "--config", config, "--json")
    assert_clean_exit(listed, 0)
    conflicts = json.loads(listed.stdout)
    assert [(c["field"], c["values"]) for c in conflicts] == [
        ("first_name", {"hcp": "Corinne", "books": "Cory"})
    ]
    resolved = cli(
        "conflicts", "resolve", str(conflicts[0]["id"]), "--take", "books", "--config", config
    )
    assert_clean_exit(resolved, 0)
    settled = cli("sync", "--config", config)
    assert_clean_exit(settled, 0)
    assert box.customer_by_email(email)["first_name"] == "Cory"
    assert crm.by_email(email)["firstName"] == "Cory"
    assert_quiet_second_sync(cli, config, box, csv_path, crm)


def test_a_mapped_field_no_crm_record_has_is_never_read_as_cleared(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, crm: JsonServer
) -> None:
    # An integrator renames the CRM's company field in the mapping to one the CRM does not
    # have. Read as empty on every record, it would clear every company on HCP and the books.
    box = sandbox_factory(seed=4)
    csv_path = tmp_path / "books" / "customers.csv"
    write_csv(csv_path, BOOKS_PEOPLE, CSV_HEADER)
    config = three_way_config(tmp_path, box.port, crm.url)
    assert_clean_exit(cli("sync", "--config", config), 0)
    companies = {c["email"]: c["company"] for c in box.customers() if c.get("company")}
    assert len(companies) >= 3
    sheet = {r["Email"]: r["Company"] for r in read_csv(csv_path)}

    default = Path(__file__).resolve().parents[2] / "mappings" / "rest" / "customers.toml"
    mine = tmp_path / "crm-customers.toml"
    text = default.read_text(encoding="utf-8")
    assert '\ncompany = "company"\n' in text
    mine.write_text(text.replace('\ncompany = "company"\n', '\ncompany = "companyName"\n'))
    with config.open("a", encoding="utf-8") as out:
        out.write('\n[pipelines.mappings.crm]\ncustomers = "crm-customers.toml"\n')

    dry = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry, 0)
    assert "→ (empty)" not in dry.stdout, dry.stdout
    assert (
        f"crm customers: field companyName is in none of the {len(crm.records())} records "
        "listed; it is neither read as cleared nor written to crm until one of its records has "
        "it. If the mapping names the wrong field, correct it"
    ) in dry.stdout, dry.stdout
    assert "updatedAt" not in dry.stdout  # metadata, read for the newest rule only
    box.clear_requests()
    db = crm.db_bytes()
    run = cli("sync", "--config", config)
    assert run.returncode in (0, 1), run.stderr
    assert {c["email"]: c["company"] for c in box.customers() if c.get("company")} == companies
    assert {r["Email"]: r["Company"] for r in read_csv(csv_path)} == sheet
    assert [w for w in box.writes() if w["method"] != "GET"] == []
    # the CRM's own company values are where they were, and no field was made up there
    assert [r.get("company") for r in json.loads(db)["customers"]] == [
        r.get("company") for r in crm.records()
    ]
    assert not [r for r in crm.records() if "companyName" in r]


@pytest.mark.parametrize("rule", ['default = ["hcp"]', 'default = ["manual"]'])
def test_a_member_added_to_a_synced_pipeline_does_not_overwrite_the_others(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, crm: JsonServer, rule: str
) -> None:
    # HCP and the books have synced for a while; the integrator then adds a CRM whose contact
    # for one of the same customers holds older data. Its company and tags differ from what
    # both linked members hold: a disagreement the conflict rules decide, never an edit that
    # overwrites HCP and the books unasked.
    box = sandbox_factory(seed=4)
    csv_path = tmp_path / "books" / "customers.csv"
    config = three_way_config(tmp_path, box.port, crm.url, conflicts=rule)
    three = config.read_text(encoding="utf-8")
    config.write_text(three.replace('["hcp", "books", "crm"]', '["hcp", "books"]'), "utf-8")
    assert_clean_exit(cli("sync", "--config", config), 0)
    known = next(c for c in box.customers() if c.get("company"))
    email, company = known["email"], known["company"]
    crm.post(
        {
            "firstName": known["first_name"],
            "lastName": known["last_name"],
            "email": email,
            "company": "Stale Crm Co",
            "tags": ["stale"],
        }
    )
    config.write_text(three, "utf-8")

    joined = cli("sync", "--config", config)

    row = next(r for r in read_csv(csv_path) if r["Email"] == email)
    assert box.customer_by_email(email)["company"] == company
    assert row["Company"] == company
    assert box.customer_by_email(email)["tags"] != ["stale"]
    assert "stale" not in row["Tags"]
    contact = crm.by_email(email)
    if rule == 'default = ["hcp"]':
        assert_clean_exit(joined, 0)
        assert contact["company"] == company  # the rule: HCP's value, taken by the CRM
        assert "stale" not in contact["tags"]
        assert_quiet_second_sync(cli, config, box, csv_path, crm)
    else:
        assert_clean_exit(joined, 1)  # a person decides
        assert contact["company"] == "Stale Crm Co"
        listed = cli("conflicts", "list", "--config", config, "--json")
        assert_clean_exit(listed, 0)
        fields = {c["field"]: c["values"] for c in json.loads(listed.stdout)}
        assert fields["company"] == {"hcp": company, "books": company, "crm": "Stale Crm Co"}
    assert len(crm.records()) == len(box.customers()) == len(read_csv(csv_path))


def test_a_crm_whose_contacts_lack_a_field_is_told_so_and_filled_once_it_is_listed(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    # A CRM of a few sparse contacts: none has a company yet. The first sync creates HCP's
    # customers there without it (the field may not exist there), and says so at once.
    box = sandbox_factory(seed=4)
    sparse = [{k: v for k, v in CRM_PEOPLE[1].items() if k != "tags"}]
    with JsonServer(ensure_json_server(), tmp_path / "crm", {"customers": sparse}) as crm:
        config = three_way_config(tmp_path, box.port, crm.url)
        first = cli("sync", "--config", config)
        assert_clean_exit(first, 0)
        assert "field company is in none of the 1 records listed" in first.stdout, first.stdout
        assert "until one of its records has it" in first.stdout
        companies = {c["email"]: c["company"] for c in box.customers() if c.get("company")}
        assert companies and not [r for r in crm.records() if "company" in r]

        # a person gives one contact a company: the field is listed now, and the next sync
        # writes every customer's company to the contacts it created without it
        cal = crm.by_email("cal.crm@example.org")
        crm.patch(cal["id"], {"company": "Cal's Carpets"})
        assert_clean_exit(cli("sync", "--config", config), 0)
        held = {r["email"]: r.get("company") for r in crm.records()}
        for email, company in companies.items():
            assert held[email] == company, (email, held)
        assert box.customer_by_email("cal.crm@example.org")["company"] == "Cal's Carpets"
        assert_quiet_second_sync(cli, config, box, tmp_path / "books" / "customers.csv", crm)


def test_a_field_listed_since_is_filled_even_after_an_event_run_came_first(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an HCP webhook's event-driven run comes before the next full sync: it sets aside what
    # its events did not name, so it must not store the mark that says the CRM's records
    # were looked at again (a cold review: the fill was lost for good)
    from syncengine.api import open_store
    from syncengine.config import load_config
    from syncengine.engine import Engine
    from tests.integration.test_event_runs import deliver

    box = sandbox_factory(seed=4)
    sparse = [{k: v for k, v in CRM_PEOPLE[1].items() if k != "tags"}]
    with JsonServer(ensure_json_server(), tmp_path / "crm", {"customers": sparse}) as crm:
        config = three_way_config(tmp_path, box.port, crm.url)
        assert_clean_exit(cli("sync", "--config", config), 0)
        companies = {c["email"]: c["company"] for c in box.customers() if c.get("company")}
        crm.patch(crm.by_email("cal.crm@example.org")["id"], {"company": "Cal's Carpets"})

        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HCP_API_KEY", box.api_key)
        cfg = load_config(config)
        store = open_store(cfg)
        try:
            named = next(c for c in box.customers() if not c.get("company"))
            deliver(store, "customer.updated", named)
            event_run = Engine(cfg, store, event_driven=True).sync(cfg.pipelines["three"])
            assert event_run.event_driven and event_run.exit_code == 0
        finally:
            store.close()

        assert_clean_exit(cli("sync", "--config", config), 0)
        held = {r["email"]: r.get("company") for r in crm.records()}
        assert {e: c for e, c in companies.items() if held.get(e) != c} == {}
