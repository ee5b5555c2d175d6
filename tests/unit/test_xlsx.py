"""The spreadsheet connector against real .xlsx workbooks (openpyxl, temporary folders)."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import stat
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.styles import Font, PatternFill
from pydantic import ValidationError

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.spreadsheet import (
    DEFAULT_COLUMNS,
    SpreadsheetConnector,
    SpreadsheetOptions,
)
from syncengine.errors import (
    ConflictingWriteError,
    FatalConnectorError,
    RecordError,
    RetriableError,
    StructureError,
)
from syncengine.mapping import load_mapping, parse_mapping

INVOICE_HEADER = [
    "Sync ID", "Invoice #", "Customer Email", "Status", "Amount", "Balance", "Due Date", "Created"
]  # fmt: skip
"""An Invoices sheet as a bookkeeper made it before Subtotal and Tax existed (``row``'s cells;
the default header of a new sheet is ``DEFAULT_COLUMNS``)."""


def connector(path: Path, **options: Any) -> SpreadsheetConnector:
    opts = SpreadsheetOptions(type="spreadsheet", path=str(path), **options)
    return SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(path.parent)))


def records(conn: SpreadsheetConnector, entity: str = "invoices") -> dict[str, NativeRecord]:
    return {r.id: r for r in conn.read(entity)}


def workbook(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    """A workbook as a person would save it: the sheets given, in order."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        ws = book.create_sheet(title)
        for row in rows:
            ws.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


def invoices(path: Path, *rows: list[Any], extra: dict[str, list[list[Any]]] | None = None) -> Path:
    return workbook(path, {"Invoices": [INVOICE_HEADER, *rows], **(extra or {})})


def values(path: Path, title: str, *, data_only: bool = False) -> list[list[Any]]:
    book = openpyxl.load_workbook(path, data_only=data_only)
    return [list(r) for r in book[title].iter_rows(values_only=True)]


def with_cached_values(path: Path, title: str, cached: dict[str, str]) -> None:
    """Give formula cells a last calculated value, as a spreadsheet program's save does
    (openpyxl writes formulas without one)."""
    book = openpyxl.load_workbook(path)
    index = book.sheetnames.index(title) + 1
    part = f"xl/worksheets/sheet{index}.xml"
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == part:
                text = data.decode()
                for ref, value in cached.items():
                    text, count = re.subn(
                        rf'(<c r="{ref}"[^>]*>)(<f>[^<]*</f>)<v\s*/>',
                        rf"\g<1>\g<2><v>{value}</v>",
                        text,
                    )
                    assert count == 1, f"no formula cell {ref} in {part}"
                data = text.encode()
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())


def row(number: str, amount: Any, *, sync_id: str = "", status: str = "open") -> list[Any]:
    return [sync_id or None, number, "ann@example.com", status, amount, 0, None, None]


# ------------------------------------------------------------------------ a new workbook


def test_a_new_workbook_gets_all_three_sheets_with_the_mapped_headers(tmp_path: Path) -> None:
    path = tmp_path / "books" / "books.xlsx"
    conn = connector(path)
    assert records(conn) == {}
    assert not path.parent.exists()  # reading never writes
    conn.create("invoices", {"Invoice #": "INV-1", "Amount": "10.00"}, key="k1")
    conn.flush("invoices")
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Customers", "Invoices", "Payments"]
    for entity in ("customers", "invoices", "payments"):
        ws = book[entity.capitalize()]
        header = [c.value for c in ws[1]]
        assert header == ["Sync ID", *DEFAULT_COLUMNS[entity]]
        assert ws["A1"].font.b
    assert [c.value for c in book["Invoices"][2]][:2] == ["k1", "INV-1"]
    assert book["Customers"].max_row == 1
    assert list(connector(path).read("payments")) == []


