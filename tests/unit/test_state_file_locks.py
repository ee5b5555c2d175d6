"""The state store's SQLite file shared by processes: opening a store in a process that
already holds one on the same file (the console's requests inside the daemon) keeps that
process's SQLite locks, so another process closing its connection never takes itself for
the last user and deletes the write-ahead log still in use (a cold trial found the console
damaging ``state.db`` this way)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncengine.errors import StateUnavailableError
from syncengine.state.store import StateStore

OTHER_PROCESS = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
conn.close()
"""


def _another_process_opens_and_closes(db: Path) -> None:
    subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(db)], check=True, timeout=60)


def test_opening_the_store_again_keeps_this_process_s_locks(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    held = StateStore.open(f"sqlite:///{db}")
    try:
        held.pipeline_states()  # a pooled connection stays open: this process uses the file
        wal = Path(f"{db}-wal")
        assert wal.exists()
        _another_process_opens_and_closes(db)
        assert wal.exists(), "the other process's close must see this one still open"

        again = StateStore.open(f"sqlite:///{db}")  # as each console request does
        again.close()
        _another_process_opens_and_closes(db)
        assert wal.exists(), "opening the store again dropped this process's SQLite locks"

        held.pipeline_states()
        with held.transaction() as tx:  # and the store is still whole
            tx.pause_pipeline("p", "a reason")
        assert held.pipeline_states()["p"].paused
    finally:
        held.close()
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("
            "'PRAGMA integrity_check').fetchone()[0])",
            str(db),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip() == "ok"


def _cannot_write(store: StateStore) -> str:
    with pytest.raises(StateUnavailableError) as info, store.transaction() as tx:
        tx.pause_pipeline("p", "never written")
    return str(info.value)


def test_a_state_file_deleted_under_a_running_process_is_not_written_again(
    tmp_path: Path,
) -> None:
    """A daemon whose ``state.db`` was deleted went on writing into the deleted file, where
    no other process saw its lease: a ``sync`` started then ran beside it, and both created
    the same customers in HCP. Now its next write (a batch's intents come first) stops."""
    db = tmp_path / "state.db"
    store = StateStore.open(f"sqlite:///{db}")
    try:
        with store.transaction() as tx:
            tx.pause_pipeline("p", "written before")
        for part in ("", "-wal", "-shm"):
            Path(f"{db}{part}").unlink(missing_ok=True)
        message = _cannot_write(store)
        assert f"the state store file {db} was deleted while this process used it" in message
        assert "Stop this process and start it again" in message
        assert not db.exists()  # nothing re-created it either
    finally:
        store.close()
    fresh = StateStore.open(f"sqlite:///{db}")  # as the restarted process does
    try:
        assert "p" not in fresh.pipeline_states()
        with fresh.transaction() as tx:
            tx.pause_pipeline("p", "written after")
    finally:
        fresh.close()


def test_a_state_file_replaced_under_a_running_process_is_not_written_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    other = tmp_path / "backup.db"
    StateStore.open(f"sqlite:///{other}").close()
    store = StateStore.open(f"sqlite:///{db}")
    try:
        os.replace(other, db)  # a backup restored while the process runs
        message = _cannot_write(store)
        assert f"the state store file {db} was replaced by another file" in message
    finally:
        store.close()
