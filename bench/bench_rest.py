"""Benchmark: a REST CRM (a real json-server 0.17.4) <-> a CSV folder, N customers.

A benchmark, not a test: it measures and prints, never asserts on time. It needs json-server
(``.ci/run`` installs it into ``.ci/node``; otherwise ``testbed/npm.py`` installs it with
npm into ``.cache/node``). Run from the repository root::

    python bench/bench_rest.py --customers 10000

Scenarios, as in ``bench_sync.py``: ``initial`` (N creates in an empty sheet), ``no-change``
(must plan zero), ``1%-change`` (0.5 % of customers patched in json-server and 0.5 % of rows
edited in the sheet, outside the measurement), ``settle`` (must plan zero again). The floor of
each scenario is measured just before it: every page fetched with a bare ``httpx`` client plus
the spreadsheet connector's read of the sheet. Requests are counted at the CRM's transport;
the minimum is the list pages plus one write per record changed in the sheet.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import random
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncengine import api
from syncengine.config import Config, load_config
from testbed import ToolUnavailable
from testbed.http import CountingTransport
from testbed.jsonserver import JsonServer
from testbed.npm import JSON_SERVER, ensure_tool

PAGE = 100
SHARE = 0.005


def customer(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "firstName": f"First{n}",
        "lastName": f"Last{n}",
        "email": f"customer{n}@example.com",
        "phone": f"+1512{n:07d}",
        "company": f"Company {n}",
        "tags": ["residential"],
        "address": {"street": f"{n} Main St", "city": "Austin", "state": "TX", "zip": "78701"},
    }


def write_config(folder: Path, url: str) -> Config:
    path = folder / "config.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [state]
        url = "sqlite:///state.db"

        [connectors.crm]
        type = "rest"
        base_url = "{url}"
        rate_limit = 0
        page_size = {PAGE}

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
    return load_config(path)


def floor(server: JsonServer, config: Config, n: int) -> float:
    started = time.perf_counter()
    got = 0
    with httpx.Client(base_url=server.url) as client:
        for page in range(1, math.ceil(n / PAGE) + 1):
            got += len(client.get("/customers", params={"_page": page, "_limit": PAGE}).json())
    books = config.make_connector("books")
    try:
        sum(1 for _ in books.read("customers"))
    finally:
        books.close()
    return time.perf_counter() - started


def edit_sheet(path: Path, share: float, rng: random.Random, avoid: set[int]) -> int:
    """Edit the Company of ``share`` of the rows, none of a customer changed in the CRM (so
    that every edit is one write to the CRM: the expected plan is exact)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    column, email = header.index("Company"), header.index("Email")
    free = [
        i
        for i, row in enumerate(body)
        if int(row[email].removeprefix("customer").split("@")[0]) not in avoid
    ]
    chosen = rng.sample(free, max(1, round(share * len(body))))
    for i in chosen:
        body[i][column] = f"{body[i][column]} (books)"
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([header, *body])
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    args = parser.parse_args()
    n = args.customers
    try:
        json_server = ensure_tool(JSON_SERVER)
    except ToolUnavailable as exc:
        sys.exit(f"bench_rest: {exc}")
    rng = random.Random(n)
    rows = []
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-rest-") as tmp:
        folder = Path(tmp)
        with JsonServer(
            json_server,
            folder / "crm",
            {"customers": [customer(i) for i in range(1, n + 1)]},
        ) as server:
            config = write_config(folder, server.url)
            floor(server, config, n)  # warm json-server up
            pages = math.ceil(n / PAGE)
            for name in ("initial", "no-change", "1%-change", "settle"):
                sheet_writes = 0
                if name == "1%-change":
                    patched = set(rng.sample(range(1, n + 1), max(1, round(SHARE * n))))
                    with httpx.Client(base_url=server.url) as client:
                        for i in patched:
                            client.patch(f"/customers/{i}", json={"company": f"CRM {i}"})
                    sheet_writes = edit_sheet(
                        folder / "books" / "customers.csv", SHARE, rng, patched
                    )
                floor_s = floor(server, config, n)
                counter = CountingTransport()
                started = time.perf_counter()
                [result] = api.sync(config, connector_extra={"crm": {"transport": counter}})
                took = time.perf_counter() - started
                actions = len(result.plan.actions)
                rows.append(
                    (
                        name,
                        took,
                        floor_s,
                        counter.requests,
                        pages + sheet_writes,
                        counter.writes,
                        actions,
                        result.exit_code,
                    )
                )
    print(f"\nREST CRM (json-server 0.17.4, link paging, {PAGE}/page) <-> CSV, {n} customers")
    print(
        f"{'scenario':<11} {'s':>7} {'floor s':>8} {'ratio':>6} {'records/s':>10} "
        f"{'requests':>9} {'minimum':>8} {'writes':>7} {'actions':>8} exit"
    )
    for name, took, floor_s, requests, minimum, writes, actions, code in rows:
        print(
            f"{name:<11} {took:7.2f} {floor_s:8.2f} {took / floor_s:6.2f} {n / took:10,.0f} "
            f"{requests:9} {minimum:8} {writes:7} {actions:8} {code}"
        )


if __name__ == "__main__":
    main()
