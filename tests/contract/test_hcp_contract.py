"""Housecall Pro contract tests: the connector and the sandbox against the OpenAPI document.

Prism 5 runs as a validating proxy (``prism proxy --errors``) in front of the sandbox
subprocess, so every exchange is checked against ``housecallpro-openapi.yaml`` twice:

A. the request (what the connector sends): path, query parameter types, the security
   requirement and the JSON body against the ``Customer`` schema. Prism answers a violation
   itself (422 problem+json) and the sandbox never sees the request;
B. the response (what the sandbox sends back): status code, media type and JSON body, where
   the spec declares one: GET /customers and GET /customers/{id} only. An error-level
   violation becomes a 500 problem+json; a warning passes with an ``sl-violations`` header.

The connector therefore cannot succeed through the proxy unless both sides keep the contract.
Negative controls show that the proxy really validates: invalid requests, and a fake upstream
with invalid responses. What Prism cannot check (bodies the spec does not declare, the
``Token`` prefix of the API key) is shown by tests too, so that nobody relies on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.housecallpro import HousecallProConnector
from syncengine.errors import NotFoundError, RetriableError, SyncEngineError
from testbed.processes import ServerProcess
from tests.tools import (
    PROBLEM_JSON,
    Exchange,
    FakeUpstream,
    RecordingTransport,
    json_reply,
)

pytestmark = pytest.mark.contract

CUSTOMERS = "customers"
PAGE_SIZE = 3
MISSING_ID = "cus_00000000000000000000000000000000"
UNDECLARED_STATUS = "Unable to match the returned status code"
"""How Prism 5 words the warning for a response status the spec does not declare."""

FULL_CUSTOMER: dict[str, Any] = {
    "first_name": "Contract",
    "last_name": "Tester",
    "email": "contract.tester@example.com",
    "mobile_number": "+15552013344",
    "home_number": "(555) 201-4455",
    "work_number": "555-201-5566",
    "company": "Contract Testing LLC",
    "notifications_enabled": True,
    "lead_source": "Referral",
    "tags": ["vip", "commercial"],
    "addresses": [
        {
            "type": "service",
            "street": "12 Oak St",
            "street_line_2": "Suite 4",
            "city": "Austin",
            "state": "TX",
            "zip": "78701",
            "country": "US",
        },
        {
            "type": "billing",
            "street": "PO Box 77",
            "street_line_2": "Attn: Accounts",
            "city": "Denver",
            "state": "CO",
            "zip": "80202",
            "country": "US",
        },
    ],
}
"""A customer with every writable field of the spec's ``Customer`` set (no nulls)."""


# ------------------------------------------------------------------------------ helpers


def query_of(exchange: Exchange) -> dict[str, list[str]]:
    return parse_qs(exchange.url.query.decode(), keep_blank_values=True)


def severities(exchange: Exchange) -> list[str]:
    return [str(v.get("severity")) for v in exchange.violations()]


def assert_prism_found_nothing(recorder: RecordingTransport) -> None:
    assert recorder.exchanges, "no request went through Prism"
    assert not recorder.flagged(), f"Prism flagged:\n{recorder.report()}"


@contextlib.contextmanager
def through_prism(recorder: RecordingTransport) -> Iterator[None]:
    """Turn a connector error into a test failure that shows what Prism objected to."""
    try:
        yield
    except SyncEngineError as exc:
        pytest.fail(
            f"the connector failed through the validating proxy: {exc}\n"
            f"Prism's findings:\n{recorder.report()}",
            pytrace=False,
        )


def assert_only_undeclared_status_warning(exchange: Exchange) -> None:
    """The response came from the upstream with a status the spec does not declare: Prism
    only warns about that (and would list any other finding beside it)."""
    assert exchange.problem() is None, exchange.describe()
    violations = exchange.violations()
    assert len(violations) == 1, exchange.describe()
    assert violations[0]["severity"] == "Warning", exchange.describe()
    assert UNDECLARED_STATUS in violations[0]["message"], exchange.describe()


def sandbox_saw(direct: httpx.Client) -> list[dict[str, Any]]:
    """Requests the sandbox received since the test started (its own log)."""
    entries: list[dict[str, Any]] = direct.get("/_sandbox/requests").json()["requests"]
    return entries