def test_the_header_of_a_new_sheet_follows_the_mapping_in_force(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    mapping = parse_mapping(
        {
            "fields": {
                "invoice_number": {"native_key": "No."},
                "amount": {"native": "Total", "transform": "cents"},
                "status": {"native": "State", "direction": "read"},
            }
        },
        entity="invoices",
        source="mine.toml",
    )
    conn = connector(path)
    conn.prepare("invoices", mapping)
    conn.create("invoices", {"No.": "7", "Total": "5.00"}, key="k1")
    conn.flush("invoices")
    assert values(path, "Invoices") == [["Sync ID", "No.", "Total"], ["k1", "7", 5]]
    # only the sheets of prepared entities (the pipeline's), whose mappings are known
    assert openpyxl.load_workbook(path).sheetnames == ["Invoices"]
    conn.prepare("payments", load_mapping("spreadsheet", "payments"))
    list(conn.read("payments"))
    conn.flush("payments")
    assert openpyxl.load_workbook(path).sheetnames == ["Invoices", "Payments"]
    assert values(path, "Payments")[0] == ["Sync ID", *DEFAULT_COLUMNS["payments"]]


def test_missing_workbook_or_sheet_without_create_missing_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    with pytest.raises(FatalConnectorError, match=r"books\.xlsx does not exist"):
        records(connector(path, create_missing=False))
    workbook(path, {"Customers": [["Sync ID", "Email"]]})
    with pytest.raises(FatalConnectorError, match=r"books\.xlsx has no sheet Invoices"):
        records(connector(path, create_missing=False))


def test_sheet_titles_match_whatever_their_case_and_can_be_renamed(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "books.xlsx",
        {
            "invoices": [INVOICE_HEADER, row("INV-1", 5, sync_id="k1")],
            "Clients": [["Sync ID", "Email"], ["c1", "ann@example.com"]],
        },
    )
    conn = connector(path, sheets={"customers": "Clients"})
    assert records(conn)["k1"].location == "books.xlsx, sheet invoices, row 2"
    assert records(conn, "customers")["c1"].data == {"Email": "ann@example.com"}


# ------------------------------------------------------------------------ reading values


def test_cell_values_are_read_as_text_the_mappings_understand(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "books.xlsx",
        {
            "Invoices": [
                [*INVOICE_HEADER, "Count", "Flag", "Ratio", "Zip", "When", "Seen"],
                [
                    "k1",
                    1001,
                    "ann@example.com",
                    "open",
                    1234.5,
                    Decimal("0.10"),
                    dt.datetime(2024, 3, 1),
                    dt.datetime(2024, 2, 1, 9, 30),
                    3,
                    True,
                    2.675,
                    "02134",
                    dt.datetime(2024, 3, 1, 14, 5),
                    dt.date(2024, 3, 2),
                ],
            ]
        },
    )
    data = records(connector(path))["k1"].data
    assert data == {
        "Invoice #": "1001",
        "Customer Email": "ann@example.com",
        "Status": "open",
        "Amount": "1234.5",
        "Balance": "0.1",
        "Due Date": "2024-03-01",
        "Created": "2024-02-01",  # the date format of the column's transform
        "Count": "3",
        "Flag": "TRUE",
        "Ratio": "2.675",
        "Zip": "02134",
        "When": "2024-03-01 14:05:00",
        "Seen": "2024-03-02",
    }


def test_values_through_the_default_mappings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    mapping = load_mapping("spreadsheet", "invoices", timezone="America/Chicago")
    canonical = {
        "invoice_number": "INV-0042",
        "customer": "ann@example.com",
        "status": "paid",
        "subtotal": 114039,
        "tax_amount": 9411,
        "amount": 123450,
        "balance": 0,
        "due_at": "2024-03-01T06:00:00Z",  # midnight in Chicago
        "created_at": "2024-02-15T06:00:00Z",
    }
    conn = connector(path, timezone="America/Chicago")
    conn.prepare("invoices", mapping)
    created = conn.create("invoices", mapping.to_native(canonical), key="k1")
    conn.flush("invoices")
    again = connector(path, timezone="America/Chicago")
    again.prepare("invoices", mapping)
    read = records(again)["k1"]
    assert read.data == created.data
    assert read.native_hash() == created.native_hash()
    assert mapping.to_canonical(read.data) == canonical
    ws = openpyxl.load_workbook(path)["Invoices"]
    subtotal, tax, amount, balance, due = ws["E2"], ws["F2"], ws["G2"], ws["H2"], ws["I2"]
    assert (subtotal.value, subtotal.number_format) == (1140.39, "#,##0.00")
    assert (tax.value, tax.number_format) == (94.11, "#,##0.00")
    assert (amount.value, amount.number_format) == (1234.5, "#,##0.00")
    assert (balance.value, balance.number_format) == (0, "#,##0.00")
    assert due.value == dt.datetime(2024, 3, 1) and due.is_date
    assert due.number_format == "yyyy-mm-dd"


def test_dates_with_a_time_become_datetime_cells(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    mapping = parse_mapping(
        {
            "fields": {
                "paid_at": {
                    "native": "Paid",
                    "transform": {
                        "name": "date",
                        "format": "%m/%d/%Y %H:%M",
                        "timezone": "Europe/Berlin",
                    },
                },
                "amount": {"native": "Amount", "transform": {"name": "cents", "places": 3}},
            }
        },
        entity="payments",
        source="mine.toml",
    )
    conn = connector(path)
    conn.prepare("payments", mapping)
    native = mapping.to_native({"paid_at": "2024-07-01T12:30:00Z", "amount": 1234567})
    assert native == {"Paid": "07/01/2024 14:30", "Amount": "1234.567"}
    conn.create("payments", native, key="p1")
    conn.flush("payments")
    ws = openpyxl.load_workbook(path)["Payments"]
    paid, amount = ws["B2"], ws["C2"]
    assert paid.value == dt.datetime(2024, 7, 1, 14, 30)
    assert paid.number_format == "mm/dd/yyyy hh:mm"
    assert (amount.value, amount.number_format) == (1234.567, "#,##0.000")
    again = connector(path)
    again.prepare("payments", mapping)
    assert mapping.to_canonical(records(again, "payments")["p1"].data) == {
        "paid_at": "2024-07-01T12:30:00Z",
        "amount": 1234567,
    }


def test_text_columns_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    conn = connector(path)
    written = {
        "First Name": "=SUM(A1)",
        "Zip": "02134",
        "Company": "#N/A",
        "Tags": "line one\r\nline two",
        "Street": "  1 Main St  ",
    }
    created = conn.create("customers", written, key="c1")
    assert created.data["Tags"] == "line one\nline two"  # what a workbook gives back
    conn.flush("customers")
    ws = openpyxl.load_workbook(path)["Customers"]
    cells = {ws.cell(1, c).value: ws.cell(2, c) for c in range(1, ws.max_column + 1)}
    for name in ("First Name", "Zip", "Company"):
        assert cells[name].data_type == "s" and cells[name].value == written[name]
    assert cells["First Name"].quotePrefix  # text even once someone edits the cell
    assert not cells["Zip"].quotePrefix
    read = records(connector(path), "customers")["c1"]
    assert read.data == created.data
    assert read.data["Street"] == "  1 Main St  "


def test_a_value_no_cell_can_hold_is_a_record_error(tmp_path: Path) -> None:
    conn = connector(tmp_path / "books.xlsx")
    with pytest.raises(RecordError, match="control character"):
        conn.create("customers", {"First Name": "Ann\x07"}, key="c1")
    with pytest.raises(RecordError, match="does not fit in a workbook cell"):
        conn.create("customers", {"First Name": "x" * 40000}, key="c1")


def test_a_cell_that_already_shows_the_value_is_left_alone(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "books.xlsx", {"Customers": [["Sync ID", "Zip", "Notes"], ["c1", 2134, 7]]}
    )
    conn = connector(path)
    records(conn, "customers")
    conn.update("customers", "c1", {"Zip": "2134", "Notes": "07"}, full={})
    conn.flush("customers")
    assert values(path, "Customers")[1] == ["c1", 2134, "07"]  # same number kept; text is text


# ---------------------------------------------------------------------------- preserving


def test_styles_widths_formats_and_other_sheets_survive_a_write(tmp_path: Path) -> None:
    path = invoices(
        tmp_path / "books.xlsx",
        row("INV-1", 100, sync_id="k1"),
        row("INV-2", 200, sync_id="k2"),
        extra={"Notes": [["keep me", 42]]},
    )
    book = openpyxl.load_workbook(path)
    ws = book["Invoices"]
    ws.column_dimensions["B"].width = 31
    ws["E2"].number_format = '"$"#,##0.00'
    ws["E2"].font = Font(bold=True, color="FF0000")
    ws["D3"].fill = PatternFill("solid", fgColor="FFFF00")
    ws["B2"].number_format = "@"
    book["Notes"]["C1"] = "=B1*2"
    book.save(path)

    conn = connector(path)
    records(conn)
    conn.update("invoices", "k1", {"Amount": "150.25", "Status": "paid"}, full={})
    conn.flush("invoices")

    book = openpyxl.load_workbook(path)
    ws = book["Invoices"]
    assert book.sheetnames == ["Invoices", "Notes", "Customers", "Payments"]
    assert ws.column_dimensions["B"].width == 31
    amount = ws["E2"]
    assert amount.value == 150.25
    assert amount.number_format == '"$"#,##0.00'  # the bookkeeper's format, kept
    assert amount.font.b and amount.font.color.rgb == "00FF0000"
    assert ws["D2"].value == "paid"
    assert ws["D3"].fill.fgColor.rgb == "00FFFF00"
    assert ws["B2"].number_format == "@"
    assert ws["E3"].value == 200 and ws["E3"].number_format == "General"  # untouched
    assert [list(r) for r in book["Notes"].iter_rows(values_only=True)] == [
        ["keep me", 42, "=B1*2"]
    ]


def test_new_rows_take_the_style_of_the_row_above(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 100, sync_id="k1"))
    book = openpyxl.load_workbook(path)
    book["Invoices"]["B2"].font = Font(italic=True)
    book.save(path)
    conn = connector(path)
    records(conn)
    conn.create("invoices", {"Invoice #": "INV-2", "Amount": "1.00"}, key="k2")
    conn.flush("invoices")
    ws = openpyxl.load_workbook(path)["Invoices"]
    assert ws["B3"].value == "INV-2" and ws["B3"].font.i
    assert ws["E3"].number_format == "#,##0.00"


def test_untouched_workbook_is_not_rewritten(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 100, sync_id="k1"))
    before = path.stat()
    conn = connector(path)
    records(conn)
    conn.update("invoices", "k1", {"Amount": "100.00"}, full={})  # the same amount
    conn.flush("invoices")
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_delete_empties_the_row_and_nothing_moves(tmp_path: Path) -> None:
    path = invoices(
        tmp_path / "books.xlsx",
        row("INV-1", 1, sync_id="k1"),
        row("INV-2", 2, sync_id="k2"),
        row("INV-3", 3, sync_id="k3"),
    )
    conn = connector(path)
    records(conn)
    conn.delete("invoices", "k2")
    conn.delete("invoices", "k2")
    conn.create("invoices", {"Invoice #": "INV-4"}, key="k4")
    conn.flush("invoices")
    rows = values(path, "Invoices")
    assert [r[:2] for r in rows] == [
        ["Sync ID", "Invoice #"],
        ["k1", "INV-1"],
        [None, None],
        ["k3", "INV-3"],
        ["k4", "INV-4"],
    ]
    assert [(r.id, r.location) for r in connector(path).read("invoices")] == [
        ("k1", "books.xlsx, sheet Invoices, row 2"),
        ("k3", "books.xlsx, sheet Invoices, row 4"),
        ("k4", "books.xlsx, sheet Invoices, row 5"),
    ]


