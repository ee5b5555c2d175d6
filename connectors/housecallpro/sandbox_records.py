"""Jobs, invoices and payments in the HCP sandbox: their enums, field checks and wire shapes.

Stored forms (what ``SandboxState.dump()`` gives and a ``--data`` file holds)::

    job      {id, invoice_number, description, customer_id, address, notes, work_status,
              work_timestamps: {on_my_way_at, started_at, completed_at},
              schedule: {scheduled_start, scheduled_end, arrival_window},
              assigned_employees: [employee], tags, created_at, updated_at}
    invoice  {id, invoice_number, status, amount, subtotal, tax_amount, outstanding_balance,
              customer_id, job_id, due_at, sent_at, paid_at, created_at, updated_at}
    payment  {id, invoice_id, amount, refunded_amount, payment_method, status, processed_at,
              note, category, created_at}

On the wire a job carries the spec's nested ``customer`` object (not ``customer_id``) and a
``total_amount`` / ``outstanding_balance`` summed over its invoices; an invoice may carry its
payments nested the way the live API sends them (``paid_at`` instead of ``processed_at``, no
``invoice_id``) and, emulating the live API further, no ``customer_id`` and no ``updated_at``.
Money is integer cents everywhere.

Money below the total (the sandbox's rules; the live API's are partly unconfirmed):

- an invoice's ``amount`` is always its ``subtotal`` plus its ``tax_amount`` (``settle_totals``
  derives the one not given; an invoice given only an amount is untaxed);
- a payment's ``refunded_amount`` is what was given back of it, 0 up to its ``amount``; a
  payment refunded in full has the status ``refunded``;
- an invoice's ``outstanding_balance`` is its amount less what its payments still hold: the
  amount of each succeeded (or refunded) payment less its refunds (``balance_of``), so a
  refund reopens the balance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from syncengine.connectors.housecallpro.sandbox_fields import (
    Errors,
    Record,
    add_error,
    check_address,
    check_enum,
    check_integer,
    check_string,
    check_tags,
    check_timestamp,
    reference,
)

JOB_WORK_STATUSES = (
    "unscheduled",
    "scheduled",
    "in_progress",
    "complete",
    "completed_unrated",
    "user_canceled",
    "pro_canceled",
)
"""The spec's ``Job.work_status`` enum (the live API's payloads use spaces; filters do not)."""
JOB_DONE = ("complete", "completed_unrated")
JOB_SORT_FIELDS = ("created_at", "updated_at", "scheduled_start", "scheduled_end")
JOB_STRING_FIELDS = ("description", "notes", "invoice_number")
SCHEDULE_TIMES = ("scheduled_start", "scheduled_end")

INVOICE_STATUSES = ("draft", "sent", "paid", "voided", "canceled")
"""The spec's ``Invoice.status`` enum (the live API also sends ``open``)."""
INVOICE_CLOSED = ("voided", "canceled")
"""Invoices that take no payments and count for nothing in a job's totals."""
INVOICE_SORT_FIELDS = (
    "amount",
    "created_at",
    "due_amount",
    "due_at",
    "invoice_number",
    "paid_at",
    "sent_at",
    "status",
    "updated_at",
)
"""The live API's ``sort_by`` values for ``/invoices`` (``due_amount`` is the balance)."""

PAYMENT_METHODS = ("cash", "check", "credit_card", "ach", "other")
PAYMENT_STATUSES = ("succeeded", "pending", "failed", "refunded")
PAYMENT_CATEGORY = "payment"
NESTED_PAYMENT_FIELDS = ("id", "status", "payment_method", "amount", "note", "paid_at", "category")
"""What the live API nests in an invoice for each payment."""
_NESTED_KEYS = (*(k for k in NESTED_PAYMENT_FIELDS if k != "paid_at"), "refunded_amount")
"""The nested fields taken from a stored payment: the live ones, and the refunds (a name the
live API is not known to use: the sandbox's assumption, see ``mappings/housecallpro``)."""
COLLECTED = ("succeeded", "refunded")
"""Payment statuses whose money came in (a refunded one's then went back out)."""

EMPLOYEE_ROLES = ("admin", "office_staff", "field_tech")
CUSTOMER_SUMMARY_FIELDS = (
    "id",
    "first_name",
    "last_name",
    "email",
    "mobile_number",
    "home_number",
    "work_number",
    "company",
    "notifications_enabled",
    "lead_source",
    "tags",
)
"""The customer fields a job embeds (the spec's ``Customer``, without addresses)."""


# ------------------------------------------------------------------------------------ jobs


