"""A member whose reads cost requests starts reading the next entity while the engine still
plans and applies the one before (``read.ReadAhead``): the same outcome as reading it when
its turn comes, an error raised where the engine reaches it, and no read left running when a
run ends early. Memory members, with the "hcp" one flagged as reading ahead."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.connector import NativeRecord
from syncengine.connectors.memory import MemoryConnector
from syncengine.errors import RetriableError
from tests.helpers import ACCOUNTING, hcp_books_config

ENTITIES = ACCOUNTING


def _config(tmp_path: Path) -> Any:
    return hcp_books_config(tmp_path)


def _seed() -> None:
    hcp = MemoryConnector.get_dataset("hcp")
    for n in range(30):
        hcp.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
        hcp.put(
            "invoices",
            f"i{n}",
            {"invoice_number": str(1000 + n), "customer": f"c{n}", "amount": 100, "status": "sent"},
        )
        hcp.put(
            "payments",
            f"p{n}",
            {"invoice": f"i{n}", "amount": 40, "method": "cash", "status": "succeeded"},
        )


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(member, entity, thread name) of every read, as the reads start."""
    seen: list[tuple[str, str, str]] = []
    read = MemoryConnector.read

    def watched(self: MemoryConnector, entity: str) -> Iterator[NativeRecord]:
        seen.append((self.name, entity, threading.current_thread().name))
        yield from read(self, entity)

    monkeypatch.setattr(MemoryConnector, "read", watched)
    return seen


def _tables() -> dict[str, dict[str, Any]]:
    return {
        f"{m}.{e}": MemoryConnector.get_dataset(m).table(e)
        for m in ("hcp", "books")
        for e in ENTITIES
    }


def _hcp_reads_ahead(monkeypatch: pytest.MonkeyPatch, ahead: bool = True) -> None:
    """Only the member standing for HCP reads ahead (books is a local file's stand-in)."""
    monkeypatch.setattr(
        MemoryConnector, "reads_ahead", property(lambda c: ahead and c.name == "hcp")
    )


def _first_sync(tmp_path: Path, ahead: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    MemoryConnector.reset()
    _hcp_reads_ahead(monkeypatch, ahead)
    tmp_path.mkdir(exist_ok=True)
    _seed()
    [result] = api.sync(_config(tmp_path))
    return result


def test_reading_ahead_gives_the_same_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _first_sync(tmp_path / "plain", False, monkeypatch)
    tables = _tables()
    reads = _reads(monkeypatch)
    ahead = _first_sync(tmp_path / "ahead", True, monkeypatch)
    assert plain.exit_code == ahead.exit_code == 0
    assert ahead.to_json()["entities"] == plain.to_json()["entities"]
    # the same records on both members (sheet-side ids are the run's own keys)
    assert {k: len(v) for k, v in _tables().items()} == {k: len(v) for k, v in tables.items()}
    # hcp read invoices and payments in threads of their own, started before their turn;
    # books (no requests) read each entity when the engine came to it
    threads = {(m, e): t for m, e, t in reads}
    assert threads[("hcp", "invoices")] == "hcp-invoices-read-ahead"
    assert threads[("hcp", "payments")] == "hcp-payments-read-ahead"
    assert threads[("hcp", "customers")] == threads[("books", "invoices")]  # the run's thread
    assert not [t for t in threading.enumerate() if t.name.endswith("-read-ahead")]
    [again] = api.sync(_config(tmp_path / "ahead"))
    assert again.plan.actions == [] and again.exit_code == 0


def test_an_error_read_ahead_is_raised_where_the_engine_reaches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = MemoryConnector.read

    def failing(self: MemoryConnector, entity: str) -> Iterator[NativeRecord]:
        for n, rec in enumerate(read(self, entity)):
            if self.name == "hcp" and entity == "invoices" and n == 5:
                raise RetriableError("the list broke off", connector=self.name, entity=entity)
            yield rec

    monkeypatch.setattr(MemoryConnector, "read", failing)
    errors = {}
    for ahead in (False, True):
        with pytest.raises(RetriableError) as caught:
            _first_sync(tmp_path / str(ahead), ahead, monkeypatch)
        errors[ahead] = str(caught.value)
        # the customers before it are synced and committed either way
        assert len(MemoryConnector.get_dataset("books").table("customers")) == 30
        assert MemoryConnector.get_dataset("books").table("invoices") == {}
    assert errors[True] == errors[False]
    assert not [t for t in threading.enumerate() if t.name.endswith("-read-ahead")]


def test_a_run_that_fails_before_the_next_entity_leaves_no_read_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncengine import read as read_stage

    monkeypatch.setattr(read_stage, "READ_AHEAD_RECORDS", 2)  # the read waits for the engine
    hcp = MemoryConnector.get_dataset("hcp")

    def fail(op: str, entity: str, ref: str) -> bool:
        raise RuntimeError("the process dies while customers are applied")

    _hcp_reads_ahead(monkeypatch)
    _seed()
    assert len(hcp.table("invoices")) == 30
    with pytest.raises(RuntimeError, match="dies"):
        api.sync(_config(tmp_path), connector_extra={"books": {"fail_write": fail}})
    assert not [t for t in threading.enumerate() if t.name.endswith("-read-ahead")]


def test_the_next_entity_is_read_while_this_one_is_planned_and_a_failed_plan_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the next entity's read starts once this one's reads are taken, before it is planned:
    # no request gap while it plans; a plan that fails leaves no read running
    from syncengine import read as read_stage
    from syncengine.engine import Engine

    monkeypatch.setattr(read_stage, "READ_AHEAD_RECORDS", 2)  # the read waits for the engine
    reads = _reads(monkeypatch)
    started = threading.Event()
    read = MemoryConnector.read

    def noted(self: MemoryConnector, entity: str) -> Iterator[NativeRecord]:
        if entity == "invoices":
            started.set()
        yield from read(self, entity)

    monkeypatch.setattr(MemoryConnector, "read", noted)
    plan_keys = Engine._plan_keys

    def planning(self: Engine, pipeline: Any, ent: Any, *args: Any, **kwargs: Any) -> Any:
        if ent.entity == "customers":
            assert started.wait(30), "the invoices' read did not start before customers' plan"
            raise RuntimeError("planning the customers breaks")
        return plan_keys(self, pipeline, ent, *args, **kwargs)

    monkeypatch.setattr(Engine, "_plan_keys", planning)
    _hcp_reads_ahead(monkeypatch)
    _seed()
    with pytest.raises(RuntimeError, match="planning the customers breaks"):
        api.sync(_config(tmp_path))
    assert ("hcp", "invoices", "hcp-invoices-read-ahead") in reads
    assert not [t for t in threading.enumerate() if t.name.endswith("-read-ahead")]
    assert MemoryConnector.get_dataset("books").table("customers") == {}
