"""Mapping files: parsing and its problems, native paths, and both directions of a mapping."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from syncengine import model
from syncengine.errors import ConfigError, RecordError
from syncengine.mapping import (
    EntityMapping,
    FieldMapping,
    NativePath,
    default_mapping_path,
    load_mapping,
    load_mapping_file,
    parse_mapping,
    parse_path,
)

GRAMMAR = """
[fields]
first_name = "First Name"
mobile_number = { native = "Mobile", transform = "phone" }
lead_source = { native = "Source", direction = "read" }
"custom.account_manager" = { native = "Account Manager" }
tags = { native = "Tags", transform = { name = "list", sep = ";" } }
notifications_enabled = { native = "Notify", transform = "bool", default = false }
"""


def parse(text: str, source: str = "m.toml") -> EntityMapping:
    return parse_mapping(tomllib.loads(text), entity="customers", source=source)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


# ------------------------------------------------------------------------------------ parsing


def test_the_documented_grammar() -> None:
    m = parse(GRAMMAR)
    by_name = {f.canonical: f for f in m.fields}
    assert by_name["first_name"] == FieldMapping("first_name", "First Name")
    assert by_name["mobile_number"].transform is not None
    assert by_name["mobile_number"].transform.name == "phone"
    assert by_name["lead_source"].direction == "read"
    assert by_name["notifications_enabled"].default is False
    assert m.readable == {
        "first_name",
        "mobile_number",
        "lead_source",
        "custom.account_manager",
        "tags",
        "notifications_enabled",
    }
    assert m.writable == m.readable - {"lead_source"}
    assert m.match_keys == model.CUSTOMER.match_keys
    assert m.source == "m.toml"
    assert m.entity is model.CUSTOMER


def test_every_problem_of_a_file_at_once_with_file_and_key() -> None:
    found = problems(
        """
        match_keys = ["emial"]
        colour = "blue"
        [fields]
        frist_name = "First Name"
        email = { native = "Email", transfrom = "email" }
        mobile_number = { native = "Mobile", transform = "fone" }
        home_number = { native = "Home", direction = "sideways" }
        work_number = 42
        company = { transform = "strip" }
        tags = { native = "Tags", transform = { name = "list", sep = "" } }
        last_name = "Name"
        lead_source = "Name"
        notifications_enabled = { native = "Notify", transform = "bool", default = "perhaps" }
        """
    )
    expected = [
        "m.toml: match_keys: unknown canonical field 'emial' (fix: did you mean 'email'?)",
        "m.toml: colour: unknown key 'colour'",
        "m.toml: fields.frist_name: unknown canonical field 'frist_name' for customers "
        "(fix: did you mean 'first_name'",
        "m.toml: fields.email.transfrom: unknown key 'transfrom' in the mapping of email "
        "(fix: did you mean 'transform'?",
        "m.toml: fields.mobile_number.transform: unknown transform 'fone' (fix: use one of: ",
        "m.toml: fields.home_number.direction: 'sideways' is not a direction",
        "m.toml: fields.work_number: must be a native name or a table, not int 42",
        "m.toml: fields.company: has no native name",
        "m.toml: fields.tags.transform.sep: the separator must not be empty",
        "m.toml: fields.lead_source: the native name 'Name' is already written by fields.last_name",
        "m.toml: fields.notifications_enabled.default: is not a valid notifications_enabled",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in found), (text, found)
    assert len(found) == len(expected), found


def test_a_map_to_a_value_the_field_does_not_take_is_refused_when_the_mapping_loads() -> None:
    # found only by the first record with that value otherwise, or by the first write back
    found = problems(
        """
        [fields]
        email = "Email"
        notifications_enabled = { native = "Notify", transform = { name = "map", values = { "Y" = true, "N" = "maybe" } } }
        lead_source = { native = "Source", transform = ["strip", { name = "map", values = { "Web" = "web" } }] }
        tags = { native = "Tags", transform = { name = "map", values = { "VIP" = "vip" } } }
        """  # noqa: E501
    )
    assert found == [
        "m.toml: fields.notifications_enabled.transform: maps to 'maybe', which is not a valid "
        "notifications_enabled: 'maybe' is not a yes/no value (use one of: yes, no, true, false, "
        "1, 0) (fix: map each native value to a value notifications_enabled takes)",
        "m.toml: fields.tags.transform: maps to 'vip', which tags holds as ['vip']: a map gives "
        "one value, never a list (fix: drop the map from this field)",
    ]
    invoices = """
        [fields]
        invoice_number = "Number"
        status = { native = "Status", transform = { name = "map", values = { "Open" = "OPEN", "Paid" = "paid", "Gone" = "void" } } }
        """  # noqa: E501
    with pytest.raises(ConfigError) as info:
        parse_mapping(tomllib.loads(invoices), entity="invoices", source="i.toml")
    assert [str(p) for p in info.value.problems] == [
        "i.toml: fields.status.transform: maps to 'OPEN', which status holds as 'open' "
        "(fix: write it as 'open')",
        "i.toml: fields.status.transform: maps to 'void', which is not a valid status: 'void' "
        "is not a known invoice status (use one of: draft, open, sent, paid, voided, canceled) "
        "(fix: map each native value to a value status takes)",
    ]
    # written as status holds them, the same map loads, and reads and writes both ways
    kept = parse_mapping(
        tomllib.loads(
            invoices.replace('"Open" = "OPEN"', '"Open" = "open"').replace(
                '"Gone" = "void"', '"Gone" = "voided"'
            )
        ),
        entity="invoices",
        source="i.toml",
    )
    assert kept.to_canonical({"Number": "1", "Status": "Gone"})["status"] == "voided"
    assert kept.to_native({"invoice_number": "1", "status": "open"})["Status"] == "Open"


def test_a_typo_inside_a_field_table_is_named_as_a_key_of_that_field() -> None:
    # Not "unknown canonical field 'company.nativ'": the table is company's mapping.
    assert problems('[fields]\ncompany = { nativ = "Business Name" }') == [
        "m.toml: fields.company.nativ: unknown key 'nativ' in the mapping of company "
        "(fix: did you mean 'native'? a field table has: native, native_key, transform, "
        "direction, default, ref_by)"
    ]
    # The same in a sub-table, and for the other keys of a field table.
    assert problems('[fields.company]\nnative_ky = "Business Name"') == [
        "m.toml: fields.company.native_ky: unknown key 'native_ky' in the mapping of company "
        "(fix: did you mean 'native_key'? a field table has: native, native_key, transform, "
        "direction, default, ref_by)"
    ]
    [text] = problems('[fields]\nemail = { native = "E", direcion = "read" }')
    assert text.startswith(
        "m.toml: fields.email.direcion: unknown key 'direcion' in the mapping of email "
        "(fix: did you mean 'direction'?"
    )


def test_a_field_table_with_no_native_and_no_typo_of_it_says_so() -> None:
    assert problems('[fields]\ncompany = { colour = "Business Name" }') == [
        "m.toml: fields.company.colour: unknown key 'colour' in the mapping of company "
        "(fix: a field table has: native, native_key, transform, direction, default, ref_by)",
        'm.toml: fields.company: has no native name (fix: add native = "..." (the column or '
        "JSON path))",
    ]


def test_a_mistyped_field_with_a_mistyped_key_gets_both_named() -> None:
    assert problems('[fields]\ncompnay = { nativ = "Business Name" }') == [
        "m.toml: fields.compnay: unknown canonical field 'compnay' for customers "
        "(fix: did you mean 'company'?)",
        "m.toml: fields.compnay.nativ: unknown key 'nativ' in the mapping of compnay "
        "(fix: did you mean 'native'? a field table has: native, native_key, transform, "
        "direction, default, ref_by)",
    ]


def test_groups_of_fields_are_still_groups() -> None:
    # addresses and addresses.service group fields: a typo below them is a field name's.
    assert problems('[fields.addresses.service]\nstret = "Street"') == [
        'm.toml: fields."addresses.service.stret": unknown canonical field '
        "'addresses.service.stret' for customers (fix: did you mean "
        "'addresses.service.street' or 'addresses.service.state' or "
        "'addresses.service.street_line_2'?)"
    ]
    m = parse('[fields.custom]\nregion = { native = "Region" }')
    assert [(f.canonical, f.native) for f in m.fields] == [("custom.region", "Region")]


def test_unknown_canonical_field_lists_the_fields_when_nothing_is_close() -> None:
    [text] = problems('[fields]\nzzz = "Z"')
    assert "customers fields are: first_name, last_name" in text
    assert "custom.<name>" in text


def test_meta_fields_are_read_never_written() -> None:
    m = parse('[fields]\nupdated_at = "Updated"\nfirst_name = "First"')
    assert "updated_at" in m.readable
    assert "updated_at" not in m.writable
    assert m.to_native({"updated_at": "2024-01-01T00:00:00Z", "first_name": "A"}) == {"First": "A"}
    [text] = problems('[fields]\nupdated_at = { native = "U", direction = "write" }')
    assert "is metadata" in text and 'use direction = "read"' in text


def test_a_canonical_field_mapped_twice() -> None:
    # a quoted dotted key and a sub-table name the same canonical field
    found = problems(
        """
        [fields]
        "addresses.service.city" = "City"
        [fields.addresses.service]
        city = "Town"
        """
    )
    assert any("'addresses.service.city' is already read from 'City'" in t for t in found)
    assert any("'addresses.service.city' is already written to 'City'" in t for t in found)
    # one read from a column and written to another is fine
    m = parse(
        """
        [fields]
        "addresses.service.city" = { native = "City", direction = "read" }
        [fields.addresses.service]
        city = { native = "Town", direction = "write" }
        """
    )
    assert m.to_canonical({"City": "A", "Town": "B"}) == {"addresses.service.city": "A"}
    assert m.to_native({"addresses.service.city": "C"}) == {"Town": "C"}
    # two canonical fields may read one native name
    m = parse(
        """
        [fields]
        email = { native = "Email", direction = "read" }
        "custom.same" = { native = "Email", direction = "read" }
        """
    )
    assert m.readable == {"email", "custom.same"}


def test_overlapping_written_paths_are_a_problem() -> None:
    [text] = problems(
        """
        [fields]
        "custom.a" = "addresses"
        "addresses.service.city" = "addresses[type=service].city"
        """
    )
    assert "overlaps 'addresses'" in text
    # two different selections of one list do not clash
    parse(
        """
        [fields]
        "addresses.service.city" = "addresses[type=service].city"
        "addresses.billing.city" = "addresses[type=billing].city"
        """
    )


def test_default_with_write_only_direction_is_a_problem() -> None:
    [text] = problems('[fields]\ncompany = { native = "C", direction = "write", default = "x" }')
    assert "only written" in text


def test_default_of_the_wrong_type() -> None:
    [text] = problems('[fields]\ncompany = { native = "C", default = 3 }')
    assert "fields.company.default: must be a string, not int 3" in text
    m = parse('[fields]\n"custom.n" = { native = "N", transform = "int", default = 0 }')
    assert m.to_canonical({}) == {"custom.n": 0}


def test_native_and_native_key_together_is_a_problem() -> None:
    [text] = problems('[fields]\ncompany = { native = "C", native_key = "C." }')
    assert "has both native and native_key" in text


def test_a_path_is_held_by_a_record_that_has_it_even_empty() -> None:
    # (connectors.rest.presence: a field no record of a listing has is not read as cleared)
    city = parse_path("addresses[type=service].city")
    assert city.holds({"addresses": [{"type": "service", "city": None}]})
    assert not city.holds({"addresses": [{"type": "billing", "city": "Austin"}]})
    assert not city.holds({"addresses": None}) and not city.holds({})
    assert parse_path("company").holds({"company": None})
    assert not parse_path("company").holds({"companyName": "Acme"})
    assert NativePath.single_key("a.b").holds({"a.b": ""})
    assert not parse_path("a.b").holds({"a": "text, not a table"})


def test_malformed_paths_are_problems() -> None:
    found = problems(
        """
        [fields]
        company = "a..b"
        first_name = "list[type=x]"
        last_name = "list[typex].y"
        """
    )
    assert len(found) == 3
    assert any("fields.company.native: the path 'a..b' has an empty part" in t for t in found)
    assert any("ends with a list selection" in t for t in found)
    assert any("malformed selection" in t for t in found)


def test_fields_table_missing_empty_or_wrong() -> None:
    assert "no [fields] table" in problems("match_keys = []")[0]
    assert "no fields are mapped" in problems("[fields]")[0]
    assert "must be a table" in problems('fields = "x"')[0]


def test_match_keys_override_and_its_checks() -> None:
    m = parse('match_keys = ["mobile_number"]\n[fields]\nmobile_number = "M"\nemail = "E"')
    assert m.match_keys == ("mobile_number",)
    [text] = problems('match_keys = ["email"]\n[fields]\nmobile_number = "M"')
    assert "'email' is not read from this member" in text
    [text] = problems('match_keys = "email"\n[fields]\nemail = "E"')
    assert "must be a list of canonical field names" in text


def test_dotted_keys_and_sub_tables_name_canonical_fields() -> None:
    m = parse(
        """
        [fields]
        custom.account_manager = "AM"
        [fields.addresses.service]
        city = "City"
        zip = { native = "Zip" }
        """
    )
    assert {f.canonical for f in m.fields} == {
        "custom.account_manager",
        "addresses.service.city",
        "addresses.service.zip",
    }


def test_flat_and_native_key_make_single_keys() -> None:
    m = parse('flat = true\n[fields]\n"addresses.service.city" = "addresses.service.city"')
    assert m.to_canonical({"addresses.service.city": "X"}) == {"addresses.service.city": "X"}
    assert m.build_native({"addresses.service.city": "X"}) == {"addresses.service.city": "X"}
    m = parse('[fields]\n"custom.ref" = { native_key = "Ref. No." }')
    assert m.to_canonical({"Ref. No.": "7"}) == {"custom.ref": "7"}
    assert m.build_native(m.to_native({"custom.ref": "8"})) == {"Ref. No.": "8"}
    assert "flat: must be true or false" in problems('flat = 1\n[fields]\nemail = "E"')[0]


def test_unknown_entity() -> None:
    with pytest.raises(ConfigError, match="unknown entity 'widgets'"):
        parse_mapping({"fields": {}}, entity="widgets", source="m.toml")


# ------------------------------------------------------------------------------------- files


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[fields]\nemail = "Email"\nfirst_name = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_mapping_file(path, entity="customers")
    [problem] = info.value.problems
    assert problem.location == f"{path}:3:14"
    assert problem.message.startswith("TOML syntax error: ")


def test_missing_or_undecodable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the mapping file"):
        load_mapping_file(tmp_path / "nope.toml", entity="customers")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[fields]\nfirst_name = "Jos\xe9"\n')
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_mapping_file(path, entity="customers")


def test_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[fields]\nemial = "Email"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_mapping_file(path, entity="customers")
    assert str(info.value).startswith(f"{path}: fields.emial: unknown canonical field")


def test_override_replaces_the_default_entirely(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[fields]\nemail = "E-mail"\n', encoding="utf-8")
    m = load_mapping("spreadsheet", "customers", override=path)
    assert m.readable == {"email"}
    assert m.source == str(path)


@pytest.mark.parametrize("connector", ["housecallpro", "spreadsheet", "memory"])
def test_default_mappings_load(connector: str) -> None:
    assert default_mapping_path(connector, "customers").is_file()
    m = load_mapping(connector, "customers")
    assert m.writable
    assert not m.writable & {"created_at", "updated_at"}
    assert ("updated_at" in m.readable) == (connector != "spreadsheet")


def test_housecallpro_default_maps_every_customer_field() -> None:
    m = load_mapping("housecallpro", "customers")
    assert m.readable == {f.name for f in model.CUSTOMER.fields}
    assert m.writable == {f.name for f in model.CUSTOMER.fields if not f.meta}


def test_memory_default_is_the_identity() -> None:
    m = load_mapping("memory", "customers")
    assert all(f.native == f.canonical for f in m.fields)
    assert m.writable == {f.name for f in model.CUSTOMER.fields if not f.meta}


def test_spreadsheet_default_columns() -> None:
    m = load_mapping("spreadsheet", "customers")
    columns = [f.native for f in m.fields]
    assert columns == [
        "First Name",
        "Last Name",
        "Email",
        "Mobile",
        "Home Phone",
        "Work Phone",
        "Company",
        "Tags",
        "Street",
        "City",
        "State",
        "Zip",
    ]


def test_no_default_mapping() -> None:
    with pytest.raises(ConfigError, match="no default mapping of customers"):
        load_mapping("carrier-pigeon", "customers")
    with pytest.raises(ConfigError, match="not a valid connector type"):
        default_mapping_path("../etc", "customers")


# ------------------------------------------------------------------------------------- paths


DOC: dict[str, Any] = {
    "name": "Ann",
    "meta": {"source": {"kind": "web"}},
    "addresses": [
        {"id": "a1", "type": "billing", "city": "Billtown"},
        {"id": "a2", "type": "service", "city": "Servville"},
    ],
    "First Name": "Ann",
}


def test_path_get() -> None:
    assert parse_path("First Name").get(DOC) == "Ann"
    assert parse_path("meta.source.kind").get(DOC) == "web"
    assert parse_path("addresses[type=service].city").get(DOC) == "Servville"
    assert parse_path("addresses[type=billing].id").get(DOC) == "a1"
    assert parse_path('addresses[type="billing"].id').get(DOC) == "a1"
    assert parse_path("addresses[type=other].city").get(DOC) is None
    assert parse_path("meta.nothing.here").get(DOC) is None
    assert parse_path("name.first").get(DOC) is None  # through a string
    assert parse_path("meta[type=x].y").get(DOC) is None  # selecting in a non-list


def test_path_selection_matches_non_string_values() -> None:
    doc = {"items": [{"n": 1, "v": "one"}, {"n": 2, "v": "two"}]}
    assert parse_path("items[n=2].v").get(doc) == "two"


def test_path_set_creates_the_way_and_the_selected_element() -> None:
    doc: dict[str, Any] = {}
    parse_path("addresses[type=service].city").set(doc, "X")
    parse_path("addresses[type=service].zip").set(doc, "1")
    parse_path("addresses[type=billing].city").set(doc, "Y")
    parse_path("meta.source.kind").set(doc, "web")
    assert doc == {
        "addresses": [
            {"type": "service", "city": "X", "zip": "1"},
            {"type": "billing", "city": "Y"},
        ],
        "meta": {"source": {"kind": "web"}},
    }


def test_path_set_none_where_nothing_is_does_nothing() -> None:
    doc: dict[str, Any] = {"addresses": [{"type": "service", "city": "X"}]}
    parse_path("addresses[type=billing].city").set(doc, None)
    parse_path("meta.source.kind").set(doc, None)
    parse_path("addresses[type=service].city").set(doc, None)
    parse_path("top").set(doc, None)
    assert doc == {"addresses": [{"type": "service", "city": None}], "top": None}


def test_path_equality_and_single_keys() -> None:
    assert parse_path("a.b") == NativePath("other text", (("a", None), ("b", None)))
    assert parse_path("Plain Name").key == "Plain Name"
    assert parse_path("a.b").key is None
    with pytest.raises(ValueError, match="unexpected"):
        parse_path("a[type=x]b")
    with pytest.raises(ValueError, match="empty part"):
        parse_path("a.")


# ---------------------------------------------------------------------------- the directions


def test_to_canonical_normalises_and_keeps_every_readable_field_with_a_value() -> None:
    m = parse(GRAMMAR)
    record = m.to_canonical(
        {"First Name": "  Ann ", "Mobile": "555 123 4567", "Tags": "b; a;;b", "Extra": "x"}
    )
    assert record == {
        "first_name": "Ann",
        "mobile_number": "+15551234567",
        "tags": ["a", "b"],
        "notifications_enabled": False,  # the default
    }
    # a field without a value (lead_source, custom.account_manager) is left out, as in a base
    assert record.get("lead_source") is None and "custom.account_manager" not in record


def test_to_canonical_defaults_apply_to_missing_none_and_empty() -> None:
    m = parse(GRAMMAR)
    for notify in (None, "", "   "):
        assert m.to_canonical({"Notify": notify})["notifications_enabled"] is False
    assert m.to_canonical({"Notify": "YES"})["notifications_enabled"] is True


def test_to_canonical_collects_every_bad_field_in_one_error() -> None:
    m = parse(GRAMMAR)
    with pytest.raises(RecordError) as info:
        m.to_canonical({"Notify": "perhaps"}, location="sheet.csv row 7")
    assert info.value.field == "Notify"
    assert info.value.location == "sheet.csv row 7"
    assert str(info.value).startswith("sheet.csv row 7, field 'Notify': 'perhaps' is not")

    m = parse(
        """
        [fields]
        notifications_enabled = { native = "Notify", transform = "bool" }
        "custom.amount" = { native = "Amount", transform = "cents" }
        first_name = "First"
        """
    )
    with pytest.raises(RecordError) as info:
        m.to_canonical({"Notify": "perhaps", "Amount": "12,3x", "First": "ok"}, location="row 3")
    message = str(info.value)
    assert "'Notify': 'perhaps' is not a yes/no value" in message
    assert "'Amount': '12,3x' is not an amount" in message
    assert info.value.field == "Notify, Amount"


def test_to_canonical_reports_a_value_of_the_wrong_shape() -> None:
    m = load_mapping("housecallpro", "customers")
    with pytest.raises(RecordError) as info:
        m.to_canonical({"tags": 5})
    assert info.value.field == "tags"


def test_to_canonical_custom_fields_keep_transformed_types() -> None:
    m = parse('[fields]\n"custom.amount" = { native = "Amount", transform = "cents" }')
    assert m.to_canonical({"Amount": "$1,234.50"}) == {"custom.amount": 123450}


def test_to_native_is_a_flat_patch_of_writable_fields_present() -> None:
    m = parse(GRAMMAR)
    record = {
        "first_name": "Ann",
        "mobile_number": "+15551234567",
        "lead_source": "web",  # read-only here
        "tags": ["a", "b"],
        "notifications_enabled": None,
    }
    assert m.to_native(record) == {
        "First Name": "Ann",
        "Mobile": "+15551234567",
        "Tags": "a;b",
        "Notify": None,
    }
    assert m.to_native(record, ["tags", "lead_source", "nonsense"]) == {"Tags": "a;b"}


def test_to_native_reports_values_it_cannot_write() -> None:
    m = parse('[fields]\ntags = { native = "Tags", transform = "list" }')
    with pytest.raises(RecordError) as info:
        m.to_native({"tags": ["a,b"]}, location="key k1")
    assert info.value.field == "Tags"
    assert "contains the separator" in str(info.value)


def test_apply_patch_copies_deeply_and_keeps_what_is_not_mapped() -> None:
    m = load_mapping("housecallpro", "customers")
    native = {
        "id": "cus_1",
        "first_name": "Ann",
        "addresses": [{"id": "adr_1", "type": "service", "street": "1 Main", "city": "A"}],
        "tags": ["x"],
    }
    snapshot = repr(native)
    patch = {
        "first_name": "Anne",
        "addresses[type=service].city": "B",
        "addresses[type=billing].city": "C",
        "addresses[type=billing].street": None,
        "tags": ["x", "y"],
    }
    result = m.apply_patch(native, patch)
    assert repr(native) == snapshot  # never mutated
    assert result == {
        "id": "cus_1",
        "first_name": "Anne",
        "addresses": [
            {"id": "adr_1", "type": "service", "street": "1 Main", "city": "B"},
            {"type": "billing", "city": "C", "street": None},
        ],
        "tags": ["x", "y"],
    }
    result["addresses"][0]["city"] = "changed"
    result["tags"].append("z")
    assert repr(native) == snapshot
    assert patch["tags"] == ["x", "y"]


def test_apply_patch_result_does_not_depend_on_the_order_of_the_patch() -> None:
    m = load_mapping("housecallpro", "customers")
    a = m.build_native(
        {"addresses[type=service].street": None, "addresses[type=service].city": "X"}
    )
    b = m.build_native(
        {"addresses[type=service].city": "X", "addresses[type=service].street": None}
    )
    assert a == b == {"addresses": [{"type": "service", "city": "X", "street": None}]}


def test_build_native_from_a_full_canonical_record() -> None:
    m = load_mapping("housecallpro", "customers")
    record = dict.fromkeys(m.writable)
    record.update(
        {
            "first_name": "Ann",
            "email": "ann@example.com",
            "mobile_number": "+15551234567",
            "addresses.service.city": "Springfield",
            "tags": ["a"],
            "notifications_enabled": True,
        }
    )
    native = m.build_native(m.to_native(record))
    assert native["first_name"] == "Ann"
    assert native["tags"] == ["a"]
    # no billing address is invented for a record that has none
    assert [a["type"] for a in native["addresses"]] == ["service"]
    assert native["addresses"][0]["city"] == "Springfield"
    assert m.to_canonical(native) == {k: v for k, v in record.items() if v is not None}


def test_spreadsheet_round_trip() -> None:
    m = load_mapping("spreadsheet", "customers")
    row = {
        "First Name": "Bo",
        "Email": " Bo@Example.com ",
        "Mobile": "555-123-4567",
        "Tags": "vip,a, ,b",
        "Zip": "02139",
        "Sync ID": "k1",
    }
    record = m.to_canonical(row)
    assert record["email"] == "bo@example.com"
    assert record["tags"] == ["a", "b", "vip"]
    assert record["addresses.service.zip"] == "02139"
    patch = m.to_native(record)
    assert patch["Mobile"] == "(555) 123-4567"
    assert patch["Tags"] == "a, b, vip"
    written = m.apply_patch(row, patch)
    assert written["Sync ID"] == "k1"
    assert m.to_canonical(written) == record
