"""``[pipelines.member_entities]``: a member synced for some of a pipeline's entities only (a
CRM of customers beside HCP and the books, in one pipeline). What it limits, how the rest of
the config is checked against it, and what each mistake in it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.config import load_config
from syncengine.errors import ConfigError, Problem

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
    texts = [f"{p.message} {p.fix}" for p in problems]
    assert any(
        "no default mapping of invoices" in t and "[pipelines.member_entities]" in t
        and 'crm = ["customers"]' in t
        for t in texts
    ), texts  # fmt: skip


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
            "add 'invoices' to books's list",
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