def test_rows_a_person_left_without_sync_id_get_one(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 1, sync_id="k1"), [], row("INV-2", 2))
    conn = connector(path)
    found = list(conn.read("invoices"))
    assert [(r.id, r.provisional) for r in found] == [("k1", False), ("@line:4", True)]
    assert found[1].location == "books.xlsx, sheet Invoices, row 4"
    conn.update("invoices", "@line:4", {}, full={}, new_id="k2")
    conn.flush("invoices")
    conn.update("invoices", "@line:4", {"Status": "paid"}, full={})  # still valid this run
    conn.flush("invoices")
    assert values(path, "Invoices")[3][:4] == ["k2", "INV-2", "ann@example.com", "paid"]


def test_a_sheet_without_the_id_column_gets_it_as_its_last_column(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "books.xlsx",
        {"Customers": [["First Name", "Email"], ["Ann", "ann@example.com"]]},
    )
    conn = connector(path)
    (found,) = conn.read("customers")
    assert found.id == "@line:2"
    conn.update("customers", found.id, {}, full={}, new_id="c1")
    conn.flush("customers")
    assert values(path, "Customers") == [
        ["First Name", "Email", "Sync ID"],
        ["Ann", "ann@example.com", "c1"],
    ]


# ------------------------------------------------------------------------------ formulas


