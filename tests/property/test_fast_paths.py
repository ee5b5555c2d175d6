"""The fast paths taken for the common values give exactly what the general paths give.

- ``PhoneTransform`` reads ``(555) 123-4567`` / ``555-123-4567`` in region US, and writes a
  ten-digit +1 E.164 number nationally or internationally, without phonenumbers. Both ways
  are compared with the phonenumbers path as it was (kept here as the reference, without the
  memos) over +1 numbers of every area code (0xx, 1xx, 555, N11), numbers of other
  countries, extensions, digits alone, stray whitespace and any text, in several regions.
- ``model.norm_datetime`` returns canonical text (``2026-01-02T03:04:05Z``) as it is and
  writes the others without ``strftime``; ``model.parse_datetime`` reads canonical text
  without rewriting it first. Both are compared with the implementations as they were.
- The CSV table's cells: ``encode_cell`` keeps text that ``neutralise`` keeps without calling
  it and skips the encoding check of ASCII text in UTF-8; ``decode_cell`` returns text without
  a leading quote as it is; ``oversized`` answers a row of short cells at once. Each is
  compared with what it was.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from syncengine import model, transforms
from syncengine.connectors.spreadsheet.csvtable import CsvTable
from syncengine.connectors.spreadsheet.formulas import neutralise, restore
from syncengine.connectors.spreadsheet.table import MAX_CELL_CHARS, Row, Table, plain_text
from syncengine.errors import RecordError
from syncengine.transforms import PhoneTransform

# ------------------------------------------------------------------------- phone reference

REGIONS = ("US", "CA", "JM", "GB", "DE", "AU", "IN")
"""US itself, two more regions of +1 (Canada, Jamaica) and regions outside it."""


def reference_parse(text: str, region: str) -> Any:
    """The number ``text`` is in ``region``, or None (``PhoneTransform._parse`` unmemoised)."""
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return parsed if phonenumbers.is_possible_number(parsed) else None


def reference_read(native: str, region: str) -> str | None:
    """``PhoneTransform._read`` through phonenumbers, as it was before its fast path."""
    text = native.strip()
    if not text:
        return None
    if transforms._looks_e164(text):
        return text
    parsed = reference_parse(text, region)
    if parsed is None:
        return text
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def reference_write(value: str, fmt: str, region: str) -> str | None:
    """``PhoneTransform._write`` through phonenumbers, as it was before its fast path."""
    text = value.strip()
    if not text:
        return None
    e164 = transforms._looks_e164(text)
    if e164 and fmt == "e164":
        return text
    parsed = reference_parse(text, region)
    if parsed is None:
        return text
    canonical = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if e164 and canonical != text:
        return text
    styles = []
    if fmt == "national" and parsed.country_code == phonenumbers.country_code_for_region(region):
        styles.append(phonenumbers.PhoneNumberFormat.NATIONAL)
    if fmt != "e164":
        styles.append(phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    for style in styles:
        formatted = phonenumbers.format_number(parsed, style)
        if reference_read(formatted, region) == canonical:
            return formatted
    return canonical


# ------------------------------------------------------------------------- phone inputs

digits = st.text(alphabet="0123456789", min_size=0, max_size=16)
three = st.text(alphabet="0123456789", min_size=3, max_size=3)
four = st.text(alphabet="0123456789", min_size=4, max_size=4)
area = st.one_of(
    three,  # any, 0xx and 1xx included
    st.sampled_from(["555", "211", "411", "911", "800", "212", "011", "100", "199", "200"]),
)
ten = st.builds(lambda a, b, c: a + b + c, area, three, four)
plus_one = st.one_of(
    st.builds(lambda d: "+1" + d, ten),
    st.builds(lambda d: "+1" + d, st.text(alphabet="0123456789", min_size=8, max_size=12)),
)
parts = st.one_of(
    st.tuples(area, three, four),
    st.tuples(*[st.text(alphabet="0123456789", min_size=2, max_size=5)] * 3),
    st.tuples(area, st.text(alphabet="0123456789", min_size=2, max_size=4), four),
    st.tuples(area, three, st.text(alphabet="0123456789", min_size=3, max_size=5)),
)
us_typed = st.one_of(
    st.builds(lambda p: f"({p[0]}) {p[1]}-{p[2]}", parts),
    st.builds(lambda p: f"{p[0]}-{p[1]}-{p[2]}", parts),
    st.builds(lambda p: f"+1 {p[0]}-{p[1]}-{p[2]}", parts),
    st.builds(lambda p: f"1-{p[0]}-{p[1]}-{p[2]}", parts),
    st.builds(lambda p: f"({p[0]}){p[1]}-{p[2]}", parts),
    ten,
)
other_country = st.builds(
    lambda code, rest: f"+{code}{rest}",
    st.sampled_from(["44", "49", "61", "91", "33", "7", "86", "1", "0", "999"]),
    digits,
)
numbers = st.one_of(plus_one, us_typed, other_country, digits, st.builds("+{}".format, digits))
extended = st.one_of(
    numbers,
    st.builds(
        lambda n, ext, d: f"{n}{ext}{d}",
        numbers,
        st.sampled_from([" ext. ", " x", ";ext=", " #", " extension "]),
        st.text(alphabet="0123456789", min_size=1, max_size=5),
    ),
)
padding = st.text(alphabet=" \t\n\u00a0", max_size=2)
phones = st.one_of(
    st.builds(lambda a, n, b: a + n + b, padding, extended, padding),
    st.text(max_size=20),
)


MANY = settings(max_examples=2000)
"""Each example costs microseconds: enough of them to reach the edges of each fast path."""


near_misses = st.one_of(plus_one, us_typed)
"""The inputs at the edges of the fast paths: +1 numbers and US-typed forms of 8 to 12
digits, every area code."""


@MANY
@given(
    st.one_of(near_misses, phones),
    st.sampled_from(PhoneTransform.FORMATS),
    st.sampled_from(REGIONS),
)
@example("+15551234567", "national", "US")
@example("+12115550123", "national", "US")
@example("+10551234567", "national", "US")
@example("+11551234567", "international", "US")
@example("+15551234567", "national", "GB")
@example("+15551234567", "national", "CA")
@example(" +15551234567\t", "international", "DE")
@example("000000000000000", "e164", "DE")  # its E.164 form does not parse back to itself
def test_phone_writes_what_phonenumbers_writes(text: str, fmt: str, region: str) -> None:
    phone = PhoneTransform(fmt, region)
    expected = reference_write(text, fmt, region)
    assert phone.write(text) == expected
    if expected is not None:  # what was written reads back as phonenumbers reads it
        assert phone.read(expected) == reference_read(expected, region)


@MANY
@given(st.one_of(near_misses, phones), st.sampled_from(REGIONS))
@example("(555) 123-4567", "US")
@example("(055) 123-4567", "US")
@example("(155) 123-4567", "US")
@example("211-555-0123", "US")
@example("555-012-3456", "US")
@example("555-123-4567", "CA")
def test_phone_reads_what_phonenumbers_reads(text: str, region: str) -> None:
    assert PhoneTransform("e164", region).read(text) == reference_read(text, region)


@pytest.mark.parametrize(
    ("fmt", "region", "value", "written"),
    [
        ("national", "US", "+15551234567", "(555) 123-4567"),
        ("international", "US", "+15551234567", "+1 555-123-4567"),
        ("national", "GB", "+12125550123", "+1 212-555-0123"),
    ],
)
def test_phone_common_case_needs_no_parse(fmt: str, region: str, value: str, written: str) -> None:
    """The fast paths are taken: writing and reading back parse nothing (the memo of parsed
    numbers stays empty), and reading the US-typed forms parses nothing either."""
    transforms._PARSED.clear()
    phone = PhoneTransform(fmt, region)
    assert phone.write(value) == written
    assert phone.read(written) == value
    if region == "US":
        digits = value[2:]
        assert phone.read(f"{digits[:3]}-{digits[3:6]}-{digits[6:]}") == value
    assert transforms._PARSED == {}


# ------------------------------------------------------------------ date-time reference


def reference_parse_datetime(value: Any) -> dt.datetime | None:
    """``model.parse_datetime`` as it was before its fast path."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def reference_norm_datetime(value: Any) -> str | None:
    """``model.norm_datetime`` as it was before its fast path, but for the years before
    1000, which it wrote unpadded (``999-01-01T…``, unreadable) and now writes with four
    digits."""
    moment = reference_parse_datetime(value)
    if moment is None:
        return None
    utc = moment.astimezone(dt.UTC)
    return f"{utc.year:04d}" + utc.strftime("-%m-%dT%H:%M:%SZ")


