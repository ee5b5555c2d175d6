"""The Housecall Pro sandbox: a stateful emulator the connector, demo and benchmarks rely on."""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.connectors.housecallpro.sandbox import (
    MAX_PAGE_SIZE,
    Clock,
    SandboxState,
    SyncASGITransport,
    TokenBucket,
    create_app,
    generate_customers,
)
from syncengine.errors import ConfigError

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}
CUSTOMER_KEYS = {
    "id",
    "first_name",
    "last_name",
    "email",
    "mobile_number",
    "home_number",
    "work_number",
    "company",
    "notifications_enabled",
    "lead_source",
    "tags",
    "addresses",
    "created_at",
    "updated_at",
}
ALWAYS_SENT = {"id", "tags", "addresses", "created_at", "updated_at"}
"""Keys present in every customer; the others are left out when they have no value."""
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def make_client(app: Any, *, auth: bool = True) -> httpx.Client:
    return httpx.Client(
        transport=SyncASGITransport(app),
        base_url="http://sandbox",
        headers=AUTH if auth else {},
    )


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=25, random_seed=7)


@pytest.fixture
def client(app: Any) -> Iterator[httpx.Client]:
    with make_client(app) as c:
        yield c


def state_of(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


def all_customers(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/customers", params={"page_size": MAX_PAGE_SIZE, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total_pages"] <= 1
    customers: list[dict[str, Any]] = body["customers"]
    return customers


# ------------------------------------------------------------------------------------- auth


def test_missing_or_wrong_key_is_401(app: Any) -> None:
    with make_client(app, auth=False) as anonymous:
        for headers in ({}, {"Authorization": "Token nope"}, {"Authorization": KEY}):
            response = anonymous.get("/customers", headers=headers)
            assert response.status_code == 401
            assert response.json() == {"message": "Unauthorized"}
        # the sandbox's own endpoints need no key
        assert anonymous.get("/_sandbox/health").json() == {"ok": True}


def test_token_and_bearer_are_both_accepted(app: Any) -> None:
    with make_client(app, auth=False) as anonymous:
        for scheme in ("Token", "Bearer"):
            response = anonymous.get("/customers", headers={"Authorization": f"{scheme} {KEY}"})
            assert response.status_code == 200


def test_a_401_does_not_write(app: Any) -> None:
    with make_client(app, auth=False) as anonymous:
        assert anonymous.post("/customers", json={"first_name": "Eve"}).status_code == 401
    assert len(state_of(app).dump()["customers"]) == 25


# ------------------------------------------------------------------------------ pagination


def test_envelope_and_pagination_math(client: httpx.Client) -> None:
    seen: list[str] = []
    for page, size in ((1, 10), (2, 10), (3, 5)):
        body = client.get("/customers", params={"page": page, "page_size": 10}).json()
        assert set(body) == {"customers", "page", "page_size", "total_pages", "total_items"}
        assert (body["page"], body["page_size"]) == (page, 10)
        assert (body["total_pages"], body["total_items"]) == (3, 25)
        assert len(body["customers"]) == size
        seen += [c["id"] for c in body["customers"]]
    assert len(set(seen)) == 25

    past_the_end = client.get("/customers", params={"page": 4, "page_size": 10}).json()
    assert past_the_end == {
        "customers": [],
        "page": 4,
        "page_size": 10,
        "total_pages": 3,
        "total_items": 25,
    }


def test_default_page_size_and_cap(client: httpx.Client) -> None:
    body = client.get("/customers").json()
    assert (body["page"], body["page_size"], len(body["customers"])) == (1, 10, 10)
    capped = client.get("/customers", params={"page_size": 5000}).json()
    assert capped["page_size"] == MAX_PAGE_SIZE
    assert len(capped["customers"]) == 25 and capped["total_pages"] == 1


def test_empty_store_lists_nothing() -> None:
    with make_client(create_app(KEY)) as c:
        body = c.get("/customers").json()
    assert body == {
        "customers": [],
        "page": 1,
        "page_size": 10,
        "total_pages": 0,
        "total_items": 0,
    }


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        ({"page": "x"}, {"page": ["must be an integer"]}),
        ({"page_size": "0"}, {"page_size": ["must be greater than 0"]}),
        ({"sort_by": "shoe_size"}, {"sort_by": None}),
    ],
)
def test_bad_list_parameters_are_422(
    client: httpx.Client, params: dict[str, str], errors: dict[str, list[str] | None]
) -> None:
    response = client.get("/customers", params=params)
    assert response.status_code == 422
    got = response.json()["errors"]
    assert set(got) == set(errors)
    for field, messages in errors.items():
        assert got[field] == messages if messages is not None else got[field]


