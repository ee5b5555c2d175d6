"""The line items of the HCP sandbox's jobs: seeded, served, changed, and the totals kept.

The API (``spec/HCP-REAL-API-NOTES.md``, Line items) keeps lines on jobs::

    GET  /jobs/{job_id}/line_items              the job's lines, in order, in the list
                                                envelope (page, page_size)
    POST /jobs/{job_id}/line_items              one new line -> 201 + the line
    PUT  /jobs/{job_id}/line_items/bulk_update  {"line_items": [...]}: a line with a
                                                ``uuid`` of the job is changed (the keys
                                                given), one without is created -> 200
                                                {"line_items": [every line of the job]}

A line on the wire: ``uuid``, ``name``, ``description``, ``kind``, ``quantity`` (a JSON number,
fractional where it is), ``unit_price`` and ``unit_cost`` (integer cents), ``taxable``,
``service_item_id``, ``service_item_type`` (keys without a value are left out, as everywhere in
the sandbox). What the live API does with lines a ``bulk_update`` leaves out is not known; the
sandbox keeps them as they are (it never deletes a line), and appends new lines after the job's
others, in the order the request gives them. A body key that is not a line's field, a ``uuid``
that is not one of the job's lines, a ``quantity`` with more than 4 decimal places: 422.

**Totals.** A job's lines are what its first invoice (the oldest, numbered like the job) bills:
the seed makes them add up to that invoice's ``subtotal`` exactly, so a job's
``total_amount`` (its open invoices' amounts) is its lines plus their tax, for every job
billed once. A second invoice of a job (``1043-2``, progress billing) has no lines of its own.
When lines change, the first invoice follows unless it is voided or canceled:
``subtotal`` = the sum of the lines' amounts (quantity x unit price, half to even),
``tax_amount`` = 8.25 % of the taxable lines' amounts (half to even), ``amount`` = their sum,
its balance and status settle as for any change of its amount (a change that would leave
it owing less than its payments hold is refused, 422), and its ``updated_at`` moves; the
job's ``updated_at`` moves with any change of its lines. Webhooks: ``job.updated``, and
``invoice.amount_updated`` when the invoice's amount changed.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from syncengine.connectors.housecallpro.sandbox_fields import (
    Dice,
    Errors,
    Record,
    ValidationFailed,
    add_error,
    check_integer,
    check_string,
    hex_id,
)
from syncengine.connectors.housecallpro.sandbox_records import INVOICE_CLOSED, balance_of
from syncengine.connectors.housecallpro.sandbox_seed import TAX_RATE_BP
from syncengine.connectors.housecallpro.sandbox_webhooks import invoice_change_events
from syncengine.model import QUANTITY_PLACES, line_amount, norm_decimal

if TYPE_CHECKING:
    from syncengine.connectors.housecallpro.sandbox_state import SandboxState

LINE_ITEMS = "line_items"
FIELDS = (
    "name",
    "description",
    "kind",
    "quantity",
    "unit_price",
    "unit_cost",
    "taxable",
    "service_item_id",
    "service_item_type",
)
"""A line's fields on the wire, besides its ``uuid``."""
_MONEY_FLOOR = -(10**12)
"""The least ``unit_price`` taken (a discount is a negative price)."""
_UNTAXED = frozenset({"AC tune-up", "Drain cleaning", "Duct cleaning", "Gutter cleaning",
                      "Dryer vent cleaning", "Sump pump service"})  # fmt: skip
"""The seeded services billed as labour alone (``sandbox_seed``): their lines are untaxed."""
_PARTS = ("Replacement part", "Fittings and hardware", "Filter", "Copper pipe (ft)",
          "Breaker", "Refrigerant (lb)", "Shut-off valve", "Wax ring and bolts")  # fmt: skip
_QUANTITIES = ("1", "1", "2", "3", "0.5", "1.5", "2.25", "12.5")


class JobLines:
    """Every job's lines, in order (``position`` 1, 2, …). A job's list is replaced, never
    changed in place, so readers never race a writer; the state's lock is held by callers."""

    def __init__(self) -> None:
        self._by_job: dict[str, list[Record]] = {}

    def replace_all(self, records: Iterable[Record]) -> None:
        by_job: dict[str, list[Record]] = {}
        for record in records:
            by_job.setdefault(record["job_id"], []).append(record)
        self._by_job = {
            job_id: sorted(lines, key=lambda r: r["position"]) for job_id, lines in by_job.items()
        }

    def of(self, job_id: str) -> list[Record]:
        return self._by_job.get(job_id, [])

    def put(self, job_id: str, lines: list[Record]) -> None:
        self._by_job[job_id] = lines

    def drop(self, job_id: str) -> None:
        self._by_job.pop(job_id, None)

    def dump(self) -> list[Record]:
        return [dict(line) for lines in self._by_job.values() for line in lines]

    def __len__(self) -> int:
        return sum(map(len, self._by_job.values()))


