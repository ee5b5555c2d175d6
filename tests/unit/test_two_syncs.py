"""Two runs of one pipeline at once, in-process: every sync holds the pipeline's lease.

A first sync is held inside its apply at a known call (a memory member's write hook waits on
an event), so the second one meets it at a known point: no sleeps, no timing. Runs on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from syncengine import api
from syncengine.config import Config
from syncengine.connectors.memory import MemoryConnector
from syncengine.daemon import Daemon
from syncengine.engine import Engine, SyncResult
from syncengine.errors import PipelineBusyError, StateIntegrityError, UnavailableError
from syncengine.exit_codes import ExitCode, failed_run_code
from syncengine.leasing import hold_pipelines
from syncengine.recovery import recover
from syncengine.state import StateStore
from tests.helpers import memory_config

CUSTOMERS = 3
THIS_RUN = f"sync by pid {os.getpid()} on host {socket.gethostname()}, started "


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:///state.db"
    return str(request.getfixturevalue("pg_url"))


def seed_hcp() -> None:
    hcp = MemoryConnector.get_dataset("hcp")
    for n in range(1, CUSTOMERS + 1):
        hcp.put("customers", f"c{n}", {"first_name": f"N{n}", "email": f"n{n}@example.com"})


@pytest.fixture
def config(tmp_path: Path, state_url: str) -> Config:
    seed_hcp()
    return memory_config(tmp_path, {"hcp": {}, "books": {}}, state=state_url)


@pytest.fixture
def store(config: Config) -> Iterator[StateStore]:
    opened = api.open_store(config)
    yield opened
    opened.close()


class Gate:
    """Holds a sync at its first ``op`` on a memory member until ``release()``: ``reached``
    is set once the sync waits there (its batch's intents are journalled by then)."""

    def __init__(self, op: str = "create") -> None:
        self.op = op
        self.reached = threading.Event()
        self._open = threading.Event()

    def hook(self, op: str, entity: str, ref: str) -> bool:
        if op == self.op and not self.reached.is_set():
            self.reached.set()
            if not self._open.wait(120):
                raise RuntimeError("the gate was never opened")
        return False  # the write goes ahead

    def release(self) -> None:
        self._open.set()


class Background:
    """``api.sync`` in a thread: its results, or what it raised."""

    def __init__(self, config: Config, **options: Any) -> None:
        self.results: list[SyncResult] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(config, options), daemon=True)
        self._thread.start()

    def _run(self, config: Config, options: dict[str, Any]) -> None:
        try:
            self.results = api.sync(config, **options)
        except BaseException as exc:
            self.error = exc

    def join(self) -> SyncResult:
        self._thread.join(120)
        assert not self._thread.is_alive(), "the sync never finished"
        assert self.error is None, repr(self.error)
        [result] = self.results
        return result


def held_sync(config: Config, gate: Gate) -> Background:
    """A sync held at the gate (the call returns once it waits there)."""
    run = Background(config, connector_extra={"books": {"fail_write": gate.hook}})
    assert gate.reached.wait(120), f"the first sync never reached the gate: {run.error!r}"
    return run


def books() -> dict[str, Any]:
    return dict(MemoryConnector.get_dataset("books").table("customers"))


def emails(table: dict[str, Any]) -> list[str]:
    return sorted(str(r["email"]) for r in table.values())


def assert_converged(config: Config) -> None:
    """No customer twice on either member, and a sync after that has nothing to do."""
    want = [f"n{n}@example.com" for n in range(1, CUSTOMERS + 1)]
    assert emails(books()) == want
    assert emails(MemoryConnector.get_dataset("hcp").table("customers")) == want
    [again] = api.sync(config)
    assert again.exit_code == 0 and again.plan.actions == [], again.to_json()


@pytest.mark.whole_first_sync
def test_a_sync_holding_the_lease_makes_a_second_refuse_naming_it(
    config: Config, store: StateStore
) -> None:
    gate = Gate()
    first = held_sync(config, gate)
    lease = store.live_lease("p")
    assert lease is not None and lease.kind == "sync" and lease.acquired_at is not None
    assert (lease.expires_at - lease.acquired_at).total_seconds() >= config.daemon.lease_ttl - 1
    pending = store.pending_intents("p")
    assert len(pending) == CUSTOMERS and {i.holder for i in pending} == {lease.holder}
    runs = store.runs("p")

    for dry_run in (False, True):
        with pytest.raises(PipelineBusyError) as refused:
            api.sync(config, dry_run=dry_run)
        assert str(refused.value).startswith(f"pipeline p is busy: a {THIS_RUN}")
        assert "nothing was read or written" in str(refused.value)
        assert failed_run_code(refused.value) == ExitCode.UNAVAILABLE
    # nothing done: no run recorded, the first run's intents untouched, nothing written
    assert store.runs("p") == runs
    assert store.pending_intents("p") == pending
    assert books() == {}

    gate.release()
    result = first.join()
    assert result.exit_code == 0, result.to_json()
    assert "p" not in store.leases()  # released at the end
    assert_converged(config)


