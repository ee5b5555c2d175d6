"""Money round-trips exactly: amounts of 0..10^10 cents, through the cents transform (at several
decimal places), written to a workbook or a CSV file, read back by a new connector instance."""

from __future__ import annotations

import tempfile
from pathlib import Path

import openpyxl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncengine.connector import ConnectorContext
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from syncengine.mapping import EntityMapping, load_mapping, parse_mapping

MAX_CENTS = 10**10
amounts = st.lists(
    st.integers(min_value=0, max_value=MAX_CENTS)
    | st.sampled_from([0, 1, 5, 10, 99, 100, 101, 123450, MAX_CENTS - 1, MAX_CENTS]),
    min_size=1,
    max_size=12,
)


def payments_mapping(places: int) -> EntityMapping:
    if places == 2:
        return load_mapping("spreadsheet", "payments")  # the default, as integrators get it
    return parse_mapping(
        {
            "fields": {
                "amount": {"native": "Amount", "transform": {"name": "cents", "places": places}},
                "method": "Method",
            }
        },
        entity="payments",
        source=f"cents-{places}.toml",
    )


def member(path: Path, mapping: EntityMapping) -> SpreadsheetConnector:
    options = SpreadsheetOptions(type="spreadsheet", path=str(path))
    conn = SpreadsheetConnector(options, ConnectorContext(name="books", base_dir=str(path)))
    conn.prepare("payments", mapping)
    return conn


def round_trip(path: Path, places: int, cents: list[int]) -> None:
    mapping = payments_mapping(places)
    writer = member(path, mapping)
    list(writer.read("payments"))
    returned = {}
    for n, amount in enumerate(cents):
        native = mapping.to_native({"amount": amount, "method": "cash"})
        invoice = mapping.native_name("invoice")
        if invoice is not None:  # every payment belongs to an invoice
            native[invoice] = "1001"
        returned[f"p{n}"] = writer.create("payments", native, key=f"p{n}")
    writer.flush("payments")
    read = {r.id: r for r in member(path, mapping).read("payments")}
    assert set(read) == set(returned)
    for n, amount in enumerate(cents):
        record = read[f"p{n}"]
        assert record.data == returned[f"p{n}"].data  # what create said is what is read
        assert mapping.to_canonical(record.data)["amount"] == amount, record.data


@pytest.mark.parametrize("places", [2, 0, 8])
@pytest.mark.parametrize("where", ["books.xlsx", "books"])
@given(cents=amounts)
def test_money_round_trips_exactly(where: str, places: int, cents: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        round_trip(Path(folder) / where, places, cents)


@given(cents=amounts)
def test_workbook_amounts_are_numbers_of_the_exact_value(cents: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "books.xlsx"
        round_trip(path, 2, cents)
        ws = openpyxl.load_workbook(path)["Payments"]
        column = [c.value for c in ws[1]].index("Amount") + 1
        for row, amount in enumerate(cents, start=2):
            cell = ws.cell(row=row, column=column)
            assert isinstance(cell.value, int | float)
            assert round(cell.value * 100) == amount
            assert cell.number_format == "#,##0.00"
