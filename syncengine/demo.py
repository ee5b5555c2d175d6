"""``syncengine demo``: a guided first run against the built-in Housecall Pro sandbox.

It sets up a folder with a config, a bookkeeper's spreadsheet that overlaps the sandbox's
customers (identical rows, rows that fill in what HCP lacks, new rows, one real conflict, a
column syncengine does not know), then runs a dry run, a sync (customers, then their invoices
and payments into invoices.csv and payments.csv), and a second sync that has nothing left to
do, proves the books reconcile — and says what to look at and what to try next.

Every command it suggests works as printed: the config holds the sandbox's own key (not a
secret), and the commands that talk to Housecall Pro are marked, with the command that starts
the sandbox again first; ``keep_sandbox`` keeps the demo's sandbox running for them instead,
until Ctrl-C, and then saves what it holds.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.markup import escape

from syncengine import api
from syncengine.config import load_config
from syncengine.exit_codes import ExitCode
from syncengine.render import render_result

API_KEY = "sandbox-key"
"""The sandbox's own key (``syncengine sandbox``'s default; at least 8 characters, like every
configured key)."""
SEED = 12

CONFIG = """\
# Written by `syncengine demo`. The Housecall Pro sandbox it talks to runs only while the
# demo runs (or, with `syncengine demo --keep-sandbox`, until Ctrl-C). Start it again, from
# this folder, with what the demo left behind:
#     syncengine sandbox --port {port} --api-key {key} --data hcp-data.json
# then: syncengine sync --config config.toml --dry-run
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:{port}"
# The sandbox's own key, not a secret. A real key never goes in a file: take it from the
# environment with api_key = "${{HCP_API_KEY}}".
api_key = "{key}"
rate_limit = 50.0
delete_customers = true

[connectors.books]
type = "spreadsheet"
path = "books"                          # or "books.xlsx": one workbook with three sheets
timezone = "America/Chicago"            # the sheet shows dates as the office sees them

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = ["customers", "invoices", "payments"]

[pipelines.conflicts]
default = ["hcp"]                       # where both sides differ, Housecall Pro wins...
"customers.mobile_number" = ["manual"]  # ...except phone numbers: a person decides

[pipelines.deletes]
propagate = true
max_fraction = 0.2
"""

COLUMNS = [
    "Sync ID",
    "First Name",
    "Last Name",
    "Email",
    "Mobile",
    "Home Phone",
    "Work Phone",
    "Company",
    "Tags",
    "Street",
    "City",
    "State",
    "Zip",
    "Notes",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningSandbox:
    """The sandbox serving in a thread of this process."""

    state: Any
    """The sandbox's data (``dump()`` saves it)."""
    thread: threading.Thread
    base_url: str