def test_wait_runs_the_second_sync_once_the_first_releases(
    config: Config, store: StateStore
) -> None:
    gate = Gate()
    first = held_sync(config, gate)
    told: list[str] = []
    waiting = threading.Event()

    def on_wait(text: str) -> None:
        told.append(text)
        waiting.set()

    second = Background(config, wait=300, waiting=on_wait)
    assert waiting.wait(120), f"the second sync never waited: {second.error!r}"
    assert len(told) == 1 and told[0].startswith(f"pipeline p is busy: a {THIS_RUN}")
    assert told[0].endswith("holds its lease; waiting up to 300 s for it")

    gate.release()
    done = first.join()
    after = second.join()
    assert done.exit_code == 0 and after.exit_code == 0, (done.to_json(), after.to_json())
    assert after.plan.actions == [] and after.pending_recovery == 0  # the first did it all
    newest, older = store.runs("p", limit=2)
    assert newest.run_uuid == after.run_id and older.run_uuid == done.run_id
    assert older.finished_at is not None and newest.started_at >= older.finished_at
    assert_converged(config)


def test_a_wait_that_runs_out_refuses_naming_the_holder(config: Config, store: StateStore) -> None:
    with hold_pipelines(store, ["p"], ttl=60, kind="daemon"):
        with pytest.raises(PipelineBusyError, match=r"after waiting 0\.3 s: a daemon run by"):
            api.sync(config, wait=0.3)
        assert "p" in store.leases()
    assert store.runs("p") == [] and books() == {}


