"""The transform registry and every built-in transform, both directions and their errors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from syncengine.errors import ConfigError
from syncengine.transforms import (
    Params,
    Transform,
    build_chain,
    build_transform,
    known_transforms,
    register,
)

BUILT_INS = [
    "bool",
    "cents",
    "date",
    "email",
    "int",
    "list",
    "lower",
    "map",
    "phone",
    "str",
    "strip",
    "upper",
]


def problems(spec: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_transform(spec, "m.toml: fields.x.transform")
    return [str(p) for p in info.value.problems]


# ---------------------------------------------------------------------------------- registry


def test_known_transforms_lists_every_built_in_sorted() -> None:
    assert set(BUILT_INS) <= set(known_transforms())
    assert known_transforms() == sorted(known_transforms())


def test_unknown_name_lists_the_known_ones_and_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        build_transform("fone", "m.toml: fields.mobile_number.transform")
    [problem] = info.value.problems
    assert problem.location == "m.toml: fields.mobile_number.transform"
    assert problem.message == "unknown transform 'fone'"
    assert problem.fix.startswith("use one of: bool, cents, date, ")
    for name in BUILT_INS:
        assert name in problem.fix
    assert "did you mean 'phone'?" in problem.fix


def test_inline_table_needs_a_name() -> None:
    [text] = problems({"sep": ";"})
    assert "needs a name" in text


def test_spec_of_the_wrong_type() -> None:
    [text] = problems(12)
    assert "must be a name, a table or a list" in text


def test_unknown_and_mistyped_parameters_are_all_reported() -> None:
    found = problems({"name": "phone", "formt": "national", "region": 1})
    assert len(found) == 2
    assert any("transform.region: must be a string, not int 1" in t for t in found)
    assert any(
        "transform.formt: unknown parameter 'formt'" in t and "did you mean 'format'?" in t
        for t in found
    )


def test_parameter_out_of_its_choices() -> None:
    [text] = problems({"name": "phone", "format": "fancy"})
    assert "'fancy' is not a valid format" in text
    assert "'e164', 'national', 'international'" in text


def test_transform_without_parameters_rejects_any() -> None:
    [text] = problems({"name": "email", "sep": ","})
    assert "takes no parameters" in text


def test_bool_parameter_is_not_an_integer() -> None:
    [text] = problems({"name": "cents", "places": True})
    assert "places: must be an integer, not true/false" in text


def test_register_a_new_transform() -> None:
    class Reverse:
        name = "reverse"

        def read(self, native: Any) -> Any:
            return None if native is None else str(native)[::-1]

        def write(self, value: Any) -> Any:
            return None if value is None else str(value)[::-1]

    def factory(params: Params) -> Transform:
        return Reverse()

    register("test-reverse", factory)
    try:
        assert "test-reverse" in known_transforms()
        assert build_transform("test-reverse", "x").read("abc") == "cba"
        with pytest.raises(ValueError, match="already registered"):
            register("test-reverse", factory)
    finally:
        register("test-reverse", factory, replace=True)
        from syncengine import transforms

        transforms._REGISTRY.pop("test-reverse")


@pytest.mark.parametrize("name", BUILT_INS)
def test_none_passes_through_both_ways(name: str) -> None:
    spec: Any = {"name": "map", "values": {"a": "b"}} if name == "map" else name
    transform = build_transform(spec, "x")
    assert transform.read(None) is None
    assert transform.write(None) is None
    assert transform.name == name


# ------------------------------------------------------------------------------------ chains


def test_chain_reads_in_order_and_writes_in_reverse() -> None:
    chain = build_chain(["strip", {"name": "map", "values": {"A": "ALPHA"}}, "upper"], "x")
    assert chain.read("  A ") == "ALPHA"  # strip, map, upper
    assert chain.write("alpha") == "A"  # upper, map, strip
    assert chain.name == "strip | map | upper"
    # the order matters: without upper first, "alpha" has no native value
    reordered = build_chain(["upper", "strip", {"name": "map", "values": {"A": "ALPHA"}}], "x")
    with pytest.raises(ValueError, match="'alpha' has no native value"):
        reordered.write("alpha")


def test_chain_through_build_transform_and_all_problems_at_once() -> None:
    found = problems(["strip", "bogus", {"name": "cents", "places": "2"}, 3])
    assert len(found) == 3
    assert any("transform[1]: unknown transform 'bogus'" in t for t in found)
    assert any("transform[2].places: must be an integer" in t for t in found)
    assert any("transform[3]: a transform must be a name or a table" in t for t in found)


def test_empty_chain_is_a_problem() -> None:
    [text] = problems([])
    assert "empty list of transforms" in text


def test_chain_of_one_is_that_transform() -> None:
    assert build_chain(["email"], "x").name == "email"


# ------------------------------------------------------------------------------------- phone


def test_phone_reads_e164_and_writes_e164_by_default() -> None:
    phone = build_transform("phone", "x")
    assert phone.read("(555) 123-4567") == "+15551234567"
    assert phone.read("555.123.4567") == "+15551234567"
    assert phone.read("+1 555 123 4567") == "+15551234567"
    assert phone.read(5551234567) == "+15551234567"
    assert phone.write("+15551234567") == "+15551234567"
    assert phone.write("555-123-4567") == "+15551234567"


def test_phone_keeps_unparseable_text_stripped() -> None:
    phone = build_transform("phone", "x")
    assert phone.read("  call the office ") == "call the office"
    assert phone.read("12") == "12"
    assert phone.write("call the office") == "call the office"
    assert phone.read("   ") is None


def test_phone_national_and_international() -> None:
    national = build_transform({"name": "phone", "format": "national"}, "x")
    assert national.write("+15551234567") == "(555) 123-4567"
    # another country's number cannot be written nationally: it would read back as a US one
    assert national.write("+442071234567") == "+44 20 7123 4567"
    assert national.read("+44 20 7123 4567") == "+442071234567"
    international = build_transform({"name": "phone", "format": "international"}, "x")
    assert international.write("+15551234567") == "+1 555-123-4567"


def test_phone_region() -> None:
    uk = build_transform({"name": "phone", "region": "GB", "format": "national"}, "x")
    assert uk.read("020 7123 4567") == "+442071234567"
    assert uk.write("+442071234567") == "020 7123 4567"
    [text] = problems({"name": "phone", "region": "XX"})
    assert "'XX' is not a region" in text


def test_phone_writes_a_non_normal_e164_value_verbatim() -> None:
    # parsing would drop the 0; written any other way it would not read back the same
    national = build_transform({"name": "phone", "format": "national"}, "x")
    assert national.write("+4402071234567") == "+4402071234567"
    assert national.read("+4402071234567") == "+4402071234567"


# ------------------------------------------------------------------------------ text and case


def test_email_strips_and_lowers_both_ways() -> None:
    email = build_transform("email", "x")
    assert email.read("  Ann@Example.COM ") == "ann@example.com"
    assert email.write(" Ann@Example.COM") == "ann@example.com"


@pytest.mark.parametrize(
    ("name", "native", "canonical"),
    [("lower", "AbC", "abc"), ("upper", "AbC", "ABC"), ("strip", "  a b  ", "a b")],
)
def test_case_transforms(name: str, native: str, canonical: str) -> None:
    transform = build_transform(name, "x")
    assert transform.read(native) == canonical
    assert transform.write(native) == canonical


def test_str_and_int() -> None:
    text = build_transform("str", "x")
    assert text.read(12) == "12"
    assert text.write(12) == "12"
    assert text.read(" a ") == " a "
    number = build_transform("int", "x")
    assert number.read("12") == 12
    assert number.read(" 12.0 ") == 12
    assert number.read(7) == 7
    assert number.read(" ") is None
    assert number.write(12) == 12
    with pytest.raises(ValueError, match=r"'12\.5' is not a whole number"):
        number.read("12.5")
    with pytest.raises(ValueError, match="'twelve' is not a whole number"):
        number.read("twelve")
    with pytest.raises(ValueError, match="True is not a whole number"):
        number.read(True)


# ------------------------------------------------------------------------------------- cents


@pytest.mark.parametrize(
    ("native", "cents"),
    [
        ("1234.5", 123450),
        ("1234.50", 123450),
        ("1,234.50", 123450),
        ("$1,234.50", 123450),
        (" $ 1,234.50 ", 123450),
        ("-$12.00", -1200),
        ("$-12", -1200),
        ("(12.34)", -1234),
        (".5", 50),
        ("7.", 700),
        ("0", 0),
        (12, 1200),
        (Decimal("12.34"), 1234),
        (12.34, 1234),
        ("1,234,567.89", 123456789),
    ],
)
def test_cents_reads(native: Any, cents: int) -> None:
    assert build_transform("cents", "x").read(native) == cents


@pytest.mark.parametrize(
    "native", ["12,3x", "1,23.00", "abc", "$", "1.2.3", "--1", "nan", "12,345,6"]
)
def test_cents_rejects_what_is_not_an_amount(native: str) -> None:
    with pytest.raises(ValueError) as info:
        build_transform("cents", "x").read(native)
    assert str(info.value) == f"{native!r} is not an amount"


@pytest.mark.parametrize(
    ("native", "dotted"),
    [("194,04", "194.04"), ("12,3", "12.3"), ("1.234,50", "1,234.50"), ("-$12,50", "-$12.50")],
)
def test_cents_names_the_fix_for_a_decimal_comma(native: str, dotted: str) -> None:
    """``194,04`` typed as much of Europe writes it is refused, never read as 19 404, and the
    message says how to write it; ``1,234`` (three digits after the comma) is thousands."""
    with pytest.raises(ValueError) as info:
        build_transform("cents", "x").read(native)
    assert str(info.value) == (
        f"{native!r} is not an amount: a comma groups thousands here; write {dotted!r} for "
        "the cents"
    )
    assert build_transform("cents", "x").read("1,234") == 123400


@pytest.mark.parametrize(
    ("native", "alone"),
    [
        ("89.78 USD", "89.78"),
        ("USD 89.78", "89.78"),
        ("12 dollars", "12"),
        ("1,234.50 EUR", "1,234.50"),
    ],
)
def test_cents_names_the_fix_for_a_currency_word_beside_the_number(native: str, alone: str) -> None:
    with pytest.raises(ValueError) as info:
        build_transform("cents", "x").read(native)
    assert (
        str(info.value) == f"{native!r} is not an amount: write the number alone, such as {alone!r}"
    )


def test_cents_rejects_more_precision_than_its_places_and_booleans() -> None:
    cents = build_transform("cents", "x")
    with pytest.raises(ValueError, match=r"'1.005' has more than 2 decimal places"):
        cents.read("1.005")
    with pytest.raises(ValueError, match="True is not an amount"):
        cents.read(True)
    assert cents.read("") is None


def test_cents_writes_decimal_strings() -> None:
    cents = build_transform("cents", "x")
    assert cents.write(123450) == "1234.50"
    assert cents.write(5) == "0.05"
    assert cents.write(-5) == "-0.05"
    assert cents.write(0) == "0.00"
    with pytest.raises(ValueError, match="is not a whole number of cents"):
        cents.write("12")
    with pytest.raises(ValueError, match="is not a whole number of cents"):
        cents.write(1.5)


def test_cents_places() -> None:
    mills = build_transform({"name": "cents", "places": 3}, "x")
    assert mills.read("1.005") == 1005
    assert mills.write(1005) == "1.005"
    whole = build_transform({"name": "cents", "places": 0}, "x")
    assert whole.read("1,200") == 1200
    assert whole.write(1200) == "1200"
    [text] = problems({"name": "cents", "places": 12})
    assert "out of range" in text


# -------------------------------------------------------------------------------------- list


def test_list_reads_and_writes() -> None:
    items = build_transform("list", "x")
    assert items.read("vip, a,,b ,") == ["vip", "a", "b"]
    assert items.read(" , ") is None
    assert items.read(["a ", " b", ""]) == ["a", "b"]
    assert items.write(["a", "b"]) == "a, b"
    assert items.write([]) == ""
    semi = build_transform({"name": "list", "sep": ";"}, "x")
    assert semi.read("a; b;c") == ["a", "b", "c"]
    assert semi.write(["a", "b"]) == "a;b"


def test_list_refuses_to_write_an_item_holding_the_separator() -> None:
    with pytest.raises(ValueError, match="the item 'a,b' contains the separator ','"):
        build_transform("list", "x").write(["a,b", "c"])


def test_list_separator_must_not_be_blank() -> None:
    [text] = problems({"name": "list", "sep": " "})
    assert "separator must not be empty" in text


# -------------------------------------------------------------------------------------- bool


def test_bool_reads_labels_and_the_usual_words() -> None:
    flag = build_transform("bool", "x")
    for native in ("yes", "YES", " Yes ", "true", "1", 1, True):
        assert flag.read(native) is True
    for native in ("no", "No", "false", "0", 0, False):
        assert flag.read(native) is False
    assert flag.read("") is None
    assert flag.write(True) == "yes"
    assert flag.write(False) == "no"


def test_bool_custom_labels() -> None:
    flag = build_transform({"name": "bool", "true": "Y", "false": "N"}, "x")
    assert flag.read("y") is True
    assert flag.read("N") is False
    assert flag.read("yes") is True
    assert flag.write(True) == "Y"
    numeric = build_transform({"name": "bool", "true": 1, "false": 0}, "x")
    assert numeric.write(False) == 0
    assert numeric.read(1) is True


def test_bool_error_lists_what_it_accepts() -> None:
    flag = build_transform({"name": "bool", "true": "on", "false": "off"}, "x")
    with pytest.raises(ValueError) as info:
        flag.read("maybe")
    assert str(info.value) == (
        "'maybe' is not a yes/no value (use one of: on, off, yes, true, 1, no, false, 0)"
    )


def test_bool_labels_must_differ() -> None:
    [text] = problems({"name": "bool", "true": "X", "false": "x"})
    assert "the labels for true and false are the same" in text


# --------------------------------------------------------------------------------------- map


def test_map_reads_exactly_then_stripped_then_case_insensitively() -> None:
    status = build_transform(
        {"name": "map", "values": {"Active": "active", "On Hold": "paused"}}, "x"
    )
    assert status.read("Active") == "active"
    assert status.read(" On Hold ") == "paused"
    assert status.read("on hold") == "paused"
    assert status.write("paused") == "On Hold"


def test_map_unknown_values_are_errors_listing_the_allowed_ones() -> None:
    status = build_transform({"name": "map", "values": {"A": "a", "B": "b"}}, "x")
    with pytest.raises(ValueError) as info:
        status.read("C")
    assert str(info.value) == "'C' is not one of: 'A', 'B'"
    with pytest.raises(ValueError, match="'c' has no native value"):
        status.write("c")


def test_map_unknown_keep_passes_through() -> None:
    status = build_transform({"name": "map", "values": {"A": "a"}, "unknown": "keep"}, "x")
    assert status.read("Z") == "Z"
    assert status.write("Z") == "Z"


def test_map_must_be_one_to_one_and_have_values() -> None:
    [text] = problems({"name": "map", "values": {"a": "x", "b": "x"}})
    assert "values.b" in text and "one-to-one" in text
    [text] = problems({"name": "map"})
    assert "needs its values" in text
    [text] = problems({"name": "map", "values": ["a"]})
    assert "values: must be a table, not a list" in text
    [text] = problems({"name": "map", "values": {"a": [1]}})
    assert "values.a: a mapped value must be a string" in text


def test_map_keeps_true_and_one_apart() -> None:
    mixed = build_transform({"name": "map", "values": {"Y": True, "One": 1}}, "x")
    assert mixed.write(True) == "Y"
    assert mixed.write(1) == "One"


# -------------------------------------------------------------------------------------- date


def test_date_only_reads_local_midnight_in_utc() -> None:
    day = build_transform({"name": "date", "timezone": "America/New_York"}, "x")
    assert day.read("2024-03-01") == "2024-03-01T05:00:00Z"
    assert day.read("2024-07-01") == "2024-07-01T04:00:00Z"
    assert day.write("2024-03-01T05:00:00Z") == "2024-03-01"
    # the time is lost; the second pass is a fixed point
    assert day.write("2024-03-01T23:30:00Z") == "2024-03-01"


def test_date_with_time_and_default_utc() -> None:
    stamp = build_transform({"name": "date", "format": "%m/%d/%Y %H:%M"}, "x")
    assert stamp.read("03/01/2024 14:05") == "2024-03-01T14:05:00Z"
    assert stamp.write("2024-03-01T14:05:00Z") == "03/01/2024 14:05"
    assert stamp.write("2024-03-01T14:05:00+02:00") == "03/01/2024 12:05"


def test_date_reads_date_objects() -> None:
    import datetime as dt

    day = build_transform({"name": "date", "timezone": "Europe/Berlin"}, "x")
    assert day.read(dt.date(2024, 1, 2)) == "2024-01-01T23:00:00Z"
    # as precise as the format: the same as the text it is written back as
    assert day.read(dt.datetime(2024, 1, 2, 12, 0)) == "2024-01-01T23:00:00Z"
    stamp = build_transform(
        {"name": "date", "format": "%Y-%m-%d %H:%M", "timezone": "Europe/Berlin"}, "x"
    )
    assert stamp.read(dt.datetime(2024, 1, 2, 12, 0, 59)) == "2024-01-02T11:00:00Z"
    assert stamp.read(dt.datetime(2024, 1, 2, 12, 0, tzinfo=dt.UTC)) == "2024-01-02T12:00:00Z"


def test_date_with_utc_offset_format() -> None:
    stamp = build_transform(
        {"name": "date", "format": "%Y-%m-%dT%H:%M:%S%z", "timezone": "Europe/Berlin"}, "x"
    )
    assert stamp.read("2024-01-02T12:00:00-0500") == "2024-01-02T17:00:00Z"
    assert stamp.write("2024-01-02T17:00:00Z") == "2024-01-02T18:00:00+0100"


def test_date_errors() -> None:
    day = build_transform("date", "x")
    with pytest.raises(ValueError) as info:
        day.read("03/01/2024")
    assert str(info.value) == (
        "'03/01/2024' is not a date written as YYYY-MM-DD, such as 2025-01-31 (the mapping's "
        "format '%Y-%m-%d')"
    )
    with pytest.raises(ValueError, match=r"written as MM/DD/YYYY hh:mm AM/PM, such as 01/31/2025"):
        build_transform({"name": "date", "format": "%m/%d/%Y %I:%M %p"}, "x").read("yesterday")
    with pytest.raises(ValueError, match="'soon' is not an ISO 8601 date-time"):
        day.write("soon")
    found = problems({"name": "date", "format": "abc", "timezone": "Mars/Base"})
    assert any("'abc' is not a date format" in t for t in found)
    assert any("unknown time zone 'Mars/Base'" in t for t in found)
