"""Benchmark: syncengine beside its peer dlt, against the Housecall Pro sandbox in another process.

A benchmark, not a test: it measures and prints, it never asserts on time. See
``bench/README.md`` ("peer_dlt.py — syncengine beside dlt") for how to run it and read it.

For each ``--customers N`` it starts ``syncengine sandbox --seed N`` as a subprocess (real
loopback HTTP, its own CPU time and memory), then measures, one after another, each in a fresh
subprocess whose own peak RSS is taken from ``os.wait4``:

1. ``floor``      a bare httpx loop over every page of ``GET /customers`` (200 per page,
                  ``page=1..total_pages``), decoding the JSON and nothing else;
2. ``dlt``        dlt's ``rest_api`` source (page-number paginator on ``total_pages``, data
                  selector ``customers``) loading the customers into duckdb with
                  ``write_disposition = "merge"`` on ``id``;
3. ``syncengine`` the real CLI, ``syncengine sync -c config.toml --json``: HCP customers ->
                  an empty CSV folder (the initial sync), then the same sync again
                  (``no-change``, which must plan nothing).

``--rounds K`` then alternates dlt's load and the initial sync K - 1 more times per size, each
round in fresh folders, and prints every round's ratio and the median of those without a
problem (each round's problems are listed at the end): on a shared host one busy moment moves
a single round's ratio by a tenth. The other tables are round 1's.

``--latency`` runs issue 12's "real latency" case instead: the initial sync against a sandbox
that waits ``--latency-ms`` (default 100) per request, once at ``rate_limit = 2`` (wall time
against the bound ``requests / rate``) and once without a rate limit at ``concurrency = 4``.

The script is also its own worker: ``--role floor|dlt`` (internal) runs one measurement in
the subprocess and prints one JSON line.
"""

from __future__ import annotations

import argparse
import compileall
import csv
import hashlib
import io
import json
import math
import os
import platform
import pstats
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

API_KEY = "bench-peer-key"
"""The sandbox's key (a config takes keys of at least 8 characters)."""
PAGE_SIZE = 200
"""Records per list page: the sandbox's maximum, used by all three readers."""
SANDBOX_START_TIMEOUT = 600.0
"""Seconds to wait for the sandbox to seed its data and listen (100k customers: ~10 s)."""
CHILD_TIMEOUT = 3600.0
"""Seconds before a measured subprocess is killed."""
ROOT = Path(__file__).resolve().parents[1]
PROFILE_TOP = 25
"""Functions listed per order by ``--profile``."""


# ----------------------------------------------------------------------------- subprocesses


@dataclass
class Child:
    """One measured subprocess, from ``os.wait4``: wall time from spawn to exit, its own CPU
    time and its own peak RSS (``ru_maxrss``: this process alone, not the running maximum
    over all children that ``RUSAGE_CHILDREN`` would give)."""

    argv: list[str]
    wall_s: float
    user_s: float
    sys_s: float
    peak_mib: float
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def check(self, what: str) -> None:
        if self.returncode != 0:
            tail = "\n".join((self.stderr or self.stdout).splitlines()[-30:])
            raise RuntimeError(f"{what} exited with {self.returncode}:\n{tail}")

    def summary(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "user_s": round(self.user_s, 3),
            "sys_s": round(self.sys_s, 3),
            "peak_rss_mib": round(self.peak_mib, 1),
            "returncode": self.returncode,
        }


def run_child(argv: Sequence[str], cwd: Path, tag: str, env: dict[str, str] | None = None) -> Child:
    """Run ``argv`` to its end with stdout and stderr in files under ``cwd`` (no pipe to
    drain while it runs), and take its resource usage when reaping it."""
    out_path, err_path = cwd / f"{tag}.out", cwd / f"{tag}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        timer = threading.Timer(CHILD_TIMEOUT, proc.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Child(
        argv=list(argv),
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_mib=usage.ru_maxrss / 1024,  # KiB on Linux
        returncode=proc.returncode,
        stdout=out_path.read_text(encoding="utf-8", errors="replace"),
        stderr=err_path.read_text(encoding="utf-8", errors="replace"),
    )


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise ValueError(f"no JSON object in the output: {text[-500:]!r}")


