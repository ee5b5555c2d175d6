"""A closed period in the books, end to end through the ``syncengine`` command and a sandbox.

The books (a CSV folder, or a workbook whose days are shown in Chicago time) are synced with
a seeded Housecall Pro sandbox; then the bookkeeper closes them before a day in the middle of
the invoices (``[pipelines.locks] books = "YYYY-MM-DD"``), which ``validate`` shows. In HCP,
as a person would: the amount of a closed invoice is raised and it takes a payment dated
before the lock; another closed invoice takes a payment dated after it; an open invoice's
amount is raised and it takes a payment too.

The dry run says which writes the closed period skips; the sync writes only the open side:
the open invoice's new amount and both payments dated after the lock arrive, the payment
dated before it does not, and every row dated before the lock is unchanged byte for byte
(CSV) or value for value (workbook). ``status`` lists the three skipped writes with the
reason ``period closed on books``; a second sync plans and reports nothing and the skips stay
listed; ``reconcile-report`` exits 0, listing the closed invoices as differences after the
close and no disagreement. A lock that is no date, or names no member, is a configuration
error (exit 2) naming the key and the fix, before anything is read or written.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.books import (
    Hcp,
    assert_nothing_planned,
    books_config,
    cents,
    currency,
    day_of,
    dry_run_blocks,
    planned_writes,
    read_books,
    read_xlsx_rows,
    sheet_day,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 30
ZONE = "America/Chicago"
RAISE = 1234
PAID = 500
REASON = "period closed on books"
DATED = {"invoices": "Created", "payments": "Date"}
SHEETS = {"invoices": "Invoices", "payments": "Payments"}


def closed_rows(books: Path, entity: str, lock: dt.date) -> dict[str, Any]:
    """Sync ID -> each row dated before ``lock`` as it is stored: a CSV row's bytes (its
    line), a workbook row's cell values."""
    out: dict[str, Any] = {}
    if books.suffix == ".xlsx":
        for row in read_xlsx_rows(books, SHEETS[entity]).filled():
            day = sheet_day(row[DATED[entity]])
            if day is not None and day < lock:
                out[str(row["Sync ID"])] = tuple(row.items())
        return out
    lines = (books / f"{entity}.csv").read_bytes().splitlines(keepends=True)
    header = next(csv.reader([lines[0].decode("utf-8-sig")]))
    for line in lines[1:]:
        (cells,) = list(csv.reader([line.decode("utf-8")]))
        row = dict(zip(header, cells, strict=False))
        day = sheet_day(row.get(DATED[entity]))
        if day is not None and day < lock:
            out[row["Sync ID"]] = line
    return out


def lock_config(folder: Path, port: int, books: Path, lock: str, *, member: str = "books") -> Path:
    zone = ZONE if books.suffix == ".xlsx" else None
    return books_config(
        folder,
        port,
        path=books.name,
        timezone=zone,
        pipeline_extra=f'[pipelines.locks]\n{member} = "{lock}"\n',
    )


def change_invoice(hcp: Hcp, invoice_id: str, **changes: Any) -> dict[str, Any]:
    """``PUT /_sandbox/invoices/{id}``: what a person changes in HCP's web app."""
    response = hcp.http.put(f"/_sandbox/invoices/{invoice_id}", json=changes)
    assert response.status_code == 200, response.text
    return dict(response.json())


