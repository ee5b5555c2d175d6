"""An in-memory member with configurable capabilities. See the package docstring."""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from pydantic import Field

from syncengine.connector import (
    Capabilities,
    Connector,
    ConnectorContext,
    ConnectorOptions,
    NativeData,
    NativeRecord,
    ReadPass,
)
from syncengine.errors import NotFoundError, RecordError, RetriableError
from syncengine.events import InboxEvent

FailHook = Callable[[str, str, str], bool]
"""``(op, entity, native_id_or_key) -> True`` to make that write fail."""


class MemoryOptions(ConnectorOptions):
    dataset: str = ""
    """Name of the shared dataset; defaults to the connector's name."""
    entities: list[str] = Field(default_factory=lambda: ["customers"])
    create: bool = True
    update: bool = True
    delete: bool = True
    assigns_ids: bool = False
    """Take the engine's key as the id on create (like a spreadsheet's Sync ID)."""
    only: dict[str, list[str]] = Field(default_factory=dict)
    """Per entity, the writes it takes (``{payments = []}``: payments are read-only; an
    ``{invoices = ["create"]}``: invoices can be created, not updated or deleted), like an
    API that takes some writes of some entities only."""
    stamp_updated_at: bool = True
    """Set ``updated_at`` on every write, like an API that tracks modification times."""
    incremental: bool = False
    """Offer incremental reads (``read_incremental``), like an API with an updated-since
    filter: a pass since a token lists only the records whose ``updated_at`` is newer than the
    newest one the token's pass saw (records without one are always listed), and every
    ``full_every``-th pass is complete (it lists everything, so deletes are seen)."""
    full_every: int = Field(default=3, ge=1)
    """With ``incremental``: the first pass and then every ``full_every``-th one is complete
    (1: every pass is complete)."""
    put_updates: bool = False
    """Updates replace the whole record with ``full`` (like an API whose update is a PUT)
    instead of applying ``patch`` to it."""


