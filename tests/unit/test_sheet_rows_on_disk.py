"""Rows the sync added to a CSV file wait on disk once saved (``rows.SheetRows``), and nothing
a person or the engine can see changes for it.

Real files in temporary folders. The property runs one sequence of creates, updates, deletes,
lookups and saves twice, with the rows parked after each save and with parking turned off,
and compares every file saved and every record answered; it also checks that the rows saved
really left memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from syncengine.connectors.spreadsheet.rows import SheetRows
from syncengine.errors import NotFoundError, UnavailableError

COLUMNS = ("First Name", "Last Name", "Email", "Notes")

# text a bookkeeper's cells hold: separators, quotes, line breaks of every style, formula
# triggers, accents and characters beyond the basic plane
_CELL = st.text(
    alphabet=st.sampled_from([*"ab ,;\"'=+-@\t\r\n", "é", "ß", "\u5c71", "\U0001f642"]), max_size=8
)
_VALUES = st.dictionaries(st.sampled_from(COLUMNS), _CELL, max_size=4)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), _VALUES),
        st.tuples(st.just("update"), st.integers(0, 30), _VALUES),
        st.tuples(st.just("delete"), st.integers(0, 30)),
        st.tuples(st.just("get"), st.integers(0, 30)),
        st.tuples(st.just("flush")),
    ),
    max_size=40,
)


def _connector(folder: Path, encoding: str = "utf-8") -> SpreadsheetConnector:
    opts = SpreadsheetOptions(type="spreadsheet", path=str(folder), encoding=encoding)
    return SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(folder)))


def _answer(record: NativeRecord | None) -> Any:
    return None if record is None else (record.id, record.data, record.location)


def _play(folder: Path, loaded: str, ops: list[tuple[Any, ...]]) -> tuple[list[Any], list[int]]:
    """Run ``ops`` against a CSV file holding ``loaded``; (what was answered and saved, the
    rows parked after each save)."""
    folder.mkdir()
    path = folder / "customers.csv"
    path.write_text(loaded, encoding="utf-8", newline="")
    conn = _connector(folder)
    seen: list[Any] = [sorted((r.id, r.data) for r in conn.read("customers"))]
    parked: list[int] = []
    keys: list[str] = ["c1", "c2"]
    for op in ops:
        kind = op[0]
        if kind == "create":
            key = f"k{len(keys)}"
            keys.append(key)
            seen.append(_answer(conn.create("customers", op[1], key=key)))
        elif kind == "flush":
            conn.flush("customers")
            seen.append(path.read_bytes())
            parked.append(conn._work["customers"].rows.parked)
        else:
            key = keys[op[1] % len(keys)]
            try:
                if kind == "update":
                    seen.append(_answer(conn.update("customers", key, op[2], full={})))
                elif kind == "delete":
                    conn.delete("customers", key)
                    seen.append(("deleted", key))
                else:
                    seen.append(_answer(conn.get("customers", key)))
            except NotFoundError as exc:
                seen.append(("not found", str(exc)))
    conn.flush("customers")
    seen.append(path.read_bytes())
    again = _connector(folder)
    seen.append([(r.id, r.data) for r in again.read("customers")])
    conn.close()
    return seen, parked


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS, crlf=st.booleans())
def test_rows_waiting_on_disk_change_nothing_that_is_saved_or_answered(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]], crlf: bool
) -> None:
    newline = "\r\n" if crlf else "\n"
    loaded = newline.join(
        ["Sync ID,First Name,Last Name,Email,Notes", "c1,Ann,,a@x.com,", "c2,Bob"]
    )
    base = tmp_path_factory.mktemp("rows")
    parked_run, parked = _play(base / "parked", loaded, ops)
    with mock.patch.object(SheetRows, "park", lambda self, allowed=True: None):
        in_memory, _ = _play(base / "in-memory", loaded, ops)
    assert parked_run == in_memory
    # and the rows were parked: after a save, every row the sync added that is still there
    created_alive: set[str] = set()
    flushes = iter(parked)
    keys = ["c1", "c2"]
    for op in ops:
        if op[0] == "create":
            keys.append(f"k{len(keys)}")
            created_alive.add(keys[-1])
        elif op[0] == "delete":
            created_alive.discard(keys[op[1] % len(keys)])
        elif op[0] == "flush":
            assert next(flushes) == len(created_alive)


def test_a_parked_row_is_found_changed_and_saved_again(tmp_path: Path) -> None:
    """A row saved, then updated (its quoted line break kept), then looked up, then saved
    again: the file holds the change, and the row waits on disk again after the save."""
    path = tmp_path / "customers.csv"
    path.write_bytes(b"Sync ID,First Name,Notes\r\nc1,Ann,\r\n")
    conn = _connector(tmp_path)
    list(conn.read("customers"))
    conn.create("customers", {"First Name": "Bo, Jr", "Notes": 'one\r\ntwo "2"'}, key="k1")
    conn.create("customers", {"First Name": "Cy"}, key="k2")
    conn.flush("customers")
    rows = conn._work["customers"].rows
    assert rows.parked == 2
    assert path.read_bytes() == (
        b'Sync ID,First Name,Notes\r\nc1,Ann,\r\n"k1","Bo, Jr","one\r\ntwo ""2"""\r\nk2,Cy,\r\n'
    ).replace(b'"k1"', b"k1")
    updated = conn.update("customers", "k1", {"First Name": "Bo"}, full={})
    assert updated.data["Notes"] == 'one\r\ntwo "2"' and updated.data["First Name"] == "Bo"
    assert rows.parked == 1  # taken back: it is in memory now, and changed
    got = conn.get("customers", "k2")
    assert got is not None and got.data["First Name"] == "Cy"
    conn.flush("customers")
    assert rows.parked == 2
    assert path.read_bytes() == (
        b'Sync ID,First Name,Notes\r\nc1,Ann,\r\nk1,Bo,"one\r\ntwo ""2"""\r\nk2,Cy,\r\n'
    )
    conn.delete("customers", "k2")
    conn.flush("customers")
    assert path.read_bytes() == (
        b'Sync ID,First Name,Notes\r\nc1,Ann,\r\nk1,Bo,"one\r\ntwo ""2"""\r\n'
    )
    spill = rows._spill
    # k1 and k2 saved, then again once taken back (k1 changed, k2 looked up)
    assert spill is not None and len(spill) == 4
    closed = mock.Mock()
    spill.close = closed  # type: ignore[method-assign]
    del rows, spill
    conn.release("customers")
    closed.assert_called_once_with()  # the temporary file goes with the working copy


