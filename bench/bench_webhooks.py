"""Benchmark: Housecall Pro webhooks (issue 13) — latency, the receiver's throughput, and the
requests a quiet hour costs.

A benchmark, not a test: it measures and prints, it never asserts on time. See
``bench/README.md`` ("Issue 13: webhooks") for how to run it and how to read what it prints.
Every server it starts (the sandbox, the daemon) is a real process in a process group of its
own, stopped when its part ends, also on an error or Ctrl-C.

Three parts, each runnable alone::

    python bench/bench_webhooks.py latency    # edit in HCP -> row in the CSV (p50/p95/max)
    python bench/bench_webhooks.py receiver   # signed deliveries/s to the daemon (p99, none lost)
    python bench/bench_webhooks.py requests   # requests per quiet hour at 10 000 customers
    python bench/bench_webhooks.py all        # the three, one after another

- **latency**: ``syncengine sandbox --seed N --webhook-url ... --webhook-secret ...`` and
  ``syncengine daemon --http`` (HCP with ``webhook_secret``, a CSV ``books``, customers,
  ``schedule = "every 1h"``). After the daemon's first full sync, edits go through the API at
  random moments (exponential gaps, seeded), each to a different customer with a unique
  ``company``; each is timed from the moment its ``PUT`` returned to the moment a poll of
  the CSV (every 20 ms, parsed with ``csv``) shows the value. One row per case
  ``rate_limit:debounce``.
- **receiver**: a daemon on loopback takes ``--rate`` signed ``customer.updated`` deliveries
  per second for ``--seconds``, sent open-loop (each at its fixed moment, from a pool of
  threads with a keep-alive connection each); time to the answer of each, and afterwards the
  inbox must hold exactly one event per delivery. Rows: no sync competing (schedule and
  debounce far away) and event-driven runs going on (debounce 2 s), on SQLite and, when a
  local PostgreSQL answers, on PostgreSQL.
- **requests**: the sandbox's own request log over passes of the real CLI, at 10 000
  customers: one no-change full pass, the incremental mode's complete and partial passes,
  and the webhook mode's hourly safety net (``daemon --once --force``) and a quiet window of
  a serving daemon; per hour for every 15 min full, every 15 min incremental, and webhooks
  with an hourly incremental safety net.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import importlib
import itertools
import json
import math
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for testbed

from bench_sync import environment  # bench/, the script's own folder

from syncengine.connectors.housecallpro.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from syncengine.state import StateStore
from syncengine.state.schema import inbox, inbox_done
from testbed.processes import ServerProcess, free_port
from testbed.sandbox import start_sandbox, syncengine_command

API_KEY = "bench-webhooks-api-key"
SECRET = "bench-webhooks-signing-secret"
PIPELINE = "hcp-books"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"
"""Where a PostgreSQL state store is created for the receiver's PostgreSQL rows (as the tests
do: ``tests/conftest.py``)."""
P50_TARGET_S, P95_TARGET_S = 2.0, 5.0
P99_RECEIVER_TARGET_MS = 100.0


def say(text: str = "") -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------- helpers


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1), interpolated between the closest ranks; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def verdict(value: float, target: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "met" if value <= target else "NOT met"


def write_config(
    folder: Path,
    *,
    sandbox_url: str,
    state_url: str,
    rate_limit: float,
    schedule: str,
    debounce: float = 2.0,
    webhook_secret: bool = True,
    incremental: bool = False,
    name: str = "config.toml",
) -> Path:
    """A config: ``hcp`` (the sandbox; default ``page_size``), ``books`` a CSV folder, one
    pipeline over customers with conflicts going to HCP."""
    hcp_extra = ""
    if webhook_secret:
        hcp_extra += f'webhook_secret = "{SECRET}"\n'
    if incremental:
        hcp_extra += 'incremental = ["customers"]\nfull_every_hours = 24\n'
    text = textwrap.dedent(
        f"""\
        [state]
        url = "{state_url}"

        [daemon]
        schedule = "{schedule}"
        webhook_debounce = {debounce}

        [connectors.hcp]
        type = "housecallpro"
        base_url = "{sandbox_url}"
        api_key = "{API_KEY}"
        rate_limit = {rate_limit}
        """
    )
    text += hcp_extra
    text += textwrap.dedent(
        f"""
        [connectors.books]
        type = "spreadsheet"
        path = "{(folder / "books").as_posix()}"

        [[pipelines]]
        name = "{PIPELINE}"
        members = ["hcp", "books"]
        entities = ["customers"]

        [pipelines.conflicts]
        default = ["hcp"]
        """
    )
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def child_env() -> dict[str, str]:
    """The environment of the processes started here: no HCP credentials of the caller's."""
    return {k: v for k, v in os.environ.items() if k not in ("HCP_API_KEY", "HCP_WEBHOOK_SECRET")}


