"""The spreadsheet connector against real CSV files in a temporary folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.spreadsheet import (
    DEFAULT_COLUMNS,
    SpreadsheetConnector,
    SpreadsheetOptions,
)
from syncengine.connectors.spreadsheet.formulas import neutralise, restore
from syncengine.errors import (
    ConflictingWriteError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
)
from syncengine.mapping import load_mapping, parse_mapping

HEADER = "Sync ID,First Name,Last Name,Email,Notes"


def connector(folder: Path, **options: Any) -> SpreadsheetConnector:
    opts = SpreadsheetOptions(type="spreadsheet", path=str(folder), **options)
    return SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(folder)))


def write(folder: Path, text: str, name: str = "customers.csv", *, bom: bool = False) -> Path:
    path = folder / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def read(conn: SpreadsheetConnector) -> list[NativeRecord]:
    return list(conn.read("customers"))


def by_id(conn: SpreadsheetConnector) -> dict[str, NativeRecord]:
    return {r.id: r for r in read(conn)}


# ------------------------------------------------------------------------------ the basics


def test_describes_itself(tmp_path: Path) -> None:
    conn = connector(tmp_path)
    assert conn.type_name == "spreadsheet"
    assert conn.entities() == ("customers", "invoices", "payments", "line_items")
    caps = conn.capabilities("customers")
    assert (caps.read, caps.create, caps.update, caps.delete, caps.assigns_ids) == (
        True,
        True,
        True,
        True,
        True,
    )
    assert conn.buffered_writes


def test_reads_rows_keyed_by_sync_id_without_the_id_column(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann,Lee,ann@example.com,\nc2,Bob,,,likes dogs\n")
    records = read(connector(tmp_path))
    assert [r.id for r in records] == ["c1", "c2"]
    first = records[0]
    assert first.data == {
        "First Name": "Ann",
        "Last Name": "Lee",
        "Email": "ann@example.com",
        "Notes": "",
    }
    assert first.location == "customers.csv line 2"
    assert not first.provisional and not first.error
    assert records[1].location == "customers.csv line 3"


def test_short_rows_read_missing_cells_as_empty(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann\n")
    (record,) = read(connector(tmp_path))
    assert record.data == {"First Name": "Ann", "Last Name": "", "Email": "", "Notes": ""}
    assert not record.error


def test_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    write(tmp_path, f'{HEADER}\nc1,Ann,,,"two\nlines"\n\nc2,Bob,,,\n')
    records = read(connector(tmp_path))
    assert [(r.id, r.location) for r in records] == [
        ("c1", "customers.csv line 2"),
        ("c2", "customers.csv line 5"),
    ]
    assert records[0].data["Notes"] == "two\nlines"


def test_missing_file_reads_empty_and_is_created_with_the_default_header(tmp_path: Path) -> None:
    folder = tmp_path / "books" / "2024"
    conn = connector(folder)
    assert read(conn) == []
    assert not folder.exists()  # reading never writes
    conn.create("customers", {"First Name": "Ann", "Email": "ann@example.com"}, key="k1")
    conn.flush("customers")
    lines = (folder / "customers.csv").read_text().split("\n")
    assert lines[0] == ",".join(("Sync ID", *DEFAULT_COLUMNS["customers"]))
    assert lines[1] == "k1,Ann,,ann@example.com,,,,,,,,,"
    assert lines[2:] == [""]


def test_flush_of_a_missing_file_writes_a_header_only_file(tmp_path: Path) -> None:
    conn = connector(tmp_path)
    assert read(conn) == []
    conn.flush("customers")
    text = (tmp_path / "customers.csv").read_text()
    assert text == (
        "Sync ID,First Name,Last Name,Email,Mobile,Home Phone,Work Phone,Company,Tags,"
        "Street,City,State,Zip\n"
    )


def test_relative_path_is_resolved_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sheets").mkdir()
    write(tmp_path / "sheets", f"{HEADER}\nc1,Ann,,,\n")
    opts = SpreadsheetOptions(type="spreadsheet", path="sheets")
    conn = SpreadsheetConnector(opts, ConnectorContext(name="books", base_dir=str(tmp_path)))
    assert [r.id for r in read(conn)] == ["c1"]


def test_missing_file_without_create_missing_is_fatal(tmp_path: Path) -> None:
    conn = connector(tmp_path, create_missing=False)
    with pytest.raises(FatalConnectorError, match=r"customers\.csv does not exist"):
        read(conn)


def test_files_option_renames_the_file(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann,,,\n", name="clients.csv")
    conn = connector(tmp_path, files={"customers": "clients.csv"})
    (record,) = read(conn)
    assert record.location == "clients.csv line 2"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"files": {"jobs": "x.csv"}}, "unknown entity 'jobs'"),
        ({"files": {"customers": "clients.xlsx"}}, "not a supported file type"),
        ({"files": {"customers": "../clients.csv"}}, "must be a file name"),
        ({"encoding": "klingon"}, "unknown encoding 'klingon'"),
        ({"delimiter": ";;"}, "one character"),
        ({"id_column": "  "}, "must name a column"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_rejected_with_the_fix(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SpreadsheetOptions(type="spreadsheet", path=".", **options)


# ------------------------------------------------------------------------- preservation


def test_untouched_rows_columns_and_formatting_survive_an_update(tmp_path: Path) -> None:
    original = (
        "Sync ID,First Name,Email,Internal Ref,Notes\r\n"
        'c1,"Ann","ann@example.com",R-1,"said ""hi"""\r\n'
        "\r\n"
        "c2,Bob,bob@example.com,R-2,\r\n"
        ",,,,\r\n"
        "c3,Cy,cy@example.com,R-3,last\r\n"
    )
    path = write(tmp_path, original, bom=True)
    conn = connector(tmp_path)
    records = by_id(conn)
    assert set(records) == {"c1", "c2", "c3"}  # blank rows are skipped
    assert records["c1"].data["First Name"] == "Ann"  # the BOM is not part of the header
    assert records["c1"].data["Notes"] == 'said "hi"'

    conn.update("customers", "c2", {"Email": "robert@example.com"}, full={})
    conn.flush("customers")

    expected = original.replace("bob@example.com", "robert@example.com")
    assert path.read_bytes() == b"\xef\xbb\xbf" + expected.encode()


