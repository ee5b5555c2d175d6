"""Deterministic crash points: a connector plugin that SIGKILLs its own process at its N-th call.

The crash tests used to kill ``syncengine sync`` from outside after a delay or when a file
changed, and had to skip (or fail) whenever the kill missed its window. Here the process kills
itself at an exact point of its work, so every crash test lands every time.

``crashpoint`` is a connector type (registered through the ``syncengine.connectors`` entry-point
group, like any plugin) that wraps a real connector and delegates every call to it::

    [connectors.hcp]
    type = "crashpoint"
    wraps = "housecallpro"          # the real connector's type
    base_url = "http://127.0.0.1:8123"
    api_key = "${HCP_API_KEY}"      # ... and the rest of the real connector's options

The engine looks mappings up by the configured type, so a pipeline member of this type names
the wrapped type's mapping files (``mapping_overrides()`` writes that table; ``crash_config()``
turns a whole config's connectors into wrapped ones). With no crash point set, a wrapped
member behaves exactly like the real one.

A killed run leaves its pipeline's lease behind until the lease expires: ``crash_config()``
makes it short (``LEASE_TTL``), a test waits that long after a kill, and runs a sync again
while ``pipeline_busy()`` says it found the dead run's lease (such a run reads and writes
nothing).

The crash point is given per process in the environment (``CRASH_AT``)::

    SYNCENGINE_TEST_CRASH_AT="hcp:create:customers:3:after"

``MEMBER:METHOD:ENTITY:N:WHEN``: the process is killed (``os.kill(os.getpid(), SIGKILL)``: no
cleanup, no ``finally``, no flush) at the ``N``-th call of ``METHOD`` on the member ``MEMBER``
for ``ENTITY`` (``*``: any entity), ``before`` the call is delegated or ``after`` it returned
(for ``read``, after its records were all read, by ``read`` or by ``read_incremental``).
``METHOD`` is one of ``METHODS``. Before it dies, the process appends one JSON line saying
where to the file named by ``CRASH_LOG`` (with the id of the record a create or update
returned), so a test knows what the dead run did.

``plugin_env(folder)`` registers the plugin for subprocesses: it writes a distribution's
metadata (a ``.dist-info`` folder with the entry point) into ``folder`` and returns the
``PYTHONPATH`` that makes both it and this module importable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict

from syncengine.connector import (
    Capabilities,
    Connector,
    ConnectorContext,
    ConnectorOptions,
    NativeData,
    NativeRecord,
    ReadPass,
    connector_class,
)
from syncengine.mapping import EntityMapping, default_mapping_path

TYPE = "crashpoint"
CRASH_AT = "SYNCENGINE_TEST_CRASH_AT"
CRASH_LOG = "SYNCENGINE_TEST_CRASH_LOG"
METHODS = (
    "read",
    "read_incremental",
    "get",
    "find",
    "prepare",
    "create",
    "update",
    "delete",
    "flush",
    "flushed",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CrashPoint:
    """Where a process kills itself: the ``n``-th call of ``method`` on ``member`` for
    ``entity`` (``*``: any), ``before`` or ``after`` it is delegated."""

    member: str
    method: str
    entity: str
    n: int
    when: str

    @classmethod
    def parse(cls, text: str) -> CrashPoint:
        """``MEMBER:METHOD:ENTITY:N:WHEN``; anything else is a ``ValueError`` (a test's typo
        must not pass as a run that simply did not crash)."""
        parts = text.split(":")
        if len(parts) != 5:
            raise ValueError(f"{CRASH_AT}={text!r}: expected MEMBER:METHOD:ENTITY:N:WHEN")
        member, method, entity, n, when = parts
        if method not in METHODS:
            raise ValueError(f"{CRASH_AT}={text!r}: method must be one of {', '.join(METHODS)}")
        if when not in ("before", "after") or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{CRASH_AT}={text!r}: N is 1 or more, WHEN before or after")
        return cls(member, method, entity, int(n), when)

    def __str__(self) -> str:
        return f"{self.member}:{self.method}:{self.entity}:{self.n}:{self.when}"


def crash_at(member: str, method: str, entity: str = "*", n: int = 1, when: str = "after") -> str:
    """The ``CRASH_AT`` value of a crash point (checked)."""
    return str(CrashPoint.parse(f"{member}:{method}:{entity}:{n}:{when}"))


class _Counter:
    """Calls per (member, method, entity) in this process, across connector instances and
    threads (the engine makes its connectors once per run, and writes from several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str, str], int] = {}

    def next(self, member: str, method: str, entity: str) -> int:
        with self._lock:
            key = (member, method, entity)
            self._calls[key] = self._calls.get(key, 0) + 1
            return self._calls[key]


