"""What a pipeline's state change means for alerts: pure decisions, no I/O.

A **condition** is one thing a person may have to act on, keyed by ``(pipeline, event,
detail)``: ``run_failed`` and ``paused`` (detail ""), ``guard_tripped`` (detail: the entity),
``conflicts_parked``, ``skipped_writes``, ``writes_failed``, ``books_disagree``,
``needs_review`` (detail "").

One condition is not a pipeline's and cannot be kept in the store: ``store_unavailable``,
the state store itself down (``StoreOutage``). Each daemon keeps it in memory and tells it
once, reminds of it, and tells ``recovered`` when the store answers again.

After each attempt at a pipeline the daemon knows some **facts** (``RunFacts``): how the run
ended and, for a run that reached the members, the open conflicts, skipped writes and book
disagreements as counts and a high-water ``mark`` (the newest item's id or time). ``observe``
turns facts into what they say about each condition (``Observed``: open or not, and whether
it may *open* one or only keep an open one alive: a skipped run of a paused pipeline reminds,
never opens). ``decide`` compares one observation with the stored condition and says what
changes (``Transition``):

- ``open``: it was not open; it opens and is told once;
- ``more``: it is open and its mark grew (new conflicts, new skipped writes, new
  disagreements): told again, once per growth;
- ``remind``: it is open and was last told ``remind`` ago or longer: told again;
- ``clear``: it was open and is not any more: told for the conditions a run clears by itself
  (``run_failed``, ``paused``, ``guard_tripped``, ``books_disagree``: "recovered"); those a
  person clears by hand (conflicts, skipped writes, review) close silently;
- nothing otherwise: an open condition is never told twice in a row.

``compose`` writes the alert a person reads for the transitions of one pass: what happened,
to which pipeline, and the one command to act on it; labels and counts only, never a
record's data or a secret.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from syncengine.state.alert_rows import ConditionRow
from syncengine.state.leases import PipelineState

__all__ = [
    "EVENTS",
    "LOUD_CLEARS",
    "Alert",
    "Items",
    "Observed",
    "RunFacts",
    "StoreOutage",
    "Transition",
    "compose",
    "decide",
    "decide_all",
    "due_reminders",
    "observe",
]

EVENTS = (
    "run_failed",
    "recovered",
    "paused",
    "guard_tripped",
    "conflicts_parked",
    "needs_review",
    "skipped_writes",
    "writes_failed",
    "books_disagree",
    "store_unavailable",
)
"""Every event an alert can carry (``test`` is the one ``syncengine alerts test`` sends)."""
LOUD_CLEARS = frozenset(
    {"run_failed", "paused", "guard_tripped", "books_disagree", "writes_failed"}
)
"""Conditions whose clearing is told ("recovered"); the others close silently."""
SEVERITY = {
    "run_failed": "error",
    "paused": "error",
    "guard_tripped": "warning",
    "conflicts_parked": "warning",
    "skipped_writes": "warning",
    "writes_failed": "error",
    "store_unavailable": "error",
    "books_disagree": "warning",
    "needs_review": "info",
    "recovered": "info",
    "test": "info",
}

Ending = Literal["completed", "guard", "failed", "refused", "skipped:paused", "skipped:backoff"]


@dataclass(frozen=True)
class Items:
    """Open items of one kind (conflicts, skipped writes, ...): how many, the high-water
    ``mark`` of the newest (an id, or a time in microseconds), and counts by label."""

    count: int
    mark: int | None = None
    by: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFacts:
    """What one attempt at a pipeline showed. ``items`` is given only for runs that reached
    the members (a condition not given is neither opened nor cleared)."""

    pipeline: str
    ending: Ending
    error: str = ""
    """failed, refused: why (already redacted)."""
    guards: Mapping[str, str] = field(default_factory=dict)
    """entity -> the guard's explanation, for each entity a guard stopped."""
    entities_ran: Sequence[str] = ()
    """The entities the run planned (a guard stops the run at its entity)."""
    items: Mapping[str, Items] = field(default_factory=dict)
    """condition event (conflicts_parked, skipped_writes, writes_failed, books_disagree,
    needs_review) -> the open items after the run."""
    failure: str = ""
    """The first of the run's failed writes, for ``writes_failed`` (already redacted)."""


@dataclass(frozen=True)
class Observed:
    """What the facts say about one condition."""

    event: str
    detail: str
    open: bool
    may_open: bool = True
    """False: the facts may keep an open condition alive (remind) but not open it."""
    items: Items | None = None
    text: str = ""
    """The facts' words for it (an error, a guard's explanation)."""


