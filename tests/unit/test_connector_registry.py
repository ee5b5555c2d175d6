"""The connector registry: entry points read once a process, and read again where they give
no class (a plugin installed, reinstalled or fixed while a daemon runs)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoints
from pathlib import Path
from typing import Any

import pytest

from syncengine import connector
from syncengine.connector import Connector, connector_class, connector_types
from syncengine.errors import ConfigError
from tests.helpers import memory_config


class LateConnector(Connector):
    """Registered by the tests below after the process has read the entry points."""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A folder on ``sys.path`` where a test installs a distribution's metadata."""
    folder = tmp_path / "site"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        connector._rescan()


def _install(site: Path, type_name: str, target: str) -> None:
    info = site / "syncengine_test_late-0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: syncengine-test-late\nVersion: 0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[syncengine.connectors]\n{type_name} = {__name__}:{target}\n", encoding="utf-8"
    )


def test_a_plugin_installed_after_the_first_read_is_found(site: Path) -> None:
    assert issubclass(connector_class("memory", "members.a.type"), Connector)  # read now
    with pytest.raises(ConfigError, match="unknown connector type 'late'"):
        connector_class("late", "members.b.type")
    _install(site, "late", "LateConnector")
    assert connector_class("late", "members.b.type") is LateConnector
    assert "late" in connector_types()


def test_a_plugin_fixed_after_a_failed_load_is_found(site: Path) -> None:
    _install(site, "late", "NoSuchClass")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        connector_class("late", "members.b.type")
    _install(site, "late", "LateConnector")  # reinstalled, fixed
    assert connector_class("late", "members.b.type") is LateConnector


def test_loading_configs_reads_the_entry_points_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = connector.entry_points

    def counted(**selection: Any) -> EntryPoints:
        reads.append(str(selection))
        return real(**selection)

    monkeypatch.setattr(connector, "entry_points", counted)
    connector._rescan()
    for n in range(3):
        (tmp_path / str(n)).mkdir()
        memory_config(tmp_path / str(n), {"a": {}, "b": {}, "c": {}})
    assert len(reads) == 1, reads
