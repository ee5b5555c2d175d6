"""The state store: the only code that issues SQL.

`StateStore.open(url)` connects (SQLite file or PostgreSQL), brings the schema to the newest
Alembic revision and returns a store with batched read methods and `transaction()`, which
yields a `Tx` with the write methods. Every SQLAlchemy or driver error is translated into
`StateError` here, with the URL's password masked.

Reads never issue one query per record: `load_records` takes keys in batches of
`BATCH_SIZE` (two queries per batch: records, then their links), `iter_records` pages by
key. Writes take lists of rows and run them as one `executemany`.

SQLite specifics (all behind a dialect check): the file is created `0600` before SQLite
opens it; every connection runs in WAL mode with `synchronous=NORMAL`, foreign keys on, a
30 s busy timeout and a 4 MiB page cache; the driver's implicit transaction handling is
switched off and the store issues `BEGIN` itself, `BEGIN IMMEDIATE` for writes, so that a
writer waits for the lock up front instead of failing half way when another process writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from syncengine import jsoncodec
from syncengine.errors import StateError, StateIntegrityError, StateUnavailableError
from syncengine.events import InboxEvent
from syncengine.redact import MASK, redact_text
from syncengine.state import alert_rows as _alert_rows
from syncengine.state import inbox as _inbox
from syncengine.state import leases as _leases
from syncengine.state import queues
from syncengine.state.leases import Lease, PipelineState
from syncengine.state.schema import (
    INTENT_OPS,
    INTENT_STATES,
    UTCDateTime,
    conflicts,
    dialect_insert,
    journal,
    links,
    mapping_marks,
    metadata,
    read_marks,
    records,
    runs,
    skips,
)

__all__ = [
    "BATCH_SIZE",
    "MIGRATIONS_DIR",
    "STATISTICS_AFTER",
    "ConflictRow",
    "Intent",
    "LinkState",
    "RecordState",
    "RunRow",
    "SkipRow",
    "StateStore",
    "Tx",
    "alembic_config",
    "mask_url",
]

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

BATCH_SIZE: Final = 500
T = TypeVar("T")
COMPLETED_OUTCOMES: Final = ("ok", "conflicts", "errors")
"""Run outcomes that count as a completed sync (record-level problems are reported, not fatal)."""
MIGRATIONS_DIR: Final = Path(__file__).resolve().with_name("migrations")

STATISTICS_AFTER: Final = 5_000
"""An entity whose apply made at least this many writes has the state tables' statistics
taken again on PostgreSQL (``StateStore.refresh_statistics``)."""

ANALYZE_WAIT: Final = "5s"
"""How long ``refresh_statistics`` waits for a lock another ANALYZE or VACUUM holds."""

_ANALYZED: Final = ("records", "links", "skips", "journal")
"""The state tables a first sync fills and every run looks rows up in by key."""

_SQLITE_PRAGMAS: Final = (
    "PRAGMA busy_timeout=30000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    # 4 MiB of page cache per connection (SQLite's default is 2 MiB): a first sync of many
    # records rewrites the same index pages batch after batch, and finds them here. 16 MiB
    # was tried: no faster (10 000 customers + invoices + payments, alternated), and about
    # 20 MiB more at the peak of 100 000 (bench README, twenty-eighth pass)
    "PRAGMA cache_size=-4096",
    # the WAL is copied into the database every 16 MiB written, not SQLite's 4 MiB: those
    # same index pages are then copied fewer times (a first sync of 100,000 records: ~2 %)
    "PRAGMA wal_autocheckpoint=4000",
)
# Key of the PostgreSQL advisory lock that serialises concurrent migrations ("syncmig").
_PG_MIGRATION_LOCK: Final = 0x73796E636D6967
_FINAL_INTENT_STATES: Final = frozenset(INTENT_STATES) - {"pending"}
_SECRET_QUERY_KEYS: Final = frozenset({"password", "passwd", "pass"})
_URL_EXAMPLES: Final = "e.g. sqlite:///state.db or postgresql+psycopg://user@host/dbname"


def _json_dumps(value: Any) -> str:
    """The state store's JSON (bases, last-seen versions, intents): see ``jsoncodec``."""
    return jsoncodec.dumps(value)


def _json_loads(text: str | bytes | float) -> Any:
    if isinstance(text, int | float):
        return text  # SQLite hands a JSON number back as a number (the column's affinity)
    return jsoncodec.loads(text)


# ---------------------------------------------------------------------------------------
# Values returned by reads


@dataclass(frozen=True)
class LinkState:
    """One member's side of a record: its native id and what we last saw there."""

    member: str
    native_id: str | None
    native_hash: str | None
    last_seen: dict[str, Any] | None
    dirty: bool
    tombstone: bool


@dataclass(frozen=True)
class RecordState:
    """A hub record: the agreed base values and the link to each member."""

    key: str
    base: dict[str, Any]
    links: dict[str, LinkState]


@dataclass(frozen=True)
class Intent:
    """A journalled write that was started and not (yet) finished."""

    id: int
    run_id: str
    pipeline: str
    entity: str
    key: str
    member: str
    op: str
    payload: dict[str, Any]
    holder: str | None = None
    """The lease holder of the run that journalled it (None: before migration 0004, or a
    run without a lease)."""


@dataclass(frozen=True)
class SkipRow:
    """A write a member could not take (or that waits for a reference), as last planned."""

    pipeline: str
    entity: str
    key: str
    member: str
    reason: str
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class ConflictRow:
    """A field whose members disagree; `values` maps member name to that member's value."""

    id: int
    pipeline: str
    entity: str
    key: str
    field: str
    values: dict[str, Any]
    base_value: Any
    status: str
    created_at: datetime
    resolution: dict[str, Any] | None = None
    resolved_at: datetime | None = None


@dataclass(frozen=True)
class RunRow:
    """One sync run in the history."""

    id: int
    run_uuid: str
    pipeline: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    counts: dict[str, Any]
    errors: list[Any]


# ---------------------------------------------------------------------------------------
# URLs, secrets and error messages


def _secrets(url: URL) -> list[str]:
    found = [url.password] if url.password else []
    for name, value in url.query.items():
        if name.lower() in _SECRET_QUERY_KEYS:
            found.extend([value] if isinstance(value, str) else list(value))
    return [s for s in found if s]


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, fit for logs and error messages."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@/]*@", rf"\1{MASK}@", url)
    masked = {k: MASK for k in parsed.query if k.lower() in _SECRET_QUERY_KEYS}
    if masked:
        parsed = parsed.update_query_dict(masked)
    return parsed.render_as_string(hide_password=True)


def url_problem(url: str) -> str | None:
    """Why `url` cannot name a state store, or None when it can; nothing is connected to.

    Checks the URL's form, its database (SQLite or PostgreSQL), that an SQLite URL names a
    file by its path (not a URI filename, which the store would take for a path) and, for
    PostgreSQL, that its driver is installed. `StateStore.open` refuses the same URLs with
    the same words. (A config also refuses an SQLite database in memory, ``in_memory``; the
    store opens one where the code asks for it: a dry run on a fresh setup.)"""
    display = mask_url(url)
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError) as exc:
        return f"invalid state store URL {display!r} ({exc}); expected {_URL_EXAMPLES}"
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        return (
            f"unsupported state store URL {display!r}: only SQLite and PostgreSQL "
            f"are supported ({_URL_EXAMPLES})"
        )
    if backend == "sqlite" and any(k.lower() == "uri" for k in parsed.query):
        # the store resolves the database as a path against the config's folder: a URI
        # filename (file:...?mode=memory) became a file of that odd name, made 0644
        return (
            f"state store URL {display!r} names the database as an SQLite URI (uri=...), "
            f"which is not supported; give the file's path ({_URL_EXAMPLES})"
        )
    if backend == "postgresql":
        try:
            parsed.get_dialect().import_dbapi()
        except ImportError as exc:
            return _missing_driver(display, exc)
        except sa_exc.SQLAlchemyError as exc:
            return f"invalid state store URL {display!r}: {_describe(exc, _secrets(parsed))}"
    return None


def in_memory(url: str) -> bool:
    """Whether ``url`` names an SQLite database in memory (``sqlite://``,
    ``sqlite:///:memory:``): a store that lasts as long as the process that opened it."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        return False
    return _in_memory(parsed)


def _in_memory(parsed: URL) -> bool:
    return parsed.get_backend_name() == "sqlite" and (parsed.database or "") in ("", ":memory:")


POSTGRES_EXTRA = "pip install 'syncengine[postgres]'"
"""What installs the PostgreSQL driver."""


def _missing_driver(display: str, exc: ImportError) -> str:
    return (
        f"cannot use state store {display}: database driver {exc.name or ''} is not "
        f"installed (for PostgreSQL: {POSTGRES_EXTRA})"
    )


def _describe(exc: BaseException, secrets: Sequence[str]) -> str:
    """A one-line reason from a SQLAlchemy/driver error, without SQL, parameters or secrets."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    if orig is None:
        text = text.split("\n(Background on this error", 1)[0].split("\n[SQL:", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact_text("; ".join(lines) or type(exc).__name__, secrets)


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------
# Alembic


SCHEMA_HEAD: Final = "0008"
"""The packaged migrations' head revision. A store already there opens without importing
Alembic (a tenth of a second of every command's start); a unit test keeps this equal to what
the migrations say."""


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration for the packaged migrations; no alembic.ini involved."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def _current_revisions(conn: sa.Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    return set(MigrationContext.configure(conn).get_current_heads())


_VERSION_TABLE: Final = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)
"""Alembic's version table, as Alembic creates it, for a store created at the head."""


