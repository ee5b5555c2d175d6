"""The reconciliation report: do the books agree, invoice by invoice, on every member?

``reconcile_report`` reads the invoices and payments of every member of a pipeline as they
are now (not as the state store last saw them), through the members' mappings, with
references resolved the way a sync resolves them. Per invoice it gives the amount, the sum of
succeeded payments (and their refunds) and the outstanding balance on each member, and every
disagreement:

- ``balance``: a member's balance is not its amount minus its succeeded payments (plus what
  was refunded of them: succeeded payments − refunds = amount − balance);
- ``totals``: a member's subtotal plus its tax is not its amount (where it gives both);
- ``amount``: members disagree on the amount (or on the succeeded payments' sum);
- ``refund``: members disagree on what was refunded (among those that give refunds);
- ``customer``: members disagree on whose invoice it is (a row retyped with another
  customer's e-mail, an invoice moved to another customer on one member only);
- ``lines``: a member's lines of the invoice do not add up to its subtotal (``_check_lines_sum``);
- ``line_amount``: a line's amount is not its quantity × unit price, rounded half to even
  (``_check_line_amounts``);
- ``line``: members disagree on a line, or one lacks a line the others hold
  (``_check_lines_agree``);
- ``missing``: a member lacks an invoice or a payment another member has;
- ``duplicate``: an invoice number names two invoices (on one member, or across members);
- ``unreadable`` / ``unlinked``: a record that could not be read, or is not synced yet.

A member whose period is closed (``[pipelines.locks]``, ``syncengine.locks``) keeps its
records dated before the lock as they were: what changed since on the other members is a
**difference after the close** (``after_close``), listed apart from the disagreements. It
does not make the report unclean (exit 0): the lock explains it, and the bookkeeper books it
as an adjustment in an open period. See ``_explain_closed`` for which differences those are.

It writes nothing anywhere. A clean report after a sync is the proof that the books agree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from syncengine.config import Config, Pipeline
from syncengine.display import format_cents, label_of
from syncengine.errors import RecordError, UsageError
from syncengine.exit_codes import ExitCode
from syncengine.locks import Lock
from syncengine.model import decimal_value, line_amount
from syncengine.refs import References
from syncengine.state import StateStore


@dataclass
class Disagreement:
    kind: str
    message: str
    member: str = ""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "member": self.member, "message": self.message}


@dataclass
class InvoiceLine:
    """One invoice as each member shows it."""

    key: str
    invoice_number: str | None
    amount: dict[str, int | None] = field(default_factory=dict)
    paid: dict[str, int] = field(default_factory=dict)
    """member -> sum of succeeded payments."""
    refunded: dict[str, int] = field(default_factory=dict)
    """member -> what was refunded of its succeeded payments (members that give refunds)."""
    subtotal: dict[str, int] = field(default_factory=dict)
    """member -> the subtotal (members that give it)."""
    tax: dict[str, int] = field(default_factory=dict)
    """member -> the tax (members that give it)."""
    balance: dict[str, int | None] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    """member -> the invoice's status (members that give it)."""
    customer: dict[str, str] = field(default_factory=dict)
    """member -> the hub key of the invoice's customer (members that give it)."""
    payments: dict[str, set[str]] = field(default_factory=dict)
    """member -> payment keys."""
    items: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """member -> line item key -> the line as the member holds it (members holding lines)."""
    problems: list[Disagreement] = field(default_factory=list)
    after_close: list[Disagreement] = field(default_factory=list)
    """Differences a member's closed period explains (not disagreements: ``_explain_closed``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "invoice_number": self.invoice_number,
            "members": {
                m: {
                    "amount": self.amount.get(m),
                    "paid": self.paid.get(m, 0),
                    "balance": self.balance.get(m),
                    "payments": len(self.payments.get(m, ())),
                    **self._details(m),
                }
                for m in self.amount
            },
            "disagreements": [p.to_json() for p in self.problems],
            "after_close": [p.to_json() for p in self.after_close],
        }

    def _details(self, member: str) -> dict[str, int]:
        """The money below the total a member gives (nothing for one that gives none)."""
        named = (("subtotal", self.subtotal), ("tax", self.tax), ("refunded", self.refunded))
        out = {name: values[member] for name, values in named if member in values}
        if self.items.get(member):
            out["lines"] = len(self.items[member])
        return out


@dataclass
class Report:
    pipeline: str
    members: tuple[str, ...]
    invoices: list[InvoiceLine]
    general: list[Disagreement] = field(default_factory=list)
    """Disagreements not tied to one invoice (unreadable rows, orphan payments)."""

    @property
    def clean(self) -> bool:
        return not self.general and not any(line.problems for line in self.invoices)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.clean else ExitCode.PROBLEMS

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for member in self.members:
            out[member] = {
                "invoices": sum(1 for x in self.invoices if member in x.amount),
                "amount": sum(x.amount.get(member) or 0 for x in self.invoices),
                "paid": sum(x.paid.get(member, 0) for x in self.invoices),
                "balance": sum(x.balance.get(member) or 0 for x in self.invoices),
            }
            if any(member in x.refunded for x in self.invoices):
                out[member]["refunded"] = sum(x.refunded.get(member, 0) for x in self.invoices)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "members": list(self.members),
            "clean": self.clean,
            "totals": self.totals(),
            "disagreements": sum(len(x.problems) for x in self.invoices) + len(self.general),
            "after_close": sum(len(x.after_close) for x in self.invoices),
            "general": [d.to_json() for d in self.general],
            "invoices": [x.to_json() for x in self.invoices],
        }


@dataclass
class _Seen:
    key: str | None
    record: dict[str, Any]
    location: str


def reconcile_report(config: Config, store: StateStore, pipeline: Pipeline) -> Report:
    if "invoices" not in pipeline.entities:
        raise UsageError(
            f"pipeline {pipeline.name} does not sync invoices: there are no books "
            'to reconcile (add "invoices" and "payments" to its entities)'
        )
    report = Report(pipeline.name, pipeline.members_of("invoices"), [])
    cache: dict[str, dict[str, str]] = {}
    read = read_books(config, store, pipeline, ("invoices", "payments", "line_items"), report)
    invoices, payments, items = read["invoices"], read["payments"], read["line_items"]

    lines: dict[str, InvoiceLine] = {}

    def line_for(key: str, number: str | None) -> InvoiceLine:
        line = lines.get(key)
        if line is None:
            line = lines[key] = InvoiceLine(key, number)
        elif line.invoice_number is None:
            line.invoice_number = number
        return line

    numbers: dict[str, set[str]] = defaultdict(set)
    for member, by_key in invoices.items():
        per_member_numbers: dict[str, list[str]] = defaultdict(list)
        for key, seen in by_key.items():
            record = seen[0].record
            number = record.get("invoice_number")
            line = line_for(key, number)
            line.amount[member] = record.get("amount")
            _note_totals(line, member, record)
            if "balance" in pipeline.mappings[(member, "invoices")].readable:
                line.balance[member] = record.get("balance")
            if isinstance(record.get("status"), str) and record["status"]:
                line.status[member] = record["status"]
            if isinstance(record.get("customer"), str) and record["customer"]:
                line.customer[member] = record["customer"]
            line.paid.setdefault(member, 0)
            line.payments.setdefault(member, set())
            if number:
                numbers[number].add(key)
                per_member_numbers[number].append(key)
            if len(seen) > 1:
                line.problems.append(
                    Disagreement(
                        "duplicate",
                        f"{member} holds this invoice {len(seen)} times "
                        f"({', '.join(s.location for s in seen)})",
                        member,
                    )
                )
        for number, keys in per_member_numbers.items():
            if len(keys) > 1:
                for key in keys:
                    lines[key].problems.append(
                        Disagreement(
                            "duplicate",
                            f"invoice number {number} names {len(keys)} invoices on {member}",
                            member,
                        )
                    )

    for member, by_key in payments.items():
        for pay_key, seen in by_key.items():
            record = seen[0].record
            invoice_key = record.get("invoice")
            owner = lines.get(invoice_key) if invoice_key else None
            if owner is None:
                report.general.append(
                    Disagreement(
                        "missing",
                        f"payment at {seen[0].location} refers to an invoice no member holds",
                        member,
                    )
                )
                continue
            owner.payments.setdefault(member, set()).add(pay_key)
            if len(seen) > 1:
                owner.problems.append(
                    Disagreement(
                        "duplicate",
                        f"{member} holds one payment {len(seen)} times "
                        f"({', '.join(s.location for s in seen)}): it would be counted twice",
                        member,
                    )
                )
            _count_payment(owner, member, record, len(seen))

    _attach_items(lines, items, report)

    for number, holders_of in numbers.items():
        if len(holders_of) > 1:
            for key in holders_of:
                lines[key].problems.append(
                    Disagreement(
                        "duplicate",
                        f"invoice number {number} maps to {len(holders_of)} different "
                        "records across members",
                    )
                )

    members = pipeline.members_of("invoices")
    # the members whose payments count: those that sync them ([pipelines.member_entities]
    # may leave a member with invoices but no payments: its paid sums are not known)
    payers = (
        set(pipeline.members_of("payments")) if "payments" in pipeline.entities else set(members)
    )
    for line in lines.values():
        holders = [m for m in members if m in line.amount]
        paying = [m for m in holders if m in payers]
        for member in members:
            if member not in line.amount:
                line.problems.append(
                    Disagreement(
                        "missing",
                        f"{member} does not hold this invoice (held by {', '.join(holders)})",
                        member,
                    )
                )
        for member in holders:
            amount, balance = line.amount[member], line.balance.get(member)
            if isinstance(amount, int) and isinstance(balance, int) and member in payers:
                refunded = line.refunded.get(member, 0)
                expected = amount - line.paid.get(member, 0) + refunded
                if balance != expected:
                    line.problems.append(
                        Disagreement(
                            "balance",
                            f"balance {format_cents(balance)} on {member} but amount "
                            f"{format_cents(amount)} − payments "
                            f"{format_cents(line.paid.get(member, 0))}"
                            + (f" + refunds {format_cents(refunded)}" if refunded else "")
                            + f" = {format_cents(expected)}",
                            member,
                        )
                    )
            _check_totals(line, member)
            _check_lines_sum(line, member)
            _check_line_amounts(line, member)
        _check_lines_agree(line, holders, _line_fields(pipeline))
        if len(set(line.customer.values())) > 1:
            named = _customer_labels(store, pipeline.name, set(line.customer.values()), cache)
            shown = ", ".join(
                f"{m} {named.get(line.customer[m], line.customer[m])}"
                for m in holders
                if m in line.customer
            )
            line.problems.append(Disagreement("customer", f"customers differ: {shown}"))
        if len(set(line.status.values())) > 1:  # a voided invoice is not voided everywhere
            shown = ", ".join(f"{m} {line.status[m]}" for m in holders if m in line.status)
            line.problems.append(Disagreement("status", f"statuses differ: {shown}"))
        amounts = {line.amount[m] for m in holders}
        if len(amounts) > 1:
            shown = ", ".join(f"{m} {_money(line.amount[m])}" for m in holders)
            line.problems.append(Disagreement("amount", f"amounts differ: {shown}"))
        paid = {line.paid.get(m, 0) for m in paying}
        if len(paid) > 1:
            shown = ", ".join(f"{m} {format_cents(line.paid.get(m, 0))}" for m in paying)
            line.problems.append(Disagreement("amount", f"succeeded payments differ: {shown}"))
        _check_refunds_agree(line, paying)
        every = set().union(*(line.payments.get(m, set()) for m in paying)) if paying else set()
        for member in paying:
            if "payments" not in pipeline.entities:
                break
            lacking = every - line.payments.get(member, set())
            if lacking:
                line.problems.append(
                    Disagreement(
                        "missing",
                        f"{len(lacking)} payment(s) held elsewhere are not on {member}",
                        member,
                    )
                )
    report.invoices = sorted(lines.values(), key=lambda x: (x.invoice_number or "", x.key))
    if pipeline.locks:
        for line in report.invoices:
            _explain_closed(line, pipeline.locks, invoices, payments, _line_fields(pipeline))
    return report


Books = dict[str, dict[str, dict[str, list["_Seen"]]]]
"""entity -> member -> hub key -> the member's records of it (more than one: a duplicate)."""


