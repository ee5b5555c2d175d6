"""The pure part of alerts (``syncengine.alerts.decide``): a condition opens once, is told
again only when its items grow or ``remind_hours`` passed, clears once; the messages name
the pipeline and the command, and never carry a record's data.

The property drives one condition through random observations and checks the whole story
against a plain model of the rules: what was sent, and when."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.alerts.decide import (
    Alert,
    Items,
    Observed,
    RunFacts,
    StoreOutage,
    Transition,
    compose,
    decide,
    due_reminders,
    observe,
)
from syncengine.state.alert_rows import ConditionRow
from syncengine.state.leases import PipelineState

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


def step(
    observed: Observed, stored: ConditionRow | None, now: dt.datetime
) -> tuple[Transition | None, ConditionRow | None]:
    """One decision, applied as a daemon that wins its claim would."""
    change = decide(observed, stored, pipeline="p", now=now, remind=DAY)
    if change is None:
        return None, stored
    assert change.seen == (stored.version if stored else None)
    assert change.row.version == (stored.version + 1 if stored else 1)
    return change, change.row


def test_a_failing_pipeline_is_told_once_reminded_daily_and_cleared_once() -> None:
    failed = Observed("run_failed", "", True, text="HTTP 500")
    kinds = []
    stored = None
    for minutes in range(0, 60 * 30, 10):  # a run every 10 minutes for 30 hours
        change, stored = step(failed, stored, T0 + dt.timedelta(minutes=minutes))
        if change is not None:
            kinds.append((change.kind, minutes))
    assert kinds == [("open", 0), ("remind", 24 * 60)]
    ok = Observed("run_failed", "", False)
    change, stored = step(ok, stored, T0 + dt.timedelta(hours=31))
    assert change is not None and change.kind == "clear"
    assert stored is not None and not stored.open
    again, _ = step(ok, stored, T0 + dt.timedelta(hours=32))
    assert again is None


def test_new_items_are_told_once_per_growth_and_not_when_they_shrink() -> None:
    def conflicts(count: int, mark: int) -> Observed:
        return Observed("conflicts_parked", "", count > 0, items=Items(count, mark))

    stored = None
    change, stored = step(conflicts(2, 7), stored, T0)
    assert change is not None and change.kind == "open"
    change, stored = step(conflicts(2, 7), stored, T0 + dt.timedelta(minutes=1))
    assert change is None
    change, stored = step(conflicts(1, 7), stored, T0 + dt.timedelta(minutes=2))
    assert change is None, "one conflict settled is no news"
    change, stored = step(conflicts(3, 9), stored, T0 + dt.timedelta(minutes=3))
    assert change is not None and change.kind == "more"
    change, stored = step(conflicts(0, 0), stored, T0 + dt.timedelta(minutes=4))
    assert change is not None and change.kind == "clear"
    assert compose([change], config_path="c.toml") == [], "a person settles conflicts: no news"


def test_a_skipped_run_keeps_a_pause_alive_but_never_opens_one() -> None:
    skipped = Observed("paused", "", True, may_open=False)
    assert decide(skipped, None, pipeline="p", now=T0, remind=DAY) is None
    change, stored = step(Observed("paused", "", True, text="401"), None, T0)
    assert change is not None
    change, _ = step(skipped, stored, T0 + DAY)
    assert change is not None and change.kind == "remind"


def test_observe_reads_each_ending() -> None:
    done = observe(
        RunFacts(
            "p",
            "completed",
            entities_ran=("customers",),
            items={"conflicts_parked": Items(0)},
        )
    )
    assert {(o.event, o.detail, o.open) for o in done} == {
        ("run_failed", "", False),
        ("paused", "", False),
        ("guard_tripped", "customers", False),
        ("conflicts_parked", "", False),
    }
    guard = observe(
        RunFacts(
            "p",
            "guard",
            guards={"invoices": "9 of 10 would be deleted"},
            entities_ran=("customers", "invoices"),
        )
    )
    assert {(o.event, o.detail, o.open) for o in guard} == {
        ("guard_tripped", "customers", False),
        ("guard_tripped", "invoices", True),
    }
    assert [(o.event, o.open) for o in observe(RunFacts("p", "refused", error="401"))] == [
        ("paused", True)
    ]
    assert [(o.event, o.may_open) for o in observe(RunFacts("p", "skipped:backoff"))] == [
        ("run_failed", False)
    ]


def test_one_recovered_for_everything_a_run_cleared_and_each_message_names_its_command() -> None:
    _, failed = step(Observed("run_failed", "", True, text="HTTP 500"), None, T0)
    _, paused = step(Observed("paused", "", True, text="401"), None, T0)
    assert failed is not None and paused is not None
    later = T0 + dt.timedelta(hours=1)
    clears = [
        decide(Observed(e, "", False), row, pipeline="p", now=later, remind=DAY)
        for e, row in (("run_failed", failed), ("paused", paused))
    ]
    alerts = compose([c for c in clears if c is not None], config_path="/etc/s.toml")
    assert [a.event for a in alerts] == ["recovered"]
    assert "Pipeline p recovered" in alerts[0].text

    opened = decide(
        Observed("paused", "", True, text="credentials refused"),
        None,
        pipeline="hcp-books",
        now=T0,
        remind=DAY,
    )
    assert opened is not None
    (alert,) = compose([opened], config_path="/etc/s.toml")
    assert alert.event == "paused" and alert.severity == "error"
    assert "syncengine resume -c /etc/s.toml --pipeline hcp-books" in alert.text
    assert alert.details["command"] == "syncengine resume -c /etc/s.toml --pipeline hcp-books"
    assert alert.payload()["pipeline"] == "hcp-books"


def test_reminders_without_a_run_skip_conditions_the_pipeline_left() -> None:
    rows = [
        ConditionRow("p", "paused", "", True, 1, None, T0, T0, None, "401"),
        ConditionRow("q", "paused", "", True, 1, None, T0, T0, None, "401"),
        ConditionRow("q", "conflicts_parked", "", True, 1, 3, T0, T0, None, "2 open"),
        ConditionRow("q", "run_failed", "", False, 2, None, T0, T0, T0, "500"),
    ]
    state = PipelineState(
        pipeline="p",
        paused=True,
        paused_reason="x",
        paused_at=T0,
        paused_fingerprint="f",
        failures=0,
        backoff_until=None,
        last_error=None,
    )
    due = due_reminders(rows, {"p": state}, now=T0 + DAY, remind=DAY)
    assert [(t.row.pipeline, t.row.event, t.kind) for t in due] == [
        ("p", "paused", "remind"),
        ("q", "conflicts_parked", "remind"),
    ]
    assert due_reminders(rows, {"p": state}, now=T0 + DAY / 2, remind=DAY) == []
    texts = [a.text for a in compose(due, config_path="c.toml")]
    assert all(t.startswith("Reminder: still open since 2026-12-01 08:00 UTC") for t in texts)


observations = st.lists(
    st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 40 * 60)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(observations)
def test_a_condition_is_told_as_the_rules_say(steps: list[tuple[bool, int, int]]) -> None:
    """Against a model: told on opening; on growth of the mark; a day after it was last
    told; on clearing; never twice in a row otherwise."""
    stored: ConditionRow | None = None
    now = T0
    model_open, model_mark, model_told = False, None, T0
    mark = 0
    for is_open, grow, gap in steps:
        now += dt.timedelta(minutes=gap)
        mark += grow
        obs = Observed("skipped_writes", "", is_open, items=Items(1 if is_open else 0, mark))
        change, stored = step(obs, stored, now)
        if is_open and not model_open:
            expected = "open"
        elif is_open and model_mark is not None and mark > model_mark:
            expected = "more"
        elif is_open and now - model_told >= DAY:
            expected = "remind"
        elif not is_open and model_open:
            expected = "clear"
        else:
            expected = None
        assert (change.kind if change else None) == expected
        if expected in ("open", "more"):
            model_mark, model_told = mark, now
        if expected == "remind":
            model_told = now
        if expected == "open":
            model_open = True
        if expected == "clear":
            model_open = False


def test_writes_that_fail_every_run_are_told_once_and_their_end_is_recovered() -> None:
    """A sheet that cannot be saved (a read-only folder) fails every write of every run
    while the runs themselves complete: told once when it starts, with the first error and
    the counts, reminded daily, and told as recovered when a run writes them all (a cold
    operator trial found no alert at all)."""
    facts = RunFacts(
        "p",
        "completed",
        entities_ran=("customers",),
        items={"writes_failed": Items(15, None, {"books customers": 15})},
        failure="books customers.csv: nothing written: cannot write customers.csv",
    )
    (failing,) = [o for o in observe(facts) if o.event == "writes_failed"]
    assert failing.open and failing.text.endswith("cannot write customers.csv")
    kinds, stored, told = [], None, []
    for minutes in range(0, 60 * 30, 10):
        change, stored = step(failing, stored, T0 + dt.timedelta(minutes=minutes))
        if change is not None:
            kinds.append((change.kind, minutes))
            told += compose([change], config_path="/etc/s.toml")
    assert kinds == [("open", 0), ("remind", 24 * 60)]
    assert told[0].event == "writes_failed" and told[0].severity == "error"
    assert told[0].text.startswith(
        "Pipeline p: 15 writes failed in the last run (books customers: 15): books "
        "customers.csv: nothing written: cannot write customers.csv."
    )
    assert "syncengine runs -c /etc/s.toml --pipeline p" in told[0].text
    done = RunFacts("p", "completed", items={"writes_failed": Items(0)})
    (fixed,) = [o for o in observe(done) if o.event == "writes_failed"]
    change, stored = step(fixed, stored, T0 + dt.timedelta(hours=31))
    assert change is not None and change.kind == "clear"
    (recovered,) = compose([change], config_path="/etc/s.toml")
    assert recovered.event == "recovered" and "the failing writes" in recovered.text
    assert ") are over; a run completed" in recovered.text, recovered.text


# ------------------------------------------------------------------ the store that is down


def test_a_store_outage_is_told_once_reminded_and_its_end_told_once() -> None:
    outage = StoreOutage(remind=dt.timedelta(hours=4))
    start = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)

    def look(minutes: int, error: str | None) -> Alert | None:
        return outage.observe(
            now=start + dt.timedelta(minutes=minutes), error=error, config_path="/etc/s.toml"
        )

    assert look(0, None) is None  # up, and never down: nothing to say
    down = look(1, "connection refused")
    assert down is not None and down.event == "store_unavailable" and down.severity == "error"
    assert down.pipeline == "" and down.details["kind"] == "open"
    assert down.text.startswith("The state store cannot be used: connection refused.")
    assert "`syncengine status -c /etc/s.toml`" in down.text
    assert [look(m, "connection refused") for m in (2, 60, 240)] == [None, None, None]
    reminder = look(241, "timeout")  # four hours after it was told
    assert reminder is not None and reminder.details["kind"] == "remind"
    assert reminder.text.startswith("Reminder: still down since 2026-03-02 09:01 UTC.")
    assert look(300, "timeout") is None
    back = look(301, None)
    assert back is not None and (back.event, back.severity) == ("recovered", "info")
    assert "from 2026-03-02 09:01 UTC to 2026-03-02 14:01 UTC" in back.text
    assert look(302, None) is None  # told once
    again = look(303, "refused")  # a new outage is a new alert
    assert again is not None and again.details["kind"] == "open"