def _is_new(conn: sa.Connection) -> bool:
    """Whether the database holds nothing by the name of one of the store's tables or of the
    version table (no table, no view): a new store. Other names (a PostgreSQL database shared
    with another application) do not count."""
    inspector = sa.inspect(conn)
    present = {*inspector.get_table_names(), *inspector.get_view_names()}
    return not present & ({_VERSION_TABLE.name} | set(metadata.tables))


def _create_at_head(conn: sa.Connection) -> None:
    """Create a new store's tables straight from ``schema.metadata`` and stamp them at
    ``SCHEMA_HEAD``: the schema the migrations build, without importing and running Alembic
    (about 0.15 s of a first sync's start). Stores already there are still migrated by
    Alembic; a unit test keeps the created and the migrated schemas identical, column
    order, constraints, indexes and all, on SQLite and PostgreSQL."""
    # no existence checks: ``_is_new`` made them, and one that saw a view of that name would
    # skip the table silently
    metadata.create_all(conn, checkfirst=False)
    _VERSION_TABLE.create(conn, checkfirst=False)
    conn.execute(_VERSION_TABLE.insert().values(version_num=SCHEMA_HEAD))


def _read_every_table(conn: sa.Connection) -> None:
    """Read the first rows of every table of a SQLite store as it opens, before any command
    writes to it: a file whose pages are damaged is then refused before a write (and the
    checkpoint that carries it into the file) touches it. A few pages, not the file: damage
    deeper in a table is found where it is read."""
    names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
    for (name,) in names.all():
        quoted = str(name).replace('"', '""')
        conn.exec_driver_sql(f'SELECT * FROM "{quoted}" LIMIT 1').all()


def _at_head(conn: sa.Connection) -> bool:
    """Whether the store's schema is at ``SCHEMA_HEAD``, read without Alembic (False for a
    new store, which has no version table yet)."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return False
    found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    return found == [SCHEMA_HEAD]


_DAMAGED = re.compile(
    r"file is not a database|database disk image is malformed|malformed database schema", re.I
)
"""SQLite's words for a state file whose bytes are damaged (not a configuration problem)."""


@contextmanager
def _alembic_errors(where: str) -> Iterator[None]:
    from alembic.util import CommandError

    try:
        yield
    except CommandError as exc:
        raise StateError(f"cannot migrate state store {where}: {exc}") from exc


def _check_not_newer(current: set[str], known: set[str]) -> None:
    unknown = sorted(current - known)
    if unknown:
        raise StateError(
            "state store schema is newer than this syncengine; upgrade syncengine "
            f"(database is at revision {', '.join(unknown)}, this version knows up to "
            f"{', '.join(sorted(_script_directory().get_heads()))})"
        )


# ---------------------------------------------------------------------------------------
# Engines


def _prepare_sqlite_file(path: Path, *, create: bool) -> None:
    """Create the database file 0600 before SQLite touches it; tighten an existing one.

    An existing file is never opened here: closing any descriptor of a file drops every
    POSIX lock this process holds on it, the locks of SQLite's own connections included
    (a console request opening the store inside the daemon). Another process then takes
    itself for the file's last user, checkpoints and deletes the write-ahead log the daemon
    still writes into, and the database is damaged."""
    try:
        if create:  # only a file that did not exist, which no connection can hold yet
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not os.access(path, os.R_OK | os.W_OK):
            if not path.exists():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if candidate.exists() and (candidate.stat().st_mode & 0o777) != 0o600:
                os.chmod(candidate, 0o600)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateUnavailableError(f"cannot open state store file {path}: {reason}") from exc


def _file_id(path: Path) -> tuple[int, int]:
    """The (device, inode) of the SQLite file: ``StateStore._same_file`` compares it."""
    try:
        found = path.stat()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateUnavailableError(f"cannot open state store file {path}: {reason}") from exc
    return (found.st_dev, found.st_ino)


_SQLITE_BUSY_S: Final = 30.0
"""How long a connection waits for a lock (``busy_timeout``), also while it is set up."""


def _pragma(cursor: Any, pragma: str) -> None:
    """Run one set-up pragma, waiting as ``busy_timeout`` would. Switching a new file to WAL
    answers "database is locked" at once, without the busy handler, while another connection
    sets it up too (two syncs started together on a fresh state file)."""
    deadline = time.monotonic() + _SQLITE_BUSY_S
    pause = 0.005
    while True:
        try:
            cursor.execute(pragma)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _install_sqlite_listeners(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below; the sqlite3 module
        # would otherwise begin lazily, only before DML, leaving DDL outside transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                _pragma(cursor, pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("syncengine_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_engine(url: URL | str, *, memory: bool) -> sa.Engine:
    options: dict[str, Any] = {
        "connect_args": {"check_same_thread": False},
        "json_serializer": _json_dumps,
        "json_deserializer": _json_loads,
    }
    if memory:
        options["poolclass"] = StaticPool
    engine = sa.create_engine(url, **options)
    _install_sqlite_listeners(engine)
    return engine


def _postgresql_engine(url: URL) -> sa.Engine:
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = 10
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
        connect_args=connect_args,
    )


# ---------------------------------------------------------------------------------------
# The store