def all_customers(direct: httpx.Client) -> list[dict[str, Any]]:
    """Every customer, oldest first, read straight from the sandbox (no Prism)."""
    params: dict[str, str | int] = {
        "page_size": 200,
        "sort_by": "created_at",
        "sort_direction": "asc",
    }
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        body = direct.get("/customers", params={**params, "page": page}).json()
        found.extend(body["customers"])
        if page >= body["total_pages"]:
            return found
        page += 1


def create_directly(direct: httpx.Client, data: dict[str, Any]) -> dict[str, Any]:
    response = direct.post("/customers", json=data)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def proxied_client(
    proxy: ServerProcess, recorder: RecordingTransport, **headers: str
) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, transport=recorder, headers=headers, timeout=30)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def connector(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[HousecallProConnector]:
    """The connector pointed at Prism (in front of a freshly reset sandbox), every exchange
    recorded. No retries: a Prism error must surface at once, not after backoff."""
    options = HousecallProConnector.Options.model_validate(
        {
            "type": "housecallpro",
            "base_url": hcp_prism_proxy.url,
            "api_key": hcp_api_key,
            "delete_customers": True,
            "rate_limit": 0,
            "page_size": PAGE_SIZE,
            "max_retries": 0,
        }
    )
    context = ConnectorContext(
        name="hcp", extra={"transport": prism_recorder, "sleep": lambda _seconds: None}
    )
    conn = HousecallProConnector(options, context)
    yield conn
    conn.close()


@pytest.fixture
def api(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[httpx.Client]:
    """A plain client through Prism to the (reset) sandbox, as an API user would call it."""
    with proxied_client(
        hcp_prism_proxy, prism_recorder, Authorization=f"Token {hcp_api_key}"
    ) as client:
        yield client


# ------------------------------------------------------------- A: the connector's requests


def test_read_pages_through_every_customer(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    expected = [c["id"] for c in all_customers(hcp_direct)]
    assert len(expected) > 3 * PAGE_SIZE, "the seed should make the read span several pages"

    with through_prism(prism_recorder):
        records = list(connector.read(CUSTOMERS))

    assert [r.id for r in records] == expected
    pages = [e for e in prism_recorder.exchanges if e.method == "GET" and e.path == "/customers"]
    # every page once (pages read ahead may be answered out of order)
    assert sorted(int(query_of(e)["page"][0]) for e in pages) == list(range(1, len(pages) + 1))
    assert len(pages) == -(-len(expected) // PAGE_SIZE)
    for exchange in pages:
        query = query_of(exchange)
        assert query["page_size"] == [str(PAGE_SIZE)]
        # not declared in the spec (the live API has them): Prism lets them through
        assert query["sort_by"] == ["created_at"]
        assert query["sort_direction"] == ["asc"]
    assert_prism_found_nothing(prism_recorder)


def test_find_searches_with_q_by_email_mobile_and_name(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    target = create_directly(hcp_direct, FULL_CUSTOMER)
    by_name = {k: FULL_CUSTOMER[k] for k in ("first_name", "last_name")}
    by_mobile = {"mobile_number": FULL_CUSTOMER["mobile_number"], **by_name}
    nobody = {"email": "nobody@example.com", "first_name": "No", "last_name": "Body"}

    with through_prism(prism_recorder):
        found_by_email = connector.find(CUSTOMERS, {"email": FULL_CUSTOMER["email"].upper()})
        found_by_mobile = connector.find(CUSTOMERS, by_mobile)
        found_by_name = connector.find(CUSTOMERS, by_name)
        found_nobody = connector.find(CUSTOMERS, nobody)

    for found in (found_by_email, found_by_mobile, found_by_name):
        assert [r.id for r in found] == [target["id"]]
    assert found_nobody == []
    searched = [query_of(e).get("q") for e in prism_recorder.exchanges]
    assert [FULL_CUSTOMER["email"].upper()] in searched
    assert [FULL_CUSTOMER["mobile_number"]] in searched
    assert ["Contract Tester"] in searched
    assert ["nobody@example.com"] in searched and ["No Body"] in searched
    assert_prism_found_nothing(prism_recorder)


def test_find_without_search_terms_reads_everything(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    target = create_directly(hcp_direct, {"company": "Only A Company Inc"})

    with through_prism(prism_recorder):
        found = connector.find(CUSTOMERS, {"company": "Only A Company Inc"})

    assert [r.id for r in found] == [target["id"]]
    assert all("q" not in query_of(e) for e in prism_recorder.exchanges)
    assert_prism_found_nothing(prism_recorder)


def test_get_one_customer(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    seeded = all_customers(hcp_direct)[0]

    with through_prism(prism_recorder):
        record = connector.get(CUSTOMERS, seeded["id"])

    assert record == NativeRecord(id=seeded["id"], data=seeded, location=record.location)
    assert_prism_found_nothing(prism_recorder)


def test_get_a_missing_customer_is_not_found(
    connector: HousecallProConnector, prism_recorder: RecordingTransport
) -> None:
    with pytest.raises(NotFoundError):
        connector.get(CUSTOMERS, MISSING_ID)

    [exchange] = prism_recorder.exchanges
    assert exchange.status == 404
    assert_only_undeclared_status_warning(exchange)


def test_create_sends_a_valid_customer(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    with through_prism(prism_recorder):
        created = connector.create(CUSTOMERS, dict(FULL_CUSTOMER), key="contract-create")

    stored = hcp_direct.get(f"/customers/{created.id}").json()
    assert created.data == stored
    for name, value in FULL_CUSTOMER.items():
        if name != "addresses":
            assert stored[name] == value, name
    assert [{k: v for k, v in a.items() if k != "id"} for a in stored["addresses"]] == (
        FULL_CUSTOMER["addresses"]
    )
    [exchange] = prism_recorder.exchanges
    assert (exchange.method, exchange.path, exchange.status) == ("POST", "/customers", 201)
    assert_prism_found_nothing(prism_recorder)


def test_create_with_absent_values(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    """The engine's mapping writes a value missing on the source member as None: the request
    that creates such a customer must still be valid (the spec's fields are not nullable)."""
    data = {"first_name": "Sparse", "last_name": "Record", "email": None, "company": None}

    with through_prism(prism_recorder):
        created = connector.create(CUSTOMERS, data, key="contract-sparse")

    stored = hcp_direct.get(f"/customers/{created.id}").json()
    assert (stored["first_name"], stored["last_name"]) == ("Sparse", "Record")
    assert not stored.get("email") and not stored.get("company")
    assert_prism_found_nothing(prism_recorder)


def test_update_sends_only_changed_fields(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    current = create_directly(hcp_direct, FULL_CUSTOMER)
    patch = {"first_name": "Renamed", "tags": ["warranty"], "notifications_enabled": False}

    with through_prism(prism_recorder):
        updated = connector.update(CUSTOMERS, current["id"], patch, full={**current, **patch})

    assert updated is not None
    assert {k: updated.data[k] for k in patch} == patch
    assert hcp_direct.get(f"/customers/{current['id']}").json() == updated.data
    [exchange] = prism_recorder.exchanges
    assert (exchange.method, exchange.status) == ("PUT", 200)
    assert_prism_found_nothing(prism_recorder)


def test_update_addresses_sends_the_whole_list(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    current = create_directly(hcp_direct, FULL_CUSTOMER)
    service, billing = current["addresses"]
    new_address = {
        "id": None,  # a new address: the connector leaves the id out, the API assigns one
        "type": "service",
        "street": "99 Pine Ave",
        "street_line_2": "Unit 2",
        "city": "Boise",
        "state": "ID",
        "zip": "83702",
        "country": "US",
    }
    addresses = [{**service, "city": "Round Rock", "zip": "78664"}, billing, new_address]
    patch = {"addresses[type=service].city": "Round Rock", "addresses[type=service].zip": "78664"}

    with through_prism(prism_recorder):
        updated = connector.update(
            CUSTOMERS, current["id"], patch, full={**current, "addresses": addresses}
        )

    assert updated is not None
    got = updated.data["addresses"]
    assert [a["id"] for a in got[:2]] == [service["id"], billing["id"]]
    assert got[0]["city"] == "Round Rock" and got[1] == billing
    assert isinstance(got[2]["id"], str) and got[2]["id"] not in (service["id"], billing["id"])
    assert {k: v for k, v in got[2].items() if k != "id"} == {
        k: v for k, v in new_address.items() if k != "id"
    }
    [exchange] = prism_recorder.exchanges
    assert (exchange.method, exchange.status) == ("PUT", 200)
    assert_prism_found_nothing(prism_recorder)


def test_update_that_clears_a_field(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    """A value removed on another member is cleared on HCP: the request that does it must be
    valid too (the spec's string fields are not nullable)."""
    current = create_directly(hcp_direct, FULL_CUSTOMER)
    full = {k: v for k, v in current.items() if k != "company"}

    with through_prism(prism_recorder):
        updated = connector.update(CUSTOMERS, current["id"], {"company": None}, full=full)

    assert updated is not None
    assert not updated.data.get("company")
    assert_prism_found_nothing(prism_recorder)


def test_delete_and_delete_again(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    current = create_directly(hcp_direct, {"first_name": "Doomed", "last_name": "Customer"})

    with through_prism(prism_recorder):
        connector.delete(CUSTOMERS, current["id"])
        connector.delete(CUSTOMERS, current["id"])  # already gone: a JSON 404, not an error

    assert hcp_direct.get(f"/customers/{current['id']}").status_code == 404
    first, second = prism_recorder.exchanges
    assert (first.method, first.status) == ("DELETE", 204)
    assert not first.violations() and first.problem() is None
    assert (second.method, second.status) == ("DELETE", 404)
    assert_only_undeclared_status_warning(second)


# ------------------------------------------------------------- B: the sandbox's responses


def test_sandbox_list_pages_and_search(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    everyone = all_customers(hcp_direct)
    size = 4
    pages = -(-len(everyone) // size)
    for page in range(1, pages + 2):  # one past the end: an empty page is valid too
        response = api.get("/customers", params={"page": page, "page_size": size})
        assert response.status_code == 200, prism_recorder.report()
        body = response.json()
        assert len(body[CUSTOMERS]) == (max(0, min(size, len(everyone) - (page - 1) * size)))
        assert (body["page"], body["page_size"]) == (page, size)
        assert (body["total_pages"], body["total_items"]) == (pages, len(everyone))

    needle = everyone[0]["last_name"]
    response = api.get("/customers", params={"q": needle, "page_size": 50})
    assert response.status_code == 200, prism_recorder.report()
    found = response.json()[CUSTOMERS]
    assert everyone[0]["id"] in [c["id"] for c in found]
    assert all(needle.casefold() in str(c).casefold() for c in found)

    response = api.get("/customers")  # the API's defaults
    assert response.status_code == 200, prism_recorder.report()
    assert_prism_found_nothing(prism_recorder)


def test_sandbox_get_one(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    for customer in all_customers(hcp_direct)[:5]:
        response = api.get(f"/customers/{customer['id']}")
        assert response.status_code == 200, prism_recorder.report()
        assert response.json() == customer
    assert_prism_found_nothing(prism_recorder)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_sandbox_not_found_is_json(
    api: httpx.Client, prism_recorder: RecordingTransport, method: str
) -> None:
    """The spec declares no 404 for these operations. Prism 5 treats an undeclared status as a
    *warning* (the response passes through, with an ``sl-violations`` header), so the
    sandbox's 404 reaches the client unchanged. We accept that warning and nothing else, and
    check the body ourselves: JSON in one of HCP's error shapes, ``{"error": {"message"}}``
    (the live API's HTML 404 is only for unknown routes)."""
    body = {"first_name": "Nobody"} if method == "PUT" else None
    response = api.request(method, f"/customers/{MISSING_ID}", json=body)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": {"message": "customer not found"}}
    [exchange] = prism_recorder.exchanges
    assert_only_undeclared_status_warning(exchange)


def test_sandbox_create_update_delete(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    """201, 200, 204 as the spec declares. The spec gives POST and PUT responses no body
    schema, so Prism cannot check those bodies: each is compared with what GET then returns,
    which Prism does check against ``Customer``."""
    created = api.post("/customers", json=FULL_CUSTOMER)
    assert created.status_code == 201, prism_recorder.report()
    customer_id = created.json()["id"]
    fetched = api.get(f"/customers/{customer_id}")
    assert fetched.status_code == 200, prism_recorder.report()
    assert fetched.json() == created.json()

    updated = api.put(f"/customers/{customer_id}", json={"last_name": "Changed", "tags": []})
    assert updated.status_code == 200, prism_recorder.report()
    assert (updated.json()["last_name"], updated.json()["tags"]) == ("Changed", [])
    fetched = api.get(f"/customers/{customer_id}")
    assert fetched.status_code == 200, prism_recorder.report()
    assert fetched.json() == updated.json()

    deleted = api.delete(f"/customers/{customer_id}")
    assert deleted.status_code == 204, prism_recorder.report()
    assert deleted.content == b""
    assert hcp_direct.get(f"/customers/{customer_id}").status_code == 404
    assert_prism_found_nothing(prism_recorder)


def test_sandbox_accepts_bearer_through_prism(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> None:
    """Both security schemes of the spec: ``bearerAuth`` (``Bearer KEY``) here, ``apiKey`` in
    the ``Authorization`` header (``Token KEY``, what the connector sends) everywhere else."""
    headers = {"Authorization": f"Bearer {hcp_api_key}"}
    with proxied_client(hcp_prism_proxy, prism_recorder, **headers) as client:
        response = client.post("/customers", json={"first_name": "Bearer"})
    assert response.status_code == 201, prism_recorder.report()
    assert_prism_found_nothing(prism_recorder)


def test_sandbox_rejects_a_spec_valid_body_it_cannot_store(
    api: httpx.Client, prism_recorder: RecordingTransport
) -> None:
    """The spec requires nothing of a ``Customer``; HCP (and the sandbox) needs a name or a
    contact. Prism passes the request, and the sandbox's 422 (undeclared: a warning) comes
    back unchanged in HCP's ``{"errors": {field: [..]}}`` shape."""
    response = api.post("/customers", json={"tags": ["vip"]})

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"errors": {"name": ["is missing"]}}
    [exchange] = prism_recorder.exchanges
    assert_only_undeclared_status_warning(exchange)


# ---------------------------------------------- negative controls: Prism really validates


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "location"),
    [
        ("POST", "/customers", {"json": {"first_name": "A", "email": 123}}, ["body", "email"]),
        ("POST", "/customers", {"json": ["not", "an", "object"]}, ["body"]),
        ("POST", "/customers", {"json": {"email": "not-an-email"}}, ["body", "email"]),
        (
            "POST",
            "/customers",
            {"json": {"first_name": "A", "addresses": [{"type": "home"}]}},
            ["body", "addresses", "0", "type"],
        ),
        ("PUT", "/customers/cus_1", {"json": {"tags": "vip"}}, ["body", "tags"]),
        ("GET", "/customers", {"params": {"page": "first"}}, ["query", "page"]),
        ("GET", "/customers", {"params": {"page_size": "ten"}}, ["query", "page_size"]),
    ],
)
def test_prism_rejects_an_invalid_request(
    api: httpx.Client,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    location: list[str],
) -> None:
    response = api.request(method, path, **kwargs)

    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem = response.json()
    assert problem["type"].endswith("#UNPROCESSABLE_ENTITY")
    assert location in [v.get("location") for v in problem["validation"]], problem
    assert sandbox_saw(hcp_direct) == [], "Prism forwarded an invalid request"


def test_prism_rejects_a_request_without_credentials(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
) -> None:
    with proxied_client(hcp_prism_proxy, prism_recorder) as client:
        response = client.get("/customers")

    assert response.status_code == 401
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["type"].endswith("#UNAUTHORIZED")
    assert sandbox_saw(hcp_direct) == []


@pytest.mark.parametrize("authorization", ["Token wrong-key", "Basic Zm9vOmJhcg=="])
def test_prism_only_checks_that_the_authorization_header_is_there(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
    authorization: str,
) -> None:
    """The ``apiKey`` scheme is a header named ``Authorization``: Prism cannot know the key and
    does not check the ``Token`` prefix, so these reach the sandbox, which answers HCP's 401
    (undeclared in the spec: a warning)."""
    with proxied_client(hcp_prism_proxy, prism_recorder, Authorization=authorization) as client:
        response = client.get("/customers")

    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert_only_undeclared_status_warning(prism_recorder.exchanges[0])
    assert [(e["method"], e["status"]) for e in sandbox_saw(hcp_direct)] == [("GET", 401)]


def test_prism_passes_query_parameters_the_spec_does_not_declare(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    """GET /customers declares only page, page_size and q; the connector also sends sort_by
    and sort_direction (the live API has them). Prism forwards undeclared parameters."""
    params = {"q": "no such customer", "sort_by": "created_at", "sort_direction": "asc"}
    response = api.get("/customers", params=params)

    assert response.status_code == 200, prism_recorder.report()
    assert response.json()[CUSTOMERS] == []
    [seen] = sandbox_saw(hcp_direct)
    assert parse_qs(seen["query"]) == {k: [v] for k, v in params.items()}
    assert_prism_found_nothing(prism_recorder)


INVALID_RESPONSES = {
    ("GET", "/customers"): json_reply({"customers": "not-an-array", "page": 1}),
    ("GET", "/customers/cus_bad_types"): json_reply(
        {"id": 5, "email": "not-an-email", "created_at": "yesterday"}
    ),
    ("GET", "/customers/cus_null"): json_reply({"id": "cus_null", "company": None}),
    ("GET", "/customers/cus_html"): (200, "text/html", b"<html><body>hello</body></html>"),
    ("GET", "/customers/cus_bad_address"): json_reply(
        {"id": "cus_bad_address", "addresses": [{"type": "home"}]}
    ),
}


@pytest.mark.parametrize(
    ("path", "locations"),
    [
        ("/customers", [["response", "body", "customers"]]),
        (
            "/customers/cus_bad_types",
            [
                ["response", "body", "id"],
                ["response", "body", "email"],
                ["response", "body", "created_at"],
            ],
        ),
        ("/customers/cus_null", [["response", "body", "company"]]),
        ("/customers/cus_html", [["response"], ["response", "body"]]),
        ("/customers/cus_bad_address", [["response", "body", "addresses", "0", "type"]]),
    ],
)
def test_prism_rejects_an_invalid_response(
    fake_upstream: tuple[FakeUpstream, ServerProcess],
    prism_recorder: RecordingTransport,
    path: str,
    locations: list[list[str]],
) -> None:
    upstream, proxy = fake_upstream
    upstream.replies.update(INVALID_RESPONSES)
    with proxied_client(proxy, prism_recorder, Authorization="Token k") as client:
        response = client.get(path)

    assert ("GET", path) in upstream.seen, "the request should have reached the upstream"
    assert response.status_code == 500
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem = response.json()
    assert problem["type"].endswith("#VIOLATIONS")
    found = [v["location"] for v in problem["validation"] if v["severity"] == "Error"]
    assert sorted(found) == sorted(locations), problem


def test_the_connector_fails_on_a_response_prism_rejects(
    fake_upstream: tuple[FakeUpstream, ServerProcess], prism_recorder: RecordingTransport
) -> None:
    """What makes the connector tests above meaningful: a contract violation on either side
    becomes an error the connector raises."""
    upstream, proxy = fake_upstream
    upstream.replies.update(INVALID_RESPONSES)
    options = HousecallProConnector.Options.model_validate(
        {"type": "housecallpro", "base_url": proxy.url, "api_key": "k", "max_retries": 0,
         "rate_limit": 0}
    )  # fmt: skip
    conn = HousecallProConnector(
        options, ConnectorContext(name="hcp", extra={"transport": prism_recorder})
    )
    try:
        with pytest.raises(RetriableError, match="500"):
            list(conn.read(CUSTOMERS))
    finally:
        conn.close()
    [exchange] = prism_recorder.exchanges
    assert exchange.problem() is not None and "Error" in severities(exchange)


def test_prism_does_not_check_what_the_spec_leaves_undeclared(
    fake_upstream: tuple[FakeUpstream, ServerProcess], prism_recorder: RecordingTransport
) -> None:
    """Limits of the contract, so that nobody counts on Prism for them: POST and PUT
    responses have no body schema (anything passes), the list envelope's ``page``,
    ``page_size``, ``total_pages``, ``total_items`` are not in the spec (any type passes), and
    properties beyond the schema are allowed. The connector's own checks and the unit tests
    cover these."""
    upstream, proxy = fake_upstream
    upstream.replies.update(
        {
            ("POST", "/customers"): json_reply("not a customer", status=201),
            ("PUT", "/customers/cus_1"): json_reply(["not", "a", "customer"]),
            ("GET", "/customers"): json_reply(
                {"customers": [], "page": "one", "total_pages": None, "surprise": True}
            ),
            ("GET", "/customers/cus_1"): json_reply({"id": "cus_1", "shoe_size": 44}),
        }
    )
    with proxied_client(proxy, prism_recorder, Authorization="Token k") as client:
        created = client.post("/customers", json={"first_name": "A"})
        updated = client.put("/customers/cus_1", json={"first_name": "B"})
        listed = client.get("/customers")
        fetched = client.get("/customers/cus_1")

    assert (created.status_code, created.json()) == (201, "not a customer")
    assert (updated.status_code, updated.json()) == (200, ["not", "a", "customer"])
    assert (listed.status_code, listed.json()["page"]) == (200, "one")
    assert (fetched.status_code, fetched.json()["shoe_size"]) == (200, 44)
    assert len(upstream.seen) == 4
    assert_prism_found_nothing(prism_recorder)
