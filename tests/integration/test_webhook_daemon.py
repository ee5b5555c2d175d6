"""Webhooks end to end (issue 13): ``syncengine sandbox`` sends HCP's signed webhooks to
``syncengine daemon --http``, whose receiver stores them in the inbox and whose dispatcher
starts event-driven runs; the CSV folder and the state store (a SQLite file, or a PostgreSQL
database) are real, and so are both processes.

The sandbox must be told the daemon's URL when it starts, and the daemon's config needs the
sandbox's port. The daemon's port is therefore picked first (a loopback port that was free a
moment ago), the sandbox started with ``--webhook-url`` pointing at it, and the daemon with
``--http`` on it; should another process take the port in between, the daemon exits saying
it cannot listen there, and both are started again on another port. With two daemons behind
a load balancer the balancer is started first instead (a small proxy in this process).

Every pipeline is scheduled ``every 1h``: the run the schedule makes at the start is awaited
before any edit, and no scheduled run comes due again during a test, so whatever reaches the
sheet afterwards came through a webhook.

- an HCP edit (a customer, a payment) reaches the CSV by an event-driven run, with
  ``trigger`` "webhook" in the daemon's log;
- an edit costs the daemon no HCP request when the event carries the whole record;
- with a fifth of the webhooks dropped, what did arrive is synced, what did not waits, and the
  next full pass takes it: every edit, nothing twice;
- a daemon killed after storing an event but before running it leaves the event in the inbox,
  and the next daemon runs it at its start;
- two daemons on one PostgreSQL store, each receiving part of the deliveries (and some
  deliveries twice, once on each): every event is taken by exactly one run, and the runs
  never overlap.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from syncengine.state import RunRow, StateStore
from syncengine.state.schema import inbox, inbox_done
from testbed.processes import ServerProcess, free_port
from testbed.sandbox import start_sandbox as start_sandbox_process
from tests.csvfiles import read_csv
from tests.integration.conftest import cli_env
from tests.integration.test_daemon import (
    API_KEY,
    SYNCENGINE,
    DaemonProcess,
    assert_no_overlap,
    history,
    wait_until,
)

pytestmark = pytest.mark.integration

SECRET = "whsec-daemon-e2e-0123456789"
"""The webhook signing secret, in ``HCP_WEBHOOK_SECRET`` for the sandbox and the daemons."""
PIPELINE = "hcp-books"
WAIT = 30.0
"""Seconds a test waits for something at most: a safety net, never a measure of speed."""
PATH = "/webhooks/hcp/hcp"
"""Where the daemon receives the webhooks of the connector named ``hcp``."""
PORT_ATTEMPTS = 3
"""How often a daemon and its sandbox are started on a new port when the port was taken."""


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret, where the sandbox (``--webhook-secret``'s variable) and the daemons'
    configs (``${HCP_WEBHOOK_SECRET}``) read it: the environment, never a command line."""
    monkeypatch.setenv("HCP_WEBHOOK_SECRET", SECRET)


# ------------------------------------------------------------------------------ the config


def config_text(
    *,
    state: str,
    hcp: str,
    debounce: float = 0.5,
    entities: tuple[str, ...] = ("customers",),
) -> str:
    listed = ", ".join(f'"{e}"' for e in entities)
    return f"""\
[state]
url = "{state}"

[daemon]
schedule = "every 1h"
webhook_debounce = {debounce}
lease_ttl = 5
shutdown_grace = 20
reload_poll = 0

[connectors.hcp]
type = "housecallpro"
base_url = "{hcp}"
api_key = "${{HCP_API_KEY}}"
webhook_secret = "${{HCP_WEBHOOK_SECRET}}"
rate_limit = 0
max_retries = 1
timeout = 10

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "{PIPELINE}"
members = ["hcp", "books"]
entities = [{listed}]

[pipelines.conflicts]
default = ["hcp"]
"""


# ------------------------------------------------------------------------- the processes