def syncengine_bin() -> str:
    beside = Path(sys.executable).with_name("syncengine")
    if beside.exists():
        return str(beside)
    found = shutil.which("syncengine")
    if found is None:
        raise SystemExit("syncengine is not installed: pip install -e '.[bench]'")
    return found


def git_describe() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def working_tree() -> dict[str, Any]:
    """The uncommitted changes the measured code carries (the package is installed editable):
    the files, and a short hash of ``git diff HEAD`` to tell two dirty trees apart."""
    try:
        files = subprocess.run(
            ["git", "diff", "HEAD", "--name-only"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=ROOT, capture_output=True).stdout
    except OSError:
        return {}
    return {"changed": files, "diff_sha1": hashlib.sha1(diff).hexdigest()[:10]}


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ----------------------------------------------------------------------------- the sandbox


class Sandbox:
    """``syncengine sandbox`` in a subprocess: started seeded, killed on leaving the
    ``running()`` context whatever happened. Its request log (``/_sandbox/requests``) counts
    what each measurement sent; ``/proc`` gives its CPU time and RSS."""

    def __init__(self, customers: int, latency_ms: int, rate_limit: float | None) -> None:
        self.customers = customers
        self.argv = [
            syncengine_bin(),
            "sandbox",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--seed",
            str(customers),
            "--latency-ms",
            str(latency_ms),
        ]
        if rate_limit:
            self.argv += ["--rate-limit", str(rate_limit)]
        self.url = ""
        self.seed_s = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: httpx.Client | None = None

    @contextmanager
    def running(self, folder: Path) -> Iterator[Sandbox]:
        err = (folder / "sandbox.err").open("wb")
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
        )
        try:
            self.url = self._wait_listening(folder / "sandbox.err")
            self.seed_s = time.perf_counter() - start
            self.http = httpx.Client(base_url=self.url, timeout=60.0)
            self.http.get("/_sandbox/health").raise_for_status()
            yield self
        finally:
            if self.http is not None:
                self.http.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            err.close()

    def _wait_listening(self, err_path: Path) -> str:
        """The URL from the line ``sandbox listening on http://HOST:PORT``, printed once the
        data is seeded and the socket accepts connections."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + SANDBOX_START_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline().decode()
                if "listening on " in line:
                    return line.rsplit("listening on ", 1)[1].strip()
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        tail = err_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the sandbox did not start ({' '.join(self.argv)}):\n{tail}")

    def _proc_fields(self) -> list[str]:
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()

    def cpu_s(self) -> float:
        """User + system CPU seconds the sandbox has used so far (``/proc/PID/stat``)."""
        fields = self._proc_fields()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def clear_log(self) -> None:
        assert self.http is not None
        self.http.delete("/_sandbox/requests").raise_for_status()

    def take_log(self) -> dict[str, Any]:
        """Requests logged since the last ``clear_log()``: the total, per route (method and
        first path segment) and per status, then clear the log."""
        assert self.http is not None
        response = self.http.get("/_sandbox/requests")
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()["requests"]
        self.clear_log()
        routes: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for entry in entries:
            head = str(entry["path"]).strip("/").split("/", 1)[0]
            routes[f"{entry['method']} /{head}"] += 1
            statuses[str(entry["status"])] += 1
        return {"total": len(entries), "routes": dict(routes), "statuses": dict(statuses)}

    @contextmanager
    def metered(self, into: dict[str, Any]) -> Iterator[None]:
        """Fill ``into`` with the sandbox's requests and CPU seconds during the block."""
        self.clear_log()
        before = self.cpu_s()
        into["load_before"] = load()
        yield
        into["sandbox_cpu_s"] = round(self.cpu_s() - before, 3)
        into["requests"] = self.take_log()


# ----------------------------------------------------------------------------- the measurements


def compile_package() -> None:
    """Write the package's bytecode once, before anything is measured (see ``child_env``)."""
    repo = Path(__file__).resolve().parent.parent
    for package in ("syncengine", "connectors"):
        compileall.compile_dir(repo / package, quiet=1)


