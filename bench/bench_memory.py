"""The engine's memory at scale: peak RSS of ``syncengine sync`` with the sandbox in another
process (issue 12's memory targets), and the bytes a run holds per linked record.

For each size: start ``syncengine sandbox --seed N`` (``peer_dlt.Sandbox``), then run the
installed CLI twice in fresh processes against an empty CSV folder and a fresh SQLite state:
the first sync (HCP -> books) and a no-change resync. Each process's peak RSS and CPU come
from ``os.wait4`` when it is reaped (``peer_dlt.run_child``). Then, in this process, the link
index a run loads for the largest entity (``StateStore.link_index``: native id -> hub key and
native hash, the one structure a run holds per linked record of the entity it reads) is
measured with ``tracemalloc`` and divided by its links.

    python bench/bench_memory.py --customers 100000 --entities all
    python bench/bench_memory.py --customers 1000000 --entities customers
    python bench/bench_memory.py --customers 100000 --entities all --stages

``--stages`` runs one more first sync (fresh state, empty books) in a child Python process
that notes its RSS as each entity's planning and applying starts and ends (the engine's
``plan_entity`` and ``EntityApply.run``, wrapped), and a sampler's peak since the last note:
where in the run the peak falls.

Measures and prints; asserts nothing about time or memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_dlt  # (the sandbox process, child runs and their resource usage)

ENTITY_SETS = {"customers": ["customers"], "all": ["customers", "invoices", "payments"]}


def run_sync(folder: Path, config: Path, tag: str) -> dict[str, Any]:
    argv = [peer_dlt.syncengine_bin(), "sync", "-c", str(config), "--json", "-q"]
    child = peer_dlt.run_child(argv, folder, tag, peer_dlt.child_env(folder))
    child.check(f"syncengine sync ({tag})")
    result = peer_dlt.last_json_object(child.stdout)
    return {
        **child.summary(),
        "engine_s": result.get("duration_s"),
        "planned": peer_dlt.planned_actions(result),
    }


def rss_mib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def child_stages(config: Path) -> None:
    """In the child: one sync of ``config`` with the RSS noted around each entity's planning
    and applying, printed as JSON on the last line."""
    import threading
    import time

    from syncengine import apply, engine
    from syncengine.cli import app

    marks: list[dict[str, Any]] = []
    peak = [0]

    def note(what: str, entity: str) -> None:
        now = rss_mib()
        marks.append({"at": what, "entity": entity, "rss_mib": now, "peak_mib": max(peak[0], now)})
        peak[0] = now

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.02)

    plan_entity, run = engine.Engine.plan_entity, apply.EntityApply.run

    def planning(self: Any, pipeline: Any, entity: str, *args: Any, **kwargs: Any) -> Any:
        note("plan start", entity)
        planned = plan_entity(self, pipeline, entity, *args, **kwargs)
        note("plan end", entity)
        return planned

    def applying(self: Any, stop: Any = None) -> bool:
        note("apply start", self.ent.entity)
        finished = run(self, stop)
        note("apply end", self.ent.entity)
        return finished

    engine.Engine.plan_entity = planning  # type: ignore[method-assign]
    apply.EntityApply.run = applying  # type: ignore[method-assign]
    threading.Thread(target=sample, daemon=True).start()
    try:
        app(["sync", "-c", str(config), "-q"], standalone_mode=False)
    finally:
        print(json.dumps(marks))


def run_stages(folder: Path, url: str, entities: list[str]) -> list[dict[str, Any]]:
    config, _books = peer_dlt.write_config(folder, url, 0, None, entities)
    argv = [sys.executable, str(Path(__file__).resolve()), "--child-stages", str(config)]
    child = peer_dlt.run_child(argv, folder, "stages", peer_dlt.child_env(folder))
    child.check("the first sync with its stages noted")
    marks: list[dict[str, Any]] = json.loads(child.stdout.strip().splitlines()[-1])
    return marks


def print_stages(result: dict[str, Any]) -> None:
    print(f"first sync of {result['customers']:,} customers ({result['entities']}), RSS by stage:")
    for m in result["stages"]:
        print(
            f"  {m['at']:<11} {m['entity']:<10} {m['rss_mib']:>7,} MiB"
            f"  (peak since the last note {m['peak_mib']:,} MiB)"
        )


def link_index_bytes(state: Path, entity: str) -> tuple[int, int]:
    """(links, bytes traced) of the HCP link index of ``entity`` as a run loads it."""
    from syncengine.state import StateStore

    store = StateStore.open(f"sqlite:///{state.as_posix()}")
    try:
        gc.collect()
        tracemalloc.start()
        index = store.link_index("peer", entity, "hcp")
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return len(index), traced
    finally:
        store.close()


def run_size(customers: int, entity_set: str, stages: bool = False) -> dict[str, Any]:
    entities = ENTITY_SETS[entity_set]
    out: dict[str, Any] = {"customers": customers, "entities": entity_set}
    with tempfile.TemporaryDirectory(prefix="syncengine-memory-") as tmp:
        folder = Path(tmp)
        sandbox = peer_dlt.Sandbox(customers, 0, None)
        with sandbox.running(folder):
            out["sandbox_seed_s"] = round(sandbox.seed_s, 1)
            config, books = peer_dlt.write_config(folder, sandbox.url, 0, None, entities)
            out["initial"] = run_sync(folder, config, "initial")
            out["no_change"] = run_sync(folder, config, "no-change")
            if stages:
                (folder / "stages").mkdir()
                out["stages"] = run_stages(folder / "stages", sandbox.url, entities)
            out["sandbox_rss_mib"] = round(sandbox.rss_mib(), 1)
        rows = {e: peer_dlt.csv_rows(books / f"{e}.csv") for e in entities}
        out["rows"] = rows
        out["records"] = sum(rows.values())
        created = out["initial"]["planned"].get("books.create", 0)
        out["ok"] = (
            created == out["records"]
            and set(out["initial"]["planned"]) == {"books.create"}
            and not out["no_change"]["planned"]
        )
        largest = max(entities, key=lambda e: rows[e])
        links, traced = link_index_bytes(folder / "state.db", largest)
        out["link_index"] = {"entity": largest, "links": links, "bytes": traced}
        out["state_db_bytes"] = (folder / "state.db").stat().st_size
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'N':>9}  {'entities':9} {'records':>9}  {'initial MiB':>11} {'s':>7} {'CPU s':>7}"
        f"  {'no-change MiB':>13} {'s':>6}  {'B/record':>8}  {'index B/link':>12}"
        f"  {'state B/record':>14}  ok"
    )
    for r in results:
        ini, nc, li = r["initial"], r["no_change"], r["link_index"]
        per_record = ini["peak_rss_mib"] * 2**20 / max(1, r["records"])
        print(
            f"{r['customers']:>9,}  {r['entities']:9} {r['records']:>9,}  "
            f"{ini['peak_rss_mib']:>11,.0f} {ini['wall_s']:>7.1f} {ini['cpu_s']:>7.1f}  "
            f"{nc['peak_rss_mib']:>13,.0f} {nc['wall_s']:>6.1f}  {per_record:>8,.0f}  "
            f"{li['bytes'] / max(1, li['links']):>12,.0f}  "
            f"{r['state_db_bytes'] / max(1, r['records']):>14,.0f}  {'yes' if r['ok'] else 'NO'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, action="append", help="seeded customers")
    parser.add_argument("--entities", choices=sorted(ENTITY_SETS), default="all")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--stages", action="store_true", help="also note the RSS of a first sync by stage"
    )
    parser.add_argument("--child-stages", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_stages:
        child_stages(args.child_stages)
        return 0
    peer_dlt.compile_package()
    print(f"bench_memory at {peer_dlt.git_describe()}, load {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for n in args.customers or [10_000]:
        result = run_size(n, args.entities, args.stages)
        print(json.dumps(result, default=str), flush=True)
        results.append(result)
    print_table(results)
    for result in results:
        if "stages" in result:
            print_stages(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
