"""The spreadsheet connector: customers, invoices, payments and line items kept in spreadsheet
files.

Two storage formats, chosen by ``path``:

* a path ending in ``.xlsx`` is **one workbook** with a sheet per entity (``Customers``,
  ``Invoices``, ``Payments``, ``Line Items``), created when missing; the workbook's other
  sheets, styles, widths, number formats and formulas stay as the bookkeeper set them
  (:mod:`.xlsxtable`);
* any other path is **a folder of CSV files**, one per entity (``customers.csv``,
  ``invoices.csv``, ``payments.csv``, ``line_items.csv``; :mod:`.csvtable`).

A row's native id is its ``Sync ID`` cell, which the engine chooses (``assigns_ids``). A row a
person added with a blank ``Sync ID`` is read as a provisional record ``@line:N`` (N is the CSV
line or the sheet's row number) and gets its id through ``update(..., new_id=KEY)``. The
record's data is every named column except the id column, as text; the engine's mapping picks
the columns it uses and everything else — other columns, other rows, blank lines, the row
order — is left as it was.

The mapping in force for each entity (``prepare``) decides the header of a sheet the sync
creates (the columns the mapping writes, in its order) and, in a workbook, which columns hold
money and dates. Without ``prepare`` the default mappings in ``mappings/spreadsheet/`` apply.

A sheet's header is checked against that mapping (``structure``):

* two columns with one name (after trimming spaces) are a ``StructureError`` when the sync
  uses that name (a mapped column or the id column): it could not tell which one holds the
  field. Two alike that the mapping does not use are harmless and stay allowed;
* a mapped column missing from an existing sheet (renamed or removed) is reported as
  ``Structure.missing``: the engine treats it as a field this sheet does not hold yet, and a
  write that fills it adds the column at the end of the header. A renamed column's cells
  stay, as every unmapped column does;
* rows none of which shows a ``Sync ID`` (the column removed, or all its cells cleared) are
  reported as ``Structure.no_ids``: the engine refuses such a sheet while records are linked
  to it, and a new sheet typed by a person without the column gets it at the first write.

Line items stay grouped under their invoice (``GROUPED_BY``): in a CSV file a new row goes
right below the last row that shows its invoice (a row of a new invoice at the end); a
workbook adds every new row at the bottom, as it does for every sheet, so that no row moves.
Rows are never reordered: an order a person gave them is kept.

Writes are buffered per entity and made durable by ``flush(entity)``, which saves the file (for
a workbook: the whole workbook, once) atomically and refuses when someone changed it since it
was read. The storage format sits behind :class:`~.table.Table`.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

import syncengine
from syncengine.connector import (
    Capabilities,
    Connector,
    ConnectorContext,
    ConnectorOptions,
    NativeData,
    NativeRecord,
    ReadPass,
    Structure,
)
from syncengine.errors import (
    ConflictingWriteError,
    ConnectorError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
    RetriableError,
    SyncEngineError,
)
from syncengine.mapping import EntityMapping, load_mapping

from .columns import ColumnKind, column_kinds, new_columns
from .csvtable import CsvTable
from .rows import SheetRows
from .table import CellValue, Fingerprint, Row, Sheet, Table, is_blank

if TYPE_CHECKING:
    from .xlsxtable import Workbook

ENTITIES = ("customers", "invoices", "payments", "line_items")
"""What the spreadsheet holds, in the order a new workbook gets its sheets."""
UNPREPARED = ("customers", "invoices", "payments")
"""The sheets a new workbook gets when no mapping says which entities it holds."""
GROUPED_BY = {"line_items": "invoice"}
"""Entities whose rows stay together by a reference (a line's invoice): the canonical field
whose column a new row is placed by."""


@functools.cache
def default_mapping(entity: str) -> EntityMapping:
    """The default mapping of an entity (``mappings/spreadsheet/<entity>.toml``)."""
    return load_mapping("spreadsheet", entity)


DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    entity: new_columns(default_mapping(entity)) for entity in ENTITIES
}
"""Per entity the header of a new file or sheet (after the id column), from the default
mapping; a mapping given through ``prepare`` takes its place."""

SHEETS: dict[str, str] = {
    entity: entity.replace("_", " ").title() if "_" in entity else entity.capitalize()
    for entity in ENTITIES
}
"""The sheet of each entity in a workbook (``Line Items``)."""

SUFFIXES = (".csv",)
"""File types a folder may hold (the ``files`` option)."""
WORKBOOK_SUFFIX = ".xlsx"
_OTHER_WORKBOOKS = (".xls", ".xlsm", ".xlsb", ".ods", ".numbers")
_SHEET_TITLE_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")

PROVISIONAL = "@line:"

MARK_VERSION = 1
"""The version of the read marks' form (``_mark``): a mark of another version (or of another
release of syncengine) never matches, so the file is read whole once."""


def is_workbook(path: str) -> bool:
    return PurePath(path).suffix.lower() == WORKBOOK_SUFFIX


class SpreadsheetOptions(ConnectorOptions):
    path: str
    """A workbook (``books.xlsx``: one sheet per entity) or a folder of CSV files (any other
    path); relative to the config file's folder."""
    id_column: str = "Sync ID"
    encoding: str = "utf-8"
    """CSV only: the files' text encoding."""
    delimiter: str = ","
    """CSV only: the cell delimiter."""
    create_missing: bool = True
    """Create the folder, files holding only the header, the workbook and its sheets when
    they do not exist."""
    files: dict[str, str] = Field(default_factory=dict)
    """CSV only: file name per entity instead of ``<entity>.csv``:
    ``{customers = "clients.csv"}``."""
    sheets: dict[str, str] = Field(default_factory=dict)
    """Workbook only: sheet title per entity instead of ``Customers``, ``Invoices``,
    ``Payments``, ``Line Items``: ``{customers = "Clients"}``."""
    timezone: str | None = None
    """The IANA time zone (``America/Chicago``) the sheet's dates and times are shown in:
    the default zone of the ``date`` transforms of this member's mappings (UTC when unset)."""

    @field_validator("path")
    @classmethod
    def _supported_path(cls, value: str) -> str:
        suffix = PurePath(value).suffix.lower()
        if suffix in _OTHER_WORKBOOKS:
            raise ValueError(
                f"{value!r}: {suffix} workbooks are not supported; save the workbook as an "
                "Excel workbook (.xlsx), or give a folder of CSV files"
            )
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown encoding {value!r}; "
                "use a name such as utf-8, utf-8-sig, cp1252 or latin-1"
            ) from None
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1 or value in '"\r\n':
            raise ValueError(
                f"the delimiter must be one character other than a quote or a newline, "
                f'not {value!r} (for tab-separated files write delimiter = "\\t")'
            )
        return value

    @field_validator("id_column")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError('id_column must name a column, such as "Sync ID"')
        return value.strip()

    @field_validator("files")
    @classmethod
    def _file_names(cls, value: dict[str, str]) -> dict[str, str]:
        for entity, name in value.items():
            _check_entity("files", entity)
            if not name or PurePath(name).name != name or name in (".", ".."):
                raise ValueError(
                    f"files.{entity}: {name!r} must be a file name inside the folder given as path"
                )
            if PurePath(name).suffix.lower() not in SUFFIXES:
                raise ValueError(
                    f"files.{entity}: {name!r} is not a supported file type; use one of "
                    + ", ".join(SUFFIXES)
                    + " (a workbook is one .xlsx file given as path)"
                )
        return value

    @field_validator("sheets")
    @classmethod
    def _sheet_titles(cls, value: dict[str, str]) -> dict[str, str]:
        for entity, title in value.items():
            _check_entity("sheets", entity)
            if not title.strip() or len(title) > 31 or _SHEET_TITLE_FORBIDDEN.search(title):
                raise ValueError(
                    f"sheets.{entity}: {title!r} cannot be a sheet title; use at most 31 "
                    "characters and none of [ ] : * ? / \\"
                )
        titles = [t.casefold() for t in value.values()]
        if len(set(titles)) != len(titles):
            raise ValueError("sheets: two entities cannot share one sheet")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as "
                '"America/Chicago", "Europe/London" or "UTC"'
            ) from None
        return value

    @model_validator(mode="after")
    def _options_of_the_format(self) -> SpreadsheetOptions:
        if is_workbook(self.path) and self.files:
            raise ValueError(
                "files names CSV files in a folder, but path is a workbook; "
                "rename its sheets with the sheets option instead"
            )
        if not is_workbook(self.path) and self.sheets:
            raise ValueError(
                "sheets names the sheets of a workbook, but path is a folder of CSV files; "
                "rename its files with the files option instead (or give a path ending in .xlsx)"
            )
        return self


