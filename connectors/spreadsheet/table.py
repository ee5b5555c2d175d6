"""The storage side of the spreadsheet connector: one sheet kept in one file.

A :class:`Table` turns a file into a :class:`Sheet` (a header row and data rows of text
cells) and back. The file handling every format shares lives here: remembering exactly what
was read (mtime, size and a content hash), refusing to save over a file someone changed since,
and replacing the file atomically with its permissions kept. A format only supplies
``parse`` and ``serialize`` (and, if its cells can hold formulas, ``encode_cell`` /
``decode_cell``): :mod:`.csvtable` is the CSV one; a workbook backend goes beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from syncengine.errors import ConflictingWriteError, FatalConnectorError

from .formulas import neutralise, restore


@dataclass
class Row:
    """One row of text cells.

    ``line`` is the 1-based line where the row started in the file as loaded (0 for a row
    added since). ``original`` is the backend's own copy of the row as loaded (the CSV text);
    it is kept only while the cells are unchanged, so that a backend can write untouched rows
    back exactly as they were. Change cells through :meth:`set` and :meth:`insert`.
    """

    cells: list[str]
    line: int = 0
    original: str | None = field(default=None, repr=False)

    def get(self, index: int) -> str:
        return self.cells[index] if index < len(self.cells) else ""

    def set(self, index: int, value: str) -> None:
        if self.get(index) == value:
            return
        if index >= len(self.cells):
            self.cells.extend([""] * (index + 1 - len(self.cells)))
        self.cells[index] = value
        self.original = None

    def insert(self, index: int, value: str) -> None:
        self.cells.insert(index, value)
        self.original = None

    @property
    def blank(self) -> bool:
        return all(cell.strip() == "" for cell in self.cells)


@dataclass
class Sheet:
    """A header row, the data rows below it, and any blank rows above the header."""

    header: Row
    rows: list[Row] = field(default_factory=list)
    preamble: list[Row] = field(default_factory=list)


@dataclass(frozen=True)
class Fingerprint:
    """What a file looked like when it was read."""

    mtime_ns: int
    size: int
    digest: str


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


class Table(ABC):
    """One sheet stored in one file.

    ``load()`` reads the file (``None`` when it does not exist) and remembers what it saw;
    ``save()`` writes a sheet back atomically, and refuses with
    :class:`~syncengine.errors.ConflictingWriteError` when the file changed since ``load()``.
    ``display`` names the file in messages (``customers.csv``).
    """

    def __init__(self, path: Path, *, display: str, connector: str = "", entity: str = "") -> None:
        self.path = path
        self.display = display
        self.connector = connector
        self.entity = entity
        self._loaded = False
        self._seen: Fingerprint | None = None

    # -- what a format supplies
    @abstractmethod
    def parse(self, data: bytes) -> Sheet:
        """Turn the file's bytes into a sheet; raise FatalConnectorError if they cannot be."""

    @abstractmethod
    def serialize(self, sheet: Sheet) -> bytes:
        """Turn a sheet into the file's bytes (for a new file when nothing was loaded)."""

    def encode_cell(self, value: str) -> str:
        """The cell text that stores ``value``: formula-like text is neutralised."""
        return neutralise(value)

    def decode_cell(self, cell: str) -> str:
        """The value a cell holds: the inverse of :meth:`encode_cell`."""
        return restore(cell)

    # -- the shared file handling
    def fatal(self, message: str) -> FatalConnectorError:
        return FatalConnectorError(message, connector=self.connector, entity=self.entity)

    def load(self) -> Sheet | None:
        try:
            with open(self.path, "rb") as fh:
                info = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            self._loaded, self._seen = True, None
            return None
        except OSError as exc:
            raise self.fatal(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        sheet = self.parse(data)
        self._loaded = True
        self._seen = Fingerprint(info.st_mtime_ns, info.st_size, _digest(data))
        return sheet

    def save(self, sheet: Sheet) -> None:
        """Replace the file with ``sheet``: temp file beside it, fsync, rename over it."""
        if not self._loaded:
            raise self.fatal(f"{self.display} was saved without being read first")
        data = self.serialize(sheet)
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.fatal(f"cannot create folder {folder}: {exc.strerror or exc}") from exc
        tmp = folder / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        try:
            self._write_temp(tmp, data)
            self._check_unchanged()
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        info = os.stat(self.path)
        self._seen = Fingerprint(info.st_mtime_ns, info.st_size, _digest(data))

    def _write_temp(self, tmp: Path, data: bytes) -> None:
        mode: int | None = None
        if self._seen is not None:
            try:
                mode = stat.S_IMODE(os.stat(self.path).st_mode)
            except OSError:
                mode = None  # gone: _check_unchanged reports it
        try:
            # 0o666 lets the umask decide for a new file, as any editor's save would.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                if mode is not None:
                    os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self.fatal(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _check_unchanged(self) -> None:
        seen = self._seen
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if seen is None:
                return
            raise self.conflict_error("was deleted") from None
        except OSError as exc:
            raise self.fatal(f"cannot check {self.path}: {exc.strerror or exc}") from exc
        if seen is None:
            raise self.conflict_error("was created by someone else")
        if (info.st_mtime_ns, info.st_size) != (seen.mtime_ns, seen.size):
            raise self.conflict_error("was modified")
        try:
            current = self.path.read_bytes()
        except OSError as exc:
            raise self.fatal(f"cannot check {self.path}: {exc.strerror or exc}") from exc
        if _digest(current) != seen.digest:
            raise self.conflict_error("was modified")

    def conflict_error(self, what: str = "changed") -> ConflictingWriteError:
        return ConflictingWriteError(
            f"{self.path} {what} since it was read; nothing was written to it "
            "(run the sync again to pick up the change)",
            connector=self.connector,
            entity=self.entity,
        )


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
