"""The process exit codes of every command, in one table.

==== ======================================================================================
code meaning
==== ======================================================================================
0    ok: everything planned was applied (or, in a dry run, could be)
1    record-level problems, unresolved conflicts, or books that do not reconcile
2    configuration, usage or structure (a file or sheet a person must fix): nothing was read
     into a plan, nothing was written
3    a safety guard stopped an entity (mass delete, an empty member): nothing of it was
     written (entities before it in the pipeline may have synced)
4    the run could not happen or complete: a member unreachable or refusing the
     credentials, the pipeline busy, the state store unavailable, a port taken; what was
     written is recorded, and the same command succeeds once that is fixed
70   an internal error: a bug in syncengine
==== ======================================================================================

Ctrl-C exits 130 (the shell's 128 + SIGINT), outside this table. Which exception gives which
code: ``syncengine.cli.handled`` (``syncengine.errors`` names the exceptions).
"""

from __future__ import annotations

from enum import IntEnum

from syncengine.errors import ConnectorError, StructureError, UnavailableError


class ExitCode(IntEnum):
    OK = 0
    PROBLEMS = 1
    CONFIG = 2
    GUARD = 3
    UNAVAILABLE = 4
    BUG = 70


def failed_run_code(exc: BaseException) -> ExitCode:
    """The exit code of a run (a daemon's) that stopped on ``exc``: 4 when it could not
    happen or complete (a member unreachable or refusing the credentials, the state store
    unavailable), 2 for a file or sheet a person must fix, else 1 (a failed run)."""
    if isinstance(exc, StructureError):
        return ExitCode.CONFIG
    if isinstance(exc, ConnectorError | UnavailableError):
        return ExitCode.UNAVAILABLE
    return ExitCode.PROBLEMS
