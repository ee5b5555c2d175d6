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
size of its largest entity there (80 MB for 100 000 HCP customers). It is closed once the
entity is planned; a file closed within seconds is mostly never written to the disk itself
(the system drops the pages of a removed file that it has not written back yet).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from array import array
from typing import IO

from syncengine import jsoncodec
from syncengine.connector import NativeData
from syncengine.errors import UnavailableError

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

    def put(self, text: bytes) -> int:
        """Keep one record's JSON text; returns its slot."""
        if self._closed:
            raise RuntimeError("a record was spilled after its read was planned")
        slot = len(self._starts)
        self._starts.append(self._end)
        self._end += len(text)
        self._pending += text
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
        data: NativeData = jsoncodec.loads(self.text(slot))
        return data

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