class StateStore:
    """Sync state: base records, links, journal, conflicts, run history and read marks.

    Open with `StateStore.open(url)`. Reads are methods on the store, each in its own short
    read transaction (or inside the thread's open transaction); writes go through
    `with store.transaction() as tx:`.
    """

    url_for_display: str

    def __init__(
        self,
        engine: sa.Engine,
        *,
        url_for_display: str,
        secrets: Sequence[str] = (),
        path: Path | None = None,
        ephemeral: bool = False,
    ) -> None:
        self._engine = engine
        self._secrets = list(secrets)
        self._local = threading.local()
        self.url_for_display = url_for_display
        self.path = path
        """The SQLite database file, or None (PostgreSQL, in-memory)."""
        self.ephemeral = ephemeral
        """True when backed by an in-memory database: nothing written survives `close()`."""
        self._file_id: tuple[int, int] | None = None
        """The SQLite file's (device, inode) once opened: a file deleted or replaced under
        this process is never written again (``_same_file``)."""

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, base_dir: str = ".", create: bool = True) -> StateStore:
        """Connect to the state store at `url` and migrate it to the current schema.

        SQLite paths that are relative are resolved against `base_dir`. With
        `create=False` a missing SQLite file is not created: the store is then backed by an
        empty in-memory database (`ephemeral` is True), so a dry run on a fresh setup reads
        "no state" and leaves no file behind.
        """
        display = mask_url(url)
        problem = url_problem(url)
        if problem is not None:
            raise StateError(problem)
        parsed = make_url(url)
        secrets = _secrets(parsed)
        backend = parsed.get_backend_name()
        path: Path | None = None
        ephemeral = False
        file_id: tuple[int, int] | None = None
        try:
            if backend == "sqlite":
                if _in_memory(parsed):
                    engine = _sqlite_engine("sqlite://", memory=True)
                    ephemeral = True
                else:
                    path = Path(base_dir, os.path.expanduser(parsed.database or "")).absolute()
                    if not create and not path.exists():
                        engine = _sqlite_engine("sqlite://", memory=True)
                        ephemeral = True
                    else:
                        if create:
                            _mkdir_parent(path)
                        _prepare_sqlite_file(path, create=create)
                        file_id = _file_id(path)  # before SQLite opens it
                        engine = _sqlite_engine(parsed.set(database=str(path)), memory=False)
            elif backend == "postgresql":
                engine = _postgresql_engine(parsed)
            else:
                raise StateError(
                    f"unsupported state store URL {display!r}: only SQLite and PostgreSQL "
                    f"are supported ({_URL_EXAMPLES})"
                )
        except ImportError as exc:
            raise StateError(_missing_driver(display, exc)) from None
        except sa_exc.SQLAlchemyError as exc:
            raise StateError(
                f"invalid state store URL {display!r}: {_describe(exc, secrets)}"
            ) from None
        store = cls(
            engine, url_for_display=display, secrets=secrets, path=path, ephemeral=ephemeral
        )
        store._file_id = file_id
        try:
            store._migrate()
        except BaseException:
            engine.dispose()
            raise
        return store

    def _migrate(self) -> None:
        """Bring the store's schema to ``SCHEMA_HEAD``: nothing when it is there, the tables
        created at the head when the store is new, else Alembic's migrations from where it is."""
        where = str(self.path) if self.path is not None else self.url_for_display
        if self.ephemeral:
            where = "in-memory state store"
        with (
            self._translate(f"cannot open state store {where}"),
            self._engine.connect() as conn,
            conn.begin(),
        ):
            if conn.dialect.name == "sqlite":
                _read_every_table(conn)
            if _at_head(conn):
                return
        with self._translate(f"cannot open state store {where}"), self._write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            # both checked under the lock: another process may have created or migrated it
            if _is_new(conn):
                _create_at_head(conn)
                return
            with _alembic_errors(where):
                self._upgrade(conn)

    @staticmethod
    def _upgrade(conn: sa.Connection) -> None:
        """Alembic's migrations from the store's revision to the head (refusing a store newer
        than this syncengine), in the caller's locked transaction."""
        from alembic import command

        script = _script_directory()
        known = {rev.revision for rev in script.walk_revisions()}
        current = _current_revisions(conn)
        _check_not_newer(current, known)
        if current != set(script.get_heads()):
            command.upgrade(alembic_config(conn), "head")

    # -- plumbing ------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine, for instrumentation in tests. Do not issue SQL with it."""
        return self._engine

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            # the database cannot be reached, refuses us or stays locked: not the URL's fault
            raise StateUnavailableError(f"{what}: {_describe(exc, self._secrets)}") from exc
        except sa_exc.IntegrityError as exc:
            # a UNIQUE or foreign key constraint: another writer got there first (or a bug),
            # never a configuration problem
            raise StateIntegrityError(
                f"{what}: the state store refused a write that contradicts what it holds "
                f"({_describe(exc, self._secrets)})"
            ) from exc
        except sa_exc.DatabaseError as exc:
            if _DAMAGED.search(str(exc.orig)):
                raise StateUnavailableError(
                    f"{what}: the file is damaged ({exc.orig}); nothing was read or written. "
                    "Restore it from a backup (see the README, Operations: State), or move it "
                    "aside: the next sync then re-links every record, duplicating nothing"
                ) from exc
            raise StateError(f"{what}: {_describe(exc, self._secrets)}") from exc
        except sa_exc.SQLAlchemyError as exc:
            raise StateError(f"{what}: {_describe(exc, self._secrets)}") from exc

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """A connection to read with: the open transaction's, if this thread is inside
        `transaction()` (reads then see its writes, and an in-memory store with its single
        connection works), else a fresh short read transaction."""
        with self._translate(f"state store {self.url_for_display}: read failed"):
            active: sa.Connection | None = getattr(self._local, "conn", None)
            if active is not None:
                yield active
                return
            with self._engine.connect() as conn, conn.begin():
                yield conn

    def _select(self, stmt: sa.Select[Any], params: Mapping[str, Any]) -> list[Any]:
        """The rows of a read of one statement (``stmt`` with ``params``), as tuples.

        A statement `_driver_select` can hand to the driver as it is (every parameter given,
        no column whose values need converting) runs on a pooled connection's own cursor,
        outside SQLAlchemy's connection and transaction: one statement reads one consistent
        snapshot by itself, and SQLAlchemy's begin, execute and commit around it cost about
        ten times the database's work for the small reads every run makes per entity and
        member (about 140 µs against 17 µs on SQLite). Any other statement, a read inside
        `transaction()` (it must see the transaction's writes) and any read of an in-memory
        store (its one connection is shared by the threads of the process, which SQLAlchemy's
        transactions keep apart) go through `_read` as every other read does. Errors are
        SQLAlchemy's, translated as in `_read`; the failed read's connection goes back to
        the pool, which rolls it back (one the server closed is replaced at the next
        checkout, ``pool_pre_ping``)."""
        active: sa.Connection | None = getattr(self._local, "conn", None)
        compiled = (
            None
            if active is not None or isinstance(self._engine.pool, StaticPool)
            else _driver_select(stmt, self._engine.dialect)
        )
        if compiled is None:
            with self._read() as conn:
                return [tuple(row) for row in conn.execute(stmt, params)]
        with self._translate(f"state store {self.url_for_display}: read failed"):
            dbapi = self._engine.dialect.loaded_dbapi
            try:
                raw = self._engine.raw_connection()
                try:
                    cursor = raw.cursor()
                    try:
                        cursor.execute(compiled.sql, compiled.driver_params(params))
                        rows = cursor.fetchall()
                    finally:
                        cursor.close()
                finally:
                    raw.close()  # back to the pool, which ends its read transaction
            except dbapi.Error as exc:
                raise sa_exc.DBAPIError.instance(
                    compiled.sql, dict(params), exc, dbapi.Error
                ) from exc
            return list(rows)

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(syncengine_write=True)
            with conn.begin():
                self._same_file()
                yield conn

    def file_replaced(self) -> str:
        """ "" while the SQLite file this store opened is still the file at its path (always,
        for PostgreSQL and in-memory stores); else what became of it: "deleted", "replaced
        by another file". ``StateUnavailableError`` when that cannot be told."""
        if self._file_id is None or self.path is None:
            return ""
        try:
            found = self.path.stat()
        except FileNotFoundError:
            return "deleted"
        except OSError as exc:  # the folder made unreadable, a stale network handle
            raise StateUnavailableError(
                f"cannot check the state store file {self.path}: {exc.strerror or exc}; "
                "nothing was written"
            ) from exc
        return "" if (found.st_dev, found.st_ino) == self._file_id else "replaced by another file"

    def _same_file(self) -> None:
        """Refuse to write (``StateUnavailableError``) once the SQLite file this store opened
        was deleted or replaced: its connections would go on writing into the old file, which
        no other process sees. A sync started meanwhile finds no lease in the new file and
        runs beside this one, both creating the same records. Checked as each write
        transaction begins, before a batch's intents, so no member is written after it."""
        what = self.file_replaced()
        if what:
            raise StateUnavailableError(
                f"the state store file {self.path} was {what} while this process used it; "
                "nothing more is written to the old one. Stop this process and start it "
                "again: it then opens the file there now (a lost state file is re-linked as "
                "after a restore, nothing is created twice)"
            )

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One database transaction: committed on exit, rolled back on an exception.

        Reads made on the store by the same thread while it is open run inside it. A nested
        `transaction()` joins it as a savepoint: an exception rolls back the inner block.
        """
        with self._translate(f"state store {self.url_for_display}: write failed"):
            active: sa.Connection | None = getattr(self._local, "conn", None)
            if active is not None:
                with active.begin_nested():
                    yield Tx(active)
                return
            with self._write() as conn:
                self._local.conn = conn
                try:
                    yield Tx(conn)
                finally:
                    self._local.conn = None

    def refresh_statistics(self) -> None:
        """On PostgreSQL, have the planner's statistics of the state tables taken again
        (``ANALYZE``), after a run changed many of their rows (``STATISTICS_AFTER``).

        Without it, the planner went on with what it knew of the tables before a first sync
        filled them until autovacuum's own analyze came (a minute or more): a resync of 5,000
        customers right after their first sync took 4.1 s, not 2.9, its links and records
        looked up through the wrong index, and marking its 5,000 failed writes dirty took 1 ms
        a link (5.4 s). The next entity of the same run looks up this one's records too.

        It holds no lock that writers wait for, but waits for another ``ANALYZE`` or a
        ``VACUUM`` of the same tables: at most ``ANALYZE_WAIT``, then it gives up
        (``StateError``; autovacuum catches up later). Where the state's role owns neither
        the tables nor the database, PostgreSQL skips them quietly. SQLite plans these
        lookups by their keys without statistics: nothing to do there."""
        if self._engine.dialect.name != "postgresql":
            return
        with self.transaction() as tx:
            tx.run(lambda conn: conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{ANALYZE_WAIT}'"))
            tx.run(lambda conn: conn.exec_driver_sql(f"ANALYZE {', '.join(_ANALYZED)}"))

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({self.url_for_display!r})"

    # -- reads ---------------------------------------------------------------------------

    def link_index(
        self, pipeline: str, entity: str, member: str
    ) -> dict[str, tuple[str, str | None]]:
        """native_id -> (key, native_hash) for the member's live links (not tombstoned)."""
        where = {"pipeline": pipeline, "entity": entity, "member": member}
        # a member whose ids are our keys (a sheet's Sync ID) holds one text for both
        return {
            nid: (nid if key == nid else key, nhash)
            for nid, key, nhash in self._select(_LINK_INDEX, where)
        }

    def linked_count(self, pipeline: str, entity: str, member: str) -> int:
        """How many records the member has a live link for (as counted by `link_index`)."""
        query = sa.select(sa.func.count()).where(
            links.c.pipeline == pipeline,
            links.c.entity == entity,
            links.c.member == member,
            links.c.native_id.is_not(None),
            links.c.tombstone == sa.false(),
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def holds_any(self, pipeline: str, entity: str, member: str) -> bool:
        """Whether the state holds any link (tombstones too) or skipped write of ``member``
        for the pipeline's ``entity``."""
        checks = [
            sa.select(table.c.key)
            .where(table.c.pipeline == pipeline, table.c.entity == entity, table.c.member == member)
            .limit(1)
            for table in (links, skips)
        ]
        with self._read() as conn:
            return any(conn.execute(query).first() is not None for query in checks)

    def holds_records(self, pipeline: str, entity: str) -> bool:
        """Whether the hub holds any record of the pipeline's ``entity`` (a first sync's
        entity holds none)."""
        query = (
            sa.select(records.c.key)
            .where(records.c.pipeline == pipeline, records.c.entity == entity)
            .limit(1)
        )
        with self._read() as conn:
            return conn.execute(query).first() is not None

    def load_records(
        self, pipeline: str, entity: str, keys: Iterable[str]
    ) -> dict[str, RecordState]:
        """The records among `keys` that exist, with their links; missing keys are absent.

        Two queries (records, then their links) per batch of `BATCH_SIZE` keys."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, RecordState] = {}
        with self._read() as conn:
            for chunk in _chunks(wanted, BATCH_SIZE):
                where = {"pipeline": pipeline, "entity": entity, "keys": chunk}
                batch = {
                    key: RecordState(key, base, {})
                    for key, base in conn.execute(_RECORDS_OF_KEYS, where).all()
                }
                _attach_links(conn, pipeline, entity, batch)
                found.update(batch)
        return found

    def records_holding(
        self, pipeline: str, entity: str, values: Mapping[str, Iterable[str]]
    ) -> dict[str, RecordState]:
        """The records whose base holds one of ``values`` (field -> texts) in that field,
        with their links: the candidates a few new records may match, looked for by the
        database in the stored bases instead of loading every record."""
        return self.load_records(
            pipeline, entity, sorted(self.keys_holding(pipeline, entity, values))
        )

    def keys_holding(
        self, pipeline: str, entity: str, values: Mapping[str, Iterable[str]]
    ) -> set[str]:
        """The keys of the records whose base holds one of ``values`` (field -> texts) in that
        field, found by the database in the stored bases (one query per batch of values)."""
        wanted = [(name, text) for name, texts in values.items() for text in set(texts)]
        keys: set[str] = set()
        with self._read() as conn:
            for chunk in _chunks(wanted, BATCH_SIZE):
                fields: dict[str, list[str]] = {}
                for name, text in chunk:
                    fields.setdefault(name, []).append(text)
                query = sa.select(records.c.key).where(
                    records.c.pipeline == pipeline,
                    records.c.entity == entity,
                    sa.or_(*(records.c.base[n].as_string().in_(t) for n, t in fields.items())),
                )
                keys.update(conn.execute(query).scalars())
        return keys

    def keys_flagged(
        self, pipeline: str, entity: str, keys: Collection[str], flag: str
    ) -> set[str]:
        """The keys among ``keys`` whose base may hold ``true`` in the field ``flag`` (the
        deleted mark), found by the database without loading a base (one query per batch of
        `BATCH_SIZE` keys). It holds every key whose base does; on PostgreSQL also those whose
        base holds a NUL anywhere (it cannot read a field of those): the caller confirms from
        the records it loads."""
        found: set[str] = set()
        with self._read() as conn:
            flagged: sa.ColumnElement[Any]
            if conn.dialect.name == "postgresql":
                has_nul = sa.func.strpos(sa.cast(records.c.base, sa.Text), "\\u0000") > 0
                flagged = sa.case(
                    (has_nul, sa.true()), else_=records.c.base[flag].as_string() == "true"
                )
            else:
                flagged = sa.func.json_type(records.c.base, f'$."{flag}"') == "true"
            for chunk in _chunks(list(dict.fromkeys(keys)), BATCH_SIZE):
                query = sa.select(records.c.key).where(
                    records.c.pipeline == pipeline,
                    records.c.entity == entity,
                    records.c.key.in_(chunk),
                    flagged,
                )
                found.update(conn.execute(query).scalars())
        return found

    def iter_records(self, pipeline: str, entity: str, batch: int = 1000) -> Iterator[RecordState]:
        """Every record of the entity, in key order, read `batch` records at a time.

        Each batch is its own short read transaction, so iterating does not hold the
        database open while the caller works, and the caller may write in between.
        """
        if batch < 1:
            raise ValueError(f"batch must be positive, got {batch}")
        after: str | None = None
        while True:
            query = _record_select(pipeline, entity).order_by(records.c.key).limit(batch)
            if after is not None:
                query = query.where(records.c.key > after)
            with self._read() as conn:
                page = _bases(conn, query)
                if not page:
                    return
                keys = list(page)
                _attach_links(conn, pipeline, entity, page, links.c.key.between(keys[0], keys[-1]))
            yield from page.values()
            if len(page) < batch:
                return
            after = keys[-1]

    def iter_bases(
        self, pipeline: str, entity: str, batch: int = 5000
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, base) of every record of the entity, without links, in key order."""
        after: str | None = None
        while True:
            query = _record_select(pipeline, entity).order_by(records.c.key).limit(batch)
            if after is not None:
                query = query.where(records.c.key > after)
            with self._read() as conn:
                page = conn.execute(query).all()
            yield from ((key, base) for key, base in page)
            if len(page) < batch:
                return
            after = page[-1][0]

    def load_bases(
        self, pipeline: str, entity: str, keys: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """key -> base of the records among ``keys`` that exist, without links (one query per
        batch of `BATCH_SIZE` keys)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        with self._read() as conn:
            for chunk in _chunks(wanted, BATCH_SIZE):
                where = {"pipeline": pipeline, "entity": entity, "keys": chunk}
                found.update((key, base) for key, base in conn.execute(_RECORDS_OF_KEYS, where))
        return found

    def mapping_mark(self, pipeline: str, entity: str, member: str) -> str | None:
        """The fingerprint of the mapping the member's last complete, committed read of the
        entity was made with (see `Tx.put_mapping_mark`), or None."""
        where = {"pipeline": pipeline, "entity": entity, "member": member}
        found = self._select(_MAPPING_MARK, where)
        return str(found[0][0]) if found and found[0][0] is not None else None

    def read_mark(self, pipeline: str, entity: str, member: str) -> str | None:
        """The token of the member's last incremental read of the entity whose records were
        all committed (see `Tx.put_read_mark`), or None."""
        where = {"pipeline": pipeline, "entity": entity, "member": member}
        found = self._select(_READ_MARK, where)
        return str(found[0][0]) if found and found[0][0] is not None else None

    def skipped(self, pipeline: str | None = None, limit: int | None = None) -> list[SkipRow]:
        """Writes members could not take, newest first."""
        query = sa.select(
            skips.c.pipeline,
            skips.c.entity,
            skips.c.key,
            skips.c.member,
            skips.c.reason,
            skips.c.first_seen,
            skips.c.last_seen,
        )
        if pipeline is not None:
            query = query.where(skips.c.pipeline == pipeline)
        query = query.order_by(skips.c.last_seen.desc(), skips.c.entity, skips.c.key)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [SkipRow(*row) for row in conn.execute(query)]

    def skipped_keys(self, pipeline: str, entity: str) -> set[str]:
        """The keys of the entity with a skipped write on record."""
        return {
            key for (key,) in self._select(_SKIPPED_KEYS, {"pipeline": pipeline, "entity": entity})
        }

    def queue_holdings(self, pipeline: str) -> tuple[set[tuple[str, str]], set[queues.Held]]:
        """What the pipeline's review queue and held deletes hold: the (entity, status) of
        its review items, and the (entity, status, guarded) of its held deletes."""
        where = {"pipeline": pipeline}
        review = {(str(e), str(s)) for e, s in self._select(queues.REVIEW_HOLDINGS, where)}
        held: set[queues.Held] = set()
        for entity, status, rows, guarded in self._select(queues.HELD_HOLDINGS, where):
            if guarded:
                held.add((str(entity), str(status), True))
            if rows > guarded:
                held.add((str(entity), str(status), False))
        return review, held

    def skipped_count(self, pipeline: str) -> int:
        query = sa.select(sa.func.count()).select_from(skips).where(skips.c.pipeline == pipeline)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def dirty_keys(self, pipeline: str, entity: str) -> set[str]:
        """Keys with at least one link marked dirty."""
        where = {"pipeline": pipeline, "entity": entity}
        return {key for (key,) in self._select(_DIRTY_KEYS, where)}

    def pending_intents(self, pipeline: str) -> list[Intent]:
        """Journalled writes of the pipeline that never finished, oldest first."""
        with self._read() as conn:
            return [Intent(*row) for row in conn.execute(_PENDING_INTENTS, {"pipeline": pipeline})]

    def open_conflicts(
        self, pipeline: str | None = None, entity: str | None = None
    ) -> list[ConflictRow]:
        if pipeline is not None and entity is None:  # what every run asks: built once
            with self._read() as conn:
                found = conn.execute(_OPEN_CONFLICTS_OF_PIPELINE, {"pipeline": pipeline})
                return [ConflictRow(*row) for row in found]
        query = _conflict_select().where(conflicts.c.status == "open").order_by(conflicts.c.id)
        if pipeline is not None:
            query = query.where(conflicts.c.pipeline == pipeline)
        if entity is not None:
            query = query.where(conflicts.c.entity == entity)
        with self._read() as conn:
            return [ConflictRow(*row) for row in conn.execute(query)]

    def open_conflict_fields(
        self, pipeline: str, entity: str
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """key -> field with an open conflict -> member -> the value it holds there, as
        last told (``add_conflict``)."""
        fields: dict[str, dict[str, dict[str, Any]]] = {}
        with self._read() as conn:
            where = {"pipeline": pipeline, "entity": entity}
            for key, field, values in conn.execute(_OPEN_CONFLICTS, where):
                fields.setdefault(key, {})[field] = dict(values)
        return fields

    def get_conflict(self, conflict_id: int) -> ConflictRow | None:
        query = _conflict_select().where(conflicts.c.id == conflict_id)
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else ConflictRow(*row)

    def runs(self, pipeline: str | None = None, limit: int = 20) -> list[RunRow]:
        """The most recent runs, newest first."""
        query = (
            sa.select(
                runs.c.id,
                runs.c.run_uuid,
                runs.c.pipeline,
                runs.c.dry_run,
                runs.c.started_at,
                runs.c.finished_at,
                runs.c.outcome,
                runs.c.counts,
                runs.c.errors,
            )
            .order_by(runs.c.id.desc())
            .limit(limit)
        )
        if pipeline is not None:
            query = query.where(runs.c.pipeline == pipeline)
        with self._read() as conn:
            return [RunRow(*row) for row in conn.execute(query)]

    def pipelines(self) -> list[str]:
        """Pipelines that have any records or runs."""
        query = sa.union(
            sa.select(records.c.pipeline).distinct(), sa.select(runs.c.pipeline).distinct()
        )
        with self._read() as conn:
            return sorted(conn.execute(query).scalars())

    def pending_events(
        self, pipeline: str, connectors: Iterable[str], limit: int = 10_000
    ) -> list[InboxEvent]:
        """The webhook events received on ``connectors`` that no run of ``pipeline`` took
        yet, oldest first (``syncengine.events``)."""
        with self._read() as conn:
            return _inbox.pending(conn, pipeline, connectors, limit)

    def pending_event_count(self, pipeline: str, connectors: Iterable[str]) -> int:
        """How many webhook events of ``connectors`` wait for a run of ``pipeline``."""
        with self._read() as conn:
            return _inbox.pending_count(conn, pipeline, connectors)

    def inbox_count(self, connector: str | None = None) -> int:
        """How many webhook events the inbox holds (of ``connector``)."""
        with self._read() as conn:
            return _inbox.count(conn, connector)

    def leases(self) -> dict[str, Lease]:
        """pipeline -> its lease row (``Lease.expired`` tells whether it still holds)."""
        with self._read() as conn:
            return _leases.read_leases(conn)

    def live_lease(self, pipeline: str) -> Lease | None:
        """The pipeline's lease while it still holds (by the database's clock), else None."""
        with self._read() as conn:
            return _leases.live_lease(conn, pipeline)

    def pipeline_states(self) -> dict[str, PipelineState]:
        """pipeline -> paused state and backoff, for pipelines that have a row."""
        with self._read() as conn:
            return _leases.read_pipeline_states(conn)

    def query(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` (a read of ``queues.py``, the review queue, held deletes and the audit
        log) with a read connection, as the other reads run."""
        with self._read() as conn:
            return fn(conn)

    def last_success(self, pipeline: str) -> datetime | None:
        """When the pipeline's newest completed run (ok, conflicts, errors) finished."""
        query = (
            sa.select(runs.c.finished_at)
            .where(
                runs.c.pipeline == pipeline,
                runs.c.dry_run == sa.false(),
                runs.c.outcome.in_(COMPLETED_OUTCOMES),
            )
            .order_by(runs.c.id.desc())
            .limit(1)
        )
        with self._read() as conn:
            value: datetime | None = conn.execute(query).scalar_one_or_none()
        return value


def _mkdir_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateUnavailableError(
            f"cannot create directory {path.parent} for the state store: {reason}"
        ) from exc


def _bases(conn: sa.Connection, query: sa.Select[tuple[str, Any]]) -> dict[str, RecordState]:
    """Records from a query of (key, base), in the query's order, without links yet."""
    return {key: RecordState(key, base, {}) for key, base in conn.execute(query).all()}


def _attach_links(
    conn: sa.Connection,
    pipeline: str,
    entity: str,
    found: dict[str, RecordState],
    link_filter: sa.ColumnElement[bool] | None = None,
) -> None:
    """Fill in the links of `found` with one query: the links of their keys, or those
    `link_filter` picks (a range of keys, say) when it is given."""
    if not found:
        return
    where: dict[str, Any] = {"pipeline": pipeline, "entity": entity}
    if link_filter is None:
        rows = conn.execute(_LINKS_OF_KEYS, {**where, "keys": list(found)}).all()
    else:
        rows = conn.execute(_LINK_STATES.where(link_filter), where).all()
    for key, member, native_id, native_hash, last_seen, dirty, tombstone in rows:
        state = found.get(key)
        if state is not None:  # a link's record can only be missing inside a write batch
            state.links[member] = LinkState(
                member, native_id, native_hash, last_seen, bool(dirty), bool(tombstone)
            )


# Statements every sync runs several times, built once with bound parameters: on SQLite,
# building a statement anew cost more than running it (about 90 of 160 µs).


def _is(table: sa.Table, *names: str) -> sa.ColumnElement[bool]:
    """``table.name = :name`` for each of ``names``, as bound parameters."""
    return sa.and_(*(table.c[name] == sa.bindparam(name) for name in names))


_LINK_INDEX: Final = sa.select(links.c.native_id, links.c.key, links.c.native_hash).where(
    _is(links, "pipeline", "entity", "member"),
    links.c.native_id.is_not(None),
    links.c.tombstone == sa.false(),
)
_READ_MARK: Final = sa.select(read_marks.c.token).where(
    _is(read_marks, "pipeline", "entity", "member")
)
_MAPPING_MARK: Final = sa.select(mapping_marks.c.fingerprint).where(
    _is(mapping_marks, "pipeline", "entity", "member")
)
_SKIPPED_KEYS: Final = sa.select(skips.c.key).where(_is(skips, "pipeline", "entity")).distinct()
_DIRTY_KEYS: Final = (
    sa.select(links.c.key)
    .where(_is(links, "pipeline", "entity"), links.c.dirty == sa.true())
    .distinct()
)
_PENDING_INTENTS: Final = (
    sa.select(
        journal.c.id,
        journal.c.run_id,
        journal.c.pipeline,
        journal.c.entity,
        journal.c.key,
        journal.c.member,
        journal.c.op,
        journal.c.payload,
        journal.c.holder,
    )
    .where(_is(journal, "pipeline"), journal.c.state == "pending")
    .order_by(journal.c.id)
)


_RECORDS_OF_KEYS: Final = sa.select(records.c.key, records.c.base).where(
    _is(records, "pipeline", "entity"), records.c.key.in_(sa.bindparam("keys", expanding=True))
)
_LINK_STATES: Final = sa.select(
    links.c.key,
    links.c.member,
    links.c.native_id,
    links.c.native_hash,
    links.c.last_seen,
    links.c.dirty,
    links.c.tombstone,
).where(_is(links, "pipeline", "entity"))
_LINKS_OF_KEYS: Final = _LINK_STATES.where(links.c.key.in_(sa.bindparam("keys", expanding=True)))
_OPEN_CONFLICTS: Final = sa.select(conflicts.c.key, conflicts.c.field, conflicts.c["values"]).where(
    conflicts.c.status == "open", _is(conflicts, "pipeline", "entity")
)
_START_RUN: Final = sa.insert(runs).returning(runs.c.id)
_FINISH_RUN: Final = (
    sa.update(runs)
    .where(runs.c.id == sa.bindparam("run"))
    .values(
        finished_at=sa.bindparam("finished"),
        outcome=sa.bindparam("ended_as"),
        counts=sa.bindparam("run_counts", type_=runs.c.counts.type),
        errors=sa.bindparam("run_errors", type_=runs.c.errors.type),
    )
)
_PRUNE_JOURNAL: Final = sa.delete(journal).where(
    _is(journal, "pipeline"),
    journal.c.state.in_(sorted(_FINAL_INTENT_STATES)),
    journal.c.finished_at < sa.bindparam("older_than", type_=journal.c.finished_at.type),
)


def _record_select(pipeline: str, entity: str) -> sa.Select[tuple[str, Any]]:
    return sa.select(records.c.key, records.c.base).where(
        records.c.pipeline == pipeline, records.c.entity == entity
    )


def _conflict_select() -> sa.Select[
    tuple[int, str, str, str, str, Any, Any, str, datetime, Any, datetime | None]
]:
    return sa.select(
        conflicts.c.id,
        conflicts.c.pipeline,
        conflicts.c.entity,
        conflicts.c.key,
        conflicts.c.field,
        conflicts.c["values"],
        conflicts.c.base_value,
        conflicts.c.status,
        conflicts.c.created_at,
        conflicts.c.resolution,
        conflicts.c.resolved_at,
    )


_OPEN_CONFLICTS_OF_PIPELINE: Final = (
    _conflict_select()
    .where(conflicts.c.status == "open", _is(conflicts, "pipeline"))
    .order_by(conflicts.c.id)
)


# ---------------------------------------------------------------------------------------
# Writes


@cache
def _upsert(dialect: str, table: sa.Table, conflict_on: tuple[str, ...]) -> sa.Insert:
    """INSERT ... ON CONFLICT (conflict_on) DO UPDATE SET every other column."""
    update = [c.name for c in table.columns if c.name not in conflict_on]
    insert = dialect_insert(dialect)(table)
    return insert.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=list(conflict_on), set_={c: insert.excluded[c] for c in update}
    )


