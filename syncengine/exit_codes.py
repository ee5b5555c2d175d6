"""The process exit codes of every command, in one table.

| code | meaning |
| --- | --- |
| 0 | ok: everything planned was applied (or, in a dry run, could be) |
| 1 | record-level problems, unresolved conflicts, a failed run, or books that do not reconcile |
| 2 | configuration, usage or structure: nothing was read or written |
| 3 | a safety guard stopped an entity (mass delete, an empty member): nothing was written |
| 70 | an internal error: a bug in syncengine |
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    PROBLEMS = 1
    CONFIG = 2
    GUARD = 3
    BUG = 70
