"""Line items through the engine: the HCP sandbox in-process and a memory member for the
books. Lines arrive exactly, a second sync plans nothing and costs HCP one request for them,
a line changed in the books reaches HCP through one ``bulk_update`` for its job (its record,
``uuid`` and all, learnt at the flush), a line added there is created in HCP, and a line
deleted there is a skip: HCP cannot delete one."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.housecallpro.sandbox import SandboxState, SyncASGITransport, create_app
from syncengine.connectors.housecallpro.sandbox_lines import first_invoice
from syncengine.connectors.memory import MemoryConnector
from syncengine.engine import SyncResult
from syncengine.model import line_amount
from tests.helpers import ds, write_config

KEY = "hcp_test_key_0123456789"
LINES = "line_items"


@pytest.fixture(autouse=True)
def fresh_memory() -> Iterator[None]:
    MemoryConnector.reset()
    yield
    MemoryConnector.reset()


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=12, random_seed=9)


def state_of(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


def config(tmp_path: Path) -> Config:
    path = write_config(
        tmp_path,
        f"""
        [state]
        url = "sqlite:///state.db"

        [connectors.hcp]
        type = "housecallpro"
        base_url = "http://sandbox"
        api_key = "{KEY}"
        rate_limit = 0
        page_size = 50

        [connectors.books]
        type = "memory"
        entities = ["customers", "invoices", "line_items"]

        [[pipelines]]
        name = "p"
        members = ["hcp", "books"]
        entities = ["customers", "invoices", "line_items"]
        [pipelines.conflicts]
        default = ["hcp"]
        """,
    )
    return load_config(path)


def sync(cfg: Config, app: Any) -> SyncResult:
    extra = {"hcp": {"transport": SyncASGITransport(app), "sleep": lambda _: None}}
    return api.sync(cfg, connector_extra=extra)[0]


def books() -> dict[str, dict[str, Any]]:
    return ds("books").table(LINES)


def sent(state: SandboxState) -> list[tuple[str, str]]:
    found = [(r["method"], r["path"]) for r in state.requests()]
    state.clear_requests()
    return found


def line_requests(requests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [r for r in requests if "line_items" in r[1] or r == ("GET", "/jobs")]


def hcp_line(state: SandboxState, line_id: str) -> dict[str, Any]:
    for job in state.jobs.all():
        for line in state.lines.of(job["id"]):
            if line["id"] == line_id:
                return line
    raise KeyError(line_id)


def synced(cfg: Config, app: Any) -> tuple[SyncResult, list[tuple[str, str]]]:
    state = state_of(app)
    state.clear_requests()
    result = sync(cfg, app)
    assert not result.failures and not result.error, (result.failures, result.error)
    return result, sent(state)


def test_lines_arrive_exactly_and_a_second_sync_plans_nothing(tmp_path: Path, app: Any) -> None:
    cfg = config(tmp_path)
    state = state_of(app)
    _result, _requests = synced(cfg, app)
    rows = books()
    assert len(rows) == len(state.lines) > 0
    invoices = ds("books").table("invoices")
    numbers = {row["invoice_number"] for row in invoices.values()}
    for row in rows.values():
        assert row["quantity"] == str(Decimal(row["quantity"]))  # canonical text
        assert row["amount"] == line_amount(row["quantity"], row["unit_price"])
    by_job_line = {
        (line["name"], line["unit_price"], line["quantity"]) for line in state.lines.dump()
    }
    assert {(r["name"], r["unit_price"], r["quantity"]) for r in rows.values()} == by_job_line
    assert numbers  # the lines' invoices are in the books too

    result, requests = synced(cfg, app)
    assert not result.plan.actions
    assert line_requests(requests) == [("GET", "/jobs")]  # quiet: one request for the lines


def test_a_line_edited_in_the_books_reaches_hcp_through_one_bulk_update(
    tmp_path: Path, app: Any
) -> None:
    cfg = config(tmp_path)
    state = state_of(app)
    synced(cfg, app)
    job = next(
        j
        for j in state.jobs.all()
        if (i := first_invoice(state, j["id"])) is not None
        and i["status"] not in ("voided", "canceled")
        and state.lines.of(j["id"])
    )
    line = state.lines.of(job["id"])[0]
    row_id, row = next((k, r) for k, r in books().items() if r["name"] == line["name"]
                       and r["unit_price"] == line["unit_price"])  # fmt: skip
    higher = str(Decimal(line["quantity"]) + Decimal("0.75"))
    row["quantity"] = higher
    assert row_id

    _result, requests = synced(cfg, app)
    writes = [r for r in requests if r[0] != "GET"]
    assert writes == [("PUT", f"/jobs/{job['id']}/line_items/bulk_update")]
    assert hcp_line(state, line["id"])["quantity"] == higher

    # HCP computed the new amount: the books take it, and then nothing is left to do
    result, _requests = synced(cfg, app)
    assert row["amount"] == line_amount(higher, line["unit_price"])
    result, requests = synced(cfg, app)
    assert not result.plan.actions
    assert line_requests(requests) == [("GET", "/jobs")]


def test_a_line_added_in_the_books_is_created_in_hcp_and_linked(tmp_path: Path, app: Any) -> None:
    cfg = config(tmp_path)
    state = state_of(app)
    synced(cfg, app)
    invoice_key, invoice = next(
        (k, i) for k, i in ds("books").table("invoices").items() if i["status"] == "draft"
    )
    hcp_invoice = next(
        i for i in state.invoices.all() if i["invoice_number"] == invoice["invoice_number"]
    )
    job_lines = len(state.lines.of(hcp_invoice["job_id"]))
    books()["row-new"] = {"invoice": invoice_key, "name": "Trip charge", "kind": "other",
                          "quantity": "1", "unit_price": 4900, "taxable": False}  # fmt: skip
    _result, requests = synced(cfg, app)
    assert [r for r in requests if r[0] != "GET"] == [
        ("PUT", f"/jobs/{hcp_invoice['job_id']}/line_items/bulk_update")
    ]
    lines = state.lines.of(hcp_invoice["job_id"])
    assert len(lines) == job_lines + 1 and lines[-1]["name"] == "Trip charge"
    result, _requests = synced(cfg, app)  # HCP's position and amount come back
    assert books()["row-new"]["position"] == job_lines + 1
    result, _requests = synced(cfg, app)
    assert not result.plan.actions


def test_a_line_deleted_in_the_books_is_skipped_for_hcp(tmp_path: Path, app: Any) -> None:
    cfg = config(tmp_path)
    state = state_of(app)
    synced(cfg, app)
    row_id = next(iter(books()))
    before = len(state.lines)
    del books()[row_id]
    result = sync(cfg, app)
    assert len(state.lines) == before
    skips = [s for ep in result.plan.entities for kp in ep.keys for s in kp.skips]
    assert any("delete" in s.reason for s in skips), skips
