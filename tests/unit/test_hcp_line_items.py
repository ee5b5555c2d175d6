"""The Housecall Pro connector's line items: what a read costs (one request per job that
changed, past the job list's first page) and what a write costs (a GET and one
``bulk_update`` per job written), against the sandbox in-process (its request log counts what
was sent) and against ``httpx.MockTransport`` fakes for what the sandbox does not do (an
answer lost on the way, a ``bulk_update`` that answers without its lines)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.line_items import LineMarks
from syncengine.connectors.housecallpro.sandbox import SandboxState, SyncASGITransport, create_app
from syncengine.connectors.housecallpro.sandbox_lines import first_invoice
from syncengine.errors import FatalConnectorError, RecordError, RetriableError
from syncengine.model import line_amount

KEY = "hcp_test_key_0123456789"
PAGE = 7
LINES = "line_items"


def hcp(transport: httpx.BaseTransport, **options: Any) -> HousecallProConnector:
    values: dict[str, Any] = {
        "type": "housecallpro",
        "base_url": "http://sandbox",
        "api_key": KEY,
        "page_size": PAGE,
        "rate_limit": 0,
        "max_retries": 0,
        "concurrency": 3,
    }
    values.update(options)
    context = ConnectorContext(name="hcp", extra={"transport": transport, "sleep": lambda _: None})
    return HousecallProConnector(HousecallProOptions(**values), context)


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=24, random_seed=5)


def state_of(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


@pytest.fixture
def connect(app: Any) -> Iterator[Callable[..., HousecallProConnector]]:
    """A new connector instance (a new run) over the same sandbox."""
    made: list[HousecallProConnector] = []

    def make(transport: httpx.BaseTransport | None = None, **options: Any) -> HousecallProConnector:
        conn = hcp(transport or SyncASGITransport(app), **options)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


@pytest.fixture
def api(app: Any) -> Iterator[httpx.Client]:
    """The sandbox as a person in HCP changes it (its requests are forgotten by ``sent``)."""
    with httpx.Client(
        transport=SyncASGITransport(app),
        base_url="http://sandbox",
        headers={"Authorization": f"Token {KEY}"},
    ) as client:
        yield client


def sent(state: SandboxState) -> list[tuple[str, str]]:
    """What the sandbox received (method, path), and forget it."""
    found = [(r["method"], r["path"]) for r in state.requests()]
    state.clear_requests()
    return found


NEWEST_JOBS = ("GET", "/jobs")


def lines_get(job_id: str) -> tuple[str, str]:
    return ("GET", f"/jobs/{job_id}/line_items")


def bulk(job_id: str) -> tuple[str, str]:
    return ("PUT", f"/jobs/{job_id}/line_items/bulk_update")


def invoiced_jobs(state: SandboxState) -> set[str]:
    return {job["id"] for job in state.jobs.all() if first_invoice(state, job["id"])}


def read_pass(
    conn: HousecallProConnector, token: str | None, *, invoices_first: bool = True
) -> tuple[list[NativeRecord], str | None, bool]:
    if invoices_first:
        list(conn.read("invoices"))
    found = conn.read_incremental(LINES, token)
    assert found is not None
    records = list(found.records)
    return records, found.token(), found.complete


def first_pass(
    state: SandboxState, connect: Callable[..., HousecallProConnector]
) -> tuple[list[NativeRecord], str]:
    records, token, complete = read_pass(connect(), None)
    assert complete and token is not None
    sent(state)
    return records, token


def open_job(state: SandboxState) -> str:
    """A job with lines whose first invoice is open and unpaid (any price rise is taken)."""
    for job in state.jobs.all():
        invoice = first_invoice(state, job["id"])
        if (
            invoice is not None
            and invoice["status"] in ("draft", "sent")
            and not state.payments.lookup("invoice_id", invoice["id"])
            and len(state.lines.of(job["id"])) >= 1
        ):
            return str(job["id"])
    raise AssertionError("no open job in the seed")


def open_jobs(state: SandboxState, count: int) -> list[str]:
    """Jobs with lines whose first invoice takes a change (a rise: payments stay below it)."""
    found = []
    for job in state.jobs.all():
        invoice = first_invoice(state, job["id"])
        if (
            invoice is not None
            and invoice["status"] not in ("voided", "canceled")
            and state.lines.of(job["id"])
        ):
            found.append(str(job["id"]))
    assert len(found) >= count
    return found[:count]


# ------------------------------------------------------------------------------ reads


def test_a_complete_pass_costs_the_mark_and_one_request_per_invoiced_job(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    conn = connect()
    list(conn.read("invoices"))
    sent(state)
    records, token, complete = read_pass(conn, None, invoices_first=False)
    requests = sent(state)
    assert complete and token is not None
    jobs = invoiced_jobs(state)
    assert requests[0] == NEWEST_JOBS  # the mark, asked for before anything is read
    assert Counter(requests[1:]) == Counter(lines_get(j) for j in jobs)
    assert len(records) == len(state.lines)
    stored = {line["id"]: line for job in jobs for line in state.lines.of(job)}
    for record in records:
        line = stored[record.id]
        data = record.data
        assert data["job_id"] == line["job_id"]
        assert data["invoice_id"] == first_invoice(state, line["job_id"])["id"]  # type: ignore[index]
        assert data["position"] == line["position"]
        assert data["amount"] == line_amount(line["quantity"], line["unit_price"])
        assert Decimal(repr(data["quantity"])) == Decimal(line["quantity"])


def test_a_quiet_pass_costs_one_request_and_lists_nothing(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    _records, token = first_pass(state, connect)
    for _ in range(2):
        records, token, complete = read_pass(connect(), token)  # type: ignore[assignment]
        sent_now = [r for r in sent(state) if r[1] != "/invoices"]
        assert (complete, records, sent_now) == (False, [], [NEWEST_JOBS])


def test_a_changed_job_costs_one_request_more(
    app: Any, connect: Callable[..., HousecallProConnector], api: httpx.Client
) -> None:
    state = state_of(app)
    _records, token = first_pass(state, connect)
    job_id = open_job(state)
    line = state.lines.of(job_id)[0]
    body = {LINES: [{"uuid": line["id"], "quantity": 2.25}]}
    assert api.put(f"/jobs/{job_id}/line_items/bulk_update", json=body).status_code == 200
    sent(state)
    records, token2, complete = read_pass(connect(), token)
    assert not complete
    assert [r for r in sent(state) if r[1] != "/invoices"] == [NEWEST_JOBS, lines_get(job_id)]
    assert {r.data["job_id"] for r in records} == {job_id}
    changed = next(r for r in records if r.id == line["id"])
    assert changed.data["quantity"] == 2.25
    assert changed.data["amount"] == line_amount("2.25", line["unit_price"])
    records, _token, _complete = read_pass(connect(), token2)
    assert records == [] and [r for r in sent(state) if r[1] != "/invoices"] == [NEWEST_JOBS]


def test_a_new_invoice_for_an_old_job_has_its_lines_read(
    app: Any, connect: Callable[..., HousecallProConnector], api: httpx.Client
) -> None:
    state = state_of(app)
    job = next(j for j in state.jobs.all() if first_invoice(state, j["id"]) is None)
    response = api.post(f"/jobs/{job['id']}/line_items", json={"name": "Estimate", "quantity": 1})
    assert response.status_code == 201
    _records, token = first_pass(state, connect)  # the job changed, but is not billed yet
    invoice = api.post("/invoices", json={"job_id": job["id"], "amount": 5_000})
    assert invoice.status_code == 201, invoice.text
    sent(state)
    records, _token, _complete = read_pass(connect(), token)
    assert [r.id for r in records] == [response.json()["uuid"]]
    assert records[0].data["invoice_id"] == invoice.json()["id"]
    assert lines_get(job["id"]) in sent(state)


def test_without_an_invoices_read_the_invoices_are_listed_once(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    records, _token, _complete = read_pass(connect(), None, invoices_first=False)
    requests = sent(state)
    assert requests.count(("GET", "/invoices")) == -(-len(state.invoices) // PAGE)
    assert len(records) == len(state.lines)


def test_the_token_round_trips_and_anything_unreadable_is_a_complete_pass() -> None:
    marks = LineMarks.decode(
        json.dumps({"v": 1, "since": "2026-01-02T03:04:05Z", "full_at": 5.0, "at": ["job_a"],
                    "invoices": {"since": "2026-01-01T00:00:00Z", "at": ["inv_b"]}})
    )  # fmt: skip
    assert marks.at_mark == {"job_a"} and marks.invoices_at == {"inv_b"}
    assert LineMarks.decode(marks.encode()) == marks
    for token in (None, "", "nonsense", "[]", '{"v": 2}'):
        assert LineMarks.decode(token).jobs.since is None


def test_a_complete_pass_is_due_after_full_every_hours(app: Any) -> None:
    state = state_of(app)
    now = [1_000_000.0]
    transport = SyncASGITransport(app)

    def conn() -> HousecallProConnector:
        options = HousecallProOptions(
            type="housecallpro", base_url="http://sandbox", api_key=KEY, page_size=PAGE,
            rate_limit=0, full_every_hours=1,
        )  # fmt: skip
        extra = {"transport": transport, "clock": lambda: now[0]}
        return HousecallProConnector(options, ConnectorContext(name="hcp", extra=extra))

    _records, token, complete = read_pass(conn(), None)
    assert complete
    now[0] += 1800
    _records, token, complete = read_pass(conn(), token)
    assert not complete
    now[0] += 1801
    records, _token, complete = read_pass(conn(), token)
    assert complete and len(records) == len(state.lines)


def test_line_items_have_no_webhook_reads_and_cannot_be_deleted(
    connect: Callable[..., HousecallProConnector],
) -> None:
    conn = connect()
    assert conn.read_events(LINES, []) is None
    caps = conn.capabilities(LINES)
    assert (caps.read, caps.create, caps.update, caps.delete) == (True, True, True, False)
    assert conn.buffers(LINES) and not conn.buffers("customers")
    with pytest.raises(FatalConnectorError, match="cannot delete line_items"):
        conn.delete(LINES, "some-uuid")


# ------------------------------------------------------------------------------ writes


def test_writes_cost_a_get_and_one_bulk_update_per_job(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    records, _token = first_pass(state, connect)
    job_a, job_b = open_jobs(state, 2)
    conn = connect()
    list(conn.read("invoices"))
    sent(state)
    by_job: dict[str, list[NativeRecord]] = {}
    for record in records:
        by_job.setdefault(record.data["job_id"], []).append(record)
    answers = []
    for job_id in (job_a, job_b):
        first = by_job[job_id][0]
        more = float(Decimal(repr(first.data["quantity"])) + Decimal("1.5"))  # a rise
        full = {**first.data, "unit_price": first.data["unit_price"] + 100, "quantity": more}
        answers.append(conn.update(LINES, first.id, {"unit_price": full["unit_price"]}, full=full))
    invoice_a = by_job[job_a][0].data["invoice_id"]
    created = []
    for n in (1, 2):
        data = {"invoice_id": invoice_a, "name": f"Part {n}", "kind": "materials",
                "quantity": 0.5 * n, "unit_price": 1000, "taxable": True}  # fmt: skip
        created.append(conn.create(LINES, data, key=f"key-{n}"))
    assert sent(state) == []  # held until the flush
    lines_before = {job: list(state.lines.of(job)) for job in (job_a, job_b)}
    quantities = {
        job: Decimal(lines[0]["quantity"]) + Decimal("1.5") for job, lines in lines_before.items()
    }
    conn.flush(LINES)
    assert Counter(sent(state)) == Counter(
        [lines_get(job_a), bulk(job_a), lines_get(job_b), bulk(job_b)]
    )
    made = [conn.flushed(LINES, answer) for answer in [*answers, *created]]
    assert [m.id for m in made[:2]] == [a.id for a in answers]
    stored_a = state.lines.of(job_a)
    assert [m.id for m in made[2:]] == [line["id"] for line in stored_a[-2:]]
    assert [line["quantity"] for line in stored_a[-2:]] == ["0.5", "1"]
    assert made[2].data["position"] == len(stored_a) - 1
    assert made[2].data["amount"] == 500 and made[2].data["invoice_id"] == invoice_a
    # every other line of the jobs is as it was
    for job in (job_a, job_b):
        assert state.lines.of(job)[1 : len(lines_before[job])] == lines_before[job][1:]
        assert Decimal(state.lines.of(job)[0]["quantity"]) == quantities[job]


def test_a_jobs_failure_fails_its_writes_alone(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    records, _token = first_pass(state, connect)
    good = open_job(state)
    paid = next(
        j["id"]
        for j in state.jobs.all()
        if (i := first_invoice(state, j["id"])) is not None
        and i["status"] == "paid"
        and state.lines.of(j["id"])
    )
    conn = connect()
    answers = {}
    for job_id, price in ((good, 10**6), (paid, 0)):
        line = next(r for r in records if r.data["job_id"] == job_id)
        full = {**line.data, "unit_price": price}
        answers[job_id] = conn.update(LINES, line.id, {"unit_price": price}, full=full)
    conn.flush(LINES)
    assert conn.flushed(LINES, answers[good]).data["unit_price"] == 10**6
    with pytest.raises(RecordError, match="less than the payments"):
        conn.flushed(LINES, answers[paid])


def test_a_line_cannot_move_to_another_job(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    records, _token = first_pass(state, connect)
    conn = connect()
    list(conn.read("invoices"))
    line = records[0]
    other = next(r for r in records if r.data["job_id"] != line.data["job_id"])
    patch = {"invoice_id": other.data["invoice_id"]}
    with pytest.raises(RecordError, match="cannot move to another job"):
        conn.update(LINES, line.id, patch, full={**line.data, **patch})


def test_a_line_without_an_invoice_is_a_record_error(
    connect: Callable[..., HousecallProConnector],
) -> None:
    with pytest.raises(RecordError, match="needs its invoice"):
        connect().create(LINES, {"name": "Loose"}, key="k")


def test_find_looks_among_the_lines_of_the_job(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    records, _token = first_pass(state, connect)
    line = records[0]
    wanted = {k: line.data.get(k) for k in ("invoice_id", "name", "quantity", "unit_price")}
    conn = connect()
    found = conn.find(LINES, {**wanted, "job_id": line.data["job_id"]})
    assert [r.id for r in found] == [line.id]
    assert sent(state) == [lines_get(line.data["job_id"])]


# ------------------------------------------------------------------------------ fakes


class FakeJob:
    """One job's lines behind a MockTransport, with knobs for what the sandbox does not do."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = [
            {"uuid": "u1", "name": "Labor", "kind": "labor", "quantity": 1, "unit_price": 5000,
             "taxable": False, "notes_internal": "kept"},
            {"uuid": "u2", "name": "Part", "kind": "materials", "quantity": 2, "unit_price": 750,
             "taxable": True},
        ]  # fmt: skip
        self.bodies: list[Any] = []
        self.answer = "lines"
        self.lose_answer = False
        self.apply = True
        self.next = 3

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/jobs/job_1/line_items":
            body = {LINES: self.lines, "page": 1, "page_size": 100, "total_pages": 1,
                    "total_items": len(self.lines)}  # fmt: skip
            return httpx.Response(200, json=body)
        if request.method == "GET" and request.url.path == "/invoices/inv_1":
            return httpx.Response(200, json={"id": "inv_1", "job_id": "job_1", "customer_id": "c"})
        if request.method == "PUT":
            body = json.loads(request.content)
            self.bodies.append(body)
            if self.apply:
                for item in body[LINES]:
                    if "uuid" in item:
                        line = next(x for x in self.lines if x["uuid"] == item["uuid"])
                        line.update(item)
                    else:
                        self.lines.append({**item, "uuid": f"u{self.next}"})
                        self.next += 1
            if self.lose_answer:
                raise httpx.ReadTimeout("the answer never came", request=request)
            if self.answer == "lines":
                return httpx.Response(200, json={LINES: self.lines})
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(404, text="<html>not found</html>")