@dataclass(frozen=True)
class Transition:
    """A change of one condition: ``kind`` and the row to claim (``seen``: the version it
    replaces, None: a new row)."""

    kind: Literal["open", "more", "remind", "clear"]
    row: ConditionRow
    seen: int | None
    observed: Observed
    before: ConditionRow | None = None


@dataclass(frozen=True)
class Alert:
    """One message, as every channel sends it."""

    event: str
    pipeline: str
    severity: str
    text: str
    details: dict[str, object]

    def payload(self) -> dict[str, object]:
        """The webhook's JSON body."""
        return {
            "text": self.text,
            "event": self.event,
            "pipeline": self.pipeline,
            "severity": self.severity,
            "details": self.details,
        }

    @property
    def subject(self) -> str:
        """The e-mail's subject line."""
        first = self.text.split(". ", 1)[0].rstrip(".")
        return f"[syncengine] {first}"[:160]


def observe(facts: RunFacts) -> list[Observed]:
    """Decides what an attempt's facts say about each condition of its pipeline.

    A completed run clears ``run_failed``, ``paused`` and the guards of the entities it
    planned; a guard run opens ``guard_tripped`` for the stopped entity and clears the
    entities planned before it; a failed run opens ``run_failed``, a refused one ``paused``;
    a run skipped while paused or backing off only keeps those alive (reminders). Item
    conditions are open while they have items."""
    out: list[Observed] = []
    ending = facts.ending
    if ending == "completed":
        out += [Observed("run_failed", "", False), Observed("paused", "", False)]
    elif ending == "failed":
        out.append(Observed("run_failed", "", True, text=facts.error))
    elif ending == "refused":
        out.append(Observed("paused", "", True, text=facts.error))
    elif ending == "skipped:paused":
        out.append(Observed("paused", "", True, may_open=False, text=facts.error))
    elif ending == "skipped:backoff":
        out.append(Observed("run_failed", "", True, may_open=False))
    if ending in ("completed", "guard"):
        for entity in facts.entities_ran:
            guard = facts.guards.get(entity)
            out.append(Observed("guard_tripped", entity, guard is not None, text=guard or ""))
    for event, items in sorted(facts.items.items()):
        text = facts.failure if event == "writes_failed" else ""
        out.append(Observed(event, "", items.count > 0, items=items, text=text))
    return out


def decide(
    observed: Observed,
    stored: ConditionRow | None,
    *,
    pipeline: str,
    now: dt.datetime,
    remind: dt.timedelta,
) -> Transition | None:
    """Decides how one condition changes (see the module docstring): open once, tell again
    when its items grow or ``remind`` has passed since it was last told, clear once;
    otherwise nothing."""
    mark = observed.items.mark if observed.items is not None else None
    summary = _summary(observed)
    is_open = stored is not None and stored.open
    if observed.open and not is_open:
        if not observed.may_open:
            return None
        row = ConditionRow(
            pipeline,
            observed.event,
            observed.detail,
            True,
            (stored.version + 1) if stored else 1,
            mark,
            now,
            now,
            None,
            summary,
        )
        return Transition("open", row, stored.version if stored else None, observed, stored)
    if observed.open and stored is not None and is_open:
        grew = mark is not None and (stored.mark is None or mark > stored.mark)
        if grew and observed.may_open:
            row = replace(
                stored, version=stored.version + 1, mark=mark, notified_at=now, summary=summary
            )
            return Transition("more", row, stored.version, observed, stored)
        if now - stored.notified_at >= remind:
            row = replace(stored, version=stored.version + 1, notified_at=now)
            return Transition("remind", row, stored.version, observed, stored)
        return None
    if not observed.open and stored is not None and is_open:
        row = replace(stored, open=False, version=stored.version + 1, cleared_at=now)
        return Transition("clear", row, stored.version, observed, stored)
    return None


def decide_all(
    observations: Iterable[Observed],
    stored: Mapping[tuple[str, str], ConditionRow],
    *,
    pipeline: str,
    now: dt.datetime,
    remind: dt.timedelta,
) -> list[Transition]:
    """``decide`` for each observation, against the stored condition of the same key."""
    out = []
    for obs in observations:
        found = decide(
            obs,
            stored.get((obs.event, obs.detail)),
            pipeline=pipeline,
            now=now,
            remind=remind,
        )
        if found is not None:
            out.append(found)
    return out


