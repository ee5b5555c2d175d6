"""A careless bookkeeper's sheet structure, end to end: real CSV files and workbooks, a memory
member standing for Housecall Pro, a real SQLite state file.

- A column the sync uses named twice, or the Sync ID column gone (or emptied) while records
  are linked to it, is a structure error: the run stops before anything is planned, and
  nothing is written anywhere (the other member, the sheets, the state's records, links and
  journal), in a dry run and a real one, also for a later entity of the pipeline.
- A mapped column missing from an existing sheet (renamed or removed) is a field the sheet
  does not hold yet: never read as cleared, it is added at the end of the header and filled
  from the other members; the renamed column's cells stay.
"""

from __future__ import annotations

import copy
import csv
import io
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.memory import MemoryConnector, MemoryDataset
from syncengine.engine import SyncResult
from syncengine.errors import StructureError
from syncengine.plan import Update
from tests.helpers import memory_config, write_config

C = "customers"
DATA_TABLES = ("records", "links", "journal", "conflicts", "skips", "read_marks")
"""Everything the state store knows of records (not the run history, which records the
refused run)."""


def ds(name: str = "a") -> MemoryDataset:
    return MemoryConnector.get_dataset(name)


def run(cfg: Config, **kwargs: Any) -> SyncResult:
    return api.sync(cfg, **kwargs)[0]


