"""Human-readable output: the per-record, per-field plan of a dry run, and run summaries."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from syncengine import model
from syncengine.display import format_cents
from syncengine.engine import SyncResult
from syncengine.plan import Create, Delete, EntityPlan, Update
from syncengine.report import Report

MAX_SHOWN = 200
"""A dry run lists at most this many records per entity in detail; the totals count all."""


def show_value(value: Any, entity: str = "", name: str = "") -> str:
    """A value for people: money as currency, references by the record's name."""
    if value is None:
        return "(empty)"
    spec = model.ENTITIES[entity].field_spec(name) if entity in model.ENTITIES else None
    if spec is not None and spec.type == "cents" and isinstance(value, int):
        return format_cents(value)
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def render_entity_plan(console: Console, ep: EntityPlan, *, verbose: bool) -> None:
    shown = 0
    refs = model.ENTITIES[ep.entity].refs if ep.entity in model.ENTITIES else {}
    for kp in ep.keys:
        if not (kp.actions or kp.conflicts or kp.skips):
            continue
        shown += 1
        if shown > MAX_SHOWN and not verbose:
            continue
        console.print(f"[bold]{ep.entity}[/] · {escape(kp.label)}")
        for action in kp.actions:
            if isinstance(action, Create):
                console.print(f"  [green]+ {action.describe()}[/]")
                for name, value in sorted(action.values.items()):
                    display = ep.ref_labels.get(value, value) if name in refs else value
                    console.print(f"      {name}: {escape(show_value(display, ep.entity, name))}")
            elif isinstance(action, Update):
                console.print(f"  [yellow]~ {action.describe()}[/]")
                for name, (old, new) in sorted(action.changes.items()):
                    if name in refs:
                        old, new = ep.ref_labels.get(old, old), ep.ref_labels.get(new, new)
                    console.print(
                        f"      {name}: {escape(show_value(old, ep.entity, name))} → "
                        f"{escape(show_value(new, ep.entity, name))}"
                    )
            elif isinstance(action, Delete):
                console.print(f"  [red]- {action.describe()}[/]")
        for c in kp.conflicts:
            values = ", ".join(
                f"{m}={show_value(v, ep.entity, c.field)}" for m, v in c.values.items()
            )
            if c.winner:
                console.print(
                    f"  [magenta]! conflict on {c.field}: {escape(values)} → "
                    f"{c.winner} wins (rule: {c.rule})[/]"
                )
            else:
                console.print(
                    f"  [bold magenta]! conflict on {c.field}: {escape(values)} → "
                    "parked for a person (syncengine conflicts list)[/]"
                )
        for s in kp.skips:
            console.print(f"  [dim]· skipped on {s.member}: {escape(s.reason)}[/]")
    if shown > MAX_SHOWN and not verbose:
        console.print(f"  … and {shown - MAX_SHOWN} more records (use --verbose to list all)")
    for issue in ep.issues:
        console.print(f"[red]error[/] {escape(issue.describe())}")


def render_result(console: Console, result: SyncResult, *, verbose: bool = False) -> None:
    title = "Dry run" if result.dry_run else "Sync"
    console.print(f"[bold]{title} of pipeline {result.pipeline}[/]")
    if result.pending_recovery:
        verb = "will be settled first" if result.dry_run else "were settled first"
        console.print(f"{result.pending_recovery} interrupted writes from an earlier run {verb}")
    for outcome in result.outcomes:
        ep = outcome.plan
        if result.dry_run or verbose:
            render_entity_plan(console, ep, verbose=verbose)
        else:
            for issue in ep.issues:
                console.print(f"[red]error[/] {escape(issue.describe())}")
        for failure in outcome.failures:
            console.print(f"[red]failed[/] {escape(failure.describe())}")
        if ep.guard:
            console.print(f"[bold red]stopped by a safety guard[/]: {escape(ep.guard)}")
    console.print(summary_table(result))
    if not result.plan.actions and not result.guard:
        console.print("Nothing to do: every member agrees.")
    if result.open_conflicts:
        console.print(
            f"{result.open_conflicts} conflict(s) wait for a person: syncengine conflicts list"
        )
    if result.dry_run:
        console.print("Dry run: nothing was written to any member or to the state store.")


def summary_table(result: SyncResult) -> Table:
    verb = "would" if result.dry_run else "did"
    table = Table(title=f"what {result.pipeline} {verb} do", show_lines=False)
    for column in ("entity", "member", "read", "create", "update", "delete"):
        table.add_column(column, justify="right" if column not in ("entity", "member") else "left")
    captions: list[str] = []
    for outcome in result.outcomes:
        counts = outcome.plan.counts()
        for member in outcome.plan.members:
            c = counts[member]
            table.add_row(
                outcome.plan.entity,
                member,
                str(counts["read"].get(member, 0)),
                str(c["create"]),
                str(c["update"]),
                str(c["delete"]),
            )
        extra = []
        for label, key in (
            ("conflicts parked", "conflicts"),
            ("conflicts settled by rule", "conflicts_settled"),
            ("errors", "errors"),
            ("skipped", "skipped"),
        ):
            if counts[key]:
                extra.append(f"{counts[key]} {label}")
        if outcome.failures:
            extra.append(f"{len(outcome.failures)} writes failed")
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
        if not (all_invoices or line.problems):
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
                        format_cents(line.paid.get(member, 0)),
                        _money(balance) if member in line.balance else "n/a",
                    )
                )
            )
        cells.append(escape("\n".join(p.message for p in line.problems)) or "ok")
        table.add_row(*cells)
    if listed:
        console.print(table)
    for problem in report.general:
        console.print(f"[red]{problem.kind}[/] {escape(problem.member)}: {escape(problem.message)}")
    totals = report.totals()
    for member, t in totals.items():
        console.print(
            f"{member}: {t['invoices']} invoices, amount {format_cents(t['amount'])}, "
            f"paid {format_cents(t['paid'])}, outstanding {format_cents(t['balance'])}"
        )
    bad = sum(1 for line in report.invoices if line.problems) + len(report.general)
    if bad:
        console.print(f"[bold red]{bad} disagreement(s)[/]: the books do not reconcile")
    else:
        console.print(
            f"[green]The books reconcile[/]: {len(report.invoices)} invoices agree on every member."
        )


def _money(value: Any) -> str:
    return format_cents(value) if isinstance(value, int) else "(none)"