def test_a_read_being_iterated_outlives_the_working_copy_it_reads(tmp_path: Path) -> None:
    """A pass over the rows, begun before a save and a release, still gives every row."""
    (tmp_path / "customers.csv").write_text("Sync ID,First Name\nc1,Ann\n")
    conn = _connector(tmp_path)
    list(conn.read("customers"))
    conn.create("customers", {"First Name": "Bo"}, key="k1")
    conn.flush("customers")  # k1 waits on disk
    conn.create("customers", {"First Name": "Cy"}, key="k2")  # pending: not loaded again
    rows = iter(conn.read("customers"))
    assert next(rows).id == "c1"
    conn.flush("customers")
    conn.release("customers")
    assert [r.id for r in rows] == ["k1", "k2"]


@pytest.mark.parametrize("encoding", ["utf-16", "cp1252", "iso2022_jp"])
def test_parked_rows_are_saved_in_the_files_encoding(tmp_path: Path, encoding: str) -> None:
    name = "\u5c71\u7530" if encoding == "iso2022_jp" else "Zo\u00eb"
    path = tmp_path / "customers.csv"
    path.write_bytes(f"Sync ID,First Name\nc1,{name}\n".encode(encoding))
    conn = _connector(tmp_path, encoding)
    list(conn.read("customers"))
    conn.create("customers", {"First Name": f"{name} 2"}, key="k1")
    conn.flush("customers")
    conn.create("customers", {"First Name": f"{name} 3"}, key="k2")
    conn.flush("customers")
    assert conn._work["customers"].rows.parked == 2
    expected = f"Sync ID,First Name\nc1,{name}\nk1,{name} 2\nk2,{name} 3\n"
    assert path.read_bytes() == expected.encode(encoding)


def test_a_full_temporary_directory_keeps_the_rows_in_memory(tmp_path: Path) -> None:
    """The temporary directory refusing the rows (full, gone) does not fail the save that
    was made: the rows stay in memory and are saved as before."""
    (tmp_path / "customers.csv").write_text("Sync ID,First Name\n")
    conn = _connector(tmp_path)
    list(conn.read("customers"))
    conn.create("customers", {"First Name": "Ann"}, key="k1")
    with mock.patch(
        "syncengine.spill.Spill.put", side_effect=UnavailableError("no space left on device")
    ):
        conn.flush("customers")
    rows = conn._work["customers"].rows
    assert rows.parked == 0
    conn.create("customers", {"First Name": "Bob"}, key="k2")
    conn.flush("customers")
    assert rows.parked == 0  # it does not try again in this working copy
    assert (tmp_path / "customers.csv").read_text() == "Sync ID,First Name\nk1,Ann\nk2,Bob\n"