def due_reminders(
    rows: Iterable[ConditionRow],
    states: Mapping[str, PipelineState],
    *,
    now: dt.datetime,
    remind: dt.timedelta,
) -> list[Transition]:
    """Decides which open conditions are due a reminder without a run to observe them: those
    last told ``remind`` ago or longer, except a pause the pipeline no longer has and failing
    runs it no longer counts (their clearing waits for the next completed run)."""
    out = []
    for row in rows:
        if not row.open:
            continue
        state = states.get(row.pipeline)
        if row.event == "paused" and not (state is not None and state.paused):
            continue
        if row.event == "run_failed" and not (state is not None and state.failures > 0):
            continue
        observed = Observed(row.event, row.detail, True, may_open=False, text=row.summary)
        found = decide(observed, row, pipeline=row.pipeline, now=now, remind=remind)
        if found is not None:
            out.append(found)
    return out


def _summary(observed: Observed) -> str:
    """A short line kept with the condition (the store; shown later in reminders)."""
    if observed.items is not None:
        return f"{observed.items.count} open"
    return observed.text[:500]


# --------------------------------------------------------------------------- the messages


def compose(transitions: Sequence[Transition], *, config_path: str) -> list[Alert]:
    """Decides the alerts a person receives for one pass's won transitions: one per opened,
    grown or reminded condition, and one ``recovered`` for everything a run cleared by
    itself (``LOUD_CLEARS``); clears of hand-cleared conditions give none."""
    alerts: list[Alert] = []
    cleared: list[Transition] = []
    for t in transitions:
        if t.kind == "clear":
            if t.row.event in LOUD_CLEARS:
                cleared.append(t)
            continue
        alerts.append(_alert(t, config_path))
    if cleared:
        alerts.append(_recovered(cleared, config_path))
    return alerts


def _cmd(command: str, config_path: str, pipeline: str | None = None) -> str:
    tail = f" --pipeline {pipeline}" if pipeline else ""
    return f"syncengine {command} -c {config_path}{tail}"


def _by(items: Items) -> str:
    if not items.by:
        return ""
    return " (" + ", ".join(f"{label}: {n}" for label, n in sorted(items.by.items())) + ")"


_PLURAL = ("failing", "the failing", "the books' disagreements")
"""How the words of a cleared condition start when they name several things."""


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _alert(t: Transition, config_path: str) -> Alert:
    row, obs = t.row, t.observed
    p, event = row.pipeline, row.event
    items = obs.items
    text = obs.text or row.summary
    new = items.count if items is not None else 0
    by = _by(items) if items is not None else f" ({row.summary})"

    wait = "waits" if items is not None and new == 1 else "wait"

    def n(word: str) -> str:
        """``3 conflicts`` when the count is known, else the word alone (a reminder)."""
        if items is None:
            return word + "s"
        return f"{new} {word}{'s' if new != 1 else ''}"

    if event == "run_failed":
        command = _cmd("runs", config_path, p)
        what = (
            f"Pipeline {p}: a run failed: {text}. Runs are tried again (a daemon backs off "
            f"between tries); you hear again when one completes. See the errors: `{command}`"
        )
    elif event == "paused":
        command = _cmd("resume", config_path, p)
        what = (
            f"Pipeline {p} is paused: the credentials were refused ({text}). Nothing runs "
            f"until you fix the member's api_key in {config_path} (or the environment "
            f"variable it names), then run `{command}`"
        )
    elif event == "guard_tripped":
        command = _cmd("sync", config_path, p) + " --dry-run"
        what = (
            f"Pipeline {p}: a safety guard stopped {row.detail}, and nothing of it was "
            f"written: {text} See what a sync would do: `{command}`"
        )
    elif event == "conflicts_parked":
        command = _cmd("conflicts list", config_path, p)
        what = f"Pipeline {p}: {n('conflict')} {wait} for a person{by}. Settle them: `{command}`"
    elif event == "skipped_writes":
        command = _cmd("status", config_path)
        what = (
            f"Pipeline {p}: {n('write')} a member cannot take{by}. See which and why: `{command}`"
        )
    elif event == "writes_failed":
        command = _cmd("runs", config_path, p)
        first = f": {obs.text}" if obs.text else ""
        what = (
            f"Pipeline {p}: {n('write')} failed in the last run{by}{first}. The run went "
            "on, and every run tries them again; you hear again when a run writes them all. "
            f"See the errors: `{command}`"
        )
    elif event == "books_disagree":
        command = _cmd("reconcile-report", config_path, p)
        what = f"Pipeline {p}: the books disagree: {n('difference')}{by}. See them: `{command}`"
    elif event == "needs_review":
        only_deletes = items is not None and not items.by.get("review")
        command = _cmd("deletes list" if only_deletes else "review list", config_path, p)
        what = (
            f"Pipeline {p}: {n('item')} {wait} for a person{by}. See them: `{command}` "
            "(or the console)"
        )
    else:  # pragma: no cover - every condition event is above
        command = _cmd("status", config_path)
        what = f"Pipeline {p}: {event}. See `{command}`"
    if t.kind == "remind":
        what = f"Reminder: still open since {_when(row.opened_at)}. {what}"
    details: dict[str, object] = {
        "command": command,
        "config": config_path,
        "kind": t.kind,
        "opened_at": row.opened_at.isoformat(),
    }
    if row.detail:
        details["entity"] = row.detail
    if items is not None:
        details["count"] = items.count
        if items.by:
            details["by"] = dict(items.by)
    return Alert(event, p, SEVERITY.get(event, "warning"), what, details)


