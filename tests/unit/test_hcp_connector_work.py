"""The Housecall Pro connector's jobs, invoices and payments.

Against the sandbox in-process (``SyncASGITransport``: real HTTP semantics, the sandbox's
request log counts what was sent) in both invoice shapes, and against small
``httpx.MockTransport`` fakes for what the sandbox does not do (the live ``open`` status,
odd payloads, failures mid-read).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.sandbox import SandboxState, SyncASGITransport, create_app
from syncengine.errors import FatalConnectorError, NotFoundError, RecordError, RetriableError

KEY = "hcp_test_key_0123456789"
PAGE = 7


def hcp(transport: httpx.BaseTransport, **options: Any) -> HousecallProConnector:
    values: dict[str, Any] = {
        "type": "housecallpro",
        "base_url": "http://sandbox",
        "api_key": KEY,
        "page_size": PAGE,
        "rate_limit": 0,
        "max_retries": 1,
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

    def make(**options: Any) -> HousecallProConnector:
        conn = hcp(SyncASGITransport(app), **options)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def sent(state: SandboxState) -> list[tuple[str, str]]:
    """What the sandbox received (method, path), and forget it."""
    found = [(r["method"], r["path"]) for r in state.requests()]
    state.clear_requests()
    return found


def pages(count: int, size: int = PAGE) -> int:
    return max(1, -(-count // size))


def data_of(records: list[NativeRecord]) -> list[dict[str, Any]]:
    return [r.data for r in records]


# ------------------------------------------------------------------ invoices and payments


def test_nested_payments_are_read_with_the_invoice_pages_only(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    data = state.dump()
    conn = connect()
    invoices = list(conn.read("invoices"))
    assert sent(state) == [("GET", "/invoices")] * pages(len(data["invoices"]))
    payments = list(conn.read("payments"))
    assert sent(state) == [], "the payments came with the invoices"
    assert list(conn.read("payments")) == payments
    assert sent(state) == [("GET", "/invoices")] * pages(len(data["invoices"])), (
        "kept payments serve one read only: a later one lists the invoices again"
    )
    assert [r.id for r in invoices] == [
        i["id"] for i in sorted(data["invoices"], key=lambda i: (i["created_at"], i["id"]))
    ]
    assert sorted(r.id for r in payments) == sorted(p["id"] for p in data["payments"])
    assert all("payments" not in r.data for r in invoices)
    for record in payments:
        assert set(record.data) >= {"id", "invoice_id", "amount", "payment_method", "status",
                                    "processed_at"}  # fmt: skip
        assert "paid_at" not in record.data
        assert record.location.startswith(f"payment {record.id} of invoice ")


def test_both_invoice_shapes_give_the_same_native_records(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    nested = connect()
    nested_invoices, nested_payments = list(nested.read("invoices")), list(nested.read("payments"))
    state.set_options({"nest_payments": False})
    sent(state)
    plain = connect()
    plain_invoices = list(plain.read("invoices"))
    assert sent(state) == [("GET", "/invoices")] * pages(len(plain_invoices))
    plain_payments = list(plain.read("payments"))
    assert sorted(sent(state)) == sorted(
        ("GET", f"/invoices/{r.id}/payments") for r in plain_invoices
    ), "one payments request per invoice, nothing else"
    assert plain_invoices == nested_invoices
    assert plain_payments == nested_payments
    assert [r.native_hash() for r in plain_payments] == [r.native_hash() for r in nested_payments]


def test_invoices_without_a_customer_get_it_from_their_job(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    data = state.dump()
    expected = data_of(list(connect().read("invoices")))
    state.set_options({"live_invoices": True})
    sent(state)
    conn = connect()
    live = list(conn.read("invoices"))
    requests = sent(state)
    assert requests.count(("GET", "/jobs")) == pages(len(data["jobs"])), "all jobs, read once"
    assert requests.count(("GET", "/invoices")) == pages(len(data["invoices"]))
    assert len(requests) == pages(len(data["jobs"])) + pages(len(data["invoices"]))
    assert data_of(live) == [{k: v for k, v in d.items() if k != "updated_at"} for d in expected]
    assert list(conn.read("payments")) and sent(state) == []


def test_jobs_read_first_leave_nothing_to_look_up(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    state.set_options({"live_invoices": True})
    conn = connect()
    jobs = list(conn.read("jobs"))
    sent(state)
    invoices = list(conn.read("invoices"))
    assert sent(state) == [("GET", "/invoices")] * pages(len(invoices))
    customer_of = {j.id: j.data["customer_id"] for j in jobs}
    assert all(r.data["customer_id"] == customer_of[r.data["job_id"]] for r in invoices)


def test_payments_read_alone_lists_the_invoices(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    data = state.dump()
    conn = connect()
    sent(state)
    payments = list(conn.read("payments"))
    assert sent(state) == [("GET", "/invoices")] * pages(len(data["invoices"]))
    assert len(payments) == len(data["payments"])


def test_a_payment_recorded_after_a_read_is_read_next_run(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    first = connect()
    list(first.read("invoices"))
    before = {r.id for r in first.read("payments")}
    invoice = next(i for i in state.dump()["invoices"] if i["status"] == "sent")
    made = state.record_payment(invoice["id"], {"amount": 1, "payment_method": "cash"})
    assert made is not None
    again = connect()
    changed = {r.id: r for r in again.read("invoices")}[invoice["id"]]
    after = {r.id: r for r in again.read("payments")}
    assert set(after) - before == {made["id"]}
    assert after[made["id"]].data["invoice_id"] == invoice["id"]
    assert changed.data["outstanding_balance"] == invoice["outstanding_balance"] - 1


def test_payments_of_many_invoices_are_fetched_concurrently(app: Any) -> None:
    state = state_of(app)
    state.set_options({"nest_payments": False})
    inner = SyncASGITransport(app)
    lock = threading.Lock()
    in_flight = peak = 0

    def measure(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        if not request.url.path.endswith("/payments"):
            return inner.handle_request(request)
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.01)
        try:
            return inner.handle_request(request)
        finally:
            with lock:
                in_flight -= 1

    conn = hcp(httpx.MockTransport(measure), concurrency=3)
    try:
        invoices = list(conn.read("invoices"))
        payments = list(conn.read("payments"))
    finally:
        conn.close()
    assert 1 < peak <= 3
    order = [r.id for r in invoices]
    positions = [order.index(p.data["invoice_id"]) for p in payments]
    assert positions == sorted(positions), "payments come invoice by invoice, in order"
    assert len(payments) == len(state.dump()["payments"])


class Fake:
    """A small HCP: canned list bodies per path (one page each), JSON 404 otherwise."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.requests: list[httpx.Request] = []
        self.posted: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            self.posted.append(json.loads(request.content))
        reply = self.replies.get(f"{request.method} {request.url.path}")
        if callable(reply):
            return reply(request)  # type: ignore[no-any-return]
        if reply is None:
            return httpx.Response(404, json={"error": {"message": "not found"}})
        if isinstance(reply, httpx.Response):
            return reply
        return httpx.Response(200, json=reply)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def envelope(key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: items, "page": 1, "page_size": PAGE, "total_pages": 1,
            "total_items": len(items)}  # fmt: skip


