"""``reconcile-report`` on an invoice's lines: they add up to its subtotal, each line's amount
is its quantity × unit price rounded half to even, and the members agree line by line.

The checks are tried first on hand-made invoices (``InvoiceLine``), then through a sync of
memory members: "hcp" stands for Housecall Pro, "books" takes everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncengine import api
from syncengine.connectors.memory import MemoryConnector
from syncengine.report import (
    InvoiceLine,
    _check_line_amounts,
    _check_lines_agree,
    _check_lines_sum,
)
from tests.helpers import memory_config

ALL = frozenset({"quantity", "unit_price", "amount", "taxable"})
ENTITIES = ("customers", "invoices", "payments", "line_items")


def _line(**fields: Any) -> dict[str, Any]:
    return {"name": "Labor", "position": 1, "taxable": True, **fields}


def _invoice(subtotal: int | None, **members: dict[str, dict[str, Any]]) -> InvoiceLine:
    line = InvoiceLine("inv", "1001")
    for member, held in members.items():
        line.amount[member] = subtotal
        if subtotal is not None:
            line.subtotal[member] = subtotal
        line.items[member] = held
    return line


def _kinds(line: InvoiceLine) -> list[tuple[str, str]]:
    return [(p.kind, p.member) for p in line.problems]


def test_half_even_rounding_at_half_a_cent() -> None:
    # 1.5 × 3¢ = 4.5¢ -> 4¢ and 2.5 × 3¢ = 7.5¢ -> 8¢: both right
    right = {"a": _line(quantity="1.5", unit_price=3, amount=4),
             "b": _line(quantity="2.5", unit_price=3, amount=8, position=2)}  # fmt: skip
    line = _invoice(12, books=right)
    _check_line_amounts(line, "books")
    _check_lines_sum(line, "books")
    assert line.problems == []
    # rounded half up instead: 5¢ is named, with the computation
    line = _invoice(13, books={"a": _line(quantity="1.5", unit_price=3, amount=5)})
    _check_line_amounts(line, "books")
    [problem] = line.problems
    assert (problem.kind, problem.member) == ("line_amount", "books")
    assert problem.message == (
        'line 1 "Labor": amount $0.05 on books, but quantity 1.5 × unit price $0.03 = $0.04 '
        "(rounded half to even)"
    )


def test_a_negative_discount_line_counts_against_the_subtotal() -> None:
    held = {
        "a": _line(quantity="2", unit_price=5_000, amount=10_000),
        "b": _line(name="Discount", position=2, quantity="1", unit_price=-1_500, amount=-1_500),
    }
    line = _invoice(8_500, hcp=held)
    _check_lines_sum(line, "hcp")
    _check_line_amounts(line, "hcp")
    assert line.problems == []
    line = _invoice(10_000, hcp=held)
    _check_lines_sum(line, "hcp")
    [problem] = line.problems
    assert (problem.kind, problem.member) == ("lines", "hcp")
    assert problem.message == "the 2 line(s) on hcp add up to $85.00, but the subtotal is $100.00"


def test_no_subtotal_or_no_lines_is_not_checked() -> None:
    held = {"a": _line(quantity="1", unit_price=100, amount=100)}
    no_subtotal = _invoice(None, books=held)
    _check_lines_sum(no_subtotal, "books")
    assert no_subtotal.problems == []
    no_lines = _invoice(5_000, books={})
    _check_lines_sum(no_lines, "books")
    assert no_lines.problems == []


def test_members_agree_line_by_line_and_a_member_without_lines_is_left_out() -> None:
    hcp = {"a": _line(quantity="1.5", unit_price=3, amount=4)}
    line = _invoice(4, hcp=hcp, books={"a": _line(quantity="1.5", unit_price=3, amount=4)})
    line.amount["crm"] = 4  # holds the invoice, keeps no lines at all
    _check_lines_agree(line, ["hcp", "books", "crm"], {"hcp": ALL, "books": ALL, "crm": ALL})
    assert line.problems == []

    other = _invoice(4, hcp=hcp, books={"a": _line(quantity="1.50", unit_price=3, amount=4,
                                                   taxable=False)})  # fmt: skip
    _check_lines_agree(other, ["hcp", "books"], {"hcp": ALL, "books": ALL})
    want = 'line 1 "Labor": taxable differs: hcp yes, books no'
    assert [p.message for p in other.problems] == [want]
    # a member whose mapping does not read a field is not compared on it
    other.problems.clear()
    _check_lines_agree(other, ["hcp", "books"], {"hcp": ALL, "books": ALL - {"taxable"}})
    assert other.problems == []


def test_a_line_missing_on_a_member_that_keeps_lines_is_named() -> None:
    hcp = {"a": _line(quantity="1", unit_price=100, amount=100),
           "b": _line(name="Pipe", position=2, quantity="3", unit_price=10, amount=30)}  # fmt: skip
    line = _invoice(130, hcp=hcp, books={"a": hcp["a"]})
    _check_lines_agree(line, ["hcp", "books"], {"hcp": ALL, "books": ALL})
    assert [(p.kind, p.member, p.message) for p in line.problems] == [
        ("line", "books", 'line 2 "Pipe" held by hcp is not on books')
    ]


def _seed(hcp: Any) -> None:
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    hcp.put("invoices", "i1", {"invoice_number": "1001", "customer": "c1", "status": "sent",
                               "amount": 10_104, "subtotal": 9_334, "tax_amount": 770,
                               "balance": 10_104})  # fmt: skip
    # no lines: as a job's second invoice in HCP
    hcp.put("invoices", "i2", {"invoice_number": "1002", "customer": "c1", "status": "sent",
                               "amount": 5_000, "subtotal": 5_000, "tax_amount": 0,
                               "balance": 5_000})  # fmt: skip
    line = {"invoice": "i1", "kind": "labor", "taxable": True}
    hcp.put("line_items", "l1", {**line, "name": "Labor", "quantity": "1.5", "unit_price": 6_223,
                                 "amount": 9_334, "position": 1})  # fmt: skip
    hcp.put("line_items", "l2", {**line, "name": "Fitting", "quantity": "2.5", "unit_price": 3,
                                 "amount": 8, "position": 2})  # fmt: skip
    hcp.put("line_items", "l3", {**line, "name": "Discount", "kind": "discount", "quantity": "1",
                                 "unit_price": -8, "amount": -8, "position": 3})  # fmt: skip


def test_lines_reconcile_after_a_sync_and_an_edit_in_the_books_is_named(tmp_path: Path) -> None:
    config = memory_config(
        tmp_path,
        {"hcp": {"entities": list(ENTITIES)}, "books": {"entities": list(ENTITIES)}},
        entities=ENTITIES,
    )
    hcp = MemoryConnector.get_dataset("hcp")
    _seed(hcp)
    [result] = api.sync(config)
    assert result.exit_code == 0, result.to_json()
    [report] = api.reconcile_report(config)
    assert report.clean, report.to_json()
    first = next(x for x in report.to_json()["invoices"] if x["invoice_number"] == "1001")
    assert first["members"]["books"]["lines"] == 3

    books = MemoryConnector.get_dataset("books")
    [key] = [k for k, v in books.table("line_items").items() if v["name"] == "Fitting"]
    books.edit("line_items", key, amount=7)  # typed by hand: rounded down
    [report] = api.reconcile_report(config)
    assert report.exit_code == 1
    found = {(x.invoice_number, p.kind, p.member) for x in report.invoices for p in x.problems}
    assert found == {
        ("1001", "line_amount", "books"),
        ("1001", "lines", "books"),
        ("1001", "line", ""),
    }


def test_a_line_changed_after_the_close_is_a_difference_after_the_close(tmp_path: Path) -> None:
    members = {"hcp": {"entities": list(ENTITIES)}, "books": {"entities": list(ENTITIES)}}
    hcp = MemoryConnector.get_dataset("hcp")
    _seed(hcp)
    hcp.edit("invoices", "i1", created_at="2026-09-15T12:00:00Z")
    api.sync(memory_config(tmp_path, members, entities=ENTITIES))
    # September is closed in the books since; HCP bills one more fitting on that invoice
    config = memory_config(tmp_path, members, entities=ENTITIES, locks={"books": "2026-10-01"})
    hcp.edit("line_items", "l2", quantity="3.5", amount=10)
    hcp.edit("invoices", "i1", subtotal=9_336, amount=10_106, balance=10_106)
    [result] = api.sync(config)
    assert result.exit_code == 0, result.to_json()
    [report] = api.reconcile_report(config)
    assert report.clean, report.to_json()
    [line] = [x for x in report.invoices if x.invoice_number == "1001"]
    assert (
        'line 2 "Fitting": quantity differs: hcp 3.5, books 2.5 (after the close: books '
        "closed before 2026-10-01)" in [p.message for p in line.after_close]
    )
