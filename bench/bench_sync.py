"""Benchmark: sync N customers between the in-process Housecall Pro sandbox and a CSV folder.

A benchmark, not a test: it measures and prints, it never asserts on time. See
``bench/README.md`` for how to run it and how to read what it prints.

For each ``--customers N`` (each in a fresh subprocess, so that peak RSS belongs to that N):

1. ``initial``   HCP (seeded with N customers) -> an empty CSV folder: N creates in the sheet.
2. ``no-change`` the same sync again: must plan zero actions.
3. ``1%-change`` 0.5 % of customers changed in HCP (through the sandbox state, not counted)
   and another 0.5 % of rows changed in the CSV file, then sync: one update per changed
   record on the other side.
4. ``settle``    one more sync: must plan zero actions again (no echo of scenario 3's writes).

Before every scenario the *floor* is measured: iterate ``read("customers")`` of an HCP
connector over the same transport and of a spreadsheet connector over the same folder, with
no mapping and no state. Every scenario is printed as a ratio to its own floor.
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
from pathlib import Path
from typing import Any

import httpx

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from syncengine.engine import Engine

API_KEY = "bench"
MAX_PAGE_SIZE = 200
"""The sandbox serves at most this many customers per page."""
CHANGED_SHARE = 0.005
"""Share of records changed on each side in the 1 % scenario."""


# ----------------------------------------------------------------------------- measuring


class CountingTransport(httpx.BaseTransport):
    """Counts the requests that reach the in-process sandbox, by method."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.counts[request.method] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def take(self) -> dict[str, int]:
        """The counts since the last ``take()``, and reset them."""
        out = dict(self.counts)
        self.counts.clear()
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

    Large live heaps (the in-process sandbox's N customers, the engine's per-entity dicts)
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
    around ``Engine.plan_entity`` / ``Engine.apply_entity`` (restored afterwards).

    Stages: ``read:<member>`` (from the start of planning to that member's last read
    progress call, then from one member's end to the next), ``plan`` (the rest of
    ``plan_entity``: detect, match, reconcile, guards), ``apply`` (journal, writes, flush,
    commit) and ``other`` (opening the store, recovery, run history, closing).
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._plan_start = 0.0
        self._last_read_end = 0.0

    def progress(self, what: str, done: int, total: int | None) -> None:
        if what.startswith("reading ") and total is not None and done == total:
            now = time.perf_counter()
            member = what.split()[1]
            stage = f"read:{member}"
            since = self._last_read_end or self._plan_start
            self.totals[stage] = self.totals.get(stage, 0.0) + now - since
            self._last_read_end = now

    @contextlib.contextmanager
    def wrapped(self) -> Iterator[None]:
        clock = self
        originals = {name: getattr(Engine, name) for name in ("plan_entity", "apply_entity")}
        plan_entity, apply_entity = originals["plan_entity"], originals["apply_entity"]

        def timed_plan(engine: Engine, *args: Any, **kwargs: Any) -> Any:
            clock._plan_start = time.perf_counter()
            clock._last_read_end = 0.0
            try:
                return plan_entity(engine, *args, **kwargs)
            finally:
                end = time.perf_counter()
                reads_end = clock._last_read_end or clock._plan_start
                clock.totals["plan"] = clock.totals.get("plan", 0.0) + end - reads_end

        def timed_apply(engine: Engine, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return apply_entity(engine, *args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                clock.totals["apply"] = clock.totals.get("apply", 0.0) + spent

        Engine.plan_entity = timed_plan  # type: ignore[method-assign,assignment]
        Engine.apply_entity = timed_apply  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(Engine, name, original)


# ----------------------------------------------------------------------------- the setup


@dataclass
class Scenario:
    name: str
    seconds: float
    floor_seconds: float
    cpu_seconds: float
    floor_cpu_seconds: float
    floor_records: dict[str, int]
    floor_split: dict[str, float]
    requests: dict[str, int]
    floor_requests: dict[str, int]
    min_requests: int
    planned: dict[str, Any]
    expected: str
    as_expected: bool
    stages: dict[str, float]
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


@dataclass
class RunResult:
    customers: int
    page_size: int
    batch_size: int
    seed_seconds: float
    rss_after_seed_mib: float
    scenarios: list[Scenario] = field(default_factory=list)


def write_config(folder: Path, page_size: int, batch_size: int | None) -> Config:
    batch = f"batch_size = {batch_size}\n" if batch_size else ""
    text = textwrap.dedent(
        f"""\
        [state]
        url = "sqlite:///{(folder / 'state.db').as_posix()}"

        [connectors.hcp]
        type = "housecallpro"
        base_url = "http://sandbox"
        api_key = "{API_KEY}"
        rate_limit = 0
        page_size = {page_size}
        delete_customers = true

        [connectors.books]
        type = "spreadsheet"
        path = "{(folder / 'books').as_posix()}"

        [[pipelines]]
        name = "bench"
        members = ["hcp", "books"]
        entities = ["customers"]
        """
    ) + batch + textwrap.dedent(
        """\

        [pipelines.conflicts]
        default = ["hcp"]

        [pipelines.deletes]
        max_fraction = 0.5
        """
    )
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def floor_once(config: Config, transport: CountingTransport) -> tuple[
        float, float, dict[str, int], dict[str, float]]:
    """(wall s, CPU s, records per member, wall s per member) to read both members'
    customers through their connectors, nothing else: no mapping, no hashing, no state."""
    counts: dict[str, int] = {}
    split: dict[str, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    for name, extra in (("hcp", {"transport": transport}), ("books", None)):
        began = time.perf_counter()
        connector = config.make_connector(name, extra)
        try:
            counts[name] = sum(1 for _ in connector.read("customers"))
        finally:
            connector.close()
        split[name] = time.perf_counter() - began
    return time.perf_counter() - start, time.process_time() - cpu, counts, split


def floor(config: Config, transport: CountingTransport,
          repeats: int) -> tuple[float, float, dict[str, int], dict[str, float]]:
    """The floor read ``repeats`` times: median wall and CPU seconds, median per member."""
    runs = [floor_once(config, transport) for _ in range(max(1, repeats))]
    split = {m: round(statistics.median(r[3][m] for r in runs), 4) for m in runs[0][3]}
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            runs[0][2], split)


def change_hcp(app: Any, share: float, rng: random.Random, avoid: set[str]) -> set[str]:
    """Change the company of ``share`` of the customers directly in the sandbox state.

    Returns the ids changed. Goes through ``SandboxState.update_customer`` (the code the PUT
    endpoint runs), so ``updated_at`` moves as it would, but no request is logged or counted.
    """
    state = app.state.sandbox
    ids = sorted(r["id"] for r in state.customers.all() if r["id"] not in avoid)
    chosen = rng.sample(ids, max(1, round(share * len(state.customers))))
    for n, customer_id in enumerate(chosen):
        state.update_customer(customer_id, {"company": f"Bench Changed HCP {n}"})
    return set(chosen)


def change_csv(path: Path, share: float, rng: random.Random,
               hcp_ids_changed: set[str], key_to_hcp: dict[str, str]) -> int:
    """Rewrite the CSV with the First Name of ``share`` of its rows changed, skipping rows
    whose customer was changed in HCP (so the expected plan is exact). Returns rows changed."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    id_col, first_col = header.index("Sync ID"), header.index("First Name")
    candidates = [i for i, row in enumerate(body)
                  if key_to_hcp.get(row[id_col]) not in hcp_ids_changed]
    chosen = rng.sample(candidates, max(1, round(share * len(body))))
    for n, index in enumerate(chosen):
        body[index][first_col] = f"{body[index][first_col]} Bench{n}"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([header, *body])
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return len(chosen)


def hcp_links(config: Config) -> dict[str, str]:
    """Record key -> HCP customer id, from the state store (bench bookkeeping, not timed)."""
    store = api.open_store(config, create=False)
    try:
        index = store.link_index("bench", "customers", "hcp")
    finally:
        store.close()
    return {key: native_id for native_id, (key, _hash) in index.items()}


def run_sync(config: Config, transport: CountingTransport, profile: bool) -> tuple[
        Any, float, float, dict[str, float], str]:
    clock = StageClock()
    meter = GcMeter()
    profiler = cProfile.Profile() if profile else None
    with clock.wrapped(), meter.active():
        start, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        try:
            results = api.sync(config, progress=clock.progress,
                               connector_extra={"hcp": {"transport": transport}})
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
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        report = out.getvalue()
    return results[0], seconds, cpu_seconds, stages, report


def bench_one(n: int, page_size: int, batch_size: int | None, profile: set[str],
              floor_repeats: int, say: Callable[[str], None], freeze: bool = False) -> RunResult:
    start = time.perf_counter()
    app = create_app(API_KEY, seed=n)
    seed_seconds = time.perf_counter() - start
    if freeze:
        # the sandbox's N customers stand in for a remote API: keep them out of the
        # collector's full passes, as they would be in a real deployment
        gc.collect()
        gc.freeze()
    transport = CountingTransport(SyncASGITransport(app))
    rng = random.Random(n)
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-") as tmp:
        folder = Path(tmp)
        config = write_config(folder, page_size, batch_size)
        pipeline = config.pipeline("bench")[0]
        result = RunResult(n, page_size, pipeline.section.batch_size, round(seed_seconds, 3),
                           round(rss_mib()[0], 1))
        say(f"N={n}: sandbox seeded in {seed_seconds:.2f}s, RSS {result.rss_after_seed_mib} MiB")
        sheet = folder / "books" / "customers.csv"

        def scenario(name: str, expect: Callable[[dict[str, Any]], tuple[str, bool]],
                     hcp_writes: int) -> None:
            transport.take()
            floor_s, floor_cpu, floor_counts, split = floor(config, transport, floor_repeats)
            floor_requests = transport.take()
            floor_requests = {m: c // max(1, floor_repeats) for m, c in floor_requests.items()}
            outcome, seconds, cpu, stages, report = run_sync(config, transport, name in profile)
            requests = transport.take()
            counts = outcome.to_json()["entities"].get("customers", {})
            expected, ok = expect(counts)
            list_pages = max(1, math.ceil(floor_counts["hcp"] / page_size))
            current, peak = rss_mib()
            sc = Scenario(
                name=name, seconds=round(seconds, 4), floor_seconds=round(floor_s, 4),
                cpu_seconds=round(cpu, 4), floor_cpu_seconds=round(floor_cpu, 4),
                floor_records=floor_counts, floor_split=split, requests=requests,
                floor_requests=floor_requests,
                min_requests=list_pages + hcp_writes, planned=counts, expected=expected,
                as_expected=ok, stages=stages, rss_mib=round(current, 1),
                peak_rss_mib=round(peak, 1), exit_code=outcome.exit_code, profile=report)
            result.scenarios.append(sc)
            say(render_scenario(n, sc))

        def planned(counts: dict[str, Any]) -> dict[str, int]:
            return {f"{m}.{op}": counts.get(m, {}).get(op, 0)
                    for m in ("hcp", "books") for op in ("create", "update", "delete")}

        def only(wanted: dict[str, int]) -> Callable[[dict[str, Any]], tuple[str, bool]]:
            def check(counts: dict[str, Any]) -> tuple[str, bool]:
                got = planned(counts)
                ok = all(got[k] == wanted.get(k, 0) for k in got) and not counts.get("errors") \
                    and not counts.get("conflicts")
                text = ", ".join(f"{k}={v}" for k, v in wanted.items()) or "zero actions"
                return text, ok
            return check

        scenario("initial", only({"books.create": n}), 0)
        scenario("no-change", only({}), 0)

        hcp_changed = change_hcp(app, CHANGED_SHARE, rng, set())
        csv_changed = change_csv(sheet, CHANGED_SHARE, rng, hcp_changed, hcp_links(config))
        say(f"N={n}: changed {len(hcp_changed)} customers in HCP and {csv_changed} rows in "
            "the CSV (not timed)")
        scenario("1%-change",
                 only({"books.update": len(hcp_changed), "hcp.update": csv_changed}),
                 csv_changed)
        scenario("settle", only({}), 0)
    transport.close()
    return result


# ----------------------------------------------------------------------------- printing


def _rate(records: int, seconds: float) -> str:
    return f"{records / seconds:,.0f}" if seconds > 0 else "-"


def render_scenario(n: int, sc: Scenario) -> str:
    records = max(sc.floor_records.values())
    req_total = sum(sc.requests.values())
    by_method = " ".join(f"{m}={c}" for m, c in sorted(sc.requests.items())) or "none"
    lines = [
        f"N={n} {sc.name}: {sc.seconds:.3f}s  floor {sc.floor_seconds:.3f}s  "
        f"ratio {sc.ratio:.2f}x (CPU {sc.cpu_seconds:.3f}s vs {sc.floor_cpu_seconds:.3f}s: "
        f"{sc.cpu_ratio:.2f}x)  {_rate(records, sc.seconds)} records/s "
        f"(floor {_rate(sum(sc.floor_records.values()), sc.floor_seconds)} records/s "
        f"over hcp={sc.floor_records['hcp']} books={sc.floor_records['books']})",
        f"    HTTP requests {req_total} ({by_method}), minimum {sc.min_requests}; "
        f"floor read made {sum(sc.floor_requests.values())}",
        f"    planned {json.dumps({k: v for k, v in sc.planned.items() if k != 'read'})}",
        f"    expected {sc.expected}: {'yes' if sc.as_expected else 'NO'}  "
        f"(exit code {sc.exit_code})",
        "    stages " + "  ".join(f"{k} {v:.3f}s" for k, v in sc.stages.items()
                                if not k.startswith("gc"))
        + "   (floor: " + "  ".join(f"read:{k} {v:.3f}s" for k, v in sc.floor_split.items())
        + ")",
        f"    garbage collector {sc.stages.get('gc', 0):.3f}s within those "
        f"({sc.stages.get('gc_full', 0):.0f} full collections)",
        f"    RSS now {sc.rss_mib} MiB, process peak so far {sc.peak_rss_mib} MiB",
    ]
    if sc.profile:
        lines.append(textwrap.indent(sc.profile, "    | "))
    return "\n".join(lines)


def render_table(results: list[RunResult]) -> str:
    head = ("N", "scenario", "seconds", "floor s", "ratio", "CPU ratio", "records/s",
            "requests", "minimum", "planned", "ok", "read hcp", "read books", "plan", "apply",
            "other", "gc", "peak MiB")
    rows = [head]
    for r in results:
        for sc in r.scenarios:
            acts = {k: v for k, v in _flat_actions(sc.planned).items() if v}
            rows.append((
                f"{r.customers:,}", sc.name, f"{sc.seconds:.2f}", f"{sc.floor_seconds:.2f}",
                f"{sc.ratio:.2f}", f"{sc.cpu_ratio:.2f}",
                _rate(max(sc.floor_records.values()), sc.seconds),
                str(sum(sc.requests.values())), str(sc.min_requests),
                " ".join(f"{k}={v}" for k, v in acts.items()) or "none",
                "yes" if sc.as_expected else "NO",
                f"{sc.stages.get('read:hcp', 0):.2f}", f"{sc.stages.get('read:books', 0):.2f}",
                f"{sc.stages.get('plan', 0):.2f}", f"{sc.stages.get('apply', 0):.2f}",
                f"{sc.stages.get('other', 0):.2f}", f"{sc.stages.get('gc', 0):.2f}",
                f"{sc.peak_rss_mib:.0f}",
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = []
    for i, row in enumerate(rows):
        out.append("  ".join(cell.rjust(w) if cell[:1].isdigit() or cell == "-" else cell.ljust(w)
                             for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _flat_actions(counts: dict[str, Any]) -> dict[str, int]:
    return {f"{m}.{op}": c.get(op, 0) for m, c in counts.items()
            if isinstance(c, dict) and m != "read" for op in ("create", "update", "delete")}


def environment() -> dict[str, str]:
    here = Path(__file__).resolve().parent.parent
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    load = "unknown"
    with contextlib.suppress(OSError):
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": str(os.cpu_count()), "commit": commit, "load_average": load}


# ----------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, action="append",
                        help="number of customers; repeat for several sizes (default 10000)")
    parser.add_argument("--page-size", type=int, default=MAX_PAGE_SIZE,
                        help=f"HCP list page size (the sandbox caps it at {MAX_PAGE_SIZE})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the pipeline's batch_size (default: the engine's default)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--profile", action="append", default=[],
                        choices=["initial", "no-change", "1%-change", "settle"],
                        help="run that scenario's sync under cProfile and print the top "
                             "functions (timings then include profiling overhead)")
    parser.add_argument("--floor-repeats", type=int, default=3,
                        help="read the floor this many times per scenario; the median counts")
    parser.add_argument("--freeze-sandbox", action="store_true",
                        help="gc.freeze() the seeded sandbox so that the garbage collector's "
                             "full passes no longer walk its N customers (a remote API's data "
                             "would not be in this process)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every N in this process (peak RSS then accumulates)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.customers or [10_000]
    page_size = min(args.page_size, MAX_PAGE_SIZE)

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.child else sys.stdout, flush=True)

    if args.child:
        result = bench_one(sizes[0], page_size, args.batch_size, set(args.profile),
                           args.floor_repeats, say, args.freeze_sandbox)
        print(json.dumps(asdict(result)))
        return 0

    env = environment()
    env["freeze_sandbox"] = str(args.freeze_sandbox).lower()
    say(f"syncengine sync benchmark — Python {env['python']} on {env['machine']} "
        f"({env['cpus']} CPUs, load average {env['load_average']}), commit {env['commit']}; "
        f"page_size {page_size}, floor = median of {args.floor_repeats} reads"
        + (", sandbox frozen out of the GC" if args.freeze_sandbox else ""))
    results: list[RunResult] = []
    for n in sizes:
        if args.in_process:
            results.append(bench_one(n, page_size, args.batch_size, set(args.profile),
                                     args.floor_repeats, say, args.freeze_sandbox))
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--customers", str(n),
               "--page-size", str(page_size), "--floor-repeats", str(args.floor_repeats)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        for name in args.profile:
            cmd += ["--profile", name]
        if args.freeze_sandbox:
            cmd.append("--freeze-sandbox")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            say(f"N={n}: the benchmark process failed (exit {proc.returncode})")
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
            say(f"N={r.customers:,}: no-change resync / floor = {nc.ratio:.2f}x "
                f"({nc.seconds:.2f}s vs {nc.floor_seconds:.2f}s); sandbox seeding "
                f"{r.seed_seconds:.2f}s, RSS after seeding {r.rss_after_seed_mib} MiB")
    bad = [f"N={r.customers} {sc.name}" for r in results for sc in r.scenarios
           if not sc.as_expected]
    if bad:
        say("NOT AS EXPECTED (see the planned counts above): " + ", ".join(bad))
    if args.out:
        args.out.write_text(json.dumps(
            {"environment": env, "runs": [
                {**asdict(r), "scenarios": [{**asdict(sc), "ratio": round(sc.ratio, 3)}
                                            for sc in r.scenarios]} for r in results]},
            indent=2) + "\n", encoding="utf-8")
        say(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