def child_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SYNCENGINE_CONFIG", None)
    # both tools run from compiled bytecode, as installed packages do: dlt's is compiled in
    # site-packages, and an editable syncengine would otherwise compile every module again
    # in every run (0.15-0.2 s) when the environment says not to write bytecode
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # dlt: no telemetry, and its global folder (~/.dlt) inside the temporary directory.
    env["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    env["DLT_DATA_DIR"] = str(folder / "dlt-data")
    return env


def measure_floor(sandbox: Sandbox, folder: Path, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with sandbox.metered(out):
        child = run_child(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--role",
                "floor",
                "--base-url",
                sandbox.url,
                "--repeats",
                str(repeats),
            ],
            folder,
            "floor",
            child_env(folder),
        )
    child.check("the floor")
    report = last_json_line(child.stdout)
    out.update(process=child.summary(), **report)
    out["seconds"] = statistics.median(report["runs_s"])
    return out


def measure_dlt(sandbox: Sandbox, folder: Path) -> dict[str, Any]:
    work = folder / "dlt"
    work.mkdir()
    out: dict[str, Any] = {}
    with sandbox.metered(out):
        child = run_child(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--role",
                "dlt",
                "--base-url",
                sandbox.url,
                "--workdir",
                str(work),
            ],
            work,
            "dlt",
            child_env(folder),
        )
    child.check("dlt")
    out.update(process=child.summary(), **last_json_line(child.stdout))
    out["seconds"] = child.wall_s
    check = run_child(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            "dlt-check",
            "--workdir",
            str(work),
        ],
        work,
        "dlt-check",
        child_env(folder),
    )
    check.check("reading dlt's duckdb")
    out.update(last_json_line(check.stdout))
    if out["rows"] != sandbox.customers:
        out["problem"] = f"dlt loaded {out['rows']} customers, not {sandbox.customers}"
    return out


def write_config(
    folder: Path,
    url: str,
    rate_limit: float,
    concurrency: int | None,
    entities: Sequence[str] = ("customers",),
) -> tuple[Path, Path]:
    """A config syncing the sandbox's ``entities`` (customers) with an empty CSV folder,
    state in SQLite; returns (config path, books folder)."""
    books = folder / "books"
    extra = f"concurrency = {concurrency}\n" if concurrency else ""
    text = textwrap.dedent(
        f"""\
        [state]
        url = "sqlite:///{(folder / "state.db").as_posix()}"

        [connectors.hcp]
        type = "housecallpro"
        base_url = "{url}"
        api_key = "{API_KEY}"
        rate_limit = {rate_limit}
        page_size = {PAGE_SIZE}
        """
    )
    text += extra
    text += textwrap.dedent(
        f"""
        [connectors.books]
        type = "spreadsheet"
        path = "{books.as_posix()}"

        [[pipelines]]
        name = "peer"
        members = ["hcp", "books"]
        entities = {json.dumps(list(entities))}

        [pipelines.conflicts]
        default = ["hcp"]
        """
    )
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path, books


def planned_actions(result: dict[str, Any]) -> dict[str, int]:
    """``{"books.create": 10000, ...}`` from ``syncengine sync --json`` (non-zero only)."""
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


