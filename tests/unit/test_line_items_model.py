"""The canonical line item: the ``decimal`` field type (a quantity), its normal form through the
state store's JSON and the hashes, the line's amount (quantity x unit price, half to even) and
the ``decimal`` transform."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from syncengine import jsoncodec, model
from syncengine.connector import raw_hash
from syncengine.render import show_value
from syncengine.transforms import build_transform

QUANTITY = model.LINE_ITEM.by_name["quantity"]


# ------------------------------------------------------------------------------ normal form


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("1.5", "1.5"),
        ("1.50", "1.5"),
        ("1.5000", "1.5"),
        ("2", "2"),
        ("2.0", "2"),
        ("100", "100"),
        ("-0.25", "-0.25"),
        (".5", "0.5"),
        ("+3", "3"),
        ("0.0001", "0.0001"),
        ("-0", "0"),
        ("0.000", "0"),
        (" 7 ", "7"),
        (2, "2"),
        (-12, "-12"),
        (1.5, "1.5"),
        (0.1, "0.1"),  # the float's shortest repr: the number that was written
        (2.0, "2"),
        (Decimal("3.1400"), "3.14"),
        (Decimal("1E+3"), "1000"),
        ("123456789012.3456", "123456789012.3456"),
    ],
)
def test_a_quantity_has_one_canonical_text(given: Any, canonical: str) -> None:
    assert QUANTITY.normalise(given) == canonical


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_a_missing_quantity_is_none(blank: Any) -> None:
    assert QUANTITY.normalise(blank) is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("1.23456", "more than 4 decimal places"),
        (0.00001, "more than 4 decimal places"),
        (Decimal("0.12345"), "more than 4 decimal places"),
        ("1,5", "is not a quantity"),
        ("1e3", "is not a quantity"),
        ("one", "is not a quantity"),
        ("NaN", "is not a quantity"),
        (float("inf"), "is not a quantity"),
        (True, "is not a quantity"),
    ],
)
def test_a_bad_quantity_is_a_bad_value_never_rounded(given: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QUANTITY.normalise(given)


def test_a_quantity_survives_the_state_stores_json_and_hashes_exactly() -> None:
    record = {"quantity": model.norm_decimal("0.3333"), "unit_price": 10**9, "amount": 333300000}
    text = jsoncodec.dumps(record)
    assert jsoncodec.loads(text) == record
    assert '"quantity":"0.3333"' in text
    # 1.50 typed in a sheet and 1.5 sent by an API are one value: one hash
    typed = {"quantity": model.norm_decimal("1.50")}
    sent = {"quantity": model.norm_decimal(1.5)}
    assert raw_hash(typed) == raw_hash(sent)
    assert jsoncodec.dumps_sorted(typed) == b'{"quantity":"1.5"}'


def test_decimal_value_is_the_exact_number() -> None:
    assert model.decimal_value("0.1") + model.decimal_value("0.2") == Decimal("0.3")
    assert model.decimal_value(3) == Decimal(3)


def test_the_dry_run_shows_a_quantity_as_a_number() -> None:
    assert show_value("1.5", "line_items", "quantity") == "1.5"
    assert show_value(12345, "line_items", "unit_price") == "$123.45"


# ------------------------------------------------------------------------------ the amount


@pytest.mark.parametrize(
    ("quantity", "unit_price", "amount"),
    [
        ("1", 12345, 12345),
        ("2", 2500, 5000),
        ("1.5", 3, 4),  # 4.5 -> 4: halfway goes to the even cent
        ("2.5", 3, 8),  # 7.5 -> 8
        ("0.5", 1, 0),  # 0.5 -> 0
        ("1.5", 1, 2),  # 1.5 -> 2
        ("0.3333", 100, 33),  # 33.33 -> 33
        ("0.6667", 100, 67),  # 66.67 -> 67
        ("-1", 2000, -2000),  # a discount
        ("1", -1500, -1500),
        ("-1.5", 3, -4),  # -4.5 -> -4
        ("-2.5", 3, -8),  # -7.5 -> -8
        ("0.0001", 10**9, 100000),
        ("9999.9999", 10**9, 9999999900000),
        ("0", 12345, 0),
    ],
)
def test_a_lines_amount_is_quantity_times_unit_price_rounded_half_to_even(
    quantity: str, unit_price: int, amount: int
) -> None:
    assert model.line_amount(quantity, unit_price) == amount
    assert model.line_amount(Decimal(quantity), unit_price) == amount


def test_the_amount_is_exact_however_large() -> None:
    quantity = "123456789012.3457"
    expected = Decimal(quantity) * 10**9
    assert model.line_amount(quantity, 10**9) == int(expected)


# ------------------------------------------------------------------------------ the entity


def test_line_items_come_after_invoices_and_jobs() -> None:
    order = model.dependency_order(["line_items", "payments", "invoices", "jobs", "customers"])
    assert order.index("line_items") > order.index("invoices")
    assert order.index("line_items") > order.index("jobs")
    assert model.dependency_order(["line_items", "invoices", "customers"])[-1] == "line_items"


def test_the_line_item_fields() -> None:
    spec = model.entity_spec("line_items")
    types = {f.name: f.type for f in spec.fields}
    assert types == {
        "invoice": "ref",
        "job": "ref",
        "name": "str",
        "description": "str",
        "kind": "enum",
        "quantity": "decimal",
        "unit_price": "cents",
        "unit_cost": "cents",
        "taxable": "bool",
        "amount": "cents",
        "service_item_id": "str",
        "position": "int",
    }
    assert spec.refs == {"invoice": "invoices", "job": "jobs"}
    assert spec.depends_on == ("invoices",)
    assert spec.match_keys == ()
    assert spec.relink_keys[0] == ("invoice", "position", "name")


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("labor", "labor"),
        ("Labor", "labor"),
        ("labour", "labor"),
        ("Materials", "materials"),
        ("material", "materials"),
        ("discount", "discount"),
        ("Tip", "tip"),
        ("gratuity", "tip"),
        ("other", "other"),
    ],
)
def test_a_lines_kind_reads_the_words_it_is_reported_under(given: str, kind: str) -> None:
    assert model.LINE_ITEM.by_name["kind"].normalise(given) == kind


def test_an_unknown_kind_is_a_bad_value_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"not a known line kind .*labor, materials, discount"):
        model.LINE_ITEM.by_name["kind"].normalise("service")


# ------------------------------------------------------------------------------ the transform


@pytest.mark.parametrize(
    ("native", "canonical"),
    [
        ("1.5", "1.5"),
        ("1.50", "1.5"),
        ("1,234.5", "1234.5"),
        ("1,234", "1234"),  # a comma groups thousands, as in money
        (" -2 ", "-2"),
        ("+.25", "0.25"),
        ("- 3", "-3"),
        (3, "3"),
        (1.5, "1.5"),
        (Decimal("2.500"), "2.5"),
        ("", None),
        (None, None),
    ],
)
def test_the_decimal_transform_reads_numbers_as_money_is_read(native: Any, canonical: Any) -> None:
    assert build_transform("decimal").read(native) == canonical


@pytest.mark.parametrize(
    ("native", "message"),
    [
        ("1,5", "write '1.5' for a decimal"),
        ("2,25", "write '2.25' for a decimal"),
        ("1.2.3", "is not a number"),
        ("$3", "is not a number"),
        (True, "is not a number"),
    ],
)
def test_the_decimal_transform_refuses_what_it_cannot_read_exactly(
    native: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_transform("decimal").read(native)


def test_the_decimal_transform_writes_text_or_an_exact_json_number() -> None:
    text = build_transform("decimal")
    number = build_transform({"name": "decimal", "as_number": True})
    assert text.write("1.5") == "1.5"
    assert text.write("2") == "2"
    assert number.write("2") == 2 and type(number.write("2")) is int
    assert number.write("1.5") == 1.5
    assert number.write("123456789.1234") == 123456789.1234
    with pytest.raises(ValueError, match="more digits than a JSON number keeps"):
        number.write("1234567890123.4567")
    with pytest.raises(ValueError, match="not a decimal number"):
        text.write(1.5)


def test_the_decimal_transform_names_its_parameter() -> None:
    from syncengine.errors import ConfigError

    with pytest.raises(ConfigError, match="as_number"):
        build_transform({"name": "decimal", "as_numbers": True}, "m.toml: fields.quantity")


# ------------------------------------------------------------------------------ the merge


def _merge(books_now: dict[str, Any]) -> dict[str, Any]:
    """The new base when the books change a line to ``books_now`` and HCP does not."""
    from syncengine.connector import Capabilities
    from syncengine.mapping import load_mapping
    from syncengine.reconcile import Context, MemberView, reconcile

    mapping = load_mapping("memory", "line_items").without(["invoice", "job"])
    base = {"name": "Labor", "quantity": "1", "unit_price": 1000, "amount": 1000}
    ctx = Context(
        entity=model.LINE_ITEM,
        members=("hcp", "books"),
        mappings={"hcp": mapping, "books": mapping},
        caps={"hcp": Capabilities(), "books": Capabilities()},
        rules=lambda name: ["hcp"],
    )
    views = {
        "hcp": MemberView(member="hcp", status="unchanged", native_id="h1", current=base,
                          last_seen=base, native=dict(base)),
        "books": MemberView(member="books", status="changed", native_id="b1",
                            current={**base, **books_now}, last_seen=base,
                            native={**base, **books_now}),
    }  # fmt: skip
    plan = reconcile(ctx, "k1", base, views)
    assert plan.base_after is not None
    return plan.base_after


def test_a_lines_amount_follows_a_change_of_its_quantity_or_price() -> None:
    assert _merge({"quantity": "1.5"})["amount"] == 1500
    assert _merge({"unit_price": 333, "quantity": "1.5"})["amount"] == 500  # 499.5 -> 500
    assert _merge({"name": "Labour"})["amount"] == 1000  # not a source: left alone


def test_an_amount_a_member_gave_with_its_change_is_taken_as_given() -> None:
    assert _merge({"quantity": "1.5", "amount": 1499})["amount"] == 1499
