"""10,000 customers in a real json-server 0.17.4, read by the rest connector.

What is asserted is what must hold at any speed: every record once, and no request beyond
the list calls paging needs (``ceil(N / page_size)`` for the styles that know where the list
ends, one more for those that learn it from an empty page), none of them a write. Times are
measured and printed (``pytest -s``), never asserted: the floor is the same pages fetched with
a bare ``httpx.Client`` and ``json.loads``.
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine import api
from syncengine.config import load_config
from syncengine.connector import ConnectorContext
from syncengine.connectors.rest import RestConnector, RestOptions
from testbed.http import CountingTransport
from testbed.jsonserver import JsonServer
from tests.jsonserver import ensure_json_server, json_server_options

pytestmark = pytest.mark.integration

N = 10_000


def customer(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "firstName": f"First{n}",
        "lastName": f"Last{n}",
        "email": f"customer{n}@example.com",
        "phone": f"+1512555{n % 10_000:04d}",
        "company": f"Company {n}",
        "tags": ["residential"],
        "address": {"street": f"{n} Main St", "city": "Austin", "state": "TX", "zip": "78701"},
    }


@pytest.fixture(scope="module")
def big_crm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JsonServer]:
    folder = tmp_path_factory.mktemp("big-crm")
    with JsonServer(
        ensure_json_server(), folder, {"customers": [customer(n) for n in range(1, N + 1)]}
    ) as server:
        floor_read(server, 1000)  # warm the server up (Node compiles its hot paths)
        yield server


def floor_read(server: JsonServer, size: int) -> float:
    """Seconds to fetch every page with a bare client: the cost of the server and HTTP."""
    started = time.perf_counter()
    got = 0
    with httpx.Client(base_url=server.url) as client:
        for page in range(1, math.ceil(N / size) + 1):
            got += len(client.get("/customers", params={"_page": page, "_limit": size}).json())
    assert got == N
    return time.perf_counter() - started


@pytest.mark.parametrize(
    ("style", "size", "extra"),
    [
        ("link", 100, 0),
        ("total_count", 100, 0),
        ("link", 1000, 0),
        ("offset", 1000, 1),
        ("page", 1000, 1),
    ],
)
def test_reading_10k_customers_makes_only_the_list_calls_paging_needs(
    big_crm: JsonServer, style: str, size: int, extra: int
) -> None:
    floor = floor_read(big_crm, size)
    counter = CountingTransport()
    conn = RestConnector(
        RestOptions.model_validate(json_server_options(big_crm.url, style=style, page_size=size)),
        ConnectorContext("crm", extra={"transport": counter}),
    )
    started = time.perf_counter()
    try:
        ids = [r.id for r in conn.read("customers")]
    finally:
        conn.close()
    took = time.perf_counter() - started
    minimum = math.ceil(N / size)
    assert len(ids) == N and len(set(ids)) == N
    assert counter.requests == minimum + extra
    assert counter.writes == 0
    print(
        f"\nrest read {N} via {style}/{size}: {counter.requests} requests (minimum "
        f"{minimum}), {took:.2f}s = {N / took:,.0f} records/s; floor {floor:.2f}s = "
        f"{N / floor:,.0f} records/s; ratio {took / floor:.2f}"
    )


def test_a_sheet_synced_with_10k_crm_customers_then_a_quiet_resync(
    big_crm: JsonServer, tmp_path: Path
) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        textwrap.dedent(f"""\
        [state]
        url = "sqlite:///state.db"

        [connectors.crm]
        type = "rest"
        base_url = "{big_crm.url}"
        rate_limit = 0
        page_size = 100

        [connectors.crm.entities.customers]
        path = "/customers"
        pagination = {{ style = "link", page_param = "_page", size_param = "_limit" }}

        [connectors.books]
        type = "spreadsheet"
        path = "books"

        [[pipelines]]
        name = "crm-books"
        members = ["crm", "books"]

        [pipelines.conflicts]
        default = ["crm"]
        """),
        encoding="utf-8",
    )
    config = load_config(config_path)
    db = big_crm.db_bytes()
    for label, creates in (("initial", N), ("no-change", 0)):
        counter = CountingTransport()
        started = time.perf_counter()
        [result] = api.sync(config, connector_extra={"crm": {"transport": counter}})
        took = time.perf_counter() - started
        assert result.exit_code == 0
        applied = {m: sum(ops.values()) for o in result.outcomes for m, ops in o.applied.items()}
        assert applied.get("books", 0) == creates and applied.get("crm", 0) == 0
        assert counter.requests == N // 100 and counter.writes == 0
        print(
            f"\nsync crm(json-server {N}) <-> books, {label}: {counter.requests} requests "
            f"to the CRM (minimum {N // 100}), {took:.2f}s = {N / took:,.0f} records/s"
        )
    assert big_crm.db_bytes() == db