def read_books(
    config: Config, store: StateStore, pipeline: Pipeline, entities: tuple[str, ...], report: Report
) -> Books:
    """Read ``entities`` (those of them the pipeline syncs) on every member as they are now,
    through the members' mappings, references resolved, each record under its hub key; what
    cannot be read, or is not synced yet, goes to ``report.general``. An entity the pipeline
    does not sync is read as empty."""
    refs = References(store, pipeline.name)
    cache: dict[str, dict[str, str]] = {}
    out: Books = {entity: {} for entity in entities}
    for member in pipeline.members:
        if not any(pipeline.syncs(member, entity) for entity in entities):
            continue  # a CRM of customers: none of these books are its
        connector = config.make_connector(member)
        try:
            for entity in entities:
                if entity in pipeline.entities and pipeline.syncs(member, entity):
                    out[entity][member] = _read(
                        store, pipeline, refs, connector, member, entity, report, cache
                    )
        finally:
            connector.close()
    return out


def _note_totals(line: InvoiceLine, member: str, record: dict[str, Any]) -> None:
    """Keep the subtotal and tax a member's invoice gives (a member that gives none of them
    keeps the report it had before they existed)."""
    for values, name in ((line.subtotal, "subtotal"), (line.tax, "tax_amount")):
        value = record.get(name)
        if isinstance(value, int):
            values[member] = value


