"""Spill: the native records a read observed, kept on disk until their hub record is planned.

A record read from a member is kept twice until it is planned: as the member gave it (its
native record, which a write to that member patches) and mapped to canonical form (what
matching, copies and reconciling compare). Matching needs every record's canonical form
before the first one is planned, but the native record is needed only when its own hub record
is: for a customer read from HCP it is about three quarters of what the read holds (1.9 KB of
2.7 KB at 10 000 customers), and a first sync held every one of them until its slice.

So a member whose records hold JSON values only (``Connector.reads_json``) writes each record
it observes, as the JSON text its native hash was made of, to a temporary file, and the
``Observed`` keeps its place there (``Observed.spilled``) and a released record
(``NativeRecord.released``). ``read.member_views`` takes it back (``MemberRead.unspill``) when
the hub record is planned, and ``Engine._plan_keys`` lets go of it again once planned. The
text is the record exactly (``connector.json_and_hash``): it decodes to the same values.

A record read unchanged (its native hash the one last seen) is written there too, and only
its slot kept (``read.Unchanged``): a resync with nothing to do plans none of them, and one
that plans it (another member changed it) takes its text back (``MemberRead.unchanged_native``).

The file is unnamed (removed from the directory as it is made: nothing is left behind after a
crash) and lives in the system's temporary directory (``TMPDIR``): a sync needs about the JSON
size of its largest entity there, with the mapped records kept below (95 MB for 100 000 HCP
customers, half of it their mapped records). It is closed once the
entity is planned; a file closed within seconds is mostly never written to the disk itself
(the system drops the pages of a removed file that it has not written back yet).

A new or changed record's canonical form waits there too, after its native text. What stays
in memory until it is planned is a ``Projected`` record: the fields that the decisions made
before planning compare (match and relink keys, references, the fields a sorted sheet is
told by: ``read.kept_fields``). For a customer that is six fields of twenty or more.

So does the record's location (``customer cus_…``, ``payment … of invoice …``: about 100
bytes a record, which before planning only messages ask for, and ``read.set_aside_copies``
for two records of one hash): ``Observed.location`` reads it back, and
``MemberRead.unspill`` gives it back to the record with its native record. Whatever keeps a
record past its read (a review item) takes its location first (``Observed.hold_location``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from array import array
from collections.abc import Iterator, Mapping
from typing import IO, Any

from syncengine import jsoncodec
from syncengine.connector import NativeData
from syncengine.errors import UnavailableError
from syncengine.model import Record

_BUFFER = 1 << 20
"""Bytes gathered before they are written at once: one system call per about a thousand
records, not one each. A smaller read never makes its file."""


class Spill:
    """One member's native records of one read, on disk, each found again by its slot."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        """The unnamed file (unbuffered: what is not written yet is in ``_pending``)."""
        self._pending = bytearray()
        """The texts written since ``_written``, gathered until ``_BUFFER`` bytes."""
        self._starts = array("q")
        """Where each slot's text starts; the next slot's start (or ``_end``) is its end."""
        self._end = 0
        self._written = 0
        """How much of it is in the file; a slot is wholly there or wholly pending."""
        self._closed = False

    def __len__(self) -> int:
        return len(self._starts)

    def put(self, text: bytes, canonical: bytes = b"", location: bytes = b"") -> int:
        """Keep one record's JSON text, and the JSON texts of its canonical form and of its
        location if given (each on a line after it, ``location_text``); returns its slot."""
        if self._closed:
            raise RuntimeError("a record was spilled after its read was planned")
        slot = len(self._starts)
        self._starts.append(self._end)
        start = len(self._pending)
        self._pending += text
        # compact JSON holds no line break: the first one ends the native text, the second
        # the canonical text (empty where none is kept)
        if canonical or location:
            self._pending += b"\n"
            self._pending += canonical
        if location:
            self._pending += b"\n"
            self._pending += location
        self._end += len(self._pending) - start
        if len(self._pending) >= _BUFFER:
            self._write()
        return slot

    def _write(self) -> None:
        """Write what is pending to the file, made with the first write."""
        try:
            if self._file is None:
                # closed by ``close`` (the entity planned), not within one block
                self._file = tempfile.TemporaryFile(  # noqa: SIM115
                    prefix="syncengine-read-", buffering=0
                )
            with memoryview(self._pending) as view:
                while view:
                    took = self._file.write(view)
                    if not took:
                        raise OSError(errno.EIO, "the temporary file took nothing")
                    view = view[took:]
        except OSError as exc:
            raise _unavailable(exc) from None
        self._written += len(self._pending)
        self._pending = bytearray()

    def get(self, slot: int) -> NativeData:
        """The native record kept in ``slot``, decoded."""
        data: NativeData = jsoncodec.loads(self.text(slot).partition(b"\n")[0])
        return data

    def both(self, slot: int) -> tuple[NativeData, Record]:
        """The native record and the canonical record kept in ``slot``, decoded (``whole``,
        where the canonical record must be there)."""
        native, canonical, _where = self.whole(slot)
        if canonical is None:
            raise RuntimeError(f"slot {slot} of a spill holds no canonical record")
        return native, canonical

    def location(self, slot: int) -> str:
        """The location kept in ``slot`` ("" where none was given). A spill closed (its
        entity planned) answers "": a message then names the record without it, rather than
        a run failing over a message; the test suite makes that an error (``STRICT``), so
        that what keeps a record past planning takes its location first
        (``Observed.hold_location``)."""
        if self._closed:
            if STRICT:
                raise RuntimeError(f"the location of slot {slot} was asked after its read closed")
            return ""
        return _location(self.text(slot).split(b"\n", 2))

    def whole(self, slot: int) -> tuple[NativeData, Record | None, str]:
        """All that ``slot`` keeps, from one read of it: the native record, the canonical
        record (None where none was kept) and the location ("" where none was)."""
        parts = self.text(slot).split(b"\n", 2)
        canonical = jsoncodec.loads(parts[1]) if len(parts) > 1 and parts[1] else None
        return jsoncodec.loads(parts[0]), canonical, _location(parts)

    def text(self, slot: int) -> bytes:
        """The JSON text kept in ``slot``."""
        if self._closed or not 0 <= slot < len(self._starts):
            raise RuntimeError(f"a native record was taken back from a spill without slot {slot}")
        start = self._starts[slot]
        end = self._starts[slot + 1] if slot + 1 < len(self._starts) else self._end
        if start >= self._written:
            return bytes(self._pending[start - self._written : end - self._written])
        assert self._file is not None  # what is written is in the file
        try:
            text = os.pread(self._file.fileno(), end - start, start)
        except OSError as exc:
            raise _unavailable(exc) from None
        if len(text) != end - start:
            raise RuntimeError(f"a spilled native record came back short ({len(text)} bytes)")
        return text

    def __del__(self) -> None:
        # a spill let go of without ``close`` (a CSV working copy's rows, ``SheetRows``, go
        # with the working copy, which a read still being iterated may outlive): its file too
        if not self._closed:
            self.close()

    def close(self) -> None:
        """Let go of the file (and its disk space), of what is pending and of the slots. Never
        fails: nothing is written on closing, and the records are no longer wanted."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self._pending = bytearray()
        self._starts = array("q")
        self._end = self._written = 0
        self._closed = True  # a slot kept elsewhere must not find another record's text


def _location(parts: list[bytes]) -> str:
    """The location in a slot's text split at its line breaks ("" where none was kept)."""
    if len(parts) < 3:
        return ""
    where = jsoncodec.loads(parts[2])
    return where if isinstance(where, str) else ""


