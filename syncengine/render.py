"""Human-readable output: the per-record, per-field plan of a dry run, and run summaries."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from syncengine import model
from syncengine.display import TALLIES, format_cents, member_changes, plural
from syncengine.engine import SyncResult
from syncengine.plan import AGREED, RETOLD, Create, Delete, EntityPlan, Update
from syncengine.report import Report
from syncengine.tax_report import TaxReport
from syncengine.unbilled import UnbilledReport

DETAILS_UP_TO = 50
"""Unless ``--details`` or ``--no-details`` says otherwise, a dry run lists its records one by
one when at most this many would change; above it, the summary and a hint."""


def show_value(value: Any, entity: str = "", name: str = "") -> str:
    """A value for people: money as currency, references by the record's name."""
    if value is None:
        return "(empty)"
    spec = model.ENTITIES[entity].field_spec(name) if entity in model.ENTITIES else None
    if spec is not None and spec.type == "cents" and isinstance(value, int):
        return format_cents(value)
    if spec is not None and spec.type == "decimal" and isinstance(value, str):
        return value  # a quantity: 1.5, not '1.5'
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def changed_records(result: SyncResult) -> int:
    """How many records the run plans something for: a write, a conflict or a skip."""
    return sum(outcome.plan.changed_records() for outcome in result.outcomes)


def agrees(result: SyncResult) -> bool:
    """Whether the run may say "Nothing to do": nothing planned, and nothing that says
    otherwise (a record error, a failed write, a guard, a run that stopped). Conflicts that
    wait for a person are named beside it."""
    return not (
        result.plan.actions
        or result.guard
        or result.error
        or result.failures
        or any(ep.issues for ep in result.plan.entities)
    )


def nothing_to_do(result: SyncResult) -> str:
    """The line of a run with nothing to write, saying what still differs: writes a member
    cannot take (skipped) and conflicts that wait for a person."""
    skipped = sum(ep.counts()["skipped"] for ep in result.plan.entities)
    held = sum(ep.counts().get("held_deletes", 0) for ep in result.plan.entities)
    # skipped writes on record that this run did not plan again (a payment row deleted in
    # the books, which HCP keeps): the members still differ there
    earlier = sum(
        len(ep.skipped_before - {kp.key for kp in ep.keys}) for ep in result.plan.entities
    )
    waits = plural(held, "delete") + (" waits" if held == 1 else " wait")
    but = [
        *([plural(skipped, "write") + " a member cannot take (skipped)"] if skipped else []),
        *(
            [f"{plural(earlier, 'record')} skipped before (`syncengine status` lists why)"]
            if earlier
            else []
        ),
        *(["the conflicts below"] if result.open_conflicts else []),
    ]
    if not but:
        if held:  # the deletes held for a person are not "agreed"
            return f"Nothing else to do: {waits} for approval (`syncengine deletes list`)."
        return "Nothing to do: every member agrees."
    start = "Nothing to write" if skipped else "Nothing to do"
    line = f"{start}: every member agrees but for {' and '.join(but)}."
    if held:
        line += f" {waits} for approval (`syncengine deletes list`)."
    return line


def render_entity_plan(console: Console, ep: EntityPlan) -> None:
    """Every record of one entity the plan does something for, field by field."""
    refs = model.ENTITIES[ep.entity].refs if ep.entity in model.ENTITIES else {}

    def shown(name: str, value: Any) -> str:
        if name in refs and isinstance(value, str):
            value = ep.ref_labels.get(value, value)
        return escape(show_value(value, ep.entity, name))

    def change(name: str, old: Any, new: Any) -> str:
        return f"{name}: {shown(name, old)} → {shown(name, new)}"

    for kp in ep.keys:
        if not (kp.actions or kp.conflicts or kp.reported_skips):
            continue
        console.print(f"[bold]{ep.entity}[/] · {escape(kp.label)}")
        for action in kp.actions:
            if isinstance(action, Create):
                console.print(f"  [green]+ {action.describe()}[/]")
                for name, value in sorted(action.values.items()):
                    console.print(f"      {name}: {shown(name, value)}")
            elif isinstance(action, Update) and action.link_only:
                console.print(f"  [cyan]= {action.describe()}[/]")
            elif isinstance(action, Update):
                also = " (and write Sync ID)" if action.assign_id else ""
                console.print(f"  [yellow]~ {action.describe()}{also}[/]")
                for name, (old, new) in sorted(action.changes.items()):
                    if name in refs and old == new:
                        # the same record, shown by what it holds now (a changed e-mail)
                        console.print(
                            f"      {name}: {shown(name, new)} (the same {refs[name][:-1]}, "
                            "written as it is shown now)"
                        )
                        continue
                    console.print(f"      {change(name, old, new)}")
            elif isinstance(action, Delete):
                console.print(f"  [red]- {action.describe()}[/]")
        for c in kp.conflicts:
            values = ", ".join(f"{m}={shown(c.field, v)}" for m, v in c.values.items())
            if c.rule == AGREED:
                console.print(f"  [magenta]! conflict on {c.field} closed: {values} agree now[/]")
            elif c.winner:
                console.print(
                    f"  [magenta]! conflict on {c.field}: {values} → "
                    f"{c.winner} wins (rule: {c.rule})[/]"
                )
            else:
                again = ", changed again while open" if c.rule == RETOLD else ""
                console.print(
                    f"  [bold magenta]! conflict on {c.field}: {values} → "
                    f"parked for a person{again} (syncengine conflicts list)[/]"
                )
        for s in kp.reported_skips:
            console.print(f"  [dim]· skipped on {s.member}: {escape(s.reason)}[/]")
            for name, (old, new) in sorted(s.changes.items()):  # what stays different there
                console.print(f"[dim]      {change(name, old, new)}[/]")
    if ep.compacted is not None and ep.compacted.dropped:
        listed = ep.compacted.changed - ep.compacted.dropped
        console.print(
            f"[dim]{ep.entity} · and {plural(ep.compacted.dropped, 'more record')}, counted "
            f"above but not listed (a run lists the first {listed:,})[/]"
        )


