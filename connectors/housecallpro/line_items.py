"""Housecall Pro line items: read per job within the request floor, written one
``bulk_update`` per job.

HCP keeps lines on jobs (``spec/HCP-REAL-API-NOTES.md``, Line items): ``GET
/jobs/{job_id}/line_items`` lists a job's lines (read in the list envelope, a line named by its
``uuid``), ``PUT /jobs/{job_id}/line_items/bulk_update`` with ``{"line_items": [...]}``
changes the lines that carry a ``uuid`` and creates the others.

**The native record** is the line as the API sends it, plus what the connector knows of it:
``job_id``; ``invoice_id``, the job's first invoice (the oldest: a job billed once has just
that one; ``jobs.JobInvoices``); ``position``, its place in the job's list (1, 2, …); and
``amount`` where the API leaves it out, computed as ``quantity × unit_price`` half to even
(``model.line_amount``). Its id is the ``uuid``. Those four are the connector's: never sent.

**Reads** are of the jobs behind the invoices (a job without an invoice bills nothing), and
cost, besides the invoice list a read of invoices by this instance usually gave already:

- a **partial pass** (the usual one): the job list newest first down to the read mark
  (``sort_by=updated_at``: one request when nothing changed, as ``incremental`` reads it), and
  one ``GET /jobs/{id}/line_items`` per invoiced job changed since the mark, or whose first
  invoice is new since the last pass (an invoice created for an old job need not touch the
  job). A job that did not change is not asked: its lines are as the last pass saw them;
- a **complete pass** (no read mark, the jobs carry no usable ``updated_at``, or
  ``full_every_hours`` since the last one): one request for the mark (the job list's first
  page, newest first, before anything else is read) and one ``GET`` per invoiced job. Only a
  complete pass sees a line deleted in HCP.

The token (``Connector.read_incremental``) holds the jobs' mark as ``incremental`` keeps it,
the ids of the jobs read at exactly that ``updated_at`` (so that the newest job is not read
again by every quiet pass, as a list listing "at or after" would), and the newest first
invoice's ``created_at`` with the ids of the invoices created then. That a job's
``updated_at`` moves when its lines change is what the sandbox does and is UNCONFIRMED on the
live API: a change it does not stamp is seen by the next complete pass. So is a change made
in the same second as the mark, after the pass read that job.

Per-job lists are read ``concurrency`` at a time, in order, through the client's rate limit.

**Writes** are held per job (``Connector.buffers``) and sent at ``flush``, one job at a time:
``GET`` the job's lines as they are now, then one ``bulk_update`` with *every* line of the job
(the ones not written as they are, with their ``uuid``; the written ones with the changes; the
new ones, without a ``uuid``, last). What the live API does with lines a ``bulk_update``
leaves out is not documented (kept? deleted?); sending them all as they are is right either
way, and the ``GET`` just before keeps the window in which someone's edit could be sent back
stale to milliseconds. The answer (or, when it has no lines, the job's list read again) gives
the created lines' ``uuid`` s: the lines with a ``uuid`` the job did not have, in the order
sent. Deletes are not supported (``delete=False``): a line left out may well be kept, and the
API has no other way. Moving a line to another job is refused (a ``RecordError``).

A ``bulk_update`` is never retried blindly (it creates lines). When its outcome is unknown (a
timeout, a 5xx), the job's lines are read once more: the creates are taken as made when the
list holds exactly as many new lines, and each update when the line holds what was sent;
anything else fails, alone, and is written again by the next run.
"""

from __future__ import annotations

import decimal
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from syncengine.connector import NativeData, NativeRecord, ReadPass
from syncengine.connectors.housecallpro.incremental import NewestFirst
from syncengine.connectors.housecallpro.jobs import JOBS, JobInvoices
from syncengine.connectors.housecallpro.paging import Item
from syncengine.errors import (
    AuthError,
    ConnectorError,
    NotFoundError,
    RecordError,
    RetriableError,
)
from syncengine.incremental import HighWater, Mark, decode_token, encode_token, full_pass_due
from syncengine.model import line_amount, norm_decimal

