"""The connector registry: entry points scanned once a process, and again for a type the last
scan did not see (a plugin installed while a daemon runs)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncengine import connector
from syncengine.connector import Connector, connector_class, connector_types
from syncengine.errors import ConfigError
from tests.helpers import memory_config


class LateConnector(connector.Connector):
    """Registered by the test below after the process has scanned the entry points."""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A folder on ``sys.path`` where a test installs a distribution's metadata."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        connector._registered.cache_clear()


def _install(site: Path, type_name: str) -> None:
    info = site / "syncengine_test_late-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: syncengine-test-late\nVersion: 0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[syncengine.connectors]\n{type_name} = {__name__}:LateConnector\n", encoding="utf-8"
    )


def test_a_plugin_installed_after_the_first_scan_is_found(site: Path) -> None:
    assert connector_class("memory", "members.a.type") is not None  # the scan is cached now
    with pytest.raises(ConfigError, match="unknown connector type 'late'"):
        connector_class("late", "members.b.type")
    _install(site, "late")
    assert connector_class("late", "members.b.type") is LateConnector
    assert "late" in connector_types()


def test_loading_configs_scans_the_entry_points_once(tmp_path: Path) -> None:
    connector._registered.cache_clear()
    for n in range(3):
        (tmp_path / str(n)).mkdir()
        memory_config(tmp_path / str(n), {"a": {}, "b": {}, "c": {}})
    assert connector._registered.cache_info().misses == 1
    assert issubclass(connector_class("memory", "x"), Connector)