# ---------------------------------------------------------------------------------- search


def test_q_searches_names_email_mobile_and_address(client: httpx.Client) -> None:
    made = client.post(
        "/customers",
        json={
            "first_name": "Zelda",
            "last_name": "Quartermaine",
            "email": "zq@quarter.example",
            "mobile_number": "(555) 123-9876",
            "addresses": [{"type": "service", "street": "12 Xylophone Rd", "city": "Yellowknife"}],
        },
    ).json()
    for q in (
        "zelda",
        "QUARTERMAINE",
        "Zelda Quarter",
        "zq@quarter",
        "123-9876",
        "5551239876",
        "xylophone",
        "yellowKNIFE",
    ):
        found = all_customers(client, q=q)
        assert [c["id"] for c in found] == [made["id"]], q
    body = client.get("/customers", params={"q": "no-such-customer-anywhere"}).json()
    assert (body["customers"], body["total_items"], body["total_pages"]) == ([], 0, 0)


def test_q_finds_every_seeded_match(app: Any, client: httpx.Client) -> None:
    dump = state_of(app).dump()["customers"]
    last_name = dump[0]["last_name"]
    expected = {
        c["id"] for c in dump if last_name.lower() in f"{c['first_name']} {c['last_name']}".lower()
    }
    found = {c["id"] for c in all_customers(client, q=last_name.upper())}
    assert found >= expected and expected


# --------------------------------------------------------------------------------- sorting


@pytest.mark.parametrize("field", ["first_name", "last_name", "email", "created_at", "updated_at"])
def test_sorting_both_directions(client: httpx.Client, field: str) -> None:
    asc = all_customers(client, sort_by=field, sort_direction="asc")
    desc = all_customers(client, sort_by=field, sort_direction="desc")
    assert len(asc) == 25
    assert asc == list(reversed(desc))

    def key(c: dict[str, Any]) -> tuple[bool, str, str]:
        value = c.get(field)
        return (value is None, (value or "").casefold(), c["id"])

    assert [c["id"] for c in asc] == [c["id"] for c in sorted(asc, key=key)]


def test_default_sort_is_newest_created_first(client: httpx.Client) -> None:
    made = client.post("/customers", json={"last_name": "Newest"}).json()
    first = client.get("/customers").json()["customers"]
    assert first[0]["id"] == made["id"]
    created = [c["created_at"] for c in all_customers(client)]
    assert created == sorted(created, reverse=True)


def test_sort_by_updated_at_puts_edits_first(client: httpx.Client) -> None:
    oldest = all_customers(client, sort_by="updated_at", sort_direction="asc")[0]
    client.put(f"/customers/{oldest['id']}", json={"company": "Edited Inc"})
    newest = client.get("/customers", params={"sort_by": "updated_at"}).json()["customers"][0]
    assert newest["id"] == oldest["id"] and newest["company"] == "Edited Inc"


def test_ties_are_broken_by_id(client: httpx.Client) -> None:
    for _ in range(3):
        client.post("/customers", json={"first_name": "Aaaron"})
    twins = all_customers(client, sort_by="first_name", sort_direction="asc")[:3]
    assert [c["first_name"] for c in twins] == ["Aaaron"] * 3
    assert [c["id"] for c in twins] == sorted(c["id"] for c in twins)


def test_invalid_sort_direction_is_422(client: httpx.Client) -> None:
    response = client.get("/customers", params={"sort_direction": "sideways"})
    assert response.status_code == 422
    assert response.json() == {"errors": {"sort_direction": ["must be asc or desc"]}}


# ------------------------------------------------------------------------------- not found


def test_unknown_customer_is_json_404(client: httpx.Client) -> None:
    for method in ("GET", "PUT", "DELETE"):
        kwargs: dict[str, Any] = {"json": {"first_name": "X"}} if method == "PUT" else {}
        response = client.request(method, "/customers/cus_missing", **kwargs)
        assert response.status_code == 404, method
        assert response.json() == {"error": {"message": "customer not found"}}


