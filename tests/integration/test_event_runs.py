"""Event-driven runs: the engine reads only what the inbox's webhook events name on the
member that sent them, against the sandbox as a real process and a real CSV folder and
SQLite file. Events are put in the inbox the way the daemon's receiver stores them
(``Tx.store_event``), so that these tests are about the run, not the HTTP receiver
(``test_webhook_receiver.py``, ``test_webhook_daemon.py``)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine.api import open_store
from syncengine.config import load_config
from syncengine.engine import Engine, SyncResult
from syncengine.errors import AuthError
from syncengine.state import StateStore
from tests.integration.conftest import DEFAULT_KEY, Sandbox, hcp_books_config


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCP_API_KEY", DEFAULT_KEY)


@pytest.fixture
def setup(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox], env: None
) -> Iterator[tuple[Sandbox, Path, StateStore]]:
    box = sandbox_factory(seed=12)
    path = hcp_books_config(tmp_path, box.port)
    config = load_config(path)
    store = open_store(config)
    try:
        yield box, path, store
    finally:
        store.close()


def sync(path: Path, store: StateStore, *, event_driven: bool = False) -> SyncResult:
    config = load_config(path)
    return Engine(config, store, event_driven=event_driven).sync(config.pipelines["hcp-books"])


def deliver(store: StateStore, event: str, record: dict[str, Any] | None, **extra: Any) -> int:
    """Store an event as the receiver does; its inbox id."""
    prefix = event.split(".", 1)[0]
    body: dict[str, Any] = {
        "event": event,
        "event_occurred_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "company_id": "c0mpany",
        **extra,
    }
    if record is not None:
        body[prefix] = record
    raw = json.dumps(body).encode()
    entities = {"customer": ["customers"], "job": ["jobs"], "invoice": ["invoices", "payments"]}
    with store.transaction() as tx:
        stored = tx.store_event(
            connector="hcp",
            digest=hashlib.sha256(raw).hexdigest(),
            event=event,
            entities=entities.get(prefix, []),
            record_id=str((record or {}).get("id") or extra.get(f"{prefix}_id") or "") or None,
            payload=body,
            occurred_at=body["event_occurred_at"],
        )
    assert stored is not None
    return stored


def rows(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "books" / "customers.csv").open(newline="", encoding="utf-8") as fh:
        return {row["Sync ID"]: row for row in csv.DictReader(fh)}


def by_email(folder: Path, email: str) -> dict[str, str]:
    found = [r for r in rows(folder).values() if r["Email"] == email]
    assert len(found) == 1, found
    return found[0]


def some_customer(box: Sandbox, index: int) -> dict[str, Any]:
    """The ``index``-th seeded customer that has an e-mail (the CSV rows are told by it)."""
    return [c for c in box.customers() if c.get("email")][index]


def hcp_requests(box: Sandbox) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in box.requests()]


def test_an_event_with_the_whole_record_costs_no_request_and_reaches_the_csv(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    box, path, store = setup
    first = sync(path, store)
    assert first.exit_code == 0, first.error
    customer = some_customer(box, 3)
    changed = box.update_customer(customer["id"], {"first_name": "Webhooked"})
    box.clear_requests()
    deliver(store, "customer.updated", changed)

    result = sync(path, store, event_driven=True)

    assert result.exit_code == 0, result.error
    assert result.events == 1 and result.event_driven
    assert hcp_requests(box) == []  # the payload was the whole record
    assert by_email(tmp_path, changed["email"])["First Name"] == "Webhooked"
    assert store.pending_events("hcp-books", ["hcp"]) == []  # taken, once


def test_a_partial_payload_is_read_by_id_with_one_request(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    customer = some_customer(box, 5)
    box.update_customer(customer["id"], {"last_name": "Partial"})
    box.clear_requests()
    deliver(store, "customer.updated", {"id": customer["id"]})

    result = sync(path, store, event_driven=True)

    assert result.exit_code == 0, result.error
    assert hcp_requests(box) == [("GET", f"/customers/{customer['id']}")]
    assert by_email(tmp_path, customer["email"])["Last Name"] == "Partial"


def test_records_no_event_names_are_unseen_not_deleted(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    before = rows(tmp_path)
    customer = some_customer(box, 0)
    changed = box.update_customer(customer["id"], {"first_name": "Only"})
    deliver(store, "customer.updated", changed)

    result = sync(path, store, event_driven=True)

    after = rows(tmp_path)
    assert set(after) == set(before)  # nothing deleted, nothing created
    counts = result.to_json()["entities"]["customers"]
    assert counts["books"] == {"create": 0, "update": 1, "delete": 0, "link": 0}, counts
    assert counts["hcp"] == {"create": 0, "update": 0, "delete": 0, "link": 0}, counts
    assert [k for k in after if after[k] != before[k]] == [
        k for k in after if after[k]["Email"] == changed["email"]
    ]


def test_a_deleted_customer_is_deleted_once_hcp_confirms_it(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    customer = some_customer(box, 2)
    box._client.delete(f"/customers/{customer['id']}").raise_for_status()
    box.clear_requests()
    deliver(store, "customer.deleted", customer)

    result = sync(path, store, event_driven=True)

    assert result.exit_code == 0, result.error
    assert hcp_requests(box) == [("GET", f"/customers/{customer['id']}")]
    assert customer["email"] not in {r["Email"] for r in rows(tmp_path).values()}


def test_a_deleted_event_for_a_record_hcp_still_has_deletes_nothing(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    customer = some_customer(box, 2)
    deliver(store, "customer.deleted", customer)

    result = sync(path, store, event_driven=True)

    assert result.exit_code == 0, result.error
    assert by_email(tmp_path, customer["email"])


def test_an_old_payload_is_not_trusted(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    """A delivery retried long after the change may carry a record that changed again
    since: it is read by id instead."""
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    customer = some_customer(box, 4)
    stale = box.update_customer(customer["id"], {"first_name": "Stale"})
    box.update_customer(customer["id"], {"first_name": "Current"})
    box.clear_requests()
    deliver(store, "customer.updated", stale, event_occurred_at="2026-01-01T00:00:00Z")

    assert sync(path, store, event_driven=True).exit_code == 0

    assert hcp_requests(box) == [("GET", f"/customers/{customer['id']}")]
    assert by_email(tmp_path, customer["email"])["First Name"] == "Current"


def test_an_event_run_that_fails_leaves_its_events_for_the_next_run(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    customer = some_customer(box, 1)
    changed = box.update_customer(customer["id"], {"first_name": "Retried"})
    deliver(store, "customer.updated", {"id": customer["id"]})  # partial: read by id
    monkeypatch.setenv("HCP_API_KEY", "a-wrong-key")

    with pytest.raises(AuthError):
        sync(path, store, event_driven=True)
    assert len(store.pending_events("hcp-books", ["hcp"])) == 1

    monkeypatch.setenv("HCP_API_KEY", DEFAULT_KEY)
    assert sync(path, store, event_driven=True).exit_code == 0
    assert by_email(tmp_path, changed["email"])["First Name"] == "Retried"
    assert store.pending_events("hcp-books", ["hcp"]) == []


def test_a_scheduled_run_takes_the_events_it_covers(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    customer = some_customer(box, 1)
    changed = box.update_customer(customer["id"], {"first_name": "Scheduled"})
    deliver(store, "customer.updated", changed)
    deliver(store, "estimate.created", {"id": "csr_1"})  # about nothing this pipeline syncs

    result = sync(path, store)  # a full pass

    assert result.events == 2 and not result.event_driven
    assert store.pending_events("hcp-books", ["hcp"]) == []
    assert by_email(tmp_path, changed["email"])["First Name"] == "Scheduled"


def test_an_event_run_with_nothing_pending_reads_nothing(
    setup: tuple[Sandbox, Path, StateStore],
) -> None:
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    box.clear_requests()
    result = sync(path, store, event_driven=True)
    assert result.exit_code == 0 and result.events == 0
    assert hcp_requests(box) == []
    assert os.path.exists(path)


def write_rows(folder: Path, table: dict[str, dict[str, str]], extra: list[dict[str, str]]) -> None:
    path = folder / "books" / "customers.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh))
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows([*table.values(), *extra])


def test_an_event_run_syncs_only_what_its_events_name(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    """A row typed into the sheet, a row edited and a row deleted there wait for a run that
    reads everything: HCP's records that no event names might be any of them."""
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    named = some_customer(box, 0)
    edited, removed = some_customer(box, 1), some_customer(box, 2)
    table = rows(tmp_path)
    edited_row = next(r for r in table.values() if r["Email"] == edited["email"])
    edited_row["First Name"] = "SheetEdit"
    del table[next(k for k, r in table.items() if r["Email"] == removed["email"])]
    typed = dict.fromkeys(edited_row, "")
    typed.update({"First Name": "Typed", "Last Name": "Row", "Email": "typed.row@example.com"})
    write_rows(tmp_path, table, [typed])
    changed = box.update_customer(named["id"], {"first_name": "Named"})
    deliver(store, "customer.updated", changed)
    before = {c["id"]: c for c in box.customers()}
    box.clear_requests()

    result = sync(path, store, event_driven=True)

    assert result.exit_code == 0, result.error
    assert hcp_requests(box) == []  # nothing written to HCP, nothing read
    assert {c["id"]: c for c in box.customers()} == before
    assert by_email(tmp_path, changed["email"])["First Name"] == "Named"
    assert by_email(tmp_path, "typed.row@example.com")["Sync ID"] == ""  # not taken yet

    full = sync(path, store)  # the scheduled pass takes what waited

    assert full.exit_code == 0, full.error
    after = {c.get("email"): c for c in box.customers()}
    assert after[edited["email"]]["first_name"] == "SheetEdit"
    assert removed["email"] not in after
    assert "typed.row@example.com" in after
    assert by_email(tmp_path, "typed.row@example.com")["Sync ID"] != ""


def test_a_customer_created_in_hcp_links_to_the_row_typed_for_it(
    setup: tuple[Sandbox, Path, StateStore], tmp_path: Path
) -> None:
    """The event names a new HCP customer; the bookkeeper already typed it into the sheet:
    one row, linked, not two."""
    box, path, store = setup
    assert sync(path, store).exit_code == 0
    table = rows(tmp_path)
    typed = dict.fromkeys(next(iter(table.values())), "")
    typed.update({"First Name": "Both", "Last Name": "Sides", "Email": "both.sides@example.com"})
    write_rows(tmp_path, table, [typed])
    created = box._client.post(
        "/customers",
        json={"first_name": "Both", "last_name": "Sides", "email": "both.sides@example.com"},
    )
    created.raise_for_status()
    deliver(store, "customer.created", created.json())

    result = sync(path, store, event_driven=True)

    assert result.exit_code == 0, result.error
    row = by_email(tmp_path, "both.sides@example.com")  # exactly one row
    assert row["Sync ID"] != ""
    assert [c for c in box.customers() if c.get("email") == "both.sides@example.com"] == [
        box.customer(created.json()["id"])
    ]
