"""A cell too big to sync (over 128 KiB) is a row error, in a CSV file and in a workbook: the
row is reported by file, row and column, the other rows sync, and the row is kept as it was
through the next write. A value too big for a CSV cell is refused as a record error before
anything is written (a workbook cell refuses more than Excel's 32,767 characters already)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from syncengine.errors import RecordError

BIG = "pasted " * (200 * 1024 // 7 + 1)  # just over 200 KiB of text
LIMIT = "more than the 131,072 (128 KiB) a cell may hold"


def connector(path: Path, **options: Any) -> SpreadsheetConnector:
    opts = SpreadsheetOptions(type="spreadsheet", path=str(path), **options)
    return SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(path.parent)))


# ------------------------------------------------------------------------------ CSV


def csv_file(folder: Path) -> tuple[Path, list[str]]:
    lines = [
        "Sync ID,First Name,Last Name,Email,Company\r\n",
        "c1,Ann,Lee,ann@example.com,Lee Ltd\r\n",
        f'c2,Bob,Big,bob@example.com,"{BIG}\r\nsecond line"\r\n',
        f"c3,Cy,Wide,cy@example.com,{BIG}\r\n",
        "c4,Di,Last,di@example.com,\r\n",
    ]
    path = folder / "customers.csv"
    path.write_bytes("".join(lines).encode())
    return path, lines


def test_a_csv_cell_over_128_kib_is_a_row_error_naming_file_line_and_column(
    tmp_path: Path,
) -> None:
    csv_file(tmp_path)
    read = {r.id: r for r in connector(tmp_path).read("customers")}
    assert list(read) == ["c1", "c2", "c3", "c4"]
    assert read["c1"].error == "" and read["c4"].error == ""
    assert read["c1"].data["Company"] == "Lee Ltd"
    size = f"{len(BIG) + len(chr(13) + chr(10) + 'second line'):,}"
    assert read["c2"].error == (
        f"customers.csv line 3: the Company cell holds {size} characters, {LIMIT}; shorten it "
        "(the row is left as it is and not synced until then); it runs over 2 lines: if it "
        'should be several rows, close or remove the stray " that joined them'
    )
    assert read["c3"].error == (
        f"customers.csv line 5: the Company cell holds {len(BIG):,} characters, {LIMIT}; "
        "shorten it (the row is left as it is and not synced until then)"
    )


def test_the_big_rows_are_written_back_as_they_were_when_others_change(tmp_path: Path) -> None:
    path, lines = csv_file(tmp_path)
    conn = connector(tmp_path)
    list(conn.read("customers"))
    conn.update("customers", "c1", {"Company": "Lee & Sons"}, full={})
    conn.delete("customers", "c4")
    conn.create("customers", {"First Name": "Eve", "Email": "eve@example.com"}, key="c5")
    conn.flush("customers")
    assert path.read_bytes().decode() == "".join(
        [
            lines[0],
            "c1,Ann,Lee,ann@example.com,Lee & Sons\r\n",
            lines[2],
            lines[3],
            "c5,Eve,,eve@example.com,\r\n",
        ]
    )


def test_a_value_over_128_kib_is_not_written_to_a_csv_cell(tmp_path: Path) -> None:
    path, _lines = csv_file(tmp_path)
    before = path.read_bytes()
    conn = connector(tmp_path)
    list(conn.read("customers"))
    too_big = "x" * (128 * 1024 + 1)
    with pytest.raises(RecordError) as caught:
        conn.update("customers", "c1", {"Company": too_big}, full={})
    assert str(caught.value) == (
        "customers.csv: the Company value holds 131,073 characters, more than the 131,072 "
        "(128 KiB) a cell of customers.csv may hold; shorten it where it was entered"
    )
    with pytest.raises(RecordError):
        conn.create("customers", {"Notes": too_big}, key="c9")
    conn.flush("customers")
    assert path.read_bytes() == before
    # exactly 128 KiB still fits
    conn.update("customers", "c1", {"Company": "y" * (128 * 1024)}, full={})
    conn.flush("customers")
    assert {r.id: r.error for r in connector(tmp_path).read("customers")}["c1"] == ""


# ------------------------------------------------------------------------------ workbook


def big_workbook(path: Path) -> Path:
    """A workbook whose row 3 holds a 200 KiB Company cell: no spreadsheet program writes
    one (Excel stops at 32,767 characters), but another program may; openpyxl would cut it,
    so the text is put into the sheet's XML directly."""
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "Customers"
    ws.append(["Sync ID", "First Name", "Last Name", "Email", "Company"])
    ws.append(["c1", "Ann", "Lee", "ann@example.com", "Lee Ltd"])
    ws.append(["c2", "Bob", "Big", "bob@example.com", "BIG-CELL-PLACEHOLDER"])
    ws.append(["c3", "Cy", "Small", "cy@example.com", ""])
    saved = io.BytesIO()
    book.save(saved)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(saved.getvalue())) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        found = 0
        for info in src.infolist():
            data = src.read(info)
            found += data.count(b"BIG-CELL-PLACEHOLDER")
            dst.writestr(info, data.replace(b"BIG-CELL-PLACEHOLDER", BIG.encode()))
        assert found == 1
    path.write_bytes(out.getvalue())
    return path


def test_a_workbook_cell_over_128_kib_is_a_row_error_and_kept_through_a_save(
    tmp_path: Path,
) -> None:
    path = big_workbook(tmp_path / "books.xlsx")
    conn = connector(path)
    read = {r.id: r for r in conn.read("customers")}
    assert {k: r.error for k, r in read.items() if k != "c2"} == {"c1": "", "c3": ""}
    assert read["c2"].error == (
        f"books.xlsx, sheet Customers, row 3: the Company cell holds {len(BIG):,} characters, "
        f"{LIMIT}; shorten it (the row is left as it is and not synced until then)"
    )
    conn.update("customers", "c1", {"Company": "Lee & Sons"}, full={})
    conn.flush("customers")
    conn.close()
    book = openpyxl.load_workbook(path)
    rows = [list(r) for r in book["Customers"].iter_rows(values_only=True)]
    assert rows == [
        ["Sync ID", "First Name", "Last Name", "Email", "Company"],
        ["c1", "Ann", "Lee", "ann@example.com", "Lee & Sons"],
        ["c2", "Bob", "Big", "bob@example.com", BIG],
        ["c3", "Cy", "Small", "cy@example.com", None],
    ]
