"""Benchmark: what a run costs when it has little or nothing to do.

A benchmark, not a test: it measures and prints, it never asserts. A daemon syncing every few
minutes, an event-driven run for one webhook, and the property tests' thousands of syncs all
pay a run's fixed cost: the state store's reads and transactions for each entity and member,
whatever the records. Three in-process memory members (no HTTP, so that the engine's own
work is what is measured) hold ``--records`` customers, each with an invoice and a payment
referring to it, and a real SQLite file (or ``--state URL``: PostgreSQL) holds the state.
After a first sync, ``--runs`` syncs are timed as a daemon runs them (one state store kept
open, one ``Engine`` run after another), in each of two ways:

``quiet``    nothing changed anywhere: every run plans nothing;
``one``      one customer's name changed on ``crm`` before each run: one update per member.

The floor, measured in the same run, is what any engine must do for a quiet run: read every
member's records of the three entities and the state's links of each (one query per entity
and member on the driver's own connection). Printed per way: milliseconds per run, the
ratio to the floor, the statements the state store sent per run (an ``executemany`` counts
once) and its transactions per run::

    python bench/bench_small_runs.py                      # 20 customers, 200 runs, SQLite
    python bench/bench_small_runs.py --state postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.memory import MemoryConnector
from syncengine.engine import Engine
from syncengine.logging import configure
from syncengine.state.schema import metadata
from syncengine.state.store import mask_url

MEMBERS = ("crm", "books", "office")
ENTITIES = ("customers", "invoices", "payments")
WAYS = ("quiet", "one")


def config_text(state: str) -> str:
    entities = json.dumps(list(ENTITIES))
    members = "".join(
        f'[connectors.{m}]\ntype = "memory"\nentities = {entities}\n\n' for m in MEMBERS
    )
    return (
        f'[state]\nurl = "{state}"\n\n{members}'
        f'[[pipelines]]\nname = "bench"\nmembers = {json.dumps(list(MEMBERS))}\n'
        f"entities = {json.dumps(list(ENTITIES))}\n"
        '[pipelines.conflicts]\ndefault = ["crm"]\n'
    )


class Counts:
    """Counts what every SQLAlchemy engine of the process sends to its driver and the
    transactions it begins; a read on a pooled connection's own cursor, which SQLAlchemy
    does not see, is counted by its checkout from the pool as one of each."""

    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._statement)
        sa.event.listen(sa.engine.Engine, "begin", self._begin)
        sa.event.listen(sa.pool.Pool, "checkout", self._checkout)
        self._raw = 0

    def _statement(self, *_args: Any) -> None:
        self.statements += 1

    def _begin(self, *_args: Any) -> None:
        self.transactions += 1

    def _checkout(self, *_args: Any) -> None:
        self._raw += 1

    @property
    def checkouts(self) -> int:
        return self._raw


def seed(records: int) -> None:
    crm = MemoryConnector.get_dataset("crm")
    for n in range(records):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
        crm.put("invoices", f"i{n}", {"invoice_number": f"INV-{n}", "customer": f"c{n}"})
        crm.put("payments", f"p{n}", {"amount": 100 + n, "invoice": f"i{n}", "note": f"p{n}"})


def floor_run(config: Config, state_url: str) -> float:
    """Seconds for the floor: every member's records of every entity, and the state's links
    of each, read once."""
    engine = sa.create_engine(state_url)
    started = time.perf_counter()
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        for member in MEMBERS:
            connector = config.make_connector(member)
            for entity in ENTITIES:
                list(connector.read(entity))
                cursor = raw.cursor()
                cursor.execute(
                    "SELECT native_id, native_hash FROM links WHERE pipeline = 'bench' "
                    f"AND entity = '{entity}' AND member = '{member}'"
                )
                cursor.fetchall()
                cursor.close()
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def measure(
    url: str, folder: Path, records: int, runs: int, counts: Counts
) -> list[dict[str, Any]]:
    """A first sync, the floor, then ``runs`` runs of each way: one row per way."""
    rows = []
    path = folder / "config.toml"
    path.write_text(config_text(url), encoding="utf-8")
    config = load_config(path)
    MemoryConnector.reset()
    seed(records)
    [first] = api.sync(config)
    if first.exit_code != 0:
        raise SystemExit(f"the first sync failed: {first.error}")
    crm = MemoryConnector.get_dataset("crm")
    store = api.open_store(config)
    pipeline = config.pipelines["bench"]
    floors = [floor_run(config, url) for _ in range(20)]
    floor = sorted(floors)[len(floors) // 2]
    for way in WAYS:
        statements, transactions = counts.statements, counts.transactions
        checkouts = counts.checkouts
        started = time.perf_counter()
        for run in range(runs):
            if way == "one":
                n = run % records
                crm.put(
                    "customers",
                    f"c{n}",
                    {"first_name": f"Ann {n} ({run})", "email": f"ann{n}@example.com"},
                )
            result = Engine(config, store).sync(pipeline)
            if result.exit_code != 0:
                raise SystemExit(f"a {way} run failed: {result.error}")
        seconds = (time.perf_counter() - started) / runs
        # checkouts that began no transaction: the reads on a connection's own cursor
        raw = (counts.checkouts - checkouts) - (counts.transactions - transactions)
        rows.append(
            {
                "way": way,
                "ms": round(1000 * seconds, 2),
                "floor_ms": round(1000 * floor, 3),
                "statements": (counts.statements - statements + raw) / runs,
                "transactions": (counts.transactions - transactions + raw) / runs,
            }
        )
    store.close()
    return rows


def forget(url: str) -> None:
    """Delete the bench pipeline's rows from every state table that has them."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if "pipeline" in table.c:
                conn.execute(table.delete().where(table.c.pipeline == "bench"))
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--state", help="a PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    if args.state and not args.state.startswith("postgresql"):
        parser.error("--state takes a PostgreSQL URL (SQLite is the default)")
    configure("error")  # the runs' own log lines are not what is measured
    counts = Counts()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.state or f"sqlite:///{Path(tmp, 'state.db').as_posix()}"
        try:
            rows = measure(url, Path(tmp), args.records, args.runs, counts)
        finally:
            if args.state:  # leave the database as it was found, also when a run failed
                forget(args.state)
    shown = mask_url(args.state) if args.state else "SQLite"
    print(
        f"runs of {args.records} customers + invoices + payments over {len(MEMBERS)} memory "
        f"members, state: {shown}; floor {rows[0]['floor_ms']} ms"
    )
    print(f"{'way':<6} {'ms/run':>8} {'x floor':>8} {'statements':>11} {'transactions':>13}")
    for row in rows:
        print(
            f"{row['way']:<6} {row['ms']:>8.2f} {row['ms'] / row['floor_ms']:>8.1f} "
            f"{row['statements']:>11.1f} {row['transactions']:>13.1f}"
        )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