_CALLS = _Counter()


def _die(point: CrashPoint, entity: str, result_id: str | None) -> None:
    """Say where (``CRASH_LOG``), then SIGKILL this process: nothing after this line runs."""
    log = os.environ.get(CRASH_LOG)
    if log:
        line = {
            "member": point.member,
            "method": point.method,
            "entity": entity,
            "call": point.n,
            "when": point.when,
            "result_id": result_id,
            "pid": os.getpid(),
        }
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
            out.flush()
            os.fsync(out.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


class CrashpointOptions(ConnectorOptions):
    """``wraps`` (the real connector's type) and, besides it, the real connector's options."""

    model_config = ConfigDict(extra="allow")

    type: str = TYPE
    wraps: str


class CrashpointConnector(Connector):
    """A real connector, delegated to call by call, that kills its process at the crash point
    of ``CRASH_AT`` when it names this member. See the module docstring."""

    type_name: ClassVar[str] = TYPE
    Options: ClassVar[type[ConnectorOptions]] = CrashpointOptions

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, CrashpointOptions)
        inner_cls = connector_class(options.wraps, f"connectors.{context.name}.wraps")
        inner_options = inner_cls.Options.model_validate(
            {**(options.model_extra or {}), "type": options.wraps}
        )
        self.inner = inner_cls(inner_options, context)
        # the engine reads these off the connector: they are the wrapped one's
        self.buffered_writes = inner_cls.buffered_writes  # type: ignore[misc]
        self.reads_json = inner_cls.reads_json  # type: ignore[misc]
        self.options = inner_options
        spec = os.environ.get(CRASH_AT, "")
        point = CrashPoint.parse(spec) if spec else None
        self.point = point if point is not None and point.member == context.name else None

    # -- the crash point
    def _enter(self, method: str, entity: str) -> int:
        """Count this call; die here when it is the crash point's and that is ``before``."""
        point = self.point
        if point is None or point.method != method or point.entity not in ("*", entity):
            return 0
        n = _CALLS.next(self.name, method, point.entity)
        if n == point.n and point.when == "before":
            _die(point, entity, None)
        return n

    def _leave(self, n: int, entity: str, result_id: str | None = None) -> None:
        """After the ``n``-th call returned: die when it is the crash point's."""
        point = self.point
        if point is not None and n == point.n and point.when == "after":
            _die(point, entity, result_id)

    # -- description (never a crash point)
    def entities(self) -> tuple[str, ...]:
        return self.inner.entities()

    def capabilities(self, entity: str) -> Capabilities:
        return self.inner.capabilities(entity)

    # -- reading
    def read(self, entity: str) -> Iterator[NativeRecord]:
        n = self._enter("read", entity)
        return self._read_then_leave(n, entity, self.inner.read(entity))

    def _read_then_leave(
        self, n: int, entity: str, records: Iterator[NativeRecord]
    ) -> Iterator[NativeRecord]:
        yield from records
        self._leave(n, entity)

    def read_incremental(self, entity: str, token: str | None) -> ReadPass | None:
        """Counted as a ``read_incremental`` call and, when the member reads that way, as a
        ``read`` too: a crash point ``read`` means "once the entity's records were read",
        however the member read them (a CSV file by its mark, a workbook whole)."""
        n = self._enter("read_incremental", entity)
        found = self.inner.read_incremental(entity, token)
        if found is None:
            self._leave(n, entity)
            return None
        inner = found
        m = self._enter("read", entity)
        records = self._read_then_leave(m, entity, inner.records)
        return ReadPass(  # the real pass in every respect but where the process dies
            self._read_then_leave(n, entity, records),
            complete=inner.complete,
            finish=inner.token,
            gone=inner.gone,
            named=inner.named,
            exact=inner.exact,
            settle=inner.settled_token,
        )

    def expect(self, entity: str, token: str | None) -> None:
        self.inner.expect(entity, token)

    def get(self, entity: str, native_id: str) -> NativeRecord | None:
        n = self._enter("get", entity)
        found = self.inner.get(entity, native_id)
        self._leave(n, entity, found.id if found is not None else None)
        return found

    def find(self, entity: str, data: NativeData) -> list[NativeRecord]:
        n = self._enter("find", entity)
        found = self.inner.find(entity, data)
        self._leave(n, entity, ",".join(r.id for r in found) or None)
        return found

    def prepare(self, entity: str, mapping: EntityMapping) -> None:
        n = self._enter("prepare", entity)
        self.inner.prepare(entity, mapping)
        self._leave(n, entity)

    # -- writing
    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        n = self._enter("create", entity)
        created = self.inner.create(entity, data, key=key)
        self._leave(n, entity, created.id)
        return created

    def update(
        self,
        entity: str,
        native_id: str,
        patch: NativeData,
        *,
        full: NativeData,
        new_id: str | None = None,
    ) -> NativeRecord | None:
        n = self._enter("update", entity)
        updated = self.inner.update(entity, native_id, patch, full=full, new_id=new_id)
        self._leave(n, entity, updated.id if updated is not None else native_id)
        return updated

    def delete(self, entity: str, native_id: str) -> None:
        n = self._enter("delete", entity)
        self.inner.delete(entity, native_id)
        self._leave(n, entity, native_id)

    def flush(self, entity: str) -> None:
        n = self._enter("flush", entity)
        self.inner.flush(entity)
        self._leave(n, entity)

    def buffers(self, entity: str) -> bool:
        return self.inner.buffers(entity)

    def flushed(self, entity: str, answered: NativeRecord) -> NativeRecord:
        # asked per buffered write as its key is committed, after the flush: a point between
        # two of the deferred commits
        n = self._enter("flushed", entity)
        found = self.inner.flushed(entity, answered)
        self._leave(n, entity, found.id)
        return found

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------------ for the tests


