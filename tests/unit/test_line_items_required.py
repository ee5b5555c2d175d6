"""A line typed into the books with a blank Quantity or Unit Price is that row's problem:
never read as a quantity or price cleared, which would be planned as a clear on HCP (whose
API keeps the value) and leave the books and HCP apart while both looked in step."""

from __future__ import annotations

import pytest

from syncengine.errors import RecordError
from syncengine.mapping import load_mapping

ROW = {
    "Invoice #": "1001",
    "Item": "Breaker",
    "Quantity": "2",
    "Unit Price": "12.50",
    "Amount": "25.00",
    "Taxable": "yes",
}


@pytest.mark.parametrize("column", ["Quantity", "Unit Price"])
def test_a_blank_quantity_or_price_names_the_row_and_the_column(column: str) -> None:
    books = load_mapping("spreadsheet", "line_items")
    with pytest.raises(RecordError) as caught:
        books.to_canonical({**ROW, column: ""}, location="line_items.csv line 7")
    assert caught.value.location == "line_items.csv line 7"
    assert column in str(caught.value.field) and "is empty" in str(caught.value)


def test_a_zero_quantity_or_price_is_a_value() -> None:
    books = load_mapping("spreadsheet", "line_items")
    record = books.to_canonical({**ROW, "Quantity": "0", "Unit Price": "0", "Amount": "0"})
    assert record["quantity"] == "0" and record["unit_price"] == 0


def test_hcp_reads_both_so_its_lines_always_carry_them() -> None:
    hcp = load_mapping("housecallpro", "line_items")
    assert {"quantity", "unit_price"} <= hcp.readable  # HCP always sends both
