"""Alerts from real daemons (issue 17): ``syncengine daemon`` processes against the HCP
sandbox on loopback, a webhook receiver (``http.server``) and an SMTP server (``aiosmtpd``)
running in the test.

- a wrong API key gives exactly one ``paused`` alert on each channel; fixing the key (and
  ``syncengine resume``) gives one ``recovered``; nothing sent carries the API key or the
  SMTP password, and ``/metrics`` counts what was sent;
- the sandbox answering 500 for several scheduled runs gives one ``run_failed``, then one
  ``recovered``; with two daemons on one PostgreSQL store, still once each;
- a parked conflict gives one ``conflicts_parked`` (a pipeline paused by hand gives none);
- a receiver that is down fails no sync: alerts are retried, logged and counted;
- an outage longer than ``remind_hours`` is reminded, its recovery told once;
- a delete held for approval gives one ``needs_review``;
- a one-shot ``syncengine sync`` (as from cron) tells a failed run, a guard and their
  recoveries, delivered before it exits;
- ``syncengine alerts test`` reports each channel, and exits 4 when one fails; ``validate``
  names the channels.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from syncengine.state import RunRow
from tests.conftest import PG_ADMIN, PG_PASSWORD
from tests.integration.conftest import cli_env
from tests.integration.test_daemon import (
    API_KEY,
    SYNCENGINE,
    DaemonProcess,
    daemons,
    history,
    replace_sheet,
    sheet,
    start_sandbox,
    wait_until,
)

pytestmark = pytest.mark.integration

__all__ = ["daemons"]  # the fixture, imported from the daemon tests

SMTP_USER = "alerts@example.test"
SMTP_PASSWORD = "smtp-pa55word-never-shown"
WRONG_KEY = "wrong-api-key-0123456789"


# ------------------------------------------------------------------ the receivers


class WebhookReceiver:
    """An incoming-webhook endpoint: every POSTed JSON body, in order, and the raw bytes."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.raw.append(data)
                receiver.bodies.append(json.loads(data))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/tokenpart"

    def events(self, event: str | None = None) -> list[str]:
        return [b["event"] for b in list(self.bodies) if event is None or b["event"] == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpReceiver:
    """An SMTP server that wants a login (``SMTP_USER``/``SMTP_PASSWORD``) and keeps every
    message, and what the client sent during the session (for the grep)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.raw: list[bytes] = []
        receiver = self

        class Handler:
            async def handle_DATA(
                self, server: SMTPServer, session: Session, envelope: Envelope
            ) -> str:
                content = envelope.original_content or b""
                receiver.raw.append(content)
                receiver.messages.append(message_from_bytes(content))
                return "250 OK"

        def authenticator(
            server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == SMTP_USER
                and data.password.decode() == SMTP_PASSWORD
            )
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticator,
            auth_require_tls=False,
        )
        self.controller.start()

    def events(self, event: str | None = None) -> list[str]:
        found = []
        for msg in list(self.messages):
            body = msg.get_payload(decode=True)
            assert isinstance(body, bytes)
            line = next(
                x for x in body.decode().splitlines() if x.startswith("event: ")
            ).removeprefix("event: ")
            if event is None or line == event:
                found.append(line)
        return found

    def close(self) -> None:
        self.controller.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    yield receiver
    receiver.close()


# ------------------------------------------------------------------ configs and helpers


def alerts_table(
    webhook_url: str | None, smtp_port: int | None, *, retries: int = 2, extra: str = ""
) -> str:
    lines = ["[alerts]", f"retries = {retries}", "retry_initial = 0.2", extra]
    if webhook_url:
        lines.append(f'webhook_url = "{webhook_url}"')
    if smtp_port:
        lines.append(
            f'email = {{ host = "127.0.0.1", port = {smtp_port}, starttls = false, '
            f'username = "{SMTP_USER}", password = "{SMTP_PASSWORD}", '
            f'from = "syncengine@example.test", to = ["office@example.test"] }}'
        )
    return "\n".join(lines) + "\n"


def write_config(
    folder: Path,
    *,
    hcp: str,
    alerts: str,
    api_key: str = API_KEY,
    state: str = "sqlite:///state.db",
    conflicts: str = '["hcp"]',
    pipeline_extra: str = "",
) -> Path:
    """One pipeline (the sandbox and a sheet) every second; the key written in the file, so
    that an edit of the file changes it for a running daemon."""
    path = folder / "config.toml"
    path.write_text(
        f"""\
[state]
url = "{state}"

[daemon]
lease_ttl = 5
shutdown_grace = 20
backoff_initial = 0.5
backoff_max = 1
reload_poll = 0.3

[connectors.hcp]
type = "housecallpro"
base_url = "{hcp}"
api_key = "{api_key}"
rate_limit = 0
max_retries = 0
timeout = 10

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "a"
members = ["hcp", "books"]
schedule = "every 1s"
[pipelines.conflicts]
default = {conflicts}
{pipeline_extra}

{alerts}""",
        encoding="utf-8",
    )
    return path


def runs_of(folder: Path, outcome: str, state: str = "sqlite:///state.db") -> list[RunRow]:
    return [r for r in history(folder, state, "a") if r.outcome == outcome]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYNCENGINE), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(API_KEY, COLUMNS="200"),
    )


def faults(box_url: str, error_rate: float) -> None:
    httpx.put(f"{box_url}/_sandbox/faults", json={"error_rate": error_rate}).raise_for_status()


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{daemon.url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stop(daemon: DaemonProcess) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.text()[-4000:]


# ------------------------------------------------------------------------- the tests


def test_a_wrong_key_pauses_with_one_alert_per_channel_and_the_fix_recovers_once(
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
    webhook: WebhookReceiver,
    smtp: SmtpReceiver,
) -> None:
    box = start_sandbox(seed=3)
    table = alerts_table(webhook.url, smtp.port)
    config = write_config(tmp_path, hcp=box.url, alerts=table, api_key=WRONG_KEY)
    try:
        daemon = daemons(config)
        wait_until(
            lambda: webhook.events("paused") and smtp.events("paused"),
            30,
            "the paused alert on both channels",
            daemon.text,
        )
        daemon.wait_event("pipeline paused: credentials refused")
        # the daemon goes on skipping the paused pipeline: still one alert each
        wait_until(
            lambda: (
                sum(1 for e in daemon.events() if e.get("event") == "run skipped")
                or metric(daemon, "syncengine_runs_skipped_total", pipeline="a", reason="paused")
                >= 3
            ),
            30,
            "skipped runs while paused",
            daemon.text,
        )
        assert webhook.events() == ["paused"] and smtp.events() == ["paused"]
        body = webhook.bodies[0]
        assert body["pipeline"] == "a" and body["severity"] == "error"
        assert f"syncengine resume -c {config} --pipeline a" in body["text"]
        assert body["details"]["command"] == f"syncengine resume -c {config} --pipeline a"
        assert smtp.messages[0]["Subject"].startswith("[syncengine] Pipeline a is paused")

        # the fix: the right key in the file (the daemon reloads it), then resume
        write_config(tmp_path, hcp=box.url, alerts=table, api_key=API_KEY)
        daemon.wait_event("config reloaded")
        resumed = cli(config, "resume", "-p", "a")
        assert resumed.returncode == 0, resumed.stderr
        wait_until(
            lambda: webhook.events("recovered") and smtp.events("recovered"),
            30,
            "the recovered alert on both channels",
            daemon.text,
        )
        done = len(runs_of(tmp_path, "ok"))
        wait_until(lambda: len(runs_of(tmp_path, "ok")) >= done + 3, 30, "three more runs")
        assert webhook.events() == ["paused", "recovered"]
        assert smtp.events() == ["paused", "recovered"]
        assert metric(daemon, "syncengine_alerts_sent_total", channel="webhook", event="paused")
        assert metric(daemon, "syncengine_alerts_sent_total", channel="email", event="recovered")
        stop(daemon)
        for raw in [*webhook.raw, *smtp.raw]:
            for secret in (WRONG_KEY, API_KEY, SMTP_PASSWORD):
                assert secret.encode() not in raw, f"an alert carries a secret: {raw[:300]!r}"
        assert SMTP_PASSWORD not in daemon.text() and WRONG_KEY not in daemon.text()
    finally:
        box.stop()


def test_500s_for_several_runs_give_one_run_failed_then_one_recovered(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], webhook: WebhookReceiver
) -> None:
    box = start_sandbox(seed=3)
    config = write_config(tmp_path, hcp=box.url, alerts=alerts_table(webhook.url, None))
    try:
        daemon = daemons(config)
        wait_until(lambda: runs_of(tmp_path, "ok"), 30, "a first run", daemon.text)
        faults(box.url, 1.0)
        wait_until(lambda: len(runs_of(tmp_path, "failed")) >= 3, 30, "three failed runs")
        wait_until(lambda: webhook.events("run_failed"), 30, "the run_failed alert")
        faults(box.url, 0.0)
        wait_until(lambda: webhook.events("recovered"), 30, "the recovered alert", daemon.text)
        done = len(runs_of(tmp_path, "ok"))
        wait_until(lambda: len(runs_of(tmp_path, "ok")) >= done + 2, 30, "two more runs")
        assert webhook.events() == ["run_failed", "recovered"]
        failed = webhook.bodies[0]
        assert "500" in failed["text"] and failed["pipeline"] == "a"
        assert f"syncengine runs -c {config} --pipeline a" in failed["text"]
        stop(daemon)
    finally:
        box.stop()


def test_two_daemons_on_postgresql_send_each_alert_once(
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
    webhook: WebhookReceiver,
    pg_url: str,
) -> None:
    box = start_sandbox(seed=3)
    config = write_config(
        tmp_path, hcp=box.url, alerts=alerts_table(webhook.url, None), state=pg_url
    )
    try:
        one, two = daemons(config, http=False), daemons(config, http=False)
        wait_until(lambda: runs_of(tmp_path, "ok", pg_url), 45, "a first run", one.text)
        faults(box.url, 1.0)
        wait_until(lambda: len(runs_of(tmp_path, "failed", pg_url)) >= 4, 45, "failed runs")
        faults(box.url, 0.0)
        wait_until(lambda: webhook.events("recovered"), 45, "the recovered alert", one.text)
        done = len(runs_of(tmp_path, "ok", pg_url))
        wait_until(lambda: len(runs_of(tmp_path, "ok", pg_url)) >= done + 4, 45, "more runs")
        runners = {r.pipeline for r in history(tmp_path, pg_url)}
        assert runners == {"a"}
        logs = [x for d in (one, two) for x in d.text().splitlines() if "alert" in x]
        assert webhook.events() == ["run_failed", "recovered"], logs
        stop(one)
        stop(two)
    finally:
        box.stop()


def test_a_parked_conflict_gives_one_conflicts_parked_alert(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], webhook: WebhookReceiver
) -> None:
    box = start_sandbox(seed=3)
    config = write_config(
        tmp_path, hcp=box.url, alerts=alerts_table(webhook.url, None), conflicts='["manual"]'
    )
    hcp = httpx.Client(base_url=box.url, headers={"Authorization": f"Token {API_KEY}"})
    try:
        daemon = daemons(config)
        wait_until(lambda: len(sheet(tmp_path, "books")) == 3, 30, "the first sync", daemon.text)
        # both sides edit the same field while the pipeline is paused by hand (no alert)
        paused = cli(config, "pause", "-p", "a")
        assert paused.returncode == 0, paused.stderr
        rows = sheet(tmp_path, "books")
        row = next(r for r in rows if r["Email"])
        customer = next(
            c
            for c in hcp.get("/customers").raise_for_status().json()["customers"]
            if (c.get("email") or "").lower() == row["Email"].lower()
        )
        row["Company"] = "Sheet Side Co"
        replace_sheet(tmp_path, "books", rows)
        hcp.put(f"/customers/{customer['id']}", json={"company": "HCP Side Co"}).raise_for_status()
        resumed = cli(config, "resume", "-p", "a")
        assert resumed.returncode == 0, resumed.stderr
        wait_until(lambda: webhook.events("conflicts_parked"), 30, "the alert", daemon.text)
        done = len(runs_of(tmp_path, "conflicts"))
        wait_until(lambda: len(runs_of(tmp_path, "conflicts")) >= done + 3, 30, "more runs")
        assert webhook.events() == ["conflicts_parked"], webhook.bodies
        alert = webhook.bodies[0]
        assert alert["details"]["count"] == 1 and alert["details"]["by"] == {"customers": 1}
        assert f"syncengine conflicts list -c {config} --pipeline a" in alert["text"]
        text = json.dumps(alert)
        for data in ("Sheet Side Co", "HCP Side Co", row["Email"]):
            assert data not in text, "an alert carries a record's data"
        stop(daemon)
    finally:
        hcp.close()
        box.stop()


def test_a_receiver_that_is_down_fails_no_sync(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    box = start_sandbox(seed=3)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    config = write_config(tmp_path, hcp=box.url, alerts=alerts_table(dead, free_port(), retries=1))
    try:
        daemon = daemons(config)
        wait_until(lambda: runs_of(tmp_path, "ok"), 30, "a first run", daemon.text)
        faults(box.url, 1.0)
        wait_until(lambda: runs_of(tmp_path, "failed"), 30, "a failed run")
        faults(box.url, 0.0)
        failed_at = max(r.started_at for r in runs_of(tmp_path, "failed"))

        def failures_counted() -> bool:
            return (
                metric(daemon, "syncengine_alert_failures_total", channel="webhook") >= 1
                and metric(daemon, "syncengine_alert_failures_total", channel="email") >= 1
            )

        wait_until(failures_counted, 30, "the failed deliveries counted", daemon.text)
        daemon.wait_event("alert could not be sent", channel="webhook")
        wait_until(
            lambda: len([r for r in runs_of(tmp_path, "ok") if r.started_at > failed_at]) >= 3,
            30,
            "runs after the failure",
            daemon.text,
        )
        outcomes = {r.outcome for r in history(tmp_path, "sqlite:///state.db", "a")}
        assert outcomes == {"ok", "failed"}, outcomes
        stop(daemon)
    finally:
        box.stop()


def test_alerts_test_reports_each_channel(
    tmp_path: Path, webhook: WebhookReceiver, smtp: SmtpReceiver
) -> None:
    config = write_config(
        tmp_path, hcp="http://127.0.0.1:9", alerts=alerts_table(webhook.url, smtp.port)
    )
    shown = cli(config, "validate")
    assert shown.returncode == 0, shown.stderr
    assert "alerts: webhook, email; reminders every 24 h" in shown.stdout
    assert "tokenpart" not in shown.stdout and SMTP_PASSWORD not in shown.stdout
    good = cli(config, "alerts", "test")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "webhook: sent" in good.stdout and "email: sent" in good.stdout
    assert webhook.events() == ["test"] and smtp.events() == ["test"]
    assert SMTP_PASSWORD.encode() not in smtp.raw[0]

    gone = f"http://127.0.0.1:{free_port()}/hooks/T000/B000/tokenpart"
    dead = write_config(tmp_path, hcp="http://127.0.0.1:9", alerts=alerts_table(gone, free_port()))
    bad = cli(dead, "alerts", "test", "--json")
    assert bad.returncode == 4, bad.stdout + bad.stderr
    channels = {c["channel"]: c for c in json.loads(bad.stdout)["channels"]}
    assert not channels["webhook"]["ok"] and not channels["email"]["ok"]
    assert "tokenpart" not in bad.stdout + bad.stderr, "the webhook URL is a secret"
    assert "Traceback" not in bad.stderr

    none = write_config(tmp_path, hcp="http://127.0.0.1:9", alerts="")
    missing = cli(none, "alerts", "test")
    assert missing.returncode == 2 and "no [alerts] table" in missing.stderr


def test_a_one_shot_sync_alerts_too(tmp_path: Path, webhook: WebhookReceiver) -> None:
    """A sync run from cron: a failed run, a guard and their recoveries are told, each once,
    and delivered before the command exits."""
    box = start_sandbox(seed=3)
    config = write_config(tmp_path, hcp=box.url, alerts=alerts_table(webhook.url, None))
    try:
        assert cli(config, "sync").returncode == 0
        assert webhook.events() == []
        faults(box.url, 1.0)
        assert cli(config, "sync").returncode == 4
        assert webhook.events() == ["run_failed"]
        assert cli(config, "sync").returncode == 4
        assert webhook.events() == ["run_failed"], "one alert per outage"
        faults(box.url, 0.0)
        assert cli(config, "sync").returncode == 0
        assert webhook.events() == ["run_failed", "recovered"]

        rows = sheet(tmp_path, "books")
        (tmp_path / "books" / "customers.csv").unlink()  # the sheet gone: the guard stops it
        guarded = cli(config, "sync")
        assert guarded.returncode == 3, guarded.stdout + guarded.stderr
        assert webhook.events()[-1] == "guard_tripped"
        assert webhook.bodies[-1]["details"]["entity"] == "customers"
        assert f"syncengine sync -c {config} --pipeline a --dry-run" in webhook.bodies[-1]["text"]
        replace_sheet(tmp_path, "books", rows)
        assert cli(config, "sync").returncode == 0
        assert webhook.events() == ["run_failed", "recovered", "guard_tripped", "recovered"]
        assert webhook.bodies[-1]["details"]["cleared"] == [
            {"event": "guard_tripped", "entity": "customers"}
        ]
    finally:
        box.stop()


def test_a_delete_held_for_approval_gives_one_needs_review(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    box = start_sandbox(seed=3)
    config = write_config(
        tmp_path,
        hcp=box.url,
        alerts=alerts_table(webhook.url, None),
        pipeline_extra="[pipelines.deletes]\napprove = true",
    )
    try:
        assert cli(config, "sync").returncode == 0
        rows = sheet(tmp_path, "books")
        gone = rows.pop(0)
        replace_sheet(tmp_path, "books", rows)
        held = cli(config, "sync")
        assert held.returncode in (0, 1), held.stdout + held.stderr
        assert cli(config, "sync").returncode in (0, 1)
        assert webhook.events() == ["needs_review"], webhook.bodies
        alert = webhook.bodies[0]
        assert alert["details"]["by"] == {"held deletes": 1}
        assert f"syncengine deletes list -c {config} --pipeline a" in alert["text"]
        assert gone["Email"] not in json.dumps(alert)
    finally:
        box.stop()


def test_an_outage_that_lasts_is_reminded_and_told_again_once_over(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], webhook: WebhookReceiver
) -> None:
    """``remind_hours`` of about two seconds: a pipeline failing for longer is reminded,
    each reminder saying since when; its recovery is told once."""
    box = start_sandbox(seed=3)
    table = alerts_table(webhook.url, None, extra="remind_hours = 0.0006")
    config = write_config(tmp_path, hcp=box.url, alerts=table)
    try:
        daemon = daemons(config)
        wait_until(lambda: runs_of(tmp_path, "ok"), 30, "a first run", daemon.text)
        faults(box.url, 1.0)

        def reminders() -> list[dict[str, Any]]:
            return [b for b in webhook.bodies if b["details"].get("kind") == "remind"]

        wait_until(reminders, 30, "a reminder", daemon.text)
        faults(box.url, 0.0)
        wait_until(lambda: webhook.events("recovered"), 30, "the recovery", daemon.text)
        events = webhook.events()
        assert events[0] == "run_failed" and events[-1] == "recovered"
        assert set(events[1:-1]) == {"run_failed"}, events
        assert events.count("recovered") == 1
        first = webhook.bodies[0]
        assert all(b["text"].startswith("Reminder: still open since") for b in reminders())
        assert all(b["details"]["opened_at"] == first["details"]["opened_at"] for b in reminders())
        stop(daemon)
    finally:
        box.stop()


def _connections(db: str, *, allowed: bool) -> None:
    """The database refuses new connections and drops those it has (a PostgreSQL down for
    this daemon), or takes them again."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (db,),
            )


