"""The HCP sandbox's jobs, invoices and payments: seeding, the API routes, the admin routes,
the live-API shapes, data files and the knobs, over HTTP in-process (``SyncASGITransport``)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.connectors.housecallpro.sandbox import (
    MAX_PAGE_SIZE,
    Collection,
    SandboxState,
    SyncASGITransport,
    create_app,
    generate_data,
)
from syncengine.errors import ConfigError

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SPEC_INVOICE_STATUSES = {"draft", "sent", "paid", "voided", "canceled"}
SPEC_JOB_STATUSES = {
    "unscheduled", "scheduled", "in_progress", "complete", "completed_unrated",
    "user_canceled", "pro_canceled",
}  # fmt: skip


def make_client(app: Any) -> httpx.Client:
    return httpx.Client(transport=SyncASGITransport(app), base_url="http://sandbox", headers=AUTH)


@pytest.fixture(scope="module")
def seeded() -> dict[str, list[dict[str, Any]]]:
    """A larger seed, generated once: for the distribution checks."""
    return generate_data(600, random_seed=4)


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=30, random_seed=7)


@pytest.fixture
def client(app: Any) -> Iterator[httpx.Client]:
    with make_client(app) as c:
        yield c


def state_of(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


def every(client: httpx.Client, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        response = client.get(path, params={"page_size": MAX_PAGE_SIZE, "page": page, **params})
        assert response.status_code == 200, response.text
        body = response.json()
        found.extend(body[key])
        if page >= body["total_pages"]:
            return found
        page += 1


def a_customer(app: Any) -> str:
    customer_id: str = state_of(app).dump()["customers"][0]["id"]
    return customer_id


def open_invoice(client: httpx.Client, app: Any, amount: int = 10_000) -> dict[str, Any]:
    response = client.post(
        "/invoices", json={"customer_id": a_customer(app), "amount": amount, "status": "sent"}
    )
    assert response.status_code == 201, response.text
    invoice: dict[str, Any] = response.json()
    return invoice


def pay(client: httpx.Client, invoice_id: str, **body: Any) -> httpx.Response:
    return client.post(f"/_sandbox/invoices/{invoice_id}/payments", json=body)


# ----------------------------------------------------------------------------------- seeding


def test_seeding_gives_many_customers_work_and_some_none(
    seeded: dict[str, list[dict[str, Any]]],
) -> None:
    customers, jobs, invoices = seeded["customers"], seeded["jobs"], seeded["invoices"]
    payments = seeded["payments"]
    with_jobs = {j["customer_id"] for j in jobs}
    assert 0.65 < len(with_jobs) / len(customers) < 0.85
    assert 0.8 < len(invoices) / len(customers) < 1.2, "about one invoice per customer"
    assert 1.6 < len(payments) / len(invoices) < 2.4, "about two payments per invoice"
    statuses = Counter(i["status"] for i in invoices)
    assert set(statuses) == SPEC_INVOICE_STATUSES
    assert statuses["paid"] > statuses["sent"] > statuses["draft"]
    owed = [i for i in invoices if i["status"] == "sent"]
    partly = [i for i in owed if 0 < i["outstanding_balance"] < i["amount"]]
    untouched = [i for i in owed if i["outstanding_balance"] == i["amount"]]
    assert len(partly) > 20 and len(untouched) > 20, "some partly paid, some still open"
    assert Counter(p["status"] for p in payments).keys() >= {"succeeded", "failed"}
    assert set(Counter(j["work_status"] for j in jobs)) == SPEC_JOB_STATUSES


def test_seeded_balances_and_references_agree(
    seeded: dict[str, list[dict[str, Any]]],
) -> None:
    customers = {c["id"] for c in seeded["customers"]}
    jobs = {j["id"]: j for j in seeded["jobs"]}
    employees = {e["id"] for e in seeded["employees"]}
    paid_by_invoice: Counter[str] = Counter()
    for payment in seeded["payments"]:
        if payment["status"] == "succeeded":
            paid_by_invoice[payment["invoice_id"]] += payment["amount"]
    invoices = {i["id"]: i for i in seeded["invoices"]}
    assert {p["invoice_id"] for p in seeded["payments"]} <= invoices.keys()
    for job in jobs.values():
        assert job["customer_id"] in customers
        assert {e["id"] for e in job["assigned_employees"]} <= employees
    for invoice in invoices.values():
        assert invoice["customer_id"] == jobs[invoice["job_id"]]["customer_id"]
        assert invoice["outstanding_balance"] == invoice["amount"] - paid_by_invoice[invoice["id"]]
        assert invoice["outstanding_balance"] >= 0
        assert isinstance(invoice["amount"], int) and invoice["amount"] > 0
        if invoice["status"] == "paid":
            assert invoice["outstanding_balance"] == 0 and invoice["paid_at"] is not None
        if invoice["status"] in ("voided", "canceled", "draft"):
            assert paid_by_invoice[invoice["id"]] == 0
    numbers = [i["invoice_number"] for i in invoices.values()]
    assert len(set(numbers)) == len(numbers)


def test_seeded_records_have_the_wire_formats(
    seeded: dict[str, list[dict[str, Any]]],
) -> None:
    for prefix, name in (("job_", "jobs"), ("inv_", "invoices"), ("pay_", "payments")):
        for record in seeded[name]:
            assert re.fullmatch(prefix + r"[0-9a-f]{32}", record["id"])
            assert TIMESTAMP.match(record["created_at"])
    for payment in seeded["payments"]:
        assert TIMESTAMP.match(payment["processed_at"])
        assert payment["payment_method"] in {"cash", "check", "credit_card", "ach", "other"}
    for invoice in seeded["invoices"]:
        assert TIMESTAMP.match(invoice["due_at"]) and invoice["created_at"] <= invoice["due_at"]
        assert re.fullmatch(r"\d+(-\d+)?", invoice["invoice_number"])


def test_seeding_is_deterministic_per_random_seed() -> None:
    one, two = generate_data(50, random_seed=9), generate_data(50, random_seed=9)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    other = generate_data(50, random_seed=10)
    assert [i["id"] for i in other["invoices"]] != [i["id"] for i in one["invoices"]]


def test_no_seed_means_no_work_but_the_employees() -> None:
    data = state_of(create_app(KEY)).dump()
    assert [len(data[k]) for k in ("customers", "jobs", "invoices", "payments")] == [0, 0, 0, 0]
    assert len(data["employees"]) == 8


# -------------------------------------------------------------------------------------- jobs


def test_jobs_list_in_the_envelope_with_the_spec_shape(app: Any, client: httpx.Client) -> None:
    body = client.get("/jobs", params={"page_size": 5}).json()
    assert set(body) == {"jobs", "page", "page_size", "total_pages", "total_items"}
    total = len(state_of(app).dump()["jobs"])
    assert (body["page_size"], body["total_items"]) == (5, total)
    job = body["jobs"][0]
    assert "customer_id" not in job and job["customer"]["id"].startswith("cus_")
    assert "addresses" not in job["customer"]
    assert all(v is not None for v in job.values())
    assert isinstance(job["total_amount"], int) and isinstance(job["outstanding_balance"], int)
    newest_first = sorted(
        state_of(app).dump()["jobs"], key=lambda j: (j["created_at"], j["id"]), reverse=True
    )
    assert [j["id"] for j in every(client, "/jobs", "jobs")] == [j["id"] for j in newest_first]


def test_job_totals_are_its_invoices(app: Any, client: httpx.Client) -> None:
    data = state_of(app).dump()
    invoices = [i for i in data["invoices"] if i["status"] not in ("voided", "canceled")]
    job_id = invoices[0]["job_id"]
    mine = [i for i in invoices if i["job_id"] == job_id]
    job = client.get(f"/jobs/{job_id}").json()
    assert job["total_amount"] == sum(i["amount"] for i in mine)
    assert job["outstanding_balance"] == sum(i["outstanding_balance"] for i in mine)


@pytest.mark.parametrize(
    ("name", "pick"),
    [
        ("customer_id", lambda j: j["customer_id"]),
        ("work_status[]", lambda j: j["work_status"]),
        ("employee_ids[]", lambda j: j["assigned_employees"][0]["id"]),
    ],
)
def test_job_filters(app: Any, client: httpx.Client, name: str, pick: Any) -> None:
    jobs = [j for j in state_of(app).dump()["jobs"] if j["assigned_employees"]]
    value = pick(jobs[0])
    expected = {j["id"] for j in state_of(app).dump()["jobs"] if _holds(j, name, value)}
    got = {j["id"] for j in every(client, "/jobs", "jobs", **{name: value})}
    assert got == expected and jobs[0]["id"] in got


def _holds(job: dict[str, Any], name: str, value: str) -> bool:
    if name == "customer_id":
        return bool(job["customer_id"] == value)
    if name == "work_status[]":
        return bool(job["work_status"] == value)
    return value in [e["id"] for e in job["assigned_employees"]]


def test_job_schedule_window_and_sorting(app: Any, client: httpx.Client) -> None:
    starts = sorted(
        j["schedule"]["scheduled_start"]
        for j in state_of(app).dump()["jobs"]
        if j["schedule"]["scheduled_start"]
    )
    low, high = starts[2], starts[-3]
    found = every(
        client,
        "/jobs",
        "jobs",
        scheduled_start_min=low,
        scheduled_start_max=high.replace("Z", "+00:00"),
        sort_by="scheduled_start",
        sort_direction="asc",
    )
    got = [j["schedule"]["scheduled_start"] for j in found]
    assert got == sorted(got) and len(got) == len(starts) - 4
    assert all(low <= s <= high for s in got)


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        ({"employee_ids": "pro_1"}, {"employee_ids": "must be an array"}),
        ({"work_status": "complete"}, {"work_status": "must be an array"}),
        ({"work_status[]": "done"}, {"work_status[]": None}),
        ({"scheduled_start_min": "tomorrow"}, {"scheduled_start_min": None}),
        ({"sort_by": "amount"}, {"sort_by": None}),
    ],
)
def test_bad_job_list_parameters_are_422(
    client: httpx.Client, params: dict[str, str], errors: dict[str, Any]
) -> None:
    response = client.get("/jobs", params=params)
    assert response.status_code == 422
    got = response.json()["errors"]
    assert set(got) == set(errors)
    for name, expected in errors.items():
        assert got[name] == expected if expected is not None else got[name]


def test_create_job_with_a_customer_id_or_the_spec_customer(app: Any, client: httpx.Client) -> None:
    customer_id = a_customer(app)
    body = {
        "description": "Install heat pump",
        "schedule": {"scheduled_start": "2026-05-01T14:00:00+02:00", "arrival_window": 60},
        "tags": ["install"],
        "assigned_employees": [{"id": state_of(app).dump()["employees"][0]["id"]}],
        "total_amount": 999,  # read-only: ignored
    }
    live = client.post("/jobs", json={**body, "customer_id": customer_id})
    spec = client.post("/jobs", json={**body, "customer": {"id": customer_id}})
    assert (live.status_code, spec.status_code) == (201, 201)
    for job in (live.json(), spec.json()):
        assert job["customer"]["id"] == customer_id
        assert job["work_status"] == "scheduled"  # a schedule makes it scheduled
        assert job["schedule"] == {"scheduled_start": "2026-05-01T12:00:00Z", "arrival_window": 60}
        assert job["total_amount"] == 0 and job["assigned_employees"][0]["role"]
        assert client.get(f"/jobs/{job['id']}").json() == job
    numbers = [int(live.json()["invoice_number"]), int(spec.json()["invoice_number"])]
    existing = [int(j["invoice_number"]) for j in state_of(app).dump()["jobs"][:-2]]
    assert numbers[1] == numbers[0] + 1 and numbers[0] > max(existing)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "customer_id"),
        ({"customer_id": "cus_nope"}, "customer_id"),
        ({"customer_id": "CUSTOMER", "customer": {"id": "cus_other"}}, "customer_id"),
        ({"customer_id": "CUSTOMER", "work_status": "done"}, "work_status"),
        ({"customer_id": "CUSTOMER", "schedule": {"scheduled_start": "soon"}},
         "schedule.scheduled_start"),
        ({"customer_id": "CUSTOMER", "schedule": {"scheduled_start": "2026-01-02T00:00:00Z",
                                                  "scheduled_end": "2026-01-01T00:00:00Z"}},
         "schedule.scheduled_end"),
        ({"customer_id": "CUSTOMER", "assigned_employees": [{"id": "pro_nobody"}]},
         "assigned_employees"),
        ({"customer_id": "CUSTOMER", "tags": "vip"}, "tags"),
    ],
)  # fmt: skip
def test_invalid_job_is_422(
    app: Any, client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    text = json.dumps(body).replace("CUSTOMER", a_customer(app))
    before = state_of(app).dump()["jobs"]
    response = client.post("/jobs", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert field in response.json()["errors"], response.json()
    assert state_of(app).dump()["jobs"] == before


def test_update_job_is_partial_and_merges_the_schedule(app: Any, client: httpx.Client) -> None:
    job = client.post(
        "/jobs",
        json={
            "customer_id": a_customer(app),
            "description": "Fix sink",
            "notes": "Gate 12",
            "schedule": {
                "scheduled_start": "2026-05-01T10:00:00Z",
                "scheduled_end": "2026-05-01T12:00:00Z",
            },
        },
    ).json()
    response = client.put(
        f"/jobs/{job['id']}",
        json={"notes": None, "schedule": {"scheduled_end": "2026-05-01T13:00:00Z"}},
    )
    assert response.status_code == 200
    updated = response.json()
    assert "notes" not in updated and updated["description"] == "Fix sink"
    assert updated["schedule"] == {
        "scheduled_start": "2026-05-01T10:00:00Z",
        "scheduled_end": "2026-05-01T13:00:00Z",
    }
    assert updated["updated_at"] > job["updated_at"]
    done = client.put(f"/jobs/{job['id']}", json={"work_status": "complete"}).json()
    assert set(done["work_timestamps"]) == {"on_my_way_at", "started_at", "completed_at"}
    assert client.put("/jobs/job_nope", json={"notes": "x"}).status_code == 404


def test_the_customer_of_an_invoiced_job_stays(app: Any, client: httpx.Client) -> None:
    data = state_of(app).dump()
    job_id = data["invoices"][0]["job_id"]
    job = next(j for j in data["jobs"] if j["id"] == job_id)
    other = next(c["id"] for c in data["customers"] if c["id"] != job["customer_id"])
    response = client.put(f"/jobs/{job_id}", json={"customer_id": other})
    assert response.json() == {"errors": {"customer_id": ["cannot change: the job has invoices"]}}
    same = client.put(f"/jobs/{job_id}", json={"customer": {"id": job["customer_id"]}})
    assert same.status_code == 200


def test_delete_job_and_its_guard(app: Any, client: httpx.Client) -> None:
    invoiced = state_of(app).dump()["invoices"][0]["job_id"]
    response = client.delete(f"/jobs/{invoiced}")
    assert response.status_code == 422
    assert response.json() == {"error": {"message": "job has invoices and cannot be deleted"}}
    job = client.post("/jobs", json={"customer_id": a_customer(app)}).json()
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").json() == {"error": {"message": "job not found"}}
    assert client.delete(f"/jobs/{job['id']}").status_code == 404


# ---------------------------------------------------------------------------------- invoices


def test_invoices_nest_their_payments_by_default(app: Any, client: httpx.Client) -> None:
    data = state_of(app).dump()
    listed = every(client, "/invoices", "invoices")
    assert len(listed) == len(data["invoices"])
    by_invoice: dict[str, list[dict[str, Any]]] = {}
    for payment in data["payments"]:
        by_invoice.setdefault(payment["invoice_id"], []).append(payment)
    for invoice in listed:
        assert set(invoice) >= {"id", "invoice_number", "status", "amount", "outstanding_balance",
                                "customer_id", "job_id", "payments"}  # fmt: skip
        mine = by_invoice.get(invoice["id"], [])
        assert [p["id"] for p in invoice["payments"]] == [p["id"] for p in mine]
        for nested, stored in zip(invoice["payments"], mine, strict=True):
            # the live API's nested fields, and the refunds (a name the sandbox assumes)
            assert set(nested) <= {"id", "status", "payment_method", "amount", "note",
                                   "paid_at", "category", "refunded_amount"}  # fmt: skip
            assert nested["paid_at"] == stored["processed_at"]
            assert nested["refunded_amount"] == stored["refunded_amount"]


def test_invoice_shapes_follow_the_options(app: Any, client: httpx.Client) -> None:
    invoice_id = state_of(app).dump()["payments"][0]["invoice_id"]
    nested = client.get(f"/invoices/{invoice_id}").json()
    assert client.put("/_sandbox/options", json={"nest_payments": False}).json() == {
        "nest_payments": False,
        "live_invoices": False,
    }
    plain = client.get(f"/invoices/{invoice_id}").json()
    assert "payments" not in plain and plain == {k: v for k, v in nested.items() if k != "payments"}
    client.put("/_sandbox/options", json={"live_invoices": True})
    live = client.get(f"/invoices/{invoice_id}").json()
    assert live == {k: v for k, v in plain.items() if k not in ("customer_id", "updated_at")}
    bad = client.put("/_sandbox/options", json={"nest_payments": "yes", "shoe_size": 1})
    assert bad.status_code == 422 and set(bad.json()["errors"]) == {"nest_payments", "shoe_size"}
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/options").json() == {
        "nest_payments": True,
        "live_invoices": False,
    }


def test_invoice_filters_and_sorting(app: Any, client: httpx.Client) -> None:
    data = state_of(app).dump()["invoices"]
    paid = {i["id"] for i in data if i["status"] == "paid"}
    assert {i["id"] for i in every(client, "/invoices", "invoices", **{"status[]": "paid"})} == paid
    customer = data[0]["customer_id"]
    mine = {i["id"] for i in data if i["customer_id"] == customer}
    got = every(client, "/invoices", "invoices", **{"customer_uuid[]": customer})
    assert {i["id"] for i in got} == mine
    cut = sorted(i["created_at"] for i in data)[len(data) // 2]
    later = every(client, "/invoices", "invoices", created_at_min=cut)
    assert {i["id"] for i in later} == {i["id"] for i in data if i["created_at"] >= cut}
    for field, key in (("amount", "amount"), ("due_amount", "outstanding_balance")):
        amounts = [i[key] for i in every(client, "/invoices", "invoices", sort_by=field,
                                           sort_direction="asc")]  # fmt: skip
        assert amounts == sorted(amounts)
    two = client.get("/invoices", params=[("status[]", "paid"), ("status[]", "voided")]).json()
    assert two["total_items"] == sum(1 for i in data if i["status"] in ("paid", "voided"))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "paid"}, "status"),
        ({"customer_uuid": "cus_1"}, "customer_uuid"),
        ({"status[]": "open"}, "status[]"),
        ({"due_at_max": "2026-13-01"}, "due_at_max"),
        ({"sort_by": "shoe_size"}, "sort_by"),
    ],
)
def test_bad_invoice_list_parameters_are_422(
    client: httpx.Client, params: dict[str, str], field: str
) -> None:
    response = client.get("/invoices", params=params)
    assert response.status_code == 422
    assert field in response.json()["errors"]


def test_create_invoice(app: Any, client: httpx.Client) -> None:
    job = next(j for j in state_of(app).dump()["jobs"] if j["work_status"] == "complete")
    taken = job["invoice_number"]
    response = client.post(
        "/invoices", json={"job_id": job["id"], "amount": 12_345, "due_at": "2026-06-01T00:00:00Z"}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["customer_id"] == job["customer_id"], "the customer comes from the job"
    assert (created["amount"], created["outstanding_balance"]) == (12_345, 12_345)
    assert created["status"] == "draft" and created["payments"] == []
    assert created["invoice_number"].startswith(f"{taken}-")
    assert client.get(f"/invoices/{created['id']}").json() == created
    loose = open_invoice(client, app)
    invoices = state_of(app).dump()["invoices"]
    assert loose["invoice_number"].isdigit()
    assert len({i["invoice_number"] for i in invoices}) == len(invoices)
    again = client.post("/invoices", json={**_minimal(app), "invoice_number": taken})
    assert again.status_code == 422
    assert again.json() == {"errors": {"invoice_number": ["has already been taken"]}}


def _minimal(app: Any) -> dict[str, Any]:
    return {"customer_id": a_customer(app), "amount": 100}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 12.5}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": "100"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": None}, "amount"),
        ({"status": "open"}, "status"),
        ({"customer_id": "cus_nope"}, "customer_id"),
        ({"job_id": "job_nope"}, "job_id"),
        ({"due_at": "next week"}, "due_at"),
        ({"invoice_number": "  "}, "invoice_number"),
    ],
)
def test_invalid_invoice_is_422(
    app: Any, client: httpx.Client, change: dict[str, Any], field: str
) -> None:
    before = state_of(app).dump()["invoices"]
    response = client.post("/invoices", json={**_minimal(app), **change})
    assert response.status_code == 422
    assert field in response.json()["errors"], response.json()
    assert state_of(app).dump()["invoices"] == before


def test_invoice_of_another_customers_job_is_422(app: Any, client: httpx.Client) -> None:
    data = state_of(app).dump()
    job = data["jobs"][0]
    other = next(c["id"] for c in data["customers"] if c["id"] != job["customer_id"])
    response = client.post("/invoices", json={"job_id": job["id"], "customer_id": other,
                                              "amount": 5})  # fmt: skip
    assert response.json() == {"errors": {"customer_id": ["is not the customer of the job"]}}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/invoices/INVOICE"),
        ("PATCH", "/invoices/INVOICE"),
        ("DELETE", "/invoices/INVOICE"),
        ("POST", "/invoices/INVOICE/payments"),
        ("POST", "/payments"),
        ("GET", "/payments"),
    ],
)
def test_what_the_api_cannot_do_is_the_live_html_404(
    app: Any, client: httpx.Client, method: str, path: str
) -> None:
    invoice_id = state_of(app).dump()["invoices"][0]["id"]
    response = client.request(method, path.replace("INVOICE", invoice_id), json={"amount": 1})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


# ---------------------------------------------------------------------------------- payments


def test_payments_of_an_invoice_in_the_envelope(app: Any, client: httpx.Client) -> None:
    data = state_of(app).dump()
    invoice_id = Counter(p["invoice_id"] for p in data["payments"]).most_common(1)[0][0]
    stored = [p for p in data["payments"] if p["invoice_id"] == invoice_id]
    first = client.get(f"/invoices/{invoice_id}/payments", params={"page_size": 1}).json()
    assert (first["total_items"], first["total_pages"]) == (len(stored), len(stored))
    listed = every(client, f"/invoices/{invoice_id}/payments", "payments")
    assert listed == [{k: v for k, v in p.items() if v is not None and k != "created_at"}
                      for p in stored]  # fmt: skip
    missing = client.get("/invoices/inv_nope/payments")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "invoice not found"}}


def test_recording_payments_keeps_the_balance_and_status(app: Any, client: httpx.Client) -> None:
    invoice = open_invoice(client, app, amount=10_000)
    failed = pay(client, invoice["id"], amount=10_000, status="failed")
    assert failed.status_code == 201
    part = pay(client, invoice["id"], amount=4_000, payment_method="check", note="Check #1")
    assert part.status_code == 201, part.text
    after_part = client.get(f"/invoices/{invoice['id']}").json()
    assert (after_part["status"], after_part["outstanding_balance"]) == ("sent", 6_000)
    too_much = pay(client, invoice["id"], amount=6_001)
    assert too_much.status_code == 422 and "amount" in too_much.json()["errors"]
    rest = pay(client, invoice["id"], amount=6_000, processed_at="2026-02-01T09:00:00-05:00")
    assert rest.json()["processed_at"] == "2026-02-01T14:00:00Z"
    paid = client.get(f"/invoices/{invoice['id']}").json()
    assert (paid["status"], paid["outstanding_balance"]) == ("paid", 0)
    assert paid["updated_at"] > invoice["updated_at"]
    assert [p["amount"] for p in paid["payments"]] == [10_000, 4_000, 6_000]
    assert paid["payments"][2]["paid_at"] == "2026-02-01T14:00:00Z"
    listed = client.get(f"/invoices/{invoice['id']}/payments").json()["payments"]
    assert [p["id"] for p in listed] == [p["id"] for p in paid["payments"]]
    assert all(p["invoice_id"] == invoice["id"] for p in listed)
    assert listed[1] == {**part.json()}
    assert state_of(app).requests()[-1]["path"] == f"/invoices/{invoice['id']}/payments", (
        "the admin routes are not logged"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": 5, "payment_method": "bitcoin"}, "payment_method"),
        ({"amount": 5, "status": "done"}, "status"),
        ({"amount": 5, "processed_at": "today"}, "processed_at"),
    ],
)
def test_invalid_payment_is_422(
    app: Any, client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    invoice = open_invoice(client, app)
    response = pay(client, invoice["id"], **body)
    assert response.status_code == 422 and field in response.json()["errors"]
    assert client.get(f"/invoices/{invoice['id']}").json()["payments"] == []


def test_no_payment_on_a_voided_or_missing_invoice(app: Any, client: httpx.Client) -> None:
    invoice = open_invoice(client, app)
    voided = client.put(f"/_sandbox/invoices/{invoice['id']}", json={"status": "voided"})
    assert voided.status_code == 200 and voided.json()["status"] == "voided"
    refused = pay(client, invoice["id"], amount=5)
    assert refused.json() == {"errors": {"invoice": ["is voided and takes no payments"]}}
    assert pay(client, "inv_nope", amount=5).status_code == 404


def test_changing_an_invoice_amount_moves_its_balance(app: Any, client: httpx.Client) -> None:
    invoice = open_invoice(client, app, amount=10_000)
    pay(client, invoice["id"], amount=10_000)
    raised = client.put(f"/_sandbox/invoices/{invoice['id']}", json={"amount": 12_000}).json()
    assert (raised["status"], raised["outstanding_balance"]) == ("sent", 2_000)
    lowered = client.put(f"/_sandbox/invoices/{invoice['id']}", json={"amount": 9_000})
    assert lowered.status_code == 422
    assert lowered.json() == {"errors": {"amount": ["is less than the payments received"]}}


def test_a_payment_moves_its_jobs_balance(app: Any, client: httpx.Client) -> None:
    invoice = next(
        i for i in state_of(app).dump()["invoices"] if i["status"] == "sent" and i["job_id"]
    )
    before = client.get(f"/jobs/{invoice['job_id']}").json()["outstanding_balance"]
    assert pay(client, invoice["id"], amount=1).status_code == 201
    after = client.get(f"/jobs/{invoice['job_id']}").json()["outstanding_balance"]
    assert after == before - 1


# ------------------------------------------------------------------------ knobs, log, reset


def test_knobs_and_log_cover_the_new_routes() -> None:
    app = create_app(KEY, seed=5, error_rate=1.0)
    state = state_of(app)
    customer_id = state.dump()["customers"][0]["id"]
    with make_client(app) as c:
        for method, path, body in (
            ("GET", "/jobs", None),
            ("POST", "/jobs", {"customer_id": customer_id}),
            ("GET", "/invoices", None),
            ("POST", "/invoices", {"customer_id": customer_id, "amount": 1}),
        ):
            assert c.request(method, path, json=body).status_code == 500
        assert [(e["method"], e["path"], e["status"]) for e in state.requests()] == [
            ("GET", "/jobs", 500), ("POST", "/jobs", 500),
            ("GET", "/invoices", 500), ("POST", "/invoices", 500),
        ]  # fmt: skip
    data = state.dump()
    assert len(data["jobs"]) == len(generate_data(5)["jobs"]), "an injected 500 writes nothing"
    limited = create_app(KEY, seed=2, rate_limit=1)
    with make_client(limited) as c:
        statuses = [c.get("/invoices").status_code for _ in range(3)]
        assert statuses[0] == 200 and 429 in statuses


def test_reset_restores_jobs_invoices_and_payments(app: Any, client: httpx.Client) -> None:
    before = state_of(app).dump()
    invoice = open_invoice(client, app)
    pay(client, invoice["id"], amount=5)
    client.post("/jobs", json={"customer_id": a_customer(app)})
    assert state_of(app).dump() != before
    client.post("/_sandbox/reset")
    assert state_of(app).dump() == before


# -------------------------------------------------------------------------------- data files


def test_data_file_round_trip_with_every_collection(tmp_path: Path) -> None:
    source = state_of(create_app(KEY, seed=12, random_seed=5)).dump()
    assert all(source[k] for k in ("customers", "employees", "jobs", "invoices", "payments"))
    path = tmp_path / "data.json"
    path.write_text(json.dumps(source))
    loaded = state_of(create_app(KEY, data_file=str(path)))
    assert loaded.dump() == source
    without_balances = {
        **source,
        "invoices": [{k: v for k, v in i.items() if k != "outstanding_balance"}
                     for i in source["invoices"]],
    }  # fmt: skip
    loaded.load(without_balances, source="again")
    assert loaded.dump() == source, "balances are computed from the payments"


def test_data_file_fills_in_ids_numbers_and_the_customer() -> None:
    data = {
        "customers": [{"id": "cus_1", "first_name": "Ann"}],
        "jobs": [{"id": "job_1", "customer_id": "cus_1"}, {"customer": {"id": "cus_1"}}],
        "invoices": [
            {"id": "inv_1", "job_id": "job_1", "amount": 500, "status": "sent"},
            {"customer_id": "cus_1", "amount": 7},
        ],
        "payments": [{"invoice_id": "inv_1", "amount": 300}],
    }
    state = SandboxState(api_key=KEY)
    state.load(data, source="inline")
    dumped = state.dump()
    jobs, invoices, payments = dumped["jobs"], dumped["invoices"], dumped["payments"]
    assert [j["invoice_number"] for j in jobs] == ["1001", "1002"]
    assert jobs[1]["id"].startswith("job_") and jobs[1]["customer_id"] == "cus_1"
    assert [i["invoice_number"] for i in invoices] == ["1001", "1003"]
    assert invoices[0]["customer_id"] == "cus_1", "the customer comes from the job"
    assert [i["outstanding_balance"] for i in invoices] == [200, 7]
    assert invoices[1]["status"] == "draft"
    assert payments[0]["id"].startswith("pay_") and payments[0]["status"] == "succeeded"
    assert TIMESTAMP.match(payments[0]["processed_at"])
    made = state.create_job({"customer_id": "cus_1"})
    assert made["invoice_number"] == "1004"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"jobs": [{"customer_id": "cus_x"}]}, "jobs[0].customer_id: customer cus_x is not in"),
        ({"jobs": [{"description": "no customer"}]}, "jobs[0].customer_id: is missing"),
        ({"jobs": [{"customer_id": "cus_1", "work_status": "done"}]}, "jobs[0].work_status"),
        ({"invoices": [{"customer_id": "cus_1", "amount": 1.5}]}, "invoices[0].amount"),
        ({"invoices": [{"customer_id": "cus_1", "amount": 1, "status": "open"}]},
         "invoices[0].status"),
        ({"invoices": [{"job_id": "job_x", "amount": 1}]}, "invoices[0].job_id"),
        ({"invoices": [{"customer_id": "cus_1", "amount": 1, "invoice_number": "9"},
                       {"customer_id": "cus_1", "amount": 2, "invoice_number": "9"}]},
         "invoices[1].invoice_number: duplicate"),
        ({"invoices": [{"customer_id": "cus_1", "amount": 5, "outstanding_balance": 4}]},
         "invoices[0].outstanding_balance: is 4, but"),
        ({"payments": [{"invoice_id": "inv_x", "amount": 5}]}, "payments[0].invoice_id"),
        ({"payments": [{"amount": 5}]}, "payments[0].invoice_id: is missing"),
        ({"employees": [{"id": "pro_1", "role": "boss"}]}, "employees[0].employee.role"),
        ({"estimates": []}, "unknown collection 'estimates'"),
    ],
)  # fmt: skip
def test_bad_work_in_a_data_file_is_a_config_error(
    tmp_path: Path, data: dict[str, Any], fragment: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"customers": [{"id": "cus_1", "first_name": "Ann"}], **data}))
    with pytest.raises(ConfigError) as info:
        create_app(KEY, data_file=str(path))
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


# -------------------------------------------------------------------------- the collection


def test_collection_caches_filtered_orders_until_a_write() -> None:
    collection = Collection("things", dict, indexes=["kind"])
    collection.replace_all([{"id": f"t{n}", "kind": n % 3, "created_at": f"{n:03d}"}
                            for n in range(10)])  # fmt: skip
    calls: list[str] = []

    def keep(record: dict[str, Any]) -> bool:
        calls.append(record["id"])
        return bool(record["kind"] == 1)

    first = collection.select("created_at", False, "kind=1", keep)
    again = collection.select("created_at", False, "kind=1", keep)
    assert [r["id"] for r in first] == ["t1", "t4", "t7"] and again is first
    assert len(calls) == 10, "one scan for every page of the same filter"
    assert [r["id"] for r in collection.lookup("kind", 1)] == ["t1", "t4", "t7"]
    collection.put({"id": "t4", "kind": 2, "created_at": "004"})
    assert [r["id"] for r in collection.select("created_at", False, "kind=1", keep)] == [
        "t1", "t7",
    ]  # fmt: skip
    assert [r["id"] for r in collection.lookup("kind", 2)] == ["t2", "t5", "t8", "t4"]
    collection.remove("t1")
    assert [r["id"] for r in collection.lookup("kind", 1)] == ["t7"]