def _check_entity(option: str, entity: str) -> None:
    if entity not in ENTITIES:
        known = ", ".join(ENTITIES)
        raise ValueError(f"{option}: unknown entity {entity!r}; the spreadsheet holds {known}")


class SpreadsheetConnector(Connector):
    """Customers, invoices, payments and line items in a workbook or a folder of CSV files."""

    type_name = "spreadsheet"
    Options = SpreadsheetOptions
    buffered_writes = True
    reads_json = True  # a record is its row's cells as text, column name -> text

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        if not isinstance(options, SpreadsheetOptions):
            raise TypeError(f"{type(self).__name__} needs SpreadsheetOptions, got {options!r}")
        super().__init__(options, context)
        self.settings = options
        path = Path(options.path).expanduser()
        path = path if path.is_absolute() else Path(context.base_dir) / path
        self.workbook: Workbook | None = None
        if is_workbook(options.path):
            # imported here (and in _table): only a workbook needs openpyxl, not CSV files
            from .xlsxtable import Workbook

            self.folder = path.parent
            self.workbook = Workbook(
                path,
                connector=self.name,
                create_missing=options.create_missing,
                new_sheets=self._new_sheets,
            )
        else:
            self.folder = path
        self._work: dict[str, _Working] = {}
        self._loaded: dict[str, Table] = {}
        """entity -> the table of its latest working copy (``_settled``)."""
        self._by_mark: dict[str, _ByMark] = {}
        """entity -> its file as the read mark the engine holds names it (``expect``)."""
        self._mappings: dict[str, EntityMapping] = {}

    # -- description
    def entities(self) -> tuple[str, ...]:
        return ENTITIES

    def capabilities(self, entity: str) -> Capabilities:
        return Capabilities(assigns_ids=True)

    def file_name(self, entity: str) -> str:
        return self.settings.files.get(entity, f"{entity}.csv")

    def sheet_title(self, entity: str) -> str:
        return self.settings.sheets.get(entity, SHEETS.get(entity, entity))

    def prepare(self, entity: str, mapping: EntityMapping) -> None:
        self._mappings[entity] = mapping
        work = self._work.get(entity)
        if work is not None:
            work.group_by = self._group_column(entity)
        if work is not None and self.workbook is not None:
            from .xlsxtable import XlsxTable  # loaded already, with the workbook

            if isinstance(work.table, XlsxTable):
                work.table.kinds = self._kinds(entity)
                work.table.mapped = self._read_columns(entity)

    def mapping(self, entity: str) -> EntityMapping:
        """The mapping in force for ``entity``: the one given to ``prepare``, else the default."""
        found = self._mappings.get(entity)
        return found if found is not None else default_mapping(entity)

    def new_header(self, entity: str) -> list[str]:
        """The header of a new file or sheet of ``entity``."""
        columns = [c for c in new_columns(self.mapping(entity)) if c != self.settings.id_column]
        return [self.settings.id_column, *columns]

    def _new_sheets(self, saving: str) -> dict[str, list[str]]:
        """The sheets a workbook should hold when ``saving`` is saved: those of the entities
        the engine prepared (the pipeline's, whose mappings are known), else the customers,
        invoices and payments a workbook always held (and ``saving``'s)."""
        chosen = [e for e in ENTITIES if e in self._mappings or e == saving]
        if not self._mappings:
            chosen = [e for e in ENTITIES if e in UNPREPARED or e == saving]
        return {self.sheet_title(e): self.new_header(e) for e in chosen}

    def _kinds(self, entity: str) -> dict[str, ColumnKind]:
        return column_kinds(self.mapping(entity))

    def _group_column(self, entity: str) -> str | None:
        """The column new rows of ``entity`` are placed by (``GROUPED_BY``), in a CSV file;
        None in a workbook, where new rows go at the bottom."""
        field = GROUPED_BY.get(entity)
        if field is None or self.workbook is not None:
            return None
        return self.mapping(entity).native_name(field)

    def _read_columns(self, entity: str) -> frozenset[str]:
        return frozenset(f.native for f in self.mapping(entity).fields if f.direction != "write")

    def _mapped_columns(self, entity: str) -> tuple[str, ...]:
        """Every column the mapping in force reads or writes, in its order (not the id
        column, which is the connector's)."""
        names = (f.native.strip() for f in self.mapping(entity).fields)
        return tuple(n for n in dict.fromkeys(names) if n and n != self.settings.id_column)

    def structure(self, entity: str) -> Structure:
        """The sheet of ``entity`` as the last read loaded it (loaded now if it was not):
        the mapped columns it lacks, and whether its rows show no ``Sync ID`` at all. A
        duplicated column the sync uses raises ``StructureError`` (see the module
        docstring)."""
        work = self._work.get(entity)
        by_mark = self._by_mark.get(entity)
        if work is None and by_mark is not None and not by_mark.diverged:
            # as when its mark was stored, which only a whole sheet gets: not loaded
            return Structure(where=by_mark.table.display)
        if work is None or work.stale:
            work = self._working(entity, reload=True)
            work.fresh = True  # the read that follows may take it as it is
        return work.structure(self._mapped_columns(entity))

    def expect(self, entity: str, token: str | None) -> None:
        """Take the file of ``entity`` by the read mark the engine holds when the file is
        still the one the mark names: then it is described (``structure``) and read
        (``read_incremental``) without being loaded, and loaded only for a write or a
        lookup, as that file (``_loaded_as_marked``)."""
        self._by_mark.pop(entity, None)
        if self.workbook is not None or token is None or entity not in ENTITIES:
            return
        if entity in self._work:
            return
        table = self._table(entity)
        seen = table.look()
        if seen is not None and token == self._mark_of(entity, seen):
            self._by_mark[entity] = _ByMark(table, seen)

    # -- reading
    def read(self, entity: str) -> Iterator[NativeRecord]:
        yield from self._working(entity, reload=True).records()

    def read_incremental(self, entity: str, token: str | None) -> ReadPass | None:
        """A pass of a CSV file that lists nothing when the file is exactly as the sync last
        left it (``token``: its modification time, size and content digest, and how the
        mapping and the options read it), and every row otherwise. The engine then takes
        every linked row as last seen, which it is. None for a workbook (read whole, as
        ``read`` does): its one file holds every entity's sheet.

        The token of a pass is only given once the entity is applied (``ReadPass.settle``,
        ``_settled``): the file as the sync's own writes left it, or None when the rows
        cannot be vouched for (the sheet lacks a mapped column or its ids; the file was
        loaded again since this read)."""
        if self.workbook is not None:
            return None
        by_mark = self._by_mark.get(entity)
        if (
            by_mark is not None
            and not by_mark.read
            and entity not in self._work
            and token == self._mark_of(entity, by_mark.seen)
            and by_mark.table.look() == by_mark.seen
        ):  # taken by its mark (``expect``) and still that file: nothing loaded
            by_mark.read = True
            settled = functools.partial(self._settled_by_mark, entity, by_mark)
            return ReadPass(
                iter(()), complete=False, finish=lambda: token, exact=True, settle=settled
            )
        self._by_mark.pop(entity, None)  # read as the file is now
        work = self._working(entity, reload=True)
        mark = self._mark(entity, work.table)  # None: no file yet
        shape = work.structure(self._mapped_columns(entity))
        whole = not (shape.missing or shape.no_ids)
        settle = functools.partial(self._settled, entity, work.table, whole)
        if whole and mark is not None and token == mark:
            return ReadPass(
                iter(()), complete=False, finish=lambda: token, exact=True, settle=settle
            )
        return ReadPass(
            work.records(), complete=True, finish=lambda: mark, exact=True, settle=settle
        )

    def _mark(self, entity: str, table: Table) -> str | None:
        """The read mark naming the file ``table`` last loaded or saved and how it is read,
        or None when the table cannot tell what it holds (no file yet)."""
        seen = table.fingerprint()
        return None if seen is None else self._mark_of(entity, seen)

    def _mark_of(self, entity: str, seen: Fingerprint) -> str:
        """The read mark naming the file ``seen`` describes and how the entity is read."""
        s = self.settings
        reading = [self.mapping(entity).fingerprint(), s.id_column, s.encoding, s.delimiter]
        reading += [s.timezone or "", self.file_name(entity), *self._mapped_columns(entity)]
        # a release may read a file otherwise: the first run after an upgrade reads it whole
        version = f"{MARK_VERSION}/{syncengine.__version__}"
        return json.dumps(
            {"v": version, "file": [seen.mtime_ns, seen.size, seen.digest], "reading": reading},
            separators=(",", ":"),
        )

    def _settled(self, entity: str, table: Table, whole: bool) -> str | None:
        """The mark of the file as this run left it, the sync's own writes included: what
        ``table`` last loaded or saved, while it is the entity's latest working copy (a
        copy loaded since, by a lookup, may hold what someone else wrote, which no read
        of this run saw). None when the read could not vouch for every row (``whole``)."""
        if not whole or self._loaded.get(entity) is not table:
            return None
        return self._mark(entity, table)

    def _settled_by_mark(self, entity: str, by_mark: _ByMark) -> str | None:
        """The mark of the file as this run left it when it was read by its mark: the same
        mark when it was never loaded, else the file as the loaded copy last loaded or saved
        it (None when the file had changed before it was loaded: ``_loaded_as_marked``)."""
        if by_mark.diverged:
            return None
        if by_mark.loaded is None:
            return self._mark_of(entity, by_mark.seen)
        return self._mark(entity, by_mark.loaded)

    def _loaded_as_marked(self, entity: str, work: _Working) -> None:
        """A file read by its mark and loaded now (for a write or a lookup) must be the
        file the mark named, or the one this run's last load or save left: otherwise
        someone changed it since the run read it, and nothing is written to it (the next
        run reads it whole)."""
        by_mark = self._by_mark.get(entity)
        if by_mark is None or not by_mark.read:
            return
        expected = by_mark.seen if by_mark.loaded is None else by_mark.loaded.fingerprint()
        if by_mark.diverged or work.table.fingerprint() != expected:
            by_mark.diverged = True
            work.foreign = True
        by_mark.loaded = work.table

    def get(self, entity: str, native_id: str) -> NativeRecord | None:
        """The row with Sync ID ``native_id`` in the working copy (loaded if it is not)."""
        work = self._work.get(entity)
        if work is None or work.stale or work.unsaved:
            work = self._working(entity, reload=True)
        handles = work.by_id.get(native_id)
        return work.record(work.rows[handles[0]]) if handles else None

    def find(self, entity: str, data: NativeData) -> list[NativeRecord]:
        work = self._work.get(entity)
        if work is None or work.stale or work.unsaved:
            work = self._working(entity, reload=True)
        return work.find(data)

    # -- writing
    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        return self._writable(entity).create(data, key)

    def update(
        self,
        entity: str,
        native_id: str,
        patch: NativeData,
        *,
        full: NativeData,
        new_id: str | None = None,
    ) -> NativeRecord | None:
        return self._writable(entity).update(native_id, patch, new_id)

    def delete(self, entity: str, native_id: str) -> None:
        self._writable(entity).delete(native_id)

    def flush(self, entity: str) -> None:
        work = self._work.get(entity)
        if work is not None:
            work.flush()

    def flushes_alone(self, entity: str) -> bool:
        """A CSV file is written alone, and a save that failed for good takes no more writes
        (``_Working.unsaved``); a workbook is saved whole, every sheet each time."""
        return self.workbook is None

    def release(self, entity: str) -> None:
        """Drop the working copy of a CSV file once it is written (a workbook's sheets live
        in one workbook, kept until ``close``)."""
        work = self._work.get(entity)
        if work is not None and not work.pending and self.workbook is None:
            del self._work[entity]

    def close(self) -> None:
        self._work.clear()
        self._by_mark.clear()
        if self.workbook is not None:
            self.workbook.close()

    # -- the working copies
    def _working(self, entity: str, *, reload: bool = False) -> _Working:
        """The working copy of ``entity``; ``reload``: loaded anew unless it holds writes not
        flushed yet, or was loaded for ``structure`` and the file has not changed since."""
        work = self._work.get(entity)
        if work is not None and reload and work.fresh:
            work.fresh = False
            if not work.stale and not work.pending and work.table.unchanged():
                return work
        if work is None or (reload and (work.stale or work.unsaved or not work.pending)):
            work = self._load(entity)
            self._work[entity] = work
        return work

    def _writable(self, entity: str) -> _Working:
        work = self._working(entity)
        if work.stale or work.foreign:
            raise work.table.conflict_error()
        if work.unsaved is not None:
            raise work.not_saved()
        return work

    def _load(self, entity: str) -> _Working:
        if entity not in ENTITIES:
            known = ", ".join(ENTITIES)
            raise FatalConnectorError(
                f"the spreadsheet has no entity {entity!r}; it holds {known}",
                connector=self.name,
                entity=entity,
            )
        table = self._table(entity)
        self._loaded[entity] = table
        default = Row(list[CellValue](self.new_header(entity)))
        sheet = table.load()
        if sheet is None:
            if not self.settings.create_missing:
                raise table.structure(table.missing())
            work = _Working(table, Sheet(header=default), self.settings.id_column, create=True)
            self._loaded_as_marked(entity, work)
            return work
        if not sheet.header.cells:  # an empty file or sheet
            sheet.header = default
        work = _Working(table, sheet, self.settings.id_column, create=False)
        problem = work.duplicated_columns({*self._mapped_columns(entity), work.id_column})
        if problem:
            raise table.structure(problem)
        work.group_by = self._group_column(entity)
        self._loaded_as_marked(entity, work)
        return work

    def _table(self, entity: str) -> Table:
        if self.workbook is not None:
            from .xlsxtable import XlsxTable

            return XlsxTable(
                self.workbook,
                self.sheet_title(entity),
                connector=self.name,
                entity=entity,
                kinds=self._kinds(entity),
                mapped=self._read_columns(entity),
            )
        name = self.file_name(entity)
        return CsvTable(
            self.folder / name,
            display=name,
            encoding=self.settings.encoding,
            delimiter=self.settings.delimiter,
            connector=self.name,
            entity=entity,
        )