LIVE_INVOICE = {
    "id": "inv_1",
    "invoice_number": "1043",
    "status": "open",  # the live API's, not in the spec's enum
    "amount": 25_000,
    "due_amount": 5_000,
    "job_id": "job_7",
    "payments": [
        {"id": "pay_1", "status": "succeeded", "payment_method": "credit_card",
         "amount": 20_000, "note": "", "paid_at": "2026-01-05T10:00:00Z", "category": "card"},
    ],
}  # fmt: skip


def test_live_shapes_pass_through_to_the_mapping() -> None:
    fake = Fake(
        {
            "GET /invoices": envelope("invoices", [LIVE_INVOICE]),
            "GET /jobs": envelope("jobs", [{"id": "job_7", "customer": {"id": "cus_3"},
                                            "work_status": "complete rated"}]),
        }
    )  # fmt: skip
    conn = hcp(httpx.MockTransport(fake))
    [invoice] = list(conn.read("invoices"))
    [payment] = list(conn.read("payments"))
    assert invoice.data == {**{k: v for k, v in LIVE_INVOICE.items() if k != "payments"},
                            "customer_id": "cus_3"}  # fmt: skip
    assert payment.data == {
        "id": "pay_1", "status": "succeeded", "payment_method": "credit_card", "amount": 20_000,
        "note": "", "category": "card", "invoice_id": "inv_1",
        "processed_at": "2026-01-05T10:00:00Z",
    }  # fmt: skip
    assert fake.paths() == ["GET /invoices", "GET /jobs"]
    [job] = list(conn.read("jobs"))
    assert job.data == {"id": "job_7", "customer_id": "cus_3", "work_status": "complete rated"}


