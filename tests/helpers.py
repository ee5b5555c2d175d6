"""Helpers for building configs and checking members in tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.memory import MemoryConnector, MemoryDataset
from syncengine.engine import SyncResult


def ds(name: str) -> MemoryDataset:
    """The memory member ``name``'s data."""
    return MemoryConnector.get_dataset(name)


def run(cfg: Config, **kwargs: Any) -> SyncResult:
    """One sync of the config's only pipeline."""
    return api.sync(cfg, **kwargs)[0]


def ops(result: SyncResult) -> list[tuple[str, str]]:
    """The run's planned (op, member) pairs, sorted."""
    return sorted((a.op, a.member) for a in result.plan.actions)


def write_config(tmp_path: Path, body: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def memory_config(
    tmp_path: Path,
    members: dict[str, dict[str, Any]],
    *,
    conflicts: dict[str, list[str]] | None = None,
    deletes: dict[str, Any] | None = None,
    state: str = "sqlite:///state.db",
    entities: tuple[str, ...] = ("customers",),
    locks: dict[str, str] | None = None,
    batch_size: int | None = None,
    member_entities: dict[str, list[str]] | None = None,
) -> Config:
    """A config with one pipeline "p" over memory members (options per member; ``locks``:
    member -> the first open day of its books; ``batch_size``: the pipeline's, if set;
    ``member_entities``: its ``[pipelines.member_entities]``)."""
    lines = [f'[state]\nurl = "{state}"\n']
    for name, options in members.items():
        lines.append(f"[connectors.{name}]\ntype = {_toml(options.get('type', 'memory'))}")
        for key, value in options.items():
            if key == "type":
                continue
            lines.append(f"{key} = {_toml(value)}")
        lines.append("")
    lines.append('[[pipelines]]\nname = "p"')
    lines.append(f"members = {_toml(list(members))}")
    lines.append(f"entities = {_toml(list(entities))}")
    if batch_size is not None:
        lines.append(f"batch_size = {batch_size}")
    lines.append("[pipelines.conflicts]")
    for scope, rules in (conflicts or {"default": [next(iter(members))]}).items():
        lines.append(f'"{scope}" = {_toml(rules)}')
    if deletes:
        lines.append("[pipelines.deletes]")
        for key, value in deletes.items():
            lines.append(f"{key} = {_toml(value)}")
    if locks:
        lines.append("[pipelines.locks]")
        for member, day in locks.items():
            lines.append(f"{member} = {_toml(day)}")
    if member_entities:
        lines.append("[pipelines.member_entities]")
        for member, names in member_entities.items():
            lines.append(f"{member} = {_toml(names)}")
    path = write_config(tmp_path, "\n".join(lines) + "\n")
    return load_config(path)


ACCOUNTING = ("customers", "invoices", "payments")


def hcp_books_config(
    tmp_path: Path, books: dict[str, Any] | None = None, *, locks: dict[str, str] | None = None
) -> Config:
    """A memory "hcp" standing for Housecall Pro (invoices created, never updated; payments
    read-only) and "books" (a memory member taking everything, or ``books``' options), over
    customers, invoices and payments (``locks``: as ``memory_config``'s)."""
    return memory_config(
        tmp_path,
        {
            "hcp": {"entities": list(ACCOUNTING), "only": {"invoices": ["create"], "payments": []}},
            "books": books or {"entities": list(ACCOUNTING)},
        },
        entities=ACCOUNTING,
        locks=locks,
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


class Drawn:
    """Stands for hypothesis's ``data`` when a state machine's rules are replayed by hand
    (a failing example kept as a regression test): each draw gives the next value the machine
    drew in that example."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def draw(self, _strategy: Any, label: str | None = None) -> Any:
        return self.values.pop(0)


def migrate_with_alembic(url: str) -> None:
    """Build a state store's schema through every migration, from nothing to the head, as a
    store made by an older syncengine was (``StateStore.open`` creates a new store at the head
    without them): for the tests of the migrations themselves."""
    from alembic import command

    from syncengine.state.store import alembic_config

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    finally:
        engine.dispose()
