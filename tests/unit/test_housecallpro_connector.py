"""The Housecall Pro connector against a fake HCP served through ``httpx.MockTransport``.

The fake really paginates (the live envelope, honouring ``page`` / ``page_size`` /
``sort_direction`` / ``q``) and can misbehave the ways real servers do: repeat a page,
end with an empty page, leave envelope fields out, lose a customer mid-read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.errors import (
    AuthError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
    RetriableError,
)

KEY = "hcp_test_key_0123456789"


def customer(n: int, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": f"cus_{n:04d}",
        "first_name": f"First{n}",
        "last_name": f"Last{n}",
        "email": f"person{n}@example.com",
        "mobile_number": f"555{n:07d}",
        "company": None,
        "tags": [],
        "addresses": [],
        "created_at": f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
        "updated_at": "2024-02-01T00:00:00Z",
    }
    data.update(extra)
    return data


class FakeHCP:
    """A stateful fake of the customer endpoints, with switches for server misbehaviour."""

    def __init__(self, customers: list[dict[str, Any]] | None = None) -> None:
        self.customers: list[dict[str, Any]] = list(customers or [])
        self.requests: list[httpx.Request] = []
        self.repeat_pages = False  # ignore ?page= and always serve page 1
        self.extra_empty_page = False  # claim one page more than there is
        self.bare_envelope = False  # only {"customers": [...]}
        self.delete_route = True  # False: HTML 404 like the live API
        self.drop_after_first_page: str | None = None  # delete this id once page 1 is served
        self.fail_next: list[httpx.Response] = []
        self.next_id = 9000

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") not in (f"Token {KEY}", f"Bearer {KEY}"):
            return httpx.Response(401, json={"message": "Unauthorized"})
        if self.fail_next:
            return self.fail_next.pop(0)
        path = request.url.path
        if path == "/customers" and request.method == "GET":
            return self.list_customers(request)
        if path == "/customers" and request.method == "POST":
            return self.create(json.loads(request.content))
        if path.startswith("/customers/"):
            cid = path.removeprefix("/customers/")
            if request.method == "DELETE" and not self.delete_route:
                return httpx.Response(
                    404, headers={"content-type": "text/html"}, text="<html>Not Found</html>"
                )
            found = next((c for c in self.customers if c["id"] == cid), None)
            if found is None:
                return httpx.Response(404, json={"error": {"message": "customer not found"}})
            if request.method == "GET":
                return httpx.Response(200, json=found)
            if request.method == "PUT":
                found.update(json.loads(request.content))
                found["updated_at"] = "2024-03-01T00:00:00Z"
                return httpx.Response(200, json=found)
            if request.method == "DELETE":
                self.customers.remove(found)
                return httpx.Response(204)
        return httpx.Response(404, headers={"content-type": "text/html"}, text="<html>404</html>")

    def list_customers(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        page = 1 if self.repeat_pages else int(params.get("page", "1"))
        size = int(params.get("page_size", "10"))
        items = sorted(self.customers, key=lambda c: c["created_at"])
        if params.get("sort_direction", "desc") == "desc":
            items.reverse()
        q = params.get("q", "").lower()
        if q:
            items = [c for c in items if self.matches(q, c)]
        total_pages = math.ceil(len(items) / size) + (1 if self.extra_empty_page else 0)
        chunk = items[(page - 1) * size : page * size]
        body: dict[str, Any] = {"customers": chunk}
        if not self.bare_envelope:
            body.update(page=page, page_size=size, total_pages=total_pages, total_items=len(items))
        if page == 1 and self.drop_after_first_page:
            self.customers = [c for c in self.customers if c["id"] != self.drop_after_first_page]
        return httpx.Response(200, json=body)

    @staticmethod
    def matches(q: str, record: dict[str, Any]) -> bool:
        """A search like the live one: substring of email or name, or a phone's digits."""
        digits = "".join(ch for ch in q if ch.isdigit())
        if digits and not any(ch.isalpha() for ch in q):
            phone = "".join(ch for ch in str(record.get("mobile_number") or "") if ch.isdigit())
            return bool(phone) and (phone in digits or digits in phone)
        text = f"{record.get('email') or ''} {record.get('first_name')} {record.get('last_name')}"
        return q in text.lower()

    def create(self, body: dict[str, Any]) -> httpx.Response:
        if not body.get("first_name") and not body.get("last_name"):
            return httpx.Response(422, json={"errors": {"first_name": ["is missing"]}})
        self.next_id += 1
        record = dict(body)
        record["id"] = f"cus_{self.next_id}"
        record["created_at"] = record["updated_at"] = "2025-01-01T00:00:00Z"
        record["addresses"] = [
            {**a, "id": a.get("id") or f"adr_{self.next_id}_{i}"}
            for i, a in enumerate(body.get("addresses", []))
        ]
        self.customers.append(record)
        return httpx.Response(201, json=record)

    def list_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET" and r.url.path == "/customers"]