def csv_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def measure_sync(
    sandbox: Sandbox, folder: Path, config: Path, books: Path, tag: str, expected: dict[str, int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    argv = [syncengine_bin(), "sync", "-c", str(config), "--json", "-q"]
    with sandbox.metered(out):
        child = run_child(argv, folder, tag, child_env(folder))
    child.check(f"syncengine sync ({tag})")
    result = last_json_object(child.stdout)
    out["process"] = child.summary()
    out["seconds"] = child.wall_s
    out["engine_s"] = result.get("duration_s")
    out["planned"] = planned_actions(result)
    out["csv_rows"] = csv_rows(books / "customers.csv")
    out["ok"] = out["planned"] == expected and out["csv_rows"] == sandbox.customers
    if not out["ok"]:
        out["problem"] = (
            f"planned {out['planned']}, expected {expected}; CSV rows {out['csv_rows']}"
        )
    return out


def last_json_object(text: str) -> dict[str, Any]:
    """The object ``syncengine sync --json`` prints (indented, over several lines)."""
    start = text.find("{")
    value = json.loads(text[start:]) if start >= 0 else None
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, dict):
        raise ValueError(f"no JSON object in the sync's output: {text[-500:]!r}")
    return value


def profile_initial(
    sandbox: Sandbox, folder: Path, rate: float, concurrency: int | None
) -> dict[str, Any]:
    """One more initial sync (fresh state and books, not timed) under ``python -m cProfile``;
    print the top functions by own time and by cumulative time, and return them."""
    work = folder / "profile"
    work.mkdir()
    config, _books = write_config(work, sandbox.url, rate, concurrency)
    stats_path = work / "initial.prof"
    argv = [sys.executable, "-m", "cProfile", "-o", str(stats_path), syncengine_bin()]
    child = run_child(
        [*argv, "sync", "-c", str(config), "--json", "-q"], work, "profile", child_env(folder)
    )
    child.check("the profiled sync")
    out: dict[str, Any] = {"wall_s": round(child.wall_s, 2)}
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(str(stats_path), stream=text)
        stats.sort_stats(order).print_stats(PROFILE_TOP)
        listing = text.getvalue()
        body = listing[listing.find("   ncalls") :]
        print(
            f"\nprofiled initial sync of {sandbox.customers} ({child.wall_s:.1f} s under "
            f"cProfile), top {PROFILE_TOP} by {order}:\n{body.rstrip()}"
        )
        out[order] = body.splitlines()
    return out


# ----------------------------------------------------------------------------- one size


def run_size(args: argparse.Namespace, customers: int) -> dict[str, Any]:
    sandbox = Sandbox(customers, args.latency_ms, args.sandbox_rate_limit)
    rate = args.rate_limit if args.rate_limit is not None else 0.0
    row: dict[str, Any] = {"customers": customers}
    with tempfile.TemporaryDirectory(prefix="peer-dlt-") as tmp:
        folder = Path(tmp)
        with sandbox.running(folder):
            row["sandbox"] = {
                "start_s": round(sandbox.seed_s, 2),
                "rss_mib": round(sandbox.rss_mib(), 1),
                "argv": sandbox.argv[1:],
            }
            print(
                f"\n== {customers} customers: sandbox at {sandbox.url}, seeded and listening "
                f"in {sandbox.seed_s:.1f} s ({row['sandbox']['rss_mib']:.0f} MiB)",
                flush=True,
            )
            row["floor"] = measure_floor(sandbox, folder, args.floor_repeats)
            print(
                f"floor        {row['floor']['seconds']:8.2f} s  runs {row['floor']['runs_s']}",
                flush=True,
            )
            row["dlt"] = measure_dlt(sandbox, folder)
            print(
                f"dlt          {row['dlt']['seconds']:8.2f} s  (import {row['dlt']['import_s']}"
                f" s, run {row['dlt']['run_s']} s: extract {row['dlt']['extract_s']}, normalize "
                f"{row['dlt']['normalize_s']}, load {row['dlt']['load_s']}), "
                f"{row['dlt']['rows']} rows, tables {row['dlt']['tables']}",
                flush=True,
            )
            se_dir = folder / "syncengine"
            se_dir.mkdir()
            config, books = write_config(se_dir, sandbox.url, rate, args.concurrency)
            row["initial"] = measure_sync(
                sandbox, se_dir, config, books, "initial", {"books.create": customers}
            )
            print(
                f"syncengine   {row['initial']['seconds']:8.2f} s  (engine "
                f"{row['initial']['engine_s']} s) initial, planned {row['initial']['planned']}",
                flush=True,
            )
            row["no_change"] = measure_sync(sandbox, se_dir, config, books, "no-change", {})
            print(
                f"no-change    {row['no_change']['seconds']:8.2f} s  (engine "
                f"{row['no_change']['engine_s']} s), planned {row['no_change']['planned']}",
                flush=True,
            )
            row["sandbox"]["rss_end_mib"] = round(sandbox.rss_mib(), 1)
            if args.profile:
                row["profile"] = profile_initial(sandbox, folder, rate, args.concurrency)
            if args.rounds > 1:
                row["rounds"] = more_rounds(sandbox, folder, args, rate, row)
    floor_s = row["floor"]["seconds"]
    row["ratios"] = {
        "syncengine_dlt": row["initial"]["seconds"] / row["dlt"]["seconds"],
        "syncengine_floor": row["initial"]["seconds"] / floor_s,
        "dlt_floor": row["dlt"]["seconds"] / floor_s,
        "engine_dlt_run": (row["initial"]["engine_s"] or math.nan) / row["dlt"]["run_s"],
        "syncengine_dlt_cpu": row["initial"]["process"]["cpu_s"] / row["dlt"]["process"]["cpu_s"],
        "no_change_floor": row["no_change"]["seconds"] / floor_s,
    }
    return row


def more_rounds(
    sandbox: Sandbox, folder: Path, args: argparse.Namespace, rate: float, first: dict[str, Any]
) -> dict[str, Any]:
    """Rounds 2 to ``--rounds`` of the side-by-side: dlt's load, then syncengine's initial
    sync, each round in fresh folders (a new duckdb, a new state store and empty books), so
    that a busy moment of the host shows as one round's ratio rather than as the result.
    Round 1 is the one measured above. Returns every round's seconds, ratio and problems, and
    the median ratio of the rounds without a problem (None when every round had one)."""
    rounds = [_round(1, first["dlt"], first["initial"])]
    for n in range(2, args.rounds + 1):
        here = folder / f"round-{n}"
        here.mkdir()
        dlt = measure_dlt(sandbox, here)
        se_dir = here / "syncengine"
        se_dir.mkdir()
        config, books = write_config(se_dir, sandbox.url, rate, args.concurrency)
        initial = measure_sync(
            sandbox, se_dir, config, books, "initial", {"books.create": sandbox.customers}
        )
        rounds.append(_round(n, dlt, initial))
        print(
            f"round {n}      dlt {dlt['seconds']:.2f} s, syncengine {initial['seconds']:.2f} s: "
            f"{rounds[-1]['ratio']:.2f}x{_cpu_shown(rounds[-1]['cpu_ratio'])}"
            + "".join(f"  PROBLEM: {p}" for p in rounds[-1]["problems"]),
            flush=True,
        )
    good = [r for r in rounds if not r["problems"]]
    cpu = [r["cpu_ratio"] for r in good if r["cpu_ratio"] is not None]
    return {
        "each": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in good) if good else None,
        "median_cpu_ratio": statistics.median(cpu) if cpu else None,
    }