# ------------------------------------------------------------------------------ the wire


def line_wire(line: Record) -> Record:
    """A stored line as the API shows it (``quantity`` a JSON number)."""
    shown: Record = {"uuid": line["id"]}
    for name in FIELDS:
        value = line.get(name)
        if value is None:
            continue
        shown[name] = json_number(value) if name == "quantity" else value
    return shown


def json_number(text: str) -> int | float:
    """A stored quantity (canonical decimal text) as a JSON number: an int when whole, else
    the float whose shortest repr is it (exact for the digits a quantity has)."""
    number = decimal.Decimal(text)
    return int(number) if number == number.to_integral_value() else float(number)


def uuid_text(hex32: str) -> str:
    """32 hex digits as a UUID's text (8-4-4-4-12)."""
    h = hex32[-32:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# ------------------------------------------------------------------------------ checks


def check_line_fields(
    body: Mapping[str, Any], where: str, *, creating: bool
) -> tuple[Record, Errors]:
    """The line fields of a request body (``where`` prefixes each error's key); a new line
    needs a name, and gets quantity 1 and taxable false when they are not given."""
    errors: Errors = {}
    patch: Record = {}

    def key(name: str) -> str:
        return f"{where}{name}"

    for name in body:
        if name not in FIELDS and name != "uuid":
            add_error(errors, key(name), "is not a field of a line item")
    for name in ("name", "description", "kind", "service_item_id", "service_item_type"):
        if name in body:
            patch[name] = check_string(body[name], key(name), errors)
    if creating and not (isinstance(patch.get("name"), str) and patch["name"].strip()):
        add_error(errors, key("name"), "is missing")
    if "quantity" in body:
        patch["quantity"] = _quantity(body["quantity"], key("quantity"), errors)
    if "unit_price" in body:
        patch["unit_price"] = check_integer(
            body["unit_price"], key("unit_price"), errors, minimum=_MONEY_FLOOR
        )
    if "unit_cost" in body:
        patch["unit_cost"] = check_integer(body["unit_cost"], key("unit_cost"), errors)
    if "taxable" in body:
        if isinstance(body["taxable"], bool):
            patch["taxable"] = body["taxable"]
        else:
            add_error(errors, key("taxable"), "must be true or false")
    if creating:
        patch.setdefault("quantity", "1")
        patch.setdefault("unit_price", 0)
        patch.setdefault("taxable", False)
    return patch, errors


def _quantity(value: Any, key: str, errors: Errors) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        add_error(errors, key, "must be a number")
        return None
    try:
        return norm_decimal(value, QUANTITY_PLACES)
    except ValueError:
        add_error(errors, key, f"must be a number with at most {QUANTITY_PLACES} decimal places")
        return None


# ------------------------------------------------------------------------------ requests


def list_lines(state: SandboxState, job_id: str, *, page: int, page_size: int) -> Record | None:
    """One page of a job's lines in the list envelope; None when there is no such job."""
    with state.lock:
        if job_id not in state.jobs:
            return None
        return state._page(LINE_ITEMS, state.lines.of(job_id), page, page_size, line_wire)


def create_line(state: SandboxState, job_id: str, body: Mapping[str, Any]) -> Record | None:
    """``POST /jobs/{id}/line_items``: one new line after the job's others; None when there
    is no such job. Raises ``ValidationFailed``."""
    if "uuid" in body:
        raise ValidationFailed({"uuid": ["is assigned by the API"]})
    with state.lock:
        if job_id not in state.jobs:
            return None
        lines = _changed_lines(state, job_id, [dict(body)], where="")
        return line_wire(lines[-1])


def bulk_update(state: SandboxState, job_id: str, body: Mapping[str, Any]) -> Record | None:
    """``PUT /jobs/{id}/line_items/bulk_update``: change the lines named by ``uuid``, create
    the others (see the module docstring); every line of the job afterwards. None when there
    is no such job. Raises ``ValidationFailed``."""
    items = body.get("line_items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValidationFailed({"line_items": ["must be an array of objects"]})
    with state.lock:
        if job_id not in state.jobs:
            return None
        lines = _changed_lines(state, job_id, items, where="line_items")
        return {LINE_ITEMS: [line_wire(line) for line in lines]}


def _changed_lines(
    state: SandboxState, job_id: str, items: Sequence[Mapping[str, Any]], *, where: str
) -> list[Record]:
    """The job's lines with ``items`` applied (``where``: how errors name them), stored with
    the totals that follow; the caller holds the lock."""
    current = state.lines.of(job_id)
    by_id = {line["id"]: index for index, line in enumerate(current)}
    lines = list(current)
    errors: Errors = {}
    seen: set[str] = set()
    new: list[Record] = []
    changed: list[tuple[int, Record]] = []
    for index, item in enumerate(items):
        prefix = f"{where}[{index}]." if where else ""
        uuid = item.get("uuid")
        if uuid is not None and (not isinstance(uuid, str) or uuid not in by_id):
            add_error(errors, f"{prefix}uuid", "is not a line item of this job")
            continue
        if uuid is not None and uuid in seen:
            add_error(errors, f"{prefix}uuid", "is given twice")
            continue
        patch, found = check_line_fields(item, prefix, creating=uuid is None)
        for name, messages in found.items():
            errors.setdefault(name, []).extend(messages)
        if uuid is None:
            new.append(patch)
        else:
            seen.add(uuid)
            changed.append((by_id[uuid], patch))
    if errors:
        raise ValidationFailed(errors)
    now = state.clock.tick()
    touched = False
    for position, patch in changed:
        before = lines[position]
        after = {**before, **patch}
        if after != before:
            after["updated_at"] = now
            lines[position] = after
            touched = True
    for patch in new:
        line: Record = dict.fromkeys(FIELDS)
        line.update(patch)
        line.update(id=uuid_text(state.new_id("")), job_id=job_id, created_at=now, updated_at=now)
        lines.append(line)
        touched = True
    for position, line in enumerate(lines, start=1):
        if line.get("position") != position:
            lines[position - 1] = {**line, "position": position}
    if touched:
        _settle(state, job_id, lines, now)
    return lines


def _settle(state: SandboxState, job_id: str, lines: list[Record], now: str) -> None:
    """Store the job's new lines and what follows from them: the first invoice's totals (a
    change that leaves it owing less than its payments hold is refused before anything is
    stored), the job's and the invoice's ``updated_at``, the webhooks."""
    invoice = first_invoice(state, job_id)
    after = None
    if invoice is not None and invoice["status"] not in INVOICE_CLOSED:
        after = {**invoice, **line_totals(lines)}
        after["outstanding_balance"] = balance_of(
            after["amount"], state.payments.lookup("invoice_id", invoice["id"])
        )
        if after["outstanding_balance"] < 0:
            raise ValidationFailed(
                {"line_items": ["would make the invoice less than the payments received"]}
            )
    state.lines.put(job_id, lines)
    stored = state.jobs.get(job_id)
    assert stored is not None  # the caller checked, under the lock
    job = {**stored, "updated_at": now}
    state.jobs.put(job)
    state._notify(["job.updated"], job)
    if invoice is not None and after is not None and after != invoice:
        after["status"] = state._settled_status(after)
        state._stamp_invoice(after, invoice, now)
        state.invoices.put(after)
        state._notify(invoice_change_events(invoice, after), after)


def first_invoice(state: SandboxState, job_id: str) -> Record | None:
    """The invoice a job's lines belong to: its oldest (ties by id)."""
    invoices = state.invoices.lookup("job_id", job_id)
    return min(invoices, key=lambda i: (i["created_at"], i["id"])) if invoices else None


def line_totals(lines: Iterable[Mapping[str, Any]]) -> Record:
    """``subtotal``, ``tax_amount`` (8.25 % of the taxable lines, half to even) and ``amount``
    of an invoice billing ``lines``."""
    subtotal = taxable = 0
    for line in lines:
        amount = line_amount(line["quantity"] or "0", line["unit_price"] or 0)
        subtotal += amount
        if line.get("taxable"):
            taxable += amount
    rate = decimal.Decimal(TAX_RATE_BP) / 10_000
    tax = int((taxable * rate).quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_EVEN))
    return {"subtotal": subtotal, "tax_amount": tax, "amount": subtotal + tax}


# ------------------------------------------------------------------------------ seed data


def generate_lines(
    jobs: Sequence[Record], invoices: Sequence[Record], random_seed: int = 0
) -> list[Record]:
    """Lines for every invoiced job that add up to its first invoice's subtotal exactly:
    labour (now and then by the hour), parts (fractional quantities too), now and then a
    discount. A generator of their own (``lines:<seed>``): the rest of the seeded data stays
    what it was."""
    rng = Dice(f"lines:{random_seed}")
    first: dict[str, Record] = {}
    for invoice in invoices:
        job_id = invoice.get("job_id")
        if job_id is None:
            continue
        known = first.get(job_id)
        if known is None or (invoice["created_at"], invoice["id"]) < (
            known["created_at"],
            known["id"],
        ):
            first[job_id] = invoice
    made: list[Record] = []
    for job in jobs:
        billed = first.get(job["id"])
        if billed is not None:
            made.extend(_job_lines(rng, job, billed))
    return made


def _job_lines(rng: Dice, job: Record, invoice: Record) -> list[Record]:
    subtotal = invoice.get("subtotal")
    if not isinstance(subtotal, int):
        subtotal = invoice["amount"]
    taxable = job["description"] not in _UNTAXED
    stamp = invoice["created_at"]
    parts: list[tuple[str, str, int, int | None, str, str | None]] = []
    rest = subtotal
    if subtotal >= 2_000 and rng.chance(0.5):
        discount = rng.between(1, subtotal // 10)
        parts.append(("discount", "1", -discount, 0, "Loyalty discount", None))
        rest += discount
    for _ in range(rng.pick((0, 1, 1, 2))):
        quantity = rng.pick(_QUANTITIES)
        ceiling = int(decimal.Decimal(subtotal * 2 // 5) / decimal.Decimal(quantity))
        if ceiling < 100:
            continue
        price = rng.between(100, ceiling)
        amount = line_amount(quantity, price)
        rest -= amount
        parts.append(("materials", quantity, price, price * 3 // 5, rng.pick(_PARTS),
                      hex_id(rng, "mat_")))  # fmt: skip
    hours = "1"
    if rest > 0 and rest % 3 == 0 and rng.chance(0.5):
        hours = "1.5"  # 1.5 h at two thirds of the rest: exact
    labour_price = rest if hours == "1" else rest * 2 // 3
    labour = ("labor", hours, labour_price, None, job["description"], None)
    lines = []
    for position, (kind, quantity, price, cost, name, item) in enumerate(
        [labour, *reversed(parts)], start=1
    ):
        lines.append(
            {
                "id": uuid_text(hex_id(rng, "")),
                "job_id": job["id"],
                "position": position,
                "name": name,
                "description": None,
                "kind": kind,
                "quantity": quantity,
                "unit_price": price,
                "unit_cost": cost,
                "taxable": taxable,
                "service_item_id": item,
                "service_item_type": "materials" if item else None,
                "created_at": stamp,
                "updated_at": stamp,
            }
        )
    return lines


# ------------------------------------------------------------------------------ data files


def check_lines(
    items: Sequence[tuple[int, str, dict[str, Any]]], job_ids: set[str]
) -> tuple[list[Record], list[tuple[str, Errors]]]:
    """The ``line_items`` of a data file (each with ``id``, ``job_id``, ``position`` beside
    the wire fields, as ``dump()`` gives them), and the problems of the bad ones by where
    they are."""
    records: list[Record] = []
    problems: list[tuple[str, Errors]] = []
    seen: set[str] = set()
    for _index, where, item in items:
        body = {k: v for k, v in item.items() if k in FIELDS}
        if isinstance(item.get("quantity"), str):  # a dump stores quantities as text
            body["quantity"] = json_number(item["quantity"]) if _plain(item["quantity"]) else None
        patch, errors = check_line_fields(body, "", creating=True)
        line_id, job_id = item.get("id"), item.get("job_id")
        if not isinstance(line_id, str) or not line_id or line_id in seen:
            add_error(errors, "id", "must be a non-empty string, unique")
        if job_id not in job_ids:
            add_error(errors, "job_id", f"job {job_id} is not in this file")
        position = item.get("position")
        if not isinstance(position, int) or isinstance(position, bool) or position < 1:
            add_error(errors, "position", "must be an integer of 1 or more")
        if errors:
            problems.append((where, errors))
            continue
        seen.add(str(line_id))
        stamp = item.get("created_at")
        line: Record = dict.fromkeys(FIELDS)
        line.update(patch)
        line.update(id=line_id, job_id=job_id, position=position)
        line.update(created_at=stamp, updated_at=item.get("updated_at", stamp))
        records.append(line)
    return records, problems


def _plain(text: str) -> bool:
    try:
        return decimal.Decimal(text).is_finite()
    except decimal.InvalidOperation:
        return False
