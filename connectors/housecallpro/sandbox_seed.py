"""Seeded jobs, invoices and payments for the HCP sandbox's generated customers.

``generate_work(customers, random_seed)`` gives about three quarters of the customers one to
three jobs; finished jobs are invoiced (now and then twice), and invoices are paid in full
(in one to four payments, sometimes after a failed attempt), paid in part, still open, drafts,
voided or canceled. On average a customer has about one invoice and an invoice about two
payments. An invoice's amount includes its tax (``tax_split``): 8.25 % on work that installs
or replaces parts, none on cleaning and servicing alone, so amount = subtotal + tax_amount.
Everything is a function of the arguments: the same customers and seed give the same ids,
numbers, amounts and timestamps.

It is built for size (the work of 100k customers in about two seconds): one ``Dice`` (cheap
draws), no parsing beyond each customer's creation time, cached timestamp formatting, nested
records shared where equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from syncengine.connectors.housecallpro.sandbox_fields import (
    Dice,
    Record,
    format_timestamp,
    hex_id,
    parse_timestamp,
)
from syncengine.connectors.housecallpro.sandbox_records import balance_of

HOUR = 3600
DAY = 86400
FIRST_JOB_NUMBER = 1001

_SERVICES = (
    "AC tune-up", "Furnace repair", "Water heater replacement", "Drain cleaning",
    "Leaking faucet", "Panel upgrade", "Ceiling fan install", "Duct cleaning",
    "Thermostat install", "Sump pump service", "Garbage disposal replacement",
    "Outlet repair", "Toilet repair", "Gutter cleaning", "Dryer vent cleaning",
)  # fmt: skip
_NOTES = (
    "Gate code 4411", "Dog in the back yard", "Call on arrival", "Park in the driveway",
    "Customer prefers mornings", "Side door entrance",
)  # fmt: skip
_JOB_TAGS = ("warranty", "maintenance-plan", "emergency", "follow-up", "commercial")
_EMPLOYEES = (
    ("Sam", "Ortiz", "field_tech", "#1e88e5"), ("Dana", "Brooks", "field_tech", "#43a047"),
    ("Lee", "Park", "field_tech", "#f4511e"), ("Alex", "Rivera", "field_tech", "#8e24aa"),
    ("Jordan", "Hale", "field_tech", "#00897b"), ("Casey", "Nguyen", "office_staff", "#6d4c41"),
    ("Morgan", "Reed", "admin", "#3949ab"), ("Riley", "Shaw", "field_tech", "#c0ca33"),
)  # fmt: skip

# cumulative weights for rng.choices
_JOB_STATUS = ("complete", "completed_unrated", "scheduled", "unscheduled", "in_progress",
               "user_canceled", "pro_canceled")  # fmt: skip
_JOB_STATUS_CUM = (55, 70, 80, 87, 92, 96, 100)
_METHODS = ("credit_card", "check", "cash", "ach", "other")
_METHODS_CUM = (45, 65, 80, 95, 100)
_JOBS_PER_CUSTOMER = (1, 1, 1, 2, 2, 3)
_PAYMENTS_WHEN_PAID = (1, 2, 2, 3, 3, 4, 4)
_PAYMENTS_WHEN_PARTLY = (1, 1, 2, 3)
_ARRIVAL_WINDOWS = (0, 60, 120, 240)
_AMOUNTS = ((2_500, 15_000), (15_000, 60_000), (60_000, 250_000), (250_000, 2_500_000))
"""Invoice amounts in cents: mostly small service calls, now and then a big installation."""
_AMOUNTS_CUM = (35, 75, 95, 100)
_UNTAXED = frozenset({"AC tune-up", "Drain cleaning", "Duct cleaning", "Gutter cleaning",
                      "Dryer vent cleaning", "Sump pump service"})  # fmt: skip
"""Services billed as labour alone: no sales tax."""
TAX_RATE_BP = 825
"""The seeded sales tax, in basis points (8.25 %)."""
_NOT_STARTED: Record = {"on_my_way_at": None, "started_at": None, "completed_at": None}


def generate_employees(random_seed: int = 0) -> list[Record]:
    """The pros jobs are assigned to (``pro_`` ids, the spec's ``Employee`` fields)."""
    rng = Dice(f"employees:{random_seed}")
    return [
        {
            "id": hex_id(rng, "pro_"),
            "first_name": first,
            "last_name": last,
            "email": f"{first}.{last}@pros.example.com".lower(),
            "mobile_number": f"555-{100 + n:03d}-{rng.between(1000, 9999):04d}",
            "role": role,
            "color_hex": color,
        }
        for n, (first, last, role, color) in enumerate(_EMPLOYEES)
    ]


@dataclass
class Work:
    """What ``generate_work`` makes, in creation order per customer."""

    jobs: list[Record] = field(default_factory=list)
    invoices: list[Record] = field(default_factory=list)
    payments: list[Record] = field(default_factory=list)


def generate_work(
    customers: Sequence[Record], employees: Sequence[Record], random_seed: int = 0
) -> Work:
    """Jobs, invoices and payments for ``customers`` (see the module docstring)."""
    maker = _WorkMaker(Dice(f"work:{random_seed}"), employees)
    for customer in customers:
        maker.customer(customer)
    return maker.work


class _WorkMaker:
    def __init__(self, rng: Dice, employees: Sequence[Record]) -> None:
        self.rng = rng
        self.employees = list(employees)
        self.work = Work()
        self.number = FIRST_JOB_NUMBER

    def customer(self, customer: Record) -> None:
        rng = self.rng
        if rng.random() >= 0.75:
            return
        if not (customer.get("email") or customer.get("mobile_number")):
            return  # a pro can neither reach nor bill someone without an e-mail or a phone
        when = parse_timestamp(customer["created_at"])
        service = next((a for a in customer["addresses"] if a["type"] == "service"), None)
        for _ in range(rng.pick(_JOBS_PER_CUSTOMER)):
            when += rng.between(HOUR, 40 * DAY)
            self.job(customer["id"], service, when)

    def job(self, customer_id: str, address: Record | None, created: int) -> None:
        rng = self.rng
        status = rng.weighted(_JOB_STATUS, _JOB_STATUS_CUM)
        start = (created + rng.between(1, 14) * DAY) // HOUR * HOUR + 8 * HOUR
        end = start + rng.between(1, 4) * HOUR
        created_at = updated_at = format_timestamp(created)
        stamps = _NOT_STARTED
        schedule: Record = {"scheduled_start": None, "scheduled_end": None}
        if status != "unscheduled":
            schedule = {
                "scheduled_start": format_timestamp(start),
                "scheduled_end": format_timestamp(end),
            }
        if status in ("in_progress", "complete", "completed_unrated"):
            started = updated_at = schedule["scheduled_start"]
            finished = None
            if status != "in_progress":
                finished = updated_at = schedule["scheduled_end"]
            stamps = {
                "on_my_way_at": format_timestamp(start - 20 * 60),
                "started_at": started,
                "completed_at": finished,
            }
        schedule["arrival_window"] = rng.pick(_ARRIVAL_WINDOWS)
        number = str(self.number)
        self.number += 1
        # nested records are shared where equal (the address, _NOT_STARTED): stored records
        # are never changed in place
        job: Record = {
            "id": hex_id(rng, "job_"),
            "invoice_number": number,
            "description": rng.pick(_SERVICES),
            "customer_id": customer_id,
            "address": address,
            "notes": rng.pick(_NOTES) if rng.random() < 0.3 else None,
            "work_status": status,
            "work_timestamps": stamps,
            "schedule": schedule,
            "assigned_employees": [] if status == "unscheduled" else self.crew(),
            "tags": [rng.pick(_JOB_TAGS)] if rng.random() < 0.2 else [],
            "created_at": created_at,
            "updated_at": updated_at,
        }
        self.work.jobs.append(job)
        if status in ("complete", "completed_unrated"):
            self.invoice(job, number, end)
            if rng.random() < 0.1:
                self.invoice(job, f"{number}-2", end + rng.between(1, 10) * DAY)
        elif status == "in_progress" and rng.random() < 0.2:
            self.invoice(job, number, start, draft=True)

    def crew(self) -> list[Record]:
        """One employee, or (a third of the time) two different ones."""
        staff, rng = self.employees, self.rng
        first = rng.between(0, len(staff) - 1)
        if rng.chance(2 / 3):
            return [staff[first]]
        return [staff[first], staff[(first + rng.between(1, len(staff) - 1)) % len(staff)]]

    def invoice(self, job: Record, number: str, done: int, *, draft: bool = False) -> None:
        rng = self.rng
        created = done + rng.between(10 * 60, 2 * DAY)
        low, high = rng.weighted(_AMOUNTS, _AMOUNTS_CUM)
        amount = rng.between(low, high)
        if rng.random() < 0.6:
            amount -= amount % 100  # whole dollars, mostly
        roll = 0.0 if draft else rng.random()
        status = "sent"
        if roll < 0.07:
            status = "draft"
        elif roll < 0.10:
            status = "voided"
        elif roll < 0.12:
            status = "canceled"
        sent = None if status == "draft" else created + rng.between(0, DAY)
        invoice_id = hex_id(rng, "inv_")
        payments: list[Record] = []
        if sent is not None and status == "sent":
            outcome = rng.random()
            if outcome < 0.74:
                payments = self.payments(invoice_id, amount, sent, rng.pick(_PAYMENTS_WHEN_PAID))
            elif outcome < 0.87:
                part = max(1, int(amount * (0.2 + 0.65 * rng.random())))
                count = min(part, rng.pick(_PAYMENTS_WHEN_PARTLY))
                payments = self.payments(invoice_id, part, sent, count)
            elif outcome < 0.89:
                payments = [self.payment(invoice_id, amount, sent + DAY, "pending")]
        balance = balance_of(amount, payments)
        created_at = format_timestamp(created)
        sent_at = None if sent is None else format_timestamp(sent)
        last = payments[-1]["processed_at"] if payments else None  # payments come in order
        paid_at = None
        if payments and balance == 0:
            status, paid_at = "paid", last
        subtotal, tax = tax_split(amount, 0 if job["description"] in _UNTAXED else TAX_RATE_BP)
        self.work.invoices.append(
            {
                "id": invoice_id,
                "invoice_number": number,
                "status": status,
                "amount": amount,
                "subtotal": subtotal,
                "tax_amount": tax,
                "outstanding_balance": balance,
                "customer_id": job["customer_id"],
                "job_id": job["id"],
                "due_at": format_timestamp((sent or created) + rng.pick((15, 30, 30)) * DAY),
                "sent_at": sent_at,
                "paid_at": paid_at,
                "created_at": created_at,
                "updated_at": last or sent_at or created_at,
            }
        )
        self.work.payments.extend(payments)

    def payments(self, invoice_id: str, total: int, sent: int, count: int) -> list[Record]:
        """``count`` succeeded payments adding up to ``total``, maybe after a failed one."""
        rng = self.rng
        cuts = sorted({rng.between(1, total - 1) for _ in range(count - 1)})
        parts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        when = sent
        made: list[Record] = []
        if rng.random() < 0.1:
            when += rng.between(HOUR, 3 * DAY)
            made.append(self.payment(invoice_id, parts[0], when, "failed"))
        for n, part in enumerate(parts):
            when += rng.between(HOUR, 12 * DAY)
            made.append(self.payment(invoice_id, part, when, "succeeded", first=n == 0))
        return made

    def payment(
        self, invoice_id: str, amount: int, when: int, status: str, *, first: bool = False
    ) -> Record:
        rng = self.rng
        method = rng.weighted(_METHODS, _METHODS_CUM)
        note = None
        if method == "check":
            note = f"Check #{rng.between(1000, 9999)}"
        elif first and rng.random() < 0.15:
            note = "Deposit"
        stamp = format_timestamp(when)
        return {
            "id": hex_id(rng, "pay_"),
            "invoice_id": invoice_id,
            "amount": amount,
            "refunded_amount": 0,
            "payment_method": method,
            "status": status,
            "processed_at": stamp,
            "note": note,
            "category": "payment",
            "created_at": stamp,
        }


def tax_split(amount: int, rate_bp: int) -> tuple[int, int]:
    """The subtotal and tax of an amount that includes tax at ``rate_bp`` basis points: the
    tax is the amount's share of it rounded half to even, so subtotal + tax is the amount
    exactly (no draw from the generator: the seeded data stays what it was)."""
    numerator, denominator = amount * rate_bp, 10_000 + rate_bp
    tax, rest = divmod(numerator, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and tax % 2):
        tax += 1
    return amount - tax, tax