def test_unknown_route_is_an_html_404(client: httpx.Client) -> None:
    for method, path in (("GET", "/v1/customers"), ("GET", "/nope"), ("PATCH", "/customers")):
        response = client.request(method, path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "<html" in response.text.lower()


# ---------------------------------------------------------------------------------- 422s


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b'"text"', b"\xff\xfe"])
def test_body_must_be_a_json_object(client: httpx.Client, content: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    for method, path in (("POST", "/customers"), ("PUT", "/customers/whatever")):
        response = client.request(method, path, content=content, headers=headers)
        assert response.status_code == 422
        assert response.json() == {"errors": {"body": ["must be a JSON object"]}}


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"first_name": "A", "email": "not-an-email"}, {"email": ["is invalid"]}),
        ({"first_name": "A", "email": "a@b"}, {"email": ["is invalid"]}),
        ({"first_name": "A", "tags": "vip"}, {"tags": ["must be an array of strings"]}),
        ({"first_name": "A", "tags": ["vip", 3]}, {"tags": ["must be an array of strings"]}),
        (
            {"first_name": "A", "notifications_enabled": "yes"},
            {"notifications_enabled": ["must be true or false"]},
        ),
        ({"first_name": 12, "last_name": "B"}, {"first_name": ["must be a string"]}),
        ({"first_name": "A", "mobile_number": 5552013344}, {"mobile_number": ["must be a string"]}),
        (
            {"first_name": "A", "addresses": {"city": "X"}},
            {"addresses": ["must be an array of objects"]},
        ),
        (
            {"first_name": "A", "addresses": [{"type": "holiday"}]},
            {"addresses[0].type": ["must be billing or service"]},
        ),
        ({"home_number": "555-111-2222", "tags": []}, {"name": ["is missing"]}),
        ({}, {"name": ["is missing"]}),
        ({"first_name": "  "}, {"name": ["is missing"]}),
    ],
)
def test_invalid_create_is_422(
    app: Any, client: httpx.Client, body: dict[str, Any], errors: dict[str, Any]
) -> None:
    response = client.post("/customers", json=body)
    assert response.status_code == 422
    got = response.json()["errors"]
    assert set(got) == set(errors)
    assert got == errors
    assert len(state_of(app).dump()["customers"]) == 25


def test_invalid_update_is_422_and_changes_nothing(app: Any, client: httpx.Client) -> None:
    target = all_customers(client)[0]
    response = client.put(f"/customers/{target['id']}", json={"email": "nope", "company": "X"})
    assert response.status_code == 422
    assert response.json() == {"errors": {"email": ["is invalid"]}}
    # clearing every name-like field leaves a customer without a name
    blank = dict.fromkeys(("first_name", "last_name", "email", "mobile_number", "company"))
    response = client.put(f"/customers/{target['id']}", json=blank)
    assert response.json() == {"errors": {"name": ["is missing"]}}
    assert client.get(f"/customers/{target['id']}").json() == target


def test_unknown_fields_are_ignored(client: httpx.Client) -> None:
    response = client.post(
        "/customers",
        json={"first_name": "Ida", "favourite_colour": "teal", "id": "cus_mine", "created_at": 1},
    )
    assert response.status_code == 201
    record = response.json()
    assert ALWAYS_SENT <= set(record) <= CUSTOMER_KEYS
    assert None not in record.values()
    assert record["id"] != "cus_mine" and TIMESTAMP.match(record["created_at"])


# ------------------------------------------------------------------------------ round trip


def test_create_get_update_delete_round_trip(app: Any, client: httpx.Client) -> None:
    response = client.post(
        "/customers",
        json={
            "first_name": "Grace",
            "last_name": "Hopper",
            "email": "grace@example.com",
            "mobile_number": "555-201-3344",
            "tags": ["vip"],
            "addresses": [{"type": "service", "street": "1 Navy Way", "city": "Arlington"}],
        },
    )
    assert response.status_code == 201
    created = response.json()
    assert ALWAYS_SENT <= set(created) <= CUSTOMER_KEYS
    assert re.fullmatch(r"cus_[0-9a-f]{32}", created["id"])
    assert created["mobile_number"] == "555-201-3344"  # stored as sent
    assert "home_number" not in created and "company" not in created
    assert created["notifications_enabled"] is False
    assert created["created_at"] == created["updated_at"]
    assert TIMESTAMP.match(created["created_at"])
    (address,) = created["addresses"]
    assert re.fullmatch(r"adr_[0-9a-f]{32}", address["id"])
    assert address == {
        "id": address["id"],
        "type": "service",
        "street": "1 Navy Way",
        "city": "Arlington",
    }
    url = f"/customers/{created['id']}"
    assert client.get(url).json() == created

    response = client.put(url, json={"company": "US Navy", "notifications_enabled": True})
    assert response.status_code == 200
    updated = response.json()
    assert updated == {
        **created,
        "company": "US Navy",
        "notifications_enabled": True,
        "updated_at": updated["updated_at"],
    }
    assert updated["updated_at"] > created["updated_at"]
    assert client.get(url).json() == updated

    # addresses replace the list; an address sent back with its id keeps it
    kept = {**address, "city": "Arlington VA"}
    response = client.put(url, json={"addresses": [kept, {"type": "billing", "zip": "22202"}]})
    service, billing = response.json()["addresses"]
    assert service == kept
    assert billing["type"] == "billing" and billing["zip"] == "22202"
    assert billing["id"] not in (address["id"], None)
    assert client.put(url, json={"addresses": []}).json()["addresses"] == []

    response = client.delete(url)
    assert response.status_code == 204 and response.content == b""
    assert client.get(url).status_code == 404
    assert client.get("/customers").json()["total_items"] == 25