def test_flush_without_changes_does_not_touch_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    before = path.stat()
    conn = connector(tmp_path)
    read(conn)
    conn.flush("customers")
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_lf_files_stay_lf_and_a_missing_final_newline_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\nc2,Bob,,,")
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"Last Name": "Lee"}, full={})
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,Lee,,\nc2,Bob,,,"

    conn.create("customers", {"First Name": "Cy"}, key="c3")
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,Lee,,\nc2,Bob,,,\nc3,Cy,,,\n"


def test_crlf_files_get_crlf_rows(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\r\nc1,Ann,,,\r\n")
    conn = connector(tmp_path)
    read(conn)
    conn.create("customers", {"First Name": "Bob", "Notes": "a, b"}, key="c2")
    conn.flush("customers")
    assert path.read_bytes() == f'{HEADER}\r\nc1,Ann,,,\r\nc2,Bob,,,"a, b"\r\n'.encode()


def test_bom_is_kept_and_new_utf8_files_have_none(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n", bom=True)
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"First Name": "Anne"}, full={})
    conn.flush("customers")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfSync ID,")

    other = tmp_path / "new"
    fresh = connector(other)
    read(fresh)
    fresh.create("customers", {"First Name": "Zoë"}, key="z")
    fresh.flush("customers")
    assert (other / "customers.csv").read_bytes().startswith(b"Sync ID,")
    assert by_id(connector(other))["z"].data["First Name"] == "Zoë"


def test_other_encodings_and_delimiters_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes("Sync ID;First Name;Notes\nc1;Zoë;a,b\n".encode("cp1252"))
    conn = connector(tmp_path, encoding="cp1252", delimiter=";")
    assert by_id(conn)["c1"].data == {"First Name": "Zoë", "Notes": "a,b"}
    conn.update("customers", "c1", {"Notes": "café; bar"}, full={})
    conn.flush("customers")
    assert path.read_bytes() == 'Sync ID;First Name;Notes\nc1;Zoë;"café; bar"\n'.encode("cp1252")


