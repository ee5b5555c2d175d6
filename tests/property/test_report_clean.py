"""``reconcile-report`` is clean after every sync of random HCP-like data with lines, tax,
discounts and refunds, and so is its tax view.

"hcp" is a memory member holding integer cents and exact quantities; "books" a real CSV folder
(money and quantities as text). Each invoice has up to four lines (quantities of up to 4
decimals, unit prices up to 10^9 cents, negative ones for discounts, taxable or not), its
subtotal their amounts' sum, a tax, its amount the two, and a payment refunded in part, in
full or not at all; its balance follows. The generators are ``test_money``'s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine import api
from syncengine.connectors.memory import MemoryConnector
from tests.helpers import memory_config
from tests.property.test_money import cents, line_values, refunded_payments

ENTITIES = ("customers", "invoices", "payments", "line_items")
_PROFILE = settings.default
assert _PROFILE is not None


@st.composite
def invoices(draw: st.DrawFn) -> dict[str, Any]:
    """One invoice's lines, tax and payment (its refund up to the payment)."""
    lines = draw(st.lists(line_values(), min_size=0, max_size=4))
    payment, refunded = draw(refunded_payments())
    day = draw(st.integers(1, 28))
    month = draw(st.sampled_from(["2026-09", "2026-10", "2026-11"]))
    return {
        "lines": lines,
        "tax": draw(cents),
        "payment": payment,
        "refunded": refunded,
        "created_at": f"{month}-{day:02d}T12:00:00Z",
    }


@settings(max_examples=max(10, _PROFILE.max_examples // 3))
@given(books=st.lists(invoices(), min_size=1, max_size=4))
def test_the_report_is_clean_after_a_sync(books: list[dict[str, Any]]) -> None:
    MemoryConnector.reset()
    with tempfile.TemporaryDirectory() as tmp:
        config = memory_config(
            Path(tmp),
            {
                "hcp": {"entities": list(ENTITIES)},
                "books": {"type": "spreadsheet", "path": "books"},
            },
            entities=ENTITIES,
        )
        hcp = MemoryConnector.get_dataset("hcp")
        hcp.put("customers", "c1", {"email": "ann@x.com"})
        for n, invoice in enumerate(books):
            subtotal = sum(line["amount"] for line in invoice["lines"])
            amount = subtotal + invoice["tax"]
            balance = amount - invoice["payment"] + invoice["refunded"]
            hcp.put("invoices", f"i{n}", {"invoice_number": str(1000 + n), "customer": "c1",
                                          "amount": amount, "subtotal": subtotal,
                                          "tax_amount": invoice["tax"], "balance": balance,
                                          "status": "open",
                                          "created_at": invoice["created_at"]})  # fmt: skip
            hcp.put("payments", f"p{n}", {"invoice": f"i{n}", "amount": invoice["payment"],
                                          "refunded_amount": invoice["refunded"],
                                          "method": "cash", "status": "succeeded"})  # fmt: skip
            for k, line in enumerate(invoice["lines"]):
                placed = {**line, "invoice": f"i{n}", "name": f"Item {k}", "position": k + 1}
                hcp.put("line_items", f"l{n}-{k}", placed)
        [result] = api.sync(config)
        assert result.exit_code == 0, result.to_json()
        [report] = api.reconcile_report(config)
        assert report.clean, report.to_json()
        [tax] = api.tax_report(config)
        assert tax.clean, tax.to_json()
        taxes: dict[str, int] = {}
        for invoice in books:
            month = invoice["created_at"][:7]
            taxes[month] = taxes.get(month, 0) + invoice["tax"]
        assert {m.month: m.members["books"]["tax"] for m in tax.months} == taxes