def blank_job(job_id: str, customer_id: str, number: str, timestamp: str) -> Record:
    return {
        "id": job_id,
        "invoice_number": number,
        "description": None,
        "customer_id": customer_id,
        "address": None,
        "notes": None,
        "work_status": "unscheduled",
        "work_timestamps": {"on_my_way_at": None, "started_at": None, "completed_at": None},
        "schedule": {"scheduled_start": None, "scheduled_end": None, "arrival_window": None},
        "assigned_employees": [],
        "tags": [],
        "created_at": timestamp,
        "updated_at": timestamp,
    }


def copy_job(record: Record) -> Record:
    return {
        **record,
        "address": None if record["address"] is None else dict(record["address"]),
        "work_timestamps": dict(record["work_timestamps"]),
        "schedule": dict(record["schedule"]),
        "assigned_employees": [dict(e) for e in record["assigned_employees"]],
        "tags": list(record["tags"]),
    }


def check_job_fields(body: Mapping[str, Any]) -> tuple[Record, Errors]:
    """The writable job fields present in ``body``, checked; unknown and read-only keys
    (``total_amount``, ``outstanding_balance``, ``work_timestamps``) are ignored.

    ``customer_id`` comes from ``customer_id`` (what the live API takes) or the spec's nested
    ``customer.id``. ``schedule`` holds only the keys sent (an update merges them; ``null``
    clears one). ``assigned_employees`` is a list of employee ids for the caller to resolve.
    """
    patch: Record = {}
    errors: Errors = {}
    for name in JOB_STRING_FIELDS:
        if name in body:
            patch[name] = check_string(body[name], name, errors)
    if "invoice_number" in patch and not (patch["invoice_number"] or "").strip():
        del patch["invoice_number"]  # "" or null: the sandbox keeps (or assigns) the number
    if "customer_id" in body or "customer" in body:
        customer_id = reference(body, "customer", errors)
        if customer_id is not None:
            patch["customer_id"] = customer_id
    if "work_status" in body:
        status = check_enum(body["work_status"], JOB_WORK_STATUSES, "work_status", errors)
        if status is not None:
            patch["work_status"] = status
        elif body["work_status"] is None:
            add_error(errors, "work_status", "cannot be empty")
    if "schedule" in body:
        schedule = body["schedule"]
        if schedule is None:
            patch["schedule"] = {"scheduled_start": None, "scheduled_end": None}
        elif isinstance(schedule, dict):
            checked: Record = {}
            for name in SCHEDULE_TIMES:
                if name in schedule:
                    checked[name] = check_timestamp(schedule[name], f"schedule.{name}", errors)
            if "arrival_window" in schedule:
                checked["arrival_window"] = check_integer(
                    schedule["arrival_window"], "schedule.arrival_window", errors
                )
            patch["schedule"] = checked
        else:
            add_error(errors, "schedule", "must be an object")
    if "address" in body:
        address = body["address"]
        patch["address"] = None if address is None else check_address(address, "address", errors)
    if "tags" in body:
        tags = check_tags(body["tags"], "tags", errors)
        if tags is not None:
            patch["tags"] = tags
    if "assigned_employees" in body:
        employees = body["assigned_employees"]
        if employees is None:
            patch["assigned_employees"] = []
        elif isinstance(employees, list) and all(
            isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"] for e in employees
        ):
            patch["assigned_employees"] = [e["id"] for e in employees]
        else:
            add_error(errors, "assigned_employees", "must be an array of objects with an id")
    return patch, errors


def check_schedule_order(schedule: Mapping[str, Any], errors: Errors) -> None:
    start, end = schedule.get("scheduled_start"), schedule.get("scheduled_end")
    if start is not None and end is not None and end < start:
        add_error(errors, "schedule.scheduled_end", "must not be before scheduled_start")


def stamp_work(job: Record, status: str, timestamp: str) -> None:
    """Fill the ``work_timestamps`` a status change to ``status`` implies (in place, on a
    record the caller owns)."""
    stamps = job["work_timestamps"]
    if status in ("in_progress", *JOB_DONE):
        stamps["on_my_way_at"] = stamps["on_my_way_at"] or timestamp
        stamps["started_at"] = stamps["started_at"] or timestamp
    if status in JOB_DONE:
        stamps["completed_at"] = stamps["completed_at"] or timestamp


def job_sort_keys() -> dict[str, Callable[[Record], Any]]:
    return {
        "created_at": lambda r: r["created_at"],
        "updated_at": lambda r: r["updated_at"],
        "scheduled_start": lambda r: r["schedule"]["scheduled_start"],
        "scheduled_end": lambda r: r["schedule"]["scheduled_end"],
    }


def _present(record: Mapping[str, Any]) -> Record:
    return {k: v for k, v in record.items() if v is not None}


_JOB_NESTED = frozenset({"customer_id", "address", "work_timestamps", "schedule",
                         "assigned_employees"})  # fmt: skip


