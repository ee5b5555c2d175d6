"""The spreadsheet connector's report of a sheet's structure (``structure``), CSV and xlsx.

A person edits the header of a sheet as freely as its cells. What the connector must tell the
engine before anything is planned: a column the sync uses that is named twice (a
``StructureError``: it cannot tell which one holds the field), the mapped columns a sheet
lacks (renamed or removed: ``Structure.missing``), and rows of which none shows a Sync ID
(``Structure.no_ids``). Real files in a temporary folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openpyxl
import pytest

from syncengine.connector import ConnectorContext, Structure
from syncengine.connectors.memory import MemoryConnector, MemoryOptions
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from syncengine.errors import StructureError
from syncengine.mapping import parse_mapping

HEADER = "Sync ID,First Name,Last Name,Email,Notes"


def csv_books(folder: Path, text: str | None = None) -> SpreadsheetConnector:
    if text is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "customers.csv").write_text(text)
    opts = SpreadsheetOptions(type="spreadsheet", path=str(folder))
    return SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(folder)))


def xlsx_books(path: Path, rows: list[list[Any]] | None = None) -> SpreadsheetConnector:
    if rows is not None:
        book = openpyxl.Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.title = "Customers"
        for row in rows:
            sheet.append(row)
        book.save(path)
    opts = SpreadsheetOptions(type="spreadsheet", path=str(path))
    return SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(path.parent)))


# ------------------------------------------------------------------- a column named twice


def test_a_mapped_column_named_twice_is_a_structure_error_naming_both(tmp_path: Path) -> None:
    conn = csv_books(
        tmp_path, "Sync ID,First Name,Email,Notes,Email\nc1,Ann,ann@example.com,,junk\n"
    )
    for look in (lambda: list(conn.read("customers")), lambda: conn.structure("customers")):
        with pytest.raises(StructureError) as caught:
            look()
        assert str(caught.value) == (
            "books:customers: customers.csv: 2 columns are named Email (columns 3 and 5), so "
            "the sync cannot tell which one holds Email; rename or delete one of them"
        )


def test_names_are_compared_with_spaces_trimmed(tmp_path: Path) -> None:
    conn = csv_books(tmp_path, "Sync ID, Email,First Name,Email \nc1,a@example.com,Ann,junk\n")
    with pytest.raises(StructureError, match=r"columns 2 and 4"):
        list(conn.read("customers"))


def test_the_id_column_named_twice_is_a_structure_error(tmp_path: Path) -> None:
    conn = csv_books(tmp_path, "Sync ID,First Name,Sync ID\nc1,Ann,c2\n")
    with pytest.raises(StructureError, match=r"2 columns are named Sync ID \(columns 1 and 3\)"):
        list(conn.read("customers"))


def test_three_alike_ask_to_rename_all_but_one(tmp_path: Path) -> None:
    conn = csv_books(tmp_path, "Sync ID,Email,Email,Email\nc1,a,b,c\n")
    with pytest.raises(StructureError, match=r"columns 2, 3 and 4\).*all but one of them"):
        list(conn.read("customers"))


def test_an_unmapped_column_named_twice_is_harmless(tmp_path: Path) -> None:
    conn = csv_books(tmp_path, f"{HEADER},Notes\nc1,Ann,Lee,ann@example.com,first,second\n")
    [record] = conn.read("customers")
    assert record.data["Notes"] == "first" and record.data["Email"] == "ann@example.com"
    assert not record.error
    assert conn.structure("customers").no_ids == ""


def test_a_workbook_names_the_columns_by_letter(tmp_path: Path) -> None:
    conn = xlsx_books(
        tmp_path / "books.xlsx",
        [["Sync ID", "First Name", "Email", "Notes", "Email"], ["c1", "Ann", "a@x.com", "", "j"]],
    )
    with pytest.raises(StructureError) as caught:
        list(conn.read("customers"))
    assert str(caught.value) == (
        "books:customers: books.xlsx, sheet Customers: 2 columns are named Email (columns C "
        "and E), so the sync cannot tell which one holds Email; rename or delete one of them"
    )


# ------------------------------------------------------------------ mapped columns missing


def test_a_renamed_or_removed_mapped_column_is_reported_missing(tmp_path: Path) -> None:
    conn = csv_books(tmp_path, "Sync ID,First Name,E-mail,Street\nc1,Ann,ann@example.com,1 Elm\n")
    found = conn.structure("customers")
    assert found.where == "customers.csv"
    assert "Email" in found.missing and "Last Name" in found.missing
    assert "First Name" not in found.missing and "Street" not in found.missing
    assert "Sync ID" not in found.missing and "E-mail" not in found.missing
    [record] = conn.read("customers")  # the renamed column's cells are data like any other
    assert record.data["E-mail"] == "ann@example.com" and "Email" not in record.data


def test_a_sheet_the_sync_creates_or_an_empty_one_lacks_nothing(tmp_path: Path) -> None:
    assert csv_books(tmp_path / "none").structure("customers") == Structure(
        where="customers.csv", absent=True
    )
    assert csv_books(tmp_path / "empty", "").structure("customers") == Structure(
        where="customers.csv"
    )
    assert xlsx_books(tmp_path / "new.xlsx").structure("customers").missing == ()
    assert xlsx_books(tmp_path / "new.xlsx").structure("customers").absent


def test_a_workbook_reports_its_missing_columns(tmp_path: Path) -> None:
    conn = xlsx_books(
        tmp_path / "books.xlsx", [["Sync ID", "First Name", "Mail"], ["c1", "Ann", "a@x.com"]]
    )
    found = conn.structure("customers")
    assert found.where == "books.xlsx, sheet Customers"
    assert "Email" in found.missing and "First Name" not in found.missing


def test_the_missing_columns_follow_the_prepared_mapping(tmp_path: Path) -> None:
    conn = csv_books(tmp_path, "Sync ID,First Name\nc1,Ann\n")
    fields = {
        "first_name": "First Name",
        "lead_source": {"native": "Source", "direction": "read"},
        "company": {"native": "Company", "direction": "write"},
    }
    conn.prepare("customers", parse_mapping({"fields": fields}, entity="customers", source="test"))
    assert conn.structure("customers").missing == ("Source", "Company")


# ----------------------------------------------------------------------- no Sync ID at all


@pytest.mark.parametrize(
    ("text", "no_ids"),
    [
        ("First Name,Email\nAnn,a@x.com\n", "the Sync ID column is missing"),
        ("Sync ID,First Name\n,Ann\n  ,Bob\n", "every Sync ID cell is empty"),
        ("Sync ID,First Name\n,Ann\nc2,Bob\n", ""),
        ("First Name,Email\n", ""),  # no rows: nothing to show an id
        ("First Name,Email\n,\n\n", ""),
    ],
)
def test_rows_without_any_sync_id_are_reported(tmp_path: Path, text: str, no_ids: str) -> None:
    assert csv_books(tmp_path, text).structure("customers").no_ids == no_ids


def test_a_workbook_without_its_id_column_is_reported(tmp_path: Path) -> None:
    conn = xlsx_books(tmp_path / "books.xlsx", [["First Name", "Email"], ["Ann", "a@x.com"]])
    assert conn.structure("customers").no_ids == "the Sync ID column is missing"


def test_a_member_that_is_not_a_sheet_has_nothing_to_report() -> None:
    conn = MemoryConnector(MemoryOptions(type="memory"), ConnectorContext(name="crm"))
    assert conn.structure("customers") == Structure()


# ------------------------------------------------------- the look before the read is current


def test_a_read_after_the_look_sees_an_edit_made_in_between(tmp_path: Path) -> None:
    conn = csv_books(tmp_path, "Sync ID,First Name,Email\nc1,Ann,a@x.com\n")
    assert conn.structure("customers").missing != ()
    (tmp_path / "customers.csv").write_text("Sync ID,First Name,Email\nc1,Anne,a@x.com\n")
    [record] = conn.read("customers")
    assert record.data["First Name"] == "Anne"


def test_a_read_after_the_look_gives_what_a_read_alone_gives(tmp_path: Path) -> None:
    text = "Sync ID,First Name,Email\nc1,Ann,a@x.com\n,Bob,\n"
    looked = csv_books(tmp_path / "a", text)
    looked.structure("customers")
    assert list(looked.read("customers")) == list(csv_books(tmp_path / "b", text).read("customers"))
    looked.update("customers", "c1", {"First Name": "Anne"}, full={})
    looked.flush("customers")
    assert "c1,Anne,a@x.com" in (tmp_path / "a" / "customers.csv").read_text()