def start_daemon(folder: Path, config: Path, port: int) -> ServerProcess:
    """``syncengine daemon -c CONFIG --http 127.0.0.1:PORT``, in its own process group, ready
    once the port accepts connections."""
    command = [
        *syncengine_command(),
        "daemon",
        "-c",
        str(config),
        "--http",
        f"127.0.0.1:{port}",
        "--log-level",
        "info",
    ]
    server = ServerProcess(
        command,
        name="bench-daemon",
        port=port,
        timeout=60,
        stop_timeout=15,
        env=child_env(),
        cwd=folder,
    )
    return server.start()


def wait_first_sync(daemon: ServerProcess, timeout: float = 300.0) -> float:
    """Wait until ``/healthz`` shows a successful run of the pipeline; seconds waited."""
    started = time.perf_counter()
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                body = client.get("/healthz").json()
                if body["pipelines"][PIPELINE]["last_success"]:
                    return time.perf_counter() - started
            if not daemon.running():
                raise RuntimeError(f"the daemon exited:\n{daemon.output()[-3000:]}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"no successful run after {timeout:.0f}s")
            time.sleep(0.1)


def wait_idle(daemon: ServerProcess, timeout: float = 120.0) -> None:
    """Wait until the daemon runs nothing and has nothing due (``/healthz``)."""
    deadline = time.perf_counter() + timeout
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                body = client.get("/healthz").json()
                if not body["pipelines"][PIPELINE]["running"]:
                    return
            time.sleep(0.2)


def metric(daemon: ServerProcess, name: str, labels: str = "") -> float:
    """The sum of a Prometheus counter's samples (whose labels contain ``labels``)."""
    text = httpx.get(f"{daemon.url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith(name)
            and line[len(name) : len(name) + 1] in ("{", " ")
            and labels in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (others skipped)."""
    out = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def event_runs(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """What the daemon's log says of its event-driven runs: how many finished, by outcome,
    their seconds, and the events each took."""
    finished = [
        x for x in lines if x.get("event") == "run finished" and x.get("trigger") == "webhook"
    ]
    taken = [
        int(x.get("events", 0))
        for x in lines
        if x.get("event") == "webhook events taken" and x.get("trigger") == "webhook"
    ]
    seconds = [float(x["seconds"]) for x in finished if x.get("seconds") is not None]
    return {
        "runs": len(finished),
        "outcomes": dict(Counter(str(x.get("outcome")) for x in finished)),
        "run_s_p50": round(quantile(seconds, 0.5), 3),
        "run_s_max": round(max(seconds), 3) if seconds else math.nan,
        "events_per_run": round(statistics.fmean(taken), 1) if taken else 0.0,
        "scheduled_runs": sum(
            1 for x in lines if x.get("event") == "run finished" and x.get("trigger") == "schedule"
        ),
    }


def customers_of(sandbox_url: str) -> list[dict[str, Any]]:
    """Every customer of the sandbox, read through its API (200 a page)."""
    out: list[dict[str, Any]] = []
    headers = {"Authorization": f"Token {API_KEY}"}
    with httpx.Client(base_url=sandbox_url, headers=headers, timeout=30) as client:
        for page in itertools.count(1):
            body = client.get("/customers", params={"page": page, "page_size": 200}).json()
            out += body["customers"]
            if page >= int(body.get("total_pages") or 0):
                return out


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (dropped afterwards) as a state store
    URL, or None when there is no server (or no psycopg)."""
    try:
        import psycopg
    except ImportError:
        yield None
        return
    name = f"bench_webhooks_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        yield None
        return
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------------- 1. latency


class CsvWatch:
    """Polls ``customers.csv`` every ``every`` seconds from a thread of its own, re-reading
    it only when its size, time or inode changed, and remembers the moment each wanted
    ``Company`` value first appeared. A file caught half-written (or a row cut short) only
    lacks values, and a cut value never equals a wanted one (all have the same length)."""

    def __init__(self, path: Path, wanted: set[str], every: float = 0.02) -> None:
        self.path = path
        self.wanted = wanted
        self.every = every
        self.seen: dict[str, float] = {}
        self.reads = 0
        self.unreadable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="csv-watch", daemon=True)

    def __enter__(self) -> CsvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last: tuple[int, int, int] | None = None
        while not self._stop.wait(self.every):
            now = time.perf_counter()
            try:
                st = os.stat(self.path)
            except OSError:
                continue
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if signature == last:
                continue
            try:
                with self.path.open(newline="", encoding="utf-8") as handle:
                    rows = list(csv.reader(handle))
            except (OSError, UnicodeDecodeError, csv.Error):
                self.unreadable += 1
                continue  # read it again at the next poll
            last = signature
            self.reads += 1
            if not rows:
                continue
            try:
                column = rows[0].index("Company")
            except ValueError:
                self.unreadable += 1
                last = None
                continue
            for row in rows[1:]:
                if len(row) > column:
                    value = row[column]
                    if value in self.wanted and value not in self.seen:
                        self.seen[value] = now


@dataclass
class LatencyCase:
    rate_limit: float
    debounce: float
    edits: int
    customers: int
    seen: int = 0
    latencies_s: list[float] = field(default_factory=list)
    delivery_s: list[float] = field(default_factory=list)
    """PUT returned -> the daemon stored the event (its inbox ``received_at``)."""
    stored_to_done_s: list[float] = field(default_factory=list)
    """Stored -> the run that took it committed (``inbox_done.done_at``)."""
    put_s: list[float] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)
    webhook_runs_metric: float = 0.0
    sandbox_webhooks: dict[str, Any] = field(default_factory=dict)
    daemon_requests: dict[str, int] = field(default_factory=dict)
    """What the daemon asked the sandbox while the edits went on (the edits' PUTs aside)."""
    first_sync_s: float = 0.0
    csv_reads: int = 0
    load: str = ""

    @property
    def label(self) -> str:
        return f"rate_limit {self.rate_limit:g}, debounce {self.debounce:g} s"

    def stat(self, q: float) -> float:
        return quantile(self.latencies_s, q)


