"""The webhook inbox in the state store (SQLite and PostgreSQL), the pure decisions about
events (``syncengine.events``), and the dispatcher's debounce (``syncengine.daemon.dispatch``)
with a clock the test moves."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncengine.config import Config, load_config
from syncengine.daemon.dispatch import EventDispatch
from syncengine.daemon.policy import RunOutcome
from syncengine.events import Events, InboxEvent, entities_named, pipelines_of
from syncengine.state import StateStore


def store_one(
    store: StateStore,
    digest: str,
    connector: str = "hcp",
    entities: tuple[str, ...] = ("customers",),
) -> int | None:
    with store.transaction() as tx:
        return tx.store_event(
            connector=connector,
            digest=digest,
            event="customer.updated",
            entities=entities,
            record_id="cus_1",
            payload={"event": "customer.updated", "customer": {"id": "cus_1"}},
            occurred_at=None,
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    s = StateStore.open(url)
    yield s
    s.close()


def test_an_event_body_is_stored_once_per_connector(store: StateStore) -> None:
    first = store_one(store, "d1")
    assert first is not None
    assert store_one(store, "d1") is None  # a redelivery
    assert store_one(store, "d1", connector="other") is not None  # another company's webhook
    assert store.inbox_count() == 2 and store.inbox_count("hcp") == 1


def test_each_pipeline_takes_an_event_once(store: StateStore) -> None:
    ids = [store_one(store, f"d{i}") for i in range(3)]
    assert [e.id for e in store.pending_events("a", ["hcp", "books"])] == ids
    with store.transaction() as tx:
        tx.events_done("a", [i for i in ids[:2] if i is not None], "run-1")
        tx.events_done("a", [i for i in ids[:2] if i is not None], "run-2")  # no error, no change
    assert [e.id for e in store.pending_events("a", ["hcp"])] == ids[2:]
    assert [e.id for e in store.pending_events("b", ["hcp"])] == ids  # b's runs took none
    assert store.pending_event_count("a", ["hcp"]) == 1
    assert store.pending_events("a", ["books"]) == []
    event = store.pending_events("a", ["hcp"])[0]
    assert event.entities == ("customers",) and event.record_id == "cus_1"
    assert event.payload["customer"] == {"id": "cus_1"} and event.received_at > 0


def test_pruning_keeps_what_a_pipeline_has_not_taken(store: StateStore) -> None:
    taken_by_all, taken_by_one = store_one(store, "x"), store_one(store, "y")
    assert taken_by_all is not None and taken_by_one is not None
    with store.transaction() as tx:
        tx.events_done("a", [taken_by_all, taken_by_one], "r")
        tx.events_done("b", [taken_by_all], "r")
    now = dt.datetime.now(dt.UTC)
    long_ago = now - dt.timedelta(days=90)
    with store.transaction() as tx:
        assert tx.prune_inbox({"hcp": ["a", "b"]}, done_before=now, any_before=long_ago) == 1
    assert [e.id for e in store.pending_events("b", ["hcp"])] == [taken_by_one]
    later = now + dt.timedelta(seconds=1)
    with store.transaction() as tx:  # past the cutoff, whatever took it
        assert tx.prune_inbox({"hcp": ["a", "b"]}, done_before=long_ago, any_before=later) == 1
    assert store.inbox_count() == 0


def event(event_id: int, connector: str, *entities: str) -> InboxEvent:
    return InboxEvent(event_id, connector, "x.updated", tuple(entities), "r1", {})


def test_an_event_driven_run_syncs_the_entities_its_events_name_in_pipeline_order() -> None:
    events = Events(
        {"hcp": [event(1, "hcp", "invoices", "payments"), event(2, "hcp", "customers")]}
    )
    assert entities_named(events, ["customers", "jobs", "invoices", "payments"]) == [
        "customers",
        "invoices",
        "payments",
    ]
    assert entities_named(Events({"hcp": [event(3, "hcp")]}), ["customers"]) == []
    assert events.of("hcp", "payments") == [events.by_member["hcp"][0]]
    assert events.ids == [1, 2] and bool(events) and not Events({})


def test_an_event_concerns_the_pipelines_with_its_connector_syncing_its_entities() -> None:
    shapes = {
        "books": (("hcp", "books"), ("customers", "invoices")),
        "crm": (("hcp", "crm"), ("customers",)),
        "other": (("crm", "books"), ("customers",)),
    }
    assert pipelines_of("hcp", ["invoices", "payments"], shapes) == ["books"]
    assert pipelines_of("hcp", ["customers"], shapes) == ["books", "crm"]
    assert pipelines_of("hcp", [], shapes) == []


# ------------------------------------------------------------------------------ dispatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dispatch_config(tmp_path: Path, debounce: float = 2.0) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[state]
url = "sqlite:///state.db"
[connectors.hcp]
type = "memory"
[connectors.books]
type = "memory"
[connectors.crm]
type = "memory"
[[pipelines]]
name = "books"
members = ["hcp", "books"]
[[pipelines]]
name = "crm"
members = ["crm", "books"]
[daemon]
webhook_debounce = {debounce}
""",
        encoding="utf-8",
    )
    return load_config(path)


