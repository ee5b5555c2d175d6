"""Crash safety with real processes: ``syncengine sync`` killed with SIGKILL at exact points.

Each test runs the Housecall Pro sandbox as a real server process on loopback and a
spreadsheet folder in ``tmp_path``, then runs the ``syncengine`` command as a subprocess that
kills itself (SIGKILL: no cleanup, no ``finally``) at a chosen point of its work: right after
a POST or a PUT was answered and before the state store recorded it, after the spreadsheet
file was written and before the state commit, while the next run is still recovering what the
killed one left pending. The points are deterministic crash points (``tests/crashpoints.py``:
both members are wrapped in a connector plugin that kills its own process at its N-th call of
a method), so every test lands its kills every time; a kill that does not happen fails the
test. Between kills both sides are edited the way people would: a cell of a linked row, a
customer's name through the API, a new row, a new customer.

Afterwards, syncs run to completion must converge with no duplicate on either side, no lost
edit, the same customers on both sides, and a second sync with nothing to do (DESIGN.md,
"Idempotency and crash safety").

Reproducible: the crash points and the edits come from ``random.Random(SEED)``. A failure
prints the run table, the sandbox request log tail and the last sync's output.

Two recovery bugs the timed kills once found (an interrupted update's value taken for a
member's own edit; an interrupted create's row linked with its later edit taken as already
seen) have their own regression tests at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.processes import ServerProcess
from testbed.sandbox import start_sandbox as start_sandbox_process
from testbed.sandbox import syncengine_command
from tests.crashpoints import (
    CRASH_AT,
    CRASH_LOG,
    LEASE_TTL,
    crash_at,
    crash_config,
    crashes,
    pipeline_busy,
    plugin_env,
)
from tests.csvfiles import CSV_HEADER, read_csv_table, write_csv
from tests.statefile import journal_counts, links

pytestmark = pytest.mark.integration

API_KEY = "test-key-XYZ"
SEED = 20240611
SANDBOX_CUSTOMERS = 40
WRITES = ("POST", "PUT", "DELETE")
LOOP_RUNS = 14
"""Syncs with a crash point in the convergence test, before the two that run to the end."""
SYNC_TIMEOUT = 120.0
BUSY_RETRIES = 50
"""Times a sync is started again while a killed run's lease still holds (0.2 s apart)."""


# ------------------------------------------------------------------------------ helpers


def start_sandbox(*, seed: int = SANDBOX_CUSTOMERS, latency_ms: int = 5) -> ServerProcess:
    return start_sandbox_process(api_key=API_KEY, seed=seed, latency_ms=latency_ms, timeout=30)


