"""Payments recorded in Housecall Pro reach the books exactly once, also when ``syncengine
sync`` is SIGKILLed midway and run again.

The books start in step with a seeded sandbox (one complete sync). Then, round after round,
payments are recorded in HCP through the sandbox's admin route (what a customer paying does:
succeeded ones lower the invoice's balance and may mark it paid; failed and pending ones do
not), and a ``syncengine sync`` process is started and killed with SIGKILL (its pid only) at
a random instant: as soon as the books file is replaced (written, the state not committed),
a random delay after its first request reached the sandbox, or a random delay after it
started. Two payments are twins (same invoice, amount, method and day): only their Sync IDs
tell them apart in the sheet.

Afterwards a sync runs to completion, and then: every HCP payment is in the books exactly
once (by link: HCP payment id <-> Sync ID, and by invoice/amount/day/method/status), no row
twice, every invoice's amount, balance and status as HCP has them, ``reconcile-report`` clean,
no journal intent pending, and a further sync plans nothing. For the workbook, the money
format and font the bookkeeper gave the Balance cells survive the updates.

Reproducible: the payments and the kill schedule come from ``random.Random(SEED)``; only
where the kills land depends on the machine. A failure prints the run table, the request log
and the last sync's output.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.styles import Font

from tests.integration.books import (
    Hcp,
    Syncer,
    assert_books_match_hcp,
    assert_nothing_planned,
    books_config,
    read_books,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit
from tests.statefile import journal_counts
from tests.statefile import links as state_links

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 20250611
CUSTOMERS = 50
ROUNDS = 9
BUDGET_S = 30.0
"""The kill loop stops early past this many seconds."""
BALANCE_FORMAT = '"$"#,##0.00_);[Red]("$"#,##0.00)'


def record_payments(
    hcp: Hcp, rng: random.Random, round_no: int, twins: list[dict[str, Any]]
) -> list[str]:
    """A few payments on invoices that still owe something; returns what was done."""
    owing = [
        i
        for i in hcp.invoices()
        if i["status"] not in ("voided", "canceled") and i["outstanding_balance"] > 0
    ]
    done = []
    for j in range(rng.randint(2, 4)):
        if not owing:
            break
        inv = rng.choice(owing)
        balance = inv["outstanding_balance"]
        status = rng.choices(["succeeded", "failed", "pending"], weights=[8, 1, 1])[0]
        amount = balance if rng.random() < 0.25 else rng.randint(1, max(1, min(balance, 30000)))
        when = f"2025-07-{1 + round_no:02d}T{10 + j:02d}:{rng.randint(0, 59):02d}:00Z"
        method = rng.choice(["cash", "check", "credit_card", "ach", "other"])
        hcp.record_payment(inv["id"], amount, method=method, status=status, processed_at=when)
        done.append(f"{inv['invoice_number']} {status} {amount}c")
        if status == "succeeded":
            inv["outstanding_balance"] -= amount
            if inv["outstanding_balance"] <= 0:
                owing.remove(inv)
        if not twins and status == "succeeded" and inv["outstanding_balance"] > 0:
            # the same payment again: same invoice, amount, method, day (even the minute)
            twin = min(amount, inv["outstanding_balance"])
            if twin == amount:
                hcp.record_payment(
                    inv["id"], amount, method=method, status=status, processed_at=when
                )
                twins.append({"invoice": inv["id"], "amount": amount, "when": when})
                inv["outstanding_balance"] -= amount
                done.append(f"{inv['invoice_number']} twin {amount}c")
                if inv["outstanding_balance"] <= 0:
                    owing.remove(inv)
    return done


def restyle_balances(workbook: Path) -> int:
    """The bookkeeper's touch: the Balance column in their own money format, bold."""
    wb = openpyxl.load_workbook(workbook)
    ws = wb["Invoices"]
    col = [c.value for c in ws[1]].index("Balance")
    n = 0
    for row in ws.iter_rows(min_row=2):
        cell = row[col]
        if cell.value is not None:
            cell.number_format = BALANCE_FORMAT
            cell.font = Font(bold=True)
            n += 1
    wb.save(workbook)
    return n