def stamp(day: dt.date, zone: str) -> str:
    """Noon of ``day`` in ``zone``, as HCP writes a timestamp."""
    local = dt.datetime.combine(day, dt.time(12), tzinfo=zoneinfo.ZoneInfo(zone))
    return local.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def skipped_of(status: CliResult) -> list[tuple[str, str, str, str]]:
    (pipeline,) = json.loads(status.stdout)
    return sorted((s["entity"], s["record"], s["member"], s["reason"]) for s in pipeline["skipped"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_a_closed_period_keeps_the_books_rows_and_lets_the_open_side_sync(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    xlsx = kind == "xlsx"
    books = folder / ("books.xlsx" if xlsx else "books")
    zone = ZONE if xlsx else "UTC"
    open_config = books_config(folder, box.port, path=books.name, timezone=ZONE if xlsx else None)
    assert_clean_exit(cli("sync", "--config", open_config), 0)

    # the lock: the day of the middle one of the invoices that still owe something
    owing = sorted(
        (i for i in hcp.invoices() if i["status"] == "sent" and i["outstanding_balance"] > 2000),
        key=lambda i: i["created_at"],
    )
    lock = day_of(owing[len(owing) // 2]["created_at"], zone)
    closed = [i for i in owing if day_of(i["created_at"], zone) < lock - dt.timedelta(days=1)]
    still_open = [i for i in owing if day_of(i["created_at"], zone) >= lock]
    assert len(closed) >= 2 and still_open, "the seed should owe on both sides of the lock"
    edited, paid_late, open_one = closed[0], closed[1], still_open[0]
    config = lock_config(folder, box.port, books, lock.isoformat())

    shown = cli("validate", "--config", config)
    assert_clean_exit(shown, 0)
    assert f"hcp-books: books closed before {lock.isoformat()}" in shown.stdout, shown.stdout
    as_json = cli("validate", "--config", config, "--json")
    assert_clean_exit(as_json, 0)
    assert json.loads(as_json.stdout)["pipelines"][0]["locks"] == {"books": lock.isoformat()}

    invoices_before = closed_rows(books, "invoices", lock)
    payments_before = closed_rows(books, "payments", lock)
    assert invoices_before and payments_before

    # what people do in HCP
    change_invoice(hcp, edited["id"], amount=edited["amount"] + RAISE)
    early = stamp(lock - dt.timedelta(days=1), zone)
    late = stamp(lock + dt.timedelta(days=3), zone)
    hcp.record_payment(edited["id"], PAID, method="check", processed_at=early)
    hcp.record_payment(paid_late["id"], PAID, method="check", processed_at=late)
    change_invoice(hcp, open_one["id"], amount=open_one["amount"] + RAISE)
    hcp.record_payment(open_one["id"], PAID, method="cash", processed_at=late)

    dry = cli("sync", "--config", config, "--dry-run", "--details")
    assert_clean_exit(dry, 0)
    blocks = dry_run_blocks(dry.stdout)
    for invoice in (edited, paid_late):
        block = blocks[f"invoices · invoice {invoice['invoice_number']}"]
        assert f"· skipped on books: {REASON}" in block, dry.stdout
    assert "~ update on books" in blocks[f"invoices · invoice {open_one['invoice_number']}"]
    early_day = day_of(early, zone).isoformat()
    (early_block,) = [
        lines
        for header, lines in blocks.items()
        if header.startswith(f"payments · {currency(PAID)} on {early_day}")
    ]
    assert f"· skipped on books: {REASON}" in early_block, dry.stdout

    run = cli("sync", "--config", config, "--json")
    assert_clean_exit(run, 0)
    result = json.loads(run.stdout)
    assert planned_writes(result) == {
        ("invoices", "books", "update"): 1,
        ("payments", "books", "create"): 2,
    }, result
    assert result["entities"]["invoices"]["skipped"] == 2
    assert result["entities"]["payments"]["skipped"] == 1

    # the closed side is untouched: same rows, same bytes (CSV) or values (workbook)
    assert closed_rows(books, "invoices", lock) == invoices_before
    assert closed_rows(books, "payments", lock) == payments_before
    # the open side arrived
    rows = {str(r["Invoice #"]): r for r in read_books(books, "invoices").filled()}
    assert cents(rows[open_one["invoice_number"]]["Amount"]) == open_one["amount"] + RAISE
    assert cents(rows[edited["invoice_number"]]["Amount"]) == edited["amount"]
    payments = read_books(books, "payments").filled()
    arrived = sorted(
        (str(p["Invoice #"]), sheet_day(p["Date"]))
        for p in payments
        if cents(p["Amount"]) == PAID and sheet_day(p["Date"]) == day_of(late, zone)
    )
    assert arrived == sorted(
        (i["invoice_number"], day_of(late, zone)) for i in (paid_late, open_one)
    ), arrived
    assert not [
        p
        for p in payments
        if str(p["Invoice #"]) == edited["invoice_number"]
        and sheet_day(p["Date"]) == day_of(early, zone)
    ], "a payment dated before the lock reached the books"

    expected = sorted(
        [
            ("invoices", f"invoice {edited['invoice_number']}", "books", REASON),
            ("invoices", f"invoice {paid_late['invoice_number']}", "books", REASON),
            ("payments", f"{currency(PAID)} on {early_day}", "books", REASON),
        ]
    )
    status = cli("status", "--config", config, "--json")
    assert_clean_exit(status, 0)
    listed = skipped_of(status)
    # (a payment is named by its amount and day, then its id)
    assert [(e, m, why) for e, _r, m, why in listed] == [(e, m, why) for e, _r, m, why in expected]
    for (_e, record, _m, _why), (_, start, _, _) in zip(listed, expected, strict=True):
        assert record.startswith(start), listed
    text = cli("status", "--config", config)
    assert_clean_exit(text, 0)
    assert "skipped writes: 3" in text.stdout, text.stdout
    assert f"invoices · invoice {edited['invoice_number']} on books: {REASON}" in text.stdout

    # nothing new: the skips are not planned, reported or retried again, and stay listed
    again = cli("sync", "--config", config, "--json")
    assert_clean_exit(again, 0)
    assert_nothing_planned(json.loads(again.stdout))
    dry_again = cli("sync", "--config", config, "--dry-run")
    assert_clean_exit(dry_again, 0)
    assert "skipped on" not in dry_again.stdout and "Nothing to do" in dry_again.stdout
    assert skipped_of(cli("status", "--config", config, "--json")) == skipped_of(status)
    assert closed_rows(books, "invoices", lock) == invoices_before
    assert closed_rows(books, "payments", lock) == payments_before

    # the report explains the closed invoices, and finds no disagreement
    report = cli("reconcile-report", "--config", config, "--json")
    assert_clean_exit(report, 0)
    body = json.loads(report.stdout)
    assert body["clean"] is True and body["disagreements"] == 0, body
    after = {x["invoice_number"] for x in body["invoices"] if x["after_close"]}
    assert after == {edited["invoice_number"], paid_late["invoice_number"]}, body
    shown_report = cli("reconcile-report", "--config", config)
    assert_clean_exit(shown_report, 0)
    flat = " ".join(shown_report.stdout.split())
    assert "after the close" in flat and "The books reconcile" in flat, shown_report.stdout


@pytest.mark.parametrize(
    ("member", "lock", "where", "message"),
    [
        (
            "books",
            "2026-13-01",
            "pipelines.hcp-books.locks.books",
            "'2026-13-01' is not a real date",
        ),
        ("books", "next Monday", "pipelines.hcp-books.locks.books", "'next Monday' is not a date"),
        ("bokks", "2026-10-01", "locks.bokks", "not a member of this pipeline"),
    ],
)
def test_a_bad_lock_is_a_config_error_before_anything_is_read(
    tmp_path: Path, cli: Cli, member: str, lock: str, where: str, message: str
) -> None:
    folder = tmp_path / "work"
    books = folder / "books"
    config = lock_config(folder, 9, books, lock, member=member)  # nothing listens on 9
    for args in (("validate",), ("sync",)):
        done = cli(*args, "--config", config)
        assert_clean_exit(done, 2)
        said = done.stdout + done.stderr
        assert where in said and message in said, said
        assert "fix:" in said, said
    assert not books.exists(), "a sync with a bad lock wrote the books"
    fix = (
        "did you mean 'books'?" if member == "bokks" else 'write the first open day as "YYYY-MM-DD"'
    )
    assert fix in said, said