def fake_connector(job: FakeJob) -> HousecallProConnector:
    return hcp(httpx.MockTransport(job.handle), page_size=100)


def held_writes(conn: HousecallProConnector) -> tuple[NativeRecord, NativeRecord]:
    full = {"uuid": "u2", "name": "Part", "kind": "materials", "quantity": "2.5",
            "unit_price": 750, "taxable": True, "job_id": "job_1", "invoice_id": "inv_1",
            "position": 2, "amount": 1500}  # fmt: skip
    changed = conn.update(LINES, "u2", {"quantity": "2.5"}, full=full)
    assert changed is not None
    created = conn.create(
        LINES, {"invoice_id": "inv_1", "name": "Trip", "quantity": "1", "unit_price": 4900},
        key="k1",
    )  # fmt: skip
    return changed, created


def test_the_bulk_update_sends_every_line_and_only_the_api_s_fields() -> None:
    job = FakeJob()
    conn = fake_connector(job)
    changed, created = held_writes(conn)
    conn.flush(LINES)
    [body] = job.bodies
    assert body == {
        LINES: [
            {"uuid": "u1", "name": "Labor", "kind": "labor", "quantity": 1, "unit_price": 5000,
             "taxable": False},
            {"uuid": "u2", "name": "Part", "kind": "materials", "quantity": 2.5,
             "unit_price": 750, "taxable": True},
            {"name": "Trip", "quantity": 1, "unit_price": 4900},
        ]
    }  # fmt: skip
    assert conn.flushed(LINES, changed).data["amount"] == 1875
    made = conn.flushed(LINES, created)
    assert (made.id, made.data["position"], made.data["job_id"]) == ("u3", 3, "job_1")


def test_an_answer_without_lines_is_followed_by_a_get() -> None:
    job = FakeJob()
    job.answer = "nothing"
    conn = fake_connector(job)
    _changed, created = held_writes(conn)
    conn.flush(LINES)
    assert conn.flushed(LINES, created).id == "u3"


def test_a_lost_answer_is_judged_from_the_jobs_lines() -> None:
    job = FakeJob()
    job.lose_answer = True
    conn = fake_connector(job)
    changed, created = held_writes(conn)
    conn.flush(LINES)
    assert len(job.bodies) == 1  # never sent twice
    assert conn.flushed(LINES, created).id == "u3"
    assert conn.flushed(LINES, changed).data["quantity"] == 2.5


def test_a_lost_request_fails_the_jobs_writes() -> None:
    job = FakeJob()
    job.lose_answer, job.apply = True, False
    conn = fake_connector(job)
    changed, created = held_writes(conn)
    conn.flush(LINES)
    with pytest.raises(RetriableError, match="does not show the change"):
        conn.flushed(LINES, changed)
    with pytest.raises(RetriableError, match="which is which cannot be told"):
        conn.flushed(LINES, created)