def render_result(
    console: Console, result: SyncResult, *, verbose: bool = False, details: bool | None = None
) -> None:
    """A run for people, summary first: the counts, what needs a person, then (``details``)
    every record field by field. ``details`` None decides by itself: a dry run lists its
    records when at most ``DETAILS_UP_TO`` would change, a real run only with ``verbose``."""
    title = "Dry run" if result.dry_run else "Sync"
    console.print(f"[bold]{title} of pipeline {result.pipeline}[/]")
    if result.pending_recovery:
        verb = "will be settled first" if result.dry_run else "were settled first"
        console.print(
            f"{plural(result.pending_recovery, 'interrupted write')} from an earlier run {verb}"
        )
    console.print(summary_table(result))
    for outcome in result.outcomes:
        ep = outcome.plan
        for note in ep.notes:
            console.print(f"[cyan]note[/] {ep.entity} · {escape(note)}")
        for issue in ep.issues:
            console.print(f"[red]error[/] {ep.entity} · {escape(issue.describe())}")
        for failure in outcome.failures:
            console.print(f"[red]failed[/] {ep.entity} · {escape(failure.describe())}")
        if ep.guard:
            console.print(f"[bold red]stopped by a safety guard[/]: {escape(ep.guard)}")
    if agrees(result):
        console.print(nothing_to_do(result))
    if result.open_conflicts:
        waits = "waits" if result.open_conflicts == 1 else "wait"
        console.print(
            f"{plural(result.open_conflicts, 'conflict')} {waits} for a person: "
            "syncengine conflicts list"
        )
    records = changed_records(result)
    if details is None:
        details = verbose or (result.dry_run and records <= DETAILS_UP_TO)
    if details and records:
        console.rule("every record, field by field", style="dim")
        for outcome in result.outcomes:
            render_entity_plan(console, outcome.plan)
    elif result.dry_run and records:
        console.print(f"{plural(records, 'record')} would change; --details to list every record")
    if result.dry_run:
        console.print("Dry run: nothing was written to any member or to the state store.")


def summary_table(result: SyncResult) -> Table:
    """Per entity and member: records read, and the writes planned (dry run) or made (only
    those that took effect; the failed ones are counted in the caption).
    ``link`` counts the writes that only give a new record its Sync ID."""
    verb = "would do" if result.dry_run else "did"
    table = Table(title=f"what {result.pipeline} {verb}", show_lines=False)
    for column in ("entity", "member", "read", "create", "update", "link", "delete"):
        table.add_column(column, justify="right" if column not in ("entity", "member") else "left")
    captions: list[str] = []
    for outcome in result.outcomes:
        counts = outcome.counts(dry_run=result.dry_run)
        for member in outcome.plan.members:
            shown = dict(member_changes(counts[member]))
            table.add_row(
                outcome.plan.entity,
                member,
                str(counts["read"].get(member, 0)),
                str(shown["created"]),
                str(shown["updated"]),
                str(shown["linked"]),
                str(shown["deleted"]),
            )
        extra = []
        for key, one, many in TALLIES:
            if counts[key]:
                extra.append(plural(counts[key], one, many))
        if extra:
            captions.append(f"{outcome.plan.entity}: " + "; ".join(extra))
    table.caption = "\n".join(captions) or None
    return table


