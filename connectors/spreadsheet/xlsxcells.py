"""Workbook cells <-> the text the engine's mappings see.

Reading (:func:`cell_text`): numbers without float noise (``1234.5``, never ``1234.4999…``;
whole numbers without a point), dates in the column's date format (ISO where the column has
none), booleans as ``TRUE``/``FALSE``, an empty cell as ``""``.

Writing (:func:`cell_value`): money and quantity columns get numbers (``Decimal``, so never
through binary floats) and date columns real dates; everything else stays text, so that
``02134`` keeps its leading zero. Text a cell cannot hold exactly falls back to text (an
amount with more digits than a workbook number keeps, a date format with a time zone). The
pair is a fixed point: ``cell_text(cell_value(t)) `` is what a later read of that cell gives,
which is what the connector reports as written.

:func:`number_format_for` picks the display format of a cell the sync writes, keeping one the
bookkeeper set where it suits the value.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles.numbers import is_date_format

from syncengine.errors import RecordError

from .columns import ColumnKind, Dates, Money, Number
from .table import CellValue

MAX_TEXT = 32767
"""The most characters a workbook cell holds."""
EXACT_DIGITS = 15
"""Significant digits a workbook number (a double) holds exactly."""

_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_EPOCH_YEAR = 1900


def number_text(value: int | float | Decimal) -> str:
    """A number as short text: ``1234.5``, ``3``, ``-0.25``. An int or a ``Decimal`` is
    written exactly; a binary float to the ``EXACT_DIGITS`` significant digits a workbook
    holds and shows: a formula's ``=0.1*485.8`` is ``48.58``, as the spreadsheet displays it,
    not the ``48.580000000000005`` of its last bits."""
    if isinstance(value, int):
        return str(value)
    amount = Decimal(format(value, f".{EXACT_DIGITS}g")) if isinstance(value, float) else value
    if not amount.is_finite():
        return str(value)
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def cell_text(value: CellValue, kind: ColumnKind | None = None) -> str:
    """The text of a cell value in a column of ``kind`` (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float | Decimal):
        return number_text(value)
    if isinstance(value, dt.datetime):
        if isinstance(kind, Dates):
            return value.strftime(kind.format)
        if value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        if isinstance(kind, Dates):
            return value.strftime(kind.format)
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat()
    return str(value)


def cell_value(text: str, kind: ColumnKind | None = None, *, location: str = "") -> CellValue:
    """The cell value that stores ``text`` in a column of ``kind``.

    Raises RecordError for text no workbook cell can hold (control characters, more than
    32,767 characters)."""
    if text == "":
        return None
    if isinstance(kind, Money | Number):
        amount = _amount(text)
        if amount is not None:
            return amount
    elif isinstance(kind, Dates):
        moment = _moment(text, kind)
        if moment is not None:
            return moment
    return _text(text, location)


def _amount(text: str) -> Decimal | None:
    if not _PLAIN_DECIMAL.fullmatch(text):
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid numbers
        return None
    digits = len(amount.normalize().as_tuple().digits)
    return amount if digits <= EXACT_DIGITS else None


def _moment(text: str, kind: Dates) -> dt.datetime | dt.date | None:
    if not kind.storable:
        return None
    try:
        moment = dt.datetime.strptime(text, kind.format)
    except ValueError:
        return None
    if moment.year < _EPOCH_YEAR or moment.strftime(kind.format) != text:
        return None  # before a workbook's first day, or text the format does not give back
    return moment if kind.with_time else moment.date()


def _text(text: str, location: str) -> str:
    # A workbook's XML turns a carriage return into a newline: store what will be read back.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    bad = ILLEGAL_CHARACTERS_RE.search(text)
    if bad:
        raise RecordError(
            f"{bad.group()!r} (a control character) cannot be stored in a workbook cell; "
            "remove it from the value",
            location=location,
        )
    if len(text) > MAX_TEXT:
        raise RecordError(
            f"a value of {len(text)} characters does not fit in a workbook cell "
            f"(at most {MAX_TEXT})",
            location=location,
        )
    return text


def money_format(places: int) -> str:
    """The display format of an amount: thousands separators and its decimal places."""
    return "#,##0" + ("." + "0" * places if places else "")


_EXCEL_DATE_PARTS = {
    "%Y": "yyyy",
    "%y": "yy",
    "%m": "mm",
    "%d": "dd",
    "%b": "mmm",
    "%B": "mmmm",
    "%a": "ddd",
    "%A": "dddd",
    "%H": "hh",
    "%M": "mm",
    "%S": "ss",
}
_FORMAT_TOKEN = re.compile(r"%.|.", re.DOTALL)
_PLAIN_LITERALS = frozenset("-/:., ")


def date_format(kind: Dates) -> str:
    """A workbook number format that shows dates as ``kind.format`` does, else an ISO one."""
    pieces: list[str] = []
    for token in _FORMAT_TOKEN.findall(kind.format):
        if token.startswith("%") and len(token) == 2:
            part = _EXCEL_DATE_PARTS.get(token)
            if part is None:
                break
            pieces.append(part)
        elif token in _PLAIN_LITERALS:
            pieces.append(token)
        else:
            pieces.append(f"\\{token}")
    else:
        # a workbook reads "mm" as minutes only next to hours or seconds
        if "%M" not in kind.format or "%H" in kind.format:
            return "".join(pieces)
    return "yyyy-mm-dd hh:mm:ss" if kind.with_time else "yyyy-mm-dd"


def number_format_for(value: CellValue, kind: ColumnKind | None, current: str) -> str:
    """The number format a cell gets when the sync writes ``value`` into it: ``current`` (the
    bookkeeper's) where it already suits the value, else one that does."""
    if isinstance(value, Decimal) and isinstance(kind, Money):
        if _numeric_format(current):
            return current
        return money_format(kind.places)
    if isinstance(value, dt.date) and isinstance(kind, Dates):
        return current if is_date_format(current) else date_format(kind)
    return current


def _numeric_format(fmt: str) -> bool:
    return fmt not in ("General", "@") and not is_date_format(fmt) and any(c in fmt for c in "0#")