def outcome(function: Any, value: Any) -> tuple[str, Any]:
    """What ``function(value)`` gives: its result (with a datetime's zone), or its error."""
    try:
        result = function(value)
    except (ValueError, OverflowError) as exc:
        return (type(exc).__name__, str(exc))
    if isinstance(result, dt.datetime):
        return ("datetime", (result, result.tzinfo, result.utcoffset()))
    return ("value", result)


two = st.text(alphabet="0123456789", min_size=2, max_size=2)
canonical_shaped = st.builds(
    lambda y, mo, d, h, mi, s: f"{y}-{mo}-{d}T{h}:{mi}:{s}Z",
    st.one_of(
        st.text(alphabet="0123456789", min_size=4, max_size=4),
        st.integers(1, 9999).map("{:04d}".format),
    ),
    st.one_of(two, st.integers(1, 12).map("{:02d}".format)),
    st.one_of(two, st.integers(1, 31).map("{:02d}".format)),
    st.one_of(two, st.integers(0, 23).map("{:02d}".format)),
    st.one_of(two, st.integers(0, 59).map("{:02d}".format)),
    st.one_of(two, st.integers(0, 59).map("{:02d}".format)),
)
zones = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)
moments = st.builds(
    lambda d, z: d.replace(tzinfo=z),
    st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30)),
    zones,
)
datetime_values = st.one_of(
    canonical_shaped,
    st.builds(
        lambda a, t, b: a + t + b,
        st.text(" \t", max_size=1),
        canonical_shaped,
        st.text(" ", max_size=1),
    ),
    st.builds(lambda m: m.isoformat(), moments),
    st.builds(
        lambda m, sep: m.isoformat(sep=sep).replace("+00:00", "Z"), moments, st.sampled_from("T ")
    ),
    moments,
    st.dates(),
    st.builds(lambda d: d.isoformat(), st.dates()),
    st.text(max_size=25),
    st.none(),
)