def test_a_state_store_that_goes_down_is_told_once_and_its_return_once(
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
    webhook: WebhookReceiver,
    pg_url: str,
) -> None:
    """The store keeps every condition, so one that is down could tell nobody: the daemon
    tells it itself, once (however many runs fail), shows it in ``/healthz`` (503) and tells
    its return once; the database's password is in neither."""
    box = start_sandbox(seed=3)
    db = pg_url.rsplit("/", 1)[1]
    config = write_config(
        tmp_path, hcp=box.url, alerts=alerts_table(webhook.url, None), state=pg_url
    )
    try:
        daemon = daemons(config)
        wait_until(lambda: runs_of(tmp_path, "ok", pg_url), 45, "a first run", daemon.text)
        up = httpx.get(f"{daemon.url}/healthz", timeout=30)
        assert (up.status_code, up.json()["state_store"]) == (200, "ok")

        _connections(db, allowed=False)
        wait_until(lambda: webhook.events("store_unavailable"), 45, "the alert", daemon.text)
        down = httpx.get(f"{daemon.url}/healthz", timeout=30)
        assert down.status_code == 503, down.text
        assert down.json()["status"] == "unavailable"
        assert down.json()["state_store"] == "unavailable"
        assert db in down.json()["state_store_error"]
        failing = "run failed: the state store cannot be used"
        wait_until(lambda: daemon.text().count(failing) >= 3, 45, "more runs", daemon.text)
        assert webhook.events() == ["store_unavailable"]  # once, not once per run
        alert = webhook.bodies[0]
        assert alert["severity"] == "error" and alert["pipeline"] == ""
        assert alert["text"].startswith("The state store cannot be used: ")
        assert f"`syncengine status -c {config}`" in alert["text"]

        _connections(db, allowed=True)
        wait_until(lambda: webhook.events("recovered"), 45, "the return", daemon.text)
        assert webhook.events() == ["store_unavailable", "recovered"]
        done = len(runs_of(tmp_path, "ok", pg_url))
        wait_until(lambda: len(runs_of(tmp_path, "ok", pg_url)) > done, 45, "a run after it")
        assert httpx.get(f"{daemon.url}/healthz", timeout=30).status_code == 200
        sent = json.dumps(webhook.bodies) + httpx.get(f"{daemon.url}/healthz").text
        assert PG_PASSWORD not in sent and PG_PASSWORD not in daemon.text()
        stop(daemon)
    finally:
        _connections(db, allowed=True)
        box.stop()
