"""The connector contract for the generic REST connector.

Against a real json-server 0.17.4 (one process per module, each test on its own empty
collection, so tests never see each other's records), described two ways: following ``Link``
headers (``_page``/``_limit``) and by offset (``_start``/``_limit``). And against the in-process
fake CRM with a cursor in a wrapped envelope (``{"data": [...], "next_cursor": ...}``, bodies as
``{"contact": {...}}``), which json-server cannot speak. Page sizes are small so that the bulk
test spans several pages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from syncengine.connector import Connector, ConnectorContext, NativeData, NativeRecord
from syncengine.connectors.rest import RestConnector, RestOptions
from syncengine.connectors.rest.fake import FakeCrm
from testbed.jsonserver import JsonServer
from testbed.nestedcrm import BASE as NESTED_BASE
from testbed.nestedcrm import WRITABLE as NESTED_WRITABLE
from testbed.nestedcrm import NestedCrm
from tests.contract.connector_suite import Change, ConnectorContract, Reopen, Sample, key
from tests.jsonserver import ensure_json_server, json_server_options
from tests.tools import RecordingTransport

PAGE_SIZE = 4
COLLECTIONS = 120
"""Empty collections in the shared json-server: one per test."""


def sample_customer(n: int) -> NativeData:
    return {
        "firstName": f"Ada{n}",
        "lastName": f"Lovelace-{n}",
        "email": f"ada.{n}@example.com",
        "phone": f"+1555{n:07d}",
        "company": f"Engines {n}, Ltd.",
        "tags": ["vip", f"t{n}"],
        "address": {"street": f"{n} Analytical Way", "city": "London"},
    }


def rename(data: NativeData) -> NativeData:
    return {"lastName": f"{data['lastName']} (renamed)"}


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JsonServer]:
    binary = ensure_json_server()
    db: dict[str, Any] = {f"c{i:03d}": [] for i in range(COLLECTIONS)}
    with JsonServer(binary, tmp_path_factory.mktemp("json-server"), db) as server:
        yield server


_numbers = itertools.count()


class _RestContract(ConnectorContract):
    """What the REST contract classes share: each test's connectors, closed afterwards."""

    @pytest.fixture
    def opened(self) -> Iterator[list[Connector]]:
        conns: list[Connector] = []
        yield conns
        for conn in conns:
            conn.close()

    @pytest.fixture
    def sample(self) -> Sample:
        return sample_customer

    @pytest.fixture
    def change(self) -> Change:
        return rename


class JsonServerContract(_RestContract):
    """json-server, described with one pagination style (``style``)."""

    style: ClassVar[str] = "link"
    missing_id: ClassVar[str] = "999999"
    many: ClassVar[int] = 25  # 7 pages of PAGE_SIZE

    @pytest.fixture
    def collection(self, json_server: JsonServer) -> str:
        name = f"c{next(_numbers):03d}"
        assert int(name[1:]) < COLLECTIONS, "raise COLLECTIONS: every test needs its own"
        return name

    def make(
        self,
        json_server: JsonServer,
        collection: str,
        name: str = "crm",
        transport: RecordingTransport | None = None,
    ) -> RestConnector:
        options = RestOptions.model_validate(
            json_server_options(
                json_server.url, f"/{collection}", style=self.style, page_size=PAGE_SIZE
            )
        )
        extra = {"transport": transport} if transport is not None else {}
        return RestConnector(options, ConnectorContext(name=name, extra=extra))

    @pytest.fixture
    def connector(
        self, json_server: JsonServer, collection: str, opened: list[Connector]
    ) -> Connector:
        conn = self.make(json_server, collection)
        opened.append(conn)
        return conn

    @pytest.fixture
    def reopen(self, json_server: JsonServer, collection: str, opened: list[Connector]) -> Reopen:
        def again(conn: Connector) -> Connector:
            assert isinstance(conn, RestConnector)
            other = self.make(json_server, collection, "crm-reopened")
            opened.append(other)
            return other

        return again

    # --------------------------------------------------------------- json-server specifics

    def test_bulk_read_makes_only_the_list_calls_paging_needs(
        self, json_server: JsonServer, collection: str, connector: Connector, sample: Sample
    ) -> None:
        for n in range(1, self.many + 1):
            connector.create(self.entity, sample(n), key=key(n))
        recorder = RecordingTransport()
        reader = self.make(json_server, collection, transport=recorder)
        try:
            assert len(list(reader.read(self.entity))) == self.many
        finally:
            reader.close()
        calls = [(e.method, e.path) for e in recorder.exchanges]
        pages = math.ceil(self.many / PAGE_SIZE)
        assert calls == [("GET", f"/{collection}")] * pages

    def test_writes_reach_db_json(
        self, json_server: JsonServer, collection: str, connector: Connector, sample: Sample
    ) -> None:
        created = connector.create(self.entity, sample(1), key=key(1))
        stored = json_server.db(until=lambda data: bool(data[collection]))[collection]
        assert [str(r["id"]) for r in stored] == [created.id]
        assert stored[0] == created.data