class Hcp:
    """The sandbox's API as a person in HCP would use it, and its ``/_sandbox/`` routes."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.url, timeout=15, headers={"Authorization": f"Token {API_KEY}"}
        )

    def _pages(self, path: str, name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, str | int] = {"page": page, "page_size": 200, "sort_by": "created_at"}
            body = self.http.get(path, params=params).raise_for_status().json()
            found += body[name]
            if page >= body["total_pages"]:
                return found
            page += 1

    def customers(self) -> list[dict[str, Any]]:
        return self._pages("/customers", "customers")

    def with_email(self) -> list[dict[str, Any]]:
        """The customers whose e-mail tells their row in the sheet (one each)."""
        found = [c for c in self.customers() if c.get("email")]
        emails = collections.Counter(c["email"].lower() for c in found)
        return [c for c in found if emails[c["email"].lower()] == 1]

    def invoices(self) -> list[dict[str, Any]]:
        return self._pages("/invoices", "invoices")

    def put(self, customer_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.http.put(f"/customers/{customer_id}", json=body).raise_for_status().json())

    def pay(self, invoice_id: str, amount: int) -> dict[str, Any]:
        body = {"amount": amount, "payment_method": "check", "status": "succeeded"}
        response = self.http.post(f"/_sandbox/invoices/{invoice_id}/payments", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def webhooks(self) -> dict[str, Any]:
        """The sender's counters: sent, dropped, failed, retried, pending, ping."""
        return dict(self.http.get("/_sandbox/webhooks").raise_for_status().json())

    def requests(self) -> list[dict[str, Any]]:
        return list(self.http.get("/_sandbox/requests").raise_for_status().json()["requests"])

    def clear_requests(self) -> None:
        self.http.delete("/_sandbox/requests").raise_for_status()

    def close(self) -> None:
        self.http.close()
        self.server.stop()


def start_hcp(folder: Path, webhook_url: str, *, seed: int, flags: tuple[str, ...] = ()) -> Hcp:
    server = start_sandbox_process(
        api_key=API_KEY,
        seed=seed,
        flags=["--webhook-url", webhook_url, *flags],
        workdir=folder / "sandbox",
    )
    return Hcp(server)


def start_daemon(config: Path, port: int) -> DaemonProcess | None:
    """``syncengine daemon --http 127.0.0.1:PORT``, listening; None when the port was taken
    (the daemon exited saying so)."""
    daemon = DaemonProcess(config, "--http", f"127.0.0.1:{port}", http=False)

    def listening() -> bool:
        if daemon.proc.poll() is not None:
            return True
        return any(e.get("event") == "http listening" for e in daemon.events())

    wait_until(listening, WAIT, "the daemon to listen", daemon.text)
    if daemon.proc.poll() is not None:
        text = daemon.text()
        daemon.stop()
        assert "cannot listen there" in text, f"the daemon exited at its start:\n{text[-4000:]}"
        return None
    return daemon


