"""What the mapping in force says about a sheet's columns.

The engine hands the connector the mapping of each entity (``Connector.prepare``); from it the
connector takes the header of a new sheet (the columns the mapping writes, in its order) and
the kind of value a column holds where a workbook stores more than text: a column read through
the ``cents`` transform holds money, one read through ``decimal`` a number that is not money (a
quantity), one read through ``date`` dates. Everything else is text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from syncengine.mapping import EntityMapping
from syncengine.transforms import (
    CentsTransform,
    Chain,
    DateTransform,
    DecimalTransform,
    Transform,
)


@dataclass(frozen=True)
class Money:
    """An amount with ``places`` decimal places (the text ``1234.50`` for places = 2)."""

    places: int


@dataclass(frozen=True)
class Dates:
    """A date, or a date and time, shown as text in the strftime ``format``."""

    format: str

    @property
    def with_time(self) -> bool:
        return bool(_TIME_DIRECTIVE.search(self.format))

    @property
    def storable(self) -> bool:
        """Whether a date cell can hold what the format shows: not a time zone (a workbook's
        dates have none), nor fractions of a second (stored inexactly)."""
        return not _UNSTORABLE.search(self.format)


@dataclass(frozen=True)
class Number:
    """An exact decimal number that is not money (a quantity: ``1.5``), stored as a number."""


ColumnKind = Money | Dates | Number

_TIME_DIRECTIVE = re.compile(r"%[-#]?[HIMSpXcTRr]")
_UNSTORABLE = re.compile(r"%[-#]?[zZf:]")


def new_columns(mapping: EntityMapping) -> tuple[str, ...]:
    """The columns a new sheet starts with (after the id column): those the mapping writes."""
    return tuple(dict.fromkeys(f.native for f in mapping.fields if f.direction != "read"))


def column_kinds(mapping: EntityMapping) -> dict[str, ColumnKind]:
    """The money and date columns of a mapping, by column name."""
    kinds: dict[str, ColumnKind] = {}
    for f in mapping.fields:
        kind = _kind(f.transform)
        if kind is not None:
            kinds.setdefault(f.native, kind)
    return kinds


def _kind(transform: Transform | None) -> ColumnKind | None:
    if isinstance(transform, Chain):
        # the part that meets the cell is the first one applied when reading
        for part in transform.parts:
            kind = _kind(part)
            if kind is not None:
                return kind
        return None
    if isinstance(transform, CentsTransform):
        return Money(transform.places)
    if isinstance(transform, DateTransform):
        return Dates(transform.format)
    if isinstance(transform, DecimalTransform):
        return Number()
    return None
