"""Benchmark: sync the in-process Housecall Pro sandbox with the bookkeeper's spreadsheet.

A benchmark, not a test: it measures and prints, it never asserts on time. See
``bench/README.md`` for how to run it and how to read what it prints.

Two data sets (``--entities``): ``customers`` (the pipeline syncs customers only) and ``all``
(customers, invoices and payments: the sandbox's ``seed=N`` gives N customers, about one
invoice per customer and two payments per invoice, the payments nested in the invoices). The
books are a folder of CSV files or one XLSX workbook (``--format``).

For each ``--customers N`` and format (each in a fresh subprocess, so that peak RSS belongs
to that run):

1. ``initial``   HCP -> empty books: one create per record in the books.
2. ``no-change`` the same sync again: must plan zero actions.
3. ``1%-change`` before it (not timed, not counted): 0.5 % of customers changed in HCP
   through the sandbox state; with invoices, new payments recorded on 0.5 % of the invoices
   through the sandbox state (which changes their balance and maybe status); 0.5 % of the
   customer rows of the books edited. Expected: one update per changed record on the other
   side, one create in the books per new payment.
4. ``settle``    one more sync: must plan zero actions again (no echo of scenario 3's writes).

Before every scenario the *floor* is measured: read every entity of the pipeline through an
HCP connector over the same transport and through a spreadsheet connector over the same
books, with no mapping and no state. Every scenario is printed as a ratio to its own floor,
and to the part of it that read HCP alone (``vs HCP floor``): a books file exactly as the last
sync left it is not read again (its read mark), so a resync may read less than the floor does.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import gc
import io
import json
import math
import os
import platform
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openpyxl

from syncengine import api
from syncengine.apply import EntityApply
from syncengine.config import Config, load_config
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from syncengine.connectors.housecallpro.sandbox_records import INVOICE_CLOSED
from syncengine.engine import Engine

API_KEY = "bench-key"
MAX_PAGE_SIZE = 200
"""The sandbox serves at most this many records per page."""
CHANGED_SHARE = 0.005
"""Share of records changed on each side in the 1 % scenario."""
ENTITY_SETS: dict[str, tuple[str, ...]] = {
    "customers": ("customers",),
    "all": ("customers", "invoices", "payments"),
}
LISTED = ("customers", "invoices")
"""The HCP entities read by paging through a list endpoint (payments come nested in the
invoices, so reading them costs no request)."""
SHORT = {"customers": "cust", "invoices": "inv", "payments": "pay"}
MEMBERS = ("hcp", "books")


# ----------------------------------------------------------------------------- measuring


class CountingTransport(httpx.BaseTransport):
    """Counts the requests that reach the in-process sandbox, by method and by route
    (``GET /customers``, ``PUT /customers``, ``GET /invoices`` …: method and first path
    segment)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.counts[request.method] += 1
        head = request.url.path.strip("/").split("/", 1)[0]
        self.routes[f"{request.method} /{head}"] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        """The counts (by method, by route) since the last ``take()``, and reset them."""
        out = dict(self.counts), dict(self.routes)
        self.counts.clear()
        self.routes.clear()
        return out


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS of this process) in MiB."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    current = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        current = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, peak_kib / 1024


