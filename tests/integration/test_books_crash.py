"""Payments recorded in Housecall Pro reach the books exactly once, also when ``syncengine
sync`` is SIGKILLed midway and run again.

The books start in step with a seeded sandbox (one complete sync). Then, round after round,
payments are recorded in HCP through the sandbox's admin route (what a customer paying does:
succeeded ones lower the invoice's balance and may mark it paid; failed and pending ones do
not), and a ``syncengine sync`` process kills itself (SIGKILL) at a deterministic crash point
(``tests/crashpoints.py``): after the payments' sheet was written and before the state
commit, in the next run's recovery of those writes (the payments read, the writes not yet
settled from that read), between the invoices and the payments, after the invoices' sheet
was written, with the new rows only in memory, and just before the payments' sheet is
written. Every kill lands every time; one that does not fails the test.
Two payments are twins (same invoice, amount, method and day): only their Sync IDs tell them
apart in the sheet.

Afterwards a sync runs to completion, and then: every HCP payment is in the books exactly
once (by link: HCP payment id <-> Sync ID, and by invoice/amount/day/method/status), no row
twice, every invoice's amount, balance and status as HCP has them, ``reconcile-report`` clean,
no journal intent pending, and a further sync plans nothing. For the workbook, the money
format and font the bookkeeper gave the Balance cells survive the updates.

Reproducible: the payments come from ``random.Random(SEED)``. A failure prints the run table,
the request log and the last sync's output.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.styles import Font

from tests.crashpoints import (
    CRASH_AT,
    CRASH_LOG,
    LEASE_TTL,
    crash_at,
    crash_config,
    crashes,
    pipeline_busy,
    plugin_env,
)
from tests.integration.books import (
    Hcp,
    Run,
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
CRASHES = (
    # the payments' sheet written, the state not committed: their creates left pending
    crash_at("books", "flush", "payments", 1, "after"),
    # the next run, in its recovery of those creates: every member's payments read, the
    # creates not yet settled from that read (told by Sync ID)
    crash_at("books", "read", "payments", 1, "after"),
    # between two entities: the invoices applied and committed, the payments not begun
    crash_at("books", "prepare", "payments", 1, "before"),
    # the invoices' sheet written (new balances), the state not committed
    crash_at("books", "flush", "invoices", 1, "after"),
    # the second new payment row added in memory only
    crash_at("books", "create", "payments", 2, "after"),
    # everything applied but the payments' sheet not yet written
    crash_at("books", "flush", "payments", 1, "before"),
)
"""Where each round's sync kills itself, in order."""
BUSY_RETRIES = 50
"""Times a sync is started again while a killed run's lease still holds (0.2 s apart)."""
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


class CrashingSyncer(Syncer):
    """A ``Syncer`` for a config whose members are wrapped in the ``crashpoint`` plugin:
    ``crash(point)`` runs a sync that must kill itself at that crash point."""

    def __init__(self, folder: Path, config: Path, hcp: Hcp, books: Path) -> None:
        super().__init__(folder, config, hcp, books)
        self.crash_log = folder / "crashes.jsonl"
        self.env.update(plugin_env(folder / "plugin"))
        self.env[CRASH_LOG] = str(self.crash_log)

    def run(
        self,
        trigger: str = "to completion",
        make_stop: Callable[[float], Callable[[], bool]] | None = None,
        note: str = "",
        *,
        watch: bool = False,
    ) -> Run:
        """``Syncer.run``, started again while a killed run's lease still holds (such a run
        reads and writes nothing, and is left out of the run table)."""
        if self.runs and self.runs[-1].killed:
            time.sleep(LEASE_TTL)  # the killed run's lease expires
        for _attempt in range(BUSY_RETRIES):
            run = super().run(trigger, make_stop, note, watch=watch)
            if not pipeline_busy(run.returncode, run.stderr):
                break
            self.runs.pop()
            time.sleep(0.2)
        return run

    def crash(self, point: str, note: str = "") -> Run:
        before = len(crashes(self.crash_log))
        self.env[CRASH_AT] = point
        try:
            run = self.run(f"crash at {point}", note=note)
        finally:
            del self.env[CRASH_AT]
        fired = crashes(self.crash_log)[before:]
        run.killed = run.returncode == -signal.SIGKILL and len(fired) == 1
        assert run.killed, (
            f"sync #{run.index} never reached its crash point {point} "
            f"(exit {run.returncode}; crash points that fired: {fired})"
        )
        return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_payments_recorded_in_hcp_arrive_exactly_once_through_sigkills(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    rng = random.Random(f"{SEED}-{kind}")
    box = sandbox_factory(seed=CUSTOMERS)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    xlsx = kind == "xlsx"
    books = folder / ("books.xlsx" if xlsx else "books")
    config = books_config(folder, box.port, path=books.name, batch_size=2, concurrency=1)
    config.write_text(crash_config(config.read_text(encoding="utf-8")), encoding="utf-8")
    syncer = CrashingSyncer(folder, config, hcp, books)
    with syncer.explained():
        first, result = syncer.sync("the initial sync")
        assert first.returncode == 0 and not result["entities"]["payments"]["errors"]
        before = {p["id"] for p in hcp.books().all_payments()}
        if xlsx:
            assert restyle_balances(books) > 0

        twins: list[dict[str, Any]] = []
        for n, point in enumerate(CRASHES):
            run = syncer.crash(point, note=", ".join(record_payments(hcp, rng, n, twins)))
            if n == 0:  # the sheet holds rows the state store does not know of yet
                rows = {str(r["Sync ID"]) for r in read_books(books, "payments").filled()}
                known = {m.get("books") for m in state_links(syncer.db, "payments").values()}
                assert rows - known and run.pending_after, (
                    "the first kill should land after the payments' rows were written and "
                    "before the state store recorded them"
                )
        assert twins, "the twin payment was never recorded"
        late = ", ".join(record_payments(hcp, rng, len(CRASHES), twins))

        done_run, _ = syncer.sync(f"to completion; {late}")
        assert done_run.returncode == 0, "the sync after the kills did not exit 0"
        again, result = syncer.sync("a further sync")
        assert again.returncode == 0
        assert_nothing_planned(result)

        print("\n".join(r.row() for r in syncer.runs))

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

        report = cli("reconcile-report", "--config", config, "--json", env=syncer.env)
        assert_clean_exit(report, 0)
        body = json.loads(report.stdout)
        assert body["clean"] is True, (
            body["general"] or [x for x in body["invoices"] if x["disagreements"]][:5]
        )
        assert body["totals"]["books"]["paid"] == truth.total_paid()
        if xlsx:
            check_balance_styles(books)