def render_report(console: Console, report: Report, *, all_invoices: bool = False) -> None:
    console.print(f"[bold]Reconciliation of pipeline {report.pipeline}[/]")
    table = Table(show_lines=False)
    table.add_column("invoice")
    for member in report.members:
        table.add_column(f"{member}\namount / paid / balance", justify="right")
    table.add_column("disagreements")
    listed = 0
    for line in report.invoices:
        if not (all_invoices or line.problems or line.after_close):
            continue
        listed += 1
        cells = [escape(line.invoice_number or line.key)]
        for member in report.members:
            if member not in line.amount:
                cells.append("—")
                continue
            balance = line.balance.get(member)
            cells.append(
                " / ".join(
                    (
                        _money(line.amount.get(member)),
                        _paid(line.paid.get(member, 0), line.refunded.get(member, 0)),
                        _money(balance) if member in line.balance else "n/a",
                    )
                )
            )
        cells.append(escape("\n".join(p.message for p in line.problems + line.after_close)) or "ok")
        table.add_row(*cells)
    if listed:
        console.print(table)
    for problem in report.general:
        console.print(f"[red]{problem.kind}[/] {escape(problem.member)}: {escape(problem.message)}")
    totals = report.totals()
    for member, t in totals.items():
        refunded = f", refunded {format_cents(t['refunded'])}" if t.get("refunded") else ""
        console.print(
            f"{member}: {t['invoices']} invoices, amount {format_cents(t['amount'])}, "
            f"paid {format_cents(t['paid'])}{refunded}, outstanding {format_cents(t['balance'])}"
        )
    bad = sum(1 for line in report.invoices if line.problems) + len(report.general)
    closed = sum(len(line.after_close) for line in report.invoices)
    if closed:
        console.print(
            f"[yellow]{plural(closed, 'difference')} after the close[/]: a member's closed "
            "period keeps its records as they were (not disagreements; book them in an open "
            "period)"
        )
    if bad:
        console.print(f"[bold red]{plural(bad, 'disagreement')}[/]: the books do not reconcile")
    else:
        but = " but for the differences after the close" if closed else ""
        console.print(
            f"[green]The books reconcile[/]: {len(report.invoices)} invoices agree on every "
            f"member{but}."
        )


def render_tax(console: Console, report: TaxReport) -> None:
    """The tax view as a table: a row per month, a column per member (taxable sales,
    non-taxable sales, unitemized sales where any, tax), and whether they agree."""
    span = ""
    if report.start or report.end:
        span = f" from {report.start or 'the start'} to {report.end or 'now'}"
    console.print(
        f"[bold]Sales tax of pipeline {report.pipeline}[/]{span} (months in {report.zone})"
    )
    if report.months:
        table = Table(show_lines=False)
        table.add_column("month")
        for member in report.members:
            table.add_column(f"{member}\ntaxable / non-taxable / tax", justify="right")
        table.add_column("agree")
        for month in report.months:
            cells = [month.month]
            for member in report.members:
                counted = month.members[member]
                parts = [_sum(counted["taxable"]), _sum(counted["non_taxable"])]
                parts.append(_sum(counted["tax"]))
                cell = " / ".join(parts)
                if counted["unitemized"]:
                    cell += f"\n+ {_sum(counted['unitemized'])} unitemized"
                cells.append(cell)
            if month.after_close:
                agree = "after the close: " + "; ".join(month.after_close)
            elif month.closed:
                agree = f"yes (closed on {', '.join(month.closed)})"
            else:
                agree = "yes" if month.agree else "no: " + "; ".join(month.differences)
            cells.append(escape(agree))
            table.add_row(*cells)
        console.print(table)
    else:
        console.print("no sales invoices in that time")
    for member, count in report.undated.items():
        console.print(f"[yellow]{member}[/]: {plural(count, 'sales invoice')} without a date")
    for problem in report.general:
        console.print(f"[red]{problem.kind}[/] {escape(problem.member)}: {escape(problem.message)}")
    bad = sum(1 for m in report.months if not m.agree)
    if bad:
        console.print(f"[bold red]{plural(bad, 'month')} where the members disagree[/]")
    elif report.general:
        console.print("[bold red]records could not be read[/]: the sums leave them out")
    else:
        console.print("[green]The members agree[/] on every month's sales and tax.")


def render_unbilled(console: Console, report: UnbilledReport) -> None:
    """The complete jobs without an invoice, one line each, per member holding jobs."""
    console.print(f"[bold]Unbilled work of pipeline {report.pipeline}[/]")
    for job in report.jobs:
        record = job.record
        total = record.get("total_amount")
        shown = [
            escape(job.location if job.member in job.location else f"{job.member} {job.location}"),
            escape(str(record.get("description") or "(no description)")),
            escape(str(record.get("work_status"))),
        ]
        if record.get("scheduled_end"):
            shown.append(f"ended {escape(str(record['scheduled_end'])[:10])}")
        if isinstance(total, int):
            shown.append(format_cents(total))
        console.print("  " + " · ".join(shown))
    for problem in report.general:
        console.print(f"[red]{problem.kind}[/] {escape(problem.member)}: {escape(problem.message)}")
    for member in report.holders:
        unbilled = sum(1 for job in report.jobs if job.member == member)
        complete = report.complete.get(member, 0)
        console.print(
            f"{member}: {plural(unbilled, 'complete job')} without an invoice "
            f"(of {complete} complete)"
        )


def _sum(value: int | None) -> str:
    """A sum of the tax view; ``n/a`` for one a member cannot give (it keeps no lines)."""
    return format_cents(value) if isinstance(value, int) else "n/a"


def _paid(paid: int, refunded: int) -> str:
    """Succeeded payments, and what was refunded of them when anything was."""
    if not refunded:
        return format_cents(paid)
    return f"{format_cents(paid)} (−{format_cents(refunded)} refunded)"


def _money(value: Any) -> str:
    return format_cents(value) if isinstance(value, int) else "(none)"
