"""The requests of Housecall Pro's incremental reads against the OpenAPI document: Prism 5
(``prism proxy --errors``) in front of the sandbox checks every one of them, and every
response, while the connector reads customers, jobs, invoices and payments completely, then
partially.

The spec declares ``page`` and ``page_size`` for ``/customers`` and ``/jobs`` and no query
parameter for ``/invoices``; ``sort_by`` and ``sort_direction`` (which the live API has:
``spec/HCP-REAL-API-NOTES.md``) are not declared anywhere, and Prism forwards them. What the
spec does not say is left to the sandbox, which refuses a ``sort_by`` the live API does not
take: a read that succeeds here sends nothing either of them refuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.errors import SyncEngineError
from testbed.processes import ServerProcess
from tests.tools import RecordingTransport

pytestmark = pytest.mark.contract

PAGE_SIZE = 4
LISTED = ("customers", "jobs", "invoices")


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


@pytest.fixture
def connector(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[HousecallProConnector]:
    options = HousecallProOptions(
        base_url=hcp_prism_proxy.url,
        api_key=hcp_api_key,
        rate_limit=0,
        page_size=PAGE_SIZE,
        max_retries=0,
        incremental=list(LISTED),
    )
    context = ConnectorContext(
        name="hcp", extra={"transport": prism_recorder, "sleep": lambda _seconds: None}
    )
    conn = HousecallProConnector(options, context)
    yield conn
    conn.close()


def test_complete_then_partial_passes_keep_the_contract(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    tokens: dict[str, str | None] = {}
    with through_prism(prism_recorder):
        for entity in (*LISTED, "payments"):
            rp = connector.read_incremental(entity, None)
            assert rp is not None and rp.complete
            assert list(rp.records), entity
            tokens[entity] = rp.token()
        customer = hcp_direct.get("/customers", params={"page_size": 1}).json()["customers"][0]
        edited = hcp_direct.put(f"/customers/{customer['id']}", json={"company": "Contract"})
        edited.raise_for_status()
        prism_recorder.clear()
        for entity in (*LISTED, "payments"):
            rp = connector.read_incremental(entity, tokens[entity])
            assert rp is not None and not rp.complete
            records = list(rp.records)
            if entity == "customers":
                assert records[0].id == customer["id"]

    newest_first = [
        e
        for e in prism_recorder.exchanges
        if parse_qs(e.url.query.decode()).get("sort_by") == ["updated_at"]
    ]
    assert sorted({e.path for e in newest_first}) == ["/customers", "/invoices", "/jobs"]
    for exchange in newest_first:
        query = parse_qs(exchange.url.query.decode())
        assert query["sort_direction"] == ["desc"]
        assert query["page"] == ["1"] and query["page_size"] == [str(PAGE_SIZE)]
    assert prism_recorder.exchanges
    assert not prism_recorder.flagged(), f"Prism flagged:\n{prism_recorder.report()}"
