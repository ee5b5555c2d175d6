"""The daemon in-process: failure policy, leases, --once, reload, shutdown, health and metrics.

Runs go through the real engine over memory members unless a test queues an exception for
the next run of a pipeline (``Script``); real processes and signals are in
``tests/integration/test_daemon.py``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from syncengine import api
from syncengine.config import Config, Pipeline, load_config
from syncengine.connector import Connector
from syncengine.connectors.memory import MemoryConnector
from syncengine.daemon import (
    Daemon,
    backoff_seconds,
    credentials_fingerprint,
    engine_sync,
    parse_http_address,
)
from syncengine.engine import SyncResult
from syncengine.errors import AuthError, RetriableError, StateError, SyncStopped
from syncengine.http import HttpClient
from syncengine.logging import configure
from syncengine.metrics import http_stats
from syncengine.state import StateStore

DAEMON = {
    "backoff_initial": "0.2",
    "backoff_max": "0.4",
    "lease_ttl": "5",
    "shutdown_grace": "5",
    "reload_poll": "0",
}


def write_config(
    folder: Path,
    *,
    daemon: str = "",
    key: str = "k1",
    p_schedule: str = "every 1h",
    q_schedule: str = "every 1h",
) -> Path:
    """Two pipelines over memory members; ``daemon`` lines override the [daemon] defaults."""
    settings = dict(DAEMON)
    for line in daemon.splitlines():
        name, _, value = line.partition("=")
        settings[name.strip()] = value.strip()
    path = folder / "config.toml"
    lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
    path.write_text(
        f"""
[state]
url = "sqlite:///state.db"

[daemon]
{lines}

[connectors.a]
type = "memory"
dataset = "a-{key}"  # stands for credentials: changing it changes the fingerprint

[connectors.b]
type = "memory"

[connectors.c]
type = "memory"

[[pipelines]]
name = "p"
members = ["a", "b"]
schedule = "{p_schedule}"

[[pipelines]]
name = "q"
members = ["b", "c"]
schedule = "{q_schedule}"
""",
        encoding="utf-8",
    )
    return path


class Script:
    """A SyncFn: the real engine, unless an exception is queued for the pipeline's next run."""

    def __init__(self) -> None:
        self.queued: dict[str, list[BaseException]] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def fail(self, pipeline: str, *errors: BaseException) -> None:
        with self.lock:
            self.queued.setdefault(pipeline, []).extend(errors)

    def __call__(
        self,
        config: Config,
        store: StateStore,
        pipeline: Pipeline,
        stop: threading.Event,
        connectors: list[Connector],
    ) -> SyncResult:
        with self.lock:
            self.calls.append(pipeline.name)
            queue = self.queued.get(pipeline.name) or []
            error = queue.pop(0) if queue else None
        if error is not None:
            raise error
        return engine_sync(config, store, pipeline, stop, connectors)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Config, StateStore, Script]]:
    config = load_config(write_config(tmp_path))
    store = api.open_store(config)
    yield config, store, Script()
    store.close()


def make(setup: tuple[Config, StateStore, Script], **options: Any) -> Daemon:
    config, store, script = setup
    return Daemon(config, store, sync=script, holder="me:1:aaaa", **options)


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# ------------------------------------------------------------------------- failure policy


def test_backoff_doubles_from_initial_up_to_the_maximum() -> None:
    no_jitter = [backoff_seconds(n, 30, 600, jitter=lambda: 0.0) for n in range(1, 8)]
    assert no_jitter == [30, 60, 120, 240, 480, 600, 600]
    assert backoff_seconds(1, 30, 600, jitter=lambda: 1.0) == 33
    assert backoff_seconds(10_000, 30, 600, jitter=lambda: 1.0) == 600


