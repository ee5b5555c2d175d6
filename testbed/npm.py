"""The npm tools the tests and benchmarks run: finding them, and installing them when missing.

A tool is looked for on ``PATH``, in ``<repo>/.ci/node`` (where ``.ci/run`` installs it) and in
``<repo>/.cache/node``; the first that runs and whose ``--version`` the tool accepts is used.
When none is found, ``ensure_tool`` installs it with npm into ``<repo>/.cache/node``. Several
pytest-xdist workers may call it at once: the install runs under a file lock, so only one of
them installs and the others wait and reuse it. What cannot be found nor installed raises
:class:`~testbed.ToolUnavailable` with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from testbed import CACHE_DIR, REPO_ROOT, ToolUnavailable

NPM_INSTALL_TIMEOUT = 600.0
NODE_PREFIXES = (REPO_ROOT / ".ci" / "node", CACHE_DIR / "node")
"""Where npm tools are installed: by ``.ci/run`` (CI), and by ``ensure_tool``."""


@dataclass(frozen=True)
class NpmTool:
    """An executable an npm package provides, and the versions of it that will do."""

    name: str
    """Its executable, as in ``node_modules/.bin``."""
    package: str
    """What ``npm install`` is given (``json-server@0.17.4``)."""
    accepts: Callable[[str], bool]
    """Whether what ``NAME --version`` prints is a version that will do."""
    label: str
    """How messages name it."""


PRISM = NpmTool(
    name="prism",
    package="@stoplight/prism-cli@5",
    accepts=lambda version: version.split(".", 1)[0] == "5",  # the flags the tests use
    label="Prism",
)
JSON_SERVER_VERSION = "0.17.4"
JSON_SERVER = NpmTool(
    name="json-server",
    package=f"json-server@{JSON_SERVER_VERSION}",
    accepts=lambda version: version == JSON_SERVER_VERSION,
    label=f"json-server {JSON_SERVER_VERSION}",
)


def executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def candidates(tool: NpmTool) -> list[Path]:
    """Where ``tool`` may be, in the order it is looked for."""
    found: list[Path] = []
    on_path = shutil.which(tool.name)
    if on_path:
        found.append(Path(on_path))
    found.extend(base / "node_modules" / ".bin" / tool.name for base in NODE_PREFIXES)
    return found


def tool_version(binary: str) -> str | None:
    """What ``BINARY --version`` prints, or None when it does not run."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def find_tool(tool: NpmTool) -> str | None:
    """The first ``tool`` found that runs and is a version it accepts; None when none is."""
    for candidate in candidates(tool):
        if not executable(candidate):
            continue
        version = tool_version(str(candidate))
        if version is not None and tool.accepts(version):
            return str(candidate)
    return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def npm_install(tool: NpmTool) -> str:
    """Install ``tool`` into ``<repo>/.cache/node``; its path, or ToolUnavailable saying why."""
    npm = shutil.which("npm")
    if npm is None:
        raise ToolUnavailable("npm is not on PATH (install Node.js and npm)")
    prefix = CACHE_DIR / "node"
    command = [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(prefix)]
    try:
        done = subprocess.run(
            [*command, tool.package],
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolUnavailable(
            f"npm install {tool.package} took more than {NPM_INSTALL_TIMEOUT:.0f}s"
        ) from None
    except OSError as exc:
        raise ToolUnavailable(f"cannot run npm: {exc}") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise ToolUnavailable(
            f"npm install {tool.package} failed with exit code {done.returncode}: {output}"
        )
    binary = prefix / "node_modules" / ".bin" / tool.name
    version = tool_version(str(binary)) if executable(binary) else None
    if version is None or not tool.accepts(version):
        raise ToolUnavailable(f"npm install {tool.package} finished but {binary} does not run")
    return str(binary)


def ensure_tool(tool: NpmTool) -> str:
    """The path of a working ``tool``, installed with npm when none is found.

    Raises :class:`~testbed.ToolUnavailable` (``"LABEL is not installed and npm could not
    install it: WHY"``) when it can be neither found nor installed.
    """
    found = find_tool(tool)
    if found is not None:
        return found
    with file_lock(CACHE_DIR / "node.lock"):
        found = find_tool(tool)  # another worker may have installed it while we waited
        if found is not None:
            return found
        try:
            return npm_install(tool)
        except ToolUnavailable as exc:
            reason = str(exc)
    raise ToolUnavailable(f"{tool.label} is not installed and npm could not install it: {reason}")
