"""Review of the performance changes: match candidates looked up by value, journal ids
reserved before the insert, phone numbers remembered across transforms. What they must not
change, on SQLite and PostgreSQL.

Real parts: memory members, SQLite files and the PostgreSQL fixture ``pg_url``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine import api, integrity, model
from syncengine.connectors.memory import MemoryConnector
from syncengine.state import StateStore
from tests.helpers import memory_config

P, E = "p", "customers"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(state_url: str) -> Iterator[StateStore]:
    s = StateStore.open(state_url)
    yield s
    s.close()


BIG = 2**64 + 1
"""An integer beyond 64 bits (the standard library's JSON holds it; orjson alone does not)."""


def _memory_config(tmp_path: Path, state: str, entities: tuple[str, ...] = ("customers",)) -> Any:
    return memory_config(
        tmp_path,
        {"hcp": {"entities": list(entities)}, "books": {"entities": list(entities)}},
        state=state,
        entities=entities,
    )


def _sync(config: Any) -> Any:
    [result] = api.sync(config)
    return result


# ------------------------------------------------------- match candidates looked up by value
def test_a_record_new_on_a_member_is_matched_to_the_hub_by_value(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidates of a few new records are looked up in the stored bases (``->>`` on
    PostgreSQL, ``json_extract`` on SQLite): a row the bookkeeper types for a known customer
    is linked, never created again in HCP, on both dialects."""
    config = memory_config(
        tmp_path,
        {"hcp": {}, "books": {"only": {"customers": ["update"]}}},
        state=state_url,
    )
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    hcp.put("customers", "c2", {"first_name": "Bob", "mobile_number": "+15551234567"})
    hcp.put("customers", "c3", {"first_name": "Cy", "email": "cy@example.com"})
    books.put("customers", "b1", {"first_name": "Ann", "email": "ann@example.com"})
    first = _sync(config)
    assert first.exit_code == 0, first.to_json()
    assert sorted(books.table("customers")) == ["b1"]  # books takes no creates
    looked_up: list[dict[str, Any]] = []
    holding = StateStore.records_holding

    def spy(self: StateStore, pipeline: str, entity: str, values: Any) -> Any:
        looked_up.append({k: sorted(v) for k, v in values.items() if v})
        return holding(self, pipeline, entity, values)

    monkeypatch.setattr(StateStore, "records_holding", spy)
    books.put("customers", "b2", {"first_name": "Bob", "mobile_number": "(555) 123-4567"})
    books.put("customers", "b3", {"first_name": "Cy", "email": "CY@example.com"})
    books.put("customers", "b4", {"first_name": "Dee", "email": "dee@example.com"})
    second = _sync(config)
    assert second.exit_code == 0, second.to_json()
    assert looked_up == [
        {
            "email": ["cy@example.com", "dee@example.com"],
            "mobile_number": ["+15551234567"],
        }
    ]
    assert len(hcp.table("customers")) == 4  # Dee created; Bob and Cy linked, not copied
    store = StateStore.open(state_url)
    try:
        linked = {
            rs.base.get("first_name"): sorted(rs.links)
            for rs in store.iter_records("p", "customers")
        }
    finally:
        store.close()
    assert linked == {name: ["books", "hcp"] for name in ("Ann", "Bob", "Cy", "Dee")}


def test_records_holding_reads_dotted_names_and_numbers_alike(store: StateStore) -> None:
    with store.transaction() as tx:
        tx.put_record(P, E, "a", {"custom.code": "X1", "email": "é@example.com"})
        tx.put_record(P, E, "b", {"custom.code": 5, "email": "b@example.com"})
        tx.put_record(P, E, "c", {"custom": {"code": "X1"}})
    assert sorted(store.records_holding(P, E, {"custom.code": ["X1"]})) == ["a"]
    assert sorted(store.records_holding(P, E, {"email": ["é@example.com"]})) == ["a"]
    # a number is a candidate for its text (match then compares the values themselves)
    assert sorted(store.records_holding(P, E, {"custom.code": ["5"], "email": []})) == ["b"]


# ------------------------------------------------------------------ journal ids reserved
def _intent(key: str) -> dict[str, Any]:
    return {
        "run_id": "r",
        "pipeline": P,
        "entity": E,
        "key": key,
        "member": "books",
        "op": "create",
        "payload": {"native": {"key": key}},
    }


def test_two_writers_never_reserve_the_same_journal_ids(state_url: str) -> None:
    """Two stores on one database (two processes, or the daemon's pipeline threads) adding
    intents at once: every intent gets its own id, and each id is the row it names."""
    import threading

    stores = [StateStore.open(state_url), StateStore.open(state_url)]
    ids: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for batch in range(20):
                with stores[n].transaction() as tx:
                    keys = [f"{n}-{batch}-{i}" for i in range(25)]
                    got = tx.add_intents([_intent(k) for k in keys])
                    ids[n].extend(got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        every = ids[0] + ids[1]
        assert len(set(every)) == len(every) == 1000
        pending = {i.id: i.key for i in stores[0].pending_intents(P)}
        assert len(pending) == 1000
        assert all(pending[i].startswith(f"{n}-") for n in (0, 1) for i in ids[n])
    finally:
        for s in stores:
            s.close()


def test_journal_ids_are_not_reused_after_pruning(store: StateStore) -> None:
    import datetime as dt

    with store.transaction() as tx:
        first = tx.add_intents([_intent("a"), _intent("b")])
        tx.finish_intents([{"id": i, "state": "done"} for i in first])
    with store.transaction() as tx:
        assert tx.prune_journal(P, dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) == 2
    with store.transaction() as tx:
        [again] = tx.add_intents([_intent("c")])
    assert again > max(first)


# ------------------------------------------------------------------------------ memos
def test_a_phone_number_reads_the_same_whatever_was_parsed_before() -> None:
    """The parsed numbers are shared by every transform (module-level, bounded): a text read
    in one region, or its E.164 form, must not change what another region reads."""
    from syncengine.transforms import PhoneTransform

    us, gb = PhoneTransform(region="US"), PhoneTransform(region="GB")
    assert us._read("020 7946 0958") != gb._read("020 7946 0958")
    assert gb._read("020 7946 0958") == "+442079460958"
    assert PhoneTransform(format="national", region="GB")._write("+442079460958") == (
        "020 7946 0958"
    )
    assert PhoneTransform(format="national", region="US")._write("+442079460958") == (
        "+44 20 7946 0958"
    )


# ---------------------------------------------------------------------- state JSON (orjson)
def test_a_base_holding_an_integer_beyond_64_bits_is_stored(store: StateStore) -> None:
    with store.transaction() as tx:
        tx.put_record(P, E, "k", {"custom.account": BIG, "first_name": "Ann"})
    assert store.load_records(P, E, ["k"])["k"].base == {
        "custom.account": BIG,
        "first_name": "Ann",
    }


def test_an_invoice_amount_beyond_64_bits_does_not_stop_every_run(
    tmp_path: Path, state_url: str
) -> None:
    """One mistyped amount (cents) used to sync like any other; now the journal cannot hold
    its intent and the whole entity fails, run after run."""
    config = _memory_config(tmp_path, state_url, ("customers", "invoices"))
    hcp = MemoryConnector.get_dataset("hcp")
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    hcp.put(
        "invoices",
        "i1",
        {"invoice_number": "1001", "customer": "c1", "amount": BIG, "status": "open"},
    )
    result = _sync(config)
    assert result.error == "", result.error
    [invoice] = MemoryConnector.get_dataset("books").table("invoices").values()
    assert invoice["amount"] == BIG


def test_a_state_store_written_before_the_upgrade_still_reads(tmp_path: Path) -> None:
    """The standard library wrote NaN and integers of any size into SQLite's JSON; the store
    must read back what it wrote (not fail with a bare JSONDecodeError, nor turn a number
    into a float)."""
    path = tmp_path / "state.db"
    store = StateStore.open(f"sqlite:///{path}")
    try:
        with store.transaction() as tx:
            tx.put_record(P, E, "big", {})
            tx.put_record(P, E, "nan", {})
        old = {
            "big": json.dumps({"custom.account": 10**20 + 1}, separators=(",", ":")),
            "nan": json.dumps({"custom.ratio": math.nan}, separators=(",", ":")),
        }
        with store._engine.begin() as conn:  # as the previous release stored them
            for key, text in old.items():
                conn.execute(
                    sa.text("UPDATE records SET base = :b WHERE key = :k"), {"b": text, "k": key}
                )
        assert store.load_records(P, E, ["big"])["big"].base == {"custom.account": 10**20 + 1}
        [nan] = store.load_records(P, E, ["nan"])["nan"].base.values()
        assert math.isnan(nan)
    finally:
        store.close()


def test_a_nan_is_not_stored_as_null(store: StateStore, state_url: str) -> None:
    """orjson writes NaN and infinities as null without a word: a base that held NaN now
    says the field is empty (the standard library kept NaN on SQLite; PostgreSQL refused it,
    loudly)."""
    try:
        with store.transaction() as tx:
            tx.put_record(P, E, "k", {"custom.ratio": math.inf})
    except Exception:  # refusing the value is fine; turning it into null is not
        return
    assert store.load_records(P, E, ["k"])["k"].base["custom.ratio"] == math.inf


# ------------------------------------------------------- match candidates looked up by value
def test_a_stored_nul_character_does_not_stop_matching_on_postgresql(
    tmp_path: Path, pg_url: str
) -> None:
    """PostgreSQL's ``->>`` refuses a json value holding ``\\u0000`` anywhere in it, so one
    customer with a NUL in a note made every later lookup of new customers fail (walking the
    hub decodes the JSON in Python, which takes it)."""
    config = _memory_config(tmp_path, pg_url)
    hcp = MemoryConnector.get_dataset("hcp")
    hcp.put("customers", "c1", {"first_name": "Ann", "company": "Acme\x00", "email": "a@x.com"})
    first = _sync(config)
    assert first.exit_code == 0, first.to_json()
    hcp.put("customers", "c2", {"first_name": "Bob", "email": "bob@example.com"})
    second = _sync(config)
    assert second.error == "", second.error
    assert len(MemoryConnector.get_dataset("books").table("customers")) == 2


# ------------------------------------------------- deleted records found by the database
def test_keys_flagged_finds_only_the_bases_marked_true(store: StateStore) -> None:
    """``revive_referred`` asks the database which of the records a run refers to are marked
    deleted (a first sync refers to every one of them) instead of loading them all."""
    with store.transaction() as tx:
        tx.put_record(P, E, "gone", {"email": "a@x.com", model.DELETED: True})
        tx.put_record(P, E, "kept", {"email": "b@x.com", model.DELETED: False})
        tx.put_record(P, E, "live", {"email": "c@x.com"})
        tx.put_record(P, E, "other", {"email": "e@x.com", model.DELETED: True})
        tx.put_record(P, "invoices", "gone", {"invoice_number": "1", model.DELETED: True})
    wanted = ["gone", "kept", "live", "missing"]
    assert store.keys_flagged(P, E, wanted, model.DELETED) == {"gone"}
    assert store.keys_flagged(P, E, [], model.DELETED) == set()
    assert store.keys_flagged(P, E, ["other", "gone"], model.DELETED) == {"gone", "other"}


def test_deleted_records_are_found_when_a_base_holds_a_nul(store: StateStore) -> None:
    """PostgreSQL cannot read a field of a stored base holding ``\\u0000`` anywhere: such a
    record is a candidate, loaded and looked at in Python, with the same answer; the query
    never fails, so it is safe inside a transaction too (a failed statement would abort it)."""
    with store.transaction() as tx:
        tx.put_record(P, E, "gone", {"company": "Acme\x00", model.DELETED: True})
        tx.put_record(P, E, "live", {"company": "Bolt\x00"})
        tx.put_record(P, E, "plain", {"company": "Cord"})
    keys = ["live", "gone", "plain", "missing"]
    assert {"gone"} <= store.keys_flagged(P, E, keys, model.DELETED) <= {"gone", "live"}
    states = integrity._deleted_among(store, P, E, keys)
    assert sorted(states) == ["gone"]
    assert set(states) == {"gone"}
    assert states["gone"].base["company"] == "Acme\x00"
    with store.transaction() as tx:
        assert sorted(integrity._deleted_among(store, P, E, keys)) == ["gone"]
        tx.put_record(P, E, "after", {"company": "Dart"})  # the transaction is still usable
    assert set(store.load_records(P, E, ["after"])) == {"after"}