def location_text(where: str) -> bytes:
    """The JSON text a record's location is kept on disk as (``Spill.put``), or b"" where it
    cannot be (empty, or a lone surrogate from a file name): it then stays in memory."""
    if not where:
        return b""
    try:
        return jsoncodec.dumpb(where)
    except UnicodeEncodeError:
        return b""


STRICT = os.environ.get("SYNCENGINE_TEST_STRICT_PROJECTION") == "1"
"""Set by the test suite: a ``Projected`` record asked for a field it does not keep raises,
instead of reading the rest of the record back from the spill, and so does a location asked
for after its read was closed (``Spill.location``), instead of answering "". The suite runs
so, which proves that nothing before planning looks at more than ``read.kept_fields``, and
that nothing looks for a location on disk once it is gone."""

_JSON_EXACT = frozenset({str, int, bool, float, type(None)})


def json_exact(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` comes back from JSON as it is (its values text, numbers, booleans,
    nulls and lists of text): only such a record is kept on disk (a tuple would come back
    as a list)."""
    for value in record.values():
        kind = type(value)
        if kind in _JSON_EXACT or (kind is list and all(type(v) is str for v in value)):
            continue
        return False
    return True


class Projected(dict[str, Any]):
    """A canonical record of a read, in memory only as the fields it ``keeps`` until its hub
    record is planned; the whole record waits in ``spill`` (after the native text of slot
    ``slot``), and ``MemberRead.unspill`` takes it back.

    Asked for any other field, or for all of them (iterated, compared, copied), it reads the
    rest back first (``whole``), so that no decision is ever made on a part of a record; the
    test suite makes that an error (``STRICT``). ``complete`` is the explicit way, for what
    needs a whole record before planning (a record parked for a person's review)."""

    __slots__ = ("_keeps", "_slot", "_spill")

    def __init__(
        self, record: Mapping[str, Any], keeps: frozenset[str], spill: Spill, slot: int
    ) -> None:
        super().__init__({k: v for k, v in record.items() if k in keeps})
        self._keeps: frozenset[str] | None = keeps
        self._spill = spill
        self._slot = slot

    def complete(self) -> Record:
        """The whole record, read back from the spill: a plain dict."""
        if self._keeps is None:
            return dict(super().items())
        return self._spill.both(self._slot)[1]

    def _whole(self, wanted: object) -> None:
        """Hold the whole record from now on (``wanted``: what was asked for)."""
        if self._keeps is None:
            return
        if STRICT:
            raise RuntimeError(
                f"a record read was looked at for {wanted!r} before its hub record was planned, "
                f"where only {sorted(self._keeps)} are kept in memory (read.kept_fields)"
            )
        whole = self.complete()
        super().clear()
        super().update(whole)
        self._keeps = None

    def get(self, key: str, default: Any = None) -> Any:
        if self._keeps is not None and key not in self._keeps:
            self._whole(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        if self._keeps is not None and key not in self._keeps:
            self._whole(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if self._keeps is not None and key not in self._keeps:
            self._whole(key)
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._whole("every field")
        return super().__iter__()

    def __len__(self) -> int:
        self._whole("every field")
        return super().__len__()

    def __bool__(self) -> bool:
        return True  # made of a record with fields (``read.observe`` keeps an empty one whole)

    def keys(self) -> Any:
        self._whole("every field")
        return super().keys()

    def values(self) -> Any:
        self._whole("every field")
        return super().values()

    def items(self) -> Any:
        self._whole("every field")
        return super().items()

    def copy(self) -> dict[str, Any]:
        self._whole("a copy")
        return dict(super().items())

    def __eq__(self, other: object) -> bool:
        self._whole("a comparison")
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        self._whole("a comparison")
        return super().__ne__(other)

    __hash__ = None

    def __setitem__(self, key: str, value: Any) -> None:
        self._whole(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._whole(key)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._whole(key)
        return super().pop(key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._whole(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._whole("an update")
        super().update(*args, **kwargs)

    def popitem(self) -> tuple[str, Any]:
        self._whole("every field")
        return super().popitem()

    def clear(self) -> None:
        self._whole("every field")
        super().clear()

    def __reversed__(self) -> Iterator[str]:
        self._whole("every field")
        return super().__reversed__()

    def __or__(self, other: Any) -> Any:
        self._whole("every field")
        return dict(super().items()) | other

    def __ror__(self, other: Any) -> Any:
        self._whole("every field")
        return other | dict(super().items())

    def __ior__(self, other: Any) -> Any:
        self._whole("an update")
        return super().__ior__(other)

    def __repr__(self) -> str:
        return f"Projected({dict(super().items())!r}, keeps={sorted(self._keeps or ())})"

    def __reduce__(self) -> Any:
        self._whole("a copy")
        return (dict, (dict(super().items()),))


def whole(record: Record) -> Record:
    """``record`` as a plain dict of all its fields (a ``Projected`` one read back)."""
    return record.complete() if type(record) is Projected else record


def _unavailable(exc: OSError) -> UnavailableError:
    """What a person reads when the temporary directory cannot take the read (full, gone, not
    writable): where, why, and the fix. Nothing was written for the records not planned yet;
    the next sync reads them again."""
    # the directory in use; none when no candidate was usable (asking again would fail again)
    where = tempfile.tempdir or "the temporary directory (TMPDIR, /tmp, /var/tmp, /usr/tmp)"
    why = exc.strerror or str(exc)
    return UnavailableError(
        f"cannot keep the records read on disk in {where} ({why}); free space there, or set "
        "TMPDIR to a directory with room, and sync again"
    )
