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

The file is unnamed (removed from the directory as it is made: nothing is left behind after a
crash) and lives in the system's temporary directory (``TMPDIR``): a first sync needs about the
JSON size of its largest entity there (80 MB for 100 000 HCP customers). It is closed once the
entity is planned.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from typing import IO

from syncengine import jsoncodec
from syncengine.connector import NativeData
from syncengine.errors import UnavailableError

_BUFFER = 1 << 20
"""Bytes written at once: one system call per about a thousand records, not one each."""


class Spill:
    """One member's native records of one read, on disk, each found again by its slot."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._starts = array("q")
        """Where each slot's text starts; the next slot's start (or ``_end``) is its end."""
        self._end = 0
        self._written = 0
        """How much of the file is written through to the system (``pread`` sees it)."""

    def __len__(self) -> int:
        return len(self._starts)

    def put(self, text: bytes) -> int:
        """Write one record's JSON text; returns its slot. The file is made with the first."""
        try:
            if self._file is None:
                # closed by ``close`` (the entity planned), not within one block
                self._file = tempfile.TemporaryFile(  # noqa: SIM115
                    prefix="syncengine-read-", buffering=_BUFFER
                )
            self._file.write(text)
        except OSError as exc:
            raise _unavailable(exc) from None
        self._starts.append(self._end)
        self._end += len(text)
        return len(self._starts) - 1

    def get(self, slot: int) -> NativeData:
        """The native record written in ``slot``, decoded."""
        if self._file is None:
            raise RuntimeError("a native record was taken back from a spill that holds none")
        start = self._starts[slot]
        end = self._starts[slot + 1] if slot + 1 < len(self._starts) else self._end
        try:
            if self._written < self._end:
                self._file.flush()
                self._written = self._end
            text = os.pread(self._file.fileno(), end - start, start)
        except OSError as exc:
            raise _unavailable(exc) from None
        if len(text) != end - start:
            raise RuntimeError(f"a spilled native record came back short ({len(text)} bytes)")
        data: NativeData = jsoncodec.loads(text)
        return data

    def close(self) -> None:
        """Let go of the file (and its disk space) and of the slots."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._starts = array("q")
        self._end = self._written = 0


def _unavailable(exc: OSError) -> UnavailableError:
    """What a person reads when the temporary directory cannot take the read (full, gone, not
    writable): where, why, and the fix. Nothing was written for the records not planned yet;
    the next sync reads them again."""
    where = tempfile.gettempdir()
    why = exc.strerror or str(exc)
    return UnavailableError(
        f"cannot keep the records read on disk in {where} ({why}); free space there, or set "
        "TMPDIR to a directory with room, and sync again"
    )