if TYPE_CHECKING:
    from syncengine.connectors.housecallpro.connector import HousecallProConnector

LINE_ITEMS = "line_items"
UUID = "uuid"
JOB_ID, INVOICE_ID, POSITION, AMOUNT = "job_id", "invoice_id", "position", "amount"
DERIVED = frozenset({JOB_ID, INVOICE_ID, POSITION})
"""Keys the connector adds to a line (and ``amount`` where the API gives none): never sent."""
WRITABLE = (
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
"""A line's keys a ``bulk_update`` sends (besides its ``uuid``)."""
_CLEARABLE = frozenset({"description", "service_item_id", "service_item_type"})
"""Text a write may clear (sent as ""); other fields have no empty value and are left out."""
NEW = "new:"
"""The stand-in id of a line to be created, until the flush gives it its ``uuid``."""
_WINDOW_PER_WORKER = 4
UPDATED_AT = "updated_at"


def lines_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}/line_items"


def line_record(item: Item, job_id: str, invoice_id: str | None, position: int) -> NativeRecord:
    """The native record of one line of a job's list (see the module docstring)."""
    data = dict(item)
    data[JOB_ID] = job_id
    if invoice_id is not None:
        data[INVOICE_ID] = invoice_id
    data[POSITION] = position
    if not isinstance(data.get(AMOUNT), int):
        computed = _amount(data.get("quantity"), data.get("unit_price"))
        if computed is not None:
            data[AMOUNT] = computed
    line_id = str(data[UUID])
    return NativeRecord(id=line_id, data=data, location=f"line {position} of job {job_id}")


def _amount(quantity: Any, unit_price: Any) -> int | None:
    if isinstance(unit_price, bool) or not isinstance(unit_price, int):
        return None
    try:
        text = norm_decimal(quantity, places=12)
    except ValueError:
        return None
    return line_amount(text, unit_price) if text is not None else None


# ------------------------------------------------------------------------------ the token


@dataclass(frozen=True)
class LineMarks:
    """What a line items token holds (see the module docstring)."""

    jobs: Mark = field(default_factory=Mark)
    at_mark: frozenset[str] = frozenset()
    """Jobs whose ``updated_at`` is the mark, already read."""
    invoices_since: str | None = None
    """The newest first invoice's ``created_at`` the last pass knew."""
    invoices_at: frozenset[str] = frozenset()
    """The first invoices created at exactly ``invoices_since``, already read."""

    def encode(self) -> str:
        data = json.loads(encode_token(self.jobs))
        data["at"] = sorted(self.at_mark)
        data["invoices"] = {"since": self.invoices_since, "at": sorted(self.invoices_at)}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, token: str | None) -> LineMarks:
        """The marks of a token; anything unreadable is no mark (a complete pass)."""
        jobs = decode_token(token)
        try:
            data = json.loads(token) if token else {}
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        invoices = data.get("invoices")
        invoices = invoices if isinstance(invoices, dict) else {}
        since = invoices.get("since")
        return cls(
            jobs,
            _ids(data.get("at")),
            since if isinstance(since, str) else None,
            _ids(invoices.get("at")),
        )


