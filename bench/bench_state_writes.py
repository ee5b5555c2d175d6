"""Benchmark: what a sync's state writes cost when its records do not simply take the write.

A benchmark, not a test: it measures and prints, it never asserts. A resync of ``--records``
customers between two in-process memory members (no HTTP, so that the state store's work is
what differs), with a real SQLite file (or ``--state URL``: PostgreSQL), in four ways:

``updated``  every record changed on ``crm`` and ``books`` takes the update: the floor;
``failed``   every write to ``books`` fails (a CRM refusing them): each key's link turns dirty;
``skipped``  ``books`` can only create: each change is a skipped write, kept on record;
``deleted``  every record is gone from ``crm`` (a mass delete, approved): deleted everywhere.

Printed per way: the sync's seconds, the ratio to ``updated`` measured in the same run, and
the statements the state store sent (an ``executemany`` counts once) per 1,000 records::

    python bench/bench_state_writes.py                     # 20,000 records, SQLite
    python bench/bench_state_writes.py --records 5000 --state postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from syncengine import api
from syncengine.config import load_config
from syncengine.connectors.memory import MemoryConnector
from syncengine.logging import configure
from syncengine.state.store import mask_url

WAYS = ("updated", "failed", "skipped", "deleted")


def config_text(state: str, books_only_create: bool) -> str:
    books = '\nonly = { customers = ["create"] }' if books_only_create else ""
    return (
        f'[state]\nurl = "{state}"\n\n'
        '[connectors.crm]\ntype = "memory"\n\n'
        f'[connectors.books]\ntype = "memory"{books}\n\n'
        '[[pipelines]]\nname = "bench"\nmembers = ["crm", "books"]\nentities = ["customers"]\n'
        '[pipelines.conflicts]\ndefault = ["crm"]\n'
    )


class Statements:
    """Counts what every SQLAlchemy engine of the process sends to its driver."""

    def __init__(self) -> None:
        self.sent = 0
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.sent += 1


def one_way(way: str, records: int, state: str | None, folder: Path) -> dict[str, Any]:
    """Seed both members through a first sync, change them as ``way`` says, and time the
    resync, counting the statements it sends."""
    MemoryConnector.reset()
    work = folder / way
    work.mkdir()
    url = state or f"sqlite:///{(work / 'state.db').as_posix()}"
    path = work / "config.toml"
    path.write_text(config_text(url, way == "skipped"), encoding="utf-8")
    config = load_config(path)
    crm = MemoryConnector.get_dataset("crm")
    for n in range(records):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    [first] = api.sync(config)
    if first.exit_code != 0:
        raise SystemExit(f"the first sync failed: {first.error}")
    extra: dict[str, dict[str, object]] | None = None
    allow = False
    if way == "deleted":
        for n in range(records):
            crm.remove("customers", f"c{n}")
        allow = True
    else:
        for n in range(records):
            crm.put(
                "customers", f"c{n}", {"first_name": f"Anna {n}", "email": f"ann{n}@example.com"}
            )
    if way == "failed":
        fail: Callable[[str, str, str], bool] = lambda op, entity, ref: True  # noqa: E731
        extra = {"books": {"fail_write": fail}}
    counter = STATEMENTS
    before = counter.sent
    started = time.perf_counter()
    [result] = api.sync(config, connector_extra=extra, allow_mass_delete=allow)
    seconds = time.perf_counter() - started
    outcome = result.outcomes[0]
    return {
        "way": way,
        "seconds": round(seconds, 3),
        "statements": counter.sent - before,
        "applied": outcome.applied,
        "failures": len(outcome.failures),
        "skips": outcome.plan.counts().get("skipped", 0),
    }


STATEMENTS = Statements()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--state", help="a SQLAlchemy URL (default: a SQLite file per way)")
    parser.add_argument(
        "--ways",
        default=",".join(WAYS),
        help=f"which of {', '.join(WAYS)} (the first is the floor)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    if args.state and not args.state.startswith("postgresql"):
        parser.error("--state takes a PostgreSQL URL (SQLite is the default)")
    configure("error")  # the syncs' own log lines are not what is measured
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for way in args.ways.split(","):
            if way not in WAYS:
                parser.error(f"--ways: {way!r} is not one of {', '.join(WAYS)}")
            rows.append(one_way(way, args.records, args.state, Path(tmp)))
            if args.state:  # one database for every way: the next starts from nothing
                with sa.create_engine(args.state).begin() as conn:
                    for table in ("links", "records", "skips", "conflicts", "journal"):
                        conn.exec_driver_sql(f"DELETE FROM {table}")
    floor = rows[0]["seconds"]
    shown = mask_url(args.state) if args.state else "SQLite"
    print(f"resync of {args.records:,} customers, memory members, state: {shown}")
    print(f"{'way':<9} {'s':>7} {'x updated':>10} {'statements/1k':>14}  outcome")
    for row in rows:
        outcome = (
            f"applied {row['applied']}" if row["applied"] else ""
        ) + f" failures {row['failures']} skips {row['skips']}"
        print(
            f"{row['way']:<9} {row['seconds']:>7.2f} {row['seconds'] / floor:>10.2f} "
            f"{1000 * row['statements'] / args.records:>14.1f}  {outcome.strip()}"
        )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