def test_a_lease_left_by_a_killed_process_of_this_host_says_so(
    config: Config, store: StateStore
) -> None:
    """A sync SIGKILLed on this machine leaves its lease until the ttl: the refusal says the
    holder no longer runs and how long to wait, instead of 'run it again when it is done'."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = f"{socket.gethostname()}:{child.stdout.strip()}:feedbeef"
    with store.transaction() as tx:
        assert tx.acquire_lease("p", dead, 60, "sync")
    with pytest.raises(PipelineBusyError) as refused:
        api.sync(config)
    said = str(refused.value)
    assert f"sync by pid {child.stdout.strip()} on host {socket.gethostname()}" in said
    assert "that process is no longer running (killed?); its lease expires by itself in " in said
    assert "run it again when that run is done" not in said
    assert store.runs("p") == [] and books() == {}
    [shown] = api.status(config)
    assert shown.lease is not None and shown.lease["gone"] is True


@pytest.mark.whole_first_sync
def test_the_intents_of_a_live_run_are_not_recovered_by_another(
    config: Config, store: StateStore
) -> None:
    gate = Gate()
    first = held_sync(config, gate)
    pending = store.pending_intents("p")
    assert len(pending) == CUSTOMERS
    [pipeline] = config.pipeline(None)
    connectors = {m: config.make_connector(m) for m in pipeline.members}
    for holder in (None, "otherhost:77:beef"):  # a run without a lease, or with another
        recovery = recover(store, pipeline, connectors, None, dry_run=False, holder=holder)
        assert recovery.pending == 0 and recovery.written == {}
    # an engine given no lease refuses to write while the lease holds; its dry run reads
    # no hints from the live run's intents
    with pytest.raises(PipelineBusyError):
        Engine(config, store).sync(pipeline)
    assert Engine(config, store, dry_run=True).sync(pipeline).pending_recovery == 0
    assert store.pending_intents("p") == pending

    gate.release()
    assert first.join().exit_code == 0
    assert store.pending_intents("p") == []
    assert_converged(config)


class Crash(BaseException):
    """A run dying mid-write (like a kill: nothing of the engine handles it)."""


@pytest.mark.parametrize("gone", ["expired", "released"])
@pytest.mark.whole_first_sync
def test_the_intents_of_a_dead_run_are_recovered_once_its_lease_is_gone(
    config: Config, store: StateStore, gone: str
) -> None:
    dead = "deadhost:99:dead"
    with store.transaction() as tx:
        assert tx.acquire_lease("p", dead, 60, "sync")
    creates = 0

    def crash_at_second_create(op: str, entity: str, ref: str) -> bool:
        nonlocal creates
        creates += 1
        if creates == 2:
            raise Crash()
        return False

    [pipeline] = config.pipeline(None)
    engine = Engine(
        config,
        store,
        holder=dead,
        connector_extra={"books": {"fail_write": crash_at_second_create}},
    )
    with pytest.raises(Crash):
        engine.sync(pipeline)
    pending = store.pending_intents("p")
    assert len(pending) == CUSTOMERS and {i.holder for i in pending} == {dead}
    assert len(books()) == 1  # the first create reached the member

    # while the dead run's lease holds, nobody touches its intents
    with pytest.raises(PipelineBusyError, match="a sync by pid 99 on host deadhost"):
        api.sync(config)
    assert store.pending_intents("p") == pending

    with store.transaction() as tx:
        if gone == "expired":  # a crashed holder's lease runs out
            assert tx.acquire_lease("p", dead, -1, "sync")
        else:
            assert tx.release_lease("p", dead)
    [result] = api.sync(config)
    assert result.exit_code == 0 and result.pending_recovery == CUSTOMERS, result.to_json()
    assert store.pending_intents("p") == []
    assert_converged(config)


@pytest.mark.whole_first_sync
def test_the_lease_is_released_when_a_sync_fails_or_is_interrupted(
    config: Config, store: StateStore
) -> None:
    def interrupt(op: str, entity: str, ref: str) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.sync(config, connector_extra={"books": {"fail_write": interrupt}})
    assert "p" not in store.leases()
    [result] = api.sync(config)  # and the next sync recovers what it left
    assert result.exit_code == 0 and result.pending_recovery == CUSTOMERS
    assert_converged(config)


def test_a_manual_sync_keeps_its_lease_renewed(store: StateStore) -> None:
    with hold_pipelines(store, ["p"], ttl=0.9) as held:
        first = store.live_lease("p")
        assert first is not None and first.holder == held.holder
        for _ in range(600):  # the keeper renews every ttl/3: wait for it, without a deadline
            now = store.live_lease("p")
            assert now is not None, "the lease ran out while its run was still going"
            if now.expires_at > first.expires_at:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the lease was never renewed")
    assert "p" not in store.leases()


@pytest.mark.whole_first_sync
def test_a_lost_lease_stops_a_manual_sync_as_unavailable(tmp_path: Path, state_url: str) -> None:
    seed_hcp()
    both = ["customers", "invoices"]
    config = memory_config(
        tmp_path,
        {"hcp": {"entities": both}, "books": {"entities": both}},
        entities=("customers", "invoices"),
        state=state_url,
    )
    [pipeline] = config.pipeline(None)
    with api.open_store(config) as store, hold_pipelines(store, ["p"], ttl=60) as held:

        def lose_the_lease(op: str, entity: str, ref: str) -> bool:
            if not held.run("p").lost:  # it ran out, another run took it, the keeper sees it
                with store.transaction() as tx:
                    assert tx.release_lease("p", held.holder)
                    assert tx.acquire_lease("p", "thief:3:cccc", 60, "daemon")
                held.keeper.renew()
            return False

        engine = Engine(
            config,
            store,
            stop=held.run("p").stop,
            holder=held.holder,
            connector_extra={"books": {"fail_write": lose_the_lease}},
        )
        with pytest.raises(UnavailableError, match="its lease was taken over by another run"):
            held.run_sync("p", lambda: engine.sync(pipeline))
        assert store.runs("p")[0].outcome == "stopped"
    # the batch in flight was committed; the thief's lease is not released by the loser
    assert emails(books()) == [f"n{n}@example.com" for n in range(1, CUSTOMERS + 1)]
    with api.open_store(config) as store:
        assert store.leases()["p"].holder == "thief:3:cccc"


def test_the_daemon_skips_a_pipeline_a_manual_sync_holds(config: Config, store: StateStore) -> None:
    with hold_pipelines(store, ["p"], ttl=60):
        out = Daemon(config, store).run_pipeline("p")
    assert out.outcome == "skipped:lease_held"
    assert books() == {} and store.runs("p") == []


def test_a_state_store_integrity_error_is_exit_4_never_a_configuration_error(
    store: StateStore,
) -> None:
    from syncengine.cli import handled

    with pytest.raises(StateIntegrityError) as refused, store.transaction() as tx:
        tx.put_record("p", "customers", "k1", {})
        tx.put_record("p", "customers", "k2", {})
        tx.put_link("p", "customers", "k1", "hcp", native_id="c1", native_hash=None, last_seen=None)
        tx.put_link("p", "customers", "k2", "hcp", native_id="c1", native_hash=None, last_seen=None)
    assert "refused a write that contradicts what it holds" in str(refused.value)
    assert failed_run_code(refused.value) == ExitCode.UNAVAILABLE
    with pytest.raises(typer.Exit) as exited, handled():
        raise refused.value
    assert exited.value.exit_code == ExitCode.UNAVAILABLE


def test_intents_journalled_before_the_migration_are_recovered_by_the_lease_holder(
    config: Config, store: StateStore
) -> None:
    import sqlalchemy as sa
    from alembic import command

    from syncengine.state.store import alembic_config

    with store.engine.connect() as conn:  # a store as the previous version left it
        command.downgrade(alembic_config(conn), "0003")
        conn.execute(
            sa.text(
                "INSERT INTO journal (run_id, pipeline, entity, key, member, op, payload, state,"
                " created_at) VALUES ('old-run', 'p', 'customers', 'k1', 'books', 'delete',"
                " '{\"native_id\": \"gone\"}', 'pending', :at)"
            ),
            {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
        )
        conn.commit()
    with api.open_store(config) as migrated:
        [intent] = migrated.pending_intents("p")
        assert intent.run_id == "old-run" and intent.holder is None
        [pipeline] = config.pipeline(None)
        with hold_pipelines(migrated, ["p"], ttl=60) as held:
            recovery = recover(migrated, pipeline, {}, None, dry_run=False, holder=held.holder)
        assert recovery.pending == 1 and migrated.pending_intents("p") == []
