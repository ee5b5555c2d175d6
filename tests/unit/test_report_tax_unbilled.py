"""``reconcile-report --tax`` and ``--unbilled`` on memory members: "hcp" stands for Housecall
Pro (it holds jobs), "books" takes everything.

- the tax view sums, per month of the invoice's date and per member, the taxable lines, the
  others (a negative discount too) and the invoices' tax; an invoice without lines is
  unitemized; drafts and voided invoices are not sales; members agree after a sync, and an
  edit in the books is named in its month;
- a month a locked member's period covers whole lists what changed elsewhere since the
  close apart (``after_close``): the report stays clean; a month with the lock day inside
  it is compared as an open one;
- ``--from`` / ``--to`` narrow it, and a bad date is a usage error;
- the unbilled list holds the complete jobs no invoice of their member names, whether or not
  the pipeline syncs jobs, and needs a member holding jobs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import Config
from syncengine.connectors.memory import MemoryConnector
from syncengine.errors import UsageError
from syncengine.tax_report import parse_day
from tests.helpers import memory_config

ENTITIES = ("customers", "invoices", "payments", "line_items")


def _config(tmp_path: Path, entities: tuple[str, ...] = ENTITIES) -> Config:
    hcp = {"entities": [*entities, "jobs"] if "jobs" not in entities else list(entities)}
    books = {"entities": [e for e in entities if e != "jobs"]}
    return memory_config(tmp_path, {"hcp": hcp, "books": books}, entities=entities)


def _seed(hcp: Any) -> None:
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    invoice = {"customer": "c1", "status": "sent"}
    # October: lines 100.00 taxable + 20.00 non-taxable - 5.00 discount (taxable), tax 7.84
    hcp.put("invoices", "i1", {**invoice, "invoice_number": "1001", "job": "j1",
                               "created_at": "2026-10-03T15:00:00Z", "subtotal": 11_500,
                               "tax_amount": 784, "amount": 12_284, "balance": 12_284})  # fmt: skip
    line = {"invoice": "i1", "quantity": "1"}
    hcp.put("line_items", "l1", {**line, "name": "Heater", "unit_price": 10_000,
                                 "amount": 10_000, "taxable": True, "position": 1})  # fmt: skip
    hcp.put("line_items", "l2", {**line, "name": "Labor", "unit_price": 2_000, "amount": 2_000,
                                 "taxable": False, "position": 2})  # fmt: skip
    hcp.put("line_items", "l3", {**line, "name": "Discount", "unit_price": -500, "amount": -500,
                                 "taxable": True, "position": 3})  # fmt: skip
    # November: no lines (a job's second invoice); a voided one and a draft are no sales
    hcp.put("invoices", "i2", {**invoice, "invoice_number": "1001-2", "job": "j1",
                               "created_at": "2026-11-01T00:30:00Z", "subtotal": 3_000,
                               "tax_amount": 0, "amount": 3_000, "balance": 3_000})  # fmt: skip
    hcp.put("invoices", "i3", {**invoice, "invoice_number": "1003", "status": "voided",
                               "created_at": "2026-11-02T00:00:00Z", "amount": 900,
                               "balance": 0})  # fmt: skip
    hcp.put("invoices", "i4", {**invoice, "invoice_number": "1004", "status": "draft",
                               "created_at": "2026-11-02T00:00:00Z", "amount": 800,
                               "balance": 800})  # fmt: skip
    job = {"customer": "c1", "description": "Water heater"}
    hcp.put("jobs", "j1", {**job, "work_status": "complete"})
    hcp.put("jobs", "j2", {**job, "work_status": "complete_rated", "total_amount": 4_500})
    hcp.put("jobs", "j3", {**job, "work_status": "scheduled"})


def _months(config: Config, **span: dt.date) -> dict[str, Any]:
    [report] = api.tax_report(config, **span)
    return {m.month: m for m in report.months}


def test_sales_and_tax_per_month_agree_after_a_sync(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    [result] = api.sync(config)
    assert result.exit_code == 0, result.to_json()
    [report] = api.tax_report(config)
    assert report.clean, report.to_json()
    months = {m.month: m for m in report.months}
    assert list(months) == ["2026-10", "2026-11"]
    for member in ("hcp", "books"):
        assert months["2026-10"].members[member] == {
            "invoices": 1, "taxable": 9_500, "non_taxable": 2_000, "unitemized": 0, "tax": 784
        }  # fmt: skip
        assert months["2026-11"].members[member] == {
            "invoices": 1, "taxable": 0, "non_taxable": 0, "unitemized": 3_000, "tax": 0
        }  # fmt: skip

    books = MemoryConnector.get_dataset("books")
    [key] = [k for k, v in books.table("line_items").items() if v["name"] == "Labor"]
    books.edit("line_items", key, taxable=True)
    [report] = api.tax_report(config)
    assert report.exit_code == 1
    months = {m.month: m for m in report.months}
    assert months["2026-11"].agree
    assert months["2026-10"].differences == [
        "taxable sales differ: hcp $95.00, books $115.00",
        "non-taxable sales differ: hcp $20.00, books $0.00",
    ]
    assert report.to_json()["months"][0]["agree"] is False


def test_a_closed_month_lists_changes_after_the_close_apart_and_stays_clean(
    tmp_path: Path,
) -> None:
    hcp = MemoryConnector.get_dataset("hcp")
    _seed(hcp)
    api.sync(_config(tmp_path))
    # October is closed on the books once they hold it
    config = memory_config(
        tmp_path,
        {"hcp": {"entities": [*ENTITIES, "jobs"]}, "books": {"entities": list(ENTITIES)}},
        entities=ENTITIES,
        locks={"books": "2026-11-01"},
    )
    hcp.edit("line_items", "l2", taxable=True)  # October, closed on the books
    hcp.edit("invoices", "i2", tax_amount=240)  # November, open
    api.sync(config)
    [report] = api.tax_report(config)
    months = {m.month: m for m in report.months}
    october = months["2026-10"]
    assert october.closed == ["books"] and october.agree
    assert october.after_close == [
        "taxable sales differ: hcp $115.00, books $95.00 "
        "(after the close: books closed before 2026-11-01)",
        "non-taxable sales differ: hcp $0.00, books $20.00 "
        "(after the close: books closed before 2026-11-01)",
    ]
    assert months["2026-11"].closed == [] and months["2026-11"].agree  # synced: it is open
    assert report.clean and report.exit_code == 0, report.to_json()

    books = MemoryConnector.get_dataset("books")
    [key] = [k for k, v in books.table("invoices").items() if v["invoice_number"] == "1001-2"]
    books.edit("invoices", key, tax_amount=0)  # an open month still disagrees
    [report] = api.tax_report(config)
    assert report.exit_code == 1
    assert {m.month: m.agree for m in report.months} == {"2026-10": True, "2026-11": False}


def test_from_and_to_narrow_the_months(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    api.sync(config)
    assert list(_months(config, start=dt.date(2026, 11, 1))) == ["2026-11"]
    assert list(_months(config, end=dt.date(2026, 10, 31))) == ["2026-10"]
    assert _months(config, start=dt.date(2026, 12, 1)) == {}
    with pytest.raises(UsageError, match="before --from"):
        api.tax_report(config, start=dt.date(2026, 11, 1), end=dt.date(2026, 10, 1))


def test_a_bad_date_is_a_usage_error_that_says_how_to_write_it() -> None:
    assert parse_day("--from", "2026-10-01") == dt.date(2026, 10, 1)
    with pytest.raises(UsageError, match=r"--from '2026-13-01' is not a date: write it as YYYY"):
        parse_day("--from", "2026-13-01")


def test_unbilled_lists_complete_jobs_without_an_invoice(tmp_path: Path) -> None:
    config = _config(tmp_path)  # jobs are not synced: hcp's are read anyway
    _seed(MemoryConnector.get_dataset("hcp"))
    [report] = api.unbilled_report(config)
    assert report.holders == ("hcp",)
    assert [(j.member, j.id) for j in report.jobs] == [("hcp", "j2")]
    assert report.complete == {"hcp": 2}
    assert report.exit_code == 0
    [job] = report.to_json()["unbilled"]
    assert job["work_status"] == "complete_rated"
    assert job["total_amount"] == 4_500


def test_unbilled_where_the_pipeline_syncs_jobs(tmp_path: Path) -> None:
    entities = ("customers", "jobs", "invoices", "payments")
    config = memory_config(
        tmp_path,
        {"hcp": {"entities": list(entities)}, "books": {"entities": list(entities)}},
        entities=entities,
    )
    hcp = MemoryConnector.get_dataset("hcp")
    _seed(hcp)
    hcp.remove("line_items", "l1")
    [report] = api.unbilled_report(config)
    assert [(j.member, j.id) for j in report.jobs] == [("hcp", "j2")]


def test_unbilled_needs_a_member_holding_jobs(tmp_path: Path) -> None:
    config = memory_config(
        tmp_path,
        {"hcp": {"entities": list(ENTITIES)}, "books": {"entities": list(ENTITIES)}},
        entities=ENTITIES,
    )
    with pytest.raises(UsageError, match="no member that holds jobs"):
        api.unbilled_report(config, "p")


def test_a_member_whose_invoices_give_no_tax_is_compared_on_their_count_only() -> None:
    # a CRM that takes invoices without their tax ([pipelines.member_entities]): its months
    # are not "tax differs: crm $0.00", nor unitemized sales with the tax still in them
    from syncengine.report import _Seen
    from syncengine.tax_report import sales_by_month

    invoice = {"created_at": "2025-02-03T15:00:00Z", "status": "open", "amount": 10_825}
    books = {
        "invoices": {
            "hcp": {"k1": [_Seen("k1", {**invoice, "subtotal": 10_000, "tax_amount": 825}, "")]},
            "crm": {"k1": [_Seen("k1", dict(invoice), "")]},
        }
    }
    [month], _ = sales_by_month(books, ("hcp", "crm"), taxless={"crm"})
    assert month.differences == []
    assert month.members["crm"]["tax"] is None  # shown as n/a, not $0.00
    assert month.members["crm"]["invoices"] == 1
    [month], _ = sales_by_month(books, ("hcp", "crm"))
    assert month.differences  # compared as before: they differ on tax