def connector(fake: FakeHCP, **options: Any) -> HousecallProConnector:
    values: dict[str, Any] = {
        "type": "housecallpro",
        "base_url": "https://api.housecallpro.test",
        "api_key": KEY,
        "page_size": 10,
        "rate_limit": 0,
        "max_retries": 2,
    }
    values.update(options)
    context = ConnectorContext(
        name="hcp", extra={"transport": fake.transport(), "sleep": lambda _: None}
    )
    return HousecallProConnector(HousecallProOptions(**values), context)


def ids(records: Iterator[NativeRecord] | list[NativeRecord]) -> list[str]:
    return [r.id for r in records]


# ------------------------------------------------------------------------------ reading


@pytest.mark.parametrize(("count", "pages"), [(25, 3), (20, 2), (10, 1), (1, 1), (0, 1)])
def test_read_paginates_through_every_page(count: int, pages: int) -> None:
    fake = FakeHCP([customer(n) for n in range(count)])
    records = list(connector(fake).read("customers"))
    assert ids(records) == [f"cus_{n:04d}" for n in range(count)]
    requests = fake.list_requests()
    assert len(requests) == pages
    for number, request in enumerate(requests, start=1):
        assert dict(request.url.params) == {
            "page": str(number),
            "page_size": "10",
            "sort_by": "created_at",
            "sort_direction": "asc",
        }
    if records:
        assert records[0].location == "customer cus_0000"
        assert records[0].data["email"] == "person0@example.com"
        assert not records[0].provisional


def test_read_stops_at_an_empty_last_page() -> None:
    fake = FakeHCP([customer(n) for n in range(20)])
    fake.extra_empty_page = True  # total_pages says 3, page 3 is empty
    assert len(list(connector(fake).read("customers"))) == 20
    assert len(fake.list_requests()) == 3


@pytest.mark.parametrize(("count", "requests"), [(25, 3), (20, 3), (3, 1)])
def test_read_without_envelope_stops_at_a_short_or_empty_page(count: int, requests: int) -> None:
    fake = FakeHCP([customer(n) for n in range(count)])
    fake.bare_envelope = True
    assert len(list(connector(fake).read("customers"))) == count
    assert len(fake.list_requests()) == requests


def test_read_detects_a_server_repeating_the_same_page() -> None:
    fake = FakeHCP([customer(n) for n in range(30)])
    fake.repeat_pages = True
    read = connector(fake).read("customers")
    first_page = [next(read) for _ in range(10)]
    assert ids(first_page) == [f"cus_{n:04d}" for n in range(10)]
    with pytest.raises(FatalConnectorError, match="page 2") as info:
        next(read)
    assert info.value.connector == "hcp"
    assert len(fake.list_requests()) == 2


def test_read_repeating_page_without_envelope_also_stops() -> None:
    fake = FakeHCP([customer(n) for n in range(30)])
    fake.repeat_pages = True
    fake.bare_envelope = True
    with pytest.raises(FatalConnectorError, match="earlier pages"):
        list(connector(fake).read("customers"))


def test_read_fails_when_an_item_has_no_id() -> None:
    fake = FakeHCP([customer(n) for n in range(15)])
    del fake.customers[12]["id"]
    with pytest.raises(FatalConnectorError, match="page 2: item 2 has no id"):
        list(connector(fake).read("customers"))


def test_read_fails_on_a_response_without_customers() -> None:
    fake = FakeHCP()
    fake.fail_next = [httpx.Response(200, json={"jobs": []})]
    with pytest.raises(FatalConnectorError, match="no 'customers' list"):
        list(connector(fake).read("customers"))


def test_read_refuses_to_report_a_list_that_shrank_mid_read() -> None:
    fake = FakeHCP([customer(n) for n in range(25)])
    fake.drop_after_first_page = "cus_0003"  # shifts cus_0010 onto page 1, already read
    with pytest.raises(RetriableError, match="shrank from 25 to 24"):
        list(connector(fake).read("customers"))


def test_read_retries_a_throttled_page() -> None:
    fake = FakeHCP([customer(n) for n in range(5)])
    fake.fail_next = [httpx.Response(429, headers={"Retry-After": "1"})]
    assert len(list(connector(fake).read("customers"))) == 5
    assert len(fake.list_requests()) == 2


