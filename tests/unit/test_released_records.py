"""A record read, and a create performed, let go of their native data field by field
(``NativeRecord.released``, ``Create.released``), not through ``dataclasses.replace``: every
other field must come through, including any field added to either class later."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from syncengine.connector import RELEASED, NativeRecord
from syncengine.plan import Create


def _distinct_values(cls: type, released: str) -> dict[str, Any]:
    """A value for every field of ``cls`` that differs from its default (a new field with a
    default would otherwise pass unnoticed)."""
    values: dict[str, Any] = {}
    for n, f in enumerate(fields(cls)):
        if f.name == released:
            values[f.name] = {"held": n}
        elif f.type in ("bool", bool):
            values[f.name] = True
        elif "tuple" in str(f.type):
            values[f.name] = (f"{f.name}-{n}",)
        elif "dict" in str(f.type) or "Record" in str(f.type) or "NativeData" in str(f.type):
            values[f.name] = {f.name: n}
        else:
            values[f.name] = f"{f.name}-{n}"
    return values


def test_a_released_native_record_keeps_every_field_but_its_data() -> None:
    record = NativeRecord(**_distinct_values(NativeRecord, "data"))
    released = record.released()
    assert released.data is RELEASED
    for f in fields(NativeRecord):
        if f.name != "data":
            assert getattr(released, f.name) == getattr(record, f.name), f.name
    assert released == replace(record, data=RELEASED)
    assert released.native_hash() == record.digest  # the hash stays


def test_a_released_create_keeps_every_field_but_its_native_record() -> None:
    create = Create(**_distinct_values(Create, "native"))
    released = create.released()
    assert released.native is RELEASED
    for f in fields(Create):
        if f.name != "native":
            assert getattr(released, f.name) == getattr(create, f.name), f.name
    assert released == replace(create, native=RELEASED)