def latency_case(
    tmp: Path, customers: int, edits: int, mean_gap: float, rate: float, debounce: float, seed: int
) -> LatencyCase:
    folder = Path(tempfile.mkdtemp(prefix="latency-", dir=tmp))
    case = LatencyCase(rate, debounce, edits, customers)
    case.load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    port = free_port()
    hook = f"http://127.0.0.1:{port}/webhooks/hcp/hcp"
    flags = ["--webhook-url", hook, "--webhook-secret", SECRET]
    state_url = f"sqlite:///{(folder / 'state.db').as_posix()}"
    with start_sandbox(api_key=API_KEY, seed=customers, flags=flags, workdir=folder) as sandbox:
        config = write_config(
            folder,
            sandbox_url=sandbox.url,
            state_url=state_url,
            rate_limit=rate,
            schedule="every 1h",
            debounce=debounce,
        )
        with start_daemon(folder, config, port) as daemon:
            case.first_sync_s = round(wait_first_sync(daemon), 2)
            csv_path = folder / "books" / "customers.csv"
            rng = random.Random(seed)
            ids = sorted(c["id"] for c in customers_of(sandbox.url))
            chosen = rng.sample(ids, min(edits, len(ids)))  # one edit per customer
            gaps = [rng.expovariate(1.0 / mean_gap) for _ in chosen]
            tag = uuid.uuid4().hex[:6]
            markers = [f"WH13 {tag} {n:04d}" for n in range(len(chosen))]
            runs_before = metric(daemon, "syncengine_webhook_runs_total")
            log = RequestLog(sandbox.url)
            log.clear()
            put_at: dict[str, float] = {}
            put_wall: dict[str, float] = {}
            headers = {"Authorization": f"Token {API_KEY}"}
            with (
                CsvWatch(csv_path, set(markers)) as watch,
                httpx.Client(base_url=sandbox.url, headers=headers, timeout=30) as api,
            ):
                start = time.perf_counter()
                moment = start
                for customer_id, marker, gap in zip(chosen, markers, gaps, strict=True):
                    moment += gap
                    pause = moment - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    sent = time.perf_counter()
                    response = api.put(f"/customers/{customer_id}", json={"company": marker})
                    response.raise_for_status()
                    put_at[marker] = time.perf_counter()
                    put_wall[marker] = time.time()
                    case.put_s.append(put_at[marker] - sent)
                deadline = time.perf_counter() + 60 + debounce
                while len(watch.seen) < len(markers) and time.perf_counter() < deadline:
                    time.sleep(0.1)
            case.csv_reads = watch.reads
            case.seen = len(watch.seen)
            case.latencies_s = [watch.seen[m] - put_at[m] for m in markers if m in watch.seen]
            wait_idle(daemon)
            taken = log.take()
            log.close()
            case.daemon_requests = {
                route: count
                for route, count in taken["routes"].items()
                if route != "PUT /customers"
            }
            case.webhook_runs_metric = metric(daemon, "syncengine_webhook_runs_total") - runs_before
            case.sandbox_webhooks = httpx.get(f"{sandbox.url}/_sandbox/webhooks", timeout=5).json()
            case.delivery_s, case.stored_to_done_s = inbox_times(state_url, put_wall)
        case.runs = event_runs(log_lines(daemon))
    return case


def inbox_times(state_url: str, put_wall: dict[str, float]) -> tuple[list[float], list[float]]:
    """From the inbox: per edit, PUT returned -> stored, and stored -> taken by a run."""
    engine = sa.create_engine(state_url)
    delivery, waiting = [], []
    try:
        with engine.connect() as conn:
            query = sa.select(inbox.c.payload, inbox.c.received_at, inbox_done.c.done_at).join(
                inbox_done, inbox_done.c.event_id == inbox.c.id, isouter=True
            )
            for payload, received, done in conn.execute(query):
                marker = (payload.get("customer") or {}).get("company")
                if marker not in put_wall:
                    continue
                received_ts = received.replace(tzinfo=dt.UTC).timestamp()
                delivery.append(received_ts - put_wall[marker])
                if done is not None:
                    waiting.append(done.replace(tzinfo=dt.UTC).timestamp() - received_ts)
    finally:
        engine.dispose()
    return delivery, waiting