@contextmanager
def background_sandbox(port: int, **options: Any) -> Iterator[RunningSandbox]:
    """Run the sandbox on 127.0.0.1:port in a thread until the block ends."""
    from syncengine.connectors.housecallpro.sandbox import create_app

    app = create_app(API_KEY, **options)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="sandbox", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the sandbox did not start on port {port}")
        time.sleep(0.02)
    try:
        yield RunningSandbox(app.state.sandbox, thread, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _serve_until_interrupted(sandbox: RunningSandbox) -> None:
    """Block while the sandbox serves, until Ctrl-C (SIGINT, also where a shell started the
    demo in the background with SIGINT ignored) or SIGTERM."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while sandbox.thread.is_alive():
            sandbox.thread.join(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _national(e164: str | None) -> str:
    digits = "".join(ch for ch in e164 or "" if ch.isdigit())[-10:]
    if len(digits) != 10:
        return e164 or ""
    return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"


def _row(c: dict[str, Any], **overrides: str) -> dict[str, str]:
    service: dict[str, Any] = next(
        (a for a in c.get("addresses") or [] if a.get("type") == "service"), {}
    )
    row = {
        "Sync ID": "",
        "First Name": c.get("first_name") or "",
        "Last Name": c.get("last_name") or "",
        "Email": c.get("email") or "",
        "Mobile": _national(c.get("mobile_number")),
        "Home Phone": _national(c.get("home_number")),
        "Work Phone": _national(c.get("work_number")),
        "Company": c.get("company") or "",
        "Tags": ", ".join(c.get("tags") or []),
        "Street": service.get("street") or "",
        "City": service.get("city") or "",
        "State": service.get("state") or "",
        "Zip": service.get("zip") or "",
        "Notes": "",
    }
    row.update(overrides)
    return row


def write_spreadsheet(path: Path, customers: list[dict[str, Any]]) -> list[str]:
    """The bookkeeper's sheet; returns what was put in it, for the explanation."""
    story = []
    rows = []
    for c in customers[:4]:
        rows.append(_row(c, Notes="pays by check"))
    story.append("4 rows identical to HCP customers (they get linked, nothing changes)")
    filled = [c for c in customers[4:] if not c.get("company")][:2]
    for c in filled:
        rows.append(_row(c, Company=f"{c.get('last_name') or 'Acme'} Property Management"))
    story.append(
        f"{len(filled)} rows where the bookkeeper filled in a company HCP lacks (it flows to HCP)"
    )
    target = next(
        c for c in customers[4:] if c.get("mobile_number") and c.get("email") and c not in filled
    )
    rows.append(_row(target, Mobile="(555) 010-9999"))
    story.append(
        f"1 row for {target.get('first_name')} {target.get('last_name')} with a "
        "different mobile number than HCP (a conflict parked for a person)"
    )
    rows += [
        {
            "First Name": "Dana",
            "Last Name": "Whitfield",
            "Email": "Dana.Whitfield@Example.org ",
            "Mobile": "555-303-4411",
            "Company": "Whitfield Bakery",
            "Tags": "commercial",
            "Street": "12 Mill Rd",
            "City": "Austin",
            "State": "TX",
            "Zip": "78701",
            "Notes": "new this week",
        },
        {
            "First Name": "Luis",
            "Last Name": "Ortega",
            "Email": "luis.ortega@example.org",
            "Mobile": "+1 555 303 4412",
            "Tags": "residential; vip".replace(";", ","),
            "Street": "88 Elm St",
            "City": "Austin",
            "State": "TX",
            "Zip": "78702",
        },
        {
            "First Name": "Priya",
            "Last Name": "Natarajan",
            "Email": "priya.n@example.org",
            "Work Phone": "(555) 303-4413",
            "Street": "5 Oak Ave",
            "City": "Round Rock",
            "State": "TX",
            "Zip": "78664",
        },
    ]
    story.append(
        "3 new rows typed in by the bookkeeper (they are created in HCP; note the "
        "messy email and phone formats)"
    )
    story.append("an extra 'Notes' column syncengine does not map (it is kept as it is)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in COLUMNS})
    return story


def _save(sandbox: RunningSandbox, path: Path) -> None:
    path.write_text(json.dumps(sandbox.state.dump(), indent=1), encoding="utf-8")


def _command(*words: str | Path) -> str:
    """A command line as a shell takes it (paths with spaces quoted)."""
    return " ".join(shlex.quote(str(w)) for w in ("syncengine", *words))


def _try_next(
    console: Console, directory: Path, port: int, conflict_id: int | None, *, keep: bool
) -> None:
    """The commands to try next, each on a line of its own starting with ``$``, exactly as
    they run; those that talk to Housecall Pro say they need the sandbox."""
    config = directory / "config.toml"
    data = directory / "hcp-data.json"
    console.rule("Try next")
    if keep:
        console.print(
            f"The sandbox keeps running on http://127.0.0.1:{port} for these commands: run "
            "them in a second terminal."
        )
    else:
        console.print(
            "The sandbox stopped with the demo. The commands marked (needs the sandbox) talk "
            "to it: first start it again with what it held, in a second terminal, and leave it "
            "running (Ctrl-C stops it):"
        )
        console.print(
            "    $ "
            + escape(_command("sandbox", "--port", str(port), "--api-key", API_KEY, "--data", data))
        )
        console.print("  or run the demo again and keep its sandbox running until Ctrl-C:")
        console.print("    $ " + escape(_command("demo", "--dir", directory, "--keep-sandbox")))
    needs = "" if keep else " (needs the sandbox)"
    steps: list[tuple[str, str]] = [
        (
            "the parked mobile number: each side's value",
            _command("conflicts", "list", "-c", config),
        ),
    ]
    if conflict_id is not None:
        steps += [
            (
                "settle it with the spreadsheet's number",
                _command("conflicts", "resolve", str(conflict_id), "--take", "books", "-c", config),
            ),
            (f"write the settled number to Housecall Pro{needs}", _command("sync", "-c", config)),
        ]
    steps += [
        (
            f"the books, invoice by invoice{needs}",
            _command("reconcile-report", "-c", config, "--all"),
        ),
        ("the last run, open conflicts, skipped writes", _command("status", "-c", config)),
    ]
    for what, command in steps:
        console.print(f"  {escape(what)}:")
        console.print(f"    $ {escape(command)}")


def run_demo(directory: Path, console: Console, *, keep_sandbox: bool = False) -> int:
    """Run the demo in ``directory`` (started afresh); with ``keep_sandbox`` keep its sandbox
    serving afterwards until Ctrl-C or SIGTERM. Returns the exit code."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in ("state.db", "state.db-wal", "state.db-shm", "hcp-data.json"):
        (directory / stale).unlink(missing_ok=True)
    shutil.rmtree(directory / "books", ignore_errors=True)
    data_file = directory / "hcp-data.json"

    port = free_port()
    console.print(f"[bold]syncengine demo[/] in {escape(str(directory))}\n")
    with background_sandbox(port, seed=SEED) as sandbox:
        base = sandbox.base_url
        with httpx.Client(base_url=base, headers={"Authorization": f"Token {API_KEY}"}) as hc:
            customers = hc.get(
                "/customers", params={"page_size": 100, "sort_direction": "asc"}
            ).json()["customers"]
        console.print(
            f"1. Started the Housecall Pro sandbox on {base} with {len(customers)} customers."
        )
        story = write_spreadsheet(directory / "books" / "customers.csv", customers)
        console.print("2. Wrote the bookkeeper's spreadsheet books/customers.csv:")
        for line in story:
            console.print(f"     - {line}")
        (directory / "config.toml").write_text(
            CONFIG.format(port=port, key=API_KEY), encoding="utf-8"
        )
        console.print(
            "3. Wrote config.toml (hcp + books, Housecall Pro wins conflicts, "
            "mobile numbers are decided by a person).\n"
        )
        config = load_config(directory / "config.toml")

        console.rule("4. syncengine sync --dry-run  (shows every change; writes nothing)")
        dry = api.sync(config, dry_run=True)[0]
        render_result(console, dry)
        console.rule("5. syncengine sync")
        first = api.sync(config)[0]
        render_result(console, first)
        console.rule("6. syncengine sync  (again: nothing left to do)")
        second = api.sync(config)[0]
        render_result(console, second)
        console.rule("7. syncengine reconcile-report  (do the books agree?)")
        from syncengine.render import render_report

        report = api.reconcile_report(config)[0]
        render_report(console, report)
        _save(sandbox, data_file)
        parked = api.open_conflicts(config)
        conflict_id = parked[0].row.id if parked else None
        ok = (
            not second.plan.actions
            and not first.failures
            and not second.guard
            and first.exit_code in (ExitCode.OK, ExitCode.PROBLEMS)
            and report.clean
        )

        console.rule("What to look at")
        for line in (
            "books/customers.csv: every row now has a Sync ID; HCP's other customers were "
            "appended; the Notes column is untouched "
            f"({directory / 'books' / 'customers.csv'})",
            "books/invoices.csv, books/payments.csv: every invoice and payment, amounts as "
            "1234.50, dates in the office's time zone, customers by e-mail (by mobile number "
            "for a customer without one)",
            f"hcp-data.json: what the sandbox held at the end ({data_file})",
        ):
            console.print(f"  • {escape(line)}")
        _try_next(console, directory, port, conflict_id, keep=keep_sandbox)
        if not ok:
            console.print("[red]The demo did not converge as expected; see the output above.[/]")
            return ExitCode.PROBLEMS
        if keep_sandbox:
            console.print(
                f"\nThe sandbox is serving on {base}. Press Ctrl-C to stop it; what it holds "
                f"then is saved to {escape(str(data_file))}."
            )
            console.file.flush()
            _serve_until_interrupted(sandbox)
    if keep_sandbox:
        _save(sandbox, data_file)
        console.print(
            f"\nThe sandbox stopped; what it held is saved in {escape(str(data_file))}. Start "
            "it again with:"
        )
        console.print(
            "    $ "
            + escape(
                _command("sandbox", "--port", str(port), "--api-key", API_KEY, "--data", data_file)
            )
        )
    return ExitCode.OK