_OPEN_CONFLICT = sa.text("status = 'open'")


@cache
def _conflict_upsert(dialect: str) -> sa.Insert:
    """Insert an open conflict, or update the values of the open one for the same field."""
    insert = dialect_insert(dialect)(conflicts)
    return insert.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=["pipeline", "entity", "key", "field"],
        index_where=_OPEN_CONFLICT,
        set_={"values": insert.excluded["values"], "base_value": insert.excluded.base_value},
    )


_FINISH_INTENT = (
    sa.update(journal)
    .where(journal.c.id == sa.bindparam("b_id", type_=sa.Integer()))
    .values(
        state=sa.bindparam("b_state", type_=sa.String()),
        native_id=sa.func.coalesce(
            sa.bindparam("b_native_id", type_=sa.String()), journal.c.native_id
        ),
        error=sa.func.coalesce(sa.bindparam("b_error", type_=sa.Text()), journal.c.error),
        finished_at=sa.bindparam("b_finished_at", type_=UTCDateTime()),
    )
)

_INSERT_INTENT = sa.insert(journal)


def _of_key(table: sa.Table, *, member: bool = False) -> list[sa.ColumnElement[bool]]:
    """The WHERE of a statement run for many keys at once: each row's pipeline, entity and
    key (and member) as bound parameters ``b_pipeline``, ``b_entity``, ``b_key``
    (``b_member``)."""
    names = ("pipeline", "entity", "key", "member") if member else ("pipeline", "entity", "key")
    return [table.c[n] == sa.bindparam(f"b_{n}", type_=sa.String()) for n in names]


