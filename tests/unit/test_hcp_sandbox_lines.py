"""The HCP sandbox's line items: seeded so that each invoiced job's lines are its first
invoice's subtotal (so a job billed once totals its lines plus tax), served at
``GET/POST /jobs/{id}/line_items`` and ``PUT /jobs/{id}/line_items/bulk_update``, and the totals
kept when lines change (``sandbox_lines``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.connectors.housecallpro.sandbox import (
    SandboxState,
    SyncASGITransport,
    create_app,
    generate_data,
)
from syncengine.connectors.housecallpro.sandbox_lines import first_invoice, line_totals
from syncengine.connectors.housecallpro.sandbox_records import INVOICE_CLOSED
from syncengine.model import line_amount

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=30, random_seed=7)


@pytest.fixture
def client(app: Any) -> Iterator[httpx.Client]:
    with httpx.Client(
        transport=SyncASGITransport(app), base_url="http://sandbox", headers=AUTH
    ) as c:
        yield c


def state_of(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


def billed_job(app: Any, *, closed: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """A seeded job with lines and its first invoice (open, or voided/canceled)."""
    state = state_of(app)
    for job in state.jobs.all():
        invoice = first_invoice(state, job["id"])
        if invoice is None or not state.lines.of(job["id"]):
            continue
        if (invoice["status"] in INVOICE_CLOSED) == closed and (
            closed or invoice["outstanding_balance"] > 0
        ):
            return job, invoice
    raise AssertionError("no such job in the seed")


def amount_of(line: dict[str, Any]) -> int:
    return line_amount(Decimal(repr(line["quantity"])), line["unit_price"])


# ------------------------------------------------------------------------------ the seed


def test_each_invoiced_jobs_lines_add_up_to_its_first_invoices_subtotal() -> None:
    data = generate_data(300, random_seed=5)
    by_job: dict[str, list[dict[str, Any]]] = {}
    for line in data["line_items"]:
        by_job.setdefault(line["job_id"], []).append(line)
    first: dict[str, dict[str, Any]] = {}
    for invoice in sorted(data["invoices"], key=lambda i: (i["created_at"], i["id"])):
        first.setdefault(invoice["job_id"], invoice)
    assert set(by_job) == set(first)
    kinds = set()
    fractional = 0
    for job_id, lines in by_job.items():
        total = sum(line_amount(line["quantity"], line["unit_price"]) for line in lines)
        assert total == first[job_id]["subtotal"]
        assert [line["position"] for line in lines] == list(range(1, len(lines) + 1))
        kinds.update(line["kind"] for line in lines)
        fractional += sum("." in line["quantity"] for line in lines)
    assert kinds == {"labor", "materials", "discount"}
    assert fractional > 0  # 1.5 hours, 2.25 feet: exact quantities are exercised


def test_a_job_billed_once_totals_its_lines_plus_tax(client: httpx.Client, app: Any) -> None:
    state = state_of(app)
    checked = 0
    for job in state.jobs.all():
        invoices = state.invoices.lookup("job_id", job["id"])
        if len(invoices) != 1 or invoices[0]["status"] in INVOICE_CLOSED:
            continue
        lines = client.get(f"/jobs/{job['id']}/line_items", params={"page_size": 200}).json()
        shown = client.get(f"/jobs/{job['id']}").json()
        subtotal = sum(amount_of(line) for line in lines["line_items"])
        assert shown["total_amount"] == subtotal + invoices[0]["tax_amount"]
        checked += 1
    assert checked > 5


def test_seeding_leaves_the_rest_of_the_data_as_it_was() -> None:
    with_lines = generate_data(60, random_seed=2)
    again = generate_data(60, random_seed=2)
    assert with_lines == again  # deterministic
    assert {k for k in with_lines if k != "line_items"} == {
        "customers", "employees", "jobs", "invoices", "payments",
    }  # fmt: skip


# ------------------------------------------------------------------------------ the API


def test_list_is_the_jobs_lines_in_order_in_the_list_envelope(
    client: httpx.Client, app: Any
) -> None:
    job, _invoice = billed_job(app)
    response = client.get(f"/jobs/{job['id']}/line_items")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"line_items", "page", "page_size", "total_pages", "total_items"}
    stored = state_of(app).lines.of(job["id"])
    assert [line["uuid"] for line in body["line_items"]] == [line["id"] for line in stored]
    first = body["line_items"][0]
    assert {"uuid", "name", "kind", "quantity", "unit_price", "taxable"} <= set(first)
    assert "job_id" not in first and "position" not in first
    assert isinstance(first["quantity"], int | float)


def test_a_missing_job_is_a_json_404_and_the_routes_need_a_key(
    client: httpx.Client, app: Any
) -> None:
    missing = "/jobs/job_00000000000000000000000000000000/line_items"
    response = client.get(missing)
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "job not found"}}
    assert client.put(f"{missing}/bulk_update", json={"line_items": []}).status_code == 404
    job, _invoice = billed_job(app)
    anonymous = client.get(f"/jobs/{job['id']}/line_items", headers={"Authorization": ""})
    assert anonymous.status_code == 401


def test_bulk_update_changes_named_lines_creates_the_others_and_keeps_the_rest(
    client: httpx.Client, app: Any
) -> None:
    job, invoice = billed_job(app)
    before = client.get(f"/jobs/{job['id']}/line_items").json()["line_items"]
    target = before[0]
    body = {
        "line_items": [
            {"uuid": target["uuid"], "quantity": 2.5, "unit_price": 1234},
            {"name": "Trip charge", "kind": "other", "quantity": 1, "unit_price": 4900,
             "taxable": False},
        ]
    }  # fmt: skip
    response = client.put(f"/jobs/{job['id']}/line_items/bulk_update", json=body)
    assert response.status_code == 200, response.text
    after = response.json()["line_items"]
    assert [line["uuid"] for line in after[: len(before)]] == [line["uuid"] for line in before]
    assert len(after) == len(before) + 1
    assert after[0] == {**target, "quantity": 2.5, "unit_price": 1234}
    assert after[1:-1] == before[1:]  # left out: kept as they were
    created = after[-1]
    assert created["name"] == "Trip charge" and created["uuid"] not in {b["uuid"] for b in before}
    listed = client.get(f"/jobs/{job['id']}/line_items", params={"page_size": 50}).json()
    assert listed["line_items"] == after

    # the first invoice bills the lines now; the job's updated_at moved
    shown = client.get(f"/invoices/{invoice['id']}").json()
    subtotal = sum(amount_of(line) for line in after)
    taxable = sum(amount_of(line) for line in after if line.get("taxable"))
    assert shown["subtotal"] == subtotal
    assert shown["tax_amount"] == line_totals(
        [{"quantity": str(Decimal(repr(x["quantity"]))), "unit_price": x["unit_price"],
          "taxable": x.get("taxable")} for x in after]
    )["tax_amount"]  # fmt: skip
    assert shown["tax_amount"] == round(Decimal(taxable) * Decimal("0.0825"))
    assert shown["amount"] == shown["subtotal"] + shown["tax_amount"]
    assert shown["updated_at"] > invoice["updated_at"]
    assert client.get(f"/jobs/{job['id']}").json()["updated_at"] > job["updated_at"]


def test_bulk_update_with_nothing_new_changes_nothing(client: httpx.Client, app: Any) -> None:
    job, invoice = billed_job(app)
    lines = client.get(f"/jobs/{job['id']}/line_items").json()["line_items"]
    response = client.put(f"/jobs/{job['id']}/line_items/bulk_update", json={"line_items": lines})
    assert response.status_code == 200
    assert response.json()["line_items"] == lines
    assert client.get(f"/jobs/{job['id']}").json()["updated_at"] == job["updated_at"]
    assert client.get(f"/invoices/{invoice['id']}").json()["updated_at"] == invoice["updated_at"]


def test_post_creates_one_line_after_the_others(client: httpx.Client, app: Any) -> None:
    job, _invoice = billed_job(app)
    count = len(state_of(app).lines.of(job["id"]))
    response = client.post(
        f"/jobs/{job['id']}/line_items",
        json={"name": "Filter", "kind": "materials", "quantity": 0.25, "unit_price": 800},
    )
    assert response.status_code == 201, response.text
    line = response.json()
    assert line["quantity"] == 0.25 and line["taxable"] is False
    stored = state_of(app).lines.of(job["id"])
    assert len(stored) == count + 1 and stored[-1]["id"] == line["uuid"]
    assert stored[-1]["position"] == count + 1 and stored[-1]["quantity"] == "0.25"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"line_items": [{"uuid": "nope", "name": "x"}]}, "line_items[0].uuid"),
        ({"line_items": [{"quantity": 1}]}, "line_items[0].name"),
        ({"line_items": [{"name": "x", "amount": 5}]}, "line_items[0].amount"),
        ({"line_items": [{"name": "x", "quantity": "1"}]}, "line_items[0].quantity"),
        ({"line_items": [{"name": "x", "quantity": 1.23456}]}, "line_items[0].quantity"),
        ({"line_items": [{"name": "x", "unit_price": 1.5}]}, "line_items[0].unit_price"),
        ({"line_items": [{"name": "x", "taxable": "yes"}]}, "line_items[0].taxable"),
        ({"line_items": {"name": "x"}}, "line_items"),
    ],
)
def test_bad_bodies_are_422_and_change_nothing(
    client: httpx.Client, app: Any, body: Any, key: str
) -> None:
    job, _invoice = billed_job(app)
    before = state_of(app).lines.of(job["id"])
    response = client.put(f"/jobs/{job['id']}/line_items/bulk_update", json=body)
    assert response.status_code == 422, response.text
    assert key in response.json()["errors"]
    assert state_of(app).lines.of(job["id"]) == before


def test_lines_cannot_make_an_invoice_owe_less_than_its_payments(
    client: httpx.Client, app: Any
) -> None:
    state = state_of(app)
    job, invoice = next(
        (j, i)
        for j in state.jobs.all()
        if (i := first_invoice(state, j["id"])) is not None
        and i["status"] == "paid"
        and state.lines.of(j["id"])
    )
    lines = state.lines.of(job["id"])
    body = {"line_items": [{"uuid": line["id"], "unit_price": 0} for line in lines]}
    response = client.put(f"/jobs/{job['id']}/line_items/bulk_update", json=body)
    assert response.status_code == 422
    assert state.lines.of(job["id"]) == lines
    assert state.invoices.get(invoice["id"]) == invoice


def test_a_closed_invoice_keeps_its_totals(client: httpx.Client, app: Any) -> None:
    job, invoice = billed_job(app, closed=True)
    lines = state_of(app).lines.of(job["id"])
    body = {"line_items": [{"uuid": lines[0]["id"], "unit_price": lines[0]["unit_price"] + 100}]}
    assert client.put(f"/jobs/{job['id']}/line_items/bulk_update", json=body).status_code == 200
    assert state_of(app).invoices.get(invoice["id"]) == invoice


def test_lines_survive_dump_load_and_reset(tmp_path: Path, app: Any, client: httpx.Client) -> None:
    state = state_of(app)
    job, _invoice = billed_job(app)
    seeded = state.lines.of(job["id"])
    client.post(f"/jobs/{job['id']}/line_items", json={"name": "Extra", "quantity": 1.5})
    dumped = state.dump()
    path = tmp_path / "data.json"
    path.write_text(json.dumps(dumped), encoding="utf-8")
    loaded = create_app(KEY, data_file=str(path)).state.sandbox
    assert loaded.lines.of(job["id"]) == state.lines.of(job["id"])
    state.reset()
    assert state.lines.of(job["id"]) == seeded


def test_a_data_file_with_bad_lines_names_them(tmp_path: Path) -> None:
    from syncengine.errors import ConfigError

    data = generate_data(5, random_seed=1)
    data["line_items"][0]["job_id"] = "job_missing"
    data["line_items"][1]["quantity"] = "1.23456"
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        create_app(KEY, data_file=str(path))
    text = str(info.value)
    assert "line_items[0].job_id" in text and "line_items[1].quantity" in text


def test_line_changes_send_job_and_invoice_events(client: httpx.Client, app: Any) -> None:
    heard: list[str] = []
    state_of(app).listener = lambda event, record, at: heard.append(event)
    job, _invoice = billed_job(app)
    line = state_of(app).lines.of(job["id"])[0]
    body = {"line_items": [{"uuid": line["id"], "unit_price": line["unit_price"] + 1}]}
    assert client.put(f"/jobs/{job['id']}/line_items/bulk_update", json=body).status_code == 200
    assert heard == ["job.updated", "invoice.amount_updated"]
