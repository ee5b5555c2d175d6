"""``syncengine daemon`` as real processes: schedules, edits, signals, leases, failures, reload.

Every test runs the daemon as the console script in its own process group, its JSON log on
stderr in a file, against the HCP sandbox (a real server process on loopback) and CSV
spreadsheets in ``tmp_path``. Run history is read straight from the state store.

- two pipelines on one-second schedules keep two sheets and the sandbox in step; SIGTERM
  while a sync is creating records exits 0 with the run recorded as ``stopped``, and the
  next daemon finishes the job with no duplicate and no lost edit; a second SIGTERM exits at
  once (128 + 15) and the daemon after it still finishes with no duplicate;
- two daemons on one state store (SQLite file, PostgreSQL database) never run one pipeline
  at the same time (checked from the run history), and SIGKILL of the one holding a lease
  hands the pipeline to the other once the lease has expired;
- an API answering 500 makes its pipeline back off and recover while the other pipeline
  keeps running; a 401 pauses it (``status`` says so, no more requests) until ``resume``;
- an invalid config edit is rejected and logged while the old config keeps syncing;
- a daemon started on cron schedules (a pipeline's own, the ``[daemon]`` default, in the
  ``[daemon]`` time zone) says when each runs next in its log, ``/healthz`` and ``status``,
  and stops cleanly on SIGTERM;
- ``--once`` runs what is due and exits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from syncengine import api
from syncengine.config import load_config
from syncengine.state import RunRow, StateStore
from testbed.processes import ServerProcess
from testbed.sandbox import start_sandbox as start_sandbox_process
from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import cli_env

pytestmark = pytest.mark.integration

API_KEY = "daemon-test-key"
SYNCENGINE = Path(sys.executable).with_name("syncengine")


# ------------------------------------------------------------------------------ helpers


def wait_until(
    check: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "",
    on_fail: Callable[[], str] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_fail() if on_fail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(0.05)


def start_sandbox(*, seed: int, latency_ms: int = 0) -> ServerProcess:
    return start_sandbox_process(api_key=API_KEY, seed=seed, latency_ms=latency_ms, timeout=60)


class Hcp:
    """The sandbox's API as a person in the HCP app would use it, and its request log."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=15, headers={"Authorization": f"Token {API_KEY}"}
        )

    def customers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in itertools.count(1):
            body = (
                self.http.get("/customers", params={"page": page, "page_size": 200})
                .raise_for_status()
                .json()
            )
            out += body["customers"]
            if page >= body["total_pages"]:
                return out

    def by_email(self, email: str) -> list[dict[str, Any]]:
        return [c for c in self.customers() if (c.get("email") or "").lower() == email]

    def put(self, customer_id: str, body: dict[str, Any]) -> None:
        self.http.put(f"/customers/{customer_id}", json=body).raise_for_status()

    def posts(self) -> int:
        log = self.http.get("/_sandbox/requests").raise_for_status().json()["requests"]
        return sum(1 for r in log if r["method"] == "POST")

    def close(self) -> None:
        self.http.close()


class DaemonProcess:
    """``syncengine daemon`` in its own process group, its stderr (JSON lines) in a file."""

    def __init__(self, config: Path, *extra: str, http: bool = True) -> None:
        handle, name = tempfile.mkstemp(prefix="daemon-", suffix=".log")
        self.log_path = Path(name)
        args = [
            str(SYNCENGINE),
            "daemon",
            "--config",
            str(config),
            "--log-level",
            "info",
            *(["--http", "127.0.0.1:0"] if http else []),
            *extra,
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            env=cli_env(API_KEY),
            cwd=config.parent,
            start_new_session=True,
        )
        os.close(handle)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        return out

    def wait_event(self, event: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) while "
                    f"waiting for {event!r}:\n{self.text()[-4000:]}"
                )
            for item in self.events():
                if item.get("event") == event and all(item.get(k) == v for k, v in fields.items()):
                    return item
            return None

        result: dict[str, Any] = wait_until(
            found, timeout, f"log event {event!r} {fields}", lambda: self.text()[-4000:]
        )
        return result

    @property
    def url(self) -> str:
        return str(self.wait_event("http listening")["url"])

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {timeout}s:\n{self.text()[-4000:]}"
            ) from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config: Path, *extra: str, http: bool = True) -> DaemonProcess:
        process = DaemonProcess(config, *extra, http=http)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def history(folder: Path, url: str, pipeline: str | None = None) -> list[RunRow]:
    """Every run of the pipeline, oldest first."""
    with StateStore.open(url, base_dir=str(folder)) as store:
        return list(reversed(store.runs(pipeline, limit=10_000)))