@dataclass
class Rig:
    """A sandbox sending its webhooks to a daemon, the daemon's config, its CSV folder and
    its state store."""

    folder: Path
    hcp: Hcp
    config: Path
    state: str
    port: int
    daemons: list[DaemonProcess] = field(default_factory=list)

    @property
    def daemon(self) -> DaemonProcess:
        return self.daemons[-1]

    def write_config(self, *, debounce: float = 0.5, entities: tuple[str, ...] = ()) -> None:
        self.config.write_text(
            config_text(
                state=self.state,
                hcp=self.hcp.server.url,
                debounce=debounce,
                entities=entities or ("customers",),
            ),
            encoding="utf-8",
        )

    def start_daemon(self) -> DaemonProcess:
        """Another daemon on this rig's port (the sandbox sends there)."""
        daemon = start_daemon(self.config, self.port)
        assert daemon is not None, f"port {self.port} was taken from under the test"
        self.daemons.append(daemon)
        return daemon

    def runs(self) -> list[RunRow]:
        return history(self.folder, self.state, PIPELINE)

    def store(self) -> StateStore:
        return StateStore.open(self.state, base_dir=str(self.folder))

    def pending(self) -> int:
        """The events no run of the pipeline took yet."""
        with self.store() as store:
            return len(store.pending_events(PIPELINE, ["hcp"]))

    def sheet(self, entity: str = "customers") -> list[dict[str, str]]:
        path = self.folder / "books" / f"{entity}.csv"
        return read_csv(path) if path.exists() else []

    def row(self, email: str) -> dict[str, str] | None:
        found = [r for r in self.sheet() if r["Email"].strip().lower() == email.lower()]
        assert len(found) <= 1, f"{email} is in the sheet {len(found)} times"
        return found[0] if found else None

    def delivered(self) -> dict[str, Any]:
        """The sender's counters once it has nothing left to send."""
        counts: dict[str, Any] = wait_until(
            lambda: (c := self.hcp.webhooks())["pending"] == 0 and c,
            WAIT,
            "the sandbox to deliver its webhooks",
            self.daemon.text,
        )
        return counts

    def settled(self) -> None:
        """Wait until the sandbox delivered everything and runs took every event stored."""
        self.delivered()
        wait_until(lambda: self.pending() == 0, WAIT, "runs to take every event", self.daemon.text)

    def logged_runs(self, trigger: str) -> list[dict[str, Any]]:
        return [
            e
            for d in self.daemons
            for e in d.events()
            if e.get("event") == "run finished" and e.get("trigger") == trigger
        ]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """``rig(seed=N, ...)``: a sandbox sending to a daemon whose first (scheduled) run has
    finished; everything is stopped after the test."""
    made: list[Rig] = []

    def make(
        *,
        seed: int = 8,
        flags: tuple[str, ...] = (),
        debounce: float = 0.5,
        entities: tuple[str, ...] = ("customers",),
    ) -> Rig:
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            hcp = start_hcp(tmp_path, f"http://127.0.0.1:{port}{PATH}", seed=seed, flags=flags)
            setup = Rig(tmp_path, hcp, tmp_path / "config.toml", "sqlite:///state.db", port)
            setup.write_config(debounce=debounce, entities=entities)
            daemon = start_daemon(setup.config, port)
            if daemon is None:
                hcp.close()
                continue
            setup.daemons.append(daemon)
            made.append(setup)
            first = daemon.wait_event("run finished", WAIT, trigger="schedule")
            assert first["outcome"] == "ok", daemon.text()[-4000:]
            return setup
        raise AssertionError(f"no free port for the daemon in {PORT_ATTEMPTS} attempts")

    yield make
    for setup in made:
        for daemon in setup.daemons:
            daemon.stop()
        setup.hcp.close()


def inbox_tables(setup: Rig) -> tuple[list[int], list[dict[str, Any]]]:
    """The ids of the events in the inbox, and the rows of ``inbox_done``."""
    url = setup.state
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{setup.folder / url.removeprefix('sqlite:///')}"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            event_ids = list(conn.execute(sa.select(inbox.c.id)).scalars())
            done = [dict(r) for r in conn.execute(sa.select(inbox_done)).mappings()]
    finally:
        engine.dispose()
    return event_ids, done


def stop(daemon: DaemonProcess) -> None:
    """SIGTERM, and a clean exit."""
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(WAIT) == 0, daemon.text()[-4000:]
    assert "Traceback" not in daemon.text()


# ---------------------------------------------------------------------------------- tests