def job_wire(job: Record, customer: Record | None, total: int, balance: int) -> Record:
    """A job as the API sends it: the spec's nested ``customer``, totals over its invoices,
    no null values (the spec's fields are not nullable)."""
    body = {k: v for k, v in job.items() if v is not None and k not in _JOB_NESTED}
    if customer is None:  # deleted since: the id is all that is left
        body["customer"] = {"id": job["customer_id"]}
    else:
        body["customer"] = {
            k: customer[k] for k in CUSTOMER_SUMMARY_FIELDS if customer.get(k) is not None
        }
    if job["address"] is not None:
        body["address"] = _present(job["address"])
    for key in ("work_timestamps", "schedule"):
        nested = _present(job[key])
        if nested:
            body[key] = nested
    body["assigned_employees"] = [_present(e) for e in job["assigned_employees"]]
    body["total_amount"] = total
    body["outstanding_balance"] = balance
    return body


# -------------------------------------------------------------------------------- invoices


def blank_invoice(invoice_id: str, number: str, amount: int, timestamp: str) -> Record:
    return {
        "id": invoice_id,
        "invoice_number": number,
        "status": "draft",
        "amount": amount,
        "subtotal": amount,
        "tax_amount": 0,
        "outstanding_balance": amount,
        "customer_id": None,
        "job_id": None,
        "due_at": None,
        "sent_at": None,
        "paid_at": None,
        "created_at": timestamp,
        "updated_at": timestamp,
    }


def check_invoice_fields(body: Mapping[str, Any], *, creating: bool) -> tuple[Record, Errors]:
    """The writable invoice fields present in ``body``, checked. Creating needs ``amount`` (or
    a ``subtotal`` it is made from) and a customer or a job (``customer_id`` / ``job_id``, or
    the nested ``customer.id`` / ``job.id``). ``subtotal`` and ``tax_amount`` are taken as
    sent; ``settle_totals`` makes the three agree. ``outstanding_balance``, ``payments`` and
    timestamps are the sandbox's own."""
    patch: Record = {}
    errors: Errors = {}
    if "invoice_number" in body:
        number = check_string(body["invoice_number"], "invoice_number", errors)
        if number is not None and not number.strip():
            add_error(errors, "invoice_number", "cannot be blank")
        elif number is not None:
            patch["invoice_number"] = number.strip()
    if "status" in body:
        status = check_enum(body["status"], INVOICE_STATUSES, "status", errors)
        if status is not None:
            patch["status"] = status
    if "amount" in body or (creating and body.get("subtotal") is None):
        amount = check_integer(body.get("amount"), "amount", errors)
        if amount is not None:
            patch["amount"] = amount
        elif body.get("amount") is None:
            add_error(errors, "amount", "is missing")
    for name in ("subtotal", "tax_amount"):
        if body.get(name) is not None:
            value = check_integer(body[name], name, errors)
            if value is not None:
                patch[name] = value
    if "due_at" in body:
        patch["due_at"] = check_timestamp(body["due_at"], "due_at", errors)
    if creating:
        for name in ("customer", "job"):
            if f"{name}_id" in body or name in body:
                found = reference(body, name, errors)
                if found is not None:
                    patch[f"{name}_id"] = found
        if not errors and "customer_id" not in patch and "job_id" not in patch:
            add_error(errors, "customer_id", "is missing (give a customer_id or a job_id)")
    return patch, errors


def settle_totals(current: Mapping[str, Any] | None, patch: Record, errors: Errors) -> Record:
    """The ``amount``, ``subtotal`` and ``tax_amount`` an invoice has after ``patch`` (checked
    fields, ``current`` None when creating), always with amount = subtotal + tax_amount:

    - all three given: they must agree (else an error on ``amount``);
    - two given: the third follows from them (a tax that would be negative is an error);
    - only the amount: the tax is kept (none on a new invoice), the subtotal is the rest;
    - only the subtotal or only the tax: the other is kept, the amount follows.
    """
    before = current or {"subtotal": 0, "tax_amount": 0}
    amount, subtotal, tax = (patch.get(k) for k in ("amount", "subtotal", "tax_amount"))
    if amount is not None and subtotal is not None and tax is not None:
        if amount != subtotal + tax:
            add_error(errors, "amount", f"must be subtotal + tax_amount ({subtotal} + {tax})")
    elif amount is not None and subtotal is not None:
        tax = amount - subtotal
        if tax < 0:
            add_error(errors, "subtotal", f"is more than the amount ({amount})")
    elif amount is not None:
        if tax is None:
            tax = before["tax_amount"]
        subtotal = amount - tax
    else:
        subtotal = before["subtotal"] if subtotal is None else subtotal
        tax = before["tax_amount"] if tax is None else tax
        amount = subtotal + tax
    return {"amount": amount, "subtotal": subtotal, "tax_amount": tax}


