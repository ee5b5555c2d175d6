"""Housecall Pro contract tests for jobs, invoices and payments: the connector and the sandbox
through Prism's validating proxy (see ``test_hcp_contract.py`` for how, and for customers).

What the spec declares and Prism therefore checks:

- requests: ``GET /jobs`` query types (``page``, ``page_size``, ``scheduled_start_min/max``
  as date-times, ``customer_id``, ``employee_ids``), ``POST /jobs`` bodies against ``Job``;
  path parameters everywhere; the security requirement;
- responses: ``GET /jobs``, ``GET /jobs/{id}`` (``Job``), ``GET /invoices``,
  ``GET /invoices/{id}`` (``Invoice``), ``GET /invoices/{id}/payments`` (``Payment``).

A gap in the spec: ``PUT /jobs/{job_id}`` and ``POST /invoices`` declare no request body, so
Prism refuses *any* body there (415 as a 422 problem). A test pins that finding, and the
connector's job updates and invoice creates are validated through a second Prism that runs
a *completed* copy of the spec: the same document with those two request bodies declared as
the spec's own ``Job`` and ``Invoice`` schemas, nothing else changed.

Undeclared on purpose and passed through by Prism: ``sort_by``, ``sort_direction``, the live
array parameters (``work_status[]``, ``status[]``, ``customer_uuid[]``), the nested
``payments`` of a live invoice (an extra property), the list envelope's counters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.housecallpro import HousecallProConnector
from syncengine.errors import NotFoundError, SyncEngineError
from testbed.processes import ServerProcess
from tests.contract.conftest import start_prism_proxy
from tests.tools import (
    PROBLEM_JSON,
    Exchange,
    FakeUpstream,
    RecordingTransport,
    json_reply,
)

pytestmark = pytest.mark.contract

PAGE_SIZE = 3
UNDECLARED_STATUS = "Unable to match the returned status code"
MISSING_JOB = "job_00000000000000000000000000000000"
MISSING_INVOICE = "inv_00000000000000000000000000000000"

_BODY = """      requestBody:
        required: true
        content:
          application/json:
            schema: {{ $ref: '#/components/schemas/{schema}' }}
"""
COMPLETIONS = (
    (
        "      operationId: updateJob\n"
        "      parameters:\n"
        "        - { name: job_id, in: path, required: true, schema: { type: string } }\n",
        "Job",
    ),
    ("      operationId: createInvoice\n", "Invoice"),
)
"""Where the completed spec declares the request bodies the original leaves out."""


# ------------------------------------------------------------------------------ helpers


def assert_prism_found_nothing(recorder: RecordingTransport) -> None:
    assert recorder.exchanges, "no request went through Prism"
    assert not recorder.flagged(), f"Prism flagged:\n{recorder.report()}"


def assert_only_undeclared_status_warning(exchange: Exchange) -> None:
    assert exchange.problem() is None, exchange.describe()
    [violation] = exchange.violations()
    assert violation["severity"] == "Warning", exchange.describe()
    assert UNDECLARED_STATUS in violation["message"], exchange.describe()


@contextlib.contextmanager
def through_prism(recorder: RecordingTransport) -> Iterator[None]:
    try:
        yield
    except SyncEngineError as exc:
        pytest.fail(
            f"the connector failed through the validating proxy: {exc}\n"
            f"Prism's findings:\n{recorder.report()}",
            pytrace=False,
        )


def every(client: httpx.Client, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        body = client.get(path, params={"page_size": 200, "page": page, **params}).json()
        found.extend(body[key])
        if page >= body["total_pages"]:
            return found
        page += 1


def problem_locations(response: httpx.Response) -> list[list[str]]:
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.text
    return [v.get("location", []) for v in response.json().get("validation", [])]


def make_connector(url: str, key: str, recorder: RecordingTransport) -> HousecallProConnector:
    options = HousecallProConnector.Options.model_validate(
        {"type": "housecallpro", "base_url": url, "api_key": key, "rate_limit": 0,
         "page_size": PAGE_SIZE, "max_retries": 0, "concurrency": 2}
    )  # fmt: skip
    context = ConnectorContext(name="hcp", extra={"transport": recorder, "sleep": lambda _: None})
    return HousecallProConnector(options, context)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def completed_spec(hcp_openapi_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spec with request bodies for ``PUT /jobs/{id}`` (``Job``) and ``POST /invoices``
    (``Invoice``), written beside the tests' temporary files."""
    text = hcp_openapi_spec.read_text(encoding="utf-8")
    for anchor, schema in COMPLETIONS:
        assert text.count(anchor) == 1, f"the spec changed around {anchor!r}: update COMPLETIONS"
        text = text.replace(anchor, anchor + _BODY.format(schema=schema))
    path = tmp_path_factory.mktemp("spec") / "housecallpro-openapi-completed.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def completed_proxy(
    prism_bin: str, completed_spec: Path, hcp_sandbox_process: ServerProcess
) -> Iterator[ServerProcess]:
    with start_prism_proxy(prism_bin, completed_spec, hcp_sandbox_process.url) as server:
        yield server


