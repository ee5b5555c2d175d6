"""Benchmark: the initial HCP -> CSV sync against a sandbox with real latency.

A benchmark, not a test: it measures and prints, it never asserts on time. See
``bench/README.md`` ("Real latency") for how to run it and how to read what it prints.

The sandbox runs as its own process (``syncengine sandbox --seed N --latency-ms L``) on a
loopback port, so every request really waits ``L`` ms on the server's side while this process
is free to work. For each entity set and case, a fresh state store and empty books, then one
initial sync through ``api.sync``:

- with a rate limit (``rate_limit = R``): the bound is ``requests / R``, the time the client's
  rate limit alone makes the requests take; the target is wall time <= 1.1x that bound;
- without one (``rate_limit = 0``), with ``concurrency`` 4 and 1: the floor is the time the
  HCP connector itself takes to read every entity with the same options (no mapping, no
  state, no books); the latency floor is what the round trips alone cost (per list,
  ``1 + ceil((pages - 1) / concurrency)`` waits of ``L``); and the same sync against a
  second sandbox without latency shows how much of the latency still shows through.

``--timeline`` prints, for each case, the pauses between requests longer than the rate
limit's spacing and when each progress step (``reading hcp invoices``, ``applying
payments``) ran: where the waiting is not overlapped, or not there.

``--sequential`` adds each case once more with read-ahead switched off (every list read one
page after another, as before read-ahead existed), for a before/after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import math
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for testbed

from bench_sync import environment  # bench/, the script's own folder

from syncengine import api
from syncengine import logging as sync_logging
from syncengine.config import Config, load_config
from syncengine.connectors.housecallpro.paging import Pager
from testbed.sandbox import start_sandbox

API_KEY = "latency-bench-key"
PAGE_SIZE = 200
"""The sandbox's maximum page size."""
ENTITY_SETS: dict[str, tuple[str, ...]] = {
    "customers": ("customers",),
    "all": ("customers", "invoices", "payments"),
}
LISTED = ("customers", "invoices")
"""HCP lists read page by page (payments come nested in the invoices: no request)."""


# ----------------------------------------------------------------------------- measuring


class Watch(httpx.HTTPTransport):
    """A real transport that counts requests by route and the most in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.routes: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.last_answer = 0.0
        """When the last response came (``time.perf_counter``)."""
        self.sent: list[tuple[float, str]] = []
        """(``time.perf_counter``, path) of every request as it was sent."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.sent.append((time.perf_counter(), request.url.path))
            self.routes[f"{request.method} {request.url.path}"] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return super().handle_request(request)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.last_answer = max(self.last_answer, time.perf_counter())

    @property
    def requests(self) -> int:
        return sum(self.routes.values())


class ReadClock:
    """Seconds the sync spent inside HCP reads, from the engine's progress calls (a read
    starts with ``done == 0`` and ends with ``done == total``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started: dict[str, float] = {}
        self.origin = 0.0
        """When the sync started (``time.perf_counter``)."""
        self.spans: dict[str, list[float]] = {}
        """Every progress step (``reading hcp customers``, ``applying invoices``) -> its first
        and last call (``time.perf_counter``), for ``--timeline``."""

    def progress(self, what: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        span = self.spans.setdefault(what, [now, now])
        span[1] = now
        if not what.startswith("reading hcp "):
            return
        if done == 0 and total is None:
            self._started[what] = now
        elif total is not None and done == total and what in self._started:
            self.seconds += now - self._started.pop(what)

    def stages(self) -> list[dict[str, Any]]:
        """Each progress step's first and last call, in seconds from ``origin``, in order."""
        return [
            {"step": what, "from_s": round(a - self.origin, 2), "to_s": round(b - self.origin, 2)}
            for what, (a, b) in sorted(self.spans.items(), key=lambda kv: kv[1][0])
        ]


@contextlib.contextmanager
def read_ahead(enabled: bool) -> Iterator[None]:
    """With ``enabled`` False, every list is read one page after another (``ahead=False``)
    for the duration: the connector as it read before read-ahead."""
    if enabled:
        yield
        return
    items = Pager.items
    Pager.items = functools.partialmethod(items, ahead=False)  # type: ignore[assignment]
    try:
        yield
    finally:
        Pager.items = items  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- one case


