"""Every error syncengine raises on purpose, grouped by what the caller should do.

    SyncEngineError                 root; never raised itself
    ├── ConfigError                 fix the configuration or a mapping (exit 2, no I/O done)
    │     carries a list of Problem(location, message, fix) so that all problems show at once
    ├── UsageError                  the command line asked for something impossible (exit 2)
    ├── ConnectorError              a member misbehaved while reading or writing
    │   ├── RetriableError          a temporary failure (429, 5xx, timeout): retry later
    │   ├── AuthError               the credentials were refused (401/403): stop talking to it
    │   ├── FatalConnectorError     the member cannot be used this run (bad response shape, ...)
    │   │   └── StructureError      a file or sheet a person must fix (a corrupt workbook; exit 2)
    │   └── ConflictingWriteError   the target changed under us (file edited since read)
    ├── RecordError                 skip this one record, report it, carry on
    │   └── NotFoundError           the record is gone on the member
    ├── StateError                  the state store is unusable (bad URL, wrong schema)
    │   ├── StateUnavailableError   it cannot be reached or opened now (also an UnavailableError)
    │   └── StateIntegrityError     it refused a write that contradicts what it holds (exit 4)
    ├── UnavailableError            something the command needs cannot be had now (exit 4)
    │   └── PipelineBusyError       another run holds the pipeline's lease
    └── SyncStopped                 a sync stopped early on request (a daemon shutting down)

A ConnectorError that reaches the command (not one record's) means the run could not happen
or complete: exit 4, like an UnavailableError (``syncengine.exit_codes``).

A safety guard (mass delete, an empty member) is not an exception: the engine stops that
entity and records the guard on the run's result, whose exit code is then 3
(``syncengine.exit_codes``).

Library exceptions (httpx, sqlite3, csv, tomllib) are translated into these at the boundary
where they happen; nothing above the connector or state layer ever sees them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, with where it is and how to fix it."""

    location: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class SyncEngineError(Exception):
    """Root of every error syncengine raises on purpose."""


def describe(exc: BaseException) -> str:
    """What a person is shown of a failure (``status``, the run history, alerts): our own
    errors are written to be read as they are, so their class name (``RetriableError``)
    would only be jargon; anything else (a bug, a library's error) keeps its type's name,
    which is what says what went wrong."""
    if isinstance(exc, SyncEngineError) and str(exc).strip():
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ConfigError(SyncEngineError):
    """The configuration or a mapping is wrong. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | str, *, location: str = "config") -> None:
        if isinstance(problems, str):
            problems = [Problem(location, problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(SyncEngineError):
    """The command line asked for something that cannot be done."""


class ConnectorError(SyncEngineError):
    """A member failed while being read or written."""

    def __init__(self, message: str, *, connector: str = "", entity: str = "") -> None:
        self.connector = connector
        self.entity = entity
        prefix = ":".join(p for p in (connector, entity) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RetriableError(ConnectorError):
    """A temporary failure; the same request may succeed later."""


class AuthError(ConnectorError):
    """The member refused our credentials."""


class FatalConnectorError(ConnectorError):
    """The member cannot be used for the rest of this run."""


class StructureError(FatalConnectorError):
    """A member's file or sheet cannot be read as one (a corrupt workbook, bytes that are not
    its encoding): a person must fix it. Nothing is read into a plan or written (exit 2)."""


class ConflictingWriteError(ConnectorError):
    """The target changed since it was read; writing would overwrite someone's edit."""


class RecordError(SyncEngineError):
    """One record cannot be processed; it is reported and skipped, the run goes on."""

    def __init__(self, message: str, *, location: str = "", field: str = "") -> None:
        self.location = location
        self.field = field
        parts = [p for p in (location, f"field {field!r}" if field else "") if p]
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)


class NotFoundError(RecordError):
    """The record does not exist (any more) on the member."""


class StateError(SyncEngineError):
    """The state store cannot be used."""


class UnavailableError(SyncEngineError):
    """Something the command needs cannot be had now (a port taken, a store that cannot be
    reached): the command could not run, and may succeed later (exit 4)."""


class StateUnavailableError(StateError, UnavailableError):
    """The state store cannot be reached or opened now (its file cannot be opened, the
    database refuses the connection or stays locked); its URL is fine."""


class StateIntegrityError(StateError, UnavailableError):
    """The state store refused a write that contradicts what it holds (a UNIQUE or foreign
    key constraint): another writer changed the same records at the same time, or a bug. The
    run could not complete; nothing of the refused transaction was written (exit 4)."""


class PipelineBusyError(UnavailableError):
    """Another run holds the pipeline's lease: this one did nothing (exit 4)."""

    def __init__(self, message: str, *, pipeline: str, holder: str) -> None:
        self.pipeline = pipeline
        self.holder = holder
        super().__init__(message)


class SyncStopped(SyncEngineError):
    """A sync stopped early on request (a daemon shutting down): what was applied so far is
    committed, the rest is planned again by the next run."""