def formula_book(tmp_path: Path) -> Path:
    path = invoices(
        tmp_path / "books.xlsx",
        [*row("INV-1", 100, sync_id="k1"), None],
        [*row("INV-2", 200, sync_id="k2"), None],
        extra={"Summary": [["Total", "=SUM(Invoices!E2:E3)"]]},
    )
    book = openpyxl.load_workbook(path)
    ws = book["Invoices"]
    ws["I1"] = "Net"
    ws["F2"] = "=E2-40"  # Balance, a mapped column
    ws["F3"] = "=E3-50"
    ws["I2"] = "=E2*0.9"  # not mapped
    ws["I3"] = "=E3*0.9"
    book.save(path)
    with_cached_values(path, "Invoices", {"F2": "60", "F3": "150", "I2": "90", "I3": "180"})
    with_cached_values(path, "Summary", {"B1": "300"})
    return path


def test_formula_cells_are_read_as_their_calculated_values(tmp_path: Path) -> None:
    found = records(connector(formula_book(tmp_path)))
    assert found["k1"].data["Balance"] == "60"
    assert found["k2"].data["Net"] == "180"


def test_formulas_are_kept_with_their_values_unless_the_value_changes(tmp_path: Path) -> None:
    path = formula_book(tmp_path)
    conn = connector(path)
    records(conn)
    conn.update("invoices", "k1", {"Status": "paid", "Balance": "60.00"}, full={})  # same value
    conn.update("invoices", "k2", {"Balance": "0.00"}, full={})  # a different value
    conn.flush("invoices")
    ws = openpyxl.load_workbook(path)["Invoices"]
    assert ws["F2"].value == "=E2-40"
    assert ws["I2"].value == "=E2*0.9" and ws["I3"].value == "=E3*0.9"
    assert ws["F3"].value == 0 and ws["F3"].number_format == "#,##0.00"
    # the calculated values are still there for the next read, and for anyone else's
    assert values(path, "Summary", data_only=True) == [["Total", 300]]
    found = records(connector(path))
    assert (found["k1"].data["Balance"], found["k1"].data["Net"]) == ("60", "90")
    assert found["k2"].data["Balance"] == "0"