def _count_payment(line: InvoiceLine, member: str, record: dict[str, Any], times: int) -> None:
    """Add a payment to its invoice's sums on a member (``times``: how often the member holds
    it). A succeeded payment counts its amount as paid and what was given back of it as
    refunded; any other (pending, failed, or ``refunded`` in full) counts for nothing."""
    amount = record.get("amount")
    if record.get("status") != "succeeded" or not isinstance(amount, int):
        return
    line.paid[member] = line.paid.get(member, 0) + amount * times
    refunded = record.get("refunded_amount")
    if isinstance(refunded, int):
        line.refunded[member] = line.refunded.get(member, 0) + refunded * times


def _check_totals(line: InvoiceLine, member: str) -> None:
    """subtotal + tax = amount on one member, where it gives all three."""
    amount, subtotal, tax = line.amount.get(member), line.subtotal.get(member), line.tax.get(member)
    if not isinstance(amount, int) or subtotal is None or tax is None:
        return
    if subtotal + tax != amount:
        line.problems.append(
            Disagreement(
                "totals",
                f"subtotal {format_cents(subtotal)} + tax {format_cents(tax)} = "
                f"{format_cents(subtotal + tax)} on {member}, but the amount is "
                f"{format_cents(amount)}",
                member,
            )
        )


