"""The XLSX backend of the spreadsheet connector: one workbook, one sheet per entity.

A :class:`Workbook` is the file: the connector's three :class:`XlsxTable` views (the sheets
``Customers``, ``Invoices``, ``Payments``) share it. What it keeps:

* **Everything it does not write.** Other sheets, column widths, row heights, number formats,
  cell styles, formulas, merged cells, data validation, conditional formatting and defined
  names stay as the bookkeeper set them: only cells whose value changes are written, and a
  written cell keeps its style. A save that would lose a part openpyxl cannot carry over
  (pictures without Pillow, shapes, slicers, unsupported extensions) is refused with the
  reason, and nothing is written.
* **Typed cells.** Money columns (read through the ``cents`` transform) are written as numbers
  with a currency number format, date columns (``date``) as dates with a date format; a
  number format the bookkeeper gave the cell is kept where it suits the value. Other columns
  are written as text, so ``02134`` stays ``02134`` (see :mod:`.xlsxcells`); text that a
  spreadsheet program would run as a formula (``=...``) is stored as text with a quote
  prefix, never as a formula.
* **Formulas.** A formula cell is read as its last calculated value, and stays a formula
  unless its column is mapped and the sync writes a different value into it. Formula cells
  keep their calculated values through a save (openpyxl alone would blank them), and the
  saved workbook asks the next program that opens it to recalculate.
* **No clobbering.** Reading is from one snapshot of the file's bytes; a save refuses with
  ConflictingWriteError when the file changed since (content digest), or when a spreadsheet
  program has it open (its lock file ``~$books.xlsx`` or ``.~lock.books.xlsx#`` lies beside
  it; a RetriableError: the same save succeeds once the program closes it), and replaces the
  file atomically otherwise, keeping its permissions.

A deleted record's row is emptied rather than removed, so that no row below it moves:
references to those rows (formulas on other sheets, a chart's range) keep meaning what they
meant. New rows go below the last row that holds anything, taking the style of the row above.

Reading uses openpyxl's read-only mode with ``data_only`` (values, fast); a save loads the
workbook whole once (formulas and styles) and keeps that copy for the next save of the run.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import openpyxl
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from syncengine.errors import ConflictingWriteError, RetriableError

from .columns import ColumnKind
from .formulas import neutralise
from .table import CellValue, Row, Sheet, StoredFile, Table, digest, is_blank
from .xlsxcells import cell_text, cell_value, number_format_for
from .xlsxpackage import (
    PACKAGE_ERRORS,
    damaged,
    formula_values,
    lost_parts,
    restore_formula_values,
    unusable_cells,
)

Values = tuple[CellValue, ...]

_LOSS_WARNING = re.compile(
    r"will be (?:removed|lost|discarded|ignored)|unable to read|dropp|cannot be (?:located|set)",
    re.IGNORECASE,
)
_NEW_SHEET_MIN_WIDTH = 10


def _same(a: CellValue, b: CellValue) -> bool:
    """Whether a cell's value is unchanged (``""`` and an empty cell are the same)."""
    if a is b:
        return True
    if a in (None, "") and b in (None, ""):
        return True
    return type(a) is type(b) and a == b