# --------------------------------------------------------------------------- no clobbering


def test_a_workbook_open_in_another_program_is_not_written(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 1, sync_id="k1"))
    original = path.read_bytes()
    for lock in ("~$books.xlsx", ".~lock.books.xlsx#"):
        conn = connector(path)
        records(conn)
        conn.update("invoices", "k1", {"Status": "paid"}, full={})
        (tmp_path / lock).write_text("someone")
        with pytest.raises(RetriableError) as caught:
            conn.flush("invoices")
        message = str(caught.value)
        assert str(path) in message and lock in message and "Close the workbook" in message
        assert path.read_bytes() == original
        (tmp_path / lock).unlink()
        conn.flush("invoices")  # closed: now it goes through
        assert values(path, "Invoices")[1][3] == "paid"
        path.write_bytes(original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books.xlsx"]


def test_a_workbook_changed_since_it_was_read_is_not_written(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 1, sync_id="k1"))
    conn = connector(path)
    records(conn)
    conn.update("invoices", "k1", {"Status": "paid"}, full={})
    invoices(path, row("INV-1", 1, sync_id="k1"), row("INV-9", 9, sync_id="k9"))
    edited = path.read_bytes()
    with pytest.raises(ConflictingWriteError, match=r"books\.xlsx was modified"):
        conn.flush("invoices")
    assert path.read_bytes() == edited
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books.xlsx"]
    with pytest.raises(ConflictingWriteError):
        conn.update("invoices", "k1", {"Status": "paid"}, full={})
    assert set(records(conn)) == {"k1", "k9"}  # read again: all is well
    conn.update("invoices", "k1", {"Status": "paid"}, full={})
    conn.flush("invoices")
    assert [r[3] for r in values(path, "Invoices")] == ["Status", "paid", "open"]


