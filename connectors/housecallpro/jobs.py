"""Housecall Pro jobs as the connector gives and takes them.

The native job record is the API's job with the nested ``customer`` object reduced to
``customer_id`` (the spec nests the whole customer; some live payloads send ``customer_id``):
the mapping reads one reference, and a customer's own edits do not make its jobs look changed.
Everything else is kept as sent (``schedule``, ``work_timestamps``, ``total_amount``, …).

Writes send the spec's ``Job`` shape with nothing null: the customer both as ``customer_id``
(what the live API takes) and as the spec's ``customer: {"id": ...}``; read-only fields
(ids, timestamps, totals, work timestamps) are never sent. Clearing on an update sends the
field's empty value (``""``, ``[]``); fields without one (``work_status``, the schedule's
date-times and ``arrival_window``) cannot be cleared through the API and are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from syncengine.connector import NativeData, NativeRecord
from syncengine.connectors.housecallpro.paging import Pager
from syncengine.connectors.housecallpro.values import instant, same_instant
from syncengine.errors import NotFoundError

JOBS = "jobs"
READ_ONLY = frozenset(
    {
        "id",
        "created_at",
        "updated_at",
        "total_amount",
        "outstanding_balance",
        "work_timestamps",
        "customer",
    }
)
"""Keys of a job the API owns (``customer`` is carried as ``customer_id``)."""
_LIST_KEYS = frozenset({"tags", "assigned_employees"})
_UNCLEARABLE = frozenset({"work_status", "schedule", "address"})
"""Fields with no empty value the spec allows: a None for them is left out."""
_PATH_SPLIT = re.compile(r"[.\[]")
MATCHED_TEXT = ("description", "notes", "invoice_number")
MATCHED_TIMES = ("scheduled_start", "scheduled_end")


def job_record(item: dict[str, Any], job_id: str) -> NativeRecord:
    """The native record of a job as the API sent it (see the module docstring)."""
    data = dict(item)
    customer = data.pop("customer", None)
    if not isinstance(data.get("customer_id"), str) and isinstance(customer, dict):
        nested = customer.get("id")
        if isinstance(nested, str) and nested:
            data["customer_id"] = nested
    number = data.get("invoice_number")
    where = f"job {number} ({job_id})" if isinstance(number, str) and number else f"job {job_id}"
    return NativeRecord(id=job_id, data=data, location=where)


def top_key(path: str) -> str:
    """``schedule.scheduled_start`` / ``addresses[0].city`` -> ``schedule`` / ``addresses``."""
    return _PATH_SPLIT.split(path, maxsplit=1)[0]


def job_body(source: Mapping[str, Any], keys: Iterable[str], *, clear: bool = False) -> NativeData:
    """The request body for the ``keys`` of ``source`` (see the module docstring)."""
    body: NativeData = {}
    for key in keys:
        if key in READ_ONLY or key not in source:
            continue
        value = source[key]
        if key == "customer_id":
            if isinstance(value, str) and value:
                body["customer_id"] = value
                body["customer"] = {"id": value}
            continue
        if value is None:
            if not clear or key in _UNCLEARABLE:
                continue
            value = [] if key in _LIST_KEYS else ""
        if key == "schedule" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if v is not None}
            if not value:
                continue
        elif key == "address" and isinstance(value, Mapping):
            value = {
                k: ("" if v is None else v)
                for k, v in value.items()
                if v is not None or (clear and k not in ("id", "type"))
            }
        elif key == "assigned_employees" and isinstance(value, list):
            value = [
                {k: v for k, v in e.items() if v is not None} if isinstance(e, Mapping) else e
                for e in value
            ]
        body[key] = value
    return body


def search_params(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """List filters that narrow a search for the job ``data`` describes: its customer and
    its scheduled start."""
    params: list[tuple[str, str]] = []
    customer_id = data.get("customer_id")
    if isinstance(customer_id, str) and customer_id:
        params.append(("customer_id", customer_id))
    schedule = data.get("schedule")
    start = schedule.get("scheduled_start") if isinstance(schedule, Mapping) else None
    if isinstance(start, str) and instant(start) is not None:
        params += [("scheduled_start_min", start), ("scheduled_start_max", start)]
    return params


def same_job(wanted: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """Whether the job ``found`` is the one ``wanted`` describes: same customer, and the same
    description, notes, number and scheduled times where ``wanted`` has them."""
    customer_id = wanted.get("customer_id")
    if customer_id and found.get("customer_id") != customer_id:
        return False
    for key in MATCHED_TEXT:
        value = wanted.get(key)
        if isinstance(value, str) and value.strip():
            other = found.get(key)
            if not isinstance(other, str) or other.strip() != value.strip():
                return False
    schedule = wanted.get("schedule")
    theirs = found.get("schedule")
    if isinstance(schedule, Mapping):
        for key in MATCHED_TIMES:
            value = schedule.get(key)
            if value is None:
                continue
            other = theirs.get(key) if isinstance(theirs, Mapping) else None
            if not same_instant(value, other):
                return False
    return True


def identifying(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` says enough to recognise its job among a customer's jobs."""
    schedule = data.get("schedule")
    has_time = isinstance(schedule, Mapping) and any(schedule.get(k) for k in MATCHED_TIMES)
    has_text = any(isinstance(data.get(k), str) and data[k].strip() for k in MATCHED_TEXT)
    return has_time or has_text


