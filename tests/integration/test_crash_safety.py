"""Crash safety with real processes: ``syncengine sync`` killed with SIGKILL at random instants.

Each test runs the Housecall Pro sandbox as a real server process on loopback and a
spreadsheet folder in ``tmp_path``, then runs the ``syncengine`` command as a subprocess and
kills it (SIGKILL: no cleanup, no ``finally``) part-way through — between reads, with intents
journaled but not finished, with POSTs in flight, with the spreadsheet flushed but the state
not yet committed. Between kills both sides are edited the way people would: a cell of a
linked row, a customer's name through the API, a new row, a new customer.

Afterwards, syncs run to completion must converge with no duplicate on either side, no lost
edit, the same customers on both sides, and a second sync with nothing to do (DESIGN.md,
"Idempotency and crash safety").

Where a kill lands: a random delay from the process start (0 to the duration of a whole
first sync, measured first on a copy), a random delay from its first API request (start-up
of a Python process on a loaded machine varies more than the sync itself), right after the
n-th write reached Housecall Pro, or right after the spreadsheet file was replaced.

Reproducible: the kill schedule and the edits come from ``random.Random(SEED)``; only the
instants at which the kills land depend on the machine. A failure prints the run table, the
sandbox request log tail and the last sync's output.

Two recovery bugs this test found (an interrupted update's value taken for a member's own
edit; an interrupted create's row linked with its later edit taken as already seen) have
their own regression tests at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.processes import ServerProcess
from testbed.sandbox import start_sandbox as start_sandbox_process
from testbed.sandbox import syncengine_command
from tests.csvfiles import CSV_HEADER, read_csv_table, write_csv
from tests.statefile import journal_counts, links

pytestmark = pytest.mark.integration

API_KEY = "test-key-XYZ"
SEED = 20240611
SANDBOX_CUSTOMERS = 40
WRITES = ("POST", "PUT", "DELETE")

LOOP_RUNS = 16
LOOP_BUDGET_S = 50.0
"""The kill loop stops early past this many seconds, so the whole test stays under ~90 s."""


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
    return f"""\
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
batch_size = {batch_size}

