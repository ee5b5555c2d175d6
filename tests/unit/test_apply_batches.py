"""How many keys a journal batch holds: ``batch_size`` when the pipeline sets it; unset, 200
(``apply.BATCH_SIZE``) once a batch writes to a member that writes through, and 1000
(``apply.BUFFERED_BATCH_SIZE``) while it writes only to buffered members, a spreadsheet
written once at its flush. A stop request is honoured at a batch's end, so the records a
stopped first sync wrote tell the size of its first batch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.apply import BATCH_SIZE, BUFFERED_BATCH_SIZE
from syncengine.config import Config
from syncengine.connectors.memory import MemoryConnector
from syncengine.engine import Engine
from syncengine.errors import SyncStopped
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
@pytest.mark.whole_first_sync
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
