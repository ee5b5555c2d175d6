"""A CSV file is saved in pieces as they are made (``FileTable.serialize`` yields them and
``StoredFile.replace`` writes and hashes each), not built whole in memory three times over;
and values every record repeats are one string, not one per record.

Real files in a temporary folder throughout. ``_ROWS_PER_PIECE`` is made small where a test
needs a row to fall on the boundary between two pieces."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions, csvtable
from syncengine.connectors.spreadsheet.table import STALE_TEMP_S, Sheet, StoredFile, digest
from syncengine.errors import FatalConnectorError
from syncengine.model import norm_enum
from syncengine.transforms import MEMO_SIZE, build_transform

HEADER = "Sync ID,First Name,Last Name,Email,Notes"


def connector(folder: Path) -> SpreadsheetConnector:
    opts = SpreadsheetOptions(type="spreadsheet", path=str(folder))
    return SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(folder)))


def test_a_sheet_of_many_pieces_is_saved_byte_for_byte(tmp_path: Path) -> None:
    """More rows than three pieces hold, a byte-order mark, CRLF rows, a row changed among
    rows kept as read, and new rows: the file is exactly what one piece would have made, and
    what the connector remembers of it is its real digest (the next flush is not refused)."""
    kept = [f"c{n},Name {n},,,\r\n" for n in range(2 * csvtable._ROWS_PER_PIECE + 5)]
    path = tmp_path / "customers.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "\r\n" + "".join(kept)).encode())
    conn = connector(tmp_path)
    assert len(list(conn.read("customers"))) == len(kept)
    conn.update("customers", "c7", {"Last Name": 'Lee, "Jr"'}, full={})
    for n in range(csvtable._ROWS_PER_PIECE + 3):
        conn.create("customers", {"First Name": f"New {n}", "Notes": "a\nb"}, key=f"k{n}")
    conn.flush("customers")

    kept[7] = 'c7,Name 7,"Lee, ""Jr""",,\r\n'
    added = [f'k{n},New {n},,,"a\nb"\r\n' for n in range(csvtable._ROWS_PER_PIECE + 3)]
    expected = b"\xef\xbb\xbf" + (HEADER + "\r\n" + "".join(kept + added)).encode()
    assert path.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.csv"]

    # what it remembers is the file as written: a later write in the same run goes through
    conn.update("customers", "c1", {"Email": "one@example.com"}, full={})
    conn.flush("customers")
    again = connector(tmp_path)
    rows = {r.id: r.data for r in again.read("customers")}
    assert rows["c1"]["Email"] == "one@example.com"
    assert rows["c7"]["Last Name"] == 'Lee, "Jr"'
    assert rows["k4"]["Notes"] == "a\nb"
    assert len(rows) == len(kept) + len(added)


@pytest.mark.parametrize("rows_per_piece", [1, 2, 3])
def test_a_last_line_without_its_newline_gets_one_on_whichever_side_of_a_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows_per_piece: int
) -> None:
    """A file whose last line has no newline, then rows added: the newline goes between
    them whether the two rows fall in one piece or in two."""
    monkeypatch.setattr(csvtable, "_ROWS_PER_PIECE", rows_per_piece)
    path = tmp_path / "customers.csv"
    path.write_bytes(f"{HEADER}\nc1,Ann,,,\nc2,Bob,,,".encode())
    conn = connector(tmp_path)
    list(conn.read("customers"))
    conn.create("customers", {"First Name": "Cy"}, key="c3")
    conn.create("customers", {"First Name": "Di"}, key="c4")
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,,,\nc2,Bob,,,\nc3,Cy,,,\nc4,Di,,,\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "iso2022_jp", "cp1252"])
def test_a_file_in_any_encoding_is_one_text_however_many_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """A codec that starts with a byte-order mark (UTF-16) writes it once, not once a piece,
    and one that keeps a state between characters (ISO-2022-JP) carries it across pieces:
    the file is the whole text encoded at once, and reads back row for row."""
    monkeypatch.setattr(csvtable, "_ROWS_PER_PIECE", 3)
    name = "\u5c71\u7530" if encoding == "iso2022_jp" else "Zo\u00eb"
    rows = [f"c{n},{name} {n}\n" for n in range(10)]
    path = tmp_path / "customers.csv"
    path.write_bytes(("Sync ID,First Name\n" + "".join(rows)).encode(encoding))
    opts = SpreadsheetOptions(type="spreadsheet", path=str(tmp_path), encoding=encoding)
    conn = SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(tmp_path)))
    list(conn.read("customers"))
    conn.update("customers", "c4", {"First Name": f"{name} ({encoding})"}, full={})
    conn.create("customers", {"First Name": name}, key="k1")
    conn.flush("customers")

    rows[4] = f"c4,{name} ({encoding})\n"
    expected = ("Sync ID,First Name\n" + "".join(rows) + f"k1,{name}\n").encode(encoding)
    assert path.read_bytes() == expected
    again = SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(tmp_path)))
    ids = [r.id for r in again.read("customers")]
    assert ids == [f"c{n}" for n in range(10)] + ["k1"]