class Workbook:
    """One .xlsx file shared by the connector's sheets. See the module docstring.

    ``generation`` counts changes by others seen between reads: a sheet loaded before such a
    change cannot be saved any more (its rows may be out of date). The sync's own saves do
    not count: every sheet knows what the sync wrote.
    """

    def __init__(
        self,
        path: Path,
        *,
        connector: str = "",
        create_missing: bool = True,
        new_sheets: Callable[[str], Mapping[str, list[str]]] = lambda entity: {},
    ) -> None:
        self.path = path
        self.display = path.name
        self.connector = connector
        self.create_missing = create_missing
        self.new_sheets = new_sheets
        """Entity being saved -> title and header of every sheet the workbook should hold
        then (each created when missing)."""
        self.file = StoredFile(path, connector=connector)
        self.generation = 0
        self._version: str | None = None
        self._seen_once = False
        self._data: bytes | None = None
        self._reader: Any = None
        self._rows: dict[str, list[Values]] = {}
        self._unusable: dict[str, dict[tuple[int, int], str]] = {}
        self._editable: tuple[str, Any] | None = None

    # -- reading
    def exists(self) -> bool:
        return self._data is not None

    def refresh(self, entity: str = "") -> None:
        """Read the file; a version not seen before drops what was parsed from the last one."""
        data = self.file.read(entity)
        version = None if self.file.seen is None else self.file.seen.digest
        if self._seen_once and version == self._version:
            return
        if self._seen_once:
            self.generation += 1
        self._seen_once = True
        self._use(data, version)

    def _use(self, data: bytes | None, version: str | None) -> None:
        self._close_reader()
        self._data, self._version = data, version
        self._rows = {}
        self._unusable = {}
        if self._editable is not None and self._editable[0] != version:
            self._editable = None

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        self._close_reader()
        self._editable = None

    def title_of(self, title: str) -> str | None:
        """The workbook's own spelling of a sheet title (titles are case-insensitive)."""
        names = self._sheet_names()
        if title in names:
            return title
        return next((n for n in names if n.casefold() == title.casefold()), None)

    def sheet_holding(self, columns: Collection[str], besides: str) -> str | None:
        """The title of a sheet other than ``besides`` whose header (its first row that is
        not blank) names every one of ``columns``: the sheet renamed. None when there is none,
        or more than one."""
        found = []
        for name in self._sheet_names():
            if name.casefold() == besides.casefold():
                continue
            first = next((r for r in self.rows(name) if any(v not in (None, "") for v in r)), ())
            header = {str(v).strip() for v in first if v not in (None, "")}
            if columns and set(columns) <= header:
                found.append(name)
        return found[0] if len(found) == 1 else None

    def _sheet_names(self) -> list[str]:
        if self._data is None:
            return []
        return list(self._open().sheetnames)

    def _open(self) -> Any:
        if self._reader is None:
            assert self._data is not None
            why = damaged(self._data)
            if why:
                raise self.file.structure(
                    f"{self.path} is damaged: {why}; nothing was read or written. Restore it "
                    "from a backup (or your spreadsheet program's version history), or open it "
                    "in a spreadsheet program, let it repair the file and save it as an Excel "
                    "workbook (.xlsx)"
                )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._reader = openpyxl.load_workbook(
                        io.BytesIO(self._data), read_only=True, data_only=True
                    )
            except Exception as exc:  # openpyxl raises many kinds; translate them here
                raise self.file.structure(
                    f"{self.path} is not a readable .xlsx workbook ({_describe(exc)}); "
                    "nothing was read or written. Open it in a spreadsheet program and save it "
                    "as an Excel workbook (.xlsx)"
                ) from exc
        return self._reader

    def rows(self, title: str) -> list[Values]:
        """Every row of the sheet ``title`` (which must exist) as values, from row 1 on."""
        cached = self._rows.get(title)
        if cached is not None:
            return cached
        sheet = self._open()[title]
        sheet.reset_dimensions()  # never trust the size a file claims
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = [tuple(r) for r in sheet.iter_rows(values_only=True)]
        except Exception as exc:
            raise self.file.structure(
                f"{self.path}, sheet {title} cannot be read ({_describe(exc)}); nothing was "
                "read or written. Open the workbook in a spreadsheet program and save it as an "
                "Excel workbook (.xlsx)"
            ) from exc
        self._rows[title] = rows
        return rows

    def unusable(self, title: str) -> dict[tuple[int, int], str]:
        """The cells of sheet ``title`` whose value cannot be used (``unusable_cells``)."""
        found = self._unusable.get(title)
        if found is None:
            assert self._data is not None
            try:
                found = unusable_cells(self._data, title)
            except (*PACKAGE_ERRORS, ElementTree.ParseError) as exc:
                raise self.file.structure(
                    f"{self.path}, sheet {title} cannot be read ({_describe(exc)}); nothing was "
                    "read or written. Open the workbook in a spreadsheet program and save it as "
                    "an Excel workbook (.xlsx)"
                ) from exc
            self._unusable[title] = found
        return found

    # -- writing
    def open_in_another_program(self) -> str:
        """The lock file a spreadsheet program keeps beside a workbook it has open, if any."""
        name = self.path.name
        for lock in (f"~${name}", f".~lock.{name}#"):
            if (self.path.parent / lock).exists():
                return lock
        return ""

    def save(self, entity: str, edit: Callable[[Any], None]) -> None:
        """Apply ``edit`` to the workbook (loaded whole) and replace the file with it."""
        if not self.file.loaded:
            raise self.file.fatal(f"{self.display} was saved without being read first", entity)
        lock = self.open_in_another_program()
        if lock:
            raise RetriableError(
                f"{self.path} is open in another program (its lock file {lock} is beside it); "
                "nothing was written to it. Close the workbook there and run the sync again "
                f"(if nobody has it open, delete the leftover {lock})",
                connector=self.connector,
                entity=entity,
            )
        self.file.check_unchanged(entity)  # before the expensive part
        book, lost = self._load_editable(entity)
        self._editable = None  # edited from here on: only a successful save keeps it
        blank = book.worksheets[0] if self._data is None else None
        wanted = self.new_sheets(entity)
        for title, header in wanted.items():
            if self._find(book, title) is None and self.create_missing:
                _add_sheet(book, title, header)
        if blank is not None and blank.title.casefold() not in {t.casefold() for t in wanted}:
            book.remove(blank)  # the empty sheet a new openpyxl workbook starts with
        edit(book)
        out = io.BytesIO()
        try:
            book.save(out)
        except Exception as exc:  # openpyxl's own failures, translated here
            raise self.file.fatal(
                f"{self.display} could not be written ({_describe(exc)}); nothing was written "
                "to it",
                entity,
            ) from exc
        data = out.getvalue()
        if self._data is not None:
            lost += lost_parts(self._data, data)
            if lost:
                raise self.file.fatal(
                    f"saving {self.display} would lose what the sync cannot carry over ("
                    + "; ".join(dict.fromkeys(lost))
                    + "); nothing was written to it. Move those to another workbook, or sync "
                    "into a folder of CSV files instead",
                    entity,
                )
            data = restore_formula_values(data, formula_values(self._data))
        self.file.replace(data, entity)
        version = digest(data)
        self._use(data, version)
        self._editable = (version, book)

    def _load_editable(self, entity: str) -> tuple[Any, list[str]]:
        if self._data is None:
            return openpyxl.Workbook(), []
        if self._editable is not None and self._editable[0] == self._version:
            return self._editable[1], []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                book = openpyxl.load_workbook(
                    io.BytesIO(self._data), rich_text=True, keep_links=True
                )
            except Exception as exc:
                raise self.file.structure(
                    f"{self.path} cannot be opened for writing ({_describe(exc)}); nothing "
                    "was written to it. Open it in a spreadsheet program and save it as an "
                    "Excel workbook (.xlsx)",
                    entity,
                ) from exc
        lost = [str(w.message) for w in caught if _LOSS_WARNING.search(str(w.message))]
        return book, lost

    def _find(self, book: Any, title: str) -> Any:
        for name in book.sheetnames:
            if name.casefold() == title.casefold():
                return book[name]
        return None

    def sheet_for_writing(self, book: Any, title: str) -> Any:
        found = self._find(book, title)
        return found if found is not None else _add_sheet(book, title, [])


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _add_sheet(book: Any, title: str, header: list[str]) -> Any:
    sheet = book.create_sheet(title)
    if header:
        bold = Font(bold=True)
        for index, name in enumerate(header, start=1):
            cell = sheet.cell(row=1, column=index, value=name)
            cell.data_type = "s"
            cell.font = bold
            width = max(len(name) + 2, _NEW_SHEET_MIN_WIDTH)
            sheet.column_dimensions[get_column_letter(index)].width = width
        sheet.freeze_panes = "A2"
    return sheet


