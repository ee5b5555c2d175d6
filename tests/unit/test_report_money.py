"""``reconcile-report`` on the money below the total: subtotal and tax, and refunds.

Per invoice and member: subtotal + tax = amount (where the member gives both), and succeeded
payments − refunds = amount − balance; members that give refunds agree on them. A member that
gives none of these fields gets the report it had before they existed. Memory members: "hcp"
stands for Housecall Pro (invoices created, never updated; payments read-only), "books" takes
everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncengine import api
from syncengine.connectors.memory import MemoryConnector
from syncengine.report import Report
from tests.helpers import hcp_books_config


def _seed(hcp: Any) -> None:
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    invoice = {"customer": "c1", "status": "sent", "subtotal": 10_000, "tax_amount": 825}
    hcp.put("invoices", "i1", {**invoice, "invoice_number": "1001", "amount": 10_825,
                               "balance": 1_825})  # fmt: skip
    hcp.put("invoices", "i2", {**invoice, "invoice_number": "1002", "amount": 10_825,
                               "balance": 10_825, "status": "open"})  # fmt: skip
    payment = {"invoice": "i1", "method": "cash", "status": "succeeded"}
    # 10,825 owed: 6,000 paid, 1,000 of it refunded; 4,000 paid; a refunded one counts nothing
    hcp.put("payments", "p1", {**payment, "amount": 6_000, "refunded_amount": 1_000})
    hcp.put("payments", "p2", {**payment, "amount": 4_000, "refunded_amount": 0})
    hcp.put(
        "payments",
        "p3",
        {**payment, "amount": 500, "refunded_amount": 500, "status": "refunded", "invoice": "i2"},
    )


def _report(config: Any) -> Report:
    [report] = api.reconcile_report(config)
    return report


def _problems(report: Report) -> set[tuple[str, str, str]]:
    return {
        (line.invoice_number or "", p.kind, p.member)
        for line in report.invoices
        for p in line.problems
    }


def _by_number(dataset: Any, entity: str, number: str) -> str:
    [key] = [k for k, v in dataset.table(entity).items() if v.get("invoice_number") == number]
    return str(key)


def test_refunds_and_tax_reconcile_after_a_sync(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    [result] = api.sync(config)
    assert result.exit_code == 0, result.to_json()
    report = _report(config)
    assert report.clean, report.to_json()
    for member in ("hcp", "books"):
        assert report.totals()[member] == {
            "invoices": 2,
            "amount": 21_650,
            "paid": 10_000,
            "balance": 12_650,
            "refunded": 1_000,
        }
    line = next(x for x in report.to_json()["invoices"] if x["invoice_number"] == "1001")
    assert line["members"]["books"] == {
        "amount": 10_825,
        "paid": 10_000,
        "balance": 1_825,
        "payments": 2,
        "subtotal": 10_000,
        "tax": 825,
        "refunded": 1_000,
    }


def test_a_subtotal_and_tax_that_miss_the_amount_are_named_per_member(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    api.sync(config)
    books = MemoryConnector.get_dataset("books")
    books.edit("invoices", _by_number(books, "invoices", "1002"), tax_amount=800)
    report = _report(config)
    assert report.exit_code == 1
    assert ("1002", "totals", "books") in _problems(report)
    [message] = [p.message for line in report.invoices for p in line.problems if p.kind == "totals"]
    assert message == "subtotal $100.00 + tax $8.00 = $108.00 on books, but the amount is $108.25"


def test_a_refund_one_member_lacks_is_a_balance_and_refund_disagreement(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    api.sync(config)
    books = MemoryConnector.get_dataset("books")
    [pay_key] = [k for k, v in books.table("payments").items() if v["amount"] == 6_000]
    books.edit("payments", pay_key, refunded_amount=0)  # the refund typed away in the books
    report = _report(config)
    problems = _problems(report)
    assert ("1001", "balance", "books") in problems
    assert ("1001", "refund", "") in problems
    messages = {p.message for line in report.invoices for p in line.problems}
    assert "refunds differ: hcp $10.00, books $0.00" in messages
    assert "balance $18.25 on books but amount $108.25 − payments $100.00 = $8.25" in messages, (
        messages
    )
    books.edit("invoices", _by_number(books, "invoices", "1001"), balance=825)
    problems = _problems(_report(config))
    assert ("1001", "balance", "books") not in problems  # consistent in itself
    assert ("1001", "refund", "") in problems  # but not with HCP


def test_a_balance_that_forgets_a_refund_names_it(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    api.sync(config)
    books = MemoryConnector.get_dataset("books")
    books.edit("invoices", _by_number(books, "invoices", "1001"), balance=825)
    report = _report(config)
    [message] = [
        p.message
        for line in report.invoices
        for p in line.problems
        if (p.kind, p.member) == ("balance", "books")
    ]
    assert message == (
        "balance $8.25 on books but amount $108.25 − payments $100.00 + refunds $10.00 = $18.25"
    )


def test_a_refund_above_its_payment_is_an_unreadable_record_not_a_crash(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    api.sync(config)
    books = MemoryConnector.get_dataset("books")
    [pay_key] = [k for k, v in books.table("payments").items() if v["amount"] == 4_000]
    books.edit("payments", pay_key, refunded_amount=4_001)
    report = _report(config)
    assert report.exit_code == 1
    [unreadable] = [d for d in report.general if d.kind == "unreadable"]
    assert unreadable.member == "books"
    assert "refunded_amount" in unreadable.message
    assert "refunded $40.01 is more than the payment's amount $40.00" in unreadable.message


def test_members_that_give_none_of_the_fields_keep_the_report_they_had(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    hcp.put("invoices", "i1", {"invoice_number": "1001", "customer": "c1", "amount": 10_000,
                               "balance": 2_500, "status": "sent"})  # fmt: skip
    hcp.put("payments", "p1", {"invoice": "i1", "amount": 7_500, "method": "cash",
                               "status": "succeeded"})  # fmt: skip
    # a payment refunded before refunds were a field: it counts for nothing, as it did
    hcp.put("payments", "p2", {"invoice": "i1", "amount": 900, "method": "cash",
                               "status": "refunded"})  # fmt: skip
    api.sync(config)
    report = _report(config)
    assert report.clean, report.to_json()
    assert report.totals()["books"] == {
        "invoices": 1,
        "amount": 10_000,
        "paid": 7_500,
        "balance": 2_500,
    }
    [line] = report.to_json()["invoices"]
    assert line["members"]["hcp"] == {"amount": 10_000, "paid": 7_500, "balance": 2_500,
                                      "payments": 2}  # fmt: skip


def test_a_blank_balance_is_a_balance_left_empty_not_a_member_without_balances(
    tmp_path: Path,
) -> None:
    config = hcp_books_config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    api.sync(config)
    books = MemoryConnector.get_dataset("books")
    books.edit("invoices", _by_number(books, "invoices", "1002"), balance=None)
    [line] = [line for line in _report(config).invoices if line.invoice_number == "1002"]
    # the books keep balances: this one is empty, shown "(none)" rather than "n/a"
    assert "books" in line.balance and line.balance["books"] is None
    assert line.balance["hcp"] == 10_825


def test_an_invoice_moved_to_another_customer_on_one_member_is_named(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    _seed(hcp)
    hcp.put("customers", "c2", {"first_name": "Bob", "email": "bob@example.com"})
    api.sync(config)
    assert _report(config).clean
    books = MemoryConnector.get_dataset("books")
    [bob] = [k for k, v in books.table("customers").items() if v["email"] == "bob@example.com"]
    # the bookkeeper retypes the invoice's customer cell with another customer's e-mail
    books.edit("invoices", _by_number(books, "invoices", "1002"), customer=bob)
    report = _report(config)
    assert report.exit_code == 1
    assert _problems(report) == {("1002", "customer", "")}
    [message] = [p.message for line in report.invoices for p in line.problems]
    assert message == "customers differ: hcp Ann <ann@example.com>, books Bob <bob@example.com>"