def test_an_address_id_of_another_customer_is_not_taken(client: httpx.Client) -> None:
    a = client.post("/customers", json={"first_name": "A", "addresses": [{"city": "X"}]}).json()
    b = client.post("/customers", json={"first_name": "B"}).json()
    stolen = a["addresses"][0]
    record = client.put(f"/customers/{b['id']}", json={"addresses": [stolen]}).json()
    assert record["addresses"][0]["id"] != stolen["id"]
    assert record["addresses"][0]["type"] == "service"  # the default type


def test_every_write_moves_the_clock_forward(app: Any, client: httpx.Client) -> None:
    state = state_of(app)
    state.clock = Clock(now=lambda: 2_000_000_000.0)  # the wall clock stands still
    made = client.post("/customers", json={"first_name": "Tick"}).json()
    url = f"/customers/{made['id']}"
    stamps = [made["updated_at"]]
    for n in range(3):
        stamps.append(client.put(url, json={"last_name": f"Tock{n}"}).json()["updated_at"])
    assert stamps == sorted(set(stamps))
    assert stamps[0] == "2033-05-18T03:33:20Z"
    assert stamps[-1] == "2033-05-18T03:33:23Z"
    assert client.get(url).json()["created_at"] == stamps[0]


# ----------------------------------------------------------------------------- seeded data


def test_same_seed_gives_identical_data() -> None:
    one = state_of(create_app(KEY, seed=40, random_seed=3)).dump()
    two = state_of(create_app("other-key", seed=40, random_seed=3)).dump()
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    other = state_of(create_app(KEY, seed=40, random_seed=4)).dump()
    assert [c["id"] for c in other["customers"]] != [c["id"] for c in one["customers"]]


def test_seeded_data_is_realistic() -> None:
    customers = generate_customers(300, random_seed=1)
    assert len({c["id"] for c in customers}) == 300
    for n, c in enumerate(customers, start=1):
        assert set(c) == CUSTOMER_KEYS  # the store keeps every key; the wire drops nulls
        assert re.fullmatch(r"cus_[0-9a-f]{32}", c["id"])
        assert c["first_name"] and c["last_name"]
        if c["email"] is not None:
            expected = f"{c['first_name']}.{c['last_name']}{n}@example.com".lower()
            assert c["email"] == expected
        assert c["created_at"] <= c["updated_at"]
        assert c["created_at"].startswith("2025-") and TIMESTAMP.match(c["updated_at"])
        kinds = [a["type"] for a in c["addresses"]]
        assert kinds in ([], ["service"], ["billing"], ["service", "billing"])
    mobiles = [c["mobile_number"] for c in customers if c["mobile_number"]]
    assert any(re.fullmatch(r"\(555\) \d{3}-\d{4}", m) for m in mobiles)
    assert any(re.fullmatch(r"555-\d{3}-\d{4}", m) for m in mobiles)
    assert any(re.fullmatch(r"\+1555\d{7}", m) for m in mobiles)
    assert len({re.sub(r"\D", "", m)[-10:] for m in mobiles}) == len(mobiles)
    share = {
        key: sum(1 for c in customers if c[key]) / len(customers)
        for key in ("email", "mobile_number", "home_number", "company", "lead_source", "tags")
    }
    assert share["email"] > 0.8 and share["mobile_number"] > 0.8
    assert 0.05 < share["home_number"] < 0.5 and 0.05 < share["company"] < 0.5
    assert 0.3 < share["lead_source"] < 0.9 and 0.2 < share["tags"] < 0.9
    assert sum(1 for c in customers if len(c["addresses"]) == 2) > 10