@dataclass
class Case:
    entities: str
    rate_limit: float
    concurrency: int
    ahead: bool
    seconds: float
    cpu_seconds: float
    hcp_read_seconds: float
    after_last_answer: float
    """Seconds from the last response to the sync's end: the work no waiting overlaps."""
    stages: list[dict[str, Any]]
    """Each progress step's first and last call, seconds from the sync's start."""
    gaps: list[dict[str, Any]]
    """Pauses between two requests longer than the rate limit's (or 0.25 s without one)."""
    requests: int
    sandbox_logged: int
    routes: dict[str, int]
    most_in_flight: int
    pages: int
    records: dict[str, int]
    planned_ok: bool
    floor_seconds: float
    """Without a rate limit: the HCP connector's own read of every entity (same options)."""
    latency_floor: float
    """Without a rate limit: the round trips alone (see the module docstring)."""
    instant_seconds: float
    """Without a rate limit: the same sync against the sandbox without latency."""
    instant_read_seconds: float
    """... and the seconds it spent inside HCP reads."""

    @property
    def label(self) -> str:
        limit = f"rate_limit {self.rate_limit:g}" if self.rate_limit else "no rate limit"
        ahead = "" if self.ahead else ", no read-ahead"
        return f"{self.entities}: {limit}, concurrency {self.concurrency}{ahead}"

    @property
    def bound(self) -> float:
        """requests / rate (with a rate limit), else the connector's read floor."""
        return self.requests / self.rate_limit if self.rate_limit else self.floor_seconds

    @property
    def ratio(self) -> float:
        return self.seconds / self.bound if self.bound else float("nan")


def request_gaps(sent: list[tuple[float, str]], origin: float, rate: float) -> list[dict[str, Any]]:
    """Where the requests paused: each pause between two requests' starts longer than the
    rate limit spaces them (1.2 / rate; 0.25 s without a rate limit), with the path of the
    request that ended it. A pause there is waiting the rate limit did not need."""
    longest = 1.2 / rate if rate else 0.25
    ordered = sorted(sent)
    return [
        {"before": path, "at_s": round(at - origin, 2), "seconds": round(at - prev, 2)}
        for (prev, _), (at, path) in itertools.pairwise(ordered)
        if at - prev > longest
    ]


def write_config(
    folder: Path, url: str, entities: tuple[str, ...], rate: float, workers: int
) -> Config:
    listed = ", ".join(f'"{e}"' for e in entities)
    text = textwrap.dedent(
        f"""\
        [state]
        url = "sqlite:///{(folder / "state.db").as_posix()}"

        [connectors.hcp]
        type = "housecallpro"
        base_url = "{url}"
        api_key = "{API_KEY}"
        rate_limit = {rate}
        concurrency = {workers}
        page_size = {PAGE_SIZE}

        [connectors.books]
        type = "spreadsheet"
        path = "{(folder / "books").as_posix()}"

        [[pipelines]]
        name = "bench"
        members = ["hcp", "books"]
        entities = [{listed}]

        [pipelines.conflicts]
        default = ["hcp"]
        """
    )
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def read_floor(config: Config, entities: tuple[str, ...]) -> tuple[float, dict[str, int]]:
    """(seconds, records per entity) of one HCP connector reading every entity in pipeline
    order with the pipeline's options: nothing mapped, hashed or stored."""
    connector = config.make_connector("hcp", {"transport": httpx.HTTPTransport()})
    counts: dict[str, int] = {}
    start = time.perf_counter()
    try:
        for entity in entities:
            counts[entity] = sum(1 for _ in connector.read(entity))
    finally:
        connector.close()
    return time.perf_counter() - start, counts


def sandbox_log(client: httpx.Client, clear: bool = False) -> int:
    count = len(client.get("/_sandbox/requests").json()["requests"])
    if clear:
        client.delete("/_sandbox/requests").raise_for_status()
    return count


