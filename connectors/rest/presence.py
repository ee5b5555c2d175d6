"""Which mapped fields a complete listing showed at all.

An API leaves an empty field out of a record as often as it sends ``null``, so one record
without a field is that record's empty value. A field that *no* record of a complete listing
has is another thing: a mapping that names a field the API does not have (``companyName``
for ``company``), or a field the API dropped. Read as empty, it would clear that field on
every record of every other member. The connector reports such fields as ``Structure.missing``
(with ``listed``), and the engine treats them as fields the member does not hold, as it does
a sheet's missing column: never read as cleared, and said in the plan's notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from syncengine import model
from syncengine.mapping import EntityMapping, NativePath

__all__ = ["Presence", "readable_paths"]


def readable_paths(mapping: EntityMapping) -> dict[str, NativePath]:
    """The native paths ``mapping`` reads, by their text; not metadata (``updated_at``:
    read for the ``newest`` rule, never a value a person could lose)."""
    spec = mapping.entity
    return {
        f.native: f.path()
        for f in mapping.fields
        if f.direction != "write" and not _meta(spec.field_spec(f.canonical))
    }


def _meta(field: model.FieldSpec | None) -> bool:
    return field is not None and field.meta


class Presence:
    """The mapped paths not yet seen in any record of one listing, and how many it had."""

    def __init__(self, paths: Mapping[str, NativePath]) -> None:
        self.unseen = dict(paths)
        self.records = 0

    def see(self, data: Mapping[str, Any]) -> None:
        """Note one record: the paths it has are no longer unseen."""
        self.records += 1
        if self.unseen:
            for name in [n for n, path in self.unseen.items() if path.holds(data)]:
                del self.unseen[name]

    def missing(self) -> tuple[str, ...]:
        """The paths no record had (none when the listing was empty: nothing to go by)."""
        return tuple(sorted(self.unseen)) if self.records else ()