def test_reset_restores_the_seeded_data(app: Any, client: httpx.Client) -> None:
    before = state_of(app).dump()
    victim = before["customers"][3]["id"]
    client.delete(f"/customers/{victim}")
    client.post("/customers", json={"first_name": "Temp"})
    client.put(f"/customers/{before['customers'][0]['id']}", json={"first_name": "Changed"})
    assert state_of(app).dump() != before
    with make_client(app, auth=False) as anonymous:
        assert anonymous.post("/_sandbox/reset").json() == {"ok": True}
    assert state_of(app).dump() == before
    made = client.post("/customers", json={"first_name": "After"}).json()
    assert made["updated_at"] > max(c["updated_at"] for c in before["customers"])


# ------------------------------------------------------------------------------- data file


def test_data_file_loads_what_dump_wrote(tmp_path: Path) -> None:
    source = state_of(create_app(KEY, seed=12, random_seed=5)).dump()
    path = tmp_path / "data.json"
    path.write_text(json.dumps(source))
    loaded = create_app(KEY, data_file=str(path))
    assert state_of(loaded).dump() == source
    with make_client(loaded) as c:
        assert c.get("/customers").json()["total_items"] == 12


def test_data_file_fills_in_missing_ids_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"customers": [{"first_name": "Solo", "addresses": [{}]}]}))
    (record,) = state_of(create_app(KEY, data_file=str(path))).dump()["customers"]
    assert re.fullmatch(r"cus_[0-9a-f]{32}", record["id"])
    assert record["addresses"][0]["id"].startswith("adr_")
    assert record["created_at"] == record["updated_at"] == "2025-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"customers": {}}', "customers: must be an array"),
        ('{"customer": []}', "unknown collection 'customer'"),
        ('{"customers": [{"first_name": "A", "email": "bad"}]}', "customers[0].email: is invalid"),
        ('{"customers": [{"tags": []}]}', "customers[0].name: is missing"),
        ('{"customers": [{"first_name": "A", "created_at": "yesterday"}]}', "created_at"),
        ('{"customers": [{"id": "c1", "last_name": "A"}, {"id": "c1", "last_name": "B"}]}', "dup"),
    ],
)
def test_bad_data_file_is_a_config_error_naming_it(
    tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        create_app(KEY, data_file=str(path))
    message = str(caught.value)
    assert str(path) in message
    assert fragment in message


def test_missing_data_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match=r"absent\.json"):
        create_app(KEY, data_file=str(path))


def test_bad_knobs_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(KEY, latency_ms=-1, error_rate=1.5, rate_limit=0)
    assert len(caught.value.problems) == 3
    with pytest.raises(ConfigError):
        create_app("")


# ---------------------------------------------------------------------------------- knobs


def test_injected_500_does_not_apply_the_write(app: Any) -> None:
    state = state_of(app)
    before = state.dump()
    state.error_rate = 1.0
    with make_client(app) as c:
        target = before["customers"][0]["id"]
        for method, path, body in (
            ("POST", "/customers", {"first_name": "Ghost"}),
            ("PUT", f"/customers/{target}", {"first_name": "Ghost"}),
            ("DELETE", f"/customers/{target}", None),
        ):
            response = c.request(method, path, json=body)
            assert response.status_code == 500
            assert response.json() == {"error": {"message": "internal server error (injected)"}}
        assert state.dump() == before
        state.error_rate = 0.0
        assert c.post("/customers", json={"first_name": "Real"}).status_code == 201


def test_error_rate_is_deterministic_per_random_seed() -> None:
    def statuses(random_seed: int) -> list[int]:
        app = create_app(KEY, seed=3, error_rate=0.3, random_seed=random_seed)
        with make_client(app) as c:
            return [c.get("/customers").status_code for _ in range(60)]

    first = statuses(11)
    assert first == statuses(11)
    assert set(first) == {200, 500}
    assert 5 <= first.count(500) <= 35
    assert first != statuses(12)


def test_rate_limit_answers_429_with_retry_after() -> None:
    app = create_app(KEY, seed=2, rate_limit=1)
    with make_client(app) as c:
        assert c.get("/customers").status_code == 200
        response = c.get("/customers")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert response.json() == {"error": {"message": "rate limit exceeded"}}
        # the sandbox's own endpoints are not limited
        assert c.get("/_sandbox/health").status_code == 200