def test_get_one_customer() -> None:
    fake = FakeHCP([customer(1)])
    hcp = connector(fake)
    record = hcp.get("customers", "cus_0001")
    assert record.id == "cus_0001"
    assert fake.requests[-1].url.path == "/customers/cus_0001"
    with pytest.raises(NotFoundError, match="customer not found"):
        hcp.get("customers", "cus_missing")


def test_unknown_entity_is_refused() -> None:
    with pytest.raises(FatalConnectorError, match="unknown entity 'estimates'"):
        list(connector(FakeHCP()).read("estimates"))


# ------------------------------------------------------------------------------ headers, auth


def test_headers_token_scheme_and_company() -> None:
    fake = FakeHCP()
    list(connector(fake, company_id="5f1e-uuid").read("customers"))
    headers = fake.requests[0].headers
    assert headers["Authorization"] == f"Token {KEY}"
    assert headers["X-Company-Id"] == "5f1e-uuid"
    assert headers["Accept"] == "application/json"
    assert fake.requests[0].url.host == "api.housecallpro.test"


def test_bearer_scheme_and_no_company_header_by_default() -> None:
    fake = FakeHCP()
    list(connector(fake, auth_scheme="Bearer").read("customers"))
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert "X-Company-Id" not in fake.requests[0].headers


def test_bad_key_is_an_auth_error_that_does_not_leak_the_key() -> None:
    fake = FakeHCP()
    hcp = connector(fake, api_key="wrong_key_abcdef")
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        list(hcp.read("customers"))
    assert "Unauthorized" in str(info.value)
    assert "wrong_key_abcdef" not in str(info.value)
    assert "wrong_key_abcdef" not in repr(hcp.opts)
    assert all("wrong_key_abcdef" not in str(entry) for entry in logs)


# ------------------------------------------------------------------------------ writing


def test_create_posts_writable_fields_once() -> None:
    fake = FakeHCP()
    hcp = connector(fake)
    data = {
        "id": None,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "created_at": None,
        "updated_at": None,
        "addresses": [
            {"id": None, "type": "service", "street": "1 Main St", "city": "Austin"},
            {"id": "adr_keep", "type": "billing", "street": "2 Side St"},
        ],
    }
    record = hcp.create("customers", data, key="k-1")
    request = fake.requests[-1]
    assert request.method == "POST"
    assert request.url.path == "/customers"
    assert request.headers["Authorization"] == f"Token {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "addresses": [
            {"type": "service", "street": "1 Main St", "city": "Austin"},
            {"id": "adr_keep", "type": "billing", "street": "2 Side St"},
        ],
    }
    assert record.id == "cus_9001"
    assert record.data["addresses"][0]["id"] == "adr_9001_0"
    assert record.location == "customer cus_9001"
    assert len(fake.requests) == 1


def test_create_is_never_retried() -> None:
    fake = FakeHCP()
    fake.fail_next = [httpx.Response(503), httpx.Response(503)]
    with pytest.raises(RetriableError, match="not retried"):
        connector(fake).create("customers", {"first_name": "A"}, key="k")
    assert len(fake.requests) == 1
    assert fake.customers == []