def test_kept_nested_payments_wait_as_text_and_come_back_exactly() -> None:
    nested = {
        "inv_1": [
            {"id": "pay_1", "amount": 123456789012345678901234567890, "note": "Zoë’s 🧾",
             "paid_at": "2026-01-05T10:00:00Z", "extra": {"tips": [1.5, None, True]}},
            {"id": "pay_2", "amount": 0, "note": "", "paid_at": "2026-01-06T10:00:00Z"},
        ],
        # one below the smallest 64-bit integer, alone in its invoice's text
        "inv_2": [{"id": "pay_3", "amount": -9223372036854775809,
                   "paid_at": "2026-01-07T10:00:00Z"}],
        "inv_3": [],
    }  # fmt: skip
    invoices = [{"id": i, "customer_id": "c", "payments": p} for i, p in nested.items()]
    fake = Fake({"GET /invoices": envelope("invoices", invoices)})
    conn = hcp(httpx.MockTransport(fake))
    list(conn.read("invoices"))
    # between the two reads (an entity's planning and applying) the payments are one text
    # per invoice, not the objects they decode to
    kept = conn.billing._last_read
    assert kept is not None and [type(s.payments) for s in kept] == [str, str, str]
    payments = list(conn.read("payments"))
    assert fake.paths() == ["GET /invoices"]
    assert [p.data for p in payments] == [
        {**{k: v for k, v in n.items() if k != "paid_at"}, "invoice_id": invoice,
         "processed_at": n["paid_at"]}
        for invoice, listed in nested.items()
        for n in listed
    ]  # fmt: skip
    assert [type(p.data["amount"]) for p in payments] == [int, int, int]


def test_an_unknown_job_is_fetched_once_and_a_missing_one_leaves_no_customer() -> None:
    invoices = [
        {"id": "inv_1", "job_id": "job_new", "amount": 1},
        {"id": "inv_2", "job_id": "job_new", "amount": 2},
        {"id": "inv_3", "job_id": "job_gone", "amount": 3},
        {"id": "inv_4", "amount": 4},
    ]
    fake = Fake(
        {
            "GET /invoices": envelope("invoices", invoices),
            "GET /jobs": envelope("jobs", []),
            "GET /jobs/job_new": {"id": "job_new", "customer_id": "cus_9"},
        }
    )
    conn = hcp(httpx.MockTransport(fake))
    got = {r.id: r.data.get("customer_id") for r in conn.read("invoices")}
    assert got == {"inv_1": "cus_9", "inv_2": "cus_9", "inv_3": None, "inv_4": None}
    assert fake.paths() == ["GET /invoices", "GET /jobs", "GET /jobs/job_new",
                            "GET /jobs/job_gone"]  # fmt: skip


def test_a_failing_payments_request_fails_the_read_with_a_retriable_error() -> None:
    fake = Fake(
        {
            "GET /invoices": envelope("invoices", [{"id": f"inv_{n}", "customer_id": "c"}
                                                   for n in range(6)]),
            "GET /invoices/inv_2/payments": httpx.Response(503, json={"message": "busy"}),
        }
    )  # fmt: skip
    for n in (0, 1, 3, 4, 5):
        fake.replies[f"GET /invoices/inv_{n}/payments"] = envelope(
            "payments", [{"id": f"pay_{n}", "invoice_id": f"inv_{n}", "amount": 1}]
        )
    conn = hcp(httpx.MockTransport(fake), concurrency=2, api_key="secret_key_42")
    with pytest.raises(RetriableError, match="503") as info:
        list(conn.read("payments"))
    assert "secret_key_42" not in str(info.value)


def test_a_payments_list_of_a_vanished_invoice_is_empty() -> None:
    fake = Fake({"GET /invoices": envelope("invoices", [{"id": "inv_1", "customer_id": "c"}])})
    assert list(hcp(httpx.MockTransport(fake)).read("payments")) == []


def test_an_invoice_payment_without_an_id_is_fatal() -> None:
    broken = {**LIVE_INVOICE, "customer_id": "c", "payments": [{"amount": 5}]}
    fake = Fake({"GET /invoices": envelope("invoices", [broken])})
    with pytest.raises(FatalConnectorError, match="item 0 has no id"):
        list(hcp(httpx.MockTransport(fake)).read("payments"))


