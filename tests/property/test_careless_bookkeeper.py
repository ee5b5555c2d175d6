"""A careless bookkeeper and a careless operator, as a hypothesis state machine (issue 10).

Two members: ``hcp``, a memory member with Housecall Pro's capabilities (customers take every
write, invoices only creates, payments none), and ``books``, the spreadsheet connector on a
real folder of CSV files (customers, invoices and payments). The state store is a real SQLite
file. Between syncs:

- the bookkeeper edits the CSV files directly with the csv module, as a spreadsheet program
  saves them (never through the connector): types a customer, blanks or mistypes a Sync ID,
  copies a row (with and without its Sync ID), deletes a row, sorts the rows, reorders the
  columns, renames or removes a mapped column, adds a second column named like one the sync
  uses, removes the Sync ID column, edits a cell, deletes a whole file;
- the office types, edits and deletes records in HCP (customers, invoices for its customers,
  payments of its invoices; only customers nothing refers to are deleted there);
- the operator loses the state store (the SQLite file deleted), starts a second sync while
  another run holds the pipeline's lease, or runs a sync that is SIGKILLed at a chosen write
  (a forked child that kills itself at its N-th write: ``Crash``).

Every sync holds the pipeline's lease (``leasing.hold_pipelines``, as ``api.sync`` takes it).
Checked after every sync (and around the killed one plus the sync that recovers it):

- nothing is lost: a record that disappears from a member (an HCP record by its native id, so
  a delete followed by a create again counts as a loss; a sheet row by what names it) is one
  a person deleted somewhere; a field that a sync empties on a customer is one a person
  cleared on the other member;
- nothing is duplicated: HCP never holds two records with one e-mail, invoice number or
  payment (each payment's amount is unique), and a sync never adds a row for something the
  sheet already shows (copies the bookkeeper made stay as many as they were);
- a sheet whose structure is wrong (a duplicated column the sync uses, the Sync ID column gone
  or every Sync ID cleared while records are linked to it) stops every sync with
  ``StructureError`` (exit 2) and nothing written anywhere: CSV files, HCP and the state's
  records, links, journal, conflicts, skips and read marks are as they were;
- a safety guard stops exactly the entities a member lists nothing of while records are
  linked to it (a deleted file, every row deleted), with nothing written of them;
- a second sync while the lease is held is refused as busy (exit 4), with nothing done.

``fix_and_converge`` is the bookkeeper fixing what was refused or reported: a broken sheet is
restored as it was before the change (undo), a deleted file is restored from the backup, the
copies of a row are deleted, and a member emptied on purpose is confirmed with
``allow_mass_delete``. Then a few syncs converge: no issue, the last one plans nothing, every
record of every member is linked, nothing refers to a record its member lacks, every live
record is on every member that can create it with the hub's values where the member can take
updates (so HCP and the sheet agree field by field on the customers), and a deleted one is
kept only where it cannot be deleted.

Record keys come from a counter (a killed child's from another range), so that a failing
example replays and shrinks exactly.
"""

from __future__ import annotations

import atexit
import copy
import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import typer
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import syncengine.match
import syncengine.slices
from syncengine import api, model
from syncengine.cli import handled
from syncengine.config import Config
from syncengine.connector import Capabilities
from syncengine.connectors.memory import MemoryConnector, MemoryDataset
from syncengine.connectors.spreadsheet.connector import SpreadsheetConnector
from syncengine.engine import Engine, SyncResult
from syncengine.errors import PipelineBusyError, RecordError, StructureError
from syncengine.leasing import hold_pipelines
from syncengine.mapping import EntityMapping
from syncengine.state import StateStore
from tests.helpers import Drawn, memory_config

C, INV, PAY = "customers", "invoices", "payments"
ENTITIES = (C, INV, PAY)
HCP, BOOKS = "hcp", "books"
MEMBERS: dict[str, dict[str, Any]] = {
    HCP: {"entities": list(ENTITIES), "only": {INV: ["create"], PAY: []}},
    BOOKS: {"type": "spreadsheet", "path": "books"},
}
SYNC_ID = "Sync ID"
FILES = {C: "customers.csv", INV: "invoices.csv", PAY: "payments.csv"}
TOKEN_COLUMN = {C: "Email", INV: "Invoice #", PAY: "Amount"}
"""The sheet's column that names a record for the test (unique per record)."""
HCP_TOKEN = {C: "email", INV: "invoice_number", PAY: "amount"}
REFS = {INV: ("customer", C), PAY: ("invoice", INV)}
"""entity -> (its reference field, the entity referred to)."""
REF_COLUMN = {INV: "Customer Email", PAY: "Invoice #"}
RELINK_COLUMNS = {
    C: ("Email", "Mobile", "First Name", "Last Name", "Street", "City"),
    INV: ("Invoice #",),
    PAY: ("Invoice #", "Amount", "Date", "Method"),
}
"""The columns of the fields a lost state store re-links by (match and relink keys)."""
MATCH_KEY_COLUMNS = {C: ("Email", "Mobile"), INV: ("Invoice #",), PAY: ()}
"""The columns of the match keys: without them a lost state store cannot re-link the sheet's
customers or invoices, and nothing new is matched until they are back (see ``AVOID``: "lost
without a match key column")."""
CUSTOMER_FIELDS = (
    "first_name",
    "last_name",
    "company",
    "tags",
    "addresses.service.street",
    "addresses.service.city",
)
"""The customer fields people edit (and the field-loss check watches)."""
STATE_TABLES = ("records", "links", "journal", "conflicts", "skips", "read_marks")
"""Everything the state store knows of records (not the run history nor the leases)."""
META = ("updated_at",)

FIRST_NAMES = ["Ann", "Bob", "Cy"]
LAST_NAMES = ["Lee", "Ng"]
COMPANIES = ["Acme", "Beta Co"]
STREETS = ["1 Main St", "2 Oak Ave"]
CITIES = ["Springfield", "Shelbyville"]
TAGS = ["vip", "late", "cash"]
INVOICE_STATUSES = ["open", "sent", "paid", "Paid", "draft"]
PAYMENT_STATUSES = ["succeeded", "pending", "refunded"]
METHODS = ["cash", "check", "credit_card"]
DAYS = ["2026-01-02", "2026-01-03", "2026-01-05"]
SHEET_VALUES: dict[tuple[str, str], list[str]] = {
    (C, "First Name"): FIRST_NAMES,
    (C, "Last Name"): LAST_NAMES,
    (C, "Company"): COMPANIES,
    (C, "Tags"): ["vip", "late, cash", "vip, late"],
    (C, "Street"): STREETS,
    (C, "City"): CITIES,
    (INV, "Status"): ["open", "sent", "paid", " Paid "],
    (INV, "Amount"): ["12.50", "99", "1,234.00"],
    (PAY, "Status"): ["succeeded", "pending", " Refunded "],
    (PAY, "Method"): ["cash", "check"],
}
"""What the bookkeeper types into a column ("" is always possible: a cleared cell)."""

WHOLE_FILE_ACTIONS = [
    "reorder the columns",
    "rename a mapped column",
    "remove a mapped column",
    "name a second column like a used one",
]
"""What the bookkeeper may do to a file without rows, too."""

LEASE_TTL = 30.0
"""The lease of the machine's own syncs (renewed while a sync runs, released after)."""
CHILD_LEASE_TTL = 0.01
"""The lease a killed sync leaves behind: expired by the time the operator syncs again."""
CHILD_KEYS = 10**6
"""Keys a killed child makes start at a multiple of this (the parent's never get there)."""
CHILD_DEADLINE_S = 120.0
"""A child that has not ended by then is hung (a test bug): it is killed and the test fails."""

_SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None
"""The example's folder on tmpfs where there is one: the machine syncs many times."""


def ds(name: str = HCP) -> MemoryDataset:
    return MemoryConnector.get_dataset(name)


class KeyCounter:
    """Record keys from a counter instead of time and chance (see the module docstring)."""

    def __init__(self) -> None:
        self.next = 1

    def __call__(self) -> str:
        n, self.next = self.next, self.next + 1
        return f"{n:032x}"


def token_of(entity: str, value: Any) -> str | None:
    """What names a record for the test, from its token field as a member shows it."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if entity == C:
        return text.lower()
    if entity == PAY:
        if isinstance(value, int):
            return str(value)
        try:
            return str(int(Decimal(text.replace(",", "")) * 100))
        except InvalidOperation:
            return None
    return text


def exit_code_of(exc: BaseException) -> int:
    """The exit code the CLI gives ``exc`` (``cli.handled``, which every command runs in)."""
    try:
        with handled("sync"):
            raise exc
    except typer.Exit as done:
        return int(done.exit_code)
    raise AssertionError(f"the CLI did not handle {exc!r}")


# ------------------------------------------------------------------------- the CSV files


class SheetFile:
    """One CSV file of the books, read and saved as a person's spreadsheet program does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def raw(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    def load(self) -> list[list[str]]:
        """Header first; every row as long as the header; blank rows left out."""
        if not self.path.exists():
            return []
        rows = list(csv.reader(io.StringIO(self.path.read_text(encoding="utf-8"), newline="")))
        if not rows:
            return []
        width = max(len(r) for r in rows)
        out = [r + [""] * (width - len(r)) for r in rows]
        return [out[0], *(r for r in out[1:] if any(c.strip() for c in r))]

    def save(self, rows: list[list[str]]) -> None:
        """Into a new file moved over the old one, as an editor saves."""
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        tmp = self.path.with_name(self.path.name + ".saving")
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(tmp, self.path)

    def restore(self, data: bytes) -> None:
        tmp = self.path.with_name(self.path.name + ".saving")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)


def without_column(rows: list[list[str]], name: str) -> list[list[str]]:
    """The rows without the first column headed ``name``."""
    index = column(rows[0], name)
    return [[c for i, c in enumerate(r) if i != index] for r in rows]


def column(header: list[str], *names: str) -> int | None:
    """The first column headed by one of ``names`` (spaces trimmed), as the connector finds
    it."""
    for index, cell in enumerate(header):
        if cell.strip() in names:
            return index
    return None


# ----------------------------------------------------------------------- what members hold


@dataclass
class Census:
    """What every member shows, taken before and after a sync."""

    hcp_ids: dict[str, dict[str, str | None]] = field(default_factory=dict)
    """entity -> HCP native id -> its token."""
    hcp_tokens: dict[str, Counter[str]] = field(default_factory=dict)
    sheet_tokens: dict[str, Counter[str]] = field(default_factory=dict)
    fields: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """member -> customer token -> canonical field -> value, for the fields the member has a
    place for (a sheet without a Company column has none), of customers shown once."""


@dataclass
class Snapshot:
    """Everything a refused run must leave exactly as it was."""

    files: dict[str, bytes | None]
    hcp: dict[str, Any]
    state: dict[str, list[tuple[Any, ...]]]
    runs: int


@dataclass(frozen=True)
class Crash:
    """Where a forked sync kills itself: at its ``n``-th write to a member (an HCP create,
    update or delete, or the save of a CSV file), ``before`` the write or ``after`` it (HCP's
    dataset saved, the file replaced), before the engine records it."""

    n: int
    when: str

    def __str__(self) -> str:
        return f"write #{self.n} {self.when}"


# ----------------------------------------------------------------------------- the machine


