"""Helpers for the books integration tests (``test_books_*.py``): invoices and payments synced
between a Housecall Pro sandbox process and a spreadsheet (a CSV folder or one workbook).

Nothing here goes through the engine: what HCP holds is read over HTTP from the sandbox's
API (``GET /invoices``, ``GET /invoices/{id}/payments``, ``GET /customers``) and what the
books hold is read from the files with :mod:`csv` and :mod:`openpyxl`, so the tests compare
the sync's result with an independent account of both sides.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import time
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openpyxl

from tests.csvfiles import read_csv_table, write_csv
from tests.integration.conftest import (
    CLI_TIMEOUT,
    DEFAULT_KEY,
    SYNCENGINE,
    Sandbox,
    cli_env,
    start_sandbox,
)
from tests.statefile import journal_counts

ENTITIES = ("customers", "invoices", "payments")
SHEETS = {"customers": "Customers", "invoices": "Invoices", "payments": "Payments"}
INVOICE_COLUMNS = [
    "Sync ID",
    "Invoice #",
    "Customer Email",
    "Status",
    "Amount",
    "Balance",
    "Due Date",
    "Created",
]
PAYMENT_COLUMNS = ["Sync ID", "Invoice #", "Amount", "Method", "Status", "Date"]
WRITES = ("POST", "PUT", "PATCH", "DELETE")


# ----------------------------------------------------------------------------- the sandbox


def start_sandbox_with(
    workdir: Path,
    *flags: str,
    seed: int,
    api_key: str = DEFAULT_KEY,
    started: list[Sandbox] | None = None,
) -> Sandbox:
    """``syncengine sandbox --port 0 --seed N FLAGS...`` (the conftest's ``start_sandbox``);
    appended to ``started`` so that a fixture stops it."""
    box = start_sandbox(workdir, *flags, api_key=api_key, seed=seed)
    if started is not None:
        started.append(box)
    return box


class Hcp:
    """The sandbox's API and admin routes, used the way a person (not the engine) would."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.http = httpx.Client(
            base_url=sandbox.base_url,
            timeout=30.0,
            headers={"Authorization": f"Token {sandbox.api_key}"},
        )

    def close(self) -> None:
        self.http.close()

    def _pages(self, path: str, name: str, **params: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            body = (
                self.http.get(path, params={"page": page, "page_size": 200, **params})
                .raise_for_status()
                .json()
            )
            found += body[name]
            if page >= body["total_pages"]:
                return found
            page += 1

    def customers(self) -> list[dict[str, Any]]:
        return self._pages("/customers", "customers", sort_by="created_at", sort_direction="asc")

    def invoices(self) -> list[dict[str, Any]]:
        return self._pages("/invoices", "invoices", sort_by="created_at", sort_direction="asc")

    def payments_of(self, invoice_id: str) -> list[dict[str, Any]]:
        """``GET /invoices/{id}/payments``: never the payments nested in an invoice."""
        return self._pages(f"/invoices/{invoice_id}/payments", "payments")

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/jobs/{job_id}").raise_for_status().json())

    def books(self) -> HcpBooks:
        """Customers, invoices and each invoice's payments. An invoice sent without its
        ``customer_id`` (``--live-invoices``) gets it from its job (``GET /jobs/{id}``)."""
        invoices = self.invoices()
        for invoice in invoices:
            if not invoice.get("customer_id") and invoice.get("job_id"):
                job = self.job(invoice["job_id"])
                invoice["customer_id"] = job.get("customer_id") or job["customer"]["id"]
        payments = {i["id"]: self.payments_of(i["id"]) for i in invoices}
        return HcpBooks(self.customers(), invoices, payments)

    def record_payment(
        self,
        invoice_id: str,
        amount: int,
        *,
        method: str = "check",
        status: str = "succeeded",
        processed_at: str | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"amount": amount, "payment_method": method, "status": status}
        if processed_at is not None:
            body["processed_at"] = processed_at
        if note is not None:
            body["note"] = note
        response = self.http.post(f"/_sandbox/invoices/{invoice_id}/payments", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def refund(self, payment_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund part of a payment (``amount`` cents) or all that is left of it (None)."""
        body = {} if amount is None else {"amount": amount}
        response = self.http.post(f"/_sandbox/payments/{payment_id}/refund", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def options(self) -> dict[str, Any]:
        return dict(self.http.get("/_sandbox/options").raise_for_status().json())

    def requests(self) -> list[dict[str, Any]]:
        return list(self.http.get("/_sandbox/requests").raise_for_status().json()["requests"])

    def clear_requests(self) -> None:
        self.http.delete("/_sandbox/requests").raise_for_status()

    def log_tail(self, n: int = 30) -> str:
        try:
            entries = self.requests()
        except httpx.HTTPError as exc:
            return f"(request log unavailable: {exc})"
        lines = [
            f"{e['method']:6} {e['path']}{'?' + e['query'] if e['query'] else ''} -> {e['status']}"
            for e in entries[-n:]
        ]
        return f"{len(entries)} requests in all; the last {len(lines)}:\n" + "\n".join(lines)


@dataclass
class HcpBooks:
    """Everything HCP holds, read through its API."""

    customers: list[dict[str, Any]]
    invoices: list[dict[str, Any]]
    payments: dict[str, list[dict[str, Any]]]
    """invoice id -> its payments (``GET /invoices/{id}/payments``)."""

    @property
    def by_number(self) -> dict[str, dict[str, Any]]:
        return {i["invoice_number"]: i for i in self.invoices}

    def all_payments(self) -> list[dict[str, Any]]:
        numbers = {i["id"]: i["invoice_number"] for i in self.invoices}
        return [
            {**p, "invoice_number": numbers[inv]}
            for inv, pays in self.payments.items()
            for p in pays
        ]

    def total_amount(self) -> int:
        return sum(int(i["amount"]) for i in self.invoices)

    def total_paid(self) -> int:
        return sum(int(p["amount"]) for p in self.all_payments() if p["status"] == "succeeded")

    def total_balance(self) -> int:
        return sum(int(i["outstanding_balance"]) for i in self.invoices)

    def total_refunded(self) -> int:
        """What was refunded of the succeeded payments (those refunded in full are
        ``refunded``, and count for nothing, as in ``reconcile-report``)."""
        return sum(
            int(p.get("refunded_amount") or 0)
            for p in self.all_payments()
            if p["status"] == "succeeded"
        )


# ------------------------------------------------------------------------------- the books


def books_config(
    folder: Path,
    port: int,
    *,
    path: str = "books",
    timezone: str | None = None,
    batch_size: int = 200,
    concurrency: int = 2,
    books_extra: str = "",
    name: str = "config.toml",
    pipeline_extra: str = "",
) -> Path:
    """A config syncing customers, invoices and payments between the sandbox on ``port`` and
    ``folder/path`` (a CSV folder, or a workbook when it ends in ``.xlsx``); ``pipeline_extra``
    is TOML appended to the pipeline (tables such as ``[pipelines.locks]``)."""
    folder.mkdir(parents=True, exist_ok=True)
    zone = f'timezone = "{timezone}"' if timezone else ""
    text = f"""\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:{port}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 1
timeout = 20
concurrency = {concurrency}

[connectors.books]
type = "spreadsheet"
path = "{path}"
{zone}
{books_extra}

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = ["customers", "invoices", "payments"]
batch_size = {batch_size}

[pipelines.conflicts]
default = ["hcp"]

{pipeline_extra}
"""
    config = folder / name
    config.write_text(text, encoding="utf-8")
    return config


def cents(value: Any) -> int | None:
    """A sheet amount (``1545.00`` text, or a workbook number) as integer cents, exactly."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise AssertionError(f"a boolean where an amount should be: {value!r}")
    if isinstance(value, float):
        amount = Decimal(repr(value))
    elif isinstance(value, int | Decimal):
        amount = Decimal(value)
    else:
        amount = Decimal(str(value).replace(",", "").replace("$", "").strip())
    hundred = amount * 100
    assert hundred == hundred.to_integral_value(), f"{value!r} is not a whole number of cents"
    return int(hundred)


def currency(amount_cents: int) -> str:
    """How the dry run shows money: ``$1,234.50``."""
    sign = "-" if amount_cents < 0 else ""
    whole, part = divmod(abs(amount_cents), 100)
    return f"{sign}${whole:,}.{part:02d}"


def day_of(timestamp: str, timezone: str = "UTC") -> dt.date:
    """The local day of an HCP timestamp (``2025-01-11T04:20:57Z``) in ``timezone``."""
    moment = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return moment.astimezone(zoneinfo.ZoneInfo(timezone)).date()


def sheet_day(value: Any) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value).strip())


@dataclass
class BookRows:
    """One sheet of the books: its header and rows (cell values; text for CSV), each with
    where it is (CSV line or sheet row number)."""

    header: list[str]
    rows: list[dict[str, Any]]
    where: list[int] = field(default_factory=list)

    def filled(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if any(v not in (None, "") for v in r.values())]


def read_csv_rows(path: Path) -> BookRows:
    if not path.exists():
        return BookRows([], [])
    table = read_csv_table(path)
    return BookRows(table.header, table.rows, list(range(2, len(table.rows) + 2)))


def write_csv_rows(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    """As a person saving from a spreadsheet program would: the whole file, replaced."""
    write_csv(path, rows, header, newline="\r\n", replace=True)


def read_xlsx_rows(path: Path, sheet: str) -> BookRows:
    wb = openpyxl.load_workbook(path, data_only=True)
    try:
        if sheet not in wb.sheetnames:
            return BookRows([], [])
        ws = wb[sheet]
        values = list(ws.iter_rows(values_only=True))
        if not values:
            return BookRows([], [])
        header = [str(v) if v is not None else "" for v in values[0]]
        rows, where = [], []
        for n, row in enumerate(values[1:], start=2):
            rows.append({h: row[i] if i < len(row) else None for i, h in enumerate(header) if h})
            where.append(n)
        return BookRows(header, rows, where)
    finally:
        wb.close()


def read_books(path: Path, entity: str) -> BookRows:
    """The entity's sheet of the books at ``path`` (a folder or a workbook)."""
    if path.suffix == ".xlsx":
        return read_xlsx_rows(path, SHEETS[entity]) if path.exists() else BookRows([], [])
    return read_csv_rows(path / f"{entity}.csv")


def contact_key(value: Any) -> str:
    """An email (lower case) or the last ten digits of a phone number."""
    text = "" if value is None else str(value).strip()
    if "@" in text:
        return text.lower()
    return re.sub(r"\D", "", text)[-10:]


def customer_contact(customer: dict[str, Any]) -> str:
    """What the books show as an invoice's customer: the email, else the mobile number."""
    if customer.get("email"):
        return contact_key(customer["email"])
    return contact_key(customer.get("mobile_number"))


# -------------------------------------------------------------------- comparing both sides


def payment_signature(
    invoice_number: str, amount: int, day: dt.date | None, method: str, status: str
) -> tuple[str, int, str, str, str]:
    return (invoice_number, amount, day.isoformat() if day else "", method, status)


def hcp_payment_signatures(
    hcp: HcpBooks, timezone: str = "UTC"
) -> Counter[tuple[str, int, str, str, str]]:
    return Counter(
        payment_signature(
            p["invoice_number"],
            int(p["amount"]),
            day_of(p["processed_at"], timezone),
            p["payment_method"],
            p["status"],
        )
        for p in hcp.all_payments()
    )


def sheet_payment_signatures(rows: list[dict[str, Any]]) -> Counter[tuple[str, int, str, str, str]]:
    out: Counter[tuple[str, int, str, str, str]] = Counter()
    for r in rows:
        amount = cents(r["Amount"])
        assert amount is not None, f"a payment row without an amount: {r}"
        out[
            payment_signature(
                str(r["Invoice #"]),
                amount,
                sheet_day(r["Date"]),
                str(r["Method"]),
                str(r["Status"]),
            )
        ] += 1
    return out


def assert_books_match_hcp(hcp: HcpBooks, books: Path, timezone: str = "UTC") -> None:
    """Every HCP invoice and payment is in the books exactly once, with the same amounts,
    balances, statuses, customers and local dates, and the totals agree."""
    invoices = read_books(books, "invoices").filled()
    payments = read_books(books, "payments").filled()
    customers = {c["id"]: c for c in hcp.customers}

    numbers = Counter(str(r["Invoice #"]) for r in invoices)
    twice = {n: k for n, k in numbers.items() if k > 1}
    assert not twice, f"invoice numbers on several rows of the books: {twice}"
    assert set(numbers) == set(hcp.by_number), (
        f"invoices only in HCP: {sorted(set(hcp.by_number) - set(numbers))}; only in the "
        f"books: {sorted(set(numbers) - set(hcp.by_number))}"
    )
    wrong = []
    for row in invoices:
        inv = hcp.by_number[str(row["Invoice #"])]
        want = {
            "Amount": inv["amount"],
            "Balance": inv["outstanding_balance"],
            "Status": inv["status"],
            "Due Date": day_of(inv["due_at"], timezone) if inv.get("due_at") else None,
            "Created": day_of(inv["created_at"], timezone),
            "Customer Email": customer_contact(customers[inv["customer_id"]]),
        }
        got = {
            "Amount": cents(row["Amount"]),
            "Balance": cents(row["Balance"]),
            "Status": row["Status"],
            "Due Date": sheet_day(row["Due Date"]),
            "Created": sheet_day(row["Created"]),
            "Customer Email": contact_key(row["Customer Email"]),
        }
        for column, native in (("Subtotal", "subtotal"), ("Tax", "tax_amount")):
            if column in row:  # a sheet from before the column existed may lack it
                want[column], got[column] = inv.get(native), cents(row[column])
        diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
        if diff:
            wrong.append((inv["invoice_number"], diff))
    assert not wrong, f"invoices that differ (hcp, books): {wrong[:10]}"
    assert_refunds_match_hcp(hcp, payments)

    ids = Counter(str(r["Sync ID"] or "").strip() for r in payments)
    assert "" not in ids, f"{ids['']} payment rows have no Sync ID"
    twice = {i: k for i, k in ids.items() if k > 1}
    assert not twice, f"Sync IDs on several payment rows: {twice}"
    want_pay, got_pay = hcp_payment_signatures(hcp, timezone), sheet_payment_signatures(payments)
    assert want_pay == got_pay, (
        f"payments differ: missing from the books {dict(want_pay - got_pay)}; in the books "
        f"but not in HCP (or too often) {dict(got_pay - want_pay)}"
    )

    total = sum(cents(r["Amount"]) or 0 for r in invoices)
    paid = sum(cents(r["Amount"]) or 0 for r in payments if r["Status"] == "succeeded")
    assert (total, paid) == (hcp.total_amount(), hcp.total_paid()), (
        f"totals (amount, succeeded payments): books {(total, paid)}, "
        f"hcp {(hcp.total_amount(), hcp.total_paid())}"
    )
    by_invoice: Counter[str] = Counter()
    for r in payments:
        if r["Status"] == "succeeded":  # what it still holds: less its refunds
            refunded = (cents(r["Refunded"]) or 0) if "Refunded" in r else 0
            by_invoice[str(r["Invoice #"])] += (cents(r["Amount"]) or 0) - refunded
    off = {
        str(r["Invoice #"]): (
            cents(r["Amount"]),
            by_invoice[str(r["Invoice #"])],
            cents(r["Balance"]),
        )
        for r in invoices
        if (cents(r["Amount"]) or 0) - by_invoice[str(r["Invoice #"])] != cents(r["Balance"])
    }
    assert not off, f"in the books, balance != amount - payments (amount, paid, balance): {off}"


def assert_refunds_match_hcp(hcp: HcpBooks, payments: list[dict[str, Any]]) -> None:
    """Where the books have a Refunded column, they hold HCP's payments with HCP's refunds:
    the same (invoice, amount, refunded) triples, as often (0 where nothing was refunded)."""
    if not payments or "Refunded" not in payments[0]:
        return
    want: Counter[tuple[str, int, int]] = Counter(
        (p["invoice_number"], int(p["amount"]), int(p.get("refunded_amount") or 0))
        for p in hcp.all_payments()
    )
    got: Counter[tuple[str, int, int]] = Counter(
        (str(r["Invoice #"]), cents(r["Amount"]) or 0, cents(r["Refunded"]) or 0) for r in payments
    )
    assert want == got, (
        f"refunds differ: (invoice, amount, refunded) missing from the books "
        f"{dict(want - got)}; in the books only {dict(got - want)}"
    )


def planned_writes(result: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    """(entity, member, op) -> count of the writes a ``sync --json`` result planned/did."""
    out = {}
    for entity, counts in result["entities"].items():
        for member in ("hcp", "books"):
            for op in ("create", "update", "delete"):
                if counts[member][op]:
                    out[(entity, member, op)] = counts[member][op]
    return out


def assert_nothing_planned(result: dict[str, Any]) -> None:
    writes = planned_writes(result)
    assert not writes, f"a sync with nothing to do plans writes: {writes}"
    problems = {
        e: (c["errors"], c["failed"], c["skipped"], c["conflicts"])
        for e, c in result["entities"].items()
        if c["errors"] or c["failed"] or c["skipped"] or c["conflicts"]
    }
    assert not problems, f"(errors, failed, skipped, conflicts) with nothing to do: {problems}"
    assert result["exit_code"] == 0 and result["open_conflicts"] == 0, result


def dry_run_blocks(output: str) -> dict[str, list[str]]:
    """The per-record blocks of a dry run's text: header line -> its indented lines."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith((" ", "\t")):
            if current is not None:
                current.append(line.strip())
        elif " · " in line:
            current = blocks.setdefault(line.strip(), [])
        else:
            current = None
    return blocks


# ------------------------------------------------------------------ syncs that get killed


@dataclass
class Run:
    index: int
    trigger: str
    killed: bool = False
    returncode: int | None = None
    seconds: float = 0.0
    pending_after: int = 0
    first_request: float | None = None
    """Seconds from the start to its first API request (when watched)."""
    stdout: str = ""
    stderr: str = ""
    note: str = ""

    def row(self) -> str:
        what = "KILLED" if self.killed else f"exit {self.returncode}"
        return (
            f"#{self.index:02d} {self.trigger:<38} {what:<8} {self.seconds:6.2f}s "
            f"pending-after={self.pending_after:<3} {self.note}"
        )


class Syncer:
    """Runs ``syncengine sync --json`` in ``folder`` as a subprocess, optionally SIGKILLing
    that process (its pid only) when a condition becomes true; keeps a table of the runs.
    (The crash tests kill at deterministic crash points instead: ``tests/crashpoints.py``.)"""

    def __init__(self, folder: Path, config: Path, hcp: Hcp, books: Path) -> None:
        self.folder, self.config, self.hcp, self.books = folder, config, hcp, books
        self.db = folder / "state.db"
        self.env = cli_env()
        self.runs: list[Run] = []

    def run(
        self,
        trigger: str = "to completion",
        make_stop: Callable[[float], Callable[[], bool]] | None = None,
        note: str = "",
        *,
        watch: bool = False,
    ) -> Run:
        """One sync; ``watch``: note when its first API request reaches the sandbox."""
        run = Run(len(self.runs), trigger, note=note)
        baseline = len(self.hcp.requests()) if watch else 0
        out = self.folder / f"sync-{run.index:02d}.out"
        err = self.folder / f"sync-{run.index:02d}.err"
        started = time.monotonic()
        stop = make_stop(started) if make_stop else None
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                [str(SYNCENGINE), "sync", "--config", str(self.config), "--json"],
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                env=self.env,
                cwd=self.folder,
            )
        while proc.poll() is None:
            if watch and run.first_request is None and len(self.hcp.requests()) > baseline:
                run.first_request = time.monotonic() - started
            if stop is not None and stop():
                os.kill(proc.pid, signal.SIGKILL)
                run.killed = True
                break
            if time.monotonic() - started > CLI_TIMEOUT:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"sync #{run.index} did not finish in {CLI_TIMEOUT}s")
            time.sleep(0.002)
        run.returncode = proc.wait(timeout=60)
        run.killed = run.killed and run.returncode == -signal.SIGKILL
        run.seconds = time.monotonic() - started
        run.stdout = out.read_text(encoding="utf-8", errors="replace")
        run.stderr = err.read_text(encoding="utf-8", errors="replace")
        run.pending_after = journal_counts(self.db)["pending"]
        self.runs.append(run)
        return run

    def sync(self, note: str = "", *, watch: bool = False) -> tuple[Run, dict[str, Any]]:
        run = self.run(note=note, watch=watch)
        try:
            result: dict[str, Any] = json.loads(run.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"sync #{run.index} exited {run.returncode} without its JSON "
                f"result\n{self.report()}"
            ) from None
        return run, result

    def report(self) -> str:
        parts = ["runs:", *(r.row() for r in self.runs)]
        if self.runs:
            last = self.runs[-1]
            parts += [
                f"--- last sync (#{last.index}) stdout ---",
                last.stdout[-3000:],
                f"--- last sync (#{last.index}) stderr ---",
                last.stderr[-3000:],
            ]
        odd = [r for r in self.runs if not r.killed and r.returncode not in (0, 1)]
        for r in odd[-2:]:
            parts += [f"--- sync #{r.index} exited {r.returncode}; stderr ---", r.stderr[-3000:]]
        parts += [
            "--- sandbox request log ---",
            self.hcp.log_tail(),
            f"--- journal: {dict(journal_counts(self.db))}",
        ]
        return "\n".join(parts)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Any assertion failing inside gets the run table, request log and sync output."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n\n{self.report()}") from None
