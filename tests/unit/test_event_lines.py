"""A job event in an event-driven run brings the job's changed lines (HCP keeps line items
on jobs and sends no event of its own for them): they are read as any run reads them, one
request for the job list's first page and one for the changed job's lines, and reach the
books; nothing else of HCP is listed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from syncengine.connectors.memory import MemoryConnector
from syncengine.engine import Engine
from tests.helpers import ds, write_config

KEY = "hcp_event_lines_key_0123"


@pytest.fixture(autouse=True)
def fresh_memory() -> Iterator[None]:
    MemoryConnector.reset()
    yield
    MemoryConnector.reset()


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
        incremental = ["customers", "jobs", "invoices"]

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


def test_a_job_event_brings_its_lines_in_an_event_driven_run(tmp_path: Path) -> None:
    app = create_app(KEY, seed=12, random_seed=9)
    state = app.state.sandbox
    extra: dict[str, dict[str, Any]] = {
        "hcp": {"transport": SyncASGITransport(app), "sleep": lambda _: None}
    }
    cfg = config(tmp_path)
    first = api.sync(cfg, connector_extra=extra)[0]
    assert first.exit_code == 0, first.error
    job = next(j for j in state.jobs.all() if state.lines.of(j["id"]))
    hcp = httpx.Client(
        transport=SyncASGITransport(app),
        base_url="http://sandbox",
        headers={"Authorization": f"Token {KEY}"},
    )
    line = hcp.get(f"/jobs/{job['id']}/line_items").json()["line_items"][0]
    hcp.put(
        f"/jobs/{job['id']}/line_items/bulk_update",
        json={"line_items": [{"uuid": line["uuid"], "quantity": 7}]},
    ).raise_for_status()
    body = {"event": "job.updated", "job": hcp.get(f"/jobs/{job['id']}").json()}
    store = api.open_store(cfg)
    try:
        with store.transaction() as tx:
            tx.store_event(
                connector="hcp",
                digest="job-1",
                event="job.updated",
                entities=["jobs", "line_items"],
                record_id=job["id"],
                payload=json.loads(json.dumps(body)),
                occurred_at=None,
            )
        state.clear_requests()
        result = Engine(cfg, store, connector_extra=extra, event_driven=True).sync(
            cfg.pipelines["p"]
        )
    finally:
        store.close()

    assert result.exit_code == 0, result.error
    assert [o.plan.entity for o in result.outcomes] == ["line_items"]
    asked = [(r["method"], r["path"]) for r in state.requests()]
    assert ("GET", f"/jobs/{job['id']}/line_items") in asked
    # the lines' own read: the job list's first page, the newest invoices' first page (whose
    # first invoice a job's lines belong to), the changed job's lines; nothing else listed
    assert ("GET", "/customers") not in asked and len(asked) <= 3, asked
    books = [r for r in ds("books").table("line_items").values() if r["name"] == line["name"]]
    assert any(r["quantity"] == "7" for r in books), books
