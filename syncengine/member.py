"""Member: one connector of a pipeline, set up for one entity.

A member is configuration: the connector, the mapping between its records and the canonical
ones, what it can do, and how it shows references. What one run learns of it (what it read,
the read pass, the read mark to store) lives in the stage that learns it (``read``,
``marks``), never on the member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from syncengine import model
from syncengine.config import Pipeline
from syncengine.connector import Capabilities, Connector, NativeRecord
from syncengine.errors import FatalConnectorError, RecordError
from syncengine.mapping import EntityMapping
from syncengine.refs import MemberRefs, References


@dataclass(frozen=True)
class Member:
    name: str
    connector: Connector
    mapping: EntityMapping
    caps: Capabilities
    type: str
    """The connector's type name, for messages ('housecallpro cannot update invoices')."""
    refs: MemberRefs | None = None
    """How its records show references (None: its mapping has no reference field)."""

    @cached_property
    def buffered(self) -> bool:
        """Its writes become durable only when the connector flushes (a spreadsheet file,
        Housecall Pro's line items). Asked of the connector once: apply asks it of every
        write several times."""
        return self.connector.buffers(self.mapping.entity.name)


def open_member(
    pipeline: Pipeline, connector: Connector, entity: str, refs: References | None = None
) -> Member:
    """The member of ``pipeline`` that ``connector`` is, for ``entity``; the connector is
    prepared with its mapping. A connector that does not hold the entity is a fatal error."""
    if entity not in connector.entities():
        raise FatalConnectorError(
            f"{connector.type_name} does not hold {entity}; remove it from the pipeline "
            "or the member",
            connector=connector.name,
            entity=entity,
        )
    mapping = pipeline.mappings[(connector.name, entity)]
    connector.prepare(entity, mapping)
    return Member(
        connector.name,
        connector,
        mapping,
        connector.capabilities(entity),
        connector.type_name,
        refs.for_member(connector.name, mapping) if refs else None,
    )


def canonical_of(
    mapping: EntityMapping,
    rec: NativeRecord,
    refs: MemberRefs | None = None,
    meant: Mapping[str, Any] | None = None,
) -> model.Record:
    """The canonical record of what a member holds, references resolved (a reference that
    cannot be resolved is left empty: the next read tells; ``meant``: the values the record
    was just written from, see ``MemberRefs.resolve``)."""
    try:
        record = mapping.to_canonical(rec.data, location=rec.location)
    except RecordError:
        return {}
    if refs is not None:
        refs.resolve(record, meant)
    return record