def _cpu_shown(ratio: float | None) -> str:
    """A round's CPU ratio as printed beside its wall-time ratio."""
    return "" if ratio is None else f" (CPU {ratio:.2f}x)"


def _round(n: int, dlt: dict[str, Any], initial: dict[str, Any]) -> dict[str, Any]:
    """One round of the side-by-side: its seconds, its ratio, and what went wrong in it."""
    problems = [
        f"round {n} {name}: {m['problem']}"
        for name, m in (("dlt", dlt), ("initial", initial))
        if m.get("problem")
    ]
    cpu = [m.get("process", {}).get("cpu_s") for m in (initial, dlt)]
    return {
        "round": n,
        "dlt_s": dlt["seconds"],
        "syncengine_s": initial["seconds"],
        "ratio": initial["seconds"] / dlt["seconds"],
        "cpu_ratio": cpu[0] / cpu[1] if cpu[0] and cpu[1] else None,
        "problems": problems,
    }


def run_latency(args: argparse.Namespace, customers: int) -> dict[str, Any]:
    """Issue 12's "real latency" target: the initial sync against a sandbox with latency,
    at ``rate_limit = R`` (bound ``requests / R``), then without a rate limit at
    ``concurrency = K`` (bound ``requests × latency / K``)."""
    latency_ms = args.latency_ms or 100
    rate = args.rate_limit if args.rate_limit is not None else 2.0
    concurrency = args.concurrency or 4
    sandbox = Sandbox(customers, latency_ms, args.sandbox_rate_limit)
    out: dict[str, Any] = {"customers": customers, "latency_ms": latency_ms, "cases": []}
    with tempfile.TemporaryDirectory(prefix="peer-dlt-latency-") as tmp:
        folder = Path(tmp)
        with sandbox.running(folder):
            print(
                f"\n== latency: {customers} customers, sandbox --latency-ms {latency_ms} at "
                f"{sandbox.url} (seeded in {sandbox.seed_s:.1f} s)",
                flush=True,
            )
            out["floor"] = measure_floor(sandbox, folder, 1)
            print(f"floor (sequential, no rate limit)  {out['floor']['seconds']:.2f} s", flush=True)
            for name, case_rate, case_concurrency in (
                (f"rate_limit = {rate:g}", rate, args.concurrency),
                (f"rate_limit = 0, concurrency = {concurrency}", 0.0, concurrency),
            ):
                case_dir = folder / f"case{len(out['cases'])}"
                case_dir.mkdir()
                config, books = write_config(case_dir, sandbox.url, case_rate, case_concurrency)
                result = measure_sync(
                    sandbox, case_dir, config, books, "initial", {"books.create": customers}
                )
                requests = int(result["requests"]["total"])
                if case_rate:
                    bound = requests / case_rate
                    bound_text = f"requests / rate = {requests} / {case_rate:g}"
                else:
                    bound = math.ceil(requests / concurrency) * latency_ms / 1000
                    bound_text = (
                        "ceil(requests / concurrency) x latency = "
                        f"ceil({requests} / {concurrency}) x {latency_ms} ms"
                    )
                case = {
                    "case": name,
                    "rate_limit": case_rate,
                    "concurrency": case_concurrency,
                    "bound_s": round(bound, 3),
                    "bound": bound_text,
                    "ratio": result["seconds"] / bound,
                    "engine_ratio": (result["engine_s"] or math.nan) / bound,
                    **result,
                }
                out["cases"].append(case)
                print(
                    f"{name:38} {result['seconds']:7.2f} s (engine {result['engine_s']} s)  "
                    f"bound {bound:.2f} s ({bound_text})  ratio {case['ratio']:.2f} "
                    f"(engine {case['engine_ratio']:.2f})  "
                    f"requests {routes_text(result['requests'])}  "
                    f"CPU {result['process']['cpu_s']:.2f} s  "
                    f"ok={result['ok']}",
                    flush=True,
                )
    return out