def test_a_failing_run_backs_off_then_recovers_by_itself(setup: Any) -> None:
    daemon = make(setup)
    _, store, script = setup
    script.fail("p", RetriableError("HTTP 500", connector="a"), RetriableError("HTTP 502"))
    first = daemon.run_pipeline("p")
    assert (first.outcome, first.exit_code) == ("failed", 4)  # the member could not be used
    assert "HTTP 500" in first.error
    state = store.pipeline_states()["p"]
    assert state.failures == 1 and state.backoff_until is not None
    assert daemon.run_pipeline("p").outcome == "skipped:backoff"
    assert daemon.run_pipeline("q").outcome == "ok"  # the other pipeline is not affected
    wait_for(lambda: daemon.run_pipeline("p").outcome == "failed")
    second = store.pipeline_states()["p"]
    assert second.failures == 2 and second.last_error is not None and "502" in second.last_error
    wait_for(lambda: daemon.run_pipeline("p").outcome == "ok")
    assert store.pipeline_states()["p"].failures == 0
    assert store.pipeline_states()["p"].backoff_until is None
    assert [r.outcome for r in store.runs("p")][:1] == ["ok"]
    assert (
        daemon.metrics.value("syncengine_runs_total", {"pipeline": "p", "outcome": "failed"}) == 2
    )
    assert (
        daemon.metrics.value(
            "syncengine_runs_skipped_total", {"pipeline": "p", "reason": "backoff"}
        )
        >= 1
    )


def test_refused_credentials_pause_the_pipeline_until_resumed(setup: Any, tmp_path: Path) -> None:
    daemon = make(setup)
    config, store, script = setup
    script.fail("p", AuthError("401 Unauthorized", connector="a"))
    out = daemon.run_pipeline("p")
    assert out.outcome == "failed" and out.exit_code == 4  # credentials refused
    state = store.pipeline_states()["p"]
    assert state.paused and state.paused_reason is not None
    assert "credentials refused" in state.paused_reason
    assert "syncengine resume -p p" in state.paused_reason
    assert state.paused_fingerprint == credentials_fingerprint(config, config.pipelines["p"])
    calls = len(script.calls)
    for _ in range(3):
        assert daemon.run_pipeline("p").outcome == "skipped:paused"
    assert len(script.calls) == calls, "a paused pipeline must not talk to the API"
    status = {s.name: s for s in api.status(config)}
    assert status["p"].paused is not None and status["p"].next_run is None
    assert "credentials refused" in status["p"].paused["reason"]
    assert status["q"].paused is None and status["q"].next_run is not None

    assert api.resume(config, "p") == ["p"]
    assert daemon.run_pipeline("p").outcome == "ok"

    # paused again; a restart with the same key keeps the pause, a new key lifts it
    script.fail("p", AuthError("401 Unauthorized"))
    daemon.run_pipeline("p")
    make(setup)._prepare()
    assert store.pipeline_states()["p"].paused
    new_key = load_config(write_config(tmp_path, key="k2"))
    Daemon(new_key, store, sync=script)._prepare()
    assert not store.pipeline_states()["p"].paused


def test_an_operator_pause_is_never_lifted_by_itself(setup: Any, tmp_path: Path) -> None:
    config, store, _ = setup
    api.pause(config, "q", "maintenance until Monday")
    Daemon(load_config(write_config(tmp_path, key="other")), store)._prepare()
    assert store.pipeline_states()["q"].paused_reason == "maintenance until Monday"
    assert make(setup).run_pipeline("q").outcome == "skipped:paused"


def test_a_lease_held_elsewhere_skips_the_run(setup: Any) -> None:
    _, store, script = setup
    with store.transaction() as tx:
        assert tx.acquire_lease("p", "other:2:bbbb", 30)
    out = make(setup).run_pipeline("p")
    assert out.outcome == "skipped:lease_held" and script.calls == []
    assert store.leases()["p"].holder == "other:2:bbbb"