def initial_sync(config: Config, clock: ReadClock, watch: Watch) -> tuple[Any, float, float, float]:
    """(the result, wall seconds, CPU seconds of this process, seconds after the last
    response) of one initial sync."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    clock.origin = start
    result = api.sync(
        config, progress=clock.progress, connector_extra={"hcp": {"transport": watch}}
    )
    end = time.perf_counter()
    after = end - watch.last_answer if watch.last_answer else 0.0
    return result[0], end - start, time.process_time() - cpu, after


def instant_sync(url: str, entity_set: str, workers: int) -> tuple[float, float]:
    """(wall seconds, seconds inside HCP reads) of the same initial sync against the sandbox
    without latency."""
    with tempfile.TemporaryDirectory(prefix="syncengine-latency-") as tmp:
        config = write_config(Path(tmp), url, ENTITY_SETS[entity_set], 0.0, workers)
        clock = ReadClock()
        seconds = initial_sync(config, clock, Watch())[1]
        return seconds, clock.seconds


def run_case(
    client: httpx.Client,
    url: str,
    instant_url: str,
    entity_set: str,
    rate: float,
    workers: int,
    ahead: bool,
    latency: float,
) -> Case:
    entities = ENTITY_SETS[entity_set]
    with tempfile.TemporaryDirectory(prefix="syncengine-latency-") as tmp, read_ahead(ahead):
        config = write_config(Path(tmp), url, entities, rate, workers)
        floor_s, counts, instant = 0.0, {}, (0.0, 0.0)
        if not rate:
            floor_s, counts = read_floor(config, entities)
            instant = instant_sync(instant_url, entity_set, workers)
        sandbox_log(client, clear=True)
        watch = Watch()
        clock = ReadClock()
        result, seconds, cpu_seconds, after = initial_sync(config, clock, watch)
        logged = sandbox_log(client, clear=True)
    planned = result.to_json()["entities"]
    created = {e: planned.get(e, {}).get("books", {}).get("create", 0) for e in entities}
    if not counts:
        counts = created
    pages = {e: max(1, math.ceil(counts[e] / PAGE_SIZE)) for e in entities if e in LISTED}
    depth = sum(1 + math.ceil((p - 1) / workers) for p in pages.values())
    ok = result.exit_code == 0 and created == counts and watch.requests == sum(pages.values())
    return Case(
        entities=entity_set,
        rate_limit=rate,
        concurrency=workers,
        ahead=ahead,
        seconds=round(seconds, 3),
        cpu_seconds=round(cpu_seconds, 3),
        hcp_read_seconds=round(clock.seconds, 3),
        after_last_answer=round(after, 3),
        stages=clock.stages(),
        gaps=request_gaps(watch.sent, clock.origin, rate),
        requests=watch.requests,
        sandbox_logged=logged,
        routes=dict(watch.routes),
        most_in_flight=watch.most_in_flight,
        pages=sum(pages.values()),
        records=counts,
        planned_ok=ok,
        floor_seconds=round(floor_s, 3),
        latency_floor=round(depth * latency, 3),
        instant_seconds=round(instant[0], 3),
        instant_read_seconds=round(instant[1], 3),
    )


# ----------------------------------------------------------------------------- printing


def render(case: Case) -> str:
    if case.rate_limit:
        against = (
            f"bound requests/rate = {case.requests}/{case.rate_limit:g} = {case.bound:.2f}s, "
            f"ratio {case.ratio:.3f}x"
        )
    else:
        against = (
            f"floor (connector read) {case.floor_seconds:.2f}s, ratio {case.ratio:.2f}x; "
            f"latency floor {case.latency_floor:.2f}s; without latency {case.instant_seconds:.2f}s"
            f" ({case.seconds / case.instant_seconds:.2f}x), of it in HCP reads "
            f"{case.instant_read_seconds:.2f}s"
        )
    records = ", ".join(f"{n} {e}" for e, n in case.records.items())
    return "\n".join(
        [
            f"{case.label}: {case.seconds:.2f}s wall, {against}",
            f"    requests {case.requests} (sandbox logged {case.sandbox_logged}; list pages "
            f"{case.pages}), most in flight {case.most_in_flight}; records {records}; "
            f"plan as expected: {'yes' if case.planned_ok else 'NO'}",
            f"    inside HCP reads {case.hcp_read_seconds:.2f}s, the rest (books, plan, "
            f"apply, commit) {case.seconds - case.hcp_read_seconds:.2f}s; "
            f"CPU {case.cpu_seconds:.2f}s; after the last response "
            f"{case.after_last_answer:.2f}s",
        ]
    )


def render_timeline(case: Case) -> str:
    """``--timeline``: the pauses between requests, then each progress step's span."""
    lines = [
        f"    pause of {g['seconds']:.2f}s before {g['before']} at {g['at_s']:.2f}s"
        for g in case.gaps
    ] or ["    no pause between requests beyond the rate limit's"]
    lines += [f"    {st['from_s']:7.2f} .. {st['to_s']:7.2f}s  {st['step']}" for st in case.stages]
    return "\n".join(lines)


