"""Reading and writing CSV files in tests, as a person with a spreadsheet program would.

Nothing here goes through the spreadsheet connector: the tests compare what a sync wrote with
an independent reading of the file, and edit files the way a person saving from a
spreadsheet program does.

- ``CSV_HEADER``: the columns of the default customers sheet.
- ``read_csv_table(path)``: header, rows (text; a row short of cells has ``None`` there) and
  the line terminator of a CSV file; ``read_csv(path)``: just the rows.
- ``csv_text(rows, header)`` / ``write_csv(path, rows, header)``: rows as CSV, columns in
  ``header`` order (a missing or ``None`` cell is empty, keys not in the header are left
  out). ``write_csv`` returns the bytes written; ``replace=True`` writes a new file beside
  it and moves it into place, as an editor saving a file does.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSV_HEADER = [
    "Sync ID",
    "First Name",
    "Last Name",
    "Email",
    "Mobile",
    "Home Phone",
    "Work Phone",
    "Company",
    "Tags",
    "Street",
    "City",
    "State",
    "Zip",
]


@dataclass
class CsvTable:
    header: list[str]
    rows: list[dict[str, Any]]
    newline: str
    """``\\r\\n`` when the file has one, else ``\\n``."""


def read_csv_table(path: Path) -> CsvTable:
    data = path.read_bytes().decode("utf-8")
    reader = csv.DictReader(io.StringIO(data, newline=""))
    rows = [dict(r) for r in reader]
    newline = "\r\n" if "\r\n" in data else "\n"
    return CsvTable(list(reader.fieldnames or []), rows, newline)


def read_csv(path: Path) -> list[dict[str, Any]]:
    return read_csv_table(path).rows


def csv_text(
    rows: Sequence[Mapping[str, Any]], header: Sequence[str] | None = None, newline: str = "\n"
) -> str:
    """Rows as CSV text, columns in ``header`` order (default: the first row's keys, or
    ``CSV_HEADER`` when there are no rows)."""
    if header is None:
        header = list(rows[0]) if rows else CSV_HEADER
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator=newline)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in header})
    return buffer.getvalue()


def write_csv(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    header: Sequence[str] | None = None,
    *,
    newline: str = "\n",
    replace: bool = False,
) -> bytes:
    """Write ``csv_text(rows, header, newline)`` to ``path``; the bytes written. ``replace``:
    into a new file moved over ``path`` (the file's inode changes, as when an editor saves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = csv_text(rows, header, newline).encode("utf-8")
    if replace:
        tmp = path.with_name(path.name + ".test-edit")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        path.write_bytes(data)
    return data