_KEY_LIKE = re.compile(r"[0-9a-fA-F]{16,64}")
"""What a Sync ID the sync gave looks like (hex): a column of such values under a blank
header is the Sync ID column, not a note."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


@dataclass
class _ByMark:
    """An entity's file that is the one the engine's read mark names (``expect``)."""

    table: Table
    """The file, not loaded."""
    seen: Fingerprint
    """What it was when the mark was checked."""
    read: bool = False
    """A pass was read by the mark (nothing listed)."""
    loaded: Table | None = None
    """The table of the working copy loaded since that pass (a write, a lookup)."""
    diverged: bool = False
    """The file had changed when it was loaded: the run leaves it alone."""


class _RowsById:
    """Which rows of a working copy hold each Sync ID: the row's handle as it is where one row
    holds it (every row but a copied one: a list each cost a first sync of a million rows
    about 70 MB), a list of handles where copied rows share it."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[str, int | list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self._rows)

    def get(self, sync_id: str) -> list[int]:
        """The handles of the rows holding ``sync_id`` (none: an empty list)."""
        found = self._rows.get(sync_id)
        if found is None:
            return []
        return [found] if isinstance(found, int) else found

    def add(self, sync_id: str, handle: int) -> None:
        """One more row holds ``sync_id``."""
        found = self._rows.get(sync_id)
        if found is None:
            self._rows[sync_id] = handle
        elif isinstance(found, int):
            self._rows[sync_id] = [found, handle]
        else:
            found.append(handle)

    def put(self, sync_id: str, handle: int) -> None:
        """Row ``handle`` alone holds ``sync_id``."""
        self._rows[sync_id] = handle

    def pop(self, sync_id: str) -> None:
        """No row holds ``sync_id`` any more."""
        self._rows.pop(sync_id, None)