def render_latency(cases: list[LatencyCase]) -> str:
    head = (
        f"{'case':<32} {'seen':>8} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
        f"{'p50<=2':>7} {'p95<=5':>7} {'event runs':>10} {'ev/run':>6} {'run p50 s':>9} "
        f"{'deliver p50/max s':>17} {'stored->done p50 s':>18} {'load':>12}"
    )
    lines = [head]
    for c in cases:
        p50, p95, top = c.stat(0.5), c.stat(0.95), max(c.latencies_s, default=math.nan)
        runs = f"{c.runs.get('runs', 0)} ({c.webhook_runs_metric:g})"
        deliver = f"{quantile(c.delivery_s, 0.5):.3f}/{max(c.delivery_s, default=math.nan):.3f}"
        lines.append(
            f"{c.label:<32} {f'{c.seen}/{c.edits}':>8} {p50:>6.2f} {p95:>6.2f} {top:>6.2f} "
            f"{verdict(p50, P50_TARGET_S):>7} {verdict(p95, P95_TARGET_S):>7} {runs:>10} "
            f"{c.runs.get('events_per_run', 0):>6} {c.runs.get('run_s_p50', math.nan):>9} "
            f"{deliver:>17} {quantile(c.stored_to_done_s, 0.5):>18.3f} {c.load:>12}"
        )
    lines += [
        "",
        "seen: edits whose value reached the CSV; latency = PUT returned -> a poll of the CSV "
        "(every 20 ms) shows it.",
        "event runs: event-driven runs that finished (daemon log), in brackets "
        "syncengine_webhook_runs_total; ev/run: events each took.",
        "deliver: PUT returned -> event stored in the inbox; stored->done: -> the run that "
        "took it committed.",
    ]
    for c in cases:
        lines.append(
            f"  {c.label}: first full sync {c.first_sync_s} s; PUT p50 "
            f"{quantile(c.put_s, 0.5) * 1000:.1f} ms; outcomes {c.runs.get('outcomes')}; "
            f"scheduled runs {c.runs.get('scheduled_runs')}; sandbox webhooks "
            f"{ {k: c.sandbox_webhooks.get(k) for k in ('sent', 'failed', 'retried')} }; "
            f"CSV parsed {c.csv_reads} times; the daemon's requests to HCP meanwhile "
            f"{c.daemon_requests or 'none'}"
        )
    return "\n".join(lines)


