"""The CSV backend of the spreadsheet connector.

Reading keeps what a person would notice if it changed: the encoding and a UTF-8 byte-order
mark, the newline style (``\\r\\n``, ``\\n`` or ``\\r``), blank lines, and the exact text of
every row the sync does not change, so that a row nobody touched is written back byte for
byte. Rows the sync changes or adds are written with minimal quoting in the file's newline
style.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from pathlib import Path
from typing import cast

from syncengine.errors import RecordError

from .formulas import TRIGGERS, neutralise
from .table import MAX_CELL_CHARS, CellValue, FileTable, Row, Sheet

# The csv module refuses a cell over 128 KiB with an error that would stop the whole read.
# Cells are read whatever their size (the limit is process-wide; it is only ever raised):
# a cell over MAX_CELL_CHARS is then a row error (Table.oversized), the other rows sync, and
# the row is written back as it was read.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))

# A physical line, split exactly where the csv module splits lines (\r\n, \r or \n).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_QUOTE = '"'
_ROWS_PER_PIECE = 2_000
"""Rows encoded and written together when a file is saved."""
_NEUTRALISED = TRIGGERS | {"'"}
"""The first characters of the text ``neutralise`` may change (any other text it keeps)."""


class CsvTable(FileTable):
    def __init__(
        self,
        path: Path,
        *,
        display: str,
        encoding: str = "utf-8",
        delimiter: str = ",",
        connector: str = "",
        entity: str = "",
    ) -> None:
        super().__init__(path, display=display, connector=connector, entity=entity)
        name = codecs.lookup(encoding).name
        self.encoding = encoding
        self.delimiter = delimiter
        # A UTF-8 file may or may not start with a BOM: accept both, keep whichever it had.
        self._utf8 = name in ("utf-8", "utf-8-sig")
        self._codec = "utf-8" if self._utf8 else name
        self._bom = name == "utf-8-sig"
        self._newline = "\n"

    # -- reading
    def parse(self, data: bytes) -> Sheet:
        skipped = 0
        bom = False
        if self._utf8 and data.startswith(codecs.BOM_UTF8):
            data, skipped, bom = data[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8), True
        try:
            text = data.decode(self._codec)
        except UnicodeDecodeError as exc:
            raise self._undecodable(data, exc, skipped) from None
        if self._utf8:
            self._bom = bom
        found = _NEWLINE.search(text)
        self._newline = found.group() if found else "\n"

        lines = _LINE.findall(text)
        reader = csv.reader(iter(lines), delimiter=self.delimiter, quotechar=_QUOTE, strict=False)
        preamble: list[Row] = []
        header: Row | None = None
        rows: list[Row] = []
        last: Row | None = None
        done = 0
        try:
            for cells in reader:
                start, done = done + 1, reader.line_num
                row = Row([*cells], start, "".join(lines[start - 1 : done]))
                if header is None:
                    if row.blank:
                        preamble.append(row)
                    else:
                        header = row
                else:
                    rows.append(row)
                last = row
        except csv.Error as exc:
            raise self.structure(f"{self.display} line {done + 1}: {exc}") from None
        if last is not None and last.original and _ends_inside_quotes(last.original, self):
            raise self.structure(
                f"{self.display} line {last.line}: a quoted cell is opened but never closed, "
                "so everything after it would be read as one cell; close or remove the stray "
                f"{_QUOTE} in that row"
            )
        return Sheet(header=header or Row([]), rows=rows, preamble=preamble)

    def _undecodable(self, data: bytes, exc: UnicodeDecodeError, skipped: int) -> Exception:
        bad = data[exc.start : exc.end].hex(" ")
        where = f"byte offset {exc.start + skipped}"
        if "\n".encode(self._codec) == b"\n":
            line = data[: exc.start].count(b"\n") + 1
            where += f" (line {line})"
        return self.structure(
            f"{self.display} is not valid {self.encoding}: byte(s) {bad} at {where}; nothing "
            f"was read or written. Set the connector's encoding option to the file's encoding "
            f'(for example encoding = "cp1252" for a file saved by Excel on Windows)'
        )

    def row_parser(self) -> Callable[[str], list[CellValue]]:
        return self._parse_row

    def _parse_row(self, text: str) -> list[CellValue]:
        """The cells of one row's text as ``serialize`` wrote it (a quoted cell may hold
        line breaks)."""
        reader = csv.reader(
            iter(_LINE.findall(text)), delimiter=self.delimiter, quotechar=_QUOTE, strict=False
        )
        return [*next(reader, [])]

    # -- writing
    def encode_cell(self, value: str, column: str = "") -> CellValue:
        # text that starts with neither a formula trigger nor a quote is its own cell
        cell = neutralise(value) if value[:1] in _NEUTRALISED else value
        if len(cell) > MAX_CELL_CHARS:
            raise RecordError(
                f"the {column or 'new'} value holds {len(cell):,} characters, more than the "
                f"{MAX_CELL_CHARS:,} (128 KiB) a cell of {self.display} may hold; shorten it "
                "where it was entered",
                location=self.display,
            )
        try:
            if not (self._utf8 and cell.isascii()):  # ASCII text is always UTF-8
                cell.encode(self._codec)
        except UnicodeEncodeError as exc:
            raise RecordError(
                f"{value[exc.start : exc.end]!r} cannot be stored in {self.display}, which is "
                f"written as {self.encoding}; use an encoding such as utf-8 that can hold it",
                location=self.display,
            ) from None
        return cell

    def oversized(self, row: Row, columns: Mapping[str, int]) -> str:
        """``Table.oversized``, answered at once for the usual row, none of whose cells (all
        text in a CSV file) is anywhere near the limit."""
        texts = cast("list[str]", row.cells)  # as a CSV file's cells are; if one is not,
        try:
            longest = max(map(len, texts), default=0)
        except TypeError:  # ... len() refuses it: look at each mapped cell
            longest = MAX_CELL_CHARS + 1
        return "" if longest <= MAX_CELL_CHARS else super().oversized(row, columns)

    def serialize(self, sheet: Sheet) -> Iterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(
            buffer,
            delimiter=self.delimiter,
            quotechar=_QUOTE,
            quoting=csv.QUOTE_MINIMAL,
            # \r\n makes the writer quote any cell holding \r or \n, whatever the file's style;
            # the terminator is then swapped for the file's own.
            lineterminator="\r\n",
        )
        if self._utf8 and self._bom:
            yield codecs.BOM_UTF8
        # one encoder for the whole file: a codec that starts with a byte-order mark (UTF-16)
        # writes it once, and one that keeps a state (ISO-2022-JP) carries it across pieces
        encoder = codecs.getincrementalencoder(self._codec)()
        pieces: list[str] = []
        ended = True  # the text so far ends with a newline (or there is none)
        for row in chain(sheet.preamble, (sheet.header,), sheet.rows):
            if row.original is not None:
                text = row.original
            else:
                buffer.seek(0)
                buffer.truncate()
                writer.writerow(row.cells)
                text = buffer.getvalue()[: -len("\r\n")] + self._newline
                # the row as the file now holds it: the next save copies it, and the
                # working copy may keep it on disk as this text alone (``rows.SheetRows``)
                row.original = text
            if not ended:  # a last line read without its newline, rows after it now
                text = self._newline + text
            ended = text.endswith(("\n", "\r"))
            pieces.append(text)
            if len(pieces) == _ROWS_PER_PIECE:
                yield self._encoded(encoder, "".join(pieces))
                pieces.clear()
        yield self._encoded(encoder, "".join(pieces), final=True)

    def _encoded(
        self, encoder: codecs.IncrementalEncoder, text: str, *, final: bool = False
    ) -> bytes:
        try:
            return encoder.encode(text, final)
        except UnicodeEncodeError as exc:
            raise self.fatal(
                f"{self.display} cannot hold {text[exc.start : exc.end]!r} in {self.encoding}"
            ) from None


def _ends_inside_quotes(text: str, table: CsvTable) -> bool:
    """True when ``text`` (one whole row) ends inside a quoted cell, as the csv module reads it."""
    delimiter, quote = table.delimiter, _QUOTE
    start, unquoted, quoted, quote_in_quoted = range(4)
    state = start
    for char in text:
        if state == start:
            if char == quote:
                state = quoted
            elif char not in (delimiter, "\r", "\n"):
                state = unquoted
        elif state == unquoted:
            if char in (delimiter, "\r", "\n"):
                state = start
        elif state == quoted:
            if char == quote:
                state = quote_in_quoted
        elif char == quote:
            state = quoted
        elif char in (delimiter, "\r", "\n"):
            state = start
        else:
            state = unquoted
    return state == quoted