def state_data(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {t: sorted(con.execute(f"SELECT * FROM {t}"), key=repr) for t in DATA_TABLES}
    finally:
        con.close()


class Sheet:
    """The customers sheet of the books as a person sees it: rows of text, header first;
    edited as a person with a spreadsheet program would (not through the connector)."""

    def __init__(self, folder: Path, fmt: str) -> None:
        self.fmt = fmt
        self.path = folder / ("books.xlsx" if fmt == "xlsx" else "books/customers.csv")
        self.books = "books.xlsx" if fmt == "xlsx" else "books"
        self.where = "books.xlsx, sheet Customers" if fmt == "xlsx" else "customers.csv"

    def rows(self) -> list[list[str]]:
        if self.fmt == "csv":
            return [list(r) for r in csv.reader(io.StringIO(self.path.read_text()))]
        book = openpyxl.load_workbook(self.path)
        found = [["" if v is None else str(v) for v in r] for r in book["Customers"].values]
        width = max(len(r) for r in found)
        return [r + [""] * (width - len(r)) for r in found]

    def write(self, rows: list[list[str]]) -> None:
        if self.fmt == "csv":
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(rows)
            self.path.write_text(buffer.getvalue())
            return
        book = openpyxl.load_workbook(self.path)
        index = book.sheetnames.index("Customers")
        book.remove(book["Customers"])
        sheet = book.create_sheet("Customers", index)
        for row in rows:
            sheet.append([v if v != "" else None for v in row])
        book.save(self.path)

    def edit(self, change: Callable[[list[list[str]]], list[list[str]]]) -> None:
        self.write(change(self.rows()))

    def column(self, name: str) -> list[str]:
        rows = self.rows()
        index = rows[0].index(name)
        return [r[index] if index < len(r) else "" for r in rows[1:]]


FORMATS = pytest.mark.parametrize("fmt", ["csv", "xlsx"])


def books_with_two(tmp_path: Path, fmt: str) -> tuple[Config, Sheet]:
    """Ann and Bob synced from the memory member into the books."""
    sheet = Sheet(tmp_path, fmt)
    cfg = memory_config(tmp_path, {"a": {}, "books": {"type": "spreadsheet", "path": sheet.books}})
    ds().put(C, "a1", {"first_name": "Ann", "email": "ann@example.com"})
    ds().put(C, "a2", {"first_name": "Bob", "email": "bob@example.com"})
    assert run(cfg).exit_code == 0
    return cfg, sheet


def insert_column(rows: list[list[str]], at: int, name: str, cells: list[str]) -> list[list[str]]:
    return [[*r[:at], v, *r[at:]] for r, v in zip(rows, [name, *cells], strict=True)]


def drop_column(rows: list[list[str]], name: str) -> list[list[str]]:
    index = rows[0].index(name)
    return [[v for i, v in enumerate(r) if i != index] for r in rows]


def rename_column(rows: list[list[str]], old: str, new: str) -> list[list[str]]:
    return [[new if v == old else v for v in rows[0]], *rows[1:]]


class Untouched:
    """What a refused run must leave exactly as it was."""

    def __init__(self, tmp_path: Path, *files: Path) -> None:
        self.tmp_path = tmp_path
        self.files = files
        self.before = self.now()

    def now(self) -> tuple[Any, ...]:
        member = copy.deepcopy(ds().records)
        return member, [f.read_bytes() for f in self.files], state_data(self.tmp_path / "state.db")

    def check(self) -> None:
        assert self.now() == self.before


# ------------------------------------------------------------------ case 2: wrong structure


@FORMATS
def test_a_second_email_column_stops_the_run_with_nothing_written(tmp_path: Path, fmt: str) -> None:
    cfg, sheet = books_with_two(tmp_path, fmt)
    ds().edit(C, "a1", first_name="Anne")  # a change that waits to be synced
    # a person pastes a column of stale addresses before the real one, under the same name
    sheet.edit(lambda rows: insert_column(rows, 1, "Email", ["old1@example.com", "old2@x.org"]))
    at = "columns 2 and 5" if fmt == "csv" else "columns B and E"
    untouched = Untouched(tmp_path, sheet.path)

    for dry_run in (True, False):
        with pytest.raises(StructureError) as caught:
            run(cfg, dry_run=dry_run)
        assert f"{sheet.where}: 2 columns are named Email ({at})" in str(caught.value)
        assert "rename or delete one of them" in str(caught.value)
        untouched.check()

    # the person deletes the stale column: the waiting change syncs, no e-mail changes
    sheet.edit(lambda rows: [r[:1] + r[2:] for r in rows])
    result = run(cfg)
    assert [(a.op, a.member) for a in result.plan.actions] == [("update", "books")]
    assert {r["email"] for r in ds().table(C).values()} == {"ann@example.com", "bob@example.com"}
    assert sheet.column("First Name") == ["Anne", "Bob"]


def test_a_structure_error_in_a_later_entity_stops_the_earlier_ones_too(tmp_path: Path) -> None:
    """Customers come first in the pipeline: nothing of them is written while the invoices
    sheet is refused."""
    cfg = memory_config(
        tmp_path,
        {
            "a": {"entities": ["customers", "invoices"]},
            "books": {"type": "spreadsheet", "path": "books"},
        },
        entities=("customers", "invoices"),
    )
    ds().put(C, "a1", {"first_name": "Ann", "email": "ann@example.com"})
    assert run(cfg).exit_code == 0
    invoices = tmp_path / "books" / "invoices.csv"
    invoices.write_text("Sync ID,Invoice #,Customer Email,Amount,Invoice #\n")
    ds().put(C, "a2", {"first_name": "Bob", "email": "bob@example.com"})  # to be created
    ds().edit(C, "a1", first_name="Anne")  # to be updated
    untouched = Untouched(tmp_path, tmp_path / "books" / "customers.csv", invoices)

    for dry_run in (True, False):
        with pytest.raises(StructureError, match=r"invoices\.csv: 2 columns are named Invoice #"):
            run(cfg, dry_run=dry_run)
        untouched.check()
    [last] = api.runs(cfg, limit=1)
    assert last["outcome"] == "failed" and "Invoice #" in last["errors"][0]


@FORMATS
@pytest.mark.parametrize("how", ["removed", "emptied", "renamed", "unnamed"])
def test_the_sync_id_column_gone_while_records_are_linked_stops_the_run(
    tmp_path: Path, fmt: str, how: str
) -> None:
    cfg, sheet = books_with_two(tmp_path, fmt)
    ds().edit(C, "a2", first_name="Bobby")
    if how == "removed":
        sheet.edit(lambda rows: drop_column(rows, "Sync ID"))
        said = "the Sync ID column is missing"
    elif how == "renamed":  # a near miss is named, with the fix
        sheet.edit(lambda rows: rename_column(rows, "Sync ID", "sync id"))
        said = f"the Sync ID column is missing (column {'1' if fmt == 'csv' else 'A'} is named "
        said += "'sync id': name it Sync ID)"
    elif how == "unnamed":  # its header cell cleared: the ids are all there
        sheet.edit(lambda rows: [["", *rows[0][1:]], *rows[1:]])
        said = f"the Sync ID column is missing (column {'1' if fmt == 'csv' else 'A'} has no "
        said += "name in the header but holds values such as '"
    else:
        sheet.edit(lambda rows: [rows[0], *(["", *r[1:]] for r in rows[1:])])
        said = "every Sync ID cell is empty"
    untouched = Untouched(tmp_path, sheet.path)

    for dry_run in (True, False):
        with pytest.raises(StructureError) as caught:
            run(cfg, dry_run=dry_run)
        text = str(caught.value)
        assert f"{sheet.where}: {said}" in text, text
        assert "but 2 customers are linked to it; restore the " in text
        if how == "unnamed":
            assert "if those are the Sync IDs, type Sync ID in its header cell)" in text
        untouched.check()


@FORMATS
def test_a_title_typed_above_the_header_is_named_as_what_hides_the_sync_id_column(
    tmp_path: Path, fmt: str
) -> None:
    """A title row inserted above the header makes it the header: the Sync ID column looks
    missing. The message names the title's row and the fix, not a restore from a backup (a
    careless bookkeeper's edit, found by a cold trial)."""
    cfg, sheet = books_with_two(tmp_path, fmt)
    good = sheet.path.read_bytes()
    sheet.edit(lambda rows: [["Customers 2025", *[""] * (len(rows[0]) - 1)], *rows])
    untouched = Untouched(tmp_path, sheet.path)
    with pytest.raises(StructureError) as caught:
        run(cfg)
    word = "line" if fmt == "csv" else "row"
    assert str(caught.value).endswith(
        f"{sheet.where}: the Sync ID column is missing, but 2 customers are linked to it; "
        f"{word} 1 ('Customers 2025') stands above the header, which names the Sync ID column "
        "in the row below: the header must be the first row that is not blank, so delete that "
        "row or move it out of the table and sync again"
    ), str(caught.value)
    untouched.check()
    sheet.path.write_bytes(good)
    assert run(cfg).exit_code == 0


def test_a_delimiter_option_the_file_does_not_use_is_named_as_the_fix(tmp_path: Path) -> None:
    """``delimiter = ";"`` on comma-separated books: every header reads as one column, so
    the Sync ID column looks missing. The message says to set the option, not to restore a
    column from a backup (a careless integrator's edit, found by a cold trial)."""
    cfg, sheet = books_with_two(tmp_path, "csv")
    semicolons = memory_config(
        tmp_path, {"a": {}, "books": {"type": "spreadsheet", "path": "books", "delimiter": ";"}}
    )
    untouched = Untouched(tmp_path, sheet.path)
    with pytest.raises(StructureError) as caught:
        run(semicolons)
    message = str(caught.value)
    assert "customers.csv: the Sync ID column is missing, but 2 customers are linked to it; " in (
        message
    )
    assert "the header reads as one column ('Sync ID," in message
    assert "its names separated by ',', and the connector's delimiter option is ';': set " in (
        message
    )
    assert "set delimiter = ',' in the config and sync again" in message
    assert "restore the column" not in message
    untouched.check()
    assert run(cfg).exit_code == 0  # the right option reads the same file


def test_an_encoding_option_the_file_does_not_use_is_named_as_the_fix(tmp_path: Path) -> None:
    """``encoding = "utf-16"`` on UTF-8 books whose header happens to decode (as characters
    no one typed) and whose rows run into it: no record reads, and the empty-member guard
    names the encoding option instead of the path or the credentials."""
    _cfg, sheet = books_with_two(tmp_path, "csv")
    text = sheet.path.read_bytes().replace(b"\n", b"")  # one line: valid utf-16 (even length)
    sheet.path.write_bytes(text if len(text) % 2 == 0 else text + b" ")
    wrong = memory_config(
        tmp_path,
        {"a": {}, "books": {"type": "spreadsheet", "path": "books", "encoding": "utf-16"}},
    )
    result = run(wrong, dry_run=True)
    assert result.exit_code == 3
    assert result.guard is not None
    assert "books returned no customers but 2 are linked to it" in result.guard
    assert "customers.csv: no column name in the header reads as utf-16 text" in result.guard
    assert 'set encoding to the one the file was saved in (such as "utf-8"' in result.guard
    assert "path/credentials" not in result.guard


@FORMATS
def test_a_new_sheet_typed_without_a_sync_id_column_still_syncs(tmp_path: Path, fmt: str) -> None:
    sheet = Sheet(tmp_path, fmt)
    cfg = memory_config(tmp_path, {"a": {}, "books": {"type": "spreadsheet", "path": sheet.books}})
    if fmt == "xlsx":
        book = openpyxl.Workbook()
        assert book.active is not None
        book.active.title = "Customers"
        book.save(sheet.path)
    else:
        sheet.path.parent.mkdir()
    sheet.write([["First Name", "Email"], ["Cy", "cy@example.com"], ["Di", "di@example.com"]])

    result = run(cfg)

    assert result.exit_code == 0
    assert sorted(r["email"] for r in ds().table(C).values()) == [
        "cy@example.com",
        "di@example.com",
    ]
    assert all(sheet.column("Sync ID"))
    assert run(cfg).plan.actions == []


def test_validate_reports_the_structure_problems_of_the_sheets(tmp_path: Path) -> None:
    cfg, sheet = books_with_two(tmp_path, "csv")
    assert api.structure_problems(cfg) == []
    sheet.edit(lambda rows: insert_column(drop_column(rows, "Sync ID"), 1, "Email", ["x", "y"]))
    [problem] = api.structure_problems(cfg)
    assert problem.location == "pipelines.p (customers)"
    assert "customers.csv: 2 columns are named Email (columns 2 and 4)" in problem.message

    sheet.edit(lambda rows: drop_column(rows, "Email"))  # the first of the two
    [problem] = api.structure_problems(cfg)
    assert "the Sync ID column is missing, but 2 customers are linked to it" in problem.message

    # without the state store the links are not known: only what the sheet shows itself
    (tmp_path / "state.db").rename(tmp_path / "elsewhere.db")
    assert api.structure_problems(cfg) == []


# ------------------------------------------------------------ case 3: a mapped column missing


@FORMATS
@pytest.mark.parametrize("how", ["renamed", "removed"])
def test_a_missing_email_column_is_filled_never_read_as_cleared(
    tmp_path: Path, fmt: str, how: str
) -> None:
    cfg, sheet = books_with_two(tmp_path, fmt)
    if how == "renamed":
        sheet.edit(lambda rows: rename_column(rows, "Email", "E-mail"))
    else:
        sheet.edit(lambda rows: drop_column(rows, "Email"))
    ds().edit(C, "a1", first_name="Anne")  # the row is touched for another reason too
    before = sheet.path.read_bytes()

    dry = run(cfg, dry_run=True)

    assert sheet.path.read_bytes() == before
    fills = {a.key: a.changes for a in dry.plan.actions if isinstance(a, Update)}
    assert sorted(str(c.get("email")) for c in fills.values()) == [
        "(None, 'ann@example.com')",
        "(None, 'bob@example.com')",
    ]
    assert {a.member for a in dry.plan.actions} == {"books"}
    [note] = dry.plan.entities[0].notes
    assert note == (
        f"{sheet.where}: column Email is missing; it would be added at the end of the header "
        "and filled from the other members (2 rows); what was there is not read as cleared"
    )

    done = run(cfg)

    assert done.exit_code == 0 and done.plan.entities[0].notes == [note.replace("would be", "is")]
    assert {r["email"] for r in ds().table(C).values()} == {"ann@example.com", "bob@example.com"}
    header = sheet.rows()[0]
    assert header[-1] == "Email"
    assert sheet.column("Email") == ["ann@example.com", "bob@example.com"]
    assert sheet.column("First Name") == ["Anne", "Bob"]
    if how == "renamed":
        assert sheet.column("E-mail") == ["ann@example.com", "bob@example.com"]
    again = run(cfg)
    assert again.plan.actions == [] and again.plan.entities[0].notes == []


def test_a_blank_cell_in_a_present_column_is_still_a_cleared_value(tmp_path: Path) -> None:
    cfg, sheet = books_with_two(tmp_path, "csv")
    rows = sheet.rows()
    email = rows[0].index("Email")
    rows[1][email] = ""
    sheet.write(rows)

    result = run(cfg)

    assert [(a.op, a.member) for a in result.plan.actions] == [("update", "a")]
    assert ds().table(C)["a1"]["email"] is None
    assert result.plan.entities[0].notes == []


def books_mapped_by(mapping: Path) -> str:
    """The config of the memory member ``a`` and the CSV books, the books' customers mapped
    by ``mapping``."""
    return f"""
        [state]
        url = "sqlite:///state.db"
        [connectors.a]
        type = "memory"
        [connectors.books]
        type = "spreadsheet"
        path = "books"
        [[pipelines]]
        name = "p"
        members = ["a", "books"]
        entities = ["customers"]
        [pipelines.conflicts]
        default = ["a"]
        [pipelines.mappings.books]
        customers = "{mapping}"
    """


def test_a_column_missing_since_the_sheet_was_linked_is_filled_too(tmp_path: Path) -> None:
    """Rows whose cells did not change since they were linked (their native hash is the one
    last seen) are looked at as well: a mapping that gained a field fills it."""
    sheet = Sheet(tmp_path, "csv")
    sheet.path.parent.mkdir()
    sheet.write([["Sync ID", "First Name"]])
    narrow = tmp_path / "narrow.toml"
    narrow.write_text('[fields]\nfirst_name = "First Name"\n')
    body = books_mapped_by(narrow)
    ds().put(C, "a1", {"first_name": "Ann", "email": "ann@example.com"})
    assert run(load_config(write_config(tmp_path, body))).exit_code == 0
    assert sheet.rows()[0] == ["Sync ID", "First Name"]

    wide = load_config(write_config(tmp_path, body.replace(f'customers = "{narrow}"', "")))
    result = run(wide)

    assert [(a.op, a.member) for a in result.plan.actions] == [("update", "books")]
    assert sheet.column("Email") == ["ann@example.com"]
    assert ds().table(C)["a1"]["email"] == "ann@example.com"
    assert run(wide).plan.actions == []


def test_a_read_only_column_missing_is_left_alone_not_cleared(tmp_path: Path) -> None:
    mapping = tmp_path / "customers.toml"
    mapping.write_text(
        '[fields]\nfirst_name = "First Name"\nemail = { native = "Email", transform = "email" }\n'
        'lead_source = { native = "Source", direction = "read" }\n'
    )
    body = books_mapped_by(mapping)
    cfg = load_config(write_config(tmp_path, body))
    sheet = Sheet(tmp_path, "csv")
    sheet.path.parent.mkdir()
    sheet.write([["Sync ID", "First Name", "Email", "Source"], ["", "Ann", "ann@x.com", "fair"]])
    assert run(cfg).exit_code == 0
    assert [r["lead_source"] for r in ds().table(C).values()] == ["fair"]

    sheet.edit(lambda rows: drop_column(rows, "Source"))
    result = run(cfg)

    assert result.plan.actions == [] and result.plan.entities[0].notes == []
    assert [r["lead_source"] for r in ds().table(C).values()] == ["fair"]
    assert "Source" not in sheet.rows()[0]


# ------------------------------------------------------------ a file or sheet deleted


@FORMATS
def test_a_deleted_file_or_sheet_stops_its_entity_naming_it_and_is_synced_once_restored(
    tmp_path: Path, fmt: str
) -> None:
    """The books member lists nothing because the file (the sheet of a workbook) is gone:
    the guard says which file, to put it back, and that only --allow-mass-delete deletes
    every record elsewhere; nothing is written, and the file is not created again empty."""
    cfg, sheet = books_with_two(tmp_path, fmt)
    saved = sheet.path.read_bytes()
    if fmt == "csv":
        sheet.path.unlink()
    else:
        book = openpyxl.load_workbook(sheet.path)
        book.create_sheet("Notes")["A1"] = "the bookkeeper's own sheet"
        book.remove(book["Customers"])
        book.save(sheet.path)
    gone = sheet.path.read_bytes() if fmt == "xlsx" else None
    untouched = Untouched(tmp_path)

    for dry_run in (True, False):
        result = run(cfg, dry_run=dry_run)
        assert result.exit_code == 3
        assert result.guard is not None
        assert result.guard.startswith(f"{sheet.where} is missing (deleted, moved or renamed?)")
        assert (
            "but 2 customers are linked to it; nothing of customers was written. Put it back"
            in result.guard
        )
        assert "--allow-mass-delete" in result.guard
        untouched.check()
        assert (sheet.path.read_bytes() if fmt == "xlsx" else sheet.path.exists()) == (
            gone if fmt == "xlsx" else False
        )

    sheet.path.write_bytes(saved)
    ds().edit(C, "a1", first_name="Anne")
    result = run(cfg)
    assert result.exit_code == 0
    assert [(a.op, a.member) for a in result.plan.actions] == [("update", "books")]
    assert sheet.column("First Name") == ["Anne", "Bob"]


def test_a_renamed_sheet_is_named_with_both_fixes(tmp_path: Path) -> None:
    """The bookkeeper renamed the Customers sheet: the guard stops the entity as for a
    deleted sheet, and names the sheet that holds its header and the two ways back (a cold
    trial: it said only "missing (deleted, moved or renamed?)")."""
    cfg, sheet = books_with_two(tmp_path, "xlsx")
    book = openpyxl.load_workbook(sheet.path)
    book["Customers"].title = "Customers 2025"
    book.save(sheet.path)
    untouched = Untouched(tmp_path)

    result = run(cfg)
    assert result.exit_code == 3 and result.guard is not None
    assert "sheet 'Customers 2025' has its header: was it renamed? Name it Customers again" in (
        result.guard
    )
    assert 'sheets = { customers = "Customers 2025" }' in result.guard
    untouched.check()


def test_a_workbook_open_elsewhere_counts_each_unwritten_record_once(tmp_path: Path) -> None:
    """A spreadsheet program holds the workbook: the flush fails, every write it held
    failed, and the count is those writes (the workbook's own message is not one more)."""
    cfg, _ = books_with_two(tmp_path, "xlsx")
    ds().put(C, "a3", {"first_name": "Cy", "email": "cy@example.com"})
    ds().put(C, "a4", {"first_name": "Di", "email": "di@example.com"})
    (tmp_path / ".~lock.books.xlsx#").write_text("someone")
    result = run(cfg)
    [outcome] = result.outcomes
    assert outcome.counts(dry_run=False)["failed"] == 2
    assert [f.location for f in outcome.failures if not f.location] == [""]  # said once
    assert any("is open in another program" in f.message for f in outcome.failures)
    assert result.exit_code == 1


# ------------------------------------- a match key's column missing while rows are unlinked


def typed_sheet(tmp_path: Path, rows: list[list[str]]) -> tuple[Config, Sheet]:
    """A customers sheet typed by hand (no Sync ID, no Mobile column), never synced."""
    sheet = Sheet(tmp_path, "csv")
    cfg = memory_config(tmp_path, {"a": {}, "books": {"type": "spreadsheet", "path": sheet.books}})
    sheet.path.parent.mkdir()
    sheet.write([["First Name", "Email"], *rows])
    return cfg, sheet


def test_a_first_sync_of_a_sheet_typed_without_a_mobile_column_holds_nothing(
    tmp_path: Path,
) -> None:
    """A sheet typed by hand never had a Mobile column: it hides no mobile, so nothing
    waits. Rows match by e-mail, the column is added and filled, and Dee (no e-mail) and
    HCP's Eve (a mobile only) are two customers (a cold review found a first sync of 500
    such rows holding thousands of records)."""
    cfg, sheet = typed_sheet(
        tmp_path, [["Ann", "ann@example.com"], ["Bob", "bob@example.com"], ["Dee", ""]]
    )
    for n, name in enumerate(("Ann", "Bob", "Cy"), start=1):
        email = f"{name.lower()}@example.com"
        ds().put(C, f"a{n}", {"first_name": name, "email": email, "mobile_number": f"+1555000{n}"})
    ds().put(C, "a4", {"first_name": "Eve", "mobile_number": "+15550004"})
    result = run(cfg)
    assert result.exit_code == 0 and result.plan.entities[0].issues == []
    assert sorted(sheet.column("First Name")) == ["Ann", "Bob", "Cy", "Dee", "Eve"]
    assert sheet.column("Mobile")[:2] != ["", ""]
    assert len(ds().table(C)) == 5
    assert run(cfg).plan.actions == []


def test_a_row_showing_no_match_key_waits_while_the_mobile_column_is_removed(
    tmp_path: Path,
) -> None:
    """After a first sync the bookkeeper deletes the Mobile column and types Dee, with no
    e-mail; HCP gets Eve, known only by her mobile, who may be Dee. Neither is synced, both
    are reported, and the sync does not add the Mobile column back (a blank it wrote would
    later read as 'no mobile'), every run, until a person does. Once the bookkeeper adds it
    back empty, Dee and Eve are two customers, and Ann's mobile is filled again."""
    cfg, sheet = typed_sheet(tmp_path, [["Ann", "ann@example.com"]])
    ann = {"first_name": "Ann", "email": "ann@example.com", "mobile_number": "+15550001"}
    ds().put(C, "a1", ann)
    assert run(cfg).exit_code == 0
    sheet.edit(lambda rows: [*drop_column(rows, "Mobile"), ["", "Dee"] + [""] * (len(rows[0]) - 3)])
    ds().put(C, "a2", {"first_name": "Eve", "mobile_number": "+15550002"})
    for _ in range(2):
        result = run(cfg)
        assert result.exit_code == 1
        issues = [i.describe() for i in result.plan.entities[0].issues]
        assert issues == [
            "books customers.csv: column Mobile is missing, and customers are matched by it: 1 "
            "customer here not linked yet, and the customers new elsewhere that could be one "
            "of them, wait until it is back, so that none is added twice. Rename the column "
            "back to Mobile, or add it (empty, if these rows have no value there); the sync "
            "does not add it back while they wait",
            "a: 1 new customer waits for the missing column Mobile of customers.csv (see "
            "that error): customers are matched by it",
        ]
        assert "Mobile" not in sheet.rows()[0]
        assert sheet.column("First Name") == ["Ann", "Dee"]
        assert sorted(r["first_name"] for r in ds().table(C).values()) == ["Ann", "Eve"]
    sheet.edit(lambda rows: insert_column(rows, len(rows[0]), "Mobile", ["", ""]))
    assert run(cfg).exit_code == 0
    assert sorted(sheet.column("First Name")) == ["Ann", "Dee", "Eve"]
    assert sorted(r["first_name"] for r in ds().table(C).values()) == ["Ann", "Dee", "Eve"]
    assert sheet.column("Mobile")[0] != ""  # Ann's, filled again from HCP
    assert ds().table(C)["a1"]["mobile_number"] == "+15550001"
    assert run(cfg).plan.actions == []


def test_a_customer_paired_between_two_other_members_waits_for_the_sheets_email_column(
    tmp_path: Path,
) -> None:
    """Three members: the bookkeeper renames Email and types Dee (her e-mail in the renamed
    column); the same day Dee is entered in HCP (a) and the CRM, which pair with each other.
    They may be the sheet's Dee, so all wait; once the column is back, one Dee everywhere (a
    cold review found two Dees on every member, then a sheet with two Email columns)."""
    sheet = Sheet(tmp_path, "csv")
    cfg = memory_config(
        tmp_path, {"a": {}, "crm": {}, "books": {"type": "spreadsheet", "path": sheet.books}}
    )
    ds().put(C, "a1", {"first_name": "Ann", "email": "ann@example.com"})
    assert run(cfg).exit_code == 0

    def rename_and_type_dee(rows: list[list[str]]) -> list[list[str]]:
        rows = rename_column(rows, "Email", "E-mail")
        dee = [""] * len(rows[0])
        dee[rows[0].index("First Name")] = "Dee"
        dee[rows[0].index("E-mail")] = "dee@example.com"
        return [*rows, dee]

    sheet.edit(rename_and_type_dee)
    ds().put(C, "a2", {"first_name": "Dee", "email": "dee@example.com"})
    ds("crm").put(C, "c2", {"first_name": "Dee", "email": "dee@example.com"})
    result = run(cfg)
    assert result.exit_code == 1 and result.plan.actions == []
    assert sorted(i.member for i in result.plan.entities[0].issues) == ["a", "books", "crm"]
    assert "Email" not in sheet.rows()[0]
    sheet.edit(lambda rows: rename_column(rows, "E-mail", "Email"))
    assert run(cfg).exit_code == 0
    assert sheet.column("Email") == ["ann@example.com", "dee@example.com"]
    for member in ("a", "crm"):
        assert sorted(r["email"] for r in ds(member).table(C).values()) == [
            "ann@example.com",
            "dee@example.com",
        ]
    assert run(cfg).plan.actions == []


def test_probe_says_a_missing_match_key_column_may_wait_for_a_person(tmp_path: Path) -> None:
    """``probe`` cannot tell whether rows wait for a missing column (only a sync's matching
    can), so for a column records are matched by it says when the sync does not add it;
    for any other column, that it is added and filled."""
    cfg, sheet = books_with_two(tmp_path, "csv")
    sheet.edit(lambda rows: drop_column(drop_column(rows, "Email"), "Company"))
    [probed] = api.probe(cfg, "books")
    company, email = sorted(probed.notes)
    assert company == (
        "customers.csv: column Company is missing; a sync adds it at the end of the header "
        "and fills it from the other members (company)"
    )
    assert email.startswith(
        "customers.csv: column Email is missing; a sync adds it at the end of the header and "
        "fills it from the other members (email), unless rows here wait for it: customers are "
        "matched by it"
    )