def part_latency(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    cases = []
    for spec in args.case:
        rate_text, _, debounce_text = spec.partition(":")
        rate, debounce = float(rate_text), float(debounce_text or 2)
        say(f"latency: rate_limit {rate:g}, debounce {debounce:g} s, {args.edits} edits ...")
        case = latency_case(
            tmp, args.latency_customers, args.edits, args.mean_gap, rate, debounce, args.seed
        )
        say(
            f"  seen {case.seen}/{case.edits}; p50 {case.stat(0.5):.2f} s, p95 "
            f"{case.stat(0.95):.2f} s, max {max(case.latencies_s, default=math.nan):.2f} s; "
            f"{case.runs.get('runs')} event-driven runs"
        )
        cases.append(case)
    say()
    say(
        f"Latency, edit in HCP -> row in the CSV ({args.latency_customers} customers, "
        f"{args.edits} edits, mean gap {args.mean_gap:g} s; targets p50 <= {P50_TARGET_S:g} s, "
        f"p95 <= {P95_TARGET_S:g} s)"
    )
    say(render_latency(cases))
    return {"cases": [asdict(c) | {"label": c.label} for c in cases]}


# ----------------------------------------------------------------------------- 2. receiver


@dataclass
class ReceiverRow:
    state: str
    kind: str
    """quiet (no sync competes) or busy (event-driven runs, debounce 2 s)."""
    debounce: float
    rate: float
    seconds: float
    sent: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    achieved_rate: float = 0.0
    answered_rate: float = 0.0
    from_scheduled_ms: dict[str, float] = field(default_factory=dict)
    from_sent_ms: dict[str, float] = field(default_factory=dict)
    client_lag_ms_max: float = 0.0
    inbox: int = -1
    stored_metric: float = 0.0
    refused_metric: float = 0.0
    runs: dict[str, Any] = field(default_factory=dict)
    load: str = ""

    @property
    def label(self) -> str:
        what = (
            "quiet: no sync competes"
            if self.kind == "quiet"
            else f"busy: event-driven runs (debounce {self.debounce:g} s)"
        )
        return f"{self.state}, {what}"

    @property
    def lost(self) -> int:
        return self.sent - min(self.ok, self.inbox)


def build_deliveries(customers: list[dict[str, Any]], count: int) -> list[tuple[bytes, dict]]:
    """``count`` signed ``customer.updated`` deliveries, each body distinct (a new company
    per delivery), the record whole and recent: what the sandbox sends."""
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    stamp = str(int(time.time()))
    tag = uuid.uuid4().hex[:6]
    out = []
    for n in range(count):
        record = dict(customers[n % len(customers)])
        record["company"] = f"load {tag} {n}"
        record["updated_at"] = now
        payload = {
            "event": "customer.updated",
            "event_occurred_at": now,
            "company_id": "00000000-0000-4000-8000-000000000013",
            "customer": record,
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(SECRET, stamp, body),
        }
        out.append((body, headers))
    return out


def blast(
    url: str, deliveries: list[tuple[bytes, dict]], rate: float, workers: int
) -> list[tuple[float, float, float, int]]:
    """Send each delivery at its own moment (``n / rate`` after the start), whatever the
    answers before it: (scheduled, sent, answered, status) per delivery, perf_counter
    seconds; status -1 for a connection error or a timeout. ``workers`` clients, made and
    connected (``GET /healthz``) before the start, each with one keep-alive connection: at
    most that many deliveries are on the wire at once, and a delivery that finds them all
    busy waits for one (it shows as the client's lag)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    idle: queue.SimpleQueue[httpx.Client] = queue.SimpleQueue()
    clients = [httpx.Client(timeout=30, limits=limits) for _ in range(workers)]
    results: list[tuple[float, float, float, int]] = [(0.0, 0.0, 0.0, 0)] * len(deliveries)
    health = url.split("/webhooks/", 1)[0] + "/healthz"

    def send(n: int, scheduled: float) -> None:
        body, headers = deliveries[n]
        client = idle.get()
        started = time.perf_counter()
        try:
            status = client.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError:
            status = -1
        results[n] = (scheduled, started, time.perf_counter(), status)
        idle.put(client)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="sender")
    try:
        for c in clients:
            c.get(health)  # the connection open before the clock starts
            idle.put(c)
        start = time.perf_counter() + 0.2
        futures = []
        for n in range(len(deliveries)):
            scheduled = start + n / rate
            pause = scheduled - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            futures.append(pool.submit(send, n, scheduled))
        for future in futures:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for c in clients:
            c.close()
    return results


def receiver_row(
    tmp: Path, state: str, state_url: str, kind: str, args: argparse.Namespace
) -> ReceiverRow:
    folder = Path(tempfile.mkdtemp(prefix=f"receiver-{kind}-", dir=tmp))
    quiet = kind == "quiet"
    debounce = 3600.0 if quiet else 2.0
    row = ReceiverRow(state, kind, debounce, args.rate, args.seconds)
    with start_sandbox(api_key=API_KEY, seed=args.receiver_customers, workdir=folder) as sandbox:
        config = write_config(
            folder,
            sandbox_url=sandbox.url,
            state_url=state_url,
            rate_limit=0,
            schedule="every 24h" if quiet else "every 1h",
            debounce=debounce,
        )
        with start_daemon(folder, config, free_port()) as daemon:
            wait_first_sync(daemon)
            deliveries = build_deliveries(
                customers_of(sandbox.url), round(args.rate * args.seconds)
            )
            row.load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            results = blast(f"{daemon.url}/webhooks/hcp/hcp", deliveries, args.rate, args.workers)
            if not quiet:
                time.sleep(debounce + 0.5)
                wait_idle(daemon)
            row.stored_metric = metric(
                daemon, "syncengine_webhook_deliveries_total", 'outcome="stored"'
            )
            row.refused_metric = metric(daemon, "syncengine_webhook_refused_total")
            store = StateStore.open(state_url, create=False)
            try:
                row.inbox = store.inbox_count()
            finally:
                store.close()
        row.runs = event_runs(log_lines(daemon))
    row.sent = len(results)
    row.statuses = dict(Counter(str(r[3]) for r in results))
    row.ok = sum(1 for r in results if 200 <= r[3] < 300)
    starts = [r[1] for r in results]
    row.achieved_rate = round((len(starts) - 1) / (max(starts) - min(starts)), 1)
    row.answered_rate = round(len(results) / (max(r[2] for r in results) - min(starts)), 1)
    from_scheduled = [(r[2] - r[0]) * 1000 for r in results]
    from_sent = [(r[2] - r[1]) * 1000 for r in results]
    for into, values in ((row.from_scheduled_ms, from_scheduled), (row.from_sent_ms, from_sent)):
        into.update(
            {
                "p50": round(quantile(values, 0.5), 2),
                "p99": round(quantile(values, 0.99), 2),
                "max": round(max(values), 2),
            }
        )
    row.client_lag_ms_max = round(max((r[1] - r[0]) * 1000 for r in results), 2)
    return row


def render_receiver(rows: list[ReceiverRow]) -> str:
    head = (
        f"{'case':<52} {'sent':>5} {'2xx':>5} {'inbox':>5} {'lost':>4} {'rate/s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} {'p99<=100':>8} "
        f"{'sent->2xx p99':>13} {'p99<=100':>8} {'lag max ms':>10} {'runs':>4} {'load':>12}"
    )
    lines = [head]
    for r in rows:
        p99 = r.from_scheduled_ms["p99"]
        lines.append(
            f"{r.label:<52} {r.sent:>5} {r.ok:>5} {r.inbox:>5} {r.lost:>4} "
            f"{r.achieved_rate:>7} {r.from_scheduled_ms['p50']:>7} {p99:>7} "
            f"{r.from_scheduled_ms['max']:>8} {verdict(p99, P99_RECEIVER_TARGET_MS):>8} "
            f"{r.from_sent_ms['p99']:>13} "
            f"{verdict(r.from_sent_ms['p99'], P99_RECEIVER_TARGET_MS):>8} "
            f"{r.client_lag_ms_max:>10} "
            f"{r.runs.get('runs', 0):>4} {r.load:>12}"
        )
    lines += [
        "",
        "p50/p99/max: scheduled send moment -> answer (open loop: a slow answer does not "
        "delay later sends); sent->2xx: from the moment the request actually left;",
        "lag max: how late the client sent its latest delivery; lost: deliveries not both "
        "answered 2xx and in the inbox; runs: event-driven runs that finished.",
    ]
    for r in rows:
        lines.append(
            f"  {r.label}: statuses {r.statuses}; answered {r.answered_rate}/s; stored "
            f"(metric) {r.stored_metric:g}, refused {r.refused_metric:g}; runs {r.runs}"
        )
    return "\n".join(lines)


def part_receiver(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rows: list[ReceiverRow] = []

    def one(state: str, url: str, kind: str) -> None:
        say(f"receiver: {state}, {kind}: {args.rate:g}/s for {args.seconds:g} s ...")
        row = receiver_row(tmp, state, url, kind, args)
        say(
            f"  {row.ok}/{row.sent} answered 2xx, inbox {row.inbox}; p99 "
            f"{row.from_scheduled_ms['p99']} ms, max {row.from_scheduled_ms['max']} ms"
        )
        rows.append(row)

    for kind in ("quiet", "busy"):
        folder = Path(tempfile.mkdtemp(prefix="sqlite-", dir=tmp))
        one("SQLite", f"sqlite:///{(folder / 'state.db').as_posix()}", kind)
    if args.postgres:
        for kind in ("quiet", "busy"):
            with postgres_database() as url:
                if url is None:
                    say("receiver: no PostgreSQL on 127.0.0.1:5432: its rows are left out")
                    break
                one("PostgreSQL", url, kind)
    say()
    say(
        f"Receiver throughput ({args.rate:g} signed deliveries/s for {args.seconds:g} s, "
        f"{args.workers} sender threads; target p99 <= {P99_RECEIVER_TARGET_MS:g} ms, "
        "none lost)"
    )
    say(render_receiver(rows))
    return {"rows": [asdict(r) | {"label": r.label, "lost": r.lost} for r in rows]}


# ----------------------------------------------------------------------------- 3. requests


class RequestLog:
    """The sandbox's request log: cleared, then counted by route and status."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def clear(self) -> None:
        self.http.delete("/_sandbox/requests").raise_for_status()

    def take(self) -> dict[str, Any]:
        entries = self.http.get("/_sandbox/requests").json()["requests"]
        self.clear()
        routes: Counter[str] = Counter()
        for entry in entries:
            sort = "newest first" if "sort_direction=desc" in entry.get("query", "") else ""
            head = str(entry["path"]).strip("/").split("/", 1)[0]
            routes[f"{entry['method']} /{head}{' ' + sort if sort else ''}"] += 1
        statuses = Counter(str(e["status"]) for e in entries)
        return {"total": len(entries), "routes": dict(routes), "statuses": dict(statuses)}

    def close(self) -> None:
        self.http.close()


@dataclass
class Pass:
    what: str
    requests: int
    routes: dict[str, int]
    statuses: dict[str, int]
    seconds: float
    planned: dict[str, int]


def run_cli(argv: list[str], folder: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        argv, cwd=folder, env=child_env(), capture_output=True, text=True, timeout=1800
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n"
            f"{done.stderr[-3000:]}"
        )
    return seconds, done.stdout


def planned_of(stdout: str) -> dict[str, int]:
    """Non-zero action counts from ``syncengine sync --json``."""
    start = stdout.find("{")
    result = json.loads(stdout[start:]) if start >= 0 else {}
    if isinstance(result, list):
        result = result[0] if result else {}
    actions: Counter[str] = Counter()
    for entity in result.get("entities", {}).values():
        for member, counts in entity.items():
            if isinstance(counts, dict) and member != "read":
                for op, count in counts.items():
                    if isinstance(count, int) and count:
                        actions[f"{member}.{op}"] += count
        for key in ("conflicts", "errors", "skipped", "failed"):
            if entity.get(key):
                actions[key] += int(entity[key])
    return dict(actions)


def measured_sync(log: RequestLog, folder: Path, config: Path, what: str) -> Pass:
    log.clear()
    seconds, out = run_cli(
        [*syncengine_command(), "sync", "-c", str(config), "--json", "-q"], folder
    )
    taken = log.take()
    result = Pass(what, taken["total"], taken["routes"], taken["statuses"], round(seconds, 2), {})
    result.planned = planned_of(out)
    say(f"  {what}: {result.requests} requests {result.routes}, {seconds:.2f} s")
    return result


def incremental_available() -> str | None:
    """None when the HCP connector has the option ``incremental``, else why not."""
    try:
        from syncengine.connectors.housecallpro.connector import HousecallProOptions

        importlib.import_module("syncengine.connectors.housecallpro.incremental")
    except ImportError as exc:
        return f"cannot import it: {exc}"
    if "incremental" not in HousecallProOptions.model_fields:
        return "HousecallProOptions has no field incremental"
    return None


def part_requests(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="requests-", dir=tmp))
    state_url = f"sqlite:///{(folder / 'state.db').as_posix()}"
    passes: dict[str, Pass] = {}
    quiet: dict[str, Any] = {}
    missing = incremental_available()
    n = args.customers
    say(f"requests: seeding the sandbox with {n} customers ...")
    with start_sandbox(api_key=API_KEY, seed=n, workdir=folder, timeout=300) as sandbox:
        log = RequestLog(sandbox.url)
        try:

            def config(name: str, **options: Any) -> Path:
                settings: dict[str, Any] = {
                    "sandbox_url": sandbox.url,
                    "state_url": state_url,
                    "rate_limit": 0,
                    "schedule": "every 15m",
                    "webhook_secret": False,
                } | options
                return write_config(folder, name=name, **settings)

            full = config("full.toml")
            passes["initial"] = measured_sync(log, folder, full, "initial full sync")
            passes["full"] = measured_sync(log, folder, full, "no-change full pass")
            if missing is None:
                inc = config("incremental.toml", incremental=True)
                passes["complete"] = measured_sync(
                    log, folder, inc, "incremental mode, complete pass (no change)"
                )
                for k in range(args.partial_repeats):
                    passes[f"partial{k}"] = measured_sync(
                        log, folder, inc, f"incremental mode, partial pass {k + 1} (no change)"
                    )
            hooks = config(
                "webhooks.toml",
                incremental=missing is None,
                webhook_secret=True,
                schedule="every 1h",
            )
            # a serving daemon in a quiet window: its last run is minutes old, so nothing
            # is due for an hour, and no event arrives
            port = free_port()
            with start_daemon(folder, hooks, port) as daemon:
                time.sleep(1.0)
                log.clear()
                time.sleep(args.quiet_seconds)
                taken = log.take()
                quiet = {
                    "seconds": args.quiet_seconds,
                    "requests": taken["total"],
                    "routes": taken["routes"],
                    "event_runs": metric(daemon, "syncengine_webhook_runs_total"),
                    "runs": len([x for x in log_lines(daemon) if x.get("event") == "run finished"]),
                }
            say(
                f"  webhook mode, serving daemon, quiet {args.quiet_seconds:g} s: "
                f"{quiet['requests']} requests, {quiet['runs']} runs"
            )
            log.clear()
            seconds, _ = run_cli(
                [*syncengine_command(), "daemon", "-c", str(hooks), "--once", "--force"], folder
            )
            taken = log.take()
            passes["safety"] = Pass(
                "webhook mode, hourly safety net (daemon --once --force)",
                taken["total"],
                taken["routes"],
                taken["statuses"],
                round(seconds, 2),
                {},
            )
            say(f"  {passes['safety'].what}: {taken['total']} requests {taken['routes']}")
            if not args.no_slow:
                slow = config("slow.toml", rate_limit=2)
                passes["slow"] = measured_sync(
                    log, folder, slow, "no-change full pass at rate_limit = 2"
                )
        finally:
            log.close()
    report = requests_report(passes, quiet, missing, n)
    say()
    say(render_requests(report))
    return report


