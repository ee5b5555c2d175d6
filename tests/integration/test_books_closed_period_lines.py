"""Line items in a closed period, end to end through the ``syncengine`` command and a sandbox.

A line has no date of its own: it is in its invoice's period. The books (a CSV folder, or a
workbook) are synced with a seeded Housecall Pro sandbox, lines included; then the bookkeeper
closes them before a day in the middle of the invoices. In HCP a line of a job billed by an
invoice dated before the lock and a line of one dated after it are changed (``bulk_update``,
as the web app does). The sync writes the open line only: the closed invoice's rows stay as
they were, byte for byte in ``line_items.csv`` and value for value in the ``Line Items``
sheet; ``status`` lists the skipped line with the reason ``period closed on books``, and a
second sync plans and reports nothing while the skip stays listed.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.books import (
    Hcp,
    assert_nothing_planned,
    books_config,
    day_of,
    read_xlsx_rows,
)
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
SEED = 16
REASON = "period closed on books"
ENTITIES = '["customers", "invoices", "payments", "line_items"]'
SHEET = "Line Items"


def config_of(folder: Path, port: int, lock: str | None, books: str = "books") -> Path:
    extra = f'[pipelines.locks]\nbooks = "{lock}"\n' if lock else ""
    config = books_config(folder, port, path=books, pipeline_extra=extra)
    text = config.read_text(encoding="utf-8")
    old = 'entities = ["customers", "invoices", "payments"]'
    assert text.count(old) == 1
    config.write_text(text.replace(old, f"entities = {ENTITIES}"), encoding="utf-8")
    return config


def sync(cli: Cli, config: Path) -> dict[str, Any]:
    run = cli("sync", "--config", config, "--json")
    assert_clean_exit(run, 0)
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def rows_of(books: Path, number: str) -> list[Any]:
    """The rows under invoice ``number`` as stored: a CSV row's bytes (its line), a workbook
    row's cell values."""
    if books.suffix == ".xlsx":
        rows = read_xlsx_rows(books, SHEET).filled()
        return [tuple(r.items()) for r in rows if str(r["Invoice #"]) == number]
    lines = (books / "line_items.csv").read_bytes().splitlines(keepends=True)
    header = next(csv.reader([lines[0].decode("utf-8-sig")]))
    out = []
    for line in lines[1:]:
        (cells,) = list(csv.reader([line.decode("utf-8")]))
        if dict(zip(header, cells, strict=False)).get("Invoice #") == number:
            out.append(line)
    return out


def descriptions(books: Path, number: str) -> list[str]:
    if books.suffix == ".xlsx":
        rows = read_xlsx_rows(books, SHEET).filled()
        return [str(r["Description"]) for r in rows if str(r["Invoice #"]) == number]
    with (books / "line_items.csv").open(encoding="utf-8-sig", newline="") as f:
        return [r["Description"] for r in csv.DictReader(f) if r["Invoice #"] == number]


def skipped_of(cli: Cli, config: Path) -> list[tuple[str, str, str]]:
    status = cli("status", "--config", config, "--json")
    assert_clean_exit(status, 0)
    (pipeline,) = json.loads(status.stdout)
    return sorted((s["entity"], s["member"], s["reason"]) for s in pipeline["skipped"])


def describe_first_line(hcp: Hcp, job_id: str, text: str) -> None:
    """``PUT /jobs/{job_id}/line_items/bulk_update``: a person edits a line in HCP."""
    lines = hcp.http.get(f"/jobs/{job_id}/line_items").raise_for_status().json()["line_items"]
    body = {"line_items": [{"uuid": lines[0]["uuid"], "description": text}]}
    response = hcp.http.put(f"/jobs/{job_id}/line_items/bulk_update", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_a_line_of_a_closed_invoice_changed_in_hcp_stays_out_of_the_books(
    kind: str, tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=SEED)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    books = folder / ("books.xlsx" if kind == "xlsx" else "books")
    sync(cli, config_of(folder, box.port, None, books.name))

    # the jobs whose lines the books hold, by the invoice (the job's first) they sit under
    billed = sorted(
        (i for i in hcp.invoices() if i.get("job_id")), key=lambda i: (i["created_at"], i["id"])
    )
    firsts: dict[str, dict[str, Any]] = {}
    for invoice in billed:
        firsts.setdefault(invoice["job_id"], invoice)
    with_lines = [i for i in firsts.values() if rows_of(books, i["invoice_number"])]
    with_lines.sort(key=lambda i: i["created_at"])
    lock = day_of(with_lines[len(with_lines) // 2]["created_at"])
    closed = next(i for i in with_lines if day_of(i["created_at"]) < lock)
    still_open = next(i for i in with_lines if day_of(i["created_at"]) >= lock)
    config = config_of(folder, box.port, lock.isoformat(), books.name)

    closed_rows = rows_of(books, closed["invoice_number"])
    describe_first_line(hcp, closed["job_id"], "re-described after the close")
    describe_first_line(hcp, still_open["job_id"], "re-described in the open period")

    result = sync(cli, config)
    counts = result["entities"]["line_items"]
    assert counts["books"]["update"] == 1, result
    assert counts["skipped"] == 1, result
    assert rows_of(books, closed["invoice_number"]) == closed_rows  # bytes, or cell values
    assert descriptions(books, still_open["invoice_number"])[0] == (
        "re-described in the open period"
    )
    assert skipped_of(cli, config) == [("line_items", "books", REASON)]

    for _ in range(2):  # a second sync (and a third) plans nothing; the skip stays listed
        assert_nothing_planned(sync(cli, config))
        assert skipped_of(cli, config) == [("line_items", "books", REASON)]
    assert rows_of(books, closed["invoice_number"]) == closed_rows

    # opened again: the change goes through
    opened = config_of(folder, box.port, (lock - dt.timedelta(days=3650)).isoformat(), books.name)
    assert sync(cli, opened)["entities"]["line_items"]["books"]["update"] == 1
    assert descriptions(books, closed["invoice_number"])[0] == "re-described after the close"
    assert skipped_of(cli, opened) == []