def _ids(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


# ------------------------------------------------------------------------------ writes


@dataclass
class _JobWrites:
    """The writes held for one job until the flush."""

    job_id: str
    updates: dict[str, NativeData] = field(default_factory=dict)
    """uuid -> the line as it should be (the engine's ``full``)."""
    creates: list[tuple[str, NativeData]] = field(default_factory=list)
    """(stand-in id, the new line), in the order the engine created them."""


class LineItems:
    """The line items of one connector instance: its reads and its held writes (see the
    module docstring)."""

    def __init__(
        self, connector: HousecallProConnector, clock: Callable[[], float] = time.time
    ) -> None:
        self.connector = connector
        self.clock = clock
        self.http = connector.http
        self.pager = connector.pager
        self.billing = connector.billing
        self.concurrency = max(1, connector.opts.concurrency)
        self.every_hours = connector.opts.full_every_hours
        self._held: dict[str, _JobWrites] = {}
        self._written: dict[str, NativeRecord | Exception] = {}
        """stand-in or uuid -> what the flush made of that write (or why it failed)."""
        self._sent: set[str] = set()
        """The jobs whose ``bulk_update`` was sent since ``invoices_changed`` last asked: HCP
        totals their invoices again."""

    @property
    def _job_invoices(self) -> JobInvoices:
        """Which invoice bills each job, learnt from here on (a run told it syncs no line
        items learnt none; what it lacks is listed or fetched where asked)."""
        known = self.billing.job_invoices
        known.wanted = True
        return known

    # -- reads

    def read(self, token: str | None) -> ReadPass:
        """The pass the token calls for: complete when it holds no usable mark or one is due,
        partial otherwise (see the module docstring)."""
        marks = LineMarks.decode(token)
        started = self.clock()
        jobs = marks.jobs
        if full_pass_due(jobs, started, self.every_hours) or jobs.no_mark:
            return self._complete(started)
        return self._partial(marks)

    def read_all(self) -> Iterator[NativeRecord]:
        """Every line of every invoiced job (a read without a token)."""
        billed = self._billed()
        yield from self._lines_of([(job_id, invoice_id) for job_id, invoice_id, _ in billed])

    def _complete(self, started: float) -> ReadPass:
        found: dict[str, Any] = {}

        def records() -> Iterator[NativeRecord]:
            listing = NewestFirst(self.connector, JOBS, None)
            found["top"], found["why"] = listing.newest()
            found["at"] = listing.at_top
            billed = self._billed()
            found["billed"] = billed
            yield from self._lines_of([(job_id, invoice_id) for job_id, invoice_id, _ in billed])

        def finish() -> str:
            why = found.get("why", "")
            top = None if why else found.get("top")
            jobs = Mark(top, started, why)
            return _marks(jobs, found.get("at", frozenset()), found.get("billed", [])).encode()

        return ReadPass(records(), complete=True, finish=finish)

    def _partial(self, marks: LineMarks) -> ReadPass:
        since = marks.jobs.since
        assert since is not None  # a partial pass is made only from a mark
        listing = NewestFirst(self.connector, JOBS, since)
        seen: dict[str, Any] = {}

        def records() -> Iterator[NativeRecord]:
            changed = {str(item["id"]): item.get(UPDATED_AT) for item in listing.items()}
            mark_text = str(since)
            wanted = [
                job_id
                for job_id, stamp in changed.items()
                if not (stamp == mark_text and job_id in marks.at_mark)
            ]
            billed = self._billed(wanted)
            seen["billed"] = billed
            first = {job_id: invoice_id for job_id, invoice_id, _ in billed}
            order: dict[str, str] = {}
            for job_id in wanted:
                if job_id in first:
                    order[job_id] = first[job_id]
            for job_id, invoice_id, created in billed:
                if _new_invoice(created, invoice_id, marks):
                    order.setdefault(job_id, invoice_id)
            seen["changed"] = changed
            yield from self._lines_of(list(order.items()))

        def finish() -> str:
            billed = seen.get("billed", [])
            if listing.why:
                left = LineMarks(Mark(None, marks.jobs.full_at, listing.why))
                return _marks(left.jobs, frozenset(), billed).encode()
            if listing.tally.shrank:
                jobs, at = marks.jobs, marks.at_mark
            else:
                water = HighWater(since)
                water.see(listing.top)
                jobs = Mark(water.value, marks.jobs.full_at)
                stamp = str(water.value)
                changed = seen.get("changed", {})
                at = frozenset(j for j, s in changed.items() if s == stamp)
                if stamp == str(since):
                    at |= marks.at_mark
            return _marks(jobs, at, billed, marks).encode()

        return ReadPass(records(), complete=False, finish=finish)

    def _billed(self, wanted: Iterable[str] = ()) -> list[tuple[str, str, str]]:
        """Every invoiced job with its first invoice; the invoices are listed first when no
        complete invoices read of this instance knows them all and a job asked for is
        unknown (or, without ``wanted``, always)."""
        known = self._job_invoices
        asked = list(wanted)
        if not known.complete and (not asked or any(known.invoice_of(j) is None for j in asked)):
            self.billing.know_every_invoice()
        return known.billed()

    def _lines_of(self, jobs: Sequence[tuple[str, str]]) -> Iterator[NativeRecord]:
        """The lines of each job, in order, read ``concurrency`` jobs at a time."""
        for (job_id, invoice_id), items in _in_order(jobs, self._fetch, self.concurrency):
            for position, item in enumerate(items, start=1):
                yield line_record(item, job_id, invoice_id, position)

    def _fetch(self, job: tuple[str, str]) -> list[Item]:
        try:
            return list(
                self.pager.items(
                    lines_path(job[0]),
                    LINE_ITEMS,
                    LINE_ITEMS,
                    guard_shrink=False,
                    ahead=False,
                    id_key=UUID,
                    vanishes=True,
                )
            )
        except NotFoundError:  # the job went away since it was listed
            return []

    def find(self, data: NativeData) -> list[NativeRecord]:
        """The lines of ``data``'s job that hold its values (an interrupted create)."""
        job_id = self.job_of(data)
        invoice_id = self._job_invoices.invoice_of(job_id)
        wanted = {k: data[k] for k in WRITABLE if data.get(k) not in (None, "")}
        found = []
        for position, item in enumerate(self._fetch((job_id, "")), start=1):
            if all(_same(k, v, item.get(k)) for k, v in wanted.items()):
                found.append(line_record(item, job_id, invoice_id, position))
        return found

    # -- writes

    def create(self, data: NativeData, key: str) -> NativeRecord:
        """Hold a new line for its job's ``bulk_update``; its stand-in id is replaced at the
        flush (``flushed``)."""
        job_id = self.job_of(data)
        stand_in = f"{NEW}{key}"
        self._held.setdefault(job_id, _JobWrites(job_id)).creates.append((stand_in, dict(data)))
        return NativeRecord(stand_in, dict(data))

    def update(self, line_id: str, patch: NativeData, full: NativeData) -> NativeRecord:
        """Hold a changed line (``full``: the whole line as it should be) for its job's
        ``bulk_update``. A change of invoice that would move it to another job is refused."""
        job_id = full.get(JOB_ID)
        if not isinstance(job_id, str) or not job_id:
            raise RecordError(f"line {line_id} does not say which job it is on")
        if INVOICE_ID in patch or JOB_ID in patch:
            target = self.job_of({k: v for k, v in patch.items() if k in (JOB_ID, INVOICE_ID)})
            if target != job_id:
                raise RecordError(
                    f"line {line_id} cannot move to another job in Housecall Pro (its lines "
                    "belong to their job); delete it there and add it to the other invoice"
                )
        self._held.setdefault(job_id, _JobWrites(job_id)).updates[line_id] = dict(full)
        return NativeRecord(line_id, dict(full))

    def job_of(self, data: Mapping[str, Any]) -> str:
        """The job a line is on: its ``job_id``, else its invoice's job (looked up with
        ``GET /invoices/{id}`` when no read of this instance listed that invoice)."""
        job_id = data.get(JOB_ID)
        if isinstance(job_id, str) and job_id:
            return job_id
        invoice_id = data.get(INVOICE_ID)
        if not isinstance(invoice_id, str) or not invoice_id:
            raise RecordError("a line needs its invoice (Housecall Pro keeps lines on jobs)")
        known = self._job_invoices.job_of(invoice_id)
        if known is None:
            self.billing.get_invoice(invoice_id)  # learns its job
            known = self._job_invoices.job_of(invoice_id)
        if known is None:
            raise RecordError(
                f"invoice {invoice_id} has no job, and Housecall Pro keeps lines on jobs"
            )
        return known

    def flush(self) -> None:
        """Send the held writes: per job, a ``GET`` of its lines and one ``bulk_update``,
        ``concurrency`` jobs at a time. A job's failure is its writes' alone (``flushed``
        raises it); refused credentials stop the flush."""
        held, self._held = list(self._held.values()), {}
        if not held:
            return
        workers = min(self.concurrency, len(held))
        name = f"{self.pager.connector}-lines"
        with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
            outcomes = list(pool.map(self._flush_job, held))
        for writes, outcome in zip(held, outcomes, strict=True):
            if isinstance(outcome, AuthError):
                raise outcome
            if isinstance(outcome, Exception):
                for name in [*writes.updates, *(s for s, _ in writes.creates)]:
                    self._written[name] = outcome
            else:
                self._written.update(outcome)
                self._sent.add(writes.job_id)

    def invoices_changed(self) -> frozenset[str]:
        """The invoices of the jobs whose lines the flushes since the last call wrote: HCP
        derived their subtotal, tax and amount from those lines, so they changed too."""
        sent, self._sent = self._sent, set()
        return self._job_invoices.invoices_of(sent) if sent else frozenset()

    def flushed(self, answered: NativeRecord) -> NativeRecord:
        """What the flush made of one held write: the line with its ``uuid`` (a create), as
        the job's list now shows it; the write's own failure is raised."""
        outcome = self._written.pop(answered.id, None)
        if outcome is None:
            return answered
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _flush_job(self, writes: _JobWrites) -> dict[str, NativeRecord | Exception] | Exception:
        try:
            return self._send(writes)
        except (ConnectorError, RecordError) as exc:
            return exc

    def _send(self, writes: _JobWrites) -> dict[str, NativeRecord | Exception]:
        job_id = writes.job_id
        current = self._fetch((job_id, ""))
        before = [str(item[UUID]) for item in current]
        sent: list[dict[str, Any]] = []
        out: dict[str, NativeRecord | Exception] = {}
        for item in current:
            line_id = str(item[UUID])
            wanted = writes.updates.get(line_id)
            sent.append(_body(wanted if wanted is not None else item, line_id, clear=True))
        new = [_body(data, None, clear=False) for _stand_in, data in writes.creates]
        path = f"{lines_path(job_id)}/bulk_update"
        try:
            response = self.http.request("PUT", path, json={LINE_ITEMS: sent + new}, retry=False)
            after = _lines_in(self.http.decode("PUT", path, response))
            if after is None:
                after = self._fetch((job_id, ""))
        except RetriableError:
            after = self._fetch((job_id, ""))  # the outcome is unknown: look
            return self._judge(writes, before, sent, after, out, unknown=True)
        return self._judge(writes, before, sent, after, out, unknown=False)

    def _judge(
        self,
        writes: _JobWrites,
        before: list[str],
        sent: list[dict[str, Any]],
        after: list[Item],
        out: dict[str, NativeRecord | Exception],
        *,
        unknown: bool,
    ) -> dict[str, NativeRecord | Exception]:
        """The records the writes of one job made, from the job's lines after the request.
        With ``unknown`` (the request's outcome was not known), only what the lines show was
        written counts; the rest fails (RetriableError)."""
        job_id = writes.job_id
        invoice_id = self._job_invoices.invoice_of(job_id)
        where = f"PUT {lines_path(job_id)}/bulk_update"
        records = {
            str(item[UUID]): line_record(item, job_id, invoice_id, position)
            for position, item in enumerate(after, start=1)
            if isinstance(item, dict) and item.get(UUID)
        }
        made = [line_id for line_id in records if line_id not in before]
        by_id = {str(body[UUID]): body for body in sent}
        for line_id in writes.updates:
            record = records.get(line_id)
            if record is None:
                out[line_id] = _not_there(line_id, where)
            elif unknown and not _holds(record.data, by_id[line_id]):
                out[line_id] = RetriableError(
                    f"{where}: no answer, and line {line_id} does not show the change"
                )
            else:
                out[line_id] = record
        if writes.creates:
            if len(made) == len(writes.creates):
                for (stand_in, _data), line_id in zip(writes.creates, made, strict=True):
                    out[stand_in] = records[line_id]
            else:
                why = RetriableError(
                    f"{where}: {len(writes.creates)} lines were sent to be created and the job "
                    f"shows {len(made)} new ones; which is which cannot be told"
                )
                for stand_in, _data in writes.creates:
                    out[stand_in] = why
        return out


# ------------------------------------------------------------------------------ helpers


def _marks(
    jobs: Mark,
    at: frozenset[str],
    billed: Sequence[tuple[str, str, str]],
    before: LineMarks | None = None,
) -> LineMarks:
    """The token's marks after a pass: the jobs' as given, the invoices' from the newest
    first invoice known (kept from ``before`` when none is newer)."""
    water = HighWater(before.invoices_since if before is not None else None)
    for _job, _invoice, created in billed:
        water.see(created or None)
    since = water.value if isinstance(water.value, str) else None
    newest = frozenset(invoice for _job, invoice, created in billed if created == since)
    if before is not None and since == before.invoices_since:
        newest |= before.invoices_at
    return LineMarks(jobs, at, since, newest)


def _new_invoice(created: str, invoice_id: str, marks: LineMarks) -> bool:
    """Whether a job's first invoice is new since the last pass (its lines not read yet)."""
    since = marks.invoices_since
    if since is None or not created:
        return since is None
    if created == since:
        return invoice_id not in marks.invoices_at
    return created > since


def _body(source: Mapping[str, Any], line_id: str | None, *, clear: bool) -> dict[str, Any]:
    """One line of a ``bulk_update``: its ``uuid`` (an existing line) and its writable keys
    in the shapes the API reads (a number for the quantity, nothing null)."""
    body: dict[str, Any] = {UUID: line_id} if line_id is not None else {}
    for key in WRITABLE:
        if key not in source:
            continue
        value = source[key]
        if value is None:
            if not (clear and key in _CLEARABLE):
                continue
            value = ""
        elif key == "quantity":
            value = _number(value)
        body[key] = value
    return body


def _number(value: Any) -> Any:
    """A quantity as a JSON number (text such as ``"1.5"`` from a mapping without
    ``as_number``); anything else is sent as it is, for the API to judge."""
    if isinstance(value, str):
        try:
            number = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            return value
        if number.is_finite():
            return int(number) if number == number.to_integral_value() else float(number)
    return value


def _lines_in(body: Any) -> list[Item] | None:
    """The lines a ``bulk_update`` answered with (``{"line_items": [...]}`` or a bare list),
    or None when it gave none to go by."""
    items = body.get(LINE_ITEMS) if isinstance(body, dict) else body
    if isinstance(items, list) and all(isinstance(i, dict) and i.get(UUID) for i in items):
        return items
    return None


def _holds(line: Mapping[str, Any], sent: Mapping[str, Any]) -> bool:
    """Whether a line shows every value a ``bulk_update`` sent for it."""
    return all(_same(k, v, line.get(k)) for k, v in sent.items() if k != UUID)


def _same(key: str, wanted: Any, actual: Any) -> bool:
    if key == "quantity":
        try:
            return norm_decimal(wanted, 12) == norm_decimal(actual, 12)
        except ValueError:
            return False
    if wanted == "" and actual is None:
        return True
    return bool(wanted == actual) and type(wanted) is type(actual)


def _not_there(line_id: str, where: str) -> NotFoundError:
    return NotFoundError(f"{where}: line {line_id} is no longer on the job")


def _in_order(
    jobs: Sequence[tuple[str, str]],
    fetch: Callable[[tuple[str, str]], list[Item]],
    workers: int,
) -> Iterator[tuple[tuple[str, str], list[Item]]]:
    """Each job with what ``fetch`` gives for it, in order, fetched by ``workers`` threads a
    window ahead of the one yielded (one thread: one after another, in this thread)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job, fetch(job)
        return
    pending: deque[tuple[tuple[str, str], Future[list[Item]]]] = deque()
    window = workers * _WINDOW_PER_WORKER
    queue = iter(jobs)
    with ThreadPoolExecutor(workers, thread_name_prefix="hcp-lines") as pool:
        try:
            for job in queue:
                pending.append((job, pool.submit(fetch, job)))
                if len(pending) >= window:
                    done_job, future = pending.popleft()
                    yield done_job, future.result()
            while pending:
                done_job, future = pending.popleft()
                yield done_job, future.result()
        finally:
            for _job, future in pending:
                future.cancel()