def test_rate_limit_refills_over_time(app: Any) -> None:
    now = [100.0]
    state_of(app).limiter = TokenBucket(2, monotonic=lambda: now[0])
    with make_client(app) as c:

        def burst(n: int) -> list[int]:
            return [c.get("/customers").status_code for _ in range(n)]

        assert burst(3) == [200, 200, 429]
        now[0] += 0.5  # one token back
        assert burst(2) == [200, 429]
        now[0] += 10  # never more than the burst size
        assert burst(3) == [200, 200, 429]
        # a limited write is not applied
        assert c.post("/customers", json={"first_name": "Late"}).status_code == 429
    assert len(state_of(app).dump()["customers"]) == 25


def test_latency_is_added_to_each_request() -> None:
    with make_client(create_app(KEY, latency_ms=60)) as c:
        started = time.perf_counter()
        assert c.get("/customers").status_code == 200
        assert c.get("/nowhere").status_code == 404
        assert time.perf_counter() - started >= 0.12


# ----------------------------------------------------------------------------- request log


def test_request_log_records_and_clears(app: Any, client: httpx.Client) -> None:
    client.get("/customers", params={"page": 2, "q": "ann"})
    client.get("/customers/cus_nope")
    client.get("/customers", headers={"Authorization": "Token wrong"})
    client.get("/unknown")
    client.post("/customers", json={"first_name": "Logged"})
    log = client.get("/_sandbox/requests").json()["requests"]
    assert log == [
        {"method": "GET", "path": "/customers", "query": "page=2&q=ann", "status": 200},
        {"method": "GET", "path": "/customers/cus_nope", "query": "", "status": 404},
        {"method": "GET", "path": "/customers", "query": "", "status": 401},
        {"method": "GET", "path": "/unknown", "query": "", "status": 404},
        {"method": "POST", "path": "/customers", "query": "", "status": 201},
    ]
    assert client.delete("/_sandbox/requests").status_code == 200
    assert client.get("/_sandbox/requests").json() == {"requests": []}
    client.delete("/customers/cus_nope")
    assert state_of(app).requests() == [
        {"method": "DELETE", "path": "/customers/cus_nope", "query": "", "status": 404}
    ]


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_writers_through_one_transport(app: Any) -> None:
    transport = SyncASGITransport(app)
    failures: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            c = httpx.Client(transport=transport, base_url="http://sandbox", headers=AUTH)
            for i in range(25):
                response = c.post("/customers", json={"first_name": f"T{n}", "last_name": str(i)})
                assert response.status_code == 201
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    transport.close()
    assert failures == []
    customers = state_of(app).dump()["customers"]
    assert len(customers) == 25 + 200
    assert len({c["id"] for c in customers}) == 225
    stamps = [c["updated_at"] for c in customers[25:]]
    assert len(set(stamps)) == 200  # the clock never hands out a timestamp twice


def test_transport_works_again_after_close(app: Any) -> None:
    transport = SyncASGITransport(app)
    with httpx.Client(transport=transport, base_url="http://sandbox", headers=AUTH) as c:
        assert c.get("/customers").status_code == 200
    with httpx.Client(transport=transport, base_url="http://sandbox", headers=AUTH) as c:
        assert c.get("/customers").status_code == 200


# ---------------------------------------------------------------------------------- serve()


@pytest.mark.integration
def test_serve_in_a_subprocess_answers_real_http(tmp_path: Path) -> None:
    script = (
        "from syncengine.connectors.housecallpro.sandbox import serve\n"
        f"serve('127.0.0.1', 0, api_key={KEY!r}, seed=5, random_seed=2)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the sandbox did not announce itself within 30 s"
        line = proc.stdout.readline().strip()
        match = re.fullmatch(r"sandbox listening on (http://127\.0\.0\.1:(\d+))", line)
        assert match, (
            f"unexpected first line {line!r}; stderr: {proc.stderr and proc.stderr.read()}"
        )
        assert int(match.group(2)) > 0
        with httpx.Client(base_url=match.group(1), timeout=10) as c:
            response = c.get("/customers", headers={"Authorization": f"Bearer {KEY}"})
            assert response.status_code == 200
            assert response.json()["total_items"] == 5
            assert c.get("/customers").status_code == 401
            log = c.get("/_sandbox/requests").json()["requests"]
            assert [e["status"] for e in log] == [200, 401]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