class TestJsonServerByLink(JsonServerContract):
    style = "link"


class TestJsonServerByOffset(JsonServerContract):
    style = "offset"


class TestFakeCrmByCursor(_RestContract):
    """The fake CRM: cursor pagination, records under ``data``, bodies wrapped as contact."""

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"updated_at"})
    missing_id: ClassVar[str] = "cus_999999"
    many: ClassVar[int] = 25

    @pytest.fixture
    def crm(self) -> FakeCrm:
        return FakeCrm(
            style="cursor",
            records_key="data",
            wrap_key="contact",
            id_prefix="cus_",
            require_headers={"Authorization": "Bearer s3cret"},
        )

    def make(self, crm: FakeCrm, name: str = "crm") -> RestConnector:
        options = RestOptions.model_validate(
            {
                "type": "rest",
                "base_url": crm.base_url,
                "rate_limit": 0,
                "page_size": PAGE_SIZE,
                "auth": {"style": "bearer", "token": "s3cret"},
                "entities": {
                    "customers": {
                        "path": "/contacts",
                        "records_path": "data",
                        "body_wrap": "contact",
                        "response_path": "contact",
                        "read_only_fields": ["updated_at"],
                        "find_params": {"email": "email"},
                        "pagination": {"style": "cursor", "cursor_path": "next_cursor"},
                    }
                },
            }
        )
        return RestConnector(options, ConnectorContext(name, extra={"transport": crm.transport()}))

    @pytest.fixture
    def connector(self, crm: FakeCrm, opened: list[Connector]) -> Connector:
        conn = self.make(crm)
        opened.append(conn)
        return conn

    @pytest.fixture
    def reopen(self, crm: FakeCrm, opened: list[Connector]) -> Reopen:
        def again(conn: Connector) -> Connector:
            other = self.make(crm, "crm-reopened")
            opened.append(other)
            return other

        return again

    def test_bulk_read_pages_by_cursor(
        self, crm: FakeCrm, connector: Connector, sample: Sample
    ) -> None:
        for n in range(1, self.many + 1):
            connector.create(self.entity, sample(n), key=key(n))
        crm.requests.clear()
        assert len(list(connector.read(self.entity))) == self.many
        assert len(crm.list_requests()) == math.ceil(self.many / PAGE_SIZE)


def test_json_server_is_the_pinned_version(json_server: JsonServer) -> None:
    """The tests describe json-server 0.17's paging; a different version may page otherwise."""
    from testbed.npm import JSON_SERVER_VERSION, tool_version

    assert tool_version(json_server.binary) == JSON_SERVER_VERSION
    assert Path(json_server.binary).name == "json-server"


@pytest.mark.parametrize("style", ["link", "total_count", "page", "offset", "none"])
@pytest.mark.parametrize("n", [0, 1, PAGE_SIZE, PAGE_SIZE + 1, 3 * PAGE_SIZE])
def test_every_style_json_server_speaks_pages_it_exactly(
    json_server: JsonServer, style: str, n: int
) -> None:
    """Against json-server itself: every record once, with the fewest list calls the style
    allows (an exact multiple of the page size ends with an empty page for the styles that
    learn the end from the records; ``link`` and ``total_count`` know it from the headers)."""
    collection = f"c{next(_numbers):03d}"
    assert int(collection[1:]) < COLLECTIONS
    created = [json_server.post(sample_customer(i), collection) for i in range(n)]
    recorder = RecordingTransport()
    options = RestOptions.model_validate(
        json_server_options(json_server.url, f"/{collection}", style=style, page_size=PAGE_SIZE)
    )
    conn = RestConnector(options, ConnectorContext("crm", extra={"transport": recorder}))
    try:
        ids = [r.id for r in conn.read(JsonServerContract.entity)]
    finally:
        conn.close()
    assert ids == [str(c["id"]) for c in created]
    pages = max(1, math.ceil(n / PAGE_SIZE))
    learns_the_end = style in ("page", "offset") and (n % PAGE_SIZE == 0 or n < PAGE_SIZE)
    expected = 1 if style == "none" else pages + (1 if learns_the_end and n else 0)
    assert len(recorder.exchanges) == expected, [e.url for e in recorder.exchanges]