class JobCustomers:
    """Job id -> customer id, for invoices that come without their customer (the live API
    sends invoices with ``job_id`` only).

    Filled for free while this connector reads, creates, updates or gets jobs. A job it has
    not seen is looked up with one read of the whole job list (once per connector instance),
    and, if still unknown (a job added since), with ``GET /jobs/{id}``.
    """

    def __init__(self, pager: Pager) -> None:
        self._pager = pager
        self._known: dict[str, str | None] = {}
        self.complete = False
        """True once every job was read: an unknown job is then fetched by id."""

    def learn(self, record: NativeRecord) -> None:
        customer_id = record.data.get("customer_id")
        self._known[record.id] = customer_id if isinstance(customer_id, str) else None

    def customer_of(self, job_id: str) -> str | None:
        if job_id in self._known:
            return self._known[job_id]
        if not self.complete:
            oldest_first = {"sort_by": "created_at", "sort_direction": "asc"}
            for job in self._pager.items("/jobs", JOBS, JOBS, oldest_first, guard_shrink=False):
                self.learn(job_record(job, str(job["id"])))
            self.complete = True
            if job_id in self._known:
                return self._known[job_id]
        return self.fetch(job_id)

    def fetch(self, job_id: str) -> str | None:
        """The customer of one job, known or read with ``GET /jobs/{id}`` (never by listing
        the jobs: an event-driven read asks for the few jobs its invoices name)."""
        if job_id in self._known:
            return self._known[job_id]
        try:
            found: Any = self._pager.http.get_json(job_path(job_id))
        except NotFoundError:
            found = None
        if isinstance(found, dict) and found.get("id") == job_id:
            self.learn(job_record(found, job_id))
        else:
            self._known[job_id] = None
        return self._known.get(job_id)


def job_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}"


class JobInvoices:
    """Job id -> the invoice its line items belong to, and invoice id -> its job, learnt
    from every invoice this connector reads, creates or gets (``Billing.invoice_record``).

    HCP keeps lines on jobs, not invoices; a job's lines are billed by its first invoice (the
    oldest; ties by id), as a job billed once has just that one. ``complete`` is True once
    every invoice was listed (a complete invoices read, or ``Billing.know_every_invoice``):
    a job then unknown has no invoice.

    A run that syncs no line items on this connector learns nothing (``wanted`` False, set by
    ``will_sync``): kept for every invoice, the ids and dates were about 350 bytes an invoice,
    held to the run's end. Whatever asks for them later (``LineItems``) wants them again, and
    finds them incomplete: its invoices are then listed or fetched, as for a connector that
    read none."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[str, str]] = {}
        """job id -> (created_at, invoice id) of its first invoice."""
        self._job_of: dict[str, str] = {}
        self._complete = False
        self._wanted = True

    @property
    def wanted(self) -> bool:
        """Whether the invoices read are learnt from."""
        return self._wanted

    @wanted.setter
    def wanted(self, value: bool) -> None:
        if not value:
            # the invoices read from now on are not learnt: what was complete is no longer
            self._complete = False
        self._wanted = value

    @property
    def complete(self) -> bool:
        return self._complete

    @complete.setter
    def complete(self, value: bool) -> None:
        # every invoice listed tells every job's only when each one was learnt
        self._complete = value and self._wanted

    def learn(self, invoice: Mapping[str, Any]) -> None:
        if not self._wanted:
            return
        job_id, invoice_id = invoice.get("job_id"), invoice.get("id")
        if not (isinstance(job_id, str) and job_id and isinstance(invoice_id, str)):
            return
        self._job_of[invoice_id] = job_id
        created = invoice.get("created_at")
        stamp = (created if isinstance(created, str) else "", invoice_id)
        known = self._first.get(job_id)
        if known is None or stamp < known or known[1] == invoice_id:
            self._first[job_id] = stamp

    def invoice_of(self, job_id: str) -> str | None:
        """The invoice a job's lines belong to, if this connector knows one."""
        first = self._first.get(job_id)
        return first[1] if first is not None else None

    def job_of(self, invoice_id: str) -> str | None:
        return self._job_of.get(invoice_id)

    def invoices_of(self, job_ids: Iterable[str]) -> frozenset[str]:
        """Every invoice this connector knows of the jobs ``job_ids`` (a job billed twice has
        two), in one pass over what it learnt."""
        jobs = set(job_ids)
        return frozenset(i for i, job_id in self._job_of.items() if job_id in jobs)

    def billed(self) -> list[tuple[str, str, str]]:
        """(job id, its first invoice's id, that invoice's created_at), oldest invoice first."""
        ordered = sorted(self._first.items(), key=lambda item: item[1])
        return [(job_id, invoice_id, created) for job_id, (created, invoice_id) in ordered]
