"""Housecall Pro contract tests for line items: the connector and the sandbox through Prism's
validating proxy (see ``test_hcp_contract.py`` for how).

What the spec declares for line items, and so what Prism checks with it as it is: the paths
``GET`` and ``POST /jobs/{job_id}/line_items`` (path parameter, security), and nothing of
their bodies: no response schema, no request body (Prism then refuses *any* body of the
``POST``, as it does for ``PUT /jobs/{id}``). ``PUT /jobs/{job_id}/line_items/bulk_update``,
which the live API has (``HCP-REAL-API-NOTES.md``), is not in the spec at all: Prism answers
it 404 itself. Tests pin both findings.

So the bodies are checked by a second Prism that runs a *completed* copy of the spec: the
same document with ``LineItem`` (the fields the notes list: ``uuid``, ``name``,
``description``, ``kind``, ``quantity`` a number, ``unit_price`` and ``unit_cost`` integer
cents, ``taxable``, ``service_item_id``, ``service_item_type``, nothing else, nothing null)
declared as the list's items and the ``POST`` body, and the ``bulk_update`` path with
``{"line_items": [LineItem]}`` as body and answer. Through it the connector reads lines
and writes them with one ``bulk_update`` per job, and nothing is flagged; negative controls
show that it does validate (a quantity as text, cents as a decimal, a key the API does not
know, a null).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.housecallpro import HousecallProConnector
from syncengine.errors import SyncEngineError
from testbed.processes import ServerProcess
from tests.contract.conftest import start_prism_proxy
from tests.tools import RecordingTransport

pytestmark = pytest.mark.contract

PAGE_SIZE = 5
LINES = "line_items"

_LINE_ITEM = """    LineItem:
      type: object
      additionalProperties: false
      properties:
        uuid: { type: string }
        name: { type: string }
        description: { type: string }
        kind: { type: string }
        quantity: { type: number }
        unit_price: { type: integer, description: Amount in cents. }
        unit_cost: { type: integer, description: Amount in cents. }
        taxable: { type: boolean }
        service_item_id: { type: string }
        service_item_type: { type: string }
    LineItemList:
      type: object
      required: [line_items]
      properties:
        line_items:
          type: array
          items: { $ref: '#/components/schemas/LineItem' }
"""
_LIST = """      responses:
        '200':
          description: Line item collection.
          content:
            application/json:
              schema:
                type: object
                required: [line_items]
                properties:
                  line_items:
                    type: array
                    items: { $ref: '#/components/schemas/LineItem' }
                  page: { type: integer }
                  page_size: { type: integer }
                  total_pages: { type: integer }
                  total_items: { type: integer }
"""
_CREATE = """      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/LineItem' }
      responses:
        '201':
          description: Line item created.
          content:
            application/json:
              schema: { $ref: '#/components/schemas/LineItem' }
"""
_BULK = """  /jobs/{job_id}/line_items/bulk_update:
    put:
      tags: [Line Items]
      summary: Bulk Update Job Line Items
      operationId: bulkUpdateJobLineItems
      parameters:
        - { name: job_id, in: path, required: true, schema: { type: string } }
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/LineItemList' }
      responses:
        '200':
          description: The job's line items.
          content:
            application/json:
              schema: { $ref: '#/components/schemas/LineItemList' }
"""
_LIST_ANCHOR = """      operationId: listJobLineItems
      parameters:
        - { name: job_id, in: path, required: true, schema: { type: string } }
      responses:
        '200': { description: Line item collection. }
"""
_CREATE_ANCHOR = """      operationId: createJobLineItem
      parameters:
        - { name: job_id, in: path, required: true, schema: { type: string } }
      responses:
        '201': { description: Line item created. }