def test_create_invoice_sends_the_spec_fields_once(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    job = next(j for j in state.dump()["jobs"] if j["work_status"] == "complete")
    conn = connect()
    sent(state)
    data = {
        "invoice_number": "INV-9001",
        "customer_id": job["customer_id"],
        "job_id": job["id"],
        "status": "sent",
        "amount": 4_250,
        "due_at": "2026-07-01T00:00:00Z",
        "outstanding_balance": 4_250,  # read-only: not sent
        "created_at": None,
        "payments": [],
    }
    created = conn.create("invoices", data, key="rec-1")
    assert sent(state) == [("POST", "/invoices")]
    read = {r.id: r for r in connect().read("invoices")}[created.id]
    assert created == read
    assert {k: created.data[k] for k in ("invoice_number", "amount", "status", "job_id")} == {
        "invoice_number": "INV-9001", "amount": 4_250, "status": "sent", "job_id": job["id"],
    }  # fmt: skip
    with pytest.raises(RecordError, match="invoice_number: has already been taken"):
        conn.create("invoices", data, key="rec-2")


def test_create_invoice_body_leaves_out_nulls_and_what_the_api_owns() -> None:
    fake = Fake({"POST /invoices": httpx.Response(201, json={"id": "inv_5", "amount": 1})})
    hcp(httpx.MockTransport(fake)).create(
        "invoices",
        {"amount": 1, "customer_id": "cus_1", "job_id": None, "due_at": None, "id": "x",
         "outstanding_balance": 1, "created_at": "2026-01-01T00:00:00Z", "updated_at": "x"},
        key="k",
    )  # fmt: skip
    assert fake.posted == [{"amount": 1, "customer_id": "cus_1"}]


def test_create_invoice_is_never_retried() -> None:
    fake = Fake({"POST /invoices": httpx.Response(502, text="bad gateway")})
    with pytest.raises(RetriableError, match="not retried"):
        hcp(httpx.MockTransport(fake), max_retries=5).create("invoices", {"amount": 1}, key="k")
    assert fake.paths() == ["POST /invoices"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.update("invoices", "inv_1", {"amount": 2}, full={"amount": 2}),
         "cannot update invoices"),
        (lambda c: c.delete("invoices", "inv_1"), "cannot delete invoices"),
        (lambda c: c.create("payments", {"amount": 1}, key="k"), "cannot create payments"),
        (lambda c: c.update("payments", "pay_1", {"amount": 2}, full={}), "cannot update payments"),
        (lambda c: c.delete("payments", "pay_1"), "cannot delete payments"),
    ],
)  # fmt: skip
def test_writes_the_api_does_not_have_are_refused_without_a_request(
    call: Callable[[HousecallProConnector], Any], message: str
) -> None:
    fake = Fake({})
    with pytest.raises(FatalConnectorError, match=message):
        call(hcp(httpx.MockTransport(fake)))
    assert fake.requests == []


def test_get_one_invoice(app: Any, connect: Callable[..., HousecallProConnector]) -> None:
    conn = connect()
    listed = list(conn.read("invoices"))
    assert conn.get("invoices", listed[3].id) == listed[3]
    with pytest.raises(NotFoundError, match="invoice not found"):
        conn.get("invoices", "inv_00000000000000000000000000000000")
    payment = next(iter(conn.read("payments")))
    assert conn.get("payments", payment.id) == payment
    assert conn.get("payments", "pay_nope") is None


def test_find_an_invoice_by_number_among_the_customers(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    invoice = state.dump()["invoices"][4]
    conn = connect()
    sent(state)
    found = conn.find("invoices", {"invoice_number": f" {invoice['invoice_number']} ",
                                   "customer_id": invoice["customer_id"], "amount": 1})  # fmt: skip
    assert [r.id for r in found] == [invoice["id"]]
    queries = [r["query"] for r in state.requests()]
    assert all(f"customer_uuid%5B%5D={invoice['customer_id']}" in q for q in queries)
    assert conn.find("invoices", {"invoice_number": "nope"}) == []
    unnumbered = conn.find(
        "invoices",
        {
            "job_id": invoice["job_id"],
            "amount": invoice["amount"],
            "due_at": invoice["due_at"].replace("Z", "+00:00"),
        },
    )
    assert [r.id for r in unnumbered] == [invoice["id"]]


# -------------------------------------------------------------------------------------- jobs


def job_sample(customer_id: str, n: int) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "description": f"Repair {n}",
        "notes": f"Note {n}",
        "work_status": "scheduled",
        "schedule": {
            "scheduled_start": f"2026-04-{n:02d}T15:00:00Z",
            "scheduled_end": f"2026-04-{n:02d}T17:00:00Z",
            "arrival_window": 60,
        },
        "tags": ["follow-up"],
    }


