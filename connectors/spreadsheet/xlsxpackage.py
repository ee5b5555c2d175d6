"""The workbook file as a package of parts: what openpyxl's save does not keep by itself.

openpyxl writes every formula without its last calculated value, so a workbook it saved would
read as empty in every formula cell until someone opens and saves it in a spreadsheet
program. :func:`formula_values` collects those values from the workbook as it was read, and
:func:`restore_formula_values` puts them back into the saved one for every cell that still
holds a formula (the saved workbook also asks the program that opens it next to recalculate
everything, so nothing stale is ever shown).

openpyxl also drops what it cannot read (pictures without Pillow, shapes, slicers, some
extensions): :func:`lost_parts` compares the parts of the two packages so that the connector
can refuse a save that would lose them instead of losing them silently.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterator
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

FormulaValues = dict[str, dict[str, tuple[str, str]]]
"""Per sheet title, per cell reference (``E7``): the cell's type attribute and raw value."""

_OFFICE_DOCUMENT = "/officeDocument"
_WORKSHEET = "/worksheet"
_HAS_FORMULA = re.compile(rb"<(?:\w+:)?f[\s>/]")
_HAS_ERROR = re.compile(rb"""<(?:\w+:)?c\s[^>]*\bt=["']e["']""")
_NEW_FORMULA_CELL = re.compile(
    rb'<c r="(?P<ref>[A-Z]+[0-9]+)"(?P<attrs>[^>]*)>'
    rb"(?P<f><f(?:\s[^>]*)?/>|<f(?:\s[^>]*)?>[^<]*</f>)"
    rb"(?:<v\s*/>|<v></v>)"
)

_CELL_REF = re.compile(r"([A-Z]{1,3})([0-9]+)")

_KEPT_PARTS = {
    "pictures": re.compile(r"^xl/media/"),
    "drawings (pictures, shapes, charts)": re.compile(r"^xl/drawings/[^/]+\.xml$"),
    "charts": re.compile(r"^xl/charts/chart[^/]*\.xml$"),
    "comments": re.compile(r"^xl/comments[^/]*(?:/[^/]+)?\.xml$"),
    "threaded comments": re.compile(r"^xl/threadedComments/"),
    "tables": re.compile(r"^xl/tables/[^/]+\.xml$"),
    "pivot tables": re.compile(r"^xl/pivotTables/[^/]+\.xml$"),
    "slicers": re.compile(r"^xl/slicers/"),
    "timelines": re.compile(r"^xl/timelines/"),
    "form controls": re.compile(r"^xl/ctrlProps/"),
    "external links": re.compile(r"^xl/externalLinks/[^/]+\.xml$"),
}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attribute(element: ElementTree.Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _rels_of(part: str) -> str:
    folder, name = posixpath.split(part)
    return posixpath.join(folder, "_rels", f"{name}.rels")


def _relationships(package: zipfile.ZipFile, part: str) -> Iterator[tuple[str, str, str]]:
    """(id, type, target part) of every relationship of ``part``."""
    try:
        root = ElementTree.fromstring(package.read(_rels_of(part)))
    except KeyError:
        return
    folder = posixpath.dirname(part)
    for rel in root:
        target = rel.get("Target", "")
        if rel.get("TargetMode") == "External" or not target:
            continue
        path = target.lstrip("/") if target.startswith("/") else posixpath.join(folder, target)
        yield rel.get("Id", ""), rel.get("Type", ""), posixpath.normpath(path)


def sheet_parts(package: zipfile.ZipFile) -> dict[str, str]:
    """Sheet title -> the part holding that worksheet."""
    workbook = next(
        (t for _id, kind, t in _relationships(package, "") if kind.endswith(_OFFICE_DOCUMENT)),
        "xl/workbook.xml",
    )
    targets = {
        rel_id: target
        for rel_id, kind, target in _relationships(package, workbook)
        if kind.endswith(_WORKSHEET)
    }
    parts: dict[str, str] = {}
    root = ElementTree.fromstring(package.read(workbook))
    for element in root.iter():
        if _local(element.tag) != "sheet":
            continue
        target = targets.get(_attribute(element, "id") or "")
        if target is not None:
            parts[element.get("name", "")] = target
    return parts


PACKAGE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, NotImplementedError)
"""What reading a damaged package raises: not a zip, a corrupt deflate stream, a part cut
short, a member the directory names but the file lacks, a compression zipfile cannot read."""