def _recovered(cleared: Sequence[Transition], config_path: str) -> Alert:
    p = cleared[0].row.pipeline
    since = min(t.row.opened_at for t in cleared)
    words = {
        "run_failed": "failing runs",
        "paused": "the pause after refused credentials",
        "books_disagree": "the books' disagreements",
        "writes_failed": "the failing writes",
    }
    parts = [
        f"the guard on {t.row.detail}" if t.row.event == "guard_tripped" else words[t.row.event]
        for t in cleared
    ]
    command = _cmd("status", config_path)
    text = (
        f"Pipeline {p} recovered: {', '.join(parts)} (since {_when(since)}) "
        f"{'are' if len(parts) > 1 or parts[0].startswith(_PLURAL) else 'is'} over; a run "
        f"completed. Status: `{command}`"
    )
    details: dict[str, object] = {
        "command": command,
        "config": config_path,
        "cleared": [
            {"event": t.row.event, **({"entity": t.row.detail} if t.row.detail else {})}
            for t in cleared
        ],
        "opened_at": since.isoformat(),
    }
    return Alert("recovered", p, "info", text, details)


@dataclass
class StoreOutage:
    """The state store that cannot be used, as one daemon saw it (``store_unavailable``).

    The store keeps every other condition, so while it is down there is nowhere to keep this
    one, nor to claim it among daemons: each daemon keeps it in memory and tells it itself
    (two daemons on one PostgreSQL store both tell it). ``observe`` decides what one look at
    the store means: the alert to send, if any."""

    remind: dt.timedelta
    since: dt.datetime | None = None
    """When this daemon first found the store down (None: it answers)."""
    told: dt.datetime | None = None
    """When this outage was last told."""

    def observe(self, *, now: dt.datetime, error: str | None, config_path: str) -> Alert | None:
        """``error``: why the store could not be used just now (None: it answered). The
        alert this says: ``store_unavailable`` when it first fails and every ``remind``
        while it stays down, ``recovered`` once when it answers again; else None."""
        if error is None:
            if self.since is None:
                return None
            since, self.since, self.told = self.since, None, None
            return _store_back(since, now, config_path)
        if self.since is None:
            self.since = now
        elif self.told is not None and now - self.told < self.remind:
            return None
        reminder = self.told is not None
        self.told = now
        return _store_down(self.since, error, config_path, reminder=reminder)


def _store_down(since: dt.datetime, error: str, config_path: str, *, reminder: bool) -> Alert:
    command = _cmd("status", config_path)
    text = (
        f"The state store cannot be used: {error}. No pipeline can run until it can: runs "
        "are tried on their schedules, and you hear again when one reaches it. Check the "
        f"database named by [state] url in {config_path}, then `{command}`"
    )
    if reminder:
        text = f"Reminder: still down since {_when(since)}. {text}"
    details: dict[str, object] = {
        "command": command,
        "config": config_path,
        "kind": "remind" if reminder else "open",
        "opened_at": since.isoformat(),
    }
    return Alert("store_unavailable", "", SEVERITY["store_unavailable"], text, details)


def _store_back(since: dt.datetime, now: dt.datetime, config_path: str) -> Alert:
    command = _cmd("status", config_path)
    text = (
        f"The state store can be used again (it could not from {_when(since)} to "
        f"{_when(now)}); the pipelines run on their schedules. Status: `{command}`"
    )
    details: dict[str, object] = {
        "command": command,
        "config": config_path,
        "cleared": [{"event": "store_unavailable"}],
        "opened_at": since.isoformat(),
    }
    return Alert("recovered", "", "info", text, details)