def test_an_hcp_edit_reaches_the_csv_through_a_webhook_without_a_scheduled_run(
    rig: Callable[..., Rig],
) -> None:
    setup = rig(entities=("customers", "invoices", "payments"))
    [first] = setup.runs()
    customer = setup.hcp.with_email()[2]
    assert setup.row(customer["email"]) is not None
    payable = next(
        i
        for i in setup.hcp.invoices()
        if i["status"] not in ("voided", "canceled") and i["outstanding_balance"] >= 100
    )
    paid_before = [
        p for p in setup.sheet("payments") if p["Invoice #"] == payable["invoice_number"]
    ]

    setup.hcp.put(customer["id"], {"last_name": "Webhooked"})
    setup.hcp.pay(payable["id"], 100)

    def edited() -> bool:
        row = setup.row(customer["email"])
        return row is not None and row["Last Name"] == "Webhooked"

    wait_until(edited, WAIT, "the HCP edit to reach the CSV", setup.daemon.text)

    def paid() -> list[dict[str, str]]:
        return [p for p in setup.sheet("payments") if p["Invoice #"] == payable["invoice_number"]]

    wait_until(
        lambda: len(paid()) == len(paid_before) + 1,
        WAIT,
        "the payment to reach the CSV",
        setup.daemon.text,
    )
    setup.settled()
    [new] = [p for p in paid() if p not in paid_before]
    assert (new["Amount"], new["Status"]) == ("1.00", "succeeded"), new

    # once stopped, its log is whole: every run it started says how it finished (a run
    # that took no event may follow the last one: events that arrived while a run was
    # starting make the pipeline due again)
    stop(setup.daemon)
    event_ids, done = inbox_tables(setup)
    assert len(event_ids) >= 2 and sorted(d["event_id"] for d in done) == sorted(event_ids)
    took = {d["run_id"] for d in done}
    runs = setup.runs()
    assert runs[0] == first
    later = {r.run_uuid: r for r in runs[1:]}
    due = first.started_at + dt.timedelta(hours=1)
    assert all(r.started_at < due for r in later.values()), later
    assert took <= set(later), (took, later)
    assert all(later[t].outcome == "ok" for t in took), later
    logged = {e["run_id"]: e["outcome"] for e in setup.logged_runs("webhook")}
    assert set(logged) == set(later), (logged, later)  # every later run: a webhook's
    assert len(setup.logged_runs("schedule")) == 1  # only the one at the start


def test_one_changed_customer_costs_the_daemon_at_most_two_hcp_requests(
    rig: Callable[..., Rig],
) -> None:
    setup = rig()
    customer = setup.hcp.with_email()[4]
    setup.hcp.clear_requests()

    setup.hcp.put(customer["id"], {"first_name": "Counted"})

    wait_until(
        lambda: (
            (row := setup.row(customer["email"])) is not None and row["First Name"] == "Counted"
        ),
        WAIT,
        "the HCP edit to reach the CSV",
        setup.daemon.text,
    )
    setup.daemon.wait_event("run finished", WAIT, trigger="webhook")
    setup.settled()
    log = [(r["method"], r["path"]) for r in setup.hcp.requests()]
    edit = ("PUT", f"/customers/{customer['id']}")
    assert log.count(edit) == 1, log
    by_daemon = [r for r in log if r != edit]
    assert len(by_daemon) <= 2, f"the daemon made {len(by_daemon)} requests: {by_daemon}"
    # the event carries the whole record and is seconds old: nothing needs reading
    assert by_daemon == [], by_daemon
    stop(setup.daemon)


DROP_SEED = 7
"""A ``--random-seed`` whose generator drops some of the first twenty webhooks at a rate of
0.2 (four of them); the test checks that some were dropped, from the sandbox's counters."""
EDITS = 20


