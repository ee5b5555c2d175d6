"""The Housecall Pro connector's event-driven read (``read_events``), with the live API's
shapes faked at the HTTP transport: which payloads it takes as they are, which it reads by
id, how a delete is confirmed, and that invoices and payments cost no list request."""

from __future__ import annotations

from typing import Any

import httpx

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.events import InboxEvent

KEY = "hcp_events_key_0123456789"
NOW = 1_800_000_000.0
FRESH = "2027-01-15T08:00:00Z"  # NOW, as HCP writes it


class Api:
    """Answers GETs by path from ``records`` (404 JSON for the others) and notes them."""

    def __init__(self, records: dict[str, Any]) -> None:
        self.records = records
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(f"{request.method} {request.url.path}")
        found = self.records.get(request.url.path)
        if found is None:
            return httpx.Response(404, json={"error": {"message": "not found"}})
        return httpx.Response(200, json=found)


def connector(api: Api) -> HousecallProConnector:
    options = HousecallProOptions(
        type="housecallpro", base_url="http://hcp", api_key=KEY, rate_limit=0, max_retries=0
    )
    extra = {"transport": httpx.MockTransport(api), "sleep": lambda _: None, "clock": lambda: NOW}
    return HousecallProConnector(options, ConnectorContext(name="hcp", extra=extra))


def customer(cid: str, **values: Any) -> dict[str, Any]:
    base = {"id": cid, "first_name": "Ann", "last_name": "Lee", "email": f"{cid}@x.test"}
    stamps = {"created_at": "2027-01-01T00:00:00Z", "updated_at": "2027-01-15T08:00:00Z"}
    return {**base, **stamps, **values}


def ev(
    event_id: int, name: str, record: dict[str, Any] | None, occurred: str = FRESH
) -> InboxEvent:
    prefix = name.split(".", 1)[0]
    payload: dict[str, Any] = {"event": name, "event_occurred_at": occurred}
    if record is not None:
        payload[prefix] = record
    entities = {"customer": ("customers",), "job": ("jobs",), "invoice": ("invoices", "payments")}
    record_id = record.get("id") if record else None
    return InboxEvent(
        event_id, "hcp", name, entities[prefix], record_id, payload, occurred, received_at=NOW
    )


def read(conn: HousecallProConnector, entity: str, events: list[InboxEvent]) -> Any:
    rp = conn.read_events(entity, events)
    assert rp is not None and not rp.complete
    records: list[NativeRecord] = list(rp.records)
    return records, set(rp.gone()), rp.token()


def test_a_whole_fresh_payload_costs_no_request_and_the_newest_event_wins() -> None:
    """Whole: the keys the API renders with every record; a customer without an e-mail or
    a mobile number has no such keys, in a GET as in a payload."""
    api = Api({})
    older, newer = customer("cus_1", first_name="Old"), customer("cus_1", first_name="New")
    del newer["email"]
    records, gone, token = read(
        connector(api),
        "customers",
        [ev(1, "customer.updated", older), ev(2, "customer.updated", newer)],
    )
    assert [(r.id, r.data["first_name"]) for r in records] == [("cus_1", "New")]
    assert api.asked == [] and gone == set() and token is None


def test_a_partial_or_old_payload_is_read_by_id() -> None:
    api = Api({"/customers/cus_1": customer("cus_1", first_name="Now"),
               "/customers/cus_2": customer("cus_2", first_name="Now")})  # fmt: skip
    partial = {"id": "cus_1", "first_name": "Part", "email": "cus_1@x.test"}  # no stamps
    old = customer("cus_2", first_name="Then")
    records, _gone, _token = read(
        connector(api),
        "customers",
        [
            ev(1, "customer.updated", partial),
            ev(2, "customer.updated", old, "2026-01-01T00:00:00Z"),
        ],
    )
    assert {r.id: r.data["first_name"] for r in records} == {"cus_1": "Now", "cus_2": "Now"}
    assert api.asked == ["GET /customers/cus_1", "GET /customers/cus_2"]


def test_a_delete_counts_only_once_the_api_says_the_record_is_not_there() -> None:
    api = Api({"/customers/cus_kept": customer("cus_kept")})
    records, gone, _token = read(
        connector(api),
        "customers",
        [
            ev(1, "customer.deleted", customer("cus_gone")),
            ev(2, "customer.deleted", customer("cus_kept")),
        ],
    )
    assert gone == {"cus_gone"}
    assert [r.id for r in records] == ["cus_kept"]
    assert api.asked == ["GET /customers/cus_gone", "GET /customers/cus_kept"]


def test_an_invoice_gets_its_customer_from_its_job_by_id_and_its_nested_payments() -> None:
    invoice = {
        "id": "inv_1",
        "invoice_number": "1001",
        "status": "paid",
        "amount": 5000,
        "job_id": "job_1",
        "payments": [{"id": "pay_1", "amount": 5000, "paid_at": "2027-01-15T07:59:00Z"}],
    }
    api = Api({"/jobs/job_1": {"id": "job_1", "customer": {"id": "cus_1"}}})
    conn = connector(api)
    events = [ev(1, "invoice.payment.succeeded", invoice)]
    invoices, _gone, _token = read(conn, "invoices", events)
    payments, _gone, _token = read(conn, "payments", events)
    assert [(r.id, r.data["customer_id"]) for r in invoices] == [("inv_1", "cus_1")]
    assert "payments" not in invoices[0].data
    assert [(p.id, p.data["invoice_id"], p.data["processed_at"]) for p in payments] == [
        ("pay_1", "inv_1", "2027-01-15T07:59:00Z")
    ]
    assert api.asked == ["GET /jobs/job_1"]  # never a list of every job


def test_payments_of_an_invoice_that_does_not_nest_them_are_read_for_that_invoice() -> None:
    invoice = {"id": "inv_2", "invoice_number": "1002", "status": "open", "amount": 100,
               "job_id": "job_2", "customer_id": "cus_2"}  # fmt: skip
    api = Api(
        {
            "/invoices/inv_2/payments": {
                "payments": [{"id": "pay_2", "invoice_id": "inv_2", "amount": 100}],
                "page": 1,
                "page_size": 100,
                "total_pages": 1,
                "total_items": 1,
            }
        }
    )
    payments, _gone, _token = read(connector(api), "payments", [ev(1, "invoice.created", invoice)])
    assert [p.id for p in payments] == ["pay_2"]
    assert [a.split("?")[0] for a in api.asked] == ["GET /invoices/inv_2/payments"]


def test_events_about_other_kinds_of_records_are_left_out() -> None:
    api = Api({})
    job = {"id": "job_9", "customer": {"id": "cus_1"}, "work_status": "scheduled",
           "schedule": {}, "total_amount": 0}  # fmt: skip
    records, _gone, _token = read(
        connector(api), "customers", [ev(1, "job.updated", job), ev(2, "customer.updated", None)]
    )
    assert records == [] and api.asked == []