# ----------------------------------------------------------------------------- printing


def routes_text(log: dict[str, Any]) -> str:
    parts = [f"{route}={count}" for route, count in sorted(log["routes"].items())]
    odd = {s: c for s, c in log["statuses"].items() if not s.startswith("2")}
    if odd:
        parts.append("status " + " ".join(f"{s}={c}" for s, c in sorted(odd.items())))
    return " ".join(parts) or "none"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\nTimes (seconds; syncengine and dlt: whole process, spawn to exit; "
        "in brackets: engine's duration_s / dlt's pipeline.run; with --rounds, round 1)"
    )
    head = (
        f"{'N':>7}  {'floor s':>7}  {'dlt s':>15}  {'syncengine s':>15}  {'se/dlt':>6}  "
        f"{'CPU se/dlt':>10}  {'se/floor':>8}  {'dlt/floor':>9}  {'no-change s':>15}  "
        f"{'nc/floor':>8}"
    )
    print(head)
    for r in rows:
        q = r["ratios"]
        dlt = f"{r['dlt']['seconds']:.2f} ({r['dlt']['run_s']:.2f})"
        se = f"{r['initial']['seconds']:.2f} ({r['initial']['engine_s']:.2f})"
        nc = f"{r['no_change']['seconds']:.2f} ({r['no_change']['engine_s']:.2f})"
        print(
            f"{r['customers']:>7}  {r['floor']['seconds']:>7.2f}  {dlt:>15}  {se:>15}  "
            f"{q['syncengine_dlt']:>6.2f}  {q['syncengine_dlt_cpu']:>10.2f}  "
            f"{q['syncengine_floor']:>8.1f}  {q['dlt_floor']:>9.1f}"
            f"  {nc:>15}  {q['no_change_floor']:>8.2f}"
        )
    print(
        "\nPeak RSS MiB of each process (os.wait4), its CPU seconds, the sandbox's CPU "
        "seconds meanwhile, and the requests the sandbox logged"
    )
    print(
        f"{'N':>7}  {'run':<10} {'peak MiB':>8}  {'CPU s':>7}  {'sandbox CPU s':>13}  "
        f"{'load':>5}  requests"
    )
    for r in rows:
        for key, label in (
            ("floor", "floor"),
            ("dlt", "dlt"),
            ("initial", "initial"),
            ("no_change", "no-change"),
        ):
            m = r[key]
            print(
                f"{r['customers']:>7}  {label:<10} {m['process']['peak_rss_mib']:>8.0f}  "
                f"{m['process']['cpu_s']:>7.2f}  {m['sandbox_cpu_s']:>13.2f}  "
                f"{m['load_before']:>5.2f}  {m['requests']['total']} ({routes_text(m['requests'])})"
            )
        print(
            f"{r['customers']:>7}  {'sandbox':<10} {r['sandbox']['rss_end_mib']:>8.0f}  "
            f"(RSS at the end; seeded in {r['sandbox']['start_s']} s)"
        )
    rounded = [r for r in rows if "rounds" in r]
    if rounded:
        print(
            "\nsyncengine's initial sync / dlt's load, round by round (fresh folders each round; "
            "the tables above are round 1's); the median leaves out rounds with a problem; in "
            "brackets, the same for the processes' CPU seconds"
        )
        for r in rounded:
            each = "  ".join(
                f"{x['ratio']:.2f}{'!' if x['problems'] else ''}" for x in r["rounds"]["each"]
            )
            median = r["rounds"]["median_ratio"]
            shown = "none" if median is None else f"{median:.2f}"
            cpu = r["rounds"].get("median_cpu_ratio")
            shown += "" if cpu is None else f" (CPU {cpu:.2f})"
            cpus = "  ".join(
                "-" if x["cpu_ratio"] is None else f"{x['cpu_ratio']:.2f}"
                for x in r["rounds"]["each"]
            )
            print(f"{r['customers']:>7}  median {shown}  rounds {each}  (CPU {cpus})")
    problems = [
        f"{r['customers']} {key}: {r[key]['problem']}"
        for r in rows
        for key in ("dlt", "initial", "no_change")
        if r[key].get("problem")
    ] + [
        f"{r['customers']} {p}"
        for r in rounded
        for x in r["rounds"]["each"][1:]  # round 1's are the runs above
        for p in x["problems"]
    ]
    for problem in problems:
        print("PROBLEM:", problem)