@dataclass
class Workspace:
    """The folder, config and capabilities every example of this process uses in turn
    (loading a config and migrating a new state store for each would cost a tenth of the
    machine's time): ``fresh()`` empties the folder and puts an empty state store in it, as
    ``api.open_store`` creates one."""

    folder: Path
    cfg: Config
    caps: dict[tuple[str, str], Capabilities]
    empty_state: bytes
    pid: int

    @classmethod
    def fresh(cls) -> Workspace:
        if not _WORKSPACE or _WORKSPACE[0].pid != os.getpid():
            folder = Path(tempfile.mkdtemp(prefix="syncengine-careless-", dir=_SCRATCH))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            cfg = memory_config(
                folder,
                MEMBERS,
                entities=ENTITIES,
                conflicts={"default": ["newest", BOOKS]},
                # the mass-delete fraction never trips (a handful of records); the empty-member
                # guard does, and the machine expects it
                deletes={"propagate": True, "min_count": 1000},
            )
            api.open_store(cfg).close()
            caps = {
                (m, e): cfg.make_connector(m).capabilities(e) for m in MEMBERS for e in ENTITIES
            }
            state = (folder / "state.db").read_bytes()
            _WORKSPACE[:] = [cls(folder, cfg, caps, state, os.getpid())]
        space = _WORKSPACE[0]
        for item in space.folder.iterdir():
            if item.is_dir():
                shutil.rmtree(item)
            elif item.name != "config.toml":
                item.unlink()
        (space.folder / "state.db").write_bytes(space.empty_state)
        return space


_WORKSPACE: list[Workspace] = []