def requests_report(
    passes: dict[str, Pass], quiet: dict[str, Any], missing: str | None, n: int
) -> dict[str, Any]:
    full = passes["full"].requests
    rows: list[dict[str, Any]] = [
        {
            "mode": "(a) full pass every 15 min",
            "per_hour": 4 * full,
            "how": f"4 x {full}",
        }
    ]
    safety = passes["safety"].requests
    if missing is None:
        complete = passes["complete"].requests
        partials = [p.requests for k, p in passes.items() if k.startswith("partial")]
        partial = statistics.median(partials)
        rows.append(
            {
                "mode": "(b) incremental every 15 min, complete pass every 24 h",
                "per_hour": round((95 * partial + complete) / 24, 2),
                "how": f"(95 x {partial:g} + 1 x {complete}) / 24",
            }
        )
        rows.append(
            {
                "mode": "(c) webhooks, incremental safety net every 1 h, no events",
                "per_hour": round((23 * safety + complete) / 24 + quiet["requests"], 2),
                "how": f"(23 x {safety} + 1 x {complete}) / 24 + {quiet['requests']} between",
            }
        )
    else:
        rows.append(
            {
                "mode": "(c) webhooks, full safety net every 1 h, no events",
                "per_hour": safety + quiet["requests"],
                "how": f"1 x {safety} + {quiet['requests']} between",
            }
        )
    for row in rows:
        row["ratio_to_a"] = round(row["per_hour"] / rows[0]["per_hour"], 4)
    return {
        "customers": n,
        "incremental_missing": missing,
        "passes": {k: asdict(p) for k, p in passes.items()},
        "quiet_window": quiet,
        "rows": rows,
    }


