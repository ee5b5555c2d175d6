"""Webhook events: what a member told us changed, between its delivery and the run that
takes it.

A delivery a connector's webhook verifies is stored in the state store's **inbox** before it
is acknowledged (``syncengine.daemon.webhooks``). Every run of a pipeline *takes* the events
of its members that are in the inbox when it starts, and marks them done for that pipeline in
the transaction that records its outcome, if it completed:

- an **event-driven run** (the daemon starts one a moment after events arrive) reads only the
  records its events name on the member that sent them (``Connector.read_events``: a partial
  pass; a record it does not name is *unseen*, not gone) and the pipeline's other members as
  any run reads them;
- any other run (scheduled, manual) reads everything, so it covers the events it took too.

An event a run took but did not mark done (the run failed, was stopped, or the process was
killed) is taken again by the next run: nothing received is lost, and taking an event twice
changes nothing (the record is then unchanged). ``pipelines_of`` says which pipelines an
event concerns; ``entities_named`` which entities an event-driven run syncs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DERIVED", "NO_EVENTS", "Events", "InboxEvent", "entities_named", "pipelines_of"]

DERIVED = "syncengine.derived"
"""The name of the engine's stand-in events (never in the inbox): a record of the entity the
event's ``entities`` names that the run's own writes of another entity changed on the member
(``Connector.changed_by_writes``), to be read again by id."""


@dataclass(frozen=True)
class InboxEvent:
    """One event as the inbox holds it."""

    id: int
    """Its row in the inbox (in order of receipt)."""
    connector: str
    """The name of the connector whose webhook received it."""
    event: str
    """The member's name for it (``customer.updated``)."""
    entities: tuple[str, ...]
    """The canonical entities it may change."""
    record_id: str | None
    """The member's id of the record it names."""
    payload: Mapping[str, Any]
    """The whole body, as received."""
    occurred_at: str | None = None
    received_at: float = 0.0
    """Seconds since the epoch."""


@dataclass(frozen=True)
class Events:
    """The events a run took from the inbox, by the member that received them."""

    by_member: Mapping[str, Sequence[InboxEvent]]

    @property
    def ids(self) -> list[int]:
        return sorted(e.id for events in self.by_member.values() for e in events)

    def __bool__(self) -> bool:
        return any(self.by_member.values())

    def of(self, member: str, entity: str) -> list[InboxEvent]:
        """The events of ``member`` that may change ``entity``, in order of receipt."""
        return [e for e in self.by_member.get(member, ()) if entity in e.entities]


NO_EVENTS = Events({})


def entities_named(events: Events, entities: Sequence[str]) -> list[str]:
    """The entities of a pipeline (``entities``, in its order) that an event-driven run with
    ``events`` syncs: those some event may change. An event about something the pipeline
    does not sync (an estimate) names none."""
    named = {entity for evs in events.by_member.values() for e in evs for entity in e.entities}
    return [entity for entity in entities if entity in named]


def pipelines_of(
    connector: str,
    entities: Iterable[str],
    pipelines: Mapping[str, tuple[Sequence[str], Sequence[str]]],
) -> list[str]:
    """The pipelines an event of ``connector`` about ``entities`` concerns: those that have
    the connector as a member and sync one of the entities. ``pipelines``: name ->
    (members, entities)."""
    wanted = set(entities)
    return [
        name
        for name, (members, synced) in pipelines.items()
        if connector in members and wanted & set(synced)
    ]