def plugin_env(folder: Path) -> dict[str, str]:
    """Register the ``crashpoint`` connector for processes started with the returned
    environment entries: an installed distribution's metadata in ``folder`` (found on
    ``PYTHONPATH`` like any installed package's), its entry point naming this module."""
    info = folder / "syncengine_test_crashpoints-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: syncengine-test-crashpoints\nVersion: 0\n",
        encoding="utf-8",
    )
    (info / "entry_points.txt").write_text(
        f"[syncengine.connectors]\n{TYPE} = {__name__}:CrashpointConnector\n",
        encoding="utf-8",
    )
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO_ROOT)])}


def mapping_overrides(members: dict[str, str], entities: list[str] | tuple[str, ...]) -> str:
    """The ``[pipelines.mappings]`` table giving each wrapped member (name -> wrapped type)
    the default mappings of its real type, for a pipeline's config."""
    lines = ["[pipelines.mappings]"]
    for member, wrapped in members.items():
        paths = ", ".join(
            f"{entity} = {json.dumps(str(default_mapping_path(wrapped, entity)))}"
            for entity in entities
        )
        lines.append(f"{member} = {{ {paths} }}")
    return "\n".join(lines) + "\n"


LEASE_TTL = 0.5
"""Seconds a pipeline's lease lasts in ``crash_config()`` (the least a config may give)."""


def crash_config(text: str) -> str:
    """``text`` (a config with one pipeline and no ``[daemon]`` table) with every connector
    wrapped in ``crashpoint``, the pipeline given its members' default mappings, and a short
    lease (``LEASE_TTL``)."""
    data = tomllib.loads(text)
    types = {name: table["type"] for name, table in data["connectors"].items()}
    (pipeline,) = data["pipelines"]
    out: list[str] = []
    table = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped.strip("[]").strip()
        typed = re.fullmatch(r'type\s*=\s*"([^"]+)"', stripped)
        if typed and table.removeprefix("connectors.") in types and table != "connectors":
            out += [f'type = "{TYPE}"', f'wraps = "{typed.group(1)}"']
        else:
            out.append(line)
    wrapped = "\n".join(out) + "\n\n" + mapping_overrides(types, pipeline["entities"])
    wrapped += f"\n[daemon]\nlease_ttl = {LEASE_TTL}\n"
    check = tomllib.loads(wrapped)
    assert all(t["type"] == TYPE for t in check["connectors"].values()), wrapped
    assert set(check["pipelines"][0]["mappings"]) == set(types), wrapped
    return wrapped


def pipeline_busy(returncode: int | None, stderr: str) -> bool:
    """A sync refused because another run (a killed one, until its lease expires) holds the
    pipeline's lease: exit 4 having read and written nothing."""
    return returncode == 4 and "is busy" in stderr


def crashes(log: Path) -> list[dict[str, Any]]:
    """The crash points that fired, one per killed process, from the ``CRASH_LOG`` file."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