"""
_PATHS_ANCHOR = "  /jobs/{job_id}/appointments:\n"
_SCHEMAS_ANCHOR = "    Job:\n"


def complete(text: str) -> str:
    """The spec with line items' bodies declared (see the module docstring)."""
    for anchor in (_LIST_ANCHOR, _CREATE_ANCHOR, _PATHS_ANCHOR, _SCHEMAS_ANCHOR):
        assert text.count(anchor) == 1, f"the spec changed around {anchor!r}: update the test"
    list_head = _LIST_ANCHOR.split("      responses:")[0]
    create_head = _CREATE_ANCHOR.split("      responses:")[0]
    text = text.replace(_LIST_ANCHOR, list_head + _LIST)
    text = text.replace(_CREATE_ANCHOR, create_head + _CREATE)
    text = text.replace(_PATHS_ANCHOR, _BULK + _PATHS_ANCHOR)
    return text.replace(_SCHEMAS_ANCHOR, _LINE_ITEM + _SCHEMAS_ANCHOR)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def lines_spec(hcp_openapi_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "housecallpro-openapi-line-items.yaml"
    path.write_text(complete(hcp_openapi_spec.read_text(encoding="utf-8")), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lines_proxy(
    prism_bin: str, lines_spec: Path, hcp_sandbox_process: ServerProcess
) -> Iterator[ServerProcess]:
    with start_prism_proxy(prism_bin, lines_spec, hcp_sandbox_process.url) as server:
        yield server


def make_connector(url: str, key: str, recorder: RecordingTransport) -> HousecallProConnector:
    options = HousecallProConnector.Options.model_validate(
        {"type": "housecallpro", "base_url": url, "api_key": key, "rate_limit": 0,
         "page_size": PAGE_SIZE, "max_retries": 0, "concurrency": 2}
    )  # fmt: skip
    context = ConnectorContext(name="hcp", extra={"transport": recorder, "sleep": lambda _: None})
    return HousecallProConnector(options, context)


@pytest.fixture
def connector(
    lines_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[HousecallProConnector]:
    conn = make_connector(lines_proxy.url, hcp_api_key, prism_recorder)
    yield conn
    conn.close()


@pytest.fixture
def api(
    hcp_prism_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
) -> Iterator[httpx.Client]:
    """A client through Prism running the spec as it is."""
    with httpx.Client(
        base_url=hcp_prism_proxy.url,
        transport=prism_recorder,
        headers={"Authorization": f"Token {hcp_api_key}"},
        timeout=30,
    ) as client:
        yield client


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


def assert_prism_found_nothing(recorder: RecordingTransport) -> None:
    assert recorder.exchanges, "no request went through Prism"
    assert not recorder.flagged(), f"Prism flagged:\n{recorder.report()}"


def every(client: httpx.Client, path: str, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        body = client.get(path, params={"page_size": 200, "page": page}).json()
        found.extend(body[key])
        if page >= body["total_pages"]:
            return found
        page += 1


def open_invoice(direct: httpx.Client) -> dict[str, Any]:
    """A seeded invoice (not voided or canceled) whose job has lines."""
    for invoice in every(direct, "/invoices", "invoices"):
        if invoice["status"] in ("voided", "canceled"):
            continue
        lines = direct.get(f"/jobs/{invoice['job_id']}/line_items").json()[LINES]
        if lines:
            return invoice
    raise AssertionError("no invoiced job with lines in the seed")


# ------------------------------------------------------------------------ the spec as it is


def test_the_spec_has_no_bulk_update_and_no_body_for_a_new_line(
    api: httpx.Client, hcp_direct: httpx.Client
) -> None:
    """What the completed spec works around: Prism answers ``bulk_update`` itself (an
    undeclared path) and refuses every body of ``POST /jobs/{id}/line_items``; nothing
    reaches the sandbox."""
    job_id = open_invoice(hcp_direct)["job_id"]
    hcp_direct.delete("/_sandbox/requests")
    bulk = api.put(f"/jobs/{job_id}/line_items/bulk_update", json={LINES: []})
    assert bulk.status_code == 404
    assert "NO_PATH_MATCHED" in bulk.json()["type"]
    create = api.post(f"/jobs/{job_id}/line_items", json={"name": "Trip", "quantity": 1})
    assert create.status_code == 422
    [finding] = create.json()["validation"]
    assert finding["code"] == 415
    assert hcp_direct.get("/_sandbox/requests").json()["requests"] == []


def test_the_list_path_is_declared_and_passes_as_it_is(
    api: httpx.Client, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    job_id = open_invoice(hcp_direct)["job_id"]
    response = api.get(f"/jobs/{job_id}/line_items", params={"page": 1, "page_size": 50})
    assert response.status_code == 200 and response.json()[LINES]
    assert_prism_found_nothing(prism_recorder)


# ------------------------------------------------------------------------ the completed spec


def test_the_connector_reads_lines_within_the_contract(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    with through_prism(prism_recorder):
        list(connector.read("invoices"))
        prism_recorder.clear()
        records = list(connector.read(LINES))
    assert records
    paths = {e.path for e in prism_recorder.exchanges}
    assert all(p.startswith("/jobs/") and p.endswith("/line_items") for p in paths)
    assert_prism_found_nothing(prism_recorder)


def test_the_connector_writes_one_bulk_update_per_job_within_the_contract(
    connector: HousecallProConnector, prism_recorder: RecordingTransport, hcp_direct: httpx.Client
) -> None:
    invoice = open_invoice(hcp_direct)
    job_id = invoice["job_id"]
    with through_prism(prism_recorder):
        list(connector.read("invoices"))
        lines = [r for r in connector.read(LINES) if r.data["job_id"] == job_id]
        prism_recorder.clear()
        first = lines[0]
        full = {**first.data, "unit_price": first.data["unit_price"] + 250,
                "description": None, "quantity": 2.75}  # fmt: skip
        changed = connector.update(LINES, first.id, {"unit_price": full["unit_price"]}, full=full)
        created = connector.create(
            LINES,
            {"invoice_id": invoice["id"], "name": "Contract part", "kind": "materials",
             "quantity": 0.5, "unit_price": 1999, "unit_cost": 1200, "taxable": True},
            key="contract-line",
        )  # fmt: skip
        connector.flush(LINES)
        made = connector.flushed(LINES, created)
        connector.flushed(LINES, changed)

    methods = [(e.method, e.path) for e in prism_recorder.exchanges]
    assert methods == [
        ("GET", f"/jobs/{job_id}/line_items"),
        ("PUT", f"/jobs/{job_id}/line_items/bulk_update"),
    ]
    body = json.loads(prism_recorder.exchanges[1].request_body)
    sent = body[LINES]
    assert [line.get("uuid") for line in sent[:-1]] == [line.id for line in lines]
    assert "uuid" not in sent[-1] and sent[-1]["quantity"] == 0.5
    assert all(set(line) <= {"uuid", "name", "description", "kind", "quantity", "unit_price",
                             "unit_cost", "taxable", "service_item_id", "service_item_type"}
               for line in sent)  # fmt: skip
    assert sent[0]["description"] == "" and sent[0]["quantity"] == 2.75
    stored = hcp_direct.get(f"/jobs/{job_id}/line_items", params={"page_size": 50}).json()
    assert stored[LINES][-1]["uuid"] == made.id
    assert_prism_found_nothing(prism_recorder)


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({LINES: [{"name": "x", "quantity": "1.5"}]}, ["body", LINES, "0", "quantity"]),
        ({LINES: [{"name": "x", "unit_price": 12.5}]}, ["body", LINES, "0", "unit_price"]),
        ({LINES: [{"name": "x", "amount": 100}]}, ["body", LINES, "0"]),
        ({LINES: [{"name": "x", "description": None}]}, ["body", LINES, "0", "description"]),
        ({"lines": []}, ["body"]),
    ],
)
def test_the_completed_spec_still_validates(
    lines_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
    body: dict[str, Any],
    location: list[str],
) -> None:
    """Negative controls: a body the connector never sends is refused, so the clean runs
    above mean something; nothing reaches the sandbox."""
    job_id = open_invoice(hcp_direct)["job_id"]
    hcp_direct.delete("/_sandbox/requests")
    with httpx.Client(base_url=lines_proxy.url, transport=prism_recorder,
                      headers={"Authorization": f"Token {hcp_api_key}"}) as client:  # fmt: skip
        response = client.put(f"/jobs/{job_id}/line_items/bulk_update", json=body)
    assert response.status_code == 422, response.text
    found = [v.get("location", []) for v in response.json().get("validation", [])]
    assert any(loc[: len(location)] == location for loc in found), found
    assert hcp_direct.get("/_sandbox/requests").json()["requests"] == []


def test_the_sandbox_answers_within_the_completed_spec(
    lines_proxy: ServerProcess,
    hcp_sandbox: ServerProcess,
    hcp_api_key: str,
    prism_recorder: RecordingTransport,
    hcp_direct: httpx.Client,
) -> None:
    job_id = open_invoice(hcp_direct)["job_id"]
    with httpx.Client(base_url=lines_proxy.url, transport=prism_recorder,
                      headers={"Authorization": f"Token {hcp_api_key}"}) as client:  # fmt: skip
        listed = client.get(f"/jobs/{job_id}/line_items")
        created = client.post(
            f"/jobs/{job_id}/line_items", json={"name": "Filter", "quantity": 2, "unit_price": 800}
        )
        bulk = client.put(
            f"/jobs/{job_id}/line_items/bulk_update",
            json={LINES: [{"uuid": created.json()["uuid"], "quantity": 1.25}]},
        )
    assert (listed.status_code, created.status_code, bulk.status_code) == (200, 201, 200)
    assert_prism_found_nothing(prism_recorder)