def test_one_workbook_serves_every_entity_and_its_own_saves(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    conn = connector(path)
    records(conn, "customers")
    conn.create("customers", {"Email": "ann@example.com"}, key="c1")
    conn.flush("customers")
    records(conn, "invoices")
    conn.create("invoices", {"Invoice #": "INV-1", "Customer Email": "ann@example.com"}, key="k1")
    conn.flush("invoices")
    records(conn, "payments")
    conn.create("payments", {"Invoice #": "INV-1", "Amount": "5.00"}, key="p1")
    # customers changes again, read before the invoices save: the sync's own save is no conflict
    conn.update("customers", "c1", {"First Name": "Ann"}, full={})
    conn.flush("payments")
    conn.flush("customers")
    again = connector(path)
    assert records(again, "customers")["c1"].data["First Name"] == "Ann"
    assert set(records(again, "invoices")) == {"k1"}
    assert records(again, "payments")["p1"].data["Amount"] == "5"


def test_a_change_by_someone_else_stops_the_sheets_read_before_it(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    conn = connector(path)
    records(conn, "customers")
    conn.create("customers", {"Email": "ann@example.com"}, key="c1")
    conn.flush("customers")
    conn.update("customers", "c1", {"First Name": "Ann"}, full={})  # pending
    book = openpyxl.load_workbook(path)
    book["Customers"]["B2"] = "Anna"  # a person types in the workbook meanwhile
    book.save(path)
    records(conn, "invoices")  # sees the new version
    with pytest.raises(ConflictingWriteError, match="was modified"):
        conn.flush("customers")
    assert values(path, "Customers")[1][1] == "Anna"


def test_save_is_atomic_and_keeps_the_file_mode(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 1, sync_id="k1"))
    path.chmod(0o640)
    inode = path.stat().st_ino
    conn = connector(path)
    records(conn)
    conn.update("invoices", "k1", {"Status": "paid"}, full={})
    conn.flush("invoices")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books.xlsx"]


def test_a_save_that_would_lose_parts_is_refused(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 1, sync_id="k1"))
    with zipfile.ZipFile(path, "a") as package:
        package.writestr("xl/media/image1.png", b"\x89PNG picture openpyxl cannot keep")
    original = path.read_bytes()
    conn = connector(path)
    records(conn)
    conn.update("invoices", "k1", {"Status": "paid"}, full={})
    with pytest.raises(FatalConnectorError, match=r"would lose .*pictures.*nothing was written"):
        conn.flush("invoices")
    assert path.read_bytes() == original


def test_an_unreadable_workbook_is_fatal_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "books.xlsx"
    path.write_bytes(b"Sync ID,Email\nc1,ann@example.com\n")
    with pytest.raises(StructureError, match=r"books\.xlsx is not a readable \.xlsx"):
        records(connector(path))
    assert path.read_bytes() == b"Sync ID,Email\nc1,ann@example.com\n"


def test_a_workbook_with_a_damaged_part_is_a_structure_error_and_untouched(
    tmp_path: Path,
) -> None:
    """A deflate stream that does not decompress (zlib.error), in a part openpyxl itself
    would not read: refused before anything is read, naming the file, the part and the fix."""
    path = tmp_path / "books.xlsx"
    book = openpyxl.Workbook()
    book.save(path)
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("_rels/.rels")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 2, start + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StructureError, match=r"_rels/\.rels is damaged \(zlib\.error: ") as caught:
        records(connector(path))
    assert str(path) in str(caught.value) and "Restore it from a backup" in str(caught.value)
    assert path.read_bytes() == bytes(data)


