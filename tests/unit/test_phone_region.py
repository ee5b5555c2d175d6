"""The configuration's ``region`` is the region of phone numbers written without a country
code, for every member of every pipeline: their ``phone`` transforms and their phone fields
without one. A transform's own ``region`` wins; the default stays the US."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.config import load_config
from syncengine.errors import ConfigError
from syncengine.mapping import EntityMapping
from syncengine.refs import MemberRefs, References
from syncengine.state import StateStore

LONDON = "020 7946 0958"
LONDON_E164 = "+442079460958"
CHICAGO = "(312) 555-0143"
CHICAGO_E164 = "+13125550143"

CONFIG = """\
{top}

[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
api_key = "hcp-key-0123456789"

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = {entities}
{pipeline}
"""


def mappings(
    tmp_path: Path, top: str = "", pipeline: str = "", entity: str = "customers"
) -> dict[str, EntityMapping]:
    path = tmp_path / "config.toml"
    entities = '["customers", "invoices"]' if entity == "invoices" else '["customers"]'
    path.write_text(CONFIG.format(top=top, pipeline=pipeline, entities=entities), encoding="utf-8")
    config = load_config(path, env={})
    found = config.pipelines["hcp-books"].mappings
    return {member: found[(member, entity)] for member in ("hcp", "books")}


def test_a_sheet_number_without_country_code_is_read_in_the_configured_region(
    tmp_path: Path,
) -> None:
    books = mappings(tmp_path, 'region = "GB"')["books"]
    record = books.to_canonical({"Mobile": LONDON, "Home Phone": "+1 312 555 0143"})
    assert record["mobile_number"] == LONDON_E164
    assert record["home_number"] == CHICAGO_E164, "a number with its country code keeps it"


def test_the_default_region_is_still_the_us(tmp_path: Path) -> None:
    books = mappings(tmp_path)["books"]
    assert books.region == "US"
    assert books.to_canonical({"Mobile": CHICAGO})["mobile_number"] == CHICAGO_E164
    # a British number without its country code is no US number: kept as written
    assert books.to_canonical({"Mobile": LONDON})["mobile_number"] == LONDON


def test_the_sheet_writes_numbers_of_its_region_nationally_and_reads_them_back(
    tmp_path: Path,
) -> None:
    books = mappings(tmp_path, 'region = "gb"')["books"]
    native = books.to_native({"mobile_number": LONDON_E164, "home_number": CHICAGO_E164})
    assert native["Mobile"] == LONDON
    assert native["Home Phone"] == "+1 312-555-0143", "another country's is international"
    back = books.to_canonical(native)
    assert (back["mobile_number"], back["home_number"]) == (LONDON_E164, CHICAGO_E164)


def test_a_member_whose_numbers_carry_no_country_code_reads_them_in_the_region(
    tmp_path: Path,
) -> None:
    hcp = mappings(tmp_path, 'region = "GB"')["hcp"]
    assert hcp.to_canonical({"mobile_number": LONDON})["mobile_number"] == LONDON_E164
    assert hcp.to_native({"mobile_number": LONDON_E164})["mobile_number"] == LONDON_E164


def test_a_mapping_transform_with_its_own_region_keeps_it(tmp_path: Path) -> None:
    override = tmp_path / "books-customers.toml"
    override.write_text(
        "[fields]\n"
        'email = "Email"\n'
        'mobile_number = { native = "Mobile", transform = { name = "phone", region = "US" } }\n'
        'home_number = { native = "Home Phone", transform = "phone" }\n'
        'work_number = "Work Phone"\n',
        encoding="utf-8",
    )
    books = mappings(
        tmp_path,
        'region = "GB"',
        '[pipelines.mappings.books]\ncustomers = "books-customers.toml"',
    )["books"]
    record = books.to_canonical({"Mobile": CHICAGO, "Home Phone": LONDON, "Work Phone": LONDON})
    assert record["mobile_number"] == CHICAGO_E164, "the transform's region wins"
    assert record["home_number"] == LONDON_E164, "a phone transform without one takes GB"
    assert record["work_number"] == LONDON_E164, "a phone field without a transform too"


def test_an_unknown_region_is_reported_once_not_for_every_phone_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        mappings(tmp_path, 'region = "XX"')
    assert [p.location.rsplit(": ", 1)[-1] for p in info.value.problems] == ["region"], (
        info.value.problems
    )


def test_an_invoice_row_showing_its_customer_by_a_national_number_reads_it_in_the_region(
    tmp_path: Path,
) -> None:
    books = mappings(tmp_path, 'region = "GB"', entity="invoices")["books"]
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        refs = MemberRefs(References(store, "hcp-books"), "books", books)
        (customer,) = refs.fields
        assert customer.ref_by == ("email", "mobile_number")
        assert LONDON_E164 in customer.candidates(LONDON)
    finally:
        store.close()