# (no literal value in these: SQLAlchemy would make it a parameter of its own, which
# ``_driver_statement`` does not fill, and ``_bulk`` would fall back to ``conn.execute``)
_DIRTY_LINK = sa.update(links).where(*_of_key(links, member=True)).values(dirty=sa.true())
_DELETE_LINK = sa.delete(links).where(*_of_key(links, member=True))
_DELETE_SKIP = sa.delete(skips).where(*_of_key(skips, member=True))
_UPDATE_SKIP = (
    sa.update(skips)
    .where(*_of_key(skips, member=True))
    .values(
        reason=sa.bindparam("b_reason", type_=sa.Text()),
        first_seen=sa.bindparam("b_first_seen", type_=UTCDateTime()),
        last_seen=sa.bindparam("b_last_seen", type_=UTCDateTime()),
    )
)
_INSERT_SKIP = sa.insert(skips)
_DELETE_RECORD = (
    sa.delete(links).where(*_of_key(links)),
    sa.delete(conflicts).where(*_of_key(conflicts), _OPEN_CONFLICT),
    sa.delete(records).where(*_of_key(records)),
    sa.delete(skips).where(*_of_key(skips)),
)
"""A record's delete: its links, its open conflicts (resolved ones are history), the
record, its skips."""


@dataclass(frozen=True)
class _DriverStatement:
    """A statement compiled for one dialect, and how a row of it becomes driver parameters."""

    sql: str
    params: tuple[tuple[str, str, Callable[[Any], Any] | None, bool], ...]
    """Per parameter, in the SQL's order: the name the SQL gives it, the row key its value
    comes from, the column type's bind processor (None: the value goes as it is), and
    whether a column of rows mostly holds one value (a timestamp, a flag)."""
    positional: bool
    """Whether the driver takes a row as a tuple (``?``), not as a dict (``%(name)s``)."""

    def driver_rows(
        self, rows: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...]] | list[dict[str, Any]]:
        """``rows`` in the form the driver takes, each value converted by its processor
        (column by column: only the processors run as Python code per value; in a column
        that mostly repeats one value, once per run of it)."""
        columns: list[Iterator[Any]] = []
        for _, key, fn, repeats in self.params:
            values = map(itemgetter(key), rows)
            if fn is not None:
                # a repeated value (a batch's one ``_now()``, a flag) converted once a run: a
                # timestamp costs about 2 µs, three of them a record in a first sync
                values = map(lru_cache(maxsize=1)(fn) if repeats else fn, values)
            columns.append(values)
        if self.positional:
            return list(zip(*columns, strict=True))
        names = [name for name, _, _, _ in self.params]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


