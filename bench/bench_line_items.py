"""Benchmark: what line items cost Housecall Pro in requests (issue 14's request floor).

A benchmark, not a test: it measures and prints. See ``bench/README.md`` ("Issue 14: line
items").

The in-process sandbox (``create_app("bench", seed=N)``, served through ``SyncASGITransport``:
no sockets) is synced with an empty CSV folder, pipeline ``customers, invoices, payments,
line_items``, through ``api.sync``. Three scenarios, each counted from the sandbox's own
request log (``GET /_sandbox/requests``, cleared before each sync):

1. ``initial``        HCP -> empty books, lines included;
2. ``no-change``      the same sync again: must plan nothing;
3. ``lines-changed``  before it (not counted): the first line of ``--changed`` invoiced jobs
   gets a new description through ``PUT /jobs/{id}/line_items/bulk_update`` on the sandbox,
   as a person editing the job would; the sync must update exactly those lines in the books;
4. ``settle``         one more sync: must plan nothing again.

The floor of the line requests is the pass's own pages of the job list (newest first, down
to the read mark: ``ceil((changed + 1) / page_size)``, at least one) plus one ``GET
/jobs/{id}/line_items`` per job whose lines must be read: every invoiced job in the first
(complete) pass, the changed ones after. Printed as requests, against that floor, and per
changed job.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from syncengine.logging import configure

API_KEY = "bench-key"
PAGE_SIZE = 200
ENTITIES = ("customers", "invoices", "payments", "line_items")


def write_config(folder: Path) -> Config:
    listed = ", ".join(f'"{e}"' for e in ENTITIES)
    path = folder / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [state]
            url = "sqlite:///{(folder / "state.db").as_posix()}"

            [connectors.hcp]
            type = "housecallpro"
            base_url = "http://sandbox"
            api_key = "{API_KEY}"
            rate_limit = 0
            page_size = {PAGE_SIZE}

            [connectors.books]
            type = "spreadsheet"
            path = "{(folder / "books").as_posix()}"

            [[pipelines]]
            name = "bench"
            members = ["hcp", "books"]
            entities = [{listed}]

            [pipelines.conflicts]
            default = ["hcp"]
            """
        ),
        encoding="utf-8",
    )
    return load_config(path)


def route(path: str) -> str:
    """``/jobs/abc/line_items`` -> ``/jobs/{id}/line_items``: a request's route."""
    parts = path.strip("/").split("/")
    return "/" + "/".join("{id}" if n % 2 == 1 else p for n, p in enumerate(parts))


def requests_of(http: httpx.Client) -> Counter[str]:
    """``METHOD /route`` -> how many of the sandbox's logged API requests took it."""
    log = http.get("/_sandbox/requests").raise_for_status().json()["requests"]
    return Counter(
        f"{r['method']} {route(r['path'])}" for r in log if not r["path"].startswith("/_sandbox")
    )


def change_lines(http: httpx.Client, job_ids: list[str], wanted: int) -> list[str]:
    """A new description on the first line of ``wanted`` of the jobs, one ``bulk_update`` per
    job, in the order given. A job the sandbox refuses (its lines, totalled again, would leave
    its invoice owing less than its payments hold: 422) is passed over. Returns the jobs
    changed."""
    done: list[str] = []
    for job_id in job_ids:
        if len(done) == wanted:
            break
        lines = http.get(f"/jobs/{job_id}/line_items").raise_for_status().json()["line_items"]
        body = {"line_items": [{"uuid": lines[0]["uuid"], "description": f"bench {len(done)}"}]}
        answer = http.put(f"/jobs/{job_id}/line_items/bulk_update", json=body)
        if answer.status_code == 422:
            continue
        answer.raise_for_status()
        done.append(job_id)
    return done