def _check_refunds_agree(line: InvoiceLine, holders: list[str]) -> None:
    """Members that give refunds agree on what was refunded of the invoice's payments."""
    giving = [m for m in holders if m in line.refunded]
    if len({line.refunded[m] for m in giving}) > 1:
        shown = ", ".join(f"{m} {format_cents(line.refunded[m])}" for m in giving)
        line.problems.append(Disagreement("refund", f"refunds differ: {shown}"))


def _money(value: int | None) -> str:
    return format_cents(value) if isinstance(value, int) else "(none)"


# ------------------------------------------------------------------------------ line items

COMPARED_LINE_FIELDS = ("quantity", "unit_price", "amount", "taxable")
"""What members must agree on, line by line (where their mappings read it)."""


def _line_fields(pipeline: Pipeline) -> dict[str, frozenset[str]]:
    """member -> the compared line fields its line mapping reads (none without line items)."""
    out: dict[str, frozenset[str]] = {}
    for member in pipeline.members_of("invoices"):
        mapping = pipeline.mappings.get((member, "line_items"))
        out[member] = frozenset(COMPARED_LINE_FIELDS) & mapping.readable if mapping else frozenset()
    return out


def _attach_items(
    lines: dict[str, InvoiceLine], items: dict[str, dict[str, list[_Seen]]], report: Report
) -> None:
    """Put each member's lines under their invoice (``InvoiceLine.items``); a line on an
    invoice no member holds is ``missing``, one a member holds twice a ``duplicate``. A member
    that holds lines gets an empty entry on each of its invoices without any: it keeps lines,
    so a line held elsewhere is missing there (``_check_lines_agree``)."""
    for member, by_key in items.items():
        for key, seen in by_key.items():
            record = seen[0].record
            invoice_key = record.get("invoice")
            owner = lines.get(invoice_key) if isinstance(invoice_key, str) else None
            if owner is None:
                report.general.append(
                    Disagreement(
                        "missing",
                        f"line item at {seen[0].location} refers to an invoice no member holds",
                        member,
                    )
                )
                continue
            owner.items.setdefault(member, {})[key] = record
            if len(seen) > 1:
                owner.problems.append(
                    Disagreement(
                        "duplicate",
                        f"{member} holds one line {len(seen)} times "
                        f"({', '.join(s.location for s in seen)})",
                        member,
                    )
                )
    keeping = {m for m, by_key in items.items() if by_key}
    for owner in lines.values():
        for member in keeping & set(owner.amount):
            owner.items.setdefault(member, {})


