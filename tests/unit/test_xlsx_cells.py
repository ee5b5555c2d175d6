"""Workbook cell values <-> the text the mappings see, and the display formats chosen."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncengine.connectors.spreadsheet.columns import Dates, Money, column_kinds, new_columns
from syncengine.connectors.spreadsheet.xlsxcells import (
    cell_text,
    cell_value,
    date_format,
    number_format_for,
    number_text,
)
from syncengine.errors import RecordError
from syncengine.mapping import load_mapping, parse_mapping


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (-0.0, "0"),
        (1234.5, "1234.5"),
        (1234.0, "1234"),
        (0.1 + 0.2, "0.3"),  # as the workbook shows it: 15 significant digits
        (0.1 * 485.8, "48.58"),  # a formula's amount, not 48.580000000000005
        (166.0000001, "166.0000001"),
        (1e16, "10000000000000000"),
        (1.5e-7, "0.00000015"),
        (Decimal("1234.50"), "1234.5"),
        (Decimal("100.00"), "100"),
    ],
)
def test_number_text(value: int | float | Decimal, text: str) -> None:
    assert number_text(value) == text


@given(st.floats(min_value=-1e300, max_value=1e300))  # a workbook's numbers end near 1e308
def test_number_text_is_the_float_to_the_digits_a_workbook_holds(value: float) -> None:
    text = number_text(value)
    assert len(Decimal(text).normalize().as_tuple().digits) <= 15
    assert math.isclose(float(text), value, rel_tol=1e-14, abs_tol=0.0)


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=4, max_value=10**10, min_value=-(10**10)
    )
)
def test_a_number_of_at_most_15_digits_reads_back_as_written(value: Decimal) -> None:
    """What the sync writes (``cell_value``: at most 15 significant digits, else text) is
    what a later read of the cell gives: the pair stays a fixed point."""
    assert Decimal(number_text(float(value))) == value


def test_cell_text_by_kind() -> None:
    moment = dt.datetime(2024, 3, 1, 14, 5)
    assert cell_text(None) == ""
    assert cell_text(True) == "TRUE"
    assert cell_text(moment) == "2024-03-01 14:05:00"
    assert cell_text(dt.datetime(2024, 3, 1)) == "2024-03-01"
    assert cell_text(moment, Dates("%m/%d/%Y")) == "03/01/2024"
    assert cell_text(dt.date(2024, 3, 1), Dates("%d.%m.%Y %H:%M")) == "01.03.2024 00:00"
    assert cell_text(dt.time(9, 30)) == "09:30:00"
    assert cell_text(1234.5, Money(2)) == "1234.5"


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("", Money(2), None),
        ("1234.50", Money(2), Decimal("1234.50")),
        ("-12.00", Money(2), Decimal("-12.00")),
        ("$1,234.50", Money(2), "$1,234.50"),  # not what cents writes: kept as text
        ("1234567890123.45", Money(2), Decimal("1234567890123.45")),
        ("12345678901234.56", Money(2), "12345678901234.56"),  # more than a number holds
        ("2024-03-01", Dates("%Y-%m-%d"), dt.date(2024, 3, 1)),
        ("03/01/2024 14:30", Dates("%m/%d/%Y %H:%M"), dt.datetime(2024, 3, 1, 14, 30)),
        ("2024-03-01T14:30:00+0100", Dates("%Y-%m-%dT%H:%M:%S%z"), "2024-03-01T14:30:00+0100"),
        ("1899-12-31", Dates("%Y-%m-%d"), "1899-12-31"),
        ("2024-3-1", Dates("%Y-%m-%d"), "2024-3-1"),  # the format would not give it back
        ("02134", None, "02134"),
        ("=1+1", None, "=1+1"),
        ("a\r\nb\rc", None, "a\nb\nc"),
    ],
)
def test_cell_value(text: str, kind: Money | Dates | None, value: object) -> None:
    assert cell_value(text, kind) == value
    assert type(cell_value(text, kind)) is type(value)


def test_cell_value_refuses_what_no_cell_holds() -> None:
    with pytest.raises(RecordError, match=r"books\.xlsx: '\\x00'"):
        cell_value("a\x00b", location="books.xlsx")


@pytest.mark.parametrize(
    ("fmt", "excel"),
    [
        ("%Y-%m-%d", "yyyy-mm-dd"),
        ("%m/%d/%Y %H:%M", "mm/dd/yyyy hh:mm"),
        ("%d.%m.%Y", "dd.mm.yyyy"),
        ("%d %B %Y", "dd mmmm yyyy"),
        ("%Y-%m-%dT%H:%M:%S", "yyyy-mm-dd\\Thh:mm:ss"),
        ("%I:%M %p on %d/%m/%Y", "yyyy-mm-dd hh:mm:ss"),  # no workbook equivalent: ISO
        ("%M minutes", "yyyy-mm-dd hh:mm:ss"),
    ],
)
def test_date_format(fmt: str, excel: str) -> None:
    assert date_format(Dates(fmt)) == excel


def test_number_format_keeps_the_bookkeepers_where_it_suits() -> None:
    money = Money(2)
    assert number_format_for(Decimal("1"), money, "General") == "#,##0.00"
    assert number_format_for(Decimal("1"), Money(0), "@") == "#,##0"
    assert number_format_for(Decimal("1"), money, '"$"#,##0.00_);("$"#,##0.00)') == (
        '"$"#,##0.00_);("$"#,##0.00)'
    )
    assert number_format_for(Decimal("1"), money, "yyyy-mm-dd") == "#,##0.00"
    day = Dates("%Y-%m-%d")
    assert number_format_for(dt.date(2024, 1, 1), day, "General") == "yyyy-mm-dd"
    assert number_format_for(dt.date(2024, 1, 1), day, "d mmm yy") == "d mmm yy"
    assert number_format_for("text", None, "0.00") == "0.00"


def test_kinds_and_header_come_from_the_mapping() -> None:
    invoices = load_mapping("spreadsheet", "invoices")
    assert column_kinds(invoices) == {
        "Subtotal": Money(2),
        "Tax": Money(2),
        "Amount": Money(2),
        "Balance": Money(2),
        "Due Date": Dates("%Y-%m-%d"),
        "Created": Dates("%Y-%m-%d"),
    }
    assert new_columns(invoices) == (
        "Invoice #",
        "Customer Email",
        "Status",
        "Subtotal",
        "Tax",
        "Amount",
        "Balance",
        "Due Date",
        "Created",
    )
    chained = parse_mapping(
        {
            "fields": {
                "amount": {
                    "native": "Total",
                    "transform": ["strip", {"name": "cents", "places": 3}],
                },
                "invoice_number": {"native": "No", "direction": "read"},
            }
        },
        entity="invoices",
        source="x.toml",
    )
    assert column_kinds(chained) == {"Total": Money(3)}
    assert new_columns(chained) == ("Total",)