def render_requests(report: dict[str, Any]) -> str:
    n = report["customers"]
    lines = [
        f"Requests per quiet hour of the HCP member, {n} customers, default page_size "
        "(from the sandbox's request log)",
        f"{'mode':<58} {'requests/h':>10} {'ratio to (a)':>12}  measured as",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['mode']:<58} {row['per_hour']:>10g} {row['ratio_to_a']:>12.4f}  {row['how']}"
        )
    if report["incremental_missing"]:
        lines.append(
            f"(b) left out: incremental mode not available ({report['incremental_missing']})"
        )
    lines.append("")
    for key, p in report["passes"].items():
        bad = {s: c for s, c in p["statuses"].items() if not s.startswith("2")}
        lines.append(
            f"  {p['what']}: {p['requests']} requests {p['routes']}"
            f"{f' NON-2xx {bad}' if bad else ''}, {p['seconds']} s"
            + (f", planned {p['planned'] or 'nothing'}" if key != "safety" else "")
        )
    quiet = report["quiet_window"]
    lines.append(
        f"  serving daemon (webhook mode) in a quiet {quiet['seconds']:g} s window: "
        f"{quiet['requests']} requests, {quiet['runs']} runs"
    )
    if "slow" in report["passes"]:
        slow = report["passes"]["slow"]
        bound = slow["requests"] / 2
        lines.append(
            f"  one no-change full pass at rate_limit = 2: {slow['seconds']} s for "
            f"{slow['requests']} requests (bound requests / rate = {bound:g} s; the CLI's "
            "start included)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["latency", "receiver", "requests", "all"])
    group = parser.add_argument_group("latency")
    group.add_argument("--edits", type=int, default=100, help="edits per case (default 100)")
    group.add_argument(
        "--mean-gap", type=float, default=1.0, help="mean seconds between edits (default 1)"
    )
    group.add_argument(
        "--latency-customers", type=int, default=1000, help="sandbox --seed (default 1000)"
    )
    group.add_argument(
        "--case",
        action="append",
        help="RATE_LIMIT:DEBOUNCE, repeatable (default 0:2, 0:0.5 and 2:2)",
    )
    group.add_argument("--seed", type=int, default=13, help="random seed of the edits")
    group = parser.add_argument_group("receiver")
    group.add_argument("--rate", type=float, default=200.0, help="deliveries/s (default 200)")
    group.add_argument("--seconds", type=float, default=10.0, help="for how long (default 10)")
    group.add_argument("--workers", type=int, default=32, help="sender threads (default 32)")
    group.add_argument(
        "--receiver-customers", type=int, default=1000, help="sandbox --seed (default 1000)"
    )
    group.add_argument(
        "--no-postgres",
        dest="postgres",
        action="store_false",
        help="leave out the PostgreSQL rows",
    )
    group = parser.add_argument_group("requests")
    group.add_argument("--customers", type=int, default=10000, help="sandbox --seed (10000)")
    group.add_argument(
        "--partial-repeats", type=int, default=3, help="partial passes measured (default 3)"
    )
    group.add_argument(
        "--quiet-seconds", type=float, default=20.0, help="quiet window of a serving daemon"
    )
    group.add_argument(
        "--no-slow", action="store_true", help="skip the full pass at rate_limit = 2 (~50 s)"
    )
    parser.add_argument("--out", type=Path, help="also write every number as JSON")
    args = parser.parse_args(argv)
    args.case = args.case or ["0:2", "0:0.5", "2:2"]

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds the with-blocks: every process is stopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    env = environment()
    say(
        f"bench_webhooks {args.part}: {env['commit']}, Python {env['python']}, "
        f"{env['cpus']} CPUs, load {env['load_average']}"
    )
    report: dict[str, Any] = {"environment": env, "argv": sys.argv}
    parts = ["latency", "receiver", "requests"] if args.part == "all" else [args.part]
    runners = {"latency": part_latency, "receiver": part_receiver, "requests": part_requests}
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        for part in parts:
            started = time.perf_counter()
            report[part] = runners[part](args, Path(tmp))
            say(f"({part}: {time.perf_counter() - started:.0f} s)")
            say()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