@pytest.fixture
def connector(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[HousecallProConnector]:
    conn = make_connector(hcp_prism_proxy.url, hcp_api_key, prism_recorder)
    yield conn
    conn.close()


@pytest.fixture
def completed_connector(
    completed_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[HousecallProConnector]:
    conn = make_connector(completed_proxy.url, hcp_api_key, prism_recorder)
    yield conn
    conn.close()


@pytest.fixture
def api(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=hcp_prism_proxy.url,
        transport=prism_recorder,
        headers={"Authorization": f"Token {hcp_api_key}"},
        timeout=30,
    ) as client:
        yield client


def a_customer(direct: httpx.Client) -> str:
    customer_id: str = every(direct, "/customers", "customers")[0]["id"]
    return customer_id


def job_data(customer_id: str, n: int = 1) -> dict[str, Any]:
    """A job with every writable field of the spec's ``Job`` the mapping uses."""
    return {
        "customer_id": customer_id,
        "description": f"Contract job {n}",
        "notes": "Side gate",
        "work_status": "scheduled",
        "schedule": {
            "scheduled_start": f"2026-03-{n:02d}T15:00:00Z",
            "scheduled_end": f"2026-03-{n:02d}T17:00:00Z",
            "arrival_window": 120,
        },
        "tags": ["contract"],
    }


# ------------------------------------------------------------- A: the connector's requests


def test_read_jobs_invoices_and_nested_payments(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    jobs = every(hcp_direct, "/jobs", "jobs")
    invoices = every(hcp_direct, "/invoices", "invoices")
    assert len(invoices) > 3 * PAGE_SIZE, "the seed should make the reads span several pages"

    with through_prism(prism_recorder):
        read_jobs = list(connector.read("jobs"))
        read_invoices = list(connector.read("invoices"))
        read_payments = list(connector.read("payments"))

    assert {j.id for j in read_jobs} == {j["id"] for j in jobs}
    assert {i.id for i in read_invoices} == {i["id"] for i in invoices}
    assert sorted(p.id for p in read_payments) == sorted(
        p["id"] for i in invoices for p in i["payments"]
    )
    paths = {e.path for e in prism_recorder.exchanges}
    assert paths == {"/jobs", "/invoices"}, "nested payments need no requests of their own"
    assert_prism_found_nothing(prism_recorder)


def test_read_payments_invoice_by_invoice(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    hcp_direct.put("/_sandbox/options", json={"nest_payments": False}).raise_for_status()
    invoices = every(hcp_direct, "/invoices", "invoices")

    with through_prism(prism_recorder):
        list(connector.read("invoices"))
        payments = list(connector.read("payments"))

    per_invoice = [e for e in prism_recorder.exchanges if e.path.endswith("/payments")]
    assert sorted(e.path for e in per_invoice) == sorted(
        f"/invoices/{i['id']}/payments" for i in invoices
    )
    assert all(p.data["invoice_id"] and p.data["processed_at"] for p in payments)
    assert payments, "the seed has payments"
    assert_prism_found_nothing(prism_recorder)


def test_read_live_invoices_and_fill_in_their_customers(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    hcp_direct.put("/_sandbox/options", json={"live_invoices": True}).raise_for_status()

    with through_prism(prism_recorder):
        invoices = list(connector.read("invoices"))

    assert invoices and all(i.data["customer_id"].startswith("cus_") for i in invoices)
    assert {e.path for e in prism_recorder.exchanges} == {"/invoices", "/jobs"}
    assert_prism_found_nothing(prism_recorder)


def test_get_a_job_and_an_invoice(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    job = every(hcp_direct, "/jobs", "jobs")[0]
    invoice = every(hcp_direct, "/invoices", "invoices")[0]

    with through_prism(prism_recorder):
        got_job = connector.get("jobs", job["id"])
        got_invoice = connector.get("invoices", invoice["id"])

    assert got_job is not None and got_job.data["customer_id"] == job["customer"]["id"]
    assert got_invoice is not None
    assert got_invoice.data == {k: v for k, v in invoice.items() if k != "payments"}
    assert_prism_found_nothing(prism_recorder)
    prism_recorder.clear()
    for entity, missing in (("jobs", MISSING_JOB), ("invoices", MISSING_INVOICE)):
        with pytest.raises(NotFoundError):
            connector.get(entity, missing)
    for exchange in prism_recorder.exchanges:
        assert exchange.status == 404
        assert_only_undeclared_status_warning(exchange)


def test_create_find_and_delete_a_job(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    data = job_data(a_customer(hcp_direct))

    with through_prism(prism_recorder):
        created = connector.create("jobs", data, key="contract-job")
        found = connector.find("jobs", data)
        connector.delete("jobs", created.id)

    assert [r.id for r in found] == [created.id]
    post = prism_recorder.exchanges[0]
    assert (post.method, post.path, post.status) == ("POST", "/jobs", 201)
    find = prism_recorder.exchanges[1]
    query = parse_qs(find.url.query.decode())
    assert query["customer_id"] == [data["customer_id"]]
    assert query["scheduled_start_min"] == query["scheduled_start_max"] == ["2026-03-01T15:00:00Z"]
    delete = prism_recorder.exchanges[-1]
    assert (delete.method, delete.status) == ("DELETE", 204)
    assert_prism_found_nothing(prism_recorder)
    prism_recorder.clear()
    connector.delete("jobs", created.id)  # already gone: a JSON 404, not an error
    assert_only_undeclared_status_warning(prism_recorder.exchanges[0])


def test_find_an_invoice_by_its_number(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    invoice = every(hcp_direct, "/invoices", "invoices")[2]

    with through_prism(prism_recorder):
        found = connector.find(
            "invoices",
            {"invoice_number": invoice["invoice_number"], "customer_id": invoice["customer_id"]},
        )

    assert [r.id for r in found] == [invoice["id"]]
    query = parse_qs(prism_recorder.exchanges[0].url.query.decode())
    assert query["customer_uuid[]"] == [invoice["customer_id"]]
    assert_prism_found_nothing(prism_recorder)


def test_the_spec_declares_no_body_for_job_updates_and_invoice_creates(
    api: httpx.Client, hcp_direct: httpx.Client
) -> None:
    """The finding the completed spec works around: with the spec as it is, Prism refuses
    every body of ``PUT /jobs/{id}`` and ``POST /invoices`` (so would any strict client
    generated from it), however valid; nothing reaches the sandbox."""
    job = every(hcp_direct, "/jobs", "jobs")[0]
    hcp_direct.delete("/_sandbox/requests")
    for method, path, body in (
        ("PUT", f"/jobs/{job['id']}", {"notes": "x"}),
        ("POST", "/invoices", {"customer_id": job["customer"]["id"], "amount": 100}),
    ):
        response = api.request(method, path, json=body)
        assert response.status_code == 422
        [finding] = response.json()["validation"]
        assert finding["code"] == 415 and "non-empty body" in finding["message"]
    assert hcp_direct.get("/_sandbox/requests").json()["requests"] == []


def test_update_a_job_against_the_completed_spec(
    completed_connector: HousecallProConnector,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
) -> None:
    created = hcp_direct.post("/jobs", json=job_data(a_customer(hcp_direct))).json()
    current = completed_connector.get("jobs", created["id"])
    assert current is not None
    full = {
        **current.data,
        "notes": None,
        "work_status": "in_progress",
        "tags": None,
        "schedule": {**current.data["schedule"], "scheduled_end": "2026-03-01T18:30:00Z"},
    }
    patch = {"notes": None, "work_status": "in_progress", "tags": None,
             "schedule.scheduled_end": "2026-03-01T18:30:00Z"}  # fmt: skip

    with through_prism(prism_recorder):
        updated = completed_connector.update("jobs", created["id"], patch, full=full)

    assert updated is not None
    assert updated.data["work_status"] == "in_progress" and updated.data["tags"] == []
    assert updated.data["schedule"]["scheduled_end"] == "2026-03-01T18:30:00Z"
    put = prism_recorder.exchanges[-1]
    assert (put.method, put.status) == ("PUT", 200)
    assert_prism_found_nothing(prism_recorder)


def test_create_an_invoice_against_the_completed_spec(
    completed_connector: HousecallProConnector,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
) -> None:
    job = every(hcp_direct, "/jobs", "jobs")[0]
    data = {
        "invoice_number": "C-1001",
        "status": "sent",
        "amount": 123_456,
        "customer_id": job["customer"]["id"],
        "job_id": job["id"],
        "due_at": "2026-08-01T00:00:00Z",
        "outstanding_balance": 123_456,  # read-only: must not be sent
    }

    with through_prism(prism_recorder):
        created = completed_connector.create("invoices", data, key="contract-invoice")
        found = completed_connector.find("invoices", data)

    assert [r.id for r in found] == [created.id]
    stored = hcp_direct.get(f"/invoices/{created.id}").json()
    assert created.data == {k: v for k, v in stored.items() if k != "payments"}
    post = prism_recorder.exchanges[0]
    assert (post.method, post.path, post.status) == ("POST", "/invoices", 201)
    assert b"outstanding_balance" not in post.request_body
    assert_prism_found_nothing(prism_recorder)


def test_create_an_invoice_with_its_subtotal_and_tax_against_the_completed_spec(
    completed_connector: HousecallProConnector,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
) -> None:
    """``subtotal`` and ``tax_amount`` (not in the spec's ``Invoice``, which allows extra
    properties) go with the create, and come back as sent."""
    customer_id = every(hcp_direct, "/customers", "customers")[0]["id"]
    data = {"customer_id": customer_id, "amount": 10_825, "subtotal": 10_000, "tax_amount": 825}

    with through_prism(prism_recorder):
        created = completed_connector.create("invoices", data, key="contract-taxed-invoice")

    assert (created.data["subtotal"], created.data["tax_amount"]) == (10_000, 825)
    post = prism_recorder.exchanges[0]
    assert (post.method, post.path, post.status) == ("POST", "/invoices", 201)
    assert b'"tax_amount":825' in post.request_body.replace(b" ", b"")
    assert_prism_found_nothing(prism_recorder)


@pytest.mark.parametrize(
    ("method", "path", "body", "location"),
    [
        ("PUT", "/jobs/job_1", {"work_status": "done"}, ["body", "work_status"]),
        ("PUT", "/jobs/job_1", {"schedule": {"scheduled_start": None}},
         ["body", "schedule", "scheduled_start"]),
        ("POST", "/invoices", {"amount": "12.50"}, ["body", "amount"]),
        ("POST", "/invoices", {"amount": 1, "status": "open"}, ["body", "status"]),
        ("POST", "/invoices", {"amount": 1, "customer_id": None}, ["body", "customer_id"]),
    ],
)  # fmt: skip
def test_the_completed_spec_still_validates(
    completed_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
    method: str,
    path: str,
    body: dict[str, Any],
    location: list[str],
) -> None:
    """Negative controls for the completed spec: an invalid body is refused, so the clean
    runs above mean something (``status: open`` is what the live API sends, yet not in the
    spec's enum: the connector never writes it back, invoices cannot be updated)."""
    with httpx.Client(base_url=completed_proxy.url, transport=prism_recorder,
                      headers={"Authorization": f"Token {hcp_api_key}"}) as client:  # fmt: skip
        response = client.request(method, path, json=body)
    assert response.status_code == 422
    assert location in problem_locations(response)
    assert hcp_direct.get("/_sandbox/requests").json()["requests"] == []


# ------------------------------------------------------------- B: the sandbox's responses


def test_sandbox_job_lists_and_filters(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    jobs = every(hcp_direct, "/jobs", "jobs")
    job = next(j for j in jobs if j["assigned_employees"] and "schedule" in j)
    start = job["schedule"]["scheduled_start"]
    queries: list[Any] = [
        {"page": 1, "page_size": 4},
        {"page": 99, "page_size": 4},
        {"customer_id": job["customer"]["id"]},
        [("employee_ids[]", job["assigned_employees"][0]["id"]), ("work_status[]", "complete"),
         ("work_status[]", job["work_status"])],
        {"scheduled_start_min": start, "scheduled_start_max": start, "sort_by": "updated_at",
         "sort_direction": "asc"},
        {},
    ]  # fmt: skip
    for params in queries:
        response = api.get("/jobs", params=params)
        assert response.status_code == 200, prism_recorder.report()
    filtered = api.get("/jobs", params={"customer_id": job["customer"]["id"]}).json()["jobs"]
    assert job["id"] in [j["id"] for j in filtered]
    assert_prism_found_nothing(prism_recorder)


def test_sandbox_job_get_create_update_delete(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    """POST, PUT and DELETE responses have no schema in the spec: each body is compared with
    what GET then returns, which Prism checks against ``Job``."""
    data = job_data(a_customer(hcp_direct), 2)
    spec_shaped = {**{k: v for k, v in data.items() if k != "customer_id"},
                   "customer": {"id": data["customer_id"]}}  # fmt: skip
    created = api.post("/jobs", json=spec_shaped)
    assert created.status_code == 201, prism_recorder.report()
    job_id = created.json()["id"]
    fetched = api.get(f"/jobs/{job_id}")
    assert fetched.status_code == 200 and fetched.json() == created.json()
    updated = hcp_direct.put(f"/jobs/{job_id}", json={"work_status": "complete"}).json()
    assert api.get(f"/jobs/{job_id}").json() == updated  # work_timestamps now set, still valid
    deleted = api.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_prism_found_nothing(prism_recorder)


def test_sandbox_invoices_in_every_shape(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    invoice = every(hcp_direct, "/invoices", "invoices")[0]
    payment = hcp_direct.post(
        f"/_sandbox/invoices/{invoice['id']}/payments",
        json={"amount": 1, "payment_method": "check", "note": "Check #77", "status": "pending"},
    )
    assert payment.status_code == 201, payment.text
    for options in ({}, {"nest_payments": False}, {"live_invoices": True}):
        hcp_direct.put("/_sandbox/options", json=options).raise_for_status()
        for params in ({"page_size": 4}, {"page": 2, "page_size": 4},
                       [("status[]", "paid"), ("status[]", "sent"), ("sort_by", "amount")],
                       {"customer_uuid[]": invoice["customer_id"], "created_at_min":
                        invoice["created_at"]}):  # fmt: skip
            response = api.get("/invoices", params=params)
            assert response.status_code == 200, prism_recorder.report()
        assert api.get(f"/invoices/{invoice['id']}").status_code == 200, prism_recorder.report()
        listed = api.get(f"/invoices/{invoice['id']}/payments")
        assert listed.status_code == 200, prism_recorder.report()
        assert payment.json() in listed.json()["payments"]
    created = hcp_direct.post("/invoices", json={"customer_id": invoice["customer_id"],
                                                 "amount": 0, "status": "draft"})  # fmt: skip
    assert api.get(f"/invoices/{created.json()['id']}").status_code == 200
    assert_prism_found_nothing(prism_recorder)


def test_sandbox_refunds_keep_the_invoice_and_payment_shapes(
    api: httpx.Client,
    connector: HousecallProConnector,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
) -> None:
    """A partly and a fully refunded payment (``refunded_amount``, the spec's ``refunded``
    status) and the invoice they reopen pass Prism in every shape, and the connector reads
    them through it: the same payments, one of them refunded in full."""
    invoices = every(hcp_direct, "/invoices", "invoices")
    first, second, *_ = next(
        succeeded
        for i in invoices
        if len(succeeded := [p for p in i["payments"] if p["status"] == "succeeded"]) >= 2
    )
    invoice = next(i for i in invoices if first in i["payments"])
    hcp_direct.post(
        f"/_sandbox/payments/{first['id']}/refund", json={"amount": 1}
    ).raise_for_status()
    hcp_direct.post(f"/_sandbox/payments/{second['id']}/refund", json={}).raise_for_status()
    for options in ({}, {"nest_payments": False}, {"live_invoices": True}):
        hcp_direct.put("/_sandbox/options", json=options).raise_for_status()
        assert api.get("/invoices", params={"page_size": 200}).status_code == 200
        shown = api.get(f"/invoices/{invoice['id']}")
        assert shown.status_code == 200, prism_recorder.report()
        listed = api.get(f"/invoices/{invoice['id']}/payments")
        assert listed.status_code == 200, prism_recorder.report()
        by_id = {p["id"]: p for p in listed.json()["payments"]}
        assert by_id[first["id"]]["refunded_amount"] == 1
        assert by_id[second["id"]]["status"] == "refunded"
    hcp_direct.put("/_sandbox/options", json={"nest_payments": True, "live_invoices": False})

    with through_prism(prism_recorder):
        list(connector.read("invoices"))
        payments = {p.id: p.data for p in connector.read("payments")}
    assert payments[first["id"]]["refunded_amount"] == 1
    assert payments[second["id"]]["refunded_amount"] == second["amount"]
    assert_prism_found_nothing(prism_recorder)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"/jobs/{MISSING_JOB}", "job not found"),
        (f"/invoices/{MISSING_INVOICE}", "invoice not found"),
        (f"/invoices/{MISSING_INVOICE}/payments", "invoice not found"),
    ],
)
def test_sandbox_not_found_is_json(
    api: httpx.Client, prism_recorder: RecordingTransport, path: str, message: str
) -> None:
    response = api.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": {"message": message}}
    assert_only_undeclared_status_warning(prism_recorder.exchanges[0])


def test_sandbox_bare_array_parameter_is_the_live_422(
    api: httpx.Client, prism_recorder: RecordingTransport
) -> None:
    """The spec declares ``employee_ids`` as an array (form style: ``employee_ids=a``), which
    Prism accepts; the live API wants ``employee_ids[]=a`` and answers the bare form 422 — so
    does the sandbox (undeclared status: a warning)."""
    response = api.get("/jobs", params={"employee_ids": "pro_1"})
    assert response.status_code == 422
    assert response.json() == {"errors": {"employee_ids": "must be an array"}}
    assert_only_undeclared_status_warning(prism_recorder.exchanges[0])


def test_sandbox_refuses_a_spec_valid_job_it_cannot_store(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    """The spec requires nothing of a ``Job``; HCP needs its customer, and will not delete a
    job that has invoices."""
    response = api.post("/jobs", json={"description": "whose?"})
    assert response.status_code == 422
    assert response.json() == {"errors": {"customer_id": ["is missing"]}}
    invoiced = every(hcp_direct, "/invoices", "invoices")[0]["job_id"]
    refused = api.delete(f"/jobs/{invoiced}")
    assert refused.status_code == 422
    for exchange in prism_recorder.exchanges:
        assert_only_undeclared_status_warning(exchange)


# ---------------------------------------------- negative controls: Prism really validates


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "location"),
    [
        ("POST", "/jobs", {"json": {"customer": {"id": "cus_1"}, "work_status": "done"}},
         ["body", "work_status"]),
        ("POST", "/jobs", {"json": {"customer": "cus_1"}}, ["body", "customer"]),
        ("POST", "/jobs", {"json": {"schedule": {"scheduled_start": "soon"}}},
         ["body", "schedule", "scheduled_start"]),
        ("POST", "/jobs", {"json": {"total_amount": 12.5}}, ["body", "total_amount"]),
        ("GET", "/jobs", {"params": {"scheduled_start_min": "yesterday"}},
         ["query", "scheduled_start_min"]),
        ("GET", "/jobs", {"params": {"page_size": "ten"}}, ["query", "page_size"]),
    ],
)  # fmt: skip
def test_prism_rejects_an_invalid_request(
    api: httpx.Client,
    hcp_direct: httpx.Client,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    location: list[str],
) -> None:
    response = api.request(method, path, **kwargs)
    assert response.status_code == 422
    assert location in problem_locations(response)
    assert hcp_direct.get("/_sandbox/requests").json()["requests"] == []


INVALID_RESPONSES = {
    ("GET", "/jobs"): json_reply({"jobs": [{"id": "job_1", "work_status": "done"}]}),
    ("GET", "/jobs/job_bad_customer"): json_reply(
        {"id": "job_bad_customer", "customer": {"id": "cus_1", "email": "nope"}}
    ),
    ("GET", "/jobs/job_text_money"): json_reply({"id": "job_text_money", "total_amount": "12.00"}),
    ("GET", "/invoices/inv_open"): json_reply({"id": "inv_open", "status": "open"}),
    ("GET", "/invoices/inv_float"): json_reply({"id": "inv_float", "amount": 12.5}),
    ("GET", "/invoices/inv_null"): json_reply({"id": "inv_null", "customer_id": None}),
    ("GET", "/invoices/inv_1/payments"): json_reply(
        {"payments": [{"id": "pay_1", "payment_method": "bitcoin", "processed_at": "monday"}]}
    ),
}


@pytest.mark.parametrize(
    ("path", "locations"),
    [
        ("/jobs", [["response", "body", "jobs", "0", "work_status"]]),
        ("/jobs/job_bad_customer", [["response", "body", "customer", "email"]]),
        ("/jobs/job_text_money", [["response", "body", "total_amount"]]),
        ("/invoices/inv_open", [["response", "body", "status"]]),
        ("/invoices/inv_float", [["response", "body", "amount"]]),
        ("/invoices/inv_null", [["response", "body", "customer_id"]]),
        (
            "/invoices/inv_1/payments",
            [
                ["response", "body", "payments", "0", "payment_method"],
                ["response", "body", "payments", "0", "processed_at"],
            ],
        ),
    ],
)
def test_prism_rejects_an_invalid_response(
    fake_upstream: tuple[FakeUpstream, ServerProcess],
    prism_recorder: RecordingTransport,
    path: str,
    locations: list[list[str]],
) -> None:
    """Including the live API's own ``status: "open"``: the spec's enum does not have it, so
    a live response would fail this contract; the connector passes it on regardless."""
    upstream, proxy = fake_upstream
    upstream.replies.update(INVALID_RESPONSES)
    with httpx.Client(base_url=proxy.url, transport=prism_recorder,
                      headers={"Authorization": "Token k"}) as client:  # fmt: skip
        response = client.get(path)
    assert ("GET", path) in upstream.seen
    assert response.status_code == 500
    problem = response.json()
    assert problem["type"].endswith("#VIOLATIONS")
    found = [v["location"] for v in problem["validation"] if v["severity"] == "Error"]
    assert sorted(found) == sorted(locations), problem
