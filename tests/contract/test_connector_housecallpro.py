"""The connector contract for Housecall Pro, against the in-process sandbox.

Every connector instance talks to the same sandbox app through its own
``SyncASGITransport``, so ``reopen`` is a new client over the same server-side data. The
page size is small so that the bulk test spans several pages.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import pytest
from starlette.applications import Starlette

from syncengine.connector import Connector, ConnectorContext, NativeData
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from tests.contract.connector_suite import (
    Change,
    ConnectorContract,
    Reopen,
    Sample,
    key,
)

KEY = "hcp_contract_key_0123456789"
PAGE_SIZE = 4


def hcp(app: Starlette, name: str = "hcp") -> HousecallProConnector:
    options = HousecallProOptions(
        type="housecallpro",
        api_key=KEY,
        base_url="http://sandbox",
        delete_customers=True,
        rate_limit=0,
        page_size=PAGE_SIZE,
    )
    return HousecallProConnector(
        options, ConnectorContext(name=name, extra={"transport": SyncASGITransport(app)})
    )


class TestHousecallProConnector(ConnectorContract):
    volatile_fields: ClassVar[frozenset[str]] = frozenset({"updated_at"})
    missing_id: ClassVar[str] = "cus_00000000000000000000000000000000"
    many: ClassVar[int] = 25  # 7 pages of PAGE_SIZE

    @pytest.fixture
    def app(self) -> Starlette:
        return create_app(KEY, seed=None)

    @pytest.fixture
    def opened(self) -> Iterator[list[Connector]]:
        conns: list[Connector] = []
        yield conns
        for conn in conns:
            conn.close()

    @pytest.fixture
    def connector(self, app: Starlette, opened: list[Connector]) -> Connector:
        conn = hcp(app)
        opened.append(conn)
        return conn

    @pytest.fixture
    def sample(self) -> Sample:
        def make(n: int) -> NativeData:
            return {
                "first_name": f"Ada{n}",
                "last_name": f"Lovelace-{n}",
                "email": f"ada.{n}@example.com",
                "mobile_number": f"555{n:07d}",
                "company": f"Engines {n}, Ltd.",
                "tags": ["vip", f"t{n}"],
            }

        return make

    @pytest.fixture
    def change(self) -> Change:
        def patch(data: NativeData) -> NativeData:
            return {"last_name": f"{data['last_name']} (renamed)"}

        return patch

    @pytest.fixture
    def reopen(self, app: Starlette, opened: list[Connector]) -> Reopen:
        def again(conn: Connector) -> Connector:
            assert isinstance(conn, HousecallProConnector)
            other = hcp(app, "hcp-reopened")
            opened.append(other)
            return other

        return again

    # -------------------------------------------------------------------- HCP-specific

    def test_bulk_read_makes_only_the_list_calls_paging_needs(
        self, app: Starlette, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        for n in range(1, self.many + 1):
            connector.create(self.entity, sample(n), key=key(n))
        state = app.state.sandbox
        state.clear_requests()
        assert len(list(reopen(connector).read(self.entity))) == self.many
        requests = state.requests()
        assert [(r["method"], r["path"]) for r in requests] == [("GET", "/customers")] * (
            math.ceil(self.many / PAGE_SIZE)
        )
