"""``[pipelines.member_entities]``: a member synced for some of a pipeline's entities only (a
CRM of customers beside HCP and the books, in one pipeline). What it limits, how the rest of
the config is checked against it, and what each mistake in it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import load_config
from syncengine.connectors.memory import MemoryConnector
from syncengine.errors import ConfigError, Problem
from tests.helpers import ACCOUNTING, memory_config

ENV = {"HCP_API_KEY": "hcp-key-0123456789"}


def _write(tmp_path: Path, pipeline: str, *, entities: str = "") -> Path:
    entities = entities or 'entities = ["customers", "invoices", "payments"]'
    path = tmp_path / "config.toml"
    path.write_text(
        f"""\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
api_key = "${{HCP_API_KEY}}"

[connectors.books]
type = "spreadsheet"
path = "books"

[connectors.crm]
type = "rest"
base_url = "http://127.0.0.1:9"

[connectors.crm.entities.customers]
path = "/customers"

[[pipelines]]
name = "shop"
members = ["hcp", "books", "crm"]
{entities}
{pipeline}
""",
        encoding="utf-8",
    )
    return path


def _problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    return info.value.problems


def test_a_crm_of_customers_syncs_customers_only_and_needs_no_invoice_mapping(
    tmp_path: Path,
) -> None:
    config = load_config(
        _write(tmp_path, '[pipelines.member_entities]\ncrm = ["customers"]'), env=ENV
    )
    shop = config.pipelines["shop"]
    assert shop.members_of("customers") == ("hcp", "books", "crm")
    assert shop.members_of("invoices") == ("hcp", "books")
    assert shop.members_of("payments") == ("hcp", "books")
    assert shop.syncs("crm", "customers") and not shop.syncs("crm", "invoices")
    assert ("crm", "invoices") not in shop.mappings
    assert ("crm", "customers") in shop.mappings


def test_without_the_table_every_member_syncs_every_entity_and_the_crm_is_told_how(
    tmp_path: Path,
) -> None:
    problems = _problems(_write(tmp_path, ""))
    found = [p for p in problems if "crm (rest) has no default mapping of invoices" in p.message]
    assert len(found) == 1, problems
    assert found[0].location.endswith("pipelines[0].members")
    assert '[pipelines.member_entities] (crm = ["customers"])' in (found[0].fix or "")
    assert "[pipelines.mappings.crm]" in (found[0].fix or "")


@pytest.mark.parametrize(
    ("table", "location", "message", "fix"),
    [
        (
            'crn = ["customers"]',
            "member_entities.crn",
            "not a member of this pipeline",
            "did you mean 'crm'?",
        ),
        (
            'crm = ["customer"]',
            "member_entities.crm",
            "'customer' is not an entity of this pipeline",
            "did you mean 'customers'?",
        ),
        ("crm = []", "member_entities.crm", "lists no entity", "take crm out of"),
        (
            'crm = ["customers"]\nbooks = ["customers"]',
            "member_entities",
            "invoices would be synced by hcp alone",
            "add 'invoices' to another member's list",
        ),
        (
            'crm = ["customers"]\nbooks = ["customers", "payments"]',
            "member_entities.books",
            "books syncs payments but not invoices, which they refer to (their 'invoice')",
            "add 'invoices' to the list of books",
        ),
    ],
)
def test_each_mistake_in_the_table_is_named_with_its_fix(
    tmp_path: Path, table: str, location: str, message: str, fix: str
) -> None:
    problems = _problems(_write(tmp_path, f"[pipelines.member_entities]\n{table}"))
    found = [p for p in problems if p.location.endswith(location) and message in p.message]
    assert found, problems
    assert fix in (found[0].fix or ""), found[0]


def test_a_mapping_or_a_rule_for_an_entity_the_member_does_not_sync_is_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "crm-invoices.toml").write_text("", encoding="utf-8")
    problems = _problems(
        _write(
            tmp_path,
            '[pipelines.member_entities]\ncrm = ["customers"]\n'
            '[pipelines.mappings.crm]\ninvoices = "crm-invoices.toml"\n'
            '[pipelines.conflicts]\ndefault = ["crm", "hcp"]\ninvoices = ["crm", "hcp"]\n',
        )
    )
    mapping = [p for p in problems if p.location.endswith("mappings.crm.invoices")]
    assert mapping and "crm does not sync invoices" in mapping[0].message, problems
    rule = [p for p in problems if p.location.endswith("conflicts.invoices")]
    assert rule and "crm does not sync invoices" in rule[0].message, problems
    assert "hcp, books" in (rule[0].fix or "")
    # the default rule may name it: it decides the customers, and is passed over elsewhere
    assert not [p for p in problems if p.location.endswith("conflicts.default")], problems


def test_a_table_typed_below_the_header_is_caught(tmp_path: Path) -> None:
    problems = _problems(
        _write(tmp_path, '[pipelines.member_entities]\ncrm = ["customers"]\nschedule = "@hourly"')
    )
    assert any(
        p.location.endswith("member_entities.schedule")
        and "move schedule above [pipelines.member_entities]" in (p.fix or "")
        for p in problems
    ), problems


def test_the_money_report_weighs_payments_only_where_a_member_syncs_them(tmp_path: Path) -> None:
    # a CRM that takes invoices but not payments: its paid sums are unknown, not $0.00
    config = memory_config(
        tmp_path,
        {
            "hcp": {"entities": list(ACCOUNTING), "only": {"invoices": ["create"], "payments": []}},
            "books": {"entities": list(ACCOUNTING)},
            "crm": {"entities": ["customers", "invoices"]},
        },
        entities=ACCOUNTING,
        member_entities={"crm": ["customers", "invoices"]},
    )
    hcp = MemoryConnector.get_dataset("hcp")
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    hcp.put(
        "invoices",
        "i1",
        {"customer": "c1", "invoice_number": "1001", "status": "sent", "amount": 10_000,
         "balance": 4_000},
    )  # fmt: skip
    hcp.put(
        "payments",
        "p1",
        {"invoice": "i1", "method": "cash", "status": "succeeded", "amount": 6_000,
         "refunded_amount": 0},
    )  # fmt: skip
    [result] = api.sync(config)
    assert result.exit_code == 0, result.to_json()
    crm = MemoryConnector.get_dataset("crm")
    assert len(crm.table("invoices")) == 1 and len(crm.table("customers")) == 1
    assert not crm.table("payments")
    [report] = api.reconcile_report(config)
    assert report.clean, report.to_json()
    assert report.members == ("hcp", "books", "crm")


def test_a_closed_period_for_a_member_that_syncs_nothing_dated_is_refused(tmp_path: Path) -> None:
    problems = _problems(
        _write(
            tmp_path,
            '[pipelines.member_entities]\ncrm = ["customers"]\n'
            '[pipelines.locks]\ncrm = "2026-10-01"\n',
        )
    )
    [lock] = [p for p in problems if p.location.endswith("locks.crm")]
    assert "crm syncs none of what a closed period applies to" in lock.message
    assert "drop this line" in (lock.fix or "")


def test_a_member_named_in_other_letters_or_not_in_the_pipeline_is_told_the_way_out(
    tmp_path: Path,
) -> None:
    problems = _problems(_write(tmp_path, '[pipelines.member_entities]\nCRM = ["customers"]'))
    [named] = [p for p in problems if p.location.endswith("member_entities.CRM")]
    assert named.fix == "did you mean 'crm'?"
    path = _write(tmp_path, '[pipelines.member_entities]\ncrm = ["customers", "customers"]')
    [twice] = [p for p in _problems(path) if "twice" in p.message]
    assert twice.message == "lists 'customers' twice"


def test_a_member_limited_then_given_an_entity_back_deletes_nothing_it_lost_meanwhile(
    tmp_path: Path,
) -> None:
    # c synced invoices, then was limited to customers, and lost an invoice meanwhile (its
    # admin cleared it out). Given invoices back, its records are matched anew: the invoice
    # it lacks is created on it again, never taken for its delete of that invoice everywhere.
    entities = ("customers", "invoices")

    def config(limited: bool) -> Any:
        return memory_config(
            tmp_path,
            {m: {"entities": list(entities)} for m in ("a", "b", "c")},
            entities=entities,
            member_entities={"c": ["customers"]} if limited else None,
        )

    a, c = MemoryConnector.get_dataset("a"), MemoryConnector.get_dataset("c")
    a.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    for n in range(1, 6):
        a.put(
            "invoices",
            f"i{n}",
            {"customer": "c1", "invoice_number": f"100{n}", "status": "sent", "amount": 10_000},
        )
    assert api.sync(config(False))[0].exit_code == 0
    assert len(c.table("invoices")) == 5

    [limited] = api.sync(config(True))
    assert limited.exit_code == 0
    [invoices] = [ep for ep in limited.plan.entities if ep.entity == "invoices"]
    assert any("c no longer syncs invoices" in n and "5 links" in n for n in invoices.notes)
    c.remove("invoices", next(iter(c.table("invoices"))))
    assert api.sync(config(True))[0].exit_code == 0

    [back] = api.sync(config(False))
    assert back.exit_code == 0, back.to_json()
    assert len(a.table("invoices")) == 5
    assert len(MemoryConnector.get_dataset("b").table("invoices")) == 5
    assert len(c.table("invoices")) == 5  # the one it lost is given again, once
    assert api.sync(config(False))[0].exit_code == 0
    assert len(c.table("invoices")) == 5


def test_a_default_rule_naming_only_a_member_that_does_not_sync_an_entity_is_refused(
    tmp_path: Path,
) -> None:
    problems = _problems(
        _write(
            tmp_path,
            '[pipelines.member_entities]\ncrm = ["customers"]\n'
            '[pipelines.conflicts]\ndefault = ["crm"]\npayments = ["hcp"]\n',
        )
    )
    [rule] = [p for p in problems if p.location.endswith("conflicts.default")]
    assert "names only crm for invoices" in rule.message, rule
    assert "add a member that syncs invoices after it (hcp, books)" in (rule.fix or "")
    # payments have a rule of their own: nothing said of them
    assert not [p for p in problems if "for payments" in p.message]