def planned(result: Any) -> dict[str, dict[str, int]]:
    """entity -> {"books.update": n, ...} of what the sync planned (non-zero only)."""
    out: dict[str, dict[str, int]] = {}
    for entity, counts in result.to_json()["entities"].items():
        mine = {
            f"{m}.{op}": counts[m][op]
            for m in ("hcp", "books")
            for op in ("create", "update", "delete")
            if counts[m][op]
        }
        mine.update({k: counts[k] for k in ("skipped", "errors", "failed") if counts.get(k)})
        if mine:
            out[entity] = mine
    return out


def bench(n: int, changed: int, seed: int) -> dict[str, Any]:
    app = create_app(API_KEY, seed=n)
    state = app.state.sandbox
    http = httpx.Client(
        transport=SyncASGITransport(app),
        base_url="http://sandbox",
        headers={"Authorization": f"Token {API_KEY}"},
    )
    invoiced = sorted({i["job_id"] for i in state.invoices.all() if i.get("job_id")})
    with_lines = [j for j in invoiced if state.lines.of(j)]
    jobs = len(state.jobs)
    print(
        f"seed {n}: {jobs} jobs, {len(invoiced)} behind an invoice "
        f"({len(with_lines)} with lines, {sum(len(state.lines.of(j)) for j in invoiced)} lines)"
    )
    order = random.Random(seed).sample(with_lines, len(with_lines))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-lines-") as tmp:
        config = write_config(Path(tmp))
        extra = {"hcp": {"transport": SyncASGITransport(app)}}

        def scenario(name: str, changed_jobs: int, line_floor: int, wanted: dict[str, Any]) -> None:
            http.delete("/_sandbox/requests").raise_for_status()
            start = time.perf_counter()
            (result,) = api.sync(config, connector_extra=extra)
            seconds = time.perf_counter() - start
            counts = requests_of(http)
            per_job = counts["GET /jobs/{id}/line_items"]
            pages = counts["GET /jobs"]
            lines = per_job + pages + counts["PUT /jobs/{id}/line_items/bulk_update"]
            got = planned(result).get("line_items", {})
            row: dict[str, Any] = {
                "scenario": name,
                "seconds": round(seconds, 2),
                "requests": sum(counts.values()),
                "line_requests": lines,
                "job_list_pages": pages,
                "per_job_lists": per_job,
                "line_floor": line_floor,
                "changed_jobs": changed_jobs,
                "per_changed_job": round(per_job / changed_jobs, 2) if changed_jobs else None,
                "planned": planned(result),
                "ok": got == wanted and result.exit_code == 0,
                "routes": dict(sorted(counts.items())),
            }
            rows.append(row)
            per = f", {row['per_changed_job']} per changed job" if changed_jobs else ""
            print(
                f"{name:14} {seconds:6.2f}s  requests {row['requests']:5}  lines: "
                f"{lines} (job list pages {pages} + per-job lists {per_job}) / floor {line_floor}"
                f"{per}  planned {planned(result) or 'nothing'}  ok={'yes' if row['ok'] else 'NO'}"
            )
            print("               " + " ".join(f"{k}={v}" for k, v in row["routes"].items()))

        total_lines = sum(len(state.lines.of(j)) for j in invoiced)
        scenario("initial", len(invoiced), len(invoiced) + 1, {"books.create": total_lines})
        scenario("no-change", 0, 1, {})
        time.sleep(1.1)  # the edits come a second after the read mark, as a person's would
        chosen = change_lines(http, order, changed)
        pages = max(1, math.ceil((len(chosen) + 1) / PAGE_SIZE))
        scenario("lines-changed", len(chosen), pages + len(chosen), {"books.update": len(chosen)})
        scenario("settle", 0, 1, {})
    http.close()
    return {"seed": n, "jobs": jobs, "invoiced_jobs": len(invoiced), "scenarios": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1000, help="sandbox seed (default 1000)")
    parser.add_argument("--changed", type=int, default=10, help="jobs whose lines change")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    configure("warning")
    print(f"python {platform.python_version()}, {platform.machine()}")
    found = bench(args.customers, args.changed, seed=args.customers)
    if args.out:
        args.out.write_text(json.dumps(found, indent=2), encoding="utf-8")
    return 0 if all(r["ok"] for r in found["scenarios"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