class Runs:
    """A run function that records its calls and answers what the test says."""

    def __init__(self, outcome: str = "ok") -> None:
        self.calls: list[str] = []
        self.outcome = outcome
        self.called = threading.Event()

    def __call__(self, name: str) -> RunOutcome:
        self.calls.append(name)
        self.called.set()
        return RunOutcome(name, self.outcome)


def make_dispatch(
    tmp_path: Path, runs: Runs, clock: Clock, debounce: float = 2.0
) -> tuple[EventDispatch, StateStore, threading.Event]:
    config = dispatch_config(tmp_path, debounce)
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    stopping = threading.Event()
    return EventDispatch(lambda: config, store, runs, stopping, clock=clock), store, stopping


def test_events_make_their_pipelines_due_a_debounce_later_and_batch(tmp_path: Path) -> None:
    runs, clock = Runs(), Clock()
    dispatch, store, _stopping = make_dispatch(tmp_path, runs, clock)
    try:
        dispatch.stored(event(1, "hcp", "customers"))
        clock.now += 1.5
        dispatch.stored(event(2, "hcp", "customers"))  # joins the same run
        dispatch.stored(event(3, "books", "jobs"))  # no pipeline syncs jobs
        assert dispatch.due == {"books": 0.5}
        assert dispatch._take_due() == []
        clock.now += 0.5
        assert dispatch._take_due() == ["books"]
        assert dispatch.due == {}
    finally:
        store.close()


def test_a_pipeline_whose_lease_is_held_is_tried_again_and_a_paused_one_is_not(
    tmp_path: Path,
) -> None:
    clock = Clock()
    for outcome, again in (("skipped:lease_held", True), ("skipped:paused", False), ("ok", False)):
        runs = Runs(outcome)
        dispatch, store, _stopping = make_dispatch(tmp_path, runs, clock)
        try:
            dispatch.stored(event(1, "hcp", "customers"))
            clock.now += 2
            for name in dispatch._take_due():
                dispatch._attempt(name)
            assert runs.calls == ["books"]
            assert ("books" in dispatch.due) is again, outcome
        finally:
            store.close()


def test_a_due_pipeline_waits_while_its_event_run_runs(tmp_path: Path) -> None:
    runs, clock = Runs(), Clock()
    dispatch, store, _stopping = make_dispatch(tmp_path, runs, clock, debounce=0)
    try:
        dispatch.stored(event(1, "hcp", "customers"))
        assert dispatch._take_due() == ["books"]  # now running
        dispatch.stored(event(2, "hcp", "customers"))
        assert dispatch._take_due() == []  # not twice at once
        dispatch._attempt("books")  # the first run ends
        assert dispatch._take_due() == ["books"]
    finally:
        store.close()


def test_events_waiting_since_before_the_start_are_run_at_once(tmp_path: Path) -> None:
    runs, clock = Runs(), Clock()
    dispatch, store, stopping = make_dispatch(tmp_path, runs, clock, debounce=60)
    try:
        store_one(store, "left-over")
        dispatch.start()
        assert runs.called.wait(10), "the waiting event's pipeline was not run"
        assert runs.calls == ["books"]
    finally:
        stopping.set()
        dispatch.stop()
        store.close()


def test_this_process_never_runs_one_pipeline_twice_at_once(tmp_path: Path) -> None:
    """A scheduled run and an event-driven run of one pipeline in one daemon: the lease is
    this process's already, and taking it again must not succeed."""
    from syncengine.leasing import LeaseKeeper

    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        keeper = LeaseKeeper(store, "host:1:abc", lambda: 60.0)
        first = keeper.acquire("books", 60.0)
        assert first is not None
        assert keeper.acquire("books", 60.0) is None
        assert keeper.acquire("crm", 60.0) is not None
        keeper.forget("books")
        keeper.release("books")
        assert keeper.acquire("books", 60.0) is not None
    finally:
        store.close()