@dataclass
class _Edit:
    """The cells one save writes into a sheet."""

    header_line: int
    cells: list[tuple[int, int, CellValue, str]]
    """(row, column index, value, column name): cells of rows that exist."""
    new_rows: list[tuple[int, list[CellValue]]]
    """(row, cells) for rows below the last one that holds anything."""
    style_row: int
    """The row whose style new rows take (0: none)."""
    cleared: list[int]
    """Rows emptied because their record was deleted."""


class XlsxTable(Table):
    """One sheet of a :class:`Workbook`, as the table of one entity."""

    line_word = "row"
    id_column_first = False
    checks_width = False

    def __init__(
        self,
        workbook: Workbook,
        title: str,
        *,
        connector: str = "",
        entity: str = "",
        kinds: Mapping[str, ColumnKind] | None = None,
        mapped: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(
            display=f"{workbook.display}, sheet {title}", connector=connector, entity=entity
        )
        self.workbook = workbook
        self.title = title
        self.kinds: dict[str, ColumnKind] = dict(kinds or {})
        self.mapped = mapped
        """The columns the mapping reads (where a formula without a value is an error)."""
        self._unknown: dict[int, set[int]] = {}
        self._errors: dict[int, dict[int, str]] = {}
        """line -> column index -> the spreadsheet error that cell holds (``#N/A``)."""
        self.generation = -1
        self._header_line = 0
        self._loaded: dict[int, Values] = {}

    # -- cells
    def encode_cell(self, value: str, column: str = "") -> CellValue:
        return cell_value(value, self.kinds.get(column), location=self.display)

    def decode_cell(self, cell: CellValue, column: str = "") -> str:
        return cell_text(cell, self.kinds.get(column))

    def header_text(self, cell: CellValue) -> str:
        return cell_text(cell)

    def unknown_cells(self, row: Row, columns: Mapping[str, int]) -> list[str]:
        unknown = self._unknown.get(row.line)
        if not unknown:
            return []
        return [
            name
            for name, index in columns.items()
            if index in unknown and name in self.mapped and is_blank(row.get(index))
        ]

    def error_cells(self, row: Row, columns: Mapping[str, int]) -> list[tuple[str, str]]:
        errors = self._errors.get(row.line)
        if not errors:
            return []
        return [
            (name, errors[index])
            for name, index in columns.items()
            if index in errors and name in self.mapped
        ]

    def column_ref(self, index: int) -> str:
        return str(get_column_letter(index + 1))

    def location(self, line: int) -> str:
        return f"{self.display}, row {line}" if line else f"{self.display} (new row)"

    def locations(self, lines: list[int]) -> str:
        listed = ", ".join(str(n) for n in lines[:-1]) + " and " + str(lines[-1])
        return f"{self.display}, rows {listed}"

    # -- loading
    def load(self) -> Sheet | None:
        wb = self.workbook
        wb.refresh(self.entity)
        self.generation = wb.generation
        self._header_line = 0
        self._loaded = {}
        self._unknown = {}
        self._errors = {}
        if not wb.exists():
            return None
        title = wb.title_of(self.title)
        if title is None:
            return None
        self.title = title
        self.display = f"{wb.display}, sheet {title}"
        for (line, column), error in wb.unusable(title).items():
            if error:
                self._errors.setdefault(line, {})[column - 1] = error
            else:
                self._unknown.setdefault(line, set()).add(column - 1)
        preamble: list[Row] = []
        header: Row | None = None
        rows: list[Row] = []
        for line, values in enumerate(wb.rows(title), start=1):
            self._loaded[line] = values
            row = Row(list(values), line, "")
            if header is None:
                if row.blank:
                    preamble.append(row)
                else:
                    header = row
                    self._header_line = line
            else:
                rows.append(row)
        return Sheet(header=header or Row([]), rows=rows, preamble=preamble)

    def missing(self) -> str:
        if not self.workbook.exists():
            return (
                f"{self.workbook.path} does not exist; create it with a sheet {self.title} "
                "holding a header row (or set create_missing = true to let the sync create it)"
            )
        return (
            f"{self.workbook.display} has no sheet {self.title}; add one with a header row "
            "(or set create_missing = true to let the sync create it)"
        )

    def conflict_error(self, what: str = "changed") -> ConflictingWriteError:
        return self.workbook.file.conflict_error(what, self.entity)

    # -- saving
    def save(self, sheet: Sheet) -> None:
        if self.generation != self.workbook.generation:
            raise self.conflict_error("was modified")
        sheet = Sheet(sheet.header, list(sheet.rows), sheet.preamble)  # gone through 3 times
        edit = self._edit(sheet)
        self.workbook.save(self.entity, lambda book: self._write(book, sheet, edit))
        self._settle(sheet, edit)

    def _edit(self, sheet: Sheet) -> _Edit:
        header_line = self._header_line or 1
        names = [self.header_text(c).strip() for c in sheet.header.cells]
        cells: list[tuple[int, int, CellValue, str]] = []
        loaded_header = self._loaded.get(header_line, ())
        for index, cell in enumerate(sheet.header.cells):
            before = loaded_header[index] if index < len(loaded_header) else None
            if not _same(cell, before):
                cells.append((header_line, index, cell, ""))
        present = set()
        last = header_line
        for line, values in self._loaded.items():
            if line > header_line and not all(is_blank(v) for v in values):
                last = max(last, line)
        new_rows: list[tuple[int, list[CellValue]]] = []
        style_row = last if last > header_line else 0
        for row in sheet.rows:
            if not row.line:
                continue
            present.add(row.line)
            before_values = self._loaded.get(row.line, ())
            for index, cell in enumerate(row.cells):
                before = before_values[index] if index < len(before_values) else None
                if not _same(cell, before):
                    name = names[index] if index < len(names) else ""
                    cells.append((row.line, index, cell, name))
        next_line = last + 1
        for row in sheet.rows:
            if not row.line and not row.blank:
                new_rows.append((next_line, row.cells))
                next_line += 1
        cleared = [
            line
            for line, values in self._loaded.items()
            if line > header_line and line not in present and not all(is_blank(v) for v in values)
        ]
        return _Edit(header_line, cells, new_rows, style_row, cleared)

    def _write(self, book: Any, sheet: Sheet, edit: _Edit) -> None:
        ws = self.workbook.sheet_for_writing(book, self.title)
        names = [self.header_text(c).strip() for c in sheet.header.cells]
        for line, index, value, name in edit.cells:
            self._put(ws.cell(row=line, column=index + 1), value, name)
        for line in edit.cleared:
            for cell in _cells_of_row(ws, line):
                cell.value = None
        for line, values in edit.new_rows:
            for index, value in enumerate(values):
                if value in (None, ""):
                    continue
                cell = ws.cell(row=line, column=index + 1)
                if edit.style_row:
                    _copy_style(ws.cell(row=edit.style_row, column=index + 1), cell)
                self._put(cell, value, names[index] if index < len(names) else "")

    def _put(self, cell: Any, value: CellValue, column: str) -> None:
        kind = self.kinds.get(column) if column else None
        fmt = number_format_for(value, kind, cell.number_format)
        cell.value = None if value == "" else value
        if isinstance(value, str) and value:
            cell.data_type = "s"  # text that looks like a formula or an error stays text
            if neutralise(value) != value:
                cell.quotePrefix = True  # and stays text when someone edits the cell
        if fmt != cell.number_format:
            cell.number_format = fmt

    def _settle(self, sheet: Sheet, edit: _Edit) -> None:
        """After a successful save: what the sheet now holds is what was loaded."""
        self._header_line = edit.header_line
        sheet.header.line = edit.header_line
        self._loaded[edit.header_line] = tuple(sheet.header.cells)
        sheet.header.original = ""
        for line in edit.cleared:
            self._loaded.pop(line, None)
        new_lines = iter(line for line, _cells in edit.new_rows)
        taken = {line for line, _cells in edit.new_rows}
        for row in sheet.rows:
            if not row.line:
                if row.blank:
                    continue
                row.line = next(new_lines)
            elif row.line in taken:
                row.line = 0  # a blank row below the data, which a new row now fills
                continue
            self._loaded[row.line] = tuple(row.cells)
            row.original = ""


def _cells_of_row(ws: Any, line: int) -> Iterator[Any]:
    for column in range(1, ws.max_column + 1):
        cell = ws.cell(row=line, column=column)
        if cell.value is not None:
            yield cell


def _copy_style(source: Any, target: Any) -> None:
    if source.has_style:
        target.font = copy(source.font)
        target.border = copy(source.border)
        target.fill = copy(source.fill)
        target.number_format = source.number_format
        target.protection = copy(source.protection)
        target.alignment = copy(source.alignment)