# -------------------------------------------------------------------------- bad rows


def test_bad_rows_are_reported_with_sheet_and_row(tmp_path: Path) -> None:
    path = invoices(
        tmp_path / "books.xlsx",
        row("INV-1", "twelve", sync_id="k1"),
        row("INV-2", 5, sync_id="k2", status="lost"),
        [*row("INV-3", 5, sync_id="k3")[:6], "03/01/2024", None],
        row("INV-4", 5, sync_id="k1"),
        row("INV-5", 5, sync_id="k5"),
    )
    mapping = load_mapping("spreadsheet", "invoices")
    conn = connector(path)
    conn.prepare("invoices", mapping)
    found = list(conn.read("invoices"))
    problems = {}
    for record in found:
        if record.error:
            problems[record.location] = record.error
            continue
        try:
            mapping.to_canonical(record.data, location=record.location)
        except RecordError as exc:
            problems[record.location] = str(exc)
    assert set(problems) == {f"books.xlsx, sheet Invoices, row {n}" for n in (2, 3, 4, 5)}
    assert "rows 2 and 5 share Sync ID k1" in problems["books.xlsx, sheet Invoices, row 2"]
    assert "books.xlsx, sheet Invoices, row 3" in problems["books.xlsx, sheet Invoices, row 3"]
    assert "lost" in problems["books.xlsx, sheet Invoices, row 3"]
    assert "'03/01/2024' is not a date" in problems["books.xlsx, sheet Invoices, row 4"]
    assert mapping.to_canonical(records(conn)["k5"].data)["amount"] == 500


