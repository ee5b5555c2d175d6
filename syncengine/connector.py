"""The connector plugin surface, and the one place its capability flags are enforced.

A connector speaks one system's native records for each entity it supports. It never sees
another connector, the state store or canonical records: the engine maps for it.

Writing a connector::

    class MyConnector(Connector):
        type_name = "mine"
        Options = MyOptions                     # a pydantic model of its [connectors.X] table
        reads_json = True                       # optional: its records hold JSON values only

        def entities(self) -> tuple[str, ...]: ...
        def capabilities(self, entity: str) -> Capabilities: ...
        def read(self, entity: str) -> Iterator[NativeRecord]: ...
        def read_incremental(self, entity, token) -> ReadPass | None: ...  # optional
        def expect(self, entity, token) -> None: ...                    # optional: the mark first
        def read_events(self, entity, events) -> ReadPass | None: ...      # optional: webhooks
        def create(self, entity, data, *, key) -> NativeRecord: ...
        def update(self, entity, native_id, patch, *, full, new_id=None) -> NativeRecord | None: ...
        def delete(self, entity, native_id) -> None: ...
        def find(self, entity, data) -> list[NativeRecord]: ...     # optional, for crash recovery
        def flush(self, entity) -> None: ...                        # optional, for batching members
        def buffers(self, entity) -> bool: ...                      # optional: which entities batch
        def flushed(self, entity, answered) -> NativeRecord: ...    # optional: ids known at flush
        def flushes_alone(self, entity) -> bool: ...                # optional: a cheap flush
        def changed_by_writes(self, entity) -> Mapping: ...         # optional: derived records
        def prepare(self, entity, mapping) -> None: ...             # optional: learn the mapping
        def will_sync(self, entities) -> None: ...                  # optional: a run's entities
        def structure(self, entity) -> Structure: ...               # optional: a file's header

and register it in ``pyproject.toml``::

    [project.entry-points."syncengine.connectors"]
    mine = "my_package:MyConnector"

The engine only calls a write method when the capability allows it: ``check_allowed()``,
called before every write, raises ``CapabilityViolation`` instead of letting a forbidden call
reach the member.

A member a person edits by hand (a spreadsheet) reports its ``structure``: the engine asks for
it before anything is recovered, planned or written, and again after each read. A connector
raises ``StructureError`` there for what a person must fix whatever the state holds (two
columns named alike that the mapping reads), and describes the rest (``Structure``): mapped
columns its sheet lacks, or records without ids although the state has records linked to it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn, cast

from pydantic import BaseModel, ConfigDict

from syncengine import jsoncodec
from syncengine.errors import ConfigError, FatalConnectorError, Problem

if TYPE_CHECKING:
    from syncengine.events import InboxEvent
    from syncengine.mapping import EntityMapping

NativeData = dict[str, Any]


@dataclass(frozen=True)
class Capabilities:
    read: bool = True
    create: bool = True
    update: bool = True
    delete: bool = True
    assigns_ids: bool = False
    """True when the member takes the engine's record key as the native id on create
    (spreadsheets: the ``Sync ID`` column). False when the member assigns its own ids."""
    fixed: Mapping[str, str] = field(default_factory=dict)
    """Canonical fields the member keeps as it created the record -> why, in words a person
    acts on. Another member's change to one is that record's error, reported where it was
    made, never a write the member refuses on every run (Housecall Pro keeps a line on the
    job it was added to: it cannot move to another invoice)."""

    def allows(self, op: str) -> bool:
        return bool(getattr(self, op))

    @property
    def read_only(self) -> bool:
        return not (self.create or self.update or self.delete)


class _Released(Mapping[str, Any]):
    """Stands for a native record the engine let go of once it served (a read record once
    its hub record is planned, ``Observed.release_native``; a create's record once the
    member took it, ``apply``): any later look at it is a bug, and says so, rather than
    finding an empty record."""

    def _gone(self) -> NoReturn:
        raise RuntimeError("a native record was looked at after it was released")

    def __getitem__(self, key: str) -> Any:
        self._gone()

    def __iter__(self) -> NoReturn:
        self._gone()

    def __len__(self) -> int:
        self._gone()

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "<native record released once planned>"


RELEASED = cast(dict[str, Any], _Released())
"""The one stand-in for every released native record (typed as the records it stands for)."""


@dataclass(frozen=True, slots=True)
class NativeRecord:
    """One record as a member gives it.

    ``provisional`` marks a record the member has no stable id for yet (a spreadsheet row a
    person added with a blank ``Sync ID``). Its ``id`` only locates it for this run; the engine
    gives it a real id through ``update(..., new_id=KEY)``.
    """

    id: str
    data: NativeData
    provisional: bool = False
    location: str = ""
    """Where a person finds the record (``customers.csv line 14``), for messages."""
    error: str = ""
    """Set when the member could read the record's location but not its content
    (a malformed row): the engine reports it and leaves the record alone."""
    digest: str = field(default="", compare=False)

    def released(self, location: str | None = None) -> NativeRecord:
        """The record without its data (``RELEASED``): its id, location (or ``location``, where
        given: "" where it is kept elsewhere), error and hash stay. Made field by field:
        ``dataclasses.replace`` costs three times as much, and a first sync lets go of every
        record it reads (``Observed.release_native``)."""
        where = self.location if location is None else location
        return NativeRecord(self.id, RELEASED, self.provisional, where, self.error, self.digest)

    def native_hash(self) -> str:
        if self.digest:
            return self.digest
        if self.data is RELEASED:
            raise RuntimeError("a native record was hashed after it was released")
        return raw_hash(self.data)


EMPTY_SECRET: Final = (
    "is empty: write the key there, or, where it names an environment variable (${NAME}), "
    "give that variable a value"
)
"""The problem of a key, token or password left empty (a connector's options say it)."""


def raw_hash(data: Mapping[str, Any]) -> str:
    """A stable hash of a native record, for the unchanged-record short-circuit: its JSON
    with sorted keys (``jsoncodec``: orjson, several times faster than the standard library
    on every record of every read; a value JSON cannot hold counts as its text)."""
    return json_and_hash(data)[1]


def json_and_hash(data: Mapping[str, Any]) -> tuple[bytes, str]:
    """The JSON text ``raw_hash`` hashes, and the hash. For a record of JSON values only
    (``Connector.reads_json``) the text is the record exactly: ``jsoncodec.loads`` gives it
    back, with its keys sorted."""
    blob = jsoncodec.dumps_sorted(data)
    return blob, hashlib.blake2b(blob, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Structure:
    """How a member stores one entity, as far as the engine must know before it trusts a
    read of it (``Connector.structure``). The default has nothing to report: a member that is
    not a file a person edits by hand."""

    where: str = ""
    """Where a person finds it (``customers.csv``, ``books.xlsx, sheet Customers``)."""
    missing: tuple[str, ...] = ()
    """Native names the mapping in force reads or writes that the storage has no place for:
    a column renamed or removed from an existing sheet. The member does not hold those fields
    yet; the engine never reads them as cleared values and writes them from the others."""
    listed: int = 0
    """For an API's records rather than a file's header: how many records the complete
    listing that found ``missing`` showed, none of which had those fields (a mapping naming
    a field the API does not have, or one it dropped). 0 for a file."""
    absent: bool = False
    """The storage does not exist (a file or sheet deleted, moved or renamed): the member
    lists nothing, and creates it at the first write."""
    no_ids: str = ""
    """Why none of the records the storage holds shows its id (``the Sync ID column is
    missing``), else "". With records linked to the member that is a structure error: each
    linked record would look deleted and each row new."""
    misread: str = ""
    """Why the storage may be read wrongly, with the fix, else "": a CSV header whose names
    run together in one column (the file has another delimiter than the option says) or are
    not text at all (another encoding). A person's records are then not what was read: the
    messages of a missing id column and of an empty member give this instead of their own
    advice."""


class ReadPass:
    """One read of an entity that may be partial (see ``Connector.read_incremental``).

    Iterate ``records`` once; after they are exhausted ``token()`` is the token to store once
    what was read is committed (``None`` before that, or when the connector has none to give).
    """

    def __init__(
        self,
        records: Iterator[NativeRecord],
        *,
        complete: bool,
        finish: Callable[[], str | None],
        gone: Callable[[], Collection[str]] = frozenset,
        named: bool = False,
        exact: bool = False,
        settle: Callable[[], str | None] | None = None,
    ) -> None:
        self.complete = complete
        """True: the whole listing (a linked record missing from it is gone). False: only the
        records changed since the token (a linked record missing from it is unchanged)."""
        self.named = named
        """True: only the records webhook events named (``Connector.read_events``)."""
        self.exact = exact
        """True: the token names the member's content itself (a file's fingerprint), not a
        point in time. A pass from such a token lists nothing whenever the content is back
        to what the token names, even after other versions were synced in between, so a mark
        that cannot move forward must be dropped, never kept (``syncengine.marks``)."""
        self._gone = gone
        self._records = records
        self._finish = finish
        self._settle = settle
        self._token: str | None = None

    @property
    def records(self) -> Iterator[NativeRecord]:
        yield from self._records
        self._token = self._finish()

    def token(self) -> str | None:
        return self._token

    def settled_token(self) -> str | None:
        """The token to store once the entity was applied and committed: what ``settle``
        says the member holds now, the sync's own writes included (a file's fingerprint
        after it was saved), or None when it cannot vouch for that; without ``settle``, the
        token of the read."""
        return self._token if self._settle is None else self._settle()

    def gone(self) -> Collection[str]:
        """Once the records are exhausted: native ids a partial pass knows were deleted (an
        event said so and the member confirmed it). A complete pass says it by leaving them
        out; this is how a partial one does."""
        return self._gone()


class ConnectorOptions(BaseModel):
    """Base for a connector's options model. Unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    type: str


@dataclass
class ConnectorContext:
    """What the engine gives a connector besides its options."""

    name: str
    """The connector instance's name in the config (``hcp``, ``books``)."""
    base_dir: str = "."
    """Directory relative paths in the options are resolved against (the config's folder)."""
    secrets: tuple[str, ...] = ()
    """Secret values to redact from anything this connector logs or raises."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Test hooks, e.g. an httpx transport for an in-process sandbox; and ``stop``, the run's
    stop event (``Engine.stop``), which ends an HTTP client's waits when it is set."""


class Connector(ABC):
    """Base class of every connector. See the module docstring."""

    type_name: ClassVar[str] = ""
    Options: ClassVar[type[ConnectorOptions]] = ConnectorOptions
    buffered_writes: ClassVar[bool] = False
    """True when writes are held until ``flush`` (a file rewritten at once). The engine then
    commits the state of those writes only after the flush succeeded. A connector that holds
    the writes of some entities only says so with ``buffers``."""
    reads_json: ClassVar[bool] = False
    """True when every record it reads holds only what JSON holds (objects with text keys,
    arrays, text, numbers, booleans, null): an API's answers as they decode, a sheet's cells
    as text. The engine then keeps a record it reads unchanged as the JSON text its native
    hash is made of, not as objects (several times the size), and decodes it again only when
    its hub record is planned and the member's side needs it: a write, a write-only field, a
    reference to check (``read.Unchanged``). A record holding anything else (a date, a tuple,
    a decimal) would come back changed: leave it False then."""
    reads_ahead: ClassVar[bool] = False
    """True when reads cost requests (an API behind a rate limit): the engine starts reading
    the pipeline's next entity once the one before is read, while it still plans and applies
    it (``read.ReadAhead``), so that the waiting overlaps its work. Such a connector must take
    a read from another thread than the engine's own calls: its writes, and what planning
    asks (``get`` for unseen records, ``find`` when settling an interrupted create,
    ``prepare``)."""

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        self.options = options
        self.context = context
        self.name = context.name

    # -- description
    @abstractmethod
    def entities(self) -> tuple[str, ...]:
        """The canonical entities this member holds."""

    def capabilities(self, entity: str) -> Capabilities:
        return Capabilities()

    # -- reading
    @abstractmethod
    def read(self, entity: str) -> Iterator[NativeRecord]:
        """Stream every record of ``entity``, page by page."""

    def read_incremental(self, entity: str, token: str | None) -> ReadPass | None:
        """A read of ``entity`` that may list only what changed since ``token``, or None when
        the member cannot read that way (the default): the engine then calls ``read``.

        The token is opaque to the engine: it is what an earlier pass's ``ReadPass.token()``
        gave (None the first time), stored by the engine only once everything that pass read
        was committed. A pass that is not ``complete`` lists only the records changed since the
        token, so a record missing from it is unchanged, not deleted; a connector must make a
        complete pass from time to time, since deletes are only seen in complete passes. An
        absent or unreadable token must give a complete pass.

        A member whose token names its content exactly (a file's fingerprint: ``exact``)
        lists nothing when the content is the token's, and everything otherwise; it needs no
        complete pass from time to time, and its ``settle`` gives the token of the content
        the sync's own writes left."""
        return None

    def expect(self, entity: str, token: str | None) -> None:  # noqa: B027 - optional hook
        """The read mark the engine holds for ``entity`` (None: none), told before the
        member's storage of it is first looked at in a run (``structure``). Optional: a
        member whose marks name its content exactly may then describe the entity and read
        it by that mark without loading it."""

    def read_events(self, entity: str, events: Sequence[InboxEvent]) -> ReadPass | None:
        """A partial pass (``complete=False``) of the records of ``entity`` that ``events``
        name, the member's webhook events (``syncengine.events``), or None when the member
        cannot read that way (the default): the engine then reads it as any run does.

        The records come from the events' payloads where they carry them whole, else by id;
        one an event says was deleted and that the member no longer has is in the pass's
        ``gone``. Its token is None: what a few events named says nothing about where the next
        incremental read may start."""
        return None

    def get(self, entity: str, native_id: str) -> NativeRecord | None:
        """One record by id, or None. The default reads the whole entity."""
        return next((r for r in self.read(entity) if r.id == native_id and not r.provisional), None)

    def find(self, entity: str, data: NativeData) -> list[NativeRecord]:
        """Records on the member that carry ``data``: used to resolve an interrupted create
        that the run's own read cannot show (a partial pass, an entity the run does not read).

        The default reads the whole entity; connectors with a search API do better.
        """
        found = []
        for record in self.read(entity):
            if all(record.data.get(k) == v for k, v in data.items() if v not in (None, "")):
                found.append(record)
        return found

    # -- writing
    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        raise FatalConnectorError("create is not supported", connector=self.name, entity=entity)

    def update(
        self,
        entity: str,
        native_id: str,
        patch: NativeData,
        *,
        full: NativeData,
        new_id: str | None = None,
    ) -> NativeRecord | None:
        """Change the fields in ``patch``; ``full`` is the whole record with the patch applied.

        Returns the record as the member now has it, or ``None`` if the member cannot tell
        (the engine then takes ``full`` as what the member holds).
        """
        raise FatalConnectorError("update is not supported", connector=self.name, entity=entity)

    def delete(self, entity: str, native_id: str) -> None:
        raise FatalConnectorError("delete is not supported", connector=self.name, entity=entity)

    def prepare(self, entity: str, mapping: EntityMapping) -> None:  # noqa: B027 - optional
        """Called before the entity is read with the mapping in force for this member: a
        file-backed member can take the columns of a new file from it, or the kinds of values
        (money, dates) its cells hold. A connector must work without it too."""

    def will_sync(self, entities: Collection[str]) -> None:  # noqa: B027 - optional hook
        """Called once at the start of a sync run, before anything is read, with every entity
        that run syncs on this member. A connector may then leave out what it would keep only
        for the other entities (Housecall Pro: which invoice bills each job, for line items).
        Without the call it keeps everything, as a report or a one-off read needs."""

    def structure(self, entity: str) -> Structure:
        """What the storage of ``entity`` looks like under the mapping given to ``prepare``
        (see ``Structure``). Raise ``StructureError`` for what a person must fix before
        anything can be read into a plan. The default has nothing to report."""
        return Structure()

    def buffers(self, entity: str) -> bool:
        """Whether writes of ``entity`` are held until ``flush`` (default: ``buffered_writes``
        for every entity). Housecall Pro holds line items to send one request per job."""
        return bool(self.buffered_writes)

    def flush(self, entity: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """Make buffered writes durable. Members that write through immediately do nothing."""

    def flushes_alone(self, entity: str) -> bool:
        """Whether the engine may flush ``entity`` several times in a run: a flush writes only
        that entity's storage (a CSV file, not a workbook's every sheet), so each costs about
        its own records, and a flush that fails drops or refuses what it held rather than
        writing it at the next flush (the state records those writes as failed). The engine
        then applies a first sync of a large entity in slices, each flushed and committed
        before the next is planned, so that memory does not hold the entity's whole plan
        (``syncengine.slices``); otherwise the entity is applied and flushed once. Default
        False: a connector that buffers says so."""
        return False

    def flushed(self, entity: str, answered: NativeRecord) -> NativeRecord:
        """After ``flush(entity)`` returned: the record as the member now holds it, for what a
        buffered ``create`` or ``update`` of ``entity`` answered (``answered``). The default
        is the answer itself (a file knows its rows before it is saved). A member that learns
        ids or values only when it flushes (an API taking a batch per request) answers a
        stand-in and gives the real record here; a write its flush could not make raises
        ``ConnectorError`` or ``RecordError`` here, and fails alone."""
        return answered

    def changed_by_writes(self, entity: str) -> Mapping[str, frozenset[str]]:
        """After the writes of ``entity`` were flushed: the records of *other* entities that
        those writes changed on this member, as entity -> native ids (default: none), each
        asked once. The engine reads them again by id and syncs them in the same run, so that
        what the member derives from ``entity`` reaches the other members at once, not a run
        later: Housecall Pro totals an invoice from the lines of its job."""
        return {}

    def release(self, entity: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """The run is done with ``entity``: drop what is held of it (a later call reads it
        again), so that memory does not grow with every entity a run syncs."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections and files."""


class CapabilityViolation(FatalConnectorError):
    """A write the member's capability flags forbid was attempted (a bug in the caller)."""


def check_allowed(connector: Connector, entity: str, op: str) -> None:
    """The one place capability flags are enforced: raise before a forbidden write."""
    caps = connector.capabilities(entity)
    if not caps.allows(op):
        raise CapabilityViolation(
            f"{connector.type_name} cannot {op} {entity}", connector=connector.name, entity=entity
        )


# ------------------------------------------------------------------------------------ registry

ENTRY_POINT_GROUP = "syncengine.connectors"


def connector_types() -> dict[str, type[Connector]]:
    """Every connector class registered in the ``syncengine.connectors`` entry-point group
    that loads (a plugin that fails to import is left out here; asking for it by name says
    why), as installed now."""
    found: dict[str, type[Connector]] = {}
    _rescan()
    for ep in _registered():
        try:
            cls = ep.load()
        except Exception:  # one broken plugin must not hide the others
            continue
        if isinstance(cls, type) and issubclass(cls, Connector):
            found[ep.name] = cls
    return found


@functools.cache
def _registered() -> tuple[EntryPoint, ...]:
    """The ``syncengine.connectors`` entry points, read once a process (``_rescan`` reads
    them again). A read goes through every installed distribution's metadata (5-13 ms in a
    venv with the test extras), and a config names each member's type: those reads were
    most of loading a config, which every command, the console and a daemon's reload do."""
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def _rescan() -> None:
    """Forget the entry points read and the import system's listings of the folders on
    ``sys.path``, so that the next ``_registered`` sees what is installed now."""
    importlib.invalidate_caches()
    _registered.cache_clear()


def connector_class(type_name: str, location: str) -> type[Connector]:
    """The class of one connector type; only that plugin is imported. Where the entry points
    read before give no class (a type they do not list, a plugin that does not load or is
    not a connector), they are read again first, so that a daemon reloading its config finds
    a plugin installed, reinstalled or fixed since: the error is about what is installed
    now."""
    try:
        return _load_connector(type_name, location, _registered())
    except ConfigError:
        _rescan()
        return _load_connector(type_name, location, _registered())


def _load_connector(
    type_name: str, location: str, registered: Sequence[EntryPoint]
) -> type[Connector]:
    """The class ``registered`` gives ``type_name``, or a ``ConfigError`` saying why none."""
    matches = [ep for ep in registered if ep.name == type_name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in registered}))
        raise ConfigError(
            [
                Problem(
                    location,
                    f"unknown connector type {type_name!r}",
                    f"use one of: {known or '(none installed)'}",
                )
            ]
        )
    ep = matches[0]
    try:
        cls = ep.load()
    except Exception as exc:  # a plugin import error is a config problem
        raise ConfigError(
            [
                Problem(
                    location,
                    f"the connector type {type_name!r} ({ep.value}) "
                    f"cannot be loaded: {type(exc).__name__}: {exc}",
                    "reinstall the package that provides it",
                )
            ]
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise ConfigError(
            [
                Problem(
                    location,
                    f"{ep.value} is not a syncengine Connector class",
                    "check the package's syncengine.connectors entry point",
                )
            ]
        )
    return cls