def _label(record: dict[str, Any]) -> str:
    """How a message names a line: its place and name (``line 2 "Labor"``)."""
    place = record.get("position")
    name = record.get("name")
    shown = f"line {place}" if isinstance(place, int) else "line"
    return f'{shown} "{name}"' if name else shown


def _check_lines_sum(line: InvoiceLine, member: str) -> None:
    """The amounts of a member's lines of the invoice add up to its subtotal. Decided only
    where the member gives both: a member without lines for the invoice (HCP bills a job's
    lines on its first invoice; a second invoice has none) or without a subtotal is not
    checked, nor is one with a line that has no amount (``_check_line_amounts`` names what it
    can)."""
    held = line.items.get(member)
    subtotal = line.subtotal.get(member)
    if not held or subtotal is None:
        return
    amounts = [r.get("amount") for r in held.values()]
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in amounts):
        return
    total = sum(a for a in amounts if isinstance(a, int))
    if total != subtotal:
        line.problems.append(
            Disagreement(
                "lines",
                f"the {len(amounts)} line(s) on {member} add up to {format_cents(total)}, but "
                f"the subtotal is {format_cents(subtotal)}",
                member,
            )
        )


def _check_line_amounts(line: InvoiceLine, member: str) -> None:
    """Each of a member's lines has amount = quantity × unit price rounded half to even
    (``model.line_amount``), where the line gives all three; one entry per line that does
    not."""
    for record in _in_order(line.items.get(member, {})):
        quantity, price, amount = (record.get(n) for n in ("quantity", "unit_price", "amount"))
        if quantity is None or not isinstance(price, int) or not isinstance(amount, int):
            continue
        expected = line_amount(quantity, price)
        if amount != expected:
            line.problems.append(
                Disagreement(
                    "line_amount",
                    f"{_label(record)}: amount {format_cents(amount)} on {member}, but "
                    f"quantity {quantity} × unit price {format_cents(price)} = "
                    f"{format_cents(expected)} (rounded half to even)",
                    member,
                )
            )