def render_table(cases: list[Case]) -> str:
    head = ("case", "wall s", "requests", "bound / floor s", "ratio", "in HCP reads s",
            "rest s", "after last answer s", "most in flight", "latency floor s",
            "no latency s", "its HCP reads s", "ok")  # fmt: skip
    rows = [head]
    for c in cases:
        rows.append(
            (
                c.label,
                f"{c.seconds:.2f}",
                str(c.requests),
                f"{c.bound:.2f}",
                f"{c.ratio:.3f}" if c.rate_limit else f"{c.ratio:.2f}",
                f"{c.hcp_read_seconds:.2f}",
                f"{c.seconds - c.hcp_read_seconds:.2f}",
                f"{c.after_last_answer:.2f}",
                str(c.most_in_flight),
                "-" if c.rate_limit else f"{c.latency_floor:.2f}",
                "-" if c.rate_limit else f"{c.instant_seconds:.2f}",
                "-" if c.rate_limit else f"{c.instant_read_seconds:.2f}",
                "yes" if c.planned_ok else "NO",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000, help="seeded customers")
    parser.add_argument("--latency-ms", type=int, default=100, help="sandbox latency")
    parser.add_argument(
        "--entities",
        action="append",
        choices=sorted(ENTITY_SETS),
        help="customers, or all (customers, invoices, payments); repeat for both (default: both)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=2.0,
        help="the rate-limited cases' rate_limit (default 2, the connector's default)",
    )
    parser.add_argument(
        "--cases",
        default="rate:4,rate:1,free:4,free:1",
        help="comma-separated cases, each rate:CONCURRENCY (with the rate limit) or "
        "free:CONCURRENCY (without); default rate:4,rate:1,free:4,free:1",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="also run every case with read-ahead off (one page after another)",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="also print each case's pauses between requests and its steps' spans",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    entity_sets = args.entities or ["customers", "all"]
    plan: list[tuple[float, int]] = []
    for case in args.cases.split(","):
        kind, _, workers = case.strip().partition(":")
        if kind not in ("rate", "free") or not workers.isdigit():
            parser.error(f"--cases: {case!r} is not rate:N or free:N")
        plan.append((args.rate_limit if kind == "rate" else 0.0, int(workers)))

    sync_logging.configure("warning")
    env = environment()
    print(
        f"syncengine latency benchmark — Python {env['python']}, {env['cpus']} CPUs, load "
        f"average {env['load_average']}, commit {env['commit']}; {args.customers} customers, "
        f"sandbox latency {args.latency_ms} ms, page_size {PAGE_SIZE}",
        flush=True,
    )
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="syncengine-latency-sandbox-") as workdir:
        started = time.perf_counter()
        with (
            start_sandbox(
                api_key=API_KEY,
                seed=args.customers,
                latency_ms=args.latency_ms,
                workdir=Path(workdir) / "slow",
                timeout=600,
            ) as sandbox,
            start_sandbox(
                api_key=API_KEY, seed=args.customers, workdir=Path(workdir) / "instant", timeout=600
            ) as instant,
            httpx.Client(base_url=sandbox.url, timeout=60) as client,
        ):
            print(
                f"sandboxes ready in {time.perf_counter() - started:.1f}s: {sandbox.url} "
                f"({args.latency_ms} ms), {instant.url} (no latency)"
            )
            for entity_set in entity_sets:
                for rate, workers in plan:
                    for ahead in (True, False) if args.sequential else (True,):
                        case = run_case(
                            client,
                            sandbox.url,
                            instant.url,
                            entity_set,
                            rate,
                            workers,
                            ahead,
                            args.latency_ms / 1000,
                        )
                        cases.append(case)
                        print(render(case), flush=True)
                        if args.timeline:
                            print(render_timeline(case), flush=True)
    print()
    print(render_table(cases))
    if args.out:
        rows = [{**asdict(c), "bound": c.bound, "ratio": c.ratio} for c in cases]
        args.out.write_text(json.dumps({"environment": env, "cases": rows}, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0 if all(c.planned_ok for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