def test_with_a_fifth_of_the_webhooks_dropped_the_next_full_pass_converges(
    rig: Callable[..., Rig], tmp_path: Path
) -> None:
    setup = rig(
        seed=EDITS + 6,
        flags=("--webhook-drop-rate", "0.2", "--random-seed", str(DROP_SEED)),
    )
    customers = setup.hcp.with_email()[:EDITS]
    assert len(customers) == EDITS
    count = len(setup.hcp.customers())
    assert len(setup.sheet()) == count
    edits = {c["email"]: f"Edit{i:02d}" for i, c in enumerate(customers)}
    for customer in customers:
        setup.hcp.put(customer["id"], {"first_name": edits[customer["email"]]})

    counts = setup.delivered()
    assert counts["sent"] + counts["dropped"] == EDITS, counts
    assert counts["dropped"] > 0, f"seed {DROP_SEED} dropped no webhook: {counts}"
    assert counts["failed"] == 0, counts
    setup.settled()  # every event that arrived was taken by a run

    def missing() -> list[str]:
        return [e for e, name in edits.items() if (setup.row(e) or {}).get("First Name") != name]

    assert len(missing()) == counts["dropped"], (missing(), counts)

    # the next full pass: a manual sync while the daemon runs (and is idle)
    done = subprocess.run(
        [str(SYNCENGINE), "sync", "--wait", "60", "--config", str(setup.config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(API_KEY),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert missing() == []
    rows = setup.sheet()
    assert len(rows) == count == len(setup.hcp.customers()), "a record was created twice"
    ids = [r["Sync ID"] for r in rows]
    assert all(ids) and len(set(ids)) == len(ids), ids
    emails = [r["Email"].lower() for r in rows if r["Email"]]
    assert len(set(emails)) == len(emails)
    assert setup.pending() == 0
    stop(setup.daemon)


def test_an_event_stored_by_a_killed_daemon_is_run_by_the_next_one(
    rig: Callable[..., Rig],
) -> None:
    # the event waits ten minutes for its run: the kill surely comes first
    setup = rig(debounce=600)
    customer = setup.hcp.with_email()[1]
    with setup.store() as store:
        assert store.inbox_count() == 0

    setup.hcp.put(customer["id"], {"last_name": "Survivor"})

    def stored() -> bool:
        with setup.store() as store:
            return store.inbox_count() == 1

    wait_until(stored, WAIT, "the event to be stored", setup.daemon.text)
    killed = setup.daemon
    killed.signal(signal.SIGKILL)
    assert killed.wait(WAIT) == -signal.SIGKILL
    assert not setup.logged_runs("webhook")
    before = setup.row(customer["email"])
    assert before is not None and before["Last Name"] != "Survivor", before
    assert setup.pending() == 1

    setup.write_config(debounce=0.5)
    after = setup.start_daemon()  # no further edit: only the inbox knows of it

    wait_until(
        lambda: (setup.row(customer["email"]) or {}).get("Last Name") == "Survivor",
        WAIT,
        "the stored event to reach the CSV",
        after.text,
    )
    waiting = after.wait_event("webhook events waiting since before the start", WAIT)
    assert waiting["pipelines"] == [PIPELINE]
    run = after.wait_event("run finished", WAIT, trigger="webhook")
    assert run["outcome"] == "ok", run
    taken = after.wait_event("webhook events taken", WAIT)
    assert (taken["events"], taken["event_driven"]) == (1, True), taken
    assert setup.pending() == 0
    assert [e for e in after.events() if e.get("event") == "run finished"] == [run]
    # the kill may land between the commit and the 200: the sandbox then retries, and a
    # redelivery that reaches the next daemon is stored once; or it gives up. Either way the
    # event was delivered once, stored once and taken by one run.
    wait_until(lambda: setup.hcp.webhooks()["pending"] == 0, WAIT, "the sender to finish")
    sent = setup.hcp.webhooks()
    assert sent["sent"] + sent["failed"] == 1, sent
    with setup.store() as store:
        assert store.inbox_count() == 1
    stop(after)


# ------------------------------------------------------------ two daemons behind a balancer


class Balancer:
    """A load balancer in front of two daemons: each signed delivery goes to the next daemon
    in turn, and every third one is then sent again to the other daemon too (a redelivery
    landing elsewhere). The sender gets the first daemon's answer; 503 while the daemons are
    not known yet."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.answers: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._count = 0
        self.client = httpx.Client(timeout=15)
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("content-type", "api-timestamp", "api-signature")
                }
                status = balancer.forward(self.path, headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            if len(self.targets) < 2:
                return 503
            if "api-signature" not in {k.lower() for k in headers}:
                turn = 0  # HCP's verification ping: to the first daemon, out of turn
            else:
                turn = self._count
                self._count += 1
        first, other = self.targets[turn % 2], self.targets[(turn + 1) % 2]
        plan = [first, other] if turn % 3 == 2 else [first]
        statuses = []
        for target in plan:
            try:
                status = self.client.post(target + path, content=body, headers=headers).status_code
            except httpx.HTTPError:
                status = 502
            statuses.append(status)
            with self._lock:
                self.answers.append((target, status))
        return statuses[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


def deliveries(url: str, outcome: str) -> float:
    """``syncengine_webhook_deliveries_total`` of the ``hcp`` connector for ``outcome``, from
    a daemon's ``/metrics``."""
    series = f'syncengine_webhook_deliveries_total{{connector="hcp",outcome="{outcome}"}} '
    text = httpx.get(f"{url}/metrics", timeout=10).raise_for_status().text
    found = [line for line in text.splitlines() if line.startswith(series)]
    return float(found[0].removeprefix(series)) if found else 0.0


def test_two_daemons_on_postgresql_take_each_event_in_exactly_one_run(
    tmp_path: Path, pg_url: str
) -> None:
    balancer = Balancer()
    hcp = start_hcp(tmp_path, balancer.url + PATH, seed=14)
    setup = Rig(tmp_path, hcp, tmp_path / "config.toml", pg_url, 0)
    setup.write_config(debounce=0.5)
    try:
        # one daemon makes the scheduled run at the start; the other, started after it,
        # finds that run recent and waits an hour for its own
        for _ in range(2):
            daemon = DaemonProcess(setup.config, http=True)
            setup.daemons.append(daemon)
            daemon.wait_event("daemon started", WAIT)
            if len(setup.daemons) == 1:
                first = daemon.wait_event("run finished", WAIT, trigger="schedule")
                assert first["outcome"] == "ok", daemon.text()[-4000:]
        urls = [d.url for d in setup.daemons]
        balancer.targets = urls

        # two bursts of five edits: in each, both daemons get events within moments of each
        # other, so their event-driven runs come due together and contend for the lease
        customers = setup.hcp.with_email()[:10]
        edits = {c["email"]: f"Balanced{i}" for i, c in enumerate(customers)}
        for burst in (customers[:5], customers[5:]):
            for customer in burst:
                setup.hcp.put(customer["id"], {"first_name": edits[customer["email"]]})

            def arrived(burst: list[dict[str, Any]] = burst) -> bool:
                return all(
                    (setup.row(c["email"]) or {}).get("First Name") == edits[c["email"]]
                    for c in burst
                )

            wait_until(
                arrived,
                WAIT,
                "the edits to reach the CSV",
                lambda: "\n".join(d.text()[-3000:] for d in setup.daemons),
            )
        counts = setup.delivered()
        assert (counts["sent"], counts["dropped"], counts["failed"]) == (10, 0, 0), counts
        setup.settled()
        # each daemon made the pipeline due: a run it found held by the other was tried
        # again after it, so each ends with a run of its own
        for daemon in setup.daemons:
            daemon.wait_event("run finished", WAIT, trigger="webhook")
        # each daemon stored some deliveries and was handed some as a redelivery
        assert all(deliveries(u, "stored") > 0 for u in urls), balancer.answers
        assert sum(deliveries(u, "duplicate") for u in urls) == 3, balancer.answers
        assert all(status == 200 for _, status in balancer.answers), balancer.answers
        for daemon in setup.daemons:  # from here on, the logs and the store are final
            stop(daemon)

        event_ids, done = inbox_tables(setup)
        assert len(event_ids) == 10, event_ids  # the redeliveries were stored once
        taken = collections.Counter(d["event_id"] for d in done if d["pipeline"] == PIPELINE)
        assert taken == dict.fromkeys(event_ids, 1), (taken, event_ids)
        assert {d["pipeline"] for d in done} == {PIPELINE}
        runs = setup.runs()
        assert all(r.finished_at for r in runs), runs
        outcomes = {r.run_uuid: r.outcome for r in runs}
        assert all(outcomes.get(d["run_id"]) == "ok" for d in done), (done, runs)
        assert_no_overlap(runs)
        logged = [e for d in setup.daemons for e in d.events() if e.get("event") == "run finished"]
        assert sorted(e["run_id"] for e in logged) == sorted(outcomes), (logged, runs)
        # no run took an event another run had taken: the events taken add up to the inbox
        took = [
            e["events"]
            for d in setup.daemons
            for e in d.events()
            if e.get("event") == "webhook events taken"
        ]
        assert sum(took) == len(event_ids), took
    finally:
        for daemon in setup.daemons:
            daemon.stop()
        with contextlib.suppress(Exception):
            hcp.close()
        balancer.close()