@MANY
@given(datetime_values)
@example("2026-01-02T03:04:05Z")
@example("0999-01-02T03:04:05Z")
@example("0001-01-01T00:00:00Z")
@example("2026-02-30T00:00:00Z")
@example("2026-01-01T24:00:00Z")
@example("2026-01-01T23:59:60Z")
@example("9999-12-31T23:59:59Z")
@example("2026-01-02T03:04:05.999Z")
@example("2026-01-02T03:04:05+01:00")
@example("0001-01-01T00:30:00+01:00")
def test_datetime_fast_paths_match_the_old_ones(value: Any) -> None:
    assert outcome(model.norm_datetime, value) == outcome(reference_norm_datetime, value)
    assert outcome(model.parse_datetime, value) == outcome(reference_parse_datetime, value)


@MANY
@given(datetime_values)
@example("0999-01-02T03:04:05Z")
@example(dt.date(5, 6, 7))
def test_a_normalised_date_time_reads_back_as_itself(value: Any) -> None:
    try:
        text = model.norm_datetime(value)
    except ValueError:
        return
    if text is not None:
        assert model.norm_datetime(text) == text


# ------------------------------------------------------------------------- CSV cells


def reference_encode_cell(table: CsvTable, value: str, column: str) -> tuple[str, Any]:
    """``CsvTable.encode_cell`` as it was: neutralise, then refuse a cell too long for the
    file or one its encoding cannot hold (its outcome: the cell, or the error's message)."""
    cell = neutralise(value)
    if len(cell) > MAX_CELL_CHARS:
        return ("error", "too long")
    try:
        cell.encode(table._codec)
    except UnicodeEncodeError as exc:
        return ("error", repr(value[exc.start : exc.end]))
    return ("cell", cell)


def encoded(table: CsvTable, value: str, column: str) -> tuple[str, Any]:
    """What ``table.encode_cell`` gives now, in the reference's terms."""
    try:
        return ("cell", table.encode_cell(value, column))
    except RecordError as exc:
        if "characters, more than the" in str(exc):
            return ("error", "too long")
        assert " cannot be stored" in str(exc)
        return ("error", str(exc)[str(exc).index("'") : str(exc).index(" cannot be stored")])


cell_text = st.one_of(
    st.text(max_size=12),
    st.builds(
        lambda quotes, first, rest: quotes + first + rest,
        st.text(alphabet="'", max_size=3),
        st.sampled_from(["=", "+", "-", "@", "\t", "\r", "'", "a", "1", " ", "é", "\ud800", ""]),
        st.text(alphabet="0123456789 .()-=abc€\u0100", max_size=8),
    ),
)


@MANY
@given(cell_text, st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1", "ascii"]))
@example("x" * (MAX_CELL_CHARS + 1), "utf-8")
@example("=" + "x" * MAX_CELL_CHARS, "utf-8")
@example("\ud800", "utf-8")
@example("€", "latin-1")
def test_csv_cells_encode_and_decode_as_they_did(value: str, encoding: str) -> None:
    table = CsvTable(Path("books.csv"), display="books.csv", encoding=encoding)
    assert encoded(table, value, "Name") == reference_encode_cell(table, value, "Name")
    for cell in (value, neutralise(value)):
        assert table.decode_cell(cell, "Name") == restore(plain_text(cell))


lengths = st.sampled_from([0, 1, 5, MAX_CELL_CHARS - 1, MAX_CELL_CHARS, MAX_CELL_CHARS + 1])
cells = st.one_of(
    st.builds(lambda n, ch: ch * n, lengths, st.sampled_from(["x", "\n", "\r\n", "a\r"])),
    st.sampled_from([None, 12, 1.5]),
)


@settings(max_examples=300)
@given(
    st.lists(cells, max_size=4),
    st.dictionaries(st.sampled_from(["A", "B", "C", "D"]), st.integers(0, 4), max_size=4),
)
@example(["x" * (MAX_CELL_CHARS + 1)], {"A": 0})
@example(["", "x" * MAX_CELL_CHARS, "\r\n" * MAX_CELL_CHARS], {"A": 1, "B": 2})
@example(["x" * (MAX_CELL_CHARS + 1), 12, None], {"B": 1, "C": 2})
def test_csv_oversized_answers_as_the_table_does(
    row_cells: list[Any], columns: dict[str, int]
) -> None:
    table = CsvTable(Path("books.csv"), display="books.csv")
    row = Row(row_cells, line=3)
    assert table.oversized(row, columns) == Table.oversized(table, row, columns)