def test_a_value_the_encoding_cannot_hold_is_a_record_error(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes(b"Sync ID,First Name\nc1,Ann\n")
    conn = connector(tmp_path, encoding="cp1252")
    read(conn)
    with pytest.raises(RecordError, match=r"cannot be stored in customers\.csv"):
        conn.update("customers", "c1", {"First Name": "Ann 🙂"}, full={})
    conn.flush("customers")
    assert path.read_bytes() == b"Sync ID,First Name\nc1,Ann\n"


# --------------------------------------------------------------------------------- writes


def test_create_appends_a_row_and_returns_it_as_the_next_read_sees_it(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    conn = connector(tmp_path)
    read(conn)
    created = conn.create("customers", {"First Name": "Bob", "Email": "bob@example.com"}, key="k2")
    assert created.id == "k2" and not created.provisional
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,,,\nk2,Bob,,bob@example.com,\n"
    assert by_id(connector(tmp_path))["k2"].data == created.data


def test_create_with_an_existing_key_is_refused(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    conn = connector(tmp_path)
    read(conn)
    with pytest.raises(RecordError, match="Sync ID c1 is already used"):
        conn.create("customers", {"First Name": "Bob"}, key="c1")


def test_update_changes_only_the_patched_cells(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,Lee,ann@example.com,keep me\n")
    conn = connector(tmp_path)
    read(conn)
    result = conn.update(
        "customers", "c1", {"Email": "ann@new.example"}, full={"Email": "ann@new.example"}
    )
    assert result is not None
    assert result.data == {
        "First Name": "Ann",
        "Last Name": "Lee",
        "Email": "ann@new.example",
        "Notes": "keep me",
    }
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,Lee,ann@new.example,keep me\n"


def test_update_of_an_unknown_id_is_not_found(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    conn = connector(tmp_path)
    read(conn)
    with pytest.raises(NotFoundError):
        conn.update("customers", "nope", {"Email": "x"}, full={})
    with pytest.raises(NotFoundError):
        conn.update("customers", "@line:9", {"Email": "x"}, full={})


def test_new_columns_are_appended_to_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "Sync ID,First Name\nc1,Ann\n")
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"Mobile": "+15551234567"}, full={})
    conn.create("customers", {"First Name": "Bob", "Tags": "vip"}, key="c2")
    conn.flush("customers")
    assert path.read_text() == (
        "Sync ID,First Name,Mobile,Tags\nc1,Ann,+15551234567\nc2,Bob,,vip\n"
    )
    assert by_id(connector(tmp_path))["c1"].data == {
        "First Name": "Ann",
        "Mobile": "+15551234567",
        "Tags": "",
    }


def test_delete_removes_only_that_row(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n\nc2,Bob,,,\nc3,Cy,,,\n")
    conn = connector(tmp_path)
    read(conn)
    conn.delete("customers", "c2")
    conn.delete("customers", "c2")  # already gone: nothing to do
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,,,\n\nc3,Cy,,,\n"


def test_writes_before_flush_are_not_on_disk(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"First Name": "Anne"}, full={})
    assert path.read_text() == f"{HEADER}\nc1,Ann,,,\n"
    assert by_id(conn)["c1"].data["First Name"] == "Anne"  # the member's own view has it


def test_find_by_sync_id_or_by_values(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann,Lee,ann@example.com,\nc2,Ann,Ray,,\n,Ann,Lee,,\n")
    conn = connector(tmp_path)
    assert [r.id for r in conn.find("customers", {"Sync ID": "c2"})] == ["c2"]
    found = conn.find("customers", {"First Name": "Ann", "Last Name": "Lee", "Email": ""})
    assert [r.id for r in found] == ["c1", "@line:4"]
    assert conn.find("customers", {"Company": "Acme"}) == []


# ------------------------------------------------------------------------ provisional rows


def test_rows_without_sync_id_are_provisional_and_get_their_id_by_update(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n,Bob,Ray,bob@example.com,\n  ,Cy,,,\n")
    conn = connector(tmp_path)
    records = read(conn)
    assert [(r.id, r.provisional) for r in records] == [
        ("c1", False),
        ("@line:3", True),
        ("@line:4", True),
    ]
    assert records[1].data["Email"] == "bob@example.com"

    result = conn.update("customers", "@line:3", {}, full={}, new_id="k-bob")
    assert result is not None and result.id == "k-bob" and not result.provisional
    conn.update("customers", "@line:4", {"Email": "cy@example.com"}, full={}, new_id="k-cy")
    conn.flush("customers")
    assert path.read_text() == (
        f"{HEADER}\nc1,Ann,,,\nk-bob,Bob,Ray,bob@example.com,\nk-cy,Cy,,cy@example.com,\n"
    )
    assert [r.id for r in read(connector(tmp_path))] == ["c1", "k-bob", "k-cy"]


def test_assigning_a_used_sync_id_is_refused(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann,,,\n,Bob,,,\n")
    conn = connector(tmp_path)
    read(conn)
    with pytest.raises(RecordError, match="Sync ID c1 is already used"):
        conn.update("customers", "@line:3", {}, full={}, new_id="c1")


def test_a_header_without_the_id_column_gets_it_first_on_the_next_write(tmp_path: Path) -> None:
    path = write(tmp_path, "First Name,Email\nAnn,ann@example.com\n\nBob,bob@example.com\n")
    conn = connector(tmp_path)
    records = read(conn)
    assert [(r.id, r.provisional) for r in records] == [("@line:2", True), ("@line:4", True)]
    assert records[0].data == {"First Name": "Ann", "Email": "ann@example.com"}
    conn.update("customers", "@line:4", {}, full={}, new_id="k-bob")
    conn.flush("customers")
    assert path.read_text() == (
        "Sync ID,First Name,Email\n,Ann,ann@example.com\n\nk-bob,Bob,bob@example.com\n"
    )


# --------------------------------------------------------------------- atomic, no clobber


def test_flush_replaces_the_file_atomically_keeping_its_mode(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    path.chmod(0o640)
    inode = path.stat().st_ino
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"First Name": "Anne"}, full={})
    conn.flush("customers")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.csv"]  # no temp file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert path.read_text() == f"{HEADER}\nc1,Anne,,,\n"


def test_flush_refuses_when_the_file_changed_since_it_was_read(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"First Name": "Anne"}, full={})
    edited = f"{HEADER}\nc1,Ann,,,\nc2,Added by a person,,,\n"
    path.write_text(edited)
    with pytest.raises(ConflictingWriteError, match=r"customers\.csv was modified"):
        conn.flush("customers")
    assert path.read_text() == edited
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.csv"]
    # nothing more is written until the file is read again, then all is well
    with pytest.raises(ConflictingWriteError):
        conn.update("customers", "c1", {"First Name": "Anne"}, full={})
    with pytest.raises(ConflictingWriteError):
        conn.flush("customers")
    assert [r.id for r in read(conn)] == ["c1", "c2"]
    conn.update("customers", "c1", {"First Name": "Anne"}, full={})
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Anne,,,\nc2,Added by a person,,,\n"


def test_a_same_size_edit_with_the_old_mtime_is_still_caught(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    info = path.stat()
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"Email": "a@example.com"}, full={})
    path.write_text(f"{HEADER}\nc1,Bob,,,\n")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    with pytest.raises(ConflictingWriteError):
        conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Bob,,,\n"


def test_flush_refuses_when_the_file_was_deleted_or_created_meanwhile(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n")
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"Email": "a@example.com"}, full={})
    path.unlink()
    with pytest.raises(ConflictingWriteError, match="was deleted"):
        conn.flush("customers")
    assert not path.exists()

    fresh = connector(tmp_path / "other")
    read(fresh)
    fresh.create("customers", {"First Name": "Ann"}, key="k1")
    (tmp_path / "other").mkdir()
    write(tmp_path / "other", f"{HEADER}\n")
    with pytest.raises(ConflictingWriteError, match="was created by someone else"):
        fresh.flush("customers")
    assert (tmp_path / "other" / "customers.csv").read_text() == f"{HEADER}\n"


def test_consecutive_flushes_in_one_run_keep_working(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,\n,Bob,,,\n")
    conn = connector(tmp_path)
    read(conn)
    conn.update("customers", "c1", {"Last Name": "Lee"}, full={})
    conn.flush("customers")
    # provisional ids stay valid for the rest of the run
    conn.update("customers", "@line:3", {}, full={}, new_id="k-bob")
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,Lee,,\nk-bob,Bob,,,\n"


# ------------------------------------------------------------------ formula neutralisation


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=SUM(A1)", "'=SUM(A1)"),
        ("@x", "'@x"),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("\t=1", "'\t=1"),
        ("+15551234567", "+15551234567"),
        ("+1 (555) 123-4567", "+1 (555) 123-4567"),
        ("-5", "-5"),
        ("-12.50", "-12.50"),
        ("plain", "plain"),
        ("'=already quoted", "''=already quoted"),
        ("'quoted", "'quoted"),
        ("", ""),
    ],
)
def test_neutralise(value: str, cell: str) -> None:
    assert neutralise(value) == cell
    assert restore(cell) == value


