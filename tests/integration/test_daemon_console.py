"""The web console served by ``syncengine daemon --http`` beside ``/healthz`` and
``/metrics`` (issue 15), and its "Run now" in a daemon.

A real ``Daemon`` serving on loopback (uvicorn on a thread), a SQLite state file, real HTTP.
The console itself is another module's work: here a stand-in ``syncengine.console.app`` (a
trivial Starlette app with ``create_app(config_path, *, runner=None)``) is put in its place, so
that what is tested is the mount: when it happens, that the daemon's own routes stay the
daemon's, that the console's startup and shutdown run with the server, and that its runner
is the daemon's. The daemon's sync is a function that records each call and whether it was
an event-driven run.
"""

from __future__ import annotations

import contextlib
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from syncengine.api import open_store
from syncengine.config import Config, Pipeline, load_config
from syncengine.connector import Connector
from syncengine.daemon import Daemon
from syncengine.daemon.console import CONSOLE_MODULE, has_console_section
from syncengine.daemon.runner import event_driven
from syncengine.engine import SyncResult
from syncengine.plan import Plan
from syncengine.state import StateStore

pytestmark = pytest.mark.integration

CONFIG = """\
[state]
url = "sqlite:///{state}"

[daemon]
schedule = "every 24h"
webhook_debounce = 3600

[connectors.left]
type = "spreadsheet"
path = "left"

[connectors.right]
type = "spreadsheet"
path = "right"

[[pipelines]]
name = "left-right"
members = ["left", "right"]
entities = ["customers"]
"""
CONSOLE_TABLE = '\n[console]\nusers_file = "console-users.toml"\n'


@dataclass
class StandIn:
    """The stand-in console: what the daemon gave it, and whether its lifespan ran."""

    calls: list[tuple[Path, Any]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)

    def create_app(self, config_path: Path, *, runner: Any = None) -> Starlette:
        self.calls.append((Path(config_path), runner))

        def home(request: Request) -> Response:
            return PlainTextResponse("stand-in console")

        def run(request: Request) -> Response:
            return JSONResponse({"said": runner.run_now(request.path_params["pipeline"])})

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.started.set()
            yield
            self.stopped.set()

        return Starlette(
            routes=[
                Route("/", home),
                Route("/metrics", home),  # the daemon's own comes first
                Route("/run/{pipeline}", run, methods=["POST"]),
            ],
            lifespan=lifespan,
        )


@dataclass
class Syncs:
    """The daemon's sync: records each call as (pipeline, event-driven?)."""

    calls: list[tuple[str, bool]] = field(default_factory=list)
    called: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.release.set()

    def __call__(
        self,
        config: Config,
        store: StateStore,
        pipeline: Pipeline,
        stop: threading.Event,
        connectors: list[Connector],
    ) -> SyncResult:
        self.calls.append((pipeline.name, event_driven.get()))
        self.called.set()
        assert self.release.wait(30), "the test never let the run end"
        return SyncResult(pipeline.name, False, "", Plan(pipeline.name, False))


def write_config(folder: Path, *, console: bool) -> Path:
    for name in ("left", "right"):
        (folder / name).mkdir(exist_ok=True)
    text = CONFIG.replace("{state}", (folder / "state.db").as_posix())
    path = folder / "config.toml"
    path.write_text(text + (CONSOLE_TABLE if console else ""), encoding="utf-8")
    return path


@contextlib.contextmanager
def serving(path: Path, syncs: Syncs) -> Iterator[tuple[Daemon, str]]:
    config = load_config(path)
    store = open_store(config)
    daemon = Daemon(config, store, http=("127.0.0.1", 0), sync=syncs)
    daemon.start()
    try:
        assert daemon.http_address is not None
        yield daemon, f"http://127.0.0.1:{daemon.http_address.port}"
    finally:
        syncs.release.set()
        daemon.request_stop()
        daemon.shutdown()
        store.close()


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    fake = StandIn()
    module = types.ModuleType(CONSOLE_MODULE)
    module.create_app = fake.create_app  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, CONSOLE_MODULE, module)
    return fake


