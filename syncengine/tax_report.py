"""The sales tax view of the books (``reconcile-report --tax``): per month and member, the
taxable sales, the non-taxable sales and the tax, and whether the members agree.

An invoice belongs to the month of its date, ``created_at``: the date the closed periods go
by (``syncengine.locks``), turned into a day in one time zone for every member
(``Config.day_zone``), so that one invoice falls in one month on all of them. Drafts, voided
and canceled invoices are not sales and are left out. On a member:

- **taxable** and **non-taxable** sales are the amounts of the invoice's lines whose
  ``taxable`` is yes, and of the others (a discount line lowers them: its amount is negative);
- **unitemized** sales are the subtotals of invoices the member holds no line of (HCP bills a
  job's lines on its first invoice: a second one has none; a member that keeps no lines at
  all has only these). Without a subtotal, the amount less the tax;
- **tax** is the invoices' ``tax_amount``.

Members agree on a month when they count the same invoices and the same tax, and, among the
members that keep lines (the pipeline syncs ``line_items`` and they hold some), the same
taxable, non-taxable and unitemized sales. It reads every member, as ``reconcile-report``
does, and writes nothing.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncengine.config import Config, Pipeline
from syncengine.display import format_cents
from syncengine.errors import UsageError
from syncengine.exit_codes import ExitCode
from syncengine.locks import Lock, record_day
from syncengine.report import Books, Disagreement, Report, read_books
from syncengine.state import StateStore

NOT_SALES = frozenset({"draft", "voided", "canceled"})
"""Invoice statuses that are not sales: left out of the tax view."""
COUNTED = ("invoices", "taxable", "non_taxable", "unitemized", "tax")
"""What the view gives per month and member."""
BY_LINES = frozenset({"taxable", "non_taxable", "unitemized"})
"""What only the members keeping lines are compared on."""
WORDS = {
    "invoices": "invoices",
    "taxable": "taxable sales",
    "non_taxable": "non-taxable sales",
    "unitemized": "unitemized sales",
    "tax": "tax",
}


@dataclass
class MonthSales:
    """One month: per member, what ``COUNTED`` names (None where the member keeps no lines),
    and how the members differ."""

    month: str
    members: dict[str, dict[str, int | None]] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    """The locked members whose period covers the whole month (``[pipelines.locks]``)."""
    after_close: list[str] = field(default_factory=list)
    """How the members differ on a closed month: what changed elsewhere after the close,
    which the sync keeps out of the closed books. Listed, and not a disagreement."""

    @property
    def agree(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "members": self.members,
            "agree": self.agree,
            "differences": self.differences,
            "closed_on": self.closed,
            "after_close": self.after_close,
        }


@dataclass
class TaxReport:
    pipeline: str
    members: tuple[str, ...]
    zone: str
    start: dt.date | None = None
    end: dt.date | None = None
    months: list[MonthSales] = field(default_factory=list)
    undated: dict[str, int] = field(default_factory=dict)
    """member -> sales invoices without a date (in no month)."""
    general: list[Disagreement] = field(default_factory=list)
    """Records that could not be read or are not synced yet: the sums leave them out."""

    @property
    def clean(self) -> bool:
        return not self.general and all(m.agree for m in self.months)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.clean else ExitCode.PROBLEMS

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "members": list(self.members),
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "timezone": self.zone,
            "agree": self.clean,
            "months": [m.to_json() for m in self.months],
            "undated": self.undated,
            "general": [d.to_json() for d in self.general],
        }


def parse_day(option: str, text: str | None) -> dt.date | None:
    """The day a ``--from`` / ``--to`` option names (``YYYY-MM-DD``); a ``UsageError`` that
    says how to write it otherwise."""
    if text is None or not text.strip():
        return None
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a date: write it as YYYY-MM-DD (for example 2026-10-01)"
        ) from None


def check_range(start: dt.date | None, end: dt.date | None) -> None:
    """A range whose end comes before its start is a usage error."""
    if start and end and end < start:
        raise UsageError(
            f"--to {end.isoformat()} is before --from {start.isoformat()}: nothing to report"
        )


def tax_report(
    config: Config,
    store: StateStore,
    pipeline: Pipeline,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> TaxReport:
    """The tax view of one pipeline between ``start`` and ``end`` (days, both included)."""
    if "invoices" not in pipeline.entities:
        raise UsageError(f"pipeline {pipeline.name} does not sync invoices: there is no tax")
    check_range(start, end)
    members = pipeline.members_of("invoices")
    sink = Report(pipeline.name, members, [])
    books = read_books(config, store, pipeline, ("invoices", "line_items"), sink)
    zone = config.day_zone(pipeline)
    report = TaxReport(pipeline.name, members, zone, start, end, general=sink.general)
    # a member whose invoices give no tax (a CRM's) is not compared on tax, nor on what the
    # tax is taken out of
    taxless = {
        m for m in members if "tax_amount" not in pipeline.mappings[(m, "invoices")].readable
    }
    report.months, report.undated = sales_by_month(books, members, zone, start, end, taxless)
    set_apart_closed(report.months, pipeline.locks)
    return report


def set_apart_closed(months: list[MonthSales], locks: Mapping[str, Lock]) -> None:
    """Mark each month a locked member's period covers whole (its last day is before the
    lock's first open day) and move what the members differ on there to ``after_close``:
    the sync keeps closed books as they were, so a change made elsewhere since is a
    difference after the close (as ``reconcile-report`` lists it), not a disagreement. A
    month the lock day falls inside is compared as any open month."""
    for entry in months:
        year, month = (int(part) for part in entry.month.split("-"))
        last = dt.date(year, month, calendar.monthrange(year, month)[1])
        entry.closed = sorted(m for m, lock in locks.items() if last < lock.opens)
        if entry.closed and entry.differences:
            when = ", ".join(
                f"{m} closed before {locks[m].opens.isoformat()}" for m in entry.closed
            )
            entry.after_close = [f"{d} (after the close: {when})" for d in entry.differences]
            entry.differences = []


def sales_by_month(
    books: Books,
    members: tuple[str, ...],
    zone: str = "UTC",
    start: dt.date | None = None,
    end: dt.date | None = None,
    taxless: Collection[str] = (),
) -> tuple[list[MonthSales], dict[str, int]]:
    """Decide each member's sales and tax per month (see the module docstring) and where
    the members differ: the months in order, and per member how many sales invoices have no
    date. ``taxless``: members whose invoices give no tax, compared on their count only."""
    invoices, items = books.get("invoices", {}), books.get("line_items", {})
    keeping = {m for m in members if items.get(m)}
    lines_of: dict[str, dict[str, list[dict[str, Any]]]] = {m: defaultdict(list) for m in members}
    for member, by_key in items.items():
        for seen in by_key.values():
            invoice = seen[0].record.get("invoice")
            if isinstance(invoice, str):
                lines_of[member][invoice].append(seen[0].record)
    sums: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    undated: dict[str, int] = {}
    for member in members:
        for key, seen in invoices.get(member, {}).items():
            record = seen[0].record
            if record.get("status") in NOT_SALES:
                continue
            day = record_day("invoices", record, zone)
            if day is None:
                undated[member] = undated.get(member, 0) + 1
                continue
            if (start and day < start) or (end and day > end):
                continue
            month = sums[day.strftime("%Y-%m")].setdefault(member, dict.fromkeys(COUNTED, 0))
            _add_invoice(month, record, lines_of[member].get(key, []))
    months = []
    for name in sorted(sums):
        entry = MonthSales(name)
        for member in members:
            counted: dict[str, int | None] = dict(sums[name].get(member, dict.fromkeys(COUNTED, 0)))
            if member not in keeping:
                counted["taxable"] = counted["non_taxable"] = None
            if member in taxless:  # shown as n/a, not as $0.00 of tax
                counted["taxable"] = counted["non_taxable"] = None
                counted["unitemized"] = counted["tax"] = None
            entry.members[member] = counted
        entry.differences = _differences(entry, members, keeping, taxless)
        months.append(entry)
    return months, undated


def _add_invoice(
    month: dict[str, int], record: dict[str, Any], lines: list[dict[str, Any]]
) -> None:
    """Add one sales invoice to a member's month: its lines by ``taxable``, or (without
    lines) its subtotal as unitemized, and its tax."""
    month["invoices"] += 1
    tax = record.get("tax_amount")
    month["tax"] += tax if isinstance(tax, int) else 0
    if lines:
        for line in lines:
            amount = line.get("amount")
            if isinstance(amount, int):
                month["taxable" if line.get("taxable") is True else "non_taxable"] += amount
        return
    subtotal, amount = record.get("subtotal"), record.get("amount")
    if isinstance(subtotal, int):
        month["unitemized"] += subtotal
    elif isinstance(amount, int):
        month["unitemized"] += amount - (tax if isinstance(tax, int) else 0)


def _differences(
    entry: MonthSales, members: tuple[str, ...], keeping: set[str], taxless: Collection[str] = ()
) -> list[str]:
    """What the members of one month do not agree on, one sentence per sum (``taxless``
    members on their count of invoices only)."""
    out = []
    for name in COUNTED:
        compared = [
            m
            for m in members
            if (name not in BY_LINES or m in keeping) and (name == "invoices" or m not in taxless)
        ]
        values = {m: entry.members[m][name] for m in compared}
        if len(set(values.values())) > 1:
            shown = ", ".join(
                f"{m} {v}" if name == "invoices" else f"{m} {format_cents(v or 0)}"
                for m, v in values.items()
            )
            out.append(f"{WORDS[name]} differ: {shown}")
    return out