# ------------------------------------------------------------- a CRM with nested properties


def nested_sample(n: int) -> NativeData:
    return {
        "properties": {
            "firstname": f"Ada{n}",
            "lastname": f"Lovelace-{n}",
            "email": f"ada.{n}@example.com",
            "phone": f"+1555{n:07d}",
            "company": f"Engines {n}, Ltd.",
            "city": "London",
        }
    }


def nested_rename(data: NativeData) -> NativeData:
    """The record's writable properties with the last name changed (read-only ones left out:
    the connector must not send them anyway)."""
    props = {k: v for k, v in data["properties"].items() if k in NESTED_WRITABLE}
    return {"properties": {**props, "lastname": f"{props['lastname']} (renamed)"}}


def nested_options(url: str) -> dict[str, Any]:
    """The options of mappings/rest/crm-properties.toml, for the nested CRM at ``url``."""
    return {
        "type": "rest",
        "base_url": url,
        "rate_limit": 0,
        "max_retries": 1,
        "page_size": PAGE_SIZE,
        "entities": {
            "customers": {
                "path": NESTED_BASE,
                "records_path": "results",
                "read_only_fields": [
                    "properties.hs_*",
                    "properties.createdate",
                    "properties.lastmodifieddate",
                    "createdAt",
                    "updatedAt",
                    "archived",
                ],
                "duplicate": {"status": 409, "id_pattern": r"Existing ID: (\d+)"},
                "find": {
                    "method": "POST",
                    "path": f"{NESTED_BASE}/search",
                    "records_path": "results",
                    "body": {
                        "filterGroups": [
                            {
                                "filters": [
                                    {
                                        "propertyName": "email",
                                        "operator": "EQ",
                                        "value": "{properties.email}",
                                    }
                                ]
                            }
                        ],
                        "limit": 10,
                    },
                },
                "pagination": {
                    "style": "cursor",
                    "cursor_param": "after",
                    "cursor_path": "paging.next.after",
                    "size_param": "limit",
                },
            }
        },
    }


def _leaves_held(actual: Any, written: Any) -> bool:
    if isinstance(written, dict):
        return isinstance(actual, dict) and all(
            _leaves_held(actual.get(k), v) for k, v in written.items()
        )
    return bool(actual == written)


class TestNestedCrm(ConnectorContract):
    """testbed/nestedcrm.py as a process (one per test: an empty CRM each time): properties
    nested, a cursor at ``paging.next.after``, read-only properties refused, a POST search."""

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"updatedAt"})
    missing_id: ClassVar[str] = "999999"

    @pytest.fixture
    def crm(self) -> Iterator[NestedCrm]:
        with NestedCrm() as server:
            yield server

    @pytest.fixture
    def opened(self) -> Iterator[list[Connector]]:
        conns: list[Connector] = []
        yield conns
        for conn in conns:
            conn.close()

    def make(self, crm: NestedCrm, name: str = "crm") -> RestConnector:
        options = RestOptions.model_validate(nested_options(crm.url))
        return RestConnector(options, ConnectorContext(name))

    @pytest.fixture
    def connector(self, crm: NestedCrm, opened: list[Connector]) -> Connector:
        conn = self.make(crm)
        opened.append(conn)
        return conn

    @pytest.fixture
    def reopen(self, crm: NestedCrm, opened: list[Connector]) -> Reopen:
        def again(conn: Connector) -> Connector:
            other = self.make(crm, "crm-reopened")
            opened.append(other)
            return other

        return again

    @pytest.fixture
    def sample(self) -> Sample:
        return nested_sample

    @pytest.fixture
    def change(self) -> Change:
        return nested_rename

    @staticmethod
    def assert_holds(record: NativeRecord, written: NativeData) -> None:
        """Every written leaf, with the value written (the CRM adds its own properties)."""
        assert _leaves_held(record.data, written), (
            f"{record.id}: wrote {written}, got {record.data}"
        )

    def test_bulk_read_pages_by_the_nested_cursor(
        self, crm: NestedCrm, connector: Connector, sample: Sample
    ) -> None:
        for n in range(1, 10):
            connector.create(self.entity, sample(n), key=key(n))
        crm.clear_log()
        assert len(list(connector.read(self.entity))) == 9
        assert [(e["method"], e["query"].get("after")) for e in crm.log()] == [
            ("GET", None),
            ("GET", "4"),
            ("GET", "8"),
        ]
        assert {e["query"]["limit"] for e in crm.log()} == {str(PAGE_SIZE)}