def test_create_timeout_is_retriable_and_sent_once() -> None:
    fake = FakeHCP()
    calls: list[httpx.Request] = []

    def timeout(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("timed out")

    hcp = HousecallProConnector(
        HousecallProOptions(type="housecallpro", api_key=KEY, rate_limit=0),
        ConnectorContext(name="hcp", extra={"transport": httpx.MockTransport(timeout)}),
    )
    with pytest.raises(RetriableError):
        hcp.create("customers", {"first_name": "A"}, key="k")
    assert len(calls) == 1
    assert not fake.requests


def test_create_rejected_is_a_record_error_with_the_reason() -> None:
    fake = FakeHCP()
    with pytest.raises(RecordError, match="first_name: is missing"):
        connector(fake).create("customers", {"email": "x@example.com"}, key="k")


def test_update_sends_changed_top_level_keys_of_full() -> None:
    fake = FakeHCP([customer(1)])
    hcp = connector(fake)
    full = dict(customer(1), email="new@example.com", notes="hello")
    record = hcp.update(
        "customers", "cus_0001", {"email": "new@example.com", "notes": "hello"}, full=full
    )
    request = fake.requests[-1]
    assert request.method == "PUT"
    assert request.url.path == "/customers/cus_0001"
    assert request.headers["Authorization"] == f"Token {KEY}"
    assert json.loads(request.content) == {"email": "new@example.com", "notes": "hello"}
    assert record is not None
    assert record.id == "cus_0001"
    assert record.data["email"] == "new@example.com"


def test_update_of_an_address_field_sends_the_whole_address_list() -> None:
    addresses = [
        {"id": "adr_1", "type": "service", "street": "1 Main", "city": "Austin"},
        {"id": "adr_2", "type": "billing", "street": "9 Elm", "city": "Dallas"},
    ]
    fake = FakeHCP([customer(1, addresses=addresses)])
    hcp = connector(fake)
    new_addresses = [dict(addresses[0], city="Houston"), addresses[1]]
    full = dict(customer(1), addresses=new_addresses)
    hcp.update("customers", "cus_0001", {"addresses.0.city": "Houston"}, full=full)
    assert json.loads(fake.requests[-1].content) == {"addresses": new_addresses}


def test_update_clears_a_field_removed_from_full() -> None:
    fake = FakeHCP([customer(1, company="Acme")])
    full = {k: v for k, v in customer(1).items() if k != "company"}
    connector(fake).update("customers", "cus_0001", {"company": None}, full=full)
    # the spec's strings are not nullable: "" is how a field is cleared
    assert json.loads(fake.requests[-1].content) == {"company": ""}


def test_update_with_nothing_writable_sends_nothing() -> None:
    fake = FakeHCP([customer(1)])
    result = connector(fake).update("customers", "cus_0001", {"updated_at": "x"}, full=customer(1))
    assert result is None
    assert fake.requests == []


def test_update_of_a_missing_customer_is_not_found() -> None:
    fake = FakeHCP()
    with pytest.raises(NotFoundError):
        connector(fake).update("customers", "cus_gone", {"email": "a@b.c"}, full={"email": "a@b.c"})
    assert len(fake.requests) == 1  # a 404 is not retried


def test_update_cannot_change_an_id() -> None:
    with pytest.raises(FatalConnectorError, match="assigns ids"):
        connector(FakeHCP([customer(1)])).update(
            "customers", "cus_0001", {"email": "a"}, full=customer(1), new_id="key-1"
        )


def test_delete_sends_delete_and_is_idempotent() -> None:
    fake = FakeHCP([customer(1)])
    hcp = connector(fake, delete_customers=True)
    hcp.delete("customers", "cus_0001")
    request = fake.requests[-1]
    assert (request.method, request.url.path) == ("DELETE", "/customers/cus_0001")
    assert request.headers["Authorization"] == f"Token {KEY}"
    assert fake.customers == []
    hcp.delete("customers", "cus_0001")  # JSON 404: already deleted
    assert len(fake.requests) == 2


def test_delete_on_an_api_without_the_route_is_fatal_not_silent() -> None:
    fake = FakeHCP([customer(1)])
    fake.delete_route = False
    with pytest.raises(FatalConnectorError, match="delete_customers = false"):
        connector(fake, delete_customers=True).delete("customers", "cus_0001")


def test_ids_are_escaped_in_paths() -> None:
    fake = FakeHCP()
    hcp = connector(fake)
    with pytest.raises(NotFoundError):
        hcp.get("customers", "cus 1?x=y")
    assert fake.requests[-1].url.raw_path == b"/customers/cus%201%3Fx%3Dy"
    with pytest.raises(FatalConnectorError, match="invalid customer id"):
        hcp.get("customers", "../jobs")


def test_capabilities_follow_delete_customers() -> None:
    assert connector(FakeHCP()).capabilities("customers").delete is False
    caps = connector(FakeHCP(), delete_customers=True).capabilities("customers")
    assert (caps.read, caps.create, caps.update, caps.delete) == (True, True, True, True)
    assert caps.assigns_ids is False
    assert connector(FakeHCP()).entities() == (
        "customers", "jobs", "invoices", "payments", "line_items",
    )  # fmt: skip


def test_capabilities_follow_the_spec() -> None:
    hcp = connector(FakeHCP())
    flags = {
        entity: tuple(op for op in ("read", "create", "update", "delete")
                      if hcp.capabilities(entity).allows(op))
        for entity in hcp.entities()
    }  # fmt: skip
    assert flags == {
        "customers": ("read", "create", "update"),
        "jobs": ("read", "create", "update", "delete"),
        "invoices": ("read", "create"),
        "payments": ("read",),
        "line_items": ("read", "create", "update"),  # one bulk_update per job; no delete
    }
    assert not any(hcp.capabilities(e).assigns_ids for e in hcp.entities())


# ------------------------------------------------------------------------------ find


def test_find_searches_by_email_and_compares_case_insensitively() -> None:
    fake = FakeHCP([customer(n) for n in range(30)] + [customer(77, email="Ada@Example.com")])
    fake.customers.append(customer(78, email="ada@example.com.au"))
    found = connector(fake).find(
        "customers",
        {"first_name": "First77", "email": "ADA@example.com", "company": "", "tags": ["x"]},
    )
    assert ids(found) == ["cus_0077"]
    request = fake.requests[-1]
    assert request.url.params["q"] == "ADA@example.com"
    assert request.url.params["page"] == "1"


def test_find_compares_phones_by_digits_and_paginates() -> None:
    many = [customer(n, mobile_number="(555) 000-1234", email=None) for n in range(15)]
    fake = FakeHCP(many)
    found = connector(fake).find(
        "customers", {"mobile_number": "+1 555 000 1234", "first_name": "First3"}
    )
    assert ids(found) == ["cus_0003"]
    assert [r.url.params["page"] for r in fake.list_requests()] == ["1", "2"]


def test_find_falls_back_to_the_name_when_the_email_finds_nothing() -> None:
    fake = FakeHCP([customer(5, email=None)])
    found = connector(fake).find(
        "customers",
        {"email": "", "mobile_number": None, "first_name": "First5", "last_name": "Last5"},
    )
    assert ids(found) == ["cus_0005"]
    assert fake.requests[-1].url.params["q"] == "First5 Last5"


def test_find_returns_nothing_when_values_differ() -> None:
    fake = FakeHCP([customer(5)])
    found = connector(fake).find(
        "customers", {"email": "person5@example.com", "last_name": "Someone Else"}
    )
    assert found == []


def test_find_after_an_interrupted_create_finds_the_created_customer() -> None:
    fake = FakeHCP([customer(n) for n in range(3)])
    hcp = connector(fake)
    data = {"first_name": "Grace", "last_name": "Hopper", "email": "grace@navy.mil"}
    created = hcp.create("customers", data, key="k-9")
    assert ids(hcp.find("customers", data)) == [created.id]


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "bad",
    [
        {"page_size": 0},
        {"page_size": 201},
        {"base_url": "api.housecallpro.com"},
        {"api_key": "  "},
        {"auth_scheme": "Basic"},
        {"rate_limit": -1},
        {"unknown_option": 1},
    ],
)
def test_options_are_validated(bad: dict[str, Any]) -> None:
    values: dict[str, Any] = {"type": "housecallpro", "api_key": KEY, **bad}
    with pytest.raises(ValidationError):
        HousecallProOptions(**values)


