"""The HCP sandbox's money below the total: invoice subtotals and tax, and refunds.

``POST /_sandbox/payments/{id}/refund`` gives back part or all of a succeeded payment: the
payment keeps its id and adds the refund to its ``refunded_amount`` (never past its amount),
its invoice owes the refund again (a paid invoice is ``sent`` again) and says so in its
``updated_at``, and one ``invoice.refund.succeeded`` event is sent. Invoices always have
amount = subtotal + tax_amount, whether seeded, created, changed or loaded from a file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.sandbox import (
    SandboxState,
    SyncASGITransport,
    create_app,
    generate_data,
)
from syncengine.connectors.housecallpro.sandbox_seed import TAX_RATE_BP, tax_split
from syncengine.errors import ConfigError
from syncengine.events import InboxEvent

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=30, random_seed=7)


@pytest.fixture
def client(app: Any) -> Iterator[httpx.Client]:
    transport = SyncASGITransport(app)
    with httpx.Client(transport=transport, base_url="http://sandbox", headers=AUTH) as c:
        yield c


def state_of(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


def paid_invoice(client: httpx.Client, app: Any, amount: int = 10_000) -> dict[str, Any]:
    """A new invoice for a seeded job, paid in two payments: 6,000 then the rest."""
    job = state_of(app).dump()["jobs"][0]
    body = {"job_id": job["id"], "amount": amount, "status": "sent"}
    invoice = client.post("/invoices", json=body).json()
    for part in (6_000, amount - 6_000):
        response = client.post(
            f"/_sandbox/invoices/{invoice['id']}/payments", json={"amount": part}
        )
        assert response.status_code == 201, response.text
    paid: dict[str, Any] = client.get(f"/invoices/{invoice['id']}").json()
    assert (paid["status"], paid["outstanding_balance"]) == ("paid", 0)
    return paid


def refund(client: httpx.Client, payment_id: str, body: Any) -> httpx.Response:
    return client.post(f"/_sandbox/payments/{payment_id}/refund", json=body)


# ------------------------------------------------------------------------- subtotal and tax


def test_seeded_invoices_are_their_subtotal_plus_tax() -> None:
    data = generate_data(400, random_seed=3)
    invoices = data["invoices"]
    assert all(i["amount"] == i["subtotal"] + i["tax_amount"] for i in invoices)
    taxed = [i for i in invoices if i["tax_amount"]]
    assert 0.4 < len(taxed) / len(invoices) < 0.9, "most work is taxed, cleaning is not"
    for invoice in taxed:  # the tax is 8.25 % of the subtotal, to the cent
        assert abs(invoice["subtotal"] * TAX_RATE_BP - invoice["tax_amount"] * 10_000) <= 10_000
    assert all(p["refunded_amount"] == 0 for p in data["payments"])
    assert generate_data(400, random_seed=3) == data, "still deterministic"


@pytest.mark.parametrize("amount", [0, 1, 99, 10_825, 2_500_000, 10**12 + 7])
def test_tax_split_adds_up_exactly(amount: int) -> None:
    subtotal, tax = tax_split(amount, TAX_RATE_BP)
    assert subtotal + tax == amount and 0 <= tax <= amount
    assert tax_split(amount, 0) == (amount, 0)


def test_invoice_totals_on_create_and_change(app: Any, client: httpx.Client) -> None:
    customer = state_of(app).dump()["customers"][0]["id"]

    def create(**body: Any) -> httpx.Response:
        return client.post("/invoices", json={"customer_id": customer, **body})

    plain = create(amount=5_000).json()
    assert (plain["subtotal"], plain["tax_amount"]) == (5_000, 0), "untaxed"
    full = create(amount=10_825, subtotal=10_000, tax_amount=825).json()
    assert (full["amount"], full["subtotal"], full["tax_amount"]) == (10_825, 10_000, 825)
    assert create(subtotal=10_000, tax_amount=825).json()["amount"] == 10_825
    assert create(amount=10_825, tax_amount=825).json()["subtotal"] == 10_000
    wrong = create(amount=10_000, subtotal=10_000, tax_amount=825)
    assert wrong.status_code == 422
    assert wrong.json() == {"errors": {"amount": ["must be subtotal + tax_amount (10000 + 825)"]}}
    assert create(amount=100, subtotal=200).status_code == 422
    assert create(amount=100, tax_amount=1.5).json()["errors"] == {
        "tax_amount": ["must be an integer"]
    }

    # a person raises the amount in HCP's app: the tax stays, the subtotal follows
    raised = client.put(f"/_sandbox/invoices/{full['id']}", json={"amount": 11_825}).json()
    assert (raised["subtotal"], raised["tax_amount"]) == (11_000, 825)
    taxed = client.put(f"/_sandbox/invoices/{full['id']}", json={"tax_amount": 900}).json()
    assert (taxed["amount"], taxed["subtotal"], taxed["outstanding_balance"]) == (
        11_900,
        11_000,
        11_900,
    )


# ---------------------------------------------------------------------------------- refunds


def test_a_partial_refund_changes_the_payment_and_reopens_its_invoice(
    app: Any, client: httpx.Client
) -> None:
    invoice = paid_invoice(client, app)
    first, second = invoice["payments"]
    requests_before = len(state_of(app).requests())

    response = refund(client, first["id"], {"amount": 1_500})
    assert response.status_code == 200, response.text
    payment = response.json()
    assert payment["id"] == first["id"], "a refund is the same payment, not a new one"
    assert (payment["amount"], payment["refunded_amount"], payment["status"]) == (
        6_000,
        1_500,
        "succeeded",
    )
    reopened = client.get(f"/invoices/{invoice['id']}").json()
    assert (reopened["status"], reopened["outstanding_balance"]) == ("sent", 1_500)
    assert reopened["updated_at"] > invoice["updated_at"]
    assert "paid_at" not in reopened
    assert [p["id"] for p in reopened["payments"]] == [first["id"], second["id"]]
    assert reopened["payments"][0]["refunded_amount"] == 1_500
    listed = client.get(f"/invoices/{invoice['id']}/payments").json()["payments"]
    assert listed[0] == payment and len(listed) == 2

    # refunds add up; the rest of the payment, asked for by leaving the amount out
    assert refund(client, first["id"], {"amount": 500}).json()["refunded_amount"] == 2_000
    whole = refund(client, first["id"], {}).json()
    assert (whole["refunded_amount"], whole["status"]) == (6_000, "refunded")
    after = client.get(f"/invoices/{invoice['id']}").json()
    assert (after["status"], after["outstanding_balance"]) == ("sent", 6_000)
    logged = [r["path"] for r in state_of(app).requests()[requests_before:]]
    assert not [p for p in logged if p.startswith("/_sandbox/")], "admin routes are not logged"


def test_a_refund_posted_without_a_body_gives_back_all_that_is_left(
    app: Any, client: httpx.Client
) -> None:
    invoice = paid_invoice(client, app)
    payment = invoice["payments"][0]
    whole = client.post(f"/_sandbox/payments/{payment['id']}/refund")  # as `curl -X POST`
    assert whole.status_code == 200, whole.text
    assert (whole.json()["refunded_amount"], whole.json()["status"]) == (6_000, "refunded")
    not_json = client.post(f"/_sandbox/payments/{payment['id']}/refund", content=b"amount=5")
    assert not_json.status_code == 422
    assert not_json.json() == {"errors": {"body": ["must be a JSON object"]}}


def test_a_payment_after_a_refund_settles_the_invoice_again(app: Any, client: httpx.Client) -> None:
    invoice = paid_invoice(client, app)
    refund(client, invoice["payments"][1]["id"], {"amount": 1_000})
    too_much = client.post(f"/_sandbox/invoices/{invoice['id']}/payments", json={"amount": 1_001})
    assert too_much.status_code == 422
    again = client.post(f"/_sandbox/invoices/{invoice['id']}/payments", json={"amount": 1_000})
    assert again.status_code == 201
    settled = client.get(f"/invoices/{invoice['id']}").json()
    assert (settled["status"], settled["outstanding_balance"]) == ("paid", 0)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"amount": 6_001}, {"amount": ["is more than the payment can give back (6000 of 6000)"]}),
        ({"amount": 0}, {"amount": ["must be greater than or equal to 1"]}),
        ({"amount": -5}, {"amount": ["must be greater than or equal to 1"]}),
        ({"amount": 12.5}, {"amount": ["must be an integer"]}),
        ({"amount": "100"}, {"amount": ["must be an integer"]}),
        ({"amount": 5, "reason": "x"}, {"reason": ["is not a refund field (amount)"]}),
    ],
)
def test_a_refund_the_payment_cannot_give_is_422_and_changes_nothing(
    app: Any, client: httpx.Client, body: dict[str, Any], errors: dict[str, Any]
) -> None:
    invoice = paid_invoice(client, app)
    before = state_of(app).dump()
    response = refund(client, invoice["payments"][0]["id"], body)
    assert response.status_code == 422
    assert response.json() == {"errors": errors}
    assert state_of(app).dump() == before


def test_more_than_is_left_after_earlier_refunds_is_refused_with_what_is_left(
    app: Any, client: httpx.Client
) -> None:
    invoice = paid_invoice(client, app)
    payment_id = invoice["payments"][0]["id"]
    refund(client, payment_id, {"amount": 4_000})
    response = refund(client, payment_id, {"amount": 2_001})
    assert response.json() == {
        "errors": {
            "amount": [
                "is more than the payment can give back (2000 of 6000; 4000 of it already refunded)"
            ]
        }
    }
    assert refund(client, payment_id, {"amount": 2_000}).json()["status"] == "refunded"
    assert refund(client, payment_id, {"amount": 1}).json() == {
        "errors": {"payment": ["is refunded and cannot be refunded"]}
    }


def test_only_a_succeeded_payment_is_refunded(app: Any, client: httpx.Client) -> None:
    customer = state_of(app).dump()["customers"][0]["id"]
    invoice = client.post(
        "/invoices", json={"customer_id": customer, "amount": 900, "status": "sent"}
    ).json()
    for status in ("failed", "pending"):
        made = client.post(
            f"/_sandbox/invoices/{invoice['id']}/payments", json={"amount": 900, "status": status}
        ).json()
        response = refund(client, made["id"], {"amount": 100})
        assert response.status_code == 422
        assert response.json() == {"errors": {"payment": [f"is {status} and cannot be refunded"]}}
    missing = refund(client, "pay_nope", {"amount": 1})
    assert (missing.status_code, missing.json()) == (
        404,
        {"error": {"message": "payment not found"}},
    )
    not_an_object = client.post("/_sandbox/payments/pay_nope/refund", json=[1])
    assert not_an_object.status_code == 422


def test_a_refund_sends_invoice_refund_succeeded_with_the_invoice(
    app: Any, client: httpx.Client
) -> None:
    invoice = paid_invoice(client, app)
    heard: list[tuple[str, dict[str, Any]]] = []
    state_of(app).listener = lambda event, record, _when: heard.append((event, record))
    refund(client, invoice["payments"][0]["id"], {"amount": 6_000})
    assert [event for event, _record in heard] == ["invoice.refund.succeeded"]
    sent = heard[0][1]
    assert sent == client.get(f"/invoices/{invoice['id']}").json()
    assert (sent["status"], sent["outstanding_balance"]) == ("sent", 6_000)
    assert sent["payments"][0]["status"] == "refunded"


# ------------------------------------------------------------------------------- data files


def test_a_data_file_from_before_refunds_and_tax_loads(tmp_path: Path) -> None:
    data = {
        "customers": [{"id": "cus_1", "first_name": "Ann"}],
        "invoices": [
            {"id": "inv_1", "customer_id": "cus_1", "amount": 500, "status": "sent"},
            {"id": "inv_2", "customer_id": "cus_1", "amount": 1_000, "subtotal": 900},
        ],
        "payments": [
            {"id": "pay_1", "invoice_id": "inv_1", "amount": 300},
            {"id": "pay_2", "invoice_id": "inv_1", "amount": 100, "status": "refunded"},
            {"id": "pay_3", "invoice_id": "inv_1", "amount": 100, "refunded_amount": 40},
        ],
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    state = state_of(create_app(KEY, data_file=str(path)))
    dumped = state.dump()
    first, second = dumped["invoices"]
    assert (first["subtotal"], first["tax_amount"]) == (500, 0)
    assert (second["subtotal"], second["tax_amount"]) == (900, 100)
    assert [p["refunded_amount"] for p in dumped["payments"]] == [0, 100, 40]
    assert first["outstanding_balance"] == 500 - 300 - (100 - 40)
    again = state_of(create_app(KEY, data_file=str(path)))
    path.write_text(json.dumps(dumped))
    again.load(json.loads(path.read_text()), source="dumped")
    assert again.dump() == dumped


def test_a_refund_above_its_payment_in_a_data_file_is_a_config_error(tmp_path: Path) -> None:
    data = {
        "customers": [{"id": "cus_1", "first_name": "Ann"}],
        "invoices": [{"id": "inv_1", "customer_id": "cus_1", "amount": 500}],
        "payments": [{"invoice_id": "inv_1", "amount": 100, "refunded_amount": 101}],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(
        ConfigError, match=r"payments\[0\]\.refunded_amount: is more than the amount"
    ):
        create_app(KEY, data_file=str(path))


def test_the_refund_event_gives_the_connector_the_refunded_payment_without_a_request(
    app: Any, client: httpx.Client
) -> None:
    """An event-driven run after ``invoice.refund.succeeded``: the invoice in the payload is
    whole and fresh, its payments nested, so the changed payment (the same id, its refund) is
    read from the event alone."""
    invoice = paid_invoice(client, app)
    heard: list[tuple[str, dict[str, Any], str]] = []
    state_of(app).listener = lambda event, record, when: heard.append((event, record, when))
    refund(client, invoice["payments"][0]["id"], {"amount": 250})
    [(name, record, occurred)] = heard
    payload = {"event": name, "event_occurred_at": occurred, "invoice": record}
    event = InboxEvent(1, "hcp", name, ("invoices", "payments"), record["id"], payload, occurred,
                       received_at=time.time())  # fmt: skip
    options = HousecallProOptions(
        type="housecallpro", base_url="http://sandbox", api_key=KEY, rate_limit=0, max_retries=0
    )
    extra = {"transport": SyncASGITransport(app), "clock": time.time}
    conn = HousecallProConnector(options, ConnectorContext(name="hcp", extra=extra))
    logged = len(state_of(app).requests())
    try:
        for entity in ("invoices", "payments"):
            read = conn.read_events(entity, [event])
            assert read is not None
            found = {r.id: r.data for r in read.records}
            if entity == "invoices":
                assert found[invoice["id"]]["outstanding_balance"] == 250
            else:
                assert found.keys() == {p["id"] for p in invoice["payments"]}
                assert found[invoice["payments"][0]["id"]]["refunded_amount"] == 250
    finally:
        conn.close()
    assert state_of(app).requests()[logged:] == [], "the payload was enough"


def test_an_incremental_pass_after_a_refund_lists_the_reopened_invoice(
    app: Any, client: httpx.Client
) -> None:
    """A refund moves its invoice's updated_at: the newest-first pass from the last mark
    lists it (and so the payments that follow it), although no invoice field a person edits
    changed."""

    def connector() -> HousecallProConnector:
        options = HousecallProOptions(type="housecallpro", base_url="http://sandbox",
                                      api_key=KEY, rate_limit=0, max_retries=0,
                                      incremental=["invoices"])  # fmt: skip
        extra = {"transport": SyncASGITransport(app)}
        return HousecallProConnector(options, ConnectorContext(name="hcp", extra=extra))

    first = connector()
    complete = first.read_incremental("invoices", None)
    assert complete is not None
    invoices = {r.id: r.data for r in complete.records}
    token = complete.token()
    first.close()
    paid = next(i for i in invoices.values() if i["status"] == "paid")
    nested = client.get(f"/invoices/{paid['id']}").json()["payments"]
    payment = next(p for p in nested if p["status"] == "succeeded")
    refund(client, payment["id"], {"amount": 100})

    later = connector()
    try:
        partial = later.read_incremental("invoices", token)
        assert partial is not None and not partial.complete
        listed = {r.id: r.data for r in partial.records}
    finally:
        later.close()
    assert paid["id"] in listed and len(listed) < len(invoices)
    assert (listed[paid["id"]]["status"], listed[paid["id"]]["outstanding_balance"]) == (
        "sent",
        100,
    )