@lru_cache(maxsize=64)
def _driver_statement(
    stmt: sa.Insert | sa.Update | sa.Delete, dialect: sa.Dialect, keys: tuple[str, ...]
) -> _DriverStatement:
    """``stmt`` compiled for ``dialect`` as an executemany of rows with ``keys``, with the
    bind processor SQLAlchemy would apply to each parameter (its column type's)."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    params = []
    for name, bind in _binds_in_order(compiled):
        if bind.key not in keys:
            raise KeyError(bind.key)
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        repeats = isinstance(bind.type, UTCDateTime | sa.Boolean)
        params.append((name, bind.key, processor, repeats))
    return _DriverStatement(compiled.string, tuple(params), compiled.positional)


def _binds_in_order(compiled: sa.engine.Compiled) -> list[tuple[str, sa.BindParameter[Any]]]:
    """A compiled statement's parameters in the order its driver takes them: the name its
    SQL gives each, and the parameter."""
    binds = {name: bind for bind, name in compiled.bind_names.items()}  # type: ignore[attr-defined]
    order = compiled.positiontup if compiled.positional else list(binds)  # type: ignore[attr-defined]
    escaped = compiled.escaped_bind_names  # type: ignore[attr-defined]
    return [(escaped.get(name, name), binds[name]) for name in order or ()]


@dataclass(frozen=True, slots=True)
class _DriverSelect:
    """A read compiled for one dialect, to run on the driver's cursor (`StateStore._select`)."""

    sql: str
    params: tuple[tuple[str, str], ...]
    """Per parameter, in the SQL's order: the name the SQL gives it, the key of the
    parameters its value comes from."""
    positional: bool

    def driver_params(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        if self.positional:
            return tuple(params[key] for _, key in self.params)
        return {name: params[key] for name, key in self.params}


@lru_cache(maxsize=64)
def _driver_select(stmt: sa.Select[Any], dialect: sa.Dialect) -> _DriverSelect | None:
    """``stmt`` compiled for ``dialect``, or None where the driver's rows would differ from
    SQLAlchemy's: a parameter with a value of its own, a parameter or a column whose type
    converts values (JSON, timestamps, booleans on some drivers). Those go SQLAlchemy's way."""
    compiled = stmt.compile(dialect=dialect)
    for column in stmt.selected_columns:
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return None
    params = []
    for name, bind in _binds_in_order(compiled):
        if bind.value is not None or bind.callable is not None:
            return None
        if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
            return None
        params.append((name, bind.key))
    return _DriverSelect(compiled.string, tuple(params), compiled.positional)


def _bulk(
    conn: sa.Connection, stmt: sa.Insert | sa.Update | sa.Delete, rows: Sequence[Mapping[str, Any]]
) -> sa.CursorResult[Any]:
    """Run ``stmt`` for every row (dicts with the same keys) as one driver ``executemany``.

    The same statement and the same parameters as ``conn.execute(stmt, rows)``, without its
    cost: SQLAlchemy builds and converts each row's parameters through its compiled
    statement machinery, which took more time than the database's own work in a first sync
    of many records. Here the statement is compiled once per dialect and kept, and each
    value goes through the same bind processor SQLAlchemy applies (JSON text by
    ``jsoncodec``, booleans, `UTCDateTime`), so what is stored is the same, byte for byte.

    Errors stay SQLAlchemy's: the driver's are raised as ``conn.execute`` raises them, and
    rows it would refuse before sending (a value its column cannot take, a missing key) are
    handed to ``conn.execute`` itself, which refuses them with the error it always gave."""
    try:
        compiled = _driver_statement(stmt, conn.dialect, tuple(rows[0]))
        params = compiled.driver_rows(rows)
    except Exception:  # SQLAlchemy's own path raises what it always raised
        return conn.execute(stmt, rows)
    return conn.exec_driver_sql(compiled.sql, params)


def _bound(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row``'s values as the bound parameters of the statements above (``b_`` + column)."""
    return {f"b_{name}": value for name, value in row.items()}


class Tx:
    """The write methods, all inside one database transaction (see `StateStore.transaction`).

    Bulk methods take sequences of dicts whose keys are the keyword arguments of the
    single-row method, and run one statement for the whole sequence.
    """

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._dialect = conn.dialect.name

    def run(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` (a write of ``queues.py``) inside this transaction."""
        return fn(self._conn)

    # -- records and links ---------------------------------------------------------------

    def put_record(self, pipeline: str, entity: str, key: str, base: dict[str, Any]) -> None:
        """Insert or replace the base record of a key."""
        self.put_records([{"pipeline": pipeline, "entity": entity, "key": key, "base": base}])

    def put_records(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Bulk `put_record`: rows with pipeline, entity, key, base."""
        now = _now()
        unique = {
            (r["pipeline"], r["entity"], r["key"]): {
                "pipeline": r["pipeline"],
                "entity": r["entity"],
                "key": r["key"],
                "base": r["base"],
                "updated_at": now,
            }
            for r in rows
        }
        if unique:
            stmt = _upsert(self._dialect, records, ("pipeline", "entity", "key"))
            _bulk(self._conn, stmt, list(unique.values()))

    def delete_record(self, pipeline: str, entity: str, key: str) -> None:
        """Delete a record with its links and its open conflicts (resolved ones are history)."""
        self.delete_records([{"pipeline": pipeline, "entity": entity, "key": key}])

    def delete_records(self, rows: Sequence[Mapping[str, str]]) -> None:
        """Bulk `delete_record`: rows with pipeline, entity, key; a few statements for all of
        them (one each, per record, cost about 0.1 ms and left SQLAlchemy's expression
        objects as garbage for the cycle collector)."""
        params = [_bound(r) for r in rows]
        if params:
            for stmt in _DELETE_RECORD:
                _bulk(self._conn, stmt, params)

    def set_skips(self, pipeline: str, entity: str, key: str, reasons: Mapping[str, str]) -> None:
        """The skipped writes of one record are now ``reasons`` (member -> reason): rows for
        other members are dropped, an unchanged reason keeps its first-seen time."""
        self.set_skips_of(pipeline, entity, {key: reasons})

    def set_skips_of(
        self, pipeline: str, entity: str, reasons: Mapping[str, Mapping[str, str]]
    ) -> None:
        """Bulk `set_skips`: key -> its reasons, for many keys of one entity. What is on
        record is read in one query per ``BATCH_SIZE`` keys, then the rows dropped, changed
        and added go as one statement each (two or more statements a key before: a sync
        with 20,000 writes skipped took 1.8 times one that made them)."""
        if not reasons:
            return
        now = _now()
        current: dict[tuple[str, str], tuple[str, datetime]] = {}
        for chunk in _chunks(list(reasons), BATCH_SIZE):
            query = sa.select(skips.c.key, skips.c.member, skips.c.reason, skips.c.first_seen)
            for k, m, r, first in self._conn.execute(
                query.where(
                    skips.c.pipeline == pipeline, skips.c.entity == entity, skips.c.key.in_(chunk)
                )
            ):
                current[(k, m)] = (r, first)
        gone = [
            _bound({"pipeline": pipeline, "entity": entity, "key": k, "member": m})
            for k, m in current
            if m not in reasons[k]
        ]
        changed: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for key, by_member in reasons.items():
            for member, reason in by_member.items():
                row = {
                    "pipeline": pipeline,
                    "entity": entity,
                    "key": key,
                    "member": member,
                    "reason": reason,
                    "first_seen": now,
                    "last_seen": now,
                }
                held = current.get((key, member))
                if held is None:
                    added.append(row)
                elif held[0] == reason:  # unchanged: since when it was first seen
                    changed.append(_bound({**row, "first_seen": held[1]}))
                else:
                    changed.append(_bound(row))
        if gone:
            _bulk(self._conn, _DELETE_SKIP, gone)
        if changed:
            _bulk(self._conn, _UPDATE_SKIP, changed)
        if added:
            _bulk(self._conn, _INSERT_SKIP, added)

    def put_link(
        self,
        pipeline: str,
        entity: str,
        key: str,
        member: str,
        *,
        native_id: str | None,
        native_hash: str | None,
        last_seen: dict[str, Any] | None,
        dirty: bool = False,
        tombstone: bool = False,
    ) -> None:
        """Insert or replace one member's link for a key. Its record must exist by commit."""
        self.put_links(
            [
                {
                    "pipeline": pipeline,
                    "entity": entity,
                    "key": key,
                    "member": member,
                    "native_id": native_id,
                    "native_hash": native_hash,
                    "last_seen": last_seen,
                    "dirty": dirty,
                    "tombstone": tombstone,
                }
            ]
        )

    def put_links(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Bulk `put_link`: rows with pipeline, entity, key, member and optionally native_id,
        native_hash, last_seen (default None), dirty and tombstone (default False)."""
        unique = {
            (r["pipeline"], r["entity"], r["key"], r["member"]): {
                "pipeline": r["pipeline"],
                "entity": r["entity"],
                "key": r["key"],
                "member": r["member"],
                "native_id": r.get("native_id"),
                "native_hash": r.get("native_hash"),
                "last_seen": r.get("last_seen"),
                "dirty": bool(r.get("dirty", False)),
                "tombstone": bool(r.get("tombstone", False)),
            }
            for r in rows
        }
        if unique:
            stmt = _upsert(self._dialect, links, ("pipeline", "entity", "key", "member"))
            _bulk(self._conn, stmt, list(unique.values()))

    def forget_member(self, pipeline: str, entity: str, member: str) -> int:
        """Drop every link (live, tombstone or dirty) and skipped write of ``member`` for the
        pipeline's ``entity``: the member no longer syncs it. Returns how many links went."""

        def of_member(table: sa.Table) -> tuple[sa.ColumnElement[bool], ...]:
            return table.c.pipeline == pipeline, table.c.entity == entity, table.c.member == member

        dropped = self._conn.execute(sa.delete(links).where(*of_member(links))).rowcount
        self._conn.execute(sa.delete(skips).where(*of_member(skips)))
        return int(dropped or 0)

    def delete_link(self, pipeline: str, entity: str, key: str, member: str) -> None:
        self.delete_links([{"pipeline": pipeline, "entity": entity, "key": key, "member": member}])

    def delete_links(self, rows: Sequence[Mapping[str, str]]) -> None:
        """Bulk `delete_link`: rows with pipeline, entity, key, member; one statement."""
        if rows:
            _bulk(self._conn, _DELETE_LINK, [_bound(r) for r in rows])

    def set_dirty(
        self, pipeline: str, entity: str, key: str, members: Iterable[str] | None = None
    ) -> None:
        """Mark the key's links dirty: all of them, or only those of `members`."""
        if members is not None:
            self.set_dirty_links(
                [{"pipeline": pipeline, "entity": entity, "key": key, "member": m} for m in members]
            )
            return
        self._conn.execute(
            sa.update(links)
            .where(links.c.pipeline == pipeline, links.c.entity == entity, links.c.key == key)
            .values(dirty=True)
        )

    def set_dirty_links(self, rows: Sequence[Mapping[str, str]]) -> None:
        """Bulk `set_dirty` of single members' links: rows with pipeline, entity, key, member;
        one statement (a run whose writes all fail marks every key's link)."""
        if rows:
            _bulk(self._conn, _DIRTY_LINK, [_bound(r) for r in rows])

    # -- read marks ----------------------------------------------------------------------

    def put_read_mark(self, pipeline: str, entity: str, member: str, token: str) -> None:
        """Insert or replace the token the member's next incremental read of the entity starts
        from. The token is opaque here: only the connector that gave it reads it."""
        stmt = _upsert(self._dialect, read_marks, ("pipeline", "entity", "member"))
        self._conn.execute(
            stmt,
            [
                {
                    "pipeline": pipeline,
                    "entity": entity,
                    "member": member,
                    "token": token,
                    "updated_at": _now(),
                }
            ],
        )

    def put_mapping_mark(self, pipeline: str, entity: str, member: str, fingerprint: str) -> None:
        """Insert or replace the fingerprint of the mapping the member's records were read
        with (a changed mapping makes the next read look at every record again)."""
        stmt = _upsert(self._dialect, mapping_marks, ("pipeline", "entity", "member"))
        row = {
            "pipeline": pipeline,
            "entity": entity,
            "member": member,
            "fingerprint": fingerprint,
            "updated_at": _now(),
        }
        self._conn.execute(stmt, [row])

    def delete_read_mark(self, pipeline: str, entity: str, member: str) -> None:
        """Forget the member's read mark: its next read of the entity is a complete one."""
        self._conn.execute(
            sa.delete(read_marks).where(
                read_marks.c.pipeline == pipeline,
                read_marks.c.entity == entity,
                read_marks.c.member == member,
            )
        )

    # -- journal -------------------------------------------------------------------------

    def add_intent(
        self,
        run_id: str,
        pipeline: str,
        entity: str,
        key: str,
        member: str,
        op: str,
        payload: dict[str, Any],
        holder: str | None = None,
    ) -> int:
        """Journal a write before attempting it; returns the intent id. ``holder`` is the
        lease holder the run syncs under: the intent is recovered once its lease is gone."""
        row = {
            "run_id": run_id,
            "pipeline": pipeline,
            "entity": entity,
            "key": key,
            "member": member,
            "op": op,
            "payload": payload,
            "holder": holder,
        }
        return self.add_intents([row])[0]

    def add_intents(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Bulk `add_intent`; returns the ids in the order of `rows`."""
        if not rows:
            return []
        now = _now()
        values = []
        for r in rows:
            if r["op"] not in INTENT_OPS:
                raise ValueError(f"intent op must be one of {INTENT_OPS}, got {r['op']!r}")
            values.append(
                {
                    "run_id": r["run_id"],
                    "pipeline": r["pipeline"],
                    "entity": r["entity"],
                    "key": r["key"],
                    "member": r["member"],
                    "op": r["op"],
                    "payload": r["payload"],
                    "holder": r.get("holder"),
                    "state": "pending",
                    "created_at": now,
                }
            )
        ids = self._reserve_intent_ids(len(values))
        for value, intent_id in zip(values, ids, strict=True):
            value["id"] = intent_id
        # a plain executemany: returning the ids row by row costs ten times the insert
        _bulk(self._conn, _INSERT_INTENT, values)
        return ids

    def _reserve_intent_ids(self, n: int) -> list[int]:
        """``n`` fresh journal ids, taken before the rows are inserted. PostgreSQL draws them
        from the id column's sequence; SQLite continues from the highest id the table ever
        had (its AUTOINCREMENT counter), which no other writer can move while this
        transaction holds the write lock."""
        if self._dialect == "postgresql":
            rows = self._conn.execute(
                sa.text(
                    "SELECT nextval(pg_get_serial_sequence('journal', 'id')) "
                    "FROM generate_series(1, :n)"
                ),
                {"n": n},
            )
            return [int(i) for i in rows.scalars()]
        top = self._conn.execute(
            sa.text(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0), "
                "coalesce((SELECT max(id) FROM journal), 0))"
            )
        ).scalar_one()
        return list(range(int(top) + 1, int(top) + 1 + n))

    def finish_intent(
        self,
        intent_id: int,
        state: str,
        *,
        native_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome of a journalled write (done, failed or abandoned).

        `native_id` and `error` keep their previous value when not given.
        """
        self.finish_intents(
            [{"id": intent_id, "state": state, "native_id": native_id, "error": error}]
        )

    def finish_intents(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Bulk `finish_intent`: rows with id, state and optionally native_id, error."""
        now = _now()
        params = []
        for r in rows:
            if r["state"] not in _FINAL_INTENT_STATES:
                raise ValueError(
                    f"a finished intent's state must be one of {sorted(_FINAL_INTENT_STATES)}, "
                    f"got {r['state']!r}"
                )
            params.append(
                {
                    "b_id": r["id"],
                    "b_state": r["state"],
                    "b_native_id": r.get("native_id"),
                    "b_error": r.get("error"),
                    "b_finished_at": now,
                }
            )
        if not params:
            return
        result = _bulk(self._conn, _FINISH_INTENT, params)
        expected = len({p["b_id"] for p in params})
        if self._conn.dialect.supports_sane_multi_rowcount and result.rowcount < expected:
            raise StateError(f"cannot finish intents: {expected - result.rowcount} unknown id(s)")

    def prune_journal(self, pipeline: str, older_than: datetime) -> int:
        """Delete the pipeline's finished intents (done, failed, abandoned) that finished
        before `older_than`; returns how many were deleted. Pending intents are kept."""
        if older_than.tzinfo is None or older_than.utcoffset() is None:
            raise ValueError(f"older_than must be timezone-aware, got {older_than!r}")
        result = self._conn.execute(
            _PRUNE_JOURNAL, {"pipeline": pipeline, "older_than": older_than}
        )
        return int(result.rowcount)

    # -- conflicts -----------------------------------------------------------------------

    def add_conflict(
        self,
        pipeline: str,
        entity: str,
        key: str,
        field: str,
        values: dict[str, Any],
        base_value: Any,
    ) -> int:
        """Open a conflict on a field, or update the values of the one already open there.

        Returns the conflict id (the existing one when it was updated)."""
        stmt = _conflict_upsert(self._dialect).returning(conflicts.c.id)
        row = {
            "pipeline": pipeline,
            "entity": entity,
            "key": key,
            "field": field,
            "values": values,
            "base_value": base_value,
            "status": "open",
            "created_at": _now(),
        }
        return int(self._conn.execute(stmt, row).scalar_one())

    def close_agreed_conflict(
        self, pipeline: str, entity: str, key: str, field: str, value: Any
    ) -> None:
        """Close the open conflict on a field whose members all hold ``value`` now (none
        open: nothing to do)."""
        self._conn.execute(
            sa.update(conflicts)
            .where(
                conflicts.c.pipeline == pipeline,
                conflicts.c.entity == entity,
                conflicts.c.key == key,
                conflicts.c.field == field,
                conflicts.c.status == "open",
            )
            .values(
                status="resolved", resolution={"value": value, "agreed": True}, resolved_at=_now()
            )
        )

    def resolve_conflict(self, conflict_id: int, resolution: dict[str, Any]) -> None:
        """Close an open conflict with the resolution chosen for it."""
        result = self._conn.execute(
            sa.update(conflicts)
            .where(conflicts.c.id == conflict_id, conflicts.c.status == "open")
            .values(status="resolved", resolution=resolution, resolved_at=_now())
        )
        if result.rowcount == 1:
            return
        status = self._conn.execute(
            sa.select(conflicts.c.status).where(conflicts.c.id == conflict_id)
        ).scalar_one_or_none()
        if status is None:
            raise StateError(f"conflict {conflict_id} does not exist")
        raise StateError(f"conflict {conflict_id} is already {status}")

    # -- runs ----------------------------------------------------------------------------

    def start_run(self, pipeline: str, dry_run: bool, run_uuid: str) -> int:
        """Record the start of a run; returns its id."""
        row = {
            "run_uuid": run_uuid,
            "pipeline": pipeline,
            "dry_run": dry_run,
            "started_at": _now(),
            "counts": {},
            "errors": [],
        }
        return int(self._conn.execute(_START_RUN, row).scalar_one())

    def finish_run(
        self, run_id: int, outcome: str, counts: dict[str, Any], errors: list[Any]
    ) -> None:
        values = {
            "run": run_id,
            "finished": _now(),
            "ended_as": outcome,
            "run_counts": counts,
            "run_errors": errors,
        }
        result = self._conn.execute(_FINISH_RUN, values)
        if result.rowcount != 1:
            raise StateError(f"run {run_id} does not exist")

    def prune_runs(self, older_than: datetime) -> int:
        """Delete runs started before `older_than`, except each pipeline's newest run."""
        newest = sa.select(sa.func.max(runs.c.id)).group_by(runs.c.pipeline)
        result = self._conn.execute(
            sa.delete(runs).where(runs.c.started_at < older_than, runs.c.id.not_in(newest))
        )
        return int(result.rowcount)

    # -- leases, pauses and backoff (see `leases.py`) -------------------------------------

    def acquire_lease(
        self, pipeline: str, holder: str, ttl: float, kind: str | None = None
    ) -> bool:
        return _leases.acquire(self._conn, pipeline, holder, ttl, kind)

    def renew_lease(self, pipeline: str, holder: str, ttl: float) -> bool:
        return _leases.renew(self._conn, pipeline, holder, ttl)

    def release_lease(self, pipeline: str, holder: str) -> bool:
        return _leases.release(self._conn, pipeline, holder)

    def pause_pipeline(self, pipeline: str, reason: str, fingerprint: str | None = None) -> None:
        _leases.pause(self._conn, pipeline, reason, fingerprint)

    def resume_pipeline(self, pipeline: str) -> bool:
        return _leases.resume(self._conn, pipeline)

    def record_failure(
        self, pipeline: str, error: str, backoff: Callable[[int], float]
    ) -> PipelineState:
        return _leases.record_failure(self._conn, pipeline, error, backoff)

    def record_success(self, pipeline: str) -> None:
        _leases.record_success(self._conn, pipeline)

    # -- the webhook inbox (see `inbox.py`) ----------------------------------------------

    def store_event(
        self,
        *,
        connector: str,
        digest: str,
        event: str,
        entities: Sequence[str],
        record_id: str | None,
        payload: Mapping[str, Any],
        occurred_at: str | None,
    ) -> int | None:
        """Store a webhook event once per connector and body digest: its inbox id, or None
        when the same body was stored before (a redelivery)."""
        return _inbox.store_event(
            self._conn,
            connector=connector,
            digest=digest,
            event=event,
            entities=entities,
            record_id=record_id,
            payload=payload,
            occurred_at=occurred_at,
        )

    def events_done(self, pipeline: str, event_ids: Sequence[int], run_id: str) -> None:
        """Record that the run ``run_id`` of ``pipeline`` took these inbox events."""
        _inbox.mark_done(self._conn, pipeline, event_ids, run_id)

    def prune_inbox(
        self, concerned: Mapping[str, Sequence[str]], *, done_before: datetime, any_before: datetime
    ) -> int:
        """Forget inbox events every pipeline concerned took, and those older than
        ``any_before`` (see ``inbox.prune``)."""
        return _inbox.prune(self._conn, concerned, done_before=done_before, any_before=any_before)

    # -- alerts (see `alert_rows.py`) -----------------------------------------------------

    def alert_conditions(self, pipeline: str | None = None) -> list[_alert_rows.ConditionRow]:
        """The stored alert conditions of one pipeline (or all), open ones first."""
        return _alert_rows.conditions(self._conn, pipeline)

    def claim_alert(self, row: _alert_rows.ConditionRow, seen_version: int | None) -> bool:
        """Write an alert condition's new standing if it is still at ``seen_version`` (None:
        not stored yet): True when this caller won the change and is to send its alert."""
        return _alert_rows.claim(self._conn, row, seen_version)