class Sandbox:
    """HTTP access to a running sandbox, as a person using the HCP app would (and its log)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.url = server.url
        self.http = httpx.Client(
            base_url=self.url, timeout=10, headers={"Authorization": f"Token {API_KEY}"}
        )

    def close(self) -> None:
        self.http.close()

    def customers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = (
                self.http.get(
                    "/customers",
                    params={
                        "page": page,
                        "page_size": 200,
                        "sort_by": "created_at",
                        "sort_direction": "asc",
                    },
                )
                .raise_for_status()
                .json()
            )
            out += body["customers"]
            if page >= body["total_pages"]:
                return out
            page += 1

    def put(self, customer_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.http.put(f"/customers/{customer_id}", json=body).raise_for_status().json())

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.http.post("/customers", json=body).raise_for_status().json())

    def requests(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.http.get("/_sandbox/requests").json()["requests"]
        return entries

    def posts(self) -> int:
        """How many POST /customers the sandbox answered so far."""
        return sum(1 for e in self.requests() if e["method"] == "POST")

    def log_tail(self, n: int = 40) -> str:
        try:
            entries = self.requests()
        except httpx.HTTPError as exc:
            return f"(request log unavailable: {exc})"
        lines = [
            f"{e['method']:6} {e['path']}{'?' + e['query'] if e['query'] else ''} -> {e['status']}"
            for e in entries[-n:]
        ]
        return f"{len(entries)} requests in all; the last {len(lines)}:\n" + "\n".join(lines)


def config_text(port: int, *, concurrency: int = 2, batch_size: int = 5) -> str:
    """Both members wrapped in the ``crashpoint`` plugin (``tests/crashpoints.py``);
    ``batch_size`` 0 leaves it unset (the engine's own batches)."""
    batches = f"batch_size = {batch_size}" if batch_size else ""
    return crash_config(f"""\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:{port}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
delete_customers = true
concurrency = {concurrency}
timeout = 10

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = ["customers"]
{batches}

[pipelines.conflicts]
default = ["hcp"]
""")


def norm_email(value: Any) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def read_sheet(path: Path) -> tuple[list[str], list[dict[str, str]], str]:
    """Header, the non-blank rows, and the line terminator of a CSV file."""
    table = read_csv_table(path)
    rows = [
        r for r in table.rows if any((v or "").strip() for v in r.values() if isinstance(v, str))
    ]
    return table.header, rows, table.newline


def write_sheet(
    path: Path, header: list[str], rows: list[dict[str, str]], newline: str = "\r\n"
) -> None:
    write_csv(path, rows, header, newline=newline, replace=True)


def pending_intents(db: Path) -> Counter[tuple[str, str]]:
    """(member, op) -> journal intents still pending, read straight from the state file."""
    if not db.exists():
        return Counter()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return Counter(
            {
                (member, op): n
                for member, op, n in con.execute(
                    "SELECT member, op, count(*) FROM journal WHERE state = 'pending' "
                    "GROUP BY member, op"
                )
            }
        )
    except sqlite3.OperationalError:  # killed before the schema was there
        return Counter()
    finally:
        con.close()


@dataclass
class Run:
    """One ``syncengine sync`` process and what became of it."""

    index: int
    crash: str
    """The crash point it was given ('' for none)."""
    returncode: int | None = None
    crashed: dict[str, Any] | None = None
    """Where it killed itself (its line of the crash log), when it did."""
    seconds: float = 0.0
    writes_seen: int = 0
    posts: int = 0
    pending_after: Counter[tuple[str, str]] = field(default_factory=Counter)
    stdout: str = ""
    stderr: str = ""
    edits: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        return self.crashed is not None

    def row(self) -> str:
        what = "KILLED" if self.killed else f"exit {self.returncode}"
        pending = ",".join(f"{m}.{op}={n}" for (m, op), n in sorted(self.pending_after.items()))
        return (
            f"#{self.index:02d} {self.crash or 'to completion':<34} {what:<8} "
            f"{self.seconds:6.2f}s writes={self.writes_seen:<3} pending-after={pending or '-'} "
            f"edits before: {', '.join(self.edits) or '-'}"
        )


class Harness:
    """The sandbox, a folder with config + books/customers.csv + state.db, and sync runs."""

    def __init__(self, tmp_path: Path, sandbox: Sandbox, **config: int) -> None:
        self.dir = tmp_path
        self.sandbox = sandbox
        self.config = tmp_path / "config.toml"
        self.config.write_text(config_text(sandbox.server.port or 0, **config), encoding="utf-8")
        self.sheet = tmp_path / "books" / "customers.csv"
        self.sheet.parent.mkdir(exist_ok=True)
        self.db = tmp_path / "state.db"
        self.crash_log = tmp_path / "crashes.jsonl"
        self.env = {k: v for k, v in os.environ.items() if k not in ("SYNCENGINE_CONFIG", CRASH_AT)}
        self.env.update(plugin_env(tmp_path / "plugin"))
        self.env.update(HCP_API_KEY=API_KEY, PYTHONUNBUFFERED="1")
        self.env[CRASH_LOG] = str(self.crash_log)
        self.runs: list[Run] = []

    def _run(self, crash: str, edits: list[str]) -> Run:
        """One sync, with ``crash`` as its crash point ('' for none), waited for."""
        run = Run(len(self.runs), crash, edits=edits)
        baseline = self.sandbox.requests()
        crashed_before = len(crashes(self.crash_log))
        out = self.dir / f"sync-{run.index:02d}.out"
        err = self.dir / f"sync-{run.index:02d}.err"
        env = dict(self.env)
        if crash:
            env[CRASH_AT] = crash
        if self.runs and self.runs[-1].killed:
            time.sleep(LEASE_TTL)  # the killed run's lease expires
        started = time.monotonic()
        for _attempt in range(BUSY_RETRIES):
            with out.open("wb") as fo, err.open("wb") as fe:
                proc = subprocess.Popen(
                    [*syncengine_command(), "sync", "--config", str(self.config), "--json"],
                    stdin=subprocess.DEVNULL,
                    stdout=fo,
                    stderr=fe,
                    env=env,
                    cwd=self.dir,
                )
            try:
                run.returncode = proc.wait(timeout=SYNC_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(
                    f"sync #{run.index} did not finish within {SYNC_TIMEOUT} s"
                ) from None
            if not pipeline_busy(run.returncode, err.read_text(encoding="utf-8")):
                break
            time.sleep(0.2)  # the killed run's lease has not expired yet
        run.seconds = time.monotonic() - started
        run.stdout = out.read_text(encoding="utf-8", errors="replace")
        run.stderr = err.read_text(encoding="utf-8", errors="replace")
        fired = crashes(self.crash_log)[crashed_before:]
        new = self.sandbox.requests()[len(baseline) :]
        run.writes_seen = sum(1 for e in new if e["method"] in WRITES)
        run.posts = sum(1 for e in new if e["method"] == "POST")
        run.pending_after = pending_intents(self.db)
        self.runs.append(run)
        if run.returncode == -signal.SIGKILL:
            assert len(fired) == 1, f"sync #{run.index} was killed, but not by {crash!r}: {fired}"
            run.crashed = fired[0]
        else:
            assert not fired, f"sync #{run.index} exited {run.returncode} after crashing: {fired}"
        return run

    def crash_at(self, point: str, edits: list[str]) -> Run:
        """A sync that must kill itself at ``point`` (a ``CRASH_AT`` value)."""
        run = self._run(point, edits)
        assert run.killed, (
            f"sync #{run.index} never reached its crash point {point} (exit {run.returncode})"
        )
        return run

    def crash(self, member: str, method: str, n: int = 1, when: str = "after") -> Run:
        """A sync that must kill itself at the ``n``-th ``method`` call on ``member``."""
        return self.crash_at(crash_at(member, method, "customers", n, when), [])

    def sync(self, edits: list[str] | None = None) -> tuple[Run, dict[str, Any]]:
        run = self._run("", edits or [])
        try:
            result: dict[str, Any] = json.loads(run.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"sync #{run.index} exited {run.returncode} without its JSON result\n"
                f"{self.report()}"
            ) from None
        return run, result

    # -- what the books hold
    def sheet_rows(self) -> list[dict[str, str]]:
        return read_sheet(self.sheet)[1] if self.sheet.exists() else []

    # -- reporting
    def report(self) -> str:
        parts = ["runs:", *(r.row() for r in self.runs)]
        last = self.runs[-1] if self.runs else None
        if last is not None:
            parts += [
                f"--- last sync (#{last.index}) stdout ---",
                last.stdout[-3000:],
                f"--- last sync (#{last.index}) stderr ---",
                last.stderr[-3000:],
            ]
        crashed = [r for r in self.runs if not r.killed and r.returncode not in (0, 1)]
        for r in crashed[-2:]:
            parts += [f"--- sync #{r.index} exited {r.returncode}; stderr ---", r.stderr[-3000:]]
        parts += ["--- sandbox request log ---", self.sandbox.log_tail()]
        parts += [f"--- journal: {dict(journal_counts(self.db))}"]
        return "\n".join(parts)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Any assertion failing inside gets the run table, request log and sync output."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n\n{self.report()}") from None


def assert_nothing_to_do(run: Run, result: dict[str, Any]) -> None:
    counts = result["entities"]["customers"]
    writes = {
        (m, op): counts[m][op]
        for m in ("hcp", "books")
        for op in ("create", "update", "delete")
        if counts[m][op]
    }
    assert not writes, f"a second sync after convergence still writes: {writes}"
    assert counts["errors"] == 0 and counts["failed"] == 0, f"record errors: {counts}"
    assert run.returncode == 0 or (run.returncode == 1 and result["open_conflicts"] > 0), (
        f"exit {run.returncode} with nothing to do and {result['open_conflicts']} open conflicts"
    )


def nameless_signatures(hcp: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(first, last) of the customers without an email, counted."""
    return Counter(
        (text(c.get("first_name")), text(c.get("last_name")))
        for c in hcp
        if not norm_email(c.get("email"))
    )


def assert_no_duplicates(
    hcp: list[dict[str, Any]], rows: list[dict[str, str]], emailless: Counter[tuple[str, str]]
) -> None:
    """No customer twice on either side. ``emailless``: the customers without an email that
    there should be (they cannot be told apart by email)."""
    hcp_emails = Counter(norm_email(c.get("email")) for c in hcp if norm_email(c.get("email")))
    dup = {e: n for e, n in hcp_emails.items() if n > 1}
    assert not dup, f"duplicate customers in Housecall Pro (email: count): {dup}"
    ids = Counter(r["Sync ID"].strip() for r in rows)
    assert "" not in ids, f"{ids['']} spreadsheet rows still have no Sync ID"
    dup = {i: n for i, n in ids.items() if n > 1}
    assert not dup, f"duplicate Sync IDs in the spreadsheet: {dup}"
    sheet_emails = Counter(norm_email(r["Email"]) for r in rows if norm_email(r["Email"]))
    dup = {e: n for e, n in sheet_emails.items() if n > 1}
    assert not dup, f"duplicate customers in the spreadsheet (email: count): {dup}"
    sig_h = nameless_signatures(hcp)
    sig_s = Counter(
        (text(r["First Name"]), text(r["Last Name"])) for r in rows if not norm_email(r["Email"])
    )
    assert sig_h == emailless and sig_s == emailless, (
        f"customers without an email: expected {dict(emailless)}, hcp has {dict(sig_h)}, "
        f"books has {dict(sig_s)}"
    )


def assert_same_customers(hcp: list[dict[str, Any]], rows: list[dict[str, str]], db: Path) -> None:
    """Both sides hold the same customers, pairwise linked and with equal values."""
    assert len(hcp) == len(rows), f"{len(hcp)} customers in HCP but {len(rows)} rows"
    in_hcp = {norm_email(c.get("email")) for c in hcp}
    in_books = {norm_email(r["Email"]) for r in rows}
    assert in_hcp == in_books, (
        f"emails differ: only in HCP {sorted(in_hcp - in_books)}, "
        f"only in books {sorted(in_books - in_hcp)}"
    )
    by_id = {c["id"]: c for c in hcp}
    by_sync_id = {r["Sync ID"].strip(): r for r in rows}
    pairs = links(db, "customers")
    hcp_linked = Counter(m.get("hcp") for m in pairs.values())
    books_linked = Counter(m.get("books") for m in pairs.values())
    assert set(hcp_linked) == set(by_id) and max(hcp_linked.values()) == 1, (
        "HCP customers and links differ: unlinked "
        f"{sorted(set(by_id) - set(hcp_linked))}, linked but gone "
        f"{sorted(set(hcp_linked) - set(by_id), key=str)}, linked twice "
        f"{[i for i, n in hcp_linked.items() if n > 1]}"
    )
    assert set(books_linked) == set(by_sync_id) and max(books_linked.values()) == 1, (
        "spreadsheet rows and links differ: unlinked "
        f"{sorted(set(by_sync_id) - set(books_linked), key=str)}, linked but gone "
        f"{sorted(set(books_linked) - set(by_sync_id), key=str)}"
    )
    mismatched = []
    for key, members in pairs.items():
        c, r = by_id[members["hcp"]], by_sync_id[members["books"]]
        pairs_of = [
            ("first_name", "First Name"),
            ("last_name", "Last Name"),
            ("company", "Company"),
        ]
        diff = {
            f: (text(c.get(f)), text(r[col]))
            for f, col in pairs_of
            if text(c.get(f)) != text(r[col])
        }
        if norm_email(c.get("email")) != norm_email(r["Email"]):
            diff["email"] = (text(c.get("email")), r["Email"])
        if diff:
            mismatched.append((key, diff))
    assert not mismatched, f"linked customers differ (hcp, books): {mismatched[:10]}"


def assert_private(db: Path) -> None:
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))
        if p.exists()
    }
    assert modes.get(db.name) == 0o600, f"state file mode {oct(modes.get(db.name, 0))}"
    loose = {n: oct(m) for n, m in modes.items() if m & 0o077}
    assert not loose, f"state files readable by others: {loose}"


# ------------------------------------------------------------------------------ fixtures


def _sandbox_seeded(customers: int) -> Iterator[Sandbox]:
    """A sandbox seeded with ``customers`` (and their jobs, invoices, payments), stopped after."""
    server = start_sandbox(seed=customers) if customers else start_sandbox()
    box = Sandbox(server)
    try:
        yield box
    finally:
        box.close()
        server.stop()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    yield from _sandbox_seeded(0)


def seed_sheet(h: Harness, *, overlapping: int, new_rows: int) -> list[dict[str, str]]:
    """The bookkeeper's sheet: ``overlapping`` rows for HCP customers (same email, blank Sync
    ID), ``new_rows`` rows HCP does not have; HCP's other customers are left to be created."""
    customers = [c for c in h.sandbox.customers() if c.get("email")]
    rows: list[dict[str, str]] = []
    for i, c in enumerate(customers[:overlapping]):
        email = text(c.get("email"))
        rows.append(
            {
                "First Name": text(c.get("first_name")),
                "Last Name": text(c.get("last_name")),
                # messy but the same address: matched, not duplicated
                "Email": f" {email.upper()} " if i % 3 == 0 else email,
                "Company": text(c.get("company")) or ("Filled In By Books" if i % 4 == 1 else ""),
            }
        )
    for n in range(new_rows):
        rows.append(
            {
                "First Name": f"Sheet{n}",
                "Last Name": "Newrow",
                "Email": f"sheet.new{n}@books.example",
                "Company": f"Books Start {n}",
            }
        )
    write_sheet(h.sheet, CSV_HEADER, rows)
    return rows


# ------------------------------------------------------------------------------ the tests


@dataclass
class Expect:
    """What a person changed, and so what both sides must show at the end.

    In the spreadsheet people only edit Company, in Housecall Pro only the last name, so two
    edits never meet on one field from both sides (where the conflict rule, hcp wins, would
    rightly drop the sheet's value). The same field may be edited again on the same side and
    the last value must win.
    """

    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    """email -> {hcp field: value}"""
    added: set[str] = field(default_factory=set)

    def want(self, email: str, **values: str) -> None:
        self.fields.setdefault(email, {}).update(values)


def make_edits(h: Harness, rng: random.Random, n: int, expect: Expect) -> list[str]:
    """Edits a person might make between two syncs, on both sides; returns what was done."""
    done: list[str] = []
    kinds = rng.sample(["sheet-cell", "hcp-put", "sheet-row", "hcp-post"], k=rng.randint(1, 4))
    header, rows, newline = read_sheet(h.sheet)
    sheet_changed = False
    if "sheet-cell" in kinds:
        # any row, also one whose write an interrupted run left pending
        linked = [r for r in rows if norm_email(r["Email"])]
        for j, row in enumerate(rng.sample(linked, k=min(len(linked), rng.randint(1, 3)))):
            value = f"Sheet Edit {n}.{j}"
            row["Company"] = value
            expect.want(norm_email(row["Email"]), company=value)
            done.append(f"books {norm_email(row['Email'])} Company={value!r}")
            sheet_changed = True
    if "sheet-row" in kinds:
        for j in range(rng.randint(1, 3)):
            email = f"row.added{n}.{j}@books.example"
            first, company = f"Added{n}x{j}", f"Row Co {n}.{j}"
            rows.append(
                {"First Name": first, "Last Name": "Bookrow", "Email": email, "Company": company}
            )
            expect.added.add(email)
            expect.want(email, first_name=first, last_name="Bookrow", company=company)
            done.append(f"books new row {email}")
            sheet_changed = True
    if sheet_changed:
        write_sheet(h.sheet, header, rows, newline)
    if "hcp-put" in kinds:
        candidates = [c for c in h.sandbox.customers() if norm_email(c.get("email"))]
        for j, c in enumerate(rng.sample(candidates, k=min(len(candidates), rng.randint(1, 3)))):
            value = f"Hcpedit{n}x{j}"
            h.sandbox.put(c["id"], {"last_name": value})
            expect.want(norm_email(c.get("email")), last_name=value)
            done.append(f"hcp {norm_email(c.get('email'))} last_name={value!r}")
    if "hcp-post" in kinds:
        for j in range(rng.randint(1, 2)):
            email = f"cust.added{n}.{j}@hcp.example"
            first, company = f"Posted{n}x{j}", f"Post Co {n}.{j}"
            h.sandbox.post(
                {
                    "first_name": first,
                    "last_name": "Hcpcustomer",
                    "email": email,
                    "company": company,
                }
            )
            expect.added.add(email)
            expect.want(email, first_name=first, last_name="Hcpcustomer", company=company)
            done.append(f"hcp new customer {email}")
    return done


def kind_of(point: str) -> tuple[str, str, str]:
    """(member, method, before/after) of a ``CRASH_AT`` value."""
    member, method, _entity, _n, when = point.split(":")
    return member, method, when


RECOVERING = crash_at("books", "read", "customers", 1, "after")
"""Where a run that has interrupted creates to settle has read both members (HCP first) and
not yet settled them from those reads (``recovery.settle_creates``)."""


MUST_LAND = {("hcp", "create", "after"), ("books", "flush", "after"), kind_of(RECOVERING)}
"""(member, method, before/after) of the kills the convergence test must land: after a POST,
after the sheet was written, and in the recovery of interrupted creates."""


def crash_points(pending: Counter[tuple[str, str]], edits: list[str]) -> list[str]:
    """Crash points the next sync is sure to reach, from what it has to do: recover the
    creates a killed run left pending (from its reads of both members), POST the rows added
    to the sheet and give them their Sync IDs, add the customers posted to HCP to the sheet,
    write the sheet, and always read HCP."""
    points = [crash_at("hcp", "read", "customers", 1, "after")]
    if pending[("hcp", "create")] or pending[("books", "create")]:
        points.append(RECOVERING)
    rows = sum(1 for e in edits if e.startswith("books new row"))
    posted = sum(1 for e in edits if e.startswith("hcp new customer"))
    for n in range(1, rows + 1):
        points += [crash_at("hcp", "create", "customers", n, w) for w in ("before", "after")]
        points.append(crash_at("books", "update", "customers", n, "after"))
    for n in range(1, posted + 1):
        points.append(crash_at("books", "create", "customers", n, "after"))
    if rows or posted:
        points += [crash_at("books", "flush", "customers", 1, w) for w in ("before", "after")]
    return points


@pytest.mark.slow
def test_syncs_killed_at_crash_points_converge_without_duplicates_or_lost_edits(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    rng = random.Random(SEED)
    h = Harness(tmp_path, sandbox)
    seed_sheet(h, overlapping=12, new_rows=8)
    emailless = nameless_signatures(sandbox.customers())
    expect = Expect()
    with h.explained():
        edits: list[str] = []
        for i in range(LOOP_RUNS):
            if i == 0:  # the first sync: 8 rows to POST, 28 customers to add to the sheet
                point = crash_at("hcp", "create", "customers", rng.randint(1, 8), "after")
            else:  # one the sync will reach, the kinds not yet landed first
                points = crash_points(h.runs[-1].pending_after, edits)
                landed = {kind_of(r.crash) for r in h.runs}
                first = [p for p in points if kind_of(p) in MUST_LAND - landed]
                point = rng.choice(first or points)
            h.crash_at(point, edits)
            edits = make_edits(h, rng, i, expect) if rng.random() < 0.9 else []

        first, _ = h.sync(edits)
        assert first.returncode in (0, 1), (
            f"the first sync after the kills exited {first.returncode}"
        )
        second, result = h.sync()
        assert_nothing_to_do(second, result)

        print("\n".join(r.row() for r in h.runs))
        hcp, rows = sandbox.customers(), h.sheet_rows()
        assert_no_duplicates(hcp, rows, emailless)
        assert_same_customers(hcp, rows, h.db)

        hcp_by_email = {norm_email(c.get("email")): c for c in hcp}
        rows_by_email = {norm_email(r["Email"]): r for r in rows}
        columns = {"first_name": "First Name", "last_name": "Last Name", "company": "Company"}
        lost = []
        for email, wanted in expect.fields.items():
            c, r = hcp_by_email.get(email), rows_by_email.get(email)
            for name, value in wanted.items():
                got_h = text(c.get(name)) if c else "(no such customer)"
                got_s = text(r[columns[name]]) if r else "(no such row)"
                if got_h != value or got_s != value:
                    lost.append(
                        f"{email} {name}: set {value!r}, hcp has {got_h!r}, books has {got_s!r}"
                    )
        assert not lost, "edits lost:\n  " + "\n  ".join(lost)
        for email in expect.added:
            assert email in hcp_by_email and email in rows_by_email, f"{email} missing"
        assert_private(h.db)
        pending = journal_counts(h.db)["pending"]
        assert pending == 0, f"{pending} journal intents still pending after two full syncs"
        landed = {
            (r.crashed["member"], r.crashed["method"], r.crashed["when"])
            for r in h.runs
            if r.crashed
        }
        assert landed >= MUST_LAND, f"no kill at {sorted(MUST_LAND - landed)}"


def test_killed_right_after_a_post_the_next_sync_links_it_instead_of_posting_again(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The dangerous instant: POST /customers answered, the sync dead before it recorded the
    new id. The next sync must find that customer instead of creating it again."""
    h = Harness(tmp_path, sandbox, concurrency=1, batch_size=5)
    new_rows = 10
    seed_sheet(h, overlapping=4, new_rows=new_rows)
    new_emails = {f"sheet.new{n}@books.example" for n in range(new_rows)}
    before = len(sandbox.customers())
    emailless = nameless_signatures(sandbox.customers())
    with h.explained():
        run = h.crash("hcp", "create", 1, "after")
        created = [c for c in sandbox.customers() if norm_email(c.get("email")) in new_emails]
        assert [c["id"] for c in created] == [run.crashed and run.crashed["result_id"]], (
            f"the killed sync should have created exactly the one customer it was killed "
            f"after: {created}"
        )
        assert run.posts == 1 and run.pending_after[("hcp", "create")] >= 1, (
            "the kill should leave the POSTed customer's intent pending in the journal"
        )
        assert all(
            not r["Sync ID"].strip() for r in h.sheet_rows() if norm_email(r["Email"]) in new_emails
        ), "the sheet was written before the kill"

        done, _ = h.sync()
        assert done.returncode in (0, 1), f"the sync after the kill exited {done.returncode}"
        hcp = sandbox.customers()
        counts = Counter(norm_email(c.get("email")) for c in hcp)
        twice = {e: counts[e] for e in new_emails if counts[e] != 1}
        assert not twice, f"new rows not created exactly once in HCP: {twice}"
        assert len(hcp) == before + new_rows
        assert done.posts == new_rows - 1, (
            f"the sync after the kill sent {done.posts} POSTs for the {new_rows - 1} new rows "
            "not yet in HCP"
        )
        linked = {m.get("hcp") for m in links(h.db, "customers").values()}
        assert created[0]["id"] in linked, "what the killed run created is not linked"

        second, result = h.sync()
        assert_nothing_to_do(second, result)
        rows = h.sheet_rows()
        assert_no_duplicates(hcp, rows, emailless)
        assert_same_customers(sandbox.customers(), rows, h.db)
        assert_private(h.db)


def test_killed_while_recovering_interrupted_posts_the_next_sync_finishes_the_recovery(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Killed after three POSTs (none recorded); then the next run killed once it has read
    both members, before it settled the three from those reads (nothing linked, nothing
    written); then the next one killed once it has settled them, just before its first POST
    (all three linked, with nothing but its read asked of HCP). The run after that POSTs only
    the rest."""
    h = Harness(tmp_path, sandbox, concurrency=1, batch_size=50)
    new_rows = 8
    seed_sheet(h, overlapping=4, new_rows=new_rows)
    new_emails = {f"sheet.new{n}@books.example" for n in range(new_rows)}
    emailless = nameless_signatures(sandbox.customers())
    with h.explained():
        first = h.crash("hcp", "create", 3, "after")
        created = {c["id"] for c in sandbox.customers() if norm_email(c.get("email")) in new_emails}
        assert first.posts == 3 and len(created) == 3, (first.posts, created)
        assert first.pending_after[("hcp", "create")] >= 3, first.pending_after

        read = h.crash_at(RECOVERING, [])
        assert read.writes_seen == 0, "a run killed in its recovery wrote to HCP"
        assert read.pending_after == first.pending_after, "settled before the kill"
        assert not created & {m.get("hcp") for m in links(h.db, "customers").values()}

        log_before = len(sandbox.requests())
        settled = h.crash("hcp", "create", 1, "before")
        asked = sandbox.requests()[log_before:]
        assert [e["method"] for e in asked] == ["GET"], (
            f"settling three interrupted creates took more than the read of HCP: {asked}"
        )
        assert created <= {m.get("hcp") for m in links(h.db, "customers").values()}
        assert settled.pending_after[("hcp", "create")] == new_rows - 3, settled.pending_after

        done, _ = h.sync()
        assert done.returncode in (0, 1), f"the sync after the kills exited {done.returncode}"
        assert done.posts == new_rows - 3, (
            f"{done.posts} POSTs for the {new_rows - 3} rows the killed runs had not created"
        )
        hcp = sandbox.customers()
        counts = Counter(norm_email(c.get("email")) for c in hcp)
        assert all(counts[e] == 1 for e in new_emails), counts
        assert created <= {m.get("hcp") for m in links(h.db, "customers").values()}

        second, result = h.sync()
        assert_nothing_to_do(second, result)
        rows = h.sheet_rows()
        assert_no_duplicates(hcp, rows, emailless)
        assert_same_customers(sandbox.customers(), rows, h.db)
        assert journal_counts(h.db)["pending"] == 0


# ------------------------------------------------------------------ known recovery bugs
#
# Both are a person's edit lost after a crash: the killed run wrote to a member but died
# before committing that write to the state store, and the next run's recovery does not
# account for what the journal says it intended.


@pytest.fixture
def small_sandbox() -> Iterator[Sandbox]:
    yield from _sandbox_seeded(5)


def set_companies(h: Harness, prefix: str) -> dict[str, str]:
    """Set every row's Company to ``prefix N``; email -> value."""
    header, rows, newline = read_sheet(h.sheet)
    wanted = {}
    for i, row in enumerate(rows):
        row["Company"] = f"{prefix} {i}"
        wanted[norm_email(row["Email"])] = row["Company"]
    write_sheet(h.sheet, header, rows, newline)
    return wanted


def test_second_sheet_edit_after_kill_between_put_and_commit_is_not_lost(
    tmp_path: Path, small_sandbox: Sandbox
) -> None:
    h = Harness(tmp_path, small_sandbox, concurrency=1, batch_size=5)
    with h.explained():
        run, _ = h.sync()  # the sheet starts empty: every HCP customer becomes a row
        assert run.returncode == 0 and len(h.sheet_rows()) == 5
        emailless = nameless_signatures(small_sandbox.customers())
        first = set_companies(h, "First")
        killed = h.crash("hcp", "update", 1, "after")
        landed = {
            c["id"]
            for c in small_sandbox.customers()
            if c.get("company") == first.get(norm_email(c.get("email")))
        }
        assert killed.crashed is not None and landed == {killed.crashed["result_id"]}, (
            f"exactly the PUT the sync was killed after should have landed: {landed}"
        )
        assert killed.pending_after[("hcp", "update")] >= 1, killed.pending_after
        # the person edits the same cells again before the next sync
        second = set_companies(h, "Second")
        final, _ = h.sync(["books Company=Second N"])
        assert final.returncode in (0, 1)
        hcp = {
            norm_email(c.get("email")): text(c.get("company")) for c in small_sandbox.customers()
        }
        books = {norm_email(r["Email"]): text(r["Company"]) for r in h.sheet_rows()}
        lost = {
            e: (v, hcp.get(e), books.get(e))
            for e, v in second.items()
            if hcp.get(e) != v or books.get(e) != v
        }
        assert not lost, (
            f"the sheet's latest Company lost (email: set, hcp, books); the "
            f"killed run's PUT had landed for {sorted(landed)}: {lost}"
        )
        again, result = h.sync()
        assert_nothing_to_do(again, result)
        rows = h.sheet_rows()
        assert_no_duplicates(small_sandbox.customers(), rows, emailless)
        assert_same_customers(small_sandbox.customers(), rows, h.db)


def test_a_sheet_put_back_byte_for_byte_after_a_kill_is_read_whole(
    tmp_path: Path, small_sandbox: Sandbox
) -> None:
    """The books' read mark names the file exactly (``marks.drop_exact_marks``). A run that
    read an edited sheet and was killed after committing part of it must leave no mark that
    vouches for the sheet as it was: put back byte for byte, modification time included
    (a backup restored with its times), it is read whole, and HCP gets the old values back."""
    h = Harness(tmp_path, small_sandbox, concurrency=1, batch_size=1)
    with h.explained():
        run, _ = h.sync()  # every HCP customer becomes a row; the file's mark is stored
        assert run.returncode == 0 and len(h.sheet_rows()) == 5
        as_left = h.sheet.read_bytes()
        times = os.stat(h.sheet)
        _header, rows, _newline = read_sheet(h.sheet)
        original = {norm_email(r["Email"]): text(r["Company"]) for r in rows}
        set_companies(h, "Edited")
        # batches of one: the first PUT is committed before the second one is sent
        killed = h.crash("hcp", "update", 2, "before")
        edited = {
            norm_email(c.get("email")): text(c.get("company")) for c in small_sandbox.customers()
        }
        assert sum(1 for e, v in edited.items() if v != original.get(e)) == 1, edited
        assert killed.pending_after[("hcp", "update")] == 1, killed.pending_after  # the 2nd
        h.sheet.write_bytes(as_left)
        os.utime(h.sheet, ns=(times.st_atime_ns, times.st_mtime_ns))
        final, _ = h.sync()
        assert final.returncode == 0
        hcp = {
            norm_email(c.get("email")): text(c.get("company")) for c in small_sandbox.customers()
        }
        assert hcp == original, f"the sheet put back did not reach HCP: {hcp} != {original}"
        assert h.sheet.read_bytes() == as_left
        again, result = h.sync()
        assert_nothing_to_do(again, result)


def test_a_sheet_put_back_after_a_kill_between_its_own_writes_is_read_whole(
    tmp_path: Path, small_sandbox: Sandbox
) -> None:
    """The sheet read by its mark (nothing listed), HCP's edits written to it and committed
    key by key after the save: a run killed after the first key's commit (or stopped there
    by the daemon's SIGTERM) must leave no mark naming the sheet as it was before (found by
    the cold review). Put back byte for byte, modification time included, it is read whole:
    the rows the killed run had committed read as the bookkeeper's edits (the sheet's values
    go to HCP), the others get HCP's values, and both sides agree."""
    h = Harness(tmp_path, small_sandbox, concurrency=1, batch_size=1)
    with h.explained():
        run, _ = h.sync()
        assert run.returncode == 0 and len(h.sheet_rows()) == 5
        as_left = h.sheet.read_bytes()
        times = os.stat(h.sheet)
        edited = {}
        for i, customer in enumerate(small_sandbox.customers()[:3]):
            small_sandbox.put(customer["id"], {"company": f"HCP Co {i}"})
            edited[norm_email(customer.get("email"))] = f"HCP Co {i}"
        # the sheet saved with the three rows; batches of one: the first row's state is
        # committed before the second row's is settled
        killed = h.crash("books", "flushed", 2, "before")
        written = {norm_email(r["Email"]): text(r["Company"]) for r in h.sheet_rows()}
        assert all(written.get(e) == v for e, v in edited.items()), written
        assert killed.pending_after[("books", "update")] == 2, killed.pending_after
        h.sheet.write_bytes(as_left)
        os.utime(h.sheet, ns=(times.st_atime_ns, times.st_mtime_ns))
        final, result = h.sync()
        assert final.returncode == 0
        assert result["entities"]["customers"]["read"]["books"] == 5, result  # read whole
        books = {norm_email(r["Email"]): text(r["Company"]) for r in h.sheet_rows()}
        hcp = {
            norm_email(c.get("email")): text(c.get("company")) for c in small_sandbox.customers()
        }
        assert books == hcp, f"the sheet put back and HCP disagree: {books} != {hcp}"
        again, result = h.sync()
        assert_nothing_to_do(again, result)


def test_sheet_edit_after_kill_between_sheet_write_and_commit_is_propagated(
    tmp_path: Path, small_sandbox: Sandbox
) -> None:
    h = Harness(tmp_path, small_sandbox, concurrency=1, batch_size=5)
    emailless = nameless_signatures(small_sandbox.customers())
    with h.explained():
        run = h.crash("books", "flush", 1, "after")
        rows = h.sheet_rows()
        assert len(rows) == 5 and all(r["Sync ID"] for r in rows), (
            f"the sheet should be written with the 5 customers before the kill: {rows}"
        )
        assert run.pending_after[("books", "create")] == 5, run.pending_after
        header, rows, newline = read_sheet(h.sheet)
        rows[0]["Company"] = "Edited After The Crash"
        email = norm_email(rows[0]["Email"])
        write_sheet(h.sheet, header, rows, newline)
        h.sync([f"books {email} Company='Edited After The Crash'"])
        second, result = h.sync()
        hcp = next(c for c in small_sandbox.customers() if norm_email(c.get("email")) == email)
        books = next(r for r in h.sheet_rows() if norm_email(r["Email"]) == email)
        assert (text(hcp.get("company")), books["Company"]) == (
            "Edited After The Crash",
            "Edited After The Crash",
        ), (
            f"{email}: hcp company {hcp.get('company')!r}, books {books['Company']!r} after two "
            f"syncs; the second planned {second.stdout[-600:]}"
        )
        assert_nothing_to_do(second, result)
        rows = h.sheet_rows()
        assert_no_duplicates(small_sandbox.customers(), rows, emailless)
        assert_same_customers(small_sandbox.customers(), rows, h.db)


# ------------------------------------------------------------ what recovery costs


def seed_large_sheet(h: Harness, rows: int) -> list[dict[str, str]]:
    """``rows`` rows HCP does not have, every column filled; one in ten without an email or
    a phone (nothing to match it by but its data)."""
    out = []
    for n in range(rows):
        contact = n % 10 != 7
        out.append(
            {
                "First Name": f"Bulk{n}",
                "Last Name": f"Row{n % 37}",
                "Email": f"bulk.row{n}@books.example" if contact else "",
                "Mobile": f"(555) 3{n // 100:02d}-{n % 100:04d}" if contact else "",
                "Company": f"Bulk Co {n % 23}",
                "Tags": "bulk, vip" if n % 5 == 0 else "",
                "Street": f"{n} Main St",
                "City": "Springfield",
                "State": "IL",
                "Zip": f"62{n % 1000:03d}",
            }
        )
    write_sheet(h.sheet, CSV_HEADER, out)
    return out


def test_recovery_after_kills_during_a_large_initial_create_costs_one_read_plus_its_writes(
    tmp_path: Path, small_sandbox: Sandbox
) -> None:
    """Three kills during a first sync that creates 400 customers in HCP, each in the middle
    of a batch (its creates journalled, some POSTed, none recorded). The sync after them
    settles every interrupted create from its own read of HCP: its requests are the pages
    of that one read plus its writes, whatever the number of interrupted creates. Nothing
    is duplicated and nothing is lost."""
    rows = 400
    h = Harness(tmp_path, small_sandbox, concurrency=2, batch_size=200)
    sheet = seed_large_sheet(h, rows)
    before = len(small_sandbox.customers())
    emailless = nameless_signatures(small_sandbox.customers()) + Counter(
        (r["First Name"], r["Last Name"]) for r in sheet if not r["Email"]
    )
    with h.explained():
        for n in (150, 120, 60):  # each run gets further: its batch is 200 creates
            killed = h.crash("hcp", "create", n, "after")
            assert killed.pending_after[("hcp", "create")] >= n, killed.pending_after
        pending = h.runs[-1].pending_after[("hcp", "create")]
        log_before = len(small_sandbox.requests())
        done, result = h.sync()
        made = small_sandbox.requests()[log_before:]
        assert done.returncode == 0, f"the sync after the kills exited {done.returncode}"
        hcp = small_sandbox.customers()
        assert len(hcp) == before + rows, f"{len(hcp) - before} customers for {rows} rows"
        gets = [e for e in made if e["method"] == "GET"]
        writes = [e for e in made if e["method"] in WRITES]
        posts = sum(1 for e in writes if e["method"] == "POST")
        pages = -(-(len(hcp) - posts) // 100)  # HCP as read, in pages of the connector's size
        print(
            f"recovery sync: {pending} interrupted creates, {len(gets)} GETs "
            f"({pages} pages in one read), {len(writes)} writes"
        )
        assert len(gets) <= pages and len(made) <= pages + len(writes), (
            f"the recovery of {pending} interrupted creates made {len(gets)} GETs and "
            f"{len(writes)} writes; one read of HCP is {pages} pages"
        )
        assert result["entities"]["customers"]["hcp"]["create"] == len(writes)
        assert journal_counts(h.db)["pending"] == 0

        second, result = h.sync()
        assert_nothing_to_do(second, result)
        rows_now = h.sheet_rows()
        assert len(rows_now) == before + rows
        assert_no_duplicates(small_sandbox.customers(), rows_now, emailless)
        assert_same_customers(small_sandbox.customers(), rows_now, h.db)


@pytest.fixture
def large_sandbox() -> Iterator[Sandbox]:
    yield from _sandbox_seeded(2_500)


def test_a_first_sync_into_the_books_in_the_engines_own_batches_survives_kills(
    tmp_path: Path, large_sandbox: Sandbox
) -> None:
    """With ``batch_size`` unset, a first sync that only writes to the books goes in batches
    of 1000 customers (``apply.BUFFERED_BATCH_SIZE``). Killed in its second batch, before
    the file is written, and then after the file is written but before the state store
    recorded its rows, the next sync still ends with every HCP customer in the books once."""
    h = Harness(tmp_path, large_sandbox, batch_size=0)
    customers = large_sandbox.customers()
    assert len(customers) > 2_000
    with h.explained():
        killed = h.crash("books", "create", 1_500, "after")  # in the second batch of 1000
        assert not h.sheet.exists(), "the books were written before the last batch"
        # both batches journaled whole before the kill (in batches of 200: 1600)
        assert killed.pending_after[("books", "create")] == 2_000, killed.pending_after
        h.crash("books", "flush", 1, "after")  # the file written, nothing recorded yet
        assert len(h.sheet_rows()) == len(customers)
        done, result = h.sync()
        assert done.returncode == 0, f"the sync after the kills exited {done.returncode}"
        assert journal_counts(h.db)["pending"] == 0
        again, result = h.sync()
        assert_nothing_to_do(again, result)
        rows = h.sheet_rows()
        assert len(rows) == len(customers)
        assert_no_duplicates(large_sandbox.customers(), rows, nameless_signatures(customers))
        assert_same_customers(large_sandbox.customers(), rows, h.db)
