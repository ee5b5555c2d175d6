"""Deterministic hold points: a connector plugin that holds its process at its N-th call of a
method until the test lets it go.

It is the ``crashpoint`` wrapper of ``tests/crashpoints.py`` (a real connector, delegated to
call by call), except that at its point the process does not die: it writes a file ``held``
(JSON: where, and the process id) into the folder named by ``HOLD_DIR`` and waits until a
file ``release`` appears there. A test can so keep ``syncengine sync`` at an exact point of
its work (its lease held, its batch's intents journalled) while it runs other commands, then
let it finish. No sleeps hoping for an overlap::

    [connectors.hcp]
    type = "holdpoint"
    wraps = "housecallpro"          # the real connector's type and, below, its options
    base_url = "http://127.0.0.1:8123"

    SYNCENGINE_TEST_HOLD_AT="hcp:create:customers:2:before"   # as CRASH_AT
    SYNCENGINE_TEST_HOLD_DIR="/tmp/.../hold"

Like a ``crashpoint`` member, a ``holdpoint`` one needs its real type's mappings named
(``crashpoints.mapping_overrides``). ``plugin_env(folder)`` registers the plugin for
subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from syncengine.connector import ConnectorContext, ConnectorOptions
from tests.crashpoints import REPO_ROOT, CrashPoint, CrashpointConnector

TYPE = "holdpoint"
HOLD_AT = "SYNCENGINE_TEST_HOLD_AT"
HOLD_DIR = "SYNCENGINE_TEST_HOLD_DIR"
HOLD_LIMIT_S = 300.0
"""A process nobody releases gives up after this long (its call then fails loudly)."""


class _Calls:
    """Calls per (member, method, entity) in this process, across instances and threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], int] = {}

    def count(self, member: str, method: str, entity: str) -> int:
        with self._lock:
            n = self._seen.get((member, method, entity), 0) + 1
            self._seen[(member, method, entity)] = n
            return n


_CALLS = _Calls()


class HoldpointConnector(CrashpointConnector):
    """A real connector that holds its process at the point of ``HOLD_AT`` when that names
    this member (see the module docstring); never a crash point."""

    type_name: ClassVar[str] = TYPE

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        super().__init__(options, context)
        spec = os.environ.get(HOLD_AT, "")
        point = CrashPoint.parse(spec) if spec else None
        self.point = point if point is not None and point.member == context.name else None
        self.folder = Path(os.environ.get(HOLD_DIR, "."))

    def _enter(self, method: str, entity: str) -> int:
        point = self.point
        if point is None or point.method != method or point.entity not in ("*", entity):
            return 0
        n = _CALLS.count(self.name, method, point.entity)
        if n == point.n and point.when == "before":
            self._hold(point, entity)
        return n

    def _leave(self, n: int, entity: str, result_id: str | None = None) -> None:
        point = self.point
        if point is not None and n == point.n and point.when == "after":
            self._hold(point, entity)

    def _hold(self, point: CrashPoint, entity: str) -> None:
        """Say where (``held``), then wait for ``release``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        note = {"point": str(point), "entity": entity, "pid": os.getpid()}
        held = self.folder / "held"
        held.with_suffix(".tmp").write_text(json.dumps(note), encoding="utf-8")
        held.with_suffix(".tmp").replace(held)  # whole, or not there yet
        release = self.folder / "release"
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not release.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"hold point {point} was never released ({release})")
            time.sleep(0.02)


def plugin_env(folder: Path) -> dict[str, str]:
    """Register the ``holdpoint`` connector for processes started with the returned
    environment entries (a distribution's metadata in ``folder``, found on ``PYTHONPATH``)."""
    info = folder / "syncengine_test_holdpoints-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: syncengine-test-holdpoints\nVersion: 0\n",
        encoding="utf-8",
    )
    (info / "entry_points.txt").write_text(
        f"[syncengine.connectors]\n{TYPE} = {__name__}:HoldpointConnector\n",
        encoding="utf-8",
    )
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO_ROOT)])}


def start_held(
    argv: Sequence[str],
    *,
    at: str,
    hold: Path,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
) -> subprocess.Popen[str]:
    """Start ``argv`` (a ``syncengine`` command whose config has a ``holdpoint`` member) held
    at ``at`` (as ``CRASH_AT``), its hold files in ``hold``; return once it waits there.
    A process that ends first, or does not get there within ``timeout`` seconds, fails the
    test with what it printed. Let it go on with ``(hold / "release").touch()``. ``hold``
    must not hold the files of an earlier hold (the process would not wait)."""
    left = [f.name for f in (hold / "held", hold / "release") if f.exists()]
    assert not left, f"{hold} holds {left} from an earlier hold point: give each its own folder"
    proc = subprocess.Popen(
        list(argv),
        env={**env, HOLD_AT: at, HOLD_DIR: str(hold)},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not (hold / "held").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate(timeout=timeout)
            raise AssertionError(
                f"{' '.join(argv)} never reached its hold point {at}:\n{out}\n{err}"
            )
        time.sleep(0.02)
    return proc
