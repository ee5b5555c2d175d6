"""The REST connector against the in-process fake CRM: auth styles, response shapes that do
not match the description (clear errors naming connector, entity and setting), the bodies of
writes, find, and incremental reads."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.rest import RestConnector, RestOptions
from syncengine.connectors.rest.fake import FakeCrm
from syncengine.connectors.rest.incremental import (
    HighWater,
    Mark,
    decode_token,
    encode_token,
    mark_param,
)
from syncengine.errors import (
    AuthError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
    RetriableError,
)

SECRET = "tok-9f8e7d6c5b4a"


def make(
    crm: FakeCrm,
    *,
    auth: dict[str, Any] | None = None,
    page_size: int = 10,
    clock: list[float] | None = None,
    **entity: Any,
) -> RestConnector:
    table: dict[str, Any] = {"path": f"/{crm.collection}", **entity}
    if crm.records_key and "records_path" not in entity:
        table["records_path"] = crm.records_key
    options = RestOptions.model_validate(
        {
            "type": "rest",
            "base_url": crm.base_url,
            "rate_limit": 0,
            "max_retries": 2,
            "page_size": page_size,
            "auth": auth or {"style": "none"},
            "entities": {"customers": table},
        }
    )
    extra: dict[str, Any] = {"transport": crm.transport(), "sleep": lambda _s: None}
    if clock is not None:
        extra["clock"] = lambda: clock[0]
    return RestConnector(options, ConnectorContext("crm", extra=extra))


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


# ---------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("auth", "headers", "params"),
    [
        ({"style": "bearer", "token": SECRET}, {"Authorization": f"Bearer {SECRET}"}, {}),
        ({"style": "token", "token": SECRET}, {"Authorization": f"Token {SECRET}"}, {}),
        (
            {"style": "token", "token": SECRET, "scheme": "ApiKey"},
            {"Authorization": f"ApiKey {SECRET}"},
            {},
        ),
        (
            {"style": "header", "token": SECRET, "header": "X-Crm-Key", "prefix": "key="},
            {"X-Crm-Key": f"key={SECRET}"},
            {},
        ),
        (
            {"style": "basic", "username": "office", "password": SECRET},
            {"Authorization": "Basic " + base64.b64encode(f"office:{SECRET}".encode()).decode()},
            {},
        ),
        ({"style": "query", "token": SECRET, "param": "key"}, {}, {"key": SECRET}),
    ],
)
def test_each_auth_style_is_sent_on_every_request(
    auth: dict[str, Any], headers: dict[str, str], params: dict[str, str]
) -> None:
    crm = FakeCrm(style="link", require_headers=headers, require_params=params)
    for i in range(25):
        crm.add({"name": f"c{i}"})
    conn = make(
        crm, auth=auth, pagination={"style": "link", "page_param": "page", "size_param": "per_page"}
    )
    assert len(list(conn.read("customers"))) == 25
    created = conn.create("customers", {"name": "new"}, key="k1")
    conn.update("customers", created.id, {"name": "newer"}, full={"name": "newer"})
    conn.delete("customers", created.id)
    assert len(crm.requests) == 3 + 3
    for request in crm.requests:
        # the key is sent once, even on next links that already carry it
        for name, value in params.items():
            assert request.url.params.get_list(name) == [value]


@pytest.mark.parametrize(
    "auth",
    [
        {"style": "bearer", "token": SECRET},
        {"style": "query", "token": SECRET},
        {"style": "basic", "username": "me", "password": SECRET},
    ],
)
def test_refused_credentials_are_an_auth_error_naming_the_connector(auth: dict[str, Any]) -> None:
    crm = FakeCrm(require_headers={"Authorization": "Bearer right"})
    conn = make(crm, auth=auth)
    with pytest.raises(AuthError) as caught:
        list(conn.read("customers"))
    message = str(caught.value)
    assert message.startswith("crm:customers: GET /contacts: HTTP 401")
    assert f"auth style {auth['style']!r} in [connectors.crm.auth]" in message
    assert SECRET not in message
    assert caught.value.connector == "crm" and caught.value.entity == "customers"
    assert not crm.writes()


def test_a_server_wanting_credentials_says_to_add_auth() -> None:
    crm = FakeCrm(require_headers={"Authorization": "Bearer right"})
    with pytest.raises(AuthError, match=r"wants credentials: add \[connectors\.crm\.auth\]"):
        list(make(crm).read("customers"))


def test_a_query_key_never_shows_in_an_error() -> None:
    crm = FakeCrm(style="link")
    crm.add({"name": "a"})
    crm.before = lambda request: httpx.Response(503, json={"error": f"down ({request.url})"})
    conn = make(crm, auth={"style": "query", "token": SECRET})
    with pytest.raises(RetriableError) as caught:
        list(conn.read("customers"))
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)
    assert len(crm.requests) == 3  # retried (max_retries = 2), never really waiting


# ------------------------------------------------------------------------- bad shapes


def test_a_wrong_records_path_names_the_setting_and_the_keys_there_are() -> None:
    crm = FakeCrm(records_key="contacts")
    crm.add({"name": "a"})
    with pytest.raises(FatalConnectorError) as caught:
        list(make(crm, records_path="data").read("customers"))
    message = str(caught.value)
    assert message.startswith(
        "crm:customers: GET /contacts the list request: the response has "
        "no 'data' (setting records_path = 'data' in "
        "[connectors.crm.entities.customers])"
    )
    assert "an object with keys: contacts, count" in message
    assert "(here: 'contacts')" in message
    # what was written is the command's to say (a sync may have synced entities before)
    assert "Nothing was written" not in message


def test_an_envelope_where_a_bare_list_was_described_suggests_the_key() -> None:
    crm = FakeCrm(records_key="items")
    crm.add({"name": "a"})
    with pytest.raises(
        FatalConnectorError,
        match=r"the response is an object with keys: items, "
        r"count, not a list \(setting records_path = "
        r"'' .*\(here: 'items'\)",
    ):
        list(make(crm, records_path="").read("customers"))


def test_records_that_are_not_objects_are_an_error() -> None:
    crm = FakeCrm(records_key="data")
    crm.before = lambda _r: httpx.Response(200, json={"data": ["a", "b"]})
    with pytest.raises(FatalConnectorError, match="record 1 at data is a string, not an object"):
        list(make(crm).read("customers"))


def test_a_record_without_the_id_field_is_an_error() -> None:
    crm = FakeCrm()
    crm.add({"name": "a", "id": 7})
    with pytest.raises(FatalConnectorError) as caught:
        list(make(crm, id_field="contact_id").read("customers"))
    message = str(caught.value)
    assert "no usable id at 'contact_id' (no such key; setting id_field = 'contact_id'" in message
    assert "an object with keys: name, id, updated_at" in message


def test_ids_may_sit_deeper_and_be_numbers() -> None:
    crm = FakeCrm()
    crm.add({"id": 1, "meta": {"uid": 77}, "name": "a"})
    records = list(
        make(crm, id_field="meta.uid", get=False, update=False, delete=False).read("customers")
    )
    assert [r.id for r in records] == ["77"]
    assert records[0].location == "crm customers 77"


def test_a_list_path_that_does_not_exist_names_the_setting() -> None:
    crm = FakeCrm()
    with pytest.raises(
        FatalConnectorError,
        match=r"the list path does not exist \(setting path "
        r"= '/people'",
    ):
        list(make(crm, path="/people").read("customers"))


def test_a_list_request_refused_as_invalid_is_fatal_not_a_record_error() -> None:
    crm = FakeCrm()
    crm.before = lambda _r: httpx.Response(422, json={"error": "bad sort"})
    with pytest.raises(FatalConnectorError, match=r"refused the list request.*list_params"):
        list(make(crm).read("customers"))


# --------------------------------------------------------------------------------- writes


def test_create_wraps_the_body_and_unwraps_the_answer() -> None:
    crm = FakeCrm(wrap_key="contact", records_key="data")
    conn = make(crm, body_wrap="contact", response_path="contact", read_only_fields=["updated_at"])
    created = conn.create("customers", {"name": "Ada", "id": 99, "updated_at": "x"}, key="k")
    assert body_of(crm.requests[-1]) == {"contact": {"name": "Ada"}}
    assert created.id == "1"
    assert created.data == crm.records["1"]


def test_create_without_a_record_in_the_answer_is_an_error() -> None:
    crm = FakeCrm()
    crm.before = lambda r: httpx.Response(201) if r.method == "POST" else None
    with pytest.raises(FatalConnectorError, match=r"answered without a record.*response_path"):
        make(crm).create("customers", {"name": "a"}, key="k")


def test_create_is_never_retried() -> None:
    crm = FakeCrm()
    crm.before = lambda r: httpx.Response(503) if r.method == "POST" else None
    with pytest.raises(RetriableError, match="look it up before resending"):
        make(crm).create("customers", {"name": "a"}, key="k")
    assert len(crm.writes()) == 1


def test_a_refused_create_is_a_record_error() -> None:
    crm = FakeCrm(wrap_key="contact")
    with pytest.raises(RecordError):
        make(crm).create("customers", {"name": "a"}, key="k")  # not wrapped: 422


def test_patch_sends_only_the_changed_leaves_nested_as_their_paths_say() -> None:
    crm = FakeCrm()
    record = crm.add(
        {"id": 1, "properties": {"firstname": "a", "lastname": "b", "hs_object_id": "1"}}
    )
    full = {**record, "properties": {**record["properties"], "lastname": "New"}}
    make(crm).update("customers", "1", {"properties.lastname": "New"}, full=full)
    assert body_of(crm.requests[-1]) == {"properties": {"lastname": "New"}}


def test_read_only_fields_take_dotted_paths_and_wildcards() -> None:
    crm = FakeCrm()
    props = {"firstname": "a", "hs_object_id": "1", "hs_x": "2", "createdate": "d"}
    record = crm.add({"id": 1, "properties": props, "archived": False})
    conn = make(
        crm,
        update="PUT /contacts/{id}",
        read_only_fields=["properties.hs_*", "properties.createdate", "archived", "updated_at"],
    )
    full = {**record, "properties": {**props, "firstname": "z"}}
    conn.update("customers", "1", {"properties.firstname": "z"}, full=full)
    assert body_of(crm.requests[-1]) == {"properties": {"firstname": "z"}}
    conn.create("customers", {"properties": {"hs_object_id": "9", "firstname": "y"}}, key="k")
    assert body_of(crm.requests[-1]) == {"properties": {"firstname": "y"}}
    patched = make(crm, read_only_fields=["properties.hs_*"])
    assert patched.update("customers", "1", {"properties.hs_x": "3"}, full=full) is None


def test_a_duplicate_refusal_returns_the_existing_record_by_the_id_in_the_answer() -> None:
    crm = FakeCrm()
    existing = crm.add({"email": "a@x.org", "name": "Old"})
    crm.before = lambda r: (
        httpx.Response(409, json={"message": "Contact already exists. Existing ID: 1"})
        if r.method == "POST"
        else None
    )
    conn = make(crm, duplicate={"status": 409, "id_pattern": r"Existing ID: (\d+)"})
    found = conn.create("customers", {"email": "a@x.org", "name": "New"}, key="k")
    assert (found.id, found.data) == ("1", existing)
    assert [r.method for r in crm.requests] == ["POST", "GET"]


def test_a_duplicate_refusal_without_an_id_is_looked_up_by_the_searched_fields() -> None:
    crm = FakeCrm()
    crm.add({"email": "b@x.org", "name": "Other"})
    crm.add({"email": "a@x.org", "name": "Old"})
    crm.before = lambda r: httpx.Response(409, text="duplicate") if r.method == "POST" else None
    conn = make(crm, find_params={"email": "email"})
    found = conn.create("customers", {"email": "A@x.org ", "name": "New"}, key="k")
    assert found.id == "2"
    bare = make(crm)  # nothing to search by: the refusal is this record's error
    with pytest.raises(RecordError, match=r"HTTP 409.*duplicate.*id_pattern"):
        bare.create("customers", {"email": "a@x.org"}, key="k")
    off = make(crm, duplicate=False, find_params={"email": "email"})
    with pytest.raises(FatalConnectorError, match="409"):
        off.create("customers", {"email": "a@x.org"}, key="k")


def test_find_posts_a_templated_search_body() -> None:
    crm = FakeCrm()
    crm.add({"email": "a@x.org", "name": "A"})

    def search(r: httpx.Request) -> httpx.Response | None:
        if r.url.path != "/contacts/search":
            return None
        wanted = body_of(r)["filters"][0]["value"]
        hits = [c for c in crm.records.values() if c["email"] == wanted]
        return httpx.Response(200, json={"results": hits, "total": len(hits)})

    crm.before = search
    conn = make(
        crm,
        find_scan=False,
        find={
            "path": "/contacts/search",
            "body": {"filters": [{"field": "email", "value": "{email}"}], "limit": 10},
            "records_path": "results",
        },
    )
    assert [r.id for r in conn.find("customers", {"email": "a@x.org", "name": "A"})] == ["1"]
    assert body_of(crm.requests[-1]) == {
        "filters": [{"field": "email", "value": "a@x.org"}],
        "limit": 10,
    }
    assert crm.requests[-1].method == "POST"
    before = len(crm.requests)
    assert conn.find("customers", {"name": "A"}) == []  # no e-mail: no search, no scan
    assert len(crm.requests) == before


def test_patch_top_level_sends_the_changed_top_level_keys_whole() -> None:
    crm = FakeCrm()
    record = crm.add({"name": "a", "address": {"street": "1 Main", "city": "Austin"}, "phone": "1"})
    full = {**record, "address": {"street": "1 Main", "city": "Dallas"}, "phone": None}
    returned = make(crm, update_body="top_level").update(
        "customers", "1", {"address.city": "Dallas", "phone": None}, full=full
    )
    assert body_of(crm.requests[-1]) == {
        "address": {"street": "1 Main", "city": "Dallas"},
        "phone": None,
    }
    assert crm.requests[-1].method == "PATCH"
    assert returned is not None and returned.data == crm.records["1"]


def test_put_sends_the_whole_record_without_its_id() -> None:
    crm = FakeCrm()
    record = crm.add({"name": "a", "email": "a@x.com"})
    make(crm, update="PUT /contacts/{id}", read_only_fields=["updated_at"]).update(
        "customers", "1", {"name": "b"}, full={**record, "name": "b"}
    )
    assert crm.requests[-1].method == "PUT"
    assert body_of(crm.requests[-1]) == {"name": "b", "email": "a@x.com"}


def test_an_update_changing_nothing_writable_sends_nothing() -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    assert make(crm).update("customers", "1", {"id": "5"}, full={"id": "5"}) is None
    assert not crm.writes()


def test_an_update_answered_without_a_record_returns_none() -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    crm.before = lambda r: httpx.Response(200, json={"ok": True}) if r.method == "PATCH" else None
    assert make(crm).update("customers", "1", {"name": "b"}, full={"name": "b"}) is None


def test_an_update_of_a_missing_record_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        make(FakeCrm()).update("customers", "404", {"name": "b"}, full={"name": "b"})


def test_an_update_cannot_change_the_id() -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    with pytest.raises(FatalConnectorError, match="this API assigns ids"):
        make(crm).update("customers", "1", {"name": "b"}, full={"name": "b"}, new_id="k")


def test_delete_of_a_missing_record_is_done() -> None:
    crm = FakeCrm()
    make(crm).delete("customers", "12")
    crm.before = lambda _r: httpx.Response(410)
    make(crm).delete("customers", "12")


def test_delete_on_a_route_the_server_lacks_is_an_error() -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    crm.before = lambda r: (
        httpx.Response(
            404, text="<html><title>Not Found</title></html>", headers={"content-type": "text/html"}
        )
        if r.method == "DELETE"
        else None
    )
    with pytest.raises(FatalConnectorError, match="set delete = false"):
        make(crm).delete("customers", "1")


def test_a_switched_off_operation_refuses() -> None:
    conn = make(FakeCrm(), delete=False)
    assert not conn.capabilities("customers").delete
    with pytest.raises(FatalConnectorError, match="delete is switched off"):
        conn.delete("customers", "1")


def test_unknown_entities_are_refused_naming_the_ones_there_are() -> None:
    with pytest.raises(
        FatalConnectorError,
        match=r"unknown entity 'invoices' \(this connector "
        r"has: customers\)",
    ):
        list(make(FakeCrm()).read("invoices"))


# ---------------------------------------------------------------------------- get and find


def test_get_by_id_and_none_when_missing() -> None:
    crm = FakeCrm(wrap_key="contact")
    crm.add({"name": "a"})
    conn = make(crm, response_path="contact")
    found = conn.get("customers", "1")
    assert found is not None and found.data["name"] == "a"
    assert conn.get("customers", "2") is None


def test_get_without_a_get_route_scans_the_list() -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    crm.add({"name": "b"})
    found = make(crm, get=False).get("customers", "2")
    assert found is not None and found.data["name"] == "b"
    assert [r.url.path for r in crm.requests] == ["/contacts"]


def test_find_filters_by_the_configured_parameter() -> None:
    crm = FakeCrm()
    for i in range(30):
        crm.add({"name": f"c{i}", "email": f"c{i}@x.com", "address": {"city": "Austin"}})
    conn = make(crm, find_params={"email": "email"})
    found = conn.find(
        "customers",
        {
            "name": "C7 ",
            "email": "c7@x.com",
            "address": {"city": "austin", "zip": None},
            "tags": [],
        },
    )
    assert [r.id for r in found] == ["8"]
    assert [dict(r.url.params) for r in crm.requests] == [{"email": "c7@x.com"}]


def test_find_scans_when_the_filter_finds_nothing_unless_told_not_to() -> None:
    crm = FakeCrm()
    crm.add({"name": "a", "email": "A@X.com"})
    conn = make(crm, find_params={"email": "email"})
    assert [r.id for r in conn.find("customers", {"email": "a@x.com"})] == ["1"]
    assert len(crm.requests) == 2  # the filter (case-sensitive on this server), then a scan
    crm.requests.clear()
    strict = make(crm, find_params={"email": "email"}, find_scan=False)
    assert strict.find("customers", {"email": "a@x.com"}) == []
    assert len(crm.requests) == 1


def test_find_without_a_usable_parameter_scans() -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    crm.add({"name": "b", "email": "b@x.com"})
    assert [
        r.id for r in make(crm, find_params={"email": "email"}).find("customers", {"name": "b"})
    ] == ["2"]
    assert [dict(r.url.params) for r in crm.requests] == [{}]


# ------------------------------------------------------------------------ incremental reads


INCREMENTAL = {
    "enabled": True,
    "param": "updated_since",
    "full_every_hours": 1,
    "overlap_seconds": 0,
}


def test_read_incremental_is_none_unless_enabled() -> None:
    assert make(FakeCrm()).read_incremental("customers", None) is None


def test_incremental_passes_read_what_changed_and_a_full_pass_comes_round() -> None:
    crm = FakeCrm()
    for i in range(5):
        crm.add({"name": f"c{i}"})
    clock = [1000.0]
    conn = make(crm, clock=clock, updated_field="updated_at", incremental=INCREMENTAL)

    first = conn.read_incremental("customers", None)
    assert first is not None and first.complete
    assert first.token() is None  # not before the records are read
    assert len(list(first.records)) == 5
    token = first.token()
    assert token is not None
    assert decode_token(token) == Mark("2026-01-01T00:00:05Z", 1000.0)
    assert "updated_since" not in crm.list_requests()[-1].url.params

    crm.edit("2", name="changed")
    crm.add({"name": "new"})
    clock[0] += 60
    second = conn.read_incremental("customers", token)
    assert second is not None and not second.complete
    # updated since the mark (>=): the record at the mark itself comes again, unchanged
    assert [r.id for r in second.records] == ["2", "5", "6"]
    assert crm.list_requests()[-1].url.params["updated_since"] == "2026-01-01T00:00:05Z"
    token = second.token()
    assert decode_token(token) == Mark("2026-01-01T00:00:07Z", 1000.0)

    clock[0] += 3600  # an hour since the last full pass: deletes must be seen again
    third = conn.read_incremental("customers", token)
    assert third is not None and third.complete
    assert len(list(third.records)) == 6
    assert decode_token(third.token()).full_at == clock[0]


def test_read_stays_a_full_listing_when_incremental_is_enabled() -> None:
    crm = FakeCrm()
    for i in range(3):
        crm.add({"name": f"c{i}"})
    conn = make(crm, updated_field="updated_at", incremental=INCREMENTAL)
    assert len(list(conn.read("customers"))) == 3
    assert all("updated_since" not in r.url.params for r in crm.requests)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "nonsense",
        '{"v": 99}',
        '{"v": 1, "since": true}',
        '{"v": 1, "since": "x", "full_at": "y"}',
    ],
)
def test_an_unreadable_token_means_a_full_pass(token: str) -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    conn = make(crm, updated_field="updated_at", incremental=INCREMENTAL)
    read = conn.read_incremental("customers", token)
    assert read is not None and read.complete


def test_a_clock_that_went_back_means_a_full_pass() -> None:
    crm = FakeCrm()
    crm.add({"name": "a"})
    conn = make(crm, clock=[10.0], updated_field="updated_at", incremental=INCREMENTAL)
    read = conn.read_incremental("customers", encode_token(Mark("2026-01-01T00:00:00Z", 50.0)))
    assert read is not None and read.complete


@pytest.mark.parametrize(
    ("since", "overlap", "sent"),
    [
        ("2026-03-01T10:00:00Z", 60, "2026-03-01T09:59:00Z"),
        ("2026-03-01T10:00:00+02:00", 0, "2026-03-01T10:00:00+02:00"),
        ("2026-03-01T10:00:00.250+02:00", 1, "2026-03-01T07:59:59.250000Z"),
        (1_700_000_000, 30, 1_699_999_970),
        (1_700_000_000.5, 0.5, 1_700_000_000.0),
        ("rev-0042", 60, "rev-0042"),
    ],
)
def test_the_mark_is_sent_less_the_overlap_in_its_own_form(
    since: str | int | float, overlap: float, sent: str | int | float
) -> None:
    assert mark_param(since, overlap) == sent


def test_the_high_water_mark_compares_times_not_text() -> None:
    water = HighWater()
    for value in ["2026-01-02T00:00:00+05:00", "2026-01-01T20:00:00Z", None, "", True]:
        water.see(value)
    assert water.value == "2026-01-01T20:00:00Z"  # later than 2026-01-01T19:00:00Z