def _in_order(held: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A member's lines of one invoice in their order on it (by position, then as read)."""
    return sorted(
        held.values(), key=lambda r: r["position"] if isinstance(r.get("position"), int) else 0
    )


def _check_lines_agree(
    line: InvoiceLine, holders: list[str], fields: dict[str, frozenset[str]]
) -> None:
    """Members agree on the invoice line by line: the same lines (matched by hub key, as
    invoices and payments are) with the same quantity, unit price, amount and taxable, each
    compared among the members whose mapping reads it. A member that holds no line of this
    invoice is left out (it may keep no lines at all, and a job's second invoice has none
    anywhere) unless it holds lines of other invoices: then a line held elsewhere and not on
    it is ``missing`` there, named per member."""
    with_lines = [m for m in holders if line.items.get(m)]
    if not with_lines:
        return
    compared = [m for m in holders if m in line.items]
    every: dict[str, dict[str, Any]] = {}
    for member in with_lines:
        for key, record in line.items[member].items():
            every.setdefault(key, record)
    for key, first in sorted(every.items(), key=lambda kv: _position(kv[1])):
        on = [m for m in compared if key in line.items.get(m, {})]
        for member in compared:
            if member not in on:
                line.problems.append(
                    Disagreement(
                        "line",
                        f"{_label(first)} held by {', '.join(on)} is not on {member}",
                        member,
                    )
                )
        for name in COMPARED_LINE_FIELDS:
            giving = [m for m in on if name in fields.get(m, frozenset())]
            values = {m: line.items[m][key].get(name) for m in giving}
            if len({_comparable(v) for v in values.values()}) > 1:
                shown = ", ".join(f"{m} {_shown(name, v)}" for m, v in values.items())
                line.problems.append(
                    Disagreement("line", f"{_label(first)}: {_LINE_WORDS[name]} differs: {shown}")
                )


_LINE_WORDS = {
    "quantity": "quantity",
    "unit_price": "unit price",
    "amount": "amount",
    "taxable": "taxable",
}


def _position(record: dict[str, Any]) -> int:
    place = record.get("position")
    return place if isinstance(place, int) else 0


def _comparable(value: Any) -> Any:
    """A value as members are compared on it: quantities as exact numbers (1.50 = 1.5)."""
    if isinstance(value, str):
        try:
            return decimal_value(value)
        except ArithmeticError:
            return value
    return value


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "(none)"
    if name in ("unit_price", "amount") and isinstance(value, int):
        return format_cents(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _read(
    store: StateStore,
    pipeline: Pipeline,
    refs: References,
    connector: Any,
    member: str,
    entity: str,
    report: Report,
    cache: dict[str, dict[str, str]],
) -> dict[str, list[_Seen]]:
    """Every record of the entity on the member, by hub key (unlinked ones by a stand-in)."""
    mapping = pipeline.mappings[(member, entity)]
    connector.prepare(entity, mapping)
    member_refs = refs.for_member(member, mapping)
    links = store.link_index(pipeline.name, entity, member)
    out: dict[str, list[_Seen]] = defaultdict(list)
    for rec in connector.read(entity):
        if rec.error:
            report.general.append(
                Disagreement("unreadable", f"{rec.location}: {rec.error}", member)
            )
            continue
        try:
            record = mapping.to_canonical(rec.data, location=rec.location)
        except RecordError as exc:
            report.general.append(Disagreement("unreadable", f"{rec.location}: {exc}", member))
            continue
        if member_refs is not None:
            problems = member_refs.resolve(record)
            if problems:
                report.general.append(
                    Disagreement("unreadable", f"{rec.location}: {'; '.join(problems)}", member)
                )
                continue
        linked = None if rec.provisional else links.get(rec.id)
        key: str | None = linked[0] if linked is not None else None
        if key is None:
            # not synced yet: an invoice is matched by its number, a payment stands alone
            number = record.get("invoice_number")
            key = _numbers(store, pipeline.name, cache).get(number) if number else None
            if key is None:
                key = f"unlinked:{member}:{rec.id}"
                report.general.append(
                    Disagreement(
                        "unlinked",
                        f"{rec.location}: not synced (run syncengine sync; if it stays so, "
                        "the sync's output says why: an error in it, or a possible duplicate "
                        "waiting in `syncengine review list`)",
                        member,
                    )
                )
        out[key].append(_Seen(key, record, rec.location or f"{member} {rec.id}"))
    return out


def _customer_labels(
    store: StateStore, pipeline: str, keys: set[str], cache: dict[str, dict[str, str]]
) -> dict[str, str]:
    """hub key -> how a person calls the customer (name and e-mail, as last agreed)."""
    known = cache.setdefault("customers", {})
    wanted = keys - set(known)
    if wanted:
        for key, state in store.load_records(pipeline, "customers", wanted).items():
            known[key] = label_of(state.base, key)
    return known


def _numbers(store: StateStore, pipeline: str, cache: dict[str, dict[str, str]]) -> dict[str, str]:
    """invoice number -> hub key, read from the store once per report."""
    if "numbers" not in cache:
        cache["numbers"] = {
            base["invoice_number"]: key
            for key, base in store.iter_bases(pipeline, "invoices")
            if base.get("invoice_number")
        }
    return cache["numbers"]


# ------------------------------------------------------------------- closed periods


def _explain_closed(
    line: InvoiceLine,
    locks: dict[str, Lock],
    invoices: dict[str, dict[str, list[_Seen]]],
    payments: dict[str, dict[str, list[_Seen]]],
    line_fields: dict[str, frozenset[str]] | None = None,
) -> None:
    """Decide which of an invoice's disagreements a closed period explains, and move them to
    ``line.after_close``. A record is closed on a locked member when any member's copy of it
    is dated before the lock (the rule of ``syncengine.locks``: the sync writes it no more).
    Explained:

    - ``missing``: the invoice, or every payment, a member lacks is closed on that member
      (it was not created there), or on every member holding it (not deleted there);
    - ``balance``: on a member where the invoice is closed (its row stays as it was closed);
    - ``status`` (an invoice voided after the close) and ``customer`` (an invoice moved to
      another customer after it): the members where it is open agree;
    - ``amount`` and ``refund``: the members agree once the closed copies are left out (the
      amounts of the members where the invoice is open; the payments and refunds that are
      open everywhere);
    - ``lines`` (the lines against the subtotal) on a member where the invoice is closed, and
      ``line`` when the line is missing on such a member, or when the members where the
      invoice is open agree on every line (a closed invoice's lines stay as they were closed).

    Anything else (duplicates, subtotal and tax, an open record that differs) stays a
    disagreement."""
    closed_invoice = _closed_on(locks, "invoices", invoices, {line.key})
    closed_payments: dict[str, set[str]] = {m: set() for m in locks}
    every = set().union(*line.payments.values()) if line.payments else set()
    for pay in every:
        for member in _closed_on(locks, "payments", payments, {pay}):
            closed_payments[member].add(pay)
    if not closed_invoice and not any(closed_payments.values()):
        return

    def closed_where_held(pay: str) -> bool:
        holders = [m for m, keys in line.payments.items() if pay in keys]
        return all(pay in closed_payments.get(m, ()) for m in holders)

    def explains(problem: Disagreement) -> bool:
        member = problem.member
        if problem.kind == "balance":
            return member in closed_invoice
        if problem.kind == "missing" and member not in line.amount:
            holders = set(line.amount)
            return member in closed_invoice or (bool(holders) and holders <= closed_invoice)
        if problem.kind == "missing":
            lacking = every - line.payments.get(member, set())
            return bool(lacking) and all(
                p in closed_payments.get(member, ()) or closed_where_held(p) for p in lacking
            )
        if problem.kind in ("amount", "refund") and not member:
            return _agree_when_open(line, closed_invoice, closed_payments, payments)
        if problem.kind == "status":
            return bool(closed_invoice) and (
                len({s for m, s in line.status.items() if m not in closed_invoice}) <= 1
            )
        if problem.kind == "customer":
            return bool(closed_invoice) and (
                len({c for m, c in line.customer.items() if m not in closed_invoice}) <= 1
            )
        if problem.kind in ("lines", "line") and member:
            return member in closed_invoice
        if problem.kind == "line":
            return bool(closed_invoice) and _lines_agree_when_open(
                line, closed_invoice, line_fields or {}
            )
        return False

    kept = []
    for problem in line.problems:
        if not explains(problem):
            kept.append(problem)
            continue
        locked = sorted(
            set(locks) & (closed_invoice | {m for m, p in closed_payments.items() if p})
        )
        when = ", ".join(f"{m} closed before {locks[m].opens.isoformat()}" for m in locked)
        line.after_close.append(
            Disagreement(
                "after_close", f"{problem.message} (after the close: {when})", member=problem.member
            )
        )
    line.problems = kept


def _closed_on(
    locks: dict[str, Lock],
    entity: str,
    seen: dict[str, dict[str, list[_Seen]]],
    keys: set[str],
) -> set[str]:
    """The locked members on which a record (any of ``keys``) is closed: some member's copy
    of it is dated before their lock."""
    copies = [s.record for by_key in seen.values() for k in keys for s in by_key.get(k, ())]
    return {m for m, lock in locks.items() if any(lock.closed(entity, r) for r in copies)}


def _lines_agree_when_open(
    line: InvoiceLine, closed_invoice: set[str], fields: dict[str, frozenset[str]]
) -> bool:
    """Whether the members where the invoice is open agree on its lines (``_check_lines_agree``
    run on them alone finds nothing)."""
    probe = InvoiceLine(line.key, line.invoice_number, items=line.items)
    _check_lines_agree(probe, [m for m in line.amount if m not in closed_invoice], fields)
    return not probe.problems


def _agree_when_open(
    line: InvoiceLine,
    closed_invoice: set[str],
    closed_payments: dict[str, set[str]],
    payments: dict[str, dict[str, list[_Seen]]],
) -> bool:
    """Whether the members agree on the invoice's money once what is closed is left out: the
    amount where the invoice is open, and the succeeded payments and refunds open on every
    locked member."""
    holders = list(line.amount)
    if len({line.amount[m] for m in holders if m not in closed_invoice}) > 1:
        return False
    closed = set().union(*closed_payments.values())
    sums = set()
    for member in holders:
        paid = refunded = 0
        for pay in line.payments.get(member, set()) - closed:
            record = payments.get(member, {}).get(pay, [])[0].record
            amount, back = record.get("amount"), record.get("refunded_amount")
            if record.get("status") == "succeeded" and isinstance(amount, int):
                paid += amount
                refunded += back if isinstance(back, int) else 0
        sums.add((paid, refunded))
    return len(sums) <= 1
