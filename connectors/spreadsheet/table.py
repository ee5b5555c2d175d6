"""The storage side of the spreadsheet connector: one sheet of rows per entity.

A :class:`Table` is the view of one entity's sheet: ``load()`` gives a :class:`Sheet` (a header
row and data rows of cells), ``save()`` writes a changed sheet back, and ``encode_cell`` /
``decode_cell`` translate between the text the engine's mappings see and what a cell stores.
A CSV cell stores text; a workbook cell stores a typed value (a number, a date), which is why
cells are :data:`CellValue` and not plain strings.

The file handling every format shares lives in :class:`StoredFile`: remembering exactly what
was read (mtime, size and a content hash), refusing to save over a file someone changed since,
and replacing the file atomically with its permissions kept. :class:`FileTable` is a table
stored alone in one file (a CSV file, :mod:`.csvtable`); a workbook holds several tables in
one file and shares one :class:`StoredFile` between them (:mod:`.xlsxtable`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import secrets
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from syncengine.errors import ConflictingWriteError, FatalConnectorError, StructureError

from .formulas import neutralise, restore

CellValue = (
    str | int | float | Decimal | bool | dt.datetime | dt.date | dt.time | dt.timedelta | None
)
"""What one cell holds: always ``str`` in a CSV file; a typed value in a workbook."""

MAX_CELL_CHARS = 128 * 1024
"""The most characters a cell read or written may hold (a longer one is a row error)."""


def is_blank(cell: CellValue) -> bool:
    """An empty cell, or one holding only whitespace."""
    return cell is None or (isinstance(cell, str) and not cell.strip())


@dataclass(slots=True)
class Row:
    """One row of cells.

    ``line`` is the 1-based line (CSV) or row number (workbook) where the row starts in the
    file as loaded (0 for a row added since). ``original`` is the backend's own record of the
    row as loaded (the CSV text; a marker for a workbook); it is kept only while the cells are
    unchanged, so that a backend can leave untouched rows exactly as they were. Change cells
    through :meth:`set` and :meth:`insert`.
    """

    cells: list[CellValue]
    line: int = 0
    original: str | None = field(default=None, repr=False)

    def get(self, index: int) -> CellValue:
        return self.cells[index] if index < len(self.cells) else ""

    def set(self, index: int, value: CellValue) -> None:
        cells = self.cells
        current = cells[index] if index < len(cells) else ""  # self.get, inlined: per cell
        if current is value or (type(current) is type(value) and current == value):
            return
        if index >= len(cells):
            cells.extend([""] * (index + 1 - len(cells)))
        cells[index] = value
        self.original = None

    def insert(self, index: int, value: CellValue) -> None:
        self.cells.insert(index, value)
        self.original = None

    @property
    def blank(self) -> bool:
        return all(is_blank(cell) for cell in self.cells)


@dataclass
class Sheet:
    """A header row, the data rows below it, and any blank rows above the header."""

    header: Row
    rows: Iterable[Row] = field(default_factory=list)
    """The data rows: a list as loaded; as saved, whatever gives them in order (a working
    copy's rows on disk are read back one at a time, ``rows.SheetRows.in_order``), which a
    CSV table iterates once."""
    preamble: list[Row] = field(default_factory=list)


def plain_text(cell: CellValue) -> str:
    """A cell as text without any knowledge of its column (headers, messages)."""
    if cell is None:
        return ""
    return cell if isinstance(cell, str) else str(cell)


class Table(ABC):
    """The view of one entity's sheet. See the module docstring.

    ``display`` names the sheet in messages (``customers.csv``,
    ``books.xlsx, sheet Invoices``).
    """

    line_word = "line"
    """What a row's position is called in messages: CSV lines, workbook rows."""
    id_column_first = True
    """Where a missing id column is added: first (CSV), or last so that no cell moves."""
    checks_width = True
    """Whether cells to the right of the header are a malformed row (an unquoted comma in a
    CSV file) rather than data nobody named (a workbook)."""

    def __init__(self, *, display: str, connector: str = "", entity: str = "") -> None:
        self.display = display
        self.connector = connector
        self.entity = entity
        self._new_row = ("", "")

    @abstractmethod
    def load(self) -> Sheet | None:
        """The sheet as stored now (``None`` when it does not exist); remembers what it saw."""

    @abstractmethod
    def save(self, sheet: Sheet) -> None:
        """Store ``sheet``; raise ConflictingWriteError when the storage changed since load."""

    @abstractmethod
    def missing(self) -> str:
        """Why there is no sheet to load, and how to make one (create_missing is false)."""

    @abstractmethod
    def conflict_error(self, what: str = "changed") -> ConflictingWriteError:
        """The error for a write refused because the storage changed since it was read."""

    def unchanged(self) -> bool:
        """Whether the storage is exactly as last loaded, so that what was loaded may serve
        again without loading it anew. The default cannot tell: load again."""
        return False

    def fingerprint(self) -> Fingerprint | None:
        """What the stored sheet was, exactly, when it was last loaded or saved, for the
        connector's read marks; None when the storage cannot tell (or nothing was loaded or
        stored yet): its sheet is then read whole every time."""
        return None

    def look(self) -> Fingerprint | None:
        """What the stored sheet is now, exactly, without loading it (None: the storage
        cannot tell, or there is none)."""
        return None

    def row_parser(self) -> Callable[[str], list[CellValue]] | None:
        """How the text a save wrote for one row reads back as its cells, for a table whose
        saved rows may wait on disk (``rows.SheetRows``); None: they stay in memory."""
        return None

    def encode_cell(self, value: str, column: str = "") -> CellValue:
        """The cell that stores the text ``value`` in ``column``: formula-like text is
        neutralised (CSV)."""
        return neutralise(value)

    def decode_cell(self, cell: CellValue, column: str = "") -> str:
        """The text a cell of ``column`` holds: the inverse of :meth:`encode_cell`."""
        if type(cell) is str and cell[:1] != "'":
            return cell  # what restore(plain_text(cell)) gives text without a leading quote
        return restore(plain_text(cell))

    def header_text(self, cell: CellValue) -> str:
        """The column name a header cell holds."""
        return plain_text(cell)

    def unknown_cells(self, row: Row, columns: Mapping[str, int]) -> list[str]:
        """The mapped columns (of ``columns``: name -> index) whose value in ``row`` cannot be
        known: formulas a workbook holds without their calculated value."""
        return []

    def error_cells(self, row: Row, columns: Mapping[str, int]) -> list[tuple[str, str]]:
        """The mapped columns (of ``columns``: name -> index) whose cell in ``row`` holds a
        spreadsheet error (``#N/A``, a formula's or one typed as such), with the error: read
        as text it would be synced as a value."""
        return []

    def oversized(self, row: Row, columns: Mapping[str, int]) -> str:
        """Why ``row`` is not read: a cell of a named column (of ``columns``: name -> index)
        holding more than ``MAX_CELL_CHARS`` characters; "" when none does. Such a row is a
        row error, left as it is in the file, while the other rows sync."""
        for name, index in columns.items():
            cell = row.get(index)
            if isinstance(cell, str) and len(cell) > MAX_CELL_CHARS:
                spans = cell.count("\n") + cell.count("\r") - cell.count("\r\n")
                hint = (
                    f"; it runs over {spans + 1} lines: if it should be several rows, close or "
                    'remove the stray " that joined them'
                    if spans and self.line_word == "line"
                    else ""
                )
                return (
                    f"{self.location(row.line)}: the {name} cell holds {len(cell):,} characters, "
                    f"more than the {MAX_CELL_CHARS:,} (128 KiB) a cell may hold; shorten it "
                    f"(the row is left as it is and not synced until then){hint}"
                )
        return ""

    def column_ref(self, index: int) -> str:
        """How a person names the column at 0-based ``index``: ``4`` in a CSV file (counted
        from 1), ``D`` in a workbook."""
        return str(index + 1)

    def location(self, line: int) -> str:
        """Where a person finds the row at ``line`` (0: a row the sync added)."""
        if line:
            return f"{self.display} {self.line_word} {line}"
        # every row the sync added: one text, not one per row (a first sync's answers to its
        # creates hold it until the file is saved); made again if the sheet's name changed
        if self._new_row[0] != self.display:
            self._new_row = (self.display, f"{self.display} (new row)")
        return self._new_row[1]

    def locations(self, lines: list[int]) -> str:
        """Several rows at once: ``customers.csv lines 4 and 9``."""
        listed = ", ".join(str(n) for n in lines[:-1]) + " and " + str(lines[-1])
        return f"{self.display} {self.line_word}s {listed}"

    def fatal(self, message: str) -> FatalConnectorError:
        return FatalConnectorError(message, connector=self.connector, entity=self.entity)

    def structure(self, message: str) -> StructureError:
        """The error for a file or sheet a person must fix before anything is read (exit 2)."""
        return StructureError(message, connector=self.connector, entity=self.entity)


# ------------------------------------------------------------------------------ the file


@dataclass(frozen=True)
class Fingerprint:
    """What a file looked like when it was read."""

    mtime_ns: int
    size: int
    digest: str


_TEMP_HEX = 12
"""Hex digits in the name of a save's temp file (``.customers.csv.<hex>.tmp``)."""
STALE_TEMP_S = 3600.0
"""A save's temp file this old is one a killed save left (``StoredFile._sweep_stale_temps``)."""


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _hasher() -> hashlib.blake2b:
    """``digest``, fed in pieces."""
    return hashlib.blake2b(digest_size=20)


class StoredFile:
    """One file read whole and replaced whole.

    ``read()`` returns its bytes (``None`` when it does not exist) and remembers what it saw;
    ``replace()`` writes new bytes to a temp file beside it, fsyncs, and renames it over the
    file with the file's permissions kept, refusing with ConflictingWriteError when the file
    changed since it was last read or replaced. ``entity`` in the methods only labels errors.
    """

    def __init__(self, path: Path, *, connector: str = "") -> None:
        self.path = path
        self.connector = connector
        self.loaded = False
        self.seen: Fingerprint | None = None

    def fatal(self, message: str, entity: str = "") -> FatalConnectorError:
        return FatalConnectorError(message, connector=self.connector, entity=entity)

    def structure(self, message: str, entity: str = "") -> StructureError:
        """The error for a file a person must fix before anything is read (exit 2)."""
        return StructureError(message, connector=self.connector, entity=entity)

    def conflict_error(self, what: str = "changed", entity: str = "") -> ConflictingWriteError:
        return ConflictingWriteError(
            f"{self.path} {what} since it was read; nothing was written to it "
            "(run the sync again to pick up the change)",
            connector=self.connector,
            entity=entity,
        )

    def read(self, entity: str = "") -> bytes | None:
        try:
            with open(self.path, "rb") as fh:
                info = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            self.loaded, self.seen = True, None
            return None
        except OSError as exc:
            raise self.fatal(f"cannot read {self.path}: {exc.strerror or exc}", entity) from exc
        self.loaded = True
        self.seen = Fingerprint(info.st_mtime_ns, info.st_size, digest(data))
        return data

    def look(self) -> Fingerprint | None:
        """What the file is now, without taking it as read (None: no file, or unreadable:
        a load says why)."""
        try:
            with open(self.path, "rb") as fh:
                info = os.fstat(fh.fileno())
                data = fh.read()
        except OSError:
            return None
        return Fingerprint(info.st_mtime_ns, info.st_size, digest(data))

    def replace(self, data: bytes | Iterable[bytes], entity: str = "") -> None:
        """Replace the file with ``data`` (its bytes, or its bytes in pieces as they are
        made, so that a large file is never whole in memory): temp file beside it, fsync,
        rename over it. An error while the pieces are made leaves the file as it was."""
        if not self.loaded:
            raise self.fatal(f"{self.path.name} was saved without being read first", entity)
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.fatal(
                f"cannot create folder {folder}: {exc.strerror or exc}", entity
            ) from exc
        self._sweep_stale_temps()
        tmp = folder / f".{self.path.name}.{secrets.token_hex(_TEMP_HEX // 2)}.tmp"
        try:
            pieces = [bytes(data)] if isinstance(data, bytes | bytearray | memoryview) else data
            written = self._write_temp(tmp, pieces, entity)
            self.check_unchanged(entity)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        info = os.stat(self.path)
        self.seen = Fingerprint(info.st_mtime_ns, info.st_size, written)

    def _sweep_stale_temps(self) -> None:
        """Remove the temp files of this file that a save killed before its rename left
        behind (SIGKILL, a container stopped): hidden on Linux, but a person sees them in
        Windows or a synced folder. Only those older than ``STALE_TEMP_S``: a younger one may
        be another process's save in progress. Nothing here stops the save."""
        name = re.compile(
            re.escape(f".{self.path.name}.") + f"[0-9a-f]{{{_TEMP_HEX}}}" + re.escape(".tmp")
        )
        cutoff = time.time() - STALE_TEMP_S
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path.parent):
                if name.fullmatch(entry.name):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)

    def _write_temp(self, tmp: Path, pieces: Iterable[bytes], entity: str) -> str:
        """Write ``pieces`` to the new file ``tmp`` and fsync it; the ``digest`` of what was
        written."""
        hashed = _hasher()
        mode: int | None = None
        if self.seen is not None:
            try:
                mode = stat.S_IMODE(os.stat(self.path).st_mode)
            except OSError:
                mode = None  # gone: check_unchanged reports it
        try:
            # 0o666 lets the umask decide for a new file, as any editor's save would.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                if mode is not None:
                    os.fchmod(fd, mode)
                for piece in pieces:
                    hashed.update(piece)
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self.fatal(f"cannot write {self.path}: {exc.strerror or exc}", entity) from exc
        return hashed.hexdigest()

    def unchanged(self) -> bool:
        """Whether the file is as last read or replaced (``check_unchanged`` without the
        error)."""
        try:
            self.check_unchanged()
        except (ConflictingWriteError, FatalConnectorError):
            return False
        return True

    def check_unchanged(self, entity: str = "") -> None:
        """Raise ConflictingWriteError unless the file is as last read or replaced."""
        seen = self.seen
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if seen is None:
                return
            raise self.conflict_error("was deleted", entity) from None
        except OSError as exc:
            raise self.fatal(f"cannot check {self.path}: {exc.strerror or exc}", entity) from exc
        if seen is None:
            raise self.conflict_error("was created by someone else", entity)
        if (info.st_mtime_ns, info.st_size) != (seen.mtime_ns, seen.size):
            raise self.conflict_error("was modified", entity)
        try:
            current = self.path.read_bytes()
        except OSError as exc:
            raise self.fatal(f"cannot check {self.path}: {exc.strerror or exc}", entity) from exc
        if digest(current) != seen.digest:
            raise self.conflict_error("was modified", entity)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (where the platform lets a directory be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class FileTable(Table):
    """A table stored alone in one file. A format only supplies ``parse`` and ``serialize``
    (and, if its cells need it, ``encode_cell`` / ``decode_cell``)."""

    def __init__(self, path: Path, *, display: str, connector: str = "", entity: str = "") -> None:
        super().__init__(display=display, connector=connector, entity=entity)
        self.path = path
        self.file = StoredFile(path, connector=connector)

    @abstractmethod
    def parse(self, data: bytes) -> Sheet:
        """Turn the file's bytes into a sheet; raise FatalConnectorError if they cannot be."""

    @abstractmethod
    def serialize(self, sheet: Sheet) -> Iterator[bytes]:
        """Turn a sheet into the file's bytes, in pieces of a bounded size as they are made
        (a first sync's sheet of 200,000 rows is written without its text whole in memory:
        once as rows, once joined, once encoded)."""

    def load(self) -> Sheet | None:
        data = self.file.read(self.entity)
        return None if data is None else self.parse(data)

    def save(self, sheet: Sheet) -> None:
        if not self.file.loaded:
            raise self.fatal(f"{self.display} was saved without being read first")
        self.file.replace(self.serialize(sheet), self.entity)

    def missing(self) -> str:
        return (
            f"{self.path} does not exist; create it with a header row "
            "(or set create_missing = true to let the sync create it)"
        )

    def conflict_error(self, what: str = "changed") -> ConflictingWriteError:
        return self.file.conflict_error(what, self.entity)

    def unchanged(self) -> bool:
        return self.file.loaded and self.file.unchanged()

    def fingerprint(self) -> Fingerprint | None:
        return self.file.seen if self.file.loaded else None

    def look(self) -> Fingerprint | None:
        return self.file.look()