def test_the_non_numeric_amount_is_named(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", "twelve", sync_id="k1"))
    record = records(connector(path))["k1"]
    mapping = load_mapping("spreadsheet", "invoices")
    with pytest.raises(RecordError, match=r"sheet Invoices, row 2.*'twelve' is not an amount"):
        mapping.to_canonical(record.data, location=record.location)


# ------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"path": "books.xlsx", "timezone": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({"path": "books.xls"}, r"\.xls workbooks are not supported"),
        ({"path": "books.xlsx", "files": {"customers": "c.csv"}}, "rename its sheets"),
        ({"path": "books", "sheets": {"customers": "Clients"}}, "rename its files"),
        ({"path": "books.xlsx", "sheets": {"customers": "a/b"}}, "cannot be a sheet title"),
        ({"path": "books.xlsx", "sheets": {"jobs": "Jobs"}}, "unknown entity 'jobs'"),
        ({"path": "books.xlsx", "sheets": {"customers": "X", "invoices": "x"}}, "share one"),
    ],
)
def test_bad_options_are_rejected_with_the_fix(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SpreadsheetOptions(type="spreadsheet", **options)


def test_the_timezone_option_is_kept_for_the_mappings() -> None:
    opts = SpreadsheetOptions(type="spreadsheet", path="books.xlsx", timezone="America/Chicago")
    assert opts.timezone == "America/Chicago"
    assert SpreadsheetOptions(type="spreadsheet", path="books").timezone is None


def test_flush_of_a_new_file_needs_no_read_first(tmp_path: Path) -> None:
    conn = connector(tmp_path / "books.xlsx")
    conn.flush("invoices")  # nothing read, nothing pending: nothing to do
    assert not (tmp_path / "books.xlsx").exists()
    assert os.listdir(tmp_path) == []


def test_a_formula_never_calculated_in_a_mapped_column_is_a_row_error(tmp_path: Path) -> None:
    path = invoices(
        tmp_path / "books.xlsx",
        [*row("INV-1", 100, sync_id="k1"), "=E2*2"],
        row("INV-2", 200, sync_id="k2"),
    )
    book = openpyxl.load_workbook(path)
    book["Invoices"]["I1"] = "Double"
    book["Invoices"]["F3"] = "=E3-10"  # Balance: mapped, no calculated value (openpyxl saved it)
    book.save(path)
    found = records(connector(path))
    assert not found["k1"].error  # column I is not mapped: its missing value harms nobody
    assert found["k2"].error == (
        "books.xlsx, sheet Invoices, row 3: Balance holds a formula whose value was never "
        "calculated (the workbook was last saved by a program that does not calculate "
        "formulas); open it in Excel or LibreOffice, save it, and sync again"
    )
    with_cached_values(path, "Invoices", {"F3": "190"})
    found = records(connector(path))
    assert not found["k2"].error and found["k2"].data["Balance"] == "190"


def test_a_spreadsheet_error_in_a_mapped_column_is_a_row_error_never_a_value(
    tmp_path: Path,
) -> None:
    # openpyxl reads an error cell as if it held the text "#N/A": synced, HCP got that zip
    path = invoices(
        tmp_path / "books.xlsx",
        [*row("INV-1", 100, sync_id="k1"), "x"],
        row("INV-2", 200, sync_id="k2"),
        row("INV-3", 300, sync_id="k3"),
        row("INV-4", 400, sync_id="k4"),
    )
    book = openpyxl.load_workbook(path)
    sheet = book["Invoices"]
    sheet["I1"] = "Note"
    for ref, error in (("I2", "#REF!"), ("C3", "#N/A"), ("F4", "#DIV/0!"), ("E4", "#VALUE!")):
        sheet[ref] = error
        sheet[ref].data_type = "e"  # as Excel saves a formula's error, or one typed as such
    sheet["C5"] = "#N/A"
    sheet["C5"].data_type = "s"  # text that only looks like an error: a value like any other
    book.save(path)
    found = records(connector(path))
    assert not found["k1"].error  # column I is not mapped
    assert found["k2"].error == (
        "books.xlsx, sheet Invoices, row 3: Customer Email holds #N/A, a spreadsheet error, "
        "not a value; correct the cell (or the formula behind it) and sync again"
    )
    assert found["k3"].error == (
        "books.xlsx, sheet Invoices, row 4: Amount holds #VALUE!, Balance holds #DIV/0!, a "
        "spreadsheet error, not a value; correct the cells (or the formula behind them) and "
        "sync again"
    )
    assert not found["k4"].error and found["k4"].data["Customer Email"] == "#N/A"


def test_new_columns_go_right_of_data_in_columns_nobody_named(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "books.xlsx",
        {"Customers": [["Sync ID", "Email"], ["c1", "ann@example.com", "a note without a header"]]},
    )
    conn = connector(path)
    assert records(conn, "customers")["c1"].data == {"Email": "ann@example.com"}
    conn.update("customers", "c1", {"Company": "Acme"}, full={})
    conn.flush("customers")
    assert values(path, "Customers") == [
        ["Sync ID", "Email", None, "Company"],
        ["c1", "ann@example.com", "a note without a header", "Acme"],
    ]


def test_features_openpyxl_would_drop_stop_the_save(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 1, sync_id="k1"))
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(
                    b"</worksheet>",
                    b'<extLst><ext uri="{00000000-0000-0000-0000-00000000000A}"'
                    b' xmlns:x="urn:example"><x:sparklines/></ext></extLst></worksheet>',
                )
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())
    original = path.read_bytes()
    conn = connector(path)
    records(conn)
    conn.update("invoices", "k1", {"Status": "paid"}, full={})
    with pytest.raises(FatalConnectorError, match="extension is not supported and will be removed"):
        conn.flush("invoices")
    assert path.read_bytes() == original


def test_find_matches_values_as_a_workbook_holds_them(tmp_path: Path) -> None:
    path = invoices(tmp_path / "books.xlsx", row("INV-1", 1234.5, sync_id="k1"))
    conn = connector(path)
    found = conn.find("invoices", {"Invoice #": "INV-1", "Amount": "1234.50", "Status": "open"})
    assert [r.id for r in found] == ["k1"]
    assert conn.find("invoices", {"Invoice #": "INV-1", "Amount": "1234.51"}) == []
