"""Benchmark: memory and open file handles of the daemon over many back-to-back runs.

A benchmark, not a test: it measures and prints, it never asserts. It answers one question:
does a long-running daemon leak (memory, file descriptors, threads, Python objects) from one
run to the next?

Set-up: the HCP sandbox as a real server process on loopback (``--customers`` seeded
customers), a CSV folder, a SQLite (or ``--state URL``) state store, and one pipeline
``hcp <-> books``. The first run copies every customer into the sheet and is not measured.
Then ``--runs`` runs go back to back through ``Daemon.run_pipeline`` — the daemon's own code
path: pause and backoff check, lease acquire, a fresh engine and connectors (new HTTP
client, new file reads), metrics, lease release — each of which must plan zero actions.

Printed at the start (after ``--warmup`` runs), the middle and the end: resident memory (RSS),
open file descriptors, threads, objects tracked by the garbage collector, and the mean run
time of the stretch before it::

    python bench/bench_daemon.py                  # 500 runs, 200 customers
    python bench/bench_daemon.py --runs 2000 --customers 1000 --json

``--process SECONDS`` measures the daemon as it is deployed instead: ``syncengine daemon
--http`` in its own process, its scheduler running the pipeline ``every 1s`` on its worker
threads (the in-process loop above runs on the main thread, where the collector behaves
otherwise). Its RSS (``/proc/<pid>/status``) and the runs in its history are sampled every
``--every`` seconds; printed: each sample, and the growth from the middle sample to the last
per 1 000 runs (the first minute holds the start-up and the collector's first pass)::

    python bench/bench_daemon.py --process 600    # ten minutes, a sample every 30 s
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for testbed

from syncengine import api
from syncengine.config import load_config
from syncengine.daemon import Daemon
from syncengine.logging import configure
from syncengine.state import StateStore
from testbed.sandbox import start_sandbox, syncengine_command

API_KEY = "bench-daemon"


@dataclass
class Sample:
    at_run: int
    rss_mib: float
    fds: int
    threads: int
    gc_objects: int
    mean_run_ms: float


def rss_mib(pid: int | str = "self") -> float:
    """The resident memory of this process (or of ``pid``), MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def sandbox(customers: int) -> Iterator[str]:
    """The HCP sandbox as a real process (``testbed.sandbox``); its URL."""
    with start_sandbox(api_key=API_KEY, seed=customers) as server:
        yield server.url


def write_config(folder: Path, url: str, state: str) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"""\
[state]
url = "{state}"

[daemon]
lease_ttl = 30

[connectors.hcp]
type = "housecallpro"
base_url = "{url}"
api_key = "{API_KEY}"
rate_limit = 0

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
[pipelines.conflicts]
default = ["hcp"]
""",
        encoding="utf-8",
    )
    return path