def test_a_lost_lease_stops_the_run_in_flight(setup: Any) -> None:
    config, store, _ = setup
    seen: dict[str, bool] = {}

    def sync(
        config: Config,
        store: StateStore,
        pipeline: Pipeline,
        stop: threading.Event,
        connectors: list[Connector],
    ) -> SyncResult:
        with store.transaction() as tx:  # our lease expires and another daemon takes it
            tx.release_lease(pipeline.name, "me:1:aaaa")
            tx.acquire_lease(pipeline.name, "thief:3:cccc", 30)
        daemon.renew_leases()
        seen["stopped"] = stop.is_set()
        raise SyncStopped("stopped")

    daemon = Daemon(config, store, sync=sync, holder="me:1:aaaa")
    out = daemon.run_pipeline("p")
    assert seen == {"stopped": True} and out.outcome == "stopped"
    assert store.leases()["p"].holder == "thief:3:cccc"  # not released: not ours


def test_a_state_store_error_is_a_failure_like_any_other(setup: Any) -> None:
    _, store, script = setup
    script.fail("p", StateError("database is locked"))
    assert make(setup).run_pipeline("p").outcome == "failed"
    assert store.pipeline_states()["p"].failures == 1
    assert "p" not in store.leases()


def test_an_unexpected_exception_is_logged_and_backed_off(setup: Any) -> None:
    _, store, script = setup
    script.fail("p", ZeroDivisionError("bug"))
    out = make(setup).run_pipeline("p")
    assert out.outcome == "failed" and "ZeroDivisionError" in out.error
    assert store.pipeline_states()["p"].failures == 1


# ------------------------------------------------------------------------------- --once


def test_once_runs_what_is_due_and_returns_the_worst_exit_code(setup: Any) -> None:
    config, _, script = setup
    assert make(setup).run_once() == 0
    assert sorted(script.calls) == ["p", "q"]
    assert make(setup).run_once() == 0  # nothing due: both ran less than an hour ago
    assert sorted(script.calls) == ["p", "q"]
    assert not make(setup).due("p")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=61)
    assert make(setup).due("p", later)

    api.pause(config, "q")
    assert make(setup).run_once() == 1  # a paused pipeline makes cron hear about it
    assert sorted(script.calls) == ["p", "q"]


def test_once_gives_the_signals_back_and_leaves_no_thread(setup: Any) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    fd_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd_before)
    for _ in range(3):
        assert make(setup).run_once() == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _signal_threads():
        time.sleep(0.02)
    assert _signal_threads() == []
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert signal.set_wakeup_fd(fd_before) == fd_before


def _signal_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("signals")]


