"""How many keys a journal batch holds: ``batch_size`` when the pipeline sets it; unset, 200
(``apply.BATCH_SIZE``) once a batch writes to a member that writes through, and 1000
(``apply.BUFFERED_BATCH_SIZE``) while it writes only to buffered members, a spreadsheet
written once at its flush. A stop request is honoured at a batch's end, so the records a
stopped first sync wrote tell the size of its first batch."""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.apply import BATCH_SIZE, BUFFERED_BATCH_SIZE, Write
from syncengine.collector import SyncCollector
from syncengine.config import Config
from syncengine.connector import RELEASED
from syncengine.connectors.memory import MemoryConnector
from syncengine.connectors.spreadsheet import SpreadsheetConnector
from syncengine.engine import Engine
from syncengine.errors import SyncStopped
from syncengine.plan import Create
from tests.csvfiles import read_csv, write_csv
from tests.helpers import memory_config

N = 2_500


def _config(tmp_path: Path, source: str, batch_size: int | None) -> Config:
    books = {"type": "spreadsheet", "path": str(tmp_path / "books")}
    members = {"crm": {}, "books": books}
    return memory_config(tmp_path, members, conflicts={"default": [source]}, batch_size=batch_size)


def _first_batch(config: Config, written: Any) -> int:
    """Stop the first sync as soon as it applies a record; how many records it wrote."""
    stop = threading.Event()

    def progress(what: str, done: int, total: int | None) -> None:
        if what.startswith("applying") and done >= 1:
            stop.set()

    [pipeline] = config.pipeline(None)
    store = api.open_store(config)
    try:
        with pytest.raises(SyncStopped):
            Engine(config, store, progress=progress, stop=stop).sync(pipeline)
        assert store.pending_intents("p") == []
    finally:
        store.close()
    found: int = written()
    # the next run writes the rest, once each
    [result] = api.sync(config)
    assert result.exit_code == 0 and written() == N
    return found


@pytest.mark.parametrize("batch_size", [None, 300])
def test_a_batch_of_writes_to_a_spreadsheet_only_holds_1000_keys(
    tmp_path: Path, batch_size: int | None
) -> None:
    crm = MemoryConnector.get_dataset("crm")
    for i in range(N):
        crm.put("customers", f"c{i}", {"first_name": f"N{i}", "email": f"n{i}@example.com"})
    (tmp_path / "books").mkdir()
    config = _config(tmp_path, "crm", batch_size)

    def written() -> int:
        return len(read_csv(tmp_path / "books" / "customers.csv"))

    assert _first_batch(config, written) == (batch_size or BUFFERED_BATCH_SIZE)


@pytest.mark.parametrize("batch_size", [None, 300])
def test_a_batch_of_writes_to_a_member_writing_through_holds_200_keys(
    tmp_path: Path, batch_size: int | None
) -> None:
    (tmp_path / "books").mkdir()
    rows = [{"First name": f"N{i}", "Email": f"n{i}@example.com"} for i in range(N)]
    write_csv(tmp_path / "books" / "customers.csv", rows, ["First name", "Email"])
    config = _config(tmp_path, "books", batch_size)
    crm = MemoryConnector.get_dataset("crm")

    def written() -> int:
        return len(crm.table("customers"))

    assert _first_batch(config, written) == (batch_size or BATCH_SIZE)


def test_a_spreadsheet_answer_is_linked_at_once_and_let_go_before_the_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until a spreadsheet is saved, the writes wait with what it answered to each: a first
    sync of a large entity held a record of every row written beside its plan. Each write's
    link is made from the answer at once, sharing the values written where they are what the
    sheet holds, and the answer keeps only its id; the links are still stored after the
    flush, as the next sync finds them (it plans nothing)."""
    crm = MemoryConnector.get_dataset("crm")
    for i in range(N):
        crm.put("customers", f"c{i}", {"first_name": f"N{i}", "email": f"n{i}@example.com"})
    (tmp_path / "books").mkdir()
    config = _config(tmp_path, "crm", None)
    seen: list[tuple[int, int, int]] = []
    flush = SpreadsheetConnector.flush

    def flushing(self: SpreadsheetConnector, entity: str) -> None:
        waiting = [o for o in gc.get_objects() if type(o) is Write and o.member.connector is self]
        released = sum(1 for w in waiting if w.result is not None and w.result.data is RELEASED)
        shared = sum(
            1
            for w in waiting
            if w.link is not None
            and isinstance(w.action, Create)
            and w.link.last_seen is w.action.values
        )
        seen.append((len(waiting), released, shared))
        flush(self, entity)

    monkeypatch.setattr(SpreadsheetConnector, "flush", flushing)
    # nothing frozen for the collector: gc.get_objects() lists what is frozen no longer
    monkeypatch.setattr(SyncCollector, "settle", lambda self: None)
    [result] = api.sync(config)

    assert result.exit_code == 0 and seen == [(N, N, N)]
    assert len(read_csv(tmp_path / "books" / "customers.csv")) == N
    monkeypatch.setattr(SpreadsheetConnector, "flush", flush)
    [again] = api.sync(config)
    assert again.exit_code == 0 and again.plan.actions == []