def assert_no_overlap(runs: list[RunRow], ended: dict[int, float] | None = None) -> None:
    """No run of a pipeline started before the previous one ended (an unfinished run ends
    when ``ended`` says, e.g. when its process was killed)."""
    ended = ended or {}
    for pipeline in {r.pipeline for r in runs}:
        mine = sorted((r for r in runs if r.pipeline == pipeline), key=lambda r: r.started_at)
        for before, after in itertools.pairwise(mine):
            end = (
                before.finished_at.timestamp()
                if before.finished_at
                else ended.get(before.id, float("inf"))
            )
            assert end <= after.started_at.timestamp(), (
                f"{pipeline}: run {after.id} started at {after.started_at} before run "
                f"{before.id} ({before.started_at} .. {before.finished_at}) ended"
            )


DAEMON_DEFAULTS = {
    "lease_ttl": 5,
    "shutdown_grace": 20,
    "backoff_initial": 0.5,
    "backoff_max": 2,
    "reload_poll": 0.5,
}


def config_text(
    *, state: str, hcp: str, flaky: str | None = None, daemon: dict[str, float] | None = None
) -> str:
    b_hcp = "hcp_flaky" if flaky else "hcp"
    settings = "\n".join(f"{k} = {v}" for k, v in {**DAEMON_DEFAULTS, **(daemon or {})}.items())
    flaky_table = (
        f"""
[connectors.hcp_flaky]
type = "housecallpro"
base_url = "{flaky}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 0
timeout = 5
"""
        if flaky
        else ""
    )
    return f"""\
[state]
url = "{state}"

[daemon]
{settings}

[connectors.hcp]
type = "housecallpro"
base_url = "{hcp}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 1
timeout = 10
{flaky_table}
[connectors.books_a]
type = "spreadsheet"
path = "books_a"

[connectors.books_b]
type = "spreadsheet"
path = "books_b"

[[pipelines]]
name = "a"
members = ["hcp", "books_a"]
schedule = "every 1s"
batch_size = 5
[pipelines.conflicts]
default = ["hcp"]

[[pipelines]]
name = "b"
members = ["{b_hcp}", "books_b"]
schedule = "every 1s"
batch_size = 5
[pipelines.conflicts]
default = ["{b_hcp}"]
"""


def sheet(folder: Path, name: str) -> list[dict[str, str]]:
    path = folder / name / "customers.csv"
    return read_csv(path) if path.exists() else []


def replace_sheet(folder: Path, name: str, rows: list[dict[str, str]]) -> None:
    """Write the sheet the way an editor saving a file does: a new file moved into place."""
    write_csv(folder / name / "customers.csv", rows, replace=True)


def emails(rows: list[dict[str, str]]) -> list[str]:
    return [r["Email"].strip().lower() for r in rows if r.get("Email", "").strip()]


# ------------------------------------------------------------- edits, SIGTERM, resuming


NEW_ROWS = 60
"""Rows added to a sheet while a daemon runs, to stop it mid-sync: 12 batches of 5."""