# ----------------------------------------------------------------------------- worker roles


def role_floor(base_url: str, repeats: int) -> None:
    """Read every page of ``GET /customers`` with a bare httpx client, ``repeats`` times;
    print the seconds of each pass (client already created, connection not yet open)."""
    headers = {"Authorization": f"Token {API_KEY}"}
    runs: list[float] = []
    pages = records = retries = 0
    for _ in range(repeats):
        with httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as client:
            pages = records = 0
            start = time.perf_counter()
            page, total_pages = 1, 1
            while page <= total_pages:
                response = client.get("/customers", params={"page": page, "page_size": PAGE_SIZE})
                if response.status_code == 429:  # only with a sandbox-side --rate-limit
                    retries += 1
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                response.raise_for_status()
                body = response.json()
                total_pages = int(body["total_pages"])
                records += len(body["customers"])
                pages += 1
                page += 1
            runs.append(round(time.perf_counter() - start, 4))
    print(json.dumps({"runs_s": runs, "pages": pages, "records": records, "retries": retries}))


def role_dlt(base_url: str, workdir: Path) -> None:
    """Load the customers with dlt's ``rest_api`` source into duckdb (merge on ``id``); print
    the import and run seconds, then (outside the timing) the rows loaded."""
    start = time.perf_counter()
    import dlt
    from dlt.sources.rest_api import rest_api_source
    from dlt.sources.rest_api.typing import RESTAPIConfig

    imported = time.perf_counter()
    config: RESTAPIConfig = {
        "client": {
            "base_url": base_url.rstrip("/") + "/",
            "auth": {
                "type": "api_key",
                "name": "Authorization",
                "api_key": f"Token {API_KEY}",
                "location": "header",
            },
            "paginator": {
                "type": "page_number",
                "base_page": 1,
                "page_param": "page",
                "total_path": "total_pages",
            },
        },
        "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
        "resources": [
            {
                "name": "customers",
                "endpoint": {
                    "path": "customers",
                    "params": {"page_size": PAGE_SIZE},
                    "data_selector": "customers",
                },
            }
        ],
    }
    pipeline = dlt.pipeline(
        pipeline_name="peer_dlt",
        destination=dlt.destinations.duckdb(str(workdir / "peer.duckdb")),
        dataset_name="hcp",
        pipelines_dir=str(workdir / "pipelines"),
    )
    info = pipeline.run(rest_api_source(config))
    done = time.perf_counter()
    steps = {
        "extract_s": _step_seconds(pipeline.last_trace, "extract"),
        "normalize_s": _step_seconds(pipeline.last_trace, "normalize"),
        "load_s": _step_seconds(pipeline.last_trace, "load"),
    }
    print(
        json.dumps(
            {
                "import_s": round(imported - start, 3),
                "run_s": round(done - imported, 3),
                **steps,
                "failed_jobs": bool(info.has_failed_jobs),
            }
        )
    )


