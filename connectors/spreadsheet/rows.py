"""The rows of a working copy, those the sync added and saved kept on disk until asked for.

A first sync writes every record of an entity to its CSV file, a slice at a time
(``syncengine.slices``), and saves the file after each slice. The connector's working copy of
the file held every row it added until the end of the entity: about 1 KB of cells a customer,
the largest part of a first sync's memory once the records read are planned (a million
customers: about a gigabyte).

So once a save has put a row the sync added into the file, the row waits in a temporary file
(``syncengine.spill.Spill``) as the text it was saved as, and only its place there stays in
memory. A save copies that text as it is; a lookup of the row (an update, a delete, a read)
takes it back, parsed from that text (``Table.row_parser``), and it stays in memory from then
on, so whatever changes it is written at the next save.

Only rows the sync added are kept so (a loaded row keeps its line in the file, which messages
name), and only in a CSV file whose new rows go at the end (not a sheet whose new rows are
placed by a group column, which compares every row's cell at each save).

The temporary file is unnamed and goes with the working copy: once the connector lets go of
it, and a read of it that is still being iterated is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping

from syncengine.errors import UnavailableError
from syncengine.spill import Spill

from .table import CellValue, Row

_CODEC = "utf-8"
_ERRORS = "surrogatepass"  # a row's text, whatever it holds, comes back exactly


class SheetRows(MutableMapping[int, Row]):
    """Rows by handle, in the sheet's order. A row the sync added and a save wrote may be
    ``park``-ed: it then waits on disk as its saved text, and asking for it parses it back."""

    def __init__(
        self, rows: Iterable[tuple[int, Row]], parse: Callable[[str], list[CellValue]] | None
    ) -> None:
        self._rows: dict[int, Row | int] = dict(rows)
        """handle -> the row, or its slot in ``_spill`` while it is parked."""
        self._parse = parse
        """How the table reads one row's text back (None: rows are never parked)."""
        self._parks = parse is not None
        """Whether ``park`` puts rows on disk: not for a table that cannot read them back,
        nor once the temporary directory refused them (they stay in memory, as before)."""
        self._spill: Spill | None = None
        self._added: list[int] = []
        """Handles of rows put or taken back since the last ``park``: the only ones it may
        park."""
        self.parked = 0
        """How many rows wait on disk now."""

    # -- the mapping
    def __getitem__(self, handle: int) -> Row:
        value = self._rows[handle]
        if isinstance(value, Row):
            return value
        return self._take_back(handle, value)

    def __setitem__(self, handle: int, row: Row) -> None:
        if not isinstance(self._rows.get(handle, row), Row):
            self.parked -= 1
        self._rows[handle] = row
        self._added.append(handle)

    def __delitem__(self, handle: int) -> None:
        if not isinstance(self._rows.pop(handle), Row):
            self.parked -= 1

    def __contains__(self, handle: object) -> bool:
        return handle in self._rows

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def reorder(self, handles: Iterable[int]) -> None:
        """Put the rows in the order of ``handles``: every handle, each once."""
        rows = self._rows
        self._rows = {handle: rows[handle] for handle in handles}
        if len(self._rows) != len(rows):
            raise RuntimeError("rows were reordered with handles missing or repeated")

    # -- parking
    def _take_back(self, handle: int, slot: int) -> Row:
        """The parked row ``handle``, parsed from its saved text and held in memory again."""
        assert self._spill is not None and self._parse is not None  # parked: both are there
        text = self._spill.text(slot).decode(_CODEC, _ERRORS)
        row = Row(self._parse(text), 0, text)
        self[handle] = row
        return row

    def park(self, *, allowed: bool = True) -> None:
        """Put on disk the rows added (or taken back) since the last call that a save has just
        written unchanged (``Row.original`` is the text it wrote: a CSV table's ``serialize``
        sets it). Called after a save succeeded: what waits on disk is what the file holds.
        Not ``allowed`` (the rows must stay in memory), it only forgets which rows those
        were."""
        added, self._added = self._added, []
        if not (self._parks and allowed):
            return
        rows = self._rows
        for handle in added:
            row = rows.get(handle)
            if not isinstance(row, Row) or row.line or row.original is None:
                continue  # gone, parked already, a loaded row, or changed since the save
            if self._spill is None:
                self._spill = Spill()
            try:
                slot = self._spill.put(row.original.encode(_CODEC, _ERRORS))
            except UnavailableError:
                # the temporary directory is full or gone: the file is saved all the same,
                # and the rows stay in memory (what is parked already is still readable)
                self._parks = False
                return
            rows[handle] = slot
            self.parked += 1

    def in_order(self) -> Iterator[Row]:
        """Every row in the sheet's order, for a save: a parked row as a row of its saved text
        alone (``Row.original``; no cells), made as it is written and let go of after, so
        that a save never holds the parked rows in memory at once."""
        spill = self._spill
        for value in self._rows.values():
            if isinstance(value, Row):
                yield value
            else:
                assert spill is not None  # a slot is only ever made by ``park``
                yield Row([], 0, spill.text(value).decode(_CODEC, _ERRORS))