def test_jobs_carry_their_customer_id(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    data = state_of(app).dump()
    jobs = list(connect().read("jobs"))
    assert len(jobs) == len(data["jobs"])
    stored = {j["id"]: j for j in data["jobs"]}
    for job in jobs:
        assert job.data["customer_id"] == stored[job.id]["customer_id"]
        assert "customer" not in job.data
        assert job.location == f"job {stored[job.id]['invoice_number']} ({job.id})"


def test_create_update_and_delete_a_job(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    customer_id = state.dump()["customers"][0]["id"]
    conn = connect()
    sent(state)
    created = conn.create("jobs", {**job_sample(customer_id, 3), "total_amount": 5,
                                   "work_timestamps": {}, "id": None}, key="k")  # fmt: skip
    assert created.data["customer_id"] == customer_id
    assert created == conn.get("jobs", created.id)
    patch = {"schedule.scheduled_end": "2026-04-03T18:00:00Z", "description": None}
    full = {
        **created.data,
        "description": None,
        "schedule": {**created.data["schedule"], "scheduled_end": "2026-04-03T18:00:00Z"},
    }
    updated = conn.update("jobs", created.id, patch, full=full)
    assert updated is not None
    assert updated.data["schedule"]["scheduled_end"] == "2026-04-03T18:00:00Z"
    assert updated.data["description"] == "", "cleared with an empty string"
    assert updated.data["notes"] == "Note 3"
    conn.delete("jobs", created.id)
    conn.delete("jobs", created.id)
    assert sent(state) == [
        ("POST", "/jobs"), ("GET", f"/jobs/{created.id}"), ("PUT", f"/jobs/{created.id}"),
        ("DELETE", f"/jobs/{created.id}"), ("DELETE", f"/jobs/{created.id}"),
    ]  # fmt: skip
    invoiced = state.dump()["invoices"][0]["job_id"]
    with pytest.raises(RecordError, match="job has invoices"):
        conn.delete("jobs", invoiced)


def test_job_bodies_are_the_spec_shape_without_nulls() -> None:
    made = {"id": "job_1", "customer": {"id": "cus_1"}, "description": "x"}
    fake = Fake({"POST /jobs": httpx.Response(201, json=made), "PUT /jobs/job_1": made})
    conn = hcp(httpx.MockTransport(fake))
    conn.create("jobs", {"customer_id": "cus_1", "description": "x", "notes": None,
                         "schedule": {"scheduled_start": None, "arrival_window": 30},
                         "work_status": None, "outstanding_balance": 3}, key="k")  # fmt: skip
    assert fake.posted == [{"customer_id": "cus_1", "customer": {"id": "cus_1"},
                            "description": "x", "schedule": {"arrival_window": 30}}]  # fmt: skip
    full = {
        "id": "job_1",
        "customer_id": "cus_1",
        "description": None,
        "tags": None,
        "work_status": None,
        "schedule": {"scheduled_start": None, "scheduled_end": "E"},
    }
    conn.update("jobs", "job_1", {"description": None, "tags": None, "work_status": None,
                                  "schedule.scheduled_start": None}, full=full)  # fmt: skip
    put = json.loads(fake.requests[-1].content)
    assert put == {"description": "", "tags": [], "schedule": {"scheduled_end": "E"}}


def test_find_a_job_among_the_customers_jobs(
    app: Any, connect: Callable[..., HousecallProConnector]
) -> None:
    state = state_of(app)
    customer_id = state.dump()["customers"][1]["id"]
    conn = connect()
    wanted = conn.create("jobs", job_sample(customer_id, 4), key="a")
    conn.create("jobs", job_sample(customer_id, 5), key="b")
    sent(state)
    finder = connect()
    found = finder.find("jobs", job_sample(customer_id, 4))
    assert [r.id for r in found] == [wanted.id]
    query = state.requests()[0]["query"]
    assert f"customer_id={customer_id}" in query and "scheduled_start_min=" in query
    assert finder.find("jobs", job_sample(customer_id, 6)) == []
    assert finder.find("jobs", {"work_status": "scheduled"}) == [], "nothing to go by"