def test_option_defaults() -> None:
    options = HousecallProOptions(type="housecallpro", api_key=KEY)
    assert options.base_url == "https://api.housecallpro.com"
    assert options.auth_scheme == "Token"
    assert (options.page_size, options.rate_limit, options.max_retries) == (100, 2.0, 5)
    assert options.delete_customers is False
    assert options.concurrency == 4
    assert KEY not in repr(options) and KEY not in str(options.model_dump())
    assert HousecallProConnector.Options is HousecallProOptions
    assert HousecallProConnector.type_name == "housecallpro"


def test_context_secrets_are_redacted_too() -> None:
    fake = FakeHCP()
    fake.fail_next = [httpx.Response(422, json={"message": "bad other-secret-value"})]
    hcp = HousecallProConnector(
        HousecallProOptions(type="housecallpro", api_key=KEY, rate_limit=0),
        ConnectorContext(
            name="hcp", secrets=("other-secret-value",), extra={"transport": fake.transport()}
        ),
    )
    with pytest.raises(RecordError) as info:
        hcp.update("customers", "cus_1", {"email": "a"}, full={"email": "a"})
    assert "other-secret-value" not in str(info.value)
    hcp.close()


def test_concurrent_writes_share_one_client_safely() -> None:
    fake = FakeHCP([customer(n) for n in range(40)])
    hcp = connector(fake, concurrency=8)

    def change(n: int) -> NativeRecord | None:
        email = f"changed{n}@example.com"
        full = dict(customer(n), email=email)
        return hcp.update("customers", f"cus_{n:04d}", {"email": email}, full=full)

    with ThreadPoolExecutor(max_workers=hcp.opts.concurrency) as pool:
        results = list(pool.map(change, range(40)))
    assert [r.data["email"] if r else None for r in results] == [
        f"changed{n}@example.com" for n in range(40)
    ]
    assert hcp.http.stats.requests == 40
