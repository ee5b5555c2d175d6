"""Sandbox data files (``syncengine sandbox --data FILE``): checked, then stored as given.

A data file is what ``SandboxState.dump()`` writes::

    {"customers": [...], "employees": [...], "jobs": [...], "invoices": [...], "payments": [...],
     "line_items": [...]}

Every collection is optional. Records use the stored forms described in
``sandbox_records``; missing ids, invoice numbers and timestamps are filled in
deterministically. References must resolve inside the file (a job's ``customer_id``, an
invoice's ``customer_id`` / ``job_id``, a payment's ``invoice_id``), and an invoice's
``outstanding_balance``, when given, must equal its amount less its succeeded payments (less
their refunds). An invoice without ``subtotal`` and ``tax_amount`` (a file from before they
existed) is untaxed: its subtotal is its amount; a payment without ``refunded_amount`` was not
refunded (unless its status is ``refunded``: then in full). A line item names its job
(``job_id``) and its ``position`` there (``sandbox_lines``).
Every problem is reported at once, located as ``FILE: invoices[3].amount``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from syncengine.connectors.housecallpro.sandbox_customers import (
    blank_customer,
    check_customer_fields,
    has_name,
)
from syncengine.connectors.housecallpro.sandbox_fields import (
    EPOCH,
    Errors,
    Record,
    add_error,
    check_integer,
    check_string,
    check_timestamp,
    format_timestamp,
    hex_id,
)
from syncengine.connectors.housecallpro.sandbox_lines import check_lines
from syncengine.connectors.housecallpro.sandbox_records import (
    INVOICE_STATUSES,
    balance_of,
    blank_invoice,
    blank_job,
    check_employee,
    check_invoice_fields,
    check_job_fields,
    check_payment_fields,
    check_schedule_order,
    settle_totals,
)
from syncengine.connectors.housecallpro.sandbox_seed import FIRST_JOB_NUMBER
from syncengine.errors import ConfigError, Problem

COLLECTIONS = ("customers", "employees", "jobs", "invoices", "payments", "line_items")
_WORK_STAMPS = ("on_my_way_at", "started_at", "completed_at")

Data = dict[str, list[Record]]


def check_data(data: Any, source: str) -> Data:
    """Check a data document and return it in stored form; ``ConfigError`` listing every
    problem, each located in ``source``."""
    if not isinstance(data, dict):
        raise ConfigError('must be a JSON object like {"customers": [...]}', location=source)
    checker = _Checker(source)
    for key in data:
        if key not in COLLECTIONS:
            checker.problems.append(
                Problem(
                    source, f"unknown collection {key!r}", fix=f"known: {', '.join(COLLECTIONS)}"
                )
            )
    result = checker.check(data)
    if checker.problems:
        raise ConfigError(checker.problems)
    return result


def load_data_file(path: str) -> Data:
    """Read and check a sandbox data file; ``ConfigError`` naming the file when it is bad."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read sandbox data file: {exc}", location=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", location=path
        ) from None
    return check_data(data, path)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.ids = random.Random("sandbox-data")
        self.employees: dict[str, Record] = {}
        self.given_balances: dict[str, int] = {}
        """Invoice id -> the ``outstanding_balance`` the file states, checked at the end."""

    # -- the collections, in dependency order

    def check(self, data: dict[str, Any]) -> Data:
        customers = self.customers(self.items(data, "customers"))
        for _index, where, item in self.items(data, "employees"):
            errors: Errors = {}
            employee = check_employee(item, "employee", errors)
            if employee is not None and employee["id"] in self.employees:
                add_error(errors, "id", f"duplicate id {employee['id']!r}")
            if not self.report(where, errors) and employee is not None:
                self.employees[employee["id"]] = employee
        customer_ids = {c["id"] for c in customers}
        jobs = self.jobs(self.items(data, "jobs"), customer_ids)
        invoices = self.invoices(self.items(data, "invoices"), customer_ids, jobs)
        payments = self.payments(self.items(data, "payments"), invoices)
        lines, bad = check_lines(self.items(data, "line_items"), {j["id"] for j in jobs})
        for where, errors in bad:
            self.report(where, errors)
        return {
            "customers": customers,
            "employees": list(self.employees.values()),
            "jobs": jobs,
            "invoices": [record for record, _where in invoices.values()],
            "payments": payments,
            "line_items": lines,
        }

    def customers(self, items: list[tuple[int, str, dict[str, Any]]]) -> list[Record]:
        seen: set[str] = set()
        result: list[Record] = []
        for index, where, item in items:
            patch, errors = check_customer_fields(item)
            if not has_name(patch):
                add_error(errors, "name", "is missing")
            record_id = self.record_id(item, "cus_", seen, errors)
            stamps = self.stamps(item, index, errors)
            if self.report(where, errors):
                continue
            record = blank_customer(record_id, stamps["created_at"])
            record.update(patch)
            record["updated_at"] = stamps["updated_at"]
            record["addresses"] = [
                {**a, "id": a["id"] or hex_id(self.ids, "adr_")} for a in patch.get("addresses", [])
            ]
            result.append(record)
        return result

    def jobs(
        self, items: list[tuple[int, str, dict[str, Any]]], customer_ids: set[str]
    ) -> list[Record]:
        seen: set[str] = set()
        result: list[Record] = []
        unnumbered: list[Record] = []
        for index, where, item in items:
            body = {k: v for k, v in item.items() if k != "assigned_employees"}
            patch, errors = check_job_fields(body)
            record_id = self.record_id(item, "job_", seen, errors)
            customer_id = patch.get("customer_id")
            if customer_id is None and not errors:
                add_error(errors, "customer_id", "is missing")
            elif customer_id is not None and customer_id not in customer_ids:
                add_error(errors, "customer_id", f"customer {customer_id} is not in this file")
            employees = self.job_employees(item.get("assigned_employees"), errors)
            schedule = {"scheduled_start": None, "scheduled_end": None, "arrival_window": None}
            schedule.update(patch.get("schedule", {}))
            check_schedule_order(schedule, errors)
            work = item.get("work_timestamps") or {}
            if not isinstance(work, dict):
                add_error(errors, "work_timestamps", "must be an object")
                work = {}
            work_stamps = {
                name: check_timestamp(work.get(name), f"work_timestamps.{name}", errors)
                for name in _WORK_STAMPS
            }
            stamps = self.stamps(item, index, errors)
            if self.report(where, errors) or customer_id is None:
                continue
            job = blank_job(record_id, customer_id, patch.get("invoice_number") or "", "")
            job.update({k: v for k, v in patch.items() if k not in ("schedule", "address")})
            job["schedule"] = schedule
            address = patch.get("address")
            job["address"] = (
                None
                if address is None
                else {**address, "id": address["id"] or hex_id(self.ids, "adr_")}
            )
            job["assigned_employees"] = employees
            job["work_timestamps"] = work_stamps
            job.update(stamps)
            if not job["invoice_number"]:
                unnumbered.append(job)
            result.append(job)
        self.number(unnumbered, result)
        return result

    def invoices(
        self,
        items: list[tuple[int, str, dict[str, Any]]],
        customer_ids: set[str],
        jobs: list[Record],
    ) -> dict[str, tuple[Record, str]]:
        jobs_by_id = {j["id"]: j for j in jobs}
        seen: set[str] = set()
        numbers: set[str] = set()
        result: dict[str, tuple[Record, str]] = {}
        given_balances: dict[str, int] = {}
        unnumbered: list[tuple[Record, Record | None]] = []
        for index, where, item in items:
            patch, errors = check_invoice_fields(item, creating=True)
            totals = settle_totals(None, patch, errors) if not errors else {}
            if "status" in item and item["status"] is None:
                add_error(errors, "status", f"must be one of {', '.join(INVOICE_STATUSES)}")
            record_id = self.record_id(item, "inv_", seen, errors)
            job = None
            job_id = patch.get("job_id")
            if job_id is not None:
                job = jobs_by_id.get(job_id)
                if job is None:
                    add_error(errors, "job_id", f"job {job_id} is not in this file")
            customer_id = patch.get("customer_id")
            if customer_id is not None and customer_id not in customer_ids:
                add_error(errors, "customer_id", f"customer {customer_id} is not in this file")
            elif customer_id is not None and job is not None and job["customer_id"] != customer_id:
                add_error(errors, "customer_id", "is not the customer of the job")
            number = patch.get("invoice_number")
            if number is not None and number in numbers:
                add_error(errors, "invoice_number", f"duplicate invoice number {number!r}")
            balance = check_integer(item.get("outstanding_balance"), "outstanding_balance", errors)
            stamps = self.stamps(item, index, errors)
            extra = {
                name: check_timestamp(item.get(name), name, errors)
                for name in ("sent_at", "paid_at")
            }
            if self.report(where, errors):
                continue
            invoice = blank_invoice(record_id, number or "", totals["amount"], "")
            invoice.update(patch)
            invoice.update(totals)
            invoice["customer_id"] = customer_id or (job["customer_id"] if job else None)
            invoice.update(stamps)
            invoice.update(extra)
            if number is None:
                unnumbered.append((invoice, job))
            else:
                numbers.add(number)
            if balance is not None:
                given_balances[record_id] = balance
            result[record_id] = (invoice, where)
        for invoice, job in unnumbered:
            base = job["invoice_number"] if job else None
            invoice["invoice_number"] = self.free_number(base, numbers, jobs, result)
            numbers.add(invoice["invoice_number"])
        self.given_balances.update(given_balances)
        return result

    def payments(
        self, items: list[tuple[int, str, dict[str, Any]]], invoices: dict[str, tuple[Record, str]]
    ) -> list[Record]:
        seen: set[str] = set()
        result: list[Record] = []
        by_invoice: dict[str, list[Record]] = {}
        for index, where, item in items:
            payment, errors = check_payment_fields(item)
            record_id = self.record_id(item, "pay_", seen, errors)
            invoice_id = check_string(item.get("invoice_id"), "invoice_id", errors)
            if invoice_id is None and "invoice_id" not in errors:
                add_error(errors, "invoice_id", "is missing")
            elif invoice_id is not None and invoice_id not in invoices:
                add_error(errors, "invoice_id", f"invoice {invoice_id} is not in this file")
            created = check_timestamp(item.get("created_at"), "created_at", errors)
            if self.report(where, errors) or invoice_id is None:
                continue
            processed = payment["processed_at"] or format_timestamp(EPOCH + index)
            record: Record = {
                "id": record_id,
                "invoice_id": invoice_id,
                **payment,
                "processed_at": processed,
                "created_at": created or processed,
            }
            by_invoice.setdefault(invoice_id, []).append(record)
            result.append(record)
        for invoice_id, (invoice, where) in invoices.items():
            balance = balance_of(invoice["amount"], by_invoice.get(invoice_id, []))
            given = self.given_balances.get(invoice_id)
            if given is not None and given != balance:
                self.problems.append(
                    Problem(
                        f"{where}.outstanding_balance",
                        f"is {given}, but the amount less the succeeded payments (less their "
                        f"refunds) is {balance}",
                        fix="leave outstanding_balance out: the sandbox computes it",
                    )
                )
            invoice["outstanding_balance"] = balance
        return result

    # -- helpers

    def items(self, data: dict[str, Any], name: str) -> list[tuple[int, str, dict[str, Any]]]:
        value = data.get(name, [])
        if not isinstance(value, list):
            self.problems.append(Problem(f"{self.source}: {name}", "must be an array"))
            return []
        found = []
        for index, item in enumerate(value):
            where = f"{self.source}: {name}[{index}]"
            if isinstance(item, dict):
                found.append((index, where, item))
            else:
                self.problems.append(Problem(where, "must be an object"))
        return found

    def record_id(self, item: dict[str, Any], prefix: str, seen: set[str], errors: Errors) -> str:
        record_id = item.get("id")
        if record_id is None:
            record_id = hex_id(self.ids, prefix)
        elif not isinstance(record_id, str) or not record_id:
            add_error(errors, "id", "must be a non-empty string")
            return ""
        elif record_id in seen:
            add_error(errors, "id", f"duplicate id {record_id!r}")
        seen.add(record_id)
        return str(record_id)

    @staticmethod
    def stamps(item: dict[str, Any], index: int, errors: Errors) -> dict[str, str]:
        """``created_at`` (default: ``EPOCH`` + index seconds) and ``updated_at`` (default:
        ``created_at``), in the stored form."""
        created = check_timestamp(item.get("created_at"), "created_at", errors)
        updated = check_timestamp(item.get("updated_at"), "updated_at", errors)
        created = created or format_timestamp(EPOCH + index)
        return {"created_at": created, "updated_at": updated or created}

    def job_employees(self, value: Any, errors: Errors) -> list[Record]:
        if value is None:
            return []
        if not isinstance(value, list):
            add_error(errors, "assigned_employees", "must be an array of objects")
            return []
        found = []
        for i, item in enumerate(value):
            employee = check_employee(item, f"assigned_employees[{i}]", errors)
            if employee is not None:
                employee = self.employees.setdefault(employee["id"], employee)
                found.append(employee)
        return found

    def report(self, where: str, errors: Errors) -> bool:
        for field, messages in errors.items():
            self.problems.extend(Problem(f"{where}.{field}", m) for m in messages)
        return bool(errors)

    @staticmethod
    def number(unnumbered: list[Record], jobs: Iterable[Record]) -> None:
        """Give jobs without an invoice number the next numbers after the highest one."""
        used = [
            int(j["invoice_number"].partition("-")[0])
            for j in jobs
            if j["invoice_number"].partition("-")[0].isdigit()
        ]
        next_number = max([FIRST_JOB_NUMBER - 1, *used]) + 1
        for job in unnumbered:
            job["invoice_number"] = str(next_number)
            next_number += 1

    @staticmethod
    def free_number(
        base: str | None,
        numbers: set[str],
        jobs: list[Record],
        invoices: dict[str, tuple[Record, str]],
    ) -> str:
        """The job's number (``1043``, ``1043-2``, …) or the next number after every job's and
        invoice's."""
        if base:
            candidate, n = base, 1
            while candidate in numbers:
                n += 1
                candidate = f"{base}-{n}"
            return candidate
        used = [
            int(number.partition("-")[0])
            for number in [
                *(j["invoice_number"] for j in jobs),
                *numbers,
                *(i["invoice_number"] for i, _ in invoices.values()),
            ]
            if number.partition("-")[0].isdigit()
        ]
        return str(max([FIRST_JOB_NUMBER - 1, *used]) + 1)