def run(runs: int, customers: int, warmup: int, state: str | None) -> dict[str, Any]:
    configure("error")
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp, sandbox(customers) as url:
        folder = Path(tmp)
        config = load_config(write_config(folder, url, state or "sqlite:///state.db"))
        store = api.open_store(config)
        try:
            daemon = Daemon(config, store)
            first = daemon.run_pipeline("hcp-books")
            if first.outcome != "ok":
                raise RuntimeError(f"the initial sync failed: {first.outcome} {first.error}")
            for _ in range(warmup):
                daemon.run_pipeline("hcp-books")
            gc.collect()
            checkpoints = {0, runs // 2, runs}
            samples: list[Sample] = []
            times: list[float] = []
            not_clean = 0
            for n in range(runs + 1):
                if n in checkpoints:
                    gc.collect()
                    samples.append(
                        Sample(
                            n,
                            round(rss_mib(), 1),
                            open_fds(),
                            threading.active_count(),
                            len(gc.get_objects()),
                            round(statistics.fmean(times) * 1000, 1) if times else 0.0,
                        )
                    )
                    times = []
                if n == runs:
                    break
                started = time.perf_counter()
                out = daemon.run_pipeline("hcp-books")
                times.append(time.perf_counter() - started)
                actions = (
                    sum(len(e.actions) for e in out.result.plan.entities) if out.result else -1
                )
                if out.outcome != "ok" or actions:
                    not_clean += 1
            history = len(store.runs("hcp-books", limit=100_000))
        finally:
            store.close()
    start, end = samples[0], samples[-1]
    return {
        "runs": runs,
        "customers": customers,
        "not_clean_runs": not_clean,
        "runs_in_history": history,
        "samples": [asdict(s) for s in samples],
        "growth": {
            "rss_mib": round(end.rss_mib - start.rss_mib, 1),
            "fds": end.fds - start.fds,
            "threads": end.threads - start.threads,
            "gc_objects": end.gc_objects - start.gc_objects,
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['runs']} back-to-back no-change runs of hcp <-> books "
        f"({report['customers']} customers; {report['runs_in_history']} runs in history; "
        f"{report['not_clean_runs']} runs planned actions or failed)",
        "",
        f"{'after run':>9}  {'RSS MiB':>8}  {'fds':>4}  {'threads':>7}  "
        f"{'gc objects':>10}  {'mean run ms':>11}",
    ]
    for s in report["samples"]:
        lines.append(
            f"{s['at_run']:>9}  {s['rss_mib']:>8.1f}  {s['fds']:>4}  "
            f"{s['threads']:>7}  {s['gc_objects']:>10}  {s['mean_run_ms']:>11.1f}"
        )
    g = report["growth"]
    lines += [
        "",
        f"growth start -> end: RSS {g['rss_mib']:+.1f} MiB, fds {g['fds']:+d}, "
        f"threads {g['threads']:+d}, gc objects {g['gc_objects']:+d}",
    ]
    return "\n".join(lines)


def run_process(seconds: float, every: float, customers: int) -> dict[str, Any]:
    """A real ``syncengine daemon`` syncing every second for ``seconds``: its RSS and the
    runs in its history, sampled every ``every`` seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp, sandbox(customers) as url:
        folder = Path(tmp)
        config = write_config(folder, url, "sqlite:///state.db")
        config.write_text(
            config.read_text(encoding="utf-8").replace(
                'members = ["hcp", "books"]\n',
                'members = ["hcp", "books"]\nschedule = "every 1s"\n',
            ),
            encoding="utf-8",
        )
        command = [
            *syncengine_command(),
            "daemon",
            "--config",
            str(config),
            "--http",
            "127.0.0.1:0",
        ]
        log = (folder / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            command, cwd=folder, stdout=log, stderr=log, start_new_session=True
        )
        samples: list[dict[str, Any]] = []
        try:
            started = time.monotonic()
            while True:
                time.sleep(every)
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({daemon.returncode})")
                with StateStore.open(f"sqlite:///{folder / 'state.db'}") as store:
                    runs = store.runs("hcp-books", limit=1_000_000)
                samples.append(
                    {
                        "seconds": round(time.monotonic() - started),
                        "runs": len(runs),
                        "failed": sum(r.outcome != "ok" for r in runs),
                        "rss_mib": round(rss_mib(daemon.pid), 1),
                    }
                )
                print(
                    f"{samples[-1]['seconds']:>7} s  {samples[-1]['runs']:>6} runs  "
                    f"{samples[-1]['rss_mib']:>7.1f} MiB",
                    flush=True,
                )
                if time.monotonic() - started >= seconds:
                    break
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            log.close()
    # from the middle sample: the first minute includes the daemon's start-up and its first
    # collector pass (``collector.COLLECT_EVERY_S``)
    first, last = samples[len(samples) // 2], samples[-1]
    runs = last["runs"] - first["runs"]
    grown = last["rss_mib"] - first["rss_mib"]
    return {
        "seconds": seconds,
        "customers": customers,
        "samples": samples,
        "growth": {
            "runs": runs,
            "rss_mib": round(grown, 1),
            "mib_per_1000_runs": round(grown / runs * 1000, 2) if runs else None,
            "failed_runs": last["failed"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--state", help="state store URL (default: SQLite in a temp folder)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--process",
        type=float,
        metavar="SECONDS",
        help="measure a real `syncengine daemon` process syncing every second for this long",
    )
    parser.add_argument("--every", type=float, default=30.0, help="--process: seconds a sample")
    args = parser.parse_args()

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # so that `timeout` or kill stop the daemon and sandbox

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    if args.process:
        if args.process < 180:
            print(
                "note: under 180 s the middle sample falls in the first minute (start-up and "
                "the collector's first pass): the growth below says little",
                file=sys.stderr,
            )
        report = run_process(args.process, args.every, args.customers)
        g = report["growth"]
        print(
            json.dumps(report, indent=2)
            if args.json
            else f"growth middle -> last sample: {g['rss_mib']:+.1f} MiB over {g['runs']} runs "
            f"({g['mib_per_1000_runs']} MiB per 1 000 runs; {g['failed_runs']} runs failed)"
        )
        return
    report = run(args.runs, args.customers, args.warmup, args.state)
    print(json.dumps(report, indent=2) if args.json else render(report))


if __name__ == "__main__":
    main()