@given(st.text(alphabet=st.sampled_from("'=+-@\t\r 1.()aZ"), max_size=8) | st.text())
def test_neutralise_then_restore_is_the_identity(value: str) -> None:
    assert restore(neutralise(value)) == value


def test_formulas_are_written_neutralised_and_read_back_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n")
    conn = connector(tmp_path)
    read(conn)
    values = {"First Name": "=SUM(A1)", "Last Name": "@x", "Email": "+15551234567", "Notes": "-5"}
    created = conn.create("customers", values, key="k1")
    assert created.data == values
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nk1,'=SUM(A1),'@x,+15551234567,-5\n"

    again = connector(tmp_path)
    assert by_id(again)["k1"].data == values
    # writing what was read changes nothing: a fixed point
    again.update("customers", "k1", values, full=values)
    again.flush("customers")
    assert path.read_text() == f"{HEADER}\nk1,'=SUM(A1),'@x,+15551234567,-5\n"


def test_a_formula_a_person_typed_into_the_file_is_left_alone(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nc1,Ann,,,=1+1\n")
    conn = connector(tmp_path)
    assert by_id(conn)["c1"].data["Notes"] == "=1+1"
    conn.update("customers", "c1", {"Last Name": "Lee"}, full={})
    conn.flush("customers")
    assert path.read_text() == f"{HEADER}\nc1,Ann,Lee,,=1+1\n"


# -------------------------------------------------------------------------- broken files


def test_a_ragged_row_is_reported_and_preserved(tmp_path: Path) -> None:
    header = ",".join(("Sync ID", *DEFAULT_COLUMNS["customers"]))
    ragged = "c6,Ann,Lee,ann@example.com,,,,Acme, Inc,vip,1 Main St,Springfield, IL,IL,62701"
    rows = [f"c{n},P{n},,,,,,,,,,," for n in range(1, 6)]
    original = "\n".join([header, *rows, ragged, "c7,Bob,,,,,,,,,,,", ""])
    path = write(tmp_path, original)
    conn = connector(tmp_path)
    records = by_id(conn)
    bad = records["c6"]
    assert bad.error == (
        "customers.csv line 7: 15 cells but the header has 13 columns (is there an unquoted comma?)"
    )
    assert bad.location == "customers.csv line 7"
    assert bad.data == {}
    assert not records["c7"].error

    with pytest.raises(RecordError, match="line 7"):
        conn.update("customers", "c6", {"Email": "x@example.com"}, full={})
    with pytest.raises(RecordError, match="cannot add column 'Notes'"):
        conn.create("customers", {"Notes": "hi"}, key="c8")

    conn.update("customers", "c7", {"Email": "bob@example.com"}, full={})
    conn.flush("customers")
    text = path.read_text()
    assert text == original.replace("c7,Bob,,,", "c7,Bob,,bob@example.com,")
    assert ragged in text.split("\n")


def test_extra_empty_cells_at_the_end_of_a_row_are_not_ragged(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\nc1,Ann,,,,,,\n")
    (record,) = read(connector(tmp_path))
    assert not record.error
    assert record.data["First Name"] == "Ann"


def test_undecodable_bytes_are_fatal_and_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    original = b"Sync ID,First Name\nc1,Ann\nc2,Ren\xe9e\n"
    path.write_bytes(original)
    conn = connector(tmp_path)
    with pytest.raises(FatalConnectorError) as caught:
        read(conn)
    message = str(caught.value)
    assert "customers.csv is not valid utf-8" in message
    assert "byte offset 32 (line 3)" in message
    assert "encoding" in message
    assert path.read_bytes() == original
    assert by_id(connector(tmp_path, encoding="cp1252"))["c2"].data["First Name"] == "Renée"


def test_duplicate_sync_ids_are_reported_on_both_rows(tmp_path: Path) -> None:
    write(
        tmp_path,
        f"{HEADER}\nc1,Ann,,,\nc2,Bob,,,\nabc,Cy,,,\nc4,Di,,,\nc5,Ed,,,\n"
        "c6,Flo,,,\nc7,Gus,,,\nabc,Hal,,,\n",
    )
    conn = connector(tmp_path)
    dupes = [r for r in read(conn) if r.id == "abc"]
    assert [r.location for r in dupes] == ["customers.csv line 4", "customers.csv line 9"]
    message = "lines 4 and 9 share Sync ID abc; give one of them a new (blank) Sync ID"
    assert [r.error for r in dupes] == [message, message]
    assert dupes[1].data["First Name"] == "Hal"
    with pytest.raises(RecordError, match="lines 4 and 9 share Sync ID abc"):
        conn.update("customers", "abc", {"Email": "x"}, full={})


def test_an_unclosed_quote_is_fatal_instead_of_swallowing_the_rest(tmp_path: Path) -> None:
    write(tmp_path, f'{HEADER}\nc1,Ann,,,"oops\nc2,Bob,,,\nc3,Cy,,,\n')
    with pytest.raises(FatalConnectorError, match=r"customers\.csv line 2: a quoted cell"):
        read(connector(tmp_path))


def test_a_custom_id_column(tmp_path: Path) -> None:
    path = write(tmp_path, "Name,Ref\nAnn,r1\nBob,\n")
    conn = connector(tmp_path, id_column="Ref")
    records = read(conn)
    assert [(r.id, r.data) for r in records] == [
        ("r1", {"Name": "Ann"}),
        ("@line:3", {"Name": "Bob"}),
    ]
    conn.update("customers", "@line:3", {}, full={}, new_id="r2")
    conn.flush("customers")
    assert path.read_text() == "Name,Ref\nAnn,r1\nBob,r2\n"


def test_a_sync_id_that_looks_like_a_provisional_id_is_reported(tmp_path: Path) -> None:
    write(tmp_path, f"{HEADER}\n@line:3,Ann,,,\n,Bob,,,\n")
    records = read(connector(tmp_path))
    assert "@line:3 looks like the sync's name for a row without one" in records[0].error
    assert (records[1].id, records[1].provisional, records[1].error) == ("@line:3", True, "")


# ------------------------------------------------------------------ invoices and payments


def test_invoices_and_payments_files_start_with_their_mapped_headers(tmp_path: Path) -> None:
    conn = connector(tmp_path)
    for entity in ("invoices", "payments"):
        assert list(conn.read(entity)) == []
        conn.flush(entity)
    assert (tmp_path / "invoices.csv").read_text() == (
        "Sync ID,Invoice #,Customer Email,Status,Subtotal,Tax,Amount,Balance,Due Date,Created\n"
    )
    payments = (tmp_path / "payments.csv").read_text()
    assert payments == "Sync ID,Invoice #,Amount,Refunded,Method,Status,Date\n"
    assert not (tmp_path / "customers.csv").exists()  # a folder gets only the files it syncs


def test_invoices_round_trip_through_the_default_mapping(tmp_path: Path) -> None:
    mapping = load_mapping("spreadsheet", "invoices", timezone="America/Chicago")
    canonical = {
        "invoice_number": "INV-7",
        "customer": "ann@example.com",
        "status": "sent",
        "subtotal": 114000,
        "tax_amount": 9450,
        "amount": 123450,
        "balance": 3,
        "due_at": "2024-03-01T06:00:00Z",
    }
    conn = connector(tmp_path, timezone="America/Chicago")
    conn.prepare("invoices", mapping)
    created = conn.create("invoices", mapping.to_native(canonical), key="k1")
    conn.flush("invoices")
    assert (tmp_path / "invoices.csv").read_text().split("\n")[1] == (
        "k1,INV-7,ann@example.com,sent,1140.00,94.50,1234.50,0.03,2024-03-01,"
    )
    (read_back,) = connector(tmp_path).read("invoices")
    assert read_back.data == created.data
    assert mapping.to_canonical(read_back.data) == canonical


def test_payments_keep_what_a_person_typed_and_report_bad_rows_by_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        "Sync ID,Invoice #,Amount,Method,Status,Date\n"
        'p1,INV-7,"$1,234.50",check,succeeded,2024-03-01\n'
        "p2,INV-7,ten,cash,succeeded,2024-03-01\n"
        "p3,INV-7,5,cash,succeeded,03/01/2024\n",
        name="payments.csv",
    )
    mapping = load_mapping("spreadsheet", "payments")
    found = {r.id: r for r in connector(tmp_path).read("payments")}
    assert mapping.to_canonical(found["p1"].data)["amount"] == 123450
    with pytest.raises(RecordError, match=r"payments\.csv line 3.*'ten' is not an amount"):
        mapping.to_canonical(found["p2"].data, location=found["p2"].location)
    with pytest.raises(RecordError, match=r"payments\.csv line 4.*not a date"):
        mapping.to_canonical(found["p3"].data, location=found["p3"].location)


def test_a_refund_above_its_payment_is_that_rows_problem_naming_the_field(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        "Sync ID,Invoice #,Amount,Refunded,Method,Status,Date\n"
        "p1,INV-7,100.00,25.50,check,succeeded,2024-03-01\n"
        "p2,INV-7,100.00,100.01,cash,succeeded,2024-03-01\n"
        "p3,INV-7,100.00,-1,cash,succeeded,2024-03-01\n"
        "p4,INV-7,100.00,100,cash,refunded,2024-03-01\n"
        "p5,INV-7,100.00,,cash,succeeded,2024-03-01\n",
        name="payments.csv",
    )
    mapping = load_mapping("spreadsheet", "payments")
    found = {r.id: r for r in connector(tmp_path).read("payments")}
    assert mapping.to_canonical(found["p1"].data)["refunded_amount"] == 2550
    with pytest.raises(RecordError) as too_much:
        mapping.to_canonical(found["p2"].data, location=found["p2"].location)
    assert (too_much.value.location, too_much.value.field) == ("payments.csv line 3", "Refunded")
    assert "refunded $100.01 is more than the payment's amount $100.00" in str(too_much.value)
    with pytest.raises(RecordError, match=r"payments\.csv line 4, field 'Refunded'.*negative"):
        mapping.to_canonical(found["p3"].data, location=found["p3"].location)
    assert mapping.to_canonical(found["p4"].data)["refunded_amount"] == 10000
    assert mapping.to_canonical(found["p5"].data).get("refunded_amount") is None


def test_a_prepared_mapping_gives_the_header_of_a_new_file(tmp_path: Path) -> None:
    mapping = parse_mapping(
        {
            "fields": {
                "invoice_number": "Number",
                "amount": {"native": "Total", "transform": "cents"},
            }
        },
        entity="invoices",
        source="mine.toml",
    )
    conn = connector(tmp_path, files={"invoices": "bills.csv"})
    conn.prepare("invoices", mapping)
    conn.create("invoices", {"Number": "9", "Total": "1.50"}, key="k1")
    conn.flush("invoices")
    assert (tmp_path / "bills.csv").read_text() == "Sync ID,Number,Total\nk1,9,1.50\n"