class CarelessBookkeeper(RuleBasedStateMachine):
    """See the module docstring."""

    AVOID: frozenset[str] = frozenset(
        {"lost without a match key column", "lost with rows in error"}
    )
    """Paths of open engine bugs the machine is kept off, so that it finds new bugs rather
    than these again; each has a strict xfail test at the end of the file while it is open.
    The names it understands: ``lost with rows in error``, ``lost with columns missing``,
    ``lost without a match key column``, ``lost after a method changed``, ``new rows alike``.

    Fixed, and regression tests at the end of the file now: the four it found first (a lost
    state store with rows in error, with a column re-linking matches by missing, after a
    payment's method changed, and two new rows alike); a lost state store while the
    customers or invoices file lacks a match key's column (nothing new is matched until it
    is back, ``test_a_lost_state_store_with_the_email_...``); and, found by random draws and
    never avoided, a column the sync adds back beside rows that share a Sync ID, left blank
    on them and read as cleared once they were fixed
    (``test_a_column_added_back_while_rows_share_a_sync_id_...``).

    Still avoided, though no longer an engine bug: ``lost without a match key column``. The
    sync now holds the records it cannot match and asks a person to put the column back;
    ``_fix`` does not model that yet (it would rename an alias back, and cannot bring back
    a removed column's values), so the machine would fail at its own "no issue after the
    fix" check (found by a random run with the entry removed).

    Open again: ``lost with rows in error``. Its first finding is fixed (the regression
    tests below), but a longer path still fails: an invoice row copied with its Sync ID, the
    state store lost twice with a customer's Sync ID mistyped between, then the invoice row's
    Sync ID blanked: the row gets a new Sync ID and HCP a second invoice 1001. No reduced
    test yet.
    """

    def __init__(self) -> None:
        super().__init__()
        MemoryConnector.reset()
        self.keys = KeyCounter()
        self._keys = mock.patch.object(syncengine.match, "new_key", self.keys)
        self._keys.start()
        space = Workspace.fresh()
        self.tmp = space.folder
        self.cfg: Config = space.cfg
        self.pipeline = self.cfg.pipelines["p"]
        self.mappings: dict[tuple[str, str], EntityMapping] = {
            (m, e): self.pipeline.mappings[(m, e)] for m in MEMBERS for e in ENTITIES
        }
        self.caps = space.caps
        self.used = {
            e: {SYNC_ID, *(f.native.strip() for f in self.mappings[(BOOKS, e)].fields)}
            for e in ENTITIES
        }
        """The columns the sync uses in each file: two alike of these are a structure error."""
        self.store: StateStore = api.open_store(self.cfg)
        self.books = self.tmp / "books"
        self.counter = {C: 0, INV: 0, PAY: 0}
        self.next_id = 0
        self.retired: dict[str, set[str]] = {e: set() for e in ENTITIES}
        """Tokens of records a person deleted (never typed again)."""
        self.cleared: dict[str, set[tuple[str, str]]] = {m: set() for m in MEMBERS}
        """member -> (customer token, field) a person cleared there."""
        self.good: dict[str, bytes] = {}
        """entity -> its file as it was before the change that broke its structure."""
        self.backups: dict[str, bytes] = {}
        """entity -> its file as it was before the bookkeeper deleted it."""
        self.aliases: dict[str, dict[str, str]] = {e: {} for e in ENTITIES}
        """entity -> new column name -> the mapped column a person renamed to it."""
        self.known: dict[tuple[str, str], str] = {}
        """(entity, Sync ID) -> the token of the row, as last seen."""
        self.relinks: dict[tuple[str, str], tuple[str, str]] = {}
        """(entity, token) -> (the Sync ID of a row, what a person made of it)."""
        self.crashes = 0
        self._linked_cache: dict[tuple[str, str], int] = {}
        self.lost = False
        """The state store was lost and no sync completed since."""
        self.settled = False
        """The last sync planned nothing, and nothing changed since."""
        self.converged = False
        """Everything converged, and nothing changed since."""

    def teardown(self) -> None:
        self.store.close()
        self._keys.stop()
        MemoryConnector.reset()

    # ------------------------------------------------------------------------- reading
    def sheet(self, entity: str) -> SheetFile:
        return SheetFile(self.books / FILES[entity])

    def _table(self, entity: str) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = ds().table(entity)
        return table

    def _token_column(self, entity: str, header: list[str]) -> int | None:
        found = column(header, TOKEN_COLUMN[entity])
        if found is None:
            renamed = [
                new for new, old in self.aliases[entity].items() if old == TOKEN_COLUMN[entity]
            ]
            found = column(header, *renamed) if renamed else None
        return found

    def _row_token(self, entity: str, header: list[str], row: list[str]) -> str | None:
        """The token of a row: its token column (or where a person renamed it to: a row new
        when it was renamed keeps its value there, as unmapped data, while the column the
        sync adds back stays empty for it), else the token last seen with its Sync ID."""
        index = self._token_column(entity, header)
        if index is not None:
            token = token_of(entity, row[index])
            renamed = [n for n, old in self.aliases[entity].items() if old == TOKEN_COLUMN[entity]]
            alias = column(header, *renamed) if renamed and token is None else None
            return token_of(entity, row[alias]) if alias is not None else token
        id_index = column(header, SYNC_ID)
        sync_id = row[id_index].strip() if id_index is not None else ""
        return self.known.get((entity, sync_id)) if sync_id else None

    def _sheet_rows(self, entity: str) -> tuple[list[str], list[list[str]]]:
        rows = self.sheet(entity).load()
        return (rows[0], rows[1:]) if rows else ([], [])

    def _sheet_data(self, header: list[str], row: list[str]) -> dict[str, str]:
        """A row as the connector reads it: the first column of each name, not the id."""
        data: dict[str, str] = {}
        for name, cell in zip(header, row, strict=True):
            name = name.strip()
            if name and name != SYNC_ID:
                data.setdefault(name, cell)
        return data

    def _census(self) -> Census:
        census = Census()
        for entity in ENTITIES:
            ids = {
                nid: token_of(entity, r.get(HCP_TOKEN[entity]))
                for nid, r in self._table(entity).items()
            }
            census.hcp_ids[entity] = ids
            census.hcp_tokens[entity] = Counter(t for t in ids.values() if t is not None)
            header, rows = self._sheet_rows(entity)
            tokens = [self._row_token(entity, header, r) for r in rows]
            census.sheet_tokens[entity] = Counter(t for t in tokens if t is not None)
            id_index = column(header, SYNC_ID)
            if id_index is not None:
                for row, token in zip(rows, tokens, strict=True):
                    if row[id_index].strip() and token is not None:
                        self.known[(entity, row[id_index].strip())] = token
        census.fields = {HCP: self._hcp_fields(), BOOKS: self._sheet_fields()}
        return census

    def _hcp_fields(self) -> dict[str, dict[str, Any]]:
        mapping = self.mappings[(HCP, C)]
        out: dict[str, dict[str, Any]] = {}
        seen: Counter[str] = Counter()
        for record in self._table(C).values():
            token = token_of(C, record.get("email"))
            if token is None:
                continue
            seen[token] += 1
            canonical = mapping.to_canonical(record)
            out[token] = {f: canonical.get(f) for f in CUSTOMER_FIELDS}
        return {t: v for t, v in out.items() if seen[t] == 1}

    def _sheet_fields(self) -> dict[str, dict[str, Any]]:
        mapping = self.mappings[(BOOKS, C)]
        header, rows = self._sheet_rows(C)
        present = {
            f.canonical for f in mapping.fields if column(header, f.native.strip()) is not None
        }
        out: dict[str, dict[str, Any]] = {}
        seen: Counter[str] = Counter()
        for row in rows:
            token = self._row_token(C, header, row)
            if token is None:
                continue
            seen[token] += 1
            try:
                canonical = mapping.to_canonical(self._sheet_data(header, row))
            except RecordError:
                continue
            out[token] = {f: canonical.get(f) for f in CUSTOMER_FIELDS if f in present}
        return {t: v for t, v in out.items() if seen[t] == 1}

    def _snapshot(self) -> Snapshot:
        db = self.tmp / "state.db"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            state = {t: sorted(con.execute(f"SELECT * FROM {t}"), key=repr) for t in STATE_TABLES}
            runs = int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
        finally:
            con.close()
        return Snapshot(
            files={e: self.sheet(e).raw() for e in ENTITIES},
            hcp=copy.deepcopy(ds().records),
            state=state,
            runs=runs,
        )

    def _linked(self, member: str, entity: str) -> int:
        """How many records are linked to the member (cached until the state changes)."""
        if not self._linked_cache:
            self._linked_cache = {
                (m, e): self.store.linked_count("p", e, m) for m in MEMBERS for e in ENTITIES
            }
        return self._linked_cache[(member, entity)]

    def _broken(self, entity: str) -> str:
        """Why the entity's file is a structure error now, or "" (see the module docstring)."""
        header, rows = self._sheet_rows(entity)
        if not header:
            return ""
        names = Counter(cell.strip() for cell in header)
        twice = sorted(n for n in self.used[entity] if names[n] > 1)
        if twice:
            return f"{FILES[entity]}: 2 columns are named {twice[0]}"
        id_index = column(header, SYNC_ID)
        ids = [r[id_index].strip() for r in rows] if id_index is not None else []
        if rows and not any(ids) and self._linked(BOOKS, entity) > 0:
            return f"{FILES[entity]}: the {SYNC_ID} column is missing or empty"
        return ""

    def _guards(self) -> list[str]:
        """The entities a member lists nothing of while records are linked to it."""
        out = []
        for entity in ENTITIES:
            if not self._table(entity) and self._linked(HCP, entity) > 0:
                out.append(f"{HCP} {entity}")
            if not self._sheet_rows(entity)[1] and self._linked(BOOKS, entity) > 0:
                out.append(f"{BOOKS} {entity}")
        return out

    # ------------------------------------------------------------------------- syncing
    def _run(self, *, allow_mass_delete: bool = False) -> SyncResult:
        """One sync under the pipeline's lease, as ``api.sync`` runs it (on the example's
        store, which stays open: a new one per sync costs a migration check)."""
        self._linked_cache.clear()
        with hold_pipelines(self.store, ["p"], ttl=LEASE_TTL, wait=5.0) as held:
            engine = Engine(
                self.cfg,
                self.store,
                allow_mass_delete=allow_mass_delete,
                stop=held.run("p").stop,
                holder=held.holder,
            )
            return held.run_sync("p", partial(engine.sync, self.pipeline))

    def _sync(self, *, allow_mass_delete: bool = False) -> SyncResult | None:
        """Sync once and check it; None when a broken sheet refused it (as it must)."""
        broken = [why for e in ENTITIES if (why := self._broken(e))]
        if broken:
            self._refused(broken)
            return None
        guards = [] if allow_mass_delete else self._guards()
        before = self._census()
        result = self._run(allow_mass_delete=allow_mass_delete)
        self._check(before, result, guards)
        self._check_relinks(result)
        self.lost = False
        self.settled = not result.plan.actions and not _waiting(result)
        return result

    def _refused(self, broken: list[str]) -> None:
        """A sync while a sheet is broken: a StructureError naming it, exit 2, nothing
        written anywhere."""
        before = self._snapshot()
        with pytest.raises(StructureError) as caught:
            self._run()
        for why in broken:
            assert why.partition(":")[0] in str(caught.value), (why, str(caught.value))
        assert exit_code_of(caught.value) == 2
        after = self._snapshot()
        assert after.files == before.files, "a refused sync wrote a CSV file"
        assert after.hcp == before.hcp, "a refused sync wrote to HCP"
        assert after.state == before.state, "a refused sync wrote to the state store"
        event("sync: refused, a sheet's structure is wrong")

    def _check(self, before: Census, result: SyncResult, guards: list[str]) -> None:
        """The invariants of every sync (see the module docstring)."""
        after = self._census()
        for ep in result.plan.entities:
            for action in ep.actions:
                event(f"sync: {action.op} {action.entity} on {action.member}")
            if ep.issues:
                event(f"sync: an issue with {ep.entity}")
        assert result.failures == [], [f.describe() for f in result.failures]
        if guards:
            assert result.guard is not None, f"no guard although {guards} list nothing"
            event("sync: a guard stopped an entity")
        else:
            assert result.guard is None, result.guard
        lost = []
        for entity in ENTITIES:
            for nid, token in before.hcp_ids[entity].items():
                if nid not in after.hcp_ids[entity] and token not in self.retired[entity]:
                    lost.append(f"{HCP} {entity} {nid} ({token})")
            for token in before.sheet_tokens[entity]:
                if not after.sheet_tokens[entity][token] and token not in self.retired[entity]:
                    lost.append(f"{BOOKS} {entity} {token}")
        assert lost == [], f"records lost though nobody deleted them: {lost}"
        doubled = []
        for entity in ENTITIES:
            doubled += [f"{HCP} {entity} {t}" for t, n in after.hcp_tokens[entity].items() if n > 1]
            doubled += [
                f"{BOOKS} {entity} {t} ({before.sheet_tokens[entity][t]} -> {n} rows)"
                for t, n in after.sheet_tokens[entity].items()
                if n > max(before.sheet_tokens[entity][t], 1)
            ]
        assert doubled == [], f"records duplicated: {doubled}"
        emptied = []
        for member, other in ((HCP, BOOKS), (BOOKS, HCP)):
            for token, was in before.fields[member].items():
                now = after.fields[member].get(token)
                if now is None:
                    continue
                emptied += [
                    f"{member} {token} {name}: {value!r}"
                    for name, value in was.items()
                    if value is not None
                    and name in now
                    and now[name] is None
                    and (token, name) not in self.cleared[other]
                ]
        assert emptied == [], f"fields emptied though nobody cleared them: {emptied}"

    @initialize(data=st.data())
    def books_in_use(self, data: st.DataObject) -> None:
        """HCP holds a few customers, invoices and payments, synced into the books."""
        for _ in range(data.draw(st.integers(1, 3), label="customers")):
            self._hcp_customer(data)
        for _ in range(data.draw(st.integers(0, 2), label="invoices")):
            self._hcp_invoice(data)
        for _ in range(data.draw(st.integers(0, 2), label="payments") if self._table(INV) else 0):
            self._hcp_payment(data)
        result = self._sync()
        assert result is not None and result.exit_code == 0

    def _touch(self) -> None:
        """Something happened: the next sync has work to look at."""
        self.settled = self.converged = False

    # --------------------------------------------------------------- the bookkeeper
    def _edit_sheet(
        self, entity: str, change: Callable[[list[list[str]]], list[list[str]]]
    ) -> None:
        """Change a file as a person does; remember it as it was while its structure was
        right (what undoing the change that broke it restores)."""
        sheet = self.sheet(entity)
        if not self._broken(entity):
            raw = sheet.raw()
            if raw is not None:
                self.good[entity] = raw
        sheet.save(change(sheet.load()))

    def _files_with_rows(self) -> list[str]:
        return [e for e in ENTITIES if self._sheet_rows(e)[1]]

    @rule(data=st.data())
    def bookkeeper(self, data: st.DataObject) -> None:
        """The bookkeeper changes the books (see the module docstring)."""
        with_rows = self._files_with_rows()
        existing = [e for e in ENTITIES if self.sheet(e).exists()]
        actions: list[str] = []
        if self.sheet(C).exists():
            actions.append("type a customer")
        if with_rows:
            actions += [
                "blank a Sync ID",
                "mistype a Sync ID",
                "copy a row with its Sync ID",
                "copy a row without its Sync ID",
                "delete a row",
                "sort the rows",
                "edit a cell",
                "remove the Sync ID column",
                "delete the file",
            ]
        if existing:
            actions += WHOLE_FILE_ACTIONS
        if not actions:
            event("bookkeeper: no books yet")
            return
        action = data.draw(st.sampled_from(actions), label="bookkeeper")
        if action == "type a customer":
            entity = C
        elif action in WHOLE_FILE_ACTIONS:
            entity = data.draw(st.sampled_from(existing), label="file")
        else:
            entity = data.draw(st.sampled_from(with_rows), label="file")
        event(f"bookkeeper: {action}")
        self._touch()
        getattr(self, "_" + action.replace(" ", "_"))(data, entity)

    def _pick_row(self, data: st.DataObject, entity: str, *, with_id: bool = False) -> int | None:
        header, rows = self._sheet_rows(entity)
        id_index = column(header, SYNC_ID)
        candidates = [
            i
            for i, r in enumerate(rows)
            if not with_id or (id_index is not None and r[id_index].strip())
        ]
        if not candidates:
            return None
        return data.draw(st.sampled_from(candidates), label="row")

    def _type_a_customer(self, data: st.DataObject, entity: str) -> None:
        on_hcp = {token_of(C, r.get("email")) for r in self._table(C).values()}
        on_sheet = set(self._census_sheet_tokens(C))
        reusable = sorted(t for t in on_hcp - on_sheet - self.retired[C] if t is not None)
        email = data.draw(st.sampled_from([None, *reusable]), label="e-mail (None: new)")
        if email is None:
            self.counter[C] += 1
            email = f"c{self.counter[C]}@x.com"
        else:
            event("bookkeeper: types a customer HCP holds")
        values = {
            "Email": email.upper() if data.draw(st.booleans(), label="upper") else email,
            "First Name": data.draw(st.sampled_from(FIRST_NAMES), label="first name"),
            "Last Name": data.draw(st.sampled_from(LAST_NAMES), label="last name"),
            "Street": data.draw(st.sampled_from(["", *STREETS]), label="street"),
            "City": data.draw(st.sampled_from(["", *CITIES]), label="city"),
        }

        def change(rows: list[list[str]]) -> list[list[str]]:
            header = rows[0]
            row = [""] * len(header)
            for name, value in values.items():
                index = column(header, name)
                if index is not None:
                    row[index] = value
            return [*rows, row]

        self._edit_sheet(C, change)

    def _census_sheet_tokens(self, entity: str) -> Counter[str]:
        header, rows = self._sheet_rows(entity)
        return Counter(t for r in rows if (t := self._row_token(entity, header, r)) is not None)

    def _set_id(self, data: st.DataObject, entity: str, typo: bool) -> None:
        """Blank or mistype a row's Sync ID; the next sync that can must write it back."""
        at = self._pick_row(data, entity, with_id=True)
        if at is None:
            event("bookkeeper: no row with a Sync ID")
            return
        header, rows = self._sheet_rows(entity)
        index = column(header, SYNC_ID)
        assert index is not None
        old = rows[at][index].strip()
        new = ""
        if typo:
            how = data.draw(st.sampled_from(["drop the last", "append z", "O for 0"]), label="typo")
            if how == "drop the last":
                new = old[:-1]
            elif how == "append z":
                new = old + "z"
            else:
                new = old.replace("0", "O", 1) if "0" in old else old + "O"
        token = self._row_token(entity, header, rows[at])
        if token is not None and not self.lost:  # its first Sync ID, if it was changed before
            self.relinks[(entity, token)] = (self.relinks.get((entity, token), (old, ""))[0], new)

        def change(rows: list[list[str]]) -> list[list[str]]:
            rows[1 + at][index] = new
            return rows

        self._edit_sheet(entity, change)

    def _check_relinks(self, result: SyncResult) -> None:
        """A row whose Sync ID a person blanked or mistyped has its Sync ID back once a sync
        could take it back (a row of several alike waits: it is ambiguous); never a new
        one, which would be its record deleted and created again."""
        for (entity, token), (old, new) in list(self.relinks.items()):
            header, rows = self._sheet_rows(entity)
            index = column(header, SYNC_ID)
            found = [r for r in rows if self._row_token(entity, header, r) == token]
            if token in self.retired[entity] or index is None or len(found) != 1:
                continue  # deleted, copied or not readable: no longer a plain re-link
            now = found[0][index].strip()
            if now == old:
                event(f"sync: a {entity[:-1]} re-linked, its Sync ID written back")
                del self.relinks[(entity, token)]
                continue
            waits = [i for e in result.plan.entities if e.entity == entity for i in e.issues]
            assert now == new and (waits or result.guard), (
                f"{FILES[entity]}: the row of {token} had {SYNC_ID} {old}, a person made it "
                f"{new!r}, and the sync made it {now!r}"
            )

    def _blank_a_Sync_ID(self, data: st.DataObject, entity: str) -> None:
        self._set_id(data, entity, typo=False)

    def _mistype_a_Sync_ID(self, data: st.DataObject, entity: str) -> None:
        self._set_id(data, entity, typo=True)

    def _copy(self, data: st.DataObject, entity: str, keep_id: bool) -> None:
        # a row without a Sync ID is a record new to the sheet (or one whose Sync ID a person
        # blanked): see AVOID
        at = self._pick_row(data, entity, with_id="new rows alike" in self.AVOID)
        if at is None:
            event("bookkeeper: no row with a Sync ID to copy (AVOID)")
            return
        after = data.draw(st.booleans(), label="right below (else at the end)")

        def change(rows: list[list[str]]) -> list[list[str]]:
            row = list(rows[1 + at])
            index = column(rows[0], SYNC_ID)
            if not keep_id and index is not None:
                row[index] = ""
            where = 2 + at if after else len(rows)
            return [*rows[:where], row, *rows[where:]]

        self._edit_sheet(entity, change)

    def _copy_a_row_with_its_Sync_ID(self, data: st.DataObject, entity: str) -> None:
        if "lost with rows in error" in self.AVOID and self.lost:
            event("bookkeeper: no copy with its Sync ID while the state is lost (AVOID)")
            return
        self._copy(data, entity, keep_id=True)

    def _copy_a_row_without_its_Sync_ID(self, data: st.DataObject, entity: str) -> None:
        self._copy(data, entity, keep_id=False)

    def _delete_a_row(self, data: st.DataObject, entity: str) -> None:
        at = self._pick_row(data, entity)
        assert at is not None
        header, rows = self._sheet_rows(entity)
        token = self._row_token(entity, header, rows[at])
        others = [r for i, r in enumerate(rows) if i != at]
        if token is not None and token not in {self._row_token(entity, header, r) for r in others}:
            self.retired[entity].add(token)
        self._edit_sheet(entity, lambda rows: [rows[0], *rows[1:][:at], *rows[1:][at + 1 :]])

    def _sort_the_rows(self, data: st.DataObject, entity: str) -> None:
        header, _rows = self._sheet_rows(entity)
        by = data.draw(st.integers(0, len(header) - 1), label="by column")
        reverse = data.draw(st.booleans(), label="descending")
        self._edit_sheet(
            entity, lambda rows: [rows[0], *sorted(rows[1:], key=lambda r: r[by], reverse=reverse)]
        )

    def _reorder_the_columns(self, data: st.DataObject, entity: str) -> None:
        header, _rows = self._sheet_rows(entity)
        order = data.draw(st.permutations(range(len(header))), label="columns")
        self._edit_sheet(entity, lambda rows: [[r[i] for i in order] for r in rows])

    def _avoid_relinking(self) -> bool:
        """Whether a column re-linking matches by is to be kept (see ``AVOID``)."""
        return bool(self._kept_columns()) and self.lost

    def _kept_columns(self) -> dict[str, tuple[str, ...]]:
        """entity -> the columns ``AVOID`` keeps while the state is lost."""
        if "lost with columns missing" in self.AVOID:
            return RELINK_COLUMNS
        if "lost without a match key column" in self.AVOID:
            return MATCH_KEY_COLUMNS
        return {}

    def _mapped_here(self, entity: str, *, tokens: bool, relinking: bool = True) -> list[str]:
        """The mapped columns the file has (with its token column, and with the columns
        re-linking matches by, or without)."""
        header, _rows = self._sheet_rows(entity)
        names = {cell.strip() for cell in header}
        return sorted(
            n
            for n in self.used[entity] - {SYNC_ID}
            if n in names
            and (tokens or n != TOKEN_COLUMN[entity])
            and (relinking or n not in self._kept_columns().get(entity, ()))
        )

    def _rename_a_mapped_column(self, data: st.DataObject, entity: str) -> None:
        mapped = self._mapped_here(entity, tokens=True, relinking=not self._avoid_relinking())
        if not mapped:
            event("bookkeeper: no mapped column to rename")
            return
        old = data.draw(st.sampled_from(mapped), label="column")
        header, _rows = self._sheet_rows(entity)
        new = f"{old} (old)"
        while any(cell.strip() == new for cell in header) or new in self.aliases[entity]:
            new += "!"
        self.aliases[entity][new] = old

        def change(rows: list[list[str]]) -> list[list[str]]:
            index = column(rows[0], old)
            assert index is not None
            rows[0][index] = new
            return rows

        self._edit_sheet(entity, change)

    def _remove_a_mapped_column(self, data: st.DataObject, entity: str) -> None:
        mapped = self._mapped_here(entity, tokens=False, relinking=not self._avoid_relinking())
        if not mapped:
            event("bookkeeper: no mapped column to remove")
            return
        name = data.draw(st.sampled_from(mapped), label="column")

        def change(rows: list[list[str]]) -> list[list[str]]:
            index = column(rows[0], name)
            assert index is not None
            return [[c for i, c in enumerate(r) if i != index] for r in rows]

        self._edit_sheet(entity, change)

    def _name_a_second_column_like_a_used_one(self, data: st.DataObject, entity: str) -> None:
        header, _rows = self._sheet_rows(entity)
        names = {cell.strip() for cell in header}
        used = sorted(n for n in self.used[entity] if n in names)
        if not used:
            event("bookkeeper: no used column to name twice")
            return
        name = data.draw(st.sampled_from(used), label="column")
        at = data.draw(st.integers(0, len(header)), label="at")
        spaced = data.draw(st.sampled_from([name, f" {name}", f"{name} "]), label="spelt")

        def change(rows: list[list[str]]) -> list[list[str]]:
            junk = [f"junk{i}" if name != SYNC_ID else "" for i in range(len(rows) - 1)]
            return [[*r[:at], v, *r[at:]] for r, v in zip(rows, [spaced, *junk], strict=True)]

        self._edit_sheet(entity, change)

    def _remove_the_Sync_ID_column(self, data: st.DataObject, entity: str) -> None:
        header, _rows = self._sheet_rows(entity)
        if column(header, SYNC_ID) is None:
            event("bookkeeper: the Sync ID column is gone already")
            return

        def change(rows: list[list[str]]) -> list[list[str]]:
            index = column(rows[0], SYNC_ID)
            return [[c for i, c in enumerate(r) if i != index] for r in rows]

        self._edit_sheet(entity, change)

    def _edit_a_cell(self, data: st.DataObject, entity: str) -> None:
        header, rows = self._sheet_rows(entity)
        editable = {
            C: ["First Name", "Last Name", "Company", "Tags", "Street", "City", "Email"],
            INV: ["Status", "Amount"],
            PAY: ["Status"]
            if "lost after a method changed" in self.AVOID
            else ["Status", "Method"],
        }[entity]
        present = [n for n in editable if column(header, n) is not None]
        if not present:
            event("bookkeeper: no column to edit")
            return
        at = self._pick_row(data, entity)
        assert at is not None
        name = data.draw(st.sampled_from(present), label="column")
        index = column(header, name)
        assert index is not None
        if name == "Email":  # its spelling only: the customer stays who they are
            value = rows[at][index].strip()
            value = data.draw(st.sampled_from([value.upper(), value.lower(), f" {value} "]))
        else:
            value = data.draw(st.sampled_from(["", *SHEET_VALUES[(entity, name)]]), label="value")
        if entity == C and name != "Email" and not value:
            token = self._row_token(C, header, rows[at])
            canonical = next(
                f.canonical for f in self.mappings[(BOOKS, C)].fields if f.native == name
            )
            if token is not None:
                self.cleared[BOOKS].add((token, canonical))

        def change(rows: list[list[str]]) -> list[list[str]]:
            rows[1 + at][index] = value
            return rows

        self._edit_sheet(entity, change)

    def _delete_the_file(self, data: st.DataObject, entity: str) -> None:
        if self._broken(entity) or self._linked(BOOKS, entity) == 0:
            # a file nothing is linked to yet is only a file the sync makes again
            event("bookkeeper: keeps a file nothing is linked to")
            return
        raw = self.sheet(entity).raw()
        assert raw is not None
        self.backups[entity] = raw
        self.sheet(entity).path.unlink()

    # --------------------------------------------------------------------- the office
    def _hcp_put(self, entity: str, record: dict[str, Any]) -> None:
        self.next_id += 1
        ds().put(entity, f"t{self.next_id}", record)

    @rule(data=st.data())
    def office(self, data: st.DataObject) -> None:
        """Someone in the office types, edits or deletes in HCP."""
        self._touch()
        kinds = ["create a customer", "edit a customer"]
        if self._table(C):
            kinds += ["create an invoice", "delete a customer"]
        if self._table(INV):
            kinds += ["create a payment", "edit an invoice"]
        if self._table(PAY):
            kinds.append("edit a payment")
        kind = data.draw(st.sampled_from(kinds), label="office")
        event(f"office: {kind}")
        if kind == "create a customer":
            self._hcp_customer(data)
        elif kind == "create an invoice":
            self._hcp_invoice(data)
        elif kind == "create a payment":
            self._hcp_payment(data)
        elif kind == "edit a customer":
            if not self._table(C):
                return
            nid = data.draw(st.sampled_from(sorted(self._table(C))), label="customer")
            name = data.draw(st.sampled_from(CUSTOMER_FIELDS), label="field")
            pool = {
                "first_name": FIRST_NAMES,
                "last_name": LAST_NAMES,
                "company": COMPANIES,
                "tags": [["vip"], ["late", "cash"]],
                "addresses.service.street": STREETS,
                "addresses.service.city": CITIES,
            }[name]
            value = data.draw(st.sampled_from([None, *pool]), label="value")
            if value is None:
                token = token_of(C, self._table(C)[nid].get("email"))
                if token is not None:
                    self.cleared[HCP].add((token, name))
            ds().edit(C, nid, **{name: value})
        elif kind == "edit an invoice":
            nid = data.draw(st.sampled_from(sorted(self._table(INV))), label="invoice")
            if data.draw(st.booleans(), label="status (else amount)"):
                ds().edit(INV, nid, status=data.draw(st.sampled_from(INVOICE_STATUSES)))
            else:
                ds().edit(INV, nid, amount=data.draw(st.sampled_from([0, 100, 999])))
        elif kind == "edit a payment":
            nid = data.draw(st.sampled_from(sorted(self._table(PAY))), label="payment")
            if "lost after a method changed" in self.AVOID or data.draw(
                st.booleans(), label="status (else method)"
            ):
                ds().edit(PAY, nid, status=data.draw(st.sampled_from(PAYMENT_STATUSES)))
            else:
                ds().edit(PAY, nid, method=data.draw(st.sampled_from(METHODS)))
        else:
            referred = {r.get("customer") for r in self._table(INV).values()}
            leaves = sorted(nid for nid in self._table(C) if nid not in referred)
            if not leaves:
                event("office: every customer has invoices")
                return
            nid = data.draw(st.sampled_from(leaves), label="customer")
            token = token_of(C, self._table(C)[nid].get("email"))
            if token is not None:
                self.retired[C].add(token)
            ds().remove(C, nid)

    def _hcp_invoice(self, data: st.DataObject) -> None:
        customer = data.draw(st.sampled_from(sorted(self._table(C))), label="customer")
        self.counter[INV] += 1
        self._hcp_put(
            INV,
            {
                "invoice_number": str(1000 + self.counter[INV]),
                "customer": customer,
                "amount": data.draw(st.sampled_from([0, 100, 12345]), label="amount"),
                "status": data.draw(st.sampled_from(INVOICE_STATUSES), label="status"),
                "created_at": data.draw(st.sampled_from(DAYS), label="day") + "T00:00:00Z",
            },
        )

    def _hcp_payment(self, data: st.DataObject) -> None:
        invoice = data.draw(st.sampled_from(sorted(self._table(INV))), label="invoice")
        self.counter[PAY] += 1
        self._hcp_put(
            PAY,
            {
                "invoice": invoice,
                "amount": 10_000 + self.counter[PAY],  # its token: unique
                "method": data.draw(st.sampled_from(METHODS), label="method"),
                "status": data.draw(st.sampled_from(PAYMENT_STATUSES), label="status"),
                "paid_at": data.draw(st.sampled_from(DAYS), label="day") + "T00:00:00Z",
                "note": f"pay-{self.counter[PAY]}",
            },
        )

    def _hcp_customer(self, data: st.DataObject) -> None:
        on_hcp = {token_of(C, r.get("email")) for r in self._table(C).values()}
        on_sheet = set(self._census_sheet_tokens(C))
        reusable = sorted(t for t in on_sheet - on_hcp - self.retired[C] if t is not None)
        email = data.draw(st.sampled_from([None, *reusable]), label="e-mail (None: new)")
        if email is None:
            self.counter[C] += 1
            email = f"c{self.counter[C]}@x.com"
        else:
            event("office: types a customer the books hold")
        record: dict[str, Any] = {"email": email}
        for name, pool in (
            ("first_name", FIRST_NAMES),
            ("last_name", LAST_NAMES),
            ("company", COMPANIES),
            ("addresses.service.street", STREETS),
            ("addresses.service.city", CITIES),
        ):
            value = data.draw(st.none() | st.sampled_from(pool), label=name)
            if value is not None:
                record[name] = value
        self._hcp_put(C, record)

    # -------------------------------------------------------------------- the operator
    @rule(data=st.data())
    def operator(self, data: st.DataObject) -> None:
        """The operator loses the state store, starts a second sync while another run holds
        the lease, or has a sync killed at a chosen write."""
        self._touch()
        kind = data.draw(
            st.sampled_from(["lose the state store", "two syncs at once", "a sync is killed"]),
            label="operator",
        )
        event(f"operator: {kind}")
        if kind == "lose the state store":
            if "lost with rows in error" in self.AVOID and self._shared_ids():
                event("operator: keeps the state store while rows share a Sync ID (AVOID)")
                return
            if self._kept_columns() and self._relink_columns_missing():
                event("operator: keeps the state store while a column is missing (AVOID)")
                return
            self.store.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                (self.tmp / f"state.db{suffix}").unlink(missing_ok=True)
            self.store = api.open_store(self.cfg)
            self._linked_cache.clear()
            self.lost = True
            self.relinks.clear()  # the sheet's Sync IDs become keys again: another story
        elif kind == "two syncs at once":
            self._busy()
        else:
            writes = self._planned_writes()
            if not writes:
                event("operator: nothing to write, nothing to kill")
                return
            when = data.draw(st.sampled_from(["before", "after"]), label="kill")
            self._killed(Crash(data.draw(st.integers(1, min(writes, 4)), label="write"), when))

    def _shared_ids(self) -> bool:
        """Whether two rows of a file share a Sync ID (both are record errors)."""
        for entity in ENTITIES:
            header, rows = self._sheet_rows(entity)
            index = column(header, SYNC_ID)
            ids = [r[index].strip() for r in rows if r[index].strip()] if index is not None else []
            if len(ids) != len(set(ids)):
                return True
        return False

    def _relink_columns_missing(self) -> bool:
        """Whether a file lacks a column that re-linking matches by."""
        kept = self._kept_columns()
        for entity in ENTITIES:
            header, _rows = self._sheet_rows(entity)
            if header and any(column(header, name) is None for name in kept.get(entity, ())):
                return True
        return False

    def _busy(self) -> None:
        """Another run holds the lease: a sync (and its dry run) through the API, and an
        engine run under another holder, are refused as busy, with nothing done."""
        other = "otherhost:4242:feedbeef"
        with self.store.transaction() as tx:
            assert tx.acquire_lease("p", other, 60.0, "sync")
        try:
            before = self._snapshot()
            for dry_run in (False, True):
                with pytest.raises(PipelineBusyError) as caught:
                    api.sync(self.cfg, dry_run=dry_run)
                assert "pipeline p is busy" in str(caught.value), str(caught.value)
                assert "otherhost" in str(caught.value)
                assert exit_code_of(caught.value) == 4
            with pytest.raises(PipelineBusyError):
                Engine(self.cfg, self.store, holder="thishost:1:cafe").sync(self.pipeline)
            assert self._snapshot() == before, "a refused run did something"
        finally:
            with self.store.transaction() as tx:
                tx.release_lease("p", other)

    def _planned_writes(self) -> int:
        """How many writes the next sync makes, as its dry run plans them (each HCP write,
        each CSV file saved), or 0 when that sync would be refused."""
        if any(self._broken(e) for e in ENTITIES) or self.backups or self._guards():
            return 0
        plan = Engine(self.cfg, self.store, dry_run=True).sync(self.pipeline).plan
        hcp = sum(1 for a in plan.actions if a.member == HCP)
        return hcp + len({a.entity for a in plan.actions if a.member == BOOKS})

    def _killed(self, crash: Crash) -> None:
        """A sync in a forked child that SIGKILLs itself at ``crash``; then the operator
        syncs again, and that sync recovers. Both together must lose and duplicate
        nothing."""
        before = self._census()
        self.crashes += 1
        saved = self.tmp / "hcp-after-crash.json"
        saved.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                code = self._child(crash, saved)
            finally:
                os._exit(code)
        status = _wait(pid)
        self._linked_cache.clear()
        loaded = json.loads(saved.read_text(encoding="utf-8"))
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL, status
            event(f"operator: the sync was killed {loaded['where']}")
        else:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            event("operator: the sync ended before its crash point")
        dataset = ds()
        dataset.records = loaded["records"]
        dataset._counter = loaded["counter"]
        MemoryDataset._tick = max(MemoryDataset._tick, loaded["tick"])
        # the killed run's own deletes may have emptied a member whose records are still
        # linked (its commit never came): the recovering sync stops for the guard then
        guards = self._guards()
        result = self._run()  # waits, if need be, for the dead run's lease to expire
        self._check(before, result, guards)
        self.lost = False

    def _child(self, crash: Crash, saved: Path) -> int:
        """The killed sync's process: HCP's dataset is saved after each write (so that the
        parent sees what HCP holds), and the process SIGKILLs itself at the crash point."""
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the process dies
        self.keys.next = CHILD_KEYS * self.crashes
        dataset = ds()
        lock = threading.Lock()
        calls: Counter[str] = Counter()

        def save(where: str = "") -> None:
            state = {
                "records": dataset.records,
                "counter": dataset._counter,
                "tick": MemoryDataset._tick,
                "where": where,
            }
            tmp = saved.with_name(saved.name + ".tmp")
            tmp.write_text(json.dumps(state), encoding="utf-8")
            os.replace(tmp, saved)

        def die(where: str) -> None:
            save(where)
            os.kill(os.getpid(), signal.SIGKILL)

        def wrap(cls: type, method: str) -> None:
            original = getattr(cls, method)

            def wrapped(conn: Any, *args: Any, **kwargs: Any) -> Any:
                with lock:
                    calls["writes"] += 1
                    hit = calls["writes"] == crash.n
                    if hit and crash.when == "before":
                        die(f"before {conn.name} {method}")
                    out = original(conn, *args, **kwargs)
                    if conn.name == HCP:
                        save()
                    if hit:
                        die(f"after {conn.name} {method}")
                    return out

            setattr(cls, method, wrapped)

        for method in ("create", "update", "delete"):
            wrap(MemoryConnector, method)
        wrap(SpreadsheetConnector, "flush")
        save()
        store = api.open_store(self.cfg)
        holder = f"killedhost:{os.getpid()}:dead"
        with store.transaction() as tx:
            assert tx.acquire_lease("p", holder, CHILD_LEASE_TTL, "sync")
        Engine(self.cfg, store, holder=holder).sync(self.pipeline)
        save()
        return 0

    # ------------------------------------------------------------------------ syncs
    @rule()
    def sync(self) -> None:
        if self.settled:
            event("sync: skipped, nothing changed since a quiet sync")
            return
        self._sync()

    @rule()
    def fix_and_converge(self) -> None:
        """The bookkeeper fixes what was refused or reported; then everything converges."""
        if self.converged:
            event("fix: skipped, nothing changed since the last time")
            return
        self._fix()
        confirm = bool(self._guards())
        if confirm:
            event("fix: a member emptied on purpose, confirmed with allow_mass_delete")
        for attempt in range(6):
            result = self._sync(allow_mass_delete=confirm and attempt == 0)
            assert result is not None, "still refused after the fix"
            issues = [i.describe() for e in result.plan.entities for i in e.issues]
            assert issues == [] and result.exit_code == 0, (issues, result.exit_code)
            if not result.plan.actions and not _waiting(result):
                event(f"fix: quiet after {attempt + 1} sync(s)")
                break
        else:
            raise AssertionError(
                f"not quiet after 6 syncs: {[a.describe() for a in result.plan.actions]} "
                f"{_waiting(result)}"
            )
        self._check_converged()
        self.converged = True

    def _fix(self) -> None:
        for entity in ENTITIES:
            sheet = self.sheet(entity)
            if entity in self.backups:
                if not sheet.exists():
                    sheet.restore(self.backups[entity])
                    event("fix: a deleted file restored from its backup")
                del self.backups[entity]
            if self._broken(entity):
                sheet.restore(self.good[entity])
                event("fix: a broken file restored as it was")
                assert not self._broken(entity), self._broken(entity)
            self._delete_copies(entity)
            self._blank_shared_ids(entity)

    def _blank_shared_ids(self, entity: str) -> None:
        """Rows of different records that share a Sync ID (two typos alike): as the sync's
        message says, all but the first get a blank Sync ID."""
        header, rows = self._sheet_rows(entity)
        index = column(header, SYNC_ID)
        if index is None:
            return
        seen: set[str] = set()
        blanked = []
        for at, row in enumerate(rows):
            sync_id = row[index].strip()
            if sync_id and sync_id in seen:
                blanked.append(at)
            seen.add(sync_id)
        if blanked:
            event("fix: a Sync ID two rows share blanked")

            def change(rows: list[list[str]]) -> list[list[str]]:
                for at in blanked:
                    rows[1 + at][index] = ""
                return rows

            self._edit_sheet(entity, change)

    def _delete_copies(self, entity: str) -> None:
        """Of the rows showing one record, keep the one linked to the record HCP holds too
        (else one linked to anything, else the first) and delete the others."""
        header, rows = self._sheet_rows(entity)
        id_index = column(header, SYNC_ID)
        links = self.store.link_index("p", entity, BOOKS)
        on_hcp = {key for key, _hash in self.store.link_index("p", entity, HCP).values()}

        def rank(row: list[str]) -> int:
            sync_id = row[id_index].strip() if id_index is not None else ""
            key = links.get(sync_id, (None, None))[0]
            return 0 if key in on_hcp else 1 if key is not None else 2

        kept: dict[str, list[str]] = {}
        out: list[list[str]] = []
        for row in rows:
            token = self._row_token(entity, header, row)
            if token is None:
                out.append(row)
            elif token not in kept or rank(row) < rank(kept[token]):
                kept[token] = row
        if len(kept) + len(out) < len(rows):
            event("fix: copies of a row deleted")
            self._edit_sheet(entity, lambda _rows: [header, *out, *kept.values()])

    def _check_converged(self) -> None:
        """After a quiet sync: see the module docstring."""
        sheets = {e: self._sheet_rows(e) for e in ENTITIES}
        for entity in ENTITIES:
            header, rows = sheets[entity]
            assert not self._broken(entity)
            id_index = column(header, SYNC_ID)
            assert id_index is not None or not rows, f"{FILES[entity]} has no {SYNC_ID} column"
            sheet: dict[str, dict[str, Any]] = {}
            for row in rows:
                assert id_index is not None
                sync_id = row[id_index].strip()
                assert sync_id and sync_id not in sheet, f"{FILES[entity]}: id {sync_id!r} twice"
                sheet[sync_id] = self._canonical(BOOKS, entity, self._sheet_data(header, row))
            hcp = {nid: self._canonical(HCP, entity, r) for nid, r in self._table(entity).items()}
            held = {HCP: hcp, BOOKS: sheet}
            linked: dict[str, set[str]] = {HCP: set(), BOOKS: set()}
            for rs in self.store.iter_records("p", entity):
                live = {
                    m: ln.native_id
                    for m, ln in rs.links.items()
                    if ln.native_id and not ln.tombstone
                }
                for member, nid in live.items():
                    assert nid in held[member], f"{member}: a linked {entity[:-1]} is gone"
                    linked[member].add(nid)
                if rs.base.get(model.DELETED):
                    keepers = [m for m in live if self.caps[(m, entity)].delete]
                    assert keepers == [], f"{keepers} keep a deleted {entity[:-1]}"
                    continue
                base = self._hub_tokens(entity, rs.base)
                for member in MEMBERS:
                    caps = self.caps[(member, entity)]
                    if caps.create:
                        assert member in live, f"{member} lacks the {entity[:-1]} {base}"
                    if member in live and caps.update:
                        mine = held[member][live[member]]
                        theirs = {k: v for k, v in base.items() if k in mine}
                        assert mine == theirs, f"{member}'s {entity[:-1]} differs from the hub"
            for member in MEMBERS:
                unlinked = sorted(set(held[member]) - linked[member])
                assert unlinked == [], f"{member}: unlinked {entity}: {unlinked}"
        # nothing refers to what its member lacks
        for entity, (ref, target) in REFS.items():
            for nid, record in self._table(entity).items():
                assert record.get(ref) in self._table(target), f"hcp {entity} {nid} dangles"
            header, rows = sheets[target]
            index = self._token_column(target, header)
            shown = {token_of(target, r[index]) for r in rows} if index is not None else set()
            header, rows = sheets[entity]
            index = column(header, REF_COLUMN[entity])
            for row in rows if index is not None else []:
                assert token_of(target, row[index]) in shown, f"{FILES[entity]}: {row} dangles"

    def _canonical(self, member: str, entity: str, data: dict[str, Any]) -> dict[str, Any]:
        """A member's record as canonical values for the fields it has a place for, its
        reference as the token of the record referred to."""
        mapping = self.mappings[(member, entity)]
        record = mapping.to_canonical(data)
        if member == BOOKS:
            record = {
                f.canonical: record.get(f.canonical) for f in mapping.fields if f.native in data
            }
        if entity in REFS:
            ref, target = REFS[entity]
            value = record.get(ref)
            if member == HCP:
                found = self._table(target).get(str(value)) if value is not None else None
                value = found.get(HCP_TOKEN[target]) if found is not None else f"unknown {value}"
            record[ref] = token_of(target, value)
        return {k: v for k, v in record.items() if k not in META and v not in (None, "", [])}

    def _hub_tokens(self, entity: str, base: dict[str, Any]) -> dict[str, Any]:
        """A hub record's values, its reference as the token of the record referred to."""
        spec = model.entity_spec(entity)
        out = {
            k: v
            for k, v in base.items()
            if spec.field_spec(k) is not None and not spec.is_meta(k) and v not in (None, "", [])
        }
        if entity in REFS:
            ref, target = REFS[entity]
            if ref in out:
                states = self.store.load_records("p", target, {out[ref]})
                target_base = states[out[ref]].base if out[ref] in states else {}
                out[ref] = token_of(target, target_base.get(HCP_TOKEN[target]))
        return out