def check_balance_styles(workbook: Path) -> None:
    wb = openpyxl.load_workbook(workbook)
    try:
        ws = wb["Invoices"]
        col = [c.value for c in ws[1]].index("Balance")
        lost = [
            f"{row[col].coordinate} {row[col].number_format!r} bold={row[col].font.b}"
            for row in ws.iter_rows(min_row=2)
            if row[col].value is not None
            and (row[col].number_format != BALANCE_FORMAT or not row[col].font.b)
        ]
        assert not lost, f"Balance cells lost the bookkeeper's format or font: {lost[:10]}"
    finally:
        wb.close()


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_payments_recorded_in_hcp_arrive_exactly_once_through_sigkills(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    test_started = time.monotonic()
    rng = random.Random(f"{SEED}-{kind}")
    box = sandbox_factory(seed=CUSTOMERS)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    xlsx = kind == "xlsx"
    books = folder / ("books.xlsx" if xlsx else "books")
    config = books_config(folder, box.port, path=books.name, batch_size=2, concurrency=1)
    files = [books] if xlsx else [books / "invoices.csv", books / "payments.csv"]
    syncer = Syncer(folder, config, hcp, books)
    with syncer.explained():
        first, result = syncer.sync("the initial sync")
        assert first.returncode == 0 and not result["entities"]["payments"]["errors"]
        calibration, _ = syncer.sync("calibration: nothing to do", watch=True)
        full = calibration.seconds
        work = full - (calibration.first_request or full / 2)
        before = {p["id"] for p in hcp.books().all_payments()}
        if xlsx:
            assert restyle_balances(books) > 0

        twins: list[dict[str, Any]] = []
        for n in range(ROUNDS):
            if n >= 3 and time.monotonic() - test_started > BUDGET_S:
                break
            done = ", ".join(record_payments(hcp, rng, n, twins))
            pick = rng.random()
            if n == 0 or pick < 0.45:
                run = syncer.killed_when_written(files, note=done)
            elif pick < 0.75:
                run = syncer.killed_after_first_request(rng.uniform(0.0, work), note=done)
            else:
                run = syncer.killed_after(rng.uniform(full - work, full), note=done)
            assert run.killed or run.returncode == 0, (
                f"sync #{run.index} failed on its own with exit {run.returncode}"
            )
        assert twins, "the twin payment was never recorded"
        late = ", ".join(record_payments(hcp, rng, ROUNDS, twins))

        done_run, _ = syncer.sync(f"to completion; {late}")
        assert done_run.returncode == 0, "the sync after the kills did not exit 0"
        again, result = syncer.sync("a further sync")
        assert again.returncode == 0
        assert_nothing_planned(result)

        killed = [r for r in syncer.runs if r.killed]
        print("\n".join(r.row() for r in syncer.runs))
        assert len(killed) >= 3, "too few syncs were killed to mean much"
        assert any(r.killed and r.trigger.startswith("when ") for r in syncer.runs), (
            "no kill landed between the books write and the state commit"
        )

        truth = hcp.books()
        payments = truth.all_payments()
        recorded = [p for p in payments if p["id"] not in before]
        assert len(recorded) >= 10, f"only {len(recorded)} payments recorded"
        assert_books_match_hcp(truth, books)

        # exactly once, by link: each HCP payment <-> one row, each row <-> one HCP payment
        links = state_links(folder / "state.db", "payments")
        hcp_ids = Counter(m.get("hcp") for m in links.values())
        book_ids = Counter(m.get("books") for m in links.values())
        rows = read_books(books, "payments").filled()
        sync_ids = Counter(str(r["Sync ID"]) for r in rows)
        assert set(hcp_ids) == {p["id"] for p in payments} and max(hcp_ids.values()) == 1, (
            f"HCP payments not linked exactly once: unlinked "
            f"{sorted({p['id'] for p in payments} - set(hcp_ids))}, linked twice "
            f"{[i for i, k in hcp_ids.items() if k > 1]}"
        )
        assert set(book_ids) == set(sync_ids) and max(sync_ids.values()) == 1, (
            f"rows and links differ: rows without a link "
            f"{sorted(set(sync_ids) - set(book_ids))}, links without a row "
            f"{sorted(set(book_ids) - set(sync_ids), key=str)}"
        )
        assert journal_counts(folder / "state.db")["pending"] == 0

        twin = twins[0]
        twin_rows = [
            p
            for p in payments
            if p["invoice_id"] == twin["invoice"]
            and p["amount"] == twin["amount"]
            and p["processed_at"] == twin["when"]
        ]
        assert len(twin_rows) == 2, twin_rows

        report = cli("reconcile-report", "--config", config, "--json")
        assert_clean_exit(report, 0)
        body = json.loads(report.stdout)
        assert body["clean"] is True, (
            body["general"] or [x for x in body["invoices"] if x["disagreements"]][:5]
        )
        assert body["totals"]["books"]["paid"] == truth.total_paid()
        if xlsx:
            check_balance_styles(books)
