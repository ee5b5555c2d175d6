"""The web console beside the daemon's ``/healthz`` and ``/metrics`` (issue 15).

``console_app`` decides whether a serving daemon serves the console: only when the config
file has a ``[console]`` table and the console (``syncengine.console.app``) is installed. The
console is imported only then, so a daemon without it never loads its dependencies.

``DaemonRunner`` is what the console's "Run now" does in a daemon: the pipeline is made due
at once in the daemon's dispatcher (``dispatch.py``), which runs it on its own threads under
every rule of a scheduled run (its lease, never beside another run of it, not while paused
or backing off).
"""

from __future__ import annotations

import datetime as dt
import importlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from syncengine.config import Config
from syncengine.daemon.dispatch import EventDispatch
from syncengine.daemon.policy import skip_reason
from syncengine.state import StateStore

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["CONSOLE_MODULE", "DaemonRunner", "console_app", "has_console_section"]

CONSOLE_MODULE = "syncengine.console.app"


class DaemonRunner:
    """The console's ``ConsoleRunner`` (``run_now(pipeline) -> str``) in a serving daemon
    (see the module docstring)."""

    def __init__(
        self,
        config: Callable[[], Config],
        store: StateStore,
        dispatch: EventDispatch,
        running: Callable[[], list[str]],
    ) -> None:
        self._config = config
        self.store = store
        self.dispatch = dispatch
        self._running = running

    def run_now(self, pipeline: str) -> str:
        """Make ``pipeline`` due now; the sentence says when it will run, or why it will
        not (unknown, paused, backing off)."""
        if pipeline not in self._config().pipelines:
            return f"There is no pipeline named {pipeline!r} in the config."
        state = self.store.pipeline_states().get(pipeline)
        reason = skip_reason(state, dt.datetime.now(dt.UTC))
        if reason == "paused":
            return f"{pipeline} is paused: resume it to run it."
        if reason is not None and state is not None and state.backoff_until is not None:
            until = state.backoff_until.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            return f"{pipeline} is backing off after failures until {until}; it runs then."
        self.dispatch.run_now(pipeline)
        if pipeline in self._running():
            return f"{pipeline} is running now; it runs again as soon as that run ends."
        return f"{pipeline} starts now."


def has_console_section(path: Path) -> bool:
    """Whether the config file has a ``[console]`` table (``Config.console`` is there either
    way, with its defaults). A file that cannot be read again has none."""
    try:
        return isinstance(tomllib.loads(path.read_text(encoding="utf-8")).get("console"), dict)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def console_app(config: Config, runner: DaemonRunner) -> Starlette | None:
    """The console to serve beside the daemon's endpoints: None when the config has no
    ``[console]`` section or the console is not installed."""
    if not has_console_section(config.path):
        return None
    try:
        module = importlib.import_module(CONSOLE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is not None and CONSOLE_MODULE.startswith(exc.name):
            return None  # not installed; any other missing module is a real error
        raise
    app: Starlette = module.create_app(config.path, runner=runner)
    return app