def damaged(data: bytes) -> str:
    """Which part of the workbook ``data`` is damaged and how, or "" when every part reads
    back whole (checked against its CRC) or ``data`` is no zip package at all (openpyxl then
    says it is not a workbook): the test before openpyxl sees it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            for info in package.infolist():
                try:
                    with package.open(info) as part:
                        while part.read(1 << 20):
                            pass
                except (*PACKAGE_ERRORS, RuntimeError) as exc:
                    return f"its part {info.filename} is damaged ({_describe(exc)})"
    except (*PACKAGE_ERRORS, RuntimeError):
        return ""  # not a zip package at all: openpyxl says so when it loads it
    return ""


def _describe(exc: BaseException) -> str:
    name = f"{type(exc).__module__}.{type(exc).__name__}".removeprefix("builtins.")
    return f"{name}: {exc}" if str(exc) else name


def formula_values(data: bytes) -> FormulaValues:
    """The last calculated value of every formula cell in the workbook ``data``."""
    found: FormulaValues = {}
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        for title, part in sheet_parts(package).items():
            try:
                xml = package.read(part)
            except KeyError:
                continue
            if _HAS_FORMULA.search(xml):
                values = _sheet_formula_values(xml)
                if values:
                    found[title] = values
    return found


def _sheet_formula_values(xml: bytes) -> dict[str, tuple[str, str]]:
    values: dict[str, tuple[str, str]] = {}
    for _event, element in ElementTree.iterparse(io.BytesIO(xml), events=("end",)):
        if _local(element.tag) != "c":
            continue
        formula = value = None
        for child in element:
            name = _local(child.tag)
            if name == "f":
                formula = child
            elif name == "v":
                value = child.text
        ref = element.get("r")
        if formula is not None and value is not None and ref:
            values[ref] = (element.get("t", "n"), value)
        element.clear()
    return values


def unusable_cells(data: bytes, title: str) -> dict[tuple[int, int], str]:
    """The cells of sheet ``title`` whose value cannot be used, by (row, column), both from
    1: "" for a formula holding no calculated value (a workbook saved by a program that does
    not calculate formulas), else the spreadsheet error the cell holds (``#N/A``, ``#REF!``:
    openpyxl reads those as if they were text)."""
    found: dict[tuple[int, int], str] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        part = sheet_parts(package).get(title)
        if part is None:
            return found
        try:
            xml = package.read(part)
        except KeyError:
            return found
    if not _HAS_FORMULA.search(xml) and not _HAS_ERROR.search(xml):
        return found
    for _event, element in ElementTree.iterparse(io.BytesIO(xml), events=("end",)):
        if _local(element.tag) != "c":
            continue
        formula = False
        value = ""
        for child in element:
            name = _local(child.tag)
            if name == "f":
                formula = True
            elif name == "v":
                value = child.text or ""
        where = _CELL_REF.fullmatch(element.get("r") or "")
        if where and element.get("t") == "e":
            found[int(where[2]), column_number(where[1])] = value or "#VALUE!"
        elif where and formula and not value:
            found[int(where[2]), column_number(where[1])] = ""
        element.clear()
    return found


def column_number(letters: str) -> int:
    """``A`` -> 1, ``Z`` -> 26, ``AA`` -> 27."""
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - ord("A") + 1
    return number


def restore_formula_values(data: bytes, values: FormulaValues) -> bytes:
    """The workbook ``data`` (as openpyxl saved it) with the formula cells named in ``values``
    holding those values again, where they still hold a formula."""
    if not values:
        return data
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as package,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as result,
    ):
        patched = {
            part: values[title] for title, part in sheet_parts(package).items() if title in values
        }
        for info in package.infolist():
            content = package.read(info)
            sheet_values = patched.get(info.filename)
            if sheet_values:
                content = _patch_sheet(content, sheet_values)
            result.writestr(info, content, compress_type=info.compress_type)
    return out.getvalue()


def _patch_sheet(xml: bytes, values: dict[str, tuple[str, str]]) -> bytes:
    def put_value(match: re.Match[bytes]) -> bytes:
        known = values.get(match["ref"].decode())
        if known is None or b' t="' in match["attrs"]:
            return match.group()
        kind, value = known
        type_attr = "" if kind == "n" else f" t={quoteattr(kind)}"
        return (
            b'<c r="'
            + match["ref"]
            + b'"'
            + match["attrs"]
            + type_attr.encode()
            + b">"
            + match["f"]
            + b"<v>"
            + escape(value).encode()
            + b"</v>"
        )

    return _NEW_FORMULA_CELL.sub(put_value, xml)


def lost_parts(before: bytes, after: bytes) -> list[str]:
    """What the package ``after`` holds fewer of than ``before`` (pictures, shapes, ...)."""
    counts: list[dict[str, int]] = []
    for data in (before, after):
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            names = package.namelist()
        counts.append(
            {
                what: sum(1 for n in names if pattern.search(n))
                for what, pattern in _KEPT_PARTS.items()
            }
        )
    had, has = counts
    return [what for what in _KEPT_PARTS if has[what] < had[what]]
