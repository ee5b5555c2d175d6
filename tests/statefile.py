"""Reading a SQLite state file straight from disk, as a test checking a sync's bookkeeping
does (read-only, while no sync is running; nothing goes through ``StateStore``).

- ``links(db, entity)``: hub key -> {member: native id} of the live (not tombstoned) links.
- ``journal_counts(db)``: journal rows by state (empty when the file or its schema is not
  there yet, e.g. a sync killed before it created them).
- ``state_files(folder)``: the raw bytes of the state file and its -wal/-journal companions.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path


def _open(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def links(db: Path, entity: str) -> dict[str, dict[str, str]]:
    """Hub key -> {member: native id} for ``entity``, from the state file."""
    con = _open(db)
    try:
        out: dict[str, dict[str, str]] = {}
        for key, member, native_id in con.execute(
            "SELECT key, member, native_id FROM links WHERE entity = ? AND NOT tombstone",
            (entity,),
        ):
            out.setdefault(key, {})[member] = native_id
        return out
    finally:
        con.close()


def journal_counts(db: Path) -> Counter[str]:
    """Journal rows by state, read straight from the SQLite file."""
    if not db.exists():
        return Counter()
    con = _open(db)
    try:
        return Counter(
            {
                state: n
                for state, n in con.execute("SELECT state, count(*) FROM journal GROUP BY state")
            }
        )
    except sqlite3.OperationalError:  # killed before the schema was there
        return Counter()
    finally:
        con.close()


def state_files(folder: Path, name: str = "state.db") -> dict[str, bytes]:
    """The raw bytes of the SQLite state file and its -wal/-journal companions that exist."""
    found = {}
    for suffix in ("", "-wal", "-journal"):
        path = folder / f"{name}{suffix}"
        if path.exists():
            found[path.name] = path.read_bytes()
    return found
