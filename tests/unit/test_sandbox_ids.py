"""The HCP sandbox never hands out an id it holds or has held.

Its ids come from a random generator seeded by ``random_seed`` alone, so a sandbox started
again with what an earlier one saved (``syncengine sandbox --data hcp-data.json``, as the demo
prints) draws the same ids that session drew. Those must be skipped: a new customer given the
id of one made in the earlier session replaced it (HCP's customer lost, and the next sync
failing on its links).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.connectors.housecallpro.sandbox import (
    SandboxState,
    SyncASGITransport,
    create_app,
)
from syncengine.connectors.housecallpro.sandbox_fields import Record
from testbed.sandbox import start_sandbox

KEY = "sandbox-ids-key"
AUTH = {"Authorization": f"Token {KEY}"}
SEED = 4
"""Customers generated for the first session (``random_seed`` stays the default 0, as the
demo's and ``syncengine sandbox``'s)."""


def all_ids(data: dict[str, list[Record]]) -> set[str]:
    """Every id in a ``dump()``: records, employees and the addresses they embed (a seeded
    job's address is its customer's, id and all)."""
    found = {r["id"] for name in sorted(data) for r in data[name]}
    found |= {a["id"] for c in data["customers"] for a in c["addresses"]}
    found |= {j["address"]["id"] for j in data["jobs"] if j["address"] is not None}
    return found


def write_session(client: httpx.Client, tag: str) -> list[str]:
    """What a session does through the API: customers (with addresses), jobs (with an
    address), invoices and payments. Returns the ids of what it made, addresses included."""
    made: list[str] = []

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = client.post(path, json=body)
        assert response.status_code == 201, response.text
        record = dict(response.json())
        made.append(record["id"])
        return record

    for n in range(3):
        customer = post(
            "/customers",
            {
                "first_name": f"{tag}{n}",
                "email": f"{tag}{n}@example.com",
                "addresses": [{"street": f"{n} Main St", "city": tag}],
            },
        )
        made += [a["id"] for a in customer["addresses"]]
        job = post(
            "/jobs",
            {"customer_id": customer["id"], "address": {"street": f"{n} Job Rd", "city": tag}},
        )
        made.append(job["address"]["id"])
        invoice = post("/invoices", {"job_id": job["id"], "amount": 1_000 + n})
        post(f"/_sandbox/invoices/{invoice['id']}/payments", {"amount": 400})
    return made


def in_process(app: Any) -> httpx.Client:
    return httpx.Client(transport=SyncASGITransport(app), base_url="http://sandbox", headers=AUTH)


def saved_session(tmp_path: Path) -> tuple[Path, dict[str, list[Record]], list[str]]:
    """A first session's writes, saved as the demo saves its sandbox's data."""
    app = create_app(KEY, seed=SEED)
    with in_process(app) as client:
        made = write_session(client, "first")
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    data = state.dump()
    path = tmp_path / "hcp-data.json"
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path, json.loads(path.read_text(encoding="utf-8")), made


def assert_nothing_reused(
    before: dict[str, list[Record]], after: dict[str, list[Record]], made: list[str]
) -> None:
    assert not set(made) & all_ids(before), "a new record got the id of one the sandbox held"
    assert len(set(made)) == len(made)
    for name, records in before.items():
        now = {r["id"]: r for r in after[name]}
        for record in records:
            assert now.get(record["id"]) == record, f"{name} {record['id']} was overwritten"
    assert len(after["customers"]) == len(before["customers"]) + 3
    assert len(after["payments"]) == len(before["payments"]) + 3


# ----------------------------------------------------------------------------- the state


def test_a_state_loaded_from_a_saved_session_never_reuses_its_ids(tmp_path: Path) -> None:
    path, before, first = saved_session(tmp_path)
    app = create_app(KEY, data_file=str(path))
    with in_process(app) as client:
        made = write_session(client, "second")
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    assert_nothing_reused(before, state.dump(), made)
    # Every kind of id came round again (the same random seed) and was skipped.
    assert {i.split("_")[0] for i in first} == {"cus", "adr", "job", "inv", "pay"}

    # The same seed and data give the same ids.
    again = create_app(KEY, data_file=str(path))
    with in_process(again) as client:
        assert write_session(client, "second") == made


def test_load_and_reset_keep_new_ids_unique(tmp_path: Path) -> None:
    _path, before, _first = saved_session(tmp_path)
    state = SandboxState(seed=SEED)
    state.load(before)
    customer = state.create_customer({"first_name": "Loaded"})
    assert customer["id"] not in all_ids(before)
    assert state.customers.get(customer["id"]) == customer

    state.reset()
    later = [state.new_id("cus_") for _ in range(20)]
    assert customer["id"] not in later, "an id handed out before reset() came back"
    assert not set(later) & all_ids(before)


def test_an_id_a_client_gave_a_job_address_is_not_handed_out() -> None:
    state = SandboxState(seed=SEED)
    job = state.dump()["jobs"][0]
    upcoming = SandboxState(seed=SEED).new_id("adr_")
    changed = state.update_job(job["id"], {"address": {"id": upcoming, "street": "1 Given St"}})
    assert changed is not None and changed["address"]["id"] == upcoming
    assert state.new_id("adr_") != upcoming


# -------------------------------------------- syncengine sandbox --data, as the demo prints


@pytest.mark.integration
def test_the_sandbox_started_again_with_its_data_never_reuses_an_id(tmp_path: Path) -> None:
    path, before, _first = saved_session(tmp_path)
    flags = ["--data", str(path)]
    with (
        start_sandbox(api_key=KEY, flags=flags, workdir=tmp_path / "cwd") as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client,
    ):
        made = write_session(client, "second")
        after: dict[str, list[Record]] = {}
        for name in ("customers", "jobs", "invoices"):
            response = client.get(f"/{name}", params={"page_size": 200})
            response.raise_for_status()
            after[name] = response.json()[name]
    assert not set(made) & all_ids(before), "a new record got the id of one the sandbox held"
    customers = {c["id"]: c for c in after["customers"]}
    assert len(customers) == len(before["customers"]) + 3
    for customer in before["customers"]:
        assert customers[customer["id"]]["email"] == customer["email"], "customer overwritten"
    assert len(after["jobs"]) == len(before["jobs"]) + 3
    assert len(after["invoices"]) == len(before["invoices"]) + 3