class GcMeter:
    """Time spent in the cyclic garbage collector (all generations) while active.

    Large live heaps (the in-process sandbox's records, the engine's per-entity dicts)
    make full collections expensive; this shows how much of a scenario they take."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info.get("generation") == 2

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        gc.callbacks.append(self._callback)
        try:
            yield
        finally:
            gc.callbacks.remove(self._callback)


class StageClock:
    """Per-stage timing of one sync, from the engine's progress callback and timing wrappers
    around ``Engine.plan_entity`` / ``EntityApply.run`` (restored afterwards).

    Stages, per entity and summed over entities: ``read:<member>`` (from the start of
    planning the entity to that member's last read progress call, then from one member's end
    to the next), ``plan`` (the rest of ``plan_entity``: detect, match, reconcile, guards),
    ``apply`` (journal, writes, flush, commit); and for the whole sync ``other`` (opening the
    store, recovery, run history, closing).
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.per_entity: dict[str, dict[str, float]] = {}
        self.rss: dict[str, dict[str, float]] = {}
        """entity -> {"planned": RSS MiB when its plan was made, "applied": after applying,
        and the same as "…_blocks": millions of memory blocks Python has allocated (live
        objects; unlike RSS, it falls when they are freed)}."""
        self._entity = ""
        self._plan_start = 0.0
        self._last_read_end = 0.0

    def _add(self, entity: str, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds
        mine = self.per_entity.setdefault(entity, {})
        mine[stage] = mine.get(stage, 0.0) + seconds

    def memory(self, entity: str, when: str) -> None:
        mine = self.rss.setdefault(entity, {})
        mine[when] = round(rss_mib()[0], 1)
        mine[f"{when}_blocks"] = round(sys.getallocatedblocks() / 1e6, 2)

    def progress(self, what: str, done: int, total: int | None) -> None:
        if what.startswith("reading ") and total is not None and done == total:
            now = time.perf_counter()
            member = what.split()[1]
            since = self._last_read_end or self._plan_start
            self._add(self._entity, f"read:{member}", now - since)
            self._last_read_end = now

    @contextlib.contextmanager
    def wrapped(self) -> Iterator[None]:
        clock = self
        plan_entity = Engine.plan_entity
        apply_run = EntityApply.run

        def timed_plan(
            engine: Engine, pipeline: Any, entity: str, *args: Any, **kwargs: Any
        ) -> Any:
            clock._entity = entity
            clock._plan_start = time.perf_counter()
            clock._last_read_end = 0.0
            try:
                return plan_entity(engine, pipeline, entity, *args, **kwargs)
            finally:
                end = time.perf_counter()
                reads_end = clock._last_read_end or clock._plan_start
                clock._add(entity, "plan", end - reads_end)
                clock.memory(entity, "planned")

        def timed_apply(applier: EntityApply, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            entity = applier.ent.entity
            try:
                return apply_run(applier, *args, **kwargs)
            finally:
                clock._add(entity, "apply", time.perf_counter() - start)
                clock.memory(entity, "applied")

        Engine.plan_entity = timed_plan  # type: ignore[method-assign,assignment]
        EntityApply.run = timed_apply  # type: ignore[method-assign]
        try:
            yield
        finally:
            Engine.plan_entity = plan_entity  # type: ignore[method-assign]
            EntityApply.run = apply_run  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- the setup


@dataclass
class Scenario:
    name: str
    seconds: float
    floor_seconds: float
    cpu_seconds: float
    floor_cpu_seconds: float
    floor_records: dict[str, dict[str, int]]
    """member -> entity -> records the floor read."""
    floor_split: dict[str, float]
    """``"<member> <entity>"`` -> median seconds the floor spent reading it."""
    records: int
    """Per entity the larger of the two members' record counts, summed over entities."""
    requests: dict[str, int]
    routes: dict[str, int]
    floor_requests: dict[str, int]
    min_requests: int
    planned: dict[str, dict[str, Any]]
    """entity -> the plan's counts for it."""
    expected: str
    as_expected: bool
    stages: dict[str, float]
    entity_stages: dict[str, dict[str, float]]
    entity_rss: dict[str, dict[str, float]]
    """entity -> current RSS (MiB) and Python's allocated blocks (millions) right after its
    plan was made and after it was applied."""
    rss_mib: float
    peak_rss_mib: float
    exit_code: int
    profile: str = ""

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor_seconds if self.floor_seconds else float("nan")

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_seconds / self.floor_cpu_seconds if self.floor_cpu_seconds else float("nan")

    @property
    def hcp_floor_seconds(self) -> float:
        """The part of the floor that read HCP (its entities, one after another)."""
        return sum(v for k, v in self.floor_split.items() if k.startswith("hcp "))

    @property
    def hcp_ratio(self) -> float:
        hcp = self.hcp_floor_seconds
        return self.seconds / hcp if hcp else float("nan")


@dataclass
class RunResult:
    customers: int
    entities: str
    format: str
    page_size: int
    batch_size: int
    seed_seconds: float
    rss_after_seed_mib: float
    seeded: dict[str, int]
    """Records in the sandbox after seeding, per collection."""
    scenarios: list[Scenario] = field(default_factory=list)


def books_path(folder: Path, fmt: str) -> Path:
    return folder / ("books.xlsx" if fmt == "xlsx" else "books")


def write_config(
    folder: Path, page_size: int, batch_size: int | None, entities: tuple[str, ...], fmt: str
) -> Config:
    batch = f"batch_size = {batch_size}\n" if batch_size else ""
    listed = ", ".join(f'"{e}"' for e in entities)
    text = (
        textwrap.dedent(
            f"""\
        [state]
        url = "sqlite:///{(folder / "state.db").as_posix()}"

        [connectors.hcp]
        type = "housecallpro"
        base_url = "http://sandbox"
        api_key = "{API_KEY}"
        rate_limit = 0
        page_size = {page_size}
        delete_customers = true

        [connectors.books]
        type = "spreadsheet"
        path = "{books_path(folder, fmt).as_posix()}"

        [[pipelines]]
        name = "bench"
        members = ["hcp", "books"]
        entities = [{listed}]
        """
        )
        + batch
        + textwrap.dedent(
            """\

        [pipelines.conflicts]
        default = ["hcp"]

        [pipelines.deletes]
        max_fraction = 0.5
        """
        )
    )
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def floor_once(
    config: Config, transport: CountingTransport
) -> tuple[float, float, dict[str, dict[str, int]], dict[str, float]]:
    """(wall s, CPU s, records per member and entity, wall s per member and entity) to read
    every entity of the pipeline from both members through their connectors, nothing else:
    no mapping, no hashing, no state. One connector instance per member reads all entities
    in pipeline order, as a sync does (so HCP's payments come from the invoices just read)."""
    pipeline = config.pipeline("bench")[0]
    counts: dict[str, dict[str, int]] = {}
    split: dict[str, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    for name, extra in (("hcp", {"transport": transport}), ("books", None)):
        began = time.perf_counter()
        connector = config.make_connector(name, extra)
        try:
            for entity in pipeline.entities:
                connector.prepare(entity, pipeline.mappings[(name, entity)])
                counts.setdefault(name, {})[entity] = sum(1 for _ in connector.read(entity))
                now = time.perf_counter()
                split[f"{name} {entity}"] = now - began
                began = now
        finally:
            connector.close()
        split[f"{name} {pipeline.entities[-1]}"] += time.perf_counter() - began
    return time.perf_counter() - start, time.process_time() - cpu, counts, split


def floor(
    config: Config, transport: CountingTransport, repeats: int
) -> tuple[float, float, dict[str, dict[str, int]], dict[str, float]]:
    """The floor read ``repeats`` times: median wall and CPU seconds, median per part."""
    runs = [floor_once(config, transport) for _ in range(max(1, repeats))]
    split = {part: round(statistics.median(r[3][part] for r in runs), 4) for part in runs[0][3]}
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        runs[0][2],
        split,
    )


# ----------------------------------------------------------------------------- changes


def change_hcp_customers(app: Any, share: float, rng: random.Random) -> set[str]:
    """Change the company of ``share`` of the customers directly in the sandbox state.

    Returns the ids changed. Goes through ``SandboxState.update_customer`` (the code the PUT
    endpoint runs), so ``updated_at`` moves as it would, but no request is logged or counted.
    """
    state = app.state.sandbox
    ids = sorted(r["id"] for r in state.customers.all())
    chosen = rng.sample(ids, max(1, round(share * len(ids))))
    for n, customer_id in enumerate(chosen):
        state.update_customer(customer_id, {"company": f"Bench Changed HCP {n}"})
    return set(chosen)


def pay_hcp_invoices(app: Any, share: float, rng: random.Random) -> tuple[set[str], int]:
    """Record a new payment on ``share`` of the invoices (of those that still owe something)
    through ``SandboxState.record_payment``, the code behind ``POST
    /_sandbox/invoices/{id}/payments``: the invoice's balance drops and it becomes ``paid``
    when nothing is owed any more. Every other payment settles the invoice, the others pay
    half. Returns (the invoice ids paid on, how many of them are now paid in full)."""
    state = app.state.sandbox
    open_ids = sorted(
        r["id"]
        for r in state.invoices.all()
        if r["status"] not in INVOICE_CLOSED and r["outstanding_balance"] > 0
    )
    wanted = max(1, round(share * len(state.invoices)))
    chosen = rng.sample(open_ids, min(wanted, len(open_ids)))
    settled = 0
    for n, invoice_id in enumerate(chosen):
        owed = state.invoices.get(invoice_id)["outstanding_balance"]
        amount = owed if n % 2 == 0 or owed < 2 else owed // 2
        settled += amount == owed
        state.record_payment(
            invoice_id, {"amount": amount, "payment_method": "cash", "note": f"bench payment {n}"}
        )
    return set(chosen), settled


class Books:
    """The benchmark's own access to the books (not the connector's): rows of one entity as
    lists of cells, edited in place and written back. Bookkeeping, never timed."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt

    def edit(
        self,
        entity: str,
        column: str,
        share: float,
        rng: random.Random,
        avoid: set[str],
        change: Callable[[Any, int], Any],
    ) -> set[str]:
        """Change ``column`` of ``share`` of the entity's rows (by ``change(value, n)``),
        leaving out rows whose ``Sync ID`` is in ``avoid``. Returns the Sync IDs edited."""
        if self.fmt == "xlsx":
            return self._edit_xlsx(entity, column, share, rng, avoid, change)
        path = self.path / f"{entity}.csv"
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        header, body = rows[0], rows[1:]
        id_col, col = header.index("Sync ID"), header.index(column)
        candidates = [i for i, row in enumerate(body) if row[id_col] not in avoid]
        chosen = rng.sample(candidates, max(1, round(share * len(body))))
        for n, index in enumerate(chosen):
            body[index][col] = change(body[index][col], n)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows([header, *body])
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        return {body[i][id_col] for i in chosen}

    def _edit_xlsx(
        self,
        entity: str,
        column: str,
        share: float,
        rng: random.Random,
        avoid: set[str],
        change: Callable[[Any, int], Any],
    ) -> set[str]:
        book = openpyxl.load_workbook(self.path)
        try:
            sheet = book[entity.capitalize()]
            rows = list(sheet.iter_rows(min_row=1))
            header = [cell.value for cell in rows[0]]
            id_col, col = header.index("Sync ID"), header.index(column)
            body = [row for row in rows[1:] if row[id_col].value]
            candidates = [i for i, row in enumerate(body) if row[id_col].value not in avoid]
            chosen = rng.sample(candidates, max(1, round(share * len(body))))
            for n, index in enumerate(chosen):
                cell = body[index][col]
                cell.value = change(cell.value, n)
            book.save(self.path)
            return {str(body[i][id_col].value) for i in chosen}
        finally:
            book.close()


def rename(value: Any, n: int) -> str:
    return f"{value} Bench{n}" if value else f"Bench{n}"


def add_one(value: Any, n: int) -> Any:
    """One currency unit more, in the cell's own kind (a number in a workbook, text in CSV)."""
    if isinstance(value, int | float):
        return value + 1
    return str(Decimal(str(value).replace(",", "").lstrip("$")) + 1)


def links(config: Config, entity: str) -> dict[str, str]:
    """Record key -> HCP id, from the state store (bench bookkeeping, not timed)."""
    store = api.open_store(config, create=False)
    try:
        index = store.link_index("bench", entity, "hcp")
    finally:
        store.close()
    return {key: native_id for native_id, (key, _hash) in index.items()}


# ----------------------------------------------------------------------------- one run


def run_sync(
    config: Config, transport: CountingTransport, profile: bool
) -> tuple[Any, float, float, StageClock, dict[str, float], str]:
    clock = StageClock()
    meter = GcMeter()
    profiler = cProfile.Profile() if profile else None
    with clock.wrapped(), meter.active():
        start, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        try:
            results = api.sync(
                config, progress=clock.progress, connector_extra={"hcp": {"transport": transport}}
            )
        finally:
            if profiler:
                profiler.disable()
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu
    stages: dict[str, float] = {k: round(v, 4) for k, v in sorted(clock.totals.items())}
    stages["other"] = round(seconds - sum(clock.totals.values()), 4)
    stages["gc"] = round(meter.seconds, 4)  # overlaps the stages above: inside them
    stages["gc_full"] = meter.full
    report = ""
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        if os.environ.get("BENCH_PROFILE_OUT"):
            stats.dump_stats(os.environ["BENCH_PROFILE_OUT"])
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(45)
        report = out.getvalue()
    return results[0], seconds, cpu_seconds, clock, stages, report


Wanted = dict[str, dict[str, int]]
"""entity -> {"books.create": n, "hcp.update": n, "skipped": n, ...}; anything not named must
be zero (also errors, conflicts and failures)."""


def check_plan(
    entities: tuple[str, ...], planned: dict[str, dict[str, Any]], wanted: Wanted
) -> tuple[str, bool]:
    ok = True
    for entity in entities:
        counts = planned.get(entity)
        if counts is None:
            ok = False
            continue
        want = wanted.get(entity, {})
        for member in MEMBERS:
            for op in ("create", "update", "delete"):
                got = counts.get(member, {}).get(op, 0)
                ok &= got == want.get(f"{member}.{op}", 0)
        ok &= counts.get("skipped", 0) == want.get("skipped", 0)
        ok &= not counts.get("errors") and not counts.get("conflicts") and not counts.get("failed")
    parts = [
        f"{SHORT[e]}:" + ",".join(f"{k}={v}" for k, v in wanted[e].items())
        for e in entities
        if wanted.get(e)
    ]
    return " ".join(parts) or "zero actions", ok


def bench_one(
    n: int,
    entity_set: str,
    fmt: str,
    page_size: int,
    batch_size: int | None,
    profile: set[str],
    floor_repeats: int,
    say: Callable[[str], None],
    freeze: bool = False,
    invoice_edits: float = 0.0,
) -> RunResult:
    entities = ENTITY_SETS[entity_set]
    start = time.perf_counter()
    app = create_app(API_KEY, seed=n)
    seed_seconds = time.perf_counter() - start
    state = app.state.sandbox
    if freeze:
        # the sandbox's records stand in for a remote API: keep them out of the
        # collector's full passes, as they would be in a real deployment
        gc.collect()
        gc.freeze()
    transport = CountingTransport(SyncASGITransport(app))
    rng = random.Random(n)
    label = f"N={n} {fmt} {entity_set}"
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-") as tmp:
        folder = Path(tmp)
        config = write_config(folder, page_size, batch_size, entities, fmt)
        pipeline = config.pipeline("bench")[0]
        seeded = {name: len(c) for name, c in state.collections.items()}
        result = RunResult(
            n,
            entity_set,
            fmt,
            page_size,
            pipeline.section.batch_size,
            round(seed_seconds, 3),
            round(rss_mib()[0], 1),
            seeded,
        )
        say(
            f"{label}: sandbox seeded in {seed_seconds:.2f}s ("
            + ", ".join(f"{v} {k}" for k, v in seeded.items())
            + f"), RSS {result.rss_after_seed_mib} MiB"
        )
        books = Books(books_path(folder, fmt), fmt)

        def scenario(name: str, wanted: Wanted, hcp_writes: int) -> None:
            transport.take()
            floor_s, floor_cpu, floor_counts, split = floor(config, transport, floor_repeats)
            floor_requests = transport.take()[0]
            floor_requests = {m: c // max(1, floor_repeats) for m, c in floor_requests.items()}
            outcome, seconds, cpu, clock, stages, report = run_sync(
                config, transport, name in profile
            )
            requests, routes = transport.take()
            planned = outcome.to_json()["entities"]
            expected, ok = check_plan(entities, planned, wanted)
            ok &= outcome.exit_code == 0
            hcp_read = floor_counts["hcp"]
            list_pages = sum(
                max(1, math.ceil(hcp_read[e] / page_size)) for e in entities if e in LISTED
            )
            records = sum(max(floor_counts[m][e] for m in MEMBERS) for e in entities)
            current, peak = rss_mib()
            sc = Scenario(
                name=name,
                seconds=round(seconds, 4),
                floor_seconds=round(floor_s, 4),
                cpu_seconds=round(cpu, 4),
                floor_cpu_seconds=round(floor_cpu, 4),
                floor_records=floor_counts,
                floor_split=split,
                records=records,
                requests=requests,
                routes=routes,
                floor_requests=floor_requests,
                min_requests=list_pages + hcp_writes,
                planned=planned,
                expected=expected,
                as_expected=ok,
                stages=stages,
                entity_stages={
                    e: {k: round(v, 4) for k, v in sorted(s.items())}
                    for e, s in clock.per_entity.items()
                },
                entity_rss=clock.rss,
                rss_mib=round(current, 1),
                peak_rss_mib=round(peak, 1),
                exit_code=outcome.exit_code,
                profile=report,
            )
            result.scenarios.append(sc)
            say(render_scenario(label, sc))

        everything = {
            "customers": len(state.customers),
            "invoices": len(state.invoices),
            "payments": len(state.payments),
        }
        scenario("initial", {e: {"books.create": everything[e]} for e in entities}, 0)
        scenario("no-change", {}, 0)

        started = time.perf_counter()
        wanted: Wanted = {}
        hcp_changed = change_hcp_customers(app, CHANGED_SHARE, rng)
        customer_keys = links(config, "customers")
        avoid = {key for key, hcp_id in customer_keys.items() if hcp_id in hcp_changed}
        sheet_changed = books.edit("customers", "First Name", CHANGED_SHARE, rng, avoid, rename)
        wanted["customers"] = {"books.update": len(hcp_changed), "hcp.update": len(sheet_changed)}
        note = (
            f"changed {len(hcp_changed)} customers in HCP and {len(sheet_changed)} "
            "customer rows in the books"
        )
        if "invoices" in entities:
            paid, settled = pay_hcp_invoices(app, CHANGED_SHARE, rng)
            wanted["invoices"] = {"books.update": len(paid)}
            wanted["payments"] = {"books.create": len(paid)}
            note += (
                f"; recorded a payment on {len(paid)} invoices in HCP ({settled} of them "
                "now paid in full)"
            )
            if invoice_edits:
                invoice_keys = links(config, "invoices")
                avoid = {key for key, hcp_id in invoice_keys.items() if hcp_id in paid}
                edited = books.edit("invoices", "Amount", invoice_edits, rng, avoid, add_one)
                wanted["invoices"]["skipped"] = len(edited)
                note += (
                    f"; raised the amount of {len(edited)} invoice rows in the books "
                    "(HCP cannot update invoices: expected as skips)"
                )
        say(f"{label}: {note} (not timed: {time.perf_counter() - started:.1f}s)")
        scenario("1%-change", wanted, len(sheet_changed))
        scenario("settle", {}, 0)
    transport.close()
    return result


# ----------------------------------------------------------------------------- printing


def _rate(records: int, seconds: float) -> str:
    return f"{records / seconds:,.0f}" if seconds > 0 else "-"


def _actions(counts: dict[str, Any]) -> dict[str, int]:
    out = {
        f"{m}.{op}": c.get(op, 0)
        for m, c in counts.items()
        if isinstance(c, dict) and m != "read"
        for op in ("create", "update", "delete")
    }
    for extra in ("skipped", "conflicts", "errors", "failed"):
        out[extra] = counts.get(extra, 0)
    return out


def planned_text(planned: dict[str, dict[str, Any]]) -> str:
    parts = []
    for entity, counts in planned.items():
        acts = {k: v for k, v in _actions(counts).items() if v}
        if acts:
            parts.append(
                f"{SHORT.get(entity, entity)}:" + ",".join(f"{k}={v}" for k, v in acts.items())
            )
    return " ".join(parts) or "none"


def render_scenario(label: str, sc: Scenario) -> str:
    req_total = sum(sc.requests.values())
    by_route = " ".join(f"{m}={c}" for m, c in sorted(sc.routes.items())) or "none"
    floor_records = sum(c for per in sc.floor_records.values() for c in per.values())
    read = " ".join(
        f"{m}:{SHORT.get(e, e)}={c}" for m, per in sc.floor_records.items() for e, c in per.items()
    )
    lines = [
        f"{label} {sc.name}: {sc.seconds:.3f}s  floor {sc.floor_seconds:.3f}s  "
        f"ratio {sc.ratio:.2f}x (CPU {sc.cpu_seconds:.3f}s vs {sc.floor_cpu_seconds:.3f}s: "
        f"{sc.cpu_ratio:.2f}x; vs HCP floor {sc.hcp_floor_seconds:.3f}s: {sc.hcp_ratio:.2f}x)  "
        f"{_rate(sc.records, sc.seconds)} records/s over {sc.records} "
        f"(floor {_rate(floor_records, sc.floor_seconds)} records/s over {read})",
        f"    HTTP requests {req_total} ({by_route}), minimum {sc.min_requests}; "
        f"floor read made {sum(sc.floor_requests.values())}",
        f"    planned {planned_text(sc.planned)}",
        f"    expected {sc.expected}: {'yes' if sc.as_expected else 'NO'}  "
        f"(exit code {sc.exit_code})",
        "    stages "
        + "  ".join(f"{k} {v:.3f}s" for k, v in sc.stages.items() if not k.startswith("gc")),
    ]
    if len(sc.entity_stages) > 1:
        for entity, stages in sc.entity_stages.items():
            rss = sc.entity_rss.get(entity, {})
            lines.append(
                f"      {entity:<9} "
                + "  ".join(f"{k} {v:.3f}s" for k, v in stages.items())
                + f"  = {sum(stages.values()):.3f}s"
                + "   RSS "
                + " ".join(f"{k} {rss[k]:.0f}" for k in ("planned", "applied") if k in rss)
                + " MiB, blocks "
                + " ".join(
                    f"{k} {rss[k + '_blocks']:.2f}M" for k in ("planned", "applied") if k in rss
                )
            )
    lines += [
        "    floor " + "  ".join(f"{k} {v:.3f}s" for k, v in sc.floor_split.items()),
        f"    garbage collector {sc.stages.get('gc', 0):.3f}s within those "
        f"({sc.stages.get('gc_full', 0):.0f} full collections)",
        f"    RSS now {sc.rss_mib} MiB, process peak so far {sc.peak_rss_mib} MiB",
    ]
    problems = [p for counts in sc.planned.values() for p in counts.get("problems", [])]
    for problem in problems[:5]:
        lines.append(
            f"    problem: {problem['member']} {problem['location']}: {problem['message']}"
        )
    if sc.profile:
        lines.append(textwrap.indent(sc.profile, "    | "))
    return "\n".join(lines)


def render_table(results: list[RunResult]) -> str:
    head = (
        "N",
        "books",
        "entities",
        "scenario",
        "seconds",
        "floor s",
        "ratio",
        "CPU ratio",
        "vs HCP floor",
        "records",
        "records/s",
        "requests",
        "minimum",
        "planned",
        "ok",
        "read hcp",
        "read books",
        "plan",
        "apply",
        "other",
        "gc",
        "peak MiB",
    )
    rows = [head]
    for r in results:
        for sc in r.scenarios:
            rows.append(
                (
                    f"{r.customers:,}",
                    r.format,
                    r.entities,
                    sc.name,
                    f"{sc.seconds:.2f}",
                    f"{sc.floor_seconds:.2f}",
                    f"{sc.ratio:.2f}",
                    f"{sc.cpu_ratio:.2f}",
                    f"{sc.hcp_ratio:.2f}",
                    f"{sc.records:,}",
                    _rate(sc.records, sc.seconds),
                    str(sum(sc.requests.values())),
                    str(sc.min_requests),
                    planned_text(sc.planned),
                    "yes" if sc.as_expected else "NO",
                    f"{sc.stages.get('read:hcp', 0):.2f}",
                    f"{sc.stages.get('read:books', 0):.2f}",
                    f"{sc.stages.get('plan', 0):.2f}",
                    f"{sc.stages.get('apply', 0):.2f}",
                    f"{sc.stages.get('other', 0):.2f}",
                    f"{sc.stages.get('gc', 0):.2f}",
                    f"{sc.peak_rss_mib:.0f}",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = []
    for i, row in enumerate(rows):
        out.append(
            "  ".join(
                cell.rjust(w) if cell[:1].isdigit() or cell == "-" else cell.ljust(w)
                for cell, w in zip(row, widths, strict=True)
            ).rstrip()
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def environment() -> dict[str, str]:
    here = Path(__file__).resolve().parent.parent
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    load = "unknown"
    with contextlib.suppress(OSError):
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "commit": commit,
        "load_average": load,
    }


# ----------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--customers",
        type=int,
        action="append",
        help="customers seeded in the sandbox (with --entities all also about "
        "as many invoices and twice as many payments); repeat for several "
        "sizes (default 10000)",
    )
    parser.add_argument(
        "--entities",
        choices=sorted(ENTITY_SETS),
        default="customers",
        help="what the pipeline syncs: customers only, or customers, invoices "
        "and payments (default customers)",
    )
    parser.add_argument(
        "--format",
        action="append",
        choices=["csv", "xlsx"],
        help="the books: a folder of CSV files or one XLSX workbook; repeat for both (default csv)",
    )
    parser.add_argument(
        "--page-size",
        type=int,
        default=MAX_PAGE_SIZE,
        help=f"HCP list page size (the sandbox caps it at {MAX_PAGE_SIZE})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the pipeline's batch_size (default: the engine's default)",
    )
    parser.add_argument(
        "--invoice-edits",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="with --entities all: also raise the amount of this share of the "
        "invoice rows in the books before the 1%% scenario (e.g. 0.001); "
        "HCP cannot update invoices, so they are expected as skips",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        choices=["initial", "no-change", "1%-change", "settle"],
        help="run that scenario's sync under cProfile and print the top "
        "functions (timings then include profiling overhead); with BENCH_PROFILE_OUT set "
        "in the environment, also save the statistics to that file for pstats",
    )
    parser.add_argument(
        "--floor-repeats",
        type=int,
        default=3,
        help="read the floor this many times per scenario; the median counts",
    )
    parser.add_argument(
        "--freeze-sandbox",
        action="store_true",
        help="gc.freeze() the seeded sandbox so that the garbage collector's "
        "full passes no longer walk its records (a remote API's data "
        "would not be in this process)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every N in this process (peak RSS then accumulates)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.customers or [10_000]
    formats = args.format or ["csv"]
    page_size = min(args.page_size, MAX_PAGE_SIZE)
    if args.invoice_edits and args.entities != "all":
        parser.error("--invoice-edits needs --entities all")

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.child else sys.stdout, flush=True)

    def one(n: int, fmt: str) -> RunResult:
        return bench_one(
            n,
            args.entities,
            fmt,
            page_size,
            args.batch_size,
            set(args.profile),
            args.floor_repeats,
            say,
            args.freeze_sandbox,
            args.invoice_edits,
        )

    if args.child:
        print(json.dumps(asdict(one(sizes[0], formats[0]))))
        return 0

    env = environment()
    env["freeze_sandbox"] = str(args.freeze_sandbox).lower()
    say(
        f"syncengine sync benchmark — Python {env['python']} on {env['machine']} "
        f"({env['cpus']} CPUs, load average {env['load_average']}), commit {env['commit']}; "
        f"entities {args.entities}, page_size {page_size}, floor = median of "
        f"{args.floor_repeats} reads"
        + (", sandbox frozen out of the GC" if args.freeze_sandbox else "")
    )
    results: list[RunResult] = []
    for n in sizes:
        for fmt in formats:
            if args.in_process:
                results.append(one(n, fmt))
                continue
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                "--customers",
                str(n),
                "--entities",
                args.entities,
                "--format",
                fmt,
                "--page-size",
                str(page_size),
                "--floor-repeats",
                str(args.floor_repeats),
                "--invoice-edits",
                str(args.invoice_edits),
            ]
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            for name in args.profile:
                cmd += ["--profile", name]
            if args.freeze_sandbox:
                cmd.append("--freeze-sandbox")
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            if proc.returncode != 0:
                say(f"N={n} {fmt}: the benchmark process failed (exit {proc.returncode})")
                return proc.returncode
            data = json.loads(proc.stdout.strip().splitlines()[-1])
            data["scenarios"] = [Scenario(**s) for s in data["scenarios"]]
            results.append(RunResult(**data))

    say("")
    say(render_table(results))
    say("")
    for r in results:
        by_name = {sc.name: sc for sc in r.scenarios}
        nc = by_name.get("no-change")
        if nc:
            say(
                f"N={r.customers:,} {r.format} {r.entities}: no-change resync / floor = "
                f"{nc.ratio:.2f}x ({nc.seconds:.2f}s vs {nc.floor_seconds:.2f}s); sandbox "
                f"seeding {r.seed_seconds:.2f}s, RSS after seeding {r.rss_after_seed_mib} MiB"
            )
    bad = [
        f"N={r.customers} {r.format} {sc.name}"
        for r in results
        for sc in r.scenarios
        if not sc.as_expected
    ]
    if bad:
        say("NOT AS EXPECTED (see the planned counts above): " + ", ".join(bad))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "environment": env,
                    "runs": [
                        {
                            **asdict(r),
                            "scenarios": [
                                {**asdict(sc), "ratio": round(sc.ratio, 3)} for sc in r.scenarios
                            ],
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        say(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