def test_the_pieces_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serialize`` yields a piece per ``_ROWS_PER_PIECE`` rows: the file's text is never
    whole in memory."""
    monkeypatch.setattr(csvtable, "_ROWS_PER_PIECE", 10)
    conn = connector(tmp_path)
    list(conn.read("customers"))
    for n in range(95):
        conn.create("customers", {"First Name": f"N{n}"}, key=f"k{n:03}")
    work = conn._work["customers"]
    pieces = list(work.table.serialize(Sheet(work.header, list(work.rows.values()))))
    assert len(pieces) == 10  # the header and 95 rows, ten rows at a time
    assert all(piece.count(b"\n") <= 10 for piece in pieces)
    conn.flush("customers")
    assert (tmp_path / "customers.csv").read_bytes() == b"".join(pieces)


def test_an_error_while_the_pieces_are_made_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes(b"Sync ID,First Name\nc1,Ann\n")
    stored = StoredFile(path, connector="books")
    assert stored.read() == b"Sync ID,First Name\nc1,Ann\n"
    seen = stored.seen

    def pieces() -> Iterator[bytes]:
        yield b"Sync ID,First Name\n"
        raise FatalConnectorError("customers.csv cannot hold '\U0001f642' in cp1252")

    with pytest.raises(FatalConnectorError, match="cannot hold"):
        stored.replace(pieces(), "customers")
    assert path.read_bytes() == b"Sync ID,First Name\nc1,Ann\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.csv"]  # no temp file
    assert stored.seen == seen

    stored.replace(bytearray(b"Sync ID,First Name\nc1,Bea\n"), "customers")  # whole, as bytes are
    assert path.read_bytes() == b"Sync ID,First Name\nc1,Bea\n"
    stored.replace(iter([b"Sync ID,First Name\n", b"c1,Anne\n"]), "customers")
    assert path.read_bytes() == b"Sync ID,First Name\nc1,Anne\n"
    assert stored.seen is not None
    assert stored.seen.digest == digest(b"Sync ID,First Name\nc1,Anne\n")
    stored.check_unchanged("customers")  # as it wrote it


def test_an_enum_value_is_the_choice_itself_for_every_record() -> None:
    choices = ("cash", "credit_card", "check")
    first = norm_enum("Credit Card", choices)
    second = norm_enum(" credit-card ", choices)
    assert first == second == "credit_card"
    assert first is choices[1] and second is choices[1]
    with pytest.raises(ValueError, match="use one of: cash, credit_card, check"):
        norm_enum("wire", choices)


def test_records_of_one_day_write_one_date_text() -> None:
    date = build_transform({"name": "date", "format": "%m/%d/%Y"})
    texts = [date.write(f"2025-02-26T{h:02}:{m:02}:00Z") for h in range(24) for m in (5, 40)]
    assert set(texts) == {"02/26/2025"}
    assert len({id(t) for t in texts}) == 1
    # the texts are remembered in a bounded memo, not interned for good (Python 3.12 never
    # frees an interned text): a daemon writing times of day does not keep every one
    stamped = build_transform({"name": "date", "format": "%Y-%m-%d %H:%M:%S"})
    start = dt.datetime(2025, 2, 26, tzinfo=dt.UTC)
    for second in range(70_000):
        stamped.write((start + dt.timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert 0 < len(stamped._texts) <= MEMO_SIZE


def test_rows_the_sync_adds_share_one_location_text(tmp_path: Path) -> None:
    conn = connector(tmp_path)
    list(conn.read("customers"))
    first = conn.create("customers", {"First Name": "Ann"}, key="a")
    second = conn.create("customers", {"First Name": "Bob"}, key="b")
    assert first.location == second.location == "customers.csv (new row)"
    assert first.location is second.location


_KILLED_MID_SAVE = """
import os, signal, sys
from pathlib import Path
from syncengine.connectors.spreadsheet.table import StoredFile

stored = StoredFile(Path(sys.argv[1]), connector="books")
stored.read()

def pieces():
    yield b"Sync ID,First Name\\n"
    os.kill(os.getpid(), signal.SIGKILL)  # the crash point: half the file written
    yield b"c1,Anne\\n"

stored.replace(pieces(), "customers")
"""


def test_the_temp_file_a_killed_save_left_is_removed_by_a_later_save(tmp_path: Path) -> None:
    """A save killed in the middle (SIGKILL, at a fixed point: after its first piece) leaves
    its temp file and the file as it was; a save after it removes that temp file once it is
    ``STALE_TEMP_S`` old, and leaves a younger one (another process's save in progress),
    another file's, and anything else."""
    path = tmp_path / "customers.csv"
    path.write_bytes(b"Sync ID,First Name\nc1,Ann\n")
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, str(path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"Sync ID,First Name\nc1,Ann\n"
    (left,) = [p for p in tmp_path.iterdir() if p.name != "customers.csv"]
    assert left.name.startswith(".customers.csv.") and left.read_bytes() == b"Sync ID,First Name\n"

    old = time.time() - STALE_TEMP_S - 60
    os.utime(left, (old, old))
    young = tmp_path / ".customers.csv.0123456789ab.tmp"
    young.write_bytes(b"another save in progress")
    others = [tmp_path / ".invoices.csv.0123456789ab.tmp", tmp_path / "customers.csv.bak.tmp"]
    for other in others:
        other.write_bytes(b"not this save's")
        os.utime(other, (old, old))

    stored = StoredFile(path, connector="books")
    stored.read()
    stored.replace(b"Sync ID,First Name\nc1,Anne\n", "customers")
    assert path.read_bytes() == b"Sync ID,First Name\nc1,Anne\n"
    assert not left.exists()
    assert young.exists() and all(other.exists() for other in others)