def _waiting(result: SyncResult) -> list[str]:
    return [
        f"{e.entity} on {s.member}: {s.reason}"
        for e in result.plan.entities
        for s in e.skips
        if s.kind == "deferred"
    ]


def _wait(pid: int) -> int:
    """The child's wait status; a child still running after ``CHILD_DEADLINE_S`` is hung (a
    bug of the test): killed, and the test fails."""
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked sync {pid} hung")
        time.sleep(0.002)


_PROFILE = settings.default
assert _PROFILE is not None
IN_CI = (
    settings.get_current_profile_name()
    if hasattr(settings, "get_current_profile_name")
    else os.environ.get("HYPOTHESIS_PROFILE")
) == "ci"
TestCarelessBookkeeper = pytest.mark.slow(CarelessBookkeeper.TestCase)
TestCarelessBookkeeper.settings = settings(
    max_examples=300 if IN_CI else max(10, _PROFILE.max_examples // 2),
    stateful_step_count=20,
    # CI runs the same 300 examples every time, so that a green run stays green and a red one
    # replays; new paths are explored with random seeds outside CI (``--hypothesis-seed``),
    # and what they find is fixed or kept here as a strict xfail (see AVOID)
    derandomize=IN_CI,
)


class CarelessBookkeeperInSlices(CarelessBookkeeper):
    """The same bookkeeper, with every first sync of an entity (the first, and each after a
    lost state store) applied in slices of one record and more (``syncengine.slices``): a
    first sync killed between slices, sorted, copied or renamed around must keep every
    invariant a whole one keeps."""

    def __init__(self) -> None:
        self._slices = mock.patch.object(syncengine.slices, "FIRST_SLICE", 1)
        self._slices.start()
        super().__init__()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self._slices.stop()


TestCarelessBookkeeperInSlices = pytest.mark.slow(CarelessBookkeeperInSlices.TestCase)
TestCarelessBookkeeperInSlices.settings = settings(
    max_examples=60 if IN_CI else max(10, _PROFILE.max_examples // 4),
    stateful_step_count=20,
    derandomize=IN_CI,
)


# ------------------------------------------------------- engine bugs the machine found
# Each is the fewest steps that broke an invariant of CarelessBookkeeper, in plain pytest, with
# its members: hcp (memory, HCP's capabilities) and books (CSV files); fixed, kept as
# regression tests. (An open one gets a strict xfail here and a name in AVOID.)


def _books(tmp_path: Path, entities: tuple[str, ...] = ENTITIES) -> Config:
    return memory_config(
        tmp_path,
        {HCP: {**MEMBERS[HCP], "entities": list(entities)}, BOOKS: MEMBERS[BOOKS]},
        entities=entities,
        conflicts={"default": ["newest", BOOKS]},
        deletes={"propagate": True, "min_count": 1000},
    )


def _edit_csv(path: Path, change: Callable[[list[list[str]]], list[list[str]]]) -> None:
    sheet = SheetFile(path)
    sheet.save(change(sheet.load()))


def _paid_invoice(*amounts: int) -> None:
    """In HCP: Ann, her invoice 1001 (t2), and a cash payment of each amount (t3, t4, ...)."""
    ds().put(C, "t1", {"email": "ann@x.com"})
    ds().put(
        INV,
        "t2",
        {"invoice_number": "1001", "customer": "t1", "amount": 0, "status": "open"},
    )
    for n, amount in enumerate(amounts, start=3):
        ds().put(
            PAY,
            f"t{n}",
            {
                "invoice": "t2",
                "amount": amount,
                "method": "cash",
                "status": "succeeded",
                "paid_at": "2026-01-02T00:00:00Z",
            },
        )


def _lose_state(tmp_path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)


def test_a_lost_state_store_does_not_add_a_copy_of_a_row_copied_with_its_sync_id(
    tmp_path: Path,
) -> None:
    """Found by the machine: the bookkeeper copies a customer's row with its Sync ID (both
    rows are then reported: 'share Sync ID'), and the state store is lost. The next sync
    re-links the rows of the sheet by their Sync IDs, but rows in error are not read, so
    HCP's customer matches nothing and is created in the sheet a third time."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com", "first_name": "Ann"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]
    _edit_csv(customers, lambda rows: [*rows, list(rows[1])])
    _lose_state(tmp_path)
    api.sync(cfg)
    emails = [row[3] for row in SheetFile(customers).load()[1:]]
    assert emails == ["ann@x.com", "ann@x.com"]  # was: three rows of ann@x.com


def test_a_lost_state_store_does_not_add_a_copy_of_a_payment_row_copied_with_its_sync_id(
    tmp_path: Path,
) -> None:
    """Found by the machine: as above, for a payment, whose row names its invoice by number
    (compared with HCP's payment once that reference is resolved)."""
    cfg = _books(tmp_path)
    _paid_invoice(10001)
    assert api.sync(cfg)[0].exit_code == 0
    payments = tmp_path / "books" / FILES[PAY]
    _edit_csv(payments, lambda rows: [*rows, list(rows[1])])
    _lose_state(tmp_path)
    api.sync(cfg)
    amounts = [row[2] for row in SheetFile(payments).load()[1:]]
    assert amounts == ["100.01", "100.01"]  # was: three rows of 100.01


def test_a_payment_row_copied_with_its_sync_id_is_not_added_again_by_a_later_sync(
    tmp_path: Path,
) -> None:
    """Found by the machine: after the state store is lost, a payment row copied with its Sync
    ID is in error and HCP's payment waits for it; at the next sync the state holds links
    again (the other payment re-linked), and the waiting payment must still be compared with
    the rows in error, not added to the sheet a third time."""
    cfg = _books(tmp_path)
    _paid_invoice(10001, 10002)
    assert api.sync(cfg)[0].exit_code == 0
    payments = tmp_path / "books" / FILES[PAY]
    _edit_csv(payments, lambda rows: [*rows, list(rows[1])])
    _lose_state(tmp_path)
    for _ in range(2):
        assert api.sync(cfg)[0].exit_code == 1  # the rows sharing a Sync ID
    amounts = sorted(row[2] for row in SheetFile(payments).load()[1:])
    assert amounts == ["100.01", "100.01", "100.02"]  # was: a third row of 100.01


def test_a_lost_state_store_does_not_duplicate_a_payment_whose_date_column_is_gone(
    tmp_path: Path,
) -> None:
    """Found by the machine: the bookkeeper removes the Date column of the payments sheet
    (its dates are a field the sheet does not hold yet, never cleared values), and the state
    store is lost before a sync adds the column back. The sync re-links payments by invoice,
    amount, date and method; the sheet's payment has no date, so HCP's payment matches
    nothing and is added to the sheet a second time."""
    cfg = _books(tmp_path)
    _paid_invoice(10001)
    assert api.sync(cfg)[0].exit_code == 0
    payments = tmp_path / "books" / FILES[PAY]
    _edit_csv(payments, lambda rows: without_column(rows, "Date"))
    _lose_state(tmp_path)
    api.sync(cfg)
    amounts = [row[2] for row in SheetFile(payments).load()[1:]]
    assert amounts == ["100.01"]  # was: ['100.01', '100.01']


def test_a_lost_state_store_does_not_duplicate_a_payment_whose_method_changed(
    tmp_path: Path,
) -> None:
    """Found by the machine: the bookkeeper corrects a payment's method in the sheet (HCP
    takes no payment writes, so HCP keeps the old one), and later the state store is lost.
    Payments re-link only when invoice, amount, date *and method* agree, so HCP's payment
    matches nothing and is added to the sheet a second time, although invoice, amount and
    date name it alone. (The same when HCP's method changes after the last sync.)"""
    cfg = _books(tmp_path)
    _paid_invoice(10001)
    assert api.sync(cfg)[0].exit_code == 0
    payments = tmp_path / "books" / FILES[PAY]

    def check(rows: list[list[str]]) -> list[list[str]]:
        rows[1][rows[0].index("Method")] = "check"
        return rows

    _edit_csv(payments, check)
    assert api.sync(cfg)[0].exit_code == 0  # HCP cannot take it: only the sheet has it
    _lose_state(tmp_path)
    api.sync(cfg)
    header, *rows = SheetFile(payments).load()
    methods = [row[header.index("Method")] for row in rows]
    assert methods == ["check"]  # was: ['check', 'cash']


def test_two_new_rows_of_one_customer_are_not_two_customers_in_hcp(tmp_path: Path) -> None:
    """Found by the machine: the bookkeeper types a customer into the sheet and copies the
    row before any sync (or types the customer twice). Both rows are new, with one e-mail;
    match looks for a record with that e-mail among the hub's records and those new on the
    *other* members, not among the member's own new records, so each row becomes a customer
    and HCP holds two customers with one e-mail (exit 0, nothing reported). Two records new
    on one member with one match key are as ambiguous as two candidates: report them."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]

    def typed_twice(rows: list[list[str]]) -> list[list[str]]:
        row = [""] * len(rows[0])
        row[rows[0].index("Email")] = "bob@x.com"
        return [*rows, row, list(row)]

    _edit_csv(customers, typed_twice)
    api.sync(cfg)
    emails = sorted(str(r["email"]) for r in ds().table(C).values())
    assert emails == ["ann@x.com", "bob@x.com"]  # was: bob@x.com twice


# ------------------------------------------------------- found by a cold review, by hand


def test_a_customer_known_only_by_name_typed_twice_is_one_customer_in_hcp(
    tmp_path: Path,
) -> None:
    """No e-mail or phone to match by: the second row, identical to the first, is reported
    as a possible duplicate instead of becoming a second customer."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]

    def typed_twice(rows: list[list[str]]) -> list[list[str]]:
        row = [""] * len(rows[0])
        row[rows[0].index("First Name")] = "Otto"
        row[rows[0].index("Last Name")] = "Berg"
        return [*rows, row, list(row)]

    _edit_csv(customers, typed_twice)
    result = api.sync(cfg)[0]
    assert result.exit_code == 1
    [issue] = result.plan.entities[0].issues
    assert "holds exactly what customers.csv line 3 holds" in issue.describe()
    names = sorted(str(r.get("first_name")) for r in ds().table(C).values())
    assert names == ["None", "Otto"]


def test_a_payment_row_copied_without_its_sync_id_is_not_a_second_payment(
    tmp_path: Path,
) -> None:
    cfg = _books(tmp_path)
    _paid_invoice(10001)
    assert api.sync(cfg)[0].exit_code == 0
    payments = tmp_path / "books" / FILES[PAY]
    _edit_csv(payments, lambda rows: [*rows, ["", *rows[1][1:]]])
    for _ in range(2):
        result = api.sync(cfg)[0]
        assert result.exit_code == 1
        [issue] = [i for ep in result.plan.entities for i in ep.issues]
        # the original is named by its row, not by its Sync ID alone
        assert f"holds exactly what {FILES[PAY]} line 2 (Sync ID " in issue.message, issue
        assert "a possible duplicate, not synced" in issue.message
    rows = SheetFile(payments).load()
    assert [r[0] != "" for r in rows[1:]] == [True, False]  # the copy got no Sync ID


def test_two_customers_of_one_name_with_their_own_e_mails_are_never_taken_for_one(
    tmp_path: Path,
) -> None:
    """Found by the machine: two Ann Lees with their own e-mails; the state store is lost
    and one of them is deleted in HCP meanwhile. Re-linking by a full name must not pair
    the sheet's other Ann Lee with HCP's remaining one: their e-mails tell them apart. Each
    row re-links by its e-mail or is given back to HCP; nothing is reported."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann1@x.com", "first_name": "Ann", "last_name": "Lee"})
    ds().put(C, "t2", {"email": "ann2@x.com", "first_name": "Ann", "last_name": "Lee"})
    assert api.sync(cfg)[0].exit_code == 0
    _lose_state(tmp_path)
    ds().remove(C, "t1")
    result = api.sync(cfg)[0]
    assert [i.describe() for ep in result.plan.entities for i in ep.issues] == []
    emails = sorted(str(r["email"]) for r in ds().table(C).values())
    assert emails == ["ann1@x.com", "ann2@x.com"]  # a lost state only re-links: t1 is back


def test_a_lost_state_store_with_the_email_column_renamed_duplicates_no_customer(
    tmp_path: Path,
) -> None:
    """Found by the machine: the bookkeeper renames the Email column, and the state store
    is lost before a sync adds it back. The sheet's customers (no name, no address) can only
    be re-linked by their e-mails, which the sync does not read from the renamed column: HCP's
    customers were added to the sheet a second time. Now nothing new is synced for the
    entity, reported ("rename the column back to Email"), until the column is back; then
    the rows re-link."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com"})
    ds().put(C, "t2", {"email": "bob@x.com"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]
    _edit_csv(customers, lambda rows: [["Mail" if c == "Email" else c for c in rows[0]], *rows[1:]])
    _lose_state(tmp_path)
    for _ in range(2):
        result = api.sync(cfg)[0]
        assert result.exit_code == 1
        issues = [i.describe() for ep in result.plan.entities for i in ep.issues]
        assert len(issues) == 2, issues
        assert issues[0].startswith("books customers.csv: column Email is missing")
        assert "2 customers here not linked yet" in issues[0]
        assert "Rename the column back to Email" in issues[0]
        assert issues[1] == (
            "hcp: 2 new customers wait for the missing column Email of customers.csv (see "
            "that error): customers are matched by it"
        )
        assert len(SheetFile(customers).load()) == 3  # was: 5, HCP's two customers added again
        assert len(ds().table(C)) == 2
    _edit_csv(customers, lambda rows: [["Email" if c == "Mail" else c for c in rows[0]], *rows[1:]])
    assert api.sync(cfg)[0].exit_code == 0
    emails = sorted(row[3] for row in SheetFile(customers).load()[1:])
    assert emails == ["ann@x.com", "bob@x.com"]
    assert len(ds().table(C)) == 2
    assert api.sync(cfg)[0].plan.actions == []  # re-linked: nothing left to do


def test_an_invoice_of_a_customer_waiting_for_its_match_column_says_so_and_syncs_after(
    tmp_path: Path,
) -> None:
    """The same hold, with an invoice of the waiting customer on each side. Both invoices
    were reported as pointing at no customer ("fix the cell", where the cell is right). Now
    they say that new customers wait for the column and this may be one of them; once the
    column is back, both sides sync, one invoice each, of the one customer."""
    cfg = _books(tmp_path, (C, INV))
    ds().put(C, "t1", {"email": "ann@x.com"})
    invoice = {"invoice_number": "1001", "customer": "t1", "amount": 0, "status": "open"}
    ds().put(INV, "t2", invoice)
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]
    _edit_csv(customers, lambda rows: [["Mail" if c == "Email" else c for c in rows[0]], *rows[1:]])
    _lose_state(tmp_path)
    ds().put(INV, "t5", {**invoice, "invoice_number": "1005", "customer": "t99"})  # no t99
    result = api.sync(cfg)[0]
    assert result.exit_code == 1
    waits = (
        "yet: new customers wait for the missing column Email of customers.csv (see that "
        "error), and this may be one of them; it syncs once the column is back"
    )
    issues = sorted(i.describe() for i in result.plan.entities[1].issues)
    assert issues == [
        "books invoices.csv line 2: Customer Email 'ann@x.com': no customer has email or "
        f"mobile_number 'ann@x.com' {waits}",
        f"hcp invoices t2: customer 't1': no customer with that id is synced {waits}",
        "hcp invoices t5: customer 't99': no customer with that id is synced (the customer "
        "must sync first; see errors above, if any)",  # not one that waits
    ]
    del ds().table(INV)["t5"]
    _edit_csv(customers, lambda rows: [["Email" if c == "Mail" else c for c in rows[0]], *rows[1:]])
    assert api.sync(cfg)[0].exit_code == 0
    assert len(ds().table(C)) == 1 and len(ds().table(INV)) == 1
    assert len(SheetFile(tmp_path / "books" / FILES[INV]).load()) == 2
    assert api.sync(cfg)[0].plan.actions == []


def test_a_third_member_referring_by_a_hidden_value_is_told_it_may_wait(
    tmp_path: Path,
) -> None:
    """Found by review: with a second books folder beside, Bob, typed into the first books'
    customers after Email was renamed and the state lost, waits; books2's invoice 2002 of
    bob@x.com was told to fix its cell, though the value can only be in the renamed column.
    A value of a key whose column is missing may be any waiting row's: it says so, and
    syncs once the column is back."""
    members = {
        **{n: MEMBERS[n] for n in (HCP, BOOKS)},
        "books2": {"type": "spreadsheet", "path": "books2"},
    }
    members[HCP] = {**members[HCP], "entities": [C, INV]}
    cfg = memory_config(tmp_path, members, entities=(C, INV))
    ds().put(C, "t1", {"email": "ann@x.com"})
    ds().put(INV, "t2", {"invoice_number": "1001", "customer": "t1", "amount": 0, "status": "open"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]

    def bob(rows: list[list[str]]) -> list[list[str]]:
        typed = {"Email": "bob@x.com", "First Name": "Bob"}
        return [
            ["Mail" if c == "Email" else c for c in rows[0]],
            *rows[1:],
            [typed.get(c, "") for c in rows[0]],
        ]

    _edit_csv(customers, bob)
    invoices = tmp_path / "books2" / FILES[INV]
    typed = {"Invoice #": "2002", "Customer Email": "bob@x.com", "Amount": "5"}
    _edit_csv(invoices, lambda rows: [*rows, [typed.get(c, "") for c in rows[0]]])
    _lose_state(tmp_path)
    result = api.sync(cfg)[0]
    assert result.exit_code == 1
    told = [i.describe() for i in result.plan.entities[1].issues if "bob@x.com" in i.message]
    assert told == [
        "books2 invoices.csv line 3: Customer Email 'bob@x.com': no customer has email or "
        "mobile_number 'bob@x.com' yet: new customers wait for the missing column Email of "
        "customers.csv (see that error), and this may be one of them; it syncs once the "
        "column is back"
    ]
    _edit_csv(customers, lambda rows: [["Email" if c == "Mail" else c for c in rows[0]], *rows[1:]])
    assert api.sync(cfg)[0].exit_code == 0
    assert sorted(i["invoice_number"] for i in ds().table(INV).values()) == ["1001", "2002"]


def test_a_column_added_back_while_rows_share_a_sync_id_is_filled_once_they_are_fixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the machine with random draws (dev profile; CI's fixed examples do not meet
    it): invoice 1001's row is copied with its Sync ID, and the Customer Email column renamed.
    The sync adds Customer Email back and fills it on every row but the two sharing a Sync ID
    (both are errors, not written). Once the bookkeeper deletes the copy, 1001's new cell is
    blank: the next syncs read that as the customer cleared, and the row was left referring
    to no customer (``dangles``). Now a cell the sync added and could not fill yet is filled
    when the row can be written, not read as the bookkeeper's edit (the failing example,
    replayed; ``reconcile._forget_unheld``)."""
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *_a, **_k: None)
    machine = CarelessBookkeeper()
    try:
        # two customers (HCP gives them e-mails), two open invoices of the first, no payment
        customers = [2, *[None] * 12]
        invoices = [2, "t1", 0, "open", "2026-01-02", "t1", 0, "open", "2026-01-02"]
        machine.books_in_use(Drawn(*customers, *invoices, 0))
        machine.bookkeeper(Drawn("copy a row with its Sync ID", "invoices", 0, False))
        machine.bookkeeper(Drawn("rename a mapped column", "invoices", "Customer Email"))
        machine.sync()
        machine.fix_and_converge()  # was: invoices.csv: [... '1001', ...] dangles
    finally:
        machine.teardown()


def test_a_row_in_error_when_its_column_comes_back_gets_the_value_once_fixed(
    tmp_path: Path,
) -> None:
    """The same, in plain steps: invoice 1001's row is copied with its Sync ID and the
    Customer Email column renamed. The sync adds the column back, blank on the two rows in
    error (it is filled on invoice 1002's); once the copy is deleted, the blank is filled from
    HCP, and HCP keeps the customer (it was: the next syncs read the blank as the
    bookkeeper's clearing)."""
    cfg = _books(tmp_path, (C, INV))
    ds().put(C, "t1", {"email": "ann@x.com"})
    for token, number in (("t2", "1001"), ("t3", "1002")):
        invoice = {"invoice_number": number, "customer": "t1", "amount": 0, "status": "open"}
        ds().put(INV, token, invoice)
    assert api.sync(cfg)[0].exit_code == 0
    invoices = tmp_path / "books" / FILES[INV]
    _edit_csv(
        invoices,
        lambda rows: [
            ["Client Mail" if c == "Customer Email" else c for c in rows[0]],
            *rows[1:],
            list(rows[1]),
        ],
    )  # 1001, 1002, the copy of 1001
    assert api.sync(cfg)[0].exit_code == 1  # the two rows sharing a Sync ID
    header, *rows = SheetFile(invoices).load()
    email = header.index("Customer Email")
    assert [row[email] for row in rows] == ["", "ann@x.com", ""]  # not on the rows in error
    _edit_csv(invoices, lambda rows: rows[:-1])  # the copy deleted
    for _ in range(2):
        assert api.sync(cfg)[0].exit_code == 0
    header, *rows = SheetFile(invoices).load()
    assert [row[header.index("Customer Email")] for row in rows] == ["ann@x.com"] * 2
    assert [ds().table(INV)[t]["customer"] for t in ("t2", "t3")] == ["t1", "t1"]


def test_old_values_put_back_under_a_column_forgotten_on_rows_in_error_are_no_edit(
    tmp_path: Path,
) -> None:
    """Ann's row is copied with its Sync ID (both rows in error) while Company is renamed to
    Firm; HCP changes her company meanwhile. The bookkeeper deletes the copy and renames
    Firm back: 'Acme' is what the sheet held before, not an edit, so HCP's 'NewCo' reaches
    the sheet (a cold review found the first fix taking 'Acme' for the sheet's change: HCP
    and the sheet then disagreed for good, silently)."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com", "first_name": "Ann", "company": "Acme"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]
    _edit_csv(
        customers,
        lambda rows: [["Firm" if c == "Company" else c for c in rows[0]], *rows[1:], rows[1]],
    )
    assert api.sync(cfg)[0].exit_code == 1  # the rows sharing a Sync ID
    ds().edit(C, "t1", company="NewCo")
    assert api.sync(cfg)[0].exit_code == 1

    def fix(rows: list[list[str]]) -> list[list[str]]:
        header = ["Company" if c == "Firm" else c for c in rows[0]]
        ann = list(rows[1])
        ann[header.index("Last Name")] = "Lee"  # and types her last name while there
        return [header, ann]

    _edit_csv(customers, fix)
    result = api.sync(cfg)[0]
    assert result.exit_code == 0 and result.open_conflicts == 0
    header, *rows = SheetFile(customers).load()
    assert [row[header.index("Company")] for row in rows] == ["NewCo"]
    assert [ds().table(C)["t1"][f] for f in ("company", "last_name")] == ["NewCo", "Lee"]
    assert api.sync(cfg)[0].plan.actions == []


def _rename_email_and_type_dee(
    email: str = "", mobile: str = ""
) -> Callable[[list[list[str]]], list[list[str]]]:
    """An edit of the customers sheet: Email renamed to E-mail, and Dee typed in a new row
    with ``email`` in the renamed column and ``mobile``."""

    def edit(rows: list[list[str]]) -> list[list[str]]:
        header = ["E-mail" if c == "Email" else c for c in rows[0]]
        dee = [""] * len(header)
        dee[header.index("First Name")] = "Dee"
        dee[header.index("E-mail")] = email
        dee[header.index("Mobile")] = mobile
        return [header, *rows[1:], dee]

    return edit


def _email_renamed_back(rows: list[list[str]]) -> list[list[str]]:
    return [["Email" if c == "E-mail" else c for c in rows[0]], *rows[1:]]


def test_a_renamed_e_mail_column_holds_a_customer_typed_on_both_sides_until_it_is_back(
    tmp_path: Path,
) -> None:
    """No lost state: the bookkeeper renames Email to E-mail and types Dee there; HCP gets
    Dee too. Both wait, every run (the sync does not add Email back itself: a blank it
    wrote on Dee's row would later read as 'no e-mail', and Dee would be added twice); once
    the column is renamed back, Dee is one customer (a cold review found her added twice on
    the second run)."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com", "first_name": "Ann"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]

    _edit_csv(customers, _rename_email_and_type_dee("dee@x.com"))
    ds().put(C, "t9", {"email": "dee@x.com", "first_name": "Dee"})
    for _ in range(2):
        assert api.sync(cfg)[0].exit_code == 1
        header, *rows = SheetFile(customers).load()
        assert "Email" not in header and len(rows) == 2
        assert len(ds().table(C)) == 2
    _edit_csv(customers, _email_renamed_back)
    assert api.sync(cfg)[0].exit_code == 0
    header, *rows = SheetFile(customers).load()
    assert sorted(row[header.index("Email")] for row in rows) == ["ann@x.com", "dee@x.com"]
    assert sorted(r["email"] for r in ds().table(C).values()) == ["ann@x.com", "dee@x.com"]


def test_a_lost_state_store_with_email_renamed_re_links_by_name_and_reports_nothing(
    tmp_path: Path,
) -> None:
    """The customers have names, so a lost state store re-links every row by name even with
    Email renamed: nothing waits, and nothing is reported (a cold review found an error
    saying '0 customers ... wait')."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com", "first_name": "Ann", "last_name": "Lee"})
    ds().put(C, "t2", {"email": "bob@x.com", "first_name": "Bob", "last_name": "Ng"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]
    _edit_csv(customers, lambda rows: [["Mail" if c == "Email" else c for c in rows[0]], *rows[1:]])
    _lose_state(tmp_path)
    result = api.sync(cfg)[0]
    assert result.exit_code == 0
    assert [i.describe() for ep in result.plan.entities for i in ep.issues] == []
    assert len(SheetFile(customers).load()) == 3 and len(ds().table(C)) == 2


def test_an_hcp_edit_while_rows_wait_for_the_email_column_reaches_the_sheet(
    tmp_path: Path,
) -> None:
    """The Email column is renamed and a new row shows no e-mail, so new customers wait
    (HCP has one new too). Meanwhile the office changes Ann's e-mail in HCP. Once the
    bookkeeper renames the column back, Ann's old e-mail there is what the sheet held, not
    its edit: HCP's new one reaches the sheet (a cold review found HCP's edit reverted)."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com", "first_name": "Ann"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]

    _edit_csv(customers, _rename_email_and_type_dee())
    ds().put(C, "t2", {"email": "eve@x.com", "first_name": "Eve"})
    assert api.sync(cfg)[0].exit_code == 1  # Dee and Eve wait
    ds().edit(C, "t1", email="ann.new@x.com", first_name="Anne")
    assert api.sync(cfg)[0].exit_code == 1
    _edit_csv(customers, _email_renamed_back)
    assert api.sync(cfg)[0].exit_code == 0
    header, *rows = SheetFile(customers).load()
    emails = {row[header.index("First Name")]: row[header.index("Email")] for row in rows}
    assert emails == {"Anne": "ann.new@x.com", "Dee": "", "Eve": "eve@x.com"}
    assert ds().table(C)["t1"]["email"] == "ann.new@x.com"
    assert api.sync(cfg)[0].plan.actions == []


def test_a_new_row_showing_a_mobile_still_waits_for_its_missing_email_column(
    tmp_path: Path,
) -> None:
    """Dee's new row shows her mobile, and her e-mail sits in the renamed column; the
    office typed Dee into HCP with her e-mail only. Had the column been there they would
    pair by e-mail, so both wait, and are one customer once it is back (a cold review found
    two Dees on each side)."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "ann@x.com", "first_name": "Ann"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]

    _edit_csv(customers, _rename_email_and_type_dee("dee@x.com", "555-0102"))
    ds().put(C, "t9", {"email": "dee@x.com", "first_name": "Dee"})
    assert api.sync(cfg)[0].exit_code == 1
    assert len(SheetFile(customers).load()) == 3 and len(ds().table(C)) == 2
    _edit_csv(customers, _email_renamed_back)
    assert api.sync(cfg)[0].exit_code == 0
    assert len(SheetFile(customers).load()) == 3 and len(ds().table(C)) == 2
    assert ds().table(C)["t9"]["mobile_number"] == "+15550102"


def test_rows_a_lost_state_store_re_links_by_name_do_not_make_the_sheet_blind(
    tmp_path: Path,
) -> None:
    """Lost state, Email renamed: the sheet's only row re-links by name, and HCP's Dan
    (never on the sheet) is added to it. Nothing waits: no row of the sheet is left that
    Dan could be (a cold review found an error saying '0 customers here ... wait')."""
    cfg = _books(tmp_path, (C,))
    ds().put(C, "t1", {"email": "cy@x.com", "first_name": "Cy", "last_name": "Ng"})
    assert api.sync(cfg)[0].exit_code == 0
    customers = tmp_path / "books" / FILES[C]
    _edit_csv(customers, lambda rows: [["Mail" if c == "Email" else c for c in rows[0]], *rows[1:]])
    _lose_state(tmp_path)
    ds().put(C, "t2", {"email": "dan@x.com", "first_name": "Dan", "last_name": "Oh"})
    result = api.sync(cfg)[0]
    assert result.exit_code == 0
    assert [i.describe() for ep in result.plan.entities for i in ep.issues] == []
    assert len(SheetFile(customers).load()) == 3 and len(ds().table(C)) == 2


def test_a_payment_is_named_by_the_day_its_row_in_the_books_shows(tmp_path: Path) -> None:
    # the books keep Chicago's days: a payment made at 9 pm there on New Year's Day is "on
    # 2026-01-01" in its messages too, as in its row, not on UTC's 2026-01-02
    cfg = memory_config(
        tmp_path,
        {
            HCP: {**MEMBERS[HCP], "entities": list(ENTITIES)},
            BOOKS: {**MEMBERS[BOOKS], "timezone": "America/Chicago"},
        },
        entities=ENTITIES,
    )
    _paid_invoice(15_732)
    ds().edit(PAY, "t3", paid_at="2026-01-02T03:00:00Z")
    [result] = api.sync(cfg, dry_run=True)
    [payments] = [ep for ep in result.plan.entities if ep.entity == PAY]
    [label] = [kp.label for kp in payments.keys]
    assert label.startswith("$157.32 on 2026-01-01 ("), label


def test_a_payment_moved_to_another_invoice_names_both_invoices_in_its_details(
    tmp_path: Path,
) -> None:
    # HCP cannot take the move (skipped): what stays different is shown with the invoices'
    # numbers in a real run's details too, as a dry run shows them, never as hub keys
    cfg = _books(tmp_path)
    _paid_invoice(10001)
    ds().put(INV, "t9", {"invoice_number": "1002", "customer": "t1", "amount": 0, "status": "open"})
    assert api.sync(cfg)[0].exit_code == 0
    payments = tmp_path / "books" / FILES[PAY]

    def move(rows: list[list[str]]) -> list[list[str]]:
        column = rows[0].index(REF_COLUMN[PAY])
        return [rows[0], *([*r[:column], "1002", *r[column + 1 :]] for r in rows[1:])]

    _edit_csv(payments, move)
    [result] = api.sync(cfg)
    [ep] = [ep for ep in result.plan.entities if ep.entity == PAY]
    [skip] = [s for kp in ep.keys for s in kp.reported_skips]
    old, new = skip.changes["invoice"]
    assert (ep.ref_labels[old], ep.ref_labels[new]) == ("invoice 1001", "invoice 1002")