class MemoryDataset:
    """The records of one memory member, per entity. Thread-safe."""

    _EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    _clock_lock = threading.Lock()
    _tick = 0
    """One clock for every dataset, so update times compare across members."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, NativeData]] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self.calls: list[tuple[str, str, str]] = []
        """(op, entity, detail) of incremental passes (``pass``, ``complete``/``partial``) and
        ``get`` calls (``get``, the id), for tests to count."""

    def table(self, entity: str) -> dict[str, NativeData]:
        return self.records.setdefault(entity, {})

    def next_id(self) -> str:
        with self._lock:
            self._counter += 1
            return f"m{self._counter}"

    def now(self) -> str:
        """A strictly increasing clock, so ``newest`` is decidable in tests."""
        with MemoryDataset._clock_lock:
            MemoryDataset._tick += 1
            moment = self._EPOCH + dt.timedelta(seconds=MemoryDataset._tick)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    # helpers for tests acting as "a person editing the member"
    def put(self, entity: str, native_id: str, data: NativeData) -> None:
        self.table(entity)[native_id] = {**data, "updated_at": self.now()}

    def edit(self, entity: str, native_id: str, **changes: Any) -> None:
        record = self.table(entity)[native_id]
        record.update(changes)
        record["updated_at"] = self.now()

    def remove(self, entity: str, native_id: str) -> None:
        del self.table(entity)[native_id]


class MemoryConnector(Connector):
    type_name: ClassVar[str] = "memory"
    Options: ClassVar[type[ConnectorOptions]] = MemoryOptions
    datasets: ClassVar[dict[str, MemoryDataset]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, MemoryOptions)
        self.opts = options
        self.dataset = self.get_dataset(options.dataset or context.name)
        self._fail: FailHook | None = context.extra.get("fail_write")

    @classmethod
    def get_dataset(cls, name: str) -> MemoryDataset:
        with cls._registry_lock:
            return cls.datasets.setdefault(name, MemoryDataset())

    @classmethod
    def reset(cls) -> None:
        with cls._registry_lock:
            cls.datasets.clear()

    def entities(self) -> tuple[str, ...]:
        return tuple(self.opts.entities)

    def capabilities(self, entity: str) -> Capabilities:
        only = self.opts.only.get(entity)
        return Capabilities(
            read=True,
            create=self.opts.create if only is None else "create" in only,
            update=self.opts.update if only is None else "update" in only,
            delete=self.opts.delete if only is None else "delete" in only,
            assigns_ids=self.opts.assigns_ids,
        )

    def read(self, entity: str) -> Iterator[NativeRecord]:
        table = self.dataset.table(entity)
        for native_id, data in list(table.items()):
            yield NativeRecord(
                id=native_id, data=copy.deepcopy(data), location=f"{self.name} {entity} {native_id}"
            )

    def read_incremental(self, entity: str, token: str | None) -> ReadPass | None:
        """With ``incremental``: the records updated since the token's pass, or everything on
        the first and every ``full_every``-th pass. The token holds the newest ``updated_at``
        seen and how many partial passes followed the last complete one."""
        if not self.opts.incremental:
            return None
        since, partial = _decode(token)
        complete = since is None or partial + 1 >= self.opts.full_every
        self.dataset.calls.append(("pass", entity, "complete" if complete else "partial"))
        newest = None if complete else since

        def records() -> Iterator[NativeRecord]:
            nonlocal newest
            for record in self.read(entity):
                stamp = record.data.get("updated_at")
                if not isinstance(stamp, str):
                    yield record  # no update time: it cannot be left out
                    continue
                if not complete and since is not None and stamp <= since:
                    continue
                if newest is None or stamp > newest:
                    newest = stamp
                yield record

        def finish() -> str | None:
            if newest is None:
                return None  # nothing carries an update time: every pass stays complete
            return json.dumps({"since": newest, "partial": 0 if complete else partial + 1})

        return ReadPass(records(), complete=complete, finish=finish)

    def read_events(self, entity: str, events: Sequence[InboxEvent]) -> ReadPass | None:
        """Like a member with webhooks: the records the events about ``entity`` name (by
        ``record_id``), as the dataset holds them now; one it no longer holds is gone."""
        named = list(dict.fromkeys(e.record_id for e in events if e.record_id))
        self.dataset.calls.append(("events", entity, ",".join(named)))
        table = self.dataset.table(entity)
        gone = {native_id for native_id in named if native_id not in table}
        records = (
            NativeRecord(
                id=native_id,
                data=copy.deepcopy(table[native_id]),
                location=f"{self.name} {entity} {native_id}",
            )
            for native_id in named
            if native_id in table
        )
        return ReadPass(records, complete=False, finish=lambda: None, gone=lambda: gone, named=True)

    def get(self, entity: str, native_id: str) -> NativeRecord | None:
        self.dataset.calls.append(("get", entity, native_id))
        data = self.dataset.table(entity).get(native_id)
        if data is None:
            return None
        return NativeRecord(
            id=native_id, data=copy.deepcopy(data), location=f"{self.name} {entity} {native_id}"
        )

    def _maybe_fail(self, op: str, entity: str, ref: str) -> None:
        if self._fail is not None and self._fail(op, entity, ref):
            raise RetriableError(
                f"injected {op} failure for {ref}", connector=self.name, entity=entity
            )

    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        self._maybe_fail("create", entity, key)
        native_id = key if self.opts.assigns_ids else self.dataset.next_id()
        if native_id in self.dataset.table(entity):
            raise RecordError(
                f"{entity} {native_id} already exists; not overwritten", location=self.name
            )
        record = copy.deepcopy(data)
        if self.opts.stamp_updated_at:
            record["updated_at"] = self.dataset.now()
        self.dataset.table(entity)[native_id] = record
        return NativeRecord(id=native_id, data=copy.deepcopy(record))

    def update(
        self,
        entity: str,
        native_id: str,
        patch: NativeData,
        *,
        full: NativeData,
        new_id: str | None = None,
    ) -> NativeRecord | None:
        self._maybe_fail("update", entity, native_id)
        table = self.dataset.table(entity)
        if native_id not in table:
            raise NotFoundError(f"{entity} {native_id} not found", location=self.name)
        if new_id is not None and new_id != native_id and new_id in table:
            raise RecordError(
                f"cannot give {entity} {native_id} the id {new_id}: another record has it",
                location=self.name,
            )
        record = table[native_id]
        if self.opts.put_updates:
            record.clear()
            record.update(copy.deepcopy(full))
        else:
            record.update(copy.deepcopy(patch))
        if self.opts.stamp_updated_at:
            record["updated_at"] = self.dataset.now()
        if new_id is not None and new_id != native_id:
            table[new_id] = table.pop(native_id)
            native_id = new_id
        return NativeRecord(id=native_id, data=copy.deepcopy(record))

    def delete(self, entity: str, native_id: str) -> None:
        self._maybe_fail("delete", entity, native_id)
        self.dataset.table(entity).pop(native_id, None)


def _decode(token: str | None) -> tuple[str | None, int]:
    """(newest update time seen, partial passes since the last complete one) of a token;
    anything unreadable means "no mark" (a complete pass)."""
    try:
        data = json.loads(token) if token else None
    except ValueError:
        return None, 0
    if not isinstance(data, dict):
        return None, 0
    since, partial = data.get("since"), data.get("partial")
    if not isinstance(since, str) or not isinstance(partial, int) or isinstance(partial, bool):
        return None, 0
    return since, partial