def wait_for(done: Any, timeout: float = 30.0) -> bool:
    """Poll ``done()`` until true or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def first_run_done(syncs: Syncs) -> None:
    """The daemon's first scheduled run (no run yet: due at once) has been called."""
    assert syncs.called.wait(30), "the first scheduled run never came"
    syncs.called.clear()


def test_the_console_is_served_at_the_root_beside_the_daemons_endpoints(
    tmp_path: Path, stand_in: StandIn
) -> None:
    syncs = Syncs()
    path = write_config(tmp_path, console=True)
    with serving(path, syncs) as (daemon, base):
        home = httpx.get(base + "/")
        health = httpx.get(base + "/healthz")
        metrics = httpx.get(base + "/metrics")
        webhook = httpx.post(base + "/webhooks/hcp/left", content=b"{}")
        assert stand_in.started.is_set() and not stand_in.stopped.is_set()

    assert home.status_code == 200 and home.text == "stand-in console"
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "syncengine_" in metrics.text  # the daemon's, not the console's route
    assert webhook.status_code == 404 and webhook.json() == {"error": "no such webhook"}
    [(config_path, runner)] = stand_in.calls
    assert config_path == path
    assert runner is daemon.console_runner
    assert stand_in.stopped.is_set(), "the console's shutdown did not run with the server's"


def test_without_a_console_table_there_is_no_console(tmp_path: Path, stand_in: StandIn) -> None:
    path = write_config(tmp_path, console=False)
    assert not has_console_section(path)
    with serving(path, Syncs()) as (_daemon, base):
        home = httpx.get(base + "/")
        health = httpx.get(base + "/healthz")

    assert home.status_code == 404 and home.json() == {"error": "not found"}
    assert health.status_code == 200
    assert stand_in.calls == []


def test_run_now_runs_a_complete_run_through_the_daemon(tmp_path: Path, stand_in: StandIn) -> None:
    syncs = Syncs()
    with serving(write_config(tmp_path, console=True), syncs) as (daemon, base):
        first_run_done(syncs)
        assert wait_for(lambda: daemon.running == [])

        said = httpx.post(base + "/run/left-right").json()["said"]

        assert said == "left-right starts now."
        assert syncs.called.wait(30), "Run now did not run the pipeline"
        assert syncs.calls[-1] == ("left-right", False)  # complete, not event-driven
        unknown = daemon.console_runner.run_now("nope")
    assert unknown == "There is no pipeline named 'nope' in the config."
    assert [c for c in syncs.calls if c[0] == "left-right"] == [("left-right", False)] * 2


def test_run_now_while_a_run_goes_on_runs_again_after_it(tmp_path: Path) -> None:
    syncs = Syncs()
    syncs.release.clear()  # the first scheduled run stays in progress
    with serving(write_config(tmp_path, console=False), syncs) as (daemon, _base):
        first_run_done(syncs)
        assert daemon.running == ["left-right"]

        said = daemon.console_runner.run_now("left-right")
        assert said == "left-right is running now; it runs again as soon as that run ends."
        assert not syncs.called.wait(0.3)  # never beside the run going on
        syncs.release.set()

        assert syncs.called.wait(30), "the asked run never came after the first one"
    assert syncs.calls == [("left-right", False), ("left-right", False)]


def test_run_now_of_a_paused_pipeline_runs_nothing_and_says_so(tmp_path: Path) -> None:
    syncs = Syncs()
    with serving(write_config(tmp_path, console=False), syncs) as (daemon, _base):
        first_run_done(syncs)
        with daemon.store.transaction() as tx:
            tx.pause_pipeline("left-right", "paused by a test")

        said = daemon.console_runner.run_now("left-right")

        assert said == "left-right is paused: resume it to run it."
        assert daemon.dispatch.due == {}
    assert syncs.calls == [("left-right", False)]