def test_once_runs_never_run_pipelines(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    store = api.open_store(config)
    try:
        script = Script()
        script.fail("q", AuthError("401"))
        assert Daemon(config, store, sync=script).run_once() == 4  # q refused the credentials
        assert store.pipeline_states()["q"].paused
        assert [r.outcome for r in store.runs("p")] == ["ok"]
    finally:
        store.close()


# ------------------------------------------------------------------------------- reload


def test_reload_keeps_the_old_config_when_the_new_one_is_invalid(
    setup: Any, tmp_path: Path
) -> None:
    daemon = make(setup)
    daemon.start()
    try:
        before = daemon.config
        path = before.path
        path.write_text(
            path.read_text().replace(
                'schedule = "every 1h"\n\n[[pipelines]]',
                'schedule = "every banana"\n\n[[pipelines]]',
            )
        )
        assert daemon.files_changed()
        assert not daemon.reload()
        assert daemon.config is before and not daemon.files_changed()
        assert daemon.metrics.value("syncengine_config_reloads_total", {"result": "rejected"}) == 1
        write_config(tmp_path, q_schedule="every 2h", p_schedule="0 3 * * *")
        assert daemon.files_changed() and daemon.reload()
        assert daemon.config is not before and daemon.config.schedule("q").interval_s == 7200
        when = daemon.next_run("p")
        assert when is not None and (when.hour, when.minute) == (3, 0)
    finally:
        assert daemon.shutdown()


# ------------------------------------------------------------------ shutdown, health, HTTP


def test_shutdown_stops_a_running_sync_and_releases_its_lease(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, store, _ = setup

    def exit_now(code: int) -> None:
        raise AssertionError(f"shutdown gave up on the running sync and exited {code}")

    monkeypatch.setattr("syncengine.daemon._flush_and_exit", exit_now)
    entered = threading.Event()

    def slow(
        config: Config,
        store: StateStore,
        pipeline: Pipeline,
        stop: threading.Event,
        connectors: list[Connector],
    ) -> SyncResult:
        if pipeline.name == "p":
            entered.set()
            assert stop.wait(10), "the stop event was never set"
            raise SyncStopped("stopped on request")
        return engine_sync(config, store, pipeline, stop, connectors)

    daemon = Daemon(config, store, sync=slow, holder="me:1:aaaa")
    daemon.start()
    assert entered.wait(10)
    wait_for(lambda: daemon.running == ["p"])  # q's run is quick
    assert store.leases()["p"].holder == "me:1:aaaa"
    assert daemon.shutdown()
    # no clock: a shutdown that did not set the stop event would end the run in slow()'s
    # failed assertion, counted as failed rather than stopped
    assert daemon.running == [] and "p" not in store.leases()
    assert (
        daemon.metrics.value("syncengine_runs_total", {"pipeline": "p", "outcome": "stopped"}) == 1
    )
    assert not daemon.health()[0]


def test_a_sync_that_outlives_the_grace_period_is_abandoned_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write_config(tmp_path, daemon="shutdown_grace = 0.3"))
    store = api.open_store(config)
    entered, release = threading.Event(), threading.Event()

    def stubborn(
        config: Config,
        store: StateStore,
        pipeline: Pipeline,
        stop: threading.Event,
        connectors: list[Connector],
    ) -> SyncResult:
        if pipeline.name == "p":
            entered.set()
            release.wait(10)  # a batch that takes longer than the grace period
            raise SyncStopped("stopped")
        return engine_sync(config, store, pipeline, stop, connectors)

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr("syncengine.daemon._flush_and_exit", exit_now)
    daemon = Daemon(config, store, sync=stubborn, holder="me:1:aaaa")
    daemon.start()
    try:
        assert entered.wait(10)
        with pytest.raises(SystemExit) as info:
            daemon.shutdown()
        assert info.value.code == 1
        assert "p" not in store.leases()  # released for the next daemon before exiting
    finally:
        release.set()
        wait_for(lambda: not daemon.running)
        store.close()


def test_health_and_metrics_over_http_while_one_pipeline_keeps_failing(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, p_schedule="every 1s", q_schedule="every 1s"))
    store = api.open_store(config)
    script = Script()
    script.fail("p", *[RetriableError("HTTP 500", connector="a") for _ in range(100)])
    daemon = Daemon(config, store, sync=script, http=("127.0.0.1", 0))
    daemon.start()
    try:
        assert daemon.http_address is not None
        base = f"http://127.0.0.1:{daemon.http_address[1]}"
        wait_for(lambda: script.calls.count("q") >= 3 and script.calls.count("p") >= 2)
        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["scheduler"] == "running"
        assert body["pipelines"]["q"]["last_success"] is not None
        assert body["pipelines"]["p"]["last_success"] is None
        assert body["pipelines"]["p"]["failures"] >= 1
        metrics = httpx.get(f"{base}/metrics")
        assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
        text = metrics.text
        assert 'syncengine_runs_total{outcome="ok",pipeline="q"}' in text
        assert 'syncengine_runs_total{outcome="failed",pipeline="p"}' in text
        assert "syncengine_run_duration_seconds_bucket" in text
        assert "syncengine_scheduler_up 1.0" in text
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        assert daemon.shutdown()
        store.close()
    assert daemon.health()[0] is False


