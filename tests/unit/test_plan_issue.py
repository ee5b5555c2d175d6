"""How a record-level problem is told to a person (``plan.Issue.describe``)."""

from __future__ import annotations

import pytest

from syncengine.plan import Issue


@pytest.mark.parametrize(
    ("member", "location", "message", "told"),
    [
        ("books", "customers.csv line 3", "Email: bad", "books customers.csv line 3: Email: bad"),
        ("hcp", "", "nothing written", "hcp: nothing written"),
        # the location already opens the message
        ("books", "customers.csv", "customers.csv: gone", "books: customers.csv: gone"),
        # a member whose locations carry its own name (the REST connector, the memory member)
        ("crm", "crm customers 77", "Email: bad", "crm customers 77: Email: bad"),
        # a member whose name only starts the location's first word is still named
        ("hc", "hcp customers t2", "x", "hc hcp customers t2: x"),
        # ... and a file named after the member
        (
            "books",
            "books 2026.xlsx, sheet Customers, row 3",
            "x",
            "books books 2026.xlsx, sheet Customers, row 3: x",
        ),
    ],
)
def test_an_issue_names_its_member_and_location_once(
    member: str, location: str, message: str, told: str
) -> None:
    assert Issue("customers", member, location, message).describe() == told