class _Working:
    """The connector's copy of one entity's file: rows as loaded plus the buffered writes."""

    def __init__(self, table: Table, sheet: Sheet, id_column: str, *, create: bool) -> None:
        self.table = table
        self.id_column = id_column
        self.header = sheet.header
        self.preamble = sheet.preamble
        self.rows = SheetRows(enumerate(sheet.rows), table.row_parser())
        """The rows by handle, in order; those the sync added wait on disk once saved."""
        self._next = len(self.rows)
        self.by_line = {row.line: handle for handle, row in self.rows.items()}
        self.pending = create  # a missing file is created at the next flush
        self.created = create  # no sheet was there: it gets the whole header
        self.stale = False  # the file changed under us: nothing more is written to it
        self.unsaved: SyncEngineError | None = None
        """Why a save of the working copy failed for good (not a file open in another
        program, which a later save may find closed): it takes no more writes, and a read
        loads the file anew, so that a first sync's later slices cannot save the rows whose
        writes failed, nor a lookup find them."""
        self.foreign = False
        """Loaded after the run read the file by its mark, and not that file: someone changed
        it since, so nothing is written to it (``_loaded_as_marked``); lookups may use it."""
        self.fresh = False  # loaded for a look at its structure, not read yet
        self.group_by: str | None = None
        """The column a new row is placed by: below the last row showing its value."""
        self._unplaced: list[int] = []
        """Rows added since the last save, to be placed by ``group_by`` (``_arrange``)."""
        self._index_columns()
        self.by_id = _RowsById()
        for handle, row in self.rows.items():
            if (sync_id := self.row_id(row)) and not row.blank:
                self.by_id.add(sync_id, handle)

    def _index_columns(self) -> None:
        self.columns: dict[str, int] = {}
        for index, cell in enumerate(self.header.cells):
            name = self.table.header_text(cell).strip()
            if name:
                self.columns.setdefault(name, index)
        self.id_index = self.columns.get(self.id_column)

    # -- describing the sheet
    def duplicated_columns(self, used: set[str]) -> str:
        """Why the header cannot be read: names in ``used`` (the columns the sync reads or
        writes) that head more than one column, with where they are and the fix; "" when
        none does. Names are compared as the columns are looked up: spaces trimmed."""
        where: dict[str, list[int]] = {}
        for index, cell in enumerate(self.header.cells):
            name = self.table.header_text(cell).strip()
            if name in used:
                where.setdefault(name, []).append(index)
        problems = []
        for name, indexes in where.items():
            if len(indexes) < 2:
                continue
            refs = [self.table.column_ref(i) for i in indexes]
            listed = ", ".join(refs[:-1]) + " and " + refs[-1]
            which = "one of them" if len(refs) == 2 else "all but one of them"
            problems.append(
                f"{self.table.display}: {len(refs)} columns are named {name} (columns "
                f"{listed}), so the sync cannot tell which one holds {name}; rename or delete "
                f"{which}"
            )
        return "; ".join(problems)

    def structure(self, mapped: tuple[str, ...]) -> Structure:
        """The mapped columns (of ``mapped``) the loaded sheet lacks, and why no row shows
        an id when none does (see ``Structure``). A sheet the sync is about to create lacks
        nothing: it gets the whole header."""
        where = self.table.display
        if self.created:
            return Structure(where=where, absent=True, misread=self._renamed(mapped))
        missing = tuple(name for name in mapped if name not in self.columns)
        # only a header that shows none of the mapped columns can be misread as a whole: one
        # that shows some of them lost the id column for real
        found = any(name in self.columns for name in mapped if name != self.id_column)
        misread = self._misread_header() if self.id_index is None and not found else ""
        no_ids = ""
        if not self.by_id and any(not row.blank for row in self.rows.values()):
            no_ids = (
                f"the {self.id_column} column is missing"
                f"{'' if misread else self._looks_like_id_column()}"
                if self.id_index is None
                else f"every {self.id_column} cell is empty"
            )
        return Structure(where=where, missing=missing, no_ids=no_ids, misread=misread)

    def _renamed(self, mapped: tuple[str, ...]) -> str:
        """Where a missing sheet may have gone: another sheet of the workbook whose header
        holds the Sync ID column and every mapped column (the sheet renamed), with the two
        fixes; "" when there is none (or the member is a folder of CSV files)."""
        workbook = getattr(self.table, "workbook", None)
        title = getattr(self.table, "title", None)
        if workbook is None or title is None:
            return ""
        other = workbook.sheet_holding({self.id_column, *mapped}, besides=title)
        if other is None:
            return ""
        entity = self.table.entity
        return (
            f"sheet {other!r} has its header: was it renamed? Name it {title} again, or name "
            f"it in the connector's sheets option: sheets = {{ {entity} = {json.dumps(other)} }}"
        )

    def _looks_like_id_column(self) -> str:
        """`` (column B is named 'sync id': name it Sync ID)`` when a column's name differs
        from the id column's only in case, spaces or punctuation, else ""."""

        for name, index in self.columns.items():
            if _folded(name) == _folded(self.id_column):
                ref = self.table.column_ref(index)
                return f" (column {ref} is named {name!r}: name it {self.id_column})"
        named = set(self.columns.values())
        for index, cell in enumerate(self.header.cells):
            if index in named or self.table.header_text(cell).strip():
                continue
            values = (row.get(index) for row in self.rows.values())
            held = next((v for v in values if v not in ("", None)), None)
            if held is not None and _KEY_LIKE.fullmatch(str(held).strip()):
                ref = self.table.column_ref(index)
                return (
                    f" (column {ref} has no name in the header but holds values such as "
                    f"{_shortened(str(held))!r}: if those are the Sync IDs, type "
                    f"{self.id_column} in its header cell)"
                )
        return ""

    def _misread_header(self) -> str:
        """Why a CSV header may show no id column although the file has one: its names run
        together in one column, separated by another character than the ``delimiter``
        option; or none of them is text a person typed (the ``encoding`` option is not the
        file's). "" when neither is the case: the column is really missing."""

        above = self._title_above_header()
        if above:
            return above
        delimiter = getattr(self.table, "delimiter", None)
        encoding = getattr(self.table, "encoding", None)
        if delimiter is None or encoding is None or not self.columns:
            return ""
        wanted = _folded(self.id_column)
        for name in self.columns:
            for other in (",", ";", "\t", "|"):
                parts = name.split(other)
                if other != delimiter and len(parts) > 1 and wanted in map(_folded, parts):
                    return (
                        f"the header reads as one column ({_shortened(name)!r}), its names "
                        f"separated by {other!r}, and the connector's delimiter option is "
                        f"{delimiter!r}: set delimiter = {other!r} in the config"
                    )
        if wanted.isascii() and not any(
            ch.isascii() and ch.isalpha() for name in self.columns for ch in name
        ):
            return (
                f"no column name in the header reads as {encoding} text, so the connector's "
                "encoding option is not the file's: set encoding to the one the file was "
                'saved in (such as "utf-8" or "cp1252") in the config'
            )
        return ""

    def _title_above_header(self) -> str:
        """Why the header shows no id column when a title or a note was typed above it: the
        row after it names the id column. "" otherwise."""
        first = self.rows.get(0)
        if first is None or not self.header.cells:
            return ""
        names = {_folded(self.table.header_text(cell)) for cell in first.cells}
        if _folded(self.id_column) not in names:
            return ""
        shown = next(
            (text for c in self.header.cells if (text := self.table.header_text(c).strip())), ""
        )
        return (
            f"{self.table.line_word} {self.header.line} ({_shortened(shown)!r}) stands above the "
            f"header, which names the {self.id_column} column in the row below: the header "
            "must be the first row that is not blank, so delete that row or move it out of "
            "the table"
        )

    # -- describing rows
    def row_id(self, row: Row) -> str:
        if self.id_index is None:
            return ""
        return self.table.decode_cell(row.get(self.id_index), self.id_column).strip()

    def location(self, row: Row) -> str:
        return self.table.location(row.line)

    def ragged(self, row: Row) -> str:
        if not self.table.checks_width:
            return ""
        width = len(self.header.cells)
        if len(row.cells) <= width or all(is_blank(cell) for cell in row.cells[width:]):
            return ""
        return (
            f"{self.location(row)}: {len(row.cells)} cells but the header has {width} columns "
            "(is there an unquoted comma?)"
        )

    def duplicated(self, sync_id: str, *, within: bool = False) -> str:
        """Why rows sharing ``sync_id`` cannot be read, or "". ``within``: the message goes
        beside one of those rows' location, so the file and sheet are not named again."""
        handles = self.by_id.get(sync_id)
        if len(handles) < 2:
            return ""
        lines = sorted(self.rows[h].line for h in handles)
        which = "one of them" if len(lines) == 2 else "all but one of them"
        where = (
            f"{self.table.line_word}s {', '.join(map(str, lines[:-1]))} and {lines[-1]}"
            if within
            else self.table.locations(lines)
        )
        return (
            f"{where} share {self.id_column} {sync_id}; give {which} a new (blank) {self.id_column}"
        )

    def record(self, row: Row) -> NativeRecord:
        sync_id = self.row_id(row)
        ragged = self.ragged(row)
        error = ragged or (self.duplicated(sync_id, within=True) if sync_id else "")
        if not error and sync_id.startswith(PROVISIONAL):
            error = (
                f"{self.location(row)}: {self.id_column} {sync_id} looks like the sync's "
                f"name for a row without one; clear that cell"
            )
        if not error:
            unknown = self.table.unknown_cells(row, self.columns)
            if unknown:
                error = (
                    f"{self.location(row)}: {', '.join(unknown)} "
                    f"{'holds a formula' if len(unknown) == 1 else 'hold formulas'} whose value "
                    "was never calculated (the workbook was last saved by a program that does "
                    "not calculate formulas); open it in Excel or LibreOffice, save it, and sync "
                    "again"
                )
        if not error:
            errors = self.table.error_cells(row, self.columns)
            if errors:
                shown = ", ".join(f"{name} holds {value}" for name, value in errors)
                error = (
                    f"{self.location(row)}: {shown}, a spreadsheet error, not a value; correct "
                    f"the {'cell' if len(errors) == 1 else 'cells'} (or the formula behind "
                    f"{'it' if len(errors) == 1 else 'them'}) and sync again"
                )
        if not error:
            error = self.table.oversized(row, self.columns)
        data: NativeData = {}
        if not ragged:  # its cells do not line up with the columns: no data rather than wrong data
            decode, id_index = self.table.decode_cell, self.id_index
            cells = row.cells
            width = len(cells)
            data = {
                name: decode(cells[index] if index < width else "", name)  # row.get, inlined
                for name, index in self.columns.items()
                if index != id_index
            }
        return NativeRecord(
            id=sync_id or f"{PROVISIONAL}{row.line}",
            data=data,
            provisional=not sync_id,
            location=self.location(row),
            error=error,
        )

    # -- reading
    def records(self) -> Iterator[NativeRecord]:
        for row in self.rows.values():
            if not row.blank:
                yield self.record(row)

    def find(self, data: Mapping[str, Any]) -> list[NativeRecord]:
        sync_id = _text(data.get(self.id_column)).strip()
        if sync_id:
            return [self.record(self.rows[h]) for h in self.by_id.get(sync_id)]
        # the text a cell would hold once written (a workbook shows 1234.50 as 1234.5)
        wanted = {
            name: self.table.decode_cell(self.table.encode_cell(_text(v), name), name)
            for name, v in data.items()
            if _text(v) != ""
        }
        found = []
        for row in self.rows.values():
            if row.blank or self.ragged(row):
                continue
            record = self.record(row)
            if all(record.data.get(name) == value for name, value in wanted.items()):
                found.append(record)
        return found

    # -- writing
    def _locate(self, native_id: str, new_id: str | None = None) -> tuple[int, Row]:
        display = self.table.display
        if native_id.startswith(PROVISIONAL):
            line = native_id[len(PROVISIONAL) :]
            handle = self.by_line.get(int(line)) if line.isdigit() else None
            row = self.rows.get(handle) if handle is not None else None
            if handle is None or row is None or row.blank:
                raise NotFoundError(f"{self.table.line_word} {line} holds no row", location=display)
            current = self.row_id(row)
            if current and new_id is not None and current != new_id:
                raise RecordError(
                    f"the row already has {self.id_column} {current}", location=self.location(row)
                )
        else:
            handles = self.by_id.get(native_id)
            if not handles:
                raise NotFoundError(f"no row has {self.id_column} {native_id}", location=display)
            if len(handles) > 1:
                raise RecordError(self.duplicated(native_id))
            handle = handles[0]
            row = self.rows[handle]
        if problem := self.ragged(row):
            raise RecordError(f"{problem}; the row is left as it is until someone fixes it")
        return handle, row

    def _check_new_id(self, sync_id: str, handle: int | None) -> None:
        if not sync_id or sync_id != sync_id.strip() or sync_id.startswith(PROVISIONAL):
            raise RecordError(
                f"{sync_id!r} cannot be a {self.id_column}", location=self.table.display
            )
        others = [h for h in self.by_id.get(sync_id) if h != handle]
        if others:
            raise RecordError(
                f"{self.id_column} {sync_id} is already used",
                location=self.location(self.rows[others[0]]),
            )

    def _stage(self, values: Mapping[str, Any]) -> list[tuple[str, CellValue]]:
        """(column, cell) for every value to write; raises before anything changes."""
        staged = []
        encode, id_column = self.table.encode_cell, self.id_column
        for name, value in values.items():
            column = name.strip()
            if not column or column == id_column:
                continue
            staged.append((column, encode(value if type(value) is str else _text(value), column)))
        new = [name for name, _ in staged if name not in self.columns]
        if new:
            width = len(self.header.cells)
            for row in self.rows.values():
                if self.ragged(row):
                    raise RecordError(
                        f"cannot add column {new[0]!r} while {self.location(row)} has "
                        f"{len(row.cells)} cells and the header {width} columns: the extra cells "
                        "would land in the new column; fix that row first",
                        location=self.table.display,
                    )
        return staged

    def _ensure_id_column(self) -> None:
        """A sheet without the id column gets it at its first write: as its first column in
        a CSV file, as its last in a workbook (where no cell may move)."""
        if self.id_index is not None:
            return
        if self.table.id_column_first:
            self.header.insert(0, self.id_column)
            for row in self.rows.values():
                if not row.blank:
                    row.insert(0, "")
        else:
            self.header.set(self._free_column(), self.id_column)
        self._index_columns()

    def _free_column(self) -> int:
        """Where a new column goes: right of the header and of every cell that holds anything
        (a workbook may hold data in columns nobody named)."""
        width = len(self.header.cells)
        for row in self.rows.values():
            for index in range(len(row.cells) - 1, width - 1, -1):
                if not is_blank(row.cells[index]):
                    width = index + 1
                    break
        return width

    def _apply(self, row: Row, staged: list[tuple[str, CellValue]], *, fresh: bool = False) -> None:
        """Set the staged cells of ``row``; on an existing row, a cell that already shows the
        value is left as it is (its type, its formula). A ``fresh`` row holds nothing yet."""
        decode = self.table.decode_cell
        for name, cell in staged:
            index = self.columns.get(name)
            if index is None:
                index = self._free_column()
                self.header.set(index, name)
                self.columns[name] = index
            if fresh or decode(row.get(index), name) != decode(cell, name):
                row.set(index, cell)

    def create(self, data: Mapping[str, Any], key: str) -> NativeRecord:
        self._check_new_id(key, None)
        id_cell = self.table.encode_cell(key, self.id_column)
        staged = self._stage(data)
        self._ensure_id_column()
        assert self.id_index is not None
        row = Row([""] * len(self.header.cells))
        row.set(self.id_index, id_cell)
        self._apply(row, staged, fresh=True)
        handle, self._next = self._next, self._next + 1
        self._place(handle, row)
        self.by_id.put(key, handle)
        self.pending = True
        return self.record(row)

    def _place(self, handle: int, row: Row) -> None:
        """Add a new row at the end for now; ``_arrange`` moves it below its group's rows
        when the sheet is saved."""
        self.rows[handle] = row
        if self.group_by and self.columns.get(self.group_by) is not None:
            self._unplaced.append(handle)

    def _arrange(self) -> None:
        """Before saving: each row added this run goes below the last row that shows its
        value in ``group_by`` (its invoice), rows of a value no older row shows stay at the
        end, together, in the order they were added; the other rows keep their order. One
        pass over the sheet, however many rows were added (placing each as it came cost a
        walk over the sheet per row)."""
        unplaced, self._unplaced = self._unplaced, []
        index = self.columns.get(self.group_by) if self.group_by else None
        if index is None or not unplaced:
            return
        decode = self.table.decode_cell
        added = [h for h in dict.fromkeys(unplaced) if h in self.rows]
        new = set(added)
        groups: dict[str, list[int]] = {}
        tail: list[int | str] = []  # handles without a value, and values in first-seen order
        for handle in added:
            value = decode(self.rows[handle].get(index), "")
            if not value.strip():
                tail.append(handle)
                continue
            if value not in groups:
                groups[value] = []
                tail.append(value)
            groups[value].append(handle)
        last: dict[str, int] = {}
        for handle, row in self.rows.items():
            if handle in new or row.blank:
                continue
            value = decode(row.get(index), "")
            if value in groups:
                last[value] = handle
        below: dict[int, list[int]] = {}
        for value, handle in last.items():
            below[handle] = groups[value]
        placed: dict[int, None] = {}  # the handles in their new order
        for handle in self.rows:
            if handle in new:
                continue
            placed[handle] = None
            for moved in below.get(handle, ()):
                placed[moved] = None
        for item in tail:
            if isinstance(item, int):
                placed[item] = None
            elif item not in last:
                for moved in groups[item]:
                    placed[moved] = None
        self.rows.reorder(placed)

    def update(self, native_id: str, patch: Mapping[str, Any], new_id: str | None) -> NativeRecord:
        handle, row = self._locate(native_id, new_id)
        id_cell: CellValue = ""
        if new_id is not None:
            self._check_new_id(new_id, handle)
            id_cell = self.table.encode_cell(new_id, self.id_column)
        staged = self._stage(patch)
        self._ensure_id_column()
        assert self.id_index is not None
        self._apply(row, staged)
        if new_id is not None and self.row_id(row) != new_id:
            old = self.row_id(row)
            if old:
                self.by_id.pop(old)
            row.set(self.id_index, id_cell)
            self.by_id.put(new_id, handle)
        self.pending = self.pending or row.original is None or self.header.original is None
        return self.record(row)

    def delete(self, native_id: str) -> None:
        try:
            handle, row = self._locate(native_id)
        except NotFoundError:
            return  # already gone: the outcome a delete wants
        sync_id = self.row_id(row)
        if sync_id:
            self.by_id.pop(sync_id)
        del self.rows[handle]
        self.pending = True

    def flush(self) -> None:
        if self.stale:
            raise self.table.conflict_error()
        if self.unsaved is not None:
            raise self.not_saved()
        if not self.pending:
            return
        self._arrange()
        sheet = Sheet(header=self.header, rows=self.rows.in_order(), preamble=self.preamble)
        try:
            self.table.save(sheet)
        except ConflictingWriteError:
            self.stale = True
            raise
        except RetriableError:
            raise  # the file open in another program: saved once it is closed
        except SyncEngineError as exc:
            self.unsaved = exc
            raise
        self.pending = False
        # (placing new rows by a group compares every row's cell at each save)
        self.rows.park(allowed=self.group_by is None)

    def not_saved(self) -> ConnectorError:
        """The error of a write after a save of this working copy failed."""
        return ConnectorError(f"not written: an earlier save failed ({self.unsaved})")


def _shortened(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a message, marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _folded(name: str) -> str:
    """A column name as compared loosely: case, spaces and punctuation left out."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())