def test_http_counters_are_collected_from_the_runs_connectors() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.path == "/flaky" else 200, json={})

    client = HttpClient(
        "http://x",
        transport=httpx.MockTransport(answer),
        max_retries=2,
        sleep=lambda s: None,
        name="hcp",
    )
    client.get_json("/ok")
    with pytest.raises(RetriableError):
        client.get_json("/flaky")
    conn = MemoryConnector.__new__(MemoryConnector)
    conn.name = "hcp"
    conn.http = client  # type: ignore[attr-defined]
    stats = http_stats([conn])
    assert stats == {"hcp": {"requests": 4.0, "retries": 2.0, "throttled": 0.0, "failures": 1.0}}


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("9464", ("127.0.0.1", 9464)),
        ("[::1]:80", ("::1", 80)),
        (":0", ("127.0.0.1", 0)),
    ],
)
def test_http_address(text: str, address: tuple[str, int]) -> None:
    assert parse_http_address(text) == address


def test_bad_http_address() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_http_address("localhost:http")


# --------------------------------------------------------------------------------- logs


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure("info", json_output=True, stream=buffer)
    yield buffer
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h).__name__ == "_StdlibBridge"]:
        root.removeHandler(handler)


def test_logs_are_one_json_object_per_line_with_the_pipeline_and_run(
    setup: Any, json_logs: io.StringIO
) -> None:
    MemoryConnector.get_dataset("a-k1").put(
        "customers", "a1", {"email": "x@example.com", "first_name": "X"}
    )
    out = make(setup).run_pipeline("p")
    assert out.outcome == "ok" and out.result is not None
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    run_lines = [line for line in lines if line.get("run_id")]
    assert {line["event"] for line in run_lines} >= {"planned", "run finished"}
    for line in run_lines:
        assert line["pipeline"] == "p" and line["run_id"] == out.result.run_id
        assert line["level"] and line["timestamp"]


def test_health_shows_a_pause_made_elsewhere_at_once(setup: Any) -> None:
    """``syncengine pause`` from another process is in ``/healthz`` before the daemon's next
    attempt at the pipeline (it showed ``paused: false`` until then)."""
    config, _store, _ = setup
    daemon = make(setup)
    assert daemon.health()[1]["pipelines"]["q"]["paused"] is False
    api.pause(config, "q", "maintenance")
    assert daemon.health()[1]["pipelines"]["q"]["paused"] is True


def test_a_state_file_deleted_under_the_daemon_fails_its_runs_by_name(
    setup: Any, tmp_path: Path
) -> None:
    """Its runs fail (exit 4) saying the file is gone and to restart, with no traceback, and
    nothing is synced: before, the lease taken in the deleted file let a ``sync`` using the
    new one run beside it."""
    _, store, script = setup
    daemon = make(setup)
    assert store.path is not None
    for part in ("", "-wal", "-shm"):
        Path(f"{store.path}{part}").unlink(missing_ok=True)
    out = daemon.run_pipeline("p")
    assert out.outcome == "failed" and out.exit_code == 4
    assert "was deleted while this process used it" in out.error
    assert script.calls == []


def test_a_daemon_whose_state_file_is_deleted_stops_with_exit_4(tmp_path: Path) -> None:
    """It would write nothing more into the deleted file, and fail every run: it stops so
    that its service manager starts it again on the file there now. The file is deleted by
    the first run, as a person would meanwhile."""
    config = load_config(write_config(tmp_path, daemon="reload_poll = 0.1"))
    store = api.open_store(config)
    assert store.path is not None
    path = store.path

    def deleting(*args: Any) -> SyncResult:
        result = engine_sync(*args)
        for part in ("", "-wal", "-shm"):
            Path(f"{path}{part}").unlink(missing_ok=True)
        return result

    try:
        code = Daemon(config, store, sync=deleting, holder="me:1:aaaa").serve()
    finally:
        store.close()
    assert code == 4
    assert not path.exists()  # nothing wrote the file again