def test_daemon_keeps_two_pipelines_in_step_and_stops_cleanly_mid_sync(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    seeded = 10
    box = start_sandbox(seed=seeded, latency_ms=30)
    hcp = Hcp(box.url)
    state = "sqlite:///state.db"
    config = tmp_path / "config.toml"
    config.write_text(config_text(state=state, hcp=box.url), encoding="utf-8")
    try:
        first = daemons(config)

        def converged(count: int) -> bool:
            a, b = sheet(tmp_path, "books_a"), sheet(tmp_path, "books_b")
            return (
                len(a) == len(b) == count
                and all(r["Sync ID"] for r in a + b)
                and len(hcp.customers()) == count
            )

        wait_until(lambda: converged(seeded), 45, "the first syncs", first.text)

        # an edit in sheet A reaches HCP and, through pipeline b, sheet B
        rows = sheet(tmp_path, "books_a")
        target = next(r for r in rows if r["Email"])
        target["Company"] = "Edited In Sheet A"
        replace_sheet(tmp_path, "books_a", rows)
        email = target["Email"].lower()

        def company_everywhere(email: str, value: str) -> bool:
            sheets = [
                r
                for n in ("books_a", "books_b")
                for r in sheet(tmp_path, n)
                if r["Email"].lower() == email
            ]
            return (
                len(sheets) == 2
                and all(r["Company"] == value for r in sheets)
                and [c.get("company") for c in hcp.by_email(email)] == [value]
            )

        wait_until(
            lambda: company_everywhere(email, "Edited In Sheet A"),
            30,
            "the sheet edit to propagate",
            first.text,
        )

        # an edit in HCP reaches both sheets
        other = next(c for c in hcp.customers() if c.get("email") and c["email"].lower() != email)
        hcp.put(other["id"], {"last_name": "Edited-In-HCP"})

        def last_name_in_sheets(email: str, value: str) -> bool:
            found = [
                r["Last Name"]
                for n in ("books_a", "books_b")
                for r in sheet(tmp_path, n)
                if r["Email"].lower() == email
            ]
            return found == [value, value]

        wait_until(
            lambda: last_name_in_sheets(other["email"].lower(), "Edited-In-HCP"),
            30,
            "the HCP edit to propagate",
            first.text,
        )

        # health and metrics while it runs
        health = httpx.get(f"{first.url}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        assert set(health.json()["pipelines"]) == {"a", "b"}
        assert health.json()["pipelines"]["a"]["last_success"] is not None
        metrics = httpx.get(f"{first.url}/metrics", timeout=10).text
        assert 'syncengine_runs_total{outcome="ok",pipeline="a"}' in metrics
        assert 'syncengine_http_requests_total{connector="hcp",pipeline="b"}' in metrics
        assert 'syncengine_actions_total{entity="customers",member="hcp",op="update"' in metrics

        # 60 new rows in sheet A (12 batches): the daemon creates them in HCP; SIGTERM while
        # it does (the window is wide enough for a loaded machine to land the signal in it)
        rows = sheet(tmp_path, "books_a")
        new = [
            {
                **dict.fromkeys(rows[0], ""),
                "First Name": f"New{i}",
                "Last Name": "Row",
                "Email": f"new{i}@daemon.test",
            }
            for i in range(NEW_ROWS)
        ]
        posts_before = hcp.posts()
        replace_sheet(tmp_path, "books_a", rows + new)
        wait_until(lambda: hcp.posts() >= posts_before + 3, 30, "the creates to start", first.text)
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.text()[-4000:]
        log = first.text()
        assert "Traceback" not in log
        events = first.events()
        assert any(
            e["event"] == "signal received: finishing running syncs, then exiting" for e in events
        )
        assert events[-1]["event"] == "daemon stopped"
        outcomes = [r.outcome for r in history(tmp_path, state, "a")]
        assert "stopped" in outcomes, outcomes
        assert len(hcp.customers()) < seeded + NEW_ROWS, "the stop came too late to test anything"

        # every line is one JSON object; the lines of a run carry its pipeline and run id
        lines = [line for line in log.splitlines() if line.strip()]
        parsed = [json.loads(line) for line in lines]
        assert all(isinstance(p, dict) and "event" in p and "level" in p for p in parsed)
        assert all(p.get("pipeline") in ("a", "b") for p in parsed if p.get("run_id"))

        # edits while no daemon runs
        rows_b = sheet(tmp_path, "books_b")
        down = next(
            r
            for r in rows_b
            if r["Email"] and r["Email"].lower() not in (email, other["email"].lower())
        )
        down["Company"] = "Edited While Down"
        replace_sheet(tmp_path, "books_b", rows_b)

        second = daemons(config)
        wait_until(
            lambda: converged(seeded + NEW_ROWS), 60, "the restarted daemon to finish", second.text
        )
        wait_until(
            lambda: company_everywhere(down["Email"].lower(), "Edited While Down"),
            30,
            "the edit made while down",
            second.text,
        )
        hcp_emails = [c["email"].lower() for c in hcp.customers() if c.get("email")]
        assert len(hcp_emails) == len(set(hcp_emails)), "a customer was created twice"
        assert {f"new{i}@daemon.test" for i in range(NEW_ROWS)} <= set(hcp_emails)
        for name in ("books_a", "books_b"):
            got = emails(sheet(tmp_path, name))
            assert len(got) == len(set(got)), f"a row was copied twice in {name}"
        assert company_everywhere(email, "Edited In Sheet A")
        assert last_name_in_sheets(other["email"].lower(), "Edited-In-HCP")

        # a second signal exits at once, mid-sync; the journal lets the next daemon finish
        rows = sheet(tmp_path, "books_a")
        more = [
            {
                **dict.fromkeys(rows[0], ""),
                "First Name": f"More{i}",
                "Last Name": "Row",
                "Email": f"more{i}@daemon.test",
            }
            for i in range(NEW_ROWS)
        ]
        posts_before = hcp.posts()
        replace_sheet(tmp_path, "books_a", rows + more)
        wait_until(lambda: hcp.posts() >= posts_before + 3, 30, "the creates to start", second.text)
        second.signal(signal.SIGTERM)
        second.wait_event("signal received: finishing running syncs, then exiting", 10)
        second.signal(signal.SIGTERM)
        assert second.wait(10) == 128 + signal.SIGTERM, second.text()[-4000:]
        forced_at = time.time()
        # at once, not after the running syncs: no clock, the log says which way it went
        events = second.events()
        names = [e["event"] for e in events]
        assert "second signal: exiting at once" in names, names[-10:]
        # a run the first signal asked to stop may log its end while the leases are released
        # (its "run finished" has no run_id: the run ended in SyncStopped, like the daemon's
        # own lines before), but no run starts after the second signal, and the daemon does
        # not go on to stop gracefully
        forced = names.index("second signal: exiting at once")
        runs_before = {e.get("run_id") for e in events[:forced]}
        after = events[forced + 1 :]
        assert all(e.get("run_id") in runs_before for e in after), after
        assert "daemon stopped" not in names[forced:], after

        third = daemons(config)
        wait_until(
            lambda: converged(seeded + 2 * NEW_ROWS),
            60,
            "the daemon after the forced exit",
            third.text,
        )
        hcp_emails = [c["email"].lower() for c in hcp.customers() if c.get("email")]
        assert len(hcp_emails) == len(set(hcp_emails)), "a customer was created twice"
        for name in ("books_a", "books_b"):
            got = emails(sheet(tmp_path, name))
            assert len(got) == len(set(got)), f"a row was copied twice in {name}"
        third.signal(signal.SIGTERM)
        assert third.wait(30) == 0, third.text()[-4000:]
        runs = history(tmp_path, state)
        assert_no_overlap(runs, {r.id: forced_at for r in runs if r.finished_at is None})
    finally:
        hcp.close()
        box.stop()


# ------------------------------------------------------------------ two daemons, one store


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_daemons_never_run_one_pipeline_at_once_and_take_over_a_killed_one(
    backend: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
    request: pytest.FixtureRequest,
) -> None:
    state = "sqlite:///state.db" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    box = start_sandbox(seed=6, latency_ms=40)
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(state=state, hcp=box.url, daemon={"lease_ttl": 2}), encoding="utf-8"
    )
    try:
        one, two = daemons(config, http=False), daemons(config, http=False)

        def ten_runs() -> bool:
            for d in (one, two):
                assert d.proc.poll() is None, d.text()[-4000:]
            return len(history(tmp_path, state)) >= 10

        wait_until(ten_runs, 45, "ten runs", lambda: one.text()[-2000:] + two.text()[-2000:])

        # kill whichever daemon holds a lease right now, while its sync runs. A sync can end
        # and give its lease up in the instant between reading the lease and the kill; the
        # lease row read after the kill tells (a dead process writes nothing more): still the
        # victim's means it was held when it died, and its expiry is final. Otherwise the
        # killed daemon is replaced and another lease is picked, so the case is always tested.
        unfinished: dict[int, float] = {}
        for _attempt in range(5):
            with StateStore.open(state, base_dir=str(tmp_path)) as store:
                alive = {one.pid, two.pid}

                def active_lease(alive: set[int] = alive) -> tuple[str, str] | None:
                    now = time.time()
                    for lease in store.leases().values():
                        if (
                            lease.expires_at.timestamp() > now
                            and int(lease.holder.split(":")[1]) in alive
                        ):
                            return lease.pipeline, lease.holder
                    return None

                pipeline, holder = wait_until(active_lease, 20, "a held lease")
                victim, survivor = (
                    (one, two) if int(holder.split(":")[1]) == one.pid else (two, one)
                )
                victim.signal(signal.SIGKILL)
                killed_at = time.time()
                victim.wait(10)
                after_kill = store.leases().get(pipeline)
            for r in history(tmp_path, state):
                if r.finished_at is None:
                    unfinished.setdefault(r.id, killed_at)
            if after_kill is not None and after_kill.holder == holder:
                expires = after_kill.expires_at.timestamp()
                break
            one, two = survivor, daemons(config, http=False)
        else:
            raise AssertionError("five kills in a row all came just after a run gave its lease up")

        def taken_over() -> bool:
            return any(
                r.outcome == "ok" and r.started_at.timestamp() > killed_at
                for r in history(tmp_path, state, pipeline)
            )

        wait_until(taken_over, 30, f"the survivor to run {pipeline}", survivor.text)
        after = [
            r for r in history(tmp_path, state, pipeline) if r.started_at.timestamp() > killed_at
        ]
        assert after[0].started_at.timestamp() >= expires - 0.05, (
            "the pipeline was run again before the killed daemon's lease expired"
        )
        runs = history(tmp_path, state)
        assert_no_overlap(runs, unfinished)
        assert {r.pipeline for r in runs} == {"a", "b"}
        ran = {
            d.pid: sum(1 for e in d.events() if e.get("event") == "run finished")
            for d in (one, two)
        }
        assert ran[survivor.pid] > 0, ran
        survivor.signal(signal.SIGTERM)
        assert survivor.wait(30) == 0, survivor.text()[-4000:]
        with StateStore.open(state, base_dir=str(tmp_path)) as store:
            left = {
                p: lease.holder
                for p, lease in store.leases().items()
                if lease.expires_at.timestamp() > time.time()
            }
        assert not any(h.split(":")[1] == str(survivor.pid) for h in left.values()), left
    finally:
        box.stop()


# ------------------------------------------------------------------ 500s, 401s and resume


class FaultProxy:
    """A reverse proxy to the sandbox that can answer 500 or 401 instead, counting requests."""

    def __init__(self, upstream: str) -> None:
        self.mode = "ok"
        self.requests = 0
        self.client = httpx.Client(base_url=upstream, timeout=15)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                proxy.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.mode == "500":
                    self._reply(500, b'{"error": "injected"}')
                    return
                if proxy.mode == "401":
                    self._reply(401, b'{"message": "Unauthorized"}')
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                answer = proxy.client.request(
                    self.command, self.path, headers=headers, content=body
                )
                self._reply(
                    answer.status_code,
                    answer.content,
                    answer.headers.get("content-type", "application/json"),
                )

            def _reply(
                self, status: int, body: bytes, content_type: str = "application/json"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


def status_of(config: Path, pipeline: str) -> api.PipelineStatus:
    rows = api.status(load_config(config, strict_env=False))
    return next(r for r in rows if r.name == pipeline)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYNCENGINE), *args, "--config", str(tmp_path / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(API_KEY, COLUMNS="200"),
    )


def test_a_failing_api_backs_off_and_recovers_and_a_401_pauses_until_resume(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    box = start_sandbox(seed=4)
    proxy = FaultProxy(box.url)
    state = "sqlite:///state.db"
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(
            state=state,
            hcp=box.url,
            flaky=proxy.url,
            daemon={"backoff_initial": 1, "backoff_max": 2},
        ),
        encoding="utf-8",
    )
    try:
        daemon = daemons(config)

        def runs_of(pipeline: str, outcome: str, since: float = 0.0) -> list[RunRow]:
            return [
                r
                for r in history(tmp_path, state, pipeline)
                if r.outcome == outcome and r.started_at.timestamp() > since
            ]

        wait_until(lambda: runs_of("a", "ok") and runs_of("b", "ok"), 30, "first runs", daemon.text)

        proxy.mode = "500"
        broke = time.time()
        wait_until(
            lambda: len(runs_of("b", "failed", broke)) >= 3, 30, "three failed runs", daemon.text
        )
        failed = runs_of("b", "failed", broke)
        gaps = [
            later.started_at.timestamp() - earlier.started_at.timestamp()
            for earlier, later in itertools.pairwise(failed)
        ]
        assert gaps[-1] >= 1.9 and gaps[-1] >= gaps[0], f"no backoff between failures: {gaps}"
        assert len(runs_of("a", "ok", broke)) >= 3, "pipeline a stopped while b was failing"
        backoff = status_of(config, "b").backoff
        assert backoff is not None and backoff["failures"] >= 3
        assert "500" in backoff["last_error"]

        proxy.mode = "ok"
        healed = time.time()
        wait_until(lambda: runs_of("b", "ok", healed), 30, "recovery", daemon.text)
        assert status_of(config, "b").backoff is None

        proxy.mode = "401"
        wait_until(
            lambda: daemon.wait_event("pipeline paused: credentials refused"), 30, "the pause"
        )
        paused = status_of(config, "b").paused
        assert paused is not None and "credentials refused" in paused["reason"]
        assert "syncengine resume -p b" in paused["reason"]
        text = _cli(tmp_path, "status").stdout
        assert "PAUSED" in text and "resume with: syncengine resume -p b" in text
        seen = proxy.requests
        paused_at = time.time()
        time.sleep(2.0)
        assert proxy.requests == seen, "a paused pipeline kept calling the API"
        assert len(runs_of("a", "ok", paused_at)) >= 1, "pipeline a stopped during the pause"

        proxy.mode = "ok"
        resumed = _cli(tmp_path, "resume", "-p", "b")
        assert resumed.returncode == 0 and "resumed: b" in resumed.stdout, resumed
        after = time.time()
        wait_until(lambda: runs_of("b", "ok", after), 30, "runs after resume", daemon.text)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        listing = _cli(tmp_path, "runs", "-p", "b", "--limit", "50")
        assert listing.returncode == 0, listing
        assert " b " in listing.stdout and " failed" in listing.stdout
        assert "RetriableError" in listing.stdout or "500" in listing.stdout
        outcomes = {r["outcome"] for r in api.runs(load_config(config, strict_env=False), "b")}
        assert {"ok", "failed"} <= outcomes
    finally:
        proxy.close()
        box.stop()


def test_sigterm_stops_a_run_waiting_to_retry_a_failing_api_at_once(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    # every request fails, and the connector would retry for minutes (10 retries, backoff up
    # to 30 s): a SIGTERM ends the wait and the run, rather than the grace period (60 s)
    box = start_sandbox(seed=4)
    try:
        httpx.put(f"{box.url}/_sandbox/faults", json={"error_rate": 1}).raise_for_status()
        config = tmp_path / "config.toml"
        text = config_text(state="sqlite:///state.db", hcp=box.url, daemon={"shutdown_grace": 60})
        config.write_text(text.replace("max_retries = 1\n", "max_retries = 10\n"), "utf-8")
        daemon = daemons(config)
        daemon.wait_event("http.retry", attempt=2)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.text()[-4000:]
        events = daemon.events()
        finished = [e for e in events if e.get("event") == "run finished"]
        assert finished and {e["outcome"] for e in finished} == {"stopped"}, finished
        assert not [e for e in events if e.get("event") == "http.gave_up"]
        assert not [e for e in events if e.get("level") == "error"], daemon.text()[-4000:]
        runs = history(tmp_path, "sqlite:///state.db")
        assert runs and {r.outcome for r in runs} == {"stopped"}, runs
        # nothing was lost: the next run, against a working API, syncs everything
        httpx.put(f"{box.url}/_sandbox/faults", json={"error_rate": 0}).raise_for_status()
        again = _cli(tmp_path, "sync", "-p", "a")
        assert again.returncode == 0, again.stderr[-4000:]
        assert len(sheet(tmp_path, "books_a")) == len(Hcp(box.url).customers())
    finally:
        box.stop()


# ------------------------------------------------------------------ reload, --once


def sheets_config(folder: Path, *, schedule: str = "every 1s", extra: str = "") -> None:
    (folder / "config.toml").write_text(
        f"""\
[state]
url = "sqlite:///state.db"

[daemon]
reload_poll = 0.3
{extra}

[connectors.x]
type = "spreadsheet"
path = "x"

[connectors.y]
type = "spreadsheet"
path = "y"

[[pipelines]]
name = "sheets"
members = ["x", "y"]
schedule = "{schedule}"
[pipelines.conflicts]
default = ["x"]
""",
        encoding="utf-8",
    )


def add_row(folder: Path, email: str) -> None:
    rows = sheet(folder, "x")
    header = list(rows[0]) if rows else ["Sync ID", "First Name", "Last Name", "Email"]
    rows.append({**dict.fromkeys(header, ""), "First Name": email.split("@")[0], "Email": email})
    (folder / "x").mkdir(exist_ok=True)
    replace_sheet(folder, "x", rows)


def test_an_invalid_config_edit_is_rejected_and_the_old_config_keeps_running(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    sheets_config(tmp_path)
    add_row(tmp_path, "first@x.test")
    daemon = daemons(tmp_path / "config.toml", http=False)
    wait_until(
        lambda: emails(sheet(tmp_path, "y")) == ["first@x.test"], 30, "a first sync", daemon.text
    )

    config = tmp_path / "config.toml"
    good = config.read_text()
    config.write_text(
        good.replace('schedule = "every 1s"', 'schedule = "every fortnight"').replace(
            "[connectors.y]", "[connectors.y]\npaht = 'y'"
        )
    )
    rejected = daemon.wait_event("config reload rejected; the previous config keeps running")
    problems = "\n".join(rejected["problems"])
    assert "every fortnight" in problems and "unknown key 'paht'" in problems

    add_row(tmp_path, "second@x.test")  # the old config still syncs
    wait_until(
        lambda: "second@x.test" in emails(sheet(tmp_path, "y")),
        30,
        "a sync after the rejected edit",
        daemon.text,
    )

    sheets_config(tmp_path, schedule="every 2s")
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_event("config reloaded")
    assert reloaded["pipelines"] == ["sheets"]
    assert daemon.wait_event("pipeline scheduled", schedule="every 2s")
    add_row(tmp_path, "third@x.test")
    wait_until(
        lambda: "third@x.test" in emails(sheet(tmp_path, "y")),
        30,
        "a sync under the new config",
        daemon.text,
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


@pytest.mark.parametrize("where", ["pipeline", "daemon"])
def test_a_daemon_on_a_cron_schedule_starts_tells_its_next_run_and_stops_on_sigterm(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], where: str
) -> None:
    cron = "0 2 * * mon-fri"
    sheets_config(
        tmp_path,
        schedule=cron if where == "pipeline" else "every 1s",
        extra=f'timezone = "America/Chicago"\nschedule = "{cron}"',
    )
    config = tmp_path / "config.toml"
    if where == "daemon":  # the pipeline gives none: the [daemon] default
        config.write_text(config.read_text().replace('schedule = "every 1s"\n', ""))
    add_row(tmp_path, "cron@x.test")
    before = dt.datetime.now(dt.UTC)
    daemon = daemons(config)
    url = daemon.url
    scheduled = daemon.wait_event("pipeline scheduled", pipeline="sheets")
    daemon.wait_event("daemon started")
    after = dt.datetime.now(dt.UTC)
    assert scheduled["schedule"] == cron
    schedule = load_config(config).schedule("sheets")
    chicago = ZoneInfo("America/Chicago")
    expected = {schedule.next_run(None, t, chicago).isoformat() for t in (before, after)}
    assert scheduled["next_run"] in expected
    local = dt.datetime.fromisoformat(scheduled["next_run"]).astimezone(chicago)
    assert (local.hour, local.minute) == (2, 0) and local.weekday() < 5

    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ok" and body["scheduler"] == "running"
    assert body["pipelines"]["sheets"]["next_run"] == scheduled["next_run"]
    assert body["pipelines"]["sheets"]["last_success"] is None  # cron: no run at start

    # `status` (from the state store, no daemon needed) names the same next run
    status = _cli(tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert row["schedule"] == cron and row["next_run"] == scheduled["next_run"]
    text = _cli(tmp_path, "status")
    assert text.returncode == 0, text.stderr
    shown = dt.datetime.fromisoformat(scheduled["next_run"]).astimezone()
    assert f"schedule: {cron}; next run: {shown:%Y-%m-%d %H:%M}" in text.stdout, text.stdout

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.text()[-4000:]
    assert [e for e in daemon.events() if e.get("event") == "daemon stopped"]
    assert history(tmp_path, "sqlite:///state.db") == []
    assert sheet(tmp_path, "y") == []


def test_once_runs_the_due_pipelines_and_exits(tmp_path: Path) -> None:
    sheets_config(tmp_path, schedule="every 1h")
    add_row(tmp_path, "once@x.test")
    command = [str(SYNCENGINE), "daemon", "--once", "--config", str(tmp_path / "config.toml")]
    first = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=cli_env(API_KEY)
    )
    assert first.returncode == 0, first.stderr
    assert emails(sheet(tmp_path, "y")) == ["once@x.test"]
    second = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=cli_env(API_KEY)
    )
    assert second.returncode == 0, second.stderr
    due = [
        json.loads(line)
        for line in second.stderr.splitlines()
        if "running due pipelines once" in line
    ]
    assert due and due[0]["due"] == [] and due[0]["not_due"] == ["sheets"]
    [run] = history(tmp_path, "sqlite:///state.db")
    # --once says what it ran, and what was not due with its next run in local time
    assert re.fullmatch(
        r"sheets: ran → ok in \d+\.\ds\n    customers: x linked 1; y created 1\n", first.stdout
    ), first.stdout
    next_run = (run.started_at + dt.timedelta(hours=1)).astimezone()
    assert re.fullmatch(
        rf"sheets: not due; next run {next_run:%Y-%m-%d %H:%M} \(in (59 min|1 h)\) "
        r"\(--force runs it now\)\n",
        second.stdout,
    ), second.stdout

    # --force (implies --once): every pipeline now, due or not
    add_row(tmp_path, "forced@x.test")
    forced = subprocess.run(
        [*command[:2], "--force", *command[3:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(API_KEY),
    )
    assert forced.returncode == 0, forced.stderr
    assert re.fullmatch(
        r"sheets: ran → ok in \d+\.\ds\n    customers: x linked 1; y created 1\n",
        forced.stdout,
    ), forced.stdout
    assert emails(sheet(tmp_path, "y")) == ["once@x.test", "forced@x.test"]
    assert len(history(tmp_path, "sqlite:///state.db")) == 2

    # ... but a pause holds: it says so, how to lift it, and exits 1 for cron to hear
    api.pause(load_config(tmp_path / "config.toml"), "sheets", "books closed for audit")
    paused = subprocess.run(
        [*command[:2], "--force", *command[3:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(API_KEY),
    )
    assert paused.returncode == 1, paused.stderr
    assert paused.stdout == (
        "sheets: paused (books closed for audit); not run\n"
        "    resume with: syncengine resume -p sheets\n"
    )
    assert len(history(tmp_path, "sqlite:///state.db")) == 2