def invoice_sort_keys() -> dict[str, Callable[[Record], Any]]:
    keys: dict[str, Callable[[Record], Any]] = {
        name: itemgetter(name) for name in INVOICE_SORT_FIELDS
    }
    keys["due_amount"] = itemgetter("outstanding_balance")
    return keys


_INVOICE_HIDDEN = frozenset({"sent_at", "paid_at"})
_INVOICE_HIDDEN_LIVE = _INVOICE_HIDDEN | {"customer_id", "updated_at"}


def invoice_wire(invoice: Record, payments: list[Record] | None, *, live: bool) -> Record:
    """An invoice as the API sends it. ``payments`` (when given) are nested the live way;
    ``live`` leaves out ``customer_id`` and ``updated_at`` like the live API."""
    hidden = _INVOICE_HIDDEN_LIVE if live else _INVOICE_HIDDEN
    body = {k: v for k, v in invoice.items() if v is not None and k not in hidden}
    if payments is not None:
        body["payments"] = [nested_payment(p) for p in payments]
    return body


def nested_payment(payment: Record) -> Record:
    """A payment the way the live API nests it in its invoice."""
    nested = {k: payment[k] for k in _NESTED_KEYS if payment[k] is not None}
    nested["paid_at"] = payment["processed_at"]
    return nested


# -------------------------------------------------------------------------------- payments


def check_payment_fields(body: Mapping[str, Any]) -> tuple[Record, Errors]:
    """A payment to record (the sandbox's admin route; the API itself takes none), or one in
    a data file. ``refunded_amount`` is 0 up to the amount; a ``refunded`` payment without it
    was refunded in full."""
    errors: Errors = {}
    amount = check_integer(body.get("amount"), "amount", errors, minimum=1)
    if body.get("amount") is None:
        add_error(errors, "amount", "is missing")
    status = body.get("status", "succeeded")
    refunded = check_integer(body.get("refunded_amount"), "refunded_amount", errors)
    if refunded is None and status == "refunded":
        refunded = amount
    if refunded is not None and amount is not None and refunded > amount:
        add_error(errors, "refunded_amount", f"is more than the amount ({amount})")
    payment: Record = {
        "amount": amount,
        "refunded_amount": refunded or 0,
        "payment_method": check_enum(
            body.get("payment_method", "credit_card"), PAYMENT_METHODS, "payment_method", errors
        ),
        "status": check_enum(status, PAYMENT_STATUSES, "status", errors),
        "processed_at": check_timestamp(body.get("processed_at"), "processed_at", errors),
        "note": check_string(body.get("note"), "note", errors),
        "category": check_string(body.get("category", PAYMENT_CATEGORY), "category", errors),
    }
    return payment, errors


def payment_wire(payment: Record) -> Record:
    """A payment as ``GET /invoices/{id}/payments`` sends it: the spec's ``Payment`` plus the
    ``note`` and ``category`` the live API has."""
    return {k: v for k, v in payment.items() if v is not None and k != "created_at"}


def balance_of(amount: int, payments: list[Record]) -> int:
    """What is still owed: the amount less what the payments that came in still hold (each
    one's amount less its refunds)."""
    paid: int = sum(
        p["amount"] - p.get("refunded_amount", 0) for p in payments if p["status"] in COLLECTED
    )
    return amount - paid


def check_refund(payment: Mapping[str, Any], body: Mapping[str, Any]) -> tuple[int, Errors]:
    """The refund ``body`` asks of ``payment``: ``amount`` cents (omitted: all that is left of
    it). Only a payment that succeeded is refunded, and at most what was not given back yet."""
    errors: Errors = {}
    for key in sorted(body.keys() - {"amount"}):
        add_error(errors, key, "is not a refund field (amount)")
    if payment["status"] != "succeeded":
        add_error(errors, "payment", f"is {payment['status']} and cannot be refunded")
        return 0, errors
    left = payment["amount"] - payment["refunded_amount"]
    amount = check_integer(body.get("amount", left), "amount", errors, minimum=1)
    if amount is not None and amount > left:
        given_back = payment["refunded_amount"]
        already = f"; {given_back} of it already refunded" if given_back else ""
        add_error(
            errors,
            "amount",
            f"is more than the payment can give back ({left} of {payment['amount']}{already})",
        )
    return amount or 0, errors


# ------------------------------------------------------------------------------- employees


def check_employee(value: Any, key: str, errors: Errors) -> Record | None:
    """An employee object as a data file holds it inside a job's ``assigned_employees``."""
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not value["id"]:
        add_error(errors, key, "must be an object with an id")
        return None
    employee: Record = {"id": value["id"]}
    for name in ("first_name", "last_name", "email", "mobile_number", "color_hex"):
        employee[name] = check_string(value.get(name), f"{key}.{name}", errors)
    employee["role"] = check_enum(value.get("role"), EMPLOYEE_ROLES, f"{key}.role", errors)
    return employee