[pipelines.conflicts]
default = ["hcp"]
"""


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


@dataclass
class Run:
    """One ``syncengine sync`` process and what became of it."""

    index: int
    trigger: str
    killed: bool = False
    returncode: int | None = None
    seconds: float = 0.0
    writes_seen: int = 0
    pending_after: int = 0
    stdout: str = ""
    stderr: str = ""
    edits: list[str] = field(default_factory=list)

    def row(self) -> str:
        what = "KILLED" if self.killed else f"exit {self.returncode}"
        return (
            f"#{self.index:02d} {self.trigger:<24} {what:<8} {self.seconds:6.2f}s "
            f"writes={self.writes_seen:<3} pending-after={self.pending_after:<3} "
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
        self.env = {k: v for k, v in os.environ.items() if k != "SYNCENGINE_CONFIG"}
        self.env["HCP_API_KEY"] = API_KEY
        self.env["PYTHONUNBUFFERED"] = "1"
        self.runs: list[Run] = []

    # -- running syncs
    def _start(self, index: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
        out = self.dir / f"sync-{index:02d}.out"
        err = self.dir / f"sync-{index:02d}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                [*syncengine_command(), "sync", "--config", str(self.config), "--json"],
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                env=self.env,
                cwd=self.dir,
            )
        return proc, out, err

    def _finish(
        self,
        run: Run,
        proc: subprocess.Popen[bytes],
        out: Path,
        err: Path,
        started: float,
        stop: Callable[[], bool],
        baseline: int,
    ) -> Run:
        """Wait for the process; SIGKILL it (this pid only) as soon as ``stop()`` says so."""
        while proc.poll() is None:
            if stop():
                os.kill(proc.pid, signal.SIGKILL)
                run.killed = True
                break
            time.sleep(0.003)
        try:
            run.returncode = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"sync #{run.index} did not finish within 120 s") from None
        run.seconds = time.monotonic() - started
        run.killed = run.killed and run.returncode == -signal.SIGKILL
        run.stdout = out.read_text(encoding="utf-8", errors="replace")
        run.stderr = err.read_text(encoding="utf-8", errors="replace")
        time.sleep(0.05)  # let requests the dead process had in flight land in the log
        run.writes_seen = sum(
            1 for e in self.sandbox.requests()[baseline:] if e["method"] in WRITES
        )
        run.pending_after = journal_counts(self.db)["pending"]
        self.runs.append(run)
        return run

    def sync_killed_when(
        self, trigger: str, edits: list[str], make_stop: Callable[[float, int], Callable[[], bool]]
    ) -> Run:
        """Run a sync and SIGKILL it once ``make_stop(started, log_baseline)()`` is true."""
        run = Run(len(self.runs), trigger, edits=edits)
        baseline = len(self.sandbox.requests())
        started = time.monotonic()
        stop = make_stop(started, baseline)
        proc, out, err = self._start(run.index)
        return self._finish(run, proc, out, err, started, stop, baseline)

    def sync_killed_after(self, delay: float, edits: list[str]) -> Run:
        """Killed ``delay`` seconds after the process started (imports and config too)."""
        return self.sync_killed_when(
            f"{delay:.2f}s after start",
            edits,
            lambda started, _: lambda: time.monotonic() - started >= delay,
        )

    def sync_killed_after_first_request(self, delay: float, edits: list[str]) -> Run:
        """Killed ``delay`` seconds after its first API request: the start-up of a Python
        process varies too much on a loaded machine to aim at the reads and writes from it."""

        def make_stop(_started: float, baseline: int) -> Callable[[], bool]:
            first: list[float] = []

            def stop() -> bool:
                if not first and len(self.sandbox.requests()) > baseline:
                    first.append(time.monotonic())
                return bool(first) and time.monotonic() - first[0] >= delay

            return stop

        return self.sync_killed_when(f"{delay:.2f}s after 1st request", edits, make_stop)

    def sync_killed_after_writes(
        self, writes: int, edits: list[str], methods: tuple[str, ...] = WRITES
    ) -> Run:
        """Killed as soon as its ``writes``-th write request has been answered by HCP."""

        def make_stop(_started: float, baseline: int) -> Callable[[], bool]:
            def stop() -> bool:
                seen = [
                    e
                    for e in self.sandbox.requests()[baseline:]
                    if e["method"] in methods and e["path"].startswith("/customers")
                ]
                return len(seen) >= writes

            return stop

        return self.sync_killed_when(f"after {writes} {'/'.join(methods)}", edits, make_stop)

    def sync_killed_after_sheet_write(self, edits: list[str]) -> Run:
        """Killed as soon as the spreadsheet file changed: written, state not yet committed."""

        def signature() -> tuple[int, int, int] | None:
            try:
                st = self.sheet.stat()
            except FileNotFoundError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)

        def make_stop(_started: float, _baseline: int) -> Callable[[], bool]:
            before = signature()
            return lambda: signature() != before

        return self.sync_killed_when("when the sheet is written", edits, make_stop)

    def sync(self, edits: list[str] | None = None) -> tuple[Run, dict[str, Any]]:
        run = Run(len(self.runs), "to completion", edits=edits or [])
        baseline = len(self.sandbox.requests())
        started = time.monotonic()
        proc, out, err = self._start(run.index)
        self._finish(run, proc, out, err, started, lambda: False, baseline)
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


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    server = start_sandbox()
    box = Sandbox(server)
    try:
        yield box
    finally:
        box.close()
        server.stop()


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


def calibrate(tmp_path: Path) -> tuple[float, float]:
    """Seconds from start to the first API request, and to the end, of one unkilled first sync
    of the same data (own sandbox, own folder)."""
    server = start_sandbox()
    box = Sandbox(server)
    try:
        folder = tmp_path / "calibration"
        folder.mkdir()
        h = Harness(folder, box)
        seed_sheet(h, overlapping=12, new_rows=8)
        baseline = len(box.requests())
        started = time.monotonic()
        proc, _out, err = h._start(0)
        first_request = None
        while proc.poll() is None:
            if first_request is None and len(box.requests()) > baseline:
                first_request = time.monotonic() - started
            time.sleep(0.005)
        total = time.monotonic() - started
        assert proc.returncode == 0, (
            f"the calibration sync exited {proc.returncode}:\n{err.read_text()[-3000:]}"
        )
        return (first_request if first_request is not None else total / 2), total
    finally:
        box.close()
        server.stop()


def test_random_sigkills_converge_without_duplicates_or_lost_edits(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    test_started = time.monotonic()
    rng = random.Random(SEED)
    t_first, t_full = calibrate(tmp_path)
    print(f"calibration: first request after {t_first:.2f}s, full first sync {t_full:.2f}s")

    (tmp_path / "work").mkdir()
    h = Harness(tmp_path / "work", sandbox)
    seed_sheet(h, overlapping=12, new_rows=8)
    emailless = nameless_signatures(sandbox.customers())
    expect = Expect()
    with h.explained():
        edits: list[str] = []
        for i in range(LOOP_RUNS):
            if i and time.monotonic() - test_started > LOOP_BUDGET_S:
                break
            pick = rng.random()
            if i == 0 or pick < 0.3:  # just after the n-th write reached Housecall Pro
                h.sync_killed_after_writes(rng.randint(1, 8 if i == 0 else 3), edits)
            elif pick < 0.5:  # the sheet written, the state not yet committed
                h.sync_killed_after_sheet_write(edits)
            elif pick < 0.65:  # anywhere, start-up included
                h.sync_killed_after(rng.uniform(0.0, t_full), edits)
            else:  # anywhere in the reads, plan and writes
                h.sync_killed_after_first_request(rng.uniform(0.0, t_full - t_first), edits)
            last = h.runs[-1]
            assert last.killed or last.returncode in (0, 1), (
                f"sync #{last.index} failed on its own with exit {last.returncode}"
            )
            edits = make_edits(h, rng, i, expect) if rng.random() < 0.9 else []

        first, _ = h.sync(edits)
        assert first.returncode in (0, 1), (
            f"the first sync after the kills exited {first.returncode}"
        )
        second, result = h.sync()
        assert_nothing_to_do(second, result)

        killed = [r for r in h.runs if r.killed]
        interrupted = [r for r in killed if r.pending_after]
        print("\n".join(r.row() for r in h.runs))
        print(
            f"{len(killed)} of {len(h.runs) - 2} loop runs killed, {len(interrupted)} of them "
            f"with journal intents left pending; journal at the end: "
            f"{dict(journal_counts(h.db))}; test took {time.monotonic() - test_started:.1f}s"
        )

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
        # and the kills did land where it matters (not only during start-up):
        assert len(killed) >= (len(h.runs) - 2) // 3, "too few runs were killed to mean much"
        assert interrupted, "no kill landed while writes were under way (intents pending)"


def test_sigkill_right_after_first_post_does_not_create_twice(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The dangerous instant: POST /customers answered, the sync dead before it recorded the
    new id. The next sync must find that customer instead of creating it again."""
    h = Harness(tmp_path, sandbox, concurrency=1, batch_size=5)
    new_rows = 10  # POSTed one at a time (concurrency 1): a wide window to land the kill in
    seed_sheet(h, overlapping=4, new_rows=new_rows)
    new_emails = {f"sheet.new{n}@books.example" for n in range(new_rows)}
    before = len(sandbox.customers())
    emailless = nameless_signatures(sandbox.customers())
    with h.explained():
        run = h.sync_killed_after_writes(1, [], methods=("POST",))
        assert run.killed, f"the sync finished (exit {run.returncode}) before it could be killed"
        posts_before = sum(1 for e in sandbox.requests() if e["method"] == "POST")
        created = [c for c in sandbox.customers() if norm_email(c.get("email")) in new_emails]
        # (a POST cut off by the kill may be logged, with status 500, without creating anything)
        assert 1 <= len(created) < new_rows, (
            f"the kill should land after the first POST and before the last: {posts_before} "
            f"POSTs, {len(created)} of {new_rows} new customers in HCP"
        )
        assert run.pending_after >= 1, (
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
        posts_after = sum(1 for e in sandbox.requests() if e["method"] == "POST") - posts_before
        assert posts_after == new_rows - len(created), (
            f"the sync after the kill sent {posts_after} POSTs for the "
            f"{new_rows - len(created)} new rows not yet in HCP"
        )
        for c in created:  # what the killed run created is linked, not re-created
            assert c["id"] in {m.get("hcp") for m in links(h.db, "customers").values()}

        second, result = h.sync()
        assert_nothing_to_do(second, result)
        rows = h.sheet_rows()
        assert_no_duplicates(hcp, rows, emailless)
        assert_same_customers(sandbox.customers(), rows, h.db)
        assert_private(h.db)
        print("\n".join(r.row() for r in h.runs))


# ------------------------------------------------------------------ known recovery bugs
#
# Both are a person's edit lost after a crash: the killed run wrote to a member but died
# before committing that write to the state store, and the next run's recovery does not
# account for what the journal says it intended.

ATTEMPTS = 4
"""Each test needs its kill to land in a window of a few milliseconds; it tries this often
and is skipped (never passed) when the kill never lands there."""


@pytest.fixture
def small_sandbox() -> Iterator[Sandbox]:
    server = start_sandbox(seed=5)
    box = Sandbox(server)
    try:
        yield box
    finally:
        box.close()
        server.stop()


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
        landed: set[str] = set()
        for attempt in range(ATTEMPTS):
            first = set_companies(h, f"First{attempt}")
            killed = h.sync_killed_after_writes(
                1, [f"books Company=First{attempt} N"], methods=("PUT",)
            )
            landed = {
                norm_email(c.get("email"))
                for c in small_sandbox.customers()
                if c.get("company") == first.get(norm_email(c.get("email")))
            }
            if killed.killed and killed.pending_after and landed:
                break
            h.sync()  # missed the window: settle and try again
        else:
            pytest.skip("the kill never landed between a PUT and the state commit")
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


def test_sheet_edit_after_kill_between_sheet_write_and_commit_is_propagated(
    tmp_path: Path, small_sandbox: Sandbox
) -> None:
    h = None
    for attempt in range(ATTEMPTS):
        small_sandbox.http.post("/_sandbox/reset").raise_for_status()
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        h = Harness(folder, small_sandbox, concurrency=1, batch_size=5)
        run = h.sync_killed_after_sheet_write([])
        if run.killed and run.pending_after and all(r["Sync ID"] for r in h.sheet_rows()):
            break
    else:
        pytest.skip("the kill never landed between the sheet write and the state commit")
    assert h is not None
    with h.explained():
        header, rows, newline = read_sheet(h.sheet)
        rows[0]["Company"] = "Edited After The Crash"
        email = norm_email(rows[0]["Email"])
        write_sheet(h.sheet, header, rows, newline)
        h.sync([f"books {email} Company='Edited After The Crash'"])
        second, _ = h.sync()
        hcp = next(c for c in small_sandbox.customers() if norm_email(c.get("email")) == email)
        books = next(r for r in h.sheet_rows() if norm_email(r["Email"]) == email)
        assert (text(hcp.get("company")), books["Company"]) == (
            "Edited After The Crash",
            "Edited After The Crash",
        ), (
            f"{email}: hcp company {hcp.get('company')!r}, books {books['Company']!r} after two "
            f"syncs; the second planned {second.stdout[-600:]}"
        )