def role_dlt_check(workdir: Path) -> None:
    """What dlt loaded (run in its own process after the timed one): rows and tables."""
    import duckdb

    with duckdb.connect(str(workdir / "peer.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM hcp.customers").fetchone()
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'hcp'"
        ).fetchall()
    print(
        json.dumps(
            {
                "rows": int(rows[0]) if rows else 0,
                "tables": sorted(str(t[0]) for t in tables),
            }
        )
    )


def _step_seconds(trace: Any, step: str) -> float | None:
    for item in getattr(trace, "steps", []):
        if item.step == step and item.started_at and item.finished_at:
            seconds: float = (item.finished_at - item.started_at).total_seconds()
            return round(seconds, 3)
    return None


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--customers",
        type=int,
        action="append",
        metavar="N",
        help="customers seeded in the sandbox; repeat for several sizes (default 10000)",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        metavar="MS",
        help="the sandbox's delay per request (default 0; with --latency: 100)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="R",
        help="syncengine's client-side rate_limit, requests/s (default 0 = off; "
        "with --latency: 2). dlt and the floor have no client-side limit",
    )
    parser.add_argument(
        "--sandbox-rate-limit",
        type=float,
        default=None,
        metavar="R",
        help="the sandbox's own token bucket (429 + Retry-After), for every reader",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="K",
        help="the hcp connector's concurrency option in syncengine's config "
        "(default: the connector's; with --latency the second case uses 4)",
    )
    parser.add_argument(
        "--floor-repeats",
        type=int,
        default=3,
        metavar="K",
        help="passes of the floor loop (one process); the median is used (default 3)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="K",
        help="alternate dlt's load and syncengine's initial sync K times per size (fresh "
        "folders each round) and report every round's ratio and the median (default 1)",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="issue 12's real-latency case instead: initial sync at --latency-ms 100, "
        "rate_limit 2, against requests / rate; then no rate limit at concurrency 4",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, one more initial sync under cProfile (not timed): "
        "top functions by own and cumulative time",
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write every number as JSON")
    parser.add_argument("--role", choices=["floor", "dlt", "dlt-check"], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not a number of rounds (1 or more)")
    if args.rounds > 1 and args.latency:
        parser.error("--rounds applies to the side-by-side with dlt, not to --latency")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "floor":
        role_floor(args.base_url, args.repeats)
        return 0
    if args.role == "dlt":
        role_dlt(args.base_url, args.workdir)
        return 0
    if args.role == "dlt-check":
        role_dlt_check(args.workdir)
        return 0
    sizes: list[int] = args.customers or [10000]
    compile_package()
    meta: dict[str, Any] = {
        "git": git_describe(),
        "working_tree": working_tree(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv[1:],
    }
    print(
        f"peer_dlt at {meta['git']}, Python {meta['python']}, {meta['cpus']} CPUs, "
        f"load {meta['load_start']}",
        flush=True,
    )
    tree: dict[str, Any] = meta["working_tree"]
    print(
        f"uncommitted: {' '.join(tree.get('changed', [])) or 'none'} "
        f"(diff {tree.get('diff_sha1', '?')})",
        flush=True,
    )
    report: dict[str, Any] = {"meta": meta}
    if args.latency:
        report["latency"] = [run_latency(args, n) for n in sizes]
    else:
        rows = [run_size(args, n) for n in sizes]
        report["runs"] = rows
        print_table(rows)
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at the end: {meta['load_end']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
